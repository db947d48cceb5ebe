"""Is the data loader fast enough? Loader batches/s against ensemble steps/s.

The loader (``fusionjax.data.batches``: MNIST, batch 128, shuffled, normalised,
device arrays, background prefetch) must deliver batches at least 5x faster
than the MNIST ensemble step consumes them (M = 16 MLPs 784-256-256-10, batch
128, Adam, one jitted vmapped step with the optimizer inside the vmap and the
member losses summed).

Command (from the repository root)::

    JAX_PLATFORMS=cpu /work/venv/bin/python benchmarks/data_loader.py

Prints a table and writes ``benchmarks/results/data_loader.json``. Uses the
real MNIST IDX files from ``--data-dir`` (default ``../shared/data``) when
they are there, synthetic MNIST-shaped arrays otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fusionjax import data  # pylint: disable=g-import-not-at-top

BATCH = 128
MEMBERS = 16


def mnist_train(data_dir: pathlib.Path) -> tuple[data.ArraySource, str]:
  folder = data_dir / "mnist"
  images = folder / "train-images-idx3-ubyte.gz"
  labels = folder / "train-labels-idx1-ubyte.gz"
  if images.is_file() and labels.is_file():
    x = data.read_idx(images, shape=(None, 28, 28))[..., None]
    y = data.read_idx(labels, ndim=1)
    origin = f"real MNIST ({folder})"
  else:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60000, 28, 28, 1), np.uint8)
    y = rng.integers(0, 10, 60000)
    origin = "synthetic MNIST-shaped arrays (real files not found)"
  return data.from_arrays(x, y, name="mnist", normalization="mnist"), origin


def loader_rate(train: data.ArraySource, epochs: int, prefetch: int) -> dict:
  """Batches/s of whole epochs (median over epochs), device arrays ready."""
  key = jax.random.key(0)
  for batch in data.batches(train, BATCH, key=key, epoch=10_000, prefetch=prefetch):
    pass  # warm-up: compiles the permutation, starts the allocator
  rates = []
  for epoch in range(epochs):
    start = time.perf_counter()
    count = 0
    for batch in data.batches(train, BATCH, key=key, epoch=epoch, prefetch=prefetch):
      count += 1
    jax.block_until_ready(batch)
    rates.append(count / (time.perf_counter() - start))
  return {"median": statistics.median(rates), "per_epoch": rates, "batches": count}


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(256)(x))
    x = nn.relu(nn.Dense(256)(x))
    return nn.Dense(10)(x)


def make_ensemble_step():
  """A self-contained stacked step: vmap over members of (params, Adam state)."""
  model, tx = MLP(), optax.adam(1e-3)

  def member_init(key):
    params = model.init(key, jnp.zeros((1, 28, 28, 1)))["params"]
    return params, tx.init(params)

  def member_loss(params, batch):
    logits = model.apply({"params": params}, batch["image"])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    mask = batch["mask"].astype(nll.dtype)
    return jnp.sum(nll * mask) / jnp.maximum(mask.sum(), 1)

  def member_step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(member_loss)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def step(params, opt_state, batch):
    params, opt_state, losses = jax.vmap(member_step, in_axes=(0, 0, None))(
        params, opt_state, batch
    )
    return params, opt_state, jnp.sum(losses)  # summed member losses

  init = jax.jit(jax.vmap(member_init))
  return init, step


def step_rate(train: data.ArraySource, steps: int) -> dict:
  """Median steps/s over ``steps`` timed steps, after warm-up."""
  init, step = make_ensemble_step()
  params, opt_state = init(jax.random.split(jax.random.key(0), MEMBERS))
  it = data.batches(train, BATCH, key=jax.random.key(1))
  batches = [next(it) for _ in range(8)]
  for i in range(3):  # warm-up (compile)
    params, opt_state, loss = step(params, opt_state, batches[i])
  jax.block_until_ready(loss)
  times = []
  for i in range(steps):
    start = time.perf_counter()
    params, opt_state, loss = step(params, opt_state, batches[i % len(batches)])
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - start)
  return {"median": 1 / statistics.median(times), "step": step,
          "state": (params, opt_state)}


def fed_rate(train: data.ArraySource, step, state, steps: int) -> float:
  """Steps/s of the step fed by the loader (prefetching while it computes)."""
  params, opt_state = state
  it = data.batches(train, BATCH, key=jax.random.key(2))
  params, opt_state, loss = step(params, opt_state, next(it))
  jax.block_until_ready(loss)
  start = time.perf_counter()
  for _ in range(steps):
    params, opt_state, loss = step(params, opt_state, next(it))
  jax.block_until_ready(loss)
  return steps / (time.perf_counter() - start)


def cpu_model() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", type=pathlib.Path, default=ROOT.parent / "shared" / "data")
  parser.add_argument("--epochs", type=int, default=5)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--out", type=pathlib.Path,
                      default=ROOT / "benchmarks" / "results" / "data_loader.json")
  args = parser.parse_args()

  train, origin = mnist_train(args.data_dir)
  loader = loader_rate(train, args.epochs, prefetch=2)
  loader_sync = loader_rate(train, args.epochs, prefetch=0)
  steps = step_rate(train, args.steps)
  fed = fed_rate(train, steps["step"], steps["state"], args.steps)
  ratio = loader["median"] / steps["median"]

  rows = [
      ("loader, prefetch=2 (batches/s)", loader["median"]),
      ("loader, prefetch=0 (batches/s)", loader_sync["median"]),
      (f"ensemble step, M={MEMBERS} MLPs (steps/s)", steps["median"]),
      ("ensemble step fed by the loader (steps/s)", fed),
      ("loader / step", ratio),
  ]
  print(f"data: {origin}; {len(train)} examples, batch {BATCH}")
  print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}, jax {jax.__version__}"
        f" on {jax.default_backend()} ({jax.devices()[0].device_kind}),"
        f" load average {os.getloadavg()[0]:.1f}")
  print(f"| {'measurement':<46} | {'value':>10} |")
  print(f"| {'-' * 46} | {'-' * 10}:|")
  for name, value in rows:
    print(f"| {name:<46} | {value:>10.1f} |")
  verdict = "OK" if ratio >= 5 else "TOO SLOW"
  print(f"loader is {ratio:.1f}x the step (needs >= 5x): {verdict}")

  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps({
      "command": "JAX_PLATFORMS=cpu python benchmarks/data_loader.py",
      "data": origin,
      "batch_size": BATCH,
      "members": MEMBERS,
      "loader_batches_per_s": loader["median"],
      "loader_batches_per_s_per_epoch": loader["per_epoch"],
      "loader_no_prefetch_batches_per_s": loader_sync["median"],
      "step_steps_per_s": steps["median"],
      "fed_step_steps_per_s": fed,
      "loader_over_step": ratio,
      "ok": ratio >= 5,
      "machine": {
          "cpus": os.cpu_count(),
          "cpu_model": cpu_model(),
          "jax": jax.__version__,
          "backend": jax.default_backend(),
          "device": jax.devices()[0].device_kind,
          "load_average_1min": os.getloadavg()[0],  # shared machines: noise
      },
  }, indent=2) + "\n")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
