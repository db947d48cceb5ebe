"""Resume safety (issue 19): damaged checkpoints, used folders, config mismatches, the log."""
import glob
import json
import os
import shutil

import jax
import numpy as np
import optax
import pytest

import fusionjax as fj
from fusionjax import errors, models
from fusionjax.train import _driver
from fusionjax.train._checkpoint import Checkpointer


def _data(n=64):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, 8, 8, 1)).astype(np.float32)
  y = (x.reshape(n, -1)[:, :10].argmax(1)).astype(np.int32)
  return x, y


def _fit(d, members=2, **kw):
  ens = fj.ensemble.from_linen(models.MLP(10, (8,), dropout=0.1), members)
  x, y = _data()
  args = dict(key=jax.random.key(0), epochs=2, batch_size=16, progress=False,
              eval_sets={"val": (x[:16], y[:16])}, log_path=str(d / "log.jsonl"),
              ckpt_dir=str(d / "ckpt"))
  args.update(kw)
  return fj.train.fit(ens, optax.adam(1e-2), (x, y), **args)


def _log(d, drop_time=True):
  lines = [json.loads(l) for l in open(d / "log.jsonl")]
  return [{k: v for k, v in l.items() if not (drop_time and k == "time")} for l in lines]


def _largest_data_file(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, "item", "**", "d", "*"), recursive=True)
           if os.path.isfile(f)]
  return max(files, key=os.path.getsize)


def _empty_newer_step(ck):
  os.makedirs(ck / "6")  # an interrupted copy: newer than every real step
  return 6


def _empty_metadata(ck):
  open(ck / "4" / "item" / "_METADATA", "w").close()
  return 4


def _truncated_data(ck):
  f = _largest_data_file(ck / "4")
  with open(f, "r+b") as fh:
    fh.truncate(os.path.getsize(f) // 2)
  return 4


def _flipped_bit(ck):
  f = _largest_data_file(ck / "4")
  b = bytearray(open(f, "rb").read())
  b[len(b) // 2] ^= 1
  open(f, "wb").write(bytes(b))
  return 4


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
  """A run stopped at step 4 with checkpoints at steps 2 and 4, and the full run."""
  d = tmp_path_factory.mktemp("part")
  _fit(d, max_steps=4, ckpt_every=2)
  assert sorted(int(p) for p in os.listdir(d / "ckpt") if p.isdigit()) == [2, 4]
  full = tmp_path_factory.mktemp("full")
  res = _fit(full)
  return d, jax.device_get(res.state.params)


@pytest.mark.parametrize("damage", [_empty_newer_step, _empty_metadata, _truncated_data,
                                    _flipped_bit],
                         ids=["empty-newer-step", "empty-_METADATA", "truncated-data",
                              "flipped-bit"])
def test_damaged_newest_checkpoint_is_moved_aside_and_the_previous_one_resumes(
    two_checkpoints, tmp_path, damage):
  src, full_params = two_checkpoints
  shutil.copytree(src, tmp_path, dirs_exist_ok=True)
  ck = tmp_path / "ckpt"
  bad = damage(ck)
  with pytest.warns(RuntimeWarning, match=rf"step {bad} .*damaged.*moved it to .*skipped"):
    res = _fit(tmp_path)
  assert res.status == "done" and int(res.state.step) == 8
  moved = os.listdir(ck / "skipped")
  assert len(moved) == 1 and moved[0].startswith(f"{bad}-"), moved
  if damage is _flipped_bit:  # restored silently before checksums were stored
    assert moved[0] == "4-checksum-mismatch"
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(res.state.params), full_params)


def test_no_restorable_checkpoint_raises_listing_what_was_tried(two_checkpoints, tmp_path):
  src, _ = two_checkpoints
  shutil.copytree(src, tmp_path, dirs_exist_ok=True)
  for step in (2, 4):
    open(tmp_path / "ckpt" / str(step) / "item" / "_METADATA", "w").close()
  with pytest.warns(RuntimeWarning), pytest.raises(
      errors.NoUsableCheckpointError, match=r"step 4: unreadable.*step 2: unreadable"):
    _fit(tmp_path)


def test_resume_false_in_a_used_folder_refuses_and_keeps_the_log(two_checkpoints, tmp_path):
  src, _ = two_checkpoints
  shutil.copytree(src, tmp_path, dirs_exist_ok=True)
  log = open(tmp_path / "log.jsonl").read()
  with pytest.raises(errors.ExistingRunError, match=r"ckpt.*step 4.*resume=True"):
    _fit(tmp_path, resume=False)
  assert open(tmp_path / "log.jsonl").read() == log
  # A fresh checkpoint folder next to another run's log is refused too.
  with pytest.raises(errors.ExistingRunError, match=r"log.jsonl.*log_path"):
    _fit(tmp_path, ckpt_dir=str(tmp_path / "other"))
  assert open(tmp_path / "log.jsonl").read() == log


@pytest.mark.parametrize("change,match", [
    (dict(batch_size=8), r"batch_size \(saved 16, now 8\)"),
    (dict(members=3), r"members \(saved 2, now 3\)"),
    (dict(seed=1), r"seed \(saved 0, now 1\)"),
    (dict(bagging=True), r"bagging \(saved False, now True\)"),
])
def test_resuming_with_another_configuration_is_refused(two_checkpoints, tmp_path, change,
                                                        match):
  src, _ = two_checkpoints
  shutil.copytree(src, tmp_path, dirs_exist_ok=True)
  with pytest.raises(errors.RunConfigMismatchError, match=match):
    _fit(tmp_path, **change)
  assert not os.path.exists(tmp_path / "ckpt" / "skipped")  # a mismatch is not damage
  res = _fit(tmp_path, epochs=3)  # more epochs continue the run
  assert int(res.state.step) == 12


class _Kill(Exception):
  pass


def test_killed_at_fixed_points_and_resumed_the_log_equals_the_uninterrupted_one(
    tmp_path, monkeypatch):
  full = tmp_path / "full"
  _fit(full, ckpt_every=3)
  want = _log(full)
  d = tmp_path / "killed"
  calls = {"eval": 0}
  real_save, real_eval, real_make = Checkpointer.save, _driver.evaluate, _driver.make_trainer

  def run_killed(**patches):
    with monkeypatch.context() as m:
      for name, fn in patches.items():
        m.setattr(*fn)
      with pytest.raises(_Kill):
        _fit(d, ckpt_every=3)

  def kill_at_step(k):  # mid-epoch, before the step's checkpoint
    def make(*a, **kw):
      t = real_make(*a, **kw)
      def step(state, batch):
        if int(state.step) == k:
          raise _Kill()
        return t.step(state, batch)
      return t._replace(step=step)
    return (_driver, "make_trainer", make)

  def kill_after_save(k):
    def save(self, step, *a, **kw):
      real_save(self, step, *a, **kw)
      if step == k:
        raise _Kill()
    return (Checkpointer, "save", save)

  def kill_in_eval(n):
    def ev(*a, **kw):
      calls["eval"] += 1
      if calls["eval"] == n:
        raise _Kill()
      return real_eval(*a, **kw)
    return (_driver, "evaluate", ev)

  # 4 steps an epoch, 2 epochs; checkpoints at steps 3, 4 (epoch 1), 6 and 8 (epoch 2).
  run_killed(a=kill_at_step(2))          # mid-epoch, before any checkpoint
  run_killed(a=kill_after_save(3))       # right after a step checkpoint
  run_killed(a=kill_in_eval(1))          # during the end-of-epoch evaluation (step 4)
  assert _log(d) == []
  run_killed(a=kill_at_step(5))          # mid-epoch, after epoch 1's checkpoint
  assert _log(d) == want[:1]
  run_killed(a=kill_after_save(8))       # after the last epoch's checkpoint
  assert _log(d) == want[:1]             # a record is logged after its checkpoint
  res = _fit(d, ckpt_every=3)
  assert res.status == "done" and _log(d) == want
  assert all(r["train_loss"] is not None for r in _log(d))
  times = [r["time"] for r in _log(d, drop_time=False)]
  assert times == sorted(times)          # cumulative
  # Running a finished run again trains nothing and appends nothing.
  again = _fit(d, ckpt_every=3)
  assert int(again.state.step) == 8 and _log(d) == want
  assert sorted(int(p) for p in os.listdir(d / "ckpt") if p.isdigit())[-1] == 8


def test_max_steps_is_a_total_over_reruns(tmp_path):
  for _ in range(3):
    res = _fit(tmp_path, max_steps=3)
    assert int(res.state.step) == 3
  assert [r["step"] for r in _log(tmp_path)] == [3]


def test_a_new_run_without_ckpt_dir_moves_the_old_log_aside(tmp_path):
  """No checkpoint to resume from: the earlier log is kept (log.1.jsonl), not overwritten."""
  import warnings  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(0).normal(size=(32, 8, 8, 1)).astype(np.float32)
  y = (np.arange(32) % 10).astype(np.int32)
  ens = fj.ensemble.from_linen(fj.models.MLP(10, (8,)), 2)
  log = tmp_path / "log.jsonl"
  run = lambda epochs: fj.train.fit(ens, optax.adam(1e-2), (x, y), key=jax.random.key(0),
                                    epochs=epochs, batch_size=16, progress=False,
                                    log_path=str(log))
  run(1)
  first = log.read_text()
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    run(2)
  assert any("moved to" in str(w.message) for w in caught)
  assert (tmp_path / "log.1.jsonl").read_text() == first
  assert len(log.read_text().splitlines()) == 2
