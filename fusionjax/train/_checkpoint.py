"""Checkpoints with orbax-checkpoint: atomic, code-free, resumable.

A checkpoint holds the whole :class:`~fusionjax.train.TrainState` (params,
optimizer state, step, RNG key) and the data position (epoch, batch). orbax
writes to a temporary directory and renames it when complete, so a process
killed at any moment leaves the previous checkpoint readable. Nothing here
unpickles a file.
"""
import hashlib
import os
import shutil
import tempfile
import warnings
from typing import Any, Callable, Optional

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


def _item(state, position) -> dict:
  """What is saved: the state (keys as raw data) and the data position as int64."""
  return {"state": _to_saveable(state),
          "position": {k: np.asarray(v, np.int64) for k, v in position.items()}}


def _leaf_digest(x) -> str:
  """sha256 of a leaf's dtype, shape and bytes (this process's shards only)."""
  h = hashlib.sha256()
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    for shard in sorted(x.addressable_shards, key=lambda s: str(s.index)):
      a = np.asarray(shard.data)
      h.update(f"{shard.index}{a.dtype}{a.shape}".encode())
      h.update(np.ascontiguousarray(a).tobytes())
  else:
    a = np.asarray(jax.device_get(x))
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def checksums(state, position) -> list:
  """One sha256 per leaf of the saved item (host arrays of this process)."""
  return [_leaf_digest(x) for x in jax.tree_util.tree_leaves(_item(state, position))]


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
    item = _item(state, position)
    meta = dict(meta or {})
    # Verified by restore_newest: a flipped bit in a data file is caught.
    meta["checksums"] = {str(jax.process_index()): checksums(state, position)}
    kept = self.latest_step()
    ocp = _ocp()
    try:
      self._mgr.save(int(step), args=ocp.args.Composite(
          item=ocp.args.StandardSave(item), meta=ocp.args.JsonSave(meta)),
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

  def _skip(self, step: int, reason: str) -> str:
    """Moves the step's folder to ``skipped/<step>-<reason>`` (outside orbax's
    step folders, so its clean-up never deletes it); returns the new path."""
    skipped = os.path.join(self.directory, "skipped")
    os.makedirs(skipped, exist_ok=True)
    dest = os.path.join(skipped, f"{step}-{reason}")
    i = 1
    while os.path.exists(dest):
      i += 1
      dest = os.path.join(skipped, f"{step}-{reason}-{i}")
    os.rename(os.path.join(self.directory, str(step)), dest)
    self._mgr.reload()
    return dest

  def restore_newest(self, state_like: Any, check_meta: Optional[Callable] = None):
    """Restores the newest checkpoint that is intact.

    Steps are tried newest first. A checkpoint whose meta or data cannot be
    read, or whose data do not match the checksums saved with it, is moved to
    ``<directory>/skipped/<step>-<reason>`` with a warning, and the next older
    one is tried. ``check_meta(step, meta)`` may raise to refuse a checkpoint
    that is intact but belongs to another configuration (not damage: nothing
    is moved).

    Returns:
      ``(step, state, position, meta)``, or ``None`` when there is no checkpoint.

    Raises:
      :class:`~fusionjax.errors.NoUsableCheckpointError` when checkpoints exist
      but none restores.
    """
    tried = []
    for step in sorted(self._mgr.all_steps(), reverse=True):
      try:
        meta = self.meta(step)
      except Exception as e:  # pylint: disable=broad-except
        reason, detail = "unreadable-meta", f"{type(e).__name__}: {e}"
      else:
        if check_meta is not None:
          check_meta(step, meta)
        try:
          state, position = self.restore(state_like, step)
        except Exception as e:  # pylint: disable=broad-except
          reason, detail = "unreadable", f"{type(e).__name__}: {e}"
        else:
          want = (meta.get("checksums") or {}).get(str(jax.process_index()))
          if want is None or want == checksums(state, position):
            return step, state, position, meta
          reason, detail = "checksum-mismatch", "its data differ from the checksums saved with it"
      dest = self._skip(step, reason)
      detail = " ".join(detail.split())
      detail = detail if len(detail) < 300 else detail[:300] + "..."
      warnings.warn(f"fusionjax: the checkpoint of step {step} in {self.directory!r} is "
                    f"damaged ({reason}: {detail}); moved it to {dest!r} and trying the "
                    "next older one.", RuntimeWarning, stacklevel=2)
      tried.append(f"step {step}: {reason} (moved to {dest})")
    if tried:
      raise errors.NoUsableCheckpointError(
          f"No checkpoint in {self.directory!r} restores; tried {'; '.join(tried)}. "
          f"Fix: start a fresh run in another ckpt_dir (the damaged checkpoints are kept "
          f"in {os.path.join(self.directory, 'skipped')!r} for inspection).")
    return None

  def close(self):
    self._mgr.close()
