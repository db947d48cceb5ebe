"""Host-side checks of user data, run once before any compiled work (no per-step sync)."""
from typing import Optional

import jax
import numpy as np

from fusionjax import errors

try:
  from jax.core import Tracer as _Tracer
except ImportError:  # jax.core's public names are being retired
  from jax._src.core import Tracer as _Tracer  # pylint: disable=g-import-not-at-top


def concrete(*trees) -> bool:
  """Whether no leaf of ``trees`` is a tracer (the values can be read on the host)."""
  return not any(isinstance(a, _Tracer) for a in jax.tree.leaves(trees))


def _first(a, k: int = 5) -> list:
  return np.asarray(a).ravel()[:k].tolist()


def class_labels(labels, num_classes: Optional[int], where: str) -> np.ndarray:
  """``labels`` as int32 ``[N]`` class indices in ``[0, num_classes)``, or a LabelError.

  The error names the dtype or shape, the bad values and their positions, and the fix.
  """
  y = np.asarray(labels)
  if y.ndim == 2 and y.shape[1] == 1:
    raise errors.LabelError(
        f"{where}: labels have shape {y.shape}; class labels are one index per example, "
        f"[N]. Fix: pass y.ravel() (or y[:, 0]).")
  if y.ndim != 1:
    raise errors.LabelError(
        f"{where}: labels have shape {y.shape}; class labels are one integer index per "
        "example, [N] (not one-hot). Fix: pass y.argmax(-1) for one-hot labels.")
  if not np.issubdtype(y.dtype, np.integer):
    integral = np.issubdtype(y.dtype, np.floating) and y.size and np.all(
        np.isfinite(y)) and np.all(y == np.round(y))
    raise errors.LabelError(
        f"{where}: labels have dtype {y.dtype}; class labels are integer indices. Fix: "
        + ("y.astype(np.int32) (the values are whole numbers)." if integral else
           "pass integer class indices in [0, C)."))
  if num_classes is not None and y.size:
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
      raise errors.LabelError(
          f"{where}: {bad.size} label(s) outside [0, {num_classes}) (C={num_classes}): "
          f"values {sorted(set(_first(y[bad], 10)))} at positions "
          f"{_first(bad, 10)}{' ...' if bad.size > 10 else ''}. Fix: pass labels in "
          f"[0, {num_classes}) (e.g. map -1 or other markers out, or re-index the classes), "
          "or build members with more outputs.")
  return y.astype(np.int32)


def finite_inputs(x, where: str) -> None:
  """Raises NonFiniteInputError when a float array holds NaN or Inf (naming positions)."""
  a = np.asarray(x)
  if not np.issubdtype(a.dtype, np.floating):
    return
  flat = a.reshape(len(a), -1) if a.ndim > 1 else a.reshape(-1, 1)
  bad = np.flatnonzero(~np.isfinite(flat).all(axis=1))
  if bad.size:
    raise errors.NonFiniteInputError(
        f"{where}: {bad.size} example(s) hold NaN or Inf, at rows {_first(bad, 10)}"
        f"{' ...' if bad.size > 10 else ''}. Fix: drop or impute those rows "
        "(e.g. x[np.isfinite(x).reshape(len(x), -1).all(1)]).")
