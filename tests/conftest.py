"""Shared test set-up: CPU only, small shapes, helpers for subprocess tests."""
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"


def run_python(code: str, env_extra=None, timeout=240, args=()):
  """Runs ``code`` in a fresh Python process (so XLA flags apply before JAX starts)."""
  env = dict(os.environ)
  env.update({"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)})
  env.update(env_extra or {})
  proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                        text=True, timeout=timeout, cwd=str(ROOT))
  if proc.returncode != 0:
    raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc.stdout


@pytest.fixture
def digits():
  """scikit-learn's digits as float32 images [N, 8, 8, 1] and int32 labels."""
  import numpy as np
  from sklearn.datasets import load_digits
  d = load_digits()
  return (d.images / 16.0).astype(np.float32)[..., None], d.target.astype(np.int32)
