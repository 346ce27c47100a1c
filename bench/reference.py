#!/usr/bin/python3
"""PyTorch reference for the nbsphere benchmark: the scVI default model as scvi-tools runs it.

Encoder  log1p(x) -> Linear(G,128) -> BatchNorm -> ReLU -> Dropout(0.1) -> (mu, logvar) of a 10-d
Gaussian; decoder z -> Linear(10,128) -> BatchNorm -> ReLU -> Dropout(0.1) -> Linear(128,G) ->
softmax, times the observed library size; NB with per-gene inverse dispersion theta = exp(px_r).
Loss = -log_nb_positive + kl_weight * KL, kl_weight linear from 0 to 1 over the warm-up epochs.
Adam lr 1e-3 (eps 0.01, weight decay 1e-6 as scvi's TrainingPlan), batch 128, 90/10 split.

Batching: no DataLoader. Rows of a scipy CSR matrix are gathered per shuffled batch and densified
(scvi's AnnDataLoader does the same gather + densify, with Python overhead per batch on top), so
this is if anything slightly faster than scvi-tools itself.

Prints one JSON line: sec_per_epoch (median after one warm-up epoch), peak_rss_mb, val_elbo
(mean per cell, after the fixed number of epochs, full KL weight as scvi's reported ELBO).
"""
import argparse, json, os, resource, statistics, sys, time

import numpy as np
import scipy.io
import scipy.sparse as sp


def load(path, genes_file=None):
    if os.path.isdir(path):
        mtx = [f for f in os.listdir(path) if f.startswith("matrix.mtx")][0]
        X = sp.csr_matrix(scipy.io.mmread(os.path.join(path, mtx))).T.tocsr()  # 10x: genes x cells
        gfile = [f for f in os.listdir(path) if f in ("genes.tsv", "features.tsv", "genes.tsv.gz", "features.tsv.gz")]
        names = None
        if gfile:
            import gzip
            op = gzip.open if gfile[0].endswith(".gz") else open
            with op(os.path.join(path, gfile[0]), "rt") as fh:
                names = [l.rstrip("\n").split("\t")[0] for l in fh]
    else:
        import h5py
        with h5py.File(path, "r") as f:
            g = f["X"]
            if isinstance(g, h5py.Group):
                shape = tuple(g.attrs.get("shape", g.attrs.get("h5sparse_shape")))
                X = sp.csr_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=shape)
            else:
                X = sp.csr_matrix(g[:])
            idx = f["var"].attrs.get("_index", "_index")
            names = [n.decode() if isinstance(n, bytes) else n for n in f["var"][idx][:]]
    X = X.astype(np.float32)
    if genes_file:
        with open(genes_file) as fh:
            keep = [l.split("\t")[0].strip() for l in fh if l.strip()]  # first column: gene id
        pos = {n: i for i, n in enumerate(names)}
        X = X[:, [pos[k] for k in keep]].tocsr()
    return X


def log_nb_positive(x, mu, theta, eps=1e-8):
    """scvi.distributions._negative_binomial.log_nb_positive."""
    import torch
    log_theta_mu_eps = torch.log(theta + mu + eps)
    return (theta * (torch.log(theta + eps) - log_theta_mu_eps)
            + x * (torch.log(mu + eps) - log_theta_mu_eps)
            + torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--genes", help="file with the selected gene names, one a line")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--warmup-epochs", type=int, default=400, help="KL warm-up length (scvi: 400)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import torch
    from torch import nn
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)

    X = load(a.data, a.genes)
    n, G = X.shape
    perm = rng.permutation(n)
    nval = max(1, n // 10)
    val_idx, tr_idx = perm[:nval], perm[nval:]
    H, L = 128, 10

    def block(i):
        return nn.Sequential(nn.Linear(i, H), nn.BatchNorm1d(H, momentum=0.01, eps=1e-3), nn.ReLU(), nn.Dropout(0.1))

    enc, dec = block(G), block(L)
    enc_mu, enc_lv, dec_out = nn.Linear(H, L), nn.Linear(H, L), nn.Linear(H, G)
    px_r = nn.Parameter(torch.randn(G))
    mods = nn.ModuleList([enc, dec, enc_mu, enc_lv, dec_out])
    params = list(mods.parameters()) + [px_r]
    opt = torch.optim.Adam(params, lr=1e-3, eps=0.01, weight_decay=1e-6)

    def loss_fn(xb, kl_w):
        lib = xb.sum(1, keepdim=True)
        h = enc(torch.log1p(xb))
        mu, lv = enc_mu(h), enc_lv(h)
        var = torch.exp(lv) + 1e-4
        z = mu + var.sqrt() * torch.randn_like(mu)
        rho = torch.softmax(dec_out(dec(z)), dim=-1)
        rec = -log_nb_positive(xb, lib * rho, torch.exp(px_r)).sum(-1)
        kl = 0.5 * (var + mu * mu - 1.0 - torch.log(var)).sum(-1)
        return rec, kl

    def dense(rows):
        return torch.from_numpy(X[rows].toarray())

    times = []
    for ep in range(a.epochs):
        kl_w = min(1.0, ep / a.warmup_epochs) if a.warmup_epochs > 0 else 1.0
        mods.train()
        t0 = time.perf_counter()
        order = rng.permutation(tr_idx)
        for s in range(0, len(order), a.batch):
            rows = order[s:s + a.batch]
            if len(rows) < 3:  # scvi drops tiny last batches (BatchNorm needs >1)
                continue
            rec, kl = loss_fn(dense(rows), kl_w)
            loss = (rec + kl_w * kl).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)

    mods.eval()
    tot, cnt = 0.0, 0
    with torch.no_grad():
        for s in range(0, nval, 1024):
            rec, kl = loss_fn(dense(val_idx[s:s + 1024]), 1.0)
            tot += float((rec + kl).sum())
            cnt += rec.shape[0]
    steady = times[1:] if len(times) > 1 else times
    print(json.dumps({
        "system": "pytorch-reference", "cells": n, "genes": G, "threads": a.threads,
        "epochs": a.epochs, "sec_per_epoch": statistics.median(steady),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "val_elbo": -tot / cnt, "torch": torch.__version__, "batching": "CSR row gather, no DataLoader",
    }))


if __name__ == "__main__":
    sys.exit(main())
