#!/usr/bin/env bash
# Installs performer-jax (editable, with the test extras) and its embedded
# default data. Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd -P)"
PYTHON="${PYTHON:-python3}"
kernel_built() {
  "${PYTHON}" -c "import sys; from performer_jax.attention import \
cpu_kernel; sys.exit(not cpu_kernel.built())" 2>/dev/null
}
# The causal FAVOR+ CPU kernel (performer_jax/kernels/): g++ and the Eigen
# headers, then one single-threaded compile (~30 s) into
# ~/.cache/performer_jax/kernels. Its tests fail rather than skip when
# PERFORMER_JAX_REQUIRE_KERNEL=1 (the test command sets it), so a machine
# where this step failed is noticed.
build_kernel() {
  echo "[setup] building the causal FAVOR+ CPU kernel"
  "${PYTHON}" -m performer_jax.kernels.build \
    || echo "[setup] kernel not built: causal FAVOR+ uses the XLA path"
}
# Checked from / so that the repo's own folder on sys.path cannot fake it.
installed="$(cd / && "${PYTHON}" -c "import os, performer_jax, pytest, xdist, \
jax, flax, optax, chex, orbax.checkpoint, tensorboardX, ml_collections, tqdm, \
matplotlib, wheel, grain; print(os.path.realpath(performer_jax.__path__[0]))" 2>/dev/null \
  || true)"
# Where JAX and a compiler are already there, the kernel compiles while pip
# installs (both are single-threaded: one core each).
kernel_pid=""
if command -v g++ >/dev/null && [[ -f /usr/include/eigen3/Eigen/Core ]] \
    && "${PYTHON}" -c "import jax" 2>/dev/null && ! kernel_built; then
  build_kernel &
  kernel_pid=$!
fi
if [[ "${installed}" != "${REPO}/performer_jax" ]]; then
  echo "[setup] pip install -e .[dev]"
  "${PYTHON}" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
fi
if [[ -n "${kernel_pid}" ]]; then
  wait "${kernel_pid}"
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
# Otherwise (or if pip replaced jaxlib meanwhile: the build is keyed to its
# version), the compiler comes first and the kernel compiles now.
if ! kernel_built; then
  if ! command -v g++ >/dev/null || [[ ! -f /usr/include/eigen3/Eigen/Core ]]
  then
    source scripts/apt_lib.sh
    if (( CAN_INSTALL )) && command -v apt-get >/dev/null; then
      echo "[setup] apt-get install g++ libeigen3-dev"
      apt_install g++ libeigen3-dev >/dev/null 2>&1 \
        || echo "[setup] g++/libeigen3-dev not installed"
    fi
  fi
  build_kernel
fi
bash scripts/setup_data.sh
