#!/usr/bin/env bash
# Installs performer-jax (editable, with the test extras) and its embedded
# default data. Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd -P)"
PYTHON="${PYTHON:-python3}"
# Checked from / so that the repo's own folder on sys.path cannot fake it.
installed="$(cd / && "${PYTHON}" -c "import os, performer_jax, pytest, xdist, \
jax, flax, optax, chex, orbax.checkpoint, tensorboardX, ml_collections, tqdm, \
matplotlib; print(os.path.realpath(performer_jax.__path__[0]))" 2>/dev/null \
  || true)"
if [[ "${installed}" != "${REPO}/performer_jax" ]]; then
  echo "[setup] pip install -e .[dev]"
  "${PYTHON}" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
fi
bash scripts/setup_data.sh
