"""Keyed image augmentation, in JAX (jittable, any leading batch dims)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=("padding", "flip"))
def crop_flip(
    key: jax.Array, images: jax.Array, *, padding: int = 4, flip: bool = True,
    fill: float | jax.Array = 0.0,
) -> jax.Array:
  """Random crop after padding, and random horizontal flip, per image.

  The standard CIFAR augmentation: pad ``padding`` pixels on each side, crop
  back to ``H x W`` at a random offset, flip left-right with probability 1/2.
  Padding is with ``fill`` (default 0: on mean-normalised images that is the
  mean pixel). With ``flip=False`` this is a random translation by up to
  ``padding`` pixels; for MNIST-like digits on a blank background pass the
  background's value as ``fill`` (after mean/std normalisation a blank MNIST
  pixel is ``-0.1307 / 0.3081``, not 0).

  Args:
    key: a JAX PRNG key; the same key gives the same crops and flips.
    images: ``[..., H, W, C]`` (``[B, 32, 32, 3]``, or per-member
      ``[M, B, 32, 32, 3]``).
    padding: pixels of padding on each side.
    flip: also flip horizontally.
    fill: the value of the padding (a scalar).

  Returns:
    Augmented images, same shape and dtype.

  Example:
    >>> out = crop_flip(jax.random.key(0), jnp.ones((8, 32, 32, 3)))
    >>> out.shape
    (8, 32, 32, 3)

  References:
    He et al., "Deep residual learning for image recognition", CVPR 2016,
    section 4.2 (4-pixel padding, 32x32 crops, horizontal flips).
  """
  images = jnp.asarray(images)
  if jnp.ndim(fill) != 0:
    raise ValueError(f"crop_flip: fill must be a scalar (one padding value for every "
                     f"channel); got shape {jnp.shape(fill)}.")
  *lead, h, w, c = images.shape
  flat = images.reshape(-1, h, w, c)
  k_offset, k_flip = jax.random.split(key)
  offsets = jax.random.randint(k_offset, (flat.shape[0], 2), 0, 2 * padding + 1)
  flips = jax.random.bernoulli(k_flip, 0.5, (flat.shape[0],)) & flip
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  padded = jnp.pad(flat, pad, constant_values=jnp.asarray(fill, flat.dtype))

  def one(image, offset, flip_it):
    crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
    return jnp.where(flip_it, crop[:, ::-1], crop)

  return jax.vmap(one)(padded, offsets, flips).reshape(images.shape)
