"""Prepared data sets: no download unless asked, no code a folder names, damage.

* ``load`` of an IDX data set without its files fails at once and never
  downloads unless ``download=True``;
* a prepared folder whose ``features.json`` (or ``dataset_info.json``) names
  a class outside the whitelist raises ``UnsafeFeatureError`` and imports
  nothing;
* a damaged record file raises ``CorruptPreparedDataError`` naming the folder
  to delete; an interrupted or killed preparation leaves no ``incomplete.*``
  folder behind once the next preparation has run.
"""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest
import tensorflow_datasets as tfds

from fusionjax import data
from fusionjax import errors
from fusionjax.data import _builder

from fj_data_helpers import FILES
from fj_data_helpers import ROOT
from fj_data_helpers import write_idx_dir

_VERSION_DIR = pathlib.Path("fusionjax_idx", "mnist", "1.0.0")


@pytest.fixture(scope="module")
def prepared_once(tmp_path_factory):
  """Synthetic MNIST (40 train / 20 test) prepared once: (data dir, cache)."""
  root = tmp_path_factory.mktemp("prepared")
  write_idx_dir(root / "data" / "mnist")
  data.prepare_idx("mnist", root / "data", cache_dir=root / "cache", verify=False)
  return root / "data", root / "cache"


@pytest.fixture
def prepared(prepared_once, tmp_path):
  """A private copy of ``prepared_once``: (data dir, cache, version folder)."""
  data_dir, cache = (shutil.copytree(p, tmp_path / p.name) for p in prepared_once)
  return pathlib.Path(data_dir), pathlib.Path(cache), pathlib.Path(cache) / _VERSION_DIR


def _incomplete(cache):
  return sorted(str(p) for p in pathlib.Path(cache).rglob("incomplete.*"))


# --------------------------------------------------------------------------
# 1. no files, no download unless asked
# --------------------------------------------------------------------------
@pytest.fixture
def no_download(monkeypatch):
  """Records (and refuses) every download tfds's download manager is asked for."""
  asked = []

  def refuse(self, urls, *args, **kwargs):
    asked.append(urls)
    raise AssertionError(f"tried to download {urls}")

  for method in ("download", "download_and_extract"):
    monkeypatch.setattr(tfds.download.DownloadManager, method, refuse)
  return asked


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "kmnist"])
def test_load_without_files_fails_fast_and_downloads_nothing(tmp_path, no_download, name):
  empty = tmp_path / "empty"
  empty.mkdir()
  start = time.perf_counter()
  with pytest.raises(errors.DataNotFoundError) as info:
    data.load(name, data_dir=empty)  # the defaults: verify, no download
  elapsed = time.perf_counter() - start
  assert no_download == []  # the default never touches the network
  assert elapsed < 5.0, f"load took {elapsed:.1f} s to fail"
  message = str(info.value)
  assert str(empty / name) in message and str(empty) in message  # where it looked
  for file in FILES.values():  # what it expected
    assert file in message
  assert "data_dir=" in message and "download=True" in message  # the fix
  assert "Downloading them failed" not in message
  assert list(empty.rglob("*")) == []  # nothing written either


def test_prepared_tfds_data_set_missing_fails_fast_and_downloads_nothing(tmp_path, no_download):
  start = time.perf_counter()
  with pytest.raises(errors.DataNotFoundError, match=f"(?s)cifar10.*{tmp_path}.*array_record"):
    data.load("cifar10", data_dir=tmp_path)
  assert time.perf_counter() - start < 5.0 and no_download == []


def test_download_happens_only_when_asked(tmp_path, no_download):
  (tmp_path / "d").mkdir()
  with pytest.raises(errors.DataNotFoundError, match="Downloading them failed"):
    data.prepare_idx("mnist", tmp_path / "d", cache_dir=tmp_path / "c", download=True)
  assert len(no_download) == 1 and set(no_download[0]) == set(FILES)


# --------------------------------------------------------------------------
# 2. loading data never imports code that a data folder names
# --------------------------------------------------------------------------
_LABEL = "tensorflow_datasets.core.features.class_label_feature.ClassLabel"
_DICT = "tensorflow_datasets.core.features.features_dict.FeaturesDict"


def _write_evil_module(folder, module, marker):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / f"{module}.py").write_text(textwrap.dedent(f"""\
      import pathlib
      pathlib.Path({str(marker)!r}).write_text("imported")

      class Evil:
        pass
      """))


def _name_evil(version_dir, how, evil):
  """Rewrites the prepared folder's feature description to name ``evil``."""
  features_path = version_dir / "features.json"
  text = features_path.read_text()
  if how == "features.json label":
    features_path.write_text(text.replace(_LABEL, evil))
  elif how == "features.json top level":
    features_path.write_text(text.replace(_DICT, evil))
  elif how == "dataset_info.json":  # tfds prefers these features to features.json
    info_path = version_dir / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["features"] = json.loads(text.replace(_LABEL, evil))
    info_path.write_text(json.dumps(info))
  elif how == "whitelisted class, json content":
    # A FeaturesDict whose content is legacy JSON: tfds would look the nested
    # 'type' up (and import it).
    legacy = {"label": {"type": evil, "content": {}}}
    features_path.write_text(json.dumps({
        "pythonClassName": _DICT,
        "jsonFeature": {"json": json.dumps(legacy)},
    }))
  else:
    raise ValueError(how)


@pytest.mark.parametrize("name", ["fusionjax_idx/mnist:1.0.0", "fusionjax_idx/mnist"])
@pytest.mark.parametrize(
    "how",
    [
        "features.json label",
        "features.json top level",
        "dataset_info.json",
        "whitelisted class, json content",
    ],
)
def test_prepared_folder_naming_a_module_is_refused_and_nothing_is_imported(
    prepared, tmp_path, monkeypatch, name, how
):
  _, cache, version_dir = prepared
  module = f"evil_module_{uuid.uuid4().hex[:8]}"
  marker = tmp_path / "MARKER"
  code_dir = tmp_path / "cwd"
  _write_evil_module(code_dir, module, marker)
  monkeypatch.syspath_prepend(str(code_dir))
  monkeypatch.chdir(code_dir)  # a module in the working directory too
  _name_evil(version_dir, how, f"{module}.Evil")
  with pytest.raises(errors.FusionJaxError) as info:
    data.load(name, cache, val_size=10)
  assert not marker.exists(), f"{module}.py was imported"
  assert module not in sys.modules
  assert isinstance(info.value, errors.UnsafeFeatureError), info.value
  message = str(info.value)
  assert version_dir.name in message and str(cache) in message  # the file
  assert f"{module}.Evil" in message or "json_feature" in message  # the class
  with pytest.raises(errors.UnsafeFeatureError):
    data.from_tfds(name, cache, "test")
  assert not marker.exists()


def test_legacy_features_json_is_not_read(prepared, tmp_path, monkeypatch):
  _, cache, version_dir = prepared
  module = f"evil_module_{uuid.uuid4().hex[:8]}"
  _write_evil_module(tmp_path / "cwd", module, tmp_path / "MARKER")
  monkeypatch.syspath_prepend(str(tmp_path / "cwd"))
  (version_dir / "features.json").write_text(json.dumps(
      {"type": f"{module}.Evil", "content": {}}))
  with pytest.raises(errors.CorruptPreparedDataError, match="features.json"):
    data.from_tfds("fusionjax_idx/mnist:1.0.0", cache, "train")
  assert not (tmp_path / "MARKER").exists()


def test_whitelisted_features_still_load(prepared):
  data_dir, cache, _ = prepared
  for name in ("fusionjax_idx/mnist:1.0.0", "fusionjax_idx/mnist", "fusionjax_idx"):
    test = data.from_tfds(name, cache, "test")
    assert len(test) == 20 and test.num_classes == 10 and test.name == "mnist"
  train, validation, test = data.load("mnist", data_dir, cache_dir=cache, val_size=10)
  assert (len(train), len(validation), len(test)) == (30, 10, 20)


# --------------------------------------------------------------------------
# 3. damaged records; interrupted and killed preparations
# --------------------------------------------------------------------------
def _damage(path, how):
  raw = path.read_bytes()
  if how == "truncated":
    path.write_bytes(raw[: len(raw) - 10])
  elif how == "cut in half":
    path.write_bytes(raw[: len(raw) // 2])
  elif how == "overwritten":
    path.write_bytes(raw[:2000] + bytes(range(256)) * 4 + raw[3024:])
  elif how == "emptied":
    path.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncated", "cut in half", "overwritten", "emptied"])
def test_damaged_record_file_names_the_folder_to_delete(prepared, how):
  data_dir, cache, version_dir = prepared
  (record,) = version_dir.glob("fusionjax_idx-train.array_record-*")
  _damage(record, how)
  with pytest.raises(errors.CorruptPreparedDataError) as info:
    data.load("mnist", data_dir, cache_dir=cache, verify=False)
  message = str(info.value)
  assert f"delete the folder {version_dir}" in message
  assert "preparing again rebuilds it" in message and "'train'" in message
  assert isinstance(info.value, errors.CorruptFileError)
  # As the message says: delete it, and the next load prepares it again.
  shutil.rmtree(version_dir)
  train, _, test = data.load("mnist", data_dir, cache_dir=cache, verify=False)
  assert (len(train), len(test)) == (36, 20)


def test_damaged_dataset_info_names_the_folder_to_delete(prepared):
  _, cache, version_dir = prepared
  (version_dir / "dataset_info.json").write_text('{"name": "fusionjax_idx", ')
  with pytest.raises(errors.CorruptPreparedDataError, match=f"delete the folder {version_dir}"):
    data.from_tfds("fusionjax_idx/mnist", cache, "train")


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, OSError])
def test_interrupted_preparation_leaves_no_incomplete_folder(tmp_path, monkeypatch, interrupt):
  write_idx_dir(tmp_path / "data" / "mnist")
  original = _builder.IdxImages._generate_examples

  def interrupted(self, images, labels):
    for i, (key, example) in enumerate(original(self, images, labels)):
      if i == 25:
        raise interrupt("stopped during preparation")
      yield key, example

  monkeypatch.setattr(_builder.IdxImages, "_generate_examples", interrupted)
  cache = tmp_path / "cache"
  with pytest.raises(interrupt):
    data.prepare_idx("mnist", tmp_path / "data", cache_dir=cache, verify=False)
  assert _incomplete(cache) == []
  assert not (cache / _VERSION_DIR).exists()
  monkeypatch.undo()
  data.prepare_idx("mnist", tmp_path / "data", cache_dir=cache, verify=False)
  assert (cache / _VERSION_DIR / "dataset_info.json").is_file()


def test_stale_incomplete_folder_is_removed_by_the_next_preparation(tmp_path):
  write_idx_dir(tmp_path / "data" / "mnist")
  cache = tmp_path / "cache"
  stale = cache / "fusionjax_idx" / "mnist" / "incomplete.K1LLED_1.0.0"
  stale.mkdir(parents=True)
  (stale / "fusionjax_idx-train.array_record-00000-of-00001").write_bytes(b"half")
  with pytest.warns(UserWarning, match=f"(?s)interrupted preparation.*{stale}"):
    data.prepare_idx("mnist", tmp_path / "data", cache_dir=cache, verify=False)
  assert _incomplete(cache) == []
  assert len(data.from_tfds("fusionjax_idx/mnist", cache, "train")) == 40


def test_preparation_killed_by_a_signal_is_cleaned_up_next_time(tmp_path):
  """SIGKILL mid-preparation (no handler runs) leaves incomplete.*; the next run removes it."""
  write_idx_dir(tmp_path / "data" / "mnist")
  cache = tmp_path / "cache"
  code = textwrap.dedent(f"""\
      import os, signal
      from fusionjax.data import _builder, _load
      original = _builder.IdxImages._generate_examples
      def killed(self, images, labels):
        for i, item in enumerate(original(self, images, labels)):
          if i == 25:
            os.kill(os.getpid(), signal.SIGKILL)
          yield item
      _builder.IdxImages._generate_examples = killed
      _load.prepare_idx("mnist", {str(tmp_path / 'data')!r},
                        cache_dir={str(cache)!r}, verify=False)
      """)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(tmp_path),
                        capture_output=True, timeout=60)
  assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
  assert len(_incomplete(cache)) == 1  # what a killed run leaves
  with pytest.warns(UserWarning, match="interrupted preparation"):
    data.prepare_idx("mnist", tmp_path / "data", cache_dir=cache, verify=False)
  assert _incomplete(cache) == []
  np.testing.assert_array_equal(
      data.from_tfds("fusionjax_idx/mnist", cache, "test").labels, np.arange(20) % 10)
