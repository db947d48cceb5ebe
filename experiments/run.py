"""Runs one experiment config, or all of them, and writes result files (compute only).

    python experiments/run.py --config experiments/configs/<name>.py[:smoke] \
        [--config.<field>=<value> ...] [--smoke] [--workdir DIR] [--data_dir DIR] [--publish]
    python experiments/run.py --all [--smoke] [--data_dir DIR] [--workdir DIR] [--publish]
    python experiments/run.py --list

A config is a file ``experiments/configs/<name>.py`` whose ``get_config(arg=None)``
returns an ``ml_collections.ConfigDict`` (``arg='smoke'``: a few steps on digits, for
tests); its ``task`` names a module of ``experiments/tasks/`` whose
``run(cfg, data_dir, timer)`` returns a JSON-able dict. ``--smoke`` is the same as
``:smoke``; ``--config.<field>=<value>`` overrides are applied after it, and the resolved
config (``cfg.to_dict()``) goes into the result file.

A config with ``seeds`` whose task reads one ``seed`` runs the task once per seed; its
result is ``{"seeds": [...], "per_seed": [result, ...]}`` (tasks that set
``LOOPS_OVER_SEEDS`` get the whole list instead).

Results go to ``--workdir`` (default ``outputs/experiments``); only ``--publish`` writes
into ``experiments/results/``, which the paper reads, and it refuses smoke runs. Each
result records the git commit (``unknown`` outside a git checkout), the library versions,
the devices and the resolved config. ``--all`` runs every config that needs no GPU
(``cfg.gpu``), with ``--smoke`` every config; it takes no ``--config``. The platform is
whatever JAX picks (set ``JAX_PLATFORMS`` yourself to force one). Then
``python paper/make_figures.py`` turns published results into the paper's figures and
tables.
"""
import atexit
import importlib
import importlib.metadata
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))
CONFIG_DIR = ROOT / "experiments" / "configs"
RESULTS_DIR = ROOT / "experiments" / "results"
DEFAULT_WORKDIR = ROOT / "outputs" / "experiments"


def _wants_smoke(argv) -> bool:
  """``--smoke`` or a ``--config PATH:smoke`` on the command line (read before absl parses)."""
  if any(a in ("--smoke", "--smoke=true", "--smoke=True", "--smoke=1") for a in argv):
    return True
  for i, a in enumerate(argv):
    path = a.split("=", 1)[1] if a.startswith("--config=") else (
        argv[i + 1] if a == "--config" and i + 1 < len(argv) else None)
    if path is not None and path.endswith(":smoke"):
      return True
  return False


def _smoke_config_argv(argv):
  """With ``--smoke``, ``--config PATH`` becomes ``--config PATH:smoke``.

  config_flags loads the file while it parses ``--config`` and applies the
  ``--config.<field>`` overrides after that, so rewriting the path before absl
  sees it makes ``--smoke`` exactly ``:smoke``, overrides included.
  """
  if not any(a in ("--smoke", "--smoke=true", "--smoke=True", "--smoke=1") for a in argv):
    return list(argv)
  out, i = [], 0
  while i < len(argv):
    a = argv[i]
    if a.startswith("--config="):
      path = a.split("=", 1)[1]
      out.append("--config=" + (path if ":" in pathlib.Path(path).name else path + ":smoke"))
    elif a == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
      out += [a, path if ":" in pathlib.Path(path).name else path + ":smoke"]
      i += 1
    else:
      out.append(a)
    i += 1
  return out


if _wants_smoke(sys.argv) and os.environ.get("FJ_SMOKE_FAST_COMPILE", "1") != "0":
  # Smoke runs are compile-bound: ask XLA:CPU for cheap code generation (about 2x
  # faster compiles, slower kernels). Must be set before JAX starts its backend.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                             " --xla_llvm_disable_expensive_passes=true").strip()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiments/configs/<name>.py[:smoke]; override fields with "
    "--config.<field>=<value>", lock_config=True)
_ALL = flags.DEFINE_bool("all", False, "run every CPU config (with --smoke: every config); "
                         "takes no --config")
_SMOKE = flags.DEFINE_bool("smoke", False, "the same as :smoke: a few steps on digits")
_WORKDIR = flags.DEFINE_string("workdir", str(DEFAULT_WORKDIR),
                               "where results go without --publish")
_DATA_DIR = flags.DEFINE_string("data_dir", os.environ.get("FUSIONJAX_DATA"),
                                "folder with the MNIST IDX files (default $FUSIONJAX_DATA)")
_PUBLISH = flags.DEFINE_bool("publish", False, "write into experiments/results/ (the paper's "
                             "inputs) instead of --workdir; refused with --smoke")
_LIST = flags.DEFINE_bool("list", False, "list the configs and exit")
_JAX_CACHE = flags.DEFINE_string(
    "jax_cache", None, "persistent XLA compilation cache dir (default: a fresh temporary dir, "
    "so identical programs compile once per invocation and timings are cold)")
_KEEP_GOING = flags.DEFINE_bool("keep_going", False, "run the other configs after a failure")


def config_names():
  return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))


def load_config(name: str, smoke: bool):
  """The ConfigDict of ``experiments/configs/<name>.py`` (its smoke version with ``smoke``)."""
  return importlib.import_module(f"experiments.configs.{name}").get_config(
      "smoke" if smoke else None)


def _git(*args):
  try:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          timeout=20, check=True).stdout.rstrip()
  except (OSError, subprocess.SubprocessError):
    return None


def provenance() -> dict:
  """Commit, library versions and devices of this run (commit ``unknown`` outside a checkout)."""
  import jax  # pylint: disable=g-import-not-at-top
  top = _git("rev-parse", "--show-toplevel")
  in_checkout = top is not None and pathlib.Path(top).resolve() == ROOT
  commit = (_git("rev-parse", "HEAD") if in_checkout else None) or "unknown"
  dirty, changed = None, []
  if in_checkout:
    status = _git("status", "--porcelain", "--untracked-files=no")
    if status is not None:
      changed = [line[3:] for line in status.splitlines()]
      dirty = bool(changed)
  versions = {}
  for pkg in ("fusionjax", "jax", "jaxlib", "flax", "optax", "numpy", "ml_collections", "grain"):
    try:
      versions[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      versions[pkg] = None
  devices = [{"id": d.id, "platform": d.platform, "kind": d.device_kind} for d in jax.devices()]
  return {"git_commit": commit, "git_dirty": dirty, "git_changed_files": changed[:50],
          "versions": versions,
          "backend": jax.default_backend(), "devices": devices}


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def run_one(name: str, cfg, data_dir, out_dir: pathlib.Path, smoke: bool, argv) -> float:
  from experiments.tasks import common  # pylint: disable=g-import-not-at-top
  resolved = cfg.to_dict()
  task = importlib.import_module(f"experiments.tasks.{resolved['task']}")
  timer = common.Timer()
  t0 = time.perf_counter()
  cpu0 = _cpu_seconds()
  print(f"[run] {name} (task {resolved['task']}{', smoke' if smoke else ''}) ...", flush=True)
  seeds = resolved.get("seeds")
  if seeds is not None and not getattr(task, "LOOPS_OVER_SEEDS", False):
    per_seed = []
    for seed in seeds:
      print(f"[run] {name}: seed {seed}", flush=True)
      per_seed.append(task.run({**resolved, "seed": seed}, data_dir, timer))
    result = {"seeds": list(seeds), "per_seed": per_seed}
  else:
    result = task.run(resolved, data_dir, timer)
  seconds = time.perf_counter() - t0
  record = {"name": name, "smoke": smoke, "config": resolved, "runtime_s": seconds,
            # CPU seconds (user + system) this config took in this process: less sensitive
            # than the wall-clock time to other jobs sharing the machine (with --all the
            # process runs several configs, so it is the difference over this one)
            "process_cpu_s": _cpu_seconds() - cpu0,
            "sections_s": timer.seconds, "command": " ".join(["python", *argv]),
            "provenance": provenance(), "machine": common.machine(), "result": result}
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


def _config_name(argv) -> str:
  """The config's file stem, from the ``--config`` argument as given."""
  for i, a in enumerate(argv):
    path = a.split("=", 1)[1] if a.startswith("--config=") else (
        argv[i + 1] if a == "--config" and i + 1 < len(argv) else None)
    if path is not None:
      return pathlib.Path(path.split(":", 1)[0]).stem
  raise app.UsageError("pass --config experiments/configs/<name>.py or --all (see --list)")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  full_argv = sys.argv
  if _LIST.value:
    for n in config_names():
      cfg = load_config(n, False)
      print(f"{n:<28} task={cfg.task:<16} {'GPU' if cfg.get('gpu') else 'CPU'}")
    return 0
  smoke = _SMOKE.value or _wants_smoke(full_argv)
  if _PUBLISH.value and smoke:
    raise app.UsageError("--publish writes the paper's results; a smoke run must not "
                         "(drop --smoke / :smoke, or drop --publish and use --workdir)")
  if _ALL.value:
    if _CONFIG.value is not None or any(a.startswith("--config") for a in full_argv[1:]):
      raise app.UsageError("--all runs every config with its own settings; it takes no "
                           "--config or --config.<field> (run one config to override fields)")
    jobs = [(n, load_config(n, smoke)) for n in config_names()]
    jobs = [(n, c) for n, c in jobs if smoke or not c.get("gpu")]
  elif _CONFIG.value is not None:
    name = _config_name(full_argv)
    jobs = [(name, _CONFIG.value)]
  else:
    raise app.UsageError("pass --config experiments/configs/<name>.py or --all (see --list)")

  out_dir = RESULTS_DIR if _PUBLISH.value else pathlib.Path(_WORKDIR.value)
  _compilation_cache(_JAX_CACHE.value)
  out_dir.mkdir(parents=True, exist_ok=True)
  total, failed, seconds = time.perf_counter(), [], {}
  for name, cfg in jobs:
    try:
      seconds[name] = run_one(name, cfg, _DATA_DIR.value, out_dir, smoke, full_argv)
    except Exception:  # pylint: disable=broad-except
      if not _KEEP_GOING.value:
        raise
      traceback.print_exc()
      failed.append(name)
  wall = time.perf_counter() - total
  if _ALL.value:
    from experiments.tasks import common  # pylint: disable=g-import-not-at-top
    common.write_json(str(out_dir / "run_summary.json"), {
        "command": " ".join(["python", *full_argv]), "smoke": smoke, "wall_s": wall,
        "configs_s": seconds, "failed": failed, "provenance": provenance(),
        "machine": common.machine()})
  print(f"[run] {len(jobs) - len(failed)}/{len(jobs)} configs in {wall:.1f} s -> {out_dir}"
        f"{'; failed: ' + str(failed) if failed else ''}", flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.argv = _smoke_config_argv(sys.argv)
  app.run(main)
