"""Fixtures for the integration tests: digits splits and one shared generated task.

Session-scoped, so the data are built once; every training fixture lives in
the test module that uses it (module scope) and trains tiny models for a few
hundred steps.
"""
import numpy as np
import pytest


@pytest.fixture(scope="session")
def digits_splits():
  """Shuffled digits (seed 0): ``{'train', 'val', 'test'}`` -> ``(x [N, 8, 8, 1], y [N])``.

  train = 1000 examples, val = 397, test = 400 (the engine's contract: float32
  images in [0, 1], int32 labels).
  """
  from sklearn.datasets import load_digits
  d = load_digits()
  x = (d.images / 16.0).astype(np.float32)[..., None]
  y = d.target.astype(np.int32)
  perm = np.random.default_rng(0).permutation(len(x))
  x, y = x[perm], y[perm]
  return {"train": (x[:1000], y[:1000]), "val": (x[1000:1397], y[1000:1397]),
          "test": (x[1397:], y[1397:])}


SNAPSHOT_SEEDS = (0, 1, 2)


@pytest.fixture(scope="session")
def snapshot_runs(digits_splits):
  """Snapshot ensembles, one per seed in ``SNAPSHOT_SEEDS``: MLP(64) on 500 digits,
  SGD-Nesterov, lr0 0.4, 4 cycles of 80 steps (2.5 s each on 2 CPU cores).

  Learning tests average over the seeds: XLA:CPU's numerics differ between CPU
  kinds (with and without AVX-512), so one seed's margin does not travel.
  Shared by the snapshot tests and the soup tests (snapshots of one run lie in
  one basin, which soups need).
  """
  import jax
  import fusionjax as fj
  from fusionjax import integrate
  x, y = digits_splits["train"]
  return [integrate.snapshot_ensemble(fj.models.MLP(10, (64,)), x[:500], y[:500],
                                      key=jax.random.key(s), lr0=0.4, steps_per_cycle=80,
                                      cycles=4, batch_size=32) for s in SNAPSHOT_SEEDS]


@pytest.fixture(scope="session")
def snapshot_run(snapshot_runs):
  """The seed-0 run of :func:`snapshot_runs`."""
  return snapshot_runs[0]


@pytest.fixture(scope="session")
def bagged(digits_splits):
  """8 bagged MLP(32) members on the first 300 training digits, 15 epochs of Adam(1e-2).

  Returns ``(ensemble, state, indices, x, y)``. Shared by the bagging tests and
  the alignment tests (members from different inits and bootstraps). The
  ensemble is ``_train.linen_ensemble``'s, so other tests of an 8-member
  MLP(32) reuse its compiled init.
  """
  import jax
  import optax
  import fusionjax as fj
  from fusionjax import integrate
  from fusionjax.integrate import _train
  x, y = digits_splits["train"]
  x, y = x[:300], y[:300]
  ens = _train.linen_ensemble(fj.models.MLP(10, (32,)), 8)
  state, idx = integrate.fit_bagging(ens, optax.adam(1e-2), x, y, key=jax.random.key(0),
                                     epochs=15, batch_size=32)
  return ens, state, idx, x, y
