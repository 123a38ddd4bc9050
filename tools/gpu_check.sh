#!/usr/bin/env bash
# GPU check in one call: every gpu-marked test file, then the smoke sweep. Logs go to $OUT.
# Usage: tools/gpu_check.sh [pytest file ...]   (default: all tests)
set -u
OUT=${OUT:-/tmp/lb-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
nvidia-smi --query-gpu=name,driver_version,temperature.gpu,power.draw,clocks.sm --format=csv,noheader | tee "$OUT/gpu.txt"
files=("$@"); [ ${#files[@]} -eq 0 ] && files=(tests)
timeout -s INT "${PYTEST_TIMEOUT:-420}" python3 -m pytest "${files[@]}" -m gpu -q -p no:cacheprovider \
  --durations=25 -rfE 2>&1 | tee "$OUT/pytest_gpu.log" | grep -vE "^(PASSED|SKIPPED)" | tail -120
