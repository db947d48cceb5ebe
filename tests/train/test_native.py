"""The 'native' layout: shared-weight ensembles train as one network with one optimizer."""
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fusionjax as fj
from fusionjax import errors, models

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(16, 6, 6, 1)), jnp.float32)
Y = jnp.asarray(RNG.integers(0, 4, 16), jnp.int32)
M = 3
O0 = {"xla_backend_optimization_level": 0}  # compile time, not speed, is what tests pay

KINDS = {
    "batch_ensemble": lambda: fj.ensemble.batch_ensemble(models.MLP(4, (8,), dropout=0.2), M),
    "packed": lambda: fj.ensemble.packed(models.MLP(4, (12,)), M),
    "mc_dropout": lambda: fj.ensemble.mc_dropout(models.MLP(4, (8,)), M, rate=0.3),
}


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


@pytest.mark.parametrize("kind", ["batch_ensemble", "mc_dropout"])  # packed: below
def test_native_step_equals_a_hand_written_optax_loop(kind):
  ens = KINDS[kind]()
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
  trainer = fj.train.make_trainer(ens, tx, x_example=X[:1], platform="cpu")
  assert trainer.layout == "native"
  state = trainer.init(jax.random.key(0), X[:1])
  # One network, one optimizer state: not stacked per member.
  chex.assert_trees_all_equal_shapes(state.opt_state, tx.init(state.params["members"]))
  params, opt, key = _copy((state.params["members"], state.opt_state, state.key))
  batches = [{"x": X[i::2], "y": Y[i::2]} for i in range(2)] * 2
  step = trainer.step.lower(state, batches[0]).compile(O0)
  losses = []
  for b in batches:
    state, logs = step(state, b)
    losses.append(logs["loss"])
    np.testing.assert_allclose(logs["loss"], jnp.mean(logs["member_loss"]), rtol=1e-6)
    assert logs["member_loss"].shape == (M,) and bool(jnp.all(logs["finite"]))

  def ref_step(p, o, k, x, y):  # the documented objective: the mean member loss
    k, sub = jax.random.split(k)
    obj = lambda q: jnp.mean(fj.train.cross_entropy(
        ens.apply({"params": q, "state": {}}, x, key=sub, train=True)[0], y))
    loss, g = jax.value_and_grad(obj)(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, k, loss

  ref = jax.jit(ref_step).lower(params, opt, key, X[::2], Y[::2]).compile(O0)
  for i, b in enumerate(batches):
    params, opt, key, loss = ref(params, opt, key, b["x"], b["y"])
    np.testing.assert_allclose(losses[i], loss, rtol=1e-5)
  chex.assert_trees_all_close(state.params["members"], params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(state.opt_state, opt, rtol=1e-5, atol=1e-6)
  assert int(state.step) == len(batches)

  if kind == "batch_ensemble":
    for _ in range(8):  # it learns
      state, logs = step(state, batches[0])
    assert float(logs["loss"]) < float(losses[0])
    # The guard keeps the whole network on a non-finite loss.
    before = _copy(state.params["members"])
    state, logs = step(state, {"x": batches[0]["x"].at[0].set(jnp.nan), "y": batches[0]["y"]})
    assert not bool(jnp.any(logs["finite"]))
    chex.assert_trees_all_equal(state.params["members"], before)


def test_fit_trains_a_shared_weight_ensemble_and_evaluates_it():
  ens = KINDS["packed"]()
  res = fj.train.fit(ens, optax.adam(1e-2), (np.asarray(X), np.asarray(Y)),
                     key=jax.random.key(0), epochs=1, batch_size=8, progress=False,
                     eval_sets={"val": (np.asarray(X), np.asarray(Y))}, handle_signals=False)
  rec = res.history[-1]
  assert res.status == "done" and rec["layout"] == "native" and rec["step"] == 2
  assert len(rec["val/member_accuracy"]) == M and np.isfinite(rec["val/nll"])


def test_fit_starts_a_shared_weight_ensemble_from_given_variables():
  ens = KINDS["batch_ensemble"]()
  data = (np.asarray(X), np.asarray(Y))
  first = fj.train.fit(ens, optax.adam(1e-2), data, key=jax.random.key(0), epochs=1,
                       batch_size=8, progress=False)
  given = {"params": first.state.params["members"], "state": first.state.state}
  res = fj.train.fit(ens, optax.adam(1e-2), data, key=jax.random.key(1), epochs=1,
                     batch_size=8, progress=False, init=given)
  assert res.status == "done" and int(res.state.step) == 2


def test_fit_refuses_per_member_steering_of_shared_weights():
  ens = KINDS["packed"]()
  data = (np.asarray(X), np.asarray(Y))
  tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
  with pytest.raises(errors.SharedWeightsError, match="member_hparams.*packed"):
    fj.train.fit(ens, tx, data, key=jax.random.key(0), epochs=1, batch_size=8,
                 progress=False, member_hparams={"learning_rate": [1e-2] * M})
  with pytest.raises(errors.SharedWeightsError, match="early_stopping='member'"):
    fj.train.fit(ens, tx, data, key=jax.random.key(0), epochs=1, batch_size=8,
                 progress=False, early_stopping="member", eval_sets={"val": data})


def test_hybrid_regime_on_a_data_mesh():
  ens = KINDS["packed"]()
  fusion = fj.fusion.weighted(M)
  mesh = fj.train.make_mesh(member=1, data=1)
  trainer = fj.train.make_trainer(ens, optax.adam(1e-2), fusion=fusion, regime="hybrid",
                                  lam=0.5, mesh=mesh, platform="cpu")
  assert trainer.layout == "native"
  state = fj.train.shard_state(trainer.init(jax.random.key(0), X[:1]), mesh, ens)
  w0 = _copy(state.params["fusion"])
  state, logs = trainer.step(state, {"x": X, "y": Y})
  np.testing.assert_allclose(
      logs["loss"], jnp.mean(logs["member_loss"]) + 0.5 * logs["fused_loss"], rtol=1e-6)
  assert float(jnp.abs(state.params["fusion"]["logits"] - w0["logits"]).max()) > 0
  pred = fj.train.make_predictor(ens, fusion)
  assert pred.layout == "native" and pred.predict(state, X)[1].shape == (16, 4)


def test_per_member_options_raise_the_documented_error():
  ens = KINDS["mc_dropout"]()
  tx = optax.adam(1e-3)
  data = (np.asarray(X), np.asarray(Y))
  shared = errors.SharedWeightsError
  with pytest.raises(shared, match=r"per_member=True.*mc_dropout ensemble"):
    fj.train.make_trainer(ens, tx, per_member=True)
  with pytest.raises(shared, match="freeze_nonfinite"):
    fj.train.make_trainer(ens, tx, freeze_nonfinite=True)
  with pytest.raises(shared, match="layout='scan'"):
    fj.train.make_trainer(ens, tx, layout="scan")
  with pytest.raises(shared, match="'member' axis of 2"):
    fj.train.make_trainer(ens, tx, mesh=types.SimpleNamespace(shape={"member": 2, "data": 1}))
  with pytest.raises(shared, match="bagging"):
    fj.train.fit(ens, tx, data, key=jax.random.key(0), epochs=1, bagging=True, progress=False)
  with pytest.raises(shared, match="on_nonfinite='freeze'"):
    fj.train.fit(ens, tx, data, key=jax.random.key(0), epochs=1, on_nonfinite="freeze",
                 progress=False)
  with pytest.raises(shared, match="member_map"):  # a group of them has no per-member step
    mixed = fj.ensemble.groups(a=ens, b=fj.ensemble.from_linen(models.MLP(4, (8,)), 2))
    jax.eval_shape(fj.train.make_trainer(mixed, tx).init, jax.random.key(0), X[:1])
  with pytest.raises(errors.LayoutError, match="'native'.*own stacked params"):
    fj.train.make_trainer(fj.ensemble.from_linen(models.MLP(4), 2), tx, layout="native")
  with pytest.raises(errors.LayoutError, match="'scan'"):
    fj.train.make_predictor(ens, layout="scan")


def test_auto_layout_rule():
  assert fj.train.auto_layout("cpu", conv=True, size=4, shared=True) == "native"
  assert fj.train.auto_layout("gpu", conv=None, size=4, shared=True) == "native"
