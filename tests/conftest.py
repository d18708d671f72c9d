"""Shared fixtures of the tests (the emulated devices are set up in ../conftest.py)."""

import tempfile

import pytest


@pytest.fixture
def tfds_tempdir(tmp_path, monkeypatch):
  """Keeps TFDS' temporary directories under the test's ``tmp_path``.

  TFDS makes a ``tempfile.mkdtemp("tfds")`` for every builder of a dataset that
  is not prepared (``DatasetInfo.initialize_from_bucket``, so under
  ``tfds.testing.mock_data`` too) and never removes it.
  """
  directory = tmp_path / "tempfile"
  directory.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(directory))
  return directory


@pytest.fixture
def mock_cifar(tfds_tempdir):
  """Random CIFAR-10/100 and Fashion-MNIST from TFDS, 48 examples per split."""
  del tfds_tempdir
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE):
    yield
