"""A plain NumPy reference of ALGORITHM.md, on stacked ``(n, d)`` arrays.

Written from the spec, not from the library: dense mixing matrices, explicit
neighbour lists, ``np.argmin``/``np.argmax`` (first index on ties), and the
averaging/corrective-force form of section 2 step 6 (not the closed form the
library computes). Inputs are plain lists of matchings, active flags and weights.
"""

from __future__ import annotations

import numpy as np


def neighbour_lists(num_workers, matchings, active):
  """N_i: partners of i in the active matchings, ordered by matching index."""
  neighbours = [[] for _ in range(num_workers)]
  for matching, on in zip(matchings, active):
    if on:
      for i, j in matching:
        neighbours[i].append(j)
        neighbours[j].append(i)
  return neighbours


def mixing_matrix(num_workers, matchings, active, weights):
  """W = I - sum_{active m} alpha_m L_m."""
  w = np.eye(num_workers)
  for matching, on, alpha in zip(matchings, active, weights):
    if on:
      for i, j in matching:
        w[i, i] -= alpha
        w[j, j] -= alpha
        w[i, j] += alpha
        w[j, i] += alpha
  return w


def gossip(x_hat, matchings, active, weights, skip=None):
  """Step 5: v = W x_hat; workers in ``skip`` are left out of others' averages."""
  if skip is None or not np.any(skip):
    return mixing_matrix(len(x_hat), matchings, active, weights) @ x_hat
  v = np.array(x_hat, dtype=float)
  for matching, on, alpha in zip(matchings, active, weights):
    if on:
      for i, j in matching:
        for a, b in ((i, j), (j, i)):
          if not skip[b]:
            v[a] += alpha * (x_hat[b] - x_hat[a])
  return v


def _first_best(candidates, key, eligible):
  """First candidate with the best key among eligible ones (self if none is)."""
  chosen = [j for j in candidates if eligible[j]]
  if not chosen:
    return candidates[0]
  return chosen[int(np.argmin([key(j) for j in chosen]))]


def adjacent_leader(x_hat, losses, matchings, active, weights, *, c1, c2, p1, p2,
                    pull=True, healthy=None, skip_unhealthy=False):
  """Steps 5-6 of one AL-DSGD iteration for all workers.

  ``healthy`` (default: all) marks workers whose loss and parameters are finite;
  the others are never chosen as leader or max-degree node, and with
  ``skip_unhealthy`` they are also left out of their neighbours' gossip.
  """
  n = len(x_hat)
  healthy = np.ones(n, bool) if healthy is None else np.asarray(healthy)
  v = gossip(x_hat, matchings, active, weights,
             skip=~healthy if skip_unhealthy else None)
  if not pull:
    return v
  neighbours = neighbour_lists(n, matchings, active)
  degrees = np.array([len(nb) for nb in neighbours])
  out = v.copy()
  for i in range(n):
    if not neighbours[i]:
      continue
    candidates = [i] + neighbours[i]
    leader = _first_best(candidates, lambda j: losses[j], healthy)
    top = _first_best(candidates, lambda j: -degrees[j], healthy)
    y = (1 - c1 - c2) * v[i] + c1 * x_hat[leader] + c2 * x_hat[top]
    out[i] = y - p1 * (y - x_hat[leader]) - p2 * (y - x_hat[top])
  return out


def schedule_step_inputs(schedule, step):
  """(matchings, active flags, weights) of a jax_aldsgd schedule at ``step``.

  The schedule's host-side flags are the input here (they are its definition,
  tested separately); everything computed from them is the reference's own.
  """
  matchings, weights = [], []
  for graph, alpha in zip(schedule.graphs, schedule.neighbor_weight):
    matchings += [list(m) for m in graph.matchings]
    weights += [alpha] * len(graph.matchings)
  return matchings, list(schedule.active(step)), weights


class Quadratic:
  """Per-worker least squares ``f_i(x) = 0.5 mean((A_i x - b_i)^2)`` on flat x."""

  def __init__(self, rng, num_workers, dim, rows=6):
    self.a = rng.normal(size=(num_workers, rows, dim))
    self.b = rng.normal(size=(num_workers, rows))

  def loss(self, x):
    r = np.einsum("nrd,nd->nr", self.a, x) - self.b
    return 0.5 * np.mean(r**2, axis=1)

  def grad(self, x):
    r = np.einsum("nrd,nd->nr", self.a, x) - self.b
    return np.einsum("nrd,nr->nd", self.a, r) / self.a.shape[1]


def sgd_step(x, grad, lr, weight_decay):
  """Step 2: x_hat = x - lr (g + wd x)."""
  return x - lr * (grad + weight_decay * x)
