"""Per-member losses: ``(outputs [..., B, C], targets, mask) -> [...]``, a mean over the batch."""
import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, mask=None) -> jax.Array:
  """Mean softmax cross-entropy over the batch (log-probs are valid logits).

  ``logits`` may carry leading member axes: ``[..., B, C]`` gives ``[...]``.
  ``mask [B]`` (from a padded last batch) excludes rows.
  """
  losses = optax.softmax_cross_entropy_with_integer_labels(
      logits, jnp.broadcast_to(labels, logits.shape[:-1]))
  if mask is None:
    return jnp.mean(losses, axis=-1)
  mask = mask.astype(losses.dtype)
  return jnp.sum(losses * mask, axis=-1) / jnp.maximum(jnp.sum(mask), 1.0)


def squared_error(preds: jax.Array, targets: jax.Array, mask=None) -> jax.Array:
  """Mean squared error over the batch for regression members ``[..., B, D]``."""
  losses = jnp.sum((preds - targets) ** 2, axis=-1)
  if mask is None:
    return jnp.mean(losses, axis=-1)
  mask = mask.astype(losses.dtype)
  return jnp.sum(losses * mask, axis=-1) / jnp.maximum(jnp.sum(mask), 1.0)


def gaussian_params(outputs: jax.Array):
  """``(mean, var)`` from a regression head's ``[..., B, 2]`` outputs.

  The second output is made a positive variance with ``softplus(.) + 1e-6``,
  as in Deep Ensembles (Lakshminarayanan et al., 2017).
  """
  return outputs[..., 0], jax.nn.softplus(outputs[..., 1]) + 1e-6


def gaussian_nll(outputs: jax.Array, targets: jax.Array, mask=None) -> jax.Array:
  """Mean Gaussian negative log-likelihood over the batch (Deep Ensembles' regression loss).

  ``outputs [..., B, 2]`` are (mean, raw variance) per example, see
  :func:`gaussian_params`; ``targets [B]`` are real numbers.
  """
  mean, var = gaussian_params(outputs)
  targets = jnp.broadcast_to(targets.astype(mean.dtype), mean.shape)
  losses = 0.5 * jnp.log(2 * jnp.pi * var) + jnp.square(targets - mean) / (2 * var)
  if mask is None:
    return jnp.mean(losses, axis=-1)
  mask = mask.astype(losses.dtype)
  return jnp.sum(losses * mask, axis=-1) / jnp.maximum(jnp.sum(mask), 1.0)
