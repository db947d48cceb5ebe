"""``load(name)``: train / validation / test sources of a data set, by name.

* ``'digits'``: scikit-learn's embedded 8x8 digits (no files needed).
* ``'mnist'``, ``'fashion_mnist'``, ``'kmnist'``: the four IDX ``.gz`` files,
  prepared to ``array_record`` by fusionjax's own tfds builder
  (:class:`~fusionjax.data.IdxImages`) and read with ``tfds.data_source``.
* any other name: a tfds data set already prepared (as ``array_record``) in
  the data dir, e.g. ``'cifar10'``.

Every split is read once into memory and served by numpy indexing. Nothing
touches the network unless ``download=True`` is passed. A prepared folder is
opened through :mod:`fusionjax.data._prepared`, which reads its feature
description itself and accepts only a whitelist of tfds feature classes, so
loading data never imports code that a data folder names.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
from typing import Any, Callable
import warnings

import numpy as np

from fusionjax import errors
from fusionjax.data import _sources

#: Environment variable naming the data dir (same as ``--data-dir``).
DATA_ENV = "FUSIONJAX_DATA"
#: Environment variable naming where prepared files go when the data dir is
#: read-only.
CACHE_ENV = "FUSIONJAX_CACHE"
_DEFAULT_DIR = pathlib.Path("~/.cache/fusionjax")


def _tfds():
  """``(tensorflow_datasets, fusionjax's IDX builder module)``, imported on first use.

  tfds takes about 0.2 s to import, which ``import fusionjax``, digits and
  training never need; importing ``_builder`` registers ``fusionjax_idx``.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from fusionjax.data import _builder  # pylint: disable=g-import-not-at-top
  return tfds, _builder


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """The data dir: ``data_dir`` if given, else ``$FUSIONJAX_DATA``, else a default.

  The default, ``~/.cache/fusionjax/data``, is created when missing (files are
  downloaded there). A folder that was named (argument or environment
  variable) must exist: a typo should not start a download elsewhere.

  Args:
    data_dir: the value of ``--data-dir``, or ``None``.

  Returns:
    The absolute path of the data dir.

  Raises:
    DataNotFoundError: the named folder does not exist.

  Example:
    >>> resolve_data_dir("../shared/data")  # doctest: +SKIP
    PosixPath('/work/shared/data')
  """
  if data_dir is not None:
    origin = "--data-dir / data_dir"
  elif os.environ.get(DATA_ENV):
    data_dir, origin = os.environ[DATA_ENV], f"${DATA_ENV}"
  else:
    path = (_DEFAULT_DIR / "data").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()
  path = pathlib.Path(data_dir).expanduser()
  if not path.is_dir():
    raise errors.DataNotFoundError(
        f"data dir {path} (from {origin}) does not exist"
        f"{' (it is a file)' if path.exists() else ''}. Fix: create it, or"
        f" pass --data-dir (or set {DATA_ENV}) to the folder that holds the"
        " data sets (e.g. <dir>/mnist/train-images-idx3-ubyte.gz)."
    )
  return path.resolve()


def _writable(folder: pathlib.Path) -> bool:
  # Mode bits too: root passes os.access everywhere, but a folder without
  # write bits (a shared, read-only data set) is not ours to write into.
  return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def _cache_dir(data_dir: pathlib.Path, cache_dir: Any) -> pathlib.Path:
  """Where prepared files go: ``cache_dir``, else the data dir if writable.

  A read-only data dir gets a folder of its own under ``$FUSIONJAX_CACHE`` (or
  ``~/.cache/fusionjax/prepared``), named after its path, so that files
  prepared from one folder are never mistaken for another's.
  """
  if cache_dir is not None:
    path = pathlib.Path(cache_dir).expanduser()
  elif _writable(data_dir):
    path = data_dir
  else:
    root = os.environ.get(CACHE_ENV) or _DEFAULT_DIR / "prepared"
    tag = hashlib.sha1(str(data_dir).encode()).hexdigest()[:12]
    path = pathlib.Path(root).expanduser() / f"{data_dir.name}-{tag}"
  path.mkdir(parents=True, exist_ok=True)
  return path.resolve()


#: The lock file held while a data set is prepared, in its folder.
_LOCK_FILE = ".prepare.lock"
#: How tfds names the folder it writes into before renaming it.
_INCOMPLETE = "incomplete.*"


def _lock(file: Any) -> bool:
  """Takes an exclusive lock on the open ``file`` (waits); ``False`` if impossible."""
  try:
    import fcntl  # pylint: disable=g-import-not-at-top
    fcntl.flock(file, fcntl.LOCK_EX)
  except (ImportError, OSError):  # not POSIX, or a file system without locks
    return False
  return True


def _remove_incomplete(dataset_dir: pathlib.Path) -> list[pathlib.Path]:
  """Removes the ``incomplete.*`` folders in ``dataset_dir``; returns them."""
  found = sorted(p for p in dataset_dir.glob(_INCOMPLETE) if p.is_dir())
  for path in found:
    shutil.rmtree(path, ignore_errors=True)
  return found


def _prepare_locked(dataset_dir: pathlib.Path, prepare: Callable[[], Any]) -> None:
  """Runs ``prepare`` holding the lock of ``dataset_dir``, leaving no temp folder.

  tfds prepares into ``<dataset_dir>/incomplete.XXXXXX_<version>`` and renames
  it when done. While the lock is held no other preparation of this data set
  runs, so an ``incomplete.*`` folder found then is the leftover of one that
  was killed: it is removed, with a warning. If ``prepare`` raises (a bad
  file, KeyboardInterrupt...), the folder it was writing is removed too.
  """
  dataset_dir.mkdir(parents=True, exist_ok=True)
  with open(dataset_dir / _LOCK_FILE, "a") as lock:
    locked = _lock(lock)
    if locked:
      stale = _remove_incomplete(dataset_dir)
      if stale:
        warnings.warn(
            f"removed {len(stale)} folder(s) left by an interrupted"
            f" preparation: {[str(p) for p in stale]}; preparing again.",
            stacklevel=3,
        )
    try:
      prepare()
    except BaseException:
      if locked:
        _remove_incomplete(dataset_dir)
      raise


def prepare_idx(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    verify: bool = True,
    download: bool = False,
) -> pathlib.Path:
  """Prepares MNIST, Fashion-MNIST or KMNIST to ``array_record`` (once).

  Looks for the four IDX files in ``<data_dir>/<name>/``, ``<data_dir>/`` and
  ``<data_dir>/downloads/manual[/<name>]``; downloads them only when asked
  (``download=True``). Does nothing if the data set is already prepared in
  ``cache_dir`` (delete ``<cache_dir>/fusionjax_idx/<name>`` to prepare it
  again from other files). An interrupted preparation leaves no
  ``incomplete.*`` folder behind, and one left by a killed process is removed
  (with a warning) by the next preparation.

  Args:
    name: ``'mnist'``, ``'fashion_mnist'`` or ``'kmnist'``.
    data_dir: the data dir (see :func:`resolve_data_dir`).
    cache_dir: where the prepared files go; when ``None``, the data dir if it
      is writable, else a folder named after it under ``$FUSIONJAX_CACHE`` (or
      ``~/.cache/fusionjax/prepared``).
    verify: check the files against the published checksums (pass ``False``
      for IDX files of your own).
    download: fetch missing files from the standard URLs; ``False`` (the
      default): never touch the network, and fail at once (naming the folders
      searched and the files needed) when the files are absent.

  Returns:
    The tfds data dir holding ``fusionjax_idx/<name>/``; read it with
    ``tfds.data_source(f'fusionjax_idx/{name}', data_dir=...)``.

  Raises:
    DataNotFoundError: the files are not there (and cannot be downloaded).
    CorruptFileError, DataMismatchError, LabelError, EmptySplitError: bad files;
      nothing is left half-written, so fix them and call again.
  """
  tfds, _builder = _tfds()
  if name not in _builder.IDX_DATASETS:
    raise errors.DataNotFoundError(
        f"no IDX data set {name!r}; known: {list(_builder.IDX_DATASETS)}."
    )
  root = resolve_data_dir(data_dir)
  cache = _cache_dir(root, cache_dir)
  builder = _builder.IdxImages(
      config=name,
      data_dir=cache,
      source_dirs=[root / name, root],
      verify=verify,
      download=download,
      file_format="array_record",
  )
  manual_dir = root / "downloads" / "manual"
  if not download and not builder.data_path.exists():
    builder.local_files(manual_dir)  # absent: fail now, before tfds writes
  config = tfds.download.DownloadConfig(
      manual_dir=os.fspath(manual_dir), try_download_gcs=False
  )
  _prepare_locked(
      cache / _builder.BUILDER_NAME / name,
      lambda: builder.download_and_prepare(download_config=config),
  )
  return cache


def _records(ds: Any, start: int, stop: int) -> list[dict]:
  keys = list(range(start, stop))
  try:
    return ds.__getitems__(keys)  # batched reads: ~8x faster than ds[i]
  except TypeError:
    # tfds.testing.mock_data sets __getitems__ on a MagicMock without `self`,
    # so it raises TypeError; read one record at a time instead.
    return [ds[i] for i in keys]


def _read_all(
    ds: Any, keys: tuple[str, str], chunk: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
  """Reads every record of a tfds data source into two arrays."""
  image_key, label_key = keys
  n = len(ds)
  images = labels = None
  for start in range(0, n, chunk):
    records = _records(ds, start, min(start + chunk, n))
    x = np.stack([np.asarray(r[image_key]) for r in records])
    y = np.asarray([r[label_key] for r in records])
    if images is None:
      images = np.empty((n, *x.shape[1:]), x.dtype)
      labels = np.empty((n,), y.dtype)
    images[start : start + len(records)] = x
    labels[start : start + len(records)] = y
  return images, labels


def from_tfds(
    name: str,
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    *,
    normalization: _sources.Normalization | str | None = None,
    display_name: str | None = None,
) -> _sources.ArraySource:
  """A split of a tfds data set already prepared in ``data_dir``, in memory.

  Opens the prepared folder (random access, no TensorFlow; the data set must
  have been prepared with ``file_format='array_record'``) after checking its
  feature description against a whitelist, and reads every record once. A
  data set that tfds has code for but that is not prepared there goes to
  ``tfds.data_source`` (features from the installed code), which then says
  it is not prepared.

  Args:
    name: the tfds name, optionally with config and version
      (``'cifar10'``, ``'fusionjax_idx/mnist:1.0.0'``).
    data_dir: the tfds data dir; ``None``: ``$FUSIONJAX_DATA`` if set, else
      tfds's default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
    split: a tfds split (``'train'``, ``'test'``, ``'train[:90%]'``).
    normalization: ``None``: the standard one for ``name`` if known
      (:data:`NORMALIZATION`), else ``/255`` for uint8 images; or a name or a
      :class:`Normalization`.
    display_name: the source's ``name`` (default: the data set's name).

  Returns:
    An :class:`ArraySource` of ``dict(image, label)`` (the data set's
    ``supervised_keys``, else ``'image'`` and ``'label'``).

  Raises:
    DataNotFoundError: unknown name, or not prepared for random access there.
    EmptySplitError: the split has no examples.
    UnsafeFeatureError: the prepared folder names a feature class outside
      the whitelist (:data:`fusionjax.data._prepared.FEATURE_CLASSES`);
      nothing it names is imported.
    CorruptPreparedDataError: a damaged record file or metadata file; the
      message names the folder to delete (preparing again rebuilds it).

  Example:
    >>> test = from_tfds("cifar10", "~/tensorflow_datasets", "test")  # doctest: +SKIP
  """
  _, _builder = _tfds()
  from fusionjax.data import _prepared  # pylint: disable=g-import-not-at-top
  if data_dir is None and os.environ.get(DATA_ENV):
    data_dir = os.environ[DATA_ENV]
  if data_dir is not None:
    data_dir = os.fspath(pathlib.Path(data_dir).expanduser())
  try:
    folder = _prepared.locate(name, data_dir)
    if folder is not None:  # features checked against the whitelist first
      ds = _prepared.data_source(folder, split)
    else:
      ds = _prepared.code_data_source(name, split, data_dir)
  except errors.FusionJaxError:
    raise
  except (
      NotImplementedError, ValueError, KeyError, AssertionError, OSError
  ) as e:
    raise errors.DataNotFoundError(
        f"tfds data set {name!r} split {split!r} cannot be opened for random"
        f" access in data dir {data_dir or '(tfds default)'}: {e}\nFix: pass"
        f" --data-dir (or set {DATA_ENV}) to the tfds data dir that holds"
        f" {name}/, prepared with file_format='array_record' (e.g."
        f" `tfds build {name} --file_format=array_record` where TensorFlow"
        " is installed)."
    ) from e
  info = ds.dataset_info
  keys = tuple(info.supervised_keys or ("image", "label"))[:2]
  base = info.name
  if base == _builder.BUILDER_NAME:  # fusionjax_idx/mnist is 'mnist'
    base = info.config_name
  if len(ds) == 0:
    raise errors.EmptySplitError(
        f"tfds data set {name!r} split {split!r} has no examples. Fix: check"
        " the split name or slice."
    )
  try:
    images, labels = _read_all(ds, keys)
  except (RuntimeError, ValueError, OSError) as e:  # Riegeli, a cut record...
    if isinstance(e, errors.FusionJaxError):
      raise
    raise _prepared.damaged(
        folder or pathlib.Path(os.fspath(info.data_dir)),
        f"reading split {split!r} failed ({type(e).__name__}: {e})",
    ) from e
  if normalization is None:
    if base in _sources.NORMALIZATION:
      normalization = base
    elif images.dtype == np.uint8:
      normalization = _sources.Normalization(1 / 255)
  label_feature = info.features[keys[1]] if info.features else None
  num_classes = getattr(label_feature, "num_classes", None)
  return _sources.from_arrays(
      images,
      labels,
      num_classes=num_classes,
      name=display_name or base,
      split=split,
      normalization=normalization,
  )


def load(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    val_size: int | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    verify: bool = True,
    download: bool = False,
) -> _sources.Splits:
  """Train, validation and test sources of a data set, by name.

  The validation split is carved from the training split, stratified, fixed
  by ``seed`` (default ``val_fraction=0.1``); a prepared tfds data set with
  its own ``'validation'`` split uses that one unless ``val_size`` or
  ``val_fraction`` is given. The test split never depends on ``seed``. Sizes with
  the defaults: digits 1293 / 144 / 360; MNIST, Fashion-MNIST and KMNIST
  54000 / 6000 / 10000.

  Args:
    name: ``'digits'``, ``'mnist'``, ``'fashion_mnist'``, ``'kmnist'``, or the
      name of a tfds data set prepared in ``data_dir``.
    data_dir: ``--data-dir``; see :func:`resolve_data_dir`. Not needed for
      digits.
    val_size: the number of validation examples (or give ``val_fraction``).
    val_fraction: the fraction of the training split used for validation.
    seed: chooses the validation examples.
    cache_dir: where IDX data sets are prepared (see :func:`prepare_idx`).
    verify: check IDX files against the published checksums.
    download: fetch missing IDX files from the standard URLs. Off by default:
      with the files absent, ``load`` fails at once with a
      ``DataNotFoundError`` naming where it looked and what it needs.

  Returns:
    ``Splits(train, validation, test)``, each an :class:`ArraySource`.

  Example:
    >>> train, val, test = load("digits")
    >>> train[np.arange(4)]["image"].shape, train.num_classes
    ((4, 8, 8, 1), 10)
  """
  if name == "digits":
    return _sources.digits(val_size=val_size, val_fraction=val_fraction, seed=seed)
  _, _builder = _tfds()
  own_validation = name not in _builder.IDX_DATASETS and (
      val_size is None and val_fraction is None
  )
  if name in _builder.IDX_DATASETS:
    data_dir = prepare_idx(
        name, data_dir, cache_dir=cache_dir, verify=verify, download=download
    )
    tfds_name = f"{_builder.BUILDER_NAME}/{name}"
  else:
    tfds_name = name

  def read(split):
    return from_tfds(
        tfds_name, data_dir, split,
        normalization=name if name in _sources.NORMALIZATION else None,
        display_name=name,
    )

  train, test = read("train"), read("test")
  validation = None
  if own_validation:
    try:
      validation = read("validation")
    except errors.DataNotFoundError:  # no such split: carve one from train
      pass
  if validation is None:
    train, validation = _sources.split_validation(
        train, val_size=val_size, val_fraction=val_fraction, seed=seed
    )
  return _sources.Splits(train, validation, test)
