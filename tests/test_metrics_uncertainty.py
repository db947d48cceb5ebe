"""Tests of fusionjax.metrics' detection, uncertainty, selective and regression metrics
against scikit-learn, SciPy and float64 NumPy references (inputs full of ties)."""
import doctest

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import sklearn.metrics as skm

from fusionjax import errors, metrics

N = 64   # one length for the binary metrics, so the compiled kernels are shared


def _tied(seed, n=N, levels=4):
  """Binary labels (both classes present) and scores drawn from a few values."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, size=n).astype(np.int32)
  y[:2] = [0, 1]
  rng.shuffle(y)
  scores = (rng.integers(0, levels, size=n) + 0.5 * y * rng.integers(0, 2, size=n))
  return y, (scores / levels).astype(np.float32)


def _sk_fpr_at_tpr(y, s, tpr):
  fpr, tp, _ = skm.roc_curve(y, s, drop_intermediate=False)
  return fpr[np.argmax(tp >= tpr)]


# --------------------------------------------------------------------------
# AUROC, AUPR, FPR@TPR
# --------------------------------------------------------------------------
@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**31 - 1), levels=st.integers(1, 6),
                  tpr=st.sampled_from([0.0, 0.3, 0.5, 0.8, 0.95, 1.0]))
def test_binary_metrics_match_sklearn_with_ties(seed, levels, tpr):
  y, s = _tied(seed, levels=levels)
  np.testing.assert_allclose(metrics.auroc(y, s), skm.roc_auc_score(y, s), rtol=1e-6)
  np.testing.assert_allclose(metrics.aupr(y, s), skm.average_precision_score(y, s), rtol=1e-6)
  np.testing.assert_allclose(metrics.fpr_at_tpr(y, s, tpr), _sk_fpr_at_tpr(y, s, tpr),
                             rtol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_binary_metrics_continuous_scores_and_bool_labels(seed):
  rng = np.random.default_rng(seed)
  y = rng.random(N) < 0.3
  y[:2] = [False, True]
  s = (rng.normal(size=N) + y).astype(np.float32)
  np.testing.assert_allclose(metrics.auroc(y, s), skm.roc_auc_score(y, s), rtol=1e-6)
  np.testing.assert_allclose(metrics.aupr(y, s), skm.average_precision_score(y, s), rtol=1e-6)
  np.testing.assert_allclose(metrics.fpr_at_tpr(y, s), _sk_fpr_at_tpr(y, s, 0.95), rtol=1e-6)


def test_binary_metrics_under_jit():
  y, s = _tied(7, levels=3)
  f = jax.jit(lambda y, s, t: (metrics.auroc(y, s), metrics.aupr(y, s),
                               metrics.fpr_at_tpr(y, s, t)))
  a, p, r = f(jnp.asarray(y), jnp.asarray(s), 0.8)
  np.testing.assert_allclose(a, skm.roc_auc_score(y, s), rtol=1e-6)
  np.testing.assert_allclose(p, skm.average_precision_score(y, s), rtol=1e-6)
  np.testing.assert_allclose(r, _sk_fpr_at_tpr(y, s, 0.8), rtol=1e-6)
  # Traced labels cannot be checked: one class only gives NaN instead of an error.
  assert np.isnan(f(jnp.zeros(N, jnp.int32), jnp.asarray(s), 0.8)[0])


def test_binary_metrics_errors():
  y, s = _tied(0)
  with pytest.raises(errors.LabelError, match=r"binary.*\[2\]"):
    metrics.auroc(np.where(y == 1, 2, 0), s)
  with pytest.raises(errors.LabelError, match="only negatives"):
    metrics.aupr(np.zeros(N, np.int32), s)
  with pytest.raises(errors.BatchShapeError, match=r"\(64,\) and scores \(63,\)"):
    metrics.auroc(y, s[:-1])
  with pytest.raises(errors.BatchShapeError):
    metrics.fpr_at_tpr(y[:, None], s[:, None])
  with pytest.raises(errors.ThresholdError, match="tpr=1.5"):
    metrics.fpr_at_tpr(y, s, 1.5)


# --------------------------------------------------------------------------
# uncertainty scores and decomposition
# --------------------------------------------------------------------------
def _member_logits(seed=0, m=4, b=32, c=5):
  rng = np.random.default_rng(seed)
  return (2.0 * rng.normal(size=(m, b, c))).astype(np.float32)


def _probs64(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _h64(p):
  return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def test_scores_match_numpy_float64():
  x = _member_logits()
  p = _probs64(x).mean(0)                                   # [B, C]
  top = np.sort(p, axis=-1)[:, ::-1]
  np.testing.assert_allclose(metrics.max_prob(x), 1 - top[:, 0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics.margin(x), 1 - (top[:, 0] - top[:, 1]), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(metrics.entropy(x), _h64(p), rtol=1e-5, atol=1e-6)
  # Fused [B, C] inputs: log-probabilities of the mean prediction give the same scores.
  fused = np.log(p).astype(np.float32)
  np.testing.assert_allclose(metrics.entropy(fused), metrics.entropy(x), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics.max_prob(fused), metrics.max_prob(x), atol=1e-6)
  assert metrics.max_prob(x).shape == metrics.margin(x).shape == (32,)


def test_uncertainty_decomposition_matches_numpy_float64():
  x = _member_logits(1)
  pm = _probs64(x)
  total, aleatoric = _h64(pm.mean(0)), _h64(pm).mean(0)
  u = metrics.uncertainty_decomposition(x)
  assert isinstance(u, metrics.UncertaintyDecomposition)
  np.testing.assert_allclose(u.total, total, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(u.aleatoric, aleatoric, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(u.epistemic, total - aleatoric, atol=2e-6)
  np.testing.assert_allclose(u.total, u.aleatoric + u.epistemic, atol=1e-6)
  assert np.all(np.asarray(u.epistemic) >= -1e-6)
  np.testing.assert_allclose(u.epistemic, metrics.mutual_information(x, per_example=True))


def test_entropy_detects_ood_under_jit():
  rng = np.random.default_rng(2)
  in_logits = (rng.normal(size=(3, 16, 4)) + 6 * np.eye(4)[rng.integers(0, 4, 16)])
  ood_logits = rng.normal(size=(3, 16, 4)) * 0.3
  x = jnp.asarray(np.concatenate([in_logits, ood_logits], axis=1), jnp.float32)
  is_ood = jnp.asarray(np.r_[np.zeros(16), np.ones(16)].astype(np.int32))
  value = jax.jit(lambda y, x: metrics.auroc(y, metrics.entropy(x)))(is_ood, x)
  np.testing.assert_allclose(value, metrics.auroc(is_ood, metrics.entropy(x)))
  assert value > 0.9


def test_score_errors():
  with pytest.raises(errors.MemberOutputsError, match=r"\[M, B, C\] or fused"):
    metrics.entropy(np.zeros((2, 3, 4, 5), np.float32))
  with pytest.raises(errors.MemberOutputsError):
    metrics.uncertainty_decomposition(np.zeros((3, 4), np.float32))


# --------------------------------------------------------------------------
# selective classification
# --------------------------------------------------------------------------
def _risk_coverage64(log_probs, labels, conf):
  """Float64 reference: average the risk curve over every tie order (by enumeration
  of the expected errors per group, written independently of the kernel)."""
  wrong = (np.argmax(log_probs, -1) != labels).astype(np.float64)
  n = len(wrong)
  risks = np.empty(n)
  values = np.unique(conf)[::-1]
  k = 0
  errors_so_far = 0.0
  for v in values:
    group = wrong[conf == v]
    for j in range(1, len(group) + 1):
      k += 1
      risks[k - 1] = (errors_so_far + j * group.mean()) / k
    errors_so_far += group.sum()
  return np.arange(1, n + 1) / n, risks


def test_risk_coverage_without_ties_is_the_sorted_cumulative_error():
  rng = np.random.default_rng(3)
  lp = np.log(_probs64(rng.normal(size=(50, 4)) * 2)).astype(np.float32)
  labels = rng.integers(0, 4, 50).astype(np.int32)
  order = np.argsort(-lp.max(-1))
  wrong = (lp.argmax(-1) != labels)[order]
  ref = np.cumsum(wrong) / np.arange(1, 51)
  cov, risk = metrics.risk_coverage(lp, labels)
  np.testing.assert_allclose(cov, np.arange(1, 51) / 50, rtol=1e-6)
  np.testing.assert_allclose(risk, ref, rtol=1e-6)
  np.testing.assert_allclose(metrics.aurc(lp, labels), ref.mean(), rtol=1e-6)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**31 - 1), levels=st.integers(1, 5))
def test_risk_coverage_and_aurc_with_tied_confidence(seed, levels):
  rng = np.random.default_rng(seed)
  lp = np.log(_probs64(rng.normal(size=(40, 3)) * 2)).astype(np.float32)
  labels = rng.integers(0, 3, 40).astype(np.int32)
  conf = (rng.integers(0, levels, 40) / levels).astype(np.float32)
  cov_ref, risk_ref = _risk_coverage64(lp, labels, conf)
  cov, risk = metrics.risk_coverage(lp, labels, conf)
  np.testing.assert_allclose(cov, cov_ref, rtol=1e-6)
  np.testing.assert_allclose(risk, risk_ref, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(metrics.aurc(lp, labels, conf), risk_ref.mean(), rtol=1e-5)


def test_risk_coverage_tie_rule_is_the_mean_over_orders():
  # Two tied rows, one wrong: either order gives risk 0 or 1 at k=1; the mean is 1/2.
  lp = np.log(np.array([[0.6, 0.4], [0.6, 0.4]], np.float32))
  _, risk = metrics.risk_coverage(lp, np.array([0, 1], np.int32))
  np.testing.assert_allclose(risk, [0.5, 0.5])


def test_aurc_under_jit_and_errors():
  rng = np.random.default_rng(4)
  lp = np.log(_probs64(rng.normal(size=(40, 3)))).astype(np.float32)
  labels = rng.integers(0, 3, 40).astype(np.int32)
  np.testing.assert_allclose(jax.jit(metrics.aurc)(lp, labels), metrics.aurc(lp, labels),
                             rtol=1e-6)
  conf = -metrics.entropy(lp)
  np.testing.assert_allclose(jax.jit(metrics.aurc)(lp, labels, conf),
                             metrics.aurc(lp, labels, conf), rtol=1e-6)
  with pytest.raises(errors.MemberOutputsError, match=r"\[B, C\]"):
    metrics.aurc(lp[None], labels)
  with pytest.raises(errors.BatchShapeError, match="confidence has shape"):
    metrics.risk_coverage(lp, labels, conf[:-1])
  with pytest.raises(errors.LabelError):
    metrics.aurc(lp, labels + 3)


# --------------------------------------------------------------------------
# regression
# --------------------------------------------------------------------------
def _regression(seed=5, n=200):
  rng = np.random.default_rng(seed)
  mean = rng.normal(size=n)
  std = rng.uniform(0.2, 2.0, size=n)
  y = mean + std * rng.standard_t(4, size=n)
  return mean.astype(np.float32), std.astype(np.float32), y.astype(np.float32)


def test_gaussian_nll_matches_scipy():
  mean, std, y = _regression()
  m, s, t = (a.astype(np.float64) for a in (mean, std, y))
  ref = -scipy.stats.norm.logpdf(t, m, s).mean()
  np.testing.assert_allclose(metrics.gaussian_nll(mean, std**2, y), ref, rtol=1e-6)
  np.testing.assert_allclose(metrics.gaussian_nll(mean, np.float32(2.0), y),
                             -scipy.stats.norm.logpdf(t, m, np.sqrt(2.0)).mean(), rtol=1e-6)


def test_crps_gaussian_matches_scipy_closed_form_and_integral():
  mean, std, y = _regression()
  m, s, t = (a.astype(np.float64) for a in (mean, std, y))
  z = (t - m) / s
  ref = s * (z * (2 * scipy.stats.norm.cdf(z) - 1) + 2 * scipy.stats.norm.pdf(z)
             - 1 / np.sqrt(np.pi))
  np.testing.assert_allclose(metrics.crps_gaussian(mean, std, y), ref.mean(), rtol=1e-5)
  # CRPS = int (F(x) - 1[x >= y])^2 dx, numerically for a few rows.
  for i in range(3):
    f = lambda x: scipy.stats.norm.cdf(x, m[i], s[i]) ** 2
    g = lambda x: (1 - scipy.stats.norm.cdf(x, m[i], s[i])) ** 2
    num = (scipy.integrate.quad(f, -np.inf, t[i])[0] + scipy.integrate.quad(g, t[i], np.inf)[0])
    np.testing.assert_allclose(metrics.crps_gaussian(mean[i:i + 1], std[i:i + 1], y[i:i + 1]),
                               num, rtol=1e-5)


@pytest.mark.parametrize("level", [0.5, 0.9, 0.95])
def test_interval_coverage_matches_scipy(level):
  mean, std, y = _regression()
  lo, hi = scipy.stats.norm.interval(level, mean.astype(np.float64), std.astype(np.float64))
  ref = np.mean((y >= lo) & (y <= hi))
  np.testing.assert_allclose(metrics.interval_coverage(mean, std, y, level), ref, rtol=1e-6)


def test_regression_under_jit_and_errors():
  mean, std, y = _regression()
  for fn, spread in ((metrics.gaussian_nll, std**2), (metrics.crps_gaussian, std),
                     (metrics.interval_coverage, std)):
    np.testing.assert_allclose(jax.jit(fn)(mean, spread, y), fn(mean, spread, y), rtol=1e-6)
  with pytest.raises(errors.BatchShapeError, match=r"mean has shape \(200,\)"):
    metrics.crps_gaussian(mean, std, y[:, None])
  with pytest.raises(errors.BatchShapeError):
    metrics.gaussian_nll(mean, std[:10], y)
  with pytest.raises(errors.ThresholdError, match="level=1.0"):
    metrics.interval_coverage(mean, std, y, level=1.0)


# --------------------------------------------------------------------------
# docstring examples
# --------------------------------------------------------------------------
NEW = ["auroc", "aupr", "fpr_at_tpr", "max_prob", "margin", "entropy",
       "uncertainty_decomposition", "risk_coverage", "aurc", "gaussian_nll",
       "crps_gaussian", "interval_coverage"]


@pytest.mark.parametrize("name", NEW)
def test_docstring_examples(name):
  fn = getattr(metrics, name)
  assert name in metrics.__all__
  assert "References:" in fn.__doc__ and "Example:" in fn.__doc__ and "Args:" in fn.__doc__
  runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
  for test in doctest.DocTestFinder(recurse=False).find(fn, name, globs=dict(vars(metrics))):
    runner.run(test)
  result = runner.summarize(verbose=False)
  assert result.attempted > 0 and result.failed == 0, result
