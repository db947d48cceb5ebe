"""A small real training run for the interruption tests.

Usage: python _train_worker.py CKPT_DIR OUT.npz [EPOCHS]
Trains 4 MLPs with dropout on digits, checkpointing every step, and writes the
final params to OUT.npz. Resumes from CKPT_DIR when it holds a checkpoint.
"""
import sys

import jax
import numpy as np
import optax

import fusionjax as fj

ckpt_dir, out = sys.argv[1], sys.argv[2]
epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 2
train, val, _ = fj.data.load("digits")
ens = fj.ensemble.from_linen(fj.models.MLP(10, (32,), dropout=0.1), 4)
res = fj.train.fit(ens, optax.adam(1e-2), train, key=jax.random.key(0), epochs=epochs,
                   batch_size=128, ckpt_dir=ckpt_dir, ckpt_every=1, progress=False,
                   sync_every=1, log_path=ckpt_dir + "/log.jsonl")
print("status", res.status, "step", int(res.state.step), flush=True)
if res.status == "done":
  state = res.state._replace(key=jax.random.key_data(res.state.key))
  flat = {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(jax.device_get(state))}
  np.savez(out, **flat)
