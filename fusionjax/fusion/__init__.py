"""Pure, composable fusion functions: ``Fusion(init, apply)`` factories.

Every classification fusion takes member logits ``[M, B, C]`` (member axis
first) and returns fused log-probabilities ``[B, C]``; combinators build new
fusions from old ones. See the module docstrings for the maths and the papers.
"""
from fusionjax.fusion._averaging import mean
from fusionjax.fusion._averaging import mean_logits
from fusionjax.fusion._base import Fusion
from fusionjax.fusion._cascade import cascade
from fusionjax.fusion._cascade import cascade_info
from fusionjax.fusion._cascade import CascadeInfo
from fusionjax.fusion._cascade import serial
from fusionjax.fusion._combining import chain
from fusionjax.fusion._combining import parallel
from fusionjax.fusion._combining import select
from fusionjax.fusion._fit import fit
from fusionjax.fusion._fit import fit_meta
from fusionjax.fusion._gating import gating
from fusionjax.fusion._regression import gaussian_mixture
from fusionjax.fusion._regression import weighted_mean
from fusionjax.fusion._stacking import meta_features
from fusionjax.fusion._stacking import out_of_fold
from fusionjax.fusion._stacking import stacking
from fusionjax.fusion._stacking import stratified_folds
from fusionjax.fusion._voting import hard_vote
from fusionjax.fusion._voting import log_zero
from fusionjax.fusion._voting import soft_vote
from fusionjax.fusion._weighted import weighted

__all__ = (
    "CascadeInfo",
    "Fusion",
    "cascade",
    "cascade_info",
    "chain",
    "fit",
    "fit_meta",
    "gaussian_mixture",
    "gating",
    "hard_vote",
    "log_zero",
    "mean",
    "mean_logits",
    "meta_features",
    "out_of_fold",
    "parallel",
    "select",
    "serial",
    "soft_vote",
    "stacking",
    "stratified_folds",
    "weighted",
    "weighted_mean",
)
