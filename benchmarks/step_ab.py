"""The dense step's issue-22 changes, each switched off in turn, against the step as shipped.

    python benchmarks/step_ab.py [--cases mnist_mlp:1 mnist_mlp:4 ...] [--cycles 9]

The code comments in ``fusionjax/train/_layouts.py`` and ``_trainer.py`` quote
what each of these changes gained; this script is where those figures come
from. For each (model, M), in one process and interleaved (ABAB...), the
default trainer's step (``make_trainer(ens, adam, x_example=x)``, guarded,
``layout='auto'``) is timed as shipped and traced again with one change undone
(patched only while that trainer's step is traced and compiled):

* ``recompute``: in a step of one chunk, the guard computes the update a
  second time on zeroed gradients so that XLA writes params and moments in
  one pass (``_trainer._update_one``); undone, the first update is selected,
  as inside a scan;
* ``unroll``: scans of at most ``_layouts._UNROLL_CHUNKS`` chunks are
  unrolled; undone, every scan is a loop.

(A third change, broadcasting the batch to a chunk once outside the scan,
measured 0.995x-1.006x here and was taken out of the library.) A change is
only timed where it applies (``recompute`` where the members form one chunk,
``unroll`` where they form two to ``_UNROLL_CHUNKS``). The ratio is the median
of per-cycle ratios, undone time over shipped time (> 1: the change makes the
step faster).
"""
import argparse
import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import _common as C  # noqa: E402
import fusionjax as fj  # noqa: E402
from ensemble_step import MODELS, synthetic  # noqa: E402
from fusionjax.train import _layouts, _trainer  # noqa: E402

CASES = ("mnist_mlp:1", "mnist_mlp:4", "digits_mlp:4", "mnist_mlp:16", "digits_mlp:16")
COLUMNS = [("model", "model", None), ("M", "members", None), ("chunks", "chunks", None),
           ("change undone", "change", None), ("shipped ms", "shipped_ms", "{:.2f}"),
           ("undone ms", "undone_ms", "{:.2f}"),
           ("undone / shipped", lambda r: r["gain"]["median"], "{:.3f}x"),
           ("(min-max)", lambda r: f"{r['gain']['min']:.2f}-{r['gain']['max']:.2f}", None)]


@contextlib.contextmanager
def undone(change: str):
  """Traces inside this context see the library without ``change``."""
  saved = (_trainer._update_one, _layouts._UNROLL_CHUNKS)  # pylint: disable=protected-access
  update_one = saved[0]
  if change == "recompute":
    # The guarded path of a chunk inside a scan: the first update, selected.
    _trainer._update_one = (  # pylint: disable=protected-access
        lambda tx, guard, looping, *a: update_one(tx, guard, True, *a))
  elif change == "unroll":
    _layouts._UNROLL_CHUNKS = 0  # pylint: disable=protected-access
  else:
    raise ValueError(f"unknown change {change!r}; one of recompute, unroll")
  try:
    yield
  finally:
    _trainer._update_one, _layouts._UNROLL_CHUNKS = saved  # pylint: disable=protected-access


def applies(change: str, n_chunks: int) -> bool:
  if change == "recompute":
    return n_chunks == 1
  return 1 < n_chunks <= _layouts._UNROLL_CHUNKS  # pylint: disable=protected-access


def _runner(ens, x, batch, change=None):
  with undone(change) if change else contextlib.nullcontext():
    trainer = fj.train.make_trainer(ens, optax.adam(1e-3), x_example=x[:1])
    state = {"s": trainer.init(jax.random.key(0), x[:1])}
    state["s"], logs = trainer.step(state["s"], batch)  # traced and compiled here
    jax.block_until_ready(logs)

  def run():
    state["s"], logs = trainer.step(state["s"], batch)
    jax.block_until_ready(logs["loss"])

  return run


def bench(model, m, cycles):
  _, make = MODELS[model]
  x, y = map(jnp.asarray, synthetic(model))
  batch = {"x": x, "y": y}
  ens = fj.ensemble.from_linen(make(), m)
  params = jax.eval_shape(ens.init, jax.random.key(0), x[:1])["params"]
  chunk = _layouts.auto_chunk(m, params)
  n_chunks = -(-m // chunk)
  changes = [c for c in ("recompute", "unroll") if applies(c, n_chunks)]
  runs = {"shipped": _runner(ens, x, batch)}
  for c in changes:
    runs[c] = _runner(ens, x, batch, c)
  times = C.interleave(runs, cycles, target_s=0.3)
  return [{"model": model, "members": m, "chunks": f"{n_chunks} of {chunk}", "change": c,
           "shipped_ms": 1e3 * C.med(times["shipped"]), "undone_ms": 1e3 * C.med(times[c]),
           "gain": C.ratio(times[c], times["shipped"])} for c in changes]


def render(result) -> str:
  return C.table(result["rows"], COLUMNS)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--cases", nargs="+", default=list(CASES), help="model:M pairs")
  p.add_argument("--cycles", type=int, default=9)
  p.add_argument("--out", default="step_ab",
                 help="result name; the file is results/<out>@<CPU kind>.json")
  args = p.parse_args(argv)
  mach = C.machine()
  C.print_cpu(mach)
  rows = []
  for case in args.cases:
    model, m = case.split(":")
    if model not in MODELS or model == "cnn":
      raise SystemExit(f"--cases: {case!r}: the model must be one of digits_mlp, mnist_mlp "
                       "(the CNN trains under the 'loop' layout, which has none of these changes)")
    rows += bench(model, int(m), args.cycles)
    print(C.table(rows, COLUMNS), flush=True)
  result = {"rows": rows, "cycles": args.cycles}
  print(render(result))
  C.write_per_kind(args.out, result, mach)


if __name__ == "__main__":
  main()
