"""Tests for experiments/cifar/models.py: shapes, parameter counts, BatchNorm state.

Parameter counts are checked against arithmetic written here from the
architecture descriptions (docs/algorithm.md section 8 and the papers), not against
the model code. WRN-28-10 (36.5M parameters) is only ever built abstractly.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.cifar import models

CONCRETE_MODELS = ("resnet50", "resnet20", "vgg16_bn", "small_cnn")


def fast_rngs(seed: int) -> nnx.Rngs:
  # Building a model compiles one random draw per weight shape; with "rbg" keys
  # these compile 2-4x faster on CPU than with the default threefry keys.
  return nnx.Rngs(params=jax.random.key(seed, impl="rbg"))


@functools.cache
def built(name: str, in_channels: int):
  """One concrete model per (name, in_channels) for the whole module."""
  return models.create_model(
    name, num_classes=10, in_channels=in_channels, rngs=fast_rngs(0)
  )


@functools.cache
def abstract(name: str, in_channels: int = 3, num_classes: int = 10):
  """The model with ShapeDtypeStructs for weights: no memory, no compilation."""
  return nnx.eval_shape(
    lambda: models.create_model(
      name, num_classes=num_classes, in_channels=in_channels, rngs=nnx.Rngs(0)
    )
  )


@nnx.jit
def forward(model, images):
  return model(images)


# --- Parameter counts written from the architecture descriptions ---


def conv_params(cin, cout, kernel, bias):
  return cin * cout * kernel * kernel + (cout if bias else 0)


def bn_params(channels):
  return 2 * channels  # scale and bias; running mean/var are not trainable


def resnet50_cifar_params(c, k):
  # Stem 3x3 conv (bias) + BN; bottleneck stages of 16/32/64 planes, [3, 4, 6]
  # blocks; all convs have a bias; projection shortcut on each stage's first block
  # (stage 1: 16 -> 64 channels, stages 2-3: stride 2).
  total = conv_params(c, 16, 3, True) + bn_params(16)
  cin = 16
  for planes, blocks in ((16, 3), (32, 4), (64, 6)):
    cout = 4 * planes
    for block in range(blocks):
      total += (
        conv_params(cin, planes, 1, True)
        + bn_params(planes)
        + conv_params(planes, planes, 3, True)
        + bn_params(planes)
        + conv_params(planes, cout, 1, True)
        + bn_params(cout)
      )
      if block == 0:
        total += conv_params(cin, cout, 1, True) + bn_params(cout)
      cin = cout
  return total + 256 * k + k


def resnet20_params(c, k):
  # Written out term by term: conv 3x3 (no bias) weights, BN scale+bias.
  stem = 9 * c * 16 + 2 * 16
  stage1 = 3 * (2 * (9 * 16 * 16) + 2 * (2 * 16))
  stage2 = (
    (9 * 16 * 32 + 9 * 32 * 32 + 2 * (2 * 32))  # first block
    + (16 * 32 + 2 * 32)  # 1x1 projection + BN
    + 2 * (2 * (9 * 32 * 32) + 2 * (2 * 32))
  )  # two more blocks
  stage3 = (
    (9 * 32 * 64 + 9 * 64 * 64 + 2 * (2 * 64))
    + (32 * 64 + 2 * 64)
    + 2 * (2 * (9 * 64 * 64) + 2 * (2 * 64))
  )
  head = 64 * k + k
  return stem + stage1 + stage2 + stage3 + head


def wrn_params(depth, widen, c, k):
  n = (depth - 4) // 6
  total = conv_params(c, 16, 3, False)
  cin = 16
  for width in (16 * widen, 32 * widen, 64 * widen):
    for block in range(n):
      total += (
        bn_params(cin)
        + conv_params(cin, width, 3, False)
        + bn_params(width)
        + conv_params(width, width, 3, False)
      )
      if block == 0:  # every stage changes the width for widen_factor > 1
        total += conv_params(cin, width, 1, False)
      cin = width
  return total + bn_params(cin) + cin * k + k


def vgg16_bn_params(c, k):
  channels = [c, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
  convs = sum(
    conv_params(cin, cout, 3, True) + bn_params(cout)
    for cin, cout in zip(channels[:-1], channels[1:])
  )
  return convs + 512 * k + k


def small_cnn_params(c, k):
  return (
    conv_params(c, 32, 3, False)
    + bn_params(32)
    + conv_params(32, 64, 3, False)
    + bn_params(64)
    + conv_params(64, 128, 3, False)
    + bn_params(128)
    + 128 * k
    + k
  )


EXPECTED_PARAMS = {
  "resnet50": lambda c, k: resnet50_cifar_params(c, k),
  "resnet20": resnet20_params,
  "wrn28_10": lambda c, k: wrn_params(28, 10, c, k),
  "vgg16_bn": vgg16_bn_params,
  "small_cnn": small_cnn_params,
}


@pytest.mark.parametrize("in_channels, num_classes", [(3, 10), (1, 100)])
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_param_count_matches_architecture_arithmetic(name, in_channels, num_classes):
  model = abstract(name, in_channels, num_classes)
  assert models.count_params(model) == EXPECTED_PARAMS[name](in_channels, num_classes)


def test_param_counts_match_published_sizes():
  assert resnet50_cifar_params(3, 10) == 545_930
  assert resnet50_cifar_params(3, 10) == pytest.approx(546_000, rel=0.01)
  assert resnet20_params(3, 10) == 272_474  # "0.27M" (He et al., Table 6)
  assert wrn_params(28, 10, 3, 10) == 36_479_194
  assert wrn_params(28, 10, 3, 10) == pytest.approx(36.5e6, rel=0.01)
  assert vgg16_bn_params(3, 10) == 14_728_266
  assert 50_000 <= small_cnn_params(3, 10) <= 150_000
  assert 50_000 <= small_cnn_params(1, 10) <= 150_000


def test_count_params_excludes_batch_stats():
  model = built("small_cnn", 3)
  stats = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
  everything = jax.tree.leaves(nnx.state(model))
  assert models.count_params(model) == (
    sum(leaf.size for leaf in everything) - sum(leaf.size for leaf in stats)
  )


# --- Shapes ---


@pytest.mark.parametrize("name", sorted(models.MODELS))
@pytest.mark.parametrize("height, channels", [(32, 3), (28, 1)])
def test_output_shape(name, height, channels):
  # Traced, not run: no weights, no compilation (WRN-28-10 has 36.5M).
  model = abstract(name, channels)
  images = jax.ShapeDtypeStruct((2, height, height, channels), jnp.float32)
  logits = nnx.eval_shape(lambda m, x: m(x), model, images)
  assert logits.shape == (2, 10)
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize("name", CONCRETE_MODELS)
def test_smallest_dataset_input_gives_finite_logits(name):
  # NaNs would reveal a pool reaching a 0x0 map (VGG on 28x28); a shape check
  # cannot see it (the global average of an empty map still has its shape).
  # 28x28 is the smallest input of the datasets: every map of a 32x32 input is
  # at least as large.
  images = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
  logits = forward(built(name, 1), images)
  assert logits.shape == (2, 10)
  assert np.all(np.isfinite(logits))


def test_smallest_supported_input():
  logits = forward(built("small_cnn", 1), jnp.ones((2, 8, 8, 1)))
  assert logits.shape == (2, 10) and np.all(np.isfinite(logits))


def test_wrong_input_layout_is_explained():
  with pytest.raises(ValueError, match=r"NHWC.*\(batch, H, W, 1\).*\(2, 1, 28, 28\)"):
    built("small_cnn", 1)(jnp.ones((2, 1, 28, 28)))


# --- BatchNorm state ---


def batch_norms(model):
  return [node for _, node in nnx.iter_graph(model) if isinstance(node, nnx.BatchNorm)]


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_batch_norm_uses_pytorch_defaults_and_batch_stats(name):
  model = abstract(name)
  norms = batch_norms(model)
  assert norms
  for norm in norms:
    assert norm.momentum == 0.9 and norm.epsilon == 1e-5
    assert isinstance(norm.mean, nnx.BatchStat)
    assert isinstance(norm.var, nnx.BatchStat)
    assert isinstance(norm.scale, nnx.Param) and isinstance(norm.bias, nnx.Param)
    assert norm.use_running_average is False  # new models train
  num_stats = len(jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
  assert num_stats == 2 * len(norms)


def test_running_stats_update_in_train_mode_only():
  model = models.create_model(
    "small_cnn", num_classes=10, in_channels=1, rngs=fast_rngs(3)
  )
  images = 2.0 + jax.random.normal(jax.random.key(2), (4, 28, 28, 1))
  params_before = nnx.state(model, nnx.Param)
  stats_before = nnx.state(model, nnx.BatchStat)
  stats_before = jax.tree.map(np.array, stats_before)

  model.train()
  train_logits = forward(model, images)
  stats_after_train = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
  for before, after in zip(
    jax.tree.leaves(stats_before), jax.tree.leaves(stats_after_train)
  ):
    assert not np.allclose(before, after)

  model.eval()
  eval_logits = forward(model, images)
  for before, after in zip(
    jax.tree.leaves(stats_after_train), jax.tree.leaves(nnx.state(model, nnx.BatchStat))
  ):
    np.testing.assert_array_equal(before, after)
  # Eval normalises with the (barely warmed up) running statistics instead.
  assert not np.allclose(train_logits, eval_logits)
  jax.tree.map(
    np.testing.assert_array_equal, params_before, nnx.state(model, nnx.Param)
  )


def test_running_mean_follows_pytorch_momentum():
  model = models.create_model(
    "small_cnn", num_classes=10, in_channels=1, rngs=fast_rngs(4)
  )
  images = jax.random.normal(jax.random.key(5), (4, 28, 28, 1))
  conv_out = model.conv1(images)
  batch_mean = np.asarray(conv_out.mean(axis=(0, 1, 2)))
  model.bn1(conv_out)
  np.testing.assert_allclose(
    model.bn1.mean[...], 0.1 * batch_mean, rtol=1e-5, atol=1e-7
  )


# --- GroupNorm variants ---


@pytest.mark.parametrize("name", sorted(models.GROUP_NORM_MODELS))
def test_group_norm_variants_have_no_batch_statistics(name):
  """Every BatchNorm becomes a GroupNorm with min(32, C // 4) groups and the
  same parameters; nothing is left to keep per worker but nnx.Param."""
  model = nnx.eval_shape(
    lambda: models.create_model(
      name, num_classes=10, in_channels=3, rngs=nnx.Rngs(0), norm="group"
    )
  )
  norms = [n for _, n in nnx.iter_graph(model) if isinstance(n, nnx.GroupNorm)]
  assert len(norms) == len(batch_norms(abstract(name))) and not batch_norms(model)
  for norm in norms:
    assert norm.num_groups == min(32, norm.scale.shape[0] // 4)
    assert norm.epsilon == 1e-5
  assert not jax.tree.leaves(nnx.state(model, nnx.BatchStat))
  assert models.count_params(model) == models.count_params(abstract(name))
  assert models.group_norm_groups(16) == 4 and models.group_norm_groups(128) == 32


def test_group_norm_output_does_not_depend_on_the_batch():
  model = models.create_model(
    "small_cnn", num_classes=10, in_channels=1, rngs=fast_rngs(6), norm="group"
  )
  images = jax.random.normal(jax.random.key(7), (4, 28, 28, 1))
  together = forward(model, images)
  # The first two images with two others: their logits are unchanged.
  others = jnp.concatenate([images[:2], 5.0 + images[2:]])
  np.testing.assert_allclose(forward(model, others)[:2], together[:2], atol=1e-5)
  # A batch norm's would change.
  batch = built("small_cnn", 1)
  assert not np.allclose(forward(batch, others)[:2], forward(batch, images)[:2])


def test_group_norm_refused_for_models_without_a_variant():
  with pytest.raises(ValueError, match="model 'resnet50' has no group normalisation"):
    models.create_model(
      "resnet50", num_classes=10, in_channels=3, rngs=nnx.Rngs(0), norm="group"
    )
  with pytest.raises(ValueError, match="unknown norm 'layer'; valid norms are"):
    models.create_model(
      "small_cnn", num_classes=10, in_channels=3, rngs=nnx.Rngs(0), norm="layer"
    )


# --- Initialisation ---


def test_different_seeds_give_different_weights():
  one = models.create_model(
    "small_cnn", num_classes=10, in_channels=1, rngs=nnx.Rngs(0)
  )
  other = models.create_model(
    "small_cnn", num_classes=10, in_channels=1, rngs=nnx.Rngs(1)
  )
  assert not np.allclose(one.conv1.kernel[...], other.conv1.kernel[...])


def test_weights_follow_pytorch_default_init():
  model = built("resnet50", 1)
  for layer in (model.conv1, model.linear):
    kernel = np.asarray(layer.kernel[...])
    bound = 1 / math.sqrt(math.prod(kernel.shape[:-1]))  # 1/sqrt(fan_in)
    assert np.abs(kernel).max() <= bound
    assert np.abs(kernel).max() > 0.9 * bound
    bias = np.asarray(layer.bias[...])
    assert np.abs(bias).max() <= bound and np.any(bias != 0)


# --- Registry and errors ---


def test_registry_names():
  assert set(models.MODELS) == {
    "resnet50",
    "resnet20",
    "wrn28_10",
    "vgg16_bn",
    "small_cnn",
  }


def test_create_model_rejects_unknown_name_listing_valid_ones():
  with pytest.raises(ValueError) as error:
    models.create_model("resnet18", num_classes=10, in_channels=3, rngs=nnx.Rngs(0))
  message = str(error.value)
  assert "'resnet18'" in message
  for valid in models.MODELS:
    assert repr(valid) in message


@pytest.mark.parametrize(
  "kwargs, error, pattern",
  [
    (
      {"num_classes": 1, "in_channels": 3},
      ValueError,
      r"num_classes must be an integer >= 2, got 1",
    ),
    (
      {"num_classes": 10, "in_channels": 0},
      ValueError,
      r"in_channels must be an integer >= 1, got 0",
    ),
    (
      {"num_classes": 10.0, "in_channels": 3},
      TypeError,
      r"num_classes must be an integer, got 10.0 of type float",
    ),
    (
      {"num_classes": 10, "in_channels": True},
      TypeError,
      r"in_channels must be an integer, got True of type bool",
    ),
  ],
)
def test_create_model_validates_sizes(kwargs, error, pattern):
  with pytest.raises(error, match=pattern):
    models.create_model("small_cnn", rngs=nnx.Rngs(0), **kwargs)


def test_resnet_rejects_bad_stages_and_width():
  kwargs = dict(in_channels=3, num_classes=10, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"stage_sizes .* got \(3, 0\)"):
    models.ResNet((3, 0), models.BasicBlock, **kwargs)
  with pytest.raises(ValueError, match="widen_factor must be an integer >= 1"):
    models.ResNet((1,), models.WideBasicBlock, widen_factor=0, **kwargs)


def test_variants_are_one_resnet():
  for name in ("resnet50", "resnet20", "wrn28_10"):
    assert isinstance(abstract(name), models.ResNet)


@pytest.mark.parametrize(
  "stride,use_bias,height", [(1, True, 8), (2, False, 8), (2, True, 7)]
)
def test_pointwise_conv_is_pytorch_1x1_convolution(stride, use_bias, height):
  # NumPy: a 1x1 convolution with padding 0 and stride s reads pixels (s*i, s*j)
  # and multiplies their channels by the (in, out) kernel, for every pixel.
  conv = models._conv(5, 3, 1, stride=stride, use_bias=use_bias, rngs=fast_rngs(1))
  assert isinstance(conv, models.PointwiseConv)
  assert conv.kernel[...].shape == (1, 1, 5, 3)
  x = np.random.default_rng(0).normal(size=(2, height, height, 5)).astype(np.float32)
  out_size = (height - 1) // stride + 1  # PyTorch: floor((H - 1) / s) + 1
  kernel = np.asarray(conv.kernel[...], np.float64)[0, 0]
  expected = np.zeros((2, out_size, out_size, 3))
  for i in range(out_size):
    for j in range(out_size):
      expected[:, i, j] = x[:, stride * i, stride * j].astype(np.float64) @ kernel
  if use_bias:
    expected += np.asarray(conv.bias[...], np.float64)
  got = np.asarray(jax.jit(lambda v: conv(v))(x))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_conv_gradients(stride):
  # NumPy: for y = x[::s, ::s] @ K (+ b) and upstream gradient g, dK is the sum
  # over batch and output pixels of x_pixel (outer) g_pixel, db the sum of g,
  # and dx scatters g @ K^T back to the strided pixels (zero elsewhere).
  conv = models._conv(4, 6, 1, stride=stride, use_bias=True, rngs=fast_rngs(2))
  graphdef, params = nnx.split(conv)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 6, 6, 4)).astype(np.float32)
  out = (6 - 1) // stride + 1
  g = rng.normal(size=(3, out, out, 6)).astype(np.float32)

  def f(params, x):
    return jnp.sum(nnx.merge(graphdef, params)(x) * g)

  dparams, dx = jax.jit(jax.grad(f, argnums=(0, 1)))(params, x)
  kernel = np.asarray(params["kernel"][...], np.float64)[0, 0]
  xs = x[:, ::stride, ::stride].astype(np.float64)
  want_dk = np.einsum("bhwi,bhwo->io", xs, g)
  want_dx = np.zeros_like(x, np.float64)
  want_dx[:, ::stride, ::stride] = g @ kernel.T
  np.testing.assert_allclose(
    np.asarray(dparams["kernel"][...])[0, 0], want_dk, rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(
    np.asarray(dparams["bias"][...]), g.sum((0, 1, 2)), rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(np.asarray(dx), want_dx, rtol=1e-5, atol=1e-5)
