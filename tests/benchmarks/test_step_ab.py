"""benchmarks/step_ab.py: each undone change is the same step, and the library is restored."""
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fusionjax as fj
from fj_testing import ROOT
from fusionjax.train import _layouts, _trainer

sys.path.insert(0, str(ROOT / "benchmarks"))

import step_ab  # noqa: E402  pylint: disable=g-import-not-at-top


def _after_two_steps(chunk, m=4):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(16, 8, 8, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 16), jnp.int32)
  ens = fj.ensemble.from_linen(fj.models.MLP(10, (32,)), m)
  # eps well above float32 rounding of the gradients: a recompiled program may round a
  # near-zero gradient differently, which Adam's default eps=1e-8 would blow up to a whole
  # step on some CPU kinds; with it the two steps agree to rounding on any CPU.
  trainer = fj.train.make_trainer(ens, optax.adam(1e-2, eps=1e-3), x_example=x[:1],
                                  chunk=chunk)
  state = trainer.init(jax.random.key(0), x[:1])
  for _ in range(2):
    state, logs = trainer.step(state, {"x": x, "y": y})
  return state.params, logs


@pytest.mark.parametrize("change,chunk", [("recompute", 4), ("unroll", 2)])
def test_an_undone_change_trains_the_same_and_is_restored(change, chunk):
  saved = (_trainer._update_one, _layouts._UNROLL_CHUNKS)  # pylint: disable=protected-access
  shipped, logs = _after_two_steps(chunk)
  with step_ab.undone(change):
    changed = _trainer._update_one, _layouts._UNROLL_CHUNKS  # pylint: disable=protected-access
    assert changed != saved  # the context really patches something
    without, logs_without = _after_two_steps(chunk)
  assert (_trainer._update_one, _layouts._UNROLL_CHUNKS) == saved  # pylint: disable=protected-access
  # The recompute equals the first update to float rounding; the unroll is the same ops.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               shipped, without)
  np.testing.assert_array_equal(logs["finite"], logs_without["finite"])


def test_unknown_change_is_named():
  with pytest.raises(ValueError, match="recompute, unroll"):
    with step_ab.undone("nothing"):
      pass


def test_changes_are_timed_only_where_they_apply():
  assert step_ab.applies("recompute", 1) and not step_ab.applies("recompute", 2)
  assert not step_ab.applies("unroll", 1)
  top = _layouts._UNROLL_CHUNKS  # pylint: disable=protected-access
  assert step_ab.applies("unroll", top) and not step_ab.applies("unroll", top + 1)
