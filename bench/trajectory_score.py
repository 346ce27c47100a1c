#!/usr/bin/python3
"""Scores the trajectory stage's outputs for bench/trajectory.sh: the median diffusion pseudotime
of each label along known orders (Spearman of the medians with the order), the cells without
pseudotime, and the wrap-around verdict.

Usage: trajectory_score.py NAME DIR LABEL_COLUMN ORDER [ORDER ...]
  DIR: an output folder with embedding.h5ad and collapse_report.json or trajectory.json;
  ORDER: a comma-separated list of labels, earliest first (e.g. 7MEP,6Ery,5Ery).
Prints one tab-separated row per order: name, order, medians, Spearman, and the verdict.
"""
import json, os, sys

import h5py
import numpy as np
from scipy.stats import spearmanr


def obs_column(f, name):
    g = f["obs"][name]
    if isinstance(g, h5py.Group):  # anndata >= 0.8 categorical
        cats = [c.decode() if isinstance(c, bytes) else str(c) for c in g["categories"][:]]
        return np.array([cats[c] if c >= 0 else "" for c in g["codes"][:]])
    v = g[:]
    if "categories" in g.attrs:  # anndata 0.7: codes with a reference to __categories
        cats = [c.decode() if isinstance(c, bytes) else str(c) for c in f[g.attrs["categories"]][:]]
        return np.array([cats[c] if c >= 0 else "" for c in v])
    return np.array([x.decode() if isinstance(x, bytes) else str(x) for x in v])


def main():
    name, d, column, orders = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    with h5py.File(os.path.join(d, "embedding.h5ad"), "r") as f:
        pt = f["obs/dpt_pseudotime"][:]
        labels = obs_column(f, column)
    rep = os.path.join(d, "collapse_report.json")
    if not os.path.exists(rep):
        rep = os.path.join(d, "trajectory.json")
    with open(rep) as fh:
        t = json.load(fh)["trajectory"]
    w = t.get("wraparound", {})
    for order in orders:
        labs = order.split(",")
        med = [float(np.nanmedian(pt[labels == l])) for l in labs]
        rho = spearmanr(np.arange(len(labs)), med).correlation
        print("\t".join([name, order, " ".join(f"{m:.2f}" for m in med), f"{rho:.2f}",
                         str(int(np.isnan(pt).sum())), f"{100 * w.get('fraction', float('nan')):.2f}",
                         w.get("verdict", "")]))


if __name__ == "__main__":
    main()
