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
matplotlib, wheel, grain; print(os.path.realpath(performer_jax.__path__[0]))" 2>/dev/null \
  || true)"
if [[ "${installed}" != "${REPO}/performer_jax" ]]; then
  echo "[setup] pip install -e .[dev]"
  "${PYTHON}" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
fi
# tcmalloc (optional): XLA:CPU runs several times faster without glibc's
# per-call mmap page faults; the entry points preload it when present (see
# performer_jax/allocator.py). Best effort: without root or apt, skip it.
if ! "${PYTHON}" -c "import sys; from performer_jax import allocator; \
sys.exit(allocator.find_tcmalloc() is None)" 2>/dev/null; then
  source scripts/apt_lib.sh
  if (( CAN_INSTALL )) && command -v apt-get >/dev/null; then
    echo "[setup] apt-get install libtcmalloc-minimal4"
    apt_install libtcmalloc-minimal4 >/dev/null 2>&1 \
      || echo "[setup] tcmalloc not installed (optional; runs are slower)"
  else
    echo "[setup] no apt/root: tcmalloc not installed (optional)"
  fi
fi
# The causal FAVOR+ CPU kernel (performer_jax/kernels/): g++ and the Eigen
# headers, then one compile (~15 s) into ~/.cache/performer_jax/kernels. Its
# tests fail rather than skip when PERFORMER_JAX_REQUIRE_KERNEL=1 (the test
# command sets it), so a machine where this step failed is noticed.
if ! "${PYTHON}" -c "import sys; from performer_jax.attention import \
cpu_kernel; sys.exit(not cpu_kernel.built())" 2>/dev/null; then
  if ! command -v g++ >/dev/null || [[ ! -f /usr/include/eigen3/Eigen/Core ]]
  then
    source scripts/apt_lib.sh
    if (( CAN_INSTALL )) && command -v apt-get >/dev/null; then
      echo "[setup] apt-get install g++ libeigen3-dev"
      apt_install g++ libeigen3-dev >/dev/null 2>&1 \
        || echo "[setup] g++/libeigen3-dev not installed"
    fi
  fi
  echo "[setup] building the causal FAVOR+ CPU kernel"
  "${PYTHON}" -m performer_jax.kernels.build \
    || echo "[setup] kernel not built: causal FAVOR+ uses the XLA path"
fi
bash scripts/setup_data.sh
