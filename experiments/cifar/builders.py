"""Config -> library objects: graphs, schedule, compressor, optimizer, traffic.

Each builder reads the method fields (``config.mixing``, ``config.schedule``,
``config.compressor``; see ``methods.py``) and their settings, and makes the
library calls that define the run; the library's factories check the values
they receive, and their errors name the field.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import optax

import jax_aldsgd as ald
from experiments.cifar import methods


def _graphs(config) -> list[ald.Topology]:
  n = config.num_workers
  if config.topology == "paper":
    graphs = [
      ald.topologies.paper_graph(
        g, config.graph_variant, allow_disconnected=len(config.graph_ids) > 1
      )
      for g in config.graph_ids
    ]
    for g, graph in zip(config.graph_ids, graphs):
      if graph.num_workers != n:
        raise ValueError(
          f"paper graph {g} has {graph.num_workers} workers but "
          f"config.num_workers is {n}; set --config.num_workers="
          f"{graph.num_workers} or choose other graph_ids."
        )
    return graphs
  if config.topology == "torus":
    rows = int(np.sqrt(n))
    while n % rows:
      rows -= 1
    return [ald.topologies.torus(rows, n // rows)]
  return [getattr(ald.topologies, config.topology)(n)]


def build_schedule(
  config, steps_per_epoch: int | None = None
) -> ald.schedules.Schedule | None:
  """The schedule ``config.schedule`` on the config's graphs (None for "none").

  Several graphs (``config.graph_ids``) rotate, one per step. With
  ``config.reference_epoch_phase`` the rotation restarts every
  ``steps_per_epoch`` steps, as the reference's does each epoch.
  """
  methods.check(config)
  if config.schedule == "none":
    return None
  directed = directed_schedule(config)
  if directed is not None:
    return directed
  graphs = _graphs(config)
  weight = lambda g: neighbor_weight(config, g)
  if config.schedule == "full":
    parts = [ald.schedules.full(g, weight(g)) for g in graphs]
  elif config.schedule == "alternating":
    parts = [ald.schedules.alternating(g, weight(g)) for g in graphs]
  else:  # matcha; validate_config admits nothing else
    parts = [
      ald.schedules.matcha(g, config.matcha_budget, seed=config.matcha_seed)
      for g in graphs
    ]
  if len(parts) == 1:
    return parts[0]
  return ald.schedules.rotating(
    parts, restart_every=_epoch_phase(config, steps_per_epoch)
  )


# config.neighbor_weight: the weight alpha of a graph's matchings (full and
# alternating schedules). auto: psd for PSD_MIXINGS, dpsgd otherwise.
NEIGHBOR_WEIGHTS = ("auto", "dpsgd", "psd")
# The methods whose analysis needs lambda_min(W) bounded away from -1.
PSD_MIXINGS = ("d2", "qg_dsgdm", "gradient_tracking")


def neighbor_weight(config, graph: ald.Topology) -> float | None:
  """The neighbor weight on ``graph`` (None: the schedule's default, D-PSGD's).

  ``dpsgd`` is D-PSGD's alpha = 2 / (lambda_2 + lambda_max) of the Laplacian
  L (the library's default); ``psd`` is 1 / lambda_max(L), which makes every
  W_k = I - alpha L positive semidefinite. ``auto`` takes ``psd`` for D²,
  which needs lambda_min(W_k) > -1/3 (D-PSGD's alpha gives -0.81 on the paper
  pair, -0.74 on the ring of 8), for QG-DSGDm, whose momentum drives the
  workers apart below -0.921 at momentum 0.9 (D-PSGD's alpha gives -0.927 on
  the ring of 16), and for gradient tracking, stable only for lr L < (1 +
  lambda_min)^2 / 2 (docs/algorithm.md section 11); ``dpsgd`` for the others.
  """
  choice = config.neighbor_weight
  if choice == "auto":
    choice = "psd" if config.mixing in PSD_MIXINGS else "dpsgd"
  if choice == "dpsgd":
    return None
  return float(1.0 / np.linalg.eigvalsh(graph.laplacian())[-1])


def directed_schedule(config) -> ald.schedules.Schedule | None:
  """The schedule of a directed topology (one_peer_exponential), else None.

  Such a topology is a time-varying schedule of its own (shifts, not
  matchings), taken with ``config.schedule='full'``; validate_config refuses
  the other schedules on it.
  """
  if config.topology != "one_peer_exponential" or config.schedule == "none":
    return None
  return ald.schedules.one_peer_exponential(config.num_workers)


def _epoch_phase(config, steps_per_epoch):
  """Steps after which the reference restarts its counters (None: never)."""
  if not config.reference_epoch_phase:
    return None
  if steps_per_epoch is None:
    raise ValueError(
      "config.reference_epoch_phase=True needs the number of steps "
      "per epoch to build the schedule."
    )
  return steps_per_epoch


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  boundaries = {
    int(e * steps_per_epoch): config.lr_decay_factor for e in config.lr_decay_epochs
  }
  return optax.piecewise_constant_schedule(config.learning_rate, boundaries)


def build_compressor(config):
  """The compressor ``config.compressor`` (None for "none")."""
  if config.compressor == "none":
    return None
  if config.compressor == "qsgd":
    return ald.compressors.qsgd(config.qsgd_levels, seed=config.seed)
  if config.compressor == "random_k":
    return ald.compressors.random_k(config.compress_fraction, seed=config.seed)
  if config.compressor == "top_k":
    return ald.compressors.top_k(config.compress_fraction)
  return ald.compressors.scaled_sign()


def consensus_lr(config, schedule) -> float | None:
  """CHOCO's consensus step: the config's, or tuned when it is "auto".

  The tuner (`jax_aldsgd.tune_consensus_lr`) runs pure compressed consensus
  with this schedule and compressor on 1000 random parameters per worker,
  seeded by config.seed, so a resumed run gets the same value.
  """
  compressor = build_compressor(config)
  if compressor is None:
    return None
  if config.consensus_lr != "auto":
    return float(config.consensus_lr)
  tuned = ald.tune_consensus_lr(schedule, compressor, num_params=1000, seed=config.seed)
  return float(tuned.consensus_lr)


def build_optimizer(
  config,
  schedule,
  learning_rate,
  steps_per_epoch: int | None = None,
  choco_lr: float | None = None,
) -> optax.GradientTransformation:
  """The local optimizer chained with the mixing rule ``config.mixing``.

  The library's factories check their arguments (momentum, weight decay, the
  AL-DSGD coefficients, the MATCHA budget); their errors name the field.
  """
  methods.check(config)
  common = dict(momentum=config.momentum, weight_decay=config.weight_decay)
  compressor = build_compressor(config)
  if compressor is not None:
    if choco_lr is None:
      raise ValueError(
        f"config.compressor={config.compressor!r} needs the consensus step "
        "(see consensus_lr)."
      )
    common.update(compressor=compressor, consensus_lr=choco_lr)
  if config.mixing == "adjacent_leader":
    return ald.aldsgd(
      learning_rate,
      schedule,
      c1=config.c1,
      c2=config.c2,
      p1=config.p1,
      p2=config.p2,
      pull_every=config.pull_every,
      skip_nonfinite=config.skip_nonfinite,
      overlap=config.overlap,
      every=config.gossip_every,
      pull_restart_every=_epoch_phase(config, steps_per_epoch),
      **common,
    )
  if config.mixing == "gossip":
    return ald.dsgd(
      learning_rate,
      schedule,
      skip_nonfinite=config.skip_nonfinite,
      overlap=config.overlap,
      every=config.gossip_every,
      delay=config.delay,
      **common,
    )
  # The heterogeneous-data methods (docs/algorithm.md section 11); their
  # options (compressor, overlap, every, delay, skip_nonfinite) are refused by
  # the library's table before this point.
  if config.mixing == "qg_dsgdm":
    return ald.qg_dsgdm(learning_rate, schedule, **common)
  if config.mixing == "d2":
    return ald.d2(learning_rate, schedule, weight_decay=config.weight_decay)
  if config.mixing == "gradient_tracking":
    return ald.gradient_tracking(learning_rate, schedule, **common)
  local = ald.local_sgd(learning_rate, **common)
  if config.mixing == "allreduce":
    return optax.chain(local, _allreduce(config))
  return local


def _allreduce(config) -> optax.GradientTransformationExtraArgs:
  return ald.allreduce(overlap=config.overlap, every=config.gossip_every)


def build_stats_exchange(config, schedule) -> optax.GradientTransformation | None:
  """The exchange of BatchNorm's running statistics (None: they stay local).

  With ``config.bn_stats='gossip'`` the statistics move as parameters would
  under the step's exchange with zero updates: ``jax_aldsgd.gossip`` gives
  ``W_k s - s`` (on the run's schedule, every ``config.gossip_every`` steps),
  ``jax_aldsgd.allreduce`` the mean minus ``s``.
  """
  if config.bn_stats == "local":
    return None
  if config.mixing == "allreduce":
    return ald.allreduce(every=config.gossip_every)
  return ald.gossip(
    schedule, every=config.gossip_every, skip_nonfinite=config.skip_nonfinite
  )


def _one_worker(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), tree)


def traffic(config, tx, params, stats_tx=None, batch_stats=None) -> ald.Traffic:
  """What one step of ``tx`` (`build_optimizer`'s) sends, on stacked ``params``.

  ``jax_aldsgd.traffic`` of the optimizer; for allreduce, of its all-reduce,
  since the chain of local SGD and all-reduce does not say what it sends.
  With ``stats_tx`` (`build_stats_exchange`'s), the stacked ``batch_stats``
  travel along the same slots at the same steps: each message grows by theirs.
  """
  if config.mixing == "allreduce":
    tx = _allreduce(config)
  result = ald.traffic(tx, _one_worker(params), num_workers=config.num_workers)
  if stats_tx is None:
    return result
  stats = ald.traffic(
    stats_tx, _one_worker(batch_stats), num_workers=config.num_workers
  )
  if (stats.schedule, stats.allreduce, stats.every) != (
    result.schedule,
    result.allreduce,
    result.every,
  ):
    raise ValueError(
      f"the BatchNorm statistics' exchange ({stats}) does not run on the "
      f"parameters' slots and steps ({result}); this trainer cannot count it."
    )
  return dataclasses.replace(
    result,
    message_bytes=result.message_bytes + stats.message_bytes,
    parts=result.parts + stats.parts,
  )
