"""Snapshot ensembles and fast geometric ensembling: M members from one training run.

Both train one network with a cyclic learning rate and save its weights at
the learning rate's minimum of every cycle; the saved snapshots, stacked on a
leading member axis, are an ensemble that ``from_linen(module, M).apply``
runs like any other.

* Snapshot ensembles (Huang et al. 2017): cosine annealing that restarts every
  cycle, ``lr(t) = lr0 / 2 * (1 + cos(pi * (t mod S) / S))``; a snapshot at the
  end of each cycle.
* FGE (Garipov et al. 2018): from a trained model, a short piecewise-linear
  cycle ``lr1 -> lr2 -> lr1`` of ``c`` steps; a snapshot in the middle of each
  cycle, where the learning rate is ``lr2``.
"""
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fusionjax import errors
from fusionjax.ensemble import Ensemble
from fusionjax.integrate import _train
from fusionjax.train import make_step


class SnapshotResult(NamedTuple):
  """Snapshots of one training run, stacked as an ensemble.

  Attributes:
    variables: ``{'params', 'state'}`` with every leaf ``[M, ...]``, snapshot
      ``m`` at ``steps[m]``.
    ensemble: the ``M``-member ensemble that applies them
      (``ensemble.apply(variables, x)``).
    steps: the number of steps taken when each snapshot was saved.
    losses: ``[num_steps]`` training loss of every step.
  """
  variables: Any
  ensemble: Ensemble
  steps: tuple
  losses: np.ndarray


def snapshot_schedule(lr0: float, steps_per_cycle: int, cycles: int) -> optax.Schedule:
  """Cosine annealing with warm restarts every ``steps_per_cycle`` steps.

  ``lr(t) = lr0 / 2 * (1 + cos(pi * (t mod S) / S))`` for ``t < cycles * S``
  (``t`` counts updates from 0, as optax does) and ``0`` afterwards. Built as
  ``optax.join_schedules`` of ``cycles`` ``optax.cosine_decay_schedule``.

  Args:
    lr0: the learning rate at the start of each cycle (``> 0``).
    steps_per_cycle: ``S``, steps per cycle (``>= 1``).
    cycles: the number of cycles (= snapshots, ``>= 1``).

  Returns:
    An optax schedule ``count -> lr``.

  Raises:
    IntegrationConfigError: ``lr0 <= 0``, ``steps_per_cycle < 1`` or ``cycles < 1``.

  Example:
    >>> s = snapshot_schedule(0.1, 100, 3)
    >>> [round(float(s(t)), 4) for t in (0, 50, 100, 150)]
    [0.1, 0.05, 0.1, 0.05]

  References:
    Huang et al., "Snapshot Ensembles: Train 1, get M for free", ICLR 2017;
    Loshchilov and Hutter, "SGDR: Stochastic Gradient Descent with Warm
    Restarts", ICLR 2017.
  """
  where = "snapshot_schedule"
  lr0 = _train.check_positive(lr0, "lr0", where)
  s = _train.check_int(steps_per_cycle, "steps_per_cycle", where)
  cycles = _train.check_int(cycles, "cycles", where)
  return optax.join_schedules([optax.cosine_decay_schedule(lr0, s)] * cycles,
                              [s * k for k in range(1, cycles)])


def fge_schedule(lr1: float, lr2: float, cycle_steps: int) -> optax.Schedule:
  """The FGE cyclic piecewise-linear learning rate ``lr1 -> lr2 -> lr1``.

  With ``i = t + 1`` (``t`` counts updates from 0) and
  ``s = (((i - 1) mod c) + 1) / c`` in ``(0, 1]``::

    lr = (1 - 2 s) lr1 + 2 s lr2        for s <= 1/2
    lr = (2 - 2 s) lr2 + (2 s - 1) lr1  for s >  1/2

  so the ``c / 2``-th update of each cycle uses ``lr2`` (the minimum when
  ``lr2 < lr1``): save a snapshot after it.

  Args:
    lr1: the learning rate at the cycle's ends (``> 0``).
    lr2: the learning rate in its middle (``> 0``).
    cycle_steps: ``c``, steps per cycle, even and ``>= 2``.

  Returns:
    An optax schedule ``count -> lr`` (periodic).

  Raises:
    IntegrationConfigError: non-positive rates or an odd / too small ``c``.

  Example:
    >>> s = fge_schedule(0.05, 0.0005, 4)
    >>> [round(float(s(t)), 5) for t in range(4)]
    [0.02525, 0.0005, 0.02525, 0.05]

  References:
    Garipov et al., "Loss Surfaces, Mode Connectivity, and Fast Ensembling of
    DNNs", NeurIPS 2018, eq. (2).
  """
  where = "fge_schedule"
  lr1 = _train.check_positive(lr1, "lr1", where)
  lr2 = _train.check_positive(lr2, "lr2", where)
  c = _train.check_int(cycle_steps, "cycle_steps", where, minimum=2)
  if c % 2:
    raise errors.IntegrationConfigError(
        f"{where}: cycle_steps={c} must be even so that the middle of each cycle (the "
        f"snapshot) falls on a step. Fix: pass cycle_steps={c + 1}.")

  def schedule(count):
    s = (jnp.mod(count, c) + 1) / c
    first = (1 - 2 * s) * lr1 + 2 * s * lr2
    second = (2 - 2 * s) * lr2 + (2 * s - 1) * lr1
    return jnp.where(s <= 0.5, first, second)

  return schedule


def collect_snapshots(module: nn.Module, tx: optax.GradientTransformation, x, y, *,
                      key: jax.Array, num_steps: int, save_at: Sequence[int],
                      batch_size: int = 64, init_variables: Optional[Any] = None,
                      loss: Optional[Callable] = None, seed: int = 0) -> SnapshotResult:
  """Trains one network and saves its variables after chosen steps.

  The generic primitive behind :func:`snapshot_ensemble` and
  :func:`fge_ensemble`: a 1-member ensemble trained with the engine's step
  (``tx`` carries the schedule), saved to the host after ``save_at`` steps.

  Args:
    module: a Linen module mapping ``[B, ...]`` to ``[B, C]``.
    tx: single-member optax transform (with its learning-rate schedule).
    x, y: training inputs ``[N, ...]`` and labels ``[N]``.
    key: PRNG key (init, dropout).
    num_steps: the total number of steps.
    save_at: step counts in ``[1, num_steps]`` after which a snapshot is saved.
    batch_size: examples per step.
    init_variables: start from these 1-member variables ``{'params', 'state'}``
      (leaves ``[1, ...]``) instead of a fresh init.
    loss: the engine loss (default ``fusionjax.train.cross_entropy``).
    seed: seed of the data order.

  Returns:
    A :class:`SnapshotResult` with ``M = len(save_at)`` members.

  Raises:
    IntegrationConfigError: ``num_steps < 1`` or a save step outside ``[1, num_steps]``.

  Example:
    >>> tx = optax.sgd(snapshot_schedule(0.1, 100, 3))
    >>> res = collect_snapshots(fj.models.MLP(10, (64,)), tx, x, y, key=key,
    ...     num_steps=300, save_at=[100, 200, 300])               # doctest: +SKIP

  References:
    Huang et al., "Snapshot Ensembles", ICLR 2017; Garipov et al., "Loss
    Surfaces, Mode Connectivity, and Fast Ensembling of DNNs", NeurIPS 2018.
  """
  where = "collect_snapshots"
  num_steps = _train.check_int(num_steps, "num_steps", where)
  save_at = tuple(int(s) for s in save_at)
  if not save_at or min(save_at) < 1 or max(save_at) > num_steps:
    raise errors.IntegrationConfigError(
        f"{where}: save_at={save_at} must be non-empty step counts in [1, num_steps="
        f"{num_steps}]. Fix: pass steps inside the run.")
  x, y = _train.check_xy(x, y, where)
  ens1 = _train.linen_ensemble(module, 1)
  state = _train.start_state(ens1, tx, key, jnp.asarray(x[:1]), init_variables)
  wanted = set(save_at)
  saved = {}

  def keep(t, st):
    if t + 1 in wanted:
      saved[t + 1] = _train.host_copy({"params": st.params["members"], "state": st.state})

  step = make_step(ens1, tx, x_example=x[:1], **({} if loss is None else {"loss": loss}))
  _, losses = _train.run_steps(step, state, x, y, num_steps=num_steps,
                               batch_size=batch_size, seed=seed, callback=keep)
  snaps = [saved[s] for s in save_at]
  variables = jax.tree.map(lambda *a: np.concatenate(a, axis=0), *snaps)
  return SnapshotResult(variables, _train.linen_ensemble(module, len(save_at)), save_at, losses)


def _sgd(lr):
  return optax.sgd(lr, momentum=0.9, nesterov=True)


def snapshot_ensemble(module: nn.Module, x, y, *, key: jax.Array, lr0: float,
                      steps_per_cycle: int, cycles: int, batch_size: int = 64,
                      optimizer: Callable[[optax.Schedule], optax.GradientTransformation] = _sgd,
                      seed: int = 0) -> SnapshotResult:
  """A snapshot ensemble: one run, cosine restarts, one member per cycle.

  Trains ``cycles * steps_per_cycle`` steps with
  ``optimizer(snapshot_schedule(lr0, steps_per_cycle, cycles))`` and saves the
  variables at the end of every cycle (the learning rate's minimum).

  Args:
    module: a Linen module mapping ``[B, ...]`` to ``[B, C]``.
    x, y: training inputs ``[N, ...]`` and integer labels ``[N]``.
    key: PRNG key.
    lr0: the learning rate at each restart.
    steps_per_cycle: steps per cycle.
    cycles: the number of snapshots ``M``.
    batch_size: examples per step.
    optimizer: ``schedule -> GradientTransformation`` (default: SGD with
      Nesterov momentum 0.9, as in the paper).
    seed: seed of the data order.

  Returns:
    A :class:`SnapshotResult` with ``M = cycles`` members; the last one is
    the model a single run with this schedule ends with.

  Example:
    >>> res = fj.integrate.snapshot_ensemble(fj.models.MLP(10, (64,)), x, y,
    ...     key=jax.random.key(0), lr0=0.1, steps_per_cycle=200, cycles=4)  # doctest: +SKIP
    >>> out, _ = res.ensemble.apply(res.variables, x[:8])     # doctest: +SKIP
    >>> out.shape                                              # doctest: +SKIP
    (4, 8, 10)

  References:
    Huang et al., "Snapshot Ensembles: Train 1, get M for free", ICLR 2017.
  """
  sched = snapshot_schedule(lr0, steps_per_cycle, cycles)
  return collect_snapshots(module, optimizer(sched), x, y, key=key,
                           num_steps=steps_per_cycle * cycles,
                           save_at=[steps_per_cycle * (k + 1) for k in range(cycles)],
                           batch_size=batch_size, seed=seed)


def fge_ensemble(module: nn.Module, x, y, *, key: jax.Array, lr1: float, lr2: float,
                 cycle_steps: int, cycles: int, warmup_steps: int = 0,
                 init_variables: Optional[Any] = None, batch_size: int = 64,
                 optimizer: Callable[[optax.Schedule], optax.GradientTransformation] = _sgd,
                 seed: int = 0) -> SnapshotResult:
  """Fast geometric ensembling: short cyclic-lr cycles around a trained model.

  Runs ``warmup_steps`` at the constant rate ``lr1`` (pre-training; skip it
  by passing ``init_variables`` of a trained model), then ``cycles`` cycles of
  :func:`fge_schedule`, saving a snapshot at the middle of each (lr ``= lr2``);
  training ends with the last snapshot.

  Args:
    module: a Linen module mapping ``[B, ...]`` to ``[B, C]``.
    x, y: training inputs and integer labels.
    key: PRNG key.
    lr1, lr2: the cycle's high and low learning rates.
    cycle_steps: ``c``, steps per cycle (even).
    cycles: the number of snapshots ``M``.
    warmup_steps: steps at ``lr1`` before the first cycle.
    init_variables: 1-member variables ``{'params', 'state'}`` (leaves
      ``[1, ...]``) to start from.
    batch_size: examples per step.
    optimizer: ``schedule -> GradientTransformation`` (default SGD, Nesterov 0.9).
    seed: seed of the data order.

  Returns:
    A :class:`SnapshotResult` with ``M = cycles`` members.

  Example:
    >>> res = fj.integrate.fge_ensemble(fj.models.MLP(10, (64,)), x, y,
    ...     key=jax.random.key(0), lr1=0.05, lr2=0.0005, cycle_steps=40,
    ...     cycles=6, warmup_steps=400)                 # doctest: +SKIP

  References:
    Garipov et al., "Loss Surfaces, Mode Connectivity, and Fast Ensembling of
    DNNs", NeurIPS 2018.
  """
  warmup_steps = _train.check_int(warmup_steps, "warmup_steps", "fge_ensemble", minimum=0)
  cycles = _train.check_int(cycles, "cycles", "fge_ensemble")
  cyc = fge_schedule(lr1, lr2, cycle_steps)
  sched = cyc if warmup_steps == 0 else optax.join_schedules(
      [optax.constant_schedule(lr1), cyc], [warmup_steps])
  save_at = [warmup_steps + k * cycle_steps + cycle_steps // 2 for k in range(cycles)]
  return collect_snapshots(module, optimizer(sched), x, y, key=key,
                           num_steps=save_at[-1], save_at=save_at,
                           batch_size=batch_size, init_variables=init_variables, seed=seed)
