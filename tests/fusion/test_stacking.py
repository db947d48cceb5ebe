"""Stacking: scikit-learn's meta-feature layout and folds, and the leakage of in-sample fits."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.ensemble import StackingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict
from sklearn.model_selection import StratifiedKFold
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier

from fusionjax import errors
from fusionjax import fusion as fu


def _log(p):
  return jnp.log(jnp.asarray(p, jnp.float32))


def _data(n_classes, n=60, seed=0):
  return make_classification(n_samples=n, n_features=4, n_informative=3,
                             n_redundant=0, n_classes=n_classes,
                             random_state=seed)


@pytest.mark.parametrize("n_classes,passthrough", [(2, True), (3, False)])
def test_meta_features_equal_stacking_classifier_transform(n_classes,
                                                           passthrough):
  X, y = _data(n_classes)
  sc = StackingClassifier([("lr", LogisticRegression()), ("nb", GaussianNB())],
                          cv=3, stack_method="predict_proba",
                          passthrough=passthrough).fit(X, y)
  p = np.stack([e.predict_proba(X) for e in sc.estimators_])  # [M, N, C]
  ours = jax.jit(fu.meta_features, static_argnames="passthrough")(
      _log(p), jnp.asarray(X, jnp.float32), passthrough=passthrough)
  want = sc.transform(X)
  width = 2 * (1 if n_classes == 2 else n_classes) + (4 if passthrough else 0)
  assert ours.shape == want.shape == (60, width)
  np.testing.assert_allclose(ours, want, rtol=1e-6, atol=1e-6)


def test_out_of_fold_equals_cross_val_predict_and_refits_final_estimator():
  X, y = _data(3, n=90)
  k = 3
  members = [LogisticRegression(), GaussianNB()]
  sc = StackingClassifier([("lr", members[0]), ("nb", members[1])], cv=k,
                          stack_method="predict_proba").fit(X, y)
  folds = fu.stratified_folds(y, k)
  # K fold-replicas of every member, each evaluated on all N samples
  fold_outputs = np.stack([
      np.stack([clone(m).fit(X[folds != j], y[folds != j]).predict_proba(X)
                for m in members]) for j in range(k)])  # [K, M, N, C]
  oof = fu.out_of_fold(_log(fold_outputs), folds)
  for i, m in enumerate(members):
    want = cross_val_predict(clone(m), X, y, cv=StratifiedKFold(k),
                             method="predict_proba")
    np.testing.assert_allclose(jax.nn.softmax(oof[i]), want, rtol=1e-5,
                               atol=1e-6)
  # the final estimator fit on our out-of-fold meta-features is sklearn's
  meta = np.asarray(fu.meta_features(oof), np.float64)
  final = clone(sc.final_estimator_).fit(meta, y)
  np.testing.assert_allclose(final.coef_, sc.final_estimator_.coef_,
                             rtol=1e-3, atol=1e-4)


@settings(max_examples=25, deadline=None, database=None)
@given(st.lists(st.integers(0, 3), min_size=4, max_size=40),
       st.integers(2, 4))
def test_stratified_folds_equal_sklearn(labels, k):
  y = np.asarray(labels)
  if np.bincount(y)[np.unique(y)].min() < k:
    with pytest.raises(errors.FoldsError, match=f"k={k}"):
      fu.stratified_folds(y, k)
    return
  ours = fu.stratified_folds(y, k)
  want = np.empty_like(ours)
  for j, (_, test) in enumerate(StratifiedKFold(k).split(np.zeros(len(y)), y)):
    want[test] = j
  np.testing.assert_array_equal(ours, want)


def test_stratified_folds_string_labels_and_order_of_appearance():
  y = np.array(["b", "a", "b", "c", "a", "c", "b", "a", "c", "b"])
  want = np.empty(len(y), int)
  for j, (_, test) in enumerate(StratifiedKFold(3).split(np.zeros(10), y)):
    want[test] = j
  np.testing.assert_array_equal(fu.stratified_folds(y, 3), want)


def test_stratified_folds_shuffle_keeps_class_counts(key):
  y = np.repeat([0, 1, 2], [7, 9, 5])
  a, b = fu.stratified_folds(y, 3), fu.stratified_folds(y, 3, key=key)
  assert not np.array_equal(a, b)
  for cls in range(3):
    np.testing.assert_array_equal(np.bincount(a[y == cls], minlength=3),
                                  np.bincount(b[y == cls], minlength=3))


def test_out_of_fold_picks_the_replica_that_did_not_see_the_sample():
  k, m, n, c = 3, 2, 7, 2
  outs = jnp.arange(k * m * n * c, dtype=jnp.float32).reshape(k, m, n, c)
  folds = np.array([2, 0, 1, 1, 0, 2, 0])
  oof = jax.jit(fu.out_of_fold)(outs, folds)
  for i in range(n):
    np.testing.assert_array_equal(oof[:, i], outs[folds[i], :, i])


def test_in_sample_meta_learner_leaks():
  """Overfitting members look perfect in-sample; out-of-fold fitting sees through.

  A 1-NN member memorises the (noisy) training set, a logistic regression
  does not. A meta-learner fit on in-sample predictions trusts the 1-NN and
  inherits its held-out accuracy; fit on out-of-fold predictions it trusts
  the logistic regression and is clearly better on held-out data.
  """
  X, y = make_classification(n_samples=1150, n_features=6, n_informative=2,
                             n_redundant=0, flip_y=0.3, class_sep=1.5,
                             n_clusters_per_class=1, random_state=3)
  Xtr, ytr, Xte, yte = X[:150], y[:150], X[150:], y[150:]
  members = [KNeighborsClassifier(1), LogisticRegression()]

  def logits(fitted, X):
    p = np.stack([e.predict_proba(X) for e in fitted])
    return jnp.log(jnp.clip(jnp.asarray(p, jnp.float32), 1e-6))

  full = [clone(m).fit(Xtr, ytr) for m in members]
  k = 5
  folds = fu.stratified_folds(ytr, k)
  fold_outputs = jnp.stack([
      logits([clone(m).fit(Xtr[folds != j], ytr[folds != j])
              for m in members], Xtr) for j in range(k)])
  oof = fu.out_of_fold(fold_outputs, folds)
  in_sample, held_out = logits(full, Xtr), logits(full, Xte)
  f, tx = fu.stacking(2, 2), optax.adam(0.1)
  acc = {}
  for name, z in [("in_sample", in_sample), ("out_of_fold", oof)]:
    params, _ = fu.fit(f, z, ytr, jax.random.key(0), 200, tx)  # one compile
    acc[name] = float((f.apply(params, held_out).argmax(-1) == yte).mean())
  knn_acc = (full[0].predict(Xte) == yte).mean()
  assert acc["in_sample"] == pytest.approx(knn_acc, abs=3e-2), acc
  assert acc["out_of_fold"] > acc["in_sample"] + 0.05, acc


# ------------------------------------------------------------- bad input
def test_bad_input_names_shapes(key):
  z = jnp.zeros((2, 5, 3))
  with pytest.raises(errors.FusionInputError, match="x=None"):
    fu.stacking(2, 3, passthrough=True).init(key, z)
  f = fu.stacking(2, 3, passthrough=True)
  params = f.init(key, z, x=jnp.zeros((5, 4)))
  with pytest.raises(errors.FusionInputError, match=r"\(4, 4\).*B=5"):
    f.apply(params, z, x=jnp.zeros((4, 4)))
  with pytest.raises(errors.FusionInputError, match=r"12 columns.*10"):
    f.apply(params, z, x=jnp.zeros((5, 6)))
  with pytest.raises(errors.MemberOutputsError, match=r"C=3.*num_classes=4"):
    fu.stacking(2, 4).init(key, z)
  with pytest.raises(errors.MemberOutputsError, match=r"num_members=3.*M=2"):
    fu.stacking(3, 3).init(key, z)
  with pytest.raises(errors.FusionConfigError, match=r"'probs'.*'proba'"):
    fu.stacking(2, 3, features="probs")
  with pytest.raises(errors.FusionConfigError, match=r"hidden=-1"):
    fu.stacking(2, 3, hidden=-1)


def test_fold_errors():
  with pytest.raises(errors.FoldsError, match=r"k=1"):
    fu.stratified_folds([0, 1, 0, 1], 1)
  with pytest.raises(errors.FoldsError, match=r"class 1 has only 1 samples.*at least 2"):
    fu.stratified_folds([0, 0, 1, 0], 2)
  with pytest.raises(errors.MemberOutputsError, match=r"\[K, M, N, C\].*\(2, 3, 4\)"):
    fu.out_of_fold(jnp.zeros((2, 3, 4)), np.zeros(3, int))
  with pytest.raises(errors.MemberOutputsError, match=r"\(3,\).*\(4,\)"):
    fu.out_of_fold(jnp.zeros((2, 1, 3, 2)), np.zeros(4, int))
  with pytest.raises(errors.FoldsError, match=r"\[0, 2\).*max 2"):
    fu.out_of_fold(jnp.zeros((2, 1, 3, 2)), np.array([0, 1, 2]))
