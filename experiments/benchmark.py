r"""What one training step costs: gossip and AL-DSGD against local SGD and all-reduce.

    .venv/bin/python -m experiments.benchmark [--model=resnet20] [--batch=32] [--workers=8]
        [--steps=30] [--methods=local,allreduce,...] [--json=out.json]
        [--scaling=8,16,32 --scaling-model=small_cnn] [--quick]
    .venv/bin/python -m experiments.benchmark --heterogeneity [--model=resnet20]

In one process, for every method, the jitted training step of experiments.cifar
(forward, backward, local SGD with weight decay, then no communication / all-
reduce / gossip / AL-DSGD) on the same model and data shapes, one worker per
(emulated) device, reporting:

* step time: median and spread (10th-90th percentile) over ``--steps`` steps after
  warm-up, each blocked on its result, and the ratio to local SGD;
* compile time of the step;
* bytes each worker sends per step, as `jax_aldsgd.traffic` of the step's
  optimizer says (active degree x message size, averaged over the timed steps),
  checked against the operand sizes and source-target pairs of the
  collective-permutes in the compiled HLO (a disagreement raises);
* peak memory per device from the compiled executable's memory analysis, and its
  excess over local SGD in copies of the parameters;
* images per second for the whole system.

Methods are compiled first and then timed round-robin, one step each per round,
so all of them see the same background load; ratios are medians of per-round
ratios (paired), which cancels most of the machine's drift. Prints markdown
tables and writes JSON.

With ``--heterogeneity``, the heterogeneous-data methods (quasi-global
momentum, D², gradient tracking, SGP on the one-peer exponential graph) are
timed round-robin with local SGD and D-PSGD on ``--model`` (batch ``--batch``)
and on the small CNN (batch 16), and a second table pairs each with D-PSGD:
the median over rounds of t_method / t_dpsgd and the extra peak memory over
D-PSGD in parameter copies (targets: <= 1.05x for quasi-global momentum and D²,
<= 1.10x for gradient tracking, <= 2 copies each).

The exchange at every model size (``--sizes``, instead of the tables above):

    .venv/bin/python -m experiments.benchmark --sizes=546k,4M --size-steps=8 --warmup=2
    .venv/bin/python -m experiments.benchmark --sizes=36.5M --size-steps=8 --warmup=2 \
        --size-schedules=rotating_alternating

For each size and schedule kind (``--size-schedules``: full, alternating,
rotating_alternating, matcha, rotating_matcha over paper graphs 0 and 1, 8
workers), a compute-trivial model of that many parameters in 48 leaves runs
local SGD, ``dsgd``, ``aldsgd`` and ``dsgd`` with a health flag
(``skip_nonfinite=True``, the message AL-DSGD sends), and bare ``ppermute``s
of exactly the matchings active at each step, once for a flat model of the
same size and once for the 48-leaf model packed into one message (the floor
of any exchange that sends one message per matching); the table gives the
extra time over local SGD of each (paired per round) and their ratios, the
extra peak memory in parameter copies and the compile times. On a GPU host
the same command measures the card (one worker per GPU: ``--sizes`` needs 8
devices; on fewer, the CPU table is the one to run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time

METHODS = ("local", "allreduce", "dpsgd", "matcha", "aldsgd_dpsgd", "aldsgd_matcha")
# Compressed gossip: "choco:COMPRESSOR" (D-PSGD's schedule) or
# "aldsgd_choco:COMPRESSOR", with the trainer's compressor settings (top-k and
# random-k 10%, qsgd 16 levels) and consensus step 0.1.
COMPRESSORS = ("top_k", "random_k", "scaled_sign", "qsgd")
CHOCO_METHODS = tuple(
  f"{base}:{c}" for base in ("choco", "aldsgd_choco") for c in COMPRESSORS
)
# The reference code's schedule (alternating flags: one matching per step; the
# default experiment), on request only.
REFERENCE_METHODS = ("dpsgd_reference", "aldsgd_dpsgd_reference")
# The heterogeneous-data methods (docs/algorithm.md section 11), on request,
# paired with "dpsgd" in the same run: quasi-global momentum, D², gradient
# tracking (twice the message) and SGP (gossip on the one-peer exponential
# graph: one message per step).
HETEROGENEITY_METHODS = ("qg_dsgdm", "d2", "gradient_tracking", "sgp")
VALID_METHODS = METHODS + REFERENCE_METHODS + CHOCO_METHODS + HETEROGENEITY_METHODS

# Numbers reported for the reference PyTorch + MPI implementation on the 2-core
# development CPU, 8 ranks of one thread, ResNet-50, batch 16, synthetic data
# (from the benchmark issue; not re-measured here, the code is not available).
REFERENCE = {
  "model": "resnet50",
  "batch": 16,
  "workers": 8,
  "rows": {"local": 0.515, "dpsgd": 0.66, "matcha": 0.66, "aldsgd_dpsgd": 0.89},
}


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="resnet20")
  parser.add_argument("--batch", type=int, default=32, help="per worker")
  parser.add_argument("--workers", type=int, default=8)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument(
    "--methods",
    default=",".join(METHODS),
    help="comma-separated, from: " + ", ".join(VALID_METHODS),
  )
  parser.add_argument(
    "--dataset",
    default="cifar10",
    help="input shape and classes: cifar10, cifar100, fashion_mnist",
  )
  parser.add_argument(
    "--scaling", default="", help="comma-separated worker counts for a scaling table"
  )
  parser.add_argument("--scaling-model", default="small_cnn")
  parser.add_argument(
    "--heterogeneity",
    action="store_true",
    help="instead of the tables above: local, dpsgd and the heterogeneous-data "
    "methods, timed against dpsgd in one run, on --model and on small_cnn",
  )
  parser.add_argument("--scaling-batch", type=int, default=16)
  parser.add_argument("--json", default="", help="write the results here")
  parser.add_argument(
    "--sizes",
    default="",
    help="comma-separated model sizes (e.g. 546k,4M,36.5M): "
    "run only the exchange-vs-bare-ppermute rows instead",
  )
  parser.add_argument("--size-schedules", default=",".join(SIZE_SCHEDULES))
  parser.add_argument("--size-steps", type=int, default=10)
  parser.add_argument(
    "--quick", action="store_true", help="tiny model and few steps (CI smoke run)"
  )
  args = parser.parse_args(argv)
  if args.quick:
    args.model, args.batch, args.steps, args.warmup = "small_cnn", 4, 3, 1
    if args.methods == ",".join(METHODS):  # and every compressor's bytes
      args.methods += ",choco:top_k,choco:random_k,choco:scaled_sign,choco:qsgd"
    args.scaling = args.scaling or "4"  # 8 workers: the main table
    args.scaling_batch = 4
  methods = [m for m in args.methods.split(",") if m]
  for m in methods:
    if m not in VALID_METHODS:
      parser.error(
        f"unknown method {m!r}; valid methods are {', '.join(VALID_METHODS)}."
      )
  args.methods = methods
  args.scaling = [int(w) for w in args.scaling.split(",") if w]
  try:
    args.sizes = [parse_size(s) for s in args.sizes.split(",") if s]
  except ValueError as e:
    parser.error(str(e))
  args.size_schedules = [k for k in args.size_schedules.split(",") if k]
  for kind in args.size_schedules:
    if kind not in SIZE_SCHEDULES:
      parser.error(f"unknown schedule {kind!r}; valid: {', '.join(SIZE_SCHEDULES)}.")
  for value, name in (
    (args.batch, "--batch"),
    (args.workers, "--workers"),
    (args.steps, "--steps"),
  ):
    if value < 1:
      parser.error(f"{name} must be >= 1, got {value}.")
  return args


def make_config(method: str, model: str, workers: int, batch: int, dataset: str):
  from experiments.cifar.configs import default

  method, _, compressor = method.partition(":")
  config = default.get_config(method)  # the preset sets the method's fields
  config.update(
    dict(model=model, num_workers=workers, batch_size=batch, dataset=dataset)
  )
  if compressor:
    config.compressor, config.consensus_lr = compressor, "0.1"
  # A step's cost does not depend on where epochs start.
  config.reference_epoch_phase = False
  # The paper graphs have 8 (or 16) workers; other graphs (sgp's) any number.
  if workers != 8 and config.topology == "paper":
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
    pair_list = frozenset(
      tuple(int(v) for v in p.split(","))
      for p in re.findall(r"\{(\d+,\d+)\}", pairs.group(1))
    )
    found.append((count * sizes[dtype], pair_list))
  return found


def check_traffic_against_hlo(traffic, hlo, steps):
  """Per-step bytes per worker: what ``traffic`` says vs the HLO's permutes.

  ``traffic`` is `jax_aldsgd.traffic` of the compiled step's exchange: its
  ``parts`` are the sizes of the collective-permutes one active slot's message
  is sent in (one for gossip; AL-DSGD on several matchings per step sends its
  loss and health flag first). Every collective-permute in the HLO must carry
  one of ``parts`` over the pairs of one of the schedule's slots (``(source,
  receiver)``, as ``jax_aldsgd._plan.pairs`` makes them from the slot's
  receive-from row), and every slot active at one of ``steps`` must have every
  part (a slot's permute appears once per switch branch in which it is active,
  see jax_aldsgd._plan.exchange_plan); each source of an active slot's pairs
  sends ``traffic.message_bytes``, which must be ``traffic.sent_bytes(step)``.

  Returns:
    The mean bytes a worker sends per step over ``steps``.
  """
  from jax_aldsgd import _plan

  schedule, parts = traffic.schedule, tuple(traffic.parts)
  permutes = hlo_permutes(hlo)
  slot_pairs = [frozenset(_plan.pairs(partners)) for partners in schedule.slot_partners]
  for size, pairs in permutes:
    if pairs not in slot_pairs or size not in parts:
      raise AssertionError(
        f"the HLO permutes {size} bytes over pairs "
        f"{sorted(pairs)}; the schedule expects one of {parts} "
        "bytes over one slot's pairs"
      )
  in_hlo = set(permutes)
  from_traffic = []
  for k in steps:
    from_traffic.append(traffic.sent_bytes(k))
    from_hlo = [0] * traffic.num_workers
    active = ()  # the slots of the schedule's step k // every, if k communicates
    if traffic.communicates(k):
      active = map(int, schedule.active(k // traffic.every).nonzero()[0])
    for s in active:
      for size in parts:
        if (size, slot_pairs[s]) not in in_hlo:
          raise AssertionError(
            f"step {k}: slot {s} is active but no collective-permute "
            f"of {size} bytes in the HLO has its pairs"
          )
      for source, _ in slot_pairs[s]:
        from_hlo[source] += traffic.message_bytes
    if list(from_traffic[-1]) != from_hlo:
      raise AssertionError(
        f"step {k}: the traffic says {from_traffic[-1]}, HLO {from_hlo}"
      )
  return float(sum(b.mean() for b in from_traffic) / len(from_traffic))


def check_bytes_against_hlo(schedule, parts, hlo, steps, num_workers):
  """`check_traffic_against_hlo` of ``parts`` (one message) per active slot.

  The traffic of an exchange that sends, along every active slot of
  ``schedule``, one message in ``ppermute`` s of ``parts`` bytes.
  """
  import jax_aldsgd as ald

  message = sum(parts)
  traffic = ald.Traffic(num_workers, message, tuple(parts), schedule)
  return check_traffic_against_hlo(traffic, hlo, steps)


def step_traffic(config, tx, params):
  """`jax_aldsgd.traffic` of the trainer's optimizer ``tx`` on stacked ``params``.

  The trainer's all-reduce is ``optax.chain(local SGD, ald.allreduce())``, and
  a chain does not say what it sends: what it sends is ``ald.allreduce()``'s.
  """
  import jax

  import jax_aldsgd as ald

  one_worker = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), params
  )
  if config.mixing == "allreduce" and not hasattr(tx, "traffic_of"):
    tx = ald.allreduce()
  return ald.traffic(tx, one_worker, num_workers=config.num_workers)


def compile_step(jitted, *args):
  """Compiles ``jitted`` for ``args``: (executable, seconds, peak bytes, HLO text).

  The peak is XLA's buffer assignment: live arguments and outputs (donated ones
  counted once) plus the temporaries' peak (``peak_memory_in_bytes`` is not
  filled in on CPU).
  """
  started = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  seconds = time.perf_counter() - started
  memory = compiled.memory_analysis()
  peak = (
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    - memory.alias_size_in_bytes
    + memory.temp_size_in_bytes
  )
  return compiled, seconds, peak, compiled.as_text()


class Bench:
  """One method's compiled training step, ready to be timed step by step."""

  def __init__(self, method, model, workers, batch, args):
    import jax
    import numpy as np

    import jax_aldsgd as ald
    from experiments.cifar import input_pipeline, train

    self.method, self.model, self.workers, self.batch = method, model, workers, batch
    config = make_config(method, model, workers, batch, args.dataset)
    info = input_pipeline.DATASETS[args.dataset]
    mesh = ald.worker_mesh(workers)
    schedule = train.build_schedule(config)
    tx = train.build_optimizer(
      config,
      schedule,
      config.learning_rate,
      choco_lr=train.consensus_lr(config, schedule),
    )
    self.state = train.create_train_state(config, info, mesh, tx)
    self.num_params = sum(
      int(np.prod(a.shape[1:])) for a in jax.tree.leaves(self.state.params)
    )
    self.traffic = step_traffic(config, tx, self.state.params)
    rng = np.random.default_rng(0)
    self.batch_arrays = dict(
      image=ald.shard_workers(
        rng.normal(size=(workers, batch) + info.image_shape).astype(np.float32), mesh
      ),
      label=ald.shard_workers(
        rng.integers(0, info.num_classes, (workers, batch)).astype(np.int32), mesh
      ),
    )
    step = jax.jit(ald.worker_map(train.train_step, mesh), donate_argnums=0)
    self.compiled, self.compile_s, self.peak, self.hlo = compile_step(
      step, self.state, self.batch_arrays
    )
    self.times = []
    self.steps_run = 0
    self.loss = None

  def step(self, record: bool) -> None:
    import jax

    started = time.perf_counter()
    self.state, metrics = self.compiled(self.state, self.batch_arrays)
    self.loss = metrics["loss"]
    jax.block_until_ready((self.state, self.loss))
    if record:
      self.times.append(time.perf_counter() - started)
    self.steps_run += 1

  def row(self, first_timed_step: int) -> dict:
    import numpy as np

    import jax_aldsgd as ald

    if not np.isfinite(np.asarray(ald.gather_workers(self.loss))).all():
      raise FloatingPointError(f"{self.method}: the loss became non-finite")
    timed = range(first_timed_step, self.steps_run)
    if self.traffic.schedule is not None:
      sent = check_traffic_against_hlo(self.traffic, self.hlo, timed)
    elif self.traffic.allreduce:
      if "all-reduce" not in self.hlo:
        raise AssertionError("allreduce step has no all-reduce in its HLO")
      sent = float(np.mean([self.traffic.sent_bytes(k).mean() for k in timed]))
    else:
      if "collective-permute" in self.hlo or "all-reduce" in self.hlo:
        raise AssertionError("local SGD step communicates")
      sent = 0.0
    times = np.array(self.times)
    return dict(
      times=self.times,
      method=self.method,
      model=self.model,
      workers=self.workers,
      batch=self.batch,
      params=self.num_params,
      step_s=float(np.median(times)),
      step_p10_s=float(np.percentile(times, 10)),
      step_p90_s=float(np.percentile(times, 90)),
      compile_s=self.compile_s,
      bytes_per_worker_step=sent,
      peak_bytes_per_device=int(self.peak),
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


def _pair(row, base, time_key, memory_key):
  """Sets ``row[time_key]`` (and ``_p10``, ``_p90``): the median over rounds of
  t_row / t_base with its 10th-90th percentile; ``row[memory_key]``: the extra
  peak memory over ``base``'s in parameter copies."""
  import numpy as np

  ratios = np.array(row["times"]) / np.array(base["times"])
  row[time_key] = float(np.median(ratios))
  row[f"{time_key}_p10"] = float(np.percentile(ratios, 10))
  row[f"{time_key}_p90"] = float(np.percentile(ratios, 90))
  row[memory_key] = (row["peak_bytes_per_device"] - base["peak_bytes_per_device"]) / (
    4 * row["params"]
  )


def add_ratios(rows):
  """Paired comparisons with local SGD (and all-reduce, D-PSGD) timed in the same rounds.

  ``time_vs_local``: median over rounds of t_method / t_local, with its 10th-90th
  percentile; ``overhead_vs_allreduce``: median of (t_method - t_local) over
  median of (t_allreduce - t_local); ``time_vs_dpsgd``: median over rounds of
  t_method / t_dpsgd, and the extra peak memory over D-PSGD's in parameter
  copies.
  """
  import numpy as np

  local = next((r for r in rows if r["method"] == "local"), None)
  allreduce = next((r for r in rows if r["method"] == "allreduce"), None)
  dpsgd = next((r for r in rows if r["method"] == "dpsgd"), None)
  if dpsgd is not None:
    for r in rows:
      _pair(r, dpsgd, "time_vs_dpsgd", "extra_memory_vs_dpsgd_param_copies")
  if local is None:
    return rows
  base = np.array(local["times"])
  for r in rows:
    times = np.array(r["times"])
    _pair(r, local, "time_vs_local", "extra_memory_param_copies")
    if allreduce is not None:
      overhead = float(np.median(np.array(allreduce["times"]) - base))
      r["overhead_s"] = float(np.median(times - base))
      r["overhead_vs_allreduce"] = (
        r["overhead_s"] / overhead if overhead > 0 else float("nan")
      )
  return rows


def table(rows, title):
  lines = [
    f"### {title}",
    "",
    "| method | step (median) | p10-p90 | vs local (paired, p10-p90) | "
    "overhead / all-reduce's | compile | MB sent / worker / step | "
    "peak MB / device | + param copies | images/s |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
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
      f"{r['images_per_s']:.0f} |"
    )
  return "\n".join(lines)


# What each heterogeneous-data method may cost over D-PSGD (the issue's
# targets): step time ratio, extra peak memory in parameter copies.
TARGETS_VS_DPSGD = {
  "qg_dsgdm": (1.05, 2.0),
  "d2": (1.05, 2.0),
  "gradient_tracking": (1.10, 2.0),
}


def dpsgd_table(rows, title):
  """Each method against D-PSGD timed in the same rounds, with its target."""
  lines = [
    f"### {title}: against D-PSGD",
    "",
    "| method | vs dpsgd (paired median, p10-p90) | + param copies over dpsgd | "
    "MB sent / worker / step | target (time, memory) | met |",
    "|---|---|---|---|---|---|",
  ]
  for r in rows:
    if "time_vs_dpsgd" not in r or r["method"] in ("local", "dpsgd"):
      continue
    target = TARGETS_VS_DPSGD.get(r["method"])
    met = "n/a"
    if target is not None:
      met = (
        "yes"
        if r["time_vs_dpsgd"] <= target[0]
        and r["extra_memory_vs_dpsgd_param_copies"] <= target[1]
        else "**no**"
      )
    lines.append(
      f"| {r['method']} | {r['time_vs_dpsgd']:.3f}x "
      f"({r['time_vs_dpsgd_p10']:.3f}-{r['time_vs_dpsgd_p90']:.3f}) | "
      f"{r['extra_memory_vs_dpsgd_param_copies']:.2f} | "
      f"{r['bytes_per_worker_step'] / 1e6:.3f} | "
      + (f"<= {target[0]:.2f}x, <= {target[1]:.0f} | " if target else "none | ")
      + f"{met} |"
    )
  return "\n".join(lines)


def run_heterogeneity(args) -> tuple[list[list[dict]], list[str]]:
  """``--heterogeneity``: the section 11 methods against D-PSGD, on two models."""
  methods = ["local", "dpsgd", *HETEROGENEITY_METHODS]
  reports, out = [], []
  for model, batch in ((args.model, args.batch), ("small_cnn", 16)):
    title = f"{model}, batch {batch} per worker, {args.workers} workers"
    rows = run_interleaved(methods, model, args.workers, batch, args, title)
    reports.append(rows)
    out += [table(rows, title), dpsgd_table(rows, title)]
  return reports, out


def reference_table(rows):
  ours = {r["method"]: r for r in rows}
  lines = [
    "### Peer: the reference PyTorch + MPI code (figures from the issue, "
    "same 2-core machine class)",
    "",
    "| method | reference step | reference images/s | ours | ours images/s |",
    "|---|---|---|---|---|",
  ]
  for method, seconds in REFERENCE["rows"].items():
    mine = ours.get(method)
    lines.append(
      f"| {method} | {seconds * 1e3:.0f} ms | "
      f"{REFERENCE['workers'] * REFERENCE['batch'] / seconds:.0f} | "
      + (
        f"{mine['step_s'] * 1e3:.0f} ms | {mine['images_per_s']:.0f} |"
        if mine
        else "not run | |"
      )
    )
  return "\n".join(lines)


def machine() -> str:
  import jax

  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
    cpu = f"{names[0]} x {len(names)}" if names else cpu
  except OSError:
    pass
  devices = jax.devices()
  return (
    f"{devices[0].platform} ({len(devices)} devices: "
    f"{devices[0].device_kind}); host CPU {cpu}; {os.cpu_count()} cores; "
    f"jax {jax.__version__}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
  )


# ----------------------------------------------------------------------------
# The exchange at every model size (--sizes): gossip and AL-DSGD against bare
# ppermutes of the same bytes, on compute-trivial models.

SIZE_SCHEDULES = (
  "full",
  "alternating",
  "rotating_alternating",
  "matcha",
  "rotating_matcha",
)


def parse_size(text: str) -> int:
  """``"546k"``, ``"4M"``, ``"36.5M"`` or ``"212"`` -> number of parameters."""
  scale = {"k": 10**3, "m": 10**6}.get(text[-1:].lower(), 1)
  number = text[:-1] if scale > 1 else text
  try:
    return int(round(float(number) * scale))
  except ValueError:
    raise ValueError(
      f"model size {text!r} is not a number of parameters such as 546k, 4M or 36.5M."
    ) from None


def trivial_shapes(size: int) -> list[tuple[int, ...]]:
  """Leaf shapes of a compute-trivial model with ``size`` parameters.

  16 "layers" of a kernel, a bias and a scale (48 leaves, like a small ResNet's
  parameter tree), so packing the message works on many leaves as it does for a
  real model.
  """
  layers, width = 16, 64
  small = min(width, max(1, size // (layers * 8)))
  kernel_total = size - 2 * layers * small
  kernels = [
    kernel_total // layers + (l < kernel_total % layers) for l in range(layers)
  ]
  shapes = []
  for k in kernels:
    shapes += [(k,), (small,), (small,)]
  return shapes


def size_schedule(kind: str):
  import jax_aldsgd as ald

  s, t = ald.schedules, ald.topologies
  g0, g1 = t.paper_graph(0), t.paper_graph(1)
  return {
    "full": lambda: s.full(g0),
    "alternating": lambda: s.alternating(g0),
    "rotating_alternating": lambda: s.rotating([s.alternating(g1), s.alternating(g0)]),
    "matcha": lambda: s.matcha(g0, 0.5),
    "rotating_matcha": lambda: s.rotating([s.matcha(g1, 0.5), s.matcha(g0, 0.5)]),
  }[kind]()


class SizeBench:
  """One compiled step on a compute-trivial model: local SGD, then an exchange.

  ``method`` is ``local``, ``dsgd``, ``aldsgd``, ``dsgd_health`` (gossip with
  ``skip_nonfinite=True``: it sends a health flag, as AL-DSGD does) (on
  `trivial_shapes`), or, on
  one flat leaf of ``size`` parameters, ``local_flat`` and ``bare`` with
  ``active`` the tuple of slots whose matchings it ppermutes (the flat float32
  parameters, as many bytes as the gossip message, added to the parameters: the
  bytes the transforms move, with nothing else). ``packed`` is ``bare`` on the
  48-leaf model: its parameters packed into one buffer as the transforms pack
  them (``jax_aldsgd.exchange.pack``), ppermuted, and added back leaf by
  leaf: what any exchange that sends one message per matching must do for a
  model of many leaves. ``share`` is another bench of the same shapes whose
  state this one uses and updates (every bare program and ``local_flat``
  share one copy of the state, every packed program and ``local`` another:
  at 36.5M parameters each copy is 1.2 GB).
  """

  def __init__(self, method, size, schedule, active=(), share=None):
    import jax
    import jax.numpy as jnp
    import optax

    import jax_aldsgd as ald
    from jax_aldsgd import _plan

    n = schedule.num_workers
    mesh = ald.worker_mesh(n)
    lr, wd = 0.1, 5e-4
    if method in ("bare", "local_flat"):
      shapes = [(size,)]
      tx = ald.local_sgd(lr, weight_decay=wd)
    else:
      shapes = trivial_shapes(size)
      tx = {
        "local": lambda: ald.local_sgd(lr, weight_decay=wd),
        "packed": lambda: ald.local_sgd(lr, weight_decay=wd),
        "dsgd": lambda: ald.dsgd(lr, schedule, weight_decay=wd),
        "dsgd_health": lambda: ald.dsgd(
          lr, schedule, weight_decay=wd, skip_nonfinite=True
        ),
        "aldsgd": lambda: ald.aldsgd(lr, schedule, weight_decay=wd),
      }[method]()
    pairs = [_plan.pairs(schedule.slot_partners[s]) for s in active]

    def step(params, opt_state, data):
      def loss_fn(p):  # a reduction per leaf: compute-trivial
        return data * sum(jnp.mean(leaf) for leaf in jax.tree.leaves(p))

      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
      params = optax.apply_updates(params, updates)
      if pairs and method == "packed":
        flat, unpack = ald.exchange.pack(params)
        received = sum(jax.lax.ppermute(flat, "workers", p) for p in pairs)
        added, _ = unpack(1e-3 * received)
        params = jax.tree.map(jnp.add, params, added)
      elif pairs:
        (flat,) = jax.tree.leaves(params)
        received = sum(jax.lax.ppermute(flat, "workers", p) for p in pairs)
        params = [flat + 1e-3 * received]
      return params, opt_state, loss

    self.method, self.size, self.active, self.tx = method, size, active, tx
    if share is not None:
      self.state, self.data = share.state, share.data
      params, opt_state = self.state
    else:
      params = [
        ald.shard_workers(jnp.full((n,) + shape, 0.01, jnp.float32), mesh)
        for shape in shapes
      ]
      opt_state = jax.jit(ald.worker_map(tx.init, mesh))(params)
      self.data = ald.shard_workers(jnp.linspace(0.5, 1.5, n, dtype=jnp.float32), mesh)
      self.state = [params, opt_state]
    data = self.data
    jitted = jax.jit(ald.worker_map(step, mesh), donate_argnums=(0, 1))
    self.compiled, self.compile_s, self.peak, self.hlo = compile_step(
      jitted, params, opt_state, data
    )
    self.times = []

  def step(self, record: bool) -> None:
    import jax

    started = time.perf_counter()
    params, opt_state, loss = self.compiled(*self.state, self.data)
    jax.block_until_ready((params, opt_state, loss))
    self.state[:] = [params, opt_state]  # in place: shared by flat benches
    if record:
      self.times.append(time.perf_counter() - started)


def run_size(size: int, kind: str, args) -> dict:
  """Times local SGD, bare ppermutes, dsgd and aldsgd round-robin at one size.

  Round k runs step k of the schedule in ``dsgd`` and ``aldsgd`` and, on a flat
  model of the same size, the bare-ppermute program compiled for step k's
  active matchings (one program per distinct active set), so all of them see
  the same background load and the same exchanges. Extra times are paired per
  round: ``dsgd - local``, ``aldsgd - local`` (the 48-leaf model) and ``bare -
  local_flat`` (the flat one: the cost of the ppermutes alone).
  """
  import jax
  import jax.numpy as jnp
  import numpy as np

  import jax_aldsgd as ald

  schedule = size_schedule(kind)
  label = f"{kind} x {size}"
  steps = range(args.warmup + args.size_steps)
  active = [tuple(int(s) for s in np.flatnonzero(schedule.active(k))) for k in steps]
  benches = {}
  for method in ("local", "dsgd", "aldsgd", "dsgd_health", "local_flat"):
    print(f"{label}: compiling {method} ...", file=sys.stderr, flush=True)
    benches[method] = SizeBench(method, size, schedule)
  bare = {
    pattern: SizeBench("bare", size, schedule, pattern, share=benches["local_flat"])
    for pattern in sorted(set(active))
  }
  packed = {
    pattern: SizeBench("packed", size, schedule, pattern, share=benches["local"])
    for pattern in sorted(set(active))
  }
  one_worker = [jax.ShapeDtypeStruct(s, jnp.float32) for s in trivial_shapes(size)]
  for name in ("dsgd", "aldsgd", "dsgd_health"):
    traffic = ald.traffic(benches[name].tx, one_worker)
    check_traffic_against_hlo(traffic, benches[name].hlo, steps)
  message = ald.traffic(benches["dsgd"].tx, one_worker).message_bytes
  for bench in [*bare.values(), *packed.values()]:  # first runs are not timed
    bench.step(record=False)
  bare_times, packed_times = [], []
  for k in steps:
    record = k >= args.warmup
    for name in ("local", "local_flat"):
      benches[name].step(record)
    bare[active[k]].step(record)
    packed[active[k]].step(record)
    if record:
      bare_times.append(bare[active[k]].times[-1])
      packed_times.append(packed[active[k]].times[-1])
    for name in ("dsgd", "aldsgd", "dsgd_health"):
      benches[name].step(record)
  local = np.array(benches["local"].times)
  flat = np.array(benches["local_flat"].times)
  bare_extra = np.median(np.array(bare_times) - flat)
  packed_extra = np.median(np.array(packed_times) - local)
  row = dict(
    kind=kind,
    params=size,
    workers=schedule.num_workers,
    steps=args.size_steps,
    local_s=float(np.median(local)),
    local_flat_s=float(np.median(flat)),
    bare_s=float(np.median(bare_times)),
    bare_extra_s=float(bare_extra),
    bare_compile_s=max(b.compile_s for b in bare.values()),
    bare_programs=len(bare),
    packed_s=float(np.median(packed_times)),
    packed_extra_s=float(packed_extra),
    packed_times=packed_times,
    message_bytes=message,
  )
  for name in ("dsgd", "aldsgd"):
    times = np.array(benches[name].times)
    row[f"{name}_s"] = float(np.median(times))
    row[f"{name}_extra_s"] = float(np.median(times - local))
    row[f"{name}_vs_bare"] = float(np.median(times - local) / bare_extra)
    row[f"{name}_vs_packed"] = float(np.median(times - local) / packed_extra)
    row[f"{name}_compile_s"] = benches[name].compile_s
    row[f"{name}_extra_copies"] = (benches[name].peak - benches["local"].peak) / message
    row[f"{name}_times"] = benches[name].times
  aldsgd_times = np.array(benches["aldsgd"].times)
  row["aldsgd_vs_dsgd"] = float(
    np.median(aldsgd_times / np.array(benches["dsgd"].times))
  )
  # Gossip that also sends a health flag (skip_nonfinite=True), as AL-DSGD does.
  health_times = np.array(benches["dsgd_health"].times)
  row["dsgd_health_s"] = float(np.median(health_times))
  row["dsgd_health_times"] = benches["dsgd_health"].times
  row["aldsgd_vs_dsgd_health"] = float(np.median(aldsgd_times / health_times))
  row["aldsgd_minus_dsgd_copies"] = (
    benches["aldsgd"].peak - benches["dsgd"].peak
  ) / message
  row["local_times"], row["local_flat_times"] = benches["local"].times, flat.tolist()
  row["bare_times"] = bare_times
  return row


def size_table(rows) -> str:
  lines = [
    "### The exchange at every model size: 8 workers, compute-trivial "
    "models (48 leaves), paper graphs 0 (and 1 for rotating)",
    "",
    "| params | schedule | steps | local (flat) | bare ppermutes (extra) | "
    "packed ppermutes (extra) | dsgd (extra) | aldsgd (extra) | dsgd / bare | "
    "aldsgd / bare | dsgd / packed | aldsgd / packed | aldsgd / dsgd | "
    "aldsgd / dsgd with health flag | + copies dsgd / aldsgd | "
    "compile dsgd / aldsgd |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  ms = lambda s: f"{s * 1e3:.1f} ms"
  for r in rows:
    lines.append(
      f"| {r['params'] / 1e6:.3g}M | {r['kind']} | {r['steps']} | "
      f"{ms(r['local_s'])} ({ms(r['local_flat_s'])}) | {ms(r['bare_s'])} "
      f"({ms(r['bare_extra_s'])}) | {ms(r['packed_s'])} "
      f"({ms(r['packed_extra_s'])}) | "
      f"{ms(r['dsgd_s'])} ({ms(r['dsgd_extra_s'])}) | "
      f"{ms(r['aldsgd_s'])} ({ms(r['aldsgd_extra_s'])}) | "
      f"{r['dsgd_vs_bare']:.2f} | {r['aldsgd_vs_bare']:.2f} | "
      f"{r['dsgd_vs_packed']:.2f} | {r['aldsgd_vs_packed']:.2f} | "
      f"{r['aldsgd_vs_dsgd']:.3f} | {r['aldsgd_vs_dsgd_health']:.3f} | "
      f"{r['dsgd_extra_copies']:.2f} / "
      f"{r['aldsgd_extra_copies']:.2f} | {r['dsgd_compile_s']:.1f} / "
      f"{r['aldsgd_compile_s']:.1f} s |"
    )
  return "\n".join(lines)


def run_sizes(args) -> list[dict]:
  rows = []
  for size in args.sizes:
    for kind in args.size_schedules:
      rows.append(run_size(size, kind, args))
      print(size_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
  return rows


def main(argv=None) -> int:
  args = _parse(argv)
  import jax_aldsgd as ald

  most = max([args.workers] + args.scaling)
  ald.emulate_cpu_devices(most)
  import jax

  if jax.default_backend() != "cpu" and args.workers > jax.device_count():
    raise SystemExit(
      f"{args.workers} workers need {args.workers} devices, found {jax.device_count()}."
    )

  report = {
    "machine": machine(),
    "args": {k: v for k, v in vars(args).items()},
    "main": [],
    "scaling": [],
  }
  print(f"machine: {report['machine']}", file=sys.stderr)
  if args.heterogeneity:
    report["heterogeneity"], out = run_heterogeneity(args)
    print("\n\n".join(out))
    if args.json:
      with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    return 0
  if args.sizes:
    report["sizes"] = run_sizes(args)
    print(size_table(report["sizes"]))
    if args.json:
      with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    return 0
  report["main"] = run_interleaved(
    args.methods,
    args.model,
    args.workers,
    args.batch,
    args,
    f"{args.model} x {args.workers}",
  )
  out = [
    table(
      report["main"],
      f"{args.model}, batch {args.batch} per worker, {args.workers} workers",
    )
  ]
  if (args.model, args.batch, args.workers) == (
    REFERENCE["model"],
    REFERENCE["batch"],
    REFERENCE["workers"],
  ):
    out.append(reference_table(report["main"]))
  # The scaling tables time the requested methods of `METHODS` (all of them
  # by default).
  scaling_methods = [m for m in METHODS if m in args.methods] or list(METHODS)
  for workers in args.scaling:
    rows = run_interleaved(
      scaling_methods,
      args.scaling_model,
      workers,
      args.scaling_batch,
      args,
      f"scaling {args.scaling_model} x {workers}",
    )
    report["scaling"].append(rows)
    out.append(
      table(
        rows,
        f"scaling: {args.scaling_model}, batch "
        f"{args.scaling_batch} per worker, {workers} workers",
      )
    )
  print("\n\n".join(out))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
