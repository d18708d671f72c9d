"""CHOCO-SGD (compressed gossip, AL-DSGD) against NumPy; invariants; the HLO's bytes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_aldsgd as ald
from experiments import benchmark
from jax_aldsgd import compressors as C
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T
from tests import choco_reference, helpers, reference

COEFFICIENTS = dict(c1=0.3, c2=0.1, p1=0.2, p2=0.2)
SHAPES = {"kernel": (4, 5), "scale": ()}  # a leaf of 20 entries and a scalar
G0, G1 = T.paper_graph(0), T.paper_graph(1)
# Small graphs keep the compiled steps (one branch per slot) quick to build.
RING6 = T.ring(6)  # 2 matchings
HEX = T.from_edges(6, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0), (0, 3)])


def _segments(shapes):
  """Per leaf of `helpers.flatten`'s order: (leaf index in the pytree, start, size)."""
  order = sorted(shapes)  # jax.tree.leaves orders a dict by key
  out, start = [], 0
  for name, shape in shapes.items():
    size = int(np.prod(shape))
    out.append((order.index(name), start, size))
    start += size
  return out


def _reference_q(compressor, step, shapes):
  leaf_q = choco_reference.leaf_q(compressor, step)

  def q(v, worker):
    out = np.zeros_like(v)
    for leaf, start, size in _segments(shapes):
      out[start : start + size] = leaf_q(v[start : start + size], leaf, worker)
    return out

  return q


def _mixer(tx, mesh):
  """Jitted worker step with zero incoming updates: x_half = params."""

  def f(params, state, loss):
    updates, state = tx.update(
      jax.tree.map(jnp.zeros_like, params), state, params, loss=loss
    )
    return optax.apply_updates(params, updates), state

  return jax.jit(ald.worker_map(f, mesh))


def _schedule(rng, kind):
  if kind == "rotating":
    return S.rotating(
      [
        S.matcha(HEX, 0.5, seed=int(rng.integers(100))),
        S.full(RING6),
        S.alternating(HEX),
      ]
    )
  topology = helpers.random_topology(rng, int(rng.integers(5, 8)))
  if kind == "full":
    return S.full(topology)
  if kind == "alternating":
    return S.alternating(topology)
  if kind == "matcha":
    return S.matcha(topology, budget=0.5, seed=int(rng.integers(100)))
  pattern = [
    set(np.flatnonzero(rng.random(topology.num_matchings) < 0.5).tolist())
    for _ in range(3)
  ]
  return S.explicit(topology, pattern, neighbor_weight=float(rng.uniform(0.1, 0.4)))


@pytest.mark.parametrize(
  "seed,method,kind,compressor",
  [
    (0, "gossip", "full", C.top_k(0.3)),
    (3, "gossip", "rotating", C.qsgd(4, seed=1)),
    (4, "aldsgd", "rotating", C.top_k(0.3)),
    (1, "aldsgd", "matcha", C.random_k(0.3, seed=3)),
    (6, "aldsgd", "full", C.scaled_sign()),
  ],
  ids=str,
)
def test_matches_reference_over_steps(seed, method, kind, compressor):
  """Random graphs and inputs, several consecutive steps, every schedule kind."""
  rng = np.random.default_rng(seed)
  schedule = _schedule(rng, kind)
  n, dim = schedule.num_workers, helpers.flat_dim(SHAPES)
  gamma = float(rng.uniform(0.2, 0.9))
  mesh = ald.worker_mesh(n)
  if method == "gossip":
    tx = ald.gossip(schedule, compressor=compressor, consensus_lr=gamma)
  else:
    tx = ald.adjacent_leader(
      schedule, compressor=compressor, consensus_lr=gamma, **COEFFICIENTS
    )
  fixed = method == "gossip" and kind == "full"
  want_model = (
    choco_reference.FixedGraph(n, dim)
    if fixed
    else choco_reference.PerSlot(schedule.num_slots, n, dim)
  )
  mix = _mixer(tx, mesh)
  state = None
  for step in range(5):
    x_half = rng.normal(size=(n, dim))
    losses = rng.integers(0, 3, size=n) / 10.0  # ties
    tree = helpers.unflatten(x_half, SHAPES)
    if state is None:
      state = jax.jit(ald.worker_map(tx.init, mesh))(tree)
    got, state = mix(tree, state, jnp.asarray(losses, jnp.float32))
    x_half = helpers.flatten(tree, SHAPES)  # the float32 values the library saw
    q = _reference_q(compressor, step, SHAPES)
    if fixed:
      want = want_model.step(x_half, schedule.mixing_matrix(step), gamma, q)
    else:
      matchings, active, weights = reference.schedule_step_inputs(schedule, step)
      leader = (
        None if method == "gossip" else dict(losses=losses, pull=True, **COEFFICIENTS)
      )
      want = want_model.step(x_half, matchings, active, weights, gamma, q, leader)
    np.testing.assert_allclose(
      helpers.flatten(got, SHAPES), want, rtol=1e-4, atol=1e-5, err_msg=f"step {step}"
    )
  assert mix._cache_size() == 1


_EVERY_KIND = S.rotating(
  [
    S.matcha(HEX, 0.5, seed=1),
    S.alternating(RING6),
    S.explicit(RING6, [{0, 1}, set(), {1}]),
    S.full(RING6),
  ]
)


@pytest.mark.parametrize(
  "method,schedule",
  [
    ("dsgd", S.full(HEX)),  # the two-buffer form
    ("dsgd", _EVERY_KIND),  # public copies per slot, every schedule kind
    ("aldsgd", _EVERY_KIND),
  ],
  ids=["dsgd_full", "dsgd_rotating_every_kind", "aldsgd_rotating_every_kind"],
)
def test_identity_compressor_equals_uncompressed(method, schedule):
  rng = np.random.default_rng(0)
  n, dim = 6, helpers.flat_dim(SHAPES)
  problem = reference.Quadratic(rng, n, dim)
  x0 = rng.normal(size=(n, dim))
  mesh = ald.worker_mesh(n)
  if method == "dsgd":
    make = lambda **kw: ald.dsgd(0.1, schedule, momentum=0.5, **kw)
  else:
    make = lambda **kw: ald.aldsgd(0.1, schedule, **COEFFICIENTS, **kw)
  got, _, _ = helpers.run(
    make(compressor=C.identity(), consensus_lr=1.0), x0, problem, 8, mesh, SHAPES
  )
  want, _, _ = helpers.run(make(), x0, problem, 8, mesh, SHAPES)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fixed_graph_and_per_slot_forms_agree():
  """On a fixed graph the two-buffer form equals public copies per slot."""
  rng = np.random.default_rng(1)
  n, dim = 6, helpers.flat_dim(SHAPES)
  problem = reference.Quadratic(rng, n, dim)
  x0 = rng.normal(size=(n, dim))
  mesh = ald.worker_mesh(n)
  fixed = S.full(HEX)
  every_step = S.explicit(
    HEX, [range(HEX.num_matchings)], neighbor_weight=fixed.neighbor_weight[0]
  )
  for compressor in (C.qsgd(3, seed=4),):
    runs = []
    for schedule in (fixed, every_step):
      tx = ald.dsgd(0.1, schedule, compressor=compressor, consensus_lr=0.6)
      runs.append(helpers.run(tx, x0, problem, 8, mesh, SHAPES)[0])
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5, atol=1e-6)
  state = jax.jit(
    ald.worker_map(ald.gossip(fixed, compressor=C.top_k(0.1)).init, mesh)
  )(helpers.unflatten(x0, SHAPES))
  assert isinstance(state, ald.ChocoState)  # two buffers: (n, D) each
  assert state.public.shape == state.neighbor_sum.shape == (n, dim)


def test_copies_equal_partners_public_copies_after_many_steps():
  """Rotating MATCHA: i's copy of its slot-s partner j's public copy is j's own."""
  rng = np.random.default_rng(2)
  n, dim = 6, helpers.flat_dim(SHAPES)
  problem = reference.Quadratic(rng, n, dim)
  schedule = S.rotating([S.matcha(HEX, 0.4, seed=3), S.matcha(RING6, 0.4, seed=4)])
  mesh = ald.worker_mesh(n)
  tx = ald.aldsgd(0.1, schedule, compressor=C.top_k(0.2), consensus_lr=0.3)
  step = helpers.make_step(tx, mesh, SHAPES)
  params = ald.shard_workers(helpers.unflatten(rng.normal(size=(n, dim)), SHAPES), mesh)
  state = jax.jit(ald.worker_map(tx.init, mesh))(params)
  a = ald.shard_workers(jnp.asarray(problem.a, jnp.float32), mesh)
  b = ald.shard_workers(jnp.asarray(problem.b, jnp.float32), mesh)
  for _ in range(80):
    params, state, _ = step(params, state, a, b)
  choco = state[1]
  assert isinstance(choco, ald.ChocoSlotState)
  public, copies = np.asarray(choco.public), np.asarray(choco.copies)  # (n, S, D)
  assert public.shape == (n, schedule.num_slots, dim)
  for s, partners in enumerate(schedule.slot_partners):
    for i, j in enumerate(partners):
      if j >= 0:
        np.testing.assert_array_equal(copies[i, s], public[j, s])
      else:
        assert not copies[i, s].any() and not public[i, s].any()
  assert np.abs(public).max() > 0.1  # the copies did move


class _DenseTopK(type(C.top_k(0.5))):
  """Top-k applied by decompressing to a dense vector (the path not taken)."""

  def sparse_entries(self, message, draw):
    return None  # the transforms then decode and add densely

  def decode(self, message, size, draw):
    values, indices = message
    return jnp.zeros((size,), values.dtype).at[indices].set(values)


def test_sparse_and_dense_message_paths_give_bit_equal_public_copies():
  rng = np.random.default_rng(4)
  n, dim = 6, helpers.flat_dim(SHAPES)
  problem = reference.Quadratic(rng, n, dim)
  x0 = rng.normal(size=(n, dim))
  mesh = ald.worker_mesh(n)
  schedule = S.rotating([S.matcha(HEX, 0.6, seed=2), S.full(RING6)])
  states = []
  for compressor in (C.top_k(0.2), _DenseTopK(0.2)):
    tx = ald.aldsgd(0.1, schedule, compressor=compressor, consensus_lr=0.4)
    step = helpers.make_step(tx, mesh, SHAPES)
    params = ald.shard_workers(helpers.unflatten(x0, SHAPES), mesh)
    state = jax.jit(ald.worker_map(tx.init, mesh))(params)
    a = ald.shard_workers(jnp.asarray(problem.a, jnp.float32), mesh)
    b = ald.shard_workers(jnp.asarray(problem.b, jnp.float32), mesh)
    for _ in range(6):
      params, state, _ = step(params, state, a, b)
    states.append((params, state[1]))
  sparse, dense = states
  np.testing.assert_array_equal(sparse[1].public, dense[1].public)
  np.testing.assert_array_equal(sparse[1].copies, dense[1].copies)
  np.testing.assert_array_equal(
    helpers.flatten(sparse[0], SHAPES), helpers.flatten(dense[0], SHAPES)
  )


# ----------------------------------------------------------------------------
# The bytes on the wire, from the compiled HLO.


def _compiled(tx, n, params):
  mesh = ald.worker_mesh(n)

  def step(params, state):
    loss, grads = jax.value_and_grad(
      lambda p: sum(jnp.sum(x**2) for x in jax.tree.leaves(p))
    )(params)
    updates, state = tx.update(grads, state, params, loss=loss)
    return optax.apply_updates(params, updates), state

  stacked = ald.replicate_workers(params, n)
  state = jax.jit(ald.worker_map(tx.init, mesh))(stacked)
  return jax.jit(ald.worker_map(step, mesh)).lower(stacked, state).compile().as_text()


def _entry(hlo):
  match = re.search(r"^ENTRY .*?^\}", hlo, re.S | re.M)
  return match.group(0)


PARAMS = {"w": jnp.ones((40, 10)), "b": jnp.ones(10)}  # 410 parameters
DENSE = ald.gossip_message_bytes(PARAMS)


@pytest.mark.parametrize(
  "compressor,expected",
  [
    (C.top_k(0.1), (40 + 1) * 8),
    (C.random_k(0.1), (40 + 1) * 4),
    (C.scaled_sign(), (50 + 4) + (2 + 4)),
    (C.qsgd(8), (400 + 4) + (10 + 4)),
    (C.identity(), DENSE),
  ],
  ids=repr,
)
def test_hlo_permutes_carry_the_compressed_message(compressor, expected):
  schedule = S.rotating([S.matcha(HEX, 0.5, seed=4), S.full(RING6)])
  for with_loss in (False, True):
    if with_loss and compressor != C.top_k(0.1):
      continue  # AL-DSGD's message: one case is enough
    make = ald.adjacent_leader if with_loss else ald.gossip
    exchange = make(schedule, compressor=compressor, consensus_lr=0.5)
    hlo = _compiled(optax.chain(optax.sgd(0.1), exchange), 6, PARAMS)
    # AL-DSGD's ranks (loss, health flag: 2 float32) travel first, uncompressed.
    parts = ald.traffic(exchange, PARAMS).parts
    assert parts == ((8,) if with_loss else ()) + (expected,)
    message = ald.choco_message_bytes(PARAMS, compressor, with_loss=with_loss)
    assert message == sum(parts)
    permutes = benchmark.hlo_permutes(hlo)
    # The compressed messages: one conditional per slot (`fold_messages`); the
    # ranks go through one switch over patterns (a permute per branch).
    assert sum(size == parts[-1] for size, _ in permutes) == schedule.num_slots
    assert {size for size, _ in permutes} == set(parts)
    benchmark.check_bytes_against_hlo(schedule, parts, hlo, range(12), 6)
    assert "collective-permute" not in _entry(hlo)  # all inside conditionals
    assert hlo.count("conditional(") >= schedule.num_slots
    for forbidden in ("all-gather", "all-reduce", "all-to-all"):
      assert forbidden not in hlo
    if compressor == C.top_k(0.1):
      assert max(parts) < DENSE / 4  # nothing parameter-sized travels


# ----------------------------------------------------------------------------
# Tuning, bad input.


def test_tune_consensus_lr():
  plain = ald.tune_consensus_lr(S.full(G0), C.identity(), num_params=50, steps=30)
  assert plain.consensus_lr == 1.0  # no compression on a fixed graph: plain gossip
  assert list(plain.errors) == sorted(plain.errors, reverse=True)
  schedule = S.rotating([S.full(G1), S.full(G0)])
  result = ald.tune_consensus_lr(schedule, C.top_k(0.1), num_params=100, steps=300)
  assert len(result.grid) == len(result.errors) == 13
  assert result.grid[0] == pytest.approx(1e-3) and result.grid[-1] == 1.0
  assert 0.01 < result.consensus_lr < 0.5
  assert result.errors[-1] > 1  # gamma = 1 diverges under top-k 10%
  best = result.grid.index(result.consensus_lr)
  assert result.errors[best] < 1e-6
  assert result.steps_to_floor[best] == min(result.steps_to_floor)


def test_bad_input():
  schedule = S.full(G0)
  for value in (0, 0.0, -0.5, 1.5, float("nan")):
    with pytest.raises(ValueError, match="consensus_lr must be"):
      ald.gossip(schedule, compressor=C.top_k(0.1), consensus_lr=value)
    with pytest.raises(ValueError, match="consensus_lr must be"):
      ald.aldsgd(0.1, schedule, compressor=C.top_k(0.1), consensus_lr=value)
  with pytest.raises(ValueError, match="all-reduce does not compress"):
    ald.allreduce(compressor=C.top_k(0.1))
  for bad in ("top_k", optax.sgd(0.1), 0.1):
    with pytest.raises(TypeError, match="compressor must be one of"):
      ald.gossip(schedule, compressor=bad)
    with pytest.raises(TypeError, match="compressor must be one of"):
      ald.dsgd(0.1, schedule, compressor=bad)
  with pytest.raises(ValueError, match="without a compressor"):
    ald.adjacent_leader(schedule, consensus_lr=0.5)
  with pytest.raises(ValueError, match="cannot be combined with skip_nonfinite"):
    ald.gossip(schedule, compressor=C.identity(), skip_nonfinite=True)
  with pytest.raises(ValueError, match="grid must be"):
    ald.tune_consensus_lr(schedule, C.identity(), grid=[0.5, 2.0])
  with pytest.raises(TypeError, match="compressor must be one of"):
    ald.tune_consensus_lr(schedule, "top_k")
