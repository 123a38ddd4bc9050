#!/usr/bin/env bash
# On a GPU machine: a sweep plain, with --gpus all and with --ray gives the same records;
# the build cache's effect on wall time; the gpus axis. The summary goes to $OUT; the run
# directories and logs to $WORK, packed into $OUT/runs.tgz after each pass (a machine that returns
# only a few files from $OUT still returns them, and what ran before a cut is kept).
# Usage: tools/multi_gpu_check.sh [SWEEP ...]   (default: sweeps/thesis/fc.toml; the whole set:
#        tools/multi_gpu_check.sh sweeps/thesis/*.toml, about 30 minutes per pass on one H100/H200)
set -u
OUT=${OUT:-/tmp/lb-out}; WORK=${WORK:-/tmp/lb-work}; mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 LAYERBENCH_CACHE=${LAYERBENCH_CACHE:-$WORK/cache}
pack() { tar czf "$OUT/runs.tgz" --exclude=cache -C "$WORK" .; }
files=("$@"); [ ${#files[@]} -eq 0 ] && files=(sweeps/thesis/fc.toml)
nvidia-smi --query-gpu=index,name,uuid --format=csv,noheader | tee "$OUT/gpus.txt"
pass() {  # name, extra flags...
  local name=$1; shift
  local t0=$SECONDS
  layerbench run "${files[@]}" --out "$WORK/$name" --no-progress "$@" > "$WORK/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
  pack
}
rm -rf "$LAYERBENCH_CACHE"
pass plain-cold                 # builds and autotunes everything
pass plain-warm                 # the build cache warm: the thesis set's wall time (target <= 20 min on one GPU)
pass gpus --gpus all
pass ray --ray
for run in gpus ray; do
  for d in "$WORK"/plain-warm/*/ "$WORK"/plain-warm; do
    [ -f "$d/results.jsonl" ] || continue
    rel=${d#"$WORK"/plain-warm}
    echo "== validate-gpus plain-warm$rel $run$rel" | tee -a "$OUT/summary.txt"
    layerbench validate-gpus "$d" "$WORK/$run$rel" 2>&1 | tee -a "$OUT/summary.txt"
  done
done
layerbench run sweeps/multi_gpu.toml --out "$WORK/mg" --no-progress > "$WORK/mg.log" 2>&1
layerbench scaling "$WORK/mg" 2>&1 | tee -a "$OUT/summary.txt"
pack
