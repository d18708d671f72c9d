"""Several workers per device: 64 workers on 8 devices against the NumPy reference,
the block plan's rounds and their HLO, and the layout errors.

That every transform gives the same result under 2 and 4 workers per device
as under one is a property of test_conformance.py's table.
"""

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
from tests import helpers, reference

COEFFICIENTS = dict(c1=0.3, c2=0.1, p1=0.2, p2=0.2)


def _train(tx_factory, x0, problem, steps, per_device):
  n = len(x0)
  mesh = ald.worker_mesh(n, workers_per_device=per_device)
  tx = tx_factory()
  loss_fn = helpers.quadratic_loss_fn(helpers.SHAPES)

  def step(params, state, a, b):
    loss, grads = jax.value_and_grad(loss_fn)(params, a, b)
    updates, state = tx.update(grads, state, params, loss=loss)
    return optax.apply_updates(params, updates), state, loss

  step = jax.jit(ald.worker_map(step, mesh, workers_per_device=per_device))
  params = ald.shard_workers(helpers.unflatten(x0, helpers.SHAPES), mesh)
  state = jax.jit(ald.worker_map(tx.init, mesh, workers_per_device=per_device))(params)
  a = ald.shard_workers(jnp.asarray(problem.a, jnp.float32), mesh)
  b = ald.shard_workers(jnp.asarray(problem.b, jnp.float32), mesh)
  for _ in range(steps):
    params, state, _ = step(params, state, a, b)
  return helpers.flatten(params, helpers.SHAPES)


def test_64_workers_on_8_devices_match_the_reference():
  rng = np.random.default_rng(1)
  n, dim = 64, helpers.flat_dim(helpers.SHAPES)
  problem = reference.Quadratic(rng, n, dim)
  x0 = rng.normal(size=(n, dim))
  schedule = S.rotating([S.matcha(T.exponential(n), 0.4, seed=1), S.full(T.ring(n))])
  got = _train(
    lambda: ald.aldsgd(0.05, schedule, **COEFFICIENTS), x0, problem, 4, per_device=8
  )
  want = helpers.reference_run(x0, problem, 4, schedule, lr=0.05, leader=COEFFICIENTS)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("per_device", [2, 4, 8])
def test_block_plan_rounds_are_permutations(per_device):
  schedule = S.rotating([S.full(T.exponential(64)), S.full(T.ring(64))])
  devices = 64 // per_device
  plans = _plan.block_plan(schedule, devices, per_device)
  for s, (local, rounds) in enumerate(plans):
    partners = schedule.slot_partners[s]
    delivered = np.where(local >= 0, local, -1).astype(int)
    found = {}
    for plan in rounds:
      sources = [a for a, _ in plan.pairs]
      destinations = [b for _, b in plan.pairs]
      assert len(set(sources)) == len(sources)  # one message out per device
      assert len(set(destinations)) == len(destinations)  # one in per device
      for source, destination in plan.pairs:
        for row in range(per_device):
          position = plan.receive_rows[destination, row]
          if position >= 0:
            found[destination * per_device + row] = (
              source * per_device + plan.send_rows[source, position]
            )
    for worker, partner in enumerate(partners):
      device, row = divmod(worker, per_device)
      if partner < 0:
        assert worker not in found and delivered[device, row] < 0
      elif partner // per_device == device:
        assert delivered[device, row] == partner % per_device
      else:
        assert found[worker] == partner


def test_hlo_rounds_sit_in_a_switch():
  schedule = S.rotating([S.full(T.paper_graph(11)), S.full(T.paper_graph(10))])
  mesh = ald.worker_mesh(16, workers_per_device=2)
  tx = ald.aldsgd(0.1, schedule)

  def step(params, state, x):
    loss, grads = jax.value_and_grad(lambda p: jnp.mean((x @ p) ** 2))(params)
    updates, state = tx.update(grads, state, params, loss=loss)
    return optax.apply_updates(params, updates), state

  params = jnp.ones((16, 5))
  state = jax.jit(ald.worker_map(tx.init, mesh, workers_per_device=2))(params)
  hlo = (
    jax.jit(ald.worker_map(step, mesh, workers_per_device=2))
    .lower(params, state, jnp.ones((16, 4, 5)))
    .compile()
    .as_text()
  )
  # Two activation patterns (one per graph): a switch per message (the ranks:
  # loss and health, 2 entries per worker; then the parameters, 5), and each
  # slot's rounds in the branch of its graph only.
  rounds = sum(len(r) for _, r in _plan.block_plan(schedule, 8, 2))
  permutes = re.findall(r"= f32\[\d+,(\d+)\]\S* collective-permute\(", hlo)
  assert sorted(permutes) == ["2"] * rounds + ["5"] * rounds
  (group,) = _plan.exchange_plan(schedule)
  assert len(group.patterns) == 2
  assert (
    len(re.findall(r"conditional\([^\n]*branch_computations=\{[^,}]*,[^,}]*\}", hlo))
    >= 1
  )
  assert "all-gather" not in hlo and "all-reduce" not in hlo


def test_layout_errors():
  with pytest.raises(ValueError, match="not divisible by workers_per_device=3"):
    ald.worker_mesh(16, workers_per_device=3)
  with pytest.raises(ValueError, match="64 workers need 32 devices \\(2 per device\\)"):
    ald.worker_mesh(64, workers_per_device=2)
  mesh = ald.worker_mesh(16, workers_per_device=2)
  tx = ald.gossip(S.full(T.paper_graph(0)))  # 8 workers
  f = jax.jit(
    ald.worker_map(lambda p: tx.update(p, tx.init(p), p)[0], mesh, workers_per_device=2)
  )
  with pytest.raises(ValueError, match="8 devices x 2 workers per device = 16"):
    f(jnp.ones((16, 3)))
