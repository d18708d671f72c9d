"""The network model against closed forms."""

import numpy as np
import pytest

import jax_aldsgd as ald
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T

LATENCY, LINK, NODE = 1e-4, 1e9, 2.5e9  # s, bytes/s, bytes/s
MESSAGE = 4e6  # bytes


def test_sequential_gossip_costs_one_round_per_active_matching():
  net = ald.NetworkModel(LATENCY, LINK)
  # A ring of 8 has 2 matchings; D-PSGD uses both at every step.
  assert net.gossip_time(S.full(T.ring(8)), 0, MESSAGE) == pytest.approx(
    2 * (LATENCY + MESSAGE / LINK)
  )
  # Paper graph 0 has 5 matchings; the reference quirk uses 1 per step.
  assert net.gossip_time(S.alternating(T.paper_graph(0)), 3, MESSAGE) == (
    pytest.approx(LATENCY + MESSAGE / LINK)
  )
  # A node cap below the link speed is the bottleneck of every round.
  capped = ald.NetworkModel(LATENCY, LINK, node_bandwidth=LINK / 4)
  assert capped.gossip_time(S.full(T.ring(8)), 0, MESSAGE) == pytest.approx(
    2 * (LATENCY + 4 * MESSAGE / LINK)
  )
  assert net.gossip_time(S.explicit(T.ring(8), [set()]), 0, MESSAGE) == 0.0


def test_one_peer_exponential_costs_one_message_per_step():
  peer = S.one_peer_exponential(8)
  one = LATENCY + MESSAGE / LINK
  net = ald.NetworkModel(LATENCY, LINK)
  np.testing.assert_allclose(net.gossip_times(peer, 6, MESSAGE), one)
  concurrent = ald.NetworkModel(LATENCY, LINK, node_bandwidth=NODE, concurrent=True)
  assert concurrent.gossip_time(peer, 1, MESSAGE) == pytest.approx(one)
  traffic = ald.traffic(ald.gossip(peer), np.zeros(int(MESSAGE) // 4, np.float32))
  assert [net.traffic_time(traffic, k) for k in range(4)] == [pytest.approx(one)] * 4
  # The plain exponential graph of 8 (i ~ i +/- 1, 2, 4: degree 5) takes one
  # round per matching, every step.
  exponential = T.exponential(8)
  assert exponential.num_matchings >= 5
  assert net.gossip_time(S.full(exponential), 0, MESSAGE) == pytest.approx(
    exponential.num_matchings * one
  )


def test_matcha_time_is_proportional_to_its_active_matchings():
  schedule = S.matcha(T.paper_graph(0), 0.5, seed=1)
  net = ald.NetworkModel(LATENCY, LINK)
  times = net.gossip_times(schedule, 2000, MESSAGE)
  rounds = np.array([schedule.active(k).sum() for k in range(2000)])
  np.testing.assert_allclose(times, rounds * (LATENCY + MESSAGE / LINK))
  # On average sum(p) matchings per step = budget * R.
  assert abs(rounds.mean() - 0.5 * 5) < 0.1


def test_concurrent_gossip_is_limited_by_the_busiest_node():
  complete = S.full(T.complete(6))  # every node has degree 5
  net = ald.NetworkModel(LATENCY, LINK, node_bandwidth=NODE, concurrent=True)
  assert net.gossip_time(complete, 0, MESSAGE) == pytest.approx(
    LATENCY + MESSAGE * max(1 / LINK, 5 / NODE)
  )
  fast_nodes = ald.NetworkModel(
    LATENCY, LINK, node_bandwidth=100 * LINK, concurrent=True
  )
  assert fast_nodes.gossip_time(complete, 0, MESSAGE) == pytest.approx(
    LATENCY + MESSAGE / LINK
  )


@pytest.mark.parametrize("n", [2, 8, 16])
def test_ring_allreduce(n):
  net = ald.NetworkModel(LATENCY, LINK)
  assert net.allreduce_time(n, MESSAGE) == pytest.approx(
    2 * (n - 1) * LATENCY + 2 * (n - 1) / n * MESSAGE / LINK
  )
  assert ald.NetworkModel(LATENCY, LINK, node_bandwidth=LINK / 2).allreduce_time(
    n, MESSAGE
  ) == pytest.approx(2 * (n - 1) * LATENCY + 2 * (n - 1) / n * MESSAGE / (LINK / 2))


def test_units_and_bad_input():
  net = ald.NetworkModel.from_gbit(10, latency_s=0)
  assert net.link_bandwidth == 1.25e9
  assert "10 Gbit/s links" in str(net)
  with pytest.raises(ValueError, match="link_bandwidth must be in \\(0.0, inf\\]"):
    ald.NetworkModel(1e-4, 0.0)
  with pytest.raises(ValueError, match="latency_s must be in"):
    ald.NetworkModel(-1.0, 1e9)
  with pytest.raises(ValueError, match="node_gbit must be"):
    ald.NetworkModel.from_gbit(1, node_gbit=-2)


@pytest.mark.parametrize("n,g", [(8, 1), (8, 8), (16, 4), (64, 8), (1024, 8)])
def test_hierarchical_allreduce(n, g):
  intra, intra_latency = 40 * LINK, 2e-6
  net = ald.NetworkModel(LATENCY, LINK)
  hosts = n // g
  # Reduce-scatter and all-gather inside a host: (g - 1) rounds each, of M / g
  # bytes over the intra-host link; the ring across hosts carries M / g per rank.
  inside = 2 * (g - 1) * (intra_latency + MESSAGE / g / intra)
  across = 2 * (hosts - 1) * (LATENCY + MESSAGE / g / hosts / LINK)
  assert net.hierarchical_allreduce_time(
    n,
    MESSAGE,
    workers_per_host=g,
    intra_host_bandwidth=intra,
    intra_host_latency_s=intra_latency,
  ) == pytest.approx(inside + across)
  if g == 1:  # one worker per host is the flat ring
    assert net.hierarchical_allreduce_time(
      n, MESSAGE, workers_per_host=1, intra_host_bandwidth=intra
    ) == pytest.approx(net.allreduce_time(n, MESSAGE))


def test_hierarchical_allreduce_bad_input():
  net = ald.NetworkModel(LATENCY, LINK)
  with pytest.raises(
    ValueError, match="num_workers=12 is not a multiple of workers_per_host=8"
  ):
    net.hierarchical_allreduce_time(
      12, MESSAGE, workers_per_host=8, intra_host_bandwidth=LINK
    )
  with pytest.raises(ValueError, match="intra_host_bandwidth must be in"):
    net.hierarchical_allreduce_time(
      16, MESSAGE, workers_per_host=8, intra_host_bandwidth=0.0
    )


def test_overlap_takes_the_longer_of_compute_and_communication():
  compute = np.array([0.02, 0.05, 0.0])
  comm = np.array([0.03, 0.01, 0.0])
  serial = ald.NetworkModel(LATENCY, LINK)
  overlapped = ald.NetworkModel.from_gbit(8.0, latency_s=LATENCY, overlap=True)
  np.testing.assert_allclose(serial.step_time(compute, comm), [0.05, 0.06, 0.0])
  np.testing.assert_allclose(overlapped.step_time(compute, comm), [0.03, 0.05, 0.0])
  assert overlapped.step_time(0.02, 0.03) == 0.03
  assert isinstance(serial.step_time(0.02, 0.03), float)
  assert "overlapped" in str(overlapped) and "overlapped" not in str(serial)
  with pytest.raises(ValueError, match="compute_s must be finite and >= 0"):
    serial.step_time(-1.0, 0.0)
  with pytest.raises(ValueError, match="communication_s must be finite"):
    serial.step_time(0.0, [0.1, float("nan")])
  with pytest.raises(TypeError, match="overlap must be True or False"):
    ald.NetworkModel(LATENCY, LINK, overlap="yes")
