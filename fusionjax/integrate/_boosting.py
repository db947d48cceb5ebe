"""Gradient boosting of neural members on multiclass logits (Friedman 2001).

The boosted model is an additive model in logit space,
``F_t(x) = F_{t-1}(x) + w_t f_t(x)`` with ``F_0`` the log class priors. Member
``f_t`` is a network fitted by squared error to the pseudo-residuals, the
negative gradient of the softmax cross-entropy with respect to ``F``:
``r = one_hot(y) - softmax(F_{t-1}(x))``. Its step ``w_t = nu * rho_t`` is the
shrinkage ``nu`` times the line-search step ``rho_t = argmin_rho
CE(F_{t-1} + rho f_t)`` on the training set (Friedman's Algorithm 1; pass
``line_search=False`` for ``rho_t = 1``). Members are added one after another
until the validation NLL has not improved for ``patience`` rounds; the members
up to the best round are kept.
"""
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fusionjax import errors
from fusionjax.ensemble import Ensemble
from fusionjax.integrate import _train
from fusionjax.train import make_step, squared_error


class BoostResult(NamedTuple):
  """What :func:`boost` returns.

  Attributes:
    variables: ``{'params', 'state'}`` of the kept members, stacked ``[T, ...]``.
    ensemble: the ``T``-member ensemble that applies ``variables``.
    step_sizes: ``[T]`` member weights ``w_t = nu * rho_t``.
    init_logits: ``[C]`` the constant ``F_0`` (log class priors).
    num_members: ``T``, the members kept (the best validation round).
    history: per round (``len = rounds run``): ``'train_nll'``, ``'val_nll'``,
      ``'val_accuracy'``, ``'rho'`` lists (index ``t`` is the model with
      ``t + 1`` members).
  """
  variables: Any
  ensemble: Ensemble
  step_sizes: jax.Array
  init_logits: jax.Array
  num_members: int
  history: dict


def pseudo_residuals(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Negative gradient of the summed softmax cross-entropy with respect to the logits.

  Args:
    logits: the current additive model ``F`` ``[..., B, C]``.
    labels: integer labels ``[B]``.

  Returns:
    ``one_hot(labels) - softmax(logits)`` ``[..., B, C]``.

  Example:
    >>> pseudo_residuals(jnp.zeros((1, 2)), jnp.array([0]))
    Array([[ 0.5, -0.5]], dtype=float32)
  """
  return jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype) - jax.nn.softmax(
      logits, axis=-1)


def boosted_logits(member_outputs: jax.Array, step_sizes: jax.Array,
                   init_logits: jax.Array) -> jax.Array:
  """``F(x) = F_0 + sum_t w_t f_t(x)``: the boosted logits ``[B, C]``.

  Args:
    member_outputs: ``[T, B, C]`` outputs of the boosted members.
    step_sizes: ``[T]`` weights ``w_t``.
    init_logits: ``[C]`` the constant ``F_0``.

  Returns:
    ``[B, C]`` logits (``jax.nn.log_softmax`` gives the log-probabilities).

  Example:
    >>> out = jnp.ones((2, 1, 3))                            # [T=2, B=1, C=3]
    >>> boosted_logits(out, jnp.array([0.5, 2.0]), jnp.zeros(3)).tolist()
    [[2.5, 2.5, 2.5]]

  References:
    Friedman, "Greedy function approximation: a gradient boosting machine",
    Annals of Statistics 29, 2001 (the additive model ``F_M``).
  """
  return init_logits + jnp.tensordot(step_sizes, member_outputs, axes=1)


def boost_predict(result: BoostResult, x, *, num_members: Optional[int] = None) -> jax.Array:
  """Log-probabilities of a boosted model (optionally of its first members only).

  Args:
    result: from :func:`boost`.
    x: inputs ``[B, ...]``.
    num_members: use the first ``t`` members (default: all kept members).

  Returns:
    ``log_softmax(F_0 + sum_{t < num_members} w_t f_t(x))``, ``[B, C]``.

  Example:
    >>> res = fj.integrate.boost(module, x, y, xv, yv, key=key, tx=tx)  # doctest: +SKIP
    >>> first = boost_predict(res, xv, num_members=1)         # doctest: +SKIP

  References:
    Friedman, 2001 (see :func:`boost`).
  """
  t = result.num_members if num_members is None else num_members
  out = _train.batched_apply(result.ensemble, result.variables, np.asarray(x))
  return jax.nn.log_softmax(boosted_logits(out[:t], result.step_sizes[:t],
                                           result.init_logits), axis=-1)


@jax.jit
def _line_search(f_prev, f_new, labels):
  """``argmin_{rho in [0, 64]} mean CE(f_prev + rho f_new)`` by bisection on the derivative.

  The loss is convex in ``rho`` (CE is convex in the logits), so its derivative
  is non-decreasing and bisection on its sign converges.
  """
  def loss(rho):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        f_prev + rho * f_new, labels))

  dloss = jax.grad(loss)

  def body(_, lohi):
    lo, hi = lohi
    mid = 0.5 * (lo + hi)
    up = dloss(mid) > 0
    return jnp.where(up, lo, mid), jnp.where(up, mid, hi)

  lo, hi = jax.lax.fori_loop(0, 40, body, (jnp.float32(0.0), jnp.float32(64.0)))
  return 0.5 * (lo + hi)


def boost(module: nn.Module, x, y, x_val, y_val, *, key: jax.Array,
          tx: optax.GradientTransformation, rounds: int = 10, shrinkage: float = 0.5,
          patience: int = 3, steps_per_round: int = 200, batch_size: int = 64,
          line_search: bool = True, seed: int = 0) -> BoostResult:
  """Gradient-boosts networks on multiclass pseudo-residuals, with early stopping.

  Round ``t`` trains a fresh 1-member ensemble of ``module`` with the engine's
  step (``fusionjax.train.make_step(..., loss=squared_error)``, compiled once
  for all rounds) to regress ``one_hot(y) - softmax(F_{t-1}(x))``, then adds
  it with weight ``nu * rho_t``. Training stops when the validation NLL has
  not improved for ``patience`` rounds (or after ``rounds``).

  Args:
    module: a Linen module mapping ``[B, ...]`` to ``[B, C]`` (its outputs
      are the member's additive logits).
    x, y: training inputs ``[N, ...]`` and integer labels ``[N]``.
    x_val, y_val: held-out data for early stopping.
    key: PRNG key; one per round is split from it.
    tx: single-member optax transform for each member's regression.
    rounds: the most members to add (``>= 1``).
    shrinkage: ``nu`` in ``(0, 1]``.
    patience: rounds without a validation NLL improvement before stopping.
    steps_per_round: optimisation steps per member.
    batch_size: examples per step.
    line_search: scale each member by the CE-minimising step ``rho_t``.
    seed: seed of the data order (round ``t`` uses ``seed + t``).

  Returns:
    A :class:`BoostResult` holding the first ``num_members`` members (those
    of the best validation round).

  Raises:
    IntegrationConfigError: ``shrinkage`` outside ``(0, 1]``, ``rounds``,
      ``patience`` or ``steps_per_round`` below 1.

  Example:
    >>> res = fj.integrate.boost(fj.models.MLP(10, (32,)), x, y, xv, yv,
    ...     key=jax.random.key(0), tx=optax.adam(3e-3))      # doctest: +SKIP
    >>> log_probs = fj.integrate.boost_predict(res, xv)     # doctest: +SKIP

  References:
    Friedman, "Greedy function approximation: a gradient boosting machine",
    Annals of Statistics 29, 2001 (multiclass logit boosting, shrinkage).
  """
  where = "boost"
  nu = _train.check_unit_interval(shrinkage, "shrinkage", where)
  rounds = _train.check_int(rounds, "rounds", where)
  patience = _train.check_int(patience, "patience", where)
  steps_per_round = _train.check_int(steps_per_round, "steps_per_round", where)
  x, y = _train.check_xy(x, y, where)
  x_val, y_val = _train.check_xy(x_val, y_val, where)
  ens1 = _train.linen_ensemble(module, 1)
  init = _train.make_init(ens1, tx)
  step = make_step(ens1, tx, loss=squared_error, x_example=x[:1])

  yj, yvj = jnp.asarray(y, jnp.int32), jnp.asarray(y_val, jnp.int32)
  kept, sizes, hist = [], [], {"train_nll": [], "val_nll": [], "val_accuracy": [], "rho": []}
  f_train = f_val = None
  best, best_t = np.inf, 0
  keys = jax.random.split(key, rounds)
  for t in range(rounds):
    state = init(keys[t], jnp.asarray(x[:1]))
    variables = {"params": state.params["members"], "state": state.state}
    if f_train is None:
      c = jax.eval_shape(lambda v, xb: ens1.apply(v, xb)[0], variables, x[:1]).shape[-1]
      lo, hi = min(y.min(), y_val.min()), max(y.max(), y_val.max())
      if lo < 0 or hi >= c or not np.issubdtype(y.dtype, np.integer):
        raise errors.LabelError(
            f"boost: labels (train and validation) span [{lo}, {hi}] with dtype {y.dtype}, "
            f"but the module has C={c} outputs. Fix: pass integer labels in [0, {c}).")
      counts = np.bincount(y, minlength=c).astype(np.float64) + 1.0
      f0 = jnp.asarray(np.log(counts / counts.sum()), jnp.float32)
      f_train = jnp.broadcast_to(f0, (len(x), c))
      f_val = jnp.broadcast_to(f0, (len(x_val), c))
    residuals = np.asarray(pseudo_residuals(f_train, yj))
    state, _ = _train.run_steps(step, state, x, residuals, num_steps=steps_per_round,
                                batch_size=batch_size, seed=seed + t)
    variables = _train.host_copy({"params": state.params["members"], "state": state.state})
    out_train = _train.batched_apply(ens1, variables, x)[0]
    out_val = _train.batched_apply(ens1, variables, x_val)[0]
    rho = float(_line_search(f_train, out_train, yj)) if line_search else 1.0
    w = nu * rho
    f_train = f_train + w * out_train
    f_val = f_val + w * out_val
    kept.append(variables)
    sizes.append(w)
    val_nll = float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(f_val, yvj)))
    hist["rho"].append(rho)
    hist["train_nll"].append(float(jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(f_train, yj))))
    hist["val_nll"].append(val_nll)
    hist["val_accuracy"].append(float(jnp.mean(jnp.argmax(f_val, -1) == yvj)))
    if val_nll < best:
      best, best_t = val_nll, t + 1
    elif t + 1 - best_t >= patience:
      break
  kept = kept[:best_t]
  stacked = jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *kept)
  return BoostResult(stacked, _train.linen_ensemble(module, best_t),
                     jnp.asarray(sizes[:best_t], jnp.float32), f0, best_t, hist)
