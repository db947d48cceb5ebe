"""The reference networks: max-pool and convolution against flax's and lax's, and shapes."""
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


@pytest.mark.parametrize("shape,window", [((2, 6, 6, 3), 2), ((2, 7, 5, 2), 3), ((3, 9, 2), 2)])
def test_max_pool_ties_give_flax_gradient(shape, window):
  """With ties everywhere (values from {0, 1}, zeros after a ReLU), the first
  maximum in window order takes the gradient, as flax's select_and_scatter."""
  x = jax.random.bernoulli(jax.random.key(3), 0.3, shape).astype(jnp.float32)
  d = len(shape) - 2
  ref = lambda v: nn.max_pool(v, (window,) * d, strides=(window,) * d)
  ct = jax.random.normal(jax.random.key(4), ref(x).shape)
  chex.assert_trees_all_equal(models.max_pool(x, window), ref(x))
  g_ref = jax.grad(lambda v: jnp.sum(ref(v) * ct))(x)
  g_ours = jax.grad(lambda v: jnp.sum(models.max_pool(v, window) * ct))(x)
  chex.assert_trees_all_equal(g_ours, g_ref)


def test_max_pool_tie_gradient_goes_to_the_first_maximum():
  x = jnp.zeros((1, 2, 2, 1)).at[0, 0, 1, 0].set(1.0).at[0, 1, 0, 0].set(1.0)
  g = jax.grad(lambda v: models.max_pool(v, 2).sum())(x)
  np.testing.assert_array_equal(np.asarray(g)[0, ..., 0], [[0.0, 1.0], [0.0, 0.0]])


def test_max_pool_propagates_nan_and_rejects_a_rank_without_channels():
  x = jnp.ones((1, 2, 2, 1)).at[0, 1, 1, 0].set(jnp.nan)
  assert np.isnan(np.asarray(models.max_pool(x, 2))).all()
  with pytest.raises(errors.InputRankError, match=r"max_pool takes .*\(28, 28\).*x\[None"):
    models.max_pool(jnp.ones((28, 28)), 2)


_CONV_CASES = [
    ((4, 12, 10, 1), (5, 5, 1, 6), "SAME"), ((4, 12, 10, 1), (3, 5, 1, 2), "VALID"),
    ((4, 12, 10, 1), (3, 3, 1, 4), ((2, 0), (1, 3))), ((3, 20, 1), (5, 1, 4), "SAME"),
    ((2, 6, 7, 5, 1), (3, 3, 3, 1, 2), "SAME"),
]


@pytest.mark.parametrize("lhs_shape,rhs_shape,padding", _CONV_CASES)
def test_conv_general_dilated_equals_lax(lhs_shape, rhs_shape, padding):
  """The one-channel fast path: XLA's convolution's values and gradients."""
  n = len(lhs_shape) - 2
  spec = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"),
          3: ("NDHWC", "DHWIO", "NDHWC")}[n]
  lhs = jax.random.normal(jax.random.key(0), lhs_shape)
  rhs = jax.random.normal(jax.random.key(1), rhs_shape)
  dn = jax.lax.conv_dimension_numbers(lhs_shape, rhs_shape, spec)
  ref = lambda a, b: jax.lax.conv_general_dilated(a, b, (1,) * n, padding, dimension_numbers=dn)
  ours = lambda a, b: models.conv_general_dilated(a, b, (1,) * n, padding, dimension_numbers=dn)
  out = jax.jit(ours)(lhs, rhs)
  chex.assert_trees_all_close(out, ref(lhs, rhs), rtol=1e-5, atol=1e-5)
  ct = jax.random.normal(jax.random.key(2), out.shape)
  grads = lambda f: jax.jit(jax.grad(lambda a, b: jnp.sum(f(a, b) * ct), (0, 1)))(lhs, rhs)
  chex.assert_trees_all_close(grads(ours), grads(ref), rtol=1e-5, atol=1e-4)
  # Under vmap over kernels (the stacked ensemble: one input, M kernels).
  rhs3 = jax.random.normal(jax.random.key(3), (3,) + rhs_shape)
  chex.assert_trees_all_close(jax.vmap(lambda b: ours(lhs, b))(rhs3),
                              jax.vmap(lambda b: ref(lhs, b))(rhs3), rtol=1e-5, atol=1e-5)


def test_conv_general_dilated_fast_path_only_on_cpu_and_one_channel():
  """Other platforms, several input channels, strides: XLA's convolution itself."""
  lhs, rhs = jnp.ones((2, 8, 8, 1)), jnp.ones((5, 5, 1, 4))
  dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  f = lambda a, b, s=(1, 1): models.conv_general_dilated(a, b, s, "SAME", dimension_numbers=dn)
  text = lambda fn, *a, p="cpu": jax.jit(fn).trace(*a).lower(lowering_platforms=(p,)).as_text()
  assert "convolution" not in text(f, lhs, rhs)
  assert "convolution" in text(f, lhs, rhs, p="cuda")
  assert "dot_general" not in text(f, lhs, rhs, p="cuda")
  strided = lambda a, b: f(a, b, (2, 2))
  assert "convolution" in text(strided, lhs, rhs)
  chex.assert_trees_all_equal(
      strided(lhs, rhs),
      jax.lax.conv_general_dilated(lhs, rhs, (2, 2), "SAME", dimension_numbers=dn))
  three = jnp.ones((2, 8, 8, 3))
  dn3 = jax.lax.conv_dimension_numbers(three.shape, (5, 5, 3, 4), ("NHWC", "HWIO", "NHWC"))
  g = lambda a, b: models.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=dn3)
  assert "convolution" in text(g, three, jnp.ones((5, 5, 3, 4)))


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
