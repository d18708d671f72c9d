"""Schedules: which matchings are active at each step (`full`, `matcha`, ...)."""

from jax_aldsgd._schedules import Alternating as Alternating
from jax_aldsgd._schedules import Explicit as Explicit
from jax_aldsgd._schedules import Full as Full
from jax_aldsgd._schedules import Matcha as Matcha
from jax_aldsgd._schedules import Rotating as Rotating
from jax_aldsgd._schedules import Schedule as Schedule
from jax_aldsgd._schedules import alternating as alternating
from jax_aldsgd._schedules import dpsgd_weight as dpsgd_weight
from jax_aldsgd._schedules import explicit as explicit
from jax_aldsgd._schedules import full as full
from jax_aldsgd._schedules import matcha as matcha
from jax_aldsgd._schedules import rotating as rotating

__all__ = ["Alternating", "Explicit", "Full", "Matcha", "Rotating", "Schedule",
           "alternating", "dpsgd_weight", "explicit", "full", "matcha", "rotating"]
