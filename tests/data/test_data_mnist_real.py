"""The real MNIST files in ../shared/data/mnist: content, and through the builder.

Skipped only where the folder is absent (see ``requires_mnist``).
"""
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from fusionjax.data import read_idx

from fj_data_helpers import FILES
from fj_data_helpers import MNIST_DIR
from fj_data_helpers import gunzip_md5
from fj_data_helpers import requires_mnist

pytestmark = requires_mnist

MD5 = {
    "train_images": "6bbc9ace898e44ae57da46a324031adb",
    "train_labels": "a25bea736e30d166cdddb491f175f624",
    "test_images": "2646ac647ad5339dbf082846283269ea",
    "test_labels": "27ae3e4e09519cfbb04c329615203637",
}
TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.mark.parametrize("role", sorted(FILES))
def test_md5_of_decompressed_bytes(role):
  assert gunzip_md5(MNIST_DIR / FILES[role]) == MD5[role]


def test_shapes_and_class_counts():
  train_x = read_idx(MNIST_DIR / FILES["train_images"], shape=(None, 28, 28))
  train_y = read_idx(MNIST_DIR / FILES["train_labels"], ndim=1)
  test_x = read_idx(MNIST_DIR / FILES["test_images"], shape=(None, 28, 28))
  test_y = read_idx(MNIST_DIR / FILES["test_labels"], ndim=1)
  assert train_x.shape == (60000, 28, 28) and train_x.dtype == np.uint8
  assert test_x.shape == (10000, 28, 28)
  assert train_y.shape == (60000,) and test_y.shape == (10000,)
  assert np.bincount(train_y, minlength=10).tolist() == TRAIN_CLASS_COUNTS
  assert train_x.mean() / 255 == pytest.approx(0.1307, abs=1e-4)


@pytest.mark.slow
def test_prepared_through_the_builder_equals_the_idx_files(mnist_prepared):
  """Prepared (verified against the published checksums) and read by tfds."""
  for split, n in (("train", 60000), ("test", 10000)):
    ds = tfds.data_source("fusionjax_idx/mnist", split=split, data_dir=mnist_prepared)
    assert len(ds) == n
    idx = np.array([0, 1, n // 2, n - 1])
    records = ds.__getitems__(idx.tolist())
    images = read_idx(MNIST_DIR / FILES[f"{split}_images"])
    labels = read_idx(MNIST_DIR / FILES[f"{split}_labels"])
    for i, record in zip(idx, records):
      np.testing.assert_array_equal(record["image"][..., 0], images[i])
      assert record["label"] == labels[i]
  assert "tensorflow" not in sys.modules


@pytest.mark.slow
def test_load_mnist(mnist_splits):
  train, validation, test = mnist_splits
  assert (len(train), len(validation), len(test)) == (54000, 6000, 10000)
  assert train.input_shape == (28, 28, 1) and train.num_classes == 10
  # The validation split is stratified: each class gets 10% of its examples.
  counts = np.bincount(validation.labels, minlength=10)
  np.testing.assert_allclose(counts, np.array(TRAIN_CLASS_COUNTS) / 10, atol=1)
  # Train and validation partition the original training split (same pixel
  # sums at every position, same labels).
  original = read_idx(MNIST_DIR / FILES["train_images"]).astype(np.int64)
  merged = train.raw[..., 0].sum(0, np.int64) + validation.raw[..., 0].sum(0, np.int64)
  np.testing.assert_array_equal(merged, original.sum(0))
  np.testing.assert_array_equal(
      np.bincount(train.labels, minlength=10) + counts, TRAIN_CLASS_COUNTS)
  # Standard normalisation: about mean 0, std 1 on (stratified) training data.
  image = validation.arrays()["image"]
  assert image.dtype == np.float32 and image.shape == (6000, 28, 28, 1)
  assert image.mean() == pytest.approx(0.0, abs=0.01)
  assert image.std() == pytest.approx(1.0, abs=0.01)
  batch = test[np.arange(5)]
  assert batch["image"].shape == (5, 28, 28, 1) and batch["label"].dtype == np.int32
