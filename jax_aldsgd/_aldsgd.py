"""AL-DSGD's rule: which neighbors pull, and by how much (docs/algorithm.md section 2).

Written once and used by both exchanges that run it: the plain one here
(`plain_adjacent_leader`, parameters on the wire) and the compressed one
(``_choco``, public copies on the wire). With ``x_hat`` the local step's
result, worker i moves by one weighted sum over the step's active slots,

  ``x_i - x_hat_i = sum_s w_s (x_hat_{j_s} - x_hat_i)``,
  ``w_s = mix [s mixes] + pull_b [j_s = b] + pull_c [j_s = m]``,

where ``b`` (the adjacent leader, first strict argmin of the loss) and ``m``
(the max-degree node, first strict argmax of the active degree) are chosen
among the healthy entries of ``S_i = [i] + N_i`` (`choose`), and on a pull
step ``mix = A alpha``, ``pull_b = B``, ``pull_c = C`` (`PullRule`), else
``mix = alpha`` and no pull.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_aldsgd import _checks, _fold, _packing, _plan, _traffic, _workers
from jax_aldsgd._schedules import Schedule, check_schedule


class AdjacentLeaderState(NamedTuple):
  """State of `adjacent_leader`: the step counter that drives the schedule."""

  count: jax.Array  # int32 scalar


@dataclasses.dataclass(frozen=True)
class PullRule:
  """AL-DSGD's coefficients and pull period (checked on construction).

  Attributes:
    c1, c2: averaging weights of the adjacent leader and the max-degree node.
    p1, p2: corrective pulls toward them.
    pull_every: pull at steps where ``phase % pull_every == 0``.
    pull_restart_every: the phase is ``step % pull_restart_every`` (the
      reference restarts it each epoch); None: the step itself.
  """

  c1: float = 0.3
  c2: float = 0.1
  p1: float = 0.2
  p2: float = 0.2
  pull_every: int = 1
  pull_restart_every: int | None = None

  def __post_init__(self):
    check_pull_coefficients(self.c1, self.c2, self.p1, self.p2, self.pull_every)
    if self.pull_restart_every is not None:
      _checks.check_integer("pull_restart_every", self.pull_restart_every, 1)

  def coefficients(self, step, alpha, dtype):
    """``(mix, pull_b, pull_c)`` of ``step``: ``(A alpha, B, C)`` or ``(alpha, 0, 0)``.

    ``A = (1-p1-p2)(1-c1-c2)``, ``B = (1-p1-p2) c1 + p1``,
    ``C = (1-p1-p2) c2 + p2`` (0.36, 0.38, 0.26 by default).
    """
    keep = 1 - self.p1 - self.p2
    a = jnp.asarray(keep * (1 - self.c1 - self.c2), dtype)
    b = jnp.asarray(keep * self.c1 + self.p1, dtype)
    c = jnp.asarray(keep * self.c2 + self.p2, dtype)
    phase = step if self.pull_restart_every is None else step % self.pull_restart_every
    pull = (phase % jnp.asarray(self.pull_every, jnp.int32)) == 0
    zero = jnp.zeros((), dtype)
    return (
      jnp.where(pull, a * alpha, alpha),
      jnp.where(pull, b, zero),
      jnp.where(pull, c, zero),
    )


def check_pull_coefficients(c1, c2, p1, p2, pull_every):
  """Validates AL-DSGD's coefficients (concrete values; tracers pass through)."""
  for name, value in (("c1", c1), ("c2", c2), ("p1", p1), ("p2", p2)):
    _checks.check_real(name, value, low=0.0, high=1.0)
  for a, b, va, vb in (("c1", "c2", c1, c2), ("p1", "p2", p1, p2)):
    x, y = _checks.concrete_scalar(a, va), _checks.concrete_scalar(b, vb)
    if x is not None and y is not None and x + y > 1.0:
      raise ValueError(
        f"{a} + {b} must be <= 1 (they are averaging weights), got "
        f"{a}={x} + {b}={y} = {x + y}."
      )
  every = _checks.concrete_scalar("pull_every", pull_every)
  if every is not None and (not float(every).is_integer() or every < 1):
    raise ValueError(
      f"pull_every must be an integer >= 1 (pull every that many "
      f"steps; 1 pulls at every step), got {pull_every!r}."
    )


def choose(own_rank, losses, healthy, degrees):
  """The slots of the adjacent leader and the max-degree node (-1: the worker).

  Over ``S_i = [i] + N_i`` in that order (self first, then slot by slot), the
  first strict argmin of the loss and the first strict argmax of the active
  degree, among healthy entries; ``own_rank = (loss, degree)`` is the
  worker's own, already ``(inf, -1)`` if it is not healthy.

  Args:
    own_rank: ``(loss, degree)`` scalars of this worker.
    losses, healthy, degrees: ``(S,)`` per slot: the partner's loss, whether
      it is present and healthy, and its active degree.
  """
  best_loss, best_degree = own_rank
  leader = target = jnp.asarray(-1)
  for s in range(losses.shape[0]):
    better = healthy[s] & (losses[s] < best_loss)
    best_loss = jnp.where(better, losses[s], best_loss)
    leader = jnp.where(better, s, leader)
    higher = healthy[s] & (degrees[s] > best_degree)
    best_degree = jnp.where(higher, degrees[s], best_degree)
    target = jnp.where(higher, s, target)
  return leader, target


def slot_weight(coefficients, mixes, leader, max_degree):
  """``w_s = mix [mixes] + pull_b [leader] + pull_c [max_degree]`` (bool flags)."""
  mix, pull_b, pull_c = coefficients
  dtype = mix.dtype
  return mix * mixes.astype(dtype) + (
    pull_b * leader.astype(dtype) + pull_c * max_degree.astype(dtype)
  )


def add_weighted(total, received, weight, own):
  """``total + weight (received - own)``, and ``total`` untouched where weight is 0.

  The selection keeps a non-finite ``received`` of a slot with weight 0 out.
  Written as a select between the two sums (not ``total + select(...)``),
  XLA:CPU compiles it to the same float operations under every worker layout.
  """
  return jnp.where(weight != 0, total + weight * (received - own), total)


def own_rank(loss, healthy, degree, dtype):
  """This worker's ``(loss, degree)`` in `choose`, ``(inf, -1)`` if unhealthy."""
  return (
    jnp.where(healthy, loss.astype(dtype), jnp.inf),
    jnp.where(healthy, degree, -1),
  )


def ranked_weights(
  *, schedule, step, axis_name, near, rank, coefficients, loss, healthy, mixes_all
):
  """Per-slot weights ``w_s`` on any schedule: the ranks travel first.

  Every active slot exchanges this worker's ``(loss, health)`` (one small
  ``ppermute`` per slot), so each worker knows its leader and max-degree node
  before any parameters arrive and the parameters' exchange keeps one
  accumulator. ``mixes_all``: gossip with every present partner (else only
  with the healthy ones, ``skip_nonfinite``).

  Returns:
    ``(S,)`` weights.
  """
  dtype = coefficients[0].dtype
  num_slots = schedule.num_slots
  ranks = jnp.stack([loss.astype(dtype), healthy.astype(dtype)])

  def keep_row(table, received, at_slot, own):
    del own
    present, row = at_slot
    return jnp.where(row[:, None] & present, received[None, :], table)

  table = _fold.fold(
    ranks,
    schedule=schedule,
    step=step,
    axis_name=axis_name,
    combine=keep_row,
    start=lambda own: jnp.zeros_like(own, shape=(num_slots, 2)),
    per_slot=(near.present, jnp.eye(num_slots, dtype=bool)),
    common=ranks,
  )  # (S, 2): row s = the partner's (loss, health) in active slot s, else 0
  neighbor_ok = near.present & (table[:, 1] > 0.5)
  leader, target = choose(rank, table[:, 0], neighbor_ok, near.degrees[near.partner])
  slots = jnp.arange(num_slots)
  return slot_weight(
    coefficients,
    near.present if mixes_all else neighbor_ok,
    slots == leader,
    slots == target,
  )


def step_inputs(updates, params, loss, value, axis_name, schedule):
  """The checked ``(loss, worker index, x_hat)`` of one AL-DSGD update."""
  _checks.check_params(params, "adjacent_leader")
  loss = _checks.check_loss(loss, value)
  me = _workers.worker_index(axis_name, schedule)
  return loss, me, jax.tree.map(jnp.add, params, updates)


def adjacent_leader_message_bytes(params) -> int:
  """Bytes one worker sends along one active matching under `adjacent_leader`.

  The packed parameters plus two scalars: the loss and a health flag (one
  message, or, on schedules with several active matchings per step, the two
  scalars first and then the parameters).

  Args:
    params: one worker's parameters (arrays or ``jax.ShapeDtypeStruct``).
  """
  return _packing.message_bytes(params, 2)


def adjacent_leader_message_parts(params, schedule: Schedule) -> tuple[int, ...]:
  """The ``ppermute`` sizes (bytes) of one active matching under `adjacent_leader`.

  In the order sent; they add up to `adjacent_leader_message_bytes`. On a
  schedule with at most one active matching per step, one message; with
  several, the loss and health flag first, then the parameters (see
  `adjacent_leader`).

  Args:
    params: one worker's parameters (arrays or ``jax.ShapeDtypeStruct``).
    schedule: the schedule `adjacent_leader` runs.
  """
  whole = adjacent_leader_message_bytes(params)
  if _plan.one_slot_per_step(check_schedule(schedule)):
    return (whole,)
  parameters = _packing.message_bytes(params)
  return (whole - parameters, parameters)


def plain_adjacent_leader(
  schedule: Schedule, axis_name: str, rule: PullRule, skip_nonfinite: bool
) -> optax.GradientTransformationExtraArgs:
  """AL-DSGD exchanging the parameters (see `jax_aldsgd.adjacent_leader`)."""

  def init_fn(params):
    del params
    return AdjacentLeaderState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, *, loss=None, value=None, **extra_args):
    del extra_args
    loss, me, x_hat = step_inputs(updates, params, loss, value, axis_name, schedule)
    step = state.count
    one_slot = _plan.one_slot_per_step(schedule)
    if one_slot:  # the loss and the health flag travel with the parameters
      buffer, unpack = _packing.pack(x_hat, (loss,), health=True)
      self_ok = _packing.buffer_healthy(buffer)  # x_hat and the loss are finite
    else:  # they travel first, in a message of their own
      buffer, unpack = _packing.pack(x_hat)
      self_ok = _packing.buffer_finite(buffer) & jnp.isfinite(loss)
    near = _plan.neighborhood(schedule, step, me, buffer.dtype)
    coefficients = rule.coefficients(step, near.weight, buffer.dtype)
    rank = own_rank(loss, self_ok, near.degrees[me], buffer.dtype)
    if one_slot:
      delta = _fold_one_slot(
        buffer, schedule, step, axis_name, near, rank, coefficients, skip_nonfinite
      )
    else:
      weight = ranked_weights(
        schedule=schedule,
        step=step,
        axis_name=axis_name,
        near=near,
        rank=rank,
        coefficients=coefficients,
        loss=loss,
        healthy=self_ok,
        mixes_all=not skip_nonfinite,
      )
      delta = _fold.fold(
        buffer,
        schedule=schedule,
        step=step,
        axis_name=axis_name,
        combine=add_weighted,
        start=jnp.zeros_like,
        per_slot=weight,
        common=buffer,
      )
    delta_tree, _ = unpack(delta)
    new_updates = jax.tree.map(
      lambda u, d: (u + d).astype(u.dtype), updates, delta_tree
    )
    return new_updates, AdjacentLeaderState(count=step + 1)

  def traffic_of(params):
    return _traffic.Traffic(
      schedule.num_workers,
      adjacent_leader_message_bytes(params),
      adjacent_leader_message_parts(params, schedule),
      schedule,
    )

  return _traffic.transformation(init_fn, update_fn, traffic_of)


def _fold_one_slot(
  buffer, schedule, step, axis_name, near, rank, coefficients, skip_nonfinite
):
  """``x_i - x_hat_i`` on a schedule with at most one active slot per step.

  ``S_i`` is ``[i]`` or ``[i, j]``, and the partner's loss and health flag
  travel in its message, so the slot's weight is computed where the message
  arrives (`_fold.fold`'s ``peek``: once, not per element) and the fold fuses
  the one weighted add with the update.
  """

  def weigh(received, at_slot, common):
    present, partner_degree = at_slot
    _, rank, coefficients = common
    ok = present & _packing.buffer_healthy(received)
    leader, target = choose(rank, received[-2:-1], ok[None], partner_degree[None])
    return slot_weight(
      coefficients, ok if skip_nonfinite else present, leader == 0, target == 0
    )

  def combine(total, received, weight, common):
    return add_weighted(total, received, weight, common[0])

  return _fold.fold(
    buffer,
    schedule=schedule,
    step=step,
    axis_name=axis_name,
    combine=combine,
    start=lambda common: jnp.zeros_like(common[0]),
    per_slot=(near.present, near.degrees[near.partner]),
    common=(buffer, rank, coefficients),
    peek=weigh,
  )
