"""One ``lax.switch`` per step over the schedule's activation patterns.

The traced core shared by both worker layouts (one worker per device,
``_fold``; a block of workers per device, ``_block``): the step's pattern picks
one branch, and that branch issues the ``ppermute`` of each slot active in it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jax_aldsgd._schedules import Schedule


def exchange_groups(
  plan, *, flags, always, receive, combine, start, buffer, per_slot, common, peek
):
  """Runs the plan's groups in order: per group, the step's branch of a switch.

  ``receive(s, buffer)`` is slot s's ``ppermute`` (zeros for a worker without a
  partner in s) and ``combine(carry, received, peek(received, per_slot(s),
  common), common)`` folds it into the carry. A branch issues the
  ``ppermute`` of each of its active slots unconditionally, so an inactive
  slot sends nothing and an active one needs no predicate of its own. Where a branch exchanges several slots, every slot
  after the first sits in a ``lax.cond`` on ``always`` (true, but not provably
  so) that consumes the previous slot's carry: XLA cannot hoist those exchanges
  ahead of the combines (an optimization barrier does not survive XLA:CPU's
  passes), so one received buffer is alive at a time.

  Where no branch of the last group exchanges more than one slot (`alternating`,
  a rotation of them, ...), a branch leaves its slot's combine to the caller:
  it returns ``(received, peek(received, per_slot(slot), common), True)`` and
  the combine runs after the switch, where XLA fuses it with the unpacking and
  the parameter update (no parameter-sized carry is written; the slot's
  scalars, ``peek``'s included, leave the switch computed, so the fused loop
  does not recompute them per element). A branch with no active slot then
  returns zeros and ``False`` (nothing to combine).
  The carry starts as ``start(common)``.

  Returns:
    ``(carry, pending)``: the fold's result is ``carry`` if ``pending`` is None,
    else with ``pending = (received, at_slot, valid)`` it is ``combine(carry,
    received, at_slot, common)`` where ``valid``, else ``carry``.
  """

  def arrive(s):
    received = receive(s, buffer)
    return received, peek(received, per_slot(s), common)

  carry = None
  out = None
  for g, group in enumerate(plan):
    last_group = g == len(plan) - 1
    # Deferring needs a received buffer out of the switch next to the carry:
    # only worth it (and only done) where no branch combines inside.
    defer = last_group and all(len(active) <= 1 for active in group.patterns)
    # The carry leaves the switch if an earlier group made one or a branch
    # combines inside; else it starts after the switch (fused, not written).
    carry_out = carry is not None or any(
      len(active) > (1 if defer else 0) for active in group.patterns
    )

    def run(active, c, group=group, defer=defer, carry_out=carry_out):
      inside = active if not defer or len(active) != 1 else ()
      if carry_out and c is None:
        c = start(common)
      for k, s in enumerate(inside):
        step_fn = lambda c, s=s: combine(c, *arrive(s), common)
        c = step_fn(c) if k == 0 else lax.cond(always, step_fn, lambda c: c, c)
      c = c if carry_out else None
      if not defer:
        return c, None
      if len(active) == 1:
        return c, (*arrive(active[0]), jnp.asarray(True))
      zeros = jnp.zeros_like(buffer)
      at_slot = peek(zeros, per_slot(group.slots[0]), common)
      return c, (zeros, at_slot, jnp.asarray(False))

    if len(group.patterns) == 1:
      out = run(group.patterns[0], carry)
    else:
      code = sum(flags[s].astype(jnp.int32) << k for k, s in enumerate(group.slots))
      index = jnp.argmax(jnp.asarray(group.codes) == code)
      branches = [functools.partial(run, active) for active in group.patterns]
      if carry is None:
        out = lax.switch(index, [lambda _, f=f: f(None) for f in branches], 0)
      else:
        out = lax.switch(index, branches, carry)
    carry = out[0]
  if out is None:  # a schedule without slots
    return start(common), None
  carry, pending = out
  return (start(common) if carry is None else carry), pending


def finish(carry, pending, combine, common):
  """The fold's result from `exchange_groups`' ``(carry, pending)``."""
  if pending is None:
    return carry
  received, at_slot, valid = pending
  combined = combine(carry, received, at_slot, common)
  return jax.tree.map(lambda new, old: jnp.where(valid, new, old), combined, carry)


def runtime_flags(schedule: Schedule, step: jax.Array) -> jax.Array:
  """The step's flags, kept opaque to XLA even where they are constant.

  A constant-true predicate (e.g. `full`'s) would let XLA inline the
  conditional, and with it the ordering that `fold_messages` relies on: the
  exchanges could then all be hoisted ahead of the combines, every received
  buffer alive at once. ``step >= 0`` is always true but XLA cannot prove it.
  """
  return schedule.slot_flags(step, jnp) & (step >= 0)
