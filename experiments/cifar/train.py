"""Decentralized training of CIFAR-style models: the paper's experiments.

``train_and_evaluate(config, workdir)`` turns a config (see ``configs/``) into
explicit library calls (``builders.py``): a topology and schedule, a local
optimizer chained with the mixing rule (gossip, AL-DSGD's adjacent leader,
quasi-global momentum, D², gradient tracking, all-reduce or none), one model
per worker (BatchNorm statistics local, or mixed as the parameters are),
one jitted ``train_step(state, batch) -> (state, metrics)`` over all workers,
per-epoch evaluation of every worker's model and of the averaged model
(``evaluation.py``), ``metrics.jsonl``, plots and checkpoints from which a
rerun of the same command resumes exactly (``loop.py``).
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

import jax_aldsgd as ald
from experiments.cifar import (
  builders,
  evaluation,
  input_pipeline,
  loop,
  methods,
  models,
  report,
  validation,
)
from experiments.cifar import checkpoint as checkpoint_lib

# Names other code imports from here.
from experiments.cifar.builders import build_compressor as build_compressor
from experiments.cifar.builders import build_optimizer as build_optimizer
from experiments.cifar.builders import build_schedule as build_schedule
from experiments.cifar.builders import build_stats_exchange as build_stats_exchange
from experiments.cifar.builders import consensus_lr as consensus_lr
from experiments.cifar.builders import traffic as traffic
from experiments.cifar.loop import TrainingInterrupted as TrainingInterrupted
from experiments.cifar.validation import validate_config as validate_config

METHODS = tuple(methods.PRESETS)  # the preset names, as the configs take them


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
  # The exchange of batch_stats (`builders.build_stats_exchange`) and its
  # state; None when the statistics stay local (config.bn_stats="local").
  stats_state: Any = None
  stats_tx: optax.GradientTransformation | None = flax.struct.field(
    pytree_node=False, default=None
  )


def create_train_state(config, info, mesh, tx, stats_tx=None) -> TrainState:
  """One model per worker (different seeds unless config.same_init), stacked.

  ``stats_tx`` (`builders.build_stats_exchange`'s): the exchange that mixes
  the BatchNorm statistics after each step; None keeps them local.
  """
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
      norm=config.norm,
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
  init = lambda tx, tree: jax.jit(
    ald.worker_map(tx.init, mesh, workers_per_device=config.workers_per_device)
  )(tree)
  return TrainState(
    params=params,
    batch_stats=stats,
    opt_state=init(tx, params),
    sums=_zero_sums(n, mesh),
    graphdef=graphdef,
    tx=tx,
    stats_state=None if stats_tx is None else init(stats_tx, stats),
    stats_tx=stats_tx,
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
    logits, batch_stats = models.apply_model(
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
  stats_state = state.stats_state
  if state.stats_tx is not None:
    # The statistics as parameters with zero updates: the exchange returns
    # W_k s - s (or mean(s) - s), so s becomes W_k s.
    zeros = jax.tree.map(jnp.zeros_like, batch_stats)
    moves, stats_state = state.stats_tx.update(zeros, stats_state, batch_stats)
    batch_stats = optax.apply_updates(batch_stats, moves)
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
    params=params,
    batch_stats=batch_stats,
    opt_state=opt_state,
    sums=sums,
    stats_state=stats_state,
  )
  return state, dict(loss=loss)


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
  # Set-up: cheap checks first, so a wrong device count or graph, or a workdir
  # holding another run, fails before the data loads.
  validation.validate_config(config)
  workdir = pathlib.Path(workdir)
  is_main = jax.process_index() == 0
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
  mesh = ald.worker_mesh(
    config.num_workers, workers_per_device=config.workers_per_device
  )
  checkpointer = checkpoint_lib.Checkpointer(workdir / "checkpoints")
  loop.refuse_a_different_run(checkpointer, config)
  info, batches, (test_images, test_labels) = _load_data(config)
  steps_per_epoch = batches.steps_per_epoch
  if config.max_steps_per_epoch:
    steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
  schedule = builders.build_schedule(config, steps_per_epoch)
  lr_fn = builders.learning_rate_schedule(config, steps_per_epoch)
  choco_lr = builders.consensus_lr(config, schedule)
  if choco_lr is not None and is_main:
    print(
      f"consensus_lr {choco_lr:g} ({config.compressor}, "
      f"{'tuned' if config.consensus_lr == 'auto' else 'given'})",
      flush=True,
    )
  tx = builders.build_optimizer(config, schedule, lr_fn, steps_per_epoch, choco_lr)
  stats_tx = builders.build_stats_exchange(config, schedule)
  state = create_train_state(config, info, mesh, tx, stats_tx)
  # Bytes and simulated time count the statistics' exchange with the step's.
  traffic = builders.traffic(config, tx, state.params, stats_tx, state.batch_stats)
  p_train_step = jax.jit(
    ald.worker_map(train_step, mesh, workers_per_device=config.workers_per_device),
    donate_argnums=0,
  )
  evaluator = evaluation.Evaluator(
    test_images, test_labels, info, config.eval_batch_size, state.graphdef, mesh
  )
  # Epochs before the last may evaluate on the first interim_eval_examples only.
  interim_evaluator = evaluator
  if 0 < config.interim_eval_examples < len(test_images):
    interim_evaluator = evaluation.Evaluator(
      test_images[: config.interim_eval_examples],
      test_labels[: config.interim_eval_examples],
      info,
      config.eval_batch_size,
      state.graphdef,
      mesh,
    )
  feed = loop.Feeder(batches, mesh, config.num_workers)

  # Resume.
  state, progress = loop.restore_or_start(checkpointer, state, config)
  log = report.MetricsLog(workdir / "metrics.jsonl")
  records = log.keep_epochs_before(progress.epoch) if is_main else []
  if is_main:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

  # The epoch loop.
  started = time.perf_counter() - progress.time_total_s
  first_step = progress.step
  record = records[-1] if records else {}
  with loop.StopSignal() as stop:

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
      bar = loop.progress_bar(
        config, is_main, epoch, steps_per_epoch, progress.step - epoch * steps_per_epoch
      )
      state, reason = loop.train_epoch(
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
        loop.save(checkpointer, state, progress, config)
        checkpointer.close()
        raise loop.TrainingInterrupted(progress.step, reason, stop.signum)

      # Evaluation.
      last = epoch + 1 == config.num_epochs
      record = loop.epoch_record(
        state,
        progress,
        evaluator if last else interim_evaluator,
        lr_fn,
        steps_per_epoch,
        traffic,
        config,
        choco_lr,
      )
      record["time_total_s"] = time.perf_counter() - started
      if is_main:
        log.append(record)
        records.append(record)
        if config.plots:
          report.plot_run(
            records, workdir / "plots", title=f"{config.method} on {config.dataset}"
          )
        loop.print_epoch(record)

      # Checkpoint.
      state = state.replace(sums=_zero_sums(config.num_workers, mesh))
      progress.epoch = epoch + 1
      progress.time_total_s = time.perf_counter() - started
      loop.save(checkpointer, state, progress, config)
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
