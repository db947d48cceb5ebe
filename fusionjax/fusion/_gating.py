"""Gating: a mixture of experts whose weights depend on the input."""
import jax

from fusionjax import errors
from fusionjax.fusion import _checks
from fusionjax.fusion import _mlp
from fusionjax.fusion._base import Fusion


def gating(num_members: int, hidden=32) -> Fusion:
  """A mixture of experts: a small network of ``x`` weighs the members.

  ``fused[b] = logsumexp_m(log_softmax(gate(x_b))[m] + log_softmax(z_m[b]))``,
  the log of ``sum_m g_m(x_b) softmax(z_m[b])`` with input-dependent weights
  ``g(x_b)`` on the simplex. ``gate`` is an MLP on the flattened input
  ``x.reshape(B, -1)`` (ReLU hidden layers, ``M`` outputs), or linear when
  ``hidden`` is ``None``. Both ``init`` and ``apply`` need ``x=``.

  Params: ``{'gate': ({'w': [D_in, D_out], 'b': [D_out]}, ...)}``, one dict per
  layer, LeCun-normal weights and zero biases.

  Args:
    num_members: M.
    hidden: hidden size(s) of the gate: an int, a sequence of ints, or
      ``None`` for a linear gate.

  Returns:
    A ``Fusion``: ``apply(params, member_logits [M, B, C], *, x [B, ...])
    -> [B, C]`` log-probabilities.

  Raises:
    FusionInputError: no ``x``, or ``x`` of another batch size or feature
      size than at ``init``.
    MemberOutputsError: member outputs that are not ``[num_members, B, C]``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from fusionjax import fusion
    >>> x = jnp.ones((8, 4, 4))                       # [B, ...] inputs
    >>> z = jnp.linspace(-3.0, 3.0, 240).reshape(3, 8, 10)  # [M, B, C]
    >>> f = fusion.gating(3, hidden=16)
    >>> params = f.init(jax.random.key(1), z, x=x)
    >>> jax.jit(f.apply)(params, z, x=x).shape
    (8, 10)

  References:
    Jacobs, Jordan, Nowlan and Hinton, "Adaptive Mixtures of Local Experts",
    Neural Computation 1991.
  """
  name = f"gating(num_members={num_members!r}, hidden={hidden!r})"
  num_members = _checks.positive_int(num_members, fusion=name,
                                     name="num_members")
  hs = _checks.sizes(hidden, fusion=name)

  def init(key, member_outputs, *, x=None):
    _, b, _ = _checks.member_outputs(member_outputs, fusion=name,
                                     num_members=num_members)
    xf = _checks.flat_input(x, b, fusion=name)
    return {"gate": _mlp.init(key, (xf.shape[1], *hs, num_members),
                              member_outputs.dtype)}

  def apply(params, member_outputs, *, x=None, key=None):
    del key
    _, b, _ = _checks.member_outputs(member_outputs, fusion=name,
                                     num_members=num_members)
    if not isinstance(params, dict) or "gate" not in params:
      raise errors.FusionConfigError(
          f"{name}: params must be {{'gate': ...}} from this fusion's init; "
          f"got {type(params).__name__}. Fix: params = f.init(key, outputs, "
          "x=x).")
    xf = _checks.flat_input(x, b, fusion=name,
                            features=_mlp.in_features(params["gate"]))
    log_g = jax.nn.log_softmax(
        _mlp.apply(params["gate"], xf.astype(member_outputs.dtype)), axis=-1)
    log_p = jax.nn.log_softmax(member_outputs, axis=-1)
    return jax.nn.logsumexp(log_g.T[:, :, None] + log_p, axis=0)

  return Fusion(init, apply)
