"""Table 1: fusion methods side by side (accuracy, NLL, ECE, cost in member evaluations).

For each data set:

1. ``M`` members and ``K x M`` fold replicas (replica ``k`` never sees fold
   ``k``) train in ONE stacked step, ``(K + 1) M`` members with per-member
   data (``fj.train.cross_fit``);
2. fixed fusions (mean of probabilities, mean of logits, hard vote) read the
   members' test outputs; learned weights, the gate and the cascade threshold
   are fitted on the validation split (members frozen); stacking's linear
   meta-learner is fitted on the training set, once on out-of-fold outputs
   (``fj.fusion.out_of_fold``) and once on the members' own (in-sample) outputs;
3. training-time integration: a greedy soup of ingredients fine-tuned from one
   member, the uniform soup of the independently initialised members (a
   negative control), gradient boosting (``integrate.boost``) and a
   student distilled from the mean ensemble (``integrate.distill``).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

import fusionjax as fj
from fusionjax import integrate
from experiments.tasks import cascade, common


def _fit_fusion(fusion, outs, y, key, steps, lr, x=None, l2_c=None):
  """Full-batch Adam on the fused NLL; ``l2_c``: an L2 penalty ``|w|^2 / (2 C N)`` on the
  mean loss, i.e. scikit-learn's ``LogisticRegression(C)`` objective divided by ``C N``."""
  tx = optax.adam(lr)
  if l2_c:
    tx = optax.chain(optax.add_decayed_weights(1.0 / (l2_c * len(y))), tx)
  params, losses = fj.fusion.fit(fusion, jnp.asarray(outs), jnp.asarray(y), key, steps,
                                 tx, x=None if x is None else jnp.asarray(x))
  return params, float(losses[-1])


def _apply(fusion, params, outs, x=None):
  return np.asarray(fusion.apply(params, jnp.asarray(outs),
                                 x=None if x is None else jnp.asarray(x)))


def cascade_threshold(val_outs, y_val, test_outs, y_test, grid):
  """Prefix-mean cascade (stage s = mean of members 0..s); the cheapest threshold
  whose validation accuracy reaches the full mean ensemble's, evaluated on test."""
  apply = cascade.prefix_cascade(val_outs.shape[0])
  full_val = common.scores(common.mean_fused(val_outs), y_val)["accuracy"]
  sweep = []
  for t in grid:
    lp, info = apply(jnp.asarray(val_outs), jnp.float32(t))
    sweep.append((float(info.expected_cost), -common.scores(lp, y_val)["accuracy"], float(t)))
  ok = [s for s in sweep if -s[1] >= full_val - 1e-9]
  _, _, t = min(ok) if ok else min(sweep, key=lambda s: s[1])
  lp, info = apply(jnp.asarray(test_outs), jnp.float32(t))
  return np.asarray(lp), float(info.expected_cost), t


def run_dataset(cfg, data_dir, timer):
  with timer("data"):
    d = common.load_data(cfg, data_dir)
  c = int(d.y_train.max()) + 1
  m, k = cfg["members"], cfg["folds"]
  module = common.make_module(cfg["model"], c)
  key = jax.random.key(cfg.get("seed", 0))
  keys = jax.random.split(key, 8)
  rows = {}

  def add(name, log_probs, y, cost, **extra):
    r = common.scores(log_probs, y)
    one_hot = np.all(np.isin(np.exp(np.asarray(log_probs)), (0.0, 1.0)))
    if one_hot or not np.isfinite(r["nll"]):  # a hard vote: NLL says nothing about it
      r["nll"] = r["brier"] = None
    rows[name] = {**r, "cost": float(cost), **extra}

  # 1. members and fold replicas: (K + 1) * M members in one stacked step
  #    (fj.train.cross_fit; replica k never sees fold k, the last M see everything).
  n = len(d.y_train)
  folds = np.asarray(fj.fusion.stratified_folds(d.y_train, k))
  per_epoch = min([n] + [int(np.sum(folds != j)) for j in range(k)])
  steps = cfg["epochs"] * (per_epoch // cfg["batch_size"])
  with timer("train_members_and_replicas"):
    cf = fj.train.cross_fit(module, m, k, common.optimizer(cfg, steps),
                            (d.x_train, d.y_train), key=keys[1], epochs=cfg["epochs"],
                            batch_size=cfg["batch_size"], seed=cfg.get("seed", 0))
    full = slice(k * m, (k + 1) * m)  # the members trained on all the data
    val_out = common.member_logits(cf.ensemble, cf.state, d.x_val)[full]
    test_out = common.member_logits(cf.ensemble, cf.state, d.x_test)[full]
  members = jax.tree.map(lambda a: np.asarray(a[full]), cf.state.params["members"])
  train_out, oof = np.asarray(cf.in_sample), np.asarray(cf.oof)

  with timer("fusions"):
    single = common.member_scores(test_out, d.y_test)
    rows["single member"] = {k_: single[f"{k_}_mean"] for k_ in
                             ("accuracy", "error", "nll", "brier", "ece")}
    rows["single member"].update(cost=1.0, accuracy_std=single["accuracy_std"])
    for name, f in (("mean of probabilities", fj.fusion.mean()),
                    ("mean of logits", fj.fusion.mean_logits()),
                    ("hard vote", fj.fusion.hard_vote())):
      add(name, _apply(f, (), test_out), d.y_test, m)

    fit_steps, fit_lr = cfg["fusion_steps"], cfg["fusion_lr"]
    f = fj.fusion.weighted(m)
    p, _ = _fit_fusion(f, val_out, d.y_val, keys[2], fit_steps, fit_lr)
    add("learned weights", _apply(f, p, test_out), d.y_test, m,
        weights=np.asarray(jax.nn.softmax(p["logits"])).tolist())

    f = fj.fusion.stacking(m, c, features=cfg["stack_features"])
    p, _ = _fit_fusion(f, oof, d.y_train, keys[3], cfg["stack_steps"], fit_lr,
                       l2_c=cfg.get("stack_l2_c"))
    add("stacking, out-of-fold", _apply(f, p, test_out), d.y_test, m)
    p, _ = _fit_fusion(f, train_out, d.y_train, keys[3], cfg["stack_steps"], fit_lr,
                       l2_c=cfg.get("stack_l2_c"))
    add("stacking, in-sample", _apply(f, p, test_out), d.y_test, m)

    f = fj.fusion.gating(m, hidden=cfg["gate_hidden"])
    p, _ = _fit_fusion(f, val_out, d.y_val, keys[4], fit_steps, fit_lr, x=d.x_val)
    add("gating", _apply(f, p, test_out, x=d.x_test), d.y_test, m)

    lp, cost, t = cascade_threshold(val_out, d.y_val, test_out, d.y_test, cfg["cascade_grid"])
    add("cascade", lp, d.y_test, cost, threshold=t)

  # 3. training-time integration.
  apply1 = jax.jit(lambda p, x: module.apply({"params": p}, x))

  def logits1(p, x, bs=2000):
    return np.concatenate([np.asarray(apply1(p, jnp.asarray(x[i:i + bs])))
                           for i in range(0, len(x), bs)])

  with timer("soups"):
    s = cfg["soup_ingredients"]
    start = jax.tree.map(lambda a: np.repeat(a[:1], s, axis=0), members)
    ens_s = fj.ensemble.from_linen(module, s)
    soup_cfg = {**cfg, "lr": cfg["soup_lr"]}
    soup_steps = common.steps_for({**cfg, "epochs": cfg["soup_epochs"]}, n)
    ing = common.fit_per_member(ens_s, soup_cfg, d.x_train, d.y_train, [np.arange(n)] * s,
                                keys[5], steps=soup_steps, seed=100 + cfg.get("seed", 0),
                                init_params=start)
    acc = lambda p: float(np.mean(logits1(p, d.x_val).argmax(-1) == d.y_val))
    greedy = integrate.greedy_soup(ing.params["members"], acc)
    add("greedy soup (fine-tuned)", common.log_softmax(logits1(greedy.params, d.x_test)),
        d.y_test, 1, ingredients=list(greedy.members), num_ingredients=s)
    uniform = integrate.uniform_soup(members)
    add("uniform soup (independent inits)", common.log_softmax(logits1(uniform, d.x_test)),
        d.y_test, 1)

  with timer("boosting"):
    per_member = common.steps_for(cfg, n)
    res = integrate.boost(module, d.x_train, d.y_train, d.x_val, d.y_val, key=keys[6],
                             tx=common.optimizer(cfg, per_member), rounds=cfg["boost_rounds"],
                             steps_per_round=per_member, batch_size=cfg["batch_size"],
                             shrinkage=cfg["boost_shrinkage"], patience=cfg["boost_rounds"])
    add("gradient boosting", np.asarray(integrate.boost_predict(res, d.x_test)), d.y_test,
        res.num_members, rounds=res.num_members)

  with timer("distillation"):
    teacher = common.mean_fused(train_out)
    res = integrate.distill(module, teacher, d.x_train, d.y_train, key=keys[7],
                               tx=common.optimizer(cfg, steps), temperature=cfg["distill_T"],
                               alpha=cfg["distill_alpha"], num_steps=steps,
                               batch_size=cfg["batch_size"])
    student = jax.tree.map(lambda a: a[0], res.variables["params"])
    add("distilled student", common.log_softmax(logits1(student, d.x_test)), d.y_test, 1)

  return {"dataset": d.name, "members": m, "folds": k, "model": cfg["model"],
          "train_size": n, "val_size": len(d.y_val), "test_size": len(d.y_test),
          "steps": steps, "rows": rows,
          "member_disagreement": float(fj.metrics.disagreement(jnp.asarray(test_out)))}


def run(cfg, data_dir, timer):
  out = {}
  for ds in cfg["datasets"]:
    sub = {**{k: v for k, v in cfg.items() if k != "datasets"}, **ds}
    out[ds["dataset"]] = run_dataset(sub, data_dir, timer)
  return out
