"""Opening a prepared tfds folder without running code that the folder names.

tfds rebuilds a prepared data set's features from its ``features.json`` (or
the ``features`` of its ``dataset_info.json``) and imports whatever module a
``pythonClassName`` there names: a folder naming ``evil.Feature`` runs the
``evil.py`` that lies in the working directory. fusionjax reads those two
files itself, with protobuf's JSON parser (which runs no code), and checks
every feature against :data:`FEATURE_CLASSES`, tfds classes that tfds has
registered when it is imported, so that naming them imports nothing. Anything
else raises :class:`~fusionjax.errors.UnsafeFeatureError` naming the class,
the feature and the file, before tfds sees the folder; tfds then reads the
records (``array_record``) of the checked description, as before.

Layout of a prepared folder (what ``tfds build`` and
:class:`~fusionjax.data.IdxImages` write)::

    <data_dir>/<name>[/<config>]/<version>/dataset_info.json
                                           features.json
                                           <name>-<split>.array_record-0000x-of-0000y
    <data_dir>/<name>/.config/metadata.json   (the default config, if any)
"""
from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any

from google.protobuf import json_format
import tensorflow_datasets as tfds
from tensorflow_datasets.core import read_only_builder
from tensorflow_datasets.core import registered
from tensorflow_datasets.core.features import feature as feature_lib
from tensorflow_datasets.core.proto import dataset_info_pb2
from tensorflow_datasets.core.proto import feature_pb2
from tensorflow_datasets.core.utils import file_utils

from fusionjax import errors

_FEATURES = "tensorflow_datasets.core.features."

#: The feature classes a prepared folder may name (``pythonClassName``), each
#: with the one proto content it is stored as. fusionjax's own builder writes
#: FeaturesDict, Tensor and ClassLabel; ``tfds build cifar10`` adds Image and
#: Text.
FEATURE_CLASSES: dict[str, str] = {
    _FEATURES + "features_dict.FeaturesDict": "features_dict",
    _FEATURES + "tensor_feature.Tensor": "tensor",
    _FEATURES + "scalar.Scalar": "tensor",
    _FEATURES + "class_label_feature.ClassLabel": "class_label",
    _FEATURES + "image_feature.Image": "image",
    _FEATURES + "text_feature.Text": "text",
}

INFO_FILE = "dataset_info.json"
FEATURES_FILE = "features.json"
_CONFIG = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"  # one folder name, never '..'
_NAME = re.compile(
    rf"(?P<name>[A-Za-z0-9_]+)(?:/(?P<config>{_CONFIG}))?"
    r"(?::(?P<version>\d+\.\d+\.\d+))?"
)
_VERSION = re.compile(r"\d+\.\d+\.\d+")


def parse_name(name: str) -> tuple[str, str | None, str | None]:
  """``'name[/config][:version]'`` -> ``(name, config, version)``.

  Raises:
    DataNotFoundError: any other form (namespaces, builder kwargs, wildcards).

  Example:
    >>> parse_name("fusionjax_idx/mnist:1.0.0")
    ('fusionjax_idx', 'mnist', '1.0.0')
  """
  match = _NAME.fullmatch(name)
  if match is None or ".." in (match["config"] or ""):
    raise errors.DataNotFoundError(
        f"{name!r} is not a prepared data set name. Fix: name it"
        " 'name', 'name/config' or 'name[/config]:1.2.3' (e.g. 'cifar10',"
        " 'fusionjax_idx/mnist:1.0.0')."
    )
  return match["name"], match["config"], match["version"]


def _version_key(path: pathlib.Path) -> tuple[int, ...]:
  return tuple(int(p) for p in path.name.split("."))


def _default_config(dataset_dir: pathlib.Path) -> str | None:
  try:
    meta = json.loads((dataset_dir / ".config" / "metadata.json").read_text())
  except (OSError, ValueError):
    return None
  config = meta.get("default_config_name") if isinstance(meta, dict) else None
  if not isinstance(config, str) or not re.fullmatch(_CONFIG, config):
    return None
  return None if ".." in config else config


def find(
    data_dir: str | os.PathLike, name: str
) -> pathlib.Path | None:
  """The prepared folder of ``name`` in ``data_dir``, or ``None`` if absent.

  The version is the one named, else the highest one present
  (``incomplete.*`` folders of unfinished preparations are never picked); the
  config is the one named, else the data set's default
  (``.config/metadata.json``).

  Returns:
    ``<data_dir>/<name>[/<config>]/<version>``: a folder that exists (it may
    still lack its ``dataset_info.json``, see :func:`read_info`).
  """
  base, config, version = parse_name(name)
  dataset_dir = pathlib.Path(data_dir).expanduser() / base
  config = config or _default_config(dataset_dir)
  parent = dataset_dir / config if config else dataset_dir
  if version is not None:
    folder = parent / version
    return folder if folder.is_dir() else None
  if not parent.is_dir():
    return None
  versions = [
      p for p in parent.iterdir() if p.is_dir() and _VERSION.fullmatch(p.name)
  ]
  return max(versions, key=_version_key) if versions else None


def locate(name: str, data_dir: str | os.PathLike | None) -> pathlib.Path | None:
  """:func:`find` in ``data_dir``, or in tfds's data dirs when it is ``None``."""
  for root in file_utils.list_data_dirs(data_dir):
    folder = find(os.fspath(root), name)
    if folder is not None:
      return folder
  return None


def damaged(folder: pathlib.Path, what: str) -> errors.CorruptPreparedDataError:
  """The error for a damaged prepared ``folder``: names it, says to delete it."""
  return errors.CorruptPreparedDataError(
      f"prepared data set {folder} is damaged: {what}. Fix: delete the folder"
      f" {folder}; preparing again rebuilds it (fusionjax.data.load does so"
      " for mnist, fashion_mnist and kmnist when their IDX files are in the"
      " data dir; other data sets: `tfds build <name>"
      " --file_format=array_record`)."
  )


def check_features(
    feature: feature_pb2.Feature, path: pathlib.Path, where: str = ""
) -> None:
  """Checks ``feature`` and every feature nested in it against the whitelist.

  Raises:
    UnsafeFeatureError: a class outside :data:`FEATURE_CLASSES`, or one stored
      as another content than its own (names the class, feature and file).
  """
  name = feature.python_class_name
  content = feature.WhichOneof("content")
  if FEATURE_CLASSES.get(name) != content:
    short = sorted(n.rsplit(".", 1)[1] for n in FEATURE_CLASSES)
    raise errors.UnsafeFeatureError(
        f"{path}: feature {where or '(top level)'!r} is a {name!r} (stored as"
        f" {content}), which fusionjax does not read; it reads only the tfds"
        f" features {short}, so that loading data never imports code that a"
        " data folder names. Fix: prepare the data set again with those"
        " features, or, if you trust the folder, read it with tfds yourself"
        " and pass the arrays to fusionjax.data.from_arrays."
    )
  if content == "features_dict":
    for key, sub in feature.features_dict.features.items():
      check_features(sub, path, f"{where}/{key}" if where else key)


def read_info(folder: pathlib.Path) -> dataset_info_pb2.DatasetInfo:
  """``dataset_info.json`` of a prepared folder, its features checked.

  The features come from ``dataset_info.json`` if it holds them, else from
  ``features.json`` (where tfds would take them from); both are parsed as
  JSON protos, which imports nothing.

  Raises:
    UnsafeFeatureError: a feature outside :data:`FEATURE_CLASSES`.
    CorruptPreparedDataError: a missing or unreadable file.
  """
  info_path = folder / INFO_FILE
  try:
    info = json_format.Parse(info_path.read_text(), dataset_info_pb2.DatasetInfo())
  except (OSError, UnicodeDecodeError, json_format.ParseError) as e:
    raise damaged(folder, f"cannot read {info_path} ({e})") from e
  if info.HasField("features"):
    path = info_path
  else:
    path = folder / FEATURES_FILE
    try:
      value = json.loads(path.read_text())
      if not isinstance(value, dict):
        raise ValueError(f"a JSON {type(value).__name__}, not an object")
      json_format.ParseDict(value, info.features)
    except (OSError, ValueError, json_format.ParseError) as e:
      raise damaged(folder, f"cannot read {path} ({e})") from e
  check_features(info.features, path)
  return info


def data_source(folder: pathlib.Path, split: str) -> Any:
  """A tfds random-access source of ``split`` of the prepared ``folder``.

  Raises:
    UnsafeFeatureError, CorruptPreparedDataError: see :func:`read_info`.
    ValueError, KeyError, NotImplementedError: from tfds (unknown split, not
      array_record).
  """
  info = read_info(folder)
  registered = getattr(feature_lib.FeatureConnector, "_registered_features", {})
  unknown = sorted(set(FEATURE_CLASSES) - set(registered))
  if unknown:  # a tfds that renamed them: tfds would import, so stop here
    raise errors.UnsafeFeatureError(
        f"tensorflow_datasets {tfds.__version__} does not register {unknown};"
        " fusionjax reads prepared folders only with a tfds that does. Fix:"
        " install the tensorflow-datasets version in pyproject.toml."
    )
  builder = read_only_builder.ReadOnlyBuilder(os.fspath(folder), info_proto=info)
  return builder.as_data_source(split=split)


def code_data_source(
    name: str, split: str, data_dir: str | os.PathLike | None
) -> Any:
  """``tfds.data_source`` of a data set with no prepared folder in the data dir.

  Only for data sets that tfds has code for, named without a version and
  with a config the code knows: tfds then takes their features from the
  installed code, never from a folder (and says the data set is not
  prepared; under ``tfds.testing.mock_data`` it serves mock records).

  Raises:
    FileNotFoundError: any other name (tfds would read such a data set from
      a folder, and there is none).
  """
  base, config, version = parse_name(name)
  try:
    cls = tfds.builder_cls(base)
  except registered.DatasetNotFoundError:
    cls = None
  if (
      cls is None
      or version is not None
      or (config is not None and config not in cls.builder_configs)
  ):
    dirs = [os.fspath(d) for d in file_utils.list_data_dirs(data_dir)]
    raise FileNotFoundError(
        f"no prepared folder {name.split(':')[0]}/<version>/ holding"
        f" {INFO_FILE} in {dirs}"
    )
  return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
