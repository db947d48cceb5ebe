"""The docstring examples of fusionjax.integrate run (those that need training are skipped)."""
import doctest

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fusionjax as fj
from fusionjax.integrate import (_align, _bagging, _boosting, _distill, _explain, _snapshot,
                                 _soups)


@pytest.mark.parametrize("module", [_align, _bagging, _boosting, _distill, _explain,
                                    _snapshot, _soups], ids=lambda m: m.__name__)
def test_docstring_examples(module):
  globs = {"jax": jax, "jnp": jnp, "np": np, "optax": optax, "fj": fj}
  finder = doctest.DocTestFinder()
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  tests = [t for t in finder.find(module, globs=dict(globs, **vars(module))) if t.examples]
  assert tests
  for t in tests:
    t.globs.update(globs)
    runner.run(t)
  assert runner.failures == 0, f"{runner.failures} failing example(s) in {module.__name__}"
