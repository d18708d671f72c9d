"""Image classifiers for the CIFAR / Fashion-MNIST experiments, as Flax NNX modules.

Every model maps NHWC float32 images ``(batch, H, W, in_channels)`` with
``H, W >= 8`` to logits ``(batch, num_classes)``. The classifier head sits on a
global average pool of the last feature map, so the same model runs on 32x32
CIFAR and 28x28 Fashion-MNIST; on 32x32 inputs this is exactly the 8x8 average
pool of the reference code. The CIFAR ResNets are one `ResNet` built from stage
sizes and a block type; the paper's ResNet-50, ResNet-20 and WRN-28-10 are
``functools.partial`` variants of it (as in flax's ``examples/imagenet``).

Conventions, chosen to match the reference PyTorch code (docs/algorithm.md section 8):

* BatchNorm is ``nnx.BatchNorm`` with PyTorch's defaults (PyTorch momentum 0.1,
  i.e. Flax momentum 0.9, epsilon 1e-5). Its running statistics are
  ``nnx.BatchStat`` variables, which the trainer keeps per worker (local, or
  gossiped with ``config.bn_stats='gossip'``); the trainable weights are
  ``nnx.Param``. ``model.train()`` / ``model.eval()``
  switch between batch and running statistics; a new model is in train mode.
* Convolutions pad like PyTorch (``kernel_size // 2`` on every side), not like
  Flax's ``"SAME"``, which pads a stride-2 convolution on the bottom/right only.
* Weights and biases start from PyTorch's default initialisation
  (uniform in ``+-1/sqrt(fan_in)``), BatchNorm from scale 1 and bias 0.
* One difference remains: Flax's running variance averages the biased batch
  variance, PyTorch's the unbiased one (a factor m/(m-1) with m = batch x H x W
  values per channel, at least 16 x 16 here).
* ``small_cnn`` and ``resnet20`` also come with GroupNorm in place of every
  BatchNorm (``create_model(..., norm="group")``; `GROUP_NORM_MODELS`): no
  batch statistics, so an image's logits do not depend on the rest of its
  batch, and no worker's skewed shard leaks into running statistics
  (docs/algorithm.md section 11). The layers keep their ``bn*`` names.

Example:
  >>> from flax import nnx
  >>> model = create_model("resnet20", num_classes=10, in_channels=3,
  ...                      rngs=nnx.Rngs(0))
  >>> count_params(model)
  272474
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from jax_aldsgd import _checks

# PyTorch's BatchNorm2d defaults: running = 0.9 running + 0.1 batch.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5

# Work around XLA's CPU backend, which runs a 1x1 convolution's kernel gradient
# as a slow whole-feature-map convolution: compute 1x1 convolutions as matrix
# products instead (`PointwiseConv`; same parameters, same function, bitwise the
# same gradients). Harmless elsewhere; False builds plain ``nnx.Conv`` layers.
ONE_BY_ONE_CONV_AS_MATMUL_FOR_XLA_CPU = True


def _torch_uniform(fan_in: int | None = None):
  """PyTorch's default init: uniform in +-1/sqrt(fan_in), fan_in = in * kh * kw.

  That is ``kaiming_uniform_(a=sqrt(5))`` for weights (fan_in read from the
  kernel's shape) and the same bound for biases (fan_in passed in).
  """

  def init(key, shape, dtype=jnp.float32):
    # Kernels are (..., in, out): every axis but the last feeds one output.
    bound = 1 / math.sqrt(fan_in if fan_in is not None else math.prod(shape[:-1]))
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pointwise(x: jax.Array, kernel: jax.Array, precision) -> jax.Array:
  """``x @ kernel`` over the channel axis: (..., in) x (in, out) -> (..., out)."""
  return jnp.einsum("...i,io->...o", x, kernel, precision=precision)


def _pointwise_fwd(x, kernel, precision):
  return _pointwise(x, kernel, precision), (x, kernel)


def _pointwise_bwd(precision, residuals, g):
  x, kernel = residuals
  dx = jnp.einsum("...o,io->...i", g, kernel, precision=precision)
  # The kernel gradient contracts the pixels, the leading axis of both operands.
  # Written this way XLA keeps both operands as they are; autodiff's version
  # leads XLA's CPU layout assignment to transpose the output gradient first and
  # then run a slow Eigen contraction (8x slower on its own, 15% of a ResNet-50
  # backward pass). The result is bitwise the same.
  dkernel = lax.dot_general(
    x.reshape(-1, x.shape[-1]),
    g.reshape(-1, g.shape[-1]),
    (((0,), (0,)), ((), ())),
    precision=precision,
  )
  return dx, dkernel


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


class PointwiseConv(nnx.Conv):
  """A 1x1 convolution (no padding, optional stride) computed as a matrix product.

  Same parameters (``kernel`` of shape (1, 1, in, out), ``bias``) and the same
  function as ``nnx.Conv``; a stride s keeps pixels (s*i, s*j) as PyTorch does.
  Why: XLA's CPU backend turns a 1x1 convolution's kernel gradient into a
  convolution whose window is the whole feature map, with the activations
  re-laid out batch-minor first; as matrix products (with the kernel gradient's
  operand order fixed, see ``_pointwise_bwd``) both passes are plain GEMMs.
  Measured on one core (jax 0.10.2), one worker's forward + backward of the
  paper's ResNet-50 at batch 16: 0.70x the time with ``nnx.Conv``; the two
  agree to 1.6e-14 in float64.
  """

  def __call__(self, inputs: jax.Array) -> jax.Array:
    stride = self.strides if isinstance(self.strides, int) else self.strides[0]
    if stride != 1:
      inputs = inputs[..., ::stride, ::stride, :]
    kernel = self.kernel[...]
    bias = self.bias[...] if self.bias is not None else None
    inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
    y = _pointwise(inputs, kernel[0, 0], self.precision)
    return y if bias is None else y + bias


def _conv(
  in_channels: int,
  out_channels: int,
  kernel_size: int,
  *,
  stride: int = 1,
  use_bias: bool,
  rngs: nnx.Rngs,
) -> nnx.Conv:
  """A square convolution padded like PyTorch's ``padding=kernel_size // 2``."""
  pad = kernel_size // 2
  pointwise = kernel_size == 1 and ONE_BY_ONE_CONV_AS_MATMUL_FOR_XLA_CPU
  return (PointwiseConv if pointwise else nnx.Conv)(
    in_channels,
    out_channels,
    (kernel_size, kernel_size),
    strides=stride,
    padding=((pad, pad), (pad, pad)),
    use_bias=use_bias,
    kernel_init=_torch_uniform(),
    bias_init=_torch_uniform(in_channels * kernel_size * kernel_size),
    rngs=rngs,
  )


def _batch_norm(num_features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(
    num_features, momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON, rngs=rngs
  )


def group_norm_groups(num_features: int) -> int:
  """GroupNorm's groups for ``num_features`` channels: min(32, C // 4), >= 1.

  Wu & He's 32 groups (ECCV 2018) where a layer is wide enough (128 channels
  and more), otherwise groups of 4 channels: these CIFAR nets are narrow (16
  to 128 channels), and Wu & He found any group count from 2 to 64 about as
  good, with 1 channel per group (instance norm) clearly worse.
  """
  return min(32, max(num_features // 4, 1))


def _group_norm(num_features: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
  # PyTorch's GroupNorm epsilon; scale 1 and bias 0, as BatchNorm.
  return nnx.GroupNorm(
    num_features,
    num_groups=group_norm_groups(num_features),
    epsilon=BATCH_NORM_EPSILON,
    rngs=rngs,
  )


# A normalisation layer of a given width: _batch_norm or _group_norm.
Norm = Callable[[int, nnx.Rngs], nnx.Module]


def _projection(
  in_channels: int,
  out_channels: int,
  stride: int,
  *,
  use_bias: bool,
  rngs: nnx.Rngs,
  norm: Norm = _batch_norm,
) -> nnx.Sequential | None:
  """A residual block's shortcut: strided 1x1 convolution + normalisation when
  the shape changes (He et al.'s option B), None (identity) otherwise."""
  if stride == 1 and in_channels == out_channels:
    return None
  return nnx.Sequential(
    _conv(in_channels, out_channels, 1, stride=stride, use_bias=use_bias, rngs=rngs),
    norm(out_channels, rngs),
  )


def _linear(in_features: int, out_features: int, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(
    in_features,
    out_features,
    kernel_init=_torch_uniform(),
    bias_init=_torch_uniform(in_features),
    rngs=rngs,
  )


def _global_average_pool(x: jax.Array) -> jax.Array:
  return jnp.mean(x, axis=(1, 2))  # (B, H, W, C) -> (B, C)


def _max_pool(x: jax.Array) -> jax.Array:
  # "SAME" pads odd maps with -inf on the bottom/right (PyTorch's ceil_mode=True),
  # so 28x28 inputs go 28 -> 14 -> 7 -> 4 -> 2 -> 1 instead of reaching 0x0.
  return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")


def _check_images(x: jax.Array, in_channels: int, model_name: str):
  if x.ndim != 4 or x.shape[-1] != in_channels:
    raise ValueError(
      f"{model_name} expects NHWC images of shape (batch, H, W, {in_channels}), "
      f"got shape {tuple(x.shape)}. Add a batch axis or put channels last."
    )


# --- CIFAR ResNets: one network, three block types ---


class Bottleneck(nnx.Module):
  """Bottleneck block: 1x1 -> 3x3 (strided) -> 1x1 (x4 channels), plus shortcut.

  Post-activation (conv-BN-ReLU), as in the reference code's "ResNet-50".
  """

  expansion = 4
  preactivation = False

  def __init__(
    self,
    in_channels: int,
    planes: int,
    stride: int,
    *,
    use_bias: bool,
    rngs: nnx.Rngs,
    norm: Norm = _batch_norm,
  ):
    out_channels = planes * self.expansion
    self.conv1 = _conv(in_channels, planes, 1, use_bias=use_bias, rngs=rngs)
    self.bn1 = norm(planes, rngs)
    self.conv2 = _conv(planes, planes, 3, stride=stride, use_bias=use_bias, rngs=rngs)
    self.bn2 = norm(planes, rngs)
    self.conv3 = _conv(planes, out_channels, 1, use_bias=use_bias, rngs=rngs)
    self.bn3 = norm(out_channels, rngs)
    self.shortcut = _projection(
      in_channels, out_channels, stride, use_bias=use_bias, rngs=rngs, norm=norm
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = nnx.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    shortcut = x if self.shortcut is None else self.shortcut(x)
    return nnx.relu(y + shortcut)


class BasicBlock(nnx.Module):
  """Post-activation basic block (He et al., 2016): two 3x3 convolutions and a
  shortcut (a strided 1x1 convolution + BatchNorm when the shape changes)."""

  expansion = 1
  preactivation = False

  def __init__(
    self,
    in_channels: int,
    planes: int,
    stride: int,
    *,
    use_bias: bool,
    rngs: nnx.Rngs,
    norm: Norm = _batch_norm,
  ):
    self.conv1 = _conv(
      in_channels, planes, 3, stride=stride, use_bias=use_bias, rngs=rngs
    )
    self.bn1 = norm(planes, rngs)
    self.conv2 = _conv(planes, planes, 3, use_bias=use_bias, rngs=rngs)
    self.bn2 = norm(planes, rngs)
    self.shortcut = _projection(
      in_channels, planes, stride, use_bias=use_bias, rngs=rngs, norm=norm
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x if self.shortcut is None else self.shortcut(x)
    return nnx.relu(y + shortcut)


class WideBasicBlock(nnx.Module):
  """Pre-activation wide block (Zagoruyko & Komodakis, 2016): BN-ReLU-conv3x3
  twice, no dropout. When the shape changes, the shortcut is a strided 1x1
  convolution of the pre-activated input (as in the authors' code)."""

  expansion = 1
  preactivation = True

  def __init__(
    self,
    in_channels: int,
    planes: int,
    stride: int,
    *,
    use_bias: bool,
    rngs: nnx.Rngs,
    norm: Norm = _batch_norm,
  ):
    self.bn1 = norm(in_channels, rngs)
    self.conv1 = _conv(
      in_channels, planes, 3, stride=stride, use_bias=use_bias, rngs=rngs
    )
    self.bn2 = norm(planes, rngs)
    self.conv2 = _conv(planes, planes, 3, use_bias=use_bias, rngs=rngs)
    if stride != 1 or in_channels != planes:
      self.shortcut = _conv(
        in_channels, planes, 1, stride=stride, use_bias=use_bias, rngs=rngs
      )
    else:
      self.shortcut = None

  def __call__(self, x: jax.Array) -> jax.Array:
    activated = nnx.relu(self.bn1(x))
    y = self.conv1(activated)
    y = self.conv2(nnx.relu(self.bn2(y)))
    shortcut = x if self.shortcut is None else self.shortcut(activated)
    return y + shortcut


class ResNet(nnx.Module):
  """A CIFAR ResNet: 3x3 stem to 16 channels, stages of blocks, average pool, linear.

  Stage ``s`` has ``stage_sizes[s]`` blocks of ``16 * 2**s * widen_factor``
  planes (``block_cls.expansion`` times that many output channels); the first
  block of every stage but the first has stride 2. Post-activation blocks get a
  BN-ReLU after the stem; pre-activation ones (``block_cls.preactivation``) a
  BN-ReLU after the last stage instead.
  """

  def __init__(
    self,
    stage_sizes,
    block_cls,
    *,
    in_channels: int,
    num_classes: int,
    rngs: nnx.Rngs,
    widen_factor: int = 1,
    use_bias: bool = False,
    norm: Norm = _batch_norm,
  ):
    """Builds the network.

    Args:
      stage_sizes: blocks per stage, e.g. ``(3, 3, 3)`` for ResNet-20.
      block_cls: `Bottleneck`, `BasicBlock` or `WideBasicBlock`.
      in_channels: channels of the input images (3 for CIFAR).
      num_classes: number of output logits.
      rngs: the ``params`` stream initialises the weights.
      widen_factor: the width multiplier ``k`` of wide ResNets.
      use_bias: whether every convolution has a bias (the reference's ResNet-50).
      norm: the normalisation layer of a width (BatchNorm; GroupNorm for
        `GROUP_NORM_MODELS`).
    """
    if not stage_sizes or any(size < 1 for size in stage_sizes):
      raise ValueError(
        f"stage_sizes must be a non-empty sequence of block counts "
        f">= 1, got {stage_sizes!r}."
      )
    widen_factor = _checks.check_integer("widen_factor", widen_factor, 1)
    self.in_channels = in_channels
    self.conv1 = _conv(in_channels, 16, 3, use_bias=use_bias, rngs=rngs)
    self.bn1 = None if block_cls.preactivation else norm(16, rngs)
    stages = []
    channels = 16
    for stage, num_blocks in enumerate(stage_sizes):
      planes = 16 * 2**stage * widen_factor
      blocks = []
      for block in range(num_blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        blocks.append(
          block_cls(channels, planes, stride, use_bias=use_bias, rngs=rngs, norm=norm)
        )
        channels = planes * block_cls.expansion
      stages.append(nnx.Sequential(*blocks))
    self.stages = nnx.Sequential(*stages)
    self.bn_final = norm(channels, rngs) if block_cls.preactivation else None
    self.linear = _linear(channels, num_classes, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    _check_images(x, self.in_channels, "ResNet")
    x = self.conv1(x)
    if self.bn1 is not None:
      x = nnx.relu(self.bn1(x))
    x = self.stages(x)
    if self.bn_final is not None:
      x = nnx.relu(self.bn_final(x))
    return self.linear(_global_average_pool(x))


# The paper's CIFAR "ResNet-50": a narrow bottleneck ResNet with a bias on every
# convolution, 545,930 parameters for 3 input channels and 10 classes (the
# reference's "about 546k"; without the biases 542,106).
ResNet50Cifar = functools.partial(ResNet, (3, 4, 6), Bottleneck, use_bias=True)
# He et al.'s CIFAR ResNet-20, ~0.27M parameters.
ResNet20 = functools.partial(ResNet, (3, 3, 3), BasicBlock)
# WRN-28-10 (dropout 0), 36,479,194 parameters for 10 classes.
WideResNet28_10 = functools.partial(ResNet, (4, 4, 4), WideBasicBlock, widen_factor=10)


# --- VGG-16 with BatchNorm, CIFAR variant ---

# Output channels of the 3x3 convolutions, "M" for a 2x2 max pool.
VGG16_CONFIG = (
  64,
  64,
  "M",
  128,
  128,
  "M",
  256,
  256,
  256,
  "M",
  512,
  512,
  512,
  "M",
  512,
  512,
  512,
  "M",
)


class VGG16BN(nnx.Module):
  """VGG-16 with BatchNorm for CIFAR: 13 conv-BN-ReLU layers, one linear layer.

  Convolutions are 3x3 with padding 1 and a bias (as in the common PyTorch
  CIFAR variant); after the five 2x2 max pools a 32x32 input is a 1x1x512 map,
  which is averaged (a no-op on 1x1) and fed to a linear 512 -> classes. The max
  pools use "SAME" padding, so inputs whose size is not a multiple of 32 (28x28)
  also end at 1x1 (28 -> 14 -> 7 -> 4 -> 2 -> 1); on 32x32 this is PyTorch's
  plain 2x2 pooling.
  """

  def __init__(self, *, in_channels: int, num_classes: int, rngs: nnx.Rngs):
    """Builds the network.

    Args:
      in_channels: channels of the input images.
      num_classes: number of output logits.
      rngs: the ``params`` stream initialises the weights.
    """
    self.in_channels = in_channels
    layers = []
    channels = in_channels
    for item in VGG16_CONFIG:
      if item == "M":
        layers.append(_max_pool)
      else:
        layers += [
          _conv(channels, item, 3, use_bias=True, rngs=rngs),
          _batch_norm(item, rngs),
          nnx.relu,
        ]
        channels = item
    self.features = nnx.Sequential(*layers)
    self.linear = _linear(channels, num_classes, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    _check_images(x, self.in_channels, type(self).__name__)
    return self.linear(_global_average_pool(self.features(x)))


# --- A small, fast convnet for CPU runs ---


class SmallCNN(nnx.Module):
  """A small, fast convnet for quick CPU runs (Fashion-MNIST, CIFAR): ~95k parameters.

  Three 3x3 stride-2 convolutions (32, 64, 128 channels, no bias: BatchNorm's
  bias takes its role), each followed by BN and ReLU, then global average pool
  and linear 128 -> classes. Strided convolutions rather than conv + max pool:
  on CPU, max-pool gradients and full-resolution activations dominated the step
  (a conv32-pool-conv64-pool-conv128 net took about 80 ms per training step of
  8 workers x 16 Fashion-MNIST images on 2 CPU cores, this one about 18 ms).
  """

  def __init__(
    self,
    *,
    in_channels: int,
    num_classes: int,
    rngs: nnx.Rngs,
    norm: Norm = _batch_norm,
  ):
    """Builds the network.

    Args:
      in_channels: channels of the input images.
      num_classes: number of output logits.
      rngs: the ``params`` stream initialises the weights.
      norm: the normalisation layer of a width (BatchNorm, or GroupNorm).
    """
    self.in_channels = in_channels
    self.conv1 = _conv(in_channels, 32, 3, stride=2, use_bias=False, rngs=rngs)
    self.bn1 = norm(32, rngs)
    self.conv2 = _conv(32, 64, 3, stride=2, use_bias=False, rngs=rngs)
    self.bn2 = norm(64, rngs)
    self.conv3 = _conv(64, 128, 3, stride=2, use_bias=False, rngs=rngs)
    self.bn3 = norm(128, rngs)
    self.linear = _linear(128, num_classes, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    _check_images(x, self.in_channels, type(self).__name__)
    x = nnx.relu(self.bn1(self.conv1(x)))  # (B, 14, 14, 32) for 28x28 inputs
    x = nnx.relu(self.bn2(self.conv2(x)))  # (B, 7, 7, 64)
    x = nnx.relu(self.bn3(self.conv3(x)))  # (B, 4, 4, 128)
    return self.linear(_global_average_pool(x))


# --- Registry ---

MODELS: dict[str, Callable[..., nnx.Module]] = {
  "resnet50": ResNet50Cifar,
  "resnet20": ResNet20,
  "wrn28_10": WideResNet28_10,
  "vgg16_bn": VGG16BN,
  "small_cnn": SmallCNN,
}
# The same networks with GroupNorm in place of BatchNorm (`group_norm_groups`).
GROUP_NORM_MODELS: dict[str, Callable[..., nnx.Module]] = {
  "resnet20": functools.partial(ResNet20, norm=_group_norm),
  "small_cnn": functools.partial(SmallCNN, norm=_group_norm),
}
NORMS = ("batch", "group")
MODELS_BY_NORM = {"batch": MODELS, "group": GROUP_NORM_MODELS}


def create_model(
  name: str,
  *,
  num_classes: int,
  in_channels: int,
  rngs: nnx.Rngs,
  norm: str = "batch",
) -> nnx.Module:
  """Builds the model registered as ``name`` in `MODELS`, in train mode.

  Args:
    name: one of ``MODELS`` ("resnet50", "resnet20", "wrn28_10", "vgg16_bn",
      "small_cnn").
    num_classes: number of output logits, ``>= 2`` (10 for CIFAR-10).
    in_channels: channels of the input images, ``>= 1`` (3 for CIFAR, 1 for
      Fashion-MNIST).
    rngs: the ``params`` stream initialises the weights; give each worker its
      own seed for different initialisations.
    norm: "batch" (BatchNorm) or "group" (GroupNorm, for the models in
      `GROUP_NORM_MODELS`: "resnet20", "small_cnn").

  Returns:
    An ``nnx.Module`` mapping ``(batch, H, W, in_channels)`` float32 images to
    ``(batch, num_classes)`` logits.

  Raises:
    ValueError: for an unknown ``name`` or ``norm``, a model without that
      normalisation, or out-of-range sizes.
    TypeError: for non-integer sizes.
  """
  if name not in MODELS:
    raise ValueError(
      f"unknown model name {name!r}; valid names are "
      f"{', '.join(repr(valid) for valid in MODELS)}."
    )
  if norm not in MODELS_BY_NORM:
    raise ValueError(f"unknown norm {norm!r}; valid norms are {', '.join(NORMS)}.")
  variants = MODELS_BY_NORM[norm]
  if name not in variants:
    raise ValueError(
      f"model {name!r} has no {norm} normalisation variant; use norm='batch', "
      f"or one of {', '.join(repr(valid) for valid in variants)}."
    )
  num_classes = _checks.check_integer("num_classes", num_classes, 2)
  in_channels = _checks.check_integer("in_channels", in_channels, 1)
  return variants[name](in_channels=in_channels, num_classes=num_classes, rngs=rngs)


def count_params(model: nnx.Module) -> int:
  """Number of trainable scalars: ``nnx.Param`` entries, not BatchNorm statistics.

  Works on abstract models from ``nnx.eval_shape`` too (no weights needed).
  """
  return sum(
    math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))
  )


def apply_model(graphdef, params, batch_stats, images, *, train: bool):
  """Logits and the updated BatchNorm statistics of one worker's model.

  ``graphdef``, ``params`` and ``batch_stats`` are the parts of
  ``nnx.split(model, nnx.Param, nnx.BatchStat)``; ``train`` picks batch (True)
  or running (False) statistics.
  """
  model = nnx.merge(graphdef, params, batch_stats, copy=True)
  model.train() if train else model.eval()
  logits = model(images)
  return logits, nnx.state(model, nnx.BatchStat)


__all__ = [
  "GROUP_NORM_MODELS",
  "MODELS",
  "MODELS_BY_NORM",
  "NORMS",
  "VGG16_CONFIG",
  "BasicBlock",
  "Bottleneck",
  "ResNet",
  "ResNet20",
  "ResNet50Cifar",
  "SmallCNN",
  "VGG16BN",
  "WideBasicBlock",
  "WideResNet28_10",
  "apply_model",
  "count_params",
  "create_model",
  "group_norm_groups",
]
