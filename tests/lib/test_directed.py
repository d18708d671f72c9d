"""The schedule contract's directed step: a slot that is a permutation, not a matching.

A hand-built schedule (the next issue builds the one-peer exponential graph on
the same contract): at step k worker i receives from ``i - 2^(k mod 3) mod 8``
with weight 1/2, i.e. ``W_k = (I + P_k) / 2``, one ``ppermute`` per step.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_aldsgd as ald
from jax_aldsgd import _plan
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T
from tests import helpers

N = 8


@dataclasses.dataclass(frozen=True)
class Shifts(ald.Schedule):
  """Slot k: i receives from i - 2^k (mod n); slot ``step mod log2 n`` is active."""

  num: int = N

  @property
  def graphs(self):
    return ()

  @property
  def neighbor_weight(self):
    return ()

  @functools.cached_property
  def slot_partners(self):
    hops = int(np.log2(self.num))
    table = np.array(
      [(np.arange(self.num) - 2**k) % self.num for k in range(hops)], np.int64
    )
    table.setflags(write=False)
    return table

  @functools.cached_property
  def slot_weight(self):
    return np.full(self.num_slots, 0.5)

  def slot_flags(self, step, xp):
    return xp.arange(self.num_slots) == step % self.num_slots

  def activation_patterns(self, limit):
    del limit
    return frozenset(
      tuple(k == s for k in range(self.num_slots)) for s in range(self.num_slots)
    )


def _numpy_matrix(step):
  """``(I + P) / 2`` with ``P[i, i - 2^k] = 1`` (row i: what worker i receives)."""
  shift = 2 ** (step % 3)
  w = np.eye(N) / 2
  for i in range(N):
    w[i, (i - shift) % N] += 0.5
  return w


def test_contract():
  schedule = Shifts()
  assert schedule.directed and schedule.num_workers == N and schedule.num_slots == 3
  assert not S.full(T.ring(N)).directed
  for step in range(6):
    w = schedule.mixing_matrix(step)
    np.testing.assert_array_equal(w, _numpy_matrix(step))
    # Not symmetric, except the shift by n/2, which is a matching.
    assert np.allclose(w, w.T) == (step % 3 == 2)
    np.testing.assert_allclose(w.sum(0), 1.0)  # but doubly stochastic
    np.testing.assert_array_equal(schedule.active_degrees(step), np.ones(N))
  # One ppermute per slot, pairs (source, receiver): i - 2 sends to i.
  assert _plan.pairs(schedule.slot_partners[1])[:2] == ((6, 0), (7, 1))
  # log2(n) steps of (I + P_k) / 2 average exactly.
  product = np.eye(N)
  for step in range(3):
    product = schedule.mixing_matrix(step) @ product
  np.testing.assert_allclose(product, np.full((N, N), 1 / N), atol=1e-15)


@pytest.mark.parametrize("delay", [0, 1])
def test_gossip_matches_numpy(delay):
  """Gossip (plain, and push-sum with a delay of one step) against NumPy.

  (test_conformance.py's rows run both under several workers per device.)
  """
  schedule = Shifts()
  mesh = ald.worker_mesh(N)
  tx = ald.gossip(schedule, delay=delay)
  x0 = jax.random.normal(jax.random.key(0), (N, 3))

  def step_fn(x, state):
    updates, state = tx.update(jnp.zeros_like(x), state, x)
    return optax.apply_updates(x, updates), state

  step = jax.jit(ald.worker_map(step_fn, mesh))
  state = jax.jit(ald.worker_map(tx.init, mesh))(x0)
  x, want = x0, np.asarray(x0, np.float64)
  # Push-sum with delay d: z = w_ii z + (what was sent d steps ago), psi alike.
  z, psi, flying = want.copy(), np.ones(N), []
  for k in range(6):
    x, state = step(x, state)
    w = _numpy_matrix(k)
    if delay == 0:
      want = w @ want
      np.testing.assert_allclose(np.asarray(x), want, rtol=1e-5, atol=1e-6)
      continue
    off = w - np.diag(np.diag(w))
    flying.append((off @ z, off @ psi))
    arrived = flying.pop(0) if len(flying) > delay else (0.0, 0.0)
    z = np.diag(w)[:, None] * z + arrived[0]
    psi = np.diag(w) * psi + arrived[1]
    np.testing.assert_allclose(np.asarray(x), z / psi[:, None], rtol=1e-5, atol=1e-6)
  if delay == 0:  # three steps averaged exactly; six keep the mean
    np.testing.assert_allclose(
      np.asarray(x), np.broadcast_to(x0.mean(0), x.shape), atol=1e-6
    )


def test_traffic_is_one_message_per_step():
  schedule = Shifts()
  params = {"w": jnp.zeros((10, 3))}
  traffic = ald.traffic(ald.gossip(schedule), params)
  assert traffic.parts == (120,)
  for step in range(4):
    np.testing.assert_array_equal(traffic.sent_bytes(step), np.full(N, 120))
    np.testing.assert_array_equal(traffic.ppermutes(step), np.ones(N))
  hlo = helpers.compiled_train_step_hlo(
    optax.chain(optax.sgd(0.1), ald.gossip(schedule))
  )
  assert hlo.count("collective-permute-start") + hlo.count(" collective-permute(") >= 3


@pytest.mark.parametrize(
  "make, refused",
  [
    (
      lambda s: ald.adjacent_leader(s),
      "adjacent_leader cannot be combined with a directed",
    ),
    (
      lambda s: ald.gossip(s, compressor=ald.compressors.top_k(0.5)),
      "compressor=TopK(fraction=0.5) cannot be combined with a directed",
    ),
  ],
)
def test_refused_where_the_rule_needs_matchings(make, refused):
  with pytest.raises(ValueError, match=re.escape(refused)):
    make(Shifts())


def test_a_slot_must_be_a_permutation():
  @dataclasses.dataclass(frozen=True)
  class TwoToOne(Shifts):
    @functools.cached_property
    def slot_partners(self):
      table = np.array(super().slot_partners)
      table[0, 1] = table[0, 0]  # workers 0 and 1 both receive from 7
      return table

  with pytest.raises(ValueError, match="slot 0.*sends to more than one"):
    _plan.exchange_plan(TwoToOne())


# ----------------------------------------------------------------------------
# The one-peer exponential graph: the same contract, as a library schedule.


@pytest.mark.parametrize("n", [2, 6, 8, 16])
def test_one_peer_exponential(n):
  schedule = S.one_peer_exponential(n)
  hops = max(int(np.ceil(np.log2(n))), 1)
  assert schedule.num_slots == hops and schedule.num_workers == n
  assert schedule.directed == (n > 2)  # two workers: the shift is a matching
  for step in range(2 * hops):
    shift = 2 ** (step % hops)
    want = np.eye(n) / 2
    for i in range(n):
      want[i, (i - shift) % n] += 0.5
    np.testing.assert_array_equal(schedule.mixing_matrix(step), want)
    np.testing.assert_array_equal(schedule.active(step), np.arange(hops) == step % hops)
  product = np.eye(n)
  for step in range(hops):
    product = schedule.mixing_matrix(step) @ product
  if n & (n - 1) == 0:  # a power of two: tau steps average exactly
    np.testing.assert_allclose(product, np.full((n, n), 1 / n), atol=1e-15)
  else:  # not exactly, but the mean is kept
    assert not np.allclose(product, 1 / n)
    np.testing.assert_allclose(product.sum(0), 1.0)


def test_one_peer_exponential_spectral_gap():
  """Per step over one period: 1 for n a power of two, else from the matrices."""
  assert S.one_peer_exponential(8).spectral_gap() == 1.0
  n, hops = 6, 3
  product = np.eye(n)
  for k in range(hops):
    product = (np.eye(n) + np.roll(np.eye(n), -(2**k), axis=1)) / 2 @ product
  second = np.linalg.svd(product, compute_uv=False)[1]
  # The shifts are circulant: the product's eigenvalues are prod_k (1 + w^(j 2^k)) / 2.
  roots = np.exp(2j * np.pi * np.arange(1, n) / n)
  fourier = np.abs(np.prod([(1 + roots ** (2**k)) / 2 for k in range(hops)], 0))
  assert second == pytest.approx(fourier.max())
  assert S.one_peer_exponential(n).spectral_gap() == pytest.approx(
    1 - second ** (1 / hops)
  )
  # A schedule that does not say its period needs the window.
  with pytest.raises(ValueError, match="Shifts has no period"):
    Shifts().spectral_gap()
  assert Shifts().spectral_gap(3) == 1.0


def test_one_peer_exponential_is_the_hand_built_shifts():
  np.testing.assert_array_equal(
    S.one_peer_exponential(N).slot_partners, Shifts().slot_partners
  )
  with pytest.raises(ValueError, match="num_workers must be an integer >= 2"):
    S.one_peer_exponential(1)


def test_rotating_and_every_keep_a_directed_child():
  """Composite schedules take their children's slots (not their graphs)."""
  peer, ring = S.one_peer_exponential(N), S.full(T.ring(N))
  rotation = S.rotating([peer, ring])
  assert rotation.directed and rotation.num_slots == 3 + 2
  np.testing.assert_array_equal(rotation.mixing_matrix(0), peer.mixing_matrix(0))
  np.testing.assert_array_equal(rotation.mixing_matrix(1), ring.mixing_matrix(0))
  np.testing.assert_array_equal(rotation.mixing_matrix(2), peer.mixing_matrix(1))
  every = S.every(peer, 2)
  np.testing.assert_array_equal(every.mixing_matrix(2), peer.mixing_matrix(1))
  np.testing.assert_array_equal(every.mixing_matrix(1), np.eye(N))
  tx = ald.gossip(rotation)
  mesh = ald.worker_mesh(N)
  x = jax.random.normal(jax.random.key(2), (N, 2))

  def step_fn(x, state):
    updates, state = tx.update(jnp.zeros_like(x), state, x)
    return optax.apply_updates(x, updates), state

  step = jax.jit(ald.worker_map(step_fn, mesh))
  state = jax.jit(ald.worker_map(tx.init, mesh))(x)
  want = np.asarray(x, np.float64)
  for k in range(5):
    x, state = step(x, state)
    want = rotation.mixing_matrix(k) @ want
  np.testing.assert_allclose(np.asarray(x), want, rtol=1e-5, atol=1e-6)
