"""Writes benchmarks/RESULTS.md from the result files in benchmarks/results/ (no timing here).

    python benchmarks/report.py

Every table is rebuilt from ``results/*.json`` by the ``render`` function of the
script that measured it; the targets of the speed issue are checked against the
same numbers.
"""
import datetime
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

SECTIONS = [
    ("engine_ab", "The training engine before and after make_trainer (issue 17)"),
    ("ensemble_step", "Training throughput: stacked step vs loops and PyTorch peers"),
    ("ensemble_step_cnn", "Training throughput: the CNN again, more cycles, no PyTorch peers"),
    ("loop_workers", "Host threads of the 'loop' layout (how `LOOP_WORKERS` was chosen)"),
    ("inference", "Inference: fused prediction throughput"),
    ("cascade", "Executing cascade vs the full ensemble"),
    ("compile_memory", "Compile time, memory, start-up"),
    ("donation", "Donating a single-member step's state, with and without the guard"),
    ("chunk_sweep", "Members per chunk (how `member_chunk='auto'` was chosen)"),
    ("guard_cost", "The non-finite guard's cost and the ceiling of the torch.func target "
     "(MNIST MLP, M=16)"),
    ("guard_cost_no_mmap", "The same, glibc's mmap of large allocations disabled"),
    ("xla_cpu_options", "XLA:CPU compile options against the default dense step"),
    ("step_ab", "The dense step's issue-22 changes, each undone, against the shipped step"),
    ("scale", "Scale: a thousand members over 8 simulated devices (issue 24)"),
    ("pipeline_feed", "The grain data pipeline feeding fit's step (issue 20)"),
]
SCRIPT = {"ensemble_step_cnn": "ensemble_step", "guard_cost_no_mmap": "guard_cost"}  # result name -> the script that wrote it
# Results kept per CPU kind (results/<name>@<kind>.json), a table per kind.
PER_KIND = ("ensemble_step", "ensemble_step_cnn", "chunk_sweep", "guard_cost",
            "guard_cost_no_mmap", "xla_cpu_options", "step_ab")
MNIST_PARAMS = 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10  # 269,322


def load(name):
  path = os.path.join(C.RESULTS, f"{name}.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def load_kinds(name):
  """Every ``results/<name>@<CPU kind>.json``, newest first."""
  out = []
  for path in glob.glob(os.path.join(C.RESULTS, f"{glob.escape(name)}@*.json")):
    with open(path) as f:
      out.append(json.load(f))
  return sorted(out, key=lambda r: r.get("finished", ""), reverse=True)


def kind_of(r):
  return C.cpu_kind(r["machine"])


def machine_line(r):
  m = r["machine"]
  v = m["versions"]
  vs = ", ".join(f"{k} {v[k]}" for k in ("jax", "jaxlib", "flax", "optax", "numpy", "torch",
                                          "torchensemble") if v.get(k))
  caches = ", ".join(f"{k} {val}" for k, val in m.get("caches", {}).items() if "cache" in k)
  isa = m.get("cpu_flags")
  isa = (f"vector ISA {' '.join(isa)}; AVX-512 {'yes' if m.get('avx512') else 'no'}; "
         if isa is not None else "CPU flags not recorded; ")
  return (f"`{r.get('command', '')}` — {m['cpu']}, {m['cores']} cores ({caches}); {isa}"
          f"{vs}; Python {m['python']}; load average {m['loadavg_start'][0]:.1f} at start, "
          f"{m.get('loadavg_end', [float('nan')])[0]:.1f} at end; finished "
          f"{r.get('finished', '?')}.")


def row(rows, **kw):
  for r in rows:
    if all(r.get(k) == v for k, v in kw.items()):
      return r
  return None


def verdict(ok):
  return "met" if ok else "**missed**"


def at_least_one(rows, key, label):
  """A targets row: is the ratio ``rows[i][key]['median']`` >= 1.0 at every row?"""
  worst = min(rows, key=lambda r: r[key]["median"])
  fmt = lambda v: f"{v:.3f}x" if f"{v:.2f}" == "1.00" else f"{v:.2f}x"  # 0.996: not "1.00x"
  below = [f"{r['model']} M={r['members']}: {fmt(r[key]['median'])}"
           for r in rows if r[key]["median"] < 1.0]
  return (label, verdict(not below),
          f"worst {worst['model']} M={worst['members']} {worst[key]['median']:.2f}x" +
          (f"; below 1.0: {', '.join(below)}" if below else ""))


def _ratio_rows(rows, models, members, key):
  return [r for r in rows if r["model"] in models and r["members"] in members and key in r]


def speed_targets(step):
  """The CPU-speed issue's targets, on one CPU kind's ensemble_step result."""
  kind, rows, out = f"{kind_of(step)} ({step.get('finished', '?')[:10]})", step["rows"], []
  status = lambda ok: f"{verdict(ok)} on {kind}"
  fmt = lambda r, key: f"{r['model']} M={r['members']} {r[key]['median']:.2f}x"

  def every(label, sel, key, bar, strict=False):
    if not sel:
      return
    ok = all((r[key]["median"] > bar) if strict else (r[key]["median"] >= bar) for r in sel)
    out.append((label, status(ok), ", ".join(fmt(r, key) for r in sel)))

  every("CNN members, M in {16, 64}: default step >= 1.0x the PyTorch loop",
        _ratio_rows(rows, ("cnn",), (16, 64), "fj_vs_torch_loop"), "fj_vs_torch_loop", 1.0)
  every("CNN members, M in {16, 64}: default step faster than torch.func",
        _ratio_rows(rows, ("cnn",), (16, 64), "fj_vs_torch_func"), "fj_vs_torch_func", 1.0,
        strict=True)
  dense = ("digits_mlp", "mnist_mlp")
  every("Dense members, M in {4, 16, 64}: default (guarded) step >= 1.0x the plain JAX loop",
        _ratio_rows(rows, dense, (4, 16, 64), "fj_vs_jax_loop"), "fj_vs_jax_loop", 1.0)
  every("Dense members, M in {4, 16, 64}: default (guarded) step >= 1.0x the guarded JAX loop",
        _ratio_rows(rows, dense, (4, 16, 64), "fj_vs_jax_loop_guarded"),
        "fj_vs_jax_loop_guarded", 1.0)
  every("MNIST MLP M=16: default step >= 1.5x torch.func",
        _ratio_rows(rows, ("mnist_mlp",), (16,), "fj_vs_torch_func"), "fj_vs_torch_func", 1.5)
  ones = [r for r in rows if r["members"] == 1 and r.get("m1_same_program") is not None]
  if ones:
    out.append(("M=1: the default step's optimised program has the guarded single-member "
                "program's dots and convolutions",
                status(all(r["m1_same_program"] for r in ones)),
                ", ".join(f"{r['model']}: {'same' if r['m1_same_program'] else 'different'} "
                          f"({r['m1_ops']} ops)" for r in ones)))
  return out


def guard_ceiling(gc):
  """The torch.func target's ceiling on one CPU kind (guard_cost.py), as a Targets row."""
  rows = {r["variant"]: r for r in gc["rows"] if r["model"] == "mnist_mlp" and
          r["members"] == 16}
  best, default = rows.get("one_program_no_guard"), rows.get("default")
  if not best or not best.get("vs_torch_func") or not default:
    return None
  return ("(ceiling of the MNIST torch.func row, `guard_cost.py`) the fastest dense program, "
          "unguarded, "
          "vs torch.func", f"context on {kind_of(gc)} ({gc.get('finished', '?')[:10]})",
          f"unguarded one program {best['vs_torch_func']['median']:.2f}x "
          f"({best['ms']:.2f} ms), guarded default {default['vs_torch_func']['median']:.2f}x "
          f"({default['ms']:.2f} ms); 1.5x needs <= "
          f"{rows['torch_func']['ms'] / 1.5:.2f} ms")


def targets(res, kinds=(), ceilings=()):
  out = []
  for step in kinds:
    out += speed_targets(step)
    for gc in ceilings:
      if kind_of(gc) == kind_of(step) and not (gc.get("malloc_env") or {}):
        row_ = guard_ceiling(gc)
        if row_:
          out.append(row_)
  ab = res.get("engine_ab")
  if ab:
    worst = min(ab["rows"], key=lambda r: r["new_vs_old"]["median"])
    out.append(("New default step >= 0.97x the old one (median of >= 15 interleaved cycles), "
                "digits MLP, MNIST MLP, CNN at M in {1, 16, 64}",
                verdict(worst["new_vs_old"]["median"] >= 0.97 and
                        min(r["cycles"] for r in ab["rows"]) >= 15),
                f"worst {worst['model']} M={worst['members']} "
                f"{worst['new_vs_old']['median']:.3f}x ({ab['machine']['cpu']}, AVX-512 "
                f"{'yes' if ab['machine'].get('avx512') else 'no'})"))
  step = res.get("ensemble_step")
  inf = res.get("inference")
  cm = res.get("compile_memory")
  if step:
    rows = step["rows"]
    out.append(("(the earlier targets below: ensemble_step measured on " + kind_of(step) + ")",
                "", ""))
    out.append(at_least_one(rows, "fj_vs_jax_loop",
                            "Training: stacked >= 1.0x the JAX loop at every M, all models"))
    same_semantics = [("fj_vs_jax_loop_guarded", "the default (guarded) step against a loop "
                       "with the same non-finite guard"),
                      ("fj_noguard_vs_jax_loop", "make_step(guard=False) against the plain "
                       "loop (both unguarded)")]
    for key, label in same_semantics:
      if all(key in r for r in rows):
        out.append(at_least_one(rows, key, f"(same, {label})"))
    cnn = res.get("ensemble_step_cnn")
    if cnn:
      for key, label in [("fj_vs_jax_loop", "default step vs the plain loop")] + same_semantics:
        if all(key in r for r in cnn["rows"]):
          out.append(at_least_one(cnn["rows"], key, f"(the CNN again, {cnn['cycles'] - 2} "
                                  f"cycles: {label})"))
    d = row(rows, model="digits_mlp", members=16)
    if d:
      out.append(("Digits MLP M=16: >= 1.5x the JAX loop", verdict(
          d["fj_vs_jax_loop"]["median"] >= 1.5), f"{d['fj_vs_jax_loop']['median']:.2f}x"))
      te = d.get("fj_vs_torchensemble")
      out.append(("Digits MLP M=16: >= 2.5x torchensemble VotingClassifier",
                  verdict(te and te["median"] >= 2.5) if te else "not measured (no torchensemble)",
                  f"{te['median']:.2f}x" if te else "—"))
    mn = row(rows, model="mnist_mlp", members=16)
    if mn:
      tl = mn.get("fj_vs_torch_loop")
      out.append(("MNIST MLP M=16: >= 2x the torch loop",
                  verdict(tl["median"] >= 2.0) if tl else "not measured (no torch)",
                  f"{tl['median']:.2f}x" if tl else "—"))
      out.append(("MNIST MLP M=16: training >= 60% of the GEMM peak", verdict(
          mn["fj_pct_peak"] >= 60), f"{mn['fj_pct_peak']:.1f}% of {mn['gemm_peak_gflops']:.0f} "
          f"GFLOP/s ({mn['fj_gflops']:.1f} GFLOP/s; the loop {mn['jax_loop_pct_peak']:.0f}%)"))
  if inf:
    rows = inf["rows"]
    out.append(at_least_one(rows, "fj_vs_jax_loop",
                            "Inference: stacked >= 1.0x the JAX loop at every M, all models"))
    mn = row(rows, model="mnist_mlp", members=16)
    if mn:
      out.append(("MNIST MLP M=16: inference >= 80% of the GEMM peak", verdict(
          mn["fj_pct_peak"] >= 80), f"{mn['fj_pct_peak']:.1f}% ({mn['fj_gflops']:.1f} of "
          f"{mn['gemm_peak_gflops']:.0f} GFLOP/s; the loop {mn['jax_loop_pct_peak']:.0f}%)"))
  if cm:
    rows = [r for r in cm["compile"] if r["variant"] == "fj"]
    r1 = min(rows, key=lambda r: r["members"])
    r64 = max(rows, key=lambda r: r["members"])
    ratio = r64["compile_s"] / r1["compile_s"]
    out.append((f"Compile time M={r64['members']} <= 1.5x M={r1['members']}",
                verdict(ratio <= 1.5), f"{r64['compile_s']:.2f} s / {r1['compile_s']:.2f} s = "
                f"{ratio:.2f}x"))
    for key, label in (("startup", "no compilation cache"),
                       ("startup_warm", "JAX's persistent compilation cache filled")):
      st = cm.get(key)
      if st is None:
        continue
      out.append((f"Process start to first finished step, M={st['members']}: < 3 s "
                  f"({label})",
                  verdict(st["spawn_to_first_step_s"] < 3.0),
                  f"{st['spawn_to_first_step_s']:.2f} s median (min "
                  f"{st['min_spawn_to_first_step_s']:.2f}): imports {st['imports_s']:.2f} s, "
                  f"init {st['init_s']:.2f} s, first step {st['first_step_s']:.2f} s"))
  pf = res.get("pipeline_feed")
  if pf:
    q = pf["ratio_pipeline_over_device"]
    out.append((f"fit's step fed by the grain pipeline >= 0.95x fed from device arrays "
                f"(M={pf['members']} MNIST MLP)", verdict(q["median"] >= 0.95),
                f"{q['median']:.3f}x (median of {pf['cycles']} per-cycle ratios)"))
  sc = res.get("scale")
  if sc:
    for r in sc["sharded"]["rows"]:
      if r["program"].startswith("step") and r["members"] == max(
          x["members"] for x in sc["sharded"]["rows"]):
        wall, cpu = r["compile_vs_smallest"]["median"], r.get("compile_cpu_s")
        small = min(x["members"] for x in sc["sharded"]["rows"])
        base = row(sc["sharded"]["rows"], program=r["program"], members=small)
        cpu_ratio = cpu / base["compile_cpu_s"] if cpu and base else None
        out.append((f"Sharded {r['program']} (8 simulated devices): compile at "
                    f"M={r['members']} <= 1.5x M={small}",
                    verdict(wall <= 1.5 and (cpu_ratio is None or cpu_ratio <= 1.5)),
                    f"wall {wall:.2f}x (median of per-round ratios)" +
                    (f", CPU {cpu_ratio:.2f}x" if cpu_ratio else "")))
  return out


def roofline(step):
  peaks = step.get("peaks")
  mn = row(step["rows"], model="mnist_mlp", members=16)
  if not peaks or not mn:
    return ""
  gemm, bw = peaks["gemm_gflops"], peaks["stream_gbps"]
  m, b = 16, 128
  flops = mn["flops_per_step"]
  adam_bytes = m * MNIST_PARAMS * 7 * 4  # read p, g, mu, nu; write p, mu, nu (float32)
  t_gemm, t_adam = flops / (gemm * 1e9), adam_bytes / (bw * 1e9)
  return (
      f"**Roofline (MNIST MLP, M={m}, batch {b}).** A step is {flops / 1e9:.2f} GFLOP of "
      f"matmuls (1.211 MFLOP per member-sample) and an Adam update over {m} x {MNIST_PARAMS:,} "
      f"parameters that reads params, gradients and both moments and writes params and "
      f"moments: {adam_bytes / 1e6:.0f} MB per step. Measured in the same run: GEMM peak "
      f"{gemm:.0f} GFLOP/s (2048^3 float32 through JAX), memory bandwidth {bw:.1f} GB/s "
      f"(in-place triad over 64 MB arrays). So the matmuls need at least {1e3 * t_gemm:.1f} ms "
      f"and the update at least {1e3 * t_adam:.1f} ms if it streams from memory: unless the "
      f"update overlaps the matmuls, a step cannot exceed "
      f"{100 * t_gemm / (t_gemm + t_adam):.0f}% of the GEMM peak. Chunking members keeps "
      f"each chunk's gradients in cache (they are not written to and re-read from memory), "
      f"and the guard's finiteness verdict is one GEMV per leaf (XLA:CPU runs a boolean "
      f"all(isfinite) reduction one element at a time, ~3x slower).\n")


def main():
  res = {name: load(name) for name, _ in SECTIONS}
  kinds = {name: load_kinds(name) for name in PER_KIND}
  for name in PER_KIND:
    res[name] = kinds[name][0] if kinds[name] else None
  lines = [
      "# Benchmark results",
      "",
      "Generated by `python benchmarks/report.py` from `benchmarks/results/*.json` on "
      f"{datetime.datetime.now().isoformat(timespec='seconds')}; the whole suite runs with "
      "`bash benchmarks/run_all.sh` (1049 s with `--with-sweep`, measured on the 2-core machine below before the CNN repeat was added, which took 228 s on its own). The "
      "machine is shared: every comparison interleaves its variants in ABAB... cycles in one "
      "process; times are medians over cycles and ratios medians of per-cycle ratios.",
      "",
      "GPU: not measured (no GPU in this session).",
      "",
  ]
  tg = targets(res, kinds["ensemble_step"], kinds["guard_cost"])
  if tg:
    lines += ["## Targets", "", "| target | status | measured |", "|:---|:---|:---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in tg]
    lines.append("")
  if res.get("ensemble_step"):
    lines += [roofline(res["ensemble_step"])]
  for name, title in SECTIONS:
    found = kinds[name] if name in PER_KIND else [res.get(name)]
    lines += [f"## {title}", ""]
    if not any(found):
      lines += ["Not run (no result file).", ""]
      continue
    module = __import__(SCRIPT.get(name, name))
    for r in found:
      if name in PER_KIND:
        lines += [f"### {kind_of(r)}", ""]
      lines += [module.render(r), "", "Machine: " + machine_line(r), ""]
  with open(os.path.join(C.HERE, "RESULTS.md"), "w") as f:
    f.write("\n".join(lines))
  print("wrote benchmarks/RESULTS.md")


if __name__ == "__main__":
  main()
