"""Smoke test of the experiments and the paper's figure step.

Runs every config of ``experiments/configs`` with ``smoke=True`` (digits, a few
steps; the GPU configs too, shrunk) in one fresh process, writing into a tmp
dir, then ``paper/make_figures.py`` on those results. Checks that every config
wrote a well-formed result file and that every figure, table and number macro
the paper needs was generated. No LaTeX needed.
"""
import ast
import importlib
import json
import re
import sys

import numpy as np
import pytest

from fj_testing import ROOT, run_python

if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

CONFIGS = sorted(p.stem for p in (ROOT / "experiments" / "configs").glob("*.py")
                 if not p.stem.startswith("_"))
FIGURES = ["fig1_ensemble_size", "fig3_data_size", "fig4_cascade", "fig5_joint",
           "fig6_heterogeneous", "fig7_throughput"]
TABLES = ["tab2_fusion", "runtimes", "numbers"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("experiments_smoke")
  results, paper = tmp / "results", tmp / "paper"
  code = (
      "import runpy, sys\n"
      f"sys.argv = ['experiments/run.py', '--all', '--smoke', '--out', {str(results)!r}]\n"
      "try:\n"
      "  runpy.run_path('experiments/run.py', run_name='__main__')\n"
      "except SystemExit as e:\n"
      "  assert not e.code, e.code\n"
      f"sys.argv = ['paper/make_figures.py', '--results', {str(results)!r},"
      f" '--out', {str(paper)!r}]\n"
      "runpy.run_path('paper/make_figures.py', run_name='__main__')\n")
  log = run_python(code, timeout=900)
  return results, paper, log


def test_every_config_is_documented_and_has_a_task():
  for name in CONFIGS:
    path = ROOT / "experiments" / "configs" / f"{name}.py"
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert "python experiments/run.py" in doc, f"{name}: docstring lacks the command"
    assert re.search(r"[Rr]untime", doc), f"{name}: docstring lacks the runtime"
    mod = importlib.import_module(f"experiments.configs.{name}")
    for smoke in (False, True):
      cfg = mod.get_config(smoke=smoke)
      assert (ROOT / "experiments" / "tasks" / f"{cfg['task']}.py").exists(), name
    assert mod.get_config(smoke=True).get("dataset", "digits") == "digits", name


@pytest.mark.slow
def test_every_config_writes_a_result(smoke):
  results, _, log = smoke
  for name in CONFIGS:
    path = results / f"{name}.json"
    assert path.exists(), f"{name} wrote no result file\n{log[-3000:]}"
    rec = json.loads(path.read_text())
    assert rec["smoke"] is True and rec["name"] == name
    assert rec["runtime_s"] > 0 and rec["result"], name
    assert rec["config"]["task"], name
  summary = json.loads((results / "run_summary.json").read_text())
  assert not summary["failed"] and set(summary["configs_s"]) == set(CONFIGS)


@pytest.mark.slow
def test_results_are_sane(smoke):
  results, _, _ = smoke
  fig1 = json.loads((results / "fig1_ensemble_size.json").read_text())["result"]
  for row in fig1["rows"]:
    assert 0.0 <= row["accuracy"] <= 1.0 and row["nll"] > 0 and 0.0 <= row["ece"] <= 1.0
  tab2 = json.loads((results / "tab2_fusion_methods.json").read_text())["result"]["digits"]
  rows = tab2["rows"]
  for method in ("mean of probabilities", "mean of logits", "hard vote", "learned weights",
                 "stacking, out-of-fold", "stacking, in-sample", "gating", "cascade",
                 "greedy soup (fine-tuned)", "gradient boosting", "distilled student"):
    assert method in rows, method
    assert 0.0 <= rows[method]["accuracy"] <= 1.0
  assert rows["hard vote"]["nll"] is None  # one-hot output: NLL is infinite, not reported
  assert rows["mean of probabilities"]["cost"] == tab2["members"]
  assert 1.0 <= rows["cascade"]["cost"] <= tab2["members"]
  cascade = json.loads((results / "fig4_cascade.json").read_text())["result"]
  costs = [r["cost_fraction"] for r in cascade["test_max_prob"]]
  assert costs[0] == pytest.approx(1 / cascade["members"])  # threshold 0: stage 0 answers
  assert costs[-1] == pytest.approx(1.0)  # threshold 1: every sample reaches the last stage


@pytest.mark.slow
def test_figures_tables_and_macros(smoke):
  _, paper, _ = smoke
  for name in FIGURES:
    assert (paper / "figures" / f"{name}.pdf").stat().st_size > 1000, name
  for name in TABLES:
    assert (paper / "tables" / f"{name}.tex").exists(), name
  numbers = (paper / "tables" / "numbers.tex").read_text()
  macros = re.findall(r"\\newcommand\{\\([A-Za-z]+)\}", numbers)
  assert len(macros) == len(set(macros))
  # every macro main.tex uses is generated from a result; only the MNIST half of
  # Table 2 has no smoke result (smoke runs digits only) and falls back to n/a
  fallback = re.findall(r"\\newcommand\{\\([A-Za-z]+)\}",
                        numbers.split("% n/a: no result file provided these")[1])
  assert all(m.startswith("FusionMnist") for m in fallback), fallback
  used = set(re.findall(r"\\([A-Z][A-Za-z]+)", (ROOT / "paper" / "main.tex").read_text()))
  prefixes = ("EnsSize", "Cnn", "Fusion", "DataSize", "Cascade", "Joint", "Hetero", "Tput",
              "Runtime", "Machine", "ResultsAre")
  assert {m for m in used if m.startswith(prefixes)} <= set(macros)


def test_numpy_mean_fusion_matches_library():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import fusionjax as fj  # pylint: disable=g-import-not-at-top
  from experiments.tasks import common  # pylint: disable=g-import-not-at-top
  z = np.random.default_rng(0).normal(size=(5, 7, 10)).astype(np.float32) * 5
  want = np.asarray(fj.fusion.mean().apply((), jnp.asarray(z)))
  np.testing.assert_allclose(common.mean_fused(z), want, rtol=1e-5, atol=1e-5)


def test_cnn_anchor_verdict_compares_at_printed_precision():
  sys.path.insert(0, str(ROOT / "paper"))
  try:
    from make_figures import cnn_anchor_verdict  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(str(ROOT / "paper"))
  assert cnn_anchor_verdict(99.35, 0.019, 0.0034) == (
      "the accuracy is 0.05 points short, the NLL is 0.003 higher and the ECE meets it")
  # 99.396 prints as 99.40 and 0.0164 as 0.016: both meet the anchor as printed.
  assert cnn_anchor_verdict(99.396, 0.0164, 0.004) == (
      "the ensemble meets its accuracy, its NLL and its ECE")
  assert cnn_anchor_verdict(99.5, 0.015, 0.0056).endswith("the ECE is 0.001 higher")
