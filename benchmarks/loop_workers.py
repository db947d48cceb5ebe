"""Host threads of the 'loop' layout: the CNN step's time against ``LOOP_WORKERS``.

    python benchmarks/loop_workers.py [--members 16 64] [--workers 1 2 3 4] [--cycles 5]

For each M, ``fj.train.make_trainer(from_linen(CNN(10, (8, 16), 64), M), adam)``
(layout ``'loop'``, as ``'auto'`` picks for convolutional members on CPU) is
built once per worker count and the steps are interleaved in ABAB... cycles
(batch 128, synthetic MNIST-shaped inputs). It is the measurement behind
``fusionjax.train._trainer.LOOP_WORKERS``.
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
import fusionjax as fj  # noqa: E402
from fusionjax.train import _trainer  # noqa: E402

COLUMNS = [("M", "members", None), ("workers", "workers", None),
           ("step ms", "step_ms", "{:.1f}"), ("ms per member", "ms_per_member", "{:.2f}"),
           ("1 worker / this", lambda r: r["vs_one"]["median"], "{:.2f}x")]


def bench(m, workers, cycles):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(128, 28, 28, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 128), jnp.int32)
  ens = fj.ensemble.from_linen(fj.models.CNN(10, (8, 16), 64), m)
  batch, runs = {"x": x, "y": y}, {}
  default = _trainer.LOOP_WORKERS
  try:
    for w in workers:
      _trainer.LOOP_WORKERS = w
      trainer = fj.train.make_trainer(ens, optax.adam(1e-3), x_example=x[:1])
      state = {"s": trainer.init(jax.random.key(0), x[:1])}

      def run(trainer=trainer, state=state):
        state["s"], logs = trainer.step(state["s"], batch)
        jax.block_until_ready(logs)

      run()
      runs[w] = run
  finally:
    _trainer.LOOP_WORKERS = default
  times = C.interleave(runs, cycles, target_s=0.5)
  return [{"members": m, "workers": w, "step_ms": 1e3 * C.med(t),
           "ms_per_member": 1e3 * C.med(t) / m, "vs_one": C.ratio(times[workers[0]], t)}
          for w, t in times.items()]


def render(result):
  return (f"`LOOP_WORKERS` shipped: {result['shipped']}. Ratios are the first worker "
          "count's step time over this one's (median of per-cycle ratios).\n\n" +
          C.table(result["rows"], COLUMNS))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--members", type=int, nargs="+", default=[16, 64])
  p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3, 4])
  p.add_argument("--cycles", type=int, default=5)
  p.add_argument("--out", default="loop_workers")
  args = p.parse_args(argv)
  rows = []
  for m in args.members:
    rows += bench(m, args.workers, args.cycles)
    print(C.table(rows, COLUMNS), flush=True)
  result = {"rows": rows, "shipped": _trainer.LOOP_WORKERS, "cycles": args.cycles}
  print(render(result))
  C.write(args.out, result)


if __name__ == "__main__":
  main()
