"""Shared test set-up: CPU only, small shapes, helpers for subprocess tests."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent XLA compilation cache for the whole test session, shared by the
# xdist workers (they inherit the controller's environment): many tests compile
# the same small programs (a reference 'vmap' step, a member's init), and a
# cached executable is the same code, so results are bit-identical. It cut
# tests/train's wall time by 28 % (126 -> 91 s, 2 workers, 2-core Intel Xeon).
# A fresh directory per session, removed at its end (pytest_unconfigure).
if "FUSIONJAX_TEST_JAX_CACHE" not in os.environ:
  import tempfile  # noqa: E402
  os.environ["FUSIONJAX_TEST_JAX_CACHE"] = tempfile.mkdtemp(prefix="fusionjax-test-xla-")
  os.environ["FUSIONJAX_TEST_JAX_CACHE_OWNER"] = str(os.getpid())
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["FUSIONJAX_TEST_JAX_CACHE"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

from fj_testing import MNIST_DIR, ROOT, run_python  # noqa: E402,F401


def pytest_unconfigure(config):
  del config
  if os.environ.get("FUSIONJAX_TEST_JAX_CACHE_OWNER") == str(os.getpid()):
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(os.environ["FUSIONJAX_TEST_JAX_CACHE"], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
  """Tests marked ``gpu`` run only when ``-m`` names them (``benchmarks/gpu.sh``)."""
  if "gpu" in (config.getoption("markexpr") or ""):
    return
  drop = [it for it in items if it.get_closest_marker("gpu")]
  if drop:
    config.hook.pytest_deselected(items=drop)
    items[:] = [it for it in items if not it.get_closest_marker("gpu")]


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
