"""Every classification fusion through the same checks (the optax alias_test way)."""
import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from fusionjax import fusion as fu

M, B, C = 4, 6, 3
X_SHAPE = (B, 2, 3)

# (name, factory, kwargs): every classification fusion, and the compositions.
REGISTRY = [
    ("mean", fu.mean, {}),
    ("mean_logits", fu.mean_logits, {}),
    ("weighted_learned", fu.weighted, dict(num_members=M)),
    ("weighted_fixed", fu.weighted,
     dict(num_members=M, weights=[1.0, 2.0, 0.0, 3.0])),
    ("weighted_per_class", fu.weighted, dict(num_members=M, per_class=True)),
    ("weighted_per_class_fixed", fu.weighted,
     dict(num_members=M, per_class=True,
          weights=np.arange(1.0, 13.0).reshape(M, C))),
    ("hard_vote", fu.hard_vote, {}),
    ("hard_vote_weighted", fu.hard_vote, dict(weights=[1, 1, 2, 0])),
    ("soft_vote", fu.soft_vote, dict(weights=[0.1, 0.2, 0.3, 0.4])),
    ("stacking_linear", fu.stacking, dict(num_members=M, num_classes=C)),
    ("stacking_mlp_passthrough", fu.stacking,
     dict(num_members=M, num_classes=C, hidden=8, passthrough=True,
          features="log_proba")),
    ("cascade", fu.cascade, dict(thresholds=[0.6, 0.7, 0.8])),
    ("cascade_margin_soft_learned", fu.cascade,
     dict(thresholds=0.3, confidence="margin", soft=True,
          learn_thresholds=True, costs=[1.0, 2.0, 3.0, 4.0])),
    ("cascade_mixed", fu.cascade,
     dict(thresholds=[0.8],
          stages=[fu.select([0]), fu.chain(fu.select([1, 2, 3]),
                                           fu.weighted(3))])),
    ("serial", fu.serial, dict(combine=fu.weighted(2))),
    ("gating", fu.gating, dict(num_members=M, hidden=8)),
    ("chain_parallel", lambda: fu.chain(
        fu.parallel(fu.mean(), fu.weighted(M)), fu.weighted(2)), {}),
    ("chain_select", lambda: fu.chain(fu.select([0, 2]), fu.mean()), {}),
]
IDS = [r[0] for r in REGISTRY]
# No gradient reaches the params of these (they have none, or are piecewise
# constant in them under the hard rule).
NO_PARAMS = {"mean", "mean_logits", "weighted_fixed",
             "weighted_per_class_fixed", "hard_vote", "hard_vote_weighted",
             "soft_vote", "cascade", "chain_select"}
# Outputs that are piecewise constant in the logits.
NO_LOGIT_GRAD = {"hard_vote", "hard_vote_weighted"}


LABELS = jnp.arange(B) % C


class _Built(NamedTuple):
  f: Any
  params: Any
  moved: Any  # params moved off init (e.g. a zero-initialised meta-learner)
  z: jax.Array
  x: jax.Array
  run: Any  # jitted (params, z, x) -> (fused, (d nll/d params, d nll/d z))
  traces: list  # one entry per trace of run


@functools.lru_cache(maxsize=None)
def _built(name):
  """Builds and jits each registry entry once for the whole module.

  One compiled program per fusion (forward and gradients together) keeps the
  module fast: compiling dominates the run time of these tests.
  """
  factory, kwargs = {n: (f, k) for n, f, k in REGISTRY}[name]
  rng = np.random.default_rng(0)
  z = jnp.asarray(3.0 * rng.standard_normal((M, B, C)), jnp.float32)
  x = jnp.asarray(rng.standard_normal(X_SHAPE), jnp.float32)
  f = factory(**kwargs)
  params = f.init(jax.random.key(0), z, x=x)
  moved = jax.tree.map(
      lambda l: jnp.asarray(np.asarray(l) + 0.1 * rng.standard_normal(l.shape),
                            l.dtype), params)
  traces = []

  def loss(p, z, x):
    traces.append(1)  # runs only while tracing
    out = f.apply(p, z, x=x)
    return -jnp.mean(jnp.take_along_axis(out, LABELS[:, None], axis=1)), out

  def run(p, z, x):
    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        p, z, x)
    return out, grads

  return _Built(f, params, moved, z, x, jax.jit(run), traces)


@pytest.mark.parametrize("name", IDS)
def test_shape_finite_and_normalised(name):
  b = _built(name)
  out, _ = b.run(b.params, b.z, b.x)
  assert out.shape == (B, C), name
  assert out.dtype == jnp.float32
  chex.assert_tree_all_finite(out)
  # log-probabilities: logsumexp over classes is 0
  np.testing.assert_allclose(jax.nn.logsumexp(out, axis=-1), 0.0, atol=1e-5)


@pytest.mark.parametrize("name", IDS)
def test_jit_equals_no_jit(name):
  b = _built(name)
  eager = b.f.apply(b.moved, b.z, x=b.x)
  np.testing.assert_allclose(b.run(b.moved, b.z, b.x)[0], eager, rtol=1e-6,
                             atol=1e-6)


@pytest.mark.parametrize("name", IDS)
def test_no_retrace_on_second_call(name):
  b = _built(name)
  b.run(b.params, b.z, b.x)
  n = len(b.traces)
  assert n == 1
  b.run(b.moved, b.z + 1.0, b.x * 2.0)  # new values, same shapes
  assert len(b.traces) == n, f"{name} retraced"


def test_no_retrace_chex():
  f = fu.chain(fu.parallel(fu.mean(), fu.weighted(M)), fu.weighted(2))
  z = jnp.zeros((M, B, C))
  params = f.init(jax.random.key(0), z)

  def fused(p, z):
    return f.apply(p, z)

  step = jax.jit(chex.assert_max_traces(fused, n=1))
  step(params, z)
  step(params, z + 1.0)


@pytest.mark.parametrize("name", IDS)
def test_gradients(name):
  b = _built(name)
  for params in (b.params, b.moved):
    _, (g_params, g_z) = b.run(params, b.z, b.x)
    chex.assert_tree_all_finite((g_params, g_z))
  # at init a symmetric point may have zero gradient (chain_parallel's two
  # branches are equal there, a zero-initialised linear meta-learner ignores
  # its input); the checks below are made off init
  leaves = jax.tree.leaves(g_params)
  if name in NO_PARAMS:
    assert not leaves, f"{name} should have no params"
  else:
    assert leaves, f"{name} should have learnable params"
    for path, g in jax.tree_util.tree_leaves_with_path(g_params):
      assert jnp.any(g != 0), f"{name}: zero gradient at {path}"
  if name in NO_LOGIT_GRAD:
    assert not jnp.any(g_z != 0)
  else:
    assert jnp.any(g_z != 0), name


@st.composite
def _extreme_logits(draw):
  """[M, B, C] logits mixing +-1e4, 0 and uniform values in [-1e4, 1e4]."""
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  kind = rng.integers(0, 4, (M, B, C))
  z = np.choose(kind, [np.full((M, B, C), 1e4), np.full((M, B, C), -1e4),
                       np.zeros((M, B, C)),
                       rng.uniform(-1e4, 1e4, (M, B, C))])
  return z.astype(np.float32)


@pytest.mark.parametrize("name", IDS)
def test_extreme_logits_are_nan_free(name):
  b = _built(name)

  @settings(max_examples=25, deadline=None, database=None)
  @given(_extreme_logits())
  def check(z):
    out, grads = b.run(b.moved, z, b.x)
    assert out.shape == (B, C)
    assert not jnp.any(jnp.isnan(out)), (name, z)
    chex.assert_tree_all_finite(grads)

  check()


# ------------------------------------------------------------ permutations
INVARIANT = {
    name: jax.jit(functools.partial(f.apply, ()))
    for name, f in [("mean", fu.mean()), ("mean_logits", fu.mean_logits()),
                    ("soft_vote", fu.soft_vote()),
                    ("hard_vote", fu.hard_vote()),
                    ("hard_vote_int_weights", fu.hard_vote([2, 2, 2, 2])),
                    ("weighted_uniform", fu.weighted(M, learn=False))]}


@pytest.mark.parametrize("name", list(INVARIANT))
@settings(max_examples=25, deadline=None, database=None)
@given(seed=st.integers(0, 2**31 - 1), perm_seed=st.integers(0, 2**31 - 1))
def test_invariant_to_member_order(name, seed, perm_seed):
  z = np.random.default_rng(seed).standard_normal((M, B, C)).astype(np.float32)
  perm = np.random.default_rng(perm_seed).permutation(M)
  apply = INVARIANT[name]
  np.testing.assert_allclose(apply(z[perm]), apply(z), rtol=1e-6, atol=1e-6)


@settings(max_examples=25, deadline=None, database=None)
@given(seed=st.integers(0, 2**31 - 1), perm_seed=st.integers(0, 2**31 - 1))
def test_weighted_equivariant_to_joint_permutation(seed, perm_seed):
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((M, B, C)).astype(np.float32)
  w = rng.uniform(0.1, 1.0, M)
  perm = np.random.default_rng(perm_seed).permutation(M)
  for make in (lambda w: fu.weighted(M, weights=w), fu.soft_vote):
    np.testing.assert_allclose(make(w[perm]).apply((), z[perm]),
                               make(w).apply((), z), rtol=1e-6, atol=1e-6)
  # learned weights: permute params['logits'] with the members
  f = fu.weighted(M)
  params = {"logits": jnp.asarray(rng.standard_normal(M), jnp.float32)}
  np.testing.assert_allclose(
      f.apply({"logits": params["logits"][perm]}, z[perm]),
      f.apply(params, z), rtol=1e-6, atol=1e-6)
  # per-class weights: permute the rows
  wc = rng.uniform(0.1, 1.0, (M, C))
  np.testing.assert_allclose(
      fu.weighted(M, weights=wc[perm], per_class=True).apply((), z[perm]),
      fu.weighted(M, weights=wc, per_class=True).apply((), z),
      rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("j", range(M))
def test_one_hot_weights_select_one_member(j, logits):
  z = logits(M, B, C)
  e = np.eye(M)[j]
  member = jax.nn.log_softmax(z[j], axis=-1)
  for f in (fu.weighted(M, weights=e), fu.soft_vote(e),
            fu.weighted(M, weights=np.tile(e[:, None], (1, C)),
                        per_class=True)):
    np.testing.assert_allclose(f.apply((), z), member, rtol=1e-6, atol=1e-6)
  learned = fu.weighted(M).apply({"logits": jnp.asarray(1e9 * (e - 1))}, z)
  np.testing.assert_allclose(learned, member, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(
      fu.hard_vote(e).apply((), z).argmax(-1), z[j].argmax(-1))
