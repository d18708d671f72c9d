"""The benchmark's byte accounting against the compiled HLO, and its quick mode."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_aldsgd as ald
from experiments import benchmark
from jax_aldsgd import _plan
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T
from tests import helpers


def _compiled_gossip_hlo(schedule, transform, size=37):
  n = schedule.num_workers
  mesh = ald.worker_mesh(n)
  tx = optax.chain(optax.sgd(0.1), transform(schedule))

  def step(params, state):
    loss, grads = jax.value_and_grad(lambda p: jnp.sum(p**2))(params)
    updates, state = tx.update(grads, state, params, loss=loss)
    return optax.apply_updates(params, updates), state

  params = jnp.ones((n, size))
  state = jax.jit(ald.worker_map(tx.init, mesh))(params)
  return jax.jit(ald.worker_map(step, mesh)).lower(params, state).compile().as_text()


@pytest.mark.parametrize(
  "transform,parts",
  [
    (ald.gossip, (4 * 37,)),  # float32 parameters
    # Several matchings per step: loss and health flag first, then parameters.
    (ald.adjacent_leader, (4 * 2, 4 * 37)),
  ],
)
def test_bytes_from_the_schedule_equal_the_hlo(transform, parts):
  schedule = S.rotating(
    [S.matcha(T.paper_graph(1), 0.5, seed=4), S.full(T.paper_graph(0))]
  )
  hlo = _compiled_gossip_hlo(schedule, transform)
  message = sum(parts)
  if transform is ald.adjacent_leader:
    one_worker = jax.ShapeDtypeStruct((37,), jnp.float32)
    assert ald.adjacent_leader_message_parts(one_worker, schedule) == parts
    assert ald.adjacent_leader_message_bytes(one_worker) == message
  permutes = benchmark.hlo_permutes(hlo)
  # One permute per (activation pattern, active slot, part), of the part's size.
  plan = _plan.exchange_plan(schedule)
  assert len(permutes) == len(parts) * sum(len(a) for g in plan for a in g.patterns)
  assert sorted({size for size, _ in permutes}) == sorted(parts)
  sent = benchmark.check_bytes_against_hlo(schedule, parts, hlo, range(20), 8)
  # Independently: the mean over workers and steps of (active degree x message).
  degrees = [
    sum(
      len(m)
      for m, on in zip(
        [m for g in schedule.graphs for m in g.matchings], schedule.active(k)
      )
      if on
    )
    * 2
    / 8
    for k in range(20)
  ]
  assert sent == pytest.approx(message * sum(degrees) / 20)
  with pytest.raises(AssertionError, match="the schedule expects"):
    benchmark.check_bytes_against_hlo(schedule, (message + 4,), hlo, range(3), 8)
  # A slot that is active at a step but has no permute in the HLO is caught.
  with pytest.raises(AssertionError, match="no collective-permute"):
    benchmark.check_bytes_against_hlo(
      schedule, parts, hlo.replace("collective-permute", "copy"), range(2), 8
    )


def test_one_matching_per_step_sends_adjacent_leaders_message_whole():
  one_worker = jax.ShapeDtypeStruct((37,), jnp.float32)
  schedule = S.rotating(
    [S.alternating(T.paper_graph(1)), S.alternating(T.paper_graph(0))]
  )
  assert ald.adjacent_leader_message_parts(one_worker, schedule) == (4 * 39,)
  hlo = _compiled_gossip_hlo(schedule, ald.adjacent_leader)
  assert {size for size, _ in benchmark.hlo_permutes(hlo)} == {4 * 39}
  benchmark.check_bytes_against_hlo(schedule, (4 * 39,), hlo, range(8), 8)


def _run_benchmark(out, *flags):
  """``python -m experiments.benchmark FLAGS --json OUT`` in a fresh process."""
  result = subprocess.run(
    [sys.executable, "-m", "experiments.benchmark", *flags, "--json", str(out)],
    cwd=helpers.ROOT,
    env=helpers.fresh_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _one_worker_params(model, dataset):
  """One worker's parameters (shapes and dtypes) of the benchmark's model."""
  from flax import nnx

  from experiments.cifar import input_pipeline, models

  info = input_pipeline.DATASETS[dataset]
  abstract = nnx.eval_shape(
    lambda: models.create_model(
      model,
      num_classes=info.num_classes,
      in_channels=info.image_shape[-1],
      rngs=nnx.Rngs(0),
    )
  )
  return jax.tree.leaves(nnx.state(abstract, nnx.Param))


def _bytes_per_worker_step(method, args, params, steps):
  """Mean bytes a worker sends per step: one message per active matching.

  From the library's message sizes and the schedule's active degrees, not
  from `jax_aldsgd.traffic` (which the benchmark reports and checks against
  the HLO).
  """
  from experiments.cifar import train

  config = benchmark.make_config(
    method, args.model, args.workers, args.batch, args.dataset
  )
  if config.mixing == "local":
    return 0.0
  if config.mixing == "allreduce":
    return ald.allreduce_bytes(args.workers, params)
  compressor = train.build_compressor(config)
  if compressor is not None:
    message = ald.choco_message_bytes(
      params, compressor, with_loss=config.mixing == "adjacent_leader"
    )
  elif config.mixing == "adjacent_leader":
    message = ald.adjacent_leader_message_bytes(params)
  else:
    message = ald.gossip_message_bytes(
      params, skip_nonfinite=config.skip_nonfinite, delay=config.delay
    )
  schedule = S.every(train.build_schedule(config), config.gossip_every)
  return message * float(np.mean([schedule.active_degrees(k).mean() for k in steps]))


def _check_timings(rows, steps):
  """Each row's statistics are those of the step times it returns."""
  local = next(r for r in rows if r["method"] == "local")
  allreduce = next(r for r in rows if r["method"] == "allreduce")
  base = np.array(local["times"])
  for r in rows:
    times = np.array(r["times"])
    assert len(times) == steps and (times > 0).all() and r["compile_s"] > 0
    assert r["step_s"] == np.median(times)
    assert r["step_p10_s"] <= r["step_s"] <= r["step_p90_s"]
    assert r["images_per_s"] == pytest.approx(r["workers"] * r["batch"] / r["step_s"])
    # Paired per round with local SGD's steps, not a ratio of medians.
    assert r["time_vs_local"] == pytest.approx(np.median(times / base))
    assert 0 < r["time_vs_local_p10"] <= r["time_vs_local_p90"]
    overhead = np.median(times - base)
    assert r["overhead_s"] == pytest.approx(overhead)
    allreduce_overhead = np.median(np.array(allreduce["times"]) - base)
    if allreduce_overhead > 0:
      assert r["overhead_vs_allreduce"] == pytest.approx(overhead / allreduce_overhead)
    assert r["peak_bytes_per_device"] > 0
    assert r["extra_memory_param_copies"] == pytest.approx(
      (r["peak_bytes_per_device"] - local["peak_bytes_per_device"]) / (4 * r["params"])
    )
  assert local["time_vs_local"] == 1.0 and local["overhead_s"] == 0.0
  dpsgd = next(r for r in rows if r["method"] == "dpsgd")
  for r in rows:  # and paired with D-PSGD's
    times = np.array(r["times"])
    assert r["time_vs_dpsgd"] == pytest.approx(np.median(times / dpsgd["times"]))
    assert r["extra_memory_vs_dpsgd_param_copies"] == pytest.approx(
      (r["peak_bytes_per_device"] - dpsgd["peak_bytes_per_device"]) / (4 * r["params"])
    )


def test_dpsgd_table_judges_each_method_by_its_target():
  """Time within the target and memory within 2 copies: met; either over: not."""

  def row(method, ratio, copies):
    return dict(
      method=method,
      time_vs_dpsgd=ratio,
      time_vs_dpsgd_p10=ratio - 0.01,
      time_vs_dpsgd_p90=ratio + 0.01,
      extra_memory_vs_dpsgd_param_copies=copies,
      bytes_per_worker_step=2e6,
    )

  rows = [
    row("dpsgd", 1.0, 0.0),
    row("qg_dsgdm", 1.049, 1.0),
    row("d2", 1.051, 0.0),
    row("gradient_tracking", 1.08, 2.5),
    row("sgp", 0.7, 0.0),
  ]
  lines = benchmark.dpsgd_table(rows, "t").splitlines()[4:]
  assert [line.split(" | ")[0] for line in lines] == [
    "| qg_dsgdm",
    "| d2",
    "| gradient_tracking",
    "| sgp",
  ]
  assert [line.split(" | ")[-1] for line in lines] == [
    "yes |",
    "**no** |",
    "**no** |",
    "n/a |",
  ]
  assert "1.049x (1.039-1.059)" in lines[0] and "<= 1.10x, <= 2" in lines[2]


@pytest.mark.slow
def test_quick_benchmark_runs(tmp_path):
  """The quick run's numbers: its bytes are what the library's message sizes
  and the schedules say, its ratios are those of the times it reports, and
  its table prints them."""
  out = tmp_path / "bench.json"
  # One method of each kind of message: none, the all-reduce (the overheads'
  # unit), the parameters, a conditional exchange with ranks, compressed with
  # ranks (the quick run's default is every method and every compressor:
  # three times the compiles for the same checks; each compressor's bytes are
  # the library's tests, tests/lib/test_choco.py).
  flags = (
    "--quick",
    "--methods=local,allreduce,dpsgd,aldsgd_matcha,aldsgd_choco:qsgd",
  )
  result = _run_benchmark(out, *flags)
  report = json.loads(out.read_text())
  args = benchmark._parse(list(flags))
  methods = [r["method"] for r in report["main"]]
  assert methods == args.methods
  params = _one_worker_params(args.model, args.dataset)
  num_params = sum(int(np.prod(p.shape)) for p in params)
  timed = range(args.warmup, args.warmup + args.steps)
  for row in report["main"]:
    assert row["params"] == num_params
    want = _bytes_per_worker_step(row["method"], args, params, timed)
    assert row["bytes_per_worker_step"] == pytest.approx(want), row["method"]
    assert (want > 0) == (row["method"] != "local")
  _check_timings(report["main"], args.steps)
  assert [r[0]["workers"] for r in report["scaling"]] == [4]
  for rows in report["scaling"]:  # the requested uncompressed methods
    assert [r["method"] for r in rows] == [
      "local",
      "allreduce",
      "dpsgd",
      "aldsgd_matcha",
    ]
    _check_timings(rows, args.steps)
  for row in report["main"]:  # the printed table shows the JSON's numbers
    line = f"| {row['method']} | {row['step_s'] * 1e3:.1f} ms |"
    assert line in result.stdout
    assert f"{row['time_vs_local']:.3f}x" in result.stdout


@pytest.mark.slow
def test_size_rows_measure_every_reference(tmp_path):
  out = tmp_path / "sizes.json"
  result = _run_benchmark(
    out,
    "--sizes=3k",
    "--size-schedules=alternating",  # two programs: the harder kind
    "--size-steps=2",
    "--warmup=1",
  )
  rows = json.loads(out.read_text())["sizes"]
  assert [(r["kind"], r["params"]) for r in rows] == [("alternating", 3000)]
  for r in rows:  # the bytes were checked against the HLO before timing
    names = ("local", "local_flat", "bare", "packed", "dsgd", "aldsgd", "dsgd_health")
    for name in names:
      assert len(r[f"{name}_times"]) == 2 and min(r[f"{name}_times"]) > 0, name
    assert r["bare_programs"] == (2 if r["kind"] == "alternating" else 1)
    assert r["message_bytes"] == 4 * 3000
  assert "| packed ppermutes (extra) |" in result.stdout


def test_methods_include_the_reference_schedule_on_request(capsys):
  args = benchmark._parse(["--methods=local,dpsgd_reference,aldsgd_dpsgd_reference"])
  assert args.methods == ["local", "dpsgd_reference", "aldsgd_dpsgd_reference"]
  assert benchmark._parse([]).methods == list(benchmark.METHODS)
  with pytest.raises(SystemExit):
    benchmark._parse(["--methods=local,dpsgd_refrence"])
  assert "unknown method 'dpsgd_refrence'" in capsys.readouterr().err
