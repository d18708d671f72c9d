"""The one place that calls ``ppermute``: per-slot exchange under ``lax.cond``.

Every worker packs what it sends (its post-local-step parameters ``x_hat`` and, for
AL-DSGD, its loss and a health flag) into one flat buffer, so one matching costs
exactly one ``collective-permute``. Each slot's ``ppermute`` sits in the true
branch of a ``lax.cond`` on that slot's activation flag; the flag is computed
from the step counter identically on every worker, so all workers take the same
branch and an inactive matching sends nothing at run time.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

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
          "a separate collection).")


def pack(tree, extras=()) -> tuple[jax.Array, Callable[[jax.Array], Any]]:
  """Flattens a pytree (and scalar extras) into one 1-D buffer.

  The buffer's dtype is the promotion of float32 and every leaf's dtype, so
  float32 models travel as float32 and the extras (losses, flags) keep float32
  precision.

  Returns:
    ``(buffer, unpack)`` where ``unpack(buffer)`` returns ``(tree, extras)`` with
    the tree's original shapes and dtypes.
  """
  leaves, treedef = jax.tree.flatten(tree)
  dtype = jnp.result_type(jnp.float32, *leaves)
  sizes = [int(np.prod(jnp.shape(leaf))) for leaf in leaves]
  parts = [jnp.ravel(leaf).astype(dtype) for leaf in leaves]
  parts += [jnp.reshape(e, (1,)).astype(dtype) for e in extras]
  buffer = jnp.concatenate(parts) if parts else jnp.zeros((0,), dtype)
  offsets = np.cumsum([0] + sizes)
  shapes = [(jnp.shape(leaf), jnp.result_type(leaf)) for leaf in leaves]

  def unpack(flat):
    tree_leaves = [
        lax.slice(flat, (int(start),), (int(start + size),)).reshape(shape).astype(
            leaf_dtype)
        for start, size, (shape, leaf_dtype) in zip(offsets, sizes, shapes)
    ]
    extra_values = [flat[offsets[-1] + k] for k in range(len(extras))]
    return jax.tree.unflatten(treedef, tree_leaves), extra_values

  return buffer, unpack


def worker_index(axis_name: str, schedule: Schedule | None = None) -> jax.Array:
  """This worker's index on ``axis_name``, checking the axis matches the schedule."""
  try:
    size = lax.axis_size(axis_name)
    index = lax.axis_index(axis_name)
  except NameError:
    raise ValueError(
        f"the axis {axis_name!r} is not bound: jax_aldsgd transforms run inside "
        f"jax.shard_map over a mesh axis named {axis_name!r}, one worker per "
        "device (see jax_aldsgd.worker_map), or pass the axis_name your mesh "
        "uses.") from None
  if schedule is not None and size != schedule.num_workers:
    raise ValueError(
        f"the schedule has {schedule.num_workers} workers but the mesh axis "
        f"{axis_name!r} has {size} devices; build the mesh with "
        f"jax_aldsgd.worker_mesh({schedule.num_workers}) or a schedule over {size} "
        "workers.")
  return index


def _pairs(partners: np.ndarray) -> tuple[tuple[int, int], ...]:
  return tuple((int(i), int(j)) for i, j in enumerate(partners) if j >= 0)


class Exchange(NamedTuple):
  """What one step's exchange gives a worker.

  Attributes:
    flags: ``(S,)`` bool, which slots are active this step (same on all workers).
    present: ``(S,)`` bool, whether this worker has a partner in each active slot.
    partner: ``(S,)`` int, this worker's partner per slot (0 where it has none).
    weight: ``(S,)`` neighbour weight of each slot.
    degrees: ``(n,)`` active degree of every worker, computed locally.
    received: S buffers, the partner's buffer where present, else zeros.
  """

  flags: jax.Array
  present: jax.Array
  partner: jax.Array
  weight: jax.Array
  degrees: jax.Array
  received: list[jax.Array]


def exchange(buffer: jax.Array, schedule: Schedule, step: jax.Array,
             me: jax.Array, axis_name: str) -> Exchange:
  """Sends ``buffer`` along every active slot of ``schedule`` at ``step``."""
  flags = schedule._active(step, jnp)  # (S,)
  partners = jnp.asarray(schedule.slot_partners)  # (S, n)
  my_partner = partners[:, me]  # (S,)
  degrees = jnp.sum(flags[:, None] & (partners >= 0), axis=0)  # (n,)
  received = []
  for s in range(schedule.num_slots):
    pairs = _pairs(schedule.slot_partners[s])
    received.append(
        lax.cond(flags[s],
                 lambda b, pairs=pairs: lax.ppermute(b, axis_name, pairs),
                 jnp.zeros_like, buffer))
  return Exchange(
      flags=flags,
      present=flags & (my_partner >= 0),
      partner=jnp.maximum(my_partner, 0),
      weight=jnp.asarray(schedule.slot_weight, buffer.dtype),
      degrees=degrees,
      received=received,
  )
