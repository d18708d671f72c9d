"""docs/adding_a_method.md: its worked example runs and is the method it claims."""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_aldsgd as ald
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T
from tests import helpers

GUIDE = pathlib.Path(__file__).parents[2] / "docs" / "adding_a_method.md"


def _guide_namespace():
  blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
  assert len(blocks) == 2, "the guide's two Python blocks: the method, its use"
  namespace: dict = {}
  for block in blocks:
    exec(compile(block, str(GUIDE), "exec"), namespace)
  return namespace


@pytest.mark.parametrize("per_device", [1, 2])
def test_lazy_gossip_is_damped_gossip(per_device):
  lazy_gossip = _guide_namespace()["lazy_gossip"]
  beta = 0.5
  schedule = S.rotating([S.matcha(T.paper_graph(0), 0.5), S.full(T.paper_graph(1))])
  tx = lazy_gossip(schedule, beta)
  mesh = ald.worker_mesh(8, workers_per_device=per_device)
  mapped = lambda f: jax.jit(ald.worker_map(f, mesh, workers_per_device=per_device))

  def step_fn(x, state):
    updates, state = tx.update(jnp.zeros_like(x), state, x)
    return optax.apply_updates(x, updates), state

  x = jax.random.normal(jax.random.key(1), (8, 3))
  state = mapped(tx.init)(x)
  want = np.asarray(x, np.float64)
  step = mapped(step_fn)
  for k in range(6):
    x, state = step(x, state)
    w = schedule.mixing_matrix(k)
    want = (np.eye(8) + beta * (w - np.eye(8))) @ want  # I - beta alpha L
    np.testing.assert_allclose(np.asarray(x), want, rtol=1e-5, atol=1e-6)


def test_lazy_gossip_traffic_is_what_the_hlo_sends():
  from experiments import benchmark

  lazy_gossip = _guide_namespace()["lazy_gossip"]
  schedule = S.alternating(T.paper_graph(0))
  exchange = lazy_gossip(schedule, 0.5)
  params = {name: jnp.ones(shape) for name, shape in helpers.SHAPES.items()}
  traffic = ald.traffic(exchange, params)
  assert traffic.parts == (ald.gossip_message_bytes(params),)
  hlo = helpers.compiled_train_step_hlo(optax.chain(optax.sgd(0.1), exchange))
  benchmark.check_bytes_against_hlo(schedule, traffic.parts, hlo, range(4), 8)
