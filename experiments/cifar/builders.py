"""Config -> library objects: graphs, schedule, compressor, consensus step, optimizer.

Each builder reads the method fields (``config.mixing``, ``config.schedule``,
``config.compressor``; see ``methods.py``) and their settings, and makes the
library calls that define the run; the library's factories check the values
they receive, and their errors name the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

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


def exchanged_schedule(config, schedule):
  """What the run exchanges step by step: ``schedule`` every gossip_every steps."""
  if schedule is None:
    return None
  return ald.schedules.every(schedule, config.get("gossip_every", 1))


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
  graphs = _graphs(config)
  if config.schedule == "full":
    parts = [ald.schedules.full(g) for g in graphs]
  elif config.schedule == "alternating":
    parts = [ald.schedules.alternating(g) for g in graphs]
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
  local = ald.local_sgd(learning_rate, **common)
  if config.mixing == "allreduce":
    return optax.chain(local, ald.allreduce())
  return local


@dataclasses.dataclass(frozen=True)
class Traffic:
  """What each step sends, as the library's message layout says.

  Attributes:
    message_bytes: one message: the buffer a worker sends along one active
      matching (gossip, AL-DSGD) or all-reduces (allreduce); 0 for local.
    sent: ``sent(step)`` is the ``(n,)`` bytes each worker sends at ``step``.
    parts: the ``ppermute`` sizes one active matching's message is sent in
      (they add up to ``message_bytes``; AL-DSGD on several matchings per
      step sends its loss and health flag first); empty where nothing is
      ppermuted (allreduce, local).
  """

  message_bytes: int
  sent: Callable[[int], np.ndarray]
  parts: tuple[int, ...] = ()

  @classmethod
  def of(cls, config, schedule, params) -> Traffic:
    """The traffic of the config's method on stacked ``params``."""
    one_worker = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), params
    )
    n = config.num_workers
    schedule = exchanged_schedule(config, schedule)
    compressor = build_compressor(config)
    leader = config.mixing == "adjacent_leader"
    parts = None  # one ppermute of the whole message per matching
    if compressor is not None:
      message = ald.choco_message_bytes(one_worker, compressor, with_loss=leader)
    elif leader:
      message = ald.adjacent_leader_message_bytes(one_worker)
      parts = ald.adjacent_leader_message_parts(one_worker, schedule)
    elif config.mixing == "gossip":
      message = ald.gossip_message_bytes(
        one_worker, skip_nonfinite=config.skip_nonfinite, delay=config.delay
      )
    elif config.mixing == "allreduce":
      every_step = np.full(n, ald.allreduce_bytes(n, one_worker))
      return cls(ald.gossip_message_bytes(one_worker), lambda step: every_step)
    else:
      return cls(0, lambda step: np.zeros(n))
    return cls(
      message, lambda step: schedule.sent_bytes(step, message), parts or (message,)
    )
