#!/usr/bin/env bash
# The CPU benchmark behind benchmarks/results/bench.md and the figures in RESULTS.md.
#
#   bash benchmarks/run_cpu_bench.sh [OUT_DIR]        # default OUT_DIR: benchmarks/results
#   QUICK=1 bash benchmarks/run_cpu_bench.sh /tmp/b   # ResNet-18 at 64x64: checks the script in ~2 minutes
#
# Run it on a quiet machine (nothing else busy: the numbers are only as steady as the machine).
# Three runs of `resnet-deploy bench`, each one JSON + CSV + PNG, then benchmarks/render_bench_md.py
# turns the JSON into OUT_DIR/bench.md. The exported ONNX files (FP32, INT8) are made once in
# $WORK (default /tmp/resnet-deploy-bench-work) and reused by the later runs.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-benchmarks/results}
BIN=${BIN:-.venv/bin}
WORK=${WORK:-${TMPDIR:-/tmp}/resnet-deploy-bench-work}
if [[ "${QUICK:-0}" == 1 ]]; then
    VARIANT=18; SIZE=64x64; SIZES=64x64,96x96,128x128; BATCHES=1,2,4
    TIMING=(--iterations 3 --warmup 1 --rounds 2 --pause-ms 10)
else
    VARIANT=50; SIZE=224x224; SIZES=224x224,320x320,448x448; BATCHES=1,2,4,8,16,32
    TIMING=(--iterations 10 --duration 4 --warmup 2s --rounds 3)
fi

mkdir -p "$OUT"
: > "$OUT/bench_commands.txt"
run() {
    echo "resnet-deploy $*" >> "$OUT/bench_commands.txt"
    "$BIN/resnet-deploy" "$@"
}

# 1. Side by side at one size: the toolkit's paths and every CPU peer, FP32 and INT8, batch 1 and 8.
# INT8 is calibrated on 64 synthetic images: the speed is that of any calibration, no accuracy claim.
run bench --variant "$VARIANT" --peers --precisions fp32,int8 --batch-sizes 1,8 --shapes "$SIZE" \
    "${TIMING[@]}" --workdir "$WORK" --calib-data synthetic:64 \
    --json "$OUT/bench_side_by_side.json" --csv "$OUT/bench_side_by_side.csv" --plot "$OUT/bench_side_by_side.png"

# 2. How cost grows with the batch, and where the throughput stops improving.
run bench --variant "$VARIANT" --backends torch,onnxruntime,openvino --precisions fp32 --batch-sizes "$BATCHES" \
    --shapes "$SIZE" "${TIMING[@]}" --workdir "$WORK" \
    --json "$OUT/bench_batch.json" --csv "$OUT/bench_batch.csv" --plot "$OUT/bench_batch.png"

# 3. How cost grows with the resolution (448x448 is 4x the pixels of 224x224), batch 1.
run bench --variant "$VARIANT" --backends torch,onnxruntime,openvino --precisions fp32 --batch-sizes 1 \
    --shapes "$SIZES" "${TIMING[@]}" --workdir "$WORK" \
    --json "$OUT/bench_resolution.json" --csv "$OUT/bench_resolution.csv" --plot "$OUT/bench_resolution.png"

"$BIN/python" benchmarks/render_bench_md.py --out "$OUT/bench.md" --commands "$OUT/bench_commands.txt" \
    --plot bench_side_by_side.png --plot bench_batch.png --plot bench_resolution.png \
    "Side by side (peers, FP32 and INT8)=$OUT/bench_side_by_side.json" \
    "Latency and throughput against batch size=$OUT/bench_batch.json" \
    "Latency against resolution=$OUT/bench_resolution.json"
