"""Decentralized training of CIFAR-style models: the paper's experiments.

``train_and_evaluate(config, workdir)`` turns a config (see ``configs/``) into
explicit library calls: a topology and schedule, a local optimizer chained with
gossip / AL-DSGD / all-reduce, one model per worker (BatchNorm statistics stay
local), one jitted step per iteration over all workers, per-epoch evaluation of
every worker's model and of the averaged model, ``metrics.jsonl``, plots and
checkpoints from which a rerun of the same command resumes exactly.
"""

from __future__ import annotations

import dataclasses
import pathlib
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

import jax_aldsgd as ald
from experiments.cifar import checkpoint as checkpoint_lib
from experiments.cifar import input_pipeline
from experiments.cifar import models
from experiments.cifar import report

METHODS = ("allreduce", "dpsgd", "dpsgd_reference", "matcha", "aldsgd_dpsgd",
           "aldsgd_matcha", "local")
TOPOLOGIES = ("paper", "ring", "torus", "exponential", "complete")


class TrainingInterrupted(Exception):
  """Training stopped early (signal or ``stop_after_steps``); a checkpoint was saved."""

  def __init__(self, step: int, reason: str, signum: int | None = None):
    super().__init__(f"training stopped at step {step} ({reason}); a checkpoint "
                     "was saved, rerun the same command to resume.")
    self.step, self.reason, self.signum = step, reason, signum


# ----------------------------------------------------------------------------
# Config -> library objects.


def _graphs(config) -> list[ald.Topology]:
  n = config.num_workers
  if config.topology == "paper":
    graphs = [ald.topologies.paper_graph(g, config.graph_variant,
                                         allow_disconnected=len(config.graph_ids) > 1)
              for g in config.graph_ids]
    for g, graph in zip(config.graph_ids, graphs):
      if graph.num_workers != n:
        raise ValueError(f"paper graph {g} has {graph.num_workers} workers but "
                         f"config.num_workers is {n}; set --config.num_workers="
                         f"{graph.num_workers} or choose other graph_ids.")
    return graphs
  if config.topology == "torus":
    rows = int(np.sqrt(n))
    while n % rows:
      rows -= 1
    return [ald.topologies.torus(rows, n // rows)]
  return [getattr(ald.topologies, config.topology)(n)]


def build_schedule(config) -> ald.schedules.Schedule | None:
  """The gossip schedule of ``config.method`` (None for allreduce and local)."""
  base = config.method.removeprefix("aldsgd_")
  graphs = _graphs(config)
  if base in ("allreduce", "local"):
    return None
  if base == "dpsgd":
    parts = [ald.schedules.full(g) for g in graphs]
  elif base == "dpsgd_reference":
    parts = [ald.schedules.alternating(g) for g in graphs]
  elif base == "matcha":
    parts = [ald.schedules.matcha(g, config.matcha_budget, seed=config.matcha_seed)
             for g in graphs]
  else:
    raise ValueError(f"unknown method {config.method!r}; valid methods are "
                     f"{', '.join(METHODS)}.")
  return parts[0] if len(parts) == 1 else ald.schedules.rotating(parts)


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  boundaries = {int(e * steps_per_epoch): config.lr_decay_factor
                for e in config.lr_decay_epochs}
  return optax.piecewise_constant_schedule(config.learning_rate, boundaries)


def build_optimizer(config, schedule, learning_rate) -> optax.GradientTransformation:
  common = dict(momentum=config.momentum, weight_decay=config.weight_decay)
  if config.method.startswith("aldsgd_"):
    return ald.aldsgd(learning_rate, schedule, c1=config.c1, c2=config.c2,
                      p1=config.p1, p2=config.p2, pull_every=config.pull_every,
                      skip_nonfinite=config.skip_nonfinite, **common)
  if schedule is not None:
    return ald.dsgd(learning_rate, schedule, skip_nonfinite=config.skip_nonfinite,
                    **common)
  local = ald.local_sgd(learning_rate, **common)
  if config.method == "allreduce":
    return optax.chain(local, ald.allreduce())
  return local


def message_bytes(num_params: int, config) -> int:
  """Bytes one worker sends along one active matching (float32 packed buffer)."""
  extras = 2 if config.method.startswith("aldsgd_") else 0  # loss, health flag
  return 4 * (num_params + extras)


# ----------------------------------------------------------------------------
# Per-worker models.


@dataclasses.dataclass
class Workers:
  """Stacked per-worker state: leading axis = worker."""

  params: Any
  batch_stats: Any
  opt_state: Any
  loss_sum: jax.Array  # (n,) running sums over the current epoch
  correct_sum: jax.Array
  nonfinite_sum: jax.Array  # (n,) steps leaving a NaN/Inf loss or parameters

  def tree(self):
    return dict(params=self.params, batch_stats=self.batch_stats,
                opt_state=self.opt_state, loss_sum=self.loss_sum,
                correct_sum=self.correct_sum, nonfinite_sum=self.nonfinite_sum)


def init_models(config, info, mesh):
  """One model per worker (different seeds unless config.same_init)."""
  n = config.num_workers
  keys = jax.random.split(jax.random.key(config.seed), n)
  if config.same_init:
    keys = jnp.broadcast_to(keys[0], keys.shape)
  graphdef, params, stats = None, [], []
  for key in keys:
    model = models.create_model(config.model, num_classes=info.num_classes,
                                in_channels=info.image_shape[-1],
                                rngs=nnx.Rngs(params=key))
    graphdef, p, s, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    if jax.tree.leaves(rest):
      raise ValueError(f"model {config.model!r} has state other than parameters "
                       "and BatchNorm statistics, which this trainer does not "
                       "know how to keep per worker.")
    params.append(p)
    stats.append(s)
  stack = lambda trees: ald.shard_workers(ald.stack_workers(trees), mesh)
  return graphdef, stack(params), stack(stats)


def make_steps(graphdef, tx, mesh, per_device=1):
  """Jitted train and evaluation steps over all workers."""

  def forward(params, batch_stats, images, train):
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    model.train() if train else model.eval()
    logits = model(images)
    return logits, nnx.state(model, nnx.BatchStat)

  def train_step(params, batch_stats, opt_state, loss_sum, correct_sum,
                 nonfinite_sum, images, labels):
    def loss_fn(p):
      logits, new_stats = forward(p, batch_stats, images, train=True)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, (logits, new_stats)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
    params = optax.apply_updates(params, updates)
    correct = jnp.mean(jnp.argmax(logits, -1) == labels)
    # The parameters too: XLA's CPU max may drop NaNs (relu(NaN) = 0), so a NaN
    # batch can give a finite loss and NaN gradients.
    finite = jnp.isfinite(loss) & jnp.all(jnp.array(
        [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(params)]))
    # A diverged worker's NaN must not wipe out its epoch's other statistics.
    return (params, new_stats, opt_state, loss_sum + jnp.where(finite, loss, 0),
            correct_sum + correct, nonfinite_sum + (~finite), loss)

  train = jax.jit(ald.worker_map(train_step, mesh, workers_per_device=per_device),
                  donate_argnums=(0, 1, 2, 3, 4, 5))

  def evaluate(params, batch_stats, images, labels, mask):
    logits, _ = forward(params, batch_stats, images, train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels)
    return jnp.sum(losses * mask), jnp.sum(correct * mask)

  workers, rep = jax.P("workers"), jax.P()

  # Every worker evaluates its own model on the same (replicated) test batch;
  # a device holds a (per_device, ...) block of workers.
  def eval_own(params, batch_stats, images, labels, mask):
    return jax.vmap(evaluate, in_axes=(0, 0, None, None, None))(
        params, batch_stats, images, labels, mask)

  eval_workers = jax.jit(jax.shard_map(
      eval_own, mesh=mesh, in_specs=(workers, workers, rep, rep, rep),
      out_specs=(workers, workers)))

  # The averaged model, on a test batch split across the devices.
  def eval_shared(params, batch_stats, images, labels, mask):
    loss, correct = evaluate(params, batch_stats, images[0], labels[0], mask[0])
    return (jax.lax.psum(loss, "workers"), jax.lax.psum(correct, "workers"))

  eval_average = jax.jit(jax.shard_map(
      eval_shared, mesh=mesh, in_specs=(rep, rep, workers, workers, workers),
      out_specs=(rep, rep)))

  @jax.jit
  def consensus(params):
    mean = jax.tree.map(lambda a: a.mean(0), params)
    squares = sum(jnp.sum((a - m[None]) ** 2, axis=tuple(range(1, a.ndim)))
                  for a, m in zip(jax.tree.leaves(params), jax.tree.leaves(mean)))
    return jnp.sqrt(squares)

  @jax.jit
  def all_finite(params):
    return sum(jnp.sum(~jnp.isfinite(a), axis=tuple(range(1, a.ndim)))
               for a in jax.tree.leaves(params)) == 0

  @jax.jit
  def average(tree):
    return jax.tree.map(lambda a: a.mean(0), tree)

  return Steps(train, eval_workers, eval_average, consensus, all_finite, average)


@dataclasses.dataclass(frozen=True)
class Steps:
  train: Any
  eval_workers: Any
  eval_average: Any
  consensus: Any
  all_finite: Any
  average: Any


def _eval_arrays(images, labels, batch_size, num_devices, info):
  """Normalized test set, padded to whole batches divisible by the devices."""
  batch_size = -(-batch_size // num_devices) * num_devices
  count = len(images)
  total = -(-count // batch_size) * batch_size
  mask = np.zeros(total, np.float32)
  mask[:count] = 1.0
  x = np.zeros((total,) + images.shape[1:], np.float32)
  x[:count] = input_pipeline.normalize(images, info.mean, info.std)
  y = np.zeros(total, np.int32)
  y[:count] = labels
  return x, y, mask, batch_size


def _place(array, mesh, spec):
  """A host array as a global array on ``mesh`` (each process its own shards)."""
  sharding = jax.sharding.NamedSharding(mesh, spec)
  return jax.make_array_from_callback(array.shape, sharding, lambda i: array[i])


def evaluate_all(state: Workers, test, steps, mesh):
  """Per-worker and averaged-model test loss and accuracy over the test set."""
  x, y, mask, batch_size = test
  num_devices = mesh.shape["workers"]
  count = mask.sum()
  own_loss = own_correct = 0.0
  avg_loss = avg_correct = 0.0
  mean_params = steps.average(state.params)
  mean_stats = steps.average(state.batch_stats)
  everyone = jax.P()
  for start in range(0, len(x), batch_size):
    sl = slice(start, start + batch_size)
    batch = [_place(a[sl], mesh, everyone) for a in (x, y, mask)]
    loss, correct = steps.eval_workers(state.params, state.batch_stats, *batch)
    own_loss, own_correct = own_loss + loss, own_correct + correct
    split = [ald.shard_workers(a[sl].reshape((num_devices, -1) + a.shape[1:]), mesh)
             for a in (x, y, mask)]
    loss, correct = steps.eval_average(mean_params, mean_stats, *split)
    avg_loss, avg_correct = avg_loss + loss, avg_correct + correct
  own_loss, own_correct, avg_loss, avg_correct = ald.gather_workers(
      (own_loss, own_correct, avg_loss, avg_correct))
  return dict(
      test_loss=(own_loss / count).tolist(),
      test_accuracy=(own_correct / count).tolist(),
      test_loss_averaged_model=float(avg_loss / count),
      test_accuracy_averaged_model=float(avg_correct / count),
  )


class _Feeder:
  """Builds each step's global batch; a process computes only its own workers'."""

  def __init__(self, batches, mesh, num_workers):
    self._batches = batches
    self._sharding = jax.sharding.NamedSharding(mesh, jax.P("workers"))
    index_map = self._sharding.addressable_devices_indices_map((num_workers,))
    self._local = sorted({w for (rows,) in index_map.values()
                          for w in range(*rows.indices(num_workers))})
    self._row = {w: r for r, w in enumerate(self._local)}
    self._n = num_workers

  def __call__(self, epoch, step):
    images, labels = self._batches.batch(epoch, step, workers=self._local)
    return tuple(
        jax.make_array_from_callback(
            (self._n,) + a.shape[1:], self._sharding,
            lambda i, a=a: a[[self._row[w] for w in range(*i[0].indices(self._n))]])
        for a in (images, labels))


# ----------------------------------------------------------------------------
# Signals.


class _StopRequest:
  """Turns SIGINT/SIGTERM into a flag checked between steps (main thread only)."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGINT, signal.SIGTERM):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


# ----------------------------------------------------------------------------
# The loop.


def _choice(config, name, valid):
  value = config[name]
  if value not in valid:
    raise ValueError(f"config.{name}={value!r} is not valid; choose one of "
                     f"{', '.join(map(str, valid))} (e.g. --config.{name}="
                     f"{next(iter(valid))}).")


def _integer(config, name, minimum):
  value = config[name]
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
      value < minimum):
    raise ValueError(f"config.{name}={value!r} must be an integer >= {minimum}.")


def _real(config, name, low, high=None, low_open=False, high_open=False):
  value = config[name]
  ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and
        np.isfinite(value) and (value > low if low_open else value >= low) and
        (high is None or (value < high if high_open else value <= high)))
  if not ok:
    interval = (f"{'(' if low_open else '['}{low}, "
                f"{'inf' if high is None else high}{')' if high_open else ']'}")
    raise ValueError(f"config.{name}={value!r} must be a finite number in "
                     f"{interval}.")


def validate_config(config) -> None:
  """Checks every field a run reads; messages name the field, value and fix."""
  _choice(config, "method", METHODS)
  _choice(config, "dataset", tuple(input_pipeline.DATASETS))
  _choice(config, "data_source", input_pipeline.SOURCES)
  _choice(config, "model", tuple(models.MODELS))
  _choice(config, "topology", TOPOLOGIES)
  _choice(config, "graph_variant", ("pairs", "triples"))
  graph_ids = config.graph_ids
  if isinstance(graph_ids, int):
    graph_ids = (graph_ids,)
  if (not isinstance(graph_ids, (tuple, list)) or not graph_ids or
      not all(isinstance(g, int) and not isinstance(g, bool) for g in graph_ids)):
    raise ValueError(f"config.graph_ids={config.graph_ids!r} must be a non-empty "
                     "tuple of paper graph ids in step order, e.g. (1, 0).")
  for name, minimum in (("num_workers", 2), ("batch_size", 1),
                        ("eval_batch_size", 1), ("num_epochs", 1), ("seed", 0),
                        ("matcha_seed", 0), ("pull_every", 1),
                        ("max_steps_per_epoch", 0), ("max_eval_examples", 0),
                        ("stop_after_steps", 0), ("workers_per_device", 1)):
    _integer(config, name, minimum)
  _real(config, "learning_rate", 0.0, low_open=True)
  _real(config, "lr_decay_factor", 0.0, 1.0, low_open=True)
  _real(config, "momentum", 0.0, 1.0, high_open=True)
  _real(config, "weight_decay", 0.0)
  _real(config, "matcha_budget", 0.0, 1.0, low_open=True)
  for name in ("c1", "c2", "p1", "p2"):
    _real(config, name, 0.0, 1.0)
  for a, b in (("c1", "c2"), ("p1", "p2")):
    if config[a] + config[b] > 1:
      raise ValueError(f"config.{a} + config.{b} = {config[a]} + {config[b]} must "
                       "be <= 1 (they are averaging weights).")
  decay = config.lr_decay_epochs
  if not isinstance(decay, (tuple, list)) or not all(
      isinstance(e, (int, float)) and not isinstance(e, bool) and e >= 0
      for e in decay) or list(decay) != sorted(decay):
    raise ValueError(f"config.lr_decay_epochs={decay!r} must be an increasing tuple "
                     "of epochs, e.g. (100, 150); () for a constant rate.")
  for name in ("same_init", "skip_nonfinite", "progress_bar", "plots"):
    if not isinstance(config[name], bool):
      raise ValueError(f"config.{name}={config[name]!r} must be True or False.")
  if config.num_workers % config.workers_per_device:
    raise ValueError(
        f"config.num_workers={config.num_workers} is not divisible by "
        f"config.workers_per_device={config.workers_per_device}; every device "
        "holds the same number of workers.")
  if config.data_source == "idx" and config.dataset != "fashion_mnist":
    raise ValueError(f"config.data_source='idx' reads Debian's Fashion-MNIST files, "
                     f"but config.dataset={config.dataset!r}; use data_source='tfds'.")


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Trains ``config.num_workers`` workers, evaluating after every epoch.

  Resumes from the latest checkpoint in ``workdir`` if there is one (refusing a
  config whose run-defining fields differ from the checkpoint's).

  Returns:
    The last epoch's metrics record.

  Raises:
    TrainingInterrupted: after SIGINT/SIGTERM or ``config.stop_after_steps``
      steps, once a checkpoint is saved.
  """
  validate_config(config)
  workdir = pathlib.Path(workdir)
  is_main = jax.process_index() == 0
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
  n = config.num_workers
  # Cheap checks first: a wrong device count or graph fails before data loads.
  per_device = config.workers_per_device
  mesh = ald.worker_mesh(n, workers_per_device=per_device)
  num_devices = n // per_device
  schedule = build_schedule(config)
  info = input_pipeline.DATASETS[config.dataset]
  data_dir = config.data_dir or None
  train_images, train_labels = input_pipeline.load_split(
      config.dataset, "train", source=config.data_source, data_dir=data_dir)
  test_images, test_labels = input_pipeline.load_split(
      config.dataset, "test", source=config.data_source, data_dir=data_dir)
  if config.max_eval_examples:
    test_images = test_images[:config.max_eval_examples]
    test_labels = test_labels[:config.max_eval_examples]
  batches = input_pipeline.WorkerBatches(
      train_images, train_labels, num_workers=n, batch_size=config.batch_size,
      seed=config.seed, mean=info.mean, std=info.std, augment=info.augment)
  steps_per_epoch = batches.steps_per_epoch
  if config.max_steps_per_epoch:
    steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)

  lr_fn = learning_rate_schedule(config, steps_per_epoch)
  tx = build_optimizer(config, schedule, lr_fn)
  graphdef, params, batch_stats = init_models(config, info, mesh)
  num_params = sum(int(np.prod(a.shape[1:])) for a in jax.tree.leaves(params))
  opt_state = jax.jit(ald.worker_map(tx.init, mesh,
                                     workers_per_device=per_device))(params)
  # Three distinct buffers: the train step donates each of them.
  zeros = lambda dtype: ald.shard_workers(jnp.zeros((n,), dtype), mesh)
  state = Workers(params, batch_stats, opt_state, zeros(jnp.float32),
                  zeros(jnp.float32), zeros(jnp.int32))
  steps = make_steps(graphdef, tx, mesh, per_device)
  feed = _Feeder(batches, mesh, n)
  test = _eval_arrays(test_images, test_labels, config.eval_batch_size,
                      num_devices, info)

  checkpointer = checkpoint_lib.Checkpointer(workdir / "checkpoints")
  log = report.MetricsLog(workdir / "metrics.jsonl")
  meta = dict(global_step=0, epoch=0, step_in_epoch=0, bytes_sent=[0] * n,
              time_train_s=0.0, time_total_s=0.0,
              fingerprint=checkpoint_lib.fingerprint(config))
  resumed = checkpointer.restore_latest(
      state.tree(), check_meta=lambda saved: checkpoint_lib.check_fingerprint(
          saved["fingerprint"], config, checkpointer.directory))
  if resumed is not None:
    restored, meta = resumed
    state = Workers(**restored)
    meta.pop("checksum", None)
  records = log.keep_epochs_before(meta["epoch"]) if is_main else []
  if is_main:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  bytes_per_message = message_bytes(num_params, config)
  # Ring all-reduce: each worker sends 2 (n - 1) / n of the model per step.
  allreduce_bytes = 2 * (n - 1) * (4 * num_params) // n

  def save():
    checkpointer.save(meta["global_step"], state.tree(), meta)

  started = time.perf_counter() - meta["time_total_s"]
  steps_this_run = 0
  record = records[-1] if records else {}
  with _StopRequest() as stop:
    for epoch in range(meta["epoch"], config.num_epochs):
      bar = _progress(config, is_main, epoch, steps_per_epoch, meta["step_in_epoch"])
      train_started = time.perf_counter()
      for step_in_epoch in range(meta["step_in_epoch"], steps_per_epoch):
        images, labels = feed(epoch, step_in_epoch)
        *arrays, loss = steps.train(*state.tree().values(), images, labels)
        state = Workers(*arrays)
        global_step = meta["global_step"]
        if schedule is not None:
          sent = schedule.active_degrees(global_step) * bytes_per_message
          meta["bytes_sent"] = (np.asarray(meta["bytes_sent"]) + sent).tolist()
        elif config.method == "allreduce":
          meta["bytes_sent"] = [b + allreduce_bytes for b in meta["bytes_sent"]]
        meta.update(global_step=global_step + 1, step_in_epoch=step_in_epoch + 1)
        steps_this_run += 1
        if bar is not None:
          bar.update(1)
          if step_in_epoch % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(ald.gather_workers(loss)):.4f}")
        reason = None
        if stop.signum is not None:
          reason = signal.Signals(stop.signum).name
        elif config.stop_after_steps and steps_this_run >= config.stop_after_steps:
          reason = f"stop_after_steps={config.stop_after_steps}"
        if reason:
          jax.block_until_ready(state.params)
          meta["time_train_s"] += time.perf_counter() - train_started
          meta["time_total_s"] = time.perf_counter() - started
          save()
          if bar is not None:
            bar.close()
          raise TrainingInterrupted(meta["global_step"], reason, stop.signum)
      jax.block_until_ready(state.params)
      meta["time_train_s"] += time.perf_counter() - train_started
      if bar is not None:
        bar.close()

      epoch_steps = steps_per_epoch
      sums = ald.gather_workers(dict(
          loss=state.loss_sum, correct=state.correct_sum,
          nonfinite=state.nonfinite_sum,
          consensus=steps.consensus(state.params),
          finite=steps.all_finite(state.params)))
      record = dict(
          epoch=epoch, step=meta["global_step"],
          learning_rate=float(lr_fn(meta["global_step"] - 1)),
          train_loss=(sums["loss"] / epoch_steps).tolist(),
          train_accuracy=(sums["correct"] / epoch_steps).tolist(),
          **evaluate_all(state, test, steps, mesh),
          consensus_distance=sums["consensus"].tolist(),
          nonfinite_steps=sums["nonfinite"].tolist(),
          params_finite=sums["finite"].tolist(),
          bytes_sent=meta["bytes_sent"],
          bytes_sent_mean=float(np.mean(meta["bytes_sent"])),
          time_train_s=meta["time_train_s"],
          time_total_s=time.perf_counter() - started,
          images_per_s=n * config.batch_size * meta["global_step"] / max(
              meta["time_train_s"], 1e-9),
      )
      if is_main:
        log.append(record)
        records.append(record)
        if config.plots:
          report.plot_run(records, workdir / "plots",
                          title=f"{config.method} on {config.dataset}")
        _print_epoch(record)
      state.loss_sum = state.loss_sum * 0
      state.correct_sum = state.correct_sum * 0
      state.nonfinite_sum = state.nonfinite_sum * 0
      meta.update(epoch=epoch + 1, step_in_epoch=0,
                  time_total_s=time.perf_counter() - started)
      save()
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


def _progress(config, is_main, epoch, total, initial):
  if not (config.progress_bar and is_main):
    return None
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}",
                   leave=False, dynamic_ncols=True)


def _print_epoch(record):
  acc = np.asarray(record["test_accuracy"]) * 100
  print(f"epoch {record['epoch'] + 1}: train loss {np.mean(record['train_loss']):.4f}"
        f", test acc mean {acc.mean():.2f}% (worst {acc.min():.2f}%), averaged "
        f"model {record['test_accuracy_averaged_model'] * 100:.2f}%, consensus "
        f"{np.mean(record['consensus_distance']):.3g}, lr {record['learning_rate']:g}"
        f", {record['images_per_s']:.0f} img/s", flush=True)
