"""Heterogeneous ensembles: several homogeneous groups on one member axis."""
from typing import Union

import jax
import jax.numpy as jnp

from fusionjax import errors
from fusionjax.ensemble._base import Ensemble, _check_batch


def groups(**named: Ensemble) -> Ensemble:
  """Joins homogeneous ensembles into one heterogeneous ensemble.

  Each group keeps its own stacked variables (``params[name]`` is ``[M_g,
  ...]``); outputs are concatenated on the member axis in the order the
  groups are given, so 3 CNNs then 2 GRUs are members 0-2 and 3-4. Everything
  still runs in one ``jit``: each group is vmapped on its own.

  Args:
    **named: group name -> :class:`Ensemble` (e.g. ``cnn=from_linen(CNN(10), 3)``).

  Returns:
    An :class:`Ensemble` with ``size = sum(M_g)``, member names
    ``'<group>/<i>'``, ``groups[name] = (start, stop)`` and ``parts[name]``
    the group's own ensemble.

  Raises:
    GroupShapeError: when groups produce outputs of different shapes.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from fusionjax import models, ensemble
    >>> ens = ensemble.groups(mlp=ensemble.from_linen(models.MLP(10, (16,)), 3),
    ...                       gru=ensemble.from_linen(models.RowGRU(10, 8), 2))
    >>> v = ens.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))
    >>> ens.apply(v, jnp.ones((4, 8, 8, 1)))[0].shape
    (5, 4, 10)
  """
  if not named:
    raise errors.EnsembleSizeError(
        "groups() needs at least one group. Fix: groups(cnn=from_linen(CNN(10), 3), ...).")
  order = tuple(named)
  bounds, start = {}, 0
  for g in order:
    bounds[g] = (start, start + named[g].size)
    start += named[g].size
  size = start
  names = tuple(f"{g}/{i}" for g in order for i in range(named[g].size))

  def init(key, x):
    keys = jax.random.split(key, len(order))
    variables = {g: named[g].init(k, x) for g, k in zip(order, keys)}
    return {"params": {g: variables[g]["params"] for g in order},
            "state": {g: variables[g]["state"] for g in order}}

  def apply(variables, x, *, key=None, train=False, per_member=False):
    _check_batch(x, size, per_member)
    keys = [None] * len(order) if key is None else list(jax.random.split(key, len(order)))
    outs, new_state = [], {}
    for g, k in zip(order, keys):
      lo, hi = bounds[g]
      xg = jax.tree.map(lambda a: a[lo:hi], x) if per_member else x
      v = {"params": variables["params"][g], "state": variables["state"][g]}
      out, new_state[g] = named[g].apply(v, xg, key=k, train=train, per_member=per_member)
      outs.append(out)
    shapes = {g: o.shape[1:] for g, o in zip(order, outs)}
    if len(set(shapes.values())) > 1:
      raise errors.GroupShapeError(
          "Groups produce member outputs of different shapes (per member, "
          f"[B, C]): {shapes}. Fix: make every group's module output the same "
          "number of classes C for the same batch.")
    return jnp.concatenate(outs, axis=0), new_state

  def member_map(f, *trees, num_outputs=None):
    results = {g: named[g].member_map(f, *[t[g] for t in trees]) for g in order}
    if num_outputs is None:
      return results
    return tuple({g: results[g][i] for g in order} for i in range(num_outputs))

  def split(array):
    return {g: array[lo:hi] for g, (lo, hi) in bounds.items()}

  def join(tree):
    return jnp.concatenate([tree[g] for g in order], axis=0)

  return Ensemble(init, apply, size, names, bounds, member_map, split, join,
                  parts=dict(named))


def select_group(ensemble: Ensemble, variables, name: Union[str, int]):
  """The sub-ensemble and variables of one group, selected by name.

  Args:
    ensemble: an ensemble made by :func:`groups`.
    variables: its variables.
    name: a group name (or its position).

  Returns:
    ``(start, stop), group_variables``: the group's slice of the member axis
    and its own ``{'params', 'state'}``.
  """
  order = tuple(ensemble.groups)
  if isinstance(name, int) and 0 <= name < len(order):
    name = order[name]
  if name not in ensemble.groups or not isinstance(variables["params"], dict) \
      or name not in variables["params"]:
    raise errors.UnknownMemberError(
        f"No group named {name!r}; this ensemble has groups {list(order)}. "
        "Fix: use one of those names.")
  return ensemble.groups[name], {"params": variables["params"][name],
                                 "state": variables["state"][name]}
