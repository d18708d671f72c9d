"""Building blocks for a decentralized method of your own (see docs/adding_a_method.md).

A method is one optax transform that runs inside ``jax.shard_map`` over the
workers' mesh axis: it packs what it sends (`pack`), learns from the schedule
what this step exchanges (`neighborhood`), exchanges and combines slot by slot
(`fold`, or `fold_messages` for a message per slot), and says what a step
sends (`transformation` with a `Traffic`), so that `jax_aldsgd.traffic`, the
trainer and `jax_aldsgd.NetworkModel` account for it. The words (slot,
pattern, group, ...) are defined in ``jax_aldsgd._plan``'s docstring.
"""

from jax_aldsgd._checks import check_loss as check_loss
from jax_aldsgd._checks import check_params as check_params
from jax_aldsgd._fold import fold as fold
from jax_aldsgd._fold import fold_messages as fold_messages
from jax_aldsgd._packing import buffer_finite as buffer_finite
from jax_aldsgd._packing import buffer_healthy as buffer_healthy
from jax_aldsgd._packing import message_bytes as message_bytes
from jax_aldsgd._packing import pack as pack
from jax_aldsgd._plan import Neighborhood as Neighborhood
from jax_aldsgd._plan import neighborhood as neighborhood
from jax_aldsgd._traffic import Traffic as Traffic
from jax_aldsgd._traffic import transformation as transformation
from jax_aldsgd._workers import mean_over_workers as mean_over_workers
from jax_aldsgd._workers import worker_index as worker_index

__all__ = [
  "Neighborhood",
  "Traffic",
  "buffer_finite",
  "buffer_healthy",
  "check_loss",
  "check_params",
  "fold",
  "fold_messages",
  "mean_over_workers",
  "message_bytes",
  "neighborhood",
  "pack",
  "transformation",
  "worker_index",
]
