"""Knowledge distillation of a fused ensemble (fusionjax/integrate/_distill.py)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fusionjax as fj
from fusionjax import errors
from fusionjax import integrate
from fusionjax.integrate import _train

def _task(seed=0, d=64, c=10, n=4000):
  """A hard, noisy 10-class task: labels sampled from a random tanh network's softmax.

  Inputs are laid out as 8x8x1 images so that the members are the same
  ``MLP(10, (32,))`` programs as the digits tests (compiled once).
  """
  rng = np.random.default_rng(seed)
  w1 = rng.normal(size=(d, 32)) / np.sqrt(d)
  w2 = rng.normal(size=(32, c)) * 1.5
  x = rng.normal(size=(n, d)).astype(np.float32)
  logits = 3.0 * np.tanh(x @ w1) @ w2
  y = np.argmax(logits + rng.gumbel(size=logits.shape), axis=-1).astype(np.int32)
  return x.reshape(n, 8, 8, 1), y


def _log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("temperature, alpha", [(1.0, 1.0), (2.0, 1.0), (4.0, 0.3), (0.5, 0.0)])
def test_loss_equals_hand_computation(temperature, alpha):
  rng = np.random.default_rng(0)
  s = (2 * rng.normal(size=(6, 4))).astype(np.float32)
  t = _log_softmax(2 * rng.normal(size=(6, 4))).astype(np.float32)  # fused log-probs
  y = rng.integers(0, 4, 6).astype(np.int32)
  mask = np.array([1, 1, 0, 1, 1, 0], np.float32)
  q = np.exp(_log_softmax(t / temperature))
  kl = (q * (np.log(q) - _log_softmax(s / temperature))).sum(-1)
  ce = -_log_softmax(s)[np.arange(6), y]
  rows = alpha * temperature**2 * kl + (1 - alpha) * ce
  got = integrate.distillation_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y),
                                    temperature=temperature, alpha=alpha)
  assert float(got) == pytest.approx(rows.mean(), rel=1e-5)
  got = integrate.distillation_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y),
                                    temperature=temperature, alpha=alpha, mask=mask)
  assert float(got) == pytest.approx((rows * mask).sum() / mask.sum(), rel=1e-5)


def test_soft_gradient_is_t_times_probability_gap():
  """d/ds [T^2 KL(q_T || softmax(s / T))] = T (softmax(s / T) - q_T) per row (Hinton eq. 2)."""
  rng = np.random.default_rng(1)
  s = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  t = jnp.asarray(_log_softmax(rng.normal(size=(3, 4))), jnp.float32)
  temp = 3.0
  g = jax.grad(lambda z: 3 * integrate.distillation_loss(z, t, temperature=temp))(s)
  expected = temp * (jax.nn.softmax(s / temp) - jax.nn.softmax(t / temp))
  np.testing.assert_allclose(np.asarray(g), np.asarray(expected), rtol=1e-5, atol=1e-6)
  # A student equal to the teacher has zero soft loss at any temperature.
  assert float(integrate.distillation_loss(t, t, temperature=temp)) == pytest.approx(0, abs=1e-6)


def test_gain_kept():
  assert integrate.gain_kept(0.95, 0.90, 1.0) == pytest.approx(0.5)
  assert integrate.gain_kept(0.30, 0.40, 0.20) == pytest.approx(0.5)   # NLL: lower is better
  assert integrate.gain_kept(0.85, 0.90, 1.0) == pytest.approx(-0.5)
  assert math.isnan(integrate.gain_kept(0.9, 0.9, 0.9))


@pytest.mark.slow
def test_distilled_student_keeps_part_of_the_ensemble_gain():
  x, y = _task()
  xt, yt, xs, ys = x[:500], y[:500], x[2000:], y[2000:]
  module = fj.models.MLP(10, (32,))
  ens = _train.linen_ensemble(module, 8)
  state, _ = _train.train_member(ens, optax.adam(3e-3), xt, yt, key=jax.random.key(0),
                                 num_steps=600, batch_size=32)
  predict = fj.train.make_predict(ens, fj.fusion.mean())
  out, fused = predict(state, xs)
  _, teacher = predict(state, xt)
  # The 8 members are 8 students of the hard labels alone (same steps, same tx).
  member_nll = np.asarray(fj.metrics.nll(out, ys))
  member_acc = np.asarray(fj.metrics.accuracy(out, ys))
  ens_nll = float(fj.metrics.nll(fused, ys))
  ens_acc = float(fj.metrics.accuracy(fused, ys))
  res = integrate.distill(module, teacher, xt, yt, key=jax.random.key(1), tx=optax.adam(3e-3),
                          temperature=4.0, alpha=1.0, num_steps=600, batch_size=32, seed=1)
  student, _ = _train.linen_ensemble(module, 1).apply(res.variables, xs)
  student_nll = float(fj.metrics.nll(student[0], ys))
  student_acc = float(fj.metrics.accuracy(student[0], ys))
  kept_nll = integrate.gain_kept(student_nll, member_nll.mean(), ens_nll)
  kept_acc = integrate.gain_kept(student_acc, member_acc.mean(), ens_acc)
  # Measured (CPU): ensemble NLL 1.161 / accuracy 0.580; members 1.56-1.66
  # (mean 1.616) / 0.512-0.545 (mean 0.527); student (T=4, the same 500
  # inputs) NLL 1.284 / accuracy 0.565, i.e. it keeps 0.73 of the NLL gain and
  # 0.71 of the accuracy gain (another student seed: 0.62 and 0.66; T=2 kept
  # 0.44-0.59). On digits MLPs, whose ensembles gain little, the same recipe
  # showed no effect beyond seed noise.
  assert ens_nll < member_nll.mean() - 0.2
  assert student_nll < member_nll.mean() - 0.1
  assert kept_nll > 0.4
  assert kept_acc > 0.2


@pytest.mark.parametrize("kw, match", [
    ({"temperature": 0.0}, r"temperature=0\.0 must be a finite number > 0"),
    ({"temperature": -2.0}, r"temperature=-2\.0"),
    ({"temperature": float("inf")}, r"temperature=inf"),
    ({"temperature": 2.0, "alpha": 1.5}, r"alpha=1\.5 is outside \[0, 1\]"),
])
def test_bad_temperature_or_alpha(kw, match):
  z = jnp.zeros((2, 3))
  with pytest.raises(errors.IntegrationConfigError, match=match):
    integrate.distillation_loss(z, z, jnp.zeros(2, jnp.int32), **kw)
  with pytest.raises(errors.IntegrationConfigError, match=match):
    integrate.distill(fj.models.MLP(3, (4,)), z, np.zeros((2, 5)), np.zeros(2, np.int32),
                      key=jax.random.key(0), tx=optax.sgd(0.1), **kw)


def test_bad_labels_or_teacher_shape():
  z = jnp.zeros((2, 3))
  with pytest.raises(errors.IntegrationConfigError, match="alpha=0.5 .* labels=None"):
    integrate.distillation_loss(z, z, temperature=1.0, alpha=0.5)
  with pytest.raises(errors.BatchShapeError, match=r"\(3, 3\) but x has N=2"):
    integrate.distill(fj.models.MLP(3, (4,)), jnp.zeros((3, 3)), np.zeros((2, 5)),
                      np.zeros(2, np.int32), key=jax.random.key(0), tx=optax.sgd(0.1))
