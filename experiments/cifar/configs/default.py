"""The paper's CIFAR-10 setup (docs/algorithm.md section 8), one preset per method.

8 workers on the reference graph pair (0, 1), rotated every step; ResNet-50
(CIFAR variant, 545,930 parameters), batch 16 per worker, lr 0.4 divided by 10 at
epochs 100 and 150 of 200, weight decay 5e-4, no momentum, seed 1234, a different
random initialization on every worker.

A method is three fields: ``mixing`` (allreduce | gossip | adjacent_leader |
local | qg_dsgdm | d2 | gradient_tracking), ``schedule`` (full | alternating |
matcha; none for allreduce and local) and ``compressor`` (none | top_k |
random_k | scaled_sign | qsgd). The config's argument (big_vision style) is a
preset that sets them and names the run in ``config.method``
(``experiments/cifar/methods.py``); a few presets set one more field:

    preset                  mixing             schedule     compressor  also sets
    allreduce               allreduce          none         none
    dpsgd                   gossip             full         none
    dpsgd_reference         gossip             alternating  none
    matcha                  gossip             matcha       none
    aldsgd_dpsgd            adjacent_leader    full         none
    aldsgd_dpsgd_reference  adjacent_leader    alternating  none
    aldsgd_matcha           adjacent_leader    matcha       none
    choco                   gossip             full         top_k
    aldsgd_choco            adjacent_leader    full         top_k
    local                   local              none         none
    qg_dsgdm                qg_dsgdm           full         none        momentum=0.9
    d2                      d2                 full         none
    gradient_tracking       gradient_tracking  full         none
    sgp                     gossip             full         none        topology=one_peer_exponential

``dpsgd`` is D-PSGD (every matching at every step, alpha = 2 / (lambda_2 +
lambda_max)); ``*_reference`` is the reference code's alternating "D-PSGD"
(docs/algorithm.md section 3); ``matcha`` has budget 0.5; ``aldsgd_*`` is AL-DSGD
on top of those; ``choco`` and ``aldsgd_choco`` compress (CHOCO-SGD,
docs/algorithm.md section 9) with any compressor (``--config.compressor``).
The heterogeneous-data methods (docs/algorithm.md section 11; none of them
combines with a compressor, overlap, gossip_every, delay or skip_nonfinite,
the library's table ``jax_aldsgd.check_options`` says why):
``qg_dsgdm`` is quasi-global momentum (Nesterov, ``config.momentum``, which
it needs: 0 is refused, as that is D-PSGD), with alpha = 1 / lambda_max(L)
as D² (below, ``config.neighbor_weight``): its momentum drives the workers
apart where lambda_min(W) < -0.921, which D-PSGD's alpha crosses on the
ring of 16 (-0.927); ``d2`` is D² with the neighbor
weight alpha = 1 / lambda_max(L) on each graph, so that every W_k = I - alpha L
is positive semidefinite (D-PSGD's alpha gives lambda_min(W) = -0.81 on the
paper pair and -0.74 on the ring, beyond the -1/3 D² needs);
``gradient_tracking`` exchanges the parameters and the gradient tracker, one
message of twice the model, with alpha = 1 / lambda_max(L) too (it is stable
only for lr L < (1 + lambda_min(W))^2 / 2); ``sgp`` is gossip on the one-peer exponential
graph (SGP without momentum here: ``config.momentum`` as in ``dpsgd``; one
message per worker and step; the topology is its own schedule, so it takes
``full`` only). Without an argument the preset is what the reference code ran as the paper's
AL-DSGD: ``aldsgd_dpsgd_reference`` (on the rotating pair, with the rotation and
the pull period restarted each epoch, docs/algorithm.md section 8.1). Other
combinations are set field by field and named in ``config.method``, e.g.
``--config.schedule=matcha --config.compressor=top_k`` with
``--config.method=aldsgd_matcha_top_k``. ``config.method`` only names the
method: the name of a preset means exactly that preset's fields, so
``--config.method=matcha`` alone is refused (choose ``default.py:matcha``).
Every preset, from the repository root:

    .venv/bin/python -m experiments.cifar --config=experiments/cifar/configs/default.py --workdir=workdirs/cifar10_aldsgd_dpsgd_reference
    .venv/bin/python -m experiments.cifar --config=experiments/cifar/configs/default.py:aldsgd_dpsgd --workdir=workdirs/cifar10_aldsgd_dpsgd
    .venv/bin/python -m experiments.cifar --config=experiments/cifar/configs/default.py:aldsgd_matcha --workdir=workdirs/cifar10_aldsgd_matcha
    .venv/bin/python -m experiments.cifar --config=experiments/cifar/configs/default.py:dpsgd --workdir=workdirs/cifar10_dpsgd
    .venv/bin/python -m experiments.cifar --config=experiments/cifar/configs/default.py:dpsgd_reference --workdir=workdirs/cifar10_dpsgd_reference
    .venv/bin/python -m experiments.cifar --config=experiments/cifar/configs/default.py:matcha --workdir=workdirs/cifar10_matcha
    .venv/bin/python -m experiments.cifar --config=experiments/cifar/configs/default.py:allreduce --workdir=workdirs/cifar10_allreduce
    .venv/bin/python -m experiments.cifar --config=experiments/cifar/configs/default.py:choco --config.compressor=scaled_sign --workdir=workdirs/cifar10_choco_scaled_sign
    .venv/bin/python -m experiments.cifar --config=experiments/cifar/configs/default.py:aldsgd_choco --workdir=workdirs/cifar10_aldsgd_choco
    .venv/bin/python -m experiments.cifar --config=experiments/cifar/configs/default.py:local --workdir=workdirs/cifar10_local
    .venv/bin/python -m experiments.cifar --config=experiments/cifar/configs/default.py:qg_dsgdm --workdir=workdirs/cifar10_qg_dsgdm
    .venv/bin/python -m experiments.cifar --config=experiments/cifar/configs/default.py:d2 --workdir=workdirs/cifar10_d2
    .venv/bin/python -m experiments.cifar --config=experiments/cifar/configs/default.py:gradient_tracking --workdir=workdirs/cifar10_gradient_tracking
    .venv/bin/python -m experiments.cifar --config=experiments/cifar/configs/default.py:sgp --workdir=workdirs/cifar10_sgp

The other config files take the same argument.

Hardware: meant for 8 accelerators (one worker per device). On CPU the workers run
on emulated devices: ~0.9 s per iteration of all 8 workers on a 2-core machine,
i.e. ~6 days for 200 epochs. Needs CIFAR-10 prepared for tensorflow-datasets
(see README). Expected result: the paper reports ~91-92% final test accuracy per
worker for AL-DSGD on this setup; not yet run here.
"""

import ml_collections

from experiments.cifar import methods


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  """The paper's setup with the method ``preset`` (default: the paper's AL-DSGD)."""
  config = ml_collections.ConfigDict()

  # The method (config.mixing, config.schedule, config.compressor) and
  # config.method, the name the run is recorded under, are set by the preset
  # (the table above) at the end, after the defaults some presets change.

  # Data.
  config.dataset = "cifar10"  # cifar10 | cifar100 | fashion_mnist
  config.data_source = "tfds"  # tfds | idx (Debian's Fashion-MNIST files)
  config.data_dir = ""  # "" = tensorflow-datasets' default / the Debian path

  # Model: resnet50 | resnet20 | wrn28_10 | vgg16_bn | small_cnn.
  config.model = "resnet50"
  # Normalisation layers: batch (BatchNorm, the reference) | group (GroupNorm,
  # min(32, channels // 4) groups: Wu & He's 32 where the layer is wide enough,
  # at least 4 channels per group; no batch statistics, so a worker's output
  # does not depend on its batch, docs/algorithm.md section 11). group exists
  # for small_cnn and resnet20.
  config.norm = "batch"
  # BatchNorm's running statistics (used at evaluation): local (each worker
  # keeps its own, the reference) | gossip (mixed after every communicating
  # step with the step's W_k: plain gossip, uncompressed, without AL-DSGD's
  # pulls; the mean for allreduce; sent with the step's message and counted in
  # its bytes). Only with norm=batch and a mixing that communicates.
  config.bn_stats = "local"

  # Workers and communication.
  config.num_workers = 8
  config.workers_per_device = 1  # >1: several workers share a device (vmap)
  # paper | ring | torus | exponential | complete | one_peer_exponential (the
  # directed, time-varying graph of SGP: its own schedule, so schedule full only).
  config.topology = "paper"
  # Paper graphs in step order: the reference uses graph g+1 at even steps and
  # graph g at odd steps, so the pair (0, 1) is (1, 0) here. One id: no rotation.
  config.graph_ids = (1, 0)
  config.graph_variant = "pairs"
  # The reference counts the graph rotation and AL-DSGD's pull period from each
  # epoch's first batch (batch_idx % 2, batch_idx % iteration), so with an odd
  # number of batches per epoch (CIFAR-10: 391) graph g+1 runs twice in a row at
  # each epoch start. True reproduces that; False counts from the global step.
  config.reference_epoch_phase = True
  # The weight alpha of each matching in W_k = I - alpha L_k (full and
  # alternating schedules; MATCHA and the one-peer graph set their own):
  # auto (1 / lambda_max(L) for d2, qg_dsgdm and gradient_tracking, which
  # need lambda_min(W_k) bounded away from -1; D-PSGD's 2 / (lambda_2 +
  # lambda_max) otherwise) |
  # dpsgd | psd (1 / lambda_max(L): W_k positive semidefinite).
  config.neighbor_weight = "auto"
  config.matcha_budget = 0.5
  config.matcha_seed = 0

  # AL-DSGD (reference values).
  config.c1 = 0.3
  config.c2 = 0.1
  config.p1 = 0.2
  config.p2 = 0.2
  config.pull_every = 1
  # Leave neighbors whose parameters are NaN/Inf out of the gossip average
  # (a diverging worker then cannot poison the others). The reference has no
  # such guard; it costs one finiteness check of the parameters per step.
  config.skip_nonfinite = False

  # Communication variants (docs/algorithm.md section 10; not in the reference).
  # overlap: exchange x instead of x + u (adapt-while-combine), so the exchange
  # does not wait for the gradient. gossip_every: communicate every that many
  # steps (local steps). delay: gossip mixes neighbors' shares that many steps
  # late (push-sum; D-PSGD and MATCHA only).
  config.overlap = False
  config.gossip_every = 1
  config.delay = 0

  # Compressed gossip (CHOCO-SGD, docs/algorithm.md section 9), with any
  # config.compressor but none: the fraction of entries top_k and random_k send;
  # qsgd's levels; the consensus step gamma in (0, 1], or "auto" to tune it once
  # at the start (jax_aldsgd.tune_consensus_lr; the run logs it).
  config.compress_fraction = 0.1
  config.qsgd_levels = 16
  config.consensus_lr = "auto"

  # Optimization (the reference's lr is tuned for D-PSGD and reused for all).
  config.batch_size = 16  # per worker
  config.learning_rate = 0.4
  config.lr_decay_epochs = (100, 150)
  config.lr_decay_factor = 0.1
  config.momentum = 0.0
  config.weight_decay = 5e-4
  config.num_epochs = 200
  config.same_init = False  # the reference starts workers from different inits
  # How the training set is split across workers: iid (the reference) |
  # dirichlet (label skew with concentration dirichlet_alpha; smaller is more
  # skewed) | classes (each worker gets classes_per_worker label-sorted pieces).
  config.partition = "iid"
  config.dirichlet_alpha = 0.5
  config.classes_per_worker = 2

  config.seed = 1234

  # Evaluation and logging.
  config.eval_batch_size = 500
  config.max_steps_per_epoch = 0  # 0 = the whole epoch (tests use a few steps)
  config.max_eval_examples = 0  # 0 = the whole test set
  # Epochs before the last evaluate on the first this many of those examples
  # (a cheaper, noisier curve; evaluating 16 workers on all 10,000 costs about
  # what an epoch of training does). 0 = every epoch evaluates on all of them.
  # The record's eval_examples says which.
  config.interim_eval_examples = 0
  config.progress_bar = True
  # Checkpoint and stop cleanly after this many steps of this invocation (for
  # time-limited or preemptible jobs; rerun to continue). 0 = run to the end.
  config.stop_after_steps = 0
  config.plots = True

  methods.apply_preset(config, preset or methods.DEFAULT_PRESET)
  return config
