#include "nbsphere/evaluate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* GSL's linear algebra header brings GSL's CBLAS prototypes, which clash with OpenBLAS's
 * cblas.h; they declare the same standard cblas_* functions, and the link resolves them to
 * OpenBLAS (GSL's own gslcblas is not linked). */
#include <gsl/gsl_cblas.h>
#include <gsl/gsl_linalg.h>
#include <gsl/gsl_randist.h>

#include "nbsphere/graph.h"
#include "nbsphere/nn.h"

/* ---- PCA by randomized SVD ---- */

/* The centred log1p(CP10k) matrix A = X - 1 mu^T, kept as X's sparse values plus mu. */
typedef struct {
    const nbs_matrix *m;
    double *val; /* log1p(1e4 * x / library) for each stored entry */
    double *mu;  /* per-gene mean of val over all cells (zeros included) */
} centred_op;

/* out [n x l] = A * in [g x l] = X in - 1 (mu^T in) */
static void apply_a(const centred_op *op, const double *in, int l, double *out, double *tmp) {
    const nbs_matrix *m = op->m;
    cblas_dgemv(CblasRowMajor, CblasTrans, (int)m->n_genes, l, 1.0, in, l, op->mu, 1, 0.0, tmp, 1);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m->n_cells; i++) {
        double *row = out + i * l;
        for (int c = 0; c < l; c++) row[c] = -tmp[c];
        for (int64_t k = m->indptr[i]; k < m->indptr[i + 1]; k++) {
            const double *src = in + (int64_t)m->indices[k] * l;
            double v = op->val[k];
            for (int c = 0; c < l; c++) row[c] += v * src[c];
        }
    }
}

/* out [g x l] = A^T in [n x l] = X^T in - mu (1^T in) */
static void apply_at(const centred_op *op, const double *in, int l, double *out, double *tmp) {
    const nbs_matrix *m = op->m;
    memset(out, 0, (size_t)m->n_genes * (size_t)l * sizeof *out);
    memset(tmp, 0, (size_t)l * sizeof *tmp);
    for (int64_t i = 0; i < m->n_cells; i++) {
        const double *row = in + i * l;
        for (int c = 0; c < l; c++) tmp[c] += row[c];
        for (int64_t k = m->indptr[i]; k < m->indptr[i + 1]; k++) {
            double *dst = out + (int64_t)m->indices[k] * l;
            double v = op->val[k];
            for (int c = 0; c < l; c++) dst[c] += v * row[c];
        }
    }
    cblas_dger(CblasRowMajor, (int)m->n_genes, l, -1.0, op->mu, 1, tmp, 1, out, l);
}

/* Replaces the columns of a [rows x cols] (row-major, rows >= cols) by an orthonormal basis of
 * their span: Householder QR, then the thin Q = H_0 ... H_{cols-1} [I; 0], built by applying
 * the reflectors last to first (as GSL's QR_unpack does, but without the rows x rows Q). */
static int orthonormalise(double *a, int64_t rows, int cols, double *thin, nbs_error *err) {
    gsl_matrix_view A = gsl_matrix_view_array(a, (size_t)rows, (size_t)cols);
    gsl_matrix_view T = gsl_matrix_view_array(thin, (size_t)rows, (size_t)cols);
    gsl_vector *tau = gsl_vector_alloc((size_t)cols);
    if (!tau) return nbs_error_set(err, NBS_ERR_NOMEM, "PCA: out of memory for a QR step");
    int status = gsl_linalg_QR_decomp(&A.matrix, tau);
    if (!status) {
        gsl_matrix_set_zero(&T.matrix);
        for (int c = 0; c < cols; c++) gsl_matrix_set(&T.matrix, (size_t)c, (size_t)c, 1.0);
        for (int i = cols - 1; i >= 0 && !status; i--) {
            gsl_vector_view col = gsl_matrix_column(&A.matrix, (size_t)i);
            gsl_vector_view h = gsl_vector_subvector(&col.vector, (size_t)i, (size_t)(rows - i));
            gsl_matrix_view sub = gsl_matrix_submatrix(&T.matrix, (size_t)i, (size_t)i,
                                                       (size_t)(rows - i), (size_t)(cols - i));
            status = gsl_linalg_householder_hm(gsl_vector_get(tau, (size_t)i), &h.vector,
                                               &sub.matrix);
        }
    }
    gsl_vector_free(tau);
    if (status)
        return nbs_error_set(err, NBS_ERR_NUMERIC, "PCA: QR re-orthonormalisation failed (GSL %d)",
                             status);
    memcpy(a, thin, (size_t)rows * (size_t)cols * sizeof *a);
    return NBS_OK;
}

static int log1p_cp10k(const nbs_matrix *m, centred_op *op, nbs_error *err) {
    op->val = nbs_malloc((size_t)(m->nnz ? m->nnz : 1) * sizeof *op->val, err);
    op->mu = nbs_calloc((size_t)m->n_genes, sizeof *op->mu, err);
    if (!op->val || !op->mu) return NBS_ERR_NOMEM;
    for (int64_t i = 0; i < m->n_cells; i++) {
        double lib = 0;
        for (int64_t k = m->indptr[i]; k < m->indptr[i + 1]; k++) lib += m->data[k];
        for (int64_t k = m->indptr[i]; k < m->indptr[i + 1]; k++) {
            op->val[k] = lib > 0 ? log1p(1e4 * m->data[k] / lib) : 0.0;
            op->mu[m->indices[k]] += op->val[k];
        }
    }
    for (int64_t g = 0; g < m->n_genes; g++) op->mu[g] /= (double)m->n_cells;
    return NBS_OK;
}

int nbs_eval_pca(const nbs_matrix *m, int k, int power_iters, gsl_rng *rng, float *scores,
                 double *variance, nbs_error *err) {
    nbs_nn_blas_serial();
    int64_t n = m->n_cells, g = m->n_genes, small = n < g ? n : g;
    if (k < 1 || k > small)
        return nbs_error_set(err, NBS_ERR_USAGE,
                             "PCA: %d components asked of a %lld x %lld matrix; give between 1 "
                             "and %lld",
                             k, (long long)n, (long long)g, (long long)small);
    if (power_iters < 0)
        return nbs_error_set(err, NBS_ERR_USAGE, "PCA: power_iters = %d must be >= 0", power_iters);
    /* oversampling by 10 columns makes the top-k subspace accurate with few power rounds */
    int l = (int)(k + 10 < small ? k + 10 : small);
    centred_op op = {m, NULL, NULL};
    double *y = nbs_malloc((size_t)n * (size_t)l * sizeof *y, err);
    double *z = nbs_malloc((size_t)g * (size_t)l * sizeof *z, err);
    double *thin = nbs_malloc((size_t)(n > g ? n : g) * (size_t)l * sizeof *thin, err);
    double *tmp = nbs_malloc((size_t)l * sizeof *tmp, err);
    double *v = nbs_malloc((size_t)l * (size_t)l * sizeof *v, err);
    double *s = nbs_malloc((size_t)l * sizeof *s, err);
    int rc = NBS_ERR_NOMEM;
    if (!y || !z || !thin || !tmp || !v || !s || log1p_cp10k(m, &op, err)) goto done;

    for (int64_t i = 0; i < g * l; i++) z[i] = gsl_ran_gaussian(rng, 1.0);
    apply_a(&op, z, l, y, tmp);
    if ((rc = orthonormalise(y, n, l, thin, err))) goto done;
    for (int it = 0; it < power_iters; it++) {
        apply_at(&op, y, l, z, tmp);
        if ((rc = orthonormalise(z, g, l, thin, err))) goto done;
        apply_a(&op, z, l, y, tmp);
        if ((rc = orthonormalise(y, n, l, thin, err))) goto done;
    }
    /* B = Q^T A is l x g; its transpose A^T Q = U S V^T gives A ~ (Q V) S U^T */
    apply_at(&op, y, l, z, tmp);
    {
        gsl_matrix_view Z = gsl_matrix_view_array(z, (size_t)g, (size_t)l);
        gsl_matrix_view V = gsl_matrix_view_array(v, (size_t)l, (size_t)l);
        gsl_vector_view S = gsl_vector_view_array(s, (size_t)l);
        gsl_vector_view W = gsl_vector_view_array(tmp, (size_t)l);
        int status = gsl_linalg_SV_decomp(&Z.matrix, &V.matrix, &S.vector, &W.vector);
        if (status) {
            rc = nbs_error_set(err, NBS_ERR_NUMERIC, "PCA: SVD of the projected matrix failed (GSL %d)",
                               status);
            goto done;
        }
    }
    /* scores = Q V[:, :k] diag(s) */
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, k, l, 1.0, y, l, v, l, 0.0,
                thin, k);
    for (int c = 0; c < k; c++) {
        double big = 0;
        for (int64_t i = 0; i < n; i++)
            if (fabs(thin[i * k + c]) > fabs(big)) big = thin[i * k + c];
        double sign = big < 0 ? -1.0 : 1.0;
        for (int64_t i = 0; i < n; i++) scores[i * k + c] = (float)(sign * s[c] * thin[i * k + c]);
        if (variance) variance[c] = n > 1 ? s[c] * s[c] / (double)(n - 1) : 0.0;
    }
    rc = NBS_OK;
done:
    free(op.val);
    free(op.mu);
    free(y);
    free(z);
    free(thin);
    free(tmp);
    free(v);
    free(s);
    return rc;
}

/* ---- labels ---- */

int nbs_eval_label_codes(char *const *labels, int64_t n, int32_t *codes, int *n_classes,
                         nbs_error *err) {
    /* classes are few (tens), so a linear scan of the distinct labels is enough */
    int64_t *first = nbs_malloc((size_t)(n ? n : 1) * sizeof *first, err);
    if (!first) return NBS_ERR_NOMEM;
    int nc = 0;
    for (int64_t i = 0; i < n; i++) {
        codes[i] = -1;
        if (!labels[i] || !labels[i][0]) continue;
        for (int c = 0; c < nc && codes[i] < 0; c++)
            if (strcmp(labels[first[c]], labels[i]) == 0) codes[i] = c;
        if (codes[i] < 0) {
            first[nc] = i;
            codes[i] = nc++;
        }
    }
    free(first);
    *n_classes = nc;
    return NBS_OK;
}

/* ---- kNN accuracy ---- */

typedef struct {
    const float *x;    /* embedding, rows scaled to unit length for cosine */
    int d;
    const int32_t *y;
    int n_classes;
    int k;
    const nbs_neighbors_config *nb;
    uint64_t seed;
} knn_setup;

/* Predicts each query from its k nearest training cells (nbs_knn_find); returns the number
 * correct, or -1 with err set. */
static int64_t knn_fold(const knn_setup *s, const int64_t *train, int64_t ntr, const int64_t *test,
                        int64_t nte, nbs_knn_info *info, nbs_error *err) {
    const int k = s->k;
    int64_t *nn = nbs_malloc((size_t)nte * (size_t)k * sizeof *nn, err);  /* [nte x k] positions in train */
    int *all_votes = nbs_calloc((size_t)(nte ? nte : 1) * (size_t)s->n_classes, sizeof *all_votes, err);
    int64_t correct = -1;
    if (!nn || !all_votes || nbs_knn_find(s->x, s->d, train, ntr, test, nte, k, 0, s->nb, s->seed, nn, NULL, info, err))
        goto done;
    correct = 0;
#pragma omp parallel for schedule(static) reduction(+ : correct)
    for (int64_t q = 0; q < nte; q++) {
        const int64_t *bi = nn + q * k;
        int *votes = all_votes + q * s->n_classes; /* each query its own, so threads share nothing */
        int have = 0, best = 0;
        while (have < k && bi[have] >= 0) have++;
        for (int j = 0; j < have; j++) {
            int c = s->y[train[bi[j]]];
            if (++votes[c] > best) best = votes[c];
        }
        /* the nearest neighbour whose label has the top vote count decides ties */
        int32_t pred = -1;
        for (int j = 0; j < have && pred < 0; j++)
            if (votes[s->y[train[bi[j]]]] == best) pred = s->y[train[bi[j]]];
        correct += pred == s->y[test[q]];
    }
done:
    free(nn);
    free(all_votes);
    return correct;
}

int nbs_eval_knn_accuracy(const float *embedding, int64_t n, int d, const int32_t *labels, int k,
                          int folds, nbs_metric metric, const nbs_neighbors_config *nb, uint64_t seed,
                          gsl_rng *rng, double *accuracy, double *fold_accuracy, nbs_knn_info *info,
                          nbs_error *err) {
    nbs_nn_blas_serial(); /* the folds' products run inside an OpenMP region */
    if (n < 1 || d < 1 || k < 1 || folds < 2)
        return nbs_error_set(err, NBS_ERR_USAGE,
                             "kNN accuracy: need cells (%lld), dimensions (%d), k >= 1 (%d) and "
                             "folds >= 2 (%d)",
                             (long long)n, d, k, folds);
    int64_t nl = 0;
    int n_classes = 0;
    for (int64_t i = 0; i < n; i++)
        if (labels[i] >= 0) {
            nl++;
            if (labels[i] + 1 > n_classes) n_classes = labels[i] + 1;
        }
    /* the smallest training set is all labelled cells but the largest fold */
    int64_t min_train = nl - (nl + folds - 1) / folds;
    if (nl < folds || min_train < k)
        return nbs_error_set(err, NBS_ERR_INPUT,
                             "kNN accuracy: %lld labelled cells are too few for %d folds with "
                             "k = %d neighbours; label more cells or lower k or folds",
                             (long long)nl, folds, k);
    int64_t *idx = nbs_malloc((size_t)nl * sizeof *idx, err);
    int64_t *train = nbs_malloc((size_t)nl * sizeof *train, err);
    float *x = nbs_malloc((size_t)n * (size_t)d * sizeof *x, err);
    int rc = NBS_ERR_NOMEM;
    if (!idx || !train || !x) goto done;
    memcpy(x, embedding, (size_t)n * (size_t)d * sizeof *x);
    for (int64_t i = 0; i < n * d; i++)
        if (!isfinite(x[i])) {
            rc = nbs_error_set(err, NBS_ERR_INPUT,
                               "kNN accuracy: embedding value at cell %lld, dimension %lld is not "
                               "finite",
                               (long long)(i / d) + 1, (long long)(i % d) + 1);
            goto done;
        }
    if (metric == NBS_METRIC_COSINE)
        for (int64_t i = 0; i < n; i++) {
            float norm = cblas_snrm2(d, x + i * d, 1);
            if (norm > 0) cblas_sscal(d, 1.0f / norm, x + i * d, 1);
        }
    nl = 0;
    for (int64_t i = 0; i < n; i++)
        if (labels[i] >= 0) idx[nl++] = i;
    gsl_ran_shuffle(rng, idx, (size_t)nl, sizeof *idx);
    knn_setup setup = {x, d, labels, n_classes, k, nb, seed};
    double sum = 0, found = 0;
    nbs_knn_info all = {0}, one;
    for (int f = 0; f < folds; f++) {
        int64_t lo = nl * f / folds, hi = nl * (f + 1) / folds, ntr = 0;
        for (int64_t i = 0; i < nl; i++)
            if (i < lo || i >= hi) train[ntr++] = idx[i];
        int64_t correct = knn_fold(&setup, train, ntr, idx + lo, hi - lo, &one, err);
        if (correct < 0) {
            rc = err->code;
            goto done;
        }
        /* the folds' training sets differ by a cell at most: one description, recall pooled */
        if (!f || one.method == NBS_KNN_APPROXIMATE) {
            all.method = one.method;
            all.auto_chosen = one.auto_chosen;
            all.n_ref = one.n_ref;
            all.k = one.k;
            all.branching = one.branching;
            all.checks = one.checks;
            all.start_checks = one.start_checks;
            all.target_recall = one.target_recall;
        }
        all.recall_queries += one.recall_queries;
        found += one.recall * (double)one.recall_queries;
        double a = (double)correct / (double)(hi - lo);
        if (fold_accuracy) fold_accuracy[f] = a;
        sum += a;
    }
    *accuracy = sum / folds;
    all.recall = all.recall_queries ? found / (double)all.recall_queries : 1.0;
    if (info) *info = all;
    rc = NBS_OK;
done:
    free(idx);
    free(train);
    free(x);
    return rc;
}
