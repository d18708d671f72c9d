"""NumPy reference of CHOCO-SGD (docs/algorithm.md section 9) on stacked arrays.

Written from the equations, not from the library: compressors on one vector,
public copies as whole ``(n, d)`` arrays (one per slot for time-varying
schedules: ``public[s][j]`` is worker j's public copy on slot s, which both
ends of the edge know), dense mixing matrices, explicit neighbor lists. Random
compressors take their draws (random-k's indices, QSGD's uniform noise) as
inputs (`leaf_q` draws them with ``jax.random`` as the library documents).
"""

from __future__ import annotations

import math

import jax  # only for the random draws, made as the library documents them
import jax.numpy as jnp
import numpy as np

from tests import reference


def top_k(v, fraction):
  k = max(1, math.floor(fraction * v.size))
  keep = np.argsort(-np.abs(v), kind="stable")[:k]  # ties: lower index first
  out = np.zeros_like(v)
  out[keep] = v[keep]
  return out


def random_k(v, indices, rescale=False):
  out = np.zeros_like(v)
  out[indices] = v[indices] * (v.size / len(indices) if rescale else 1.0)
  return out


def scaled_sign(v):
  return np.where(v >= 0, 1.0, -1.0) * np.abs(v).sum() / v.size


def qsgd(v, levels, noise):
  norm = np.sqrt(np.sum(v**2))
  ratio = np.abs(v) / (norm if norm > 0 else 1.0) * levels
  level = np.floor(ratio) + (noise < ratio - np.floor(ratio))
  return np.sign(v) * level * norm / levels


def compress(v, segments, leaf_q, worker):
  """Applies ``leaf_q(segment, leaf, worker)`` to each leaf's segment of ``v``."""
  out = np.zeros_like(v)
  for leaf, (start, size) in enumerate(segments):
    out[start : start + size] = leaf_q(v[start : start + size], leaf, worker)
  return out


class FixedGraph:
  """CHOCO on a fixed graph: one public copy per worker, ``W`` every step."""

  def __init__(self, num_workers, dim):
    self.public = np.zeros((num_workers, dim))

  def step(self, x_half, w, gamma, q):
    """``q(v, worker)`` compresses worker's vector; returns the new x."""
    n = len(x_half)
    update = np.stack([q(x_half[i] - self.public[i], i) for i in range(n)])
    self.public = self.public + update
    return x_half + gamma * (w - np.eye(n)) @ self.public


class PerSlot:
  """CHOCO with a public copy per slot (matching), for any schedule."""

  def __init__(self, num_slots, num_workers, dim):
    self.public = np.zeros((num_slots, num_workers, dim))

  def step(self, x_half, matchings, active, weights, gamma, q, leader=None):
    """One step; ``leader`` (dict of losses, c1, c2, p1, p2, pull) for AL-DSGD.

    Worker i's public copy on slot s changes only when s is active and i is
    matched in it: ``public[s][i] += Q(x_half_i - public[s][i])``. Then worker i
    moves by ``gamma`` times its gossip (and, for AL-DSGD, pull) move computed on
    the public copies ``public[s][j] - public[s][i]`` of its active edges.
    """
    n = len(x_half)
    edges = [[] for _ in range(n)]  # (neighbor, slot), by slot index
    for s, (matching, on) in enumerate(zip(matchings, active)):
      if not on:
        continue
      for i, j in matching:
        edges[i].append((j, s))
        edges[j].append((i, s))
    new_public = self.public.copy()
    for i in range(n):
      for _, s in edges[i]:
        new_public[s][i] += q(x_half[i] - self.public[s][i], i)
    self.public = new_public
    x = np.array(x_half, dtype=float)
    degrees = [len(e) for e in edges]
    for i in range(n):
      if not edges[i]:
        continue
      diff = {j: self.public[s][j] - self.public[s][i] for j, s in edges[i]}
      diff[i] = np.zeros_like(x[i])
      move = sum(weights[s] * diff[j] for j, s in edges[i])
      if leader is not None and leader["pull"]:
        candidates = [i] + [j for j, _ in edges[i]]
        losses = leader["losses"]
        best = candidates[int(np.argmin([losses[j] for j in candidates]))]
        top = candidates[int(np.argmax([degrees[j] for j in candidates]))]
        c1, c2, p1, p2 = (leader[k] for k in ("c1", "c2", "p1", "p2"))
        # docs/algorithm.md section 2, step 6, in differences to x_half_i.
        y = (1 - c1 - c2) * move + c1 * diff[best] + c2 * diff[top]
        move = y - p1 * (y - diff[best]) - p2 * (y - diff[top])
      x[i] = x_half[i] + gamma * move
    return x


def schedule_inputs(schedule, step):
  return reference.schedule_step_inputs(schedule, step)


def draw_key(seed, step, leaf, worker=None):
  """A leaf's ``jax.random`` key as the library documents it (worker: QSGD only)."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), leaf)
  return key if worker is None else jax.random.fold_in(key, worker)


def leaf_q(compressor, step):
  """NumPy ``Q(v, leaf, worker)`` for a library compressor object at ``step``.

  Reads only the compressor's public fields (its type name, ``fraction``,
  ``rescale``, ``levels``, ``seed``) and draws random-k's indices and QSGD's
  noise with ``jax.random`` as the library documents.
  """
  name = type(compressor).__name__

  def q(v, leaf, worker):
    if name == "Identity":
      return v
    if name == "TopK":
      return top_k(v, compressor.fraction)
    if name == "ScaledSign":
      return scaled_sign(v)
    if name == "RandomK":
      k = max(1, math.floor(compressor.fraction * v.size))
      key = draw_key(compressor.seed, step, leaf)
      indices = np.asarray(jax.random.choice(key, v.size, (k,), replace=False))
      return random_k(v, indices, compressor.rescale)
    if name == "QSGD":
      key = draw_key(compressor.seed, step, leaf, worker)
      noise = np.asarray(jax.random.uniform(key, v.shape, jnp.float32), np.float64)
      return qsgd(v, compressor.levels, noise)
    raise ValueError(name)

  return q
