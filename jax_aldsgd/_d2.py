"""D²: gossip with a correction that removes the data-heterogeneity bias.

Tang, Lian, Yan, Zhang & Liu, ICML 2018 (docs/algorithm.md section 11). With
``u`` the local optimizer's update (``u = -lr g`` for SGD), step 0 is D-PSGD
and each later step mixes ``x_half = x + u + (x - x_prev - u_prev)``:
``x+ = W_k x_half``. The state keeps one parameter-sized tree, the previous
step's ``x_prev + u_prev``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_aldsgd import (
  _checks,
  _compat,
  _gossip,
  _packing,
  _traffic,
  _workers,
)
from jax_aldsgd._schedules import Schedule, check_schedule

# D²'s analysis needs lambda_min(W) > -1/3 (Tang et al. 2018, assumption 1).
LAMBDA_MIN_BOUND = -1.0 / 3.0
_MAX_PATTERNS = 4096


class D2State(NamedTuple):
  """State of `d2_gossip`.

  Attributes:
    count: the step counter that drives the schedule (int32 scalar).
    previous_point: ``x_prev + u_prev``, the previous step's ``x`` plus the
      local optimizer's ``u`` (before mixing), in the parameters' dtype; the
      initial parameters before step 0.
  """

  count: jax.Array
  previous_point: Any


def _pattern_matrix(schedule: Schedule, pattern) -> np.ndarray:
  """``W = I - sum_{s in pattern} alpha_s (D_s - P_s)`` for one activation mask."""
  w = np.eye(schedule.num_workers)
  for s in np.flatnonzero(np.asarray(pattern, bool)):
    for i, j in enumerate(schedule.slot_partners[s]):
      if j >= 0:
        w[i, i] -= schedule.slot_weight[s]
        w[i, j] += schedule.slot_weight[s]
  return w


def smallest_mixing_eigenvalue(schedule: Schedule) -> float:
  """The smallest (real part of an) eigenvalue of any step's ``W_k``.

  Over the schedule's activation patterns, computed on the host; a schedule
  that cannot enumerate them is checked over its first 1024 steps.
  """
  schedule = check_schedule(schedule)
  patterns = schedule.activation_patterns(_MAX_PATTERNS)
  if patterns is None:
    matrices = [schedule.mixing_matrix(step) for step in range(1024)]
  else:
    matrices = [_pattern_matrix(schedule, p) for p in patterns]
  return float(min(np.linalg.eigvals(w).real.min() for w in matrices))


def largest_d2_weight(schedule: Schedule) -> float | None:
  """Neighbor weights below this keep ``lambda_min(W) > -1/3`` on every graph.

  ``lambda_min(I - alpha L) = 1 - alpha lambda_max(L)``, and a subset of a
  graph's matchings (MATCHA) has a smaller ``lambda_max``, so the bound is
  ``4 / (3 lambda_max(L))`` over the schedule's graphs. None for a schedule
  without graphs (a directed one).
  """
  bounds = [
    4.0 / (3.0 * np.linalg.eigvalsh(graph.laplacian())[-1])
    for graph in schedule.graphs
    if graph.num_matchings
  ]
  return float(min(bounds)) if bounds else None


def warn_if_d2_unstable(schedule: Schedule) -> None:
  """Warns when some step's ``W_k`` has ``lambda_min <= -1/3`` (docs section 11)."""
  smallest = smallest_mixing_eigenvalue(schedule)
  if smallest > LAMBDA_MIN_BOUND:
    return
  bound = largest_d2_weight(schedule)
  if bound is None:
    fix = "use neighbor weights that keep lambda_min(W_k) > -1/3"
  else:
    weight = math.floor(bound * 1000 - 1e-9) / 1000  # strictly below the bound
    fix = (
      f"neighbor weights below 4 / (3 lambda_max(L)) = {bound:.4g} keep it "
      f"above, e.g. schedules.full(topology, neighbor_weight={weight})"
    )
  warnings.warn(
    f"d2 on a schedule whose mixing matrix has lambda_min = {smallest:.4g} <= "
    f"-1/3: D² needs lambda_min(W) > -1/3 and may diverge; {fix}.",
    UserWarning,
    stacklevel=3,
  )


def d2_message_bytes(params) -> int:
  """Bytes one worker sends along one active slot under `d2_gossip`: ``x_half``."""
  return _packing.message_bytes(params)


def d2_gossip(
  schedule: Schedule, axis_name: str = "workers"
) -> optax.GradientTransformationExtraArgs:
  """D²'s exchange, after any local optimizer (Tang et al., 2018).

  Runs inside ``jax.shard_map`` over ``axis_name``, after a local optimizer in
  ``optax.chain``. With ``x`` the parameters and ``u`` the incoming updates,
  worker i mixes (docs/algorithm.md section 11)

    ``x_half_i = x_i + u_i``                                   at step 0,
    ``x_half_i = x_i + u_i + (x_i - x_prev_i - u_prev_i)``     after it,

  ``x_i+ = sum_j W_k[i, j] x_half_j``, and returns ``x_i+ - x_i``. For SGD
  (``u = -lr g``) this is ``x_half = 2 x - x_prev - lr (g - g_prev)``. One
  message of the parameters' size per active slot, as gossip.

  Args:
    schedule: which slots are active per step and their neighbor weight
      (`jax_aldsgd.schedules`, directed ones included); its ``num_workers``
      must equal the axis size.
    axis_name: the mesh axis the workers are mapped over.

  D² needs ``lambda_min(W_k) > -1/3``: a ``UserWarning`` names the value
  when some step's ``W_k`` breaks it. The options of `gossip` (compressor,
  delay, overlap, every, skip_nonfinite) do not apply (`check_options`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (`jax_aldsgd.traffic` says
    what a step sends); ``update`` needs ``params``.

  Example:
    >>> import optax, jax_aldsgd as ald
    >>> schedule = ald.schedules.full(ald.topologies.ring(8), neighbor_weight=0.3)
    >>> tx = optax.chain(optax.sgd(0.1), ald.d2_gossip(schedule))

  References:
    Tang, Lian, Yan, Zhang & Liu, 2018, "D²: Decentralized Training over
    Decentralized Data" (ICML).
  """
  schedule = check_schedule(schedule)
  _compat.check_options("d2_gossip", schedule=schedule)
  warn_if_d2_unstable(schedule)

  # x_half = x + u + (x - x_prev - u_prev) needs x_prev and u_prev only through
  # s = x_prev + u_prev, so the state keeps s (one copy of the parameters, not
  # two). Starting from s = x at init zeroes the correction at step 0: x - s is
  # exactly 0 there, and the step is D-PSGD's.
  def init_fn(params):
    # A copy: a state sharing the params' buffers could not donate both.
    return D2State(jnp.zeros([], jnp.int32), jax.tree.map(jnp.copy, params))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _checks.check_params(params, "d2_gossip")
    me = _workers.worker_index(axis_name, schedule)

    # v = x_half - x = u + (x - s), s = x_prev + u_prev.
    step = jax.tree.map(
      lambda u, x, s: u + (x - s).astype(u.dtype),
      updates,
      params,
      state.previous_point,
    )
    x_half = jax.tree.map(jnp.add, params, step)
    buffer, unpack = _packing.pack(x_half)
    # W b - b, b the packed message (the gossip rule, `_gossip.mix`).
    delta, _ = _gossip.mix(
      buffer, schedule=schedule, step=state.count, me=me, axis_name=axis_name
    )
    delta_tree, _ = unpack(delta)
    new_updates = jax.tree.map(lambda v, d: (v + d).astype(v.dtype), step, delta_tree)
    point = jax.tree.map(lambda u, x: x + u.astype(x.dtype), updates, params)
    return new_updates, D2State(state.count + 1, point)

  def traffic_of(params):
    size = d2_message_bytes(params)
    return _traffic.Traffic(schedule.num_workers, size, (size,), schedule)

  return _traffic.transformation(init_fn, update_fn, traffic_of)
