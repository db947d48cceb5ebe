"""Worker for the multi-process fit test: fit with a mesh, eval sets, a log and checkpoints.

Usage: python _multihost_fit_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR
With PROCESS_ID == -1 it trains alone on one device (the reference).
"""
import json
import sys

import jax

pid, nproc, port, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if pid >= 0:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc,
                             process_id=pid, initialization_timeout=120)

import numpy as np  # noqa: E402
import optax  # noqa: E402

import fusionjax as fj  # noqa: E402

rng = np.random.default_rng(0)
x = rng.normal(size=(64, 8, 8, 1)).astype(np.float32)
y = (x.reshape(64, -1)[:, :10].argmax(1)).astype(np.int32)
ens = fj.ensemble.from_linen(fj.models.MLP(10, (16,)), 4)
mesh = None
if pid >= 0:
  mesh = fj.train.make_mesh(member=2, data=len(jax.devices()) // 2)
res = fj.train.fit(ens, optax.adam(1e-2), (x[:48], y[:48]), key=jax.random.key(0), epochs=2,
                   batch_size=16, eval_sets={"val": (x[48:], y[48:])}, mesh=mesh,
                   layout="vmap", log_path=f"{workdir}/log.jsonl",
                   ckpt_dir=f"{workdir}/ckpt", progress=False)
print(f"process {pid}: devices={len(jax.devices())} history=" + json.dumps(res.history))
