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
      2 * (LATENCY + MESSAGE / LINK))
  # Paper graph 0 has 5 matchings; the reference quirk uses 1 per step.
  assert net.gossip_time(S.alternating(T.paper_graph(0)), 3, MESSAGE) == (
      pytest.approx(LATENCY + MESSAGE / LINK))
  # A node cap below the link speed is the bottleneck of every round.
  capped = ald.NetworkModel(LATENCY, LINK, node_bandwidth=LINK / 4)
  assert capped.gossip_time(S.full(T.ring(8)), 0, MESSAGE) == pytest.approx(
      2 * (LATENCY + 4 * MESSAGE / LINK))
  assert net.gossip_time(S.explicit(T.ring(8), [set()]), 0, MESSAGE) == 0.0


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
      LATENCY + MESSAGE * max(1 / LINK, 5 / NODE))
  fast_nodes = ald.NetworkModel(LATENCY, LINK, node_bandwidth=100 * LINK,
                                concurrent=True)
  assert fast_nodes.gossip_time(complete, 0, MESSAGE) == pytest.approx(
      LATENCY + MESSAGE / LINK)


@pytest.mark.parametrize("n", [2, 8, 16])
def test_ring_allreduce(n):
  net = ald.NetworkModel(LATENCY, LINK)
  assert net.allreduce_time(n, MESSAGE) == pytest.approx(
      2 * (n - 1) * LATENCY + 2 * (n - 1) / n * MESSAGE / LINK)
  assert ald.NetworkModel(LATENCY, LINK, node_bandwidth=LINK / 2).allreduce_time(
      n, MESSAGE) == pytest.approx(
          2 * (n - 1) * LATENCY + 2 * (n - 1) / n * MESSAGE / (LINK / 2))


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
