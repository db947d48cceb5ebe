"""The core fusion type: a pair of pure functions, in the style of optax."""
from typing import Any, Callable, NamedTuple


class Fusion(NamedTuple):
  """A fusion layer: two pure functions built by a factory.

  Attributes:
    init: ``(key, member_outputs [M, B, C], *, x=None) -> params`` (a pytree,
      possibly empty ``()``, for fusions without learnable parameters); ``x``
      is needed only by fusions that read the input (their params depend on
      its size), and combinators pass it to every fusion they hold.
    apply: ``(params, member_outputs [M, B, C], *, x=None, key=None) -> fused``.
      Classification fusions take member logits and return fused
      log-probabilities ``[B, C]``; regression fusions take member predictions.
      ``x`` reaches fusions that read the input (gating, stacking with
      passthrough).
  """
  init: Callable[..., Any]
  apply: Callable[..., Any]
