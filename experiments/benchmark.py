r"""What one training step costs: gossip and AL-DSGD against local SGD and all-reduce.

    python -m experiments.benchmark [--model=resnet20] [--batch=32] [--workers=8]
        [--steps=30] [--methods=local,allreduce,...] [--json=out.json]
        [--scaling=8,16,32 --scaling-model=small_cnn] [--quick]

In one process, for every method, the jitted training step of experiments.cifar
(forward, backward, local SGD with weight decay, then no communication / all-
reduce / gossip / AL-DSGD) on the same model and data shapes, one worker per
(emulated) device, reporting:

* step time: median and spread (10th-90th percentile) over ``--steps`` steps after
  warm-up, each blocked on its result, and the ratio to local SGD;
* compile time of the step;
* bytes each worker sends per step, computed from the schedule (active degree x
  message size, averaged over the timed steps) and checked against the operand
  sizes and source-target pairs of the collective-permutes in the compiled HLO
  (a disagreement raises);
* peak memory per device from the compiled executable's memory analysis, and its
  excess over local SGD in copies of the parameters;
* images per second for the whole system.

Methods are compiled first and then timed round-robin, one step each per round,
so all of them see the same background load; ratios are medians of per-round
ratios (paired), which cancels most of the machine's drift. Prints markdown
tables and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time

METHODS = ("local", "allreduce", "dpsgd", "matcha", "aldsgd_dpsgd",
           "aldsgd_matcha")

# Numbers reported for the reference PyTorch + MPI implementation on the 2-core
# development CPU, 8 ranks of one thread, ResNet-50, batch 16, synthetic data
# (from the benchmark issue; not re-measured here, the code is not available).
REFERENCE = {
    "model": "resnet50", "batch": 16, "workers": 8,
    "rows": {"local": 0.515, "dpsgd": 0.66, "matcha": 0.66, "aldsgd_dpsgd": 0.89},
}


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="resnet20")
  parser.add_argument("--batch", type=int, default=32, help="per worker")
  parser.add_argument("--workers", type=int, default=8)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--dataset", default="cifar10",
                      help="input shape and classes: cifar10, cifar100, "
                      "fashion_mnist")
  parser.add_argument("--scaling", default="",
                      help="comma-separated worker counts for a scaling table")
  parser.add_argument("--scaling-model", default="small_cnn")
  parser.add_argument("--scaling-batch", type=int, default=16)
  parser.add_argument("--json", default="", help="write the results here")
  parser.add_argument("--quick", action="store_true",
                      help="tiny model and few steps (CI smoke run)")
  args = parser.parse_args(argv)
  if args.quick:
    args.model, args.batch, args.steps, args.warmup = "small_cnn", 4, 3, 1
    args.scaling = args.scaling or "4,8"
    args.scaling_batch = 4
  methods = [m for m in args.methods.split(",") if m]
  for m in methods:
    if m not in METHODS:
      parser.error(f"unknown method {m!r}; valid methods are {', '.join(METHODS)}.")
  args.methods = methods
  args.scaling = [int(w) for w in args.scaling.split(",") if w]
  for value, name in ((args.batch, "--batch"), (args.workers, "--workers"),
                      (args.steps, "--steps")):
    if value < 1:
      parser.error(f"{name} must be >= 1, got {value}.")
  return args


def make_config(method: str, model: str, workers: int, batch: int, dataset: str):
  from experiments.cifar.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.update(dict(method=method, model=model, num_workers=workers,
                     batch_size=batch, dataset=dataset))
  # A step's cost does not depend on where epochs start.
  config.reference_epoch_phase = False
  if workers != 8:  # the paper graphs have 8 (or 16) workers
    config.topology, config.graph_ids = "exponential", (0,)
    if workers == 16:
      config.topology, config.graph_ids = "paper", (11, 10)
  return config


def hlo_permutes(hlo: str):
  """(bytes, source-target pairs) of every collective-permute in compiled HLO."""
  sizes = {"f32": 4, "f16": 2, "bf16": 2, "f64": 8, "s32": 4, "u32": 4, "u8": 1}
  found = []
  for line in hlo.splitlines():
    if not re.search(r" collective-permute(-start)?\(", line):
      continue
    dtype, dims = re.search(r"= \(?(\w+)\[([\d,]*)\]", line).groups()
    count = 1
    for d in filter(None, dims.split(",")):
      count *= int(d)
    pairs = re.search(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}", line)
    pair_list = frozenset(tuple(int(v) for v in p.split(","))
                          for p in re.findall(r"\{(\d+,\d+)\}", pairs.group(1)))
    found.append((count * sizes[dtype], pair_list))
  return found


def check_bytes_against_hlo(schedule, message_bytes, hlo, steps, num_workers):
  """Per-step bytes per worker: from the schedule vs from the HLO's permutes."""
  permutes = hlo_permutes(hlo)
  if len(permutes) != schedule.num_slots:
    raise AssertionError(f"{len(permutes)} collective-permutes in the HLO, "
                         f"{schedule.num_slots} slots in the schedule")
  by_pairs = {}
  for size, pairs in permutes:
    by_pairs.setdefault(pairs, []).append(size)
  for s in range(schedule.num_slots):
    pairs = frozenset((i, int(j)) for i, j in enumerate(schedule.slot_partners[s])
                      if j >= 0)
    sizes = by_pairs.get(pairs)
    if not sizes or any(size != message_bytes for size in sizes):
      raise AssertionError(f"slot {s}: HLO permutes {sizes} bytes over these pairs,"
                           f" the schedule expects {message_bytes}")
  from_schedule = []
  for k in steps:
    from_schedule.append(schedule.active_degrees(k) * message_bytes)
    from_hlo = [0] * num_workers
    for s in map(int, schedule.active(k).nonzero()[0]):
      for i, j in enumerate(schedule.slot_partners[s]):
        if j >= 0:
          from_hlo[i] += message_bytes
    if list(from_schedule[-1]) != from_hlo:
      raise AssertionError(f"step {k}: schedule says {from_schedule[-1]}, HLO "
                           f"{from_hlo}")
  return float(sum(b.mean() for b in from_schedule) / len(from_schedule))


class Bench:
  """One method's compiled training step, ready to be timed step by step."""

  def __init__(self, method, model, workers, batch, args):
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    import jax_aldsgd as ald  # pylint: disable=g-import-not-at-top
    from experiments.cifar import input_pipeline  # pylint: disable=g-import-not-at-top
    from experiments.cifar import train  # pylint: disable=g-import-not-at-top

    self.method, self.model, self.workers, self.batch = method, model, workers, batch
    config = make_config(method, model, workers, batch, args.dataset)
    info = input_pipeline.DATASETS[args.dataset]
    mesh = ald.worker_mesh(workers)
    self.schedule = train.build_schedule(config)
    tx = train.build_optimizer(config, self.schedule, config.learning_rate)
    self.state = train.create_train_state(config, info, mesh, tx)
    self.num_params = sum(int(np.prod(a.shape[1:]))
                          for a in jax.tree.leaves(self.state.params))
    self.traffic = train.Traffic.of(config, self.schedule, self.state.params)
    rng = np.random.default_rng(0)
    self.batch_arrays = dict(
        image=ald.shard_workers(rng.normal(size=(workers, batch) + info.image_shape)
                                .astype(np.float32), mesh),
        label=ald.shard_workers(rng.integers(0, info.num_classes, (workers, batch))
                                .astype(np.int32), mesh))
    step = jax.jit(ald.worker_map(train.train_step, mesh), donate_argnums=0)
    started = time.perf_counter()
    self.compiled = step.lower(self.state, self.batch_arrays).compile()
    self.compile_s = time.perf_counter() - started
    self.hlo = self.compiled.as_text()
    memory = self.compiled.memory_analysis()
    # XLA's buffer assignment: live arguments and outputs (donated ones counted
    # once) plus the temporaries' peak. (peak_memory_in_bytes is not filled in on
    # CPU.)
    self.peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes -
                 memory.alias_size_in_bytes + memory.temp_size_in_bytes)
    self.times = []
    self.steps_run = 0
    self.loss = None

  def step(self, record: bool) -> None:
    import jax  # pylint: disable=g-import-not-at-top
    started = time.perf_counter()
    self.state, metrics = self.compiled(self.state, self.batch_arrays)
    self.loss = metrics["loss"]
    jax.block_until_ready((self.state, self.loss))
    if record:
      self.times.append(time.perf_counter() - started)
    self.steps_run += 1

  def row(self, first_timed_step: int) -> dict:
    import numpy as np  # pylint: disable=g-import-not-at-top
    import jax_aldsgd as ald  # pylint: disable=g-import-not-at-top
    if not np.isfinite(np.asarray(ald.gather_workers(self.loss))).all():
      raise FloatingPointError(f"{self.method}: the loss became non-finite")
    timed = range(first_timed_step, self.steps_run)
    if self.schedule is not None:
      sent = check_bytes_against_hlo(self.schedule, self.traffic.message_bytes,
                                     self.hlo, timed, self.workers)
    elif self.method == "allreduce":
      if "all-reduce" not in self.hlo:
        raise AssertionError("allreduce step has no all-reduce in its HLO")
      sent = float(self.traffic.sent(0).mean())
    else:
      if "collective-permute" in self.hlo or "all-reduce" in self.hlo:
        raise AssertionError("local SGD step communicates")
      sent = 0.0
    times = np.array(self.times)
    return dict(
        times=self.times,
        method=self.method, model=self.model, workers=self.workers,
        batch=self.batch, params=self.num_params, step_s=float(np.median(times)),
        step_p10_s=float(np.percentile(times, 10)),
        step_p90_s=float(np.percentile(times, 90)), compile_s=self.compile_s,
        bytes_per_worker_step=sent, peak_bytes_per_device=int(self.peak),
        images_per_s=self.workers * self.batch / float(np.median(times)),
        collective_permutes=self.hlo.count("collective-permute("),
    )


def run_interleaved(methods, model, workers, batch, args, label) -> list[dict]:
  """Compiles every method, then times them round-robin, one step each per round.

  Interleaving puts every method under the same background load and thermal
  state, so ratios between methods are not biased by drift during the run.
  """
  benches = []
  for method in methods:
    print(f"{label}: compiling {method} ...", file=sys.stderr, flush=True)
    benches.append(Bench(method, model, workers, batch, args))
  for k in range(args.warmup + args.steps):
    for bench in benches:
      bench.step(record=k >= args.warmup)
  return add_ratios([b.row(args.warmup) for b in benches])


def add_ratios(rows):
  """Paired comparisons with local SGD (and all-reduce) timed in the same rounds.

  ``time_vs_local``: median over rounds of t_method / t_local, with its 10th-90th
  percentile; ``overhead_vs_allreduce``: median of (t_method - t_local) over
  median of (t_allreduce - t_local).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  local = next((r for r in rows if r["method"] == "local"), None)
  allreduce = next((r for r in rows if r["method"] == "allreduce"), None)
  if local is None:
    return rows
  base = np.array(local["times"])
  for r in rows:
    times = np.array(r["times"])
    ratios = times / base
    r["time_vs_local"] = float(np.median(ratios))
    r["time_vs_local_p10"] = float(np.percentile(ratios, 10))
    r["time_vs_local_p90"] = float(np.percentile(ratios, 90))
    r["extra_memory_param_copies"] = (
        (r["peak_bytes_per_device"] - local["peak_bytes_per_device"]) /
        (4 * r["params"]))
    if allreduce is not None:
      overhead = float(np.median(np.array(allreduce["times"]) - base))
      r["overhead_s"] = float(np.median(times - base))
      r["overhead_vs_allreduce"] = (r["overhead_s"] / overhead if overhead > 0
                                    else float("nan"))
  return rows


def table(rows, title):
  lines = [f"### {title}", "",
           "| method | step (median) | p10-p90 | vs local (paired, p10-p90) | "
           "overhead / all-reduce's | compile | MB sent / worker / step | "
           "peak MB / device | + param copies | images/s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['method']} | {r['step_s'] * 1e3:.1f} ms | "
        f"{r['step_p10_s'] * 1e3:.1f}-{r['step_p90_s'] * 1e3:.1f} | "
        f"{r.get('time_vs_local', float('nan')):.3f}x "
        f"({r.get('time_vs_local_p10', float('nan')):.3f}-"
        f"{r.get('time_vs_local_p90', float('nan')):.3f}) | "
        f"{r.get('overhead_vs_allreduce', float('nan')):.2f} | "
        f"{r['compile_s']:.1f} s | {r['bytes_per_worker_step'] / 1e6:.3f} | "
        f"{r['peak_bytes_per_device'] / 1e6:.1f} | "
        f"{r.get('extra_memory_param_copies', float('nan')):.2f} | "
        f"{r['images_per_s']:.0f} |")
  return "\n".join(lines)


def reference_table(rows):
  ours = {r["method"]: r for r in rows}
  lines = ["### Peer: the reference PyTorch + MPI code (figures from the issue, "
           "same 2-core machine class)", "",
           "| method | reference step | reference images/s | ours | ours images/s |",
           "|---|---|---|---|---|"]
  for method, seconds in REFERENCE["rows"].items():
    mine = ours.get(method)
    lines.append(
        f"| {method} | {seconds * 1e3:.0f} ms | "
        f"{REFERENCE['workers'] * REFERENCE['batch'] / seconds:.0f} | " +
        (f"{mine['step_s'] * 1e3:.0f} ms | {mine['images_per_s']:.0f} |" if mine
         else "not run | |"))
  return "\n".join(lines)


def machine() -> str:
  import jax  # pylint: disable=g-import-not-at-top
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
    cpu = f"{names[0]} x {len(names)}" if names else cpu
  except OSError:
    pass
  devices = jax.devices()
  return (f"{devices[0].platform} ({len(devices)} devices: "
          f"{devices[0].device_kind}); host CPU {cpu}; {os.cpu_count()} cores; "
          f"jax {jax.__version__}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")


def main(argv=None) -> int:
  args = _parse(argv)
  import jax_aldsgd as ald  # pylint: disable=g-import-not-at-top
  most = max([args.workers] + args.scaling)
  ald.emulate_cpu_devices(most)
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() != "cpu" and args.workers > jax.device_count():
    raise SystemExit(f"{args.workers} workers need {args.workers} devices, found "
                     f"{jax.device_count()}.")

  report = {"machine": machine(), "args": {k: v for k, v in vars(args).items()},
            "main": [], "scaling": []}
  print(f"machine: {report['machine']}", file=sys.stderr)
  report["main"] = run_interleaved(args.methods, args.model, args.workers,
                                   args.batch, args, f"{args.model} x {args.workers}")
  out = [table(report["main"], f"{args.model}, batch {args.batch} per worker, "
               f"{args.workers} workers")]
  if (args.model, args.batch, args.workers) == (REFERENCE["model"],
                                                REFERENCE["batch"],
                                                REFERENCE["workers"]):
    out.append(reference_table(report["main"]))
  for workers in args.scaling:
    rows = run_interleaved(METHODS, args.scaling_model, workers, args.scaling_batch, args,
                           f"scaling {args.scaling_model} x {workers}")
    report["scaling"].append(rows)
    out.append(table(rows, f"scaling: {args.scaling_model}, batch "
                     f"{args.scaling_batch} per worker, {workers} workers"))
  print("\n\n".join(out))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
