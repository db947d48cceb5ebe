"""Shared helpers of the benchmark scripts: the machine, interleaved timing, peaks, results.

Timing discipline (the machine is shared and noisy): every variant compared in
a table runs in the same process, in ABAB... cycles; a variant's time is the
median over cycles, and a ratio between two variants is the median of the
per-cycle ratios (each cycle's variants ran under about the same load).
"""
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

# The MLPs of the suite: input width -> (hidden..., classes).
MLP_DIMS = {"digits_mlp": (64, 256, 256, 10), "mnist_mlp": (784, 256, 256, 10)}


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags() -> list:
  """The vector-ISA flags of this CPU that change XLA:CPU's kernels (from /proc/cpuinfo)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          have = set(line.split(":", 1)[1].split())
          return [fl for fl in _ISA_FLAGS if fl in have]
  except OSError:
    pass
  return []


def has_avx512() -> bool:
  return "avx512f" in cpu_flags()


def cpu_kind(m: dict) -> str:
  """A result's CPU kind in words: the model name and whether it has AVX-512
  (XLA:CPU's kernels, and so its speed and numerics, differ between them)."""
  if m.get("cpu_flags") is None:
    return f"{m['cpu']} (CPU flags not recorded)"
  return f"{m['cpu']}, {'with' if m.get('avx512') else 'without'} AVX-512"


def kind_slug(m: dict) -> str:
  """``cpu_kind`` as a file-name suffix: lower-case words joined by dashes."""
  words = re.sub(r"\((r|tm)\)|\bprocessor\b|\bcpu\b", " ", m["cpu"].lower())
  words = re.sub(r"[^a-z0-9]+", "-", words).strip("-")
  if m.get("cpu_flags") is None:
    return words
  return f"{words}-{'avx512' if m.get('avx512') else 'no-avx512'}"


def _version(name: str) -> Optional[str]:
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    return metadata.version(name)
  except Exception:  # pylint: disable=broad-except
    return None


def _lscpu() -> Dict[str, str]:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
  except Exception:  # pylint: disable=broad-except
    return {}
  keep = ("L1d cache", "L2 cache", "L3 cache", "Hypervisor vendor", "Model", "CPU family")
  info = {}
  for line in out.splitlines():
    k, _, v = line.partition(":")
    if k.strip() in keep:
      info[k.strip()] = v.strip()
  return info


def machine() -> dict:
  """The machine and software a result was measured on."""
  import jax  # pylint: disable=g-import-not-at-top
  return {
      "cpu": cpu_model(),
      "cpu_flags": cpu_flags(),
      "avx512": has_avx512(),
      "cores": os.cpu_count(),
      "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      "caches": _lscpu(),
      "platform": platform.platform(),
      "python": sys.version.split()[0],
      "versions": {n: _version(n) for n in ("jax", "jaxlib", "flax", "optax", "numpy", "torch",
                                            "torchensemble")},
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "loadavg_start": os.getloadavg(),
  }


def command() -> str:
  return "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


def write(name: str, payload: dict) -> str:
  """Writes ``benchmarks/results/<name>.json`` with the command, machine and time."""
  os.makedirs(RESULTS, exist_ok=True)
  payload = dict(payload)
  payload.setdefault("command", command())
  payload["machine"] = payload.get("machine") or machine()
  payload["machine"]["loadavg_end"] = os.getloadavg()
  payload["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
  path = os.path.join(RESULTS, f"{name}.json")
  with open(path, "w") as f:
    json.dump(payload, f, indent=1, default=float)
  print(f"wrote {os.path.relpath(path)}")
  return path


def write_per_kind(name: str, payload: dict, mach: dict) -> str:
  """Writes ``results/<name>@<CPU kind>.json`` (XLA:CPU's speed differs between CPU
  kinds, so ``report.py`` keeps a table per kind), with ``cpu_kind`` in words."""
  return write(f"{name}@{kind_slug(mach)}", {**payload, "machine": mach,
                                            "cpu_kind": cpu_kind(mach)})


def print_cpu(mach: dict) -> None:
  print(f"CPU: {mach['cpu']}; vector ISA: {' '.join(mach['cpu_flags'])}", flush=True)


# --------------------------------------------------------------------------- timing


def interleave(variants: Dict[str, Callable[[], Callable[[], None]]], cycles: int,
               target_s: float = 0.25, max_calls: int = 50,
               max_call_s: float = 8.0) -> Dict[str, List[float]]:
  """Seconds per call of each variant, one sample per cycle, variants interleaved.

  Args:
    variants: name -> ``run`` where ``run()`` performs one call and blocks until
      its results are ready (warm: compile before).
    cycles: ABAB... cycles.
    target_s: each variant runs ``n`` calls a cycle, ``n`` chosen from a first
      timed call so that a cycle takes about this long.
    max_calls: cap of ``n``.
    max_call_s: a variant whose first timed call takes longer is not cycled:
      its one sample is all there is (its list has length 1).

  Returns:
    name -> list (one per cycle) of seconds per call.
  """
  calls, times = {}, {}
  for name, run in variants.items():
    t = time.perf_counter()
    run()
    dt = time.perf_counter() - t
    if dt > max_call_s:
      times[name] = [dt]
      print(f"note: {name} takes {dt:.1f} s a call; timed once, not interleaved.")
      continue
    calls[name] = int(min(max_calls, max(1, round(target_s / max(dt, 1e-6)))))
    times[name] = []
  for _ in range(cycles):
    for name, run in variants.items():
      if name not in calls:
        continue
      n = calls[name]
      t = time.perf_counter()
      for _ in range(n):
        run()
      times[name].append((time.perf_counter() - t) / n)
  return times


def med(xs) -> float:
  return float(statistics.median(xs))


def ratio(num: List[float], den: List[float]) -> dict:
  """Median (and range) of per-cycle ratios ``num[i] / den[i]`` (of medians if not cycled)."""
  if len(num) != len(den):
    r = [med(num) / med(den)]
  else:
    r = [a / b for a, b in zip(num, den)]
  return {"median": med(r), "min": float(min(r)), "max": float(max(r))}


# --------------------------------------------------------------------------- peaks


def gemm_runner(n: int = 2048):
  """``(run, flops)``: one float32 ``n x n @ n x n`` matmul through JAX, blocking."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(n, n)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(n, n)), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  return (lambda: f(a, b).block_until_ready()), 2.0 * n ** 3


def stream_runner(mbytes: int = 64):
  """``(run, bytes)``: a STREAM-like triad ``a + s * b`` over float32 arrays, in place.

  The output is donated back as the next input, so no fresh pages are touched:
  it measures DRAM bandwidth (3 arrays of ``mbytes`` MB move per call).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  n = mbytes * 2 ** 20 // 4
  b = jnp.ones((n,), jnp.float32)
  f = jax.jit(lambda a, b: a + 1.0001 * b, donate_argnums=0)
  state = {"a": jnp.zeros((n,), jnp.float32)}

  def run():
    state["a"] = f(state["a"], b)
    state["a"].block_until_ready()

  run()
  return run, 3.0 * n * 4


def mlp_flops(dims, train: bool) -> float:
  """Exact matmul FLOPs per sample of an MLP with widths ``dims`` (in, hidden..., out).

  Forward ``2 sum in*out``; training adds the weight gradients of every layer
  and the input gradients of every layer but the first (no gradient w.r.t. x).
  Biases, activations and the loss are not counted.
  """
  pairs = [a * b for a, b in zip(dims[:-1], dims[1:])]
  fwd = 2.0 * sum(pairs)
  if not train:
    return fwd
  return fwd + 2.0 * sum(pairs) + 2.0 * sum(pairs[1:])


def cnn_flops(hw=28, cin=1, features=(8, 16), hidden=64, classes=10, k=5, train=True) -> float:
  """Multiply-add FLOPs per sample of ``fusionjax.models.CNN`` (SAME convs, 2x2 pools).

  Convolutions count ``2 * H * W * Cout * k * k * Cin`` (padding included, as
  computed); training as :func:`mlp_flops` (no input gradient for the first layer).
  """
  layers = []
  h, c = hw, cin
  for f in features:
    layers.append(2.0 * h * h * f * k * k * c)
    h, c = h // 2, f
  dense = [h * h * c, hidden, classes]
  layers += [2.0 * a * b for a, b in zip(dense[:-1], dense[1:])]
  fwd = sum(layers)
  return fwd if not train else fwd + sum(layers) + sum(layers[1:])


# --------------------------------------------------------------------------- tables


def table(rows: List[dict], columns: List[tuple]) -> str:
  """A markdown table; ``columns`` is ``[(header, key or callable, format), ...]``."""
  head = "| " + " | ".join(c[0] for c in columns) + " |"
  sep = "|" + "|".join("---:" if i else ":---" for i in range(len(columns))) + "|"
  lines = [head, sep]
  for r in rows:
    cells = []
    for _, key, fmt in columns:
      v = key(r) if callable(key) else r.get(key)
      cells.append("—" if v is None else (fmt.format(v) if fmt else str(v)))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def torch_or_none():
  """``torch`` with its threads set to the core count, or None (with a printed note).

  OpenMP threads sleep when idle (``OMP_WAIT_POLICY=PASSIVE``, unless set):
  with busy-waiting threads on a shared 2-core machine a torch MLP step took
  60-300 ms instead of 10-15 ms, which would be an unfair peer.
  """
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    print("note: torch is not installed; the PyTorch peers are skipped "
          "(pip install 'fusionjax[bench]' to include them).")
    return None
  torch.set_num_threads(os.cpu_count())
  return torch
