"""Figure 2: one member against an ensemble as the training set grows.

For each fraction of the training set (a stratified subset), ``members``
networks train at once; the single-member numbers are the mean (and spread)
over those members, the ensemble is the mean of their probabilities.
Training runs ``epochs`` passes, and at least ``min_steps`` steps, so that
small subsets are trained to convergence too.
"""
import jax
import numpy as np

import fusionjax as fj
from experiments.tasks import common


def run(cfg, data_dir, timer):
  with timer("data"):
    d = common.load_data(cfg, data_dir)
  c = int(d.y_train.max()) + 1
  module = common.make_module(cfg["model"], c)
  rows = []
  for frac in cfg["fractions"]:
    n = max(int(round(frac * len(d.y_train))), 10 * c)
    idx = (np.arange(len(d.y_train)) if n >= len(d.y_train)
           else fj.data.stratified_split(d.y_train, n, cfg.get("data_seed", 0))[0])
    x, y = d.x_train[idx], d.y_train[idx]
    ens = fj.ensemble.from_linen(module, cfg["members"])
    steps = common.steps_for(cfg, n)
    with timer("train"):
      state = common.fit(ens, cfg, x, y, jax.random.key(cfg.get("seed", 0)), steps=steps,
                         seed=cfg.get("seed", 0))
      logits = common.member_logits(ens, state, d.x_test)
    single = common.member_scores(logits, d.y_test)
    rows.append({"fraction": frac, "train_size": n, "steps": steps,
                 "single": {k: single[k] for k in single if k.endswith(("_mean", "_std"))},
                 "ensemble": common.scores(common.mean_fused(logits), d.y_test),
                 "disagreement": float(fj.metrics.disagreement(logits))})
  return {"dataset": d.name, "members": cfg["members"], "model": cfg["model"], "rows": rows}
