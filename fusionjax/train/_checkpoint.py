"""Checkpoints with orbax-checkpoint: atomic, code-free, resumable.

A checkpoint is an orbax Composite of orbax's and grain's own handlers:

* ``item``: the :class:`~fusionjax.train.TrainState` without its key
  (params, optimizer state, step, frozen members) and any extra arrays
  (``StandardSave``);
* ``key``: the state's RNG key (``JaxRandomKeySave``: typed keys as such);
* ``data``: the data pipeline's grain iterator (``grain.checkpoint.
  CheckpointSave``), so a resume continues the exact data order;
* ``meta``: JSON (``JsonSave``): the run's configuration, history, checksums.

orbax writes to a temporary directory and renames it when complete, so a
process killed at any moment leaves the previous checkpoint readable. Nothing
here unpickles a file.
"""
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from typing import Any, Callable, Optional

import jax
import numpy as np

from fusionjax import errors


class _QuietKeyMerge(logging.Filter):
  """Drops orbax's warning that the RNG key's one small array has no OCDBT
  sub-directories to merge (every save of ``JaxRandomKeySave`` logs it)."""

  def filter(self, record):
    return "Skipping merge of OCDBT checkpoints" not in record.getMessage()


def _ocp():
  """``orbax.checkpoint``, imported on first use (0.2 s off ``import fusionjax``)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  absl = logging.getLogger("absl")
  if not any(isinstance(f, _QuietKeyMerge) for f in absl.filters):
    absl.addFilter(_QuietKeyMerge())
  return ocp


def tree_bytes(tree) -> int:
  """Bytes of the arrays in ``tree``."""
  leaves = [jax.random.key_data(x) if isinstance(x, jax.Array) and jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key) else x for x in jax.tree_util.tree_leaves(tree)]
  return sum(getattr(x, "nbytes", 0) for x in leaves)


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


def _split_key(state):
  """``(state without its RNG key, the key)``: orbax saves the key with its own handler."""
  if hasattr(state, "key") and hasattr(state, "_replace"):
    return state._replace(key=None), state.key
  return state, None


def _leaf_digest(x) -> str:
  """sha256 of a leaf's dtype, shape and bytes (this process's shards only)."""
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
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


def checksums(state, position, extra=None) -> list:
  """One sha256 per leaf of the state (key included) and ``extra``, and one of the
  data position (the grain iterator's JSON state)."""
  digests = [_leaf_digest(x) for x in jax.tree_util.tree_leaves((state, extra))]
  pos = json.dumps(position, sort_keys=True).encode()
  return digests + [hashlib.sha256(pos).hexdigest()]


def _position_iterator(position: Optional[dict] = None):
  """A grain iterator that only carries a data position (for reading or writing one)."""
  import grain  # pylint: disable=g-import-not-at-top
  it = iter(grain.MapDataset.range(1 << 62).to_iter_dataset(
      grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))
  if position is not None:
    it.set_state(dict(position))
  return it


class Checkpointer:
  """A thin wrapper over ``orbax.checkpoint.CheckpointManager``.

  Args:
    directory: where checkpoints live (one sub-directory per step).
    max_to_keep: how many to keep (at least 1; the newest are kept).
  """

  def __init__(self, directory: str, max_to_keep: int = 2, best_metric: Optional[str] = None,
               best_mode: str = "min"):
    self.directory = os.path.abspath(directory)
    check_writable(self.directory)
    ocp = _ocp()
    best = {}
    if best_metric is not None:
      # orbax keeps the max_to_keep best checkpoints by this metric.
      best = dict(best_fn=lambda metrics: metrics[best_metric], best_mode=best_mode,
                  keep_checkpoints_without_metrics=False)
    self._mgr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max(1, max_to_keep),
                                             create=True, enable_async_checkpointing=False,
                                             **best))

  def best_step(self) -> Optional[int]:
    """The step of the best checkpoint (with ``best_metric``; else the latest)."""
    return self._mgr.best_step()

  def latest_step(self) -> Optional[int]:
    return self._mgr.latest_step()

  def save(self, step: int, state: Any, data: Any, meta: Optional[dict] = None,
           extra: Any = None, metrics: Optional[dict] = None) -> None:
    """Saves ``state``, the data position, the run's ``meta`` (JSON: e.g. the
    layout) and ``extra`` arrays at ``step`` (blocking, atomic).

    ``data`` is the data pipeline's grain iterator, or its state (a dict such
    as ``{'next_index': 8}``); ``metrics`` rank checkpoints for ``best_metric``.
    """
    import grain  # pylint: disable=g-import-not-at-top
    it = data if hasattr(data, "get_state") else _position_iterator(data)
    position = it.get_state()
    meta = dict(meta or {})
    # Verified by restore_newest: a flipped bit in a data file is caught.
    meta["checksums"] = {str(jax.process_index()): checksums(state, position, extra)}
    kept = self.latest_step()
    ocp = _ocp()
    bare, key = _split_key(state)
    items = {"item": ocp.args.StandardSave({"state": bare, "extra": extra}),
             "data": grain.checkpoint.CheckpointSave(it),
             "meta": ocp.args.JsonSave(meta)}
    if key is not None:
      items["key"] = ocp.args.JaxRandomKeySave(key)
    try:
      self._mgr.save(int(step), args=ocp.args.Composite(**items), metrics=metrics, force=True)
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

  def restore(self, state_like: Any, step: Optional[int] = None, data: Any = None,
              extra_like: Any = None, with_extra: bool = False):
    """Restores ``(state, position)`` (and ``extra`` with ``with_extra``).

    ``state_like`` gives structure, dtypes and shardings; ``data`` (a grain
    iterator of the same pipeline) is set to the saved position; ``position``
    is the iterator's state, e.g. ``{'next_index': 8}``.
    """
    import grain  # pylint: disable=g-import-not-at-top
    step = self.latest_step() if step is None else step
    bare, key_like = _split_key(state_like)
    ocp = _ocp()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                            {"state": bare, "extra": extra_like})
    it = data if data is not None else _position_iterator()
    items = {"item": ocp.args.StandardRestore(abstract),
             "data": grain.checkpoint.CheckpointRestore(it)}
    if key_like is not None:
      sharding = getattr(key_like, "sharding", None)
      items["key"] = ocp.args.JaxRandomKeyRestore(
          restore_args=ocp.ArrayRestoreArgs(sharding=sharding) if sharding else None)
    out = self._mgr.restore(step, args=ocp.args.Composite(**items))
    state = out["item"]["state"]
    state = type(state_like)(*state) if isinstance(state_like, tuple) and not isinstance(
        state, type(state_like)) else state
    if key_like is not None:
      key = out["key"]
      if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key, impl=jax.random.key_impl(key_like))
      state = state._replace(key=key)
    position = it.get_state()
    if with_extra:
      return state, position, out["item"]["extra"]
    return state, position

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

  def restore_newest(self, state_like: Any, check_meta: Optional[Callable] = None,
                     data: Any = None, extra_like: Any = None):
    """Restores the newest checkpoint that is intact.

    Steps are tried newest first. A checkpoint whose meta or data cannot be
    read, or whose data do not match the checksums saved with it, is moved to
    ``<directory>/skipped/<step>-<reason>`` with a warning, and the next older
    one is tried. ``check_meta(step, meta)`` may raise to refuse a checkpoint
    that is intact but belongs to another configuration (not damage: nothing
    is moved).

    Returns:
      ``(step, state, position, meta, extra)``, or ``None`` when there is no
      checkpoint; ``data`` (a grain iterator) is set to the saved position.

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
          state, position, extra = self.restore(state_like, step, data=data,
                                                extra_like=extra_like, with_extra=True)
        except Exception as e:  # pylint: disable=broad-except
          reason, detail = "unreadable", f"{type(e).__name__}: {e}"
        else:
          want = (meta.get("checksums") or {}).get(str(jax.process_index()))
          if want is None or want == checksums(state, position, extra):
            return step, state, position, meta, extra
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
