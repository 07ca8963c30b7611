#!/usr/bin/env bash
# The accelerator check in one command: the Pallas kernels' tests on the
# device, then the figures docs/benchmarks.md asks for. Each section runs
# under its own timeout and tees into OUT_DIR/<section>.log, so a failed
# section can be rerun alone (`bash scripts/gpu_check.sh OUT_DIR tests`).
#
#   bash scripts/gpu_check.sh [OUT_DIR] [SECTION...]
#
# Sections: env, tests, bench, compile (default: all, about 8 minutes on
# an H200). The project needs no install: PYTHONPATH is the checkout (and
# whatever scripts/.. wheels were unpacked to, e.g. /tmp/site).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-results/gpu_check}}"
shift || true
sections=("$@")
[[ ${#sections[@]} -gt 0 ]] || sections=(env tests bench compile)
mkdir -p "${out}"
export PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
# A CPU device stays for host callbacks; pytest workers share the device.
export JAX_PLATFORMS="${JAX_PLATFORMS:-cuda,cpu}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
status=0

run() {  # run SECTION SECONDS COMMAND...
  local name="$1" limit="$2"
  shift 2
  echo "== ${name} ($(date -u +%H:%M:%S), limit ${limit} s): $*" |
    tee -a "${out}/${name}.log"
  timeout "${limit}" "$@" 2>&1 | tee -a "${out}/${name}.log"
  local rc=${PIPESTATUS[0]}
  echo "== ${name}: rc ${rc}" | tee -a "${out}/${name}.log"
  [[ ${rc} -eq 0 ]] || status=1
}

for section in "${sections[@]}"; do
  case "${section}" in
    env)
      run env 60 "${py}" -c "import jax; from performer_jax.attention \
import api, pallas_favor, pallas_segments; print(jax.__version__, \
jax.devices(), pallas_favor.gpu_capability(), pallas_segments.sm_count(), \
api.resolve_implementation('auto', 'softmax', True))" ;;
    tests)  # the real kernels against autodiff, and every "auto" caller
      run tests 240 "${py}" -m pytest -q -x -p no:cacheprovider \
        tests/attention/test_pallas_favor.py tests/attention/test_api_favor.py
      ;;
    bench)  # the issue's table: 4k, 16k, 64k; pallas, parallel, slim, cuDNN
      run bench 300 "${py}" scripts/bench_attention.py --preset accelerator \
        --no-tcmalloc ;;
    compile)  # the train step's program size and compile seconds, local
      run compile 240 "${py}" scripts/bench_compile.py --platform cuda \
        --lengths 4096 ;;
    *) echo "gpu_check.sh: unknown section '${section}' (env, tests, bench, \
compile)" >&2; exit 2 ;;
  esac
done
exit "${status}"
