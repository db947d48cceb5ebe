"""Efficient members against a deep ensemble: clean data, corruptions, out-of-distribution.

One seed per call (``run.py`` loops over ``cfg['seeds']``). Per method of
``cfg['methods']``, one training run with ``fusionjax.train.fit`` (every method
reads the same batches in the same order), then on the test split: accuracy,
NLL, Brier and ECE of the mean of the member probabilities, the same on every
corruption of ``cfg['corruptions']`` (``fusionjax.data.corrupt``, at
``cfg['severity']``, on the first ``cfg['corrupt_size']`` test images), and the
AUROC of the predictive entropy separating the clean test split from each
out-of-distribution set (``noise``: ``fusionjax.data.noise_images``;
``upscaled_digits``: ``fusionjax.data.upscaled_digits``).

Methods: ``deep_ensemble`` (``from_linen``, M members, their own params and
optimizer states), ``batch_ensemble``, ``mc_dropout`` and ``packed``
(``fusionjax.ensemble``; one network, trained under the ``'native'`` layout).
The single network is not trained again: every member of the deep ensemble is
one, trained exactly as it would be alone, so ``single`` reports the mean over
the M members of each member's own scores (``single_member0``: member 0's).

:func:`summarize` turns the per-seed results into means with 95 % t-intervals.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

import fusionjax as fj
from experiments.tasks import common

METRICS = ("accuracy", "nll", "brier", "ece")


def _ensemble(name: str, cfg, num_classes: int):
  spec = dict(cfg["model"])
  m = cfg["members"]
  if name == "deep_ensemble":
    return fj.ensemble.from_linen(common.make_module(spec, num_classes), m)
  if name == "batch_ensemble":
    return fj.ensemble.batch_ensemble(common.make_module(spec, num_classes), m,
                                      fast_std=cfg["be_fast_std"])
  if name == "mc_dropout":
    return fj.ensemble.mc_dropout(common.make_module(spec, num_classes), m,
                                  rate=cfg["mc_rate"])
  if name == "packed":
    return fj.ensemble.packed(common.make_module(spec, num_classes), m,
                              alpha=cfg["packed_alpha"], gamma=cfg.get("packed_gamma", 1))
  raise ValueError(f"unknown method {name!r}")


def _shift_sets(cfg, d):
  """``{corruption: (x, y)}`` and ``{ood name: x}``, normalised as the training data."""
  norm = fj.data.NORMALIZATION[d.name]
  mean, std = float(np.mean(norm.mean)), float(np.mean(norm.std))
  raw = np.clip(d.x_test * std + mean, 0.0, 1.0)  # pixels in [0, 1], as corrupt() wants
  n = min(cfg["corrupt_size"], len(d.y_test))
  corrupted = {c: ((fj.data.corrupt(raw[:n], c, cfg["severity"], seed=0) - mean) / std,
                   d.y_test[:n]) for c in cfg["corruptions"]}
  shape = d.x_test.shape[1:]
  ood = {}
  for name in cfg["ood"]:
    if name == "noise":
      x = fj.data.noise_images(cfg["ood_size"], shape, "uniform", seed=0)
    elif name == "upscaled_digits":
      x = fj.data.upscaled_digits(min(cfg["ood_size"], 1797), size=shape[0])
    else:
      raise ValueError(f"unknown OOD set {name!r}")
    ood[name] = ((x - mean) / std).astype(np.float32)
  return {c: (x.astype(np.float32), y) for c, (x, y) in corrupted.items()}, ood


def _logits(predict, state, x, batch: int = 2000) -> np.ndarray:
  outs = [np.asarray(predict(state, jnp.asarray(x[i:i + batch]))[0])
          for i in range(0, len(x), batch)]
  return np.concatenate(outs, axis=1)


def _member_mean(logits, y) -> dict:
  s = fj.metrics.summary(jnp.asarray(logits), jnp.asarray(y))  # [M] per metric
  return {k: float(np.mean(v)) for k, v in s.items()}


def _entropy_auroc(clean_fused, ood_fused) -> float:
  scores = np.concatenate([np.asarray(fj.metrics.entropy(jnp.asarray(clean_fused))),
                           np.asarray(fj.metrics.entropy(jnp.asarray(ood_fused)))])
  is_ood = np.concatenate([np.zeros(len(clean_fused)), np.ones(len(ood_fused))])
  return float(fj.metrics.auroc(jnp.asarray(is_ood), jnp.asarray(scores)))


def _scores(sets, ood_logits, member):
  """Scores of the mean of the members' probabilities (``member=None``), of one member
  (an int), or each member's own scores averaged over the members (``'mean'``)."""
  clean = sets["clean"][0]
  row = {}
  if member == "mean":
    for s, (z, y) in sets.items():
      row[s] = _member_mean(z, y)
    row["ood_auroc"] = {o: float(np.mean([
        _entropy_auroc(common.log_softmax(clean[i]), common.log_softmax(z[i]))
        for i in range(z.shape[0])])) for o, z in ood_logits.items()}
    return row
  pick = (lambda z: z) if member is None else (lambda z: z[member:member + 1])
  for s, (z, y) in sets.items():
    row[s] = common.scores(common.mean_fused(pick(z)), y)
  clean_fused = common.mean_fused(pick(clean))
  row["ood_auroc"] = {o: _entropy_auroc(clean_fused, common.mean_fused(pick(z)))
                      for o, z in ood_logits.items()}
  return row


def run(cfg, data_dir, timer):
  seed = cfg["seed"]
  with timer("data"):
    d = common.load_data(cfg, data_dir)
    corrupted, ood = _shift_sets(cfg, d)
  num_classes = int(d.y_train.max()) + 1
  methods = {}
  for name in cfg["methods"]:
    ens = _ensemble(name, cfg, num_classes)
    t0 = time.perf_counter()
    with timer("train"):
      state = common.fit(ens, cfg, d.x_train, d.y_train, jax.random.key(seed), seed=seed)
      jax.block_until_ready(state.params)
    train_s = time.perf_counter() - t0
    predictor = fj.train.make_predictor(ens)
    with timer("eval"):
      jax.block_until_ready(predictor.predict(state, jnp.asarray(d.x_test[:2000])))  # compile
      t0 = time.perf_counter()
      clean = _logits(predictor.predict, state, d.x_test)
      predict_s = time.perf_counter() - t0
      sets = {"clean": (clean, d.y_test)}
      sets.update({c: (_logits(predictor.predict, state, x), y)
                   for c, (x, y) in corrupted.items()})
      ood_logits = {o: _logits(predictor.predict, state, x) for o, x in ood.items()}
    layout = fj.train.make_trainer(ens, common.optimizer(cfg, 1),
                                   x_example=d.x_train[:1]).layout
    params = sum(int(np.prod(a.shape))
                 for a in jax.tree_util.tree_leaves(state.params["members"]))
    cost = {"train_s": train_s, "predict_s": predict_s, "params": params, "layout": layout}
    rows = {name: _scores(sets, ood_logits, member=None) | cost}
    if name == "deep_ensemble":  # every member is one network trained alone
      one = {"train_s": train_s / cfg["members"], "predict_s": predict_s / cfg["members"],
             "params": params // cfg["members"], "layout": layout}
      rows["single"] = _scores(sets, ood_logits, member="mean") | one
      rows["single_member0"] = _scores(sets, ood_logits, member=0) | one
    methods.update(rows)
  return {"dataset": d.name, "seed": seed, "members": cfg["members"], "model": cfg["model"],
          "train_size": len(d.y_train), "test_size": len(d.y_test),
          "corrupt_size": int(min(cfg["corrupt_size"], len(d.y_test))),
          "severity": cfg["severity"], "ood_sizes": {o: len(x) for o, x in ood.items()},
          "methods": methods}


# --------------------------------------------------------------------------
# aggregation over seeds (for the paper's table and the config's docstring)
# --------------------------------------------------------------------------
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262}


def _interval(values):
  v = np.asarray(values, np.float64)
  if len(v) < 2:
    return {"mean": float(v.mean()), "ci95": None, "n": len(v)}
  half = _T975.get(len(v) - 1, 1.96) * v.std(ddof=1) / np.sqrt(len(v))
  return {"mean": float(v.mean()), "ci95": float(half), "n": len(v)}


def summarize(per_seed) -> dict:
  """Means over seeds with 95 % t-intervals: ``{method: {quantity: {mean, ci95, n}}}``.

  Quantities: ``clean/<metric>``, ``corrupt/<metric>`` (the mean over
  corruptions, per seed first), ``corrupt/<name>/<metric>``, ``ood/<set>``
  (AUROC), ``train_s``, ``predict_s``, ``params``.
  """
  out = {}
  for method in per_seed[0]["methods"]:
    rows = [r["methods"][method] for r in per_seed]
    corruptions = [s for s in rows[0] if s not in ("clean", "ood_auroc", "train_s",
                                                    "predict_s", "params", "layout")]
    q = {}
    for m in METRICS:
      q[f"clean/{m}"] = _interval([r["clean"][m] for r in rows])
      q[f"corrupt/{m}"] = _interval([np.mean([r[c][m] for c in corruptions]) for r in rows])
      for c in corruptions:
        q[f"corrupt/{c}/{m}"] = _interval([r[c][m] for r in rows])
    for o in rows[0]["ood_auroc"]:
      q[f"ood/{o}"] = _interval([r["ood_auroc"][o] for r in rows])
    for k in ("train_s", "predict_s", "params"):
      q[k] = _interval([r[k] for r in rows])
    q["layout"] = rows[0]["layout"]
    out[method] = q
  return out
