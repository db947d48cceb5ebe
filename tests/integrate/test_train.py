"""The shared plumbing of fusionjax/integrate (_train.py): init, data order, checks."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fusionjax as fj
from fusionjax import errors
from fusionjax.integrate import _train

X = np.random.default_rng(0).normal(size=(40, 8, 8, 1)).astype(np.float32)
Y = (np.arange(40) % 10).astype(np.int32)


def test_make_init_equals_the_engine_init():
  # A linear member (cheap to compile); what is checked is the key splitting
  # and the optimizer-state layout, which do not depend on the module.
  init = lambda k, x: {"params": {"w": jax.random.normal(k, (64, 3))}, "state": {}}
  apply = lambda v, x, key, train: (x.reshape(len(x), -1) @ v["params"]["w"], v["state"])
  ens = fj.ensemble.from_fn(init, apply, 3)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
  ours = _train.make_init(ens, tx)(jax.random.key(7), X[:1])
  engine = fj.train.init(ens, tx, jax.random.key(7), X[:1])
  chex.assert_trees_all_equal(ours.params, engine.params)
  chex.assert_trees_all_equal(ours.opt_state, engine.opt_state)
  chex.assert_trees_all_equal(ours.state, engine.state)
  assert int(ours.step) == 0
  np.testing.assert_array_equal(jax.random.key_data(ours.key), jax.random.key_data(engine.key))


def test_linen_ensemble_is_memoised_on_the_module():
  a = _train.linen_ensemble(fj.models.MLP(10, (8,)), 2)
  assert _train.linen_ensemble(fj.models.MLP(10, (8,)), 2) is a
  assert _train.linen_ensemble(fj.models.MLP(10, (8,)), 3) is not a
  assert _train.linen_ensemble(fj.models.MLP(10, (9,)), 2) is not a


def test_run_steps_visits_every_example_once_per_epoch():
  seen = []

  def step(state, batch):
    seen.append(np.asarray(batch["y"]).copy())
    return state, {"loss": jnp.float32(0.0)}

  x = np.arange(10, dtype=np.float32)
  _, losses = _train.run_steps(step, None, x, np.arange(10), num_steps=6, batch_size=3)
  assert losses.shape == (6,)
  for epoch in (seen[:3], seen[3:]):                # 3 full batches an epoch, rest dropped
    flat = np.concatenate(epoch)
    assert len(set(flat.tolist())) == 9
  # Per-member indices: member m's batch is drawn from its own row.
  seen.clear()
  idx = np.array([[0, 0, 1, 1], [2, 3, 2, 3]])
  _train.run_steps(step, None, x, np.arange(10), num_steps=2, batch_size=2, indices=idx)
  assert all(b.shape == (2, 2) for b in seen)
  assert set(np.concatenate([b[0] for b in seen]).tolist()) <= {0, 1}
  assert set(np.concatenate([b[1] for b in seen]).tolist()) <= {2, 3}


@pytest.mark.parametrize("call, match", [
    (lambda: _train.check_positive(0, "lr", "f"), r"f: lr=0 must be a finite number > 0"),
    (lambda: _train.check_int(1.5, "steps", "f"), r"f: steps=1.5 must be an integer >= 1"),
    (lambda: _train.check_int(True, "steps", "f"), r"steps=True"),
    (lambda: _train.check_unit_interval(0, "nu", "f"), r"nu=0 is outside \(0, 1\]"),
])
def test_checks_name_the_value(call, match):
  with pytest.raises(errors.IntegrationConfigError, match=match):
    call()


def test_check_xy():
  with pytest.raises(errors.BatchShapeError, match="x has 40 examples and y has 39"):
    _train.check_xy(X, Y[:39], "f")
