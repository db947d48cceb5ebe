"""Efficient members: ensembles whose members share one network's weights.

BatchEnsemble (:func:`batch_ensemble`), Packed-Ensembles (:func:`packed`) and
MC-dropout (:func:`mc_dropout`) are one network whose forward pass gives M
member outputs ``[M, B, C]``, so every fusion and metric reads them unchanged.
Their params are *not* stacked per member (``Ensemble.shared`` names the
kind), so they train as one network with one optimizer: the training engine's
``'native'`` layout (``fusionjax.train.make_trainer`` picks it for them).
Anything that acts on one member alone (bagging, freezing a member, a
per-member optimizer, a ``'member'`` mesh axis) raises
:class:`~fusionjax.errors.SharedWeightsError`.

The three differ in what the members share:

* BatchEnsemble: every ``nn.Dense`` and ``nn.Conv`` of a Linen module is shared;
  each member adds rank-one factors ``r_m`` (input side), ``s_m`` (output
  side) and its own bias. The input is tiled M times along the batch.
* Packed-Ensembles: M independent sub-networks of width ``alpha * width / M``,
  packed into one network of grouped convolutions and block-diagonal dense
  layers (members share nothing but the program).
* MC-dropout: one network with dropout; member m is the m-th dropout sample.
"""
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fusionjax import errors
from fusionjax.ensemble._base import Ensemble, _check_batch, _check_size
from fusionjax.ensemble._flax import _takes_train

KINDS = ("batch_ensemble", "packed", "mc_dropout")


def _refuse_per_member(kind: str, what: str):
  raise errors.SharedWeightsError(
      f"{what} acts on one member alone, but this {kind} ensemble's members share one "
      "network's weights (its params are not stacked per member). Fix: train it as one "
      "network (fusionjax.train.make_trainer / fit with layout='auto' or 'native', "
      "without bagging or on_nonfinite='freeze'), or use a deep ensemble "
      "(fusionjax.ensemble.from_linen) for per-member training.")


def _native(init, apply, size: int, kind: str, name: str) -> Ensemble:
  """An :class:`Ensemble` of shared weights: member_map refuses, split/join are identities."""

  def member_map(f, *trees, num_outputs=None):
    del f, trees, num_outputs
    _refuse_per_member(kind, "Ensemble.member_map (a per-member optimizer or update)")

  def checked_apply(variables, x, *, key=None, train=False, per_member=False):
    if per_member:
      _refuse_per_member(kind, "per_member=True (a batch per member, e.g. bagging)")
    _check_batch(x, size, False)
    return apply(variables, x, key=key, train=train)

  identity = lambda a: a
  names = tuple(f"{name}{i}" for i in range(size))
  return Ensemble(init, checked_apply, size, names, {name: (0, size)}, member_map,
                  identity, identity, shared=kind)


def _call(module, train_kw, variables, x, *, rngs, train, mutable):
  kw = {"train": train} if train_kw else {}
  if mutable:
    return module.apply(variables, x, rngs=rngs, mutable=mutable, **kw)
  return module.apply(variables, x, rngs=rngs, **kw), None


def _split_variables(variables):
  variables = dict(variables)
  return {"params": variables.pop("params", {}), "state": variables}


# ----------------------------------------------------------------------------
# BatchEnsemble
# ----------------------------------------------------------------------------
def _fast_init(std: float):
  def init(key, shape, dtype=jnp.float32):
    return 1.0 + std * jax.random.normal(key, shape, dtype)
  return init


def _member_factors(size: int, std: float):
  """The interceptor that turns every ``nn.Dense`` / ``nn.Conv`` into a BatchEnsemble layer.

  Inputs arrive tiled, ``[M * B, ..., d_in]`` with member m's rows at
  ``[m * B, (m + 1) * B)``; member m computes
  ``(layer(x * r_m)) * s_m + b_m``.
  """

  def per_member(a, v):  # a [M * B, ..., d], v [M, d]: row block m times v[m]
    blocks = a.reshape((size, -1) + a.shape[1:])
    v = v.reshape((size,) + (1,) * (blocks.ndim - 2) + v.shape[-1:])
    return blocks, v

  def interceptor(next_fun, args, kwargs, context):
    layer = context.module
    if context.method_name != "__call__" or not isinstance(layer, (nn.Dense, nn.Conv)):
      return next_fun(*args, **kwargs)
    x = args[0]
    r = layer.param("fast_r", _fast_init(std), (size, x.shape[-1]), layer.param_dtype)
    xs, rv = per_member(x, r)
    y = next_fun((xs * rv).astype(x.dtype).reshape(x.shape), *args[1:], **kwargs)
    s = layer.param("fast_s", _fast_init(std), (size, y.shape[-1]), layer.param_dtype)
    b = layer.param("member_bias", nn.initializers.zeros, (size, y.shape[-1]),
                    layer.param_dtype)
    ys, sv = per_member(y, s)
    _, bv = per_member(y, b)
    return (ys * sv + bv).astype(y.dtype).reshape(y.shape)

  return interceptor


def batch_ensemble(module: nn.Module, members: int, *, fast_std: float = 0.5,
                   name: Optional[str] = None) -> Ensemble:
  """BatchEnsemble of a Linen module: shared weights, rank-one factors per member.

  Every ``nn.Dense`` and ``nn.Conv`` inside ``module`` (at any depth) becomes a
  BatchEnsemble layer: its kernel and bias ``W, b`` are shared, and member
  ``m`` has fast weights ``r_m`` (one per input feature or channel), ``s_m``
  (one per output) and a bias ``b_m``, so that it computes
  ``((x * r_m) W + b) * s_m + b_m``: the layer of Wen et al. with the shared
  bias kept (and scaled by ``s_m``), ``b_m`` starting at zero. The member
  weights ``W * outer(r_m, s_m)`` are never formed: the input is tiled M times
  along the batch (``[M * B, ...]``), so a forward pass costs M passes of the
  shared network, in one program whose convolutions are ordinary (not
  grouped) ones. Other layers see the tiled batch as it is: BatchNorm
  statistics are taken over all ``M * B`` rows, and dropout draws one mask per
  row.

  Args:
    module: a Linen module mapping ``[B, ...]`` to ``[B, C]`` (called with
      ``train=`` when its ``__call__`` takes it, as in ``from_linen``).
    members: the member count ``M >= 1``.
    fast_std: ``r`` and ``s`` start at ``N(1, fast_std**2)`` (the Gaussian
      initialiser of uncertainty-baselines' BatchEnsemble models); 0 starts
      every member as the shared network.
    name: prefix of the member names (default ``'be'``).

  Returns:
    An :class:`~fusionjax.ensemble.Ensemble` with ``shared='batch_ensemble'``;
    ``apply`` gives ``[M, B, C]``. Its params are one network's (each layer's
    ``kernel``/``bias`` plus ``fast_r [M, d_in]``, ``fast_s [M, d_out]`` and
    ``member_bias [M, d_out]``).

  Example:
    >>> import jax, jax.numpy as jnp, fusionjax as fj
    >>> ens = batch_ensemble(fj.models.MLP(10, (32,)), members=4)
    >>> v = ens.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))
    >>> ens.apply(v, jnp.ones((5, 8, 8, 1)))[0].shape
    (4, 5, 10)
    >>> v['params']['Dense_0']['fast_r'].shape
    (4, 64)

  References:
    Wen, Tran & Ba, 2020. BatchEnsemble: an alternative approach to efficient
    ensemble and lifelong learning. ICLR.
  """
  _check_size(members)
  if not fast_std >= 0:
    raise errors.EfficientEnsembleConfigError(
        f"batch_ensemble: fast_std={fast_std!r} must be >= 0. Fix: e.g. fast_std=0.5.")
  train_kw = _takes_train(module.__call__)
  interceptor = _member_factors(members, float(fast_std))
  tile = lambda x: jax.tree.map(lambda a: jnp.concatenate([a] * members, axis=0), x)

  def untile(out):
    return out.reshape((members, -1) + out.shape[1:])

  def init(key, x):
    _check_batch(x, members, False)
    pkey, dkey = jax.random.split(key)
    with nn.intercept_methods(interceptor):
      kw = {"train": False} if train_kw else {}
      return _split_variables(module.init({"params": pkey, "dropout": dkey}, tile(x), **kw))

  def apply(variables, x, *, key=None, train=False):
    state = variables.get("state", {})
    full = {"params": variables["params"], **state}
    rngs = {} if key is None else {"dropout": key}
    with nn.intercept_methods(interceptor):
      out, new_state = _call(module, train_kw, full, tile(x), rngs=rngs, train=train,
                             mutable=list(state) if (train and state) else False)
    return untile(out), (dict(new_state) if new_state is not None else state)

  return _native(init, apply, members, "batch_ensemble", name or "be")


# ----------------------------------------------------------------------------
# Packed-Ensembles
# ----------------------------------------------------------------------------
class PackedDense(nn.Module):
  """A block-diagonal dense layer: ``groups`` independent ``Dense`` layers side by side.

  Input ``[B, groups * d_in]``, output ``[B, features]`` (``features`` divisible
  by ``groups``); group g's outputs read only group g's inputs.

  Attributes:
    features: total outputs.
    groups: the number of blocks.
  """
  features: int
  groups: int = 1

  @nn.compact
  def __call__(self, x):
    b, d = x.shape
    g = self.groups
    kernel = self.param("kernel", nn.initializers.lecun_normal(batch_axis=(0,)),
                        (g, d // g, self.features // g))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    y = jnp.einsum("bgi,gio->bgo", x.reshape(b, g, d // g), kernel)
    return y.reshape(b, self.features) + bias


def _packed_width(width: int, alpha: float, groups: int) -> int:
  """``alpha * width`` rounded up to a multiple of ``groups`` (at least one per group)."""
  return max(1, math.ceil(alpha * width / groups)) * groups


class PackedNet(nn.Module):
  """Packed-Ensembles of :class:`~fusionjax.models.MLP`, ``CNN`` or ``CNN1D``.

  The base network's layers with every width multiplied by ``alpha`` (rounded
  up to a multiple of ``members * gamma``); the first layer is an ordinary one
  (its output channels are split among the members), the others are grouped
  into ``members * gamma`` groups (grouped convolutions, :class:`PackedDense`),
  and the output layer into ``members`` groups of ``num_classes``. Member m
  owns the m-th block of channels of every layer, so the members are
  independent networks of width ``alpha * width / members``.

  Attributes:
    base: the :class:`~fusionjax.models.MLP`, ``CNN`` or ``CNN1D`` whose
      fields (widths, dropout, kernel) give the layout.
    members, alpha, gamma: as in :func:`packed`.
  """
  base: Any
  members: int
  alpha: float = 2.0
  gamma: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    from fusionjax import models  # pylint: disable=g-import-not-at-top
    m, g = self.members, self.members * self.gamma
    net = self.base
    first = True

    def dropout(h):
      if net.dropout:
        h = nn.Dropout(net.dropout, deterministic=not train)(h)
      return h

    if isinstance(net, models.MLP):
      h = x.reshape((x.shape[0], -1))
      for width in net.features:
        w = _packed_width(width, self.alpha, g)
        h = nn.Dense(w)(h) if first else PackedDense(w, g)(h)
        h = dropout(nn.relu(h))
        first = False
    else:
      conv_cnn = isinstance(net, models.CNN)
      kernel = (5, 5) if conv_cnn else (net.kernel,)
      h = x
      if conv_cnn and x.ndim == 3:
        h = x[..., None]
      if not conv_cnn and x.ndim == 2:
        h = x[..., None]
      for width in net.features:
        w = _packed_width(width, self.alpha, g)
        h = nn.Conv(w, kernel, padding="SAME", feature_group_count=1 if first else g)(h)
        h = models.max_pool(nn.relu(h), 2)
        first = False
      b, c = h.shape[0], h.shape[-1]
      if first:  # no convolution: the input, shared by every member
        h = h.reshape((b, -1))
      else:  # flatten member by member: member m's channels stay one block
        h = jnp.moveaxis(h.reshape((b, -1, m, c // m)), 2, 1).reshape((b, -1))
      w = _packed_width(net.hidden, self.alpha, g)
      h = nn.Dense(w)(h) if first else PackedDense(w, g)(h)
      h = dropout(nn.relu(h))
      first = False
    c = net.num_classes
    out = nn.Dense(c * m)(h) if first else PackedDense(c * m, m)(h)
    return jnp.moveaxis(out.reshape((out.shape[0], m, c)), 1, 0)  # [M, B, C]


def packed(module: nn.Module, members: int, *, alpha: float = 2.0, gamma: int = 1,
           name: Optional[str] = None) -> Ensemble:
  """Packed-Ensembles: M independent sub-networks packed into one grouped network.

  ``module`` is a spec, a :class:`~fusionjax.models.MLP`, ``CNN`` or ``CNN1D``
  whose fields give the base layout; the ensemble is :class:`PackedNet`: every
  width times ``alpha``, split into ``members`` blocks (and ``gamma`` groups
  per member), so each member is a network ``alpha / members`` as wide as the
  base one, and all of them run as one network of grouped layers. With
  ``members=1, alpha=1, gamma=1`` it is the base network itself.

  Args:
    module: the base network (``MLP``, ``CNN`` or ``CNN1D``).
    members: the member count ``M >= 1``.
    alpha: width factor of the packed network (the paper's alpha; 2 by default).
    gamma: groups per member in every layer but the first and the last (1: a
      member's layers are dense within the member).
    name: prefix of the member names (default ``'packed'``).

  Returns:
    An :class:`~fusionjax.ensemble.Ensemble` with ``shared='packed'``.

  Raises:
    EfficientEnsembleConfigError: another module, ``alpha <= 0`` or ``gamma < 1``.

  Example:
    >>> import jax, jax.numpy as jnp, fusionjax as fj
    >>> ens = packed(fj.models.CNN(10, (8, 16), 32), members=4, alpha=2)
    >>> v = ens.init(jax.random.key(0), jnp.ones((1, 28, 28, 1)))
    >>> ens.apply(v, jnp.ones((3, 28, 28, 1)))[0].shape
    (4, 3, 10)

  References:
    Laurent, Lafage, Tartaglione, Daniel, Martinez, Bursuc & Franchi, 2023.
    Packed-Ensembles for efficient uncertainty estimation. ICLR.
  """
  from fusionjax import models  # pylint: disable=g-import-not-at-top
  _check_size(members)
  if not isinstance(module, (models.MLP, models.CNN, models.CNN1D)):
    raise errors.EfficientEnsembleConfigError(
        f"packed() builds Packed-Ensembles of fusionjax.models.MLP, CNN or CNN1D; got "
        f"{type(module).__name__}. Fix: describe the base network as one of those (e.g. "
        "fusionjax.models.CNN(10, (32, 64), 128)), or use batch_ensemble(module, ...), "
        "which takes any Linen module.")
  if not alpha > 0 or not isinstance(gamma, int) or gamma < 1:
    raise errors.EfficientEnsembleConfigError(
        f"packed(alpha={alpha!r}, gamma={gamma!r}): alpha must be > 0 and gamma an int "
        ">= 1. Fix: e.g. alpha=2, gamma=1 (the paper's defaults).")
  net = PackedNet(module, members, float(alpha), gamma)

  def init(key, x):
    _check_batch(x, members, False)
    pkey, dkey = jax.random.split(key)
    return _split_variables(net.init({"params": pkey, "dropout": dkey}, x, train=False))

  def apply(variables, x, *, key=None, train=False):
    rngs = {} if key is None else {"dropout": key}
    out = net.apply({"params": variables["params"]}, x, rngs=rngs, train=train)
    return out, variables.get("state", {})

  return _native(init, apply, members, "packed", name or "packed")


# ----------------------------------------------------------------------------
# MC-dropout
# ----------------------------------------------------------------------------
def mc_dropout(module: nn.Module, members: int, *, rate: Optional[float] = None,
               train_samples: int = 1, seed: int = 0,
               name: Optional[str] = None) -> Ensemble:
  """MC-dropout: one network with dropout, member m its m-th dropout sample.

  Members are M forward passes with dropout on, each with its own key (the
  module's ``train=True``), at training and at prediction. Sampling is a
  ``vmap`` over the keys, so layers before the first dropout run once.
  Without a ``key``, ``apply`` samples from keys split from ``seed``, so
  predictions are reproducible (the same M masks stream every call).

  Training (``fusionjax.train`` calls ``apply(..., train=True, key=k)``): with
  ``train_samples=1`` (the default) one dropout sample is drawn per step and
  broadcast to the M member outputs, so the member losses are equal and
  their mean is the loss of ordinary dropout training, at the cost of one
  network; ``train_samples=members`` draws M samples (M forward passes, the
  same gradient in expectation, less variance).

  Args:
    module: a Linen module with dropout whose ``__call__`` takes ``train``
      (e.g. ``fusionjax.models.CNN(10, dropout=0.5)``) and has no other
      mutable collection (BatchNorm would switch to batch statistics with the
      ``train`` flag that switches dropout on).
    members: the number of samples ``M >= 1``.
    rate: when given, replaces the module's ``dropout`` attribute.
    train_samples: 1 or ``members`` (above).
    seed: the seed of the prediction keys used when ``apply`` gets no key.
    name: prefix of the member names (default ``'mcd'``).

  Returns:
    An :class:`~fusionjax.ensemble.Ensemble` with ``shared='mc_dropout'``.

  Raises:
    EfficientEnsembleConfigError: a module without ``train`` (or without
      ``dropout`` when ``rate`` is given), with BatchNorm-like state, or
      ``train_samples`` other than 1 and ``members``.

  Example:
    >>> import jax, jax.numpy as jnp, fusionjax as fj
    >>> ens = mc_dropout(fj.models.MLP(10, (32,)), members=4, rate=0.5)
    >>> v = ens.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))
    >>> ens.apply(v, jnp.ones((5, 8, 8, 1)))[0].shape
    (4, 5, 10)

  References:
    Gal & Ghahramani, 2016. Dropout as a Bayesian approximation: representing
    model uncertainty in deep learning. ICML.
  """
  _check_size(members)
  if not _takes_train(module.__call__):
    raise errors.EfficientEnsembleConfigError(
        f"mc_dropout: {type(module).__name__}.__call__ takes no `train` flag, so dropout "
        "cannot be switched on at prediction. Fix: a module called as module(x, "
        "train=...) whose dropout is active when train=True (fusionjax.models.MLP, CNN).")
  if rate is not None:
    if not hasattr(module, "dropout") or not 0 <= rate < 1:
      raise errors.EfficientEnsembleConfigError(
          f"mc_dropout(rate={rate!r}) sets the `dropout` attribute of "
          f"{type(module).__name__}, which it "
          f"{'has' if hasattr(module, 'dropout') else 'does not have'}; the rate must be "
          "in [0, 1). Fix: pass a module with a `dropout` field and 0 <= rate < 1, or "
          "rate=None to keep the module's own dropout.")
    module = module.clone(dropout=float(rate))
  if train_samples not in (1, members):
    raise errors.EfficientEnsembleConfigError(
        f"mc_dropout(train_samples={train_samples!r}) must be 1 (one dropout sample per "
        f"step, the cost of one network) or members={members} (one per member).")
  base_key = jax.random.key(seed)

  def init(key, x):
    _check_batch(x, members, False)
    pkey, dkey = jax.random.split(key)
    variables = _split_variables(module.init({"params": pkey, "dropout": dkey}, x,
                                             train=False))
    if variables["state"]:
      raise errors.EfficientEnsembleConfigError(
          f"mc_dropout: {type(module).__name__} has non-param collections "
          f"{sorted(variables['state'])} (e.g. BatchNorm statistics), which its train "
          "flag would switch to batch statistics at prediction. Fix: a module without "
          "them, or batch_ensemble(...) / from_linen(...) for such modules.")
    return variables

  def sample(params, x, k):
    return module.apply({"params": params}, x, rngs={"dropout": k}, train=True)

  def apply(variables, x, *, key=None, train=False):
    params = variables["params"]
    if train and train_samples == 1:
      if key is None:
        key = base_key
      out = sample(params, x, key)
      return jnp.broadcast_to(out, (members,) + out.shape), variables.get("state", {})
    keys = jax.random.split(base_key if key is None else key, members)
    out = jax.vmap(sample, in_axes=(None, None, 0))(params, x, keys)
    return out, variables.get("state", {})

  return _native(init, apply, members, "mc_dropout", name or "mcd")


__all__: Sequence[str] = ("KINDS", "PackedDense", "PackedNet", "batch_ensemble",
                          "mc_dropout", "packed")
