"""Gossip with bounded staleness: push-sum with messages delayed by ``delay`` steps.

A simulator of asynchrony (Assran et al., 2019, "Stochastic Gradient Push",
overlap SGP; docs/algorithm.md section 10). Each worker i holds ``z_i`` and a
push-sum weight ``psi_i`` (1 at the start), with parameters ``x_i = z_i / psi_i``.
At step t, with ``u_i`` the local optimizer's update (from the gradient at
``x_i``) and ``W`` the step's (symmetric, doubly stochastic) mixing matrix:

  ``z_hat_i = z_i + u_i``
  ``z_i+ = w_ii z_hat_i + sum_{j != i} w_ij z_hat_j(t - delay)``
  ``psi_i+ = w_ii psi_i + sum_{j != i} w_ij psi_j(t - delay)``

Worker j sends its shares ``w_ij (z_hat_j, psi_j)`` at step t; they are mixed in
by i at step ``t + delay``. Nothing is lost in flight: the sum over workers of
``z`` plus what is in flight changes only by the updates, and that of ``psi``
plus what is in flight stays ``n``, exactly as in plain gossip.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jax_aldsgd import _checks, _fold, _packing, _plan, _traffic, _workers
from jax_aldsgd._schedules import Schedule


def warn_if_negative_self_weight(schedule: Schedule) -> None:
  """Warns when a worker's own weight ``w_ii = 1 - d_i alpha`` can be negative.

  Push-sum with delays needs non-negative weights: with a negative ``w_ii`` the
  delayed shares can drive ``psi`` through zero and ``x = z / psi`` diverges
  (seen on the reference's graph pair, D-PSGD's ``alpha = 2/7`` and degree 5:
  ``w_ii = -0.43``, delay 4). Without delay the same weights are fine.
  """
  patterns = schedule.activation_patterns(4096)
  if patterns is None:  # every slot may be active at once
    patterns = {(True,) * schedule.num_slots}
  present = schedule.slot_partners >= 0  # (S, n)
  weight = np.asarray(schedule.slot_weight)
  worst = max(
    float(
      np.max(
        (np.asarray(p)[:, None] * present).sum(0) * np.max(weight[list(p)], initial=0.0)
      )
    )
    for p in patterns
  )
  if worst > 1.0:
    warnings.warn(
      f"gossip(delay=...) on a schedule whose self-weights 1 - degree * alpha "
      f"reach {1.0 - worst:.3g} < 0: delayed push-sum is not stable with "
      "negative weights and may diverge. Use neighbor weights alpha <= "
      "1 / (max degree + 1), e.g. schedules.full(topology, "
      "neighbor_weight=1 / (max(topology.degrees) + 1)).",
      stacklevel=3,
    )


class DelayedGossipState(NamedTuple):
  """State of delayed gossip.

  Attributes:
    count: the step counter that drives the schedule.
    weight: this worker's push-sum weight ``psi`` (float32 scalar).
    in_flight: ``(delay, L)``: the sums of the shares that reach this worker at
      the next ``delay`` steps, the next one first; each row is the packed
      ``z`` shares followed by the ``psi`` share.
  """

  count: jax.Array
  weight: jax.Array
  in_flight: jax.Array


def delayed_gossip(
  schedule: Schedule, axis_name: str, delay: int
) -> _traffic.Transformation:
  """Push-sum gossip whose neighbor shares arrive ``delay`` steps after sending.

  ``delay = 0`` is plain gossip computed in the push-sum form (``psi`` stays 1
  up to rounding); `jax_aldsgd.gossip` uses this for ``delay >= 1`` only.
  The state holds ``delay`` packed parameter-sized buffers (the shares in
  flight); the exchange itself is that of `gossip`, one ``ppermute`` per
  active matching carrying ``(z_hat, psi)``. Inside one jitted step this does
  not hide any latency: the messages really travel at step t and wait in the
  receiver's state; it is for studying how methods degrade with stale
  neighbors, reproducibly.
  """

  def init_fn(params):
    leaves = jax.tree.leaves(params)
    dtype = jnp.result_type(jnp.float32, *(leaf.dtype for leaf in leaves))
    size = sum(leaf.size for leaf in leaves) + 1  # + psi
    return DelayedGossipState(
      count=jnp.zeros([], jnp.int32),
      weight=jnp.ones([], jnp.float32),
      in_flight=jnp.zeros((delay, size), dtype),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _checks.check_params(params, "gossip")
    me = _workers.worker_index(axis_name, schedule)
    x, unpack = _packing.pack(params)
    u, _ = _packing.pack(updates)
    psi = state.weight.astype(x.dtype)
    z_hat = jnp.concatenate([psi * x + u, psi[None]])  # (L,): z_hat, then psi
    near = _plan.neighborhood(schedule, state.count, me, x.dtype)

    def combine(total, received, present, common):
      del common
      return total + jnp.where(present, received, 0)

    incoming = near.weight * _fold.fold(
      z_hat,
      schedule=schedule,
      step=state.count,
      axis_name=axis_name,
      combine=combine,
      start=jnp.zeros_like,
      per_slot=near.present,
      common=z_hat,
    )
    if delay:
      arrived = state.in_flight[0]
      in_flight = jnp.concatenate([state.in_flight[1:], incoming[None]])
    else:
      arrived, in_flight = incoming, state.in_flight
    keep = 1 - near.degrees[me].astype(x.dtype) * near.weight  # w_ii
    mixed = keep * z_hat + arrived
    new_psi = mixed[-1]
    new_x, _ = unpack(mixed[:-1] / new_psi)
    new_updates = jax.tree.map(
      lambda n, p, u: (n - p).astype(u.dtype), new_x, params, updates
    )
    return new_updates, DelayedGossipState(
      count=state.count + 1, weight=new_psi.astype(jnp.float32), in_flight=in_flight
    )

  def traffic_of(params):
    size = _packing.message_bytes(params, 1)  # z_hat and psi
    return _traffic.Traffic(schedule.num_workers, size, (size,), schedule)

  return _traffic.transformation(init_fn, update_fn, traffic_of)
