"""Checks that need a GPU: run by ``benchmarks/gpu.sh`` (``pytest -m gpu``), deselected elsewhere.

They fail, rather than skip, when no GPU is there: ``-m gpu`` asks for them.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fusionjax as fj
from fusionjax import models

pytestmark = pytest.mark.gpu


def test_the_backend_is_a_gpu():
  assert jax.default_backend() == "gpu", jax.devices()


@pytest.mark.parametrize("module", [models.MLP(10, (64,)), models.CNN(10, (4, 8), 16)],
                         ids=["mlp", "cnn"])
def test_auto_layout_is_vmap_and_equals_scan_after_10_sgd_steps(module):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(32, 28, 28, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 32), jnp.int32)
  ens = fj.ensemble.from_linen(module, 8)
  out = {}
  with jax.default_matmul_precision("highest"):  # no TF32: the layouts must agree to 1e-5
    for layout in ("auto", "scan"):
      trainer = fj.train.make_trainer(ens, optax.sgd(0.05), layout=layout, x_example=x[:1])
      if layout == "auto":
        assert trainer.layout == "vmap"
      state = trainer.init(jax.random.key(0), x[:1])
      for _ in range(10):
        state, logs = trainer.step(state, {"x": x, "y": y})
      out[layout] = (state.params, logs["member_loss"])
  chex.assert_trees_all_close(out["auto"], out["scan"], rtol=1e-5, atol=1e-6)


def test_groups_train_on_the_gpu():
  ens = fj.ensemble.groups(cnn=fj.ensemble.from_linen(models.CNN(10, (4, 8), 16), 3),
                           gru=fj.ensemble.from_linen(models.RowGRU(10, 8), 2))
  x = jnp.ones((8, 28, 28, 1))
  trainer = fj.train.make_trainer(ens, optax.adam(1e-3), x_example=x[:1])
  assert trainer.layout == {"cnn": "vmap", "gru": "vmap"}
  state = trainer.init(jax.random.key(0), x[:1])
  state, logs = trainer.step(state, {"x": x, "y": jnp.zeros(8, jnp.int32)})
  assert logs["member_loss"].shape == (5,)
  assert np.all(np.asarray(logs["finite"]))
