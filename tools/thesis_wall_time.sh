#!/usr/bin/env bash
# On a GPU machine: the thesis set's wall time on one GPU, in pieces that fit a time-limited call.
# Each call runs `layerbench run sweeps/thesis/*.toml --resume` into $RUN for at most $LIMIT
# seconds and adds that piece's seconds to $RUN/pieces.txt. The set's wall time is their sum; each
# piece after the first also pays a process start and a warm build-cache load, so the sum is an
# upper bound. The run directories and the build cache both live in $RUN: carry it to the next
# machine (or call again on the same one) to go on. $OUT/thesis-run.tgz is $RUN after this piece
# without its build cache, $OUT/thesis-cache.tgz.part-* the cache, packed and cut in 15 MiB parts
# (a call returns files of at most 16 MiB; a cold set's cache is ~100 MB unpacked): put it back
# with `cat thesis-cache.tgz.part-* | tar xzf - -C $RUN` to measure the set again warm.
# Usage: RUN=runs/thesis-wall LIMIT=540 tools/thesis_wall_time.sh [SWEEP ...]   (default: every
#        file of sweeps/thesis/; pass the same files to every piece)
set -u
RUN=${RUN:-runs/thesis-wall}; LIMIT=${LIMIT:-540}; OUT=${OUT:-/tmp/lb-out}; mkdir -p "$RUN" "$OUT"
export PYTHONUNBUFFERED=1 LAYERBENCH_CACHE=$RUN/cache
files=("$@"); [ ${#files[@]} -eq 0 ] && files=(sweeps/thesis/*.toml)
t0=$SECONDS
timeout -s INT "$LIMIT" layerbench run "${files[@]}" --out "$RUN/runs" --resume --no-progress \
  >> "$RUN/run.log" 2>&1
echo "piece: exit $? in $((SECONDS - t0)) s" | tee -a "$RUN/pieces.txt"
awk '{s += $(NF - 1)} END {print "pieces:", NR, "sum:", s, "s"}' "$RUN/pieces.txt" | tee "$OUT/wall.txt"
tail -n 20 "$RUN/run.log"
tar czf "$OUT/thesis-run.tgz" --exclude=./cache -C "$RUN" .
tar czf - -C "$RUN" cache | split -b 15m - "$OUT/thesis-cache.tgz.part-"
