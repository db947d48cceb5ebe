"""What the non-finite guard costs the dense step, against torch.func (the M=16 ceiling).

    python benchmarks/guard_cost.py [--models mnist_mlp] [--members 16] [--cycles 7]

Issue 22 asks for the default MNIST-MLP step at M = 16 to run at least 1.5x
``torch.func``. This measures, in one process and interleaved (ABAB...), how
close each program the trainer can build gets, so that the target's ceiling on
the machine at hand is a measurement rather than an argument:

* ``default``: ``make_trainer(ens, adam, x_example=x)`` as shipped (guarded,
  ``layout='auto'``: a scan over chunks of ``auto_chunk`` members);
* ``no_guard``: the same with ``guard=False``;
* ``one_program``: guarded, ``chunk=M`` (every member in one vmapped program,
  no scan; the guard recomputes the update on zeroed gradients, see
  ``_trainer._update_one``);
* ``one_program_no_guard``: the same with ``guard=False``: the fastest dense
  program found (the GEMMs batched over all M members, one in-place Adam
  update), i.e. the ceiling of any guarded step;
* ``adam_alone``: ``optax.adam``'s update of the M members' parameters alone,
  donated (the memory-bound floor of the update inside a step);
* ``torch_func``: ``torch.func.stack_module_state`` + ``vmap`` +
  ``functional_call`` with one Adam, as in ``ensemble_step.py``.

For every JAX program it also reports the XLA temporary buffer of the compiled
step (``Compiled.memory_analysis()``) and, over 20 further calls, the minor
page faults and system CPU time per step: XLA:CPU allocates the temporaries on
every call, and glibc maps allocations over 32 MB afresh each time, so a
program whose temporaries exceed that pays page faults on every step.
Ratios are medians of per-cycle ratios, torch.func's time over this one's.
The result is written to ``results/<out>@<CPU kind>.json``, with any
``MALLOC_*`` settings of the environment (run it with
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=17179869184 ... --out guard_cost_no_mmap``
to see the programs without the page faults).
"""
import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import _common as C  # noqa: E402
import ensemble_step as E  # noqa: E402
import fusionjax as fj  # noqa: E402

VARIANTS = ("default", "no_guard", "one_program", "one_program_no_guard", "adam_alone",
            "torch_func")


COLUMNS = [
    ("model", "model", None), ("M", "members", None), ("program", "variant", None),
    ("ms", "ms", "{:.2f}"),
    ("torch.func / this", lambda r: (r.get("vs_torch_func") or {}).get("median"), "{:.2f}x"),
    ("(min-max)", lambda r: (f"{r['vs_torch_func']['min']:.2f}-{r['vs_torch_func']['max']:.2f}"
                             if r.get("vs_torch_func") else None), None),
    ("XLA temp MB", "temp_mb", "{:.1f}"), ("page faults / step", "minflt", "{:.0f}"),
    ("sys ms / step", "sys_ms", "{:.2f}"),
]


def _adam_alone(ens, x):
  params = ens.init(jax.random.key(0), x[:1])["params"]
  tx = optax.adam(1e-3)
  grads = jax.tree.map(lambda a: jnp.full_like(a, 1e-3), params)

  def update(p, o, g):
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o

  fn = jax.jit(update, donate_argnums=(0, 1))
  state = {"p": params, "o": tx.init(params)}

  def run():
    state["p"], state["o"] = fn(state["p"], state["o"], grads)
    jax.block_until_ready(state["p"])

  temp = fn.lower(state["p"], state["o"], grads).compile().memory_analysis()
  return run, temp.temp_size_in_bytes


def _trainer_run(ens, x, y, **kw):
  trainer = fj.train.make_trainer(ens, optax.adam(1e-3), x_example=x[:1], **kw)
  batch = {"x": x, "y": y}
  state = {"s": trainer.init(jax.random.key(0), x[:1])}
  temp = trainer.step.lower(state["s"], batch).compile().memory_analysis()

  def run():
    state["s"], logs = trainer.step(state["s"], batch)
    jax.block_until_ready(logs["loss"])

  run()
  return run, temp.temp_size_in_bytes, trainer.layout


def _faults(run, calls=20):
  r0 = resource.getrusage(resource.RUSAGE_SELF)
  for _ in range(calls):
    run()
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  return (r1.ru_minflt - r0.ru_minflt) / calls, 1e3 * (r1.ru_stime - r0.ru_stime) / calls


def bench(model, m, cycles, torch):
  _, make = E.MODELS[model]
  x_np, y_np = E.synthetic(model)
  x, y = jnp.asarray(x_np), jnp.asarray(y_np)
  ens = fj.ensemble.from_linen(make(), m)
  runs, temps, info = {}, {}, {}
  runs["default"], temps["default"], info["layout"] = _trainer_run(ens, x, y)
  runs["no_guard"], temps["no_guard"], _ = _trainer_run(ens, x, y, guard=False)
  runs["one_program"], temps["one_program"], _ = _trainer_run(ens, x, y, chunk=m)
  runs["one_program_no_guard"], temps["one_program_no_guard"], _ = _trainer_run(
      ens, x, y, guard=False, chunk=m)
  runs["adam_alone"], temps["adam_alone"] = _adam_alone(ens, x)
  if torch is not None:
    func = E.torch_variants(torch, model, m, x_np, y_np, te_steps=1)["torch_func"]
    func()
    runs["torch_func"] = func
  times = C.interleave(runs, cycles, target_s=0.3)
  faults = {k: _faults(v) for k, v in runs.items() if k != "torch_func"}
  p = jax.eval_shape(ens.init, jax.random.key(0), x[:1])["params"]
  chunk = fj.train._layouts.auto_chunk(m, p)  # pylint: disable=protected-access
  rows = []
  for k in runs:
    rows.append({
        "model": model, "members": m, "variant": k, "ms": 1e3 * C.med(times[k]),
        "vs_torch_func": C.ratio(times["torch_func"], times[k]) if "torch_func" in times else None,
        "temp_mb": temps[k] / 1e6 if k in temps else None,
        "minflt": faults[k][0] if k in faults else None,
        "sys_ms": faults[k][1] if k in faults else None,
    })
  return rows, {"default_layout": f"{info['layout']}, chunk {chunk}"}


def malloc_env() -> dict:
  """The glibc malloc settings of this process's environment (``MALLOC_*``, ``GLIBC_TUNABLES``)."""
  return {k: v for k, v in sorted(os.environ.items())
          if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"}


def render(result) -> str:
  env = result.get("malloc_env") or {}
  lines = ["glibc malloc: " + (", ".join(f"`{k}={v}`" for k, v in env.items()) if env
                               else "default settings (no `MALLOC_*` in the environment).")]
  for key, info in result["info"].items():
    lines.append(f"{key}: the default ran as `{info['default_layout']}`.")
  for r in result["rows"]:
    if r["variant"] == "torch_func":
      lines.append(f"{r['model']} M={r['members']}: 1.5x torch.func needs a step of at most "
                   f"{r['ms'] / 1.5:.2f} ms.")
  return "\n\n".join(lines + [C.table(result["rows"], COLUMNS)])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", nargs="+", default=["mnist_mlp"],
                 choices=[k for k in E.MODELS if k != "cnn"])
  p.add_argument("--members", type=int, nargs="+", default=[16])
  p.add_argument("--cycles", type=int, default=7)
  p.add_argument("--out", default="guard_cost",
                 help="result name; the file is results/<out>@<CPU kind>.json")
  args = p.parse_args(argv)
  torch = C.torch_or_none()
  mach = C.machine()
  C.print_cpu(mach)
  rows, infos = [], {}
  for model in args.models:
    for m in args.members:
      r, info = bench(model, m, args.cycles, torch)
      rows += r
      infos[f"{model} M={m}"] = info
      print(C.table(r, COLUMNS), flush=True)
  result = {"rows": rows, "info": infos, "cycles": args.cycles, "malloc_env": malloc_env()}
  print()
  print(render(result))
  C.write_per_kind(args.out, result, mach)


if __name__ == "__main__":
  main()
