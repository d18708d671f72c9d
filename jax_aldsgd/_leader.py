"""AL-DSGD: gossip plus a pull toward the adjacent leader and the max-degree neighbour."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_aldsgd import _checks
from jax_aldsgd import _exchange
from jax_aldsgd._gossip import check_params, check_schedule
from jax_aldsgd._schedules import Schedule


class AdjacentLeaderState(NamedTuple):
  """State of `adjacent_leader`: the step counter that drives the schedule."""

  count: jax.Array  # int32 scalar


def _check_loss(loss) -> jax.Array:
  if loss is None:
    raise ValueError(
        "adjacent_leader needs this worker's scalar mini-batch loss to rank "
        "neighbours: call update(updates, state, params, loss=loss), with the "
        "loss of the current parameters on this worker's batch.")
  loss = jnp.asarray(loss)
  if loss.shape != ():
    raise ValueError(f"loss must be this worker's scalar loss, got shape "
                     f"{loss.shape}; reduce it (e.g. mean over the batch) and, "
                     "under jax.shard_map, squeeze the worker axis.")
  if not jnp.issubdtype(loss.dtype, jnp.floating):
    raise TypeError(f"loss must be a floating-point scalar, got dtype {loss.dtype}.")
  return loss


def check_pull_coefficients(c1, c2, p1, p2, pull_every):
  """Validates AL-DSGD's coefficients (concrete values; tracers pass through)."""
  for name, value in (("c1", c1), ("c2", c2), ("p1", p1), ("p2", p2)):
    _checks.check_real(name, value, low=0.0, high=1.0)
  for a, b, va, vb in (("c1", "c2", c1, c2), ("p1", "p2", p1, p2)):
    x, y = _checks.concrete_scalar(a, va), _checks.concrete_scalar(b, vb)
    if x is not None and y is not None and x + y > 1.0:
      raise ValueError(f"{a} + {b} must be <= 1 (they are averaging weights), got "
                       f"{a}={x} + {b}={y} = {x + y}.")
  every = _checks.concrete_scalar("pull_every", pull_every)
  if every is not None and (not float(every).is_integer() or every < 1):
    raise ValueError(f"pull_every must be an integer >= 1 (pull every that many "
                     f"steps; 1 pulls at every step), got {pull_every!r}.")


def adjacent_leader_message_bytes(params) -> int:
  """Bytes one worker sends along one active matching under `adjacent_leader`.

  The packed parameters plus two scalars: the loss and a health flag.

  Args:
    params: one worker's parameters (arrays or ``jax.ShapeDtypeStruct``).
  """
  return _exchange.message_bytes(params, 2)


def adjacent_leader(schedule: Schedule, axis_name: str = "workers", *,
                    c1: float = 0.3, c2: float = 0.1, p1: float = 0.2,
                    p2: float = 0.2, pull_every: int = 1,
                    skip_nonfinite: bool = False
                   ) -> optax.GradientTransformationExtraArgs:
  """AL-DSGD: gossip, then averaging with and a pull toward two chosen neighbours.

  Runs inside ``jax.shard_map`` over ``axis_name``, one worker per device, after a
  local optimizer in ``optax.chain`` (ALGORITHM.md section 2). With ``x_hat = x + u``
  the local step's result and ``l`` the workers' pre-step losses, worker i:

  1. gossips: ``v_i = x_hat_i + alpha sum_{j in N_i} (x_hat_j - x_hat_i)``;
  2. on a pull step (``k % pull_every == 0``) with ``N_i`` non-empty, takes
     ``S_i = [i] + N_i`` (self first, then partners by matching index), the
     adjacent leader ``b = first argmin_{j in S_i} l_j`` and the max-degree node
     ``m = first argmax_{j in S_i} d_j`` (``d`` = active degree this step), and moves to

     ``y = (1 - c1 - c2) v_i + c1 x_hat_b + c2 x_hat_m``
     ``x_i = y - p1 (y - x_hat_b) - p2 (y - x_hat_m)``

     i.e. ``x_i = A v_i + B x_hat_b + C x_hat_m`` with ``A = (1-p1-p2)(1-c1-c2)``,
     ``B = (1-p1-p2) c1 + p1``, ``C = (1-p1-p2) c2 + p2`` (0.36, 0.38, 0.26 by default).

  Since ``A + B + C = 1``, the update is computed as differences (the way
  ``optax.lookahead`` writes its pull): ``x_i - x_hat_i = A (v_i - x_hat_i) +
  B (x_hat_b - x_hat_i) + C (x_hat_m - x_hat_i)``, and the returned updates are
  ``x_i - x``. One ``ppermute`` per active matching carries a neighbour's
  parameters, loss and health flag together; the degrees are computed locally from
  the schedule. The loss is ranked as given; the mixing keeps rows stochastic but,
  unlike plain gossip, does not preserve the workers' mean.

  A worker whose loss or parameters are not finite is never chosen as leader or
  max-degree node (the next eligible one in ``S_i`` order is), and with
  ``skip_nonfinite=True`` it is also left out of its neighbours' gossip average.

  Args:
    schedule: which matchings are active per step and their neighbour weight;
      its ``num_workers`` must equal the axis size.
    axis_name: the mesh axis the workers are mapped over.
    c1: averaging weight of the adjacent leader (performance term).
    c2: averaging weight of the max-degree node (degree term); ``c1 + c2 <= 1``.
    p1: corrective pull toward the adjacent leader.
    p2: corrective pull toward the max-degree node; ``p1 + p2 <= 1``.
    pull_every: pull period ``I`` (the reference's default for AL-DSGD is 1).
    skip_nonfinite: leave non-finite neighbours out of the gossip average.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs ``params``
    and the extra argument ``loss=`` (this worker's scalar mini-batch loss).

  Raises:
    ValueError: for coefficients outside [0, 1], ``c1 + c2 > 1``, ``p1 + p2 > 1``,
      ``pull_every < 1``; at trace time for a missing ``params`` or ``loss``, a
      non-scalar ``loss``, or an axis whose size is not ``schedule.num_workers``.

  Example:
    >>> import optax, jax_aldsgd as ald
    >>> schedule = ald.schedules.full(ald.topologies.paper_graph(0))
    >>> opt = optax.chain(optax.sgd(0.4), ald.adjacent_leader(schedule))
    >>> # inside shard_map: opt.update(grads, state, params, loss=loss)

  References:
    He, Wang & Choromanska, 2024, "Adjacent Leader Decentralized Stochastic
    Gradient Descent" (arXiv 2405.11389).
  """
  schedule = check_schedule(schedule)
  check_pull_coefficients(c1, c2, p1, p2, pull_every)
  skip_nonfinite = bool(skip_nonfinite)

  def init_fn(params):
    del params
    return AdjacentLeaderState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, *, loss=None, **extra_args):
    del extra_args
    check_params(params, "adjacent_leader")
    loss = _check_loss(loss)
    me = _exchange.worker_index(axis_name, schedule)
    step = state.count
    x_hat = jax.tree.map(jnp.add, params, updates)
    self_ok = _exchange.all_finite(x_hat) & jnp.isfinite(loss)
    buffer, unpack = _exchange.pack(x_hat, (loss, self_ok.astype(jnp.float32)))
    near = _exchange.neighbourhood(schedule, step, me, buffer.dtype)

    # Visit S_i = [i] + N_i in order, keeping (as differences to x_hat_i) the
    # running gossip sum, the first strict argmin of the loss and the first strict
    # argmax of the active degree among healthy entries; self is entry 0.
    def combine(carry, received, at_slot, common):
      gossip_sum, leader, target, best_loss, best_degree = carry
      present, partner_degree = at_slot
      own, _ = common
      diff = received - own
      neighbour_ok = present & (received[-1] > 0.5)
      mixes = neighbour_ok if skip_nonfinite else present
      gossip_sum = gossip_sum + jnp.where(mixes, diff, 0)  # alpha applied below
      better = neighbour_ok & (received[-2] < best_loss)
      best_loss = jnp.where(better, received[-2], best_loss)
      leader = jnp.where(better, diff, leader)
      higher = neighbour_ok & (partner_degree > best_degree)
      best_degree = jnp.where(higher, partner_degree, best_degree)
      target = jnp.where(higher, diff, target)
      return gossip_sum, leader, target, best_loss, best_degree

    def start(common):
      own, (own_loss, own_degree) = common
      zeros = jnp.zeros_like(own)
      # gossip sum, x_hat_b - x_hat_i, x_hat_m - x_hat_i, best loss, best degree
      return zeros, zeros, zeros, own_loss, own_degree

    own_rank = (jnp.where(self_ok, loss.astype(buffer.dtype), jnp.inf),
                jnp.where(self_ok, near.degrees[me], -1))
    gossip_sum, leader, target, _, _ = _exchange.fold(
        buffer, schedule, step, axis_name, combine, start,
        (near.present, near.degrees[near.partner]), (buffer, own_rank))
    gossip_sum = near.weight * gossip_sum

    dtype = buffer.dtype
    keep = (1 - p1 - p2)
    a = jnp.asarray(keep * (1 - c1 - c2), dtype)
    b = jnp.asarray(keep * c1 + p1, dtype)
    c = jnp.asarray(keep * c2 + p2, dtype)
    pull = (step % jnp.asarray(pull_every, jnp.int32)) == 0
    delta = jnp.where(pull, a * gossip_sum + b * leader + c * target, gossip_sum)
    delta_tree, _ = unpack(delta)
    new_updates = jax.tree.map(lambda u, d: (u + d).astype(u.dtype), updates,
                               delta_tree)
    return new_updates, AdjacentLeaderState(count=step + 1)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
