"""XLA:CPU compile options this jaxlib offers, against the default dense step.

    python benchmarks/xla_cpu_options.py [--model mnist_mlp] [--members 16] [--cycles 7]

The default step (``make_trainer(ens, adam, x_example=x).step``, guarded,
``layout='auto'``) is lowered once and compiled once per set of options
(``Lowered.compile(compiler_options=...)``, the per-program form of
``XLA_FLAGS``); the executables are then timed interleaved (ABAB...) on the
same batch. Ratios are the default's time over the option's (median of
per-cycle ratios; > 1: the option is faster). An option this jaxlib rejects is
listed with its error instead of a time. ``xla_cpu_enable_fast_math`` is
measured for reference only: it lets XLA assume no NaN or Inf, which the
trainer's non-finite guard must see. The result is written to
``results/<out>@<CPU kind>.json``.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import _common as C  # noqa: E402
import ensemble_step as E  # noqa: E402
import fusionjax as fj  # noqa: E402

DOT = "LIBRARY_FUSION_TYPE_DOT"
OPTIONS = {
    "default": {},
    "prefer_vector_width=512": {"xla_cpu_prefer_vector_width": 512},
    "xnn_fusion_type=dot": {"xla_cpu_experimental_xnn_fusion_type": DOT},
    "ynn_fusion_type=dot": {"xla_cpu_experimental_ynn_fusion_type": DOT},
    "ynn_fusion_type=dot,eltwise,reduce": {
        "xla_cpu_experimental_ynn_fusion_type":
            f"{DOT},LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE"},
    "onednn_fusion_type=dot": {"xla_cpu_experimental_onednn_fusion_type": DOT},
    "use_onednn": {"xla_cpu_use_onednn": True},
    "use_xnnpack": {"xla_cpu_use_xnnpack": True},
    "xnn_graph_fusion_mode=greedy": {
        "xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_GREEDY"},
    "concurrency_optimized_scheduler": {
        "xla_cpu_enable_concurrency_optimized_scheduler": True},
    "fast_math (reference only)": {"xla_cpu_enable_fast_math": True},
}

COLUMNS = [("model", "model", None), ("M", "members", None), ("options", "name", None),
           ("ms", "ms", "{:.2f}"),
           ("default / this", lambda r: (r.get("vs_default") or {}).get("median"), "{:.3f}x"),
           ("(min-max)", lambda r: (f"{r['vs_default']['min']:.2f}-{r['vs_default']['max']:.2f}"
                                    if r.get("vs_default") else None), None),
           ("compile s", "compile_s", "{:.2f}"), ("error", "error", None)]


def bench(model, m, cycles, names=None):
  _, make = E.MODELS[model]
  x, y = map(jnp.asarray, E.synthetic(model))
  batch = {"x": x, "y": y}
  ens = fj.ensemble.from_linen(make(), m)
  trainer = fj.train.make_trainer(ens, optax.adam(1e-3), x_example=x[:1])
  state0 = trainer.init(jax.random.key(0), x[:1])
  lowered = trainer.step.lower(state0, batch)
  runs, rows = {}, {}
  for name in names or OPTIONS:
    row = {"model": model, "members": m, "name": name, "options": OPTIONS[name]}
    rows[name] = row
    t = time.perf_counter()
    try:
      exe = lowered.compile(compiler_options=OPTIONS[name])
    except Exception as e:  # pylint: disable=broad-except
      row["error"] = str(e).splitlines()[0][:160]
      continue
    row["compile_s"] = time.perf_counter() - t
    state = {"s": jax.tree.map(jnp.copy, state0)}

    def run(exe=exe, state=state):
      state["s"], logs = exe(state["s"], batch)
      jax.block_until_ready(logs["loss"])

    run()
    runs[name] = run
  times = C.interleave(runs, cycles, target_s=0.3)
  base = next(iter(times))
  for name, t in times.items():
    rows[name]["ms"] = 1e3 * C.med(t)
    rows[name]["vs_default"] = C.ratio(times[base], t)
  return list(rows.values())


def render(result) -> str:
  return C.table(result["rows"], COLUMNS)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="mnist_mlp", choices=[k for k in E.MODELS if k != "cnn"])
  p.add_argument("--members", type=int, default=16)
  p.add_argument("--cycles", type=int, default=7)
  p.add_argument("--out", default="xla_cpu_options",
                 help="result name; the file is results/<out>@<CPU kind>.json")
  args = p.parse_args(argv)
  mach = C.machine()
  C.print_cpu(mach)
  rows = bench(args.model, args.members, args.cycles)
  result = {"rows": rows, "cycles": args.cycles}
  print(render(result))
  C.write_per_kind(args.out, result, mach)


if __name__ == "__main__":
  main()
