"""Worker for the multi-host test: one of N processes training together.

Usage: python _multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npz
With PROCESS_ID == -1 it trains alone (the single-process reference).
"""
import sys

import jax

pid, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if pid >= 0:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc,
                             process_id=pid, initialization_timeout=120)

import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

import fusionjax as fj  # noqa: E402

rng = np.random.default_rng(0)
x = rng.normal(size=(32, 8, 8, 1)).astype(np.float32)
y = rng.integers(0, 10, 32).astype(np.int32)
ens = fj.ensemble.from_linen(fj.models.MLP(10, (16,)), 4)
tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
state = fj.train.init(ens, tx, jax.random.key(0), x[:1])
if pid >= 0:
  mesh = fj.train.make_mesh(member=2, data=len(jax.devices()) // 2)
  state = fj.train.shard_state(state, mesh, ens)
  step = fj.train.make_step(ens, tx, mesh=mesh)
else:
  mesh, step = None, fj.train.make_step(ens, tx)
for i in range(4):
  batch = {"x": x[i % 2::2], "y": y[i % 2::2]}
  if mesh is not None:
    batch = fj.train.shard_batch(batch, mesh)
  state, logs = step(state, batch)
params = state.params["members"]
if pid >= 0:
  params = multihost_utils.process_allgather(params, tiled=True)
if pid <= 0:
  flat = {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(params)}
  np.savez(out, **flat)
print(f"process {pid}: devices={len(jax.devices())} local={len(jax.local_devices())} ok")
