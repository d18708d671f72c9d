"""Compressors: against NumPy, bytes, sparse = dense apply, unbiasedness, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_aldsgd import compressors as C
from tests import choco_reference


def _reference(compressor, v, step, leaf, worker):
  return choco_reference.leaf_q(compressor, step)(
    np.asarray(v, np.float64), leaf, worker
  )


COMPRESSORS = [
  C.identity(),
  C.top_k(0.1),
  C.top_k(1.0),
  C.random_k(0.3, seed=5),
  C.random_k(0.3, seed=5, rescale=True),
  C.scaled_sign(),
  C.qsgd(4, seed=2),
  C.qsgd(1),
]


@pytest.mark.parametrize("compressor", COMPRESSORS, ids=repr)
@pytest.mark.parametrize("size", [1, 37])
def test_encode_decode_match_numpy_and_bytes(compressor, size):
  rng = np.random.default_rng(size)
  v = jnp.asarray(rng.normal(size=size), jnp.float32)
  draw = compressor.draw(compressor.leaf_key(3, 1, 2), size)
  message = compressor.encode(v, draw)
  got = np.asarray(compressor.decode(message, size, draw), np.float64)
  want = _reference(compressor, v, 3, 1, 2)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert sum(np.asarray(a).nbytes for a in message) == compressor.message_bytes(size)


def test_message_bytes_per_compressor():
  assert C.top_k(0.1).message_bytes(1000) == 100 * 8  # values + int32 indices
  assert C.top_k(0.1).message_bytes(5) == 8  # k = max(1, floor(0.5)) = 1
  assert C.random_k(0.1).message_bytes(1000) == 100 * 4  # values only
  assert C.scaled_sign().message_bytes(1000) == 125 + 4  # packed bits + norm
  assert C.scaled_sign().message_bytes(9) == 2 + 4
  assert C.qsgd(16).message_bytes(1000) == 1000 + 4  # int8 levels + norm
  assert C.identity().message_bytes(1000, jnp.float64) == 8000


def test_random_k_indices_are_shared_and_qsgd_noise_is_not():
  q = C.random_k(0.25, seed=1)
  v = jnp.arange(16.0)
  same = [np.asarray(q.draw(q.leaf_key(4, 0, w), 16)) for w in range(3)]
  np.testing.assert_array_equal(same[0], same[1])
  np.testing.assert_array_equal(same[0], same[2])
  assert not np.array_equal(same[0], np.asarray(q.draw(q.leaf_key(5, 0), 16)))
  q = C.qsgd(2, seed=1)
  v = jnp.asarray(np.random.default_rng(0).normal(size=64), jnp.float32)
  levels = [
    np.asarray(q.encode(v, q.draw(q.leaf_key(4, 0, w), 64))[0]) for w in range(2)
  ]
  assert not np.array_equal(levels[0], levels[1])


@pytest.mark.parametrize(
  "compressor", [C.top_k(0.1), C.random_k(0.3, seed=5), C.scaled_sign()], ids=repr
)
def test_sparse_and_dense_apply_are_bit_equal(compressor):
  """add_into (a scatter-add for top-k / random-k) = adding the dense Q(v)."""
  rng = np.random.default_rng(0)
  sizes, offset = (5, 40), 5  # the second leaf of a flat buffer of two

  @jax.jit
  def apply_both(sparse, dense, v, step):
    draw = compressor.draw(compressor.leaf_key(step, 1, 0), sizes[1])
    message = compressor.encode(v, draw)
    weight = (step % 3 - 1).astype(jnp.float32)  # -1, 0, 1
    sparse = compressor.add_into(sparse, offset, sizes[1], message, draw, weight)
    decoded = compressor.decode(message, sizes[1], draw)
    return sparse, dense + jnp.concatenate([jnp.zeros(offset), weight * decoded])

  sparse = dense = jnp.asarray(rng.normal(size=sum(sizes)), jnp.float32)
  for step in range(6):
    v = jnp.asarray(rng.normal(size=sizes[1]), jnp.float32)
    sparse, dense = apply_both(sparse, dense, v, jnp.int32(step))
  np.testing.assert_array_equal(np.asarray(sparse), np.asarray(dense))


@pytest.mark.parametrize(
  "compressor", [C.qsgd(3, seed=7), C.random_k(0.2, seed=7, rescale=True)], ids=repr
)
def test_unbiased(compressor):
  rng = np.random.default_rng(1)
  v = jnp.asarray(rng.normal(size=20), jnp.float32)
  samples = 4000

  def one(step):
    draw = compressor.draw(compressor.leaf_key(step, 0, 0), 20)
    return compressor.decode(compressor.encode(v, draw), 20, draw)

  draws = np.asarray(jax.jit(jax.vmap(one))(jnp.arange(samples)), np.float64)
  mean, sem = draws.mean(0), draws.std(0) / np.sqrt(samples)
  # Each entry's mean within 5 standard errors (and the errors are not all 0).
  assert np.all(np.abs(mean - np.asarray(v)) <= 5 * sem + 1e-6)
  assert sem.max() > 0
  if isinstance(compressor, C.random_k(0.5).__class__):  # unscaled: biased by k/d
    plain = C.random_k(0.2, seed=7)
    draw = plain.draw(plain.leaf_key(0, 0), 20)
    np.testing.assert_allclose(
      np.asarray(plain.decode(plain.encode(v, draw), 20, draw)) * 5,
      np.asarray(compressor.decode(compressor.encode(v, draw), 20, draw)),
      rtol=1e-6,
    )


def test_bad_input():
  for fraction in (0, -0.1, 1.5, True, "0.1", float("nan")):
    with pytest.raises(ValueError, match="fraction must be in \\(0, 1\\]"):
      C.top_k(fraction)
    with pytest.raises(ValueError, match="fraction must be in \\(0, 1\\]"):
      C.random_k(fraction)
  for levels in (2.5, "4", True):
    with pytest.raises(TypeError, match="levels must be an integer"):
      C.qsgd(levels)
  for levels in (0, -3, 128):
    with pytest.raises(ValueError, match="levels must be in \\[1, 127\\]"):
      C.qsgd(levels)
  with pytest.raises(ValueError, match="seed must be an integer"):
    C.random_k(0.1, seed=-1)
