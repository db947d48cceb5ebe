"""Scale (issue 24): compile time, memory per device and traffic against M on 8 simulated
devices; step time against M on one device.

    python benchmarks/scale.py [--members 64 256 1024] [--rounds 5] [--cycles 5]

Members: ``fusionjax.models.MLP(10, (32,))`` on digits-shaped inputs (64
features), batch 64, Adam; 2,442 params a member (9.5 KiB; 29 KiB with the Adam
moments).

* Sharded (a child process with
  ``XLA_FLAGS=--xla_force_host_platform_device_count=8``, mesh member=8,
  data=1): for the trainer's step (regime ``'independent'``, and ``'hybrid'``
  with ``fusion.mean()`` in the loss) and the member-sharded predictor with
  ``fusion.mean()``, per M:

  - compile time: a fresh ``make_trainer`` each round, ``step.lower(state,
    batch).compile()`` timed (XLA only; tracing and lowering are reported
    apart), the configurations interleaved ABAB over ``--rounds`` rounds after
    one warm-up compile; the median.
  - memory per device: ``compiled.memory_analysis()`` of the partitioned
    program (one device's buffers): arguments, outputs, the outputs aliased to
    donated arguments, temporaries; peak = arguments + outputs - aliased +
    temporaries.
  - traffic: every collective in ``compiled.as_text()`` and its element count.

* One device (a child process without the flag): the step's time against M,
  layouts ``'vmap'`` and ``'scan'`` (the CPU default), interleaved ABAB over
  ``--cycles`` cycles (``_common.interleave``), median seconds per step.

The simulated devices are threads of one 2-core CPU: their compile times and
memory are real, their step times would not be (8 devices share 2 cores), so
no sharded step time is reported.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

B, D, CLASSES, HIDDEN = 64, 64, 10, (32,)


def _setup(m, regime="independent", mesh=None, layout="vmap"):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import fusionjax as fj  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = rng.normal(size=(B, D)).astype(np.float32)
  y = rng.integers(0, CLASSES, B).astype(np.int32)
  ens = fj.ensemble.from_linen(fj.models.MLP(CLASSES, HIDDEN), m)
  fusion = fj.fusion.mean() if regime == "hybrid" else None

  def trainer():
    return fj.train.make_trainer(ens, optax.adam(1e-3), fusion=fusion, regime=regime,
                                 mesh=mesh, layout=layout, platform="cpu")

  state = trainer().init(jax.random.key(0), x[:1])
  batch = {"x": x, "y": y}
  if mesh is not None:
    state = fj.train.shard_state(state, mesh, ens)
    batch = fj.train.shard_batch(batch, mesh)
  return ens, trainer, state, batch, x


def _memory(compiled):
  ma = compiled.memory_analysis()
  row = {k: int(getattr(ma, f"{k}_size_in_bytes")) for k in
         ("argument", "output", "alias", "temp", "generated_code")}
  row["peak"] = row["argument"] + row["output"] - row["alias"] + row["temp"]
  return row


def sharded_part(members, rounds):
  import jax  # pylint: disable=g-import-not-at-top
  import fusionjax as fj  # pylint: disable=g-import-not-at-top
  from fusionjax.train._sharding import collectives, jit_predict_sharded  # pylint: disable=g-import-not-at-top
  assert len(jax.devices()) == 8, jax.devices()
  mesh = fj.train.make_mesh(member=8, data=1)
  setups = {}
  for m in members:
    for regime in ("independent", "hybrid"):
      setups[(regime, m)] = _setup(m, regime, mesh)

  def compile_step(key):
    _, trainer, state, batch, _ = setups[key]
    t0 = time.perf_counter()
    lowered = trainer().step.lower(state, batch)
    t1, c1 = time.perf_counter(), time.process_time()
    compiled = lowered.compile()
    return t1 - t0, time.perf_counter() - t1, time.process_time() - c1, compiled

  def compile_predict(m):
    ens, _, state, _, x = setups[("hybrid", m)]
    pred = fj.train.make_predictor(ens, fj.fusion.mean(), layout="vmap", jit=False).predict
    xs = fj.train.shard_batch(x, mesh)
    t0 = time.perf_counter()
    lowered = jit_predict_sharded(pred, mesh, ens).lower(state, xs)
    t1, c1 = time.perf_counter(), time.process_time()
    compiled = lowered.compile()
    return t1 - t0, time.perf_counter() - t1, time.process_time() - c1, compiled

  compile_step(next(iter(setups)))  # warm-up: the first compile of a process pays extra
  times, last = {}, {}
  for _ in range(rounds):
    for key in setups:
      *t, last[key] = compile_step(key)
      times.setdefault(key, []).append(t)
    for m in members:
      *t, last[("predict", m)] = compile_predict(m)
      times.setdefault(("predict", m), []).append(t)
  rows = []
  for (program, m), ts in times.items():
    compiled = last[(program, m)]
    cols = collectives(compiled.as_text())
    sizes = [(op, dt, list(d)) for op, shapes in cols for dt, d in shapes]
    state = setups[("hybrid" if program == "predict" else program, m)][2]
    state_bytes = sum(l.nbytes for l in jax.tree_util.tree_leaves(state))
    rows.append({"program": "step " + program if program != "predict" else "predict mean",
                 "members": m, "members_per_device": m // 8,
                 "lower_s": C.med([t[0] for t in ts]), "compile_s": C.med([t[1] for t in ts]),
                 "compile_all_s": [t[1] for t in ts],
                 "compile_cpu_s": C.med([t[2] for t in ts]),
                 "compile_cpu_all_s": [t[2] for t in ts],
                 # the same round's smallest-M compile of this program: a per-round ratio
                 "compile_vs_smallest": C.ratio(
                     [t[1] for t in ts], [t[1] for t in times[(program, min(members))]]),
                 "memory": _memory(compiled), "state_bytes_total": state_bytes,
                 "collectives": sizes,
                 "max_collective_elements": max([int(__import__("math").prod(d))
                                                 for _, _, d in sizes] or [0])})
  return {"rows": rows}


def one_device_part(members, cycles):
  import jax  # pylint: disable=g-import-not-at-top
  assert len(jax.devices()) == 1, jax.devices()
  variants, layouts = {}, {}
  for m in members:
    for layout in ("vmap", "scan"):
      _, trainer, state, batch, _ = _setup(m, layout=layout)
      tr = trainer()
      holder = {"state": tr.step(state, batch)[0]}  # compiled, and the input donated

      def run(tr=tr, holder=holder, batch=batch):
        holder["state"], logs = tr.step(holder["state"], batch)
        jax.block_until_ready(logs["loss"])

      variants[f"{layout} M={m}"] = run
      layouts[f"{layout} M={m}"] = (layout, m)
  times = C.interleave(variants, cycles)
  rows = []
  for name, ts in times.items():
    layout, m = layouts[name]
    rows.append({"layout": layout, "members": m, "step_s": C.med(ts), "samples": ts,
                 "us_per_member": C.med(ts) / m * 1e6})
  return {"rows": rows, "cycles": cycles}


def _child(part, args, devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([os.path.dirname(C.HERE)] +
                                        [p for p in [os.environ.get("PYTHONPATH")] if p]))
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if "xla_force_host_platform_device_count" not in f]
  if devices > 1:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  env["XLA_FLAGS"] = " ".join(flags)
  cmd = [sys.executable, os.path.abspath(__file__), "--part", part, "--members",
         *map(str, args.members), "--rounds", str(args.rounds), "--cycles", str(args.cycles)]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  if out.returncode:
    raise SystemExit(f"{part} failed:\n{out.stdout}\n{out.stderr}")
  return json.loads(out.stdout.strip().splitlines()[-1])


SHARDED_COLUMNS = [
    ("program", "program", None), ("M", "members", None),
    ("M / device", "members_per_device", None),
    ("compile s (median)", "compile_s", "{:.2f}"),
    ("vs smallest M (median of per-round ratios)",
     lambda r: r["compile_vs_smallest"]["median"], "{:.2f}x"),
    ("compile s (min)", lambda r: min(r["compile_all_s"]), "{:.2f}"),
    ("compile CPU s (median)", "compile_cpu_s", "{:.2f}"),
    ("CPU vs smallest M", "compile_cpu_vs_smallest", "{:.2f}x"),
    ("trace+lower s", "lower_s", "{:.2f}"),
    ("peak MiB / device", lambda r: r["memory"]["peak"] / 2**20, "{:.2f}"),
    ("args MiB", lambda r: r["memory"]["argument"] / 2**20, "{:.2f}"),
    ("temp MiB", lambda r: r["memory"]["temp"] / 2**20, "{:.2f}"),
    ("state MiB (all devices)", lambda r: r["state_bytes_total"] / 2**20, "{:.2f}"),
    ("largest collective (elements)", "max_collective_elements", None),
    ("collectives", lambda r: ", ".join(f"{op} {dt}{d}" for op, dt, d in r["collectives"]),
     None),
]
ONE_COLUMNS = [("layout", "layout", None), ("M", "members", None),
               ("step ms (median)", lambda r: r["step_s"] * 1e3, "{:.2f}"),
               ("us / member", "us_per_member", "{:.1f}")]


def render(result):
  rows = result["sharded"]["rows"]
  base = {r["program"]: r["compile_cpu_s"] for r in rows if r["members"] == min(
      x["members"] for x in rows)}
  for r in rows:
    r["compile_cpu_vs_smallest"] = r["compile_cpu_s"] / base[r["program"]]
  one = sorted(result["one_device"]["rows"], key=lambda r: (r["layout"], r["members"]))
  return ("Members sharded over 8 simulated CPU devices (mesh member=8, data=1; "
          "`MLP(10, (32,))` members, batch 64, Adam). Compile: XLA's compile of the "
          "sharded program, median of {} interleaved rounds, in wall seconds and in the "
          "process's CPU seconds (less sensitive to the other work on a shared machine); "
          "memory: "
          "`compiled.memory_analysis()` of one device's partitioned program (peak = "
          "arguments + outputs - donated aliases + temporaries); collectives: read from "
          "`compiled.as_text()`. The step's `[M]`-sized all-gathers are its per-member "
          "loss and finite-flag logs (`out_shardings` replicated); nothing of `[M, B]` or "
          "`[M, B, C]` crosses devices.\n\n".format(
              result["rounds"]) +
          C.table(sorted(rows, key=lambda r: (r["program"], r["members"])), SHARDED_COLUMNS) +
          "\n\nThe step on one device against M (layouts interleaved over {} cycles; "
          "a separate process without simulated devices):\n\n".format(
              result["one_device"]["cycles"]) + C.table(one, ONE_COLUMNS))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--members", type=int, nargs="+", default=[64, 256, 1024])
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--cycles", type=int, default=5)
  p.add_argument("--part", choices=["sharded", "one"], default=None)
  p.add_argument("--out", default="scale")
  args = p.parse_args(argv)
  if args.part == "sharded":
    print(json.dumps(sharded_part(args.members, args.rounds)))
    return
  if args.part == "one":
    print(json.dumps(one_device_part(args.members, args.cycles)))
    return
  mach = C.machine()
  t0 = time.time()
  result = {"sharded": _child("sharded", args, 8), "one_device": _child("one", args, 1),
            "rounds": args.rounds, "machine": mach, "wall_s": time.time() - t0,
            "note": "ran on a 2-core machine shared with other agents' work"}
  print(render(result))
  C.write(args.out, result)


if __name__ == "__main__":
  main()
