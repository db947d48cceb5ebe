"""The reference networks: the reshape max-pool against flax's, and shapes."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fusionjax import models


@pytest.mark.parametrize("shape,window", [
    ((3, 28, 28, 4), 2), ((2, 7, 7, 3), 2), ((2, 9, 6, 1), 2), ((1, 2, 2, 5), 2),
    ((3, 28, 28, 4), 3), ((2, 7, 7, 3), 3), ((2, 9, 6, 1), 3),
])
def test_max_pool_matches_flax_values_and_gradient(shape, window):
  # Distinct values: no ties, so both gradients put the whole cotangent on the max.
  x = jax.random.permutation(jax.random.key(0), np.prod(shape)).reshape(shape)
  x = x.astype(jnp.float32) / np.prod(shape) - 0.5
  ref = lambda v: nn.max_pool(v, (window, window), strides=(window, window))
  ours = lambda v: models.max_pool(v, window)
  chex.assert_trees_all_equal(ours(x), ref(x))
  ct = jax.random.normal(jax.random.key(1), ref(x).shape)
  g_ref = jax.grad(lambda v: jnp.sum(ref(v) * ct))(x)
  g_ours = jax.grad(lambda v: jnp.sum(ours(v) * ct))(x)
  chex.assert_trees_all_close(g_ours, g_ref, rtol=0, atol=0)


def test_max_pool_tie_gradient_is_a_subgradient():
  x = jnp.zeros((1, 2, 2, 1)).at[0, 0, 1, 0].set(1.0).at[0, 1, 0, 0].set(1.0)
  g = jax.grad(lambda v: models.max_pool(v, 2).sum())(x)
  # The two tied maxima share the gradient; the total is that of the max.
  np.testing.assert_allclose(np.asarray(g).sum(), 1.0)
  assert float(g[0, 0, 0, 0]) == 0.0 and float(g[0, 1, 1, 0]) == 0.0


def test_cnn_logits_equal_a_flax_max_pool_twin():
  """``models.CNN`` computes the function of the same net written with nn.max_pool."""

  class Twin(nn.Module):

    @nn.compact
    def __call__(self, x):
      for width in (4, 6):
        x = nn.relu(nn.Conv(width, (5, 5), padding="SAME")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = nn.relu(nn.Dense(16)(x.reshape((x.shape[0], -1))))
      return nn.Dense(10)(x)

  net = models.CNN(10, (4, 6), 16)
  x = jax.random.uniform(jax.random.key(2), (5, 28, 28, 1))
  params = net.init(jax.random.key(3), x)
  # Same parameter tree: Conv_0, Conv_1, Dense_0, Dense_1 in both.
  chex.assert_trees_all_equal_shapes(params, Twin().init(jax.random.key(3), x))
  chex.assert_trees_all_close(net.apply(params, x), Twin().apply(params, x), rtol=1e-6, atol=1e-6)
  loss = lambda m: lambda p: jnp.sum(jax.nn.log_softmax(m.apply(p, x))[:, 3])
  chex.assert_trees_all_close(jax.grad(loss(net))(params), jax.grad(loss(Twin()))(params),
                              rtol=1e-5, atol=1e-6)
