"""weighted_mean() and gaussian_mixture() (Deep Ensembles) against float64 numpy."""
import jax.numpy as jnp
import numpy as np
import pytest

from fusionjax import errors
from fusionjax import fusion as fu


def test_weighted_mean(rng):
  y = rng.standard_normal((3, 5, 2)).astype(np.float32)
  np.testing.assert_allclose(fu.weighted_mean().apply((), y), y.mean(0),
                             rtol=1e-6, atol=1e-6)
  w = np.array([1.0, 0.0, 3.0])
  np.testing.assert_allclose(fu.weighted_mean(w).apply((), y),
                             np.average(y, axis=0, weights=w), rtol=1e-6,
                             atol=1e-6)


def test_gaussian_mixture_both_layouts(rng):
  mu = rng.standard_normal((4, 5, 2))
  var = rng.uniform(0.1, 2.0, (4, 5, 2))
  mu_star = mu.mean(0)
  var_star = (var + mu**2).mean(0) - mu_star**2  # Lakshminarayanan et al.
  f = fu.gaussian_mixture()
  m, v = f.apply((), (jnp.asarray(mu, jnp.float32),
                      jnp.asarray(var, jnp.float32)))
  np.testing.assert_allclose(m, mu_star, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(v, var_star, rtol=1e-5, atol=1e-6)
  packed = jnp.asarray(np.concatenate([mu, var], -1), jnp.float32)
  out = f.apply((), packed)
  assert out.shape == (5, 4)
  np.testing.assert_allclose(out, np.concatenate([mu_star, var_star], -1),
                             rtol=1e-5, atol=1e-6)


def test_gaussian_mixture_variance_does_not_cancel():
  # means of 1e4 and tiny variances: mean(var + mu^2) - mu*^2 cancels in
  # float32, the stable form does not
  mu = jnp.full((3, 1, 1), 1e4) + jnp.array([0.0, 1e-2, -1e-2])[:, None, None]
  var = jnp.full((3, 1, 1), 1e-4)
  _, v = fu.gaussian_mixture().apply((), (mu, var))
  want = 1e-4 + np.mean(np.array([0.0, 1e-2, -1e-2]) ** 2)
  assert float(v[0, 0]) > 0
  np.testing.assert_allclose(v[0, 0], want, rtol=2e-2)


def test_regression_bad_input():
  with pytest.raises(errors.MemberOutputsError, match=r"odd"):
    fu.gaussian_mixture().apply((), jnp.zeros((2, 3, 3)))
  with pytest.raises(errors.MemberOutputsError, match=r"\(2, 3, 1\).*\(2, 3, 2\)"):
    fu.gaussian_mixture().apply((), (jnp.zeros((2, 3, 1)), jnp.zeros((2, 3, 2))))
  with pytest.raises(errors.MemberOutputsError, match=r"\[M, B, C\].*\(3, 4\)"):
    fu.weighted_mean().apply((), jnp.zeros((3, 4)))
  with pytest.raises(errors.WeightsError, match=r"got 2 weights.*M=3"):
    fu.weighted_mean([1.0, 1.0]).apply((), jnp.zeros((3, 4, 1)))
