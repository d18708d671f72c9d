"""Topology validation, properties, constructors, edge colouring, paper graphs."""

import dataclasses
import json
import pathlib

import numpy as np
import pytest

import jax_aldsgd as ald
from jax_aldsgd import topologies as T

PAPER_GRAPHS = pathlib.Path(__file__).parents[2] / "jax_aldsgd" / "paper_graphs.json"


def _is_matching(matching):
  nodes = [v for edge in matching for v in edge]
  return len(nodes) == len(set(nodes))


def test_properties_of_a_small_graph():
  t = ald.Topology(4, [[(0, 1), (2, 3)], [(1, 2)]])
  assert t.num_workers == 4 and t.num_matchings == 2
  assert t.edges == ((0, 1), (1, 2), (2, 3))
  np.testing.assert_array_equal(t.degrees, [1, 2, 2, 1])
  np.testing.assert_array_equal(t.partners, [[1, 0, 3, 2], [-1, 2, 1, -1]])
  path_laplacian = np.array(
    [[1, -1, 0, 0], [-1, 2, -1, 0], [0, -1, 2, -1], [0, 0, -1, 1]]
  )
  np.testing.assert_array_equal(t.laplacian(), path_laplacian)
  assert t.is_connected()
  assert hash(t) == hash(ald.Topology(4, [[[0, 1], [2, 3]], [[1, 2]]]))
  assert t == ald.Topology(4, [[[0, 1], [2, 3]], [[1, 2]]])
  with pytest.raises(dataclasses.FrozenInstanceError):
    t.num_workers = 5  # frozen


@pytest.mark.parametrize(
  "num_workers,matchings,message",
  [
    (1, [[(0, 1)]], "num_workers must be an integer >= 2"),
    (4, [[(0, 4)]], "node 4 in edge \\(0, 4\\) is out of range"),
    (4, [[(-1, 2)]], "out of range"),
    (4, [[(1, 1)]], "self-loop"),
    (4, [[(0, 1), (1, 2)]], "node 1 is in both \\(0, 1\\) and \\(1, 2\\)"),
    (4, [[(0, 1), (1, 0)]], "lists edge \\(1, 0\\) twice"),
    (4, [[(0, 1)], []], "matching 1 is empty"),
    (4, [], "at least one matching"),
    (4, [[(0, 1, 2)]], "pair"),
    (4, [[(0, 1)], [(2, 3)]], "disconnected"),
  ],
)
def test_invalid_topologies(num_workers, matchings, message):
  with pytest.raises(ValueError, match=message):
    ald.Topology(num_workers, matchings)


def test_bad_types():
  with pytest.raises(TypeError, match="integers"):
    ald.Topology(3, [[(0, 1.5)]])
  with pytest.raises(TypeError, match="num_workers must be an integer"):
    ald.Topology(2.0, [[(0, 1)]])


def test_disconnected_needs_opt_in():
  t = ald.Topology(4, [[(0, 1)], [(2, 3)]], allow_disconnected=True)
  assert not t.is_connected()
  assert t.components() == [[0, 1], [2, 3]]


@pytest.mark.parametrize("n", [2, 3, 4, 7, 8, 11])
def test_ring_complete_exponential(n):
  ring = T.ring(n)
  assert len(ring.edges) == (1 if n == 2 else n)
  assert set(ring.edges) == {tuple(sorted((i, (i + 1) % n))) for i in range(n)}
  assert ring.num_matchings == (1 if n == 2 else 2 + n % 2)
  complete = T.complete(n)
  assert len(complete.edges) == n * (n - 1) // 2
  assert complete.num_matchings == (n - 1 if n % 2 == 0 else n)
  expo = T.exponential(n)
  hops = [2**k for k in range(n.bit_length()) if 2**k < n]
  want = {
    tuple(sorted((i, (i + h) % n))) for i in range(n) for h in hops if (i + h) % n != i
  }
  assert set(expo.edges) == want
  for t in (ring, complete, expo):
    assert all(_is_matching(m) for m in t.matchings)


def test_torus():
  t = T.torus(3, 4)
  assert t.num_workers == 12 and len(t.edges) == 24
  np.testing.assert_array_equal(t.degrees, np.full(12, 4))
  assert (0, 3) in t.edges and (0, 8) in t.edges  # wrap-around in both dimensions
  assert T.torus(4, 4).num_matchings == 4
  assert T.torus(2, 2).edges == ((0, 1), (0, 2), (1, 3), (2, 3))
  with pytest.raises(ValueError, match="at least 2"):
    T.torus(1, 1)


@pytest.mark.parametrize("seed", range(40))
def test_from_edges_is_a_proper_colouring_with_at_most_delta_plus_one(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(2, 30))
  edges = [
    (i, j)
    for i in range(n)
    for j in range(i + 1, n)
    if rng.random() < rng.uniform(0.05, 0.9)
  ]
  if not edges:
    edges = [(0, 1)]
  t = T.from_edges(n, edges, allow_disconnected=True)
  assert sorted(e for m in t.matchings for e in m) == sorted(edges)
  assert all(_is_matching(m) for m in t.matchings)
  max_degree = np.bincount(np.ravel(edges), minlength=n).max()
  assert t.num_matchings <= max_degree + 1


def test_from_edges_rejects_bad_edges():
  with pytest.raises(ValueError, match="listed twice"):
    T.from_edges(3, [(0, 1), (1, 0)])
  with pytest.raises(ValueError, match="self-loop"):
    T.from_edges(3, [(0, 0)])
  with pytest.raises(ValueError, match="empty"):
    T.from_edges(3, [])


def test_random_graphs_are_seeded_and_checked():
  assert T.erdos_renyi(12, 0.4, seed=3) == T.erdos_renyi(12, 0.4, seed=3)
  assert T.random_geometric(12, 0.5, seed=1) == T.random_geometric(12, 0.5, seed=1)
  with pytest.raises(ValueError, match="p must be a probability"):
    T.erdos_renyi(5, 1.5)
  with pytest.raises(ValueError, match="drew a disconnected graph"):
    T.erdos_renyi(30, 0.02, seed=0)
  with pytest.raises(ValueError, match="radius must be"):
    T.random_geometric(5, -1.0)
  sparse = T.random_geometric(30, 0.15, seed=0, allow_disconnected=True)
  assert not sparse.is_connected()


@pytest.mark.parametrize("variant", ["pairs", "triples"])
def test_paper_graphs_exactly_as_given(variant):
  data = json.loads(PAPER_GRAPHS.read_text())[variant]
  for graph in data:
    t = T.paper_graph(graph["id"], variant, allow_disconnected=True)
    assert t.num_workers == graph["num_workers"]
    assert [[list(e) for e in m] for m in t.matchings] == graph["matchings"]


def test_paper_graph_degrees_and_union():
  g0, g1 = T.paper_graph(0), T.paper_graph(1)
  np.testing.assert_array_equal(g0.degrees, [3, 5, 2, 4, 1, 2, 3, 4])
  np.testing.assert_array_equal(g1.degrees, [4, 1, 4, 3, 5, 3, 2, 2])
  union = T.from_edges(8, sorted(set(g0.edges) | set(g1.edges)))
  assert len(union.edges) == 19
  np.testing.assert_array_equal(union.degrees, [5, 5, 5, 5, 5, 4, 4, 5])
  np.testing.assert_allclose(
    np.linalg.eigvalsh(g0.laplacian()),
    [0, 0.670, 1.614, 2.411, 3.000, 4.589, 5.386, 6.330],
    atol=1e-3,
  )
  g10 = T.paper_graph(10)
  assert g10.matchings[1] == g10.matchings[2]  # the repeated matching is kept
  assert g10.degrees.sum() == 2 * sum(len(m) for m in g10.matchings)


def test_paper_graph_errors():
  with pytest.raises(ValueError, match="disconnected"):
    T.paper_graph(8)
  with pytest.raises(ValueError, match="valid ids are"):
    T.paper_graph(99)
  with pytest.raises(ValueError, match="variant must be"):
    T.paper_graph(0, "quads")
