"""The README's quick example runs as written, in a fresh process."""

import pathlib
import re
import subprocess
import sys

from tests import helpers

README = pathlib.Path(__file__).parents[2] / "README.md"


def test_quick_example_runs_as_written():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert len(blocks) == 1
  result = subprocess.run(
    [sys.executable, "-c", blocks[0]],
    env=helpers.fresh_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr
  losses = re.search(r"per-worker loss: \[([^\]]*)\]", result.stdout).group(1)
  assert max(float(v) for v in losses.split()) < 1e-3
