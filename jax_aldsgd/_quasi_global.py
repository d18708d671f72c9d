"""Quasi-global momentum (QG-DSGDm): momentum built from the gossip's displacement.

Lin, Karimireddy, Stich & Jaggi, ICML 2021 (docs/algorithm.md section 11). The
local step uses the momentum buffer ``m`` without updating it; after the
exchange, ``m`` follows the displacement the whole step made, ``(x - x+) / lr``,
which includes the neighbors' pull, so on heterogeneous data it tracks a
global direction rather than the worker's own gradient.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_aldsgd import (
  _checks,
  _compat,
  _gossip,
  _packing,
  _traffic,
  _workers,
)
from jax_aldsgd._d2 import smallest_mixing_eigenvalue
from jax_aldsgd._schedules import Schedule, check_schedule


class QuasiGlobalMomentumState(NamedTuple):
  """State of `quasi_global_momentum`.

  Attributes:
    count: the step counter that drives the schedule and the learning rate.
    momentum: the quasi-global momentum buffer ``m`` (zeros at first).
  """

  count: jax.Array
  momentum: Any


def _learning_rate_at(learning_rate, count):
  return learning_rate(count) if callable(learning_rate) else learning_rate


def qg_stability_bound(momentum: float, nesterov: bool = True) -> float:
  """The eigenvalue of ``W`` below which QG-DSGDm's disagreement grows.

  Without gradients, along an eigenvector of a fixed ``W`` with eigenvalue
  ``lam``, the workers' disagreement ``e`` and ``v = lr m`` follow
  ``e+ = lam (e - c v)``, ``v+ = mu v + (1 - mu) (e - e+)`` with ``c = beta^2``
  (Nesterov) or ``beta`` (heavy ball). That linear map has an eigenvalue
  below -1, so ``e`` grows geometrically, exactly when ``lam`` is below
  ``-(1 + mu) / (1 + mu + 2 (1 - mu) c)`` (docs/algorithm.md section 11):
  -0.921 for ``beta = mu = 0.9`` with Nesterov, -0.914 heavy ball.
  """
  _checks.check_real("momentum", momentum, low=0.0, high=1.0, high_open=True)
  c = momentum**2 if nesterov else momentum
  return -(1.0 + momentum) / (1.0 + momentum + 2.0 * (1.0 - momentum) * c)


def warn_if_qg_unstable(schedule: Schedule, momentum: float, nesterov: bool) -> None:
  """Warns when some step's ``W_k`` has an eigenvalue at or below
  `qg_stability_bound` (a directed schedule's ``(I + P) / 2`` never does)."""
  if schedule.directed:
    return
  try:
    momentum = float(momentum)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return  # traced (optax.inject_hyperparams): no host-side check
  bound = qg_stability_bound(momentum, nesterov)
  smallest = smallest_mixing_eigenvalue(schedule)
  if smallest > bound:
    return
  warnings.warn(
    f"quasi_global_momentum(momentum={momentum}) on a schedule whose mixing "
    f"matrix has lambda_min = {smallest:.4g} <= {bound:.4g}: along that "
    "eigenvector the momentum overshoots and the workers' disagreement grows "
    "geometrically (docs/algorithm.md section 11); use neighbor weights that "
    "keep lambda_min above the bound, e.g. schedules.full(topology, "
    "neighbor_weight=1 / lambda_max(L)) (a positive semidefinite W), or a "
    "smaller momentum.",
    UserWarning,
    stacklevel=3,
  )


def quasi_global_momentum(
  learning_rate: optax.ScalarOrSchedule,
  schedule: Schedule,
  *,
  momentum: float = 0.9,
  nesterov: bool = True,
  axis_name: str = "workers",
) -> optax.GradientTransformationExtraArgs:
  """QG-DSGDm's local step and exchange, after any gradient transformation.

  Runs inside ``jax.shard_map`` over ``axis_name``. The incoming updates are the
  gradient ``g`` (after whatever precedes it: weight decay, clipping, a
  preconditioner); with ``beta = momentum = mu`` and ``lr`` the learning rate of
  the step, worker i computes (docs/algorithm.md section 11)

    ``b = beta m_i + g_i``
    ``x_half_i = x_i - lr (g_i + beta b)`` (Nesterov) or ``x_i - lr b``
    ``x_i+ = sum_j W_k[i, j] x_half_j``
    ``m_i <- mu m_i + (1 - mu) (x_i - x_i+) / lr``

  and returns ``x_i+ - x_i``. One message of the parameters' size per active
  slot, as gossip. At a step whose learning rate is 0, ``m`` is kept.

  The momentum overshoots along eigenvectors of ``W_k`` whose eigenvalue is
  below `qg_stability_bound` (-0.921 for ``momentum=0.9``): the workers then
  drift apart geometrically. D-PSGD's neighbor weight can do that (the ring of
  16: ``lambda_min = -0.927``); a ``UserWarning`` names the value.

  Args:
    learning_rate: a positive float or an optax schedule of the step.
    schedule: which slots are active per step and their neighbor weight
      (`jax_aldsgd.schedules`, directed ones included).
    momentum: ``beta = mu`` in [0, 1).
    nesterov: Nesterov's form (default, as the paper) or heavy ball.
    axis_name: the mesh axis the workers are mapped over.

  The options of `gossip` (compressor, delay, overlap, every,
  skip_nonfinite) do not apply (`check_options`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (`jax_aldsgd.traffic` says
    what a step sends); ``update`` needs ``params``.

  Example:
    >>> import optax, jax_aldsgd as ald
    >>> schedule = ald.schedules.full(ald.topologies.ring(8))
    >>> tx = optax.chain(
    ...   optax.add_decayed_weights(5e-4), ald.quasi_global_momentum(0.1, schedule)
    ... )

  References:
    Lin, Karimireddy, Stich & Jaggi, 2021, "Quasi-Global Momentum: Accelerating
    Decentralized Deep Learning on Heterogeneous Data" (ICML).
  """
  schedule = check_schedule(schedule)
  if not callable(learning_rate):
    _checks.check_real("learning_rate", learning_rate, low=0.0, low_open=True)
  _checks.check_real("momentum", momentum, low=0.0, high=1.0, high_open=True)
  nesterov = bool(nesterov)
  _compat.check_options("quasi_global_momentum", schedule=schedule)
  warn_if_qg_unstable(schedule, momentum, nesterov)

  def init_fn(params):
    return QuasiGlobalMomentumState(
      jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params)
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _checks.check_params(params, "quasi_global_momentum")
    me = _workers.worker_index(axis_name, schedule)
    lr = jnp.asarray(_learning_rate_at(learning_rate, state.count), jnp.float32)
    beta = momentum

    def local_step(g, m):  # x_half - x
      b = beta * m + g
      return (-lr * (g + beta * b) if nesterov else -lr * b).astype(m.dtype)

    step = jax.tree.map(local_step, updates, state.momentum)
    buffer, unpack = _packing.pack(jax.tree.map(jnp.add, params, step))
    # W b - b, b the packed message (the gossip rule, `_gossip.mix`).
    delta, _ = _gossip.mix(
      buffer, schedule=schedule, step=state.count, me=me, axis_name=axis_name
    )
    delta_tree, _ = unpack(delta)
    new_updates = jax.tree.map(lambda v, d: (v + d).astype(v.dtype), step, delta_tree)

    # m <- mu m + (1 - mu) (x - x+) / lr, with x+ - x the returned updates.
    def new_momentum(m, u):
      moved = beta * m - (1 - beta) * u / jnp.where(lr > 0, lr, 1)
      return jnp.where(lr > 0, moved, m).astype(m.dtype)

    momentum_buffer = jax.tree.map(new_momentum, state.momentum, new_updates)
    return new_updates, QuasiGlobalMomentumState(state.count + 1, momentum_buffer)

  def traffic_of(params):
    size = _packing.message_bytes(params)
    return _traffic.Traffic(schedule.num_workers, size, (size,), schedule)

  return _traffic.transformation(init_fn, update_fn, traffic_of)
