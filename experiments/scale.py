r"""Time per step at scale, by simulation: gossip, compressed gossip and overlap vs all-reduce.

    .venv/bin/python -m experiments.scale [--out=experiments/results/scale]
        [--workers=8,16,32,64,128,256,512,1024] [--gbit=1,10,100]
        [--latency-us=5,50] [--compute-ms=resnet50=20,100m=150]
        [--matcha-max-n=256] [--measure-compute]

Writes ``OUT.md`` (tables) and ``OUT.png`` (figure) in under two minutes on the
2-core development CPU (MATCHA's solver dominates; ``--matcha-max-n`` bounds it).

Everything here is `jax_aldsgd.NetworkModel` arithmetic, no training: per
message latency ``L``, per-worker link bandwidth ``b`` (each direction), one
message per matching round. For each number of workers ``n``, network and model
(``P`` float32 parameters, ``M = 4 P`` bytes: what `jax_aldsgd.traffic` says
`jax_aldsgd.gossip` sends per matching and `jax_aldsgd.allreduce` averages) the
time of one step is ``compute + communication`` (or ``max`` of the two when
overlapped) with:

* ring all-reduce: ``2 (n - 1) L + 2 (n - 1) / n * M / b``;
* two-level all-reduce (`NetworkModel.hierarchical_allreduce_time`),
  ``g = 8`` workers per host on an intra-host link of ``--intra-gbps`` GB/s and
  ``--intra-latency-us``: ``2 (g - 1) L_in + 2 (g - 1) / g * M / b_in + 2 (N - 1) L
  + 2 (N - 1) / N * (M / g) / b`` over ``N = n / g`` hosts;
* gossip (D-PSGD, every matching every step) on a ring, a 2-D torus and the
  exponential graph (``i ~ i +/- 2^k``): ``R * (L + B / b)`` for ``R`` matchings,
  one after the other, as the transforms run them (``B = M``);
* gossip on the one-peer exponential graph (`jax_aldsgd.schedules.one_peer_exponential`,
  directed: at step k worker i sends to ``i + 2^(k mod log2 n)``): one message
  per step, ``L + B / b``;
* MATCHA on the exponential graph at budget 0.5: the same per active matching,
  ``sum_m p_m`` rounds on average (simulated over `MATCHA_STEPS` random steps);
* CHOCO-compressed gossip (docs/algorithm.md section 9) on the same graphs: ``B`` is
  the compressor's wire format (`compressed_bytes`); not on the one-peer graph,
  which the library refuses to compress (`jax_aldsgd.check_options`: CHOCO keeps
  per-edge copies, a directed slot has no edge pairs);
* overlapped gossip (section 10, adapt-while-combine): ``max(compute, comm)``.

Consensus is not per-step time: each schedule's spectral gap
(`jax_aldsgd.Schedule.spectral_gap`, docs/algorithm.md section 5.2: per step,
over one period of a time-varying schedule) is reported next to it.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
import time

import numpy as np

import jax_aldsgd as ald
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T

# The paper's CIFAR ResNet-50 (docs/algorithm.md section 8) and a 100M-parameter model.
MODELS = {"resnet50": 545_930, "100m": 100_000_000}
# Parameter leaves (each carries a per-leaf norm or scale in some wire formats):
# the CIFAR ResNet-50 has 174 (13 bottlenecks x 12, 3 projections x 4, stem 4,
# head 2); 200 is assumed for the 100M model (a 4-byte term each: negligible).
LEAVES = {"resnet50": 174, "100m": 200}
# Compute per step when not measured: ResNet-50 (CIFAR, batch 16) forward +
# backward on a current data-centre GPU, and a 100M-parameter model's step.
COMPUTE_MS = {"resnet50": 20.0, "100m": 150.0}
WORKERS_PER_HOST = 8
MATCHA_BUDGET = 0.5
MATCHA_STEPS = 400
WIN = 1.005  # a step faster by more than 0.5% counts as a win


def compressed_bytes(compressor: str, num_params: int, num_leaves: int) -> float:
  """Bytes of one CHOCO message: the wire format the CHOCO issue specifies.

  * ``none``: ``4 P`` (float32 parameters);
  * ``topk10``: top-k with ``k = 10%`` of each leaf: ``k`` float32 values and
    ``k`` int32 indices, ``8 * 0.1 P``;
  * ``sign``: scaled sign, packed bits and one float32 scale per leaf:
    ``P / 8 + 4 * leaves``;
  * ``qsgd16``: QSGD with 16 levels, one byte per entry (sign and level) and one
    float32 norm per leaf: ``P + 4 * leaves``.

  Per-leaf rounding (``floor``, ``ceil``) is ignored: it moves a byte per leaf.
  """
  formats = {
    "none": 4.0 * num_params,
    "topk10": 8.0 * 0.1 * num_params,
    "sign": num_params / 8.0 + 4.0 * num_leaves,
    "qsgd16": 1.0 * num_params + 4.0 * num_leaves,
  }
  if compressor not in formats:
    raise ValueError(
      f"compressor must be one of {sorted(formats)}, got {compressor!r}."
    )
  return formats[compressor]


def torus_shape(n: int) -> tuple[int, int]:
  """The squarest ``rows x cols = n`` with ``rows <= cols``."""
  rows = math.isqrt(n)
  while n % rows:
    rows -= 1
  return rows, n // rows


def topology(name: str, n: int) -> ald.Topology:
  if name == "ring":
    return T.ring(n)
  if name == "torus":
    return T.torus(*torus_shape(n))
  if name == "exponential":
    return T.exponential(n)
  raise ValueError(f"unknown topology {name!r}; use ring, torus or exponential.")


COMPRESSORS = ("topk10", "sign", "qsgd16")


def wire_formats(schedule) -> tuple[str, ...]:
  """Gossip's wire formats on ``schedule``: ``"none"``, and compressed ones if allowed.

  The library's table decides (`jax_aldsgd.check_options`): it refuses a
  compressor on a directed schedule such as the one-peer exponential graph.
  """
  try:
    ald.check_options(
      "gossip", compressor=ald.compressors.scaled_sign(), schedule=schedule
    )
  except ValueError:
    return ("none",)
  return ("none", *COMPRESSORS)


def measure_compute_ms(model: str, batch: int = 16) -> float:
  """Median forward + backward + SGD step of the CIFAR model on this machine's CPU.

  The trainer's step (experiments.cifar.train) without its exchange: one worker.
  """
  import jax
  import optax
  from flax import nnx

  from experiments.cifar import models

  net = models.create_model(
    model, num_classes=10, in_channels=3, rngs=nnx.Rngs(params=jax.random.key(0))
  )
  graphdef, params, stats = nnx.split(net, nnx.Param, nnx.BatchStat)
  images = jax.numpy.zeros((batch, 32, 32, 3))
  labels = jax.numpy.zeros((batch,), int)

  @jax.jit
  def step(params, stats):
    def loss_fn(p):
      model = nnx.merge(graphdef, p, stats, copy=True)
      model.train()
      logits = model(images)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grads = jax.grad(loss_fn)(params)
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)

  jax.block_until_ready(step(params, stats))
  times = []
  for _ in range(5):
    start = time.perf_counter()
    jax.block_until_ready(step(params, stats))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


class Sweep:
  """Per-step times of every method on every (n, network, model)."""

  def __init__(
    self, workers, networks, compute_ms, matcha_max_n, intra_bandwidth, intra_latency_s
  ):
    self.workers = workers
    self.networks = networks
    self.compute_ms = compute_ms
    self.intra_bandwidth = intra_bandwidth
    self.intra_latency_s = intra_latency_s
    self.schedules = {}  # (graph, n) -> schedule
    self.solve_s = {}
    for n in workers:
      for name in ("ring", "torus", "exponential"):
        self.schedules[name, n] = S.full(topology(name, n))
      self.schedules["one-peer", n] = S.one_peer_exponential(n)
      if n <= matcha_max_n:
        start = time.perf_counter()
        self.schedules["matcha", n] = S.matcha(T.exponential(n), MATCHA_BUDGET)
        self.solve_s[n] = time.perf_counter() - start
    # Active slots (messages) per step: exactly what NetworkModel.gossip_time
    # counts; every step of a deterministic schedule here costs the same.
    self.rounds = {
      key: np.array(
        [s.active(k).sum() for k in range(MATCHA_STEPS if key[0] == "matcha" else 1)],
        float,
      )
      for key, s in self.schedules.items()
    }

  def gaps(self) -> dict:
    """``(graph, n) -> Schedule.spectral_gap()`` (MATCHA: ``1 - sqrt(rho)``)."""
    return {key: s.spectral_gap() for key, s in self.schedules.items()}

  def allreduce_s(self, net, traffic) -> dict:
    """Seconds of one all-reduce of ``traffic`` (`jax_aldsgd.allreduce`'s)."""
    n = traffic.num_workers
    g = min(WORKERS_PER_HOST, n)
    return {
      "ring all-reduce": net.traffic_time(traffic, 0),
      "2-level all-reduce": net.hierarchical_allreduce_time(
        n,
        traffic.message_bytes,
        workers_per_host=g,
        intra_host_bandwidth=self.intra_bandwidth,
        intra_host_latency_s=self.intra_latency_s,
      ),
    }

  def gossip_s(self, net, key, message_bytes) -> np.ndarray:
    """Per-step communication seconds (one entry per simulated step)."""
    schedule = self.schedules[key]
    if key[0] != "matcha":
      return np.array([net.gossip_time(schedule, 0, message_bytes)])
    return self.rounds[key] * (net.latency_s + message_bytes / net.link_bandwidth)

  def rows(self):
    """One dict per (model, network, n, method): step seconds and comm seconds."""
    out = []
    for model, params in MODELS.items():
      compute = self.compute_ms[model] * 1e-3
      # What the transforms send for this model (jax_aldsgd.traffic): gossip's
      # message per active matching, and the buffer the all-reduce averages.
      gossip = {
        key: ald.traffic(ald.gossip(schedule), _shape(params))
        for key, schedule in self.schedules.items()
      }
      for net in self.networks:
        serial = net
        overlapped = ald.NetworkModel(
          net.latency_s,
          net.link_bandwidth,
          net.node_bandwidth,
          net.concurrent,
          overlap=True,
        )
        for n in self.workers:
          base = {
            "model": model,
            "gbit": round(net.link_bandwidth / 1.25e8, 6),
            "latency_us": round(net.latency_s * 1e6, 6),
            "n": n,
            "compute_s": compute,
          }
          allreduce = ald.traffic(ald.allreduce(), _shape(params), num_workers=n)
          for method, comm in self.allreduce_s(serial, allreduce).items():
            out.append(
              dict(
                base,
                method=method,
                graph="all-reduce",
                compressor="none",
                overlap=False,
                comm_s=comm,
                step_s=serial.step_time(compute, comm),
              )
            )
          for key in self.schedules:
            if key[1] != n:
              continue
            for compressor in wire_formats(self.schedules[key]):
              size = (
                float(gossip[key].message_bytes)
                if compressor == "none"
                else compressed_bytes(compressor, params, LEAVES[model])
              )
              comm = self.gossip_s(serial, key, size)
              for over, model_net in ((False, serial), (True, overlapped)):
                out.append(
                  dict(
                    base,
                    method="gossip",
                    graph=key[0],
                    compressor=compressor,
                    overlap=over,
                    comm_s=float(comm.mean()),
                    step_s=float(np.mean(model_net.step_time(compute, comm))),
                  )
                )
    return out


def _shape(num_params):
  import jax

  return jax.ShapeDtypeStruct((num_params,), np.float32)


GRAPH_NAMES = {
  "ring": "ring",
  "torus": "torus",
  "exponential": "exponential",
  "one-peer": "one-peer exponential",
  "matcha": f"MATCHA(exp, {MATCHA_BUDGET})",
}
VARIANTS = (
  ("gossip", "none", False),
  ("CHOCO", "compressed", False),
  ("overlap", "none", True),
  ("CHOCO + overlap", "compressed", True),
)
BASELINES = (
  ("one worker per host", "ring all-reduce"),
  (f"{WORKERS_PER_HOST} workers per host", "2-level all-reduce"),
)


def label(row) -> str:
  if row["graph"] == "all-reduce":
    return row["method"]
  extra = [] if row["compressor"] == "none" else [f"CHOCO {row['compressor']}"]
  if row["overlap"]:
    extra.append("overlap")
  return GRAPH_NAMES[row["graph"]] + (" + " + " + ".join(extra) if extra else "")


def _select(rows, **where):
  return [r for r in rows if all(r[k] == v for k, v in where.items())]


def best_variant(
  rows, gaps, compressed: bool, overlap: bool, graphs=tuple(GRAPH_NAMES), **where
):
  """Fastest gossip row of a variant; within 0.5% of it, the best-mixing graph,
  then the uncompressed message (ties are common once overlap hides the
  exchange entirely)."""
  chosen = [
    r
    for r in _select(rows, overlap=overlap, **where)
    if r["graph"] in graphs and (r["compressor"] != "none") == compressed
  ]
  fastest = min(r["step_s"] for r in chosen)
  close = [r for r in chosen if r["step_s"] <= 1.005 * fastest]
  return max(close, key=lambda r: (gaps[r["graph"], r["n"]], r["compressor"] == "none"))


def speedups(rows, gaps, baseline: str, graphs=tuple(GRAPH_NAMES), **where) -> dict:
  """Variant name -> (speed-up of a step over ``baseline``, its row)."""
  reference = _select(rows, method=baseline, **where)[0]["step_s"]
  out = {}
  for name, compressor, overlap in VARIANTS:
    row = best_variant(rows, gaps, compressor == "compressed", overlap, graphs, **where)
    out[name] = (reference / row["step_s"], row)
  return out


def region_table(rows, gaps, workers, baseline) -> str:
  """Per (model, bandwidth, latency) and n: each variant's best speed-up."""
  lines = [
    "| model | link | latency | " + " | ".join(f"n={n}" for n in workers) + " |",
    "|---|---|---|" + "---|" * len(workers),
  ]
  keys = sorted(
    {(r["model"], r["gbit"], r["latency_us"]) for r in rows},
    key=lambda k: (k[0] != "resnet50", k[1], k[2]),
  )
  for model, gbit, latency in keys:
    cells = []
    for n in workers:
      found = speedups(
        rows, gaps, baseline, model=model, gbit=gbit, latency_us=latency, n=n
      )
      parts = []
      for name, _, _ in VARIANTS:
        value, row = found[name]
        text = f"{value:.2f}{row['graph'][0]}"
        parts.append(f"**{text}**" if value > WIN else text)
      cells.append(" / ".join(parts))
    lines.append(
      f"| {model} | {gbit:g} Gbit/s | {latency:g} us | " + " | ".join(cells) + " |"
    )
  return "\n".join(lines)


MIXING_GRAPHS = ("exponential", "one-peer", "matcha")


def headline(rows, gaps, workers) -> str:
  """Where each variant wins, from the rows (no hand-written numbers)."""
  lines = []
  for (setting, baseline), graphs in [
    (b, g) for b in BASELINES for g in (tuple(GRAPH_NAMES), MIXING_GRAPHS)
  ]:
    ns = [
      n for n in workers if baseline == "ring all-reduce" or n >= 2 * WORKERS_PER_HOST
    ]
    lines.append(
      f"* **{setting}, against the {baseline}, "
      + (
        "any graph**"
        if len(graphs) == len(GRAPH_NAMES)
        else "only graphs that keep mixing at scale (exponential, one-peer "
        "exponential, MATCHA on the exponential)**"
      )
    )
    for name, _, _ in VARIANTS:
      wins, best, cells = {}, (0.0, None), 0
      for row in _select(rows, method=baseline):
        if row["n"] not in ns:
          continue
        cells += 1
        where = {
          "model": row["model"],
          "gbit": row["gbit"],
          "latency_us": row["latency_us"],
          "n": row["n"],
        }
        value, winner = speedups(rows, gaps, baseline, graphs, **where)[name]
        if value > WIN:
          wins.setdefault((row["model"], row["gbit"], row["latency_us"]), []).append(
            row["n"]
          )
        if value > best[0]:
          best = (value, winner)
      value, row = best
      at_best = (
        f"at best {value:.2f}x ({label(row)}, {row['model']}, "
        f"{row['gbit']:g} Gbit/s, {row['latency_us']:g} us, "
        f"n={row['n']})"
      )
      if not wins:
        lines.append(f"  * {name}: never faster ({at_best}).")
        continue
      count = sum(map(len, wins.values()))
      where = (
        "everywhere"
        if count == cells
        else f"in {count} of {cells} cells: {_regions(wins, ns)}"
      )
      lines.append(f"  * {name}: faster {where}; {at_best}.")
  return "\n".join(lines)


def _regions(wins, ns) -> str:
  """``{(model, gbit, latency): [n, ...]}`` as short text, latencies merged."""
  merged = {}
  for (model, gbit, latency), at in sorted(wins.items()):
    merged.setdefault((model, gbit, _span(sorted(at), ns)), []).append(latency)
  parts = []
  for (model, gbit, span), latencies in merged.items():
    parts.append(
      f"{model} {gbit:g} Gbit/s {'/'.join(f'{l:g}' for l in latencies)} us: {span}"
    )
  return "; ".join(parts)


def _span(at, ns) -> str:
  if at == ns:
    return "all n"
  first, last = ns.index(at[0]), ns.index(at[-1])
  if len(at) == 1:
    return f"n = {at[0]}"
  if at == ns[first : last + 1]:
    return f"n >= {at[0]}" if at[-1] == ns[-1] else f"n = {at[0]}-{at[-1]}"
  return "n in {" + ", ".join(map(str, at)) + "}"


def detail_table(rows, model, gbit, latency, workers) -> str:
  """Step time (ms) of every method for one model and network."""
  here = _select(rows, model=model, gbit=gbit, latency_us=latency)
  names = []
  for r in here:
    if label(r) not in names:
      names.append(label(r))
  lines = [
    "| method | " + " | ".join(f"n={n}" for n in workers) + " |",
    "|---|" + "---|" * len(workers),
  ]
  for name in names:
    cells = []
    for n in workers:
      match = [r for r in here if r["n"] == n and label(r) == name]
      cells.append(f"{1e3 * match[0]['step_s']:.1f}" if match else "-")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def gap_table(gaps, workers) -> str:
  lines = [
    "| topology | " + " | ".join(f"n={n}" for n in workers) + " |",
    "|---|" + "---|" * len(workers),
  ]
  for graph, name in GRAPH_NAMES.items():
    cells = [f"{gaps[graph, n]:.2g}" if (graph, n) in gaps else "-" for n in workers]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


PANELS = (("resnet50", 1.0, 50.0), ("resnet50", 100.0, 5.0), ("100m", 10.0, 50.0))


def _plain_step_s(rows, graph, n, model, gbit, latency, overlap=False):
  match = _select(
    rows,
    graph=graph,
    n=n,
    model=model,
    gbit=gbit,
    latency_us=latency,
    compressor="none",
    overlap=overlap,
  )
  return match[0]["step_s"] if match else None


def one_peer_table(rows, gaps, rounds, workers) -> str:
  """The one-peer exponential graph against the exponential graph, per n.

  Messages per step (active slots), spectral gap and the plain-gossip step
  time on the detail panels, each as ``exponential / one-peer``.
  """
  panels = [
    p for p in PANELS if _plain_step_s(rows, "exponential", workers[0], *p) is not None
  ]
  lines = [
    "| n | messages per step | spectral gap | "
    + " | ".join(f"ms per step: {m}, {g:g} Gbit/s, {l:g} us" for m, g, l in panels)
    + " |",
    "|---|---|---|" + "---|" * len(panels),
  ]
  for n in workers:
    cells = [
      f"{rounds['exponential', n].mean():g} / {rounds['one-peer', n].mean():g}",
      f"{gaps['exponential', n]:.2g} / {gaps['one-peer', n]:.2g}",
    ]
    for panel in panels:
      exp, peer = (1e3 * _plain_step_s(rows, g, n, *panel) for g in GRAPH_ORDER)
      cells.append(f"{exp:.1f} / {peer:.1f}")
    lines.append(f"| {n} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


GRAPH_ORDER = ("exponential", "one-peer")


def one_peer_verdict(rows, gaps, rounds, workers) -> str:
  """Whether the one-peer graph beats the exponential graph per step, from the rows."""
  fewer = [
    n for n in workers if rounds["one-peer", n].mean() < rounds["exponential", n].mean()
  ]
  wider = [n for n in workers if gaps["one-peer", n] >= gaps["exponential", n] - 1e-12]
  cells = sorted({(r["model"], r["gbit"], r["latency_us"], r["n"]) for r in rows})
  counts = {}
  for overlap in (False, True):
    faster = slower = 0
    for model, gbit, latency, n in cells:
      exp, peer = (
        _plain_step_s(rows, g, n, model, gbit, latency, overlap) for g in GRAPH_ORDER
      )
      faster += peer < exp / WIN
      slower += peer > exp * WIN
    counts[overlap] = (faster, slower)
  everywhere = lambda ns: "at every n" if ns == workers else f"at n in {ns}"
  (faster, slower), (faster_o, slower_o) = counts[False], counts[True]
  dominates = fewer == workers and wider == workers and not slower and not slower_o
  return (
    f"{'It dominates' if dominates else 'It does not dominate'} the exponential "
    f"graph per step on this sweep: fewer messages per step {everywhere(fewer)}, "
    f"a spectral gap at least as large {everywhere(wider)}; a plain gossip "
    f"step faster in {faster} of {len(cells)} (model, network, n) cells and "
    f"slower in {slower}; overlapped, faster in {faster_o} and slower in "
    f"{slower_o} (the rest tie: the exchange hides behind the compute)."
  )


OTHER_N = (6, 12, 24, 48, 96, 192, 384, 768)


def other_n_table(largest: int) -> str:
  """Messages per step and gaps of both graphs at n not a power of two."""
  sizes = [n for n in OTHER_N if n <= largest]
  lines = [
    "| n | messages per step | spectral gap per step | gap per message |",
    "|---|---|---|---|",
  ]
  for n in sizes:
    graphs = (S.full(T.exponential(n)), S.one_peer_exponential(n))
    messages = [int(s.active(0).sum()) for s in graphs]
    gaps = [s.spectral_gap() for s in graphs]
    per_message = [1 - (1 - g) ** (1 / m) for g, m in zip(gaps, messages)]
    lines.append(
      f"| {n} | {messages[0]} / {messages[1]} | {gaps[0]:.2g} / {gaps[1]:.2g} | "
      f"{per_message[0]:.2g} / {per_message[1]:.2g} |"
    )
  return "\n".join(lines)


def _ticks(ax, workers):
  import matplotlib.ticker

  ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
  ax.set_xticks(workers, [str(n) for n in workers])
  ax.grid(True, which="both", alpha=0.3)


def plot(rows, gaps, workers, path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
  styles = {
    "ring all-reduce": {"color": "black", "lw": 2},
    "2-level all-reduce": {"color": "black", "lw": 2, "ls": "--"},
    "ring": {"color": "C0"},
    "torus": {"color": "C1"},
    "exponential": {"color": "C2"},
    "one-peer exponential": {"color": "C5"},
    f"MATCHA(exp, {MATCHA_BUDGET})": {"color": "C3"},
    "torus + CHOCO topk10": {"color": "C1", "ls": ":"},
    "torus + CHOCO sign": {"color": "C4", "ls": ":"},
    "torus + overlap": {"color": "C1", "ls": "--"},
    "torus + CHOCO sign + overlap": {"color": "C4", "ls": "-."},
  }
  for ax, (model, gbit, latency) in zip(axes.flat, PANELS):
    here = [
      r
      for r in rows
      if r["model"] == model and r["gbit"] == gbit and r["latency_us"] == latency
    ]
    for name, style in styles.items():
      points = sorted((r["n"], r["step_s"]) for r in here if label(r) == name)
      if points:
        ax.plot(*zip(*points), marker=".", label=name, **style)
    compute = here[0]["compute_s"]
    ax.axhline(compute, color="grey", lw=1, label="compute alone")
    ax.set(
      xscale="log",
      yscale="log",
      xlabel="workers n",
      ylabel="seconds per step",
      title=f"{model}: {gbit:g} Gbit/s, {latency:g} us",
    )
    _ticks(ax, workers)
  axes.flat[0].legend(fontsize=7)
  ax = axes.flat[3]
  for graph, color in (
    ("ring", "C0"),
    ("torus", "C1"),
    ("exponential", "C2"),
    ("one-peer", "C5"),
    ("matcha", "C3"),
  ):
    points = sorted((n, gaps[g, n]) for g, n in gaps if g == graph)
    ax.plot(
      *zip(*points),
      marker="o" if graph == "one-peer" else ".",
      fillstyle="none",
      color=color,
      label=GRAPH_NAMES[graph]
      + (" (per step over log2 n)" if graph == "one-peer" else ""),
    )
  ax.axhline(1.0, color="black", lw=1, label="all-reduce (exact average)")
  ax.set(
    xscale="log",
    yscale="log",
    xlabel="workers n",
    ylabel="spectral gap per step",
    title="consensus rate: 1 - ||prod W - J||^(1/period) (MATCHA: 1 - sqrt(rho))",
  )
  _ticks(ax, workers)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def time_matcha_solver(workers, old_solver_max_n: int = 0) -> str:
  """Markdown table: `schedules.matcha` on random geometric graphs of mean degree ~10-12."""
  lines = [
    (
      "| n | radius | mean degree | matchings | topology s | matcha wall s "
      "| matcha CPU s | alpha | rho |"
    ),
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for n in workers:
    radius = round(1.15 * math.sqrt(10 / (math.pi * n)), 4)
    start = time.perf_counter()
    graph = T.random_geometric(n, radius, seed=0)
    built = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    schedule = S.matcha(graph, MATCHA_BUDGET)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    lines.append(
      f"| {n} | {radius} | {graph.degrees.mean():.1f} | "
      f"{graph.num_matchings} | {built:.2f} | {wall:.1f} | {cpu:.1f} | "
      f"{schedule.neighbor_weight[0]:.6f} | {schedule.rho:.6f} |"
    )
    print(lines[-1], flush=True)
  return "\n".join(lines)


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="experiments/results/scale")
  parser.add_argument("--workers", default="8,16,32,64,128,256,512,1024")
  parser.add_argument("--gbit", default="1,10,100")
  parser.add_argument("--latency-us", default="5,50")
  parser.add_argument(
    "--compute-ms",
    default="resnet50=20,100m=150",
    help="compute seconds per step, per model",
  )
  parser.add_argument(
    "--measure-compute",
    action="store_true",
    help="measure ResNet-50's step on this CPU instead",
  )
  parser.add_argument(
    "--matcha-max-n",
    type=int,
    default=256,
    help="largest n for MATCHA (its solver is the slow part)",
  )
  parser.add_argument(
    "--intra-gbps",
    type=float,
    default=100.0,
    help="intra-host link, GB/s per direction (NVLink class)",
  )
  parser.add_argument("--intra-latency-us", type=float, default=2.0)
  parser.add_argument(
    "--time-matcha",
    default="",
    help="also time schedules.matcha on random geometric "
    "graphs of these sizes (e.g. 128,256,512,1024; minutes)",
  )
  return parser.parse_args(argv)


def _sizes(flag: str, text: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(",") if v]
  except ValueError:
    raise ValueError(
      f"{flag} must be comma-separated integers, got {text!r} (e.g. 8,16,32)."
    ) from None
  return values


def main(argv=None) -> int:
  args = _parse(argv)
  start = time.perf_counter()
  workers = _sizes("--workers", args.workers)
  for n in workers:
    if n < 2 or n % 2:
      raise ValueError(
        f"--workers: {n} must be an even number >= 2 (rings and "
        "tori of odd size need a third matching); e.g. 8,16,32."
      )
  compute_ms = dict(COMPUTE_MS)
  for item in args.compute_ms.split(","):
    name, _, value = item.partition("=")
    if name not in MODELS:
      raise ValueError(
        f"--compute-ms: unknown model {name!r}; use "
        f"{', '.join(MODELS)} (e.g. resnet50=20,100m=150)."
      )
    compute_ms[name] = float(value)
  measured = ""
  if args.measure_compute:
    compute_ms["resnet50"] = measure_compute_ms("resnet50")
    measured = (
      f" ResNet-50's step measured on this machine's CPU: "
      f"{compute_ms['resnet50']:.1f} ms (batch 16)."
    )
  networks = [
    ald.NetworkModel.from_gbit(float(g), latency_s=float(l) * 1e-6)
    for g in args.gbit.split(",")
    for l in args.latency_us.split(",")
  ]
  sweep = Sweep(
    workers,
    networks,
    compute_ms,
    args.matcha_max_n,
    args.intra_gbps * 1e9,
    args.intra_latency_us * 1e-6,
  )
  rows = sweep.rows()
  gaps = sweep.gaps()
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  plot(rows, gaps, workers, out.with_suffix(".png"))
  sweep_s = time.perf_counter() - start
  timing = ""
  if args.time_matcha:
    timing = MATCHA_TIMING.format(
      table=time_matcha_solver(_sizes("--time-matcha", args.time_matcha))
    )
  threads = "".join(
    f"{name}={os.environ[name]} "
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
    if name in os.environ
  )
  command = (
    threads
    + ".venv/bin/python -m experiments.scale "
    + " ".join(sys.argv[1:] if argv is None else argv)
  )
  flat = [n for n in workers if n in (8, 64, 256, 1024)] or workers
  hosts = [
    n for n in workers if n >= 2 * WORKERS_PER_HOST and n in (16, 64, 256, 1024)
  ] or [n for n in workers if n >= 2 * WORKERS_PER_HOST]
  defaults = vars(_parse([]))
  same = all(
    getattr(args, k) == v
    for k, v in defaults.items()
    if k not in ("out", "time_matcha")
  )
  report = REPORT.format(
    command=command.strip(),
    seconds=sweep_s,
    summary=SUMMARY if same else "",
    largest=max(workers),
    consensus_steps=", ".join(
      f"{1 / gaps[graph, max(workers)]:.2g} for the {name}"
      if gaps[graph, max(workers)] < 1
      else f"exact averaging after "
      f"{sweep.schedules[graph, max(workers)].period} steps for the {name}"
      for graph, name in GRAPH_NAMES.items()
      if (graph, max(workers)) in gaps
    ),
    png=out.with_suffix(".png").name,
    headline=headline(rows, gaps, workers),
    compute=", ".join(f"{k} {v:g} ms" for k, v in compute_ms.items()) + "." + measured,
    g=WORKERS_PER_HOST,
    intra=f"{args.intra_gbps:g} GB/s and {args.intra_latency_us:g} us",
    budget=MATCHA_BUDGET,
    steps=MATCHA_STEPS,
    flat=region_table(rows, gaps, flat, "ring all-reduce"),
    hosts=region_table(rows, gaps, hosts, "2-level all-reduce"),
    gaps=gap_table(gaps, workers),
    one_peer=one_peer_table(rows, gaps, sweep.rounds, workers),
    one_peer_verdict=one_peer_verdict(rows, gaps, sweep.rounds, workers),
    other_n=other_n_table(max(workers)),
    matcha_solve=", ".join(f"n={n}: {s:.1f} s" for n, s in sweep.solve_s.items()),
    timing=timing,
    details="\n\n".join(
      f"#### {model}, {gbit:g} Gbit/s, {latency:g} us (ms per step)\n\n"
      + detail_table(rows, model, gbit, latency, workers)
      for model, gbit, latency in PANELS
    ),
  )
  out.with_suffix(".md").write_text(report)
  print(report)
  return 0


REPORT = """\
# Time per step at scale (simulated)

Command: `{command}` (the sweep and figure: {seconds:.0f} s on the 2-core
development CPU, shared). Everything below is arithmetic of
`jax_aldsgd.NetworkModel`; nothing was trained or sent.

![seconds per step against n on three networks, and spectral gap against n]({png})

## Headline
{summary}
Speed-up of one training step over all-reduce; "gossip" is the best of ring,
2-D torus, exponential graph, one-peer exponential graph and MATCHA at every
step with full float32 messages, "CHOCO" the same with the best compressed wire
format (not on the one-peer graph, which the library does not compress),
"overlap" the exchange hidden behind compute (step = max), on every (model, link
speed, latency, n) of the sweep ("faster": by more than 0.5%):

{headline}

A per-step win is necessary, not sufficient, for a win in time to accuracy:
gossip mixes by a factor of roughly ``1 - gap`` per step (table below) where
all-reduce averages exactly, CHOCO's compression slows that mixing further (its
consensus step gamma < 1; not modelled here), and overlap (adapt-while-combine)
mixes stale parameters. As a heuristic only, steps to shrink the disagreement by
a factor e scale like ``1 / gap``: at n = {largest}, {consensus_steps}.

## What is modelled

Per worker: one link of ``b`` = 1, 10 or 100 Gbit/s each direction, latency
``L`` = 5 or 50 us per message, no other bottleneck. Messages are the float32
parameters: ResNet-50 of the paper (545,930 parameters, 2.18 MB) and a
100M-parameter model (400 MB). Compute per step (given, not measured, unless
`--measure-compute`): {compute}

* **ring all-reduce** (one worker per host, every hop on the network):
  ``2 (n - 1) L + 2 (n - 1) / n * M / b``.
* **2-level all-reduce** ({g} workers per host on an intra-host link of
  {intra}, an NVLink-class assumption; each worker keeps its own network link):
  ring reduce-scatter inside the host, ring all-reduce of each ``M / {g}`` shard
  across the ``N = n / {g}`` hosts, ring all-gather inside:
  ``2 (g - 1) L_in + 2 (g - 1) / g * M / b_in + 2 (N - 1) L + 2 (N - 1) / N * (M / g) / b``.
  This is what NCCL-style libraries do on multi-GPU hosts; it cuts the bytes each
  network link carries by ``g``. At n = 8 it is one host: nothing crosses the
  network (the tables start it at n = 16). (NCCL also has tree algorithms with ``O(log n)``
  latency, and TPU pods all-reduce over a 2-D/3-D torus; neither is modelled, so
  at large n and high latency the all-reduce baselines are pessimistic.)
* **gossip** (D-PSGD: every matching of the graph at every step), on a ring (2
  matchings), a 2-D torus (4 matchings, 3 at n = 8), the exponential graph
  (``i ~ i +/- 2^k``, ``2 log2 n - 1`` neighbors, about that many matchings):
  ``R * (L + B / b)``, matchings one after the other as the transforms run them
  (today's default, `NetworkModel(concurrent=False)`). With every neighbor behind
  one network link, sending them all at once saves only ``(R - 1) L``. Gossip
  messages cross hosts even with {g} workers per host, so the gossip times are
  the same in both settings.
* **one-peer exponential graph** (`schedules.one_peer_exponential`, directed and
  time-varying, docs/algorithm.md section 11): at step k worker i sends to
  ``i + 2^(k mod log2 n)`` only, ``W_k = (I + P_k) / 2``: one message per
  step, ``L + B / b``. The library refuses a compressor on a directed schedule
  (`jax_aldsgd.check_options`: CHOCO keeps per-edge copies, a directed slot
  has no edge pairs), so it has no CHOCO rows.
* **MATCHA** on the exponential graph at budget {budget}: each matching active
  with its solved probability ``p_m``; the mean over {steps} simulated steps of
  ``(active matchings) * (L + B / b)`` (overlapped: the mean of the per-step max).
* **CHOCO-compressed gossip** (docs/algorithm.md section 9) on the same graphs and
  schedules, with message bytes from the wire format the CHOCO issue specifies
  (`experiments.scale.compressed_bytes`): top-k 10% = ``0.1 P`` float32 values +
  ``0.1 P`` int32 indices (``0.8 P`` bytes); scaled sign = ``P / 8 + 4`` per leaf;
  QSGD 16 levels = ``P + 4`` per leaf. The time to compress is not counted.
* **overlap** (docs/algorithm.md section 10, adapt-while-combine): step =
  ``max(compute, communication)`` (`NetworkModel(overlap=True).step_time`);
  otherwise ``compute + communication``. All-reduce is *not* overlapped here;
  DDP-style bucketed all-reduce hides part of itself behind the backward pass,
  which would shrink the overlap columns' advantage by up to the hidden part.

## Where each variant beats all-reduce per step

Each cell: speed-ups of one step over the baseline, in the order gossip / CHOCO /
overlap / CHOCO + overlap, each for its best graph, named by its initial
(**r**ing, **t**orus, **e**xponential, **o**ne-peer exponential, **m**atcha;
ties within 0.5% go to the graph that mixes better, then to the uncompressed
message); **bold** where faster by more than 0.5%.

### One worker per host: against the ring all-reduce

{flat}

### {g} workers per host: against the 2-level all-reduce

{hosts}

## Consensus per step: spectral gap against n

`Schedule.spectral_gap()` (docs/algorithm.md section 5.2): ``1 - ||W_(T-1) ...
W_0 - 11^T / n||_2^(1/T)`` over one period of ``T`` steps, the per-step factor
on the disagreement as a geometric mean over the period. For the fixed graphs
(``T = 1``, ``W = I - alpha L`` with D-PSGD's ``alpha = 2 / (lambda_2 +
lambda_max)``) that is ``1 - max_(i>=2) |lambda_i(W)|``; for the one-peer
exponential graph ``T = log2 n``, and at n a power of two its ``T`` steps
average exactly (gap 1; a single step does not). For MATCHA (random ``W``)
``1 - sqrt(rho)`` with ``rho = lambda_max(E[W^T W] - 11^T / n)``
(`Schedule.rho`), the same per-step factor in root mean square. All-reduce: 1.

{gaps}

## The one-peer exponential graph against the exponential graph

Per step, as ``exponential / one-peer``: messages (active matchings or
shifts, one ``L + B / b`` each), spectral gap, and the plain gossip step
(float32 messages, not overlapped) on the detail panels' networks.

{one_peer}

{one_peer_verdict}

At n a power of two (every n of the default sweep) ``log2 n`` one-peer steps
average exactly. At other n they do not, and its gap per step falls below the
exponential graph's, which sends many more messages per step; per message
(``1 - (1 - gap)^(1 / messages)``) it still mixes faster:

{other_n}

MATCHA's probabilities on the exponential graph took: {matcha_solve}.
{timing}
## Step times in detail

{details}
"""

# Reading of the default sweep (shown only when its flags are the defaults).
SUMMARY = """
In short (default flags; the lists below are computed, this paragraph is not):

* **The one-peer exponential graph** sends one message per step, fewer than any
  other graph here (ring 2, torus 3-4, exponential 6-20), and at every n of the
  sweep (powers of two) its ``log2 n`` steps average exactly (gap 1 per step
  over that period, against 0.25 for the exponential graph at n = 1024). Per
  step it dominates the exponential graph (its section below) and is the
  fastest plain gossip in every cell. At n not a power of two its gap per step
  is below the exponential graph's (0.15 against 0.26 at n = 768), though not
  per message sent. The library does not compress on a directed schedule, so
  it has no CHOCO rows.
* **Every hop on the network (one worker per host).** The ring all-reduce pays
  ``2 (n - 1)`` latencies and sends ``2 (n - 1) / n`` models per worker,
  one-peer gossip one latency and one model, so plain gossip wins everywhere:
  for ResNet-50 by 1.01x (100 Gbit/s, 5 us, small n) up to 6.1x (n = 1024,
  50 us); for the 100M model, bandwidth-bound, by 1.1x-2x (half the bytes). The
  ring and the torus are slower than the one-peer graph and their spectral gap
  collapses (2e-5 and 0.01 at n = 1024).
* **CHOCO** wins on bytes: scaled sign sends 1/32 of the float32 message, top-k
  10% 1/5, so it beats an uncompressed all-reduce everywhere, up to 19x for the
  100M model at 1 Gbit/s (33x overlapped). An all-reduce that compresses too
  (PowerSGD, 1-bit methods) is not modelled and would take most of that back.
* **Overlap** caps the step at the compute time: ResNet-50's (20 ms) one-peer
  exchange (17.5 ms at 1 Gbit/s) is hidden completely on every network, worth
  1.02x at 100 Gbit/s, 5 us and small n, up to 7.9x at n = 1024, 1 Gbit/s and
  50 us.
* **8 workers per host, against the 2-level all-reduce** (the network carries
  1/8 of the all-reduce's bytes): plain gossip wins only for ResNet-50 at large
  n on fast or high-latency links (n >= 128 at 10 Gbit/s and 50 us, n >= 32 at
  100 Gbit/s and 50 us, n >= 256 at 100 Gbit/s and 5 us), by at most 1.6x, and
  is up to 5.9x slower for the 100M model; overlapped it wins in 55 of 84
  cells, by at most 1.85x. Only compression gets ahead nearly everywhere (CHOCO
  in 81 of 84 cells, by up to 2.75x; with overlap in 83, by up to 4.8x); on the
  exponential graph and MATCHA alone, CHOCO + overlap wins in 79 of 84 cells, by
  at most 1.85x.
"""

MATCHA_TIMING = """
## MATCHA's solver at scale

`schedules.matcha(topologies.random_geometric(n, radius, seed=0), 0.5)` (radius
``1.15 sqrt(10 / (pi n))``), timed inside the command above on the shared 2-core
CPU; the wall clock includes waiting for the other jobs on the machine, the CPU
seconds do not.

{table}
"""


if __name__ == "__main__":
  sys.exit(main())
