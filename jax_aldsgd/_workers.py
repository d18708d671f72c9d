"""Worker identity and layout: which worker this is, and collectives over all of them.

A worker is one copy of the model. Workers map to devices along a mesh axis
(``"workers"`` by default); with ``worker_map(..., workers_per_device=k)`` the
k workers of a device are a *block*, vmapped over `LOCAL_AXIS`, and the
functions here then see the whole block (see ``_block``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jax_aldsgd._schedules import Schedule

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
  # The branches must agree on which mesh axes each value varies over (state
  # made next to this call may be invariant; a branch's output is not).
  operand = varying(operand, _varying_axes(operand))
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


def _varying_axes(tree) -> tuple[str, ...]:
  """The mesh axes some leaf of ``tree`` varies over."""
  axes = set()
  for leaf in jax.tree.leaves(tree):
    manual = getattr(jax.typeof(leaf), "manual_axis_type", None)
    axes |= set(manual.varying) if manual is not None else set()
  return tuple(sorted(axes))


def varying(tree, axis_name):
  """``tree`` with every leaf marked as varying over ``axis_name`` (or names).

  Under ``jax.shard_map`` a value made inside the mapped function without
  reading per-worker data (an optimizer state's zeros, when ``init`` runs in
  the same ``shard_map`` as ``update``) is invariant across workers; a
  ``lax.cond`` whose one branch returns it as it is and whose other returns
  a per-worker value would then have branches of different types.
  """

  axes = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)

  def cast(leaf):
    manual = getattr(jax.typeof(leaf), "manual_axis_type", None)
    if manual is None:
      return leaf
    missing = tuple(a for a in axes if a not in manual.varying)
    return lax.pcast(leaf, missing, to="varying") if missing else leaf

  return jax.tree.map(cast, tree)
