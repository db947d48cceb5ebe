"""k-fold indices for model selection: an alias of :func:`fusionjax.data.kfold`.

There is one implementation of (stratified) folds, in ``fusionjax.data``; this
keeps the ``select`` spelling ``kfold_indices(labels, k, key)`` next to the
other model-selection helpers.
"""
from typing import Any, List

import jax

from fusionjax.data import Fold, kfold


def kfold_indices(labels: Any, k: int, key: jax.Array) -> List[Fold]:
  """Stratified k-fold split; ``fusionjax.data.kfold(labels, k, key=key)``.

  Every class of ``n_c`` examples has ``floor(n_c / k)`` or ``ceil(n_c / k)``
  of them in each fold; the validation parts partition ``range(N)``.

  Args:
    labels: integer class labels ``[N]`` (or a data source).
    k: number of folds, ``2 <= k <=`` the smallest class count.
    key: a PRNG key; the same key gives the same folds.

  Returns:
    ``k`` :class:`fusionjax.data.Fold` ``(train, validation)`` pairs of sorted
    int64 indices (they unpack like tuples).

  Raises:
    FoldsError: ``k < 2``, or a class has fewer than ``k`` examples (the message
      names the class and its count).
    LabelError: non-integer labels. EmptySplitError: no labels.

  Example:
    >>> import numpy as np
    >>> folds = kfold_indices(np.array([0, 0, 1, 1, 1, 0]), 3, jax.random.key(0))
    >>> [validation.size for _, validation in folds]
    [2, 2, 2]

  References:
    Kohavi, R. (1995). A study of cross-validation and bootstrap for accuracy
    estimation and model selection. IJCAI.
  """
  return kfold(labels, k, key=key, stratified=True)
