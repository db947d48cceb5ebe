"""Reference base networks (Flax Linen), written for one unbatched-member call.

Every module maps a batch ``x`` to logits ``[B, num_classes]`` and takes a
keyword ``train`` flag (dropout / BatchNorm), so that
``fusionjax.ensemble.from_linen(module, size=M)`` stacks any of them.
"""
from typing import Sequence

import flax.linen as _nn
import jax.numpy as jnp

from fusionjax import errors

# The API; the imports above (nn, jnp, errors, Sequence) are not part of it.
__all__ = ["MLP", "CNN", "CNN1D", "RowRNN", "RowGRU", "RowLSTM", "ResNet", "max_pool"]


def __dir__():
  return sorted(__all__)


def _check_rank(name: str, x, ranks: Sequence[int], fix: str):
  if x.ndim not in ranks:
    want = " or ".join(f"rank {r}" for r in ranks)
    raise errors.InputRankError(
        f"{name} takes a batch of {want}; got an input of shape {tuple(x.shape)} "
        f"(rank {x.ndim}). Fix: {fix}")


class MLP(_nn.Module):
  """A ReLU multi-layer perceptron over the flattened input.

  Attributes:
    num_classes: outputs ``C``.
    features: hidden widths, e.g. ``(256, 256)``.
    dropout: dropout rate after each hidden layer (0 disables it).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> m = MLP(10, (32,))
    >>> v = m.init(jax.random.key(0), jnp.ones((2, 8, 8, 1)))
    >>> m.apply(v, jnp.ones((2, 8, 8, 1))).shape
    (2, 10)
  """
  num_classes: int
  features: Sequence[int] = (256, 256)
  dropout: float = 0.0

  @_nn.compact
  def __call__(self, x, train: bool = False):
    _check_rank("MLP", x, range(2, 9), "pass a batch [B, ...] (x[None] for one example).")
    x = x.reshape((x.shape[0], -1))
    for width in self.features:
      x = _nn.relu(_nn.Dense(width)(x))
      if self.dropout:
        x = _nn.Dropout(self.dropout, deterministic=not train)(x)
    return _nn.Dense(self.num_classes)(x)


def max_pool(x: jnp.ndarray, window: int = 2) -> jnp.ndarray:
  """Non-overlapping max-pooling over the spatial axes of ``[B, *spatial, C]``.

  ``window`` along every spatial axis (``window x window`` for images, ``window``
  for signals ``[B, L, C]``). The same values as ``flax.linen.max_pool(x, (w,) * d,
  strides=(w,) * d)`` (VALID padding: a remainder is dropped), computed as a
  reshape and a max. Its gradient is an elementwise select instead of XLA's
  ``select_and_scatter``, which dominated a LeNet-size training step on CPU:
  ``python benchmarks/ensemble_step.py`` timed fusionjax's step for
  ``CNN(10, (8, 16), 64)`` members (batch 128, Adam) at 30.5 ms (M=1) and
  2134 ms (M=64) with ``_nn.max_pool``, 21.4 ms and 1133 ms with this (the
  project's 2-core CPU machine, jax 0.10.2). At a tie the gradient is split
  between the tied inputs (``select_and_scatter`` gives it to the first); both
  are subgradients, and after a ReLU the usual tie is at 0, where the ReLU's
  gradient is 0 anyway.
  """
  b, *spatial, c = x.shape
  kept = [n // window * window for n in spatial]
  x = x[(slice(None),) + tuple(slice(0, k) for k in kept)]
  shape = [b]
  for k in kept:
    shape += [k // window, window]
  x = x.reshape(shape + [c])
  return x.max(axis=tuple(2 + 2 * i for i in range(len(kept))))


def _conv_net(net, x, kernel, train):
  """``net``'s body (CNN, CNN1D), inside its compact ``__call__``: per width a
  convolution, a ReLU and a max-pool by 2; then a hidden dense layer, dropout and
  the output layer."""
  for width in net.features:
    x = _nn.relu(_nn.Conv(width, kernel, padding="SAME")(x))
    x = max_pool(x, 2)
  x = x.reshape((x.shape[0], -1))
  x = _nn.relu(_nn.Dense(net.hidden)(x))
  if net.dropout:
    x = _nn.Dropout(net.dropout, deterministic=not train)(x)
  return _nn.Dense(net.num_classes)(x)


class CNN(_nn.Module):
  """A LeNet-5-style convolutional network for ``[B, H, W, C]`` images.

  Pooling is :func:`max_pool` (2x2, stride 2): the values of
  ``_nn.max_pool``, with a gradient that is cheap on CPU.

  References:
    LeCun et al., 1998. Gradient-based learning applied to document recognition.
  """
  num_classes: int
  features: Sequence[int] = (32, 64)
  hidden: int = 128
  dropout: float = 0.0

  @_nn.compact
  def __call__(self, x, train: bool = False):
    _check_rank("CNN", x, (3, 4), "pass images [B, H, W, C] (or [B, H, W]); for 1-D "
                "signals [B, L] or [B, L, C] use fusionjax.models.CNN1D.")
    if x.ndim == 3:
      x = x[..., None]
    return _conv_net(self, x, (5, 5), train)


class CNN1D(_nn.Module):
  """A 1-D convolutional network for signals ``[B, L, C]`` (or ``[B, L]``).

  The layout of :class:`CNN` along one axis: per width a ``kernel``-wide
  convolution (SAME padding), a ReLU and a max-pool by 2, then a hidden dense
  layer.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> m = CNN1D(3, (4, 8), 16)
    >>> v = m.init(jax.random.key(0), jnp.ones((2, 50)))
    >>> m.apply(v, jnp.ones((2, 50))).shape
    (2, 3)
  """
  num_classes: int
  features: Sequence[int] = (32, 64)
  hidden: int = 128
  kernel: int = 5
  dropout: float = 0.0

  @_nn.compact
  def __call__(self, x, train: bool = False):
    _check_rank("CNN1D", x, (2, 3), "pass signals [B, L] or [B, L, C]; for images use "
                "fusionjax.models.CNN.")
    if x.ndim == 2:
      x = x[..., None]
    return _conv_net(self, x, (self.kernel,), train)


class RowRNN(_nn.Module):
  """A recurrent network over a sequence ``[B, T, D]``, or an image row by row.

  An image ``[B, H, W, C]`` is read as H steps of ``W * C`` values. A batch of
  vectors ``[B, D]`` raises :class:`~fusionjax.errors.InputRankError` (it has no
  time axis; it would otherwise be read as one sequence of B steps).

  Attributes:
    num_classes: outputs ``C``.
    hidden: recurrent state width.
    cell: ``'gru'`` or ``'lstm'``.
  """
  num_classes: int
  hidden: int = 128
  cell: str = "gru"

  @_nn.compact
  def __call__(self, x, train: bool = False):
    _check_rank(f"Row{self.cell.upper()}", x, (3, 4),
                "pass sequences [B, T, D] or images [B, H, W, C] (one row a step); a "
                "batch of vectors [B, D] has no time axis: reshape it to [B, T, D // T], "
                "or use fusionjax.models.MLP.")
    if x.ndim == 4:
      x = x.reshape(x.shape[:2] + (-1,))  # [B, H, W*C]: one row a step
    cell = {"gru": _nn.GRUCell, "lstm": _nn.OptimizedLSTMCell}[self.cell]
    h = _nn.RNN(cell(self.hidden))(x)
    return _nn.Dense(self.num_classes)(h[:, -1])


def RowGRU(num_classes: int, hidden: int = 128) -> RowRNN:  # pylint: disable=invalid-name
  """A GRU over image rows (see :class:`RowRNN`)."""
  return RowRNN(num_classes, hidden, "gru")


def RowLSTM(num_classes: int, hidden: int = 128) -> RowRNN:  # pylint: disable=invalid-name
  """An LSTM over image rows (see :class:`RowRNN`)."""
  return RowRNN(num_classes, hidden, "lstm")


class _ResBlock(_nn.Module):
  features: int
  strides: int = 1

  @_nn.compact
  def __call__(self, x, train: bool):
    norm = lambda: _nn.BatchNorm(use_running_average=not train, momentum=0.9)
    y = _nn.Conv(self.features, (3, 3), self.strides, padding="SAME", use_bias=False)(x)
    y = _nn.relu(norm()(y))
    y = _nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False)(y)
    y = norm()(y)
    if x.shape != y.shape:
      x = _nn.Conv(self.features, (1, 1), self.strides, use_bias=False)(x)
      x = norm()(x)
    return _nn.relu(x + y)


class ResNet(_nn.Module):
  """A small ResNet (He et al. 2016) for 32x32x3 inputs, with BatchNorm.

  ``stage_sizes=(3, 3, 3)`` and ``width=16`` give ResNet-20; the default
  ``(1, 1, 1)`` is an 8-layer version for quick runs.

  References:
    He et al., 2016. Deep residual learning for image recognition.
  """
  num_classes: int
  stage_sizes: Sequence[int] = (1, 1, 1)
  width: int = 16

  @_nn.compact
  def __call__(self, x, train: bool = False):
    _check_rank("ResNet", x, (4,), "pass images [B, H, W, C].")
    x = _nn.Conv(self.width, (3, 3), padding="SAME", use_bias=False)(x)
    x = _nn.relu(_nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    for i, blocks in enumerate(self.stage_sizes):
      for j in range(blocks):
        x = _ResBlock(self.width * 2**i, 2 if (i > 0 and j == 0) else 1)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return _nn.Dense(self.num_classes)(x)
