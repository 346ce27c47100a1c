#!/usr/bin/python3
"""Expected values for tests/test_graph.c, from scikit-learn, scipy, numpy and python-igraph.
The data are the test's: cell i (0..47), label i % 3, batch (i // 3) % 2, coordinates
x[i, j] = ((i * 37 + j * 11) % 17) / 17 + 2 * label * (j == label) + 0.3 * batch * (j == 2),
rounded to float32. Run: /usr/bin/python3 tests/integrate_reference.py"""
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.metrics import silhouette_samples, normalized_mutual_info_score, adjusted_rand_score
from sklearn.neighbors import NearestNeighbors

n, d = 48, 3
lab = np.arange(n) % 3
bat = (np.arange(n) // 3) % 2
x = np.array([[((i * 37 + j * 11) % 17) / 17 + 2 * lab[i] * (j == lab[i]) + 0.3 * bat[i] * (j == 2)
               for j in range(d)] for i in range(n)], dtype=np.float32).astype(np.float64)

nn = NearestNeighbors(n_neighbors=6).fit(x)
dist, idx = nn.kneighbors(x)
print("knn of cell 0 (5 others):", idx[0, 1:].tolist(), "distances", [f"{v:.9g}" for v in dist[0, 1:]])

print("label ASW (silhouette + 1) / 2:", f"{(silhouette_samples(x, lab).mean() + 1) / 2:.9g}")
# scib silhouette_batch: per label, 1 - |silhouette of batch|, mean per label, then over labels
per = [np.mean(1 - np.abs(silhouette_samples(x[lab == l], bat[lab == l]))) for l in range(3)]
print("batch ASW:", f"{np.mean(per):.9g}")

a = np.array([0, 0, 1, 1, 2, 2, 2, 0, 1, 3])
b = np.array([1, 1, 0, 0, 0, 2, 2, 1, 0, 0])
print("NMI:", f"{normalized_mutual_info_score(a, b):.9g}", "ARI:", f"{adjusted_rand_score(a, b):.9g}")
tab = np.zeros((4, 3))
for u, v in zip(a, b):
    tab[u, v] += 1
e = tab.sum(1, keepdims=True) * tab.sum(0, keepdims=True) / tab.sum()
print("Cramer's V:", f"{np.sqrt(((tab - e) ** 2 / e).sum() / (tab.sum() * 2)):.9g}")

def lisi(dist, idx, codes, perplexity):
    """harmony's compute_simpson (tol 1e-5, 50 steps), written from its definition."""
    out = []
    for D, I in zip(dist, idx):
        beta, lo, hi, logu = 1.0, -np.inf, np.inf, np.log(perplexity)
        def hb(beta):
            P = np.exp(-D * beta); s = P.sum()
            return np.log(s) + beta * (D * P).sum() / s, P / s
        H, P = hb(beta)
        for _ in range(50):
            if abs(H - logu) < 1e-5: break
            if H > logu:
                lo = beta; beta = beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi = beta; beta = beta / 2 if lo == -np.inf else (beta + lo) / 2
            H, P = hb(beta)
        share = np.bincount(codes[I], weights=P, minlength=codes.max() + 1)
        out.append(1 / (share ** 2).sum())
    return np.array(out)

k = 15
dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
il = lisi(dist[:, 1:], idx[:, 1:], bat, k / 3)
cl = lisi(dist[:, 1:], idx[:, 1:], lab, k / 3)
print("LISI k=15 perplexity 5: cell 0 batch", f"{il[0]:.9g}", "label", f"{cl[0]:.9g}",
      "median batch", f"{np.median(il):.9g}", "median label", f"{np.median(cl):.9g}")

# components of a 6-vertex graph with edges 0-1, 1-2, 3-4 (5 alone), and restricted to {0, 2, 3, 4}
g = csr_matrix((np.ones(3), ([0, 1, 3], [1, 2, 4])), shape=(6, 6))
print("components:", connected_components(g, directed=False)[0])

import igraph as ig
# Leiden, modularity at resolution 1 on three 5-cliques joined in a ring by single edges
edges = [(c * 5 + u, c * 5 + v) for c in range(3) for u in range(5) for v in range(u + 1, 5)]
edges += [(4, 5), (9, 10), (14, 0)]
G = ig.Graph(n=15, edges=edges)
p = G.community_leiden(objective_function="modularity", resolution_parameter=1.0, n_iterations=-1, beta=0.01)
print("leiden membership:", p.membership, "modularity", f"{G.modularity(p.membership):.9g}")

# nbs_integration_metrics on the toy data: LISI with k = min(90, n - 1) = 47, perplexity 47 / 3
k = 47
dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
il = lisi(dist[:, 1:], idx[:, 1:], bat, k / 3)
cl = lisi(dist[:, 1:], idx[:, 1:], lab, k / 3)
print("iLISI scaled:", f"{(np.median(il) - 1) / 1:.9g}", "cLISI scaled:", f"{(3 - np.median(cl)) / 2:.9g}")
