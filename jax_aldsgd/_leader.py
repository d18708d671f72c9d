"""AL-DSGD: gossip plus a pull toward the adjacent leader and the max-degree neighbor."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_aldsgd import _checks, _choco, _exchange, _variants
from jax_aldsgd._gossip import check_params, check_schedule
from jax_aldsgd._schedules import Schedule


class AdjacentLeaderState(NamedTuple):
  """State of `adjacent_leader`: the step counter that drives the schedule."""

  count: jax.Array  # int32 scalar


def _check_loss(loss, value=None) -> jax.Array:
  """The loss from ``loss=``, else from optax's ``value=`` (reduce_on_plateau)."""
  loss = value if loss is None else loss
  if loss is None:
    raise ValueError(
      "adjacent_leader needs this worker's scalar mini-batch loss to rank "
      "neighbors: call update(updates, state, params, loss=loss) (or "
      "value=loss, optax's name), with the loss of the current parameters on "
      "this worker's batch."
    )
  loss = jnp.asarray(loss)
  if loss.shape != ():
    raise ValueError(
      f"loss must be this worker's scalar loss, got shape "
      f"{loss.shape}; reduce it (e.g. mean over the batch) and, "
      "under jax.shard_map, squeeze the worker axis."
    )
  if not jnp.issubdtype(loss.dtype, jnp.floating):
    raise TypeError(f"loss must be a floating-point scalar, got dtype {loss.dtype}.")
  return loss


def check_pull_coefficients(c1, c2, p1, p2, pull_every):
  """Validates AL-DSGD's coefficients (concrete values; tracers pass through)."""
  for name, value in (("c1", c1), ("c2", c2), ("p1", p1), ("p2", p2)):
    _checks.check_real(name, value, low=0.0, high=1.0)
  for a, b, va, vb in (("c1", "c2", c1, c2), ("p1", "p2", p1, p2)):
    x, y = _checks.concrete_scalar(a, va), _checks.concrete_scalar(b, vb)
    if x is not None and y is not None and x + y > 1.0:
      raise ValueError(
        f"{a} + {b} must be <= 1 (they are averaging weights), got "
        f"{a}={x} + {b}={y} = {x + y}."
      )
  every = _checks.concrete_scalar("pull_every", pull_every)
  if every is not None and (not float(every).is_integer() or every < 1):
    raise ValueError(
      f"pull_every must be an integer >= 1 (pull every that many "
      f"steps; 1 pulls at every step), got {pull_every!r}."
    )


def adjacent_leader_message_bytes(params) -> int:
  """Bytes one worker sends along one active matching under `adjacent_leader`.

  The packed parameters plus two scalars: the loss and a health flag (one
  message, or, on schedules with several active matchings per step, the two
  scalars first and then the parameters).

  Args:
    params: one worker's parameters (arrays or ``jax.ShapeDtypeStruct``).
  """
  return _exchange.message_bytes(params, 2)


def adjacent_leader_message_parts(params, schedule: Schedule) -> tuple[int, ...]:
  """The ``ppermute`` sizes (bytes) of one active matching under `adjacent_leader`.

  In the order sent; they add up to `adjacent_leader_message_bytes`. On a
  schedule with at most one active matching per step, one message; with
  several, the loss and health flag first, then the parameters (see
  `adjacent_leader`).

  Args:
    params: one worker's parameters (arrays or ``jax.ShapeDtypeStruct``).
    schedule: the schedule `adjacent_leader` runs.
  """
  whole = adjacent_leader_message_bytes(params)
  if _exchange.one_slot_per_step(check_schedule(schedule)):
    return (whole,)
  parameters = _exchange.message_bytes(params)
  return (whole - parameters, parameters)


def adjacent_leader(
  schedule: Schedule,
  axis_name: str = "workers",
  *,
  c1: float = 0.3,
  c2: float = 0.1,
  p1: float = 0.2,
  p2: float = 0.2,
  pull_every: int = 1,
  skip_nonfinite: bool = False,
  overlap: bool = False,
  every: int = 1,
  pull_restart_every: int | None = None,
  compressor=None,
  consensus_lr=1.0,
) -> optax.GradientTransformationExtraArgs:
  """AL-DSGD: gossip, then averaging with and a pull toward two chosen neighbors.

  Runs inside ``jax.shard_map`` over ``axis_name``, one worker per device, after a
  local optimizer in ``optax.chain`` (ALGORITHM.md section 2). With ``x_hat = x + u``
  the local step's result and ``l`` the workers' pre-step losses, worker i:

  1. gossips: ``v_i = x_hat_i + alpha sum_{j in N_i} (x_hat_j - x_hat_i)``;
  2. on a pull step (``k % pull_every == 0``) with ``N_i`` non-empty, takes
     ``S_i = [i] + N_i`` (self first, then partners by matching index), the
     adjacent leader ``b = first argmin_{j in S_i} l_j`` and the max-degree node
     ``m = first argmax_{j in S_i} d_j`` (``d`` = active degree this step), and moves to

     ``y = (1 - c1 - c2) v_i + c1 x_hat_b + c2 x_hat_m``
     ``x_i = y - p1 (y - x_hat_b) - p2 (y - x_hat_m)``

     i.e. ``x_i = A v_i + B x_hat_b + C x_hat_m`` with ``A = (1-p1-p2)(1-c1-c2)``,
     ``B = (1-p1-p2) c1 + p1``, ``C = (1-p1-p2) c2 + p2`` (0.36, 0.38, 0.26 by default).

  Since ``A + B + C = 1``, the update is computed as differences (the way
  ``optax.lookahead`` writes its pull): ``x_i - x_hat_i = A (v_i - x_hat_i) +
  B (x_hat_b - x_hat_i) + C (x_hat_m - x_hat_i)``, and the returned updates are
  ``x_i - x``, i.e. one weighted sum over the active slots: ``x_i - x_hat_i =
  sum_s w_s (x_hat_{j_s} - x_hat_i)``, ``w_s`` being ``A alpha`` if s mixes, plus
  ``B`` if its partner is ``b``, plus ``C`` if it is ``m``. Each worker sends
  its parameters, loss and health flag along each active matching: on a
  schedule with one active matching per step in one ``ppermute`` (the slot's
  weight is known when it arrives); with several, the loss and health flag
  first (an 8-byte ``ppermute`` per matching) and then the parameters, so that
  ``b`` and ``m`` are known before any parameters arrive and the sum needs one
  parameter-sized accumulator, as gossip does. The degrees are computed
  locally from the schedule. The loss is ranked as given; the mixing keeps rows
  stochastic but, unlike plain gossip, does not preserve the workers' mean.

  A worker whose loss or parameters are not finite is never chosen as leader or
  max-degree node (the next eligible one in ``S_i`` order is), and with
  ``skip_nonfinite=True`` it is also left out of its neighbors' gossip average.

  Args:
    schedule: which matchings are active per step and their neighbor weight;
      its ``num_workers`` must equal the axis size.
    axis_name: the mesh axis the workers are mapped over.
    c1: averaging weight of the adjacent leader (performance term).
    c2: averaging weight of the max-degree node (degree term); ``c1 + c2 <= 1``.
    p1: corrective pull toward the adjacent leader.
    p2: corrective pull toward the max-degree node; ``p1 + p2 <= 1``.
    pull_every: pull period ``I`` (the reference's default for AL-DSGD is 1).
    pull_restart_every: count the pull period from the start of every
      ``pull_restart_every`` steps (the reference restarts it each epoch,
      ``batch_idx % I``: pass the steps per epoch, as to
      ``schedules.rotating(..., restart_every=)``); ``None`` (default): from
      step 0.
    skip_nonfinite: leave non-finite neighbors out of the gossip average.
    overlap: adapt-while-combine: ``x+ = A v + B x_b + C x_m + u`` with ``v = W
      x`` and ``b``, ``m`` chosen from ``x`` and the pre-step losses, so the
      exchange carries ``x`` and the loss: it waits for the forward pass (the
      loss) but not for the gradient. Default False (the reference's order).
    every: communicate (gossip and pull) at steps 0, every, 2 every, ... only,
      the identity in between. The schedule's step counter and ``pull_every``
      count communication steps (``pull_every=2, every=4``: pull at steps 0,
      8, 16, ...).
    compressor: one of `jax_aldsgd.compressors` to run AL-DSGD on CHOCO-SGD: the
      leader and max-degree node are chosen as here (uncompressed losses,
      degrees), the mixing and the pull use the neighbors' public copies, scaled
      by ``consensus_lr``; the state keeps 2 parameter-sized buffers per slot
      (details in ``jax_aldsgd._choco``).
    consensus_lr: CHOCO-SGD's consensus step ``gamma`` in (0, 1] (with a
      compressor only).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs ``params``
    and this worker's scalar mini-batch loss as ``loss=`` or as ``value=``
    (optax's name, so it chains with ``optax.contrib.reduce_on_plateau`` and
    line searches without passing the loss twice); ``loss=`` wins if both are
    given.

  Raises:
    ValueError: for coefficients outside [0, 1], ``c1 + c2 > 1``, ``p1 + p2 > 1``,
      ``pull_every < 1``; at trace time for a missing ``params`` or ``loss``, a
      non-scalar ``loss``, or an axis whose size is not ``schedule.num_workers``.

  Example:
    Use it instead of `gossip` (it does the gossip averaging itself: chaining
    both would exchange twice), after any local optimizer, passing each worker's
    loss:

    >>> import jax, jax.numpy as jnp, optax, jax_aldsgd as ald
    >>> mesh = ald.worker_mesh(8)  # on CPU: ald.emulate_cpu_devices(8) before JAX starts
    >>> g0, g1 = ald.topologies.paper_graph(0), ald.topologies.paper_graph(1)
    >>> schedule = ald.schedules.rotating([ald.schedules.full(g1), ald.schedules.full(g0)])
    >>> tx = optax.chain(optax.sgd(0.1), ald.adjacent_leader(schedule))
    >>> def step(w, state, target):  # one worker's view: its w and its target
    ...   loss, grad = jax.value_and_grad(lambda w: jnp.sum((w - target) ** 2))(w)
    ...   updates, state = tx.update(grad, state, w, loss=loss)
    ...   return optax.apply_updates(w, updates), state
    >>> step = jax.jit(ald.worker_map(step, mesh))
    >>> target = jnp.arange(16.0).reshape(8, 2)  # (workers, parameters)
    >>> w = jnp.zeros((8, 2))
    >>> state = jax.jit(ald.worker_map(tx.init, mesh))(w)
    >>> for _ in range(50):
    ...   w, state = step(w, state, target)
    >>> bool(w.std(0).max() < 1.0)
    True

  References:
    He, Wang & Choromanska, 2024, "Adjacent Leader Decentralized Stochastic
    Gradient Descent" (arXiv 2405.11389).
  """
  every = _variants.check_every(every)
  if pull_restart_every is not None:
    pull_restart_every = _checks.check_integer(
      "pull_restart_every", pull_restart_every, 1
    )
  if compressor is not None or _choco.consensus_lr_given(consensus_lr):
    if (
      pull_restart_every is not None
      and _checks.concrete_scalar("pull_every", pull_every) != 1
    ):
      raise ValueError(
        "pull_restart_every is not available with a compressor (CHOCO-SGD's "
        "AL-DSGD counts its pull period from step 0); leave it None, or use "
        "pull_every=1 (every step pulls, so the phase does not matter)."
      )
    return _variants.apply(
      _choco.choco_adjacent_leader(
        schedule,
        axis_name,
        compressor=compressor,
        consensus_lr=consensus_lr,
        c1=c1,
        c2=c2,
        p1=p1,
        p2=p2,
        pull_every=pull_every,
        skip_nonfinite=skip_nonfinite,
      ),
      overlap=overlap,
      every=every,
    )
  schedule = check_schedule(schedule)
  check_pull_coefficients(c1, c2, p1, p2, pull_every)
  skip_nonfinite = bool(skip_nonfinite)

  def init_fn(params):
    del params
    return AdjacentLeaderState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, *, loss=None, value=None, **extra_args):
    del extra_args
    check_params(params, "adjacent_leader")
    loss = _check_loss(loss, value)
    me = _exchange.worker_index(axis_name, schedule)
    step = state.count
    x_hat = jax.tree.map(jnp.add, params, updates)
    one_slot = _exchange.one_slot_per_step(schedule)
    if one_slot:  # the loss and the health flag travel with the parameters
      buffer, unpack = _exchange.pack(x_hat, (loss,), health=True)
      self_ok = _exchange.buffer_healthy(buffer)  # x_hat and the loss are finite
    else:  # they travel first, in a message of their own
      buffer, unpack = _exchange.pack(x_hat)
      self_ok = _exchange.buffer_finite(buffer) & jnp.isfinite(loss)
    near = _exchange.neighborhood(schedule, step, me, buffer.dtype)

    dtype = buffer.dtype
    keep = 1 - p1 - p2
    a = jnp.asarray(keep * (1 - c1 - c2), dtype)
    b = jnp.asarray(keep * c1 + p1, dtype)
    c = jnp.asarray(keep * c2 + p2, dtype)
    phase = step if pull_restart_every is None else step % pull_restart_every
    pull = (phase % jnp.asarray(pull_every, jnp.int32)) == 0
    # x_i - x_hat_i = sum_s w_s (x_hat_{j_s} - x_hat_i), with per slot
    # w_s = mix [s mixes] + pull_b [s = b] + pull_c [s = m]:
    zero = jnp.zeros((), dtype)
    coefficients = (
      jnp.where(pull, a * near.weight, near.weight),  # a alpha, or alpha
      jnp.where(pull, b, zero),
      jnp.where(pull, c, zero),
    )
    own_rank = (
      jnp.where(self_ok, loss.astype(dtype), jnp.inf),
      jnp.where(self_ok, near.degrees[me], -1),
    )
    args = (buffer, schedule, step, axis_name, near, own_rank, coefficients)
    if one_slot:
      delta = _fold_one_slot(*args, skip_nonfinite)
    else:
      ranks = jnp.stack([loss.astype(dtype), self_ok.astype(dtype)])
      delta = _fold_ranked_first(*args, skip_nonfinite, ranks)
    delta_tree, _ = unpack(delta)
    new_updates = jax.tree.map(
      lambda u, d: (u + d).astype(u.dtype), updates, delta_tree
    )
    return new_updates, AdjacentLeaderState(count=step + 1)

  return _variants.apply(
    optax.GradientTransformationExtraArgs(init_fn, update_fn),
    overlap=overlap,
    every=every,
  )


def _slot_weight(coefficients, mixes, leader, max_degree):
  """``w_s = mix [mixes] + pull_b [leader] + pull_c [max_degree]`` (bool flags)."""
  mix, pull_b, pull_c = coefficients
  dtype = mix.dtype
  return mix * mixes.astype(dtype) + (
    pull_b * leader.astype(dtype) + pull_c * max_degree.astype(dtype)
  )


def _add_weighted(total, received, weight, own):
  """``total + weight (received - own)``, and ``total`` untouched where weight is 0.

  The selection keeps a non-finite ``received`` of a slot with weight 0 out.
  Written as a select between the two sums (not ``total + select(...)``),
  XLA:CPU compiles it to the same float operations under every worker layout.
  """
  return jnp.where(weight != 0, total + weight * (received - own), total)


def _fold_one_slot(
  buffer, schedule, step, axis_name, near, own_rank, coefficients, skip_nonfinite
):
  """``x_i - x_hat_i`` on a schedule with at most one active slot per step.

  ``S_i`` is ``[i]`` or ``[i, j]``: the partner j is the leader if it is
  healthy and its loss (in its message, with its health flag) is strictly
  lower than this worker's, the max-degree node if healthy with a strictly
  higher active degree; so the slot's weight is known when its message
  arrives (computed there, as `_exchange.fold`'s ``peek``), and the fold
  fuses the one weighted add with the update.
  """

  def weigh(received, at_slot, common):
    present, partner_degree = at_slot
    _, (own_loss, own_degree), coefficients = common
    ok = present & _exchange.buffer_healthy(received)
    return _slot_weight(
      coefficients,
      ok if skip_nonfinite else present,
      ok & (received[-2] < own_loss),
      ok & (partner_degree > own_degree),
    )

  def combine(total, received, weight, common):
    return _add_weighted(total, received, weight, common[0])

  return _exchange.fold(
    buffer,
    schedule,
    step,
    axis_name,
    combine,
    lambda common: jnp.zeros_like(common[0]),
    (near.present, near.degrees[near.partner]),
    (buffer, own_rank, coefficients),
    peek=weigh,
  )


def _fold_ranked_first(
  buffer, schedule, step, axis_name, near, own_rank, coefficients, skip_nonfinite, ranks
):
  """``x_i - x_hat_i`` on any schedule: the ranks travel first, then one weighted sum.

  First every active slot exchanges ``ranks``, this worker's (loss, health
  flag), so each worker knows its leader ``b`` (first strict argmin of the
  loss) and max-degree node ``m`` (first strict argmax of the active degree)
  among the healthy entries of ``S_i = [i] + N_i`` (self, then partners by
  slot) before any parameters arrive. Then the parameters' fold (``buffer``:
  the parameters alone, gossip's message) keeps one accumulator, ``sum_s w_s
  (x_hat_{j_s} - x_hat_i)`` (`_slot_weight`), rather than three
  parameter-sized ones (the gossip sum, the leader's and the max-degree
  node's differences). Each active matching costs two collective-permutes (8
  bytes, then the parameters): the bytes of one message of both.
  """
  num_slots = schedule.num_slots

  def keep_row(table, received, at_slot, own):
    del own
    present, row = at_slot
    return jnp.where(row[:, None] & present, received[None, :], table)

  table = _exchange.fold(
    ranks,
    schedule,
    step,
    axis_name,
    keep_row,
    lambda own: jnp.zeros_like(own, shape=(num_slots, 2)),
    (near.present, jnp.eye(num_slots, dtype=bool)),
    ranks,
  )  # (S, 2): row s = the partner's (loss, health) in active slot s, else 0
  neighbor_ok = near.present & (table[:, 1] > 0.5)
  partner_degree = near.degrees[near.partner]
  best_loss, best_degree = own_rank
  leader = target = jnp.asarray(-1)
  for s in range(num_slots):  # S_i order: self, then slot by slot
    better = neighbor_ok[s] & (table[s, 0] < best_loss)
    best_loss = jnp.where(better, table[s, 0], best_loss)
    leader = jnp.where(better, s, leader)
    higher = neighbor_ok[s] & (partner_degree[s] > best_degree)
    best_degree = jnp.where(higher, partner_degree[s], best_degree)
    target = jnp.where(higher, s, target)
  slots = jnp.arange(num_slots)
  weight = _slot_weight(
    coefficients,
    neighbor_ok if skip_nonfinite else near.present,
    slots == leader,
    slots == target,
  )
  return _exchange.fold(
    buffer, schedule, step, axis_name, _add_weighted, jnp.zeros_like, weight, buffer
  )
