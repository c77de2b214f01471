#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one call (issues 4 and 5: kernels on the real
# compiler, GPU tests, do_bench rows). Built for the device tool's machine: its image has
# torch, triton, transformers, pybind11, scikit-build-core and cmake, and no network, so
# verilens is built there from this checkout without fetching anything.
#
#   bash benchmarks/gpu_session.sh            # writes logs and JSON under $OUT (or ./gpu-out)
#
# Aimed at 5-9 minutes on an H100/H200 (most of it the C++ build and Triton compiles); each
# step is cut to what is left of BUDGET, so the call ends inside the device tool's 600 s. The
# last lines printed are a short table; copy the numbers into benchmarks/RESULTS.md with
# the card's name.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv > "$OUT/nvidia-smi.csv" 2>&1
"$PY" -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"

BUDGET=${BUDGET:-560}  # seconds for the whole call (the device tool allows 600 per command)
step() {  # name, timeout, command...: log to $OUT/name.log, keep going on failure
    local name=$1 limit=$2; shift 2
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt 30 ]; then echo "$name: skipped (out of time)" | tee -a "$OUT/summary.txt"; return 1; fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: rc=$rc, $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
    return $rc
}

step install 300 "$PY" -m pip install --no-build-isolation --no-deps -v . || { tail -30 "$OUT/install.log"; exit 1; }
# the kernels against their references on the GPU (the tests CI runs in the interpreter, here on
# the real compiler and the fp16/bf16 tensor-core paths), the fused runtime, the channel scores
step tests 420 "$PY" -m pytest -q -x -p no:cacheprovider tests/kernels tests/geometry/test_triton_kernel.py \
    tests/analysis/test_channel.py
step bench_kernels 300 "$PY" benchmarks/bench_kernels.py --json "$OUT/bench_kernels.json"
step bench_channel 300 "$PY" benchmarks/bench_channel_gpu.py --json "$OUT/bench_channel.json"
# the analysis pipeline end to end on the GPU in bf16 (countdown-tiny: the 3B checkpoints
# cannot reach the device machine); small settings
step analyze_bf16 240 "$PY" -m verilens.cli analyze --model countdown-tiny --device cuda --dtype bfloat16 \
    --n 120 --n-contexts 40 --out "$OUT/analyze_bf16" --force
step bench_geometry 300 "$PY" -m pytest -q -s -p no:cacheprovider benchmarks/bench_geometry_gpu.py --benchmark-only
# issue 4's hooked-runtime rows on the GPU: SmolLM2-135M's architecture (random weights: the
# checkpoint cannot reach the device machine), bf16, fused head ablation vs plain HF
step bench_hooks 150 env VERILENS_BENCH_DEVICE=cuda VERILENS_SMOLLM2=random "$PY" -m pytest -q \
    -p no:cacheprovider benchmarks/bench_hooks.py --benchmark-only -k "plain_hf or verilens"

echo "== summary"; cat "$OUT/summary.txt"
echo "== tests"; tail -3 "$OUT/tests.log"
echo "== bench_kernels"; grep -E ' us  \[' "$OUT/bench_kernels.log" | cut -c1-150 | tail -24
echo "== bench_channel"; grep -E '^\{' "$OUT/bench_channel.log"
echo "== bench_geometry"; grep -E '^\{' "$OUT/bench_geometry.log" | tail -3
echo "== analyze_bf16"; tail -2 "$OUT/analyze_bf16.log"
echo "== bench_hooks"; grep -E '^test_' "$OUT/bench_hooks.log" | cut -c1-150
