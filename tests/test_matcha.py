"""MATCHA's probabilities and neighbour weight against the reference values (section 6)."""

import numpy as np
import pytest

from jax_aldsgd import _matcha
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T

# budget: (reference p, alpha, rho), ALGORITHM.md section 6, graph 0.
GRAPH0 = {
    0.1: ([0.197, 0, 0.152, 0.152, 0], 0.562, 0.937),
    0.3: ([0.59, 0, 0.455, 0.455, 0], 0.515, 0.777),
    0.5: ([0.9837, 0, 0.7581, 0.7581, 0], 0.396428, 0.644),
    0.6: ([1, 0, 1, 1, 0], 0.366, 0.577),
    1.0: ([1, 1, 1, 1, 1], 2 / 7, 0.654),
}


def _lambda2(topology, p):
  """Second-smallest eigenvalue of sum_m p_m L_m, computed here from the matchings."""
  n = topology.num_workers
  laplacian = np.zeros((n, n))
  for weight, matching in zip(p, topology.matchings):
    for i, j in matching:
      laplacian[[i, j], [i, j]] += weight
      laplacian[i, j] -= weight
      laplacian[j, i] -= weight
  return np.linalg.eigvalsh(laplacian)[1]


@pytest.mark.parametrize("budget", sorted(GRAPH0))
def test_graph0_reference_values(budget):
  p_ref, alpha_ref, rho_ref = GRAPH0[budget]
  topology = T.paper_graph(0)
  schedule = S.matcha(topology, budget)
  p = np.array(schedule.probabilities)
  assert np.all((p >= 0) & (p <= 1))
  assert p.sum() <= budget * topology.num_matchings + 1e-6
  assert abs(_lambda2(topology, p) - _lambda2(topology, p_ref)) < 1e-3
  assert abs(schedule.neighbor_weight[0] - alpha_ref) < 1e-3
  assert abs(schedule.rho - rho_ref) < 1e-3


@pytest.mark.parametrize("graph_id,fixed_alpha,alpha_ref,rho_ref", [
    (10, 0.2389, 0.3796, 0.950),
    (11, 0.1687, 0.2534, 0.758),
    (12, 0.1194, 0.1845, 0.454),
    (13, 0.1931, 0.2831, 0.676),
])
def test_16_node_reference_values(graph_id, fixed_alpha, alpha_ref, rho_ref):
  topology = T.paper_graph(graph_id)
  assert abs(S.full(topology).neighbor_weight[0] - fixed_alpha) < 1e-3
  schedule = S.matcha(topology, 0.5)
  assert abs(schedule.neighbor_weight[0] - alpha_ref) < 1e-3
  assert abs(schedule.rho - rho_ref) < 1e-3


def test_probabilities_are_optimal_against_random_feasible_points():
  """No feasible p found by random search beats the solver's lambda_2."""
  rng = np.random.default_rng(0)
  topology = T.erdos_renyi(10, 0.5, seed=2)
  budget = 0.4
  p = _matcha.matcha_probabilities(topology, budget)
  best = _lambda2(topology, p)
  r = topology.num_matchings
  for _ in range(2000):
    q = rng.random(r)
    q = np.minimum(q * budget * r / q.sum(), 1.0)
    assert _lambda2(topology, q) <= best + 1e-7


def test_alpha_minimises_rho():
  topology = T.paper_graph(0)
  p = _matcha.matcha_probabilities(topology, 0.5)
  alpha, rho = _matcha.matcha_neighbor_weight(topology, p)
  for other in np.linspace(0.01, 1.0, 100):
    assert _matcha.matcha_rho(topology, p, other) >= rho - 1e-9
  # rho from its definition: E[W^T W] by enumerating all 2^R flag patterns.
  laplacians = topology.matching_laplacians()
  n = topology.num_workers
  expectation = np.zeros((n, n))
  for pattern in range(2 ** len(p)):
    flags = [(pattern >> m) & 1 for m in range(len(p))]
    prob = np.prod([p[m] if f else 1 - p[m] for m, f in enumerate(flags)])
    w = np.eye(n) - alpha * sum(f * l for f, l in zip(flags, laplacians))
    expectation += prob * w.T @ w
  assert abs(np.linalg.eigvalsh(expectation - np.ones((n, n)) / n)[-1] - rho) < 1e-9


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.5, float("nan")])
def test_budget_outside_unit_interval(budget):
  with pytest.raises(ValueError, match="budget must be in \\(0, 1\\]"):
    S.matcha(T.paper_graph(0), budget)
