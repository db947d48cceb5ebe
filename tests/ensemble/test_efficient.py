"""Efficient members (BatchEnsemble, Packed-Ensembles, MC-dropout): the [M, B, C] contract."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fusionjax as fj
from fusionjax import errors, models

RNG = np.random.default_rng(0)
IMG = jnp.asarray(RNG.normal(size=(5, 12, 12, 1)), jnp.float32)
Y = jnp.asarray(RNG.integers(0, 10, 5), jnp.int32)
M = 3

KINDS = {
    "be_mlp": lambda: fj.ensemble.batch_ensemble(models.MLP(10, (16,), dropout=0.2), M),
    "be_cnn": lambda: fj.ensemble.batch_ensemble(models.CNN(10, (4, 8), 16), M),
    "packed_cnn": lambda: fj.ensemble.packed(models.CNN(10, (4, 8), 16), M, alpha=2, gamma=2),
    "mc_dropout": lambda: fj.ensemble.mc_dropout(models.CNN(10, (4,), 16), M, rate=0.5),
}


def run_o0(f, *args):
  """``f(*args)`` as one program compiled at XLA:CPU -O0: a quarter of the compile
  time of -O3 for these small convolutional programs (4x in CPU seconds), and
  tests compare values, not speed."""
  return jax.jit(f).lower(*args).compile({"xla_backend_optimization_level": 0})(*args)


def _init_apply(ens):
  """``(variables, eval outputs, train outputs)`` in one program."""

  def run(key, x):
    v = ens.init(key, x[:1])
    return v, ens.apply(v, x)[0], ens.apply(v, x, key=jax.random.key(1), train=True)[0]

  return run_o0(run, jax.random.key(0), IMG)


def _close(a, b, rtol=1e-6, atol=1e-6):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", ["be_cnn", "packed_cnn", "mc_dropout"])
def test_outputs_are_member_outputs_and_members_differ(name):
  ens = KINDS[name]()
  assert ens.shared in fj.ensemble._efficient.KINDS and ens.member_apply is None
  _, out, out_t = _init_apply(ens)
  assert out.shape == (M, 5, 10) and ens.size == M and len(ens.names) == M
  assert float(jnp.abs(out[0] - out[1]).max()) > 1e-3
  assert out_t.shape == (M, 5, 10) and bool(jnp.all(jnp.isfinite(out_t)))
  # Every fusion and metric reads them as any ensemble's outputs.
  fused = fj.fusion.mean().apply((), out)
  assert fused.shape == (5, 10)
  assert np.isfinite(float(fj.metrics.ece(fused, Y))) and fj.metrics.nll(out, Y).shape == (M,)
  assert fj.fusion.hard_vote().apply((), out).shape == (5, 10)


def test_batch_ensemble_with_unit_factors_is_the_shared_network_per_member():
  module = models.MLP(10, (16, 8))
  ens = fj.ensemble.batch_ensemble(module, M, fast_std=0.0)
  v, out, _ = _init_apply(ens)
  shared = jax.tree.map(lambda a: a, v["params"])
  for layer in shared.values():
    assert layer["fast_r"].shape[0] == M and float(jnp.abs(layer["fast_r"] - 1).max()) == 0
    for k in ("fast_r", "fast_s", "member_bias"):
      del layer[k]
  want = run_o0(module.apply, {"params": shared}, IMG)
  for m in range(M):
    _close(out[m], want, rtol=1e-5)


def test_batch_ensemble_member_factors_select_the_member():
  """Member m's output is the shared network with member m's factors folded into W."""
  module = models.MLP(4, ())
  ens = fj.ensemble.batch_ensemble(module, M)
  v, out, _ = _init_apply(ens)
  p = v["params"]["Dense_0"]
  flat = IMG.reshape(5, -1)
  for m in range(M):
    w = p["kernel"] * jnp.outer(p["fast_r"][m], p["fast_s"][m])
    _close(out[m], flat @ w + p["bias"] * p["fast_s"][m] + p["member_bias"][m], rtol=1e-4,
           atol=1e-5)


class _DenseBN(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(8)(x.reshape((x.shape[0], -1)))
    x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Dense(3)(nn.relu(x))


def test_batch_ensemble_updates_batchnorm_state_in_training():
  ens = fj.ensemble.batch_ensemble(_DenseBN(), M)
  v = run_o0(ens.init, jax.random.key(0), IMG[:1])
  assert "batch_stats" in v["state"]
  _, new_state = run_o0(lambda v, x: ens.apply(v, x, train=True), v, IMG)
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new_state, v["state"])
  assert max(jax.tree_util.tree_leaves(moved)) > 0


@pytest.mark.parametrize("module", [models.CNN(10, (4, 8), 16), models.MLP(10, (16, 8))],
                         ids=["cnn", "mlp"])
def test_packed_with_one_member_alpha_1_gamma_1_is_the_plain_network(module):
  ens = fj.ensemble.packed(module, 1, alpha=1, gamma=1)
  v, out, _ = _init_apply(ens)
  plain = jax.eval_shape(module.init, jax.random.key(1), IMG[:1])["params"]
  # The same layers in the same order: copy the packed weights into the plain network.
  packed_layers = list(v["params"].values())
  copied = {}
  for (lname, layer), src in zip(plain.items(), packed_layers):
    copied[lname] = {k: src[k].reshape(layer[k].shape) for k in layer}
  _close(out[0], run_o0(module.apply, {"params": copied}, IMG), rtol=1e-5)


def test_packed_members_are_independent_networks():
  ens = fj.ensemble.packed(models.CNN(10, (4, 8), 16), M, alpha=2, gamma=1)
  v = jax.eval_shape(ens.init, jax.random.key(0), IMG[:1])
  v = jax.tree.map(lambda a: jnp.ones(a.shape, a.dtype), v)
  grads = run_o0(jax.grad(
      lambda p: jnp.sum(ens.apply({"params": p, "state": {}}, IMG)[0][0])), v["params"])
  # Member 0's output reads none of the other members' blocks.
  hidden = grads["PackedDense_0"]["kernel"]  # [M * gamma, d_in, d_out]
  assert float(jnp.abs(hidden[1:]).max()) == 0 and float(jnp.abs(hidden[0]).max()) > 0
  conv1 = grads["Conv_1"]["kernel"]  # grouped: output channels in M blocks
  blk = conv1.shape[-1] // M
  assert float(jnp.abs(conv1[..., blk:]).max()) == 0


def test_mc_dropout_members_are_dropout_samples():
  mlp = models.MLP(10, (16,))
  ens0 = fj.ensemble.mc_dropout(mlp, M, rate=0.0)
  ens = fj.ensemble.mc_dropout(mlp, M, rate=0.5)
  ens_m = fj.ensemble.mc_dropout(mlp, M, rate=0.5, train_samples=M)
  k = jax.random.key(5)

  def run(x):
    v = ens0.init(jax.random.key(0), x[:1])
    return (ens0.apply(v, x)[0], ens.apply(v, x)[0], ens.apply(v, x)[0],
            ens.apply(v, x, key=k)[0], ens.apply(v, x, key=k, train=True)[0],
            ens_m.apply(v, x, key=k, train=True)[0])

  out0, out, again, other, out_t, out_m = run_o0(run, IMG)
  for m in range(1, M):
    _close(out0[m], out0[0])  # rate 0: identical members
  assert float(jnp.abs(out[0] - out[1]).max()) > 1e-3
  _close(again, out)  # no key: the same samples every call
  assert float(jnp.abs(other - out).max()) > 1e-3
  # Training draws one sample (train_samples=1), shared by the M member outputs.
  _close(out_t[1], out_t[0])
  assert float(jnp.abs(out_m[0] - out_m[1]).max()) > 1e-3


def test_per_member_operations_raise_shared_weights_error():
  ens = KINDS["be_mlp"]()
  v = jax.eval_shape(ens.init, jax.random.key(0), IMG[:1])
  with pytest.raises(errors.SharedWeightsError, match="batch_ensemble.*share"):
    ens.apply(v, jnp.stack([IMG] * M), per_member=True)
  with pytest.raises(errors.SharedWeightsError, match="member_map"):
    ens.member_map(optax.adam(1e-3).init, v["params"])
  with pytest.raises(errors.SharedWeightsError, match="batch_ensemble"):
    fj.train.per_member(optax.adam(1e-3), ens).init(v["params"])


def test_bad_configurations_name_the_fix():
  with pytest.raises(errors.EfficientEnsembleConfigError, match="RowRNN.*batch_ensemble"):
    fj.ensemble.packed(models.RowGRU(10, 8), M)
  with pytest.raises(errors.EfficientEnsembleConfigError, match="alpha"):
    fj.ensemble.packed(models.MLP(10), M, alpha=0)
  with pytest.raises(errors.EfficientEnsembleConfigError, match="dropout"):
    fj.ensemble.mc_dropout(models.RowGRU(10, 8), M, rate=0.5)
  with pytest.raises(errors.EfficientEnsembleConfigError, match="train_samples"):
    fj.ensemble.mc_dropout(models.MLP(10), M, train_samples=2)
  with pytest.raises(errors.EfficientEnsembleConfigError, match="batch_stats"):
    jax.eval_shape(fj.ensemble.mc_dropout(_DenseBN(), M).init, jax.random.key(0), IMG[:1])
  with pytest.raises(errors.EfficientEnsembleConfigError, match="fast_std"):
    fj.ensemble.batch_ensemble(models.MLP(10), M, fast_std=-1.0)
  with pytest.raises(errors.EnsembleSizeError):
    fj.ensemble.batch_ensemble(models.MLP(10), 0)
