"""Random-access sources: in-memory arrays behind ``len`` and ``[indices]``.

Every source fusionjax builds (digits, the IDX data sets, a prepared tfds data
set, arrays handed in by research code) ends up as an :class:`ArraySource`:
raw images and int32 labels held in memory, normalised on access. Small data
sets fit in memory, and numpy fancy indexing of an in-memory array is the
fastest loader there is.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple, Protocol, Sequence

import numpy as np

from fusionjax import _validate, errors


class Normalization(NamedTuple):
  """``image = (raw * scale - mean) / std``, per channel where mean/std are tuples.

  Attributes:
    scale: multiplies the raw values first (``1/255`` for uint8 pixels).
    mean: the mean of the scaled training pixels (a float, or one per channel).
    std: their standard deviation (a float, or one per channel).
  """

  scale: float = 1.0
  mean: float | tuple[float, ...] = 0.0
  std: float | tuple[float, ...] = 1.0


#: The standard normalisation of each data set fusionjax knows, by name.
NORMALIZATION: Mapping[str, Normalization] = {
    "digits": Normalization(1 / 16),
    "mnist": Normalization(1 / 255, 0.1307, 0.3081),
    "fashion_mnist": Normalization(1 / 255, 0.2860, 0.3530),
    "kmnist": Normalization(1 / 255, 0.1918, 0.3483),
    "cifar10": Normalization(
        1 / 255, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    "cifar100": Normalization(
        1 / 255, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
}


class Source(Protocol):
  """What the batch iterator needs of a source (``ArraySource`` has it all)."""

  name: str
  num_classes: int
  input_shape: tuple[int, ...]
  labels: np.ndarray

  def __len__(self) -> int:
    ...

  def __getitem__(self, index: Any) -> dict[str, np.ndarray]:
    ...


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource:
  """One split held in memory; ``source[i]`` gives ``dict(image, label)``.

  Build one with :func:`from_arrays`, :func:`load` or :func:`from_tfds` rather
  than directly. The raw arrays are kept as they came (uint8 pixels stay
  uint8, a quarter of the memory) and normalised on access.

  Attributes:
    name: the data set's name (``'mnist'``).
    split: the split's name (``'train'``, ``'validation'``, ``'test'``).
    raw: the raw inputs, ``[N, *input_shape]``.
    labels: int32 class indices in ``[0, num_classes)``, ``[N]``.
    num_classes: the number of classes ``C``.
    normalization: how ``raw`` becomes the float32 ``image``.

  Example:
    >>> src = from_arrays(np.zeros((4, 8, 8, 1), np.uint8), np.arange(4) % 2)
    >>> len(src), src[np.array([0, 3])]["image"].shape, src.num_classes
    (4, (2, 8, 8, 1), 2)
  """

  name: str
  split: str
  raw: np.ndarray
  labels: np.ndarray
  num_classes: int
  normalization: Normalization = Normalization()

  @property
  def input_shape(self) -> tuple[int, ...]:
    """The shape of one example's image, ``(H, W, C)`` for images."""
    return tuple(self.raw.shape[1:])

  def __len__(self) -> int:
    return self.raw.shape[0]

  def __getitem__(self, index: Any) -> dict[str, np.ndarray]:
    """``dict(image=float32 [..., *input_shape], label=int32 [...])``."""
    return {
        "image": self._normalize(self.raw[index]),
        "label": self.labels[index],
    }

  def arrays(self) -> dict[str, np.ndarray]:
    """The whole split, normalised: ``dict(image=[N, ...], label=[N])``.

    Computed once and cached; the arrays are read-only.
    """
    return self._arrays

  @functools.cached_property
  def _arrays(self) -> dict[str, np.ndarray]:
    out = {"image": self._normalize(self.raw), "label": self.labels.view()}
    for array in out.values():
      array.flags.writeable = False
    return out

  @functools.cached_property
  def _affine(self) -> tuple[np.ndarray, np.ndarray] | None:
    scale, mean, std = self.normalization
    a = np.asarray(scale, np.float64) / np.asarray(std, np.float64)
    b = -np.asarray(mean, np.float64) / np.asarray(std, np.float64)
    if np.all(a == 1) and np.all(b == 0):
      return None
    return a.astype(np.float32), b.astype(np.float32)

  def _normalize(self, raw: np.ndarray) -> np.ndarray:
    image = raw.astype(np.float32)  # always a fresh array
    if self._affine is not None:
      a, b = self._affine
      image *= a
      image += b
    return image

  def __repr__(self) -> str:
    return (
        f"ArraySource(name={self.name!r}, split={self.split!r},"
        f" n={len(self)}, input_shape={self.input_shape},"
        f" num_classes={self.num_classes})"
    )


class Splits(NamedTuple):
  """The three splits :func:`load` returns."""

  train: ArraySource
  validation: ArraySource
  test: ArraySource


def _normalization(value: Normalization | str | None) -> Normalization:
  if value is None:
    return Normalization()
  if isinstance(value, str):
    if value not in NORMALIZATION:
      raise KeyError(
          f"no standard normalisation for {value!r}; known:"
          f" {sorted(NORMALIZATION)}. Pass a Normalization(scale, mean, std)."
      )
    return NORMALIZATION[value]
  return Normalization(*value)


def check_labels(
    labels: Any, num_classes: int | None, *, what: str = "labels"
) -> tuple[np.ndarray, int]:
  """Validates class labels; returns them as int32 and the number of classes.

  Raises:
    LabelError: labels that are not integers, not 1-D, or outside
      ``[0, num_classes)``.
  """
  labels = np.asarray(labels)
  if num_classes is None and labels.ndim == 1 and labels.dtype.kind in "iu":
    num_classes = int(labels.max()) + 1 if labels.size else 0
  return _validate.class_labels(labels, num_classes, what), num_classes


def from_arrays(
    x: Any,
    y: Any,
    *,
    num_classes: int | None = None,
    name: str = "arrays",
    split: str = "train",
    normalization: Normalization | str | None = None,
) -> ArraySource:
  """A source over numpy arrays handed in by research code.

  Args:
    x: inputs ``[N, ...]`` (images ``[N, H, W, C]``, or features ``[N, D]``).
    y: integer class labels ``[N]``.
    num_classes: ``C``; ``max(y) + 1`` when not given.
    name: a name for the data set.
    split: a name for the split.
    normalization: ``None`` (inputs used as they are, cast to float32), the
      name of a data set in :data:`NORMALIZATION` (``'mnist'``), or a
      :class:`Normalization`.

  Returns:
    An :class:`ArraySource` (the arrays are not copied).

  Raises:
    EmptySplitError: ``x`` has no examples.
    DataMismatchError: ``x`` and ``y`` have different numbers of examples.
    LabelError: labels that are not integers in ``[0, num_classes)``.

  Example:
    >>> src = from_arrays(x_uint8, y, normalization="mnist")  # doctest: +SKIP
  """
  x = np.asarray(x)
  y = np.asarray(y)
  if x.ndim == 0 or x.shape[0] == 0:
    raise errors.EmptySplitError(
        f"{name}/{split}: the inputs have shape {x.shape}, no examples. Fix:"
        " pass a non-empty array [N, ...]."
    )
  if y.ndim != 1 or y.shape[0] != x.shape[0]:
    raise errors.DataMismatchError(
        f"{name}/{split}: {x.shape[0]} inputs {x.shape} but labels of shape"
        f" {y.shape}. Fix: pass one label per input (both from the same"
        " split)."
    )
  labels, num_classes = check_labels(y, num_classes, what=f"{name}/{split} labels")
  return ArraySource(
      name=name,
      split=split,
      raw=x,
      labels=labels,
      num_classes=num_classes,
      normalization=_normalization(normalization),
  )


def subset(
    source: ArraySource, indices: Any, *, split: str | None = None
) -> ArraySource:
  """The examples of ``source`` at ``indices`` (a K-fold fold, a filter...).

  Raises:
    EmptySplitError: ``indices`` is empty.
  """
  indices = np.asarray(indices)
  if indices.size == 0:
    raise errors.EmptySplitError(
        f"subset of {source.name}/{source.split} with no indices. Fix: check"
        " the fold or the filter that produced them."
    )
  return dataclasses.replace(
      source,
      split=split or source.split,
      raw=source.raw[indices],
      labels=source.labels[indices],
  )


def stratified_split(
    labels: np.ndarray, take: int, seed: int | np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
  """Splits ``range(N)`` into ``take`` indices and the rest, stratified by label.

  Each class contributes ``take * n_c / N`` examples, rounded by largest
  remainder so that the total is exactly ``take``; which examples is drawn
  from ``seed``.

  Returns:
    ``(taken, rest)``, both sorted.
  """
  rng = np.random.default_rng(seed)
  labels = np.asarray(labels)
  classes, counts = np.unique(labels, return_counts=True)
  quota = counts * take / labels.size
  base = np.floor(quota).astype(np.int64)
  order = np.argsort(-(quota - base), kind="stable")
  base[order[: take - int(base.sum())]] += 1
  taken = []
  for c, q in zip(classes, base):
    members = np.flatnonzero(labels == c)
    taken.append(rng.choice(members, q, replace=False))
  mask = np.zeros(labels.size, bool)
  mask[np.concatenate(taken)] = True
  return np.flatnonzero(mask), np.flatnonzero(~mask)


def _split_sizes(
    n: int, val_size: int | None, val_fraction: float | None, where: str
) -> int:
  if val_size is not None and val_fraction is not None:
    raise ValueError("pass val_size or val_fraction, not both")
  if val_size is None:
    frac = 0.1 if val_fraction is None else val_fraction
    val_size = int(round(n * frac))
    asked = f"val_fraction={frac}"
  else:
    asked = f"val_size={val_size}"
  if val_size <= 0 or val_size >= n:
    part = "validation" if val_size <= 0 else "train"
    raise errors.EmptySplitError(
        f"{where}: {asked} of {n} training examples leaves the {part} split"
        f" empty. Fix: 0 < val_fraction < 1, or 0 < val_size < {n}."
    )
  return val_size


def split_validation(
    train: ArraySource,
    *,
    val_size: int | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
) -> tuple[ArraySource, ArraySource]:
  """Carves a stratified validation split out of ``train`` (fixed by ``seed``).

  Returns:
    ``(train, validation)``.
  """
  where = f"{train.name}/{train.split}"
  size = _split_sizes(len(train), val_size, val_fraction, where)
  val_idx, train_idx = stratified_split(train.labels, size, seed)
  return (
      subset(train, train_idx, split="train"),
      subset(train, val_idx, split="validation"),
  )


#: Digits has no official test split: this many examples, chosen stratified
#: with a fixed seed (independent of ``load``'s ``seed``), are the test split.
DIGITS_TEST_SIZE = 360
_DIGITS_TEST_SEED = 20_250_101


def digits(
    *,
    val_size: int | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
) -> Splits:
  """scikit-learn's 8x8 digits (embedded, no download), as three splits.

  1797 examples, 10 classes, images ``[8, 8, 1]`` scaled by ``1/16``. The test
  split is always the same 360 examples (stratified, fixed seed); validation
  is carved from the remaining 1437 with ``seed``. With the default
  ``val_fraction=0.1``: train 1293, validation 144, test 360.

  Example:
    >>> train, val, test = digits()
    >>> len(train), len(val), len(test)
    (1293, 144, 360)
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  bunch = datasets.load_digits()
  raw = bunch.images.astype(np.uint8)[..., None]  # values 0..16
  labels = bunch.target
  test_idx, rest = stratified_split(labels, DIGITS_TEST_SIZE, _DIGITS_TEST_SEED)
  full = from_arrays(
      raw[rest], labels[rest], num_classes=10, name="digits",
      normalization="digits",
  )
  test = from_arrays(
      raw[test_idx], labels[test_idx], num_classes=10, name="digits",
      split="test", normalization="digits",
  )
  train, validation = split_validation(
      full, val_size=val_size, val_fraction=val_fraction, seed=seed
  )
  return Splits(train, validation, test)
