"""make_trainer: one jitted step for all members equals M independent single-member steps."""
import ast
import pathlib

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fusionjax as fj
from fusionjax import errors, models
from fusionjax.fusion import Fusion
from fj_train_modules import BNDrop

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(16, 8, 8, 1)), jnp.float32)
Y = jnp.asarray(RNG.integers(0, 10, 16), jnp.int32)


def _counts(opt_state):
  """Adam's ``count`` leaves of an optimizer state."""
  return [l for p, l in jax.tree_util.tree_leaves_with_path(opt_state)
          if "count" in jax.tree_util.keystr(p)]


def _loop_reference(module, params_list, tx, batches):
  """M independent plain-optax training runs, one Python loop each."""
  out = []
  for p in params_list:
    opt = tx.init(p)

    @jax.jit
    def one(p, opt, x, y):
      loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(
          module.apply({"params": q}, x), y).mean()
      g = jax.grad(loss)(p)
      u, opt = tx.update(g, opt, p)
      return optax.apply_updates(p, u), opt

    for x, y in batches:
      p, opt = one(p, opt, x, y)
    out.append((p, opt))
  return out


TXS = {"adam": lambda: optax.adam(1e-2),
       "clip_adam": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)),
       "sgd_schedule": lambda: optax.sgd(optax.cosine_decay_schedule(0.1, 10), momentum=0.9)}


@pytest.mark.slow
@pytest.mark.parametrize("tx_name,layout,chunk", [
    ("adam", "vmap", "auto"), ("adam", "scan", 3), ("clip_adam", "scan", 1),
    ("clip_adam", "loop", "auto"), ("sgd_schedule", "vmap", "auto"),
    ("sgd_schedule", "scan", 3)])
def test_stacked_step_equals_loop_of_single_steps(tx_name, layout, chunk):
  make_tx = TXS[tx_name]
  m, module = 4, models.MLP(10, (32,))
  ens = fj.ensemble.from_linen(module, m)
  tx = make_tx()
  trainer = fj.train.make_trainer(ens, tx, layout=layout, chunk=chunk, platform="cpu")
  assert trainer.layout == layout
  state = trainer.init(jax.random.key(0), X[:1])
  # Member 0's gradient is much larger than the others' (scaled weights), so a
  # global-norm clip over all members would couple them: it must not.
  params = jax.tree.map(lambda a: a.at[0].multiply(30.0), state.params["members"])
  state = state._replace(params={"members": params, "fusion": ()},
                         opt_state=ens.member_map(tx.init, params))
  singles = [jax.tree.map(lambda a, i=i: a[i], params) for i in range(m)]
  batches = [(X[i::2], Y[i::2]) for i in range(2)] * 3
  for x, y in batches:
    state, logs = trainer.step(state, {"x": x, "y": y})
  expected = _loop_reference(module, singles, tx, batches)
  for i in range(m):
    member = lambda t, i=i: jax.tree.map(lambda a: a[i], t)
    chex.assert_trees_all_close(member(state.params["members"]), expected[i][0],
                                rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(member(state.opt_state), expected[i][1], rtol=1e-5, atol=1e-6)
  assert int(state.step) == len(batches)
  chex.assert_shape(logs["member_loss"], (m,))


def _cnn_gru():
  ens = fj.ensemble.groups(cnn=fj.ensemble.from_linen(models.CNN(10, (4, 8), 16), 3),
                           gru=fj.ensemble.from_linen(models.RowGRU(10, 8), 2))
  return ens, {"cnn": "vmap", "gru": "scan"}, (3, 2)


def _mlps():
  ens = fj.ensemble.groups(wide=fj.ensemble.from_linen(models.MLP(10, (16,)), 3),
                           deep=fj.ensemble.from_linen(models.MLP(10, (8, 8)), 2))
  return ens, {"wide": "scan", "deep": "scan"}, (3, 2)


@pytest.mark.slow
@pytest.mark.parametrize("make", [_cnn_gru, _mlps], ids=["cnn_gru", "mlps"])
def test_groups_train_in_one_jitted_step(make):
  x = jnp.asarray(RNG.normal(size=(4, 12, 12, 1)), jnp.float32)
  y = jnp.asarray([0, 1, 2, 3], jnp.int32)
  ens, want_layout, sizes = make()
  tx = optax.adam(1e-2)
  trainer = fj.train.make_trainer(ens, tx, x_example=x, platform="cpu", jit=False)
  assert trainer.layout == want_layout
  state = trainer.init(jax.random.key(0), x[:1])
  traces = {"n": 0}

  def counted(s, b):
    traces["n"] += 1
    return trainer.step(s, b)

  step = jax.jit(counted)
  before = state.params
  for _ in range(3):
    state, logs = step(state, {"x": x, "y": y})
  assert traces["n"] == 1, "all groups train in ONE jitted step, traced once"
  chex.assert_shape(logs["member_loss"], (sum(sizes),))
  for g in ens.groups:
    for a, b in zip(jax.tree_util.tree_leaves(before["members"][g]),
                    jax.tree_util.tree_leaves(state.params["members"][g])):
      assert not np.allclose(a, b)
  # Per-member optimizer state per group: Adam's count is [M_g].
  assert set(state.opt_state) == set(ens.groups)
  assert sorted(c.shape for c in _counts(state.opt_state)) == sorted((s,) for s in sizes)
  for g, s in zip(ens.groups, sizes):
    np.testing.assert_array_equal(_counts(state.opt_state[g])[0], [3] * s)


@pytest.mark.slow
def test_groups_with_a_layout_per_group_equal_all_vmap():
  x = jnp.asarray(RNG.normal(size=(4, 12, 12, 1)), jnp.float32)
  batches = [{"x": x, "y": jnp.asarray([0, 1, 2, 3], jnp.int32)},
             {"x": x[::-1], "y": jnp.asarray([3, 2, 1, 0], jnp.int32)}] * 2
  ens, _, _ = _cnn_gru()
  tx = optax.adam(1e-2)
  out = []
  for layout in ({"cnn": "vmap", "gru": "scan"}, "vmap"):
    trainer = fj.train.make_trainer(ens, tx, layout=layout, chunk=1, platform="cpu")
    assert trainer.layout == {"cnn": "vmap", "gru": layout["gru"] if isinstance(
        layout, dict) else "vmap"}
    state = trainer.init(jax.random.key(0), x[:1])
    for b in batches:
      state, logs = trainer.step(state, b)
    out.append((state, logs))
  (got, got_logs), (want, want_logs) = out
  chex.assert_trees_all_close(got.params, want.params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(got.opt_state, want.opt_state, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(got.state, want.state, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(got_logs, want_logs, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(jax.random.key_data(got.key), jax.random.key_data(want.key))


@pytest.mark.slow
@pytest.mark.parametrize("layout,chunk", [("vmap", "auto"), ("scan", 2), ("loop", "auto")])
def test_a_frozen_member_does_not_move(layout, chunk):
  """``state.frozen[m]``: member m's params, BatchNorm statistics and optimizer
  state stay bit for bit; the others train; the logs still report its loss."""
  ens = fj.ensemble.from_linen(BNDrop(), 3)
  tx = optax.adam(1e-2)
  trainer = fj.train.make_trainer(ens, tx, layout=layout, chunk=chunk, platform="cpu",
                                  donate=False)
  state = trainer.init(jax.random.key(0), X[:1])
  frozen = state._replace(frozen=jnp.array([False, True, False]))
  batch = {"x": X, "y": Y}
  _, free_logs = trainer.step(state, batch)
  new, logs = trainer.step(frozen, batch)
  # The first step's logs are those of the run without a frozen member.
  chex.assert_trees_all_close(logs, free_logs, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(logs["finite"], [True, True, True])
  for _ in range(2):
    new, logs = trainer.step(new, batch)
  assert np.all(np.isfinite(logs["member_loss"])) and logs["member_loss"].shape == (3,)
  np.testing.assert_array_equal(new.frozen, [False, True, False])
  member = lambda t, i: jax.tree.map(lambda a: np.asarray(a[i]), t)
  trees = lambda s: (s.params["members"], s.state, s.opt_state)
  chex.assert_trees_all_equal(member(trees(new), 1), member(trees(frozen), 1))
  for i in (0, 2):
    for a, b in zip(jax.tree_util.tree_leaves(member(trees(new), i)),
                    jax.tree_util.tree_leaves(member(trees(frozen), i))):
      assert not np.array_equal(a, b)


@pytest.mark.parametrize("layout,chunk", [("vmap", "auto"), ("scan", 2)])
def test_no_retrace_on_second_call(layout, chunk):
  ens = fj.ensemble.from_linen(models.MLP(10, (8,)), 4)
  tx = optax.adam(1e-3)
  trainer = fj.train.make_trainer(ens, tx, layout=layout, chunk=chunk, platform="cpu",
                                  jit=False)
  state = trainer.init(jax.random.key(0), X[:1])

  @jax.jit
  @chex.assert_max_traces(n=1)
  def jstep(s, b):
    return trainer.step(s, b)

  for _ in range(3):
    state, _ = jstep(state, {"x": X, "y": Y})
  # Independent of chex's counter: jit compiled exactly one executable.
  assert jstep._cache_size() == 1  # pylint: disable=protected-access
  assert int(state.step) == 3


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp_gating", "cnn_gru_groups", "resnet_stacking"])
def test_init_at_o1_has_the_bits_of_the_default_compile(kind):
  """``train.init`` compiles at LLVM -O1 on CPU (half the compile time); its
  state must equal, bit for bit, the same init compiled with XLA's defaults."""
  x = jnp.asarray(RNG.normal(size=(2, 8, 8, 3)), jnp.float32)
  fusion = None
  if kind == "mlp_gating":
    ens, fusion = fj.ensemble.from_linen(models.MLP(10, (32, 16)), 3), fj.fusion.gating(3, 8)
  elif kind == "cnn_gru_groups":
    x = jnp.asarray(RNG.normal(size=(2, 28, 28, 1)), jnp.float32)
    ens = fj.ensemble.groups(cnn=fj.ensemble.from_linen(models.CNN(10, (4, 8), 16), 3),
                             gru=fj.ensemble.from_linen(models.RowGRU(10, 8), 2))
  else:
    ens = fj.ensemble.from_linen(models.ResNet(10, (1,), 4), 2)
    fusion = fj.fusion.stacking(2, 10, hidden=(8,))
  tx = optax.adam(1e-3)
  got = fj.train.init(ens, tx, jax.random.key(3), x, fusion=fusion)
  # Nested in an outer jit, the inner jit compiles with the outer's (default) options.
  want = jax.jit(lambda k, x: fj.train.init(ens, tx, k, x, fusion=fusion))(jax.random.key(3), x)
  chex.assert_trees_all_equal(got, want)  # exact, no tolerance


def _learned_weights():
  def init(key, outputs, *, x=None):
    del key, x
    return {"w": jnp.zeros(outputs.shape[0])}

  def apply(params, outputs, *, x=None, key=None):
    del x, key
    logw = jax.nn.log_softmax(params["w"])
    return jax.nn.logsumexp(logw[:, None, None] + jax.nn.log_softmax(outputs), axis=0)

  return Fusion(init, apply)


@pytest.mark.parametrize("regime", ["independent", "frozen", "joint", "hybrid"])
def test_regimes_choose_what_moves(regime):
  ens = fj.ensemble.from_linen(models.MLP(10, (8,)), 3)
  fusion = _learned_weights()
  tx = optax.sgd(0.5)
  trainer = fj.train.make_trainer(ens, tx, fusion=fusion, regime=regime, lam=0.5,
                                  donate=False, platform="cpu")
  assert trainer.layout == ("scan" if regime == "independent" else "vmap")
  state = trainer.init(jax.random.key(0), X[:1])
  assert (state.fusion_opt_state == ()) == (regime == "independent")
  assert (state.opt_state == ()) == (regime == "frozen")
  new, logs = trainer.step(state, {"x": X, "y": Y})
  members_moved = not np.allclose(new.params["members"]["Dense_0"]["kernel"],
                                  state.params["members"]["Dense_0"]["kernel"])
  fusion_moved = not np.allclose(new.params["fusion"]["w"], state.params["fusion"]["w"])
  assert members_moved == (regime != "frozen")
  assert fusion_moved == (regime != "independent")
  if regime == "hybrid":
    np.testing.assert_allclose(logs["loss"], logs["member_loss"].sum() + 0.5 * logs["fused_loss"],
                               rtol=1e-6)
  elif regime in ("frozen", "joint"):
    np.testing.assert_allclose(logs["loss"], logs["fused_loss"], rtol=1e-6)
  else:
    np.testing.assert_allclose(logs["loss"], logs["member_loss"].sum(), rtol=1e-6)
  assert (new.fusion_opt_state == ()) == (regime == "independent")
  assert (new.opt_state == ()) == (regime == "frozen")
  chex.assert_shape(logs["finite"], (3,))


@pytest.mark.parametrize("layout", ["vmap", "loop"])
def test_nonfinite_member_is_skipped_and_others_train(layout):
  ens = fj.ensemble.from_linen(models.MLP(10, (8,)), 3)
  tx = optax.adam(1e-2)
  trainer = fj.train.make_trainer(ens, tx, layout=layout, donate=False, platform="cpu")
  state = trainer.init(jax.random.key(0), X[:1])
  bad = jax.tree.map(lambda a: a.at[1].set(jnp.nan) if a.ndim == 2 else a,
                     state.params["members"])
  state = state._replace(params={"members": bad, "fusion": ()})
  before = state.params["members"]["Dense_1"]["kernel"]
  new, logs = trainer.step(state, {"x": X, "y": Y})
  np.testing.assert_array_equal(logs["finite"], [True, False, True])
  after = new.params["members"]["Dense_1"]["kernel"]
  np.testing.assert_array_equal(np.isnan(after[1]), np.isnan(before[1]))
  assert not np.allclose(after[0], before[0]) and not np.allclose(after[2], before[2])
  np.testing.assert_array_equal(_counts(new.opt_state)[0], [1, 0, 1])


@pytest.mark.parametrize("layout", ["scan", "loop"])
def test_bagging_step_per_member_batches(layout):
  m = 3
  ens = fj.ensemble.from_linen(models.MLP(10, (8,)), m)
  tx = optax.adam(1e-2)
  trainer = fj.train.make_trainer(ens, tx, per_member=True, layout=layout, platform="cpu")
  state = trainer.init(jax.random.key(0), X[:1])
  idx = fj.data.bootstrap(jax.random.key(1), 16, m)
  state, logs = trainer.step(state, {"x": X[idx], "y": Y[idx]})
  chex.assert_shape(logs["member_loss"], (m,))
  with pytest.raises(errors.BatchShapeError, match=r"\[M=3, B\]"):
    trainer.step(state, {"x": X[idx], "y": Y[idx][:2]})  # labels of 2 members, not 3
  with pytest.raises(errors.LabelError, match=r"\[M, B\]"):
    trainer.step(state, {"x": X[idx], "y": Y})  # shared labels [B] for per-member x


@pytest.mark.parametrize("layout", ["scan"])
def test_batch_mismatch_error(layout):
  ens = fj.ensemble.from_linen(models.MLP(10, (8,)), 2)
  tx = optax.adam(1e-3)
  trainer = fj.train.make_trainer(ens, tx, layout=layout, platform="cpu")
  state = trainer.init(jax.random.key(0), X[:1])
  with pytest.raises(errors.BatchShapeError, match=r"y shape \(15,\)"):
    trainer.step(state, {"x": X, "y": Y[:15]})


def test_state_of_another_ensemble_is_rejected():
  tx = optax.adam(1e-3)
  small = fj.ensemble.from_linen(models.MLP(10, (8,)), 2)
  big = fj.ensemble.from_linen(models.MLP(10, (8,)), 3)
  state = fj.train.make_trainer(small, tx).init(jax.random.key(0), X[:1])
  with pytest.raises(errors.MemberAxisError, match=r"\[M=3, \.\.\.\]"):
    fj.train.make_trainer(big, tx, layout="vmap").step(state, {"x": X, "y": Y})
  with pytest.raises(TypeError, match="TrainState"):
    fj.train.make_trainer(small, tx).step(tuple(state), {"x": X, "y": Y})


def test_thin_wrappers_are_the_trainer():
  """``init``/``make_step``/``make_predict`` are ``make_trainer``'s halves;
  ``member_chunk`` None is 'vmap', an int k is 'scan' with chunks of k."""
  ens = fj.ensemble.from_linen(models.MLP(10, (8,)), 3)
  tx = optax.adam(1e-2)
  state = fj.train.init(ens, tx, jax.random.key(0), X[:1])
  want = fj.train.make_trainer(ens, tx).init(jax.random.key(0), X[:1])
  chex.assert_trees_all_equal(state.params, want.params)
  chex.assert_trees_all_equal(state.opt_state, want.opt_state)
  outs = []
  for chunk in (None, 1, "auto"):
    s, logs = fj.train.make_step(ens, tx, member_chunk=chunk, donate=False)(state, {"x": X,
                                                                                   "y": Y})
    outs.append((s.params, logs))
  chex.assert_trees_all_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(outs[0], outs[2], rtol=1e-5, atol=1e-6)
  got = fj.train.make_predict(ens, member_chunk=1)(state, X)[0]
  chex.assert_trees_all_close(got, fj.train.make_predict(ens, member_chunk=None)(state, X)[0],
                              rtol=1e-5, atol=1e-6)


def _imports(path: pathlib.Path, package: str):
  """Modules of ``package`` that ``path`` imports anywhere (module or function level)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative: from . import x, from ._x import y
        base = package if node.level == 1 else package.rsplit(".", node.level - 1)[0]
        mod = f"{base}.{node.module}" if node.module else base
      else:
        mod = node.module or ""
      # ``from fusionjax.train import _x`` imports the module _x; ``from
      # fusionjax.train import name`` the package's __init__.
      names = [f"{mod}.{a.name}" if mod == package and a.name.startswith("_") else mod
               for a in node.names]
    else:
      continue
    for name in names:
      if name == package:
        found.add("__init__")
      elif name.startswith(package + "."):
        found.add(name[len(package) + 1:].split(".")[0])
  return found


def test_no_import_cycle_in_fusionjax_train():
  """The graph of intra-package imports of ``fusionjax.train`` (function-level
  ones included) is acyclic; importing the package's own ``__init__`` from one
  of its modules counts as an edge to every module ``__init__`` imports."""
  package = "fusionjax.train"
  root = pathlib.Path(fj.__file__).parent / "train"
  modules = {p.stem: p for p in root.glob("*.py")}
  assert {"_trainer", "_layouts", "_step", "_guard", "__init__"} <= set(modules)
  graph = {name: _imports(path, package) & set(modules) - {name}
           for name, path in modules.items()}
  assert "_layouts" in graph["_trainer"] and "_trainer" in graph["_step"]
  state = {}  # 1: on the DFS stack, 2: done

  def visit(node, trail):
    state[node] = 1
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        raise AssertionError("import cycle: " + " -> ".join(trail + [node, nxt]))
      if nxt not in state:
        visit(nxt, trail + [node])
    state[node] = 2

  for name in sorted(graph):
    if name not in state:
      visit(name, [])
