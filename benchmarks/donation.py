"""Donating a single-member step's state, with and without the non-finite guard.

    python benchmarks/donation.py [--models cnn mnist_mlp digits_mlp] [--cycles 15]
        [--out donation]

Why the chunked step donates the state of MLP programs and not of
convolutional ones (``fusionjax.train._layouts``: the loop layout's per-member
calls and the one-member CNN program are not donated). For each model,
interleaved (ABAB...) in one process, batch 128, Adam:

* a jitted single-member training step, four variants: guard on or off
  (fusionjax's ``skip_nonfinite`` and the params select), state donated or not;
* fusionjax's own one-member program (``make_step(jit=False)``, guarded, as
  the default step runs it at M=1), jitted with the state donated or not.

Ratios are the plain (unguarded, undonated) step's time over each variant's
(median of per-cycle ratios; >1 is faster).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import _common as C  # noqa: E402
import ensemble_step as S  # noqa: E402
import fusionjax as fj  # noqa: E402

VARIANTS = [("plain", False, False), ("donated", False, True),
            ("guarded", True, False), ("guarded_donated", True, True)]
FJ_VARIANTS = [("fj", False), ("fj_donated", True)]


def _runner(module, x, y, guard, donate):
  tx = fj.train.skip_nonfinite(optax.adam(1e-3)) if guard else optax.adam(1e-3)
  params = module.init(jax.random.key(0), x[:1])["params"]
  box = [params, tx.init(params)]

  def step(p, o, x, y):
    loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(
        module.apply({"params": q}, x), y).mean()
    l, g = jax.value_and_grad(loss)(p)
    u, o = tx.update(g, o, p)
    new = optax.apply_updates(p, u)
    if guard:
      ok = o.ok & jnp.isfinite(l)
      new = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, p)
    return new, o, l

  jitted = jax.jit(step, donate_argnums=(0, 1) if donate else ())

  def run():
    box[0], box[1], _ = jitted(box[0], box[1], x, y)
    jax.block_until_ready(box)

  run()
  return run


def _fj_runner(module, x, y, donate):
  tx = optax.adam(1e-3)
  ens = fj.ensemble.from_linen(module, 1)
  pure = fj.train.make_step(ens, tx, jit=False)
  jitted = jax.jit(pure, donate_argnums=(0,) if donate else ())
  box = [fj.train.init(ens, tx, jax.random.key(0), x[:1])]
  batch = {"x": x, "y": y}

  def run():
    box[0], _ = jitted(box[0], batch)
    jax.block_until_ready(box)

  run()
  return run


def bench(model, cycles, target_s):
  shape, make = S.MODELS[model]
  module = make()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(S.BATCH, *shape)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, S.BATCH), jnp.int32)
  variants = {name: _runner(module, x, y, g, d) for name, g, d in VARIANTS}
  variants.update({name: _fj_runner(module, x, y, d) for name, d in FJ_VARIANTS})
  times = C.interleave(variants, cycles, target_s=target_s)
  row = {"model": model}
  for name in variants:
    row[f"{name}_ms"] = 1e3 * C.med(times[name])
    row[f"plain_vs_{name}"] = C.ratio(times["plain"], times[name])
  return row


NAMES = [n for n, _, _ in VARIANTS] + [n for n, _ in FJ_VARIANTS]


COLUMNS = [("model", "model", None)] + [
    (f"{name} ms", f"{name}_ms", "{:.2f}") for name in NAMES] + [
    (f"{name} vs plain", lambda r, n=name: r[f"plain_vs_{n}"]["median"], "{:.3f}x")
    for name in NAMES[1:]]


def render(result):
  return ("One jitted single-member step, batch 128, Adam; ratios are the plain step's time "
          "over the variant's (median of per-cycle ratios; >1 is faster); `fj`: fusionjax's "
          "one-member program (guarded), jitted undonated or donated.\n\n" + C.table(result["rows"], COLUMNS))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", nargs="+", default=["cnn", "mnist_mlp", "digits_mlp"],
                 choices=list(S.MODELS))
  p.add_argument("--cycles", type=int, default=15)
  p.add_argument("--target-s", type=float, default=0.15)
  p.add_argument("--out", default="donation")
  args = p.parse_args(argv)
  mach = C.machine()
  rows = [bench(m, args.cycles, args.target_s) for m in args.models]
  result = {"rows": rows, "machine": mach, "cycles": args.cycles}
  print(render(result))
  C.write(args.out, result)


if __name__ == "__main__":
  main()
