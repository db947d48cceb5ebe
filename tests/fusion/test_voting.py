"""hard_vote / soft_vote equal scikit-learn's VotingClassifier, ties included."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from sklearn.base import BaseEstimator
from sklearn.base import ClassifierMixin
from sklearn.datasets import make_classification
from sklearn.ensemble import VotingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.tree import DecisionTreeClassifier

from fusionjax import errors
from fusionjax import fusion as fu

M, B, C = 4, 64, 3
HARD = {w: jax.jit(fu.hard_vote(w).apply) for w in
        [None, (1, 1, 2, 2), (0.5, 0.25, 0.25, 1.0), (1, 0, 3, 1)]}


class Fixed(ClassifierMixin, BaseEstimator):
  """A 'fitted' classifier whose outputs are a fixed table: row i for X = [[i]]."""

  def __init__(self, proba=None):
    self.proba = proba

  def fit(self, X, y):
    self.classes_ = np.unique(y)
    return self

  def predict_proba(self, X):
    return self.proba[np.asarray(X)[:, 0].astype(int)]

  def predict(self, X):
    return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def _tied_probas(seed):
  """Member probabilities whose argmax votes tie often (C=3, M=4)."""
  rng = np.random.default_rng(seed)
  votes = rng.integers(0, C, (M, B))
  p = rng.uniform(0.05, 0.3, (M, B, C))
  p[np.arange(M)[:, None], np.arange(B)[None, :], votes] = 0.5
  return p / p.sum(-1, keepdims=True)


def _sklearn_hard(p, w):
  """scikit-learn's formula, verbatim: argmax(bincount(preds, weights=w))."""
  preds = p.argmax(-1).T  # [B, M]
  return np.apply_along_axis(
      lambda x: np.argmax(np.bincount(x, weights=w)), axis=1, arr=preds)


@pytest.mark.parametrize("w", list(HARD), ids=str)
@settings(max_examples=25, deadline=None, database=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_hard_vote_equals_sklearn_formula_with_ties(w, seed):
  p = _tied_probas(seed)
  out = HARD[w]((), jnp.log(jnp.asarray(p, jnp.float32)))
  np.testing.assert_array_equal(np.asarray(out.argmax(-1)), _sklearn_hard(p, w))


@pytest.mark.parametrize("w", [None, [1, 1, 2, 2], [0.5, 0.25, 0.25, 1.0]],
                         ids=str)
def test_votes_equal_voting_classifier_on_fixed_members(w):
  p = _tied_probas(7)
  X = np.arange(B)[:, None]
  y = np.arange(B) % C
  est = [(f"m{m}", Fixed(p[m])) for m in range(M)]
  z = jnp.log(jnp.asarray(p, jnp.float32))
  hard = VotingClassifier(est, voting="hard", weights=w).fit(X, y)
  sk_pred = hard.predict(X)
  # the fixture produces real ties, broken by the lowest class index
  counts = np.stack([np.bincount(r, weights=w, minlength=C)
                     for r in p.argmax(-1).T])
  assert np.sum((counts == counts.max(1, keepdims=True)).sum(1) > 1) >= 3
  np.testing.assert_array_equal(
      jax.jit(fu.hard_vote(w).apply)((), z).argmax(-1), sk_pred)
  soft = VotingClassifier(est, voting="soft", weights=w).fit(X, y)
  np.testing.assert_allclose(np.exp(jax.jit(fu.soft_vote(w).apply)((), z)),
                             soft.predict_proba(X), rtol=1e-6, atol=1e-6)


def test_votes_equal_a_real_voting_classifier():
  X, y = make_classification(n_samples=120, n_features=5, n_informative=3,
                             n_redundant=0, n_classes=3, random_state=0)
  est = [("lr", LogisticRegression()), ("nb", GaussianNB()),
         ("tree", DecisionTreeClassifier(max_depth=2, random_state=0))]
  for w in (None, [1, 2, 1]):
    soft = VotingClassifier(est, voting="soft", weights=w).fit(X, y)
    hard = VotingClassifier(est, voting="hard", weights=w).fit(X, y)
    for vc in (soft, hard):
      p = np.stack([e.predict_proba(X) for e in vc.estimators_])
      z = jnp.log(jnp.asarray(p, jnp.float32))  # log(proba) as the logits
      if vc is soft:
        out = jax.jit(fu.soft_vote(w).apply)((), z)
        np.testing.assert_allclose(np.exp(out), vc.predict_proba(X),
                                   rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(out.argmax(-1), vc.predict(X))
      else:
        out = jax.jit(fu.hard_vote(w).apply)((), z)
        np.testing.assert_array_equal(out.argmax(-1), vc.predict(X))


def test_hard_vote_output_is_log_one_hot():
  z = jnp.array([[[1.0, 2.0, 0.0]], [[3.0, 0.0, 0.0]], [[0.0, 5.0, 1.0]]])
  out = fu.hard_vote().apply((), z)
  np.testing.assert_array_equal(np.exp(out), [[0.0, 1.0, 0.0]])
  assert np.all(np.isfinite(out))
  assert out[0, 0] == fu.log_zero(jnp.float32)
  # a loss on it is finite, also against the losing classes
  import optax
  for label in range(3):
    loss = optax.softmax_cross_entropy(out, jax.nn.one_hot(jnp.array([label]),
                                                           3))
    assert np.all(np.isfinite(loss))
  # and the vote survives another fusion (mean of two hard votes)
  both = fu.chain(fu.parallel(fu.hard_vote(), fu.hard_vote([0, 0, 1])),
                  fu.mean())
  fused = both.apply(both.init(jax.random.key(0), z), z)
  assert np.all(np.isfinite(fused))
  np.testing.assert_allclose(np.exp(fused), [[0.0, 1.0, 0.0]], atol=1e-7)


def test_log_zero_is_safe():
  for dtype in (jnp.float16, jnp.bfloat16, jnp.float32):
    lz = jnp.asarray(fu.log_zero(dtype), dtype)
    assert jnp.isfinite(lz) and jnp.exp(lz) == 0
    assert jnp.isfinite(lz * lz) and jnp.isfinite(lz + lz)


def test_soft_vote_accepts_any_member_count(logits):
  vote, mean = jax.jit(fu.soft_vote().apply), jax.jit(fu.mean().apply)
  for m in (1, 5):
    z = logits(m, 3, 4)
    np.testing.assert_allclose(vote((), z), mean((), z), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize("vote", [fu.hard_vote, fu.soft_vote])
def test_weights_validated(vote):
  with pytest.raises(errors.WeightsError, match=r"-2.0"):
    vote([1.0, -2.0])
  with pytest.raises(errors.WeightsError, match=r"all zero.*\[0.0, 0.0, 0.0\]"):
    vote([0, 0, 0])
  with pytest.raises(errors.WeightsError,
                     match=r"got 2 weights \[1.0, 2.0\].*M=3"):
    vote([1.0, 2.0]).apply((), jnp.zeros((3, 4, 2)))
  with pytest.raises(errors.MemberOutputsError, match=r"\(4, 2\)"):
    vote().apply((), jnp.zeros((4, 2)))


# ------------------------------------------- soft vote on probabilities: exact ties
def _eighths(rng, m, b, c):
  """Random probabilities in multiples of 1/8 (rows sum to 1): exact ties everywhere."""
  counts = np.stack([rng.multinomial(8, np.ones(c) / c, size=b) for _ in range(m)])
  return counts.astype(np.float32) / 8.0


@pytest.mark.parametrize("w", [None, [1, 2, 4, 1], [0.5, 0.25, 2.0, 1.0]], ids=str)
@settings(max_examples=20, deadline=None, database=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_soft_vote_on_probabilities_equals_voting_classifier_exactly(w, seed):
  rng = np.random.default_rng(seed)
  p = _eighths(rng, M, B, C)
  X = np.arange(B)[:, None]
  y = np.arange(B) % C
  soft = VotingClassifier([(f"m{m}", Fixed(p[m])) for m in range(M)], voting="soft",
                          weights=w).fit(X, y)
  out = jax.jit(fu.soft_vote(w, probs=True).apply)((), jnp.asarray(p))  # float32
  np.testing.assert_array_equal(np.asarray(out.argmax(-1)), soft.predict(X))
  np.testing.assert_allclose(np.exp(out), soft.predict_proba(X), rtol=1e-6)


def test_eighths_tie_often():
  """The inputs of the exactness test hold many exact ties of the averaged probabilities."""
  p = _eighths(np.random.default_rng(0), M, B, C)
  for w in (None, [1, 2, 4, 1]):
    avg = np.average(p.astype(np.float64), axis=0, weights=w)
    assert ((avg == avg.max(-1, keepdims=True)).sum(-1) > 1).sum() >= 3  # 6 and 3 of 64


def test_soft_vote_on_probabilities_breaks_the_issue_tie_as_sklearn():
  p = np.array([[[.375, .625]], [[.75, .25]], [[.375, .625]]], np.float32)
  soft = VotingClassifier([(f"m{m}", Fixed(p[m])) for m in range(3)], voting="soft"
                          ).fit(np.zeros((2, 1)), np.array([0, 1]))
  assert soft.predict(np.zeros((1, 1))).tolist() == [0]
  assert fu.soft_vote(probs=True).apply((), jnp.asarray(p)).argmax(-1).tolist() == [0]


@pytest.mark.parametrize("w", [None, [0.3, 1.7, 0.1, 2.9]], ids=str)
def test_soft_vote_on_random_probabilities_agrees_at_float_precision(w):
  rng = np.random.default_rng(3)
  p = rng.dirichlet(np.ones(C), size=(M, B))
  want = np.average(p, axis=0, weights=w)
  got32 = np.exp(fu.soft_vote(w, probs=True).apply((), jnp.asarray(p, jnp.float32)))
  np.testing.assert_allclose(got32, want, rtol=1e-6)
  with jax.enable_x64(True):
    got64 = np.exp(fu.soft_vote(w, probs=True).apply((), jnp.asarray(p, jnp.float64)))
    assert got64.dtype == np.float64
  np.testing.assert_allclose(got64, want, rtol=1e-12)
