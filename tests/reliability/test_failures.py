"""Divergence, disk failures and code-free loading."""
import pathlib
import re

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import fusionjax as fj
from fusionjax import errors, models

PKG = pathlib.Path(fj.__file__).parent


def _data(n=64):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, 4, 4, 1)).astype(np.float32)
  return x, (x.reshape(n, -1).argmax(1) % 10).astype(np.int32)


@pytest.mark.slow
def test_freeze_policy_keeps_bad_member_and_trains_others():
  x, y = _data()
  ens = fj.ensemble.from_linen(models.MLP(10, (8,)), 3)
  tx = optax.adam(1e-2)
  state = fj.train.init(ens, tx, jax.random.key(0), x[:1])
  # Member 1's weights are poisoned: every step it produces a non-finite loss.
  members = jax.tree.map(lambda a: a.at[1].set(np.inf) if a.ndim == 3 else a,
                         state.params["members"])
  step = fj.train.make_step(ens, tx, donate=False)
  s = state._replace(params={"members": members, "fusion": ()})
  for i in range(3):
    s, logs = step(s, {"x": x[i * 16:(i + 1) * 16], "y": y[i * 16:(i + 1) * 16]})
    np.testing.assert_array_equal(logs["finite"], [True, False, True])
  k0, k1 = members["Dense_0"]["kernel"], s.params["members"]["Dense_0"]["kernel"]
  np.testing.assert_array_equal(k1[1], k0[1])
  assert not np.allclose(k1[0], k0[0]) and not np.allclose(k1[2], k0[2])


def test_fit_freeze_policy_runs_to_the_end_and_reports_frozen_members():
  x, y = _data()
  x_bad = x.copy()
  ens = fj.ensemble.from_linen(models.MLP(10, (8,)), 2)
  # Huge learning rate on a sharp loss drives members to overflow.
  res = fj.train.fit(ens, optax.sgd(1e30), (x_bad * 1e10, y), key=jax.random.key(0), epochs=2,
                     batch_size=16, progress=False, on_nonfinite="freeze", sync_every=1)
  assert res.status == "done" and res.history[-1]["step"] == 8
  assert res.history[-1]["frozen_members"], res.history
  for leaf in jax.tree_util.tree_leaves(res.state.params):
    assert np.all(np.isfinite(leaf)), "no non-finite value may enter the state"


@pytest.mark.slow
def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
  x, y = _data()
  ens = fj.ensemble.from_linen(models.MLP(10, (8,)), 2)
  ckpt = tmp_path / "ck"
  fj.train.fit(ens, optax.adam(1e-2), (x, y), key=jax.random.key(0), epochs=1, batch_size=16,
               progress=False, ckpt_dir=str(ckpt))
  good = fj.train.Checkpointer(str(ckpt))
  assert good.latest_step() == 4
  like = fj.train.init(ens, optax.adam(1e-2), jax.random.key(0), x[:1])
  before, _ = good.restore(like)
  good.close()

  real_save = ocp.CheckpointManager.save

  def full_disk(self, step, *a, **k):
    # Start writing, then fail as a full disk would.
    (pathlib.Path(self.directory) / f"{step}.orbax-checkpoint-tmp-0").mkdir(exist_ok=True)
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
  with pytest.raises(errors.CheckpointDirError,
                     match=r"step 8 .*No space left.*previous checkpoint \(step 4\) is intact"):
    fj.train.fit(ens, optax.adam(1e-2), (x, y), key=jax.random.key(0), epochs=2,
                 batch_size=16, progress=False, ckpt_dir=str(ckpt))
  monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
  again = fj.train.Checkpointer(str(ckpt))
  assert again.latest_step() == 4
  after, pos = again.restore(like)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(before.params),
               jax.device_get(after.params))
  assert pos == {"next_index": 4}  # the grain iterator: epoch 1 (4 batches an epoch), batch 0
  # And training resumes from it to the end.
  res = fj.train.fit(ens, optax.adam(1e-2), (x, y), key=jax.random.key(0), epochs=2,
                     batch_size=16, progress=False, ckpt_dir=str(ckpt))
  assert int(res.state.step) == 8


def test_not_enough_free_space_is_reported_before_training(tmp_path):
  with pytest.raises(errors.CheckpointDirError, match=r"MiB free but a checkpoint needs"):
    fj.train.check_writable(str(tmp_path), need_bytes=1 << 62)


def test_nothing_in_fusionjax_unpickles():
  pattern = re.compile(r"\bpickle\b|allow_pickle\s*=\s*True|\bdill\b|cloudpickle|torch\.load")
  offenders = [f"{p.relative_to(PKG)}:{i + 1}" for p in PKG.rglob("*.py")
               for i, line in enumerate(p.read_text().splitlines()) if pattern.search(line)]
  assert not offenders, f"code that may unpickle a file: {offenders}"


def test_every_error_class_is_raised_and_checked_by_a_test():
  tests = pathlib.Path(__file__).resolve().parents[1]
  text = "\n".join(p.read_text() for p in tests.rglob("test_*.py"))
  names = [n for n in dir(errors) if isinstance(getattr(errors, n), type)
           and issubclass(getattr(errors, n), errors.FusionJaxError)
           and n != "FusionJaxError"]
  untested = [n for n in names if not re.search(rf"pytest\.raises\(\s*(errors\.)?{n}\b", text)]
  assert not untested, f"error classes without a pytest.raises test: {untested}"
