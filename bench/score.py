#!/usr/bin/python3
"""The one scorer of bench/quality.sh: every system's embedding is scored here the same way.

  score.py EMBEDDING.tsv LABELS COLUMN [--metric auto|euclidean|cosine] [--seed 0]

EMBEDDING.tsv: barcode, then one column per dimension (nbsphere's embedding.tsv, the reference's
--embedding, pca.py's output); a `kappa` column (nbsphere on the sphere) is dropped and makes
--metric auto pick cosine, otherwise Euclidean. LABELS: a TSV with a header whose first column is
the barcode, or an .h5ad[.gz] whose obs holds COLUMN. Cells are matched by barcode.

Prints one JSON line:
  knn         15-NN label accuracy, 5-fold cross-validation repeated 5 times (RepeatedKFold,
              seeded with --seed), mean over the 25 folds; uniform votes, as nbsphere's own figure.
              The repeats take out most of the fold split's noise (on 300 cells one 5-fold split
              alone moves the accuracy by about 0.01); knn_first_split is the first repeat alone
  nmi, ari    Leiden clusters (igraph community_leiden, modularity, resolution 1, run to
              convergence, Python's RNG seeded) of the 15-NN graph against the labels; the graph
              is the unweighted union of the 15-NN lists (edge i-j when either is among the
              other's 15 nearest neighbours)
  silhouette  sklearn silhouette_score of the labels, same metric (on a seeded 20,000-cell
              sample when there are more cells: the score is quadratic in the cells)
"""
import argparse, json, random, sys

import numpy as np

K, FOLDS, REPEATS, SIL_MAX = 15, 5, 5, 20000


def read_embedding(path):
    with open(path) as fh:
        head = fh.readline().rstrip("\n").split("\t")
        rows = [l.rstrip("\n").split("\t") for l in fh if l.strip()]
    keep = [j for j, h in enumerate(head) if j > 0 and h != "kappa" and not h.startswith("var")]
    X = np.array([[float(r[j]) for j in keep] for r in rows], dtype=np.float64)
    return [r[0] for r in rows], X, "kappa" in head


def read_labels(path, column):
    if ".h5ad" in path:  # obs column: categorical (codes + categories) or plain strings
        import h5py, gzip, io
        src = io.BytesIO(gzip.open(path, "rb").read()) if path.endswith(".gz") else path
        with h5py.File(src, "r") as f:
            obs = f["obs"]
            dec = lambda a: [v.decode() if isinstance(v, bytes) else str(v) for v in a]
            names = dec(obs[obs.attrs.get("_index", "_index")][:])
            col = obs[column]
            if isinstance(col, h5py.Group):
                cats, codes = dec(col["categories"][:]), col["codes"][:]
                vals = [cats[c] if c >= 0 else "" for c in codes]
            else:
                vals = dec(col[:])
        return dict(zip(names, vals))
    with open(path) as fh:
        head = fh.readline().rstrip("\n").split("\t")
        j = head.index(column)
        return {r[0]: r[j] for r in (l.rstrip("\n").split("\t") for l in fh if l.strip())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("embedding")
    ap.add_argument("labels")
    ap.add_argument("column")
    ap.add_argument("--metric", default="auto", choices=["auto", "euclidean", "cosine"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    from sklearn.model_selection import RepeatedKFold
    from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score
    import igraph

    barcodes, X, sphere = read_embedding(a.embedding)
    metric = a.metric if a.metric != "auto" else ("cosine" if sphere else "euclidean")
    lab = read_labels(a.labels, a.column)
    # unlabelled cells (no entry, empty or NA) are left out of every score
    keep = [i for i, b in enumerate(barcodes) if lab.get(b, "") not in ("", "NA", "nan")]
    X, y = X[keep], np.array([lab[barcodes[i]] for i in keep])
    n = len(y)
    # brute force: exact neighbours for cosine too (trees do not support it)
    algo = "brute" if metric == "cosine" else "auto"

    accs = []
    for tr, te in RepeatedKFold(n_splits=FOLDS, n_repeats=REPEATS, random_state=a.seed).split(X):
        clf = KNeighborsClassifier(n_neighbors=K, metric=metric, algorithm=algo).fit(X[tr], y[tr])
        accs.append(float((clf.predict(X[te]) == y[te]).mean()))

    nn = NearestNeighbors(n_neighbors=K + 1, metric=metric, algorithm=algo).fit(X)
    idx = nn.kneighbors(X, return_distance=False)
    edges = {(min(i, j), max(i, j)) for i in range(n) for j in idx[i] if j != i}
    g = igraph.Graph(n=n, edges=sorted(edges))
    random.seed(a.seed)  # python-igraph draws from Python's random module
    clusters = np.array(g.community_leiden(objective_function="modularity", resolution_parameter=1.0,
                                           n_iterations=-1).membership)

    sil = silhouette_score(X, y, metric=metric, sample_size=SIL_MAX if n > SIL_MAX else None,
                           random_state=a.seed)
    print(json.dumps({"cells": n, "dims": X.shape[1], "metric": metric, "classes": len(set(y)),
                      "knn": float(np.mean(accs)), "knn_first_split": float(np.mean(accs[:FOLDS])),
                      "knn_folds": accs,
                      "nmi": float(normalized_mutual_info_score(y, clusters)),
                      "ari": float(adjusted_rand_score(y, clusters)),
                      "clusters": int(clusters.max() + 1), "silhouette": float(sil)}))


if __name__ == "__main__":
    sys.exit(main())
