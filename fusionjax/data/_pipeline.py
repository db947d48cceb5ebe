"""The one data pipeline: grain over a random-access source, batches ``{'x', 'y', 'mask'}``.

Every batch of fusionjax comes from here: :func:`fusionjax.train.fit`,
:func:`~fusionjax.data.batches` and the experiments. A batch is a pure
function of its global index ``i`` (epoch ``i // steps_per_epoch``):

* shared batches: epoch ``e`` visits the examples in the order
  ``numpy.random.default_rng([*seed, e]).permutation(n)``;
* per-member batches (``indices`` with one row per member, e.g. a
  bootstrap or the folds of cross-fitting): member ``m`` visits its own row
  in the order ``default_rng([*seed, e, m]).permutation(n_m)``; rows may
  differ in length, an epoch has ``max(n_m)`` positions and a shorter row's
  surplus positions are masked;
* without ``drop_last`` the last batch of an epoch is filled with examples
  from the start of that epoch's order and ``mask`` is False on those rows.

grain (``grain.MapDataset`` -> ``IterDataset``) gives the iterator, its
background prefetch threads and its checkpointable state
(``{'next_index': i}``: ``grain.checkpoint.CheckpointSave`` in an orbax
Composite), so a resumed run continues the exact data order. Sources are read
lazily: only the examples of the batch being built are read.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from fusionjax import errors


class Pipeline(NamedTuple):
  """What :func:`pipeline` returns.

  Attributes:
    dataset: a ``grain.IterDataset`` of numpy batches ``{'x', 'y', 'mask'}``;
      ``iter(dataset)`` is a ``grain.DatasetIterator`` with
      ``get_state()`` / ``set_state()``.
    steps_per_epoch: batches per epoch.
    num_batches: batches in all (``num_epochs * steps_per_epoch``).
    members: ``M`` for per-member batches ``[M, B, ...]``, else ``None``.
  """
  dataset: Any
  steps_per_epoch: int
  num_batches: int
  members: int | None


class PairSource:
  """``(x, y)`` arrays as a source: ``source[idx] -> {'image': x[idx], 'label': y[idx]}``.

  ``y`` may be class labels or regression targets; nothing is copied.
  """

  def __init__(self, x: Any, y: Any, name: str = "arrays", split: str = "train"):
    self.x, self.y = np.asarray(x), np.asarray(y)
    self.name, self.split = name, split
    if self.x.ndim == 0 or len(self.x) != len(self.y):
      raise errors.BatchShapeError(
          f"{name}/{split}: x has shape {self.x.shape} and y {self.y.shape}; they need "
          "the same number of examples on the leading axis. Fix: pass matching (x, y).")

  def __len__(self) -> int:
    return len(self.x)

  def __getitem__(self, index: Any) -> dict[str, np.ndarray]:
    return {"image": self.x[index], "label": self.y[index]}

  def arrays(self) -> dict[str, np.ndarray]:
    return {"image": self.x, "label": self.y}


def as_source(data: Any) -> Any:
  """A source from a source (``len`` and ``[idx]``) or an ``(x, y)`` pair."""
  if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(
      data, (tuple, list)):
    return data
  if isinstance(data, (tuple, list)) and len(data) == 2:
    return PairSource(*data)
  raise TypeError(
      f"expected a fusionjax.data source or an (x, y) pair, got {type(data).__name__}. "
      "Fix: pass (x, y) numpy arrays or fj.data.from_arrays(x, y).")


def _seed_words(seed: Any) -> list[int]:
  """An int seed, a list of ints, or a JAX key (its bits) as a list of words."""
  if isinstance(seed, jax.Array) and jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key):
    seed = jax.random.key_data(seed)
  words = np.asarray(seed).astype(np.uint64).ravel().tolist()
  return [int(w) for w in words]


def epoch_order(seed: Any, epoch: int, n: int, member: int | None = None) -> np.ndarray:
  """The order in which epoch ``epoch`` visits ``n`` examples (member ``member``'s own)."""
  words = _seed_words(seed) + [int(epoch)] + ([] if member is None else [int(member)])
  return np.random.default_rng(words).permutation(n)


def _member_rows(indices: Any, n_source: int) -> tuple[np.ndarray, np.ndarray]:
  """``[M, n_max]`` rows (shorter ones wrapped) and their lengths ``[M]``."""
  rows = [np.asarray(r) for r in indices]
  if not rows or any(r.ndim != 1 or r.dtype.kind not in "iu" for r in rows):
    raise errors.BatchShapeError(
        "per-member indices must be M >= 1 integer arrays [N_m] (an [M, N'] array or a "
        f"list of them); got {[(r.dtype.name, r.shape) for r in rows][:4]}. Fix: e.g. "
        "fj.data.bootstrap(key, n, M).")
  lengths = np.array([len(r) for r in rows])
  if lengths.min() == 0:
    raise errors.EmptySplitError(
        f"member {int(np.argmin(lengths))}'s index row is empty. Fix: give every member "
        "at least one example.")
  n_max = int(lengths.max())
  out = np.stack([r[np.arange(n_max) % len(r)] for r in rows])
  if out.min() < 0 or out.max() >= n_source:
    raise IndexError(f"indices in [{out.min()}, {out.max()}] for a source of {n_source} "
                     f"examples; they must be in [0, {n_source}).")
  return out, lengths


class _BatchAt:
  """The map function: global batch index -> numpy batch ``{'x', 'y', 'mask'}``."""

  def __init__(self, source, batch_size, steps_per_epoch, seed, shuffle, rows, lengths,
               start_epoch, augment, augment_key, check):
    self.source, self.batch_size = source, batch_size
    self.steps_per_epoch, self.seed, self.shuffle = steps_per_epoch, seed, shuffle
    self.rows, self.lengths, self.start_epoch = rows, lengths, start_epoch
    self.n = len(source) if rows is None else rows.shape[1]
    self.augment, self.augment_key, self.check = augment, augment_key, check
    self._lock = threading.Lock()
    self._cached = (None, None)  # (epoch, its orders): batches come epoch by epoch

  def _orders(self, epoch: int):
    """This epoch's order (and valid mask for member rows), computed once per epoch."""
    with self._lock:
      if self._cached[0] != epoch:
        self._cached = (epoch, self._make_orders(epoch))
      return self._cached[1]

  def _make_orders(self, epoch: int):
    if self.rows is None:
      order = epoch_order(self.seed, epoch, self.n) if self.shuffle else np.arange(self.n)
      return order, None
    m = self.rows.shape[0]
    orders = []
    for i in range(m):
      k = int(self.lengths[i])
      own = epoch_order(self.seed, epoch, k, member=i) if self.shuffle else np.arange(k)
      # positions past a shorter row's length wrap around and are masked
      orders.append(own[np.arange(self.n) % k])
    return np.stack(orders), np.arange(self.n)[None, :] < self.lengths[:, None]

  def __call__(self, i: int) -> dict[str, np.ndarray]:
    i = int(i)
    epoch, b = divmod(i, self.steps_per_epoch)
    epoch += self.start_epoch
    order, valid = self._orders(epoch)
    position = np.arange(b * self.batch_size, (b + 1) * self.batch_size)
    mask = position < self.n
    if self.rows is None:
      idx = order[position % self.n]
    else:
      pos = position % self.n
      sel = order[:, pos]  # [M, B]: positions in each member's row
      idx = np.take_along_axis(self.rows, sel, axis=1)
      mask = valid[:, pos] & mask[None, :]
    rec = self.source[idx.reshape(-1)]
    x = np.asarray(rec["image"])
    y = np.asarray(rec["label"])
    x = x.reshape(*idx.shape, *x.shape[1:])
    y = y.reshape(*idx.shape, *y.shape[1:])
    if self.check is not None:
      self.check(x, y, i)
    if self.augment is not None:
      x = np.asarray(self.augment(jax.random.fold_in(self.augment_key, i), x))
    return {"x": x, "y": y, "mask": np.ascontiguousarray(mask)}


def pipeline(source: Any, batch_size: int, *, seed: Any = 0, num_epochs: int = 1,
             start_epoch: int = 0, shuffle: bool = True, drop_last: bool = False,
             indices: Any = None, augment: Callable | None = None,
             augment_key: jax.Array | None = None, prefetch: int = 2,
             check: Callable | None = None) -> Pipeline:
  """Batches of ``source`` for ``num_epochs`` epochs, as a grain dataset.

  Args:
    source: a random-access source (``len``, ``source[int array] ->
      dict(image, label)``: :func:`load`, :func:`from_arrays`, a prepared
      tfds split) or an ``(x, y)`` pair of arrays.
    batch_size: ``B``.
    seed: an int, a list of ints or a JAX key: fixes every epoch's order.
    num_epochs: epochs in the dataset.
    start_epoch: the first epoch's number (its order is that epoch's).
    shuffle: shuffle every epoch (else go in order).
    drop_last: drop an epoch's incomplete last batch instead of padding it
      (padded rows have ``mask`` False).
    indices: ``None`` (every example), an ``[N']`` subset (shared batches),
      or one row per member (``[M, N']``, or a list of M rows of any
      lengths) for per-member batches ``x [M, B, ...]``, ``mask [M, B]``.
    augment: ``augment(key, x) -> x`` applied to each batch's inputs on the
      host, with key ``fold_in(augment_key, i)`` for batch ``i``.
    augment_key: the JAX key of ``augment``.
    prefetch: batches built ahead by grain's background threads (0: none).
    check: ``check(x, y, i)`` may raise on a bad batch (fit's input checks).

  Returns:
    A :class:`Pipeline`; ``iter(p.dataset)`` gives numpy batches.

  Raises:
    BatchSizeError, EmptySplitError, BatchShapeError: bad arguments.
  """
  import grain  # pylint: disable=g-import-not-at-top  (0.3 s; only when batches are made)
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
      or batch_size < 1:
    raise errors.BatchSizeError(f"batch_size={batch_size!r}. Fix: pass an int >= 1.")
  source = as_source(source)
  n_source = len(source)
  rows = lengths = None
  if indices is not None:
    arr = indices if isinstance(indices, (list, tuple)) else np.asarray(indices)
    if isinstance(arr, np.ndarray) and arr.ndim == 1:
      if arr.dtype.kind not in "iu":
        raise errors.BatchShapeError(f"indices must be integers; got {arr.dtype}.")
      source = _Subset(source, arr)
      n_source = len(arr)
    else:
      rows, lengths = _member_rows(arr, n_source)
  n = n_source if rows is None else rows.shape[1]
  if n == 0:
    raise errors.EmptySplitError(
        f"batches of {getattr(source, 'name', 'source')}: no examples to iterate. Fix: "
        "check the split, fold or filter.")
  steps = n // batch_size if drop_last else -(-n // batch_size)
  if steps == 0:
    raise errors.EmptySplitError(
        f"{n} examples make no full batch of {batch_size} with drop_last=True. Fix: a "
        "smaller batch_size, or drop_last=False (the last batch is padded and masked).")
  if augment is not None and augment_key is None:
    raise TypeError("pipeline(augment=...) needs augment_key=jax.random.key(...).")
  fn = _BatchAt(source, int(batch_size), steps, _seed_words(seed), shuffle, rows, lengths,
                int(start_epoch), augment, augment_key, check)
  total = steps * int(num_epochs)
  ds = grain.MapDataset.range(total).map(fn)
  if prefetch > 0:
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch))
  else:
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  return Pipeline(ds, steps, total, None if rows is None else rows.shape[0])


def close(iterator) -> None:
  """Closes a pipeline iterator and waits for its prefetch thread to finish.

  grain's ``close()`` shuts its thread pool down without waiting (a batch being
  built finishes afterwards); waiting here means no thread outlives the loop
  that broke off, and nothing reads the source after ``close`` returns.
  """
  iterator.close()
  executor = getattr(iterator, "_executor", None)  # grain's ThreadPoolExecutor, if any
  if executor is not None:
    executor.shutdown(wait=True)


class _Subset:
  """``source`` restricted to ``indices`` (positions into it)."""

  def __init__(self, source, indices):
    if len(indices) and (indices.min() < 0 or indices.max() >= len(source)):
      raise IndexError(f"indices in [{indices.min()}, {indices.max()}] for a source of "
                       f"{len(source)} examples; they must be in [0, {len(source)}).")
    self.source, self.indices = source, np.asarray(indices)
    self.name = getattr(source, "name", "source")

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, index):
    return self.source[self.indices[index]]

