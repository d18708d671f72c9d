"""The one place that communicates: one ``lax.switch`` of ``ppermute``s per step, and the mean.

Every worker packs what it sends (its post-local-step parameters ``x_hat`` and, for
AL-DSGD, its loss and a health flag) into one flat buffer, so one
matching costs exactly one ``collective-permute``. A schedule has few distinct
activation patterns (`full` one, `alternating` two, a rotation the sum of its
children's, MATCHA at most ``2^F``); the step's pattern, computed from the step
counter identically on every worker, selects one branch of a ``lax.switch``, and
that branch issues the ``ppermute`` of each slot active in the pattern, so all
workers take the same branch and an inactive matching sends nothing at run time.
A schedule with one pattern needs no switch (see `exchange_plan`, `fold`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jax_aldsgd._schedules import Schedule


def check_float_leaves(tree, what: str) -> None:
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(
        f"{what} leaf {jax.tree_util.keystr(path)} has dtype "
        f"{jnp.result_type(leaf)}; only floating-point parameters can be "
        "averaged. Keep integer state out of the optimized parameters (e.g. in "
        "a separate collection)."
      )


def check_params(params, name: str):
  """Raises unless ``params`` (needed by transform ``name``) is a float pytree."""
  if params is None:
    raise ValueError(
      f"{name} needs the current parameters: call "
      "update(updates, state, params, ...). It moves x_hat = params + updates "
      "toward the neighbors' x_hat."
    )
  check_float_leaves(params, "params")


def _buffer_dtype(leaves):
  return jnp.result_type(jnp.float32, *(leaf.dtype for leaf in leaves))


def message_bytes(tree, num_extras: int = 0) -> int:
  """Bytes of the buffer `pack` builds from ``tree`` and ``num_extras`` scalars.

  ``tree`` holds one worker's leaves (arrays or ``jax.ShapeDtypeStruct``); this is
  what one ``ppermute`` of that message carries.
  """
  leaves = jax.tree.leaves(tree)
  size = sum(int(np.prod(leaf.shape)) for leaf in leaves) + num_extras
  return int(np.dtype(_buffer_dtype(leaves)).itemsize * size)


def pack(
  tree, extras=(), *, health: bool = False
) -> tuple[jax.Array, Callable[[jax.Array], Any]]:
  """Flattens a pytree (and scalar extras) into one 1-D buffer.

  The buffer's dtype is the promotion of float32 and every leaf's dtype, so
  float32 models travel as float32 and the extras (losses, flags) keep float32
  precision.

  With ``health=True`` one more entry follows the extras: 1.0 if every entry
  of the tree and of the extras is finite, else 0.0 (`buffer_healthy` reads
  it). It is one reduction over the packed buffer, written into the buffer's
  last entry in place: one pass over the message instead of one reduction per
  leaf of the tree (`all_finite`).

  Returns:
    ``(buffer, unpack)`` where ``unpack(buffer)`` returns ``(tree, extras)`` with
    the tree's original shapes and dtypes (the health entry is not an extra).
  """
  leaves, treedef = jax.tree.flatten(tree)
  dtype = _buffer_dtype(leaves)
  sizes = [int(np.prod(jnp.shape(leaf))) for leaf in leaves]
  parts = [jnp.ravel(leaf).astype(dtype) for leaf in leaves]
  parts += [jnp.reshape(e, (1,)).astype(dtype) for e in extras]
  offsets = np.cumsum([0] + sizes)
  # Written part by part into one buffer: XLA fuses each leaf's producer into
  # its in-place update, so the message is the only parameter-sized temporary
  # (a concatenate of many operands materializes every operand first).
  buffer = jnp.zeros((int(offsets[-1]) + len(extras) + int(health),), dtype)
  start = 0
  for part in parts:
    buffer = lax.dynamic_update_slice(buffer, part, (start,))
    start += part.shape[0]
  if health:  # the last entry is still 0 (finite)
    ok = buffer_finite(buffer).astype(dtype)
    buffer = lax.dynamic_update_slice(buffer, ok[None], (start,))
  shapes = [(jnp.shape(leaf), jnp.result_type(leaf)) for leaf in leaves]

  def unpack(flat):
    tree_leaves = [
      lax.slice(flat, (int(start),), (int(start + size),))
      .reshape(shape)
      .astype(leaf_dtype)
      for start, size, (shape, leaf_dtype) in zip(offsets, sizes, shapes)
    ]
    extra_values = [flat[offsets[-1] + k] for k in range(len(extras))]
    return jax.tree.unflatten(treedef, tree_leaves), extra_values

  return buffer, unpack


def buffer_finite(buffer: jax.Array) -> jax.Array:
  """True if every entry of ``buffer`` is finite: one reduction, no temporary.

  ``x - x`` is 0 for finite ``x`` and NaN for inf and NaN (see `all_finite`).
  """
  return jnp.isfinite(jnp.sum(buffer - buffer))


def buffer_healthy(buffer: jax.Array) -> jax.Array:
  """The health entry of a buffer packed with ``health=True`` (bool scalar)."""
  return buffer[-1] > 0.5


def all_finite(tree) -> jax.Array:
  """True if every entry of every leaf of ``tree`` is finite (bool scalar).

  ``x - x`` is 0 for finite ``x`` and NaN for inf and NaN (XLA keeps IEEE
  semantics here), so one sum per leaf finds them all: reductions that read
  the leaves and write nothing (XLA fuses the leaves' producers into them),
  which vectorize better than ``all(isfinite(x))``. For a message, ``pack(...,
  health=True)`` is cheaper: one reduction over the packed buffer rather than
  one per leaf.
  """
  total = jnp.zeros((), jnp.float32)
  for leaf in jax.tree.leaves(tree):
    total = total + jnp.sum(leaf - leaf).astype(jnp.float32)
  return jnp.isfinite(total)


# The vmap axis of the workers that share a device (see worker_map's
# workers_per_device). When it is bound, transforms see one worker each (vmapped)
# and the exchange works on the device's whole block of workers at once.
LOCAL_AXIS = "local_workers"


def workers_per_device() -> int:
  """How many workers share this device: the size of `LOCAL_AXIS`, or 1."""
  try:
    return lax.axis_size(LOCAL_AXIS)
  except NameError:
    return 1


def worker_index(axis_name: str, schedule: Schedule | None = None) -> jax.Array:
  """This worker's global index, checking the worker count matches the schedule.

  Worker ``d * k + b`` is local worker b of device d when k workers share each
  device (`LOCAL_AXIS` bound), else simply device d.
  """
  try:
    devices = lax.axis_size(axis_name)
    index = lax.axis_index(axis_name)
  except NameError:
    raise ValueError(
      f"the axis {axis_name!r} is not bound: jax_aldsgd transforms run inside "
      f"jax.shard_map over a mesh axis named {axis_name!r}, one worker per "
      "device (see jax_aldsgd.worker_map), or pass the axis_name your mesh "
      "uses."
    ) from None
  per_device = workers_per_device()
  if per_device > 1:
    index = index * per_device + lax.axis_index(LOCAL_AXIS)
  size = devices * per_device
  if schedule is not None and size != schedule.num_workers:
    layout = (
      f"{devices} devices"
      if per_device == 1
      else f"{devices} devices x {per_device} workers per device = {size}"
    )
    raise ValueError(
      f"the schedule has {schedule.num_workers} workers but the mesh axis "
      f"{axis_name!r} holds {layout}; build the mesh with "
      f"jax_aldsgd.worker_mesh({schedule.num_workers}) or a schedule over {size} "
      "workers."
    )
  return index


def mean_over_workers(buffer: jax.Array, axis_name: str) -> jax.Array:
  """The mean of ``buffer`` over every worker (all-reduce), whatever the layout.

  With several workers per device (`LOCAL_AXIS` bound) the mean runs over the
  device's block first and then across devices, so it covers all workers, not
  each local index separately.
  """
  if workers_per_device() == 1:
    return lax.pmean(buffer, axis_name)

  @jax.custom_batching.custom_vmap
  def block_mean(x):
    return x  # only traced for the output shape: under worker_map the rule runs

  @block_mean.def_vmap
  def rule(axis_size, in_batched, block):
    (batched,) = in_batched
    if not batched:  # every local worker holds the same value
      return lax.pmean(block, axis_name), False
    mean = lax.pmean(jnp.mean(block, axis=0), axis_name)
    return jnp.broadcast_to(mean, (axis_size,) + mean.shape), True

  return block_mean(buffer)


def _pairs(partners: np.ndarray) -> tuple[tuple[int, int], ...]:
  return tuple((int(i), int(j)) for i, j in enumerate(partners) if j >= 0)


class Neighborhood(NamedTuple):
  """What a worker knows about this step's exchanges without communicating.

  Attributes:
    present: ``(S,)`` bool, whether this worker has a partner in each active slot.
    partner: ``(S,)`` int, this worker's partner per slot (0 where it has none).
    weight: scalar neighbor weight ``alpha`` of this step's graph (all active
      slots belong to one graph; 0 when none is active).
    degrees: ``(n,)`` active degree of every worker, computed locally.
  """

  present: jax.Array
  partner: jax.Array
  weight: jax.Array
  degrees: jax.Array


def neighborhood(
  schedule: Schedule, step: jax.Array, me: jax.Array, dtype
) -> Neighborhood:
  flags = schedule.slot_flags(step, jnp)  # (S,)
  partners = jnp.asarray(schedule.slot_partners)  # (S, n)
  my_partner = partners[:, me]  # (S,)
  return Neighborhood(
    present=flags & (my_partner >= 0),
    partner=jnp.maximum(my_partner, 0),
    # A schedule runs one graph per step (rotating: one child at a time).
    weight=jnp.max(jnp.where(flags, jnp.asarray(schedule.slot_weight, dtype), 0)),
    degrees=jnp.sum(flags[:, None] & (partners >= 0), axis=0),  # (n,)
  )


# Most branches one lax.switch may have; schedules with more distinct
# activation patterns are split into several switches over fewer slots.
MAX_BRANCHES = 16
# Most patterns enumerated on the host before falling back to one switch per slot.
_MAX_PATTERNS = 4096


class SlotGroup(NamedTuple):
  """Consecutive slots that one ``lax.switch`` (or none) exchanges.

  Attributes:
    slots: the slot indices of the group, in exchange order.
    patterns: per branch, the group's slots active in it (in order); one
      branch per distinct activation pattern the schedule can produce.
    codes: ``(len(patterns),)`` int32 code of each pattern, bit k set if
      ``slots[k]`` is active: the branch index is the position of the step's code.
  """

  slots: tuple[int, ...]
  patterns: tuple[tuple[int, ...], ...]
  codes: np.ndarray


@functools.lru_cache(maxsize=64)
def exchange_plan(schedule: Schedule) -> tuple[SlotGroup, ...]:
  """Splits the slots into groups of at most `MAX_BRANCHES` distinct patterns.

  The schedule's distinct activation patterns are enumerated on the host
  (``schedule._patterns``): `full` has one, `alternating` two, a rotation the
  sum of its children's, MATCHA on R matchings ``2^F`` (F = matchings with
  ``0 < p < 1``). Consecutive slots join a group while the patterns projected
  on the group stay within `MAX_BRANCHES` (and 30 slots, the width of a code).
  A schedule that cannot enumerate its patterns gets one group per slot,
  patterns "off" and "on".
  """
  patterns = schedule.activation_patterns(_MAX_PATTERNS)
  if patterns is None:
    groups = [[s] for s in range(schedule.num_slots)]
  else:
    table = np.array(sorted(patterns), dtype=bool).reshape(-1, schedule.num_slots)
    groups, current = [], []
    for s in range(schedule.num_slots):
      candidate = current + [s]
      distinct = len({tuple(row) for row in table[:, candidate]})
      if current and (distinct > MAX_BRANCHES or len(candidate) > 30):
        groups.append(current)
        candidate = [s]
      current = candidate
    if current:
      groups.append(current)
  plan = []
  for slots in groups:
    if patterns is None:
      rows = {(False,), (True,)}
    else:
      rows = {tuple(row) for row in table[:, slots]}
    rows = sorted(rows)
    codes = np.array(
      [sum(int(on) << k for k, on in enumerate(row)) for row in rows], np.int32
    )
    plan.append(
      SlotGroup(
        tuple(slots),
        tuple(tuple(s for s, on in zip(slots, row) if on) for row in rows),
        codes,
      )
    )
  return tuple(plan)


def one_slot_per_step(schedule: Schedule) -> bool:
  """Whether no step of ``schedule`` has more than one active slot.

  Then `fold` runs its single combine after the switch, fused with whatever
  consumes the result (`alternating` and rotations of it); a schedule that
  cannot enumerate its patterns counts as several.
  """
  plan = exchange_plan(schedule)
  return len(plan) <= 1 and all(
    len(active) <= 1 for group in plan for active in group.patterns
  )


def _exchange_groups(
  plan, flags, always, receive, combine, start, buffer, per_slot, common, peek
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


def _finish(carry, pending, combine, common):
  """The fold's result from `_exchange_groups`' ``(carry, pending)``."""
  if pending is None:
    return carry
  received, at_slot, valid = pending
  combined = combine(carry, received, at_slot, common)
  return jax.tree.map(lambda new, old: jnp.where(valid, new, old), combined, carry)


def fold(
  buffer: jax.Array,
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
  activation patterns (`exchange_plan`; no switch at all for a schedule with
  one pattern, such as `full`), and that branch issues the ``ppermute`` of each
  active slot, so an inactive matching sends nothing. The slots are combined in
  order and one received buffer is alive at a time (see `_exchange_groups`).

  ``start`` and ``combine`` see one worker; every per-worker value they need
  must come through ``per_slot`` or ``common`` (not a closure), because with
  several workers per device the fold runs on the whole block (see
  `workers_per_device`).
  """
  peek = peek or (lambda received, at_slot, common: at_slot)
  per_device = workers_per_device()
  if per_device > 1:
    return _block_fold(schedule, axis_name, per_device, combine, start, peek)(
      buffer, step, per_slot, common
    )
  flags = schedule.slot_flags(step, jnp)

  def receive(s, b):
    return lax.ppermute(b, axis_name, _pairs(schedule.slot_partners[s]))

  carry, pending = _exchange_groups(
    exchange_plan(schedule),
    flags,
    step >= 0,
    receive,
    combine,
    start,
    buffer,
    lambda s: jax.tree.map(lambda a: a[s], per_slot),
    common,
    peek,
  )
  return _finish(carry, pending, combine, common)


# ----------------------------------------------------------------------------
# Several workers per device.


class _Round(NamedTuple):
  """One ppermute of a slot's cross-device traffic.

  Attributes:
    pairs: (source device, destination device) pairs; each device sends at most
      one message and receives at most one.
    send_rows: ``(D, m)`` local rows each device packs into its message.
    receive_rows: ``(D, k)`` row of the received message holding each local
      worker's partner, or -1.
  """

  pairs: tuple[tuple[int, int], ...]
  send_rows: np.ndarray
  receive_rows: np.ndarray


@functools.lru_cache(maxsize=64)
def block_plan(schedule: Schedule, num_devices: int, per_device: int):
  """Per slot: in-device partner rows ``(D, k)`` (or -1) and cross-device rounds.

  Cross-device traffic of a slot is grouped into one message per (source device,
  destination device) pair; messages are coloured greedily into rounds in which
  every device sends and receives at most one message, one ``ppermute`` each.
  """
  k = per_device
  plans = []
  for partners in schedule.slot_partners:
    local = np.full((num_devices, k), -1, np.int32)
    messages: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for worker, partner in enumerate(partners):
      if partner < 0:
        continue
      device, row = divmod(worker, k)
      source, source_row = divmod(int(partner), k)
      if source == device:
        local[device, row] = source_row
      else:
        messages.setdefault((source, device), []).append((source_row, row))
    rounds: list[dict[tuple[int, int], list]] = []
    for (source, destination), rows in sorted(messages.items()):
      for members in rounds:
        if all(source != a and destination != b for a, b in members):
          members[(source, destination)] = rows
          break
      else:
        rounds.append({(source, destination): rows})
    plan_rounds = []
    for members in rounds:
      width = max(len(rows) for rows in members.values())
      send_rows = np.zeros((num_devices, width), np.int32)
      receive_rows = np.full((num_devices, k), -1, np.int32)
      for (source, destination), rows in members.items():
        for position, (source_row, row) in enumerate(rows):
          send_rows[source, position] = source_row
          receive_rows[destination, row] = position
      plan_rounds.append(_Round(tuple(members), send_rows, receive_rows))
    plans.append((local, tuple(plan_rounds)))
  return tuple(plans)


def _take_rows(block, rows):
  """``block[rows]`` with zeros where ``rows`` is -1."""
  return jnp.where((rows >= 0)[:, None], block[jnp.maximum(rows, 0)], 0)


def _block_fold(
  schedule: Schedule,
  axis_name: str,
  per_device: int,
  combine: Callable,
  start: Callable,
  peek: Callable,
):
  """`fold` over a device's whole block of ``per_device`` workers.

  Transforms call it per worker under ``jax.vmap`` over `LOCAL_AXIS`; its
  batching rule receives the device's blocks and runs the same switch over
  activation patterns as `fold`, where each active slot gathers each local
  worker's partner buffer (in-device partners by indexing, others through the
  slot's ``ppermute`` rounds) and applies ``combine`` to every local worker
  (vmapped).
  """
  num_devices = lax.axis_size(axis_name)
  plans = block_plan(schedule, num_devices, per_device)

  @jax.custom_batching.custom_vmap
  def fold_block(buffer, step, per_slot, common):
    # Only traced for output shapes: under worker_map's vmap the rule runs.
    del buffer, step, per_slot
    return start(common)

  @fold_block.def_vmap
  def rule(axis_size, in_batched, buffer, step, per_slot, common):
    del axis_size
    batched_buffer, batched_step, batched_slot, batched_common = in_batched
    widen = lambda x, b: x if b else jnp.broadcast_to(x, (per_device,) + x.shape)
    buffer = widen(buffer, batched_buffer)
    per_slot = jax.tree.map(widen, per_slot, batched_slot)
    common = jax.tree.map(widen, common, batched_common)
    step = step[0] if batched_step else step  # every local worker's step agrees
    flags = schedule.slot_flags(step, jnp)
    device = lax.axis_index(axis_name)

    def receive(s, block):
      local, rounds = plans[s]
      received = _take_rows(block, jnp.asarray(local)[device])  # (k, L)
      for plan in rounds:
        message = block[jnp.asarray(plan.send_rows)[device]]  # (m, L)
        message = lax.ppermute(message, axis_name, plan.pairs)
        rows = jnp.asarray(plan.receive_rows)[device]
        received = jnp.where(
          (rows >= 0)[:, None], message[jnp.maximum(rows, 0)], received
        )
      return received

    combine_block = jax.vmap(combine)
    carry, pending = _exchange_groups(
      exchange_plan(schedule),
      flags,
      step >= 0,
      receive,
      combine_block,
      jax.vmap(start),
      buffer,
      lambda s: jax.tree.map(lambda a: a[:, s], per_slot),
      common,
      jax.vmap(peek),
    )
    carry = _finish(carry, pending, combine_block, common)
    return carry, jax.tree.map(lambda _: True, carry)

  return fold_block


def shared_cond(predicate, true_fn: Callable, false_fn: Callable, operand):
  """``lax.cond`` on a predicate every worker computes alike, collectives inside.

  Both branches must return a pytree shaped like ``operand`` and may only read
  per-worker values through it (not a closure). With several workers per
  device the transforms run under ``jax.vmap``, where a predicate computed from
  per-worker state (a step counter) is batched and ``lax.cond`` would become a
  select that runs both branches, collectives included. All workers' counters
  agree, so here the block's first predicate decides one real conditional whose
  branches run on the device's whole block (vmapped again over `LOCAL_AXIS`).
  """
  if workers_per_device() == 1:
    return lax.cond(predicate, true_fn, false_fn, operand)

  @jax.custom_batching.custom_vmap
  def conditional(predicate, operand):
    del predicate
    return operand  # only traced for the output shape: under worker_map the rule runs

  @conditional.def_vmap
  def rule(axis_size, in_batched, predicate, operand):
    predicate_batched, operand_batched = in_batched
    widen = lambda x, b: x if b else jnp.broadcast_to(x, (axis_size,) + x.shape)
    operand = jax.tree.map(widen, operand, operand_batched)
    predicate = predicate[0] if predicate_batched else predicate
    per_worker = lambda fn: jax.vmap(fn, axis_name=LOCAL_AXIS)
    out = lax.cond(predicate, per_worker(true_fn), per_worker(false_fn), operand)
    return out, jax.tree.map(lambda _: True, out)

  return conditional(predicate, operand)


# ----------------------------------------------------------------------------
# A message per slot (compressed gossip).


def _runtime_flags(schedule: Schedule, step: jax.Array) -> jax.Array:
  """The step's flags, kept opaque to XLA even where they are constant.

  A constant-true predicate (e.g. `full`'s) would let XLA inline the
  conditional, and with it the ordering that `fold_messages` relies on: the
  exchanges could then all be hoisted ahead of the combines, every received
  buffer alive at once. ``step >= 0`` is always true but XLA cannot prove it.
  """
  return schedule.slot_flags(step, jnp) & (step >= 0)


def fold_messages(
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
  per_device = workers_per_device()
  if per_device > 1:
    return _block_fold_messages(schedule, axis_name, per_device, build, combine)(
      step, carry, rows, inputs
    )
  flags = _runtime_flags(schedule, step)
  for s in range(schedule.num_slots):
    pairs = _pairs(schedule.slot_partners[s])

    def build_send_combine(c, s=s, pairs=pairs):
      message, c = build(s, c, inputs)
      return combine(s, c, lax.ppermute(message, axis_name, pairs), inputs)

    row = jax.tree.map(lambda r, s=s: r[s], rows)
    carry, row = lax.cond(flags[s], build_send_combine, lambda c: c, (carry, row))
    rows = jax.tree.map(lambda r, x, s=s: r.at[s].set(x), rows, row)
  return carry, rows


def _block_fold_messages(
  schedule: Schedule,
  axis_name: str,
  per_device: int,
  build: Callable,
  combine: Callable,
):
  """`fold_messages` over a device's block of workers (see `_block_fold`)."""
  num_devices = lax.axis_size(axis_name)
  plans = block_plan(schedule, num_devices, per_device)

  @jax.custom_batching.custom_vmap
  def fold_block(step, carry, rows, inputs):
    del step, inputs  # only traced for output shapes
    return carry, rows

  @fold_block.def_vmap
  def rule(axis_size, in_batched, step, carry, rows, inputs):
    del axis_size
    batched_step, batched_carry, batched_rows, batched_inputs = in_batched
    widen = lambda x, b: x if b else jnp.broadcast_to(x, (per_device,) + x.shape)
    carry = jax.tree.map(widen, carry, batched_carry)
    rows = jax.tree.map(widen, rows, batched_rows)  # (k, S, ...)
    inputs = jax.tree.map(widen, inputs, batched_inputs)
    step = step[0] if batched_step else step
    flags = _runtime_flags(schedule, step)
    device = lax.axis_index(axis_name)
    for s, (local, rounds) in enumerate(plans):

      def build_send_combine(c, s=s, local=local, rounds=rounds):
        buffer, c = jax.vmap(lambda c1, i1: build(s, c1, i1))(c, inputs)
        received = _take_rows(buffer, jnp.asarray(local)[device])  # (k, L)
        for plan in rounds:
          message = buffer[jnp.asarray(plan.send_rows)[device]]  # (m, L)
          message = lax.ppermute(message, axis_name, plan.pairs)
          rows_ = jnp.asarray(plan.receive_rows)[device]
          received = jnp.where(
            (rows_ >= 0)[:, None], message[jnp.maximum(rows_, 0)], received
          )
        return jax.vmap(lambda c1, r1, i1: combine(s, c1, r1, i1))(c, received, inputs)

      row = jax.tree.map(lambda r, s=s: r[:, s], rows)
      carry, row = lax.cond(flags[s], build_send_combine, lambda c: c, (carry, row))
      rows = jax.tree.map(lambda r, x, s=s: r.at[:, s].set(x), rows, row)
    out = (carry, rows)
    return out, jax.tree.map(lambda _: True, out)

  return fold_block
