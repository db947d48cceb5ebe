"""Training: one jitted step for all members, sharding, and the driver."""
from fusionjax.train._step import (REGIMES, TrainState, cross_entropy, init, make_optimizer,
                                   make_predict, make_step, per_member, skip_nonfinite,
                                   squared_error)
