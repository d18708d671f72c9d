r"""Soak test: many back-to-back AL-DSGD steps on emulated CPU devices, no hangs.

    .venv/bin/python -m experiments.soak [--steps=10000] [--workers=8] [--timeout=30]

Dispatches ``--steps`` jitted AL-DSGD steps (rotating MATCHA schedule, so the
collectives change from step to step) with no host synchronisation in between,
exactly the pattern that deadlocks XLA's CPU collectives without ``PJRT_NPROC``.
A watchdog thread checks that the step counter keeps moving; a stall longer than
``--timeout`` seconds counts as a hang (and XLA's own collective timeout, set by
`jax_aldsgd.emulate_cpu_devices`, would abort the process). Prints one line of
results: steps, hangs, wall time, steps per second.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=10_000)
  parser.add_argument("--workers", type=int, default=8)
  parser.add_argument(
    "--timeout",
    type=float,
    default=30.0,
    help="seconds without progress that count as a hang",
  )
  args = parser.parse_args(argv)
  if args.steps < 1 or args.workers < 2 or args.timeout <= 0:
    parser.error("--steps must be >= 1, --workers >= 2 and --timeout > 0.")

  import jax_aldsgd as ald

  ald.emulate_cpu_devices(args.workers, collective_timeout_seconds=60)
  import jax
  import jax.numpy as jnp
  import optax

  n = args.workers
  graphs = [ald.topologies.exponential(n), ald.topologies.ring(n)]
  schedule = ald.schedules.rotating([ald.schedules.matcha(g, 0.5) for g in graphs])
  tx = ald.aldsgd(0.01, schedule)
  mesh = ald.worker_mesh(n)
  data = jax.random.normal(jax.random.key(0), (n, 32, 64))

  def step(params, state, x):
    loss, grads = jax.value_and_grad(lambda p: jnp.mean(jnp.tanh(x @ p["w"]) ** 2))(
      params
    )
    updates, state = tx.update(grads, state, params, loss=loss)
    return optax.apply_updates(params, updates), state, loss

  step = jax.jit(ald.worker_map(step, mesh), donate_argnums=(0, 1))
  params = ald.shard_workers(
    {"w": jax.random.normal(jax.random.key(1), (n, 64, 64))}, mesh
  )
  state = jax.jit(ald.worker_map(tx.init, mesh))(params)
  data = ald.shard_workers(data, mesh)

  done = [0]
  hangs = [0]
  finished = threading.Event()

  def watchdog():
    last, since = -1, time.monotonic()
    while not finished.wait(1.0):
      if done[0] != last:
        last, since = done[0], time.monotonic()
      elif time.monotonic() - since > args.timeout:
        hangs[0] += 1
        print(
          f"HANG: no progress for {args.timeout:.0f} s at step {done[0]}",
          file=sys.stderr,
          flush=True,
        )
        since = time.monotonic()

  threading.Thread(target=watchdog, daemon=True).start()
  started = time.monotonic()
  for k in range(args.steps):
    params, state, loss = step(params, state, data)
    if k % 100 == 99:  # a sync point now and then, so progress is observable
      loss.block_until_ready()
    done[0] = k + 1
  jax.block_until_ready(params)
  finished.set()
  elapsed = time.monotonic() - started
  ok = bool(jnp.all(jnp.isfinite(loss)))
  print(
    f"steps={args.steps} workers={n} hangs={hangs[0]} wall={elapsed:.1f}s "
    f"steps_per_s={args.steps / elapsed:.1f} final_loss_finite={ok}"
  )
  return 0 if hangs[0] == 0 and ok else 1


if __name__ == "__main__":
  sys.exit(main())
