"""Evaluation metrics for fused and per-member outputs: pure and jittable.

Conventions shared by every function here:

* **Inputs are logits or log-probabilities** ``[..., B, C]``. Both are accepted
  because every function first applies ``log_softmax`` over the class axis,
  which is the identity on log-probabilities (fused outputs) and normalises
  logits (member outputs). Only :func:`brier_from_probs` takes probabilities.
* **A leading member axis broadcasts**: ``accuracy(member_logits [M, B, C],
  labels [B])`` is ``[M]``, one value per member. Any leading dims work.
  The diversity measures (:func:`disagreement`, :func:`mutual_information`,
  the decompositions...) instead *reduce* the member axis of ``[M, B, C]``.
* **Labels** are integer class indices ``[B]`` in ``[0, C)``. A float or bool
  dtype raises :class:`~fusionjax.errors.LabelError` at trace time (also under
  ``jit``). The range is checked when the labels are concrete arrays; inside a
  ``jit``/``vmap`` trace the values cannot be inspected, so instead the metric
  comes out as NaN when an unmasked label is out of range.
* **mask** ``[B]`` (bool or 0/1) marks the real rows; padded rows of a last
  batch (``mask == 0``) are excluded from every average, and their labels and
  outputs may hold anything (even NaN).
* **Detection, selective and regression metrics** (:func:`auroc`, :func:`aupr`,
  :func:`fpr_at_tpr`, :func:`risk_coverage`, :func:`aurc`, :func:`gaussian_nll`,
  :func:`crps_gaussian`, :func:`interval_coverage`) take per-example scores or
  predictions and no mask. The uncertainty scores (:func:`max_prob`,
  :func:`margin`, :func:`entropy`, :func:`uncertainty_decomposition`) are per
  example ``[B]`` and **higher means more uncertain**, so ``auroc(is_ood,
  entropy(member_logits))`` reads directly.
* Every public function validates its inputs in Python and then calls a
  ``jax.jit``-compiled kernel, so calling it eagerly is fast and wrapping it in
  your own ``jax.jit`` works too (the validation then sees tracers and only
  checks shapes and dtypes).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from fusionjax import metrics
  >>> member_logits = jax.random.normal(jax.random.key(0), (4, 32, 10))
  >>> labels = jnp.arange(32) % 10
  >>> metrics.accuracy(member_logits, labels).shape   # one per member
  (4,)
  >>> sorted(metrics.summary(jax.nn.log_softmax(member_logits[0]), labels))
  ['accuracy', 'brier', 'ece', 'nll']
"""
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as _np

from fusionjax import errors

Array = jax.Array

__all__ = [
    "accuracy", "nll", "brier", "brier_mean", "brier_from_probs", "ece", "adaptive_ece",
    "calibration_bins", "precision", "recall", "f1", "disagreement", "disagreement_matrix",
    "predictive_entropy", "expected_entropy", "mutual_information", "oracle_accuracy",
    "Decomposition", "ambiguity_decomposition", "brier_decomposition", "nll_decomposition",
    "summary", "member_summary",
    "auroc", "aupr", "fpr_at_tpr", "max_prob", "margin", "entropy",
    "UncertaintyDecomposition", "uncertainty_decomposition", "risk_coverage", "aurc",
    "gaussian_nll", "crps_gaussian", "interval_coverage",
]


def __dir__():
  # dir() and tab completion show the API, not the imports (jnp, jax, errors...; numpy is
  # imported as _np, so fj.metrics.np does not exist).
  return sorted(__all__)


# --------------------------------------------------------------------------
# validation (Python, runs at trace time)
# --------------------------------------------------------------------------
def _concrete(x) -> Optional[_np.ndarray]:
  """The value of ``x`` as a NumPy array, or None when ``x`` is a tracer."""
  if isinstance(x, jax.core.Tracer):
    return None
  try:
    return _np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def _as_float(x) -> Array:
  """At least float32 (bf16 and ints are upcast).

  Host inputs (NumPy arrays, lists) stay NumPy: the compiled kernel takes them
  directly, whereas converting them eagerly would compile a staging op per shape.
  """
  if not isinstance(x, jax.Array):
    x = _np.asarray(x)
    small = not _np.issubdtype(x.dtype, _np.floating) or x.dtype.itemsize < 4
    return x.astype(_np.float32) if small else x
  target = (jnp.promote_types(x.dtype, jnp.float32)
            if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32)
  return x if x.dtype == target else x.astype(target)


def _check_outputs(x, fn: str, *, member: bool = False) -> Array:
  """Checks ``[..., B, C]`` (or ``[M, B, C]`` when ``member``) and casts to float."""
  x = _as_float(x)
  if member and x.ndim != 3:
    raise errors.MemberOutputsError(
        f"{fn} expects member outputs [M, B, C] (member axis first); got shape "
        f"{tuple(x.shape)}. Fix: pass the stacked outputs of an ensemble.")
  if x.ndim < 2:
    raise errors.MemberOutputsError(
        f"{fn} expects outputs [..., B, C]; got shape {tuple(x.shape)}. Fix: keep the "
        "class axis last, e.g. x[None] for a single example.")
  if 0 in x.shape:
    raise errors.EmptySplitError(
        f"{fn} got an empty input of shape {tuple(x.shape)} (B, C and M must be >= 1). "
        "Fix: check the split or the filter that produced it.")
  return x


def _check_mask(mask, batch: int, fn: str) -> Array:
  # Concrete masks and labels are converted on the host (NumPy), so an eager
  # call dispatches one compiled kernel and no small conversion ops.
  if mask is None:
    return _np.ones((batch,), _np.float32)
  mask = mask if isinstance(mask, jax.Array) else _np.asarray(mask)
  if mask.shape != (batch,):
    raise errors.BatchShapeError(
        f"{fn}: mask has shape {tuple(mask.shape)} but the batch has B={batch} rows. "
        f"Fix: pass one mask entry per row, shape [{batch}].")
  value = _concrete(mask)
  if value is None:
    return mask.astype(jnp.float32)
  if not _np.any(value):
    raise errors.EmptySplitError(
        f"{fn}: the mask selects none of the {batch} rows, so there is nothing to "
        "average. Fix: pass at least one real (mask=1) row.")
  return value.astype(_np.float32)


def _check_labels(labels, batch: int, num_classes: int, mask: Array, fn: str) -> Array:
  labels = labels if isinstance(labels, jax.Array) else _np.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise errors.LabelError(
        f"{fn}: labels must be integer class indices; got dtype {labels.dtype}. "
        "Fix: pass labels.astype(jnp.int32) (not one-hot, not float).")
  if labels.shape != (batch,):
    raise errors.BatchShapeError(
        f"{fn}: labels have shape {tuple(labels.shape)} but the outputs have B={batch} "
        f"rows. Fix: pass one label per row, shape [{batch}].")
  value, m = _concrete(labels), _concrete(mask)
  if value is None:
    return labels.astype(jnp.int32)
  if m is not None:
    bad = _np.flatnonzero(((value < 0) | (value >= num_classes)) & (m != 0))
    if bad.size:
      i = int(bad[0])
      raise errors.LabelError(
          f"{fn}: label {int(value[i])} at row {i} is outside [0, {num_classes}) "
          f"({bad.size} such rows; C={num_classes} from the outputs' last axis). "
          f"Fix: pass integer class indices in [0, {num_classes}), or mask padded rows.")
  return value.astype(_np.int32)


def _prep(x, labels, mask, fn: str, *, member: bool = False):
  x = _check_outputs(x, fn, member=member)
  batch, num_classes = x.shape[-2], x.shape[-1]
  mask = _check_mask(mask, batch, fn)
  labels = _check_labels(labels, batch, num_classes, mask, fn)
  return x, labels, mask


# --------------------------------------------------------------------------
# kernels (traced; shapes are static, values are not inspected)
# --------------------------------------------------------------------------
def _lead(v: Array, ndim: int) -> Array:
  """Reshapes ``v [B]`` to ``[1, ..., 1, B]`` so that it broadcasts without rank promotion."""
  return v.reshape((1,) * (ndim - 1) + v.shape)


def _mean_rows(v: Array, mask: Array) -> Array:
  """Masked mean of ``v [..., B]`` over its last axis; padded rows never leak NaN."""
  m = _lead(mask, v.ndim)
  return jnp.sum(jnp.where(m > 0, v * m, 0.0), axis=-1) / jnp.sum(mask)


def _labels_ok(labels: Array, mask: Array, num_classes: int) -> Array:
  """False when an unmasked label is out of range (only reachable for traced labels)."""
  bad = ((labels < 0) | (labels >= num_classes)) & (mask > 0)
  return ~jnp.any(bad)


def _finish(result: Array, labels: Array, mask: Array, num_classes: int) -> Array:
  return jnp.where(_labels_ok(labels, mask, num_classes), result, jnp.nan)


def _true_class(lp: Array, labels: Array) -> Array:
  """``lp[..., b, labels[b]]`` -> ``[..., B]`` (labels clipped; bad ones become NaN later)."""
  idx = jnp.clip(labels, 0, lp.shape[-1] - 1)
  idx = jnp.broadcast_to(_lead(idx, lp.ndim - 1), lp.shape[:-1])
  return jnp.take_along_axis(lp, idx[..., None], axis=-1)[..., 0]


def _one_hot(labels: Array, num_classes: int, ndim: int) -> Array:
  return _lead(jax.nn.one_hot(labels, num_classes), ndim - 1).reshape(
      (1,) * (ndim - 2) + (labels.shape[0], num_classes))


def _entropy(lp: Array) -> Array:
  """Entropy (nats) over the last axis of log-probabilities; 0 log 0 = 0."""
  return 0.0 - jnp.sum(jnp.where(jnp.isneginf(lp), 0.0, jnp.exp(lp) * lp), axis=-1)


def _mean_log_probs(lp: Array) -> Array:
  """Log of the arithmetic mean of member probabilities: ``[M, B, C] -> [B, C]``."""
  return jax.nn.logsumexp(lp, axis=0) - jnp.log(lp.shape[0])


@jax.jit
def _accuracy(x, labels, mask):
  correct = jnp.argmax(x, axis=-1) == _lead(labels, x.ndim - 1)
  return _finish(_mean_rows(correct.astype(jnp.float32), mask), labels, mask, x.shape[-1])


@jax.jit
def _nll(x, labels, mask):
  # A probability below the smallest normal float counts as that float: a hard
  # vote's losing class (log_zero = -1.8e19) costs 87.3 nats in float32, not 1.8e19.
  lp = jnp.maximum(jax.nn.log_softmax(x, axis=-1), jnp.log(jnp.finfo(x.dtype).tiny))
  return _finish(_mean_rows(-_true_class(lp, labels), mask), labels, mask, x.shape[-1])


def _brier_rows(p, labels):
  return jnp.sum(jnp.square(p - _one_hot(labels, p.shape[-1], p.ndim)), axis=-1)


@jax.jit
def _brier(x, labels, mask):
  p = jax.nn.softmax(x, axis=-1)
  return _finish(_mean_rows(_brier_rows(p, labels), mask), labels, mask, x.shape[-1])


@jax.jit
def _brier_probs(p, labels, mask):
  return _finish(_mean_rows(_brier_rows(p, labels), mask), labels, mask, p.shape[-1])


@functools.partial(jax.jit, static_argnames=("num_bins", "adaptive"))
def _calibration_bins(x, labels, mask, num_bins, adaptive):
  lp = jax.nn.log_softmax(x, axis=-1)
  conf = jnp.exp(jnp.max(lp, axis=-1))                                      # [..., B]
  correct = (jnp.argmax(lp, axis=-1) == _lead(labels, lp.ndim - 1)).astype(jnp.float32)
  m = jnp.broadcast_to(_lead(mask, conf.ndim), conf.shape)
  if adaptive:
    # Equal mass: rank the real rows by confidence (padded rows sort last) and
    # cut the ranks into num_bins runs of floor/ceil(n / num_bins) rows.
    order = jnp.argsort(jnp.where(m > 0, conf, jnp.inf), axis=-1, stable=True)
    rank = jnp.argsort(order, axis=-1, stable=True)
    n = jnp.sum(mask).astype(jnp.int32)
    idx = (rank * num_bins) // jnp.maximum(n, 1)
  else:
    # Equal width: bin i holds confidences in (i / n, (i + 1) / n] (Guo et al.).
    idx = jnp.ceil(conf * num_bins).astype(jnp.int32) - 1
  idx = jnp.clip(idx, 0, num_bins - 1)
  onehot = jax.nn.one_hot(idx, num_bins) * jnp.where(m > 0, m, 0.0)[..., None]  # [..., B, K]
  count = jnp.sum(onehot, axis=-2)
  safe = jnp.maximum(count, 1e-12)
  conf_sum = jnp.sum(onehot * jnp.where(m > 0, conf, 0.0)[..., None], axis=-2)
  acc_sum = jnp.sum(onehot * correct[..., None], axis=-2)
  ok = _labels_ok(labels, mask, x.shape[-1])
  return (count, jnp.where(ok, conf_sum / safe, jnp.nan), jnp.where(ok, acc_sum / safe, jnp.nan))


def _ece_from_bins(count, conf, acc):
  return jnp.sum(count * jnp.abs(acc - conf), axis=-1) / jnp.sum(count, axis=-1)


@functools.partial(jax.jit, static_argnames=("num_bins", "adaptive"))
def _ece(x, labels, mask, num_bins, adaptive):
  return _ece_from_bins(*_calibration_bins(x, labels, mask, num_bins, adaptive))


@jax.jit
def _prf(x, labels, mask):
  """Macro precision, recall and F1 over the classes present in labels or predictions."""
  num_classes = x.shape[-1]
  m = _lead(mask, x.ndim - 1)[..., None]                                   # [..., B, 1]
  pred = jax.nn.one_hot(jnp.argmax(x, axis=-1), num_classes) * m            # [..., B, C]
  true = _one_hot(labels, num_classes, x.ndim) * m
  tp = jnp.sum(pred * true, axis=-2)
  n_pred = jnp.sum(pred, axis=-2)
  n_true = jnp.broadcast_to(jnp.sum(true, axis=-2), tp.shape)
  present = (n_pred + n_true) > 0

  def macro(num, den):
    per_class = jnp.where(den > 0, num / jnp.maximum(den, 1.0), 0.0)
    num_present = jnp.sum(present, axis=-1, dtype=jnp.float32)
    value = jnp.sum(jnp.where(present, per_class, 0.0), axis=-1) / num_present
    return _finish(value, labels, mask, num_classes)

  fp, fn = n_pred - tp, n_true - tp
  return macro(tp, n_pred), macro(tp, n_true), macro(2.0 * tp, 2.0 * tp + fp + fn)


# --------------------------------------------------------------------------
# accuracy, likelihood, Brier
# --------------------------------------------------------------------------
def accuracy(log_probs: Array, labels: Array, mask: Optional[Array] = None) -> Array:
  """Top-1 accuracy.

  Args:
    log_probs: logits or log-probabilities ``[..., B, C]`` (only the argmax is
      used; ties go to the lowest class index).
    labels: integer labels ``[B]`` in ``[0, C)``.
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded.

  Returns:
    The fraction of correct rows, shape ``[...]`` (``[M]`` for member logits).

  Example:
    >>> accuracy(jnp.log(jnp.array([[0.9, 0.1], [0.2, 0.8]])), jnp.array([0, 0]))
    Array(0.5, dtype=float32)
  """
  x, labels, mask = _prep(log_probs, labels, mask, "accuracy")
  return _accuracy(x, labels, mask)


def nll(log_probs: Array, labels: Array, mask: Optional[Array] = None) -> Array:
  """Mean negative log-likelihood (cross-entropy, nats) of the true class.

  Equals ``sklearn.metrics.log_loss(labels, softmax(log_probs))`` wherever the
  true class has probability >= the dtype's ``eps`` (below it, log_loss clips to
  ``eps``; this does not, so that the ensemble decompositions stay exact). A
  probability below the smallest normal float (``finfo.tiny``) counts as
  ``tiny``: a hard vote's wrong answer (probability 0, log-probability
  :func:`~fusionjax.fusion.log_zero` = -1.8e19) costs ``-log(tiny)`` = 87.3
  nats in float32 (708.4 in float64), not 1.8e19.

  Args:
    log_probs: logits or log-probabilities ``[..., B, C]`` (``log_softmax`` is
      applied, the identity on log-probabilities).
    labels: integer labels ``[B]`` in ``[0, C)``.
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded.

  Returns:
    ``mean_b -log p(labels_b | x_b)``, shape ``[...]``.

  Example:
    >>> nll(jnp.log(jnp.array([[0.5, 0.5]])), jnp.array([1]))   # log 2
    Array(0.6931472, dtype=float32)
  """
  x, labels, mask = _prep(log_probs, labels, mask, "nll")
  return _nll(x, labels, mask)


def brier(log_probs: Array, labels: Array, mask: Optional[Array] = None) -> Array:
  """Brier score, **summed over classes**: ``mean_b sum_c (p_bc - y_bc)^2`` in ``[0, 2]``.

  This is Brier's original multi-class score and what
  ``sklearn.metrics.brier_score_loss`` returns for more than two classes. For the
  per-class mean of Deep Ensembles see :func:`brier_mean` (``brier / C``).

  Args:
    log_probs: logits or log-probabilities ``[..., B, C]``.
    labels: integer labels ``[B]`` in ``[0, C)``.
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded.

  Returns:
    The Brier score (sum over classes, mean over rows), shape ``[...]``.

  Example:
    >>> brier(jnp.log(jnp.array([[0.5, 0.5]])), jnp.array([0]))   # 0.25 + 0.25
    Array(0.5, dtype=float32)

  References:
    Brier, G. W. (1950). Verification of forecasts expressed in terms of
    probability. Monthly Weather Review.
  """
  x, labels, mask = _prep(log_probs, labels, mask, "brier")
  return _brier(x, labels, mask)


def brier_mean(log_probs: Array, labels: Array, mask: Optional[Array] = None) -> Array:
  """Brier score, **averaged over classes**: ``mean_b mean_c (p_bc - y_bc)^2`` = ``brier / C``.

  The form used by Deep Ensembles (Lakshminarayanan et al. 2017, eq. for BS with
  the ``1/K`` factor). For two classes it equals
  ``sklearn.metrics.brier_score_loss(y, p[:, 1])``.

  Args:
    log_probs: logits or log-probabilities ``[..., B, C]``.
    labels: integer labels ``[B]`` in ``[0, C)``.
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded.

  Returns:
    The per-class mean Brier score, shape ``[...]``.

  Example:
    >>> brier_mean(jnp.log(jnp.array([[0.5, 0.5]])), jnp.array([0]))
    Array(0.25, dtype=float32)

  References:
    Lakshminarayanan, B., Pritzel, A. & Blundell, C. (2017). Simple and
    scalable predictive uncertainty estimation using deep ensembles. NeurIPS.
  """
  x, labels, mask = _prep(log_probs, labels, mask, "brier_mean")
  return _brier(x, labels, mask) / x.shape[-1]


def brier_from_probs(probs: Array, labels: Array, mask: Optional[Array] = None, *,
                     per_class_mean: bool = False, atol: float = 1e-4) -> Array:
  """Brier score from **probabilities** (sum over classes, or their mean).

  Args:
    probs: probabilities ``[..., B, C]`` that are non-negative and sum to 1 over
      the last axis. Concrete inputs are checked (within ``atol``); traced ones
      are not.
    labels: integer labels ``[B]`` in ``[0, C)``.
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded (and not checked).
    per_class_mean: divide by ``C`` (the :func:`brier_mean` convention).
    atol: tolerance of the sum-to-one check.

  Returns:
    The Brier score, shape ``[...]``.

  Raises:
    ProbabilitiesError: a (real) row is negative or does not sum to 1.

  Example:
    >>> brier_from_probs(jnp.array([[1.0, 0.0]]), jnp.array([0]))
    Array(0., dtype=float32)

  References:
    Brier (1950); Lakshminarayanan et al. (2017) for the per-class mean.
  """
  p, labels, mask = _prep(probs, labels, mask, "brier_from_probs")
  value, m = _concrete(p), _concrete(mask)
  if value is not None and m is not None:
    real = _np.broadcast_to(m != 0, value.shape[:-1])
    sums = value.sum(-1)
    bad = real & ((_np.abs(sums - 1.0) > atol) | _np.any(value < -atol, axis=-1))
    if _np.any(bad):
      where = tuple(int(i[0]) for i in _np.nonzero(bad))
      raise errors.ProbabilitiesError(
          f"brier_from_probs: row {where} has probabilities summing to {float(sums[where]):.6g} "
          f"(min entry {float(value[where].min()):.6g}); {int(bad.sum())} rows are not "
          f"distributions within atol={atol}. Fix: pass jax.nn.softmax(logits), or use "
          "brier(logits_or_log_probs, labels).")
  out = _brier_probs(p, labels, mask)
  return out / p.shape[-1] if per_class_mean else out


# --------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------
def _check_bins(num_bins, fn: str) -> int:
  if isinstance(num_bins, bool) or not isinstance(num_bins, (int, _np.integer)) or num_bins < 1:
    raise errors.BinsError(
        f"{fn}: num_bins={num_bins!r}, but calibration error needs at least one bin. "
        "Fix: pass an integer num_bins >= 1 (15 is the usual choice).")
  return int(num_bins)


def calibration_bins(log_probs: Array, labels: Array, mask: Optional[Array] = None,
                     num_bins: int = 15, *, adaptive: bool = False):
  """Per-bin statistics of top-1 confidence: the data of a reliability diagram.

  Args:
    log_probs: logits or log-probabilities ``[..., B, C]``.
    labels: integer labels ``[B]``.
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded.
    num_bins: number of bins ``K >= 1``.
    adaptive: equal-mass bins (each holds ``floor`` or ``ceil`` of ``n / K``
      rows, ranked by confidence, ties by row index) instead of equal-width bins
      ``(k/K, (k+1)/K]``.

  Returns:
    ``(count, confidence, accuracy)``, each ``[..., K]``: rows per bin, their mean
    top-1 confidence and their accuracy (0 for empty bins).

  Example:
    >>> count, conf, acc = calibration_bins(jnp.zeros((4, 2)), jnp.array([0, 1, 0, 1]), num_bins=2)
    >>> count
    Array([4., 0.], dtype=float32)

  References:
    Guo, C., Pleiss, G., Sun, Y. & Weinberger, K. Q. (2017). On calibration of
    modern neural networks. ICML.
  """
  num_bins = _check_bins(num_bins, "calibration_bins")
  x, labels, mask = _prep(log_probs, labels, mask, "calibration_bins")
  return _calibration_bins(x, labels, mask, num_bins, adaptive)


def ece(log_probs: Array, labels: Array, mask: Optional[Array] = None,
        num_bins: int = 15) -> Array:
  """Expected calibration error with equal-width bins over top-1 confidence.

  ``ECE = sum_k (n_k / n) |acc_k - conf_k|`` over ``num_bins`` bins
  ``(k/K, (k+1)/K]`` of the top-1 probability (the first bin also holds 0).

  Args:
    log_probs: logits or log-probabilities ``[..., B, C]``.
    labels: integer labels ``[B]``.
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded.
    num_bins: number of equal-width bins (15 as in Guo et al.).

  Returns:
    The ECE in ``[0, 1]``, shape ``[...]``.

  Raises:
    BinsError: ``num_bins < 1``.

  Example:
    >>> ece(jnp.log(jnp.array([[0.8, 0.2]] * 5)), jnp.array([0, 0, 0, 0, 1]))  # conf 0.8, acc 0.8
    Array(0., dtype=float32)

  References:
    Guo, C., Pleiss, G., Sun, Y. & Weinberger, K. Q. (2017). On calibration of
    modern neural networks. ICML.
  """
  num_bins = _check_bins(num_bins, "ece")
  x, labels, mask = _prep(log_probs, labels, mask, "ece")
  return _ece(x, labels, mask, num_bins, False)


def adaptive_ece(log_probs: Array, labels: Array, mask: Optional[Array] = None,
                 num_bins: int = 15) -> Array:
  """Expected calibration error with adaptive (equal-mass) bins.

  Rows are ranked by top-1 confidence (ties by row index) and cut into
  ``num_bins`` runs of ``floor`` or ``ceil`` of ``n / num_bins`` rows; then
  ``ECE = sum_k (n_k / n) |acc_k - conf_k|`` as in :func:`ece`. Equal-mass bins
  avoid the nearly empty high-error bins of equal-width ECE.

  Args:
    log_probs: logits or log-probabilities ``[..., B, C]``.
    labels: integer labels ``[B]``.
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded.
    num_bins: number of bins (with fewer real rows than bins, some are empty).

  Returns:
    The adaptive ECE, shape ``[...]``.

  Raises:
    BinsError: ``num_bins < 1``.

  Example:
    >>> adaptive_ece(jnp.log(jnp.array([[0.8, 0.2]] * 5)), jnp.array([0, 0, 0, 0, 1]), num_bins=1)
    Array(0., dtype=float32)

  References:
    Naeini, M. P., Cooper, G. & Hauskrecht, M. (2015). Obtaining well calibrated
    probabilities using Bayesian binning. AAAI. Nixon, J. et al. (2019).
    Measuring calibration in deep learning. CVPR Workshops.
  """
  num_bins = _check_bins(num_bins, "adaptive_ece")
  x, labels, mask = _prep(log_probs, labels, mask, "adaptive_ece")
  return _ece(x, labels, mask, num_bins, True)


# --------------------------------------------------------------------------
# classification report
# --------------------------------------------------------------------------
_PRF_DOC = """Macro-averaged {what} of top-1 predictions.

  The per-class {what} is averaged over the classes that occur in the labels or
  in the predictions (scikit-learn's ``average='macro'`` with ``labels=None``);
  a present class with a zero denominator counts as 0 (``zero_division=0``).
  Agrees with ``sklearn.metrics.{sk}(labels, argmax, average='macro', zero_division=0)``.

  Args:
    log_probs: logits or log-probabilities ``[..., B, C]``.
    labels: integer labels ``[B]``.
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded.

  Returns:
    The macro {what}, shape ``[...]``.

  Example:
    >>> {name}(jnp.eye(3) * 5, jnp.array([0, 1, 2]))
    Array(1., dtype=float32)
  """


def precision(log_probs: Array, labels: Array, mask: Optional[Array] = None) -> Array:
  x, labels, mask = _prep(log_probs, labels, mask, "precision")
  return _prf(x, labels, mask)[0]


def recall(log_probs: Array, labels: Array, mask: Optional[Array] = None) -> Array:
  x, labels, mask = _prep(log_probs, labels, mask, "recall")
  return _prf(x, labels, mask)[1]


def f1(log_probs: Array, labels: Array, mask: Optional[Array] = None) -> Array:
  x, labels, mask = _prep(log_probs, labels, mask, "f1")
  return _prf(x, labels, mask)[2]


precision.__doc__ = _PRF_DOC.format(what="precision", sk="precision_score", name="precision")
recall.__doc__ = _PRF_DOC.format(what="recall", sk="recall_score", name="recall")
f1.__doc__ = _PRF_DOC.format(what="F1 score", sk="f1_score", name="f1")


# --------------------------------------------------------------------------
# ensemble diversity (reduce the member axis of [M, B, C])
# --------------------------------------------------------------------------
def _prep_members(member_logits, mask, fn):
  x = _check_outputs(member_logits, fn, member=True)
  return x, _check_mask(mask, x.shape[1], fn)


@jax.jit
def _disagreement_matrix(x, mask):
  pred = jnp.argmax(x, axis=-1)                                            # [M, B]
  differ = (pred[:, None, :] != pred[None, :, :]).astype(jnp.float32)      # [M, M, B]
  return _mean_rows(differ, mask)


def disagreement_matrix(member_logits: Array, mask: Optional[Array] = None) -> Array:
  """Fraction of rows on which two members' top-1 predictions differ, for every pair.

  Args:
    member_logits: member logits or log-probabilities ``[M, B, C]``.
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded.

  Returns:
    A symmetric ``[M, M]`` matrix with zeros on the diagonal.

  Example:
    >>> disagreement_matrix(jnp.array([[[1., 0.]], [[0., 1.]]]))
    Array([[0., 1.],
           [1., 0.]], dtype=float32)

  References:
    Kuncheva, L. I. & Whitaker, C. J. (2003). Measures of diversity in
    classifier ensembles. Machine Learning.
  """
  x, mask = _prep_members(member_logits, mask, "disagreement_matrix")
  return _disagreement_matrix(x, mask)


@jax.jit
def _disagreement(x, mask):
  num_members = x.shape[0]
  votes = jnp.sum(jax.nn.one_hot(jnp.argmax(x, axis=-1), x.shape[-1]), axis=0)  # [B, C]
  agree = jnp.sum(votes * (votes - 1.0), axis=-1)           # ordered agreeing pairs per row
  pairs = num_members * (num_members - 1.0)
  return _mean_rows((pairs - agree) / max(pairs, 1.0), mask)


def disagreement(member_logits: Array, mask: Optional[Array] = None) -> Array:
  """Mean pairwise disagreement: the average over member pairs of :func:`disagreement_matrix`.

  Computed from per-row vote counts in ``O(M B C)``; 0 for a single member.

  Args:
    member_logits: member logits or log-probabilities ``[M, B, C]``.
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded.

  Returns:
    A scalar in ``[0, 1]``.

  Example:
    >>> disagreement(jnp.array([[[1., 0.]], [[0., 1.]], [[0., 1.]]]))   # 2 of 3 pairs differ
    Array(0.6666667, dtype=float32)

  References:
    Kuncheva & Whitaker (2003); Fort, S., Hu, H. & Lakshminarayanan, B. (2019).
    Deep ensembles: a loss landscape perspective.
  """
  x, mask = _prep_members(member_logits, mask, "disagreement")
  return _disagreement(x, mask)


@jax.jit
def _entropies(x, mask):
  """All entropy measures at once (one compile per shape): name -> (per row [B], mean)."""
  lp = jax.nn.log_softmax(x, axis=-1)
  total = _entropy(_mean_log_probs(lp))                   # [B]  H[mean_m p_m]
  aleatoric = jnp.mean(_entropy(lp), axis=0)              # [B]  mean_m H[p_m]
  values = {"predictive": total, "expected": aleatoric, "mi": total - aleatoric}
  return {k: (v, _mean_rows(v, mask)) for k, v in values.items()}


_ENTROPY_DOC = """{title}

  Args:
    member_logits: member logits or log-probabilities ``[M, B, C]``; members are
      combined by the arithmetic mean of their probabilities.
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded from the mean.
    per_example: return the ``[B]`` per-row values instead of their mean (the
      mask is then not applied).

  Returns:
    A scalar in nats (or ``[B]`` with ``per_example``).

  Example:
    >>> two = jnp.log(jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]]))  # confident, disagreeing
    >>> {name}(two)
    Array({value}, dtype=float32)

  References:
    Houlsby, N., Huszar, F., Ghahramani, Z. & Lengyel, M. (2011). Bayesian
    active learning for classification and preference learning (BALD).
    Depeweg, S. et al. (2018). Decomposition of uncertainty in Bayesian deep
    learning for efficient and risk-sensitive learning. ICML.
  """


def predictive_entropy(member_logits: Array, mask: Optional[Array] = None, *,
                       per_example: bool = False) -> Array:
  x, mask = _prep_members(member_logits, mask, "predictive_entropy")
  return _entropies(x, mask)["predictive"][0 if per_example else 1]


def expected_entropy(member_logits: Array, mask: Optional[Array] = None, *,
                     per_example: bool = False) -> Array:
  x, mask = _prep_members(member_logits, mask, "expected_entropy")
  return _entropies(x, mask)["expected"][0 if per_example else 1]


def mutual_information(member_logits: Array, mask: Optional[Array] = None, *,
                       per_example: bool = False) -> Array:
  x, mask = _prep_members(member_logits, mask, "mutual_information")
  return _entropies(x, mask)["mi"][0 if per_example else 1]


predictive_entropy.__doc__ = _ENTROPY_DOC.format(
    title="Predictive (total) entropy ``H[mean_m p_m]`` of the ensemble's mean prediction.",
    name="predictive_entropy", value="0.6931472")
expected_entropy.__doc__ = _ENTROPY_DOC.format(
    title="Expected (aleatoric) entropy ``mean_m H[p_m]`` of the members' predictions.",
    name="expected_entropy", value="0.")
mutual_information.__doc__ = _ENTROPY_DOC.format(
    title=("Mutual information (BALD, epistemic): predictive entropy minus expected "
           "entropy,\n  ``H[mean_m p_m] - mean_m H[p_m] >= 0``."),
    name="mutual_information", value="0.6931472")


@jax.jit
def _oracle(x, labels, mask):
  correct = jnp.argmax(x, axis=-1) == labels[None, :]                      # [M, B]
  value = _mean_rows(jnp.any(correct, axis=0).astype(jnp.float32), mask)
  return _finish(value, labels, mask, x.shape[-1])


def oracle_accuracy(member_logits: Array, labels: Array, mask: Optional[Array] = None) -> Array:
  """Oracle accuracy: the fraction of rows where at least one member's top-1 is right.

  An upper bound on the accuracy of any per-row selection of one member
  (e.g. a perfect cascade or gate).

  Args:
    member_logits: member logits or log-probabilities ``[M, B, C]``.
    labels: integer labels ``[B]``.
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded.

  Returns:
    A scalar in ``[0, 1]``.

  Example:
    >>> oracle_accuracy(jnp.array([[[1., 0.], [1., 0.]], [[0., 1.], [1., 0.]]]), jnp.array([1, 1]))
    Array(0.5, dtype=float32)

  References:
    Kuncheva, L. I. (2004). Combining Pattern Classifiers. Wiley (the "oracle").
  """
  x, labels, mask = _prep(member_logits, labels, mask, "oracle_accuracy", member=True)
  return _oracle(x, labels, mask)


# --------------------------------------------------------------------------
# ambiguity decompositions
# --------------------------------------------------------------------------
class Decomposition(NamedTuple):
  """``ensemble == mean_member - diversity`` (exactly, up to float rounding).

  Attributes:
    ensemble: the loss of the combined prediction.
    mean_member: the (weighted) mean of the members' losses.
    diversity: the ambiguity (a non-negative spread term).
  """
  ensemble: Array
  mean_member: Array
  diversity: Array


@jax.jit
def _ambiguity(f, y, w, mask):
  wb = (w / jnp.sum(w)).reshape((-1, 1, 1))
  fbar = jnp.sum(wb * f, axis=0)                                           # [B, D]
  ens = jnp.sum(jnp.square(fbar - y), axis=-1)
  member = jnp.sum(wb[..., 0] * jnp.sum(jnp.square(f - y[None]), axis=-1), axis=0)
  amb = jnp.sum(wb[..., 0] * jnp.sum(jnp.square(f - fbar[None]), axis=-1), axis=0)
  return Decomposition(_mean_rows(ens, mask), _mean_rows(member, mask), _mean_rows(amb, mask))


def _check_weights(weights, num_members: int, fn: str) -> Array:
  if weights is None:
    return _np.full((num_members,), 1.0 / num_members, _np.float32)
  weights = _as_float(weights)
  if weights.shape != (num_members,):
    raise errors.WeightsError(
        f"{fn}: weights have shape {tuple(weights.shape)} but there are M={num_members} "
        f"members. Fix: pass one non-negative weight per member, shape [{num_members}].")
  value = _concrete(weights)
  if value is not None and (_np.any(value < 0) or not value.sum() > 0):
    raise errors.WeightsError(
        f"{fn}: weights {value.tolist()} must be non-negative with a positive sum. "
        "Fix: pass e.g. jnp.ones(M) / M.")
  return weights                                   # normalised inside the kernel


def ambiguity_decomposition(member_preds: Array, targets: Array, mask: Optional[Array] = None,
                            weights: Optional[Array] = None) -> Decomposition:
  """Krogh–Vedelsby ambiguity decomposition of the squared error of a weighted average.

  With ``fbar = sum_m w_m f_m`` (``w`` normalised to sum to 1), for every row

      ``|fbar - y|^2 = sum_m w_m |f_m - y|^2 - sum_m w_m |f_m - fbar|^2``

  exactly: the ensemble error is the mean member error minus the *ambiguity*,
  which does not depend on the target. Squared errors are summed over ``D`` and
  averaged over rows. Applied to probability vectors and one-hot targets this
  is the Brier-score decomposition (see :func:`brier_decomposition`).

  Args:
    member_preds: regression predictions ``[M, B, D]`` (or ``[M, B]``).
    targets: ``[B, D]`` (or ``[B]``).
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded.
    weights: optional non-negative member weights ``[M]`` (default uniform).

  Returns:
    :class:`Decomposition` ``(ensemble, mean_member, diversity)`` with
    ``ensemble == mean_member - diversity``.

  Example:
    >>> d = ambiguity_decomposition(jnp.array([[[0.]], [[2.]]]), jnp.array([[1.]]))
    >>> d.ensemble, d.mean_member, d.diversity
    (Array(0., dtype=float32), Array(1., dtype=float32), Array(1., dtype=float32))

  References:
    Krogh, A. & Vedelsby, J. (1995). Neural network ensembles, cross
    validation, and active learning. NeurIPS 7.
  """
  f = _as_float(member_preds)
  y = _as_float(targets)
  if f.ndim == 2:
    f = f[..., None]
  if y.ndim == 1:
    y = y[:, None]
  if f.ndim != 3 or y.shape != f.shape[1:]:
    raise errors.MemberOutputsError(
        f"ambiguity_decomposition expects member predictions [M, B, D] and targets [B, D]; "
        f"got {tuple(jnp.shape(member_preds))} and {tuple(jnp.shape(targets))}. Fix: stack the "
        "member predictions on axis 0 and give one target row per example.")
  if 0 in f.shape:
    raise errors.EmptySplitError(
        f"ambiguity_decomposition got an empty input of shape {tuple(f.shape)}. "
        "Fix: check the split that produced it.")
  mask = _check_mask(mask, f.shape[1], "ambiguity_decomposition")
  w = _check_weights(weights, f.shape[0], "ambiguity_decomposition")
  return _ambiguity(f, y, w, mask)


def brier_decomposition(member_logits: Array, labels: Array, mask: Optional[Array] = None,
                        weights: Optional[Array] = None) -> Decomposition:
  """Ambiguity decomposition of the Brier score (sum over classes) of the averaged probabilities.

  The ensemble is the (weighted) arithmetic mean of member probabilities and
  ``brier(ensemble) == mean_m brier(member_m) - mean_m |p_m - pbar|^2`` exactly
  (Krogh–Vedelsby with one-hot targets).

  Args:
    member_logits: member logits or log-probabilities ``[M, B, C]``.
    labels: integer labels ``[B]``.
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded.
    weights: optional non-negative member weights ``[M]`` (default uniform).

  Returns:
    :class:`Decomposition` of the Brier score.

  Example:
    >>> d = brier_decomposition(jnp.log(jnp.array([[[1., 0.]], [[0., 1.]]])), jnp.array([0]))
    >>> d.ensemble, d.mean_member, d.diversity
    (Array(0.5, dtype=float32), Array(1., dtype=float32), Array(0.5, dtype=float32))

  References:
    Krogh & Vedelsby (1995); Lakshminarayanan et al. (2017) for the Brier score.
  """
  x, labels, mask = _prep(member_logits, labels, mask, "brier_decomposition", member=True)
  w = _check_weights(weights, x.shape[0], "brier_decomposition")
  y = jax.nn.one_hot(jnp.clip(labels, 0, x.shape[-1] - 1), x.shape[-1])
  d = _ambiguity(jax.nn.softmax(x, axis=-1), y, w, mask)
  return Decomposition(*(_finish(v, labels, mask, x.shape[-1]) for v in d))


@functools.partial(jax.jit, static_argnames=("combine",))
def _nll_decomposition(x, labels, mask, combine):
  lp = jax.nn.log_softmax(x, axis=-1)                                      # [M, B, C]
  member_lpy = _true_class(lp, labels)                                     # [M, B]
  mean_member = jnp.mean(_mean_rows(-member_lpy, mask))
  if combine == "geometric":
    lq = jax.nn.log_softmax(jnp.mean(lp, axis=0), axis=-1)                 # [B, C]
    # mean_m KL(q || p_m), computed directly (not as the difference of the others).
    kl = jnp.sum(jnp.exp(lq)[None] * (lq[None] - lp), axis=-1)            # [M, B]
    diversity = _mean_rows(jnp.mean(kl, axis=0), mask)
  else:
    lq = _mean_log_probs(lp)
    gap = _true_class(lq, labels) - jnp.mean(member_lpy, axis=0)          # Jensen gap [B]
    diversity = _mean_rows(gap, mask)
  ensemble = _mean_rows(-_true_class(lq, labels), mask)
  return Decomposition(*(_finish(v, labels, mask, x.shape[-1])
                         for v in (ensemble, mean_member, diversity)))


def nll_decomposition(member_logits: Array, labels: Array, mask: Optional[Array] = None,
                      combine: str = "geometric") -> Decomposition:
  """Cross-entropy analogue of the ambiguity decomposition.

  Let ``p_m`` be the member distributions and ``y`` the one-hot target (any
  target distribution works for the identity below; NLL is ``KL(y || p)`` for
  one-hot ``y``).

  * ``combine='geometric'``: ``q = normalise(prod_m p_m^(1/M))``, i.e.
    ``log q = mean_m log p_m - log Z`` with ``Z = sum_c prod_m p_mc^(1/M) <= 1``.
    Then, **exactly**, for every row and any target distribution ``y``,

        ``mean_m KL(y || p_m) = KL(y || q) + mean_m KL(q || p_m)``,

    because both sides' difference is ``-log Z = mean_m KL(q || p_m)``. So
    ``NLL(q) = mean_m NLL(p_m) - diversity`` with the label-free
    ``diversity = mean_m KL(q || p_m) = -log Z >= 0`` (Heskes 1998).
  * ``combine='arithmetic'``: ``pbar = mean_m p_m`` (the usual deep ensemble).
    No label-free identity of this form holds; what holds is Jensen's
    inequality, ``NLL(pbar) <= mean_m NLL(p_m)``, with the gap
    ``diversity = log pbar_y - mean_m log p_my >= 0`` (per row, then averaged),
    which depends on the label through the true-class probabilities only.

  Args:
    member_logits: member logits or log-probabilities ``[M, B, C]``.
    labels: integer labels ``[B]``.
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded.
    combine: ``'geometric'`` (normalised geometric mean, i.e. mean of
      log-probabilities then ``log_softmax``) or ``'arithmetic'``.

  Returns:
    :class:`Decomposition` ``(ensemble NLL, mean member NLL, diversity)`` with
    ``ensemble == mean_member - diversity``.

  Example:
    >>> lp = jnp.log(jnp.array([[[0.9, 0.1]], [[0.5, 0.5]]]))
    >>> d = nll_decomposition(lp, jnp.array([0]))
    >>> bool(jnp.allclose(d.ensemble, d.mean_member - d.diversity))
    True

  References:
    Krogh & Vedelsby (1995). Heskes, T. (1998). Bias/variance decompositions
    for likelihood-based estimators. Neural Computation 10(6).
  """
  if combine not in ("geometric", "arithmetic"):
    raise errors.UnknownMetricError(
        f"nll_decomposition: combine={combine!r} is not one of 'geometric', 'arithmetic'. "
        "Fix: pick one of those.")
  x, labels, mask = _prep(member_logits, labels, mask, "nll_decomposition", member=True)
  return _nll_decomposition(x, labels, mask, combine)


# --------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("num_bins",))
def _summary(x, labels, mask, num_bins):
  return {
      "accuracy": _accuracy(x, labels, mask),
      "nll": _nll(x, labels, mask),
      "brier": _brier(x, labels, mask),
      "ece": _ece(x, labels, mask, num_bins, False),
  }


def summary(log_probs: Array, labels: Array, mask: Optional[Array] = None, *,
            num_bins: int = 15) -> dict:
  """Accuracy, NLL, Brier (sum over classes) and ECE in one compiled call.

  The per-epoch evaluation record of the training driver.

  Args:
    log_probs: fused log-probabilities (or logits) ``[..., B, C]``.
    labels: integer labels ``[B]``.
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded.
    num_bins: ECE bins.

  Returns:
    ``{'accuracy', 'nll', 'brier', 'ece'}`` -> arrays of shape ``[...]``.

  Example:
    >>> s = summary(jnp.log(jnp.array([[0.8, 0.2]] * 5)), jnp.array([0, 0, 0, 0, 1]))
    >>> round(float(s['accuracy']), 4)
    0.8

  References:
    Guo et al. (2017) for ECE; Lakshminarayanan et al. (2017) for NLL and Brier.
  """
  num_bins = _check_bins(num_bins, "summary")
  x, labels, mask = _prep(log_probs, labels, mask, "summary")
  return _summary(x, labels, mask, num_bins)


@functools.partial(jax.jit, static_argnames=("num_bins",))
def _member_summary(x, labels, mask, num_bins):
  out = {k: v for k, v in _summary(x, labels, mask, num_bins).items()}
  ens = _mean_log_probs(jax.nn.log_softmax(x, axis=-1))
  out.update({f"ensemble_{k}": v for k, v in _summary(ens, labels, mask, num_bins).items()})
  out["oracle_accuracy"] = _oracle(x, labels, mask)
  out["disagreement"] = _finish(_disagreement(x, mask), labels, mask, x.shape[-1])
  out["mutual_information"] = _entropies(x, mask)["mi"][1]
  return out


def member_summary(member_logits: Array, labels: Array, mask: Optional[Array] = None, *,
                   num_bins: int = 15) -> dict:
  """Per-member metrics, the mean ensemble's metrics and diversity, in one compiled call.

  Args:
    member_logits: member logits ``[M, B, C]``.
    labels: integer labels ``[B]``.
    mask: optional ``[B]``; rows with ``mask == 0`` are excluded.
    num_bins: ECE bins.

  Returns:
    A dict: ``accuracy``, ``nll``, ``brier``, ``ece`` (each ``[M]``, one per
    member); ``ensemble_accuracy``, ``ensemble_nll``, ``ensemble_brier``,
    ``ensemble_ece`` (scalars, for the arithmetic mean of member probabilities);
    ``oracle_accuracy``, ``disagreement`` and ``mutual_information`` (scalars).

  Example:
    >>> s = member_summary(jax.random.normal(jax.random.key(0), (3, 8, 4)), jnp.arange(8) % 4)
    >>> s['accuracy'].shape, s['ensemble_nll'].shape
    ((3,), ())

  References:
    Lakshminarayanan et al. (2017); Guo et al. (2017); Houlsby et al. (2011).
  """
  num_bins = _check_bins(num_bins, "member_summary")
  x, labels, mask = _prep(member_logits, labels, mask, "member_summary", member=True)
  return _member_summary(x, labels, mask, num_bins)


# --------------------------------------------------------------------------
# detection (OOD / misclassification): AUROC, AUPR, FPR at a TPR
# --------------------------------------------------------------------------
def _check_prob(value, name: str, fn: str, *, low_open: bool = False,
                high_open: bool = False) -> float:
  """A Python float in ``[0, 1]`` (ends open where asked) or ThresholdError."""
  try:
    v = float(value)
  except (TypeError, ValueError):
    v = float("nan")
  ok = (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1)
  if not ok:
    interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
    raise errors.ThresholdError(
        f"{fn}: {name}={value!r} is outside {interval}. Fix: pass a fraction in "
        f"{interval}, e.g. {name}=0.95.")
  return v


def _check_binary(y_true, scores, fn: str):
  """``y_true [N]`` in {0, 1} and ``scores [N]`` float -> (y as float32, scores)."""
  scores = _as_float(scores)
  y = y_true if isinstance(y_true, jax.Array) else _np.asarray(y_true)
  if y.ndim != 1 or scores.shape != y.shape:
    raise errors.BatchShapeError(
        f"{fn}: y_true has shape {tuple(y.shape)} and scores {tuple(scores.shape)}; both "
        "must be one-dimensional [N], one score per example. Fix: pass y_true.ravel() and "
        "scores.ravel() of the same length.")
  if y.shape[0] == 0:
    raise errors.EmptySplitError(f"{fn}: got no examples (N=0). Fix: check the split.")
  value = _concrete(y)
  if value is None:
    return y.astype(jnp.float32), scores
  bad = sorted(set(_np.unique(value).tolist()) - {0, 1, False, True})
  if bad:
    raise errors.LabelError(
        f"{fn}: y_true must be binary (0/1 or bool); got the values {bad[:5]}"
        f"{'...' if len(bad) > 5 else ''}. Fix: pass y_true = (labels == positive_class).")
  n_pos = int(_np.sum(value == 1))
  if n_pos in (0, value.shape[0]):
    raise errors.LabelError(
        f"{fn}: y_true holds only {'positives' if n_pos else 'negatives'} ({value.shape[0]} "
        "rows); the metric needs both classes. Fix: evaluate on a set with both "
        "in-distribution (0) and positive (1) examples.")
  return value.astype(_np.float32), scores


def _binary_curve(y, scores):
  """Cumulative (tps, fps) at every row in decreasing-score order, tied scores grouped.

  Row ``i`` of the sorted order carries the counts at the *end* of its group of
  equal scores, so the sequence is sklearn's ``roc_curve(drop_intermediate=False)``
  with each point repeated once per tied row (repeats add nothing to an area).
  Also returns ``ok``: False when a traced ``y`` is not binary or has one class only.
  """
  order = jnp.argsort(-scores, stable=True)
  s, ys = scores[order], y[order]
  tps = jnp.cumsum(ys)
  fps = jnp.arange(1, s.shape[0] + 1, dtype=tps.dtype) - tps
  new = jnp.concatenate([jnp.ones((1,), bool), s[1:] != s[:-1]])
  gid = jnp.cumsum(new) - 1                                    # group of each sorted row
  last = jnp.concatenate([s[1:] != s[:-1], jnp.ones((1,), bool)])
  n = s.shape[0]
  end_idx = jax.ops.segment_max(jnp.where(last, jnp.arange(n), -1), gid, num_segments=n)
  end = end_idx[gid]
  n_pos = tps[-1]
  ok = jnp.all((y == 0) | (y == 1)) & (n_pos > 0) & (n_pos < n)
  return tps[end], fps[end], n_pos, n - n_pos, ok


@jax.jit
def _auroc(y, scores):
  tps, fps, p, q, ok = _binary_curve(y, scores)
  # Trapezoids in counts (integers, exact while below 2**24), one division at the end.
  tps = jnp.concatenate([jnp.zeros((1,), tps.dtype), tps])
  fps = jnp.concatenate([jnp.zeros((1,), fps.dtype), fps])
  area = jnp.sum((fps[1:] - fps[:-1]) * (tps[1:] + tps[:-1])) / (2 * p * q)
  return jnp.where(ok, area, jnp.nan)


@jax.jit
def _aupr(y, scores):
  tps, fps, p, _, ok = _binary_curve(y, scores)
  step = tps - jnp.concatenate([jnp.zeros((1,), tps.dtype), tps[:-1]])   # R_n - R_{n-1}, times p
  precision = tps / (tps + fps)
  return jnp.where(ok, jnp.sum(step * precision) / p, jnp.nan)


@jax.jit
def _fpr_at_tpr(y, scores, tpr):
  tps, fps, p, q, ok = _binary_curve(y, scores)
  reached = tps / p >= tpr
  value = jnp.min(jnp.where(reached, fps / q, jnp.inf))   # fpr only grows along the curve
  value = jnp.where(tpr <= 0, 0.0, value)                  # the curve's first point (0, 0)
  return jnp.where(ok, value, jnp.nan)


def auroc(y_true: Array, scores: Array) -> Array:
  """Area under the ROC curve, equal to ``sklearn.metrics.roc_auc_score``.

  The ROC curve runs over every distinct score (tied scores form one point)
  and its area is taken with the trapezoidal rule, which equals the
  Mann-Whitney U statistic ``P(s_pos > s_neg) + P(s_pos == s_neg) / 2``.

  For OOD detection pass ``y_true = is_ood`` and an **uncertainty** score
  (higher = more uncertain, see :func:`entropy`); for misclassification
  detection ``y_true = is_wrong``.

  Args:
    y_true: binary labels ``[N]`` (0/1 or bool); 1 is the positive class.
    scores: ``[N]``; a higher score means "more likely positive".

  Returns:
    A scalar in ``[0, 1]`` (0.5 for random scores). Under ``jit`` a ``y_true``
    that is not binary or holds one class only gives NaN (eagerly:
    :class:`~fusionjax.errors.LabelError`).

  Example:
    >>> auroc(jnp.array([0, 0, 1, 1]), jnp.array([0.1, 0.4, 0.35, 0.8]))
    Array(0.75, dtype=float32)
    >>> in_logits = jnp.array([[4., 0., 0.], [3., 1., 0.]])    # confident
    >>> ood_logits = jnp.array([[1., 1., 0.], [0., 0., 0.]])   # unsure
    >>> is_ood = jnp.array([0, 0, 1, 1])
    >>> auroc(is_ood, entropy(jnp.concatenate([in_logits, ood_logits])))
    Array(1., dtype=float32)

  References:
    Fawcett, T. (2006). An introduction to ROC analysis. Pattern Recognition
    Letters. Hendrycks, D. & Gimpel, K. (2017). A baseline for detecting
    misclassified and out-of-distribution examples in neural networks. ICLR.
  """
  y, scores = _check_binary(y_true, scores, "auroc")
  return _auroc(y, scores)


def aupr(y_true: Array, scores: Array) -> Array:
  """Area under the precision-recall curve as average precision, equal to
  ``sklearn.metrics.average_precision_score``.

  ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct scores in decreasing
  order (tied scores form one threshold), ``R_0 = 0``: a step function, not the
  trapezoidal rule. The positive class is ``y_true == 1`` ("AUPR-In" / "AUPR-Out"
  are this with ``y_true`` and the sign of the score chosen accordingly).

  Args:
    y_true: binary labels ``[N]`` (0/1 or bool); 1 is the positive class.
    scores: ``[N]``; a higher score means "more likely positive".

  Returns:
    A scalar in ``[0, 1]``; NaN under ``jit`` for a non-binary or one-class
    ``y_true`` (eagerly: :class:`~fusionjax.errors.LabelError`).

  Example:
    >>> aupr(jnp.array([0, 0, 1, 1]), jnp.array([0.1, 0.4, 0.35, 0.8]))
    Array(0.8333334, dtype=float32)

  References:
    Manning, Raghavan & Schuetze (2008). Introduction to Information Retrieval,
    ch. 8 (average precision). Davis, J. & Goadrich, M. (2006). The
    relationship between precision-recall and ROC curves. ICML.
  """
  y, scores = _check_binary(y_true, scores, "aupr")
  return _aupr(y, scores)


def fpr_at_tpr(y_true: Array, scores: Array, tpr: float = 0.95) -> Array:
  """False-positive rate at the first ROC point whose true-positive rate reaches ``tpr``.

  The ROC points are ``sklearn.metrics.roc_curve(y_true, scores,
  drop_intermediate=False)``'s: ``(0, 0)`` and then one point per distinct
  score in decreasing order (tied scores form one point). The result is the
  FPR of the first of them with ``TPR >= tpr`` (FPR95 for ``tpr=0.95``).

  With ``y_true = is_ood`` and an uncertainty score this is "the fraction of
  in-distribution examples flagged when 95% of OOD ones are caught"; the
  more common OOD convention (in-distribution positive, confidence score) is
  ``fpr_at_tpr(1 - is_ood, -uncertainty)``.

  Args:
    y_true: binary labels ``[N]`` (0/1 or bool); 1 is the positive class.
    scores: ``[N]``; a higher score means "more likely positive".
    tpr: the true-positive rate to reach, in ``[0, 1]``.

  Returns:
    A scalar in ``[0, 1]``; NaN under ``jit`` for a non-binary or one-class
    ``y_true`` (eagerly: :class:`~fusionjax.errors.LabelError`).

  Raises:
    ThresholdError: ``tpr`` outside ``[0, 1]``.

  Example:
    >>> fpr_at_tpr(jnp.array([0, 0, 1, 1]), jnp.array([0.1, 0.4, 0.35, 0.8]), tpr=1.0)
    Array(0.5, dtype=float32)

  References:
    Liang, S., Li, Y. & Srikant, R. (2018). Enhancing the reliability of
    out-of-distribution image detection in neural networks (ODIN). ICLR.
  """
  if not isinstance(tpr, jax.core.Tracer):
    tpr = _check_prob(tpr, "tpr", "fpr_at_tpr")
  y, scores = _check_binary(y_true, scores, "fpr_at_tpr")
  return _fpr_at_tpr(y, scores, jnp.asarray(tpr, scores.dtype))


# --------------------------------------------------------------------------
# uncertainty scores (higher = more uncertain) and their decomposition
# --------------------------------------------------------------------------
def _prep_scores(outputs, fn: str) -> Array:
  x = _check_outputs(outputs, fn)
  if x.ndim not in (2, 3):
    raise errors.MemberOutputsError(
        f"{fn} expects member outputs [M, B, C] or fused log-probabilities [B, C]; got "
        f"shape {tuple(x.shape)}. Fix: stack members on the first axis, or fuse them first.")
  return x


def _mean_prediction(x: Array) -> Array:
  """``[M, B, C]`` -> log of the mean member probability; ``[B, C]`` -> log_softmax."""
  lp = jax.nn.log_softmax(x, axis=-1)
  return _mean_log_probs(lp) if x.ndim == 3 else lp


@jax.jit
def _max_prob_score(x):
  return 1.0 - jnp.exp(jnp.max(_mean_prediction(x), axis=-1))


@jax.jit
def _margin_score(x):
  if x.shape[-1] == 1:
    return jnp.zeros(x.shape[-2], x.dtype)
  top2 = jax.lax.top_k(jnp.exp(_mean_prediction(x)), 2)[0]
  return 1.0 - (top2[..., 0] - top2[..., 1])


@jax.jit
def _entropy_score(x):
  return _entropy(_mean_prediction(x))


_SCORE_ARGS = """Args:
    outputs: member logits or log-probabilities ``[M, B, C]`` (members combined
      by the arithmetic mean of their probabilities) or fused log-probabilities
      (or logits) ``[B, C]``."""


def max_prob(outputs: Array) -> Array:
  """Maximum-probability **uncertainty** score ``1 - max_c p_c`` (higher = more uncertain).

  Every score function here (:func:`max_prob`, :func:`margin`, :func:`entropy`,
  and ``mutual_information(..., per_example=True)``) follows one convention:
  **higher means more uncertain**, i.e. more likely OOD or misclassified, so
  ``auroc(is_ood, score)`` and ``auroc(is_wrong, score)`` read directly. The
  confidence itself is ``1 - max_prob(outputs)``; ``1 -`` keeps the ranking
  of torch-uncertainty's ``-max p`` criterion.

  {args}

  Returns:
    ``[B]`` scores in ``[0, 1 - 1/C]``.

  Example:
    >>> [round(v, 4) for v in max_prob(jnp.log(jnp.array([[0.9, 0.1], [0.5, 0.5]]))).tolist()]
    [0.1, 0.5]

  References:
    Hendrycks, D. & Gimpel, K. (2017). A baseline for detecting misclassified
    and out-of-distribution examples in neural networks. ICLR.
  """
  return _max_prob_score(_prep_scores(outputs, "max_prob"))


def margin(outputs: Array) -> Array:
  """Margin **uncertainty** score ``1 - (p_(1) - p_(2))`` (higher = more uncertain).

  ``p_(1)`` and ``p_(2)`` are the largest and second-largest class probabilities
  of the (mean) prediction; a single class (C=1) gives 0. See :func:`max_prob`
  for the sign convention.

  {args}

  Returns:
    ``[B]`` scores in ``[0, 1]``.

  Example:
    >>> margin(jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]])))
    Array([0.5, 1. ], dtype=float32)

  References:
    Scheffer, T., Decomain, C. & Wrobel, S. (2001). Active hidden Markov models
    for information extraction (margin sampling). IDA.
  """
  return _margin_score(_prep_scores(outputs, "margin"))


def entropy(outputs: Array) -> Array:
  """Entropy (nats) of the mean prediction per example: an uncertainty score.

  For member outputs this is the *total* uncertainty ``H[mean_m p_m]``
  (:func:`predictive_entropy` per row); higher = more uncertain (see
  :func:`max_prob`). The epistemic part is
  ``mutual_information(member_logits, per_example=True)``.

  {args}

  Returns:
    ``[B]`` scores in ``[0, log C]``.

  Example:
    >>> member_logits = jax.random.normal(jax.random.key(0), (4, 6, 3))
    >>> is_ood = jnp.array([0, 0, 0, 1, 1, 1])
    >>> float(auroc(is_ood, entropy(member_logits))) <= 1.0
    True
    >>> entropy(jnp.log(jnp.array([[0.5, 0.5]])))
    Array([0.6931472], dtype=float32)

  References:
    Shannon (1948); Lakshminarayanan, B., Pritzel, A. & Blundell, C. (2017).
    Simple and scalable predictive uncertainty estimation using deep
    ensembles. NeurIPS.
  """
  return _entropy_score(_prep_scores(outputs, "entropy"))


for _f in (max_prob, margin, entropy):
  _f.__doc__ = _f.__doc__.replace("{args}", _SCORE_ARGS)
del _f


class UncertaintyDecomposition(NamedTuple):
  """Per-example ``total == aleatoric + epistemic`` (nats, up to float rounding)."""
  total: Array       #: ``[B]`` entropy of the mean prediction ``H[mean_m p_m]``
  aleatoric: Array   #: ``[B]`` mean member entropy ``mean_m H[p_m]``
  epistemic: Array   #: ``[B]`` mutual information ``total - aleatoric >= 0``


def uncertainty_decomposition(member_logits: Array) -> UncertaintyDecomposition:
  """Splits each example's total predictive entropy into aleatoric and epistemic parts.

  ``total = H[mean_m p_m]``, ``aleatoric = mean_m H[p_m]`` and ``epistemic =
  total - aleatoric`` (the mutual information between the prediction and the
  member, >= 0 by Jensen's inequality; tiny negative values are rounding).

  Args:
    member_logits: member logits or log-probabilities ``[M, B, C]``.

  Returns:
    An :class:`UncertaintyDecomposition` of three ``[B]`` arrays.

  Example:
    >>> two = jnp.log(jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]]))  # confident, disagreeing
    >>> u = uncertainty_decomposition(two)
    >>> u.total, u.aleatoric, u.epistemic
    (Array([0.6931472], dtype=float32), Array([0.], dtype=float32), Array([0.6931472], dtype=float32))

  References:
    Depeweg, S. et al. (2018). Decomposition of uncertainty in Bayesian deep
    learning for efficient and risk-sensitive learning. ICML. Houlsby et al.
    (2011) (BALD).
  """
  x, mask = _prep_members(member_logits, None, "uncertainty_decomposition")
  e = _entropies(x, mask)
  return UncertaintyDecomposition(e["predictive"][0], e["expected"][0], e["mi"][0])


# --------------------------------------------------------------------------
# selective classification: risk-coverage curve and AURC
# --------------------------------------------------------------------------
@jax.jit
def _risk_coverage(x, labels, confidence):
  lp = jax.nn.log_softmax(x, axis=-1)
  if confidence is None:
    confidence = jnp.max(lp, axis=-1)          # log of the max probability: same order
  wrong = (jnp.argmax(lp, axis=-1) != labels).astype(jnp.float32)
  n = wrong.shape[0]
  order = jnp.argsort(-confidence, stable=True)
  c, e = confidence[order], wrong[order]
  gid = jnp.cumsum(jnp.concatenate([jnp.ones((1,), bool), c[1:] != c[:-1]])) - 1
  size = jax.ops.segment_sum(jnp.ones_like(e), gid, num_segments=n)
  err = jax.ops.segment_sum(e, gid, num_segments=n)
  start = (jnp.cumsum(size) - size)[gid]                 # rows more confident than the group
  err_before = (jnp.cumsum(err) - err)[gid]
  k = jnp.arange(1, n + 1, dtype=jnp.float32)
  # Within a group of tied confidences the errors are spread evenly: the
  # expected risk over every order of the tied rows.
  risk = (err_before + (k - start) * err[gid] / size[gid]) / k
  ok = jnp.all((labels >= 0) & (labels < x.shape[-1]))
  return k / n, jnp.where(ok, risk, jnp.nan)


@jax.jit
def _aurc(x, labels, confidence):
  return jnp.mean(_risk_coverage(x, labels, confidence)[1])


def _prep_selective(log_probs, labels, confidence, fn):
  x = _check_outputs(log_probs, fn)
  if x.ndim != 2:
    raise errors.MemberOutputsError(
        f"{fn} expects one predictor's log-probabilities [B, C]; got shape "
        f"{tuple(x.shape)}. Fix: fuse the members first (e.g. fusionjax.fusion's mean) "
        "or pass one member's outputs.")
  batch = x.shape[0]
  labels = _check_labels(labels, batch, x.shape[-1], _np.ones((batch,), _np.float32), fn)
  if confidence is not None:
    confidence = _as_float(confidence)
    if confidence.shape != (batch,):
      raise errors.BatchShapeError(
          f"{fn}: confidence has shape {tuple(confidence.shape)} but the outputs have "
          f"B={batch} rows. Fix: pass one confidence per row, shape [{batch}] (higher = "
          "more confident, e.g. -entropy(log_probs)).")
  return x, labels, confidence


def risk_coverage(log_probs: Array, labels: Array, confidence: Optional[Array] = None):
  """Risk-coverage curve of selective classification.

  Rows are sorted by decreasing ``confidence``; at coverage ``k / B`` the
  classifier answers the ``k`` most confident rows and the risk is the top-1
  error rate among them, for ``k = 1..B``. **Ties**: rows with equal
  confidence cannot be ordered, so within a tie group the errors are spread
  evenly (the risk is its expectation over every order of the tied rows);
  at the end of a group this is the group's exact error rate.

  Args:
    log_probs: logits or log-probabilities ``[B, C]`` of one predictor (fuse
      members first).
    labels: integer labels ``[B]`` in ``[0, C)``.
    confidence: optional ``[B]``, higher = more confident; defaults to the
      maximum probability (softmax response). From an uncertainty score pass
      its negative, e.g. ``-entropy(log_probs)``.

  Returns:
    ``(coverage, risk)``, both ``[B]``: ``coverage = k / B`` and ``risk[k-1]``.

  Example:
    >>> lp = jnp.log(jnp.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]))
    >>> coverage, risk = risk_coverage(lp, jnp.array([0, 1, 1]))
    >>> risk
    Array([0.        , 0.        , 0.33333334], dtype=float32)

  References:
    El-Yaniv, R. & Wiener, Y. (2010). On the foundations of noise-free
    selective classification. JMLR. Geifman, Y. & El-Yaniv, R. (2017).
    Selective classification for deep neural networks. NeurIPS.
  """
  return _risk_coverage(*_prep_selective(log_probs, labels, confidence, "risk_coverage"))


def aurc(log_probs: Array, labels: Array, confidence: Optional[Array] = None) -> Array:
  """Area under the risk-coverage curve: ``AURC = (1/B) sum_{k=1}^{B} risk_k``.

  ``risk_k`` is :func:`risk_coverage`'s risk at coverage ``k / B`` (ties in
  confidence spread evenly), so AURC is the mean of the selective risks over
  the ``B`` coverages, as defined by Geifman et al. (2019). Lower is better;
  a perfect ranking of a classifier with error rate ``r`` gets
  ``r + (1 - r) log(1 - r)`` (the "optimal" AURC behind E-AURC).

  Args:
    log_probs: logits or log-probabilities ``[B, C]`` of one predictor.
    labels: integer labels ``[B]`` in ``[0, C)``.
    confidence: optional ``[B]``, higher = more confident (default: max
      probability).

  Returns:
    A scalar in ``[0, 1]``.

  Example:
    >>> lp = jnp.log(jnp.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]))
    >>> round(float(aurc(lp, jnp.array([0, 1, 1]))), 4)   # mean of (0, 0, 1/3)
    0.1111

  References:
    Geifman, Y., Uziel, G. & El-Yaniv, R. (2019). Bias-reduced uncertainty
    estimation for deep neural classifiers. ICLR.
  """
  return _aurc(*_prep_selective(log_probs, labels, confidence, "aurc"))


# --------------------------------------------------------------------------
# regression: Gaussian NLL, CRPS, interval coverage
# --------------------------------------------------------------------------
def _prep_regression(mean, spread, y, spread_name: str, fn: str):
  mean, spread, y = _as_float(mean), _as_float(spread), _as_float(y)
  if y.shape != mean.shape or spread.shape not in ((), mean.shape):
    raise errors.BatchShapeError(
        f"{fn}: mean has shape {tuple(mean.shape)}, {spread_name} {tuple(spread.shape)} "
        f"and y {tuple(y.shape)}. Fix: pass y with mean's shape and {spread_name} with "
        "that shape too (or a scalar for a shared one); e.g. squeeze a trailing [B, 1].")
  if mean.size == 0:
    raise errors.EmptySplitError(f"{fn}: got no examples (shape {tuple(mean.shape)}).")
  return mean, spread, y


@jax.jit
def _gaussian_nll(mean, var, y):
  return jnp.mean(0.5 * jnp.log(2 * jnp.pi * var) + jnp.square(y - mean) / (2 * var))


@jax.jit
def _crps_gaussian(mean, std, y):
  z = (y - mean) / std
  pdf = jnp.exp(-0.5 * z * z) / jnp.sqrt(2 * jnp.pi)
  cdf = jax.scipy.special.ndtr(z)
  return jnp.mean(std * (z * (2 * cdf - 1) + 2 * pdf - 1 / jnp.sqrt(jnp.pi)))


@jax.jit
def _interval_coverage(mean, std, y, level):
  half = jax.scipy.special.ndtri((1 + level) / 2) * std
  return jnp.mean((jnp.abs(y - mean) <= half).astype(jnp.float32))


def gaussian_nll(mean: Array, var: Array, y: Array) -> Array:
  """Mean Gaussian negative log-likelihood ``0.5 log(2 pi var) + (y - mean)^2 / (2 var)``.

  The average runs over every entry (all examples and outputs). ``var`` must be
  positive; a zero or negative variance gives ``inf`` / NaN.

  Args:
    mean: predicted means, any shape.
    var: predicted variances, ``mean``'s shape or a scalar.
    y: targets, ``mean``'s shape.

  Returns:
    A scalar in nats.

  Example:
    >>> gaussian_nll(jnp.zeros(2), jnp.ones(2), jnp.array([0.0, 1.0]))   # 0.919 + 0.5/2
    Array(1.1689385, dtype=float32)

  References:
    Nix, D. A. & Weigend, A. S. (1994). Estimating the mean and variance of the
    target probability distribution. Lakshminarayanan et al. (2017).
  """
  return _gaussian_nll(*_prep_regression(mean, var, y, "var", "gaussian_nll"))


def crps_gaussian(mean: Array, std: Array, y: Array) -> Array:
  """Mean continuous ranked probability score of Gaussian predictions (closed form).

  ``CRPS(N(mu, s^2), y) = s [z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi)]`` with
  ``z = (y - mu) / s``; in ``y``'s units, lower is better, and it tends to
  ``|y - mu|`` as ``s -> 0``.

  Args:
    mean: predicted means, any shape.
    std: predicted standard deviations (> 0), ``mean``'s shape or a scalar.
    y: targets, ``mean``'s shape.

  Returns:
    A scalar, the mean over every entry.

  Example:
    >>> round(float(crps_gaussian(jnp.zeros(1), jnp.ones(1), jnp.zeros(1))), 4)
    0.2337
    >>> round((2 ** 0.5 - 1) / jnp.pi ** 0.5, 4)   # the closed form at z = 0
    0.2337

  References:
    Gneiting, T., Raftery, A. E., Westveld, A. H. & Goldman, T. (2005).
    Calibrated probabilistic forecasting using ensemble model output
    statistics and minimum CRPS estimation. Monthly Weather Review.
  """
  return _crps_gaussian(*_prep_regression(mean, std, y, "std", "crps_gaussian"))


def interval_coverage(mean: Array, std: Array, y: Array, level: float = 0.9) -> Array:
  """Fraction of targets inside the central ``level`` interval of ``N(mean, std^2)``.

  The interval is ``mean +- Phi^{-1}((1 + level) / 2) std`` (closed); a
  calibrated model covers about ``level`` of the targets.

  Args:
    mean: predicted means, any shape.
    std: predicted standard deviations (> 0), ``mean``'s shape or a scalar.
    y: targets, ``mean``'s shape.
    level: the interval's nominal probability, in ``(0, 1)``.

  Returns:
    A scalar in ``[0, 1]``.

  Raises:
    ThresholdError: ``level`` outside ``(0, 1)``.

  Example:
    >>> interval_coverage(jnp.zeros(4), jnp.ones(4), jnp.array([0.0, 1.0, 1.6, 3.0]))
    Array(0.75, dtype=float32)

  References:
    Gneiting, T. & Raftery, A. E. (2007). Strictly proper scoring rules,
    prediction, and estimation. JASA (central prediction intervals).
  """
  if not isinstance(level, jax.core.Tracer):
    level = _check_prob(level, "level", "interval_coverage", low_open=True, high_open=True)
  mean, std, y = _prep_regression(mean, std, y, "std", "interval_coverage")
  return _interval_coverage(mean, std, y, jnp.asarray(level, mean.dtype))
