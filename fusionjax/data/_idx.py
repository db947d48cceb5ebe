"""Reading and writing IDX files (the MNIST file format), with numpy only.

An IDX file is a big-endian header followed by the raw array::

    bytes 0-1   0x00 0x00 (magic)
    byte  2     type code: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                0x0D float32, 0x0E float64
    byte  3     number of dimensions ``d``
    d x 4 bytes each dimension's size, big-endian uint32
    the data    prod(dims) items of the type, big-endian, row-major

Files are usually gzip-compressed (``.gz``); compression is recognised from the
gzip magic bytes, not from the name. Everything that is not a well-formed IDX
file raises :class:`~fusionjax.errors.CorruptFileError` naming what was
expected, and a missing file raises :class:`~fusionjax.errors.DataNotFoundError`.

References:
  LeCun, Cortes and Burges, "The MNIST database of handwritten digits",
  http://yann.lecun.com/exdb/mnist/ (section "File formats").
"""
from __future__ import annotations

import gzip
import os
import pathlib
import zlib
from typing import Sequence

import numpy as np

from fusionjax import errors

_GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> big-endian numpy dtype (and back).
_CODE_TO_DTYPE = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_KIND_TO_CODE = {
    (dtype.kind, dtype.itemsize): code for code, dtype in _CODE_TO_DTYPE.items()
}


def decompress(data: bytes, *, source: str = "<bytes>") -> bytes:
  """Returns ``data`` gunzipped if it starts with the gzip magic, else as is.

  Args:
    data: the bytes of a file.
    source: name of the file, for error messages.

  Returns:
    The decompressed bytes.

  Raises:
    CorruptFileError: the gzip stream is truncated or corrupt.
  """
  if not data.startswith(_GZIP_MAGIC):
    return data
  try:
    return gzip.decompress(data)
  except (OSError, EOFError, zlib.error) as e:
    raise errors.CorruptFileError(
        f"{source}: the gzip stream is truncated or corrupt ({e}). Fix: fetch"
        " the file again."
    ) from e


def parse_idx(
    data: bytes,
    *,
    source: str = "<bytes>",
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
) -> np.ndarray:
  """Parses the (already decompressed) bytes of an IDX file.

  Args:
    data: the bytes of the IDX file, not gzipped.
    source: name of the file, for error messages.
    ndim: the number of dimensions the file must have, if known.
    shape: the shape the file must have; ``None`` entries match any size
      (``(None, 28, 28)`` for MNIST images).

  Returns:
    The array, in native byte order, with the dtype the file declares.

  Raises:
    CorruptFileError: bad magic number, unknown type code, a length that does
      not match the header, or dimensions other than ``ndim``/``shape``.

  Example:
    >>> parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9]))
    array([7, 9], dtype=uint8)
  """
  if len(data) < 4:
    raise errors.CorruptFileError(
        f"{source}: {len(data)} bytes is shorter than the 4-byte IDX header."
        " Fix: fetch the file again."
    )
  if data[0] != 0 or data[1] != 0 or data[2] not in _CODE_TO_DTYPE:
    raise errors.CorruptFileError(
        f"{source}: bad magic number 0x{data[:4].hex()}; an IDX file starts"
        " with 0x0000, a type code in"
        f" {sorted(hex(c) for c in _CODE_TO_DTYPE)} and the number of"
        " dimensions. Fix: fetch the file again (is it an IDX file?)."
    )
  dtype = _CODE_TO_DTYPE[data[2]]
  rank = data[3]
  if rank == 0:
    raise errors.CorruptFileError(
        f"{source}: the header declares 0 dimensions; IDX arrays have at least"
        " one. Fix: fetch the file again."
    )
  header = 4 + 4 * rank
  if len(data) < header:
    raise errors.CorruptFileError(
        f"{source}: truncated header: {rank} dimensions need {header} bytes,"
        f" the file has {len(data)}. Fix: fetch the file again."
    )
  dims = tuple(int(d) for d in np.frombuffer(data, ">u4", rank, 4))
  if ndim is not None and rank != ndim:
    raise errors.CorruptFileError(
        f"{source}: wrong dimensions: expected {ndim} dimensions, the file has"
        f" {rank} {dims}. Fix: check that this is the right file."
    )
  if shape is not None and (
      len(shape) != rank
      or any(s is not None and s != d for s, d in zip(shape, dims))
  ):
    want = ", ".join("N" if s is None else str(s) for s in shape)
    raise errors.CorruptFileError(
        f"{source}: wrong dimensions: expected shape ({want}), the file has"
        f" {dims}. Fix: check that this is the right file."
    )
  count = 1
  for d in dims:  # Python ints: no overflow on absurd headers.
    count *= d
  expected = header + count * dtype.itemsize
  if len(data) != expected:
    what = "truncated" if len(data) < expected else "too long"
    raise errors.CorruptFileError(
        f"{source}: {what}: a {dims} array of {dtype.name} needs"
        f" {expected} bytes, the file has {len(data)}. Fix: fetch the file"
        " again."
    )
  array = np.frombuffer(data, dtype, count, header).reshape(dims)
  return array.astype(dtype.newbyteorder("="))


def read_idx(
    path: str | os.PathLike,
    *,
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
) -> np.ndarray:
  """Reads an IDX file, gzipped or not.

  Args:
    path: the file.
    ndim: the number of dimensions the file must have, if known.
    shape: the shape it must have (``None`` entries match any size).

  Returns:
    The array, in native byte order.

  Raises:
    DataNotFoundError: the file does not exist.
    CorruptFileError: the file is not a well-formed IDX file.

  Example:
    >>> images = read_idx("mnist/train-images-idx3-ubyte.gz", shape=(None, 28, 28))  # doctest: +SKIP
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise errors.DataNotFoundError(
        f"IDX file {path} does not exist. Fix: put it there, or pass"
        " --data-dir (or set FUSIONJAX_DATA) to the folder that holds it."
    )
  data = decompress(path.read_bytes(), source=str(path))
  return parse_idx(data, source=str(path), ndim=ndim, shape=shape)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> pathlib.Path:
  """Writes ``array`` as an IDX file, gzipped when ``path`` ends in ``.gz``.

  Args:
    path: where to write.
    array: an array of uint8, int8, int16, int32, float32 or float64 with at
      least one dimension.

  Returns:
    The path written.

  Example:
    >>> write_idx("/tmp/labels-idx1-ubyte.gz", np.arange(10, dtype=np.uint8))  # doctest: +SKIP
  """
  array = np.asarray(array)
  code = _KIND_TO_CODE.get((array.dtype.kind, array.dtype.itemsize))
  if code is None or array.ndim == 0 or array.ndim > 255:
    raise TypeError(
        f"IDX cannot hold a {array.dtype} array of {array.ndim} dimensions;"
        " use uint8, int8, int16, int32, float32 or float64 with 1-255 dims."
    )
  header = bytes([0, 0, code, array.ndim]) + np.asarray(
      array.shape, ">u4"
  ).tobytes()
  data = header + np.ascontiguousarray(array, _CODE_TO_DTYPE[code]).tobytes()
  path = pathlib.Path(path)
  if path.suffix == ".gz":
    data = gzip.compress(data, compresslevel=1, mtime=0)
  path.write_bytes(data)
  return path
