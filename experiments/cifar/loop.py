"""The epoch loop's parts: progress, agreed stops, batches, epoch records."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

import jax_aldsgd as ald
from experiments.cifar import checkpoint as checkpoint_lib
from experiments.cifar import evaluation


class TrainingInterrupted(Exception):
  """Training stopped early (signal or ``stop_after_steps``); a checkpoint was saved."""

  def __init__(self, step: int, reason: str, signum: int | None = None):
    super().__init__(
      f"training stopped at step {step} ({reason}); a checkpoint "
      "was saved, rerun the same command to resume."
    )
    self.step, self.reason, self.signum = step, reason, signum


@dataclasses.dataclass
class Progress:
  """Where the run is, kept with every checkpoint (as JSON).

  Attributes:
    step: steps done (the checkpoint's step).
    epoch: epochs done *and evaluated*; steps ``epoch * steps_per_epoch ..
      step`` belong to the current one.
    bytes_sent: ``(n,)`` bytes each worker has sent.
    time_train_s: seconds spent in training steps, over all invocations.
    time_total_s: seconds of the whole run, over all invocations.
  """

  step: int
  epoch: int
  bytes_sent: list[float]
  time_train_s: float = 0.0
  time_total_s: float = 0.0


def refuse_a_different_run(checkpointer, config):
  """Raises `ConfigMismatchError` if the workdir's newest checkpoint is of a
  run with other run-defining fields: before the data load, the model and the
  compilation, which `restore_or_start` (checking again) needs."""
  meta = checkpointer.latest_meta()
  if meta is not None:
    checkpoint_lib.check_fingerprint(
      meta["fingerprint"], config, checkpointer.directory
    )


def restore_or_start(checkpointer, state, config):
  """The latest checkpoint's state and progress, or ``state`` at step 0."""
  restored = checkpointer.restore_latest(
    state,
    check_meta=lambda saved: checkpoint_lib.check_fingerprint(
      saved["fingerprint"], config, checkpointer.directory
    ),
  )
  if restored is None:
    return state, Progress(step=0, epoch=0, bytes_sent=[0] * config.num_workers)
  state, meta = restored
  return state, Progress(**meta["progress"])


def save(checkpointer, state, progress, config):
  checkpointer.save(
    progress.step,
    state,
    dict(
      progress=dataclasses.asdict(progress),
      fingerprint=checkpoint_lib.fingerprint(config),
    ),
  )


class StopSignal:
  """SIGINT/SIGTERM as a stop at a step that every process agrees on.

  One process: a handler records the signal, and `reason` reports it after the
  next step. Several processes (``jax.distributed``): SIGTERM is left to JAX's
  preemption service, whose handler ``jax.distributed.initialize`` installed;
  a notice on any process makes
  ``multihost_utils.reached_preemption_sync_point(step)`` true on every
  process at the same step (the first one all of them can still reach), so no
  process stops while another waits in a collective. SIGINT is turned into a
  SIGTERM to this process, so that Ctrl-C on one host takes the same path.
  """

  def __init__(self):
    self.signum = None
    self._previous = {}
    self._multiprocess = jax.process_count() > 1

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in (
        (signal.SIGINT,) if self._multiprocess else (signal.SIGINT, signal.SIGTERM)
      ):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self._multiprocess:
      os.kill(os.getpid(), signal.SIGTERM)  # to the preemption service
    else:
      self.signum = signum

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def reason(self, step: int) -> str | None:
    """Why to stop after ``step`` (call it after every step), or None."""
    if self._multiprocess:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signum = signal.SIGTERM
        return "SIGTERM or SIGINT on one of the processes"
      return None
    return None if self.signum is None else signal.Signals(self.signum).name


class Feeder:
  """Builds each step's global batch; a process computes only its own workers'."""

  def __init__(self, batches, mesh, num_workers):
    self._batches = batches
    self._sharding = jax.sharding.NamedSharding(mesh, jax.P("workers"))
    index_map = self._sharding.addressable_devices_indices_map((num_workers,))
    self._local = sorted(
      {w for (rows,) in index_map.values() for w in range(*rows.indices(num_workers))}
    )
    self._row = {w: r for r, w in enumerate(self._local)}
    self._n = num_workers

  def __call__(self, epoch, step) -> dict[str, jax.Array]:
    images, labels = self._batches.batch(epoch, step, workers=self._local)
    return {
      name: jax.make_array_from_callback(
        (self._n,) + a.shape[1:],
        self._sharding,
        lambda i, a=a: a[[self._row[w] for w in range(*i[0].indices(self._n))]],
      )
      for name, a in (("image", images), ("label", labels))
    }


def progress_bar(config, is_main, epoch, total, initial):
  """A tqdm bar over the epoch's steps (None without config.progress_bar)."""
  if not (config.progress_bar and is_main):
    return None
  import tqdm

  return tqdm.tqdm(
    total=total,
    initial=initial,
    desc=f"epoch {epoch + 1}",
    leave=False,
    dynamic_ncols=True,
  )


def train_epoch(
  state,
  progress,
  *,
  epoch,
  steps_per_epoch,
  p_train_step,
  feed,
  traffic,
  stop_reason,
  bar,
):
  """Trains to the epoch's end or an agreed stop; updates ``progress`` in place.

  Returns:
    ``(state, reason)``: reason is None at the epoch's end, else why it stopped.
  """
  started = time.perf_counter()
  reason = None
  for step_in_epoch in range(progress.step - epoch * steps_per_epoch, steps_per_epoch):
    state, metrics = p_train_step(state, feed(epoch, step_in_epoch))
    progress.bytes_sent = (
      np.asarray(progress.bytes_sent) + traffic.sent_bytes(progress.step)
    ).tolist()
    progress.step += 1
    if bar is not None:
      bar.update(1)
      if step_in_epoch % 10 == 0:
        bar.set_postfix(loss=f"{np.mean(ald.gather_workers(metrics['loss'])):.4f}")
    reason = stop_reason(progress.step)
    if reason:
      break
  jax.block_until_ready(state.params)
  progress.time_train_s += time.perf_counter() - started
  return state, reason


def epoch_record(
  state, progress, evaluator, lr_fn, steps_per_epoch, traffic, config, choco_lr
) -> dict[str, Any]:
  """The metrics of the epoch just trained (one line of metrics.jsonl)."""
  sums = ald.gather_workers(
    dict(
      loss=state.sums.loss,
      accuracy=state.sums.accuracy,
      nonfinite=state.sums.nonfinite_steps,
      consensus=evaluation.consensus_distance(state.params),
      finite=evaluation.workers_finite(state.params),
    )
  )
  return dict(
    epoch=progress.epoch,
    step=progress.step,
    learning_rate=float(lr_fn(progress.step - 1)),
    train_loss=(sums["loss"] / steps_per_epoch).tolist(),
    train_accuracy=(sums["accuracy"] / steps_per_epoch).tolist(),
    **evaluator(state),
    consensus_distance=sums["consensus"].tolist(),
    nonfinite_steps=sums["nonfinite"].tolist(),
    params_finite=sums["finite"].tolist(),
    message_bytes=traffic.message_bytes,
    message_parts=list(traffic.parts),
    consensus_lr=choco_lr,
    bytes_sent=progress.bytes_sent,
    bytes_sent_mean=float(np.mean(progress.bytes_sent)),
    time_train_s=progress.time_train_s,
    time_total_s=progress.time_total_s,
    images_per_s=config.num_workers
    * config.batch_size
    * progress.step
    / max(progress.time_train_s, 1e-9),
  )


def print_epoch(record):
  acc = np.asarray(record["test_accuracy"]) * 100
  print(
    f"epoch {record['epoch'] + 1}: train loss {np.mean(record['train_loss']):.4f}"
    f", test acc mean {acc.mean():.2f}% (worst {acc.min():.2f}%), averaged "
    f"model {record['test_accuracy_averaged_model'] * 100:.2f}%, consensus "
    f"{np.mean(record['consensus_distance']):.3g}, lr {record['learning_rate']:g}"
    f", {record['images_per_s']:.0f} img/s",
    flush=True,
  )
