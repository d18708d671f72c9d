"""Multi-process runs (JAX's multi-controller runtime, CPU collectives on loopback)."""

import sys

import numpy as np
import pytest

from tests import helpers


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
  """2 processes x 4 devices give the same parameters as 1 process x 8."""
  job = str(helpers.ROOT / "tests" / "multihost_job.py")
  port = helpers.free_port()
  helpers.run_together(
    [
      [sys.executable, job, str(i), "2", str(port), str(tmp_path / "two")]
      for i in range(2)
    ]
  )
  helpers.run_together([[sys.executable, job, "0", "1", "0", str(tmp_path / "one")]])
  two, one = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
  for method in ("dsgd", "aldsgd"):
    assert np.isfinite(one[method]).all()
    np.testing.assert_array_equal(two[method], one[method])
