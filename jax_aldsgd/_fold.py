"""The fold: exchange a buffer along the step's active slots, combining as it arrives.

`fold` sends one buffer per worker (gossip, AL-DSGD, push-sum); `fold_messages`
builds a message per slot in that slot's branch (CHOCO-SGD's public copies).
Both dispatch to ``_block`` when several workers share a device. The words
(slot, pattern, group, ...) are defined in ``_plan``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jax_aldsgd import _block, _plan, _switch, _workers
from jax_aldsgd._schedules import Schedule


def fold(
  buffer: jax.Array,
  *,
  schedule: Schedule,
  step: jax.Array,
  axis_name: str,
  combine: Callable,
  start: Callable,
  per_slot,
  common,
  peek: Callable | None = None,
):
  """Exchanges ``buffer`` slot by slot, folding each received buffer into a carry.

  The carry starts as ``start(common)``. For each slot s in order, if it is
  active: ``carry = combine(carry, received, at_slot, common)``, where
  ``received`` is the partner's buffer (zeros for a worker without a partner in
  s; ``combine`` must ignore it there) and ``at_slot`` is ``per_slot`` (a pytree
  of ``(num_slots, ...)`` arrays) at s, or ``peek(received, per_slot at s,
  common)`` if given: scalars read from the received buffer (a neighbor's
  loss, say) that should be computed once where the buffer arrives, not per
  element inside the fused combine.

  The step picks one branch of a ``lax.switch`` over the schedule's distinct
  activation patterns (`_plan.exchange_plan`; no switch at all for a schedule with
  one pattern, such as `full`), and that branch issues the ``ppermute`` of each
  active slot, so an inactive matching sends nothing. The slots are combined in
  order and one received buffer is alive at a time (see `_switch.exchange_groups`).

  ``start`` and ``combine`` see one worker; every per-worker value they need
  must come through ``per_slot`` or ``common`` (not a closure), because with
  several workers per device the fold runs on the whole block (see
  `_workers.workers_per_device`).
  """
  peek = peek or (lambda received, at_slot, common: at_slot)
  per_device = _workers.workers_per_device()
  if per_device > 1:
    return _block.block_fold(schedule, axis_name, per_device, combine, start, peek)(
      buffer, step, per_slot, common
    )
  flags = schedule.slot_flags(step, jnp)

  def receive(s, b):
    return lax.ppermute(b, axis_name, _plan.pairs(schedule.slot_partners[s]))

  carry, pending = _switch.exchange_groups(
    _plan.exchange_plan(schedule),
    flags=flags,
    always=step >= 0,
    receive=receive,
    combine=combine,
    start=start,
    buffer=buffer,
    per_slot=lambda s: jax.tree.map(lambda a: a[s], per_slot),
    common=common,
    peek=peek,
  )
  return _switch.finish(carry, pending, combine, common)


def fold_messages(
  *,
  schedule: Schedule,
  step: jax.Array,
  axis_name: str,
  build: Callable,
  combine: Callable,
  carry,
  rows,
  inputs,
):
  """Like `fold`, but each active slot sends its own message, built in its branch.

  ``rows`` is a pytree of per-slot state, each leaf with a leading axis of
  ``schedule.num_slots``. For each slot s in order, if it is active, with ``c =
  (carry, row)`` and ``row`` the slot's rows (``rows[s]``): ``message, c =
  build(s, c, inputs)`` (a 1-D buffer, the same shape on every worker), then
  ``c = combine(s, c, received, inputs)`` with the partner's message; the
  slot's rows are written back after its branch. CHOCO-SGD needs this: a slot's
  message compresses the difference to that slot's own public copy, so it
  differs from slot to slot. Only one slot's rows enter a branch, so XLA does not
  copy the whole per-slot state in and out of every conditional. As in `fold`,
  everything per worker comes through ``carry``, ``rows`` and ``inputs``, and an
  inactive slot neither builds nor sends anything.

  Returns:
    ``(carry, rows)``.
  """
  # Zeros made in the same shard_map (init next to update) are invariant
  # across workers; a cond's branches must agree on that.
  carry, rows = _workers.varying((carry, rows), axis_name)
  per_device = _workers.workers_per_device()
  if per_device > 1:
    return _block.block_fold_messages(schedule, axis_name, per_device, build, combine)(
      step, carry, rows, inputs
    )
  flags = _switch.runtime_flags(schedule, step)
  for s in range(schedule.num_slots):
    pairs = _plan.pairs(schedule.slot_partners[s])

    def build_send_combine(c, s=s, pairs=pairs):
      message, c = build(s, c, inputs)
      return combine(s, c, lax.ppermute(message, axis_name, pairs), inputs)

    row = jax.tree.map(lambda r, s=s: r[s], rows)
    carry, row = lax.cond(flags[s], build_send_combine, lambda c: c, (carry, row))
    rows = jax.tree.map(lambda r, x, s=s: r.at[s].set(x), rows, row)
  return carry, rows
