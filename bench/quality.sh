#!/bin/bash
# Embedding quality on the three labelled real datasets at the default settings: 15-NN label
# accuracy (5-fold) of the nbsphere embedding next to 10 principal components of log1p(CP10k)
# on the same genes, as `nbsphere run` reports it. Run from the repository root after `make`.
# Env: BIN (default ./nbsphere), OUT (default build-bench/quality), SETS (extra --set words).
set -euo pipefail
BIN=${BIN:-./nbsphere}
OUT=${OUT:-build-bench/quality}
mkdir -p "$OUT"
printf '%-8s %9s %9s %8s %s\n' dataset nbsphere PCA seconds labels
for name in kang paul15 pbmc3k; do
  start=$(date +%s.%N)
  if ! "$BIN" run "pipelines/$name.yaml" --out "$OUT/$name" ${SETS:-} 2>"$OUT/$name.log"; then
    echo "$name: run failed, see $OUT/$name.log" >&2; continue
  fi
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')
  line=$(grep -E '^[0-9]+-NN accuracy' "$OUT/$name.log" | tail -1)
  emb=$(sed -E 's/.*embedding ([0-9.]+),.*/\1/' <<<"$line")
  pca=$(sed -E 's/.* ([0-9.]+)$/\1/' <<<"$line")
  lab=$(sed -E "s/.*of the '([^']+)' labels.*/\1/" <<<"$line")
  printf '%-8s %9s %9s %8.1f %s\n' "$name" "$emb" "$pca" "$secs" "$lab"
done
