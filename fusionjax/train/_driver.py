"""The training driver: epochs, evaluation, progress bar, JSONL log, checkpoints.

``fit`` is the loop around :func:`~fusionjax.train.make_trainer` that
experiments use. It is deterministic: the data order of epoch ``e`` comes from
``(seed, e)``, the step's RNG key lives in the state, and the data position is
checkpointed with the state, so a resumed run equals the uninterrupted one.
"""
import hashlib
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
from fusionjax.train._losses import cross_entropy, gaussian_params
from fusionjax.train._trainer import TrainState, make_predictor, make_trainer


class FitResult(NamedTuple):
  """What :func:`fit` returns.

  Attributes:
    state: the final :class:`~fusionjax.train.TrainState`; with
      ``early_stopping='ensemble'`` the state of the best evaluation, with
      ``early_stopping='member'`` the final state with each member's params
      from that member's best evaluation.
    history: one dict per evaluation (also the lines of the JSONL log).
    status: ``'done'``, ``'stopped_early'`` or ``'interrupted'``
      (SIGINT/SIGTERM: checkpoint written).
    bootstrap: with ``bagging=True``, the bootstrap indices ``[M, N]`` each
      member trained on (``fj.data.out_of_bag(bootstrap, N)`` gives the
      out-of-bag mask); else ``None``.
    best: with ``early_stopping``, ``{'metric', 'mode', 'value', 'step'}``
      (per member: lists of values and steps); else ``None``.
  """
  state: TrainState
  history: list
  status: str
  bootstrap: Optional[np.ndarray] = None
  best: Optional[dict] = None


def _log_softmax_mean(member_logits):
  m = member_logits.shape[0]
  return jax.nn.logsumexp(jax.nn.log_softmax(member_logits, -1), axis=0) - jnp.log(m)


def _regression_summary(member_out, y) -> dict:
  """RMSE (and Gaussian NLL for ``[M, N, 2]`` heads) of each member and of the mixture."""
  from fusionjax import metrics  # pylint: disable=g-import-not-at-top
  y = jnp.asarray(y, jnp.float32)
  if member_out.shape[-1] == 2:
    mean, var = gaussian_params(member_out)  # [M, N]
    mix_mean = jnp.mean(mean, 0)
    # The ensemble is the uniform mixture, moment-matched to one Gaussian (Deep Ensembles).
    mix_var = jnp.mean(var + mean ** 2, 0) - mix_mean ** 2
    res = {"rmse": float(jnp.sqrt(jnp.mean((mix_mean - y) ** 2))),
           "nll": float(metrics.gaussian_nll(mix_mean, jnp.maximum(mix_var, 1e-6), y)),
           "member_rmse": [float(v) for v in jnp.sqrt(jnp.mean((mean - y) ** 2, -1))],
           "member_nll": [float(metrics.gaussian_nll(mean[m], var[m], y))
                          for m in range(mean.shape[0])]}
    return res
  pred = member_out[..., 0] if member_out.ndim == 3 else member_out
  return {"rmse": float(jnp.sqrt(jnp.mean((jnp.mean(pred, 0) - y) ** 2))),
          "member_rmse": [float(v) for v in jnp.sqrt(jnp.mean((pred - y) ** 2, -1))]}


def evaluate(predict: Callable, state: TrainState, x, y, batch_size: int = 1000,
             fused_from_members: Optional[Callable] = None, task: str = "classification"
             ) -> dict:
  """Metrics of every member and of the fused prediction.

  Args:
    predict: from :func:`~fusionjax.train.make_predict`.
    state: the train state.
    x, y: the evaluation set (numpy).
    batch_size: evaluation batch size.
    fused_from_members: used when ``predict`` has no fusion (default: the mean
      of member probabilities, in log space).
    task: ``'classification'`` or ``'regression'`` (members output ``[..., 2]``
      Gaussian heads, see :func:`~fusionjax.train.gaussian_nll`, or point
      predictions).

  Returns:
    A flat dict. Classification: ``accuracy``, ``nll``, ``brier``, ``ece`` of
    the fused prediction and per-member lists ``member_accuracy``,
    ``member_nll``, ``member_brier``, ``member_ece``. Regression: ``rmse``,
    ``nll`` (the members' moment-matched Gaussian mixture) and per-member
    ``member_rmse``, ``member_nll``.
  """
  from fusionjax import metrics  # pylint: disable=g-import-not-at-top
  outs, fused = [], []
  for i in range(0, len(x), batch_size):
    o, f = predict(state, x[i:i + batch_size])
    outs.append(o)
    if task == "classification":
      fused.append(f if f is not None else (fused_from_members or _log_softmax_mean)(o))
  member = jnp.concatenate(outs, axis=1)
  if task == "regression":
    return _regression_summary(member, y)
  fused = jnp.concatenate(fused, axis=0)
  y = jnp.asarray(y)
  res = {k: float(v) for k, v in metrics.summary(fused, y).items()}
  # One compiled call gives every member's four numbers ([M] each).
  for k, v in metrics.summary(member, y).items():
    res[f"member_{k}"] = [float(a) for a in v]
  return res


def as_arrays(data) -> Tuple[np.ndarray, np.ndarray]:
  """``(x, y)`` from a ``(x, y)`` pair or a source with ``.arrays()`` (fusionjax.data)."""
  if hasattr(data, "arrays"):
    a = data.arrays()
    return np.asarray(a["image"]), np.asarray(a["label"])
  return np.asarray(data[0]), np.asarray(data[1])


def set_member_hparams(state: TrainState, **values) -> TrainState:
  """Sets optax hyper-parameters per member, e.g. a learning rate per member.

  The member optimizer must be built with ``optax.inject_hyperparams`` (its
  hyper-parameters then live in the optimizer state, one value per member on
  the stacked member axis):

  >>> tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)   # doctest: +SKIP
  >>> state = fj.train.set_member_hparams(state, learning_rate=[1e-3, 3e-3, 1e-2])  # doctest: +SKIP

  ``fit(..., member_hparams={'learning_rate': [...]})`` does this after init.

  Raises:
    TrainConfigError: no injected hyper-parameter of that name, or not one
      value per member.
  """
  found = set()

  def is_inject(x):
    return isinstance(x, optax.InjectHyperparamsState) or (
        hasattr(x, "hyperparams") and isinstance(getattr(x, "hyperparams"), dict))

  def set_one(node):
    if not is_inject(node):
      return node
    hp = dict(node.hyperparams)
    for name, v in values.items():
      if name in hp:
        old = hp[name]
        new = jnp.asarray(v, dtype=jnp.asarray(old).dtype)
        if new.shape != jnp.shape(old):
          raise errors.TrainConfigError(
              f"member_hparams[{name!r}] has shape {new.shape}; the members' optimizer "
              f"state holds it as {jnp.shape(old)} (one value per member). Fix: pass "
              f"{jnp.shape(old)[0] if jnp.ndim(old) else 'M'} values.")
        hp[name] = new
        found.add(name)
    return node._replace(hyperparams=hp)

  opt = jax.tree.map(set_one, state.opt_state, is_leaf=is_inject)
  missing = sorted(set(values) - found)
  if missing:
    raise errors.TrainConfigError(
        f"member_hparams names {missing}, which the members' optimizer does not inject. "
        "Fix: build tx with optax.inject_hyperparams, e.g. "
        "optax.inject_hyperparams(optax.adam)(learning_rate=1e-3).")
  return state._replace(opt_state=opt)


def _describe(tree) -> list:
  """``'path: dtype[shape]'`` per leaf (JSON: compared on resume)."""
  def dtype(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return str(x.dtype)
    return jnp.dtype(x.dtype).name
  return [f"{jax.tree_util.keystr(p)}: {dtype(x)}{list(x.shape)}"
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


def _initial_state(trainer, ensemble, tx, init, k_init, x_example, regime):
  """The fresh state, or one started from ``init`` (a TrainState or member variables)."""
  state = trainer.init(k_init, x_example)
  if init is None:
    return state
  if isinstance(init, TrainState):
    given = init
  elif isinstance(init, Mapping) and "params" in init:
    params = {"members": init["params"], "fusion": state.params["fusion"]}
    if regime == "frozen":
      opt = ()
    elif getattr(ensemble, "shared", None):  # one network, one optimizer state
      opt = tx.init(params["members"])
    else:
      opt = ensemble.member_map(tx.init, params["members"])
    given = state._replace(params=params, state=init.get("state", state.state), opt_state=opt)
  else:
    raise errors.TrainConfigError(
        f"fit(init=...) takes a TrainState or member variables {{'params': ..., 'state': "
        f"...}} stacked on the member axis; got {type(init).__name__}. Fix: pass "
        "result.state of an earlier fit, or {'params': state.params['members'], "
        "'state': state.state}.")
  want, got = _describe(state), _describe(given)
  if want != got:
    raise errors.TrainConfigError(
        f"fit(init=...): the given state does not fit this ensemble and optimizer "
        f"({_first_difference(want, got)}; first is what this run builds). Fix: pass the "
        "variables of an ensemble of the same members, or a state made with the same tx.")
  return _copy(given)  # the step donates its input: the caller's arrays stay usable


class _Stopper:
  """Early stopping on one metric; ``per='member'`` tracks every member's best."""

  def __init__(self, per, metric, patience, mode, size):
    self.per, self.metric, self.patience, self.mode = per, metric, patience, mode
    n = size if per == "member" else 1
    self.best = [None] * n
    self.best_step = [None] * n
    self.bad = 0

  def better(self, new, old):
    return old is None or (new < old if self.mode == "min" else new > old)

  def update(self, record, step):
    """Returns the improved members (bool list) and whether to stop."""
    value = record.get(self.metric)
    if value is None:
      raise errors.TrainConfigError(
          f"early stopping monitors {self.metric!r}, which the evaluation does not give; "
          f"it gives {sorted(k for k in record if '/' in k)}. Fix: pass monitor= one of "
          "those (the eval_sets name, a slash, the metric).")
    values = value if isinstance(value, list) else [value]
    improved = [self.better(v, b) for v, b in zip(values, self.best)]
    for i, ok in enumerate(improved):
      if ok:
        self.best[i], self.best_step[i] = values[i], step
    self.bad = 0 if any(improved) else self.bad + 1
    return improved, self.bad >= self.patience

  def to_json(self):
    return {"best": self.best, "best_step": self.best_step, "bad": self.bad}

  def load(self, saved):
    self.best, self.best_step, self.bad = saved["best"], saved["best_step"], saved["bad"]

  def summary(self):
    one = self.per != "member"
    return {"metric": self.metric, "mode": self.mode, "per": self.per,
            "value": self.best[0] if one else self.best,
            "step": self.best_step[0] if one else self.best_step}


def _copy(tree):
  """A copy that survives the step's buffer donation."""
  return jax.tree.map(lambda a: a.copy() if isinstance(a, jax.Array) else a, tree)


def fit(ensemble: Ensemble, tx: optax.GradientTransformation, train: Any, *,
        key: jax.Array, epochs: int, batch_size: int = 128,
        fusion: Optional[Fusion] = None, regime: str = "independent", lam: float = 1.0,
        fusion_tx=None, loss: Optional[Callable] = None,
        eval_sets: Optional[Mapping[str, Any]] = None,
        log_path: Optional[str] = None, ckpt_dir: Optional[str] = None,
        ckpt_every: Optional[int] = None, resume: bool = True, mesh=None,
        bagging: bool = False, member_indices: Any = None, init: Any = None,
        member_hparams: Optional[Mapping[str, Any]] = None,
        augment: Optional[Callable] = None,
        early_stopping: Optional[str] = None, monitor: Optional[str] = None,
        patience: int = 5, mode: Optional[str] = None,
        on_nonfinite: str = "stop", progress: bool = True,
        sync_every: int = 50, handle_signals: bool = True,
        max_steps: Optional[int] = None, seed: int = 0, layout="auto",
        platform: Optional[str] = None, prefetch: int = 2) -> FitResult:
  """Trains every member in one jitted step per batch, for ``epochs`` epochs.

  The batches come from the one data pipeline, :func:`fusionjax.data.pipeline`
  (grain): epoch ``e``'s order is fixed by ``(seed, e)``, and the pipeline's
  iterator is checkpointed, so a resumed run equals the uninterrupted one.

  Args:
    ensemble: the ensemble.
    tx: single-member optax transform (applied per member, one state each).
    train: ``(x, y)`` numpy arrays, or a ``fusionjax.data`` source (read
      lazily, batch by batch).
    key: PRNG key for init, dropout and bagging.
    epochs: passes over the training set.
    batch_size: examples per step (the last partial batch is dropped).
    fusion, regime, lam, fusion_tx: see :func:`~fusionjax.train.make_trainer`.
    loss: the per-member loss ``(outputs, y, mask) -> [...]``; default
      cross-entropy on class labels. :func:`~fusionjax.train.gaussian_nll`
      trains a regression ensemble (members output ``[B, 2]``: mean and raw
      variance; ``y`` real) and evaluation reports RMSE and Gaussian NLL.
    eval_sets: name -> ``(x, y)`` (or a source), evaluated after every epoch.
    log_path: a JSON-lines file; one line per epoch (``pandas.read_json(path,
      lines=True)``): ``train_loss`` is the epoch's mean of the mean member
      loss. It is rewritten from the history saved in the checkpoints, so a
      resumed run's log equals the uninterrupted one's (``time`` is cumulative).
    ckpt_dir: orbax checkpoints (state, RNG key, the data iterator, the run's
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
    bagging: each member trains on its own bootstrap of the training set
      (returned as ``FitResult.bootstrap``).
    member_indices: each member trains on its own rows of the training set
      (``[M, N']`` or a list of M index arrays of any lengths, e.g. folds);
      exclusive with ``bagging``.
    init: start from a given :class:`~fusionjax.train.TrainState` (e.g. an
      earlier ``FitResult.state``) or from member variables ``{'params':
      ..., 'state': ...}`` (stacked, with a fresh optimizer state); with
      ``regime='frozen'`` this learns a fusion over trained members.
    member_hparams: optax hyper-parameters per member, e.g.
      ``{'learning_rate': [1e-3, 3e-3, 1e-2]}``; ``tx`` must be built with
      ``optax.inject_hyperparams`` (see :func:`set_member_hparams`).
    augment: ``augment(key, x) -> x`` applied to every training batch's
      inputs (``x [B, ...]``, per member ``[M, B, ...]``), e.g.
      ``functools.partial(fj.data.crop_flip, padding=2, flip=False)``.
    early_stopping: ``None``, ``'ensemble'`` (stop after ``patience``
      evaluations without improving ``monitor``; the best state is kept: in
      ``ckpt_dir/best`` by orbax's ``best_fn`` when checkpointing, and
      returned) or ``'member'`` (track each member's ``monitor`` on its own,
      e.g. ``'val/member_nll'``; keep each member's best params; stop when no
      member improved for ``patience`` evaluations).
    monitor: the metric, ``'<eval set>/<metric>'``; default the first eval
      set's ``nll`` (``member_nll`` per member).
    patience: evaluations (epochs) without improvement before stopping.
    mode: ``'min'`` or ``'max'``; default ``'max'`` for accuracies, else ``'min'``.
    on_nonfinite: ``'stop'`` raises :class:`~fusionjax.errors.NonFiniteError`
      naming the member and step (no checkpoint of that state is written);
      ``'freeze'`` freezes that member for good (``state.frozen``, kept by
      checkpoints and resumes) and lets the others carry on.
    progress: show a tqdm progress bar (the mean member loss).
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
    prefetch: batches the pipeline prepares ahead in a background thread.

  Returns:
    A :class:`FitResult`.
  """
  from fusionjax.data import _pipeline  # pylint: disable=g-import-not-at-top
  if on_nonfinite not in ("stop", "freeze"):
    raise ValueError(f"on_nonfinite must be 'stop' or 'freeze'; got {on_nonfinite!r}.")
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
      or batch_size < 1:
    raise errors.BatchSizeError(
        f"fit: batch_size={batch_size!r} must be an int >= 1. Fix: e.g. batch_size=128.")
  if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
    raise errors.TrainConfigError(
        f"fit: epochs={epochs!r} must be an int >= 0. Fix: e.g. epochs=10.")
  if early_stopping not in (None, "ensemble", "member"):
    raise errors.TrainConfigError(
        f"fit: early_stopping={early_stopping!r}; use None, 'ensemble' or 'member'.")
  if bagging and member_indices is not None:
    raise errors.TrainConfigError(
        "fit: bagging=True draws each member's rows; member_indices gives them. Fix: pass "
        "one of the two.")
  shared = getattr(ensemble, "shared", None)
  if shared and (early_stopping == "member" or member_hparams):
    what = ("early_stopping='member' (each member's best params)" if early_stopping == "member"
            else "member_hparams (a hyper-parameter per member)")
    raise errors.SharedWeightsError(
        f"fit: {what} needs params per member, but this {shared} ensemble's members share "
        "one network's weights. Fix: early_stopping='ensemble' and one optimizer for the "
        "network, or an ensemble of independent members (fj.ensemble.from_linen).")
  task = "regression" if loss is not None and loss is not cross_entropy else "classification"
  source = _pipeline.as_source(train)
  n = len(source)
  if n == 0:
    raise errors.BatchShapeError("fit: the training set has no examples. Fix: pass a "
                                 "non-empty (x, y) or source.")
  in_memory = isinstance(source, _pipeline.PairSource) or hasattr(source, "raw")
  if in_memory:
    x_train, y_train = as_arrays(source)
    if len(y_train) != n:
      raise errors.BatchShapeError(
          f"train x has {n} examples and y has {len(y_train)}. Fix: pass matching, "
          "non-empty arrays.")
    _validate.finite_inputs(x_train, "fit: the training inputs")
    x_example = x_train[:1]
  else:
    x_example = np.asarray(source[np.array([0])]["image"])
  eval_arrays = {}
  for name, data in (eval_sets or {}).items():
    xe, ye = as_arrays(data)
    if len(xe) == 0 or len(ye) != len(xe):
      raise errors.TrainConfigError(
          f"fit: eval set {name!r} has {len(xe)} inputs and {len(ye)} labels. Fix: pass "
          "a non-empty (x, y) pair of equal length, or leave it out of eval_sets.")
    if xe.shape[1:] != x_example.shape[1:]:
      raise errors.TrainConfigError(
          f"fit: eval set {name!r} has examples of shape {xe.shape[1:]}, the training "
          f"data {x_example.shape[1:]}. Fix: preprocess it as the training data.")
    _validate.finite_inputs(xe, f"fit: eval set {name!r}")
    eval_arrays[name] = (xe, ye)
  if early_stopping is not None:
    if not eval_arrays and monitor is None:
      raise errors.TrainConfigError(
          "fit: early_stopping needs an evaluation set to monitor. Fix: pass "
          "eval_sets={'val': (x_val, y_val)}.")
    if monitor is None:
      first = next(iter(eval_arrays))
      monitor = f"{first}/{'member_nll' if early_stopping == 'member' else 'nll'}"
    if mode is None:
      mode = "max" if monitor.endswith("accuracy") else "min"
    if mode not in ("min", "max"):
      raise errors.TrainConfigError(f"fit: mode={mode!r}; use 'min' or 'max'.")
    if early_stopping == "member" and not monitor.split("/")[-1].startswith("member_"):
      raise errors.TrainConfigError(
          f"fit(early_stopping='member') needs a per-member metric; monitor={monitor!r}. "
          "Fix: e.g. monitor='val/member_nll'.")
  batch_size = min(int(batch_size), n)
  ckpt = Checkpointer(ckpt_dir) if ckpt_dir else None

  writes = jax.process_index() == 0  # one process writes the log and prints
  k_init, k_bag = jax.random.split(key)
  per_member = bagging or member_indices is not None
  trainer = make_trainer(ensemble, tx, fusion=fusion, regime=regime, lam=lam,
                         fusion_tx=fusion_tx, loss=loss or cross_entropy, per_member=per_member, mesh=mesh,
                         layout=layout, platform=platform, x_example=x_example,
                         freeze_nonfinite=on_nonfinite == "freeze")
  state = _initial_state(trainer, ensemble, tx, init, k_init, x_example, regime)
  if member_hparams:
    state = set_member_hparams(state, **member_hparams)
  check = None
  if task == "classification":
    num_classes = jax.eval_shape(
        lambda s, x: ensemble.apply({"params": s.params["members"], "state": s.state}, x)[0],
        state, x_example).shape[-1]
    if in_memory:
      _validate.class_labels(y_train, num_classes, "fit: the training labels")
    else:  # a lazy source: each batch is checked as it is read
      def check(x, y, i):
        _validate.finite_inputs(x, f"fit: the training inputs of batch {i}")
        _validate.class_labels(y.reshape(-1), num_classes,
                               f"fit: the training labels of batch {i}")
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
  rows = boot if boot is not None else member_indices
  pipe = _pipeline.pipeline(source, batch_size, seed=seed, num_epochs=epochs,
                            drop_last=True, indices=rows, augment=augment,
                            augment_key=jax.random.fold_in(key, 0xA06) if augment else None,
                            prefetch=prefetch, check=check)
  steps_per_epoch = pipe.steps_per_epoch
  data_it = iter(pipe.dataset)

  history = []
  config = _run_config(ensemble, state, batch_size=batch_size, regime=regime,
                       bagging=bagging, seed=seed)
  if member_indices is not None:
    config["member_indices"] = hashlib.sha256(np.ascontiguousarray(
        _pipeline._member_rows(member_indices, n)[0]).tobytes()).hexdigest()
  if early_stopping is not None:
    config["early_stopping"] = {"per": early_stopping, "monitor": monitor, "mode": mode,
                                "patience": int(patience)}
  stopper = (None if early_stopping is None else
             _Stopper(early_stopping, monitor, int(patience), mode, ensemble.size))
  best_members = _copy(state.params["members"]) if early_stopping == "member" else None
  best_state = None
  best_ckpt = None
  if ckpt is not None and early_stopping == "ensemble":
    best_ckpt = Checkpointer(os.path.join(ckpt.directory, "best"), max_to_keep=1,
                             best_metric=monitor, best_mode=mode)
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
      restored = ckpt.restore_newest(state, check_meta, data=data_it, extra_like=best_members)
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
  consumed = 0  # batches taken from the pipeline (the data position)
  epoch_sum = {"loss": 0.0, "fused": 0.0, "count": 0}  # this epoch's synced step losses
  if restored is not None:
    r_step, state, position, meta, extra = restored
    consumed = int(position["next_index"])
    history = list(meta.get("history") or [])
    elapsed0 = float(meta.get("elapsed") or 0.0)
    last_loss = meta.get("last_loss")
    epoch_sum.update(meta.get("epoch_sums") or {})
    if stopper is not None and meta.get("early_stopping"):
      stopper.load(meta["early_stopping"])
    if early_stopping == "member":
      best_members = extra
    if log_path and writes:
      _write_log(log_path, history)
    if writes:
      e, b = divmod(consumed, steps_per_epoch)
      print(f"fusionjax.fit: resuming from the checkpoint of step {r_step} in "
            f"{ckpt.directory} (epoch {e}, batch {b} of {steps_per_epoch})", flush=True)

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
    bar = tqdm(total=epochs * steps_per_epoch, initial=consumed, unit="step",
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
    for step_no_, log in logs:
      member_loss = np.asarray(log["member_loss"])
      bad = ~np.asarray(log["finite"])
      if bad.any():
        if on_nonfinite == "stop":
          raise errors.NonFiniteError(
              f"Non-finite loss or gradient in member(s) {np.flatnonzero(bad).tolist()} "
              f"({[ensemble.names[i] for i in np.flatnonzero(bad)]}) at step {step_no_}; "
              f"member losses: {member_loss.tolist()}. Their updates "
              "were skipped and no checkpoint of this state was written; the last good "
              f"checkpoint is kept{' in ' + ckpt.directory if ckpt else ''}. Fix: lower "
              "the learning rate, clip gradients, or pass on_nonfinite='freeze'.")
        # on_nonfinite='freeze': the step itself has set state.frozen for them.
      ok = ~bad if bad.any() and not bad.all() else np.ones_like(bad)
      mean_loss = float(np.mean(member_loss[ok]))
      last_logs["loss"] = mean_loss
      epoch_sum["loss"] += mean_loss
      epoch_sum["count"] += 1
      if "fused_loss" in log:
        epoch_sum["fused"] += float(log["fused_loss"])
    if bar is not None:
      bar.set_postfix(loss=f"{last_logs['loss']:.4f}")
    return logs[-1][1]

  saved = {"step": restored[0] if restored is not None else None}

  def checkpoint():
    if ckpt is not None and saved["step"] != step_no:
      sync()  # never write a state the non-finite policy has not cleared
      meta = {"layout": trainer.layout, "config": config, "history": history,
              "elapsed": elapsed0 + time.time() - t0, "last_loss": last_logs["loss"],
              "epoch_sums": dict(epoch_sum)}
      if stopper is not None:
        meta["early_stopping"] = stopper.to_json()
      ckpt.save(step_no, state, data_it, meta, extra=best_members)
      saved["step"] = step_no

  status = "done"
  step_no = int(state.step)  # the host's count: no device read per step
  t0 = time.time()
  try:
    while consumed < epochs * steps_per_epoch:
      epoch = consumed // steps_per_epoch
      if consumed % steps_per_epoch == 0:  # (a resumed epoch keeps its saved sums)
        epoch_sum.update(loss=0.0, fused=0.0, count=0)
      while consumed < (epoch + 1) * steps_per_epoch:
        if max_steps and step_no >= max_steps:  # a total, over resumed runs too
          break
        batch = next(data_it)
        if mesh is not None:
          batch = _sharding.shard_batch(batch, mesh, per_member=per_member)
        state, logs = step_fn(state, batch)
        pending.append((step_no, logs))
        step_no += 1
        consumed += 1
        if bar is not None:
          bar.update(1)
        if len(pending) >= sync_every:
          sync()
        ending = (consumed % steps_per_epoch == 0 or stop["signal"] is not None
                  or (max_steps and step_no >= max_steps))
        if ckpt_every and step_no % ckpt_every == 0 and not ending:
          checkpoint()  # (an ending step is checkpointed below, with its record)
        if stop["signal"] is not None or (max_steps and step_no >= max_steps):
          break
      sync()
      if stop["signal"] is not None:
        checkpoint()
        status = "interrupted"
        if writes:
          name = signal.Signals(stop["signal"]).name
          where = (f"checkpoint of step {step_no} in {ckpt.directory}; run the same "
                   "command again to resume" if ckpt is not None else
                   "no ckpt_dir, so nothing was saved")
          print(f"fusionjax.fit: interrupted by {name} at step {step_no} (epoch "
                f"{consumed // steps_per_epoch}); {where}.", flush=True)
        break
      stop_now = False
      if all(h.get("step") != step_no for h in history):  # records are keyed by step
        done_epoch = consumed % steps_per_epoch == 0
        record = {"epoch": consumed // steps_per_epoch if done_epoch else epoch,
                  "step": step_no, "time": elapsed0 + time.time() - t0,
                  "layout": trainer.layout,
                  "train_loss": (epoch_sum["loss"] / epoch_sum["count"]
                                 if epoch_sum["count"] else last_logs["loss"]),
                  "train_loss_last": last_logs["loss"],
                  "frozen_members": np.flatnonzero(_host(state.frozen)).tolist()}
        if epoch_sum["count"] and regime != "independent":
          record["train_fused_loss"] = epoch_sum["fused"] / epoch_sum["count"]
        for name, (xe, ye) in eval_arrays.items():
          for k, v in evaluate(predict, state, xe, ye, task=task).items():
            record[f"{name}/{k}"] = v
        if stopper is not None:
          improved, stop_now = stopper.update(record, step_no)
          record["improved"] = improved if early_stopping == "member" else improved[0]
          if early_stopping == "member" and any(improved):
            keep = jnp.asarray(improved)
            best_members = jax.tree.map(
                lambda new, old: jnp.where(keep.reshape((-1,) + (1,) * (new.ndim - 1)),
                                           new, old),
                state.params["members"], best_members)
          elif early_stopping == "ensemble" and improved[0]:
            if best_ckpt is not None:
              best_ckpt.save(step_no, state, data_it,
                             {"metrics": {monitor: record[monitor]}},
                             metrics={monitor: record[monitor]})
            else:
              best_state = _copy(state)
        history.append(record)
      checkpoint()  # the record is in its meta before it is in the log
      if log_path and writes:
        _write_log(log_path, history)
      if stop_now:
        status = "stopped_early"
        if writes and progress:
          print(f"fusionjax.fit: stopped early at step {step_no}: {monitor} did not "
                f"improve for {patience} evaluations.", flush=True)
        break
      if max_steps and step_no >= max_steps:
        break
  finally:
    if bar is not None:
      bar.close()
    for s, h in old_handlers.items():
      signal.signal(s, h)
    _pipeline.close(data_it)
    if ckpt is not None:
      ckpt.close()
  best = stopper.summary() if stopper is not None else None
  if early_stopping == "member":
    state = state._replace(params={**state.params, "members": best_members})
  elif early_stopping == "ensemble" and best is not None and best["step"] is not None:
    if best_ckpt is not None:
      state, _ = best_ckpt.restore(state, best_ckpt.best_step())
    elif best_state is not None:
      state = best_state
  if best_ckpt is not None:
    best_ckpt.close()
  return FitResult(state, history, status, boot, best)
