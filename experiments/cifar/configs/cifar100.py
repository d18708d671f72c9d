"""CIFAR-100, the paper's setup (AL-DSGD on D-PSGD, 8 workers, ResNet-50).

Command:

    python -m experiments.cifar --config=experiments/cifar/configs/cifar100.py \
        --workdir=workdirs/cifar100_aldsgd_dpsgd

Other methods: add --config.method=dpsgd (or matcha, aldsgd_matcha, ...).
Hardware and runtime: as default.py. Expected result: not yet run here.
"""

from experiments.cifar.configs import default


def get_config():
  config = default.get_config()
  config.dataset = "cifar100"
  return config
