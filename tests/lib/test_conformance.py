"""Every transform and named optimizer against every property (optax's alias_test style).

One row per transform in `ROWS`; each test below checks one property for every
row. Adding a transform is one line in `ROWS`. The properties:

* jit: stepping does not recompile (the step counter is traced, not static);
* state: its structure, shapes and dtypes stay what ``init`` made;
* dtypes: float32 and bfloat16 parameters keep their dtype through the step;
* layout: results under 2 and 4 workers per device equal one worker per device
  (bit for bit for the gossip family, whose exchanges are sums in a fixed order;
  to float32 rounding for all-reduce, whose mean sums in another order);
* inject_hyperparams: where a transform has numeric hyperparameters, wrapping it
  in ``optax.inject_hyperparams`` gives the same result as the plain one;
* extra arguments: inside ``optax.chain`` before a transform that reads
  ``value=`` (as ``optax.contrib.reduce_on_plateau`` and line searches do), every
  row runs with ``loss=`` and ``value=`` given, ignores what it does not use, and
  the value reaches the transform after it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_aldsgd as ald
from jax_aldsgd import compressors as C
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T
from tests import helpers, reference

NUM_WORKERS = 8
STEPS = 4
# Rotating graphs with a random (MATCHA) and a fixed schedule: conditional and
# always-on exchanges, graphs changing every step.
SCHEDULE = S.rotating([S.full(T.paper_graph(1)), S.matcha(T.paper_graph(0), 0.5)])


@dataclasses.dataclass(frozen=True)
class Row:
  """A transform under test.

  Attributes:
    name: test id.
    make: ``make(**hyperparams) -> GradientTransformation``.
    hyperparams: numeric keyword arguments of ``make``; empty when there are none
      (then the inject_hyperparams property does not apply).
    layout_tolerance: ``None`` for bitwise equality across worker layouts, else
      the absolute tolerance.
  """

  name: str
  make: Callable[..., optax.GradientTransformation]
  hyperparams: dict = dataclasses.field(default_factory=dict)
  layout_tolerance: float | None = None

  def build(self):
    return self.make(**self.hyperparams)


def _after_sgd(transform):
  return lambda: optax.chain(optax.sgd(0.05, momentum=0.5), transform())


def _sgd_then_adjacent_leader(c1, c2, p1, p2):
  # Named arguments: inject_hyperparams reads the factory's signature.
  return optax.chain(
    optax.sgd(0.05, momentum=0.5),
    ald.adjacent_leader(SCHEDULE, c1=c1, c2=c2, p1=p1, p2=p2),
  )


ROWS = [
  Row("gossip", _after_sgd(lambda: ald.gossip(SCHEDULE))),
  Row(
    "gossip_skip_nonfinite",
    _after_sgd(lambda: ald.gossip(SCHEDULE, skip_nonfinite=True)),
  ),
  Row(
    "adjacent_leader", _sgd_then_adjacent_leader, dict(c1=0.3, c2=0.1, p1=0.2, p2=0.2)
  ),
  Row("gossip_overlap", _after_sgd(lambda: ald.gossip(SCHEDULE, overlap=True))),
  Row("gossip_every_3", _after_sgd(lambda: ald.gossip(SCHEDULE, every=3))),
  # Push-sum's multiply-adds may be fused into FMAs differently per layout.
  Row(
    "gossip_delay_2",
    _after_sgd(lambda: ald.gossip(SCHEDULE, delay=2)),
    layout_tolerance=1e-6,
  ),
  Row(
    "adjacent_leader_overlap_every_2",
    _after_sgd(lambda: ald.adjacent_leader(SCHEDULE, overlap=True, every=2)),
  ),
  Row("allreduce", _after_sgd(ald.allreduce), layout_tolerance=1e-6),
  Row(
    "local_sgd",
    ald.local_sgd,
    dict(learning_rate=0.05, momentum=0.5, weight_decay=1e-3),
  ),
  Row(
    "dsgd",
    functools.partial(ald.dsgd, schedule=SCHEDULE),
    dict(learning_rate=0.05, momentum=0.5, weight_decay=1e-3),
  ),
  Row(
    "aldsgd",
    functools.partial(ald.aldsgd, schedule=SCHEDULE),
    dict(
      learning_rate=0.05,
      momentum=0.5,
      weight_decay=1e-3,
      c1=0.3,
      c2=0.1,
      p1=0.2,
      p2=0.2,
    ),
  ),
  Row(
    "aldsgd_choco",
    functools.partial(ald.aldsgd, schedule=SCHEDULE, compressor=C.qsgd(4, seed=1)),
    dict(learning_rate=0.05, consensus_lr=0.5, c1=0.3, c2=0.1, p1=0.2, p2=0.2),
  ),
]
IDS = [row.name for row in ROWS]


def _problem():
  rng = np.random.default_rng(7)
  dim = helpers.flat_dim(helpers.SHAPES)
  return reference.Quadratic(rng, NUM_WORKERS, dim), rng.normal(size=(NUM_WORKERS, dim))


@dataclasses.dataclass
class Result:
  params: dict
  init_state: object
  final_state: object
  cache_size: int
  last_loss: jax.Array


def _reads_value() -> optax.GradientTransformationExtraArgs:
  """Passes updates through and keeps the ``value=`` it was given."""

  def init_fn(params):
    del params
    return {"value": jnp.zeros([], jnp.float32)}

  def update_fn(updates, state, params=None, *, value, **extra_args):
    del params, extra_args, state
    return updates, {"value": jnp.asarray(value, jnp.float32)}

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _train(tx, *, per_device=1, dtype=jnp.float32, chained=False) -> Result:
  """``STEPS`` steps of the quadratic problem on ``NUM_WORKERS`` workers."""
  problem, x0 = _problem()
  if chained:
    tx = optax.chain(tx, _reads_value())
  mesh = ald.worker_mesh(NUM_WORKERS, workers_per_device=per_device)
  loss_fn = helpers.quadratic_loss_fn(helpers.SHAPES)

  def step(params, state, a, b):
    loss, grads = jax.value_and_grad(loss_fn)(params, a, b)
    updates, state = tx.update(grads, state, params, loss=loss, value=loss)
    return optax.apply_updates(params, updates), state, loss

  worker_map = functools.partial(
    ald.worker_map, mesh=mesh, workers_per_device=per_device
  )
  step = jax.jit(worker_map(step))
  params = jax.tree.map(
    lambda a: a.astype(dtype), helpers.unflatten(x0, helpers.SHAPES)
  )
  params = ald.shard_workers(params, mesh)
  state = jax.jit(worker_map(tx.init))(params)
  init_state = state
  a = ald.shard_workers(jnp.asarray(problem.a, jnp.float32), mesh)
  b = ald.shard_workers(jnp.asarray(problem.b, jnp.float32), mesh)
  for _ in range(STEPS):
    params, state, loss = step(params, state, a, b)
  return Result(params, init_state, state, step._cache_size(), loss)


@functools.cache
def _run(name: str, per_device: int = 1, dtype=jnp.float32, chained=False):
  row = next(r for r in ROWS if r.name == name)
  return _train(row.build(), per_device=per_device, dtype=dtype, chained=chained)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_jit_does_not_recompile_across_steps(row):
  assert _run(row.name).cache_size == 1


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_state_structure_shapes_and_dtypes_are_stable(row):
  result = _run(row.name)
  chex.assert_trees_all_equal_structs(result.init_state, result.final_state)
  chex.assert_trees_all_equal_shapes_and_dtypes(result.init_state, result.final_state)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_parameters_keep_their_dtype(row, dtype):
  params = _run(row.name, dtype=dtype).params
  for leaf in jax.tree.leaves(params):
    assert leaf.dtype == dtype
    assert np.all(np.isfinite(np.asarray(leaf, np.float32)))


@pytest.mark.parametrize("per_device", [2, 4])
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_results_equal_under_every_worker_layout(row, per_device):
  one = helpers.flatten(_run(row.name).params, helpers.SHAPES)
  many = helpers.flatten(_run(row.name, per_device=per_device).params, helpers.SHAPES)
  if row.layout_tolerance is None:
    np.testing.assert_array_equal(many, one)
  else:
    np.testing.assert_allclose(many, one, rtol=0, atol=row.layout_tolerance)


@pytest.mark.parametrize(
  "row", [r for r in ROWS if r.hyperparams], ids=[r.name for r in ROWS if r.hyperparams]
)
def test_inject_hyperparams_gives_the_same_result(row):
  injected = optax.inject_hyperparams(row.make)(**row.hyperparams)
  got = helpers.flatten(_train(injected).params, helpers.SHAPES)
  want = helpers.flatten(_run(row.name).params, helpers.SHAPES)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_extra_arguments_pass_through_chain(row):
  chained = _run(row.name, chained=True)
  np.testing.assert_array_equal(
    helpers.flatten(chained.params, helpers.SHAPES),
    helpers.flatten(_run(row.name).params, helpers.SHAPES),
  )
  np.testing.assert_array_equal(chained.final_state[-1]["value"], chained.last_loss)
  assert chained.cache_size == 1
