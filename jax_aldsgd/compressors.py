"""Compressors for compressed gossip (CHOCO-SGD): `top_k`, `random_k`, `qsgd`, ...

Each constructor validates its arguments and returns a small frozen compressor
object; pass it to `jax_aldsgd.gossip`, `jax_aldsgd.adjacent_leader`, `dsgd` or
`aldsgd` as ``compressor=``. Its ``message_bytes(size)`` says what one leaf of
``size`` entries costs on the wire.

Example:
  CHOCO-SGD with top-10% messages: eight workers on a ring, each pulled toward
  its own target (spread 4.6), keep the mean of the targets (7.5) and draw
  together (spread 2.7; plain gossip: 1.4) while each message carries a tenth of
  the parameters and their indices:

  >>> import jax, jax.numpy as jnp, optax, jax_aldsgd as ald
  >>> mesh = ald.worker_mesh(8)  # on CPU: ald.emulate_cpu_devices(8) before JAX starts
  >>> schedule = ald.schedules.full(ald.topologies.ring(8))
  >>> top10 = ald.compressors.top_k(0.1)
  >>> tx = ald.dsgd(0.1, schedule, compressor=top10, consensus_lr=0.3)
  >>> def step(w, state, target):  # one worker's view: its w and its target
  ...   loss, grad = jax.value_and_grad(lambda w: jnp.sum((w - target) ** 2))(w)
  ...   updates, state = tx.update(grad, state, w, loss=loss)
  ...   return optax.apply_updates(w, updates), state
  >>> step = jax.jit(ald.worker_map(step, mesh))
  >>> target = jnp.repeat(jnp.arange(8.0)[:, None] * 2 + 0.5, 20, axis=1)  # (8, 20)
  >>> w = jnp.zeros((8, 20))
  >>> state = jax.jit(ald.worker_map(tx.init, mesh))(w)
  >>> for _ in range(300):
  ...   w, state = step(w, state, target)
  >>> round(float(w.mean()), 2), round(float(w.std(0).max()), 1)
  (7.5, 2.7)
  >>> ald.choco_message_bytes(w[0], top10), ald.gossip_message_bytes(w[0])
  (16, 80)
"""

from jax_aldsgd._compressors import Compressor as Compressor
from jax_aldsgd._compressors import identity as identity
from jax_aldsgd._compressors import qsgd as qsgd
from jax_aldsgd._compressors import random_k as random_k
from jax_aldsgd._compressors import scaled_sign as scaled_sign
from jax_aldsgd._compressors import top_k as top_k

__all__ = [
  "Compressor",
  "identity",
  "qsgd",
  "random_k",
  "scaled_sign",
  "top_k",
]
