#!/usr/bin/env bash
# One device call for the analyses (issue 19) on one GPU: the permutation test and bootstrap at
# 39,548 vertices x 1,000 permutations (GPU; the CPU peer at 159 images) and a layer sweep's
# one-pass extraction against one extraction per layer (ViT-B/14, 4 layers). Needs no wheels
# (torch, timm, xarray are on the device image). Usage (device): bash benchmarks/gpu_analyses.sh
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1 BRAINATTN_PROGRESS=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
date -u
timeout ${BENCH_S:-150} python benchmarks/analyses.py --json "$OUT/analyses.json" 2>&1 | tee "$OUT/analyses.log"
date -u
