"""Does the grain pipeline keep the step fed? fit's loop fed by the pipeline vs device arrays.

The target (issue 20): ``fit``'s step rate fed by the data pipeline
(``fusionjax.data.pipeline``: real MNIST, batch 128, shuffled, normalised,
grain prefetch thread) is at least 0.95x the step rate fed from batches that
are already on the device, for M = 16 MNIST MLPs (784-256-256-10, Adam), the
step ``fit`` builds (``make_trainer`` with layout 'auto').

Both variants run ``steps`` steps of the same compiled step, in interleaved
cycles (ABAB...): ``pipeline`` takes each batch from the pipeline's iterator,
exactly as ``fit`` does (``next(it)``, then ``step(state, batch)``);
``device`` takes it from a list of the same batches placed on the device
beforehand. The ratio is the median of the per-cycle ratios of steps/s. A
third row times ``fit`` itself (3 epochs of ``steps`` steps on a subset,
compile excluded: the time between its second and its third record).

Command (from the repository root)::

    python benchmarks/pipeline_feed.py [--cycles 7] [--steps 100]

Prints a table and writes ``benchmarks/results/pipeline_feed.json``.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import jax
import numpy as np
import optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _common  # noqa: E402  pylint: disable=g-import-not-at-top
import fusionjax as fj  # noqa: E402  pylint: disable=g-import-not-at-top

MEMBERS, BATCH = 16, 128


def mnist(data_dir: str):
  try:
    train, _, _ = fj.data.load("mnist", data_dir=data_dir)
    return train, f"real MNIST ({data_dir})"
  except Exception as e:  # pylint: disable=broad-except
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60000, 28, 28, 1), np.uint8)
    return (fj.data.from_arrays(x, rng.integers(0, 10, 60000), normalization="mnist"),
            f"synthetic MNIST-shaped arrays ({type(e).__name__}: {e})")


def render(r: dict) -> str:
  """The section of RESULTS.md (benchmarks/report.py)."""
  q = r["ratio_pipeline_over_device"]
  return (f"M={r['members']} MNIST MLPs 784-256-256-10, batch {r['batch']}, layout "
          f"{r['layout']}, {r['data']}; {r['cycles']} interleaved cycles of {r['steps']} "
          "steps.\n\n" + _common.table(r["rows"], [("feed", "feed", ""),
                                                  ("steps/s", "steps/s", "{:.1f}")]) +
          f"\n\nPipeline / device step rate: median {q['median']:.3f}x (per-cycle range "
          f"{q['min']:.3f}-{q['max']:.3f}); target >= {r['target']}x.")


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--cycles", type=int, default=7)
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
  args = p.parse_args()

  train, origin = mnist(args.data_dir)
  ens = fj.ensemble.from_linen(fj.models.MLP(10, (256, 256)), MEMBERS)
  x0 = train[np.array([0])]["image"]
  trainer = fj.train.make_trainer(ens, optax.adam(1e-3), x_example=x0)
  state = trainer.init(jax.random.key(0), x0)
  pipe = fj.data.pipeline(train, BATCH, seed=0, num_epochs=1000, drop_last=True)
  it = iter(pipe.dataset)
  on_device = [jax.device_put(next(it)) for _ in range(args.steps)]
  box = {"state": state}

  def fed_by_pipeline():
    s = box["state"]
    for _ in range(args.steps):
      s, logs = trainer.step(s, next(it))
    jax.block_until_ready(logs)
    box["state"] = s

  def fed_from_device():
    s = box["state"]
    for b in on_device:
      s, logs = trainer.step(s, b)
    jax.block_until_ready(logs)
    box["state"] = s

  times = _common.interleave({"pipeline": fed_by_pipeline, "device": fed_from_device},
                             cycles=args.cycles, max_calls=1)
  it.close()
  rate = {k: args.steps / _common.med(v) for k, v in times.items()}
  r = _common.ratio(times["device"], times["pipeline"])  # = pipeline rate / device rate

  # fit itself: 3 records of `steps` steps each; the last interval has no compile.
  sub = fj.data.subset(train, np.arange(args.steps * BATCH))  # an epoch of `steps` steps
  res = fj.train.fit(ens, optax.adam(1e-3), sub, key=jax.random.key(0), epochs=3,
                     batch_size=BATCH, progress=False, handle_signals=False)
  t = [h["time"] for h in res.history]
  fit_rate = args.steps / (t[2] - t[1])

  rows = [{"feed": "pipeline (grain, as fit)", "steps/s": rate["pipeline"]},
          {"feed": "device arrays", "steps/s": rate["device"]},
          {"feed": "fit() itself (epoch 3)", "steps/s": fit_rate}]
  print(f"M={MEMBERS} MNIST MLP 784-256-256-10, batch {BATCH}, layout {trainer.layout}, "
        f"{origin}; {args.cycles} cycles of {args.steps} steps")
  print(_common.table(rows, [("feed", "feed", ""), ("steps/s", "steps/s", "{:.1f}")]))
  print(f"pipeline / device step rate: median {r['median']:.3f}x "
        f"(per-cycle range {r['min']:.3f}-{r['max']:.3f}); target >= 0.95x: "
        f"{'met' if r['median'] >= 0.95 else 'NOT met'}")
  _common.write("pipeline_feed", {
      "members": MEMBERS, "batch": BATCH, "layout": trainer.layout, "data": origin,
      "cycles": args.cycles, "steps": args.steps, "seconds": times, "rows": rows,
      "ratio_pipeline_over_device": r, "target": 0.95, "met": r["median"] >= 0.95})


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
