"""Messages: a worker's pytree packed into one flat buffer, and its health flag.

One ``ppermute`` per slot carries one buffer, so a message is always one flat
array: the leaves of the tree in order, then scalar extras (a loss), then,
where asked, a health entry (1.0 if everything before it is finite).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def buffer_dtype(leaves):
  return jnp.result_type(jnp.float32, *(leaf.dtype for leaf in leaves))


def message_bytes(tree, num_extras: int = 0) -> int:
  """Bytes of the buffer `pack` builds from ``tree`` and ``num_extras`` scalars.

  ``tree`` holds one worker's leaves (arrays or ``jax.ShapeDtypeStruct``); this is
  what one ``ppermute`` of that message carries.
  """
  leaves = jax.tree.leaves(tree)
  size = sum(int(np.prod(leaf.shape)) for leaf in leaves) + num_extras
  return int(np.dtype(buffer_dtype(leaves)).itemsize * size)


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
  dtype = buffer_dtype(leaves)
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
