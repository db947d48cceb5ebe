"""``import fusionjax`` stays light: heavy optional imports wait for first use."""
import os
import subprocess
import sys


def test_import_does_not_load_tfds_or_nnx():
  code = ("import sys, fusionjax as fj; "
          "print(sorted(m for m in ('tensorflow_datasets', 'flax.nnx') if m in sys.modules)); "
          "fj.data.IdxImages; print('tensorflow_datasets' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, env=dict(os.environ, JAX_PLATFORMS="cpu")).stdout.split("\n")
  assert out[0] == "[]", f"import fusionjax loaded {out[0]} (0.2 s each); import them lazily"
  assert out[1] == "True", "fj.data.IdxImages must still resolve (and register the builder)"
