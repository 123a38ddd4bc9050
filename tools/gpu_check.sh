#!/usr/bin/env bash
# GPU check in one call: the measurement-sensitive gpu tests one at a time, the rest on several
# workers (pytest-xdist). Logs go to $OUT.  Usage: tools/gpu_check.sh [WORKERS]   (default 16)
# On an H200 with 16 cores the parallel part takes ~390 s on 14-16 workers and the serial part
# ~115 s: the default limits fit one 10-minute call.  The parallel log is verbose (each test with
# its worker, in the order it ran there), so a failure that depends on what ran before it in
# the same worker can be traced; the terminal shows only failures and the summary.
set -u
OUT=${OUT:-/tmp/lb-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
nvidia-smi --query-gpu=name,driver_version,temperature.gpu,power.draw,clocks.sm --format=csv,noheader | tee "$OUT/gpu.txt"
serial=(tests/test_energy.py tests/test_timing.py tests/test_environment.py tests/test_runner_gpu.py tests/test_cheats.py)
ignores=(); for f in "${serial[@]}"; do ignores+=(--ignore "$f"); done
common=(-m gpu -p no:cacheprovider --durations=15 -rfE)
timeout -s INT "${PARALLEL_TIMEOUT:-420}" python3 -m pytest tests "${ignores[@]}" -n "${1:-16}" -v "${common[@]}" 2>&1 \
  | tee "$OUT/pytest_gpu_parallel.log" | grep -vE " (PASSED|SKIPPED) |^(PASSED|SKIPPED)" | tail -60
timeout -s INT "${SERIAL_TIMEOUT:-150}" python3 -m pytest "${serial[@]}" -q "${common[@]}" 2>&1 \
  | tee "$OUT/pytest_gpu_serial.log" | grep -vE "^(PASSED|SKIPPED)" | tail -40
