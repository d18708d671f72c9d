"""Argument checks shared by the public constructors.

Every message names the argument, the value received, what was expected and, where
it is not obvious, how to fix it.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(value) -> bool:
  """Whether ``value`` is a tracer (e.g. a hyperparameter under inject_hyperparams)."""
  return isinstance(value, jax.core.Tracer)


def concrete_scalar(name: str, value):
  """A Python number from ``value`` (number or 0-d array), or None when traced."""
  if is_traced(value):
    return None
  if isinstance(value, bool):
    raise TypeError(f"{name} must be a number, got the bool {value!r}.")
  if isinstance(value, numbers.Number):
    return value
  if isinstance(value, (np.ndarray, np.generic, jax.Array)) and np.ndim(value) == 0:
    return np.asarray(value).item()
  raise TypeError(
    f"{name} must be a scalar number, got {value!r} of type {type(value).__name__}."
  )


def check_integer(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(
      f"{name} must be an integer, got {value!r} of type {type(value).__name__}."
    )
  if value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value}.")
  return int(value)


def check_real(
  name: str,
  value,
  *,
  low=None,
  high=None,
  low_open=False,
  high_open=False,
  hint: str = "",
):
  """Checks a finite real in the given range; passes tracers through untouched."""
  number = concrete_scalar(name, value)
  if number is None:
    return value
  if not isinstance(number, numbers.Real) or not math.isfinite(number):
    raise ValueError(f"{name} must be a finite real number, got {value!r}.{hint}")
  too_low = low is not None and (number <= low if low_open else number < low)
  too_high = high is not None and (number >= high if high_open else number > high)
  if too_low or too_high:
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    interval = (
      f"{left}{'-inf' if low is None else low}, "
      f"{'inf' if high is None else high}{right}"
    )
    raise ValueError(f"{name} must be in {interval}, got {number}.{hint}")
  return value


def check_every(every):
  """Validates ``every`` (an integer >= 1); a tracer (inject_hyperparams) passes."""
  if is_traced(every):
    return every
  value = concrete_scalar("every", every)
  if isinstance(value, float) and value.is_integer():
    value = int(value)
  return check_integer("every", value, 1)


def check_float_leaves(tree, what: str) -> None:
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(
        f"{what} leaf {jax.tree_util.keystr(path)} has dtype "
        f"{jnp.result_type(leaf)}; only floating-point parameters can be "
        "averaged. Keep integer state out of the optimized parameters (e.g. in "
        "a separate collection)."
      )


def check_params(params, name: str):
  """Raises unless ``params`` (needed by transform ``name``) is a float pytree."""
  if params is None:
    raise ValueError(
      f"{name} needs the current parameters: call "
      "update(updates, state, params, ...). It moves x_hat = params + updates "
      "toward the neighbors' x_hat."
    )
  check_float_leaves(params, "params")


def check_loss(loss, value=None) -> jax.Array:
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


def check_fraction(name: str, value, meaning: str) -> float:
  """A real in (0, 1]; the message says what ``name`` means (``meaning``)."""
  if (
    isinstance(value, bool)
    or not isinstance(value, numbers.Real)
    or not (0.0 < value <= 1.0)
  ):
    raise ValueError(f"{name} must be in (0, 1] ({meaning}), got {value!r}.")
  return float(value)
