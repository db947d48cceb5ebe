"""Shared test set-up: CPU only, small shapes, helpers for subprocess tests."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from fj_testing import MNIST_DIR, ROOT, run_python  # noqa: E402,F401


@pytest.fixture
def digits():
  """scikit-learn's digits as float32 images [N, 8, 8, 1] and int32 labels."""
  import numpy as np
  from sklearn.datasets import load_digits
  d = load_digits()
  return (d.images / 16.0).astype(np.float32)[..., None], d.target.astype(np.int32)


@pytest.fixture(autouse=True)
def _fresh_trace_counter():
  """chex keys its trace counter on hash(fn), an id that CPython reuses once a
  test's function is collected; a count left by an earlier test in the same
  worker would otherwise be charged to a new function and fail
  `assert_max_traces` at random (seen in CI on test_no_retrace_on_second_call)."""
  import chex
  chex.clear_trace_counter()
  yield
