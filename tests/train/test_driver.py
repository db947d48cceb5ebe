"""The fit driver: JSONL log, checkpoints, resume, non-finite policy."""
import json
import os

import chex
import jax
import numpy as np
import optax
import pytest

import fusionjax as fj
from fusionjax import errors, models


def _data(n=96):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, 8, 8, 1)).astype(np.float32)
  y = (x.reshape(n, -1)[:, :10].argmax(1)).astype(np.int32)
  return x, y


def _fit(tmp_path, **kw):
  ens = fj.ensemble.from_linen(models.MLP(10, (16,), dropout=0.1), 3)
  x, y = _data()
  args = dict(key=jax.random.key(0), epochs=3, batch_size=16, progress=False,
              eval_sets={"val": (x[:32], y[:32])}, log_path=str(tmp_path / "log.jsonl"),
              ckpt_dir=str(tmp_path / "ckpt"))
  args.update(kw)
  return fj.train.fit(ens, optax.adam(1e-2), (x, y), **args)


@pytest.mark.slow
def test_log_is_jsonl_with_per_member_metrics(tmp_path):
  res = _fit(tmp_path)
  lines = [json.loads(l) for l in open(tmp_path / "log.jsonl")]
  assert [l["epoch"] for l in lines] == [1, 2, 3]
  assert lines[-1]["step"] == 18
  assert len(lines[-1]["val/member_accuracy"]) == 3
  assert {"val/accuracy", "val/nll", "val/brier", "val/ece"} <= set(lines[-1])
  assert res.status == "done" and res.history == lines


@pytest.mark.slow
def test_resume_reproduces_uninterrupted_run_bit_for_bit(tmp_path):
  full = _fit(tmp_path / "a")
  part = _fit(tmp_path / "b", max_steps=7, ckpt_every=5)  # stops mid-epoch
  assert int(part.state.step) == 7
  resumed = _fit(tmp_path / "b")
  assert int(resumed.state.step) == int(full.state.step)
  chex.assert_trees_all_equal(jax.device_get(resumed.state.params),
                              jax.device_get(full.state.params))
  chex.assert_trees_all_equal(jax.device_get(resumed.state.opt_state),
                              jax.device_get(full.state.opt_state))
  a = [json.loads(l) for l in open(tmp_path / "a" / "log.jsonl")]
  b = [json.loads(l) for l in open(tmp_path / "b" / "log.jsonl")]
  assert [l["val/nll"] for l in a][-1] == [l["val/nll"] for l in b][-1]


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  x, y = _data()
  x = x.copy()
  # Finite inputs (fit rejects NaN and Inf ones up front) so large that the
  # first layer overflows: the loss of the first batch that reaches these rows
  # is not finite.
  x[40:] = np.float32(3e38)
  ens = fj.ensemble.from_linen(models.MLP(10, (16,)), 2)
  with pytest.raises(errors.NonFiniteError, match=r"member\(s\) \[0, 1\].*at step \d+"):
    fj.train.fit(ens, optax.adam(1e-2), (x, y), key=jax.random.key(0), epochs=2,
                 batch_size=16, progress=False, ckpt_dir=str(tmp_path / "ck"), sync_every=1)
  ck = fj.train.Checkpointer(str(tmp_path / "ck"))
  assert ck.latest_step() is None  # no bad state was ever written


def test_unwritable_checkpoint_dir_is_reported_before_training(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(errors.CheckpointDirError, match="Cannot write checkpoints"):
    _fit(tmp_path, ckpt_dir=str(blocker / "sub"))


def test_fit_prints_and_logs_its_layout(tmp_path, capsys):
  res = _fit(tmp_path, epochs=1, progress=True)
  out = capsys.readouterr()
  assert "fusionjax.fit: 3 members, layout scan" in out.out + out.err
  assert [h["layout"] for h in res.history] == ["scan"]
  lines = [json.loads(l) for l in open(tmp_path / "log.jsonl")]
  assert lines[-1]["layout"] == "scan"


@pytest.mark.slow
def test_resuming_under_another_layout_is_refused(tmp_path):
  part = _fit(tmp_path, max_steps=4, ckpt_every=2, layout="scan")
  assert int(part.state.step) == 4
  with pytest.raises(errors.LayoutMismatchError,
                     match=r"layout 'scan'.*layout 'vmap'.*layout='scan'"):
    _fit(tmp_path, layout="vmap")
  resumed = _fit(tmp_path, layout="scan")
  assert int(resumed.state.step) == 18
