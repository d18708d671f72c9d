"""Decentralized training of CIFAR-style models: the paper's experiments.

``train_and_evaluate(config, workdir)`` turns a config (see ``configs/``) into
explicit library calls: a topology and schedule, a local optimizer chained with
gossip / AL-DSGD / all-reduce, one model per worker (BatchNorm statistics stay
local), one jitted ``train_step(state, batch) -> (state, metrics)`` over all
workers, per-epoch evaluation of every worker's model and of the averaged
model, ``metrics.jsonl``, plots and checkpoints from which a rerun of the same
command resumes exactly.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

import jax_aldsgd as ald
from experiments.cifar import checkpoint as checkpoint_lib
from experiments.cifar import input_pipeline, models, report

METHODS = (
  "allreduce",
  "dpsgd",
  "dpsgd_reference",
  "matcha",
  "aldsgd_dpsgd",
  "aldsgd_dpsgd_reference",
  "aldsgd_matcha",
  "choco",
  "aldsgd_choco",
  "local",
)
COMPRESSORS = ("top_k", "random_k", "scaled_sign", "qsgd")
TOPOLOGIES = ("paper", "ring", "torus", "exponential", "complete")


class TrainingInterrupted(Exception):
  """Training stopped early (signal or ``stop_after_steps``); a checkpoint was saved."""

  def __init__(self, step: int, reason: str, signum: int | None = None):
    super().__init__(
      f"training stopped at step {step} ({reason}); a checkpoint "
      "was saved, rerun the same command to resume."
    )
    self.step, self.reason, self.signum = step, reason, signum


# ----------------------------------------------------------------------------
# Config -> library objects.


def _graphs(config) -> list[ald.Topology]:
  n = config.num_workers
  if config.topology == "paper":
    graphs = [
      ald.topologies.paper_graph(
        g, config.graph_variant, allow_disconnected=len(config.graph_ids) > 1
      )
      for g in config.graph_ids
    ]
    for g, graph in zip(config.graph_ids, graphs):
      if graph.num_workers != n:
        raise ValueError(
          f"paper graph {g} has {graph.num_workers} workers but "
          f"config.num_workers is {n}; set --config.num_workers="
          f"{graph.num_workers} or choose other graph_ids."
        )
    return graphs
  if config.topology == "torus":
    rows = int(np.sqrt(n))
    while n % rows:
      rows -= 1
    return [ald.topologies.torus(rows, n // rows)]
  return [getattr(ald.topologies, config.topology)(n)]


def exchanged_schedule(config, schedule):
  """What the run exchanges step by step: ``schedule`` every gossip_every steps."""
  if schedule is None:
    return None
  return ald.schedules.every(schedule, config.get("gossip_every", 1))


def build_schedule(
  config, steps_per_epoch: int | None = None
) -> ald.schedules.Schedule | None:
  """The gossip schedule of ``config.method`` (None for allreduce and local).

  With ``config.reference_epoch_phase`` the rotation restarts every
  ``steps_per_epoch`` steps, as the reference's does each epoch.
  """
  base = config.method.removeprefix("aldsgd_")
  if base in ("allreduce", "local"):
    return None
  graphs = _graphs(config)
  if base in ("dpsgd", "choco"):
    parts = [ald.schedules.full(g) for g in graphs]
  elif base == "dpsgd_reference":
    parts = [ald.schedules.alternating(g) for g in graphs]
  else:  # matcha; validate_config admits nothing else
    parts = [
      ald.schedules.matcha(g, config.matcha_budget, seed=config.matcha_seed)
      for g in graphs
    ]
  if len(parts) == 1:
    return parts[0]
  return ald.schedules.rotating(
    parts, restart_every=_epoch_phase(config, steps_per_epoch)
  )


def _epoch_phase(config, steps_per_epoch):
  """Steps after which the reference restarts its counters (None: never)."""
  if not config.reference_epoch_phase:
    return None
  if steps_per_epoch is None:
    raise ValueError(
      "config.reference_epoch_phase=True needs the number of steps "
      "per epoch to build the schedule."
    )
  return steps_per_epoch


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  boundaries = {
    int(e * steps_per_epoch): config.lr_decay_factor for e in config.lr_decay_epochs
  }
  return optax.piecewise_constant_schedule(config.learning_rate, boundaries)


def build_compressor(config):
  """The compressor of a choco / aldsgd_choco run (None for the others)."""
  if not config.method.endswith("choco"):
    return None
  if config.compressor == "qsgd":
    return ald.compressors.qsgd(config.qsgd_levels, seed=config.seed)
  if config.compressor == "random_k":
    return ald.compressors.random_k(config.compress_fraction, seed=config.seed)
  if config.compressor == "top_k":
    return ald.compressors.top_k(config.compress_fraction)
  return ald.compressors.scaled_sign()


def consensus_lr(config, schedule) -> float | None:
  """CHOCO's consensus step: the config's, or tuned when it is "auto".

  The tuner (`jax_aldsgd.tune_consensus_lr`) runs pure compressed consensus
  with this schedule and compressor on 1000 random parameters per worker,
  seeded by config.seed, so a resumed run gets the same value.
  """
  compressor = build_compressor(config)
  if compressor is None:
    return None
  if config.consensus_lr != "auto":
    return float(config.consensus_lr)
  tuned = ald.tune_consensus_lr(schedule, compressor, num_params=1000, seed=config.seed)
  return float(tuned.consensus_lr)


def build_optimizer(
  config,
  schedule,
  learning_rate,
  steps_per_epoch: int | None = None,
  choco_lr: float | None = None,
) -> optax.GradientTransformation:
  """The local optimizer chained with the method's communication.

  The library's factories check their arguments (momentum, weight decay, the
  AL-DSGD coefficients, the MATCHA budget); their errors name the field.
  """
  common = dict(momentum=config.momentum, weight_decay=config.weight_decay)
  compressor = build_compressor(config)
  if compressor is not None:
    if choco_lr is None:
      raise ValueError(
        f"config.method={config.method!r} needs the consensus step (see consensus_lr)."
      )
    common.update(compressor=compressor, consensus_lr=choco_lr)
  if config.method.startswith("aldsgd_"):
    return ald.aldsgd(
      learning_rate,
      schedule,
      c1=config.c1,
      c2=config.c2,
      p1=config.p1,
      p2=config.p2,
      pull_every=config.pull_every,
      skip_nonfinite=config.skip_nonfinite,
      overlap=config.overlap,
      every=config.gossip_every,
      pull_restart_every=_epoch_phase(config, steps_per_epoch),
      **common,
    )
  if schedule is not None:
    return ald.dsgd(
      learning_rate,
      schedule,
      skip_nonfinite=config.skip_nonfinite,
      overlap=config.overlap,
      every=config.gossip_every,
      delay=config.delay,
      **common,
    )
  local = ald.local_sgd(learning_rate, **common)
  if config.method == "allreduce":
    return optax.chain(local, ald.allreduce())
  return local


@dataclasses.dataclass(frozen=True)
class Traffic:
  """What each step sends, as the library's message layout says.

  Attributes:
    message_bytes: one message: the buffer a worker sends along one active
      matching (gossip, AL-DSGD) or all-reduces (allreduce); 0 for local.
    sent: ``sent(step)`` is the ``(n,)`` bytes each worker sends at ``step``.
    parts: the ``ppermute`` sizes one active matching's message is sent in
      (they add up to ``message_bytes``; AL-DSGD on several matchings per
      step sends its loss and health flag first); empty where nothing is
      ppermuted (allreduce, local).
  """

  message_bytes: int
  sent: Callable[[int], np.ndarray]
  parts: tuple[int, ...] = ()

  @classmethod
  def of(cls, config, schedule, params) -> Traffic:
    """The traffic of ``config.method`` on stacked ``params``."""
    one_worker = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), params
    )
    n = config.num_workers
    schedule = exchanged_schedule(config, schedule)
    compressor = build_compressor(config)
    parts = None  # one ppermute of the whole message per matching
    if compressor is not None:
      message = ald.choco_message_bytes(
        one_worker, compressor, with_loss=config.method.startswith("aldsgd_")
      )
    elif config.method.startswith("aldsgd_"):
      message = ald.adjacent_leader_message_bytes(one_worker)
      parts = ald.adjacent_leader_message_parts(one_worker, schedule)
    elif schedule is not None:
      message = ald.gossip_message_bytes(
        one_worker, skip_nonfinite=config.skip_nonfinite, delay=config.delay
      )
    elif config.method == "allreduce":
      every_step = np.full(n, ald.allreduce_bytes(n, one_worker))
      return cls(ald.gossip_message_bytes(one_worker), lambda step: every_step)
    else:
      return cls(0, lambda step: np.zeros(n))
    return cls(
      message, lambda step: schedule.sent_bytes(step, message), parts or (message,)
    )


# ----------------------------------------------------------------------------
# The state of all workers, and one step.


@flax.struct.dataclass
class EpochSums:
  """Running sums over the current epoch's steps (one scalar per worker)."""

  loss: jax.Array  # float32; finite losses only
  accuracy: jax.Array  # float32
  nonfinite_steps: jax.Array  # int32: steps leaving a NaN/Inf loss or parameters


@flax.struct.dataclass
class TrainState:
  """Every worker's state; each leaf has a leading worker axis ``(n, ...)``.

  Inside ``ald.worker_map`` (as in `train_step`) a function sees one worker's
  slice. ``graphdef`` and ``tx`` are static: they define the step, as
  ``apply_fn`` and ``tx`` do in ``flax.training.train_state.TrainState``.
  """

  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  sums: EpochSums
  graphdef: nnx.GraphDef = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def apply_model(graphdef, params, batch_stats, images, *, train: bool):
  """Logits and the updated BatchNorm statistics of one worker's model."""
  model = nnx.merge(graphdef, params, batch_stats, copy=True)
  model.train() if train else model.eval()
  logits = model(images)
  return logits, nnx.state(model, nnx.BatchStat)


def create_train_state(config, info, mesh, tx) -> TrainState:
  """One model per worker (different seeds unless config.same_init), stacked."""
  n = config.num_workers
  keys = jax.random.split(jax.random.key(config.seed), n)
  if config.same_init:
    keys = jnp.broadcast_to(keys[0], keys.shape)
  graphdef, params, stats = None, [], []
  for key in keys:
    model = models.create_model(
      config.model,
      num_classes=info.num_classes,
      in_channels=info.image_shape[-1],
      rngs=nnx.Rngs(params=key),
    )
    graphdef, p, s, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    if jax.tree.leaves(rest):
      raise ValueError(
        f"model {config.model!r} has state other than parameters "
        "and BatchNorm statistics, which this trainer does not "
        "know how to keep per worker."
      )
    params.append(p)
    stats.append(s)
  stack = lambda trees: ald.shard_workers(ald.stack_workers(trees), mesh)
  params, stats = stack(params), stack(stats)
  opt_state = jax.jit(
    ald.worker_map(tx.init, mesh, workers_per_device=config.workers_per_device)
  )(params)
  return TrainState(
    params=params,
    batch_stats=stats,
    opt_state=opt_state,
    sums=_zero_sums(n, mesh),
    graphdef=graphdef,
    tx=tx,
  )


def _zero_sums(num_workers: int, mesh) -> EpochSums:
  sharding = jax.sharding.NamedSharding(mesh, jax.P("workers"))
  zeros = lambda dtype: jnp.zeros((num_workers,), dtype, device=sharding)
  return EpochSums(zeros(jnp.float32), zeros(jnp.float32), zeros(jnp.int32))


def train_step(state: TrainState, batch) -> tuple[TrainState, dict[str, Any]]:
  """One worker's step: forward/backward, local step and communication (tx).

  Runs under ``ald.worker_map``: ``state`` is one worker's slice and ``tx``
  communicates with the other workers over the "workers" axis.
  """

  def loss_fn(params):
    logits, batch_stats = apply_model(
      state.graphdef, params, state.batch_stats, batch["image"], train=True
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(
      logits, batch["label"]
    ).mean()
    return loss, (logits, batch_stats)

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.params
  )
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params, loss=loss)
  params = optax.apply_updates(state.params, updates)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  # The parameters too: XLA's CPU max may drop NaNs (relu(NaN) = 0), so a NaN
  # batch can give a finite loss and NaN gradients.
  finite = jnp.isfinite(loss) & ald.all_finite(params)
  # A diverged worker's NaN must not wipe out its epoch's other statistics.
  sums = EpochSums(
    loss=state.sums.loss + jnp.where(finite, loss, 0.0),
    accuracy=state.sums.accuracy + accuracy,
    nonfinite_steps=state.sums.nonfinite_steps + (~finite),
  )
  state = state.replace(
    params=params, batch_stats=batch_stats, opt_state=opt_state, sums=sums
  )
  return state, dict(loss=loss)


# ----------------------------------------------------------------------------
# Data on the mesh.


def _place(array, mesh, spec):
  """A host array as a global array on ``mesh`` (each process its own shards)."""
  sharding = jax.sharding.NamedSharding(mesh, spec)
  return jax.make_array_from_callback(array.shape, sharding, lambda i: array[i])


class _Feeder:
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


class Evaluator:
  """Test loss and accuracy of every worker's model and of the averaged model."""

  def __init__(self, images, labels, info, batch_size: int, graphdef, mesh):
    """Normalizes the test set and pads it to whole batches divisible by the devices."""
    self._mesh = mesh
    self._devices = mesh.shape["workers"]
    self._batch_size = -(-batch_size // self._devices) * self._devices
    self._count = len(images)
    total = -(-self._count // self._batch_size) * self._batch_size
    pad = lambda a: np.concatenate(
      [a, np.zeros((total - len(a),) + a.shape[1:], a.dtype)]
    )
    self._images = pad(input_pipeline.normalize(images, info.mean, info.std))
    self._labels = pad(labels.astype(np.int32))
    self._mask = pad(np.ones(self._count, np.float32))

    def evaluate(params, batch_stats, images, labels, mask):
      logits, _ = apply_model(graphdef, params, batch_stats, images, train=False)
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      correct = jnp.argmax(logits, -1) == labels
      return jnp.sum(losses * mask), jnp.sum(correct * mask)

    workers, everyone = jax.P("workers"), jax.P()

    # Every worker evaluates its own model on the same (replicated) test batch;
    # a device holds a (workers_per_device, ...) block of workers.
    def own(params, batch_stats, images, labels, mask):
      return jax.vmap(evaluate, in_axes=(0, 0, None, None, None))(
        params, batch_stats, images, labels, mask
      )

    self._own = jax.jit(
      jax.shard_map(
        own,
        mesh=mesh,
        in_specs=(workers, workers, everyone, everyone, everyone),
        out_specs=(workers, workers),
      )
    )

    # The averaged model, on a test batch split across the devices.
    def shared(params, batch_stats, images, labels, mask):
      loss, correct = evaluate(params, batch_stats, images[0], labels[0], mask[0])
      return jax.lax.psum(loss, "workers"), jax.lax.psum(correct, "workers")

    self._shared = jax.jit(
      jax.shard_map(
        shared,
        mesh=mesh,
        in_specs=(everyone, everyone, workers, workers, workers),
        out_specs=(everyone, everyone),
      )
    )

  def __call__(self, state: TrainState) -> dict[str, Any]:
    own_loss = own_correct = avg_loss = avg_correct = 0.0
    mean_params, mean_stats = _worker_mean((state.params, state.batch_stats))
    for start in range(0, len(self._images), self._batch_size):
      arrays = [
        a[start : start + self._batch_size]
        for a in (self._images, self._labels, self._mask)
      ]
      loss, correct = self._own(
        state.params,
        state.batch_stats,
        *[_place(a, self._mesh, jax.P()) for a in arrays],
      )
      own_loss, own_correct = own_loss + loss, own_correct + correct
      split = [
        ald.shard_workers(a.reshape((self._devices, -1) + a.shape[1:]), self._mesh)
        for a in arrays
      ]
      loss, correct = self._shared(mean_params, mean_stats, *split)
      avg_loss, avg_correct = avg_loss + loss, avg_correct + correct
    own_loss, own_correct, avg_loss, avg_correct = ald.gather_workers(
      (own_loss, own_correct, avg_loss, avg_correct)
    )
    return dict(
      test_loss=(own_loss / self._count).tolist(),
      test_accuracy=(own_correct / self._count).tolist(),
      test_loss_averaged_model=float(avg_loss / self._count),
      test_accuracy_averaged_model=float(avg_correct / self._count),
    )


@jax.jit
def _worker_mean(tree):
  return jax.tree.map(lambda a: a.mean(0), tree)


@jax.jit
def _consensus_distance(params) -> jax.Array:
  """``(n,)`` distance of every worker's parameters to the workers' mean."""
  mean = _worker_mean(params)
  squares = sum(
    jnp.sum((a - m[None]) ** 2, axis=tuple(range(1, a.ndim)))
    for a, m in zip(jax.tree.leaves(params), jax.tree.leaves(mean))
  )
  return jnp.sqrt(squares)


_workers_finite = jax.jit(jax.vmap(ald.all_finite))


# ----------------------------------------------------------------------------
# Stopping: signals, agreed across processes.


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


# ----------------------------------------------------------------------------
# Config checks the library does not make.


def _choice(config, name, valid):
  value = config[name]
  if value not in valid:
    raise ValueError(
      f"config.{name}={value!r} is not valid; choose one of "
      f"{', '.join(map(str, valid))} (e.g. --config.{name}="
      f"{next(iter(valid))})."
    )


def _integer(config, name, minimum):
  value = config[name]
  if (
    isinstance(value, bool)
    or not isinstance(value, (int, np.integer))
    or (value < minimum)
  ):
    raise ValueError(f"config.{name}={value!r} must be an integer >= {minimum}.")


def _real(config, name, low, high=None, low_open=False):
  value = config[name]
  ok = (
    not isinstance(value, bool)
    and isinstance(value, (int, float))
    and np.isfinite(value)
    and (value > low if low_open else value >= low)
    and (high is None or value <= high)
  )
  if not ok:
    interval = f"{'(' if low_open else '['}{low}, {'inf' if high is None else high}]"
    raise ValueError(f"config.{name}={value!r} must be a finite number in {interval}.")


def validate_config(config) -> None:
  """Checks the fields the trainer reads itself; messages name field and fix.

  The fields passed on to the library (momentum, weight decay, AL-DSGD
  coefficients, MATCHA budget and seed, workers per device) are checked by its
  factories when the run builds them.
  """
  _choice(config, "method", METHODS)
  _choice(config, "dataset", tuple(input_pipeline.DATASETS))
  _choice(config, "data_source", input_pipeline.SOURCES)
  _choice(config, "model", tuple(models.MODELS))
  _choice(config, "topology", TOPOLOGIES)
  _choice(config, "graph_variant", ("pairs", "triples"))
  _choice(config, "partition", input_pipeline.PARTITIONS)
  _choice(config, "compressor", COMPRESSORS)
  if config.consensus_lr != "auto":
    try:
      gamma = float(config.consensus_lr)
    except (TypeError, ValueError):
      gamma = None
    if gamma is None or not 0.0 < gamma <= 1.0:
      raise ValueError(
        f"config.consensus_lr={config.consensus_lr!r} must be "
        "'auto' or a number in (0, 1], e.g. "
        "--config.consensus_lr=0.3."
      )
  graph_ids = config.graph_ids
  if (
    not isinstance(graph_ids, (tuple, list))
    or not graph_ids
    or not all(isinstance(g, int) and not isinstance(g, bool) for g in graph_ids)
  ):
    raise ValueError(
      f"config.graph_ids={config.graph_ids!r} must be a non-empty "
      "tuple of paper graph ids in step order, e.g. (1, 0)."
    )
  for name, minimum in (
    ("num_workers", 2),
    ("batch_size", 1),
    ("eval_batch_size", 1),
    ("num_epochs", 1),
    ("seed", 0),
    ("max_steps_per_epoch", 0),
    ("max_eval_examples", 0),
    ("stop_after_steps", 0),
    ("classes_per_worker", 1),
  ):
    _integer(config, name, minimum)
  _real(config, "learning_rate", 0.0, low_open=True)
  _real(config, "lr_decay_factor", 0.0, 1.0, low_open=True)
  _real(config, "dirichlet_alpha", 0.0, low_open=True)
  decay = config.lr_decay_epochs
  if (
    not isinstance(decay, (tuple, list))
    or not all(
      isinstance(e, (int, float)) and not isinstance(e, bool) and e >= 0 for e in decay
    )
    or list(decay) != sorted(decay)
  ):
    raise ValueError(
      f"config.lr_decay_epochs={decay!r} must be an increasing tuple "
      "of epochs, e.g. (100, 150); () for a constant rate."
    )
  for name in (
    "same_init",
    "skip_nonfinite",
    "progress_bar",
    "plots",
    "reference_epoch_phase",
    "overlap",
  ):
    if not isinstance(config[name], bool):
      raise ValueError(f"config.{name}={config[name]!r} must be True or False.")
  gossips = config.method not in ("allreduce", "local")
  for name, default in (("overlap", False), ("gossip_every", 1), ("delay", 0)):
    if not gossips and config[name] != default:
      raise ValueError(
        f"config.{name}={config[name]!r} applies to the gossip methods only, not "
        f"to config.method={config.method!r}; leave it at {default!r}."
      )
  if config.delay and config.method.endswith("choco"):
    raise ValueError(
      f"config.delay={config.delay!r} is not available for "
      f"config.method={config.method!r}: compressed gossip keeps public copies, "
      "not push-sum weights; use delay with dpsgd, dpsgd_reference or matcha."
    )
  if config.delay and config.method.startswith("aldsgd_"):
    raise ValueError(
      f"config.delay={config.delay!r} is not available for AL-DSGD "
      f"(config.method={config.method!r}): its pull is not mass-conserving, so "
      "there is no push-sum form to delay; use delay with dpsgd, "
      "dpsgd_reference or matcha."
    )
  if config.data_source == "idx" and config.dataset != "fashion_mnist":
    raise ValueError(
      f"config.data_source='idx' reads Debian's Fashion-MNIST files, "
      f"but config.dataset={config.dataset!r}; use data_source='tfds'."
    )


# ----------------------------------------------------------------------------
# The loop.


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


def _load_data(config):
  """The train batches per worker and the test split (images, labels)."""
  info = input_pipeline.DATASETS[config.dataset]
  load = lambda split: input_pipeline.load_split(
    config.dataset, split, source=config.data_source, data_dir=config.data_dir or None
  )
  train_images, train_labels = load("train")
  test_images, test_labels = load("test")
  if config.max_eval_examples:
    test_images = test_images[: config.max_eval_examples]
    test_labels = test_labels[: config.max_eval_examples]
  batches = input_pipeline.WorkerBatches(
    train_images,
    train_labels,
    num_workers=config.num_workers,
    batch_size=config.batch_size,
    seed=config.seed,
    mean=info.mean,
    std=info.std,
    augment=info.augment,
    partition_scheme=config.partition,
    dirichlet_alpha=config.dirichlet_alpha,
    classes_per_worker=config.classes_per_worker,
  )
  return info, batches, (test_images, test_labels)


def _restore_or_start(checkpointer, state, config):
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


def _save(checkpointer, state, progress, config):
  checkpointer.save(
    progress.step,
    state,
    dict(
      progress=dataclasses.asdict(progress),
      fingerprint=checkpoint_lib.fingerprint(config),
    ),
  )


def _train_epoch(
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
      np.asarray(progress.bytes_sent) + traffic.sent(progress.step)
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


def _epoch_record(
  state, progress, evaluator, lr_fn, steps_per_epoch, traffic, config, choco_lr
) -> dict[str, Any]:
  sums = ald.gather_workers(
    dict(
      loss=state.sums.loss,
      accuracy=state.sums.accuracy,
      nonfinite=state.sums.nonfinite_steps,
      consensus=_consensus_distance(state.params),
      finite=_workers_finite(state.params),
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


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Trains ``config.num_workers`` workers, evaluating after every epoch.

  Resumes from the latest checkpoint in ``workdir`` if there is one (refusing a
  config whose run-defining fields differ from the checkpoint's).

  Returns:
    The last epoch's metrics record.

  Raises:
    TrainingInterrupted: after SIGINT/SIGTERM or ``config.stop_after_steps``
      steps, once a checkpoint is saved.
  """
  # Set-up: cheap checks first, so a wrong device count or graph fails before
  # the data loads.
  validate_config(config)
  workdir = pathlib.Path(workdir)
  is_main = jax.process_index() == 0
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
  mesh = ald.worker_mesh(
    config.num_workers, workers_per_device=config.workers_per_device
  )
  info, batches, (test_images, test_labels) = _load_data(config)
  steps_per_epoch = batches.steps_per_epoch
  if config.max_steps_per_epoch:
    steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
  schedule = build_schedule(config, steps_per_epoch)
  lr_fn = learning_rate_schedule(config, steps_per_epoch)
  choco_lr = consensus_lr(config, schedule)
  if choco_lr is not None and is_main:
    print(
      f"consensus_lr {choco_lr:g} ({config.compressor}, "
      f"{'tuned' if config.consensus_lr == 'auto' else 'given'})",
      flush=True,
    )
  tx = build_optimizer(config, schedule, lr_fn, steps_per_epoch, choco_lr)
  state = create_train_state(config, info, mesh, tx)
  traffic = Traffic.of(config, schedule, state.params)
  p_train_step = jax.jit(
    ald.worker_map(train_step, mesh, workers_per_device=config.workers_per_device),
    donate_argnums=0,
  )
  evaluator = Evaluator(
    test_images, test_labels, info, config.eval_batch_size, state.graphdef, mesh
  )
  feed = _Feeder(batches, mesh, config.num_workers)

  # Resume.
  checkpointer = checkpoint_lib.Checkpointer(workdir / "checkpoints")
  state, progress = _restore_or_start(checkpointer, state, config)
  log = report.MetricsLog(workdir / "metrics.jsonl")
  records = log.keep_epochs_before(progress.epoch) if is_main else []
  if is_main:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

  # The epoch loop.
  started = time.perf_counter() - progress.time_total_s
  first_step = progress.step
  record = records[-1] if records else {}
  with StopSignal() as stop:

    def stop_reason(step):
      reason = stop.reason(step)  # at every step: all processes must ask
      if (
        reason is None
        and config.stop_after_steps
        and (step - first_step >= config.stop_after_steps)
      ):
        reason = f"stop_after_steps={config.stop_after_steps}"
      return reason

    for epoch in range(progress.epoch, config.num_epochs):
      bar = _progress_bar(
        config, is_main, epoch, steps_per_epoch, progress.step - epoch * steps_per_epoch
      )
      state, reason = _train_epoch(
        state,
        progress,
        epoch=epoch,
        steps_per_epoch=steps_per_epoch,
        p_train_step=p_train_step,
        feed=feed,
        traffic=traffic,
        stop_reason=stop_reason,
        bar=bar,
      )
      if bar is not None:
        bar.close()
      progress.time_total_s = time.perf_counter() - started
      if reason:
        _save(checkpointer, state, progress, config)
        checkpointer.close()
        raise TrainingInterrupted(progress.step, reason, stop.signum)

      # Evaluation.
      record = _epoch_record(
        state, progress, evaluator, lr_fn, steps_per_epoch, traffic, config, choco_lr
      )
      record["time_total_s"] = time.perf_counter() - started
      if is_main:
        log.append(record)
        records.append(record)
        if config.plots:
          report.plot_run(
            records, workdir / "plots", title=f"{config.method} on {config.dataset}"
          )
        _print_epoch(record)

      # Checkpoint.
      state = state.replace(sums=_zero_sums(config.num_workers, mesh))
      progress.epoch = epoch + 1
      progress.time_total_s = time.perf_counter() - started
      _save(checkpointer, state, progress, config)
  checkpointer.close()
  return record


def final_params(workdir: str | pathlib.Path) -> Any:
  """The stacked parameters (NumPy) of the latest checkpoint in ``workdir``."""
  checkpointer = checkpoint_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints")
  step = checkpointer.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {workdir}/checkpoints.")
  state, _ = checkpointer.restore_arrays(step)
  checkpointer.close()
  return state["params"]


def _progress_bar(config, is_main, epoch, total, initial):
  if not (config.progress_bar and is_main):
    return None
  import tqdm  # pylint: disable=g-import-not-at-top

  return tqdm.tqdm(
    total=total,
    initial=initial,
    desc=f"epoch {epoch + 1}",
    leave=False,
    dynamic_ncols=True,
  )


def _print_epoch(record):
  acc = np.asarray(record["test_accuracy"]) * 100
  print(
    f"epoch {record['epoch'] + 1}: train loss {np.mean(record['train_loss']):.4f}"
    f", test acc mean {acc.mean():.2f}% (worst {acc.min():.2f}%), averaged "
    f"model {record['test_accuracy_averaged_model'] * 100:.2f}%, consensus "
    f"{np.mean(record['consensus_distance']):.3g}, lr {record['learning_rate']:g}"
    f", {record['images_per_s']:.0f} img/s",
    flush=True,
  )
