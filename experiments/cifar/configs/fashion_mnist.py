"""Fashion-MNIST, offline on a laptop: 8 workers, SmallCNN, 4 epochs.

The paper's protocol (8 workers, graph pair (0, 1) rotated, batch 16 per worker,
different initializations, weight decay 5e-4, no momentum) on the real data that
installs offline (Debian's dataset-fashion-mnist IDX files), with a small CNN and
a few epochs so that it finishes in minutes on a 2-core CPU. The config's
argument is a method preset, as in default.py (which lists them; default:
aldsgd_dpsgd_reference, the paper's setup: AL-DSGD on the reference's alternating
flags with its epoch phase). From the repository root:

    .venv/bin/python -m experiments.cifar --config=experiments/cifar/configs/fashion_mnist.py --workdir=workdirs/fmnist_aldsgd
    .venv/bin/python -m experiments.cifar --config=experiments/cifar/configs/fashion_mnist.py:matcha --workdir=workdirs/fmnist_matcha

Hardware: 2 CPU cores (8 emulated devices). Runtime and result of the first
command, measured on a 2-core AMD EPYC: about 1 minute; after 4 epochs mean test
accuracy 87.87% (worst worker 87.83%, averaged model 88.08%).

The heterogeneous-data presets (default.py's table) and the normalisation
options, each ``--config=experiments/cifar/configs/fashion_mnist.py:PRESET``
plus the flags shown, with the defaults above (iid shards, lr 0.1): test
accuracy after 4 epochs (mean / worst worker / averaged model), what a worker
sent, and wall time, measured on a 2-core machine shared with other jobs
(so 3-4 minutes each rather than 1):

    preset, flags                     mean    worst   averaged  MB sent  wall
    qg_dsgdm (momentum 0.9)           90.33%  90.26%  90.35%    2116     214 s
    d2                                88.19%  88.10%  88.21%    2116     242 s
    gradient_tracking                 86.28%  86.17%  86.22%    4232     228 s
    sgp                               88.72%  88.54%  88.79%     705     224 s
    dpsgd                             88.55%  88.43%  88.52%    2116     237 s
    dpsgd --config.norm=group         86.62%  86.50%  86.70%    2116     218 s
    dpsgd --config.bn_stats=gossip    88.59%  88.49%  88.52%    2126     212 s
"""

from experiments.cifar.configs import default


def get_config(preset: str | None = None):
  config = default.get_config(preset)
  config.dataset = "fashion_mnist"
  config.data_source = "idx"
  config.model = "small_cnn"
  config.learning_rate = 0.1
  config.num_epochs = 4
  config.lr_decay_epochs = (3,)
  config.eval_batch_size = 1000
  return config
