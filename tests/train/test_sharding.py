"""The same step on 8 simulated devices, and on 2 processes, equals 1 device."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

import fusionjax as fj
from fusionjax import errors, models
from fj_testing import ROOT, run_python

EIGHT_DEVICES = r'''
import jax, numpy as np, optax
import fusionjax as fj
from fusionjax import models
assert len(jax.devices()) == 8
rng = np.random.default_rng(0)
x = rng.normal(size=(32, 8, 8, 1)).astype(np.float32)
y = rng.integers(0, 10, 32).astype(np.int32)
tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))

def run(ens, mesh, per_member=False):
  state = fj.train.init(ens, tx, jax.random.key(0), x[:1])
  if mesh is not None:
    state = fj.train.shard_state(state, mesh, ens)
  step = fj.train.make_step(ens, tx, mesh=mesh, per_member=per_member)
  idx = fj.data.bootstrap(jax.random.key(1), 32, ens.size)
  for i in range(3):
    sl = slice(i * 8, i * 8 + 16)
    batch = ({"x": x[idx[:, sl]], "y": y[idx[:, sl]]} if per_member
             else {"x": x[sl], "y": y[sl]})
    if mesh is not None:
      batch = fj.train.shard_batch(batch, mesh, per_member)
    state, _ = step(state, batch)
  return jax.device_get(state.params["members"]), state

worst = 0.0
ens = fj.ensemble.from_linen(models.MLP(10, (16,)), 8)
ref, _ = run(ens, None)
for shape in [(8, 1), (1, 8), (2, 4), (4, 2)]:
  mesh = fj.train.make_mesh(*shape)
  got, state = run(ens, mesh)
  leaf = state.params["members"]["Dense_0"]["kernel"]
  assert len(leaf.sharding.device_set) == 8
  assert leaf.sharding.spec == jax.sharding.PartitionSpec("member"), leaf.sharding
  for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    worst = max(worst, float(np.max(np.abs(a - b))))
ref_b, _ = run(ens, None, per_member=True)
got_b, _ = run(ens, fj.train.make_mesh(2, 4), per_member=True)
for a, b in zip(jax.tree_util.tree_leaves(ref_b), jax.tree_util.tree_leaves(got_b)):
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
grp = fj.ensemble.groups(a=fj.ensemble.from_linen(models.MLP(10, (16,)), 4),
                         b=fj.ensemble.from_linen(models.MLP(10, (8, 8)), 2))
ref_g, _ = run(grp, None)
got_g, _ = run(grp, fj.train.make_mesh(2, 4))
for a, b in zip(jax.tree_util.tree_leaves(ref_g), jax.tree_util.tree_leaves(got_g)):
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
print("max abs diff", worst)
'''


@pytest.mark.slow
def test_eight_devices_equal_one_device():
  out = run_python(EIGHT_DEVICES,
                   {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, timeout=400)
  assert "max abs diff" in out


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_with_jax_distributed_match_single_process(tmp_path):
  worker = str(ROOT / "tests" / "train" / "_multihost_worker.py")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  ref = tmp_path / "ref.npz"
  subprocess.run([sys.executable, worker, "-1", "1", "0", str(ref)], env=env, check=True,
                 timeout=240, capture_output=True)
  port, got = _free_port(), tmp_path / "got.npz"
  procs = [subprocess.Popen([sys.executable, worker, str(i), "2", str(port), str(got)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n".join(outs)
  assert "devices=4 local=2" in outs[0], outs[0]
  a, b = np.load(ref), np.load(got)
  assert sorted(a.files) == sorted(b.files)
  for k in a.files:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_mesh_errors_name_sizes_and_fix():
  ens = fj.ensemble.from_linen(models.MLP(10, (8,)), 3)
  state = fj.train.init(ens, optax.adam(1e-3), jax.random.key(0), np.zeros((1, 4), np.float32))
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1] * 1).reshape(1, 1), ("member", "data"))
  fj.train.state_shardings(state, mesh, ens)  # 1 divides everything
  with pytest.raises(errors.MeshError, match=r"\(2, 1\) needs 2 devices; there are 1"):
    fj.train.make_mesh(2, 1, devices=jax.devices()[:1])
  fake = type("FakeMesh", (), {"shape": {"member": 2, "data": 1}})()
  with pytest.raises(errors.MeshError, match=r"group\(s\) \{'mlp': 3\}.*in \[1, 3\]"):
    fj.train.state_shardings(state, fake, ens)
  with pytest.raises(errors.MeshError, match="batch size 5 is not divisible.*'data' axis \\(2"):
    fj.train.batch_shardings({"x": np.zeros((5, 4))}, type("M", (), {"shape": {"data": 2}})())


def test_the_sharded_step_can_be_traced_and_lowered():
  """Under a mesh the trainer's step (layout 'vmap') has .trace and .lower, as jax.jit's."""
  code = """
import jax, jax.numpy as jnp, optax, fusionjax as fj
ens = fj.ensemble.from_linen(fj.models.MLP(10, (8,)), 4)
mesh = fj.train.make_mesh(member=2, data=2)
trainer = fj.train.make_trainer(ens, optax.adam(1e-3), mesh=mesh)
assert trainer.layout == "vmap"
state = fj.train.shard_state(trainer.init(jax.random.key(0), jnp.ones((1, 8, 8, 1))), mesh, ens)
batch = fj.train.shard_batch({"x": jnp.ones((4, 8, 8, 1)), "y": jnp.zeros(4, jnp.int32)}, mesh)
text = trainer.step.trace(state, batch).lower(lowering_platforms=("cuda",)).as_text()
assert "mhlo.sharding" in text or "sdy.sharding" in text, text[:2000]
state, logs = trainer.step(state, batch)
print(logs["member_loss"].shape)
"""
  out = run_python(code, env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  assert "(4,)" in out


@pytest.mark.slow
def test_two_process_fit_evaluates_and_logs_once(tmp_path):
  """fit over 2 processes with eval sets: each process gets the whole-set metrics of the
  1-process run (they crashed with a bare AssertionError), and the log is process 0's alone."""
  worker = str(ROOT / "tests" / "train" / "_multihost_fit_worker.py")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  ref_dir, got_dir = tmp_path / "ref", tmp_path / "got"
  ref_dir.mkdir()
  got_dir.mkdir()
  subprocess.run([sys.executable, worker, "-1", "1", "0", str(ref_dir)], env=env, check=True,
                 timeout=240, capture_output=True)
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, worker, str(i), "2", str(port), str(got_dir)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n".join(outs)
  strip = lambda rows: [{k: v for k, v in r.items() if k not in ("time", "layout")} for r in rows]
  ref = [json.loads(l) for l in (ref_dir / "log.jsonl").read_text().splitlines()]
  got = [json.loads(l) for l in (got_dir / "log.jsonl").read_text().splitlines()]
  assert len(got) == len(ref) == 2, got  # one line per epoch: process 0 alone wrote it
  for a, b in zip(strip(ref), strip(got)):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(np.asarray(b[k], float), np.asarray(a[k], float), rtol=1e-4,
                                 atol=1e-5, err_msg=k)
  for out in outs:  # every process returned the same history
    hist = json.loads(out.split("history=", 1)[1].strip().splitlines()[0])
    assert strip(hist) == strip(got)
