#!/usr/bin/env bash
# Create .venv with pnnkit and its dependencies (CPU torch first, so no CUDA build is pulled).
# Usage: bash scripts/setup.sh [--dev]   (--dev adds the test and benchmark extras)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
extras="bench"
if [ "${1:-}" = "--dev" ]; then extras="dev,bench"; fi
.venv/bin/python -m pip install -q -e ".[${extras}]"
# ngspice for the circuit lab (optional: everything else works without it; its tests skip with a reason)
bash scripts/install-system-deps.sh || echo "setup: warning: ngspice not installed; the 'circuit' lab is unavailable" >&2
