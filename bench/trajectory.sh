#!/bin/bash
# Trajectory benchmark: diffusion pseudotime on paul15 (Paul et al. 2015) from nbsphere's Gaussian
# and vMF embeddings and from PCA of the same genes, all through the same trajectory stage
# (`nbsphere trajectory EMBEDDING DATA` for PCA), scored by the median pseudotime per cluster
# along the erythroid maturation (7MEP -> 6Ery -> ... -> 1Ery) and GMP -> monocyte / neutrophil
# orders; then the wrap-around check on `simulate --trajectory long-branches` (6 long branches)
# for vMF on S^1 and S^2 and a Gaussian with d = 10, over seeds. Prints one table and appends it to
# bench/RESULTS.md. Run from anywhere after `make BUILD=build-bench`.
# Env: BIN (build-bench/nbsphere), DATA (../shared/data beside the repo), OUT
#      (build-bench/trajectory), RESULTS (bench/RESULTS.md; empty: do not append), SEEDS ("0 1 2").
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build-bench/nbsphere}
DATA=$(realpath "${DATA:-../shared/data}")
OUT=${OUT:-build-bench/trajectory}
RESULTS=${RESULTS-bench/RESULTS.md}
SEEDS=${SEEDS:-0 1 2}
PY=/usr/bin/python3
mkdir -p "$OUT"
paul=$DATA/paul15/paul15.h5ad.gz
ERY=7MEP,6Ery,5Ery,4Ery,3Ery,2Ery,1Ery
MO=9GMP,10GMP,14Mo,15Mo
NEU=9GMP,10GMP,16Neu,17Neu
rows=$OUT/rows.tsv
: > "$rows"
for lat in gaussian vmf; do
  d=$OUT/paul15_$lat
  "$BIN" -q run pipelines/trajectory.yaml --set input.path="$paul" --set model.latent=$lat --out "$d"
  $PY bench/trajectory_score.py "nbsphere $lat" "$d" paul15_clusters $ERY $MO $NEU >> "$rows"
done
for k in 10 50; do   # PCA of log1p(CP10k) of the Gaussian model's genes, through the same stage
  d=$OUT/paul15_pca$k
  [ -s "$OUT/pca$k.tsv" ] || $PY bench/pca.py "$paul" --genes "$OUT/paul15_gaussian/genes.tsv" --components $k \
    --out "$OUT/pca" > /dev/null
  "$BIN" -q trajectory "$OUT/pca$k.tsv" "$paul" --label-column paul15_clusters --root-label 7MEP --out "$d"
  $PY bench/trajectory_score.py "PCA $k" "$d" paul15_clusters $ERY $MO $NEU >> "$rows"
done

# wrap-around: 4000 cells, 1000 genes, depth 2000, 6 long branches
sim=$OUT/long6
[ -s "$sim/sim.h5ad" ] || "$BIN" -q simulate --out "$sim" --cells 4000 --genes 1000 --depth 2000 --branches 6 \
  --trajectory long-branches --format h5ad
printf 'input: {path: %s, format: h5ad, label_column: branch}\ntrain: {epochs: 100}\ntrajectory: {enabled: true}\n' \
  "$(realpath "$sim")/sim.h5ad" > "$OUT/long6.yaml"
wrap=$OUT/wrap.tsv
: > "$wrap"
for cfg in "vmf 2" "vmf 3" "vmf 10" "gaussian 10"; do
  set -- $cfg
  for s in $SEEDS; do
    d=$OUT/long6_$1$2_s$s
    "$BIN" -q run "$OUT/long6.yaml" --set model.latent=$1 --set model.latent_dim=$2 --set train.seed=$s --out "$d"
    $PY - "$d" "$1 d=$2 seed $s" >> "$wrap" <<'PYEOF'
import json, sys
w = json.load(open(sys.argv[1] + "/collapse_report.json"))["trajectory"]["wraparound"]
top = max(w["label_pairs"], key=lambda p: p["share"] if p["a"] != p["b"] else -1, default=None)
pair = f'{top["a"]}-{top["b"]} {top["shortcuts"]}/{top["edges"]} ({100 * top["share"]:.1f} %)' \
    if top and top["a"] != top["b"] else "none"
print(f'{sys.argv[2]}\t{100 * w["fraction"]:.2f}\t{pair}\t{w["verdict"]}')
PYEOF
  done
done

{
  echo
  echo "## Trajectories ($(date -u +%Y-%m-%d), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
  echo
  echo "paul15, root 7MEP, k = 15, 10 diffusion components; median pseudotime per cluster along each order"
  echo "and the Spearman correlation of the medians with it; cells without pseudotime; % shortcut edges."
  echo
  echo "| embedding | order | medians | Spearman | no pseudotime | shortcuts % | wrap-around |"
  echo "|---|---|---|---|---|---|---|"
  awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7}' "$rows"
  echo
  echo "Wrap-around on simulate --trajectory long-branches (6 branches, 4000 cells, 1000 genes, depth 2000,"
  echo "100 epochs): % of embedding edges that are shortcuts, the pair of different branches with the largest"
  echo "share of shortcut edges, and the verdict."
  echo
  echo "| model | shortcuts % | top pair of branches | verdict |"
  echo "|---|---|---|---|"
  awk -F'\t' '{printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4}' "$wrap"
} > "$OUT/table.md"
cat "$OUT/table.md"
[ -n "$RESULTS" ] && cat "$OUT/table.md" >> "$RESULTS"
exit 0
