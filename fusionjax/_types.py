"""Type aliases shared across fusionjax.

The contract every part relies on:

* ``Params``: a pytree whose every leaf has the member axis first, ``[M, ...]``.
* ``MemberOutputs``: ``[M, B, C]`` (logits for classification, predictions for
  regression), members in a fixed, named order.
"""
from typing import Any

import jax

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # pytree, every leaf [M, ...]
Variables = Any  # {'params': Params, 'state': pytree of non-trainable collections}
MemberOutputs = jax.Array  # [M, B, C]
LogProbs = jax.Array  # [B, C]
