"""Grid and random search over fusion hyper-parameters, and temperature scaling.

A search evaluates a jax-traceable ``objective(**params) -> scalar`` on every
candidate in one compiled program: the candidates are stacked on a leading
axis and the objective is ``vmap``-ed over them (or ``lax.map``-ed in chunks of
``batch_size`` when all of them at once would not fit in memory). The program
is cached on the objective (a hashable callable, e.g. the same function
object) and the shapes, so a second search with the same objective does not
recompile; arrays the objective closes over are baked into the program as
constants, so pass large data through a long-lived objective.
"""
import functools
import math
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from fusionjax import errors
from fusionjax import metrics as _metrics

Array = jax.Array
Sampler = Callable[[Array, int], Array]


# --------------------------------------------------------------------------
# evaluation of stacked candidates
# --------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("objective", "batch_size"))
def _run(values, index, objective, batch_size, maximize):
  """Gathers the candidates, evaluates them and picks the best, in one program."""
  params = {k: v[index[k]] for k, v in values.items()}   # (pytree dicts sort their keys)

  def one(p):
    return jnp.asarray(objective(**p))

  if batch_size is None:
    scores = jax.vmap(one)(params)
  else:
    scores = jax.lax.map(one, params, batch_size=batch_size)
  key = jnp.where(jnp.isnan(scores), jnp.inf, jnp.where(maximize, -scores, scores))
  i = jnp.argmin(key)              # (flattened for a non-scalar objective; rejected below)
  return params, scores, {k: v[i] for k, v in params.items()}


def _search(objective: Callable[..., Array], values: Dict[str, Any], index: Dict[str, Any],
            num: int, maximize: bool, batch_size: Optional[int]):
  """``objective`` on every candidate ``values[k][index[k][j]]``; ``(best, table)``.

  Compiled once per objective, option and shapes.
  """
  if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                 or batch_size < 1):
    raise errors.SelectionError(
        f"search: batch_size={batch_size!r}; pass None (all candidates at once) or an "
        "integer >= 1.")
  params, scores, best = _run(values, index, objective, batch_size, np.bool_(maximize))
  if scores.shape != (num,):
    raise errors.SelectionError(
        f"search: the objective returns shape {scores.shape[1:]} per candidate, but a "
        "search needs one scalar per candidate. Fix: reduce it to a scalar (e.g. the mean NLL).")
  table = {k: params[k] for k in values}                  # in the caller's order
  table["objective"] = scores
  return {k: best[k] for k in values}, table


def _check_names(names, what: str):
  if not names:
    raise errors.SelectionError(
        f"{what} has no parameters. Fix: pass a dict such as "
        "{'temperature': jnp.geomspace(0.1, 10, 50)}.")
  if "objective" in names:
    raise errors.SelectionError(
        f"{what}: 'objective' is reserved for the column of objective values in the "
        "table. Fix: rename that parameter.")


def grid_search(objective: Callable[..., Array], grid: Mapping[str, Any], *,
                maximize: bool = False, batch_size: Optional[int] = None
                ) -> Tuple[Dict[str, Array], Dict[str, Array]]:
  """Exhaustive search over the Cartesian product of per-parameter values.

  Args:
    objective: ``objective(**params) -> scalar``, jax-traceable (it is vmapped
      over the candidates), typically a held-out NLL of a fusion with those
      hyper-parameters.
    grid: name -> candidate values stacked on the leading axis: ``[n]`` for a
      scalar hyper-parameter, ``[n, ...]`` for an array-valued one (e.g. a set
      of weight vectors ``[n, M]``); a 0-d value is a single fixed candidate.
    maximize: maximise instead of minimise.
    batch_size: evaluate candidates in chunks of this many (``lax.map``)
      instead of all at once; bounds memory for large grids.

  Returns:
    ``(best, table)``: ``best`` maps each name to its value in the best
    candidate (NaN objectives count as worst; ties go to the first candidate);
    ``table`` maps each name to its ``[N, ...]`` values over the ``N = prod n``
    candidates (in ``itertools.product`` order: the first name varies slowest)
    plus ``'objective'`` ``[N]``.

  Raises:
    SelectionError: no parameters, a reserved name, or a non-scalar objective.
    EmptySplitError: a parameter with no candidate values.

  Example:
    >>> best, table = grid_search(lambda a, b: (a - 1.0) ** 2 + b,
    ...                           {'a': jnp.array([0.0, 1.0, 2.0]), 'b': jnp.array([0.5, 0.0])})
    >>> float(best['a']), float(best['b']), table['objective'].shape
    (1.0, 0.0, (6,))

  References:
    Bergstra, J. & Bengio, Y. (2012). Random search for hyper-parameter
    optimization. JMLR 13 (grid search as the baseline).
  """
  _check_names(list(grid), "grid_search: the grid")
  values = {}
  for name, v in grid.items():
    v = v if isinstance(v, jax.Array) else np.asarray(v)
    v = v.reshape((1,)) if v.ndim == 0 else v
    if v.shape[0] == 0:
      raise errors.EmptySplitError(
          f"grid_search: parameter {name!r} has no candidate values (shape {tuple(v.shape)}). "
          "Fix: give it at least one value.")
    values[name] = v
  sizes = [v.shape[0] for v in values.values()]
  index = np.indices(sizes).reshape(len(sizes), -1).astype(np.int32)    # product order
  return _search(objective, values, dict(zip(values, index)), index.shape[1], maximize,
                 batch_size)


# --------------------------------------------------------------------------
# random search
# --------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("num", "log"))
def _uniform(key, num, low, high, log):
  u = jax.random.uniform(key, (num,), minval=low, maxval=high)
  return jnp.exp(u) if log else u


@functools.partial(jax.jit, static_argnames=("num",))
def _choice(key, num, values):
  return values[jax.random.randint(key, (num,), 0, values.shape[0])]


def uniform(low: float, high: float) -> Sampler:
  """A sampler ``(key, num) -> [num]`` uniform on ``[low, high)``.

  Example:
    >>> uniform(0.0, 1.0)(jax.random.key(0), 3).shape
    (3,)
  """
  return lambda key, num: _uniform(key, num, low, high, False)


def log_uniform(low: float, high: float) -> Sampler:
  """A sampler ``(key, num) -> [num]`` whose log is uniform on ``[log low, log high)``.

  The usual prior for scales such as temperatures and learning rates.

  Example:
    >>> t = log_uniform(0.1, 10.0)(jax.random.key(0), 100)
    >>> bool((t >= 0.1).all() & (t < 10.0).all())
    True
  """
  if not low > 0 or not high > 0:
    raise errors.SelectionError(
        f"log_uniform({low!r}, {high!r}) needs positive bounds. Fix: use uniform for "
        "ranges that include zero.")
  lo, hi = math.log(low), math.log(high)
  return lambda key, num: _uniform(key, num, lo, hi, True)


def choice(values: Any) -> Sampler:
  """A sampler ``(key, num) -> [num, ...]`` drawing rows of ``values`` uniformly, with replacement.

  Example:
    >>> choice(jnp.array([0.5, 0.9]))(jax.random.key(0), 4).shape
    (4,)
  """
  values = values if isinstance(values, jax.Array) else np.asarray(values)
  if values.ndim == 0 or values.shape[0] == 0:
    raise errors.EmptySplitError(
        f"choice: needs a non-empty array of candidates on the leading axis; got shape "
        f"{tuple(values.shape)}.")
  return lambda key, num: _choice(key, num, values)


def random_search(objective: Callable[..., Array],
                  space: Mapping[str, Union[Sampler, Tuple[float, float], Any]],
                  key: Array, num: int, *, maximize: bool = False,
                  batch_size: Optional[int] = None
                  ) -> Tuple[Dict[str, Array], Dict[str, Array]]:
  """Random search: ``num`` candidates drawn independently per parameter, evaluated in one program.

  Args:
    objective: ``objective(**params) -> scalar``, jax-traceable.
    space: name -> a sampler ``(key, num) -> [num, ...]`` (see :func:`uniform`,
      :func:`log_uniform`, :func:`choice`), or a ``(low, high)`` tuple
      (uniform), or an array of candidate values (choice over its leading axis).
    key: a PRNG key; each parameter gets its own key split from it.
    num: number of candidates, ``>= 1``.
    maximize: maximise instead of minimise.
    batch_size: evaluate in chunks of this many (``lax.map``).

  Returns:
    ``(best, table)`` as in :func:`grid_search`, with the ``num`` sampled
    candidates in the table.

  Raises:
    SelectionError: ``num < 1``, an empty space, or a non-scalar objective.

  Example:
    >>> best, table = random_search(lambda t: (jnp.log(t) - 1.0) ** 2,
    ...                             {'t': log_uniform(0.1, 10.0)}, jax.random.key(0), 64)
    >>> table['t'].shape, bool(abs(jnp.log(best['t']) - 1.0) < 0.2)
    ((64,), True)

  References:
    Bergstra, J. & Bengio, Y. (2012). Random search for hyper-parameter
    optimization. JMLR 13.
  """
  _check_names(list(space), "random_search: the space")
  if isinstance(num, bool) or not isinstance(num, int) or num < 1:
    raise errors.SelectionError(
        f"random_search: num={num!r} candidates; pass an integer num >= 1.")
  keys = jax.random.split(key, len(space))
  params = {}
  for k, (name, spec) in zip(keys, space.items()):
    if callable(spec):
      sampler = spec
    elif isinstance(spec, tuple) and len(spec) == 2:
      sampler = uniform(*spec)
    else:
      sampler = choice(spec)
    params[name] = sampler(k, num)
  every = np.arange(num, dtype=np.int32)
  return _search(objective, params, {k: every for k in params}, num, maximize, batch_size)


# --------------------------------------------------------------------------
# temperature scaling
# --------------------------------------------------------------------------
_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0


@functools.partial(jax.jit, static_argnames=("refine_steps", "batch_size"))
def _fit_temperature(x, labels, mask, temperatures, refine_steps, batch_size):
  def nll_at(log_t):
    return _metrics._nll(x / jnp.exp(log_t), labels, mask)

  log_grid = jnp.log(temperatures)
  grid_nll = jax.lax.map(nll_at, log_grid, batch_size=batch_size)
  i = jnp.argmin(jnp.where(jnp.isnan(grid_nll), jnp.inf, grid_nll))
  best = log_grid[i]
  if refine_steps == 0:
    return jnp.exp(best)
  # NLL is convex in 1/T, hence unimodal in log T: the minimiser lies between
  # the grid neighbours of the best grid point; golden-section search there.
  last = log_grid.shape[0] - 1
  lo, hi = log_grid[jnp.maximum(i - 1, 0)], log_grid[jnp.minimum(i + 1, last)]

  def body(_, bracket):
    a, b = bracket
    c, d = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
    left = nll_at(c) < nll_at(d)
    return jnp.where(left, a, c), jnp.where(left, d, b)

  a, b = jax.lax.fori_loop(0, refine_steps, body, (lo, hi))
  refined = 0.5 * (a + b)
  return jnp.exp(jnp.where(nll_at(refined) <= grid_nll[i], refined, best))


def temperature_scale(log_probs_or_logits: Array, labels: Array, mask: Optional[Array] = None,
                      *, temperatures: Optional[Array] = None, refine: bool = True,
                      refine_steps: int = 40, batch_size: int = 16) -> Array:
  """Fits the single temperature ``T`` minimising the NLL of ``log_softmax(x / T)``.

  A grid over ``temperatures`` (log-spaced, ``0.05 .. 20`` by default) finds
  the best grid point; with ``refine`` a golden-section search on ``log T``
  between its two grid neighbours brings it to float precision (the NLL is
  convex in ``1 / T``, so the bracket holds the minimiser unless it lies
  outside the grid).

  Args:
    log_probs_or_logits: held-out logits or log-probabilities ``[B, C]``.
    labels: integer labels ``[B]``.
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded.
    temperatures: positive candidate temperatures ``[n]``.
    refine: refine the best grid point.
    refine_steps: golden-section iterations (each shrinks the bracket by 0.618).
    batch_size: grid temperatures evaluated at once (bounds memory).

  Returns:
    The temperature, a scalar; calibrated log-probabilities are
    ``jax.nn.log_softmax(x / T)``.

  Raises:
    SelectionError: non-positive or empty ``temperatures``.

  Example:
    >>> logits = 4.0 * jax.random.normal(jax.random.key(0), (256, 5))
    >>> labels = jax.random.categorical(jax.random.key(1), logits / 4.0)
    >>> bool(2.0 < temperature_scale(logits, labels) < 8.0)
    True

  References:
    Guo, C., Pleiss, G., Sun, Y. & Weinberger, K. Q. (2017). On calibration of
    modern neural networks. ICML.
  """
  x, labels, mask = _metrics._prep(log_probs_or_logits, labels, mask, "temperature_scale")
  if x.ndim != 2:
    raise errors.MemberOutputsError(
        f"temperature_scale fits one temperature to outputs [B, C]; got shape "
        f"{tuple(x.shape)}. Fix: for one temperature per member, call it per member "
        "(e.g. in a Python loop over member_logits).")
  if temperatures is None:
    temperatures = np.geomspace(0.05, 20.0, 96)
  if not isinstance(temperatures, jax.Array):
    temperatures = np.asarray(temperatures, np.float32)
  temperatures = temperatures.reshape(-1)
  value = _metrics._concrete(temperatures)
  if temperatures.shape[0] == 0 or (value is not None and not np.all(value > 0)):
    raise errors.SelectionError(
        f"temperature_scale: temperatures must be a non-empty array of positive values; got "
        f"{value if value is None else value.tolist()[:8]}. Fix: e.g. jnp.geomspace(0.05, 20, 96).")
  return _fit_temperature(x, labels, mask, temperatures, refine_steps if refine else 0,
                          max(1, min(int(batch_size), temperatures.shape[0])))
