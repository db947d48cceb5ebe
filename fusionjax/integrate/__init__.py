"""Integration at training time: bagging, boosting, snapshots, distillation, soups.

Methods that build or merge members while training, on top of the ensemble
engine (stacked params ``[M, ...]``, one jitted step):

* bagging with out-of-bag evaluation: :func:`fit_bagging`, :func:`oob_evaluate`;
* gradient boosting of networks on pseudo-residuals: :func:`boost`;
* snapshot ensembles and FGE from one run: :func:`snapshot_schedule`,
  :func:`fge_schedule`, :func:`snapshot_ensemble`, :func:`fge_ensemble`;
* knowledge distillation into one student: :func:`distillation_loss`,
  :func:`distill`, :func:`gain_kept`;
* weight-space fusion: :func:`uniform_soup`, :func:`greedy_soup`, :func:`swa`,
  :func:`fit_swa`, and permutation alignment (:func:`weight_matching`,
  :func:`align_members`, :func:`interpolation_barrier`);
* explaining a fused decision: :func:`contributions`, :func:`grad_attribution`.
"""
from fusionjax.integrate._align import align
from fusionjax.integrate._align import align_members
from fusionjax.integrate._align import Barrier
from fusionjax.integrate._align import interpolation_barrier
from fusionjax.integrate._align import mlp_apply
from fusionjax.integrate._align import mlp_layers
from fusionjax.integrate._align import permute_mlp
from fusionjax.integrate._align import weight_matching
from fusionjax.integrate._bagging import fit_bagging
from fusionjax.integrate._bagging import oob_evaluate
from fusionjax.integrate._bagging import oob_log_probs
from fusionjax.integrate._bagging import OOBResult
from fusionjax.integrate._boosting import boost
from fusionjax.integrate._boosting import boost_predict
from fusionjax.integrate._boosting import boosted_logits
from fusionjax.integrate._boosting import BoostResult
from fusionjax.integrate._boosting import pseudo_residuals
from fusionjax.integrate._distill import distill
from fusionjax.integrate._distill import distillation_loss
from fusionjax.integrate._distill import DistillResult
from fusionjax.integrate._distill import gain_kept
from fusionjax.integrate._explain import contributions
from fusionjax.integrate._explain import grad_attribution
from fusionjax.integrate._snapshot import collect_snapshots
from fusionjax.integrate._snapshot import fge_ensemble
from fusionjax.integrate._snapshot import fge_schedule
from fusionjax.integrate._snapshot import snapshot_ensemble
from fusionjax.integrate._snapshot import snapshot_schedule
from fusionjax.integrate._snapshot import SnapshotResult
from fusionjax.integrate._soups import fit_swa
from fusionjax.integrate._soups import greedy_soup
from fusionjax.integrate._soups import GreedySoup
from fusionjax.integrate._soups import ParamAverage
from fusionjax.integrate._soups import running_mean
from fusionjax.integrate._soups import swa
from fusionjax.integrate._soups import SWAResult
from fusionjax.integrate._soups import SWAState
from fusionjax.integrate._soups import uniform_soup

__all__ = (
    "Barrier", "BoostResult", "DistillResult", "GreedySoup", "OOBResult", "ParamAverage",
    "SWAResult", "SWAState", "SnapshotResult", "align", "align_members", "boost",
    "boost_predict", "boosted_logits", "collect_snapshots", "contributions", "distill",
    "distillation_loss", "fge_ensemble", "fge_schedule", "fit_bagging", "fit_swa",
    "gain_kept", "grad_attribution", "greedy_soup", "interpolation_barrier", "mlp_apply",
    "mlp_layers", "oob_evaluate", "oob_log_probs", "permute_mlp", "pseudo_residuals",
    "running_mean", "snapshot_ensemble", "snapshot_schedule", "swa", "uniform_soup",
    "weight_matching",
)
