"""Shift and OOD sets without downloads: ``corrupt`` and the OOD helpers."""
import numpy as np
import pytest

from fusionjax import data
from fusionjax import errors
from fusionjax.data import _shift

RANDOM = tuple(n for n in data.CORRUPTIONS if n not in _shift.DETERMINISTIC)


@pytest.fixture(scope="module")
def digits16():
  """16 upscaled 8x8 digits, ``[16, 28, 28, 1]`` in [0, 1]."""
  return data.upscaled_digits(16)


def _mad(a, b):
  return float(np.abs(np.asarray(a, np.float64) - b).mean())


def test_corruptions_list_is_the_mnist_c_set():
  assert set(data.CORRUPTIONS) == {
      "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale",
      "rotate", "brightness", "translate", "stripe", "fog", "spatter", "dotted_line",
      "zigzag", "canny_edges"}
  assert len(data.CORRUPTIONS) == 15
  assert set(_shift.DETERMINISTIC) <= set(data.CORRUPTIONS)


@pytest.mark.parametrize("name", data.CORRUPTIONS)
def test_corrupt_keeps_shape_dtype_range_and_changes_the_image(name, digits16):
  diffs = {}
  for severity in (1, 5):
    out = data.corrupt(digits16, name, severity=severity, seed=0)
    assert out.shape == digits16.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    diffs[severity] = _mad(out, digits16)
    # Measured on these 16 digits: severity 1 changes 0.012 (dotted_line) to 0.098
    # (brightness) per pixel; 0.005 is far below every one.
    assert diffs[severity] > 0.005, (name, severity, diffs[severity])
  # Measured: severity 5 changes every corruption 2.8x (glass_blur) to 9x
  # (impulse_noise) more than severity 1, so 1.5x holds with room.
  assert diffs[5] > 1.5 * diffs[1], (name, diffs)


@pytest.mark.parametrize("name", data.CORRUPTIONS)
def test_corrupt_is_monotone_in_severity(name, digits16):
  diffs = [_mad(data.corrupt(digits16, name, s, seed=0), digits16) for s in range(1, 6)]
  assert all(a < b for a, b in zip(diffs, diffs[1:])), (name, diffs)


@pytest.mark.parametrize("name", data.CORRUPTIONS)
def test_corrupt_same_seed_same_output(name, digits16):
  for severity in (1, 5):
    a = data.corrupt(digits16, name, severity, seed=7)
    b = data.corrupt(digits16, name, severity, seed=7)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", RANDOM)
def test_corrupt_other_seed_other_output(name, digits16):
  for severity in (1, 5):
    a = data.corrupt(digits16, name, severity, seed=0)
    b = data.corrupt(digits16, name, severity, seed=1)
    # Measured: 0.011 (motion_blur, severity 1) and up per pixel.
    assert _mad(a, b) > 0.002, (name, severity)


@pytest.mark.parametrize("name", _shift.DETERMINISTIC)
def test_deterministic_corruptions_ignore_the_seed(name, digits16):
  np.testing.assert_array_equal(data.corrupt(digits16, name, 3, seed=0),
                                data.corrupt(digits16, name, 3, seed=1))


def test_corrupt_accepts_rank_3_and_casts_to_float32(digits16):
  x3 = digits16[..., 0].astype(np.float64)
  out = data.corrupt(x3, "rotate", severity=2, seed=3)
  assert out.shape == x3.shape and out.dtype == np.float32
  np.testing.assert_allclose(out, data.corrupt(digits16, "rotate", 2, seed=3)[..., 0])


def test_corrupt_does_not_modify_its_input(digits16):
  x = digits16.copy()
  for name in ("dotted_line", "zigzag", "stripe", "impulse_noise"):
    data.corrupt(x, name, 5)
  np.testing.assert_array_equal(x, digits16)


def test_corrupt_empty_batch():
  out = data.corrupt(np.zeros((0, 28, 28, 1), np.float32), "fog")
  assert out.shape == (0, 28, 28, 1) and out.dtype == np.float32


def test_brightness_adds_and_clips():
  x = np.full((1, 4, 4), 0.7, np.float32)
  np.testing.assert_allclose(data.corrupt(x, "brightness", 1), 0.8, rtol=1e-6)
  np.testing.assert_allclose(data.corrupt(x, "brightness", 5), 1.0)


def test_canny_edges_at_severity_5_is_a_binary_edge_map_around_a_square():
  x = np.zeros((1, 28, 28), np.float32)
  x[0, 9:19, 9:19] = 1.0
  edges = data.corrupt(x, "canny_edges", 5)[0]
  assert set(np.unique(edges).tolist()) <= {0.0, 1.0}
  assert edges[13, 13] == 0.0 and edges[0, 0] == 0.0  # inside and far outside: flat
  assert edges[13, 8:11].any() and edges[8:11, 13].any()  # the left and top borders


def test_unknown_corruption_lists_the_known_names(digits16):
  with pytest.raises(errors.UnknownCorruptionError, match="'gaussian_blur'.*shot_noise.*canny_edges"):
    data.corrupt(digits16, "gaussian_blur")


@pytest.mark.parametrize("severity", [0, 6, 2.5, True, -1])
def test_corrupt_rejects_severity_outside_1_to_5(severity, digits16):
  with pytest.raises(errors.ShiftConfigError, match="severity must be an integer in 1..5"):
    data.corrupt(digits16, "fog", severity=severity)


@pytest.mark.parametrize("shape", [(28, 28), (2, 28, 28, 3), (1, 2, 28, 28, 1)])
def test_corrupt_rejects_other_ranks_and_colour(shape):
  with pytest.raises(errors.ShiftConfigError, match=r"\[N, H, W\] or \[N, H, W, 1\]"):
    data.corrupt(np.zeros(shape, np.float32), "fog")


@pytest.mark.parametrize("bad", [255.0, -0.5, np.nan])
def test_corrupt_rejects_values_outside_0_1(bad):
  x = np.zeros((1, 28, 28, 1), np.float32)
  x[0, 0, 0, 0] = bad
  with pytest.raises(errors.ShiftConfigError, match=r"values must lie in \[0, 1\]"):
    data.corrupt(x, "fog")


def test_held_out_classes_splits_and_renumbers():
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(10), 3)
  rng.shuffle(y)
  x = y[:, None, None, None] * np.ones((1, 4, 4, 1))
  x_in, y_in, x_out = data.held_out_classes(x, y)
  assert x_in.shape == (15, 4, 4, 1) and x_out.shape == (15, 4, 4, 1)
  assert y_in.dtype == np.int32
  np.testing.assert_array_equal(y_in, y[y < 5])
  np.testing.assert_array_equal(x_in[:, 0, 0, 0], y_in)
  assert set(x_out[:, 0, 0, 0].tolist()) == {5, 6, 7, 8, 9}
  x_in, y_in, x_out = data.held_out_classes(x, y, in_classes=(7, 2))
  np.testing.assert_array_equal(np.where(x_in[:, 0, 0, 0] == 7, 0, 1), y_in)
  assert len(x_out) == 24


def test_held_out_classes_errors():
  x, y = np.zeros((6, 2)), np.array([0, 1, 2, 0, 1, 2])
  with pytest.raises(errors.ShiftConfigError, match="y must be"):
    data.held_out_classes(x, y[:5])
  with pytest.raises(errors.ShiftConfigError, match="distinct"):
    data.held_out_classes(x, y, in_classes=(0, 0))
  with pytest.raises(errors.ShiftConfigError, match="held-out side empty"):
    data.held_out_classes(x, y, in_classes=(0, 1, 2))
  with pytest.raises(errors.ShiftConfigError, match="in-distribution side empty"):
    data.held_out_classes(x, y, in_classes=(5,))


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
def test_noise_images(kind):
  a = data.noise_images(64, (28, 28, 1), kind=kind, seed=0)
  assert a.shape == (64, 28, 28, 1) and a.dtype == np.float32
  assert a.min() >= 0.0 and a.max() <= 1.0
  assert abs(float(a.mean()) - 0.5) < 0.01
  np.testing.assert_array_equal(a, data.noise_images(64, (28, 28, 1), kind=kind, seed=0))
  assert not np.array_equal(a, data.noise_images(64, (28, 28, 1), kind=kind, seed=1))


def test_noise_images_errors():
  with pytest.raises(errors.ShiftConfigError, match="'pink'"):
    data.noise_images(2, kind="pink")
  with pytest.raises(errors.ShiftConfigError, match="n must be"):
    data.noise_images(-1)


def test_upscaled_digits():
  x = data.upscaled_digits(5, size=28)
  assert x.shape == (5, 28, 28, 1) and x.dtype == np.float32
  assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.9
  assert data.upscaled_digits(size=16).shape == (1797, 16, 16, 1)
  from sklearn import datasets  # the first digit, block-averaged back to 8x8
  small = datasets.load_digits().images[0] / 16
  coarse = data.upscaled_digits(1, size=32)[0, :, :, 0].reshape(8, 4, 8, 4).mean(axis=(1, 3))
  assert np.abs(coarse - small).mean() < 0.1


def test_upscaled_digits_errors():
  with pytest.raises(errors.ShiftConfigError, match="n must be in 0..1797"):
    data.upscaled_digits(1798)
  with pytest.raises(errors.ShiftConfigError, match="size must be"):
    data.upscaled_digits(2, size=0)


def test_docstring_examples_run():
  import doctest
  finder = doctest.DocTestFinder()
  runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
  tests = [t for t in finder.find(_shift, globs={"np": np, **vars(_shift)}) if t.examples]
  assert len(tests) >= 4
  for t in tests:
    runner.run(t)
  assert runner.failures == 0
