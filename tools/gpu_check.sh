#!/usr/bin/env bash
# GPU check in one call: the measurement-sensitive gpu tests one at a time, the rest on several
# workers (pytest-xdist). Logs go to $OUT.  Usage: tools/gpu_check.sh [WORKERS]   (default 6)
set -u
OUT=${OUT:-/tmp/lb-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
nvidia-smi --query-gpu=name,driver_version,temperature.gpu,power.draw,clocks.sm --format=csv,noheader | tee "$OUT/gpu.txt"
serial=(tests/test_energy.py tests/test_timing.py tests/test_environment.py tests/test_runner_gpu.py tests/test_cheats.py)
ignores=(); for f in "${serial[@]}"; do ignores+=(--ignore "$f"); done
common=(-m gpu -q -p no:cacheprovider --durations=15 -rfE)
timeout -s INT "${SERIAL_TIMEOUT:-240}" python3 -m pytest "${serial[@]}" "${common[@]}" 2>&1 \
  | tee "$OUT/pytest_gpu_serial.log" | grep -vE "^(PASSED|SKIPPED)" | tail -40
timeout -s INT "${PARALLEL_TIMEOUT:-320}" python3 -m pytest tests "${ignores[@]}" -n "${1:-6}" "${common[@]}" 2>&1 \
  | tee "$OUT/pytest_gpu_parallel.log" | grep -vE "^(PASSED|SKIPPED)" | tail -60
