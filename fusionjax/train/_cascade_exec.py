"""An executing cascade: stage s runs only on the samples that have not exited.

:func:`fusionjax.fusion.cascade` is a fusion: under ``jit`` every stage runs on
every sample (static shapes) and the costs describe what an early-exit
deployment would pay. :func:`cascade_predict` is that deployment: a host-side
loop over the stages that gathers the samples still undecided, pads them to a
bucket size (so a handful of shapes compile once), and runs one member's
forward pass on them.
"""
import weakref
from typing import Any, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fusionjax import errors
from fusionjax.ensemble import Ensemble

_CONFIDENCES = ("max_prob", "margin")
_STAGE_FNS = weakref.WeakKeyDictionary()  # member apply -> jitted stage function


def _stage_fn(apply_one):
  """``(params, state, m, x, idx) -> (log_probs [n, C], confidence [n, 2])``, jitted once."""
  fn = _STAGE_FNS.get(apply_one)
  if fn is None:

    def stage(params, state, m, x, idx):
      pick = lambda a: jax.lax.dynamic_index_in_dim(a, m, keepdims=False)
      xs = jnp.take(x, idx, axis=0)
      out, _ = apply_one({"params": jax.tree.map(pick, params),
                          "state": jax.tree.map(pick, state)}, xs, None, False)
      log_p = jax.nn.log_softmax(out.astype(jnp.float32), axis=-1)
      top2 = jax.lax.top_k(jnp.exp(log_p), 2)[0] if log_p.shape[-1] > 1 else jnp.concatenate(
          [jnp.exp(log_p), jnp.zeros_like(log_p)], axis=-1)
      return log_p, top2

    fn = _STAGE_FNS[apply_one] = jax.jit(stage)
  return fn


def _thresholds(thresholds: Any, stages: int) -> np.ndarray:
  t = np.asarray(thresholds, dtype=np.float64)
  if t.ndim == 0:
    t = np.full((stages - 1,), float(t))
  if t.ndim != 1 or t.shape[0] != stages - 1 or not np.all((t >= 0) & (t <= 1)):
    raise errors.ThresholdError(
        f"cascade_predict: an ensemble of M={stages} members is a cascade of "
        f"{stages} stages and needs {stages - 1} thresholds in [0, 1] (the last "
        f"stage always answers); got {np.asarray(thresholds).tolist()}. Fix: pass "
        f"{stages - 1} numbers in [0, 1], or one number for every stage.")
  return t


def _bucket(n: int, bucket: int, cap: int) -> int:
  """The padded size of ``n`` remaining samples: ``bucket * 2**k``, at most ``cap``."""
  size = bucket
  while size < n:
    size *= 2
  return min(size, cap)


def cascade_predict(ensemble: Ensemble, state, x, thresholds, confidence: str = "max_prob",
                    bucket: int = 64, answer: str = "member") -> Tuple[jax.Array, jax.Array]:
  """Early-exit prediction: each member is a stage, run only where still needed.

  Stage ``s`` is member ``s`` (member order). A sample exits at the first stage
  whose confidence (``'max_prob'``: the largest class probability;
  ``'margin'``: top-1 minus top-2 probability) is ``>= thresholds[s]``; the
  last stage always answers. Stage ``s`` runs member ``s``'s forward pass on
  the samples still undecided only: they are gathered, padded to
  ``bucket * 2**k`` rows (at most the batch; so at most ``log2(B / bucket) + 2``
  shapes compile, once), and the padding rows are dropped.

  With ``answer='member'`` stage ``s`` answers with member ``s``'s
  probabilities (the rule of :func:`fusionjax.fusion.cascade`). With
  ``answer='running_mean'`` it answers with the mean of members ``0..s``'s
  probabilities (a cascade of growing ensembles, Wang et al. 2022): the
  confidence is that mean's, and the last stage is the full ensemble's mean.
  Either way stage ``s`` runs one member, on the remaining samples only.

  Args:
    ensemble: a ``from_fn`` / ``from_linen`` / ``from_nnx`` ensemble.
    state: a :class:`~fusionjax.train.TrainState` (or anything with
      ``.params['members']`` and ``.state``).
    x: inputs ``[B, ...]``.
    thresholds: ``M - 1`` numbers in ``[0, 1]``, or one for every stage.
    confidence: ``'max_prob'`` or ``'margin'``.
    bucket: the smallest padded size.
    answer: ``'member'`` or ``'running_mean'`` (see above).

  Returns:
    ``(log_probs [B, C], stage [B] int32)``: the answering member's
    log-probabilities and its index; equal to applying the rule to all
    members' outputs (:func:`fusionjax.fusion.cascade`).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import fusionjax as fj
    >>> ens = fj.ensemble.from_linen(fj.models.MLP(3, (8,)), 3)
    >>> st = fj.train.init(ens, optax.sgd(0.1), jax.random.key(0), jnp.ones((1, 4)))
    >>> logp, stage = fj.train.cascade_predict(ens, st, jnp.ones((5, 4)), [0.5, 0.5])
    >>> logp.shape, stage.shape
    ((5, 3), (5,))

  References:
    Viola and Jones, 2001. Rapid object detection using a boosted cascade of
    simple features. Wang et al., 2022. Wisdom of committees: an overlooked
    approach to faster and more accurate models.
  """
  apply_one = ensemble.member_apply
  if apply_one is None:
    raise TypeError(
        "cascade_predict runs one member at a time and needs an ensemble built "
        "by fusionjax.ensemble.from_fn / from_linen / from_nnx; got one without a "
        "single-member apply (e.g. groups(...)). Fix: cascade one group "
        "(fusionjax.ensemble.select_group) or use fusionjax.fusion.cascade.")
  if confidence not in _CONFIDENCES:
    raise errors.ThresholdError(
        f"cascade_predict: confidence={confidence!r}; use one of {_CONFIDENCES}.")
  if answer not in ("member", "running_mean"):
    raise ValueError(f"cascade_predict: answer={answer!r}; use 'member' or 'running_mean'.")
  if not isinstance(bucket, int) or bucket < 1:
    raise ValueError(f"cascade_predict: bucket={bucket!r} must be a positive int.")
  m = ensemble.size
  t = _thresholds(thresholds, m)
  x = jnp.asarray(x)
  b = x.shape[0]
  fn = _stage_fn(apply_one)
  params, mstate = state.params["members"], state.state
  remaining = np.arange(b)
  log_probs, stage, total = None, np.full((b,), m - 1, np.int32), None
  for s in range(m):
    n = remaining.shape[0]
    if n == 0:
      break
    size = _bucket(n, bucket, b)
    idx = np.zeros((size,), np.int32)
    idx[:n] = remaining
    lp, top2 = fn(params, mstate, jnp.int32(s), x, jnp.asarray(idx))
    lp, top2 = np.asarray(lp)[:n], np.asarray(top2)[:n]
    if log_probs is None:
      log_probs = np.zeros((b, lp.shape[-1]), lp.dtype)
      total = np.zeros((b, lp.shape[-1]), lp.dtype) if answer == "running_mean" else None
    if total is not None:  # the mean of members 0..s's probabilities
      total[remaining] += np.exp(lp)
      mean = total[remaining] / np.float32(s + 1)
      with np.errstate(divide="ignore"):
        lp = np.log(mean)
      top2 = -np.sort(-mean, axis=-1)[:, :2]
    conf = top2[:, 0] if confidence == "max_prob" else top2[:, 0] - top2[:, 1]
    done = np.ones((n,), bool) if s == m - 1 else conf >= np.float32(t[s])
    log_probs[remaining[done]] = lp[done]
    stage[remaining[done]] = s
    remaining = remaining[~done]
  return jnp.asarray(log_probs), jnp.asarray(stage)
