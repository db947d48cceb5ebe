"""Distribution shift and out-of-distribution sets that need no download.

:func:`corrupt` applies MNIST-C-style corruptions to grayscale images;
:func:`held_out_classes`, :func:`noise_images` and :func:`upscaled_digits`
build out-of-distribution (OOD) sets from data already at hand. Everything is
numpy and ``scipy.ndimage`` on the host (scipy and scikit-learn are imported on
first use).

The corruptions are REIMPLEMENTATIONS in the spirit of MNIST-C (Mu & Gilmer
2019), not the published MNIST-C files: parameters, random draws and drawing
code differ, so accuracies or calibration numbers measured on them are not
comparable to published MNIST-C results. Use them to compare models with each
other under the same corruption, seed and severity.
"""
from __future__ import annotations

import numpy as np

from fusionjax import errors

CORRUPTIONS = (
    "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale",
    "rotate", "brightness", "translate", "stripe", "fog", "spatter", "dotted_line",
    "zigzag", "canny_edges",
)

# Corruptions whose output does not depend on ``seed``.
DETERMINISTIC = ("scale", "brightness", "canny_edges")

# Per-severity strength (index severity - 1).
_SHOT = (60.0, 30.0, 15.0, 8.0, 4.0)  # photons at value 1 (fewer: noisier)
_IMPULSE = (0.03, 0.06, 0.09, 0.17, 0.27)  # fraction of pixels set to 0 or 1
_GLASS = ((0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.8, 2, 2), (1.0, 3, 2))  # sigma, delta, its
_MOTION = (3, 5, 7, 9, 11)  # kernel length, pixels
_SHEAR = (0.15, 0.3, 0.45, 0.6, 0.75)  # shear factor, random sign
_SCALE = (0.9, 0.8, 0.7, 0.6, 0.5)  # zoom-out factor about the centre
_ROTATE = (10.0, 20.0, 30.0, 40.0, 50.0)  # degrees, random sign
_BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to every pixel
_TRANSLATE = (1.0, 2.0, 3.0, 4.0, 5.0)  # pixels, random direction
_STRIPE = (2, 3, 4, 5, 6)  # width of the inverted vertical band, pixels
_FOG = (0.2, 0.35, 0.5, 0.75, 1.0)  # fog strength
_SPATTER = (1.6, 1.4, 1.2, 1.0, 0.8)  # blob threshold in noise std (lower: more)
_LINES = (1, 2, 3, 4, 5)  # dotted lines / zigzags drawn
_EDGES = (0.2, 0.4, 0.6, 0.8, 1.0)  # weight of the edge map (1: edges only)


def corrupt(images, name: str, severity: int = 3, seed: int = 0) -> np.ndarray:
  """MNIST-C-style corruption of grayscale images (a reimplementation).

  These are reimplementations with numpy and ``scipy.ndimage`` written after
  the corruption list of MNIST-C (Mu & Gilmer 2019); they are NOT the published
  MNIST-C files and do not reproduce them pixel for pixel, so numbers measured
  on them are not comparable to published MNIST-C results. Corruptions
  (``CORRUPTIONS``; ``severity`` 1..5 sets the strength):

  * ``shot_noise``: Poisson noise, ``poisson(x * c) / c`` (c 60 .. 4); a black
    background stays black.
  * ``impulse_noise``: salt and pepper on 3 .. 27 % of the pixels.
  * ``glass_blur``: Gaussian blur, then each pixel taken from a random
    neighbour up to 1 .. 3 pixels away (one or two rounds), blurred again.
  * ``motion_blur``: a straight line kernel of 3 .. 11 pixels at a random
    angle per image (symmetric about the pixel).
  * ``shear``: horizontal shear by 0.15 .. 0.75, random sign per image.
  * ``scale``: zoom out about the centre by 0.9 .. 0.5.
  * ``rotate``: rotation by 10 .. 50 degrees, random sign per image.
  * ``brightness``: 0.1 .. 0.5 added to every pixel.
  * ``translate``: shift by 1 .. 5 pixels in a random direction per image.
  * ``stripe``: a vertical band 2 .. 6 pixels wide, at a random column, with
    its values inverted (``1 - x``).
  * ``fog``: multi-octave value noise added with weight 0.2 .. 1.0, then scaled
    so the image's maximum is kept (lowers the contrast).
  * ``spatter``: soft grey (0.7) blobs from thresholded smoothed noise,
    covering more of the image with severity.
  * ``dotted_line``: 1 .. 5 dotted lines (every other pixel white) between
    random points on the border.
  * ``zigzag``: 1 .. 5 white zigzag lines (4 segments each) across the image.
  * ``canny_edges``: a Canny-like edge map (Sobel gradient of the image
    smoothed with sigma 1, thinned by non-maximum suppression along the
    gradient direction, kept above 20 % of each image's largest gradient; no
    hysteresis), blended with the image with weight 0.2 .. 1.0 (1: the edge
    map only).

  Geometric corruptions fill uncovered pixels with 0 (a black background).
  ``scale``, ``brightness`` and ``canny_edges`` do not depend on ``seed``
  (listed in ``DETERMINISTIC``); every other one draws from
  ``numpy.random.default_rng(seed)``: the same seed gives the same output.

  Args:
    images: ``[N, H, W]`` or ``[N, H, W, 1]`` grayscale images with values in
      ``[0, 1]`` (raw images scaled to ``[0, 1]``: corrupt, then normalise).
    name: one of ``CORRUPTIONS``.
    severity: 1 (mild) .. 5 (strong).
    seed: seed of the random draws.

  Returns:
    float32 images of the input's shape, clipped to ``[0, 1]``.

  Raises:
    UnknownCorruptionError: ``name`` is not in ``CORRUPTIONS``.
    ShiftConfigError: ``severity`` outside 1..5, images of another rank or
      with several channels, or values outside ``[0, 1]``.

  Example:
    >>> x = np.zeros((2, 28, 28, 1), np.float32)
    >>> x[:, 8:20, 12:16] = 1.0
    >>> out = corrupt(x, "rotate", severity=2, seed=0)
    >>> out.shape, out.dtype
    ((2, 28, 28, 1), dtype('float32'))

  References:
    Mu & Gilmer, "MNIST-C: A Robustness Benchmark for Computer Vision",
    arXiv:1906.02337, 2019; Hendrycks & Dietterich, "Benchmarking Neural
    Network Robustness to Common Corruptions and Perturbations", ICLR 2019
    (the noise, blur and fog recipes).
  """
  if name not in CORRUPTIONS:
    raise errors.UnknownCorruptionError(
        f"corrupt: unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}. "
        "Fix: pass one of those names (fusionjax.data.CORRUPTIONS).")
  if isinstance(severity, bool) or int(severity) != severity or not 1 <= severity <= 5:
    raise errors.ShiftConfigError(
        f"corrupt: severity must be an integer in 1..5; got {severity!r}. "
        "Fix: pass severity=1 (mild) .. 5 (strong).")
  x = np.asarray(images)
  if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 1)):
    raise errors.ShiftConfigError(
        f"corrupt: images must be [N, H, W] or [N, H, W, 1] (grayscale); got shape "
        f"{x.shape}. Fix: add the batch axis for one image (x[None]); for colour "
        "images convert to grayscale first.")
  x = x.astype(np.float32)
  if x.size == 0:
    return x
  lo, hi = float(x.min()), float(x.max())
  if not (lo >= 0.0 and hi <= 1.0):
    raise errors.ShiftConfigError(
        f"corrupt: image values must lie in [0, 1]; got min {lo}, max {hi}. Fix: "
        "corrupt raw images scaled to [0, 1] (e.g. uint8 / 255) and normalise after.")
  flat = x.reshape(x.shape[0], x.shape[1], x.shape[2])
  rng = np.random.default_rng(seed)
  out = _CORRUPT[name](flat, int(severity) - 1, rng)
  return np.clip(out, 0.0, 1.0).astype(np.float32).reshape(x.shape)


# --------------------------------------------------------------------------
# the corruptions: [N, H, W] float images, severity index 0..4, a Generator
# --------------------------------------------------------------------------
def _shot_noise(x, s, rng):
  c = _SHOT[s]
  return rng.poisson(x * c) / c


def _impulse_noise(x, s, rng):
  hit = rng.random(x.shape) < _IMPULSE[s]
  salt = rng.random(x.shape) < 0.5
  return np.where(hit, salt.astype(x.dtype), x)


def _blur(x, sigma):
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma), mode="constant")


def _glass_blur(x, s, rng):
  sigma, delta, rounds = _GLASS[s]
  n, h, w = x.shape
  out = _blur(x, sigma)
  b = np.arange(n)[:, None, None]
  rows, cols = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
  for _ in range(rounds):
    dr = rng.integers(-delta, delta + 1, x.shape)
    dc = rng.integers(-delta, delta + 1, x.shape)
    out = out[b, np.clip(rows + dr, 0, h - 1), np.clip(cols + dc, 0, w - 1)]
  return _blur(out, sigma)


def _line_kernel(length, angle):
  k = np.zeros((length, length))
  c = (length - 1) / 2
  t = np.linspace(-c, c, 4 * length)
  r = np.clip(np.rint(c - t * np.sin(angle)).astype(int), 0, length - 1)
  q = np.clip(np.rint(c + t * np.cos(angle)).astype(int), 0, length - 1)
  k[r, q] = 1.0
  return k / k.sum()


def _motion_blur(x, s, rng):
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  angles = rng.uniform(0.0, np.pi, x.shape[0])
  return np.stack([ndimage.convolve(img, _line_kernel(_MOTION[s], a), mode="constant")
                   for img, a in zip(x, angles)])


def _affine(x, matrices, shifts):
  """Per image ``out[o] = in[A (o - c) + c - t]`` (bilinear, zero outside)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  c = (np.array(x.shape[1:]) - 1) / 2
  return np.stack([
      ndimage.affine_transform(img, a, offset=c - a @ c - t, order=1, mode="constant")
      for img, a, t in zip(x, matrices, shifts)])


def _random_sign(rng, n):
  return np.where(rng.random(n) < 0.5, -1.0, 1.0)


def _shear(x, s, rng):
  k = _SHEAR[s] * _random_sign(rng, x.shape[0])
  mats = np.stack([np.array([[1.0, 0.0], [ki, 1.0]]) for ki in k])
  return _affine(x, mats, np.zeros((x.shape[0], 2)))


def _scale(x, s, rng):
  del rng
  n = x.shape[0]
  return _affine(x, np.broadcast_to(np.eye(2) / _SCALE[s], (n, 2, 2)), np.zeros((n, 2)))


def _rotate(x, s, rng):
  t = np.deg2rad(_ROTATE[s]) * _random_sign(rng, x.shape[0])
  mats = np.stack([np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) for a in t])
  return _affine(x, mats, np.zeros((x.shape[0], 2)))


def _brightness(x, s, rng):
  del rng
  return x + _BRIGHTNESS[s]


def _translate(x, s, rng):
  n = x.shape[0]
  a = rng.uniform(0.0, 2 * np.pi, n)
  shifts = _TRANSLATE[s] * np.stack([np.sin(a), np.cos(a)], axis=1)
  return _affine(x, np.broadcast_to(np.eye(2), (n, 2, 2)), shifts)


def _stripe(x, s, rng):
  n, _, w = x.shape
  width = min(_STRIPE[s], w)
  start = rng.integers(0, w - width + 1, n)
  band = (np.arange(w)[None, :] >= start[:, None]) & (np.arange(w)[None, :] < (start + width)[:, None])
  return np.where(band[:, None, :], 1.0 - x, x)


def _value_noise(rng, n, h, w, octaves=4, decay=0.5):
  """Multi-octave value noise in ``[0, 1]``, ``[n, h, w]`` (the fog's clouds)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  total = np.zeros((n, h, w))
  for o in range(octaves):
    g = 2 ** (o + 1) + 1
    grid = rng.random((n, g, g))
    up = ndimage.zoom(grid, (1, h / g, w / g), order=1, grid_mode=True, mode="nearest")
    total += decay ** o * up[:, :h, :w]
  total -= total.min(axis=(1, 2), keepdims=True)
  return total / np.maximum(total.max(axis=(1, 2), keepdims=True), 1e-12)


def _fog(x, s, rng):
  c = _FOG[s]
  n, h, w = x.shape
  top = x.max(axis=(1, 2), keepdims=True)
  top = np.where(top > 0, top, 1.0)
  return (x + c * _value_noise(rng, n, h, w)) * top / (top + c)


def _spatter(x, s, rng):
  noise = _blur(rng.normal(size=x.shape), 1.5)
  noise /= noise.std(axis=(1, 2), keepdims=True)
  m = np.clip((noise - _SPATTER[s]) * 2.0, 0.0, 1.0)
  return x * (1.0 - m) + 0.7 * m


def _border_point(rng, h, w):
  side = rng.integers(0, 4)
  u = rng.random()
  return [(0.0, u * (w - 1)), (h - 1.0, u * (w - 1)), (u * (h - 1), 0.0),
          (u * (h - 1), w - 1.0)][side]


def _segment_pixels(p, q, h, w):
  length = int(np.ceil(max(abs(q[0] - p[0]), abs(q[1] - p[1])))) + 1
  t = np.linspace(0.0, 1.0, length)
  r = np.clip(np.rint(p[0] + t * (q[0] - p[0])).astype(int), 0, h - 1)
  c = np.clip(np.rint(p[1] + t * (q[1] - p[1])).astype(int), 0, w - 1)
  return r, c


def _dotted_line(x, s, rng):
  out = x.copy()
  _, h, w = x.shape
  for img in out:
    for _ in range(_LINES[s]):
      p = _border_point(rng, h, w)
      q = _border_point(rng, h, w)
      while abs(p[0] - q[0]) + abs(p[1] - q[1]) < min(h, w) / 2:
        q = _border_point(rng, h, w)
      r, c = _segment_pixels(p, q, h, w)
      img[r[::2], c[::2]] = 1.0
  return out


def _zigzag(x, s, rng):
  out = x.copy()
  _, h, w = x.shape
  for img in out:
    for _ in range(_LINES[s]):
      cols = np.linspace(0.0, w - 1.0, 5)
      mid = rng.uniform(0.25, 0.75) * (h - 1)
      amp = rng.uniform(0.1, 0.25) * (h - 1)
      rows = mid + amp * np.array([1.0, -1.0, 1.0, -1.0, 1.0]) * rng.choice([-1.0, 1.0])
      if rng.random() < 0.5:  # vertical zigzag
        rows, cols = cols * (h - 1) / (w - 1), rows * (w - 1) / (h - 1)
      for i in range(4):
        r, c = _segment_pixels((rows[i], cols[i]), (rows[i + 1], cols[i + 1]), h, w)
        img[r, c] = 1.0
  return out


def _edge_map(x):
  """Canny-like edges of ``[N, H, W]`` images in ``{0, 1}`` (see :func:`corrupt`)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  smooth = _blur(x.astype(np.float64), 1.0)
  gy = ndimage.sobel(smooth, axis=1, mode="constant")
  gx = ndimage.sobel(smooth, axis=2, mode="constant")
  mag = np.hypot(gx, gy)
  # Non-maximum suppression: keep a pixel only if its magnitude is at least that
  # of both neighbours along the gradient direction (quantised to 4 directions).
  direction = (np.round(np.arctan2(gy, gx) / (np.pi / 4)) % 4).astype(int)
  padded = np.pad(mag, ((0, 0), (1, 1), (1, 1)))
  h, w = x.shape[1:]

  def at(dr, dc):
    return padded[:, 1 + dr:1 + dr + h, 1 + dc:1 + dc + w]

  steps = ((0, 1), (1, 1), (1, 0), (1, -1))  # (row, col) along 0, 45, 90, 135 degrees
  keep = np.zeros(mag.shape, bool)
  for d, (dr, dc) in enumerate(steps):
    keep |= (direction == d) & (mag >= at(dr, dc)) & (mag >= at(-dr, -dc))
  top = mag.max(axis=(1, 2), keepdims=True)
  return (keep & (mag > 0.2 * top) & (top > 0)).astype(np.float32)


def _canny_edges(x, s, rng):
  del rng
  a = _EDGES[s]
  return (1.0 - a) * x + a * _edge_map(x)


_CORRUPT = {
    "shot_noise": _shot_noise, "impulse_noise": _impulse_noise, "glass_blur": _glass_blur,
    "motion_blur": _motion_blur, "shear": _shear, "scale": _scale, "rotate": _rotate,
    "brightness": _brightness, "translate": _translate, "stripe": _stripe, "fog": _fog,
    "spatter": _spatter, "dotted_line": _dotted_line, "zigzag": _zigzag,
    "canny_edges": _canny_edges,
}


# --------------------------------------------------------------------------
# out-of-distribution sets
# --------------------------------------------------------------------------
def held_out_classes(x, y, in_classes=(0, 1, 2, 3, 4)):
  """Split a labelled set into in-distribution classes and held-out (OOD) ones.

  Train on the examples of ``in_classes``; score the rest as out-of-distribution
  (with the defaults on MNIST: train on digits 0-4, score 5-9). Labels of the
  kept examples are renumbered to their position in ``in_classes`` (so they lie
  in ``[0, len(in_classes))``; the defaults keep 0-4 as they are).

  Args:
    x: ``[N, ...]`` examples.
    y: ``[N]`` integer labels.
    in_classes: the labels kept as in-distribution.

  Returns:
    ``(x_in, y_in, x_out)``: the in-distribution examples and their renumbered
    labels (int32), and the examples of every other class, in their order in
    ``x``.

  Raises:
    ShiftConfigError: ``x`` and ``y`` of different lengths, ``y`` not ``[N]``,
      repeated ``in_classes``, or a split that leaves either side empty.

  Example:
    >>> x_in, y_in, x_out = held_out_classes(np.arange(10.0)[:, None], np.arange(10))
    >>> y_in.tolist(), x_out[:, 0].tolist()
    ([0, 1, 2, 3, 4], [5.0, 6.0, 7.0, 8.0, 9.0])

  References:
    Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
    Out-of-Distribution Examples in Neural Networks", ICLR 2017 (scoring OOD
    inputs by the classifier's confidence).
  """
  x, y = np.asarray(x), np.asarray(y)
  if y.ndim != 1 or x.shape[:1] != y.shape:
    raise errors.ShiftConfigError(
        f"held_out_classes: y must be [N] labels of the N examples of x; got x "
        f"{x.shape}, y {y.shape}. Fix: pass labels as class indices, one per example.")
  classes = [int(c) for c in in_classes]
  if len(set(classes)) != len(classes) or not classes:
    raise errors.ShiftConfigError(
        f"held_out_classes: in_classes must be distinct labels, at least one; got "
        f"{tuple(in_classes)}. Fix: list each kept class once.")
  pos = {c: i for i, c in enumerate(classes)}
  inside = np.isin(y, classes)
  if not inside.any() or inside.all():
    side = "in-distribution" if not inside.any() else "held-out"
    raise errors.ShiftConfigError(
        f"held_out_classes: in_classes {tuple(classes)} leave the {side} side empty "
        f"(labels present: {sorted(set(y.tolist()))}). Fix: keep some classes in and "
        "hold some out.")
  y_in = np.array([pos[int(v)] for v in y[inside]], np.int32)
  return x[inside], y_in, x[~inside]


def noise_images(n: int, shape=(28, 28, 1), kind: str = "uniform", seed: int = 0):
  """Pure noise images, a far out-of-distribution set.

  ``'uniform'``: every pixel uniform in ``[0, 1]``; ``'gaussian'``: normal with
  mean 0.5 and standard deviation 0.25, clipped to ``[0, 1]``.

  Args:
    n: number of images.
    shape: the shape of one image, e.g. ``(28, 28, 1)``.
    kind: ``'uniform'`` or ``'gaussian'``.
    seed: seed of ``numpy.random.default_rng``; the same seed, the same images.

  Returns:
    float32 ``[n, *shape]`` with values in ``[0, 1]``.

  Raises:
    ShiftConfigError: an unknown ``kind`` or a negative ``n``.

  Example:
    >>> noise_images(4, (28, 28, 1), kind="gaussian").shape
    (4, 28, 28, 1)

  References:
    Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
    Out-of-Distribution Examples in Neural Networks", ICLR 2017 (uniform and
    Gaussian noise among the OOD sets).
  """
  if kind not in ("uniform", "gaussian"):
    raise errors.ShiftConfigError(
        f"noise_images: kind must be 'uniform' or 'gaussian'; got {kind!r}. "
        "Fix: pass one of those.")
  if int(n) != n or n < 0:
    raise errors.ShiftConfigError(
        f"noise_images: n must be a count >= 0; got {n!r}. Fix: pass an integer n.")
  rng = np.random.default_rng(seed)
  size = (int(n), *tuple(int(d) for d in shape))
  if kind == "uniform":
    out = rng.random(size)
  else:
    out = np.clip(rng.normal(0.5, 0.25, size), 0.0, 1.0)
  return out.astype(np.float32)


def upscaled_digits(n: int | None = None, size: int = 28) -> np.ndarray:
  """scikit-learn's embedded 8x8 digits upscaled to ``size x size``: OOD for MNIST.

  The 1797 digits (no download) scaled to ``[0, 1]`` (``/ 16``) and zoomed with
  ``scipy.ndimage.zoom`` (bilinear). They are digits, but blocky and filling the
  whole frame (MNIST digits sit in a 20x20 box), so a model trained on MNIST
  should be less sure of them: a near out-of-distribution set.

  Args:
    n: the first ``n`` digits (all 1797 when None).
    size: the side of the output images.

  Returns:
    float32 ``[N, size, size, 1]`` with values in ``[0, 1]``.

  Raises:
    ShiftConfigError: ``n`` outside ``0..1797`` or ``size < 1``.

  Example:
    >>> upscaled_digits(3).shape
    (3, 28, 28, 1)

  References:
    Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits", UCI
    Machine Learning Repository, 1998 (the 8x8 digits).
  """
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  images = datasets.load_digits().images
  if n is not None and (int(n) != n or not 0 <= n <= len(images)):
    raise errors.ShiftConfigError(
        f"upscaled_digits: n must be in 0..{len(images)} (the digits there are); "
        f"got {n!r}. Fix: pass a smaller n, or None for all.")
  if int(size) != size or size < 1:
    raise errors.ShiftConfigError(
        f"upscaled_digits: size must be an integer >= 1; got {size!r}. Fix: pass e.g. 28.")
  images = images[:n] / 16.0
  out = ndimage.zoom(images, (1, size / 8, size / 8), order=1, grid_mode=True,
                     mode="nearest")
  return np.clip(out, 0.0, 1.0).astype(np.float32)[..., None]
