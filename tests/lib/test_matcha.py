"""MATCHA's probabilities and neighbor weight against the reference values (section 6)."""

import math

import numpy as np
import pytest
import scipy.optimize

from jax_aldsgd import _matcha
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T

# budget: (reference p, alpha, rho), docs/algorithm.md section 6, graph 0.
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


@pytest.mark.parametrize(
  "graph_id,fixed_alpha,alpha_ref,rho_ref",
  [
    (10, 0.2389, 0.3796, 0.950),
    (11, 0.1687, 0.2534, 0.758),
    (12, 0.1194, 0.1845, 0.454),
    (13, 0.1931, 0.2831, 0.676),
  ],
)
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


# ----------------------------------------------------------------------------
# The edge-sum solver against the dense one it replaced (kept here, unchanged).


def _dense_basis(laplacian):
  values, vectors = np.linalg.eigh(laplacian)
  return vectors[:, values > 1e-9 * max(1.0, values[-1])]


def _dense_probabilities(topology, budget):
  """The former solver: the same log barrier over the projected dense SDP."""
  laplacians = topology.matching_laplacians()
  num_matchings = len(laplacians)
  if budget >= 1.0:
    return np.ones(num_matchings)
  basis = _dense_basis(laplacians.sum(0))
  projected = np.einsum("ia,mij,jb->mab", basis, laplacians, basis)
  capacity = budget * num_matchings
  dim = projected.shape[1]

  def barrier_terms(p, t):
    slack = np.einsum("m,mab->ab", p, projected) - t * np.eye(dim)
    free = capacity - p.sum()
    if p.min() <= 0 or p.max() >= 1 or free <= 0:
      return None
    try:
      chol = np.linalg.cholesky(slack)
    except np.linalg.LinAlgError:
      return None
    return chol, free

  def objective(z, scale):
    terms = barrier_terms(z[:-1], z[-1])
    if terms is None:
      return np.inf
    chol, free = terms
    p = z[:-1]
    return (
      -scale * z[-1]
      - 2.0 * np.log(np.diag(chol)).sum()
      - np.log(p).sum()
      - np.log1p(-p).sum()
      - np.log(free)
    )

  def newton_direction(z, scale):
    p = z[:-1]
    chol, free = barrier_terms(p, z[-1])
    inverse = np.linalg.inv(chol @ chol.T)
    blocks = np.concatenate([projected, -np.eye(dim)[None]], axis=0)
    weighted = np.matmul(inverse, blocks)
    gradient = -np.trace(weighted, axis1=1, axis2=2)
    flat = weighted.reshape(len(blocks), -1)
    hessian = flat @ weighted.transpose(0, 2, 1).reshape(len(blocks), -1).T
    gradient[:-1] += -1.0 / p + 1.0 / (1.0 - p) + 1.0 / free
    gradient[-1] -= scale
    hessian[:-1, :-1] += np.diag(1.0 / p**2 + 1.0 / (1.0 - p) ** 2) + 1.0 / free**2
    scaling = 1.0 / np.sqrt(np.diag(hessian))
    step = (
      -scaling
      * np.linalg.lstsq(
        hessian * np.outer(scaling, scaling), gradient * scaling, rcond=None
      )[0]
    )
    return step, -gradient @ step

  p = np.full(num_matchings, 0.9 * budget)
  z = np.append(p, np.linalg.eigvalsh(np.einsum("m,mab->ab", p, projected))[0] - 1)
  num_barriers = dim + 2 * num_matchings + 1
  scale = 1.0
  while num_barriers / scale > 1e-10:
    for _ in range(200):
      step, decrement = newton_direction(z, scale)
      if decrement / 2.0 <= 1e-12:
        break
      size, current = 1.0, objective(z, scale)
      while objective(z + size * step, scale) > current - 0.25 * size * decrement:
        size *= 0.5
        if size < 1e-14:
          break
      z = z + size * step
    scale *= 8.0
  p = z[:-1]
  return np.where(p < 1e-7, 0.0, np.where(p > 1.0 - 1e-7, 1.0, p))


def _dense_neighbor_weight(topology, p):
  laplacians = topology.matching_laplacians()
  basis = _dense_basis(laplacians.sum(0))
  mean = basis.T @ np.einsum("m,mij->ij", p, laplacians) @ basis
  variance = basis.T @ np.einsum("m,mij->ij", p * (1 - p), laplacians) @ basis
  quadratic = mean @ mean + 2.0 * variance

  def rho(alpha):
    return np.linalg.eigvalsh(
      np.eye(len(mean)) - 2 * alpha * mean + alpha**2 * quadratic
    )[-1]

  upper = 1.0 / max(np.linalg.eigvalsh(mean)[-1], 1e-12)
  while rho(upper) < 1.0:
    upper *= 2.0
  result = scipy.optimize.minimize_scalar(
    rho, bounds=(0.0, upper), method="bounded", options={"xatol": 1e-12}
  )
  return result.x, result.fun, np.linalg.eigvalsh(mean)[0]


@pytest.mark.parametrize(
  "topology,budget",
  [
    (T.paper_graph(0), 0.3),
    (T.paper_graph(10), 0.5),  # a repeated matching: p must split equally
    (T.paper_graph(8, allow_disconnected=True), 0.5),  # lambda_2 per component
    (T.random_geometric(48, 1.15 * math.sqrt(10 / (math.pi * 48)), seed=0), 0.5),
  ],
  ids=["graph0", "graph10", "graph8_disconnected", "geometric48"],
)
def test_edge_sum_solver_matches_the_dense_one(topology, budget):
  p = _matcha.matcha_probabilities(topology, budget)
  alpha, rho = _matcha.matcha_neighbor_weight(topology, p)
  p_ref = _dense_probabilities(topology, budget)
  alpha_ref, rho_ref, lambda2_ref = _dense_neighbor_weight(topology, p_ref)
  lambda2 = _matcha.algebraic_connectivity(topology, p)
  assert abs(lambda2 - lambda2_ref) <= 1e-6 * lambda2_ref
  assert abs(alpha - alpha_ref) <= 1e-6
  assert abs(rho - rho_ref) <= 1e-6
  np.testing.assert_allclose(p, p_ref, atol=1e-6)
