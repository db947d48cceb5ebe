"""Compile time of the first step as M grows, its memory, and process start to first step.

    python benchmarks/compile_memory.py [--model mnist_mlp] [--members 1 4 16 64]
        [--startup-members 16] [--startup-runs 3] [--out benchmarks/results/compile_memory.json]

* Compile time: ``make_step(...).lower(state, batch).compile()`` (trace + XLA)
  for each M, for the shipped step (``member_chunk='auto'``) and the plain vmap
  (``member_chunk=None``); no persistent compilation cache.
* Memory: ``compiled.memory_analysis()``: the arguments (params, optimizer
  state, batch), the outputs, how much of the outputs alias the donated inputs,
  and XLA's temporary buffer; against the stacked params plus optimizer state.
  With donation, the state is updated in place: peak = arguments + temporaries.
* Process start to first finished step: a fresh ``python`` process that imports
  fusionjax, builds the M-member ensemble, runs the jitted ``init`` and one
  jitted step and blocks on it; the parent's wall clock from spawning it to the
  child's report, with the child's own breakdown. Cold (no compilation cache)
  and warm (JAX's persistent compilation cache, ``JAX_COMPILATION_CACHE_DIR``,
  filled by one earlier run: what every run after a researcher's first sees
  when the variable is set).

Compile times are the minimum over ``--rounds`` rounds (ABAB over the
configurations; the machine is shared).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import _common as C  # noqa: E402
import ensemble_step as S  # noqa: E402
import fusionjax as fj  # noqa: E402

ROOT = os.path.dirname(C.HERE)

CHILD = r"""
import time, json, sys
t0 = time.time()
import jax, jax.numpy as jnp, optax
{imports}
t_import = time.time()
m = int(sys.argv[1])
x = jnp.zeros((128, 28, 28, 1), jnp.float32)
y = jnp.zeros((128,), jnp.int32)
ens = from_linen(MLP(10, (256, 256)), m)
tx = optax.adam(1e-3)
state = init(ens, tx, jax.random.key(0), x[:1])
jax.block_until_ready(state)
t_init = time.time()
step = make_step(ens, tx)
state, logs = step(state, {{"x": x, "y": y}})
jax.block_until_ready(logs)
t_step = time.time()
print(json.dumps({{"t0": t0, "import": t_import, "init": t_init, "step": t_step}}))
"""

IMPORTS = {
    "fusionjax": "import fusionjax as fj\nfrom fusionjax.models import MLP\n"
                 "from_linen = fj.ensemble.from_linen\ninit, make_step = fj.train.init, "
                 "fj.train.make_step",
}


def compile_row(model, m, chunk):
  shape, make = S.MODELS[model]
  x = jnp.zeros((S.BATCH, *shape), jnp.float32)
  y = jnp.zeros((S.BATCH,), jnp.int32)
  ens = fj.ensemble.from_linen(make(), m)
  tx = optax.adam(1e-3)
  state = fj.train.init(ens, tx, jax.random.key(0), x[:1])
  step = fj.train.make_step(ens, tx, member_chunk=chunk)
  t = time.perf_counter()
  lowered = step.lower(state, {"x": x, "y": y})
  t_lower = time.perf_counter() - t
  compiled = lowered.compile()
  t_total = time.perf_counter() - t
  ma = compiled.memory_analysis()
  nbytes = lambda tree: sum(l.size * l.dtype.itemsize for l in jax.tree_util.tree_leaves(tree))
  return {
      "model": model, "members": m, "variant": "fj" if chunk == "auto" else "fj_vmap",
      "trace_s": t_lower, "compile_s": t_total,
      "params_mb": nbytes(state.params) / 1e6, "opt_state_mb": nbytes(state.opt_state) / 1e6,
      "argument_mb": ma.argument_size_in_bytes / 1e6, "output_mb": ma.output_size_in_bytes / 1e6,
      "alias_mb": ma.alias_size_in_bytes / 1e6, "temp_mb": ma.temp_size_in_bytes / 1e6,
      "peak_mb": (ma.argument_size_in_bytes + ma.output_size_in_bytes
                  - ma.alias_size_in_bytes + ma.temp_size_in_bytes) / 1e6,
  }


def startup(m, runs, cache_dir=None):
  """Fresh processes to first finished step; with ``cache_dir``, JAX's persistent cache.

  With a cache, one unmeasured run fills it first (compiling init and the
  step once), so every measured run loads both executables from disk.
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  for k in [k for k in env if k.startswith("JAX_COMPILATION_CACHE") or
            k.startswith("JAX_PERSISTENT_CACHE")]:
    del env[k]
  if cache_dir is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  out = []
  for i in range(runs + (cache_dir is not None)):
    t = time.time()
    proc = subprocess.run([sys.executable, "-c", CHILD.format(imports=IMPORTS["fusionjax"]),
                           str(m)], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)
    if proc.returncode:
      raise RuntimeError(proc.stderr)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    if cache_dir is not None and i == 0:
      continue  # filled the cache
    out.append({"spawn_to_first_step_s": r["step"] - t, "python_start_s": r["t0"] - t,
                "imports_s": r["import"] - r["t0"], "init_s": r["init"] - r["import"],
                "first_step_s": r["step"] - r["init"]})
  return {k: C.med([o[k] for o in out]) for k in out[0]} | {
      "min_spawn_to_first_step_s": min(o["spawn_to_first_step_s"] for o in out),
      "runs": runs, "members": m, "compilation_cache": cache_dir is not None}


COMPILE_COLUMNS = [
    ("model", "model", None), ("M", "members", None), ("variant", "variant", None),
    ("trace s", "trace_s", "{:.2f}"), ("trace+compile s", "compile_s", "{:.2f}"),
    ("vs M=1", "vs_m1", "{:.2f}x"),
    ("params MB", "params_mb", "{:.1f}"), ("opt state MB", "opt_state_mb", "{:.1f}"),
    ("arguments MB", "argument_mb", "{:.1f}"), ("outputs MB", "output_mb", "{:.1f}"),
    ("aliased (donated) MB", "alias_mb", "{:.1f}"), ("XLA temp MB", "temp_mb", "{:.1f}"),
    ("peak MB", "peak_mb", "{:.1f}"),
]
STARTUP_COLUMNS = [
    ("M", "members", None), ("cache", "cache", None), ("spawn to first step s (median)", "spawn_to_first_step_s", "{:.2f}"),
    ("min", "min_spawn_to_first_step_s", "{:.2f}"),
    ("python start s", "python_start_s", "{:.2f}"), ("imports s", "imports_s", "{:.2f}"),
    ("jitted init s", "init_s", "{:.2f}"), ("first step s", "first_step_s", "{:.2f}"),
]


def render(result):
  return ("Compile time and memory of the first training step (batch 128, Adam):\n\n" +
          C.table(result["compile"], COMPILE_COLUMNS) +
          "\n\nProcess start to first finished step (fresh process, {} runs each; "
          "cold: no compilation cache; warm: JAX's persistent compilation cache "
          "(JAX_COMPILATION_CACHE_DIR) filled by an earlier run):\n\n".format(
              result["startup"]["runs"]) +
          C.table([dict(result["startup"], cache="cold")] +
                  ([dict(result["startup_warm"], cache="warm")]
                   if "startup_warm" in result else []), STARTUP_COLUMNS))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="mnist_mlp", choices=list(S.MODELS))
  p.add_argument("--members", type=int, nargs="+", default=[1, 4, 16, 64])
  p.add_argument("--startup-members", type=int, default=16)
  p.add_argument("--startup-runs", type=int, default=3)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--out", default="compile_memory")
  args = p.parse_args(argv)
  mach = C.machine()
  rows = {}
  for _ in range(args.rounds):
    for chunk in ("auto", None):
      for m in args.members:
        r = compile_row(args.model, m, chunk)
        key = (r["variant"], m)
        if key not in rows or r["compile_s"] < rows[key]["compile_s"]:
          rows[key] = r
  rows = list(rows.values())
  for r in rows:
    base = [q for q in rows if q["variant"] == r["variant"] and q["members"] == args.members[0]]
    r["vs_m1"] = r["compile_s"] / base[0]["compile_s"]
  start = startup(args.startup_members, args.startup_runs)
  with tempfile.TemporaryDirectory() as cache_dir:
    warm = startup(args.startup_members, args.startup_runs, cache_dir)
  result = {"compile": rows, "startup": start, "startup_warm": warm, "machine": mach}
  print(render(result))
  C.write(args.out, result)


if __name__ == "__main__":
  main()
