"""Worker of the two-process scale test: M=64 members sharded across processes.

fit trains with a mesh whose 'member' axis spans both processes (each holds 32
members), evaluates after every epoch, checkpoints, is stopped after 3 steps
(mid-epoch) and resumed from its checkpoint to the end of epoch 2. The
reference runs the same in one process on one device.

Usage: python _scale_fit_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR
With PROCESS_ID == -1 it runs alone, unsharded (the reference). Process 0 (or
the reference) writes WORKDIR/params.npz and prints the history.
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
from jax.experimental import multihost_utils  # noqa: E402

import fusionjax as fj  # noqa: E402

M = 64
rng = np.random.default_rng(0)
x = rng.normal(size=(96, 8, 8, 1)).astype(np.float32)
y = (x.reshape(96, -1)[:, :10].argmax(1)).astype(np.int32)
ens = fj.ensemble.from_linen(fj.models.MLP(10, (16,)), M)
mesh = None
if pid >= 0:
  mesh = fj.train.make_mesh(member=len(jax.devices()), data=1)  # members over both processes


def run(**kw):
  return fj.train.fit(ens, optax.adam(1e-2), (x[:64], y[:64]), key=jax.random.key(0),
                      epochs=2, batch_size=16, eval_sets={"val": (x[64:], y[64:])},
                      mesh=mesh, layout="vmap", log_path=f"{workdir}/log.jsonl",
                      ckpt_dir=f"{workdir}/ckpt", progress=False, **kw)


first = run(max_steps=3)  # stopped mid-epoch 1, checkpointed
assert int(jax.device_get(first.state.step)) == 3 if pid < 0 else True
res = run()  # resumed from the step-3 checkpoint
params = res.state.params["members"]
if pid >= 0:
  leaf = params["Dense_0"]["kernel"]
  assert not leaf.is_fully_addressable  # members really live on both processes
  assert len(leaf.addressable_shards) == len(jax.local_devices())
  params = multihost_utils.process_allgather(params, tiled=True)
if pid <= 0:
  flat = {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(params)}
  np.savez(f"{workdir}/params.npz", **flat)
steps = [h["step"] for h in res.history]
print(f"process {pid}: devices={len(jax.devices())} local={len(jax.local_devices())} "
      f"steps={steps} history=" + json.dumps(res.history))
