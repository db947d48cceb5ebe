"""Ensembles: M members stacked on a leading axis and vmapped."""
from fusionjax.ensemble._base import Ensemble, check_stacked, from_fn, stack, unstack
from fusionjax.ensemble._flax import from_linen, from_nnx
from fusionjax.ensemble._groups import groups, select_group
from fusionjax.ensemble._efficient import (PackedDense, PackedNet, batch_ensemble, mc_dropout,
                                           packed)
