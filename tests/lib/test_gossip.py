"""gossip (D-PSGD, MATCHA) and the all-reduce against the NumPy reference, test
vectors, invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_aldsgd as ald
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T
from tests import helpers, reference

# docs/algorithm.md section 7.
X_HAT = np.arange(8.0)[:, None]
LOSSES = [0.9, 0.5, 0.7, 0.2, 0.8, 0.6, 0.3, 0.4]


def test_vectors_case_a():
  mesh = ald.worker_mesh(8)
  schedule = S.explicit(T.paper_graph(0), [{0}], neighbor_weight=2 / 7)
  got = helpers.mix_once(ald.gossip(schedule), X_HAT, LOSSES, 0, mesh)
  np.testing.assert_allclose(
    np.ravel(got),
    [1.142857, 2.142857, 2.285714, 2.714286, 2.857143, 3.857143, 6.285714, 6.714286],
    atol=1e-5,
  )


@pytest.mark.parametrize(
  "seed,kind", [(0, "full"), (1, "alternating"), (2, "matcha"), (3, "explicit")]
)
def test_single_step_matches_reference_on_random_graphs(seed, kind):
  """Random graphs and pytrees, every schedule kind, several steps."""
  rng = np.random.default_rng(seed)
  n = int(rng.integers(5, 11))
  mesh = ald.worker_mesh(n)
  schedule = helpers.random_schedule(rng, helpers.random_topology(rng, n), kind)
  tx = ald.gossip(schedule)
  dim = helpers.flat_dim(helpers.SHAPES)
  for step in rng.integers(0, 50, size=4):
    x_hat = rng.normal(size=(n, dim))
    matchings, active, weights = reference.schedule_step_inputs(schedule, int(step))
    tree = helpers.unflatten(x_hat, helpers.SHAPES)
    got = helpers.flatten(
      helpers.mix_once(tx, tree, np.zeros(n), int(step), mesh), helpers.SHAPES
    )
    want = reference.gossip(x_hat, matchings, active, weights)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_dsgd_rotating_multistep_matches_reference():
  """Full iterations (loss, gradient, SGD + weight decay, gossip) over 9 steps."""
  rng = np.random.default_rng(7)
  n, dim = 8, helpers.flat_dim(helpers.SHAPES)
  problem = reference.Quadratic(rng, n, dim)
  x0 = rng.normal(size=(n, dim))
  schedule = helpers.rotation(seed=11)
  got, _, _ = helpers.run(
    ald.dsgd(0.1, schedule, weight_decay=5e-4), x0, problem, 9, ald.worker_mesh(n)
  )
  want = helpers.reference_run(x0, problem, 9, schedule, lr=0.1, weight_decay=5e-4)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------
# Invariants.


def test_gossip_preserves_mean():
  rng = np.random.default_rng(1)
  schedule = S.full(helpers.random_topology(rng, 8))
  x_hat = rng.normal(size=(8, helpers.flat_dim(helpers.SHAPES)))
  tree = helpers.unflatten(x_hat, helpers.SHAPES)
  mixed = helpers.flatten(
    helpers.mix_once(ald.gossip(schedule), tree, np.zeros(8), 0, ald.worker_mesh(8)),
    helpers.SHAPES,
  )
  np.testing.assert_allclose(mixed.mean(0), x_hat.mean(0), atol=1e-5)
  assert np.abs(mixed - x_hat).max() > 1e-2  # it did mix


def test_complete_graph_with_uniform_weight_equals_allreduce():
  n = 6
  rng = np.random.default_rng(2)
  x_hat = rng.normal(size=(n, helpers.flat_dim(helpers.SHAPES)))
  tree = helpers.unflatten(x_hat, helpers.SHAPES)
  mesh = ald.worker_mesh(n)
  schedule = S.full(T.complete(n), neighbor_weight=1 / n)
  mixed = helpers.mix_once(ald.gossip(schedule), tree, np.zeros(n), 0, mesh)
  averaged = helpers.mix_once(ald.allreduce(), tree, np.zeros(n), 0, mesh)
  np.testing.assert_allclose(
    helpers.flatten(mixed, helpers.SHAPES),
    helpers.flatten(averaged, helpers.SHAPES),
    atol=1e-6,
  )
  np.testing.assert_allclose(
    helpers.flatten(averaged, helpers.SHAPES),
    np.broadcast_to(x_hat.mean(0), x_hat.shape),
    atol=1e-6,
  )


def test_empty_active_set_leaves_x_hat_unchanged():
  rng = np.random.default_rng(5)
  x_hat = rng.normal(size=(8, helpers.flat_dim(helpers.SHAPES)))
  tree = helpers.unflatten(x_hat, helpers.SHAPES)
  schedule = S.explicit(T.paper_graph(0), [set()])
  got = helpers.flatten(
    helpers.mix_once(ald.gossip(schedule), tree, np.zeros(8), 0, ald.worker_mesh(8)),
    helpers.SHAPES,
  )
  np.testing.assert_array_equal(got, np.asarray(x_hat, np.float32))


def test_ring_consensus_rate_matches_spectral_gap():
  """||x_k - mean|| shrinks by max_j |1 - alpha lambda_j| per step on a ring."""
  n, steps = 10, 30
  schedule = S.full(T.ring(n))
  alpha = schedule.neighbor_weight[0]
  eigenvalues = 2 - 2 * np.cos(2 * np.pi * np.arange(1, n) / n)  # ring Laplacian
  rate = np.max(np.abs(1 - alpha * eigenvalues))
  tx = ald.gossip(schedule)
  mesh = ald.worker_mesh(n)
  x = {"w": jnp.asarray(np.random.default_rng(6).normal(size=(n, 4)), jnp.float32)}

  def step(params, state):
    updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
    return optax.apply_updates(params, updates), state

  step = jax.jit(ald.worker_map(step, mesh))
  state = jax.jit(ald.worker_map(tx.init, mesh))(x)
  distances = []
  for _ in range(steps):
    w = np.asarray(x["w"], np.float64)
    distances.append(np.linalg.norm(w - w.mean(0)))
    x, state = step(x, state)
  observed = (distances[-1] / distances[10]) ** (1 / (steps - 11))
  assert abs(observed - rate) < 0.01, (observed, rate)
