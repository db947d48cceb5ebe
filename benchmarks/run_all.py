"""Runs the benchmark suite and rebuilds RESULTS.md: ``python benchmarks/run_all.py [--quick]``.

Each script runs in its own process (fresh JIT caches and memory) and writes
``benchmarks/results/<name>.json``; ``report.py`` then writes ``RESULTS.md``
from those files only. 1049 s with ``--with-sweep`` on a shared 2-core CPU before
the CNN repeat (228 s on its own) was added; ``--quick``
(M in {1, 16}, 3 cycles) is a shorter smoke run; ``--with-sweep`` adds
``chunk_sweep.py``.
"""
import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--with-sweep", action="store_true",
                 help="also run chunk_sweep.py (member_chunk against speed; ~5 min)")
  p.add_argument("--only", nargs="+", default=None,
                 help="run only these scripts (e.g. inference cascade)")
  args = p.parse_args(argv)
  members = ["--members", "1", "16"] if args.quick else []
  cycles = ["--cycles", "3"] if args.quick else []
  # (result name, script, arguments)
  scripts = [
      ("ensemble_step", "ensemble_step", members + cycles),
      # The CNN rows again with more cycles and no PyTorch peers: its ratios to
      # the loop vary by +-20 % between cycles on a shared 2-core machine.
      ("ensemble_step_cnn", "ensemble_step",
       ["--models", "cnn", "--no-torch", "--out", "ensemble_step_cnn"] + members +
       (cycles or ["--cycles", "17"])),
      # Host threads of the 'loop' layout (LOOP_WORKERS).
      ("loop_workers", "loop_workers", (["--members", "16"] if args.quick else []) + cycles),
      ("inference", "inference", members + cycles),
      ("cascade", "cascade",
       (["--members", "4", "--epochs", "1"] if args.quick else []) + cycles),
      ("compile_memory", "compile_memory", ["--members", "1", "16"] if args.quick else []),
      ("donation", "donation", cycles),
      # What the non-finite guard costs the dense step: the torch.func target's ceiling.
      ("guard_cost", "guard_cost", cycles),
      # Each issue-22 change of the dense step undone, against the step as shipped.
      ("step_ab", "step_ab", cycles),
      # XLA:CPU's compile options against the default dense step.
      ("xla_cpu_options", "xla_cpu_options", cycles),
      # The new default step against a frozen copy of the one before make_trainer.
      ("engine_ab", "engine_ab", members + (["--cycles", "3"] if args.quick else [])),
  ]
  if args.with_sweep or (args.only and "chunk_sweep" in args.only):
    scripts.append(("chunk_sweep", "chunk_sweep", ["--members", "16", "64", "--models",
                                                   "digits_mlp", "mnist_mlp"] + cycles))
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  t0 = time.time()
  failed = []
  for name, script, extra in scripts:
    if args.only and name not in args.only:
      continue
    cmd = [sys.executable, os.path.join("benchmarks", f"{script}.py")] + extra
    print(f"\n=== {' '.join(cmd[1:])}", flush=True)
    t = time.time()
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    print(f"=== {name}: {time.time() - t:.0f} s (rc={rc})", flush=True)
    if rc:
      failed.append(name)
  subprocess.check_call([sys.executable, os.path.join("benchmarks", "report.py")], cwd=ROOT,
                        env=env)
  print(f"\nsuite: {time.time() - t0:.0f} s; failed: {failed or 'none'}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
