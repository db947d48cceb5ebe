"""fj.plot draws the numbers of fj.metrics on the Axes it is given, and rejects bad shapes."""
import doctest
import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fusionjax as fj  # noqa: E402
from fusionjax import errors, metrics  # noqa: E402
from fusionjax import plot  # noqa: E402


def _ax():
  return Figure().add_subplot()


def _probs(n=300, c=4, seed=0):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, c)) * 2.0
  p = np.exp(z - z.max(-1, keepdims=True))
  return p / p.sum(-1, keepdims=True), rng.integers(0, c, size=n)


def test_reliability_diagram_shows_the_bins_and_ece_of_fj_metrics():
  p, y = _probs()
  ax = _ax()
  assert plot.reliability_diagram(p, y, bins=10, ax=ax, label="member") is ax
  # numpy recomputation of equal-width bins (k/K, (k+1)/K]
  conf, pred = p.max(-1), p.argmax(-1)
  idx = np.clip(np.ceil(conf * 10).astype(int) - 1, 0, 9)
  want_acc = {k: np.mean(pred[idx == k] == y[idx == k]) for k in np.unique(idx)}
  want_conf = {k: np.mean(conf[idx == k]) for k in np.unique(idx)}
  acc_bars, gap_bars = ax.containers[-2], ax.containers[-1]
  assert len(acc_bars) == len(want_acc)
  for bar, gap in zip(acc_bars, gap_bars):
    k = int(round(bar.get_x() * 10))
    assert bar.get_width() == pytest.approx(0.1)
    assert bar.get_height() == pytest.approx(want_acc[k], rel=1e-6)
    assert gap.get_y() + gap.get_height() == pytest.approx(want_conf[k], rel=1e-5)
  ece = float(metrics.ece(np.log(p), y, num_bins=10))
  legend = ax.get_legend_handles_labels()[1]
  assert f"member (ECE {100 * ece:.2f} %)" in legend
  numpy_ece = sum(np.sum(idx == k) * abs(want_acc[k] - want_conf[k]) for k in want_acc) / len(y)
  assert ece == pytest.approx(numpy_ece, rel=1e-5)


def test_reliability_diagram_creates_axes_and_leaves_no_other_pyplot_state():
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  before = plt.get_fignums()
  p, y = _probs(50)
  ax = plot.reliability_diagram(p, y)
  assert plt.get_fignums() == before + [ax.figure.number]
  plt.close(ax.figure)


@pytest.mark.parametrize("probs,labels,err,words", [
    (np.full((5, 3), 1 / 3), np.zeros(4, int), errors.BatchShapeError, "(4,)"),
    (np.full((5,), 0.2), np.zeros(5, int), errors.ProbabilitiesError, "[N, C]"),
    (np.log(np.full((5, 3), 1 / 3)), np.zeros(5, int), errors.ProbabilitiesError, "softmax"),
    (np.full((5, 3), 1 / 3), np.full(5, 3), errors.LabelError, "[0, 3)"),
    (np.full((5, 3), 1 / 3), np.zeros((5, 1), int), errors.LabelError, "ravel"),
])
def test_reliability_diagram_bad_inputs_name_shapes_and_fix(probs, labels, err, words):
  with pytest.raises(err, match="Fix") as e:
    plot.reliability_diagram(probs, labels, ax=_ax())
  assert words in str(e.value)
  assert isinstance(e.value, ValueError)


def test_reliability_diagram_bins_error():
  with pytest.raises(errors.BinsError):
    plot.reliability_diagram(np.full((2, 2), 0.5), np.array([0, 1]), bins=0, ax=_ax())


@pytest.mark.parametrize("band", ["minmax", "std"])
def test_metric_vs_size_mean_and_band_over_seeds(band):
  sizes = np.array([1, 2, 4, 8])
  values = np.random.default_rng(0).uniform(size=(3, 4))
  ax = _ax()
  assert plot.metric_vs_size(sizes, values, ax=ax, label="NLL", band=band) is ax
  line = ax.lines[-1]
  np.testing.assert_allclose(line.get_xdata(), sizes)
  np.testing.assert_allclose(line.get_ydata(), values.mean(0), rtol=1e-12)
  lo, hi = ((values.min(0), values.max(0)) if band == "minmax" else
            (values.mean(0) - values.std(0), values.mean(0) + values.std(0)))
  verts = ax.collections[-1].get_paths()[0].vertices
  for x, l, h in zip(sizes, lo, hi):
    ys = verts[np.isclose(verts[:, 0], x), 1]
    assert ys.min() == pytest.approx(l) and ys.max() == pytest.approx(h)
  what = "min-max" if band == "minmax" else "std"
  assert ax.get_legend_handles_labels()[1] == [
      f"NLL\n(mean; band: {'min-max' if band == 'minmax' else 'mean +- 1 std'} over 3 seeds)"]
  assert what in line.get_label()


def test_metric_vs_size_one_run_has_no_band():
  ax = plot.metric_vs_size([1, 2], [[0.5, 0.4]], ax=_ax(), label="error")
  assert not ax.collections and ax.lines[-1].get_label() == "error"


@pytest.mark.parametrize("sizes,values,words", [
    ([1, 2, 3], np.zeros((2, 4)), "(2, 4)"),
    ([1, 2, 3], np.zeros(3), "values[None]"),
    ([[1, 2, 3]], np.zeros((2, 3)), "(1, 3)"),
])
def test_metric_vs_size_bad_shapes(sizes, values, words):
  with pytest.raises(errors.BatchShapeError, match="Fix") as e:
    plot.metric_vs_size(sizes, values, ax=_ax())
  assert words in str(e.value)


def test_metric_vs_size_bad_band():
  with pytest.raises(ValueError, match="minmax"):
    plot.metric_vs_size([1], [[1.0]], ax=_ax(), band="iqr")


def test_cost_accuracy_sorted_curve_and_reference():
  ax = _ax()
  costs, acc = np.array([0.5, 0.125, 1.0, 0.25]), np.array([0.97, 0.9, 0.975, 0.95])
  assert plot.cost_accuracy(costs, acc, ax=ax, label="cascade", reference=0.975) is ax
  np.testing.assert_array_equal(ax.lines[0].get_xdata(), [0.125, 0.25, 0.5, 1.0])
  np.testing.assert_array_equal(ax.lines[0].get_ydata(), [0.9, 0.95, 0.97, 0.975])
  assert ax.lines[1].get_ydata()[0] == 0.975
  assert ax.get_legend_handles_labels()[1] == ["cascade", "full ensemble"]


@pytest.mark.parametrize("costs,acc,err", [
    ([0.1, 0.2], [0.9], errors.BatchShapeError),
    ([[0.1, 0.2]], [[0.9, 0.95]], errors.BatchShapeError),
    ([-0.1, 0.2], [0.9, 0.95], ValueError),
])
def test_cost_accuracy_bad_inputs(costs, acc, err):
  with pytest.raises(err, match="Fix"):
    plot.cost_accuracy(costs, acc, ax=_ax())


def test_disagreement_matrix_equals_a_numpy_loop_and_fj_metrics():
  rng = np.random.default_rng(1)
  preds = rng.integers(0, 3, size=(4, 200))
  ax = _ax()
  assert plot.disagreement_matrix(preds, ax=ax, names=list("abcd")) is ax
  shown = np.asarray(ax.images[0].get_array())
  want = np.array([[np.mean(preds[i] != preds[j]) for j in range(4)] for i in range(4)])
  np.testing.assert_allclose(shown, want, rtol=1e-6)
  logits = rng.normal(size=(4, 200, 3))
  ax2 = plot.disagreement_matrix(logits, ax=_ax())
  np.testing.assert_allclose(np.asarray(ax2.images[0].get_array()),
                             np.asarray(metrics.disagreement_matrix(logits)), rtol=1e-6)
  assert [t.get_text() for t in ax.get_xticklabels()] == list("abcd")
  assert len(ax.figure.axes) == 2  # the colorbar


@pytest.mark.parametrize("preds,names,err,words", [
    (np.zeros(5, int), None, errors.MemberOutputsError, "preds[None]"),
    (np.zeros((2, 5)), None, errors.MemberOutputsError, "float64"),
    (np.zeros((2, 5), int), ["a"], ValueError, "M=2"),
])
def test_disagreement_matrix_bad_inputs(preds, names, err, words):
  with pytest.raises(err, match="Fix") as e:
    plot.disagreement_matrix(preds, ax=_ax(), names=names)
  assert words in str(e.value)


def test_docstring_examples_run():
  finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner()
  for test in finder.find(plot, "fusionjax.plot", globs=dict(vars(plot))):
    runner.run(test)
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  plt.close("all")
  assert runner.failures == 0 and runner.tries >= 5


def test_fj_plot_is_lazy_and_import_fusionjax_does_not_load_matplotlib():
  assert fj.plot is plot and "plot" in dir(fj)
  code = ("import sys, fusionjax as fj; print('matplotlib' in sys.modules); "
          "fj.plot; print('matplotlib.pyplot' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu")).stdout.split()
  assert out == ["False", "False"], out


def test_metric_vs_size_names_what_the_rows_are():
  ax = plot.metric_vs_size([1, 2], [[0.5, 0.4], [0.6, 0.3]], ax=_ax(), over="draws of members")
  assert ax.lines[-1].get_label() == "mean; band: min-max over 2 draws of members"
  assert [t.get_text() for t in ax.get_xticklabels() if t.get_text()] and ax.get_xlabel()
