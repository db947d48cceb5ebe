"""Weighted averaging of probabilities: fixed weights or learned on the simplex."""
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fusionjax import errors
from fusionjax.fusion import _checks
from fusionjax.fusion._averaging import log_mixture
from fusionjax.fusion._base import Fusion


def fixed_log_weights(w: np.ndarray) -> np.ndarray:
  """log of validated weights, ``-inf`` where a weight is 0 (exactly ignored)."""
  with np.errstate(divide="ignore"):
    return np.log(w)


def weighted(
    num_members: int,
    weights: Optional[Any] = None,
    per_class: bool = False,
    learn: bool = True,
) -> Fusion:
  """A weighted average of the members' probabilities, in log space.

  ``fused[b, c] = log sum_m w[m] p_m[b, c]`` with ``p_m = softmax(z_m)``
  and ``w`` on the simplex (non-negative, summing to 1 over members).

  Three modes:

  * ``weights`` given: fixed weights, normalised to sum to 1 (a zero weight
    ignores that member exactly). ``learn`` is not used. No params.
  * ``weights=None, learn=True`` (default): learned weights
    ``w = softmax(params['logits'], axis=0)``, initialised uniform
    (``params['logits']`` is zeros of shape ``[M]``, or ``[M, C]`` when
    ``per_class``). Read the learned weights back with
    ``jax.nn.softmax(params['logits'], axis=0)``.
  * ``weights=None, learn=False``: fixed uniform weights (same as
    :func:`mean`). No params.

  Per-class weights (``per_class=True``): ``w`` has shape ``[M, C]`` and is
  normalised over members separately for every class, so
  ``sum_m w[m, c] = 1`` for each ``c``; member ``m`` is trusted with weight
  ``w[m, c]`` on class ``c``. The fused log-probabilities are
  ``log_softmax_c(log sum_m w[m, c] p_m[b, c])``: the per-class mixture,
  renormalised over classes (with a class-dependent ``w`` the mixture alone no
  longer sums to 1 over classes). With every column equal this is exactly the
  per-member fusion.

  Args:
    num_members: M, the number of members the fusion expects.
    weights: ``None``, or fixed non-negative weights of shape ``[M]`` (or
      ``[M, C]`` when ``per_class``) with a positive sum (per column).
    per_class: one weight vector per class, as above.
    learn: learn the weights when ``weights`` is ``None``.

  Returns:
    A ``Fusion``: ``apply(params, member_logits [M, B, C]) -> [B, C]`` fused
    log-probabilities. Equivariant: permuting members together with the
    weights (or ``params['logits']``) leaves the output unchanged.

  Raises:
    WeightsError: weights of the wrong shape, negative, non-finite or all
      zero.
    MemberOutputsError: member outputs that are not ``[num_members, B, C]``.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from fusionjax import fusion
    >>> z = jnp.log(jnp.array([[[0.9, 0.1]], [[0.5, 0.5]]]))  # [M=2, B=1, C=2]
    >>> f = fusion.weighted(2, weights=[3.0, 1.0])
    >>> print(np.exp(f.apply(f.init(None, z), z)).round(3))
    [[0.8 0.2]]
    >>> g = fusion.weighted(2)  # learned, starts uniform
    >>> jax.nn.softmax(g.init(jax.random.key(0), z)['logits']).tolist()
    [0.5, 0.5]

  References:
    Breiman, "Stacked Regressions", Machine Learning 1996 (non-negative
    combination weights); Kittler, Hatef, Duin and Matas, "On Combining
    Classifiers", IEEE TPAMI 1998.
  """
  name = f"weighted(num_members={num_members!r})"
  num_members = _checks.positive_int(num_members, fusion=name,
                                     name="num_members")

  if weights is not None or not learn:
    if weights is None:
      w = np.full((num_members,), 1.0 / num_members)
      per_class_fixed = False
    else:
      w = _checks.weights(weights, fusion=name, num_members=num_members,
                          per_class=per_class)
      per_class_fixed = per_class
    log_w = fixed_log_weights(w)

    def init(key, member_outputs, *, x=None):
      del key, x
      _checks.member_outputs(member_outputs, fusion=name,
                             num_members=num_members)
      return ()

    def apply(params, member_outputs, *, x=None, key=None):
      del params, x, key
      _, _, c = _checks.member_outputs(member_outputs, fusion=name,
                                       num_members=num_members)
      lw = jnp.asarray(log_w, member_outputs.dtype)
      if not per_class_fixed:
        return log_mixture(member_outputs, lw[:, None, None])
      if log_w.shape[1] != c:
        raise errors.WeightsError(
            f"{name}: per-class weights of shape {w.shape} for member outputs "
            f"{tuple(member_outputs.shape)} with C={c} classes. Fix: pass "
            f"weights of shape ({num_members}, {c}).")
      return jax.nn.log_softmax(
          log_mixture(member_outputs, lw[:, None, :]), axis=-1)

    return Fusion(init, apply)

  def init(key, member_outputs, *, x=None):
    del key, x
    m, _, c = _checks.member_outputs(member_outputs, fusion=name,
                                     num_members=num_members)
    shape = (m, c) if per_class else (m,)
    return {"logits": jnp.zeros(shape, member_outputs.dtype)}

  def apply(params, member_outputs, *, x=None, key=None):
    del x, key
    _, _, c = _checks.member_outputs(member_outputs, fusion=name,
                                     num_members=num_members)
    logits = params["logits"]
    if per_class and logits.shape[1] != c:
      raise errors.MemberOutputsError(
          f"{name}: params['logits'] of shape {logits.shape} were built for "
          f"{logits.shape[1]} classes; got member outputs "
          f"{tuple(member_outputs.shape)} with C={c}. Fix: re-run init on "
          "outputs with the same number of classes.")
    log_w = jax.nn.log_softmax(logits, axis=0)
    if not per_class:
      return log_mixture(member_outputs, log_w[:, None, None])
    return jax.nn.log_softmax(
        log_mixture(member_outputs, log_w[:, None, :]), axis=-1)

  return Fusion(init, apply)
