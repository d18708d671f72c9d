"""experiments.cifar end to end on mock data: training, resume, refusal, compare."""

import json

import jax
import numpy as np
import optax
import pytest

import jax_aldsgd as ald
from experiments import compare
from experiments.cifar import checkpoint as checkpoint_lib
from experiments.cifar import input_pipeline, methods, report, train
from experiments.cifar.configs import default
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T
from tests import helpers, reference
from tests.helpers import tiny_config


def _comparable(records):
  return [
    {k: v for k, v in r.items() if k not in report.TIMING_FIELDS} for r in records
  ]


def test_train_and_evaluate_on_mock_cifar(mock_cifar, tmp_path):
  config = tiny_config(plots=True, interim_eval_examples=16)
  record = train.train_and_evaluate(config, str(tmp_path))
  records = report.MetricsLog(tmp_path / "metrics.jsonl").read()
  assert [r["epoch"] for r in records] == [0, 1]
  assert record == records[-1]
  # The first epoch is evaluated on 16 test examples, the last on all 48.
  assert [r["eval_examples"] for r in records] == [16, 48]
  n = config.num_workers
  for key in (
    "train_loss",
    "train_accuracy",
    "test_accuracy",
    "test_loss",
    "consensus_distance",
    "bytes_sent",
  ):
    assert len(record[key]) == n, key
  assert all(np.isfinite(record["train_loss"]))
  assert 0.0 <= record["test_accuracy_averaged_model"] <= 1.0
  # 48 images, 8 workers -> shards of 6 -> 3 steps of batch 2 per epoch.
  assert record["step"] == 6
  assert record["learning_rate"] == pytest.approx(0.005)  # x0.1 after epoch 1
  # Bytes from the schedule: the active degrees of each step times the message
  # (float32 parameters, the loss and a health flag).
  schedule = train.build_schedule(config, steps_per_epoch=3)
  params = train.final_params(tmp_path)
  num_params = sum(int(np.prod(a.shape[1:])) for a in jax.tree.leaves(params))
  assert record["message_bytes"] == 4 * (num_params + 2)
  degrees = sum(schedule.active_degrees(k) for k in range(6))
  np.testing.assert_array_equal(record["bytes_sent"], degrees * 4 * (num_params + 2))
  assert (tmp_path / "plots" / "test_accuracy.png").stat().st_size > 0
  assert (tmp_path / "plots" / "consensus_distance.png").stat().st_size > 0
  assert json.loads((tmp_path / "config.json").read_text())["method"] == (
    "aldsgd_dpsgd_reference"
  )


def test_matcha_sends_what_its_schedule_activates(mock_cifar, tmp_path):
  config = tiny_config("matcha", num_epochs=1)
  record = train.train_and_evaluate(config, str(tmp_path))
  assert all(np.isfinite(record["train_loss"]))
  params = jax.tree.map(lambda a: a[0], train.final_params(tmp_path))
  message = 4 * sum(a.size for a in jax.tree.leaves(params))  # float32 parameters
  assert record["message_bytes"] == message
  # The paper pair (1, 0) under MATCHA (budget 0.5, seed 0), restarted each
  # epoch of 3 steps, built here without the trainer.
  schedule = S.rotating(
    [S.matcha(T.paper_graph(g, allow_disconnected=True), 0.5, seed=0) for g in (1, 0)],
    restart_every=3,
  )
  degrees = sum(schedule.active_degrees(k) for k in range(3))
  full = S.rotating([S.full(g) for g in schedule.graphs], restart_every=3)
  assert 0 < degrees.sum() < sum(full.active_degrees(k) for k in range(3)).sum()
  np.testing.assert_array_equal(record["bytes_sent"], degrees * message)


@pytest.mark.parametrize("every", [1, 2])
def test_allreduce_averages_every_so_many_steps(mock_cifar, tmp_path, every):
  config = tiny_config("allreduce", num_epochs=1, gossip_every=every)
  record = train.train_and_evaluate(config, str(tmp_path))
  assert all(np.isfinite(record["train_loss"]))
  # Steps 0, 1, 2 (every=1) or 0, 2 (every=2) average; the last one does.
  np.testing.assert_allclose(record["consensus_distance"], 0.0, atol=1e-5)
  params = jax.tree.map(lambda a: a[0], train.final_params(tmp_path))
  assert record["message_bytes"] == 4 * sum(a.size for a in jax.tree.leaves(params))
  averages = len(range(0, 3, every))
  np.testing.assert_allclose(
    record["bytes_sent"], averages * ald.allreduce_bytes(8, params)
  )


def _by_hand(name, learning_rate, epoch):
  """Preset ``name``'s schedule and optimizer, as the library's calls spelled out."""
  common = dict(momentum=0.0, weight_decay=5e-4)
  aldsgd = dict(c1=0.3, c2=0.1, p1=0.2, p2=0.2, pull_restart_every=epoch)
  top_k = dict(compressor=ald.compressors.top_k(0.1), consensus_lr=0.1)
  kind = {
    "full": S.full,
    "alternating": S.alternating,
    "matcha": lambda g: S.matcha(g, 0.5, seed=0),
  }
  rotating = lambda k: S.rotating(
    [kind[k](T.paper_graph(g, allow_disconnected=True)) for g in (1, 0)],
    restart_every=epoch,
  )
  local = ald.local_sgd(learning_rate, **common)
  # D², QG-DSGDm and gradient tracking on each paper graph with
  # alpha = 1 / lambda_max(L)
  # (builders.neighbor_weight says why).
  psd_schedule = S.rotating(
    [
      S.full(g, 1 / np.linalg.eigvalsh(g.laplacian())[-1])
      for g in (T.paper_graph(g, allow_disconnected=True) for g in (1, 0))
    ],
    restart_every=epoch,
  )
  heterogeneous = {
    "qg_dsgdm": (
      psd_schedule,
      ald.qg_dsgdm(learning_rate, psd_schedule, momentum=0.9, weight_decay=5e-4),
    ),
    "d2": (psd_schedule, ald.d2(learning_rate, psd_schedule, weight_decay=5e-4)),
    "gradient_tracking": (
      psd_schedule,
      ald.gradient_tracking(learning_rate, psd_schedule, **common),
    ),
    "sgp": (
      S.one_peer_exponential(8),
      ald.dsgd(learning_rate, S.one_peer_exponential(8), **common),
    ),
  }
  if name in heterogeneous:
    return heterogeneous[name]
  table = {
    "allreduce": (None, optax.chain(local, ald.allreduce())),
    "local": (None, local),
    "dpsgd": ("full", dict(common)),
    "dpsgd_reference": ("alternating", dict(common)),
    "matcha": ("matcha", dict(common)),
    "choco": ("full", dict(common, **top_k)),
    "aldsgd_dpsgd": ("full", dict(common, **aldsgd)),
    "aldsgd_dpsgd_reference": ("alternating", dict(common, **aldsgd)),
    "aldsgd_matcha": ("matcha", dict(common, **aldsgd)),
    "aldsgd_choco": ("full", dict(common, **aldsgd, **top_k)),
  }
  schedule, arguments = table[name]
  if schedule is None:
    return None, arguments
  schedule = rotating(schedule)
  factory = ald.aldsgd if name.startswith("aldsgd") else ald.dsgd
  return schedule, factory(learning_rate, schedule, **arguments)


@pytest.mark.parametrize("name", train.METHODS)
def test_presets_make_the_library_calls_they_name(name):
  """Every preset builds the schedule and optimizer written out in `_by_hand`,
  and they train a quadratic bit for bit alike."""
  assert set(train.METHODS) == set(methods.PRESETS) and len(train.METHODS) == 14
  config = tiny_config(name, consensus_lr="0.1")
  assert config.method == name
  train.validate_config(config)
  schedule = train.build_schedule(config, steps_per_epoch=3)
  choco_lr = train.consensus_lr(config, schedule)
  tx = train.build_optimizer(config, schedule, 0.05, 3, choco_lr)
  want_schedule, want_tx = _by_hand(name, 0.05, epoch=3)
  assert schedule == want_schedule
  rng = np.random.default_rng(0)
  dim = helpers.flat_dim(helpers.SHAPES)
  problem, x0 = reference.Quadratic(rng, 8, dim), rng.normal(size=(8, dim))
  mesh = ald.worker_mesh(8)
  got, _, _ = helpers.run(tx, x0, problem, 4, mesh)
  want, _, _ = helpers.run(want_tx, x0, problem, 4, mesh)
  np.testing.assert_array_equal(got, want)
  assert not np.array_equal(got, x0)


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_uninterrupted(mock_cifar, tmp_path):
  whole, parts = tmp_path / "whole", tmp_path / "parts"
  train.train_and_evaluate(tiny_config(), str(whole))
  # Stop mid-epoch (after 2 steps), then exactly at an epoch's end (step 3),
  # then run to the end: three invocations of the same command.
  for stop in (2, 1):
    with pytest.raises(train.TrainingInterrupted, match="stop_after_steps"):
      train.train_and_evaluate(tiny_config(stop_after_steps=stop), str(parts))
  train.train_and_evaluate(tiny_config(), str(parts))
  assert _comparable(report.MetricsLog(parts / "metrics.jsonl").read()) == (
    _comparable(report.MetricsLog(whole / "metrics.jsonl").read())
  )
  a = train.final_params(whole)
  b = train.final_params(parts)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_resume_refuses_a_different_config(mock_cifar, tmp_path, monkeypatch):
  with pytest.raises(train.TrainingInterrupted):
    train.train_and_evaluate(tiny_config(stop_after_steps=1), str(tmp_path))

  def load_data(config):
    raise AssertionError("the data loaded before the refusal")

  # Refused before the data loads (and the model is built).
  monkeypatch.setattr(train, "_load_data", load_data)
  with pytest.raises(checkpoint_lib.ConfigMismatchError) as error:
    train.train_and_evaluate(
      tiny_config(method="dpsgd", model="resnet20"), str(tmp_path)
    )
  message = str(error.value)
  assert (
    "method: checkpoint has 'aldsgd_dpsgd_reference', config has 'dpsgd'" in message
  )
  assert "model: checkpoint has 'small_cnn', config has 'resnet20'" in message
  assert "new --workdir" in message


def test_compare_table_and_plot(tmp_path, capsys):
  for name, accuracies in (("a", [0.5, 0.7, 0.8]), ("b", [0.6, 0.65, 0.9])):
    workdir = tmp_path / name
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"method": name}))
    log = report.MetricsLog(workdir / "metrics.jsonl")
    for epoch, acc in enumerate(accuracies):
      log.append(
        dict(
          epoch=epoch,
          test_accuracy=[acc, acc - 0.1],
          test_accuracy_averaged_model=acc + 0.01,
          bytes_sent_mean=1e9 * (epoch + 1),
        )
      )
  out = tmp_path / "cmp.png"
  assert (
    compare.main(
      [str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--target", "0.7"]
    )
    == 0
  )
  table = capsys.readouterr().out
  # a: mean over workers per epoch 0.45, 0.65, 0.75 -> reaches 0.7 at epoch 3.
  assert "| a | a | 3 | 75.00% | 75.00% | 70.00% (worker 1) | 81.00% | 3 |" in table
  assert "| b | b | 3 | 85.00% | 85.00% | 80.00% (worker 1) | 91.00% | 3 |" in table
  assert out.stat().st_size > 0
  with pytest.raises(SystemExit):
    compare.main([str(tmp_path / "missing")])


@pytest.mark.slow
def test_two_workers_per_device_matches_one(mock_cifar, tmp_path):
  """8 workers on 4 devices train like 8 workers on 8.

  The exchange is bit-exact across layouts (tests/lib/test_conformance.py); a conv net's
  forward pass under vmap is not, since XLA batches the convolutions of the
  workers that share a device differently (differences ~1e-7 after one epoch).
  """
  one = tmp_path / "one"
  two = tmp_path / "two"
  train.train_and_evaluate(tiny_config(num_epochs=1), str(one))
  train.train_and_evaluate(tiny_config(num_epochs=1, workers_per_device=2), str(two))
  [a] = _comparable(report.MetricsLog(one / "metrics.jsonl").read())
  [b] = _comparable(report.MetricsLog(two / "metrics.jsonl").read())
  assert a.keys() == b.keys()
  for key in a:
    if a[key] is None:  # e.g. consensus_lr without a compressor
      assert b[key] is None, key
      continue
    np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=key)
  for x, y in zip(
    jax.tree.leaves(train.final_params(one)), jax.tree.leaves(train.final_params(two))
  ):
    np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)


def test_compare_simulated_wall_clock(tmp_path, capsys):
  """Simulated time = measured time + steps x (rounds x (L + B / b)), closed form."""
  config = default.get_config("dpsgd")
  config.update(dict(topology="ring", graph_ids=(0,)))
  workdir = tmp_path / "ring"
  workdir.mkdir()
  (workdir / "config.json").write_text(config.to_json())
  message = 3e5  # bytes; a ring of 8 under D-PSGD: degree 2 at every step
  log = report.MetricsLog(workdir / "metrics.jsonl")
  for epoch in range(2):
    steps = 100 * (epoch + 1)
    log.append(
      dict(
        epoch=epoch,
        step=steps,
        test_accuracy=[0.9] * 8,
        test_accuracy_averaged_model=0.9,
        time_train_s=7.0 * steps,
        message_bytes=message,
        bytes_sent_mean=2 * message * steps,
      )
    )
  assert (
    compare.main(
      [
        str(workdir),
        "--out",
        str(tmp_path / "c.png"),
        "--gbit",
        "1",
        "--latency-us",
        "100",
        "--target",
        "0.5",
      ]
    )
    == 0
  )
  out = capsys.readouterr().out
  per_step = 2 * (100e-6 + message / 1.25e8)  # two matchings per step
  assert f"| {100 * (7.0 + per_step):.1f} s | {200 * (7.0 + per_step):.1f} s |" in out


def test_local_steps_and_delay_count_the_bytes_actually_sent(mock_cifar, tmp_path):
  # dpsgd every 2 steps, with delayed (push-sum) messages: 3 steps per epoch, so
  # steps 0 and 2 communicate, at the schedule's own steps 0 and 1.
  config = tiny_config("dpsgd", num_epochs=1, gossip_every=2, delay=1)
  record = train.train_and_evaluate(config, str(tmp_path))
  params = train.final_params(tmp_path)
  num_params = sum(int(np.prod(a.shape[1:])) for a in jax.tree.leaves(params))
  assert record["message_bytes"] == 4 * (num_params + 1)  # + the push-sum weight
  schedule = train.build_schedule(config, steps_per_epoch=3)
  degrees = schedule.active_degrees(0) + schedule.active_degrees(1)
  np.testing.assert_array_equal(record["bytes_sent"], degrees * record["message_bytes"])
  run = compare.load_run(tmp_path)
  network = ald.NetworkModel.from_gbit(1.0, latency_s=0.0)
  seconds = compare.simulated_seconds(run, network, compute_s_per_step=0.0)
  busiest = sum(int(schedule.active(k).sum()) for k in (0, 1))
  np.testing.assert_allclose(seconds[-1], busiest * record["message_bytes"] / 1.25e8)


def test_compare_sends_each_message_in_its_recorded_parts():
  """A run's simulated latency counts the ppermutes its metrics record (AL-DSGD:
  ranks, then parameters); a run recorded without them counts one."""
  config = tiny_config("aldsgd_dpsgd")
  record = dict(step=3, epoch=0, message_bytes=1008, message_parts=[8, 1000])
  run = dict(name="r", config=config.to_dict(), records=[record])
  traffic = compare.run_traffic(run)
  schedule = train.build_schedule(config, steps_per_epoch=3)
  assert traffic.parts == (8, 1000)
  np.testing.assert_array_equal(traffic.ppermutes(0), 2 * schedule.active_degrees(0))
  del record["message_parts"]
  assert compare.run_traffic(run).parts == (1008,)


def test_choco_runs_with_the_tuned_consensus_step(mock_cifar, tmp_path):
  """The preset's compressor (top-k); the tuning itself and every
  compressor's message are the library's tests (tests/lib/test_choco.py)."""
  config = tiny_config("aldsgd_choco", num_epochs=1)
  record = train.train_and_evaluate(config, str(tmp_path))
  assert all(np.isfinite(record["train_loss"]))
  schedule = train.build_schedule(config, steps_per_epoch=3)
  tuned = ald.tune_consensus_lr(
    schedule, train.build_compressor(config), num_params=1000, seed=config.seed
  )
  assert record["consensus_lr"] == tuned.consensus_lr
  params = jax.tree.map(lambda a: a[0], train.final_params(tmp_path))
  message = ald.choco_message_bytes(
    params, train.build_compressor(config), with_loss=True
  )
  assert record["message_bytes"] == message < ald.gossip_message_bytes(params) / 3
  degrees = sum(schedule.active_degrees(k) for k in range(3))
  np.testing.assert_array_equal(record["bytes_sent"], degrees * message)


def test_neighbor_weight_sets_the_matchings_weight():
  """auto: 1 / lambda_max(L) for d2, qg_dsgdm and gradient_tracking, D-PSGD's
  otherwise; dpsgd
  and psd for any method on full and alternating schedules; refused where
  the schedule sets its own weights."""
  ring = T.ring(16)
  lam = np.linalg.eigvalsh(ring.laplacian())
  dpsgd, psd = 2 / (lam[1] + lam[-1]), 1 / lam[-1]
  for preset, choice, want in (
    ("dpsgd", "auto", dpsgd),
    ("qg_dsgdm", "auto", psd),
    ("d2", "auto", psd),
    ("gradient_tracking", "auto", psd),
    ("qg_dsgdm", "dpsgd", dpsgd),
    ("aldsgd_dpsgd_reference", "psd", psd),
  ):
    config = tiny_config(
      preset, num_workers=16, topology="ring", neighbor_weight=choice
    )
    train.validate_config(config)
    schedule = train.build_schedule(config)
    np.testing.assert_allclose(schedule.slot_weight, want, rtol=1e-12, err_msg=preset)
  for preset, overrides in (
    ("matcha", {}),
    ("sgp", {}),
    ("dpsgd", {"neighbor_weight": "half"}),
  ):
    config = tiny_config(preset, **{"neighbor_weight": "psd", **overrides})
    with pytest.raises(ValueError, match="config.neighbor_weight="):
      train.validate_config(config)


def _one_worker_size(tree) -> int:
  return sum(int(np.prod(a.shape[1:])) for a in jax.tree.leaves(tree))


def _built(config, stats_tx=None):
  """The trainer's state, traffic and jitted step for ``config`` (as
  train_and_evaluate builds them, without data, evaluation or checkpoints)."""
  train.validate_config(config)
  info = input_pipeline.DATASETS[config.dataset]
  mesh = ald.worker_mesh(config.num_workers)
  schedule = train.build_schedule(config, steps_per_epoch=3)
  tx = train.build_optimizer(config, schedule, 0.05, 3)
  state = train.create_train_state(config, info, mesh, tx, stats_tx)
  traffic = train.traffic(config, tx, state.params, stats_tx, state.batch_stats)
  step = jax.jit(ald.worker_map(train.train_step, mesh))
  rng = np.random.default_rng(0)
  n, b = config.num_workers, config.batch_size
  batch = dict(
    image=ald.shard_workers(
      rng.normal(size=(n, b) + info.image_shape).astype(np.float32), mesh
    ),
    label=ald.shard_workers(
      rng.integers(0, info.num_classes, (n, b)).astype(np.int32), mesh
    ),
  )
  return schedule, state, traffic, step, batch


@pytest.mark.parametrize(
  "name,overrides",
  [("qg_dsgdm", {}), ("d2", {}), ("sgp", dict(norm="group"))],
)
def test_heterogeneous_data_presets_step_and_send_one_model(name, overrides):
  """qg_dsgdm, d2 and sgp (here with GroupNorm) train, sending one model per
  active slot; sgp's schedule is the one-peer exponential graph, one message
  per worker and step. (gradient_tracking: the test after this one.)"""
  config = tiny_config(name, **overrides)
  schedule, state, traffic, step, batch = _built(config)
  params = _one_worker_size(state.params)
  assert traffic.message_bytes == 4 * params
  if name == "sgp":
    assert schedule == S.one_peer_exponential(8)
    for k in range(4):
      np.testing.assert_array_equal(traffic.sent_bytes(k), 4 * params)
    assert not jax.tree.leaves(state.batch_stats)  # GroupNorm: no statistics
  before = jax.tree.map(np.asarray, state.params)
  for _ in range(2):
    state, metrics = step(state, batch)
  assert np.all(np.isfinite(ald.gather_workers(metrics["loss"])))
  assert bool(ald.all_finite(state.params))
  moved = [
    not np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params))
  ]
  assert all(moved)


def test_bn_stats_gossip_mixes_the_statistics_with_the_steps_W():
  """Gradient tracking with bn_stats=gossip: after one step every worker's
  BatchNorm statistics are W_0 times the ones local statistics give, the
  parameters are untouched by it, and each message is the model twice (x and
  the tracker y) plus the statistics once."""
  config = tiny_config("gradient_tracking", bn_stats="gossip")
  schedule = train.build_schedule(config, steps_per_epoch=3)
  stats_tx = train.build_stats_exchange(config, schedule)
  _, mixed, traffic, step, batch = _built(config, stats_tx)
  _, local, local_traffic, local_step, _ = _built(config)
  mixed, _ = step(mixed, batch)
  local, _ = local_step(local, batch)
  for a, b in zip(jax.tree.leaves(mixed.params), jax.tree.leaves(local.params)):
    np.testing.assert_array_equal(a, b)
  w = schedule.mixing_matrix(0)
  for got, own in zip(
    jax.tree.leaves(mixed.batch_stats), jax.tree.leaves(local.batch_stats)
  ):
    own = np.asarray(own).reshape(8, -1)
    assert not np.allclose(own, own[:1])  # the workers' statistics differ
    np.testing.assert_allclose(
      np.asarray(got).reshape(8, -1), w @ own, rtol=1e-5, atol=1e-6
    )
  # Bytes: D-PSGD on the same schedule sends the model once per message.
  dpsgd = tiny_config("dpsgd")
  dpsgd_tx = train.build_optimizer(dpsgd, schedule, 0.05, 3)
  model = train.traffic(dpsgd, dpsgd_tx, local.params).message_bytes
  stats = 4 * _one_worker_size(local.batch_stats)
  assert local_traffic.message_bytes == 2 * model
  assert traffic.message_bytes == 2 * model + stats
  for k in range(3):
    np.testing.assert_array_equal(
      traffic.sent_bytes(k), schedule.active_degrees(k) * (2 * model + stats)
    )
  # The all-reduce averages the statistics with the parameters.
  config = tiny_config("allreduce", bn_stats="gossip")
  stats_tx = train.build_stats_exchange(config, None)
  tx = train.build_optimizer(config, None, 0.05, 3)
  both = train.traffic(config, tx, local.params, stats_tx, local.batch_stats)
  assert both.allreduce and both.message_bytes == model + stats
