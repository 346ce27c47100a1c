#!/bin/bash
# make bench-knn: recall@15 and time of the approximate k-NN graph (FLANN k-means tree) against the
# exact one on CELLS simulated cells (default 50000), embedded by PCA to 10 dimensions; one row
# per branching:checks[:recall] setting (GRID). Run from the repository root (make bench-knn builds first).
# Env: BIN (./nbsphere), KNN_BIN (build/knn_recall), CELLS (50000), THREADS (2),
#      BENCH_DIR (build-bench), GRID ("32:512 32:1024 64:512 64:1024 128:1024 64:512:0.95").
set -euo pipefail
BIN=${BIN:-./nbsphere}
KNN_BIN=${KNN_BIN:-build/knn_recall}
CELLS=${CELLS:-50000}
THREADS=${THREADS:-2}
DIR=${BENCH_DIR:-build-bench}
GRID=${GRID:-32:512 32:1024 64:512 64:1024 128:1024 64:512:0.95}
mkdir -p "$DIR"
export OMP_NUM_THREADS=$THREADS
SIM="$DIR/sim$CELLS"
[ -e "$SIM/sim_mtx" ] || "$BIN" -q simulate --out "$SIM" --cells "$CELLS" --genes 1000 --depth 600 --seed 1
# shellcheck disable=SC2086
"$KNN_BIN" "$SIM/sim_mtx" 15 10 "$THREADS" $GRID | tee "$DIR/knn_recall_$CELLS.tsv"
