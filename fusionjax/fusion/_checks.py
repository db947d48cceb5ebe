"""Input validation shared by the fusion factories.

Shapes are static under ``jit``, so every check here runs once, at trace time,
and costs nothing in the compiled program. Each raises a class from
:mod:`fusionjax.errors` whose message names the offending shape or value and
the fix.
"""
from typing import Any, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from fusionjax import errors


def _shape(a: Any) -> Any:
  return getattr(a, "shape", None)


def member_outputs(
    outputs: Any,
    *,
    fusion: str,
    num_members: Optional[int] = None,
    what: str = "member_outputs",
    kind: str = "logits",
) -> tuple[int, int, int]:
  """Checks that ``outputs`` is a floating ``[M, B, C]`` array; returns (M, B, C)."""
  shape = _shape(outputs)
  if shape is None or len(shape) != 3:
    raise errors.MemberOutputsError(
        f"{fusion}: {what} must be [M, B, C] {kind} with the member axis "
        f"first; got shape {shape}. Fix: stack the members' outputs on a new "
        "leading axis (the ensemble's apply does this), e.g. "
        "jnp.stack([out_1, out_2]); a single model's [B, C] output is "
        "out[None].")
  m, b, c = (int(d) for d in shape)
  if m < 1 or c < 1:
    raise errors.MemberOutputsError(
        f"{fusion}: {what} of shape {tuple(shape)} has no members or no "
        "classes. Fix: pass at least one member (M >= 1) with C >= 1 outputs.")
  if not jnp.issubdtype(outputs.dtype, jnp.floating):
    raise errors.MemberOutputsError(
        f"{fusion}: {what} must be floating {kind}; got dtype "
        f"{outputs.dtype} (shape {tuple(shape)}). Fix: pass "
        f"{what}.astype(jnp.float32).")
  if num_members is not None and m != num_members:
    raise errors.MemberOutputsError(
        f"{fusion} was built for num_members={num_members}; got {what} of "
        f"shape {tuple(shape)} with M={m}. Fix: build it with "
        f"num_members={m}, or select {num_members} members first "
        "(fusionjax.fusion.select).")
  return m, b, c


def weights(
    w: Any,
    *,
    fusion: str,
    num_members: Optional[int] = None,
    per_class: bool = False,
    normalise: bool = True,
) -> np.ndarray:
  """Validates fusion weights; returns float64 numpy weights (normalised over members)."""
  want = "[M, C] (one weight per member and class)" if per_class else "[M]"
  try:
    arr = np.asarray(w, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise errors.WeightsError(
        f"{fusion}: weights must be numbers of shape {want}; got {w!r} "
        f"({e}). Fix: pass a list of floats, one per member.") from None
  ndim = 2 if per_class else 1
  if arr.ndim != ndim:
    raise errors.WeightsError(
        f"{fusion}: weights must have shape {want}; got shape {arr.shape} "
        f"({arr.tolist()!r}). Fix: pass "
        + ("a [num_members, num_classes] array." if per_class else
           "one weight per member, e.g. [0.5, 0.3, 0.2]."))
  if num_members is not None and arr.shape[0] != num_members:
    raise errors.WeightsError(
        f"{fusion}: got {arr.shape[0]} weights {arr.tolist()!r} (shape "
        f"{arr.shape}) for {num_members} members. Fix: pass exactly one "
        f"weight per member ({num_members}), in member order.")
  if arr.shape[0] < 1:
    raise errors.WeightsError(
        f"{fusion}: weights are empty (shape {arr.shape}). Fix: pass one "
        "weight per member.")
  if not np.all(np.isfinite(arr)):
    raise errors.WeightsError(
        f"{fusion}: weights must be finite; got {arr.tolist()!r}. Fix: "
        "replace NaN/inf entries by non-negative numbers.")
  if np.any(arr < 0):
    bad = (np.flatnonzero(arr < 0) if arr.ndim == 1 else
           np.argwhere(arr < 0)).tolist()
    raise errors.WeightsError(
        f"{fusion}: weights must be non-negative; got {arr.tolist()!r} "
        f"(negative at index {bad}). Fix: use weights >= 0 (a member with "
        "weight 0 is ignored).")
  sums = arr.sum(axis=0)
  if np.any(sums <= 0):
    where = ("" if not per_class else
             f" for classes {np.flatnonzero(sums <= 0).tolist()}")
    raise errors.WeightsError(
        f"{fusion}: weights are all zero{where}: {arr.tolist()!r}. Fix: give "
        "at least one member a positive weight"
        + (" in every class column." if per_class else "."))
  return arr / sums if normalise else arr


def weights_match(w: Optional[np.ndarray], m: int, *, fusion: str) -> None:
  """Checks that weights fixed before the member count was known fit M."""
  if w is not None and w.shape[0] != m:
    raise errors.WeightsError(
        f"{fusion}: got {w.shape[0]} weights {w.tolist()!r} for member "
        f"outputs with M={m} members. Fix: pass exactly one weight per "
        f"member ({m}), in member order.")


def flat_input(
    x: Any,
    batch: int,
    *,
    fusion: str,
    features: Optional[int] = None,
) -> Any:
  """Checks the raw input ``x`` [B, ...] and returns it flattened to [B, D]."""
  if x is None:
    raise errors.FusionInputError(
        f"{fusion} reads the input batch x, but x=None. Fix: pass "
        "x=<the [B, ...] inputs that produced the member outputs> to both "
        "init and apply.")
  shape = _shape(x)
  if shape is None or len(shape) < 1 or int(shape[0]) != batch:
    raise errors.FusionInputError(
        f"{fusion}: x of shape {shape} does not match the member outputs' "
        f"batch size B={batch}. Fix: pass the [B, ...] input batch that "
        "produced the member outputs (same B, same order).")
  flat = jnp.reshape(x, (batch, -1))
  if not jnp.issubdtype(flat.dtype, jnp.floating):
    flat = flat.astype(jnp.float32)
  if features is not None and flat.shape[1] != features:
    raise errors.FusionInputError(
        f"{fusion}: x of shape {tuple(shape)} flattens to "
        f"{flat.shape[1]} features, but the params were built for "
        f"{features}. Fix: pass inputs with the trailing dims used at init "
        "(or re-run init).")
  return flat


def option(value: Any, choices: Sequence[Any], *, fusion: str,
           name: str) -> Any:
  if value not in choices:
    raise errors.FusionConfigError(
        f"{fusion}: unknown {name}={value!r}. Fix: use one of "
        f"{list(choices)!r}.")
  return value


def sizes(hidden: Any, *, fusion: str) -> tuple[int, ...]:
  """Normalises a hidden-layer spec (None, int or sequence) to a tuple."""
  if hidden is None:
    return ()
  hs = (hidden,) if isinstance(hidden, (int, np.integer)) else tuple(hidden)
  if not all(isinstance(h, (int, np.integer)) and h >= 1 for h in hs):
    raise errors.FusionConfigError(
        f"{fusion}: hidden={hidden!r} must be None (linear), a positive int "
        "or a sequence of positive ints. Fix: e.g. hidden=32 or "
        "hidden=(64, 32).")
  return tuple(int(h) for h in hs)


def positive_int(value: Any, *, fusion: str, name: str) -> int:
  if not isinstance(value, (int, np.integer)) or value < 1:
    raise errors.FusionConfigError(
        f"{fusion}: {name} must be a positive int; got {value!r}. Fix: pass "
        f"{name} >= 1.")
  return int(value)


def as_fused(out: Any, *, where: str, hint: str) -> Any:
  """A stage's or branch's output as ``[B, C]``; ``[1, B, C]`` is squeezed."""
  shape = _shape(out)
  if shape is not None and len(shape) == 3 and int(shape[0]) == 1:
    return out[0]
  if shape is None or len(shape) != 2:
    raise errors.MemberOutputsError(
        f"{where} returned shape {shape}; it must return fused [B, C] "
        f"log-probabilities (or a single member, [1, B, C]). Fix: {hint}")
  return out


def same_classes(outs: Sequence[Any], *, what: str) -> None:
  """All ``[B, C]`` outputs share B and C, else StageClassesError."""
  shapes = [tuple(int(d) for d in o.shape) for o in outs]
  if len(set(shapes)) > 1:
    listing = ", ".join(f"{what} {i}: {s}" for i, s in enumerate(shapes))
    raise errors.StageClassesError(
        f"{what}s disagree on their [B, C] output shapes ({listing}). Fix: "
        "make every one output the same number of classes C (and batch B).")
