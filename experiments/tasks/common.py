"""Plumbing shared by the experiments: data, models, training, evaluation, result files.

Everything here is a thin layer over fusionjax; the experiments themselves
(``experiments/tasks/<name>.py``) read like the paper's description of them.
"""
import functools
import json
import os
import platform
import sys
import time
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import fusionjax as fj


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
class Data(dict):
  """``x_train, y_train, x_val, y_val, x_test, y_test`` (numpy) plus ``name``."""

  __getattr__ = dict.__getitem__


@functools.lru_cache(maxsize=4)
def _load(name: str, data_dir: Optional[str]):
  splits = fj.data.load(name, data_dir=data_dir)
  out = {}
  for split, src in zip(("train", "val", "test"), splits):
    a = src.arrays()
    out[f"x_{split}"] = np.asarray(a["image"], np.float32)
    out[f"y_{split}"] = np.asarray(a["label"], np.int32)
  return out


def _take(x, y, n, seed):
  if n is None or n >= len(y):
    return x, y
  idx, _ = fj.data.stratified_split(y, int(n), seed)
  return x[idx], y[idx]


def load_data(cfg: dict, data_dir: Optional[str]) -> Data:
  """The data set named by ``cfg['dataset']``, optionally sub-sampled (stratified).

  ``cfg['train_size'|'val_size'|'test_size']`` cap the splits (``None``: all);
  the subsets are fixed by ``cfg.get('data_seed', 0)``.
  """
  name = cfg["dataset"]
  full = _load(name, None if name == "digits" else data_dir)
  seed = cfg.get("data_seed", 0)
  d = Data(name=name)
  for split in ("train", "val", "test"):
    x, y = _take(full[f"x_{split}"], full[f"y_{split}"], cfg.get(f"{split}_size"), seed)
    d[f"x_{split}"], d[f"y_{split}"] = x, y
  return d


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------
def _patches(x, k: int):
  """``[B, H, W, C] -> [B, H, W, k*k*C]``: the k x k 'SAME' neighbourhood of every pixel."""
  p = k // 2
  h, w = x.shape[1], x.shape[2]
  xp = jnp.pad(x, ((0, 0), (p, k - 1 - p), (p, k - 1 - p), (0, 0)))
  return jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(k) for j in range(k)],
                         axis=-1)


class PatchConv(nn.Module):
  """A 'SAME' convolution written as patches @ kernel (im2col).

  Mathematically ``nn.Conv(features, (k, k), padding='SAME')``; under
  ``jax.vmap`` over members it stays a batched matmul instead of becoming a
  grouped convolution, which XLA:CPU runs 5-15x slower per member (see the
  paper's appendix and the experiments README).
  """
  features: int
  kernel: int = 5

  @nn.compact
  def __call__(self, x):
    p = _patches(x, self.kernel)
    w = self.param("kernel", nn.initializers.lecun_normal(), (p.shape[-1], self.features))
    b = self.param("bias", nn.initializers.zeros, (self.features,))
    return p @ w + b


class PatchCNN(nn.Module):
  """LeNet-5-style CNN (conv5-pool-conv5-pool-dense-dense), CPU-friendly when vmapped.

  The same architecture as ``fusionjax.models.CNN`` (5x5 'SAME' convolutions,
  2x2 max pooling, one hidden dense layer) built from :class:`PatchConv`.
  """
  num_classes: int
  features: Sequence[int] = (6, 16)
  hidden: int = 120

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    if x.ndim == 3:
      x = x[..., None]
    for width in self.features:
      x = fj.models.max_pool(nn.relu(PatchConv(width)(x)), 2)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(self.num_classes)(x)


def make_module(spec: dict, num_classes: int = 10) -> nn.Module:
  """A Linen module from a config dict, e.g. ``{'name': 'mlp', 'features': [200, 200]}``."""
  kind = spec["name"]
  if kind == "mlp":
    return fj.models.MLP(num_classes, tuple(spec.get("features", (200, 200, 200))),
                         spec.get("dropout", 0.0))
  if kind == "cnn":  # fusionjax.models.CNN (nn.Conv): fast on GPU
    return fj.models.CNN(num_classes, tuple(spec.get("features", (32, 64))),
                         spec.get("hidden", 128), spec.get("dropout", 0.0))
  if kind == "patch_cnn":  # the same network as im2col: fast when vmapped on CPU
    return PatchCNN(num_classes, tuple(spec.get("features", (6, 16))), spec.get("hidden", 120))
  if kind == "gru":
    return fj.models.RowGRU(num_classes, spec.get("hidden", 64))
  if kind == "resnet":
    return fj.models.ResNet(num_classes, tuple(spec.get("stage_sizes", (3, 3, 3))),
                            spec.get("width", 16))
  raise ValueError(f"unknown model {kind!r}")


def member_flops(spec: dict, input_shape, num_classes: int = 10) -> float:
  """Forward FLOPs (2 x multiply-adds of the matmuls and convolutions) of one member, one example.

  Counted analytically: XLA's cost model counts a scan body once, which
  undercounts the GRU by its sequence length.
  """
  kind = spec["name"]
  h, w, c = (tuple(input_shape) + (1,))[:3] if len(input_shape) == 2 else tuple(input_shape)
  if kind == "mlp":
    dims = [h * w * c, *spec.get("features", (200, 200, 200)), num_classes]
    return float(sum(2 * a * b for a, b in zip(dims[:-1], dims[1:])))
  if kind in ("cnn", "patch_cnn"):
    default = (32, 64) if kind == "cnn" else (6, 16)
    flops, cin = 0, c
    for cout in spec.get("features", default):
      flops += 2 * h * w * 25 * cin * cout
      h, w, cin = h // 2, w // 2, cout
    hidden = spec.get("hidden", 128 if kind == "cnn" else 120)
    return float(flops + 2 * h * w * cin * hidden + 2 * hidden * num_classes)
  if kind == "gru":
    hid = spec.get("hidden", 64)
    return float(2 * h * 3 * (w * c * hid + hid * hid) + 2 * hid * num_classes)
  raise ValueError(f"no FLOP count for model {kind!r}")


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------
def optimizer(cfg: dict, total_steps: int) -> optax.GradientTransformation:
  """Adam (or SGD with momentum) with a cosine decay over ``total_steps``; one member's view."""
  lr = cfg.get("lr", 1e-3)
  sched = optax.cosine_decay_schedule(lr, max(int(total_steps), 1), alpha=cfg.get("lr_floor", 0.0))
  if cfg.get("optimizer", "adam") == "sgd":
    tx = optax.sgd(sched, momentum=0.9, nesterov=True)
  else:
    tx = optax.adam(sched)
  wd = cfg.get("weight_decay", 0.0)
  return optax.chain(optax.add_decayed_weights(wd), tx) if wd else tx


def steps_for(cfg: dict, n: int) -> int:
  """Training steps: ``epochs * (n // batch)``, at least ``min_steps``, at most ``max_steps``."""
  steps = int(round(cfg["epochs"] * (n // min(cfg["batch_size"], n))))
  steps = max(steps, cfg.get("min_steps", 1))
  if cfg.get("max_steps"):
    steps = min(steps, cfg["max_steps"])
  return max(steps, 1)


def fit(ens, cfg: dict, x, y, key, *, fusion=None, regime="independent", lam=1.0,
        steps: Optional[int] = None, seed: int = 0):
  """Trains every member of ``ens`` at once with ``fusionjax.train.fit``; returns the state."""
  steps = steps or steps_for(cfg, len(y))
  batch = min(cfg["batch_size"], len(y))
  epochs = -(-steps // (len(y) // batch))
  res = fj.train.fit(ens, optimizer(cfg, steps), (x, y), key=key, epochs=epochs,
                     batch_size=batch, fusion=fusion, regime=regime, lam=lam,
                     progress=False, max_steps=steps, seed=seed, handle_signals=False)
  return res.state


def fit_per_member(ens, cfg: dict, x, y, indices: Sequence[np.ndarray], key, *,
                   steps: int, seed: int = 0, init_params=None):
  """Trains member ``m`` on ``x[indices[m]]`` (its own data and order), all in one step.

  Used for cross-fitting (fold replicas) and for soup ingredients (one start,
  different data orders). ``fusionjax.train.fit`` with ``member_indices``:
  the one data pipeline gives member ``m`` its rows in its own order.
  ``init_params`` (member-stacked) replaces the initial params, with a fresh
  optimizer state. ``cfg['shift']`` (pixels) translates every training image
  by a random offset of up to that many pixels each step
  (``fj.data.crop_flip(..., flip=False)``, fit's augmentation hook), padding
  with the background, taken to be the smallest pixel value of ``x``.
  """
  batch = min(cfg["batch_size"], min(len(i) for i in indices))
  per_epoch = max(len(i) for i in indices) // batch
  augment = None
  if cfg.get("shift", 0):
    augment = functools.partial(fj.data.crop_flip, padding=cfg["shift"], flip=False,
                                fill=float(np.min(x)))
  init = None
  if init_params is not None:
    init = {"params": init_params}
  res = fj.train.fit(ens, optimizer(cfg, steps), (x, y), key=key, epochs=-(-steps // per_epoch),
                     batch_size=batch, member_indices=list(indices), init=init,
                     augment=augment, progress=False, max_steps=steps, seed=seed,
                     handle_signals=False)
  return res.state


def member_logits(ens, state, x, batch_size: int = 2000) -> np.ndarray:
  """Member logits ``[M, N, C]`` (float32 numpy) of a trained state.

  Calls ``ens.apply`` (the ensemble's own pure function) under one ``jit``.
  """
  predict = _predict_fn(ens)
  variables = {"params": state.params["members"], "state": state.state}
  outs = [np.asarray(predict(variables, jnp.asarray(x[i:i + batch_size])))
          for i in range(0, len(x), batch_size)]
  return np.concatenate(outs, axis=1)


_PREDICT = {}


def _predict_fn(ens):
  key = id(ens)
  if key not in _PREDICT:
    _PREDICT[key] = (ens, jax.jit(lambda v, x: ens.apply(v, x, train=False)[0]))
  return _PREDICT[key][1]


# --------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------
def scores(log_probs, y) -> dict:
  """Accuracy, error, NLL, Brier (sum over classes) and ECE (15 bins) as floats."""
  s = fj.metrics.summary(jnp.asarray(log_probs), jnp.asarray(y))
  out = {k: float(v) for k, v in s.items()}
  out["error"] = 1.0 - out["accuracy"]
  return out


def log_softmax(z, axis=-1) -> np.ndarray:
  """numpy ``log_softmax`` (host-side evaluation compiles nothing)."""
  z = np.asarray(z, np.float64)
  z = z - z.max(axis=axis, keepdims=True)
  return (z - np.log(np.exp(z).sum(axis=axis, keepdims=True))).astype(np.float32)


def mean_fused(logits) -> np.ndarray:
  """Log of the mean of member probabilities ``[M, N, C] -> [N, C]``.

  The same maths as ``fj.fusion.mean()`` (checked in the smoke test), in numpy
  so that sweeping M over many subsets compiles nothing.
  """
  lp = log_softmax(logits).astype(np.float64)
  top = lp.max(axis=0)
  return (top + np.log(np.exp(lp - top).mean(axis=0))).astype(np.float32)


def member_scores(logits, y) -> dict:
  """Per-member metrics (lists) and their mean and std."""
  rows = [scores(logits[m], y) for m in range(logits.shape[0])]
  out = {}
  for k in rows[0]:
    vals = np.array([r[k] for r in rows])
    out[k] = vals.tolist()
    out[f"{k}_mean"] = float(vals.mean())
    out[f"{k}_std"] = float(vals.std())
  return out


# --------------------------------------------------------------------------
# result files
# --------------------------------------------------------------------------
def machine() -> dict:
  try:
    load = os.getloadavg()
  except OSError:
    load = None
  return {"platform": platform.platform(), "processor": platform.processor(),
          "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
          "jax": jax.__version__, "backend": jax.default_backend(),
          "devices": [str(d) for d in jax.devices()], "loadavg_at_end": load}


def _plain(obj):
  if isinstance(obj, dict):
    return {str(k): _plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_plain(v) for v in obj]
  if isinstance(obj, (np.floating, np.integer)):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return _plain(obj.tolist())
  if isinstance(obj, jax.Array):
    return _plain(np.asarray(obj))
  if isinstance(obj, float):
    return round(obj, 6) if np.isfinite(obj) else None
  return obj


def write_json(path: str, obj: Any) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(_plain(obj), f, indent=1)
  os.replace(tmp, path)


class Timer:
  """Wall-clock sections: ``with timer('train'): ...``; ``timer.seconds`` maps name -> s."""

  def __init__(self):
    self.seconds = {}

  def __call__(self, name):
    timer = self

    class _Section:
      def __enter__(self):
        self.t = time.perf_counter()

      def __exit__(self, *exc):
        timer.seconds[name] = timer.seconds.get(name, 0.0) + time.perf_counter() - self.t

    return _Section()
