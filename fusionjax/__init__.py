"""fusionjax: deep ensembles and model fusion in JAX.

Re-exports only; the implementation lives in the subpackages.
"""
from fusionjax import data, ensemble, errors, fusion, integrate, metrics, models, select, train

__version__ = "0.1.0"
