"""Fixtures of the data tests: synthetic IDX folders, the real MNIST files."""
import pytest

from fj_data_helpers import MNIST_DIR
from fj_data_helpers import write_idx_dir


@pytest.fixture
def idx_data_dir(tmp_path):
  """A data dir holding synthetic ``mnist/`` IDX files; returns (dir, arrays)."""
  arrays = write_idx_dir(tmp_path / "data" / "mnist")
  return tmp_path / "data", arrays


@pytest.fixture(scope="session")
def mnist_prepared(tmp_path_factory):
  """Real MNIST prepared once per session through the builder; the tfds dir."""
  from fusionjax import data
  cache = tmp_path_factory.mktemp("mnist_prepared")
  data.prepare_idx("mnist", MNIST_DIR.parent, cache_dir=cache, download=False)
  return cache


@pytest.fixture(scope="session")
def mnist_splits(mnist_prepared):
  """``load('mnist')`` of the real files (prepared once per session)."""
  from fusionjax import data
  return data.load("mnist", MNIST_DIR.parent, cache_dir=mnist_prepared,
                   download=False)
