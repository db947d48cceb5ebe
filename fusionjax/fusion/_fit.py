"""Fit a fusion's params on fixed member outputs (members frozen)."""
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from fusionjax import _validate, errors
from fusionjax.fusion._base import Fusion


def _nll(fused: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(fused, labels))


def fit(
    fusion: Fusion,
    member_outputs: Any,
    labels: Any,
    key: jax.Array,
    steps: int,
    tx: optax.GradientTransformation,
    *,
    x: Optional[Any] = None,
    loss: Optional[Callable[[Any, Any], jax.Array]] = None,
    params: Optional[Any] = None,
) -> tuple[Any, jax.Array]:
  """Fits a fusion's params with optax on fixed member outputs.

  Full-batch gradient descent, ``steps`` steps of ``tx`` in one jitted
  ``lax.scan``. The generic "members frozen, fusion learned on held-out data"
  helper: fit a stacking meta-learner on out-of-fold outputs, learned weights
  on a validation split, cascade thresholds, a gate.

  Args:
    fusion: the fusion to fit.
    member_outputs: ``[M, N, C]`` member outputs (kept fixed), or whatever the
      fusion consumes.
    labels: ``[N]`` integer labels (or targets, with a custom ``loss``).
    key: PRNG key: split for ``init`` and, one per step, for ``apply``.
    steps: number of optimisation steps.
    tx: an optax transformation, e.g. ``optax.adam(1e-1)``.
    x: the inputs ``[N, ...]``, for fusions that read them.
    loss: ``loss(fused, labels) -> scalar``; default: the mean of
      ``optax.softmax_cross_entropy_with_integer_labels`` (fused log-probs
      are valid logits).
    params: start from these params instead of ``fusion.init``.

  Returns:
    ``(params, losses)``: the fitted params and the loss before each step,
    ``[steps]``.

  Raises:
    BatchShapeError: labels whose leading dim differs from the outputs' N.
    FusionConfigError: ``steps < 1``.
    EmptySplitError: no samples (N = 0).
    NonFiniteInputError: member outputs (or ``x``) holding NaN or Inf.
    LabelError: with the default loss, labels that are not integer class
      indices ``[N]`` in ``[0, C)`` (checked once, on the host).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from fusionjax import fusion
    >>> labels = jnp.arange(6) % 2
    >>> good = 4.0 * jax.nn.one_hot(labels, 2)
    >>> z = jnp.stack([good, -good])                  # member 1 is wrong
    >>> f = fusion.weighted(2)
    >>> params, losses = fusion.fit(f, z, labels, jax.random.key(0), 100,
    ...                             optax.adam(0.1))
    >>> bool(jax.nn.softmax(params['logits'])[0] > 0.95)
    True

  References:
    Wolpert, "Stacked Generalization", Neural Networks 1992 (fitting the
    combiner on held-out predictions).
  """
  if not isinstance(steps, int) or steps < 1:
    raise errors.FusionConfigError(
        f"fit: steps={steps!r} must be an int >= 1. Fix: e.g. steps=200.")
  member_outputs = jax.tree.map(jnp.asarray, member_outputs)
  labels = jnp.asarray(labels)
  leaves = jax.tree.leaves(member_outputs)
  n = leaves[0].shape[1] if leaves and leaves[0].ndim >= 2 else None
  if n == 0:
    raise errors.EmptySplitError(
        f"fit: member outputs of shape {leaves[0].shape} hold no samples (N=0). Fix: "
        "pass the outputs of at least one held-out example.")
  if _validate.concrete(leaves, x, labels):
    for i, leaf in enumerate(leaves):
      if leaf.ndim >= 2:  # [M, N, ...]: rows are samples along axis 1
        _validate.finite_inputs(jnp.moveaxis(leaf, 1, 0),
                                "fit: the member outputs" + (f" (leaf {i})" if i else ""))
    if x is not None:
      for leaf in jax.tree.leaves(x):
        _validate.finite_inputs(leaf, "fit: x")
    if loss is None and leaves and leaves[0].ndim == 3:
      labels = jnp.asarray(_validate.class_labels(labels, leaves[0].shape[-1],
                                                  "fit: the labels"))
  if n is not None and (labels.ndim < 1 or labels.shape[0] != n):
    raise errors.BatchShapeError(
        f"fit: labels of shape {labels.shape} for member outputs of shape "
        f"{leaves[0].shape} (N={n} samples on axis 1). Fix: pass one label "
        "per sample, [N].")
  loss_fn = _nll if loss is None else loss
  init_key, apply_key = jax.random.split(key)
  if params is None:
    params = fusion.init(init_key, member_outputs, x=x)
  return _run(fusion, tx, loss_fn, params, member_outputs, labels, x,
              jax.random.split(apply_key, steps))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _run(fusion, tx, loss_fn, params, member_outputs, labels, x, keys):
  """``len(keys)`` steps of ``tx``; compiled once per (fusion, tx, loss, shapes)."""

  def objective(p, k):
    return loss_fn(fusion.apply(p, member_outputs, x=x, key=k), labels)

  def step(carry, k):
    p, opt_state = carry
    value, grads = jax.value_and_grad(objective)(p, k)
    updates, opt_state = tx.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), value

  (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), keys)
  return params, losses


# The name the stacking design uses for the same helper: fit a meta-learner on
# fixed (out-of-fold) member outputs.
fit_meta = fit
