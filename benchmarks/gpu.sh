#!/usr/bin/env bash
# The GPU run, for the day a device is lent (about 3-5 minutes on one H100):
#   bash benchmarks/gpu.sh                  # tests marked gpu, then benchmarks/gpu_step.py
#   bash benchmarks/gpu.sh --dry [--out F]  # tiny sizes on any backend (run by the test suite)
# It needs only what a GPU image with jax carries (flax, optax, chex, pytest; torch for the
# torch.func peer): fusionjax runs from this checkout through PYTHONPATH, uninstalled.
# Results: benchmarks/results/gpu_step.json and the table it prints; the commit names the
# device, driver, jax and torch versions (nvidia-smi and the JSON's "machine").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [[ "${1:-}" == "--dry" ]]; then
  shift
  exec "$PY" benchmarks/gpu_step.py --dry "$@"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
"$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())'
# tests/conftest.py defaults JAX_PLATFORMS to cpu: name the GPU's platform here.
JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests
"$PY" benchmarks/gpu_step.py "$@"
