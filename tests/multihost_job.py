"""One process of a multi-process run (launched by tests/lib/test_multihost.py).

    python tests/multihost_job.py PROCESS_ID NUM_PROCESSES PORT OUT.npz

Each process emulates 8 / NUM_PROCESSES CPU devices; together they train 8
workers with D-PSGD and with AL-DSGD on the quadratic problem of tests/helpers.py
and process 0 writes every worker's final parameters to OUT.npz.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))

import jax_aldsgd as ald

STEPS = 7


def run(process_id: int, num_processes: int, port: int, out: str) -> None:
  ald.emulate_cpu_devices(8 // num_processes, collective_timeout_seconds=60)
  if num_processes > 1:
    ald.initialize_multihost(f"127.0.0.1:{port}", num_processes, process_id)
  import jax
  import numpy as np

  from tests import helpers, reference

  assert jax.device_count() == 8, jax.device_count()
  results = {}
  for method in ("dsgd", "aldsgd"):
    rng = np.random.default_rng(0)  # the same data on every process
    problem = reference.Quadratic(rng, 8, helpers.flat_dim(helpers.SHAPES))
    x0 = rng.normal(size=(8, helpers.flat_dim(helpers.SHAPES)))
    schedule = ald.schedules.rotating(
      [
        ald.schedules.matcha(ald.topologies.paper_graph(1), 0.5, seed=3),
        ald.schedules.full(ald.topologies.paper_graph(0)),
      ]
    )
    tx = getattr(ald, method)(0.05, schedule, momentum=0.5)
    results[method] = run_steps(tx, x0, problem, ald.worker_mesh(8))
  if jax.process_index() == 0:
    np.savez(out, **results)


def run_steps(tx, x0, problem, mesh):
  """helpers.run, with process-safe placement and gathering."""
  import jax

  from tests import helpers

  step = helpers.make_step(tx, mesh)
  params = ald.shard_workers(helpers.unflatten(x0, helpers.SHAPES), mesh)
  state = jax.jit(ald.worker_map(tx.init, mesh))(params)
  a = ald.shard_workers(problem.a.astype("float32"), mesh)
  b = ald.shard_workers(problem.b.astype("float32"), mesh)
  for _ in range(STEPS):
    params, state, _ = step(params, state, a, b)
  return helpers.flatten(ald.gather_workers(params), helpers.SHAPES)


if __name__ == "__main__":
  process_id, num_processes, port, out = sys.argv[1:]
  run(int(process_id), int(num_processes), int(port), out)
