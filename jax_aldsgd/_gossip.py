"""Gossip averaging (D-PSGD, MATCHA) and the all-reduce baseline, as optax transforms."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_aldsgd import _checks, _choco, _exchange, _network, _pushsum, _variants
from jax_aldsgd._schedules import Schedule


class GossipState(NamedTuple):
  """State of `gossip`: the step counter that drives the schedule."""

  count: jax.Array  # int32 scalar


check_params = _exchange.check_params


def check_schedule(schedule) -> Schedule:
  if not isinstance(schedule, Schedule):
    raise TypeError(
      "schedule must be a jax_aldsgd schedule (see "
      "jax_aldsgd.schedules: full, alternating, matcha, explicit, "
      f"rotating), got {type(schedule).__name__}."
    )
  return schedule


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
  moves to (ALGORITHM.md section 2, step 5)

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
      ``overlap`` or ``skip_nonfinite``. A simulator of asynchrony: inside one
      jitted step it hides no latency.
    compressor: one of `jax_aldsgd.compressors` to run CHOCO-SGD (ALGORITHM.md
      section 9): each active matching carries only the compressed message
      (`jax_aldsgd.choco_message_bytes`). The state keeps public copies: 2
      parameter-sized buffers on a `full` schedule, 2 per slot (matching of
      each graph) on any other, so that each worker's copy of a neighbor's
      public copy stays exactly the neighbor's own (details in
      ``jax_aldsgd._choco``). None (default) sends the parameters.
    consensus_lr: CHOCO-SGD's consensus step ``gamma`` in (0, 1] (with a
      compressor only; see `jax_aldsgd.tune_consensus_lr`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

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
  every = _variants.check_every(every)
  delay = 0 if delay is None else _checks.check_integer("delay", delay, 0)
  if compressor is not None or _choco.consensus_lr_given(consensus_lr):
    if delay:
      raise ValueError(
        f"gossip(delay={delay}) cannot be combined with a compressor: the "
        "delayed exchange is push-sum, CHOCO-SGD's keeps public copies; "
        "drop one of them."
      )
    return _variants.apply(
      _choco.choco_gossip(
        schedule,
        axis_name,
        compressor=compressor,
        consensus_lr=consensus_lr,
        skip_nonfinite=skip_nonfinite,
      ),
      overlap=overlap,
      every=every,
    )
  schedule = check_schedule(schedule)
  skip_nonfinite = bool(skip_nonfinite)
  if delay:
    for name, value in (("overlap", overlap), ("skip_nonfinite", skip_nonfinite)):
      if value:
        raise ValueError(
          f"gossip(delay={delay}) cannot be combined with {name}=True: the "
          "delayed (push-sum) exchange sends x + u and mixes every share it "
          f"receives; use delay=0 for {name}, or drop {name}."
        )
    _pushsum.warn_if_negative_self_weight(schedule)
    return _variants.every_steps(
      _pushsum.delayed_gossip(schedule, axis_name, delay), every
    )

  def init_fn(params):
    del params
    return GossipState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    check_params(params, "gossip")
    me = _exchange.worker_index(axis_name, schedule)
    x_hat = jax.tree.map(jnp.add, params, updates)
    # With skip_nonfinite, a health flag travels with the parameters.
    buffer, unpack = _exchange.pack(x_hat, health=skip_nonfinite)
    near = _exchange.neighborhood(schedule, state.count, me, buffer.dtype)

    # v - x_hat = alpha sum_{s present} (x_hat_partner - x_hat). The fold only adds
    # differences and alpha multiplies once: no multiply-add for XLA to contract
    # into an FMA in one device layout and not in another.
    def combine(total, received, present, own):
      use = present
      if skip_nonfinite:
        use = use & _exchange.buffer_healthy(received)
      return total + jnp.where(use, received - own, 0)

    delta = near.weight * _exchange.fold(
      buffer,
      schedule,
      state.count,
      axis_name,
      combine,
      jnp.zeros_like,
      near.present,
      buffer,
    )
    delta_tree, _ = unpack(delta)
    new_updates = jax.tree.map(
      lambda u, d: (u + d).astype(u.dtype), updates, delta_tree
    )
    return new_updates, GossipState(count=state.count + 1)

  return _variants.apply(
    optax.GradientTransformationExtraArgs(init_fn, update_fn),
    overlap=overlap,
    every=every,
  )


def gossip_message_bytes(
  params, *, skip_nonfinite: bool = False, delay: int | None = None
) -> int:
  """Bytes one worker sends along one active matching under `gossip`.

  The message is the packed parameters (float32, or wider if a leaf is), plus a
  health flag with ``skip_nonfinite``, or the push-sum weight with ``delay``.

  Args:
    params: one worker's parameters (arrays or ``jax.ShapeDtypeStruct``).
    skip_nonfinite: as given to `gossip`.
    delay: as given to `gossip`.
  """
  return _exchange.message_bytes(params, 1 if skip_nonfinite or delay else 0)


def allreduce_bytes(num_workers: int, params) -> float:
  """Bytes each worker sends per step of `allreduce`, as a ring all-reduce.

  ``2 (n - 1) / n`` of the packed parameters (reduce-scatter, then all-gather).
  """
  return _network.ring_allreduce_fraction(num_workers) * _exchange.message_bytes(params)


def allreduce(
  axis_name: str = "workers", *, compressor=None
) -> optax.GradientTransformationExtraArgs:
  """Centralized baseline: every worker moves to the mean of all ``x_hat``.

  ``x_i <- mean_j x_hat_j`` (one ``pmean`` over ``axis_name`` of one packed buffer),
  returned as updates ``mean_j x_hat_j - x_i``. With identical initial parameters
  this is synchronous data-parallel SGD.

  Args:
    axis_name: the mesh axis the workers are mapped over.
    compressor: must be None: the all-reduce does not compress (an error
      otherwise).

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
  if compressor is not None:
    raise ValueError(
      f"allreduce does not compress its messages, got compressor={compressor!r}; "
      "for compressed communication use jax_aldsgd.gossip(schedule, "
      "compressor=...) (CHOCO-SGD), or drop the compressor."
    )

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    check_params(params, "allreduce")
    _exchange.worker_index(axis_name)
    x_hat = jax.tree.map(jnp.add, params, updates)
    buffer, unpack = _exchange.pack(x_hat)
    mean_tree, _ = unpack(_exchange.mean_over_workers(buffer, axis_name))
    new_updates = jax.tree.map(lambda m, x: (m - x).astype(x.dtype), mean_tree, params)
    return new_updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
