"""Schedules: flags on host and on workers agree, patterns, statistics, bad input."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_aldsgd as ald
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T

G0, G1 = T.paper_graph(0), T.paper_graph(1)


def _all_kinds():
  return {
    "full": S.full(G0),
    "alternating": S.alternating(G0),
    "matcha": S.matcha(G0, 0.5, seed=7),
    "explicit": S.explicit(G0, [{0, 1}, set(), {4}]),
    "rotating": S.rotating(
      [
        S.matcha(G1, 0.3, seed=1),
        S.full(G0),
        S.rotating([S.alternating(G1), S.matcha(G0, 0.6)]),
      ]
    ),
  }


@pytest.mark.parametrize("kind", sorted(_all_kinds()))
def test_host_flags_equal_traced_flags(kind):
  schedule = _all_kinds()[kind]
  steps = np.arange(0, 2000, 7)
  traced = jax.jit(jax.vmap(lambda k: schedule.slot_flags(k, jnp)))(
    jnp.asarray(steps, jnp.int32)
  )
  host = np.stack([schedule.active(int(k)) for k in steps])
  np.testing.assert_array_equal(np.asarray(traced), host)
  assert host.shape == (len(steps), schedule.num_slots)


def test_flags_are_identical_on_every_worker():
  schedule = _all_kinds()["rotating"]
  mesh = ald.worker_mesh(8)

  def flags(step):
    return schedule.slot_flags(step, jnp)[None]

  per_worker = jax.jit(
    jax.shard_map(flags, mesh=mesh, in_specs=jax.P(), out_specs=jax.P("workers"))
  )
  for step in (0, 1, 5, 123):
    got = np.asarray(per_worker(jnp.int32(step)))
    assert (got == schedule.active(step)).all()


def test_full_and_alternating_patterns():
  np.testing.assert_array_equal(S.full(G0).active(3), [True] * 5)
  alt = S.alternating(G0)
  np.testing.assert_array_equal(alt.active(0), [0, 1, 0, 0, 0])
  np.testing.assert_array_equal(alt.active(1), [1, 0, 0, 0, 0])
  np.testing.assert_array_equal(alt.active(2), [0, 1, 0, 0, 0])
  assert abs(alt.neighbor_weight[0] - 2 / 7) < 1e-12


def test_explicit_is_periodic():
  schedule = S.explicit(G0, [{0, 1}, set(), {4}], neighbor_weight=0.2)
  for k in range(9):
    want = [[1, 1, 0, 0, 0], [0] * 5, [0, 0, 0, 0, 1]][k % 3]
    np.testing.assert_array_equal(schedule.active(k), want)
  assert schedule.neighbor_weight == (0.2,)


def test_matcha_flag_frequencies_match_probabilities():
  schedule = S.matcha(G0, 0.5, seed=3)
  flags = np.stack([schedule.active(k) for k in range(20000)])
  p = np.array(schedule.probabilities)
  # 5 standard deviations of a Bernoulli mean over 20000 draws.
  assert np.all(np.abs(flags.mean(0) - p) <= 5 * np.sqrt(p * (1 - p) / 20000) + 1e-12)
  # Flags of different matchings and steps are uncorrelated.
  on = flags[:, [0, 2, 3]].astype(float)
  correlation = np.corrcoef(on.T)
  assert np.abs(correlation - np.eye(3)).max() < 0.05
  assert np.abs(np.corrcoef(on[:-1, 1], on[1:, 1])[0, 1]) < 0.05


def test_matcha_seed_determines_flags():
  a, b = S.matcha(G0, 0.5, seed=1), S.matcha(G0, 0.5, seed=1)
  c = S.matcha(G0, 0.5, seed=2)
  fa = np.stack([a.active(k) for k in range(200)])
  assert (fa == np.stack([b.active(k) for k in range(200)])).all()
  assert (fa != np.stack([c.active(k) for k in range(200)])).any()
  assert a == b and hash(a) == hash(b)


def test_rotating_uses_own_counters():
  m1 = S.matcha(G1, 0.5, seed=4)
  alt = S.alternating(G0)
  rot = S.rotating([m1, alt])
  assert rot.num_slots == G1.num_matchings + G0.num_matchings
  assert rot.neighbor_weight == m1.neighbor_weight + alt.neighbor_weight
  for k in range(40):
    flags = rot.active(k)
    first, second = flags[:5], flags[5:]
    if k % 2 == 0:
      np.testing.assert_array_equal(first, m1.active(k // 2))
      assert not second.any()
      assert rot.graph_index(k) == 0
    else:
      np.testing.assert_array_equal(second, alt.active(k // 2))
      assert not first.any()
      assert rot.graph_index(k) == 1


def test_mixing_matrix_and_active_degrees():
  schedule = S.explicit(G0, [{0, 2, 3}])
  np.testing.assert_array_equal(schedule.active_degrees(0), [3, 3, 2, 2, 1, 2, 2, 3])
  w = schedule.mixing_matrix(0)
  np.testing.assert_allclose(w.sum(1), 1.0)
  np.testing.assert_allclose(w, w.T)


def test_spectral_gap_of_a_static_ring_is_one_minus_lambda_2():
  n = 8
  schedule = S.full(T.ring(n))
  shift = np.roll(np.eye(n), 1, axis=1)
  w = np.eye(n) - schedule.neighbor_weight[0] * (2 * np.eye(n) - shift - shift.T)
  values = np.sort(np.abs(np.linalg.eigvalsh(w)))  # 1 (the mean) is the largest
  assert schedule.period == 1
  assert schedule.spectral_gap() == pytest.approx(1 - values[-2], abs=1e-12)
  # Every other step: the same contraction over two steps, per step its root.
  assert S.every(schedule, 2).spectral_gap() == pytest.approx(
    1 - np.sqrt(values[-2]), abs=1e-12
  )


@pytest.mark.parametrize("kind", ["full", "alternating", "explicit", "nested"])
def test_period_is_when_the_flags_repeat(kind):
  schedule = {
    "full": S.full(G0),
    "alternating": S.every(S.alternating(G0), 3),
    "explicit": S.explicit(G0, [{0, 1}, set(), {4}]),
    "nested": S.rotating(
      [S.explicit(G1, [{0}, {1}, {2}]), S.alternating(G0)], restart_every=5
    ),
  }[kind]
  period = schedule.period
  flags = np.stack([schedule.active(k) for k in range(3 * period)])
  np.testing.assert_array_equal(flags[period:], flags[:-period])
  gap = schedule.spectral_gap()
  assert 0 <= gap < 1 and schedule.spectral_gap(2 * period) >= gap - 1e-12


def test_spectral_gap_of_random_flags():
  matcha = S.matcha(G0, 0.5, seed=7)
  assert matcha.period is None
  assert matcha.spectral_gap() == pytest.approx(1 - np.sqrt(matcha.rho))
  product = np.eye(8)
  for k in range(20):
    product = matcha.mixing_matrix(k) @ product
  drawn = np.linalg.svd(product, compute_uv=False)[1] ** (1 / 20)
  assert matcha.spectral_gap(20) == pytest.approx(1 - drawn)
  with pytest.raises(ValueError, match="Rotating has no period.*pass steps=T"):
    S.rotating([matcha, S.full(G0)]).spectral_gap()


def test_bad_schedules():
  with pytest.raises(ValueError, match="same number of workers, got \\[8, 16\\]"):
    S.rotating([S.full(G0), S.full(T.paper_graph(10))])
  with pytest.raises(ValueError, match="non-empty list"):
    S.rotating([])
  with pytest.raises(TypeError, match="schedules\\[1\\] must be"):
    S.rotating([S.full(G0), G1])
  with pytest.raises(ValueError, match="names matching 7"):
    S.explicit(G0, [{7}])
  with pytest.raises(ValueError, match="non-empty list"):
    S.explicit(G0, [])
  with pytest.raises(ValueError, match="neighbor_weight must be a positive"):
    S.full(G0, neighbor_weight=-0.1)
  with pytest.raises(ValueError, match="at least 2 matchings"):
    S.alternating(T.ring(2))
  with pytest.raises(TypeError, match="jax_aldsgd.Topology"):
    S.full([[0, 1]])
  with pytest.raises(ValueError, match="seed must be"):
    S.matcha(G0, 0.5, seed=-1)
  with pytest.raises(ValueError, match="step must be a non-negative"):
    S.full(G0).active(-1)


def test_rotating_warns_when_union_is_disconnected():
  a = ald.Topology(4, [[(0, 1)]], allow_disconnected=True)
  b = ald.Topology(4, [[(0, 1)], [(0, 1)]], allow_disconnected=True)
  with pytest.warns(UserWarning, match="union of the rotated graphs is disconnected"):
    S.rotating([S.full(a), S.full(b)])
  c = ald.Topology(4, [[(1, 2), (0, 3)]], allow_disconnected=True)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    S.rotating([S.full(a), S.full(c)])
