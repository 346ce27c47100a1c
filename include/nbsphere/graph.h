/* Neighbour graphs of an embedding: k nearest neighbours (exact by brute force with BLAS, or
 * approximate by FLANN's hierarchical k-means tree above a size, nbs_knn_find), the
 * weighted neighbour graph scanpy's sc.pp.neighbors builds from them (UMAP's fuzzy simplicial
 * set), Leiden communities and connected components (igraph's C library). The integration
 * metrics (integrate.h) and the k-NN label score (evaluate.h) are built on it. */
#ifndef NBSPHERE_GRAPH_H
#define NBSPHERE_GRAPH_H

#include <stdint.h>

#include "nbsphere/config.h"
#include "nbsphere/error.h"
#include "nbsphere/evaluate.h"

/* A graph on n vertices (cells) in CSR form: the edges of vertex i are
 * indices[indptr[i] .. indptr[i+1]) with weights at the same places. */
typedef struct {
    int64_t n;
    int64_t *indptr;  /* [n + 1] */
    int64_t *indices; /* [nnz] */
    double *weights;  /* [nnz] a distance (k-NN graph) or a connectivity in (0, 1] */
} nbs_graph;

void nbs_graph_free(nbs_graph *g);

/* The k nearest rows of ref to each row of query, by Euclidean distance between rows of x
 * [* x d] (row-major; scale rows to unit length first for cosine). ref [n_ref] and query
 * [n_query] are row numbers of x; with skip_self a reference row equal to the query's own row
 * is passed over. nn [n_query x k] gets positions into ref, nearest first (-1 past the end when
 * fewer than k candidates), rank [n_query x k] (may be NULL) |r|^2 - 2 q.r, which orders the
 * candidates as the squared distance does (add |q|^2 for it). Equal distances keep the earlier
 * reference, so results do not depend on the thread count. Products run in blocks of 256
 * queries (one sgemm each) inside an OpenMP loop: call nbs_nn_blas_serial() first. */
int nbs_knn_search(const float *x, int d, const int64_t *ref, int64_t n_ref, const int64_t *query,
                   int64_t n_query, int k, int skip_self, int64_t *nn, float *rank, nbs_error *err);

/* Queries of an approximate search whose exact neighbours are computed too, for its recall. */
#define NBS_KNN_RECALL_QUERIES 1000

/* What a search did, for the log and the report (nbs_knn_describe). */
typedef struct nbs_knn_info {
    nbs_knn_method method;  /* NBS_KNN_EXACT or NBS_KNN_APPROXIMATE: what ran */
    int auto_chosen;        /* the method was auto: chosen by the size of the search */
    int64_t n_ref;          /* cells searched */
    int k, branching;
    int start_checks;       /* approximate: neighbors.checks ... */
    int checks;             /* ... and the checks used, doubled from it until the recall was reached */
    double target_recall;   /* approximate: neighbors.recall */
    int64_t recall_queries; /* approximate: queries also searched exactly (evenly spaced, at most
                               NBS_KNN_RECALL_QUERIES); 0 for exact */
    double recall;          /* their share of the exact k nearest that the search found; 1 for exact */
} nbs_knn_info;

/* The search nb asks for over n_ref cells: NULL or method exact -> exact, approximate ->
 * approximate, auto -> exact up to nb->exact_max_cells cells, approximate above. */
nbs_knn_method nbs_knn_choose(const nbs_neighbors_config *nb, int64_t n_ref);

/* The k nearest neighbours as nbs_knn_search (same arguments, nn and rank alike), by the search
 * nbs_knn_choose picks. The approximate one is FLANN's hierarchical k-means tree (Muja & Lowe
 * 2014: nb->branching children per node, 11 k-means iterations from k-means++ centres), whose
 * k-means++ draws FLANN takes from rand() seeded (srand) with seed's NBS_STREAM_KNN stream, so a
 * seed reproduces it. A query compares `checks` points: nb->checks, doubled while the recall on
 * the NBS_KNN_RECALL_QUERIES evenly spaced queries (searched exactly too) is below nb->recall
 * (the tree needs more checks as cells grow denser), up to the number of reference cells. (Debian's FLANN 1.9.2 seeds its
 * randomized k-d trees from std::random_device instead: they differ from run to run, so they
 * are not used.) Ties there fall as FLANN orders them, and rank is FLANN's squared distance
 * minus |q|^2. info (may be NULL) says what ran and, for the
 * approximate search, its recall against the exact one on evenly spaced queries. Values must
 * be finite (NBS_ERR_INPUT names the row); the approximate search needs more than k (+1 with
 * skip_self) reference rows and fewer than 2^31. */
int nbs_knn_find(const float *x, int d, const int64_t *ref, int64_t n_ref, const int64_t *query, int64_t n_query,
                 int k, int skip_self, const nbs_neighbors_config *nb, uint64_t seed, int64_t *nn, float *rank,
                 nbs_knn_info *info, nbs_error *err);

/* One line for the log and the report: "exact (...)" or "approximate (FLANN ..., recall@k ...)". */
void nbs_knn_describe(const nbs_knn_info *info, char *buf, size_t len);

/* The k-NN graph of the n rows of x [n x d]: each cell's k nearest other cells, nearest first,
 * weights their Euclidean distances (after scaling rows to unit length with NBS_METRIC_COSINE,
 * i.e. chord distances, whose order is the cosine's). The search is nbs_knn_find's with nb and
 * seed (nb NULL: exact); info as there (may be NULL). Needs 1 <= k < n and finite values
 * (NBS_ERR_INPUT names the cell). */
int nbs_graph_knn(const float *x, int64_t n, int d, int k, nbs_metric metric, const nbs_neighbors_config *nb,
                  uint64_t seed, nbs_graph *g, nbs_knn_info *info, nbs_error *err);

/* An undirected weighted edge, a < b. */
typedef struct {
    int64_t a, b;
    double w;
} nbs_graph_edge;

/* The symmetric graph of m undirected edges e (any order, a pair may come twice: once from each
 * end of a k-NN graph): e is sorted by (a, b) in place, a repeated pair combined by the fuzzy
 * union w1 + w2 - w1 w2 (fuzzy_union) or kept once (weights equal from both ends), self-loops
 * dropped; out holds both directions of every edge, each row in ascending vertex order. */
int nbs_graph_symmetric(int64_t n, nbs_graph_edge *e, int64_t m, int fuzzy_union, nbs_graph *out, nbs_error *err);

/* scanpy's connectivities (sc.pp.neighbors, method "umap", after McInnes et al. 2018's
 * fuzzy_simplicial_set) from a k-NN graph: w_ij = exp(-(d_ij - rho_i) / sigma_i) with rho_i the
 * distance to the nearest neighbour and sigma_i such that sum_j w_ij = log2(k + 1) (scanpy counts
 * the cell itself among its n_neighbors = k + 1), then symmetrised as w + w^T - w o w^T. The
 * result has both directions of every edge, rows in ascending vertex order. */
int nbs_graph_connectivities(const nbs_graph *knn, nbs_graph *out, nbs_error *err);

/* Leiden communities (Traag et al. 2019, igraph_community_leiden) of a symmetric weighted graph
 * with the modularity objective at a resolution gamma, as scanpy's sc.tl.leiden
 * (leidenalg's RBConfigurationVertexPartition): Q = sum_ij (w_ij - gamma s_i s_j / 2m)
 * [c_i = c_j], s the vertex strengths, 2m their sum. Iterated until an iteration changes
 * nothing; randomness beta = 0.01 (leidenalg's) from igraph's generator seeded with seed.
 * membership [n] gets community numbers 0..n_communities-1, the largest community first. */
int nbs_graph_leiden(const nbs_graph *g, double resolution, uint64_t seed, int32_t *membership,
                     int *n_communities, nbs_error *err);

/* Connected components of the subgraph induced by the vertices with keep[i] != 0 (keep NULL:
 * all), edges taken as undirected. component [n] gets 0..n_components-1 for kept vertices, -1
 * for the others; largest, if not NULL, the size of the largest component. */
int nbs_graph_components(const nbs_graph *g, const uint8_t *keep, int32_t *component, int64_t *n_components,
                         int64_t *largest, nbs_error *err);

/* A 2-D force-directed layout (Fruchterman & Reingold 1991, igraph_layout_fruchterman_reingold: 500 iterations,
 * igraph's grid approximation above 1000 vertices, edges pulling by their weights) of a graph
 * with positive weights, from igraph's random start seeded with seed. xy [n x 2]. */
int nbs_graph_layout_fr(const nbs_graph *g, uint64_t seed, double *xy, nbs_error *err);

#endif
