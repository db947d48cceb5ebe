"""Permutation alignment of MLP members (fusionjax/integrate/_align.py)."""
import chex
import jax
import numpy as np
import pytest

import fusionjax as fj
from fusionjax import errors
from fusionjax import integrate

X = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype(np.float32)


def _mlp_params(features, seed=0):
  """Random params laid out like ``fj.models.MLP(10, features)``'s (NumPy: no compile)."""
  rng = np.random.default_rng(seed)
  widths = (64,) + tuple(features) + (10,)
  return {f"Dense_{i}": {"kernel": (rng.normal(size=(widths[i], widths[i + 1]))
                                    / np.sqrt(widths[i])).astype(np.float32),
                         "bias": (0.1 * rng.normal(size=(widths[i + 1],))).astype(np.float32)}
          for i in range(len(widths) - 1)}


def _np_mlp(params, x):
  h = np.asarray(x, np.float64).reshape(len(x), -1)
  n = len(params)
  for i in range(n):
    h = h @ params[f"Dense_{i}"]["kernel"] + params[f"Dense_{i}"]["bias"]
    h = np.maximum(h, 0) if i < n - 1 else h
  return h


@pytest.mark.parametrize("features", [(32,), (16, 24), (8, 12, 6)])
def test_permuting_hidden_units_keeps_the_function(features):
  params = _mlp_params(features)
  rng = np.random.default_rng(1)
  perms = [rng.permutation(w) for w in features]
  permuted = integrate.permute_mlp(params, perms)
  apply = jax.jit(fj.models.MLP(10, features).apply)
  ref = np.asarray(apply({"params": params}, X))
  np.testing.assert_allclose(np.asarray(apply({"params": permuted}, X)), ref, atol=1e-5)
  # mlp_apply is the function of fj.models.MLP (and of a NumPy forward pass).
  np.testing.assert_allclose(np.asarray(jax.jit(integrate.mlp_apply)(params, X)), ref,
                             atol=1e-5)
  np.testing.assert_allclose(_np_mlp(params, X), ref, atol=1e-4)
  assert not np.allclose(permuted["Dense_0"]["kernel"], params["Dense_0"]["kernel"])


@pytest.mark.parametrize("features", [(32,), (16, 24), (8, 12, 6)])
def test_weight_matching_recovers_a_known_permutation(features):
  a = _mlp_params(features, seed=2)
  rng = np.random.default_rng(3)
  perms = [rng.permutation(w) for w in features]
  b = integrate.permute_mlp(a, perms)
  found = integrate.weight_matching(a, b)
  for p, q in zip(perms, found):
    np.testing.assert_array_equal(q, np.argsort(p))      # the inverse permutation, exactly
  aligned, _ = integrate.align(a, b)
  chex.assert_trees_all_equal(aligned, a)


@pytest.fixture(scope="module")
def two_members(bagged):
  """Members 0 and 1 of the shared bagged MLP(32) ensemble: different inits and bootstraps."""
  state = bagged[1]
  return jax.tree.map(lambda a: np.asarray(a)[:2], jax.device_get(state.params["members"]))


@pytest.mark.slow
def test_aligned_soup_is_the_average_of_the_aligned_members(two_members, digits_splits):
  xv = digits_splits["val"][0]
  aligned = integrate.align_members(two_members, reference=0)
  # Alignment changes no member's function, and leaves the reference untouched.
  for m in range(2):
    before = jax.tree.map(lambda a, m=m: a[m], two_members)
    after = jax.tree.map(lambda a, m=m: a[m], aligned)
    np.testing.assert_allclose(np.asarray(integrate.mlp_apply(after, xv)),
                               np.asarray(integrate.mlp_apply(before, xv)), atol=1e-4)
  chex.assert_trees_all_equal(jax.tree.map(lambda a: np.asarray(a[0]), aligned),
                              jax.tree.map(lambda a: a[0], two_members))
  soup = integrate.uniform_soup(aligned)
  chex.assert_trees_all_close(soup, jax.tree.map(lambda a: np.mean(np.asarray(a), 0), aligned),
                              rtol=1e-6)


def test_barrier_definition():
  a, b = _mlp_params((16,), seed=4), _mlp_params((16,), seed=5)
  y = np.arange(16, dtype=np.int32) % 10
  res = integrate.interpolation_barrier(a, b, X, y, num=5)
  np.testing.assert_allclose(res.ts, [0, 0.25, 0.5, 0.75, 1.0])
  for t, loss in zip(res.ts, res.losses):
    p = jax.tree.map(lambda u, v, t=t: (1 - t) * u + t * v, a, b)
    z = _np_mlp(p, X)
    z = z - z.max(-1, keepdims=True)
    ce = np.log(np.exp(z).sum(-1)) - z[np.arange(16), y]
    assert loss == pytest.approx(ce.mean(), rel=1e-5)
  line = (1 - res.ts) * res.losses[0] + res.ts * res.losses[-1]
  assert res.barrier == pytest.approx(np.max(res.losses - line))
  # A network against itself has no barrier.
  assert integrate.interpolation_barrier(a, a, X, y).barrier == pytest.approx(0, abs=1e-5)


def test_alignment_lowers_the_loss_barrier(two_members, digits_splits):
  xv, yv = digits_splits["val"]
  a, b = (jax.tree.map(lambda p, m=m: p[m], two_members) for m in range(2))
  before = integrate.interpolation_barrier(a, b, xv, yv)
  after = integrate.interpolation_barrier(a, integrate.align(a, b)[0], xv, yv)
  # Measured (CPU, seed 0): barrier 0.744 before alignment (val loss 0.265 ->
  # 1.021 at t = 0.5 -> 0.288), 0.043 after (max loss 0.320). Members 2 and 3:
  # 0.395 -> 0.066. Uniform soup of all 8: NLL 1.59 naive, 0.54 aligned.
  assert after.barrier < 0.2 * before.barrier
  assert before.barrier > 0.3
  naive = float(before.losses[len(before.ts) // 2])
  aligned_mid = float(after.losses[len(after.ts) // 2])
  assert aligned_mid < 0.6 * naive


def test_alignment_of_non_mlp_params():
  cnn = {"Conv_0": {"kernel": np.zeros((5, 5, 1, 4)), "bias": np.zeros(4)},
         "Dense_0": {"kernel": np.zeros((64, 8)), "bias": np.zeros(8)}}  # CNN(10)'s layout
  with pytest.raises(errors.AlignmentError, match=r"\['Conv_0'\] are not Dense layers"):
    integrate.weight_matching(cnn, cnn)
  a = _mlp_params((16,))
  with pytest.raises(errors.AlignmentError, match="variables dict"):
    integrate.align({"params": a}, {"params": a})
  stacked = fj.ensemble.stack([a, a])
  with pytest.raises(errors.AlignmentError, match=r"kernel \(2, 64, 16\)"):
    integrate.weight_matching(stacked, stacked)
  with pytest.raises(errors.AlignmentError, match=r"the two MLPs differ"):
    integrate.weight_matching(a, _mlp_params((8,)))
  with pytest.raises(errors.AlignmentError, match=r"sizes \[\(15,\)\] for hidden widths \[16\]"):
    integrate.permute_mlp(a, [np.arange(15)])
  with pytest.raises(errors.AlignmentError, match="reference=5 .* M=2"):
    integrate.align_members(stacked, reference=5)
  with pytest.raises(errors.IntegrationConfigError, match="num=1"):
    integrate.interpolation_barrier(a, a, X, np.zeros(16, np.int32), num=1)
