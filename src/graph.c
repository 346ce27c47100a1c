/* Neighbour graphs: k-NN exact by BLAS or approximate by FLANN (k-means tree), scanpy's UMAP connectivities,
 * and igraph for Leiden and connected components. igraph is told never to abort or print: its
 * errors come back as codes and become an nbs_error here; FLANN's C interface catches its own
 * exceptions and returns NULL or -1, and is told to log nothing. */
#include "nbsphere/graph.h"

#include <flann/flann.h>
#include <igraph.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gsl/gsl_cblas.h>

#include "nbsphere/nn.h"
#include "nbsphere/rng.h"

void nbs_graph_free(nbs_graph *g) {
    if (!g) return;
    free(g->indptr);
    free(g->indices);
    free(g->weights);
    memset(g, 0, sizeof *g);
}

static int graph_alloc(nbs_graph *g, int64_t n, int64_t nnz, nbs_error *err) {
    memset(g, 0, sizeof *g);
    g->n = n;
    g->indptr = nbs_calloc((size_t)n + 1, sizeof *g->indptr, err);
    g->indices = g->indptr ? nbs_malloc((size_t)(nnz ? nnz : 1) * sizeof *g->indices, err) : NULL;
    g->weights = g->indices ? nbs_malloc((size_t)(nnz ? nnz : 1) * sizeof *g->weights, err) : NULL;
    if (!g->weights) {
        nbs_graph_free(g);
        return NBS_ERR_NOMEM;
    }
    return NBS_OK;
}

/* ---- exact k-NN ---- */

int nbs_knn_search(const float *x, int d, const int64_t *ref, int64_t n_ref, const int64_t *query,
                   int64_t n_query, int k, int skip_self, int64_t *nn, float *rank, nbs_error *err) {
    enum { BLOCK = 256 };
    float *xr = nbs_malloc((size_t)(n_ref ? n_ref : 1) * (size_t)d * sizeof *xr, err);
    float *r2 = nbs_malloc((size_t)(n_ref ? n_ref : 1) * sizeof *r2, err);   /* [n_ref] |r|^2 */
    float *xq = nbs_malloc((size_t)BLOCK * (size_t)d * sizeof *xq, err);       /* [BLOCK x d] */
    float *dot = nbs_malloc((size_t)BLOCK * (size_t)(n_ref ? n_ref : 1) * sizeof *dot, err); /* [BLOCK x n_ref] */
    /* each query of a block has its own slice, so threads share nothing */
    float *best = nbs_malloc((size_t)BLOCK * (size_t)k * sizeof *best, err); /* [BLOCK x k] */
    int rc = NBS_ERR_NOMEM;
    if (!xr || !r2 || !xq || !dot || !best) goto done;
    for (int64_t t = 0; t < n_ref; t++) {
        memcpy(xr + t * d, x + ref[t] * d, (size_t)d * sizeof *xr);
        r2[t] = cblas_sdot(d, xr + t * d, 1, xr + t * d, 1);
    }
    for (int64_t b0 = 0; b0 < n_query; b0 += BLOCK) {
        int nb = (int)(n_query - b0 < BLOCK ? n_query - b0 : BLOCK);
        for (int q = 0; q < nb; q++) memcpy(xq + q * d, x + query[b0 + q] * d, (size_t)d * sizeof *xq);
        if (n_ref)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, (int)n_ref, d, 1.0f, xq, d, xr, d, 0.0f,
                        dot, (int)n_ref);
#pragma omp parallel for schedule(static)
        for (int q = 0; q < nb; q++) {
            float *bd = best + (int64_t)q * k;
            int64_t *bi = nn + (b0 + q) * k;
            const float *row = dot + (int64_t)q * n_ref;
            const int64_t self = query[b0 + q];
            int have = 0;
            /* insertion into a sorted list of the k best; equal distances keep the earlier one */
            for (int64_t t = 0; t < n_ref; t++) {
                if (skip_self && ref[t] == self) continue;
                float dist = r2[t] - 2 * row[t];
                if (have == k && dist >= bd[k - 1]) continue;
                int p = have < k ? have++ : k - 1;
                while (p > 0 && bd[p - 1] > dist) {
                    bd[p] = bd[p - 1];
                    bi[p] = bi[p - 1];
                    p--;
                }
                bd[p] = dist;
                bi[p] = t;
            }
            for (int j = have; j < k; j++) bi[j] = -1, bd[j] = INFINITY;
            if (rank) memcpy(rank + (b0 + q) * k, bd, (size_t)k * sizeof *bd);
        }
    }
    rc = NBS_OK;
done:
    free(xr);
    free(r2);
    free(xq);
    free(dot);
    free(best);
    return rc;
}

/* ---- approximate k-NN (FLANN) and the choice ---- */

nbs_knn_method nbs_knn_choose(const nbs_neighbors_config *nb, int64_t n_ref) {
    if (!nb || nb->method == NBS_KNN_EXACT) return NBS_KNN_EXACT;
    if (nb->method == NBS_KNN_APPROXIMATE) return NBS_KNN_APPROXIMATE;
    return n_ref > nb->exact_max_cells ? NBS_KNN_APPROXIMATE : NBS_KNN_EXACT;
}

/* FLANN's hierarchical k-means tree over the ref rows, and its parameters. */
typedef struct {
    flann_index_t index;
    struct FLANNParameters p;
    float *xr;              /* [n_ref x d] the reference rows: the tree points into them */
    float *xq;              /* [BLOCK x d] query rows */
    int *fi;                /* [BLOCK x (k + skip_self)] FLANN's neighbours ... */
    float *fd;              /* [BLOCK x (k + skip_self)] ... and squared distances */
} knn_tree;

enum { TREE_BLOCK = 4096 };

static void tree_free(knn_tree *t) {
    if (t->index) flann_free_index_float(t->index, &t->p);
    free(t->xr);
    free(t->xq);
    free(t->fi);
    free(t->fd);
}

static int tree_build(const float *x, int d, const int64_t *ref, int64_t n_ref, int k, int skip_self,
                      const nbs_neighbors_config *nb, uint64_t seed, knn_tree *t, nbs_error *err) {
    memset(t, 0, sizeof *t);
    const int kk = k + skip_self; /* the cell itself comes back as its own nearest: ask for one more */
    float *xr = t->xr = nbs_malloc((size_t)n_ref * (size_t)d * sizeof *xr, err);
    t->xq = nbs_malloc((size_t)TREE_BLOCK * (size_t)d * sizeof *t->xq, err);
    t->fi = nbs_malloc((size_t)TREE_BLOCK * (size_t)kk * sizeof *t->fi, err);
    t->fd = nbs_malloc((size_t)TREE_BLOCK * (size_t)kk * sizeof *t->fd, err);
    if (!xr || !t->xq || !t->fi || !t->fd) {
        tree_free(t);
        return NBS_ERR_NOMEM;
    }
    for (int64_t r = 0; r < n_ref; r++) memcpy(xr + r * d, x + ref[r] * d, (size_t)d * sizeof *xr);
    t->p = DEFAULT_FLANN_PARAMETERS;
    /* FLANN's defaults but the centres: its random ones come from std::random_device */
    t->p.algorithm = FLANN_INDEX_KMEANS;
    t->p.branching = nb->branching;
    t->p.iterations = 11;
    t->p.centers_init = FLANN_CENTERS_KMEANSPP;
    t->p.cb_index = 0.2f;
    t->p.eps = 0;
    t->p.sorted = 1;
    t->p.cores = omp_get_max_threads(); /* queries are independent: the result does not depend on it */
    t->p.log_level = FLANN_LOG_NONE;
    t->p.random_seed = (long)(nbs_stream_seed(seed, NBS_STREAM_KNN, 0, 0) % 2147483646u) + 1; /* FLANN's srand */
    flann_set_distance_type(FLANN_DIST_EUCLIDEAN, 0); /* squared Euclidean */
    float speedup = 0;
    t->index = flann_build_index_float(xr, (int)n_ref, d, &speedup, &t->p);
    if (!t->index) {
        tree_free(t);
        return nbs_error_set(err, NBS_ERR_NOMEM, "approximate k-NN: FLANN could not build its k-means tree over %lld "
                             "cells (out of memory?); set neighbors.method: exact or free memory", (long long)n_ref);
    }
    return NBS_OK;
}

/* The k nearest ref positions of each query row, comparing `checks` points per query; nn and
 * rank as nbs_knn_search. */
static int tree_query(knn_tree *t, const float *x, int d, const int64_t *ref, const int64_t *query, int64_t n_query,
                      int k, int skip_self, int checks, int64_t *nn, float *rank, nbs_error *err) {
    const int kk = k + skip_self;
    t->p.checks = checks;
    for (int64_t b0 = 0; b0 < n_query; b0 += TREE_BLOCK) {
        const int nb_q = (int)(n_query - b0 < TREE_BLOCK ? n_query - b0 : TREE_BLOCK);
        for (int q = 0; q < nb_q; q++) memcpy(t->xq + q * d, x + query[b0 + q] * d, (size_t)d * sizeof *t->xq);
        if (flann_find_nearest_neighbors_index_float(t->index, t->xq, nb_q, t->fi, t->fd, kk, &t->p) < 0)
            return nbs_error_set(err, NBS_ERR_NOMEM, "approximate k-NN: FLANN's search failed (out of memory?); set "
                                 "neighbors.method: exact or free memory");
        for (int q = 0; q < nb_q; q++) {
            const int64_t self = query[b0 + q];
            const int *qi = t->fi + (int64_t)q * kk;
            const float *qd = t->fd + (int64_t)q * kk;
            const float q2 = cblas_sdot(d, t->xq + q * d, 1, t->xq + q * d, 1);
            int64_t *bi = nn + (b0 + q) * k;
            float *br = rank ? rank + (b0 + q) * k : NULL;
            /* with skip_self drop the cell's own row, or the last when a duplicate displaced it */
            int j = 0;
            for (int u = 0; u < kk && j < k; u++) {
                if (qi[u] < 0 || (skip_self && ref[qi[u]] == self)) continue;
                bi[j] = qi[u];
                if (br) br[j] = qd[u] - q2;
                j++;
            }
            for (; j < k; j++) {
                bi[j] = -1;
                if (br) br[j] = INFINITY;
            }
        }
    }
    return NBS_OK;
}

/* Share of the exact neighbours e [m x k] (-1: none) found in a [m x k]. */
static double recall_of(const int64_t *a, const int64_t *e, int64_t m, int k) {
    int64_t found = 0, total = 0;
    for (int64_t j = 0; j < m; j++)
        for (int u = 0; u < k && e[j * k + u] >= 0; u++) {
            total++;
            for (int v = 0; v < k; v++) found += a[j * k + v] == e[j * k + u];
        }
    return total ? (double)found / (double)total : 1.0;
}

/* The approximate search: the tree, then on at most NBS_KNN_RECALL_QUERIES evenly spaced
 * queries the exact neighbours and the tree's with nb->checks, doubled until their recall
 * reaches nb->recall (or checks reach the reference count), then every query with those checks.
 * A query's answer depends only on it, the tree and checks, so the sample's recall is that of
 * the same queries in the full answer. */
static int approximate_search(const float *x, int d, const int64_t *ref, int64_t n_ref, const int64_t *query,
                              int64_t n_query, int k, int skip_self, const nbs_neighbors_config *nb, uint64_t seed,
                              int64_t *nn, float *rank, nbs_knn_info *info, nbs_error *err) {
    const int64_t m = n_query < NBS_KNN_RECALL_QUERIES ? n_query : NBS_KNN_RECALL_QUERIES;
    int64_t *pick = nbs_malloc((size_t)(m ? m : 1) * sizeof *pick, err);                  /* [m] query rows */
    int64_t *exact = nbs_malloc((size_t)(m ? m : 1) * (size_t)k * sizeof *exact, err);    /* [m x k] */
    int64_t *approx = nbs_malloc((size_t)(m ? m : 1) * (size_t)k * sizeof *approx, err);  /* [m x k] */
    knn_tree t = {0};
    int rc = pick && exact && approx ? NBS_OK : NBS_ERR_NOMEM;
    if (!rc) rc = tree_build(x, d, ref, n_ref, k, skip_self, nb, seed, &t, err);
    for (int64_t j = 0; !rc && j < m; j++) pick[j] = query[j * n_query / m];
    if (!rc) rc = nbs_knn_search(x, d, ref, n_ref, pick, m, k, skip_self, exact, NULL, err);
    int checks = nb->checks;
    double recall = 1.0;
    while (!rc) {
        rc = tree_query(&t, x, d, ref, pick, m, k, skip_self, checks, approx, NULL, err);
        if (rc) break;
        recall = recall_of(approx, exact, m, k);
        if (recall >= nb->recall || checks >= n_ref || checks > INT_MAX / 2) break;
        checks *= 2;
    }
    if (!rc) rc = tree_query(&t, x, d, ref, query, n_query, k, skip_self, checks, nn, rank, err);
    if (!rc) {
        info->checks = checks;
        info->recall_queries = m;
        info->recall = recall;
    }
    tree_free(&t);
    free(pick);
    free(exact);
    free(approx);
    return rc;
}

int nbs_knn_find(const float *x, int d, const int64_t *ref, int64_t n_ref, const int64_t *query, int64_t n_query,
                 int k, int skip_self, const nbs_neighbors_config *nb, uint64_t seed, int64_t *nn, float *rank,
                 nbs_knn_info *info, nbs_error *err) {
    nbs_knn_info local;
    if (!info) info = &local;
    memset(info, 0, sizeof *info);
    info->method = nbs_knn_choose(nb, n_ref);
    info->auto_chosen = nb && nb->method == NBS_KNN_AUTO;
    info->n_ref = n_ref;
    info->k = k;
    info->recall = 1.0;
    if (info->method == NBS_KNN_EXACT) return nbs_knn_search(x, d, ref, n_ref, query, n_query, k, skip_self, nn, rank, err);
    info->branching = nb->branching;
    info->start_checks = nb->checks;
    info->target_recall = nb->recall;
    if (n_ref <= k + skip_self || n_ref >= INT_MAX || n_query >= INT_MAX / (k + 1))
        return nbs_error_set(err, NBS_ERR_INPUT, "approximate k-NN: %lld reference cells for %d neighbours%s; the "
                             "k-means tree needs more than k (and fewer than 2^31): set neighbors.method: exact",
                             (long long)n_ref, k, skip_self ? " besides the cell itself" : "");
    /* NaN would send FLANN's k-means and tree descent anywhere */
    for (int pass = 0; pass < 2; pass++) {
        const int64_t *rows = pass ? query : ref, nr = pass ? n_query : n_ref;
        for (int64_t r = 0; r < nr; r++)
            for (int c = 0; c < d; c++)
                if (!isfinite(x[rows[r] * d + c]))
                    return nbs_error_set(err, NBS_ERR_INPUT, "approximate k-NN: value at row %lld, dimension %d is "
                                         "not finite", (long long)rows[r] + 1, c + 1);
    }
    return approximate_search(x, d, ref, n_ref, query, n_query, k, skip_self, nb, seed, nn, rank, info, err);
}

void nbs_knn_describe(const nbs_knn_info *info, char *buf, size_t len) {
    if (info->method == NBS_KNN_EXACT) {
        snprintf(buf, len, "exact (blocked BLAS products over %lld cells%s)", (long long)info->n_ref,
                 info->auto_chosen ? ", at most neighbors.exact_max_cells" : "");
        return;
    }
    char checks[160] = "";
    if (info->checks != info->start_checks)
        snprintf(checks, sizeof checks, ", raised from neighbors.checks = %d to reach recall %.2f%s", info->start_checks,
                 info->target_recall, info->recall < info->target_recall ? " (not reached: it stopped at every cell)" : "");
    snprintf(buf, len, "approximate (FLANN hierarchical k-means tree over %lld cells%s: branching %d, %d checks%s; "
             "recall@%d %.4f against the exact search on %lld queries)", (long long)info->n_ref,
             info->auto_chosen ? ", more than neighbors.exact_max_cells" : "", info->branching, info->checks, checks,
             info->k, info->recall, (long long)info->recall_queries);
}

int nbs_graph_knn(const float *x, int64_t n, int d, int k, nbs_metric metric, const nbs_neighbors_config *nb,
                  uint64_t seed, nbs_graph *g, nbs_knn_info *info, nbs_error *err) {
    nbs_nn_blas_serial();
    memset(g, 0, sizeof *g);
    if (d < 1 || k < 1 || n <= k)
        return nbs_error_set(err, NBS_ERR_INPUT,
                             "neighbour graph: %lld cells in %d dimensions are too few for %d neighbours "
                             "each; give more cells than neighbours (or lower k)", (long long)n, d, k);
    float *y = nbs_malloc((size_t)n * (size_t)d * sizeof *y, err);         /* [n x d] x, unit rows for cosine */
    int64_t *rows = nbs_malloc((size_t)n * sizeof *rows, err);             /* [n] 0..n-1 */
    float *rank = nbs_malloc((size_t)n * (size_t)k * sizeof *rank, err);   /* [n x k] */
    int rc = NBS_ERR_NOMEM;
    if (!y || !rows || !rank || graph_alloc(g, n, n * k, err)) goto done;
    memcpy(y, x, (size_t)n * (size_t)d * sizeof *y);
    for (int64_t i = 0; i < n * d; i++)
        if (!isfinite(y[i])) {
            rc = nbs_error_set(err, NBS_ERR_INPUT, "neighbour graph: embedding value at cell %lld, dimension %lld "
                               "is not finite", (long long)(i / d) + 1, (long long)(i % d) + 1);
            goto done;
        }
    for (int64_t i = 0; i < n; i++) {
        rows[i] = i;
        if (metric == NBS_METRIC_COSINE) {
            float norm = cblas_snrm2(d, y + i * d, 1);
            if (norm > 0) cblas_sscal(d, 1.0f / norm, y + i * d, 1);
        }
    }
    if ((rc = nbs_knn_find(y, d, rows, n, rows, n, k, 1, nb, seed, g->indices, rank, info, err))) goto done;
    for (int64_t e = 0; e < n * k; e++)
        if (g->indices[e] < 0) { /* n > k, so only a tree that lost points could leave one short */
            rc = nbs_error_set(err, NBS_ERR_INTERNAL, "neighbour graph: cell %lld got fewer than %d neighbours from "
                               "the approximate search; set neighbors.method: exact", (long long)(e / k) + 1, k);
            goto done;
        }
    for (int64_t i = 0; i < n; i++) {
        g->indptr[i + 1] = (i + 1) * k;
        double q2 = cblas_sdot(d, y + i * d, 1, y + i * d, 1);
        for (int j = 0; j < k; j++) {
            double d2 = q2 + rank[i * k + j];
            g->weights[i * k + j] = d2 > 0 ? sqrt(d2) : 0.0; /* rounding can leave -1e-7 for a duplicate */
        }
    }
    rc = NBS_OK;
done:
    if (rc) nbs_graph_free(g);
    free(y);
    free(rows);
    free(rank);
    return rc;
}

/* ---- UMAP connectivities ---- */

static int cmp_edge(const void *p, const void *q) {
    const nbs_graph_edge *x = p, *y = q;
    if (x->a != y->a) return x->a < y->a ? -1 : 1;
    return (x->b > y->b) - (x->b < y->b);
}

int nbs_graph_symmetric(int64_t n, nbs_graph_edge *e, int64_t m, int fuzzy_union, nbs_graph *out, nbs_error *err) {
    qsort(e, (size_t)m, sizeof *e, cmp_edge);
    int64_t u = 0;
    for (int64_t i = 0; i < m; i++) {
        if (e[i].a == e[i].b) continue;
        if (u && e[u - 1].a == e[i].a && e[u - 1].b == e[i].b) {
            if (fuzzy_union) e[u - 1].w = e[u - 1].w + e[i].w - e[u - 1].w * e[i].w;
        } else e[u++] = e[i];
    }
    int rc = graph_alloc(out, n, 2 * u, err);
    int64_t *fill = rc ? NULL : nbs_malloc((size_t)(n ? n : 1) * sizeof *fill, err); /* [n] next free slot per row */
    if (!fill) {
        nbs_graph_free(out);
        return NBS_ERR_NOMEM;
    }
    for (int64_t i = 0; i < u; i++) out->indptr[e[i].a + 1]++, out->indptr[e[i].b + 1]++;
    for (int64_t i = 0; i < n; i++) out->indptr[i + 1] += out->indptr[i];
    memcpy(fill, out->indptr, (size_t)n * sizeof *fill);
    /* edges sorted by (a, b): row r gets its lower neighbours (r as b, a ascending) before its
     * higher ones (r as a, b ascending), so every row is ascending */
    for (int64_t i = 0; i < u; i++) {
        const int64_t p = fill[e[i].b]++;
        out->indices[p] = e[i].a, out->weights[p] = e[i].w;
    }
    for (int64_t i = 0; i < u; i++) {
        const int64_t p = fill[e[i].a]++;
        out->indices[p] = e[i].b, out->weights[p] = e[i].w;
    }
    free(fill);
    return NBS_OK;
}

/* sigma of one cell as umap-learn's smooth_knn_dist: bisection (64 steps, tolerance 1e-5) for
 * sum_j exp(-max(d_j - rho, 0) / sigma) = target, then at least 1e-3 of the mean distance. */
static double smooth_sigma(const double *dist, int k, double rho, double target) {
    double lo = 0, hi = INFINITY, mid = 1;
    for (int it = 0; it < 64; it++) {
        double psum = 0;
        for (int j = 0; j < k; j++) {
            double e = dist[j] - rho;
            psum += e > 0 ? exp(-e / mid) : 1.0;
        }
        if (fabs(psum - target) < 1e-5) break;
        if (psum > target) hi = mid, mid = (lo + hi) / 2;
        else {
            lo = mid;
            mid = isinf(hi) ? mid * 2 : (lo + hi) / 2;
        }
    }
    double mean = 0;
    for (int j = 0; j < k; j++) mean += dist[j];
    mean /= k;
    return rho > 0 ? fmax(mid, 1e-3 * mean) : mid;
}

int nbs_graph_connectivities(const nbs_graph *knn, nbs_graph *out, nbs_error *err) {
    memset(out, 0, sizeof *out);
    const int64_t n = knn->n, m = knn->indptr[n];
    double global_mean = 0;
    for (int64_t e = 0; e < m; e++) global_mean += knn->weights[e];
    global_mean /= m ? (double)m : 1.0;
    nbs_graph_edge *ed = nbs_malloc((size_t)(m ? m : 1) * sizeof *ed, err); /* [m] one per directed k-NN edge */
    if (!ed) return NBS_ERR_NOMEM;
    for (int64_t i = 0; i < n; i++) {
        const int64_t o = knn->indptr[i];
        const int k = (int)(knn->indptr[i + 1] - o);
        const double *dist = knn->weights + o;
        double rho = 0;
        for (int j = 0; j < k; j++) /* the nearest non-zero distance (duplicates of the cell have 0) */
            if (dist[j] > 0) {
                rho = dist[j];
                break;
            }
        double sigma = smooth_sigma(dist, k, rho, log2((double)k + 1));
        if (rho == 0) sigma = fmax(sigma, 1e-3 * global_mean);
        for (int j = 0; j < k; j++) {
            int64_t v = knn->indices[o + j];
            double e = dist[j] - rho;
            ed[o + j] = (nbs_graph_edge){i < v ? i : v, i < v ? v : i, e > 0 ? exp(-e / sigma) : 1.0};
        }
    }
    /* a pair seen from both ends combines as the fuzzy union w1 + w2 - w1 w2 */
    const int rc = nbs_graph_symmetric(n, ed, m, 1, out, err);
    free(ed);
    return rc;
}

/* ---- igraph ---- */

static void quiet_igraph(void) {
    igraph_set_error_handler(igraph_error_handler_ignore);
    igraph_set_warning_handler(igraph_warning_handler_ignore);
}

static int igraph_failed(nbs_error *err, const char *what, igraph_error_t e) {
    if (e == IGRAPH_ENOMEM) return nbs_error_set(err, NBS_ERR_NOMEM, "%s: out of memory", what);
    return nbs_error_set(err, NBS_ERR_NUMERIC, "%s failed in igraph: %s", what, igraph_strerror(e));
}

/* The undirected igraph graph of the edges i < j of g between kept vertices (renumbered by
 * map [n], -1 = not kept), and their weights (NULL: not wanted). */
static igraph_error_t to_igraph(const nbs_graph *g, const int64_t *map, int64_t n_kept, igraph_t *ig,
                                igraph_vector_t *w) {
    igraph_vector_int_t ends;
    IGRAPH_CHECK(igraph_vector_int_init(&ends, 0));
    IGRAPH_FINALLY(igraph_vector_int_destroy, &ends);
    for (int64_t i = 0; i < g->n; i++) {
        if (map[i] < 0) continue;
        for (int64_t e = g->indptr[i]; e < g->indptr[i + 1]; e++) {
            int64_t j = g->indices[e];
            /* an edge stored once (a k-NN graph) or twice (symmetric): taken from its lower end,
             * or from the end that holds it when the other end does not */
            if (map[j] < 0 || j == i) continue;
            int mirrored = 0;
            for (int64_t f = g->indptr[j]; f < g->indptr[j + 1] && !mirrored; f++) mirrored = g->indices[f] == i;
            if (mirrored && j < i) continue;
            IGRAPH_CHECK(igraph_vector_int_push_back(&ends, map[i]));
            IGRAPH_CHECK(igraph_vector_int_push_back(&ends, map[j]));
            if (w) IGRAPH_CHECK(igraph_vector_push_back(w, g->weights[e]));
        }
    }
    IGRAPH_CHECK(igraph_create(ig, &ends, n_kept, IGRAPH_UNDIRECTED));
    igraph_vector_int_destroy(&ends);
    IGRAPH_FINALLY_CLEAN(1);
    return IGRAPH_SUCCESS;
}

/* Renumbers labels [n] so that the largest group is 0 (ties: the one met first). */
static int relabel_by_size(int32_t *labels, int64_t n, int n_groups, nbs_error *err) {
    int64_t *size = nbs_calloc((size_t)n_groups, sizeof *size, err);  /* [n_groups] */
    int64_t *first = nbs_malloc((size_t)n_groups * sizeof *first, err); /* [n_groups] */
    int32_t *order = nbs_malloc((size_t)n_groups * sizeof *order, err); /* [n_groups] new -> old */
    int32_t *to = nbs_malloc((size_t)n_groups * sizeof *to, err);       /* [n_groups] old -> new */
    int rc = NBS_ERR_NOMEM;
    if (size && first && order && to) {
        for (int c = 0; c < n_groups; c++) first[c] = n, order[c] = c;
        for (int64_t i = n - 1; i >= 0; i--)
            if (labels[i] >= 0) size[labels[i]]++, first[labels[i]] = i;
        for (int a = 1; a < n_groups; a++) { /* insertion sort: communities are few */
            int32_t c = order[a];
            int b = a;
            while (b > 0 && (size[order[b - 1]] < size[c] ||
                             (size[order[b - 1]] == size[c] && first[order[b - 1]] > first[c])))
                order[b] = order[b - 1], b--;
            order[b] = c;
        }
        for (int c = 0; c < n_groups; c++) to[order[c]] = c;
        for (int64_t i = 0; i < n; i++)
            if (labels[i] >= 0) labels[i] = to[labels[i]];
        rc = NBS_OK;
    }
    free(size);
    free(first);
    free(order);
    free(to);
    return rc;
}

int nbs_graph_leiden(const nbs_graph *g, double resolution, uint64_t seed, int32_t *membership,
                     int *n_communities, nbs_error *err) {
    quiet_igraph();
    if (!(resolution > 0) || !isfinite(resolution))
        return nbs_error_set(err, NBS_ERR_USAGE, "Leiden: resolution %g must be a positive number", resolution);
    const int64_t n = g->n;
    int64_t *map = nbs_malloc((size_t)(n ? n : 1) * sizeof *map, err); /* [n] identity */
    if (!map) return NBS_ERR_NOMEM;
    for (int64_t i = 0; i < n; i++) map[i] = i;
    igraph_t ig;
    igraph_vector_t w, strength;
    igraph_vector_int_t memb;
    igraph_integer_t nc = 0;
    int made = 0; /* how many of w, strength, memb, ig exist */
    igraph_error_t e = igraph_vector_init(&w, 0);
    if (!e && ++made && !(e = igraph_vector_init(&strength, n)) && ++made && !(e = igraph_vector_int_init(&memb, n)) &&
        ++made && !(e = to_igraph(g, map, n, &ig, &w)))
        made++;
    if (!e) {
        /* modularity as a CPM-style quality: vertex weights s_i, resolution gamma / 2m */
        e = igraph_strength(&ig, &strength, igraph_vss_all(), IGRAPH_ALL, IGRAPH_LOOPS, &w);
        double two_m = 0;
        for (int64_t i = 0; i < n; i++) two_m += VECTOR(strength)[i];
        igraph_rng_seed(igraph_rng_default(), (igraph_uint_t)seed);
        if (!e && two_m > 0)
            e = igraph_community_leiden(&ig, &w, &strength, resolution / two_m, 0.01, 0, -1, &memb, &nc, NULL);
        else if (!e) /* no edges: every cell its own community */
            for (int64_t i = 0; i < n; i++) VECTOR(memb)[i] = i, nc = n;
    }
    int rc = NBS_OK;
    if (e) rc = igraph_failed(err, "Leiden clustering", e);
    else {
        for (int64_t i = 0; i < n; i++) membership[i] = (int32_t)VECTOR(memb)[i];
        *n_communities = (int)nc;
        rc = relabel_by_size(membership, n, (int)nc, err);
    }
    if (made > 3) igraph_destroy(&ig);
    if (made > 2) igraph_vector_int_destroy(&memb);
    if (made > 1) igraph_vector_destroy(&strength);
    if (made > 0) igraph_vector_destroy(&w);
    free(map);
    return rc;
}

int nbs_graph_components(const nbs_graph *g, const uint8_t *keep, int32_t *component, int64_t *n_components,
                         int64_t *largest, nbs_error *err) {
    quiet_igraph();
    const int64_t n = g->n;
    int64_t *map = nbs_malloc((size_t)(n ? n : 1) * sizeof *map, err); /* [n] vertex -> kept number or -1 */
    if (!map) return NBS_ERR_NOMEM;
    int64_t nk = 0;
    for (int64_t i = 0; i < n; i++) map[i] = !keep || keep[i] ? nk++ : -1;
    igraph_t ig;
    igraph_vector_int_t memb, csize;
    igraph_integer_t no = 0;
    int made = 0; /* how many of memb, csize, ig exist */
    igraph_error_t e = igraph_vector_int_init(&memb, 0);
    if (!e && ++made && !(e = igraph_vector_int_init(&csize, 0)) && ++made && !(e = to_igraph(g, map, nk, &ig, NULL)))
        made++;
    if (!e) e = igraph_connected_components(&ig, &memb, &csize, &no, IGRAPH_WEAK);
    int rc = NBS_OK;
    if (e) rc = igraph_failed(err, "connected components", e);
    else {
        int64_t big = 0;
        for (igraph_integer_t c = 0; c < no; c++)
            if (VECTOR(csize)[c] > big) big = VECTOR(csize)[c];
        for (int64_t i = 0; i < n; i++) component[i] = map[i] < 0 ? -1 : (int32_t)VECTOR(memb)[map[i]];
        *n_components = no;
        if (largest) *largest = big;
    }
    if (made > 2) igraph_destroy(&ig);
    if (made > 1) igraph_vector_int_destroy(&csize);
    if (made > 0) igraph_vector_int_destroy(&memb);
    free(map);
    return rc;
}

int nbs_graph_layout_fr(const nbs_graph *g, uint64_t seed, double *xy, nbs_error *err) {
    quiet_igraph();
    const int64_t n = g->n;
    int64_t *map = nbs_malloc((size_t)(n ? n : 1) * sizeof *map, err); /* [n] identity */
    if (!map) return NBS_ERR_NOMEM;
    for (int64_t i = 0; i < n; i++) map[i] = i;
    igraph_t ig;
    igraph_vector_t w;
    igraph_matrix_t res;
    int made = 0; /* how many of w, res, ig exist */
    igraph_error_t e = igraph_vector_init(&w, 0);
    if (!e && ++made && !(e = igraph_matrix_init(&res, n, 2)) && ++made && !(e = to_igraph(g, map, n, &ig, &w)))
        made++;
    if (!e) {
        igraph_rng_seed(igraph_rng_default(), (igraph_uint_t)seed);
        e = igraph_layout_fruchterman_reingold(&ig, &res, 0, 500, sqrt((double)n), IGRAPH_LAYOUT_AUTOGRID, &w, NULL, NULL, NULL, NULL);
    }
    int rc = NBS_OK;
    if (e) rc = igraph_failed(err, "force-directed layout", e);
    else
        for (int64_t i = 0; i < n; i++) xy[2 * i] = MATRIX(res, i, 0), xy[2 * i + 1] = MATRIX(res, i, 1);
    if (made > 2) igraph_destroy(&ig);
    if (made > 1) igraph_matrix_destroy(&res);
    if (made > 0) igraph_vector_destroy(&w);
    free(map);
    return rc;
}
