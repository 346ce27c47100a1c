#include "nbsphere/evaluate.h"

#include <float.h>
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

/* log1p(CP10k) of cell i of m, the library being the cell's counts in m's genes: val[j] for its
 * j-th stored entry (a cell without counts stays at zero). Both PCAs transform with this. */
static void row_log1p_cp10k(const nbs_matrix *m, int64_t i, double *val) {
    double lib = 0;
    for (int64_t k = m->indptr[i]; k < m->indptr[i + 1]; k++) lib += m->data[k];
    for (int64_t k = m->indptr[i]; k < m->indptr[i + 1]; k++)
        val[k - m->indptr[i]] = lib > 0 ? log1p(1e4 * m->data[k] / lib) : 0.0;
}

static int log1p_cp10k(const nbs_matrix *m, centred_op *op, nbs_error *err) {
    op->val = nbs_malloc((size_t)(m->nnz ? m->nnz : 1) * sizeof *op->val, err);
    op->mu = nbs_calloc((size_t)m->n_genes, sizeof *op->mu, err);
    if (!op->val || !op->mu) return NBS_ERR_NOMEM;
    for (int64_t i = 0; i < m->n_cells; i++) {
        row_log1p_cp10k(m, i, op->val + m->indptr[i]);
        for (int64_t k = m->indptr[i]; k < m->indptr[i + 1]; k++) op->mu[m->indices[k]] += op->val[k];
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

/* ---- PCA streamed over the rows: covariance and its eigenvectors ---- */

/* LAPACK's symmetric eigensolver (MRRR), from OpenBLAS, which bundles LAPACK: Fortran calling
 * convention, the three character arguments' lengths passed last (gfortran's hidden arguments). */
extern void dsyevr_(const char *jobz, const char *range, const char *uplo, const int *n, double *a, const int *lda,
                    const double *vl, const double *vu, const int *il, const int *iu, const double *abstol, int *m,
                    double *w, double *z, const int *ldz, int *isuppz, double *work, const int *lwork, int *iwork,
                    const int *liwork, int *info, size_t jobz_len, size_t range_len, size_t uplo_len);

#define PCA_STREAM_ROWS 256 /* rows densified at a time for the covariance's rank update */

typedef struct {
    int64_t g;       /* genes */
    int pass;        /* 1: sums; 2: projection */
    double *sums;    /* [g*g + g + 1]: X^T X (lower triangle, row-major), then the gene sums, then the rows */
    double *dense;   /* [PCA_STREAM_ROWS x g] rows of log1p(CP10k), zeros included */
    double *val;     /* [g] one row's stored values */
    const double *v; /* [g x k] loadings (pass 2) */
    double *shift;   /* [k] mu^T V: the centring of every score */
    int k;
    float *scores;   /* [rows visited x k] */
    int64_t done;    /* rows projected so far */
} pca_stream;

static int pca_stream_visit(void *ctx, const nbs_matrix *block, int64_t first, nbs_error *err) {
    (void)first;
    (void)err;
    pca_stream *p = ctx;
    const int64_t g = p->g, n = block->n_cells;
    if (p->pass == 2) {
        for (int64_t i = 0; i < n; i++, p->done++) {
            row_log1p_cp10k(block, i, p->val);
            float *out = p->scores + p->done * p->k;
            double acc[NBS_PCA_STREAM_MAX_K];
            for (int c = 0; c < p->k; c++) acc[c] = -p->shift[c];
            for (int64_t e = block->indptr[i]; e < block->indptr[i + 1]; e++) {
                const double x = p->val[e - block->indptr[i]], *vg = p->v + (int64_t)block->indices[e] * p->k;
                for (int c = 0; c < p->k; c++) acc[c] += x * vg[c];
            }
            for (int c = 0; c < p->k; c++) out[c] = (float)acc[c];
        }
        return NBS_OK;
    }
    double *mu = p->sums + g * g;
    for (int64_t r0 = 0; r0 < n; r0 += PCA_STREAM_ROWS) {
        const int64_t m = n - r0 < PCA_STREAM_ROWS ? n - r0 : PCA_STREAM_ROWS;
        memset(p->dense, 0, sizeof *p->dense * (size_t)(m * g));
        for (int64_t i = 0; i < m; i++) {
            const int64_t row = r0 + i, at = block->indptr[row];
            row_log1p_cp10k(block, row, p->val);
            for (int64_t e = at; e < block->indptr[row + 1]; e++) {
                p->dense[i * g + block->indices[e]] = p->val[e - at];
                mu[block->indices[e]] += p->val[e - at];
            }
        }
        /* lower triangle of sums += D^T D */
        cblas_dsyrk(CblasRowMajor, CblasLower, CblasTrans, (int)g, (int)m, 1.0, p->dense, (int)g, 1.0, p->sums, (int)g);
    }
    p->sums[g * g + g] += (double)n;
    return NBS_OK;
}

/* The top k eigenvectors of the symmetric g x g matrix a (lower triangle, row-major; destroyed)
 * into v [g x k] (column c: the c-th largest eigenvalue's) and the eigenvalues, largest first,
 * into w (k). */
static int top_eigen(double *a, int g, int k, double *v, double *w, nbs_error *err) {
    /* a row-major lower triangle is the column-major upper one */
    const int il = g - k + 1, iu = g, ldz = g;
    const double unused = 0, abstol = DBL_MIN; /* DBL_MIN: LAPACK's choice for the most accurate eigenvalues */
    int found = 0, info = 0, lwork = -1, liwork = -1, iw_query = 0;
    double w_query = 0;
    double *z = nbs_malloc(sizeof *z * (size_t)g * (size_t)k, err); /* [k columns of g], column-major */
    double *wa = nbs_malloc(sizeof *wa * (size_t)g, err);              /* [g] */
    int *isuppz = nbs_malloc(sizeof *isuppz * (size_t)(2 * k), err);
    if (!z || !wa || !isuppz) {
        free(z), free(wa), free(isuppz);
        return NBS_ERR_NOMEM;
    }
    dsyevr_("V", "I", "U", &g, a, &g, &unused, &unused, &il, &iu, &abstol, &found, wa, z, &ldz, isuppz, &w_query,
            &lwork, &iw_query, &liwork, &info, 1, 1, 1);
    lwork = (int)w_query;
    liwork = iw_query;
    double *work = info ? NULL : nbs_malloc(sizeof *work * (size_t)(lwork > 1 ? lwork : 1), err);
    int *iwork = work ? nbs_malloc(sizeof *iwork * (size_t)(liwork > 1 ? liwork : 1), err) : NULL;
    int rc = info ? NBS_ERR_NUMERIC : iwork ? NBS_OK : NBS_ERR_NOMEM;
    if (!rc) {
        dsyevr_("V", "I", "U", &g, a, &g, &unused, &unused, &il, &iu, &abstol, &found, wa, z, &ldz, isuppz, work,
                &lwork, iwork, &liwork, &info, 1, 1, 1);
        if (info || found != k) rc = NBS_ERR_NUMERIC;
    }
    if (rc == NBS_ERR_NUMERIC)
        nbs_error_set(err, NBS_ERR_NUMERIC, "PCA: the eigendecomposition of the %d x %d gene covariance failed (LAPACK "
                      "dsyevr info %d, %d of %d eigenvalues found)", g, g, info, found, k);
    for (int c = 0; !rc && c < k; c++) { /* ascending from LAPACK: component c is column k - 1 - c */
        const double *col = z + (int64_t)(k - 1 - c) * g;
        w[c] = wa[k - 1 - c];
        for (int64_t j = 0; j < g; j++) v[j * k + c] = col[j];
    }
    free(z), free(wa), free(isuppz), free(work), free(iwork);
    return rc;
}

int nbs_eval_pca_stream(const nbs_row_source *src, int k, const nbs_sum_hook *sum, float *scores, double *variance,
                        nbs_error *err) {
    nbs_nn_blas_serial();
    const int64_t g = src->n_genes;
    if (k < 1 || k > g || k > NBS_PCA_STREAM_MAX_K)
        return nbs_error_set(err, NBS_ERR_USAGE, "PCA: %d components asked of %lld genes; give between 1 and %lld", k,
                             (long long)g, (long long)(g < NBS_PCA_STREAM_MAX_K ? g : NBS_PCA_STREAM_MAX_K));
    if (g > INT32_MAX / 2)
        return nbs_error_set(err, NBS_ERR_USAGE, "PCA: %lld genes are more than the eigensolver takes; select highly "
                             "variable genes (preprocess.n_top_genes)", (long long)g);
    pca_stream p = {.g = g, .pass = 1, .k = k, .scores = scores};
    p.sums = nbs_calloc((size_t)(g * g + g + 1), sizeof *p.sums, err);
    p.dense = p.sums ? nbs_malloc(sizeof *p.dense * (size_t)(PCA_STREAM_ROWS * g), err) : NULL;
    p.val = p.dense ? nbs_malloc(sizeof *p.val * (size_t)g, err) : NULL;
    double *v = p.val ? nbs_malloc(sizeof *v * (size_t)(g * k), err) : NULL; /* [g x k] */
    double *w = v ? nbs_malloc(sizeof *w * (size_t)k, err) : NULL;             /* [k] */
    p.shift = w ? nbs_calloc((size_t)k, sizeof *p.shift, err) : NULL;
    int rc = p.shift ? NBS_OK : NBS_ERR_NOMEM;
    if (!rc) rc = src->scan(src->user, pca_stream_visit, &p, err);
    if (!rc && sum) rc = sum->sum(sum->user, p.sums, g * g + g + 1, err);
    const double n = p.sums ? p.sums[g * g + g] : 0;
    if (!rc && (n < 1 || k > n))
        rc = nbs_error_set(err, NBS_ERR_USAGE, "PCA: %d components asked of %.0f cells; give between 1 and %.0f", k, n,
                           n < g ? n : (double)g);
    if (!rc) { /* centred covariance, lower triangle: (X^T X - n mu mu^T) / (n - 1) */
        double *mu = p.sums + g * g;
        for (int64_t j = 0; j < g; j++) mu[j] /= n;
        const double dof = n > 1 ? n - 1 : 1;
        for (int64_t i = 0; i < g; i++)
            for (int64_t j = 0; j <= i; j++) p.sums[i * g + j] = (p.sums[i * g + j] - n * mu[i] * mu[j]) / dof;
        rc = top_eigen(p.sums, (int)g, k, v, w, err);
    }
    if (!rc) {
        const double *mu = p.sums + g * g; /* top_eigen kept it: only the g x g part is overwritten */
        for (int c = 0; c < k; c++) {
            int64_t big = 0; /* the largest-magnitude loading positive (the first of equals) */
            for (int64_t j = 1; j < g; j++)
                if (fabs(v[j * k + c]) > fabs(v[big * k + c])) big = j;
            const double sign = v[big * k + c] < 0 ? -1.0 : 1.0;
            for (int64_t j = 0; j < g; j++) {
                v[j * k + c] *= sign;
                p.shift[c] += mu[j] * v[j * k + c];
            }
            if (variance) variance[c] = n > 1 && w[c] > 0 ? w[c] : 0.0;
        }
        p.pass = 2;
        p.v = v;
        rc = src->scan(src->user, pca_stream_visit, &p, err);
    }
    free(p.sums), free(p.dense), free(p.val), free(v), free(w), free(p.shift);
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
