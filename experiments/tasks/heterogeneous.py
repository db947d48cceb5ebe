"""Figure 5: heterogeneous fusion. CNN and GRU members alone, averaged, weighted and stacked.

``fj.ensemble.groups(cnn=..., gru=...)`` trains both kinds in one jitted step
(each group vmapped on its own, outputs concatenated on the member axis).
Fusions read the members' test outputs; learned weights and the stacking
meta-learner are fitted on the validation split (members frozen). Per-group
fusions are compositions: ``chain(select('cnn', groups), mean())``.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

import fusionjax as fj
from experiments.tasks import common


def run(cfg, data_dir, timer):
  with timer("data"):
    d = common.load_data(cfg, data_dir)
  c = int(d.y_train.max()) + 1
  parts = {g: fj.ensemble.from_linen(common.make_module(spec, c), spec["members"])
           for g, spec in cfg["groups"].items()}
  ens = fj.ensemble.groups(**parts)
  names = {g: range(*ens.groups[g]) for g in ens.groups}
  with timer("train"):
    state = common.fit(ens, cfg, d.x_train, d.y_train, jax.random.key(cfg.get("seed", 0)),
                       seed=cfg.get("seed", 0))
    val = jnp.asarray(common.member_logits(ens, state, d.x_val))
    test = jnp.asarray(common.member_logits(ens, state, d.x_test))
  m = ens.size
  rows = {}
  with timer("fusions"):
    for i, name in enumerate(ens.names):
      rows[f"member {name}"] = {"kind": "member", "group": name.split("/")[0],
                                **common.scores(common.log_softmax(test[i]), d.y_test)}
    mean = fj.fusion.mean()
    for g in ens.groups:
      f = fj.fusion.chain(fj.fusion.select(g, names), mean)
      rows[f"mean of {g}"] = {"kind": "group mean", "group": g,
                              **common.scores(f.apply(f.init(None, test), test), d.y_test)}
    rows["mean of all"] = {"kind": "mean", **common.scores(mean.apply((), test), d.y_test)}
    tx = optax.adam(cfg["fusion_lr"])
    key = jax.random.key(1)
    learned = {
        "weighted (per member)": fj.fusion.weighted(m),
        "weighted (group means)": fj.fusion.chain(
            fj.fusion.parallel(*[fj.fusion.chain(fj.fusion.select(g, names), mean)
                                 for g in ens.groups]),
            fj.fusion.weighted(len(ens.groups))),
        "stacking (linear)": fj.fusion.stacking(m, c),
    }
    for name, f in learned.items():
      p, _ = fj.fusion.fit(f, val, jnp.asarray(d.y_val), key, cfg["fusion_steps"], tx)
      rows[name] = {"kind": "learned", **common.scores(f.apply(p, test), d.y_test)}
      if name.startswith("weighted"):
        w = p["logits"] if "logits" in p else p[-1]["logits"]
        rows[name]["weights"] = np.asarray(jax.nn.softmax(w)).tolist()
  flops = {g: common.member_flops(cfg["groups"][g], d.x_train.shape[1:], c) for g in ens.groups}
  return {"dataset": d.name, "train_size": len(d.y_train), "groups": cfg["groups"],
          "member_flops": flops, "rows": rows,
          "disagreement_matrix": np.asarray(fj.metrics.disagreement_matrix(test)).tolist(),
          "names": list(ens.names)}
