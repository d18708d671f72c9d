"""Every transform, wrapper and named optimizer against every property (optax's
alias_test style).

One row per transform in `ROWS`; each test below checks one property for every
row. Adding a transform is one row. The rows:

* `gossip` and `adjacent_leader` on every schedule kind (full, alternating,
  matcha, explicit, rotating), plain and compressed with top-k (CHOCO-SGD: on a
  full schedule compressed gossip keeps its two-buffer state, on the others
  public copies per slot);
* with a random compressor (random-k): gossip on a full and a rotating
  schedule (both state forms), AL-DSGD on the rotating one (a random
  compressor's rows cost twice a plain row's compile time);
* push-sum (``delay``, also with ``every``), ``skip_nonfinite``, local steps and
  adapt-while-combine both as wrappers (`every_steps`, `adapt_while_combine`)
  and as the factories' ``every=`` and ``overlap=`` keywords, the all-reduce
  (also with ``every=``), gossip on the hand-built directed schedule ``Shifts``
  (tests/lib/test_directed.py);
* the heterogeneous-data methods (`quasi_global_momentum`, `d2_gossip`,
  `tracking_gossip`) and the named optimizers.

The properties (all for every row, except that a transform's rows on the
alternating, matcha and explicit kinds, ``schedule_variant``, skip the two that
do not depend on the schedule, bfloat16 and init inside, which its full and
rotating rows check):

* jit: stepping does not recompile (the step counter is traced, not static);
* state: its structure, shapes and dtypes stay what ``init`` made;
* dtypes: float32 and bfloat16 parameters keep their dtype through the step;
* layout: results under 2 workers per device equal one worker per device (bit
  for bit for the gossip family, whose exchanges are sums in a fixed order; to
  float32 rounding for the all-reduce, whose mean sums in another order, and
  for push-sum and compressed gossip's two-buffer form, whose multiply-adds XLA
  may fuse differently). 4 workers per device only for the rows marked
  ``four_per_device`` (one or two of each family), to keep the table's time in
  check;
* init inside: ``init`` called inside the same mapped function as the first
  ``update`` (as a trainer that builds its state in its first step) gives the
  same parameters and state, to float32 rounding, as ``init`` in its own
  ``worker_map``;
* inject_hyperparams: where a row names numeric hyperparameters, wrapping its
  factory in ``optax.inject_hyperparams`` gives the same result;
* extra arguments: every run chains the row before a transform that reads
  ``value=`` (as ``optax.contrib.reduce_on_plateau`` and line searches do) and
  passes ``loss=`` and ``value=``: each row ignores what it does not use, and
  the value reaches the transform after it.

Every run is ``STEPS`` steps of a quadratic problem on 8 workers. Compiling
dominates the table's time (a row compiles 2 to 5 programs), so the schedules
use the ring's 2 matchings.
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
from tests.lib.test_directed import Shifts

# MATCHA's neighbor weight on the ring gives the rotating schedule negative
# self-weights and lambda_min(W) < -1/3, with which push-sum and D² (and,
# below -0.92, QG-DSGDm) warn that they may diverge; in 4 steps they stay finite.
pytestmark = [
  pytest.mark.filterwarnings(
    r"ignore:gossip\(delay=\.\.\.\) on a schedule whose self-weights:UserWarning"
  ),
  pytest.mark.filterwarnings("ignore:d2 on a schedule whose mixing matrix:UserWarning"),
  pytest.mark.filterwarnings(
    r"ignore:quasi_global_momentum\(momentum=.*\) on a schedule:UserWarning"
  ),
  pytest.mark.filterwarnings("ignore:tracking_gossip on a schedule:UserWarning"),
]

NUM_WORKERS = 8
STEPS = 4

# The ring's 2 matchings: few slots and activation patterns keep each row's
# compile short.
RING = T.ring(NUM_WORKERS)
SCHEDULES = {
  "full": S.full(RING),
  "alternating": S.alternating(RING),
  "matcha": S.matcha(RING, 0.5, seed=1),
  "explicit": S.explicit(RING, [{0, 1}, set(), {1}]),
  # A fixed and a random child: always-on and conditional exchanges, and the
  # schedule changing every step.
  "rotating": S.rotating([S.full(RING), S.matcha(RING, 0.5, seed=2)]),
}
# The kinds on which the properties that do not depend on the schedule run:
# both of compressed gossip's state forms, and a random schedule.
STATE_KINDS = ("full", "rotating")
ROTATING = SCHEDULES["rotating"]
COMPRESSORS = {"top_k": C.top_k(0.3), "random_k": C.random_k(0.3, seed=3)}
LEADER = dict(c1=0.3, c2=0.1, p1=0.2, p2=0.2)


@dataclasses.dataclass(frozen=True)
class Row:
  """A transform under test.

  Attributes:
    name: test id.
    make: ``make(**hyperparams) -> GradientTransformation``.
    hyperparams: numeric keyword arguments of ``make``; empty when there are none
      (then the inject_hyperparams property does not apply).
    tolerance: ``None`` for bitwise equality across worker layouts, else the
      absolute tolerance.
    four_per_device: also compare 4 workers per device with one.
    schedule_variant: one of a transform's rows on the other schedule kinds:
      only the properties that depend on the schedule run (jit, state,
      layout, extra arguments), not dtypes and init inside (`STATE_KINDS`).
    named: a named optimizer, ``optax.chain`` of `local_sgd` (or an optax
      step) and an exchange that has rows of its own: only the properties of
      the chain run (jit, state, extra arguments, inject_hyperparams), not
      the exchange's (layouts, dtypes, init inside), checked on its rows.
  """

  name: str
  make: Callable[..., optax.GradientTransformation]
  hyperparams: dict = dataclasses.field(default_factory=dict)
  tolerance: float | None = None
  four_per_device: bool = False
  schedule_variant: bool = False
  named: bool = False

  def build(self):
    return self.make(**self.hyperparams)


def _after_sgd(make):
  return lambda: optax.chain(optax.sgd(0.05, momentum=0.5), make())


def _sgd_then_adjacent_leader(c1, c2, p1, p2):
  # Named arguments: inject_hyperparams reads the factory's signature.
  return optax.chain(
    optax.sgd(0.05, momentum=0.5),
    ald.adjacent_leader(ROTATING, c1=c1, c2=c2, p1=p1, p2=p2),
  )


def _per_kind(
  name, make, kinds=tuple(SCHEDULES), four_per_device=(), full_tolerance=None
):
  """Rows ``name_kind``: ``make(schedule)`` after SGD, one per schedule kind."""
  return [
    Row(
      f"{name}_{kind}",
      _after_sgd(lambda s=SCHEDULES[kind]: make(s)),
      tolerance=full_tolerance if kind == "full" else None,
      four_per_device=kind in four_per_device,
      schedule_variant=kind not in STATE_KINDS,
    )
    for kind in kinds
  ]


def _compressed(exchange, compressor):
  return lambda s: exchange(s, compressor=compressor, consensus_lr=0.5)


ROWS = [
  *_per_kind("gossip", ald.gossip, four_per_device=("rotating",)),
  *_per_kind(
    "adjacent_leader",
    lambda s: ald.adjacent_leader(s, **LEADER),
    kinds=("full", "alternating", "matcha", "explicit"),
  ),
  Row(
    "adjacent_leader_rotating",
    _sgd_then_adjacent_leader,
    LEADER,
    four_per_device=True,
  ),
  # On a full schedule, compressed gossip's two-buffer state: XLA contracts its
  # multiply-adds differently per layout.
  *_per_kind(
    "gossip_top_k",
    _compressed(ald.gossip, COMPRESSORS["top_k"]),
    four_per_device=("full",),
    full_tolerance=1e-6,
  ),
  *_per_kind(
    "adjacent_leader_top_k",
    _compressed(ald.adjacent_leader, COMPRESSORS["top_k"]),
    four_per_device=("rotating",),
  ),
  # A random compressor: gossip's two state forms (full, public copies per
  # slot), and AL-DSGD on a random schedule; top-k covers every kind.
  *_per_kind(
    "gossip_random_k",
    _compressed(ald.gossip, COMPRESSORS["random_k"]),
    kinds=STATE_KINDS,
    full_tolerance=1e-6,
  ),
  *_per_kind(
    "adjacent_leader_random_k",
    _compressed(ald.adjacent_leader, COMPRESSORS["random_k"]),
    kinds=("rotating",),
  ),
  Row(
    "gossip_skip_nonfinite",
    _after_sgd(lambda: ald.gossip(ROTATING, skip_nonfinite=True)),
  ),
  Row(
    "adjacent_leader_skip_nonfinite",
    _after_sgd(lambda: ald.adjacent_leader(ROTATING, skip_nonfinite=True)),
  ),
  # Push-sum: its multiply-adds may be fused into FMAs differently per layout.
  Row(
    "gossip_delay_2",
    _after_sgd(lambda: ald.gossip(ROTATING, delay=2)),
    tolerance=1e-6,
    four_per_device=True,
  ),
  Row(
    "gossip_delay_2_every_2",
    _after_sgd(lambda: ald.gossip(ROTATING, delay=2, every=2)),
    tolerance=1e-6,
  ),
  Row(
    "gossip_directed",
    _after_sgd(lambda: ald.gossip(Shifts())),
    four_per_device=True,
  ),
  Row(
    "gossip_directed_delay_1",
    _after_sgd(lambda: ald.gossip(Shifts(), delay=1)),
    tolerance=1e-6,
  ),
  # The wrappers, and the keywords that stand for them.
  Row(
    "every_steps_gossip",
    _after_sgd(lambda: ald.every_steps(ald.gossip(ROTATING), 3)),
  ),
  Row("gossip_every_3", _after_sgd(lambda: ald.gossip(ROTATING, every=3))),
  Row(
    "adapt_while_combine_adjacent_leader",
    _after_sgd(lambda: ald.adapt_while_combine(ald.adjacent_leader(ROTATING))),
  ),
  Row("gossip_overlap", _after_sgd(lambda: ald.gossip(ROTATING, overlap=True))),
  Row(
    "adjacent_leader_overlap_every_2",
    _after_sgd(lambda: ald.adjacent_leader(ROTATING, overlap=True, every=2)),
    four_per_device=True,
  ),
  Row(
    "every_steps_adapt_while_combine_adjacent_leader_top_k",
    _after_sgd(
      lambda: ald.every_steps(
        ald.adapt_while_combine(
          _compressed(ald.adjacent_leader, COMPRESSORS["top_k"])(ROTATING)
        ),
        2,
      )
    ),
  ),
  # The all-reduce's mean sums in another order per layout.
  Row("allreduce", _after_sgd(ald.allreduce), tolerance=1e-6, four_per_device=True),
  Row(
    "allreduce_every_2",
    _after_sgd(lambda: ald.allreduce(every=2)),
    tolerance=1e-6,
  ),
  # The heterogeneous-data methods (each takes the gradient and makes the
  # local step itself).
  Row(
    "quasi_global_momentum",
    functools.partial(ald.quasi_global_momentum, schedule=ROTATING),
    dict(learning_rate=0.05, momentum=0.9),
  ),
  Row("d2_gossip", _after_sgd(lambda: ald.d2_gossip(ROTATING))),
  Row(
    "tracking_gossip",
    functools.partial(ald.tracking_gossip, schedule=ROTATING),
    dict(learning_rate=0.05, momentum=0.5),
  ),
  # The named optimizers.
  Row(
    "local_sgd",
    ald.local_sgd,
    dict(learning_rate=0.05, momentum=0.5, weight_decay=1e-3),
  ),
  Row(
    "dsgd",
    functools.partial(ald.dsgd, schedule=ROTATING),
    dict(learning_rate=0.05, momentum=0.5, weight_decay=1e-3),
    named=True,
  ),
  Row(
    "aldsgd",
    functools.partial(ald.aldsgd, schedule=ROTATING),
    dict(learning_rate=0.05, momentum=0.5, weight_decay=1e-3, **LEADER),
    named=True,
  ),
  Row(
    "qg_dsgdm",
    functools.partial(ald.qg_dsgdm, schedule=ROTATING),
    dict(learning_rate=0.05, momentum=0.9, weight_decay=1e-3),
    named=True,
  ),
  Row(
    "d2",
    functools.partial(ald.d2, schedule=ROTATING),
    dict(learning_rate=0.05, weight_decay=1e-3),
    named=True,
  ),
  Row(
    "gradient_tracking",
    functools.partial(ald.gradient_tracking, schedule=ROTATING),
    dict(learning_rate=0.05, momentum=0.5, weight_decay=1e-3),
    named=True,
  ),
  Row(
    "aldsgd_top_k",
    functools.partial(ald.aldsgd, schedule=ROTATING, compressor=COMPRESSORS["top_k"]),
    dict(learning_rate=0.05, consensus_lr=0.5, **LEADER),
    named=True,
  ),
]
IDS = [row.name for row in ROWS]
ROWS_BY_NAME = {row.name: row for row in ROWS}
assert len(ROWS_BY_NAME) == len(ROWS), "row names must be unique"


def _reads_value() -> optax.GradientTransformationExtraArgs:
  """Passes updates through and keeps the ``value=`` it was given."""

  def init_fn(params):
    del params
    return {"value": jnp.zeros([], jnp.float32)}

  def update_fn(updates, state, params=None, *, value, **extra_args):
    del params, extra_args, state
    return updates, {"value": jnp.asarray(value, jnp.float32)}

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _step_fn(tx):
  """One worker's training step on the quadratic problem, ``loss=`` and ``value=``."""
  loss_fn = helpers.quadratic_loss_fn(helpers.SHAPES)

  def step(params, state, a, b):
    loss, grads = jax.value_and_grad(loss_fn)(params, a, b)
    updates, state = tx.update(grads, state, params, loss=loss, value=loss)
    return optax.apply_updates(params, updates), state, loss

  return step


@dataclasses.dataclass
class Problem:
  params: dict
  a: jax.Array
  b: jax.Array
  mapped: Callable  # fn -> jitted worker_map(fn) on this layout


def _problem(per_device=1, dtype=jnp.float32) -> Problem:
  rng = np.random.default_rng(7)
  dim = helpers.flat_dim(helpers.SHAPES)
  quadratic = reference.Quadratic(rng, NUM_WORKERS, dim)
  x0 = rng.normal(size=(NUM_WORKERS, dim))
  mesh = ald.worker_mesh(NUM_WORKERS, workers_per_device=per_device)
  params = jax.tree.map(
    lambda a: a.astype(dtype), helpers.unflatten(x0, helpers.SHAPES)
  )
  return Problem(
    params=ald.shard_workers(params, mesh),
    a=ald.shard_workers(jnp.asarray(quadratic.a, jnp.float32), mesh),
    b=ald.shard_workers(jnp.asarray(quadratic.b, jnp.float32), mesh),
    mapped=lambda fn: jax.jit(ald.worker_map(fn, mesh, workers_per_device=per_device)),
  )


@dataclasses.dataclass
class Result:
  params: dict
  init_state: object
  first_step: tuple  # (params, state) after the first step
  final_state: object
  cache_size: int
  last_loss: jax.Array


def _train(tx, *, per_device=1, dtype=jnp.float32) -> Result:
  """``STEPS`` steps of ``optax.chain(tx, _reads_value())``."""
  tx = optax.chain(tx, _reads_value())
  problem = _problem(per_device, dtype)
  step = problem.mapped(_step_fn(tx))
  params = problem.params
  state = init_state = problem.mapped(tx.init)(params)
  first_step = None
  for _ in range(STEPS):
    params, state, loss = step(params, state, problem.a, problem.b)
    if first_step is None:
      first_step = (params, state)
  return Result(params, init_state, first_step, state, step._cache_size(), loss)


@functools.cache
def _cached_run(name: str, per_device: int, dtype: str) -> Result:
  row = ROWS_BY_NAME[name]
  return _train(row.build(), per_device=per_device, dtype=jnp.dtype(dtype))


def _run(row: Row, per_device: int = 1, dtype: str = "float32") -> Result:
  return _cached_run(row.name, per_device, dtype)


def _flat(params):
  return helpers.flatten(params, helpers.SHAPES)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_jit_does_not_recompile_across_steps(row):
  assert _run(row).cache_size == 1


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_state_structure_shapes_and_dtypes_are_stable(row):
  result = _run(row)
  chex.assert_trees_all_equal_structs(result.init_state, result.final_state)
  chex.assert_trees_all_equal_shapes_and_dtypes(result.init_state, result.final_state)


DTYPES = [(row, "float32") for row in ROWS] + [
  (row, "bfloat16") for row in ROWS if not (row.schedule_variant or row.named)
]


@pytest.mark.parametrize(
  "row, dtype", DTYPES, ids=[f"{row.name}-{dtype}" for row, dtype in DTYPES]
)
def test_parameters_keep_their_dtype(row, dtype):
  params = _run(row, dtype=dtype).params
  for leaf in jax.tree.leaves(params):
    assert leaf.dtype == jnp.dtype(dtype)
    assert np.all(np.isfinite(np.asarray(leaf, np.float32)))


LAYOUTS = [(row, 2) for row in ROWS if not row.named] + [
  (row, 4) for row in ROWS if row.four_per_device
]


@pytest.mark.parametrize(
  "row, per_device", LAYOUTS, ids=[f"{row.name}-{p}" for row, p in LAYOUTS]
)
def test_results_equal_under_several_workers_per_device(row, per_device):
  one = _flat(_run(row).params)
  many = _flat(_run(row, per_device=per_device).params)
  if row.tolerance is None:
    np.testing.assert_array_equal(many, one)
  else:
    np.testing.assert_allclose(many, one, rtol=0, atol=row.tolerance)


# `every_steps`' cond returns the inner state unchanged on the steps in
# between and changed (varying over the workers) on communication steps; with
# ``init`` inside the mapped function the state starts invariant, so the
# compressed (per-slot) and push-sum rows under `every` check that the cond's
# operand is made varying first (`_workers.shared_cond`).
INIT_INSIDE = [
  pytest.param(row, id=row.name)
  for row in ROWS
  if not (row.schedule_variant or row.named)
]


@pytest.mark.parametrize("row", INIT_INSIDE)
def test_init_inside_the_mapped_function_gives_the_same_step(row):
  tx = optax.chain(row.build(), _reads_value())
  problem = _problem()
  step = _step_fn(tx)

  def init_and_step(params, a, b):
    return step(params, tx.init(params), a, b)[:2]

  got = problem.mapped(init_and_step)(problem.params, problem.a, problem.b)
  want = _run(row).first_step
  # To float32 rounding: with the initial state a constant of the program, XLA
  # may simplify and fuse the first step's arithmetic differently.
  chex.assert_trees_all_close(got, want, rtol=0, atol=1e-6)


INJECTED = [row for row in ROWS if row.hyperparams]


@pytest.mark.parametrize("row", INJECTED, ids=[row.name for row in INJECTED])
def test_inject_hyperparams_gives_the_same_result(row):
  injected = optax.inject_hyperparams(row.make)(**row.hyperparams)
  np.testing.assert_allclose(
    _flat(_train(injected).params), _flat(_run(row).params), rtol=1e-6, atol=1e-6
  )


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_extra_arguments_pass_through_chain(row):
  result = _run(row)
  np.testing.assert_array_equal(result.final_state[-1]["value"], result.last_loss)
