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

jax_aldsgd.emulate_cpu_devices(16, collective_timeout_seconds=60)
