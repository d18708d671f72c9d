"""A quick CIFAR-10 sanity run: ResNet-20, 8 workers, 5 epochs.

The config's argument is a method preset, as in default.py (which lists them;
default: aldsgd_dpsgd_reference, the paper's AL-DSGD). From the repository root:

    .venv/bin/python -m experiments.cifar --config=experiments/cifar/configs/quick.py:aldsgd_dpsgd --workdir=workdirs/cifar10_quick

Hardware: one machine (8 accelerators, or 8 emulated CPU devices). Needs CIFAR-10
prepared for tensorflow-datasets (see README). Runtime and result: not yet run
here (no CIFAR-10 on the development machine).
"""

from experiments.cifar.configs import default


def get_config(preset: str | None = None):
  config = default.get_config(preset)
  config.model = "resnet20"
  config.learning_rate = 0.1
  config.num_epochs = 5
  config.lr_decay_epochs = (4,)
  return config
