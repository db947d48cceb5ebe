"""Adapters from Flax modules (Linen and NNX) to stacked ensembles."""
from __future__ import annotations

import inspect
from typing import Callable, Optional, TYPE_CHECKING

import jax
from flax import linen as nn

if TYPE_CHECKING:  # flax.nnx takes 0.15 s to import; from_nnx imports it
  from flax import nnx

from fusionjax.ensemble._base import Ensemble, from_fn


def _takes_train(fn) -> bool:
  try:
    return "train" in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


def from_linen(module: nn.Module, size: int, *, name: Optional[str] = None) -> Ensemble:
  """An ensemble of ``size`` copies of a Linen module, each from its own key.

  The module is called as ``module(x, train=train)`` when its ``__call__``
  takes ``train``, else ``module(x)``. The ``'params'`` collection is trained;
  every other collection (e.g. ``'batch_stats'``) is per-member state,
  updated when ``train=True``. Dropout reads the ``'dropout'`` RNG stream,
  one key per member per call.

  Args:
    module: a Linen module mapping ``[B, ...]`` to ``[B, C]``.
    size: number of members ``M >= 1``.
    name: prefix of member names (default: the module's class name, lower case).

  Returns:
    An :class:`~fusionjax.ensemble.Ensemble`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from fusionjax import models
    >>> ens = from_linen(models.MLP(10, (32,)), size=4)
    >>> v = ens.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))
    >>> ens.apply(v, jnp.ones((5, 8, 8, 1)))[0].shape
    (4, 5, 10)

  References:
    Lakshminarayanan et al., 2017. Simple and scalable predictive uncertainty
    estimation using deep ensembles.
  """
  train_kw = _takes_train(module.__call__)

  def call_kwargs(train):
    return {"train": train} if train_kw else {}

  def member_init(key, x):
    pkey, dkey = jax.random.split(key)
    variables = module.init({"params": pkey, "dropout": dkey}, x, **call_kwargs(False))
    variables = dict(variables)
    params = variables.pop("params", {})
    return {"params": params, "state": variables}

  def member_apply(variables, x, key, train):
    state = variables.get("state", {})
    rngs = {} if key is None else {"dropout": key}
    full = {"params": variables["params"], **state}
    if train and state:
      out, new_state = module.apply(full, x, rngs=rngs, mutable=list(state),
                                    **call_kwargs(True))
      return out, dict(new_state)
    return module.apply(full, x, rngs=rngs, **call_kwargs(train)), state

  return from_fn(member_init, member_apply, size,
                 name or type(module).__name__.lower())


def from_nnx(module_factory: Callable[[nnx.Rngs], nnx.Module], size: int, *,
             name: Optional[str] = None) -> Ensemble:
  """An ensemble of NNX modules, through ``nnx.split`` / ``nnx.merge``.

  ``module_factory(rngs)`` builds one member; it is called once per member
  key (``init`` maps it over the keys). ``nnx.Param`` variables are trained; every other
  variable (``nnx.BatchStat``, RNG state) is per-member state. Members are
  switched to ``train()`` / ``eval()`` mode per call, and their ``dropout``
  stream is reseeded from the per-member key.

  Args:
    module_factory: ``rngs -> nnx.Module`` mapping ``[B, ...]`` to ``[B, C]``.
    size: number of members ``M >= 1``.
    name: prefix of the member names.

  Returns:
    An :class:`~fusionjax.ensemble.Ensemble` whose variables are plain dicts
    (``nnx.to_pure_dict``), so optax and orbax see ordinary pytrees.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> ens = from_nnx(lambda rngs: nnx.Linear(5, 3, rngs=rngs), size=4)
    >>> v = ens.init(jax.random.key(0), jnp.ones((1, 5)))
    >>> ens.apply(v, jnp.ones((2, 5)))[0].shape
    (4, 2, 3)
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top,redefined-outer-name
  graph = {}

  def build(key):
    return module_factory(nnx.Rngs(params=key, dropout=jax.random.fold_in(key, 1)))

  def structure():
    if "graphdef" not in graph:
      abstract = nnx.eval_shape(lambda: build(jax.random.key(0)))
      gdef, params, rest = nnx.split(abstract, nnx.Param, ...)
      graph.update(graphdef=gdef, params=params, rest=rest)
    return graph

  def member_init(key, x):
    del x
    _, params, rest = nnx.split(build(key), nnx.Param, ...)
    return {"params": nnx.to_pure_dict(params), "state": nnx.to_pure_dict(rest)}

  def member_apply(variables, x, key, train):
    g = structure()
    # Fresh copies of the cached structure: replace_by_pure_dict writes in place,
    # and writing this call's (traced) values into the cache would leak them.
    params, rest = jax.tree.map(lambda a: a, (g["params"], g["rest"]))
    nnx.replace_by_pure_dict(params, variables["params"])
    nnx.replace_by_pure_dict(rest, variables["state"])
    module = nnx.merge(g["graphdef"], params, rest)
    module.train() if train else module.eval()
    if key is not None:
      nnx.reseed(module, dropout=key)
    out = module(x)
    _, _, new_rest = nnx.split(module, nnx.Param, ...)
    return out, nnx.to_pure_dict(new_rest)

  return from_fn(member_init, member_apply, size, name or "nnx")
