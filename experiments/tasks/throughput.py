"""Figure 6: training throughput (member-samples/s) against M, stacked step vs a loop.

The numbers are the benchmark's (``benchmarks/ensemble_step.py``, owned by the
benchmarks). It keeps one result per CPU kind,
``benchmarks/results/ensemble_step@<kind>.json``; the newest of them (by the
time it finished; the legacy ``ensemble_step.json`` counts too) is copied, its
rows of the configured models with its machine and command (normalised to
``model, members, stacked_member_samples_per_s, loop_member_samples_per_s``).
Otherwise (and in smoke mode) a minimal version of the same measurement runs here: fusionjax's
stacked step (``fj.train.make_trainer``) against a Python loop over M jitted
single-member flax + optax steps, batch ``batch``, synthetic inputs, median over
``repeats`` timings of ``steps`` steps each.
"""
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fusionjax as fj
from experiments.tasks import common

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
ALIASES = {"stacked_member_samples_per_s": ("stacked_member_samples_per_s", "fj_msps"),
           "loop_member_samples_per_s": ("loop_member_samples_per_s", "jax_loop_msps")}
MODELS = {"digits_mlp": ((8, 8, 1), dict(name="mlp", features=[256, 256])),
          "mnist_mlp": ((28, 28, 1), dict(name="mlp", features=[256, 256]))}


def benchmark_file(results=None):
  """The newest ``ensemble_step@<kind>.json`` (or legacy ``ensemble_step.json``), or None."""
  results = pathlib.Path(results) if results is not None else RESULTS
  found = sorted(results.glob("ensemble_step@*.json"))
  if (results / "ensemble_step.json").exists():
    found.append(results / "ensemble_step.json")
  if not found:
    return None

  def finished(path):
    with open(path) as f:
      return json.load(f).get("finished", "")

  return max(found, key=finished)


def normalise(rows, source):
  out = []
  for r in rows:
    row = dict(r)
    for key, names in ALIASES.items():
      val = next((r[n] for n in names if n in r), None)
      if val is None:
        raise KeyError(f"{source}: a row lacks any of {names}: {sorted(r)}")
      row[key] = val
    out.append(row)
  return out


def _median_time(fn, steps, repeats):
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    out = None
    for _ in range(steps):
      out = fn()
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t) / steps)
  return statistics.median(times)


def measure(model: str, m: int, batch: int, repeats: int, steps: int) -> dict:
  shape, spec = MODELS[model]
  module = common.make_module(spec)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
  tx = optax.adam(1e-3)
  ens = fj.ensemble.from_linen(module, m)
  trainer = fj.train.make_trainer(ens, tx, x_example=x[:1])
  box = {"s": trainer.init(jax.random.key(0), x[:1])}
  step = trainer.step

  def stacked():
    box["s"], logs = step(box["s"], {"x": x, "y": y})
    return logs["loss"]

  params = [module.init(jax.random.key(i), x[:1])["params"] for i in range(m)]
  opts = [tx.init(p) for p in params]

  @jax.jit
  def single(p, o):
    loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(
        module.apply({"params": q}, x), y).mean()
    l, g = jax.value_and_grad(loss)(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, l

  def loop():
    out = None
    for i in range(m):
      params[i], opts[i], out = single(params[i], opts[i])
    return out

  jax.block_until_ready(stacked())
  jax.block_until_ready(loop())
  ts, tl = _median_time(stacked, steps, repeats), _median_time(loop, steps, repeats)
  return {"model": model, "members": m, "batch": batch, "stacked_step_ms": 1e3 * ts,
          "loop_step_ms": 1e3 * tl, "stacked_member_samples_per_s": m * batch / ts,
          "loop_member_samples_per_s": m * batch / tl}


def run(cfg, data_dir, timer):
  del data_dir
  source = benchmark_file()
  if source is not None and not cfg.get("measure", False):
    with open(source) as f:
      bench = json.load(f)
    rows = bench["rows"] if isinstance(bench, dict) else bench
    rows = [r for r in rows if r["model"] in cfg["models"]]
    if not rows:
      raise ValueError(f"{source}: no rows of the models {list(cfg['models'])}; fix: run "
                       "python benchmarks/ensemble_step.py --models "
                       f"{' '.join(cfg['models'])}, or --config.measure=True")
    return {"source": str(source.relative_to(ROOT)), "command": bench.get("command"),
            "machine": bench.get("machine"), "rows": normalise(rows, source)}
  rows = []
  with timer("measure"):
    for model in cfg["models"]:
      for m in cfg["members"]:
        rows.append(measure(model, m, cfg["batch"], cfg["repeats"], cfg["steps"]))
  why = "measured here" if cfg.get("measure", False) else (
      "no benchmarks/results/ensemble_step@<kind>.json")
  return {"source": f"experiments/tasks/throughput.py ({why})", "command": None,
          "machine": common.machine(), "rows": rows}
