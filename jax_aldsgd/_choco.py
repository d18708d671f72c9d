"""CHOCO-SGD: gossip and AL-DSGD on compressed messages (docs/algorithm.md section 9).

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

AL-DSGD on CHOCO (`adjacent_leader` with a compressor) runs AL-DSGD's rule
(``_aldsgd``) as the uncompressed exchange does: the ranks (loss, health flag)
travel first, uncompressed, and give each worker its per-slot weights ``w_s``;
then the public copies move it by

  ``x_i = x_half_i + gamma sum_s w_s (xhat_{j_s} - xhat_i)``,

with, on edge s, ``xhat_j - xhat_i = c_i^s - h_i^s``. With the identity
compressor and ``gamma = 1`` the public copies equal ``x_half`` and this is
AL-DSGD exactly; with compression the pull, like the gossip, only trusts what
both ends of an edge know, and ``gamma`` damps it as it damps the gossip.

The message of one slot is one uint8 buffer: every leaf's compressed message
(e.g. top-k's k values and k int32 indices), bit-cast to bytes and concatenated;
one ``ppermute`` per active slot carries it.
Sparse messages are applied with a scatter-add of their k entries.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jax_aldsgd import (
  _aldsgd,
  _checks,
  _fold,
  _packing,
  _plan,
  _traffic,
  _workers,
)
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


def _to_wire(messages):
  """One uint8 buffer: every message array's bytes."""
  return jnp.concatenate([_as_bytes(a) for message in messages for a in message])


def _wire_spec(messages):
  return tuple(
    tuple((tuple(a.shape), np.dtype(a.dtype)) for a in message) for message in messages
  )


def _from_wire(buffer, spec):
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
  return messages


def choco_message_bytes(
  params, compressor: Compressor, *, with_loss: bool = False
) -> int:
  """Bytes one worker sends along one active matching under compressed gossip.

  The sum over the leaves of ``compressor.message_bytes(leaf size)`` (values in
  the parameters' float32-or-wider dtype), plus, for AL-DSGD, the loss and the
  health flag (two float32-or-wider scalars, sent first in a ``ppermute`` of
  their own: `jax_aldsgd.traffic` gives the parts).

  Args:
    params: one worker's parameters (arrays or ``jax.ShapeDtypeStruct``).
    compressor: one of `jax_aldsgd.compressors`.
    with_loss: True for `adjacent_leader` (AL-DSGD), False for `gossip`.

  Example:
    >>> import jax.numpy as jnp, jax_aldsgd as ald
    >>> params = {"w": jnp.zeros((100, 10)), "b": jnp.zeros(10)}
    >>> ald.choco_message_bytes(params, ald.compressors.top_k(0.1))  # 101 x (4 + 4)
    808
    >>> # Bits (125 + 2 bytes), a float32 norm per leaf, the loss and health flag:
    >>> ald.choco_message_bytes(params, ald.compressors.scaled_sign(), with_loss=True)
    143
  """
  compressor = check_compressor(compressor)
  leaves = jax.tree.leaves(params)
  dtype = jnp.result_type(jnp.float32, *(leaf.dtype for leaf in leaves))
  total = sum(
    compressor.message_bytes(int(np.prod(leaf.shape)), dtype)
    for leaf in leaves
    if int(np.prod(leaf.shape))
  )
  return int(total + (_ranks_bytes(params) if with_loss else 0))


def _ranks_bytes(params) -> int:
  """AL-DSGD's (loss, health flag) message: two scalars of the packed dtype."""
  return _packing.message_bytes(params, 2) - _packing.message_bytes(params)


# ----------------------------------------------------------------------------
# The transforms.


def _init(params, per_slot: bool, num_slots: int):
  _checks.check_float_leaves(params, "params")
  flat, _ = _packing.pack(params)
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
    return _add(
      compressor,
      total,
      layout,
      _from_wire(received, spec),
      partner_draws,
      present.astype(total.dtype),
    )

  neighbor_sum = _fold.fold(
    _to_wire(messages),
    schedule=schedule,
    step=step,
    axis_name=axis_name,
    combine=combine,
    start=lambda common: common[0],
    per_slot=near.present,
    common=(neighbor_sum, _partner_draws(compressor, draws)),
  )
  return ChocoState(step + 1, public, neighbor_sum), neighbor_sum


def _slot_step(compressor, schedule, axis_name, state, flat, layout, near, me, weights):
  """Per-slot CHOCO: returns (new state, ``sum_s w_s (c_i^s - h_i^s)``).

  ``weights`` is ``(S,)``: 0 where a slot is inactive or its partner absent.
  """
  step = state.count
  dtype = flat.dtype
  draws = _draws(compressor, layout, step, me, dtype)
  spec = _wire_spec(
    jax.eval_shape(lambda v, d: _encode(compressor, v, layout, d), flat, draws)
  )
  inputs = (flat, draws, _partner_draws(compressor, draws), near.present, weights)

  # Each slot's branch sees only its rows: (public, copy) = (h_i^s, c_i^s).
  def build(s, carry_row, inputs):
    total, (public, copy) = carry_row
    flat, draws, _, present, _ = inputs
    messages = _encode(compressor, flat - public, layout, draws)
    public = _add(compressor, public, layout, messages, draws, present[s].astype(dtype))
    return _to_wire(messages), (total, (public, copy))

  def combine(s, carry_row, received, inputs):
    total, (public, copy) = carry_row
    _, _, partner_draws, present, weights = inputs
    messages = _from_wire(received, spec)
    copy = _add(
      compressor, copy, layout, messages, partner_draws, present[s].astype(dtype)
    )
    return _aldsgd.add_weighted(total, copy, weights[s], public), (public, copy)

  total, (public, copies) = _fold.fold_messages(
    schedule=schedule,
    step=step,
    axis_name=axis_name,
    build=build,
    combine=combine,
    carry=jnp.zeros_like(flat),
    rows=(state.public, state.copies),
    inputs=inputs,
  )
  return ChocoSlotState(step + 1, public, copies), total


def _choco_traffic(schedule, compressor, with_ranks):
  def traffic_of(params):
    message = choco_message_bytes(params, compressor)
    parts = (_ranks_bytes(params), message) if with_ranks else (message,)
    return _traffic.Traffic(schedule.num_workers, sum(parts), parts, schedule)

  return traffic_of


def compressed_gossip(
  schedule: Schedule, axis_name: str, *, compressor, consensus_lr
) -> _traffic.Transformation:
  """Compressed gossip (CHOCO-SGD); use it as ``gossip(..., compressor=...)``.

  See `jax_aldsgd.gossip` and this module's docstring (scheme and memory).
  """
  compressor = _require_compressor(compressor, consensus_lr, "gossip")
  per_slot = not isinstance(schedule, Full)

  def init_fn(params):
    return _init(params, per_slot, schedule.num_slots)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _checks.check_params(params, "gossip")
    me = _workers.worker_index(axis_name, schedule)
    x_half = jax.tree.map(jnp.add, params, updates)
    flat, unpack = _packing.pack(x_half)
    layout = _layout(x_half)
    near = _plan.neighborhood(schedule, state.count, me, flat.dtype)
    if per_slot:
      weights = near.present.astype(flat.dtype)  # alpha multiplies the sum
      state, gossip_sum = _slot_step(
        compressor, schedule, axis_name, state, flat, layout, near, me, weights
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

  return _traffic.transformation(
    init_fn, update_fn, _choco_traffic(schedule, compressor, False)
  )


def compressed_adjacent_leader(
  schedule: Schedule,
  axis_name: str,
  *,
  compressor,
  consensus_lr,
  rule: _aldsgd.PullRule,
) -> _traffic.Transformation:
  """AL-DSGD on CHOCO-SGD; use it as ``adjacent_leader(..., compressor=...)``.

  See `jax_aldsgd.adjacent_leader` and this module's docstring (the rule is
  AL-DSGD's, ``_aldsgd``; the public copies stand in for the parameters).
  """
  compressor = _require_compressor(compressor, consensus_lr, "adjacent_leader")

  def init_fn(params):
    return _init(params, True, schedule.num_slots)

  def update_fn(updates, state, params=None, *, loss=None, value=None, **extra_args):
    del extra_args
    loss, me, x_half = _aldsgd.step_inputs(
      updates, params, loss, value, axis_name, schedule
    )
    step = state.count
    flat, unpack = _packing.pack(x_half)
    near = _plan.neighborhood(schedule, step, me, flat.dtype)
    healthy = _packing.buffer_finite(flat) & jnp.isfinite(loss)
    coefficients = rule.coefficients(step, near.weight, flat.dtype)
    weights = _aldsgd.ranked_weights(
      schedule=schedule,
      step=step,
      axis_name=axis_name,
      near=near,
      rank=_aldsgd.own_rank(loss, healthy, near.degrees[me], flat.dtype),
      coefficients=coefficients,
      loss=loss,
      healthy=healthy,
      mixes_all=True,
    )
    state, mixed = _slot_step(
      compressor, schedule, axis_name, state, flat, _layout(x_half), near, me, weights
    )
    delta_tree, _ = unpack(jnp.asarray(consensus_lr, flat.dtype) * mixed)
    new_updates = jax.tree.map(
      lambda u, d: (u + d).astype(u.dtype), updates, delta_tree
    )
    return new_updates, state

  return _traffic.transformation(
    init_fn, update_fn, _choco_traffic(schedule, compressor, True)
  )
