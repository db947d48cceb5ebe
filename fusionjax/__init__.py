"""fusionjax: deep ensembles and model fusion in JAX.

Re-exports only; the implementation lives in the subpackages. ``fj.plot``
(matplotlib) is imported on first use, so ``import fusionjax`` does not load
matplotlib.
"""
import importlib as _importlib

from fusionjax import data, ensemble, errors, fusion, integrate, metrics, models, select, train

__version__ = "0.1.0"
__all__ = ["data", "ensemble", "errors", "fusion", "integrate", "metrics", "models", "plot",
           "select", "train"]


def __getattr__(name):
  if name == "plot":
    return _importlib.import_module("fusionjax.plot")
  raise AttributeError(f"module 'fusionjax' has no attribute {name!r}")


def __dir__():
  return sorted(__all__ + ["__version__"])
