"""Mesh helpers: emulated devices, stacking, worker_map, and their errors."""

import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_aldsgd as ald
from jax_aldsgd import schedules as S
from jax_aldsgd import topologies as T
from tests import helpers


def test_emulate_cpu_devices_in_a_fresh_process():
  env = helpers.fresh_env()
  env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=2"  # overridden
  code = (
    "import os, jax_aldsgd as a; a.emulate_cpu_devices(3); import jax; "
    "print(jax.device_count(), os.environ['PJRT_NPROC'], "
    "os.environ['XLA_FLAGS'])"
  )
  out = subprocess.run(
    [sys.executable, "-c", code],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
    check=True,
  ).stdout.split()
  assert out[0] == "3" and out[1] == "6"
  assert "--xla_force_host_platform_device_count=3" in out[2:]
  assert "--xla_force_host_platform_device_count=2" not in out[2:]
  assert "--xla_cpu_collective_call_warn_stuck_timeout_seconds=30" in out[2:]
  assert "--xla_cpu_collective_call_terminate_timeout_seconds=30" in out[2:]


def test_emulate_cpu_devices_after_jax_started():
  jax.devices()
  ald.emulate_cpu_devices(16)  # what conftest asked for: a no-op
  with pytest.raises(RuntimeError, match="called after JAX started"):
    ald.emulate_cpu_devices(8)
  with pytest.raises(ValueError, match="num_devices must be an integer >= 1"):
    ald.emulate_cpu_devices(0)


def test_worker_mesh_needs_enough_devices():
  assert ald.worker_mesh(4).shape["workers"] == 4
  with pytest.raises(ValueError, match="64 workers need 64 devices.*emulate_cpu"):
    ald.worker_mesh(64)


def test_stack_unstack_replicate():
  trees = [{"a": jnp.full((2,), i), "b": jnp.float32(i)} for i in range(3)]
  stacked = ald.stack_workers(trees)
  assert stacked["a"].shape == (3, 2) and stacked["b"].shape == (3,)
  back = ald.unstack_workers(stacked)
  assert len(back) == 3
  for tree, original in zip(back, trees):
    chex.assert_trees_all_equal(tree, original)
  copies = ald.replicate_workers({"w": jnp.arange(3.0)}, 4)
  assert copies["w"].shape == (4, 3)
  np.testing.assert_array_equal(copies["w"][2], [0, 1, 2])


def test_worker_map_checks_the_worker_axis():
  mesh = ald.worker_mesh(4)
  f = ald.worker_map(lambda x: x * 2, mesh)
  np.testing.assert_array_equal(f(jnp.arange(4.0)), [0, 2, 4, 6])
  with pytest.raises(ValueError, match="leading worker axis of size 4"):
    f(jnp.ones((3, 2)))
  with pytest.raises(ValueError, match="not 'devices'"):
    ald.worker_map(lambda x: x, mesh, axis_name="devices")


def _apply(tx, mesh, loss_shape=()):
  def f(params):
    state = tx.init(params)
    loss = jnp.zeros(loss_shape)
    updates, _ = tx.update(params, state, params, loss=loss)
    return updates

  n = mesh.shape["workers"]
  return jax.jit(ald.worker_map(f, mesh))(jnp.ones((n, 3)))


def test_schedule_and_mesh_size_mismatch():
  tx = ald.gossip(S.full(T.paper_graph(0)))
  with pytest.raises(
    ValueError,
    match="schedule has 8 workers but the mesh axis 'workers' holds 4 devices",
  ):
    _apply(tx, ald.worker_mesh(4))


def test_transform_outside_shard_map():
  tx = ald.gossip(S.full(T.ring(4)))
  params = jnp.ones(3)
  with pytest.raises(ValueError, match="axis 'workers' is not bound"):
    tx.update(params, tx.init(params), params)


def test_missing_params_and_loss():
  schedule = S.full(T.ring(4))
  mesh = ald.worker_mesh(4)
  for tx in (ald.gossip(schedule), ald.adjacent_leader(schedule), ald.allreduce()):
    with pytest.raises(ValueError, match="needs the current parameters"):
      jax.jit(ald.worker_map(lambda p, tx=tx: tx.update(p, tx.init(p))[0], mesh))(
        jnp.ones((4, 3))
      )
  leader = ald.adjacent_leader(schedule)
  with pytest.raises(ValueError, match="needs this worker's scalar mini-batch loss"):
    jax.jit(ald.worker_map(lambda p: leader.update(p, leader.init(p), p)[0], mesh))(
      jnp.ones((4, 3))
    )
  with pytest.raises(ValueError, match="scalar loss, got shape \\(2,\\)"):
    _apply(leader, mesh, loss_shape=(2,))
  with pytest.raises(TypeError, match="only floating-point parameters"):
    jax.jit(
      ald.worker_map(
        lambda p: leader.update(p, leader.init(p), p, loss=jnp.float32(0))[0], mesh
      )
    )(jnp.ones((4, 3), jnp.int32))
  with pytest.raises(TypeError, match="schedule must be a jax_aldsgd schedule"):
    ald.gossip(T.ring(4))
