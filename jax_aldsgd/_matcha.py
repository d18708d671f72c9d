"""MATCHA's activation probabilities and neighbour weight (host side, NumPy/SciPy).

Wang et al., "MATCHA: Speeding Up Decentralized SGD via Matching Decomposition
Sampling" (arXiv 1905.09435); ALGORITHM.md section 6.

With matching Laplacians ``L_m`` and activation probabilities ``p_m``:

* probabilities maximise the algebraic connectivity of the expected graph,
  ``lambda_2(sum_m p_m L_m)`` s.t. ``sum_m p_m <= budget * R``, ``0 <= p_m <= 1``
  (a concave program; solved here as a small SDP by an interior-point method);
* the neighbour weight ``alpha`` minimises
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

import numpy as np
import scipy.optimize

from jax_aldsgd._topology import Topology


def _mixing_basis(laplacian: np.ndarray) -> np.ndarray:
  """Orthonormal basis of range(L): the directions the graph can average."""
  values, vectors = np.linalg.eigh(laplacian)
  return vectors[:, values > 1e-9 * max(1.0, values[-1])]


def algebraic_connectivity(topology: Topology, probabilities) -> float:
  """``lambda_2`` of the expected Laplacian ``sum_m p_m L_m`` (on the mixing subspace)."""
  laplacians = topology.matching_laplacians()
  basis = _mixing_basis(laplacians.sum(0))
  expected = np.einsum("m,mij->ij", np.asarray(probabilities, float), laplacians)
  return float(np.linalg.eigvalsh(basis.T @ expected @ basis)[0])


def matcha_probabilities(topology: Topology, budget: float) -> np.ndarray:
  """Activation probabilities maximising ``lambda_2(sum_m p_m L_m)`` under the budget.

  Solved as the semidefinite program ``max t  s.t.  sum_m p_m L_m - t I >= 0`` (on
  the mixing subspace), ``sum_m p_m <= budget * R``, ``0 <= p_m <= 1``, by a
  log-barrier interior-point method. Like the reference's cvxpy solver, it returns
  the analytic centre of the optimal set when the optimum is not unique, so
  repeated matchings share their probability equally (which matters for alpha:
  ``V`` depends on how ``p`` is split, ``Lbar`` does not).

  Args:
    topology: the base graph and its matchings.
    budget: communication budget ``C_b`` in (0, 1]: the expected fraction of
      matchings active per step.

  Returns:
    ``(num_matchings,)`` float64 probabilities in [0, 1].
  """
  laplacians = topology.matching_laplacians()
  num_matchings = len(laplacians)
  if budget >= 1.0:  # lambda_2 is monotone in every p_m.
    return np.ones(num_matchings)
  basis = _mixing_basis(laplacians.sum(0))
  projected = np.einsum("ia,mij,jb->mab", basis, laplacians, basis)
  capacity = budget * num_matchings
  dim = projected.shape[1]

  def barrier_terms(p, t):
    """Slack matrix and slacks; None when (p, t) is not strictly feasible."""
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
    p, t = z[:-1], z[-1]
    terms = barrier_terms(p, t)
    if terms is None:
      return np.inf
    chol, free = terms
    return (-scale * t - 2.0 * np.log(np.diag(chol)).sum() - np.log(p).sum()
            - np.log1p(-p).sum() - np.log(free))

  def newton_direction(z, scale):
    p, t = z[:-1], z[-1]
    chol, free = barrier_terms(p, t)
    inverse = np.linalg.inv(chol @ chol.T)
    # Blocks of the constraint "matrices": d slack / d p_m = L_m, d slack / d t = -I.
    blocks = np.concatenate([projected, -np.eye(dim)[None]], axis=0)
    weighted = np.matmul(inverse, blocks)  # (k, a, c)
    gradient = -np.trace(weighted, axis1=1, axis2=2)
    flat = weighted.reshape(len(blocks), -1)
    hessian = flat @ weighted.transpose(0, 2, 1).reshape(len(blocks), -1).T
    gradient[:-1] += -1.0 / p + 1.0 / (1.0 - p) + 1.0 / free
    gradient[-1] -= scale
    hessian[:-1, :-1] += (np.diag(1.0 / p**2 + 1.0 / (1.0 - p)**2)
                          + 1.0 / free**2)
    # Near the bounds the barrier's curvature spans many orders of magnitude;
    # a diagonal (Jacobi) scaling keeps the Newton system well conditioned.
    scaling = 1.0 / np.sqrt(np.diag(hessian))
    step = -scaling * np.linalg.lstsq(hessian * np.outer(scaling, scaling),
                                      gradient * scaling, rcond=None)[0]
    return step, -gradient @ step

  p = np.full(num_matchings, 0.9 * budget)
  z = np.append(p, np.linalg.eigvalsh(np.einsum("m,mab->ab", p, projected))[0] - 1.0)
  num_barriers = dim + 2 * num_matchings + 1
  scale = 1.0
  while num_barriers / scale > 1e-10:  # duality gap of the central path
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
  # The barrier keeps p strictly inside (0, 1); snap what ends within 1e-7 of a
  # bound onto it, so "never" and "always" matchings read as exactly 0 and 1.
  p = z[:-1]
  return np.where(p < 1e-7, 0.0, np.where(p > 1.0 - 1e-7, 1.0, p))


def _rho_function(topology: Topology, probabilities):
  laplacians = topology.matching_laplacians()
  p = np.asarray(probabilities, float)
  basis = _mixing_basis(laplacians.sum(0))
  mean = basis.T @ np.einsum("m,mij->ij", p, laplacians) @ basis
  variance = basis.T @ np.einsum("m,mij->ij", p * (1 - p), laplacians) @ basis
  # On range(L) the projection 11^T/n vanishes (for connected graphs; for
  # disconnected ones so do the other component indicators), so rho is the top
  # eigenvalue of E[W^T W] there.
  identity = np.eye(len(mean))
  quadratic = mean @ mean + 2.0 * variance

  def rho(alpha):
    return float(np.linalg.eigvalsh(
        identity - 2.0 * alpha * mean + alpha**2 * quadratic)[-1])

  return rho, mean


def matcha_rho(topology: Topology, probabilities, alpha: float) -> float:
  """MATCHA's ``rho(alpha) = lambda_max(E[W^T W] - 11^T / n)``."""
  return _rho_function(topology, probabilities)[0](alpha)


def matcha_neighbor_weight(topology: Topology,
                           probabilities) -> tuple[float, float]:
  """Neighbour weight ``alpha`` minimising ``rho``, and that ``rho``.

  Args:
    topology: the base graph and its matchings.
    probabilities: ``(num_matchings,)`` activation probabilities.

  Returns:
    ``(alpha, rho)``.
  """
  rho, mean = _rho_function(topology, probabilities)
  # rho(0) = 1 and rho is convex, so the minimiser lies before rho climbs back to 1.
  upper = 1.0 / max(np.linalg.eigvalsh(mean)[-1], 1e-12)
  while rho(upper) < 1.0:
    upper *= 2.0
  result = scipy.optimize.minimize_scalar(rho, bounds=(0.0, upper),
                                          method="bounded",
                                          options={"xatol": 1e-12})
  return float(result.x), float(result.fun)
