"""Keyed random crop (4-pixel padding) and horizontal flip."""
import chex
import jax
import numpy as np
import pytest

from fusionjax import data

RNG = np.random.default_rng(0)
X = RNG.normal(size=(6, 32, 32, 3)).astype(np.float32)


def test_shapes_and_keys():
  a = data.crop_flip(jax.random.key(1), X)
  assert a.shape == X.shape and a.dtype == X.dtype
  chex.assert_trees_all_equal(a, data.crop_flip(jax.random.key(1), X))
  assert not np.array_equal(a, data.crop_flip(jax.random.key(2), X))
  # Per-member batches [M, B, H, W, C].
  assert data.crop_flip(jax.random.key(1), X.reshape(2, 3, 32, 32, 3)).shape == (2, 3, 32, 32, 3)


def test_each_output_is_a_shifted_possibly_flipped_window():
  out = np.asarray(data.crop_flip(jax.random.key(3), X))
  padded = np.pad(X, ((0, 0), (4, 4), (4, 4), (0, 0)))
  for b in range(len(X)):
    windows = [padded[b, i:i + 32, j:j + 32] for i in range(9) for j in range(9)]
    windows += [w[:, ::-1] for w in windows]
    assert any(np.array_equal(out[b], w) for w in windows)


def test_flip_only():
  x = RNG.normal(size=(64, 4, 4, 1)).astype(np.float32)
  out = np.asarray(data.crop_flip(jax.random.key(1), x, padding=0))
  flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, x)]
  same = [np.array_equal(o, i) for o, i in zip(out, x)]
  assert all(f or s for f, s in zip(flipped, same))
  assert 10 < sum(flipped) < 54
  np.testing.assert_array_equal(data.crop_flip(jax.random.key(1), x, padding=0, flip=False), x)


def test_translation_pads_with_fill():
  """``flip=False`` with a ``fill`` shifts digits over their own background."""
  bg = -0.4242
  x = np.full((32, 6, 6, 1), bg, np.float32)
  x[:, 2:4, 2:4] = 1.0
  out = np.asarray(data.crop_flip(jax.random.key(4), x, padding=2, flip=False, fill=bg))
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=bg)
  for b in range(len(x)):
    windows = [padded[b, i:i + 6, j:j + 6] for i in range(5) for j in range(5)]
    assert any(np.array_equal(out[b], w) for w in windows)
  # Only background and the (moved) square: never a 0 from zero-padding.
  assert set(np.unique(out)) <= {np.float32(bg), np.float32(1.0)}
  # The square moved in some images (4 pixels of 1.0 each, wherever it went).
  assert (out == 1.0).sum(axis=(1, 2, 3)).tolist() == [4] * len(x)
  assert sum(not np.array_equal(o, i) for o, i in zip(out, x)) > len(x) // 2


def test_fill_must_be_a_scalar():
  with pytest.raises(ValueError, match=r"fill must be a scalar.*\(3,\)"):
    data.crop_flip(jax.random.key(0), X, fill=np.zeros(3, np.float32))
