"""M=1024 members on 8 simulated devices: what crosses devices, and equality with one device.

Run by tests/train/test_scale.py in a fresh process with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (the flag must be set before
JAX starts). Prints one line per program checked and ``ok`` at the end.

Usage: python tests/train/_scale_sharded.py [M]
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

import fusionjax as fj
from fusionjax.train._sharding import collectives, jit_predict_sharded

M = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
B, C, D = 32, 10, 16
assert len(jax.devices()) == 8, jax.devices()
mesh = fj.train.make_mesh(member=8, data=1)
BC = B * C


def sizes(cols):
  return [(op, [int(np.prod(d)) for _, d in shapes]) for op, shapes in cols]


def only_bc_reductions(cols, allow_member_logs=False):
  """Every collective is an all-reduce of at most [B, C] elements (plus, for the
  step's logs, all-gathers of [M] per-member scalars)."""
  for op, shapes in cols:
    for dtype, dims in shapes:
      n = int(np.prod(dims))
      if op == "all-reduce" and n <= BC:
        continue
      if allow_member_logs and op == "all-gather" and dims == (M,):
        continue
      raise AssertionError(f"{op} of {dtype}{list(dims)} crosses devices: {cols}")


def close(a, b, what):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6, err_msg=what)


rng = np.random.default_rng(0)
z = jnp.asarray(rng.normal(size=(M, B, C)).astype(np.float32) * 3)
p = jax.nn.softmax(z, axis=-1)
w = rng.uniform(0.1, 1.0, M)
w_int = rng.integers(1, 4, M).astype(float)
on_members = NamedSharding(mesh, P("member"))
replicated = NamedSharding(mesh, P())

# --------------------------------------------------------------- the fusions
FUSIONS = {
    "mean": (fj.fusion.mean(), z),
    "weighted": (fj.fusion.weighted(M, weights=w), z),
    "weighted_learned": (fj.fusion.weighted(M), z),
    "soft_vote": (fj.fusion.soft_vote(w), z),
    "soft_vote_probs": (fj.fusion.soft_vote(w, probs=True), p),
    "hard_vote": (fj.fusion.hard_vote(), z),
    "hard_vote_weighted": (fj.fusion.hard_vote(w_int), z),
    "cascade": (fj.fusion.cascade(0.95), z),
}
for name, (f, outs) in FUSIONS.items():
  params = f.init(jax.random.key(1), outs)
  one = jax.jit(f.apply)(params, outs)
  sharded = jax.jit(f.apply, out_shardings=replicated)
  ps, zs = jax.device_put(params, replicated), jax.device_put(outs, on_members)
  cols = collectives(sharded.lower(ps, zs).compile().as_text())
  only_bc_reductions(cols)
  got = sharded(ps, zs)
  if name.startswith("hard_vote"):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(one), err_msg=name)
  else:
    close(got, one, name)
  print(f"fusion {name}: {sizes(cols)}")

# The soft cascade's survival prefix (a cumsum over stages) is gathered: [M, B]
# confidences, never the [M, B, C] outputs (docs/scale.md).
f = fj.fusion.cascade(0.95, soft=True)
params = f.init(None, z)
sharded = jax.jit(f.apply, out_shardings=replicated)
cols = collectives(sharded.lower(params, jax.device_put(z, on_members)).compile().as_text())
assert all(int(np.prod(d)) <= M * B for _, shapes in cols for _, d in shapes), cols
close(sharded(params, jax.device_put(z, on_members)), jax.jit(f.apply)(params, z), "soft")
print(f"fusion soft_cascade: {sizes(cols)}")

# --------------------------------------------------------------- the step
x = rng.normal(size=(B, D)).astype(np.float32)
y = rng.integers(0, C, B).astype(np.int32)
ens = fj.ensemble.from_linen(fj.models.MLP(C, (32,)), M)
tx = optax.adam(1e-2)


def train(mesh_or_none, regime, fusion):
  tr = fj.train.make_trainer(ens, tx, fusion=fusion, regime=regime, mesh=mesh_or_none,
                             layout="vmap")
  state = tr.init(jax.random.key(0), x[:1])
  batch = {"x": x, "y": y}
  cols = None
  if mesh_or_none is not None:
    state = fj.train.shard_state(state, mesh_or_none, ens)
    batch = fj.train.shard_batch(batch, mesh_or_none)
    cols = collectives(tr.step.lower(state, batch).compile().as_text())
  for _ in range(2):
    state, logs = tr.step(state, batch)
  return state, logs, cols


for regime, fusion in (("independent", None), ("hybrid", fj.fusion.mean())):
  ref, ref_logs, _ = train(None, regime, fusion)
  got, logs, cols = train(mesh, regime, fusion)
  only_bc_reductions(cols, allow_member_logs=True)
  leaf = got.params["members"]["Dense_0"]["kernel"]
  assert leaf.sharding.spec == P("member") and len(leaf.sharding.device_set) == 8
  for a, b in zip(jax.tree_util.tree_leaves(ref.params), jax.tree_util.tree_leaves(got.params)):
    close(b, a, f"{regime} params")
  close(logs["loss"], ref_logs["loss"], f"{regime} loss")
  print(f"step {regime}: {sizes(cols)}")

# --------------------------------------------------------------- prediction
fusion = fj.fusion.mean()
state = fj.train.make_trainer(ens, tx, fusion=fusion, regime="hybrid").init(
    jax.random.key(0), x[:1])
pred = fj.train.make_predictor(ens, fusion, layout="vmap", jit=False).predict
out_one, fused_one = jax.jit(pred)(state, x)
sharded = jit_predict_sharded(pred, mesh, ens)
state_s = fj.train.shard_state(state, mesh, ens)
x_s = fj.train.shard_batch(x, mesh)
cols = collectives(sharded.lower(state_s, x_s).compile().as_text())
only_bc_reductions(cols)
out, fused = sharded(state_s, x_s)
assert out.sharding.spec == P("member", "data"), out.sharding
close(out, out_one, "member outputs")
close(fused, fused_one, "fused")
print(f"predict mean: {sizes(cols)}")
print("ok")
