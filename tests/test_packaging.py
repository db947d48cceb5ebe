"""Packaging: every imported third-party package is declared, and the metadata is complete."""
import ast
import importlib.metadata
import re
import sys
import tomllib

from fj_testing import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _norm(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set:
  return {_norm(re.match(r"[A-Za-z0-9_.\-]+", d).group(0))
          for d in PYPROJECT["project"]["dependencies"]}


def _imported_top_levels() -> set:
  names = set()
  for path in (ROOT / "fusionjax").rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        names |= {a.name.split(".")[0] for a in node.names}
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names.add(node.module.split(".")[0])
  return names - set(sys.stdlib_module_names) - {"fusionjax", "__future__"}


def test_every_imported_package_is_declared():
  dists = importlib.metadata.packages_distributions()
  missing = []
  for top in sorted(_imported_top_levels()):
    candidates = {_norm(d) for d in dists.get(top, [top])}
    if top == "google":               # a namespace package: only protobuf is used
      candidates = {"protobuf"}
    if not candidates & _declared():
      missing.append(f"{top} ({', '.join(sorted(candidates))})")
  assert not missing, f"fusionjax imports packages that pyproject.toml does not declare: {missing}"


def test_license_py_typed_and_pinned_backend():
  project = PYPROJECT["project"]
  assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
  assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
  assert (ROOT / "fusionjax" / "py.typed").exists()
  assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["fusionjax"]
  (backend,) = PYPROJECT["build-system"]["requires"]
  assert re.fullmatch(r"setuptools>=[\d.]+,<\d+", backend), backend   # lower and upper bound
