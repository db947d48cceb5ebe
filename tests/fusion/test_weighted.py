"""weighted(): fixed, learned and per-class weights; validation."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fusionjax import errors
from fusionjax import fusion as fu


def _softmax64(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_fixed_weights_are_normalised(logits):
  z = logits(3, 5, 4)
  w = np.array([1.0, 3.0, 4.0])
  out = fu.weighted(3, weights=w).apply((), z)
  want = np.einsum("m,mbc->bc", w / w.sum(), _softmax64(z))
  np.testing.assert_allclose(np.exp(out), want, rtol=1e-6, atol=1e-6)
  # scaling the weights changes nothing
  np.testing.assert_allclose(fu.weighted(3, weights=10 * w).apply((), z), out,
                             rtol=1e-6, atol=1e-6)


def test_zero_weight_ignores_member_exactly(logits):
  z = logits(3, 5, 4)
  z_bad = z.copy()
  z_bad[1] = 1e4 * np.sign(z[1])  # whatever member 1 says is ignored
  f = fu.weighted(3, weights=[1.0, 0.0, 1.0])
  np.testing.assert_allclose(f.apply((), z_bad), f.apply((), z), rtol=1e-6)
  g = jax.grad(lambda z: f.apply((), z).sum())(jnp.asarray(z_bad))
  assert np.all(np.isfinite(g)) and not np.any(g[1])


def test_learned_weights_start_uniform(logits, key):
  z = logits(4, 5, 3)
  f = fu.weighted(4)
  params = f.init(key, z)
  assert params["logits"].shape == (4,)
  np.testing.assert_allclose(f.apply(params, z), fu.mean().apply((), z),
                             rtol=1e-6, atol=1e-6)
  pc = fu.weighted(4, per_class=True)
  assert pc.init(key, z)["logits"].shape == (4, 3)
  np.testing.assert_allclose(pc.apply(pc.init(key, z), z),
                             fu.mean().apply((), z), rtol=1e-6, atol=1e-6)


def test_uniform_fixed_is_mean(logits):
  z = logits(4, 5, 3)
  f = fu.weighted(4, learn=False)
  assert f.init(None, z) == ()
  np.testing.assert_allclose(f.apply((), z), fu.mean().apply((), z),
                             rtol=1e-6, atol=1e-6)


def test_per_class_weights_formula(logits):
  z = logits(3, 5, 4)
  w = np.random.default_rng(1).uniform(0.0, 1.0, (3, 4))
  out = fu.weighted(3, weights=w, per_class=True).apply((), z)
  wn = w / w.sum(0)  # normalised over members, per class
  mix = np.einsum("mc,mbc->bc", wn, _softmax64(z))
  np.testing.assert_allclose(np.exp(out), mix / mix.sum(-1, keepdims=True),
                             rtol=1e-6, atol=1e-6)
  # equal columns: the per-member fusion
  col = np.array([1.0, 2.0, 3.0])
  np.testing.assert_allclose(
      fu.weighted(3, weights=np.tile(col[:, None], (1, 4)),
                  per_class=True).apply((), z),
      fu.weighted(3, weights=col).apply((), z), rtol=1e-6, atol=1e-6)
  # learned per-class weights follow the same formula
  lg = np.log(w)
  np.testing.assert_allclose(
      fu.weighted(3, per_class=True).apply({"logits": jnp.asarray(lg)}, z),
      out, rtol=1e-5, atol=1e-6)


def test_learned_weights_favour_good_members(key):
  """Members 0 and 2 are informative, 1 and 3 are noise: fit() finds that."""
  rng = np.random.default_rng(0)
  n, c = 256, 4
  y = rng.integers(0, c, n)
  good = 2.0 * np.eye(c)[y] + rng.standard_normal((n, c))
  z = np.stack([good, 3 * rng.standard_normal((n, c)),
                good + rng.standard_normal((n, c)),
                3 * rng.standard_normal((n, c))]).astype(np.float32)
  f, tx = fu.weighted(4), optax.adam(0.1)
  params, losses = fu.fit(f, z, y, key, 150, tx)
  again, _ = fu.fit(f, z, y, key, 150, tx)  # deterministic (and no recompile)
  np.testing.assert_array_equal(again["logits"], params["logits"])
  w = jax.nn.softmax(params["logits"])
  assert w[0] + w[2] > 0.9, w
  assert losses[-1] < losses[0]
  # the fused accuracy is at least the best member's (up to 3e-2)
  acc = (f.apply(params, z).argmax(-1) == y).mean()
  best = max((z[m].argmax(-1) == y).mean() for m in range(4))
  assert acc >= best - 3e-2


# ------------------------------------------------------------- bad input
def test_wrong_number_of_weights():
  with pytest.raises(errors.WeightsError, match=r"got 2 weights \[1.0, 2.0\].*3 members"):
    fu.weighted(3, weights=[1.0, 2.0])


def test_negative_weights():
  with pytest.raises(errors.WeightsError, match=r"non-negative.*-1.0.*index \[1\]"):
    fu.weighted(3, weights=[1.0, -1.0, 2.0])


def test_all_zero_weights():
  with pytest.raises(errors.WeightsError, match=r"all zero.*\[0.0, 0.0\]"):
    fu.weighted(2, weights=[0.0, 0.0])


def test_per_class_weights_validated():
  with pytest.raises(errors.WeightsError, match=r"shape \(3,\)"):
    fu.weighted(3, weights=[1.0, 2.0, 3.0], per_class=True)
  with pytest.raises(errors.WeightsError, match=r"all zero for classes \[1\]"):
    fu.weighted(2, weights=[[1.0, 0.0], [1.0, 0.0]], per_class=True)
  f = fu.weighted(2, weights=np.ones((2, 3)), per_class=True)
  with pytest.raises(errors.WeightsError, match=r"\(2, 3\).*C=4"):
    f.apply((), jnp.zeros((2, 5, 4)))


def test_non_finite_weights():
  with pytest.raises(errors.WeightsError, match="nan"):
    fu.weighted(2, weights=[1.0, float("nan")])


def test_member_count_mismatch_names_shapes(key):
  f = fu.weighted(3)
  with pytest.raises(errors.MemberOutputsError,
                     match=r"num_members=3.*\(4, 2, 5\).*M=4"):
    f.init(key, jnp.zeros((4, 2, 5)))
  with pytest.raises(errors.MemberOutputsError, match=r"\[M, B, C\].*\(3, 5\)"):
    fu.weighted(3, weights=[1, 1, 1]).apply((), jnp.zeros((3, 5)))
