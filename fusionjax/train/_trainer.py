"""The training engine: one member step, mapped over the members by a layout.

:func:`make_trainer` builds both halves of training from one set of arguments,
as optax builds ``init`` and ``update``: ``Trainer(init, step, layout)``. The
member step (one member's forward, loss, backward, optimizer update and
non-finite guard) is written once; a layout maps it over the member axis
(:mod:`fusionjax.train._layouts`):

* ``'vmap'``: one vmapped program. The contract, the default on GPU and TPU,
  and the only layout under a device mesh or with a fused loss.
* ``'scan'``: chunks of members in a ``scan``, written in place (dense members
  on XLA:CPU).
* ``'loop'``: one jitted single-member program per member from the host
  (two or more convolutional members of one kind on XLA:CPU).
* ``'native'``: for ensembles whose members share one network's weights
  (``Ensemble.shared``: BatchEnsemble, Packed-Ensembles, MC-dropout): one
  network, one optimizer state, one update on the mean of the member losses.

The optimizer is per member: its state is its own member-stacked field of the
:class:`TrainState`, so clipping, schedules and Adam moments never couple two
members, and member losses are summed, so the stacked step equals M
independent single-member steps. (Under ``'native'`` there is one network, so
one optimizer and the mean: the loss of the network on its M outputs.)
"""
import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from fusionjax import errors
from fusionjax.ensemble import Ensemble
from fusionjax.ensemble._base import _check_batch, check_stacked
from fusionjax.fusion import Fusion
from fusionjax.train import _layouts
from fusionjax.train._guard import all_finite, all_finite_pair
from fusionjax.train._losses import cross_entropy

try:
  from jax.core import Tracer as _Tracer
except ImportError:  # jax.core's public names are being retired
  from jax._src.core import Tracer as _Tracer  # pylint: disable=g-import-not-at-top

REGIMES = ("independent", "frozen", "joint", "hybrid")
# Host threads of the 'loop' layout (auto_layout's CPU convolution rule).
# `python benchmarks/loop_workers.py --members 16 64 --cycles 5`, 2-core Intel
# Xeon with AVX-512: 11.17 / 9.96 / 9.61 / 9.57 ms per CNN member at M = 16 with
# 1 / 2 / 3 / 4 threads, 11.20 / 9.73 / 9.35 / 9.39 at M = 64.
LOOP_WORKERS = 3
LAYOUTS = ("vmap", "scan", "loop")
NATIVE = "native"  # the layout of shared-weight ensembles (Ensemble.shared)
_PLATFORMS = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}


class TrainState(NamedTuple):
  """Everything a step reads and writes; a pytree that orbax can save.

  Attributes:
    step: int32 scalar, steps taken.
    params: ``{'members': stacked [M, ...], 'fusion': fusion params}``.
    state: the members' non-trainable collections (BatchNorm statistics), ``[M, ...]``.
    opt_state: the members' optax state, every leaf ``[M, ...]`` (a dict per
      group for groups; ``()`` under regime ``'frozen'``).
    fusion_opt_state: the fusion's optax state (``()`` when the fusion is not trained).
    key: the PRNG key the next step splits for dropout.
    frozen: ``[M]`` bool; a frozen member's params, statistics and optimizer
      state are never updated (needs ``guard=True``).
  """
  step: jax.Array
  params: Any
  state: Any
  opt_state: Any
  fusion_opt_state: Any
  key: jax.Array
  frozen: jax.Array


class Trainer(NamedTuple):
  """What :func:`make_trainer` returns.

  Attributes:
    init: ``(key, x_example) -> TrainState``.
    step: ``(state, batch) -> (state, logs)``. For ``'vmap'`` and ``'scan'``
      the ``jax.jit``-ed step itself (it has ``.trace`` and ``.lower``).
    layout: the resolved layout: ``'vmap'``, ``'scan'``, ``'loop'`` or
      ``'native'`` (shared-weight ensembles); for groups with a member step, a
      dict group -> ``'vmap'`` or ``'scan'``.
  """
  init: Callable
  step: Callable
  layout: Any


class Predictor(NamedTuple):
  """What :func:`make_predictor` returns.

  Attributes:
    predict: ``(state, x) -> (member outputs [M, B, C], fused or None)``, jitted.
    layout: ``'vmap'``, ``'scan'`` (the members' forward passes in chunks) or
      ``'native'`` (a shared-weight ensemble's own forward pass).
  """
  predict: Callable
  layout: str


def resolve_platform(platform: Optional[str] = None) -> str:
  """``'cpu'``, ``'gpu'`` or ``'tpu'``: ``platform`` (``cuda``/``rocm`` mean gpu), else
  ``jax.default_backend()``."""
  name = (platform or jax.default_backend()).lower()
  if name not in _PLATFORMS:
    raise errors.LayoutError(
        f"platform={platform!r} is not one of {sorted(_PLATFORMS)}. Fix: pass one of "
        "those, or None for jax.default_backend().")
  return _PLATFORMS[name]


def auto_layout(platform: str, *, conv: Optional[bool], size: int, mesh: bool = False,
                regime: str = "independent", mappable: bool = True,
                grouped: bool = False, shared: bool = False) -> str:
  """The layout ``layout='auto'`` runs: a pure function of these facts.

  Args:
    platform: ``'cpu'``, ``'gpu'`` or ``'tpu'`` (:func:`resolve_platform`).
    conv: whether a member's forward pass has a convolution (None: unknown).
    size: the member count (of the group, for groups).
    mesh: the step is sharded over a device mesh.
    regime: the training regime.
    mappable: the members come from one single-member function.
    grouped: the members are one group of a heterogeneous ensemble.
    shared: the members share one network's weights (``Ensemble.shared``).

  Returns:
    ``'vmap'``, ``'scan'``, ``'loop'`` or ``'native'``. The rules, each with
    its evidence:

    * members that share weights: ``'native'``, the only layout that can
      (their params are one network's, with no member axis to map);
    * a mesh, a fused loss (regime other than ``'independent'``) or members
      without a single-member function: ``'vmap'``, the only layout that can;
    * GPU and TPU: ``'vmap'``, one vectorised program (whether convolutional
      members do better with ``'scan'`` there, jax issues 26568 and 13800, is
      for ``benchmarks/gpu.sh`` to measure);
    * CPU, convolutional members: ``'loop'`` for two or more members of one
      kind, from ``LOOP_WORKERS`` host threads (``benchmarks/RESULTS.md``,
      ensemble_step, CNN rows, 2-core Intel Xeon with AVX-512, 2026-12-07,
      ``python benchmarks/ensemble_step.py --models digits_mlp mnist_mlp cnn
      --members 1 4 16 64 --cycles 7``: the loop ran 1.13x / 1.22x / 1.28x a
      plain JAX loop at M = 4 / 16 / 64 and 1.03x / 1.09x the PyTorch loop at
      M = 16 / 64, while the vmapped step, whose convolutions are grouped ones,
      ran at 1/4.1 of it at M = 4 and was too slow to time at 16 and 64; the
      earlier AMD EPYC rows there agree on the vmapped step), ``'scan'`` for one
      (the plain single-member program: the same dots and convolutions,
      checked at M = 1 by the benchmark and ``tests/train/test_layouts.py``;
      1.08x the plain loop), and ``'vmap'`` within groups, where ``'loop'``
      cannot run (not measured: groups ran vmapped before this layout existed);
    * CPU, dense members or unknown: ``'scan'`` with chunks of
      :func:`~fusionjax.train._layouts.auto_chunk` members (same run, MLP rows:
      against the plain loop 1.20x / 1.34x / 1.54x for the digits MLP in
      chunks of 4 / 8 / 8 at M = 4 / 16 / 64 and 1.02x / 1.04x / 1.10x for the
      MNIST MLP in chunks of 4; against the vmapped step ("vs fj_vmap") 1.04x /
      0.99x / 1.66x and 1.19x / 1.69x / 1.68x: ``'vmap'`` is level for the
      small digits MLP at M <= 16 and slower for the MNIST MLP).
      Dense groups of a groups ensemble take it too.
  """
  if shared:
    return NATIVE
  if mesh or regime != "independent" or not mappable or platform in ("gpu", "tpu"):
    return "vmap"
  if conv:
    if grouped:
      return "vmap"
    return "loop" if size > 1 else "scan"
  return "scan"


def _member_parts(ensemble: Ensemble):
  """``{group: (ensemble, (lo, hi))}`` when every group has a member step, else None."""
  if ensemble.parts:
    parts = {g: (e, ensemble.groups[g]) for g, e in ensemble.parts.items()}
    if all(e.member_apply is not None and not e.parts for e, _ in parts.values()):
      return parts
    return None
  if ensemble.member_apply is not None:
    return {None: (ensemble, (0, ensemble.size))}
  return None


def _uses_conv(ensemble: Ensemble, x) -> bool:
  """Whether a member of ``ensemble`` convolves on inputs shaped like ``x`` (abstract trace)."""
  xs = jax.tree.map(lambda a: jax.ShapeDtypeStruct((1,) + a.shape[1:], a.dtype), x)
  variables = jax.eval_shape(ensemble.init, jax.random.key(0), xs)
  one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), variables)
  return _layouts.uses_convolution(ensemble.member_apply, one, xs)


def _resolve_layouts(ensemble, layout, platform, parts, *, mesh, regime, conv):
  """``{group: layout}`` (group ``None`` for one group), or None for the coupled step
  (one vmapped program over the whole ensemble and the fused loss)."""
  groups = ensemble.parts is not None
  options = f"one of {LAYOUTS}, a dict group -> layout for groups, or 'auto'"
  if isinstance(layout, dict):
    if not groups or set(layout) != set(ensemble.groups):
      raise errors.LayoutError(
          f"layout={layout!r}: a dict of layouts needs one entry per group of a groups() "
          f"ensemble ({list(ensemble.groups) if groups else 'this one has none'}). "
          f"Fix: pass {options}.")
    wanted = dict(layout)
  elif layout == "auto" or layout in LAYOUTS:
    wanted = {g: layout for g in (parts or {None: None})}
  else:
    raise errors.LayoutError(f"layout={layout!r} is not {options}.")

  coupled = regime != "independent" or parts is None
  resolved = {}
  for g, want in wanted.items():
    if want not in LAYOUTS + ("auto",):
      raise errors.LayoutError(f"layout {want!r} for group {g!r} is not {options}.")
    if want == "auto":
      want = auto_layout(platform, conv=None if coupled else conv.get(g), size=parts[g][0].size if parts else ensemble.size,
                         mesh=mesh, regime=regime, mappable=parts is not None,
                         grouped=groups)
    why = None
    if want != "vmap" and (coupled or mesh):
      why = ("a device mesh" if mesh else f"regime={regime!r} (a fused loss couples the "
             "members)" if regime != "independent" else
             "members without a single-member function (Ensemble.member_apply)")
    elif want == "loop" and groups:
      why = "groups (each group runs 'vmap' or 'scan' inside one program)"
    elif want == "loop" and platform != "cpu":
      why = f"platform {platform!r} (the host loop is for XLA:CPU)"
    if why:
      raise errors.LayoutError(
          f"layout {want!r} cannot run with {why}. Fix: pass layout='auto' or 'vmap'.")
    resolved[g] = want
  return None if coupled else resolved


def _check_native(kind, layout, *, per_member, freeze_nonfinite, mesh):
  """Raises :class:`~fusionjax.errors.SharedWeightsError` for what a shared-weight
  ensemble of kind ``kind`` cannot do (every option here acts on one member alone)."""
  refused = None
  if per_member:
    refused = "per_member=True (bagging: a batch per member)"
  elif freeze_nonfinite:
    refused = ("freeze_nonfinite=True (fit's on_nonfinite='freeze': freezing one member; "
               "the guard skips the whole update instead)")
  elif isinstance(layout, dict) or layout in LAYOUTS:
    refused = f"layout={layout!r} (mapping one member's step over a member axis)"
  elif mesh is not None and dict(mesh.shape).get("member", 1) != 1:
    refused = (f"a mesh with a 'member' axis of {mesh.shape['member']} devices (members "
               "cannot be split over devices; the 'data' axis is fine: "
               "fusionjax.train.make_mesh(member=1))")
  if refused:
    raise errors.SharedWeightsError(
        f"{refused} acts on members one by one, but the members of this {kind} ensemble "
        "share one network's weights (its params are not stacked per member). Fix: train "
        "it as one network: layout='auto' or 'native', every member on the same batch "
        "(no bagging), on_nonfinite='stop' (or guard=True: a non-finite loss or gradient "
        "skips the whole update); or use a deep ensemble (fusionjax.ensemble.from_linen) "
        "where per-member training is the point.")
  if layout not in ("auto", NATIVE):
    raise errors.LayoutError(
        f"layout={layout!r} is not 'auto' or 'native', the layouts of a {kind} ensemble.")


def _check_members(ensemble, tree, what):
  """``check_stacked`` per group: a group's leaves are ``[M_g, ...]``, not ``[M, ...]``."""
  if not ensemble.parts:
    check_stacked(tree, ensemble.size, what)
    return
  for g, e in ensemble.parts.items():
    _check_members(e, tree[g], what)


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


def _where(pred, new, old):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def _update_one(tx, guard, looping, p, s, o, grads, new_s, loss, frozen):
  """One member's optimizer update and guard: ``(params, state, opt_state, finite)``.

  With ``guard``, a member whose loss, gradient or update is not finite, or
  that is frozen, keeps its params, BatchNorm statistics and optimizer state
  (the verdict reads both trees in one pass, :func:`all_finite_pair`).
  """
  updates, new_o = tx.update(grads, o, p)
  new_p = optax.apply_updates(p, updates)
  if guard:
    finite = jnp.isfinite(loss) & all_finite_pair(grads, updates)
    keep = finite & ~frozen
    if not looping:
      # The update again, on gradients zeroed where the verdict is to keep:
      # the same values where they are written (to float rounding, as XLA
      # fuses it differently: the main job's member ECE moved from 0.0209 to
      # 0.0208), but its only consumer is the select, so XLA computes params
      # and moments in one pass that writes each once, instead of
      # materialising the new moments for the verdict's GEMV
      # and selecting them in a second pass. It measured 1.12x for 4 MNIST-MLP
      # members when it was introduced; `python benchmarks/step_ab.py --cycles
      # 15` now measures 0.98x / 1.01x / 0.98x for the MNIST MLP at M = 1 and 4
      # and the digits MLP at M = 4 (2-core Intel Xeon with AVX-512), i.e. no
      # gain; removing it would move the trainer's numbers at float-rounding
      # level. Inside a scan (``looping``) XLA copies the full-size moments
      # every chunk with it (0.56x), so not there.
      zeroed = jax.tree.map(lambda g: jnp.where(keep, g, jnp.zeros_like(g)), grads)
      again, new_o = tx.update(zeroed, o, p)
      new_p = optax.apply_updates(p, again)
    return _where(keep, new_p, p), _where(keep, new_s, s), _where(keep, new_o, o), finite
  finite = jnp.isfinite(loss) & all_finite(grads)
  if looping:
    # No guard, but the same data flow: a select whose (always true)
    # predicate reads every update makes XLA materialise the chunk's new
    # values before writing them in place; without it XLA recomputes the
    # moments inside the params' in-place write and copies the full-size
    # moments every chunk (~3x slower).
    ok = all_finite(updates)
    always = ok | ~ok
    new_p, new_o = _where(always, new_p, p), _where(always, new_o, o)
  return new_p, new_s, new_o, finite


def _member_halves(apply_one, tx, loss, per_member, guard):
  """``(compute, update)`` of the member step (see :mod:`fusionjax.train._layouts`)."""

  def compute(carried, rest, shared):
    p, s, _ = carried
    k, frozen, data = rest
    xm, ym, mm = data if per_member else shared

    def objective(q):
      out, new_s = apply_one({"params": q, "state": s}, xm, k, True)
      l = loss(out, ym, mm)
      return l, (new_s, l)

    grads, (new_s, l) = jax.grad(objective, has_aux=True)(p)
    return grads, new_s, l, frozen

  def update(carried, out, looping):
    p, s, o = carried
    grads, new_s, l, frozen = out
    new_p, new_s, new_o, finite = jax.vmap(
        functools.partial(_update_one, tx, guard, looping))(p, s, o, grads, new_s, l, frozen)
    return (new_p, new_s, new_o), (l, finite)

  return compute, update


class _HostLoopStep:
  """The ``'loop'`` layout's step: a host loop of jitted single-member calls.

  It is not one program, so it cannot be traced or lowered as one.
  """

  def __init__(self, fn):
    self._fn = fn
    functools.update_wrapper(self, fn)

  def __call__(self, state, batch):
    return self._fn(state, batch)

  def _no_program(self, *args, **kwargs):
    del args, kwargs
    raise errors.LayoutError(
        "The 'loop' layout runs one jitted call per member from the host, so there is "
        "no single program to trace or lower. Fix: build the trainer with "
        "layout='vmap' or 'scan' (or platform='cuda'/'tpu') to inspect a program.")

  trace = lower = _no_program


def make_trainer(ensemble: Ensemble, tx: optax.GradientTransformation, *,
                 fusion: Optional[Fusion] = None, regime: str = "independent",
                 lam: float = 1.0, fusion_tx: Optional[optax.GradientTransformation] = None,
                 loss: Callable = cross_entropy, guard: bool = True, per_member: bool = False,
                 mesh=None, layout: Any = "auto", platform: Optional[str] = None,
                 x_example=None, chunk: Any = "auto", donate: bool = True,
                 jit: bool = True, freeze_nonfinite: bool = False) -> Trainer:
  """Builds ``Trainer(init, step, layout)``: every member (and the fusion) trained at once.

  Regimes:
    * ``'independent'``: the sum of member losses; the fusion is not trained.
    * ``'frozen'``: members fixed, the fusion learned on the fused loss
      (e.g. on held-out data).
    * ``'joint'``: members and fusion trained on the fused loss.
    * ``'hybrid'``: the sum of member losses plus ``lam`` times the fused loss.

  Shared-weight ensembles (``Ensemble.shared``: ``fusionjax.ensemble.
  batch_ensemble``, ``packed``, ``mc_dropout``) train under the ``'native'``
  layout, which ``'auto'`` picks for them: one network, ``tx`` applied once to
  its params (one optimizer state, not stacked), and the *mean* of the member
  losses in place of their sum (the network's loss on its ``[M, B, C]``
  outputs, e.g. BatchEnsemble's loss on the tiled batch; every regime above
  works, ``'hybrid'`` adding ``lam`` times the fused loss to that mean). With
  ``guard``, a non-finite loss, gradient or update skips the whole update
  (``finite`` is False for every member then) and ``state.frozen`` is not
  read. ``per_member``, ``freeze_nonfinite``, the member-mapped layouts and a
  mesh whose ``'member'`` axis has more than one device raise
  :class:`~fusionjax.errors.SharedWeightsError` (a mesh's ``'data'`` axis
  shards the batch as usual).

  Args:
    ensemble: the ensemble.
    tx: single-member optax transform, applied per member.
    fusion: the fusion (trained under ``frozen``/``joint``/``hybrid``).
    regime: one of the four above.
    lam: weight of the fused loss in ``'hybrid'``.
    fusion_tx: the fusion's optimizer (default ``tx``).
    loss: ``(outputs [..., B, C], y, mask) -> [...]``, a mean over the batch.
    guard: keep a member's params, statistics and optimizer state when its
      loss, gradient or update is not finite (and honour ``state.frozen``).
    per_member: batches are ``x [M, B, ...], y [M, B]`` (bagging).
    mesh: a ``('member', 'data')`` mesh: the step is jitted with
      ``NamedSharding`` in/out shardings (:mod:`fusionjax.train._sharding`).
    layout: ``'auto'``, ``'vmap'``, ``'scan'``, ``'loop'``, ``'native'``
      (shared-weight ensembles only), or for groups a dict group ->
      ``'vmap'``/``'scan'``. ``'auto'`` is :func:`auto_layout`.
    platform: the platform the layout is chosen for (``cpu``, ``gpu``,
      ``cuda``, ``rocm``, ``tpu``; default ``jax.default_backend()``).
    x_example: an input batch; on CPU it tells ``'auto'`` whether the members
      convolve (without it, ``'auto'`` takes ``'scan'`` there).
    chunk: members per chunk of ``'scan'``: ``'auto'`` (cache-sized) or an int.
    donate: donate the input state's buffers to the step.
    jit: jit the step (``False``: the pure function, for an outer jit).
    freeze_nonfinite: a member whose loss, gradient or update is not finite is
      frozen for good (``state.frozen``, which checkpoints keep); otherwise
      only that step's update is skipped. Needs ``guard``.

  Returns:
    A :class:`Trainer`. ``step(state, batch)`` takes ``batch = {'x', 'y',
    'mask' (optional)}`` and returns ``(state, logs)`` with ``member_loss
    [M]``, ``loss`` (the objective), ``fused_loss`` (with a trained fusion)
    and ``finite [M]`` (False where a member's loss, gradient or update was
    not finite; with ``guard`` its update was skipped).

  Example:
    >>> import jax, jax.numpy as jnp, optax, fusionjax as fj
    >>> ens = fj.ensemble.from_linen(fj.models.MLP(3, (8,)), size=4)
    >>> trainer = fj.train.make_trainer(ens, optax.sgd(0.1), platform="cpu")
    >>> state = trainer.init(jax.random.key(0), jnp.ones((1, 5)))
    >>> state, logs = trainer.step(state, {"x": jnp.ones((2, 5)), "y": jnp.zeros(2, int)})
    >>> trainer.layout, logs["member_loss"].shape
    ('scan', (4,))
  """
  if regime not in REGIMES:
    raise ValueError(f"regime must be one of {REGIMES}; got {regime!r}.")
  if regime != "independent" and fusion is None:
    raise ValueError(f"regime={regime!r} trains a fusion; pass fusion=...")
  if per_member and regime != "independent":
    raise ValueError("A fused loss needs every member to see the same batch; "
                     "per_member=True works with regime='independent' only.")
  if freeze_nonfinite and not guard:
    raise ValueError("freeze_nonfinite=True needs guard=True (the guard applies "
                     "state.frozen).")
  fusion_tx = fusion_tx or tx
  platform = resolve_platform(platform)
  size = ensemble.size
  native = getattr(ensemble, "shared", None)
  if native:
    _check_native(native, layout, per_member=per_member,
                  freeze_nonfinite=freeze_nonfinite, mesh=mesh)
  elif layout == NATIVE:
    raise errors.LayoutError(
        "layout='native' is the layout of ensembles whose members share one network's "
        "weights (fusionjax.ensemble.batch_ensemble, packed, mc_dropout); this "
        "ensemble's members have their own stacked params. Fix: pass layout='auto' or "
        f"one of {LAYOUTS}.")
  # Member losses are summed over stacked members (M independent steps) and
  # averaged for one shared network (its loss on its M outputs).
  reduce_members = jnp.mean if native else jnp.sum
  parts = None if native else _member_parts(ensemble)
  # Whether each group's members convolve: what 'auto' and donation need to know
  # on XLA:CPU (one abstract trace per group; {} where it is not asked).
  conv = {}
  if platform == "cpu" and x_example is not None and parts is not None and mesh is None:
    conv = {g: _uses_conv(e, x_example) for g, (e, _) in parts.items()}
  layouts = None if native else _resolve_layouts(
      ensemble, layout, platform, parts, mesh=mesh is not None, regime=regime, conv=conv)
  trains_members, trains_fusion = regime != "frozen", regime != "independent"

  # ---------------------------------------------------------------- init
  def init_pure(key, x):
    k_members, k_fusion, k_step = jax.random.split(key, 3)
    variables = ensemble.init(k_members, x)
    fparams = ()
    if fusion is not None:
      out, _ = ensemble.apply(variables, x)
      fparams = fusion.init(k_fusion, out, x=x)
    opt = () if not trains_members else (
        tx.init(variables["params"]) if native else
        ensemble.member_map(tx.init, variables["params"]))
    fopt = fusion_tx.init(fparams) if trains_fusion else ()
    return TrainState(jnp.zeros((), jnp.int32), {"members": variables["params"],
                                                 "fusion": fparams},
                      variables["state"], opt, fopt, k_step, jnp.zeros((size,), bool))

  init_jit = jax.jit(init_pure)

  def init(key, x_example):
    x_example = jnp.asarray(x_example)
    traced = any(isinstance(a, _Tracer) for a in (key, x_example))
    if jax.default_backend() != "cpu" or traced:  # in an outer jit, its options rule
      return init_jit(key, x_example)
    # init runs once, and most of its compile time is LLVM optimising the
    # random-number kernels: at -O1 XLA:CPU compiles it in about half the time
    # of -O3 with the same values bit for bit (tests/train/test_trainer.py).
    return init_jit.lower(key, x_example).compile(
        {"xla_backend_optimization_level": 1})(key, x_example)

  # ---------------------------------------------------------------- checks
  def begin(state, batch):
    if not isinstance(state, TrainState):
      raise TypeError(f"step() takes the TrainState made by trainer.init; got "
                      f"{type(state).__name__}.")
    x, y, mask = batch["x"], jnp.asarray(batch["y"]), batch.get("mask")
    if loss is cross_entropy and (not jnp.issubdtype(y.dtype, jnp.integer)
                                  or y.ndim != (2 if per_member else 1)):
      want = "[M, B]" if per_member else "[B]"
      raise errors.LabelError(
          f"The step's labels y have dtype {y.dtype} and shape {tuple(y.shape)}; "
          f"cross_entropy needs integer class indices {want}. Fix: pass "
          "y.astype(jnp.int32) (y.ravel() for [B, 1]; y.argmax(-1) for one-hot), or a "
          "loss= for other targets.")
    if not native:
      _check_members(ensemble, state.params["members"], "params")
      _check_members(ensemble, state.state, "state")
    _check_batch(x, size, per_member)
    _check_labels_batch(x, y, per_member, size)
    return x, y, mask

  def finish(state, key, params_m, bn, opt, fparams, fopt, logs, step):
    logs = dict(logs)
    if "fused_loss" not in logs:
      logs["loss"] = reduce_members(logs["member_loss"])
    elif regime in ("frozen", "joint"):
      logs["loss"] = logs["fused_loss"]
    else:
      logs["loss"] = reduce_members(logs["member_loss"]) + lam * logs["fused_loss"]
    params = {"members": params_m, "fusion": fparams}
    frozen = state.frozen | ~logs["finite"] if freeze_nonfinite else state.frozen
    return state._replace(step=step, params=params, state=bn, opt_state=opt,
                          fusion_opt_state=fopt, key=key, frozen=frozen), logs

  # ---------------------------------------------------------------- coupled
  def coupled_step(state, batch):
    """One vmapped program over the whole ensemble (and the fusion's loss); for a
    shared-weight ensemble, its one network (``'native'``)."""
    x, y, mask = begin(state, batch)
    key, sub = jax.random.split(state.key)

    def objective(pm, pf):
      out, new_s = ensemble.apply({"params": pm, "state": state.state}, x, key=sub,
                                  train=True, per_member=per_member)
      member_loss = loss(out, y, mask)  # [M]
      logs = {"member_loss": member_loss}
      if not trains_fusion:
        return reduce_members(member_loss), (new_s, logs)
      fused_loss = loss(fusion.apply(pf, out, x=x), y, mask)
      logs["fused_loss"] = fused_loss
      total = fused_loss if regime in ("frozen", "joint") else (
          reduce_members(member_loss) + lam * fused_loss)
      return total, (new_s, logs)

    argnums = tuple(i for i, on in ((0, trains_members), (1, trains_fusion)) if on)
    grads, (new_s, logs) = jax.grad(objective, argnums=argnums, has_aux=True)(
        state.params["members"], state.params["fusion"])
    grads = dict(zip(argnums, grads))
    pm, bn, opt = state.params["members"], new_s, state.opt_state
    if trains_members and native:
      # One network: one update, kept whole when any member's loss, the
      # gradient or the update is not finite (state.frozen is not read).
      pm, bn, opt, ok = _update_one(tx, guard, False, pm, state.state, opt, grads[0], new_s,
                                    jnp.sum(logs["member_loss"]), jnp.bool_(False))
      logs["finite"] = jnp.isfinite(logs["member_loss"]) & ok
    elif trains_members:
      one = functools.partial(_update_one, tx, guard, False)
      pm, bn, opt, finite = ensemble.member_map(
          one, pm, state.state, opt, grads[0], new_s, ensemble.split(logs["member_loss"]),
          ensemble.split(state.frozen), num_outputs=4)
      logs["finite"] = ensemble.join(finite)
    else:
      bn = state.state  # frozen members: no BatchNorm statistics move either
      logs["finite"] = jnp.isfinite(logs["member_loss"])
    fparams, fopt = state.params["fusion"], state.fusion_opt_state
    if trains_fusion:
      updates, new_fopt = fusion_tx.update(grads[1], fopt, fparams)
      new_fparams = optax.apply_updates(fparams, updates)
      if guard:
        ok = jnp.isfinite(logs["fused_loss"]) & all_finite_pair(grads[1], updates)
        new_fparams, new_fopt = _where(ok, new_fparams, fparams), _where(ok, new_fopt, fopt)
      fparams, fopt = new_fparams, new_fopt
    return finish(state, key, pm, bn, opt, fparams, fopt, logs, state.step + 1)

  # ---------------------------------------------------------------- mapped
  def member_keys(sub):
    """Member m's dropout key, as ``Ensemble.apply`` hands them out."""
    if ensemble.parts is None:
      return {None: jax.random.split(sub, size)}
    ks = jax.random.split(sub, len(ensemble.parts))
    return {g: jax.random.split(k, e.size) for (g, e), k in zip(ensemble.parts.items(), ks)}

  def group_trees(state, g, lo, hi, data):
    pick = (lambda t: t) if g is None else (lambda t: t[g])
    carried = (pick(state.params["members"]), pick(state.state), pick(state.opt_state))
    gdata = data if g is None else jax.tree.map(lambda a: a[lo:hi], data)
    return carried, state.frozen[lo:hi], gdata

  def mapped_step(state, batch):
    """The member step mapped over each group by its layout, in one program."""
    x, y, mask = begin(state, batch)
    key, sub = jax.random.split(state.key)
    keys = member_keys(sub)
    data = (x, y, mask) if per_member else ()
    shared = () if per_member else (x, y, mask)
    new, auxes = {}, []
    for g, (e, (lo, hi)) in parts.items():
      compute, update = _member_halves(e.member_apply, tx, loss, per_member, guard)
      carried, frozen, gdata = group_trees(state, g, lo, hi, data)
      rest = (keys[g], frozen, gdata)
      if layouts[g] == "vmap":
        new[g], aux = _layouts.vmap_members(compute, update, carried, rest, shared)
      else:
        c = _layouts.auto_chunk(e.size, carried[0]) if chunk == "auto" else int(chunk)
        new[g], aux = _layouts.over_chunks(compute, update, carried, rest, shared, e.size, c)
      auxes.append(aux)
    if None in new:
      pm, bn, opt = new[None]
    else:
      pm, bn, opt = ({g: new[g][i] for g in new} for i in range(3))
    member_loss = jnp.concatenate([a[0] for a in auxes])
    finite = jnp.concatenate([a[1] for a in auxes])
    logs = {"member_loss": member_loss, "finite": finite}
    return finish(state, key, pm, bn, opt, state.params["fusion"], state.fusion_opt_state,
                  logs, state.step + 1)

  # ---------------------------------------------------------------- loop
  def loop_step_fn():
    (e, _), = parts.values()
    compute, update = _member_halves(e.member_apply, tx, loss, per_member, guard)

    def prepare(key, step, frozen, data):
      key, sub = jax.random.split(key)
      return (key, step + 1), (jax.random.split(sub, size), frozen, data)

    host = _layouts.HostLoop(compute, update, size, prepare, workers=LOOP_WORKERS)

    def step(state, batch):
      x, y, mask = begin(state, batch)
      data = (x, y, mask) if per_member else ()
      shared = () if per_member else (x, y, mask)
      carried = (state.params["members"], state.state, state.opt_state)
      (key, step_no), (pm, bn, opt), (member_loss, finite) = host(
          carried, (state.key, state.step, state.frozen, data), shared, donate)
      logs = {"member_loss": member_loss, "finite": finite}
      return finish(state, key, pm, bn, opt, state.params["fusion"],
                    state.fusion_opt_state, logs, step_no)

    return _HostLoopStep(step)

  # ---------------------------------------------------------------- assemble
  if layouts is None:
    pure, resolved = coupled_step, NATIVE if native else "vmap"
  else:
    pure = mapped_step
    resolved = layouts[None] if None in layouts else dict(layouts)
  if resolved == "loop":
    return Trainer(init, loop_step_fn(), "loop")
  if not jit:
    return Trainer(init, pure, resolved)
  if mesh is not None:
    from fusionjax.train._sharding import jit_sharded  # pylint: disable=g-import-not-at-top
    return Trainer(init, jit_sharded(pure, mesh, ensemble, per_member, donate), resolved)
  # Convolutional programs on XLA:CPU are not donated: written in place, the
  # guard's selects cost more than the copy (python benchmarks/donation.py).
  if donate and any(conv.values()):
    donate = False
  return Trainer(init, jax.jit(pure, donate_argnums=(0,) if donate else ()), resolved)


def make_predictor(ensemble: Ensemble, fusion: Optional[Fusion] = None, *,
                   layout: str = "auto", platform: Optional[str] = None,
                   chunk: Any = "auto", jit: bool = True) -> Predictor:
  """``Predictor(predict, layout)``: members' outputs and the fused prediction, jitted.

  Args:
    ensemble: the ensemble.
    fusion: an optional fusion applied to the member outputs.
    layout: ``'vmap'`` (one vmapped forward pass), ``'scan'`` (members'
      forward passes in chunks of ``chunk``: cache-sized for dense members,
      one by one for convolutional ones), or ``'auto'``: ``'scan'`` on CPU for
      ensembles with a member function, ``'vmap'`` elsewhere. A shared-weight
      ensemble runs its own forward pass, ``'native'`` (``'auto'``, ``'vmap'``
      and ``'native'`` all give it; ``'scan'`` raises).
    platform: as in :func:`make_trainer`.
    chunk: ``'auto'`` or members per chunk for ``'scan'``.
    jit: jit ``predict`` (``False``: the pure function).

  Returns:
    A :class:`Predictor`; ``predict(state, x) -> (outputs [M, B, C], fused or None)``.
  """
  platform = resolve_platform(platform)
  mappable = ensemble.member_apply is not None and not ensemble.parts
  if getattr(ensemble, "shared", None) and layout in ("auto", "vmap", NATIVE):
    layout = NATIVE  # one program, the ensemble's own apply: what 'vmap' runs
  elif layout == NATIVE:
    raise errors.LayoutError(
        "make_predictor(layout='native') is for shared-weight ensembles (batch_ensemble, "
        "packed, mc_dropout). Fix: pass layout='auto', 'vmap' or 'scan'.")
  elif layout == "auto":
    layout = "scan" if platform == "cpu" and mappable else "vmap"
  if layout not in ("vmap", "scan", NATIVE):
    raise errors.LayoutError(f"make_predictor(layout={layout!r}): use 'auto', 'vmap' or "
                             "'scan'.")
  if layout == "scan" and not mappable:
    raise errors.LayoutError(
        "layout='scan' needs an ensemble built from one single-member function "
        "(from_fn, from_linen, from_nnx). Fix: pass layout='vmap' or 'auto'.")
  size = ensemble.size

  def fused_of(state, out, x):
    return None if fusion is None else fusion.apply(state.params["fusion"], out, x=x)

  def predict_vmap(state, x):
    out, _ = ensemble.apply({"params": state.params["members"], "state": state.state}, x,
                            train=False)
    return out, fused_of(state, out, x)

  def predict_scan(state, x):
    check_stacked(state.params["members"], size, "params")
    _check_batch(x, size, False)
    if chunk != "auto":
      c = int(chunk)
    elif _uses_conv(ensemble, x):
      c = 1  # a vmapped convolution is a grouped one, slower than one by one
    else:
      c = _layouts.auto_chunk(size, state.params["members"], opt_slots=0,
                              budget=_layouts._PREDICT_BUDGET_BYTES)  # pylint: disable=protected-access
    compute = lambda carried, rest, xx: ensemble.member_apply(
        {"params": rest[0], "state": rest[1]}, xx, None, False)[0]
    update = lambda carried, out, looping: ((), out)
    _, out = _layouts.over_chunks(compute, update, (),
                                  (state.params["members"], state.state), x, size, c)
    return out, fused_of(state, out, x)

  predict = predict_scan if layout == "scan" else predict_vmap  # 'native': ens.apply
  return Predictor(jax.jit(predict) if jit else predict, layout)
