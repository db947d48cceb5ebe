"""benchmarks/guard_cost.py and its RESULTS.md rows, at a tiny size, so they cannot rot."""
import sys

import pytest

from fj_testing import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import guard_cost  # noqa: E402  pylint: disable=g-import-not-at-top
import report  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.mark.slow
def test_every_program_is_measured_and_rendered():
  rows, info = guard_cost.bench("digits_mlp", 2, cycles=1, torch=None)
  assert [r["variant"] for r in rows] == [v for v in guard_cost.VARIANTS if v != "torch_func"]
  for r in rows:
    assert r["ms"] > 0 and r["minflt"] >= 0 and r["sys_ms"] >= 0, r
    assert r["vs_torch_func"] is None, r  # no torch.func run: no ratio, not a made-up one
  temps = {r["variant"]: r["temp_mb"] for r in rows}
  assert temps["one_program"] > 0 and temps["default"] > 0
  assert info["default_layout"].startswith("scan, chunk")
  result = {"rows": rows, "info": {"digits_mlp M=2": info}, "malloc_env": {}}
  text = guard_cost.render(result)
  assert "| digits_mlp | 2 | one_program_no_guard |" in text
  assert "default settings" in text


def _row(variant, ms, ratio):
  return {"model": "mnist_mlp", "members": 16, "variant": variant, "ms": ms,
          "vs_torch_func": {"median": ratio, "min": ratio, "max": ratio}}


def test_the_ceiling_row_quotes_the_same_run():
  gc = {"machine": {"cpu": "Some CPU", "avx512": True}, "finished": "2026-12-07T07:00:00",
        "malloc_env": {},
        "rows": [_row("default", 20.0, 1.2), _row("one_program_no_guard", 16.0, 1.5),
                 _row("torch_func", 24.0, 1.0)]}
  label, status, measured = report.guard_ceiling(gc)
  assert "ceiling" in label and "Some CPU" in status and "2026-12-07" in status
  assert measured == ("unguarded one program 1.50x (16.00 ms), guarded default 1.20x "
                      "(20.00 ms); 1.5x needs <= 16.00 ms")
  # Without torch.func in the run there is no ceiling to quote.
  gc["rows"] = [dict(r, vs_torch_func=None) for r in gc["rows"][:2]]
  assert report.guard_ceiling(gc) is None


@pytest.mark.slow
def test_xla_cpu_options_times_what_compiles_and_names_what_does_not(monkeypatch):
  import xla_cpu_options as X  # noqa: E402  pylint: disable=g-import-not-at-top
  monkeypatch.setitem(X.OPTIONS, "bogus", {"xla_cpu_no_such_option": True})
  rows = X.bench("digits_mlp", 2, cycles=1, names=["default", "prefer_vector_width=512", "bogus"])
  by = {r["name"]: r for r in rows}
  assert by["default"]["vs_default"]["median"] == 1.0
  assert by["prefer_vector_width=512"]["ms"] > 0
  assert "ms" not in by["bogus"] and "xla_cpu_no_such_option" in by["bogus"]["error"]
  assert "| digits_mlp | 2 | bogus |" in X.render({"rows": rows})
