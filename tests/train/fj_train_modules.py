"""Small Flax members shared by the trainer tests (a uniquely named module, not conftest)."""
import flax.linen as nn

from fusionjax import models


class BNDrop(nn.Module):
  """BatchNorm statistics (member state) and dropout (member keys).

  No bias before BatchNorm: its gradient is zero up to rounding, which Adam
  would blow up to +-lr in either layout, at random.
  """

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(12, use_bias=False)(x.reshape((x.shape[0], -1)))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.Dropout(0.3, deterministic=not train)(nn.relu(x))
    return nn.Dense(10)(x)


class ConvBNDrop(nn.Module):
  """A convolution (the 'loop' layout on CPU) with BatchNorm statistics and dropout."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.Dropout(0.3, deterministic=not train)(nn.relu(x))
    return nn.Dense(10)(models.max_pool(x, 2).reshape((x.shape[0], -1)))
