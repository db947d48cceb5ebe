"""Figures of an ensemble's evaluation (matplotlib): numpy arrays in, an Axes out.

Every function draws on ``ax`` (a new figure's axes when ``ax`` is None) and
returns it; nothing else touches pyplot's state, so the functions compose into
subplots and figures that the caller saves. The numbers drawn are those of
:mod:`fusionjax.metrics` (the reliability bins are
:func:`~fusionjax.metrics.calibration_bins`, the ECE in the legend is
:func:`~fusionjax.metrics.ece`, the heat map is
:func:`~fusionjax.metrics.disagreement_matrix`), so a figure and a table made
from the same arrays agree.

* :func:`reliability_diagram`: accuracy against confidence per bin, with the ECE.
* :func:`metric_vs_size`: a metric against ensemble size, mean and band over seeds.
* :func:`cost_accuracy`: a cascade's accuracy against its cost.
* :func:`disagreement_matrix`: pairwise disagreement of the members' predictions.

``import fusionjax`` does not import matplotlib; ``fj.plot`` imports this module
on first use, and pyplot is imported only to create a figure when ``ax`` is None.

Example:
  >>> import numpy as np, fusionjax as fj
  >>> probs = np.full((8, 2), 0.5); labels = np.arange(8) % 2
  >>> ax = fj.plot.reliability_diagram(probs, labels, bins=10, label="coin")
  >>> ax.get_legend_handles_labels()[1][1]
  'coin (ECE 0.00 %)'
"""
from typing import Optional, Sequence

import numpy as np

from fusionjax import _validate, errors, metrics

__all__ = ["reliability_diagram", "metric_vs_size", "cost_accuracy", "disagreement_matrix"]

BANDS = ("minmax", "std")


def __dir__():
  return sorted(__all__)


def _axes(ax):
  if ax is not None:
    return ax
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt.figure().add_subplot()


def _vector(x, name: str, fn: str, fix: str) -> np.ndarray:
  a = np.asarray(x, dtype=np.float64)
  if a.ndim != 1 or a.size == 0:
    raise errors.BatchShapeError(
        f"fj.plot.{fn}: {name} has shape {a.shape}; it must be a non-empty vector [K]. "
        f"Fix: {fix}")
  return a


def reliability_diagram(probs, labels, *, bins: int = 15, ax=None, label: Optional[str] = None):
  """Accuracy against top-1 confidence in equal-width bins, with the diagonal and the ECE.

  A bar per non-empty bin ``(k/K, (k+1)/K]`` rises to the bin's accuracy; a red
  bar spans the gap from there to the bin's mean confidence (above the diagonal
  for under-confidence, below for over-confidence). The legend gives the ECE
  (:func:`fusionjax.metrics.ece` with ``num_bins=bins``).

  Args:
    probs: probabilities ``[N, C]`` (rows non-negative, summing to 1), e.g.
      ``np.exp(fused_log_probs)``.
    labels: integer labels ``[N]`` in ``[0, C)``.
    bins: number of equal-width bins (15 as in Guo et al.).
    ax: the matplotlib Axes to draw on; a new figure's when None.
    label: the legend entry of the accuracy bars (the ECE is appended).

  Returns:
    The Axes. ``ax.containers[-2]`` holds the accuracy bars of the non-empty
    bins, ``ax.containers[-1]`` the gap bars.

  Raises:
    ProbabilitiesError: ``probs`` is not ``[N, C]`` or a row is not a distribution.
    LabelError: ``labels`` is not ``[N]`` integer indices in ``[0, C)``.
    BinsError: ``bins < 1``.

  Example:
    >>> import numpy as np
    >>> ax = reliability_diagram(np.array([[0.9, 0.1], [0.95, 0.05]]), np.array([0, 1]), bins=5)
    >>> [float(b.get_height()) for b in ax.containers[-2]]   # the bin (0.8, 1.0]
    [0.5]

  References:
    Guo, C., Pleiss, G., Sun, Y. & Weinberger, K. Q. (2017). On calibration of
    modern neural networks. ICML.
  """
  p = np.asarray(probs, dtype=np.float64)
  if p.ndim != 2 or 0 in p.shape:
    raise errors.ProbabilitiesError(
        f"fj.plot.reliability_diagram: probs has shape {p.shape}; it must be [N, C], one "
        "row of class probabilities per example. Fix: pass np.exp(fused_log_probs) of one "
        "model (for member outputs [M, N, C], one member: probs[m]).")
  sums = p.sum(-1)
  bad = (np.abs(sums - 1.0) > 1e-3) | np.any(p < 0, axis=-1) | ~np.isfinite(sums)
  if np.any(bad):
    i = int(np.flatnonzero(bad)[0])
    raise errors.ProbabilitiesError(
        f"fj.plot.reliability_diagram: row {i} of probs {p.shape} sums to {sums[i]:.6g} "
        f"(min entry {p[i].min():.6g}); {int(bad.sum())} rows are not distributions. "
        "Fix: pass probabilities, jax.nn.softmax(logits) or np.exp(log_probs).")
  y = _validate.class_labels(labels, p.shape[1], "fj.plot.reliability_diagram")
  if y.shape[0] != p.shape[0]:
    raise errors.BatchShapeError(
        f"fj.plot.reliability_diagram: labels have shape {y.shape} but probs {p.shape} has "
        f"N={p.shape[0]} rows. Fix: pass one label per row of probs.")
  with np.errstate(divide="ignore"):
    log_p = np.log(p).astype(np.float32)
  count, conf, acc = (np.asarray(v, np.float64)
                      for v in metrics.calibration_bins(log_p, y, num_bins=bins))
  ece = float(np.sum(count * np.abs(acc - conf)) / np.sum(count))
  ax = _axes(ax)
  k = np.flatnonzero(count > 0)
  width = 1.0 / bins
  left = k * width
  name = f"{label} (ECE {100 * ece:.2f} %)" if label else f"accuracy (ECE {100 * ece:.2f} %)"
  ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
  ax.bar(left, acc[k], width=width, align="edge", color="C0", edgecolor="k", lw=0.5,
         label=name)
  ax.bar(left, conf[k] - acc[k], bottom=acc[k], width=width, align="edge", fill=False,
         hatch="////", edgecolor="C3", lw=0.5, label="gap to confidence")
  ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 probability)",
         ylabel="accuracy", aspect="equal")
  ax.legend(loc="upper left", fontsize="small")
  return ax


def metric_vs_size(sizes, values, *, ax=None, label: Optional[str] = None,
                   band: str = "minmax", over: str = "seeds"):
  """A metric against ensemble size: the mean over seeds and a band around it.

  Args:
    sizes: ensemble sizes ``[K]`` (the x axis).
    values: the metric ``[S, K]``, one row per seed (or per draw of members);
      ``values[None]`` for a single run (no band then).
    ax: the matplotlib Axes to draw on; a new figure's when None.
    label: the legend entry; the band's meaning is appended, e.g.
      ``'NLL\\n(mean; band: min-max over 3 seeds)'``.
    band: ``'minmax'`` (the band spans the seeds' minimum to maximum) or
      ``'std'`` (mean +- one standard deviation over seeds, ``ddof=0``).
    over: what the rows of ``values`` are, for the legend (``'seeds'``; e.g.
      ``'draws of members'``).

  Returns:
    The Axes; ``ax.lines[-1]`` is the mean, ``ax.collections[-1]`` the band.

  Raises:
    BatchShapeError: ``sizes`` is not ``[K]`` or ``values`` is not ``[S, K]``.
    ValueError: ``band`` is not ``'minmax'`` or ``'std'``.

  Example:
    >>> import numpy as np
    >>> ax = metric_vs_size([1, 2, 4], np.array([[0.3, 0.2, 0.1], [0.5, 0.2, 0.1]]))
    >>> ax.lines[-1].get_ydata().tolist()
    [0.4, 0.2, 0.1]
  """
  if band not in BANDS:
    raise ValueError(f"fj.plot.metric_vs_size: band={band!r}; it must be one of {BANDS}. "
                     "Fix: band='minmax' (range over seeds) or band='std' (mean +- 1 std).")
  x = _vector(sizes, "sizes", "metric_vs_size", "pass the ensemble sizes, e.g. [1, 2, 4, 8].")
  v = np.asarray(values, dtype=np.float64)
  if v.ndim != 2 or v.shape[1] != x.shape[0] or v.shape[0] == 0:
    raise errors.BatchShapeError(
        f"fj.plot.metric_vs_size: values has shape {v.shape} but sizes has K={x.shape[0]} "
        f"entries; values must be [S, K] = [seeds, {x.shape[0]}]. Fix: one row per seed "
        "and one column per size (values[None] for a single run, values.T if transposed).")
  mean = v.mean(0)
  seeds = v.shape[0]
  if band == "minmax":
    lo, hi, what = v.min(0), v.max(0), f"min-max over {seeds} {over}"
  else:
    sd = v.std(0)
    lo, hi, what = mean - sd, mean + sd, f"mean +- 1 std over {seeds} {over}"
  if seeds == 1:
    name = label
  else:
    name = f"{label}\n(mean; band: {what})" if label else f"mean; band: {what}"
  ax = _axes(ax)
  line, = ax.plot(x, mean, marker="o", ms=3, label=name)
  if seeds > 1:
    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
  if not ax.get_xlabel():
    ax.set_xlabel("ensemble size")
  if np.all(x == np.round(x)):
    from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  if name:
    ax.legend(fontsize="small")
  return ax


def cost_accuracy(costs, accuracies, *, ax=None, label: Optional[str] = None,
                  reference: Optional[float] = None):
  """A cascade's accuracy against its cost, e.g. one point per exit threshold.

  Args:
    costs: cost per operating point ``[K]``, as a fraction of the full ensemble's
      FLOPs (1.0 = every member runs on every example).
    accuracies: accuracy per operating point ``[K]``.
    ax: the matplotlib Axes to draw on; a new figure's when None.
    label: the legend entry of the curve.
    reference: the full ensemble's accuracy, drawn as a dashed horizontal line.

  Returns:
    The Axes; ``ax.lines[0]`` is the curve (points sorted by cost), and
    ``ax.lines[1]`` the reference line when given.

  Raises:
    BatchShapeError: ``costs`` and ``accuracies`` are not vectors of one length.
    ValueError: a cost is negative or not finite.

  Example:
    >>> ax = cost_accuracy([0.5, 0.125, 0.25], [0.97, 0.9, 0.95], reference=0.975)
    >>> ax.lines[0].get_xdata().tolist()
    [0.125, 0.25, 0.5]
  """
  c = _vector(costs, "costs", "cost_accuracy",
              "pass one cost per operating point, a fraction of the ensemble's FLOPs.")
  a = _vector(accuracies, "accuracies", "cost_accuracy", "pass one accuracy per cost.")
  if a.shape != c.shape:
    raise errors.BatchShapeError(
        f"fj.plot.cost_accuracy: costs has shape {c.shape} and accuracies {a.shape}; "
        "they must match. Fix: one accuracy per operating point.")
  if not np.all(np.isfinite(c)) or np.any(c < 0):
    raise ValueError(f"fj.plot.cost_accuracy: costs must be finite and >= 0; got {c.tolist()}. "
                     "Fix: pass costs as fractions of the full ensemble's FLOPs.")
  order = np.argsort(c, kind="stable")
  ax = _axes(ax)
  ax.plot(c[order], a[order], marker="o", ms=3, label=label)
  if reference is not None:
    ax.axhline(float(reference), ls="--", color="0.4", lw=1, label="full ensemble")
  ax.set(xlabel="cost (fraction of the ensemble's FLOPs)", ylabel="accuracy")
  if label or reference is not None:
    ax.legend(fontsize="small")
  return ax


def disagreement_matrix(member_preds, *, ax=None, names: Optional[Sequence[str]] = None):
  """Heat map of the rate at which two members' predictions differ, with a colorbar.

  The matrix is :func:`fusionjax.metrics.disagreement_matrix`; cells show it in
  percent when ``M <= 12``.

  Args:
    member_preds: the members' predicted labels ``[M, N]`` (integers), or their
      logits / log-probabilities ``[M, N, C]`` (their argmax is used).
    ax: the matplotlib Axes to draw on; a new figure's when None.
    names: ``M`` tick labels (e.g. ``ensemble.names``).

  Returns:
    The Axes; ``ax.images[0].get_array()`` is the ``[M, M]`` matrix.

  Raises:
    MemberOutputsError: ``member_preds`` is neither ``[M, N]`` ints nor ``[M, N, C]``.
    ValueError: ``names`` does not hold ``M`` names.

  Example:
    >>> import numpy as np
    >>> ax = disagreement_matrix(np.array([[0, 1, 1, 0], [0, 1, 0, 0]]), names=["a", "b"])
    >>> ax.images[0].get_array().tolist()
    [[0.0, 0.25], [0.25, 0.0]]
  """
  p = np.asarray(member_preds)
  if p.ndim == 2 and np.issubdtype(p.dtype, np.integer):
    if p.size and p.min() < 0:
      raise errors.MemberOutputsError(
          f"fj.plot.disagreement_matrix: member_preds {p.shape} holds a negative label "
          f"({int(p.min())}). Fix: pass class indices >= 0.")
    logits = np.eye(int(p.max()) + 1 if p.size else 1, dtype=np.float32)[p]  # argmax = p
  elif p.ndim == 3 and np.issubdtype(p.dtype, np.floating):
    logits = p
  else:
    raise errors.MemberOutputsError(
        f"fj.plot.disagreement_matrix: member_preds has shape {p.shape} and dtype {p.dtype}; "
        "it must be predicted labels [M, N] (integers) or member logits [M, N, C]. Fix: "
        "pass member_logits.argmax(-1), member axis first (preds[None] for one member).")
  m = logits.shape[0]
  if names is not None and len(names) != m:
    raise ValueError(f"fj.plot.disagreement_matrix: {len(names)} names for M={m} members "
                     f"(member_preds {p.shape}). Fix: pass one name per member.")
  d = np.asarray(metrics.disagreement_matrix(logits), np.float64)
  ax = _axes(ax)
  im = ax.imshow(d, cmap="viridis", vmin=0.0, vmax=max(float(d.max()), 1e-12))
  ax.figure.colorbar(im, ax=ax, label="disagreement rate")
  ticks = np.arange(m)
  labels = list(names) if names is not None else [str(i) for i in ticks]
  ax.set_xticks(ticks, labels, rotation=45, ha="right")
  ax.set_yticks(ticks, labels)
  if m <= 12:
    top = d.max()
    for i in range(m):
      for j in range(m):
        ax.text(j, i, f"{100 * d[i, j]:.1f}", ha="center", va="center", fontsize="x-small",
                color="k" if d[i, j] > 0.6 * top else "w")
  ax.set_title("pairwise disagreement (%)")
  return ax
