"""IDX parsing and writing: round trips, and every way a file can be corrupt."""
import gzip

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from fusionjax import errors
from fusionjax.data import parse_idx
from fusionjax.data import read_idx
from fusionjax.data import write_idx


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip(tmp_path, dtype, suffix):
  array = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
  path = write_idx(tmp_path / f"a-idx3{suffix}", array)
  out = read_idx(path)
  assert out.dtype == np.dtype(dtype) and out.dtype.isnative
  np.testing.assert_array_equal(out, array)


def test_known_bytes():
  # The header of the MNIST label files, with two labels.
  assert parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9])).tolist() == [7, 9]
  assert parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 0])).shape == (0,)


def test_write_rejects_unsupported(tmp_path):
  with pytest.raises(TypeError, match="IDX cannot hold"):
    write_idx(tmp_path / "x", np.zeros(3, np.uint16))
  with pytest.raises(TypeError):
    write_idx(tmp_path / "x", np.uint8(3))


def test_missing_file_names_it(tmp_path):
  with pytest.raises(errors.DataNotFoundError, match="nope-idx1-ubyte.gz"):
    read_idx(tmp_path / "nope-idx1-ubyte.gz")


def _labels_bytes(n=5):
  return bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + bytes(range(n))


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x00\x00", "shorter than the 4-byte"),
        (b"\x08\x03\x00\x00" + bytes(20), "bad magic"),  # endianness swapped
        (bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 0]), "bad magic"),  # unknown type
        (bytes([0, 0, 8, 0]), "0 dimensions"),
        (bytes([0, 0, 8, 3, 0, 0, 0, 1]), "truncated header"),
        (_labels_bytes()[:-1], "truncated"),
        (_labels_bytes() + b"\x00", "too long"),
        (bytes([0, 0, 8, 2, 255, 255, 255, 255, 255, 255, 255, 255]), "truncated"),
    ],
)
def test_corrupt_bytes(data, match):
  with pytest.raises(errors.CorruptFileError, match=match):
    parse_idx(data)


def test_wrong_dimensions(tmp_path):
  path = write_idx(tmp_path / "imgs.gz", np.zeros((3, 27, 28), np.uint8))
  with pytest.raises(errors.CorruptFileError, match=r"expected shape \(N, 28, 28\)"):
    read_idx(path, shape=(None, 28, 28))
  with pytest.raises(errors.CorruptFileError, match="expected 1 dimensions"):
    read_idx(path, ndim=1)
  assert read_idx(path, shape=(None, 27, 28)).shape == (3, 27, 28)


def test_truncated_gzip(tmp_path):
  path = write_idx(tmp_path / "x.gz", np.arange(1000, dtype=np.int32))
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(errors.CorruptFileError, match="gzip"):
    read_idx(path)
  path.write_bytes(data[:2] + bytes(len(data) - 2))  # gzip magic, garbage
  with pytest.raises(errors.CorruptFileError, match="gzip"):
    read_idx(path)


def test_truncated_payload_inside_valid_gzip(tmp_path):
  raw = gzip.decompress(write_idx(tmp_path / "x.gz", np.ones((4, 28, 28), np.uint8)).read_bytes())
  (tmp_path / "y.gz").write_bytes(gzip.compress(raw[:-10]))
  with pytest.raises(errors.CorruptFileError, match="truncated"):
    read_idx(tmp_path / "y.gz")


_SETTINGS = hypothesis.settings(max_examples=50, deadline=None, derandomize=True)


@_SETTINGS
@hypothesis.given(st.binary(max_size=64))
def test_random_bytes_only_raise_corrupt_file_error(data):
  try:
    array = parse_idx(data)
  except errors.CorruptFileError:
    return
  assert isinstance(array, np.ndarray)  # a (rare) well-formed file


@_SETTINGS
@hypothesis.given(
    st.sampled_from([8, 9, 0x0B, 0x0C, 0x0D, 0x0E]),
    st.integers(1, 4),
    st.binary(max_size=48),
)
def test_random_payload_after_valid_magic(code, ndim, rest):
  """Random dims and payloads behind a valid magic number: the deeper checks."""
  try:
    parse_idx(bytes([0, 0, code, ndim]) + rest)
  except errors.CorruptFileError:
    pass


@_SETTINGS
@hypothesis.given(st.binary(max_size=64), st.booleans())
def test_random_files_only_raise_corrupt_file_error(tmp_path_factory, data, gz):
  path = tmp_path_factory.mktemp("h") / "f"
  path.write_bytes(gzip.compress(data) if gz else b"\x1f\x8b" + data)
  try:
    read_idx(path)
  except errors.CorruptFileError:
    pass
