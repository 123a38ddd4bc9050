#!/usr/bin/env bash
# The backward and training passes on a GPU in one call: the stream tests, every gpu test of the
# passes and conv fields (on xdist workers), then validate-energy --training. Logs go to $OUT.
# Usage: tools/gpu_passes_check.sh   (WORKERS, PASSES_TIMEOUT, TRAINING_TIMEOUT override the defaults)
set -u
OUT=${OUT:-/tmp/lb-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
common=(-m gpu -q -p no:cacheprovider -rfE)
timeout -s INT 90 python3 -m pytest tests/test_reference.py -k stream "${common[@]}" 2>&1 \
  | tee "$OUT/stream.log" | tail -8
timeout -s INT "${PASSES_TIMEOUT:-300}" python3 -m pytest tests/test_triton_backward.py \
  tests/test_triton_conv_backward.py tests/test_cupy_backward.py tests/test_cupy_conv_backward.py \
  tests/test_reference_backward.py tests/test_cupy_conv_fields.py tests/test_triton_gpu.py \
  -n "${WORKERS:-8}" --maxfail=60 "${common[@]}" 2>&1 | tee "$OUT/passes.log" | grep -vE "^(PASSED|SKIPPED)" | tail -80
timeout -s INT "${TRAINING_TIMEOUT:-180}" python3 -m layerbench validate-energy --training --out "$OUT/validation" \
  2>&1 | tee "$OUT/validate_training.log" | tail -25
