#!/usr/bin/env bash
# On a machine with GPUs: does the overlapped exchange (overlap=True) run during
# the backward pass? Compiles the training step with XLA's latency-hiding
# scheduler and asynchronous collective-permutes, reports for each permute
# whether the schedule places compute between its start and done, and times
# overlap on vs off (experiments/overlap.py). One worker per GPU: set --workers
# to the number of GPUs (8 by default). Writes experiments/results/overlap_gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
PY=${PY:-.venv/bin/python}
"$PY" -m experiments.overlap --model "${MODEL:-resnet20}" --batch "${BATCH:-32}" \
  --workers "${WORKERS:-8}" --steps "${STEPS:-30}" \
  --json experiments/results/overlap_gpu.json "$@"
