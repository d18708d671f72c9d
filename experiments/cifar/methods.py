"""The method fields of a config (mixing, schedule, compressor) and their presets.

A method is three independent choices: the mixing rule (what a worker does
with what it receives), the schedule (which matchings communicate at each
step) and the compressor (what travels). The trainer reads only these fields.
A preset names a combination the paper or the reference code ran; the config
files take its name as their argument and record it in ``config.method``.
"""

from __future__ import annotations

from typing import NamedTuple

# allreduce: the exact average (centralized baseline); gossip: D-PSGD's
# weighted average of neighbours; adjacent_leader: AL-DSGD's rule (gossip plus
# pulls towards the best and the best-connected neighbour); local: no
# communication at all.
MIXINGS = ("allreduce", "gossip", "adjacent_leader", "local")
# full: every matching at every step (D-PSGD); alternating: the reference
# code's "D-PSGD", one matching per step in turn (docs/algorithm.md section 3);
# matcha: random matchings under a communication budget; none: for allreduce
# and local, which use no graph.
SCHEDULES = ("none", "full", "alternating", "matcha")
# none: the full parameters; the others: CHOCO-SGD's compressed differences
# (docs/algorithm.md section 9).
COMPRESSORS = ("none", "top_k", "random_k", "scaled_sign", "qsgd")
# Mixing rules that need a schedule (the others take schedule "none").
SCHEDULED = ("gossip", "adjacent_leader")


class Method(NamedTuple):
  mixing: str
  schedule: str
  compressor: str


# A compressed preset takes any compressor (config.compressor picks it, as
# config.compress_fraction tunes it); top_k is the one it starts with.
PRESETS = {
  "allreduce": Method("allreduce", "none", "none"),
  "dpsgd": Method("gossip", "full", "none"),
  "dpsgd_reference": Method("gossip", "alternating", "none"),
  "matcha": Method("gossip", "matcha", "none"),
  "aldsgd_dpsgd": Method("adjacent_leader", "full", "none"),
  "aldsgd_dpsgd_reference": Method("adjacent_leader", "alternating", "none"),
  "aldsgd_matcha": Method("adjacent_leader", "matcha", "none"),
  "choco": Method("gossip", "full", "top_k"),
  "aldsgd_choco": Method("adjacent_leader", "full", "top_k"),
  "local": Method("local", "none", "none"),
}
DEFAULT_PRESET = "aldsgd_dpsgd_reference"


def preset_of(config) -> str | None:
  """The preset whose method ``config``'s fields are (None: no preset's)."""
  for name, method in PRESETS.items():
    if (config.mixing, config.schedule) == method[:2] and (
      config.compressor == "none"
    ) == (method.compressor == "none"):
      return name
  return None


def apply_preset(config, name: str) -> None:
  """Sets ``config``'s method fields, and ``config.method``, to preset ``name``."""
  if name not in PRESETS:
    raise ValueError(
      f"unknown method preset {name!r}; choose one of {', '.join(PRESETS)}, e.g. "
      f"--config=experiments/cifar/configs/default.py:{DEFAULT_PRESET}."
    )
  config.method = name
  config.update(PRESETS[name]._asdict())


def check(config) -> None:
  """``config.method`` names what the fields say (a preset only when they are one).

  Raises:
    ValueError: when the name and the fields disagree, e.g. after
      ``--config.method=matcha`` on a config built for another preset.
  """
  preset, name = preset_of(config), config.method
  fields = (
    f"mixing={config.mixing!r}, schedule={config.schedule!r}, "
    f"compressor={config.compressor!r}"
  )
  if name in PRESETS and name != preset:
    raise ValueError(
      f"config.method={name!r} names the preset {PRESETS[name]._asdict()} but the "
      f"config's method fields are {fields}. Choose a preset as the config's "
      f"argument (--config=experiments/cifar/configs/default.py:{name}); "
      "config.method only names the method, the fields define it."
    )
  if name not in PRESETS and preset is not None:
    raise ValueError(
      f"config.method={name!r} is not a preset, but the config's method fields "
      f"({fields}) are the preset {preset!r}; set --config.method={preset}, or "
      f"choose one of {', '.join(PRESETS)} as the config's argument."
    )
