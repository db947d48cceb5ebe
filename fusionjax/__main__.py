"""The main job: an ensemble of 8 MLPs on scikit-learn's digits (no download).

    python -m fusionjax [--members 8] [--epochs 30] [--out outputs/digits]

Trains every member in one jitted step, fuses them by averaging probabilities
(in log space), prints per-member and ensemble accuracy and NLL on the test
split, writes a JSON-lines log and saves a plot.
"""
import argparse
import json
import os
import time

import jax
import numpy as np
import optax


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m fusionjax", description=__doc__.split("\n")[0])
  parser.add_argument("--members", type=int, default=8)
  parser.add_argument("--epochs", type=int, default=30)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="outputs/digits")
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)

  import fusionjax as fj  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  train, val, test = fj.data.load("digits", seed=args.seed)
  ens = fj.ensemble.from_linen(fj.models.MLP(10, (256, 256)), args.members)
  os.makedirs(args.out, exist_ok=True)
  log_path = os.path.join(args.out, "log.jsonl")
  res = fj.train.fit(ens, optax.adam(args.lr), train, key=jax.random.key(args.seed),
                     epochs=args.epochs, batch_size=args.batch_size,
                     eval_sets={"val": val}, log_path=log_path,
                     progress=not args.no_progress, seed=args.seed)
  fuse = fj.fusion.mean()
  predict = fj.train.make_predict(ens, fuse)
  x_test, y_test = fj.train.as_arrays(test)
  report = fj.train.evaluate(predict, res.state, x_test, y_test)
  seconds = time.time() - t0

  print(f"\ndigits: {len(train)} train / {len(val)} val / {len(test)} test, "
        f"{args.members} MLPs (64-256-256-10), {args.epochs} epochs, {seconds:.1f} s")
  print(f"{'model':<12}{'accuracy':>10}{'NLL':>10}")
  for name, a, n in zip(ens.names, report["member_accuracy"], report["member_nll"]):
    print(f"{name:<12}{a:>10.4f}{n:>10.4f}")
  print(f"{'mean member':<12}{np.mean(report['member_accuracy']):>10.4f}"
        f"{np.mean(report['member_nll']):>10.4f}")
  print(f"{'ensemble':<12}{report['accuracy']:>10.4f}{report['nll']:>10.4f}"
        "   (mean of probabilities)")

  with open(os.path.join(args.out, "test.json"), "w") as f:
    json.dump({**report, "seconds": seconds, "members": args.members,
               "epochs": args.epochs}, f, indent=1)
  plot = os.path.join(args.out, "digits_ensemble.png")
  _plot(report, ens.names, log_path, plot)
  print(f"log: {log_path}\nplot: {plot}")


def _plot(report, names, log_path, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  with open(log_path) as f:
    log = [json.loads(l) for l in f]
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
  epochs = [r["epoch"] for r in log]
  members = np.array([r["val/member_nll"] for r in log])
  a1.plot(epochs, members, color="0.7", lw=1)
  a1.plot(epochs, [r["val/nll"] for r in log], color="C3", lw=2, label="ensemble")
  a1.plot([], [], color="0.7", label="members")
  a1.set(xlabel="epoch", ylabel="validation NLL", yscale="log", title="Training")
  a1.legend()
  acc = list(report["member_accuracy"]) + [report["accuracy"]]
  a2.bar(range(len(acc)), [100 * (1 - a) for a in acc],
         color=["0.6"] * len(names) + ["C3"])
  a2.set_xticks(range(len(acc)), [n.replace("mlp", "m") for n in names] + ["ens."],
                rotation=45)
  a2.set(ylabel="test error (%)", title="Members vs. their average")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


if __name__ == "__main__":
  main()
