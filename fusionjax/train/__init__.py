"""Training: one member step mapped over the members by a layout, sharding, and the driver."""
from fusionjax.train._trainer import (LAYOUTS, REGIMES, Predictor, Trainer, TrainState,
                                      auto_layout, make_predictor, make_trainer,
                                      resolve_platform)
from fusionjax.train._losses import cross_entropy, gaussian_nll, gaussian_params, squared_error
from fusionjax.train._guard import GuardState, all_finite, leaf_all_finite, skip_nonfinite
from fusionjax.train._step import init, make_predict, make_step, per_member
from fusionjax.train._sharding import (batch_shardings, jit_sharded, make_mesh, put,
                                       shard_batch, shard_state, state_shardings)
from fusionjax.train._checkpoint import Checkpointer, check_writable
from fusionjax.train._cascade_exec import cascade_predict
from fusionjax.train._driver import FitResult, as_arrays, evaluate, fit, set_member_hparams
from fusionjax.train._crossfit import CrossFit, cross_fit, full_members, replica_rows
