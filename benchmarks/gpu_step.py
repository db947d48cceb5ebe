"""The step benchmark on an accelerator: layouts, a JAX loop, torch.func, and the device's peaks.

    python benchmarks/gpu_step.py [--models mnist_mlp cnn] [--members 1 16 64 256]
        [--layouts vmap scan] [--cycles 5] [--out gpu_step]
    python benchmarks/gpu_step.py --dry       # tiny sizes on any backend (the test suite)

``benchmarks/gpu.sh`` runs it after the tests marked ``gpu``. For each model, M
and layout, interleaved in one process (batch 128, Adam(1e-3), synthetic
inputs): ``fj_<layout>`` is ``make_trainer(ens, adam, layout=...).step``,
``jax_loop`` a Python loop of M jitted single-member steps, ``torch_func``
(when torch sees a GPU) ``torch.func.stack_module_state`` + ``vmap`` with one
Adam. The device's float32 matmul peak (at JAX's default precision, the one the
step uses) and its memory bandwidth (a read-and-write copy) are measured in the
same process. For each fusionjax row the JSON also has the step's FLOPs and
bytes accessed (XLA's cost analysis of the compiled step) and the bound of the
issue's target, ``max(one member's step, bytes / bandwidth, FLOPs / peak)``.
"""
import argparse
import json
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
from ensemble_step import MODELS, _jax_loop, flops_per_sample, torch_module  # noqa: E402


def peaks(dry: bool, cycles: int):
  """Matmul GFLOP/s (float32 inputs, default precision) and copy GB/s on the default device."""
  n = 256 if dry else 8192
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  mm = jax.jit(lambda a: a @ a)
  words = (1 << 20) if dry else (1 << 28)  # 4 MiB or 1 GiB of float32
  v = jnp.ones((words,), jnp.float32)
  copy = jax.jit(lambda v: v * 1.0001)
  runs = {"gemm": lambda: jax.block_until_ready(mm(a)),
          "copy": lambda: jax.block_until_ready(copy(v))}
  for r in runs.values():
    r()
  t = C.interleave(runs, cycles, target_s=0.001 if dry else 0.3)
  return {"matmul_gflops": 2 * n ** 3 / C.med(t["gemm"]) / 1e9,
          "bandwidth_gbps": 2 * 4 * words / C.med(t["copy"]) / 1e9}


def fj_variant(ens, tx, layout, x, y):
  """``(run, info)`` for the trainer's step in ``layout`` (warm), with its cost analysis."""
  trainer = fj.train.make_trainer(ens, tx, layout=layout, x_example=x[:1])
  box = {"s": trainer.init(jax.random.key(0), x[:1])}
  batch = {"x": x, "y": y}
  info = {"layout": trainer.layout}
  t = time.perf_counter()
  compiled = trainer.step.lower(box["s"], batch).compile()
  info["compile_s"] = time.perf_counter() - t
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  info["xla_flops"] = float(cost.get("flops", float("nan"))) if cost else float("nan")
  info["bytes_accessed"] = float(cost.get("bytes accessed", float("nan"))) if cost else float("nan")

  def run():
    box["s"], logs = trainer.step(box["s"], batch)
    jax.block_until_ready(logs["loss"])

  run()
  return run, info


def torch_func_variant(model, m, x_np, y_np):
  """``torch.func`` over M stacked modules on the GPU, or None without torch or a GPU."""
  torch = C.torch_or_none()
  if torch is None or not torch.cuda.is_available():
    return None
  from torch.func import functional_call, stack_module_state, vmap  # pylint: disable=g-import-not-at-top
  dev = torch.device("cuda")
  F = torch.nn.functional
  x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x_np, -1, 1))).to(dev)
  y = torch.from_numpy(y_np.astype(np.int64)).to(dev).repeat(m)
  params, buffers = stack_module_state([torch_module(torch, model).to(dev) for _ in range(m)])
  base = torch_module(torch, model).to("meta")
  opt = torch.optim.Adam(list(params.values()), lr=1e-3)
  call = lambda p, b, xx: functional_call(base, (p, b), (xx,))

  def run():
    opt.zero_grad(set_to_none=True)
    logits = vmap(call, in_dims=(0, 0, None))(params, buffers, x)
    (F.cross_entropy(logits.flatten(0, 1), y, reduction="sum") / x.shape[0]).backward()
    opt.step()
    torch.cuda.synchronize()

  run()
  return run


def bench(model, m, layouts, batch, cycles, target_s, pk):
  shape, make = MODELS[model]
  rng = np.random.default_rng(0)
  x_np = rng.normal(size=(batch, *shape)).astype(np.float32)
  y_np = rng.integers(0, 10, batch).astype(np.int32)
  x, y = jnp.asarray(x_np), jnp.asarray(y_np)
  module = make()
  ens = fj.ensemble.from_linen(module, m)
  tx = optax.adam(1e-3)
  runs, infos = {}, {}
  for layout in layouts:
    runs[f"fj_{layout}"], infos[layout] = fj_variant(ens, tx, layout, x, y)
  runs["jax_loop"] = _jax_loop(module, tx, m, x, y, guard=False)
  tf = torch_func_variant(model, m, x_np, y_np)
  if tf is not None:
    runs["torch_func"] = tf
  one = fj_variant(fj.ensemble.from_linen(module, 1), tx, "vmap", x, y)[0]
  runs["one_member"] = one
  times = C.interleave(runs, cycles, target_s=target_s)
  rows = []
  for layout in layouts:
    t = times[f"fj_{layout}"]
    info = infos[layout]
    flops = flops_per_sample(model) * m * batch
    bound = max(C.med(times["one_member"]),
                info["bytes_accessed"] / (pk["bandwidth_gbps"] * 1e9),
                flops / (pk["matmul_gflops"] * 1e9))
    row = {"model": model, "members": m, "batch": batch, "layout": info["layout"],
           "ms": 1e3 * C.med(t), "msps": m * batch / C.med(t),
           "jax_loop_ms": 1e3 * C.med(times["jax_loop"]),
           "vs_jax_loop": C.ratio(times["jax_loop"], t),
           "one_member_ms": 1e3 * C.med(times["one_member"]),
           "flops": flops, "xla_flops": info["xla_flops"],
           "bytes_accessed": info["bytes_accessed"], "compile_s": info["compile_s"],
           "bound_ms": 1e3 * bound, "over_bound": C.med(t) / bound}
    if "torch_func" in times:
      row["torch_func_ms"] = 1e3 * C.med(times["torch_func"])
      row["vs_torch_func"] = C.ratio(times["torch_func"], t)
    rows.append(row)
  return rows


COLUMNS = [
    ("model", "model", None), ("M", "members", None), ("layout", "layout", None),
    ("ms", "ms", "{:.3f}"), ("member-samples/s", "msps", "{:,.0f}"),
    ("vs jax_loop", lambda r: r["vs_jax_loop"]["median"], "{:.2f}x"),
    ("vs torch_func", lambda r: r.get("vs_torch_func", {}).get("median"), "{:.2f}x"),
    ("bound ms", "bound_ms", "{:.3f}"), ("time / bound", "over_bound", "{:.2f}"),
    ("compile s", "compile_s", "{:.1f}"),
]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", nargs="+", default=["mnist_mlp", "cnn"], choices=list(MODELS))
  p.add_argument("--members", type=int, nargs="+", default=[1, 16, 64, 256])
  p.add_argument("--layouts", nargs="+", default=["vmap", "scan"], choices=["vmap", "scan"])
  p.add_argument("--cycles", type=int, default=5)
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--dry", action="store_true",
                 help="tiny sizes (M=2, batch 8, 1 cycle) on any backend")
  p.add_argument("--out", default="gpu_step",
                 help="a result name under benchmarks/results/, or a path ending in .json")
  args = p.parse_args(argv)
  if args.dry:
    args.members, args.batch, args.cycles = [2], 8, 1
  dev = jax.devices()[0]
  mach = C.machine()
  mach["device_kind"] = getattr(dev, "device_kind", str(dev))
  torch = C.torch_or_none()
  mach["torch_cuda"] = bool(torch is not None and torch.cuda.is_available())
  print(f"device: {mach['device_kind']} ({jax.default_backend()}); jax {jax.__version__}",
        flush=True)
  pk = peaks(args.dry, args.cycles)
  print(f"matmul peak {pk['matmul_gflops']:,.0f} GFLOP/s; bandwidth "
        f"{pk['bandwidth_gbps']:,.0f} GB/s", flush=True)
  rows = []
  for model in args.models:
    for m in args.members:
      rows += bench(model, m, args.layouts, args.batch, args.cycles,
                    0.001 if args.dry else 0.2, pk)
      print(C.table(rows[-len(args.layouts):], COLUMNS), flush=True)
  result = {"rows": rows, "peaks": pk, "machine": mach, "dry": args.dry}
  print()
  print(C.table(rows, COLUMNS))
  if args.out.endswith(".json"):
    result["command"] = C.command()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1, default=float)
    print(f"wrote {args.out}")
  else:
    C.write(args.out, result)


if __name__ == "__main__":
  main()
