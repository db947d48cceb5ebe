"""Every docstring example in fusionjax.fusion runs and prints what it says."""
import doctest
import importlib

import pytest

MODULES = ["_averaging", "_weighted", "_voting", "_stacking", "_cascade",
           "_gating", "_regression", "_combining", "_fit"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(f"fusionjax.fusion.{name}")
  result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0, result
