"""The reference code's epoch phase: rotation and pull period restart each epoch.

The reference training loop picks the graph by ``batch_idx % 2`` (graph g+1 at
even, g at odd batch indices), lets each graph's processor count its own uses
for its flags, and pulls when ``batch_idx % iteration == 0``. Below is a plain
transcription of those conditions, checked step by step against
``schedules.rotating(..., restart_every=E)`` and ``aldsgd(...,
pull_restart_every=E)`` over epochs of odd length.
"""

import numpy as np
import pytest

import jax_aldsgd as ald
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T
from tests import helpers, reference

EPOCH = 7  # batches per epoch: odd, like CIFAR-10's 391
EPOCHS = 3
G0, G1 = T.paper_graph(0), T.paper_graph(1)


def alternating_flags(num_matchings, uses):
  """The reference's fixed-graph processor: [0, 1, 0, ...], [1, 0, 0, ...], ..."""
  flags = [False] * num_matchings
  flags[1 if uses % 2 == 0 else 0] = True
  return flags


def reference_loop(flags_of, pull_period):
  """(graph id, its flags, pull) per step, as the reference's loop decides them.

  ``flags_of[g](uses)`` gives graph g's flags at its processor's ``uses``-th use.
  """
  uses = {0: 0, 1: 0}
  steps = []
  for _ in range(EPOCHS):
    for batch_idx in range(EPOCH):
      graph = 1 if batch_idx % 2 == 0 else 0
      steps.append((graph, flags_of[graph](uses[graph]), batch_idx % pull_period == 0))
      uses[graph] += 1
  return steps


def _as_slots(graph, flags):
  """Our slot order for rotating([s(G1), s(G0)]): G1's matchings, then G0's."""
  off1 = [False] * G1.num_matchings
  off0 = [False] * G0.num_matchings
  return (list(flags) + off0) if graph == 1 else (off1 + list(flags))


@pytest.mark.parametrize("kind", ["alternating", "matcha"])
def test_schedule_follows_the_reference_loop(kind):
  if kind == "alternating":
    children = [S.alternating(G1), S.alternating(G0)]
    flags_of = {
      1: lambda t: alternating_flags(G1.num_matchings, t),
      0: lambda t: alternating_flags(G0.num_matchings, t),
    }
  else:
    children = [S.matcha(G1, 0.5, seed=3), S.matcha(G0, 0.5, seed=4)]
    # MATCHA's flags at a processor's t-th use are its definition.
    flags_of = {
      1: lambda t: children[0].active(t).tolist(),
      0: lambda t: children[1].active(t).tolist(),
    }
  schedule = S.rotating(children, restart_every=EPOCH)
  for k, (graph, flags, _) in enumerate(reference_loop(flags_of, 1)):
    assert schedule.graph_index(k) == (0 if graph == 1 else 1), k
    assert schedule.active(k).tolist() == _as_slots(graph, flags), k
  # Each epoch starts with graph 1 again, so it runs twice in a row there.
  assert schedule.graph_index(EPOCH - 1) == schedule.graph_index(EPOCH) == 0


def test_without_restart_the_rotation_runs_on_the_global_step():
  schedule = S.rotating([S.alternating(G1), S.alternating(G0)])
  assert [schedule.graph_index(k) for k in range(EPOCH + 2)] == [
    k % 2 for k in range(EPOCH + 2)
  ]


def test_aldsgd_pulls_when_the_reference_does():
  schedule = S.rotating([S.alternating(G1), S.alternating(G0)], restart_every=EPOCH)
  flags_of = {
    1: lambda t: alternating_flags(G1.num_matchings, t),
    0: lambda t: alternating_flags(G0.num_matchings, t),
  }
  loop = reference_loop(flags_of, pull_period=3)
  rng = np.random.default_rng(0)
  dim = helpers.flat_dim(helpers.SHAPES)
  problem, x0 = reference.Quadratic(rng, 8, dim), rng.normal(size=(8, dim))
  coefficients = dict(c1=0.3, c2=0.1, p1=0.2, p2=0.2)
  lr, steps = 0.05, len(loop)
  tx = ald.aldsgd(lr, schedule, pull_every=3, pull_restart_every=EPOCH, **coefficients)
  got, _, _ = helpers.run(tx, x0, problem, steps, ald.worker_mesh(8))
  matchings = [list(m) for m in G1.matchings] + [list(m) for m in G0.matchings]
  weights = [schedule.neighbor_weight[0]] * G1.num_matchings + [
    schedule.neighbor_weight[1]
  ] * G0.num_matchings
  x = np.array(x0, np.float64)
  for graph, flags, pull in loop:
    losses = problem.loss(x)
    x_hat = reference.sgd_step(x, problem.grad(x), lr, 0.0)
    x = reference.adjacent_leader(
      x_hat,
      losses,
      matchings,
      _as_slots(graph, flags),
      weights,
      pull=pull,
      **coefficients,
    )
  np.testing.assert_allclose(got, x, rtol=1e-4, atol=1e-5)
  assert [pull for _, _, pull in loop[EPOCH : EPOCH + 4]] == [True, False, False, True]


def test_bad_restart():
  with pytest.raises(ValueError, match="restart_every must be an integer >= 1"):
    S.rotating([S.full(G1), S.full(G0)], restart_every=0)
  with pytest.raises(ValueError, match="pull_restart_every must be an integer"):
    ald.aldsgd(0.1, S.full(G0), pull_restart_every=0)
