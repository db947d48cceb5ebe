"""Knowledge distillation of a fused ensemble into one student network.

The student matches the ensemble's fused distribution softened by a
temperature ``T``: ``q_T = softmax(log p_ens / T)`` (the fused
log-probabilities play the role of the teacher's logits). The soft loss is
``T^2 KL(q_T || softmax(z_student / T))`` (the ``T^2`` keeps its gradients on
the scale of the hard loss when ``T`` changes), optionally mixed with the
hard-label cross-entropy: ``alpha * soft + (1 - alpha) * CE(z_student, y)``.
"""
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fusionjax import errors
from fusionjax.integrate import _train
from fusionjax.train import make_step


def _check_t_alpha(temperature, alpha, where):
  t = _train.check_positive(temperature, "temperature", where)
  a = _train.check_unit_interval(alpha, "alpha", where, open_left=False)
  return t, a


def distillation_loss(student_logits: jax.Array, teacher_log_probs: jax.Array,
                      labels=None, *, temperature: float, alpha: float = 1.0,
                      mask=None) -> jax.Array:
  """The distillation loss, a mean over the batch.

  ``alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)``
  with ``t`` the teacher's (fused) log-probabilities and ``s`` the student's
  logits.

  Args:
    student_logits: ``[..., B, C]``.
    teacher_log_probs: ``[B, C]`` fused log-probabilities (or logits).
    labels: integer labels ``[B]``; needed when ``alpha < 1``.
    temperature: ``T > 0``.
    alpha: weight of the soft loss, in ``[0, 1]``.
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded.

  Returns:
    The loss, shape ``[...]`` (the leading dims of ``student_logits``).

  Raises:
    IntegrationConfigError: ``temperature <= 0``, ``alpha`` outside ``[0, 1]``,
      or ``alpha < 1`` without labels.

  Example:
    >>> s = jnp.array([[2.0, 0.0]]); t = jnp.log(jnp.array([[0.5, 0.5]]))
    >>> float(distillation_loss(s, t, temperature=1.0))    # KL([.5,.5] || softmax(s))
    0.4337808...

  References:
    Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network",
    NeurIPS Deep Learning Workshop 2015.
  """
  t, a = _check_t_alpha(temperature, alpha, "distillation_loss")
  if a < 1.0 and labels is None:
    raise errors.IntegrationConfigError(
        f"distillation_loss: alpha={alpha} mixes in the hard-label loss but labels=None. "
        "Fix: pass labels, or alpha=1.0 for the soft loss only.")
  log_q = jax.nn.log_softmax(teacher_log_probs / t, axis=-1)
  log_s = jax.nn.log_softmax(student_logits / t, axis=-1)
  soft = (t * t) * jnp.sum(jnp.exp(log_q) * (log_q - log_s), axis=-1)      # [..., B]
  per_row = a * soft
  if a < 1.0:
    hard = optax.softmax_cross_entropy_with_integer_labels(
        student_logits, jnp.broadcast_to(labels, student_logits.shape[:-1]))
    per_row = per_row + (1.0 - a) * hard
  if mask is None:
    return jnp.mean(per_row, axis=-1)
  mask = jnp.asarray(mask, per_row.dtype)
  return jnp.sum(per_row * mask, axis=-1) / jnp.maximum(jnp.sum(mask), 1.0)


def gain_kept(student: float, single: float, ensemble: float) -> float:
  """The fraction of the ensemble's gain over one member that the student keeps.

  ``(student - single) / (ensemble - single)`` for any metric (accuracy,
  NLL, ...): 1 means the student matches the ensemble, 0 means it is no
  better than a single member, negative means worse. ``nan`` when the
  ensemble has no gain.

  Example:
    >>> round(gain_kept(student=0.95, single=0.90, ensemble=1.0), 6)
    0.5
    >>> round(gain_kept(student=0.30, single=0.40, ensemble=0.20), 6)   # NLL: lower is better
    0.5
  """
  gap = float(ensemble) - float(single)
  if gap == 0.0:
    return float("nan")
  return (float(student) - float(single)) / gap


class DistillResult(NamedTuple):
  """What :func:`distill` returns.

  Attributes:
    variables: the student's ``{'params', 'state'}``, leaves ``[1, ...]``
      (``_train.linen_ensemble(module, 1).apply(variables, x)``).
    losses: ``[num_steps]`` training losses.
  """
  variables: Any
  losses: np.ndarray


def distill(student: nn.Module, teacher_log_probs, x, y, *, key: jax.Array,
            tx: optax.GradientTransformation, temperature: float = 4.0,
            alpha: float = 1.0, num_steps: int = 500, batch_size: int = 64,
            seed: int = 0) -> DistillResult:
  """Trains one student network on the ensemble's fused, softened predictions.

  The teacher's fused log-probabilities on the training inputs are computed
  once (the ensemble is fixed) and passed in; the student is a 1-member
  ensemble trained with the engine's step and :func:`distillation_loss`.

  Args:
    student: a Linen module mapping ``[B, ...]`` to ``[B, C]``.
    teacher_log_probs: ``[N, C]`` fused log-probabilities of the ensemble on
      ``x`` (e.g. ``fj.train.make_predict(ens, fj.fusion.mean())(state, x)[1]``).
    x, y: training inputs ``[N, ...]`` and integer labels ``[N]``.
    key: PRNG key.
    tx: the student's optax transform.
    temperature: ``T > 0``.
    alpha: weight of the soft loss in ``[0, 1]`` (``1 - alpha`` on hard labels).
    num_steps: training steps.
    batch_size: examples per step.
    seed: seed of the data order.

  Returns:
    A :class:`DistillResult`.

  Raises:
    IntegrationConfigError: ``temperature <= 0`` or ``alpha`` outside ``[0, 1]``.
    BatchShapeError: teacher outputs that are not ``[N, C]`` for ``N = len(x)``.

  Example:
    >>> _, fused = fj.train.make_predict(ens, fj.fusion.mean())(state, x)  # doctest: +SKIP
    >>> res = fj.integrate.distill(fj.models.MLP(10, (64,)), fused, x, y,
    ...     key=jax.random.key(1), tx=optax.adam(3e-3))     # doctest: +SKIP

  References:
    Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network",
    2015; Bucilua, Caruana and Niculescu-Mizil, "Model Compression", KDD 2006.
  """
  where = "distill"
  t, a = _check_t_alpha(temperature, alpha, where)
  num_steps = _train.check_int(num_steps, "num_steps", where)
  x, y = _train.check_xy(x, y, where)
  teacher = np.asarray(teacher_log_probs, np.float32)
  if teacher.ndim != 2 or teacher.shape[0] != len(x):
    raise errors.BatchShapeError(
        f"{where}: teacher_log_probs have shape {teacher.shape} but x has N={len(x)} "
        "examples: expected [N, C]. Fix: pass the fused log-probabilities of the "
        "ensemble on x.")
  c = teacher.shape[1]
  # The engine's step passes one target array: [teacher log-probs | label].
  targets = np.concatenate([teacher, y.astype(np.float32)[:, None]], axis=1)

  def loss(out, target, mask):
    labels = target[..., c].astype(jnp.int32)
    return distillation_loss(out, target[..., :c], labels, temperature=t, alpha=a,
                             mask=mask)

  ens1 = _train.linen_ensemble(student, 1)
  state = _train.make_init(ens1, tx)(key, jnp.asarray(x[:1]))
  state, losses = _train.run_steps(make_step(ens1, tx, loss=loss, x_example=x[:1]), state, x, targets,
                                   num_steps=num_steps, batch_size=batch_size, seed=seed)
  return DistillResult(_train.host_copy({"params": state.params["members"],
                                         "state": state.state}), losses)
