"""The public exchanges: `gossip`, `adjacent_leader`, `allreduce`.

Each factory checks its options against the one table (``_compat``), builds
the rule that fits them (plain, compressed or delayed: ``_gossip``,
``_aldsgd``, ``_choco``, ``_pushsum``) and applies the wrappers its
``overlap`` and ``every`` keywords stand for (``_wrappers``).
"""

from __future__ import annotations

import optax

from jax_aldsgd import (
  _aldsgd,
  _checks,
  _choco,
  _compat,
  _gossip,
  _pushsum,
  _wrappers,
)
from jax_aldsgd._schedules import Schedule, check_schedule


def _compressed(compressor, consensus_lr) -> bool:
  return compressor is not None or _choco.consensus_lr_given(consensus_lr)


def gossip(
  schedule: Schedule,
  axis_name: str = "workers",
  *,
  skip_nonfinite: bool = False,
  overlap: bool = False,
  every: int = 1,
  delay: int | None = None,
  compressor=None,
  consensus_lr=1.0,
) -> optax.GradientTransformationExtraArgs:
  """Gossip averaging with the neighbors of the active matchings (D-PSGD, MATCHA).

  Runs inside ``jax.shard_map`` over ``axis_name``, one worker per device, after a
  local optimizer in ``optax.chain``. With ``x`` the parameters and ``u`` the
  incoming updates (so ``x_hat = x + u`` is the local step's result), worker i
  moves to (docs/algorithm.md section 2, step 5)

    ``v_i = x_hat_i + alpha_k sum_{s active, i matched in s} (x_hat_{j_s(i)} - x_hat_i)``

  i.e. ``v = W_k x_hat`` with ``W_k = I - alpha_k sum_{s in A_k} L_s`` (``alpha_k``
  of the step's graph: a rotating schedule runs one graph per step); the returned
  updates are ``v - x``. Each active matching costs one ``ppermute`` of the
  parameters; inactive matchings cost none.

  Args:
    schedule: which matchings are active per step and their neighbor weight
      (`jax_aldsgd.schedules`); its ``num_workers`` must equal the axis size.
    axis_name: the mesh axis the workers are mapped over.
    skip_nonfinite: if True, a neighbor whose parameters contain NaN/Inf is left
      out of the average for that step (its weight goes back to the worker itself),
      so one diverging worker does not poison its neighbors. Costs one finiteness
      reduction over the parameters per step.
    overlap: exchange the parameters ``x`` instead of ``x + u``
      (adapt-while-combine, Lian et al.'s form): ``x+ = W x + u``. The exchange
      then does not depend on the gradient, so it can run during the backward
      pass. Default False: the reference's ``x+ = W (x + u)``.
    every: communicate at steps 0, every, 2 every, ... only; in between the
      transform is the identity and issues no collective (local steps; with the
      complete graph, periodic averaging). The schedule's own step counter
      advances only on communication steps.
    delay: bounded staleness: neighbors' contributions are mixed in ``delay``
      communication steps after they were sent, in the mass-conserving
      push-sum form (see `jax_aldsgd._pushsum`); the state holds the ``delay``
      messages in flight. ``None`` or 0 (default) is plain gossip. It sets the
      state's shape, so it is static (not an ``inject_hyperparams`` value; its
      default is ``None`` for that reason). Not combinable with
      ``overlap``, ``skip_nonfinite`` or a compressor (`check_options`). A simulator of asynchrony: inside one
      jitted step it hides no latency.
    compressor: one of `jax_aldsgd.compressors` to run CHOCO-SGD (docs/algorithm.md
      section 9): each active matching carries only the compressed message
      (`jax_aldsgd.choco_message_bytes`). The state keeps public copies: 2
      parameter-sized buffers on a `full` schedule, 2 per slot (matching of
      each graph) on any other, so that each worker's copy of a neighbor's
      public copy stays exactly the neighbor's own (details in
      ``jax_aldsgd._choco``). None (default) sends the parameters.
    consensus_lr: CHOCO-SGD's consensus step ``gamma`` in (0, 1] (with a
      compressor only; see `jax_aldsgd.tune_consensus_lr`).

  Which options combine is `jax_aldsgd.check_options`' table; ``overlap`` and
  ``every`` are shorthands for `adapt_while_combine` and `every_steps`. On a
  directed schedule (slots that are permutations) this is gossip along the
  directed edges (with the one-peer exponential graph, SGP).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (`jax_aldsgd.traffic` says
    what a step sends); ``update`` needs ``params``.

  Example:
    After any local optimizer; eight workers, each pulled toward its own target,
    agree on the average target (gossip keeps the mean, 7.5 here):

    >>> import jax, jax.numpy as jnp, optax, jax_aldsgd as ald
    >>> mesh = ald.worker_mesh(8)  # on CPU: ald.emulate_cpu_devices(8) before JAX starts
    >>> schedule = ald.schedules.full(ald.topologies.ring(8))
    >>> tx = optax.chain(optax.sgd(0.1), ald.gossip(schedule))
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
    >>> round(float(w.mean()), 3), bool(w.std(0).max() < 1.5)
    (7.5, True)

  References:
    Lian et al., 2017, "Can Decentralized Algorithms Outperform Centralized
    Algorithms?"; Wang et al., 2019, "MATCHA" (arXiv 1905.09435).
  """
  schedule = check_schedule(schedule)
  every = _checks.check_every(every)
  delay = 0 if delay is None else _checks.check_integer("delay", delay, 0)
  skip_nonfinite = bool(skip_nonfinite)
  _compat.check_options(
    "gossip",
    compressor=compressor,
    delay=delay,
    overlap=overlap,
    every=every,
    skip_nonfinite=skip_nonfinite,
    schedule=schedule,
  )
  if _compressed(compressor, consensus_lr):
    inner = _choco.compressed_gossip(
      schedule, axis_name, compressor=compressor, consensus_lr=consensus_lr
    )
  elif delay:
    _pushsum.warn_if_negative_self_weight(schedule)
    inner = _pushsum.delayed_gossip(schedule, axis_name, delay)
  else:
    inner = _gossip.plain_gossip(schedule, axis_name, skip_nonfinite)
  return _wrappers.apply(inner, overlap=overlap, every=every)


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
  local optimizer in ``optax.chain`` (docs/algorithm.md section 2). With ``x_hat = x + u``
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
    compressor: one of `jax_aldsgd.compressors` to run AL-DSGD on CHOCO-SGD:
      the same rule (the ranks travel first, uncompressed; the leader and
      max-degree node are chosen as here), the mixing and the pull use the
      neighbors' public copies, scaled by ``consensus_lr``; the state keeps 2
      parameter-sized buffers per slot (details in ``jax_aldsgd._choco``).
    consensus_lr: CHOCO-SGD's consensus step ``gamma`` in (0, 1] (with a
      compressor only).

  Which options combine is `jax_aldsgd.check_options`' table; ``overlap`` and
  ``every`` are shorthands for `adapt_while_combine` and `every_steps`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (`jax_aldsgd.traffic` says
    what a step sends) whose ``update`` needs ``params``
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
  schedule = check_schedule(schedule)
  every = _checks.check_every(every)
  rule = _aldsgd.PullRule(c1, c2, p1, p2, pull_every, pull_restart_every)
  skip_nonfinite = bool(skip_nonfinite)
  _compat.check_options(
    "adjacent_leader",
    compressor=compressor,
    overlap=overlap,
    every=every,
    skip_nonfinite=skip_nonfinite,
    schedule=schedule,
  )
  if _compressed(compressor, consensus_lr):
    inner = _choco.compressed_adjacent_leader(
      schedule,
      axis_name,
      compressor=compressor,
      consensus_lr=consensus_lr,
      rule=rule,
    )
  else:
    inner = _aldsgd.plain_adjacent_leader(schedule, axis_name, rule, skip_nonfinite)
  return _wrappers.apply(inner, overlap=overlap, every=every)


def allreduce(
  axis_name: str = "workers",
  *,
  compressor=None,
  overlap: bool = False,
  every: int = 1,
) -> optax.GradientTransformationExtraArgs:
  """Centralized baseline: every worker moves to the mean of all ``x_hat``.

  ``x_i <- mean_j x_hat_j`` (one ``pmean`` over ``axis_name`` of one packed buffer),
  returned as updates ``mean_j x_hat_j - x_i``. With identical initial parameters
  this is synchronous data-parallel SGD.

  Args:
    axis_name: the mesh axis the workers are mapped over.
    compressor: must be None: the all-reduce does not compress (an error
      otherwise).
    overlap: average ``x`` instead of ``x + u`` (`adapt_while_combine`):
      ``x+ = mean(x) + u``.
    every: average at steps 0, every, 2 every, ... only (`every_steps`): local
      SGD with periodic averaging.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Example:
    Every worker ends each step at the workers' mean:

    >>> import jax, jax.numpy as jnp, optax, jax_aldsgd as ald
    >>> mesh = ald.worker_mesh(8)  # on CPU: ald.emulate_cpu_devices(8) before JAX starts
    >>> tx = optax.chain(optax.sgd(0.1), ald.allreduce())
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
    >>> [round(float(v), 3) for v in w[:, 0]]
    [7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0]
  """
  every = _checks.check_every(every)
  _compat.check_options(
    "allreduce", compressor=compressor, overlap=overlap, every=every
  )
  return _wrappers.apply(_gossip.mean_exchange(axis_name), overlap=overlap, every=every)
