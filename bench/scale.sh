#!/bin/bash
# make bench-scale: seconds per epoch and peak memory (maximum resident set size, /usr/bin/time -v)
# of training in memory against out of core (input.backed) on simulated .h5ad files of SIZES cells
# (1000 genes, median depth 600, written once into BENCH_DIR), EPOCHS epochs each; a Markdown
# table on stdout and in BENCH_DIR/scale.md. Runs whose in-memory estimate does not fit are still
# tried: a failure shows as "-". Run from the repository root (make bench-scale builds first).
# Env: BIN (./nbsphere), SIZES ("100000 500000 2000000"), EPOCHS (2), THREADS (2),
#      BENCH_DIR (build-bench), MODES ("memory backed").
set -uo pipefail
BIN=${BIN:-./nbsphere}
SIZES=${SIZES:-100000 500000 2000000}
EPOCHS=${EPOCHS:-2}
THREADS=${THREADS:-2}
DIR=${BENCH_DIR:-build-bench}
MODES=${MODES:-memory backed}
mkdir -p "$DIR"
BIN=$(realpath "$BIN")
OUT="$DIR/scale.md"
printf '| cells | nonzeros | mode | s/epoch | peak RSS (MB) | bound (MB) | validation ELBO |\n|---:|---:|---|---:|---:|---:|---:|\n' | tee "$OUT"
for n in $SIZES; do
    sim="$DIR/scale$n"
    if [ ! -e "$sim/sim.h5ad" ]; then
        mkdir -p "$sim"
        /usr/bin/time -v "$BIN" simulate --out "$sim" --cells "$n" --genes 1000 --depth 600 --seed 1 --format h5ad \
            2> "$sim/simulate.log" || { echo "simulate $n failed (see $sim/simulate.log)" >&2; continue; }
    fi
    nnz=$(grep -o '[0-9]* nonzeros' "$sim/simulate.log" | cut -d' ' -f1)
    printf 'input:\n  path: %s\ntrain:\n  epochs: %s\n  threads: %s\n' "$(realpath "$sim/sim.h5ad")" "$EPOCHS" \
        "$THREADS" > "$sim/p.yaml"
    for mode in $MODES; do
        backed=false; [ "$mode" = backed ] && backed=true
        run="$sim/run_$mode"
        rm -rf "$run"
        if /usr/bin/time -v "$BIN" -q run "$sim/p.yaml" --out "$run" --set input.backed=$backed 2> "$run.time"; then
            rss=$(awk '/Maximum resident/ {printf "%.0f", $NF / 1024}' "$run.time")
            # the mean of the epochs' seconds column, and the last validation ELBO
            read -r sec val < <(awk -F'\t' 'NR > 1 {s += $9; n++; v = $5} END {printf "%.1f %.2f", s / n, v}' \
                "$run/training_log.tsv")
            bound=-
            [ "$mode" = backed ] && bound=$(awk -v n="$n" -v nnz="$nnz" 'BEGIN {
                # out of core: C + 80 B per cell + 8 B per entry of the scan block and of the buffer
                # (64 blocks x 256 cells at the mean row length) + the diagnostics subsample
                per = nnz / n; printf "%.0f", (100 * 1048576 + 80 * n + 8 * (4194304 + 16384 * per + 1000 * per)) / 1048576 }')
        else
            rss=-; sec=-; val=-; bound=-
        fi
        printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$n" "$nnz" "$mode" "$sec" "$rss" "$bound" "$val" | tee -a "$OUT"
    done
done
