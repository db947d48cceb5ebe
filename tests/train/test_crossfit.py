"""Cross-fitting: fold replicas never see their fold; out-of-fold is honest."""
import jax
import numpy as np
import optax
import pytest

import fusionjax as fj
from fusionjax import metrics, models


def test_replica_batches_never_include_the_held_out_fold():
  folds = np.asarray(fj.fusion.stratified_folds(np.arange(60) % 3, 4))
  rows = fj.train.replica_rows(folds, 4, 2)
  assert len(rows) == 10 and all(len(rows[8 + m]) == 60 for m in range(2))
  x = np.arange(60, dtype=np.float32)[:, None]
  seen = [[] for _ in rows]
  for b in fj.data.pipeline((x, np.zeros(60, int)), 8, seed=0, num_epochs=2,
                            drop_last=True, indices=rows).dataset:
    for r in range(10):
      seen[r].extend(b["x"][r, b["mask"][r], 0].astype(int).tolist())
  for r in range(8):
    assert seen[r] and not np.isin(seen[r], np.flatnonzero(folds == r // 2)).any()
  assert sorted(seen[8][:56]) == sorted(set(seen[8][:56]))  # no repeats within an epoch


@pytest.mark.slow
def test_out_of_fold_predictions_are_honest_where_in_sample_ones_are_optimistic(digits):
  x, y = digits
  x_tr, y_tr, x_te, y_te = x[:600], y[:600], x[600:], y[600:]
  cf = fj.train.cross_fit(models.MLP(10, (64,)), 2, 3, optax.adam(3e-3), (x_tr, y_tr),
                          key=jax.random.key(0), epochs=40, batch_size=64)
  assert cf.oof.shape == (2, 600, 10) and cf.in_sample.shape == (2, 600, 10)
  test_nll = float(np.mean(metrics.nll(fj.train.full_members(cf, x_te), y_te)))
  oof_nll = float(np.mean(metrics.nll(cf.oof, y_tr)))
  in_nll = float(np.mean(metrics.nll(cf.in_sample, y_tr)))
  # In-sample predictions of overfit members look far better than they are;
  # out-of-fold ones estimate the held-out NLL. Measured (2026-11-22, this
  # 2-core CPU): test NLL 0.273, out-of-fold 0.376, in-sample 0.067; stacked
  # accuracy 0.908.
  assert in_nll < 0.5 * test_nll
  assert abs(oof_nll - test_nll) < abs(in_nll - test_nll)
  # A stacking meta-learner fit on the out-of-fold features works on test data.
  meta = fj.fusion.stacking(2, 10)
  params, _ = fj.fusion.fit(meta, cf.oof, y_tr, jax.random.key(1), 200, optax.adam(1e-2))
  fused = meta.apply(params, fj.train.full_members(cf, x_te))
  assert float(metrics.accuracy(fused, y_te)) > 0.85
