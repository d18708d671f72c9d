"""Host-side data: loading a split, per-worker shards, augmented batches.

Everything here is NumPy on the host. A split is loaded once into memory as uint8
``(N, H, W, C)`` images and int32 labels (`load_split`), either from a prepared
tensorflow-datasets directory (ArrayRecord, read without TensorFlow) or, for
Fashion-MNIST, from Debian's IDX files. `WorkerBatches` then splits the train set
into one fixed shard per worker (docs/algorithm.md section 8: each worker trains
on its own IID shard) and serves ``batch(epoch, step)``: a pure function of
``(seed, epoch, step)``, so a resumed run asks for the same batch again and gets
the same pixels. Images come out float32 NHWC, normalized per channel.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the trainer needs to know about a dataset.

  Attributes:
    num_classes: number of labels.
    image_shape: ``(H, W, C)`` of one image.
    mean: per-channel mean of the pixels scaled to [0, 1].
    std: per-channel standard deviation of the pixels scaled to [0, 1].
    augment: whether training uses random crop (padding 4) and horizontal flip.
  """

  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augment: bool


DATASETS: dict[str, DatasetInfo] = {
  # docs/algorithm.md section 8 (the constants of the reference code).
  "cifar10": DatasetInfo(
    num_classes=10,
    image_shape=(32, 32, 3),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2023, 0.1994, 0.2010),
    augment=True,
  ),
  "cifar100": DatasetInfo(
    num_classes=100,
    image_shape=(32, 32, 3),
    mean=(0.5071, 0.4867, 0.4408),
    std=(0.2675, 0.2565, 0.2761),
    augment=True,
  ),
  # Pixel mean and std of the 60000 training images (0.28604, 0.35302). No
  # augmentation: flips and crops are not part of the usual Fashion-MNIST setup.
  "fashion_mnist": DatasetInfo(
    num_classes=10,
    image_shape=(28, 28, 1),
    mean=(0.2860,),
    std=(0.3530,),
    augment=False,
  ),
}

SPLITS = ("train", "test")
SOURCES = ("tfds", "idx")
DEFAULT_IDX_DIR = "/usr/share/datasets/fashion-mnist"
CROP_PADDING = 4

# Distinct first words of the seed sequences, so that the shard split, the epoch
# shuffles and the augmentation draws never share a random stream even when, say,
# a step number equals a worker number.
_SPLIT_STREAM, _SHUFFLE_STREAM, _AUGMENT_STREAM = 0, 1, 2

_IDX_FILES = {"train": "train", "test": "t10k"}
_IDX_IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension
# Records per `__getitems__` call: bounds the list of decoded dicts held at once.
_READ_CHUNK = 4096


def _check_name(kind: str, value, valid: Sequence[str]) -> str:
  if value not in valid:
    raise ValueError(
      f"Unknown {kind} {value!r}; expected one of {', '.join(map(repr, valid))}."
    )
  return value


def load_split(
  dataset: str,
  split: str,
  *,
  source: str = "tfds",
  data_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Loads a whole split into memory.

  Args:
    dataset: a key of `DATASETS` ("cifar10", "cifar100", "fashion_mnist").
    split: "train" or "test".
    source: "tfds" reads a tensorflow-datasets directory with
      ``tfds.data_source`` (ArrayRecord files, random access, no TensorFlow);
      "idx" reads the gzip'd IDX files of Fashion-MNIST (Debian package
      ``dataset-fashion-mnist``), which needs nothing but NumPy.
    data_dir: for "tfds", the tensorflow-datasets data directory (None: TFDS'
      default, ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``); for "idx", the
      directory holding the ``*-ubyte.gz`` files (None: `DEFAULT_IDX_DIR`).

  Returns:
    ``(images, labels)``: uint8 ``(N, H, W, C)`` and int32 ``(N,)``, in the
    order of the stored split.

  Raises:
    ValueError: unknown dataset, split or source, or "idx" for a dataset other
      than Fashion-MNIST.
    FileNotFoundError: "idx" and the files are missing.
    RuntimeError: "tfds" and the dataset is not prepared in ``data_dir`` (or
      cannot be read); nothing is downloaded, and the message says how to get
      the data.
  """
  _check_name("dataset", dataset, tuple(DATASETS))
  _check_name("split", split, SPLITS)
  _check_name("source", source, SOURCES)
  if source == "idx":
    if dataset != "fashion_mnist":
      raise ValueError(
        f"source='idx' only reads Fashion-MNIST, got dataset {dataset!r}. "
        "Use source='tfds' for it."
      )
    return _load_idx(split, DEFAULT_IDX_DIR if data_dir is None else data_dir)
  return _load_tfds(dataset, split, data_dir)


# --- IDX (Fashion-MNIST from Debian) -----------------------------------------


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file of unsigned bytes (the MNIST format), gzip'd or not.

  The header is a big-endian int32 magic number, 2049 for a 1-D array (labels)
  or 2051 for a 3-D one (images), then one big-endian int32 size per dimension;
  the bytes follow.

  Args:
    path: the file; read through gzip when its name ends in ``.gz``.

  Returns:
    A uint8 array of the shape given by the header.

  Raises:
    ValueError: unknown magic number, or the data does not match the header.
  """
  path = os.fspath(path)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4:
    raise ValueError(f"{path} has {len(data)} bytes, too few for an IDX header.")
  magic = int.from_bytes(data[:4], "big")
  if magic not in (_IDX_LABELS_MAGIC, _IDX_IMAGES_MAGIC):
    raise ValueError(
      f"{path} has IDX magic number {magic}; expected {_IDX_LABELS_MAGIC} "
      f"(labels) or {_IDX_IMAGES_MAGIC} (images), unsigned bytes. Is it an "
      "uncompressed file named .gz, or another format?"
    )
  ndim = magic & 0xFF
  header_size = 4 + 4 * ndim
  shape = tuple(np.frombuffer(data, ">u4", count=ndim, offset=4).astype(int))
  if len(data) != header_size + int(np.prod(shape)):
    raise ValueError(
      f"{path} declares shape {shape} ({int(np.prod(shape))} bytes) but holds "
      f"{len(data) - header_size} bytes after the header; the file is "
      "truncated or corrupt."
    )
  return np.frombuffer(data, np.uint8, offset=header_size).reshape(shape)


def _load_idx(split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
  prefix = os.path.join(os.fspath(data_dir), _IDX_FILES[split])
  paths = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
  for path in paths:
    if not os.path.isfile(path):
      raise FileNotFoundError(
        f"Fashion-MNIST file {path} not found. Install Debian's package "
        f"(apt-get install dataset-fashion-mnist, which puts the files in "
        f"{DEFAULT_IDX_DIR}) or pass data_dir= the directory holding "
        "{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz."
      )
  images, labels = (read_idx(path) for path in paths)
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise ValueError(
      f"{paths[0]} has shape {images.shape} and {paths[1]} has shape "
      f"{labels.shape}; expected (N, 28, 28) images and (N,) labels."
    )
  return images[..., None], labels.astype(np.int32)


# --- tensorflow-datasets -----------------------------------------------------


def _load_tfds(name: str, split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
  # Imported here so that the IDX path and this module's import need no TFDS.
  import tensorflow_datasets as tfds

  try:
    # Only what is prepared: TFDS could prepare CIFAR only with TensorFlow and
    # internet, so the fix for missing data is the how-to below, not a download.
    source = tfds.data_source(
      name,
      split=split,
      data_dir=data_dir,
      download=False,
      builder_kwargs={"file_format": "array_record"},
    )
  except Exception as e:
    # TFDS reports missing data as KeyError (no splits), unreadable data as
    # others; either way the user needs the same instructions.
    where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    raise RuntimeError(
      f"{name}[{split}] is not prepared as ArrayRecord in {where} ("
      f"{type(e).__name__}: {e}).\n{_how_to_get(name)}"
    ) from e
  return _read_all(source, DATASETS[name].image_shape, f"{name}[{split}]")


def _read_all(source, image_shape, what: str) -> tuple[np.ndarray, np.ndarray]:
  """Decodes every record of a TFDS data source into two arrays."""
  count = len(source)
  images = np.empty((count,) + tuple(image_shape), np.uint8)
  labels = np.empty((count,), np.int32)
  for start in range(0, count, _READ_CHUNK):
    keys = range(start, min(start + _READ_CHUNK, count))
    try:
      records = source.__getitems__(keys)  # bulk read, ~2x faster
    except TypeError:
      # tfds.testing.mock_data (4.9.10) installs a `__getitems__` that cannot be
      # called; item by item works there.
      records = [source[key] for key in keys]
    for offset, record in enumerate(records):
      image = np.asarray(record["image"])
      if image.shape != tuple(image_shape):
        raise ValueError(
          f"{what} record {start + offset} has an image of shape "
          f"{image.shape}; expected {tuple(image_shape)}."
        )
      images[start + offset] = image
      labels[start + offset] = record["label"]
  return images, labels


def _how_to_get(name: str) -> str:
  return (
    f"To get {name}: on a machine with internet, run `pip install tensorflow "
    f"tensorflow-datasets` and `tfds build {name} --file_format=array_record` "
    f"(or, with TensorFlow installed, tfds.data_source('{name}')), then copy "
    f"~/tensorflow_datasets/{name} into a directory D here and pass "
    "data_dir=D (--config.data_dir=D for experiments/cifar). Fashion-MNIST "
    "also works offline: apt-get install dataset-fashion-mnist and use "
    "source='idx' (--config.data_source=idx)."
  )


# --- Normalization and augmentation ------------------------------------------


def normalize(
  images: np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
  """Returns ``(images / 255 - mean) / std`` as float32, per channel (last axis)."""
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  *_, width, channels = images.shape
  # The per-channel constants tiled over a row of pixels: NumPy's inner loop
  # then runs over W * C values instead of C, about 5x faster for C = 3. A
  # multiply and an in-place subtract make two passes and no temporary.
  rows = images.reshape(images.shape[:-2] + (width * channels,))
  out = np.multiply(rows, np.tile(1.0 / (255.0 * std), width), dtype=np.float32)
  out -= np.tile(mean / std, width)
  return out.reshape(images.shape)


def random_crop_flip(
  images: np.ndarray, rng: np.random.Generator, padding: int = CROP_PADDING
) -> np.ndarray:
  """Random crop after zero padding, then random horizontal flip.

  As torchvision's ``RandomCrop(H, padding)`` then ``RandomHorizontalFlip()`` in
  the reference code: each image is zero-padded by ``padding`` pixels on every
  side, an ``H x W`` window is taken at a uniform offset in
  ``[0, 2 * padding]^2``, and flipped left-right with probability 1/2.

  Args:
    images: uint8 ``(..., H, W, C)``.
    rng: the source of the offsets and flips; draws ``2 n`` integers then ``n``
      uniforms for ``n`` images.
    padding: zero pixels added on each side before cropping.

  Returns:
    An array of the same shape and dtype.
  """
  *_, height, width, channels = images.shape
  flat = images.reshape((-1, height, width, channels))
  count = flat.shape[0]
  padded = np.pad(flat, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  top, left = rng.integers(0, 2 * padding + 1, size=(2, count))
  flip = rng.random(count) < 0.5
  # Loops over the 2 * padding + 1 offsets of each axis, not over the images:
  # each pass copies whole windows of the images sharing that offset, about
  # three times faster than one fancy index per pixel.
  rows = np.empty((count, height) + padded.shape[2:], images.dtype)
  for offset in range(2 * padding + 1):
    chosen = top == offset
    rows[chosen] = padded[chosen, offset : offset + height]
  out = np.empty_like(flat)
  for offset in range(2 * padding + 1):
    chosen = left == offset
    out[chosen] = rows[chosen, :, offset : offset + width]
  out[flip] = out[flip, :, ::-1]
  return out.reshape(images.shape)


# --- Per-worker batches --------------------------------------------------------


def _check_images(images, labels) -> tuple[np.ndarray, np.ndarray]:
  images, labels = np.asarray(images), np.asarray(labels)
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(
      f"images must be uint8 (N, H, W, C), got {images.dtype} "
      f"{images.shape}. load_split returns them that way."
    )
  if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
      f"labels must be integers of shape ({len(images)},) to "
      f"match images {images.shape}, got {labels.dtype} "
      f"{labels.shape}."
    )
  return images, labels.astype(np.int32, copy=False)


def _check_mean_std(mean, std, channels: int):
  for arg, value in (("mean", mean), ("std", std)):
    if np.shape(value) != (channels,):
      raise ValueError(
        f"{arg} must have one value per channel ({channels}), "
        f"got {value!r}. See DATASETS[name].{arg}."
      )
  if not np.all(np.asarray(std) > 0):
    raise ValueError(f"std must be positive, got {std!r}.")


def _check_positive_int(arg: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (value < 1):
    raise ValueError(f"{arg} must be an integer >= 1, got {value!r}.")
  return int(value)


PARTITIONS = ("iid", "dirichlet", "classes")


def partition(
  labels: np.ndarray,
  num_workers: int,
  shard_size: int,
  rng: np.random.Generator,
  *,
  scheme: str = "iid",
  alpha: float = 0.5,
  classes_per_worker: int = 2,
) -> np.ndarray:
  """Disjoint, equal-size shards of a split's indices, one per worker.

  Schemes:

  * ``"iid"``: a uniformly random permutation cut into shards.
  * ``"dirichlet"``: label skew (Hsu et al., 2019): worker i draws class
    proportions ``q_i ~ Dirichlet(alpha 1)`` and asks for ``shard_size q_i``
    images of each class (rounded by a multinomial draw); where a class runs out,
    the rest of its request goes to the classes with images left, in proportion
    to ``q_i``. Smaller ``alpha`` is more skewed (0.1: a few classes per worker;
    100: nearly IID).
  * ``"classes"``: McMahan et al.'s pathological split: the images sorted by
    label are cut into ``num_workers * classes_per_worker`` pieces and each
    worker gets ``classes_per_worker`` random pieces, so most workers see
    ``classes_per_worker`` labels (a piece can straddle two).

  Args:
    labels: ``(N,)`` integer labels.
    num_workers: number of shards.
    shard_size: images per shard; ``num_workers * shard_size <= N``.
    rng: the source of every draw.
    scheme: one of `PARTITIONS`.
    alpha: the Dirichlet concentration (``"dirichlet"``), > 0.
    classes_per_worker: pieces per worker (``"classes"``), >= 1.

  Returns:
    int ``(num_workers, shard_size)``: worker i's images as indices into the split.
  """
  _check_name("partition", scheme, PARTITIONS)
  count = len(labels)
  if scheme == "iid":
    return rng.permutation(count)[: num_workers * shard_size].reshape(
      num_workers, shard_size
    )
  if scheme == "classes":
    order = np.argsort(labels, kind="stable")  # by label, then by index
    k = classes_per_worker
    # Worker w's j-th piece sits at position owner[w, j] of the label-sorted
    # sequence; pieces get sizes that add up to shard_size for every worker.
    owner = rng.permutation(num_workers * k).reshape(num_workers, k)
    sizes = np.empty(num_workers * k, np.int64)
    sizes[owner] = shard_size // k + (np.arange(k) < shard_size % k)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return np.stack(
      [
        np.concatenate([order[starts[p] : starts[p + 1]] for p in pieces])
        for pieces in owner
      ]
    )
  # Dirichlet label skew with equal shard sizes.
  classes = np.unique(labels)
  pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in classes]
  shards = []
  for _ in range(num_workers):
    q = rng.dirichlet(np.full(len(classes), float(alpha)))
    wanted = rng.multinomial(shard_size, q)
    shard = []
    for c, n in enumerate(wanted):
      take = min(n, len(pools[c]))
      shard += pools[c][:take]
      pools[c] = pools[c][take:]
    while len(shard) < shard_size:  # some classes ran out: spread the rest
      left = np.array([len(pool) for pool in pools], float)
      weights = q * (left > 0)
      weights = weights / weights.sum() if weights.sum() > 0 else left / left.sum()
      extra = rng.multinomial(shard_size - len(shard), weights)
      for c, n in enumerate(extra):
        take = min(n, len(pools[c]))
        shard += pools[c][:take]
        pools[c] = pools[c][take:]
    shards.append(np.asarray(shard, np.int64))
  return np.stack(shards)


class WorkerBatches:
  """Each worker's fixed shard of the train set, served as reproducible batches.

  The split into shards happens once, from ``seed``: a random permutation of
  the N images cut into ``num_workers`` equal, disjoint slices of
  ``shard_size = N // num_workers`` images. The ``N mod num_workers`` images left
  over are dropped for the whole run (`num_dropped`). Every epoch each worker's
  shard is reshuffled by a permutation drawn from ``(seed, epoch, worker)`` and
  cut into ``steps_per_epoch = shard_size // batch_size`` batches; the last
  partial batch is dropped (a different few images each epoch). With
  ``augment``, each image gets a random crop (zero padding 4) and flip drawn from
  ``(seed, epoch, step)``. So ``batch(epoch, step)`` depends on nothing but its
  arguments and the constructor's: resuming is asking for the same batch again.

  Attributes:
    images, labels, num_workers, batch_size, seed, mean, std, augment: as
      given (labels as int32, mean and std as tuples).
    shard_size: images per worker.
    num_dropped: images of the split that belong to no shard.
    steps_per_epoch: batches per worker per epoch.
    shard_indices: int ``(num_workers, shard_size)``, worker i's images as
      indices into the split (read-only).

  Example:
    >>> import numpy as np
    >>> images = np.zeros((100, 32, 32, 3), np.uint8)
    >>> batches = WorkerBatches(images, np.arange(100), num_workers=8,
    ...                         batch_size=4, seed=0, mean=(0.5,) * 3,
    ...                         std=(0.25,) * 3, augment=True)
    >>> batches.shard_size, batches.num_dropped, batches.steps_per_epoch
    (12, 4, 3)
    >>> x, y = batches.batch(epoch=0, step=2)
    >>> x.shape, x.dtype, y.shape
    ((8, 4, 32, 32, 3), dtype('float32'), (8, 4))
  """

  def __init__(
    self,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_workers: int,
    batch_size: int,
    seed: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: bool,
    partition_scheme: str = "iid",
    dirichlet_alpha: float = 0.5,
    classes_per_worker: int = 2,
  ):
    """Splits the data into shards; see the class docstring.

    Args:
      images: uint8 ``(N, H, W, C)``, kept by reference (not copied).
      labels: integer ``(N,)``.
      num_workers: number of shards, one per worker.
      batch_size: images per worker per step.
      seed: non-negative integer; fixes the shards, shuffles and augmentation.
      mean: per-channel mean of ``images / 255`` to subtract.
      std: per-channel standard deviation to divide by.
      augment: random crop (padding 4) and horizontal flip.
      partition_scheme: how the shards split the labels: "iid" (default),
        "dirichlet" or "classes" (see `partition`).
      dirichlet_alpha: concentration of the "dirichlet" scheme.
      classes_per_worker: pieces per worker of the "classes" scheme.

    Raises:
      ValueError: bad shapes or dtypes, non-positive sizes, a negative seed, or
        a shard smaller than one batch.
    """
    self.images, self.labels = _check_images(images, labels)
    self.num_workers = _check_positive_int("num_workers", num_workers)
    self.batch_size = _check_positive_int("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or (seed < 0):
      raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    self.seed = int(seed)
    _check_mean_std(mean, std, self.images.shape[-1])
    self.mean, self.std = tuple(mean), tuple(std)
    self.augment = bool(augment)

    count = len(self.images)
    self.shard_size = count // self.num_workers
    self.num_dropped = count - self.shard_size * self.num_workers
    if self.shard_size < self.batch_size:
      raise ValueError(
        f"Each of {self.num_workers} workers gets {self.shard_size} images "
        f"({count} in the split), fewer than batch_size {self.batch_size}; "
        "use a smaller batch_size or fewer workers."
      )
    self.steps_per_epoch = self.shard_size // self.batch_size
    self.shard_indices = partition(
      self.labels,
      self.num_workers,
      self.shard_size,
      np.random.default_rng([self.seed, _SPLIT_STREAM]),
      scheme=partition_scheme,
      alpha=dirichlet_alpha,
      classes_per_worker=classes_per_worker,
    )
    self.shard_indices.flags.writeable = False
    self._epoch_cache = None  # (epoch, epoch_indices): pure memoization

  def epoch_indices(self, epoch: int) -> np.ndarray:
    """Worker i's shard in epoch ``epoch``'s order, as indices into the split.

    Args:
      epoch: non-negative integer.

    Returns:
      int ``(num_workers, shard_size)``, read-only; the first
      ``steps_per_epoch * batch_size`` columns are served, the rest dropped.
    """
    if (
      isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or (epoch < 0)
    ):
      raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}.")
    cached = self._epoch_cache
    if cached is not None and cached[0] == epoch:
      return cached[1]
    order = np.stack(
      [
        np.random.default_rng(
          [self.seed, _SHUFFLE_STREAM, int(epoch), worker]
        ).permutation(self.shard_size)
        for worker in range(self.num_workers)
      ]
    )
    indices = np.take_along_axis(self.shard_indices, order, axis=1)
    indices.flags.writeable = False
    self._epoch_cache = (epoch, indices)
    return indices

  def batch_indices(self, epoch: int, step: int) -> np.ndarray:
    """Indices into the split of ``batch(epoch, step)``: int ``(workers, batch)``."""
    if (
      isinstance(step, bool)
      or not isinstance(step, (int, np.integer))
      or not (0 <= step < self.steps_per_epoch)
    ):
      raise ValueError(
        f"step must be an integer in [0, {self.steps_per_epoch}) "
        f"(steps_per_epoch), got {step!r}."
      )
    start = int(step) * self.batch_size
    return self.epoch_indices(epoch)[:, start : start + self.batch_size]

  def batch(self, epoch: int, step: int, workers=None) -> tuple[np.ndarray, np.ndarray]:
    """The batch of every worker (or of ``workers``) at ``step`` within ``epoch``.

    Each worker's augmentation draws come from its own stream (seed, epoch, step,
    worker), so a process that feeds only its own workers (multi-host) builds
    exactly their rows of the full batch.

    Args:
      epoch: non-negative integer.
      step: integer in ``[0, steps_per_epoch)``.
      workers: worker indices to build (default: all, in order).

    Returns:
      ``(images, labels)``: float32 ``(len(workers), batch_size, H, W, C)``,
      augmented if ``augment`` and normalized, and int32
      ``(len(workers), batch_size)``.
    """
    indices = self.batch_indices(epoch, step)
    if workers is None:
      workers = range(self.num_workers)
    workers = [int(w) for w in workers]
    if any(not 0 <= w < self.num_workers for w in workers):
      raise ValueError(f"workers {workers} must be in [0, {self.num_workers}).")
    indices = indices[workers]
    images = self.images[indices]  # (workers, batch, H, W, C) uint8
    if self.augment:
      images = np.stack(
        [
          random_crop_flip(
            images[row],
            np.random.default_rng(
              [self.seed, _AUGMENT_STREAM, int(epoch), int(step), worker]
            ),
          )
          for row, worker in enumerate(workers)
        ]
      )
    return normalize(images, self.mean, self.std), self.labels[indices]
