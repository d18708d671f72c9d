"""The exchange plan: activation patterns, slot groups, and the step-to-branch map."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_aldsgd as ald
from jax_aldsgd import _packing, _plan
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T
from jax_aldsgd._schedules import Alternating
from tests import helpers, reference

_G0, _G1 = T.paper_graph(0), T.paper_graph(1)
COEFFICIENTS = dict(c1=0.3, c2=0.1, p1=0.2, p2=0.2)

SCHEDULES = {
  "full": lambda: S.full(_G0),
  "alternating": lambda: S.alternating(_G0),
  "explicit": lambda: S.explicit(_G0, [{0, 2}, {1}, set(), {0, 2, 4}, {1}]),
  "matcha": lambda: S.matcha(_G0, 0.5, seed=3),
  "matcha_all_free": lambda: S.matcha(T.ring(8), 0.5, seed=1),
  "rotating_alternating": lambda: S.rotating([S.alternating(_G1), S.alternating(_G0)]),
  "rotating_matcha": lambda: S.rotating([S.matcha(_G1, 0.5), S.matcha(_G0, 0.5)]),
  # 48 patterns: more than one switch can take (MAX_BRANCHES), so several groups.
  "rotating_matcha_16": lambda: S.rotating(
    [S.matcha(T.paper_graph(11), 0.5), S.matcha(T.paper_graph(10), 0.5)]
  ),
  "rotating_mixed_16": lambda: S.rotating(
    [
      S.matcha(T.paper_graph(11), 0.5, seed=2),
      S.full(T.paper_graph(10)),
      S.alternating(T.paper_graph(12)),
    ]
  ),
}


@dataclasses.dataclass(frozen=True)
class _Opaque(Alternating):
  """A schedule that cannot enumerate its patterns (the fallback path)."""

  def activation_patterns(self, limit):
    return None


def _branch(group, flags):
  """The branch `fold` takes for ``flags``, computed as it does (in NumPy)."""
  code = sum(int(flags[s]) << k for k, s in enumerate(group.slots))
  (index,) = np.flatnonzero(group.codes == code)
  return group.patterns[index]


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_every_step_maps_to_the_branch_of_its_active_slots(kind):
  schedule = SCHEDULES[kind]()
  plan = _plan.exchange_plan(schedule)
  # The groups cover the slots in order, each with a bounded number of branches.
  assert [s for g in plan for s in g.slots] == list(range(schedule.num_slots))
  for group in plan:
    assert 1 <= len(group.patterns) <= _plan.MAX_BRANCHES
    assert len(set(group.codes.tolist())) == len(group.patterns)
  for k in range(3000):
    flags = schedule.active(k)
    for group in plan:
      want = tuple(s for s in group.slots if flags[s])
      assert _branch(group, flags) == want, (k, group.slots)
  # The traced flags give the same codes (the index fold computes under jit).
  flags_at = jax.jit(lambda k: schedule.slot_flags(k, jnp))
  for k in range(0, 3000, 97):
    np.testing.assert_array_equal(
      np.asarray(flags_at(jnp.int32(k))), schedule.active(k)
    )


def test_patterns_are_exact_for_deterministic_schedules():
  for kind in ("full", "alternating", "explicit", "rotating_alternating"):
    schedule = SCHEDULES[kind]()
    seen = {tuple(schedule.active(k)) for k in range(200)}
    assert schedule.activation_patterns(4096) == seen, kind
  matcha = SCHEDULES["matcha"]()
  free = sum(0 < p < 1 for p in matcha.probabilities)
  assert len(matcha.activation_patterns(4096)) == 2**free
  assert matcha.activation_patterns(2**free - 1) is None  # too many: no enumeration


def test_groups_split_when_patterns_exceed_one_switch():
  plan = _plan.exchange_plan(SCHEDULES["rotating_matcha_16"]())
  assert len(plan) > 1
  # full: one pattern, so no switch at all; alternating: one switch of two.
  (full,) = _plan.exchange_plan(SCHEDULES["full"]())
  assert full.patterns == (tuple(range(_G0.num_matchings)),)
  (alternating,) = _plan.exchange_plan(SCHEDULES["alternating"]())
  assert sorted(alternating.patterns) == [(0,), (1,)]


def test_a_schedule_without_patterns_gets_one_two_way_switch_per_slot():
  schedule = _Opaque(_G0, 0.25)
  plan = _plan.exchange_plan(schedule)
  assert [g.slots for g in plan] == [(s,) for s in range(_G0.num_matchings)]
  assert all(g.patterns == ((), (g.slots[0],)) for g in plan)


@pytest.mark.parametrize("kind", ["rotating_matcha", "explicit"])
@pytest.mark.parametrize("leader", [False, True])
def test_fold_matches_the_reference(kind, leader):
  # Multi-slot branches, steps with nothing active, and (rotating_matcha) a
  # switch whose branches exchange different numbers of slots.
  schedule = SCHEDULES[kind]()
  rng = np.random.default_rng(7)
  dim = helpers.flat_dim(helpers.SHAPES)
  problem = reference.Quadratic(rng, 8, dim)
  x0 = rng.normal(size=(8, dim))
  if leader:
    tx = ald.aldsgd(0.05, schedule, **COEFFICIENTS)
  else:
    tx = ald.dsgd(0.05, schedule)
  got, _, _ = helpers.run(tx, x0, problem, 10, ald.worker_mesh(8))
  want = helpers.reference_run(
    x0, problem, 10, schedule, lr=0.05, leader=COEFFICIENTS if leader else None
  )
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_fallback_schedule_matches_the_reference():
  schedule = _Opaque(_G0, 0.25)
  rng = np.random.default_rng(8)
  dim = helpers.flat_dim(helpers.SHAPES)
  problem = reference.Quadratic(rng, 8, dim)
  x0 = rng.normal(size=(8, dim))
  tx = ald.aldsgd(0.05, schedule, **COEFFICIENTS)
  got, _, _ = helpers.run(tx, x0, problem, 6, ald.worker_mesh(8))
  want = helpers.reference_run(x0, problem, 6, schedule, lr=0.05, leader=COEFFICIENTS)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
  "where",
  ["none", "kernel_nan", "bias_inf", "scale_neg_inf", "extra_nan", "bf16_leaf_inf"],
)
def test_packed_health_entry_is_whether_every_entry_is_finite(where):
  rng = np.random.default_rng(0)
  tree = {
    "kernel": rng.normal(size=(7, 5)).astype(np.float32),
    "bias": rng.normal(size=(5,)).astype(np.float32),
    "scale": rng.normal(size=(3,)).astype(np.float32),
    "half": rng.normal(size=(4,)).astype(np.float32),
  }
  extras = [np.float32(0.25)]
  bad = {
    "kernel_nan": ("kernel", (6, 4), np.nan),
    "bias_inf": ("bias", (0,), np.inf),
    "scale_neg_inf": ("scale", (1,), -np.inf),
    "bf16_leaf_inf": ("half", (2,), np.inf),
  }
  if where in bad:
    name, index, value = bad[where]
    tree[name][index] = value
  if where == "extra_nan":
    extras = [np.float32(np.nan)]
  expected = all(np.all(np.isfinite(v)) for v in [*tree.values(), *extras])
  device_tree = {k: jnp.asarray(v) for k, v in tree.items()}
  device_tree["half"] = device_tree["half"].astype(jnp.bfloat16)

  @jax.jit
  def packed(tree, extras):
    buffer, unpack = _packing.pack(tree, extras, health=True)
    return buffer, _packing.buffer_healthy(buffer), unpack(buffer)

  buffer, healthy, (back, back_extras) = packed(device_tree, extras)
  assert bool(healthy) == expected
  assert buffer.shape == (35 + 5 + 3 + 4 + 1 + 1,)
  assert float(buffer[-1]) == float(expected)
  for name, leaf in device_tree.items():  # the health entry is not data
    assert back[name].dtype == leaf.dtype
    np.testing.assert_array_equal(np.asarray(back[name]), np.asarray(leaf))
  np.testing.assert_array_equal(np.asarray(back_extras[0]), extras[0])


def test_packed_health_entry_costs_no_copy_of_the_message():
  # The reduction reads the buffer and the flag is written into it in place:
  # XLA must not copy the parameter-sized message to do so.
  size = 100_000
  tree = [jnp.ones((size // 2,)), jnp.ones((size // 2,))]

  def send(tree, loss):
    buffer, _ = _packing.pack(tree, (loss,), health=True)
    return buffer

  compiled = jax.jit(send).lower(tree, jnp.float32(1.0)).compile()
  assert not re.search(r"f32\[\d{5,}\]\S* copy\(", compiled.as_text())
  # The output is the only message-sized buffer (no temporary one).
  assert compiled.memory_analysis().temp_size_in_bytes < 4 * size
