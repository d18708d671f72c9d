"""Compressors for compressed gossip (CHOCO-SGD): `top_k`, `random_k`, `qsgd`, ...

Each constructor validates its arguments and returns a small frozen compressor
object; pass it to `jax_aldsgd.gossip`, `jax_aldsgd.adjacent_leader`, `dsgd` or
`aldsgd` as ``compressor=``. Its ``message_bytes(size)`` says what one leaf of
``size`` entries costs on the wire.
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
