"""Combinators: build new fusions from old ones (``chain``, ``parallel``, ``select``).

A fusion maps member outputs ``[M, B, C]`` to something; combinators only
rely on that. ``select`` returns member outputs ``[M', B, C]``, ``parallel``
returns a new member axis ``[K, B, C]`` (its branches' fused log-probs, which
are valid logits since ``log_softmax(log_softmax(z)) = log_softmax(z)``), and
``chain`` feeds each fusion's output to the next. So fusions of fusions, and
*mixed* fusions (parallel inside serial) are compositions::

    # the mean and a learned weighting of 5 members, then a learned
    # weighting of those two
    chain(parallel(mean(), weighted(5)), weighted(2))

    # a cascade whose second stage is a learned average of members 1-3
    cascade([0.9], stages=[select([0]), chain(select([1, 2, 3]), weighted(3))])

    # one fusion per named group, then the mean of the groups
    groups = {'cnn': range(0, 3), 'gru': range(3, 5)}
    chain(parallel(chain(select('cnn', groups), mean()),
                   chain(select('gru', groups), mean())), mean())

``x`` (the input batch) reaches every fusion; an ``apply`` key is split
between the fusions.
"""
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fusionjax import errors
from fusionjax.fusion import _checks
from fusionjax.fusion._base import Fusion


def _check_fusions(fusions, name):
  if not fusions:
    raise errors.FusionConfigError(
        f"{name}() needs at least one fusion. Fix: e.g. {name}(mean(), "
        "weighted(3)).")
  for i, f in enumerate(fusions):
    if not (callable(getattr(f, "init", None))
            and callable(getattr(f, "apply", None))):
      raise errors.FusionConfigError(
          f"{name}: argument {i} is {f!r}, not a Fusion(init, apply). Fix: "
          "pass fusions built by fusionjax.fusion factories (call the "
          "factory: mean(), not mean).")


def _keys(key, n):
  """``n`` keys from ``key``; ``None`` stays ``None`` (param-free fusions)."""
  return [None] * n if key is None else list(jax.random.split(key, n))


def chain(*fusions: Fusion) -> Fusion:
  """Apply fusions in sequence: each one's output is the next one's input.

  ``chain(f, g).apply((pf, pg), z) == g.apply(pg, f.apply(pf, z))``. The
  output of every fusion but the last must be member outputs ``[K, B, C]``
  (from :func:`select` or :func:`parallel`). ``init`` initialises each fusion
  on the previous one's actual output.

  Args:
    *fusions: the fusions, first applied first.

  Returns:
    A ``Fusion`` whose params are the tuple of the fusions' params.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from fusionjax import fusion
    >>> z = jnp.linspace(-3.0, 3.0, 60).reshape(5, 4, 3)  # [M, B, C] logits
    >>> f = fusion.chain(fusion.parallel(fusion.mean(), fusion.weighted(5)),
    ...                  fusion.weighted(2))
    >>> params = f.init(jax.random.key(1), z)
    >>> jax.jit(f.apply)(params, z).shape  # pure: jit, grad, vmap freely
    (4, 3)

  References:
    Kuncheva, "Combining Pattern Classifiers: Methods and Algorithms",
    Wiley 2004 (combiners of combiners); the combinator style of optax's
    ``chain``.
  """
  _check_fusions(fusions, "chain")

  def init(key, member_outputs, *, x=None):
    params, h = [], member_outputs
    for f, k in zip(fusions, _keys(key, len(fusions))):
      p = f.init(k, h, x=x)
      params.append(p)
      if len(params) < len(fusions):
        h = f.apply(p, h, x=x)
    return tuple(params)

  def apply(params, member_outputs, *, x=None, key=None):
    if not isinstance(params, (tuple, list)) or len(params) != len(fusions):
      raise errors.FusionConfigError(
          f"chain of {len(fusions)} fusions got params {type(params).__name__}"
          f" of length {len(params) if hasattr(params, '__len__') else '?'}. "
          "Fix: build params with this chain's init.")
    h = member_outputs
    for f, p, k in zip(fusions, params, _keys(key, len(fusions))):
      h = f.apply(p, h, x=x, key=k)
    return h

  return Fusion(init, apply)


def parallel(*fusions: Fusion) -> Fusion:
  """Apply fusions side by side; their outputs form a new member axis.

  ``parallel(f, g).apply((pf, pg), z) == stack([f.apply(pf, z),
  g.apply(pg, z)])``: ``[K, B, C]`` for K fusions, each returning ``[B, C]``
  (a branch returning one member ``[1, B, C]`` is squeezed). Feed it to
  another fusion with :func:`chain`: log-probabilities are valid logits.

  Args:
    *fusions: the K branches; all must output the same ``[B, C]``.

  Returns:
    A ``Fusion`` whose params are the tuple of the branches' params.

  Raises:
    StageClassesError: branches that output different shapes.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from fusionjax import fusion
    >>> z = jnp.linspace(-3.0, 3.0, 24).reshape(3, 4, 2)
    >>> f = fusion.parallel(fusion.mean(), fusion.mean_logits(),
    ...                     fusion.hard_vote())
    >>> jax.jit(f.apply)(f.init(jax.random.key(1), z), z).shape
    (3, 4, 2)

  References:
    Kuncheva, "Combining Pattern Classifiers: Methods and Algorithms",
    Wiley 2004 (parallel combination).
  """
  _check_fusions(fusions, "parallel")

  def init(key, member_outputs, *, x=None):
    return tuple(
        f.init(k, member_outputs, x=x)
        for f, k in zip(fusions, _keys(key, len(fusions))))

  def apply(params, member_outputs, *, x=None, key=None):
    if not isinstance(params, (tuple, list)) or len(params) != len(fusions):
      raise errors.FusionConfigError(
          f"parallel of {len(fusions)} fusions got params "
          f"{type(params).__name__}. Fix: build params with this parallel's "
          "init.")
    outs = []
    for i, (f, p, k) in enumerate(zip(fusions, params,
                                      _keys(key, len(fusions)))):
      outs.append(_checks.as_fused(
          f.apply(p, member_outputs, x=x, key=k), where=f"parallel branch {i}",
          hint="end the branch with a fusion, e.g. chain(select(...), "
          "mean())."))
    _checks.same_classes(outs, what="parallel branch")
    dtype = jnp.result_type(*outs)
    return jnp.stack([o.astype(dtype) for o in outs])

  return Fusion(init, apply)


def _is_index(v: Any) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def select(indices_or_names: Any,
           names: Optional[Mapping[str, Any]] = None) -> Fusion:
  """A subset of the members, by index or by group name.

  Returns member outputs ``[M', B, C]`` (raw, not fused), in the order given,
  to be fused by the next fusion of a :func:`chain`.

  Args:
    indices_or_names: a member index, a sequence of indices (or a ``range``
      or ``slice``), a group name, or a sequence of group names (their
      members are concatenated in the order given). Negative indices count
      from the end, as in numpy.
    names: the ensemble's ``groups`` (group name -> ``(start, stop)``, as
      :func:`~fusionjax.ensemble.groups` makes them), the ensemble itself, or
      any mapping group name -> members: an int, a ``range``, a ``slice``, a
      ``(start, stop)`` tuple (the members ``start .. stop - 1``, as in
      ``Ensemble.groups``) or a list of indices (``[0, 3]`` is members 0 and 3).

  Returns:
    A ``Fusion`` with no params: ``apply(params, member_outputs [M, B, C])
    -> [M', B, C]``.

  Raises:
    UnknownMemberError: an unknown group name (the message lists the known
      ones), an index outside ``[-M, M)``, or an empty selection.

  Example:
    >>> import jax.numpy as jnp
    >>> from fusionjax import fusion
    >>> z = jnp.arange(5.0).reshape(5, 1, 1)               # [M=5, B=1, C=1]
    >>> groups = {'cnn': (0, 3), 'gru': (3, 5)}               # an Ensemble's groups
    >>> fusion.select('gru', groups).apply((), z).ravel().tolist()
    [3.0, 4.0]
    >>> fusion.select('cnn', {'cnn': [0, 3]}).apply((), z).ravel().tolist()
    [0.0, 3.0]
    >>> fusion.select([4, 0]).apply((), z).ravel().tolist()
    [4.0, 0.0]

  References:
    Caruana, Niculescu-Mizil, Crew and Ksikes, "Ensemble Selection from
    Libraries of Models", ICML 2004.
  """
  spec = indices_or_names
  name = f"select({spec!r})"
  if names is not None and hasattr(names, "groups") and hasattr(names, "member_map"):
    names = names.groups  # an Ensemble
  if isinstance(spec, (str, int, np.integer, slice, range)):
    items = [spec]
  else:
    try:
      items = list(spec)
    except TypeError:
      raise errors.UnknownMemberError(
          f"{name}: cannot select {spec!r}. Fix: pass an index, a sequence "
          "of indices, a group name or a sequence of names.") from None
  if not items:
    raise errors.UnknownMemberError(
        f"{name} selects no member. Fix: pass at least one index or group "
        "name.")
  group_names = [] if names is None else list(names)
  parts = []  # ints, slices, ranges: resolved against M at trace time
  for item in items:
    if isinstance(item, str):
      if names is None or item not in names:
        raise errors.UnknownMemberError(
            f"{name}: unknown group {item!r}; known groups are "
            f"{group_names!r}. Fix: "
            + ("pass names={'group': range(...)} (e.g. the ensemble's "
               "groups)." if names is None else
               f"use one of {group_names!r}."))
      group = names[item]
      if isinstance(group, tuple) and len(group) == 2 and all(_is_index(g) for g in group):
        group = range(int(group[0]), int(group[1]))  # Ensemble.groups' (start, stop)
      members = group if isinstance(group, (slice, range)) else (
          [group] if _is_index(group) else list(group))
      parts.append((item, members))
    elif _is_index(item) or isinstance(item, (slice, range)):
      parts.append((None, item))
    else:
      raise errors.UnknownMemberError(
          f"{name}: {item!r} is neither a member index nor a group name. "
          f"Fix: use ints in [-M, M) or one of the groups {group_names!r}.")

  def resolve(m: int) -> np.ndarray:
    idx = []
    for group, members in parts:
      if isinstance(members, slice):
        idx.extend(range(*members.indices(m)))
        continue
      for i in (members if isinstance(members, (range, list, tuple))
                else [members]):
        if not _is_index(i) or not -m <= i < m:
          where = f" (group {group!r})" if group is not None else ""
          raise errors.UnknownMemberError(
              f"{name}: member index {i!r}{where} is out of range for M={m} "
              f"members; valid indices are 0..{m - 1} (or -{m}..-1)"
              + (f", groups {group_names!r}" if group_names else "")
              + f". Fix: select indices below {m}.")
        idx.append(int(i) % m)
    if not idx:
      raise errors.UnknownMemberError(
          f"{name} selects no member of M={m}. Fix: check the slice or "
          "group.")
    return np.asarray(idx, dtype=np.int32)

  def init(key, member_outputs, *, x=None):
    del key, x
    m, _, _ = _checks.member_outputs(member_outputs, fusion=name)
    resolve(m)
    return ()

  def apply(params, member_outputs, *, x=None, key=None):
    del params, x, key
    m, _, _ = _checks.member_outputs(member_outputs, fusion=name)
    idx = resolve(m)
    if np.array_equal(idx, np.arange(idx[0], idx[0] + idx.size)):
      return member_outputs[int(idx[0]):int(idx[0]) + idx.size]
    return jnp.take(member_outputs, idx, axis=0)

  return Fusion(init, apply)
