"""Helpers shared by tests in several folders (a uniquely named module, not conftest)."""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"


def run_python(code: str, env_extra=None, timeout=240, args=()):
  """Runs ``code`` in a fresh Python process (so XLA flags apply before JAX starts)."""
  env = dict(os.environ)
  env.update({"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)})
  env.update(env_extra or {})
  proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                        text=True, timeout=timeout, cwd=str(ROOT))
  if proc.returncode != 0:
    raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc.stdout
