"""A tiny hand-written MLP (params are a tuple of ``{'w', 'b'}`` dicts).

Used by the learned meta-learners (stacking, gating). Hand-written rather than
a Flax module so that params are a plain pytree whose layout the docstrings can
state exactly.
"""
import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def init(key: jax.Array, sizes: tuple[int, ...], dtype=jnp.float32,
         zero: bool = False) -> tuple:
  """LeCun-normal weights, zero biases; ``zero=True`` gives all-zero weights.

  Jitted (one small program instead of one per random primitive).
  """
  layers = []
  keys = jax.random.split(key, max(len(sizes) - 1, 1))
  for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:]):
    if zero:
      w = jnp.zeros((n_in, n_out), dtype)
    else:
      w = jax.random.normal(k, (n_in, n_out), dtype) / jnp.sqrt(
          jnp.asarray(n_in, dtype))
    layers.append({"w": w, "b": jnp.zeros((n_out,), dtype)})
  return tuple(layers)


def apply(params: tuple, h: jax.Array) -> jax.Array:
  """ReLU between layers, none after the last."""
  for i, layer in enumerate(params):
    b = layer["b"].reshape((1,) * (h.ndim - 1) + layer["b"].shape)
    h = h @ layer["w"] + b  # explicit broadcast: fine under rank_promotion='raise'
    if i < len(params) - 1:
      h = jax.nn.relu(h)
  return h


def in_features(params: tuple) -> int:
  return int(params[0]["w"].shape[0])
