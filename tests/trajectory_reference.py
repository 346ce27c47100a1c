#!/usr/bin/python3
"""scanpy's neighbors(method="gauss", knn=True) -> diffmap -> dpt written out with numpy/scipy
(scanpy 1.9's formulas: neighbors/__init__.py compute_connectivities gauss with dense distances,
tools/_dpt.py), for tests/test_trajectory.c.

  /usr/bin/python3 tests/trajectory_reference.py IN.tsv K N_DCS ROOT OUT.tsv
IN.tsv: one cell per line, tab-separated coordinates (Euclidean metric). ROOT: 0-based row.
OUT.tsv: line 1 the n_dcs eigenvalues, then per cell its pseudotime and |DC1| .. |DC n_dcs-1|.
Without arguments it prints the constants of the test's tiny kernel example."""
import sys

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import eigsh


def gauss(x, k):
    n = x.shape[0]
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]  # the cell itself first
    dsq = np.take_along_axis(d2, order, 1)
    indices, dsq = order[:, 1:], dsq[:, 1:]
    sig2 = dsq[:, -1] / 4
    sig = np.sqrt(sig2)
    w = np.sqrt(2 * np.multiply.outer(sig, sig) / np.add.outer(sig2, sig2)) * np.exp(-d2 / np.add.outer(sig2, sig2))
    mask = np.zeros((n, n), dtype=bool)
    for i, row in enumerate(indices):
        mask[i, row] = True
        mask[row, i] = True
    w[~mask] = 0
    return w


def diffmap(w, n_dcs):
    q = w.sum(0)
    k = w / np.outer(q, q)
    z = np.sqrt(k.sum(0))
    t = k / np.outer(z, z)
    evals, evecs = eigsh(csr_matrix(t), k=n_dcs, which="LM", ncv=min(t.shape[0] - 1, max(2 * n_dcs + 1, 20)), tol=1e-12)
    return evals[::-1], evecs[:, ::-1]


def dpt(evals, evecs, w, root):
    _, comp = connected_components(csr_matrix(w))
    row = sum((evals[j] / (1 - evals[j]) * (evecs[root, j] - evecs[:, j])) ** 2
              for j in range(evals.size) if evals[j] < 0.9994)
    row = row + sum((evecs[root, j] - evecs[:, j]) ** 2 for j in range(evals.size) if evals[j] >= 0.9994)
    row = np.sqrt(row)
    row[comp != comp[root]] = np.inf
    return row / row[np.isfinite(row)].max()


if len(sys.argv) == 1:
    # the tiny example of test_trajectory.c: 7 points on a line and one off it, k = 3
    x = np.array([[0, 0], [1, 0], [2.5, 0], [3, 0], [5, 0], [5.5, 0], [6, 0], [3, 2]], dtype=float)
    w = gauss(x, 3)
    for i in range(len(x)):
        print(i, " ".join(f"{j}:{w[i, j]:.9g}" for j in np.flatnonzero(w[i])))
    sys.exit(0)

x = np.loadtxt(sys.argv[1], delimiter="\t", ndmin=2)
k, n_dcs, root = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
w = gauss(x, k)
evals, evecs = diffmap(w, n_dcs)
pt = dpt(evals, evecs, w, root)
with open(sys.argv[5], "w") as f:
    f.write("\t".join(f"{v:.12g}" for v in evals) + "\n")
    for i in range(x.shape[0]):
        f.write("\t".join([f"{pt[i]:.12g}"] + [f"{abs(evecs[i, j]):.12g}" for j in range(1, n_dcs)]) + "\n")
