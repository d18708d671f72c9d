#!/usr/bin/env bash
# Reproduces experiments/results/fashion_mnist.{md,png}: every method on
# Fashion-MNIST (Debian's offline IDX files), 8 workers, graph pair (0, 1) rotated,
# SmallCNN, batch 16 per worker, seed 1234, 10 epochs (lr 0.1, x0.1 at epochs 7, 9),
# and the same runs' accuracy against simulated wall-clock at 1 and 10 Gbit/s.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-workdirs/fmnist}
for method in allreduce dpsgd dpsgd_reference matcha aldsgd_dpsgd aldsgd_matcha; do
  .venv/bin/python -m experiments.cifar --config="experiments/cifar/configs/fashion_mnist.py:$method" \
    --workdir="$out/$method" --config.num_epochs=10 \
    --config.lr_decay_epochs='(7, 9)' --config.progress_bar=False
done
runs=("$out"/{allreduce,dpsgd,dpsgd_reference,matcha,aldsgd_dpsgd,aldsgd_matcha})
.venv/bin/python -m experiments.compare "${runs[@]}" --target 0.85 \
  --out experiments/results/fashion_mnist.png > experiments/results/fashion_mnist.md
# The same runs on simulated 1 and 10 Gbit/s networks (compute time as measured).
.venv/bin/python -m experiments.compare "${runs[@]}" --target 0.85 --gbit 1 10 \
  --out experiments/results/fashion_mnist_network.png \
  > experiments/results/fashion_mnist_network.md
