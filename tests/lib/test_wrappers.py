"""adapt_while_combine (overlap=) and every_steps (every=) against the NumPy reference;
the overlapped exchange's independence from the gradient, in the jaxpr; skipped
steps' absence of collectives, in the HLO."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_aldsgd as ald
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T
from tests import helpers, reference

LEADER = dict(c1=0.3, c2=0.1, p1=0.2, p2=0.2)
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


@pytest.mark.parametrize("method", ["dsgd", "aldsgd"])
@pytest.mark.parametrize("overlap,every", [(True, 1), (False, 3), (True, 2)])
def test_overlap_and_every_match_reference(method, overlap, every):
  schedule = _schedule(every)
  problem, x0 = _problem(every)
  steps = 7
  if method == "dsgd":
    tx = ald.dsgd(LR, schedule, overlap=overlap, every=every)
    leader = None
  else:
    tx = ald.aldsgd(LR, schedule, overlap=overlap, every=every, pull_every=2, **LEADER)
    leader = LEADER
  got, _, step = helpers.run(tx, x0, problem, steps, ald.worker_mesh(8))
  want = reference.variant_run(
    x0,
    problem,
    steps,
    schedule,
    lr=LR,
    overlap=overlap,
    every=every,
    leader=leader,
    pull_every=2,
  )
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert step._cache_size() == 1


def test_every_one_and_overlap_false_are_todays_transforms():
  schedule = _schedule(0)
  problem, x0 = _problem(0)
  plain, _, _ = helpers.run(
    ald.aldsgd(LR, schedule), x0, problem, 4, ald.worker_mesh(8)
  )
  same, _, _ = helpers.run(
    ald.aldsgd(LR, schedule, every=1, overlap=False), x0, problem, 4, ald.worker_mesh(8)
  )
  np.testing.assert_array_equal(same, plain)


@pytest.mark.parametrize(
  "make,error,message",
  [
    (lambda s: ald.gossip(s, every=0), ValueError, "every must be an integer >= 1"),
    (lambda s: ald.gossip(s, every=1.5), TypeError, "every must be an integer"),
    (lambda s: ald.adjacent_leader(s, every=-2), ValueError, "every must be"),
  ],
)
def test_bad_inputs(make, error, message):
  with pytest.raises(error, match=message):
    make(S.full(T.ring(4)))


# --- The exchange's independence from the gradient (overlap) -----------------

COLLECTIVES = {"ppermute", "psum", "pmean", "all_gather", "all_to_all", "psum_scatter"}


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      inner = getattr(item, "jaxpr", item)
      if hasattr(inner, "eqns"):
        yield inner


def _tainted_collectives(jaxpr, tainted):
  """Collectives of ``jaxpr`` whose operands depend on the ``tainted`` vars.

  Forward data flow through every equation and into its sub-jaxprs (cond
  branches, pjit, shard_map, custom rules), mapping operands to a sub-jaxpr's
  inputs by position where the counts match (a cond's branches take its
  operands after the predicate; a tainted predicate taints everything inside),
  and conservatively (every input tainted) where they do not.

  Returns:
    ``(names of the tainted collectives, tainted outputs of jaxpr)``.
  """
  tainted = set(tainted)
  found = []
  is_var = lambda v: type(v).__name__ != "Literal"
  for eqn in jaxpr.eqns:
    marks = [is_var(v) and v in tainted for v in eqn.invars]
    name = eqn.primitive.name
    if name in COLLECTIVES and any(marks):
      found.append(name)
    outputs = [any(marks)] * len(eqn.outvars)
    inners = list(_sub_jaxprs(eqn))
    if inners:
      outputs = [False] * len(eqn.outvars)
    for inner in inners:
      if name == "cond" and len(inner.invars) == len(marks) - 1 and not marks[0]:
        inner_marks = marks[1:]
      elif len(inner.invars) == len(marks):
        inner_marks = marks
      else:
        inner_marks = [any(marks)] * len(inner.invars)
      inner_found, inner_out = _tainted_collectives(
        inner, [v for v, m in zip(inner.invars, inner_marks) if m]
      )
      found += inner_found
      if len(inner.outvars) == len(outputs):
        outputs = [
          o or (is_var(v) and v in inner_out) for o, v in zip(outputs, inner.outvars)
        ]
      elif any(marks):
        outputs = [True] * len(outputs)
    tainted.update(v for v, m in zip(eqn.outvars, outputs) if m)
  return found, tainted


def _collectives_depending_on_gradient(tx):
  """Traces a whole training step; grads pass an identity marker first."""
  mesh = ald.worker_mesh(8)
  loss_fn = helpers.quadratic_loss_fn(helpers.SHAPES)

  def step(params, state, a, b):
    loss, grads = jax.value_and_grad(loss_fn)(params, a, b)
    grads = jax.lax.optimization_barrier(grads)  # marks the gradient
    updates, state = tx.update(grads, state, params, loss=loss)
    return optax.apply_updates(params, updates), state

  problem, x0 = _problem(0)
  params = helpers.unflatten(x0, helpers.SHAPES)
  state = jax.jit(ald.worker_map(tx.init, mesh))(params)
  jaxpr = jax.make_jaxpr(ald.worker_map(step, mesh))(
    params,
    state,
    jnp.asarray(problem.a, jnp.float32),
    jnp.asarray(problem.b, jnp.float32),
  ).jaxpr

  def find(jaxpr):
    out, collectives = [], 0
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "optimization_barrier":
        out += _tainted_collectives(jaxpr, eqn.outvars)[0]
      for inner in _sub_jaxprs(eqn):
        found, count = find(inner)
        out, collectives = out + found, collectives + count
      collectives += eqn.primitive.name in COLLECTIVES
    return out, collectives

  return find(jaxpr)


@pytest.mark.parametrize(
  "make",
  [
    lambda s: ald.dsgd(LR, s, overlap=True),
    lambda s: ald.aldsgd(LR, s, overlap=True),
    lambda s: ald.aldsgd(LR, s, overlap=True, every=3),
  ],
  ids=["dsgd", "aldsgd", "aldsgd_every_3"],
)
def test_overlapped_exchange_does_not_depend_on_the_gradient(make):
  dependent, total = _collectives_depending_on_gradient(make(_schedule(0)))
  assert total >= 10  # the rotating pair's slots, all present
  assert dependent == []


def test_default_exchange_depends_on_the_gradient():
  # The analysis above can fail: adapt-then-combine sends x + u.
  dependent, total = _collectives_depending_on_gradient(ald.dsgd(LR, _schedule(0)))
  assert len(dependent) == total >= 10


def test_skipped_steps_issue_no_collective():
  # Compiled HLO: one conditional holds every collective-permute in one branch
  # (the communication step) and none in the other (the skipped steps).
  for tx in (
    ald.dsgd(LR, _schedule(0), every=4),
    ald.aldsgd(LR, _schedule(0), every=4, overlap=True),
    ald.dsgd(LR, _schedule(0), every=4, delay=2),
  ):
    bodies = helpers.hlo_computations(helpers.compiled_train_step_hlo(tx))
    permutes = helpers.hlo_collective_permutes(bodies)
    assert len(permutes) >= 1
    gates = [
      branches
      for body in bodies.values()
      for branches in helpers.hlo_conditionals(body)
      if len(branches) == 2
      and permutes <= helpers.hlo_called(bodies, branches[:1] + branches[1:])
      and any(not (helpers.hlo_called(bodies, [b]) & permutes) for b in branches)
    ]
    assert gates, "no conditional separates the exchange from the skipped steps"
