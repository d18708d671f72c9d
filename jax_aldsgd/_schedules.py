"""Which matchings are active at step k, and with which neighbor weight.

A schedule is static, hashable host data. It owns a flat list of *slots*, one per
matching of each of its graphs (a rotating schedule over G graphs has the slots of
all G), and decides per step which slots are active. The transforms issue the
``ppermute`` of the active slots only, in the branch of a ``lax.switch`` over the
schedule's distinct activation patterns (``_patterns``), so a slot that is not
active costs no communication, and the flags are computed from the step counter
with the same code on the host (NumPy) and on every worker (traced ``jax.numpy``).

Random flags (MATCHA) come from a counter-based hash of ``(seed, step, matching)``
in uint32 arithmetic, which NumPy and XLA evaluate bit for bit the same, so every
worker, every run and the host-side ``active(step)`` agree.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
import numbers
import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from jax_aldsgd import _checks, _matcha
from jax_aldsgd._topology import Topology, _read_only


def _check_weight(value, name: str = "neighbor_weight") -> float:
  if (
    isinstance(value, bool)
    or not isinstance(value, numbers.Real)
    or not (np.isfinite(value) and value > 0)
  ):
    raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
  return float(value)


def _check_topology(topology) -> Topology:
  if not isinstance(topology, Topology):
    raise TypeError(
      "topology must be a jax_aldsgd.Topology (see "
      f"jax_aldsgd.topologies), got {type(topology).__name__}."
    )
  return topology


def _check_step(step) -> int:
  if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
    raise ValueError(f"step must be a non-negative integer, got {step!r}.")
  return int(step)


def dpsgd_weight(topology: Topology) -> float:
  """D-PSGD's neighbor weight ``alpha = 2 / (lambda_2(L) + lambda_max(L))``.

  For a disconnected graph (allowed inside rotating schedules) ``lambda_2`` is the
  smallest non-zero eigenvalue, the one that governs mixing within components.
  """
  values = np.linalg.eigvalsh(topology.laplacian())
  nonzero = values[values > 1e-9 * max(1.0, values[-1])]
  return float(2.0 / (nonzero[0] + nonzero[-1]))


class Schedule(abc.ABC):
  """Base class of schedules: which slots (graph, matching) exchange at each step.

  A schedule owns a flat list of *slots*, one per matching of each of its
  `graphs` in order, and says per step which slots are active. The transforms
  issue one ``ppermute`` per active slot with the neighbor weight of its graph;
  an inactive slot sends nothing.

  To write your own schedule, subclass this and define `graphs`,
  `neighbor_weight` and `slot_flags` (and, optionally, `activation_patterns`
  for a faster exchange). A *directed* schedule (a slot is a permutation, such
  as the shift ``i -> i + 2^k mod n``, rather than a matching) overrides
  `slot_partners` and `slot_weight` instead of deriving them from `graphs`:
  row s of `slot_partners` says whom each worker receives from in slot s, each
  worker receiving from and sending to at most one other; `mixing_matrix` is
  then not symmetric. Make the subclass a frozen dataclass (or
  otherwise hashable and compared by value): transforms cache per-schedule plans
  and the trainer fingerprints runs by it. Only ``slot_flags`` sees the step;
  everything else is static host data. If the flags repeat, say after how many
  steps (`period`), so that `spectral_gap` needs no window.

  Example:
    >>> import dataclasses
    >>> import jax_aldsgd as ald
    >>> @dataclasses.dataclass(frozen=True)
    ... class EveryOther(ald.Schedule):
    ...   \"\"\"All matchings of one graph at even steps, none at odd steps.\"\"\"
    ...   topology: ald.Topology
    ...   @property
    ...   def graphs(self):
    ...     return (self.topology,)
    ...   @property
    ...   def neighbor_weight(self):
    ...     return (ald.schedules.dpsgd_weight(self.topology),)
    ...   def slot_flags(self, step, xp):
    ...     return xp.full((self.topology.num_matchings,), step % 2 == 0)
    >>> schedule = EveryOther(ald.topologies.ring(4))
    >>> schedule.active(0).tolist(), schedule.active(1).tolist()
    ([True, True], [False, False])
  """

  @property
  @abc.abstractmethod
  def graphs(self) -> tuple[Topology, ...]:
    """The graphs this schedule uses, in rotation order."""

  @property
  @abc.abstractmethod
  def neighbor_weight(self) -> tuple[float, ...]:
    """The neighbor weight ``alpha`` of each graph in `graphs`."""

  @abc.abstractmethod
  def slot_flags(self, step, xp):
    """``(num_slots,)`` bool: which slots exchange at ``step``.

    Called in two ways, which must agree bit for bit: on the host with ``xp =
    numpy`` and a Python int step (`active`, byte accounting, the NumPy
    references), and under ``jax.jit`` with ``xp = jax.numpy`` and a traced int32
    step (every worker, inside the transforms). So use only ``xp`` operations and
    integer arithmetic on ``step``; random flags must come from a counter-based
    hash of the step (see `bernoulli_flags`), never from host state. At most one
    graph may be active per step (its slots share one neighbor weight).

    Args:
      step: the step counter (non-negative).
      xp: ``numpy`` or ``jax.numpy``.
    """

  def activation_patterns(self, limit: int) -> frozenset[tuple[bool, ...]] | None:
    """Every distinct ``(num_slots,)`` mask `slot_flags` can return, or None.

    Optional for a schedule of your own: the exchange runs one ``lax.switch``
    per step over these patterns (one branch each, issuing exactly that
    pattern's ``ppermute`` s). None (the default) when there are more than
    ``limit`` of them or the schedule cannot enumerate them; the exchange then
    falls back to one two-way switch per slot.
    """
    del limit
    return None

  @property
  def num_workers(self) -> int:
    return int(self.slot_partners.shape[1])

  @functools.cached_property
  def slots(self) -> tuple[tuple[int, int], ...]:
    """``(graph index, matching index)`` of every slot, in exchange order."""
    return tuple(
      (g, m) for g, graph in enumerate(self.graphs) for m in range(graph.num_matchings)
    )

  @property
  def num_slots(self) -> int:
    return int(self.slot_partners.shape[0])

  @functools.cached_property
  def slot_partners(self) -> np.ndarray:
    """``(num_slots, n)`` int: whom each worker receives from in each slot, or -1.

    For a matching that is the worker's partner, who also receives from it;
    a directed schedule's rows are permutations (see the class docstring).
    """
    table = np.concatenate([graph.partners for graph in self.graphs], axis=0)
    table.setflags(write=False)
    return table

  @functools.cached_property
  def slot_weight(self) -> np.ndarray:
    """``(num_slots,)`` neighbor weight of each slot's graph."""
    weights = np.array([self.neighbor_weight[g] for g, _ in self.slots])
    weights.setflags(write=False)
    return weights

  @functools.cached_property
  def directed(self) -> bool:
    """Whether some slot is not a matching (i receives from j, j not from i)."""
    table = self.slot_partners
    rows, workers = np.nonzero(table >= 0)
    return bool(np.any(table[rows, table[rows, workers]] != workers))

  def active(self, step: int) -> np.ndarray:
    """Host-side ``(num_slots,)`` bool mask of the slots that exchange at ``step``."""
    return np.asarray(self.slot_flags(_check_step(step), np), dtype=bool)

  def graph_index(self, step: int) -> int:
    """Index into `graphs` of the graph in use at ``step``."""
    del step
    return 0

  def active_degrees(self, step: int) -> np.ndarray:
    """``(n,)`` active degree ``d_i^k`` of every worker at ``step``.

    The number of active slots in which the worker receives (for matchings,
    also those in which it sends).
    """
    return (self.active(step)[:, None] & (self.slot_partners >= 0)).sum(0)

  def sent_bytes(self, step: int, message_bytes: float) -> np.ndarray:
    """``(n,)`` bytes each worker sends at ``step``: active degree x message size.

    ``message_bytes`` is one message's size, e.g. from
    `jax_aldsgd.gossip_message_bytes` or `jax_aldsgd.adjacent_leader_message_bytes`.
    """
    return self.active_degrees(step) * message_bytes

  def mixing_matrix(self, step: int) -> np.ndarray:
    """Dense mixing matrix ``W_k`` at ``step``; row i is what worker i receives.

    ``W_k = I - sum_{active slots s} alpha_s (D_s - P_s)``, with ``P_s[i, j] = 1``
    if i receives from j in slot s and ``D_s`` the diagonal of the receiving
    workers: for matchings ``alpha_s L_s`` (symmetric), for a directed slot
    not symmetric (a shift gives ``(I + P) / 2`` at ``alpha = 1/2``).
    """
    return self._mix(step, np.eye(self.num_workers))

  def _mix(self, step: int, x: np.ndarray) -> np.ndarray:
    """``W_k x`` for ``x`` of shape ``(n, ...)``, without forming ``W_k``."""
    out = np.array(x, dtype=float)
    for s in np.flatnonzero(self.active(step)):
      partners = self.slot_partners[s]
      receiving = partners >= 0
      out[receiving] += self.slot_weight[s] * (x[partners[receiving]] - x[receiving])
    return out

  @property
  def period(self) -> int | None:
    """Steps after which `slot_flags` repeat, or None (random, or not said).

    The default window of `spectral_gap`. A schedule of your own may override
    it; None (the default) when the flags never repeat (MATCHA's draws).
    """
    return None

  def spectral_gap(self, steps: int | None = None) -> float:
    """Consensus rate per step: ``1 - ||W_{T-1} ... W_1 W_0 - 11^T / n||_2^(1/T)``.

    docs/algorithm.md section 5.2. ``T`` steps of gossip shrink the workers'
    disagreement ``||x - xbar||`` by at least the norm (for doubly stochastic
    ``W_k``, as every built-in schedule's: they keep ``xbar``); its ``T``-th
    root is that factor per step, a geometric mean over the window. ``T``
    defaults to `period`, one period of a time-varying or directed schedule.
    For one fixed symmetric ``W`` (`full`) it is the usual ``1 - max_{i >= 2}
    |lambda_i(W)|``. A product that averages exactly (within rounding) gives
    1: the one-peer exponential graph for n a power of two, whose ``log2 n``
    steps average exactly together, not each. `Matcha` overrides it with its
    expected rate.

    Args:
      steps: ``T >= 1``, the window (from step 0); defaults to `period`.

    Raises:
      ValueError: if ``steps`` is None and the schedule has no `period`.

    Example:
      >>> import jax_aldsgd as ald
      >>> round(ald.schedules.full(ald.topologies.ring(8)).spectral_gap(), 4)
      0.2555
      >>> ald.schedules.one_peer_exponential(8).spectral_gap()
      1.0
      >>> round(ald.schedules.one_peer_exponential(6).spectral_gap(), 4)
      0.3995
    """
    if steps is None:
      steps = self.period
      if steps is None:
        raise ValueError(
          f"{type(self).__name__} has no period (its flags are random or it "
          "does not say when they repeat); pass steps=T to take the product "
          "of its first T mixing matrices."
        )
    steps = _checks.check_integer("steps", steps, 1)
    n = self.num_workers
    product = np.eye(n)
    for k in range(steps):
      product = self._mix(k, product)
    disagreement = product - 1.0 / n
    if np.array_equal(disagreement, disagreement.T):
      norm = float(np.abs(np.linalg.eigvalsh(disagreement)).max())
    else:
      norm = float(np.linalg.norm(disagreement, 2))
    if norm <= steps * n * np.finfo(float).eps:  # exact averaging
      return 1.0
    return 1.0 - norm ** (1.0 / steps)


def check_schedule(schedule) -> Schedule:
  """Raises unless ``schedule`` is a `Schedule`."""
  if not isinstance(schedule, Schedule):
    raise TypeError(
      "schedule must be a jax_aldsgd schedule (see "
      "jax_aldsgd.schedules: full, alternating, matcha, explicit, "
      f"rotating), got {type(schedule).__name__}."
    )
  return schedule


class _SingleGraph(Schedule):
  """A schedule over one topology; subclasses define the flags."""

  topology: Topology
  weight: float

  @property
  def graphs(self):
    return (self.topology,)

  @property
  def neighbor_weight(self):
    return (self.weight,)


@dataclasses.dataclass(frozen=True)
class Full(_SingleGraph):
  """Every matching at every step: true D-PSGD. Build with `full`."""

  topology: Topology
  weight: float

  @property
  def period(self):
    return 1

  def slot_flags(self, step, xp):
    return xp.ones((self.topology.num_matchings,), dtype=bool)

  def activation_patterns(self, limit):
    del limit
    return frozenset({(True,) * self.topology.num_matchings})


@dataclasses.dataclass(frozen=True)
class Alternating(_SingleGraph):
  """The reference code's fixed-graph quirk. Build with `alternating`."""

  topology: Topology
  weight: float

  @property
  def period(self):
    return 2

  def slot_flags(self, step, xp):
    # Flags [0,1,0,...] at even steps and [1,0,0,...] at odd steps.
    active_matching = 1 - step % 2
    return xp.arange(self.topology.num_matchings) == active_matching

  def activation_patterns(self, limit):
    del limit
    return frozenset(tuple(bool(f) for f in self.slot_flags(k, np)) for k in (0, 1))


@dataclasses.dataclass(frozen=True)
class Explicit(_SingleGraph):
  """A periodic list of active-matching masks. Build with `explicit`."""

  topology: Topology
  weight: float
  pattern: tuple[tuple[bool, ...], ...]

  @property
  def period(self):
    return len(self.pattern)

  def slot_flags(self, step, xp):
    table = xp.asarray(np.array(self.pattern, dtype=bool))
    return table[step % len(self.pattern)]

  def activation_patterns(self, limit):
    patterns = frozenset(self.pattern)
    return patterns if len(patterns) <= limit else None


_GOLDEN = 0x9E3779B9


def _mix32(xp, x):
  """A 32-bit integer finaliser (the "lowbias32" hash of C. Wellons)."""
  x = x ^ (x >> 16)
  x = x * xp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * xp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def bernoulli_flags(xp, seed: int, step, thresholds, always):
  """Counter-based Bernoulli flags, bitwise identical in NumPy and JAX.

  Flag m at ``step`` is ``hash(seed, step, m) < thresholds[m]`` (or ``always[m]``),
  with ``thresholds[m] = floor(p_m 2^32)``, so it is true with probability ``p_m``.
  """
  count = len(thresholds)
  # Work on (count,)-shaped arrays: NumPy wraps uint32 arrays silently (0-d
  # scalars would warn on overflow), as XLA does.
  index = xp.arange(count, dtype=xp.uint32)
  seed32 = xp.full((count,), seed % 2**32, dtype=xp.uint32)
  step32 = xp.full((count,), 0, dtype=xp.uint32) + xp.asarray(step).astype(xp.uint32)
  h = _mix32(xp, seed32 + xp.uint32(_GOLDEN))
  h = _mix32(xp, h ^ (step32 * xp.uint32(0x85EBCA6B) + xp.uint32(1)))
  h = _mix32(xp, h ^ (index * xp.uint32(0xC2B2AE35) + xp.uint32(2)))
  return (h < xp.asarray(np.asarray(thresholds, np.uint32))) | xp.asarray(
    np.asarray(always, bool)
  )


@dataclasses.dataclass(frozen=True)
class Matcha(_SingleGraph):
  """MATCHA: matching m active independently with probability ``p_m``. Build with `matcha`."""

  topology: Topology
  weight: float
  budget: float
  probabilities: tuple[float, ...]
  seed: int

  @functools.cached_property
  def _thresholds(self):
    p = np.asarray(self.probabilities, float)
    return np.minimum(np.floor(p * 2.0**32), 2.0**32 - 1).astype(np.uint32), p >= 1.0

  def slot_flags(self, step, xp):
    thresholds, always = self._thresholds
    return bernoulli_flags(xp, self.seed, step, thresholds, always)

  def activation_patterns(self, limit):
    # Matchings with p = 1 are always on, p = 0 never; the others take every
    # combination with non-zero probability.
    thresholds, always = self._thresholds
    free = [m for m in range(len(thresholds)) if thresholds[m] > 0 and not always[m]]
    if 2 ** len(free) > limit:
      return None
    patterns = set()
    for bits in range(2 ** len(free)):
      mask = [bool(a) for a in always]
      for k, m in enumerate(free):
        mask[m] = bool(bits >> k & 1)
      patterns.add(tuple(mask))
    return frozenset(patterns)

  @property
  def rho(self) -> float:
    """MATCHA's spectral quantity ``rho`` at this schedule's ``alpha``."""
    return _matcha.matcha_rho(self.topology, self.probabilities, self.weight)

  def spectral_gap(self, steps: int | None = None) -> float:
    """MATCHA's expected rate: ``1 - sqrt(rho)``; with ``steps``, `Schedule`'s.

    ``rho = lambda_max(E[W^T W] - 11^T / n)`` (docs/algorithm.md section 6)
    bounds the per-step factor on the disagreement in root mean square over
    the random flags. With ``steps = T`` the product of the ``W_k`` actually
    drawn at steps ``0 .. T - 1`` (`Schedule.spectral_gap`).
    """
    if steps is None:
      return 1.0 - math.sqrt(self.rho)
    return super().spectral_gap(steps)


@dataclasses.dataclass(frozen=True)
class Rotating(Schedule):
  """Dynamic graphs: step k uses ``schedules[k % G]`` at its own step ``k // G``.

  With ``restart_every = E`` the rotation restarts every E steps, as the
  reference code's does each epoch (``batch_idx % G``): step ``k = e E + b``
  uses ``schedules[b % G]``, and each schedule's own step counts all its
  earlier uses.
  """

  schedules: tuple[Schedule, ...]
  restart_every: int | None = None

  @property
  def graphs(self):
    return tuple(g for s in self.schedules for g in s.graphs)

  @property
  def neighbor_weight(self):
    return tuple(w for s in self.schedules for w in s.neighbor_weight)

  @functools.cached_property
  def slot_partners(self) -> np.ndarray:
    return _read_only(np.concatenate([s.slot_partners for s in self.schedules]))

  @functools.cached_property
  def slot_weight(self) -> np.ndarray:
    return _read_only(np.concatenate([s.slot_weight for s in self.schedules]))

  @property
  def period(self):
    periods = [s.period for s in self.schedules]
    if None in periods:
      return None
    count = len(self.schedules)
    if self.restart_every is None:
      return count * math.lcm(*periods)
    # Each epoch of E steps moves child g's own step on by its uses per epoch;
    # the flags repeat after the fewest epochs that move every child on by a
    # multiple of its period.
    uses = [self._uses_before(g, self.restart_every) for g in range(count)]
    epochs = math.lcm(*(p // math.gcd(p, u) for p, u in zip(periods, uses)))
    return epochs * self.restart_every

  def _uses_before(self, child: int, step):
    """How often ``schedules[child]`` ran before ``step`` (its own step there)."""
    count = len(self.schedules)
    uses = lambda m: (m - child + count - 1) // count  # j < m with j % G == child
    if self.restart_every is None:
      return uses(step)
    epoch, position = step // self.restart_every, step % self.restart_every
    return epoch * uses(self.restart_every) + uses(position)

  def _which(self, step):
    position = step if self.restart_every is None else step % self.restart_every
    return position % len(self.schedules)

  def slot_flags(self, step, xp):
    which = self._which(step)
    return xp.concatenate(
      [
        (which == g) & child.slot_flags(self._uses_before(g, step), xp)
        for g, child in enumerate(self.schedules)
      ]
    )

  def activation_patterns(self, limit):
    sizes = [s.num_slots for s in self.schedules]
    patterns = set()
    for g, child in enumerate(self.schedules):
      own = child.activation_patterns(limit)
      if own is None:
        return None
      before, after = (False,) * sum(sizes[:g]), (False,) * sum(sizes[g + 1 :])
      patterns |= {before + p + after for p in own}
      if len(patterns) > limit:
        return None
    return frozenset(patterns)

  def graph_index(self, step: int) -> int:
    step = _check_step(step)
    which = self._which(step)
    offset = sum(len(s.graphs) for s in self.schedules[:which])
    return offset + self.schedules[which].graph_index(self._uses_before(which, step))


@dataclasses.dataclass(frozen=True)
class Every(Schedule):
  """``schedule`` at steps 0, H, 2H, ... (at its own step ``k // H``), idle between."""

  schedule: Schedule
  every: int

  @property
  def graphs(self):
    return self.schedule.graphs

  @property
  def neighbor_weight(self):
    return self.schedule.neighbor_weight

  @property
  def slot_partners(self) -> np.ndarray:
    return self.schedule.slot_partners

  @property
  def slot_weight(self) -> np.ndarray:
    return self.schedule.slot_weight

  @property
  def period(self):
    child = self.schedule.period
    return None if child is None else self.every * child

  def slot_flags(self, step, xp):
    return (step % self.every == 0) & self.schedule.slot_flags(step // self.every, xp)

  def graph_index(self, step: int) -> int:
    return self.schedule.graph_index(_check_step(step) // self.every)

  def activation_patterns(self, limit):
    own = self.schedule.activation_patterns(limit)
    if own is None or len(own) >= limit:
      return None
    return own | {(False,) * self.num_slots}


@dataclasses.dataclass(frozen=True)
class OnePeerExponential(Schedule):
  """Directed, time-varying: at step k worker i receives from ``i - 2^(k mod tau)``.

  ``tau = ceil(log2 n)`` slots, slot k the shift by ``2^k`` (i sends to
  ``i + 2^k``), weight 1/2: ``W_k = (I + P_k) / 2``, one ``ppermute`` a step.
  """

  size: int

  @property
  def graphs(self):
    return ()

  @property
  def neighbor_weight(self):
    return ()

  @functools.cached_property
  def slot_partners(self) -> np.ndarray:
    hops = max(int(np.ceil(np.log2(self.size))), 1)
    workers = np.arange(self.size)
    return _read_only(
      np.stack([(workers - 2**k) % self.size for k in range(hops)]).astype(np.int64)
    )

  @functools.cached_property
  def slot_weight(self) -> np.ndarray:
    return _read_only(np.full(self.num_slots, 0.5))

  @property
  def period(self):
    return self.num_slots

  def slot_flags(self, step, xp):
    return xp.arange(self.num_slots) == step % self.num_slots

  def activation_patterns(self, limit):
    if self.num_slots > limit:
      return None
    slots = range(self.num_slots)
    return frozenset(tuple(k == s for k in slots) for s in slots)

  def graph_index(self, step: int) -> int:
    del step
    raise ValueError(
      "a one-peer exponential schedule has no graphs (its slots are shifts); "
      "use active(step) or mixing_matrix(step)."
    )


# ----------------------------------------------------------------------------
# Constructors.


def full(topology: Topology, neighbor_weight: float | None = None) -> Full:
  """True D-PSGD: all matchings active at every step.

  Args:
    topology: the communication graph.
    neighbor_weight: ``alpha``; defaults to ``2 / (lambda_2 + lambda_max)`` of the
      graph Laplacian (2/7 for paper graph 0).

  Example:
    >>> import jax_aldsgd as ald
    >>> s = ald.schedules.full(ald.topologies.paper_graph(0))
    >>> round(s.neighbor_weight[0], 6), s.active(0).tolist()
    (0.285714, [True, True, True, True, True])
  """
  topology = _check_topology(topology)
  weight = (
    dpsgd_weight(topology)
    if neighbor_weight is None
    else _check_weight(neighbor_weight)
  )
  return Full(topology, weight)


def alternating(
  topology: Topology, neighbor_weight: float | None = None
) -> Alternating:
  """The reference code's fixed-graph "D-PSGD": only matching 1, then only matching 0, ...

  docs/algorithm.md section 3: the reference's fixed processor activates flags
  ``[0,1,0,...]`` at even steps and ``[1,0,0,...]`` at odd steps, with
  ``alpha = 2 / (lambda_2 + lambda_max)`` of the whole graph. Offered to reproduce
  the reference baseline; `full` is true D-PSGD.
  """
  topology = _check_topology(topology)
  if topology.num_matchings < 2:
    raise ValueError(
      "alternating needs a topology with at least 2 matchings (it "
      "alternates matchings 1 and 0), got "
      f"{topology.num_matchings}; use full() instead."
    )
  weight = (
    dpsgd_weight(topology)
    if neighbor_weight is None
    else _check_weight(neighbor_weight)
  )
  return Alternating(topology, weight)


def matcha(topology: Topology, budget: float, seed: int = 0) -> Matcha:
  """MATCHA: each matching active independently with an optimised probability.

  docs/algorithm.md section 6. ``p`` maximises ``lambda_2(sum_m p_m L_m)`` subject to
  ``sum_m p_m <= budget * R`` and ``alpha`` minimises MATCHA's ``rho``; the flags of
  step k are Bernoulli(p_m) draws from a hash of ``(seed, k, m)``, identical on every
  worker and every run.

  Args:
    topology: the base graph.
    budget: communication budget ``C_b`` in (0, 1], the expected fraction of the
      matchings used per step (1 is D-PSGD).
    seed: non-negative integer seed of the activation flags.

  Example:
    >>> import jax_aldsgd as ald
    >>> s = ald.schedules.matcha(ald.topologies.paper_graph(0), budget=0.5)
    >>> round(s.neighbor_weight[0], 3)
    0.396
  """
  topology = _check_topology(topology)
  budget = _checks.check_fraction(
    "budget", budget, "the fraction of matchings used per step; 1 is D-PSGD"
  )
  if (
    isinstance(seed, bool)
    or not isinstance(seed, numbers.Integral)
    or not (0 <= seed < 2**32)
  ):
    raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}.")
  probabilities = _matcha.matcha_probabilities(topology, float(budget))
  weight, _ = _matcha.matcha_neighbor_weight(topology, probabilities)
  return Matcha(
    topology, weight, float(budget), tuple(float(p) for p in probabilities), int(seed)
  )


def explicit(
  topology: Topology,
  active: Sequence[Iterable[int]],
  neighbor_weight: float | None = None,
) -> Explicit:
  """A periodic pattern of active matchings: step k uses ``active[k % len(active)]``.

  Args:
    topology: the graph.
    active: a non-empty list; entry t is the collection of matching indices active
      at steps ``t, t + P, t + 2P, ...`` (an empty collection: no exchange).
    neighbor_weight: ``alpha``; defaults to D-PSGD's ``2 / (lambda_2 + lambda_max)``.

  Example:
    >>> import jax_aldsgd as ald
    >>> t = ald.topologies.ring(4)
    >>> ald.schedules.explicit(t, [{0}, {1}, set()]).active(4).tolist()
    [False, True]
  """
  topology = _check_topology(topology)
  if (
    isinstance(active, (str, bytes)) or not isinstance(active, Sequence) or (not active)
  ):
    raise ValueError(
      "active must be a non-empty list of collections of matching "
      f"indices, got {active!r}."
    )
  pattern = []
  for t, entry in enumerate(active):
    if isinstance(entry, (str, bytes)) or not isinstance(entry, Iterable):
      raise TypeError(
        f"active[{t}] must be a collection of matching indices, got {entry!r}."
      )
    mask = [False] * topology.num_matchings
    for m in entry:
      if (
        isinstance(m, bool)
        or not isinstance(m, numbers.Integral)
        or not (0 <= m < topology.num_matchings)
      ):
        raise ValueError(
          f"active[{t}] names matching {m!r}, but the topology has "
          f"matchings 0..{topology.num_matchings - 1}."
        )
      mask[m] = True
    pattern.append(tuple(mask))
  weight = (
    dpsgd_weight(topology)
    if neighbor_weight is None
    else _check_weight(neighbor_weight)
  )
  return Explicit(topology, weight, tuple(pattern))


def every(schedule: Schedule, every: int) -> Schedule:
  """``schedule`` on every ``every``-th step only: what ``gossip(..., every=)`` runs.

  Step k exchanges iff ``k % every == 0``, with the flags of ``schedule`` at its
  own step ``k // every``. The transforms' ``every=`` option skips the other
  steps entirely (no packing, no collective); this schedule describes the same
  exchanges step by step, for byte counts and network simulations.

  Example:
    >>> import jax_aldsgd as ald
    >>> s = ald.schedules.every(ald.schedules.alternating(ald.topologies.paper_graph(0)), 2)
    >>> [s.active(k)[:2].tolist() for k in range(4)]
    [[False, True], [False, False], [True, False], [False, False]]
  """
  if not isinstance(schedule, Schedule):
    raise TypeError(
      f"schedule must be a jax_aldsgd schedule, got {type(schedule).__name__}."
    )
  every = _checks.check_integer("every", every, 1)
  return schedule if every == 1 else Every(schedule, every)


def rotating(
  schedules: Sequence[Schedule], *, restart_every: int | None = None
) -> Rotating:
  """Dynamic graphs (docs/algorithm.md section 4): step k runs ``schedules[k % G]``.

  Each schedule keeps its own counter: the g-th schedule's t-th use reads its
  step-t flags (step ``k // G``). The reference alternates graphs g+1 (even steps)
  and g (odd steps), i.e. ``rotating([s_{g+1}, s_g])``.

  Args:
    schedules: one or more schedules over the same number of workers.
    restart_every: restart the rotation every this many steps, as the reference
      code does at each epoch (pass the steps per epoch): with an odd epoch
      length the first schedule then runs twice in a row at each epoch start.
      Each schedule's own step still counts all its uses. ``None`` (default):
      the rotation runs on the global step (docs/algorithm.md section 4).

  Example:
    >>> import jax_aldsgd as ald
    >>> g0, g1 = (ald.topologies.paper_graph(i) for i in (0, 1))
    >>> s = ald.schedules.rotating([ald.schedules.full(g1), ald.schedules.full(g0)])
    >>> s.graph_index(0), s.graph_index(1), s.num_slots
    (0, 1, 10)
  """
  if (
    isinstance(schedules, Schedule)
    or not isinstance(schedules, Sequence)
    or (not schedules)
  ):
    raise ValueError(
      f"rotating takes a non-empty list of schedules, got {schedules!r}."
    )
  for g, schedule in enumerate(schedules):
    if not isinstance(schedule, Schedule):
      raise TypeError(
        f"schedules[{g}] must be a jax_aldsgd schedule, got {type(schedule).__name__}."
      )
  counts = [s.num_workers for s in schedules]
  if len(set(counts)) > 1:
    raise ValueError(
      f"all schedules of a rotation must have the same number of workers, got {counts}."
    )
  union = Topology(
    counts[0],
    [m for s in schedules for g in s.graphs for m in g.matchings],
    allow_disconnected=True,
  )
  if not union.is_connected():
    warnings.warn(
      f"even the union of the rotated graphs is disconnected (components "
      f"{union.components()}); those groups of workers will never agree.",
      stacklevel=2,
    )
  if restart_every is not None:
    restart_every = _checks.check_integer("restart_every", restart_every, 1)
  return Rotating(tuple(schedules), restart_every)


def one_peer_exponential(num_workers: int) -> OnePeerExponential:
  """The one-peer exponential graph (directed; Assran et al. SGP, Ying et al.).

  With ``tau = ceil(log2 n)``, at step k worker i sends to ``(i + 2^(k mod
  tau)) mod n`` and receives from ``(i - 2^(k mod tau)) mod n``: one message
  per worker and step, ``W_k = (I + P_k) / 2`` (doubly stochastic, so gossip
  keeps the mean; not symmetric). For n a power of two, ``tau`` consecutive
  steps average exactly (the product of their ``W`` is ``11^T / n``).
  `jax_aldsgd.gossip` on it is SGP's mixing; docs/algorithm.md section 11.

  Args:
    num_workers: ``n >= 2``.

  Example:
    >>> import jax_aldsgd as ald
    >>> s = ald.schedules.one_peer_exponential(8)
    >>> s.num_slots, s.directed, s.slot_partners[1, :4].tolist()
    (3, True, [6, 7, 0, 1])
    >>> import numpy as np
    >>> w = s.mixing_matrix(2) @ s.mixing_matrix(1) @ s.mixing_matrix(0)
    >>> bool(np.allclose(w, 1 / 8))
    True
  """
  return OnePeerExponential(_checks.check_integer("num_workers", num_workers, 2))
