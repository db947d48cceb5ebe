"""The batch iterator: keyed order, epochs, padding with a mask, members, devices."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fusionjax import data
from fusionjax import errors

from fj_data_helpers import run_python

N = 50


@pytest.fixture
def source():
  # Example i has label i % 5 and every pixel equal to i: the batch says which
  # examples it holds.
  x = np.broadcast_to(np.arange(N, dtype=np.float32)[:, None, None, None], (N, 2, 2, 1))
  return data.from_arrays(np.ascontiguousarray(x), np.arange(N) % 5)


def ids(batch):
  return np.asarray(batch["x"])[..., 0, 0, 0].astype(int)


def epoch_ids(source, **kw):
  out = [(ids(b), np.asarray(b["mask"])) for b in data.batches(source, 16, **kw)]
  return out


def test_same_key_same_order_different_key_different_order(source):
  key = jax.random.key(0)
  a = np.concatenate([i for i, _ in epoch_ids(source, key=key)])
  b = np.concatenate([i for i, _ in epoch_ids(source, key=key)])
  c = np.concatenate([i for i, _ in epoch_ids(source, key=jax.random.key(1))])
  e1 = np.concatenate([i for i, _ in epoch_ids(source, key=key, epoch=1)])
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert not np.array_equal(a, e1)  # each epoch has its own order
  # prefetch changes nothing but when the host work happens.
  d = np.concatenate([i for i, _ in epoch_ids(source, key=key, prefetch=0)])
  np.testing.assert_array_equal(a, d)


def test_every_example_once_per_epoch_padded(source):
  out = epoch_ids(source, key=jax.random.key(0))
  assert len(out) == data.num_batches(N, 16) == 4
  assert all(i.shape == (16,) for i, _ in out)  # static shapes
  seen = np.concatenate([i[m] for i, m in out])
  assert sorted(seen.tolist()) == list(range(N))
  masks = np.concatenate([m for _, m in out])
  assert masks.sum() == N
  assert out[-1][1].tolist() == [True, True] + [False] * 14


def test_every_example_at_most_once_when_dropping(source):
  out = epoch_ids(source, key=jax.random.key(0), drop_last=True)
  assert len(out) == data.num_batches(N, 16, drop_last=True) == 3
  seen = np.concatenate([i for i, _ in out])
  assert len(set(seen.tolist())) == 48 and all(m.all() for _, m in out)


def test_batch_contents_and_types(source):
  batch = next(data.batches(source, 8, shuffle=False))
  assert isinstance(batch["x"], jax.Array)
  assert batch["x"].dtype == jnp.float32 and batch["y"].dtype == jnp.int32
  assert batch["mask"].dtype == jnp.bool_
  np.testing.assert_array_equal(ids(batch), np.arange(8))
  np.testing.assert_array_equal(batch["y"], np.arange(8) % 5)


def test_subset_indices(source):
  fold = data.kfold(source, 5, key=jax.random.key(0))[0]
  seen = [i[m] for i, m in epoch_ids(source, key=jax.random.key(2), indices=fold.train)]
  assert sorted(np.concatenate(seen).tolist()) == fold.train.tolist()


def test_per_member_batches_from_bootstrap(source):
  idx = data.bootstrap(jax.random.key(0), N, 3)
  batches = list(data.batches(source, 16, key=jax.random.key(1), indices=idx))
  assert batches[0]["x"].shape == (3, 16, 2, 2, 1)
  assert batches[0]["y"].shape == batches[0]["mask"].shape == (3, 16)
  for m in range(3):  # member m sees exactly its bootstrap sample
    seen = np.concatenate([ids(b)[m][np.asarray(b["mask"])[m]] for b in batches])
    assert sorted(seen.tolist()) == sorted(idx[m].tolist())
  # Members are shuffled with their own keys.
  assert not np.array_equal(ids(batches[0])[0], ids(batches[0])[1])


def test_jitted_step_does_not_retrace(source):
  @jax.jit
  @chex.assert_max_traces(n=1)
  def masked_sum(batch):
    return jnp.sum(jnp.where(batch["mask"], batch["y"], 0))

  total = 0
  for batch in data.batches(source, 16, key=jax.random.key(0)):
    total += int(masked_sum(batch))  # the padded last batch too
  assert total == int(source.labels.sum())


def test_epochs_helper(source):
  seen = {e: np.concatenate([ids(b) for b in it])
          for e, it in data.epochs(source, 25, key=jax.random.key(0), num_epochs=3, start_epoch=1)}
  assert sorted(seen) == [1, 2]
  again = np.concatenate([ids(b) for b in data.batches(source, 25, key=jax.random.key(0), epoch=2)])
  np.testing.assert_array_equal(seen[2], again)


def test_errors_are_raised_at_call_time(source):
  with pytest.raises(errors.BatchSizeError):
    data.batches(source, 0, key=jax.random.key(0))
  with pytest.raises(errors.EmptySplitError, match="drop_last"):
    data.batches(source, 64, key=jax.random.key(0), drop_last=True)
  with pytest.raises(errors.EmptySplitError):
    data.batches(source, 8, key=jax.random.key(0), indices=np.array([], int))
  with pytest.raises(TypeError, match="key"):
    data.batches(source, 8)
  with pytest.raises(IndexError):
    data.batches(source, 8, shuffle=False, indices=np.array([0, N]))


def test_errors_in_the_background_thread_reach_the_consumer(source):
  class Broken:
    name, split, num_classes, input_shape = "broken", "train", 5, (1,)
    labels = np.zeros(10, np.int32)

    def __len__(self):
      return 10

    def __getitem__(self, index):
      raise RuntimeError("disk on fire")

  with pytest.raises(RuntimeError, match="disk on fire"):
    list(data.batches(Broken(), 4, shuffle=False))


def test_breaking_early_stops_the_prefetch_thread(source):
  import threading
  before = threading.active_count()
  it = data.batches(source, 2, key=jax.random.key(0), prefetch=2)
  next(it)
  it.close()
  assert threading.active_count() <= before


def test_augment_hook(source):
  calls = []

  def augment(key, image):
    calls.append(key)
    return image + 1000

  batch = next(data.batches(source, 8, key=jax.random.key(0), augment=augment))
  assert (np.asarray(batch["x"]) >= 1000).all() and len(calls) >= 1


def test_mesh_single_device(source):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("member", "data"))
  batch = next(data.batches(source, 8, key=jax.random.key(0), mesh=mesh))
  assert batch["x"].sharding == jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def test_sharding_over_four_devices():
  """Four fake CPU devices, mesh (member=2, data=2), in a fresh process."""
  out = run_python(
      """
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from fusionjax import data, errors
assert len(jax.devices()) == 4
mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ('member', 'data'))
src = data.from_arrays(np.arange(30, dtype=np.float32)[:, None], np.arange(30) % 3)
key = jax.random.key(0)
plain = list(data.batches(src, 8, key=key, prefetch=0))
sharded = list(data.batches(src, 8, key=key, mesh=mesh, prefetch=0))
for a, b in zip(plain, sharded):
  for k in a:
    assert b[k].sharding == NamedSharding(mesh, P('data')), b[k].sharding
    assert len(b[k].addressable_shards) == 4
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
idx = data.bootstrap(key, 30, 4)
b = next(data.batches(src, 8, key=key, indices=idx, mesh=mesh, prefetch=0))
assert b['x'].shape == (4, 8, 1)
assert b['x'].sharding == NamedSharding(mesh, P('member', 'data'))
assert b['x'].addressable_shards[0].data.shape == (2, 4, 1)
for bad in [dict(batch_size=7), dict(batch_size=8, indices=idx[:3])]:
  try:
    data.batches(src, key=key, mesh=mesh, **bad)
  except errors.MeshError as e:
    print('MeshError:', str(e)[:40])
  else:
    raise AssertionError(bad)
print('ok')
""",
      env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
  )
  assert out.strip().endswith("ok") and out.count("MeshError") == 2
