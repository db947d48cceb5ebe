#!/usr/bin/env bash
# Runs the whole benchmark suite and rebuilds benchmarks/RESULTS.md.
#   bash benchmarks/run_all.sh            # full suite (with --with-sweep: 1049 s before the CNN repeat,
#                                       # which took 228 s; 2 CPU cores)
#   bash benchmarks/run_all.sh --quick    # smoke run
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-/work/venv/bin/python}"
[ -x "$PY" ] || PY=python
JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" exec "$PY" benchmarks/run_all.py "$@"
