#!/bin/bash
# Integration benchmark: every multi-batch labelled dataset in the shared data folder plus a
# simulation with known batches, each embedded with and without the batch by nbsphere (defaults)
# and by the PyTorch scVI reference (bench/reference.py, scvi-tools' batch handling and default
# training length), on the same cells and genes (those nbsphere selected with the batch), plus PCA
# of log1p(CP10k); all scored by bench/scib.py (scIB's batch and biology metrics and aggregate),
# printed as one table and appended to bench/RESULTS.md.
# Run after building (make BUILD=build-bench; make bench-deps). Finished steps are reused when the
# script is run again (FORCE=1 redoes them).
# Env: BIN (build-bench/nbsphere), DATA (../shared/data beside the repo), OUT
#      (build-bench/integration), ONLY="kang sim3b" runs a subset, RESULTS (bench/RESULTS.md;
#      empty: do not append), REF_EPOCHS=N overrides the reference's default length, SEEDS (default
#      "0 1 2"): the seeds both batch-corrected systems train with (the others: seed 0), since one
#      seed moves the aggregate by about 0.01, as much as the systems differ.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build-bench/nbsphere}
DATA=$(realpath "${DATA:-../shared/data}")
OUT=${OUT:-build-bench/integration}
RESULTS=${RESULTS-bench/RESULTS.md}
PY=/usr/bin/python3
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=1
mkdir -p "$OUT/inputs"

# name | input | nbsphere --format | labels table | label column | batch column
DATASETS="
kang|$DATA/kang_muscat|10x-mtx|$DATA/kang_muscat/cell_labels.tsv|cell_type|group_id
symphony_pbmcs|$DATA/symphony_pbmcs|10x-mtx|$DATA/symphony_pbmcs/cell_labels.tsv|cell_type|batch
sim3b|$OUT/inputs/sim3b/sim_mtx|10x-mtx|$OUT/inputs/sim3b/cell_labels.tsv|branch|batch"

sim=$OUT/inputs/sim3b   # 3 branches in 3 batches with gene-wise and library-size batch effects
if [[ " ${ONLY:-sim3b} " == *" sim3b "* && ! -e "$sim/cell_labels.tsv" ]]; then
  "$BIN" -q simulate --out "$sim" --cells 3000 --genes 2000 --batches 3
fi

fresh() { [ "${FORCE:-0}" = 1 ] || [ ! -s "$1" ]; }
SEEDS=${SEEDS:-0 1 2}

while IFS='|' read -r name input format labels column batch; do
  [ -n "$name" ] || continue
  [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $name "* ]] || continue
  d=$OUT/$name
  mkdir -p "$d"
  echo "== $name" >&2
  # runs: system and seed; seed 0 is the plain name (system), others system-seedN
  runs=(); for s in $SEEDS; do runs+=("nbsphere+batch $s"); done; runs+=("nbsphere 0")
  for r in "${runs[@]}"; do   # the batch runs first: seed 0's genes are everyone's
    read -r sys s <<< "$r"; run=$sys; [ "$s" = 0 ] || run=$sys-seed$s
    set_batch=(); [ $sys = nbsphere+batch ] && set_batch=(--set input.batch_key="$batch")
    if fresh "$d/$run/embedding.tsv"; then
      "$BIN" train "$input" --format "$format" --set input.labels_path="$labels" --set train.seed=$s \
        --set input.label_column="$column" "${set_batch[@]}" --out "$d/$run" > "$d/$run.log" 2>&1 \
        || { echo "$name: $run failed, see $d/$run.log" >&2; continue 2; }
    fi
  done
  genes=$d/nbsphere+batch/genes.tsv
  runs=(); for s in $SEEDS; do runs+=("scvi-ref+batch $s"); done; runs+=("scvi-ref 0")
  for r in "${runs[@]}"; do
    read -r sys s <<< "$r"; run=$sys; [ "$s" = 0 ] || run=$sys-seed$s
    cov=(); [ $sys = scvi-ref+batch ] && cov=(--batch-key "$batch" --covariates "$labels")
    if fresh "$d/$run.json"; then
      $PY bench/reference.py "$input" --genes "$genes" --seed $s --embedding "$d/$run.tsv" "${cov[@]}" \
        ${REF_EPOCHS:+--epochs $REF_EPOCHS} > "$d/$run.out" 2> "$d/$run.log" \
        || { echo "$name: $run failed, see $d/$run.log" >&2; continue 2; }
      tail -1 "$d/$run.out" > "$d/$run.json"
    fi
  done
  fresh "$d/pca.out" && $PY bench/pca.py "$input" --genes "$genes" --components 10 --out "$d/pca" > "$d/pca.out"
  runs=(nbsphere scvi-ref pca10); for s in $SEEDS; do
    [ "$s" = 0 ] && runs+=(nbsphere+batch scvi-ref+batch) || runs+=(nbsphere+batch-seed$s scvi-ref+batch-seed$s); done
  for run in "${runs[@]}"; do
    emb=$d/$run.tsv; [[ $run == nbsphere* ]] && emb=$d/$run/embedding.tsv
    if [ -s "$emb" ] && fresh "$d/scib-$run.json"; then
      $PY bench/scib.py "$emb" "$labels" "$column" "$batch" > "$d/scib-$run.json"
    fi
  done
done <<< "$DATASETS"

NAMES=$(awk -F'|' 'NF>1{print $1}' <<< "$DATASETS")
[ -z "${ONLY:-}" ] || NAMES=$ONLY
MACHINE="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(nproc) cores"
$PY - "$OUT" "$MACHINE" $NAMES > "$OUT/table.md" <<'EOF'
import json, os, subprocess, sys, time
out, machine, names = sys.argv[1], sys.argv[2], sys.argv[3:]
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print("## Integration benchmark (`bench/integration.sh`), %s, version %s\n" % (time.strftime("%Y-%m-%d"), rev))
print("Machine: %s. Scores from `bench/scib.py` (scIB definitions; see its header). Systems: nbsphere "
      "at its defaults without and with `input.batch_key`; `bench/reference.py` (PyTorch scVI defaults, "
      "scvi-tools' default length) without and with the batch one-hot in the decoder; PCA-10 of "
      "log1p(CP10k); all on the genes nbsphere selected with the batch.\n" % machine)
cols = ["ilisi", "batch_asw", "graph_conn", "knn", "clisi", "nmi", "ari", "celltype_asw", "batch", "bio", "overall"]
print("| dataset | system | seed | epochs | " + " | ".join(cols) + " |")
print("|---|---|---|---|" + "---|" * len(cols))
f = lambda v: "" if v is None else "%.3f" % v
means = []
for name in names:
    for sys_ in ["nbsphere", "nbsphere+batch", "scvi-ref", "scvi-ref+batch", "pca10"]:
        seen = []
        for seed in range(10):
            run = sys_ if seed == 0 else "%s-seed%d" % (sys_, seed)
            p = os.path.join(out, name, "scib-%s.json" % run)
            if not os.path.exists(p) or not os.path.getsize(p):
                continue
            s = json.load(open(p))
            seen.append(s)
            ep = ""
            if sys_.startswith("scvi"):
                ep = str(json.load(open(os.path.join(out, name, run + ".json")))["epochs"])
            elif sys_.startswith("nbsphere"):
                for line in open(os.path.join(out, name, run + ".log")):
                    if line.startswith("train: ") and " epochs" in line:  # "train: 200 epochs, ELBO ..."
                        ep = line.split()[1]
            print("| %s | %s | %s | %s | " % (name, sys_, "" if sys_ == "pca10" else seed, ep)
                  + " | ".join(f(s.get(c)) for c in cols) + " |")
        if len(seen) > 1:
            m = {c: sum(x[c] for x in seen) / len(seen) for c in cols if all(x.get(c) is not None for x in seen)}
            sd = (sum((x["overall"] - m["overall"]) ** 2 for x in seen) / (len(seen) - 1)) ** 0.5
            means.append("| %s | %s | %d | " % (name, sys_, len(seen)) + " | ".join(f(m.get(c)) for c in cols)
                         + " | %.3f |" % sd)
if means:
    print("\nMeans over the seeds of the batch-corrected systems (sd of the overall score over seeds last):\n")
    print("| dataset | system | seeds | " + " | ".join(cols) + " | sd overall |")
    print("|---|---|---|" + "---|" * (len(cols) + 1))
    print("\n".join(means))
EOF
cat "$OUT/table.md"
if [ -n "$RESULTS" ]; then { echo; cat "$OUT/table.md"; } >> "$RESULTS"; echo "appended to $RESULTS" >&2; fi
