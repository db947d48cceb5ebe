"""K-fold splits, stratified by class for classification."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from fusionjax import errors
from fusionjax.data import _random
from fusionjax.data import _sources


class Fold(NamedTuple):
  """The indices of one fold: train on ``train``, evaluate on ``validation``."""

  train: np.ndarray
  validation: np.ndarray


def kfold(
    labels: Any, k: int, *, key: jax.Array, stratified: bool = True
) -> list[Fold]:
  """Splits ``range(N)`` into ``k`` folds, shuffled from ``key``.

  The validation parts of the ``k`` folds partition the data, and fold sizes
  differ by at most one. Stratified, every class is spread as evenly as it can
  be: a class of ``n_c`` examples has ``floor(n_c / k)`` or ``ceil(n_c / k)``
  of them in each fold, so each fold's class proportions are within one
  example of the overall ones.

  Args:
    labels: integer class labels ``[N]``, or a source (its ``labels``); for
      ``stratified=False`` an int ``N`` is enough.
    k: the number of folds, ``2 <= k <= min class count`` (``<= N`` when not
      stratified).
    key: a JAX PRNG key; the same key gives the same folds.
    stratified: balance classes across folds.

  Returns:
    ``k`` :class:`Fold` s of sorted int64 indices.

  Raises:
    FoldsError: ``k < 2``, or more folds than the smallest class (or ``N``)
      has examples.
    EmptySplitError: no examples.

  Example:
    >>> folds = kfold(train.labels, 5, key=jax.random.key(0))  # doctest: +SKIP
    >>> fold_train = subset(train, folds[0].train)  # doctest: +SKIP

  References:
    Kohavi, "A study of cross-validation and bootstrap for accuracy estimation
    and model selection", IJCAI 1995 (stratified cross-validation).
  """
  if hasattr(labels, "labels"):
    labels = labels.labels
  if isinstance(labels, (int, np.integer)):
    if stratified:
      raise errors.LabelError(
          "stratified kfold needs the labels, got an int. Fix: pass the"
          " labels, or stratified=False."
      )
    labels = np.zeros(int(labels), np.int32)
  labels, _ = _sources.check_labels(labels, None, what="kfold labels")
  n = labels.size
  if n == 0:
    raise errors.EmptySplitError("kfold of no examples. Fix: pass the labels.")
  if k < 2:
    raise errors.FoldsError(
        f"kfold with k={k}: cross-validation needs at least 2 folds. Fix: use"
        f" 2 <= k <= {_max_k(labels, stratified)}."
    )
  if k > _max_k(labels, stratified):
    if stratified:
      classes, counts = np.unique(labels, return_counts=True)
      smallest = classes[np.argmin(counts)]
      raise errors.FoldsError(
          f"stratified kfold with k={k} but class {smallest} has only"
          f" {counts.min()} examples (class counts"
          f" {dict(zip(classes.tolist(), counts.tolist()))}), so some fold"
          f" would have none of it. Fix: use 2 <= k <= {counts.min()}, or"
          " stratified=False."
      )
    raise errors.FoldsError(
        f"kfold with k={k} of {n} examples leaves a fold empty. Fix: use"
        f" 2 <= k <= {n}."
    )
  order = _random.numpy_rng(key).permutation(n)
  if stratified:  # group by class, shuffled within each class
    order = order[np.argsort(labels[order], kind="stable")]
  fold_of = np.empty(n, np.int64)
  fold_of[order] = np.arange(n) % k
  return [
      Fold(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f))
      for f in range(k)
  ]


def _max_k(labels: np.ndarray, stratified: bool) -> int:
  if not stratified:
    return labels.size
  return int(np.unique(labels, return_counts=True)[1].min())
