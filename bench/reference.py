#!/usr/bin/python3
"""PyTorch reference for the nbsphere benchmark: the scVI default model as scvi-tools runs it.

Encoder  log1p(x) -> Linear(G,128) -> BatchNorm -> ReLU -> Dropout(0.1) -> (mu, logvar) of a 10-d
Gaussian; decoder z -> Linear(10,128) -> BatchNorm -> ReLU -> Dropout(0.1) -> Linear(128,G) ->
softmax, times the observed library size; NB with per-gene inverse dispersion theta = exp(px_r).
Loss = -log_nb_positive + kl_weight * KL, kl_weight linear from 0 to 1 over the warm-up epochs.
Adam lr 1e-3 (eps 0.01, weight decay 1e-6 as scvi's TrainingPlan), batch 128, 90/10 split.

With --batch-key (and --covariates, the labels table or .h5ad holding that column) the model is
scVI's with a batch as scvi-tools sets it up (setup_anndata(batch_key=...), SCVI defaults): the
batch one-hot is concatenated to z at the input of the decoder's hidden layer (FCLayers with
inject_covariates; with one hidden layer deep injection adds nothing more), not into the encoder
(encode_covariates=False) nor the output layer, and the dispersion stays per gene.

Batching: no DataLoader. Rows of a scipy CSR matrix are gathered per shuffled batch and densified
(scvi's AnnDataLoader does the same gather + densify, with Python overhead per batch on top), so
this is if anything slightly faster than scvi-tools itself.

Prints one JSON line: sec_per_epoch (median after one warm-up epoch), peak_rss_mb, val_elbo
(mean per cell, after the fixed number of epochs, full KL weight as scvi's reported ELBO), the
mean training loss of the first and last epochs, and the wall time.

Without --epochs it trains as long as scvi-tools' SCVI.train() does by default
(scvi.model.base._training_mixin get_max_epochs_heuristic): min(round(20000 / cells * 400), 400)
epochs, with the KL warm-up of 400 epochs unchanged (so on fewer than 20,000 cells the KL weight
stays below 1, as in scvi-tools). --embedding writes the posterior means of all cells (eval
mode: no dropout, batch-norm running statistics) in the input's barcode order.
"""
import argparse, json, os, resource, statistics, sys, time

import numpy as np
import scipy.io
import scipy.sparse as sp


def read_lines(path, column=0):
    import gzip
    with (gzip.open if path.endswith(".gz") else open)(path, "rt") as fh:
        return [l.rstrip("\n").split("\t")[column] for l in fh if l.strip()]


def load(path, genes_file=None):
    """Counts as a cells x genes CSR matrix, with the barcodes (cell names) in file order."""
    if os.path.isdir(path):  # 10x folder: genes x cells
        files = os.listdir(path)
        mtx = [f for f in files if f.startswith("matrix.mtx")][0]
        X = sp.csr_matrix(scipy.io.mmread(os.path.join(path, mtx))).T.tocsr()
        gfile = [f for f in files if f in ("genes.tsv", "features.tsv", "genes.tsv.gz", "features.tsv.gz")]
        names = read_lines(os.path.join(path, gfile[0])) if gfile else None
        bfile = [f for f in files if f in ("barcodes.tsv", "barcodes.tsv.gz")]
        barcodes = read_lines(os.path.join(path, bfile[0])) if bfile else ["cell%d" % (i + 1) for i in range(X.shape[0])]
    else:
        import h5py
        src = path
        if path.endswith(".gz"):  # h5py reads a gzipped .h5ad from memory (paul15 is 38 MB unpacked)
            import gzip, io
            with gzip.open(path, "rb") as fh:
                src = io.BytesIO(fh.read())
        with h5py.File(src, "r") as f:
            g = f["X"]
            if isinstance(g, h5py.Group):
                shape = tuple(g.attrs.get("shape", g.attrs.get("h5sparse_shape")))
                X = sp.csr_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=shape)
            else:
                X = sp.csr_matrix(g[:])
            dec = lambda a: [n.decode() if isinstance(n, bytes) else str(n) for n in a]
            names = dec(f["var"][f["var"].attrs.get("_index", "_index")][:])
            barcodes = dec(f["obs"][f["obs"].attrs.get("_index", "_index")][:])
    X = X.astype(np.float32)
    if genes_file:
        keep = read_lines(genes_file)  # first column: gene id
        pos = {n: i for i, n in enumerate(names)}
        X = X[:, [pos[k] for k in keep]].tocsr()
    return X, barcodes


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
    ap.add_argument("--epochs", type=int, help="default: scvi-tools' min(round(20000 / cells * 400), 400)")
    ap.add_argument("--warmup-epochs", type=int, default=400, help="KL warm-up length (scvi: 400)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embedding", help="write the posterior means of all cells to this TSV")
    ap.add_argument("--batch-key", help="column of --covariates naming each cell's batch")
    ap.add_argument("--covariates", help="labels TSV (barcode first) or .h5ad whose obs holds --batch-key")
    a = ap.parse_args()
    if bool(a.batch_key) != bool(a.covariates):
        ap.error("--batch-key and --covariates go together")
    wall0 = time.perf_counter()

    import torch
    from torch import nn
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)

    X, barcodes = load(a.data, a.genes)
    n, G = X.shape
    n_batch, batch_codes = 0, None
    if a.batch_key:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from score import read_labels  # the scorer's reader: the same cells, the same columns
        col = read_labels(a.covariates, a.batch_key)
        missing = [b for b in barcodes if col.get(b, "") in ("", "NA", "nan")]
        if missing:
            sys.exit("%s: no %s for %d cells (first: %s)" % (a.covariates, a.batch_key, len(missing), missing[0]))
        cats = sorted(set(col[b] for b in barcodes))
        pos = {c: i for i, c in enumerate(cats)}
        batch_codes = np.array([pos[col[b]] for b in barcodes])
        n_batch = len(cats)
    if a.epochs is None:
        a.epochs = int(min(round(20000 / n * 400), 400))
    perm = rng.permutation(n)
    nval = max(1, n // 10)
    val_idx, tr_idx = perm[:nval], perm[nval:]
    H, L = 128, 10

    def block(i):
        return nn.Sequential(nn.Linear(i, H), nn.BatchNorm1d(H, momentum=0.01, eps=1e-3), nn.ReLU(), nn.Dropout(0.1))

    enc, dec = block(G), block(L + n_batch)
    enc_mu, enc_lv, dec_out = nn.Linear(H, L), nn.Linear(H, L), nn.Linear(H, G)
    px_r = nn.Parameter(torch.randn(G))
    mods = nn.ModuleList([enc, dec, enc_mu, enc_lv, dec_out])
    params = list(mods.parameters()) + [px_r]
    opt = torch.optim.Adam(params, lr=1e-3, eps=0.01, weight_decay=1e-6)

    onehot = torch.eye(n_batch) if n_batch else None

    def loss_fn(rows):
        xb = dense(rows)
        lib = xb.sum(1, keepdim=True)
        h = enc(torch.log1p(xb))
        mu, lv = enc_mu(h), enc_lv(h)
        var = torch.exp(lv) + 1e-4
        z = mu + var.sqrt() * torch.randn_like(mu)
        zb = torch.cat([z, onehot[batch_codes[rows]]], dim=1) if n_batch else z
        rho = torch.softmax(dec_out(dec(zb)), dim=-1)
        rec = -log_nb_positive(xb, lib * rho, torch.exp(px_r)).sum(-1)
        kl = 0.5 * (var + mu * mu - 1.0 - torch.log(var)).sum(-1)
        return rec, kl

    def dense(rows):
        return torch.from_numpy(X[rows].toarray())

    times, losses = [], []
    for ep in range(a.epochs):
        kl_w = min(1.0, ep / a.warmup_epochs) if a.warmup_epochs > 0 else 1.0
        mods.train()
        t0 = time.perf_counter()
        order = rng.permutation(tr_idx)
        tot_loss, cnt_loss = 0.0, 0
        for s in range(0, len(order), a.batch):
            rows = order[s:s + a.batch]
            if len(rows) < 3:  # scvi drops tiny last batches (BatchNorm needs >1)
                continue
            rec, kl = loss_fn(rows)
            loss = (rec + kl_w * kl).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot_loss += float(loss) * len(rows)
            cnt_loss += len(rows)
        times.append(time.perf_counter() - t0)
        losses.append(tot_loss / cnt_loss)

    mods.eval()
    tot, cnt = 0.0, 0
    with torch.no_grad():
        for s in range(0, nval, 1024):
            rec, kl = loss_fn(val_idx[s:s + 1024])
            tot += float((rec + kl).sum())
            cnt += rec.shape[0]
        if a.embedding:  # posterior means in input order, as nbsphere's embedding.tsv
            with open(a.embedding, "w") as fh:
                fh.write("barcode\t" + "\t".join("dim%d" % (j + 1) for j in range(L)) + "\n")
                for s in range(0, n, 1024):
                    mu = enc_mu(enc(torch.log1p(dense(np.arange(s, min(n, s + 1024)))))).numpy()
                    for b, row in zip(barcodes[s:s + 1024], mu):
                        fh.write(b + "\t" + "\t".join("%.6g" % v for v in row) + "\n")
    steady = times[1:] if len(times) > 1 else times
    print(json.dumps({
        "system": "pytorch-reference", "cells": n, "genes": G, "threads": a.threads,
        "epochs": a.epochs, "sec_per_epoch": statistics.median(steady),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "val_elbo": -tot / cnt, "train_loss_first": losses[0], "train_loss_last": losses[-1],
        "warmup_epochs": a.warmup_epochs, "batch_key": a.batch_key or "", "n_batch": n_batch, "seconds": time.perf_counter() - wall0, "torch": torch.__version__, "batching": "CSR row gather, no DataLoader",
    }))


if __name__ == "__main__":
    sys.exit(main())
