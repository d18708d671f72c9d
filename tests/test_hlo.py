"""Compiled HLO: one collective-permute per matching, each inside a conditional."""

import re

import jax
import jax.numpy as jnp
import optax
import pytest

import jax_aldsgd as ald
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T


def _computations(hlo: str) -> dict[str, str]:
  """Maps each HLO computation name to its body text."""
  bodies, name, lines = {}, None, []
  for line in hlo.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if header and not line.startswith(" "):
      name, lines = header.group(1), []
    elif line.startswith("}") and name is not None:
      bodies[name] = "\n".join(lines)
      name = None
    elif name is not None:
      lines.append(line)
  return bodies


def _branch_closure(bodies):
  """Computations that run only inside a conditional's branch (transitively)."""
  inside = set()
  for body in bodies.values():
    for match in re.finditer(
        r"(?:branch_computations=\{([^}]*)\}|true_computation=%?([\w.\-]+), "
        r"false_computation=%?([\w.\-]+))", body):
      names = match.group(1).split(",") if match.group(1) else match.groups()[1:]
      inside |= {n.strip().lstrip("%") for n in names}
  frontier = set(inside)
  while frontier:
    called = set()
    for name in frontier:
      for callee in re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)",
                               bodies.get(name, "")):
        called.add(callee)
    frontier = called - inside
    inside |= frontier
  return inside


def _compiled_step(tx, n):
  mesh = ald.worker_mesh(n)

  def step(params, state, batch):
    loss, grads = jax.value_and_grad(lambda p: jnp.mean((batch @ p["w"]) ** 2))(params)
    updates, state = tx.update(grads, state, params, loss=loss)
    return optax.apply_updates(params, updates), state

  params = ald.replicate_workers({"w": jnp.ones((5, 3))}, n)
  state = jax.jit(ald.worker_map(tx.init, mesh))(params)
  batch = jnp.ones((n, 4, 5))
  return jax.jit(ald.worker_map(step, mesh)).lower(params, state, batch).compile(
  ).as_text()


_G0, _G1 = T.paper_graph(0), T.paper_graph(1)


@pytest.mark.parametrize("make_tx,num_slots", [
    # full: the flags are constant, yet each exchange stays in its conditional
    # (that is what orders the exchanges; see _exchange._runtime_flags).
    (lambda: ald.dsgd(0.1, S.full(_G0)), 5),
    (lambda: ald.aldsgd(0.1, S.full(_G0)), 5),
    (lambda: ald.aldsgd(0.1, S.alternating(_G0)), 5),
    (lambda: ald.aldsgd(0.1, S.rotating([S.full(_G1), S.full(_G0)])), 10),
    (lambda: ald.dsgd(0.1, S.rotating([S.matcha(_G1, 0.5), S.matcha(_G0, 0.5)])), 10),
])
def test_one_collective_permute_per_matching(make_tx, num_slots):
  hlo = _compiled_step(make_tx(), 8)
  bodies = _computations(hlo)
  permutes = {name: len(re.findall(r"= \S+ collective-permute(?:-start)?\(", body))
              for name, body in bodies.items()}
  assert sum(permutes.values()) == num_slots
  inside = _branch_closure(bodies)
  for name, count in permutes.items():
    if count:
      assert name in inside, f"collective-permute in {name} is not in a branch"
  for forbidden in ("all-gather", "all-reduce", "all-to-all", "reduce-scatter"):
    assert forbidden not in hlo


def test_allreduce_is_one_all_reduce():
  hlo = _compiled_step(optax.chain(optax.sgd(0.1), ald.allreduce()), 8)
  assert len(re.findall(r"= \S+ all-reduce(?:-start)?\(", hlo)) == 1
  assert "collective-permute" not in hlo
