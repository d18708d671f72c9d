r"""Compares finished or running experiments: one plot and a markdown table.

    .venv/bin/python -m experiments.compare WORKDIR [WORKDIR ...] [--out=comparison.png]
        [--target=0.85] [--gbit 1 10 [--latency-us 50] [--node-gbit G]
        [--concurrent]]

Reads each workdir's ``metrics.jsonl`` and ``config.json`` and writes one PNG with
test accuracy (mean over workers, and the worst worker dashed) against epoch and
against communicated bytes per worker; prints a markdown table with, per run, the
final and best mean accuracy, the final worst worker, the averaged model's final
accuracy, the epochs to reach the target mean accuracy and the bytes sent.

With ``--gbit``, each run's wall-clock is also simulated on networks of those link
speeds (`jax_aldsgd.NetworkModel`): the measured training time plus the simulated
communication time of every step (`NetworkModel.traffic_time` of what the run
sent, `run_traffic`: gossip, one round per active matching; all-reduce, a ring).
The PNG gets one panel of accuracy against simulated time per speed, and a second
table gives the simulated time to the target and in total.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

import numpy as np

from experiments.cifar import report


def load_run(workdir: str | pathlib.Path) -> dict:
  workdir = pathlib.Path(workdir)
  records = report.MetricsLog(workdir / "metrics.jsonl").read()
  if not records:
    raise ValueError(
      f"{workdir} has no metrics yet (no {workdir}/metrics.jsonl "
      "records); point at a workdir of experiments.cifar."
    )
  config_path = workdir / "config.json"
  config = json.loads(config_path.read_text()) if config_path.exists() else {}
  return dict(name=workdir.name, config=config, records=records)


def summarize(run: dict, target: float) -> dict:
  accuracy = np.array([r["test_accuracy"] for r in run["records"]])
  mean = accuracy.mean(1)
  reached = np.flatnonzero(mean >= target)
  last = run["records"][-1]
  return dict(
    name=run["name"],
    method=run["config"].get("method", "?"),
    epochs=len(run["records"]),
    final_mean=mean[-1],
    best_mean=mean.max(),
    final_worst=accuracy[-1].min(),
    worst_worker=int(np.argmin(accuracy[-1])),
    averaged_model=last["test_accuracy_averaged_model"],
    epochs_to_target=int(reached[0]) + 1 if len(reached) else None,
    gbytes=last["bytes_sent_mean"] / 1e9,
  )


def run_traffic(run: dict):
  """What each step of a run sent: a `jax_aldsgd.Traffic`, from its metrics and config.

  The message is the run's recorded ``message_bytes``: what
  `jax_aldsgd.traffic` of its optimizer said when it trained (the buffer a
  worker sends along one active slot, or all-reduces; 0 for local SGD). The
  schedule (rebuilt from the config, as the trainer builds it), or the
  all-reduce, runs every ``config.gossip_every`` steps. Each active slot's
  message travels in the recorded ``message_parts`` (its ``ppermute`` s, e.g.
  AL-DSGD's ranks then parameters, or the parameters then gossiped BatchNorm
  statistics); runs recorded before that field count one ``ppermute``.
  """
  import ml_collections

  import jax_aldsgd as ald
  from experiments.cifar import checkpoint, train

  # Fields added to the config since a run was recorded take their default
  # (a neighbor weight changes W, not which slots are active: not the traffic).
  config = ml_collections.ConfigDict(
    {**checkpoint.FINGERPRINT_DEFAULTS, **run["config"]}
  )
  message = run["records"][-1].get("message_bytes")
  if message is None:
    raise ValueError(
      f"{run['name']}: its metrics have no message_bytes (written "
      "by an older experiments.cifar); rerun it to simulate time."
    )
  n, every = config.num_workers, config.get("gossip_every", 1)
  mixing = config.get("mixing", config.get("method"))
  if mixing == "allreduce":
    return ald.Traffic(n, message, allreduce=True, every=every)
  if mixing == "local":
    return ald.Traffic(n)
  first = run["records"][0]
  steps_per_epoch = first["step"] // (first["epoch"] + 1)
  schedule = train.build_schedule(config, steps_per_epoch)
  parts = tuple(run["records"][-1].get("message_parts") or (message,))
  return ald.Traffic(n, message, parts, schedule, every=every)


def simulated_seconds(
  run: dict, network, compute_s_per_step: float | None = None
) -> np.ndarray:
  """Compute time + simulated communication, at each record's end.

  Communication is `NetworkModel.traffic_time` of the run's traffic
  (`run_traffic`) at every step. Compute is the run's measured training time,
  or ``compute_s_per_step`` for every step when given (to compare runs measured
  under different loads on a common footing). A run whose config sets
  ``overlap`` exchanges during the computation, so each step costs ``max(compute,
  communication)`` (`NetworkModel.step_time`), with the compute of each record's
  interval spread evenly over its steps.
  """
  traffic = run_traffic(run)
  ends = [r["step"] for r in run["records"]]
  measured = np.array([r["time_train_s"] for r in run["records"]])
  if compute_s_per_step is not None:
    measured = np.array(ends, float) * compute_s_per_step
  per_step = np.array([network.traffic_time(traffic, k) for k in range(ends[-1])])
  if run["config"].get("overlap", False):
    compute = np.zeros(ends[-1])
    for start, end, spent in zip([0] + ends[:-1], ends, np.diff(measured, prepend=0.0)):
      compute[start:end] = spent / max(end - start, 1)
    overlapped = dataclasses.replace(network, overlap=True)
    steps = overlapped.step_time(compute, per_step)
    return np.concatenate([[0.0], np.cumsum(steps)])[ends]
  return measured + np.concatenate([[0.0], np.cumsum(per_step)])[ends]


def time_table(runs: list[dict], networks: list, target: float) -> str:
  lines = [
    "| run | method | "
    + " | ".join(f"{net}: time to {target:.0%} | total" for net in networks)
    + " |",
    "|---|---|" + "---|---|" * len(networks),
  ]
  for run in runs:
    mean = np.array([r["test_accuracy"] for r in run["records"]]).mean(1)
    cells = []
    for net in networks:
      seconds = simulated_seconds(run, net)
      reached = np.flatnonzero(mean >= target)
      cells.append(
        "not reached" if not len(reached) else f"{seconds[reached[0]]:.1f} s"
      )
      cells.append(f"{seconds[-1]:.1f} s")
    lines.append(
      f"| {run['name']} | {run['config'].get('method', '?')} | "
      + " | ".join(cells)
      + " |"
    )
  return "\n".join(lines)


def markdown_table(rows: list[dict], target: float) -> str:
  lines = [
    f"| run | method | epochs | final mean acc | best mean acc | final worst "
    f"worker | averaged model | epochs to {target:.0%} | GB sent per worker |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    to_target = (
      "not reached" if r["epochs_to_target"] is None else str(r["epochs_to_target"])
    )
    lines.append(
      f"| {r['name']} | {r['method']} | {r['epochs']} | {r['final_mean']:.2%} | "
      f"{r['best_mean']:.2%} | {r['final_worst']:.2%} (worker "
      f"{r['worst_worker']}) | {r['averaged_model']:.2%} | {to_target} | "
      f"{r['gbytes']:.3f} |"
    )
  return "\n".join(lines)


def plot(runs: list[dict], out: pathlib.Path, networks=()) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = 1 + (len(networks) + 1) // 2
  fig, axes = plt.subplots(rows, 2, figsize=(12, 4.5 * rows), squeeze=False)
  axes = axes.ravel()
  by_epoch, by_bytes = axes[:2]
  for ax in axes[2 + len(networks) :]:
    ax.set_visible(False)
  for ax, net in zip(axes[2:], networks):
    for k, run in enumerate(runs):
      accuracy = np.array([r["test_accuracy"] for r in run["records"]]) * 100
      ax.plot(
        simulated_seconds(run, net),
        accuracy.mean(1),
        color=f"C{k}",
        lw=2,
        marker=".",
        label=run["name"],
      )
    ax.set(
      xlabel="simulated wall-clock (s)", ylabel="mean test accuracy (%)", title=str(net)
    )
    ax.grid(alpha=0.3)
  for k, run in enumerate(runs):
    color = f"C{k}"
    accuracy = np.array([r["test_accuracy"] for r in run["records"]]) * 100
    epochs = [r["epoch"] + 1 for r in run["records"]]
    gbytes = [r["bytes_sent_mean"] / 1e9 for r in run["records"]]
    label = f"{run['name']} ({run['config'].get('method', '?')})"
    by_epoch.plot(epochs, accuracy.mean(1), color=color, lw=2, label=label)
    by_epoch.plot(epochs, accuracy.min(1), color=color, lw=1, ls="--")
    by_bytes.plot(gbytes, accuracy.mean(1), color=color, lw=2, marker=".", label=label)
  by_epoch.set(
    xlabel="epoch",
    ylabel="test accuracy (%)",
    title="mean over workers (solid), worst worker (dashed)",
  )
  by_bytes.set(
    xlabel="GB sent per worker",
    ylabel="mean test accuracy (%)",
    title="accuracy vs communication",
  )
  for ax in (by_epoch, by_bytes):
    ax.grid(alpha=0.3)
  fig.suptitle(
    "compute time measured on this machine, communication simulated"
    if networks
    else "",
    fontsize=9,
  )
  by_epoch.legend(fontsize=8)
  fig.tight_layout()
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=110)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("workdirs", nargs="+", help="experiments.cifar workdirs")
  parser.add_argument("--out", default="comparison.png", help="PNG to write")
  parser.add_argument(
    "--target",
    type=float,
    default=0.85,
    help="target mean test accuracy, a fraction in (0, 1]",
  )
  parser.add_argument(
    "--gbit",
    type=float,
    nargs="*",
    default=[],
    help="simulate networks with these link speeds (Gbit/s)",
  )
  parser.add_argument(
    "--latency-us",
    type=float,
    default=50.0,
    help="per-message latency of the simulated network",
  )
  parser.add_argument(
    "--node-gbit",
    type=float,
    default=None,
    help="optional per-node bandwidth cap (Gbit/s)",
  )
  parser.add_argument(
    "--concurrent",
    action="store_true",
    help="all of a step's gossip messages in flight at once",
  )
  args = parser.parse_args(argv)
  if not 0.0 < args.target <= 1.0:
    parser.error(f"--target must be a fraction in (0, 1], got {args.target}.")
  import jax_aldsgd as ald

  try:
    networks = [
      ald.NetworkModel.from_gbit(
        g,
        latency_s=args.latency_us * 1e-6,
        node_gbit=args.node_gbit,
        concurrent=args.concurrent,
      )
      for g in args.gbit
    ]
    runs = [load_run(w) for w in args.workdirs]
  except ValueError as e:
    parser.error(str(e))
  plot(runs, pathlib.Path(args.out), networks)
  print(markdown_table([summarize(r, args.target) for r in runs], args.target))
  if networks:
    print("\nSimulated wall-clock (measured compute + simulated communication):\n")
    print(time_table(runs, networks, args.target))
  print(f"\nplot: {args.out}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
