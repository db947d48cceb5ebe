"""The ensemble type: M members stacked on a leading axis and vmapped.

An :class:`Ensemble` is a NamedTuple of pure functions plus the static facts
about its members (count, names, groups). Everything is built from two
single-member functions with :func:`from_fn`; :mod:`fusionjax.ensemble._flax`
adapts Linen and NNX modules and :func:`groups` joins several ensembles.
"""
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from fusionjax import errors


class Ensemble(NamedTuple):
  """M members whose variables are stacked on axis 0.

  Attributes:
    init: ``(key, x) -> variables``: ``{'params': ..., 'state': ...}`` whose
      every leaf is ``[M, ...]`` (per group for a heterogeneous ensemble).
      Members are initialised from M distinct keys split from ``key``.
    apply: ``(variables, x, *, key=None, train=False, per_member=False)
      -> (outputs [M, B, C], new_state)``. With ``per_member=True`` ``x`` is
      ``[M, B, ...]`` and member ``m`` reads ``x[m]`` (bagging); otherwise
      every member reads the same ``[B, ...]``. ``key`` gives each member its
      own dropout key. ``new_state`` holds the updated non-trainable
      collections (BatchNorm statistics) when ``train`` is true.
    size: the number of members ``M``.
    names: one name per member, in the fixed order of the outputs.
    groups: group name -> ``(start, stop)`` slice of the member axis.
    member_map: ``(f, *trees, num_outputs=None) -> out``: maps a
      single-member function over the member axis of member-stacked trees
      (``jax.vmap``, once per group). When ``f`` returns a tuple, pass its
      length as ``num_outputs`` to get a tuple of trees back. It is how
      per-member optimizers are applied.
    split: ``(array [M, ...]) -> tree``: lays a per-member array out like the
      params tree (identity for one group, a dict of slices for several).
    join: the inverse of ``split``: concatenates per-group arrays in the
      fixed member order.
    member_apply: the single-member ``(variables, x, key, train) -> (outputs
      [B, C], new_state)`` that ``apply`` maps over the members, or None when
      the ensemble was not built from one (:func:`from_fn`, ``from_linen`` and
      ``from_nnx`` set it). The trainer maps it over the member axis by a
      layout (``fusionjax.train.make_trainer``).
    parts: for a heterogeneous ensemble (:func:`groups`), group name -> its
      homogeneous ensemble (each with its own ``member_apply``); None otherwise.
    shared: None for members with their own stacked variables; for an
      ensemble whose members share one network's weights, its kind
      (``'batch_ensemble'``, ``'packed'``, ``'mc_dropout'``;
      :mod:`fusionjax.ensemble._efficient`). Its ``init`` gives one network's
      variables (not ``[M, ...]``), its ``apply`` still gives ``[M, B, C]``, it
      trains under the trainer's ``'native'`` layout, and ``member_map`` and
      ``per_member=True`` raise :class:`~fusionjax.errors.SharedWeightsError`.
  """
  init: Callable[..., Any]
  apply: Callable[..., Any]
  size: int
  names: tuple
  groups: Mapping[str, tuple]
  member_map: Callable[..., Any]
  split: Callable[..., Any]
  join: Callable[..., Any]
  member_apply: Optional[Callable[..., Any]] = None
  parts: Optional[Mapping[str, Any]] = None
  shared: Optional[str] = None


def _check_size(size):
  if not isinstance(size, int) or size < 1:
    raise errors.EnsembleSizeError(
        f"An ensemble needs size >= 1 members; got size={size!r}. "
        "Fix: pass a positive integer, e.g. size=8.")


def check_stacked(tree, size: int, what: str = "params"):
  """Raises :class:`~fusionjax.errors.MemberAxisError` unless every leaf is ``[size, ...]``."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    shape = getattr(leaf, "shape", ())
    if len(shape) == 0 or shape[0] != size:
      raise errors.MemberAxisError(
          f"{what} leaf {jax.tree_util.keystr(path)} has shape {tuple(shape)}, "
          f"but stacked {what} need the member axis first: [M={size}, ...]. "
          "Fix: pass variables made by the ensemble's init (or stack "
          "single-member params with fusionjax.ensemble.stack).")


def _check_batch(x, size: int, per_member: bool):
  leaves = jax.tree_util.tree_leaves(x)
  if not leaves:
    raise errors.BatchShapeError("The input batch x is empty. Fix: pass an array [B, ...].")
  if per_member:
    lead = {tuple(l.shape[:2]) for l in leaves}
    bad = [l.shape for l in leaves if l.ndim < 2 or l.shape[0] != size]
    if bad or len(lead) > 1:
      raise errors.BatchShapeError(
          f"per_member=True needs every input leaf to be [M={size}, B, ...]; "
          f"got shapes {[tuple(l.shape) for l in leaves]}. Fix: stack one batch "
          "per member on axis 0 (e.g. x[fusionjax.data.bootstrap(key, N, M)]), or pass "
          "per_member=False to share one batch.")
  else:
    lead = {l.shape[0] if l.ndim else None for l in leaves}
    if len(lead) > 1 or None in lead:
      raise errors.BatchShapeError(
          "Input leaves disagree on the batch dimension: "
          f"{[tuple(l.shape) for l in leaves]}. Fix: give every input leaf the "
          "same leading batch size B.")


def stack(trees: Sequence[Any]):
  """Stacks single-member pytrees into one member-stacked pytree ``[M, ...]``."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, size: Optional[int] = None):
  """Splits a member-stacked pytree into a list of single-member pytrees."""
  size = size or jax.tree_util.tree_leaves(tree)[0].shape[0]
  return [jax.tree.map(lambda a, i=i: a[i], tree) for i in range(size)]


def _vmap_members(f, *trees, num_outputs=None):
  del num_outputs  # vmap already returns a tuple of stacked outputs
  return jax.vmap(f)(*trees)


def from_fn(member_init: Callable, member_apply: Callable, size: int,
            name: str = "member") -> Ensemble:
  """Builds an ensemble from two single-member functions.

  Args:
    member_init: ``(key, x) -> {'params': ..., 'state': ...}`` for one member.
    member_apply: ``(variables, x, key, train) -> (outputs [B, C], new_state)``
      for one member; ``key`` may be ``None``.
    size: number of members ``M >= 1``.
    name: prefix of the member names (``name0``, ``name1``, ...).

  Returns:
    An :class:`Ensemble` whose ``init`` maps ``member_init`` over M keys and
    whose ``apply`` vmaps ``member_apply`` over the member axis.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> init = lambda k, x: {'params': {'w': jax.random.normal(k, (x.shape[-1], 3))}, 'state': {}}
    >>> apply = lambda v, x, key, train: (x @ v['params']['w'], v['state'])
    >>> ens = from_fn(init, apply, size=4)
    >>> v = ens.init(jax.random.key(0), jnp.ones((2, 5)))
    >>> ens.apply(v, jnp.ones((2, 5)))[0].shape
    (4, 2, 3)
  """
  _check_size(size)
  shapes = {}

  def init(key, x):
    _check_batch(x, size, per_member=False)
    keys = jax.random.split(key, size)
    # lax.map, not vmap: the same values bit for bit (tests/ensemble), but XLA
    # compiles one member's random-number kernels instead of member-batched
    # ones, which LLVM unrolls far more: 2-4x less compile time at M >= 4
    # (benchmarks/compile_memory.py), and init runs once.
    variables = jax.lax.map(lambda k: member_init(k, x), keys)
    shapes["abstract"] = jax.tree.map(lambda a: a.shape, variables)
    return variables

  def apply(variables, x, *, key=None, train=False, per_member=False):
    check_stacked(variables["params"], size, "params")
    check_stacked(variables.get("state", {}), size, "state")
    _check_batch(x, size, per_member)
    keys = None if key is None else jax.random.split(key, size)
    in_axes = (0, 0 if per_member else None, None if keys is None else 0)
    fn = lambda v, xx, k: member_apply(v, xx, k, train)
    return jax.vmap(fn, in_axes=in_axes)(variables, x, keys)

  names = tuple(f"{name}{i}" for i in range(size))
  identity = lambda a: a
  return Ensemble(init, apply, size, names, {name: (0, size)}, _vmap_members,
                  identity, identity, member_apply=member_apply)
