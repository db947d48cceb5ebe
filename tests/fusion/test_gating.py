"""gating(): a mixture of experts weighted by a network of the input."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fusionjax import errors
from fusionjax import fusion as fu


def test_gating_formula(logits, key):
  z = logits(3, 6, 4)
  x = jax.random.normal(key, (6, 2, 2))
  f = fu.gating(3, hidden=None)  # linear gate
  params = f.init(key, z, x=x)
  layer = params["gate"][0]
  assert layer["w"].shape == (4, 3)
  g = jax.nn.softmax(x.reshape(6, -1) @ layer["w"] + layer["b"])  # [B, M]
  want = np.einsum("bm,mbc->bc", g, jax.nn.softmax(z.astype(np.float64)))
  np.testing.assert_allclose(np.exp(jax.jit(f.apply)(params, z, x=x)), want,
                             rtol=1e-5, atol=1e-6)


def test_gate_learns_which_member_to_trust(key):
  """Member 0 is right where x > 0, member 1 where x < 0."""
  rng = np.random.default_rng(0)
  n = 128
  x = rng.standard_normal((n, 1)).astype(np.float32)
  y = rng.integers(0, 2, n)
  right, wrong = 4 * np.eye(2)[y], 4 * np.eye(2)[1 - y]
  z = np.stack([np.where(x > 0, right, wrong),
                np.where(x > 0, wrong, right)]).astype(np.float32)
  f = fu.gating(2, hidden=None)  # a linear gate suffices (and compiles fast)

  def nll(log_probs, labels):  # a custom loss (here the default one)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], 1))

  params, losses = fu.fit(f, z, y, key, 100, optax.adam(0.1), x=x, loss=nll)
  assert losses[-1] < losses[0]
  acc = (jax.jit(f.apply)(params, z, x=x).argmax(-1) == y).mean()
  assert acc > 0.9


def test_gating_needs_x(logits, key):
  z = logits(2, 6, 3)
  f = fu.gating(2)
  with pytest.raises(errors.FusionInputError, match="x=None"):
    f.init(key, z)
  params = f.init(key, z, x=jnp.zeros((6, 5)))
  with pytest.raises(errors.FusionInputError, match=r"\(7, 5\).*B=6"):
    f.apply(params, z, x=jnp.zeros((7, 5)))
  with pytest.raises(errors.FusionInputError, match=r"4 features.*built for 5"):
    f.apply(params, z, x=jnp.zeros((6, 2, 2)))
  with pytest.raises(errors.MemberOutputsError, match=r"num_members=2.*M=3"):
    f.apply(params, logits(3, 6, 3), x=jnp.zeros((6, 5)))
