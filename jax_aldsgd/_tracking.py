"""Gradient tracking (DIGing, GT-DSGD): each worker steps along a tracker of the mean gradient.

Nedić, Olshevsky & Shi, 2017 (docs/algorithm.md section 11). Besides ``x``,
every worker keeps ``y``, mixed with the same ``W_k`` and corrected by the
change of its own gradient, so that the workers' mean of ``y`` is always the
mean of their latest gradients; stepping along ``y`` instead of the local
gradient removes the heterogeneity bias. ``x`` and ``y`` travel together, one
message of twice the parameters' size per active slot.
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


class TrackingState(NamedTuple):
  """State of `tracking_gossip`.

  Attributes:
    count: the step counter that drives the schedule and the learning rate.
    mixed_tracker: ``y_hat = W y`` of the previous step (zeros at first).
    previous_gradient: ``g`` of the previous step.
    momentum: the momentum buffer on ``y`` (``optax.EmptyState()`` without
      momentum).
  """

  count: jax.Array
  mixed_tracker: Any
  previous_gradient: Any
  momentum: Any


def tracking_message_bytes(params) -> int:
  """Bytes one worker sends along one active slot: ``x`` and ``y`` packed together."""
  return _packing.message_bytes((params, params))


# Below this lambda_min(W), gradient tracking needs lr * L < (1 + lambda_min)^2
# / 2 < 0.056 (L: the gradients' Lipschitz constant), docs/algorithm.md
# section 11: tracking_gossip warns.
TRACKING_LAMBDA_MIN = -2.0 / 3.0


def warn_if_tracking_fragile(schedule: Schedule) -> None:
  """Warns when some step's ``W_k`` has ``lambda_min < TRACKING_LAMBDA_MIN``."""
  if schedule.directed:  # (I + P) / 2: real parts >= 0
    return
  smallest = smallest_mixing_eigenvalue(schedule)
  if smallest >= TRACKING_LAMBDA_MIN:
    return
  limit = (1.0 + smallest) ** 2 / 2.0
  warnings.warn(
    f"tracking_gossip on a schedule whose mixing matrix has lambda_min = "
    f"{smallest:.4g}: along that eigenvector x and the tracker y are stable only "
    f"for learning_rate * L < (1 + lambda_min)^2 / 2 = {limit:.3g}, L the "
    "gradients' Lipschitz constant (docs/algorithm.md section 11); use neighbor "
    "weights that keep lambda_min near or above 0, e.g. schedules.full("
    "topology, neighbor_weight=1 / lambda_max(L)) (a positive semidefinite W).",
    UserWarning,
    stacklevel=3,
  )


def tracking_gossip(
  learning_rate: optax.ScalarOrSchedule,
  schedule: Schedule,
  *,
  momentum: float = 0.0,
  nesterov: bool = False,
  axis_name: str = "workers",
) -> optax.GradientTransformationExtraArgs:
  """Gradient tracking's local step and exchange, after any gradient transformation.

  Runs inside ``jax.shard_map`` over ``axis_name``. The incoming updates are the
  gradient ``g`` (after whatever precedes it: weight decay, clipping); with
  ``lr`` the learning rate of the step, worker i computes (docs/algorithm.md
  section 11)

    ``y_i = g_i`` (step 0), ``y_i = y_hat_i + g_i - g_prev_i`` (after it)
    ``x_i+ = sum_j W_k[i, j] x_j - lr d_i``,  ``y_hat_i = sum_j W_k[i, j] y_j``

  where ``d = y`` without momentum, and with it PyTorch's SGD momentum on ``y``:
  ``buf <- momentum buf + y``, ``d = buf`` (or ``y + momentum buf`` with
  ``nesterov``). Returns ``x_i+ - x_i``. ``x`` and ``y`` are packed into one
  buffer: one ``ppermute`` of twice the parameters' size per active slot.

  Along an eigenvector of ``W_k`` with eigenvalue ``lam`` (on a quadratic of
  curvature ``L``), ``x`` and ``y`` are stable only for ``lr L < (1 +
  lam)^2 / 2``: a ``W_k`` with ``lambda_min`` near -1 (D-PSGD's neighbor weight
  on the ring of 16 gives -0.927, so ``lr L < 0.0027``) makes the method
  diverge at any useful learning rate; a ``UserWarning`` names the value when
  ``lambda_min < -2/3``.

  Args:
    learning_rate: a non-negative float or an optax schedule of the step.
    schedule: which slots are active per step and their neighbor weight
      (`jax_aldsgd.schedules`, directed ones included).
    momentum: momentum on the tracker in [0, 1) (0: none, no buffer).
    nesterov: Nesterov's form of the momentum.
    axis_name: the mesh axis the workers are mapped over.

  The options of `gossip` (compressor, delay, overlap, every,
  skip_nonfinite) do not apply (`check_options`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (`jax_aldsgd.traffic` says
    what a step sends); ``update`` needs ``params``.

  Example:
    >>> import optax, jax_aldsgd as ald
    >>> # 1 / lambda_max(L) = 1/4 on the ring: W positive semidefinite.
    >>> schedule = ald.schedules.full(ald.topologies.ring(8), neighbor_weight=0.25)
    >>> tx = optax.chain(
    ...   optax.add_decayed_weights(5e-4), ald.tracking_gossip(0.1, schedule)
    ... )

  References:
    Nedić, Olshevsky & Shi, 2017, "Achieving Geometric Convergence for
    Distributed Optimization over Time-Varying Graphs" (SIAM J. Optim.).
  """
  schedule = check_schedule(schedule)
  if not callable(learning_rate):
    _checks.check_real("learning_rate", learning_rate, low=0.0)
  _checks.check_real("momentum", momentum, low=0.0, high=1.0, high_open=True)
  nesterov = bool(nesterov)
  _compat.check_options("tracking_gossip", schedule=schedule)
  warn_if_tracking_fragile(schedule)
  # A literal 0 builds no momentum buffer; an array (inject_hyperparams) does.
  use_momentum = isinstance(momentum, jax.Array) or momentum != 0
  if nesterov and not use_momentum:
    raise ValueError("nesterov=True needs momentum > 0, got momentum=0.")

  def init_fn(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    buffer = zeros if use_momentum else optax.EmptyState()
    return TrackingState(jnp.zeros([], jnp.int32), zeros, zeros, buffer)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _checks.check_params(params, "tracking_gossip")
    me = _workers.worker_index(axis_name, schedule)
    lr = _learning_rate_at(learning_rate, state.count)
    started = state.count > 0
    gradient = jax.tree.map(lambda g, x: g.astype(x.dtype), updates, params)
    tracker = jax.tree.map(
      lambda g, y_hat, g_prev: jnp.where(started, y_hat + g - g_prev, g),
      gradient,
      state.mixed_tracker,
      state.previous_gradient,
    )
    if use_momentum:
      buffer = jax.tree.map(lambda b, y: momentum * b + y, state.momentum, tracker)
      direction = (
        jax.tree.map(lambda y, b: y + momentum * b, tracker, buffer)
        if nesterov
        else buffer
      )
    else:
      buffer, direction = state.momentum, tracker

    # One message carries both: W [x, y] - [x, y] = alpha sum_s (partner - own).
    message, unpack = _packing.pack((params, tracker))
    # W b - b, b the packed message (the gossip rule, `_gossip.mix`).
    delta, _ = _gossip.mix(
      message, schedule=schedule, step=state.count, me=me, axis_name=axis_name
    )
    (x_delta, y_delta), _ = unpack(delta)
    new_updates = jax.tree.map(
      lambda dx, d: (dx - lr * d).astype(dx.dtype), x_delta, direction
    )
    mixed_tracker = jax.tree.map(
      lambda y, dy: (y + dy).astype(y.dtype), tracker, y_delta
    )
    if use_momentum:
      buffer = jax.tree.map(lambda b, x: b.astype(x.dtype), buffer, params)
    return new_updates, TrackingState(state.count + 1, mixed_tracker, gradient, buffer)

  def traffic_of(params):
    size = tracking_message_bytes(params)
    return _traffic.Traffic(schedule.num_workers, size, (size,), schedule)

  return _traffic.transformation(init_fn, update_fn, traffic_of)


def _learning_rate_at(learning_rate, count):
  return learning_rate(count) if callable(learning_rate) else learning_rate
