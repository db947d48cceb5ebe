"""Training: one jitted step for all members, sharding, and the driver."""
from fusionjax.train._step import (REGIMES, TrainState, cross_entropy, init, make_optimizer,
                                   make_predict, make_step, per_member, skip_nonfinite,
                                   squared_error)
from fusionjax.train._sharding import (batch_shardings, jit_sharded, make_mesh, put,
                                       shard_batch, shard_state, state_shardings)
from fusionjax.train._checkpoint import Checkpointer, check_writable
from fusionjax.train._cascade_exec import cascade_predict
from fusionjax.train._driver import FitResult, as_arrays, evaluate, fit
from fusionjax.train._crossfit import CrossFit, cross_fit, full_members, replica_indices
