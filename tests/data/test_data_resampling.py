"""Bootstrap indices, out-of-bag masks, stratified K-fold."""
import jax
import numpy as np
import pytest

from fusionjax import data
from fusionjax import errors


def test_bootstrap_shapes_keys_and_replacement():
  key = jax.random.key(0)
  idx = data.bootstrap(key, 200, 5)
  assert idx.shape == (5, 200) and idx.dtype == np.int32
  assert idx.min() >= 0 and idx.max() < 200
  np.testing.assert_array_equal(idx, data.bootstrap(key, 200, 5))
  assert not np.array_equal(idx, data.bootstrap(jax.random.key(1), 200, 5))
  # With replacement: duplicates, about 63% distinct examples per member.
  distinct = np.array([np.unique(row).size for row in idx]) / 200
  assert (distinct < 0.75).all() and (distinct > 0.5).all()
  # Members differ, and member m does not depend on how many come after it.
  assert not np.array_equal(idx[0], idx[1])
  np.testing.assert_array_equal(data.bootstrap(key, 200, 3), idx[:3])
  # Legacy uint32 keys work too.
  assert data.bootstrap(jax.random.PRNGKey(0), 10, 2).shape == (2, 10)
  assert data.bootstrap(key, 200, 3, size=50).shape == (3, 50)


def test_out_of_bag_never_includes_own_samples():
  idx = data.bootstrap(jax.random.key(3), 100, 4)
  oob = data.out_of_bag(idx, 100)
  assert oob.shape == (4, 100) and oob.dtype == bool
  for m in range(4):
    assert not oob[m, idx[m]].any()
    in_bag = np.zeros(100, bool)
    in_bag[idx[m]] = True
    np.testing.assert_array_equal(oob[m], ~in_bag)
  assert 0.25 < oob.mean() < 0.5  # about e^-1


def test_bootstrap_errors():
  with pytest.raises(errors.EmptySplitError):
    data.bootstrap(jax.random.key(0), 0, 3)
  with pytest.raises(errors.EnsembleSizeError):
    data.bootstrap(jax.random.key(0), 10, 0)
  with pytest.raises(errors.BatchShapeError):
    data.out_of_bag(np.arange(5), 5)


@pytest.mark.parametrize("k", [2, 3, 5, 7])
def test_stratified_kfold(k):
  rng = np.random.default_rng(0)
  labels = rng.choice(4, size=203, p=[0.5, 0.25, 0.15, 0.1])
  folds = data.kfold(labels, k, key=jax.random.key(0))
  assert len(folds) == k
  validation = np.concatenate([f.validation for f in folds])
  assert sorted(validation.tolist()) == list(range(203))  # a partition
  overall = np.bincount(labels, minlength=4)
  for f in folds:
    assert np.intersect1d(f.train, f.validation).size == 0
    assert f.train.size + f.validation.size == 203
    counts = np.bincount(labels[f.validation], minlength=4)
    # class proportions within one example of the overall ones
    np.testing.assert_array_less(np.abs(counts - overall * f.validation.size / 203), 1 + 1e-9)
  sizes = [f.validation.size for f in folds]
  assert max(sizes) - min(sizes) <= 1


def test_kfold_is_keyed():
  labels = np.arange(100) % 3
  a = data.kfold(labels, 4, key=jax.random.key(0))
  b = data.kfold(labels, 4, key=jax.random.key(0))
  c = data.kfold(labels, 4, key=jax.random.key(1))
  np.testing.assert_array_equal(a[0].validation, b[0].validation)
  assert not np.array_equal(a[0].validation, c[0].validation)


def test_kfold_unstratified_and_sources():
  folds = data.kfold(10, 3, key=jax.random.key(0), stratified=False)
  assert sorted(np.concatenate([f.validation for f in folds]).tolist()) == list(range(10))
  train, _, _ = data.load("digits")
  folds = data.kfold(train, 5, key=jax.random.key(0))
  part = data.subset(train, folds[0].validation, split="fold0")
  assert len(part) == folds[0].validation.size and part.split == "fold0"


def test_kfold_errors():
  labels = np.array([0] * 10 + [1] * 3)
  with pytest.raises(errors.FoldsError, match="at least 2"):
    data.kfold(labels, 1, key=jax.random.key(0))
  with pytest.raises(errors.FoldsError, match="class 1 has only 3"):
    data.kfold(labels, 4, key=jax.random.key(0))
  assert len(data.kfold(labels, 3, key=jax.random.key(0))) == 3
  assert len(data.kfold(labels, 13, key=jax.random.key(0), stratified=False)) == 13
  with pytest.raises(errors.FoldsError, match="2 <= k <= 13"):
    data.kfold(labels, 14, key=jax.random.key(0), stratified=False)
  with pytest.raises(errors.LabelError):
    data.kfold(np.array([0.5, 1.0]), 2, key=jax.random.key(0))
