"""CIFAR-10, All-reduce SGD (centralized baseline): every worker averages with all after each step.

Everything else as in default.py (8 workers, graph pair (0, 1) rotated, ResNet-50,
batch 16 per worker, lr 0.4 with x0.1 at epochs 100 and 150 of 200, wd 5e-4).

Command:

    python -m experiments.cifar --config=experiments/cifar/configs/allreduce.py \\
        --workdir=workdirs/cifar10_allreduce

Hardware and runtime: as default.py (8 accelerators; ~6 days on a 2-core CPU).
Expected result: not yet run here.
"""

from experiments.cifar.configs import default


def get_config():
  config = default.get_config()
  config.method = "allreduce"
  return config
