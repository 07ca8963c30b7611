#!/usr/bin/env bash
# The test command: sets everything up on a fresh machine, then runs pytest
# on both cores. Extra arguments go to pytest (e.g. -k favor).
#   --backend=cpu (default) | gpu | tpu: the backend the tests run on. On an
#   accelerator the CPU stays listed for host callbacks, the compiled CPU
#   kernel's tests skip (it is an XLA:CPU kernel), and tests that need forced
#   CPU devices still run on the CPU in their own subprocesses.
#   --no-setup: skip scripts/setup.sh (an offline machine, already set up).
set -euo pipefail
cd "$(dirname "$0")/.."
backend=cpu
setup=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --backend=*) backend="${1#--backend=}" ;;
    --no-setup) setup=0 ;;
    *) break ;;
  esac
  shift
done
case "${backend}" in
  cpu) platforms=cpu ;;
  gpu) platforms=cuda,cpu ;;
  tpu) platforms=tpu,cpu ;;
  *) echo "run_tests.sh: --backend must be cpu, gpu or tpu, got '${backend}'" >&2
     exit 2 ;;
esac
if (( setup )); then
  bash scripts/setup.sh
fi
export JAX_PLATFORMS="${platforms}"
if [[ "${backend}" == cpu ]]; then
  # setup.sh has built the CPU kernel: its tests must run, not skip.
  export PERFORMER_JAX_REQUIRE_KERNEL="${PERFORMER_JAX_REQUIRE_KERNEL:-1}"
else
  # Workers share the accelerator: no process takes most of its memory.
  export XLA_PYTHON_CLIENT_PREALLOCATE=false
fi
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
