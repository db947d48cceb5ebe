"""The guard's finiteness verdict (one GEMV per leaf) equals ``all(isfinite(a))``."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fusionjax.train import _guard
from fusionjax.train._guard import all_finite as _all_finite, all_finite_pair as _all_finite_pair, leaf_all_finite

F32_MAX = float(np.finfo(np.float32).max)


def _cases():
  rng = np.random.default_rng(0)
  for shape in [(), (5,), (3, 4), (2, 3, 4), (784, 256)]:
    base = rng.normal(size=shape).astype(np.float32)
    yield f"normal{shape}", base
    if base.size:
      for name, bad in [("nan", np.nan), ("inf", np.inf), ("-inf", -np.inf)]:
        a = base.copy().reshape(-1)
        a[rng.integers(a.size)] = bad
        yield f"{name}{shape}", a.reshape(shape)
  # The largest finite values, many of them in one column: no false alarm.
  yield "max_finite_column", np.full((100_000, 2), F32_MAX, np.float32)
  yield "max_and_min", np.array([[F32_MAX, -F32_MAX], [F32_MAX, F32_MAX]], np.float32)
  yield "denormal", np.full((4, 4), 1e-45, np.float32)
  yield "inf_and_-inf", np.array([[np.inf, 1.0], [-np.inf, 2.0]], np.float32)
  yield "empty", np.zeros((0, 3), np.float32)


@pytest.mark.parametrize("name, a", list(_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_leaf_all_finite_is_all_isfinite(name, a):
  want = bool(np.all(np.isfinite(a)))
  assert bool(leaf_all_finite(jnp.asarray(a))) is want, name
  assert bool(jax.jit(leaf_all_finite)(jnp.asarray(a))) is want, name
  # Member-stacked, as the step calls it: one verdict per member.
  stacked = jnp.stack([jnp.asarray(a), jnp.zeros_like(jnp.asarray(a))])
  np.testing.assert_array_equal(jax.vmap(leaf_all_finite)(stacked), [want, True])


def test_max_finite_values_under_a_low_default_matmul_precision():
  a = jnp.full((64, 8), F32_MAX, jnp.float32)
  with jax.default_matmul_precision("bfloat16"):
    assert bool(jax.jit(leaf_all_finite)(a))
    assert not bool(jax.jit(leaf_all_finite)(a.at[5, 5].set(jnp.nan)))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_leaves(dtype):
  a = jnp.full((8, 8), jnp.finfo(dtype).max, dtype)
  assert bool(leaf_all_finite(a))
  assert not bool(leaf_all_finite(a.at[3, 3].set(jnp.inf)))
  assert not bool(leaf_all_finite(a.at[0, 7].set(jnp.nan)))


def test_integer_leaves_are_finite():
  assert bool(leaf_all_finite(jnp.arange(6).reshape(2, 3)))


def test_pair_is_both_trees_finite():
  g = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
  u = {"w": jnp.full((3, 4), F32_MAX), "b": jnp.zeros(4)}
  assert bool(_all_finite_pair(g, u))
  for tree_g, tree_u in [({**g, "w": g["w"].at[1, 1].set(jnp.inf)}, u),
                         (g, {**u, "b": u["b"].at[2].set(jnp.nan)}),
                         ({**g, "b": g["b"].at[0].set(-jnp.inf)}, u)]:
    assert not bool(_all_finite_pair(tree_g, tree_u))
    assert bool(_all_finite_pair(tree_g, tree_u)) == bool(
        _all_finite(tree_g) & _all_finite(tree_u))


def test_the_verdict_of_stacked_members_reads_each_leaf_as_it_lies():
  """Under vmap over members the GEMV contracts the minor axis of the stacked
  leaf as it lies in memory: no full-size transposed copy (contracting the rows
  made XLA copy every leaf first)."""
  a = jnp.ones((4, 96, 32))
  hlo = jax.jit(jax.vmap(_guard.leaf_all_finite)).lower(a).compile().as_text()
  full = [l for l in hlo.splitlines()
          if re.search(r"= f32\[(4,96,32|384,32|4,3072|12288|32,384|96,128)\]", l)]
  assert full and all(" parameter(" in l or " bitcast(" in l for l in full), full
  assert not bool(jax.vmap(_guard.leaf_all_finite)(a.at[2, 5, 7].set(jnp.nan))[2])
