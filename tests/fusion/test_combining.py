"""chain, parallel, select: equivalence with applying the fusions by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fusionjax import errors
from fusionjax import fusion as fu

GROUPS = {"cnn": range(0, 3), "gru": range(3, 5)}


def test_chain_equals_applying_by_hand(logits, key):
  z = logits(5, 6, 3)
  inner, outer = fu.parallel(fu.mean(), fu.weighted(5)), fu.weighted(2)
  f = fu.chain(inner, outer)
  params = f.init(key, z)
  assert len(params) == 2 and params[1]["logits"].shape == (2,)
  moved = (params[0], {"logits": jnp.array([0.3, -0.2])})
  by_hand = outer.apply(moved[1], inner.apply(moved[0], z))
  np.testing.assert_allclose(jax.jit(f.apply)(moved, z), by_hand, rtol=1e-6,
                             atol=1e-6)


def test_parallel_stacks_branches(logits, key):
  z = logits(5, 6, 3)
  f = fu.parallel(fu.mean(), fu.soft_vote([1, 2, 3, 4, 5]), fu.select([2]))
  out = jax.jit(f.apply)(f.init(key, z), z)
  assert out.shape == (3, 6, 3)
  np.testing.assert_allclose(out[0], fu.mean().apply((), z), rtol=1e-6)
  np.testing.assert_allclose(out[2], z[2], rtol=1e-6)


def test_select_by_index_name_slice(logits):
  z = logits(5, 2, 3)
  sel = lambda *a: np.asarray(fu.select(*a).apply((), z))
  np.testing.assert_array_equal(sel([4, 0]), z[[4, 0]])
  np.testing.assert_array_equal(sel(2), z[[2]])
  np.testing.assert_array_equal(sel(-1), z[[4]])
  np.testing.assert_array_equal(sel(slice(1, 3)), z[1:3])
  np.testing.assert_array_equal(sel("gru", GROUPS), z[3:5])
  np.testing.assert_array_equal(sel(["gru", "cnn"], GROUPS), z[[3, 4, 0, 1, 2]])
  np.testing.assert_array_equal(sel("all", {"all": slice(None)}), z)


@pytest.mark.slow
def test_select_with_a_real_groups_ensemble():
  """``select(name, ens.groups)`` (and ``select(name, ens)``) picks that group's members:
  Ensemble.groups holds ``(start, stop)`` pairs, not lists of indices."""
  import fusionjax as fj  # pylint: disable=g-import-not-at-top
  ens = fj.ensemble.groups(cnn=fj.ensemble.from_linen(fj.models.CNN(10, (4, 8), 16), 3),
                           gru=fj.ensemble.from_linen(fj.models.RowGRU(10, 8), 2))
  assert ens.groups == {"cnn": (0, 3), "gru": (3, 5)}
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 12, 12, 1)), jnp.float32)
  out, _ = ens.apply(ens.init(jax.random.key(0), x[:1]), x)  # [5, 4, 10]
  for names in (ens.groups, ens):
    np.testing.assert_array_equal(fu.select("cnn", names).apply((), out), out[0:3])
    np.testing.assert_array_equal(fu.select("gru", names).apply((), out), out[3:5])
    np.testing.assert_array_equal(fu.select(["gru", "cnn"], names).apply((), out),
                                  out[np.array([3, 4, 0, 1, 2])])
  # A list is explicit indices: [0, 3] is members 0 and 3.
  np.testing.assert_array_equal(fu.select("x", {"x": [0, 3]}).apply((), out), out[np.array([0, 3])])


def test_groups_fused_separately_then_together(logits, key):
  z = logits(5, 6, 3)
  f = fu.chain(fu.parallel(fu.chain(fu.select("cnn", GROUPS), fu.mean()),
                           fu.chain(fu.select("gru", GROUPS), fu.mean())),
               fu.mean())
  want = jnp.log(0.5 * jnp.exp(fu.mean().apply((), z[:3]))
                 + 0.5 * jnp.exp(fu.mean().apply((), z[3:])))
  np.testing.assert_allclose(jax.jit(f.apply)(f.init(key, z), z), want,
                             rtol=1e-5, atol=1e-6)


def test_x_and_key_reach_inner_fusions(logits, key):
  z, x = logits(3, 6, 3), jnp.ones((6, 4))
  f = fu.chain(fu.parallel(fu.gating(3, hidden=None), fu.mean()), fu.mean())
  params = f.init(key, z, x=x)
  out = f.apply(params, z, x=x, key=key)
  assert out.shape == (6, 3)
  with pytest.raises(errors.FusionInputError, match="x=None"):
    f.apply(params, z)


# ------------------------------------------------------------- bad input
def test_select_unknown_group_or_index(logits):
  z = logits(5, 2, 3)
  with pytest.raises(errors.UnknownMemberError,
                     match=r"unknown group 'lstm'.*\['cnn', 'gru'\]"):
    fu.select("lstm", GROUPS)
  with pytest.raises(errors.UnknownMemberError, match=r"needs|names="):
    fu.select("cnn")
  with pytest.raises(errors.UnknownMemberError,
                     match=r"index 7 is out of range for M=5.*0..4"):
    fu.select([0, 7]).apply((), z)
  with pytest.raises(errors.UnknownMemberError,
                     match=r"index 5 \(group 'big'\).*M=5"):
    fu.select("big", {"big": range(4, 7)}).apply((), z)
  with pytest.raises(errors.UnknownMemberError, match=r"selects no member"):
    fu.select([])


def test_parallel_branches_with_different_classes(logits, key):
  wide = fu.Fusion(lambda key, z, *, x=None: (),
                   lambda p, z, *, x=None, key=None: jnp.zeros((6, 4)))
  f = fu.parallel(fu.mean(), wide)
  z = logits(3, 6, 3)
  with pytest.raises(errors.StageClassesError,
                     match=r"branch 0: \(6, 3\), parallel branch 1: \(6, 4\)"):
    f.apply(f.init(key, z), z)


def test_combinator_config_errors():
  with pytest.raises(errors.FusionConfigError, match=r"at least one"):
    fu.chain()
  with pytest.raises(errors.FusionConfigError, match=r"not a Fusion.*mean\(\)"):
    fu.parallel(fu.mean)
  with pytest.raises(errors.MemberOutputsError, match=r"\(6, 3\)"):
    fu.chain(fu.mean(), fu.mean()).apply(((), ()), jnp.zeros((2, 6, 3)))
