"""CIFAR-100, the paper's setup (8 workers, ResNet-50; default.py for the rest).

The config's argument is a method preset, as in default.py (which lists them;
default: aldsgd_dpsgd_reference, the paper's AL-DSGD). From the repository root:

    .venv/bin/python -m experiments.cifar --config=experiments/cifar/configs/cifar100.py:aldsgd_dpsgd --workdir=workdirs/cifar100_aldsgd_dpsgd
    .venv/bin/python -m experiments.cifar --config=experiments/cifar/configs/cifar100.py:dpsgd --workdir=workdirs/cifar100_dpsgd

Hardware and runtime: as default.py (8 accelerators; ~6 days on a 2-core CPU).
Needs CIFAR-100 prepared for tensorflow-datasets (see README). Expected result:
not yet run here.
"""

from experiments.cifar.configs import default


def get_config(preset: str | None = None):
  config = default.get_config(preset)
  config.dataset = "cifar100"
  return config
