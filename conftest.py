"""Test setup for `pytest` (tests/ and the library's doctests): emulated devices
and a compilation cache.

Runs before JAX starts: 16 emulated CPU devices, enough for the 16-worker paper
graphs (smaller meshes use a prefix); a stuck collective aborts after 60 s
instead of hanging the suite.

Compiling dominates the suite's time, and many tests compile the same
programs (a trainer's step in each of a test's subprocesses, a transform in
several tests), so JAX's persistent compilation cache is on, in
``.pytest_cache/jax_compilation_cache`` (shared by pytest-xdist's workers and
the subprocesses, which inherit the environment; kept between runs, keyed by
the program, the JAX version and the devices; delete it at will), unless
``JAX_COMPILATION_CACHE_DIR`` is set already. Measured on the trainer's tests
(tests/experiments/test_train.py) from an empty cache: 21% less CPU time.

The tests' programs are tiny and most run a few steps, so XLA's CPU compiler
is told to compile fast rather than emit fast code (`TEST_XLA_FLAGS`: the
older loop emitters instead of the MLIR fusion emitters). Measured on the
conformance table's jit test from an empty cache: 104 s of CPU time with
XLA's defaults, 66 s with this flag; the whole suite, run back to back: 1126
s with the defaults, 945 s with the flag. (Adding LLVM without optimisation,
``--xla_backend_optimization_level=0``, gave 47 s, but then several workers
per device no longer equal one worker per device bit for bit, by one float32
ulp; with either flag alone they do.) Flags of your
own in ``XLA_FLAGS`` come after them and win; the subprocesses the tests start
inherit them (`tests.helpers.fresh_env`). The whole suite passes with XLA's
defaults too: ``XLA_FLAGS=--xla_cpu_use_fusion_emitters=true``.
"""

import os
import pathlib

os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR",
  str(pathlib.Path(__file__).parent / ".pytest_cache" / "jax_compilation_cache"),
)
# Cache every program, however quick to compile or small.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import jax_aldsgd  # noqa: E402  (after the environment JAX reads at import)
from jax_aldsgd import _mesh  # noqa: E402

# XLA reads XLA_FLAGS when the backend starts (after this file), not at import.
TEST_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false"
# XLA aborts on a flag it does not know ("Unknown flag in XLA_FLAGS"), so only
# on the jaxlib versions seen to have it: 0.8.0 (the oldest we support) to
# 0.10.2. A newer jaxlib runs the tests with XLA's defaults (slower) until
# someone checks that it still has the flag and raises the bound.
if (0, 8, 0) <= _mesh._jaxlib_version() < (0, 11, 0) and not os.environ.get(
  "XLA_FLAGS", ""
).startswith(TEST_XLA_FLAGS):
  os.environ["XLA_FLAGS"] = f"{TEST_XLA_FLAGS} {os.environ.get('XLA_FLAGS', '')}"

jax_aldsgd.emulate_cpu_devices(16, collective_timeout_seconds=60)
