"""Greedy ensemble selection with replacement (Caruana et al. 2004).

The whole hill-climb is one compiled program: a ``lax.scan`` over ensemble
sizes whose body scores every candidate member at once (vectorised over the
member axis) and adds the best one. The fused prediction of a selection is
the average of member probabilities weighted by how often each was picked.
"""
import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from fusionjax import errors
from fusionjax import metrics as _metrics

Array = jax.Array

METRICS = ("nll", "brier", "error")


def _check_args(num_members: int, max_size, init_size, metric: str):
  if metric not in METRICS:
    raise errors.UnknownMetricError(
        f"greedy selection: metric={metric!r} is not one of {METRICS}. Fix: pick one "
        "of those (all are minimised: 'error' is 1 - accuracy).")
  if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
    raise errors.SelectionError(
        f"greedy selection: max_size={max_size!r}, but the ensemble must grow to at least "
        "one pick. Fix: pass an integer max_size >= 1 (e.g. 2 * M).")
  if (isinstance(init_size, bool) or not isinstance(init_size, int)
      or not 1 <= init_size <= min(num_members, max_size)):
    raise errors.SelectionError(
        f"greedy selection: init_size={init_size!r} must be an integer in "
        f"[1, min(M={num_members}, max_size={max_size})] (the best init_size distinct "
        "single members start the ensemble). Fix: lower init_size or raise max_size.")


@functools.partial(jax.jit, static_argnames=("max_size", "init_size", "metric"))
def _greedy(x, labels, mask, max_size, init_size, metric):
  lp = jax.nn.log_softmax(x, axis=-1)                                      # [M, B, C]
  num_classes = lp.shape[-1]
  w = mask / jnp.sum(mask)                                                 # [B]
  real = (mask > 0)[None, :]

  def mean_rows(v):                                                        # [M, B] -> [M]
    return jnp.sum(jnp.where(real, v * w[None, :], 0.0), axis=-1)

  if metric == "nll":
    # Log space: the state is log sum_{picked} p_m(y_b) per row.
    member = _metrics._true_class(lp, labels)                              # [M, B]
    state0 = jnp.full(member.shape[1:], -jnp.inf)

    def scores(state, size):
      return -mean_rows(jnp.logaddexp(state[None], member) - jnp.log(size))

    def add(state, pick):
      return jnp.logaddexp(state, member[pick])
  else:
    member = jnp.exp(lp)                                                   # [M, B, C]
    onehot = jax.nn.one_hot(jnp.clip(labels, 0, num_classes - 1), num_classes)
    state0 = jnp.zeros(member.shape[1:])                                   # sum of picked probs

    def scores(state, size):
      cand = state[None] + member                                          # [M, B, C] (x size)
      if metric == "brier":
        return mean_rows(jnp.sum(jnp.square(cand / size - onehot[None]), axis=-1))
      wrong = jnp.argmax(cand, axis=-1) != labels[None, :]
      return mean_rows(wrong.astype(jnp.float32))

    def add(state, pick):
      return state + member[pick]

  # Sorted initialisation: the init_size best single members, best first
  # (a stable sort, so ties go to the lowest index).
  order = jnp.argsort(scores(state0, 1.0), stable=True)

  def step(state, t):
    s = scores(state, (t + 1).astype(jnp.float32))
    pick = jnp.where(t < init_size, order[jnp.minimum(t, init_size - 1)], jnp.argmin(s))
    return add(state, pick), (pick.astype(jnp.int32), s[pick])

  _, (picks, history) = jax.lax.scan(step, state0, jnp.arange(max_size))
  ok = _metrics._labels_ok(labels, mask, num_classes)
  return picks, jnp.where(ok, history, jnp.nan)


def greedy_picks(member_logits: Array, labels: Array, max_size: int, init_size: int = 1,
                 metric: str = "nll", *, mask: Optional[Array] = None) -> Tuple[Array, Array]:
  """The full sequence of greedy picks and the metric after each.

  Step ``t`` (0-based) builds the ensemble of size ``t + 1``. Steps
  ``t < init_size`` add the single members in order of their own metric (the
  sorted initialisation of Caruana et al.); every later step adds, *with
  replacement*, the member whose addition gives the lowest metric of the
  probability average, ties going to the lowest member index.

  Args:
    member_logits: held-out (hill-climb set) member logits ``[M, B, C]``.
    labels: integer labels ``[B]``.
    max_size: number of picks (the final ensemble size, counting repeats).
    init_size: number of best single members to start from, ``1 <= init_size
      <= min(M, max_size)``.
    metric: ``'nll'`` (computed in log space), ``'brier'`` (sum over classes) or
      ``'error'`` (1 - accuracy); all are minimised.
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded.

  Returns:
    ``(picks [max_size] int32, history [max_size])``: ``picks[t]`` is the member
    added at step ``t`` and ``history[t]`` the metric of the first ``t + 1`` picks.

  Raises:
    UnknownMetricError: ``metric`` is not one of the above.
    SelectionError: ``max_size < 1`` or ``init_size`` out of range.

  Example:
    >>> logits = jax.random.normal(jax.random.key(0), (5, 64, 3))
    >>> picks, history = greedy_picks(logits, jnp.arange(64) % 3, max_size=8)
    >>> picks.shape, history.shape
    ((8,), (8,))

  References:
    Caruana, R., Niculescu-Mizil, A., Crew, G. & Ksikes, A. (2004). Ensemble
    selection from libraries of models. ICML.
  """
  x, labels, mask = _metrics._prep(member_logits, labels, mask, "greedy_picks", member=True)
  _check_args(x.shape[0], max_size, init_size, metric)
  return _greedy(x, labels, mask, max_size, init_size, metric)


@functools.partial(jax.jit, static_argnames=("num_members",))
def _best_counts(picks, history, num_members):
  size = jnp.argmin(jnp.where(jnp.isnan(history), jnp.inf, history)) + 1   # first minimum
  kept = jnp.arange(picks.shape[0]) < size
  return jnp.zeros((num_members,), jnp.int32).at[picks].add(kept.astype(jnp.int32))


def greedy_selection(member_logits: Array, labels: Array, max_size: int, init_size: int = 1,
                     metric: str = "nll", *, mask: Optional[Array] = None
                     ) -> Tuple[Array, Array]:
  """Greedy ensemble selection with replacement; returns the best ensemble found.

  Runs :func:`greedy_picks` for ``max_size`` steps and, as Caruana et al.
  recommend, returns the prefix (ensemble size) with the lowest metric on the
  hill-climb set (the smallest such size on ties). Because size 1 is the best
  single member, the selection is never worse than the best single member on
  the data it was selected on. The fused prediction is
  ``sum_m counts[m] * p_m / sum(counts)`` (e.g. a ``weighted`` fusion with
  weights ``counts``).

  Args:
    member_logits: held-out member logits ``[M, B, C]``.
    labels: integer labels ``[B]``.
    max_size: maximum ensemble size (picks, counting repeats).
    init_size: number of best single members to start from.
    metric: ``'nll'``, ``'brier'`` or ``'error'`` (minimised).
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded.

  Returns:
    ``(counts [M] int32, history [max_size])``: how often each member is in the
    selected ensemble, and the metric of every size ``1..max_size`` (the
    selected size is ``counts.sum()`` and its metric is ``history.min()``).

  Raises:
    UnknownMetricError, SelectionError: see :func:`greedy_picks`.

  Example:
    >>> logits = jax.random.normal(jax.random.key(0), (5, 64, 3))
    >>> counts, history = greedy_selection(logits, jnp.arange(64) % 3, max_size=8)
    >>> int(counts.sum()) == int(jnp.argmin(history)) + 1
    True

  References:
    Caruana, R., Niculescu-Mizil, A., Crew, G. & Ksikes, A. (2004). Ensemble
    selection from libraries of models. ICML.
  """
  picks, history = greedy_picks(member_logits, labels, max_size, init_size, metric, mask=mask)
  return _best_counts(picks, history, jnp.shape(member_logits)[0]), history
