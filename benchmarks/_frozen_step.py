"""A frozen copy of the training step before the make_trainer rewrite (commit 346cbb9).

``fusionjax/train/_step.py`` and ``_fast.py`` as they were, merged into one
module so that ``benchmarks/engine_ab.py`` can time the old default step against
the new one in one process. Only two lines differ: the single-member apply is
read from ``Ensemble.member_apply`` (it was an attribute hung on ``apply``), and
the mesh path is gone. Not part of the library; do not import it elsewhere.
"""
# pylint: skip-file
import sys

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
    _fast = sys.modules[__name__]

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
    raise NotImplementedError("the frozen copy has no mesh")
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
    _fast = sys.modules[__name__]
    predict = _fast.make_chunked_predict(ensemble, fusion, member_chunk) or predict
  return jax.jit(predict) if jit else predict


# ---- _fast.py ----
from fusionjax.ensemble._base import _check_batch, check_stacked  # noqa: E402

# Per-chunk working-set budget for chunk='auto': params, gradients and two
# optimizer moments of the chunk's members should fit in about this many bytes
# (a share of the L2/L3 caches of a small CPU; measured in benchmarks/).
_AUTO_BUDGET_BYTES = 4 * 2**20


def member_fn(ensemble: Ensemble) -> Optional[Callable]:
  """The single-member ``apply(variables, x, key, train)`` of a ``from_fn`` ensemble, or None."""
  return ensemble.member_apply if not ensemble.parts else None


def auto_chunk(ensemble: Ensemble, params_members, opt_slots: int = 3) -> int:
  """Members per chunk so that a chunk's params, grads and moments fit the cache budget.

  Args:
    ensemble: the ensemble (``M = ensemble.size``).
    params_members: stacked member params (arrays or ``ShapeDtypeStruct``).
    opt_slots: arrays per parameter besides the parameter itself (gradient
      and two Adam moments: 3).

  Returns:
    ``chunk`` in ``[1, M]``, a power of two.
  """
  leaves = jax.tree_util.tree_leaves(params_members)
  per_member = sum(l.size // l.shape[0] * jnp.dtype(l.dtype).itemsize for l in leaves)
  per_member *= 1 + opt_slots
  chunk = max(1, min(ensemble.size, _AUTO_BUDGET_BYTES // max(per_member, 1)))
  return 1 << (int(chunk).bit_length() - 1)  # a power of two: chunks that divide M


def _squeeze(tree):
  return jax.tree.map(lambda a: a[0], tree)


def _expand(tree):
  return jax.tree.map(lambda a: a[None], tree)


def _run_chunk(compute, update, carried, rest, shared, start, n: int,
               looping: bool = True):
  """Members ``[start, start + n)``: compute, update, and write back in place.

  ``compute`` is per member ``(carried_m, rest_m, shared) -> out_m`` (forward
  and backward); it runs unbatched for a chunk of one member, so XLA sees
  exactly the single-member program (a size-1 vmap axis changes its dot
  layouts), and vmapped otherwise, with ``shared`` broadcast to ``[n, ...]``:
  every member's dot is then a batched dot, which XLA runs as it is, instead
  of one dot against the concatenated weights, which needs the weights and the
  weight gradients transposed (a copy of each, every step). ``update`` is per
  chunk ``(carried_c, out_c) -> (new_carried_c, aux_c)`` on ``[n, ...]``
  arrays (it vmaps itself); its reads of the old chunk are slices of the same
  shape as its in-place writes, which XLA performs without copying the chunk.
  ``looping`` tells ``update`` whether the chunk is one of several written in
  place into the same buffers (a loop), or the only one. Returns
  ``(carried, aux_c)``: the chunk written into ``carried``, and its aux.
  """
  cut = lambda a: jax.lax.dynamic_slice_in_dim(a, start, n)
  c, r = jax.tree.map(cut, carried), jax.tree.map(cut, rest)
  if n == 1:
    out = _expand(compute(_squeeze(c), _squeeze(r), shared))
  else:
    sh = jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), shared)
    out = jax.vmap(compute)(c, r, sh)
  new, new_aux = update(c, out, looping)
  put = lambda o, v: jax.lax.dynamic_update_slice_in_dim(o, v, start, 0)
  return jax.tree.map(put, carried, new), new_aux


def _over_chunks(compute, update, carried, rest, shared, size: int, chunk: int):
  """Every member's ``update(compute(...))``, chunk by chunk in a ``scan``, in place.

  ``carried`` (params, BN state, optimizer state; donated by the caller's
  jit) is the loop carry and is written chunk by chunk; ``rest`` are
  member-stacked inputs (keys, per-member batches), ``shared`` inputs every
  member reads. See :func:`_run_chunk`. Returns ``(new_carried, aux)``.
  """
  n = min(chunk, size)
  n_full = size // n
  looping = n_full > 1 or size % n != 0
  run = lambda start, k, ca: _run_chunk(compute, update, ca, rest, shared, start, k,
                                        looping)
  if n_full == 1:
    carried, aux = run(0, n, carried)
  else:
    # A scan stacks each chunk's aux as its output, so the chunk is traced once
    # (a fori_loop would need the aux's zeros first: a second trace).
    carried, aux = jax.lax.scan(lambda ca, i: run(i * n, n, ca), carried,
                                jnp.arange(n_full))
    aux = jax.tree.map(lambda a: a.reshape((n_full * n,) + a.shape[2:]), aux)
  if size % n:
    carried, tail = run(n_full * n, size % n, carried)
    aux = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), aux, tail)
  return carried, aux


def _with_members_opt_state(opt_state, members_state):
  inner = dict(opt_state.inner_states)
  inner["members"] = inner["members"]._replace(inner_state=members_state)
  return opt_state._replace(inner_states=inner)


def _where_members(pred, new, old):
  """Per member: ``new`` where ``pred [n]`` holds, else ``old`` (leaves ``[n, ...]``)."""
  return jax.tree.map(
      lambda a, b: jnp.where(pred.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old)


def _primitives(jaxpr, found=None):
  """Names of the primitives in a (closed) jaxpr, sub-jaxprs included."""
  found = set() if found is None else found
  for eqn in jaxpr.eqns:
    found.add(eqn.primitive.name)
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          _primitives(inner, found)
  return found


def uses_convolution(ensemble: Ensemble, params_members, state_members, x) -> bool:
  """Whether a member's forward pass contains a convolution (abstract trace only)."""
  apply_one = member_fn(ensemble)
  one = lambda tree: jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), tree)
  xs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), x)
  jaxpr = jax.make_jaxpr(
      lambda p, s, xx, k: apply_one({"params": p, "state": s}, xx, k, True))(
          one(params_members), one(state_members), xs, jax.random.key(0))
  return "conv_general_dilated" in _primitives(jaxpr.jaxpr)


class ChunkedStep:
  """The independent-regime step, chunk of members by chunk of members.

  Two layouts of the same computation (same state, same logs):

  * :meth:`pure`: one program; a ``scan`` over chunks whose carry is the
    member-stacked state, written in place chunk by chunk
    (:func:`_over_chunks`). ``make_step(jit=True)`` jits it with the state
    donated.
  * :meth:`host`: a Python loop over chunks, each chunk one jitted call on
    its own buffers (the program of a loop of single-member steps), between a
    start call that splits the stacked state and a finish call that stacks
    it back. Used for two or more members with convolutions: inside a
    ``while`` body XLA:CPU keeps the backward convolutions in their generic,
    several times slower form. One member is :meth:`pure`, which then has no
    loop (and no start and finish calls).

  Attributes:
    pure: ``step(state, batch) -> (state, logs)``, unjitted.
  """

  def __init__(self, ensemble, member_tx, *, loss, per_member, guard, guard_ok,
               chunk, check):
    self.ensemble, self.size = ensemble, ensemble.size
    self.apply_one = member_fn(ensemble)
    self.member_tx, self.loss = member_tx, loss
    self.per_member, self.guard, self.guard_ok = per_member, guard, guard_ok
    self.chunk, self.check = chunk, check
    self._host_parts = {}
    self._mode = None
    self._conv = None

  # ------------------------------------------------------------------ maths

  def compute(self, carried, rest, shared):
    """One member's loss gradient: ``(grads, new BN state, loss)``."""
    p, s, _ = carried
    k, data = rest
    xm, ym, mm = data if self.per_member else shared

    def objective(q):
      out, new_s = self.apply_one({"params": q, "state": s}, xm, k, True)
      l = self.loss(out, ym, mm)
      return l, (new_s, l)

    grads, (new_s, l) = jax.grad(objective, has_aux=True)(p)
    return grads, new_s, l

  def update(self, carried, out, looping=True):
    """Optimizer and guard for a chunk of ``[n, ...]`` arrays: ``(new_carried, (loss, finite))``.

    ``looping`` says whether the chunk is one of several written in place into
    the same buffers; the data flow then matters (see the comments below).
    """
    vmap = jax.vmap
    p, s, o = carried
    grads, new_s, l = out
    updates, new_o = vmap(self.member_tx.update)(grads, o, p)
    new_p = optax.apply_updates(p, updates)
    if self.guard:
      # member_tx is the guarded transform: its verdict (finite gradient and
      # update) kept its own state; the params and BatchNorm statistics of a
      # member with a non-finite loss or update are kept here. The selects
      # read every new value, so XLA materialises a chunk's new values before
      # writing them in place. Measured interleaved on 2 CPU cores: within a
      # few % of no guard at M >= 4 (10-20 % dearer at M = 1), and ~10 % faster
      # than a lax.cond between a select-free commit and this path.
      finite = jnp.isfinite(l) & vmap(self.guard_ok)(new_o)
      new = (_where_members(finite, new_p, p), _where_members(finite, new_s, s), new_o)
      return new, (l, finite)
    finite = jnp.isfinite(l) & vmap(_all_finite)(grads)
    if not looping:
      return (new_p, new_s, new_o), (l, finite)
    # No guard, but the same data flow: a select whose (always true)
    # predicate reads every update makes XLA materialise the chunk's new
    # values before writing them in place. Without it XLA recomputes the
    # moments inside the params' in-place write, which still needs the old
    # moments, and copies the full-size moments every chunk (~3x slower).
    ok = vmap(_all_finite)(updates)
    always = ok | ~ok
    new = (_where_members(always, new_p, p), new_s, _where_members(always, new_o, o))
    return new, (l, finite)

  # ------------------------------------------------------------------ layouts

  def _begin(self, state, batch):
    x, y, mask = batch["x"], jnp.asarray(batch["y"]), batch.get("mask")
    check_stacked(state.params["members"], self.size, "params")
    check_stacked(state.state, self.size, "state")
    _check_batch(x, self.size, self.per_member)
    if self.check is not None:
      self.check(x, y)
    members_opt = members_opt_state(state.opt_state)
    if members_opt is None:
      raise ValueError("chunked step: the optimizer state is not make_optimizer's.")
    check_guard(self.ensemble, state.opt_state, self.guard)
    carried = (state.params["members"], state.state, members_opt)
    data = (x, y, mask) if self.per_member else ()
    shared = () if self.per_member else (x, y, mask)
    return carried, data, shared

  def _end(self, state, key, carried, aux, step, loss):
    new_p, new_s, new_o = carried
    member_loss, finite = aux
    params = {"members": new_p, "fusion": state.params["fusion"]}
    opt_state = _with_members_opt_state(state.opt_state, new_o)
    logs = {"member_loss": member_loss, "finite": finite, "loss": loss}
    return state._replace(step=step, params=params, state=new_s, opt_state=opt_state,
                          key=key), logs

  def pure(self, state, batch):
    """The whole step as one program (a ``scan`` over chunks)."""
    carried, data, shared = self._begin(state, batch)
    chunk = (auto_chunk(self.ensemble, state.params["members"]) if self.chunk == "auto"
             else int(self.chunk))
    key, sub = jax.random.split(state.key)
    keys = jax.random.split(sub, self.size)  # as Ensemble.apply: member m gets keys[m]
    carried, aux = _over_chunks(self.compute, self.update, carried, (keys, data), shared,
                                self.size, chunk)
    return self._end(state, key, carried, aux, state.step + 1, jnp.sum(aux[0]))

  def host(self, state, batch, donate: bool = True):
    """The step as one jitted call per chunk of members, each on its own buffers.

    A start call splits the member-stacked state (and the member keys and
    per-member batches) into one set of buffers per chunk; each chunk's call
    then runs the program of a loop of single-member steps, and a finish call
    stacks the chunks back. With ``donate``, the caller's state buffers are
    deleted once split, as donation would.

    The previous layout sliced each chunk out of the donated stacked buffers
    and wrote it back in place inside each call: XLA must then materialise the
    new values before the in-place write, and ran ~100 more kernels. Timed in
    one process against a loop of single-member jitted steps on the project's
    2-core CPU (LeNet-size members, batch 128, Adam), the guarded step went
    from 0.93x to 1.01x the loop at M=4 and from 0.91x to 0.99x at M=16 (the
    A/B is in issue 8's closing note); ``python benchmarks/ensemble_step.py
    --models cnn`` has the result. The chunks' calls are not donated: written
    in place, the guard's selects (new or old params) are dearer
    (``python benchmarks/donation.py``: a guarded LeNet-size step 0.91x
    donated against 0.98x undonated). The start and finish calls (two
    copies of the state) cost ~2 % of the step at M=16 and 64 (timed per call;
    issue 8's note).
    """
    carried, data, shared = self._begin(state, batch)
    # 'auto': one member per call (a vmapped convolution is a grouped one, slower)
    start, part, finish = self._host_fns(1 if self.chunk == "auto" else int(self.chunk))
    key, pieces, rests = start(state.key, carried, data)
    if donate:
      _release(carried, pieces)
    outs = []
    for i, rest in enumerate(rests):
      outs.append(part(pieces[i], rest, shared))
      pieces[i] = None  # the chunk's old buffers are freed as the loop goes
    return self._end(state, key, *finish(outs, state.step))

  def _host_fns(self, chunk: int):
    """``(start, part, finish)`` of the host layout, jitted once per chunk size."""
    fns = self._host_parts.get(chunk)
    if fns is not None:
      return fns
    size = self.size
    bounds = [(s, min(s + chunk, size)) for s in range(0, size, chunk)]
    split = lambda tree: [jax.tree.map(lambda a, s=s, e=e: a[s:e], tree) for s, e in bounds]

    def start(key, carried, data):
      key, sub = jax.random.split(key)
      keys = jax.random.split(sub, size)  # as Ensemble.apply: member m gets keys[m]
      return key, split(carried), split((keys, data))

    def part(piece, rest, shared):
      n = jax.tree_util.tree_leaves(rest[0])[0].shape[0]
      return _run_chunk(self.compute, self.update, piece, rest, shared, 0, n,
                        looping=False)

    def finish(outs, step):
      carried, aux = jax.tree.map(lambda *a: jnp.concatenate(a), *outs)
      return carried, aux, step + 1, jnp.sum(aux[0])

    fns = (jax.jit(start), jax.jit(part), jax.jit(finish))
    self._host_parts[chunk] = fns
    return fns

  def jitted(self, donate: bool = True):
    """``step(state, batch)``: the host layout for 2+ members with convolutions, else jit(pure).

    One member with convolutions runs :meth:`pure` without donating the state:
    guarded and written in place, that program is slower, and MLP programs
    faster (``python benchmarks/donation.py`` on the project's 2-core CPU,
    against a plain undonated step: LeNet-size 1.00x undonated, 0.92x
    donated; MNIST MLP 0.87x and 0.89x; digits MLP 0.92x and 0.98x).
    """
    pure = jax.jit(self.pure, donate_argnums=(0,) if donate else ())
    pure_kept = jax.jit(self.pure) if donate else pure

    def step(state, batch):
      if self._mode is None:
        conv = uses_convolution(self.ensemble, state.params["members"], state.state,
                                batch["x"][0] if self.per_member else batch["x"])
        self._mode = "host" if conv and self.size > 1 else "pure"
        self._conv = conv
      if self._mode == "host":
        return self.host(state, batch, donate)
      return (pure_kept if self._conv else pure)(state, batch)

    step.lower = pure.lower  # the single-program layout, for inspection
    return step


def _release(tree, keep):
  """Deletes the device buffers of ``tree`` (donated by the caller) that ``keep`` does not hold.

  The host layout's start call changes the buffers' shapes (it splits the
  stacked state), so XLA cannot reuse donated inputs for its outputs, and
  jax then keeps them alive; deleting them frees the memory as donation would.
  """
  kept = {id(a) for a in jax.tree_util.tree_leaves(keep)}
  for a in jax.tree_util.tree_leaves(tree):
    if isinstance(a, jax.Array) and id(a) not in kept and not a.is_deleted():
      a.delete()


def make_chunked_step(ensemble: Ensemble, member_tx: optax.GradientTransformation, *,
                      loss: Callable, per_member: bool, guard: bool,
                      guard_ok: Optional[Callable] = None,
                      chunk: Any = "auto", check: Optional[Callable] = None
                      ) -> Optional[ChunkedStep]:
  """The independent-regime step, chunk of members by chunk of members.

  Args:
    ensemble: a homogeneous ensemble from :func:`~fusionjax.ensemble.from_fn`.
    member_tx: the single-member transform exactly as ``per_member`` applies
      it (``skip_nonfinite(tx)`` when guarded), so the state is the same.
    loss: ``(outputs [B, C], y [B], mask) -> scalar``.
    per_member: batches are ``[M, B, ...]``.
    guard: keep the params and BatchNorm statistics of a member whose loss or
      update is not finite (as the vmapped step does).
    guard_ok: with ``guard``, the verdict ``state -> ok`` of the guarded
      ``member_tx`` (``skip_nonfinite``, which keeps its own state).
    chunk: members per chunk (``int``), or ``'auto'`` (:func:`auto_chunk`).
    check: ``(x, y) -> None`` shape check run at trace time.

  Returns:
    A :class:`ChunkedStep`, or ``None`` when the ensemble is not a plain
    ``from_fn`` ensemble.
  """
  if guard and guard_ok is None:
    raise ValueError("make_chunked_step(guard=True) needs guard_ok, the verdict of the "
                     "guarded member_tx (e.g. lambda s: s.ok for skip_nonfinite).")
  if member_fn(ensemble) is None:
    return None
  return ChunkedStep(ensemble, member_tx, loss=loss, per_member=per_member, guard=guard,
                     guard_ok=guard_ok, chunk=chunk, check=check)


def make_chunked_predict(ensemble: Ensemble, fusion=None, chunk: Any = "auto"
                         ) -> Optional[Callable]:
  """``predict(state, x) -> (outputs [M, B, C], fused or None)`` over chunks of members.

  Returns ``None`` when the ensemble is not a plain ``from_fn`` ensemble.
  """
  apply_one = member_fn(ensemble)
  if apply_one is None:
    return None
  size = ensemble.size

  def predict(state, x):
    check_stacked(state.params["members"], size, "params")
    _check_batch(x, size, False)
    if chunk != "auto":
      c = int(chunk)
    elif uses_convolution(ensemble, state.params["members"], state.state, x):
      c = 1  # a vmapped convolution is a grouped one, slower than one by one
    else:
      c = auto_chunk(ensemble, state.params["members"], opt_slots=0)
    compute = lambda carried, rest, xx: apply_one(
        {"params": rest[0], "state": rest[1]}, xx, None, False)[0]
    update = lambda carried, out, looping: ((), out)
    _, out = _over_chunks(compute, update, (),
                          (state.params["members"], state.state), x, size, c)
    fused = None if fusion is None else fusion.apply(state.params["fusion"], out, x=x)
    return out, fused

  return predict
