"""The experiment runner across processes (JAX's multi-controller runtime, CPU
collectives on loopback)."""

import signal
import sys
import time

import jax
import numpy as np
import pytest

from experiments.cifar import report, train
from tests import helpers


@pytest.mark.slow
def test_experiment_runner_across_two_processes(tmp_path):
  """experiments.cifar with --num_processes=2: a SIGINT to one process stops
  both at the same step (it becomes a SIGTERM, which JAX's preemption service
  turns into a sync point); rerun, the run equals the one-process run, per
  worker bit for bit. Only process 0 writes metrics. AL-DSGD on every matching
  each step (ranks first, then parameters: the most collectives per step);
  schedules whose exchanges are conditional (MATCHA's) run across processes
  in tests/lib/test_multihost.py."""
  data = helpers.fake_fashion_mnist(tmp_path / "data")
  common = [
    "-m",
    "experiments.cifar",
    "--config=experiments/cifar/configs/fashion_mnist.py:aldsgd_dpsgd",
    f"--config.data_dir={data}",
    "--config.batch_size=2",
    "--config.num_epochs=3",
    "--config.lr_decay_epochs=(2,)",
    "--config.eval_batch_size=64",
    "--config.progress_bar=False",
    "--config.plots=False",
  ]
  two_processes = lambda port: [
    [
      sys.executable,
      *common,
      f"--workdir={tmp_path / 'two'}",
      f"--coordinator_address=127.0.0.1:{port}",
      "--num_processes=2",
      f"--process_id={i}",
    ]
    for i in range(2)
  ]
  processes = helpers.start_processes(two_processes(helpers.free_port()))
  log = report.MetricsLog(tmp_path / "two" / "metrics.jsonl")
  while not log.read():  # the first epoch is done; 2 to go
    assert all(p.poll() is None for p in processes), helpers.wait_processes(processes)
    time.sleep(0.05)
  processes[1].send_signal(signal.SIGINT)
  outputs = helpers.wait_processes(processes, returncode=128 + signal.SIGTERM)
  stopped = [
    int(out.split("training stopped at step ")[1].split()[0]) for out in outputs
  ]
  assert stopped[0] == stopped[1], outputs
  assert 16 <= stopped[0] < 48, stopped  # 16 steps per epoch
  helpers.run_together(two_processes(helpers.free_port()))
  helpers.run_together([[sys.executable, *common, f"--workdir={tmp_path / 'one'}"]])
  one = report.MetricsLog(tmp_path / "one" / "metrics.jsonl").read()
  two = report.MetricsLog(tmp_path / "two" / "metrics.jsonl").read()
  assert len(one) == len(two) == 3
  # Sums over workers (the averaged model, the consensus distance's mean) are
  # all-reduces whose order of addition differs between in-process and gloo
  # collectives: equal to float32 rounding. The consensus distance subtracts
  # that mean from each worker, which amplifies its rounding by |x| / |x - mean|
  # (seen: 1.2e-6 relative), hence 1e-5. Everything per worker is exact.
  across_workers = (
    "consensus_distance",
    "test_loss_averaged_model",
    "test_accuracy_averaged_model",
  )
  for a, b in zip(one, two):
    for key in a:
      if key in across_workers:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-5, err_msg=key)
      elif key not in report.TIMING_FIELDS:
        assert b[key] == a[key], key
  for x, y in zip(
    jax.tree.leaves(train.final_params(tmp_path / "two")),
    jax.tree.leaves(train.final_params(tmp_path / "one")),
  ):
    np.testing.assert_array_equal(x, y)
