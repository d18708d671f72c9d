"""The method fields of a config (mixing, schedule, compressor) and their presets.

A method is three independent choices: the mixing rule (what a worker does
with what it receives), the schedule (which matchings communicate at each
step) and the compressor (what travels). The trainer reads only these fields.
A preset names a combination the paper, the reference code or the
heterogeneous-data literature (docs/algorithm.md section 11) ran; the config
files take its name as their argument and record it in ``config.method``.
"""

from __future__ import annotations

from typing import NamedTuple

# allreduce: the exact average (centralized baseline); gossip: D-PSGD's
# weighted average of neighbours; adjacent_leader: AL-DSGD's rule (gossip plus
# pulls towards the best and the best-connected neighbour); local: no
# communication at all. The heterogeneous-data methods (docs/algorithm.md
# section 11), each gossip with the schedule's W_k plus its own state:
# qg_dsgdm: quasi-global momentum; d2: D²'s correction; gradient_tracking:
# x and a tracker of the mean gradient travel together.
MIXINGS = (
  "allreduce",
  "gossip",
  "adjacent_leader",
  "local",
  "qg_dsgdm",
  "d2",
  "gradient_tracking",
)
# full: every matching at every step (D-PSGD); alternating: the reference
# code's "D-PSGD", one matching per step in turn (docs/algorithm.md section 3);
# matcha: random matchings under a communication budget; none: for allreduce
# and local, which use no graph.
SCHEDULES = ("none", "full", "alternating", "matcha")
# none: the full parameters; the others: CHOCO-SGD's compressed differences
# (docs/algorithm.md section 9).
COMPRESSORS = ("none", "top_k", "random_k", "scaled_sign", "qsgd")
# Mixing rules that need a schedule (the others take schedule "none").
SCHEDULED = ("gossip", "adjacent_leader", "qg_dsgdm", "d2", "gradient_tracking")
# Each communicating mixing's exchange, by the name the library's table of
# options knows it (`jax_aldsgd.check_options`).
EXCHANGES = {
  "allreduce": "allreduce",
  "gossip": "gossip",
  "adjacent_leader": "adjacent_leader",
  "qg_dsgdm": "quasi_global_momentum",
  "d2": "d2_gossip",
  "gradient_tracking": "tracking_gossip",
}


class Method(NamedTuple):
  """A preset: the three method fields, and what else it sets.

  ``topology``: the graph the preset is defined on (None: the config's);
  a preset with one names that method only on that graph. ``momentum``: the
  value the preset starts from (None: the config's); a hyperparameter, free
  to change afterwards.
  """

  mixing: str
  schedule: str
  compressor: str
  topology: str | None = None
  momentum: float | None = None

  def fields(self) -> dict:
    """The config fields the preset sets."""
    return {k: v for k, v in self._asdict().items() if v is not None}


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
  # QG-DSGDm's point is its momentum: with 0 it is D-PSGD (validation
  # refuses that), so the preset starts from the paper's 0.9 (Nesterov).
  "qg_dsgdm": Method("qg_dsgdm", "full", "none", momentum=0.9),
  "d2": Method("d2", "full", "none"),
  "gradient_tracking": Method("gradient_tracking", "full", "none"),
  # SGP (Assran et al.): gossip on the one-peer exponential graph, which is a
  # time-varying schedule of its own (one shift per step, weight 1/2).
  "sgp": Method("gossip", "full", "none", topology="one_peer_exponential"),
}
DEFAULT_PRESET = "aldsgd_dpsgd_reference"


def _is(method: Method, config) -> bool:
  """Whether ``config``'s method fields are ``method``'s (any compressor but
  none standing for a compressed preset's)."""
  return (
    (config.mixing, config.schedule) == (method.mixing, method.schedule)
    and (config.compressor == "none") == (method.compressor == "none")
    and method.topology in (None, config.topology)
  )


def preset_of(config) -> str | None:
  """The preset whose method ``config``'s fields are (None: no preset's).

  A preset defined on the config's topology (``sgp``) comes before one on
  any graph (``dpsgd``: gossip with the full schedule is both on the one-peer
  exponential graph, and either name is right).
  """
  ordered = sorted(PRESETS.items(), key=lambda item: item[1].topology is None)
  for name, method in ordered:
    if _is(method, config):
      return name
  return None


def apply_preset(config, name: str) -> None:
  """Sets ``config``'s method fields, what else the preset sets, and
  ``config.method``, to preset ``name``."""
  if name not in PRESETS:
    raise ValueError(
      f"unknown method preset {name!r}; choose one of {', '.join(PRESETS)}, e.g. "
      f"--config=experiments/cifar/configs/default.py:{DEFAULT_PRESET}."
    )
  config.method = name
  config.update(PRESETS[name].fields())


def check(config) -> None:
  """``config.method`` names what the fields say (a preset only when they are one).

  Raises:
    ValueError: when the name and the fields disagree, e.g. after
      ``--config.method=matcha`` on a config built for another preset.
  """
  name = config.method
  fields = (
    f"mixing={config.mixing!r}, schedule={config.schedule!r}, "
    f"compressor={config.compressor!r}"
  )
  if name in PRESETS and not _is(PRESETS[name], config):
    method = PRESETS[name]
    defines = {k: v for k, v in method.fields().items() if k != "momentum"}
    if method.topology is not None:
      fields += f", topology={config.topology!r}"
    raise ValueError(
      f"config.method={name!r} names the preset {defines} but the "
      f"config's method fields are {fields}. Choose a preset as the config's "
      f"argument (--config=experiments/cifar/configs/default.py:{name}); "
      "config.method only names the method, the fields define it."
    )
  preset = preset_of(config)
  if name not in PRESETS and preset is not None:
    raise ValueError(
      f"config.method={name!r} is not a preset, but the config's method fields "
      f"({fields}) are the preset {preset!r}; set --config.method={preset}, or "
      f"choose one of {', '.join(PRESETS)} as the config's argument."
    )
