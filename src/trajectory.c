/* The trajectory stage: k-NN graph -> gauss kernel -> Leiden, PAGA, diffusion map -> DPT, and a
 * layout. Each step follows the scanpy function named in trajectory.h, so that a scanpy user
 * reading embedding.h5ad finds the numbers their own calls would give. */
#include "nbsphere/trajectory.h"

#include <gsl/gsl_cblas.h>
#include <gsl/gsl_eigen.h>
#include <gsl/gsl_randist.h>
#include <gsl/gsl_sort.h>
#include <gsl/gsl_statistics_double.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/nn.h"
#include "nbsphere/rng.h"

void nbs_trajectory_free(nbs_trajectory *t) {
    if (!t) return;
    nbs_graph_free(&t->knn);
    nbs_graph_free(&t->kernel);
    free(t->cluster);
    free(t->paga);
    free(t->diffmap);
    free(t->evals);
    free(t->component);
    free(t->pseudotime);
    free(t->layout);
    free(t->wrap.ref_hops);
    free(t->wrap.score);
    free(t->wrap.pairs);
    free(t->wrap.label_pairs);
    free(t->wrap.label_names);
    memset(t, 0, sizeof *t);
}

/* ---- gauss kernel ---- */


int nbs_traj_gauss_kernel(const nbs_graph *knn, nbs_graph *out, int64_t *n_floored, nbs_error *err) {
    memset(out, 0, sizeof *out);
    const int64_t n = knn->n, m = knn->indptr[n];
    double *s2 = nbs_malloc((size_t)(n ? n : 1) * sizeof *s2, err); /* [n] sigma_i^2 */
    nbs_graph_edge *p = s2 ? nbs_malloc((size_t)(m ? m : 1) * sizeof *p, err) : NULL; /* [m] one per k-NN edge */
    if (!p) {
        free(s2);
        return NBS_ERR_NOMEM;
    }
    double mean = 0;
    int64_t positive = 0;
    for (int64_t i = 0; i < n; i++) {
        const int64_t last = knn->indptr[i + 1] - 1;
        const double dk = last >= knn->indptr[i] ? knn->weights[last] : 0;
        s2[i] = dk * dk / 4;
        if (s2[i] > 0) mean += s2[i], positive++;
    }
    /* a cell with k duplicates has no scale of its own: a small one keeps its weights finite */
    const double floor_s2 = positive ? 1e-3 * mean / (double)positive : 1.0;
    *n_floored = 0;
    for (int64_t i = 0; i < n; i++)
        if (!(s2[i] > 0)) s2[i] = floor_s2, ++*n_floored;
    for (int64_t i = 0; i < n; i++)
        for (int64_t e = knn->indptr[i]; e < knn->indptr[i + 1]; e++) {
            const int64_t j = knn->indices[e];
            const double den = s2[i] + s2[j], dd = knn->weights[e] * knn->weights[e];
            /* symmetric in i and j, so an edge found from both ends has one value */
            p[e] = (nbs_graph_edge){i < j ? i : j, i < j ? j : i, sqrt(2 * sqrt(s2[i] * s2[j]) / den) * exp(-dd / den)};
        }
    free(s2);
    const int rc = nbs_graph_symmetric(n, p, m, 0, out, err);
    free(p);
    return rc;
}

/* ---- diffusion map ---- */

/* y = T x for a CSR matrix. */
static void spmv(const nbs_graph *t, const double *x, double *y) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < t->n; i++) {
        double s = 0;
        for (int64_t e = t->indptr[i]; e < t->indptr[i + 1]; e++) s += t->weights[e] * x[t->indices[e]];
        y[i] = s;
    }
}

/* w minus its projection on the rows of B [m x n], twice (one pass loses orthogonality). */
static void orthogonalise(const double *b, int m, int64_t n, double *w, double *h) {
    if (!m) return;
    for (int pass = 0; pass < 2; pass++) {
        cblas_dgemv(CblasRowMajor, CblasNoTrans, m, (int)n, 1.0, b, (int)n, w, 1, 0.0, h, 1);
        cblas_dgemv(CblasRowMajor, CblasTrans, m, (int)n, -1.0, b, (int)n, h, 1, 1.0, w, 1);
    }
}

/* Residual |T x - theta x| of a converged pair. T is similar to the row-stochastic D^-1 K, so its
 * spectrum lies in [-1, 1] with 1 in it: this bound is relative to the spectrum's scale. */
#define LANCZOS_TOL 1e-9
#define LANCZOS_RUNS 30
/* Thick restarts of one run before it gives up: each restart keeps the leading Ritz vectors, so
 * clustered eigenvalues (gaps of 1e-5 near 1, as on long 1-D trajectories) converge over them. */
#define LANCZOS_RESTARTS 400
/* At most this many cells: T is solved dense (gsl_eigen_symmv, n^2 doubles, ~0.2 s at 500). */
#define DIFFMAP_DENSE_MAX 500

typedef struct {
    const nbs_graph *t;
    int64_t n;
    int nev;
    double *locked;   /* [nev x n] locked eigenvectors, rows */
    double *lval;     /* [nev] their eigenvalues */
    int nl;
    double *v;        /* [(mmax + 1) x n] Lanczos basis, rows */
    int mmax;
    double *alpha, *beta; /* [mmax] the tridiagonal (alpha: the Ritz values of kept rows) */
    double *arrow;    /* [mmax] after a thick restart with k kept rows: H[i][k] = arrow[i], i < k */
    double *h;        /* [max(mmax, nev)] scratch */
    double *w;        /* [n] */
    double *ritz;     /* [nev x n] new pairs before locking */
    double *rval;     /* [nev] */
} lanczos;

/* theta [m] and the eigenvectors s [m x m] (column i = pair i) of the symmetric a [m x m]
 * (destroyed); order [m] by |theta| descending, then by value descending. */
static int sym_eig(double *a, int m, double *theta, double *s, int *order) {
    gsl_matrix_view av = gsl_matrix_view_array(a, (size_t)m, (size_t)m);
    gsl_matrix_view sv = gsl_matrix_view_array(s, (size_t)m, (size_t)m);
    gsl_vector_view tv = gsl_vector_view_array(theta, (size_t)m);
    gsl_eigen_symmv_workspace *ws = gsl_eigen_symmv_alloc((size_t)m);
    if (!ws) return -1;
    const int rc = gsl_eigen_symmv(&av.matrix, &tv.vector, &sv.matrix, ws) ? -1 : 0;
    gsl_eigen_symmv_free(ws);
    for (int i = 0; i < m; i++) order[i] = i;
    for (int a1 = 1; a1 < m; a1++) { /* insertion sort by magnitude, then by value */
        int c = order[a1], b = a1;
        while (b > 0 && (fabs(theta[order[b - 1]]) < fabs(theta[c]) ||
                         (fabs(theta[order[b - 1]]) == fabs(theta[c]) && theta[order[b - 1]] < theta[c])))
            order[b] = order[b - 1], b--;
        order[b] = c;
    }
    return rc;
}

/* Eigenpairs of the projected matrix of the first m rows, k of them kept by a thick restart:
 * diagonal alpha, row/column k coupled to the kept rows by arrow, tridiagonal from k on. */
static int projected_eig(const lanczos *L, int m, int k, double *theta, double *s, int *order) {
    double *a = calloc((size_t)m * (size_t)m, sizeof *a); /* [m x m] */
    if (!a) return -1;
    for (int i = 0; i < m; i++) {
        a[(size_t)i * (size_t)m + (size_t)i] = L->alpha[i];
        if (i < k) a[(size_t)i * (size_t)m + (size_t)k] = a[(size_t)k * (size_t)m + (size_t)i] = L->arrow[i];
        else if (i + 1 < m) a[(size_t)i * (size_t)m + (size_t)i + 1] = a[(size_t)(i + 1) * (size_t)m + (size_t)i] = L->beta[i];
    }
    const int rc = sym_eig(a, m, theta, s, order);
    free(a);
    return rc;
}

/* One thick-restarted Lanczos run on T restricted to the complement of the locked vectors, from
 * a random start. It stops when the leading Ritz pairs by magnitude have converged: `want` of
 * them, or as many as reach one below `floor` in magnitude (the check run: only pairs above
 * the smallest locked one matter), or all of them when the basis is exhausted (an invariant
 * subspace, or the whole complement). When the basis is full first, the leading `keep` Ritz
 * vectors become its first rows (T x_c = theta_c x_c + beta s_m,c v_m keeps the projection an
 * arrowhead) and the run goes on from the last residual, so nothing learnt is thrown away. The
 * converged leading pairs go to ritz/rval; returns how many, -1 out of memory, -2 when
 * LANCZOS_RESTARTS restarts did not converge them (*resid: the largest residual left). */
static int lanczos_run(lanczos *L, int want, double floor, gsl_rng *r, double *resid) {
    enum { CHUNK = 256 }; /* columns of the basis rotated at a time by a restart */
    const int64_t n = L->n;
    double *v = L->v;
    for (int64_t i = 0; i < n; i++) v[i] = gsl_ran_gaussian(r, 1.0);
    orthogonalise(L->locked, L->nl, n, v, L->h);
    double nv = cblas_dnrm2((int)n, v, 1);
    if (!(nv > 0)) return 0;
    cblas_dscal((int)n, 1 / nv, v, 1);
    int mmax = L->mmax;
    if (mmax > n - L->nl) mmax = (int)(n - L->nl);
    const int whole = mmax == n - L->nl; /* a full basis spans the complement: every pair exact */
    /* kept by a restart: the wanted pairs and half the remaining room, for the next gaps */
    const int keep = want + (mmax - want) / 2;
    double *theta = malloc(sizeof *theta * (size_t)mmax), *s = malloc(sizeof *s * (size_t)mmax * (size_t)mmax);
    double *sk = malloc(sizeof *sk * (size_t)mmax * (size_t)keep);  /* [mmax x keep] kept columns of s */
    double *rot = malloc(sizeof *rot * (size_t)keep * CHUNK);       /* [keep x CHUNK] rotated rows */
    int *order = malloc(sizeof *order * (size_t)mmax);
    int found = -1, k = 0, restarts = 0;
    if (!theta || !s || !sk || !rot || !order) goto done;
    found = 0;
    for (int j = 0; j < mmax; j++) {
        double *w = L->w;
        spmv(L->t, v + (int64_t)j * n, w);
        L->alpha[j] = cblas_ddot((int)n, v + (int64_t)j * n, 1, w, 1);
        cblas_daxpy((int)n, -L->alpha[j], v + (int64_t)j * n, 1, w, 1);
        /* right after a restart the couplings to the kept rows are the arrow, removed below */
        if (j > k) cblas_daxpy((int)n, -L->beta[j - 1], v + (int64_t)(j - 1) * n, 1, w, 1);
        orthogonalise(v, j + 1, n, w, L->h);
        orthogonalise(L->locked, L->nl, n, w, L->h);
        L->beta[j] = cblas_dnrm2((int)n, w, 1);
        const int m = j + 1, full = m == mmax, exhausted = L->beta[j] < 1e-12 || (full && whole);
        if (!full && !exhausted && m % 10 && m >= want) { /* the projection is solved every 10 steps */
            cblas_dcopy((int)n, w, 1, v + (int64_t)m * n, 1);
            cblas_dscal((int)n, 1 / L->beta[j], v + (int64_t)m * n, 1);
            continue;
        }
        if (m >= want || exhausted) {
            if (projected_eig(L, m, k, theta, s, order)) {
                found = -1;
                goto done;
            }
            int conv = 0;
            while (conv < want && conv < m && (conv == 0 || fabs(theta[order[conv - 1]]) >= floor) &&
                   (L->beta[j] < 1e-12 || fabs(L->beta[j] * s[(m - 1) * m + order[conv]]) < LANCZOS_TOL))
                conv++;
            const int enough = conv == want || (conv && fabs(theta[order[conv - 1]]) < floor);
            if (!enough && !exhausted && full && restarts == LANCZOS_RESTARTS) {
                *resid = 0;
                for (int c = 0; c < want && c < m; c++)
                    *resid = fmax(*resid, fabs(L->beta[j] * s[(m - 1) * m + order[c]]));
                found = -2;
                goto done;
            }
            if (enough || exhausted) {
                for (int c = 0; c < conv; c++) { /* Ritz vector = V^T s_c */
                    double *x = L->ritz + (int64_t)c * n;
                    for (int r2 = 0; r2 < m; r2++) L->h[r2] = s[r2 * m + order[c]];
                    cblas_dgemv(CblasRowMajor, CblasTrans, m, (int)n, 1.0, v, (int)n, L->h, 1, 0.0, x, 1);
                    double nx = cblas_dnrm2((int)n, x, 1);
                    cblas_dscal((int)n, 1 / nx, x, 1);
                    L->rval[c] = theta[order[c]];
                }
                found = conv;
                break;
            }
            if (full) { /* thick restart: rows 0..keep-1 = V^T s_c, row keep = the residual */
                for (int r2 = 0; r2 < m; r2++)
                    for (int c = 0; c < keep; c++) sk[r2 * keep + c] = s[r2 * m + order[c]];
                for (int64_t c0 = 0; c0 < n; c0 += CHUNK) {
                    const int cb = (int)(n - c0 < CHUNK ? n - c0 : CHUNK);
                    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, keep, cb, m, 1.0, sk, keep, v + c0, (int)n,
                                0.0, rot, cb);
                    for (int c = 0; c < keep; c++)
                        memcpy(v + (int64_t)c * n + c0, rot + (int64_t)c * cb, sizeof *rot * (size_t)cb);
                }
                for (int c = 0; c < keep; c++) {
                    L->alpha[c] = theta[order[c]];
                    L->arrow[c] = L->beta[j] * s[(m - 1) * m + order[c]];
                }
                cblas_dcopy((int)n, w, 1, v + (int64_t)keep * n, 1);
                cblas_dscal((int)n, 1 / L->beta[j], v + (int64_t)keep * n, 1);
                k = keep, j = keep - 1, restarts++;
                continue;
            }
        }
        cblas_dcopy((int)n, w, 1, v + (int64_t)m * n, 1);
        cblas_dscal((int)n, 1 / L->beta[j], v + (int64_t)m * n, 1);
    }
done:
    free(theta);
    free(s);
    free(sk);
    free(rot);
    free(order);
    return found;
}

/* Adds the new pairs to the locked ones, keeps the nev largest by magnitude; returns how many of
 * the new pairs were kept. */
static int lock_pairs(lanczos *L, int found) {
    int kept = 0;
    for (int c = 0; c < found; c++) {
        const double val = L->rval[c];
        int pos = L->nl;
        while (pos > 0 && (fabs(L->lval[pos - 1]) < fabs(val) ||
                           (fabs(L->lval[pos - 1]) == fabs(val) && L->lval[pos - 1] < val)))
            pos--;
        if (pos >= L->nev) continue;
        const int last = L->nl < L->nev ? L->nl : L->nev - 1; /* the slot the shift ends in */
        for (int q = last; q > pos; q--) {
            L->lval[q] = L->lval[q - 1];
            memcpy(L->locked + (int64_t)q * L->n, L->locked + (int64_t)(q - 1) * L->n, sizeof(double) * (size_t)L->n);
        }
        L->lval[pos] = val;
        memcpy(L->locked + (int64_t)pos * L->n, L->ritz + (int64_t)c * L->n, sizeof(double) * (size_t)L->n);
        if (L->nl < L->nev) L->nl++;
        kept++;
    }
    return kept;
}

/* Small n: all of T's eigenpairs from the dense matrix, the n_dcs of largest magnitude locked. */
static int diffmap_dense(lanczos *L, nbs_error *err) {
    const int64_t n = L->n;
    const nbs_graph *t = L->t;
    double *a = nbs_calloc((size_t)(n * n), sizeof *a, err);          /* [n x n] T */
    double *s = a ? nbs_malloc(sizeof *s * (size_t)(n * n), err) : NULL; /* [n x n] eigenvectors, columns */
    double *theta = s ? nbs_malloc(sizeof *theta * (size_t)n, err) : NULL; /* [n] */
    int *order = theta ? nbs_malloc(sizeof *order * (size_t)n, err) : NULL; /* [n] */
    int rc = NBS_ERR_NOMEM;
    if (!order) goto done;
    for (int64_t i = 0; i < n; i++)
        for (int64_t e = t->indptr[i]; e < t->indptr[i + 1]; e++) a[i * n + t->indices[e]] = t->weights[e];
    if (sym_eig(a, (int)n, theta, s, order)) {
        rc = nbs_error_set(err, NBS_ERR_NUMERIC, "diffusion map: the dense symmetric eigensolver failed on the %lld x "
                           "%lld transition matrix", (long long)n, (long long)n);
        goto done;
    }
    for (int c = 0; c < L->nev; c++) {
        L->lval[c] = theta[order[c]];
        for (int64_t i = 0; i < n; i++) L->locked[(int64_t)c * n + i] = s[i * n + order[c]];
    }
    L->nl = L->nev;
    rc = NBS_OK;
done:
    free(a);
    free(s);
    free(theta);
    free(order);
    return rc;
}

int nbs_traj_diffmap(const nbs_graph *kernel, int n_dcs, uint64_t seed, double *evecs, double *evals, nbs_error *err) {
    const int64_t n = kernel->n, nnz = kernel->indptr[n];
    if (n_dcs < 1 || n_dcs > 100 || n_dcs >= n)
        return nbs_error_set(err, NBS_ERR_INPUT, "diffusion map: %d components need more than %lld cells; lower "
                             "trajectory.n_dcs", n_dcs, (long long)n);
    nbs_nn_blas_serial();
    nbs_graph t = {n, (int64_t *)kernel->indptr, (int64_t *)kernel->indices, NULL}; /* T on W's pattern */
    double *q = nbs_malloc(sizeof *q * (size_t)n, err); /* [n] density q_i, then z_i */
    t.weights = q ? nbs_malloc(sizeof *t.weights * (size_t)(nnz ? nnz : 1), err) : NULL; /* [nnz] T */
    lanczos L = {&t, n, n_dcs, NULL, NULL, 0, NULL, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    L.mmax = 60 + 20 * n_dcs;
    if (L.mmax > n) L.mmax = (int)n;
    int rc = NBS_ERR_NOMEM;
    if (!t.weights) goto done;
    L.locked = nbs_malloc(sizeof(double) * (size_t)n * (size_t)n_dcs, err);
    L.ritz = nbs_malloc(sizeof(double) * (size_t)n * (size_t)n_dcs, err);
    L.lval = nbs_malloc(sizeof(double) * (size_t)n_dcs, err);
    L.rval = nbs_malloc(sizeof(double) * (size_t)n_dcs, err);
    L.v = nbs_malloc(sizeof(double) * (size_t)n * (size_t)(L.mmax + 1), err);
    L.alpha = nbs_malloc(sizeof(double) * (size_t)L.mmax, err);
    L.beta = nbs_malloc(sizeof(double) * (size_t)L.mmax, err);
    L.arrow = nbs_malloc(sizeof(double) * (size_t)L.mmax, err);
    L.h = nbs_malloc(sizeof(double) * (size_t)(L.mmax + n_dcs), err);
    L.w = nbs_malloc(sizeof(double) * (size_t)n, err);
    if (!L.locked || !L.ritz || !L.lval || !L.rval || !L.v || !L.alpha || !L.beta || !L.arrow || !L.h || !L.w)
        goto done;
    /* density normalisation, then the symmetric form */
    for (int64_t i = 0; i < n; i++) {
        q[i] = 0;
        for (int64_t e = kernel->indptr[i]; e < kernel->indptr[i + 1]; e++) q[i] += kernel->weights[e];
        if (!(q[i] > 0)) {
            rc = nbs_error_set(err, NBS_ERR_INPUT, "diffusion map: cell %lld has no neighbour with a positive kernel "
                               "weight; its embedding may be non-finite or far from every other cell", (long long)i + 1);
            goto done;
        }
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t e = kernel->indptr[i]; e < kernel->indptr[i + 1]; e++)
            t.weights[e] = kernel->weights[e] / (q[i] * q[kernel->indices[e]]);
    for (int64_t i = 0; i < n; i++) {
        double zs = 0;
        for (int64_t e = t.indptr[i]; e < t.indptr[i + 1]; e++) zs += t.weights[e];
        q[i] = sqrt(zs);
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t e = t.indptr[i]; e < t.indptr[i + 1]; e++) t.weights[e] /= q[i] * q[t.indices[e]];
    if (n <= DIFFMAP_DENSE_MAX) {
        rc = diffmap_dense(&L, err);
        if (rc) goto done;
    } else {
        int runs = 0, done_ = 0;
        double resid = 0;
        while (!done_ && runs < LANCZOS_RUNS) {
            gsl_rng *r = nbs_stream_rng(seed, NBS_STREAM_DIFFMAP, (uint64_t)runs, err);
            if (!r) goto done;
            /* with n_dcs pairs held, a fresh start looks for any pair above the smallest of them */
            const int checking = L.nl == n_dcs;
            const int found = lanczos_run(&L, checking ? n_dcs : n_dcs - L.nl, checking ? fabs(L.lval[n_dcs - 1]) : 0,
                                          r, &resid);
            gsl_rng_free(r);
            runs++;
            if (found == -1) {
                rc = nbs_error_set(err, NBS_ERR_NOMEM, "diffusion map: out of memory");
                goto done;
            }
            if (found == -2) {
                rc = nbs_error_set(err, NBS_ERR_NUMERIC, "diffusion map: the eigensolver did not converge in %d "
                                   "restarts of %d Lanczos steps (%d of %d components found, residual %.2g above %g): "
                                   "the leading eigenvalues are too close together; lower trajectory.n_dcs",
                                   LANCZOS_RESTARTS, L.mmax, L.nl, n_dcs, resid, LANCZOS_TOL);
                goto done;
            }
            const int kept = lock_pairs(&L, found);
            /* finished when a fresh start finds nothing above the n_dcs pairs held */
            done_ = checking && !kept;
        }
        if (!done_) { /* each run locks a pair orthogonal to those held: only a repeat above 30 gets here */
            rc = nbs_error_set(err, NBS_ERR_NUMERIC, "diffusion map: the eigensolver still found new pairs after %d "
                               "runs (an eigenvalue repeated more often than that, e.g. as many connected components; "
                               "%d of %d components held); lower trajectory.n_dcs", LANCZOS_RUNS, L.nl, n_dcs);
            goto done;
        }
    }
    /* decreasing by value among the pairs of largest magnitude; unit vectors, largest entry positive */
    int idx[100];
    for (int c = 0; c < n_dcs; c++) idx[c] = c;
    for (int a = 1; a < n_dcs; a++) {
        int c = idx[a], b = a;
        while (b > 0 && L.lval[idx[b - 1]] < L.lval[c]) idx[b] = idx[b - 1], b--;
        idx[b] = c;
    }
    for (int c = 0; c < n_dcs; c++) {
        const double *x = L.locked + (int64_t)idx[c] * n;
        evals[c] = L.lval[idx[c]];
        int64_t big = cblas_idamax((int)n, x, 1);
        const double sign = x[big] < 0 ? -1 : 1;
        for (int64_t i = 0; i < n; i++) evecs[i * n_dcs + c] = sign * x[i];
    }
    rc = NBS_OK;
done:
    free(q);
    free(t.weights);
    free(L.locked);
    free(L.ritz);
    free(L.lval);
    free(L.rval);
    free(L.v);
    free(L.alpha);
    free(L.beta);
    free(L.arrow);
    free(L.h);
    free(L.w);
    return rc;
}

/* ---- DPT ---- */

int64_t nbs_traj_dpt(const double *evecs, const double *evals, int64_t n, int n_dcs, const int32_t *component,
                     int64_t root, double *pseudotime) {
    double wt[100];
    for (int j = 0; j < n_dcs; j++) {
        const double l = evals[j];
        wt[j] = l < NBS_DPT_STATIONARY ? (l / (1 - l)) * (l / (1 - l)) : 1.0;
    }
    double top = 0;
    int64_t unreached = 0;
    for (int64_t i = 0; i < n; i++) {
        if (component && component[i] != component[root]) {
            pseudotime[i] = NAN;
            unreached++;
            continue;
        }
        double s = 0;
        for (int j = 0; j < n_dcs; j++) {
            const double dv = evecs[root * n_dcs + j] - evecs[i * n_dcs + j];
            s += wt[j] * dv * dv;
        }
        pseudotime[i] = sqrt(s);
        if (pseudotime[i] > top) top = pseudotime[i];
    }
    for (int64_t i = 0; i < n; i++)
        if (top > 0 && !isnan(pseudotime[i])) pseudotime[i] /= top;
    return unreached;
}

/* ---- PAGA ---- */

int nbs_traj_paga(const nbs_graph *knn, const int32_t *cluster, int n_clusters, double *out, nbs_error *err) {
    const int64_t n = knn->n;
    const size_t nc = (size_t)n_clusters;
    double *size = nbs_calloc(nc, sizeof *size, err);  /* [n_clusters] n_c */
    double *leave = nbs_calloc(nc, sizeof *leave, err); /* [n_clusters] e_c */
    if (!size || !leave) {
        free(size);
        free(leave);
        return NBS_ERR_NOMEM;
    }
    memset(out, 0, sizeof *out * nc * nc);
    for (int64_t i = 0; i < n; i++) {
        const int32_t a = cluster[i];
        size[a]++;
        leave[a] += (double)(knn->indptr[i + 1] - knn->indptr[i]);
        for (int64_t e = knn->indptr[i]; e < knn->indptr[i + 1]; e++) {
            const int32_t b = cluster[knn->indices[e]];
            if (a != b) out[(size_t)a * nc + (size_t)b]++, out[(size_t)b * nc + (size_t)a]++;
        }
    }
    for (size_t a = 0; a < nc; a++)
        for (size_t b = 0; b < nc; b++) {
            const double expected = (leave[a] * size[b] + leave[b] * size[a]) / (double)(n - 1);
            double *c = out + a * nc + b;
            if (a == b) *c = 0;
            else if (*c > 0) *c = expected > 0 ? fmin(1.0, *c / expected) : 1.0;
        }
    free(size);
    free(leave);
    return NBS_OK;
}

/* ---- wrap-around ---- */

int nbs_traj_edge_hops(const nbs_graph *g, const nbs_graph *e, int max_hops, int32_t *hops, nbs_error *err) {
    const int64_t n = g->n;
    int failed = 0;
#pragma omp parallel
    {
        /* per thread: the BFS queue [n], each vertex's depth [n] valid where seen[v] == source + 1 */
        int64_t *queue = malloc(sizeof *queue * (size_t)(n ? n : 1)), *seen = calloc((size_t)(n ? n : 1), sizeof *seen);
        int32_t *depth = malloc(sizeof *depth * (size_t)(n ? n : 1));
        if (!queue || !seen || !depth) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 64)
        for (int64_t i = 0; i < n; i++) {
            if (failed) continue;
            const int64_t e0 = e->indptr[i], e1 = e->indptr[i + 1];
            int64_t left = e1 - e0, head = 0, tail = 0;
            for (int64_t q = e0; q < e1; q++) hops[q] = e->indices[q] == i ? 0 : -1;
            /* a target is found when first reached: BFS depth is its hop count */
            queue[tail++] = i, seen[i] = i + 1, depth[i] = 0;
            while (head < tail && left > 0) {
                const int64_t v = queue[head++];
                if (depth[v] >= max_hops) break; /* the queue is in depth order */
                for (int64_t a = g->indptr[v]; a < g->indptr[v + 1]; a++) {
                    const int64_t u = g->indices[a];
                    if (seen[u] == i + 1) continue;
                    seen[u] = i + 1, depth[u] = depth[v] + 1, queue[tail++] = u;
                    for (int64_t q = e0; q < e1; q++)
                        if (e->indices[q] == u && hops[q] < 0) hops[q] = depth[u], left--;
                }
            }
        }
        free(queue);
        free(seen);
        free(depth);
    }
    if (failed) return nbs_error_set(err, NBS_ERR_NOMEM, "wrap-around: out of memory for the graph search");
    return NBS_OK;
}

/* Directed embedding edges between groups (group[i] < 0: none) into pairs (a <= b), those with
 * shortcuts only, most shortcuts first (ties: larger share, then a, b). */
static int cmp_wrap_pair(const void *p, const void *q) {
    const nbs_wrap_pair *x = p, *y = q;
    if (x->shortcuts != y->shortcuts) return x->shortcuts > y->shortcuts ? -1 : 1;
    const double sx = (double)x->shortcuts / (double)x->edges, sy = (double)y->shortcuts / (double)y->edges;
    if (sx != sy) return sx > sy ? -1 : 1;
    if (x->a != y->a) return x->a < y->a ? -1 : 1;
    return (x->b > y->b) - (x->b < y->b);
}

static int count_pairs(const nbs_graph *knn, const int32_t *hops, const int32_t *group, int n_groups,
                       nbs_wrap_pair **out, int *n_out, nbs_error *err) {
    const size_t ng = (size_t)n_groups;
    int64_t *cnt = nbs_calloc(2 * ng * ng + 1, sizeof *cnt, err); /* [2 x ng x ng] edges, shortcuts */
    if (!cnt) return NBS_ERR_NOMEM;
    for (int64_t i = 0; i < knn->n; i++)
        for (int64_t e = knn->indptr[i]; e < knn->indptr[i + 1]; e++) {
            int32_t a = group[i], b = group[knn->indices[e]];
            if (a < 0 || b < 0) continue;
            if (a > b) a = group[knn->indices[e]], b = group[i];
            const size_t at = (size_t)a * ng + (size_t)b;
            cnt[at]++;
            if (hops[e] < 0) cnt[ng * ng + at]++;
        }
    int m = 0;
    for (size_t x = 0; x < ng * ng; x++) m += cnt[ng * ng + x] > 0;
    *out = nbs_malloc(sizeof **out * (size_t)(m ? m : 1), err);
    if (!*out) {
        free(cnt);
        return NBS_ERR_NOMEM;
    }
    *n_out = 0;
    for (size_t x = 0; x < ng * ng; x++)
        if (cnt[ng * ng + x] > 0)
            (*out)[(*n_out)++] = (nbs_wrap_pair){(int)(x / ng), (int)(x % ng), cnt[ng * ng + x], cnt[x]};
    qsort(*out, (size_t)*n_out, sizeof **out, cmp_wrap_pair);
    free(cnt);
    return NBS_OK;
}

/* The verdict from the pairs of one grouping; names (NULL: clusters by number). */
static void wrap_verdict(nbs_wraparound *w, const nbs_wrap_pair *pairs, int n_pairs, char *const *names) {
    size_t used = 0;
    char *v = w->verdict;
    const size_t cap = sizeof w->verdict;
    int named = 0;
    for (int p = 0; p < n_pairs && used < cap - 200; p++) {
        const nbs_wrap_pair *q = pairs + p;
        const double share = (double)q->shortcuts / (double)q->edges;
        if (q->shortcuts < NBS_WRAP_MIN_EDGES || share < w->min_share) continue;
        char a[96], b[96];
        if (names) snprintf(a, sizeof a, "%s", names[q->a]), snprintf(b, sizeof b, "%s", names[q->b]);
        else snprintf(a, sizeof a, "cluster %d", q->a), snprintf(b, sizeof b, "cluster %d", q->b);
        if (q->a != q->b)
            used += (size_t)snprintf(v + used, cap - used, "%sbranches %s and %s meet in the embedding but not in the "
                                     "data (%lld shortcut edges, %.0f%% of their edges)", named ? "; " : "", a, b,
                                     (long long)q->shortcuts, 100 * share);
        else
            used += (size_t)snprintf(v + used, cap - used, "%sparts of %s far apart in the data meet in the embedding "
                                     "(%lld shortcut edges, %.0f%% of its edges)", named ? "; " : "", a,
                                     (long long)q->shortcuts, 100 * share);
        named++;
    }
    w->wraps = named > 0;
    if (!named)
        snprintf(v, cap, "no wrap-around: %.2f%% of the embedding edges are shortcuts (more than %d steps apart in the "
                 "reference graph), and no pair of %s has %d of them making up %.0f%% of its edges",
                 100 * w->fraction, w->hops, names ? "labels" : "clusters", NBS_WRAP_MIN_EDGES, 100 * w->min_share);
}

int nbs_traj_wraparound(nbs_trajectory *t, const float *ref, int ref_dims, const nbs_trajectory_config *c,
                        char *const *labels, nbs_error *err) {
    nbs_wraparound *w = &t->wrap;
    const int64_t n = t->n, m = t->knn.indptr[n];
    w->hops = c->shortcut_hops;
    w->min_share = c->wrap_share;
    w->ref_dims = ref_dims;
    nbs_graph rk = {0}, rs = {0};
    int32_t *codes = NULL;
    int64_t floored;
    int rc = nbs_graph_knn(ref, n, ref_dims, t->k - 1, NBS_METRIC_EUCLIDEAN, &t->neighbors, t->seed, &rk,
                           &t->ref_knn_info, err);
    /* the gauss kernel's pattern is the symmetrised k-NN graph: an edge in either direction */
    if (!rc) rc = nbs_traj_gauss_kernel(&rk, &rs, &floored, err);
    if (rc) goto done;
    rc = NBS_ERR_NOMEM;
    w->ref_hops = nbs_malloc(sizeof *w->ref_hops * (size_t)(m ? m : 1), err);
    w->score = nbs_malloc(sizeof *w->score * (size_t)(n ? n : 1), err);
    if (!w->ref_hops || !w->score) goto done;
    if ((rc = nbs_traj_edge_hops(&rs, &t->knn, w->hops, w->ref_hops, err))) goto done;
    w->n_edges = m, w->n_shortcuts = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t s = 0;
        for (int64_t e = t->knn.indptr[i]; e < t->knn.indptr[i + 1]; e++) s += w->ref_hops[e] < 0;
        const int64_t deg = t->knn.indptr[i + 1] - t->knn.indptr[i];
        w->score[i] = deg ? (double)s / (double)deg : 0;
        w->n_shortcuts += s;
    }
    w->fraction = m ? (double)w->n_shortcuts / (double)m : 0;
    if ((rc = count_pairs(&t->knn, w->ref_hops, t->cluster, t->n_clusters, &w->pairs, &w->n_pairs, err))) goto done;
    if (labels) {
        rc = NBS_ERR_NOMEM;
        codes = nbs_malloc(sizeof *codes * (size_t)(n ? n : 1), err);
        if (!codes) goto done;
        if ((rc = nbs_eval_label_codes(labels, n, codes, &w->n_labels, err))) goto done;
        rc = NBS_ERR_NOMEM;
        if (!(w->label_names = nbs_calloc((size_t)w->n_labels + 1, sizeof *w->label_names, err))) goto done;
        for (int64_t i = n - 1; i >= 0; i--)
            if (codes[i] >= 0) w->label_names[codes[i]] = labels[i];
        if ((rc = count_pairs(&t->knn, w->ref_hops, codes, w->n_labels, &w->label_pairs, &w->n_label_pairs, err)))
            goto done;
        wrap_verdict(w, w->label_pairs, w->n_label_pairs, w->label_names);
    } else {
        wrap_verdict(w, w->pairs, w->n_pairs, NULL);
    }
    w->computed = 1;
    rc = NBS_OK;
done:
    nbs_graph_free(&rk);
    nbs_graph_free(&rs);
    free(codes);
    return rc;
}

/* ---- the stage ---- */

/* The root: a barcode, or the cell of a label at the end of DC1 where that label lies (the
 * label's median DC1 below the median of all cells: its smallest DC1, else its largest), or
 * without either, the cell with the smallest DC1. */
static int choose_root(nbs_trajectory *t, const nbs_trajectory_config *c, char *const *barcodes, char *const *labels,
                       const char *label_column, nbs_error *err) {
    const int64_t n = t->n;
    const int dcs = t->n_dcs;
    if (c->root[0]) {
        for (int64_t i = 0; i < n; i++)
            if (!strcmp(barcodes[i], c->root)) {
                t->root = i;
                snprintf(t->root_rule, sizeof t->root_rule, "the cell %s (trajectory.root)", c->root);
                return NBS_OK;
            }
        return nbs_error_set(err, NBS_ERR_USAGE, "trajectory.root: '%s' is not the barcode of any of the %lld cells "
                             "(after the QC filters; barcodes look like '%s'); give one of them, or "
                             "trajectory.root_label", c->root, (long long)n, n ? barcodes[0] : "");
    }
    double *dc1 = nbs_malloc(sizeof *dc1 * (size_t)(n ? n : 1), err), *mine = NULL; /* [n] */
    if (!dc1) return NBS_ERR_NOMEM;
    for (int64_t i = 0; i < n; i++) dc1[i] = t->diffmap[i * dcs + 1];
    int rc = NBS_OK;
    if (!c->root_label[0]) {
        int64_t best = 0;
        for (int64_t i = 1; i < n; i++)
            if (dc1[i] < dc1[best]) best = i;
        t->root = best;
        snprintf(t->root_rule, sizeof t->root_rule, "the cell with the smallest first diffusion component (%s; no "
                 "trajectory.root or root_label given)", barcodes[best]);
        nbs_info("trajectory: no trajectory.root or trajectory.root_label: the root is %s, the cell with the smallest "
                 "first diffusion component", barcodes[best]);
        goto done;
    }
    if (!labels) {
        rc = nbs_error_set(err, NBS_ERR_USAGE, "trajectory.root_label '%s' needs labels: set input.label_column",
                           c->root_label);
        goto done;
    }
    mine = nbs_malloc(sizeof *mine * (size_t)(n ? n : 1), err);
    if (!mine) {
        rc = NBS_ERR_NOMEM;
        goto done;
    }
    int64_t m = 0, lo = -1, hi = -1;
    for (int64_t i = 0; i < n; i++)
        if (labels[i] && !strcmp(labels[i], c->root_label)) {
            mine[m++] = dc1[i];
            if (lo < 0 || dc1[i] < dc1[lo]) lo = i;
            if (hi < 0 || dc1[i] > dc1[hi]) hi = i;
        }
    if (!m) {
        char seen[512] = "";
        size_t used = 0;
        for (int64_t i = 0; i < n && used < 400; i++) {
            if (!labels[i]) continue;
            int dup = 0;
            for (int64_t j = 0; j < i && !dup; j++) dup = labels[j] && !strcmp(labels[j], labels[i]);
            if (!dup) used += (size_t)snprintf(seen + used, sizeof seen - used, "%s%s", used ? ", " : "", labels[i]);
        }
        rc = nbs_error_set(err, NBS_ERR_USAGE, "trajectory.root_label: no cell has the label '%s' in column '%s'; "
                           "its labels are: %s", c->root_label, label_column ? label_column : "?", seen);
        goto done;
    }
    gsl_sort(mine, 1, (size_t)m);
    const double label_median = gsl_stats_median_from_sorted_data(mine, 1, (size_t)m);
    memcpy(mine, dc1, sizeof *mine * (size_t)n);
    gsl_sort(mine, 1, (size_t)n);
    const double all_median = gsl_stats_median_from_sorted_data(mine, 1, (size_t)n);
    const int low = label_median < all_median;
    t->root = low ? lo : hi;
    snprintf(t->root_rule, sizeof t->root_rule, "%s, the '%s' cell with the %s first diffusion component (its %lld "
             "cells lie on that side of the median)", barcodes[t->root], c->root_label, low ? "smallest" : "largest",
             (long long)m);
done:
    free(dc1);
    free(mine);
    return rc;
}

int nbs_trajectory_compute(const float *z, int64_t n, int d, nbs_metric metric, const nbs_trajectory_config *c,
                           const nbs_neighbors_config *nb, char *const *barcodes, char *const *labels, const char *label_column, uint64_t seed,
                           nbs_trajectory *t, nbs_error *err) {
    memset(t, 0, sizeof *t);
    t->n = n;
    t->k = (int)c->k; /* the key's range is 2..10000 */
    t->metric = metric;
    t->resolution = c->resolution;
    t->n_dcs = c->n_dcs;
    if (nb) t->neighbors = *nb;
    else t->neighbors.method = NBS_KNN_EXACT;
    t->seed = seed;
    if (c->k >= n)
        return nbs_error_set(err, NBS_ERR_USAGE, "trajectory.k = %d neighbours (the cell itself included) needs more "
                             "cells, and there are %lld; lower trajectory.k", t->k, (long long)n);
    if (c->n_dcs >= n)
        return nbs_error_set(err, NBS_ERR_USAGE, "trajectory.n_dcs = %d needs more cells than components, and there "
                             "are %lld; lower trajectory.n_dcs", c->n_dcs, (long long)n);
    int rc = nbs_graph_knn(z, n, d, t->k - 1, metric, &t->neighbors, seed, &t->knn, &t->knn_info, err);
    if (!rc) {
        char how[320];
        nbs_knn_describe(&t->knn_info, how, sizeof how);
        nbs_info("trajectory: %d-NN graph %s", t->k - 1, how);
    }
    if (!rc) rc = nbs_traj_gauss_kernel(&t->knn, &t->kernel, &t->n_sigma_floored, err);
    if (rc) goto fail;
    if (t->n_sigma_floored)
        nbs_info("trajectory: %lld cells have %d - 1 duplicates as neighbours; their kernel width is floored at 1e-3 "
                 "of the mean", (long long)t->n_sigma_floored, t->k);
    t->cluster = nbs_malloc(sizeof *t->cluster * (size_t)n, err);
    t->component = nbs_malloc(sizeof *t->component * (size_t)n, err);
    t->diffmap = nbs_malloc(sizeof *t->diffmap * (size_t)n * (size_t)c->n_dcs, err);
    t->evals = nbs_malloc(sizeof *t->evals * (size_t)c->n_dcs, err);
    t->pseudotime = nbs_malloc(sizeof *t->pseudotime * (size_t)n, err);
    t->layout = nbs_malloc(sizeof *t->layout * (size_t)n * 2, err);
    rc = NBS_ERR_NOMEM;
    if (!t->cluster || !t->component || !t->diffmap || !t->evals || !t->pseudotime || !t->layout) goto fail;
    rc = nbs_graph_leiden(&t->kernel, c->resolution, nbs_stream_seed(seed, NBS_STREAM_CLUSTERS, 0, 0), t->cluster,
                          &t->n_clusters, err);
    if (!rc && !(t->paga = nbs_malloc(sizeof *t->paga * (size_t)t->n_clusters * (size_t)t->n_clusters, err)))
        rc = NBS_ERR_NOMEM;
    if (!rc) rc = nbs_traj_paga(&t->knn, t->cluster, t->n_clusters, t->paga, err);
    if (!rc) rc = nbs_graph_components(&t->kernel, NULL, t->component, &t->n_components, NULL, err);
    if (!rc) rc = nbs_traj_diffmap(&t->kernel, c->n_dcs, seed, t->diffmap, t->evals, err);
    if (!rc) rc = choose_root(t, c, barcodes, labels, label_column, err);
    if (rc) goto fail;
    t->n_unreached = nbs_traj_dpt(t->diffmap, t->evals, n, c->n_dcs, t->component, t->root, t->pseudotime);
    if (t->n_unreached)
        nbs_warn("trajectory: %lld of %lld cells are in another connected component of the neighbour graph than the "
                 "root (%lld components): they get no pseudotime (NaN)", (long long)t->n_unreached, (long long)n,
                 (long long)t->n_components);
    rc = nbs_graph_layout_fr(&t->kernel, nbs_stream_seed(seed, NBS_STREAM_LAYOUT, 0, 0), t->layout, err);
    if (!rc) return NBS_OK;
fail:
    nbs_trajectory_free(t);
    return rc;
}
