"""fit and fusion.fit check their data once, on the host, before any compiled work;
the step checks label dtype and rank at trace time; on_nonfinite='freeze' freezes."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fusionjax as fj
from fusionjax import errors, models


def _data(n=64):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, 8, 8, 1)).astype(np.float32)
  y = (x.reshape(n, -1)[:, :10].argmax(1)).astype(np.int32)
  return x, y


ENS = fj.ensemble.from_linen(models.MLP(10, (8,)), 2)


def _fit(x, y, **kw):
  args = dict(key=jax.random.key(0), epochs=1, batch_size=16, progress=False)
  args.update(kw)
  return fj.train.fit(ENS, optax.adam(1e-2), (x, y), **args)


@pytest.mark.parametrize("change, match", [
    (lambda y: np.where(np.arange(len(y)) == 3, -1, y), r"values \[-1\] at positions \[3\]"),
    (lambda y: np.where(np.arange(len(y)) % 20 == 5, 10, y),
     r"3 label\(s\) outside \[0, 10\).*values \[10\] at positions \[5, 25, 45\]"),
    (lambda y: y.astype(np.float32), r"dtype float32.*y.astype\(np.int32\)"),
    (lambda y: y[:, None], r"shape \(64, 1\).*y.ravel\(\)"),
])
def test_fit_checks_label_values_once_on_the_host(change, match):
  x, y = _data()
  with pytest.raises(errors.LabelError, match=match):
    _fit(x, change(y))


def test_fit_checks_eval_labels_and_shapes_before_training():
  x, y = _data()
  with pytest.raises(errors.LabelError, match=r"eval set 'val'.*values \[12\]"):
    _fit(x, y, eval_sets={"val": (x[:8], np.full(8, 12))})
  with pytest.raises(errors.TrainConfigError, match=r"'val' has examples of shape \(8, 8\), "
                     r"the training data \(8, 8, 1\)"):
    _fit(x, y, eval_sets={"val": (x[:8, ..., 0], y[:8])})
  with pytest.raises(errors.TrainConfigError, match=r"'val' has 0 inputs"):
    _fit(x, y, eval_sets={"val": (x[:0], y[:0])})
  bad = x[:8].copy()
  bad[2, 0, 0, 0] = np.nan
  with pytest.raises(errors.NonFiniteInputError, match=r"eval set 'val'.*rows \[2\]"):
    _fit(x, y, eval_sets={"val": (bad, y[:8])})
  xt = x.copy()
  xt[7, 1, 1, 0] = np.inf
  with pytest.raises(errors.NonFiniteInputError, match=r"training inputs.*rows \[7\]"):
    _fit(xt, y)


@pytest.mark.parametrize("kw, err, match", [
    ({"batch_size": 0}, errors.BatchSizeError, r"batch_size=0"),
    ({"batch_size": -4}, errors.BatchSizeError, r"batch_size=-4"),
    ({"epochs": -1}, errors.TrainConfigError, r"epochs=-1"),
])
def test_fit_rejects_bad_sizes(kw, err, match):
  x, y = _data()
  with pytest.raises(err, match=match):
    _fit(x, y, **kw)


def test_step_checks_label_dtype_and_rank_at_trace_time():
  x, y = _data(16)
  trainer = fj.train.make_trainer(ENS, optax.adam(1e-2))
  state = trainer.init(jax.random.key(0), x[:1])
  for bad in (y.astype(np.float32), y[:, None]):
    with pytest.raises(errors.LabelError, match=r"cross_entropy needs integer class "
                       r"indices \[B\]"):
      trainer.step(state, {"x": x, "y": bad})
  state, _ = trainer.step(state, {"x": x, "y": y})  # the state was not consumed


def test_fusion_fit_checks_its_inputs():
  z = jnp.ones((2, 6, 3))
  y = jnp.arange(6) % 3
  fit = lambda z, y: fj.fusion.fit(fj.fusion.weighted(2), z, y, jax.random.key(0), 3,
                                   optax.adam(0.1))
  with pytest.raises(errors.NonFiniteInputError, match=r"member outputs.*rows \[4\]"):
    fit(z.at[1, 4, 0].set(jnp.nan), y)
  with pytest.raises(errors.EmptySplitError, match=r"N=0"):
    fit(jnp.ones((2, 0, 3)), jnp.zeros((0,), jnp.int32))
  with pytest.raises(errors.LabelError, match=r"values \[3\] at positions \[1\]"):
    fit(z, y.at[1].set(3))
  with pytest.raises(errors.LabelError, match=r"dtype float32"):
    fit(z, y.astype(jnp.float32))
  params, losses = fit(z, y)
  assert np.all(np.isfinite(losses))


def _poison_member_one(x, y, steps):
  """Per-member batches where member 1 sees a non-finite loss at step 2 only."""
  idx = np.stack([np.arange(16)] * 2)
  batches = []
  for t in range(steps):
    bx, by = x[idx], y[idx]
    if t == 2:
      bx = bx.copy()
      bx[1] = 3e38  # overflows member 1's forward pass: its loss is not finite
    batches.append({"x": bx, "y": by})
  return batches


@pytest.mark.parametrize("layout", ["vmap", "scan"])
def test_freeze_nonfinite_freezes_for_good(layout):
  x, y = _data(16)
  out = {}
  for freeze in (False, True):
    trainer = fj.train.make_trainer(ENS, optax.adam(1e-2), per_member=True, layout=layout,
                                    freeze_nonfinite=freeze)
    state = trainer.init(jax.random.key(0), x[:1])
    snaps = []
    for batch in _poison_member_one(x, y, 8):
      state, logs = trainer.step(state, batch)
      snaps.append(jax.tree.map(np.asarray, state.params["members"]))
    out[freeze] = (state, snaps)
  state, snaps = out[True]
  np.testing.assert_array_equal(state.frozen, [False, True])
  k = lambda s, m: s["Dense_0"]["kernel"][m]
  # Member 1 never moved after its bad step; member 0 kept training.
  for s in snaps[2:]:
    np.testing.assert_array_equal(k(s, 1), k(snaps[1], 1))
  assert not np.allclose(k(snaps[-1], 0), k(snaps[2], 0))
  # Without freezing, only the bad step was skipped: member 1 trained on.
  _, plain = out[False]
  assert not np.allclose(k(plain[-1], 1), k(plain[2], 1))


@pytest.mark.slow
def test_fit_freeze_survives_a_resume(tmp_path):
  """fit(on_nonfinite='freeze'): the frozen flag is in the state, so a resumed run keeps it."""
  x, y = _data()
  x = x.copy()
  x[3] = 3e38  # a finite input that overflows the forward pass of every member
  kw = dict(on_nonfinite="freeze", ckpt_dir=str(tmp_path / "ckpt"),
            ckpt_every=2, batch_size=16, epochs=3)
  part = _fit(x, y, max_steps=5, **kw)
  frozen = np.asarray(part.state.frozen)
  np.testing.assert_array_equal(frozen, [True, True])  # both met the overflowing row
  before = jax.tree.map(np.asarray, part.state.params["members"])
  resumed = _fit(x, y, **kw)
  np.testing.assert_array_equal(np.asarray(resumed.state.frozen), frozen)
  after = jax.tree.map(np.asarray, resumed.state.params["members"])
  for m in np.flatnonzero(frozen):
    np.testing.assert_array_equal(after["Dense_0"]["kernel"][m], before["Dense_0"]["kernel"][m])
  assert resumed.history[-1]["frozen_members"] == np.flatnonzero(frozen).tolist()
