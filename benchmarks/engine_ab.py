"""Before/after of the training engine: the new default step against a frozen copy of the old.

    python benchmarks/engine_ab.py [--models digits_mlp mnist_mlp cnn] [--members 1 16 64]
        [--cycles 15] [--out engine_ab]

For each model and M, in one process and interleaved (ABAB...):

* ``new``: ``fj.train.make_trainer(ens, adam, x_example=x).step`` as shipped
  (``layout='auto'``: on CPU ``'scan'`` for dense members, ``'loop'`` for two or
  more convolutional members, ``'scan'`` for one);
* ``old``: ``benchmarks/_frozen_step.py``'s ``make_step(ens, adam)``, the step
  before the rewrite (commit 346cbb9), with its own state.

Both are guarded (the default), batch 128, Adam(1e-3), synthetic inputs. The
ratio is the median of per-cycle ratios old time / new time (> 1: the new step
is faster); the issue's bar is >= 0.97x.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import _common as C  # noqa: E402
import _frozen_step as old  # noqa: E402
import fusionjax as fj  # noqa: E402
from ensemble_step import BATCH, MODELS  # noqa: E402


def variants(model: str, m: int):
  shape, make = MODELS[model]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(BATCH, *shape)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, BATCH), jnp.int32)
  batch = {"x": x, "y": y}
  ens = fj.ensemble.from_linen(make(), m)
  tx = optax.adam(1e-3)
  trainer = fj.train.make_trainer(ens, tx, x_example=x[:1])
  boxes = {"new": {"s": trainer.init(jax.random.key(0), x[:1])},
           "old": {"s": old.init(ens, tx, jax.random.key(0), x[:1])}}
  steps = {"new": trainer.step, "old": old.make_step(ens, tx)}
  out, first = {}, {}
  for name, step in steps.items():
    box = boxes[name]
    t = time.perf_counter()
    box["s"], logs = step(box["s"], batch)
    jax.block_until_ready(logs)
    first[name] = time.perf_counter() - t

    def run(step=step, box=box):
      box["s"], logs = step(box["s"], batch)
      jax.block_until_ready(logs["loss"])

    out[name] = run
  # Same maths: after the warm-up step both states hold the same member losses.
  return out, {"layout": trainer.layout, "first_step_s": first}


def bench(model, m, cycles, target_s):
  runs, info = variants(model, m)
  times = C.interleave(runs, cycles, target_s=target_s)
  return {"model": model, "members": m, "layout": info["layout"], "cycles": cycles,
          "new_ms": 1e3 * C.med(times["new"]), "old_ms": 1e3 * C.med(times["old"]),
          "new_vs_old": C.ratio(times["old"], times["new"]),
          "first_step_s": info["first_step_s"]}


COLUMNS = [
    ("model", "model", None), ("M", "members", None), ("new layout", "layout", None),
    ("old ms", "old_ms", "{:.2f}"), ("new ms", "new_ms", "{:.2f}"),
    ("new vs old", lambda r: r["new_vs_old"]["median"], "{:.3f}x"),
    ("(min-max)", lambda r: "{:.2f}-{:.2f}".format(r["new_vs_old"]["min"],
                                                   r["new_vs_old"]["max"]), None),
    ("cycles", "cycles", None),
]


def render(result) -> str:
  return ("old time / new time, median of per-cycle ratios (>1: the new step is faster):\n\n"
          + C.table(result["rows"], COLUMNS))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
  p.add_argument("--members", type=int, nargs="+", default=[1, 16, 64])
  p.add_argument("--cycles", type=int, default=15)
  p.add_argument("--target-s", type=float, default=0.15)
  p.add_argument("--out", default="engine_ab")
  args = p.parse_args(argv)
  mach = C.machine()
  print(f"CPU: {mach['cpu']}; AVX-512: {C.has_avx512()}", flush=True)
  rows = []
  for model in args.models:
    for m in args.members:
      rows.append(bench(model, m, args.cycles, args.target_s))
      print(C.table(rows[-1:], COLUMNS).splitlines()[-1] if len(rows) > 1
            else C.table(rows, COLUMNS), flush=True)
  result = {"rows": rows, "machine": mach}
  print()
  print(render(result))
  C.write(args.out, result)


if __name__ == "__main__":
  main()
