"""benchmarks/gpu.sh --dry: the GPU run's script, at tiny sizes on this CPU, so it cannot rot."""
import json
import os
import subprocess
import sys

import pytest

from fj_testing import ROOT


@pytest.mark.slow
def test_gpu_script_dry_run_writes_every_row(tmp_path):
  out = tmp_path / "gpu_step.json"
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
  # The MNIST MLP only: the CNN rows run the same code (one model keeps the test at ~10 s).
  proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry", "--models",
                         "mnist_mlp", "--out", str(out)],
                        env=env, capture_output=True, text=True, timeout=300, cwd=str(ROOT))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  result = json.loads(out.read_text())
  assert result["dry"] is True
  assert result["peaks"]["matmul_gflops"] > 0 and result["peaks"]["bandwidth_gbps"] > 0
  got = {(r["model"], r["members"], r["layout"]) for r in result["rows"]}
  assert got == {("mnist_mlp", 2, lay) for lay in ("vmap", "scan")}
  for r in result["rows"]:
    assert r["ms"] > 0 and r["jax_loop_ms"] > 0 and r["bound_ms"] > 0, r
    assert r["bytes_accessed"] > 0 and r["flops"] > 0, r
  assert "| mnist_mlp | 2 | vmap |" in proc.stdout
