"""Named optimizers: learning-rate schedules, momentum, inject_hyperparams, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_aldsgd as ald
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T
from tests import helpers, reference

COEFFICIENTS = dict(c1=0.3, c2=0.1, p1=0.2, p2=0.2)
SCHEDULE = S.rotating([S.full(T.paper_graph(1)), S.matcha(T.paper_graph(0), 0.5)])


def _reference(x0, problem, steps, lrs, *, momentum=0.0, weight_decay=0.0):
  """NumPy AL-DSGD with a per-step learning rate and heavy-ball momentum."""
  x = np.array(x0, np.float64)
  buf = np.zeros_like(x)
  for k in range(steps):
    losses = problem.loss(x)
    g = problem.grad(x) + weight_decay * x
    buf = momentum * buf + g
    x_hat = x - lrs[k] * buf
    matchings, active, weights = reference.schedule_step_inputs(SCHEDULE, k)
    x = reference.adjacent_leader(
      x_hat, losses, matchings, active, weights, **COEFFICIENTS
    )
  return x


def _problem(seed):
  rng = np.random.default_rng(seed)
  dim = helpers.flat_dim(helpers.SHAPES)
  return reference.Quadratic(rng, 8, dim), rng.normal(size=(8, dim))


def test_learning_rate_schedule_and_momentum():
  problem, x0 = _problem(0)
  lr = optax.piecewise_constant_schedule(0.2, {3: 0.1, 6: 0.1})
  tx = ald.aldsgd(lr, SCHEDULE, momentum=0.5, weight_decay=1e-3, **COEFFICIENTS)
  got, _, _ = helpers.run(tx, x0, problem, 8, ald.worker_mesh(8))
  want = _reference(
    x0, problem, 8, [float(lr(k)) for k in range(8)], momentum=0.5, weight_decay=1e-3
  )
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_inject_hyperparams_changes_learning_rate_mid_run():
  problem, x0 = _problem(1)
  tx = optax.inject_hyperparams(ald.aldsgd, static_args=("schedule",))(
    learning_rate=0.2, schedule=SCHEDULE, **COEFFICIENTS
  )
  mesh = ald.worker_mesh(8)
  step = helpers.make_step(tx, mesh)
  params = ald.shard_workers(helpers.unflatten(x0, helpers.SHAPES), mesh)
  state = jax.jit(ald.worker_map(tx.init, mesh))(params)
  a = ald.shard_workers(jnp.asarray(problem.a, jnp.float32), mesh)
  b = ald.shard_workers(jnp.asarray(problem.b, jnp.float32), mesh)
  for k in range(6):
    if k == 3:
      state.hyperparams["learning_rate"] = jnp.full_like(
        state.hyperparams["learning_rate"], 0.05
      )
    params, state, _ = step(params, state, a, b)
  want = _reference(x0, problem, 6, [0.2] * 3 + [0.05] * 3)
  np.testing.assert_allclose(
    helpers.flatten(params, helpers.SHAPES), want, rtol=1e-4, atol=1e-5
  )
  assert step._cache_size() == 1


@pytest.mark.parametrize(
  "kwargs,error,message",
  [
    (dict(c1=0.8, c2=0.3), ValueError, "c1 \\+ c2 must be <= 1.*c1=0.8 \\+ c2=0.3"),
    (dict(p1=0.6, p2=0.6), ValueError, "p1 \\+ p2 must be <= 1"),
    (dict(c1=-0.1), ValueError, "c1 must be in \\[0.0, 1.0\\], got -0.1"),
    (dict(p2=-1.0), ValueError, "p2 must be in"),
    (dict(c2=float("nan")), ValueError, "c2 must be a finite real number"),
    (dict(pull_every=0), ValueError, "pull_every must be an integer >= 1"),
    (dict(pull_every=1.5), ValueError, "pull_every must be an integer >= 1"),
    (dict(c1="0.3"), TypeError, "c1 must be a scalar number"),
    (dict(momentum=1.0), ValueError, "momentum must be in \\[0.0, 1.0\\)"),
    (dict(weight_decay=-5e-4), ValueError, "weight_decay must be in"),
  ],
)
def test_bad_hyperparameters(kwargs, error, message):
  with pytest.raises(error, match=message):
    ald.aldsgd(0.1, SCHEDULE, **kwargs)


def test_bad_learning_rate():
  with pytest.raises(ValueError, match="learning_rate must be a finite"):
    ald.dsgd(float("inf"), SCHEDULE)
  with pytest.raises(ValueError, match="learning_rate must be in"):
    ald.dsgd(-0.1, SCHEDULE)
