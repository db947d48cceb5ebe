"""Per-seed effects behind the learning tests' margins (tests/integrate/): run it on a new CPU kind.

    python benchmarks/learning_seed_spread.py [--seeds 8]

XLA:CPU rounds differently on CPUs with and without AVX-512, so one seed's gain
does not travel; the tests assert gains averaged over seeds, and their comments
quote this script's per-seed numbers. For seeds 0..N-1, with the tests' set-ups
(digits, MLP(64)):

* FGE (test_snapshot.py): FGE test NLL, its best snapshot's, and the gain;
* snapshot ensemble: ensemble NLL over its last and over its best snapshot's;
* uniform soup of the snapshots (test_soups.py): soup NLL over the best snapshot's;
* SWA: SWA NLL over the last iterate's.
"""
import argparse

import jax
import numpy as np
import optax
from sklearn.datasets import load_digits

import fusionjax as fj
from fusionjax import integrate

MODULE = fj.models.MLP(10, (64,))


def _splits():
  d = load_digits()
  x = (d.images / 16.0).astype(np.float32)[..., None]
  y = d.target.astype(np.int32)
  perm = np.random.default_rng(0).permutation(len(x))
  x, y = x[perm], y[perm]
  return (x[:1000], y[:1000]), (x[1397:], y[1397:])


def _shifted(x):
  h, w = x.shape[1:3]
  p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return np.concatenate([p[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                         for dy in (-1, 0, 1) for dx in (-1, 0, 1)])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--seeds", type=int, default=8)
  args = p.parse_args(argv)
  (x, y), (xt, yt) = _splits()
  apply = jax.jit(MODULE.apply)
  nll = lambda prm: float(fj.metrics.nll(apply({"params": prm}, xt), yt))
  ens1 = fj.ensemble.from_linen(MODULE, 1)
  start = None
  print("| seed | FGE | best snapshot | FGE gain | snap ens/last | snap ens/best | "
        "uniform soup/best | SWA/last |")
  print("|---:|---:|---:|---:|---:|---:|---:|---:|")
  for s in range(args.seeds):
    snap = integrate.snapshot_ensemble(MODULE, x[:500], y[:500], key=jax.random.key(s),
                                       lr0=0.4, steps_per_cycle=80, cycles=4, batch_size=32)
    out, _ = snap.ensemble.apply(snap.variables, xt)
    ens = float(fj.metrics.nll(fj.fusion.mean().apply((), out), yt))
    members = np.asarray(fj.metrics.nll(out, yt))
    params = snap.variables["params"]
    soup = nll(integrate.uniform_soup(params))
    best = min(nll(jax.tree.map(lambda a, i=i: a[i], params)) for i in range(4))
    swa = integrate.fit_swa(MODULE, optax.sgd(1.0), x[:500], y[:500], key=jax.random.key(s),
                            num_steps=600, start=300, every=10, batch_size=32)
    swa_nll = float(fj.metrics.nll(ens1.apply(swa.variables, xt)[0][0], yt))
    last_nll = float(fj.metrics.nll(ens1.apply(swa.last, xt)[0][0], yt))
    if start is None:  # FGE starts from seed 0's last snapshot, as the test does
      start = jax.tree.map(lambda a: a[-1:], snap.variables)
    fge = integrate.fge_ensemble(MODULE, _shifted(x[:500]), np.tile(y[:500], 9),
                                 key=jax.random.key(s), lr1=0.2, lr2=0.002, cycle_steps=100,
                                 cycles=4, warmup_steps=2000, init_variables=start,
                                 batch_size=32, seed=s)
    fout, _ = fge.ensemble.apply(fge.variables, xt)
    f_ens = float(fj.metrics.nll(fj.fusion.mean().apply((), fout), yt))
    f_best = float(np.asarray(fj.metrics.nll(fout, yt)).min())
    print(f"| {s} | {f_ens:.4f} | {f_best:.4f} | {1 - f_ens / f_best:.1%} | "
          f"{ens / members[-1]:.3f} | {ens / members.min():.3f} | {soup / best:.3f} | "
          f"{swa_nll / last_nll:.3f} |", flush=True)


if __name__ == "__main__":
  main()
