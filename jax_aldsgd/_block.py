"""The fold over a device's block of workers (``workers_per_device > 1``).

Transforms see one worker each (``jax.vmap`` over ``_workers.LOCAL_AXIS``); the
``custom_vmap`` rules here receive the device's whole block and run the same
switch over activation patterns as ``_fold``, gathering each local worker's
partner buffer from the block (a partner on the same device) or from the
slot's ``ppermute`` rounds (`_plan.block_plan`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jax_aldsgd import _plan, _switch
from jax_aldsgd._schedules import Schedule


def take_rows(block, rows):
  """``block[rows]`` with zeros where ``rows`` is -1."""
  return jnp.where((rows >= 0)[:, None], block[jnp.maximum(rows, 0)], 0)


def receive_block(block, slot_plan, device, axis_name):
  """``(k, L)``: each local worker's partner buffer in one slot (zeros: none).

  In-device partners by indexing ``block``, the others through the slot's
  ``ppermute`` rounds (`_plan.block_plan`).
  """
  local, rounds = slot_plan
  received = take_rows(block, jnp.asarray(local)[device])
  for plan in rounds:
    message = block[jnp.asarray(plan.send_rows)[device]]  # (m, L)
    message = lax.ppermute(message, axis_name, plan.pairs)
    rows = jnp.asarray(plan.receive_rows)[device]
    received = jnp.where((rows >= 0)[:, None], message[jnp.maximum(rows, 0)], received)
  return received


def block_fold(
  schedule: Schedule,
  axis_name: str,
  per_device: int,
  combine: Callable,
  start: Callable,
  peek: Callable,
):
  """`fold` over a device's whole block of ``per_device`` workers.

  Transforms call it per worker under ``jax.vmap`` over ``_workers.LOCAL_AXIS``; its
  batching rule receives the device's blocks and runs the same switch over
  activation patterns as `fold`, where each active slot gathers each local
  worker's partner buffer (in-device partners by indexing, others through the
  slot's ``ppermute`` rounds) and applies ``combine`` to every local worker
  (vmapped).
  """
  num_devices = lax.axis_size(axis_name)
  plans = _plan.block_plan(schedule, num_devices, per_device)

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
      return receive_block(block, plans[s], device, axis_name)

    combine_block = jax.vmap(combine)
    carry, pending = _switch.exchange_groups(
      _plan.exchange_plan(schedule),
      flags=flags,
      always=step >= 0,
      receive=receive,
      combine=combine_block,
      start=jax.vmap(start),
      buffer=buffer,
      per_slot=lambda s: jax.tree.map(lambda a: a[:, s], per_slot),
      common=common,
      peek=jax.vmap(peek),
    )
    carry = _switch.finish(carry, pending, combine_block, common)
    return carry, jax.tree.map(lambda _: True, carry)

  return fold_block


def block_fold_messages(
  schedule: Schedule,
  axis_name: str,
  per_device: int,
  build: Callable,
  combine: Callable,
):
  """`fold_messages` over a device's block of workers (see `_block_fold`)."""
  num_devices = lax.axis_size(axis_name)
  plans = _plan.block_plan(schedule, num_devices, per_device)

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
    flags = _switch.runtime_flags(schedule, step)
    device = lax.axis_index(axis_name)
    for s, slot_plan in enumerate(plans):

      def build_send_combine(c, s=s, slot_plan=slot_plan):
        buffer, c = jax.vmap(lambda c1, i1: build(s, c1, i1))(c, inputs)
        received = receive_block(buffer, slot_plan, device, axis_name)
        return jax.vmap(lambda c1, r1, i1: combine(s, c1, r1, i1))(c, received, inputs)

      row = jax.tree.map(lambda r, s=s: r[:, s], rows)
      carry, row = lax.cond(flags[s], build_send_combine, lambda c: c, (carry, row))
      rows = jax.tree.map(lambda r, x, s=s: r.at[:, s].set(x), rows, row)
    out = (carry, rows)
    return out, jax.tree.map(lambda _: True, out)

  return fold_block
