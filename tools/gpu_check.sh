#!/usr/bin/env bash
# GPU check: the measurement-sensitive gpu tests one at a time, the rest on several workers
# (pytest-xdist, work stealing where it has it). Logs go to $OUT.
# Usage: tools/gpu_check.sh [WORKERS]   (default 16)
# On an H200 with 16 cores the whole suite no longer fits one 10-minute call (2,117 parallel tests:
# ~2,020 in 395 s; the serial part 115 s, on an H100 over 150 s): run it in shards, one a call, with
# LAYERBENCH_TEST_SHARD=1/2, then 2/2 (tests/shards.py; the serial part runs in every shard's call
# only where SERIAL=1, for example with the first).  The parallel log is verbose (each test with
# its worker, in the order it ran there), so a failure that depends on what ran before it in
# the same worker can be traced; the terminal shows only failures and the summary.
set -u
OUT=${OUT:-/tmp/lb-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
nvidia-smi --query-gpu=name,driver_version,temperature.gpu,power.draw,clocks.sm --format=csv,noheader | tee "$OUT/gpu.txt"
serial=(tests/test_energy.py tests/test_timing.py tests/test_environment.py tests/test_runner_gpu.py tests/test_cheats.py)
ignores=(); for f in "${serial[@]}"; do ignores+=(--ignore "$f"); done
common=(-m gpu -p no:cacheprovider --durations=15 -rfE)
dist=load; python3 -c "import xdist, sys; sys.exit(tuple(map(int, xdist.__version__.split('.')[:2])) < (3, 2))" \
  2>/dev/null && dist=worksteal
timeout -s INT "${PARALLEL_TIMEOUT:-420}" python3 -m pytest tests "${ignores[@]}" -n "${1:-16}" --dist "$dist" -v \
  "${common[@]}" 2>&1 \
  | tee "$OUT/pytest_gpu_parallel.log" | grep -vE " (PASSED|SKIPPED) |^(PASSED|SKIPPED)" | tail -60
[ "${SERIAL:-1}" = 1 ] || exit 0
LAYERBENCH_TEST_SHARD= timeout -s INT "${SERIAL_TIMEOUT:-300}" python3 -m pytest "${serial[@]}" -q "${common[@]}" 2>&1 \
  | tee "$OUT/pytest_gpu_serial.log" | grep -vE "^(PASSED|SKIPPED)" | tail -40
