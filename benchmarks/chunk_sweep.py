"""How many members per chunk: the chunked step's speed against ``member_chunk``.

    python benchmarks/chunk_sweep.py [--models digits_mlp mnist_mlp cnn] [--members 16 64]
        [--chunks 1 2 4 8] [--cycles 5]

For each model and M it interleaves ``fj.train.make_step(..., member_chunk=k)``
for every ``k`` (``k = M`` is one vmap over all members, inputs broadcast;
``vmap`` is the plain vmapped step, ``member_chunk=None``), ``auto`` (the
shipped default) and the loop of single-member jitted steps, and reports step
times, the ratio to the loop, and XLA's temporary buffer size (a temporary
buffer over ~32 MB is mmap-ed, and page-faulted, on every call). It is the
measurement behind ``fusionjax.train._layouts.auto_chunk``. Results are kept per
CPU kind (``results/chunk_sweep@<kind>.json``).
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
import ensemble_step as S  # noqa: E402
import fusionjax as fj  # noqa: E402
from fusionjax.train import _layouts  # noqa: E402


def sweep(model, m, chunks, cycles, target_s):
  shape, make = S.MODELS[model]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(S.BATCH, *shape)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, S.BATCH), jnp.int32)
  batch = {"x": x, "y": y}
  module = make()
  tx = optax.adam(1e-3)
  ens = fj.ensemble.from_linen(module, m)
  variants, temps = {}, {}
  names = [str(k) for k in chunks if k < m] + [str(m), "vmap", "auto"]
  for name in dict.fromkeys(names):
    chunk = {"vmap": None, "auto": "auto"}.get(name, None if name == "vmap" else name)
    chunk = chunk if chunk in (None, "auto") else int(chunk)
    state = {"s": fj.train.init(ens, tx, jax.random.key(0), x[:1])}
    step = fj.train.make_step(ens, tx, member_chunk=chunk)
    temps[name] = step.lower(state["s"], batch).compile().memory_analysis().temp_size_in_bytes
    state["s"], logs = step(state["s"], batch)
    jax.block_until_ready(logs)

    def run(step=step, state=state):
      state["s"], logs = step(state["s"], batch)
      jax.block_until_ready(logs["loss"])

    variants[name] = run
  loop = S.jax_variants(model, m, x, y)[0]["jax_loop"]
  variants["jax_loop"] = loop
  times = C.interleave(variants, cycles, target_s=target_s)
  auto = _layouts.auto_chunk(m, fj.train.init(ens, tx, jax.random.key(0), x[:1])
                             .params["members"])
  rows = []
  for name, t in times.items():
    if name == "jax_loop":
      continue
    rows.append({"model": model, "members": m, "chunk": name,
                 "auto_is": auto if name == "auto" else None,
                 "ms": 1e3 * C.med(t), "vs_loop": C.ratio(times["jax_loop"], t)["median"],
                 "temp_mb": temps[name] / 1e6})
  rows.append({"model": model, "members": m, "chunk": "jax_loop",
               "ms": 1e3 * C.med(times["jax_loop"]), "vs_loop": 1.0})
  return rows


COLUMNS = [("model", "model", None), ("M", "members", None), ("member_chunk", "chunk", None),
           ("auto =", "auto_is", None), ("step ms", "ms", "{:.2f}"),
           ("loop time / this", "vs_loop", "{:.2f}x"), ("XLA temp MB", "temp_mb", "{:.1f}")]


def render(result):
  return C.table(result["rows"], COLUMNS)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", nargs="+", default=list(S.MODELS), choices=list(S.MODELS))
  p.add_argument("--members", type=int, nargs="+", default=[16, 64])
  p.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 4, 8])
  p.add_argument("--cycles", type=int, default=5)
  p.add_argument("--target-s", type=float, default=0.15)
  p.add_argument("--out", default="chunk_sweep")
  args = p.parse_args(argv)
  mach = C.machine()
  rows = []
  for model in args.models:
    for m in args.members:
      t = time.perf_counter()
      r = sweep(model, m, args.chunks, args.cycles, args.target_s)
      rows += r
      print(C.table(r, COLUMNS), f"\n({time.perf_counter() - t:.0f} s)\n", flush=True)
  C.write_per_kind(args.out, {"rows": rows, "budget_bytes": _layouts._AUTO_BUDGET_BYTES}, mach)  # pylint: disable=protected-access


if __name__ == "__main__":
  main()
