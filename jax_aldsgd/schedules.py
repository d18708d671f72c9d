"""Schedules: which matchings are active at each step (`full`, `matcha`, ...).

Each constructor validates its arguments and returns a `jax_aldsgd.Schedule`;
subclass that base to write your own.
"""

from jax_aldsgd._schedules import Schedule as Schedule
from jax_aldsgd._schedules import alternating as alternating
from jax_aldsgd._schedules import dpsgd_weight as dpsgd_weight
from jax_aldsgd._schedules import every as every
from jax_aldsgd._schedules import explicit as explicit
from jax_aldsgd._schedules import full as full
from jax_aldsgd._schedules import matcha as matcha
from jax_aldsgd._schedules import one_peer_exponential as one_peer_exponential
from jax_aldsgd._schedules import rotating as rotating

__all__ = [
  "Schedule",
  "alternating",
  "dpsgd_weight",
  "every",
  "explicit",
  "full",
  "matcha",
  "one_peer_exponential",
  "rotating",
]
