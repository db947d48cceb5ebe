"""The training driver: epochs, evaluation, progress bar, JSONL log, checkpoints.

``fit`` is the loop around :func:`~fusionjax.train.make_trainer` that
experiments use. It is deterministic: the data order of epoch ``e`` comes from
``(seed, e)``, the step's RNG key lives in the state, and the data position is
checkpointed with the state, so a resumed run equals the uninterrupted one.
"""
import json
import os
import signal
import time
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from fusionjax import _validate, errors
from fusionjax.data import bootstrap
from fusionjax.ensemble import Ensemble
from fusionjax.fusion import Fusion
from fusionjax.train import _sharding
from fusionjax.train._checkpoint import Checkpointer, check_writable, tree_bytes
from fusionjax.train._trainer import TrainState, make_predictor, make_trainer


class FitResult(NamedTuple):
  """What :func:`fit` returns.

  Attributes:
    state: the final :class:`~fusionjax.train.TrainState`.
    history: one dict per evaluation (also the lines of the JSONL log).
    status: ``'done'`` or ``'interrupted'`` (SIGINT/SIGTERM: checkpoint written).
  """
  state: TrainState
  history: list
  status: str


def _log_softmax_mean(member_logits):
  m = member_logits.shape[0]
  return jax.nn.logsumexp(jax.nn.log_softmax(member_logits, -1), axis=0) - jnp.log(m)


def evaluate(predict: Callable, state: TrainState, x, y, batch_size: int = 1000,
             fused_from_members: Optional[Callable] = None) -> dict:
  """Accuracy, NLL, Brier and ECE of every member and of the fused prediction.

  Args:
    predict: from :func:`~fusionjax.train.make_predict`.
    state: the train state.
    x, y: the evaluation set (numpy).
    batch_size: evaluation batch size.
    fused_from_members: used when ``predict`` has no fusion (default: the mean
      of member probabilities, in log space).

  Returns:
    A flat dict: ``accuracy``, ``nll``, ``brier``, ``ece`` of the fused
    prediction and ``member_accuracy`` / ``member_nll`` lists.
  """
  from fusionjax import metrics  # pylint: disable=g-import-not-at-top
  outs, fused = [], []
  for i in range(0, len(x), batch_size):
    o, f = predict(state, x[i:i + batch_size])
    outs.append(o)
    fused.append(f if f is not None else (fused_from_members or _log_softmax_mean)(o))
  member = jnp.concatenate(outs, axis=1)
  fused = jnp.concatenate(fused, axis=0)
  y = jnp.asarray(y)
  res = {k: float(v) for k, v in metrics.summary(fused, y).items()}
  res["member_accuracy"] = [float(a) for a in metrics.accuracy(member, y)]
  res["member_nll"] = [float(a) for a in metrics.nll(member, y)]
  return res


def as_arrays(data) -> Tuple[np.ndarray, np.ndarray]:
  """``(x, y)`` from a ``(x, y)`` pair or a source with ``.arrays()`` (fusionjax.data)."""
  if hasattr(data, "arrays"):
    a = data.arrays()
    return np.asarray(a["image"]), np.asarray(a["label"])
  return np.asarray(data[0]), np.asarray(data[1])


def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


def _describe(tree) -> list:
  """``'path: dtype[shape]'`` per leaf (JSON: compared on resume)."""
  return [f"{jax.tree_util.keystr(p)}: {jnp.dtype(x.dtype).name}{list(x.shape)}"
          for p, x in jax.tree_util.tree_leaves_with_path(tree)]


def _run_config(ensemble, state, *, batch_size, regime, bagging, seed) -> dict:
  """What a resumed run must share with the saved one (``epochs`` may grow)."""
  cfg = {"members": int(ensemble.size), "member_names": list(ensemble.names),
         "batch_size": int(batch_size), "regime": regime, "bagging": bool(bagging),
         "seed": int(seed), "params": _describe(state.params),
         "optimizer": {"tree": str(jax.tree_util.tree_structure(state.opt_state)),
                       "leaves": _describe(state.opt_state)},
         "fusion_optimizer": {
             "tree": str(jax.tree_util.tree_structure(state.fusion_opt_state)),
             "leaves": _describe(state.fusion_opt_state)}}
  return json.loads(json.dumps(cfg))


def _first_difference(saved, now) -> str:
  """The saved and the current value, or for lists their first differing entry."""
  if isinstance(saved, list) and isinstance(now, list):
    for i, (a, b) in enumerate(zip(saved, now)):
      if a != b:
        return f"entry {i}: saved {a!r}, now {b!r}"
    return f"saved {len(saved)} entries, now {len(now)}"
  if isinstance(saved, dict) and isinstance(now, dict):
    for k in sorted(set(saved) | set(now)):
      if saved.get(k) != now.get(k):
        return f"{k}: " + _first_difference(saved.get(k), now.get(k))
  return f"saved {saved!r}, now {now!r}"


def _host(x) -> np.ndarray:
  """``x`` on the host; a global array spread over several processes is gathered first."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def _write_log(log_path: str, history: list) -> None:
  """Rewrites the JSON-lines log from ``history`` (atomic: write, then rename)."""
  os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
  tmp = f"{log_path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.writelines(json.dumps(h) + "\n" for h in history)
  os.replace(tmp, log_path)


def fit(ensemble: Ensemble, tx: optax.GradientTransformation, train: Tuple[Any, Any], *,
        key: jax.Array, epochs: int, batch_size: int = 128,
        fusion: Optional[Fusion] = None, regime: str = "independent", lam: float = 1.0,
        fusion_tx=None, eval_sets: Optional[Mapping[str, Tuple[Any, Any]]] = None,
        log_path: Optional[str] = None, ckpt_dir: Optional[str] = None,
        ckpt_every: Optional[int] = None, resume: bool = True, mesh=None,
        bagging: bool = False, on_nonfinite: str = "stop", progress: bool = True,
        sync_every: int = 50, handle_signals: bool = True,
        max_steps: Optional[int] = None, seed: int = 0, layout="auto",
        platform: Optional[str] = None) -> FitResult:
  """Trains every member in one jitted step per batch, for ``epochs`` epochs.

  Args:
    ensemble: the ensemble.
    tx: single-member optax transform (applied per member).
    train: ``(x, y)`` numpy arrays, or a ``fusionjax.data`` source.
    key: PRNG key for init, dropout and bagging.
    epochs: passes over the training set.
    batch_size: examples per step (the last partial batch is dropped).
    fusion, regime, lam, fusion_tx: see :func:`~fusionjax.train.make_trainer`.
    eval_sets: name -> ``(x, y)`` (or a source), evaluated after every epoch.
    log_path: a JSON-lines file; one line per epoch (``pandas.read_json(path, lines=True)``).
      It is rewritten from the history saved in the checkpoints, so a resumed
      run's log equals the uninterrupted one's (``time`` is cumulative).
    ckpt_dir: orbax checkpoints (state, data position, key, the run's
      configuration, the log history, checksums); checked for writability
      before training starts.
    ckpt_every: also checkpoint every this many steps (default: each epoch).
    resume: continue from the newest intact checkpoint in ``ckpt_dir``
      (damaged ones are moved to ``ckpt_dir/skipped`` with a warning);
      resuming with another configuration raises
      :class:`~fusionjax.errors.RunConfigMismatchError`. ``resume=False`` where
      checkpoints or the log exist raises
      :class:`~fusionjax.errors.ExistingRunError` (nothing is deleted).
    mesh: a ``('member', 'data')`` mesh to shard the step over.
    bagging: each member trains on its own bootstrap of the training set.
    on_nonfinite: ``'stop'`` raises :class:`~fusionjax.errors.NonFiniteError`
      naming the member and step (no checkpoint of that state is written);
      ``'freeze'`` freezes that member for good (``state.frozen``, kept by
      checkpoints and resumes) and lets the others carry on.
    progress: show a tqdm progress bar.
    sync_every: steps between host reads of the logs (the only host syncs).
    handle_signals: SIGINT/SIGTERM finish the step, checkpoint and return
      ``status='interrupted'``.
    max_steps: stop after this many steps in total, counting those of earlier
      runs that this one resumes (for smoke runs).
    seed: seed of the data order.
    layout, platform: see :func:`~fusionjax.train.make_trainer`. The resolved
      layout is printed, written into every log record and into the
      checkpoints; resuming under another layout raises
      :class:`~fusionjax.errors.LayoutMismatchError`.

  Returns:
    A :class:`FitResult`.
  """
  if on_nonfinite not in ("stop", "freeze"):
    raise ValueError(f"on_nonfinite must be 'stop' or 'freeze'; got {on_nonfinite!r}.")
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
      or batch_size < 1:
    raise errors.BatchSizeError(
        f"fit: batch_size={batch_size!r} must be an int >= 1. Fix: e.g. batch_size=128.")
  if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
    raise errors.TrainConfigError(
        f"fit: epochs={epochs!r} must be an int >= 0. Fix: e.g. epochs=10.")
  x_train, y_train = as_arrays(train)
  n = len(x_train)
  if n == 0 or len(y_train) != n:
    raise errors.BatchShapeError(
        f"train x has {n} examples and y has {len(y_train)}. Fix: pass matching, "
        "non-empty arrays.")
  _validate.finite_inputs(x_train, "fit: the training inputs")
  eval_arrays = {}
  for name, data in (eval_sets or {}).items():
    xe, ye = as_arrays(data)
    if len(xe) == 0 or len(ye) != len(xe):
      raise errors.TrainConfigError(
          f"fit: eval set {name!r} has {len(xe)} inputs and {len(ye)} labels. Fix: pass "
          "a non-empty (x, y) pair of equal length, or leave it out of eval_sets.")
    if xe.shape[1:] != x_train.shape[1:]:
      raise errors.TrainConfigError(
          f"fit: eval set {name!r} has examples of shape {xe.shape[1:]}, the training "
          f"data {x_train.shape[1:]}. Fix: preprocess it as the training data.")
    _validate.finite_inputs(xe, f"fit: eval set {name!r}")
    eval_arrays[name] = (xe, ye)
  batch_size = min(int(batch_size), n)
  steps_per_epoch = n // batch_size
  ckpt = Checkpointer(ckpt_dir) if ckpt_dir else None

  writes = jax.process_index() == 0  # one process writes the log and prints
  k_init, k_bag = jax.random.split(key)
  trainer = make_trainer(ensemble, tx, fusion=fusion, regime=regime, lam=lam,
                         fusion_tx=fusion_tx, per_member=bagging, mesh=mesh, layout=layout,
                         platform=platform, x_example=x_train[:1],
                         freeze_nonfinite=on_nonfinite == "freeze")
  state = trainer.init(k_init, x_train[:1])
  num_classes = jax.eval_shape(
      lambda s, x: ensemble.apply({"params": s.params["members"], "state": s.state}, x)[0],
      state, x_train[:1]).shape[-1]
  y_train = _validate.class_labels(y_train, num_classes, "fit: the training labels")
  eval_arrays = {name: (xe, _validate.class_labels(ye, num_classes,
                                                   f"fit: eval set {name!r}'s labels"))
                 for name, (xe, ye) in eval_arrays.items()}
  if ckpt is not None:
    check_writable(ckpt.directory, need_bytes=3 * tree_bytes(state))
  if mesh is not None:
    state = _sharding.shard_state(state, mesh, ensemble)
  step_fn = trainer.step
  predict = make_predictor(ensemble, fusion, platform=platform).predict
  if mesh is not None:
    # On a mesh (one or several processes) the outputs are replicated, so every
    # process computes the same metrics from the whole evaluation set.
    replicated = NamedSharding(mesh, PartitionSpec())
    sharded_predict = jax.jit(
        make_predictor(ensemble, fusion, layout="vmap", platform=platform, jit=False).predict,
        out_shardings=replicated)
    predict = lambda s, xb: sharded_predict(s, _sharding.put(jnp.asarray(xb), replicated))
  if progress and writes:
    print(f"fusionjax.fit: {ensemble.size} members, layout {trainer.layout}", flush=True)
  boot = bootstrap(k_bag, n, ensemble.size) if bagging else None

  position = {"epoch": 0, "batch": 0}
  history = []
  config = _run_config(ensemble, state, batch_size=batch_size, regime=regime,
                       bagging=bagging, seed=seed)
  elapsed0, last_loss = 0.0, None
  restored = None
  log_exists = bool(log_path) and os.path.exists(log_path)

  def check_meta(step, meta):
    saved_layout = meta.get("layout")
    if saved_layout is not None and saved_layout != trainer.layout:
      raise errors.LayoutMismatchError(
          f"The checkpoint in {ckpt.directory!r} (step {step}) was trained "
          f"with layout {saved_layout!r}, but this run's trainer has layout "
          f"{trainer.layout!r}. Fix: pass layout={saved_layout!r} to resume it, or start "
          "a fresh run in another ckpt_dir.")
    saved_cfg = meta.get("config")
    if saved_cfg is not None and saved_cfg != config:
      diffs = [f"{k} ({_first_difference(saved_cfg.get(k), config.get(k))})"
               for k in sorted(set(saved_cfg) | set(config))
               if saved_cfg.get(k) != config.get(k)]
      raise errors.RunConfigMismatchError(
          f"The checkpoint in {ckpt.directory!r} (step {step}) was written by a run with "
          f"another configuration: {'; '.join(diffs)}. Fix: pass the saved values to "
          "resume it, or start a fresh run in another ckpt_dir.")

  if ckpt is not None:
    if not resume and ckpt.latest_step() is not None:
      raise errors.ExistingRunError(
          f"fit(resume=False): {ckpt.directory!r} holds checkpoints (newest: step "
          f"{ckpt.latest_step()}) of another run; starting over there would mix the two "
          "runs. Fix: pass resume=True to continue it, or another ckpt_dir for a new run.")
    if resume:
      restored = ckpt.restore_newest(state, check_meta)
  if log_exists and restored is None and (ckpt is not None or not resume):
    raise errors.ExistingRunError(
        f"fit: the log {log_path!r} exists but this run does not resume the run that "
        f"wrote it ({'resume=False' if not resume else 'no checkpoint in ' + repr(ckpt.directory)}"
        "); fusionjax never deletes a log. Fix: pass another log_path (or delete that "
        "file yourself), or resume=True with the run's ckpt_dir.")
  if log_exists and restored is None and writes:
    # No ckpt_dir, resume=True: nothing to resume, so this is a new run; the
    # earlier run's log is moved aside, never overwritten.
    stem, ext = os.path.splitext(log_path)
    k = 1
    while os.path.exists(f"{stem}.{k}{ext}"):
      k += 1
    os.replace(log_path, f"{stem}.{k}{ext}")
    warnings.warn(f"fit: {log_path!r} held an earlier run's log and there is no ckpt_dir "
                  f"to resume that run from; it was moved to {stem}.{k}{ext!s}.")
  if restored is not None:
    _, state, position, meta = restored
    history = list(meta.get("history") or [])
    elapsed0 = float(meta.get("elapsed") or 0.0)
    last_loss = meta.get("last_loss")
    if log_path and writes:
      _write_log(log_path, history)

  stop = {"signal": None}
  old_handlers = {}
  if handle_signals:
    def _handler(signum, frame):
      del frame
      stop["signal"] = signum
    for s in (signal.SIGINT, signal.SIGTERM):
      try:
        old_handlers[s] = signal.signal(s, _handler)
      except ValueError:  # not the main thread
        pass

  bar = None
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=epochs * steps_per_epoch, initial=int(state.step), unit="step",
               dynamic_ncols=True, leave=False)

  pending = []
  last_logs = {"loss": last_loss}

  def sync():
    """Reads the pending logs (one host sync) and applies the non-finite policy."""
    nonlocal pending
    if not pending:
      return None
    logs = jax.device_get(pending)
    pending = []
    last_logs["loss"] = float(logs[-1][1]["loss"])
    for step_no, log in logs:
      bad = ~np.asarray(log["finite"])
      if bad.any():
        if on_nonfinite == "stop":
          raise errors.NonFiniteError(
              f"Non-finite loss or gradient in member(s) {np.flatnonzero(bad).tolist()} "
              f"({[ensemble.names[i] for i in np.flatnonzero(bad)]}) at step {step_no}; "
              f"member losses: {np.asarray(log['member_loss']).tolist()}. Their updates "
              "were skipped and no checkpoint of this state was written; the last good "
              f"checkpoint is kept{' in ' + ckpt.directory if ckpt else ''}. Fix: lower "
              "the learning rate, clip gradients, or pass on_nonfinite='freeze'.")
        # on_nonfinite='freeze': the step itself has set state.frozen for them.
    if bar is not None:
      bar.set_postfix(loss=f"{last_logs['loss']:.4f}")
    return logs[-1][1]

  saved = {"step": restored[0] if restored is not None else None}

  def checkpoint():
    if ckpt is not None and saved["step"] != step_no:
      sync()  # never write a state the non-finite policy has not cleared
      ckpt.save(step_no, state, position,
                {"layout": trainer.layout, "config": config, "history": history,
                 "elapsed": elapsed0 + time.time() - t0, "last_loss": last_logs["loss"]})
      saved["step"] = step_no

  status = "done"
  step_no = int(state.step)  # the host's count: no device read per step
  t0 = time.time()
  try:
    while position["epoch"] < epochs:
      epoch = position["epoch"]
      order = _epoch_order(seed, epoch, n)
      for b in range(position["batch"], steps_per_epoch):
        if max_steps and step_no >= max_steps:  # a total, over resumed runs too
          break
        sl = order[b * batch_size:(b + 1) * batch_size]
        if boot is not None:
          idx = boot[:, sl]
          batch = {"x": x_train[idx], "y": y_train[idx]}
        else:
          batch = {"x": x_train[sl], "y": y_train[sl]}
        if mesh is not None:
          batch = _sharding.shard_batch(batch, mesh, per_member=bagging)
        state, logs = step_fn(state, batch)
        pending.append((step_no, logs))
        step_no += 1
        position = {"epoch": epoch, "batch": b + 1}
        if bar is not None:
          bar.update(1)
        if len(pending) >= sync_every:
          sync()
        ending = (b + 1 == steps_per_epoch or stop["signal"] is not None
                  or (max_steps and step_no >= max_steps))
        if ckpt_every and step_no % ckpt_every == 0 and not ending:
          checkpoint()  # (an ending step is checkpointed below, with its record)
        if stop["signal"] is not None or (max_steps and step_no >= max_steps):
          break
      sync()
      if stop["signal"] is not None:
        checkpoint()
        status = "interrupted"
        break
      if position["batch"] >= steps_per_epoch:
        position = {"epoch": epoch + 1, "batch": 0}
      if all(h.get("step") != step_no for h in history):  # records are keyed by step
        record = {"epoch": epoch + 1 if position["batch"] == 0 else epoch,
                  "step": step_no, "time": elapsed0 + time.time() - t0,
                  "layout": trainer.layout, "train_loss": last_logs["loss"],
                  "frozen_members": np.flatnonzero(_host(state.frozen)).tolist()}
        for name, (xe, ye) in eval_arrays.items():
          for k, v in evaluate(predict, state, xe, ye).items():
            record[f"{name}/{k}"] = v
        history.append(record)
      checkpoint()  # the record is in its meta before it is in the log
      if log_path and writes:
        _write_log(log_path, history)
      if max_steps and step_no >= max_steps:
        break
  finally:
    if bar is not None:
      bar.close()
    for s, h in old_handlers.items():
      signal.signal(s, h)
    if ckpt is not None:
      ckpt.close()
  return FitResult(state, history, status)
