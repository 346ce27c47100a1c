#!/usr/bin/python3
"""Integration scores of an embedding, as the scIB benchmark defines them (Luecken et al., Nat
Methods 19:41, 2022; the scib package's metrics), for bench/integration.sh.

  scib.py EMBEDDING.tsv LABELS LABEL_COLUMN BATCH_COLUMN [--metric auto|euclidean|cosine] [--seed 0]

EMBEDDING.tsv and LABELS as in bench/score.py (its readers are used); cells without a label or a
batch are left out. Prints one JSON line:
  ilisi         integration LISI: per cell, the inverse Simpson index of the batches among its 90
                nearest neighbours, weighted by a Gaussian kernel calibrated to perplexity 30
                (Harmony's compute_lisi, which scib's ilisi_graph wraps); median over cells,
                scaled (median - 1) / (B - 1): 0 = no mixing, 1 = as mixed as B batches can be
  batch_asw     per cell type, 1 - |silhouette| of the batches within the type's cells; averaged
                per type, then over types (scib silhouette_batch); types in one batch skipped
  graph_conn    per cell type, the share of its cells in the largest connected component of the
                15-NN graph restricted to that type; averaged over types (scib graph_connectivity)
  knn           15-NN label accuracy, 5-fold repeated 5 times (bench/score.py's definition)
  clisi         cell-type LISI the same way as ilisi, scaled (C - median) / (C - 1): 1 = pure
  nmi, ari      Leiden (igraph, modularity, on the unweighted 15-NN graph) at resolutions 0.1,
                0.2, ..., 2.0; the resolution with the best NMI against the labels, its NMI and ARI
                (scib cluster_optimal_resolution; scib clusters scanpy's weighted graph)
  celltype_asw  (silhouette of the labels + 1) / 2 (scib silhouette)
  batch, bio    means of (ilisi, batch_asw, graph_conn) and (knn, clisi, nmi, ari, celltype_asw)
  overall       0.4 * batch + 0.6 * bio (scIB's aggregate)
"""
import argparse, json, os, random, sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from score import FOLDS, K, REPEATS, read_embedding, read_labels  # noqa: E402

LISI_K, PERPLEXITY, SIL_MAX = 90, 30.0, 20000


def simpson(dist, codes, n_cat, perplexity=PERPLEXITY, tol=1e-5, iters=50):
    """Per-row Simpson index of codes (n, k) under a Gaussian kernel of the distances (n, k) whose
    entropy is log(perplexity): Harmony's compute_simpson (binary search of the precision beta)."""
    n = dist.shape[0]
    out = np.empty(n)
    log_u = np.log(perplexity)
    for i in range(n):
        d = dist[i]
        beta, lo, hi = 1.0, -np.inf, np.inf
        for _ in range(iters):
            p = np.exp(-d * beta)
            s = p.sum()
            if s == 0:  # every neighbour infinitely far at this beta: entropy 0
                h, p = 0.0, np.full_like(d, 1.0 / len(d))
            else:
                h = np.log(s) + beta * float((d * p).sum()) / s
                p = p / s
            diff = h - log_u
            if abs(diff) < tol:
                break
            if diff > 0:
                lo = beta
                beta = beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi = beta
                beta = beta / 2 if lo == -np.inf else (beta + lo) / 2
        w = np.bincount(codes[i], weights=p, minlength=n_cat)
        out[i] = float((w * w).sum())
    return out


def knn_graph(X, metric, k):
    from sklearn.neighbors import NearestNeighbors
    algo = "brute" if metric == "cosine" else "auto"
    nn = NearestNeighbors(n_neighbors=k + 1, metric=metric, algorithm=algo).fit(X)
    dist, idx = nn.kneighbors(X)
    return dist[:, 1:], idx[:, 1:]  # without the cell itself


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("embedding")
    ap.add_argument("labels")
    ap.add_argument("label_column")
    ap.add_argument("batch_column")
    ap.add_argument("--metric", default="auto", choices=["auto", "euclidean", "cosine"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    from sklearn.model_selection import RepeatedKFold
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.metrics import (adjusted_rand_score, normalized_mutual_info_score, silhouette_samples,
                                 silhouette_score)
    import igraph

    barcodes, X, sphere = read_embedding(a.embedding)
    metric = a.metric if a.metric != "auto" else ("cosine" if sphere else "euclidean")
    lab, bat = read_labels(a.labels, a.label_column), read_labels(a.labels, a.batch_column)
    ok = lambda v: v not in ("", "NA", "nan")
    keep = [i for i, b in enumerate(barcodes) if ok(lab.get(b, "")) and ok(bat.get(b, ""))]
    X = X[keep]
    y = np.array([lab[barcodes[i]] for i in keep])
    b = np.array([bat[barcodes[i]] for i in keep])
    n = len(y)
    ycats, ycode = np.unique(y, return_inverse=True)
    bcats, bcode = np.unique(b, return_inverse=True)
    C, B = len(ycats), len(bcats)
    if B < 2:
        sys.exit("%s: one batch in %s: nothing to integrate" % (a.labels, a.batch_column))

    dist, idx = knn_graph(X, metric, min(LISI_K, n - 1))
    ilisi = float(np.median(1.0 / simpson(dist, bcode[idx], B)))
    clisi = float(np.median(1.0 / simpson(dist, ycode[idx], C)))

    # 15-NN graph (unweighted union of the lists), for connectivity and Leiden
    edges = sorted({(min(i, j), max(i, j)) for i in range(n) for j in idx[i, :K]})
    g = igraph.Graph(n=n, edges=edges)
    conn = []
    for c in range(C):
        cells = np.flatnonzero(ycode == c)
        sizes = g.induced_subgraph(cells.tolist()).connected_components().sizes()
        conn.append(max(sizes) / len(cells))

    asw = []
    for c in range(C):
        cells = np.flatnonzero(ycode == c)
        if len(np.unique(bcode[cells])) < 2 or len(cells) < 3:
            continue
        s = silhouette_samples(X[cells], bcode[cells], metric=metric)
        asw.append(float(np.mean(1.0 - np.abs(s))))

    accs = []
    for tr, te in RepeatedKFold(n_splits=FOLDS, n_repeats=REPEATS, random_state=a.seed).split(X):
        clf = KNeighborsClassifier(n_neighbors=K, metric=metric,
                                   algorithm="brute" if metric == "cosine" else "auto").fit(X[tr], y[tr])
        accs.append(float((clf.predict(X[te]) == y[te]).mean()))

    best = None
    for r in np.round(np.arange(0.1, 2.01, 0.1), 1):
        random.seed(a.seed)  # python-igraph draws from Python's random module
        cl = np.array(g.community_leiden(objective_function="modularity", resolution_parameter=float(r),
                                         n_iterations=-1).membership)
        nmi = float(normalized_mutual_info_score(ycode, cl))
        if best is None or nmi > best[1]:
            best = (float(r), nmi, float(adjusted_rand_score(ycode, cl)), int(cl.max() + 1))
    sil = silhouette_score(X, ycode, metric=metric, sample_size=SIL_MAX if n > SIL_MAX else None,
                           random_state=a.seed)

    res = {"cells": n, "metric": metric, "batches": B, "classes": C,
           "ilisi": (ilisi - 1) / (B - 1), "ilisi_raw": ilisi,
           "batch_asw": float(np.mean(asw)) if asw else None, "graph_conn": float(np.mean(conn)),
           "knn": float(np.mean(accs)), "clisi": (C - clisi) / (C - 1) if C > 1 else 1.0, "clisi_raw": clisi,
           "nmi": best[1], "ari": best[2], "resolution": best[0], "clusters": best[3],
           "celltype_asw": (float(sil) + 1) / 2}
    bm = [res[k] for k in ("ilisi", "batch_asw", "graph_conn") if res[k] is not None]
    res["batch"] = float(np.mean(bm))
    res["bio"] = float(np.mean([res[k] for k in ("knn", "clisi", "nmi", "ari", "celltype_asw")]))
    res["overall"] = 0.4 * res["batch"] + 0.6 * res["bio"]
    print(json.dumps(res))


if __name__ == "__main__":
    sys.exit(main())
