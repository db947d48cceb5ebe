"""Helpers of the data tests (imported by conftest.py and the test modules)."""
import gzip
import hashlib
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from fusionjax.data import _idx

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the repository root
#: The real MNIST IDX files (``../shared/data/mnist`` from the repo root).
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"

requires_mnist = pytest.mark.skipif(
    not MNIST_DIR.is_dir(),
    reason=(
        f"the real MNIST IDX files are not at {MNIST_DIR} (they ship with the"
        " shared workspace, not with the project); only these tests read them"
    ),
)

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def synthetic_arrays(n_train=40, n_test=20, seed=0, num_classes=10):
  """MNIST-shaped uint8 images and labels, every class present."""
  rng = np.random.default_rng(seed)
  out = {}
  for split, n in (("train", n_train), ("test", n_test)):
    out[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), np.uint8)
    out[f"{split}_labels"] = (np.arange(n) % num_classes).astype(np.uint8)
  return out


def write_idx_dir(folder, arrays=None, **kw):
  """Writes the four IDX .gz files of ``arrays`` into ``folder``."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  arrays = synthetic_arrays(**kw) if arrays is None else arrays
  for role, name in FILES.items():
    _idx.write_idx(folder / name, arrays[role])
  return arrays


def gunzip_md5(path):
  return hashlib.md5(gzip.decompress(pathlib.Path(path).read_bytes())).hexdigest()


def run_python(code, env_extra=None, timeout=120):
  """Runs ``code`` in a fresh interpreter (XLA flags apply before JAX starts)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  env.update(env_extra or {})
  proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(ROOT),
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
  return proc.stdout
