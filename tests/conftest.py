"""Test setup: 16 emulated CPU devices, before JAX starts."""

import jax_aldsgd

# Enough devices for the 16-worker paper graphs; smaller meshes use a prefix.
# A stuck collective aborts after 60 s instead of hanging the suite.
jax_aldsgd.emulate_cpu_devices(16, collective_timeout_seconds=60)
