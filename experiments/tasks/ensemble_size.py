"""Figure 1: test error, NLL, Brier and ECE of an ensemble against its size M.

Per seed, ``max_members`` members are trained at once in one stacked step
(``fj.train.fit``); the ensemble of size M is the mean of the probabilities of
M of them: the first M, and ``random_subsets`` random subsets of size M
(the spread over subsets). Spread over seeds comes from ``seeds``. With
``member_order='own'`` every member reads its own shuffle of the training set
(``make_trainer(per_member=True)``), otherwise all members read the same batches.
"""
import jax
import numpy as np

import fusionjax as fj
from experiments.tasks import common


# run.py hands this task the whole ``seeds`` list (it loops over seeds itself).
LOOPS_OVER_SEEDS = True


def run(cfg, data_dir, timer):
  with timer("data"):
    d = common.load_data(cfg, data_dir)
  num_classes = int(d.y_train.max()) + 1
  module = common.make_module(cfg["model"], num_classes)
  mmax = cfg["max_members"]
  rows, members, runs = [], [], []
  for seed in cfg["seeds"]:
    ens = fj.ensemble.from_linen(module, mmax)
    with timer("train"):
      if cfg.get("member_order") == "own":  # each member its own shuffle of the data
        n = len(d.y_train)
        state = common.fit_per_member(ens, cfg, d.x_train, d.y_train, [np.arange(n)] * mmax,
                                      jax.random.key(seed), steps=common.steps_for(cfg, n),
                                      seed=seed)
      else:  # every member sees the same batches (fj.train.fit)
        state = common.fit(ens, cfg, d.x_train, d.y_train, jax.random.key(seed), seed=seed)
      logits = common.member_logits(ens, state, d.x_test)
    with timer("eval"):
      members.append(common.member_scores(logits, d.y_test))
      rng = np.random.default_rng(1000 + seed)
      for m in range(1, mmax + 1):
        r = common.scores(common.mean_fused(logits[:m]), d.y_test)
        rows.append({"seed": seed, "members": m, "subset": "first", **r})
        for j in range(cfg["random_subsets"] if 1 < m < mmax else 0):
          pick = np.sort(rng.choice(mmax, m, replace=False))
          r = common.scores(common.mean_fused(logits[pick]), d.y_test)
          rows.append({"seed": seed, "members": m, "subset": f"random{j}", **r})
      runs.append({"seed": seed, "disagreement": float(fj.metrics.disagreement(logits))})
  return {"dataset": d.name, "train_size": len(d.y_train), "test_size": len(d.y_test),
          "model": cfg["model"], "rows": rows, "members": members, "runs": runs}
