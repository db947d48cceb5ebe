"""Explaining a fused decision: how much each member contributed to it.

Two views, both ``[M, B]`` (one score per member per example):

* :func:`contributions`: for averaging fusions ``p(k) = sum_m w_m p_m(k)``,
  the member's weighted log-probability of the predicted class ``k``
  (``w_m log p_m(k)``), or, normalised, its share of the fused probability
  ``w_m p_m(k) / p(k)`` (non-negative, sums to 1 over members).
* :func:`grad_attribution`: for any fusion, gradient x input of the fused
  log-probability of the predicted class with respect to the member logits,
  summed over classes: ``sum_c z[m, b, c] d log p(k_b) / d z[m, b, c]``.
"""
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from fusionjax import errors


def _check_member_logits(member_logits, where):
  z = jnp.asarray(member_logits)
  if z.ndim != 3:
    raise errors.MemberOutputsError(
        f"{where}: member logits must be [M, B, C]; got shape {tuple(z.shape)}. Fix: pass "
        "the stacked outputs of an ensemble, member axis first.")
  return z


def _check_predicted(predicted, b, c, where):
  k = jnp.asarray(predicted)
  if k.shape != (b,) or not jnp.issubdtype(k.dtype, jnp.integer):
    raise errors.BatchShapeError(
        f"{where}: predicted must be integer classes [B={b}]; got shape "
        f"{tuple(k.shape)} and dtype {k.dtype}. Fix: pass jnp.argmax(fused, -1).")
  kv = np.asarray(k) if not isinstance(k, jax.core.Tracer) else None
  if kv is not None and kv.size and (kv.min() < 0 or kv.max() >= c):
    raise errors.LabelError(
        f"{where}: predicted classes span [{kv.min()}, {kv.max()}] outside [0, {c}). "
        f"Fix: pass class indices in [0, {c}).")
  return k.astype(jnp.int32)


def contributions(weights: Optional[jax.Array], member_logits: jax.Array,
                  predicted: jax.Array, *, normalize: bool = False) -> jax.Array:
  """Each member's contribution to the fused probability of the predicted class.

  With ``p_m = softmax(z_m)`` and fusion weights ``w`` (uniform ``1/M`` when
  ``None``, as in :func:`fusionjax.fusion.mean`):

  * ``normalize=False``: ``w_m * log p_m(k_b)``; closer to 0 means the member
    backs the decision more (a confident, agreeing member scores about 0; a
    member that puts little probability on ``k`` scores very negative).
  * ``normalize=True``: ``w_m p_m(k_b) / sum_m' w_m' p_m'(k_b)``, the member's
    share of the fused probability of ``k_b`` (the posterior responsibility of
    member ``m`` in the mixture); non-negative, sums to 1 over members, exact
    for :func:`fusionjax.fusion.mean` and :func:`fusionjax.fusion.weighted`.

  Args:
    weights: ``None``, member weights ``[M]`` or per-class weights ``[M, C]``
      (e.g. ``jax.nn.softmax(params['logits'], axis=0)`` of a learned
      ``weighted`` fusion); they are normalised to sum to 1 over members.
    member_logits: ``[M, B, C]``.
    predicted: ``int [B]`` the fused decision (e.g. ``argmax`` of the fused output).
    normalize: return shares instead of weighted log-probabilities.

  Returns:
    ``[M, B]`` contributions.

  Raises:
    MemberOutputsError: member logits that are not ``[M, B, C]``.
    WeightsError: weights of the wrong shape, negative or summing to 0.

  Example:
    >>> z = jnp.log(jnp.array([[[0.9, 0.1]], [[0.3, 0.7]]]))     # [M=2, B=1, C=2]
    >>> contributions(None, z, jnp.array([0]), normalize=True).ravel().round(2).tolist()
    [0.75, 0.25]

  References:
    Jacobs et al., "Adaptive Mixtures of Local Experts", Neural Computation
    1991 (responsibilities of mixture components).
  """
  z = _check_member_logits(member_logits, "contributions")
  m, b, c = z.shape
  k = _check_predicted(predicted, b, c, "contributions")
  if weights is None:
    w = jnp.full((m, 1), 1.0 / m, z.dtype)
  else:
    w = jnp.asarray(weights, z.dtype)
    if w.shape not in ((m,), (m, c)):
      raise errors.WeightsError(
          f"contributions: weights of shape {tuple(w.shape)} for M={m} members and C={c} "
          f"classes. Fix: pass weights [M={m}] or [M={m}, C={c}], or None for uniform.")
    wv = np.asarray(w) if not isinstance(w, jax.core.Tracer) else None
    if wv is not None and (np.any(wv < 0) or np.any(wv.sum(0) <= 0)):
      raise errors.WeightsError(
          f"contributions: weights {wv.round(4).tolist()} must be non-negative with a "
          "positive sum over members. Fix: pass fusion weights on the simplex.")
    w = w / jnp.sum(w, axis=0, keepdims=True)
    w = w[:, None] if w.ndim == 1 else w
  log_p = jax.nn.log_softmax(z, axis=-1)
  log_pk = jnp.take_along_axis(log_p, k[None, :, None], axis=-1)[..., 0]      # [M, B]
  wk = w[:, 0][:, None] if w.shape[1] == 1 else w[:, k]                        # [M, B]
  if not normalize:
    return wk * log_pk
  return jax.nn.softmax(jnp.log(wk) + log_pk, axis=0)


def grad_attribution(fusion, fusion_params, member_logits: jax.Array,
                     predicted: Optional[jax.Array] = None, *, x=None) -> jax.Array:
  """Gradient x input attribution of a fused decision to the members.

  ``a[m, b] = sum_c z[m, b, c] * d fused[b, k_b] / d z[m, b, c]`` with
  ``fused = fusion.apply(fusion_params, z)``. For fusions that depend on the
  members only through their probabilities (mean, weighted, voting...) the
  gradient sums to 0 over classes, so ``a`` does not change when a member's
  logits are shifted by a constant. For :func:`fusionjax.fusion.mean` it is
  ``r_m(k) (z_m,k - sum_c p_m,c z_m,c)`` with ``r_m(k)`` the member's share of
  ``p(k)``: large when the member backs ``k`` and is sure of it.

  Args:
    fusion: a :class:`~fusionjax.fusion.Fusion`.
    fusion_params: its params (``()`` for fusions without).
    member_logits: ``[M, B, C]``.
    predicted: ``int [B]``; default the fused argmax.
    x: the input batch, for fusions that read it (gating, stacking).

  Returns:
    ``[M, B]`` attributions.

  Raises:
    MemberOutputsError: member logits that are not ``[M, B, C]``.

  Example:
    >>> z = jnp.log(jnp.array([[[0.9, 0.1]], [[0.3, 0.7]]]))     # [M=2, B=1, C=2]
    >>> a = grad_attribution(fj.fusion.mean(), (), z)             # explains class 0
    >>> a.shape, bool(a[0, 0] > 0 > a[1, 0])
    ((2, 1), True)

  References:
    Shrikumar et al., "Not Just a Black Box: Learning Important Features
    Through Propagating Activation Differences", 2016 (gradient x input);
    Simonyan et al., "Deep Inside Convolutional Networks", 2014 (saliency).
  """
  z = _check_member_logits(member_logits, "grad_attribution")
  m, b, c = z.shape
  kw = {} if x is None else {"x": x}
  fused = fusion.apply(fusion_params, z, **kw)
  k = (jnp.argmax(fused, axis=-1).astype(jnp.int32) if predicted is None
       else _check_predicted(predicted, b, c, "grad_attribution"))

  def picked(zz):
    out = fusion.apply(fusion_params, zz, **kw)
    return jnp.sum(jnp.take_along_axis(out, k[:, None], axis=-1))

  g = jax.grad(picked)(z)                                                     # [M, B, C]
  return jnp.sum(jnp.where(g == 0, 0.0, g * z), axis=-1)
