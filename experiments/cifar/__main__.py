r"""Runs the paper's experiments: ``python -m experiments.cifar --config=... --workdir=...``.

The config's argument is a method preset (configs/default.py lists them) and
other fields are overridden on the command line, e.g.
``--config=experiments/cifar/configs/default.py:matcha --config.num_epochs=3``.
Rerunning the same command resumes from the workdir's latest checkpoint;
SIGINT/SIGTERM save a checkpoint before exiting (with several processes, all of
them at the same step).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

import jax_aldsgd

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for metrics, plots and checkpoints.")
config_flags.DEFINE_config_file(
  "config",
  None,
  "Training config file, e.g. experiments/cifar/configs/default.py.",
  lock_config=True,
)
flags.DEFINE_bool(
  "distributed",
  False,
  "Run under JAX's multi-controller runtime (jax.distributed.initialize): one "
  "process per host. Without the three flags below JAX detects the cluster "
  "(TPU pods, SLURM, Open MPI, Kubernetes).",
)
flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0 (implies --distributed)."
)
flags.DEFINE_integer("num_processes", None, "Number of processes.")
flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  # Orbax logs every checkpoint step at INFO; keep the console for progress.
  logging.set_verbosity(logging.WARNING)
  distributed = FLAGS.distributed or FLAGS.coordinator_address is not None
  devices = config.num_workers // max(config.workers_per_device, 1)
  if distributed and FLAGS.num_processes:
    devices = max(devices // FLAGS.num_processes, 1)
  # Before JAX starts: on a machine without accelerators the workers run on
  # emulated CPU devices (harmless where accelerators exist: JAX uses those).
  jax_aldsgd.emulate_cpu_devices(devices)
  if distributed:
    jax_aldsgd.initialize_multihost(
      FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
  from experiments.cifar import train

  try:
    train.train_and_evaluate(config, FLAGS.workdir)
  except train.TrainingInterrupted as stopped:
    print(stopped, file=sys.stderr)
    sys.exit(128 + stopped.signum if stopped.signum else 0)


if __name__ == "__main__":
  app.run(main)
