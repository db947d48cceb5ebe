"""Cross-fitting for stacking: K fold-replicas of every member in one stacked step.

``cross_fit`` trains ``(K + 1) * M`` members at once, with per-member batches:
replica ``k < K`` of member ``m`` never sees training fold ``k``, and the last
``M`` members train on all the training data. The replicas' predictions on
their held-out folds are the out-of-fold meta-features a stacking meta-learner
is fit on; the full-data members make the predictions at test time. This is
scikit-learn's ``StackingClassifier`` (``cross_val_predict`` for the
meta-features, ``estimators_`` refit on everything for prediction), with all
``K + 1`` fits in the same jitted step.
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fusionjax import fusion as fusion_lib
from fusionjax.data import pipeline
from fusionjax.ensemble import Ensemble, from_linen
from fusionjax.train._driver import as_arrays
from fusionjax.train._step import TrainState, init as init_state, make_step


class CrossFit(NamedTuple):
  """What :func:`cross_fit` returns.

  Attributes:
    ensemble: the ``(K + 1) * M``-member ensemble (replica ``r = k * M + m``).
    state: its train state.
    folds: ``int [N]``, the fold of every training sample.
    oof: ``[M, N, C]`` out-of-fold member logits on the training set.
    in_sample: ``[M, N, C]`` logits of the full-data members on the training
      set (what a leaky meta-learner would be fit on).
    size: ``M``.
    k: ``K``.
  """
  ensemble: Ensemble
  state: TrainState
  folds: np.ndarray
  oof: jax.Array
  in_sample: jax.Array
  size: int
  k: int


def replica_rows(folds: np.ndarray, k: int, size: int) -> list:
  """The training rows of every replica: ``(K + 1) * M`` index arrays.

  Replica ``k * M + m`` trains on the samples outside fold ``k`` (all samples
  for ``k == K``); :func:`fusionjax.data.pipeline` goes through each row in
  the replica's own order.
  """
  pools = [np.flatnonzero(folds != f) for f in range(k)] + [np.arange(len(folds))]
  return [pools[f] for f in range(k + 1) for _ in range(size)]


def cross_fit(module, size: int, k: int, tx: optax.GradientTransformation, train: Any, *,
              key: jax.Array, epochs: int, batch_size: int = 128, seed: int = 0,
              eval_batch: int = 1000) -> CrossFit:
  """Trains K fold-replicas and the full-data version of M members in one stacked step.

  Args:
    module: a Linen module (one member).
    size: ``M``, members per replica.
    k: ``K >= 2`` folds (stratified, scikit-learn's ``StratifiedKFold`` order).
    tx: single-member optax transform (per member).
    train: ``(x, y)`` or a ``fusionjax.data`` source.
    key: PRNG key of the members' init.
    epochs: passes over each replica's training set.
    batch_size: examples per replica per step.
    seed: seed of the data order.
    eval_batch: batch size of the final predictions.

  Returns:
    A :class:`CrossFit`; fit a meta-learner on ``oof`` with
    :func:`fusionjax.fusion.fit` and predict with :func:`full_members`.

  Example:
    >>> cf = cross_fit(models.MLP(10, (64,)), 4, 5, optax.adam(1e-3), train,
    ...                key=jax.random.key(0), epochs=10)          # doctest: +SKIP
    >>> meta = fusion.stacking(4, 10)                            # doctest: +SKIP
    >>> params, _ = fusion.fit(meta, cf.oof, y, key, 300, optax.adam(1e-2))  # doctest: +SKIP

  References:
    Wolpert, 1992. Stacked generalization.
  """
  x, y = as_arrays(train)
  folds = np.asarray(fusion_lib.stratified_folds(y, k))
  ens = from_linen(module, (k + 1) * size)
  state = init_state(ens, tx, key, x[:1])
  step = make_step(ens, tx, per_member=True, x_example=x[:1])
  # The one data pipeline: replica k*M + m goes through the samples outside
  # fold k (all of them for k == K) in its own order each epoch; an epoch has
  # as many positions as the largest pool, a smaller pool's surplus is masked.
  rows = replica_rows(folds, k, size)
  batch_size = min(int(batch_size), min(len(r) for r in rows))
  data = pipeline((x, y), batch_size, seed=seed, num_epochs=epochs, drop_last=True,
                  indices=rows)
  for batch in data.dataset:
    state, _ = step(state, batch)
  apply = jax.jit(lambda s, xb: ens.apply({"params": s.params["members"], "state": s.state},
                                          xb)[0])
  out = jnp.concatenate([apply(state, x[i:i + eval_batch])
                         for i in range(0, len(x), eval_batch)], axis=1)
  out = out.reshape(k + 1, size, *out.shape[1:])
  oof = fusion_lib.out_of_fold(out[:k], folds)
  return CrossFit(ens, state, folds, oof, out[k], size, k)


def full_members(cf: CrossFit, x) -> jax.Array:
  """``[M, B, C]`` logits of the members trained on all the training data."""
  variables = {"params": cf.state.params["members"], "state": cf.state.state}
  out, _ = cf.ensemble.apply(variables, x)
  return out[cf.k * cf.size:]
