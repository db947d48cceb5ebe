"""Bootstrap resampling for bagging: per-member indices and out-of-bag masks."""
from __future__ import annotations

import jax
import numpy as np

from fusionjax import errors
from fusionjax.data import _random


def bootstrap(
    key: jax.Array, n: int, num_members: int, *, size: int | None = None
) -> np.ndarray:
  """Per-member bootstrap indices ``[M, size]``, drawn with replacement.

  Member ``m`` draws from its own key (``jax.random.split(key, M)[m]``), so its
  sample does not depend on how many members there are after it. Pass the
  result as ``indices`` to :func:`batches` to get per-member batches
  ``[M, B, ...]``.

  Args:
    key: a JAX PRNG key.
    n: the number of examples to draw from (``len(source)``).
    num_members: ``M``.
    size: draws per member (default ``n``).

  Returns:
    int32 indices in ``[0, n)``, ``[M, size]``.

  Raises:
    EmptySplitError: ``n < 1`` or ``size < 1``.
    EnsembleSizeError: ``num_members < 1``.

  Example:
    >>> idx = bootstrap(jax.random.key(0), 100, 4)
    >>> idx.shape, out_of_bag(idx, 100).shape
    ((4, 100), (4, 100))

  References:
    Breiman, "Bagging predictors", Machine Learning 24, 1996.
  """
  size = n if size is None else size
  if n < 1 or size < 1:
    raise errors.EmptySplitError(
        f"bootstrap of n={n} examples, size={size}: nothing to draw. Fix: pass"
        " a non-empty source and size >= 1."
    )
  if num_members < 1:
    raise errors.EnsembleSizeError(
        f"bootstrap for num_members={num_members}. Fix: pass num_members >= 1."
    )
  rngs = _random.numpy_rngs(key, num_members)
  return np.stack([rng.integers(0, n, size, np.int32) for rng in rngs])


def out_of_bag(indices: np.ndarray, n: int) -> np.ndarray:
  """``[M, n]`` masks: True where member ``m``'s bootstrap never drew example ``i``.

  Use them to evaluate each member on data it did not train on (out-of-bag
  error), about ``e^-1 ~ 37%`` of the examples for ``size = n``.

  Args:
    indices: bootstrap indices ``[M, size]`` (from :func:`bootstrap`).
    n: the number of examples.

  Returns:
    A bool array ``[M, n]``.
  """
  indices = np.asarray(indices)
  if indices.ndim != 2:
    raise errors.BatchShapeError(
        f"out_of_bag needs per-member indices [M, size], got {indices.shape}."
        " Fix: pass the output of bootstrap()."
    )
  mask = np.ones((indices.shape[0], n), bool)
  mask[np.arange(indices.shape[0])[:, None], indices] = False
  return mask
