"""Bagging: per-member bootstrap samples of the training set."""
import jax
import jax.numpy as jnp


def bootstrap_indices(key: jax.Array, num_members: int, num_examples: int,
                      sample_size=None) -> jax.Array:
  """Draws one bootstrap sample (with replacement) per member.

  Args:
    key: PRNG key; the same key gives the same samples.
    num_members: ``M``.
    num_examples: ``N``, the size of the training set.
    sample_size: examples per member (default ``N``).

  Returns:
    ``int32 [M, sample_size]`` indices into the training set. Feed a batch of
    them to ``ensemble.apply(..., per_member=True)`` as ``x[idx]``.

  References:
    Breiman, 1996. Bagging predictors.
  """
  keys = jax.random.split(key, num_members)
  n = sample_size or num_examples
  draw = lambda k: jax.random.randint(k, (n,), 0, num_examples, dtype=jnp.int32)
  return jax.vmap(draw)(keys)


def out_of_bag_mask(indices: jax.Array, num_examples: int) -> jax.Array:
  """``bool [M, N]``: True where example ``n`` is not in member ``m``'s bootstrap."""
  in_bag = jax.vmap(lambda i: jnp.zeros(num_examples, bool).at[i].set(True))(indices)
  return ~in_bag
