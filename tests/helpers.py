"""Shared helpers: a tiny pytree model zoo, runners for jitted worker steps, tiny
experiment configs, fake data, compiled HLO, and processes run side by side."""

from __future__ import annotations

import gzip
import os
import pathlib
import re
import socket
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jax_aldsgd as ald
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T
from tests import reference


def tiny_config(method=None, **overrides):
  """experiments.cifar's default config, shrunk to run in seconds on mock data."""
  from experiments.cifar.configs import default

  config = default.get_config(method)
  config.update(
    dict(
      model="small_cnn",
      batch_size=2,
      num_epochs=2,
      learning_rate=0.05,
      lr_decay_epochs=(1,),
      eval_batch_size=16,
      progress_bar=False,
      plots=False,
    )
  )
  config.update(overrides)
  return config


def mix_once(transform, x_hat, losses, step, mesh):
  """Applies ``transform`` once with zero incoming updates (so x_hat = params)."""

  def f(params, loss, count):
    state = transform.init(params)
    if "count" in getattr(state, "_fields", ()):
      state = state._replace(count=count)
    updates, _ = transform.update(
      jax.tree.map(jnp.zeros_like, params), state, params, loss=loss
    )
    return optax.apply_updates(params, updates)

  n = mesh.shape["workers"]
  return jax.jit(ald.worker_map(f, mesh))(
    x_hat, jnp.asarray(losses, jnp.float32), jnp.full((n,), step, jnp.int32)
  )


def random_topology(rng, n):
  """A random graph on ``n`` workers (maybe disconnected) with >= 2 matchings."""
  while True:
    edges = [(i, j) for i in range(n) for j in range(i + 1, n) if rng.random() < 0.45]
    if edges:
      topology = T.from_edges(n, edges, allow_disconnected=True)
      if topology.num_matchings >= 2:
        return topology


def random_schedule(rng, topology, kind):
  """A schedule of ``kind`` (full, alternating, matcha, explicit) with random
  parameters on ``topology``."""
  if kind == "full":
    return S.full(topology)
  if kind == "alternating":
    return S.alternating(topology)
  if kind == "matcha":
    return S.matcha(
      topology, budget=float(rng.uniform(0.2, 0.9)), seed=int(rng.integers(1000))
    )
  if kind == "explicit":
    pattern = [
      set(np.flatnonzero(rng.random(topology.num_matchings) < 0.5).tolist())
      for _ in range(3)
    ]
    return S.explicit(topology, pattern, neighbor_weight=float(rng.uniform(0.1, 0.4)))
  raise ValueError(kind)


def rotation(seed):
  """Rotating paper graphs 1 and 0 with a MATCHA, a full and an alternating child."""
  g0, g1 = T.paper_graph(0), T.paper_graph(1)
  return S.rotating([S.matcha(g1, 0.5, seed=seed), S.full(g0), S.alternating(g1)])


def flat_dim(shapes):
  return sum(int(np.prod(s)) for s in shapes.values())


def unflatten(flat, shapes):
  """(n, d) NumPy array -> stacked pytree {name: (n, *shape)} float32."""
  out, start = {}, 0
  for name, shape in shapes.items():
    size = int(np.prod(shape))
    out[name] = jnp.asarray(
      flat[:, start : start + size].reshape((-1,) + shape), jnp.float32
    )
    start += size
  return out


def flatten(tree, shapes):
  """Stacked pytree -> (n, d) float64 NumPy array, leaves in `shapes` order."""
  return np.concatenate(
    [
      np.asarray(tree[name], np.float64).reshape(len(tree[name]), -1) for name in shapes
    ],
    axis=1,
  )


# A model with several leaves of different shapes, to exercise packing.
SHAPES = {"kernel": (3, 2), "bias": (2,), "scale": ()}


def quadratic_loss_fn(shapes):
  """JAX version of reference.Quadratic's loss on one worker's pytree."""

  def loss_fn(params, a, b):
    x = jnp.concatenate([jnp.ravel(params[name]) for name in shapes])
    r = a @ x - b
    return 0.5 * jnp.mean(r**2)

  return loss_fn


def make_step(tx, mesh, shapes=SHAPES):
  """Jitted per-worker train step on the quadratic problem."""
  loss_fn = quadratic_loss_fn(shapes)

  def step(params, opt_state, a, b):
    loss, grads = jax.value_and_grad(loss_fn)(params, a, b)
    updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(ald.worker_map(step, mesh))


def run(tx, x0, problem, steps, mesh, shapes=SHAPES):
  """Runs ``steps`` iterations; returns the final (n, d) array and the losses."""
  step = make_step(tx, mesh, shapes)
  params = ald.shard_workers(unflatten(x0, shapes), mesh)
  opt_state = jax.jit(ald.worker_map(tx.init, mesh))(params)
  a = ald.shard_workers(jnp.asarray(problem.a, jnp.float32), mesh)
  b = ald.shard_workers(jnp.asarray(problem.b, jnp.float32), mesh)
  losses = []
  for _ in range(steps):
    params, opt_state, loss = step(params, opt_state, a, b)
    losses.append(np.asarray(loss))
  return flatten(params, shapes), losses, step


def reference_run(x0, problem, steps, schedule, *, lr, weight_decay=0.0, leader=None):
  """The NumPy reference of ``steps`` full iterations (f64)."""
  x = np.array(x0, np.float64)
  for k in range(steps):
    losses = problem.loss(x)
    x_hat = reference.sgd_step(x, problem.grad(x), lr, weight_decay)
    matchings, active, weights = reference.schedule_step_inputs(schedule, k)
    if leader is None:
      x = reference.gossip(x_hat, matchings, active, weights)
    else:
      pull = k % leader.get("pull_every", 1) == 0
      coefficients = {key: leader[key] for key in ("c1", "c2", "p1", "p2")}
      x = reference.adjacent_leader(
        x_hat, losses, matchings, active, weights, pull=pull, **coefficients
      )
  return x


def write_idx(path, array, magic):
  """Writes a gzip'd IDX file (magic 2051 for images, 2049 for labels)."""
  header = magic.to_bytes(4, "big") + b"".join(
    size.to_bytes(4, "big") for size in array.shape
  )
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_mnist(directory, train=256, test=64, seed=0):
  """A tiny Fashion-MNIST in Debian's IDX layout: class k is a bright band k."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for split, count in (("train", train), ("t10k", test)):
    labels = rng.integers(0, 10, size=count)
    images = rng.integers(0, 60, size=(count, 28, 28))
    for k in range(10):
      images[labels == k, 2 * k : 2 * k + 4, :] += 180
    write_idx(directory / f"{split}-images-idx3-ubyte.gz", images, 2051)
    write_idx(directory / f"{split}-labels-idx1-ubyte.gz", labels, 2049)
  return directory


# --- Compiled HLO -------------------------------------------------------------


def hlo_computations(hlo: str) -> dict[str, str]:
  """Maps each HLO computation name to its body text."""
  bodies, name, lines = {}, None, []
  for line in hlo.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if header and not line.startswith(" "):
      name, lines = header.group(1), []
    elif line.startswith("}") and name is not None:
      bodies[name] = "\n".join(lines)
      name = None
    elif name is not None:
      lines.append(line)
  return bodies


def hlo_conditionals(body: str) -> list[list[str]]:
  """The branch computations of every conditional in one computation's body."""
  found = []
  for match in re.finditer(
    r"(?:branch_computations=\{([^}]*)\}|true_computation=%?([\w.\-]+), "
    r"false_computation=%?([\w.\-]+))",
    body,
  ):
    names = match.group(1).split(",") if match.group(1) else match.groups()[1:]
    found.append([n.strip().lstrip("%") for n in names])
  return found


def hlo_called(bodies: dict[str, str], roots) -> set[str]:
  """``roots`` and every computation they call or branch to, transitively."""
  reached, frontier = set(roots), set(roots)
  while frontier:
    called = set()
    for name in frontier:
      body = bodies.get(name, "")
      called |= set(re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", body))
      for branches in hlo_conditionals(body):
        called |= set(branches)
    frontier = called - reached
    reached |= frontier
  return reached


def hlo_collective_permutes(bodies: dict[str, str]) -> set[str]:
  """Names of the computations that hold a collective-permute."""
  return {
    name
    for name, body in bodies.items()
    if re.search(r"= \S+ collective-permute(?:-start)?\(", body)
  }


def compiled_train_step_hlo(tx, n=8) -> str:
  """Compiled HLO text of a quadratic-model training step with ``tx``."""
  mesh = ald.worker_mesh(n)
  loss_fn = quadratic_loss_fn(SHAPES)

  def step(params, state, a, b):
    loss, grads = jax.value_and_grad(loss_fn)(params, a, b)
    updates, state = tx.update(grads, state, params, loss=loss)
    return optax.apply_updates(params, updates), state

  params = ald.replicate_workers(
    {name: jnp.ones(shape) for name, shape in SHAPES.items()}, n
  )
  state = jax.jit(ald.worker_map(tx.init, mesh))(params)
  a = jnp.ones((n, 6, flat_dim(SHAPES)))
  b = jnp.ones((n, 6))
  return (
    jax.jit(ald.worker_map(step, mesh)).lower(params, state, a, b).compile().as_text()
  )


# --- Processes run side by side ------------------------------------------------

ROOT = pathlib.Path(__file__).parents[1]
PROCESS_TIMEOUT = 300


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def fresh_env() -> dict[str, str]:
  """This environment without the emulated-devices settings of conftest.py.

  Keeps the other ``XLA_FLAGS`` (conftest.py's compile-fast flags): a process
  that wants emulated devices sets them itself (`jax_aldsgd.emulate_cpu_devices`).
  """
  env = {k: v for k, v in os.environ.items() if k != "PJRT_NPROC"}
  flags = re.sub(
    r"--xla_(force_host_platform_device_count|cpu_collective_call_\w+)=\S*",
    "",
    env.get("XLA_FLAGS", ""),
  )
  env["XLA_FLAGS"] = " ".join(flags.split())
  return env


def start_processes(commands) -> list[subprocess.Popen]:
  """Starts every command at once, in the repository root."""
  return [
    subprocess.Popen(
      c,
      cwd=ROOT,
      env=fresh_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for c in commands
  ]


def wait_processes(processes, returncode=0) -> list[str]:
  """Waits for every process; fails with their output unless all return
  ``returncode``."""
  outputs = []
  try:
    for p in processes:
      outputs.append(p.communicate(timeout=PROCESS_TIMEOUT)[0])
  finally:
    for p in processes:
      p.kill()
  for p, out in zip(processes, outputs):
    assert p.returncode == returncode, out[-3000:]
  return outputs


def run_together(commands) -> list[str]:
  """Starts all commands at once; waits for all; fails with their output."""
  return wait_processes(start_processes(commands))
