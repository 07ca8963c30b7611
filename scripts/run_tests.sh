#!/usr/bin/env bash
# The test command: sets everything up on a fresh machine, then runs pytest
# on both cores. Extra arguments go to pytest (e.g. -k favor).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export JAX_PLATFORMS=cpu
# setup.sh has built the CPU kernel: its tests must run, not skip.
export PERFORMER_JAX_REQUIRE_KERNEL="${PERFORMER_JAX_REQUIRE_KERNEL:-1}"
# Bytecode (and pytest's rewritten test modules) is written once and reused
# by both workers and every subprocess, even where the environment turns
# that off (git ignores __pycache__/).
unset PYTHONDONTWRITEBYTECODE
# tcmalloc (when setup.sh could install it, unless PERFORMER_JAX_TCMALLOC=0)
# for pytest and every subprocess: XLA's compiler allocates heavily and runs
# ~5% faster under it. The entry points see it preloaded and do not re-exec.
preload="$("${PYTHON:-python3}" -c "import os; from performer_jax import \
allocator; env = allocator.env_with_tcmalloc(os.environ); \
print(env['LD_PRELOAD'] if env else '')")"
if [[ -n "${preload}" ]]; then
  export LD_PRELOAD="${preload}"
fi
exec "${PYTHON:-python3}" -m pytest -q -n 2 --dist loadgroup --durations=15 "$@" tests
