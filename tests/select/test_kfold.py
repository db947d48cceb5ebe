"""Stratified k-fold indices (select.kfold_indices delegates to fusionjax.data.kfold)."""
import jax
import numpy as np
import pytest

from fusionjax import data, errors, select


def _labels():
  return np.repeat(np.arange(4), [10, 7, 13, 5]).astype(np.int32)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_folds_partition_and_stratify(k):
  y = _labels()
  folds = select.kfold_indices(y, k, jax.random.key(0))
  assert len(folds) == k
  tests = np.concatenate([test for _, test in folds])
  np.testing.assert_array_equal(np.sort(tests), np.arange(y.size))
  for train, test in folds:
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(y.size))
  per_fold = np.array([np.bincount(y[test], minlength=4) for _, test in folds])   # [k, classes]
  assert np.all(per_fold.max(0) - per_fold.min(0) <= 1)
  sizes = [test.size for _, test in folds]
  assert max(sizes) - min(sizes) <= 1


def test_folds_depend_on_the_key_only():
  y = _labels()
  a = select.kfold_indices(y, 3, jax.random.key(1))
  b = select.kfold_indices(y, 3, jax.random.key(1))
  c = select.kfold_indices(y, 3, jax.random.key(2))
  assert all(np.array_equal(x[1], z[1]) for x, z in zip(a, b))
  assert not all(np.array_equal(x[1], z[1]) for x, z in zip(a, c))


def test_fold_errors_name_the_values():
  y = _labels()
  with pytest.raises(errors.FoldsError, match="k=1"):
    select.kfold_indices(y, 1, jax.random.key(0))
  with pytest.raises(errors.FoldsError, match="class 3 has only 5 examples"):
    select.kfold_indices(y, 6, jax.random.key(0))
  with pytest.raises(errors.LabelError, match="float64"):
    select.kfold_indices(y.astype(np.float64), 2, jax.random.key(0))
  with pytest.raises(errors.EmptySplitError, match="no examples"):
    select.kfold_indices(np.zeros(0, np.int32), 2, jax.random.key(0))


def test_kfold_indices_is_data_kfold():
  y = _labels()
  mine = select.kfold_indices(y, 4, jax.random.key(3))
  theirs = data.kfold(y, 4, key=jax.random.key(3))
  assert all(np.array_equal(a.validation, b.validation) for a, b in zip(mine, theirs))
