"""Training throughput of the stacked ensemble step against a loop of single steps.

    python benchmarks/ensemble_step.py [--members 1 4 16 64] [--models digits_mlp mnist_mlp]
                                       [--repeats 7] [--steps 10] [--out benchmarks/results/ensemble_step.json]

For each model and ensemble size M it measures member-samples per second
(M * batch / step time) of

* ``stacked``: fusionjax's one jitted step for all members (``make_step``),
* ``loop``: a Python loop over M single-member jitted steps (flax + optax),

interleaved in the same run (ABAB... cycles), and reports medians and the
median of per-cycle ratios. Batch 128, Adam, synthetic inputs of the model's
shape (data loading is benchmarked in ``data_loader.py``).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fusionjax as fj

MODELS = {
    "digits_mlp": ((8, 8, 1), lambda: fj.models.MLP(10, (256, 256))),
    "mnist_mlp": ((28, 28, 1), lambda: fj.models.MLP(10, (256, 256))),
    "cnn": ((28, 28, 1), lambda: fj.models.CNN(10, (8, 16), 64)),
}


def _time(fn, steps):
  t = time.perf_counter()
  out = None
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / steps


def bench(model_name, m, batch, repeats, steps):
  shape, make = MODELS[model_name]
  module = make()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
  tx = optax.adam(1e-3)

  ens = fj.ensemble.from_linen(module, m)
  state = {"s": fj.train.init(ens, tx, jax.random.key(0), x[:1])}
  step = fj.train.make_step(ens, tx)
  batch_d = {"x": x, "y": y}

  def stacked():
    state["s"], logs = step(state["s"], batch_d)
    return logs["loss"]

  singles = [module.init(jax.random.key(i), x[:1])["params"] for i in range(m)]
  opts = [tx.init(p) for p in singles]

  @jax.jit
  def single_step(p, o, x, y):
    loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(
        module.apply({"params": q}, x), y).mean()
    l, g = jax.value_and_grad(loss)(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, l

  def loop():
    out = None
    for i in range(m):
      singles[i], opts[i], out = single_step(singles[i], opts[i], x, y)
    return out

  t0 = time.perf_counter()
  jax.block_until_ready(stacked())
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(loop())
  ts, tl = [], []
  for _ in range(repeats):
    ts.append(_time(stacked, steps))
    tl.append(_time(loop, steps))
  ratios = [b / a for a, b in zip(ts, tl)]
  return {
      "model": model_name, "members": m, "batch": batch,
      "stacked_step_ms": 1e3 * statistics.median(ts),
      "loop_step_ms": 1e3 * statistics.median(tl),
      "stacked_member_samples_per_s": m * batch / statistics.median(ts),
      "loop_member_samples_per_s": m * batch / statistics.median(tl),
      "speedup_median_of_ratios": statistics.median(ratios),
      "speedup_min": min(ratios), "speedup_max": max(ratios),
      "first_step_s": compile_s,
  }


def machine():
  return {"platform": platform.platform(), "processor": platform.processor(),
          "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
          "jax": jax.__version__, "backend": jax.default_backend(),
          "devices": [str(d) for d in jax.devices()]}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--members", type=int, nargs="+", default=[1, 4, 16, 64])
  p.add_argument("--models", nargs="+", default=["digits_mlp", "mnist_mlp"], choices=list(MODELS))
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--out", default="benchmarks/results/ensemble_step.json")
  args = p.parse_args(argv)
  rows = []
  print(f"{'model':<11}{'M':>4}{'stacked ms':>12}{'loop ms':>10}{'stacked ms/s':>14}"
        f"{'loop ms/s':>12}{'ratio':>7}{' (min-max)':>12}{'1st step s':>11}")
  for name in args.models:
    for m in args.members:
      r = bench(name, m, args.batch, args.repeats, args.steps)
      rows.append(r)
      print(f"{name:<11}{m:>4}{r['stacked_step_ms']:>12.2f}{r['loop_step_ms']:>10.2f}"
            f"{r['stacked_member_samples_per_s']:>14.0f}{r['loop_member_samples_per_s']:>12.0f}"
            f"{r['speedup_median_of_ratios']:>7.2f} ({r['speedup_min']:.2f}-{r['speedup_max']:.2f})"
            f"{r['first_step_s']:>11.2f}", flush=True)
  print("member-samples/s = M * batch / median step time; ratio = loop time / stacked time, "
        "median of per-cycle ratios")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"command": "python " + " ".join(sys.argv), "machine": machine(), "rows": rows},
              f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
