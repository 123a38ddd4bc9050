#!/usr/bin/env bash
# On a GPU machine: the thesis set's wall time on one GPU, in pieces that fit a time-limited call.
# Each call runs `layerbench run sweeps/thesis/*.toml --resume` into $RUN for at most $LIMIT
# seconds and adds that piece's seconds to $RUN/pieces.txt. The set's wall time is their sum; each
# piece after the first also pays a process start and a warm build-cache load, so the sum is an
# upper bound. The run directories and the build cache both live in $RUN: call again on the same
# machine to go on, or carry the state to a fresh one. After each piece $OUT/thesis-state.tgz.part-*
# is all of $RUN (records, build cache, pieces, log), packed and cut in 15 MiB parts (a call
# returns files of at most 16 MiB; most of the set packs to ~30 MB). On a fresh machine, STATE
# names a carried copy of those parts (joined or not) and is unpacked into an absent $RUN first.
# To measure the set warm: unpack a state, delete $RUN/runs and $RUN/pieces.txt, run the pieces again.
# Usage: [STATE='state/thesis-state.tgz.part-*'] RUN=runs/thesis-wall LIMIT=540 \
#        tools/thesis_wall_time.sh [SWEEP ...]   (default: every file of sweeps/thesis/; pass the
#        same files to every piece)
set -u
RUN=${RUN:-runs/thesis-wall}; LIMIT=${LIMIT:-540}; OUT=${OUT:-/tmp/lb-out}; STATE=${STATE:-}
if [ -n "$STATE" ] && [ ! -e "$RUN" ]; then
  mkdir -p "$RUN" && cat $STATE | tar xzf - -C "$RUN" && echo "state unpacked into $RUN"
fi
mkdir -p "$RUN" "$OUT"
export PYTHONUNBUFFERED=1 LAYERBENCH_CACHE=$RUN/cache
files=("$@"); [ ${#files[@]} -eq 0 ] && files=(sweeps/thesis/*.toml)
t0=$SECONDS
timeout -s INT "$LIMIT" layerbench run "${files[@]}" --out "$RUN/runs" --resume --no-progress \
  >> "$RUN/run.log" 2>&1
echo "piece: exit $? in $((SECONDS - t0)) s" | tee -a "$RUN/pieces.txt"
awk '{s += $(NF - 1)} END {print "pieces:", NR, "sum:", s, "s"}' "$RUN/pieces.txt" | tee "$OUT/wall.txt"
tail -n 20 "$RUN/run.log"
rm -f "$OUT"/thesis-state.tgz.part-*
tar czf - -C "$RUN" . | split -b 15m - "$OUT/thesis-state.tgz.part-"
