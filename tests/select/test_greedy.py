"""Greedy ensemble selection against a straightforward NumPy reference (Caruana et al. 2004)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fusionjax import errors, metrics, select
from fusionjax.select import _greedy

M, B, C = 6, 96, 5


def _members(seed, b=B):
  """Members of varied skill; member 4 duplicates member 1 and member 5 duplicates member 0."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, C, b).astype(np.int32)
  skill = np.array([2.0, 1.6, 1.2, 0.8, 0.0, 0.0])
  logits = 1.5 * rng.normal(size=(M, b, C)) + skill[:, None, None] * np.eye(C)[labels][None]
  logits[4], logits[5] = logits[1], logits[0]
  return logits.astype(np.float32), labels


def _softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _score(avg, labels, metric):
  if metric == "nll":
    return -np.log(avg[np.arange(len(labels)), labels]).mean()
  if metric == "brier":
    return ((avg - np.eye(avg.shape[-1])[labels]) ** 2).sum(-1).mean()
  return (avg.argmax(-1) != labels).mean()


def reference(logits, labels, max_size, init_size=1, metric="nll"):
  """Caruana et al.: sorted initialisation, then forward selection with replacement."""
  p = _softmax(logits)
  singles = [_score(p[m], labels, metric) for m in range(len(p))]
  picks = [int(m) for m in np.argsort(singles, kind="stable")[:init_size]]
  history = [_score(p[picks[:k]].mean(0), labels, metric) for k in range(1, init_size + 1)]
  total = p[picks].sum(0)
  while len(picks) < max_size:
    scores = [_score((total + p[m]) / (len(picks) + 1), labels, metric) for m in range(len(p))]
    best = int(np.argmin(scores))            # first minimum: ties go to the lowest index
    picks.append(best)
    history.append(scores[best])
    total = total + p[best]
  return np.array(picks), np.array(history)


@pytest.mark.parametrize("metric", ["nll", "brier", "error"])
@pytest.mark.parametrize("seed", [0, 1])
def test_picks_match_numpy_reference(metric, seed):
  logits, labels = _members(seed)
  for init_size in ((1, 3) if metric == "nll" else (1,)):   # (fewer compiles)
    picks, history = select.greedy_picks(logits, labels, 12, init_size, metric)
    ref_picks, ref_history = reference(logits, labels, 12, init_size, metric)
    np.testing.assert_array_equal(picks, ref_picks)
    np.testing.assert_allclose(history, ref_history, rtol=1e-5, atol=1e-7)


def test_ties_go_to_the_lowest_index():
  logits, labels = _members(0)
  picks = np.asarray(select.greedy_picks(logits, labels, 12)[0])
  # Members 0 and 5 are identical, as are 1 and 4: the copies are never picked.
  assert 5 not in picks.tolist() and 4 not in picks.tolist()
  assert picks[0] == 0
  # The sorted initialisation takes the best *members*, copies included, in index order.
  picks = np.asarray(select.greedy_picks(logits, labels, 12, init_size=3)[0])
  np.testing.assert_array_equal(picks[:3], [0, 5, 1])
  assert 4 not in picks.tolist()
  # All members identical: every score ties, so every pick is member 0.
  same = np.repeat(logits[:1], M, axis=0)
  picks, history = select.greedy_picks(same, labels, 12)
  np.testing.assert_array_equal(picks, 0)
  np.testing.assert_allclose(history, np.asarray(history)[0], rtol=1e-6)


@pytest.mark.parametrize("metric", ["nll", "brier"])
def test_selection_never_worse_than_the_best_single_member(metric):
  logits, labels = _members(2)
  counts, history = select.greedy_selection(logits, labels, 12, metric=metric)
  assert counts.dtype == jnp.int32 and counts.shape == (M,)
  counts, history = np.asarray(counts), np.asarray(history)
  assert int(counts.sum()) == int(np.argmin(history)) + 1
  fused = np.log(np.einsum("m,mbc->bc", counts / counts.sum(), _softmax(logits))).astype(np.float32)
  score = {"nll": metrics.nll, "brier": metrics.brier}[metric]
  best_single = float(np.asarray(score(logits, labels)).min())
  np.testing.assert_allclose(score(fused, labels), history.min(), rtol=1e-5)
  assert float(score(fused, labels)) <= best_single + 1e-6
  np.testing.assert_allclose(history[0], best_single, rtol=1e-5)


def test_selection_helps_on_unseen_data():
  """Selected on one split, the ensemble beats the best single member on another."""
  logits, labels = _members(3, b=2 * B)
  val, test = slice(0, B), slice(B, 2 * B)
  counts, _ = select.greedy_selection(logits[:, val], labels[val], 12)
  counts = np.asarray(counts)
  fused = np.log(np.einsum("m,mbc->bc", counts / counts.sum(),
                           _softmax(logits[:, test]))).astype(np.float32)
  assert int(counts.sum()) > 1
  assert float(metrics.nll(fused, labels[test])) < float(
      np.asarray(metrics.nll(logits[:, test], labels[test])).min())


def test_mask_equals_subset():
  logits, labels = _members(4)
  mask = np.arange(B) < 70
  padded_labels = np.where(mask, labels, 99)          # padded rows may hold anything
  picks, history = select.greedy_picks(logits, padded_labels, 12, mask=mask)
  ref_picks, ref_history = reference(logits[:, mask], labels[mask], 12)
  np.testing.assert_array_equal(picks, ref_picks)
  np.testing.assert_allclose(history, ref_history, rtol=1e-5)


def test_one_compile_per_shape():
  logits, labels = _members(5)
  select.greedy_selection(logits, labels, 12)
  before = _greedy._greedy._cache_size()
  select.greedy_selection(logits + 1.0, (labels + 1) % C, 12)
  assert _greedy._greedy._cache_size() == before


def test_bad_arguments():
  logits, labels = _members(0)
  with pytest.raises(errors.SelectionError, match="max_size=0"):
    select.greedy_selection(logits, labels, 0)
  with pytest.raises(errors.SelectionError, match=r"init_size=7 .*M=6"):
    select.greedy_selection(logits, labels, 10, init_size=7)
  with pytest.raises(errors.SelectionError, match=r"init_size=4 .*max_size=3"):
    select.greedy_selection(logits, labels, 3, init_size=4)
  with pytest.raises(errors.UnknownMetricError, match="'auc'"):
    select.greedy_selection(logits, labels, 3, metric="auc")
  with pytest.raises(errors.LabelError, match=f"label {C} at row"):
    select.greedy_selection(logits, np.full(B, C, np.int32), 3)
  with pytest.raises(errors.MemberOutputsError, match=r"\(96, 5\)"):
    select.greedy_selection(logits[0], labels, 3)
