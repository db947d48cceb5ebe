"""mean() and mean_logits() against float64 numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from fusionjax import errors
from fusionjax import fusion as fu


def _softmax64(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_mean_is_log_of_mean_probability(logits):
  z = logits(5, 7, 4)
  out = fu.mean().apply((), z)
  np.testing.assert_allclose(np.exp(out), _softmax64(z).mean(0), rtol=1e-6,
                             atol=1e-6)


def test_mean_logits_is_log_softmax_of_mean_logit(logits):
  z = logits(5, 7, 4)
  out = fu.mean_logits().apply((), z)
  np.testing.assert_allclose(np.exp(out), _softmax64(z.astype(np.float64)
                                                     .mean(0)),
                             rtol=1e-6, atol=1e-6)


def test_single_member_is_its_log_softmax(logits):
  z = logits(1, 5, 3)
  for f in (fu.mean(), fu.mean_logits()):
    np.testing.assert_allclose(f.apply((), z), jax.nn.log_softmax(z[0]),
                               rtol=1e-6, atol=1e-6)


def test_mean_of_confident_disagreeing_members_is_not_minus_inf():
  # log(mean(softmax)) would give log(0) = -inf for class 1 in float32 here
  z = jnp.array([[[1e4, -1e4]], [[-1e4, 1e4]]])
  out = jax.jit(fu.mean().apply)((), z)
  np.testing.assert_allclose(out, np.log([[0.5, 0.5]]), rtol=1e-6)
  g = jax.jit(jax.grad(lambda z: fu.mean().apply((), z)[0, 0]))(z)
  assert np.all(np.isfinite(g))


@settings(max_examples=25, deadline=None, database=None)
@given(st.lists(st.floats(-1e4, 1e4, width=32), min_size=6, max_size=6))
def test_mean_is_normalised_and_finite(vals):
  z = jnp.asarray(vals, jnp.float32).reshape(3, 1, 2)
  out = fu.mean().apply((), z)
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(jax.nn.logsumexp(out, -1), 0.0, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 10), (2, 3, 4, 5), ()])
def test_bad_member_outputs_name_the_shape(shape):
  for f in (fu.mean(), fu.mean_logits()):
    with pytest.raises(errors.MemberOutputsError,
                       match=r"\[M, B, C\].*" + str(shape).replace("(", r"\(")
                       .replace(")", r"\)")):
      f.apply((), jnp.zeros(shape))


def test_integer_member_outputs_are_rejected():
  with pytest.raises(errors.MemberOutputsError, match="int32"):
    fu.mean().apply((), jnp.zeros((2, 3, 4), jnp.int32))
