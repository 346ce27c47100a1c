#!/bin/bash
# make bench-scale: seconds per epoch and peak memory (maximum resident set size, /usr/bin/time -v)
# of training in memory against out of core (input.backed) on simulated .h5ad files of SIZES cells
# (1000 genes, median depth 600, written once into BENCH_DIR), EPOCHS epochs each; a Markdown
# table on stdout and in BENCH_DIR/scale.md. Runs whose in-memory estimate does not fit are still
# tried: a failure shows as "-". Run from the repository root (make bench-scale builds first).
# Then 1 against 2 MPI processes (build-mpi/nbsphere, built here with make MPI=1 if missing) on the
# MPI_CELLS file, in memory: the same model (the global batch MPI_BATCH split over the processes,
# THREADS split over them too), s/epoch, peak memory of each process, and the reduction's seconds
# per step from bench/mpi_reduce.c (parallel.c's hooks on the model's gradient size, timed apart
# from training); bench/mpi_projection.py projects a 10M-cell epoch on 8, 32 and 128 nodes from
# them (BENCH_DIR/mpi.md). SIZES= leaves the first part out, MPI_SIZES= the MPI part.
# Env: BIN (./nbsphere), SIZES ("100000 500000 2000000"), EPOCHS (2), THREADS (2),
#      BENCH_DIR (build-bench), MODES ("memory backed"), MPI_SIZES ("1 2"), MPI_CELLS (100000),
#      MPI_BATCH (128), MPI_BIN (build-mpi/nbsphere).
set -uo pipefail
BIN=${BIN:-./nbsphere}
SIZES=${SIZES-100000 500000 2000000}
EPOCHS=${EPOCHS:-2}
THREADS=${THREADS:-2}
DIR=${BENCH_DIR:-build-bench}
MODES=${MODES:-memory backed}
mkdir -p "$DIR"
BIN=$(realpath "$BIN")
OUT="$DIR/scale.md"
[ -z "$SIZES" ] || printf '| cells | nonzeros | mode | s/epoch | peak RSS (MB) | bound (MB) | validation ELBO |\n|---:|---:|---|---:|---:|---:|---:|\n' | tee "$OUT"
# The simulated file of $1 cells in $DIR/scale$1, written once.
simulate() {
    local sim="$DIR/scale$1"
    [ -e "$sim/sim.h5ad" ] && return 0
    mkdir -p "$sim"
    /usr/bin/time -v "$BIN" simulate --out "$sim" --cells "$1" --genes 1000 --depth 600 --seed 1 --format h5ad \
        2> "$sim/simulate.log" || { echo "simulate $1 failed (see $sim/simulate.log)" >&2; return 1; }
}
for n in $SIZES; do
    sim="$DIR/scale$n"
    simulate "$n" || continue
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

# --- 1 against N MPI processes on one machine, and the projection to many ---
MPI_SIZES=${MPI_SIZES-1 2}
[ -n "$MPI_SIZES" ] || exit 0
MPI_CELLS=${MPI_CELLS:-100000}
MPI_BATCH=${MPI_BATCH:-128}
MPI_BIN=${MPI_BIN:-build-mpi/nbsphere}
if [ ! -x "$MPI_BIN" ]; then
    command -v mpicc > /dev/null || { echo "no mpicc: the MPI rows need make deps MPI=1" >&2; exit 1; }
    make -s -j2 MPI=1 > /dev/null || exit 1
fi
MPI_BIN=$(realpath "$MPI_BIN")
MPI_LIB=$(dirname "$MPI_BIN")/libnbsphere.a
TIMER=$(dirname "$MPI_BIN")/mpi_reduce
mpicc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -DNBS_MPI -Iinclude $(pkg-config --cflags gsl hdf5-serial) \
    -o "$TIMER" bench/mpi_reduce.c "$MPI_LIB" -lm || exit 1
MPIRUN=(mpirun --oversubscribe)
[ "$(id -u)" = 0 ] && MPIRUN+=(--allow-run-as-root)
simulate "$MPI_CELLS" || exit 1
sim="$DIR/scale$MPI_CELLS"
printf 'input:\n  path: %s\ntrain:\n  epochs: %s\n' "$(realpath "$sim/sim.h5ad")" "$EPOCHS" > "$sim/p_mpi.yaml"
MOUT="$DIR/mpi.md"
printf '| processes | batch per process | threads per process | s/epoch | peak RSS per process, 0 / 1 / … (MB) | reduction ms/step (reduce + bcast) | MPI_Allreduce ms/step | validation ELBO |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n' | tee "$MOUT"
timings=()
for np in $MPI_SIZES; do
    b=$((MPI_BATCH / np)); t=$((THREADS / np)); [ "$t" -ge 1 ] || t=1
    run="$sim/run_mpi$np"
    rm -rf "$run" "$run".time.*
    # each process under its own /usr/bin/time (its rank in OpenMPI's environment)
    if "${MPIRUN[@]}" -np "$np" sh -c 'exec /usr/bin/time -v -o "$0.$OMPI_COMM_WORLD_RANK" "$@"' "$run.time" \
        "$MPI_BIN" -q run "$sim/p_mpi.yaml" --out "$run" --set input.backed=false --set train.batch_size=$b \
        --set train.threads=$t 2> "$run.log"; then
        # process 0's first: it alone diagnoses and writes the outputs
        rss=$(for r in $(seq 0 $((np - 1))); do awk '/Maximum resident/ {printf "%.0f", $NF / 1024}' "$run.time.$r"
              echo; done | paste -sd/ | sed 's|/| / |g')
        read -r sec val < <(awk -F'\t' 'NR > 1 {s += $9; n++; v = $5} END {printf "%.2f %.2f", s / n, v}' \
            "$run/training_log.tsv")
        red=-; all=-
        if [ "$np" -gt 1 ]; then
            # the gradient block and batch-norm state of the trained model (its Adam moments' length)
            read -r npar nst < <(/usr/bin/python3 -c 'import h5py, sys
f = h5py.File(sys.argv[1], "r"); print(f["optimizer/m"].shape[0], f["train/best_state"].shape[0])' "$run/model.h5")
            line=$("${MPIRUN[@]}" -np "$np" "$TIMER" "$npar" "$nst" 200) && timings+=("$line")
            red=$(awk '{printf "%.3f", $10 * 1000}' <<< "$line"); all=$(awk '{printf "%.3f", $12 * 1000}' <<< "$line")
        fi
    else
        rss=-; sec=-; val=-; red=-; all=-
    fi
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$np" "$b" "$t" "$sec" "$rss" "$red" "$all" "$val" | tee -a "$MOUT"
done
# the projection starts from this run's one-process row
if [[ " $MPI_SIZES " == *" 1 "* && -e "$sim/run_mpi1/training_log.tsv" ]]; then
    printf '%s\n' "${timings[@]}" > "$sim/mpi_reduce.txt"
    /usr/bin/python3 bench/mpi_projection.py --run "$sim/run_mpi1" --cells "$MPI_CELLS" --batch "$MPI_BATCH" \
        --timing "$sim/mpi_reduce.txt" | tee -a "$MOUT"
fi
