"""CHOCO-SGD: gossip and AL-DSGD on compressed messages (ALGORITHM.md section 9).

Koloskova, Stich & Jaggi (ICML 2019), in the reference's sequential order. Worker
i, after the local step ``x_half_i = x_i + u_i``, compresses the difference to its
public copy, exchanges the compressed message with its active neighbors, adds the
messages to the public copies, and moves by the consensus step ``gamma``:

  ``q_i = Q(x_half_i - xhat_i)``; ``xhat_j += q_j`` (j = i and every active
  neighbor); ``x_i = x_half_i + gamma sum_j w_ij (xhat_j - xhat_i)``.

Public copies, per schedule kind (the memory is in parameter-sized buffers per
worker, kept flat in the optimizer state):

* `full` (a fixed graph), `gossip`: 2 buffers, ``xhat_i`` and ``sum_{j in N_i}
  (xhat_j - xhat_i)``, updated with the own and the received messages
  (`ChocoState`).
* every other schedule (alternating, MATCHA, explicit, rotating), and AL-DSGD on
  any schedule: 2 buffers per slot (per matching of each graph; S slots), i.e.
  2 S (`ChocoSlotState`). Per slot s, worker i keeps its own public copy
  ``h_i^s`` *as seen on slot s* and a copy ``c_i^s`` of its slot-s partner's
  ``h_j^s``. Only when s is active does i send ``q = Q(x_half_i - h_i^s)``, and
  then both ends add the same messages: ``h_i^s += q_i``, ``c_i^s += q_j``. So
  ``c_i^s == h_j^s`` holds exactly at every step, however the slots switch on
  and off (a copy per worker, updated only on some steps, would drift from its
  owner: that is the reference code's bug). CHOCO's analysis holds per edge.
  Examples (paper graph 0: 5 matchings; the pair (0, 1) rotated: 10 slots):
  alternating or MATCHA on graph 0: 10 buffers; the rotated pair: 20; AL-DSGD
  on `full` graph 0: 10.

AL-DSGD on CHOCO (`adjacent_leader` with a compressor): the leader ``b`` and the
max-degree node ``m`` are chosen as without compression, from the uncompressed
losses (one float32 in each message) and the static active degrees; the step
uses the AL-DSGD mixing matrix as CHOCO's ``W``, with public copies in place of
parameters and the consensus step on all of it:

  ``x_i = x_half_i + gamma [A alpha sum_{j in N_i} (xhat_j - xhat_i)
  + B (xhat_b - xhat_i) + C (xhat_m - xhat_i)]``

with ``A, B, C`` of `jax_aldsgd.adjacent_leader` and, on edge s, ``xhat_j -
xhat_i = c_i^s - h_i^s`` (0 when b or m is i itself). With the identity
compressor and ``gamma = 1`` the public copies equal ``x_half`` and this is
AL-DSGD exactly; with compression the pull, like the gossip, only trusts what
both ends of an edge know, and ``gamma`` damps it as it damps the gossip.

The message of one slot is one uint8 buffer: every leaf's compressed message
(e.g. top-k's k values and k int32 indices), bit-cast to bytes and concatenated,
then the float32 loss for AL-DSGD; one ``ppermute`` per active slot carries it.
Sparse messages are applied with a scatter-add of their k entries.
"""

from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jax_aldsgd import _checks, _exchange
from jax_aldsgd._compressors import Compressor, check_compressor
from jax_aldsgd._schedules import Full, Schedule


class ChocoState(NamedTuple):
  """State of compressed `gossip` on a `full` schedule (two buffers).

  Attributes:
    count: int32 step counter.
    public: ``(D,)`` this worker's public copy ``xhat_i`` (its leaves, flat).
    neighbor_sum: ``(D,)`` ``sum_{j in N_i} (xhat_j - xhat_i)`` over its
      neighbors' public copies.
  """

  count: jax.Array
  public: jax.Array
  neighbor_sum: jax.Array


class ChocoSlotState(NamedTuple):
  """State of compressed gossip and AL-DSGD with public copies per slot.

  Attributes:
    count: int32 step counter.
    public: ``(S, D)`` this worker's own public copy as seen on each slot.
    copies: ``(S, D)`` its copy of each slot's partner's public copy (equal,
      bit for bit, to that partner's ``public`` row of the same slot).
  """

  count: jax.Array
  public: jax.Array
  copies: jax.Array


def check_consensus_lr(consensus_lr):
  _checks.check_real(
    "consensus_lr",
    consensus_lr,
    low=0.0,
    high=1.0,
    low_open=True,
    hint=" It is CHOCO-SGD's consensus step gamma; pick it with "
    "jax_aldsgd.tune_consensus_lr (0.1 is a safe start).",
  )


def consensus_lr_given(consensus_lr) -> bool:
  """Whether ``consensus_lr`` is a concrete value other than the default 1.

  A traced one (``optax.inject_hyperparams`` injects every numeric default)
  says nothing: only ``compressor`` then decides.
  """
  value = _checks.concrete_scalar("consensus_lr", consensus_lr)
  return value is not None and value != 1.0


def _require_compressor(compressor, consensus_lr, name):
  if compressor is None:
    raise ValueError(
      f"{name} got consensus_lr={consensus_lr!r} without a compressor: the "
      "consensus step only applies to compressed (CHOCO-SGD) gossip. Pass "
      "compressor=jax_aldsgd.compressors.top_k(0.1) (or another), or leave "
      "consensus_lr at 1.0."
    )
  compressor = check_compressor(compressor)
  check_consensus_lr(consensus_lr)
  return compressor


def _no_skip_nonfinite(skip_nonfinite):
  if skip_nonfinite:
    raise NotImplementedError(
      "skip_nonfinite=True is not available with a compressor (a neighbor's "
      "public copy cannot be left out of one step without breaking the copies' "
      "agreement); drop skip_nonfinite or the compressor."
    )


# ----------------------------------------------------------------------------
# Leaves, messages and the wire.


class _Group(NamedTuple):
  """Leaves of one size, compressed together (``jax.vmap`` over the leaves)."""

  size: int
  leaves: tuple[int, ...]  # leaf indices in the pytree (for the random keys)
  offsets: tuple[int, ...]  # where each starts in the flat buffer


class _Layout(NamedTuple):
  groups: tuple[_Group, ...]
  inverse: np.ndarray  # flat position -> position in the groups' concatenation


def _layout(tree) -> _Layout:
  """The non-empty leaves, grouped by size, and how to put them back in order.

  Compressing leaf by leaf would unroll one compression per leaf and per slot
  (hundreds of leaves in a ResNet: minutes of compilation); leaves of the same
  size are compressed as one batch instead, each still on its own.
  """
  by_size: dict[int, list[tuple[int, int]]] = {}
  offset = 0
  for leaf_index, leaf in enumerate(jax.tree.leaves(tree)):
    size = int(np.prod(jnp.shape(leaf)))
    if size:
      by_size.setdefault(size, []).append((leaf_index, offset))
    offset += size
  groups = tuple(
    _Group(size, tuple(l for l, _ in members), tuple(o for _, o in members))
    for size, members in by_size.items()
  )
  order = (
    np.concatenate(
      [np.asarray(o) + np.arange(g.size) for g in groups for o in g.offsets]
    )
    if groups
    else np.zeros((0,), int)
  )
  return _Layout(groups, np.argsort(order).astype(np.int32))


def _draws(compressor, layout, step, worker, dtype):
  """Every leaf's random draws of this step (once per step, for every slot)."""
  if compressor.randomness is None:
    return [None] * len(layout.groups)
  out = []
  for group in layout.groups:

    def draw(leaf, size=group.size):
      return compressor.draw(compressor.leaf_key(step, leaf, worker), size, dtype)

    out.append(jax.vmap(draw)(jnp.asarray(group.leaves, jnp.int32)))
  return out


def _partner_draws(compressor, draws):
  """What decoding a partner's messages needs: shared draws only (random-k)."""
  return draws if compressor.randomness == "shared" else [None] * len(draws)


def _segments(flat, group):
  """``(leaves, size)``: the group's leaves, gathered from the flat buffer."""
  if len(group.offsets) == 1:
    start = group.offsets[0]
    return lax.slice(flat, (start,), (start + group.size,))[None]
  return flat[np.asarray(group.offsets)[:, None] + np.arange(group.size)]


def _encode(compressor, flat, layout, draws):
  return [
    jax.vmap(compressor.encode)(_segments(flat, group), draw)
    for group, draw in zip(layout.groups, draws)
  ]


def _add(compressor, flat, layout, messages, draws, weight):
  """``flat += weight * Q(...)`` for every leaf's message.

  Sparse messages (top-k, random-k) are scatter-added, k entries per leaf;
  dense ones are decoded and added in one pass.
  """
  dense = []
  for group, message, draw in zip(layout.groups, messages, draws):
    entries = compressor.sparse_entries(message, draw)
    if entries is not None:
      values, indices = entries  # (leaves, k) each
      where = jnp.asarray(np.asarray(group.offsets, np.int32)[:, None]) + indices
      flat = flat.at[where.ravel()].add(
        weight * values.ravel().astype(flat.dtype), unique_indices=True
      )
    else:
      decode = lambda m, d, size=group.size: compressor.decode(m, size, d)
      dense.append(jax.vmap(decode)(message, draw).ravel())
  if dense:
    flat = flat + weight * jnp.concatenate(dense)[layout.inverse].astype(flat.dtype)
  return flat


def _as_bytes(array):
  array = jnp.ravel(array)
  if array.dtype == jnp.uint8:
    return array
  return lax.bitcast_convert_type(array, jnp.uint8).reshape(-1)


def _from_bytes(data, shape, dtype):
  itemsize = np.dtype(dtype).itemsize
  if itemsize > 1:
    data = data.reshape(-1, itemsize)
  return lax.bitcast_convert_type(data, dtype).reshape(shape)


def _to_wire(messages, extras=()):
  """One uint8 buffer: every message array's bytes, then float32 extras."""
  parts = [_as_bytes(a) for message in messages for a in message]
  parts += [_as_bytes(jnp.asarray(e, jnp.float32)) for e in extras]
  return jnp.concatenate(parts)


def _wire_spec(messages):
  return tuple(
    tuple((tuple(a.shape), np.dtype(a.dtype)) for a in message) for message in messages
  )


def _from_wire(buffer, spec, num_extras=0):
  messages, offset = [], 0
  for message in spec:
    arrays = []
    for shape, dtype in message:
      size = int(np.prod(shape)) * dtype.itemsize
      arrays.append(
        _from_bytes(lax.slice(buffer, (offset,), (offset + size,)), shape, dtype)
      )
      offset += size
    messages.append(tuple(arrays))
  extras = [
    _from_bytes(
      lax.slice(buffer, (offset + 4 * e,), (offset + 4 * e + 4,)),
      (),
      np.dtype(np.float32),
    )
    for e in range(num_extras)
  ]
  return messages, extras


def choco_message_bytes(
  params, compressor: Compressor, *, with_loss: bool = False
) -> int:
  """Bytes one worker sends along one active matching under compressed gossip.

  The sum over the leaves of ``compressor.message_bytes(leaf size)`` (values in
  the parameters' float32-or-wider dtype), plus the float32 loss for AL-DSGD.

  Args:
    params: one worker's parameters (arrays or ``jax.ShapeDtypeStruct``).
    compressor: one of `jax_aldsgd.compressors`.
    with_loss: True for `adjacent_leader` (AL-DSGD), False for `gossip`.

  Example:
    >>> import jax.numpy as jnp, jax_aldsgd as ald
    >>> params = {"w": jnp.zeros((100, 10)), "b": jnp.zeros(10)}
    >>> ald.choco_message_bytes(params, ald.compressors.top_k(0.1))  # 101 x (4 + 4)
    808
    >>> # Bits (125 + 2 bytes), a float32 norm per leaf, and the loss:
    >>> ald.choco_message_bytes(params, ald.compressors.scaled_sign(), with_loss=True)
    139
  """
  compressor = check_compressor(compressor)
  leaves = jax.tree.leaves(params)
  dtype = jnp.result_type(jnp.float32, *(leaf.dtype for leaf in leaves))
  total = sum(
    compressor.message_bytes(int(np.prod(leaf.shape)), dtype)
    for leaf in leaves
    if int(np.prod(leaf.shape))
  )
  return int(total + (4 if with_loss else 0))


# ----------------------------------------------------------------------------
# The transforms.


def _init(params, per_slot: bool, num_slots: int):
  flat, _ = _exchange.pack(params)
  count = jnp.zeros([], jnp.int32)
  if per_slot:
    zeros = jnp.zeros((num_slots,) + flat.shape, flat.dtype)
    return ChocoSlotState(count, zeros, zeros)
  return ChocoState(count, jnp.zeros_like(flat), jnp.zeros_like(flat))


def _fixed_graph_step(compressor, schedule, axis_name, state, flat, layout, near, me):
  """Two-buffer CHOCO on a fixed graph: returns (new state, neighbor sum)."""
  step = state.count
  draws = _draws(compressor, layout, step, me, flat.dtype)
  messages = _encode(compressor, flat - state.public, layout, draws)
  spec = _wire_spec(messages)
  public = _add(compressor, state.public, layout, messages, draws, 1)
  # sum_j (xhat_j - xhat_i) gains sum_j q_j - d_i q_i.
  degree = near.degrees[me].astype(flat.dtype)
  neighbor_sum = _add(compressor, state.neighbor_sum, layout, messages, draws, -degree)

  def combine(total, received, present, common):
    _, partner_draws = common
    received_messages, _ = _from_wire(received, spec)
    return _add(
      compressor,
      total,
      layout,
      received_messages,
      partner_draws,
      present.astype(total.dtype),
    )

  neighbor_sum = _exchange.fold(
    _to_wire(messages),
    schedule,
    step,
    axis_name,
    combine,
    lambda common: common[0],
    near.present,
    (neighbor_sum, _partner_draws(compressor, draws)),
  )
  return ChocoState(step + 1, public, neighbor_sum), neighbor_sum


def _slot_step(
  compressor, schedule, axis_name, state, flat, layout, near, me, loss=None
):
  """Per-slot CHOCO: returns (new state, gossip sum, leader diff, max-degree diff).

  The sums are of public-copy differences ``c_i^s - h_i^s`` over the present
  slots; the two diffs are those of the adjacent leader and the max-degree node
  (zero when it is the worker itself), both only when ``loss`` is given.
  """
  step = state.count
  with_loss = loss is not None
  dtype = flat.dtype
  draws = _draws(compressor, layout, step, me, dtype)
  spec = _wire_spec(
    jax.eval_shape(lambda v, d: _encode(compressor, v, layout, d), flat, draws)
  )
  zeros = jnp.zeros_like(flat)
  carry = (zeros,)  # the gossip sum
  inputs = (
    flat,
    draws,
    _partner_draws(compressor, draws),
    near.present,
    near.degrees[near.partner],
  )
  if with_loss:
    loss = jnp.where(jnp.isfinite(loss), loss, jnp.inf).astype(jnp.float32)
    carry += (zeros, zeros, loss, near.degrees[me])
    inputs += (loss,)

  # Each slot's branch sees only its rows: (public, copy) = (h_i^s, c_i^s).
  def build(s, carry_row, inputs):
    carry, (public, copy) = carry_row
    flat, draws, _, present = inputs[:4]
    messages = _encode(compressor, flat - public, layout, draws)
    public = _add(compressor, public, layout, messages, draws, present[s].astype(dtype))
    wire = _to_wire(messages, inputs[5:])  # the loss for AL-DSGD
    return wire, (carry, (public, copy))

  def combine(s, carry_row, received, inputs):
    carry, (public, copy) = carry_row
    _, _, partner_draws, present, partner_degree = inputs[:5]
    messages, extras = _from_wire(received, spec, int(with_loss))
    copy = _add(
      compressor, copy, layout, messages, partner_draws, present[s].astype(dtype)
    )
    diff = copy - public
    gossip_sum = carry[0] + jnp.where(present[s], diff, 0)
    if not with_loss:
      return (gossip_sum,), (public, copy)
    # The first strict argmin of the loss and argmax of the degree over
    # S_i = [i] + N_i (self first), as in adjacent_leader.
    leader, target, best_loss, best_degree = carry[1:]
    better = present[s] & (extras[0] < best_loss)
    higher = present[s] & (partner_degree[s] > best_degree)
    carry = (
      gossip_sum,
      jnp.where(better, diff, leader),
      jnp.where(higher, diff, target),
      jnp.where(better, extras[0], best_loss),
      jnp.where(higher, partner_degree[s], best_degree),
    )
    return carry, (public, copy)

  carry, (public, copies) = _exchange.fold_messages(
    schedule,
    step,
    axis_name,
    build,
    combine,
    carry,
    (state.public, state.copies),
    inputs,
  )
  new_state = ChocoSlotState(step + 1, public, copies)
  if with_loss:
    return new_state, carry[0], carry[1], carry[2]
  return new_state, carry[0], None, None


def choco_gossip(
  schedule: Schedule,
  axis_name: str = "workers",
  *,
  compressor,
  consensus_lr=1.0,
  skip_nonfinite: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Compressed gossip (CHOCO-SGD); use it as ``gossip(..., compressor=...)``.

  See `jax_aldsgd.gossip` and this module's docstring (scheme and memory).
  """
  from jax_aldsgd._gossip import check_params, check_schedule  # no import cycle

  schedule = check_schedule(schedule)
  compressor = _require_compressor(compressor, consensus_lr, "gossip")
  _no_skip_nonfinite(skip_nonfinite)
  per_slot = not isinstance(schedule, Full)

  def init_fn(params):
    _exchange.check_float_leaves(params, "params")
    return _init(params, per_slot, schedule.num_slots)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    check_params(params, "gossip")
    me = _exchange.worker_index(axis_name, schedule)
    x_half = jax.tree.map(jnp.add, params, updates)
    flat, unpack = _exchange.pack(x_half)
    layout = _layout(x_half)
    near = _exchange.neighborhood(schedule, state.count, me, flat.dtype)
    if per_slot:
      state, gossip_sum, _, _ = _slot_step(
        compressor, schedule, axis_name, state, flat, layout, near, me
      )
    else:
      state, gossip_sum = _fixed_graph_step(
        compressor, schedule, axis_name, state, flat, layout, near, me
      )
    gamma = jnp.asarray(consensus_lr, flat.dtype)
    delta_tree, _ = unpack(gamma * (near.weight * gossip_sum))
    new_updates = jax.tree.map(
      lambda u, d: (u + d).astype(u.dtype), updates, delta_tree
    )
    return new_updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def choco_adjacent_leader(
  schedule: Schedule,
  axis_name: str = "workers",
  *,
  compressor,
  consensus_lr=1.0,
  c1=0.3,
  c2=0.1,
  p1=0.2,
  p2=0.2,
  pull_every=1,
  skip_nonfinite: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """AL-DSGD on CHOCO-SGD; use it as ``adjacent_leader(..., compressor=...)``.

  See `jax_aldsgd.adjacent_leader` and this module's docstring (the choice of
  leader and the pull toward public copies).
  """
  from jax_aldsgd._gossip import check_params, check_schedule  # no import cycle
  from jax_aldsgd._leader import _check_loss, check_pull_coefficients

  schedule = check_schedule(schedule)
  compressor = _require_compressor(compressor, consensus_lr, "adjacent_leader")
  check_pull_coefficients(c1, c2, p1, p2, pull_every)
  _no_skip_nonfinite(skip_nonfinite)

  def init_fn(params):
    _exchange.check_float_leaves(params, "params")
    return _init(params, True, schedule.num_slots)

  def update_fn(updates, state, params=None, *, loss=None, value=None, **extra_args):
    del extra_args
    check_params(params, "adjacent_leader")
    loss = _check_loss(loss, value)
    me = _exchange.worker_index(axis_name, schedule)
    step = state.count
    x_half = jax.tree.map(jnp.add, params, updates)
    flat, unpack = _exchange.pack(x_half)
    near = _exchange.neighborhood(schedule, step, me, flat.dtype)
    state, gossip_sum, leader, target = _slot_step(
      compressor, schedule, axis_name, state, flat, _layout(x_half), near, me, loss
    )
    dtype = flat.dtype
    gossip_sum = near.weight * gossip_sum
    keep = 1 - p1 - p2
    a = jnp.asarray(keep * (1 - c1 - c2), dtype)
    b = jnp.asarray(keep * c1 + p1, dtype)
    c = jnp.asarray(keep * c2 + p2, dtype)
    pull = (step % jnp.asarray(pull_every, jnp.int32)) == 0
    mixed = jnp.where(pull, a * gossip_sum + b * leader + c * target, gossip_sum)
    delta_tree, _ = unpack(jnp.asarray(consensus_lr, dtype) * mixed)
    new_updates = jax.tree.map(
      lambda u, d: (u + d).astype(u.dtype), updates, delta_tree
    )
    return new_updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ----------------------------------------------------------------------------
# Choosing the consensus step.


@dataclasses.dataclass(frozen=True)
class ConsensusTuning:
  """Result of `tune_consensus_lr`.

  Attributes:
    consensus_lr: the grid's ``gamma`` with the smallest final consensus error.
    grid: the ``gamma`` values tried.
    errors: final ``||X - mean(X)||_F^2 / ||X_0 - mean(X_0)||_F^2`` for each
      (``inf`` where the iteration diverged past 1e6).
    steps_to_floor: for each, the first step (checked every 10) at which the
      error was below 1e-12, or ``steps`` if never.
    seconds: how long the search took.
  """

  consensus_lr: float
  grid: tuple[float, ...]
  errors: tuple[float, ...]
  steps_to_floor: tuple[int, ...]
  seconds: float


def tune_consensus_lr(
  schedule: Schedule,
  compressor: Compressor,
  *,
  num_params: int = 1000,
  steps: int = 1000,
  seed: int = 0,
  grid=None,
) -> ConsensusTuning:
  """Picks CHOCO-SGD's consensus step by a grid search on pure compressed consensus.

  The epfml recipe: from random ``(n, num_params)`` data, run ``steps`` steps of
  compressed gossip alone (no gradients) with this schedule and compressor, with
  public copies per slot as `jax_aldsgd.gossip` keeps them, for each ``gamma``
  of a log grid in [1e-3, 1] (13 points, 4 per decade), and return the one with
  the smallest final consensus error (errors below 1e-12, float32 rounding,
  count as equal: the ``gamma`` that got there in the fewest steps wins; a
  ``gamma`` stops running once it gets there or its error passes 1e6).
  Host-side NumPy in float32; every ``gamma`` runs in one batch (seconds for 8
  workers, 1000 parameters, 1000 steps). Random compressors draw from NumPy here
  (the statistics, not the bits, matter); top-k may keep a few more entries on
  ties.

  Args:
    schedule: the gossip schedule to train with.
    compressor: one of `jax_aldsgd.compressors`.
    num_params: size of the random vector each worker holds (one leaf).
    steps: consensus steps per ``gamma``.
    seed: seed of the data and of the random compressors.
    grid: the ``gamma`` values to try (default: ``np.geomspace(1e-3, 1, 13)``).

  Returns:
    A `ConsensusTuning` with the chosen ``consensus_lr``, the grid and the errors.

  Example:
    >>> import jax_aldsgd as ald
    >>> g0, g1 = ald.topologies.paper_graph(0), ald.topologies.paper_graph(1)
    >>> S = ald.schedules
    >>> schedule = S.rotating([S.full(g1), S.full(g0)])
    >>> result = ald.tune_consensus_lr(schedule, ald.compressors.top_k(0.1),
    ...                                num_params=100, steps=200)
    >>> 1e-3 <= result.consensus_lr <= 1, len(result.errors)
    (True, 13)
  """
  from jax_aldsgd._gossip import check_schedule  # no import cycle

  started = time.perf_counter()
  schedule = check_schedule(schedule)
  compressor = check_compressor(compressor)
  num_params = _checks.check_integer("num_params", num_params, 1)
  steps = _checks.check_integer("steps", steps, 1)
  seed = _checks.check_integer("seed", seed, 0)
  grid = np.geomspace(1e-3, 1.0, 13) if grid is None else np.asarray(grid, float)
  if grid.ndim != 1 or not grid.size or np.any(~(grid > 0)) or np.any(grid > 1):
    raise ValueError(
      f"grid must be a non-empty list of consensus_lr values in (0, 1], got {grid!r}."
    )
  rng = np.random.default_rng(seed)
  n, dim = schedule.num_workers, num_params
  partners = np.asarray(schedule.slot_partners)
  weights = np.asarray(schedule.slot_weight, np.float32)
  # One row of public copies per (slot, matched worker): edge ends, in order.
  ends = [
    (s, i) for s in range(schedule.num_slots) for i in range(n) if partners[s, i] >= 0
  ]
  row_of = {end: r for r, end in enumerate(ends)}
  x = np.broadcast_to(
    rng.normal(size=(n, dim)).astype(np.float32), (len(grid), n, dim)
  ).copy()
  start_error = np.sum((x[0] - x[0].mean(0)) ** 2)
  public = np.zeros((len(grid), len(ends), dim), np.float32)
  gamma = grid[:, None, None].astype(np.float32)
  floor = 1e-12  # float32 consensus: below this the errors are rounding noise
  errors = np.full(len(grid), np.inf)
  reached = np.full(len(grid), steps)  # first step with error <= floor
  alive = np.arange(len(grid))  # rows still running (not at the floor, finite)
  plans = {}
  with np.errstate(all="ignore"):
    for k in range(steps):
      flags = schedule.active(k)
      plan = plans.get(flags.tobytes())
      if plan is None:
        active = [(s, i) for (s, i) in ends if flags[s]]
        mine = np.array([row_of[(s, i)] for s, i in active], int)
        theirs = np.array([row_of[(s, int(partners[s, i]))] for s, i in active], int)
        workers = np.array([i for _, i in active], int)
        incidence = np.zeros((n, len(active)), np.float32)
        incidence[workers, np.arange(len(active))] = [weights[s] for s, _ in active]
        plan = plans[flags.tobytes()] = (mine, theirs, workers, incidence)
      mine, theirs, workers, incidence = plan
      if len(mine):
        v = x[:, workers] - public[:, mine]  # (G, rows, dim)
        public[:, mine] += (
          compressor.numpy_apply(v.reshape(-1, dim), rng)
          .reshape(v.shape)
          .astype(np.float32)
        )
        x += gamma * (incidence @ (public[:, theirs] - public[:, mine]))
      if k % 10 == 9 or k == steps - 1:
        error = np.sum((x - x.mean(1, keepdims=True)) ** 2, axis=(1, 2))
        error = error / start_error
        errors[alive] = error
        done = (error <= floor) | ~(error < 1e6)  # at the floor, or diverged
        reached[alive[error <= floor]] = k + 1
        if done.any():  # stop computing those rows
          keep = ~done
          alive, x, public, gamma = alive[keep], x[keep], public[keep], gamma[keep]
        if not alive.size:
          break
  errors = np.where(errors < 1e6, errors, np.inf)  # diverged
  # The smallest final error; among those that reached the rounding floor, the
  # one that reached it first (the larger gamma on a tie).
  ranking = sorted(
    range(len(grid)), key=lambda g: (max(errors[g], floor), reached[g], -grid[g])
  )
  best = ranking[0]
  return ConsensusTuning(
    float(grid[best]),
    tuple(float(g) for g in grid),
    tuple(float(e) for e in errors),
    tuple(int(r) for r in reached),
    time.perf_counter() - started,
  )
