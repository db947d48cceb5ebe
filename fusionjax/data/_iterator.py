"""The batch iterator: one epoch of device batches from the grain pipeline.

One call of :func:`batches` is one epoch of :func:`~fusionjax.data.pipeline`
(the one data pipeline, which ``fit`` and the experiments use too), placed on
a device or sharded over a mesh. Every batch is a dict of device arrays with
static shapes, so a jitted step never retraces:

* ``x``: ``[B, ...]`` (per-member: ``[M, B, ...]``);
* ``y``: ``[B]`` (``[M, B]``);
* ``mask``: bool ``[B]`` (``[M, B]``), False on the rows that pad the last
  batch; weight losses and metrics by it.

The host work (fancy indexing of the source, normalisation) runs in grain's
background threads, ``prefetch`` batches ahead.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fusionjax import errors
from fusionjax.data import _pipeline
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
  rows. The same ``key`` and ``epoch`` give the same order (the pipeline's
  order with the key's bits as seed); loop over epochs with ``epoch=e`` (or
  :func:`epochs`).

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
      (per member, e.g. :func:`bootstrap`; or a list of rows of different
      lengths) for per-member batches ``[M, B, ...]``, each member shuffled
      in its own order.
    mesh: a ``('member', 'data')`` mesh: batches are placed with
      ``NamedSharding(mesh, P('data'))`` (per-member:
      ``P('member', 'data')``).
    device: without ``mesh``, the device to put batches on (default device
      when ``None``).
    prefetch: batches prepared ahead by grain's background thread (0: none).
    augment: ``augment(key, image) -> image`` (e.g. :func:`crop_flip`),
      applied to each batch's images with a key of its own.

  Returns:
    An iterator of dicts ``x``, ``y``, ``mask`` of device arrays.

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
    >>> batch["x"].shape, int(batch["mask"].sum())
    ((128, 8, 8, 1), 13)
  """
  if (shuffle or augment is not None) and key is None:
    raise TypeError(
        "batches(shuffle=True or augment=...) needs key=jax.random.key(...);"
        " pass shuffle=False to keep the order."
    )
  if not 0 <= epoch < 2**32:
    raise ValueError(f"epoch={epoch}: epochs are counted from 0.")
  # batch_size, indices and empty splits are checked by the pipeline.
  seed = 0 if key is None else _random.key_bits(key).ravel().tolist()
  aug_key = None
  if augment is not None:
    aug_key = jax.random.fold_in(key, epoch)
  p = _pipeline.pipeline(source, batch_size, seed=seed, num_epochs=1, start_epoch=epoch,
                         shuffle=shuffle, drop_last=drop_last, indices=indices,
                         augment=augment, augment_key=aug_key, prefetch=prefetch)
  sharding = None if mesh is None else _check_mesh(mesh, batch_size, p.members)

  def put(batch):
    if sharding is not None:
      return _put_sharded(batch, sharding)
    return jax.device_put(batch, device)

  def epoch_batches() -> Iterator[Batch]:
    it = iter(p.dataset)
    try:
      for batch in it:
        yield put(batch)
    finally:
      _pipeline.close(it)  # stops grain's prefetch thread when the loop breaks early

  return epoch_batches()


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
