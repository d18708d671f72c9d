"""The public surface: ``__all__``, the compatibility table, and what a step sends."""

from __future__ import annotations

import inspect
import itertools
import pathlib
import re

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_aldsgd as ald
from jax_aldsgd import _compat
from jax_aldsgd import compressors as C
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T
from tests.lib.test_directed import Shifts


def test_star_import_works():
  namespace = {}
  exec("from jax_aldsgd import *", namespace)
  assert {"gossip", "adjacent_leader", "traffic", "schedules"} <= set(namespace)


@pytest.mark.parametrize(
  "module", [ald, ald.exchange, ald.schedules, ald.topologies, ald.compressors]
)
def test_all_is_exactly_the_public_api(module):
  public = {name for name in vars(module) if not name.startswith("_")}
  public -= {"annotations"}  # from __future__
  assert set(module.__all__) == public
  assert len(module.__all__) == len(set(module.__all__))
  for name in module.__all__:
    assert getattr(module, name) is not None


# ----------------------------------------------------------------------------
# The compatibility table: one message per refusal, wherever it is met.

_SCHEDULE = S.full(T.ring(8))
_VALUES = dict(
  compressor=C.top_k(0.5), delay=2, overlap=True, every=2, skip_nonfinite=True
)
_FACTORIES = dict(
  gossip=lambda **o: ald.gossip(o.pop("schedule", _SCHEDULE), **o),
  adjacent_leader=lambda **o: ald.adjacent_leader(o.pop("schedule", _SCHEDULE), **o),
  allreduce=lambda **o: ald.allreduce(**o),
  quasi_global_momentum=lambda **o: ald.quasi_global_momentum(
    0.1, o.pop("schedule", _SCHEDULE), **o
  ),
  d2_gossip=lambda **o: ald.d2_gossip(o.pop("schedule", _SCHEDULE), **o),
  tracking_gossip=lambda **o: ald.tracking_gossip(
    0.1, o.pop("schedule", _SCHEDULE), **o
  ),
)


def _options(features):
  options = {f: _VALUES[f] for f in features if f in _VALUES}
  if "directed" in features:
    options["schedule"] = Shifts()
  return options


@pytest.mark.parametrize(
  "pair", sorted(tuple(sorted(p)) for p in _compat.REFUSED), ids="+".join
)
def test_every_refusal_has_one_message_everywhere(pair):
  exchange = next((f for f in pair if f in _compat.EXCHANGES), "gossip")
  options = _options(set(pair) - {exchange})
  with pytest.raises(ValueError) as refused:
    ald.check_options(exchange, **options)
  message = str(refused.value)
  why, fix = _compat.REFUSED[frozenset(pair)]
  assert message.endswith(f": {why}; {fix}.")
  factory = _FACTORIES[exchange]
  accepted = inspect.signature(getattr(ald, exchange)).parameters
  if all(name in accepted for name in options):
    with pytest.raises(ValueError, match=re.escape(message)):
      factory(**options)


@pytest.mark.parametrize(
  "exchange, features",
  [
    (e, pair)
    for e in _compat.EXCHANGES
    for pair in itertools.combinations(_compat.OPTIONS, 2)
    if not any(
      frozenset(x) in _compat.REFUSED for x in itertools.combinations((e,) + pair, 2)
    )
    and not (e == "allreduce" and "directed" in pair)
  ],
)
def test_what_the_table_allows_builds(exchange, features):
  options = _options(features)
  ald.check_options(exchange, **options)
  accepted = inspect.signature(getattr(ald, exchange)).parameters
  if all(name in accepted for name in options):
    assert _FACTORIES[exchange](**options) is not None


def test_table_renders_every_refusal():
  table = ald.compatibility_table()
  rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
  assert set(rows) == set(_compat.EXCHANGES + _compat.OPTIONS)
  header = [c.strip() for c in table.splitlines()[0].split("|")[2:-1]]
  for a, b in itertools.product(rows, header):
    cell = rows[a].split("|")[2 + header.index(b)].strip()
    if frozenset({a, b}) in _compat.REFUSED:
      assert cell == "no", (a, b)
    elif a != b:
      assert cell in ("yes", "–"), (a, b)


# ----------------------------------------------------------------------------
# What a step sends, for every transform the library builds.

PARAMS = {"w": jnp.zeros((10, 4)), "b": jnp.zeros(4)}  # 44 float32: 176 bytes
ALTERNATING = S.alternating(T.paper_graph(0))


@pytest.mark.parametrize(
  "tx, parts",
  [
    (ald.gossip(_SCHEDULE), (176,)),
    (ald.gossip(_SCHEDULE, skip_nonfinite=True), (180,)),
    (ald.gossip(_SCHEDULE, delay=1), (180,)),
    (ald.adjacent_leader(_SCHEDULE), (8, 176)),  # two matchings: ranks first
    (ald.adjacent_leader(ALTERNATING), (184,)),  # one matching: one message
    (
      ald.gossip(_SCHEDULE, compressor=C.top_k(0.25)),
      ((10 + 1) * 8,),
    ),  # k = 10 of w, 1 of b
    (ald.adjacent_leader(ALTERNATING, compressor=C.top_k(0.25)), (8, 88)),
    (ald.dsgd(0.1, _SCHEDULE, overlap=True), (176,)),
    (ald.aldsgd(0.1, ALTERNATING, every=3), (184,)),
  ],
)
def test_traffic_parts(tx, parts):
  traffic = ald.traffic(tx, PARAMS)
  assert traffic.parts == parts
  assert traffic.message_bytes == sum(parts)


def test_traffic_of_every_and_allreduce():
  gossip = ald.traffic(ald.gossip(_SCHEDULE, every=3), PARAMS)
  assert [gossip.sent_bytes(k)[0] for k in range(4)] == [352, 0, 0, 352]
  assert gossip.ppermutes(0)[0] == 2 and gossip.ppermutes(1)[0] == 0
  mean = ald.traffic(ald.allreduce(every=2), PARAMS, num_workers=8)
  assert mean.allreduce and mean.parts == ()
  np.testing.assert_allclose(mean.sent_bytes(0), 2 * 7 / 8 * 176)
  np.testing.assert_allclose(mean.sent_bytes(1), 0.0)
  local = ald.traffic(ald.local_sgd(0.1), PARAMS, num_workers=8)
  np.testing.assert_array_equal(local.sent_bytes(0), np.zeros(8))
  with pytest.raises(ValueError, match="num_workers"):
    ald.traffic(ald.allreduce(), PARAMS)
  with pytest.raises(TypeError, match="optax.chain"):
    ald.traffic(optax.chain(optax.sgd(0.1), ald.gossip(_SCHEDULE)), PARAMS)
  network = ald.NetworkModel.from_gbit(1.0, latency_s=1e-3)
  assert network.traffic_time(gossip, 1) == 0.0
  np.testing.assert_allclose(
    network.traffic_time(gossip, 3), network.gossip_time(_SCHEDULE, 1, 176)
  )
  leader = ald.traffic(ald.adjacent_leader(_SCHEDULE), PARAMS)
  np.testing.assert_allclose(  # one more latency per active matching
    network.traffic_time(leader, 0),
    network.gossip_time(_SCHEDULE, 0, 184) + 2 * 1e-3,
  )


def test_the_docs_show_the_table():
  algorithm = pathlib.Path(__file__).parents[2] / "docs" / "algorithm.md"
  assert ald.compatibility_table() in algorithm.read_text()
