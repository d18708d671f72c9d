"""Input pipeline: shards, reproducible batches, augmentation, IDX and TFDS loading."""

import gzip
import os
import tempfile
from unittest import mock

import numpy as np
import pytest

from experiments.cifar import input_pipeline as ip
from tests import helpers

CIFAR10 = ip.DATASETS["cifar10"]
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"


def tagged_images(count, shape=(32, 32, 3), seed=0):
  """Random uint8 images with labels = their index, so a label names its image."""
  rng = np.random.default_rng(seed)
  return (
    rng.integers(0, 256, (count,) + shape, dtype=np.uint8),
    np.arange(count, dtype=np.int32),
  )


def make_batches(
  count=203, num_workers=8, batch_size=5, seed=0, augment=False, shape=(32, 32, 3)
):
  images, labels = tagged_images(count, shape)
  mean, std = (0.5,) * shape[-1], (0.25,) * shape[-1]
  return ip.WorkerBatches(
    images,
    labels,
    num_workers=num_workers,
    batch_size=batch_size,
    seed=seed,
    mean=mean,
    std=std,
    augment=augment,
  )


def reference_normalize(images, mean, std):
  return (images.astype(np.float64) / 255 - np.asarray(mean)) / np.asarray(std)


# --- Metadata -----------------------------------------------------------------


def test_dataset_constants():
  assert CIFAR10.mean == (0.4914, 0.4822, 0.4465)
  assert CIFAR10.std == (0.2023, 0.1994, 0.2010)
  cifar100 = ip.DATASETS["cifar100"]
  assert cifar100.mean == (0.5071, 0.4867, 0.4408)
  assert cifar100.std == (0.2675, 0.2565, 0.2761)
  assert (CIFAR10.num_classes, cifar100.num_classes) == (10, 100)
  assert CIFAR10.augment and cifar100.augment
  fashion = ip.DATASETS["fashion_mnist"]
  assert fashion.image_shape == (28, 28, 1) and not fashion.augment
  assert fashion.mean == (0.2860,) and fashion.std == (0.3530,)


# --- Shards and epochs ----------------------------------------------------------


def test_shards_are_disjoint_and_cover_the_truncated_split():
  batches = make_batches(count=203, num_workers=8)
  assert (batches.shard_size, batches.num_dropped) == (25, 3)
  shards = batches.shard_indices
  assert shards.shape == (8, 25)
  flat = shards.ravel()
  assert len(np.unique(flat)) == 200  # disjoint
  assert set(flat) <= set(range(203))
  # The split is random, not the first 200 images in order.
  assert not np.array_equal(np.sort(flat), np.arange(200))
  with pytest.raises(ValueError):
    shards[0, 0] = 0  # read-only


@pytest.mark.parametrize("batch_size, steps", [(5, 5), (4, 6)])
def test_every_epoch_each_worker_sees_its_own_shard(batch_size, steps):
  batches = make_batches(count=203, num_workers=8, batch_size=batch_size)
  assert batches.steps_per_epoch == steps
  orders = []
  for epoch in range(3):
    labels = np.concatenate(
      [batches.batch(epoch, step)[1] for step in range(steps)], axis=1
    )
    assert labels.shape == (8, steps * batch_size)
    for worker in range(8):
      seen = labels[worker]
      shard = set(batches.shard_indices[worker])
      assert len(set(seen)) == len(seen) and set(seen) <= shard
      # Only the last partial batch is dropped.
      assert len(shard) - len(seen) == 25 % batch_size
    orders.append(labels)
  assert not np.array_equal(orders[0], orders[1])
  assert not np.array_equal(orders[1], orders[2])


def test_batch_is_a_pure_function_of_seed_epoch_step():
  first = make_batches(augment=True)
  x, y = first.batch(2, 3)
  for epoch in range(3):  # move any cache elsewhere
    first.batch(epoch, 0)
  again_x, again_y = first.batch(2, 3)
  np.testing.assert_array_equal(x, again_x)
  np.testing.assert_array_equal(y, again_y)
  # A fresh object (a resumed run) asks for the same batch and gets it.
  fresh_x, fresh_y = make_batches(augment=True).batch(2, 3)
  np.testing.assert_array_equal(x, fresh_x)
  np.testing.assert_array_equal(y, fresh_y)
  other_x, other_y = make_batches(augment=True, seed=1).batch(2, 3)
  assert not np.array_equal(y, other_y)
  assert not np.array_equal(x, other_x)


def test_batch_shapes_and_dtypes():
  batches = make_batches(count=100, num_workers=4, batch_size=8, augment=True)
  x, y = batches.batch(0, 0)
  assert x.shape == (4, 8, 32, 32, 3) and x.dtype == np.float32
  assert y.shape == (4, 8) and y.dtype == np.int32
  np.testing.assert_array_equal(y, batches.batch_indices(0, 0))


# --- Normalization and augmentation ---------------------------------------------


def test_no_augmentation_is_plain_normalization():
  images, labels = tagged_images(64)
  batches = ip.WorkerBatches(
    images,
    labels,
    num_workers=2,
    batch_size=8,
    seed=3,
    mean=CIFAR10.mean,
    std=CIFAR10.std,
    augment=False,
  )
  x, y = batches.batch(1, 2)
  expected = reference_normalize(images[y], CIFAR10.mean, CIFAR10.std)
  np.testing.assert_allclose(x, expected, rtol=0, atol=1e-5)


def all_crops(image, padding=4):
  """Every normalized crop of ``image``, flipped or not: (2, 9, 9, H, W, C)."""
  height, width, channels = image.shape
  padded = np.zeros((height + 2 * padding, width + 2 * padding, channels))
  padded[padding : padding + height, padding : padding + width] = image
  crops = np.empty((2, 2 * padding + 1, 2 * padding + 1) + image.shape)
  for top in range(2 * padding + 1):
    for left in range(2 * padding + 1):
      window = padded[top : top + height, left : left + width]
      crops[0, top, left] = window
      crops[1, top, left] = window[:, ::-1]
  return crops


def test_augmentation_is_a_crop_of_the_padded_image_maybe_flipped():
  images, labels = tagged_images(160)
  batches = ip.WorkerBatches(
    images,
    labels,
    num_workers=8,
    batch_size=16,
    seed=5,
    mean=CIFAR10.mean,
    std=CIFAR10.std,
    augment=True,
  )
  x, y = batches.batch(0, 0)
  assert x.shape == (8, 16, 32, 32, 3)
  found = []
  for image, label in zip(x.reshape(-1, 32, 32, 3), y.ravel()):
    crops = reference_normalize(all_crops(images[label]), CIFAR10.mean, CIFAR10.std)
    error = np.abs(crops - image).max(axis=(3, 4, 5))
    match = np.argwhere(error < 1e-4)
    assert len(match) == 1, f"image {label} is no crop of its original"
    found.append(tuple(match[0]))
  flips, tops, lefts = np.array(found).T
  # The draws vary: both flips, several offsets, and most images moved.
  assert 0 < flips.sum() < len(found)
  assert len(set(tops)) > 3 and len(set(lefts)) > 3
  untouched = (flips == 0) & (tops == 4) & (lefts == 4)
  assert untouched.sum() < len(found) // 4


def test_random_crop_flip_keeps_shape_and_dtype():
  images, _ = tagged_images(6, shape=(28, 28, 1))
  images = images.reshape(2, 3, 28, 28, 1)
  out = ip.random_crop_flip(images, np.random.default_rng(0))
  assert out.shape == images.shape and out.dtype == np.uint8
  assert not np.array_equal(out, images)


# --- Bad arguments -------------------------------------------------------------


def test_bad_arguments():
  images, labels = tagged_images(80)
  kwargs = dict(
    num_workers=8,
    batch_size=4,
    seed=0,
    mean=CIFAR10.mean,
    std=CIFAR10.std,
    augment=False,
  )
  with pytest.raises(
    ValueError,
    match=r"Each of 8 workers gets 10 images .*"
    r"fewer than batch_size 16",
  ):
    ip.WorkerBatches(images, labels, **{**kwargs, "batch_size": 16})
  for name, value in [
    ("batch_size", 0),
    ("num_workers", 0),
    ("num_workers", 2.0),
    ("seed", -1),
  ]:
    with pytest.raises(ValueError, match=name):
      ip.WorkerBatches(images, labels, **{**kwargs, name: value})
  with pytest.raises(ValueError, match="one value per channel"):
    ip.WorkerBatches(images, labels, **{**kwargs, "mean": (0.5,)})
  with pytest.raises(ValueError, match="uint8"):
    ip.WorkerBatches(images.astype(np.float32), labels, **kwargs)
  with pytest.raises(ValueError, match="labels"):
    ip.WorkerBatches(images, labels[:-1], **kwargs)
  batches = ip.WorkerBatches(images, labels, **kwargs)
  with pytest.raises(ValueError, match=r"step must be an integer in \[0, 2\)"):
    batches.batch(0, 2)
  with pytest.raises(ValueError, match="epoch"):
    batches.batch(-1, 0)


@pytest.mark.parametrize(
  "kwargs, listed",
  [
    (dict(dataset="mnist", split="train"), "'cifar10', 'cifar100', 'fashion_mnist'"),
    (dict(dataset="cifar10", split="validation"), "'train', 'test'"),
    (dict(dataset="cifar10", split="train", source="web"), "'tfds', 'idx'"),
  ],
)
def test_unknown_names_list_the_valid_ones(kwargs, listed):
  with pytest.raises(ValueError, match=listed):
    ip.load_split(**kwargs)


def test_idx_is_only_for_fashion_mnist():
  with pytest.raises(ValueError, match="only reads Fashion-MNIST"):
    ip.load_split("cifar10", "train", source="idx")


# --- IDX ------------------------------------------------------------------------


def test_idx_files(tmp_path):
  images, _ = tagged_images(7, shape=(28, 28))
  labels = np.arange(7) % 10
  helpers.write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, 2051)
  helpers.write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, 2049)
  x, y = ip.load_split("fashion_mnist", "test", source="idx", data_dir=tmp_path)
  assert x.shape == (7, 28, 28, 1) and x.dtype == np.uint8
  assert y.dtype == np.int32
  np.testing.assert_array_equal(x[..., 0], images)
  np.testing.assert_array_equal(y, labels)

  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
    ip.load_split("fashion_mnist", "train", source="idx", data_dir=tmp_path)
  helpers.write_idx(tmp_path / "bad.gz", labels, 2050)
  with pytest.raises(ValueError, match="magic number 2050"):
    ip.read_idx(tmp_path / "bad.gz")
  with gzip.open(tmp_path / "short.gz", "wb") as f:
    f.write((2049).to_bytes(4, "big") + (5).to_bytes(4, "big") + b"\0\1")
  with pytest.raises(ValueError, match="truncated"):
    ip.read_idx(tmp_path / "short.gz")


@pytest.mark.skipif(
  not os.path.isdir(DEBIAN_DIR),
  reason="Debian's dataset-fashion-mnist is not installed",
)
def test_debian_fashion_mnist():
  info = ip.DATASETS["fashion_mnist"]
  for split, count in [("train", 60000), ("test", 10000)]:
    x, y = ip.load_split("fashion_mnist", split, source="idx")
    assert x.shape == (count, 28, 28, 1) and x.dtype == np.uint8
    assert y.shape == (count,) and y.dtype == np.int32
    np.testing.assert_array_equal(np.unique(y), np.arange(10))
    if split == "train":
      pixels = x / 255.0
      assert abs(pixels.mean() - info.mean[0]) < 1e-4
      assert abs(pixels.std() - info.std[0]) < 1e-4


# --- TFDS -----------------------------------------------------------------------


@pytest.mark.parametrize(
  "dataset, shape",
  [("cifar10", (32, 32, 3)), ("cifar100", (32, 32, 3)), ("fashion_mnist", (28, 28, 1))],
)
def test_tfds_mock_data(mock_cifar, dataset, shape):
  # USE_CODE: the features come from the builder's code, no metadata files.
  images, labels = ip.load_split(dataset, "train")
  assert images.shape == (48,) + shape and images.dtype == np.uint8
  assert labels.shape == (48,) and labels.dtype == np.int32
  assert labels.min() >= 0
  assert labels.max() < ip.DATASETS[dataset].num_classes


@pytest.fixture(scope="module")
def prepared_cifar10(tmp_path_factory):
  """A real ArrayRecord cifar10 of 30 + 10 images, built without TensorFlow.

  TFDS' builder needs TensorFlow only to read the downloaded binaries and to
  encode PNGs; the fake reader below yields PIL images, which TFDS encodes with
  PIL. Image i has all pixels i and label i % 10.
  """
  tfds = pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("PIL")
  from PIL import Image
  from tensorflow_datasets.image_classification import cifar

  counts = {"data_batch_1.bin": 30, "test_batch.bin": 10}
  root = tmp_path_factory.mktemp("cifar_download")
  (root / "cifar-10-batches-bin").mkdir()
  (root / "cifar-10-batches-bin" / "batches.meta.txt").write_text(
    "\n".join(f"class{i}" for i in range(10))
  )

  def load_data(path, labels_number=1):
    del labels_number
    for i in range(counts.get(os.path.basename(path), 0)):
      pixels = np.full((32, 32, 3), i, np.uint8)
      yield np.array([i % 10], np.uint8), Image.fromarray(pixels)

  data_dir = tmp_path_factory.mktemp("tfds")
  # TFDS leaves a tempfile.mkdtemp per unprepared builder: keep it in root.
  with (
    mock.patch.object(
      tfds.download.DownloadManager, "download_and_extract", lambda self, url: str(root)
    ),
    mock.patch.object(cifar, "_load_data", load_data),
    mock.patch.object(tempfile, "tempdir", str(root)),
  ):
    builder = tfds.builder("cifar10", data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
  return data_dir


def test_tfds_reads_prepared_array_record(prepared_cifar10):
  for split, count in [("train", 30), ("test", 10)]:
    images, labels = ip.load_split("cifar10", split, data_dir=prepared_cifar10)
    assert images.shape == (count, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32
    # TFDS shuffles the records; each image still carries its own label.
    index = images[:, 0, 0, 0].astype(np.int32)
    np.testing.assert_array_equal(np.sort(index), np.arange(count))
    np.testing.assert_array_equal(labels, index % 10)
    assert (images == index[:, None, None, None]).all()


def test_unprepared_dataset_is_a_clear_error_without_download(
  tfds_tempdir, tmp_path, monkeypatch
):
  tfds = pytest.importorskip("tensorflow_datasets")

  def no_download(*args, **kwargs):
    raise AssertionError("load_split must not download or prepare anything")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
  data_dir = tmp_path / "empty"
  with pytest.raises(RuntimeError) as error:
    ip.load_split("cifar10", "train", data_dir=data_dir)
  message = str(error.value)
  assert str(data_dir) in message
  assert "tfds build cifar10 --file_format=array_record" in message
  assert "data_dir" in message and "source='idx'" in message


def test_batch_of_some_workers_is_their_rows_of_the_full_batch():
  batches = make_batches(augment=True)
  images, labels = batches.batch(2, 3)
  some_images, some_labels = batches.batch(2, 3, workers=[5, 1])
  np.testing.assert_array_equal(some_images, images[[5, 1]])
  np.testing.assert_array_equal(some_labels, labels[[5, 1]])
  with pytest.raises(ValueError, match="must be in \\[0, 8\\)"):
    batches.batch(2, 3, workers=[8])


@pytest.mark.parametrize(
  "scheme,kwargs",
  [
    ("iid", {}),
    ("dirichlet", dict(alpha=0.1)),
    ("dirichlet", dict(alpha=1000.0)),
    ("classes", dict(classes_per_worker=2)),
    ("classes", dict(classes_per_worker=3)),
  ],
)
def test_partitions_are_disjoint_equal_shards(scheme, kwargs):
  labels = np.random.default_rng(0).integers(0, 10, 6000)
  shards = ip.partition(
    labels, 8, 700, np.random.default_rng(1), scheme=scheme, **kwargs
  )
  assert shards.shape == (8, 700)
  assert len(np.unique(shards)) == shards.size  # disjoint
  counts = np.array([np.bincount(labels[s], minlength=10) for s in shards])
  top_share = counts.max(1) / 700
  if scheme == "iid" or kwargs.get("alpha") == 1000.0:
    assert top_share.max() < 0.2  # close to 1/10 of each label
  elif scheme == "dirichlet":
    assert np.median(top_share) > 0.4  # a few labels dominate each worker
  else:
    # Label-sorted pieces: each covers one label, or two where it straddles.
    k = kwargs["classes_per_worker"]
    assert ((counts > 0).sum(1) <= 2 * k).all()
    assert np.median(top_share) >= 1 / (2 * k) > 0.12


def test_iid_partition_is_the_seeded_permutation():
  # The IID split is the first num_workers * shard_size of one permutation, as
  # before the other schemes existed (earlier runs keep their shards).
  labels = np.zeros(100, np.int32)
  shards = ip.partition(labels, 8, 12, np.random.default_rng([5, 0]))
  want = np.random.default_rng([5, 0]).permutation(100)[:96].reshape(8, 12)
  np.testing.assert_array_equal(shards, want)
