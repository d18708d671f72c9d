"""Compressors for CHOCO-SGD's messages: identity, top-k, random-k, scaled sign, QSGD.

A compressor is a small frozen (hashable) dataclass that works on one leaf at a
time, flattened to 1-D:

* ``draw(key, size)`` makes the leaf's random draws once per step: `random_k`'s
  indices, `qsgd`'s uniform noise, ``None`` for deterministic compressors;
* ``encode(v, draw)`` returns the message: a tuple of small arrays whose shapes
  depend only on ``v.size`` (static), e.g. top-k's ``(values, int32 indices)``;
* ``decode_add(target, message, draw)`` returns ``target + Q(v)``: a scatter-add
  of the k entries for the sparse compressors, a dense add for sign and QSGD
  (``add_into`` does the same on a leaf's segment of a flat buffer of leaves,
  times a scalar weight); only `random_k` reads ``draw`` there (its indices);
* ``decode(message, size, draw)`` is ``Q(v)`` as a dense vector;
* ``sparse_entries(message, draw)`` is ``(values, indices)`` for the sparse
  compressors (what the transforms scatter-add), None for the dense ones;
* ``message_bytes(size)`` is what the message of a leaf of ``size`` entries
  weighs on the wire.

`Compressor.leaf_key` derives a leaf's ``jax.random`` key from the compressor's
seed, the step, the leaf index and (for `qsgd`, whose rounding noise is private
to each worker) the worker index:

  ``key = fold_in(fold_in(jax.random.key(seed), step), leaf)``, then
  ``key = fold_in(key, worker)`` for `qsgd` only;

``draw`` then calls ``jax.random.choice(key, size, (k,), replace=False)``
(`random_k`) or ``jax.random.uniform(key, (size,), dtype)`` (`qsgd`). So
`random_k`'s indices are the same on every worker (only the values travel) and
both ends of an edge decode with the same indices. The draws do not depend on
the slot: a step's messages on different matchings share them.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jax_aldsgd import _checks


def _check_fraction(fraction) -> float:
  return _checks.check_fraction(
    "fraction",
    fraction,
    "the share of each leaf's entries that travel; e.g. 0.1 for 10%",
  )


def _check_seed(seed) -> int:
  if (
    isinstance(seed, bool)
    or not isinstance(seed, numbers.Integral)
    or not (0 <= seed < 2**32)
  ):
    raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}.")
  return int(seed)


def kept_entries(fraction: float, size: int) -> int:
  """``k = max(1, floor(fraction * size))``, the entries a sparse message keeps."""
  return max(1, min(size, math.floor(fraction * size)))


class Compressor:
  """Base class of the compressors (see the module docstring for the interface)."""

  # "shared": the same key on every worker; "per_worker": the worker index is
  # folded in too; None: deterministic, no key.
  randomness: str | None = None

  def leaf_key(self, step, leaf: int, worker=None):
    """The ``jax.random`` key of ``leaf`` at ``step`` (None if deterministic)."""
    if self.randomness is None:
      return None
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), step), leaf)
    if self.randomness == "per_worker":
      key = jax.random.fold_in(key, worker)
    return key

  def draw(self, key, size: int, dtype=jnp.float32):
    """The leaf's random draws for one step (None if deterministic)."""
    del key, size, dtype
    return None

  def encode(self, v, draw):
    raise NotImplementedError

  def decode(self, message, size: int, draw):
    """``Q(v)`` as a dense ``(size,)`` vector."""
    raise NotImplementedError

  def decode_add(self, target, message, draw):
    """``target + Q(v)`` (``target`` 1-D, of the leaf's size)."""
    return self.add_into(target, 0, target.shape[0], message, draw)

  def sparse_entries(self, message, draw):
    """``(values, indices)`` of a sparse message (its nonzeros), else None.

    Works on one leaf's message or on a batch of them (leading axes).
    """
    del message, draw
    return None

  def add_into(self, flat, offset: int, size: int, message, draw, weight=1):
    """``flat[offset:offset + size] += weight * Q(v)`` on a 1-D buffer of leaves.

    Dense here; the sparse compressors scatter-add their k entries instead.
    """
    segment = lax.slice(flat, (offset,), (offset + size,))
    dense = self.decode(message, size, draw).astype(flat.dtype)
    return lax.dynamic_update_slice(flat, segment + weight * dense, (offset,))

  def message_bytes(self, size: int, dtype=jnp.float32) -> int:
    """Bytes of one leaf's message; values travel in ``dtype``."""
    raise NotImplementedError

  def numpy_apply(self, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``Q`` on each row of a ``(rows, size)`` NumPy array (host-side tuning)."""
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Identity(Compressor):
  """No compression: the message is the vector itself. Build with `identity`."""

  def encode(self, v, draw):
    del draw
    return (v,)

  def decode(self, message, size, draw):
    del size, draw
    return message[0]

  def message_bytes(self, size, dtype=jnp.float32):
    return int(size) * np.dtype(dtype).itemsize

  def numpy_apply(self, v, rng):
    return v


@dataclasses.dataclass(frozen=True)
class TopK(Compressor):
  """The ``k`` largest magnitudes and their indices. Build with `top_k`."""

  fraction: float

  def encode(self, v, draw):
    del draw
    k = kept_entries(self.fraction, v.shape[0])
    _, indices = lax.top_k(jnp.abs(v), k)  # ties: the lower index first
    return (v[indices], indices.astype(jnp.int32))

  def decode(self, message, size, draw):
    return self.decode_add(jnp.zeros((size,), message[0].dtype), message, draw)

  def sparse_entries(self, message, draw):
    del draw
    return message

  def add_into(self, flat, offset, size, message, draw, weight=1):
    del size, draw
    values, indices = message
    return flat.at[indices + offset].add(
      weight * values.astype(flat.dtype), unique_indices=True
    )

  def message_bytes(self, size, dtype=jnp.float32):
    return kept_entries(self.fraction, int(size)) * (np.dtype(dtype).itemsize + 4)

  def numpy_apply(self, v, rng):
    # Keeps every entry at least as large as the k-th magnitude (ties may keep
    # a few more; this is for tuning, where speed matters more).
    k = kept_entries(self.fraction, v.shape[1])
    magnitude = np.abs(v)
    threshold = np.partition(magnitude, v.shape[1] - k, axis=1)[:, -k : -k + 1 or None]
    return np.where(magnitude >= threshold, v, 0)


@dataclasses.dataclass(frozen=True)
class RandomK(Compressor):
  """``k`` entries at indices drawn from the seed and step. Build with `random_k`."""

  fraction: float
  seed: int
  rescale: bool
  randomness = "shared"

  def draw(self, key, size, dtype=jnp.float32):
    """The k indices (int32), the same on every worker."""
    del dtype
    k = kept_entries(self.fraction, size)
    return jax.random.choice(key, size, (k,), replace=False).astype(jnp.int32)

  def _scale(self, size):
    return size / kept_entries(self.fraction, size) if self.rescale else 1.0

  def encode(self, v, draw):
    values = v[draw]
    if self.rescale:
      values = values * jnp.asarray(self._scale(v.shape[0]), v.dtype)
    return (values,)

  def decode(self, message, size, draw):
    return self.decode_add(jnp.zeros((size,), message[0].dtype), message, draw)

  def sparse_entries(self, message, draw):
    return message[0], draw

  def add_into(self, flat, offset, size, message, draw, weight=1):
    del size
    return flat.at[draw + offset].add(
      weight * message[0].astype(flat.dtype), unique_indices=True
    )

  def message_bytes(self, size, dtype=jnp.float32):
    return kept_entries(self.fraction, int(size)) * np.dtype(dtype).itemsize

  def numpy_apply(self, v, rng):
    k = kept_entries(self.fraction, v.shape[1])
    indices = rng.permutation(v.shape[1])[:k]
    out = np.zeros_like(v)
    out[:, indices] = v[:, indices] * self._scale(v.shape[1])
    return out


@dataclasses.dataclass(frozen=True)
class ScaledSign(Compressor):
  """``(||v||_1 / size) sign(v)``, signs packed 8 per byte. Build with `scaled_sign`."""

  def encode(self, v, draw):
    del draw
    scale = jnp.sum(jnp.abs(v)) / v.shape[0]
    return (jnp.packbits(v >= 0), scale)

  def decode(self, message, size, draw):
    del draw
    bits, scale = message
    positive = jnp.unpackbits(bits, count=size).astype(bool)
    return jnp.where(positive, scale, -scale)

  def message_bytes(self, size, dtype=jnp.float32):
    return -(-int(size) // 8) + np.dtype(dtype).itemsize

  def numpy_apply(self, v, rng):
    scale = np.mean(np.abs(v), axis=1, keepdims=True)
    return np.where(v >= 0, scale, -scale)


@dataclasses.dataclass(frozen=True)
class QSGD(Compressor):
  """Unbiased rounding of ``|v| / ||v||_2`` to ``levels`` levels. Build with `qsgd`."""

  levels: int
  seed: int
  randomness = "per_worker"

  def draw(self, key, size, dtype=jnp.float32):
    """Uniform [0, 1) rounding noise, one per entry (this worker's own)."""
    return jax.random.uniform(key, (size,), dtype)

  def encode(self, v, draw):
    norm = jnp.sqrt(jnp.sum(v * v))
    ratio = jnp.abs(v) / jnp.where(norm > 0, norm, 1) * self.levels
    low = jnp.floor(ratio)
    level = low + (draw.astype(v.dtype) < ratio - low).astype(v.dtype)
    return ((jnp.sign(v) * level).astype(jnp.int8), norm)

  def decode(self, message, size, draw):
    del size, draw
    levels, norm = message
    return levels.astype(norm.dtype) * (norm / self.levels)

  def message_bytes(self, size, dtype=jnp.float32):
    return int(size) + np.dtype(dtype).itemsize

  def numpy_apply(self, v, rng):
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    ratio = np.abs(v) / np.where(norm > 0, norm, 1) * self.levels
    low = np.floor(ratio)
    level = low + (rng.random(v.shape) < ratio - low)
    return np.sign(v) * level * norm / self.levels


# ----------------------------------------------------------------------------
# Constructors.


def identity() -> Identity:
  """No compression (``Q(v) = v``): compressed gossip then equals plain gossip.

  Example:
    >>> import jax_aldsgd as ald
    >>> ald.compressors.identity().message_bytes(1000)  # float32 values
    4000
  """
  return Identity()


def top_k(fraction: float) -> TopK:
  """Per leaf, the ``k = max(1, floor(fraction * size))`` largest magnitudes.

  The message is k values and k int32 indices; the receiver scatter-adds them.

  Args:
    fraction: in (0, 1], the share of each leaf's entries that travel.

  Example:
    >>> import jax.numpy as jnp, jax_aldsgd as ald
    >>> q = ald.compressors.top_k(0.5)
    >>> message = q.encode(jnp.array([0.1, -3.0, 2.0, 0.5]), None)
    >>> q.decode(message, 4, None).tolist(), q.message_bytes(4)
    ([0.0, -3.0, 2.0, 0.0], 16)
  """
  return TopK(_check_fraction(fraction))


def random_k(fraction: float, seed: int = 0, *, rescale: bool = False) -> RandomK:
  """Per leaf, ``k = max(1, floor(fraction * size))`` entries at random indices.

  The indices come from ``jax.random.choice`` (without replacement) on a key
  derived from ``seed``, the step and the leaf (see the module docstring), the
  same on every worker, so only the k values travel.

  Args:
    fraction: in (0, 1], the share of each leaf's entries that travel.
    seed: integer seed of the indices.
    rescale: multiply the values by ``size / k``, which makes ``Q`` unbiased
      (``E Q(v) = v``); CHOCO-SGD uses the unscaled (contractive) form.

  Example:
    >>> import jax, jax.numpy as jnp, jax_aldsgd as ald
    >>> q = ald.compressors.random_k(0.25, seed=3)
    >>> draw = q.draw(q.leaf_key(step=0, leaf=0), 8)  # 2 indices
    >>> message = q.encode(jnp.arange(8.0), draw)
    >>> dense = q.decode(message, 8, draw)
    >>> len(message[0]), int((dense != 0).sum()), q.message_bytes(8)
    (2, 2, 8)
  """
  return RandomK(_check_fraction(fraction), _check_seed(seed), bool(rescale))


def scaled_sign() -> ScaledSign:
  """Per leaf, ``(||v||_1 / size) sign(v)``: one bit per entry and one float.

  ``sign(0)`` counts as +1 (one bit cannot say 0).

  Example:
    >>> import jax.numpy as jnp, jax_aldsgd as ald
    >>> q = ald.compressors.scaled_sign()
    >>> message = q.encode(jnp.array([1.0, -3.0, 2.0, 0.0]), None)
    >>> q.decode(message, 4, None).tolist(), q.message_bytes(4)
    ([1.5, -1.5, 1.5, 1.5], 5)
  """
  return ScaledSign()


def qsgd(levels: int, seed: int = 0) -> QSGD:
  """Per leaf, QSGD: unbiased stochastic rounding of ``|v| / ||v||_2`` to ``levels``.

  ``Q(v) = ||v||_2 sign(v) l / s`` with ``s = levels`` and ``l = floor(r) +
  Bernoulli(r - floor(r))``, ``r = s |v| / ||v||_2``, so ``E Q(v) = v``. The message
  is one int8 (signed level) per entry and the norm; the rounding noise comes
  from ``seed``, the step, the leaf and the worker.

  Args:
    levels: integer ``s`` in [1, 127] (signed levels must fit in an int8).
    seed: integer seed of the rounding noise.

  Example:
    >>> import jax.numpy as jnp, jax_aldsgd as ald
    >>> q = ald.compressors.qsgd(levels=4)
    >>> v = jnp.array([3.0, -4.0])  # norm 5: r = 2.4, 3.2
    >>> message = q.encode(v, q.draw(q.leaf_key(step=0, leaf=0, worker=0), 2))
    >>> [abs(int(l)) in (2, 3, 4) for l in message[0]], q.message_bytes(2)
    ([True, True], 6)
  """
  if isinstance(levels, bool) or not isinstance(levels, numbers.Integral):
    raise TypeError(
      f"levels must be an integer (the number of rounding levels), "
      f"got {levels!r}; e.g. qsgd(levels=16)."
    )
  if not 1 <= levels <= 127:
    raise ValueError(
      f"levels must be in [1, 127] (signed levels travel as int8), "
      f"got {levels}; e.g. qsgd(levels=16)."
    )
  return QSGD(int(levels), _check_seed(seed))


def check_compressor(compressor) -> Compressor:
  if not isinstance(compressor, Compressor):
    raise TypeError(
      "compressor must be one of jax_aldsgd.compressors (identity(), "
      "top_k(fraction), random_k(fraction), scaled_sign(), qsgd(levels)), got "
      f"{compressor!r} of type {type(compressor).__name__}."
    )
  return compressor
