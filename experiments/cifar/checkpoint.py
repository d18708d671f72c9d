"""Checkpoints of a whole decentralized run (orbax), with a config fingerprint.

A checkpoint holds every worker's parameters, BatchNorm statistics and optimizer
state (the schedule's step counter is part of the optimizer state), the epoch's
running metric sums, and JSON metadata: the global step, the data-order position
(epoch, step within the epoch), communicated bytes, elapsed time and the
fingerprint of the config fields that define the run. Saves are synchronous and
atomic (orbax writes a temporary directory and renames it when complete).
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

# Config fields that define a run: resuming with any of them changed would mix two
# different experiments in one trajectory. Others (num_epochs, learning-rate
# schedule, logging) may change between invocations, e.g. to extend a run.
FINGERPRINT_FIELDS = (
    "method", "dataset", "model", "num_workers", "batch_size", "seed",
    "topology", "graph_ids", "graph_variant", "matcha_budget", "matcha_seed",
    "c1", "c2", "p1", "p2", "pull_every", "momentum", "weight_decay",
    "same_init", "max_steps_per_epoch", "skip_nonfinite",
)


def fingerprint(config) -> dict[str, Any]:
  """The run-defining config fields, JSON-friendly."""
  out = {}
  for name in FINGERPRINT_FIELDS:
    value = config.get(name)
    out[name] = list(value) if isinstance(value, tuple) else value
  return out


class ConfigMismatchError(ValueError):
  """The config disagrees with the run already checkpointed in the workdir."""


def check_fingerprint(saved: dict[str, Any], config, directory) -> None:
  current = fingerprint(config)
  differences = [
      f"{name}: checkpoint has {saved.get(name)!r}, config has {current[name]!r}"
      for name in FINGERPRINT_FIELDS if saved.get(name) != current[name]
  ]
  if differences:
    raise ConfigMismatchError(
        f"the workdir already holds a different run ({directory}); refusing to "
        "resume it with this config:\n  " + "\n  ".join(differences) +
        "\nUse a new --workdir for a new run, or rerun with the original config "
        "to resume.")


class Checkpointer:
  """Saves and restores run state under ``directory`` (keeps the last ``keep``)."""

  def __init__(self, directory: str | pathlib.Path, keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=False, create=True),
        item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, meta: dict[str, Any]) -> None:
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    self._manager.wait_until_finished()

  def read_meta(self, step: int) -> dict[str, Any]:
    return self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, like) -> tuple[Any, dict[str, Any]]:
    """Restores ``step`` with the structure, shapes and shardings of ``like``."""
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), like)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def restore_arrays(self, step: int) -> tuple[Any, dict[str, Any]]:
    """Restores ``step`` without a target: host NumPy arrays, for inspection."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    return jax.tree.map(np.asarray, restored["state"]), restored["meta"]

  def close(self) -> None:
    self._manager.close()
