r"""Grids of experiments.cifar runs over several seeds, and their tables and plots.

    .venv/bin/python -m experiments.study run GRID [GRID ...] [--seeds 1 2 3]
        [--root workdirs/study] [--archive DIR] [--dry-run]
    .venv/bin/python -m experiments.study report GRID [GRID ...]
        [--root workdirs/study] [--out experiments/results/study] [--compute-ms 27.5]

``run`` trains every cell of each named grid (`GRIDS`) once per seed, one run
after another, each in its own workdir ``ROOT/GRID/CELL/seedS`` through the
trainer's command line. Every run is resumable as the trainer's runs are:
rerunning the same command skips finished runs and resumes an interrupted one
from its last checkpoint, so a grid can be stopped and continued at will.

With ``--archive DIR`` each finished run's ``metrics.jsonl`` and ``config.json``
(not its checkpoints) are copied to ``DIR/GRID/CELL/seedS``, small enough to
commit, and runs already finished there are skipped: a grid started on one
machine continues on another without the workdirs, and ``report --root DIR``
reads the archive.

``report`` reads the finished workdirs and writes, per grid, a markdown table of
each cell's final accuracy (mean over workers), worst worker, averaged model,
final consensus distance (the workers' mean distance to their average model),
epochs and simulated time to the grid's target accuracy (a fixed compute time per step,
``--compute-ms``, plus the simulated communication of the run's schedule on 1
and 10 Gbit/s links with 50 us latency, overlap-aware), the simulated time of
the whole run at 1 Gbit/s, and bytes per worker, each as the mean over seeds
with a 95% confidence interval (Student's t, ``n - 1`` degrees of freedom), plus
a figure of mean test accuracy against epoch (or, for a grid with
``time_axis``, against the simulated time at each network; the seeds' mean and
range), when the grids differ in their Dirichlet alpha a summary figure of final
accuracy against alpha (``OUT.png``), and
the same numbers as JSON (null where a number does not exist: a target never
reached, the interval of a single seed). A grid's ``pairs`` get a table of
paired differences (each seed's run of a cell minus the same seed's run of its
baseline: the mean difference and its 95% interval, and whether that interval
excludes 0). The grid ``low_degree`` also gets a per-worker table and the gap
between the other workers and workers 0 and 4. A grid with MATCHA cells gets a
note that their intervals leave out the activation draw (one ``matcha_seed`` for
every seed). A cell with ``shared_with`` reads (and trains) its runs in that
grid's workdirs, so one configuration is trained once for both. A failed run
does not stop ``run``: it goes on and lists the failures at the end (exit status
1); unfinished runs are left out of ``report``. Text written by hand above the
line `GENERATED` in an existing report is kept when the report is regenerated.

A cell is a set of config overrides on top of the offline Fashion-MNIST config
(`BASE_CONFIG`), so every run here uses Debian's Fashion-MNIST and the small CNN
on emulated CPU devices.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import pathlib
import subprocess
import sys

import numpy as np

BASE_CONFIG = "experiments/cifar/configs/fashion_mnist.py"
DEFAULT_ROOT = "workdirs/study"
TARGET = 0.85
NETWORKS_GBIT = (1.0, 10.0)
LATENCY_S = 50e-6
# experiments/results/benchmark_cpu.md: local SGD step of the small CNN, batch 16,
# 8 workers on the idle 2-core machine.
COMPUTE_MS = 27.5


@dataclasses.dataclass(frozen=True)
class Cell:
  """One configuration of a grid: a name and its config overrides."""

  name: str
  overrides: tuple[tuple[str, object], ...] = ()
  # The grid whose workdirs hold this cell's runs, when it shares them with
  # another grid (the same config is then trained once for both).
  shared_with: str | None = None

  @property
  def preset(self) -> str | None:
    """The trainer's named preset (the config argument), if the cell names one."""
    return dict(self.overrides).get("method")

  def flags(self) -> list[str]:
    """The overrides other than the preset, as trainer flags."""
    return [
      f"--config.{key}={_flag_value(value)}"
      for key, value in self.overrides
      if key != "method"
    ]


def _flag_value(value) -> str:
  if isinstance(value, tuple):
    return "(" + ", ".join(map(str, value)) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def _cell(name, shared_with=None, **overrides) -> Cell:
  return Cell(name, tuple(sorted(overrides.items())), shared_with)


# Every run: no progress bar, no per-run plots.
COMMON = (("progress_bar", False), ("plots", False))
# Epochs per grid, with the learning rate divided by 10 for the last epoch(s).
SHORT = (("num_epochs", 4), ("lr_decay_epochs", (3,)))  # the README's main job
LONG = (("num_epochs", 10), ("lr_decay_epochs", (7, 9)))  # fashion_mnist.sh


@dataclasses.dataclass(frozen=True)
class Grid:
  """Cells run with the same schedule of epochs."""

  cells: tuple[Cell, ...]
  settings: tuple[tuple[str, object], ...] = SHORT
  # (cell, baseline) pairs whose differences the report gives seed by seed.
  pairs: tuple[tuple[str, str], ...] = ()
  # The accuracy the "epochs / time to target" columns ask for.
  target: float = TARGET
  # Plot accuracy against simulated time (1 and 10 Gbit/s) rather than epochs.
  time_axis: bool = False
  # One level of a study across the Dirichlet alpha of its settings: its cells
  # go into the report's summary figure against alpha (`plot_alpha_summary`).
  alpha_summary: bool = False


GRIDS: dict[str, Grid] = {
  # 1. The paper's comparison: 8 workers, graph pair (0, 1) rotated.
  "paper": Grid(
    (
      _cell("allreduce", method="allreduce"),
      _cell("dpsgd", method="dpsgd"),
      _cell("dpsgd_reference", method="dpsgd_reference"),
      _cell("matcha", method="matcha"),
      _cell("aldsgd_dpsgd", method="aldsgd_dpsgd"),
      _cell("aldsgd_dpsgd_reference", method="aldsgd_dpsgd_reference"),
      _cell("aldsgd_matcha", method="aldsgd_matcha"),
      # The best compressed variant (issue 12) and the overlapped ones (issue 13).
      _cell("choco_scaled_sign", method="choco", compressor="scaled_sign"),
      _cell("dpsgd_overlap", method="dpsgd", overlap=True),
      _cell("aldsgd_dpsgd_overlap", method="aldsgd_dpsgd", overlap=True),
    ),
    pairs=(
      ("aldsgd_dpsgd_reference", "dpsgd_reference"),
      ("aldsgd_dpsgd", "dpsgd"),
      ("aldsgd_matcha", "matcha"),
      ("dpsgd_reference", "allreduce"),
      ("dpsgd", "allreduce"),
      ("matcha", "allreduce"),
      ("aldsgd_dpsgd_reference", "allreduce"),
      ("choco_scaled_sign", "dpsgd"),
      ("dpsgd_overlap", "dpsgd"),
      ("aldsgd_dpsgd_overlap", "aldsgd_dpsgd"),
    ),
  ),
  # 2. The low-degree workers: the alternating schedule on graph 0 alone.
  "low_degree": Grid(
    (
      _cell("dpsgd_reference_g0", method="dpsgd_reference", graph_ids=(0,)),
      _cell(
        "aldsgd_dpsgd_reference_g0", method="aldsgd_dpsgd_reference", graph_ids=(0,)
      ),
      _cell("dpsgd_reference", shared_with="paper", method="dpsgd_reference"),
      _cell(
        "aldsgd_dpsgd_reference",
        shared_with="paper",
        method="aldsgd_dpsgd_reference",
      ),
    ),
    pairs=(
      ("aldsgd_dpsgd_reference_g0", "dpsgd_reference_g0"),
      ("dpsgd_reference", "dpsgd_reference_g0"),
      ("aldsgd_dpsgd_reference", "aldsgd_dpsgd_reference_g0"),
    ),
  ),
  # 3. Non-IID data: Dirichlet label skew (alpha 0.1: a few classes dominate
  # each worker's shard), then k = 2 classes per worker.
  "non_iid": Grid(
    tuple(
      _cell(f"{method}_{tag}", method=method, **partition)
      for tag, partition in (
        ("dirichlet0.1", dict(partition="dirichlet", dirichlet_alpha=0.1)),
        ("classes2", dict(partition="classes", classes_per_worker=2)),
      )
      for method in ("allreduce", "dpsgd", "aldsgd_dpsgd")
    ),
    pairs=tuple(
      pair
      for tag in ("dirichlet0.1", "classes2")
      for pair in (
        (f"aldsgd_dpsgd_{tag}", f"dpsgd_{tag}"),
        (f"dpsgd_{tag}", f"allreduce_{tag}"),
        (f"aldsgd_dpsgd_{tag}", f"allreduce_{tag}"),
      )
    ),
  ),
  # 4. Tight budgets, 16 workers: the paper's 16-node graph pair (10, 11), rotated.
  "budgets16": Grid(
    tuple(
      _cell(
        f"{method}_{budget}",
        method=method,
        matcha_budget=budget,
        num_workers=16,
        graph_ids=(11, 10),
      )
      for budget in (0.1, 0.3, 0.5)
      for method in ("matcha", "aldsgd_matcha")
    )
    # The same 16 workers without a budget, for scale.
    + tuple(
      _cell(method, method=method, num_workers=16, graph_ids=(11, 10))
      for method in ("allreduce", "dpsgd", "aldsgd_dpsgd")
    ),
    pairs=tuple((f"aldsgd_matcha_{b}", f"matcha_{b}") for b in (0.1, 0.3, 0.5))
    + (("aldsgd_dpsgd", "dpsgd"), ("matcha_0.5", "allreduce"), ("dpsgd", "allreduce")),
  ),
  # Issue 13: overlap, local steps and staleness, one factor at a time.
  "overlap": Grid(
    (
      _cell("dpsgd", method="dpsgd"),
      _cell("dpsgd_overlap", method="dpsgd", overlap=True),
      _cell("dpsgd_every4", method="dpsgd", gossip_every=4),
      _cell("dpsgd_every16", method="dpsgd", gossip_every=16),
      _cell("dpsgd_delay1", method="dpsgd", delay=1),
      _cell("dpsgd_delay4", method="dpsgd", delay=4),
      _cell("aldsgd_dpsgd", method="aldsgd_dpsgd"),
      _cell("aldsgd_dpsgd_overlap", method="aldsgd_dpsgd", overlap=True),
      _cell("aldsgd_dpsgd_every4", method="aldsgd_dpsgd", gossip_every=4),
      _cell("aldsgd_dpsgd_every16", method="aldsgd_dpsgd", gossip_every=16),
    )
  ),
  # Issue 12: compressed gossip (CHOCO-SGD), with and without AL-DSGD.
  "compression": Grid(
    (
      _cell("dpsgd", method="dpsgd"),
      _cell("choco_top_k", method="choco", compressor="top_k"),
      _cell("choco_scaled_sign", method="choco", compressor="scaled_sign"),
      _cell("choco_qsgd16", method="choco", compressor="qsgd", qsgd_levels=16),
      _cell("aldsgd_dpsgd", method="aldsgd_dpsgd"),
      _cell("aldsgd_choco_top_k", method="aldsgd_choco", compressor="top_k"),
      _cell(
        "aldsgd_choco_scaled_sign", method="aldsgd_choco", compressor="scaled_sign"
      ),
      _cell(
        "aldsgd_choco_qsgd16", method="aldsgd_choco", compressor="qsgd", qsgd_levels=16
      ),
    )
  ),
}

# Issue 21: heterogeneous data. 16 workers (one per emulated device: several
# per device through vmap measured slower here), the GroupNorm small CNN,
# Dirichlet label skew, local momentum 0.9 for every method (RelaySGD's anchor
# runs all-reduce and SGP with momentum; quasi-global momentum replaces it with
# its own), except D2, whose correction is for plain SGD steps (the library
# refuses momentum with it, as the anchor's D2 has none). Evaluations before
# the last epoch use 2,000 test examples (evaluating 16 workers on all 10,000
# costs about an epoch of training); the final numbers use all 10,000.
HETERO = (
  ("num_workers", 16),
  ("topology", "ring"),
  ("norm", "group"),
  ("partition", "dirichlet"),
  ("momentum", 0.9),
  ("interim_eval_examples", 2000),
)
# The methods: a preset and what each needs on top of HETERO.
HETERO_METHODS = {
  "allreduce": dict(method="allreduce"),
  "dpsgd": dict(method="dpsgd"),
  "qg_dsgdm": dict(method="qg_dsgdm"),
  "d2": dict(method="d2", momentum=0.0),
  "gradient_tracking": dict(method="gradient_tracking"),
  "aldsgd_dpsgd": dict(method="aldsgd_dpsgd"),
  "sgp": dict(method="sgp", topology="one_peer_exponential"),
}
# The learning-rate sweep (grid hetero_lr, alpha 0.1, seed 0, final mean test
# accuracy over the workers): first two rates per method (0.03 and 0.1; D²,
# without momentum, 0.1 and 0.3), then a third beyond the better of the two.
# QG-DSGDm and gradient tracking first ran with D-PSGD's neighbor weight and
# did not train (disagreement growing fourfold per epoch; chance accuracy):
# their W crosses the methods' stability bounds (docs/algorithm.md section
# 11). Those runs are kept as the cells *_dpsgd_weight_*; with the presets'
# weight 1/lambda_max(L) they were swept at three rates at once.
HETERO_LR_SWEEP = {
  "allreduce": (0.03, 0.1, 0.3),
  "dpsgd": (0.01, 0.03, 0.1),
  "qg_dsgdm": (0.01, 0.03, 0.1),
  "d2": (0.1, 0.3, 1.0),
  "gradient_tracking": (0.01, 0.03, 0.1),
  "aldsgd_dpsgd": (0.03, 0.1, 0.3),
  "sgp": (0.01, 0.03, 0.1),
}
HETERO_DPSGD_WEIGHT = {"qg_dsgdm": (0.03, 0.1), "gradient_tracking": (0.03, 0.1)}


def _hetero_cell(name, method, lr, shared_with=None, **overrides) -> Cell:
  return _cell(
    name, shared_with, learning_rate=lr, **{**HETERO_METHODS[method], **overrides}
  )


GRIDS["hetero_lr"] = Grid(
  tuple(
    _hetero_cell(f"{name}_lr{lr:g}", name, lr, dirichlet_alpha=0.1)
    for name, rates in HETERO_LR_SWEEP.items()
    for lr in rates
  )
  + tuple(
    _hetero_cell(
      f"{name}_dpsgd_weight_lr{lr:g}",
      name,
      lr,
      dirichlet_alpha=0.1,
      neighbor_weight="dpsgd",
    )
    for name, rates in HETERO_DPSGD_WEIGHT.items()
    for lr in rates
  ),
  settings=SHORT + HETERO,
  target=0.7,  # HETERO_TARGET, below
)

# The rate each method runs at in the grids below: the best final mean test
# accuracy of its hetero_lr cells (experiments/results/heterogeneity.md lists
# the sweep).
HETERO_LR = {
  "allreduce": 0.1,
  "dpsgd": 0.01,  # the sweep's lowest rate: a lower one might do better
  "qg_dsgdm": 0.03,
  "d2": 1.0,  # the highest (no momentum: 0.1 with momentum 0.9 moves as far)
  "gradient_tracking": 0.01,  # the lowest
  "aldsgd_dpsgd": 0.1,
  "sgp": 0.03,
}
HETERO_ALPHAS = (0.1, 0.01, 1.0)
# "Epochs / time to target": all-reduce passes 80% in its first or second
# epoch at every alpha; the decentralized methods at alpha 0.1 end between
# 50% and 80%, so 85% (the IID study's) would say "not reached" for most.
HETERO_TARGET = 0.7
for _alpha in HETERO_ALPHAS:
  GRIDS[f"hetero_alpha{_alpha:g}"] = Grid(
    tuple(_hetero_cell(name, name, HETERO_LR[name]) for name in HETERO_METHODS),
    settings=SHORT + HETERO + (("dirichlet_alpha", _alpha),),
    pairs=tuple(
      (name, base)
      for base in ("dpsgd", "allreduce")
      for name in HETERO_METHODS
      if name not in (base, "allreduce")
    )
    # Among the corrections: which to pick.
    + tuple(
      (a, b)
      for a, b in itertools.combinations(
        ("d2", "sgp", "qg_dsgdm", "gradient_tracking"), 2
      )
    ),
    target=HETERO_TARGET,
    time_axis=True,
    alpha_summary=True,
  )
# The side grid on normalisation (alpha 0.1): BatchNorm with each worker's
# own running statistics (the reference), BatchNorm with the statistics
# gossiped (averaged under all-reduce), and GroupNorm (the cells shared with
# hetero_alpha0.1), for all-reduce and D-PSGD at their tuned rates (tuned
# with GroupNorm).
GRIDS["hetero_norm"] = Grid(
  tuple(
    cell
    for name in ("allreduce", "dpsgd")
    for cell in (
      _hetero_cell(f"{name}_bn_local", name, HETERO_LR[name], norm="batch"),
      _hetero_cell(
        f"{name}_bn_gossip", name, HETERO_LR[name], norm="batch", bn_stats="gossip"
      ),
      _hetero_cell(name, name, HETERO_LR[name], shared_with="hetero_alpha0.1"),
    )
  ),
  settings=SHORT + HETERO + (("dirichlet_alpha", 0.1),),
  pairs=(
    ("dpsgd_bn_local", "allreduce_bn_local"),
    ("dpsgd_bn_gossip", "allreduce_bn_gossip"),
    ("dpsgd", "allreduce"),
    ("allreduce_bn_gossip", "allreduce_bn_local"),
    ("allreduce", "allreduce_bn_local"),
    ("dpsgd_bn_gossip", "dpsgd_bn_local"),
    ("dpsgd", "dpsgd_bn_local"),
  ),
  target=HETERO_TARGET,
)


def workdir(root: pathlib.Path, grid: str, cell: Cell, seed: int) -> pathlib.Path:
  return root / (cell.shared_with or grid) / cell.name / f"seed{seed}"


def command(grid: Grid, cell: Cell, seed: int, directory: pathlib.Path) -> list[str]:
  overrides = dict(COMMON + grid.settings)
  flags = [f"--config.{k}={_flag_value(v)}" for k, v in overrides.items()]
  return [
    sys.executable,
    "-m",
    "experiments.cifar",
    f"--config={BASE_CONFIG}" + (f":{cell.preset}" if cell.preset else ""),
    f"--workdir={directory}",
    f"--config.seed={seed}",
    *flags,
    *cell.flags(),
  ]


def _check_grids(names):
  unknown = [n for n in names if n not in GRIDS]
  if unknown:
    raise SystemExit(f"unknown grid(s) {unknown}; choose from {sorted(GRIDS)}.")


ARCHIVED = ("metrics.jsonl", "config.json")


def _finished_run(directory: pathlib.Path, default_epochs=math.inf) -> dict | None:
  """The run in ``directory`` if its metrics cover all its epochs, else None
  (not started, still going, or stopped early). ``default_epochs``: the
  epochs of a run whose config does not say."""
  from experiments import compare

  try:
    run = compare.load_run(directory)
  except (ValueError, FileNotFoundError):
    return None
  if len(run["records"]) < run["config"].get("num_epochs", default_epochs):
    return None
  return run


def archive_run(directory: pathlib.Path, archived: pathlib.Path) -> None:
  """Copies a finished run's metrics and config (not its checkpoints)."""
  archived.mkdir(parents=True, exist_ok=True)
  for name in ARCHIVED:
    (archived / name).write_bytes((directory / name).read_bytes())


def run(args) -> int:
  _check_grids(args.grids)
  root = pathlib.Path(args.root)
  archive = pathlib.Path(args.archive) if args.archive else None
  failed = []
  for grid in args.grids:
    for seed in args.seeds:
      for cell in GRIDS[grid].cells:
        directory = workdir(root, grid, cell, seed)
        archived = archive and workdir(archive, grid, cell, seed)
        if archived and _finished_run(archived) is not None:
          print(f"= {archived} (archived, finished)", flush=True)
          continue
        cmd = command(GRIDS[grid], cell, seed, directory)
        print("+ " + " ".join(cmd), flush=True)
        if args.dry_run:
          continue
        if subprocess.run(cmd).returncode:
          # Go on with the rest of the grid; rerunning resumes this one.
          failed.append(str(directory))
        elif archived:
          archive_run(directory, archived)
  if failed:
    print(f"{len(failed)} run(s) failed (rerun to resume them):", *failed, sep="\n")
  return 1 if failed else 0


# ----------------------------------------------------------------------------
# Report.


def _interval(values) -> tuple[float, float]:
  """Mean and the half-width of its 95% t-interval (nan for one value)."""
  from scipy import stats

  values = np.asarray([v for v in values if v is not None and np.isfinite(v)], float)
  if not len(values):
    return math.nan, math.nan
  if len(values) < 2:
    return float(values.mean()), math.nan
  half = (
    stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
  )
  return float(values.mean()), float(half)


def _missing(value) -> bool:
  """Whether a mean or half-width is absent: nan in memory, null in the JSON."""
  return value is None or math.isnan(value)


def _fmt(mean, half, scale=1.0, digits=2, unit="") -> str:
  if _missing(mean):
    return "not reached"
  if _missing(half):
    return f"{mean * scale:.{digits}f}{unit}"
  return f"{mean * scale:.{digits}f} ± {half * scale:.{digits}f}{unit}"


def _finished_runs(root, grid, cell):
  directories = sorted((root / (cell.shared_with or grid) / cell.name).glob("seed*"))
  runs = [_finished_run(directory, default_epochs=0) for directory in directories]
  return [run for run in runs if run is not None]


def cell_summary(runs, target=TARGET, compute_s=None) -> dict:
  """Per-seed metrics of one cell, then mean and 95% interval over seeds."""
  import jax_aldsgd as ald
  from experiments import compare

  per_seed = []
  for run in runs:
    summary = compare.summarize(run, target)
    accuracy = np.array([r["test_accuracy"] for r in run["records"]])
    reached = np.flatnonzero(accuracy.mean(1) >= target)
    times, totals = {}, {}
    for gbit in NETWORKS_GBIT:
      network = ald.NetworkModel.from_gbit(gbit, latency_s=LATENCY_S)
      seconds = compare.simulated_seconds(run, network, compute_s)
      times[gbit] = float(seconds[reached[0]]) if len(reached) else None
      totals[gbit] = float(seconds[-1])
    per_seed.append(
      dict(
        summary,
        sim_time=times,
        sim_total=totals,
        per_worker=accuracy[-1].tolist(),
        consensus=float(np.mean(run["records"][-1]["consensus_distance"])),
      )
    )
  if not per_seed:
    return {}
  out = dict(seeds=len(per_seed), epochs=[s["epochs"] for s in per_seed])
  for key in (
    "final_mean",
    "final_worst",
    "averaged_model",
    "epochs_to_target",
    "gbytes",
    "consensus",
  ):
    out[key] = _interval([s[key] for s in per_seed])
  for gbit in NETWORKS_GBIT:
    out[f"time_{gbit:g}"] = _interval([s["sim_time"][gbit] for s in per_seed])
    out[f"total_{gbit:g}"] = _interval([s["sim_total"][gbit] for s in per_seed])
  out["not_reached"] = sum(s["epochs_to_target"] is None for s in per_seed)
  out["per_worker"] = np.array([s["per_worker"] for s in per_seed])
  return out


def grid_table(grid, summaries, target=TARGET) -> str:
  net_heads = " | ".join(
    f"time to {target:.0%} at {g:g} Gbit/s (s)" for g in NETWORKS_GBIT
  )
  total = NETWORKS_GBIT[0]
  lines = [
    f"| cell | seeds | final mean acc (%) | worst worker (%) | averaged model (%)"
    f" | consensus distance | epochs to {target:.0%} | {net_heads}"
    f" | whole run at {total:g} Gbit/s (s) | GB sent per worker |",
    "|---|---|---|---|---|---|---|" + "---|" * len(NETWORKS_GBIT) + "---|---|",
  ]
  for name, s in summaries.items():
    if not s:
      lines.append(f"| {name} | 0 | not run |" + " |" * (7 + len(NETWORKS_GBIT)))
      continue
    missing = f" ({s['not_reached']} not reached)" if s["not_reached"] else ""
    times = " | ".join(_fmt(*s[f"time_{g:g}"], digits=1) for g in NETWORKS_GBIT)
    times += " | " + _fmt(*s[f"total_{total:g}"], digits=1)
    lines.append(
      f"| {name} | {s['seeds']} | {_fmt(*s['final_mean'], 100)} | "
      f"{_fmt(*s['final_worst'], 100)} | {_fmt(*s['averaged_model'], 100)} | "
      f"{_fmt(*s['consensus'], digits=3)} | "
      f"{_fmt(*s['epochs_to_target'], digits=1)}{missing} | {times} | "
      f"{_fmt(*s['gbytes'], digits=3)} |"
    )
  return "\n".join(lines)


def per_worker_table(summaries) -> str:
  any_cell = next(s for s in summaries.values() if s)
  n = any_cell["per_worker"].shape[1]
  lines = [
    "| cell | " + " | ".join(f"worker {w}" for w in range(n)) + " |",
    "|---|" + "---|" * n,
  ]
  for name, s in summaries.items():
    if not s:
      continue
    cells = [_fmt(*_interval(s["per_worker"][:, w]), 100) for w in range(n)]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


# Workers 0 and 4: the pair that matchings 0 and 1 of paper graph 0 (the
# alternating schedule on graph 0 alone) cut off from the rest.
LOW_DEGREE_WORKERS = (0, 4)


def _final(run) -> dict:
  """Final metrics of one run, for differences between paired runs."""
  last = run["records"][-1]
  accuracy = np.asarray(last["test_accuracy"], float)
  low = np.zeros(len(accuracy), bool)
  low[list(LOW_DEGREE_WORKERS)] = True
  return dict(
    final_mean=accuracy.mean(),
    final_worst=accuracy.min(),
    averaged_model=last["test_accuracy_averaged_model"],
    low_degree_gap=accuracy[~low].mean() - accuracy[low].mean(),
  )


PAIRED = ("final_mean", "final_worst", "averaged_model")


def paired_differences(runs_by_cell, pairs, keys=PAIRED) -> dict:
  """``cell - baseline`` per seed (runs matched by their config's seed), with
  the mean and 95% t-interval of those differences, for each pair and key."""
  out = {}
  for cell, base in pairs:
    ours = {r["config"]["seed"]: _final(r) for r in runs_by_cell.get(cell, [])}
    theirs = {r["config"]["seed"]: _final(r) for r in runs_by_cell.get(base, [])}
    seeds = sorted(set(ours) & set(theirs))
    out[(cell, base)] = dict(
      seeds=len(seeds),
      **{
        key: _interval([ours[s][key] - theirs[s][key] for s in seeds]) for key in keys
      },
    )
  return out


HEADS = {
  "final_mean": "final mean acc (points)",
  "final_worst": "worst worker (points)",
  "averaged_model": "averaged model (points)",
  "low_degree_gap": "low-degree gap (points)",
}


def differences_table(differences, keys=PAIRED) -> str:
  lines = [
    "| cell - baseline | seeds | "
    + " | ".join(HEADS[k] for k in keys)
    + " | interval excludes 0 (final mean) |",
    "|---|---|" + "---|" * (len(keys) + 1),
  ]
  for (cell, base), d in differences.items():
    if not d["seeds"]:
      lines.append(f"| {cell} - {base} | 0 | not run |" + " |" * len(keys))
      continue
    mean, half = d["final_mean"]
    verdict = (
      "n/a (one seed)" if _missing(half) else ("yes" if abs(mean) > half else "no")
    )
    values = " | ".join(_fmt(*d[k], 100) for k in keys)
    lines.append(f"| {cell} - {base} | {d['seeds']} | {values} | {verdict} |")
  return "\n".join(lines)


def low_degree_table(runs_by_cell) -> str:
  workers = ", ".join(map(str, LOW_DEGREE_WORKERS))
  lines = [
    f"| cell | seeds | rest minus workers {workers} (points) |",
    "|---|---|---|",
  ]
  for name, runs in runs_by_cell.items():
    if runs:
      gap = _interval([_final(r)["low_degree_gap"] for r in runs])
      lines.append(f"| {name} | {len(runs)} | {_fmt(*gap, 100)} |")
  return "\n".join(lines)


def matcha_note(grid: str) -> str | None:
  """What a grid's MATCHA intervals leave out, or None without MATCHA cells.

  The trainer draws MATCHA's activation flags from ``config.matcha_seed``, not
  from ``config.seed``, so every seed of a cell shares one draw.
  """
  cells = [
    cell
    for cell in GRIDS[grid].cells
    if "matcha" in str(dict(cell.overrides).get("method", ""))
  ]
  if not cells:
    return None
  from experiments.cifar.configs import fashion_mnist

  default = fashion_mnist.get_config().matcha_seed
  seeds = sorted({dict(cell.overrides).get("matcha_seed", default) for cell in cells})
  names = ", ".join(f"`{cell.name}`" for cell in cells)
  which = f"`matcha_seed` {seeds[0]}" if len(seeds) == 1 else f"`matcha_seed`s {seeds}"
  return (
    "MATCHA's activation draw is not varied: every run of the cells "
    f"{names} uses {which}, whatever its seed, so the seeds share one draw of the "
    "activation flags. These cells' intervals and paired differences cover the "
    "initializations, the data split and the batch order, not the activation "
    "draw."
  )


def _json_safe(value):
  """``value`` with every nan or infinite float as None (JSON's null)."""
  if isinstance(value, dict):
    return {key: _json_safe(v) for key, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  return value


def _curves(runs, x_of) -> tuple[np.ndarray, np.ndarray]:
  """x (mean over seeds) and mean test accuracy (%) per seed, per record."""
  length = min(len(r["records"]) for r in runs)
  xs = np.array([x_of(r)[:length] for r in runs])
  ys = np.array(
    [
      [np.mean(rec["test_accuracy"]) * 100 for rec in r["records"][:length]]
      for r in runs
    ]
  )
  return xs.mean(0), ys


def plot_grid(grid, runs_by_cell, out: pathlib.Path, compute_s=None) -> None:
  """Mean test accuracy against epoch, or against simulated time (one panel
  per network of `NETWORKS_GBIT`) for a grid with ``time_axis``."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  import jax_aldsgd as ald
  from experiments import compare

  if GRIDS[grid].time_axis:

    def simulated(gbit):
      network = ald.NetworkModel.from_gbit(gbit, latency_s=LATENCY_S)
      return lambda run: compare.simulated_seconds(run, network, compute_s)

    axes_x = [
      (f"simulated time at {gbit:g} Gbit/s (s)", simulated(gbit))
      for gbit in NETWORKS_GBIT
    ]
  else:
    axes_x = [("epoch", lambda run: np.arange(1, len(run["records"]) + 1))]
  fig, axes = plt.subplots(
    1, len(axes_x), figsize=(7 * len(axes_x), 4.5), squeeze=False
  )
  for ax, (label, x_of) in zip(axes[0], axes_x):
    for k, (name, runs) in enumerate(runs_by_cell.items()):
      if not runs:
        continue
      x, curves = _curves(runs, x_of)
      ax.plot(
        x,
        curves.mean(0),
        color=f"C{k}",
        lw=2,
        marker=".",
        label=f"{name} ({len(runs)} seeds)",
      )
      ax.fill_between(x, curves.min(0), curves.max(0), color=f"C{k}", alpha=0.2)
    ax.set(
      xlabel=label,
      ylabel="mean test accuracy over workers (%)",
      title=f"{grid}: mean over seeds, band = min-max over seeds",
    )
  _finish_figure(fig, axes[0], out)


def _finish_figure(fig, axes, out: pathlib.Path) -> None:
  """Grid lines and a legend on every axis; the figure saved to ``out``."""
  import matplotlib.pyplot as plt

  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=110)
  plt.close(fig)


def plot_alpha_summary(summaries_by_grid, out: pathlib.Path) -> bool:
  """Final mean test accuracy (95% interval over seeds) against the Dirichlet
  alpha of their settings, one line per cell name, over the grids marked
  ``alpha_summary``. Returns False (and draws nothing) with fewer than two
  such grids (two alphas)."""
  alphas = {
    grid: dict(GRIDS[grid].settings)["dirichlet_alpha"]
    for grid in summaries_by_grid
    if GRIDS[grid].alpha_summary
  }
  if len(alphas) < 2:
    return False
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(dict.fromkeys(n for g in alphas for n in summaries_by_grid[g]))
  fig, ax = plt.subplots(figsize=(7, 4.5))
  order = sorted(alphas, key=alphas.get)
  for k, name in enumerate(names):
    points = [
      (alphas[g], *summaries_by_grid[g][name]["final_mean"])
      for g in order
      if summaries_by_grid[g].get(name)
    ]
    if not points:
      continue
    a, mean, half = np.array(points, float).T
    ax.errorbar(
      a * (1 + 0.04 * (k - len(names) / 2)),  # side by side at each alpha
      mean * 100,
      yerr=np.nan_to_num(half) * 100,
      color=f"C{k}",
      marker="o",
      capsize=3,
      label=name,
    )
  ax.set_xscale("log")
  ax.set(
    xlabel="Dirichlet alpha (smaller: more heterogeneous)",
    ylabel="final mean test accuracy (%)",
    title="mean over seeds, bars: 95% t-interval",
  )
  _finish_figure(fig, [ax], out)
  return True


# The report keeps what precedes this line in its markdown (text written by
# hand from the numbers) and regenerates what follows.
GENERATED = "<!-- Generated by experiments.study report: everything below. -->"


def report(args) -> int:
  _check_grids(args.grids)
  root, out = pathlib.Path(args.root), pathlib.Path(args.out)
  sections, raw, summaries_by_grid = [], {}, {}
  for grid in args.grids:
    runs_by_cell = {
      cell.name: _finished_runs(root, grid, cell) for cell in GRIDS[grid].cells
    }
    target = GRIDS[grid].target
    summaries = {
      name: cell_summary(runs, target, compute_s=args.compute_ms / 1e3)
      for name, runs in runs_by_cell.items()
    }
    summaries_by_grid[grid] = summaries
    sections.append(f"### {grid}\n\n{grid_table(grid, summaries, target)}")
    if grid == "low_degree" and any(summaries.values()):
      sections.append(
        f"Final test accuracy per worker (%), {grid}:\n\n{per_worker_table(summaries)}"
      )
      sections.append(
        "Gap between the other workers' mean and the mean of workers "
        f"{LOW_DEGREE_WORKERS} (final test accuracy):\n\n"
        + low_degree_table(runs_by_cell)
      )
    keys = PAIRED + (("low_degree_gap",) if grid == "low_degree" else ())
    differences = paired_differences(runs_by_cell, GRIDS[grid].pairs, keys)
    if differences:
      sections.append(
        f"Paired differences, {grid} (each seed's run minus the baseline's run "
        "of the same seed; mean and 95% t-interval over seeds):\n\n"
        + differences_table(differences, keys)
      )
    note = matcha_note(grid)
    if note:
      sections.append(note)
    figure = out.parent / (
      f"{out.name}.png" if len(args.grids) == 1 else f"{out.name}_{grid}.png"
    )
    plot_grid(grid, runs_by_cell, figure, compute_s=args.compute_ms / 1e3)
    sections.append(f"![{grid}]({figure.name})")
    raw[grid] = {
      name: {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
      for name, s in summaries.items()
    }
    raw[grid]["differences"] = {
      f"{cell} - {base}": d for (cell, base), d in differences.items()
    }
  summary = out.parent / f"{out.name}.png"
  if plot_alpha_summary(summaries_by_grid, summary):
    sections.insert(0, f"![final accuracy against alpha]({summary.name})")
  text = "\n\n".join(sections) + "\n"
  print(text)
  out.parent.mkdir(parents=True, exist_ok=True)
  markdown = out.parent / f"{out.name}.md"
  previous = markdown.read_text() if markdown.exists() else ""
  if GENERATED in previous:
    text = f"{previous.split(GENERATED)[0]}{GENERATED}\n\n{text}"
  markdown.write_text(text)
  # Means that do not exist (a target not reached, one seed's interval) are
  # null: JSON has no NaN.
  (out.parent / f"{out.name}.json").write_text(
    json.dumps(_json_safe(raw), indent=1, allow_nan=False)
  )
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="action", required=True)
  run_parser = sub.add_parser("run", help="train every cell of the grids")
  run_parser.add_argument("grids", nargs="+")
  run_parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
  run_parser.add_argument("--root", default=DEFAULT_ROOT)
  run_parser.add_argument(
    "--dry-run", action="store_true", help="print the commands only"
  )
  run_parser.add_argument(
    "--archive",
    default="",
    help="copy each finished run's metrics.jsonl and config.json to "
    "ARCHIVE/GRID/CELL/seedS (to commit; `report --root ARCHIVE` reads them) "
    "and skip runs already finished there, so a grid resumes on a machine "
    "without the workdirs",
  )
  report_parser = sub.add_parser("report", help="tables and plots of finished runs")
  report_parser.add_argument("grids", nargs="+")
  report_parser.add_argument("--root", default=DEFAULT_ROOT)
  report_parser.add_argument("--out", default="experiments/results/study")
  report_parser.add_argument(
    "--compute-ms",
    type=float,
    default=COMPUTE_MS,
    help="compute per step for the simulated times (default: the small CNN's "
    "local SGD step measured by experiments.benchmark on the idle 2-core "
    "machine), so runs measured under different loads compare fairly",
  )
  args = parser.parse_args(argv)
  if args.action == "run":
    if any(s < 0 for s in args.seeds):
      parser.error(f"--seeds must be non-negative integers, got {args.seeds}.")
    return run(args)
  return report(args)


if __name__ == "__main__":
  sys.exit(main())
