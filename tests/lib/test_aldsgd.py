"""adjacent_leader (AL-DSGD) against the NumPy reference, test vectors, invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_aldsgd as ald
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T
from tests import helpers, reference

COEFFICIENTS = dict(c1=0.3, c2=0.1, p1=0.2, p2=0.2)


# docs/algorithm.md section 7.
X_HAT = np.arange(8.0)[:, None]
LOSSES = [0.9, 0.5, 0.7, 0.2, 0.8, 0.6, 0.3, 0.4]


def test_vectors_case_a():
  mesh = ald.worker_mesh(8)
  schedule = S.explicit(T.paper_graph(0), [{0}], neighbor_weight=2 / 7)
  got = helpers.mix_once(
    ald.adjacent_leader(schedule, **COEFFICIENTS), X_HAT, LOSSES, 0, mesh
  )
  np.testing.assert_allclose(
    np.ravel(got),
    [1.931429, 1.411429, 2.482857, 2.897143, 3.588571, 3.068571, 6.102857, 6.517143],
    atol=1e-5,
  )


def test_vectors_case_b():
  mesh = ald.worker_mesh(8)
  schedule = S.explicit(T.paper_graph(0), [{0, 2, 3}], neighbor_weight=0.396428)
  np.testing.assert_array_equal(schedule.active_degrees(0), [3, 3, 2, 2, 1, 2, 2, 3])
  got = helpers.mix_once(
    ald.adjacent_leader(schedule, **COEFFICIENTS), X_HAT, LOSSES, 0, mesh
  )
  np.testing.assert_allclose(
    np.ravel(got),
    [4.372569, 1.570856, 2.120000, 4.468142, 2.389144, 3.911858, 6.260000, 3.767431],
    atol=1e-5,
  )


@pytest.mark.parametrize(
  "seed,kind", [(0, "full"), (1, "alternating"), (2, "matcha"), (3, "explicit")]
)
def test_single_step_matches_reference_on_random_graphs(seed, kind):
  """Random graphs, pytrees, losses with ties, every schedule kind, many steps."""
  rng = np.random.default_rng(seed)
  n = int(rng.integers(5, 11))
  mesh = ald.worker_mesh(n)
  schedule = helpers.random_schedule(rng, helpers.random_topology(rng, n), kind)
  coefficients = dict(c1=0.25, c2=0.15, p1=0.3, p2=0.1)
  leader = ald.adjacent_leader(schedule, **coefficients)
  dim = helpers.flat_dim(helpers.SHAPES)
  for step in rng.integers(0, 50, size=4):
    x_hat = rng.normal(size=(n, dim))
    losses = rng.integers(0, 3, size=n) / 10.0  # three values: many ties
    matchings, active, weights = reference.schedule_step_inputs(schedule, int(step))
    tree = helpers.unflatten(x_hat, helpers.SHAPES)
    got = helpers.flatten(
      helpers.mix_once(leader, tree, losses, int(step), mesh), helpers.SHAPES
    )
    want = reference.adjacent_leader(
      x_hat, losses, matchings, active, weights, **coefficients
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pull_every", [1, 2])
def test_aldsgd_rotating_multistep_matches_reference(pull_every):
  """Full iterations (loss, gradient, SGD + weight decay, AL-DSGD) over 9 steps."""
  rng = np.random.default_rng(pull_every)
  n, dim = 8, helpers.flat_dim(helpers.SHAPES)
  problem = reference.Quadratic(rng, n, dim)
  x0 = rng.normal(size=(n, dim))
  schedule = helpers.rotation(seed=pull_every)
  tx = ald.aldsgd(
    0.1, schedule, weight_decay=5e-4, pull_every=pull_every, **COEFFICIENTS
  )
  got, _, _ = helpers.run(tx, x0, problem, 9, ald.worker_mesh(n))
  want = helpers.reference_run(
    x0,
    problem,
    9,
    schedule,
    lr=0.1,
    weight_decay=5e-4,
    leader=dict(pull_every=pull_every, **COEFFICIENTS),
  )
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------
# Invariants.


def test_aldsgd_does_not_preserve_mean():
  """Unlike gossip (test_gossip.py), the pull toward the leaders moves the mean."""
  rng = np.random.default_rng(1)
  schedule = S.full(helpers.random_topology(rng, 8))
  x_hat = rng.normal(size=(8, helpers.flat_dim(helpers.SHAPES)))
  tree = helpers.unflatten(x_hat, helpers.SHAPES)
  pulled = helpers.flatten(
    helpers.mix_once(
      ald.adjacent_leader(schedule), tree, rng.random(8), 0, ald.worker_mesh(8)
    ),
    helpers.SHAPES,
  )
  assert np.abs(pulled.mean(0) - x_hat.mean(0)).max() > 1e-3


def test_zero_coefficients_equal_gossip():
  rng = np.random.default_rng(3)
  n, dim = 8, helpers.flat_dim(helpers.SHAPES)
  problem = reference.Quadratic(rng, n, dim)
  x0 = rng.normal(size=(n, dim))
  schedule = helpers.rotation(seed=5)
  mesh = ald.worker_mesh(n)
  zero = dict(c1=0.0, c2=0.0, p1=0.0, p2=0.0)
  got, _, _ = helpers.run(ald.aldsgd(0.1, schedule, **zero), x0, problem, 5, mesh)
  want, _, _ = helpers.run(ald.dsgd(0.1, schedule), x0, problem, 5, mesh)
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_isolated_worker_equals_local_optimizer():
  """Worker 3 has no edge: its trajectory is plain SGD with momentum."""
  n, dim = 5, helpers.flat_dim(helpers.SHAPES)
  topology = ald.Topology(
    n, [[(0, 1), (2, 4)], [(1, 2), (4, 0)]], allow_disconnected=True
  )
  rng = np.random.default_rng(4)
  problem = reference.Quadratic(rng, n, dim)
  x0 = rng.normal(size=(n, dim))
  tx = ald.aldsgd(0.1, S.full(topology), momentum=0.9, weight_decay=1e-3)
  got, _, _ = helpers.run(tx, x0, problem, 6, ald.worker_mesh(n))
  x, buf = x0[3].copy(), np.zeros(dim)
  for _ in range(6):  # heavy-ball SGD on worker 3's own problem, in NumPy
    g = problem.grad(np.broadcast_to(x, (n, dim)))[3] + 1e-3 * x
    buf = 0.9 * buf + g
    x = x - 0.1 * buf
  np.testing.assert_allclose(got[3], x, rtol=1e-5, atol=1e-6)


def test_empty_active_set_leaves_x_hat_unchanged():
  rng = np.random.default_rng(5)
  x_hat = rng.normal(size=(8, helpers.flat_dim(helpers.SHAPES)))
  tree = helpers.unflatten(x_hat, helpers.SHAPES)
  schedule = S.explicit(T.paper_graph(0), [set()])
  mesh = ald.worker_mesh(8)
  got = helpers.flatten(
    helpers.mix_once(ald.adjacent_leader(schedule), tree, rng.random(8), 0, mesh),
    helpers.SHAPES,
  )
  np.testing.assert_array_equal(got, np.asarray(x_hat, np.float32))


def test_value_is_an_alias_of_loss():
  """optax's value= (reduce_on_plateau, line searches) serves as the loss."""
  mesh = ald.worker_mesh(8)
  schedule = S.rotating([S.full(T.paper_graph(1)), S.full(T.paper_graph(0))])
  tx = ald.adjacent_leader(schedule, **COEFFICIENTS)
  x_hat = jnp.asarray(X_HAT, jnp.float32)
  losses = jnp.asarray(LOSSES, jnp.float32)

  def mix(params, loss, by):
    state = tx.init(params)
    updates, _ = tx.update(jnp.zeros_like(params), state, params, **{by: loss})
    return params + updates

  by_loss = jax.jit(ald.worker_map(lambda p, l: mix(p, l, "loss"), mesh))(x_hat, losses)
  by_value = jax.jit(ald.worker_map(lambda p, l: mix(p, l, "value"), mesh))(
    x_hat, losses
  )
  np.testing.assert_array_equal(by_value, by_loss)
  assert not np.allclose(by_loss, x_hat)

  def both(params, loss):
    state = tx.init(params)
    updates, _ = tx.update(
      jnp.zeros_like(params), state, params, loss=loss, value=-loss
    )
    return params + updates

  # loss= wins over value= (the ranking by -loss would pick other leaders).
  np.testing.assert_array_equal(
    jax.jit(ald.worker_map(both, mesh))(x_hat, losses), by_loss
  )
