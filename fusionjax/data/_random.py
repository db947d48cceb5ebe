"""Host-side randomness from JAX keys: a numpy Generator per key.

Shuffles, bootstrap draws and fold assignments are host work on index
arrays. Drawing them with numpy, seeded from the key's bits, keeps them
deterministic in the key (same key, same result; ``split``/``fold_in`` give
independent streams) without compiling a JAX program for every data-set size.
"""
from __future__ import annotations

import jax
import numpy as np


def key_bits(keys: jax.Array) -> np.ndarray:
  """The uint32 bits of a key (or a batch of keys): ``[..., words]``."""
  if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
    keys = jax.random.key_data(keys)
  return np.asarray(keys, np.uint32)


def numpy_rng(key: jax.Array) -> np.random.Generator:
  """A numpy Generator seeded with all the bits of one key."""
  return np.random.default_rng(key_bits(key).ravel().tolist())


def numpy_rngs(key: jax.Array, num: int) -> list[np.random.Generator]:
  """``num`` independent Generators, one per ``jax.random.split(key, num)``."""
  bits = key_bits(jax.random.split(key, num)).reshape(num, -1)
  return [np.random.default_rng(row.tolist()) for row in bits]
