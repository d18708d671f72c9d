"""The config checks the library does not make; each message names field and fix."""

from __future__ import annotations

import numpy as np

import jax_aldsgd as ald
from experiments.cifar import builders, input_pipeline, methods, models

TOPOLOGIES = (
  "paper",
  "ring",
  "torus",
  "exponential",
  "complete",
  "one_peer_exponential",
)


def _choice(config, name, valid):
  value = config[name]
  if value not in valid:
    raise ValueError(
      f"config.{name}={value!r} is not valid; choose one of "
      f"{', '.join(map(str, valid))} (e.g. --config.{name}="
      f"{next(iter(valid))})."
    )


def _integer(config, name, minimum):
  value = config[name]
  if (
    isinstance(value, bool)
    or not isinstance(value, (int, np.integer))
    or (value < minimum)
  ):
    raise ValueError(f"config.{name}={value!r} must be an integer >= {minimum}.")


def _real(config, name, low, high=None, low_open=False):
  value = config[name]
  ok = (
    not isinstance(value, bool)
    and isinstance(value, (int, float))
    and np.isfinite(value)
    and (value > low if low_open else value >= low)
    and (high is None or value <= high)
  )
  if not ok:
    interval = f"{'(' if low_open else '['}{low}, {'inf' if high is None else high}]"
    raise ValueError(f"config.{name}={value!r} must be a finite number in {interval}.")


def _check_method(config) -> None:
  """The method fields: valid, fitting together and with the options (the
  library's table, `jax_aldsgd.check_options`), and named by config.method."""
  _choice(config, "mixing", methods.MIXINGS)
  _choice(config, "schedule", methods.SCHEDULES)
  _choice(config, "compressor", methods.COMPRESSORS)
  if (config.mixing in methods.SCHEDULED) == (config.schedule == "none"):
    raise ValueError(
      f"config.schedule={config.schedule!r} does not fit "
      f"config.mixing={config.mixing!r}: {', '.join(methods.SCHEDULED)} need a "
      "schedule (full, alternating or matcha), allreduce and local take 'none'."
    )
  if config.topology == "one_peer_exponential" and config.schedule not in (
    "full",
    "none",
  ):
    raise ValueError(
      f"config.schedule={config.schedule!r} does not apply to "
      "config.topology='one_peer_exponential': that graph is its own "
      "time-varying schedule (one shift per step, docs/algorithm.md section "
      "11), with no matchings to alternate or sample; use --config.schedule=full "
      "(the sgp preset), or another topology."
    )
  _choice(config, "neighbor_weight", builders.NEIGHBOR_WEIGHTS)
  if config.neighbor_weight != "auto" and (
    config.schedule not in ("full", "alternating")
    or config.topology == "one_peer_exponential"
  ):
    raise ValueError(
      f"config.neighbor_weight={config.neighbor_weight!r} sets the weight of "
      "a graph's matchings under the full and alternating schedules; "
      f"config.schedule={config.schedule!r} on config.topology="
      f"{config.topology!r} has weights of its own. Leave it 'auto'."
    )
  if config.mixing == "local":  # no communication, so none of its options
    for name, default in (
      ("compressor", "none"),
      ("delay", 0),
      ("overlap", False),
      ("gossip_every", 1),
      ("skip_nonfinite", False),
    ):
      if config[name] != default:
        raise ValueError(
          f"config.{name}={config[name]!r} is an option of the communication, "
          f"and config.mixing='local' does not communicate; leave it at "
          f"{default!r}."
        )
  else:
    ald.check_options(
      methods.EXCHANGES[config.mixing],
      compressor=None if config.compressor == "none" else config.compressor,
      delay=config.delay,
      overlap=config.overlap,
      every=config.gossip_every,
      skip_nonfinite=config.skip_nonfinite,
      # A directed graph is a feature of the table too (AL-DSGD refuses it).
      schedule=builders.directed_schedule(config),
    )
  if config.mixing == "qg_dsgdm" and config.momentum == 0:
    raise ValueError(
      "config.mixing='qg_dsgdm' with config.momentum=0 is plain D-PSGD: the "
      "quasi-global momentum is the method; set --config.momentum=0.9 (the "
      "paper's, as the qg_dsgdm preset does), or use the dpsgd preset."
    )
  if config.mixing == "d2" and config.momentum != 0:
    raise ValueError(
      f"config.mixing='d2' with config.momentum={config.momentum!r}: D² "
      "corrects plain SGD steps (jax_aldsgd.d2 takes no momentum); set "
      "--config.momentum=0, or use qg_dsgdm or gradient_tracking for momentum."
    )
  methods.check(config)


def _check_normalization(config) -> None:
  """config.norm and config.bn_stats: valid, and meaningful together."""
  _choice(config, "norm", models.NORMS)
  _choice(config, "bn_stats", ("local", "gossip"))
  variants = models.MODELS_BY_NORM[config.norm]
  if config.model not in variants:
    raise ValueError(
      f"config.model={config.model!r} has no {config.norm} normalisation "
      f"variant (config.norm={config.norm!r}); use --config.norm=batch, or one "
      f"of {', '.join(variants)} as --config.model."
    )
  if config.bn_stats == "gossip" and config.norm != "batch":
    raise ValueError(
      f"config.bn_stats='gossip' mixes BatchNorm's running statistics, but "
      f"config.norm={config.norm!r} has none; leave --config.bn_stats=local."
    )
  if config.bn_stats == "gossip" and config.mixing == "local":
    raise ValueError(
      "config.bn_stats='gossip' mixes BatchNorm's statistics with the step's "
      "exchange, and config.mixing='local' does not communicate; leave "
      "--config.bn_stats=local, or choose a mixing that communicates."
    )


def validate_config(config) -> None:
  """Checks the fields the trainer reads itself; messages name field and fix.

  Which communication options combine is the library's table
  (`jax_aldsgd.check_options`, asked here before any data loads); the other
  fields passed on to the library (momentum, weight decay, AL-DSGD
  coefficients, MATCHA budget and seed, workers per device) are checked by its
  factories when the run builds them.
  """
  _choice(config, "topology", TOPOLOGIES)
  _check_method(config)
  _choice(config, "dataset", tuple(input_pipeline.DATASETS))
  _choice(config, "data_source", input_pipeline.SOURCES)
  _choice(config, "model", tuple(models.MODELS))
  _check_normalization(config)
  _choice(config, "graph_variant", ("pairs", "triples"))
  _choice(config, "partition", input_pipeline.PARTITIONS)
  if config.consensus_lr != "auto":
    try:
      gamma = float(config.consensus_lr)
    except (TypeError, ValueError):
      gamma = None
    if gamma is None or not 0.0 < gamma <= 1.0:
      raise ValueError(
        f"config.consensus_lr={config.consensus_lr!r} must be "
        "'auto' or a number in (0, 1], e.g. "
        "--config.consensus_lr=0.3."
      )
  graph_ids = config.graph_ids
  if (
    not isinstance(graph_ids, (tuple, list))
    or not graph_ids
    or not all(isinstance(g, int) and not isinstance(g, bool) for g in graph_ids)
  ):
    raise ValueError(
      f"config.graph_ids={config.graph_ids!r} must be a non-empty "
      "tuple of paper graph ids in step order, e.g. (1, 0)."
    )
  for name, minimum in (
    ("num_workers", 2),
    ("batch_size", 1),
    ("eval_batch_size", 1),
    ("num_epochs", 1),
    ("seed", 0),
    ("max_steps_per_epoch", 0),
    ("max_eval_examples", 0),
    ("interim_eval_examples", 0),
    ("stop_after_steps", 0),
    ("classes_per_worker", 1),
  ):
    _integer(config, name, minimum)
  _real(config, "learning_rate", 0.0, low_open=True)
  _real(config, "lr_decay_factor", 0.0, 1.0, low_open=True)
  _real(config, "dirichlet_alpha", 0.0, low_open=True)
  decay = config.lr_decay_epochs
  if (
    not isinstance(decay, (tuple, list))
    or not all(
      isinstance(e, (int, float)) and not isinstance(e, bool) and e >= 0 for e in decay
    )
    or list(decay) != sorted(decay)
  ):
    raise ValueError(
      f"config.lr_decay_epochs={decay!r} must be an increasing tuple "
      "of epochs, e.g. (100, 150); () for a constant rate."
    )
  for name in (
    "same_init",
    "skip_nonfinite",
    "progress_bar",
    "plots",
    "reference_epoch_phase",
    "overlap",
  ):
    if not isinstance(config[name], bool):
      raise ValueError(f"config.{name}={config[name]!r} must be True or False.")
  if config.data_source == "idx" and config.dataset != "fashion_mnist":
    raise ValueError(
      f"config.data_source='idx' reads Debian's Fashion-MNIST files, "
      f"but config.dataset={config.dataset!r}; use data_source='tfds'."
    )
