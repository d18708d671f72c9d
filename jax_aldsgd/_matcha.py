"""MATCHA's activation probabilities and neighbor weight (host side, NumPy/SciPy).

Wang et al., "MATCHA: Speeding Up Decentralized SGD via Matching Decomposition
Sampling" (arXiv 1905.09435); docs/algorithm.md section 6.

With matching Laplacians ``L_m`` and activation probabilities ``p_m``:

* probabilities maximise the algebraic connectivity of the expected graph,
  ``lambda_2(sum_m p_m L_m)`` s.t. ``sum_m p_m <= budget * R``, ``0 <= p_m <= 1``
  (a concave program; solved here as a small SDP by an interior-point method);
* the neighbor weight ``alpha`` minimises
  ``rho(alpha) = lambda_max(E[W^T W] - 11^T / n)`` where ``W = I - alpha sum_m B_m L_m``
  with ``B_m ~ Bernoulli(p_m)``, so that, with ``Lbar = sum p_m L_m``,
  ``V = sum p_m (1 - p_m) L_m`` and ``L_m^2 = 2 L_m``,
  ``E[W^T W] = I - 2 alpha Lbar + alpha^2 (Lbar^2 + 2 V)`` (convex in alpha).

The reference code solves both with cvxpy; the optima agree (tests check section 6).
Both eigenvalue problems are taken on the subspace the base graph can mix (the
orthogonal complement of its Laplacian's kernel), which for a connected graph is
``1^perp``, so that ``lambda_2`` and ``rho`` are the usual ones; for a disconnected
graph (allowed only inside rotating schedules) the same formulas then act within
components instead of returning the degenerate values 0 and 1.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.sparse

from jax_aldsgd._topology import Topology


class _Edges(NamedTuple):
  """The graph's edges in matching order (a repeated matching keeps its copies).

  ``L_m = sum_{e in m} a_e a_e^T`` with ``a_e = e_head - e_tail``, so traces of
  products of matching Laplacians reduce to sums over edges of entries of the
  other factors; no ``(R, n, n)`` stack of Laplacians is ever built.
  """

  head: np.ndarray  # (E,) int
  tail: np.ndarray  # (E,) int
  owner: np.ndarray  # (E,) int: the matching each edge belongs to
  num_workers: int
  num_matchings: int
  null_projector: np.ndarray  # (n, n): onto ker L, spanned by component indicators
  null_dim: int  # number of connected components

  def laplacian(self, weights) -> np.ndarray:
    """``sum_m w_m L_m`` as a dense ``(n, n)`` array."""
    n = self.num_workers
    w = np.asarray(weights, float)[self.owner]
    out = np.zeros((n, n))
    np.add.at(out, (self.head, self.tail), -w)
    np.add.at(out, (self.tail, self.head), -w)
    np.add.at(out, (self.head, self.head), w)
    np.add.at(out, (self.tail, self.tail), w)
    return out


def _edges(topology: Topology) -> _Edges:
  pairs = [
    (i, j, m) for m, matching in enumerate(topology.matchings) for i, j in matching
  ]
  head, tail, owner = (np.array(column) for column in zip(*pairs))
  n = topology.num_workers
  null_projector = np.zeros((n, n))
  components = topology.components()
  for component in components:
    null_projector[np.ix_(component, component)] = 1.0 / len(component)
  return _Edges(
    head, tail, owner, n, topology.num_matchings, null_projector, len(components)
  )


def _lowest_mixing_eigenvalue(edges: _Edges, matrix: np.ndarray) -> float:
  """Smallest eigenvalue of a Laplacian-like ``matrix`` on ``range(L)``.

  ``matrix`` vanishes on ``ker L`` (dimension ``null_dim``) and is positive
  semidefinite on ``range(L)``, so its sorted spectrum starts with ``null_dim``
  zeros (up to rounding) followed by the eigenvalues on ``range(L)``.
  """
  return float(
    scipy.linalg.eigvalsh(matrix, subset_by_index=[edges.null_dim, edges.null_dim])[0]
  )


def algebraic_connectivity(topology: Topology, probabilities) -> float:
  """``lambda_2`` of the expected Laplacian ``sum_m p_m L_m`` (on the mixing subspace)."""
  edges = _edges(topology)
  return _lowest_mixing_eigenvalue(edges, edges.laplacian(probabilities))


def matcha_probabilities(topology: Topology, budget: float) -> np.ndarray:
  """Activation probabilities maximising ``lambda_2(sum_m p_m L_m)`` under the budget.

  Solved as the semidefinite program ``max t  s.t.  sum_m p_m L_m - t I >= 0`` (on
  the mixing subspace ``range(L)``), ``sum_m p_m <= budget * R``,
  ``0 <= p_m <= 1``, by a log-barrier interior-point method. Like the
  reference's cvxpy solver, it returns the analytic centre of the optimal set
  when the optimum is not unique, so repeated matchings share their probability
  equally (which matters for alpha: ``V`` depends on how ``p`` is split,
  ``Lbar`` does not).

  The slack is kept in the full space as ``X = sum_m p_m L_m - t P + P_0``
  (``P_0`` the projector onto ``ker L``, ``P = I - P_0``): on ``range(L)`` it is
  the SDP's slack, on ``ker L`` the identity, so ``log det X`` is the SDP's
  barrier and ``X^{-1} = S^{-1} + P_0``. With ``a_e = e_i - e_j`` orthogonal to
  ``ker L``, every derivative is a sum over edges of ``X^{-1}`` entries:
  ``tr(S^{-1} L_m) = sum_{e in m} a_e^T X^{-1} a_e`` and
  ``tr(S^{-1} L_m S^{-1} L_k) = sum_{e in m, f in k} (a_e^T X^{-1} a_f)^2``,
  so a Newton step costs one ``n x n`` inverse plus ``O(E^2)`` instead of
  ``O(R n^3)`` dense products (the edge sums as sparse-dense products). About
  100-140 Newton steps in all: a random geometric graph of 1024 workers (mean
  degree 12, 24 matchings) takes about 20 CPU seconds
  (experiments/results/scale.md).

  Args:
    topology: the base graph and its matchings.
    budget: communication budget ``C_b`` in (0, 1]: the expected fraction of
      matchings active per step.

  Returns:
    ``(num_matchings,)`` float64 probabilities in [0, 1].
  """
  num_matchings = topology.num_matchings
  if budget >= 1.0:  # lambda_2 is monotone in every p_m.
    return np.ones(num_matchings)
  edges = _edges(topology)
  n = edges.num_workers
  capacity = budget * num_matchings
  range_projector = np.eye(n) - edges.null_projector
  head, tail, owner = edges.head, edges.tail, edges.owner
  # Edges come in matching order: matching m owns edges starts[m]:starts[m + 1].
  starts = np.searchsorted(owner, np.arange(num_matchings + 1))
  every_edge = np.arange(len(head))
  # Row e of the (E, n) incidence is a_e^T; its row blocks from each matching on.
  incidence = scipy.sparse.csr_matrix(
    (
      np.repeat([1.0, -1.0], len(head)),
      (np.tile(every_edge, 2), np.concatenate([head, tail])),
    ),
    shape=(len(head), n),
  )
  from_matching = [incidence[lo:] for lo in starts[:-1]]

  def slack(p, t):
    return edges.laplacian(p) - t * range_projector + edges.null_projector

  last = {}  # the latest point's factor: the line search's accepted trial

  def barrier_terms(p, t):
    """Cholesky factor of the slack and the budget's slack; None when infeasible."""
    key = (p.tobytes(), float(t))
    if key in last:
      return last[key]
    free = capacity - p.sum()
    if p.min() <= 0 or p.max() >= 1 or free <= 0:
      terms = None
    else:
      try:
        terms = np.linalg.cholesky(slack(p, t)), free
      except np.linalg.LinAlgError:
        terms = None
    last.clear()
    last[key] = terms
    return terms

  def objective(z, scale):
    p, t = z[:-1], z[-1]
    terms = barrier_terms(p, t)
    if terms is None:
      return np.inf
    chol, free = terms
    return (
      -scale * t
      - 2.0 * np.log(np.diag(chol)).sum()
      - np.log(p).sum()
      - np.log1p(-p).sum()
      - np.log(free)
    )

  def newton_direction(z, scale):
    p, t = z[:-1], z[-1]
    chol, free = barrier_terms(p, t)
    lower, info = scipy.linalg.lapack.dpotri(chol, lower=1)
    if info:
      raise np.linalg.LinAlgError(f"dpotri failed with info={info}.")
    inverse = np.tril(lower) + np.tril(lower, -1).T
    # Constraint "matrices": d slack / d p_m = L_m, d slack / d t = -P.
    rows = incidence @ inverse  # (E, n): row e is (X^{-1} a_e)^T
    edge_trace = rows[every_edge, head] - rows[every_edge, tail]  # a_e^T X^{-1} a_e
    gradient = np.zeros(num_matchings + 1)
    hessian = np.zeros((num_matchings + 1, num_matchings + 1))
    gradient[:-1] = -np.add.reduceat(edge_trace, starts[:-1])
    # tr(S^{-1}) and tr(S^{-2}): X^{-1} is S^{-1} plus the identity on ker L.
    gradient[-1] = np.trace(inverse) - edges.null_dim
    for m in range(num_matchings):  # upper triangle, k >= m
      lo, hi = starts[m], starts[m + 1]
      # cross[f, e] = a_f^T X^{-1} a_e for e in m and f >= lo.
      cross = from_matching[m] @ np.ascontiguousarray(rows[lo:hi].T)
      squares = np.einsum("fe,fe->f", cross, cross)  # sum_{e in m} (...)^2
      hessian[m, m:-1] = np.add.reduceat(squares, starts[m:-1] - lo)
    upper = np.triu(hessian[:-1, :-1], 1)
    hessian[:-1, :-1] += upper.T
    # tr(S^{-1} L_m S^{-1} (-P)) = -sum_{e in m} |X^{-1} a_e|^2.
    hessian[:-1, -1] = hessian[-1, :-1] = -np.add.reduceat(
      np.einsum("en,en->e", rows, rows), starts[:-1]
    )
    hessian[-1, -1] = np.einsum("ij,ij->", inverse, inverse) - edges.null_dim
    gradient[:-1] += -1.0 / p + 1.0 / (1.0 - p) + 1.0 / free
    gradient[-1] -= scale
    hessian[:-1, :-1] += np.diag(1.0 / p**2 + 1.0 / (1.0 - p) ** 2) + 1.0 / free**2
    # Near the bounds the barrier's curvature spans many orders of magnitude;
    # a diagonal (Jacobi) scaling keeps the Newton system well conditioned.
    scaling = 1.0 / np.sqrt(np.diag(hessian))
    step = (
      -scaling
      * np.linalg.lstsq(
        hessian * np.outer(scaling, scaling), gradient * scaling, rcond=None
      )[0]
    )
    return step, -gradient @ step

  p = np.full(num_matchings, 0.9 * budget)
  z = np.append(p, _lowest_mixing_eigenvalue(edges, edges.laplacian(p)) - 1.0)
  num_barriers = (n - edges.null_dim) + 2 * num_matchings + 1
  # The last centre is at the largest 8^k whose duality gap num_barriers / 8^k
  # exceeds 1e-10 (the former schedule's); getting there by factors of 20
  # takes fewer stages and ends at the same point of the central path.
  final = 1.0
  while num_barriers / (8.0 * final) > 1e-10:
    final *= 8.0
  scale = 1.0
  while True:
    previous = np.inf
    for _ in range(200):
      step, decrement = newton_direction(z, scale)
      # Inside the region of quadratic convergence each full step at least
      # quarters the decrement (the barrier is self-concordant); when it stops
      # doing so the derivatives' rounding (S nearly singular late in the path)
      # has been reached, and the centre with it.
      if decrement / 2.0 <= 1e-12 or decrement > previous / 4.0:
        break
      if decrement < 1e-3 and objective(z + step, scale) < np.inf:
        # A full step stays in the Dikin ellipsoid, hence feasible; no line
        # search, whose test cannot resolve decreases this small once the
        # objective (~ scale * t) is large.
        z, previous = z + step, decrement
        continue
      # After the barrier parameter grows the Newton step overshoots by far;
      # 1 / (1 + lambda) is always feasible and decreasing (Nesterov and
      # Nemirovski's damped step), so backtracking starts 16 times above it.
      size = min(1.0, 16.0 / (1.0 + np.sqrt(decrement)))
      current = objective(z, scale)
      while objective(z + size * step, scale) > current - 0.25 * size * decrement:
        size *= 0.5
        if size < 1e-14:
          break
      if size < 1e-14:
        break
      z = z + size * step
    if scale >= final:
      break
    scale = min(20.0 * scale, final)
  # The barrier keeps p strictly inside (0, 1); snap what ends within 1e-7 of a
  # bound onto it, so "never" and "always" matchings read as exactly 0 and 1.
  p = z[:-1]
  return np.where(p < 1e-7, 0.0, np.where(p > 1.0 - 1e-7, 1.0, p))


def _rho_function(topology: Topology, probabilities):
  edges = _edges(topology)
  p = np.asarray(probabilities, float)
  mean = edges.laplacian(p)
  variance = edges.laplacian(p * (1 - p))
  # E[W^T W] maps range(L) to itself and is the identity on ker L (W fixes the
  # component indicators; the projection 11^T/n and its per-component analogues
  # take them out of rho). Shifting ker L down by the identity leaves
  # I - P_0 - 2 alpha Lbar + alpha^2 (Lbar^2 + 2 V): zero on ker L and E[W^T W]
  # (positive semidefinite) on range(L), so its top eigenvalue is rho.
  shifted_identity = np.eye(len(mean)) - edges.null_projector
  quadratic = mean @ mean + 2.0 * variance
  top = [len(mean) - 1, len(mean) - 1]

  def rho(alpha):
    return float(
      scipy.linalg.eigvalsh(
        shifted_identity - 2.0 * alpha * mean + alpha**2 * quadratic,
        subset_by_index=top,
      )[0]
    )

  return rho, mean


def matcha_rho(topology: Topology, probabilities, alpha: float) -> float:
  """MATCHA's ``rho(alpha) = lambda_max(E[W^T W] - 11^T / n)``."""
  return _rho_function(topology, probabilities)[0](alpha)


def matcha_neighbor_weight(topology: Topology, probabilities) -> tuple[float, float]:
  """Neighbor weight ``alpha`` minimising ``rho``, and that ``rho``.

  Args:
    topology: the base graph and its matchings.
    probabilities: ``(num_matchings,)`` activation probabilities.

  Returns:
    ``(alpha, rho)``.
  """
  rho, mean = _rho_function(topology, probabilities)
  # rho(0) = 1 and rho is convex, so the minimiser lies before rho climbs back to 1.
  upper = 1.0 / max(
    scipy.linalg.eigvalsh(mean, subset_by_index=[len(mean) - 1, len(mean) - 1])[0],
    1e-12,
  )
  while rho(upper) < 1.0:
    upper *= 2.0
  result = scipy.optimize.minimize_scalar(
    rho, bounds=(0.0, upper), method="bounded", options={"xatol": 1e-12}
  )
  return float(result.x), float(result.fun)
