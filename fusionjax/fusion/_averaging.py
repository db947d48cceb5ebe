"""Averaging fusions: the mean of probabilities and the mean of logits."""
import math

import jax
import jax.numpy as jnp

from fusionjax.fusion import _checks
from fusionjax.fusion._base import Fusion


def log_mixture(member_logits: jax.Array, log_weights) -> jax.Array:
  """``log sum_m w_m softmax(z_m)``, in log space.

  Args:
    member_logits: ``[M, B, C]`` logits.
    log_weights: log-weights broadcastable to ``[M, B, C]`` (``-inf`` for a
      zero weight is fine: it contributes exactly nothing, and no NaN appears
      in values or gradients).

  Returns:
    ``[B, C]``: ``logsumexp_m(log w_m + log_softmax(z_m))``.
  """
  log_p = jax.nn.log_softmax(member_logits, axis=-1)
  return jax.nn.logsumexp(log_weights + log_p, axis=0)


def _no_params(key, member_outputs, *, x=None):
  del key, member_outputs, x
  return ()


def mean() -> Fusion:
  """The mean of the members' probabilities, computed in log space.

  ``fused = logsumexp_m(log_softmax(z_m)) - log M``, the log of
  ``mean_m softmax(z_m)``; never ``log(mean(softmax))``, which underflows
  to ``-inf`` (and NaN gradients) for confident members. NaN-free for logits
  of +-1e4. Invariant to the order of the members.

  Returns:
    A ``Fusion`` with no params (``init`` returns ``()``); ``apply`` maps
    member logits ``[M, B, C]`` to fused log-probabilities ``[B, C]``.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from fusionjax import fusion
    >>> z = jnp.log(jnp.array([[[0.9, 0.1]], [[0.5, 0.5]]]))  # [M=2, B=1, C=2]
    >>> f = fusion.mean()
    >>> print(np.exp(f.apply(f.init(None, z), z)).round(3))
    [[0.7 0.3]]

  References:
    Lakshminarayanan, Pritzel and Blundell, "Simple and Scalable Predictive
    Uncertainty Estimation using Deep Ensembles", NeurIPS 2017.
  """

  def apply(params, member_outputs, *, x=None, key=None):
    del params, x, key
    m, _, _ = _checks.member_outputs(member_outputs, fusion="mean()")
    log_p = jax.nn.log_softmax(member_outputs, axis=-1)
    return jax.nn.logsumexp(log_p, axis=0) - math.log(m)

  return Fusion(_no_params, apply)


def mean_logits() -> Fusion:
  """The mean of the members' logits, then ``log_softmax``.

  ``fused = log_softmax(mean_m z_m)``: a normalised geometric mean of the
  members' probabilities (a product of experts with equal exponents
  ``1/M``). Sharper than :func:`mean` when members disagree. Invariant to the
  order of the members.

  Returns:
    A ``Fusion`` with no params; ``apply`` maps member logits ``[M, B, C]`` to
    fused log-probabilities ``[B, C]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from fusionjax import fusion
    >>> z = jnp.array([[[2.0, 0.0]], [[0.0, 0.0]]])
    >>> f = fusion.mean_logits()
    >>> f.apply(f.init(None, z), z).shape
    (1, 2)

  References:
    Hinton, "Training Products of Experts by Minimizing Contrastive
    Divergence", Neural Computation 2002 (the geometric pool).
  """

  def apply(params, member_outputs, *, x=None, key=None):
    del params, x, key
    _checks.member_outputs(member_outputs, fusion="mean_logits()")
    return jax.nn.log_softmax(jnp.mean(member_outputs, axis=0), axis=-1)

  return Fusion(_no_params, apply)
