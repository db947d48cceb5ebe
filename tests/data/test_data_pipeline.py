"""The one data pipeline (grain): order, padding, per-member rows, lazy reads, state."""
import numpy as np
import pytest

from fusionjax import data, errors
from fusionjax.data import _pipeline

N = 50


def _xy(n=N):
  x = np.arange(n, dtype=np.float32)[:, None]  # example i's input is i
  return x, np.arange(n) % 5


def _ids(batch):
  return np.asarray(batch["x"])[..., 0].astype(int)


def test_batches_are_x_y_mask_and_follow_the_documented_order():
  x, y = _xy()
  p = data.pipeline((x, y), 16, seed=7, num_epochs=2)
  got = list(p.dataset)
  assert p.steps_per_epoch == 4 and p.num_batches == 8 and len(got) == 8
  assert set(got[0]) == {"x", "y", "mask"}
  for e in range(2):
    order = data.epoch_order(7, e, N)
    want = order[np.arange(64) % N]  # the last batch is filled from the epoch's start
    ids = np.concatenate([_ids(b) for b in got[4 * e:4 * e + 4]])
    np.testing.assert_array_equal(ids, want)
    mask = np.concatenate([b["mask"] for b in got[4 * e:4 * e + 4]])
    np.testing.assert_array_equal(mask, np.arange(64) < N)
    np.testing.assert_array_equal(np.concatenate([b["y"] for b in got[4 * e:4 * e + 4]]),
                                  y[want])
  assert not np.array_equal(_ids(got[0]), _ids(got[4]))  # each epoch its own order


def test_drop_last_and_no_shuffle():
  x, y = _xy()
  got = list(data.pipeline((x, y), 16, shuffle=False, drop_last=True).dataset)
  assert len(got) == 3 and all(b["mask"].all() for b in got)
  np.testing.assert_array_equal(np.concatenate([_ids(b) for b in got]), np.arange(48))


def test_the_iterator_state_resumes_the_exact_order():
  x, y = _xy()
  p = data.pipeline((x, y), 8, seed=1, num_epochs=3)
  full = [_ids(b) for b in p.dataset]
  it = iter(p.dataset)
  for _ in range(9):
    next(it)
  state = it.get_state()
  it.close()
  again = iter(p.dataset)
  again.set_state(state)
  rest = [_ids(b) for b in again]
  assert len(rest) == len(full) - 9
  for a, b in zip(rest, full[9:]):
    np.testing.assert_array_equal(a, b)


def test_per_member_rows_of_different_lengths_are_masked_past_their_end():
  x, y = _xy()
  rows = [np.arange(0, 40), np.arange(10, 30), np.arange(5, 50)]
  p = data.pipeline((x, y), 16, seed=3, indices=rows)
  assert p.members == 3
  got = list(p.dataset)
  assert got[0]["x"].shape == (3, 16, 1) and got[0]["mask"].shape == (3, 16)
  for m, r in enumerate(rows):
    seen = np.concatenate([_ids(b)[m][b["mask"][m]] for b in got])
    assert sorted(seen.tolist()) == sorted(r.tolist())  # each row once an epoch
    np.testing.assert_array_equal(
        seen, r[data.epoch_order(3, 0, len(r), member=m)])  # in the member's own order


def test_sources_are_read_lazily_batch_by_batch():
  x, y = _xy()
  reads = []

  class Lazy:
    def __len__(self):
      return N

    def __getitem__(self, idx):
      reads.append(len(idx))
      return {"image": x[idx], "label": y[idx]}

  it = iter(data.pipeline(Lazy(), 8, seed=0, prefetch=0).dataset)
  next(it)
  assert reads == [8]  # only the rows of the batch that was asked for
  it.close()


def test_augment_gets_a_key_per_batch():
  import jax
  x, y = _xy()
  keys = []

  def aug(key, xb):
    keys.append(np.asarray(jax.random.key_data(key)).tolist())
    return xb + 100

  got = list(data.pipeline((x, y), 25, seed=0, augment=aug, augment_key=jax.random.key(0),
                           prefetch=0).dataset)
  assert all((b["x"] >= 100).all() for b in got) and len({str(k) for k in keys}) == 2


def test_bad_arguments_name_the_fix():
  x, y = _xy()
  with pytest.raises(errors.BatchSizeError):
    data.pipeline((x, y), 0)
  with pytest.raises(errors.EmptySplitError, match="drop_last"):
    data.pipeline((x, y), 64, drop_last=True)
  with pytest.raises(errors.EmptySplitError, match="member 1"):
    data.pipeline((x, y), 8, indices=[np.arange(3), np.arange(0)])
  with pytest.raises(IndexError):
    data.pipeline((x, y), 8, indices=[np.arange(3), np.array([N])])
  with pytest.raises(errors.BatchShapeError, match="same number"):
    _pipeline.PairSource(x, y[:3])
