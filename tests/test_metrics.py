"""Tests of fusionjax.metrics: scikit-learn agreement, member broadcasting, identities, errors."""
import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.metrics as skm

from fusionjax import errors, metrics

M, B, C = 6, 96, 5   # the shapes of tests/select too, so compiled kernels are shared


def _data(seed=0, m=M, b=B, c=C, scale=2.0):
  rng = np.random.default_rng(seed)
  logits = (scale * rng.normal(size=(m, b, c))).astype(np.float32)
  # Leave the last class out of the labels so the "classes present" rule of the
  # macro averages is exercised (it is still predicted sometimes).
  labels = rng.integers(0, c - 1, size=b).astype(np.int32)
  return logits, labels


def _probs(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


# NumPy helpers: eager jax ops in a test each compile a kernel, which adds up.
def _softmax32(x):
  return _probs(x).astype(np.float32)


def _log_softmax32(x):
  return np.log(_probs(x)).astype(np.float32)


def _pad_classes(probs):
  """Log of ``probs [..., k]`` padded with impossible classes to ``[..., C]`` (reuses kernels)."""
  probs = np.asarray(probs, np.float32)
  pad = np.zeros(probs.shape[:-1] + (C - probs.shape[-1],), np.float32)
  with np.errstate(divide="ignore"):
    return np.log(np.concatenate([probs, pad], axis=-1))


def _mean_ensemble32(logits):
  """Log of the arithmetic mean of member probabilities, [B, C]."""
  return np.log(_probs(logits).mean(0)).astype(np.float32)


# Every per-row metric: name -> (fn, scikit-learn reference on (probs, labels) or None).
PER_ROW = {
    "accuracy": (metrics.accuracy, lambda p, y: skm.accuracy_score(y, p.argmax(-1))),
    "nll": (metrics.nll, lambda p, y: skm.log_loss(y, p, labels=range(p.shape[-1]))),
    "brier": (metrics.brier, lambda p, y: skm.brier_score_loss(y, p, labels=range(p.shape[-1]))),
    "brier_mean": (metrics.brier_mean, None),
    "ece": (metrics.ece, None),
    "adaptive_ece": (metrics.adaptive_ece, None),
    "precision": (metrics.precision, lambda p, y: skm.precision_score(
        y, p.argmax(-1), average="macro", zero_division=0)),
    "recall": (metrics.recall, lambda p, y: skm.recall_score(
        y, p.argmax(-1), average="macro", zero_division=0)),
    "f1": (metrics.f1, lambda p, y: skm.f1_score(
        y, p.argmax(-1), average="macro", zero_division=0)),
}
SKLEARN = [k for k, (_, ref) in PER_ROW.items() if ref is not None]


# --------------------------------------------------------------------------
# agreement with scikit-learn
# --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", SKLEARN)
def test_matches_sklearn(name, seed):
  fn, ref = PER_ROW[name]
  logits, labels = _data(seed)
  for m in range(M):
    np.testing.assert_allclose(fn(logits[m], labels), ref(_probs(logits[m]), labels),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", SKLEARN)
def test_mask_matches_sklearn_on_the_real_rows(name):
  fn, ref = PER_ROW[name]
  logits, labels = _data(3)
  mask = np.arange(B) < B - 17
  # Padded rows may hold anything: NaN outputs and out-of-range labels.
  x = logits[0].copy()
  x[~mask] = np.nan
  y = labels.copy()
  y[~mask] = -7
  np.testing.assert_allclose(fn(x, y, mask), ref(_probs(logits[0][mask]), labels[mask]),
                             rtol=1e-5, atol=1e-7)


def test_binary_brier_mean_is_sklearn_brier_score_loss():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(B, 2)).astype(np.float32)
  labels = rng.integers(0, 2, B).astype(np.int32)
  expected = skm.brier_score_loss(labels, _probs(logits)[:, 1])
  np.testing.assert_allclose(metrics.brier_mean(logits, labels), expected, rtol=1e-5)
  np.testing.assert_allclose(metrics.brier_from_probs(_softmax32(logits), labels,
                                                      per_class_mean=True), expected, rtol=1e-5)
  np.testing.assert_allclose(metrics.brier(logits, labels), 2 * expected, rtol=1e-5)


def test_brier_from_probs_matches_brier():
  logits, labels = _data(4)
  np.testing.assert_allclose(metrics.brier_from_probs(_softmax32(logits[0]), labels),
                             metrics.brier(logits[0], labels), rtol=1e-6)


# --------------------------------------------------------------------------
# conventions: member axis, logits vs log-probs, jit, no retrace
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PER_ROW))
def test_member_axis_broadcasts_like_a_loop(name):
  fn, _ = PER_ROW[name]
  logits, labels = _data(5)
  mask = np.arange(B) % 7 != 0
  stacked = fn(logits, labels, mask)
  assert stacked.shape == (M,)
  loop = np.stack([fn(logits[m], labels, mask) for m in range(M)])
  np.testing.assert_allclose(stacked, loop, rtol=1e-5, atol=1e-7)


def test_any_leading_dims_broadcast():
  fn = metrics.nll
  logits, labels = _data(5)
  np.testing.assert_allclose(fn(logits.reshape(2, 3, B, C), labels),
                             np.asarray(fn(logits, labels)).reshape(2, 3), rtol=1e-6)


@pytest.mark.parametrize("name", list(PER_ROW))
def test_logits_and_log_probs_agree(name):
  fn, _ = PER_ROW[name]
  logits, labels = _data(6)
  np.testing.assert_allclose(fn(logits, labels), fn(_log_softmax32(logits), labels),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(fn(logits, labels), fn(logits + 3.0, labels), rtol=1e-5, atol=1e-6)


def _everything(x, y, m):
  out = {name: fn(x, y, m) for name, (fn, _) in PER_ROW.items()}
  out["nll_decomposition"] = metrics.nll_decomposition(x, y, m)
  out["mutual_information"] = metrics.mutual_information(x, m)
  return out


def test_jit_equals_eager_and_does_not_retrace():
  jitted = jax.jit(chex.assert_max_traces(_everything, n=1))
  mask = np.arange(B) % 9 != 0
  for seed in (7, 8):
    logits, labels = _data(seed)
    chex.assert_trees_all_close(jitted(logits, labels, mask), _everything(logits, labels, mask),
                                rtol=1e-6, atol=1e-7)


def test_known_values():
  # Tiled to B rows, padded with impossible classes (log 0) to C columns.
  lp = _pad_classes(np.tile([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], (B // 3, 1)))
  y = np.tile(np.array([0, 0, 1], np.int32), B // 3)
  np.testing.assert_allclose(metrics.accuracy(lp, y), 1 / 3, rtol=1e-6)
  np.testing.assert_allclose(metrics.nll(lp, y), -np.log([0.9, 0.2, 0.4]).mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics.brier(lp, y), 2 * np.mean([0.01, 0.64, 0.36]), rtol=1e-6)
  np.testing.assert_allclose(metrics.brier_mean(lp, y), 2 * np.mean([0.01, 0.64, 0.36]) / C,
                             rtol=1e-6)


# --------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------
def _ece_reference(logits, labels, mask, num_bins, adaptive):
  p = _probs(logits)[mask]
  y = labels[mask]
  conf, correct = p.max(-1), (p.argmax(-1) == y).astype(float)
  n = conf.size
  if adaptive:
    rank = np.empty(n, int)
    rank[np.argsort(conf, kind="stable")] = np.arange(n)
    bins = rank * num_bins // n
  else:
    bins = np.clip(np.ceil(conf * num_bins).astype(int) - 1, 0, num_bins - 1)
  total = 0.0
  for k in range(num_bins):
    sel = bins == k
    if sel.any():
      total += sel.sum() / n * abs(correct[sel].mean() - conf[sel].mean())
  return total


@pytest.mark.parametrize("adaptive,num_bins", [(False, 15), (True, 15), (False, 1)])
def test_ece_matches_reference(adaptive, num_bins):
  logits, labels = _data(9)
  mask = np.arange(B) % 5 != 1
  fn = metrics.adaptive_ece if adaptive else metrics.ece
  for m in range(M):
    np.testing.assert_allclose(fn(logits[m], labels, mask, num_bins),
                               _ece_reference(logits[m], labels, mask, num_bins, adaptive),
                               rtol=1e-5, atol=1e-6)


def test_adaptive_bins_hold_equal_mass():
  logits, labels = _data(10)
  count, conf, acc = metrics.calibration_bins(logits[0], labels, num_bins=15, adaptive=True)
  assert set(np.asarray(count).tolist()) == {6.0, 7.0} and count.sum() == B
  assert np.all(np.diff(np.asarray(conf)) >= 0)   # bins are ordered by confidence
  count, _, _ = metrics.calibration_bins(logits[0], labels, num_bins=15)
  assert count.sum() == B


def test_ece_of_a_perfectly_calibrated_and_an_overconfident_model():
  lp = _pad_classes([[0.75, 0.25]] * B)
  assert float(metrics.ece(lp, np.array([0, 0, 0, 1] * (B // 4)))) == pytest.approx(0, abs=1e-6)
  assert float(metrics.ece(lp, np.ones(B, np.int32))) == pytest.approx(0.75, abs=1e-6)


# --------------------------------------------------------------------------
# diversity
# --------------------------------------------------------------------------
def test_disagreement_matches_pairwise_loop():
  logits, _ = _data(11)
  mask = np.arange(B) % 3 != 0
  pred = logits.argmax(-1)[:, mask]
  pairs = [(pred[i] != pred[j]).mean() for i in range(M) for j in range(i + 1, M)]
  np.testing.assert_allclose(metrics.disagreement(logits, mask), np.mean(pairs), rtol=1e-5)
  matrix = np.asarray(metrics.disagreement_matrix(logits, mask))
  np.testing.assert_allclose(matrix, matrix.T)
  np.testing.assert_allclose(np.diag(matrix), 0.0)
  np.testing.assert_allclose(matrix[np.triu_indices(M, 1)], pairs, rtol=1e-5)
  assert float(metrics.disagreement(logits[:1])) == 0.0


def test_entropies_match_numpy():
  logits, _ = _data(12)
  p = _probs(logits)
  h = lambda q: -(q * np.log(q)).sum(-1)
  total, expected = h(p.mean(0)), h(p).mean(0)
  np.testing.assert_allclose(metrics.predictive_entropy(logits, per_example=True), total,
                             rtol=1e-5)
  np.testing.assert_allclose(metrics.expected_entropy(logits), expected.mean(), rtol=1e-5)
  mi = metrics.mutual_information(logits, per_example=True)
  np.testing.assert_allclose(mi, total - expected, rtol=1e-4, atol=1e-6)
  assert np.all(np.asarray(mi) >= -1e-6)
  same = np.repeat(logits[:1], 3, axis=0)
  np.testing.assert_allclose(metrics.mutual_information(same), 0.0, atol=1e-6)


def test_entropy_of_one_hot_members_is_finite():
  # Two confident members that disagree, each twice: [M, B, C] with log 0 entries.
  lp = _pad_classes(np.repeat(np.eye(2)[:, None, :], B, axis=1)[[0, 0, 0, 1, 1, 1]])
  np.testing.assert_allclose(metrics.mutual_information(lp), np.log(2), rtol=1e-6)
  np.testing.assert_allclose(metrics.expected_entropy(lp), 0.0)


def test_oracle_accuracy():
  logits, labels = _data(13)
  correct = logits.argmax(-1) == labels[None]
  np.testing.assert_allclose(metrics.oracle_accuracy(logits, labels), correct.any(0).mean(),
                             rtol=1e-6)
  assert float(metrics.oracle_accuracy(logits, labels)) >= float(
      np.asarray(metrics.accuracy(logits, labels)).max())


# --------------------------------------------------------------------------
# ambiguity decompositions: every stated identity, numerically
# --------------------------------------------------------------------------
def test_krogh_vedelsby_regression_identity():
  rng = np.random.default_rng(14)
  f = rng.normal(size=(5, B, 3)).astype(np.float32)
  y = rng.normal(size=(B, 3)).astype(np.float32)
  w = rng.uniform(0.1, 1.0, size=5).astype(np.float32)
  mask = np.arange(B) % 4 != 0
  d = metrics.ambiguity_decomposition(f, y, mask, weights=w)
  np.testing.assert_allclose(d.ensemble, d.mean_member - d.diversity, rtol=1e-5)
  wn = w / w.sum()
  fbar = np.einsum("m,mbd->bd", wn.astype(np.float64), f)
  np.testing.assert_allclose(d.ensemble, ((fbar - y) ** 2).sum(-1)[mask].mean(), rtol=1e-5)
  np.testing.assert_allclose(
      d.diversity, np.einsum("m,mb->b", wn, ((f - fbar) ** 2).sum(-1))[mask].mean(), rtol=1e-5)
  d1 = metrics.ambiguity_decomposition(f[..., 0], y[:, 0])   # [M, B] and [B] also work
  np.testing.assert_allclose(d1.ensemble, d1.mean_member - d1.diversity, rtol=1e-5)


def test_brier_decomposition_identity():
  logits, labels = _data(15)
  d = metrics.brier_decomposition(logits, labels)
  np.testing.assert_allclose(d.ensemble, d.mean_member - d.diversity, rtol=1e-5)
  np.testing.assert_allclose(d.mean_member, np.asarray(metrics.brier(logits, labels)).mean(),
                             rtol=1e-5)
  ens = _mean_ensemble32(logits)
  np.testing.assert_allclose(d.ensemble, metrics.brier(ens, labels), rtol=1e-5)


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16), scale=st.floats(0.1, 6.0))
def test_geometric_nll_identity(seed, scale):
  """mean_m NLL(p_m) = NLL(q) + mean_m KL(q || p_m) for the normalised geometric mean q."""
  logits, labels = _data(seed, scale=scale)
  d = metrics.nll_decomposition(logits, labels, combine="geometric")
  np.testing.assert_allclose(d.ensemble, d.mean_member - d.diversity, rtol=1e-5, atol=1e-6)
  # Independently, in float64: the diversity is -log Z, Z = sum_c prod_m p_mc^(1/M).
  lp = np.log(_probs(logits))
  log_z = np.log(np.exp(lp.mean(0)).sum(-1))
  np.testing.assert_allclose(d.diversity, -log_z.mean(), rtol=1e-5, atol=1e-6)
  lq = lp.mean(0) - log_z[:, None]
  np.testing.assert_allclose(d.ensemble, -lq[np.arange(B), labels].mean(), rtol=1e-5)
  np.testing.assert_allclose(d.mean_member, np.asarray(metrics.nll(logits, labels)).mean(),
                             rtol=1e-5)
  assert float(d.diversity) >= 0.0


def test_geometric_identity_holds_for_soft_targets():
  """The KL identity of the docstring, for any target distribution y (float64, NumPy)."""
  rng = np.random.default_rng(16)
  p = _probs(3 * rng.normal(size=(5, 40, 7)))
  y = _probs(rng.normal(size=(40, 7)))
  kl = lambda a, b: (a * (np.log(a) - np.log(b))).sum(-1)
  q = np.exp(np.log(p).mean(0))
  q /= q.sum(-1, keepdims=True)
  lhs = kl(y[None], p).mean(0)
  rhs = kl(y, q) + kl(q[None], p).mean(0)
  np.testing.assert_allclose(lhs, rhs, rtol=1e-10)


def test_arithmetic_nll_jensen_gap():
  logits, labels = _data(17)
  d = metrics.nll_decomposition(logits, labels, combine="arithmetic")
  np.testing.assert_allclose(d.ensemble, d.mean_member - d.diversity, rtol=1e-5)
  p = _probs(logits)
  py = p[:, np.arange(B), labels]                                    # [M, B]
  np.testing.assert_allclose(d.ensemble, -np.log(py.mean(0)).mean(), rtol=1e-5)
  np.testing.assert_allclose(d.diversity, (np.log(py.mean(0)) - np.log(py).mean(0)).mean(),
                             rtol=1e-5)
  assert float(d.diversity) >= 0.0 and float(d.ensemble) <= float(d.mean_member)
  ens = _mean_ensemble32(logits)
  np.testing.assert_allclose(d.ensemble, metrics.nll(ens, labels), rtol=1e-5)


# --------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------
def test_summary_and_member_summary():
  logits, labels = _data(18)
  mask = np.arange(B) < 80
  s = metrics.summary(_log_softmax32(logits[1]), labels, mask)
  assert sorted(s) == ["accuracy", "brier", "ece", "nll"]
  for k in s:
    np.testing.assert_allclose(s[k], PER_ROW[k][0](logits[1], labels, mask), rtol=1e-6)
  ms = metrics.member_summary(logits, labels, mask)
  np.testing.assert_allclose(ms["nll"], metrics.nll(logits, labels, mask), rtol=1e-6)
  ens = _mean_ensemble32(logits)
  np.testing.assert_allclose(ms["ensemble_nll"], metrics.nll(ens, labels, mask), rtol=1e-5)
  np.testing.assert_allclose(ms["oracle_accuracy"],
                             metrics.oracle_accuracy(logits, labels, mask), rtol=1e-6)
  np.testing.assert_allclose(ms["disagreement"], metrics.disagreement(logits, mask), rtol=1e-6)
  np.testing.assert_allclose(ms["mutual_information"],
                             metrics.mutual_information(logits, mask), rtol=1e-6)


# --------------------------------------------------------------------------
# bad input: one test per documented error, checking the class and the message
# --------------------------------------------------------------------------
def test_float_labels_raise_label_error_even_under_jit():
  logits, labels = _data()
  with pytest.raises(errors.LabelError, match="float32"):
    metrics.nll(logits, labels.astype(np.float32))
  with pytest.raises(errors.LabelError, match="float32"):
    jax.jit(metrics.accuracy)(logits, labels.astype(np.float32))


def test_out_of_range_labels_raise_label_error_naming_the_value():
  logits, labels = _data()
  bad = labels.copy()
  bad[5] = C + 3
  with pytest.raises(errors.LabelError, match=rf"label {C + 3} at row 5 .*\[0, {C}\)"):
    metrics.accuracy(logits, bad)
  bad[5] = -1
  with pytest.raises(errors.LabelError, match="label -1"):
    metrics.summary(logits[0], bad)
  # Masked rows are not checked; traced labels are not checked but give NaN.
  mask = np.arange(B) != 5
  assert np.isfinite(metrics.nll(logits[0], bad, mask))
  assert np.isnan(jax.jit(metrics.nll)(logits[0], bad))
  assert np.isnan(jax.jit(metrics.f1)(logits[0], bad))


def test_probabilities_error_names_the_sum():
  logits, labels = _data()
  p = _softmax32(logits[0])
  p[3] *= 1.5
  with pytest.raises(errors.ProbabilitiesError, match=r"row \(3,\) .*summing to 1\.5"):
    metrics.brier_from_probs(p, labels)
  mask = np.arange(B) != 3
  assert np.isfinite(metrics.brier_from_probs(p, labels, mask))


def test_empty_inputs_raise_empty_split_error():
  with pytest.raises(errors.EmptySplitError, match=r"\(0, 5\)"):
    metrics.accuracy(np.zeros((0, C), np.float32), np.zeros((0,), np.int32))
  logits, labels = _data()
  with pytest.raises(errors.EmptySplitError, match=f"none of the {B} rows"):
    metrics.nll(logits, labels, np.zeros(B, bool))


@pytest.mark.parametrize("num_bins", [0, -3])
def test_zero_bins_raise_bins_error(num_bins):
  logits, labels = _data()
  with pytest.raises(errors.BinsError, match=f"num_bins={num_bins}"):
    metrics.ece(logits, labels, num_bins=num_bins)
  with pytest.raises(errors.BinsError, match=f"num_bins={num_bins}"):
    metrics.adaptive_ece(logits, labels, num_bins=num_bins)


def test_shape_errors():
  logits, labels = _data()
  with pytest.raises(errors.BatchShapeError, match=r"labels have shape \(95,\)"):
    metrics.accuracy(logits, labels[:-1])
  with pytest.raises(errors.BatchShapeError, match=r"mask has shape \(3,\)"):
    metrics.accuracy(logits, labels, np.ones(3))
  with pytest.raises(errors.MemberOutputsError, match=r"\(96, 5\)"):
    metrics.disagreement(logits[0])
  with pytest.raises(errors.MemberOutputsError, match=r"\(5,\)"):
    metrics.nll(logits[0, 0], labels[:1])


def test_option_and_weight_errors():
  logits, labels = _data()
  with pytest.raises(errors.UnknownMetricError, match="'harmonic'"):
    metrics.nll_decomposition(logits, labels, combine="harmonic")
  with pytest.raises(errors.WeightsError, match=r"\[1.0, -1.0, 1.0, 1.0, 1.0, 1.0\]"):
    metrics.brier_decomposition(logits, labels, weights=np.array([1.0, -1.0, 1, 1, 1, 1]))
  with pytest.raises(errors.WeightsError, match=r"shape \(2,\)"):
    metrics.ambiguity_decomposition(logits, logits[0], weights=np.ones(2))


def test_nll_of_a_hard_vote_is_finite_and_documented():
  """A wrong hard vote has probability 0; its NLL is -log(tiny) = 87.3 nats, not 1.8e19."""
  from fusionjax import fusion  # pylint: disable=g-import-not-at-top
  z = jnp.array([[[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]],
                 [[2.0, 0.0, 0.0], [0.0, 0.0, 4.0]],
                 [[0.0, 1.0, 0.0], [0.0, 3.0, 0.0]]])            # [M=3, B=2, C=3]
  y = jnp.array([1, 1])                                             # row 0 votes 0: wrong
  vote = fusion.hard_vote().apply((), z)
  got = float(metrics.nll(vote, y))
  assert got == pytest.approx(-np.log(np.finfo(np.float32).tiny) / 2, rel=1e-5)  # 43.7
  assert float(metrics.nll(vote[1:], y[1:])) == 0.0  # the right vote costs nothing
