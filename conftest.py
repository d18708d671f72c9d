"""Test setup for `pytest` (tests/ and the library's doctests): emulated devices.

Runs before JAX starts: 16 emulated CPU devices, enough for the 16-worker paper
graphs (smaller meshes use a prefix); a stuck collective aborts after 60 s
instead of hanging the suite.
"""

import jax_aldsgd

jax_aldsgd.emulate_cpu_devices(16, collective_timeout_seconds=60)
