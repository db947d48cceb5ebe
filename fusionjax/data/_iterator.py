"""The batch iterator: keyed shuffling, padding with a mask, prefetch, sharding.

One call of :func:`batches` is one epoch. Every batch is a dict of device
arrays with static shapes, so a jitted step never retraces:

* ``image``: float32 ``[B, ...]`` (per-member: ``[M, B, ...]``);
* ``label``: int32 ``[B]`` (``[M, B]``);
* ``mask``: bool ``[B]`` (``[M, B]``), False on the rows that pad the last
  batch; weight losses and metrics by it.

The host work (numpy fancy indexing of in-memory arrays, normalisation,
``device_put``) runs in a background thread, ``prefetch`` batches ahead.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fusionjax import errors
from fusionjax.data import _random

Batch = dict[str, jax.Array]


def num_batches(n: int, batch_size: int, *, drop_last: bool = False) -> int:
  """Batches per epoch of ``n`` examples (the last one padded unless dropped)."""
  return n // batch_size if drop_last else -(-n // batch_size)


def _check_mesh(mesh: Mesh, batch_size: int, members: int | None) -> NamedSharding:
  need = ("data",) if members is None else ("member", "data")
  missing = [a for a in need if a not in mesh.axis_names]
  if missing:
    raise errors.MeshError(
        f"the mesh has axes {mesh.axis_names}, batches need {need} (missing"
        f" {missing}). Fix: build it as Mesh(devices.reshape(m, d),"
        " ('member', 'data'))."
    )
  d = mesh.shape["data"]
  if batch_size % d:
    ok = [b for b in range(d, 4 * d + 1, d)]
    raise errors.MeshError(
        f"batch_size={batch_size} does not divide over the mesh's 'data' axis"
        f" of {d} devices. Fix: use a multiple of {d} (e.g. {ok}); the last"
        " batch is padded to full size, so every batch divides."
    )
  if members is not None and members % mesh.shape["member"]:
    m = mesh.shape["member"]
    raise errors.MeshError(
        f"{members} members' batches do not divide over the mesh's 'member'"
        f" axis of {m} devices. Fix: use a 'member' axis size that divides"
        f" {members}."
    )
  spec = P("data") if members is None else P("member", "data")
  return NamedSharding(mesh, spec)


def _put_sharded(batch: dict[str, np.ndarray], sharding: NamedSharding) -> Batch:
  # make_array_from_callback works on one host and on many (each process
  # holds the same global batch and keeps its own devices' shards).
  return {
      k: jax.make_array_from_callback(v.shape, sharding, lambda i, v=v: v[i])
      for k, v in batch.items()
  }


class _Raised:

  def __init__(self, error: BaseException):
    self.error = error


_DONE = object()


def _background(items: Iterator[Any], size: int) -> Iterator[Any]:
  """Runs ``items`` in a daemon thread, up to ``size`` items ahead."""
  if size <= 0:
    yield from items
    return
  q: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.05)
        return True
      except queue.Full:
        pass
    return False

  def work():
    try:
      for item in items:
        if not put(item):
          return
      put(_DONE)
    except BaseException as e:  # pylint: disable=broad-except  (re-raised by the consumer)
      put(_Raised(e))

  thread = threading.Thread(target=work, name="fusionjax-prefetch", daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is _DONE:
        return
      if isinstance(item, _Raised):
        raise item.error
      yield item
  finally:
    stop.set()
    thread.join(timeout=10)


def batches(
    source: Any,
    batch_size: int,
    *,
    key: jax.Array | None = None,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
    indices: Any = None,
    mesh: Mesh | None = None,
    device: jax.Device | None = None,
    prefetch: int = 2,
    augment: Callable[[jax.Array, Any], Any] | None = None,
) -> Iterator[Batch]:
  """One epoch of batches of ``source``, shuffled from ``(key, epoch)``.

  Every example (every index in ``indices``) appears exactly once per epoch;
  with ``drop_last=False`` the last batch is filled up to ``batch_size`` with
  examples from the start of the epoch and its ``mask`` is False on those
  rows. The same ``key`` and ``epoch`` give the same order; loop over epochs
  with ``epoch=e`` (or :func:`epochs`).

  Args:
    source: a random-access source (``len``, ``source[int array] ->
      dict(image, label)``), e.g. from :func:`load`.
    batch_size: ``B``.
    key: a JAX PRNG key; needed when ``shuffle`` or ``augment``.
    epoch: folded into ``key``: each epoch has its own order.
    shuffle: shuffle (else go through ``indices`` in order).
    drop_last: drop an incomplete last batch instead of padding it.
    indices: which examples: ``None`` (all), ``[N']`` (a subset, e.g. a
      K-fold's train part) for shared batches ``[B, ...]``, or ``[M, N']``
      (per member, e.g. :func:`bootstrap`) for per-member batches
      ``[M, B, ...]``, each member shuffled with its own key.
    mesh: a ``('member', 'data')`` mesh: batches are placed with
      ``NamedSharding(mesh, P('data'))`` (per-member:
      ``P('member', 'data')``).
    device: without ``mesh``, the device to put batches on (default device
      when ``None``).
    prefetch: batches prepared ahead in a background thread (0: none).
    augment: ``augment(key, image) -> image`` (e.g. :func:`crop_flip`),
      applied to each batch's images with a key of its own.

  Returns:
    An iterator of dicts ``image``, ``label``, ``mask`` of device arrays.

  Raises:
    BatchSizeError: ``batch_size < 1``.
    EmptySplitError: no examples, or none left after ``drop_last``.
    MeshError: ``batch_size`` (or ``M``) does not divide over the mesh.

  Example:
    >>> from fusionjax import data
    >>> train, val, test = data.load("digits")
    >>> key = jax.random.key(0)
    >>> for epoch in range(2):
    ...   for batch in data.batches(train, 128, key=key, epoch=epoch):
    ...     pass  # state, logs = step(state, batch)
    >>> batch["image"].shape, int(batch["mask"].sum())
    ((128, 8, 8, 1), 13)
  """
  if batch_size < 1:
    raise errors.BatchSizeError(
        f"batch_size={batch_size}. Fix: pass batch_size >= 1."
    )
  n_source = len(source)
  name = f"{getattr(source, 'name', 'source')}/{getattr(source, 'split', '')}"
  indices = np.arange(n_source) if indices is None else np.asarray(indices)
  if indices.ndim not in (1, 2) or indices.dtype.kind not in "iu":
    raise errors.BatchShapeError(
        f"indices must be integers [N'] (shared batches) or [M, N'] (per"
        f" member), got {indices.dtype} {indices.shape}."
    )
  members = indices.shape[0] if indices.ndim == 2 else None
  n = indices.shape[-1]
  if members == 0 or n == 0:
    raise errors.EmptySplitError(
        f"batches of {name}: no examples to iterate (indices"
        f" {indices.shape}). Fix: check the split, fold or filter."
    )
  if indices.min() < 0 or indices.max() >= n_source:
    raise IndexError(
        f"indices in [{indices.min()}, {indices.max()}] for {name} of"
        f" {n_source} examples; they must be in [0, {n_source})."
    )
  count = num_batches(n, batch_size, drop_last=drop_last)
  if count == 0:
    raise errors.EmptySplitError(
        f"batches of {name}: {n} examples make no full batch of {batch_size}"
        " with drop_last=True. Fix: a smaller batch_size, or drop_last=False"
        " (the last batch is padded and masked)."
    )
  if (shuffle or augment is not None) and key is None:
    raise TypeError(
        "batches(shuffle=True or augment=...) needs key=jax.random.key(...);"
        " pass shuffle=False to keep the order."
    )
  if not 0 <= epoch < 2**32:
    raise ValueError(f"epoch={epoch}: epochs are counted from 0.")
  sharding = None if mesh is None else _check_mesh(mesh, batch_size, members)

  order = indices
  if key is not None:
    order_key, augment_key = jax.random.split(jax.random.fold_in(key, epoch))
  if shuffle:
    if members is None:
      order = indices[_random.numpy_rng(order_key).permutation(n)]
    else:  # each member shuffled with its own key
      perms = [rng.permutation(n) for rng in _random.numpy_rngs(order_key, members)]
      order = np.take_along_axis(indices, np.stack(perms), axis=1)

  def host_batches() -> Iterator[Batch]:
    for i in range(count):
      position = np.arange(i * batch_size, (i + 1) * batch_size)
      idx = np.take(order, position % n, axis=-1)
      batch = dict(source[idx.reshape(-1)])
      if members is not None:
        batch = {
            k: v.reshape(members, batch_size, *v.shape[1:])
            for k, v in batch.items()
        }
      mask = np.broadcast_to(position < n, idx.shape)
      batch["mask"] = np.ascontiguousarray(mask)
      if augment is not None:
        batch["image"] = np.asarray(
            augment(jax.random.fold_in(augment_key, i), batch["image"])
        )
      if sharding is not None:
        yield _put_sharded(batch, sharding)
      else:
        yield jax.device_put(batch, device)

  return _background(host_batches(), prefetch)


def epochs(
    source: Any,
    batch_size: int,
    *,
    key: jax.Array | None = None,
    num_epochs: int,
    start_epoch: int = 0,
    **kwargs,
) -> Iterator[tuple[int, Iterator[Batch]]]:
  """``(epoch, batches(..., epoch=epoch))`` for each epoch; resumes at ``start_epoch``.

  Example:
    >>> for epoch, epoch_batches in epochs(train, 128, key=key, num_epochs=3):  # doctest: +SKIP
    ...   for batch in epoch_batches:
    ...     state, logs = step(state, batch)
  """
  for epoch in range(start_epoch, num_epochs):
    yield epoch, batches(source, batch_size, key=key, epoch=epoch, **kwargs)
