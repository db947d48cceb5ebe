"""The TF-free tfds builder of MNIST / Fashion-MNIST / KMNIST (synthetic files)."""
import pathlib
import shutil
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from fusionjax import data
from fusionjax import errors
from fusionjax.data import _builder
from fusionjax.data import write_idx

from fj_data_helpers import FILES
from fj_data_helpers import synthetic_arrays
from fj_data_helpers import write_idx_dir


def _prepare(data_dir, cache, name="mnist", **kw):
  kw.setdefault("verify", False)
  kw.setdefault("download", False)
  return data.prepare_idx(name, data_dir, cache_dir=cache, **kw)


def _leftovers(cache):
  return sorted(
      str(p.relative_to(cache)) for p in pathlib.Path(cache).rglob("*")
      if "incomplete" in p.name or p.suffix == ".tmp"
  )


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "kmnist"])
def test_prepare_and_read_without_tensorflow(tmp_path, name):
  arrays = write_idx_dir(tmp_path / "data" / name)
  cache = _prepare(tmp_path / "data", tmp_path / "cache", name)
  for split in ("train", "test"):
    ds = tfds.data_source(f"fusionjax_idx/{name}", split=split, data_dir=cache)
    assert len(ds) == len(arrays[f"{split}_labels"])
    example = ds[3]
    assert example["image"].shape == (28, 28, 1)
    assert example["image"].dtype == np.uint8
    # The IDX order is kept: record i is example i.
    np.testing.assert_array_equal(example["image"][..., 0], arrays[f"{split}_images"][3])
    assert example["label"] == arrays[f"{split}_labels"][3]
  info = ds.dataset_info
  assert info.features["label"].num_classes == 10
  assert info.file_format.value == "array_record"
  assert "tensorflow" not in sys.modules


def test_files_in_the_data_dir_itself_and_manual_dir(tmp_path):
  write_idx_dir(tmp_path / "flat")  # the folder itself holds the four files
  _prepare(tmp_path / "flat", tmp_path / "c1")
  write_idx_dir(tmp_path / "d" / "downloads" / "manual" / "kmnist")
  _prepare(tmp_path / "d", tmp_path / "c2", "kmnist")
  assert len(data.from_tfds("fusionjax_idx/kmnist", tmp_path / "c2", "test")) == 20


def test_missing_files_are_named(tmp_path):
  folder = tmp_path / "data" / "mnist"
  write_idx_dir(folder)
  (folder / FILES["train_labels"]).unlink()
  (folder / FILES["test_images"]).unlink()
  with pytest.raises(errors.DataNotFoundError) as info:
    _prepare(tmp_path / "data", tmp_path / "cache")
  message = str(info.value)
  assert "lacks ['train-labels-idx1-ubyte.gz', 't10k-images-idx3-ubyte.gz']" in message
  assert str(folder) in message and "--data-dir" in message and "FUSIONJAX_DATA" in message


def test_missing_data_dir(tmp_path):
  with pytest.raises(errors.DataNotFoundError, match="does not exist"):
    _prepare(tmp_path / "nowhere", tmp_path / "cache")
  (tmp_path / "empty").mkdir()
  with pytest.raises(errors.DataNotFoundError, match="files not found"):
    _prepare(tmp_path / "empty", tmp_path / "cache")


def test_corrupt_file_fails_cleanly_then_prepares_after_fix(tmp_path):
  folder = tmp_path / "data" / "mnist"
  arrays = write_idx_dir(folder)
  good = (folder / FILES["test_images"]).read_bytes()
  (folder / FILES["test_images"]).write_bytes(good[: len(good) // 2])
  cache = tmp_path / "cache"
  with pytest.raises(errors.CorruptFileError):
    _prepare(tmp_path / "data", cache)
  assert _leftovers(cache) == []
  assert not list((cache / "fusionjax_idx").rglob("*.array_record*"))
  (folder / FILES["test_images"]).write_bytes(good)  # fix it
  _prepare(tmp_path / "data", cache)
  test = data.from_tfds("fusionjax_idx/mnist", cache, "test")
  np.testing.assert_array_equal(test.raw[..., 0], arrays["test_images"])
  assert test.name == "mnist"


def test_failure_during_generation_leaves_nothing(tmp_path, monkeypatch):
  """Even a failure after records were written leaves no half-written data set."""
  write_idx_dir(tmp_path / "data" / "mnist")
  original = _builder.IdxImages._generate_examples

  def failing(self, images, labels):
    for i, (key, example) in enumerate(original(self, images, labels)):
      if i == 30:
        raise OSError("disk full")
      yield key, example

  monkeypatch.setattr(_builder.IdxImages, "_generate_examples", failing)
  cache = tmp_path / "cache"
  with pytest.raises(OSError, match="disk full"):
    _prepare(tmp_path / "data", cache)
  assert _leftovers(cache) == []
  monkeypatch.undo()
  _prepare(tmp_path / "data", cache)
  assert len(tfds.data_source("fusionjax_idx/mnist", split="train", data_dir=cache)) == 40


def test_count_mismatch(tmp_path):
  arrays = synthetic_arrays()
  arrays["train_labels"] = arrays["train_labels"][:-1]
  write_idx_dir(tmp_path / "d" / "mnist", arrays)
  with pytest.raises(errors.DataMismatchError, match="40 images .* but 39 labels"):
    _prepare(tmp_path / "d", tmp_path / "c")


def test_labels_out_of_range(tmp_path):
  arrays = synthetic_arrays()
  arrays["test_labels"][5] = 10
  write_idx_dir(tmp_path / "d" / "mnist", arrays)
  with pytest.raises(errors.LabelError, match=r"outside \[0, 10\)"):
    _prepare(tmp_path / "d", tmp_path / "c")


def test_wrong_dims_and_dtype(tmp_path):
  arrays = synthetic_arrays()
  arrays["train_images"] = arrays["train_images"][:, :, :27]
  write_idx_dir(tmp_path / "d" / "mnist", arrays)
  with pytest.raises(errors.CorruptFileError, match="wrong dimensions"):
    _prepare(tmp_path / "d", tmp_path / "c")
  arrays = synthetic_arrays()
  write_idx_dir(tmp_path / "e" / "mnist", arrays)
  write_idx(tmp_path / "e" / "mnist" / FILES["test_labels"], arrays["test_labels"].astype(np.int32))
  with pytest.raises(errors.CorruptFileError, match="holds int32"):
    _prepare(tmp_path / "e", tmp_path / "c")


def test_empty_split(tmp_path):
  write_idx_dir(tmp_path / "d" / "mnist", synthetic_arrays(n_test=0))
  with pytest.raises(errors.EmptySplitError, match="no examples"):
    _prepare(tmp_path / "d", tmp_path / "c")


def test_verify_rejects_files_that_are_not_the_published_ones(tmp_path):
  write_idx_dir(tmp_path / "d" / "fashion_mnist")
  with pytest.raises(errors.CorruptFileError, match="not the published Fashion-MNIST file.*verify=False"):
    _prepare(tmp_path / "d", tmp_path / "c", "fashion_mnist", verify=True)


def test_download_uses_the_standard_urls(tmp_path, monkeypatch):
  """With no files on disk, the builder asks tfds's download manager for them."""
  served = tmp_path / "served"
  arrays = write_idx_dir(served)
  asked = {}

  def fake_download(self, urls):
    asked.update(urls)
    return {role: served / url.rsplit("/", 1)[1] for role, url in urls.items()}

  monkeypatch.setattr(tfds.download.DownloadManager, "download", fake_download)
  (tmp_path / "d").mkdir()
  cache = _prepare(tmp_path / "d", tmp_path / "c", "kmnist", download=True)
  assert asked == {
      role: "http://codh.rois.ac.jp/kmnist/dataset/kmnist/" + f
      for role, f in FILES.items()
  }
  train = data.from_tfds("fusionjax_idx/kmnist", cache, "train")
  np.testing.assert_array_equal(train.labels, arrays["train_labels"])
  # A downloaded file is checked too.
  with pytest.raises(errors.CorruptFileError, match="not the published MNIST"):
    _prepare(tmp_path / "d", tmp_path / "c3", "mnist", download=True, verify=True)


def test_download_failure_says_what_to_do(tmp_path, monkeypatch):
  def offline(self, urls):
    raise ConnectionError("no network")

  monkeypatch.setattr(tfds.download.DownloadManager, "download", offline)
  (tmp_path / "d").mkdir()
  with pytest.raises(errors.DataNotFoundError, match="(?s)files not found.*no network"):
    _prepare(tmp_path / "d", tmp_path / "c", download=True)


def test_unknown_idx_name(tmp_path):
  with pytest.raises(errors.DataNotFoundError, match="known"):
    data.prepare_idx("emnist", tmp_path)


def test_read_only_data_dir_prepares_into_the_cache(tmp_path, monkeypatch):
  write_idx_dir(tmp_path / "ro" / "mnist")
  (tmp_path / "ro").chmod(0o555)  # no write bits (even root leaves it alone)
  monkeypatch.setenv("FUSIONJAX_CACHE", str(tmp_path / "cache_env"))
  try:
    cache = data.prepare_idx("mnist", tmp_path / "ro", verify=False, download=False)
  finally:
    (tmp_path / "ro").chmod(0o755)
  assert cache.parent == (tmp_path / "cache_env").resolve()
  assert cache.name.startswith("ro-")  # one folder per data dir
  assert (cache / "fusionjax_idx" / "mnist" / "1.0.0").is_dir()
  assert not (tmp_path / "ro" / "fusionjax_idx").exists()
