#!/usr/bin/env bash
# One device-machine call: GPU tests of brainattn.kernels (bf16/fp16/fp32), then the benchmark.
# Usage (repo root, on the GPU machine): bash benchmarks/run_gpu_kernels.sh [cases] [outdir]
set -o pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
CASES=${1:-rois,vertices,prf,dense}
OUTD=${2:-${OUT:-/tmp}}
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv
python3 -c "import pytest" 2>/dev/null || {
  python3 -m pip install -q --no-index --no-deps --target /tmp/site build/kern_whl/*.whl
  export PYTHONPATH=.:/tmp/site; }
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  BRAINATTN_AUTOTUNE=0 timeout ${TEST_LIMIT:-240} python3 -m pytest tests/kernels \
    -p no:cacheprovider -q -x -rs 2>&1 | tee "$OUTD/kernels_tests.log" | tail -15
fi
timeout ${BENCH_LIMIT:-330} python3 benchmarks/attention.py --cases "$CASES" \
  --out "$OUTD/results_attention_raw.md" 2>&1 | tee "$OUTD/bench.log"
