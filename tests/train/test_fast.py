"""The chunked layouts of the step and of predict equal the plain vmapped ones."""
import warnings

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fusionjax as fj
from fusionjax import models
from fusionjax.train import _fast

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(16, 8, 8, 1)), jnp.float32)
Y = jnp.asarray(RNG.integers(0, 10, 16), jnp.int32)


class BNDrop(nn.Module):
  """BatchNorm statistics (member state) and dropout (member keys).

  No bias before BatchNorm: its gradient is zero up to rounding, which Adam
  would blow up to +-lr in either layout, at random.
  """

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(12, use_bias=False)(x.reshape((x.shape[0], -1)))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.Dropout(0.3, deterministic=not train)(nn.relu(x))
    return nn.Dense(10)(x)


def _run(ens, tx, chunk, steps=3, guard=True, per_member=False, poison=None, batches=None):
  state = fj.train.init(ens, tx, jax.random.key(0), X[:1], guard=guard)
  if poison is not None:  # member `poison` gets NaN kernels: its update is skipped
    params = jax.tree.map(lambda a: a.at[poison].set(jnp.nan) if a.ndim >= 3 else a,
                          state.params["members"])
    state = state._replace(params={"members": params, "fusion": ()})
  step = fj.train.make_step(ens, tx, member_chunk=chunk, guard=guard, per_member=per_member)
  logs = None
  for b in batches or [{"x": X, "y": Y}] * steps:
    state, logs = step(state, b)
  return state, logs


def _assert_same(a, b):
  (sa, la), (sb, lb) = a, b
  assert jax.tree.structure(sa) == jax.tree.structure(sb)
  chex.assert_trees_all_close(sa.params, sb.params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(sa.opt_state, sb.opt_state, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(sa.state, sb.state, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(la, lb, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(jax.random.key_data(sa.key), jax.random.key_data(sb.key))
  assert int(sa.step) == int(sb.step)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, "auto"])
@pytest.mark.parametrize("guard", [True, False])
def test_chunked_step_equals_vmapped_step(chunk, guard):
  ens = fj.ensemble.from_linen(models.MLP(10, (32,)), 5)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
  _assert_same(_run(ens, tx, chunk, guard=guard), _run(ens, tx, None, guard=guard))


@pytest.mark.parametrize("chunk", [1, 2])
def test_batchnorm_state_and_dropout_keys(chunk):
  ens = fj.ensemble.from_linen(BNDrop(), 3)
  tx = optax.adam(1e-2)
  _assert_same(_run(ens, tx, chunk), _run(ens, tx, None))


@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_nonfinite_member_keeps_its_state_in_every_layout(chunk):
  ens = fj.ensemble.from_linen(models.MLP(10, (32,)), 4)
  tx = optax.adam(1e-2)
  got, want = _run(ens, tx, chunk, poison=1), _run(ens, tx, None, poison=1)
  _assert_same(got, want)
  np.testing.assert_array_equal(got[1]["finite"], [True, False, True, True])


def test_per_member_batches():
  m = 3
  ens = fj.ensemble.from_linen(models.MLP(10, (16,)), m)
  idx = jnp.asarray(RNG.integers(0, 16, (m, 16)))  # a bootstrap sample per member
  batches = [{"x": X[idx], "y": Y[idx]}] * 2
  tx = optax.adam(1e-2)
  _assert_same(_run(ens, tx, 2, per_member=True, batches=batches),
               _run(ens, tx, None, per_member=True, batches=batches))


def test_convolutional_members_use_the_host_layout():
  x = jnp.asarray(RNG.normal(size=(8, 12, 12, 1)), jnp.float32)
  y = jnp.asarray(RNG.integers(0, 10, 8), jnp.int32)
  ens = fj.ensemble.from_linen(models.CNN(10, (4, 8), 16), 3)
  st = fj.train.init(ens, optax.adam(1e-2), jax.random.key(0), x[:1])
  assert _fast.uses_convolution(ens, st.params["members"], st.state, x)
  mlp = fj.ensemble.from_linen(models.MLP(10, (4,)), 2)
  mst = fj.train.init(mlp, optax.adam(1e-2), jax.random.key(0), x[:1])
  assert not _fast.uses_convolution(mlp, mst.params["members"], mst.state, x)
  out = []
  for chunk in ("auto", None):
    state = fj.train.init(ens, optax.adam(1e-2), jax.random.key(0), x[:1])
    step = fj.train.make_step(ens, optax.adam(1e-2), member_chunk=chunk)
    for _ in range(2):
      state, logs = step(state, {"x": x, "y": y})
    out.append((state, logs))
  _assert_same(*out)


class ConvBNDrop(nn.Module):
  """A convolution (host layout) with BatchNorm statistics and dropout."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.Dropout(0.3, deterministic=not train)(nn.relu(x))
    return nn.Dense(10)(models.max_pool(x, 2).reshape((x.shape[0], -1)))


def _conv_batch(m, per_member):
  x = jnp.asarray(RNG.normal(size=(8, 8, 8, 1)), jnp.float32)
  y = jnp.asarray(RNG.integers(0, 10, 8), jnp.int32)
  if not per_member:
    return x, {"x": x, "y": y}
  idx = jnp.asarray(np.random.default_rng(1).integers(0, 8, (m, 8)))
  return x, {"x": x[idx], "y": y[idx]}


@pytest.mark.parametrize("chunk,guard,per_member,m", [
    ("auto", True, False, 3), ("auto", False, False, 3), (2, True, False, 3),
    (2, False, True, 3), ("auto", True, True, 3), ("auto", True, False, 1)])
def test_host_layout_equals_vmapped_step(chunk, guard, per_member, m):
  """Conv members in the host layout (chunks of 1 or 2; one member: one program):
  the vmapped step's state and logs."""
  ens = fj.ensemble.from_linen(ConvBNDrop(), m)
  _, batch = _conv_batch(m, per_member)
  tx, batches = optax.adam(1e-2), [batch] * 2
  _assert_same(_run(ens, tx, chunk, guard=guard, per_member=per_member, batches=batches),
               _run(ens, tx, None, guard=guard, per_member=per_member, batches=batches))


@pytest.mark.parametrize("m,mode", [(1, "pure"), (3, "host")])
def test_conv_members_layout(m, mode):
  """Several conv members: the host loop (in a loop body XLA:CPU's backward
  convolutions are generic). One member: the single program, which has no loop,
  and no start and finish calls around it."""
  ens = fj.ensemble.from_linen(ConvBNDrop(), m)
  _, batch = _conv_batch(m, False)
  tx = optax.adam(1e-2)
  state = fj.train.init(ens, tx, jax.random.key(0), batch["x"][:1])
  chunked = _fast.make_chunked_step(
      ens, fj.train.skip_nonfinite(tx), loss=fj.train.cross_entropy, per_member=False,
      guard=True, guard_ok=lambda o: o.ok, chunk="auto", check=None)
  chunked.jitted()(state, batch)
  assert chunked._mode == mode  # pylint: disable=protected-access


@pytest.mark.parametrize("donate", [True, False])
def test_host_layout_donates_the_state_only_when_asked(donate):
  """The host layout splits the stacked state in a start call (donated with
  ``donate=True``, as the one-program layout's state is) and stacks it back in a
  finish call; jax's warning about donated buffers that change shape is not shown."""
  ens = fj.ensemble.from_linen(ConvBNDrop(), 3)
  _, batch = _conv_batch(3, False)
  tx = optax.adam(1e-2)
  state = fj.train.init(ens, tx, jax.random.key(0), batch["x"][:1])
  before = jax.tree.map(np.asarray, state.params)
  step = fj.train.make_step(ens, tx, donate=donate)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    new, _ = step(state, batch)
    new, _ = step(new, batch)
  kernel = state.params["members"]["Conv_0"]["kernel"]
  assert kernel.is_deleted() == donate
  if not donate:
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, state.params), before)
  assert int(new.step) == 2


@pytest.mark.parametrize("per_member", [False, True])
def test_host_layout_isolates_a_nonfinite_member(per_member):
  """A NaN member is skipped; the others train exactly as they would without it.

  (The vmapped layout does not give this with per-member batches: XLA:CPU's
  kernel gradient of a grouped convolution spreads one member's NaN to every
  member, so its guard skips them all.)
  """
  ens = fj.ensemble.from_linen(ConvBNDrop(), 3)
  x, batch = _conv_batch(3, per_member)
  tx, batches = optax.adam(1e-2), [batch] * 2
  clean, _ = _run(ens, tx, "auto", per_member=per_member, batches=batches)
  state, logs = _run(ens, tx, "auto", per_member=per_member, poison=1, batches=batches)
  np.testing.assert_array_equal(logs["finite"], [True, False, True])
  keep = lambda t: jax.tree.map(lambda a: a[jnp.array([0, 2])], t)
  chex.assert_trees_all_close(keep(state.params), keep(clean.params), rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(keep(state.state), keep(clean.state), rtol=1e-6, atol=1e-7)
  init = fj.train.init(ens, tx, jax.random.key(0), x[:1])
  bias = lambda t: t["members"]["BatchNorm_0"]["bias"][1]
  chex.assert_trees_all_equal(bias(state.params), bias(init.params))


def test_guarded_chunked_step_needs_the_verdict():
  ens = fj.ensemble.from_linen(models.MLP(10, (8,)), 2)
  tx = fj.train.skip_nonfinite(optax.adam(1e-3))
  with pytest.raises(ValueError, match="guard_ok"):
    _fast.make_chunked_step(ens, tx, loss=None, per_member=False, guard=True)


def test_chunked_step_updates_the_state_in_place():
  """No full-size copy of the state: XLA's temporaries stay a few chunks' worth."""
  m = 16
  ens = fj.ensemble.from_linen(models.MLP(10, (256, 256)), m)
  x = jnp.zeros((32, 28, 28, 1))
  batch = {"x": x, "y": jnp.zeros((32,), jnp.int32)}
  for guard in (True, False):
    tx = optax.adam(1e-3)
    state = fj.train.init(ens, tx, jax.random.key(0), x[:1], guard=guard)
    nbytes = sum(l.nbytes for l in jax.tree_util.tree_leaves((state.params, state.opt_state)))
    step = fj.train.make_step(ens, tx, member_chunk=1, guard=guard)
    ma = step.lower(state, batch).compile().memory_analysis()
    assert ma.alias_size_in_bytes >= 0.99 * nbytes, "the state must be donated"
    assert ma.temp_size_in_bytes < nbytes / 4, (ma.temp_size_in_bytes, nbytes)


def test_no_retrace_on_second_call():
  ens = fj.ensemble.from_linen(models.MLP(10, (8,)), 4)
  tx = optax.adam(1e-3)
  state = fj.train.init(ens, tx, jax.random.key(0), X[:1])
  step = fj.train.make_step(ens, tx, member_chunk=2, jit=False)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def jstep(s, b):
    return step(s, b)

  for _ in range(3):
    state, _ = jstep(state, {"x": X, "y": Y})
  assert jstep._cache_size() == 1


@pytest.mark.parametrize("chunk", [1, 2, 3, "auto"])
def test_chunked_predict_equals_vmapped_predict(chunk):
  ens = fj.ensemble.from_linen(models.MLP(10, (32,)), 5)
  fusion = fj.fusion.mean()
  state = fj.train.init(ens, optax.adam(1e-3), jax.random.key(0), X[:1], fusion=fusion)
  got = fj.train.make_predict(ens, fusion, member_chunk=chunk)(state, X)
  want = fj.train.make_predict(ens, fusion, member_chunk=None)(state, X)
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


def test_groups_fall_back_to_the_vmapped_step():
  ens = fj.ensemble.groups(a=fj.ensemble.from_linen(models.MLP(10, (8,)), 2),
                           b=fj.ensemble.from_linen(models.MLP(10, (4,)), 1))
  assert _fast.member_fn(ens) is None
  tx = optax.adam(1e-2)
  state = fj.train.init(ens, tx, jax.random.key(0), X[:1])
  state, logs = fj.train.make_step(ens, tx)(state, {"x": X, "y": Y})
  chex.assert_shape(logs["member_loss"], (3,))


def test_auto_chunk_is_a_power_of_two_within_the_budget():
  ens = fj.ensemble.from_linen(models.MLP(10, (256, 256)), 64)
  p = jax.eval_shape(lambda: ens.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))))["params"]
  c = _fast.auto_chunk(ens, p)
  assert c & (c - 1) == 0 and 1 <= c <= 64
  digits = jax.eval_shape(lambda: ens.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1))))
  assert _fast.auto_chunk(ens, digits["params"]) >= c
