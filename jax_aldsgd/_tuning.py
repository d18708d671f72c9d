"""Choosing CHOCO-SGD's consensus step: a grid search on pure compressed consensus.

Host-side NumPy, no JAX: the public copies are simulated per edge end, as
``_choco`` keeps them, for every ``gamma`` of a grid at once.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from jax_aldsgd import _checks
from jax_aldsgd._compressors import Compressor, check_compressor
from jax_aldsgd._schedules import Schedule, check_schedule


@dataclasses.dataclass(frozen=True)
class ConsensusTuning:
  """Result of `tune_consensus_lr`.

  Attributes:
    consensus_lr: the grid's ``gamma`` with the smallest final consensus error.
    grid: the ``gamma`` values tried.
    errors: final ``||X - mean(X)||_F^2 / ||X_0 - mean(X_0)||_F^2`` for each
      (``inf`` where the iteration diverged past 1e6).
    steps_to_floor: for each, the first step (checked every 10) at which the
      error was below 1e-12, or ``steps`` if never.
    seconds: how long the search took.
  """

  consensus_lr: float
  grid: tuple[float, ...]
  errors: tuple[float, ...]
  steps_to_floor: tuple[int, ...]
  seconds: float


def tune_consensus_lr(
  schedule: Schedule,
  compressor: Compressor,
  *,
  num_params: int = 1000,
  steps: int = 1000,
  seed: int = 0,
  grid=None,
) -> ConsensusTuning:
  """Picks CHOCO-SGD's consensus step by a grid search on pure compressed consensus.

  The epfml recipe: from random ``(n, num_params)`` data, run ``steps`` steps of
  compressed gossip alone (no gradients) with this schedule and compressor, with
  public copies per slot as `jax_aldsgd.gossip` keeps them, for each ``gamma``
  of a log grid in [1e-3, 1] (13 points, 4 per decade), and return the one with
  the smallest final consensus error (errors below 1e-12, float32 rounding,
  count as equal: the ``gamma`` that got there in the fewest steps wins; a
  ``gamma`` stops running once it gets there or its error passes 1e6).
  Host-side NumPy in float32; every ``gamma`` runs in one batch (seconds for 8
  workers, 1000 parameters, 1000 steps). Random compressors draw from NumPy here
  (the statistics, not the bits, matter); top-k may keep a few more entries on
  ties.

  Args:
    schedule: the gossip schedule to train with.
    compressor: one of `jax_aldsgd.compressors`.
    num_params: size of the random vector each worker holds (one leaf).
    steps: consensus steps per ``gamma``.
    seed: seed of the data and of the random compressors.
    grid: the ``gamma`` values to try (default: ``np.geomspace(1e-3, 1, 13)``).

  Returns:
    A `ConsensusTuning` with the chosen ``consensus_lr``, the grid and the errors.

  Example:
    >>> import jax_aldsgd as ald
    >>> g0, g1 = ald.topologies.paper_graph(0), ald.topologies.paper_graph(1)
    >>> S = ald.schedules
    >>> schedule = S.rotating([S.full(g1), S.full(g0)])
    >>> result = ald.tune_consensus_lr(schedule, ald.compressors.top_k(0.1),
    ...                                num_params=100, steps=200)
    >>> 1e-3 <= result.consensus_lr <= 1, len(result.errors)
    (True, 13)
  """
  started = time.perf_counter()
  schedule = check_schedule(schedule)
  compressor = check_compressor(compressor)
  num_params = _checks.check_integer("num_params", num_params, 1)
  steps = _checks.check_integer("steps", steps, 1)
  seed = _checks.check_integer("seed", seed, 0)
  grid = np.geomspace(1e-3, 1.0, 13) if grid is None else np.asarray(grid, float)
  if grid.ndim != 1 or not grid.size or np.any(~(grid > 0)) or np.any(grid > 1):
    raise ValueError(
      f"grid must be a non-empty list of consensus_lr values in (0, 1], got {grid!r}."
    )
  rng = np.random.default_rng(seed)
  n, dim = schedule.num_workers, num_params
  partners = np.asarray(schedule.slot_partners)
  weights = np.asarray(schedule.slot_weight, np.float32)
  # One row of public copies per (slot, matched worker): edge ends, in order.
  ends = [
    (s, i) for s in range(schedule.num_slots) for i in range(n) if partners[s, i] >= 0
  ]
  row_of = {end: r for r, end in enumerate(ends)}
  x = np.broadcast_to(
    rng.normal(size=(n, dim)).astype(np.float32), (len(grid), n, dim)
  ).copy()
  start_error = np.sum((x[0] - x[0].mean(0)) ** 2)
  public = np.zeros((len(grid), len(ends), dim), np.float32)
  gamma = grid[:, None, None].astype(np.float32)
  floor = 1e-12  # float32 consensus: below this the errors are rounding noise
  errors = np.full(len(grid), np.inf)
  reached = np.full(len(grid), steps)  # first step with error <= floor
  alive = np.arange(len(grid))  # rows still running (not at the floor, finite)
  plans = {}
  with np.errstate(all="ignore"):
    for k in range(steps):
      flags = schedule.active(k)
      plan = plans.get(flags.tobytes())
      if plan is None:
        active = [(s, i) for (s, i) in ends if flags[s]]
        mine = np.array([row_of[(s, i)] for s, i in active], int)
        theirs = np.array([row_of[(s, int(partners[s, i]))] for s, i in active], int)
        workers = np.array([i for _, i in active], int)
        incidence = np.zeros((n, len(active)), np.float32)
        incidence[workers, np.arange(len(active))] = [weights[s] for s, _ in active]
        plan = plans[flags.tobytes()] = (mine, theirs, workers, incidence)
      mine, theirs, workers, incidence = plan
      if len(mine):
        v = x[:, workers] - public[:, mine]  # (G, rows, dim)
        public[:, mine] += (
          compressor.numpy_apply(v.reshape(-1, dim), rng)
          .reshape(v.shape)
          .astype(np.float32)
        )
        x += gamma * (incidence @ (public[:, theirs] - public[:, mine]))
      if k % 10 == 9 or k == steps - 1:
        error = np.sum((x - x.mean(1, keepdims=True)) ** 2, axis=(1, 2))
        error = error / start_error
        errors[alive] = error
        done = (error <= floor) | ~(error < 1e6)  # at the floor, or diverged
        reached[alive[error <= floor]] = k + 1
        if done.any():  # stop computing those rows
          keep = ~done
          alive, x, public, gamma = alive[keep], x[keep], public[keep], gamma[keep]
        if not alive.size:
          break
  errors = np.where(errors < 1e6, errors, np.inf)  # diverged
  # The smallest final error; among those that reached the rounding floor, the
  # one that reached it first (the larger gamma on a tie).
  ranking = sorted(
    range(len(grid)), key=lambda g: (max(errors[g], floor), reached[g], -grid[g])
  )
  best = ranking[0]
  return ConsensusTuning(
    float(grid[best]),
    tuple(float(g) for g in grid),
    tuple(float(e) for e in errors),
    tuple(int(r) for r in reached),
    time.perf_counter() - started,
  )
