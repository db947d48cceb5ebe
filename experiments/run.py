"""Runs experiment configs and writes their result files (compute only; no plotting).

    python experiments/run.py --all [--smoke] [--data-dir ../shared/data/mnist] [--out DIR]
    python experiments/run.py --config fig1_ensemble_size [--config ...] [--smoke]
    python experiments/run.py --list

Each config ``experiments/configs/<name>.py`` has ``get_config(smoke=False)``
returning a dict whose ``'task'`` names a module of ``experiments/tasks/``;
that module's ``run(cfg, data_dir, timer)`` returns a JSON-able dict, written to
``<out>/<name>.json`` together with the config, the wall-clock runtime and the
machine. ``--all`` runs every config that does not need a GPU (``cfg['gpu']``);
``--smoke`` shrinks every config (digits, a few steps) and includes the GPU
ones. Then ``python paper/make_figures.py`` turns the result files into the
paper's figures and tables.
"""
import argparse
import atexit
import importlib
import os
import pathlib
import shutil
import sys
import tempfile
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--smoke" in sys.argv and os.environ.get("FJ_SMOKE_FAST_COMPILE", "1") != "0":
  # Smoke runs are compile-bound: ask XLA:CPU for cheap code generation (about 2x
  # faster compiles, slower kernels). Must be set before JAX starts its backend.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                             " --xla_llvm_disable_expensive_passes=true").strip()

from experiments.tasks import common  # noqa: E402

CONFIG_DIR = ROOT / "experiments" / "configs"


def config_names():
  return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))


def get_config(name: str, smoke: bool) -> dict:
  return importlib.import_module(f"experiments.configs.{name}").get_config(smoke=smoke)


def run_one(name: str, smoke: bool, data_dir, out_dir: pathlib.Path) -> float:
  cfg = get_config(name, smoke)
  task = importlib.import_module(f"experiments.tasks.{cfg['task']}")
  timer = common.Timer()
  t0 = time.perf_counter()
  print(f"[run] {name} (task {cfg['task']}{', smoke' if smoke else ''}) ...", flush=True)
  result = task.run(cfg, data_dir, timer)
  seconds = time.perf_counter() - t0
  record = {"name": name, "smoke": smoke, "config": cfg, "runtime_s": seconds,
            "sections_s": timer.seconds, "command": " ".join(["python", *sys.argv]),
            "machine": common.machine(), "result": result}
  common.write_json(str(out_dir / f"{name}.json"), record)
  print(f"[run] {name}: {seconds:.1f} s -> {out_dir / (name + '.json')}", flush=True)
  return seconds


def _compilation_cache(path):
  """Identical XLA programs (a second seed, a second config) compile once."""
  import jax  # pylint: disable=g-import-not-at-top
  if path is None:
    path = tempfile.mkdtemp(prefix="fj_xla_cache_")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--all", action="store_true", help="every CPU config (with --smoke: every config)")
  p.add_argument("--config", action="append", default=[], help="a config name (repeatable)")
  p.add_argument("--smoke", action="store_true", help="a few steps on digits, for tests")
  p.add_argument("--data-dir", default=os.environ.get("FUSIONJAX_DATA"),
                 help="folder with the MNIST IDX files (default $FUSIONJAX_DATA)")
  p.add_argument("--out", default=str(ROOT / "experiments" / "results"))
  p.add_argument("--list", action="store_true")
  p.add_argument("--jax-cache", default=None,
                 help="persistent XLA compilation cache dir (default: a fresh temporary dir, so "
                      "identical programs compile once per invocation and timings are cold)")
  p.add_argument("--keep-going", action="store_true", help="run the other configs after a failure")
  args = p.parse_args(argv)

  if args.list:
    for n in config_names():
      cfg = get_config(n, False)
      print(f"{n:<28} task={cfg['task']:<16} {'GPU' if cfg.get('gpu') else 'CPU'}")
    return 0
  names = args.config
  if args.all:
    names = [n for n in config_names() if args.smoke or not get_config(n, False).get("gpu")]
  if not names:
    p.error("pass --all or --config NAME (see --list)")
  unknown = sorted(set(names) - set(config_names()))
  if unknown:
    p.error(f"unknown config(s) {unknown}; known: {config_names()}")
  _compilation_cache(args.jax_cache)
  out_dir = pathlib.Path(args.out)
  out_dir.mkdir(parents=True, exist_ok=True)
  total, failed, seconds = time.perf_counter(), [], {}
  for name in names:
    try:
      seconds[name] = run_one(name, args.smoke, args.data_dir, out_dir)
    except Exception:  # pylint: disable=broad-except
      if not args.keep_going:
        raise
      traceback.print_exc()
      failed.append(name)
  wall = time.perf_counter() - total
  if args.all:
    common.write_json(str(out_dir / "run_summary.json"), {
        "command": " ".join(["python", *sys.argv]), "smoke": args.smoke, "wall_s": wall,
        "configs_s": seconds, "failed": failed, "machine": common.machine()})
  print(f"[run] {len(names) - len(failed)}/{len(names)} configs in {wall:.1f} s"
        f"{'; failed: ' + str(failed) if failed else ''}", flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
