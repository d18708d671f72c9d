"""Argument checks shared by the public constructors.

Every message names the argument, the value received, what was expected and, where
it is not obvious, how to fix it.
"""

from __future__ import annotations

import math
import numbers

import jax
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
