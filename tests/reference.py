"""A plain NumPy reference of docs/algorithm.md, on stacked ``(n, d)`` arrays.

Written from the spec, not from the library: dense mixing matrices, explicit
neighbor lists, ``np.argmin``/``np.argmax`` (first index on ties), and the
averaging/corrective-force form of section 2 step 6 (not the closed form the
library computes). Inputs are plain lists of matchings, active flags and weights.
"""

from __future__ import annotations

import numpy as np


def neighbor_lists(num_workers, matchings, active):
  """N_i: partners of i in the active matchings, ordered by matching index."""
  neighbors = [[] for _ in range(num_workers)]
  for matching, on in zip(matchings, active):
    if on:
      for i, j in matching:
        neighbors[i].append(j)
        neighbors[j].append(i)
  return neighbors


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


def adjacent_leader(
  x_hat,
  losses,
  matchings,
  active,
  weights,
  *,
  c1,
  c2,
  p1,
  p2,
  pull=True,
  healthy=None,
  skip_unhealthy=False,
):
  """Steps 5-6 of one AL-DSGD iteration for all workers.

  ``healthy`` (default: all) marks workers whose loss and parameters are finite;
  the others are never chosen as leader or max-degree node, and with
  ``skip_unhealthy`` they are also left out of their neighbors' gossip.
  """
  n = len(x_hat)
  healthy = np.ones(n, bool) if healthy is None else np.asarray(healthy)
  v = gossip(
    x_hat, matchings, active, weights, skip=~healthy if skip_unhealthy else None
  )
  if not pull:
    return v
  neighbors = neighbor_lists(n, matchings, active)
  degrees = np.array([len(nb) for nb in neighbors])
  out = v.copy()
  for i in range(n):
    if not neighbors[i]:
      continue
    candidates = [i] + neighbors[i]
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


# docs/algorithm.md section 10: overlap, local steps, bounded staleness.


def mix(x, losses, matchings, active, weights, leader=None, pull=True):
  """One exchange of ``x`` (gossip, or AL-DSGD with ``leader`` coefficients)."""
  if leader is None:
    return gossip(x, matchings, active, weights)
  return adjacent_leader(x, losses, matchings, active, weights, pull=pull, **leader)


def variant_run(
  x0, problem, steps, schedule, *, lr, overlap=False, every=1, leader=None, pull_every=1
):
  """``steps`` iterations of D-PSGD / AL-DSGD in the section 10 variants.

  Adapt-then-combine: ``x+ = mix(x - lr g)``; adapt-while-combine (``overlap``):
  ``x+ = mix(x) - lr g``. With ``every = H`` only steps ``k`` with ``k % H == 0``
  communicate, using the schedule at its own step ``k // H`` (and pulling when
  ``(k // H) % pull_every == 0``); other steps are plain local SGD.
  """
  x = np.array(x0, np.float64)
  for k in range(steps):
    losses, update = problem.loss(x), -lr * problem.grad(x)
    if k % every:
      x = x + update
      continue
    rounds = k // every
    matchings, active, weights = schedule_step_inputs(schedule, rounds)
    pull = rounds % pull_every == 0
    if overlap:
      x = mix(x, losses, matchings, active, weights, leader, pull) + update
    else:
      x = mix(x + update, losses, matchings, active, weights, leader, pull)
  return x


def push_sum_run(x0, problem, steps, schedule, *, lr, delay):
  """Push-sum gossip whose off-diagonal shares arrive ``delay`` steps later.

  ``z_hat = z + u`` (u from the gradient at ``x = z / psi``); the share
  ``W[i, j] z_hat_j`` sent at step t is added to ``z_i`` at step ``t + delay``;
  ``psi`` likewise. Returns ``(x, z, psi, in_flight_z, in_flight_psi)`` where
  the in-flight sums cover the shares sent but not yet delivered.
  """
  n = len(x0)
  z, psi = np.array(x0, np.float64), np.ones(n)
  sent = []  # (arrival step, z shares (n, d), psi shares (n,))
  for t in range(steps):
    x = z / psi[:, None]
    z_hat = z + (-lr * problem.grad(x))
    w = mixing_matrix(n, *schedule_step_inputs(schedule, t))
    off = w - np.diag(np.diag(w))
    sent.append((t + delay, off @ z_hat, off @ psi))
    z, psi = np.diag(w)[:, None] * z_hat, np.diag(w) * psi
    for arrival, z_share, psi_share in sent:
      if arrival == t:
        z, psi = z + z_share, psi + psi_share
    sent = [s for s in sent if s[0] > t]
  in_flight_z = sum((s[1] for s in sent), np.zeros_like(z))
  in_flight_psi = sum((s[2] for s in sent), np.zeros(n))
  return z / psi[:, None], z, psi, in_flight_z, in_flight_psi
