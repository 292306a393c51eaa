#!/usr/bin/env bash
# The whole GPU check in one script, for a GPU host (sized to under five minutes on one H100/H200):
#   bash benchmarks/gpu_check.sh [OUT_DIR] [--require-gpu [--allow-no-tensorrt]]   (`make gpu-check` runs it)
# Writes OUT_DIR/nvidia-smi.txt, summary.md, summary.json, logs/, exports/, engines/, pytest-gpu.xml.
# Every step is ok, failed, "not run" (no GPU / no TensorRT: the reason is given) or "not run (budget)",
# with its time. Without TensorRT it still checks the CUDA layer (cuda-bindings), PyTorch FP32/FP16 on the
# GPU and the bench's CUDA-event path. --require-gpu exits 3 unless a GPU and TensorRT were usable.
# Extra arguments go to gpu_check.py (e.g. --budget 240, --no-pytest).
set -u
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check_out}
shift || true
mkdir -p "$OUT/logs"
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

{ nvidia-smi && nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv; } \
  > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed or is missing" >> "$OUT/nvidia-smi.txt"
cat "$OUT/nvidia-smi.txt" | head -20

start=$(date +%s)
"$PY" benchmarks/gpu_check.py "$OUT" "$@" 2>&1 | tee "$OUT/logs/gpu_check.log"
rc=${PIPESTATUS[0]}
echo "gpu check: exit $rc after $(( $(date +%s) - start ))s; results in $OUT/summary.md"
exit "$rc"
