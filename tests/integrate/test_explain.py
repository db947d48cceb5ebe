"""Per-member contributions to a fused decision (fusionjax/integrate/_explain.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fusionjax as fj
from fusionjax import errors
from fusionjax import integrate

M, B, C = 4, 6, 5


def _logits(seed=0):
  return (2.5 * np.random.default_rng(seed).normal(size=(M, B, C))).astype(np.float32)


def _softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("weights", [None, np.array([1.0, 2.0, 0.0, 1.0])])
def test_contributions_by_hand(weights):
  z = _logits()
  k = np.asarray(fj.fusion.mean().apply((), jnp.asarray(z))).argmax(-1)
  w = np.full(M, 1 / M) if weights is None else weights / weights.sum()
  p_k = _softmax(z)[:, np.arange(B), k]                                   # [M, B]
  raw = integrate.contributions(weights, jnp.asarray(z), jnp.asarray(k))
  np.testing.assert_allclose(np.asarray(raw), w[:, None] * np.log(p_k), rtol=1e-5, atol=1e-6)
  share = np.asarray(integrate.contributions(weights, jnp.asarray(z), jnp.asarray(k),
                                             normalize=True))
  ref = w[:, None] * p_k / (w[:, None] * p_k).sum(0)
  np.testing.assert_allclose(share, ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(share.sum(0), 1.0, rtol=1e-6)
  if weights is not None:
    assert np.all(share[2] == 0)                  # a zero-weight member contributes nothing


def test_shares_explain_the_weighted_fusion_exactly():
  z = _logits(1)
  w = np.array([0.1, 0.4, 0.3, 0.2], np.float32)
  fused = fj.fusion.weighted(M, weights=w)
  lp = np.asarray(fused.apply(fused.init(None, jnp.asarray(z)), jnp.asarray(z)))
  k = lp.argmax(-1)
  share = np.asarray(integrate.contributions(w, jnp.asarray(z), jnp.asarray(k), normalize=True))
  # share_m * p(k) = w_m p_m(k): the fused probability split among members.
  p_k = _softmax(z)[:, np.arange(B), k]
  np.testing.assert_allclose(share * np.exp(lp[np.arange(B), k]), w[:, None] * p_k, rtol=1e-5)
  # Per-class weights [M, C]: the weight of the predicted class is used.
  wc = np.random.default_rng(2).uniform(0.1, 1.0, (M, C)).astype(np.float32)
  raw = np.asarray(integrate.contributions(wc, jnp.asarray(z), jnp.asarray(k)))
  wn = wc / wc.sum(0)
  np.testing.assert_allclose(raw, wn[:, k] * np.log(p_k), rtol=1e-5, atol=1e-6)


def test_grad_attribution_of_the_mean_fusion_by_hand():
  z = _logits(3)
  f = fj.fusion.mean()
  attr = np.asarray(jax.jit(lambda zz: integrate.grad_attribution(f, (), zz))(jnp.asarray(z)))
  p = _softmax(z)
  k = np.log(p.mean(0)).argmax(-1)
  p_k = p[:, np.arange(B), k]
  r = p_k / p_k.sum(0)                                                    # responsibilities
  z_k = z[:, np.arange(B), k]
  expected = r * (z_k - (p * z).sum(-1))
  np.testing.assert_allclose(attr, expected, rtol=1e-4, atol=1e-5)
  # Shifting one member's logits by a constant changes no attribution.
  shifted = z.copy()
  shifted[1] += 7.0
  attr2 = np.asarray(integrate.grad_attribution(f, (), jnp.asarray(shifted)))
  np.testing.assert_allclose(attr2, attr, rtol=1e-4, atol=1e-4)


def test_grad_attribution_of_a_weighted_fusion_ignores_a_zero_weight_member():
  z = _logits(4)
  f = fj.fusion.weighted(M, weights=[1.0, 0.0, 1.0, 2.0])
  params = f.init(None, jnp.asarray(z))
  k = jnp.zeros(B, jnp.int32)                     # explain a chosen class, not the argmax
  attr = np.asarray(integrate.grad_attribution(f, params, jnp.asarray(z), k))
  assert attr.shape == (M, B)
  assert np.all(np.isfinite(attr))
  np.testing.assert_array_equal(attr[1], 0.0)
  # Sign: positive for a member whose class-0 logit is above its own expected
  # logit (it backs the decision), negative below (it argues against it). A
  # saturated member (p_m(k) -> 1) gets ~0: the usual limit of gradient methods.
  z2 = z.copy()
  z2[3, :, 0] = z2[3].max(-1) + 1.0
  z2[2, :, 0] = z2[2].min(-1) - 1.0
  attr2 = np.asarray(integrate.grad_attribution(f, params, jnp.asarray(z2), k))
  assert np.all(attr2[3] > 0) and np.all(attr2[2] < 0)


def test_bad_inputs():
  z = jnp.asarray(_logits())
  k = jnp.zeros(B, jnp.int32)
  with pytest.raises(errors.MemberOutputsError, match=r"\[M, B, C\]; got shape \(6, 5\)"):
    integrate.contributions(None, z[0], k)
  with pytest.raises(errors.WeightsError, match=r"shape \(3,\) for M=4"):
    integrate.contributions(jnp.ones(3), z, k)
  with pytest.raises(errors.WeightsError, match="non-negative"):
    integrate.contributions(jnp.array([1.0, -1.0, 1.0, 1.0]), z, k)
  with pytest.raises(errors.BatchShapeError, match=r"\[B=6\]; got shape \(5,\)"):
    integrate.contributions(None, z, k[:5])
  with pytest.raises(errors.LabelError, match=r"outside \[0, 5\)"):
    integrate.contributions(None, z, k + 7)
  with pytest.raises(errors.MemberOutputsError):
    integrate.grad_attribution(fj.fusion.mean(), (), z[0])
