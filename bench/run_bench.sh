#!/bin/bash
# make bench: nbsphere against the PyTorch scVI-default reference (bench/reference.py) on the same
# data, model, loss, optimiser and thread count, in one run; then the vMF cost and the scaling
# table. Run from the repository root after the binary is built (make bench does).
# First the floor table: what this machine could do at best for the model (dense products at the
# sgemm peak, the likelihood's entries at the vector exp + log cost, both measured in the same
# run) against nbsphere's time, for the native and the AVX2-limited build at 1 and 2 threads.
# The Gaussian and the vMF latent always run in turn (same seed, one after the other), and the
# vMF / Gaussian figures are the median of those pairs' ratios: on a shared machine, two
# stretches of runs would compare the load as much as the latents.
# Env: BIN (default ./nbsphere), THREADS (2), EPOCHS (6: 1 warm-up + 5 timed),
#      BUILD_DIR, AVX2_DIR (the build folders whose probes and likelihood.o the floor table uses,
#      AVX2_DIR "folder binary" as `make print-build` prints it; make bench sets both; FLOOR=0 skips
#      the table, FLOOR_ONLY=1 stops after it), FLOOR_REPEATS (2: runs per row, the median is shown),
#      BENCH_DIR (scratch, default build-bench), PBMC (../shared/data/pbmc3k),
#      SCALING ("10000 50000 200000"; empty to skip the scaling table), SEEDS ("0 1 2 3 4 5":
#      the seeds of the nbsphere/pytorch runs; the validation ELBO is compared as a mean over
#      them, since one seed's split and initialisation move it by 1-3 % after 6 epochs).
set -euo pipefail
BIN=${BIN:-./nbsphere}
THREADS=${THREADS:-2}
EPOCHS=${EPOCHS:-6}
DIR=${BENCH_DIR:-build-bench}
PBMC=${PBMC:-../shared/data/pbmc3k}
SCALING=${SCALING-10000 50000 200000}
SEEDS=${SEEDS:-0 1 2 3 4 5}
PY=/usr/bin/python3
mkdir -p "$DIR"
# One pool of THREADS workers per process (nbsphere keeps OpenBLAS single-threaded inside its
# OpenMP pool; torch uses its intra-op pool of THREADS).
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=1

cc -O2 -o "$DIR/sgemm_probe" bench/sgemm_probe.c $(pkg-config --cflags --libs openblas)
PEAK=$(OPENBLAS_NUM_THREADS=$THREADS "$DIR/sgemm_probe" | awk '$1=="peak"{print $2}')
echo "sgemm peak at $THREADS threads: $PEAK GFLOP/s (OpenBLAS, 2048^3)"

TORCH_OK=1
$PY -c 'import torch' 2>/dev/null || { echo "python3-torch is missing: the reference is skipped (run make bench-deps)" >&2; TORCH_OK=0; }

# The scVI default architecture on both sides: 1 x 128 hidden, 10-d Gaussian latent, NB with
# per-gene dispersion, batch norm, dropout 0.1, batch 128, Adam lr 1e-3, weight decay 1e-6,
# KL warm-up over 400 epochs, Adam eps 0.01, theta from exp(N(0, 1)) (scvi-tools' defaults; `preset: scvi`).
run_nbs() { # data out latent n_top_genes [seed]
  /usr/bin/time -f '%M' -o "$2.rss" "$BIN" -q run pipelines/reference.yaml --set preset=scvi \
      --set input.path="$1" --out "$2" --set model.latent="$3" --set preprocess.n_top_genes="$4" \
      --set train.seed="${5:-0}" \
      --set train.epochs="$EPOCHS" --set train.threads="$THREADS" --set train.checkpoint_every=0 \
      --set diagnose.interval=0 --set output.write_report=false --set output.write_h5ad=false \
      >/dev/null 2>"$2.log" || { echo "nbsphere failed on $1: see $2.log" >&2; echo '{}'; return; }
  $PY - "$2" "$(tail -1 "$2.rss")" <<'PY'
import csv, json, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1] + "/training_log.tsv"), delimiter="\t"))
steady = rows[1:] or rows
med = lambda k: statistics.median(float(r[k]) for r in steady)
print(json.dumps({"sec_per_epoch": med("seconds"), "sec_products": med("sec_products"),
                  "sec_likelihood": med("sec_likelihood"), "peak_rss_mb": int(sys.argv[2]) / 1024,
                  "val_elbo": float(rows[-1]["val_elbo"]), "epochs": len(rows)}))
PY
}
run_ref() { # data [--genes file]
  if [ $TORCH_OK = 1 ]; then $PY bench/reference.py "$@" --threads "$THREADS" --epochs "$EPOCHS" | tail -1; else echo '{}'; fi
}
# The Gaussian and the vMF latent over SEEDS, interleaved (Gaussian seed s, vMF seed s, then the
# next seed), so that their ratio compares the latents and not two stretches of the machine's load:
# data out-prefix n_top_genes; sets GAUSS_JSON and VMF_JSON (JSON lists of the runs).
seeds_pair() {
  local s sep="" g="" v=""
  for s in $SEEDS; do
    g="$g$sep$(run_nbs "$1" "$2-s$s" gaussian "$3" "$s" | tr -d '\n')"
    v="$v$sep$(run_nbs "$1" "$2-vmf-s$s" vmf "$3" "$s" | tr -d '\n')"
    sep=","
  done
  GAUSS_JSON="[$g]" VMF_JSON="[$v]"
}
seeds_ref() { local sep="[" s; for s in $SEEDS; do printf '%s' "$sep"; run_ref "$@" --seed "$s"; sep=","; done; echo "]"; }

# The floor table. Its rows run one after another, each row's sgemm peak measured just before it,
# so a change of the machine's load (it may be shared) moves the peak and the runs together.
FLOOR=${FLOOR:-1}
FLOOR_REPEATS=${FLOOR_REPEATS:-2}
SIM="$DIR/sim10k"
[ -e "$SIM/sim_mtx" ] || "$BIN" -q simulate --out "$SIM" --cells 10000 --genes 2000 --depth 600 --seed 1
floor_rows() { # label folder binary: one row per thread count, JSON lines
  local label=$1 dir=$2 bin=$3 t
  local vm; vm=$("$dir/vecmath_probe" | tr '\n' ' ')
  local mvec; mvec=$(objdump -dr "$dir/likelihood.o" | grep -o '_ZGV[A-Za-z0-9_]*' | sort | uniq -c | awk '{printf "%s%sx%s", s, $2, $1; s=","}')
  for t in 1 2; do
    local peak; peak=$(OPENBLAS_NUM_THREADS=$t "$DIR/sgemm_probe" | awk '$1=="peak"{print $2}')
    # workers wait as the CLI's on an idle machine (main.c: choose_omp_waiting)
    local layers; layers=$(GOMP_SPINCOUNT=10000 OMP_NUM_THREADS=$t "$dir/layers_probe" | tr '\n' ' ')
    printf '{"build": "%s", "threads": %d, "peak": %s, "vecmath": "%s", "mvec": "%s", "layers": "%s"' \
        "$label" "$t" "$peak" "$vm" "$mvec" "$layers"
    # the two latents alternately (Gaussian, vMF, Gaussian, ...): their ratio, the vMF cost, then
    # compares runs under the same load
    local r sep="" g="" v=""
    for r in $(seq "$FLOOR_REPEATS"); do
      g="$g$sep$(BIN=$bin THREADS=$t OMP_NUM_THREADS=$t run_nbs "$SIM/sim_mtx" "$DIR/floor-$label-gaussian-t$t-r$r" gaussian 0 | tr -d '\n')"
      v="$v$sep$(BIN=$bin THREADS=$t OMP_NUM_THREADS=$t run_nbs "$SIM/sim_mtx" "$DIR/floor-$label-vmf-t$t-r$r" vmf 0 | tr -d '\n')"
      sep=","
    done
    printf ', "gaussian": [%s], "vmf": [%s]}\n' "$g" "$v"
  done
}
if [ "$FLOOR" != 0 ] && [ -n "${BUILD_DIR:-}" ]; then
  FLOOR_JSON=$(floor_rows native "$BUILD_DIR" "$BIN"
               if [ -n "${AVX2_DIR:-}" ]; then set -- $AVX2_DIR; floor_rows avx2 "$1" "$2"; fi)
  FLOOR_JSON=$FLOOR_JSON $PY - "$SIM/sim_mtx" "$(uptime)" <<'PY'
import gzip, json, os, statistics, sys
with gzip.open(sys.argv[1] + "/matrix.mtx.gz", "rt") as f:
    line = f.readline()
    while line.startswith("%"):
        line = f.readline()
    G, n, nnz = map(int, line.split())
# the scVI default's dense products per cell (the encoder's sparse first layer is not counted):
# head 128 x 20, decoder 10 x 128 and 128 x G; training cells (90 %) run forward and two backward
# products per layer, validation cells (10 %) the forward one. The likelihood: one exp (softmax)
# and one log (log(theta + mu)) per entry at the least, over every cell's G entries.
per_cell = 2 * (128 * 20 + 10 * 128 + 128 * G)
n_train = round(0.9 * n)
flops = 3 * per_cell * n_train + per_cell * (n - n_train)
entries = n * G
print("\nfloor of one epoch on simulated %d cells x %d genes: %.1f GFLOP of dense products, %.1f M likelihood entries;"
      % (n, G, flops / 1e9, entries / 1e6))
cpu = {}
for line in open("/proc/cpuinfo"):
    k, _, v = line.partition(":")
    cpu.setdefault(k.strip(), v.strip())
ext = [f for f in cpu.get("flags", "").split() if f.startswith(("avx", "fma", "sse4"))]
print("processor: %s, %d logical CPUs; vector extensions: %s" % (cpu.get("model name", "?"), os.cpu_count(), " ".join(ext)))
print("floor = FLOPs / sgemm peak + entries x (exp + log ns) / threads; load average at the start: %s" % sys.argv[2].split("average:")[-1].strip())
print("%-6s %3s %7s %6s %6s %8s | %9s %7s %7s %8s | %9s %7s %6s" % ("build", "thr", "peak", "exp", "log", "floor s",
      "Gauss s", "xfloor", "layers", "%peak", "vMF s", "xfloor", "vMF/G"))
rows = [json.loads(l) for l in os.environ["FLOOR_JSON"].splitlines() if l.strip()]
notes = []
for r in rows:
    vm = dict(zip(r["vecmath"].split()[::2], map(float, r["vecmath"].split()[1::2])))
    t = r["threads"]
    floor = flops / (r["peak"] * 1e9) + entries * (vm["exp"] + vm["log"]) * 1e-9 / t
    med = lambda runs, k: statistics.median(x[k] for x in runs if x) if any(runs) else float("nan")
    g, v = med(r["gaussian"], "sec_per_epoch"), med(r["vmf"], "sec_per_epoch")
    gp = med(r["gaussian"], "sec_products")
    lay = flops / gp / 1e9
    # vMF / Gaussian: the median of the ratios of the runs made one after the other
    pairs = [b["sec_per_epoch"] / a["sec_per_epoch"] for a, b in zip(r["gaussian"], r["vmf"]) if a and b]
    vg = statistics.median(pairs) if pairs else float("nan")
    print("%-6s %3d %7.1f %6.3f %6.3f %8.3f | %9.3f %7.2f %7.1f %7.0f%% | %9.3f %7.2f %6.2f" % (r["build"], t, r["peak"],
          vm["exp"], vm["log"], floor, g, g / floor, lay, 100 * lay / r["peak"], v, v / floor, vg))
    notes.append("%-6s %d thr: libmvec calls in likelihood.o: %s; output layer 128 x %d (GFLOP/s): %s"
                 % (r["build"], t, r["mvec"] or "none", G, r["layers"]))
print("(s: median s/epoch over %s runs; vMF/G: median of the ratios of runs made in turn; layers: the dense FLOPs over the time in the network, which also holds the sparse"
      " encoder input, norms and the latent)" % (len(rows[0]["gaussian"]) if rows else 0))
for l in notes:
    print(l)
PY
fi
[ "${FLOOR_ONLY:-0}" = 0 ] || exit 0

declare -A R
seeds_pair "$SIM/sim_mtx" "$DIR/nbs-sim" 0
R[sim,nbs]=$GAUSS_JSON R[sim,vmf]=$VMF_JSON
R[sim,ref]=$(seeds_ref "$SIM/sim_mtx")
if [ -e "$PBMC" ]; then
  seeds_pair "$PBMC" "$DIR/nbs-pbmc" 2000
  R[pbmc,nbs]=$GAUSS_JSON R[pbmc,vmf]=$VMF_JSON
  first=(${SEEDS})
  R[pbmc,ref]=$(seeds_ref "$PBMC" --genes "$DIR/nbs-pbmc-s${first[0]}/genes.tsv")  # the same 2,000 HVGs
else
  echo "$PBMC not found: the PBMC rows are skipped" >&2; R[pbmc,nbs]='[]'; R[pbmc,vmf]='[]'; R[pbmc,ref]='[]'
fi

SCALE_ROWS=""
for n in $SCALING; do
  d="$DIR/scale$n"
  [ -e "$d/sim_mtx" ] || "$BIN" -q simulate --out "$d" --cells "$n" --genes 2000 --depth 600 --seed 1
  SCALE_ROWS="$SCALE_ROWS $n=$(EPOCHS=3 run_nbs "$d/sim_mtx" "$DIR/nbs-scale$n" gaussian 0 | tr -d ' ')"
done

BENCH_DIR=$DIR $PY - "$PEAK" "$THREADS" "$SIM/sim_mtx" "${R[sim,nbs]}" "${R[sim,vmf]}" "${R[sim,ref]}" \
      "${R[pbmc,nbs]}" "${R[pbmc,vmf]}" "${R[pbmc,ref]}" $SCALE_ROWS <<'PY'
import gzip, json, os, statistics, sys
peak, threads, sim = float(sys.argv[1]), sys.argv[2], sys.argv[3]

def mtx_shape(folder):  # genes, cells, nonzeros from the Matrix Market size line
    with gzip.open(folder + "/matrix.mtx.gz", "rt") as f:
        line = f.readline()
        while line.startswith("%"):
            line = f.readline()
        return tuple(map(int, line.split()))

def data_model_mb(cells, genes, nnz):
    # what training must hold: the CSR matrix (int32 index + float count per nonzero, int64 row
    # offsets) and the scVI-default model (parameters, gradients, two Adam moments, float)
    params = 2 * genes * 128 + genes + 128 + 128 * 20 + 20 + 10 * 128 + 128 + 4 * 128 + genes
    return (8 * nnz + 8 * (cells + 1) + 16 * params) / 2 ** 20

def summary(runs):  # runs over seeds -> medians of the timings, mean and sd of the ELBO
    runs = [r for r in runs if r]
    if not runs:
        return {}
    d = {k: statistics.median(r[k] for r in runs) for k in ("sec_per_epoch", "sec_products", "sec_likelihood") if k in runs[0]}
    d["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    e = [r["val_elbo"] for r in runs]
    d["val_elbo"], d["elbo_sd"], d["seeds"] = statistics.mean(e), statistics.stdev(e) if len(e) > 1 else 0.0, len(e)
    return d

lists = [json.loads(s or "[]") for s in sys.argv[4:10]]
v = [summary(l) for l in lists]
def pair_ratio(g, m):  # median of vMF / Gaussian over the seeds, each pair run one after the other
    p = [b["sec_per_epoch"] / a["sec_per_epoch"] for a, b in zip(g, m) if a and b]
    return statistics.median(p) if p else float("nan")
G, n, nnz = mtx_shape(sim)
print("\nsimulated: %d cells x %d genes, %.1f %% zeros; threads: %s" % (n, G, 100 * (1 - nnz / (n * G)), threads))
f = lambda d, k, fmt: (fmt % d[k]) if k in d else "-"
print("%-8s %-10s %9s %9s %10s %9s %12s %6s" % ("data", "system", "s/epoch", "products", "likelihood", "peak MB", "val ELBO", "(sd)"))
for i, ds in enumerate(["sim10k", "pbmc3k"]):
    nbs, vmf, ref = v[3 * i:3 * i + 3]
    for name, d in (("nbsphere", nbs), ("nbs-vMF", vmf), ("pytorch", ref)):
        print("%-8s %-10s %9s %9s %10s %9s %12s %6s" % (ds, name, f(d, "sec_per_epoch", "%.3f"), f(d, "sec_products", "%.3f"),
              f(d, "sec_likelihood", "%.3f"), f(d, "peak_rss_mb", "%.0f"), f(d, "val_elbo", "%.2f"), f(d, "elbo_sd", "%.1f")))
    if nbs and ref:
        se = (nbs["elbo_sd"] ** 2 / nbs["seeds"] + ref["elbo_sd"] ** 2 / ref["seeds"]) ** 0.5
        print("%-8s pytorch/nbsphere time per epoch: %.1fx; mean validation ELBO over %d seeds differs by %.2f %% "
              "(standard error of the difference %.2f %%)" % (ds, ref["sec_per_epoch"] / nbs["sec_per_epoch"],
              min(nbs["seeds"], ref["seeds"]), 100 * abs(nbs["val_elbo"] - ref["val_elbo"]) / abs(ref["val_elbo"]),
              100 * se / abs(ref["val_elbo"])))
    if nbs and vmf:
        print("%-8s vMF / Gaussian time per epoch: %.2f (median over the seeds of the ratio, each seed's two runs one after the other)"
              % (ds, pair_ratio(lists[3 * i], lists[3 * i + 1])))
    if nbs and ds == "sim10k":
        # dense products of one epoch (forward + two backward products per layer; the encoder's
        # first layer is sparse and not counted): decoder 10x128 and 128xG, head 128x20
        cells = 0.9 * n
        flops = 3 * 2 * cells * (10 * 128 + 128 * G + 128 * 20)
        print("%-8s dense matrix products: %.1f GFLOP per epoch, %.1f GFLOP/s achieved in the layers (sgemm peak %.0f)"
              % (ds, flops / 1e9, flops / 1e9 / nbs["sec_products"], peak))
        need = data_model_mb(n, G, nnz)
        print("%-8s peak memory %.0f MB = %.1fx the CSR matrix + model (%.0f MB)" % (ds, nbs["peak_rss_mb"],
              nbs["peak_rss_mb"] / need, need))
rows = [a.split("=", 1) for a in sys.argv[10:]]
if rows:
    print("\nscaling (Gaussian, %d genes):" % G)
    print("%10s %10s %10s %14s %16s %12s" % ("cells", "s/epoch", "peak MB", "s/epoch/10k", "CSR+model MB", "peak/that"))
    for n_, js in rows:
        d = json.loads(js or "{}")
        if d:
            Gs, ns, nnzs = mtx_shape("%s/scale%s/sim_mtx" % (os.environ["BENCH_DIR"], n_))
            need = data_model_mb(ns, Gs, nnzs)
            print("%10s %10.3f %10.0f %14.3f %16.0f %12.2f" % (n_, d["sec_per_epoch"], d["peak_rss_mb"],
                  d["sec_per_epoch"] / int(n_) * 1e4, need, d["peak_rss_mb"] / need))
PY
