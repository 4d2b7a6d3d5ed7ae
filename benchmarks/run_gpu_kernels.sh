#!/usr/bin/env bash
# One device-machine call: GPU tests of brainattn.kernels (bf16/fp16/fp32), then the benchmark.
# Usage (repo root, on the GPU machine): bash benchmarks/run_gpu_kernels.sh [cases] [outdir]
# Knobs (environment): SKIP_TESTS=1, TEST_LIMIT / BENCH_LIMIT (s), PROFILE=rois (cProfile of
# the host path), TCACHE_IN=dir holding tcache.tgz / icache.tgz (Triton's cache with the tuned
# configs, inductor's cache for flex) from an earlier call, so unchanged kernels are neither
# recompiled nor re-tuned; TCACHE_OUT=dir to save them. pytest-xdist (if carried) runs the tests
# in 14 processes. TOTAL_LIMIT (s): the call's limit, so the benchmark stops in time.
set -o pipefail
START=$SECONDS
export PYTHONPATH=. PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=/tmp/tcache TRITON_CACHE_AUTOTUNING=1 TRITON_PRINT_AUTOTUNING=1
export TORCHINDUCTOR_CACHE_DIR=/tmp/icache
CASES=${1:-rois,vertices,prf,dense}
OUTD=${2:-${OUT:-/tmp}}
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv
for c in tcache icache; do  # compiled kernels, tuned configs and flex's inductor cache
  f=${TCACHE_IN:-}/$c.tgz
  if [ -n "${TCACHE_IN:-}" ] && [ -f "$f" ]; then
    mkdir -p /tmp/$c && tar xzf "$f" -C /tmp/$c && echo "$c restored"
  fi
done
python3 -c "import pytest, xdist" 2>/dev/null || {
  python3 -m pip install -q --no-index --no-deps --target /tmp/site build/kern_whl/*.whl
  export PYTHONPATH=.:/tmp/site; }
run_tests() {
  BRAINATTN_AUTOTUNE=0 timeout ${TEST_LIMIT:-240} python3 -m pytest \
    tests/kernels/test_kernels_triton.py $NPROC -p no:cacheprovider -q -rs "$@" 2>&1 \
    | grep -v "^Triton autotuning\|^with key\|^finished after\|^best config\|^Autotuning kernel" \
    | tee -a "$OUTD/kernels_tests.log" | tail -12
}
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  python3 -c "import xdist" 2>/dev/null && NPROC="-n ${NPROC_N:-14}" || NPROC=""
  run_tests
fi
echo "BRAINATTN_LR_GRAD_SPLIT=${BRAINATTN_LR_GRAD_SPLIT:-0}"
LEFT=$(( ${TOTAL_LIMIT:-100000} - (SECONDS - START) - 12 ))  # what is left of the call's limit
BLIM=${BENCH_LIMIT:-330}; [ "$LEFT" -lt "$BLIM" ] && BLIM=$LEFT
echo "benchmark limit ${BLIM} s"
timeout $BLIM python3 benchmarks/attention.py --cases "$CASES" \
  --out "$OUTD/results_attention_raw.md" --profile "${PROFILE:-}" 2>&1 | tee "$OUTD/bench.log" \
  | grep -v "^with key\|^finished after\|^Autotuning kernel"
if [ -n "${TCACHE_OUT:-}" ]; then  # a folder: tcache.tgz, icache.tgz (each kept if < 16 MiB)
  for c in tcache icache; do
    [ -d /tmp/$c ] && tar czf "$TCACHE_OUT/$c.tgz" -C /tmp/$c . \
      && [ "$(stat -c %s "$TCACHE_OUT/$c.tgz")" -lt 16000000 ] || rm -f "$TCACHE_OUT/$c.tgz"
  done
  ls -la "$TCACHE_OUT"
fi
