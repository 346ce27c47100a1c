/* Embedding quality measures: the randomized PCA and the streamed one against GSL's exact SVD,
 * kNN accuracy on toy clusters with known answers, and both together on real labelled data (Kang, PBMC 3k). */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gsl/gsl_linalg.h>
#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>

#include "nbsphere/evaluate.h"
#include "nbsphere/io.h"

/* Poisson counts from a 4-dimensional latent structure with decreasing scales, so the
 * spectrum has a clear top 4. */
static nbs_matrix *structured_counts(int64_t n, int64_t g, unsigned long seed) {
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, seed);
    const double scale[4] = {3, 2, 1.4, 1};
    double *w = malloc((size_t)g * 4 * sizeof *w);
    for (int64_t i = 0; i < g * 4; i++) w[i] = gsl_ran_gaussian(rng, 0.5);
    int32_t *ci = malloc((size_t)(n * g) * sizeof *ci), *gi = malloc((size_t)(n * g) * sizeof *gi);
    float *v = malloc((size_t)(n * g) * sizeof *v);
    int64_t nnz = 0;
    for (int64_t c = 0; c < n; c++) {
        double z[4];
        for (int j = 0; j < 4; j++) z[j] = gsl_ran_gaussian(rng, scale[j]);
        for (int64_t j = 0; j < g; j++) {
            double eta = 1.0;
            for (int q = 0; q < 4; q++) eta += w[j * 4 + q] * z[q];
            unsigned x = gsl_ran_poisson(rng, exp(fmin(eta, 6)));
            if (x) {
                ci[nnz] = c;
                gi[nnz] = j;
                v[nnz++] = x;
            }
        }
    }
    nbs_error err = {0};
    nbs_matrix *m = nbs_matrix_from_triplets(n, g, nnz, ci, gi, v, "structured", &err);
    assert_non_null(m);
    free(w);
    free(ci);
    free(gi);
    free(v);
    gsl_rng_free(rng);
    return m;
}

/* Exact reference: dense centred log1p(CP10k), GSL SVD; returns U*S [n x g] and S. */
static void exact_pca(const nbs_matrix *m, double *us, double *sv) {
    int64_t n = m->n_cells, g = m->n_genes;
    gsl_matrix *a = gsl_matrix_calloc(n, g), *v = gsl_matrix_alloc(g, g);
    gsl_vector *s = gsl_vector_alloc(g), *work = gsl_vector_alloc(g);
    for (int64_t c = 0; c < n; c++) {
        double lib = 0;
        for (int64_t k = m->indptr[c]; k < m->indptr[c + 1]; k++) lib += m->data[k];
        for (int64_t k = m->indptr[c]; k < m->indptr[c + 1]; k++)
            gsl_matrix_set(a, c, m->indices[k], log1p(1e4 * m->data[k] / lib));
    }
    for (int64_t j = 0; j < g; j++) {
        gsl_vector_view col = gsl_matrix_column(a, j);
        double mu = 0;
        for (int64_t c = 0; c < n; c++) mu += gsl_vector_get(&col.vector, c) / n;
        gsl_vector_add_constant(&col.vector, -mu);
    }
    assert_int_equal(gsl_linalg_SV_decomp(a, v, s, work), 0);
    for (int64_t c = 0; c < n; c++)
        for (int64_t j = 0; j < g; j++) us[c * g + j] = gsl_matrix_get(a, c, j) * gsl_vector_get(s, j);
    for (int64_t j = 0; j < g; j++) sv[j] = gsl_vector_get(s, j);
    gsl_matrix_free(a);
    gsl_matrix_free(v);
    gsl_vector_free(s);
    gsl_vector_free(work);
}

/* |cos| between column j of scores [n x k] and column j of ref [n x g] */
static double column_cos(const float *scores, int k, const double *ref, int64_t g, int64_t n, int j) {
    double ab = 0, aa = 0, bb = 0;
    for (int64_t i = 0; i < n; i++) {
        double a = scores[i * k + j], b = ref[i * g + j];
        ab += a * b;
        aa += a * a;
        bb += b * b;
    }
    return fabs(ab) / sqrt(aa * bb);
}

static void test_pca_matches_exact_svd(void **state) {
    (void)state;
    enum { N = 150, G = 60, K = 4 };
    nbs_matrix *m = structured_counts(N, G, 7);
    double *us = malloc(sizeof(double) * N * G), sv[G];
    exact_pca(m, us, sv);
    float *scores = malloc(sizeof(float) * N * K), *again = malloc(sizeof(float) * N * K);
    double var[K];
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, 42);
    nbs_error err = {0};
    assert_int_equal(nbs_eval_pca(m, K, 4, rng, scores, var, &err), NBS_OK);
    for (int j = 0; j < K; j++) {
        double exact = sv[j] * sv[j] / (N - 1);
        if (fabs(var[j] - exact) > 1e-3 * exact)
            print_message("component %d: variance %g, exact %g\n", j + 1, var[j], exact);
        assert_true(fabs(var[j] - exact) <= 1e-3 * exact);
        assert_true(column_cos(scores, K, us, G, N, j) > 1 - 1e-3);
    }
    /* the same seed gives the same scores, bit for bit */
    gsl_rng_set(rng, 42);
    assert_int_equal(nbs_eval_pca(m, K, 4, rng, again, NULL, &err), NBS_OK);
    assert_memory_equal(scores, again, sizeof(float) * N * K);
    /* another seed: the same components up to tolerance (signs are fixed, not random) */
    gsl_rng_set(rng, 43);
    assert_int_equal(nbs_eval_pca(m, K, 4, rng, again, NULL, &err), NBS_OK);
    for (int64_t i = 0; i < N * K; i++) assert_true(fabs(scores[i] - again[i]) < 1e-2 * (1 + fabs(scores[i])));
    gsl_rng_free(rng);
    free(us);
    free(scores);
    free(again);
    nbs_matrix_free(m);
}

/* When k + oversampling covers every gene the randomized SVD is exact. */
static void test_pca_full_rank_is_exact(void **state) {
    (void)state;
    enum { N = 50, G = 12, K = 12 };
    nbs_matrix *m = structured_counts(N, G, 9);
    double *us = malloc(sizeof(double) * N * G), sv[G], var[K];
    exact_pca(m, us, sv);
    float *scores = malloc(sizeof(float) * N * K);
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    nbs_error err = {0};
    assert_int_equal(nbs_eval_pca(m, K, 0, rng, scores, var, &err), NBS_OK);
    for (int j = 0; j < K; j++) {
        assert_true(fabs(var[j] - sv[j] * sv[j] / (N - 1)) < 1e-9 * var[0]);
        assert_true(column_cos(scores, K, us, G, N, j) > 1 - 1e-9);
    }
    assert_int_equal(nbs_eval_pca(m, K + 1, 0, rng, scores, var, &err), NBS_ERR_USAGE);
    assert_non_null(strstr(err.msg, "13 components asked of a 50 x 12 matrix"));
    gsl_rng_free(rng);
    free(us);
    free(scores);
    nbs_matrix_free(m);
}

/* An in-memory matrix as a row source, visited rows [row0, row1) `block` rows at a time (block
 * boundaries that fall inside the streamed PCA's 256-row rank updates and across them). */
typedef struct {
    const nbs_matrix *m;
    int64_t row0, row1, block;
} matrix_rows;

static int scan_matrix_rows(void *user, nbs_rows_visit visit, void *ctx, nbs_error *err) {
    const matrix_rows *r = user;
    for (int64_t a = r->row0; a < r->row1; a += r->block) {
        const int64_t n = r->row1 - a < r->block ? r->row1 - a : r->block;
        int64_t *indptr = malloc(sizeof *indptr * (size_t)(n + 1)); /* [n + 1] from 0 */
        for (int64_t i = 0; i <= n; i++) indptr[i] = r->m->indptr[a + i] - r->m->indptr[a];
        const nbs_matrix view = {.n_cells = n, .n_genes = r->m->n_genes, .nnz = indptr[n], .indptr = indptr,
                                 .indices = r->m->indices + r->m->indptr[a], .data = r->m->data + r->m->indptr[a]};
        int st = visit(ctx, &view, a, err);
        free(indptr);
        if (st) return st;
    }
    return NBS_OK;
}

static nbs_row_source matrix_source(matrix_rows *r) {
    return (nbs_row_source){r, r->m->n_cells, r->m->n_genes, scan_matrix_rows};
}

/* The largest |a_j - sign b_j| of column j of two [n x k] score matrices, the sign that of their
 * inner product, relative to the largest |b_j|. */
static double column_gap(const float *a, const float *b, int64_t n, int k, int j) {
    double ab = 0, gap = 0, big = 0;
    for (int64_t i = 0; i < n; i++) ab += (double)a[i * k + j] * b[i * k + j];
    const double sign = ab < 0 ? -1 : 1;
    for (int64_t i = 0; i < n; i++) {
        gap = fmax(gap, fabs(a[i * k + j] - sign * b[i * k + j]));
        big = fmax(big, fabs(b[i * k + j]));
    }
    return gap / big;
}

/* Out of core: the streamed PCA (covariance, eigenvectors) against the exact SVD and against the
 * in-memory randomized PCA on the same matrix. */
static void test_pca_stream_matches_in_memory(void **state) {
    (void)state;
    enum { N = 600, G = 60, K = 4 };
    nbs_matrix *m = structured_counts(N, G, 7);
    double *us = malloc(sizeof(double) * N * G), sv[G], var[K], var_mem[K];
    exact_pca(m, us, sv);
    float *scores = malloc(sizeof(float) * N * K), *mem = malloc(sizeof(float) * N * K);
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, 42);
    nbs_error err = {0};
    assert_int_equal(nbs_eval_pca(m, K, 4, rng, mem, var_mem, &err), NBS_OK);
    matrix_rows rows = {m, 0, N, 97};
    const nbs_row_source src = matrix_source(&rows);
    assert_int_equal(nbs_eval_pca_stream(&src, K, NULL, scores, var, &err), NBS_OK);
    for (int j = 0; j < K; j++) {
        const double exact = sv[j] * sv[j] / (N - 1);
        print_message("component %d: variance streamed %.9g, randomized %.9g, exact %.9g; scores gap to "
                      "randomized %.2e, |cos| to exact 1 - %.1e\n", j + 1, var[j], var_mem[j], exact,
                      column_gap(scores, mem, N, K, j), 1 - column_cos(scores, K, us, G, N, j));
        /* the eigenvalues of the covariance are the exact explained variances */
        assert_true(fabs(var[j] - exact) <= 1e-9 * exact);
        assert_true(column_cos(scores, K, us, G, N, j) > 1 - 1e-9);
        /* and the randomized PCA (4 power iterations) agrees: variances to 1e-6 (seen: 1e-9), scores
         * up to sign to 1e-3 of the component's largest (seen: 1.5e-5 for the 4th, 1e-7 for the 1st) */
        assert_true(fabs(var[j] - var_mem[j]) <= 1e-6 * exact);
        assert_true(column_gap(scores, mem, N, K, j) < 1e-3);
    }
    /* the sign convention: each component's largest-magnitude loading is positive, so the
     * scores do not depend on how the rows are blocked (the same bits up to summation order) */
    float *again = malloc(sizeof(float) * N * K);
    rows.block = 1000;
    assert_int_equal(nbs_eval_pca_stream(&src, K, NULL, again, NULL, &err), NBS_OK);
    for (int64_t i = 0; i < N * K; i++) assert_true(fabs(scores[i] - again[i]) <= 1e-5 * (1 + fabs(scores[i])));
    /* more components than genes */
    assert_int_equal(nbs_eval_pca_stream(&src, G + 1, NULL, again, NULL, &err), NBS_ERR_USAGE);
    assert_non_null(strstr(err.msg, "61 components asked of 60 genes"));
    gsl_rng_free(rng);
    free(us), free(scores), free(mem), free(again);
    nbs_matrix_free(m);
}

/* Two processes, each visiting its rows, their sums exchanged through the hook: each process's
 * scores are its rows of one process's. The "processes" run one after the other: the first run
 * of rows [0, h) only records its sums, the run of [h, N) records its own and adds those, the
 * second run of [0, h) adds the recorded sums of [h, N). */
typedef struct {
    double *record, *add; /* n doubles each, or NULL */
} fake_sum;

static int fake_sum_run(void *user, double *buf, int64_t n, nbs_error *err) {
    (void)err;
    fake_sum *f = user;
    for (int64_t i = 0; i < n; i++) {
        if (f->record) f->record[i] = buf[i];
        if (f->add) buf[i] += f->add[i];
    }
    return NBS_OK;
}

static void test_pca_stream_summed_over_processes(void **state) {
    (void)state;
    enum { N = 300, G = 40, K = 3, H = 130 };
    nbs_matrix *m = structured_counts(N, G, 11);
    float *one = malloc(sizeof(float) * N * K), *two = malloc(sizeof(float) * N * K);
    double *sums_a = malloc(sizeof(double) * (G * G + G + 1)), *sums_b = malloc(sizeof(double) * (G * G + G + 1));
    double var_one[K], var_two[K];
    nbs_error err = {0};
    matrix_rows all = {m, 0, N, 64}, a = {m, 0, H, 64}, b = {m, H, N, 64};
    const nbs_row_source src_all = matrix_source(&all), src_a = matrix_source(&a), src_b = matrix_source(&b);
    assert_int_equal(nbs_eval_pca_stream(&src_all, K, NULL, one, var_one, &err), NBS_OK);
    fake_sum f = {sums_a, NULL};
    nbs_sum_hook hook = {fake_sum_run, &f};
    assert_int_equal(nbs_eval_pca_stream(&src_a, K, &hook, two, NULL, &err), NBS_OK); /* records [0, h) */
    f = (fake_sum){sums_b, sums_a};
    assert_int_equal(nbs_eval_pca_stream(&src_b, K, &hook, two + H * K, var_two, &err), NBS_OK);
    f = (fake_sum){NULL, sums_b};
    assert_int_equal(nbs_eval_pca_stream(&src_a, K, &hook, two, NULL, &err), NBS_OK);
    for (int j = 0; j < K; j++) assert_true(fabs(var_one[j] - var_two[j]) <= 1e-12 * var_one[0]);
    for (int64_t i = 0; i < N * K; i++) assert_true(fabs(one[i] - two[i]) <= 1e-5 * (1 + fabs(one[i])));
    free(one), free(two), free(sums_a), free(sums_b);
    nbs_matrix_free(m);
}

/* C well-separated Gaussian clusters in d dimensions (centres along the axes, so they are
 * separated in angle too) */
static float *clusters(int64_t n, int d, int c, double spread, int32_t *labels, gsl_rng *rng) {
    float *x = malloc(sizeof(float) * n * d);
    for (int64_t i = 0; i < n; i++) {
        labels[i] = (int32_t)(i % c);
        for (int j = 0; j < d; j++)
            x[i * d + j] = (float)((j == labels[i] % d ? 10.0 : 0.0) + gsl_ran_gaussian(rng, spread));
    }
    return x;
}

static void test_knn_toy_clusters(void **state) {
    (void)state;
    enum { N = 600, D = 6, C = 4 };
    int32_t labels[N];
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, 1);
    float *x = clusters(N, D, C, 0.5, labels, rng);
    double acc, fold[5];
    nbs_error err = {0};
    assert_int_equal(nbs_eval_knn_accuracy(x, N, D, labels, 15, 5, NBS_METRIC_EUCLIDEAN, NULL, 0, rng, &acc,
                                           fold, NULL, &err), NBS_OK);
    assert_true(acc == 1.0);
    assert_int_equal(nbs_eval_knn_accuracy(x, N, D, labels, 15, 5, NBS_METRIC_COSINE, NULL, 0, rng, &acc,
                                           NULL, NULL, &err), NBS_OK);
    assert_true(acc == 1.0);
    /* random labels: chance level 1/C */
    for (int i = 0; i < N; i++) labels[i] = (int32_t)gsl_rng_uniform_int(rng, C);
    assert_int_equal(nbs_eval_knn_accuracy(x, N, D, labels, 15, 5, NBS_METRIC_EUCLIDEAN, NULL, 0, rng, &acc,
                                           fold, NULL, &err), NBS_OK);
    assert_true(fabs(acc - 1.0 / C) < 0.07);
    /* unlabelled cells (-1) take no part; too few labelled cells is an error */
    for (int i = 0; i < N; i++) labels[i] = i < 10 ? 0 : -1;
    assert_int_equal(nbs_eval_knn_accuracy(x, N, D, labels, 15, 5, NBS_METRIC_EUCLIDEAN, NULL, 0, rng, &acc,
                                           NULL, NULL, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "10 labelled cells are too few"));
    free(x);
    gsl_rng_free(rng);
}

/* Tight pairs sharing a label, far from other pairs with random labels. With k = 2 a cell
 * whose partner is in the training folds sees one vote for its own label and one for another:
 * the nearer neighbour (the partner) must win, giving about 0.8 + 0.2/C; breaking ties by
 * label code instead would give about half that. */
static void test_knn_tie_goes_to_nearest(void **state) {
    (void)state;
    enum { PAIRS = 300, C = 5 };
    float x[2 * PAIRS * 2];
    int32_t labels[2 * PAIRS];
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, 2);
    for (int p = 0; p < PAIRS; p++) {
        float cx = (float)(gsl_rng_uniform(rng) * 1000), cy = (float)(gsl_rng_uniform(rng) * 1000);
        int32_t lab = (int32_t)gsl_rng_uniform_int(rng, C);
        for (int h = 0; h < 2; h++) {
            x[(2 * p + h) * 2] = cx + (float)h * 0.01f;
            x[(2 * p + h) * 2 + 1] = cy;
            labels[2 * p + h] = lab;
        }
    }
    double acc;
    nbs_error err = {0};
    assert_int_equal(nbs_eval_knn_accuracy(x, 2 * PAIRS, 2, labels, 2, 5, NBS_METRIC_EUCLIDEAN, NULL, 0, rng,
                                           &acc, NULL, NULL, &err), NBS_OK);
    assert_true(acc > 0.74);
    gsl_rng_free(rng);
}

static void test_label_codes(void **state) {
    (void)state;
    char *labels[6] = {"B", "T", NULL, "B", "", "NK"};
    int32_t codes[6];
    int nc = 0;
    nbs_error err = {0};
    assert_int_equal(nbs_eval_label_codes(labels, 6, codes, &nc, &err), NBS_OK);
    assert_int_equal(nc, 3);
    int32_t expect[6] = {0, 1, -1, 0, -1, 2};
    assert_memory_equal(codes, expect, sizeof codes);
}

/* Test-only reader of a labels TSV (header; "barcode" first column), in the matrix's order. */
static int32_t *read_label_codes(const char *path, const char *column, const nbs_matrix *m) {
    size_t len = 0;
    char *text = tu_read_file(path, &len);
    assert_non_null(text);
    char **by_cell = calloc((size_t)m->n_cells, sizeof *by_cell);
    int col = -1, line_no = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"), line_no++) {
        char *fields[16];
        int nf = 0;
        for (char *p = line; nf < 16;) {
            fields[nf++] = p;
            char *tab = strchr(p, '\t');
            if (!tab) break;
            *tab = 0;
            p = tab + 1;
        }
        if (line_no == 0) {
            for (int i = 0; i < nf; i++)
                if (strcmp(fields[i], column) == 0) col = i;
            assert_true(col > 0);
            continue;
        }
        assert_true(col < nf);
        for (int64_t c = 0; c < m->n_cells; c++)
            if (!by_cell[c] && strcmp(m->barcodes[c], fields[0]) == 0) {
                by_cell[c] = fields[col];
                break;
            }
    }
    int32_t *codes = malloc((size_t)m->n_cells * sizeof *codes);
    int nc = 0;
    nbs_error err = {0};
    assert_int_equal(nbs_eval_label_codes(by_cell, m->n_cells, codes, &nc, &err), NBS_OK);
    for (int64_t c = 0; c < m->n_cells; c++) assert_true(codes[c] >= 0); /* every cell labelled */
    free(by_cell);
    free(text);
    return codes;
}

static double pca_knn(const char *dir, int64_t n_expect, int n_classes_min) {
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    int rc = nbs_io_read_10x_mtx_dir(tu_data(dir), &m, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, NBS_OK);
    assert_int_equal(m->n_cells, n_expect);
    char labels_path[4096];
    snprintf(labels_path, sizeof labels_path, "%s/cell_labels.tsv", tu_data(dir));
    int32_t *codes = read_label_codes(labels_path, "cell_type", m);
    int32_t max_code = 0;
    for (int64_t c = 0; c < m->n_cells; c++) max_code = codes[c] > max_code ? codes[c] : max_code;
    assert_true(max_code + 1 >= n_classes_min);
    float *pcs = malloc(sizeof(float) * (size_t)m->n_cells * 10);
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, 0);
    assert_int_equal(nbs_eval_pca(m, 10, 4, rng, pcs, NULL, &err), NBS_OK);
    double acc = 0;
    assert_int_equal(nbs_eval_knn_accuracy(pcs, m->n_cells, 10, codes, 15, 5, NBS_METRIC_EUCLIDEAN, NULL, 0,
                                           rng, &acc, NULL, NULL, &err), NBS_OK);
    print_message("%s: PCA-10 kNN accuracy %.4f\n", dir, acc);
    gsl_rng_free(rng);
    free(pcs);
    free(codes);
    nbs_matrix_free(m);
    return acc;
}

static void test_kang_pca_knn(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("kang_muscat/matrix.mtx.gz");
    assert_true(pca_knn("kang_muscat", 1556, 5) > 0.85);
}

static void test_pbmc3k_pca_knn(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("pbmc3k/matrix.mtx.gz");
    assert_true(pca_knn("pbmc3k", 2638, 9) > 0.88);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pca_matches_exact_svd),
        cmocka_unit_test(test_pca_full_rank_is_exact),
        cmocka_unit_test(test_pca_stream_matches_in_memory),
        cmocka_unit_test(test_pca_stream_summed_over_processes),
        cmocka_unit_test(test_knn_toy_clusters),
        cmocka_unit_test(test_knn_tie_goes_to_nearest),
        cmocka_unit_test(test_label_codes),
        cmocka_unit_test(test_kang_pca_knn),
        cmocka_unit_test(test_pbmc3k_pca_knn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
