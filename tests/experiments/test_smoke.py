"""Smoke test of the experiments' command line and the paper's figure step.

Runs ``experiments/run.py --all --smoke`` (every config of ``experiments/configs``
shrunk to a few steps on digits, the GPU configs too) into a tmp workdir, then
``paper/make_figures.py --allow-smoke`` on those results into a tmp folder. Checks
that every config wrote a well-formed result file with its provenance, that every
figure, table and number macro the paper needs was generated, and the command
line's contract: ``--smoke`` equals ``:smoke``, ``--config.<field>`` overrides reach
the result file, nothing reaches ``experiments/results/`` without ``--publish``, a
smoke run cannot be published and ``make_figures.py`` refuses smoke results. No
LaTeX needed.
"""
import ast
import importlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from fj_testing import ROOT, run_python

if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

CONFIGS = sorted(p.stem for p in (ROOT / "experiments" / "configs").glob("*.py")
                 if not p.stem.startswith("_"))
# the paper's numbering (main.tex): Figures 1-6 and Tables 1-2
FIGURES = ["fig1_ensemble_size", "fig2_data_size", "fig3_cascade", "fig4_joint",
           "fig5_heterogeneous", "fig6_throughput"]
TABLES = ["tab1_fusion", "runtimes", "numbers"]
PUBLISHED = ROOT / "experiments" / "results"


def _script(*args, timeout=300):
  """Runs a script of the repository in a fresh process; returns (returncode, output)."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                        timeout=timeout, cwd=str(ROOT))
  return proc.returncode, proc.stdout + proc.stderr


def _published_state():
  return {p.name: p.stat().st_mtime_ns for p in PUBLISHED.iterdir()}


def _assert_nothing_published_since(before):
  """No smoke result reached experiments/results/ since ``before`` (a _published_state()).

  Compares contents, not just names: a full run published meanwhile by someone else (the
  tree may be shared) is not this test's output, a smoke result is.
  """
  for name, mtime in _published_state().items():
    if before.get(name) != mtime and name.endswith(".json"):
      rec = json.loads((PUBLISHED / name).read_text())
      assert not rec.get("smoke"), f"a smoke run wrote {PUBLISHED / name}"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("experiments_smoke")
  results, paper = tmp / "results", tmp / "paper"
  before = _published_state()
  code = (
      "import runpy, sys\n"
      f"sys.argv = ['experiments/run.py', '--all', '--smoke', '--workdir', {str(results)!r}]\n"
      "try:\n"
      "  runpy.run_path('experiments/run.py', run_name='__main__')\n"
      "except SystemExit as e:\n"
      "  assert not e.code, e.code\n"
      f"sys.argv = ['paper/make_figures.py', '--results', {str(results)!r},"
      f" '--out', {str(paper)!r}, '--allow-smoke']\n"
      "runpy.run_path('paper/make_figures.py', run_name='__main__')\n")
  log = run_python(code, timeout=900)
  return results, paper, log, before


def test_every_config_is_documented_and_has_a_task():
  for name in CONFIGS:
    path = ROOT / "experiments" / "configs" / f"{name}.py"
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert f"python experiments/run.py --config experiments/configs/{name}.py" in doc, (
        f"{name}: docstring lacks the command")
    assert re.search(r"[Rr]untime", doc), f"{name}: docstring lacks the runtime"
    mod = importlib.import_module(f"experiments.configs.{name}")
    for arg in (None, "smoke"):
      cfg = mod.get_config(arg)
      assert (ROOT / "experiments" / "tasks" / f"{cfg.task}.py").exists(), name
    assert mod.get_config("smoke").get("dataset", "digits") == "digits", name
    # sequences are tuples: config_flags overrides tuples (--config.seeds='(0, 1)'), not lists
    for key, value in mod.get_config().items():
      assert not isinstance(value, list) or key == "datasets", (name, key)


def test_configs_that_rank_methods_have_three_seeds():
  # the paper ranks methods in Table 1 and Figs. 2-5 and plots a band over seeds in Fig. 1
  for name in ("fig1_ensemble_size", "tab1_fusion_methods", "fig2_data_size", "fig3_cascade",
               "fig4_joint", "fig5_heterogeneous"):
    cfg = importlib.import_module(f"experiments.configs.{name}").get_config()
    assert len(cfg.seeds) >= 3, name


@pytest.mark.slow
def test_every_config_writes_a_result(smoke):
  results, _, log, _ = smoke
  for name in CONFIGS:
    path = results / f"{name}.json"
    assert path.exists(), f"{name} wrote no result file\n{log[-3000:]}"
    rec = json.loads(path.read_text())
    assert rec["smoke"] is True and rec["name"] == name
    assert rec["runtime_s"] > 0 and rec["result"], name
    assert rec["config"]["task"], name
    prov = rec["provenance"]
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", prov["git_commit"]), prov
    for pkg in ("fusionjax", "jax", "jaxlib", "flax", "optax", "numpy"):
      assert prov["versions"][pkg], (name, pkg)
    assert prov["devices"] and prov["devices"][0]["platform"] == prov["backend"], prov
  summary = json.loads((results / "run_summary.json").read_text())
  assert not summary["failed"] and set(summary["configs_s"]) == set(CONFIGS)


@pytest.mark.slow
def test_nothing_is_published_without_publish(smoke):
  *_, before = smoke
  _assert_nothing_published_since(before)


@pytest.mark.slow
def test_colon_smoke_equals_smoke_and_overrides_reach_the_result(smoke, tmp_path):
  results, *_ = smoke
  before = _published_state()
  rc, out = _script("experiments/run.py", "--config",
                    "experiments/configs/fig6_throughput.py:smoke", "--config.steps=2",
                    "--config.members=(1, 3)", "--workdir", str(tmp_path))
  assert rc == 0, out
  _assert_nothing_published_since(before)
  got = json.loads((tmp_path / "fig6_throughput.json").read_text())
  want = json.loads((results / "fig6_throughput.json").read_text())  # --all --smoke
  assert got["smoke"] is True
  assert got["config"]["steps"] == 2 and got["config"]["members"] == [1, 3]
  assert {r["members"] for r in got["result"]["rows"]} == {1, 3}
  assert got["config"] == {**want["config"], "steps": 2, "members": [1, 3]}


def test_smoke_runs_are_not_published():
  before = _published_state()
  for args in (["--config", "experiments/configs/fig3_cascade.py", "--smoke"],
               ["--config", "experiments/configs/fig3_cascade.py:smoke"], ["--all", "--smoke"]):
    rc, out = _script("experiments/run.py", *args, "--publish")
    assert rc != 0 and "--publish" in out, (args, out[-2000:])
  rc, out = _script("experiments/run.py", "--all", "--config",
                    "experiments/configs/fig3_cascade.py")
  assert rc != 0 and "--all" in out, out[-2000:]
  _assert_nothing_published_since(before)


@pytest.mark.slow
def test_make_figures_refuses_smoke_results(smoke, tmp_path):
  results, *_ = smoke
  rc, out = _script("paper/make_figures.py", "--results", str(results), "--out",
                    str(tmp_path / "paper"))
  assert rc != 0 and "smoke result" in out and "--publish" in out, out[-2000:]
  rc, out = _script("paper/make_figures.py", "--results", str(results), "--allow-smoke")
  assert rc != 0 and "paper/" in out, out[-2000:]  # --allow-smoke never writes into paper/


@pytest.mark.slow
def test_results_are_sane(smoke):
  results, *_ = smoke
  fig1 = json.loads((results / "fig1_ensemble_size.json").read_text())["result"]
  for row in fig1["rows"]:
    assert 0.0 <= row["accuracy"] <= 1.0 and row["nll"] > 0 and 0.0 <= row["ece"] <= 1.0
  tab1 = json.loads((results / "tab1_fusion_methods.json").read_text())["result"]
  assert tab1["seeds"] == [0] and len(tab1["per_seed"]) == 1
  digits = tab1["per_seed"][0]["digits"]
  rows = digits["rows"]
  for method in ("mean of probabilities", "mean of logits", "hard vote", "learned weights",
                 "stacking, out-of-fold", "stacking, in-sample", "gating", "cascade",
                 "greedy soup (fine-tuned)", "gradient boosting", "distilled student"):
    assert method in rows, method
    assert 0.0 <= rows[method]["accuracy"] <= 1.0
  assert rows["hard vote"]["nll"] is None  # one-hot output: NLL is infinite, not reported
  assert rows["mean of probabilities"]["cost"] == digits["members"]
  assert 1.0 <= rows["cascade"]["cost"] <= digits["members"]
  cascade = json.loads((results / "fig3_cascade.json").read_text())["result"]
  assert cascade["seeds"] == [0, 1]  # the smoke config keeps two seeds: the per-seed path
  for run in cascade["per_seed"]:
    costs = [r["cost_fraction"] for r in run["test_max_prob"]]
    assert costs[0] == pytest.approx(1 / run["members"])  # threshold 0: stage 0 answers
    assert costs[-1] == pytest.approx(1.0)  # threshold 1: every sample reaches the last stage


@pytest.mark.slow
def test_figures_tables_and_macros(smoke):
  _, paper, _, _ = smoke
  for name in FIGURES:
    assert (paper / "figures" / f"{name}.pdf").stat().st_size > 1000, name
  for name in TABLES:
    assert (paper / "tables" / f"{name}.tex").exists(), name
  numbers = (paper / "tables" / "numbers.tex").read_text()
  macros = re.findall(r"\\newcommand\{\\([A-Za-z]+)\}", numbers)
  assert len(macros) == len(set(macros))
  # every macro main.tex uses is generated from a result; only the MNIST half of
  # Table 1 has no smoke result (smoke runs digits only) and falls back to n/a
  fallback = re.findall(r"\\newcommand\{\\([A-Za-z]+)\}",
                        numbers.split("% n/a: no result file provided these")[1])
  assert all(m.startswith("FusionMnist") for m in fallback), fallback
  used = set(re.findall(r"\\([A-Z][A-Za-z]+)", (ROOT / "paper" / "main.tex").read_text()))
  prefixes = ("EnsSize", "Cnn", "Fusion", "DataSize", "Cascade", "Joint", "Hetero", "Tput",
              "Runtime", "Machine", "ResultsAre")
  assert {m for m in used if m.startswith(prefixes)} <= set(macros)


def test_paper_figures_and_configs_follow_the_pdf_numbering():
  tex = (ROOT / "paper" / "main.tex").read_text()
  # figures and tables in the order LaTeX numbers them
  floats = re.findall(r"\\begin\{(figure|table)\*?\}.*?\\label\{([a-z]+:[a-z]+)\}", tex, re.S)
  included = re.findall(r"\\includegraphics(?:\[[^\]]*\])?\{figures/([a-z0-9_]+)\.pdf\}", tex)
  assert included == FIGURES
  tables = [lab for kind, lab in floats if kind == "table"]
  assert tables[0] == "tab:fusion" and "\\input{tables/tab1_fusion.tex}" in tex
  for i, name in enumerate(FIGURES, start=1):
    assert name.startswith(f"fig{i}_")
    assert (ROOT / "experiments" / "configs" / f"{name}.py").exists(), name


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


def test_throughput_copies_the_newest_benchmark_result_of_its_models(tmp_path, monkeypatch):
  """Fig. 6 copies the benchmark's newest per-CPU-kind file (the figure went stale when the
  benchmark started writing ``ensemble_step@<kind>.json``: the task looked for the old name
  and measured a smaller grid itself instead)."""
  import contextlib  # pylint: disable=g-import-not-at-top
  from experiments.tasks import throughput  # pylint: disable=g-import-not-at-top
  results = tmp_path / "benchmarks" / "results"
  results.mkdir(parents=True)
  assert throughput.benchmark_file(results) is None

  def row(model, m, fj, loop):
    return {"model": model, "members": m, "fj_msps": fj, "jax_loop_msps": loop}

  for kind, finished, scale in (("old-cpu", "2026-11-22T10:00:00", 1.0),
                                ("new-cpu", "2026-12-07T06:34:42", 2.0)):
    (results / f"ensemble_step@{kind}.json").write_text(json.dumps({
        "finished": finished, "command": f"python benchmarks/ensemble_step.py # {kind}",
        "machine": {"cpu": kind}, "rows": [row("mnist_mlp", 16, 90e3 * scale, 80e3 * scale),
                                           row("cnn", 16, 11e3 * scale, 9e3 * scale)]}))
  assert throughput.benchmark_file(results).name == "ensemble_step@new-cpu.json"
  monkeypatch.setattr(throughput, "ROOT", tmp_path)
  monkeypatch.setattr(throughput, "RESULTS", results)
  cfg = {"models": ("digits_mlp", "mnist_mlp"), "measure": False}
  got = throughput.run(cfg, None, lambda name: contextlib.nullcontext())
  assert got["source"] == "benchmarks/results/ensemble_step@new-cpu.json"
  assert got["machine"] == {"cpu": "new-cpu"}
  assert [(r["model"], r["stacked_member_samples_per_s"], r["loop_member_samples_per_s"])
          for r in got["rows"]] == [("mnist_mlp", 180e3, 160e3)]
  with pytest.raises(ValueError, match="no rows of the models"):
    throughput.run({"models": ("digits_mlp",), "measure": False}, None,
                   lambda name: contextlib.nullcontext())


def test_provenance_says_unknown_outside_a_checkout(tmp_path):
  """A result written from an unpacked copy (no git checkout at the root) records commit
  ``unknown`` and no dirty state, rather than the commit of some enclosing repository."""
  code = (
      "import importlib.util, json, pathlib, sys\n"
      "spec = importlib.util.spec_from_file_location('run_under_test', 'experiments/run.py')\n"
      "run = importlib.util.module_from_spec(spec); spec.loader.exec_module(run)\n"
      "inside = run.provenance()\n"
      f"run.ROOT = pathlib.Path({str(tmp_path)!r})\n"
      "outside = run.provenance()\n"
      "print(json.dumps([inside['git_commit'], outside['git_commit'], outside['git_dirty'],"
      " outside['git_changed_files']]))\n")
  inside, outside, dirty, changed = json.loads(run_python(code).strip().splitlines()[-1])
  assert re.fullmatch(r"[0-9a-f]{40}|unknown", inside)
  assert (outside, dirty, changed) == ("unknown", None, [])
