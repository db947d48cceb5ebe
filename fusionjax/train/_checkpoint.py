"""Checkpoints with orbax-checkpoint: atomic, code-free, resumable.

A checkpoint holds the whole :class:`~fusionjax.train.TrainState` (params,
optimizer state, step, RNG key) and the data position (epoch, batch). orbax
writes to a temporary directory and renames it when complete, so a process
killed at any moment leaves the previous checkpoint readable. Nothing here
unpickles a file.
"""
import os
import shutil
import tempfile
from typing import Any, Optional

import jax
import numpy as np

from fusionjax import errors


def _ocp():
  """``orbax.checkpoint``, imported on first use (0.2 s off ``import fusionjax``)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp


def tree_bytes(tree) -> int:
  """Bytes of the arrays in ``tree``."""
  return sum(getattr(x, "nbytes", 0) for x in jax.tree_util.tree_leaves(_to_saveable(tree)))


def check_writable(directory: str, need_bytes: int = 0) -> None:
  """Raises :class:`~fusionjax.errors.CheckpointDirError` unless ``directory`` takes a file.

  Called before training starts, so a bad directory (unwritable, or with less
  free space than ``need_bytes``) is reported at once.
  """
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".fusionjax-write-test-") as f:
      f.write(b"\0" * 4096)
      f.flush()
      os.fsync(f.fileno())
  except OSError as e:
    raise errors.CheckpointDirError(
        f"Cannot write checkpoints to {directory!r}: {e.strerror or e}. "
        "Fix: pass a writable directory with free space (ckpt_dir=...).") from e
  if need_bytes:
    free = shutil.disk_usage(directory).free
    if free < need_bytes:
      raise errors.CheckpointDirError(
          f"{directory!r} has {free / 2**20:.1f} MiB free but a checkpoint needs about "
          f"{need_bytes / 2**20:.1f} MiB (two are kept while the next is written). "
          "Fix: free disk space or choose another ckpt_dir.")


def _to_saveable(tree):
  """Typed PRNG keys become their raw uint32 data (orbax saves plain arrays)."""
  return jax.tree.map(
      lambda x: jax.random.key_data(x)
      if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x,
      tree)


def _from_saveable(tree, like):
  return jax.tree.map(
      lambda x, l: jax.random.wrap_key_data(x, impl=jax.random.key_impl(l))
      if isinstance(l, jax.Array) and jax.dtypes.issubdtype(l.dtype, jax.dtypes.prng_key) else x,
      tree, like)


class Checkpointer:
  """A thin wrapper over ``orbax.checkpoint.CheckpointManager``.

  Args:
    directory: where checkpoints live (one sub-directory per step).
    max_to_keep: how many to keep (at least 1; the newest are kept).
  """

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    check_writable(self.directory)
    ocp = _ocp()
    self._mgr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max(1, max_to_keep),
                                             create=True, enable_async_checkpointing=False))

  def latest_step(self) -> Optional[int]:
    return self._mgr.latest_step()

  def save(self, step: int, state: Any, position: dict, meta: Optional[dict] = None) -> None:
    """Saves ``state``, the data ``position`` and the run's ``meta`` (JSON: e.g. the
    layout) at ``step`` (blocking, atomic)."""
    item = {"state": _to_saveable(state),
            "position": {k: np.asarray(v, np.int64) for k, v in position.items()}}
    kept = self.latest_step()
    ocp = _ocp()
    try:
      self._mgr.save(int(step), args=ocp.args.Composite(
          item=ocp.args.StandardSave(item), meta=ocp.args.JsonSave(dict(meta or {}))),
                     force=True)
      self._mgr.wait_until_finished()
    except OSError as e:
      # orbax writes into a temporary directory and renames it when complete,
      # so a failed save leaves the previous checkpoint as it was.
      raise errors.CheckpointDirError(
          f"Saving the checkpoint of step {step} to {self.directory!r} failed: "
          f"{e.strerror or e}. The previous checkpoint (step {kept}) is intact and "
          "a restart resumes from it. Fix: free disk space or choose another "
          "ckpt_dir.") from e

  def meta(self, step: Optional[int] = None) -> dict:
    """The JSON ``meta`` saved with the checkpoint at ``step`` (default: the latest)."""
    step = self.latest_step() if step is None else step
    ocp = _ocp()
    return dict(self._mgr.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"] or {})

  def restore(self, state_like: Any, step: Optional[int] = None):
    """Restores ``(state, position)``; ``state_like`` gives structure, dtypes, shardings."""
    step = self.latest_step() if step is None else step
    like = {"state": _to_saveable(state_like),
            "position": {"epoch": np.zeros((), np.int64), "batch": np.zeros((), np.int64)}}
    ocp = _ocp()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    item = self._mgr.restore(step, args=ocp.args.Composite(
        item=ocp.args.StandardRestore(abstract)))["item"]
    state = _from_saveable(item["state"], state_like)
    state = type(state_like)(*state) if isinstance(state_like, tuple) and not isinstance(
        state, type(state_like)) else state
    return state, {k: int(v) for k, v in item["position"].items()}

  def close(self):
    self._mgr.close()
