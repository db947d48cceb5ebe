"""Fixtures for the fusion tests (small shapes: the whole directory runs in seconds)."""
import jax
import numpy as np
import pytest


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture
def key():
  return jax.random.key(0)


@pytest.fixture
def logits(rng):
  """``make(M, B, C, scale=3.0) -> float32 [M, B, C]`` random logits."""

  def make(m=4, b=6, c=3, scale=3.0):
    return (scale * rng.standard_normal((m, b, c))).astype(np.float32)

  return make
