/* Preprocessing: loess against its defining properties, a brute-force fit and R's loess; the
 * Seurat v3 statistic against a dense recomputation; filters on a hand-made matrix; pbmc3k,
 * whose top variable genes the Seurat PBMC 3k tutorial lists (same method, same 2638 cells x
 * 13714 genes). */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gsl/gsl_multifit.h>
#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>
#include <gsl/gsl_sort.h>

#include "nbsphere/io.h"
#include "nbsphere/preprocess.h"

static nbs_preprocess_config config(double min_counts, int64_t min_genes, int64_t min_cells,
                                    int64_t n_top) {
    nbs_preprocess_config c = {min_counts, min_genes, min_cells, n_top, 0.3, 1, NBS_HVG_SEURAT_V3};
    return c;
}

/* A degree-2 local fit reproduces any quadratic exactly, wherever the points lie. */
static void test_loess_reproduces_quadratic(void **state) {
    (void)state;
    enum { N = 60 };
    double x[N], y[N], f[N];
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, 3);
    for (int i = 0; i < N; i++) {
        x[i] = gsl_rng_uniform(rng) * 5 - 2;
        y[i] = 1.5 - 2 * x[i] + 0.7 * x[i] * x[i];
    }
    x[7] = x[8]; /* ties are allowed */
    y[7] = y[8];
    nbs_error err = {0};
    assert_int_equal(nbs_preprocess_loess(x, y, N, 0.3, NBS_LOESS_DIRECT, f, &err), NBS_OK);
    for (int i = 0; i < N; i++) assert_true(fabs(f[i] - y[i]) < 1e-9);
    /* cubic Hermite interpolation between exact values and slopes is exact for quadratics */
    assert_int_equal(nbs_preprocess_loess(x, y, N, 0.3, NBS_LOESS_INTERPOLATE, f, &err), NBS_OK);
    for (int i = 0; i < N; i++) assert_true(fabs(f[i] - y[i]) < 1e-9);
    gsl_rng_free(rng);
}

/* R's loess(y ~ x, span = 0.4, degree = 2) with its default interpolated surface, on data with
 * tied x at the ends and in the middle of the k-d tree (R uses the same netlib code as
 * scanpy's skmisc). Values printed by R 4.2 with 15 significant digits. */
static void test_loess_interpolate_matches_r(void **state) {
    (void)state;
    enum { N = 42 };
    const double x[N] = {1,  1,  1,  1,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10,
                         11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 21, 21, 21,
                         22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 40, 41.5};
    const double r[N] = {
        0.538757851513476,   0.538757851513476,  0.538757851513476,  0.538757851513476,
        0.538757851513476,   0.838673756777809,  1.04282520891964,   1.1527599365585,
        1.17399467808684,    1.08416370068472,   0.910529998679515,  0.646271798557969,
        0.311449920241414,   0.0263480829950726, -0.263782359556595, -0.518416064872194,
        -0.660306533330135,  -0.752591607724524, -0.742653099038279, -0.589242170539527,
        -0.367962426653545,  -0.0743961993824196, 0.292787569750898, 0.606298493746462,
        0.84072301377336,    0.84072301377336,   0.84072301377336,   0.84072301377336,
        1.02957229789278,    1.14859671712224,   1.15842745427562,   1.07873685710833,
        0.88070119253595,    0.594276104611131,  0.310617579403848,  0.0426362570029382,
        -0.229812173613553,  -0.454314974835241, -0.598692394333899, -0.651720350628976,
        0.745953026093866,   1.4383727536704};
    double y[N], f[N];
    for (int i = 0; i < N; i++) y[i] = sin(x[i] / 3) + (double)(((i + 1) * 7) % 5) / 10;
    nbs_error err = {0};
    assert_int_equal(nbs_preprocess_loess(x, y, N, 0.4, NBS_LOESS_INTERPOLATE, f, &err), NBS_OK);
    for (int i = 0; i < N; i++) {
        if (fabs(f[i] - r[i]) > 1e-9) print_message("x = %g: %.15g, R %.15g\n", x[i], f[i], r[i]);
        assert_true(fabs(f[i] - r[i]) < 1e-9);
    }
}

/* Brute force: for each point, sort all distances, take the q nearest, tricube weights on the
 * q-th distance, and a weighted quadratic fit by GSL's multifit. */
static void test_loess_matches_brute_force(void **state) {
    (void)state;
    enum { N = 40 };
    double x[N], y[N], f[N], d[N];
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, 11);
    for (int i = 0; i < N; i++) {
        x[i] = gsl_rng_uniform(rng) * 10;
        y[i] = sin(x[i]) + gsl_ran_gaussian(rng, 0.3);
    }
    nbs_error err = {0};
    double span = 0.4;
    assert_int_equal(nbs_preprocess_loess(x, y, N, span, NBS_LOESS_DIRECT, f, &err), NBS_OK);
    int q = (int)floor(N * span);
    gsl_matrix *X = gsl_matrix_alloc(N, 3), *cov = gsl_matrix_alloc(3, 3);
    gsl_vector *w = gsl_vector_alloc(N), *yv = gsl_vector_alloc(N), *c = gsl_vector_alloc(3);
    gsl_multifit_linear_workspace *ws = gsl_multifit_linear_alloc(N, 3);
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < N; j++) d[j] = fabs(x[j] - x[i]);
        double sorted[N];
        memcpy(sorted, d, sizeof sorted);
        gsl_sort(sorted, 1, N);
        double h = sorted[q - 1];
        for (int j = 0; j < N; j++) {
            double u = d[j] / h, t = (x[j] - x[i]);
            gsl_matrix_set(X, j, 0, 1);
            gsl_matrix_set(X, j, 1, t);
            gsl_matrix_set(X, j, 2, t * t);
            gsl_vector_set(w, j, u < 1 ? pow(1 - u * u * u, 3) : 0);
            gsl_vector_set(yv, j, y[j]);
        }
        double chisq;
        assert_int_equal(gsl_multifit_wlinear(X, w, yv, c, cov, &chisq, ws), 0);
        assert_true(fabs(gsl_vector_get(c, 0) - f[i]) < 1e-9);
    }
    gsl_multifit_linear_free(ws);
    gsl_matrix_free(X);
    gsl_matrix_free(cov);
    gsl_vector_free(w);
    gsl_vector_free(yv);
    gsl_vector_free(c);
    gsl_rng_free(rng);
}

static void test_loess_bad_span(void **state) {
    (void)state;
    double x[3] = {1, 2, 3}, f[3];
    nbs_error err = {0};
    assert_int_equal(nbs_preprocess_loess(x, x, 3, 0, NBS_LOESS_INTERPOLATE, f, &err), NBS_ERR_USAGE);
    assert_non_null(strstr(err.msg, "hvg_span"));
    assert_int_equal(nbs_preprocess_loess(x, x, 3, 1.5, NBS_LOESS_INTERPOLATE, f, &err), NBS_ERR_USAGE);
}

/* 300 cells, 200 Poisson genes (variance = mean) over a range of means, and 5 genes with the
 * same means but bursty (NB-like) counts; one Poisson gene also gets a single huge count,
 * which the sqrt(N) clip must tame. */
static nbs_matrix *toy_counts(int64_t n_cells, int64_t n_genes, const int *bursty,
                              int64_t outlier_gene) {
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, 5);
    int64_t cap = n_cells * n_genes, n = 0;
    int32_t *ci = malloc(cap * sizeof *ci), *gi = malloc(cap * sizeof *gi);
    float *v = malloc(cap * sizeof *v);
    for (int64_t c = 0; c < n_cells; c++)
        for (int64_t g = 0; g < n_genes; g++) {
            double mu = 0.05 * pow(1.03, (double)g);
            unsigned k = bursty[g] ? gsl_ran_negative_binomial(rng, 0.2 / (0.2 + mu), 0.2)
                                   : gsl_ran_poisson(rng, mu);
            if (g == outlier_gene && c == 17) k = 300;
            if (k) {
                ci[n] = c;
                gi[n] = g;
                v[n++] = k;
            }
        }
    nbs_error err = {0};
    nbs_matrix *m = nbs_matrix_from_triplets(n_cells, n_genes, n, ci, gi, v, "toy", &err);
    assert_non_null(m);
    free(ci);
    free(gi);
    free(v);
    gsl_rng_free(rng);
    return m;
}

static void test_seurat_v3_ranking_and_formula(void **state) {
    (void)state;
    enum { C = 300, G = 200 };
    int bursty[G] = {0};
    int64_t expect[5] = {80, 110, 130, 150, 180};
    for (int i = 0; i < 5; i++) bursty[expect[i]] = 1;
    nbs_matrix *m = toy_counts(C, G, bursty, 100);
    double mean[G], var[G], fit[G], nv[G];
    nbs_error err = {0};
    assert_int_equal(nbs_preprocess_seurat_v3(m, 0.3, mean, var, fit, nv, &err), NBS_OK);
    /* the bursty genes, and not the outlier gene, are the five most variable */
    int64_t top[5];
    assert_int_equal(nbs_preprocess_top_k(nv, G, 5, top), 5);
    for (int i = 0; i < 5; i++) assert_int_equal(top[i], expect[i]);
    /* dense recomputation of the standardised, clipped variance */
    double *dense = calloc((size_t)C * G, sizeof *dense);
    for (int64_t c = 0; c < C; c++)
        for (int64_t k = m->indptr[c]; k < m->indptr[c + 1]; k++)
            dense[c * G + m->indices[k]] = m->data[k];
    for (int g = 0; g < G; g++) {
        double mu = 0, ss = 0;
        for (int c = 0; c < C; c++) mu += dense[c * G + g] / C;
        for (int c = 0; c < C; c++) ss += pow(dense[c * G + g] - mu, 2);
        assert_true(fabs(mu - mean[g]) < 1e-12 * (1 + mu));
        assert_true(fabs(ss / (C - 1) - var[g]) < 1e-9 * (1 + var[g]));
        double sd = var[g] > 0 ? pow(10, fit[g] / 2) : 1, clip = mu + sqrt((double)C) * sd, z = 0;
        for (int c = 0; c < C; c++) z += pow(fmin(dense[c * G + g], clip) - mu, 2);
        z /= (C - 1) * sd * sd;
        assert_true(fabs(z - nv[g]) < 1e-8 * (1 + z));
    }
    /* the trend is close to the Poisson line log10 var = log10 mean */
    assert_true(fabs(fit[40] - log10(mean[40])) < 0.15);
    /* clipping matters for the outlier gene: unclipped it would top the list */
    assert_true(var[100] / pow(10, fit[100]) > 20);
    assert_true(nv[100] < nv[80] && nv[100] < 3);
    free(dense);
    nbs_matrix_free(m);
}

/* 6 cells x 5 genes:
 *   cell0: g0=5 g1=1        total 6, 2 genes
 *   cell1: g0=1             total 1 -> below min_counts 3
 *   cell2: g0=2 g2=2        total 4, 2 genes
 *   cell3: g3=9             total 9, 1 gene -> below min_genes 2
 *   cell4: g1=3 g2=1 g3=1   total 5, 3 genes
 *   cell5: (empty)          total 0 -> below min_counts
 * Kept cells 0, 2, 4. Cells expressing among them: g0 2, g1 2, g2 2, g3 1, g4 0;
 * min_cells 2 keeps g0, g1, g2. */
static nbs_matrix *hand_matrix(void) {
    int32_t c[] = {0, 0, 1, 2, 2, 3, 4, 4, 4};
    int32_t g[] = {0, 1, 0, 0, 2, 3, 1, 2, 3};
    float v[] = {5, 1, 1, 2, 2, 9, 3, 1, 1};
    nbs_error err = {0};
    nbs_matrix *m = nbs_matrix_from_triplets(6, 5, 9, c, g, v, "hand", &err);
    assert_non_null(m);
    return m;
}

static void test_filters_hand_example(void **state) {
    (void)state;
    nbs_matrix *m = hand_matrix();
    nbs_preprocess_config cfg = config(3, 2, 2, 0);
    nbs_preprocess_result *r = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_preprocess_run(m, &cfg, &r, &err), NBS_OK);
    assert_int_equal(r->n_cells, 3);
    assert_int_equal(r->cells[0], 0);
    assert_int_equal(r->cells[1], 2);
    assert_int_equal(r->cells[2], 4);
    assert_int_equal(r->n_genes, 3);
    for (int i = 0; i < 3; i++) assert_int_equal(r->genes[i], i);
    assert_int_equal(r->removed_cells_min_counts, 2);
    assert_int_equal(r->removed_cells_min_genes, 1);
    assert_int_equal(r->removed_genes_min_cells, 2);
    assert_int_equal(r->removed_genes_hvg, 0);
    assert_int_equal(r->matrix->n_cells, 3);
    assert_int_equal(r->matrix->n_genes, 3);
    assert_int_equal(r->matrix->nnz, 6);
    /* library over the kept genes; cell4 loses its g3 count */
    assert_true(r->library_size[0] == 6 && r->library_size[1] == 4 && r->library_size[2] == 4);
    assert_true(r->total_counts[2] == 5);
    char line[512];
    nbs_preprocess_summary(r, &cfg, line, sizeof line);
    assert_non_null(strstr(line, "kept 3 of 6 cells"));
    assert_non_null(strstr(line, "2 below min_counts=3"));
    nbs_preprocess_result_free(r);
    /* HVGs among three genes with a handful of cells: the trend degenerates but stays finite.
     * g0 (5, 2, 0 over the kept cells) is the most dispersed. */
    cfg.n_top_genes = 1;
    assert_int_equal(nbs_preprocess_run(m, &cfg, &r, &err), NBS_OK);
    assert_int_equal(r->n_genes, 1);
    assert_int_equal(r->genes[0], 0);
    assert_int_equal(r->removed_genes_hvg, 2);
    nbs_preprocess_result_free(r);
    nbs_matrix_free(m);
}

static void expect_empty(const nbs_matrix *m, nbs_preprocess_config cfg, const char *needle) {
    nbs_preprocess_result *r = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_preprocess_run(m, &cfg, &r, &err), NBS_ERR_INPUT);
    assert_null(r);
    if (!strstr(err.msg, needle)) print_message("message was: %s\n", err.msg);
    assert_non_null(strstr(err.msg, needle));
}

static void test_empty_result_errors(void **state) {
    (void)state;
    nbs_matrix *m = hand_matrix();
    expect_empty(m, config(100, 0, 0, 0), "min_counts = 100 removed all 6 cells (the largest cell total is 9)");
    expect_empty(m, config(0, 4, 0, 0), "lower preprocess.min_genes");
    expect_empty(m, config(0, 0, 7, 0), "min_cells = 7 removed all 5 genes");
    nbs_preprocess_config bad = config(0, 0, 0, -1);
    nbs_preprocess_result *r = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_preprocess_run(m, &bad, &r, &err), NBS_ERR_USAGE);
    assert_non_null(strstr(err.msg, "n_top_genes"));
    nbs_matrix_free(m);
}

static void test_top_genes_at_least_n_genes_keeps_all(void **state) {
    (void)state;
    int bursty[50] = {0};
    nbs_matrix *m = toy_counts(40, 50, bursty, -1);
    nbs_preprocess_config cfg = config(0, 0, 0, 50);
    nbs_preprocess_result *r = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_preprocess_run(m, &cfg, &r, &err), NBS_OK);
    assert_int_equal(r->n_genes, 50);
    assert_int_equal(r->removed_genes_hvg, 0);
    nbs_preprocess_result_free(r);
    cfg.n_top_genes = 1000;
    assert_int_equal(nbs_preprocess_run(m, &cfg, &r, &err), NBS_OK);
    assert_int_equal(r->n_genes, 50);
    assert_int_equal(r->matrix->nnz, m->nnz);
    nbs_preprocess_result_free(r);
    cfg.n_top_genes = 10;
    assert_int_equal(nbs_preprocess_run(m, &cfg, &r, &err), NBS_OK);
    assert_int_equal(r->n_genes, 10);
    assert_int_equal(r->removed_genes_hvg, 40);
    for (int i = 1; i < 10; i++) assert_true(r->genes[i] > r->genes[i - 1]);
    nbs_preprocess_result_free(r);
    nbs_matrix_free(m);
}

/* Giving the matrix up (preprocessing in place) changes nothing in the result; failing, it is
 * freed all the same (the sanitizer run checks for leaks). */
static void test_take_equals_run(void **state) {
    (void)state;
    int bursty[60] = {0};
    for (int g = 0; g < 60; g += 3) bursty[g] = 1;
    const nbs_preprocess_config cfgs[] = {config(0, 0, 0, 0), config(6, 3, 2, 0), config(6, 3, 2, 15)};
    for (int k = 0; k < 3; k++) {
        nbs_matrix *m = toy_counts(80, 60, bursty, 7);
        nbs_error err = {0};
        assert_int_equal(nbs_matrix_default_names(&m->barcodes, m->n_cells, "c", &err), 0);
        assert_int_equal(nbs_matrix_default_names(&m->gene_names, m->n_genes, "g", &err), 0);
        assert_int_equal(nbs_matrix_default_names(&m->gene_ids, m->n_genes, "id", &err), 0);
        nbs_preprocess_result *a = NULL, *b = NULL;
        if (nbs_preprocess_run(m, &cfgs[k], &a, &err)) fail_msg("%d: %s", k, err.msg);
        assert_int_equal(nbs_preprocess_take(m, &cfgs[k], &b, &err), NBS_OK);
        assert_ptr_equal(b->matrix, m);
        tu_expect_same_matrix(a->matrix, b->matrix);
        assert_int_equal(a->n_cells, b->n_cells);
        assert_int_equal(a->n_genes, b->n_genes);
        assert_memory_equal(a->cells, b->cells, sizeof *a->cells * (size_t)a->n_cells);
        assert_memory_equal(a->genes, b->genes, sizeof *a->genes * (size_t)a->n_genes);
        assert_memory_equal(a->library_size, b->library_size, sizeof *a->library_size * (size_t)a->n_cells);
        if (k == 2) assert_int_equal(b->n_genes, 15);
        if (k == 1) assert_true(b->n_cells < 80);
        nbs_preprocess_result_free(a);
        nbs_preprocess_result_free(b);
    }
    nbs_matrix *m = toy_counts(10, 60, bursty, -1);
    nbs_preprocess_result *r = NULL;
    nbs_error err = {0};
    nbs_preprocess_config none_left = config(1e9, 0, 0, 0);
    assert_int_equal(nbs_preprocess_take(m, &none_left, &r, &err), NBS_ERR_INPUT);
    assert_null(r);
}

static nbs_matrix *read_pbmc(void) {
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    int rc = nbs_io_read_10x_mtx_dir(tu_data("pbmc3k"), &m, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, NBS_OK);
    return m;
}

static void test_pbmc3k_zero_gene_and_hvg(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("pbmc3k/matrix.mtx.gz");
    nbs_matrix *m = read_pbmc();
    nbs_preprocess_config cfg = config(0, 0, 1, 0);
    nbs_preprocess_result *r = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_preprocess_run(m, &cfg, &r, &err), NBS_OK);
    assert_int_equal(r->n_cells, 2638);
    assert_int_equal(r->n_genes, 13713); /* the one all-zero gene */
    assert_int_equal(r->removed_genes_min_cells, 1);
    assert_true(r->library_size[0] == 2419.0);
    nbs_preprocess_result_free(r);

    cfg = config(0, 0, 0, 2000);
    assert_int_equal(nbs_preprocess_run(m, &cfg, &r, &err), NBS_OK);
    assert_int_equal(r->n_genes, 2000);
    assert_int_equal(r->matrix->n_genes, 2000);
    for (int i = 1; i < 2000; i++) assert_true(r->genes[i] > r->genes[i - 1]);
    nbs_preprocess_result_free(r);

    /* The Seurat tutorial lists PPBP, LYZ, S100A9, IGLL5, GNLY, FTL, PF4, FTH1, GNG11, FAU as
     * the ten most variable genes (vst = Seurat v3, on these same cells and genes). The first
     * nine agree in order; the tenth here is S100A8, as R's own loess also gives on this
     * matrix (the tutorial was made with an older Seurat). */
    double *nv = malloc((size_t)m->n_genes * sizeof *nv);
    assert_int_equal(nbs_preprocess_seurat_v3(m, 0.3, NULL, NULL, NULL, nv, &err), NBS_OK);
    const char *tutorial[9] = {"PPBP", "LYZ", "S100A9", "IGLL5", "GNLY",
                               "FTL",  "PF4", "FTH1",   "GNG11"};
    int64_t *order = malloc((size_t)m->n_genes * sizeof *order);
    for (int64_t g = 0; g < m->n_genes; g++) order[g] = g;
    for (int i = 0; i < 9; i++) { /* partial selection sort of the top nine */
        for (int64_t g = i + 1; g < m->n_genes; g++)
            if (nv[order[g]] > nv[order[i]]) {
                int64_t t = order[i];
                order[i] = order[g];
                order[g] = t;
            }
        assert_string_equal(m->gene_names[order[i]], tutorial[i]);
    }
    free(order);
    free(nv);
    nbs_matrix_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loess_reproduces_quadratic),
        cmocka_unit_test(test_loess_matches_brute_force),
        cmocka_unit_test(test_loess_interpolate_matches_r),
        cmocka_unit_test(test_loess_bad_span),
        cmocka_unit_test(test_seurat_v3_ranking_and_formula),
        cmocka_unit_test(test_filters_hand_example),
        cmocka_unit_test(test_empty_result_errors),
        cmocka_unit_test(test_top_genes_at_least_n_genes_keeps_all),
        cmocka_unit_test(test_take_equals_run),
        cmocka_unit_test(test_pbmc3k_zero_gene_and_hvg),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
