r"""Does the exchange hide behind compute? Overlap off vs on, in the compiled schedule.

    .venv/bin/python -m experiments.overlap [--model resnet20] [--batch 32]
        [--workers 8] [--steps 20] [--methods dpsgd,aldsgd_dpsgd] [--json out.json]

For each method, compiles the training step of experiments.cifar twice, with
``overlap=False`` (adapt-then-combine, the exchange waits for the gradient) and
``overlap=True`` (adapt-while-combine, the exchange carries the parameters),
then:

* reads the compiled, scheduled HLO: for every asynchronous
  ``collective-permute-start`` it counts the compute instructions (fusions,
  convolutions, dots, library calls) that the schedule places before the
  matching ``collective-permute-done``. A permute with compute in between is
  overlapped; one with none is not. XLA's CPU backend runs collectives
  synchronously (no start/done pairs), so on CPU the script says so and only
  times the steps;
* times both steps round-robin (paired), and reports the median step time and
  the ratio on / off.

On a GPU, run it with XLA's latency-hiding scheduler, as
``experiments/overlap_gpu.sh`` does. The training graph is the reference's
rotating pair on 8 workers with every matching active (``dpsgd``): its
exchanges have no conditional, so the scheduler may move them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

COMPUTE = re.compile(
  r"= [^=]*\b(fusion|convolution|dot|custom-call|cublas|"
  r"gemm)\b"
)


def overlap_report(hlo: str) -> list[dict]:
  """Per asynchronous collective-permute: compute instructions before its done."""
  found = []
  computation = None
  lines = hlo.splitlines()
  starts = {}
  for index, line in enumerate(lines):
    header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if header and not line.startswith(" "):
      computation, starts = header.group(1), {}
      continue
    start = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*collective-permute-start\(", line)
    if start:
      starts[start.group(1)] = index
      continue
    done = re.search(r"collective-permute-done\(\S*?%?([\w.\-]+)\)", line)
    if done and done.group(1) in starts:
      begin = starts.pop(done.group(1))
      between = lines[begin + 1 : index]
      found.append(
        dict(
          computation=computation,
          start=done.group(1),
          compute_between=sum(bool(COMPUTE.search(l)) for l in between),
        )
      )
  return found


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="resnet20")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--workers", type=int, default=8)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--methods", default="dpsgd,aldsgd_dpsgd")
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  args.methods = [m for m in args.methods.split(",") if m]
  import jax_aldsgd as ald  # imports JAX, does not start a backend
  from experiments.cifar import methods

  def overlaps(method):  # the library's table says whether overlap=True combines
    try:
      ald.check_options(methods.EXCHANGES[method.mixing], overlap=True)
    except ValueError:
      return False
    return True

  gossip = [
    name
    for name, method in methods.PRESETS.items()
    if method.mixing in methods.SCHEDULED
    and method.compressor == "none"
    and overlaps(method)
  ]
  for m in args.methods:
    if m not in gossip:
      parser.error(f"--methods: {m!r} is not one of {', '.join(gossip)}.")
  for name in ("batch", "workers", "steps"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be >= 1, got {getattr(args, name)}.")
  return args


def _compiled(method, overlap, args, info, mesh):
  import jax
  import numpy as np

  import jax_aldsgd as ald
  from experiments import benchmark
  from experiments.cifar import train

  config = benchmark.make_config(
    method, args.model, args.workers, args.batch, "cifar10"
  )
  config.overlap = overlap
  schedule = train.build_schedule(config)
  tx = train.build_optimizer(config, schedule, config.learning_rate)
  state = train.create_train_state(config, info, mesh, tx)
  rng = np.random.default_rng(0)
  batch = {
    "image": ald.shard_workers(
      rng.normal(size=(args.workers, args.batch) + info.image_shape).astype(np.float32),
      mesh,
    ),
    "label": ald.shard_workers(
      rng.integers(0, info.num_classes, (args.workers, args.batch)).astype(np.int32),
      mesh,
    ),
  }
  step = jax.jit(ald.worker_map(train.train_step, mesh), donate_argnums=0)
  compiled = step.lower(state, batch).compile()
  return compiled, state, batch


def main(argv=None) -> int:
  args = _parse(argv)
  import jax_aldsgd as ald

  ald.emulate_cpu_devices(args.workers)
  import jax
  import numpy as np

  from experiments import benchmark
  from experiments.cifar import input_pipeline

  if args.workers > jax.device_count():
    raise SystemExit(
      f"{args.workers} workers need {args.workers} devices, found {jax.device_count()}."
    )
  info = input_pipeline.DATASETS["cifar10"]
  mesh = ald.worker_mesh(args.workers)
  report = {"machine": benchmark.machine(), "rows": []}
  print(f"machine: {report['machine']}", file=sys.stderr)
  for method in args.methods:
    runs = {}
    for overlap in (False, True):
      compiled, state, batch = _compiled(method, overlap, args, info, mesh)
      permutes = overlap_report(compiled.as_text())
      runs[overlap] = dict(
        compiled=compiled, state=state, batch=batch, permutes=permutes, times=[]
      )
    for k in range(args.steps + 2):  # two warm-up rounds, then paired timing
      for run in runs.values():
        started = time.perf_counter()
        run["state"], metrics = run["compiled"](run["state"], run["batch"])
        jax.block_until_ready(metrics)
        if k >= 2:
          run["times"].append(time.perf_counter() - started)
    off, on = np.array(runs[False]["times"]), np.array(runs[True]["times"])
    for overlap, run in runs.items():
      permutes = run["permutes"]
      row = dict(
        method=method,
        overlap=overlap,
        step_s=float(np.median(run["times"])),
        async_permutes=len(permutes),
        overlapped_permutes=sum(p["compute_between"] > 0 for p in permutes),
        compute_between=[p["compute_between"] for p in permutes],
      )
      report["rows"].append(row)
    report["rows"][-1]["on_vs_off"] = float(np.median(on / off))
  print(
    "| method | overlap | step (median) | async collective-permutes | "
    "with compute before their done | on / off (paired) |"
  )
  print("|---|---|---|---|---|---|")
  for row in report["rows"]:
    permutes = (
      f"{row['async_permutes']}"
      if row["async_permutes"]
      else "0 (synchronous collectives: no start/done pairs)"
    )
    print(
      f"| {row['method']} | {row['overlap']} | {row['step_s'] * 1e3:.1f} ms | "
      f"{permutes} | {row['overlapped_permutes']} | "
      f"{row.get('on_vs_off', float('nan')):.3f}x |"
    )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
