"""Reliability: bad configs, a diverging worker, corrupt checkpoints, kills, hangs."""

import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import jax_aldsgd as ald
from experiments.cifar import checkpoint as checkpoint_lib
from experiments.cifar import input_pipeline, methods, report, train
from tests import helpers
from tests.helpers import tiny_config

ROOT = pathlib.Path(__file__).parents[2]


@pytest.mark.parametrize(
  "overrides,message",
  [
    (
      dict(mixing="push_sum"),
      "config.mixing='push_sum' is not valid; choose one of "
      "allreduce, gossip, adjacent_leader, local",
    ),
    (dict(schedule="random"), "config.schedule='random' is not valid"),
    # A preset's name means its fields: --config.method alone changes nothing.
    (
      dict(method="matcha"),
      "config.method='matcha' names the preset .* but the config's method fields "
      "are mixing='adjacent_leader', schedule='alternating', compressor='none'. "
      "Choose a preset as the config's argument "
      "\\(--config=experiments/cifar/configs/default.py:matcha\\)",
    ),
    (
      dict(method="dpgsd"),
      "config.method='dpgsd' is not a preset, but the config's method fields .* "
      "are the preset 'aldsgd_dpsgd_reference'",
    ),
    (
      dict(schedule="none"),
      "config.schedule='none' does not fit config.mixing='adjacent_leader'",
    ),
    (
      dict(model="resnet18"),
      "config.model='resnet18' is not valid; choose one of resnet50, resnet20",
    ),
    (
      dict(dataset="mnist"),
      "config.dataset='mnist' is not valid; choose one of "
      "cifar10, cifar100, fashion_mnist",
    ),
    (dict(topology="star"), "config.topology='star' is not valid"),
    (dict(num_workers=1), "config.num_workers=1 must be an integer >= 2"),
    (dict(batch_size=0), "config.batch_size=0 must be an integer >= 1"),
    (dict(learning_rate=float("nan")), "config.learning_rate=nan must be a finite"),
    (
      dict(learning_rate=-0.1),
      "config.learning_rate=-0.1 must be a finite number in \\(0.0, inf\\]",
    ),
    (dict(lr_decay_epochs=(150, 100)), "must be an increasing tuple"),
    (dict(graph_ids=()), "config.graph_ids=\\(\\) must be a non-empty tuple"),
    (
      dict(data_source="idx"),
      "reads Debian's Fashion-MNIST files, but config.dataset='cifar10'",
    ),
  ],
)
def test_bad_config_fields(overrides, message):
  config = tiny_config()
  config.update(overrides)  # as --config.FIELD=VALUE does, after the preset
  with pytest.raises(ValueError, match=message):
    train.validate_config(config)


@pytest.mark.parametrize(
  "method,overrides,message",
  [
    ("dpsgd", dict(weight_decay=float("inf")), "weight_decay must be a finite"),
    ("dpsgd", dict(momentum=1.0), "momentum must be in \\[0.0, 1.0\\), got 1.0"),
    ("matcha", dict(matcha_budget=0.0), "budget must be in \\(0, 1\\]"),
    ("aldsgd_dpsgd", dict(c1=0.95), "c1 \\+ c2 must be <= 1"),
    ("aldsgd_dpsgd", dict(p2=-0.2), "p2 must be in \\[0.0, 1.0\\], got -0.2"),
  ],
)
def test_bad_fields_the_library_checks(method, overrides, message):
  """Fields passed on to the library's factories are checked there, once."""
  config = tiny_config(method, **overrides)
  with pytest.raises(ValueError, match=message):
    train.build_optimizer(config, train.build_schedule(config, 3), 0.1, 3)


@pytest.mark.parametrize(
  "method,overrides,message",
  [
    ("local", dict(gossip_every=4), "config.gossip_every=4 is an option of the"),
    ("local", dict(skip_nonfinite=True), "and config.mixing='local' does not"),
    ("local", dict(schedule="full"), "config.schedule='full' does not"),
    # The library's table (jax_aldsgd.check_options), in its words.
    ("allreduce", dict(delay=1), "allreduce cannot be combined with delay=1"),
    ("allreduce", dict(compressor="top_k"), "allreduce cannot be combined with"),
    ("aldsgd_matcha", dict(delay=2), "adjacent_leader cannot be combined with delay"),
    ("choco", dict(delay=1), "compressor='top_k' cannot be combined with delay=1"),
    ("dpsgd", dict(partition="shards"), "config.partition='shards' is not valid"),
    ("choco", dict(compressor="top_k_plus"), "config.compressor='top_k_plus' is not"),
    ("choco", dict(consensus_lr="fast"), "config.consensus_lr='fast' must be 'auto'"),
    ("choco", dict(consensus_lr="1.5"), "config.consensus_lr='1.5' must be 'auto'"),
    ("dpsgd", dict(dirichlet_alpha=0.0), "config.dirichlet_alpha=0.0 must be"),
    ("dpsgd", dict(classes_per_worker=0), "config.classes_per_worker=0 must be"),
    # The heterogeneous-data methods and normalisation (docs/algorithm.md
    # section 11).
    ("qg_dsgdm", dict(momentum=0.0), "momentum=0 is plain D-PSGD.*momentum=0.9"),
    ("d2", dict(momentum=0.9), "D² corrects plain SGD steps.*--config.momentum=0"),
    ("sgp", dict(schedule="matcha"), "'matcha' does not apply to config.topology="),
    ("sgp", dict(topology="ring"), "names the preset .* topology='ring'"),
    ("dpsgd", dict(norm="group", model="resnet50"), "'resnet50' has no group norm"),
    ("dpsgd", dict(norm="layer"), "config.norm='layer' is not valid"),
    ("dpsgd", dict(bn_stats="shared"), "config.bn_stats='shared' is not valid"),
    ("local", dict(bn_stats="gossip"), "and config.mixing='local' does not comm"),
    ("dpsgd", dict(bn_stats="gossip", norm="group"), "has none; leave --config.bn"),
  ],
)
def test_bad_communication_and_partition_fields(method, overrides, message):
  with pytest.raises(ValueError, match=message):
    train.validate_config(tiny_config(method, **overrides))


@pytest.mark.parametrize(
  "method,overrides,exchange,options",
  [
    ("aldsgd_dpsgd", dict(delay=1), "adjacent_leader", dict(delay=1)),
    ("choco", dict(delay=2), "gossip", dict(compressor="top_k", delay=2)),
    ("dpsgd", dict(delay=1, overlap=True), "gossip", dict(delay=1, overlap=True)),
    ("allreduce", dict(skip_nonfinite=True), "allreduce", dict(skip_nonfinite=True)),
    (
      "aldsgd_dpsgd",
      dict(topology="one_peer_exponential"),
      "adjacent_leader",
      dict(schedule=ald.schedules.one_peer_exponential(8)),
    ),
    (
      "qg_dsgdm",
      dict(compressor="top_k"),
      "quasi_global_momentum",
      dict(compressor="top_k"),
    ),
    ("d2", dict(overlap=True), "d2_gossip", dict(overlap=True)),
    ("gradient_tracking", dict(gossip_every=2), "tracking_gossip", dict(every=2)),
    ("gradient_tracking", dict(delay=1), "tracking_gossip", dict(delay=1)),
    ("d2", dict(skip_nonfinite=True), "d2_gossip", dict(skip_nonfinite=True)),
  ],
)
def test_refuses_what_the_library_refuses_in_its_words(
  method, overrides, exchange, options
):
  with pytest.raises(ValueError) as library:
    ald.check_options(exchange, **options)
  with pytest.raises(ValueError) as trainer:
    train.validate_config(tiny_config(method, **overrides))
  assert str(trainer.value) == str(library.value)


def test_allreduce_takes_local_steps_and_overlap():
  train.validate_config(tiny_config("allreduce", gossip_every=4, overlap=True))


def test_dpsgd_on_the_one_peer_exponential_graph_is_sgp():
  """Gossip with schedule full on that graph is both presets' method."""
  config = tiny_config("dpsgd", topology="one_peer_exponential")
  train.validate_config(config)
  assert methods.preset_of(config) == "sgp"
  assert train.build_schedule(config) == ald.schedules.one_peer_exponential(8)


def test_bad_runtime_combinations(mock_cifar, tmp_path):
  with pytest.raises(ValueError, match="32 workers need 32 devices"):
    train.train_and_evaluate(
      tiny_config(num_workers=32, graph_ids=(0,), topology="ring"), str(tmp_path / "a")
    )
  with pytest.raises(
    ValueError, match="num_workers=8 is not divisible by workers_per_device=3"
  ):
    train.train_and_evaluate(tiny_config(workers_per_device=3), str(tmp_path / "b"))
  with pytest.raises(
    ValueError, match="paper graph 10 has 16 workers but config.num_workers is 8"
  ):
    train.train_and_evaluate(tiny_config(graph_ids=(10,)), str(tmp_path / "c"))
  with pytest.raises(ValueError, match="fewer than batch_size 16"):
    train.train_and_evaluate(tiny_config(batch_size=16), str(tmp_path / "d"))


def test_diverging_worker_is_isolated_and_reported(mock_cifar, tmp_path, monkeypatch):
  """Worker 3's data turns to NaN from step 2 on; with skip_nonfinite the others
  stay finite and keep training, and the metrics name worker 3."""
  original = input_pipeline.WorkerBatches.batch

  def poisoned(self, epoch, step, workers=None):
    images, labels = original(self, epoch, step, workers)
    rows = list(range(self.num_workers) if workers is None else workers)
    if epoch * 100 + step >= 2 and 3 in rows:
      images[rows.index(3)] = np.nan
    return images, labels

  monkeypatch.setattr(input_pipeline.WorkerBatches, "batch", poisoned)
  train.train_and_evaluate(tiny_config(skip_nonfinite=True), str(tmp_path))
  records = report.MetricsLog(tmp_path / "metrics.jsonl").read()
  others = [w for w in range(8) if w != 3]
  for record in records:
    assert record["params_finite"][3] is False
    assert all(record["params_finite"][w] for w in others)
    assert record["nonfinite_steps"][3] > 0
    assert all(record["nonfinite_steps"][w] == 0 for w in others)
    assert all(np.isfinite(record["train_loss"][w]) for w in others)
    assert all(np.isfinite(record["test_loss"][w]) for w in others)
  params = train.final_params(tmp_path)
  for leaf in jax.tree.leaves(params):
    assert np.isfinite(leaf[others]).all()


def _corrupt(step_dir: pathlib.Path):
  """Flips bytes in the middle of the largest file of a checkpoint."""
  files = [f for f in step_dir.rglob("*") if f.is_file()]
  victim = max(files, key=lambda f: f.stat().st_size)
  data = bytearray(victim.read_bytes())
  middle = len(data) // 2
  data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
  victim.write_bytes(bytes(data))


@pytest.mark.slow
def test_corrupt_checkpoint_falls_back_to_the_previous_one(mock_cifar, tmp_path):
  config = tiny_config(num_epochs=3)
  train.train_and_evaluate(config, str(tmp_path / "whole"))
  parts = tmp_path / "parts"
  with pytest.raises(train.TrainingInterrupted):
    train.train_and_evaluate(tiny_config(num_epochs=3, stop_after_steps=7), str(parts))
  steps = sorted(
    int(p.name) for p in (parts / "checkpoints").iterdir() if p.name.isdigit()
  )
  assert steps == [6, 7]
  _corrupt(parts / "checkpoints" / "7")
  with pytest.warns(UserWarning, match="checkpoint 7 .* is unreadable or corrupt"):
    train.train_and_evaluate(config, str(parts))
  assert any((tmp_path / "parts" / "checkpoints-corrupt").iterdir())
  a = train.final_params(tmp_path / "whole")
  b = train.final_params(parts)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_all_checkpoints_corrupt_is_a_clear_error(mock_cifar, tmp_path):
  with pytest.raises(train.TrainingInterrupted):
    train.train_and_evaluate(tiny_config(stop_after_steps=4), str(tmp_path))
  for step_dir in (tmp_path / "checkpoints").iterdir():
    if step_dir.name.isdigit():
      _corrupt(step_dir)
  with pytest.raises(
    checkpoint_lib.CorruptCheckpointError,
    match="(?s)no intact checkpoint.*new --workdir",
  ):
    with pytest.warns(UserWarning):
      train.train_and_evaluate(tiny_config(), str(tmp_path))


def _run_command(workdir, data_dir):
  return [
    sys.executable,
    "-m",
    "experiments.cifar",
    "--config=experiments/cifar/configs/fashion_mnist.py",
    f"--workdir={workdir}",
    f"--config.data_dir={data_dir}",
    "--config.batch_size=4",
    "--config.num_epochs=5",
    "--config.lr_decay_epochs=(4,)",
    "--config.eval_batch_size=64",
    "--config.progress_bar=False",
    "--config.plots=False",
  ]


def _wait_for_epochs(workdir, count, process, timeout=240):
  deadline = time.monotonic() + timeout
  log = report.MetricsLog(pathlib.Path(workdir) / "metrics.jsonl")
  while time.monotonic() < deadline:
    if len(log.read()) >= count:
      return
    assert process.poll() is None, process.communicate()
    time.sleep(0.05)
  raise AssertionError(f"{workdir}: {count} epochs not reached in {timeout} s")


@pytest.mark.slow
def test_sigterm_and_sigkill_then_resume_equals_uninterrupted(tmp_path):
  """Real processes: one uninterrupted run; another stopped by SIGTERM, restarted,
  killed by SIGKILL at a random moment, restarted to the end. Same bits."""
  data = helpers.fake_fashion_mnist(tmp_path / "data")
  whole, parts = tmp_path / "whole", tmp_path / "parts"
  subprocess.run(
    _run_command(whole, data),
    cwd=ROOT,
    env=helpers.fresh_env(),
    check=True,
    capture_output=True,
    timeout=300,
  )

  process = subprocess.Popen(
    _run_command(parts, data),
    cwd=ROOT,
    env=helpers.fresh_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
  )
  _wait_for_epochs(parts, 1, process)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 128 + signal.SIGTERM, stderr.decode()[-2000:]
  assert b"rerun the same command to resume" in stderr

  process = subprocess.Popen(
    _run_command(parts, data),
    cwd=ROOT,
    env=helpers.fresh_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
  )
  _wait_for_epochs(parts, 2, process)
  time.sleep(random.uniform(0.0, 1.0))
  process.kill()
  process.communicate(timeout=60)
  assert process.returncode == -signal.SIGKILL  # killed before finishing

  subprocess.run(
    _run_command(parts, data),
    cwd=ROOT,
    env=helpers.fresh_env(),
    check=True,
    capture_output=True,
    timeout=300,
  )
  comparable = lambda d: [
    {k: v for k, v in r.items() if k not in report.TIMING_FIELDS}
    for r in report.MetricsLog(d / "metrics.jsonl").read()
  ]
  assert comparable(parts) == comparable(whole)
  assert len(comparable(whole)) == 5
  a, b = train.final_params(whole), train.final_params(parts)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


HANG = """
import jax_aldsgd as ald
ald.emulate_cpu_devices(4, collective_timeout_seconds=4)
import jax, jax.numpy as jnp
from jax import lax

def step(x):
  # Only worker 0 enters the collective: its peers never arrive.
  me = lax.axis_index("workers")
  return lax.cond(me == 0, lambda v: lax.ppermute(v, "workers", [(0, 1), (1, 0)]),
                  lambda v: v, x)

print(jax.jit(ald.worker_map(step, ald.worker_mesh(4)))(jnp.ones((4, 3))))
"""


def test_a_stuck_collective_fails_instead_of_hanging():
  """The 4 s collective timeout aborts the process (a hang would hit the
  subprocess timeout and fail the test)."""
  result = subprocess.run(
    [sys.executable, "-c", HANG],
    env=helpers.fresh_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode != 0
  assert "Termination timeout" in result.stderr
