#!/usr/bin/env bash
# The main job: sets everything up on a fresh machine, then runs the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export JAX_PLATFORMS=cpu
exec "${PYTHON:-python3}" scripts/demo_attention.py "$@"
