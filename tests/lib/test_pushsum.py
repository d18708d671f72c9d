"""gossip(delay=): push-sum with bounded staleness against the NumPy reference;
its mass conservation, and its refusals."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_aldsgd as ald
from jax_aldsgd import _pushsum
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T
from tests import helpers, reference

LR = 0.05


def _schedule(seed):
  """Rotating random graphs with a MATCHA and an alternating child."""
  rng = np.random.default_rng(seed)
  edges = [(i, j) for i in range(8) for j in range(i + 1, 8) if rng.random() < 0.4]
  edges += [(i, i + 1) for i in range(7)]  # connected
  graph = T.from_edges(8, sorted(set(edges)))
  return S.rotating([S.matcha(graph, 0.5, seed=seed), S.alternating(T.paper_graph(0))])


def _problem(seed, n=8):
  rng = np.random.default_rng(seed)
  dim = helpers.flat_dim(helpers.SHAPES)
  return reference.Quadratic(rng, n, dim), rng.normal(size=(n, dim))


@pytest.mark.parametrize("delay", [1, 3])
def test_delay_matches_push_sum_reference(delay):
  schedule = _schedule(delay)
  problem, x0 = _problem(delay)
  steps = 8
  got, _, _ = helpers.run(
    ald.dsgd(LR, schedule, delay=delay), x0, problem, steps, ald.worker_mesh(8)
  )
  want, *_ = reference.push_sum_run(x0, problem, steps, schedule, lr=LR, delay=delay)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _delayed_state_after(delay, steps, lr):
  schedule = _schedule(5)
  problem, x0 = _problem(5)
  mesh = ald.worker_mesh(8)
  tx = ald.dsgd(lr, schedule, delay=delay)
  step = helpers.make_step(tx, mesh)
  params = ald.shard_workers(helpers.unflatten(x0, helpers.SHAPES), mesh)
  state = jax.jit(ald.worker_map(tx.init, mesh))(params)
  a = ald.shard_workers(jnp.asarray(problem.a, jnp.float32), mesh)
  b = ald.shard_workers(jnp.asarray(problem.b, jnp.float32), mesh)
  for _ in range(steps):
    params, state, _ = step(params, state, a, b)
  return x0, helpers.flatten(params, helpers.SHAPES), state[-1]


def test_delay_conserves_mass_with_messages_in_flight():
  # No local updates: sum(z) + in flight stays sum(x0), sum(psi) + in flight = n.
  x0, x, state = _delayed_state_after(delay=2, steps=9, lr=0.0)
  psi = np.asarray(state.weight, np.float64)
  in_flight = np.asarray(state.in_flight, np.float64)  # (n, delay, d + 1)
  z = psi[:, None] * x
  assert in_flight.shape == (8, 2, x0.shape[1] + 1)
  assert np.abs(in_flight).max() > 0  # messages really are in flight
  # A row packs the leaves in pytree (sorted key) order, then psi.
  flying, start = {}, 0
  for name in sorted(helpers.SHAPES):
    size = int(np.prod(helpers.SHAPES[name]))
    flying[name] = in_flight[..., start : start + size].sum((0, 1))[None]
    start += size
  flying = helpers.flatten(flying, helpers.SHAPES)[0]
  np.testing.assert_allclose(z.sum(0) + flying, x0.sum(0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(psi.sum() + in_flight[..., -1].sum(), 8.0, rtol=1e-6)
  assert not np.allclose(psi, 1.0)  # the push-sum weights do move


def test_push_sum_with_no_delay_equals_gossip():
  schedule = _schedule(3)
  problem, x0 = _problem(3)
  pushed = optax.chain(
    ald.local_sgd(LR), _pushsum.delayed_gossip(schedule, "workers", 0)
  )
  got, _, _ = helpers.run(pushed, x0, problem, 6, ald.worker_mesh(8))
  want, _, _ = helpers.run(ald.dsgd(LR, schedule), x0, problem, 6, ald.worker_mesh(8))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "make,error,message",
  [
    (lambda s: ald.gossip(s, delay=-1), ValueError, "delay must be an integer >= 0"),
    (
      lambda s: ald.gossip(s, delay=2, overlap=True),
      ValueError,
      "delay=2.*cannot be combined with overlap",
    ),
    (
      lambda s: ald.gossip(s, delay=1, skip_nonfinite=True),
      ValueError,
      "cannot be combined with skip_nonfinite",
    ),
    (lambda s: ald.adjacent_leader(s, delay=1), TypeError, "delay"),
    (lambda s: ald.allreduce(delay=1), TypeError, "delay"),
  ],
)
def test_bad_inputs(make, error, message):
  with pytest.raises(error, match=message):
    make(S.full(T.ring(4)))


def test_delay_warns_about_negative_self_weights():
  # D-PSGD's alpha = 2/7 on paper graph 0 gives worker 4 (degree 5) the weight
  # 1 - 5 * 2/7 < 0, with which delayed push-sum can diverge.
  with pytest.warns(UserWarning, match=r"self-weights .* reach -0.429 < 0"):
    ald.gossip(S.full(T.paper_graph(0)), delay=2)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    ald.gossip(S.alternating(T.paper_graph(0)), delay=2)  # one matching a step
    graph = T.paper_graph(0)
    ald.gossip(S.full(graph, neighbor_weight=1 / (max(graph.degrees) + 1)), delay=2)
