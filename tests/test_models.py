"""The reference networks: the reshape max-pool against flax's, and shapes."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax

import fusionjax as fj
from fusionjax import errors, models


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


@pytest.mark.slow
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


@pytest.mark.parametrize("module, shape, match", [
    (models.RowGRU(10, 8), (6, 64), r"RowGRU .* rank 3 or rank 4; got .*\(6, 64\).*\[B, T, D // T\]"),
    (models.RowLSTM(10, 8), (6, 64), r"RowLSTM .*\(6, 64\)"),
    (models.CNN(10, (4,), 8), (6, 50), r"CNN takes .*\(6, 50\).*CNN1D"),
    (models.CNN1D(10, (4,), 8), (6, 8, 8, 1), r"CNN1D takes .*\(6, 8, 8, 1\).*models.CNN"),
    (models.ResNet(10), (6, 32, 32), r"ResNet takes .* rank 4; got .*\(6, 32, 32\)"),
    (models.MLP(10, (4,)), (64,), r"MLP takes .*\(64,\).*x\[None\]"),
])
def test_models_check_their_input_rank(module, shape, match):
  """A wrong rank is a documented error, not a silently wrong shape: RowGRU given
  [B, D] used to read the batch as time and return [C] per member."""
  with pytest.raises(errors.InputRankError, match=match):
    module.init(jax.random.key(0), jnp.ones(shape))


def test_row_rnn_ensemble_keeps_the_batch_axis():
  ens = fj.ensemble.from_linen(models.RowGRU(10, 8), 3)
  x = jnp.ones((5, 6, 4))  # [B, T, D]
  out, _ = ens.apply(ens.init(jax.random.key(0), x[:1]), x)
  assert out.shape == (3, 5, 10)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(4, 50), (4, 50, 2)])
def test_cnn1d_on_signals_trains_in_the_step(shape):
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  y = jnp.array([0, 1, 2, 0])
  ens = fj.ensemble.from_linen(models.CNN1D(3, (4, 8), 16), 2)
  trainer = fj.train.make_trainer(ens, optax.adam(1e-2), x_example=x[:1])
  assert trainer.layout == "loop"  # convolutional members on CPU
  state = trainer.init(jax.random.key(0), x[:1])
  losses = []
  for _ in range(20):
    state, logs = trainer.step(state, {"x": x, "y": y})
    losses.append(np.asarray(logs["member_loss"]))
  assert logs["member_loss"].shape == (2,)
  assert np.all(losses[-1] < 0.5 * losses[0])


def test_max_pool_of_signals_equals_flax():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 11, 3)), jnp.float32)
  np.testing.assert_array_equal(models.max_pool(x, 2), nn.max_pool(x, (2,), strides=(2,)))
