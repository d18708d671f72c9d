"""QG-DSGDm, D² and gradient tracking (docs/algorithm.md section 11).

Each against a NumPy reference written from the equations (dense ``W_k``,
stacked ``(n, d)`` arrays), on a fixed, a time-varying and a directed
schedule; the exactness property on heterogeneous quadratics; several workers
per device; bytes against the compiled HLO; and bad inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_aldsgd as ald
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T
from tests import helpers, reference

# The rotating schedule below (MATCHA's weight on the ring) has lambda_min(W)
# = -0.91, where gradient tracking warns that it is stable only for tiny
# learning rates; a few steps of the references stay finite.
pytestmark = pytest.mark.filterwarnings(
  "ignore:tracking_gossip on a schedule:UserWarning"
)

N = 8
STEPS = 5


@dataclasses.dataclass(frozen=True)
class Shifts(ald.Schedule):
  """Directed: at step k worker i receives from i - 2^(k mod 3) with weight 1/2."""

  @property
  def graphs(self):
    return ()

  @property
  def neighbor_weight(self):
    return ()

  @functools.cached_property
  def slot_partners(self):
    table = np.array([(np.arange(N) - 2**k) % N for k in range(3)], np.int64)
    table.setflags(write=False)
    return table

  @functools.cached_property
  def slot_weight(self):
    return np.full(3, 0.5)

  def slot_flags(self, step, xp):
    return xp.arange(3) == step % 3

  def activation_patterns(self, limit):
    del limit
    return frozenset(tuple(k == s for k in range(3)) for s in range(3))


SCHEDULES = {
  "fixed": S.full(T.ring(N), neighbor_weight=0.3),
  "rotating": S.rotating(
    [S.full(T.ring(N), neighbor_weight=0.3), S.matcha(T.paper_graph(0), 0.5)]
  ),
  "directed": Shifts(),
}


def _mixing(name, step):
  """``W_k`` built here: from the matchings (reference) or the shift."""
  if name == "directed":
    w = np.eye(N) / 2
    for i in range(N):
      w[i, (i - 2 ** (step % 3)) % N] += 0.5
    return w
  return reference.mixing_matrix(
    N, *reference.schedule_step_inputs(SCHEDULES[name], step)
  )


# --- NumPy references, from the equations ---------------------------------------


def reference_qg(x, grad, mix, steps, lr, beta, nesterov, wd):
  m = np.zeros_like(x)
  for k in range(steps):
    g = grad(x) + wd * x
    b = beta * m + g
    x_half = x - lr(k) * (g + beta * b) if nesterov else x - lr(k) * b
    x_next = mix(k) @ x_half
    m = beta * m + (1 - beta) * (x - x_next) / lr(k)
    x = x_next
  return x


def reference_d2(x, grad, mix, steps, local):
  """``local(k, g) -> u``; D² in its local-optimizer form."""
  x_prev = u_prev = None
  for k in range(steps):
    u = local(k, grad(x))
    x_half = x + u if k == 0 else x + u + (x - x_prev - u_prev)
    x_prev, u_prev = x, u
    x = mix(k) @ x_half
  return x


def reference_gt(x, grad, mix, steps, lr, momentum, nesterov, wd):
  y_hat = g_prev = None
  buf = np.zeros_like(x)
  for k in range(steps):
    g = grad(x) + wd * x
    y = g if k == 0 else y_hat + g - g_prev
    buf = momentum * buf + y
    d = (y + momentum * buf if nesterov else buf) if momentum else y
    w = mix(k)
    x, y_hat, g_prev = w @ x - lr(k) * d, w @ y, g
  return x


# --- Running the library ---------------------------------------------------------


def _problem():
  rng = np.random.default_rng(0)
  dim = helpers.flat_dim(helpers.SHAPES)
  return reference.Quadratic(rng, N, dim), rng.normal(size=(N, dim))


def _train(tx, steps=STEPS, per_device=1):
  problem, x0 = _problem()
  mesh = ald.worker_mesh(N, workers_per_device=per_device)
  worker_map = functools.partial(
    ald.worker_map, mesh=mesh, workers_per_device=per_device
  )
  loss_fn = helpers.quadratic_loss_fn(helpers.SHAPES)

  # A Python loop over one jitted step: under several workers per device a
  # lax.fori_loop around the step trips an assertion in worker_index (reported).
  def step(params, state, a, b):
    updates, state = tx.update(jax.grad(loss_fn)(params, a, b), state, params)
    return optax.apply_updates(params, updates), state

  params = ald.shard_workers(helpers.unflatten(x0, helpers.SHAPES), mesh)
  a = ald.shard_workers(jnp.asarray(problem.a, jnp.float32), mesh)
  b = ald.shard_workers(jnp.asarray(problem.b, jnp.float32), mesh)
  state = jax.jit(worker_map(tx.init))(params)
  step = jax.jit(worker_map(step))
  for _ in range(steps):
    params, state = step(params, state, a, b)
  return helpers.flatten(params, helpers.SHAPES)


LR = optax.linear_schedule(0.1, 0.05, STEPS)


def _lr(k):
  return float(LR(k))


def _case(method, name):
  """(transform, NumPy result) of one method on one schedule.

  The fixed schedule runs the defaults with a constant step; the others vary
  the options: a learning-rate schedule, heavy ball, momentum on the tracker,
  D² after a momentum optimizer.
  """
  problem, x0 = _problem()
  schedule, mix = SCHEDULES[name], functools.partial(_mixing, name)
  fixed = name == "fixed"
  lr = 0.1 if fixed else LR
  lr_at = (lambda k: 0.1) if fixed else _lr
  wd = 0.0 if fixed else 0.01
  if method == "qg_dsgdm":
    nesterov = fixed
    tx = ald.qg_dsgdm(lr, schedule, nesterov=nesterov, weight_decay=wd)
    expected = reference_qg(x0, problem.grad, mix, STEPS, lr_at, 0.9, nesterov, wd)
  elif method == "gradient_tracking":
    momentum, nesterov = (0.0, False) if fixed else (0.5, name == "directed")
    tx = ald.gradient_tracking(
      lr, schedule, momentum=momentum, nesterov=nesterov, weight_decay=wd
    )
    expected = reference_gt(x0, problem.grad, mix, STEPS, lr_at, momentum, nesterov, wd)
  elif fixed:
    tx = ald.d2(0.1, schedule)
    expected = reference_d2(x0, problem.grad, mix, STEPS, lambda k, g: -0.1 * g)
  else:  # after any local optimizer: heavy-ball SGD
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # MATCHA's alpha breaks lambda_min > -1/3
      tx = optax.chain(optax.sgd(LR, momentum=0.5), ald.d2_gossip(schedule))
    trace = {}

    def local(k, g):
      trace["b"] = 0.5 * trace.get("b", 0) + g
      return -_lr(k) * trace["b"]

    expected = reference_d2(x0, problem.grad, mix, STEPS, local)
  return tx, expected


METHODS = ("qg_dsgdm", "d2", "gradient_tracking")


@functools.cache
def _library(method, name, per_device=1):
  return _train(_case(method, name)[0], per_device=per_device)


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("method", METHODS)
def test_matches_numpy_reference(method, name):
  expected = _case(method, name)[1]
  np.testing.assert_allclose(_library(method, name), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_several_workers_per_device_equal_one(method):
  np.testing.assert_allclose(
    _library(method, "rotating", per_device=2),
    _library(method, "rotating"),
    rtol=0,
    atol=1e-6,
  )


# --- Exactness on heterogeneous data --------------------------------------------


def _exactness_problem(dim=4):
  rng = np.random.default_rng(1)
  a = np.eye(dim) + 0.3 * rng.normal(size=(N, dim, dim))
  b = 3.0 * rng.normal(size=(N, dim))  # very different local minimisers
  hessian = np.einsum("nrd,nre->de", a, a)
  minimiser = np.linalg.solve(hessian, np.einsum("nrd,nr->d", a, b))
  return a, b, minimiser


def _distance_to_minimiser(tx, steps=600):
  a, b, minimiser = _exactness_problem()
  mesh = ald.worker_mesh(N)

  def run(x, a, b):
    def body(_, carry):
      x, state = carry
      grads = jax.grad(lambda x: 0.5 * jnp.sum((a @ x - b) ** 2))(x)
      updates, state = tx.update(grads, state, x)
      return optax.apply_updates(x, updates), state

    return jax.lax.fori_loop(0, steps, body, (x, tx.init(x)))[0]

  x = jax.jit(ald.worker_map(run, mesh))(
    jnp.zeros((N, len(minimiser))), jnp.asarray(a, jnp.float32), jnp.asarray(b)
  )
  return float(np.max(np.abs(np.asarray(x, np.float64) - minimiser)))


def test_d2_and_tracking_reach_the_minimiser_dsgd_does_not():
  # In float32 D²'s mean moves with a double root at 1 (x+ - x = x - x_prev +
  # ...), so a rounding error keeps moving it: with a smaller step, more steps
  # drift further (lr 0.05: 8e-5 after 600 steps, 2e-4 after 1500).
  schedule = S.full(T.ring(N), neighbor_weight=0.3)
  assert _distance_to_minimiser(ald.d2(0.1, schedule)) < 1e-5
  assert _distance_to_minimiser(ald.gradient_tracking(0.1, schedule)) < 1e-5
  assert _distance_to_minimiser(ald.dsgd(0.1, schedule)) > 0.1


# --- D²'s lambda_min warning ------------------------------------------------------


def test_d2_warns_when_lambda_min_is_too_small():
  ring = T.ring(N)
  # D-PSGD's alpha on ring(8): 2 / (lambda_2 + lambda_max) = 0.436, lambda_min -0.745.
  with pytest.warns(
    UserWarning, match=r"lambda_min = -0\.7445.*neighbor_weight=0\.333"
  ):
    ald.d2(0.1, S.full(ring))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    ald.d2(0.1, S.full(ring, neighbor_weight=0.333))
    ald.d2_gossip(Shifts())


# --- QG-DSGDm's stability bound ------------------------------------------------


def _qg_disagreement(w, momentum, nesterov, steps=3000):
  """The spec's QG-DSGDm recursion (docs/algorithm.md section 11) with zero
  gradients from random, different points: the workers' final disagreement."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(len(w), 5))
  m = np.zeros_like(x)
  lr, beta = 0.05, momentum
  for _ in range(steps):
    b = beta * m  # + g, with g = 0
    x_half = x - lr * beta * b if nesterov else x - lr * b
    x_next = w @ x_half
    m = beta * m + (1 - beta) * (x - x_next) / lr
    x = x_next
  return np.linalg.norm(x - x.mean(0))


@pytest.mark.parametrize("nesterov", [True, False])
def test_qg_diverges_below_its_stability_bound_and_warns(nesterov):
  """On the ring of 16 (lambda_max(L) = 4, so lambda_min(W) = 1 - 4 alpha), the
  recursion converges for lambda_min just above the bound and blows up just
  below it; the library warns in the second case only. D-PSGD's weight on this
  ring gives lambda_min = -0.9267, beyond the bound for momentum 0.9."""
  from jax_aldsgd._quasi_global import qg_stability_bound

  ring, momentum = T.ring(16), 0.9
  bound = qg_stability_bound(momentum, nesterov)
  assert bound == pytest.approx(-0.9214 if nesterov else -0.9135, abs=1e-4)
  for lam, grows in ((bound + 0.01, False), (bound - 0.01, True)):
    schedule = S.full(ring, neighbor_weight=(1 - lam) / 4)
    w = schedule.mixing_matrix(0)
    assert np.linalg.eigvalsh(w)[0] == pytest.approx(lam)
    disagreement = _qg_disagreement(w, momentum, nesterov)
    assert (disagreement > 1e3) if grows else (disagreement < 1e-3), disagreement
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      ald.quasi_global_momentum(0.1, schedule, momentum=momentum, nesterov=nesterov)
    assert len(caught) == grows, [str(c.message) for c in caught]
  with pytest.warns(UserWarning, match=r"lambda_min = -0\.9267 <= -0\.9214"):
    ald.qg_dsgdm(0.1, S.full(ring))  # D-PSGD's weight, Nesterov
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    ald.qg_dsgdm(0.1, S.full(T.ring(8)))  # lambda_min -0.745
    ald.qg_dsgdm(0.1, S.one_peer_exponential(16))


def _tracking_error(w, lr, steps=4000):
  """The spec's gradient tracking (docs/algorithm.md section 11) on f_i(x) =
  (x - b_i)^2 / 2 (curvature 1): the final distance to the minimiser."""
  rng = np.random.default_rng(1)
  b = rng.normal(size=(len(w), 3))
  x = rng.normal(size=(len(w), 3))
  g_prev = y = x - b
  for _ in range(steps):
    x, y_hat = w @ x - lr * y, w @ y
    g = x - b
    y, g_prev = y_hat + g - g_prev, g
    if not np.isfinite(x).all():
      return np.inf
  return np.abs(x - b.mean(0)).max()


def test_tracking_is_stable_only_below_its_bound_and_warns():
  """lr L < (1 + lambda_min)^2 / 2: on the ring of 16 with lambda_min = -0.8 the
  bound is 0.02; the recursion converges at 0.8 of it and diverges at 1.2 of
  it. The library warns below lambda_min = -2/3 only."""
  ring = T.ring(16)
  for lam, warns in ((-0.8, True), (-0.6, False)):
    schedule = S.full(ring, neighbor_weight=(1 - lam) / 4)
    assert np.linalg.eigvalsh(schedule.mixing_matrix(0))[0] == pytest.approx(lam)
    limit = (1 + lam) ** 2 / 2
    assert _tracking_error(schedule.mixing_matrix(0), 0.8 * limit) < 1e-6
    assert _tracking_error(schedule.mixing_matrix(0), 1.2 * limit) > 1e3
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      ald.tracking_gossip(0.1, schedule)
    assert len(caught) == warns, [str(c.message) for c in caught]
  with pytest.warns(UserWarning, match=r"lambda_min = -0\.9267.* = 0\.00269"):
    ald.gradient_tracking(0.1, S.full(ring))  # D-PSGD's weight
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    ald.gradient_tracking(0.1, S.one_peer_exponential(16))


# --- Bytes: ald.traffic against the compiled HLO --------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_traffic_matches_compiled_hlo(method):
  from experiments import benchmark

  schedule = SCHEDULES["rotating"]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    tx = getattr(ald, method)(0.1, schedule)
  params = {name: jnp.zeros(shape) for name, shape in helpers.SHAPES.items()}
  traffic = ald.traffic(tx, params)
  size = 4 * helpers.flat_dim(helpers.SHAPES)
  assert traffic.message_bytes == (2 * size if method == "gradient_tracking" else size)
  hlo = helpers.compiled_train_step_hlo(tx)
  benchmark.check_bytes_against_hlo(schedule, traffic.parts, hlo, range(6), N)


# --- Bad inputs -------------------------------------------------------------------

SCHEDULE = S.full(T.ring(N), neighbor_weight=0.3)


@pytest.mark.parametrize(
  "build, match",
  [
    (
      lambda: ald.qg_dsgdm(0.0, SCHEDULE),
      r"learning_rate must be in \(0.0, inf\], got 0.0",
    ),
    (lambda: ald.qg_dsgdm(0.1, SCHEDULE, momentum=1.0), r"momentum .* got 1.0"),
    (lambda: ald.qg_dsgdm(0.1, SCHEDULE, weight_decay=-1), r"weight_decay .* got -1"),
    (lambda: ald.d2(-0.1, SCHEDULE), r"learning_rate .* got -0.1"),
    (lambda: ald.gradient_tracking(0.1, SCHEDULE, momentum=-0.5), r"momentum .* -0.5"),
    (lambda: ald.gradient_tracking(0.1, SCHEDULE, nesterov=True), r"momentum=0"),
    (lambda: ald.gradient_tracking(float("nan"), SCHEDULE), r"learning_rate .* nan"),
  ],
)
def test_bad_values_are_named(build, match):
  with pytest.raises(ValueError, match=match):
    build()


@pytest.mark.parametrize("method", METHODS)
def test_bad_schedule_and_missing_params(method):
  with pytest.raises(TypeError, match="schedule must be .* got Topology"):
    getattr(ald, method)(0.1, T.ring(N))
  exchange = dict(
    qg_dsgdm=lambda: ald.quasi_global_momentum(0.1, SCHEDULE),
    d2=lambda: ald.d2_gossip(SCHEDULE),
    gradient_tracking=lambda: ald.tracking_gossip(0.1, SCHEDULE),
  )[method]()
  update = jax.jit(
    ald.worker_map(
      lambda p: exchange.update(p, exchange.init(p))[0], ald.worker_mesh(N)
    )
  )
  with pytest.raises(ValueError, match="needs the current parameters"):
    update(jnp.zeros((N, 3)))


@pytest.mark.parametrize(
  "exchange", ["quasi_global_momentum", "d2_gossip", "tracking_gossip"]
)
def test_refused_options_name_the_method(exchange):
  for options in (dict(every=4), dict(overlap=True), dict(delay=2)):
    with pytest.raises(ValueError, match=f"{exchange} cannot be combined with"):
      ald.check_options(exchange, **options)
  ald.check_options(exchange, schedule=Shifts())  # directed: combines
