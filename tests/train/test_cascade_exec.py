"""The executing cascade equals the dense rule and skips the work of exited samples."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fusionjax as fj
from fusionjax import errors, models

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(97, 6)), jnp.float32)


def _state(m, classes=3, width=16, seed=0):
  ens = fj.ensemble.from_linen(models.MLP(classes, (width,)), m)
  state = fj.train.init(ens, optax.sgd(0.1), jax.random.key(seed), X[:1])
  # Spread the members' confidences so that every stage answers some samples.
  scale = jnp.asarray([3.0, 1.0, 6.0, 2.0, 4.0][:m]).reshape(m, 1, 1)
  p = state.params["members"]
  p = {**p, "Dense_1": {**p["Dense_1"], "kernel": p["Dense_1"]["kernel"] * scale}}
  return ens, state._replace(params={"members": p, "fusion": ()})


def _dense(ens, state, x, thresholds, confidence, answer="member"):
  """All members on all samples, then the hard rule."""
  out, _ = ens.apply({"params": state.params["members"], "state": state.state}, x)
  log_p = np.asarray(jax.nn.log_softmax(out, axis=-1))  # [M, B, C]
  p = np.exp(log_p)
  if answer == "running_mean":
    p = np.cumsum(p, axis=0) / np.arange(1, p.shape[0] + 1, dtype=np.float32)[:, None, None]
    log_p = np.log(p)
  top = -np.sort(-p, axis=-1)
  conf = top[..., 0] if confidence == "max_prob" else top[..., 0] - top[..., 1]
  m = log_p.shape[0]
  t = np.broadcast_to(np.asarray(thresholds, np.float32), (m - 1,))
  stage = np.full((x.shape[0],), m - 1)
  for b in range(x.shape[0]):
    for s in range(m - 1):
      if conf[s, b] >= t[s]:
        stage[b] = s
        break
  return log_p[stage, np.arange(x.shape[0])], stage


@pytest.mark.parametrize("confidence,thresholds,answer", [
    ("max_prob", [0.8, 0.6, 0.9], "member"),
    ("max_prob", 0.7, "member"),
    ("margin", [0.5, 0.3, 0.6], "member"),
    ("max_prob", [0.8, 0.6, 0.7], "running_mean"),
    ("margin", 0.4, "running_mean"),
])
def test_equals_dense_rule(confidence, thresholds, answer):
  ens, state = _state(4)
  log_p, stage = fj.train.cascade_predict(ens, state, X, thresholds, confidence=confidence,
                                          bucket=8, answer=answer)
  want_lp, want_stage = _dense(ens, state, X, thresholds, confidence, answer)
  np.testing.assert_array_equal(stage, want_stage)
  np.testing.assert_allclose(log_p, want_lp, rtol=1e-5, atol=1e-6)
  assert stage.dtype == jnp.int32 and log_p.shape == (X.shape[0], 3)
  assert len(set(np.asarray(stage).tolist())) >= 3, "thresholds should spread the exits"


def test_matches_the_cascade_fusion():
  ens, state = _state(3)
  thresholds = [0.75, 0.6]
  _, stage = fj.train.cascade_predict(ens, state, X, thresholds)
  out, _ = ens.apply({"params": state.params["members"], "state": state.state}, X)
  f = fj.fusion.cascade(thresholds)
  info = fj.fusion.cascade_info(f, f.init(None, out), out)
  np.testing.assert_array_equal(stage, info.stage)


def test_later_stages_only_see_remaining_samples():
  sizes = []
  base = fj.ensemble.from_linen(models.MLP(3, (16,)), 3)
  apply_one = base.member_apply

  def member_apply(variables, x, key, train):
    jax.debug.callback(lambda n: sizes.append(int(n)), x.shape[0])
    return apply_one(variables, x, key, train)

  def member_init(key, x):
    return {"params": models.MLP(3, (16,)).init(key, x)["params"], "state": {}}

  ens = fj.ensemble.from_fn(member_init, member_apply, 3)
  state = fj.train.init(ens, optax.sgd(0.1), jax.random.key(0), X[:1])
  x = jnp.concatenate([X, X, X])[:256]
  _, stage = fj.train.cascade_predict(ens, state, x, [0.0, 0.0], bucket=16)
  jax.effects_barrier()
  assert sizes == [256] and np.all(np.asarray(stage) == 0), "threshold 0: all exit at stage 0"
  thresholds = [float(np.quantile(_conf(ens, state, x, 0), 0.3)), 1.0]
  jax.effects_barrier()
  sizes.clear()
  _, stage = fj.train.cascade_predict(ens, state, x, thresholds, bucket=16)
  jax.effects_barrier()
  n1 = int(np.sum(np.asarray(stage) >= 1))
  assert sizes[0] == 256 and 0 < n1 < 256
  assert sizes[1] == 16 * 2 ** int(np.ceil(np.log2(n1 / 16))) < 256, sizes
  assert len(sizes) == 3 and sizes[2] == sizes[1]  # threshold 1: nobody exits at stage 1


def _conf(ens, state, x, s):
  out, _ = ens.apply({"params": state.params["members"], "state": state.state}, x)
  return np.asarray(jnp.max(jax.nn.softmax(out[s]), axis=-1))


def test_no_recompile_for_a_second_call():
  ens, state = _state(3)
  fj.train.cascade_predict(ens, state, X, [0.7, 0.7], bucket=8)
  from fusionjax.train import _cascade_exec  # pylint: disable=g-import-not-at-top
  fn = _cascade_exec._stage_fn(ens.member_apply)
  before = fn._cache_size()  # pylint: disable=protected-access
  fj.train.cascade_predict(ens, state, X, [0.7, 0.7], bucket=8)
  assert fn._cache_size() == before  # pylint: disable=protected-access


def test_errors():
  ens, state = _state(3)
  with pytest.raises(errors.ThresholdError, match="needs 2 thresholds"):
    fj.train.cascade_predict(ens, state, X, [0.5, 0.5, 0.5])
  with pytest.raises(errors.ThresholdError):
    fj.train.cascade_predict(ens, state, X, [0.5, 1.5])
  grouped = fj.ensemble.groups(a=fj.ensemble.from_linen(models.MLP(3, (4,)), 2))
  gstate = fj.train.init(grouped, optax.sgd(0.1), jax.random.key(0), X[:1])
  with pytest.raises(TypeError, match="from_fn"):
    fj.train.cascade_predict(grouped, gstate, X, [0.5])
