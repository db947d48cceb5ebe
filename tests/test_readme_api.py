"""The README names only what exists, and the modules export only their API.

* every ``fj.a.b`` / ``fusionjax.a.b`` (and ``fu.x`` after ``from fusionjax import fusion as
  fu``) in README.md resolves;
* every backticked name in a row of the "What is inside" table resolves in that row's module
  (or is an error class, a regime or a layout name, or a ``fj.`` name);
* the README's ``from_arrays`` example runs and prints what it says;
* ``__all__`` of metrics and models resolves, and ``dir()`` shows no imported modules.
"""
import re
import types

import pytest

import fusionjax as fj
from fj_testing import ROOT

README = (ROOT / "README.md").read_text()


def _resolve(dotted: str):
  obj = fj
  for part in dotted.split("."):
    obj = getattr(obj, part)
  return obj


def _fj_names(text: str) -> set:
  names = set(re.findall(r"\b(?:fj|fusionjax)\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)", text))
  for sub, alias in re.findall(r"from fusionjax import (\w+) as (\w+)", text):
    names |= {f"{sub}.{n}" for n in re.findall(rf"\b{alias}\.([A-Za-z_]\w*)", text)}
  return names


def test_parser_finds_the_names():
  names = _fj_names(README)
  assert {"train.make_trainer", "data.load", "fusion.chain", "data.from_arrays"} <= names
  assert _fj_names("`fj.ensemble.bootstrap_indices` and fj.x") == {"ensemble.bootstrap_indices",
                                                                   "x"}


@pytest.mark.parametrize("name", sorted(_fj_names(README)))
def test_every_fj_name_in_the_readme_resolves(name):
  try:
    _resolve(name)
  except AttributeError as e:
    pytest.fail(f"README.md names fj.{name}, which does not exist ({e}); fix the README")


def _table_rows():
  for line in README.splitlines():
    m = re.match(r"\| `fusionjax\.(\w+)` \|(.*)\|\s*$", line)
    if m:
      yield m.group(1), m.group(2)


def _row_names(cell: str):
  for token in re.findall(r"`([^`]+)`", cell):
    if token.startswith(("fj.", "fusionjax.")):
      yield token.split("(")[0].split(".", 1)[1]    # checked from the root
      continue
    for part in token.split("/"):
      part = part.strip()
      if re.fullmatch(r"[A-Za-z_]\w*", part):
        yield part


def test_table_lists_every_module_and_only_names_that_exist():
  rows = dict(_table_rows())
  assert set(rows) >= {"ensemble", "train", "fusion", "data", "metrics", "select", "integrate",
                       "models", "plot", "errors"}
  allowed_words = set(fj.train.REGIMES) | set(fj.train.LAYOUTS)   # strings, not functions
  missing = []
  for module, cell in rows.items():
    mod = getattr(fj, module)
    for name in _row_names(cell):
      if "." in name:
        ok = _try(name)
      else:
        ok = hasattr(mod, name) or hasattr(fj.errors, name) or name in allowed_words
      if not ok:
        missing.append(f"fusionjax.{module}: {name}")
  assert not missing, f"README's module table names what does not exist: {missing}"


def _try(name):
  try:
    _resolve(name)
    return True
  except AttributeError:
    return False


def test_readme_from_arrays_example_runs(capsys):
  block = next(b for b in re.findall(r"```python\n(.*?)```", README, re.S)
               if "fj.data.from_arrays" in b)
  exec(compile(block, "README.md", "exec"), {})  # pylint: disable=exec-used
  assert capsys.readouterr().out.split() == ["400", "100", "2"]


@pytest.mark.parametrize("module", ["metrics", "models", "plot"])
def test_modules_export_only_their_api(module):
  mod = getattr(fj, module)
  for name in mod.__all__:
    assert hasattr(mod, name), f"fj.{module}.__all__ names {name}, which does not exist"
  shown = [n for n in dir(mod) if not n.startswith("_")]
  assert sorted(shown) == sorted(mod.__all__)
  assert not [n for n in shown if isinstance(getattr(mod, n), types.ModuleType)]
  assert "np" not in dir(fj.metrics) and "nn" not in dir(fj.models)
  assert not hasattr(fj.metrics, "np") and not hasattr(fj.models, "nn")  # not even as attributes


def test_subpackages_show_no_imported_modules():
  for name in fj.__all__:
    mod = getattr(fj, name)
    leaked = [n for n in dir(mod) if not n.startswith("_")
              and isinstance(getattr(mod, n), types.ModuleType)]
    assert not leaked, f"fj.{name} shows modules {leaked}; import them privately or set __dir__"


def test_readme_experiment_configs_and_run_flags_exist():
  configs = set(re.findall(r"`((?:fig\d+|tab\d+|gpu)_\w+)`", README))
  assert configs, "the README's reproduction table names no config"
  missing = sorted(c for c in configs if not (ROOT / "experiments" / "configs" / f"{c}.py").exists())
  assert not missing, f"README names configs that experiments/configs/ lacks: {missing}"
  run = (ROOT / "experiments" / "run.py").read_text()
  for line in re.findall(r"^python experiments/run\.py (.*)$", README, re.M):
    for flag in re.findall(r"--([\w-]+)", line.split("#")[0]):
      assert re.search(rf"DEFINE_\w+\(\s*\"{flag}\"", run), (
          f"README runs experiments/run.py --{flag}, which run.py does not define")


def test_readme_main_job_flags_exist():
  from fusionjax import __main__ as job  # pylint: disable=g-import-not-at-top
  known = {s for a in job._parser()._actions for s in a.option_strings}  # pylint: disable=protected-access
  used = set(re.findall(r"python -m fusionjax((?: --?[\w-]+(?: [\w./-]+)?)*)", README))
  flags = {f for u in used for f in re.findall(r"(--[\w-]+)", u)}
  assert flags and flags <= known, f"README passes unknown flags to the main job: {flags - known}"


def test_readme_cited_tests_exist():
  missing, current = [], None
  for path, name in re.findall(r"(tests/[\w/]+\.py)?::(\w+)", README):
    current = path or current
    source = (ROOT / current).read_text() if (ROOT / current).exists() else ""
    if not re.search(rf"^def {name}\(", source, re.M):
      missing.append(f"{current}::{name}")
  assert not missing, f"README cites tests that do not exist: {missing}"
  for path in set(re.findall(r"`((?:benchmarks|experiments|paper|tests)/[\w/.-]+\.(?:py|sh|md))`",
                             README)):
    assert (ROOT / path).exists(), f"README names {path}, which does not exist"
