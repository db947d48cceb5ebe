"""Regression fusions: weighted mean, and the Gaussian mixture of Deep Ensembles."""
from typing import Any, Optional

import jax.numpy as jnp

from fusionjax import errors
from fusionjax.fusion import _checks
from fusionjax.fusion._base import Fusion


def _no_params(key, member_outputs, *, x=None):
  del key, member_outputs, x
  return ()


def weighted_mean(weights: Optional[Any] = None) -> Fusion:
  """The (weighted) mean of the members' predictions.

  ``fused[b, d] = sum_m w_m y_m[b, d] / sum_m w_m`` (equal weights when
  ``weights`` is ``None``).

  Args:
    weights: ``None`` or one non-negative weight per member with a positive
      sum (normalised here).

  Returns:
    A ``Fusion`` with no params: ``apply(params, predictions [M, B, D]) ->
    [B, D]``.

  Raises:
    MemberOutputsError: predictions that are not ``[M, B, D]``.
    WeightsError: weights negative, all zero, or not one per member.

  Example:
    >>> import jax.numpy as jnp
    >>> from fusionjax import fusion
    >>> y = jnp.array([[[1.0]], [[4.0]]])                 # [M=2, B=1, D=1]
    >>> fusion.weighted_mean([2.0, 1.0]).apply((), y).tolist()
    [[2.0]]

  References:
    Perrone and Cooper, "When Networks Disagree: Ensemble Methods for Hybrid
    Neural Networks", 1993 (the basic ensemble method).
  """
  name = f"weighted_mean(weights={weights!r})"
  w = (None if weights is None else  # as given, for messages
       _checks.weights(weights, fusion=name, normalise=False))

  def apply(params, member_outputs, *, x=None, key=None):
    del params, x, key
    m, _, _ = _checks.member_outputs(member_outputs, fusion=name,
                                     what="predictions", kind="predictions")
    _checks.weights_match(w, m, fusion=name)
    if w is None:
      return jnp.mean(member_outputs, axis=0)
    ww = jnp.asarray(w / w.sum(), member_outputs.dtype)
    return jnp.tensordot(ww, member_outputs, axes=1)

  return Fusion(_no_params, apply)


def gaussian_mixture() -> Fusion:
  """Mean and variance of the uniform mixture of the members' Gaussians.

  Each member predicts a mean ``mu_m`` and a *variance* ``var_m > 0`` (e.g.
  ``softplus(raw) + 1e-6``), given either as

  * one array ``[M, B, 2 * D]``: means in the first ``D`` columns, variances in
    the last ``D``; the output is then ``[B, 2 * D]`` laid out the same way,
    so the fusion composes; or
  * a pair ``(mu [M, B, D], var [M, B, D])``; the output is then the pair
    ``(mu* [B, D], var* [B, D])``.

  ``mu* = mean_m mu_m`` and ``var* = mean_m (var_m + mu_m^2) - mu*^2``,
  computed as the equal ``mean_m var_m + mean_m (mu_m - mu*)^2`` (aleatoric
  plus epistemic), which does not cancel catastrophically and is never
  negative.

  Returns:
    A ``Fusion`` with no params.

  Raises:
    MemberOutputsError: not ``[M, B, 2D]`` (odd last dim), or a pair of
      different shapes.

  Example:
    >>> import jax.numpy as jnp
    >>> from fusionjax import fusion
    >>> mu, var = jnp.array([[[0.0]], [[2.0]]]), jnp.array([[[1.0]], [[1.0]]])
    >>> m, v = fusion.gaussian_mixture().apply((), (mu, var))
    >>> m.tolist(), v.tolist()
    ([[1.0]], [[2.0]])

  References:
    Lakshminarayanan, Pritzel and Blundell, "Simple and Scalable Predictive
    Uncertainty Estimation using Deep Ensembles", NeurIPS 2017.
  """
  name = "gaussian_mixture()"

  def moments(mu, var):
    mu_star = jnp.mean(mu, axis=0, keepdims=True)
    var_star = jnp.mean(var, axis=0) + jnp.mean(
        jnp.square(mu - mu_star), axis=0)
    return mu_star[0], var_star

  def apply(params, member_outputs, *, x=None, key=None):
    del params, x, key
    if isinstance(member_outputs, (tuple, list)):
      if len(member_outputs) != 2:
        raise errors.MemberOutputsError(
            f"{name}: a pair (mu, var) is expected; got a sequence of "
            f"{len(member_outputs)}. Fix: pass (mu [M, B, D], var [M, B, D]).")
      mu, var = member_outputs
      for what, a in (("mu", mu), ("var", var)):
        _checks.member_outputs(a, fusion=name, what=what, kind="predictions")
      if mu.shape != var.shape:
        raise errors.MemberOutputsError(
            f"{name}: mu {tuple(mu.shape)} and var {tuple(var.shape)} differ "
            "in shape. Fix: give every mean its variance, both [M, B, D].")
      return moments(mu, var)
    _, _, d2 = _checks.member_outputs(member_outputs, fusion=name,
                                      what="predictions", kind="predictions")
    if d2 % 2:
      raise errors.MemberOutputsError(
          f"{name}: predictions {tuple(member_outputs.shape)} must be "
          f"[M, B, 2*D] (means then variances); the last dim {d2} is odd. "
          "Fix: concatenate [mu, var] on the last axis, or pass (mu, var).")
    d = d2 // 2
    mu_star, var_star = moments(member_outputs[..., :d],
                                member_outputs[..., d:])
    return jnp.concatenate([mu_star, var_star], axis=-1)

  return Fusion(_no_params, apply)
