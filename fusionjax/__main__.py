"""The main job: train an ensemble, fuse it, and show what ensembling buys.

    python -m fusionjax                       # 8 MLPs on scikit-learn's digits (no download)
    python -m fusionjax --model cnn --fusion weighted --members 4
    python -m fusionjax --dataset mnist --data_dir ../shared/data/mnist --epochs 5
    python -m fusionjax --help                # every flag and its default

Trains every member in one jitted step per batch, fuses them (``--fusion``),
prints per-member and ensemble accuracy, NLL and ECE on the test split, writes
``log.jsonl`` (per epoch) and ``test.json`` under ``--out``, and saves a figure
made with :mod:`fusionjax.plot`: test NLL and error of the ensemble of k
members against k (band: min-max over the M cyclic windows of k members), and
the reliability diagrams of one member and of the fused ensemble.
"""
import argparse
import json
import os
import time

import numpy as np

MODELS = ("mlp", "cnn", "gru")
FUSIONS = ("mean", "mean_logits", "soft_vote", "hard_vote", "weighted")
_FUSION_TEXT = {
    "mean": "mean of probabilities",
    "mean_logits": "mean of logits",
    "soft_vote": "soft vote (scikit-learn's VotingClassifier; unweighted = mean)",
    "hard_vote": "hard (majority) vote",
    "weighted": "weighted mean of probabilities, weights learned on the validation split",
}


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m fusionjax", description=__doc__.split("\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--dataset", default="digits",
                 help="'digits' (embedded, no download), 'mnist', 'fashion_mnist', 'kmnist' "
                 "(their IDX .gz files in --data_dir) or a tfds data set prepared there "
                 "(fusionjax.data.load)")
  p.add_argument("--data_dir", "--data-dir", default=None,
                 help="folder of the data files; None: $FUSIONJAX_DATA, else "
                 "~/.cache/fusionjax/data. Not needed for digits")
  p.add_argument("--model", default="mlp", choices=MODELS,
                 help="member architecture: mlp = MLP(C, (256, 256)); cnn = CNN(C) (conv 32-64, "
                 "dense 128); gru = RowGRU(C, 64), reading an image row by row")
  p.add_argument("--members", type=int, default=8, help="ensemble size M")
  p.add_argument("--fusion", default="mean", choices=FUSIONS,
                 help="how member outputs are combined (fusionjax.fusion): "
                 + "; ".join(f"{k} = {v}" for k, v in _FUSION_TEXT.items()))
  p.add_argument("--epochs", type=int, default=30, help="passes over the training split")
  p.add_argument("--batch_size", "--batch-size", type=int, default=64,
                 help="examples per step (each member sees the same batch)")
  p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (per member)")
  p.add_argument("--seed", type=int, default=0,
                 help="seeds the members' init, the batch order and the validation split")
  p.add_argument("--out", default=None,
                 help="output folder for log.jsonl, test.json and the figure; None: "
                 "outputs/<dataset>")
  p.add_argument("--no_progress", "--no-progress", action="store_true",
                 help="no tqdm progress bar")
  return p


def _model(name: str, num_classes: int):
  import fusionjax as fj  # pylint: disable=g-import-not-at-top
  if name == "mlp":
    return fj.models.MLP(num_classes, (256, 256))
  if name == "cnn":
    return fj.models.CNN(num_classes)
  return fj.models.RowGRU(num_classes, 64)


def _describe(name: str, x_shape, num_classes: int) -> str:
  if name == "mlp":
    return f"MLPs ({int(np.prod(x_shape))}-256-256-{num_classes})"
  if name == "cnn":
    return "CNNs (conv 32-64, dense 128)"
  return f"GRUs ({x_shape[0]} rows of {int(np.prod(x_shape[1:]))}, 64 hidden)"


def _member_logits(predict, state, x, batch_size: int = 1000) -> np.ndarray:
  return np.concatenate([np.asarray(predict(state, x[i:i + batch_size])[0])
                         for i in range(0, len(x), batch_size)], axis=1)


def _fusion(name: str, members: int, val_logits, y_val, seed: int):
  """The fusion and its params (the weighted one is fit on the validation split)."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from fusionjax import fusion as fu  # pylint: disable=g-import-not-at-top
  if name == "weighted":
    fuse = fu.weighted(members)
    params, _ = fu.fit(fuse, val_logits, y_val, jax.random.key(seed), steps=200,
                       tx=optax.adam(0.05))
    return fuse, params
  fuse = getattr(fu, name)()
  return fuse, fuse.init(jax.random.key(seed), val_logits)


def size_curve(member_logits: np.ndarray, labels: np.ndarray) -> dict:
  """Accuracy and NLL of the mean of k members' probabilities, for k = 1..M.

  Row s of each ``[M, M]`` array is the ensemble of the cyclic window of
  members ``s, s+1, ..., s+k-1 (mod M)``: M draws of k members, each member
  used equally often, so the band over rows shows how much the choice of
  members matters at that size.
  """
  from scipy.special import log_softmax  # pylint: disable=g-import-not-at-top
  from fusionjax import metrics  # pylint: disable=g-import-not-at-top
  m = member_logits.shape[0]
  lp = log_softmax(member_logits.astype(np.float64), axis=-1)               # [M, N, C]
  acc, nll = np.zeros((m, m)), np.zeros((m, m))
  window = np.full(lp.shape, -np.inf)       # row s: log of the summed probabilities of its window
  for k in range(1, m + 1):
    window = np.logaddexp(window, lp[(np.arange(m) + k - 1) % m])   # add member s+k-1 (mod M)
    fused = (window - np.log(k)).astype(np.float32)                       # [S=M, N, C]
    s = metrics.summary(fused, labels)                     # one compile: same shape for every k
    acc[:, k - 1], nll[:, k - 1] = np.asarray(s["accuracy"]), np.asarray(s["nll"])
  return {"sizes": list(range(1, m + 1)), "accuracy": acc.tolist(), "nll": nll.tolist()}


def main(argv=None):
  parser = _parser()
  args = parser.parse_args(argv)
  for flag in ("members", "epochs", "batch_size"):
    if getattr(args, flag) < 1:
      parser.error(f"--{flag}={getattr(args, flag)}; it must be >= 1")
  out = args.out or os.path.join("outputs", args.dataset)

  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import fusionjax as fj  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  train, val, test = fj.data.load(args.dataset, args.data_dir, seed=args.seed)
  num_classes = train.num_classes
  x_shape = train[np.arange(1)]["image"].shape[1:]
  ens = fj.ensemble.from_linen(_model(args.model, num_classes), args.members)
  os.makedirs(out, exist_ok=True)
  log_path = os.path.join(out, "log.jsonl")
  res = fj.train.fit(ens, optax.adam(args.lr), train, key=jax.random.key(args.seed),
                     epochs=args.epochs, batch_size=args.batch_size,
                     eval_sets={"val": val}, log_path=log_path,
                     progress=not args.no_progress, seed=args.seed)
  predict = fj.train.make_predict(ens)
  x_val, y_val = fj.train.as_arrays(val)
  x_test, y_test = fj.train.as_arrays(test)
  fuse, fuse_params = _fusion(args.fusion, args.members, _member_logits(predict, res.state, x_val),
                              y_val, args.seed)
  member = _member_logits(predict, res.state, x_test)                       # [M, N, C]
  fused = np.asarray(jax.jit(fuse.apply)(fuse_params, member))              # [N, C]
  report = {k: float(v) for k, v in fj.metrics.summary(fused, y_test).items()}
  # [M, N, C]: the program that size_curve runs for every k (compiled once)
  for k, v in fj.metrics.summary(member, y_test).items():
    report[f"member_{k}"] = np.asarray(v).tolist()
  report["disagreement"] = float(fj.metrics.disagreement(member))
  report["oracle_accuracy"] = float(fj.metrics.oracle_accuracy(member, y_test))
  report["size_curve"] = size_curve(member, y_test)
  seconds = time.time() - t0

  print(f"\n{args.dataset}: {len(train)} train / {len(val)} val / {len(test)} test, "
        f"{args.members} {_describe(args.model, x_shape, num_classes)}, {args.epochs} epochs, "
        f"{seconds:.1f} s")
  print(f"{'model':<12}{'accuracy':>10}{'NLL':>10}{'ECE':>10}")
  for name, a, n, e in zip(ens.names, report["member_accuracy"], report["member_nll"],
                           report["member_ece"]):
    print(f"{name:<12}{a:>10.4f}{n:>10.4f}{e:>10.4f}")
  print(f"{'mean member':<12}{np.mean(report['member_accuracy']):>10.4f}"
        f"{np.mean(report['member_nll']):>10.4f}{np.mean(report['member_ece']):>10.4f}")
  print(f"{'ensemble':<12}{report['accuracy']:>10.4f}{report['nll']:>10.4f}"
        f"{report['ece']:>10.4f}   ({_FUSION_TEXT[args.fusion]})")
  print(f"members disagree on {100 * report['disagreement']:.2f} % of test examples (mean over "
        f"pairs); one of them is right on {100 * report['oracle_accuracy']:.2f} %")

  with open(os.path.join(out, "test.json"), "w") as f:
    json.dump({**report, "seconds": seconds, **vars(args), "out": out}, f, indent=1)
  figure = os.path.join(out, f"{args.dataset}_ensemble.png")
  _figure(report, member, fused, y_test, args, figure)
  print(f"log: {log_path}\nresults: {os.path.join(out, 'test.json')}\nplot: {figure}")
  return report


def _figure(report, member, fused, labels, args, path):
  """Four panels from fj.plot: NLL and error against k, reliability of a member and the ensemble."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from scipy.special import softmax  # pylint: disable=g-import-not-at-top
  from fusionjax import plot  # pylint: disable=g-import-not-at-top
  curve = report["size_curve"]
  m = len(curve["sizes"])
  fig = Figure(figsize=(10, 9.5), layout="constrained")
  (a1, a2), (a3, a4) = fig.subplots(2, 2)
  over = "windows of k members"
  plot.metric_vs_size(curve["sizes"], np.array(curve["nll"]), ax=a1, over=over,
                      label="mean of k members")
  plot.metric_vs_size(curve["sizes"], 100 * (1 - np.array(curve["accuracy"])), ax=a2,
                      over=over, label="mean of k members")
  for ax, what in ((a1, "test NLL"), (a2, "test error (%)")):
    ax.set(xlabel="ensemble size k (members s..s+k-1 mod M)", ylabel=what, title=what)
  plot.reliability_diagram(softmax(member[0], axis=-1), labels, ax=a3, label="member 0")
  a3.set_title(f"one member: NLL {report['member_nll'][0]:.4f}")
  plot.reliability_diagram(np.exp(fused.astype(np.float64)), labels, ax=a4, label=args.fusion)
  a4.set_title(f"ensemble of {m} ({args.fusion}): NLL {report['nll']:.4f}")
  fig.suptitle(f"{args.dataset}: {m} {args.model.upper()}s, {len(labels)} test examples")
  fig.savefig(path, dpi=100)


if __name__ == "__main__":
  main()
