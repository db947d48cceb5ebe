"""One jitted step for all members equals M independent single-member steps."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fusionjax as fj
from fusionjax import errors, models
from fusionjax.fusion import Fusion

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(16, 8, 8, 1)), jnp.float32)
Y = jnp.asarray(RNG.integers(0, 10, 16), jnp.int32)


def _loop_reference(module, params_list, tx, batches):
  """M independent plain-optax training runs, one Python loop each."""
  out = []
  for p in params_list:
    opt = tx.init(p)

    @jax.jit
    def one(p, opt, x, y):
      loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(
          module.apply({"params": q}, x), y).mean()
      g = jax.grad(loss)(p)
      u, opt = tx.update(g, opt, p)
      return optax.apply_updates(p, u), opt

    for x, y in batches:
      p, opt = one(p, opt, x, y)
    out.append(p)
  return out


@pytest.mark.parametrize("make_tx", [
    lambda: optax.adam(1e-2),
    lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)),
    lambda: optax.sgd(optax.cosine_decay_schedule(0.1, 10), momentum=0.9),
])
def test_stacked_step_equals_loop_of_single_steps(make_tx):
  m, module = 4, models.MLP(10, (32,))
  ens = fj.ensemble.from_linen(module, m)
  tx = make_tx()
  state = fj.train.init(ens, tx, jax.random.key(0), X[:1])
  # Member 0's gradient is much larger than the others' (scaled weights), so a
  # global-norm clip over all members would couple them: it must not.
  params = state.params["members"]
  params = jax.tree.map(lambda a: a.at[0].multiply(30.0), params)
  state = fj.train.init(ens, tx, jax.random.key(0), X[:1])._replace(
      params={"members": params, "fusion": ()})
  state = state._replace(opt_state=fj.train.make_optimizer(ens, tx).init(state.params))
  singles = [jax.tree.map(lambda a, i=i: a[i], params) for i in range(m)]
  step = fj.train.make_step(ens, tx)
  batches = [(X[i::2], Y[i::2]) for i in range(2)] * 3
  for x, y in batches:
    state, logs = step(state, {"x": x, "y": y})
  expected = _loop_reference(module, singles, tx, batches)
  for i in range(m):
    got = jax.tree.map(lambda a, i=i: a[i], state.params["members"])
    chex.assert_trees_all_close(got, expected[i], rtol=1e-5, atol=1e-6)
  assert int(state.step) == len(batches)
  chex.assert_shape(logs["member_loss"], (m,))


def test_heterogeneous_groups_train_in_one_jitted_step():
  x = jnp.asarray(RNG.normal(size=(4, 28, 28, 1)), jnp.float32)
  y = jnp.asarray([0, 1, 2, 3], jnp.int32)
  ens = fj.ensemble.groups(cnn=fj.ensemble.from_linen(models.CNN(10, (4, 8), 16), 3),
                           gru=fj.ensemble.from_linen(models.RowGRU(10, 8), 2))
  tx = optax.adam(1e-2)
  state = fj.train.init(ens, tx, jax.random.key(0), x[:1])
  traces = {"n": 0}

  def counted(s, b):
    traces["n"] += 1
    return fj.train.make_step(ens, tx, jit=False)(s, b)

  step = jax.jit(counted)
  before = state.params
  for _ in range(3):
    state, logs = step(state, {"x": x, "y": y})
  assert traces["n"] == 1, "all groups train in ONE jitted step, traced once"
  chex.assert_shape(logs["member_loss"], (5,))
  for g in ("cnn", "gru"):
    for a, b in zip(jax.tree_util.tree_leaves(before["members"][g]),
                    jax.tree_util.tree_leaves(state.params["members"][g])):
      assert not np.allclose(a, b)
  # Per-member optimizer state per group: Adam's count is [M_g].
  counts = [l for p, l in jax.tree_util.tree_leaves_with_path(state.opt_state)
            if "count" in jax.tree_util.keystr(p)]
  assert sorted(c.shape for c in counts) == [(2,), (3,)]


def test_no_retrace_on_second_call():
  ens = fj.ensemble.from_linen(models.MLP(10, (8,)), 2)
  tx = optax.adam(1e-3)
  state = fj.train.init(ens, tx, jax.random.key(0), X[:1])
  step = fj.train.make_step(ens, tx, jit=False)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def jstep(s, b):
    return step(s, b)

  for _ in range(3):
    state, _ = jstep(state, {"x": X, "y": Y})
  # Independent of chex's counter: jit compiled exactly one executable.
  assert jstep._cache_size() == 1


@pytest.mark.parametrize("kind", ["mlp_gating", "cnn_gru_groups", "resnet_stacking"])
def test_init_at_o1_has_the_bits_of_the_default_compile(kind):
  """``train.init`` compiles at LLVM -O1 on CPU (half the compile time); its
  state must equal, bit for bit, the same init compiled with XLA's defaults."""
  x = jnp.asarray(RNG.normal(size=(2, 8, 8, 3)), jnp.float32)
  fusion = None
  if kind == "mlp_gating":
    ens, fusion = fj.ensemble.from_linen(models.MLP(10, (32, 16)), 3), fj.fusion.gating(3, 8)
  elif kind == "cnn_gru_groups":
    x = jnp.asarray(RNG.normal(size=(2, 28, 28, 1)), jnp.float32)
    ens = fj.ensemble.groups(cnn=fj.ensemble.from_linen(models.CNN(10, (4, 8), 16), 3),
                             gru=fj.ensemble.from_linen(models.RowGRU(10, 8), 2))
  else:
    ens = fj.ensemble.from_linen(models.ResNet(10, (1,), 4), 2)
    fusion = fj.fusion.stacking(2, 10, hidden=(8,))
  tx = optax.adam(1e-3)
  got = fj.train.init(ens, tx, jax.random.key(3), x, fusion=fusion)
  # Nested in an outer jit, the inner jit compiles with the outer's (default) options.
  want = jax.jit(lambda k, x: fj.train.init(ens, tx, k, x, fusion=fusion))(jax.random.key(3), x)
  chex.assert_trees_all_equal(got, want)  # exact, no tolerance


def _learned_weights():
  def init(key, outputs, *, x=None):
    del key, x
    return {"w": jnp.zeros(outputs.shape[0])}

  def apply(params, outputs, *, x=None, key=None):
    del x, key
    logw = jax.nn.log_softmax(params["w"])
    return jax.nn.logsumexp(logw[:, None, None] + jax.nn.log_softmax(outputs), axis=0)

  return Fusion(init, apply)


@pytest.mark.parametrize("regime", ["independent", "frozen", "joint", "hybrid"])
def test_regimes_choose_what_moves(regime):
  ens = fj.ensemble.from_linen(models.MLP(10, (8,)), 3)
  fusion = _learned_weights()
  tx = optax.sgd(0.5)
  state = fj.train.init(ens, tx, jax.random.key(0), X[:1], fusion=fusion, regime=regime)
  step = fj.train.make_step(ens, tx, fusion=fusion, regime=regime, lam=0.5, donate=False)
  new, logs = step(state, {"x": X, "y": Y})
  members_moved = not np.allclose(new.params["members"]["Dense_0"]["kernel"],
                                  state.params["members"]["Dense_0"]["kernel"])
  fusion_moved = not np.allclose(new.params["fusion"]["w"], state.params["fusion"]["w"])
  assert members_moved == (regime != "frozen")
  assert fusion_moved == (regime != "independent")
  if regime == "hybrid":
    np.testing.assert_allclose(logs["loss"], logs["member_loss"].sum() + 0.5 * logs["fused_loss"],
                               rtol=1e-6)


def test_nonfinite_member_is_skipped_and_others_train():
  ens = fj.ensemble.from_linen(models.MLP(10, (8,)), 3)
  tx = optax.adam(1e-2)
  state = fj.train.init(ens, tx, jax.random.key(0), X[:1])
  bad = jax.tree.map(lambda a: a.at[1].set(jnp.nan) if a.ndim == 2 else a,
                     state.params["members"])
  state = state._replace(params={"members": bad, "fusion": ()})
  before = state.params["members"]["Dense_1"]["kernel"]
  new, logs = fj.train.make_step(ens, tx, donate=False)(state, {"x": X, "y": Y})
  np.testing.assert_array_equal(logs["finite"], [True, False, True])
  after = new.params["members"]["Dense_1"]["kernel"]
  np.testing.assert_array_equal(np.isnan(after[1]), np.isnan(before[1]))
  assert not np.allclose(after[0], before[0]) and not np.allclose(after[2], before[2])
  counts = [l for p, l in jax.tree_util.tree_leaves_with_path(new.opt_state)
            if "count" in jax.tree_util.keystr(p)]
  np.testing.assert_array_equal(counts[0], [1, 0, 1])


def test_bagging_step_per_member_batches():
  m = 3
  ens = fj.ensemble.from_linen(models.MLP(10, (8,)), m)
  tx = optax.adam(1e-2)
  state = fj.train.init(ens, tx, jax.random.key(0), X[:1])
  idx = fj.data.bootstrap(jax.random.key(1), 16, m)
  step = fj.train.make_step(ens, tx, per_member=True)
  state, logs = step(state, {"x": X[idx], "y": Y[idx]})
  chex.assert_shape(logs["member_loss"], (m,))
  with pytest.raises(errors.BatchShapeError, match=r"\[M=3, B\]"):
    step(state, {"x": X[idx], "y": Y})


def test_batch_mismatch_error():
  ens = fj.ensemble.from_linen(models.MLP(10, (8,)), 2)
  tx = optax.adam(1e-3)
  state = fj.train.init(ens, tx, jax.random.key(0), X[:1])
  with pytest.raises(errors.BatchShapeError, match=r"y shape \(15,\)"):
    fj.train.make_step(ens, tx)(state, {"x": X, "y": Y[:15]})


@pytest.mark.parametrize("chunk", ["auto", None])
@pytest.mark.parametrize("init_guard", [True, False])
def test_init_and_step_must_agree_on_the_guard(init_guard, chunk):
  ens = fj.ensemble.from_linen(models.MLP(10, (8,)), 2)
  tx = optax.adam(1e-3)
  state = fj.train.init(ens, tx, jax.random.key(0), X[:1], guard=init_guard)
  step = fj.train.make_step(ens, tx, guard=not init_guard, member_chunk=chunk)
  with pytest.raises(errors.GuardMismatchError,
                     match=rf"init\(guard={init_guard}\).*make_step\(guard={not init_guard}\)"):
    step(state, {"x": X, "y": Y})
  fj.train.make_step(ens, tx, guard=init_guard, member_chunk=chunk)(state, {"x": X, "y": Y})
