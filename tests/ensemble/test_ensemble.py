"""The ensemble contract: stacked params [M, ...], outputs [M, B, C]."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn
from flax import nnx

import fusionjax as fj
from fusionjax import errors, models

X = jnp.asarray(np.random.default_rng(0).normal(size=(6, 8, 8, 1)), jnp.float32)


def _members_differ(params, size):
  flat = np.concatenate([np.asarray(l).reshape(size, -1)
                         for l in jax.tree_util.tree_leaves(params)], axis=1)
  return all(not np.allclose(flat[i], flat[j])
             for i in range(size) for j in range(i + 1, size))


class Lin(nnx.Module):

  def __init__(self, rngs):
    self.lin = nnx.Linear(64, 10, rngs=rngs)
    self.bn = nnx.BatchNorm(10, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)

  def __call__(self, x):
    return self.drop(self.bn(self.lin(x.reshape(x.shape[0], -1))))


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_stacked_params_and_outputs(kind):
  m = 4
  ens = (fj.ensemble.from_linen(models.MLP(10, (16,)), m) if kind == "linen"
         else fj.ensemble.from_nnx(Lin, m))
  v = ens.init(jax.random.key(0), X[:1])
  chex.assert_tree_shape_prefix(v["params"], (m,))
  assert _members_differ(v["params"], m), "members must differ after init"
  out, _ = ens.apply(v, X)
  chex.assert_shape(out, (m, 6, 10))
  # Member m of the stacked apply is exactly member m applied alone.
  single = jax.tree.map(lambda a: a[2], v)
  ens1 = (fj.ensemble.from_linen(models.MLP(10, (16,)), 1) if kind == "linen"
          else fj.ensemble.from_nnx(Lin, 1))
  out1, _ = ens1.apply(jax.tree.map(lambda a: a[None], single), X)
  np.testing.assert_allclose(out[2], out1[0], rtol=1e-5, atol=1e-5)
  assert ens.names == tuple(f"{ens.names[0][:-1]}{i}" for i in range(m))


def test_same_key_same_members_different_key_different():
  ens = fj.ensemble.from_linen(models.MLP(10, (16,)), 3)
  a = ens.init(jax.random.key(1), X[:1])
  b = ens.init(jax.random.key(1), X[:1])
  c = ens.init(jax.random.key(2), X[:1])
  chex.assert_trees_all_equal(a, b)
  assert not np.allclose(a["params"]["Dense_0"]["kernel"], c["params"]["Dense_0"]["kernel"])


def test_per_member_batches():
  m = 3
  ens = fj.ensemble.from_linen(models.MLP(10, (16,)), m)
  v = ens.init(jax.random.key(0), X[:1])
  xs = jnp.stack([X, X[::-1], X * 2])
  out, _ = ens.apply(v, xs, per_member=True)
  shared, _ = ens.apply(v, X)
  np.testing.assert_allclose(out[0], shared[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out[1], shared[1][::-1], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_heterogeneous_groups_cnn_and_gru():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 28, 28, 1)), jnp.float32)
  ens = fj.ensemble.groups(cnn=fj.ensemble.from_linen(models.CNN(10, (4, 8), 16), 3),
                           gru=fj.ensemble.from_linen(models.RowGRU(10, 8), 2))
  assert ens.size == 5
  assert ens.names == ("cnn/0", "cnn/1", "cnn/2", "gru/0", "gru/1")
  assert ens.groups == {"cnn": (0, 3), "gru": (3, 5)}
  v = ens.init(jax.random.key(0), x[:1])
  chex.assert_tree_shape_prefix(v["params"]["cnn"], (3,))
  chex.assert_tree_shape_prefix(v["params"]["gru"], (2,))
  out, _ = ens.apply(v, x)
  chex.assert_shape(out, (5, 4, 10))
  (lo, hi), gv = fj.ensemble.select_group(ens, v, "gru")
  gru_out, _ = fj.ensemble.from_linen(models.RowGRU(10, 8), 2).apply(gv, x)
  np.testing.assert_allclose(out[lo:hi], gru_out, rtol=1e-5, atol=1e-5)
  with pytest.raises(errors.UnknownMemberError, match="'lstm'.*'cnn', 'gru'"):
    fj.ensemble.select_group(ens, v, "lstm")


@pytest.mark.slow
def test_dropout_key_per_member_and_batchnorm_per_member():
  m = 3
  ens = fj.ensemble.from_linen(models.MLP(10, (32,), dropout=0.5), m)
  v = ens.init(jax.random.key(0), X[:1])
  same = jax.tree.map(lambda a: jnp.broadcast_to(a[:1], a.shape), v)  # identical members
  out, _ = ens.apply(same, X, key=jax.random.key(3), train=True)
  assert not np.allclose(out[0], out[1]), "each member needs its own dropout key"
  out_eval, _ = ens.apply(same, X, train=False)
  np.testing.assert_allclose(out_eval[0], out_eval[1], rtol=1e-6)
  # BatchNorm: per-member statistics, updated in train mode from each member's batch.
  res = fj.ensemble.from_linen(models.ResNet(10, (1,), 4), 2)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 2, 8, 8, 3)), jnp.float32)
  rv = res.init(jax.random.key(0), x[0, :1])
  _, new_state = res.apply(rv, x * jnp.array([1.0, 5.0])[:, None, None, None, None],
                           train=True, per_member=True)
  mean = new_state["batch_stats"]["BatchNorm_0"]["mean"]
  chex.assert_shape(mean, (2, 4))
  assert not np.allclose(mean[0], mean[1])


@pytest.mark.slow
def test_bad_input_errors():
  with pytest.raises(errors.EnsembleSizeError, match="size=0"):
    fj.ensemble.from_linen(models.MLP(10), 0)
  ens = fj.ensemble.from_linen(models.MLP(10, (8,)), 3)
  v = ens.init(jax.random.key(0), X[:1])
  single = jax.tree.map(lambda a: a[0], v)
  with pytest.raises(errors.MemberAxisError, match=r"\[M=3, \.\.\.\]"):
    ens.apply(single, X)
  with pytest.raises(errors.BatchShapeError, match=r"\[M=3, B, \.\.\.\]"):
    ens.apply(v, X, per_member=True)
  g = fj.ensemble.groups(a=fj.ensemble.from_linen(models.MLP(10, (8,)), 1),
                         b=fj.ensemble.from_linen(models.MLP(7, (8,)), 1))
  gv = g.init(jax.random.key(0), X[:1])
  with pytest.raises(errors.GroupShapeError, match=r"'a': \(6, 10\).*'b': \(6, 7\)"):
    g.apply(gv, X)


class ConvBN(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.Dropout(0.3, deterministic=not train)(x)
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def _linen_member_init(module):
  def member_init(key, x):
    v = module.init({"params": key, "dropout": jax.random.fold_in(key, 1)}, x)
    return {"params": v["params"], "state": {k: c for k, c in v.items() if k != "params"}}
  return member_init


def _nnx_member_init(key, x):
  del x
  _, params, rest = nnx.split(Lin(nnx.Rngs(params=key, dropout=key)), nnx.Param, ...)
  return {"params": nnx.to_pure_dict(params), "state": nnx.to_pure_dict(rest)}


@pytest.mark.slow
@pytest.mark.parametrize("m", [1, 5])
@pytest.mark.parametrize("kind", ["mlp", "cnn", "conv_bn_dropout", "nnx"])
def test_init_maps_members_with_the_bits_of_vmap(kind, m):
  """``init`` runs ``lax.map`` over the member keys (it compiles 2-4x faster);
  the values must be exactly those of ``vmap``, which it replaced."""
  member_init = {"mlp": lambda: _linen_member_init(models.MLP(10, (32, 16))),
                 "cnn": lambda: _linen_member_init(models.CNN(10, (4, 8), 16)),
                 "conv_bn_dropout": lambda: _linen_member_init(ConvBN()),
                 "nnx": lambda: _nnx_member_init}[kind]()
  x = jnp.zeros((1, 28, 28, 1) if kind == "cnn" else (1, 8, 8, 1), jnp.float32)
  ens = fj.ensemble.from_fn(member_init, lambda v, x, k, t: (x, v["state"]), m)
  got = jax.jit(ens.init)(jax.random.key(7), x)
  want = jax.jit(lambda key, x: jax.vmap(member_init, in_axes=(0, None))(
      jax.random.split(key, m), x))(jax.random.key(7), x)
  chex.assert_trees_all_equal(got, want)  # exact, no tolerance
  chex.assert_tree_shape_prefix(got["params"], (m,))


@pytest.mark.slow
def test_from_nnx_leaks_no_tracer():
  """from_nnx caches the module's structure; a traced call must not write its
  tracers into that cache (jax.checking_leaks raised 'Leaked trace BatchTrace')."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  ens = fj.ensemble.from_nnx(
      lambda rngs: nnx.Sequential(nnx.Linear(5, 8, rngs=rngs), nnx.Dropout(0.2, rngs=rngs),
                                  nnx.Linear(8, 3, rngs=rngs)), size=3)
  x = jnp.ones((2, 5))
  with jax.checking_leaks():
    v = ens.init(jax.random.key(0), x)
    train_out, _ = jax.jit(lambda v, x: ens.apply(v, x, key=jax.random.key(1), train=True))(v, x)
    eval_out, _ = jax.jit(lambda v, x: ens.apply(v, x))(v, x)
  assert train_out.shape == eval_out.shape == (3, 2, 3)
