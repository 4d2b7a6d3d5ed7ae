#!/usr/bin/env bash
# One device call for the encoders (issues 4 and 5) on one GPU: CUDA-only encoder tests, the
# Algonauts-size benchmark (brainattn vs the published architecture, ridge, vertices mode) and
# the demo-size fit of the three models. Needs the wheels in .whl (see the device README).
# Usage (device): bash benchmarks/gpu_encoders.sh   -> $OUT/enc.json, enc.md, demo_gpu.json, log
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit 1
export PYTHONUNBUFFERED=1
PARTS=${PARTS:-brainattn_graph,brainattn,published_gpu,published,ridge,vertices}
EPOCHS=${EPOCHS:-3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
date -u
python -m pytest -q -x -p no:cacheprovider -m "gpu or not gpu" \
    tests/encoders/test_encoders_backbones.py tests/encoders/test_encoders_ddp.py \
    tests/encoders/test_encoders_graph.py -k "cuda or gpu or graph" 2>&1 | tail -4
timeout ${BENCH_S:-330} python benchmarks/encoder.py --epochs "$EPOCHS" --parts "$PARTS" \
    --profile 10 --workdir /dev/shm/brainattn-bench --json "$OUT/enc.json" --out "$OUT/enc.md" \
    2>&1 | grep -v "it/s]$" | tr '\r' '\n' | grep -v "it/s\]\|s/it\]" | tee "$OUT/enc.log" | tail -40
[ -n "$NO_DEMO" ] || timeout ${DEMO_S:-200} python benchmarks/encoder_demo.py --device cuda \
    --subjects subj01,subj02 --workdir /dev/shm/brainattn-demo --json "$OUT/demo_gpu.json" 2>&1 \
    | tr '\r' '\n' | grep -v "it/s\]\|s/it\]" | tail -8
date -u
