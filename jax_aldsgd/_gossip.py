"""Gossip averaging and the all-reduce, exchanging the parameters themselves.

The rules of `jax_aldsgd.gossip` without compression or delay (D-PSGD,
MATCHA: ``x_i <- x_hat_i + alpha sum_s (x_hat_{j_s} - x_hat_i)``,
docs/algorithm.md section 2, step 5) and of `jax_aldsgd.allreduce`
(``x_i <- mean_j x_hat_j``). The public factories, with their options, are in
``_transforms``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_aldsgd import _checks, _fold, _packing, _plan, _traffic, _workers
from jax_aldsgd._schedules import Schedule


class GossipState(NamedTuple):
  """State of `gossip`: the step counter that drives the schedule."""

  count: jax.Array  # int32 scalar


def gossip_message_bytes(
  params, *, skip_nonfinite: bool = False, delay: int | None = None
) -> int:
  """Bytes one worker sends along one active matching under `gossip`.

  The message is the packed parameters (float32, or wider if a leaf is), plus a
  health flag with ``skip_nonfinite``, or the push-sum weight with ``delay``.

  Args:
    params: one worker's parameters (arrays or ``jax.ShapeDtypeStruct``).
    skip_nonfinite: as given to `gossip`.
    delay: as given to `gossip`.
  """
  return _packing.message_bytes(params, 1 if skip_nonfinite or delay else 0)


def allreduce_bytes(num_workers: int, params) -> float:
  """Bytes each worker sends per step of `allreduce`, as a ring all-reduce.

  ``2 (n - 1) / n`` of the packed parameters (reduce-scatter, then all-gather).
  """
  return _traffic.ring_allreduce_fraction(num_workers) * _packing.message_bytes(params)


def gossip_traffic(schedule: Schedule, message_bytes: int) -> _traffic.Traffic:
  """The traffic of one message of ``message_bytes`` per active slot."""
  return _traffic.Traffic(
    schedule.num_workers, message_bytes, (message_bytes,), schedule
  )


def mix(buffer, *, schedule, step, me, axis_name, skip_nonfinite=False):
  """``(W_k b - b, neighborhood)`` for this worker's packed buffer ``b``.

  The gossip rule, written once: ``alpha sum_{s present} (b_{j_s} - b)`` over
  the step's active slots (every method that mixes with ``W_k`` calls it). The
  fold only adds differences and alpha multiplies once: no multiply-add for XLA
  to contract into an FMA in one device layout and not in another. With
  ``skip_nonfinite`` the buffer carries a health flag (``pack(health=True)``)
  and unhealthy neighbors are left out.
  """
  near = _plan.neighborhood(schedule, step, me, buffer.dtype)

  def combine(total, received, present, own):
    use = present
    if skip_nonfinite:
      use = use & _packing.buffer_healthy(received)
    return total + jnp.where(use, received - own, 0)

  total = _fold.fold(
    buffer,
    schedule=schedule,
    step=step,
    axis_name=axis_name,
    combine=combine,
    start=jnp.zeros_like,
    per_slot=near.present,
    common=buffer,
  )
  return near.weight * total, near


def plain_gossip(
  schedule: Schedule, axis_name: str, skip_nonfinite: bool
) -> optax.GradientTransformationExtraArgs:
  """Gossip exchanging the parameters (see `jax_aldsgd.gossip`)."""

  def init_fn(params):
    del params
    return GossipState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _checks.check_params(params, "gossip")
    me = _workers.worker_index(axis_name, schedule)
    x_hat = jax.tree.map(jnp.add, params, updates)
    # With skip_nonfinite, a health flag travels with the parameters.
    buffer, unpack = _packing.pack(x_hat, health=skip_nonfinite)
    delta, _ = mix(
      buffer,
      schedule=schedule,
      step=state.count,
      me=me,
      axis_name=axis_name,
      skip_nonfinite=skip_nonfinite,
    )
    delta_tree, _ = unpack(delta)
    new_updates = jax.tree.map(
      lambda u, d: (u + d).astype(u.dtype), updates, delta_tree
    )
    return new_updates, GossipState(count=state.count + 1)

  def traffic_of(params):
    return gossip_traffic(
      schedule, gossip_message_bytes(params, skip_nonfinite=skip_nonfinite)
    )

  return _traffic.transformation(init_fn, update_fn, traffic_of)


def mean_exchange(axis_name: str) -> optax.GradientTransformationExtraArgs:
  """The all-reduce: every worker moves to the mean of all ``x_hat``."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _checks.check_params(params, "allreduce")
    _workers.worker_index(axis_name)
    x_hat = jax.tree.map(jnp.add, params, updates)
    buffer, unpack = _packing.pack(x_hat)
    mean_tree, _ = unpack(_workers.mean_over_workers(buffer, axis_name))
    new_updates = jax.tree.map(lambda m, x: (m - x).astype(x.dtype), mean_tree, params)
    return new_updates, state

  def traffic_of(params):
    # No schedule says how many workers: `jax_aldsgd.traffic` asks the caller.
    return _traffic.Traffic(None, _packing.message_bytes(params), allreduce=True)

  return _traffic.transformation(init_fn, update_fn, traffic_of)
