"""Wrappers that apply to any exchange: adapt-while-combine, and local steps.

Both wrap a transform that exchanges ``x_hat = params + updates`` (`gossip`,
`adjacent_leader`, `allreduce`, or an exchange of your own), so every schedule,
compressor and option of the wrapped transform carries over, and so does what
it sends (`jax_aldsgd.traffic`). The factories' ``overlap=`` and ``every=``
keywords are shorthands for them. docs/algorithm.md section 10.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_aldsgd import _checks, _traffic, _workers


def adapt_while_combine(
  inner: optax.GradientTransformationExtraArgs,
) -> optax.GradientTransformationExtraArgs:
  """Exchanges the parameters ``x`` instead of ``x + u``: ``x+ = W x + u``.

  ``inner`` maps ``(u, x)`` to ``W(x + u) - x`` (adapt-then-combine). Called with
  zero updates it returns ``W x - x``, which depends on ``x`` only (and, for
  AL-DSGD, the pre-step loss), not on the gradient; adding the real updates
  gives ``x+ = W x + u``, the form of Lian et al.'s D-PSGD. In a training step
  the exchange can then run while the backward pass computes ``u``.

  Example:
    >>> import jax_aldsgd as ald
    >>> schedule = ald.schedules.full(ald.topologies.ring(8))
    >>> tx = ald.adapt_while_combine(ald.gossip(schedule))  # gossip(overlap=True)
  """

  def update_fn(updates, state, params=None, **extra_args):
    zeros = jax.tree.map(jnp.zeros_like, updates)
    mixed, state = inner.update(zeros, state, params, **extra_args)
    new_updates = jax.tree.map(lambda u, d: (u + d).astype(u.dtype), updates, mixed)
    return new_updates, state

  return _traffic.carry_traffic(
    optax.GradientTransformationExtraArgs(inner.init, update_fn), inner
  )


class LocalStepsState(NamedTuple):
  """State of `every_steps`: steps taken, and the wrapped transform's state."""

  count: jax.Array  # int32 scalar
  inner: Any


def every_steps(
  inner: optax.GradientTransformationExtraArgs, every: int
) -> optax.GradientTransformationExtraArgs:
  """Runs ``inner`` at steps 0, every, 2 every, ...; the identity in between.

  On the steps in between no collective is issued (the exchange sits in the
  true branch of one ``lax.cond``) and ``inner``'s state is left as it is, so
  its own step counter, and with it the schedule and AL-DSGD's pull period,
  advances only on communication steps. With the all-reduce this is local SGD
  with periodic averaging.

  Example:
    >>> import jax_aldsgd as ald
    >>> tx = ald.every_steps(ald.allreduce(), 4)  # average every 4 steps
  """
  every = _checks.check_every(every)
  if not _checks.is_traced(every) and every == 1:
    return inner

  def init_fn(params):
    return LocalStepsState(jnp.zeros([], jnp.int32), inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    def communicate(operand):
      updates, inner_state, params, extra_args = operand
      updates, inner_state = inner.update(updates, inner_state, params, **extra_args)
      return updates, inner_state, params, extra_args

    updates, inner_state, _, _ = _workers.shared_cond(
      state.count % every == 0,
      communicate,
      lambda operand: operand,
      (updates, state.inner, params, extra_args),
    )
    return updates, LocalStepsState(state.count + 1, inner_state)

  return _traffic.carry_traffic(
    optax.GradientTransformationExtraArgs(init_fn, update_fn), inner, every
  )


def apply(
  inner: optax.GradientTransformationExtraArgs, *, overlap: bool, every
) -> optax.GradientTransformationExtraArgs:
  """``inner`` with `adapt_while_combine` if ``overlap``, then `every_steps`."""
  if overlap:
    inner = adapt_while_combine(inner)
  return every_steps(inner, every)
