"""Checkpoints of a whole decentralized run (orbax), with a config fingerprint.

A checkpoint holds the trainer's ``TrainState``: every worker's parameters,
BatchNorm statistics and optimizer state (the schedule's step counter is part of
the optimizer state) and the epoch's running metric sums; and JSON metadata: the
run's progress (steps and epochs done, communicated bytes, elapsed time) and the
fingerprint of the config fields that define the run. Saves are synchronous and
atomic (orbax writes a temporary directory and renames it when complete), so a
crash mid-write leaves the previous checkpoint as the latest one. The metadata
also holds a checksum of the state's contents: a checkpoint that fails to load or
whose contents do not match it (truncated or corrupted files) is moved aside to
``<directory>-corrupt/`` and the previous good one is used instead.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jax_aldsgd import _schedules

# Config fields that define a run: resuming with any of them changed would mix two
# different experiments in one trajectory. Others (num_epochs, learning-rate
# schedule, logging) may change between invocations, e.g. to extend a run.
FINGERPRINT_FIELDS = (
  "method",
  "mixing",
  "schedule",
  "dataset",
  "model",
  "num_workers",
  "batch_size",
  "seed",
  "topology",
  "graph_ids",
  "graph_variant",
  "matcha_budget",
  "matcha_seed",
  "c1",
  "c2",
  "p1",
  "p2",
  "pull_every",
  "momentum",
  "weight_decay",
  "same_init",
  "max_steps_per_epoch",
  "skip_nonfinite",
  "reference_epoch_phase",
  "overlap",
  "gossip_every",
  "delay",
  "partition",
  "dirichlet_alpha",
  "classes_per_worker",
  "compressor",
  "compress_fraction",
  "qsgd_levels",
  "consensus_lr",
  "norm",
  "bn_stats",
  "neighbor_weight",
)
# What a field added to FINGERPRINT_FIELDS meant in the runs saved before it.
FINGERPRINT_DEFAULTS = {"norm": "batch", "bn_stats": "local", "neighbor_weight": "auto"}


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
    f"{name}: checkpoint has {was!r}, config has {current[name]!r}"
    for name in FINGERPRINT_FIELDS
    if (was := saved.get(name, FINGERPRINT_DEFAULTS.get(name))) != current[name]
  ]
  if differences:
    raise ConfigMismatchError(
      f"the workdir already holds a different run ({directory}); refusing to "
      "resume it with this config:\n  "
      + "\n  ".join(differences)
      + "\nUse a new --workdir for a new run, or rerun with the original config "
      "to resume."
    )


class CorruptCheckpointError(RuntimeError):
  """No checkpoint in the directory can be restored intact."""


def _mix32(x):
  # The library's 32-bit integer hash: one hash function in the project.
  return _schedules._mix32(jnp, x)


def _as_uint32(leaf):
  narrow = {1: jnp.uint8, 2: jnp.uint16}.get(leaf.dtype.itemsize)
  if narrow is not None:
    return jax.lax.bitcast_convert_type(leaf, narrow).astype(jnp.uint32).ravel()
  # 4 bytes -> 1 word, 8 bytes -> 2 words.
  return jax.lax.bitcast_convert_type(leaf, jnp.uint32).ravel()


@jax.jit
def _checksum(leaves):
  total = jnp.uint32(0)
  for k, leaf in enumerate(leaves):
    words = _as_uint32(jnp.asarray(leaf))
    index = jnp.arange(words.size, dtype=jnp.uint32)
    total = total + _mix32(
      jnp.sum(_mix32(words ^ _mix32(index + jnp.uint32(k)))) + jnp.uint32(k)
    )
  return total


def _saved_tree(state):
  """What is written for ``state``: a dataclass's array fields by name, the
  ones that are None left out, so that a field added later (None in the runs
  that do not use it, as TrainState.stats_state) keeps the saved layout and
  older checkpoints restore."""
  if not dataclasses.is_dataclass(state):
    return state
  return {
    field.name: getattr(state, field.name)
    for field in dataclasses.fields(state)
    if field.metadata.get("pytree_node", True)
    and getattr(state, field.name) is not None
  }


def _from_saved_tree(like, tree):
  return like.replace(**tree) if dataclasses.is_dataclass(like) else tree


def state_checksum(state) -> int:
  """A 32-bit hash of every bit of every array in ``state`` (sharding-independent).

  Integer arithmetic wraps identically everywhere and the sum is order-free, so
  the value does not depend on how arrays are sharded or on the platform.
  """
  return int(_checksum(jax.tree.leaves(state)))


class Checkpointer:
  """Saves and restores run state under ``directory`` (keeps the last ``keep``)."""

  def __init__(self, directory: str | pathlib.Path, keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=False, create=True
      ),
      item_handlers=dict(
        state=ocp.StandardCheckpointHandler(), meta=ocp.JsonCheckpointHandler()
      ),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, meta: dict[str, Any]) -> None:
    if step in self._manager.all_steps():
      return
    meta = dict(meta, checksum=state_checksum(state))
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(_saved_tree(state)),
        meta=ocp.args.JsonSave(meta),
      ),
    )
    self._manager.wait_until_finished()

  def latest_meta(self) -> dict[str, Any] | None:
    """The newest readable checkpoint's metadata (no state read); None if none.

    Unreadable ones are skipped here and left for `restore_latest` to set
    aside.
    """
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        return self._read_meta(step)
      except Exception:
        continue
    return None

  def _read_meta(self, step: int) -> dict[str, Any]:
    return self._manager.restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
    )["meta"]

  def restore_latest(self, like, check_meta=None) -> tuple[Any, dict[str, Any]] | None:
    """Restores the newest intact checkpoint (see `restore`); None if there is none.

    A checkpoint that cannot be read or fails its checksum is moved aside to
    ``<directory>-corrupt/`` with a warning, and the previous one is tried.

    Args:
      like: the state pytree to restore into (structure, shapes, shardings).
      check_meta: called with a checkpoint's metadata before its state is read;
        what it raises (e.g. `ConfigMismatchError`) propagates untouched.

    Raises:
      CorruptCheckpointError: if checkpoints exist but none is intact.
    """
    problems = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        meta = self._read_meta(step)
      except Exception as error:
        self._set_aside(step, error, problems)
        continue
      if check_meta is not None:
        check_meta(meta)
      try:
        return self.restore(step, like)
      except Exception as error:
        self._set_aside(step, error, problems)
    if problems:
      raise CorruptCheckpointError(
        f"no intact checkpoint in {self.directory} (the corrupt ones were moved "
        f"to {self.directory}-corrupt):\n  "
        + "\n  ".join(problems)
        + "\nStart again with a new --workdir (or remove this one's checkpoints)."
      )
    return None

  def restore(self, step: int, like) -> tuple[Any, dict[str, Any]]:
    """Restores ``step`` with the structure, shapes and shardings of ``like``."""
    abstract = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
      _saved_tree(like),
    )
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
      ),
    )
    state, meta = _from_saved_tree(like, restored["state"]), restored["meta"]
    found = state_checksum(state)
    if meta.get("checksum") != found:
      raise CorruptCheckpointError(
        f"contents do not match their checksum (saved {meta.get('checksum')}, "
        f"read {found})"
      )
    return state, meta

  def _set_aside(self, step: int, error: Exception, problems: list[str]) -> None:
    problems.append(f"step {step}: {type(error).__name__}: {error}"[:500])
    moved = self._move_aside(step)
    warnings.warn(
      f"checkpoint {step} in {self.directory} is unreadable or corrupt "
      f"({problems[-1]}); moved it to {moved} and trying the previous "
      "checkpoint.",
      stacklevel=3,
    )

  def _move_aside(self, step: int) -> pathlib.Path:
    target = self.directory.parent / f"{self.directory.name}-corrupt"
    target.mkdir(parents=True, exist_ok=True)
    destination = target / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    if jax.process_index() == 0:
      shutil.move(str(self.directory / str(step)), destination)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
    self._manager.reload()
    return destination

  def restore_arrays(self, step: int) -> tuple[Any, dict[str, Any]]:
    """Restores ``step`` without a target: host NumPy arrays, for inspection."""
    # Onto one local device, whatever devices or processes saved it.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    structure = self._manager.item_metadata(step)["state"]
    target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), structure
    )
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
      ),
    )
    return jax.tree.map(np.asarray, restored["state"]), restored["meta"]

  def close(self) -> None:
    self._manager.close()
