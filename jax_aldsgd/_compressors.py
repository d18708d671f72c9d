"""Compressors for CHOCO-SGD's messages: identity, top-k, random-k, scaled sign, QSGD.

A compressor is a small frozen (hashable) dataclass that works on one leaf at a
time, flattened to 1-D:

* ``encode(v, key)`` returns the message: a tuple of small arrays whose shapes
  depend only on ``v.size`` (static), e.g. top-k's ``(values, int32 indices)``;
* ``decode_add(target, message, key)`` returns ``target + Q(v)``: a scatter-add
  of the k entries for the sparse compressors, a dense add for sign and QSGD
  (``add_into`` does the same on a leaf's segment of a flat buffer of leaves,
  times a scalar weight);
* ``decode(message, size, key)`` is ``Q(v)`` as a dense vector (tests, tuning);
* ``message_bytes(size)`` is what the message of a leaf of ``size`` entries
  weighs on the wire.

``key`` is the leaf's ``jax.random`` key for random compressors and ``None`` for
deterministic ones; `Compressor.leaf_key` derives it from the compressor's seed,
the step, the leaf index and (for `qsgd`, whose rounding noise is private to each
worker) the worker index:

  ``key = fold_in(fold_in(jax.random.key(seed), step), leaf)``, then
  ``key = fold_in(key, worker)`` for `qsgd` only.

So `random_k`'s indices are the same on every worker (only the values travel)
and both ends of an edge decode with the same indices.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _check_fraction(fraction) -> float:
  if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not (
      0.0 < fraction <= 1.0):
    raise ValueError(f"fraction must be in (0, 1] (the share of each leaf's "
                     f"entries that travel), got {fraction!r}; e.g. 0.1 for 10%.")
  return float(fraction)


def _check_seed(seed) -> int:
  if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not (
      0 <= seed < 2**32):
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
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), step),
                             leaf)
    if self.randomness == "per_worker":
      key = jax.random.fold_in(key, worker)
    return key

  def encode(self, v, key):
    raise NotImplementedError

  def decode(self, message, size: int, key):
    """``Q(v)`` as a dense ``(size,)`` vector."""
    raise NotImplementedError

  def decode_add(self, target, message, key):
    """``target + Q(v)`` (``target`` 1-D, of the leaf's size)."""
    return self.add_into(target, 0, target.shape[0], message, key)

  def add_into(self, flat, offset: int, size: int, message, key, weight=1):
    """``flat[offset:offset + size] += weight * Q(v)`` on a 1-D buffer of leaves.

    Dense here; the sparse compressors scatter-add their k entries instead.
    """
    segment = lax.slice(flat, (offset,), (offset + size,))
    dense = self.decode(message, size, key).astype(flat.dtype)
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

  def encode(self, v, key):
    del key
    return (v,)

  def decode(self, message, size, key):
    del size, key
    return message[0]

  def message_bytes(self, size, dtype=jnp.float32):
    return int(size) * np.dtype(dtype).itemsize

  def numpy_apply(self, v, rng):
    return v


@dataclasses.dataclass(frozen=True)
class TopK(Compressor):
  """The ``k`` largest magnitudes and their indices. Build with `top_k`."""

  fraction: float

  def encode(self, v, key):
    del key
    k = kept_entries(self.fraction, v.shape[0])
    _, indices = lax.top_k(jnp.abs(v), k)  # ties: the lower index first
    return (v[indices], indices.astype(jnp.int32))

  def decode(self, message, size, key):
    return self.decode_add(jnp.zeros((size,), message[0].dtype), message, key)

  def add_into(self, flat, offset, size, message, key, weight=1):
    del size, key
    values, indices = message
    return flat.at[indices + offset].add(weight * values.astype(flat.dtype),
                                         unique_indices=True)

  def message_bytes(self, size, dtype=jnp.float32):
    return kept_entries(self.fraction, int(size)) * (np.dtype(dtype).itemsize + 4)

  def numpy_apply(self, v, rng):
    k = kept_entries(self.fraction, v.shape[1])
    indices = np.argpartition(-np.abs(v), k - 1, axis=1)[:, :k]
    out = np.zeros_like(v)
    np.put_along_axis(out, indices, np.take_along_axis(v, indices, 1), 1)
    return out


@dataclasses.dataclass(frozen=True)
class RandomK(Compressor):
  """``k`` entries at indices drawn from the seed and the step. Build with `random_k`."""

  fraction: float
  seed: int
  rescale: bool
  randomness = "shared"

  def indices(self, key, size: int):
    k = kept_entries(self.fraction, size)
    return jax.random.choice(key, size, (k,), replace=False).astype(jnp.int32)

  def _scale(self, size):
    return size / kept_entries(self.fraction, size) if self.rescale else 1.0

  def encode(self, v, key):
    values = v[self.indices(key, v.shape[0])]
    if self.rescale:
      values = values * jnp.asarray(self._scale(v.shape[0]), v.dtype)
    return (values,)

  def decode(self, message, size, key):
    return self.decode_add(jnp.zeros((size,), message[0].dtype), message, key)

  def add_into(self, flat, offset, size, message, key, weight=1):
    indices = self.indices(key, size)
    return flat.at[indices + offset].add(weight * message[0].astype(flat.dtype),
                                         unique_indices=True)

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

  def encode(self, v, key):
    del key
    scale = jnp.sum(jnp.abs(v)) / v.shape[0]
    return (jnp.packbits(v >= 0), scale)

  def decode(self, message, size, key):
    del key
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
  """Unbiased stochastic rounding to ``levels`` levels of ``|v| / ||v||_2``. Build with `qsgd`."""

  levels: int
  seed: int
  randomness = "per_worker"

  def encode(self, v, key):
    norm = jnp.sqrt(jnp.sum(v * v))
    ratio = jnp.abs(v) / jnp.where(norm > 0, norm, 1) * self.levels
    low = jnp.floor(ratio)
    noise = jax.random.uniform(key, v.shape, v.dtype)
    level = low + (noise < ratio - low).astype(v.dtype)
    return ((jnp.sign(v) * level).astype(jnp.int8), norm)

  def decode(self, message, size, key):
    del size, key
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
    >>> key = q.leaf_key(step=0, leaf=0)
    >>> message = q.encode(jnp.arange(8.0), key)
    >>> len(message[0]), int((q.decode(message, 8, key) != 0).sum()), q.message_bytes(8)
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
  """Per leaf, QSGD's unbiased stochastic rounding of ``|v| / ||v||_2`` to ``levels`` levels.

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
    >>> message = q.encode(v, q.leaf_key(step=0, leaf=0, worker=0))
    >>> [abs(int(l)) in (2, 3, 4) for l in message[0]], q.message_bytes(2)
    ([True, True], 6)
  """
  if isinstance(levels, bool) or not isinstance(levels, numbers.Integral):
    raise TypeError(f"levels must be an integer (the number of rounding levels), "
                    f"got {levels!r}; e.g. qsgd(levels=16).")
  if not 1 <= levels <= 127:
    raise ValueError(f"levels must be in [1, 127] (signed levels travel as int8), "
                     f"got {levels}; e.g. qsgd(levels=16).")
  return QSGD(int(levels), _check_seed(seed))


def check_compressor(compressor) -> Compressor:
  if not isinstance(compressor, Compressor):
    raise TypeError(
        "compressor must be one of jax_aldsgd.compressors (identity(), "
        "top_k(fraction), random_k(fraction), scaled_sign(), qsgd(levels)), got "
        f"{compressor!r} of type {type(compressor).__name__}.")
  return compressor
