#!/bin/bash
# make bench: nbsphere vs the PyTorch scVI-default reference (bench/reference.py), same data,
# same thread count. Run from the repository root after the binary is built (make bench does).
# Env: BIN (default ./nbsphere), THREADS (2), EPOCHS (6: 1 warm-up + 5 timed),
#      BENCH_DIR (scratch, default build-bench/bench-data),
#      NBS_BENCH_SET extra "--set key=value" words for nbsphere run.
set -euo pipefail
BIN=${BIN:-./nbsphere}
THREADS=${THREADS:-2}
EPOCHS=${EPOCHS:-6}
DIR=${BENCH_DIR:-build-bench/bench-data}
PY=/usr/bin/python3
PBMC=${PBMC:-../shared/data/pbmc3k}
mkdir -p "$DIR"
# One pool of THREADS workers per process: OpenMP and OpenBLAS must not both spawn THREADS.
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
export OMP_WAIT_POLICY=ACTIVE

cc -O2 -o "$DIR/sgemm_probe" bench/sgemm_probe.c $(pkg-config --cflags --libs openblas)
PEAK=$(OPENBLAS_NUM_THREADS=$THREADS "$DIR/sgemm_probe" | awk '$1=="peak"{print $2}')
echo "sgemm peak at $THREADS threads: $PEAK GFLOP/s"

have_cmd() { "$BIN" "$1" --help >/dev/null 2>&1; }
if ! have_cmd simulate || ! have_cmd run; then
  echo "nbsphere has no working 'simulate'/'run' commands yet: only the reference can be timed." >&2
  NBS_OK=0
else
  NBS_OK=1
fi
TORCH_OK=1
$PY -c 'import torch' 2>/dev/null || { echo "python3-torch missing: reference skipped (make bench-deps)" >&2; TORCH_OK=0; }

# nbsphere: train, then read the per-epoch log TSV (seconds per epoch, validation ELBO).
run_nbs() { # data out latent epochs
  local rss
  rss=$( { /usr/bin/time -f '%M' "$BIN" run pipelines/reference.yaml --set input="$1" \
      --set out="$2" --set latent="$3" --set epochs="$4" --set threads="$THREADS" \
      --set batch_size=128 --set hidden=128 --set latent_dim=10 ${NBS_BENCH_SET:-} >/dev/null; } 2>&1 | tail -1)
  $PY - "$2" "$rss" <<'PY'
import csv, glob, json, statistics, sys
log = sorted(glob.glob(sys.argv[1] + "/**/*epoch*.tsv", recursive=True))[0]
rows = list(csv.DictReader(open(log), delimiter="\t"))
sec = [float(r.get("seconds") or r.get("sec")) for r in rows]
elbo = [r.get("val_elbo") or r.get("validation_elbo") for r in rows]
print(json.dumps({"sec_per_epoch": statistics.median(sec[1:] or sec),
                  "peak_rss_mb": int(sys.argv[2]) / 1024, "val_elbo": float(elbo[-1])}))
PY
}
run_ref() { [ $TORCH_OK = 1 ] && $PY bench/reference.py "$@" --threads "$THREADS" --epochs "$EPOCHS" | tail -1 || echo '{}'; }

SIM="$DIR/sim10k"
if [ $NBS_OK = 1 ]; then
  [ -e "$SIM" ] || "$BIN" simulate --out "$SIM" --cells 10000 --genes 2000
fi
declare -A R
for ds in sim10k pbmc3k; do
  if [ $ds = sim10k ]; then data=$SIM; genes=(); else data=$PBMC; genes=(); fi
  if [ $ds = pbmc3k ] && [ $NBS_OK = 1 ]; then
    # nbsphere selects the 2,000 HVGs; the reference gets exactly that list.
    "$BIN" run pipelines/reference.yaml --set input="$data" --set out="$DIR/hvg" --set hvg=2000 \
      --set epochs=0 >/dev/null && genes=(--genes "$DIR/hvg/genes.tsv")
  fi
  [ $ds = pbmc3k ] && [ ${#genes[@]} = 0 ] && echo "note: no nbsphere HVG list; the reference trains on all genes of $ds" >&2
  [ $NBS_OK = 1 ] && R[$ds,nbs]=$(run_nbs "$data" "$DIR/out-$ds" gaussian "$EPOCHS") || R[$ds,nbs]='{}'
  [ $NBS_OK = 1 ] && R[$ds,vmf]=$(run_nbs "$data" "$DIR/out-$ds-vmf" vmf "$EPOCHS") || R[$ds,vmf]='{}'
  if [ -e "$data" ]; then R[$ds,ref]=$(run_ref "$data" "${genes[@]}"); else R[$ds,ref]='{}'; fi
done

$PY - "$PEAK" "${R[sim10k,nbs]}" "${R[sim10k,vmf]}" "${R[sim10k,ref]}" \
      "${R[pbmc3k,nbs]}" "${R[pbmc3k,vmf]}" "${R[pbmc3k,ref]}" <<'PY'
import json, sys
peak = float(sys.argv[1]); v = [json.loads(s or "{}") for s in sys.argv[2:]]
f = lambda d, k, fmt: (fmt % d[k]) if k in d else "-"
print("%-8s %-10s %12s %10s %14s" % ("data", "system", "s/epoch", "peak MB", "val ELBO"))
for i, ds in enumerate(["sim10k", "pbmc3k"]):
    nbs, vmf, ref = v[3*i:3*i+3]
    for name, d in (("nbsphere", nbs), ("nbs-vMF", vmf), ("pytorch", ref)):
        print("%-8s %-10s %12s %10s %14s" % (ds, name, f(d, "sec_per_epoch", "%.3f"),
              f(d, "peak_rss_mb", "%.0f"), f(d, "val_elbo", "%.2f")))
    if nbs and ref:
        print("%-8s time ratio pytorch/nbsphere %.2fx, ELBO gap %.2f%%" % (ds,
              ref["sec_per_epoch"] / nbs["sec_per_epoch"],
              100 * abs(nbs["val_elbo"] - ref["val_elbo"]) / abs(ref["val_elbo"])))
    if nbs and vmf:
        print("%-8s vMF/Gaussian per-epoch cost %.2f" % (ds, vmf["sec_per_epoch"] / nbs["sec_per_epoch"]))
print("sgemm peak %.1f GFLOP/s" % peak)
PY
