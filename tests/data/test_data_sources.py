"""Sources: digits, arrays, prepared tfds data sets, ``load`` and the data dir."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from fusionjax import data
from fusionjax import errors

from fj_data_helpers import write_idx_dir


def test_digits_splits():
  train, validation, test = data.load("digits")
  assert (len(train), len(validation), len(test)) == (1293, 144, 360)
  assert train.input_shape == (8, 8, 1) and train.num_classes == 10
  assert train.name == "digits" and validation.split == "validation"
  x = train.arrays()["image"]
  assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0  # /16
  # Stratified: every class within one example of its share.
  for split in (validation, test):
    share = np.bincount(train.labels, minlength=10) * len(split) / len(train)
    np.testing.assert_allclose(np.bincount(split.labels, minlength=10), share, atol=1.5)


def test_digits_seed_moves_validation_not_test():
  a, b = data.load("digits", seed=0), data.load("digits", seed=1)
  again = data.load("digits", seed=0)
  np.testing.assert_array_equal(a.validation.raw, again.validation.raw)
  assert not np.array_equal(a.validation.raw, b.validation.raw)
  np.testing.assert_array_equal(a.test.raw, b.test.raw)
  # The three splits partition the 1797 examples.
  rows = np.concatenate([s.raw.reshape(len(s), -1) for s in a])
  assert rows.shape[0] == 1797
  sizes = data.load("digits", val_size=100)
  assert (len(sizes.train), len(sizes.validation)) == (1337, 100)


@pytest.mark.parametrize("kw", [{"val_size": 0}, {"val_fraction": 0.0}, {"val_fraction": 1.0}])
def test_empty_split(kw):
  with pytest.raises(errors.EmptySplitError, match="empty"):
    data.load("digits", **kw)


def test_getitem_index_and_arrays():
  x = np.arange(6 * 4 * 4 * 1, dtype=np.uint8).reshape(6, 4, 4, 1)
  src = data.from_arrays(x, [0, 1, 2, 0, 1, 2], normalization="mnist")
  one = src[2]
  assert one["image"].shape == (4, 4, 1) and one["label"] == 2
  many = src[np.array([5, 0])]
  assert many["image"].shape == (2, 4, 4, 1) and many["label"].tolist() == [2, 0]
  expected = (x[[5, 0]] / 255.0 - 0.1307) / 0.3081
  np.testing.assert_allclose(many["image"], expected, rtol=1e-5, atol=1e-6)
  whole = src.arrays()
  assert whole is src.arrays()  # cached
  assert not whole["image"].flags.writeable and not whole["label"].flags.writeable
  np.testing.assert_allclose(whole["image"][[5, 0]], many["image"])
  assert src.num_classes == 3 and len(src) == 6
  # No normalisation: the arrays as they are, in float32.
  raw = data.from_arrays(np.ones((2, 3), np.float64), np.array([0, 1]))
  assert raw[0]["image"].dtype == np.float32 and raw[:]["image"].tolist() == [[1.0] * 3] * 2


def test_per_channel_normalization():
  x = np.full((2, 2, 2, 3), 255, np.uint8)
  src = data.from_arrays(x, [0, 1], normalization="cifar10")
  mean, std = np.array(data.NORMALIZATION["cifar10"].mean), np.array(data.NORMALIZATION["cifar10"].std)
  np.testing.assert_allclose(src[0]["image"][0, 0], (1 - mean) / std, rtol=1e-6)


def test_from_arrays_errors():
  with pytest.raises(errors.DataMismatchError, match="5 inputs"):
    data.from_arrays(np.zeros((5, 2)), np.zeros(4, int))
  with pytest.raises(errors.LabelError, match=r"outside \[0, 3\)"):
    data.from_arrays(np.zeros((3, 2)), [0, 1, 3], num_classes=3)
  with pytest.raises(errors.LabelError, match="outside"):
    data.from_arrays(np.zeros((3, 2)), [0, -1, 1])
  with pytest.raises(errors.LabelError, match="dtype float"):
    data.from_arrays(np.zeros((3, 2)), [0.0, 1.0, 1.0])
  with pytest.raises(errors.EmptySplitError):
    data.from_arrays(np.zeros((0, 2)), np.zeros(0, int))
  with pytest.raises(errors.EmptySplitError):
    data.subset(data.from_arrays(np.zeros((3, 2)), [0, 1, 1]), [])


def test_resolve_data_dir(tmp_path, monkeypatch):
  monkeypatch.delenv("FUSIONJAX_DATA", raising=False)
  assert data.resolve_data_dir(tmp_path) == tmp_path.resolve()
  monkeypatch.setenv("FUSIONJAX_DATA", str(tmp_path))
  assert data.resolve_data_dir() == tmp_path.resolve()
  monkeypatch.setenv("FUSIONJAX_DATA", str(tmp_path / "typo"))
  with pytest.raises(errors.DataNotFoundError, match=r"(?s)typo.*FUSIONJAX_DATA.*does not exist"):
    data.resolve_data_dir()
  with pytest.raises(errors.DataNotFoundError, match="--data-dir"):
    data.resolve_data_dir(tmp_path / "missing")
  monkeypatch.delenv("FUSIONJAX_DATA")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  default = data.resolve_data_dir()
  assert default.is_dir() and str(default).startswith(str(tmp_path / "home"))


def test_load_idx_from_data_dir(idx_data_dir, tmp_path, monkeypatch):
  data_dir, arrays = idx_data_dir
  monkeypatch.setenv("FUSIONJAX_DATA", str(data_dir))  # as --data-dir would
  train, validation, test = data.load("mnist", verify=False, download=False,
                                      val_size=10, seed=3)
  assert (len(train), len(validation), len(test)) == (30, 10, 20)
  assert np.bincount(validation.labels, minlength=10).tolist() == [1] * 10
  np.testing.assert_array_equal(test.raw[..., 0], arrays["test_images"])
  expected = (arrays["test_images"][:2, ..., None] / 255 - 0.1307) / 0.3081
  np.testing.assert_allclose(test[np.arange(2)]["image"], expected, rtol=1e-5, atol=1e-6)
  assert (data_dir / "fusionjax_idx" / "mnist" / "1.0.0").is_dir()  # prepared there
  # A second load reuses the prepared files, even with the raw files gone.
  for f in (data_dir / "mnist").iterdir():
    f.unlink()
  again = data.load("mnist", verify=False, download=False, val_size=10, seed=3)
  np.testing.assert_array_equal(again.validation.labels, validation.labels)


def test_from_tfds_with_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=24):
    test = data.from_tfds("cifar10", tmp_path, "test")
    assert len(test) == 24 and test.input_shape == (32, 32, 3)
    assert test.num_classes == 10 and test.name == "cifar10"
    assert test.normalization == data.NORMALIZATION["cifar10"]
    batch = test[np.arange(4)]
    assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
    assert test.raw.dtype == np.uint8
    splits = data.load("cifar10", tmp_path, val_fraction=0.25)
    assert [len(s) for s in splits] == [18, 6, 24]


def test_from_tfds_not_prepared(tmp_path):
  with pytest.raises(errors.DataNotFoundError, match="(?s)cifar10.*array_record"):
    data.from_tfds("cifar10", tmp_path, "train")
  with pytest.raises(errors.DataNotFoundError, match="not_a_dataset_xyz"):
    data.from_tfds("not_a_dataset_xyz", tmp_path, "train")


def test_from_tfds_unknown_split(tmp_path):
  write_idx_dir(tmp_path / "mnist")
  cache = data.prepare_idx("mnist", tmp_path, verify=False, download=False)
  with pytest.raises(errors.DataNotFoundError, match="'validation'"):
    data.from_tfds("fusionjax_idx/mnist", cache, "validation")
  sliced = data.from_tfds("fusionjax_idx/mnist", cache, "train[:25%]")
  assert len(sliced) == 10
