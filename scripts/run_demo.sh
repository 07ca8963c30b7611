#!/usr/bin/env bash
# The main job: sets everything up on a fresh machine (package, dependencies,
# embedded data), then trains the protein masked-LM `cpu` demo: FAVOR+
# attention on 20,000 UniProt sequences, evaluated on 500 held-out ones.
#   bash scripts/run_demo.sh [WORKDIR] [extra performer-train flags]
# Progress is shown while it runs; metrics go to WORKDIR/metrics.jsonl and
# TensorBoard logs to WORKDIR/tb. A second run in the same WORKDIR resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export JAX_PLATFORMS=cpu
WORKDIR="${1:-workdirs/protein_mlm_cpu}"
shift || true
"${PYTHON:-python3}" -m performer_jax.train \
  --config=protein_mlm:cpu --workdir="${WORKDIR}" "$@"
"${PYTHON:-python3}" scripts/summarize_run.py "${WORKDIR}"
