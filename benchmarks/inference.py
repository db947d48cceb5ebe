"""Fused prediction throughput at batch 1024: the stacked predict against a loop.

    python benchmarks/inference.py [--models digits_mlp mnist_mlp cnn] [--members 1 4 16 64]
        [--batch 1024] [--cycles 5] [--out benchmarks/results/inference.json]

For each model and M, interleaved (ABAB...) in one process:

* ``fj``: ``fj.train.make_predict(ens, fj.fusion.mean())`` as shipped (members
  in cache-sized chunks, ``layout='auto'``), member outputs and the fused
  log-probabilities in one jitted call;
* ``fj_vmap``: the same with one vmap over all members (``layout='vmap'``);
* ``jax_loop``: M single-member jitted forward passes, then the same fusion
  jitted over the stacked outputs;
* ``gemm``: one 2048^3 float32 matmul through JAX (the peak of that cycle).

Throughput is member-samples/s = M * batch / time; GFLOP/s counts the forward
matmul FLOPs exactly (MLPs; convolution + dense FLOPs for the CNN).
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
import ensemble_step as S  # noqa: E402
import fusionjax as fj  # noqa: E402
from fusionjax.train import _layouts, _trainer  # noqa: E402


def bench(model, m, batch, cycles, target_s):
  shape, make = S.MODELS[model]
  module = make()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, *shape)), jnp.float32)
  ens = fj.ensemble.from_linen(module, m)
  fusion = fj.fusion.mean()
  state = fj.train.init(ens, optax.adam(1e-3), jax.random.key(0), x[:1], fusion=fusion)
  variants = {}
  layouts = (("fj", "auto"), ("fj_vmap", None))
  if model == "cnn" and m > 4:
    layouts = layouts[:1]  # grouped convolutions: ~3x slower than the loop at M=4
  for name, chunk in layouts:
    predict = fj.train.make_predict(ens, fusion, member_chunk=chunk)
    jax.block_until_ready(predict(state, x))
    variants[name] = lambda predict=predict: jax.block_until_ready(predict(state, x)[1])

  singles = [jax.tree.map(lambda a, i=i: a[i], state.params["members"]) for i in range(m)]
  one = jax.jit(lambda p, x: module.apply({"params": p}, x))
  fuse = jax.jit(lambda outs: fusion.apply((), jnp.stack(outs)))

  def loop():
    jax.block_until_ready(fuse([one(p, x) for p in singles]))

  loop()
  variants["jax_loop"] = loop
  gemm, gemm_flops = C.gemm_runner()
  variants["gemm"] = gemm
  times = C.interleave(variants, cycles, target_s=target_s)
  peak = [gemm_flops / t / 1e9 for t in times.pop("gemm")]
  fl = S.flops_per_sample(model, train=False) * m * batch
  row = {"model": model, "members": m, "batch": batch, "gemm_peak_gflops": C.med(peak),
         "chunk": (1 if _trainer._uses_conv(ens, x)  # pylint: disable=protected-access
                   else _layouts.auto_chunk(m, state.params["members"], opt_slots=0)),
         "flops_per_call": fl}
  for k, v in times.items():
    row[f"{k}_ms"] = 1e3 * C.med(v)
    row[f"{k}_msps"] = m * batch / C.med(v)
    row[f"{k}_gflops"] = fl / C.med(v) / 1e9
    row[f"{k}_pct_peak"] = 100 * C.med([fl / t / 1e9 / p for t, p in zip(v, peak)])
    if k != "fj":
      row[f"fj_vs_{k}"] = C.ratio(v, times["fj"])
  row.setdefault("fj_vmap_pct_peak", None)
  return row


COLUMNS = [
    ("model", "model", None), ("M", "members", None), ("chunk", "chunk", None),
    ("fj ms", "fj_ms", "{:.2f}"), ("fj member-samples/s", "fj_msps", "{:,.0f}"),
    ("vs jax_loop", lambda r: r["fj_vs_jax_loop"]["median"], "{:.2f}x"),
    ("(min-max)", lambda r: "{:.2f}-{:.2f}".format(r["fj_vs_jax_loop"]["min"],
                                                   r["fj_vs_jax_loop"]["max"]), None),
    ("vs fj_vmap", lambda r: r.get("fj_vs_fj_vmap", {}).get("median"), "{:.2f}x"),
    ("fj GFLOP/s", "fj_gflops", "{:.1f}"), ("fj % peak", "fj_pct_peak", "{:.0f}%"),
    ("loop % peak", "jax_loop_pct_peak", "{:.0f}%"),
    ("vmap % peak", "fj_vmap_pct_peak", "{:.0f}%"),
    ("GEMM peak GFLOP/s", "gemm_peak_gflops", "{:.0f}"),
]


def render(result):
  return ("Batch {}; speed-ups are the loop's (or plain vmap's) time over fusionjax's "
          "(median of per-cycle ratios).\n\n".format(result["batch"]) +
          C.table(result["rows"], COLUMNS))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", nargs="+", default=list(S.MODELS), choices=list(S.MODELS))
  p.add_argument("--members", type=int, nargs="+", default=[1, 4, 16, 64])
  p.add_argument("--batch", type=int, default=1024)
  p.add_argument("--cycles", type=int, default=5)
  p.add_argument("--target-s", type=float, default=0.15)
  p.add_argument("--out", default="inference")
  args = p.parse_args(argv)
  mach = C.machine()
  rows = []
  for model in args.models:
    for m in args.members:
      cycles = max(3, args.cycles - 2) if model == "cnn" else args.cycles
      rows.append(bench(model, m, args.batch, cycles, args.target_s))
      print(C.table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
  result = {"rows": rows, "machine": mach, "batch": args.batch}
  print(render(result))
  C.write(args.out, result)


if __name__ == "__main__":
  main()
