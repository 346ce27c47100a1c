#!/usr/bin/python3
"""PCA baseline for bench/quality.sh: the top principal components of log1p(CP10k) of the given
genes (CP10k over those genes, genes centred, not scaled), as nbsphere's own PCA comparison.

Exact PCA with numpy: the gene x gene covariance is built from the sparse matrix and
eigen-decomposed (numpy.linalg.eigh), so nothing cells x genes is ever dense (100k cells x 2000
genes would be 800 MB). Writes barcode, pc1..pcK; one file per --components value.
Usage: pca.py DATA --genes genes.tsv --components 10 50 --out PREFIX  (writes PREFIX10.tsv ...)
"""
import argparse, os, sys, time

import numpy as np
import scipy.sparse as sp

sys.dont_write_bytecode = True  # no __pycache__ left in bench/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference import load  # the same reader, so the same cells and genes as the scVI reference


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--genes", required=True)
    ap.add_argument("--components", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--out", required=True, help="output prefix")
    a = ap.parse_args()
    t0 = time.perf_counter()
    X, barcodes = load(a.data, a.genes)
    lib = np.asarray(X.sum(1)).ravel()
    scale = np.divide(1e4, lib, out=np.zeros_like(lib), where=lib > 0)  # empty cells stay at 0
    Y = sp.diags(scale) @ X.astype(np.float64)
    Y.data = np.log1p(Y.data)
    n = Y.shape[0]
    mu = np.asarray(Y.mean(0)).ravel()
    cov = (Y.T @ Y).toarray() / n - np.outer(mu, mu)
    w, V = np.linalg.eigh(cov)
    V = V[:, ::-1]  # largest variance first
    load_s = time.perf_counter() - t0
    for k in a.components:
        t1 = time.perf_counter()
        Vk = V[:, :k] * np.sign(V[np.abs(V[:, :k]).argmax(0), range(k)])  # fixed sign per component
        Z = Y @ Vk - mu @ Vk
        with open("%s%d.tsv" % (a.out, k), "w") as fh:
            fh.write("barcode\t" + "\t".join("pc%d" % (j + 1) for j in range(k)) + "\n")
            for b, row in zip(barcodes, Z):
                fh.write(b + "\t" + "\t".join("%.6g" % v for v in row) + "\n")
        # seconds: the shared load + covariance + eigen-decomposition, plus this projection
        print("pca%d seconds %.2f" % (k, load_s + time.perf_counter() - t1))


if __name__ == "__main__":
    sys.exit(main())
