"""What one step of a transform sends: `Traffic`, and `traffic` to ask for it.

Every exchange the library builds carries its traffic: the factory that packs
a message also says how large it is and in which ``ppermute`` s it travels
(`transformation`), the wrappers pass it on (``every`` scales it), and
`traffic` reads it back. The trainer, ``experiments.compare``, the benchmark
and `NetworkModel` all ask `traffic`, so the bytes they report are the
message layout the code sends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np
import optax

from jax_aldsgd import _checks
from jax_aldsgd._network import ring_allreduce_fraction
from jax_aldsgd._schedules import Schedule


@dataclasses.dataclass(frozen=True)
class Traffic:
  """What each step of a transform sends, per worker.

  Attributes:
    num_workers: the number of workers ``n`` (None only inside an exchange
      that does not know it; `traffic` fills it in).
    message_bytes: one message: what a worker sends along one active slot
      (gossip, AL-DSGD, CHOCO, push-sum), or the buffer it all-reduces; 0 when
      nothing is exchanged.
    parts: the sizes in bytes of the ``ppermute`` s one active slot's message
      is sent in, in order (they add up to ``message_bytes``); ``()`` for the
      all-reduce and for no communication.
    schedule: the schedule of the communication steps (None: all-reduce or
      nothing).
    allreduce: whether the step is a (ring) all-reduce of the message.
    every: communication happens at steps 0, every, 2 every, ...; the
      schedule counts communication steps only.
  """

  num_workers: int | None
  message_bytes: int = 0
  parts: tuple[int, ...] = ()
  schedule: Schedule | None = None
  allreduce: bool = False
  every: int = 1

  def communicates(self, step: int) -> bool:
    """Whether ``step`` exchanges anything."""
    exchanges = self.allreduce or self.schedule is not None
    return exchanges and step % self.every == 0

  def _degrees(self, step: int) -> np.ndarray:
    """``(n,)`` active slots each worker sends in at ``step``."""
    if self.schedule is None or not self.communicates(step):
      return np.zeros(self.num_workers, int)
    return self.schedule.active_degrees(step // self.every)

  def sent_bytes(self, step: int) -> np.ndarray:
    """``(n,)`` bytes each worker sends at ``step``."""
    if self.allreduce:
      per_step = ring_allreduce_fraction(self.num_workers) * self.message_bytes
      return np.full(self.num_workers, per_step if self.communicates(step) else 0.0)
    return self._degrees(step) * self.message_bytes

  def ppermutes(self, step: int) -> np.ndarray:
    """``(n,)`` ``ppermute`` s each worker sends at ``step`` (0 for all-reduce)."""
    return self._degrees(step) * len(self.parts)

  def scaled(self, every: int) -> Traffic:
    """This traffic when it runs only every ``every`` steps."""
    return dataclasses.replace(self, every=self.every * every)


class Transformation(optax.GradientTransformationExtraArgs):
  """An optax transform that knows what its steps send (see `traffic`).

  A plain ``optax.GradientTransformationExtraArgs`` (``optax.chain`` and
  ``optax.inject_hyperparams`` treat it as one) with one more attribute,
  ``traffic_of``: ``params -> Traffic``.
  """


def transformation(
  init: Callable, update: Callable, traffic_of: Callable | None
) -> Transformation:
  """``optax.GradientTransformationExtraArgs(init, update)`` carrying its traffic.

  Args:
    init, update: the transform's functions.
    traffic_of: ``params -> Traffic`` for one worker's ``params`` (arrays or
      ``jax.ShapeDtypeStruct``); None for a transform that sends nothing.
  """
  tx = Transformation(init, update)
  tx.traffic_of = traffic_of
  return tx


def carry_traffic(
  tx: optax.GradientTransformationExtraArgs, source, every: int = 1
) -> optax.GradientTransformationExtraArgs:
  """``tx`` carrying ``source``'s traffic (run every ``every`` steps).

  For wrappers and named optimizers: what ``tx`` sends is what ``source``
  (the exchange inside it) sends.
  """
  inner = getattr(source, "traffic_of", _UNKNOWN)
  if inner is _UNKNOWN:
    return tx
  if _checks.is_traced(every):  # under inject_hyperparams: not asked
    return tx
  if inner is not None and every != 1:
    inner = lambda params, f=inner: f(params).scaled(every)
  return transformation(tx.init, tx.update, inner)


_UNKNOWN = object()


def traffic(
  tx: optax.GradientTransformation, params, num_workers: int | None = None
) -> Traffic:
  """What one step of ``tx`` sends: bytes per message and per step, and how.

  Args:
    tx: a transform this library built: `gossip`, `adjacent_leader`,
      `allreduce`, the named optimizers (`dsgd`, `aldsgd`, `local_sgd`) and
      the wrappers (`every_steps`, `adapt_while_combine`) of any of them. An
      ``optax.chain`` you build yourself does not say what is inside it: ask
      the exchange you put in it.
    params: one worker's parameters (arrays or ``jax.ShapeDtypeStruct``).
    num_workers: the number of workers; needed where no schedule says it
      (`allreduce`, `local_sgd`), checked against the schedule otherwise.

  Returns:
    A `Traffic`.

  Example:
    >>> import jax.numpy as jnp, jax_aldsgd as ald
    >>> params = {"w": jnp.zeros((100, 10)), "b": jnp.zeros(10)}
    >>> schedule = ald.schedules.full(ald.topologies.ring(8))
    >>> t = ald.traffic(ald.gossip(schedule), params)
    >>> t.message_bytes, t.parts, t.sent_bytes(0).tolist()[:2]
    (4040, (4040,), [8080, 8080])
    >>> ald.traffic(ald.adjacent_leader(schedule), params).parts  # ranks first
    (8, 4040)
    >>> ald.traffic(ald.gossip(schedule, every=4), params).sent_bytes(1).tolist()[:2]
    [0, 0]
  """
  traffic_of = getattr(tx, "traffic_of", _UNKNOWN)
  if traffic_of is _UNKNOWN:
    raise TypeError(
      f"traffic() needs a transform built by jax_aldsgd (gossip, "
      "adjacent_leader, allreduce, dsgd, aldsgd, local_sgd, every_steps, "
      f"adapt_while_combine), got {type(tx).__name__}; an optax.chain does not "
      "say what is inside it: pass the jax_aldsgd transform you chained."
    )
  if traffic_of is None:
    if num_workers is None:
      raise ValueError(
        "traffic() of a transform that sends nothing needs num_workers= "
        "(no schedule says how many workers there are)."
      )
    return Traffic(_checks.check_integer("num_workers", num_workers, 1))
  leaves = jax.tree.leaves(params)
  if not leaves:
    raise ValueError("traffic() needs one worker's parameters, got an empty tree.")
  result = traffic_of(params)
  if result.num_workers is None:
    if num_workers is None:
      raise ValueError(
        "traffic() of the all-reduce needs num_workers= (how many workers "
        "it averages over)."
      )
    return dataclasses.replace(
      result, num_workers=_checks.check_integer("num_workers", num_workers, 1)
    )
  if num_workers is not None and num_workers != result.num_workers:
    raise ValueError(
      f"num_workers={num_workers} but the schedule has {result.num_workers} "
      "workers; leave num_workers out or pass the schedule's."
    )
  return result
