"""The executing cascade's wall time against the full ensemble, on MNIST.

    python benchmarks/cascade.py [--members 8] [--epochs 2] [--cycles 5]
        [--out benchmarks/results/cascade.json]

Trains M MNIST MLPs (784-256-256-10, Adam 1e-3, batch 128, one stacked step)
on the first 55k training images, keeps the last 5k to choose thresholds, and
compares on the 10k test images, interleaved (ABAB...):

* ``full``: the fused mean of all M members (``make_predict`` with
  ``fusion.mean()``), one call over the test set;
* ``cascade t``: ``fj.train.cascade_predict`` with one threshold ``t`` for every
  stage: member s runs only on the samples still undecided after members
  0..s-1 (gathered and padded to power-of-two buckets);
* ``dense cascade``: ``fusion.cascade`` under ``make_predict``: the same hard
  rule with every member on every sample (what a jitted, static-shape cascade
  costs).

Stage s answers with member s (``answer='member'``, the rule of
``fusion.cascade``) or with the mean of members 0..s (``'running_mean'``). "At
equal accuracy" is the smallest threshold whose validation accuracy reaches the
full ensemble's; if none does, the most accurate threshold is reported with its
gap. The data are read from ``../shared/data/mnist`` (or ``--data-dir``).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import _common as C  # noqa: E402
import fusionjax as fj  # noqa: E402

THRESHOLDS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
ANSWERS = ("member", "running_mean")


def load_mnist(data_dir):
  read = lambda name, **kw: fj.data.read_idx(os.path.join(data_dir, name), **kw)
  norm = lambda a: ((a.astype(np.float32) / 255.0 - 0.1307) / 0.3081)[..., None]
  xtr = norm(read("train-images-idx3-ubyte.gz", shape=(None, 28, 28)))
  ytr = read("train-labels-idx1-ubyte.gz", ndim=1).astype(np.int32)
  xte = norm(read("t10k-images-idx3-ubyte.gz", shape=(None, 28, 28)))
  yte = read("t10k-labels-idx1-ubyte.gz", ndim=1).astype(np.int32)
  return (xtr[:55000], ytr[:55000]), (xtr[55000:], ytr[55000:]), (xte, yte)


def train(m, epochs, train_set, seed=0):
  x, y = train_set
  ens = fj.ensemble.from_linen(fj.models.MLP(10, (256, 256)), m)
  tx = optax.adam(1e-3)
  state = fj.train.init(ens, tx, jax.random.key(seed), x[:1])
  step = fj.train.make_step(ens, tx)
  rng = np.random.default_rng(seed)
  for _ in range(epochs):
    perm = rng.permutation(len(x))
    for i in range(0, len(x) - 127, 128):
      idx = perm[i:i + 128]
      state, _ = step(state, {"x": x[idx], "y": y[idx]})
  jax.block_until_ready(state)
  return ens, state


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--members", type=int, default=8)
  p.add_argument("--epochs", type=int, default=2)
  p.add_argument("--cycles", type=int, default=5)
  p.add_argument("--bucket", type=int, default=64)
  p.add_argument("--data-dir", default=os.path.join(os.path.dirname(C.HERE), "..", "shared",
                                                     "data", "mnist"))
  p.add_argument("--out", default="cascade")
  args = p.parse_args(argv)
  mach = C.machine()
  if not os.path.isfile(os.path.join(args.data_dir, "t10k-images-idx3-ubyte.gz")):
    print(f"note: MNIST not found in {args.data_dir}; the cascade benchmark is skipped.")
    return
  train_set, val_set, test_set = load_mnist(args.data_dir)
  ens, state = train(args.members, args.epochs, train_set)
  fusion = fj.fusion.mean()
  predict = fj.train.make_predict(ens, fusion)
  xv, yv = jnp.asarray(val_set[0]), val_set[1]
  xt, yt = jnp.asarray(test_set[0]), test_set[1]
  acc = lambda lp, y: float(np.mean(np.argmax(np.asarray(lp), -1) == y))
  full_val, full_test = acc(predict(state, xv)[1], yv), acc(predict(state, xt)[1], yt)
  members_test = np.mean(np.argmax(np.asarray(predict(state, xt)[0]), -1) == yt[None], axis=1)

  rows, chosen = [], {}
  for answer in ANSWERS:
    part = []
    for t in THRESHOLDS:
      run = lambda xx, t=t, answer=answer: fj.train.cascade_predict(
          ens, state, xx, t, bucket=args.bucket, answer=answer)
      (lp_v, _), (lp_t, st) = run(xv), run(xt)
      part.append({"answer": answer, "threshold": t, "val_acc": acc(lp_v, yv),
                   "test_acc": acc(lp_t, yt), "mean_stages": float(np.mean(np.asarray(st) + 1)),
                   "exit_at_0": float(np.mean(np.asarray(st) == 0)), "run": run})
    reach = [r for r in part if r["val_acc"] >= full_val]
    best = reach[0] if reach else max(part, key=lambda r: r["val_acc"])
    chosen[answer] = {"threshold": best["threshold"], "reached": bool(reach)}
    rows += part

  dense = fj.train.make_predict(ens, fj.fusion.cascade(chosen["member"]["threshold"]))
  variants = {
      "full": lambda: jax.block_until_ready(predict(state, xt)[1]),
      "dense cascade": lambda: jax.block_until_ready(dense(state, xt)[1]),
  }
  for r in rows:
    variants[f"{r['answer']} {r['threshold']}"] = (
        lambda run=r.pop("run"): jax.block_until_ready(run(xt)))
  for v in variants.values():
    v()
  times = C.interleave(variants, args.cycles, target_s=0.3)
  for r in rows:
    tt = times[f"{r['answer']} {r['threshold']}"]
    r["ms"] = 1e3 * C.med(tt)
    r["speedup_vs_full"] = C.ratio(times["full"], tt)["median"]
  result = {
      "members": args.members, "epochs": args.epochs, "test_samples": int(len(yt)),
      "full_val_acc": full_val, "full_test_acc": full_test,
      "member_test_acc": members_test.tolist(),
      "full_ms": 1e3 * C.med(times["full"]),
      "dense_cascade_ms": 1e3 * C.med(times["dense cascade"]),
      "rows": rows, "chosen": chosen, "machine": mach,
  }
  print(render(result))
  C.write(args.out, result)


COLUMNS = [("stage answers with", "answer", None), ("threshold", "threshold", None),
           ("val acc", "val_acc", "{:.4f}"), ("test acc", "test_acc", "{:.4f}"),
           ("mean stages run", "mean_stages", "{:.2f}"), ("exit at stage 0", "exit_at_0", "{:.1%}"),
           ("wall ms (10k)", "ms", "{:.1f}"), ("full time / cascade time", "speedup_vs_full", "{:.2f}x")]


def render(r):
  head = (f"M={r['members']} MNIST MLPs ({r['epochs']} epochs), {r['test_samples']} test "
          f"images in one call. Full ensemble (mean of {r['members']}): val acc "
          f"{r['full_val_acc']:.4f}, test acc {r['full_test_acc']:.4f}, "
          f"{r['full_ms']:.1f} ms; dense cascade (every member on every sample, static "
          f"shapes): {r['dense_cascade_ms']:.1f} ms. Single members' test acc: "
          f"{min(r['member_test_acc']):.4f}-{max(r['member_test_acc']):.4f}. Stage s runs "
          "member s on the remaining samples; it answers with member s ('member', the "
          "rule of fusion.cascade) or with the mean of members 0..s ('running_mean').\n\n")
  lines = []
  for answer, c in r["chosen"].items():
    x = [q for q in r["rows"] if q["answer"] == answer and q["threshold"] == c["threshold"]][0]
    if c["reached"]:
      lines.append(
          f"- `{answer}`: at equal accuracy (threshold {x['threshold']}: val acc "
          f"{x['val_acc']:.4f} >= {r['full_val_acc']:.4f}; test {x['test_acc']:.4f} vs "
          f"{r['full_test_acc']:.4f}) the cascade runs {x['mean_stages']:.2f} of "
          f"{r['members']} members per sample: {x['ms']:.1f} ms against {r['full_ms']:.1f} ms "
          f"({x['speedup_vs_full']:.2f}x faster).")
    else:
      lines.append(
          f"- `{answer}`: no threshold reaches the full ensemble's validation accuracy (a "
          f"stage answers with one member); the closest, threshold {x['threshold']}, is "
          f"{r['full_val_acc'] - x['val_acc']:.4f} below it (test {x['test_acc']:.4f} vs "
          f"{r['full_test_acc']:.4f}), runs {x['mean_stages']:.2f} members per sample and "
          f"takes {x['ms']:.1f} ms against {r['full_ms']:.1f} ms "
          f"({x['speedup_vs_full']:.2f}x).")
  return head + C.table(r["rows"], COLUMNS) + "\n\n" + "\n".join(lines)


if __name__ == "__main__":
  main()
