"""cascade(): exit rule, costs, soft relaxation, mixed stages; serial()."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fusionjax import errors
from fusionjax import fusion as fu

M, B, C = 3, 6, 3


def _info(f, params, z, x=None):
  return jax.jit(functools.partial(fu.cascade_info, f))(params, z, x=x)


def _log(p):
  return jnp.log(jnp.asarray(p, jnp.float32))


def test_threshold_zero_first_stage_answers_everything(logits):
  z = logits(M, B, C)
  f = fu.cascade(0.0)
  params = f.init(jax.random.key(0), z)
  out, info = f.apply(params, z, return_info=True)
  np.testing.assert_array_equal(info.stage, 0)
  np.testing.assert_allclose(out, jax.nn.log_softmax(z[0]), rtol=1e-6)
  np.testing.assert_allclose(info.cost, 1.0)


def test_threshold_one_last_stage_answers_everything(logits):
  z = logits(M, B, C, scale=1.0)  # confidences < 1
  f = fu.cascade([1.0, 1.0], costs=[1.0, 2.0, 4.0])
  info = _info(f, f.init(jax.random.key(0), z), z)
  assert np.all(info.confidence < 1.0)
  np.testing.assert_array_equal(info.stage, M - 1)
  np.testing.assert_allclose(info.cost, 7.0)
  np.testing.assert_allclose(info.expected_cost, 7.0)
  np.testing.assert_allclose(jax.jit(f.apply)(f.init(None, z), z),
                             jax.nn.log_softmax(z[-1]), rtol=1e-6)


def test_exit_rule_and_costs_by_hand():
  p = np.array([  # [S=3, B=4, C=2]
      [[0.95, 0.05], [0.6, 0.4], [0.5, 0.5], [0.7, 0.3]],
      [[0.5, 0.5], [0.1, 0.9], [0.55, 0.45], [0.8, 0.2]],
      [[0.3, 0.7], [0.3, 0.7], [0.3, 0.7], [0.4, 0.6]],
  ])
  z = _log(p)
  f = fu.cascade([0.9, 0.8], costs=[1.0, 10.0, 100.0])
  out, info = jax.jit(functools.partial(f.apply, return_info=True))(
      f.init(None, z), z)
  # sample 0 exits at stage 0 (0.95 >= 0.9); 1 at stage 1 (0.9 >= 0.8);
  # 2 reaches the last stage; 3 exits at stage 1 (0.8 >= 0.8, ties exit)
  np.testing.assert_array_equal(info.stage, [0, 1, 2, 1])
  np.testing.assert_allclose(info.cost, [1.0, 11.0, 111.0, 11.0])
  np.testing.assert_allclose(info.expected_cost, 134.0 / 4)
  np.testing.assert_allclose(info.exit_prob, np.eye(3)[[0, 1, 2, 1]])
  np.testing.assert_allclose(np.exp(out), p[[0, 1, 2, 1], np.arange(4)],
                             rtol=1e-6)
  # margin = top1 - top2: [0.9, 0.2, 0, 0.4] at stage 0 and
  # [0, 0.8, 0.1, 0.6] at stage 1, so with thresholds 0.85 and 0.5 sample 0
  # exits at 0, samples 1 and 3 at 1, sample 2 at the last stage
  g = fu.cascade([0.85, 0.5], confidence="margin")
  info = _info(g, g.init(None, z), z)
  np.testing.assert_allclose(info.confidence[:, 0], [0.9, 0.2, 0.0, 0.4],
                             atol=1e-6)
  np.testing.assert_array_equal(info.stage, [0, 1, 2, 1])
  np.testing.assert_allclose(info.cost, [1.0, 2.0, 3.0, 2.0])


def test_soft_cascade_tends_to_the_hard_rule_and_learns_thresholds(logits):
  z = logits(M, B, C)
  hard = fu.cascade([0.7, 0.6], learn_thresholds=True)
  soft = fu.cascade([0.7, 0.6], learn_thresholds=True, soft=True,
                    temperature=1e-4)
  params = hard.init(jax.random.key(0), z)  # interchangeable params
  h_out, h_info = jax.jit(functools.partial(hard.apply, return_info=True))(
      params, z)
  s_out, s_info = jax.jit(functools.partial(soft.apply, return_info=True))(
      params, z)
  np.testing.assert_allclose(s_info.exit_prob.sum(-1), 1.0, rtol=1e-6)
  assert np.min(np.abs(h_info.confidence[:, :2] - np.array([0.7, 0.6]))) > 1e-2
  np.testing.assert_allclose(s_out, h_out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(s_info.exit_prob, h_info.exit_prob, atol=1e-5)
  np.testing.assert_array_equal(s_info.stage, h_info.stage)
  # a higher threshold sends samples further: expected cost grows with it
  warm = fu.cascade([0.7, 0.6], learn_thresholds=True, soft=True,
                    temperature=0.1, costs=[1.0, 2.0, 3.0])
  grad = jax.jit(jax.grad(
      lambda p: fu.cascade_info(warm, p, z).expected_cost))(params)
  assert np.all(np.asarray(grad["thresholds"]) > 0), grad


def test_mixed_cascade_is_a_composition(logits, key):
  z = logits(4, B, C)
  second = fu.chain(fu.select([1, 2, 3]), fu.weighted(3))
  f = fu.cascade([0.9], stages=[fu.select([0]), second], costs=[1.0, 3.0])
  params = f.init(key, z)
  out, info = jax.jit(functools.partial(f.apply, return_info=True))(params, z)
  by_hand = jnp.where(
      (jax.nn.softmax(z[0]).max(-1) >= 0.9)[:, None],
      jax.nn.log_softmax(z[0]), second.apply(params["stages"][1], z))
  np.testing.assert_allclose(out, by_hand, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(info.stage,
                                jax.nn.softmax(z[0]).max(-1) < 0.9)


def test_serial_recursion_by_hand(logits, key):
  z = logits(M, B, C)
  f = fu.serial(fu.weighted(2, weights=[1.0, 1.0]))
  assert f.init(key, z) == ((), ())
  p = jax.nn.softmax(z.astype(np.float64), axis=-1)
  y = p[0]
  for t in range(1, M):
    y = 0.5 * y + 0.5 * p[t]
  np.testing.assert_allclose(np.exp(jax.jit(f.apply)(((), ()), z)), y,
                             rtol=1e-6, atol=1e-6)


def test_serial_params_per_step_or_shared(logits, key):
  z = logits(M, B, C)
  per_step = fu.serial(fu.weighted(2)).init(key, z)
  assert len(per_step) == M - 1 and per_step[0]["logits"].shape == (2,)
  shared = fu.serial(fu.weighted(2), shared=True).init(key, z)
  assert shared["logits"].shape == (2,)
  one = logits(1, B, C)
  f = fu.serial(fu.weighted(2))
  np.testing.assert_allclose(f.apply(f.init(key, one), one),
                             jax.nn.log_softmax(one[0]), rtol=1e-6)


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad", [1.5, -0.1, [0.5, 1.5], float("nan")])
def test_thresholds_outside_unit_interval(bad):
  with pytest.raises(errors.ThresholdError, match=r"\[0, 1\].*got \[(1.5|-0.1|nan)\]"):
    fu.cascade(bad)


def test_wrong_number_of_thresholds(logits):
  with pytest.raises(errors.ThresholdError, match=r"S=3 stages needs S-1=2.*got 3"):
    fu.cascade([0.5, 0.5, 0.5]).init(None, logits(3, B, C))
  with pytest.raises(errors.ThresholdError, match=r"S=2 stages needs S-1=1.*got 2"):
    fu.cascade([0.5, 0.5], stages=[fu.mean(), fu.mean()])


def test_stages_with_different_class_counts(logits, key):
  wide = fu.Fusion(lambda key, z, *, x=None: (),
                   lambda p, z, *, x=None, key=None: jnp.zeros(z.shape[1:-1] + (5,)))
  f = fu.cascade([0.5], stages=[fu.mean(), wide])
  z = logits(M, B, C)
  with pytest.raises(errors.StageClassesError,
                     match=r"stage 0: \(6, 3\), cascade stage 1: \(6, 5\)"):
    f.apply(f.init(key, z), z)


def test_stage_returning_several_members(logits, key):
  f = fu.cascade([0.5], stages=[fu.select([0]), fu.select([1, 2])])
  z = logits(M, B, C)
  with pytest.raises(errors.MemberOutputsError, match=r"stage 1 returned shape \(2, 6, 3\)"):
    f.apply(f.init(key, z), z)


def test_cascade_config_errors(logits):
  with pytest.raises(errors.FusionConfigError, match=r"'entropy'.*'max_prob'"):
    fu.cascade(0.5, confidence="entropy")
  with pytest.raises(errors.FusionConfigError, match=r"temperature=0"):
    fu.cascade(0.5, temperature=0)
  with pytest.raises(errors.FusionConfigError, match=r"costs.*-1"):
    fu.cascade(0.5, costs=[1.0, -1.0])
  with pytest.raises(errors.FusionConfigError, match=r"2 costs.*S=3"):
    fu.cascade(0.5, costs=[1.0, 2.0]).init(None, logits(3, B, C))
  with pytest.raises(errors.FusionConfigError, match=r"cascade_info needs"):
    fu.cascade_info(fu.mean(), (), logits(3, B, C))
