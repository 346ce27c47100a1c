/* The trajectory stage: from an embedding to what scanpy's sc.pp.neighbors(method="gauss"),
 * sc.tl.leiden, sc.tl.paga, sc.tl.diffmap and sc.tl.dpt compute, and a force-directed layout for
 * the report. The graphs are public structs (graph.h) so that other diagnostics can reuse them.
 *
 * k follows scanpy's n_neighbors: the cell itself counts, so each cell has k - 1 neighbours.
 * The k-NN search is graph.c's nbs_knn_find: exact (blocked BLAS products) up to
 * neighbors.exact_max_cells cells, FLANN's hierarchical k-means tree above (neighbors.method). */
#ifndef NBSPHERE_TRAJECTORY_H
#define NBSPHERE_TRAJECTORY_H

#include <stdint.h>

#include "nbsphere/config.h"
#include "nbsphere/error.h"
#include "nbsphere/evaluate.h"
#include "nbsphere/graph.h"

/* DPT gives eigenvalues at or above this their plain (unweighted) term, as scanpy does (its
 * float32 eigenvalues cannot tell them from 1). */
#define NBS_DPT_STATIONARY 0.9994

/* A pair of groups (Leiden clusters or labels) joined by embedding edges, a <= b. */
typedef struct {
    int a, b;
    int64_t shortcuts;      /* directed embedding edges between a and b that are shortcuts */
    int64_t edges;          /* all directed embedding edges between a and b */
} nbs_wrap_pair;

/* The wrap-around diagnostic (nbs_traj_wraparound): which neighbours in the embedding are far
 * apart in the data. An embedding edge i -> j is a shortcut when j is more than `hops` steps
 * from i in the reference graph (the same k-NN graph built on PCA of the counts, symmetrised)
 * or not reachable at all. */
typedef struct {
    int computed;           /* 0 when trajectory.shortcut_hops is 0 */
    int hops;               /* the threshold H in reference-graph steps */
    double min_share;       /* a pair is named when at least this share of its edges are shortcuts */
    int ref_dims;           /* principal components of the reference space */
    int64_t n_edges, n_shortcuts;
    double fraction;        /* n_shortcuts / n_edges */
    int32_t *ref_hops;      /* [knn nnz] reference steps of each embedding edge, -1 beyond hops */
    double *score;          /* [n] shortcut_score: share of the cell's embedding edges that are shortcuts */
    nbs_wrap_pair *pairs;   /* [n_pairs] Leiden cluster pairs with shortcuts, most shortcuts first */
    int n_pairs;
    nbs_wrap_pair *label_pairs; /* [n_label_pairs] the same by label (codes into label_names), or NULL */
    int n_label_pairs;
    char **label_names;     /* [n_labels] pointers into the caller's labels */
    int n_labels;
    int wraps;              /* some pair is named */
    char verdict[1024];     /* "branches A and B meet in the embedding but not in the data ..." or
                               "no wrap-around ..." */
} nbs_wraparound;

/* A pair with at least this many shortcut edges can be named (fewer are noise of single cells). */
#define NBS_WRAP_MIN_EDGES 10

typedef struct {
    int64_t n;
    int k;                  /* scanpy's n_neighbors */
    nbs_metric metric;
    nbs_graph knn;          /* directed: each cell's k - 1 nearest others, nearest first, distances */
    nbs_neighbors_config neighbors; /* how knn was searched (the reference graph is searched alike) */
    uint64_t seed;
    nbs_knn_info knn_info;  /* what the search of knn did */
    nbs_knn_info ref_knn_info; /* and of the wrap-around diagnostic's reference graph */
    nbs_graph kernel;       /* symmetric gauss kernel on the k-NN edges (obsp['connectivities']) */
    int64_t n_sigma_floored; /* cells whose k-th neighbour is a duplicate: sigma floored (see .c) */
    int32_t *cluster;       /* [n] Leiden communities 0..n_clusters-1, largest first */
    int n_clusters;
    double resolution;
    double *paga;           /* [n_clusters x n_clusters] PAGA v1.2 connectivities, diagonal 0 */
    int n_dcs;
    double *diffmap;        /* [n x n_dcs] eigenvectors of the symmetric transition matrix (X_diffmap) */
    double *evals;          /* [n_dcs] their eigenvalues, decreasing */
    int32_t *component;     /* [n] connected components of the kernel (nbs_graph_components) */
    int64_t n_components;
    int64_t root;           /* row of the root cell */
    char root_rule[512];    /* how it was chosen, for the report */
    double *pseudotime;     /* [n] DPT distance to the root over its largest finite value; NaN off
                               the root's component */
    int64_t n_unreached;    /* cells with NaN pseudotime */
    double *layout;         /* [n x 2] force-directed layout of the kernel graph */
    nbs_wraparound wrap;    /* the wrap-around diagnostic, when a reference space was given */
} nbs_trajectory;

void nbs_trajectory_free(nbs_trajectory *t);

/* The whole stage on the n rows of z [n x d]. barcodes [n] name the cells (for trajectory.root),
 * labels [n] (may be NULL; entries NULL = no label) are those of label_column (for
 * trajectory.root_label and messages). Randomness (Leiden, the eigensolver's start, the layout)
 * comes from seed through the NBS_STREAM_CLUSTERS, _DIFFMAP and _LAYOUT streams, and the
 * approximate k-NN search's (nb, NULL: exact) through NBS_STREAM_KNN. */
int nbs_trajectory_compute(const float *z, int64_t n, int d, nbs_metric metric, const nbs_trajectory_config *c,
                           const nbs_neighbors_config *nb, char *const *barcodes, char *const *labels, const char *label_column, uint64_t seed,
                           nbs_trajectory *t, nbs_error *err);

/* The wrap-around diagnostic on a computed trajectory t: the k-NN graph (t->k) of the reference
 * space ref [n x ref_dims] (Euclidean; the stage uses PCA of log1p(CP10k)), then for every edge
 * of t->knn its hop count in that graph by a breadth-first search from each cell, stopped at
 * c->shortcut_hops steps or when all its embedding neighbours are found. Pairs are counted by
 * t->cluster and, when labels [n] are given (NULL entries: no label), by label; the verdict names
 * the pairs with at least NBS_WRAP_MIN_EDGES shortcut edges making up at least
 * c->wrap_share of the pair's embedding edges, by label when there are labels. Fills t->wrap. */
int nbs_traj_wraparound(nbs_trajectory *t, const float *ref, int ref_dims, const nbs_trajectory_config *c,
                        char *const *labels, nbs_error *err);

/* Hop counts in the undirected graph g of the edges of e (same vertices): hops[e] for each edge
 * position of e, -1 when more than max_hops steps apart or unreachable. */
int nbs_traj_edge_hops(const nbs_graph *g, const nbs_graph *e, int max_hops, int32_t *hops, nbs_error *err);

/* ---- the steps, for tests and reuse ---- */

/* scanpy's gauss kernel (Haghverdi et al. 2016; scanpy's dense-distance branch): sigma_i^2 =
 * d_i,k^2 / 4 with d_i,k the distance to cell i's last neighbour in knn, and for every k-NN edge
 * in either direction W_ij = sqrt(2 s_i s_j / (s_i^2 + s_j^2)) exp(-d_ij^2 / (s_i^2 + s_j^2)).
 * A cell whose last neighbour is at distance 0 gets sigma^2 of 1e-3 the mean of the others (all
 * others 0: 1); *n_floored counts them. out: symmetric, rows ascending, no self loops. */
int nbs_traj_gauss_kernel(const nbs_graph *knn, nbs_graph *out, int64_t *n_floored, nbs_error *err);

/* The diffusion map as scanpy's diffmap: q_i = sum_j W_ij, K = W_ij / (q_i q_j), z_i = sqrt(sum_j
 * K_ij), T = K_ij / (z_i z_j); evecs [n x n_dcs] and evals [n_dcs] are T's n_dcs eigenpairs of
 * largest magnitude in decreasing order (scipy's eigsh(which="LM") reversed), each vector of unit
 * length with its largest-magnitude entry positive. Up to 500 cells T is solved dense
 * (gsl_eigen_symmv); above, by thick-restarted Lanczos with full reorthogonalisation, the
 * converged pairs (residual below 1e-9, T's spectrum being [-1, 1]) locked, and a further run
 * from a new start vector collecting any pair missed above the smallest held (repeated
 * eigenvalues, as with several components). Needs 1 <= n_dcs <= 100, n_dcs < n. */
int nbs_traj_diffmap(const nbs_graph *kernel, int n_dcs, uint64_t seed, double *evecs, double *evals, nbs_error *err);

/* scanpy's DPT distance from the root: sqrt(sum_j w_j (v_root,j - v_i,j)^2), w_j = (l_j / (1 - l_j))^2
 * for l_j < NBS_DPT_STATIONARY and 1 otherwise, over the n_dcs columns of evecs [n x n_dcs]; cells
 * of another component than the root's (component may be NULL: one component) get NaN, the
 * others are divided by the largest value. Returns the number of NaN cells. */
int64_t nbs_traj_dpt(const double *evecs, const double *evals, int64_t n, int n_dcs, const int32_t *component,
                     int64_t root, double *pseudotime);

/* scanpy's PAGA connectivities (model v1.2, Wolf et al. 2019) from the directed k-NN graph and
 * clusters [n] in 0..n_clusters-1: with n_c cells and e_c edges leaving the cells of c (to any
 * cell), and E_ab the edges between a and b in either direction, conn_ab = min(1, E_ab /
 * ((e_a n_b + e_b n_a) / (n - 1))). out [n_clusters x n_clusters], diagonal 0. */
int nbs_traj_paga(const nbs_graph *knn, const int32_t *cluster, int n_clusters, double *out, nbs_error *err);

#endif
