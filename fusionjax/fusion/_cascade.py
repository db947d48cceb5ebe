"""Serial fusion: confidence-gated cascades and learned step-by-step combination."""
import inspect
import math
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fusionjax import errors
from fusionjax.fusion import _checks
from fusionjax.fusion._base import Fusion

_CONFIDENCES = ("max_prob", "margin")
_EPS = 1e-6  # learned thresholds live in [_EPS, 1 - _EPS]: logit(0) is -inf


class CascadeInfo(NamedTuple):
  """Which stage answered each sample, and what it cost.

  Attributes:
    stage: ``int32 [B]``, the stage that answers under the hard rule (the
      first stage whose confidence reaches its threshold; the last stage
      otherwise), also for a ``soft`` cascade.
    exit_prob: ``[B, S]``, the probability of exiting at each stage: one-hot
      of ``stage`` for the hard rule; the relaxed exit probabilities
      ``g_s prod_{j<s} (1 - g_j)`` for a ``soft`` cascade.
    confidence: ``[B, S]``, every stage's confidence.
    cost: ``[B]``, each sample's cost: ``sum_s exit_prob[b, s] * cumcost[s]``
      with ``cumcost[s] = costs[0] + ... + costs[s]`` (a sample that exits at
      stage s paid for stages 0..s).
    expected_cost: scalar, the mean of ``cost`` over the batch.
  """
  stage: jax.Array
  exit_prob: jax.Array
  confidence: jax.Array
  cost: jax.Array
  expected_cost: jax.Array


def _thresholds(thresholds: Any, name: str) -> np.ndarray:
  try:
    t = np.asarray(thresholds, dtype=np.float64)
  except (TypeError, ValueError):
    raise errors.ThresholdError(
        f"{name}: thresholds must be a number or a sequence of numbers in "
        f"[0, 1]; got {thresholds!r}. Fix: e.g. thresholds=[0.9, 0.8].") from None
  if t.ndim > 1:
    raise errors.ThresholdError(
        f"{name}: thresholds must be a number or a 1-D sequence (one per "
        f"stage but the last); got shape {t.shape}. Fix: e.g. [0.9, 0.8].")
  bad = np.flatnonzero(~((t >= 0.0) & (t <= 1.0)).reshape(-1))
  if bad.size:
    vals = t.reshape(-1)[bad].tolist()
    raise errors.ThresholdError(
        f"{name}: thresholds must be in [0, 1] (confidences are "
        f"probabilities or margins of probabilities); got {vals} at stage "
        f"{bad.tolist()} of {t.tolist()}. Fix: use 0 (always exit) ... 1 "
        "(exit only when certain).")
  return t


def _confidence(log_ps: jax.Array, kind: str) -> jax.Array:
  """``[S, B, C]`` log-probs -> ``[S, B]`` confidence."""
  p = jnp.exp(log_ps)
  if kind == "max_prob":
    return jnp.max(p, axis=-1)
  top2 = jax.lax.top_k(p, 2)[0]
  return top2[..., 0] - top2[..., 1]


def cascade(
    thresholds: Any,
    confidence: str = "max_prob",
    costs: Optional[Sequence[float]] = None,
    stages: Optional[Sequence[Fusion]] = None,
    *,
    soft: bool = False,
    temperature: float = 0.05,
    learn_thresholds: bool = False,
) -> Fusion:
  """A confidence-gated cascade: a sample exits at the first confident stage.

  Stages run in order; a sample exits at the first stage ``s`` whose
  confidence (``'max_prob'``: ``max_c p_s[c]``, or ``'margin'``: top-1 minus
  top-2 probability) is ``>= thresholds[s]``; the last stage always answers.
  The fused output is the answering stage's log-probabilities. By default
  member ``s`` is stage ``s`` (``S = M`` stages); ``stages`` may instead be a
  list of fusions over the member outputs, e.g. a single member then a
  learned weighted average of three (a *mixed* fusion)::

      cascade([0.9], stages=[select([0]),
                             chain(select([1, 2, 3]), weighted(3))])

  A stage may return fused ``[B, C]`` or one member ``[1, B, C]``; its output
  goes through ``log_softmax``.

  Which stage answered, each sample's cost and the expected cost come from
  :func:`cascade_info` (or ``apply(..., return_info=True)``, which returns
  ``(log_probs, CascadeInfo)``); ``apply`` alone returns log-probs, like
  every fusion. Under ``jit`` all stages run on all samples (static shapes);
  the costs describe what an early-exit deployment pays.

  ``soft=True`` replaces the hard rule by a smooth relaxation for training:
  stage ``s < S-1`` exits with probability
  ``g_s = sigmoid((conf_s - t_s) / temperature)``, so sample ``b`` leaves at
  stage ``s`` with ``P_s = g_s prod_{j<s} (1 - g_j)`` (``g_{S-1} = 1``) and
  the output is the mixture ``log sum_s P_s p_s``. Gradients reach the
  stages, the confidences and (``learn_thresholds=True``) the thresholds,
  stored as ``params['thresholds'] = logit(t)``, so ``t = sigmoid(.)``; a
  threshold of exactly 0 or 1 is stored as ``1e-6`` or ``1 - 1e-6``. Params
  of the soft and hard cascades built with the same arguments are
  interchangeable: train with ``soft=True``, deploy the exact hard rule with
  ``soft=False``.

  Params: ``{'stages': (params of each stage fusion, ...)}`` (``()`` when
  every member is a stage), plus ``'thresholds'`` ``[S-1]`` when learned.

  Args:
    thresholds: one threshold in ``[0, 1]`` per stage but the last (``S-1``
      values), or one number used for all of them.
    confidence: ``'max_prob'`` or ``'margin'``.
    costs: per-stage costs ``[S]`` (e.g. FLOPs), non-negative; ``None``
      counts stages (every cost 1).
    stages: ``None`` (every member is a stage) or a sequence of fusions.
    soft: train-time relaxation, as above.
    temperature: the relaxation's temperature (> 0).
    learn_thresholds: make the thresholds params.

  Returns:
    A ``Fusion``: ``apply(params, member_logits [M, B, C], *, x=None,
    key=None, return_info=False) -> [B, C]`` log-probabilities (and a
    :class:`CascadeInfo` when ``return_info``).

  Raises:
    ThresholdError: a threshold outside ``[0, 1]``, or not ``S-1`` of them.
    StageClassesError: stages that output different numbers of classes.
    FusionConfigError: an unknown ``confidence``, bad ``costs`` or
      ``temperature``.

  Example:
    >>> import jax.numpy as jnp
    >>> from fusionjax import fusion
    >>> p = jnp.array([[[0.95, 0.05], [0.6, 0.4]],   # stage 0
    ...                [[0.2, 0.8], [0.3, 0.7]]])    # stage 1
    >>> f = fusion.cascade(thresholds=[0.9], costs=[1.0, 10.0])
    >>> info = fusion.cascade_info(f, f.init(None, jnp.log(p)), jnp.log(p))
    >>> info.stage.tolist(), info.cost.tolist(), float(info.expected_cost)
    ([0, 1], [1.0, 11.0], 6.0)

  References:
    Viola and Jones, "Rapid Object Detection using a Boosted Cascade of
    Simple Features", CVPR 2001; Wang, Kondratyuk, Christiansen, Kitani,
    Alon and Eban, "Wisdom of Committees: An Overlooked Approach to Faster
    and More Accurate Models", ICLR 2022.
  """
  name = f"cascade(thresholds={thresholds!r}, confidence={confidence!r})"
  t_np = _thresholds(thresholds, name)
  _checks.option(confidence, _CONFIDENCES, fusion=name, name="confidence")
  if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
          and temperature > 0):
    raise errors.FusionConfigError(
        f"{name}: temperature={temperature!r} must be a finite number > 0. "
        "Fix: e.g. temperature=0.05 (smaller is closer to the hard rule).")
  stages = None if stages is None else tuple(stages)
  if stages is not None and not stages:
    raise errors.FusionConfigError(
        f"{name}: stages=[] has no stage. Fix: pass at least one fusion, or "
        "stages=None to make every member a stage.")
  costs_np = None
  if costs is not None:
    try:
      costs_np = np.asarray(costs, dtype=np.float64)
    except (TypeError, ValueError):
      costs_np = np.asarray([np.nan])
    if (costs_np.ndim != 1 or not np.all(np.isfinite(costs_np))
        or np.any(costs_np < 0)):
      raise errors.FusionConfigError(
          f"{name}: costs must be a 1-D sequence of finite, non-negative "
          f"per-stage costs; got {costs!r}. Fix: e.g. costs=[1.0, 4.0].")

  def num_stages(m: int) -> int:
    s = m if stages is None else len(stages)
    if t_np.ndim == 1 and t_np.shape[0] != s - 1:
      raise errors.ThresholdError(
          f"{name}: a cascade of S={s} stages needs S-1={s - 1} thresholds "
          f"(the last stage always answers); got {t_np.shape[0]}: "
          f"{t_np.tolist()}. Fix: pass {s - 1} thresholds, or one number for "
          "all stages.")
    if costs_np is not None and costs_np.shape[0] != s:
      raise errors.FusionConfigError(
          f"{name}: got {costs_np.shape[0]} costs {costs_np.tolist()} for "
          f"S={s} stages. Fix: pass one cost per stage.")
    return s

  if stages is not None:
    num_stages(len(stages))  # thresholds and costs fit the stages: fail now

  def init(key, member_outputs, *, x=None):
    m, _, _ = _checks.member_outputs(member_outputs, fusion=name)
    s = num_stages(m)
    params = {"stages": ()}
    if stages is not None:
      keys = [None] * s if key is None else jax.random.split(key, s)
      params["stages"] = tuple(
          st.init(k, member_outputs, x=x) for st, k in zip(stages, keys))
    if learn_thresholds:
      t = np.clip(np.broadcast_to(t_np, (s - 1,)), _EPS, 1.0 - _EPS)
      params["thresholds"] = jnp.asarray(np.log(t) - np.log1p(-t),
                                         member_outputs.dtype)
    return params

  def stage_log_probs(params, member_outputs, x, key, s):
    if stages is None:
      return jax.nn.log_softmax(member_outputs, axis=-1)
    if len(params["stages"]) != s:
      raise errors.FusionConfigError(
          f"{name}: params hold {len(params['stages'])} stages' params for "
          f"{s} stages. Fix: build params with this cascade's init.")
    keys = [None] * s if key is None else list(jax.random.split(key, s))
    outs = []
    for i, (st, p, k) in enumerate(zip(stages, params["stages"], keys)):
      out = _checks.as_fused(
          st.apply(p, member_outputs, x=x, key=k), where=f"{name} stage {i}",
          hint="end the stage with a fusion, e.g. "
          "chain(select([1, 2, 3]), mean()).")
      outs.append(out)
    _checks.same_classes(outs, what="cascade stage")
    return jax.nn.log_softmax(jnp.stack(outs), axis=-1)

  def apply(params, member_outputs, *, x=None, key=None, return_info=False):
    m, b, c = _checks.member_outputs(member_outputs, fusion=name)
    s = num_stages(m)
    log_ps = stage_log_probs(params, member_outputs, x, key, s)  # [S, B, C]
    dtype = log_ps.dtype
    if confidence == "margin" and log_ps.shape[-1] < 2:
      raise errors.MemberOutputsError(
          f"{name}: the margin needs C >= 2 classes; stages output "
          f"{tuple(log_ps.shape[1:])}. Fix: use confidence='max_prob'.")
    conf = _confidence(log_ps, confidence)  # [S, B]
    if learn_thresholds:
      t = jax.nn.sigmoid(params["thresholds"]).astype(dtype)
    else:
      t = jnp.broadcast_to(jnp.asarray(t_np, dtype), (s - 1,))
    # First stage whose confidence reaches its threshold; the last always.
    # Written as reductions over the stage axis (a min of stage indices, a
    # masked sum of the answering stage's log-probs) with no slice of it, so
    # that when the stages are members sharded over a mesh each device
    # reduces its own and only [B] and [B, C] values are all-reduced; an
    # argmax and a gather exchanged per-device partials and indices.
    index = jnp.arange(s, dtype=jnp.int32)[:, None]  # [S, 1]
    last = index == s - 1
    t_all = jnp.concatenate([t, jnp.zeros((1,), dtype)])[:, None]  # [S, 1]
    exits = (conf >= t_all) | last
    stage = jnp.min(jnp.where(exits, index, s - 1), axis=0)  # [B]
    if soft:
      a = (conf[:-1] - t[:, None]) / temperature
      zeros = jnp.zeros((1, b), dtype)
      log_go = jnp.concatenate([jax.nn.log_sigmoid(a), zeros], axis=0)
      log_stay = jnp.concatenate(
          [zeros, jnp.cumsum(jax.nn.log_sigmoid(-a), axis=0)], axis=0)
      log_exit = log_go + log_stay  # [S, B], log P(exit at s)
      fused = jax.nn.logsumexp(log_exit[:, :, None] + log_ps, axis=0)
      exit_prob = jnp.exp(log_exit).T
    else:
      answers = (index == stage[None, :])[:, :, None]  # [S, B, 1], one True per b
      fused = jnp.sum(jnp.where(answers, log_ps, jnp.zeros((), dtype)), axis=0)
      exit_prob = jax.nn.one_hot(stage, s, dtype=dtype)
    if not return_info:
      return fused
    per_stage = np.ones(s) if costs_np is None else costs_np
    cum = jnp.asarray(np.cumsum(per_stage), dtype)
    cost = exit_prob @ cum
    info = CascadeInfo(stage=stage, exit_prob=exit_prob, confidence=conf.T,
                       cost=cost, expected_cost=jnp.mean(cost))
    return fused, info

  return Fusion(init, apply)


def cascade_info(
    fusion: Fusion,
    params: Any,
    member_outputs: jax.Array,
    *,
    x: Optional[jax.Array] = None,
    key: Optional[jax.Array] = None,
) -> CascadeInfo:
  """The :class:`CascadeInfo` of a fusion built by :func:`cascade`.

  Same as ``fusion.apply(params, member_outputs, x=x, key=key,
  return_info=True)[1]``; jittable.

  Args:
    fusion: a fusion built by :func:`cascade`.
    params: its params.
    member_outputs: member logits ``[M, B, C]``.
    x: the input batch, for stages that read it.
    key: optional PRNG key for stochastic stages.

  Returns:
    ``CascadeInfo(stage [B], exit_prob [B, S], confidence [B, S], cost [B],
    expected_cost [])``.

  Raises:
    FusionConfigError: ``fusion`` is not a cascade.

  Example:
    >>> import jax.numpy as jnp
    >>> from fusionjax import fusion
    >>> z = jnp.log(jnp.array([[[0.6, 0.4]], [[0.1, 0.9]]]))
    >>> f = fusion.cascade(0.0)  # threshold 0: the first stage answers
    >>> fusion.cascade_info(f, f.init(None, z), z).stage.tolist()
    [0]

  References:
    Viola and Jones, "Rapid Object Detection using a Boosted Cascade of
    Simple Features", CVPR 2001.
  """
  try:
    ok = "return_info" in inspect.signature(fusion.apply).parameters
  except (TypeError, ValueError, AttributeError):
    ok = False
  if not ok:
    raise errors.FusionConfigError(
        f"cascade_info needs a fusion built by fusionjax.fusion.cascade(); "
        f"got {fusion!r}. Fix: pass the cascade itself (not a chain "
        "containing it).")
  return fusion.apply(params, member_outputs, x=x, key=key,
                      return_info=True)[1]


def serial(combine: Fusion, shared: bool = False) -> Fusion:
  """Serial fusion ``y_t = f(y_{t-1}, z_t)``: fold members in one at a time.

  ``y_0 = log_softmax(z_0)``; for ``t = 1 .. M-1`` the two-"member" output
  ``stack([y_{t-1}, z_t])`` (``[2, B, C]``; log-probs are valid logits) goes
  through ``combine`` and ``log_softmax``; the result is ``y_{M-1}``. With
  ``combine = weighted(2)`` each step is a learned convex combination of the
  running fusion and the next member.

  Params: a tuple of ``M-1`` params of ``combine``, one per step, or one
  params shared by every step (``shared=True``); ``()`` when ``M == 1``.

  Args:
    combine: a fusion over 2 members returning ``[B, C]`` (e.g.
      ``weighted(2)``).
    shared: one set of combine params for every step.

  Returns:
    A ``Fusion``: ``apply(params, member_logits [M, B, C]) -> [B, C]``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from fusionjax import fusion
    >>> z = jnp.linspace(-3.0, 3.0, 60).reshape(3, 4, 5)  # [M, B, C] logits
    >>> f = fusion.serial(fusion.weighted(2))
    >>> params = f.init(jax.random.key(1), z)
    >>> len(params), jax.jit(f.apply)(params, z).shape
    (2, (4, 5))

  References:
    Kuncheva, "Combining Pattern Classifiers: Methods and Algorithms",
    Wiley 2004 (serial / sequential combination).
  """
  name = "serial(combine)"
  if not (callable(getattr(combine, "init", None))
          and callable(getattr(combine, "apply", None))):
    raise errors.FusionConfigError(
        f"serial: combine must be a Fusion (e.g. weighted(2)); got "
        f"{combine!r}. Fix: pass a two-member fusion.")

  def step(p, y, z_t, x, key):
    pair = jnp.stack([y, z_t.astype(y.dtype)])
    out = _checks.as_fused(combine.apply(p, pair, x=x, key=key),
                           where=f"{name} step",
                           hint="combine must fuse [2, B, C] into [B, C].")
    return jax.nn.log_softmax(out, axis=-1)

  def init(key, member_outputs, *, x=None):
    m, _, _ = _checks.member_outputs(member_outputs, fusion=name)
    if m == 1:
      return ()
    y = jax.nn.log_softmax(member_outputs[0], axis=-1)
    if shared:
      return combine.init(key, jnp.stack([y, member_outputs[1]]), x=x)
    params = []
    for t, k in zip(range(1, m), jax.random.split(key, m - 1)):
      p = combine.init(k, jnp.stack([y, member_outputs[t]]), x=x)
      params.append(p)
      y = step(p, y, member_outputs[t], x, None)
    return tuple(params)

  def apply(params, member_outputs, *, x=None, key=None):
    m, _, _ = _checks.member_outputs(member_outputs, fusion=name)
    y = jax.nn.log_softmax(member_outputs[0], axis=-1)
    if m == 1:
      return y
    if not shared and len(params) != m - 1:
      raise errors.MemberOutputsError(
          f"{name}: params hold {len(params)} steps but member outputs "
          f"{tuple(member_outputs.shape)} need M-1={m - 1}. Fix: re-run init "
          "on outputs with the same number of members.")
    keys = [None] * (m - 1) if key is None else list(
        jax.random.split(key, m - 1))
    for t in range(1, m):
      p = params if shared else params[t - 1]
      y = step(p, y, member_outputs[t], x, keys[t - 1])
    return y

  return Fusion(init, apply)
