#!/usr/bin/python3
"""Projected seconds per epoch of data-parallel training on many nodes (make bench-scale).

From a measured one-process run (its training_log.tsv and model.h5) on CELLS cells:
  compute per cell  c = mean s/epoch / CELLS (training steps and the validation pass, on this
                    machine's cores), so a node like this one spends c * atlas / N per epoch;
  gradient          n_params x 4 bytes (the length of model.h5's optimizer/m: the block that
                    parallel.c sums every step);
  steps per epoch   ceil(training cells / (N x per-process batch)), the training cells being
                    (1 - validation fraction) of the atlas; the validation pass's one message of
                    a few doubles per batch is left out;
and a communication cost per step for N nodes, message n bytes, bandwidth B, latency a:
  ring all-reduce           2 (N-1)/N n / B + 2 (N-1) a      (reduce-scatter + all-gather)
  reduce + bcast, tree      2 (2 n / B + ceil(log2 N) a)    (what parallel.c does, pipelined
                            through binary trees: the root takes in and sends out 2 n each way,
                            twice the ring's data per node, but log2 N rather than N latencies)
  reduce + bcast, binomial  2 ceil(log2 N) (n / B + a)       (unsegmented binomial trees, the
                            worst case of MPI's choices)
Epoch = compute + steps x communication (no overlap of the two: the code reduces after the
backward and waits). Prints a Markdown section for bench/RESULTS.md.
"""
import argparse
import datetime
import math
import os
import platform

import h5py

NETWORKS = [("10 Gb/s Ethernet", 10e9 / 8, 50e-6), ("100 Gb/s InfiniBand", 100e9 / 8, 2e-6)]
MODELS = [
    ("ring all-reduce", lambda N, n, bw, lat: 2 * (N - 1) / N * n / bw + 2 * (N - 1) * lat),
    ("reduce + bcast (tree)", lambda N, n, bw, lat: 2 * (2 * n / bw + math.ceil(math.log2(N)) * lat)),
    ("reduce + bcast (binomial)", lambda N, n, bw, lat: 2 * math.ceil(math.log2(N)) * (n / bw + lat)),
]


def machine():
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="output folder of the one-process run")
    ap.add_argument("--cells", type=int, required=True, help="cells of that run's input")
    ap.add_argument("--batch", type=int, default=128, help="per-process (per-node) batch of the projection")
    ap.add_argument("--atlas", type=float, default=10e6, help="cells of the projected atlas")
    ap.add_argument("--validation", type=float, default=0.1, help="validation fraction")
    ap.add_argument("--nodes", default="8,32,128")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds an epoch should take at most")
    ap.add_argument("--timing", help="bench/mpi_reduce.c's lines of this machine (shown for reference)")
    a = ap.parse_args()

    secs = []
    with open(os.path.join(a.run, "training_log.tsv")) as f:
        cols = f.readline().rstrip("\n").split("\t")
        for line in f:
            secs.append(float(line.rstrip("\n").split("\t")[cols.index("seconds")]))
    s_epoch = sum(secs) / len(secs)
    with h5py.File(os.path.join(a.run, "model.h5"), "r") as f:
        n_params = f["optimizer/m"].shape[0]
    n_bytes = 4 * n_params
    per_cell = s_epoch / a.cells
    train_cells = (1 - a.validation) * a.atlas

    def epoch(N, model, bw, lat):
        steps = math.ceil(train_cells / (N * a.batch))
        comm = model(N, n_bytes, bw, lat) if N > 1 else 0.0
        return per_cell * a.atlas / N, steps, steps * comm

    print(f"\nProjection ({datetime.date.today().isoformat()}, measured on {machine()}): "
          f"{s_epoch:.2f} s/epoch for {a.cells:,} cells in one process = {per_cell * 1e6:.1f} µs per cell; "
          f"gradient {n_params:,} parameters = {n_bytes / 1e6:.2f} MB; atlas {a.atlas:,.0f} cells, "
          f"{1 - a.validation:.0%} of them trained on, {a.batch} cells per node per step, one process per node "
          f"with this machine's cores.")
    if a.timing and os.path.exists(a.timing):
        with open(a.timing) as f:
            for line in f:
                w = line.split()
                if len(w) >= 12:
                    print(f"Measured here (bench/mpi_reduce.c, {w[1]} processes, shared memory): "
                          f"reduce + bcast {float(w[9]) * 1e3:.3f} ms per step, MPI_Allreduce "
                          f"{float(w[11]) * 1e3:.3f} ms.")
    nodes = [int(x) for x in a.nodes.split(",")]
    print()
    print("| network | cost model | " + " | ".join(f"{N} nodes: s/epoch (comm)" for N in nodes)
          + f" | nodes for < {a.budget:.0f} s |")
    print("|---|---|" + "---:|" * (len(nodes) + 1))
    for net, bw, lat in NETWORKS:
        for name, model in MODELS:
            cells = []
            for N in nodes:
                comp, steps, comm = epoch(N, model, bw, lat)
                cells.append(f"{comp + comm:.1f} ({comm:.1f})")
            first = next((N for N in range(1, 100001) if sum(epoch(N, model, bw, lat)[::2]) < a.budget), None)
            if first is None:
                best = min(range(1, 4097), key=lambda N: sum(epoch(N, model, bw, lat)[::2]))
                need = f"never (best {sum(epoch(best, model, bw, lat)[::2]):.0f} s at {best})"
            else:
                need = str(first)
            print(f"| {net} ({lat * 1e6:.0f} µs) | {name} | " + " | ".join(cells) + f" | {need} |")


if __name__ == "__main__":
    main()
