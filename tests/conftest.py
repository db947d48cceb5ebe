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
