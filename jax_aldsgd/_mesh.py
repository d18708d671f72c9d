"""The workers mesh: emulated CPU devices, stacking per-worker pytrees, worker_map."""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import xla_bridge
from jax.experimental import multihost_utils

from jax_aldsgd import _checks
from jax_aldsgd._workers import LOCAL_AXIS

# Importing JAX does not start a backend (the first device query does), so
# emulate_cpu_devices still works after `import jax_aldsgd`.


def _backends_started() -> bool:
  started = getattr(xla_bridge, "backends_are_initialized", None)
  if started is not None:
    return started()
  return bool(getattr(xla_bridge, "_backends", {}))


# jaxlib releases before this one abort on the collective-timeout flag.
_TIMEOUT_FLAG_SINCE = (0, 8, 0)


def _jaxlib_version() -> tuple[int, ...]:
  try:
    text = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return (0,)
  return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def emulate_cpu_devices(
  num_devices: int, *, collective_timeout_seconds: int | None = 60
) -> None:
  """Makes the CPU backend expose ``num_devices`` devices, safely for collectives.

  Sets, before JAX starts:

  * ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (N CPU devices);
  * ``PJRT_NPROC`` to at least ``2 N``: with fewer CPU threads than devices, XLA's
    CPU collectives can deadlock when programs run back to back (seen for N = 2
    to 16 on 2-core machines); with it, thousands of steps run clean;
  * XLA's CPU collective timeouts (``--xla_cpu_collective_call_warn_stuck_timeout_
    seconds`` and ``..._terminate_timeout_seconds``), so that a collective that
    still gets stuck aborts the program with XLA's message ("Termination timeout
    for ``collective permute ...`` exceeded") instead of hanging forever.

  Call it at the top of the program (or in ``conftest.py``), before any JAX
  operation. Calling it again with the same count once JAX runs is a no-op.

  Args:
    num_devices: number of CPU devices to emulate, ``>= 1``.
    collective_timeout_seconds: about how many seconds a CPU collective may wait
      for its peers before XLA terminates the program; ``None`` keeps XLA's default (so does a
      jaxlib older than 0.8.0, which does not know the flag).

  Raises:
    RuntimeError: if a JAX backend is already running with another device count.

  Example:
    At the very top of a program, before the first JAX operation (a doctest
    cannot show it: its process has started JAX already)::

      import jax_aldsgd as ald
      ald.emulate_cpu_devices(8)
      import jax
      assert jax.device_count() == 8
  """
  num_devices = _checks.check_integer("num_devices", num_devices, 1)
  if collective_timeout_seconds is not None:
    collective_timeout_seconds = _checks.check_integer(
      "collective_timeout_seconds", collective_timeout_seconds, 1
    )
  if _backends_started():
    nproc = int(os.environ.get("PJRT_NPROC", "0") or 0)
    if jax.device_count() == num_devices and nproc >= 2 * num_devices:
      return
    raise RuntimeError(
      f"emulate_cpu_devices({num_devices}) was called after JAX started (it now "
      f"has {jax.device_count()} {jax.default_backend()} devices); the device "
      "count is fixed when the backend starts. Call it at the very top of your "
      "program or conftest.py, before any JAX operation."
    )
  flags = os.environ.get("XLA_FLAGS", "")
  flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", flags)
  flags += f" --xla_force_host_platform_device_count={num_devices}"
  if (
    collective_timeout_seconds is not None and _jaxlib_version() >= _TIMEOUT_FLAG_SINCE
  ):
    # XLA first waits warn_stuck seconds (logging that a rendezvous may be stuck),
    # then terminate seconds more before aborting: split the budget between them.
    warn = max(1, collective_timeout_seconds // 2)
    for flag, seconds in (
      ("warn_stuck_timeout", warn),
      ("terminate_timeout", max(1, collective_timeout_seconds - warn)),
    ):
      name = f"--xla_cpu_collective_call_{flag}_seconds"
      flags = re.sub(name + r"=\S*", "", flags) + f" {name}={seconds}"
  os.environ["XLA_FLAGS"] = " ".join(flags.split())
  nproc = int(os.environ.get("PJRT_NPROC", "0") or 0)
  os.environ["PJRT_NPROC"] = str(max(nproc, 2 * num_devices))


def worker_mesh(
  num_workers: int | None = None,
  *,
  workers_per_device: int = 1,
  devices=None,
  axis_name: str = "workers",
):
  """A 1-D ``jax.sharding.Mesh`` over the devices that hold the workers.

  Args:
    num_workers: number of workers; defaults to the number of devices times
      ``workers_per_device``.
    workers_per_device: workers that share each device (``worker_map`` vmaps
      over them); ``num_workers`` must be divisible by it.
    devices: the devices to use (default: ``jax.devices()``, all processes').
    axis_name: the mesh axis name the transforms communicate over.

  Raises:
    ValueError: if there are fewer devices than ``num_workers /
      workers_per_device``, or the division is not exact.
  """
  devices = list(jax.devices() if devices is None else devices)
  per_device = _checks.check_integer("workers_per_device", workers_per_device, 1)
  if num_workers is None:
    num_workers = len(devices) * per_device
  num_workers = _checks.check_integer("num_workers", num_workers, 1)
  if num_workers % per_device:
    raise ValueError(
      f"num_workers={num_workers} is not divisible by "
      f"workers_per_device={per_device}; every device holds the same "
      "number of workers."
    )
  needed = num_workers // per_device
  if len(devices) < needed:
    hint = (
      f"call jax_aldsgd.emulate_cpu_devices({needed}) before JAX starts, or "
      f"put more workers on each device (workers_per_device)"
    )
    raise ValueError(
      f"{num_workers} workers need {needed} devices ({per_device} per device), "
      f"but only {len(devices)} are available. On CPU, {hint}."
    )
  # Auto axes: with Explicit axes (make_mesh's default) every worker-stacked array
  # carries its sharding in its type, and everyday code such as params["w"][4]
  # fails with a ShardingTypeError. shard_map works the same on both.
  return jax.make_mesh(
    (needed,),
    (axis_name,),
    axis_types=(jax.sharding.AxisType.Auto,),
    devices=devices[:needed],
  )


def stack_workers(trees: Sequence):
  """Stacks per-worker pytrees (same structure) along a new leading worker axis."""
  if not trees:
    raise ValueError("stack_workers needs at least one pytree.")
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack_workers(tree) -> list:
  """Splits a pytree with a leading worker axis into one pytree per worker."""
  sizes = {leaf.shape[0] for leaf in jax.tree.leaves(tree)}
  if len(sizes) != 1:
    raise ValueError(f"leaves disagree on the worker axis size: {sorted(sizes)}.")
  return [jax.tree.map(lambda leaf, i=i: leaf[i], tree) for i in range(sizes.pop())]


def replicate_workers(tree, num_workers: int):
  """``num_workers`` copies of ``tree`` stacked on a leading worker axis."""
  num_workers = _checks.check_integer("num_workers", num_workers, 1)
  return jax.tree.map(
    lambda leaf: jnp.broadcast_to(leaf, (num_workers,) + jnp.shape(leaf)), tree
  )


def shard_workers(tree, mesh, axis_name: str = "workers"):
  """Places a stacked pytree on ``mesh``: worker i's slice on worker i's device.

  Works across processes (multi-host): each process transfers only the slices
  of its own devices, from the host value it holds. Global arrays that are
  already distributed are resharded instead.
  """
  # P(axis_name), exactly what a worker_map'd step returns: an equivalent but
  # differently written spec (P(axis_name, None)) is another key of jit's dispatch
  # cache, so the first step would be dispatched twice.
  sharding = jax.sharding.NamedSharding(mesh, jax.P(axis_name))

  def put(leaf):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      return jax.device_put(leaf, sharding)
    host = np.asarray(leaf)
    host = host.astype(jax.dtypes.canonicalize_dtype(host.dtype), copy=False)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(put, tree)


def gather_workers(tree):
  """A stacked pytree as host NumPy arrays with every worker, from any process."""

  def get(leaf):
    if (
      not isinstance(leaf, jax.Array)
      or leaf.is_fully_addressable
      or (leaf.is_fully_replicated)
    ):
      return np.asarray(leaf)
    return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))

  return jax.tree.map(get, tree)


def initialize_multihost(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """Starts JAX's multi-controller runtime: one process per host, one mesh.

  A thin wrapper of ``jax.distributed.initialize`` that also selects CPU
  collectives that work across processes (gloo), so CPU-only clusters and
  loopback tests work like TPU pods and GPU clusters. With no arguments JAX
  detects the cluster (TPU pods, SLURM, Open MPI, Kubernetes). Call it before any
  other JAX operation, after `emulate_cpu_devices` if that is used; afterwards
  ``jax.devices()`` (and so `worker_mesh`) spans every process's devices.

  Args:
    coordinator_address: ``host:port`` of process 0.
    num_processes: number of processes.
    process_id: this process's index in ``[0, num_processes)``.
  """
  if num_processes is not None:
    num_processes = _checks.check_integer("num_processes", num_processes, 1)
  if process_id is not None:
    process_id = _checks.check_integer("process_id", process_id, 0)
    if num_processes is not None and process_id >= num_processes:
      raise ValueError(
        f"process_id={process_id} must be < num_processes={num_processes}."
      )
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
  )


def _check_worker_axis(args, num_workers: int, axis_name: str):
  for path, leaf in jax.tree_util.tree_flatten_with_path(args)[0]:
    shape = jax.numpy.shape(leaf)
    if not shape or shape[0] != num_workers:
      raise ValueError(
        f"argument{jax.tree_util.keystr(path)} has shape {shape}, but every input "
        f"of worker_map needs a leading worker axis of size {num_workers} (the "
        f"mesh axis {axis_name!r}); stack per-worker values with "
        "jax_aldsgd.stack_workers or replicate_workers."
      )


def worker_map(
  fn: Callable, mesh, *, axis_name: str = "workers", workers_per_device: int = 1
) -> Callable:
  """Runs ``fn`` once per worker, each on its own device, via ``jax.shard_map``.

  Every argument and result is a pytree whose leaves carry a leading worker axis
  (stacked per-worker values); ``fn`` sees one worker's slice without that axis,
  and may use collectives over ``axis_name`` (the transforms do). Inputs not yet
  on ``mesh`` are moved there (place them once with `shard_workers` to avoid
  the copy at every call).

  With ``workers_per_device = k > 1``, worker ``d * k + b`` is the b-th of k
  workers on device d: ``fn`` is vmapped over them (axis name
  ``jax_aldsgd._workers.LOCAL_AXIS``), and the transforms exchange with partners
  on the same device by indexing and with others by ``ppermute``. The results
  equal the one-worker-per-device layout's.

  Args:
    fn: per-worker function of pytrees.
    mesh: a mesh with axis ``axis_name`` (see `worker_mesh`).
    axis_name: the workers' mesh axis.
    workers_per_device: workers per device (as given to `worker_mesh`).

  Returns:
    A function of stacked pytrees; wrap it in ``jax.jit``.

  Example:
    >>> import jax, jax.numpy as jnp, jax_aldsgd as ald
    >>> mesh = ald.worker_mesh(4)  # on CPU: ald.emulate_cpu_devices(4) first
    >>> def scale(x, factor):  # one worker's view: x of shape (3,), factor ()
    ...   return x * factor, x.sum()
    >>> x = jnp.ones((4, 3))  # (workers, ...)
    >>> scaled, sums = jax.jit(ald.worker_map(scale, mesh))(x, jnp.arange(4.0))
    >>> scaled[:, 0].tolist(), sums.tolist()
    ([0.0, 1.0, 2.0, 3.0], [3.0, 3.0, 3.0, 3.0])
  """
  if axis_name not in mesh.axis_names:
    raise ValueError(
      f"mesh has axes {mesh.axis_names}, not {axis_name!r}; build it "
      "with jax_aldsgd.worker_mesh or pass its axis_name."
    )
  per_device = _checks.check_integer("workers_per_device", workers_per_device, 1)
  num_workers = mesh.shape[axis_name] * per_device
  spec = jax.P(axis_name)

  def per_block(*args):
    if per_device > 1:  # a (k, ...) block of every stacked input
      return jax.vmap(fn, axis_name=LOCAL_AXIS)(*args)
    # A (1, ...) block of every stacked input.
    out = fn(*jax.tree.map(lambda leaf: leaf[0], args))
    return jax.tree.map(lambda leaf: jnp.expand_dims(leaf, 0), out)

  mapped = jax.shard_map(per_block, mesh=mesh, in_specs=spec, out_specs=spec)

  def wrapper(*args):
    _check_worker_axis(args, num_workers, axis_name)
    return mapped(*args)

  return wrapper
