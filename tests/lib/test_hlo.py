"""Compiled HLO: one switch over activation patterns; each branch sends its matchings."""

import re

import jax
import jax.numpy as jnp
import optax
import pytest

import jax_aldsgd as ald
from jax_aldsgd import _plan
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T
from tests import helpers

_computations = helpers.hlo_computations


def _branch_closure(bodies):
  """Computations that run only inside a conditional's branch (transitively)."""
  branches = {
    name
    for body in bodies.values()
    for group in helpers.hlo_conditionals(body)
    for name in group
  }
  return helpers.hlo_called(bodies, branches)


def _compiled_step(tx, n):
  mesh = ald.worker_mesh(n)

  def step(params, state, batch):
    loss, grads = jax.value_and_grad(lambda p: jnp.mean((batch @ p["w"]) ** 2))(params)
    updates, state = tx.update(grads, state, params, loss=loss)
    return optax.apply_updates(params, updates), state

  params = ald.replicate_workers({"w": jnp.ones((5, 3))}, n)
  state = jax.jit(ald.worker_map(tx.init, mesh))(params)
  batch = jnp.ones((n, 4, 5))
  return (
    jax.jit(ald.worker_map(step, mesh)).lower(params, state, batch).compile().as_text()
  )


_G0, _G1 = T.paper_graph(0), T.paper_graph(1)


def _permutes(body: str) -> list[frozenset]:
  """Source-target pairs of each collective-permute in an HLO body."""
  found = []
  for line in body.splitlines():
    if re.search(r"= \S+ collective-permute(?:-start)?\(", line):
      pairs = re.search(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}", line)
      found.append(frozenset(re.findall(r"\{(\d+,\d+)\}", pairs.group(1))))
  return found


def _slot_pairs(schedule, s):
  return frozenset(
    f"{i},{j}" for i, j in enumerate(schedule.slot_partners[s]) if j >= 0
  )


def _closure(bodies, names):
  """``names`` and every computation they call, transitively."""
  inside, frontier = set(names), set(names)
  while frontier:
    called = set()
    for name in frontier:
      body = bodies.get(name, "")
      called |= set(re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", body))
      for match in re.finditer(
        r"(?:branch_computations=\{([^}]*)\}|true_computation=%?([\w.\-]+), "
        r"false_computation=%?([\w.\-]+))",
        body,
      ):
        group = match.group(1).split(",") if match.group(1) else match.groups()[1:]
        called |= {n.strip().lstrip("%") for n in group}
    frontier = called - inside
    inside |= frontier
  return inside


_SCHEDULES = {
  "full": lambda: S.full(_G0),
  "alternating": lambda: S.alternating(_G0),
  "explicit": lambda: S.explicit(_G0, [{0, 2}, {1}, set(), {0, 2, 4}]),
  "rotating_full": lambda: S.rotating([S.full(_G1), S.full(_G0)]),
  "rotating_alternating": lambda: S.rotating([S.alternating(_G1), S.alternating(_G0)]),
  "matcha": lambda: S.matcha(_G0, 0.5),
  "rotating_matcha": lambda: S.rotating([S.matcha(_G1, 0.5), S.matcha(_G0, 0.5)]),
}


@pytest.mark.parametrize("kind", sorted(_SCHEDULES))
@pytest.mark.parametrize("transform", ["dsgd", "aldsgd"])
def test_one_switch_per_message_sending_exactly_the_active_matchings(kind, transform):
  schedule = _SCHEDULES[kind]()
  tx = getattr(ald, transform)(0.1, schedule)
  hlo = _compiled_step(tx, 8)
  bodies = _computations(hlo)
  (group,) = _plan.exchange_plan(schedule)  # these schedules need one switch
  for forbidden in ("all-gather", "all-reduce", "all-to-all", "reduce-scatter"):
    assert forbidden not in hlo
  everything = [p for body in bodies.values() for p in _permutes(body)]
  # One permute per (pattern, active slot): nothing else communicates. AL-DSGD
  # on several active slots per step sends two per slot: its ranks, then the
  # parameters.
  times = 2 if transform == "aldsgd" and not _plan.one_slot_per_step(schedule) else 1
  want = sorted(
    sorted(_slot_pairs(schedule, s))
    for active in group.patterns
    for s in active
    for _ in range(times)
  )
  assert sorted(sorted(p) for p in everything) == want
  entry = next(body for name, body in bodies.items() if name.startswith("main"))
  switches = re.findall(r"conditional\([^\n]*branch_computations=\{([^}]*)\}", entry)
  if len(group.patterns) == 1:  # e.g. full: every slot active, no switch
    # (conditionals on a constant-true predicate only order the exchanges)
    assert all(len(s.split(",")) == 2 for s in switches)
    return
  # One switch per step (AL-DSGD on several slots: one for the ranks, one for
  # the parameters); branch i (pattern i) of each sends exactly the matchings
  # active in pattern i.
  assert len(switches) == times, switches
  branches = []
  for switch in switches:
    assert len(switch.split(",")) == len(group.patterns)
    names = [b.strip().lstrip("%") for b in switch.split(",")]
    for active, branch in zip(group.patterns, names):
      inside = _closure(bodies, [branch])
      sent = sorted(sorted(p) for name in inside for p in _permutes(bodies[name]))
      assert sent == sorted(sorted(_slot_pairs(schedule, s)) for s in active)
    branches += names
  # No permute outside the switches: a slot that is not always active is guarded.
  inside = _closure(bodies, branches)
  outside = [
    p for name, body in bodies.items() if name not in inside for p in _permutes(body)
  ]
  assert not outside


def test_patterns_of_every_schedule_kind_cover_the_steps():
  for kind, make in sorted(_SCHEDULES.items()):
    schedule = make()
    patterns = schedule.activation_patterns(4096)
    seen = {tuple(schedule.active(k)) for k in range(2000)}
    assert seen <= patterns, kind
    if kind != "matcha" and kind != "rotating_matcha":
      assert seen == patterns, kind  # deterministic schedules: exactly these


@pytest.mark.parametrize("transform", ["dsgd", "aldsgd"])
def test_received_buffers_are_not_all_alive_at_once(transform):
  # full(graph 0): 5 matchings every step. Hoisting every exchange ahead of the
  # combines would hold 5 received buffers; the fold holds one, plus the
  # packed message and one carry, for AL-DSGD as for gossip (its ranks go
  # first, so it needs no carries for the leader and the max-degree node).
  # XLA's buffer assignment: 2.0 parameter copies of temporaries for both.
  size = 50_000
  tx = getattr(ald, transform)(0.1, S.full(_G0))
  mesh = ald.worker_mesh(8)

  def step(params, state, x):
    loss, grads = jax.value_and_grad(lambda p: jnp.sum(p["w"]) * x)(params)
    updates, state = tx.update(grads, state, params, loss=loss)
    return optax.apply_updates(params, updates), state

  params = {"w": jnp.ones((8, size))}
  state = jax.jit(ald.worker_map(tx.init, mesh))(params)
  compiled = (
    jax.jit(ald.worker_map(step, mesh)).lower(params, state, jnp.ones((8,))).compile()
  )
  copies = compiled.memory_analysis().temp_size_in_bytes / (4 * size)
  assert copies <= 2.5, copies


def test_allreduce_is_one_all_reduce():
  hlo = _compiled_step(optax.chain(optax.sgd(0.1), ald.allreduce()), 8)
  assert len(re.findall(r"= \S+ all-reduce(?:-start)?\(", hlo)) == 1
  assert "collective-permute" not in hlo
