"""Gossip averaging (D-PSGD, MATCHA) and the all-reduce baseline, as optax transforms."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_aldsgd import _exchange
from jax_aldsgd import _network
from jax_aldsgd._schedules import Schedule


class GossipState(NamedTuple):
  """State of `gossip`: the step counter that drives the schedule."""

  count: jax.Array  # int32 scalar


def check_params(params, name: str):
  if params is None:
    raise ValueError(
        f"{name} needs the current parameters: call "
        "update(updates, state, params, ...). It moves x_hat = params + updates "
        "toward the neighbours' x_hat.")
  _exchange.check_float_leaves(params, "params")


def check_schedule(schedule) -> Schedule:
  if not isinstance(schedule, Schedule):
    raise TypeError("schedule must be a jax_aldsgd schedule (see "
                    "jax_aldsgd.schedules: full, alternating, matcha, explicit, "
                    f"rotating), got {type(schedule).__name__}.")
  return schedule


def gossip(schedule: Schedule, axis_name: str = "workers", *,
           skip_nonfinite: bool = False) -> optax.GradientTransformationExtraArgs:
  """Gossip averaging with the neighbours of the active matchings (D-PSGD, MATCHA).

  Runs inside ``jax.shard_map`` over ``axis_name``, one worker per device, after a
  local optimizer in ``optax.chain``. With ``x`` the parameters and ``u`` the
  incoming updates (so ``x_hat = x + u`` is the local step's result), worker i
  moves to (ALGORITHM.md section 2, step 5)

    ``v_i = x_hat_i + alpha_k sum_{s active, i matched in s} (x_hat_{j_s(i)} - x_hat_i)``

  i.e. ``v = W_k x_hat`` with ``W_k = I - alpha_k sum_{s in A_k} L_s`` (``alpha_k``
  of the step's graph: a rotating schedule runs one graph per step); the returned
  updates are ``v - x``. Each active matching costs one ``ppermute`` of the
  parameters; inactive matchings cost none.

  Args:
    schedule: which matchings are active per step and their neighbour weight
      (`jax_aldsgd.schedules`); its ``num_workers`` must equal the axis size.
    axis_name: the mesh axis the workers are mapped over.
    skip_nonfinite: if True, a neighbour whose parameters contain NaN/Inf is left
      out of the average for that step (its weight goes back to the worker itself),
      so one diverging worker does not poison its neighbours. Costs one finiteness
      reduction over the parameters per step.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Example:
    >>> import optax, jax_aldsgd as ald
    >>> schedule = ald.schedules.full(ald.topologies.ring(8))
    >>> opt = optax.chain(optax.sgd(0.1), ald.gossip(schedule))

  References:
    Lian et al., 2017, "Can Decentralized Algorithms Outperform Centralized
    Algorithms?"; Wang et al., 2019, "MATCHA" (arXiv 1905.09435).
  """
  schedule = check_schedule(schedule)
  skip_nonfinite = bool(skip_nonfinite)

  def init_fn(params):
    del params
    return GossipState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    check_params(params, "gossip")
    me = _exchange.worker_index(axis_name, schedule)
    x_hat = jax.tree.map(jnp.add, params, updates)
    # With skip_nonfinite, a health flag travels with the parameters.
    extras = ((_exchange.all_finite(x_hat).astype(jnp.float32),) if skip_nonfinite
              else ())
    buffer, unpack = _exchange.pack(x_hat, extras)
    near = _exchange.neighbourhood(schedule, state.count, me, buffer.dtype)

    # v - x_hat = alpha sum_{s present} (x_hat_partner - x_hat). The fold only adds
    # differences and alpha multiplies once: no multiply-add for XLA to contract
    # into an FMA in one device layout and not in another.
    def combine(total, received, present, own):
      use = present
      if skip_nonfinite:
        use = use & (received[-1] > 0.5)
      return total + jnp.where(use, received - own, 0)

    delta = near.weight * _exchange.fold(
        buffer, schedule, state.count, axis_name, combine, jnp.zeros_like,
        near.present, buffer)
    delta_tree, _ = unpack(delta)
    new_updates = jax.tree.map(lambda u, d: (u + d).astype(u.dtype), updates,
                               delta_tree)
    return new_updates, GossipState(count=state.count + 1)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def gossip_message_bytes(params, *, skip_nonfinite: bool = False) -> int:
  """Bytes one worker sends along one active matching under `gossip`.

  The message is the packed parameters (float32, or wider if a leaf is), plus a
  health flag with ``skip_nonfinite``.

  Args:
    params: one worker's parameters (arrays or ``jax.ShapeDtypeStruct``).
    skip_nonfinite: as given to `gossip`.
  """
  return _exchange.message_bytes(params, 1 if skip_nonfinite else 0)


def allreduce_bytes(num_workers: int, params) -> float:
  """Bytes each worker sends per step of `allreduce`, as a ring all-reduce.

  ``2 (n - 1) / n`` of the packed parameters (reduce-scatter, then all-gather).
  """
  return _network.ring_allreduce_fraction(num_workers) * _exchange.message_bytes(
      params)


def allreduce(axis_name: str = "workers") -> optax.GradientTransformationExtraArgs:
  """Centralized baseline: every worker moves to the mean of all ``x_hat``.

  ``x_i <- mean_j x_hat_j`` (one ``pmean`` over ``axis_name`` of one packed buffer),
  returned as updates ``mean_j x_hat_j - x_i``. With identical initial parameters
  this is synchronous data-parallel SGD.

  Args:
    axis_name: the mesh axis the workers are mapped over.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    check_params(params, "allreduce")
    _exchange.worker_index(axis_name)
    x_hat = jax.tree.map(jnp.add, params, updates)
    buffer, unpack = _exchange.pack(x_hat)
    mean_tree, _ = unpack(_exchange.mean_over_workers(buffer, axis_name))
    new_updates = jax.tree.map(lambda m, x: (m - x).astype(x.dtype), mean_tree,
                               params)
    return new_updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
