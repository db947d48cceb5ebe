"""fit(): full-batch optax on fixed member outputs.

Fitting itself is exercised by the learning tests (test_weighted, test_gating,
test_stacking); here, its input checks.
"""
import jax.numpy as jnp
import optax
import pytest

from fusionjax import errors
from fusionjax import fusion as fu


def test_fit_errors(key):
  with pytest.raises(errors.BatchShapeError, match=r"\(5,\).*N=4"):
    fu.fit(fu.weighted(2), jnp.zeros((2, 4, 3)), jnp.zeros(5, int), key, 3,
           optax.sgd(0.1))
  with pytest.raises(errors.FusionConfigError, match="steps=0"):
    fu.fit(fu.weighted(2), jnp.zeros((2, 4, 3)), jnp.zeros(4, int), key, 0,
           optax.sgd(0.1))


def test_fit_meta_is_fit():
  assert fu.fit_meta is fu.fit
