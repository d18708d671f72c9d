"""Simulated communication time: what a step's exchanges would cost on a network.

Training runs on one machine cannot show what a slow network does to gossip and
all-reduce. `NetworkModel` turns each step's exchanges into seconds from a few
numbers (per-message latency, per-link bandwidth, optionally a per-node bandwidth
cap), so that measured compute time plus simulated communication time gives the
wall-clock a run would take on that network (the paper's communication-constrained
comparison).

Models (``B`` = bytes of one message, ``L`` = latency, ``b`` = link bandwidth,
``c`` = node bandwidth cap, ``d_i`` = active degree of worker i):

* gossip, ``sequential`` (what the transforms do: one ``ppermute`` per active
  matching, one after the other; inside a matching every pair exchanges in both
  directions at once): ``sum over active matchings of (L + B / min(b, c))``;
* gossip, ``concurrent`` (all of a step's messages in flight together, each node's
  traffic sharing its cap): ``L + B * max(1 / b, max_i d_i / c)``;
* ring all-reduce of a model of ``M`` bytes over n workers: ``2 (n - 1)`` latency
  terms and ``2 (n - 1) / n * M`` bytes per worker: ``2 (n - 1) L + 2 (n - 1) M /
  (n min(b, c))``;
* two-level (hierarchical) all-reduce, ``g`` workers per host joined by a fast
  intra-host link (latency ``L_in``, bandwidth ``b_in``), ``N = n / g`` hosts:
  ring reduce-scatter inside each host, then each of the ``g`` local ranks
  all-reduces its ``M / g`` shard by a ring over the ``N`` hosts (all ``g`` rings
  at once, each worker on its own link ``min(b, c)``), then ring all-gather
  inside each host: ``2 (g - 1) L_in + 2 (g - 1) / g * M / b_in + 2 (N - 1) L +
  2 (N - 1) / N * (M / g) / min(b, c)`` (``g = 1`` is the ring all-reduce).

A step's time is ``compute + communication``, or ``max(compute, communication)``
when the exchange overlaps the computation (``overlap=True``, `step_time`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jax_aldsgd import _checks
from jax_aldsgd._schedules import Schedule


def ring_allreduce_fraction(num_workers: int) -> float:
  """Share of the model each worker sends in a ring all-reduce: ``2 (n - 1) / n``."""
  n = _checks.check_integer("num_workers", num_workers, 1)
  return 2 * (n - 1) / n


def _positive(name, value, allow_none=False):
  if allow_none and value is None:
    return None
  _checks.check_real(name, value, low=0.0, low_open=True)
  return float(value)


@dataclasses.dataclass(frozen=True)
class NetworkModel:
  """Latency/bandwidth model of the network between workers.

  Args:
    latency_s: seconds per message (per matching round, per all-reduce hop).
    link_bandwidth: bytes per second of one link, each direction.
    node_bandwidth: optional cap (bytes per second) on a node's total traffic in
      each direction; ``None`` means links never share a bottleneck.
    concurrent: if True, a step's gossip messages are all in flight at once
      (see the module docstring); the default, False, models the transforms'
      one-matching-after-another exchanges.
    overlap: if True, the exchange runs during the forward/backward pass
      (adapt-while-combine, docs/algorithm.md section 10), so a step costs
      ``max(compute, communication)`` instead of their sum (`step_time`).

  Example:
    >>> import jax_aldsgd as ald
    >>> net = ald.NetworkModel.from_gbit(1.0, latency_s=50e-6)
    >>> round(net.allreduce_time(8, 4e6), 6)  # 4 MB model, 8 workers
    0.0567
    >>> ald.NetworkModel.from_gbit(1.0, overlap=True).step_time(0.02, 0.05)
    0.05
  """

  latency_s: float
  link_bandwidth: float
  node_bandwidth: float | None = None
  concurrent: bool = False
  overlap: bool = False

  def __post_init__(self):
    _checks.check_real("latency_s", self.latency_s, low=0.0)
    _positive("link_bandwidth", self.link_bandwidth)
    _positive("node_bandwidth", self.node_bandwidth, allow_none=True)
    for name in ("concurrent", "overlap"):
      if not isinstance(getattr(self, name), bool):
        raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}.")

  @classmethod
  def from_gbit(
    cls,
    link_gbit: float,
    *,
    latency_s: float = 50e-6,
    node_gbit: float | None = None,
    concurrent: bool = False,
    overlap: bool = False,
  ) -> NetworkModel:
    """A model from bandwidths in Gbit/s (1 Gbit/s = 1.25e8 bytes/s)."""
    _positive("link_gbit", link_gbit)
    _positive("node_gbit", node_gbit, allow_none=True)
    return cls(
      latency_s,
      link_gbit * 1.25e8,
      None if node_gbit is None else node_gbit * 1.25e8,
      concurrent,
      overlap,
    )

  @property
  def _bottleneck(self) -> float:
    if self.node_bandwidth is None:
      return self.link_bandwidth
    return min(self.link_bandwidth, self.node_bandwidth)

  def gossip_time(self, schedule: Schedule, step: int, message_bytes: float) -> float:
    """Seconds for the exchanges of ``schedule`` at ``step``."""
    active = schedule.active(step)
    if not active.any():
      return 0.0
    if not self.concurrent:
      return float(active.sum()) * (self.latency_s + message_bytes / self._bottleneck)
    busiest = schedule.active_degrees(step).max()
    per_byte = 1.0 / self.link_bandwidth
    if self.node_bandwidth is not None:
      per_byte = max(per_byte, busiest / self.node_bandwidth)
    return self.latency_s + message_bytes * per_byte

  def traffic_time(self, traffic, step: int) -> float:
    """Seconds of what ``traffic`` (`jax_aldsgd.traffic`) sends at ``step``.

    The all-reduce's `allreduce_time`; for exchanges along slots,
    `gossip_time` of the communication step, with one latency per
    ``ppermute`` the message is sent in (``traffic.parts``), and nothing on
    the steps that do not communicate.
    """
    if not traffic.communicates(step):
      return 0.0
    if traffic.allreduce:
      return self.allreduce_time(traffic.num_workers, traffic.message_bytes)
    k = step // traffic.every
    extra = max(len(traffic.parts) - 1, 0) * self.latency_s
    rounds = int(traffic.schedule.active(k).sum()) if not self.concurrent else 1
    seconds = self.gossip_time(traffic.schedule, k, traffic.message_bytes)
    return seconds + (extra * rounds if seconds else 0.0)

  def gossip_times(
    self, schedule: Schedule, num_steps: int, message_bytes: float
  ) -> np.ndarray:
    """``(num_steps,)`` seconds of steps ``0 .. num_steps - 1``."""
    return np.array(
      [self.gossip_time(schedule, k, message_bytes) for k in range(num_steps)]
    )

  def allreduce_time(self, num_workers: int, model_bytes: float) -> float:
    """Seconds of one ring all-reduce of ``model_bytes`` over ``num_workers``."""
    n = _checks.check_integer("num_workers", num_workers, 1)
    return (
      2 * (n - 1) * self.latency_s
      + ring_allreduce_fraction(n) * model_bytes / self._bottleneck
    )

  def hierarchical_allreduce_time(
    self,
    num_workers: int,
    model_bytes: float,
    *,
    workers_per_host: int,
    intra_host_bandwidth: float,
    intra_host_latency_s: float = 0.0,
  ) -> float:
    """Seconds of a two-level all-reduce (see the module docstring).

    Reduce-scatter by a ring inside each host of ``g = workers_per_host``
    workers, ring all-reduce of each ``1 / g`` shard across the ``N = n / g``
    hosts (this model's latency and per-worker bandwidth), all-gather by a ring
    inside each host:
    ``2 (g - 1) L_in + 2 (g - 1) / g * M / b_in + 2 (N - 1) L
    + 2 (N - 1) / N * (M / g) / min(b, c)``.

    Args:
      num_workers: ``n``, a multiple of ``workers_per_host``.
      model_bytes: ``M``, bytes of the all-reduced tensor.
      workers_per_host: ``g >= 1`` (1 gives `allreduce_time`).
      intra_host_bandwidth: ``b_in``, bytes per second of the intra-host link
        (e.g. NVLink), each direction.
      intra_host_latency_s: ``L_in``, seconds per intra-host message.

    Raises:
      ValueError: if ``n`` is not a multiple of ``g``, naming both.
    """
    n = _checks.check_integer("num_workers", num_workers, 1)
    g = _checks.check_integer("workers_per_host", workers_per_host, 1)
    if n % g:
      raise ValueError(
        f"num_workers={n} is not a multiple of workers_per_host="
        f"{g}; use whole hosts (e.g. num_workers={n // g * g or g})."
      )
    intra = _positive("intra_host_bandwidth", intra_host_bandwidth)
    _checks.check_real("intra_host_latency_s", intra_host_latency_s, low=0.0)
    hosts = n // g
    return (
      2 * (g - 1) * intra_host_latency_s
      + ring_allreduce_fraction(g) * model_bytes / intra
      + 2 * (hosts - 1) * self.latency_s
      + ring_allreduce_fraction(hosts) * (model_bytes / g) / self._bottleneck
    )

  def step_time(self, compute_s, communication_s):
    """Seconds of a step: ``max(compute, comm)`` if ``overlap`` else their sum.

    Args:
      compute_s: seconds of the forward/backward pass and optimizer step, a
        number or an array (one entry per step).
      communication_s: seconds of the step's exchange (e.g. `gossip_time`),
        broadcastable against ``compute_s``.

    Returns:
      A float for scalar inputs, else an array of the broadcast shape.
    """
    compute = np.asarray(compute_s, float)
    communication = np.asarray(communication_s, float)
    for name, value in (("compute_s", compute), ("communication_s", communication)):
      if not np.all(np.isfinite(value)) or np.any(value < 0):
        raise ValueError(
          f"{name} must be finite and >= 0 seconds, got "
          f"{value if value.ndim == 0 else value.min()!r}"
          f"{'' if value.ndim == 0 else ' (smallest entry)'}."
        )
    total = (
      np.maximum(compute, communication) if self.overlap else compute + communication
    )
    return float(total) if total.ndim == 0 else total

  def __str__(self) -> str:
    gbit = lambda v: f"{v / 1.25e8:g} Gbit/s"
    cap = (
      "" if self.node_bandwidth is None else f", node cap {gbit(self.node_bandwidth)}"
    )
    mode = (", concurrent" if self.concurrent else "") + (
      ", overlapped" if self.overlap else ""
    )
    return (
      f"{gbit(self.link_bandwidth)} links, "
      f"{self.latency_s * 1e6:g} us latency{cap}{mode}"
    )
