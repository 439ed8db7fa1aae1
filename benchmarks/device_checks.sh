#!/usr/bin/env bash
# The GPU checks of issue 16, as one script for a lent GPU machine (the `device` tool), whose
# outputs go to $OUT (default benchmarks/out/device):
#   1. the CUDA tests (every defense and every defense-aware attack on GPU rows against the
#      CPU, the CUDA cell against the CPU cell, no host sync in training);
#   2. bench_engine, the CNN round and the 10 / 100 / 1,000-client synthetic cells on the GPU,
#      the synthetic cells also on this machine's CPU (one thread) for the ratio;
#   3. the whole test suite with `device: auto` resolving to the GPU (informational).
# Wheels of packages the machine lacks may be put in .whl/ (installed to /tmp/site first).
#     bash benchmarks/device_checks.sh
set -u
OUT=${OUT:-benchmarks/out/device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
cd benchmarks
step() {  # name, timeout, command...: the command's output in $OUT/name.txt, its time and rc
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    echo "== $name: rc $? in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
    tail -n 25 "$OUT/$name.txt"
}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  nproc; } >"$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt"
step cuda_tests 100 python3 -m pytest -q -p no:cacheprovider ../tests/test_scale.py \
    ../tests/test_attacks.py -k cuda -ra
step engine 90 python3 bench_engine.py --device cuda --repeats 5
step cnn 60 python3 bench_cnn_round.py --device cuda --repeat 10 --old
step scale_gpu 75 python3 bench_scale.py --device cuda --skip-grid
step scale_cpu 60 python3 bench_scale.py --device cpu --skip-grid
step suite 150 python3 -m pytest -q -p no:cacheprovider --maxfail=40 -n 8 ../tests -ra
