"""Voting, exactly as scikit-learn's ``VotingClassifier`` votes."""
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fusionjax.fusion import _checks
from fusionjax.fusion._averaging import log_mixture
from fusionjax.fusion._base import Fusion
from fusionjax.fusion._weighted import fixed_log_weights


def log_zero(dtype) -> float:
  """The finite stand-in for ``log 0`` used by hard votes: ``-sqrt(finfo.max)``.

  ``exp`` of it is exactly 0 (so ``exp(log_probs)`` is an exact one-hot), and
  it can be added up, averaged, scaled or even squared without overflowing to
  ``-inf``, so downstream losses (``0 * log_zero`` in a cross-entropy with
  one-hot labels) and fusions stay NaN-free. -1.8e19 for float32 and
  bfloat16, -255.9 for float16.
  """
  return -float(np.sqrt(np.float64(jnp.finfo(dtype).max)))


def _no_params(key, member_outputs, *, x=None):
  del key, member_outputs, x
  return ()


def hard_vote(weights: Optional[Any] = None) -> Fusion:
  """Majority (plurality) vote of the members' argmax classes.

  Exactly scikit-learn's ``VotingClassifier(voting='hard', weights=w)``
  rule, ``argmax(bincount(preds, weights=w))``: each member votes for
  ``argmax_c z_m[b, c]`` (the lowest index on ties, as ``np.argmax``) with
  weight ``w[m]`` (1 when ``weights`` is ``None``; the weights are *not*
  normalised, as in scikit-learn), and the class with the largest total wins;
  a tie between classes goes to the lowest class index.

  Votes are summed over the member axis: unweighted votes are counted in
  int32 and are exact in any order; weighted votes are summed in the default
  float dtype. With integer (or other dyadic) weights whose sums are exact in
  that dtype the result equals scikit-learn's exactly, on one device or with
  the members sharded over a mesh (each device sums its members, then one
  all-reduce of the ``[B, C]`` counts). With weights like 0.1, whose sums
  round differently in float32 and float64 and in a different summation
  order, a near-tie within float32 rounding may be broken differently from
  scikit-learn (float64) unless ``jax_enable_x64`` is on, and differently
  again when the members are sharded: the exactness promise is unsharded.

  The output is the log of the one-hot winner: 0 for the winning class and
  :func:`log_zero` (``-sqrt(finfo.max)``, finite, e.g. -1.8e19 in float32)
  for the others, so ``argmax`` gives the winner, ``exp`` gives an exact
  one-hot, and nothing downstream turns into NaN. The vote is piecewise
  constant: its gradient with respect to the logits is zero.

  Args:
    weights: ``None`` or one non-negative weight per member (positive sum).

  Returns:
    A ``Fusion`` with no params: ``apply(params, member_logits [M, B, C])
    -> [B, C]`` log of the one-hot winning class.

  Raises:
    WeightsError: weights negative, all zero, or not one per member.
    MemberOutputsError: member outputs that are not ``[M, B, C]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from fusionjax import fusion
    >>> z = jnp.array([[[2., 0., 0.]], [[0., 2., 0.]], [[0., 0., 2.]]])
    >>> f = fusion.hard_vote()  # a three-way tie: class 0 wins
    >>> f.apply(f.init(None, z), z).argmax(-1).tolist()
    [0]
    >>> fusion.hard_vote([1, 1, 3]).apply((), z).argmax(-1).tolist()
    [2]

  References:
    Kuncheva, "Combining Pattern Classifiers: Methods and Algorithms",
    Wiley 2004 (ch. 4, majority vote); scikit-learn ``VotingClassifier``.
  """
  name = f"hard_vote(weights={weights!r})"
  w = (None if weights is None else
       _checks.weights(weights, fusion=name, normalise=False))

  def apply(params, member_outputs, *, x=None, key=None):
    del params, x, key
    m, _, c = _checks.member_outputs(member_outputs, fusion=name)
    _checks.weights_match(w, m, fusion=name)
    votes = jnp.argmax(member_outputs, axis=-1)  # [M, B], lowest index on ties
    if w is None:
      count_dtype = jnp.int32
      vote_w = jnp.ones((m,), count_dtype)
    else:
      vote_w = jnp.asarray(w)  # float32, or float64 under jax_enable_x64
      count_dtype = vote_w.dtype

    # A sum over the member axis (not a scan in member order): under a mesh
    # that shards the members, XLA reduces each device's members locally and
    # all-reduces the [B, C] counts, where a scan gathered the [M, B] votes.
    counts = jnp.sum(vote_w[:, None, None] * jax.nn.one_hot(votes, c, dtype=count_dtype),
                     axis=0)
    winner = jnp.argmax(counts, axis=-1)  # lowest class index on ties
    dtype = member_outputs.dtype
    return jnp.where(jax.nn.one_hot(winner, c, dtype=jnp.bool_),
                     jnp.zeros((), dtype), jnp.asarray(log_zero(dtype), dtype))

  return Fusion(_no_params, apply)


def soft_vote(weights: Optional[Any] = None, probs: bool = False) -> Fusion:
  """The (weighted) average of the members' probabilities, as log-probabilities.

  scikit-learn's ``VotingClassifier(voting='soft', weights=w)`` predicts
  ``argmax np.average(probas, axis=0, weights=w)``, i.e. ``sum_m w_m p_m /
  sum_m w_m``.

  * ``probs=True``: the member outputs *are* the probabilities ``[M, B, C]``
    (e.g. scikit-learn's ``predict_proba``), averaged as ``np.average`` does
    (the weighted sum, then one division by the weight sum) and returned as
    ``log`` of the average. Its labels
    equal ``VotingClassifier``'s exactly, exact ties included, whenever the
    averages are exact in the dtype (e.g. probabilities in multiples of 1/8
    and power-of-two weights, in float32); otherwise its probabilities agree
    at rtol 1e-6 in float32 (1e-12 with ``jax_enable_x64``), and a near-tie
    inside that rounding may be broken differently.
  * ``probs=False`` (default): the member outputs are logits, and the average
    is taken in log space, ``logsumexp_m(log(w_m / sum w) + log_softmax(z_m))``
    (NaN-free for logits of +-1e4). Its probabilities equal scikit-learn's at
    rtol 1e-6, but exact ties are not recoverable from logits: a
    log/softmax round trip is off by an ulp, and two classes that tie in
    probability can come out one ulp apart, so ``argmax`` may pick the other
    class than scikit-learn's lowest index. Use ``probs=True`` where ties matter.

  Both are sums over the member axis: with the members sharded over a mesh,
  each device sums its own and one all-reduce of ``[B, C]`` adds the devices'
  partial sums, in another order than one device's. The probabilities still
  agree at rtol 1e-6; the exact-tie promise above is for unsharded members.

  Unlike :func:`weighted` the member count need not be known in advance
  (weights are checked against ``M`` at trace time).

  Args:
    weights: ``None`` (equal weights) or one non-negative weight per member
      with a positive sum (a zero weight ignores a member).
    probs: the member outputs are probabilities (see above).

  Returns:
    A ``Fusion`` with no params: ``apply(params, member_outputs [M, B, C])
    -> [B, C]`` fused log-probabilities.

  Raises:
    WeightsError: weights negative, all zero, or not one per member.
    MemberOutputsError: member outputs that are not ``[M, B, C]``.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> from fusionjax import fusion
    >>> p = jnp.array([[[0.9, 0.1]], [[0.5, 0.5]]])
    >>> f = fusion.soft_vote([1.0, 3.0])
    >>> print(np.exp(f.apply((), jnp.log(p))).round(3))
    [[0.6 0.4]]
    >>> p = jnp.array([[[.375, .625]], [[.75, .25]], [[.375, .625]]])  # an exact tie
    >>> fusion.soft_vote(probs=True).apply((), p).argmax(-1).tolist()  # as scikit-learn
    [0]

  References:
    Kittler, Hatef, Duin and Matas, "On Combining Classifiers", IEEE TPAMI
    1998 (the sum rule); scikit-learn ``VotingClassifier``.
  """
  name = f"soft_vote(weights={weights!r}{', probs=True' if probs else ''})"
  w = (None if weights is None else  # as given, for messages
       _checks.weights(weights, fusion=name, normalise=False))
  log_w = None if w is None else fixed_log_weights(w / w.sum())

  def apply_logits(params, member_outputs, *, x=None, key=None):
    del params, x, key
    m, _, _ = _checks.member_outputs(member_outputs, fusion=name)
    _checks.weights_match(w, m, fusion=name)
    if log_w is None:
      lw = jnp.full((m, 1, 1), -np.log(m), member_outputs.dtype)
    else:
      lw = jnp.asarray(log_w, member_outputs.dtype)[:, None, None]
    return log_mixture(member_outputs, lw)

  def apply_probs(params, member_outputs, *, x=None, key=None):
    del params, x, key
    m, _, _ = _checks.member_outputs(member_outputs, fusion=name)
    _checks.weights_match(w, m, fusion=name)
    p = member_outputs
    if w is None:
      wm, total = None, float(m)
    else:
      wm = jnp.asarray(w, p.dtype)
      total = jnp.sum(wm)  # np.average's scl = wgt.sum()
    acc = jnp.sum(p if wm is None else p * wm[:, None, None], axis=0)  # np.average's sum
    return jnp.log(acc / total)

  return Fusion(_no_params, apply_probs if probs else apply_logits)
