#!/usr/bin/env bash
# On a GPU machine: a sweep plain, with --gpus all and with --ray gives the same records;
# the build cache's effect on wall time; the gpus axis. Logs and run directories go to $OUT.
# Usage: tools/multi_gpu_check.sh [SWEEP ...]   (default: sweeps/thesis/fc.toml; the whole set:
#        tools/multi_gpu_check.sh sweeps/thesis/*.toml, about 30 minutes per pass on one H100/H200)
set -u
OUT=${OUT:-/tmp/lb-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 LAYERBENCH_CACHE=${LAYERBENCH_CACHE:-$OUT/cache}
files=("$@"); [ ${#files[@]} -eq 0 ] && files=(sweeps/thesis/fc.toml)
nvidia-smi --query-gpu=index,name,uuid --format=csv,noheader | tee "$OUT/gpus.txt"
pass() {  # name, extra flags...
  local name=$1; shift
  local t0=$SECONDS
  layerbench run "${files[@]}" --out "$OUT/$name" --no-progress "$@" > "$OUT/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
}
rm -rf "$LAYERBENCH_CACHE"
pass plain-cold                 # builds and autotunes everything
pass plain-warm                 # the build cache warm: the thesis set's wall time (target <= 20 min on one GPU)
pass gpus --gpus all
pass ray --ray
for run in gpus ray; do
  for d in "$OUT"/plain-warm/*/ "$OUT"/plain-warm; do
    [ -f "$d/results.jsonl" ] || continue
    rel=${d#"$OUT"/plain-warm}
    echo "== validate-gpus plain-warm$rel $run$rel" | tee -a "$OUT/summary.txt"
    layerbench validate-gpus "$d" "$OUT/$run$rel" 2>&1 | tee -a "$OUT/summary.txt"
  done
done
layerbench run sweeps/multi_gpu.toml --out "$OUT/mg" --no-progress > "$OUT/mg.log" 2>&1
layerbench scaling "$OUT/mg" 2>&1 | tee -a "$OUT/summary.txt"
