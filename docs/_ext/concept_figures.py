"""Draws the concept pages' figures from the library itself, at every build.

The figures go to ``docs/_generated/`` (ignored by git) before Sphinx reads
the pages, which show them as ``/_generated/NAME.png``. Everything is host-side
NumPy (graphs, schedules, mixing matrices, traffic); no JAX device is used.
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[1] / "_generated"
COLOURS = plt.get_cmap("tab10").colors


def _circle(n: int) -> np.ndarray:
  angle = np.pi / 2 - 2 * np.pi * np.arange(n) / n
  return np.stack([np.cos(angle), np.sin(angle)], 1)


def _draw_graph(ax, topology, title, active=None, alpha=1.0):
  """Workers on a circle, each matching's edges in its own colour."""
  xy = _circle(topology.num_workers)
  for m, matching in enumerate(topology.matchings):
    on = active is None or active[m]
    for i, j in matching:
      ax.plot(
        *xy[[i, j]].T,
        color=COLOURS[m % 10] if on else "0.85",
        lw=2.5 if on else 1.0,
        ls="-" if on else ":",
        zorder=1,
      )
  for i, (x, y) in enumerate(xy):
    ax.scatter(x, y, s=380, color="white", edgecolor="black", zorder=2)
    ax.text(x, y, str(i), ha="center", va="center", fontsize=10, zorder=3)
  ax.set_title(title, fontsize=10)
  ax.set_aspect("equal")
  ax.axis("off")


def graph_pair(ald, path):
  fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
  for ax, gid in zip(axes, (0, 1)):
    g = ald.topologies.paper_graph(gid)
    _draw_graph(ax, g, f"paper graph {gid}: {g.num_matchings} matchings")
    handles = [
      plt.Line2D([], [], color=COLOURS[m], lw=2.5, label=f"matching {m}")
      for m in range(g.num_matchings)
    ]
    ax.legend(
      handles=handles,
      loc="lower center",
      bbox_to_anchor=(0.5, -0.18),
      ncol=3,
      fontsize=8,
      frameon=False,
    )
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def schedules(ald, path, steps=12):
  g0, g1 = ald.topologies.paper_graph(0), ald.topologies.paper_graph(1)
  cases = [
    ("full(graph 0): D-PSGD", ald.schedules.full(g0)),
    ("alternating(graph 0): the reference's 'D-PSGD'", ald.schedules.alternating(g0)),
    ("matcha(graph 0, budget=0.5)", ald.schedules.matcha(g0, budget=0.5)),
    (
      "rotating([full(graph 1), full(graph 0)])",
      ald.schedules.rotating([ald.schedules.full(g1), ald.schedules.full(g0)]),
    ),
  ]
  fig, axes = plt.subplots(
    len(cases),
    1,
    figsize=(8, 6.8),
    gridspec_kw={"height_ratios": [c[1].num_slots for c in cases]},
  )
  for ax, (title, schedule) in zip(axes, cases):
    flags = np.stack([schedule.active(k) for k in range(steps)], 1)
    colours = np.ones((*flags.shape, 3))
    for s, (_, matching) in enumerate(schedule.slots):
      colours[s, flags[s]] = COLOURS[matching % 10]
    ax.imshow(colours, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(schedule.num_slots))
    ax.set_yticklabels(
      [f"g{graph} m{matching}" for graph, matching in schedule.slots], fontsize=7
    )
    ax.set_xticks(range(steps))
    ax.set_xticks(np.arange(steps) - 0.5, minor=True)
    ax.set_yticks(np.arange(schedule.num_slots) - 0.5, minor=True)
    ax.grid(which="minor", color="0.8", lw=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set_title(title, fontsize=9, loc="left")
  axes[-1].set_xlabel("step k (a coloured cell: that slot exchanges at step k)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def mixing_matrix(ald, path):
  g0 = ald.topologies.paper_graph(0)
  cases = [
    ("full(graph 0), any step", ald.schedules.full(g0), 0),
    ("matcha(graph 0, 0.5), step 3", ald.schedules.matcha(g0, budget=0.5), 3),
  ]
  fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.0))
  for ax, (title, schedule, step) in zip(axes, cases):
    w = schedule.mixing_matrix(step)
    ax.imshow(w, cmap="RdBu", vmin=-1, vmax=1)
    for i in range(w.shape[0]):
      for j in range(w.shape[1]):
        if abs(w[i, j]) > 1e-12:
          ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=6.5)
    ax.set_title(f"$W_k$ of {title}", fontsize=9)
    ax.set_xlabel("j (sender)")
    ax.set_ylabel("i (receiver)")
    ax.set_xticks(range(w.shape[0]))
    ax.set_yticks(range(w.shape[0]))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def workers_devices(ald, path):
  """8 workers on 4 devices (2 per device): one matching's messages."""
  g = ald.topologies.ring(8)
  matching = g.matchings[1]
  fig, ax = plt.subplots(figsize=(8, 2.6))
  per = 2
  for d in range(4):
    ax.add_patch(plt.Rectangle((d * 2 - 0.45, -0.5), 1.9, 1.0, fill=False, lw=1.2))
    ax.text(d * 2 + 0.5, 0.62, f"device {d}", ha="center", fontsize=9)
  pos = {w: (w // per) * 2 + (w % per) for w in range(8)}
  for i, j in matching:
    same = i // per == j // per
    y = 0 if same else 0
    rad = 0.0 if same else -0.45
    ax.annotate(
      "",
      xy=(pos[j], y - 0.12),
      xytext=(pos[i], y - 0.12),
      arrowprops=dict(
        arrowstyle="<->",
        color="tab:green" if same else "tab:red",
        lw=1.8,
        connectionstyle=f"arc3,rad={rad}",
      ),
    )
  for w in range(8):
    ax.scatter(pos[w], 0.1, s=420, color="white", edgecolor="black", zorder=3)
    ax.text(pos[w], 0.1, str(w), ha="center", va="center", zorder=4)
  ax.plot([], [], color="tab:red", lw=1.8, label="across devices: one ppermute")
  ax.plot([], [], color="tab:green", lw=1.8, label="within a device: indexing")
  ax.legend(
    loc="lower center", bbox_to_anchor=(0.5, -0.35), ncol=2, frameon=False, fontsize=8
  )
  ax.set_xlim(-0.8, 7.8)
  ax.set_ylim(-1.4, 0.9)
  ax.axis("off")
  ax.set_title(
    "ring(8), one matching, worker_mesh(8, workers_per_device=2)", fontsize=9
  )
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def one_step(ald, path):
  """Gossip and AL-DSGD for worker 0 of paper graph 0, one step (schematic)."""
  g = ald.topologies.paper_graph(0)
  xy = _circle(g.num_workers)
  me = 0
  neighbors = sorted(
    {j for m in g.matchings for i, j in m if i == me}
    | {i for m in g.matchings for i, j in m if j == me}
  )
  degrees = g.degrees
  fig, axes = plt.subplots(1, 2, figsize=(8.6, 4.2))
  for ax, title in zip(axes, ("gossip (D-PSGD)", "AL-DSGD")):
    for i, j in g.edges:
      touches = me in (i, j)
      ax.plot(
        *xy[[i, j]].T,
        color="0.3" if touches else "0.88",
        lw=2 if touches else 1,
        zorder=1,
      )
    for i, (x, y) in enumerate(xy):
      face = "gold" if i == me else ("lightblue" if i in neighbors else "white")
      ax.scatter(x, y, s=420, color=face, edgecolor="black", zorder=2)
      ax.text(x, y, str(i), ha="center", va="center", fontsize=10, zorder=3)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=10)
  leader = neighbors[-1]
  top = max(neighbors, key=lambda j: (degrees[j], -j))
  ax = axes[1]
  for j, label, colour in (
    (leader, "leader: lowest loss", "tab:red"),
    (top, "max degree", "tab:purple"),
  ):
    ax.annotate(
      "",
      xy=xy[j] * 0.82 + xy[me] * 0.18,
      xytext=xy[me],
      arrowprops=dict(arrowstyle="->", color=colour, lw=2.2),
      zorder=4,
    )
    ax.text(*(xy[j] * 1.22), label, ha="center", va="center", fontsize=8, color=colour)
  axes[0].text(
    0,
    -1.45,
    "worker 0 averages with its active neighbours:\n"
    r"$x_0 \leftarrow x_0 - \alpha \sum_j (x_0 - x_j)$",
    ha="center",
    fontsize=8.5,
  )
  axes[1].text(
    0,
    -1.45,
    "the same average, plus pulls toward the neighbour\n"
    "with the lowest loss and the one of highest degree",
    ha="center",
    fontsize=8.5,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def what_a_step_sends(ald, path, size=272_474, steps=64):
  """Mean bytes per worker per step, ResNet-20-sized model, 8 workers."""
  import jax

  params = jax.ShapeDtypeStruct((size,), np.float32)
  g0, g1 = ald.topologies.paper_graph(0), ald.topologies.paper_graph(1)
  rotate = ald.schedules.rotating([ald.schedules.full(g1), ald.schedules.full(g0)])
  full = ald.schedules.full(g0)
  cases = [
    ("all-reduce (ring)", ald.allreduce(), 8),
    ("gossip, full(graph 0)", ald.gossip(full), None),
    ("gossip, alternating(graph 0)", ald.gossip(ald.schedules.alternating(g0)), None),
    (
      "gossip, matcha(graph 0, 0.5)",
      ald.gossip(ald.schedules.matcha(g0, budget=0.5)),
      None,
    ),
    ("AL-DSGD, rotating pair", ald.adjacent_leader(rotate), None),
    (
      "CHOCO top-10%, full(graph 0)",
      ald.gossip(full, compressor=ald.compressors.top_k(0.1), consensus_lr=0.3),
      None,
    ),
    ("gossip every 4 steps, full(graph 0)", ald.gossip(full, every=4), None),
  ]
  labels, values = [], []
  for label, tx, n in cases:
    t = ald.traffic(tx, params, num_workers=n)
    values.append(np.mean([t.sent_bytes(k).mean() for k in range(steps)]) / 2**20)
    labels.append(label)
  fig, ax = plt.subplots(figsize=(8, 3.4))
  ax.barh(labels[::-1], values[::-1], color="tab:blue")
  for y, v in enumerate(values[::-1]):
    ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
  ax.set_xlabel("MiB sent per worker per step (mean over 64 steps)")
  ax.set_title(f"a {size:,}-parameter float32 model (ResNet-20), 8 workers", fontsize=9)
  ax.set_xlim(0, max(values) * 1.2)
  ax.tick_params(axis="y", labelsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


FIGURES = {
  "graph_pair": graph_pair,
  "schedules": schedules,
  "mixing_matrix": mixing_matrix,
  "workers_devices": workers_devices,
  "one_step": one_step,
  "what_a_step_sends": what_a_step_sends,
}


def draw(app) -> None:
  import jax_aldsgd as ald

  OUT.mkdir(exist_ok=True)
  for name, function in FIGURES.items():
    function(ald, OUT / f"{name}.png")


def setup(app):
  app.connect("builder-inited", draw)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
