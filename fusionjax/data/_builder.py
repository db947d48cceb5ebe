"""A TensorFlow-free tfds builder for MNIST, Fashion-MNIST and KMNIST.

The stock tfds ``mnist`` builder needs TensorFlow to prepare (its ``Image``
feature encodes PNGs with TF). This builder reads the four IDX ``.gz`` files
with numpy and writes ``array_record`` files through tfds, storing images as a
raw ``Tensor(shape=(28, 28, 1), dtype=uint8)``, so that it prepares and reads
(``tfds.data_source``, random access) with no TensorFlow installed.

Where the four files come from, in order:

1. a folder that holds them, given to the builder (``source_dirs``; ``load``
   passes ``<data_dir>/<name>`` and ``<data_dir>``);
2. tfds's manual dir (``<data_dir>/downloads/manual[/<name>]``);
3. otherwise, only when ``download=True`` is passed, tfds's download manager
   fetches them from the standard URLs. By default nothing touches the
   network: absent files raise ``DataNotFoundError`` at once, naming the
   folders searched, the files needed and the fix.

With ``verify=True`` (the default) every file must be the published one: the
sha256 of the ``.gz`` (the values tfds registers for its own builders) or, for
MNIST, the well-known md5 of the decompressed bytes (so re-compressed copies
pass). Pass ``verify=False`` for IDX files of your own.

A failed prepare leaves nothing behind: tfds writes into an ``incomplete.*``
folder, renames it when done, and removes it on failure (``prepare_idx`` also
removes it on KeyboardInterrupt, and removes one left by a killed process at
the next preparation); and every file is read and checked before the first
record is written.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from typing import Iterator, Mapping, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from fusionjax import errors
from fusionjax.data import _idx
from fusionjax.data import _sources

#: The builder's tfds name: read a prepared data set with
#: ``tfds.data_source('fusionjax_idx/mnist', data_dir=...)``.
BUILDER_NAME = "fusionjax_idx"

#: The four files of every IDX data set, by role.
FILES: Mapping[str, str] = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


@dataclasses.dataclass(eq=False)
class IdxConfig(tfds.core.BuilderConfig):
  """One IDX data set: where it is published and what its files hash to.

  Attributes:
    title: the data set's name for people (``'Fashion-MNIST'``).
    url: the folder URL the four files are downloaded from.
    sha256: the sha256 of each published ``.gz`` file, by role.
    md5: the md5 of each decompressed file, by role, where known.
    class_names: the names of the 10 classes.
    homepage: where the data set is described.
  """

  title: str = ""
  url: str = ""
  sha256: Mapping[str, str] = dataclasses.field(default_factory=dict)
  md5: Mapping[str, str] = dataclasses.field(default_factory=dict)
  class_names: Sequence[str] = ()
  homepage: str = ""


CONFIGS = (
    IdxConfig(
        name="mnist",
        title="MNIST",
        description="Handwritten digits 0-9, 28x28 grey.",
        url="https://storage.googleapis.com/cvdf-datasets/mnist/",
        sha256={
            "train_images": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train_labels": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "test_images": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "test_labels": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        md5={
            "train_images": "6bbc9ace898e44ae57da46a324031adb",
            "train_labels": "a25bea736e30d166cdddb491f175f624",
            "test_images": "2646ac647ad5339dbf082846283269ea",
            "test_labels": "27ae3e4e09519cfbb04c329615203637",
        },
        class_names=tuple(str(i) for i in range(10)),
        homepage="http://yann.lecun.com/exdb/mnist/",
    ),
    IdxConfig(
        name="fashion_mnist",
        title="Fashion-MNIST",
        description="Zalando article images in 10 classes, 28x28 grey.",
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        sha256={
            "train_images": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train_labels": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "test_images": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "test_labels": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
        class_names=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
            "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    ),
    IdxConfig(
        name="kmnist",
        title="KMNIST",
        description="Kuzushiji-MNIST: 10 cursive hiragana, 28x28 grey.",
        url="http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
        sha256={
            "train_images": "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
            "train_labels": "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
            "test_images": "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
            "test_labels": "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
        },
        class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        homepage="https://github.com/rois-codh/kmnist",
    ),
)

#: The names of the IDX data sets this builder prepares.
IDX_DATASETS = tuple(config.name for config in CONFIGS)

_IMAGE_SHAPE = (28, 28)


def _missing_message(
    config: IdxConfig, searched: Sequence[pathlib.Path], partial: dict
) -> str:
  """Names exactly which files are missing where, and how to supply them."""
  lines = [f"{config.title} files not found."]
  if partial:
    for folder, present in partial.items():
      missing = [f for f in FILES.values() if f not in present]
      lines.append(f"  {folder} has {sorted(present)} but lacks {missing}.")
  lines.append(f"  Needed: {list(FILES.values())}.")
  lines.append(
      "  Searched: " + (", ".join(str(p) for p in searched) or "(no folder)")
  )
  lines.append(
      "Fix: put the four files in <data_dir>/"
      f"{config.name}/ and pass data_dir=<data_dir> (--data-dir on the command"
      " line, or set FUSIONJAX_DATA), or pass download=True to fetch them"
      f" from {config.url} (nothing is downloaded unless asked)."
  )
  return "\n".join(lines)


def find_files(
    folders: Sequence[pathlib.Path],
) -> tuple[dict[str, pathlib.Path] | None, dict[pathlib.Path, set[str]]]:
  """The four files, by role, from the first folder holding all of them.

  Returns:
    ``(paths or None, {folder: the files it holds} for folders holding some)``.
  """
  partial = {}
  for folder in folders:
    present = {f for f in FILES.values() if (folder / f).is_file()}
    if len(present) == len(FILES):
      return {role: folder / f for role, f in FILES.items()}, partial
    if present:
      partial[folder] = present
  return None, partial


def _check_file(
    config: IdxConfig, role: str, path: pathlib.Path, verify: bool
) -> bytes:
  """Reads one file; checks it against the published checksums if ``verify``."""
  data = path.read_bytes()
  sha256 = hashlib.sha256(data).hexdigest()
  raw = _idx.decompress(data, source=str(path))
  if verify and sha256 != config.sha256.get(role):
    md5 = hashlib.md5(raw).hexdigest()
    if md5 != config.md5.get(role):
      expected = f"sha256 {config.sha256.get(role)} of the .gz"
      if role in config.md5:
        expected += f" or md5 {config.md5[role]} of the decompressed bytes"
      raise errors.CorruptFileError(
          f"{path} is not the published {config.title} file: its .gz has"
          f" sha256 {sha256} (decompressed md5 {md5}), expected {expected}."
          f" Fix: fetch it again from {config.url}{FILES[role]}, or pass"
          " verify=False for IDX files of your own."
      )
  return raw


def read_split(
    config: IdxConfig,
    images_path: pathlib.Path,
    labels_path: pathlib.Path,
    split: str,
    *,
    verify: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
  """Reads and checks one split's image and label files.

  Returns:
    ``(images uint8 [N, 28, 28], labels uint8 [N])``.

  Raises:
    CorruptFileError: a file that is not a 28x28 uint8 image / uint8 label IDX
      file, or (with ``verify``) not the published one.
    DataMismatchError: different numbers of images and labels.
    EmptySplitError: no examples.
    LabelError: labels outside ``[0, 10)``.
  """
  arrays = []
  for role, path, shape in (
      (f"{split}_images", images_path, (None, *_IMAGE_SHAPE)),
      (f"{split}_labels", labels_path, (None,)),
  ):
    raw = _check_file(config, role, path, verify)
    array = _idx.parse_idx(raw, source=str(path), shape=shape)
    if array.dtype != np.uint8:
      raise errors.CorruptFileError(
          f"{path}: holds {array.dtype}, {config.title} files hold uint8."
          " Fix: fetch the file again."
      )
    arrays.append(array)
  images, labels = arrays
  if images.shape[0] != labels.shape[0]:
    raise errors.DataMismatchError(
        f"{config.title} {split}: {images.shape[0]} images in {images_path}"
        f" but {labels.shape[0]} labels in {labels_path}. Fix: make sure"
        " both files belong to the same split (and are complete)."
    )
  if images.shape[0] == 0:
    raise errors.EmptySplitError(
        f"{config.title} {split}: {images_path} and {labels_path} hold no"
        " examples. Fix: fetch the files again."
    )
  _sources.check_labels(
      labels, len(config.class_names), what=f"{config.title} {split} labels"
  )
  return images, labels


class IdxImages(tfds.core.GeneratorBasedBuilder):
  """MNIST, Fashion-MNIST and KMNIST from their IDX files, without TensorFlow.

  Features: ``image`` a ``Tensor`` uint8 ``[28, 28, 1]``, ``label`` a
  ``ClassLabel`` of 10 classes. Splits ``train`` and ``test``.

  Example:
    >>> builder = IdxImages(config="mnist", data_dir=cache,
    ...                     source_dirs=["../shared/data/mnist"],
    ...                     file_format="array_record")  # doctest: +SKIP
    >>> builder.download_and_prepare()  # doctest: +SKIP
    >>> train = tfds.data_source("fusionjax_idx/mnist", split="train",
    ...                          data_dir=cache)  # doctest: +SKIP
  """

  name = BUILDER_NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "IDX files read with numpy, stored as raw uint8."}
  BUILDER_CONFIGS = list(CONFIGS)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put the four IDX .gz files "
      f"({', '.join(FILES.values())}) in <manual_dir>/<config name>/ or in"
      " <manual_dir> itself."
  )

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds finds this through importlib_resources, which it does not install
    # (ModuleNotFoundError on prepare); this module's file is the answer.
    # No checksums.tsv next to it: the files are checked in _check_file.
    return epath.Path(__file__)

  def __init__(
      self,
      *,
      source_dirs: Sequence[str | os.PathLike] = (),
      verify: bool = True,
      download: bool = False,
      **kwargs,
  ):
    """Args:
      source_dirs: folders to look for the four files in, before the manual
        dir and the download.
      verify: check the files against the published checksums.
      download: fetch missing files from the standard URLs (``False``, the
        default: never touch the network).
      **kwargs: tfds's (``config``, ``data_dir``, ``file_format``...).
    """
    self._source_dirs = [pathlib.Path(d) for d in source_dirs]
    self._verify = verify
    self._download = download
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=config.description,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(
                shape=(*_IMAGE_SHAPE, 1), dtype=np.uint8,
                encoding=tfds.features.Encoding.BYTES,
            ),
            "label": tfds.features.ClassLabel(names=list(config.class_names)),
        }),
        supervised_keys=("image", "label"),
        homepage=config.homepage,
        # Keep the IDX files' order (no hash shuffle): record i is example i.
        disable_shuffling=True,
    )

  def search_folders(
      self, manual_dir: str | os.PathLike | None = None
  ) -> list[pathlib.Path]:
    """Where the four files are looked for: ``source_dirs``, then the manual dir.

    ``<manual_dir>/<name>`` and ``<manual_dir>`` count only if the manual dir
    is a folder.
    """
    folders = list(self._source_dirs)
    if manual_dir is not None and pathlib.Path(manual_dir).is_dir():
      manual = pathlib.Path(manual_dir)
      folders += [manual / self.builder_config.name, manual]
    return folders

  def local_files(
      self, manual_dir: str | os.PathLike | None = None
  ) -> dict[str, pathlib.Path]:
    """The four files on disk, by role; never downloads.

    Raises:
      DataNotFoundError: they are not all in one of :meth:`search_folders`;
        the message names the folders searched, the files needed, and the fix.
    """
    folders = self.search_folders(manual_dir)
    paths, partial = find_files(folders)
    if paths is None:
      raise errors.DataNotFoundError(
          _missing_message(self.builder_config, folders, partial)
      )
    return paths

  def _locate(self, dl_manager) -> dict[str, pathlib.Path]:
    """Finds the four files on disk, or downloads them (only if ``download``)."""
    config = self.builder_config
    try:
      manual = dl_manager.manual_dir
    except (AssertionError, ValueError):  # no manual dir: nothing to add
      manual = None
    folders = self.search_folders(manual)
    paths, partial = find_files(folders)
    if paths is not None:
      return paths
    if not self._download:
      raise errors.DataNotFoundError(_missing_message(config, folders, partial))
    urls = {role: config.url + f for role, f in FILES.items()}
    try:
      paths = dl_manager.download(urls)
    except Exception as e:  # offline, proxy, HTTP error: say what to do.
      raise errors.DataNotFoundError(
          _missing_message(config, folders, partial)
          + f"\nDownloading them failed: {type(e).__name__}: {e}"
      ) from e
    return {role: pathlib.Path(os.fspath(p)) for role, p in paths.items()}

  def _split_generators(self, dl_manager):
    paths = self._locate(dl_manager)
    # Read and check everything before the first record is written.
    splits = {
        split: read_split(
            self.builder_config,
            paths[f"{split}_images"],
            paths[f"{split}_labels"],
            split,
            verify=self._verify,
        )
        for split in ("train", "test")
    }
    return {
        split: self._generate_examples(images, labels)
        for split, (images, labels) in splits.items()
    }

  def _generate_examples(
      self, images: np.ndarray, labels: np.ndarray
  ) -> Iterator[tuple[int, dict]]:
    for i in range(images.shape[0]):
      yield i, {"image": images[i, :, :, None], "label": int(labels[i])}
