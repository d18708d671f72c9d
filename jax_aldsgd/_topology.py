"""Communication graphs as lists of matchings (host side, NumPy).

A matching is a set of disjoint undirected edges, so every worker has at most one
partner in it and one matching maps to one ``jax.lax.ppermute``. A graph is the list
of its matchings; its Laplacian is ``L = sum_m L_m`` (a matching listed twice counts
twice, as in the reference code's graph 10).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import numbers
from collections.abc import Iterable, Sequence

import numpy as np

from jax_aldsgd import _checks

Edge = tuple[int, int]
Matching = tuple[Edge, ...]


def _read_only(array: np.ndarray) -> np.ndarray:
  array.setflags(write=False)
  return array


def _as_edge(raw, where: str, num_workers: int) -> Edge:
  try:
    i, j = raw
  except (TypeError, ValueError):
    raise ValueError(
      f"{where}: an edge must be a pair (i, j) of worker indices, got {raw!r}."
    ) from None
  for node in (i, j):
    if isinstance(node, bool) or not isinstance(node, numbers.Integral):
      raise TypeError(
        f"{where}: worker indices must be integers, got {node!r} in edge {raw!r}."
      )
    if not 0 <= node < num_workers:
      raise ValueError(
        f"{where}: node {node} in edge {tuple(raw)} is out of range "
        f"for num_workers={num_workers}; nodes must be in "
        f"[0, {num_workers - 1}]."
      )
  if i == j:
    raise ValueError(
      f"{where}: self-loop ({i}, {j}); a worker cannot be its own "
      "neighbor, remove the edge."
    )
  return int(i), int(j)


@dataclasses.dataclass(frozen=True)
class Topology:
  """An undirected communication graph over ``num_workers`` workers, as matchings.

  Args:
    num_workers: number of workers ``n >= 2``.
    matchings: sequence of matchings; each matching is a sequence of edges ``(i, j)``
      with ``0 <= i, j < n``, ``i != j``, and no worker in two edges of the same
      matching. Order is kept: it is the order in which neighbors are visited
      (``N_i`` is ordered by matching index) and in which exchanges are issued.
    allow_disconnected: a disconnected graph cannot reach consensus on its own, so
      it is refused unless this is ``True`` (the reference's sparsest graphs are
      disconnected and only meant to be used inside a rotating schedule).

  Raises:
    ValueError: naming the offending matching, edge or node.
    TypeError: the same, for an argument of the wrong type.

  Example:
    >>> import jax_aldsgd as ald
    >>> t = ald.Topology(4, [[(0, 1), (2, 3)], [(1, 2), (3, 0)]])
    >>> t.degrees
    array([2, 2, 2, 2])
  """

  num_workers: int
  matchings: tuple[Matching, ...]
  allow_disconnected: bool = dataclasses.field(default=False, compare=False)

  def __post_init__(self):
    n = _checks.check_integer("num_workers", self.num_workers, 2)
    if isinstance(self.matchings, (str, bytes)) or not isinstance(
      self.matchings, Iterable
    ):
      raise TypeError(
        "matchings must be a sequence of matchings (each a sequence "
        f"of (i, j) edges), got {self.matchings!r}."
      )
    matchings = []
    for m, raw_matching in enumerate(self.matchings):
      if isinstance(raw_matching, (str, bytes)) or not isinstance(
        raw_matching, Iterable
      ):
        raise TypeError(
          f"matching {m} must be a sequence of (i, j) edges, got {raw_matching!r}."
        )
      edges = tuple(_as_edge(e, f"matching {m}", n) for e in raw_matching)
      if not edges:
        raise ValueError(
          f"matching {m} is empty; remove it (an empty matching "
          "would be an exchange that moves nothing)."
        )
      seen = {}
      for edge in edges:
        for node in edge:
          if node in seen:
            if set(seen[node]) == set(edge):
              raise ValueError(
                f"matching {m} lists edge {edge} twice; list each "
                "edge once per matching."
              )
            raise ValueError(
              f"matching {m} is not a matching: node {node} is in both "
              f"{seen[node]} and {edge}. Split those edges into different "
              "matchings, or build the topology with "
              "jax_aldsgd.topologies.from_edges, which colours edges for you."
            )
          seen[node] = edge
      matchings.append(edges)
    if not matchings:
      raise ValueError(
        "matchings is empty; a topology needs at least one matching (one edge)."
      )
    object.__setattr__(self, "num_workers", n)
    object.__setattr__(self, "matchings", tuple(matchings))
    object.__setattr__(self, "allow_disconnected", bool(self.allow_disconnected))
    if not self.allow_disconnected and not self.is_connected():
      raise ValueError(
        f"the graph on {n} workers is disconnected (components "
        f"{self.components()}); its workers can never agree. Add edges, or pass "
        "allow_disconnected=True if it is meant to be one graph of a rotating "
        "schedule whose union is connected."
      )

  @property
  def num_matchings(self) -> int:
    return len(self.matchings)

  @functools.cached_property
  def partners(self) -> np.ndarray:
    """``(num_matchings, n)`` int array: worker i's partner in matching m, or -1."""
    table = np.full((self.num_matchings, self.num_workers), -1, dtype=np.int64)
    for m, matching in enumerate(self.matchings):
      for i, j in matching:
        table[m, i], table[m, j] = j, i
    return _read_only(table)

  @functools.cached_property
  def edges(self) -> tuple[Edge, ...]:
    """Distinct undirected edges ``(i, j)`` with ``i < j``, sorted."""
    return tuple(sorted({(min(e), max(e)) for m in self.matchings for e in m}))

  @functools.cached_property
  def degrees(self) -> np.ndarray:
    """Degree of each worker, counting a repeated matching once per listing."""
    return _read_only((self.partners >= 0).sum(axis=0))

  def matching_laplacians(self) -> np.ndarray:
    """``(num_matchings, n, n)`` Laplacians ``L_m`` of the matchings."""
    n = self.num_workers
    laplacians = np.zeros((self.num_matchings, n, n))
    for m, matching in enumerate(self.matchings):
      for i, j in matching:
        laplacians[m, [i, j], [i, j]] += 1.0
        laplacians[m, i, j] -= 1.0
        laplacians[m, j, i] -= 1.0
    return laplacians

  def laplacian(self) -> np.ndarray:
    """Graph Laplacian ``L = sum_m L_m`` as an ``(n, n)`` float64 array."""
    return self.matching_laplacians().sum(axis=0)

  def components(self) -> list[list[int]]:
    """Connected components, each a sorted list of workers."""
    parent = list(range(self.num_workers))

    def find(a):
      while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
      return a

    for i, j in self.edges:
      parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for node in range(self.num_workers):
      groups.setdefault(find(node), []).append(node)
    return sorted(groups.values())

  def is_connected(self) -> bool:
    return len(self.components()) == 1

  def __repr__(self) -> str:
    return (
      f"Topology(num_workers={self.num_workers}, "
      f"num_matchings={self.num_matchings}, num_edges={len(self.edges)})"
    )


# ----------------------------------------------------------------------------
# Constructors.


def _cycle_matchings(nodes: Sequence[int]) -> list[list[Edge]]:
  """Matchings of the cycle through ``nodes`` (2 if its length is even, else 3)."""
  k = len(nodes)
  if k == 2:
    return [[(nodes[0], nodes[1])]]
  edges = [(nodes[a], nodes[(a + 1) % k]) for a in range(k)]
  matchings = [edges[0 : k - k % 2 : 2], edges[1 : k - k % 2 : 2]]
  if k % 2:
    matchings.append([edges[-1]])
  return matchings


def ring(num_workers: int) -> Topology:
  """Cycle ``0 - 1 - ... - (n-1) - 0``: 2 matchings for even n, 3 for odd n."""
  n = _checks.check_integer("num_workers", num_workers, 2)
  return Topology(n, _cycle_matchings(list(range(n))))


def torus(rows: int, cols: int) -> Topology:
  """2-D torus of ``rows x cols`` workers (worker ``r * cols + c``).

  Each row and each column is a cycle; a dimension of size 2 contributes a single
  edge (not a doubled one), and a dimension of size 1 contributes none.
  """
  rows = _checks.check_integer("rows", rows, 1)
  cols = _checks.check_integer("cols", cols, 1)
  if rows * cols < 2:
    raise ValueError(
      f"torus({rows}, {cols}) has {rows * cols} worker; it needs at least 2."
    )
  matchings = []
  if cols >= 2:
    per_row = [
      _cycle_matchings([r * cols + c for c in range(cols)]) for r in range(rows)
    ]
    matchings += [sum((p[k] for p in per_row), []) for k in range(len(per_row[0]))]
  if rows >= 2:
    per_col = [
      _cycle_matchings([r * cols + c for r in range(rows)]) for c in range(cols)
    ]
    matchings += [sum((p[k] for p in per_col), []) for k in range(len(per_col[0]))]
  return Topology(rows * cols, matchings)


def complete(num_workers: int) -> Topology:
  """Complete graph, as ``n - 1`` (even n) or ``n`` (odd n) perfect-ish matchings.

  Uses the circle method of round-robin tournaments.
  """
  n = _checks.check_integer("num_workers", num_workers, 2)
  slots = list(range(n)) + ([None] if n % 2 else [])
  size = len(slots)
  matchings = []
  for _ in range(size - 1):
    pairs = [(slots[a], slots[size - 1 - a]) for a in range(size // 2)]
    matchings.append([(i, j) for i, j in pairs if i is not None and j is not None])
    slots = [slots[0], slots[-1]] + slots[1:-1]
  return Topology(n, matchings)


def exponential(num_workers: int) -> Topology:
  """Exponential graph: worker i is linked to ``i +/- 2^k (mod n)`` for ``2^k < n``."""
  n = _checks.check_integer("num_workers", num_workers, 2)
  edges = set()
  hop = 1
  while hop < n:
    for i in range(n):
      j = (i + hop) % n
      if i != j:
        edges.add((min(i, j), max(i, j)))
    hop *= 2
  return from_edges(n, sorted(edges))


def erdos_renyi(
  num_workers: int, p: float, seed: int = 0, *, allow_disconnected: bool = False
) -> Topology:
  """G(n, p) random graph, each edge independently with probability ``p``.

  The graph is drawn once from ``numpy.random.default_rng(seed)``; a draw that is
  disconnected raises (try a larger ``p`` or another ``seed``) unless
  ``allow_disconnected=True``.
  """
  n = _checks.check_integer("num_workers", num_workers, 2)
  if not (isinstance(p, numbers.Real) and 0.0 < p <= 1.0):
    raise ValueError(f"p must be a probability in (0, 1], got {p!r}.")
  rng = np.random.default_rng(_checks.check_integer("seed", seed, 0))
  upper = np.triu(rng.random((n, n)) < p, k=1)
  edges = list(zip(*np.nonzero(upper)))
  if not edges:
    raise ValueError(f"erdos_renyi({n}, p={p}, seed={seed}) drew no edge; raise p.")
  return _random_graph(
    n, edges, f"erdos_renyi({n}, p={p}, seed={seed})", "raise p", allow_disconnected
  )


def random_geometric(
  num_workers: int, radius: float, seed: int = 0, *, allow_disconnected: bool = False
) -> Topology:
  """Random geometric graph: n points uniform in the unit square, linked within ``radius``.

  Drawn from ``numpy.random.default_rng(seed)``; a disconnected draw raises unless
  ``allow_disconnected=True``.
  """
  n = _checks.check_integer("num_workers", num_workers, 2)
  if not (isinstance(radius, numbers.Real) and radius > 0 and np.isfinite(radius)):
    raise ValueError(f"radius must be a positive finite number, got {radius!r}.")
  rng = np.random.default_rng(_checks.check_integer("seed", seed, 0))
  points = rng.random((n, 2))
  distance = np.linalg.norm(points[:, None] - points[None], axis=-1)
  edges = list(zip(*np.nonzero(np.triu(distance <= radius, k=1))))
  if not edges:
    raise ValueError(
      f"random_geometric({n}, radius={radius}, seed={seed}) drew "
      "no edge; raise the radius."
    )
  return _random_graph(
    n,
    edges,
    f"random_geometric({n}, radius={radius}, seed={seed})",
    "raise the radius",
    allow_disconnected,
  )


def _random_graph(n, edges, call, denser, allow_disconnected):
  topology = from_edges(n, edges, allow_disconnected=True)
  if not allow_disconnected and not topology.is_connected():
    raise ValueError(
      f"{call} drew a disconnected graph (components "
      f"{topology.components()}); {denser}, try another seed, or "
      "pass allow_disconnected=True."
    )
  return topology


def from_edges(
  num_workers: int, edges: Iterable, *, allow_disconnected: bool = False
) -> Topology:
  """Decomposes any simple undirected graph into matchings.

  Uses the Misra-Gries edge colouring, which needs at most ``max_degree + 1``
  matchings (Vizing's bound). Matchings are ordered by colour.

  Args:
    num_workers: number of workers ``n >= 2``.
    edges: undirected edges ``(i, j)``; each at most once (in either orientation).
    allow_disconnected: see `Topology`.

  Raises:
    ValueError: on self-loops, out-of-range nodes, repeated edges, or no edges.
  """
  n = _checks.check_integer("num_workers", num_workers, 2)
  clean: list[Edge] = []
  seen = set()
  for raw in edges:
    i, j = _as_edge(raw, "from_edges", n)
    key = (min(i, j), max(i, j))
    if key in seen:
      raise ValueError(
        f"from_edges: edge {key} is listed twice; list each undirected edge once."
      )
    seen.add(key)
    clean.append(key)
  if not clean:
    raise ValueError("from_edges: edges is empty; give at least one edge.")
  colour = _misra_gries(n, clean)
  num_colours = max(colour.values()) + 1
  matchings = [[e for e in clean if colour[e] == c] for c in range(num_colours)]
  return Topology(n, [m for m in matchings if m], allow_disconnected=allow_disconnected)


def _misra_gries(n: int, edges: list[Edge]) -> dict[Edge, int]:
  """Proper edge colouring with at most ``max_degree + 1`` colours (Misra-Gries 1992)."""
  adjacency: list[set[int]] = [set() for _ in range(n)]
  for i, j in edges:
    adjacency[i].add(j)
    adjacency[j].add(i)
  palette = range(max(len(a) for a in adjacency) + 1)
  # at[u][c] = the neighbor reached from u by the edge of colour c.
  at: list[dict[int, int]] = [{} for _ in range(n)]

  def colour_of(u, v):
    for c, w in at[u].items():
      if w == v:
        return c
    return None

  def free(u):
    return next(c for c in palette if c not in at[u])

  def set_colour(u, v, c):
    old = colour_of(u, v)
    if old is not None:
      del at[u][old], at[v][old]
    if c is not None:
      at[u][c], at[v][c] = v, u

  for u, v in edges:
    # Maximal fan of u starting at v.
    fan = [v]
    in_fan = {v}
    grown = True
    while grown:
      grown = False
      for w in adjacency[u]:
        c = colour_of(u, w)
        if w not in in_fan and c is not None and c not in at[fan[-1]]:
          fan.append(w)
          in_fan.add(w)
          grown = True
          break
    c = free(u)
    d = free(fan[-1])
    # Invert the cd-path that starts at u (it starts with a d edge, c is free on u).
    path = []
    node, want, other = u, d, c
    while want in at[node]:
      nxt = at[node][want]
      path.append((node, nxt, want))
      node, want, other = nxt, other, want
    for a, b, _ in path:
      set_colour(a, b, None)
    for a, b, col in path:
      set_colour(a, b, c if col == d else d)
    # The first fan vertex on which d is free ends a fan prefix that can be rotated.
    end = next(k for k, w in enumerate(fan) if d not in at[w])
    shifted = [colour_of(u, fan[k + 1]) for k in range(end)]
    for w in fan[: end + 1]:
      set_colour(u, w, None)
    for w, col in zip(fan, shifted):
      set_colour(u, w, col)
    set_colour(u, fan[end], d)
  return {e: colour_of(*e) for e in edges}


@functools.cache
def _paper_graph_data() -> dict:
  text = (
    importlib.resources.files("jax_aldsgd").joinpath("paper_graphs.json").read_text()
  )
  return json.loads(text)


def paper_graph(
  graph_id: int, variant: str = "pairs", *, allow_disconnected: bool = False
) -> Topology:
  """A predefined graph of the reference AL-DSGD code, exactly as given.

  Args:
    graph_id: the reference's ``graphid``; graphs ``g`` and ``g + 1`` ("pairs") or
      ``g, g + 1, g + 2`` ("triples") are the ones it rotates.
    variant: ``"pairs"`` (the 2-graph file) or ``"triples"`` (the 3-graph file).
    allow_disconnected: needed for the sparsest graphs, which are disconnected on
      their own (e.g. "pairs" graphs 8 and 9) and meant for a rotating schedule.

  Example:
    >>> import jax_aldsgd as ald
    >>> ald.topologies.paper_graph(0).degrees
    array([3, 5, 2, 4, 1, 2, 3, 4])
  """
  data = _paper_graph_data()
  if variant not in ("pairs", "triples"):
    raise ValueError(f"variant must be 'pairs' or 'triples', got {variant!r}.")
  graphs = {g["id"]: g for g in data[variant]}
  if (
    isinstance(graph_id, bool)
    or not isinstance(graph_id, numbers.Integral)
    or (graph_id not in graphs)
  ):
    raise ValueError(
      f"graph_id {graph_id!r} is not a {variant!r} paper graph; "
      f"valid ids are {sorted(graphs)}."
    )
  graph = graphs[graph_id]
  topology = Topology(graph["num_workers"], graph["matchings"], allow_disconnected=True)
  if not allow_disconnected and not topology.is_connected():
    raise ValueError(
      f"paper graph {graph_id} ({variant}) is disconnected (components "
      f"{topology.components()}); it is meant to be rotated with its partner "
      "graph. Pass allow_disconnected=True to use it."
    )
  return topology
