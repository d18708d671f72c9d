"""Named optimizers: a local step followed by an exchange (``optax.chain``).

Gossip (`dsgd`), AL-DSGD (`aldsgd`), and the heterogeneous-data methods of
docs/algorithm.md section 11 (`qg_dsgdm`, `d2`, `gradient_tracking`).
"""

from __future__ import annotations

import jax
import optax

from jax_aldsgd import _checks, _traffic
from jax_aldsgd._d2 import d2_gossip
from jax_aldsgd._quasi_global import quasi_global_momentum
from jax_aldsgd._schedules import Schedule
from jax_aldsgd._tracking import tracking_gossip
from jax_aldsgd._transforms import adjacent_leader, gossip


def local_sgd(
  learning_rate: optax.ScalarOrSchedule,
  *,
  momentum: float = 0.0,
  weight_decay: float = 0.0,
) -> optax.GradientTransformation:
  """The local step of the reference: ``x_hat = x - lr (g + wd x)``.

  PyTorch-style SGD: weight decay is added to the gradient, and momentum (if
  ``momentum > 0``) accumulates ``g + wd x``. On its own (no communication) it is
  the "local SGD" baseline; `dsgd` and `aldsgd` chain it with gossip or AL-DSGD.

  Args:
    learning_rate: a float or an optax schedule of the step.
    momentum: heavy-ball momentum in [0, 1) (0 disables it, as in the reference).
    weight_decay: L2 coefficient added to the gradient (reference: 5e-4).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    Without communication every worker reaches its own target:

    >>> import jax, jax.numpy as jnp, optax, jax_aldsgd as ald
    >>> mesh = ald.worker_mesh(8)  # on CPU: ald.emulate_cpu_devices(8) before JAX starts
    >>> tx = ald.local_sgd(0.1)
    >>> def step(w, state, target):  # one worker's view: its w and its target
    ...   loss, grad = jax.value_and_grad(lambda w: jnp.sum((w - target) ** 2))(w)
    ...   updates, state = tx.update(grad, state, w, loss=loss)
    ...   return optax.apply_updates(w, updates), state
    >>> step = jax.jit(ald.worker_map(step, mesh))
    >>> target = jnp.arange(16.0).reshape(8, 2)  # (workers, parameters)
    >>> w = jnp.zeros((8, 2))
    >>> state = jax.jit(ald.worker_map(tx.init, mesh))(w)
    >>> for _ in range(50):
    ...   w, state = step(w, state, target)
    >>> [round(float(v)) for v in w[:, 0]]
    [0, 2, 4, 6, 8, 10, 12, 14]
  """
  if not callable(learning_rate):
    _checks.check_real("learning_rate", learning_rate, low=0.0)
  _checks.check_real("momentum", momentum, low=0.0, high=1.0, high_open=True)
  _checks.check_real("weight_decay", weight_decay, low=0.0)
  # A literal 0 builds no momentum buffer (no copy of the parameters in the
  # state); an array (e.g. from optax.inject_hyperparams) always builds one, so
  # init and update agree on the state's structure.
  no_momentum = not isinstance(momentum, jax.Array) and momentum == 0
  tx = optax.chain(
    optax.add_decayed_weights(weight_decay),
    optax.sgd(learning_rate, momentum=None if no_momentum else momentum),
  )
  return _traffic.transformation(tx.init, tx.update, None)  # sends nothing


def dsgd(
  learning_rate: optax.ScalarOrSchedule,
  schedule: Schedule,
  *,
  momentum: float = 0.0,
  weight_decay: float = 0.0,
  axis_name: str = "workers",
  skip_nonfinite: bool = False,
  overlap: bool = False,
  every: int = 1,
  delay: int | None = None,
  compressor=None,
  consensus_lr=1.0,
) -> optax.GradientTransformationExtraArgs:
  """Decentralized SGD: a local SGD step, then gossip (D-PSGD or MATCHA).

  ``x_hat_i = x_i - lr (g_i + wd x_i)`` (with momentum on ``g_i + wd x_i`` if
  ``momentum > 0``), then ``x_i <- sum_j W_k[i, j] x_hat_j`` (`jax_aldsgd.gossip`).

  Args:
    learning_rate: a float or an optax schedule of the step.
    schedule: the gossip schedule (`jax_aldsgd.schedules`).
    momentum: heavy-ball momentum (0 disables it, as in the reference).
    weight_decay: L2 coefficient added to the gradient (reference: 5e-4).
    axis_name: the workers' mesh axis.
    skip_nonfinite, overlap, every, delay: see `jax_aldsgd.gossip`.
    compressor, consensus_lr: compressed gossip (CHOCO-SGD), see
      `jax_aldsgd.gossip`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Example:
    Eight workers, each pulled toward its own target, agree on the average
    target (gossip keeps the workers' mean; 7.5 here):

    >>> import jax, jax.numpy as jnp, optax, jax_aldsgd as ald
    >>> mesh = ald.worker_mesh(8)  # on CPU: ald.emulate_cpu_devices(8) before JAX starts
    >>> schedule = ald.schedules.matcha(ald.topologies.paper_graph(0), budget=0.5)
    >>> tx = ald.dsgd(0.1, schedule)
    >>> def step(w, state, target):  # one worker's view: its w and its target
    ...   loss, grad = jax.value_and_grad(lambda w: jnp.sum((w - target) ** 2))(w)
    ...   updates, state = tx.update(grad, state, w, loss=loss)
    ...   return optax.apply_updates(w, updates), state
    >>> step = jax.jit(ald.worker_map(step, mesh))
    >>> target = jnp.arange(16.0).reshape(8, 2)  # (workers, parameters)
    >>> w = jnp.zeros((8, 2))
    >>> state = jax.jit(ald.worker_map(tx.init, mesh))(w)
    >>> for _ in range(50):
    ...   w, state = step(w, state, target)
    >>> round(float(w.mean()), 3), bool(w.std(0).max() < 1.0)
    (7.5, True)
  """
  exchange = gossip(
    schedule,
    axis_name,
    skip_nonfinite=skip_nonfinite,
    overlap=overlap,
    every=every,
    delay=delay,
    compressor=compressor,
    consensus_lr=consensus_lr,
  )
  local = local_sgd(learning_rate, momentum=momentum, weight_decay=weight_decay)
  return _traffic.carry_traffic(optax.chain(local, exchange), exchange)


def aldsgd(
  learning_rate: optax.ScalarOrSchedule,
  schedule: Schedule,
  *,
  momentum: float = 0.0,
  weight_decay: float = 0.0,
  c1: float = 0.3,
  c2: float = 0.1,
  p1: float = 0.2,
  p2: float = 0.2,
  pull_every: int = 1,
  axis_name: str = "workers",
  skip_nonfinite: bool = False,
  overlap: bool = False,
  every: int = 1,
  pull_restart_every: int | None = None,
  compressor=None,
  consensus_lr=1.0,
) -> optax.GradientTransformationExtraArgs:
  """AL-DSGD: a local SGD step, then `jax_aldsgd.adjacent_leader`.

  The reference configuration is ``aldsgd(0.4, rotating([full(g1), full(g0)]),
  weight_decay=5e-4)`` with ``c1, c2, p1, p2 = 0.3, 0.1, 0.2, 0.2``.

  Args:
    learning_rate: a float or an optax schedule of the step.
    schedule: the gossip schedule (`jax_aldsgd.schedules`).
    momentum: heavy-ball momentum (0 disables it, as in the reference).
    weight_decay: L2 coefficient added to the gradient (reference: 5e-4).
    c1, c2, p1, p2, pull_every, skip_nonfinite, overlap, every, pull_restart_every, compressor, consensus_lr: see `jax_aldsgd.adjacent_leader`.
    axis_name: the workers' mesh axis.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params`` and
    ``loss=``.

  Example:
    Eight workers, each pulled toward its own target, on the reference's
    rotating graph pair; AL-DSGD pulls toward the neighbor with the lowest loss,
    so the workers agree near the targets that are easiest to reach from their
    neighborhoods (its mixing does not keep the mean):

    >>> import jax, jax.numpy as jnp, optax, jax_aldsgd as ald
    >>> mesh = ald.worker_mesh(8)  # on CPU: ald.emulate_cpu_devices(8) before JAX starts
    >>> g0, g1 = ald.topologies.paper_graph(0), ald.topologies.paper_graph(1)
    >>> schedule = ald.schedules.rotating([ald.schedules.full(g1), ald.schedules.full(g0)])
    >>> tx = ald.aldsgd(0.1, schedule)
    >>> def step(w, state, target):  # one worker's view: its w and its target
    ...   loss, grad = jax.value_and_grad(lambda w: jnp.sum((w - target) ** 2))(w)
    ...   updates, state = tx.update(grad, state, w, loss=loss)
    ...   return optax.apply_updates(w, updates), state
    >>> step = jax.jit(ald.worker_map(step, mesh))
    >>> target = jnp.arange(16.0).reshape(8, 2)  # (workers, parameters)
    >>> w = jnp.zeros((8, 2))
    >>> state = jax.jit(ald.worker_map(tx.init, mesh))(w)
    >>> for _ in range(50):
    ...   w, state = step(w, state, target)
    >>> bool(w.std(0).max() < 1.0)
    True
  """
  exchange = adjacent_leader(
    schedule,
    axis_name,
    c1=c1,
    c2=c2,
    p1=p1,
    p2=p2,
    pull_every=pull_every,
    skip_nonfinite=skip_nonfinite,
    overlap=overlap,
    every=every,
    pull_restart_every=pull_restart_every,
    compressor=compressor,
    consensus_lr=consensus_lr,
  )
  local = local_sgd(learning_rate, momentum=momentum, weight_decay=weight_decay)
  return _traffic.carry_traffic(optax.chain(local, exchange), exchange)


def qg_dsgdm(
  learning_rate: optax.ScalarOrSchedule,
  schedule: Schedule,
  *,
  momentum: float = 0.9,
  nesterov: bool = True,
  weight_decay: float = 0.0,
  axis_name: str = "workers",
) -> optax.GradientTransformationExtraArgs:
  """QG-DSGDm: decentralized SGD with quasi-global momentum (Lin et al., 2021).

  ``g = grad + wd x``, then `jax_aldsgd.quasi_global_momentum` (the local step
  with the quasi-global buffer, gossip, and the buffer's update from the
  step's displacement; docs/algorithm.md section 11).

  Args:
    learning_rate: a positive float or an optax schedule of the step.
    schedule: the gossip schedule (`jax_aldsgd.schedules`).
    momentum: ``beta = mu`` in [0, 1) (the paper: 0.9).
    nesterov: Nesterov's form (default) or heavy ball.
    weight_decay: L2 coefficient added to the gradient.
    axis_name: the workers' mesh axis.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Example:
    >>> import jax_aldsgd as ald
    >>> tx = ald.qg_dsgdm(0.1, ald.schedules.full(ald.topologies.ring(8)))
  """
  _checks.check_real("weight_decay", weight_decay, low=0.0)
  exchange = quasi_global_momentum(
    learning_rate, schedule, momentum=momentum, nesterov=nesterov, axis_name=axis_name
  )
  tx = optax.chain(optax.add_decayed_weights(weight_decay), exchange)
  return _traffic.carry_traffic(tx, exchange)


def d2(
  learning_rate: optax.ScalarOrSchedule,
  schedule: Schedule,
  *,
  weight_decay: float = 0.0,
  axis_name: str = "workers",
) -> optax.GradientTransformationExtraArgs:
  """D² (Tang et al., 2018): a local SGD step, then `jax_aldsgd.d2_gossip`.

  ``u = -lr (g + wd x)``; step 0 is D-PSGD, later steps mix ``x_half = 2 x -
  x_prev - lr (g - g_prev)`` (docs/algorithm.md section 11). Warns when a
  step's mixing matrix has ``lambda_min <= -1/3``.

  Args:
    learning_rate: a float or an optax schedule of the step.
    schedule: the gossip schedule (`jax_aldsgd.schedules`).
    weight_decay: L2 coefficient added to the gradient.
    axis_name: the workers' mesh axis.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Example:
    >>> import jax_aldsgd as ald
    >>> ring = ald.topologies.ring(8)
    >>> tx = ald.d2(0.1, ald.schedules.full(ring, neighbor_weight=0.3))
  """
  exchange = d2_gossip(schedule, axis_name)
  local = local_sgd(learning_rate, weight_decay=weight_decay)
  return _traffic.carry_traffic(optax.chain(local, exchange), exchange)


def gradient_tracking(
  learning_rate: optax.ScalarOrSchedule,
  schedule: Schedule,
  *,
  momentum: float = 0.0,
  nesterov: bool = False,
  weight_decay: float = 0.0,
  axis_name: str = "workers",
) -> optax.GradientTransformationExtraArgs:
  """Gradient tracking (DIGing, GT-DSGD): ``x+ = W x - lr y``, ``y`` tracking the mean gradient.

  ``g = grad + wd x``, then `jax_aldsgd.tracking_gossip` (docs/algorithm.md
  section 11); ``x`` and ``y`` travel in one message of twice the parameters'
  size.

  Args:
    learning_rate: a float or an optax schedule of the step.
    schedule: the gossip schedule (`jax_aldsgd.schedules`).
    momentum: PyTorch-style SGD momentum on ``y`` (0: none).
    nesterov: Nesterov's form of that momentum.
    weight_decay: L2 coefficient added to the gradient.
    axis_name: the workers' mesh axis.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Example:
    >>> import jax_aldsgd as ald
    >>> ring = ald.topologies.ring(8)  # neighbor weight 1 / lambda_max(L) = 1/4:
    >>> tx = ald.gradient_tracking(0.1, ald.schedules.full(ring, neighbor_weight=0.25))
  """
  _checks.check_real("weight_decay", weight_decay, low=0.0)
  exchange = tracking_gossip(
    learning_rate, schedule, momentum=momentum, nesterov=nesterov, axis_name=axis_name
  )
  tx = optax.chain(optax.add_decayed_weights(weight_decay), exchange)
  return _traffic.carry_traffic(tx, exchange)
