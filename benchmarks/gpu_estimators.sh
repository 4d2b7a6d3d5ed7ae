#!/usr/bin/env bash
# One device call for issue 18 on one GPU: the estimators at Algonauts size
# (benchmarks/estimators.py: public fit from host memory and from the memory map, brainattn
# fit's path, the training engine alone, ridge against himalaya) and then the CUDA-only encoder
# tests. himalaya is missing on the GPU machine: carry it as a wheel in .whl (device README),
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl himalaya==0.4.11
# Usage (device, carry .whl): bash benchmarks/gpu_estimators.sh  -> $OUT/est.json, est.md, est.log
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. || exit 1
export PYTHONUNBUFFERED=1 BRAINATTN_PROGRESS=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton, sklearn, himalaya; print('torch', torch.__version__, 'triton', \
triton.__version__, 'sklearn', sklearn.__version__, 'himalaya', himalaya.__version__)"
date -u
timeout "${BENCH_S:-270}" python3 benchmarks/estimators.py --epochs "${EPOCHS:-2}" \
    --parts "${PARTS:-fit_memory,fit_memmap,cli,ridge,engine}" --workdir /dev/shm/brainattn-bench \
    --json "$OUT/est.json" --out "$OUT/est.md" 2>&1 | tee "$OUT/est.log" | grep -v "^\[" | tail -30
date -u
[ -n "$NO_TESTS" ] || timeout "${TESTS_S:-60}" python3 -m pytest -q -x -p no:cacheprovider \
    -m "gpu or not gpu" tests/encoders/test_encoders_graph.py \
    tests/encoders/test_encoders_ddp.py::test_cuda_streamed_and_gpu_resident_loaders_agree 2>&1 \
    | tail -4
date -u
