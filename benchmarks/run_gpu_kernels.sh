#!/usr/bin/env bash
# The kernels' GPU check in one go: the GPU tests of brainattn.kernels (bf16/fp16/fp32, custom
# op under inductor), then benchmarks/attention.py head to head against each target's peer.
# Usage (repo root, on a CUDA machine): bash benchmarks/run_gpu_kernels.sh [outdir]
# Environment: CASES and PEERS (attention.py's --cases / --peers; PEERS= for every peer),
# SKIP_TESTS=1, TEST_LIMIT / BENCH_LIMIT (s). pytest-xdist, where installed, runs the tests in
# parallel (they compile many kernel variants; BRAINATTN_AUTOTUNE=0 skips tuning there).
set -o pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUTD=${1:-${OUT:-/tmp}}
CASES=${CASES:-vertices,prf,dense,rois}
PEERS=${PEERS-sdpa-cudnn,sdpa-cudnn (no bias),folded-cudnn,dense:flex}
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  python3 -c "import xdist" 2>/dev/null && NPROC="-n ${NPROC_N:-12}" || NPROC=""
  BRAINATTN_AUTOTUNE=0 timeout "${TEST_LIMIT:-240}" python3 -m pytest tests/kernels $NPROC \
    -p no:cacheprovider -q -rs 2>&1 | tee "$OUTD/kernels_tests.log" | tail -15
fi
timeout "${BENCH_LIMIT:-330}" python3 benchmarks/attention.py --cases "$CASES" --peers "$PEERS" \
  --out "$OUTD/results_attention_raw.md" 2>&1 | tee "$OUTD/bench.log" \
  | grep -v "^Triton autotuning\|^with key\|^finished after\|^best config\|^Autotuning kernel"
