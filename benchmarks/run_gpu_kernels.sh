#!/usr/bin/env bash
# The kernels' GPU check in one go: the GPU tests of brainattn.kernels (bf16/fp16/fp32, custom
# op under inductor), then benchmarks/attention.py head to head against each target's peer.
# Usage (repo root, on a CUDA machine): bash benchmarks/run_gpu_kernels.sh [outdir]
# Environment: CASES and PEERS (attention.py's --cases / --peers; PEERS= for every peer),
# SKIP_TESTS=1, TEST_LIMIT / BENCH_LIMIT (s, whole steps), TEST_TIMEOUT (s, one test; default
# TEST_LIMIT - 20), NPROC_N (test processes). With pytest-xdist the tests run in parallel,
# their slow ones first (tests/kernels/conftest.py); BRAINATTN_AUTOTUNE=0 skips tuning there.
# The full test log (one line per test, the slowest 20 timed) is kernels_tests.log; where the
# step limit cuts the tests short, the tests that did not finish are named at its end.
set -o pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUTD=${1:-${OUT:-/tmp}}
CASES=${CASES:-vertices,prf,dense,rois}
PEERS=${PEERS-sdpa-cudnn,sdpa-cudnn (no bias),folded-cudnn,dense:flex}
TEST_LIMIT=${TEST_LIMIT:-160}
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  LOG="$OUTD/kernels_tests.log"
  OPTS=()
  python3 -c "import xdist" 2>/dev/null && OPTS+=(-n "${NPROC_N:-14}" --dist load)
  python3 -c "import pytest_timeout" 2>/dev/null \
    && OPTS+=(--timeout "${TEST_TIMEOUT:-$((TEST_LIMIT - 20))}")
  t0=$SECONDS
  BRAINATTN_AUTOTUNE=0 timeout "$TEST_LIMIT" python3 -m pytest tests/kernels "${OPTS[@]}" \
    -p no:cacheprovider -v -rfEs --durations=20 >"$LOG" 2>&1
  rc=$?
  echo "GPU tests: exit $rc after $((SECONDS - t0)) s (limit $TEST_LIMIT s)"
  grep -E "^[0-9.]+s (call|setup|teardown) |^(FAILED|ERROR|SKIPPED) |^=+ .*(passed|failed|error)" \
    "$LOG" | tail -40
  if [ "$rc" = 124 ]; then  # cut short: name what had not finished
    grep -E "(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)" "$LOG" >"$LOG.done"
    timeout 60 python3 -m pytest tests/kernels --collect-only -q -p no:cacheprovider 2>/dev/null \
      | grep "::" | while read -r t; do grep -qF -- "$t" "$LOG.done" || echo "not finished: $t"; done
  fi
fi
timeout "${BENCH_LIMIT:-170}" python3 benchmarks/attention.py --cases "$CASES" --peers "$PEERS" \
  --out "$OUTD/results_attention_raw.md" 2>&1 | tee "$OUTD/bench.log" \
  | grep -v "^Triton autotuning\|^with key\|^finished after\|^best config\|^Autotuning kernel"
