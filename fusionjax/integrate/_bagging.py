"""Bagging with out-of-bag evaluation (Breiman 1996).

Each member trains on its own bootstrap sample of the training set (the
engine's ``per_member=True`` step reads ``x[indices[m]]`` for member ``m``).
About ``e^-1 ~ 37%`` of the training examples are left out of each bootstrap;
predicting every training example with only the members that never saw it
gives an honest estimate of the ensemble's error without a held-out split.
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fusionjax import errors, metrics
from fusionjax.data import bootstrap, out_of_bag
from fusionjax.ensemble import Ensemble
from fusionjax.integrate import _train
from fusionjax.train import TrainState, make_step


class OOBResult(NamedTuple):
  """What :func:`oob_evaluate` returns.

  Attributes:
    accuracy: OOB accuracy of the fused prediction over covered examples.
    nll: OOB negative log-likelihood (nats) over covered examples.
    log_probs: ``[N, C]`` fused OOB log-probabilities (uniform where no
      member is out of bag).
    covered: ``bool [N]``: examples that at least one member never saw.
    num_members: ``int [N]``: how many members predicted each example.
    member_accuracy: ``[M]``: each member's accuracy on its own OOB examples.
  """
  accuracy: float
  nll: float
  log_probs: jax.Array
  covered: jax.Array
  num_members: jax.Array
  member_accuracy: jax.Array


def oob_log_probs(member_logits: jax.Array, mask: jax.Array):
  """Out-of-bag fusion: the mean of probabilities over out-of-bag members only.

  ``fused[n] = logsumexp_{m: mask[m, n]} log_softmax(z[m, n]) - log k_n`` with
  ``k_n = sum_m mask[m, n]``, in log space. In-bag outputs are never read (a NaN
  there does not reach the result, nor its gradient).

  Args:
    member_logits: ``[M, N, C]``.
    mask: ``bool [M, N]``, True where member ``m`` may predict example ``n``
      (its bootstrap did not contain ``n``).

  Returns:
    ``(log_probs [N, C], count [N])``; rows with ``count == 0`` are uniform.

  Example:
    >>> z = jnp.log(jnp.array([[[0.9, 0.1]], [[0.5, 0.5]]]))    # [M=2, N=1, C=2]
    >>> lp, count = oob_log_probs(z, jnp.array([[False], [True]]))
    >>> np.exp(lp).round(3).tolist(), count.tolist()              # member 1 only
    ([[0.5, 0.5]], [1])

  References:
    Breiman, "Out-of-bag estimation", technical report, 1996.
  """
  lp = jax.nn.log_softmax(jnp.where(mask[..., None], member_logits, 0.0), axis=-1)
  lp = jnp.where(mask[..., None], lp, -jnp.inf)
  count = jnp.sum(mask, axis=0)
  fused = jax.nn.logsumexp(lp, axis=0) - jnp.log(jnp.maximum(count, 1))[:, None]
  c = member_logits.shape[-1]
  fused = jnp.where((count > 0)[:, None], fused, -math.log(c))
  return fused, count


def oob_evaluate(ensemble: Ensemble, state, x, y, indices, *,
                 batch_size: int = 1024) -> OOBResult:
  """Out-of-bag accuracy and NLL of a bagged ensemble on its training set.

  Each training example is predicted only by the members whose bootstrap did
  not contain it, fused by the mean of their probabilities (in log space).
  Examples that every member saw (rare: ``(1 - e^-1)^M``) are excluded.

  Args:
    ensemble: the ensemble (every member reads the same ``x`` here).
    state: a :class:`~fusionjax.train.TrainState` or variables ``{'params', 'state'}``.
    x: the training inputs ``[N, ...]`` that ``indices`` index.
    y: integer labels ``[N]``.
    indices: bootstrap indices ``[M, N']`` from
      :func:`fusionjax.data.bootstrap` (the ones used in training).
    batch_size: evaluation batch size.

  Returns:
    An :class:`OOBResult`.

  Raises:
    BatchShapeError: ``indices`` not ``[M, N']`` for this ensemble, or indices
      outside ``[0, N)``.
    EmptySplitError: no example is out of bag for any member.

  Example:
    >>> ens = fj.ensemble.from_linen(fj.models.MLP(10, (32,)), 4)
    >>> state, idx = fj.integrate.fit_bagging(ens, optax.adam(1e-2), x, y,
    ...     key=jax.random.key(0), epochs=5)                        # doctest: +SKIP
    >>> fj.integrate.oob_evaluate(ens, state, x, y, idx).accuracy   # doctest: +SKIP

  References:
    Breiman, "Out-of-bag estimation", technical report, 1996; Breiman,
    "Bagging predictors", Machine Learning 24, 1996.
  """
  x, y = _train.check_xy(x, y, "oob_evaluate")
  n = len(x)
  indices = np.asarray(indices)
  if indices.ndim != 2 or indices.shape[0] != ensemble.size:
    raise errors.BatchShapeError(
        f"oob_evaluate: indices have shape {indices.shape}, but the ensemble has "
        f"M={ensemble.size} members: expected [M={ensemble.size}, N']. Fix: pass the "
        "bootstrap(key, N, M) used to train it.")
  if indices.size and (indices.min() < 0 or indices.max() >= n):
    raise errors.BatchShapeError(
        f"oob_evaluate: indices span [{indices.min()}, {indices.max()}] but x has N={n} "
        "examples. Fix: pass the training set the bootstrap indexed.")
  mask = out_of_bag(indices, n)                                          # [M, N]
  if not mask.any():
    raise errors.EmptySplitError(
        f"oob_evaluate: every one of the N={n} examples is in every member's bootstrap, "
        "so nothing is out of bag. Fix: use bootstrap samples of size N (the default) "
        "or more members.")
  logits = _train.batched_apply(ensemble, _train.variables_of(state), x, batch_size)
  yj = jnp.asarray(y, jnp.int32)
  fused, count, member_acc = _oob_core(logits, jnp.asarray(mask), yj)
  covered = count > 0
  return OOBResult(float(metrics.accuracy(fused, yj, covered)),
                   float(metrics.nll(fused, yj, covered)), fused, covered, count,
                   member_acc)


@jax.jit
def _oob_core(logits, mask, labels):
  fused, count = oob_log_probs(logits, mask)
  hit = (jnp.argmax(logits, -1) == labels[None]) & mask
  member_acc = jnp.sum(hit, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1)
  return fused, count, member_acc


def fit_bagging(ensemble: Ensemble, tx: optax.GradientTransformation, x, y, *,
                key: jax.Array, epochs: int, batch_size: int = 64, seed: int = 0):
  """Trains every member on its own bootstrap sample, in one jitted step per batch.

  The bootstrap is the engine's: ``fusionjax.data.bootstrap(k_bag, N, M)`` with
  ``k_init, k_bag = jax.random.split(key)``; the step is
  ``make_step(ensemble, tx, per_member=True)``, so member ``m``'s batch is
  ``x[indices[m, sl]]``. The indices are returned for :func:`oob_evaluate`.

  Args:
    ensemble: the ensemble.
    tx: single-member optax transform (applied per member).
    x: training inputs ``[N, ...]``.
    y: integer labels ``[N]``.
    key: PRNG key (init, dropout, bootstrap).
    epochs: passes over each bootstrap sample.
    batch_size: examples per member per step.
    seed: seed of the data order.

  Returns:
    ``(state, indices)``: the :class:`~fusionjax.train.TrainState` and the
    ``int32 [M, N]`` bootstrap indices.

  Example:
    >>> ens = fj.ensemble.from_linen(fj.models.MLP(10, (32,)), 4)
    >>> state, idx = fj.integrate.fit_bagging(ens, optax.adam(1e-2), x, y,
    ...     key=jax.random.key(0), epochs=5)                        # doctest: +SKIP
    >>> idx.shape                                                   # doctest: +SKIP
    (4, 1000)

  References:
    Breiman, "Bagging predictors", Machine Learning 24, 1996.
  """
  x, y = _train.check_xy(x, y, "fit_bagging")
  epochs = _train.check_int(epochs, "epochs", "fit_bagging")
  k_init, k_bag = jax.random.split(key)
  indices = bootstrap(k_bag, len(x), ensemble.size)
  state: TrainState = _train.make_init(ensemble, tx)(k_init, jnp.asarray(x[:1]))
  step = make_step(ensemble, tx, per_member=True, x_example=x[:1])
  per_epoch = len(x) // min(batch_size, len(x))
  state, _ = _train.run_steps(step, state, x, y, num_steps=epochs * per_epoch,
                              batch_size=batch_size, seed=seed, indices=indices)
  return state, indices
