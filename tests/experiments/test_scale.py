"""experiments.scale: the sweep's rows against the network model's closed forms."""

import numpy as np
import pytest

import jax_aldsgd as ald
from experiments import scale


def test_scale_sweep_against_closed_forms():
  """experiments.scale's rows are the model's formulas, written out here."""
  params = scale.MODELS["resnet50"]
  assert scale.compressed_bytes("none", params, 174) == 4 * params
  assert scale.compressed_bytes("topk10", params, 174) == pytest.approx(
    0.1 * params * (4 + 4)
  )
  assert scale.compressed_bytes("sign", params, 174) == params / 8 + 4 * 174
  assert scale.compressed_bytes("qsgd16", params, 174) == params + 4 * 174
  with pytest.raises(ValueError, match="compressor must be one of"):
    scale.compressed_bytes("topk", params, 1)
  latency, link = 50e-6, 1.25e9
  net = ald.NetworkModel(latency, link)
  sweep = scale.Sweep(
    [16],
    [net],
    {"resnet50": 20.0, "100m": 150.0},
    matcha_max_n=0,
    intra_bandwidth=1e11,
    intra_latency_s=2e-6,
  )
  listed = sweep.rows()
  rows = {(r["model"], scale.label(r)): r for r in listed}
  m, compute = 4 * params, 0.02
  ring_allreduce = 2 * 15 * latency + 2 * 15 / 16 * m / link
  assert rows["resnet50", "ring all-reduce"]["step_s"] == pytest.approx(
    compute + ring_allreduce
  )
  # A 4 x 4 torus has 4 matchings, one after the other.
  torus = 4 * (latency + m / link)
  assert rows["resnet50", "torus"]["step_s"] == pytest.approx(compute + torus)
  assert rows["resnet50", "torus + overlap"]["step_s"] == pytest.approx(
    max(compute, torus)
  )
  sign = 4 * (latency + (params / 8 + 4 * 174) / link)
  assert rows["resnet50", "torus + CHOCO sign"]["step_s"] == pytest.approx(
    compute + sign
  )
  # The one-peer exponential graph: one message a step, and no CHOCO rows (the
  # library refuses a compressor on a directed schedule).
  assert rows["resnet50", "one-peer exponential"]["step_s"] == pytest.approx(
    compute + latency + m / link
  )
  assert not [key for key in rows if key[1].startswith("one-peer exponential + CHOCO")]
  assert scale.wire_formats(sweep.schedules["one-peer", 16]) == ("none",)
  gaps = sweep.gaps()
  # Ring of 16 with alpha = 2 / (lambda_2 + lambda_max) = 2 / (2 - 2 cos(2 pi / 16) + 4).
  alpha = 2 / (2 - 2 * np.cos(2 * np.pi / 16) + 4)
  assert gaps["ring", 16] == pytest.approx(alpha * (2 - 2 * np.cos(2 * np.pi / 16)))
  assert gaps["one-peer", 16] == 1.0  # 4 steps average exactly
  verdict = scale.one_peer_verdict(listed, gaps, sweep.rounds, [16])
  assert verdict.startswith("It dominates") and "faster in 2 of 2" in verdict
