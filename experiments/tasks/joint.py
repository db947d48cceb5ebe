"""Figure 4: joint against independent training, sweeping lambda of the hybrid loss.

``loss = sum_m CE(member_m) + lambda * CE(mean of member probabilities)``
(``make_trainer(regime='hybrid', lam=lambda, fusion=fj.fusion.mean())``);
``lambda = 0`` is independent training, and ``regime='joint'`` (the fused loss
alone) is the limit of large lambda. For each setting: the ensemble's test
accuracy and NLL, the mean member's, their gap (the gain of the ensemble over
its mean member) and the members' mean pairwise disagreement.
"""
import jax

import fusionjax as fj
from experiments.tasks import common


# run.py hands this task the whole ``seeds`` list (it loops over seeds itself).
LOOPS_OVER_SEEDS = True


def run(cfg, data_dir, timer):
  with timer("data"):
    d = common.load_data(cfg, data_dir)
  c = int(d.y_train.max()) + 1
  module = common.make_module(cfg["model"], c)
  fusion = fj.fusion.mean()
  rows = []
  settings = [("hybrid", lam) for lam in cfg["lambdas"]] + (
      [("joint", None)] if cfg.get("joint", True) else [])
  for seed in cfg["seeds"]:
    for regime, lam in settings:
      ens = fj.ensemble.from_linen(module, cfg["members"])
      r_name = "independent" if regime == "hybrid" and lam == 0 else regime
      with timer("train"):
        state = common.fit(ens, cfg, d.x_train, d.y_train, jax.random.key(seed), seed=seed,
                           fusion=None if r_name == "independent" else fusion,
                           regime=r_name, lam=1.0 if lam is None else lam)
        logits = common.member_logits(ens, state, d.x_test)
      single = common.member_scores(logits, d.y_test)
      ensemble = common.scores(common.mean_fused(logits), d.y_test)
      rows.append({"seed": seed, "regime": regime, "lam": lam,
                   "ensemble": ensemble,
                   "member": {k: single[k] for k in single if k.endswith(("_mean", "_std"))},
                   "gain_accuracy": ensemble["accuracy"] - single["accuracy_mean"],
                   "gain_nll": single["nll_mean"] - ensemble["nll"],
                   "disagreement": float(fj.metrics.disagreement(logits))})
  return {"dataset": d.name, "members": cfg["members"], "model": cfg["model"],
          "train_size": len(d.y_train), "rows": rows}
