"""Shared plumbing: one member trained with the engine's step, and argument checks.

Every training-time integration method here trains members with
:func:`fusionjax.train.make_step` (a 1-member ensemble when members are added
one after another). This module holds the small loop around that step (a
keyed epoch order on the host, a jitted state init that can be reused for many
members without recompiling) and the range checks that raise
:class:`~fusionjax.errors.IntegrationConfigError`.
"""
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fusionjax import errors
from fusionjax.data import pipeline
from fusionjax.data._pipeline import close as pipeline_close
from fusionjax.ensemble import Ensemble, from_linen
from fusionjax.train import TrainState, make_step


def _is_number(value) -> bool:
  return (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
          and bool(np.isfinite(value)))


def check_positive(value, name: str, where: str):
  """Raises IntegrationConfigError unless ``value`` is a finite number ``> 0``."""
  if not (_is_number(value) and value > 0):
    raise errors.IntegrationConfigError(
        f"{where}: {name}={value!r} must be a finite number > 0. Fix: pass a positive "
        f"value, e.g. {name}=0.1.")
  return float(value)


def check_int(value, name: str, where: str, minimum: int = 1):
  """Raises IntegrationConfigError unless ``value`` is an integer ``>= minimum``."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise errors.IntegrationConfigError(
        f"{where}: {name}={value!r} must be an integer >= {minimum}. Fix: pass e.g. "
        f"{name}={max(minimum, 1)}.")
  return int(value)


def check_unit_interval(value, name: str, where: str, *, open_left: bool = True):
  """Raises IntegrationConfigError unless ``value`` is in ``(0, 1]`` (or ``[0, 1]``)."""
  ok = _is_number(value) and (value > 0 if open_left else value >= 0) and value <= 1
  if not ok:
    rng = "(0, 1]" if open_left else "[0, 1]"
    raise errors.IntegrationConfigError(
        f"{where}: {name}={value!r} is outside {rng}. Fix: pass a value in {rng}, "
        f"e.g. {name}=0.5.")
  return float(value)


def check_xy(x, y, where: str):
  """``(x, y)`` as numpy arrays with matching, non-empty leading dims."""
  x, y = np.asarray(x), np.asarray(y)
  if len(x) == 0 or len(x) != len(y):
    raise errors.BatchShapeError(
        f"{where}: x has {len(x)} examples and y has {len(y)}. Fix: pass matching, "
        "non-empty arrays x [N, ...] and y [N].")
  return x, y


_ENSEMBLES = {}


def linen_ensemble(module, size: int) -> Ensemble:
  """``from_linen(module, size)``, memoised on the (hashable, frozen) Linen module.

  The same module and size give the same :class:`Ensemble` object, so its
  ``init`` and ``apply`` keep their compiled programs across calls (JAX caches
  ``jax.jit`` by function): a boosting run, a snapshot run and a distilled
  student of one architecture compile the member init once.
  """
  try:
    key = (module, int(size))
    hash(key)
  except TypeError:
    return from_linen(module, size)
  if key not in _ENSEMBLES:
    _ENSEMBLES[key] = from_linen(module, size)
  return _ENSEMBLES[key]


def make_init(ensemble: Ensemble, tx: optax.GradientTransformation) -> Callable:
  """``(key, x_example) -> TrainState``, equal to :func:`fusionjax.train.init`.

  Same keys, params and optimizer state as ``fusionjax.train.init(ensemble,
  tx, key, x)`` with no fusion (a test holds it to that), but the member init
  is ``jax.jit(ensemble.init)``, compiled once per ensemble and reused for
  every member added later (boosting) and every run of the same architecture;
  only the cheap optimizer init is compiled per call.
  """
  member_init = jax.jit(ensemble.init)
  opt_init = jax.jit(lambda params: ensemble.member_map(tx.init, params))

  def init(key, x):
    k_members, _, k_step = jax.random.split(key, 3)
    variables = member_init(k_members, jnp.asarray(x))
    params = {"members": variables["params"], "fusion": ()}
    return TrainState(jnp.zeros((), jnp.int32), params, variables["state"],
                      opt_init(params["members"]), (), k_step,
                      jnp.zeros((ensemble.size,), bool))

  return init


def start_state(ensemble: Ensemble, tx: optax.GradientTransformation, key: jax.Array, x,
                init_variables=None) -> TrainState:
  """The train state a single run starts from: fresh, or from ``init_variables``.

  ``init_variables`` (``{'params', 'state'}``, leaves ``[M, ...]``) replace the
  fresh members; the optimizer state is initialised on them.
  """
  state = make_init(ensemble, tx)(key, x[:1])
  if init_variables is None:
    return state
  # Copies (jnp.array), since the step donates the state's buffers.
  params = {"members": jax.tree.map(jnp.array, init_variables["params"]), "fusion": ()}
  return state._replace(params=params,
                        state=jax.tree.map(jnp.array, init_variables.get("state", {})),
                        opt_state=ensemble.member_map(tx.init, params["members"]))


def variables_of(state_or_variables) -> dict:
  """``{'params', 'state'}`` of a TrainState (members only) or a variables dict."""
  if isinstance(state_or_variables, TrainState):
    return {"params": state_or_variables.params["members"], "state": state_or_variables.state}
  if isinstance(state_or_variables, dict) and "params" in state_or_variables:
    return {"params": state_or_variables["params"],
            "state": state_or_variables.get("state", {})}
  raise TypeError("Expected a fusionjax.train.TrainState or variables {'params', 'state'}; "
                  f"got {type(state_or_variables).__name__}.")


def host_copy(tree):
  """A host (numpy) copy of a pytree: safe from the step's buffer donation."""
  return jax.tree.map(np.array, jax.device_get(tree))


def run_steps(step: Callable, state: TrainState, x: np.ndarray, targets: np.ndarray, *,
              num_steps: int, batch_size: int, seed: int = 0,
              indices: Optional[np.ndarray] = None,
              callback: Optional[Callable[[int, TrainState], None]] = None):
  """Runs ``num_steps`` steps of ``step`` over keyed epochs of ``(x, targets)``.

  Args:
    step: from :func:`fusionjax.train.make_step` (donates its input state).
    state: the start state.
    x, targets: host arrays ``[N, ...]``.
    num_steps: steps to run.
    batch_size: examples per step (capped at ``N``; partial batches dropped).
    seed: seed of the data order (epoch ``e`` uses ``(seed, e)``; see
      :func:`fusionjax.data.pipeline`, which makes the batches).
    indices: optional per-member bootstrap indices ``[M, N']``: member ``m``
      goes through row ``m`` in its own order (``per_member=True`` steps).
    callback: ``(t, state)`` called after step ``t`` (0-based); copy what you
      keep (the next step donates the state's buffers).

  Returns:
    ``(state, losses [num_steps])``.
  """
  n = len(x) if indices is None else indices.shape[1]
  batch_size = min(check_int(batch_size, "batch_size", "training"), n)
  per_epoch = n // batch_size
  # The one data pipeline (fusionjax.data.pipeline): epoch e's order is
  # default_rng([seed, e]); per-member rows each in their own order.
  batches = iter(pipeline((x, targets), batch_size, seed=seed, drop_last=True,
                          num_epochs=-(-num_steps // per_epoch), indices=indices).dataset)
  losses = []
  try:
    for t in range(num_steps):
      b = next(batches)  # equal rows, whole batches: every mask entry is True
      state, logs = step(state, {"x": b["x"], "y": b["y"]})
      losses.append(logs["loss"])
      if callback is not None:
        callback(t, state)
  finally:
    pipeline_close(batches)
  return state, np.asarray(jax.device_get(losses), np.float32).reshape(num_steps)


def train_member(ensemble: Ensemble, tx: optax.GradientTransformation, x, targets, *,
                 key: jax.Array, num_steps: int, batch_size: int,
                 loss: Optional[Callable] = None, seed: int = 0,
                 callback=None) -> Any:
  """Initialises and trains ``ensemble`` with the engine's step (one call, one compile)."""
  kwargs = {} if loss is None else {"loss": loss}
  step = make_step(ensemble, tx, x_example=x[:1], **kwargs)
  state = make_init(ensemble, tx)(key, jnp.asarray(x[:1]))
  return run_steps(step, state, x, targets, num_steps=num_steps, batch_size=batch_size,
                   seed=seed, callback=callback)


def batched_apply(ensemble: Ensemble, variables, x, batch_size: int = 1024) -> jax.Array:
  """Member outputs ``[M, N, C]`` over ``x`` in batches (eval mode).

  ``jax.jit(ensemble.apply)`` is cached by JAX on the function, so repeated
  calls with one ensemble compile once per batch shape.
  """
  apply = jax.jit(ensemble.apply)
  outs = [apply(variables, jnp.asarray(x[i:i + batch_size]))[0]
          for i in range(0, len(x), batch_size)]
  return jnp.concatenate(outs, axis=1)
