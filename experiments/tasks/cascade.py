"""Figure 3: a confidence-gated cascade, accuracy against average cost.

``members`` networks train at once. Stage ``s`` of the cascade is the mean of
members ``0..s`` (``fj.fusion.chain(select(range(s + 1)), mean())``), so a
sample that exits at stage ``s`` has cost ``s + 1`` member evaluations, i.e.
``(s + 1) / M`` of the full ensemble's FLOPs. One threshold on the stage's top
probability is swept; for comparison, the fixed ensembles of the first ``k``
members (cost ``k / M``). Thresholds are also chosen on the validation split.
"""
import jax
import jax.numpy as jnp
import numpy as np

import fusionjax as fj
from experiments.tasks import common


def prefix_cascade(m, confidence="max_prob"):
  """The cascade over prefix means, with its threshold as a param (one compile per sweep)."""
  stages = [fj.fusion.chain(fj.fusion.select(list(range(s + 1))), fj.fusion.mean())
            for s in range(m)]
  f = fj.fusion.cascade(0.5, confidence=confidence, stages=stages, learn_thresholds=True)

  @jax.jit
  def apply(outs, t):
    params = f.init(jax.random.key(0), outs)
    # the threshold t itself (sigmoid(logit t)), exact at t = 0 and t = 1
    params["thresholds"] = jnp.full((m - 1,), jnp.log(t) - jnp.log1p(-t))
    return f.apply(params, outs, return_info=True)

  return apply


def sweep(outs, y, thresholds, confidence):
  m = outs.shape[0]
  apply = prefix_cascade(m, confidence)
  rows = []
  for t in thresholds:
    lp, info = apply(jnp.asarray(outs), jnp.float32(t))
    exits = np.bincount(np.asarray(info.stage), minlength=m) / len(y)
    rows.append({"threshold": float(t), "cost_members": float(info.expected_cost),
                 "cost_fraction": float(info.expected_cost) / m,
                 "exit_fraction": exits.tolist(), **common.scores(lp, y)})
  return rows


def run(cfg, data_dir, timer):
  with timer("data"):
    d = common.load_data(cfg, data_dir)
  c = int(d.y_train.max()) + 1
  module = common.make_module(cfg["model"], c)
  m = cfg["members"]
  ens = fj.ensemble.from_linen(module, m)
  with timer("train"):
    state = common.fit(ens, cfg, d.x_train, d.y_train, jax.random.key(cfg.get("seed", 0)),
                       seed=cfg.get("seed", 0))
    val = common.member_logits(ens, state, d.x_val)
    test = common.member_logits(ens, state, d.x_test)
  flops = common.member_flops(cfg["model"], d.x_train.shape[1:], c)
  with timer("sweep"):
    out = {"dataset": d.name, "members": m, "model": cfg["model"], "member_flops": flops,
           "prefix": [{"members": k, "cost_fraction": k / m,
                       **common.scores(common.mean_fused(test[:k]), d.y_test)}
                      for k in range(1, m + 1)]}
    for conf in cfg["confidences"]:
      out[f"test_{conf}"] = sweep(test, d.y_test, cfg["thresholds"], conf)
      out[f"val_{conf}"] = sweep(val, d.y_val, cfg["thresholds"], conf)
  full_test = out["prefix"][-1]["accuracy"]
  full_val = common.scores(common.mean_fused(val), d.y_val)["accuracy"]
  for conf in cfg["confidences"]:
    # cheapest threshold matching the full ensemble: on test (oracle) and chosen on validation
    ok = [r for r in out[f"test_{conf}"] if r["accuracy"] >= full_test]
    out[f"match_test_{conf}"] = min(ok, key=lambda r: r["cost_fraction"]) if ok else None
    ok = [i for i, r in enumerate(out[f"val_{conf}"]) if r["accuracy"] >= full_val]
    i = min(ok, key=lambda i: out[f"val_{conf}"][i]["cost_fraction"]) if ok else None
    out[f"match_val_{conf}"] = None if i is None else out[f"test_{conf}"][i]
  return out
