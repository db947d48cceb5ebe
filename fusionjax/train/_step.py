"""One jitted step for all members (and the fusion), with per-member optimizers.

The optimizer is applied per member: :func:`per_member` vmaps an optax
transform's ``init``/``update`` together with the member, so global-norm
clipping, schedules and Adam moments never couple two members. Member losses
are summed, so the stacked step equals M independent single-member steps.
With a fusion, params are ``{'members': ..., 'fusion': ...}`` and the regime
picks the loss and, through ``optax.multi_transform``, which part moves.
"""
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

try:
  from jax.core import Tracer as _Tracer
except ImportError:  # jax.core's public names are being retired
  from jax._src.core import Tracer as _Tracer  # pylint: disable=g-import-not-at-top

from fusionjax import errors
from fusionjax.ensemble import Ensemble
from fusionjax.fusion import Fusion

REGIMES = ("independent", "frozen", "joint", "hybrid")


class TrainState(NamedTuple):
  """Everything a step reads and writes; a pytree that orbax can save.

  Attributes:
    step: int32 scalar, steps taken.
    params: ``{'members': stacked [M, ...], 'fusion': fusion params}``.
    state: the members' non-trainable collections (BatchNorm statistics).
    opt_state: the optax state (per member for the members' part).
    key: the PRNG key the next step splits for dropout.
  """
  step: jax.Array
  params: Any
  state: Any
  opt_state: Any
  key: jax.Array


# Weights of the finiteness GEMV: small enough that no finite float sums to an
# overflow (|x| * w * rows stays far below the dtype's max), exact otherwise.
_FINITE_WEIGHT = {jnp.dtype(jnp.float32): 2.0 ** -100, jnp.dtype(jnp.float64): 2.0 ** -1000}


def leaf_all_finite(a: jax.Array) -> jax.Array:
  """Whether every element of ``a`` is finite (no NaN, no +-Inf), as a bool scalar.

  Computed as ``isfinite(sum(w @ a))`` with a tiny constant weight ``w``
  rather than ``all(isfinite(a))``: a NaN or an Inf anywhere makes the GEMV's
  sum NaN or Inf, and no finite value can overflow it (``w = 2**-100`` for
  float32), so the verdict is the same, but XLA:CPU runs boolean reductions
  one element at a time (about 1 ns per element, the same order as a whole
  Adam update), while the GEMV runs vectorised on every core (~3x faster,
  ``benchmarks/``). Non-float leaves are finite.
  """
  a = jnp.asarray(a)
  if not jnp.issubdtype(a.dtype, jnp.inexact):
    return jnp.bool_(True)
  if a.size == 0:
    return jnp.bool_(True)
  if jnp.issubdtype(a.dtype, jnp.complexfloating):
    return jnp.all(jnp.isfinite(a))
  if a.dtype not in _FINITE_WEIGHT:
    a = a.astype(jnp.float32)  # bf16 / f16: the weight is not representable
  rows = a.reshape(-1, a.shape[-1]) if a.ndim >= 2 else a.reshape(1, -1)
  w = jnp.full((rows.shape[0],), _FINITE_WEIGHT[a.dtype], a.dtype)
  # HIGHEST: no bf16/tf32 rounding of the inputs (which could round the
  # largest finite float32 values up to Inf) whatever the default precision.
  return jnp.isfinite(jnp.sum(jnp.dot(w, rows, precision=jax.lax.Precision.HIGHEST)))


def _all_finite(tree) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  if not leaves:
    return jnp.bool_(True)
  return jnp.all(jnp.stack([leaf_all_finite(l) for l in leaves]))


def _all_finite_pair(grads, updates) -> jax.Array:
  """``_all_finite(grads) & _all_finite(updates)`` in one pass per leaf.

  ``g * 0 + u`` is NaN exactly where ``g`` or ``u`` is not finite (``Inf * 0``
  is NaN), so one check per leaf reads both trees once.
  """
  g_leaves, u_leaves = jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(updates)
  if len(g_leaves) != len(u_leaves) or any(
      jnp.shape(g) != jnp.shape(u) for g, u in zip(g_leaves, u_leaves)):
    return _all_finite(grads) & _all_finite(updates)
  if not g_leaves:
    return jnp.bool_(True)
  return jnp.all(jnp.stack([leaf_all_finite(g * 0 + u) for g, u in zip(g_leaves, u_leaves)]))


class GuardState(NamedTuple):
  """State of :func:`skip_nonfinite`: the inner state and the last verdict."""
  inner: Any
  ok: jax.Array  # bool: was the last update applied? ([M] when per member)


def skip_nonfinite(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """Wraps ``tx`` so that a non-finite gradient or update leaves params and state untouched.

  Applied per member by :func:`per_member`, one member's NaN never reaches the
  others, and the state stays the last good one. The verdict of the last
  update is kept in ``GuardState.ok`` (the step reports it as ``finite``).
  """

  def init(params):
    return GuardState(tx.init(params), jnp.bool_(True))

  def update(grads, state, params=None):
    updates, new_inner = tx.update(grads, state.inner, params)
    ok = _all_finite_pair(grads, updates)  # a finite grad can still overflow
    updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), updates)
    new_inner = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_inner, state.inner)
    return updates, GuardState(new_inner, ok)

  return optax.GradientTransformation(init, update)


def _guarded(ensemble: Ensemble, members) -> bool:
  """Whether the members' optimizer state is ``skip_nonfinite``'s (per group for groups)."""
  return isinstance(members, GuardState) or (
      isinstance(members, dict)
      and all(isinstance(members.get(g), GuardState) for g in ensemble.groups))


def members_opt_state(opt_state):
  """The stacked per-member optax state inside ``make_optimizer``'s state, or None."""
  inner = getattr(opt_state, "inner_states", None)
  if not isinstance(inner, dict) or "members" not in inner:
    return None
  return getattr(inner["members"], "inner_state", None)


def _members_guard_ok(ensemble: Ensemble, opt_state) -> Optional[jax.Array]:
  """``[M]`` verdicts of the per-member guards, or None when members are not guarded."""
  members = members_opt_state(opt_state)
  if members is None or not _guarded(ensemble, members):
    return None
  if isinstance(members, GuardState):
    return members.ok
  return ensemble.join({g: members[g].ok for g in ensemble.groups})


def check_guard(ensemble: Ensemble, opt_state, guard: bool) -> None:
  """Raises :class:`~fusionjax.errors.GuardMismatchError` when ``opt_state``
  was made with the other ``guard`` than the step's (a Python check at trace time)."""
  members = members_opt_state(opt_state)
  if members is None:
    return  # not make_optimizer's state: optax reports what is wrong
  guarded = _guarded(ensemble, members)
  if guarded != guard:
    raise errors.GuardMismatchError(
        f"the optimizer state was made by fj.train.init(guard={guarded}) but the step by "
        f"make_step(guard={guard}). Fix: pass the same guard= to fj.train.init and "
        "fj.train.make_step.")


def per_member(tx: optax.GradientTransformation, ensemble: Ensemble,
               guard: bool = True) -> optax.GradientTransformation:
  """An optax transform applied independently to every member.

  Args:
    tx: a single-member optax transform (e.g. ``chain(clip_by_global_norm(1), adam(1e-3))``).
    ensemble: the ensemble whose stacked params it updates.
    guard: skip a member's update when its gradient is not finite.

  Returns:
    A ``GradientTransformation`` over member-stacked params whose state is
    member-stacked too (``count`` is ``[M]``).
  """
  inner = skip_nonfinite(tx) if guard else tx

  def init(params):
    return ensemble.member_map(inner.init, params)

  def update(grads, state, params=None):
    if params is None:
      return ensemble.member_map(lambda g, s: inner.update(g, s), grads, state,
                                 num_outputs=2)
    return ensemble.member_map(inner.update, grads, state, params, num_outputs=2)

  return optax.GradientTransformation(init, update)


def _on_key(name: str, tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """Applies ``tx`` to ``tree[name]`` of the (masked) trees ``multi_transform`` passes."""

  def init(params):
    return tx.init(params[name])

  def update(updates, state, params=None):
    sub, state = tx.update(updates[name], state, None if params is None else params[name])
    return {**updates, name: sub}, state

  return optax.GradientTransformation(init, update)


def make_optimizer(ensemble: Ensemble, tx: optax.GradientTransformation,
                   regime: str = "independent",
                   fusion_tx: Optional[optax.GradientTransformation] = None,
                   guard: bool = True) -> optax.GradientTransformation:
  """The optimizer over ``{'members', 'fusion'}`` for a training regime.

  ``optax.multi_transform`` routes the members' subtree to ``per_member(tx)``
  and the fusion's to ``fusion_tx``; the part a regime keeps fixed gets
  ``optax.set_to_zero()``: the fusion under ``'independent'``, the members
  under ``'frozen'``.
  """
  if regime not in REGIMES:
    raise ValueError(f"regime must be one of {REGIMES}; got {regime!r}.")
  fusion_tx = fusion_tx or tx
  members = optax.set_to_zero() if regime == "frozen" else _on_key(
      "members", per_member(tx, ensemble, guard))
  if guard:
    fusion_tx = skip_nonfinite(fusion_tx)
  fusion = optax.set_to_zero() if regime == "independent" else fusion_tx
  return optax.multi_transform({"members": members, "fusion": fusion},
                               {"members": "members", "fusion": "fusion"})


def cross_entropy(logits: jax.Array, labels: jax.Array, mask=None) -> jax.Array:
  """Mean softmax cross-entropy over the batch (log-probs are valid logits).

  ``logits`` may carry leading member axes: ``[..., B, C]`` gives ``[...]``.
  ``mask [B]`` (from a padded last batch) excludes rows.
  """
  losses = optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.broadcast_to(labels, logits.shape[:-1]))
  if mask is None:
    return jnp.mean(losses, axis=-1)
  mask = mask.astype(losses.dtype)
  return jnp.sum(losses * mask, axis=-1) / jnp.maximum(jnp.sum(mask), 1.0)


def squared_error(preds: jax.Array, targets: jax.Array, mask=None) -> jax.Array:
  """Mean squared error over the batch for regression members ``[..., B, D]``."""
  losses = jnp.sum((preds - targets) ** 2, axis=-1)
  if mask is None:
    return jnp.mean(losses, axis=-1)
  mask = mask.astype(losses.dtype)
  return jnp.sum(losses * mask, axis=-1) / jnp.maximum(jnp.sum(mask), 1.0)


# init runs once, and most of its compile time is LLVM optimising the
# random-number kernels: at -O1 XLA:CPU compiles it in about half the time of
# the default -O3 and gives the same values bit for bit (tests/train/test_step.py;
# -O0 does not: it changes float rounding). The step keeps the default.
_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def init(ensemble: Ensemble, tx: optax.GradientTransformation, key: jax.Array,
         x_example, *, fusion: Optional[Fusion] = None, regime: str = "independent",
         fusion_tx=None, guard: bool = True) -> TrainState:
  """Initialises members, fusion and per-member optimizer state in one jit.

  Args:
    ensemble: the ensemble.
    tx: the single-member optax transform (applied per member).
    key: PRNG key; split into member init, fusion init and the step key.
    x_example: an input batch ``[B, ...]`` (``B`` may be 1).
    fusion: optional :class:`~fusionjax.fusion.Fusion` trained with the members.
    regime: see :func:`make_step`.
    fusion_tx: the fusion's optimizer (default ``tx``).
    guard: skip non-finite updates (see :func:`skip_nonfinite`).

  Returns:
    A :class:`TrainState` with ``step = 0``.
  """
  opt = make_optimizer(ensemble, tx, regime, fusion_tx, guard)
  x_example = jnp.asarray(x_example)

  @jax.jit
  def _init(key, x):
    k_members, k_fusion, k_step = jax.random.split(key, 3)
    variables = ensemble.init(k_members, x)
    fparams = ()
    if fusion is not None:
      out, _ = ensemble.apply(variables, x)
      fparams = fusion.init(k_fusion, out, x=x)
    params = {"members": variables["params"], "fusion": fparams}
    return TrainState(jnp.zeros((), jnp.int32), params, variables["state"],
                      opt.init(params), k_step)

  traced = any(isinstance(a, _Tracer) for a in (key, x_example))
  if jax.default_backend() != "cpu" or traced:  # in an outer jit, its options rule
    return _init(key, x_example)
  return _init.lower(key, x_example).compile(_INIT_COMPILER_OPTIONS)(key, x_example)


def _check_labels_batch(x, y, per_member, size):
  xs = jax.tree_util.tree_leaves(x)
  axis = 1 if per_member else 0
  bx = {l.shape[axis] for l in xs if l.ndim > axis}
  by = y.shape[axis] if y.ndim > axis else None
  if per_member and y.shape[:1] != (size,):
    raise errors.BatchShapeError(
        f"per-member labels must be [M={size}, B]; got {tuple(y.shape)}. "
        "Fix: index labels with the same bootstrap indices as x.")
  if len(bx) != 1 or by not in bx:
    raise errors.BatchShapeError(
        f"x and y disagree on the batch size: x shapes "
        f"{[tuple(l.shape) for l in xs]}, y shape {tuple(y.shape)}. Fix: pass "
        "x [B, ...] with y [B] (or [M, B, ...] with [M, B] when per_member).")


def make_step(ensemble: Ensemble, tx: optax.GradientTransformation, *,
              fusion: Optional[Fusion] = None, regime: str = "independent",
              lam: float = 1.0, fusion_tx=None, loss: Callable = cross_entropy,
              per_member: bool = False, guard: bool = True, jit: bool = True,
              donate: bool = True, mesh=None, member_chunk="auto") -> Callable:
  """One step that updates every member (and the fusion) at once.

  Regimes:
    * ``'independent'``: the sum of member losses; the fusion is not trained.
    * ``'frozen'``: members fixed, the fusion learned on the fused loss
      (e.g. on held-out data).
    * ``'joint'``: members and fusion trained on the fused loss.
    * ``'hybrid'``: the sum of member losses plus ``lam`` times the fused loss.

  Args:
    ensemble: the ensemble.
    tx: single-member optax transform, applied per member (vmapped).
    fusion: the fusion for the ``frozen``/``joint``/``hybrid`` regimes.
    regime: one of the four above.
    lam: weight of the fused loss in ``'hybrid'``.
    fusion_tx: the fusion's optimizer (default ``tx``).
    loss: ``(outputs [..., B, C], y [B], mask) -> [...]``, a mean over the batch.
    per_member: batches are ``x [M, B, ...], y [M, B]`` (bagging).
    guard: skip non-finite per-member updates (the state stays good).
    jit: return ``jax.jit(step, donate_argnums=0)``.
    donate: donate the input state's buffers.
    mesh: a ``('member', 'data')`` mesh; the step is jitted with explicit
      ``NamedSharding`` in/out shardings (see :mod:`fusionjax.train._sharding`).
      Place the state with ``shard_state`` and batches with ``shard_batch``.
    member_chunk: how the members' independent steps are laid out (speed
      only: the state, the logs and the maths are the same, at rtol 1e-5).
      ``'auto'`` or an int ``k``: chunks of ``k`` members, each chunk's
      forward, backward, optimizer update and guard done while its arrays are
      in cache and written back in place (a ``scan`` in one program; a
      loop of one jitted call per member for two or more convolutional members, see
      :mod:`fusionjax.train._fast`); ``'auto'`` sizes ``k`` from the
      parameter count. ``None``: one vmap over all members (with
      convolutional members and ``per_member`` batches, XLA:CPU's grouped
      convolutions then let one non-finite member's NaN reach every member's
      kernel gradient, so the guard skips every member's update). Used for regime
      ``'independent'`` with a ``from_fn``/``from_linen``/``from_nnx``
      ensemble and no mesh; otherwise the vmapped step runs.

  Returns:
    ``step(state, batch) -> (state, logs)`` where ``batch`` is a dict with
    ``'x'``, ``'y'`` and optionally ``'mask'``, and ``logs`` holds
    ``member_loss [M]``, ``loss`` (the objective), ``fused_loss`` (when a
    fusion is given) and ``finite [M]`` (False where a member's loss or
    gradient was NaN/Inf; its update was skipped).
  """
  if regime not in REGIMES:
    raise ValueError(f"regime must be one of {REGIMES}; got {regime!r}.")
  if regime != "independent" and fusion is None:
    raise ValueError(f"regime={regime!r} trains a fusion; pass fusion=...")
  if per_member and fusion is not None and regime != "independent":
    raise ValueError("A fused loss needs every member to see the same batch; "
                     "per_member=True works with regime='independent' only.")
  opt = make_optimizer(ensemble, tx, regime, fusion_tx, guard)
  size = ensemble.size

  def objective(params, state, x, y, mask, key):
    variables = {"params": params["members"], "state": state}
    out, new_state = ensemble.apply(variables, x, key=key, train=True,
                                    per_member=per_member)
    member_loss = loss(out, y, mask)  # [M]
    logs = {"member_loss": member_loss}
    if regime == "independent":
      total = jnp.sum(member_loss)
    else:
      fused = fusion.apply(params["fusion"], out, x=x)
      fused_loss = loss(fused, y, mask)
      logs["fused_loss"] = fused_loss
      total = fused_loss if regime in ("frozen", "joint") else (
          jnp.sum(member_loss) + lam * fused_loss)
    return total, (new_state, logs)

  def step(state: TrainState, batch):
    x, y, mask = batch["x"], jnp.asarray(batch["y"]), batch.get("mask")
    _check_labels_batch(x, y, per_member, size)
    if regime != "frozen":  # frozen members have no optimizer state to guard
      check_guard(ensemble, state.opt_state, guard)
    key, sub = jax.random.split(state.key)
    grads, (new_state, logs) = jax.grad(objective, has_aux=True)(
        state.params, state.state, x, y, mask, sub)
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Per-member health: a member whose loss or gradient is non-finite keeps
    # its old params and BatchNorm statistics (its optimizer state was kept by
    # skip_nonfinite), so no bad value ever enters the state.
    finite = jnp.isfinite(logs["member_loss"])
    guard_ok = _members_guard_ok(ensemble, opt_state)
    if guard_ok is not None:
      finite &= guard_ok
    else:
      finite &= ensemble.join(ensemble.member_map(_all_finite, grads["members"]))
    if guard:
      keep = ensemble.split(finite)
      pick = lambda ok, n, o: jax.tree.map(lambda a, b: jnp.where(ok, a, b), n, o)
      members = ensemble.member_map(pick, keep, params["members"], state.params["members"])
      new_state = ensemble.member_map(pick, keep, new_state, state.state)
      params = {"members": members, "fusion": params["fusion"]}
    logs["finite"] = finite
    logs["loss"] = jnp.sum(logs["member_loss"]) if "fused_loss" not in logs else (
        logs["fused_loss"] if regime in ("frozen", "joint")
        else jnp.sum(logs["member_loss"]) + lam * logs["fused_loss"])
    return TrainState(state.step + 1, params, new_state, opt_state, key), logs

  if regime == "independent" and mesh is None and member_chunk is not None:
    from fusionjax.train import _fast  # pylint: disable=g-import-not-at-top

    def check(x, y):
      _check_labels_batch(x, y, per_member, size)

    chunked = _fast.make_chunked_step(
        ensemble, skip_nonfinite(tx) if guard else tx, loss=loss,
        per_member=per_member, guard=guard, guard_ok=(lambda o: o.ok) if guard else None,
        chunk=member_chunk, check=check)
    if chunked is not None:
      return chunked.jitted(donate) if jit else chunked.pure
  if not jit:
    return step
  if mesh is not None:
    from fusionjax.train._sharding import jit_sharded  # pylint: disable=g-import-not-at-top
    return jit_sharded(step, mesh, ensemble, per_member, donate)
  return jax.jit(step, donate_argnums=(0,) if donate else ())


def make_predict(ensemble: Ensemble, fusion: Optional[Fusion] = None,
                 jit: bool = True, member_chunk="auto") -> Callable:
  """``predict(state_or_params, x) -> (member_outputs [M, B, C], fused or None)``.

  ``member_chunk`` (``'auto'``, an int, or ``None`` for one vmap) lays the
  members' forward passes out in chunks as in :func:`make_step`; the outputs
  are the same.
  """

  def predict(state: TrainState, x):
    variables = {"params": state.params["members"], "state": state.state}
    out, _ = ensemble.apply(variables, x, train=False)
    fused = None if fusion is None else fusion.apply(state.params["fusion"], out, x=x)
    return out, fused

  if member_chunk is not None:
    from fusionjax.train import _fast  # pylint: disable=g-import-not-at-top
    predict = _fast.make_chunked_predict(ensemble, fusion, member_chunk) or predict
  return jax.jit(predict) if jit else predict
