"""A diverging worker: never a leader or max-degree target; skip_nonfinite isolates it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_aldsgd as ald
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T
from tests import helpers, reference

COEFFICIENTS = dict(c1=0.3, c2=0.1, p1=0.2, p2=0.2)
SCHEDULE = S.full(T.paper_graph(0))


def _case(seed):
  rng = np.random.default_rng(seed)
  x_hat = rng.normal(size=(8, helpers.flat_dim(helpers.SHAPES)))
  losses = rng.random(8) + 0.5
  return x_hat, losses


def test_nan_loss_is_never_the_leader():
  """Worker 1 (degree 5, lowest loss) would lead everyone; its loss is NaN."""
  x_hat, losses = _case(0)
  losses[1] = np.nan
  healthy = np.isfinite(losses)
  got = helpers.flatten(
    helpers.mix_once(
      ald.adjacent_leader(SCHEDULE, **COEFFICIENTS),
      helpers.unflatten(x_hat, helpers.SHAPES),
      losses,
      0,
      ald.worker_mesh(8),
    ),
    helpers.SHAPES,
  )
  matchings, active, weights = reference.schedule_step_inputs(SCHEDULE, 0)
  want = reference.adjacent_leader(
    x_hat, losses, matchings, active, weights, healthy=healthy, **COEFFICIENTS
  )
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Worker 1 has the highest degree: with it excluded the max-degree choice moves.
  as_if_healthy = reference.adjacent_leader(
    x_hat, np.nan_to_num(losses, nan=9.0), matchings, active, weights, **COEFFICIENTS
  )
  assert np.abs(got - as_if_healthy).max() > 1e-3
  assert np.isfinite(got).all()


@pytest.mark.parametrize("transform", ["gossip", "adjacent_leader"])
def test_nan_parameters_are_skipped_by_neighbors(transform):
  x_hat, losses = _case(1)
  x_hat[5, 2] = np.nan  # one entry of worker 5's parameters
  healthy = np.isfinite(x_hat).all(1)
  mesh = ald.worker_mesh(8)
  tree = helpers.unflatten(x_hat, helpers.SHAPES)
  matchings, active, weights = reference.schedule_step_inputs(SCHEDULE, 0)
  if transform == "gossip":
    make = lambda **kw: ald.gossip(SCHEDULE, **kw)
    want = reference.gossip(x_hat, matchings, active, weights, skip=~healthy)
  else:
    make = lambda **kw: ald.adjacent_leader(SCHEDULE, **COEFFICIENTS, **kw)
    want = reference.adjacent_leader(
      x_hat,
      losses,
      matchings,
      active,
      weights,
      healthy=healthy,
      skip_unhealthy=True,
      **COEFFICIENTS,
    )
  got = helpers.flatten(
    helpers.mix_once(make(skip_nonfinite=True), tree, losses, 0, mesh), helpers.SHAPES
  )
  others = np.arange(8) != 5
  assert np.isfinite(got[others]).all()
  np.testing.assert_allclose(got[others], want[others], rtol=1e-5, atol=1e-5)
  # Without the option the reference behaviour spreads NaN to 5's neighbors.
  plain = helpers.flatten(
    helpers.mix_once(make(), tree, losses, 0, mesh), helpers.SHAPES
  )
  neighbors = set(SCHEDULE.slot_partners[:, 5]) - {-1}
  assert all(np.isnan(plain[j]).any() for j in neighbors)


def test_one_diverged_worker_of_eight_mid_training():
  """Worker 3 becomes NaN at step 5; the other 7 stay finite and keep learning."""
  rng = np.random.default_rng(2)
  n, dim = 8, helpers.flat_dim(helpers.SHAPES)
  problem = reference.Quadratic(rng, n, dim)
  schedule = S.rotating([S.full(T.paper_graph(1)), S.matcha(T.paper_graph(0), 0.5)])
  tx = ald.aldsgd(0.05, schedule, skip_nonfinite=True)
  mesh = ald.worker_mesh(n)
  step = helpers.make_step(tx, mesh)
  params = ald.shard_workers(
    helpers.unflatten(rng.normal(size=(n, dim)), helpers.SHAPES), mesh
  )
  state = jax.jit(ald.worker_map(tx.init, mesh))(params)
  a = ald.shard_workers(jnp.asarray(problem.a, jnp.float32), mesh)
  b = ald.shard_workers(jnp.asarray(problem.b, jnp.float32), mesh)
  losses = []
  for k in range(40):
    if k == 5:
      params = jax.tree.map(lambda p: p.at[3].set(jnp.nan), params)
    params, state, loss = step(params, state, a, b)
    losses.append(np.asarray(loss))
  losses = np.array(losses)
  others = np.arange(n) != 3
  assert np.isnan(losses[6:, 3]).all()
  assert np.isfinite(losses[:, others]).all()
  flat = helpers.flatten(params, helpers.SHAPES)
  assert np.isfinite(flat[others]).all()
  assert (losses[-1, others] < losses[6, others]).all()  # still training
