/* The model's maths: likelihoods against a straightforward dense evaluation, and every
 * backward (likelihood, layers, norms, latent, whole ELBO per parameter block) against
 * central finite differences. */
#include "testutil.h"

#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/likelihood.h"
#include "nbsphere/nn.h"
#include "nbsphere/train.h"
#include "nbsphere/vae.h"

/* A small count matrix with NB-like counts, one all-zero cell and a large count. */
static int big = 1;
static nbs_matrix *toy_counts(int n, int G, uint64_t seed) {
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, seed);
    int64_t cap = (int64_t)n * G, k = 0;
    int32_t *ci = malloc(sizeof(int32_t) * cap), *gi = malloc(sizeof(int32_t) * cap);
    float *v = malloc(sizeof(float) * cap);
    for (int i = 0; i < n; i++)
        for (int g = 0; g < G; g++) {
            if (i == 1) continue; /* an empty cell */
            unsigned x = gsl_ran_negative_binomial(r, 0.5, 0.3 + 0.1 * (g % 5));
            if (i == 2 && g == 3 && big) x = 5000;
            if (x) ci[k] = i, gi[k] = g, v[k++] = x;
        }
    nbs_error err = {0};
    nbs_matrix *m = nbs_matrix_from_triplets(n, G, k, ci, gi, v, "toy", &err);
    assert_non_null(m);
    free(ci), free(gi), free(v);
    gsl_rng_free(r);
    return m;
}

static double dense_nb(double x, double mu, double th) {
    return lgamma(x + th) - lgamma(th) - lgamma(x + 1) + th * log(th / (th + mu)) +
           (x > 0 ? x * log(mu / (th + mu)) : 0);
}

/* The straightforward evaluation: lgamma on every entry, probabilities in double. */
static double dense_loglik(const nbs_lik_batch *b, int i) {
    const float *a = b->logits + (int64_t)i * b->G;
    double mx = -INFINITY, z = 0, ll = 0;
    for (int g = 0; g < b->G; g++) mx = fmax(mx, a[g]);
    for (int g = 0; g < b->G; g++) z += exp(a[g] - mx);
    const nbs_matrix *X = b->X;
    for (int g = 0; g < b->G; g++) {
        double x = 0;
        for (int64_t p = X->indptr[i]; p < X->indptr[i + 1]; p++)
            if (X->indices[p] == g) x = X->data[p];
        const double mu = b->library[i] * exp(a[g] - mx) / z;
        const double th = b->log_theta ? exp(b->log_theta[(b->theta_per_cell ? (int64_t)i * b->G : 0) + g]) : 0;
        if (b->kind == NBS_LIK_POISSON) {
            ll += (x > 0 ? x * log(mu) : 0) - mu - lgamma(x + 1);
        } else if (b->kind == NBS_LIK_NB) {
            ll += dense_nb(x, mu, th);
        } else {
            const double pi = 1 / (1 + exp(-b->zi_logits[(int64_t)i * b->G + g]));
            ll += x > 0 ? log(1 - pi) + dense_nb(x, mu, th) : log(pi + (1 - pi) * exp(dense_nb(0, mu, th)));
        }
    }
    return ll;
}

typedef struct {
    nbs_matrix *X;
    int n, G;
    double *lib;
    float *logits, *lt, *zi;
    double *work, *rows; /* (NBS_LIK_WORK, G); (threads, 4, G) */
} lik_fixture;

static lik_fixture make_lik(int per_cell) {
    lik_fixture f = {0};
    f.n = 5;
    f.G = 23;
    f.X = toy_counts(f.n, f.G, 7);
    f.lib = calloc(f.n, sizeof(double));
    nbs_matrix_row_sums(f.X, f.lib);
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 3);
    int64_t nG = (int64_t)f.n * f.G;
    f.logits = malloc(sizeof(float) * nG);
    f.lt = malloc(sizeof(float) * nG);
    f.zi = malloc(sizeof(float) * nG);
    f.work = malloc(sizeof(double) * NBS_LIK_WORK * f.G);
    f.rows = malloc(sizeof(double) * NBS_LIK_THREAD_ROWS * f.G * omp_get_max_threads());
    for (int64_t k = 0; k < nG; k++) {
        f.logits[k] = (float)gsl_ran_gaussian(r, 1.0);
        f.lt[k] = (float)gsl_ran_gaussian(r, 1.0);
        f.zi[k] = (float)gsl_ran_gaussian(r, 1.5);
    }
    (void)per_cell;
    gsl_rng_free(r);
    return f;
}

static void free_lik(lik_fixture *f) {
    nbs_matrix_free(f->X);
    free(f->lib), free(f->logits), free(f->lt), free(f->zi), free(f->work), free(f->rows);
}

static double total(const nbs_lik_batch *b) {
    double *ll = malloc(sizeof(double) * b->n);
    double t = nbs_lik_eval(b, ll, 1.0f, NULL, NULL, NULL);
    free(ll);
    return t;
}

/* Sparse-aware evaluation equals the dense one; gradients equal central differences. */
static void check_likelihood(nbs_likelihood_kind kind, int per_cell) {
    lik_fixture f = make_lik(per_cell);
    nbs_lik_batch b = {kind, f.n, f.G, f.X, NULL, f.lib, f.logits, kind == NBS_LIK_POISSON ? NULL : f.lt,
                       per_cell, 1, NULL, kind == NBS_LIK_ZINB ? f.zi : NULL, f.work, f.rows, omp_get_max_threads()};
    double *ll = malloc(sizeof(double) * f.n);
    int64_t nG = (int64_t)f.n * f.G;
    float *da = malloc(sizeof(float) * nG), *dlt = malloc(sizeof(float) * nG), *dzi = malloc(sizeof(float) * nG);
    nbs_lik_eval(&b, ll, 1.0f, da, kind == NBS_LIK_POISSON ? NULL : dlt, kind == NBS_LIK_ZINB ? dzi : NULL);
    double worst_dense = 0, worst_grad = 0;
    for (int i = 0; i < f.n; i++) {
        double d = dense_loglik(&b, i);
        worst_dense = fmax(worst_dense, fabs(d - ll[i]) / fmax(1.0, fabs(d)));
    }
    assert_true(worst_dense < 1e-9);
    /* finite differences on every logit, (per-cell) log theta and zero-inflation logit */
    float *arrays[3] = {f.logits, kind == NBS_LIK_POISSON ? NULL : f.lt, kind == NBS_LIK_ZINB ? f.zi : NULL};
    float *grads[3] = {da, dlt, dzi};
    for (int a = 0; a < 3; a++) {
        if (!arrays[a]) continue;
        int64_t count = (a == 1 && !per_cell) ? f.G : nG;
        for (int64_t k = 0; k < count; k++) {
            const float h = 1e-2f, keep = arrays[a][k];
            arrays[a][k] = keep + h;
            double up = total(&b);
            arrays[a][k] = keep - h;
            double down = total(&b);
            arrays[a][k] = keep;
            double fd = (up - down) / (2 * h), an = 0;
            if (a == 1 && !per_cell)
                for (int i = 0; i < f.n; i++) an += grads[a][(int64_t)i * f.G + k];
            else
                an = grads[a][k];
            double e = fabs(fd - an) / fmax(1.0, fabs(fd));
            worst_grad = fmax(worst_grad, e);
        }
    }
    print_message("likelihood %d per_cell %d: dense rel err %.2e, worst gradient rel err %.2e\n", kind,
                  per_cell, worst_dense, worst_grad);
    assert_true(worst_grad < 2e-3);
    free(ll), free(da), free(dlt), free(dzi);
    free_lik(&f);
}

static void test_nb_likelihood(void **s) { (void)s; check_likelihood(NBS_LIK_NB, 0); check_likelihood(NBS_LIK_NB, 1); }
static void test_zinb_likelihood(void **s) { (void)s; check_likelihood(NBS_LIK_ZINB, 0); }
static void test_poisson_likelihood(void **s) { (void)s; check_likelihood(NBS_LIK_POISSON, 0); }

/* Per-gene theta in three rows (a batch's each; no cell uses the third), with the counts whose
 * terms come from the work rows' caches: 1 to 4 (Gamma's recurrence; 3 twice in row 0 at gene 4,
 * 4 twice in row 1 at gene 2, so that the second reads the first's), 2.5, 17 and 5000 (lgamma and
 * psi of theta). Each cell's value equals lgamma on every entry, and equals, bit for bit, the cell
 * evaluated alone (where nothing is cached by another cell); and a second batch with other theta
 * through the same work rows, left filled by the first, gives what it gives with fresh ones:
 * nothing cached for one batch is read by the next. */
static void test_nb_likelihood_theta_rows(void **s) {
    (void)s;
    enum { n = 4, G = 6, R = 3 };
    const int32_t ci[] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3};
    const int32_t gi[] = {0, 1, 2, 4, 0, 2, 3, 5, 1, 4, 0, 2, 5};
    const float v[] = {1, 2.5f, 17, 3, 1, 4, 5000, 1, 1, 3, 17, 4, 2};
    nbs_error err = {0};
    nbs_matrix *X = nbs_matrix_from_triplets(n, G, 13, ci, gi, v, "rows", &err);
    assert_non_null(X);
    double lib[n];
    nbs_matrix_row_sums(X, lib);
    float logits[n * G], lt[R * G];
    for (int k = 0; k < n * G; k++) logits[k] = (float)(0.3 * sin(k + 1.0));
    for (int k = 0; k < R * G; k++) lt[k] = (float)(0.5 * cos(k + 2.0));
    const int32_t trow[n] = {0, 1, 0, 1};
    double *work = malloc(sizeof(double) * NBS_LIK_WORK * R * G), *fresh = malloc(sizeof(double) * NBS_LIK_WORK * R * G);
    double *solo = malloc(sizeof(double) * NBS_LIK_WORK * R * G);
    double *rows = malloc(sizeof(double) * NBS_LIK_THREAD_ROWS * G * omp_get_max_threads());
    nbs_lik_batch b = {NBS_LIK_NB, n, G, X, NULL, lib, logits, lt, 0, R, trow, NULL, work, rows, omp_get_max_threads()};
    double ll[n], ll2[2];
    nbs_lik_eval(&b, ll, 1.0f, NULL, NULL, NULL);
    for (int i = 0; i < n; i++) {
        const float *a = logits + i * G;
        double mx = -INFINITY, z = 0, want = 0;
        for (int g = 0; g < G; g++) mx = fmax(mx, a[g]);
        for (int g = 0; g < G; g++) z += exp(a[g] - mx);
        for (int g = 0; g < G; g++) {
            double x = 0;
            for (int64_t p = X->indptr[i]; p < X->indptr[i + 1]; p++)
                if (X->indices[p] == g) x = X->data[p];
            const double th = exp((double)lt[trow[i] * G + g]);
            want += dense_nb(x, lib[i] * exp(a[g] - mx) / z, th);
        }
        assert_true(fabs(ll[i] - want) < 1e-9 * fmax(1.0, fabs(want)));
        /* alone: the same arithmetic on the same values, whatever another cell cached */
        const int64_t row_i = i;
        double alone;
        nbs_lik_batch bi = {NBS_LIK_NB, 1, G, X, &row_i, lib + i, a, lt, 0, R, trow + i, NULL, solo, rows, 1};
        nbs_lik_eval(&bi, &alone, 1.0f, NULL, NULL, NULL);
        assert_true(alone == ll[i]);
    }
    /* a second batch (cells 2, 3 as cells 0, 1) after a step has moved theta: through the work rows
     * the first batch filled, and through fresh ones */
    float lt2[R * G];
    for (int k = 0; k < R * G; k++) lt2[k] = lt[k] + 0.25f;
    const int64_t sub[2] = {2, 3};
    const int32_t trow2[2] = {0, 1};
    nbs_lik_batch b2 = {NBS_LIK_NB, 2, G, X, sub, lib + 2, logits + 2 * G, lt2, 0, R, trow2, NULL, work, rows,
                        omp_get_max_threads()};
    nbs_lik_eval(&b2, ll2, 1.0f, NULL, NULL, NULL);
    b2.work = fresh;
    double ll3[2];
    nbs_lik_eval(&b2, ll3, 1.0f, NULL, NULL, NULL);
    assert_true(ll2[0] == ll3[0] && ll2[1] == ll3[1]);
    assert_true(ll2[0] != ll[2] && ll2[1] != ll[3]); /* theta did move them */
    free(work), free(fresh), free(solo), free(rows);
    nbs_matrix_free(X);
}

/* Threads share the likelihood's preparation by genes (blocks of 64): 1, 2 and 3 threads give the
 * same bits, in the log-likelihood and both gradients, on 1003 genes (16 blocks, not a multiple of
 * the vector width: shares of 5 and 6 blocks, the last one short) and on 40 (one block, so the
 * other threads have no genes). */
static void check_likelihood_threads(int G) {
    enum { n = 8, R = 2, PER = 40 };
    int32_t ci[n * PER], gi[n * PER];
    float v[n * PER];
    int nnz = 0;
    for (int i = 0; i < n; i++) {
        const int first = nnz; /* the cell's entries so far: a gene appears once in a row */
        for (int k = 0; k < PER; k++) { /* counts 1 to 6 and a few large ones, at spread genes */
            const int32_t g = (int32_t)((k * 25 + i * 7) % G);
            int seen = 0;
            for (int q = first; q < nnz; q++) seen |= gi[q] == g;
            if (seen) continue;
            ci[nnz] = i;
            gi[nnz] = g;
            v[nnz++] = k % 9 == 8 ? 300.0f + k : (float)(1 + (k + i) % 6);
        }
    }
    nbs_error err = {0};
    nbs_matrix *X = nbs_matrix_from_triplets(n, G, nnz, ci, gi, v, "threads", &err);
    assert_non_null(X);
    double lib[n];
    nbs_matrix_row_sums(X, lib);
    float *logits = malloc(sizeof(float) * n * G), *lt = malloc(sizeof(float) * R * G);
    for (int k = 0; k < n * G; k++) logits[k] = (float)(0.3 * sin(k + 1.0));
    for (int k = 0; k < R * G; k++) lt[k] = (float)(0.7 * cos(k + 2.0));
    const int32_t trow[n] = {0, 1, 0, 1, 1, 0, 0, 1};
    const int before = omp_get_max_threads();
    double ll[3][n];
    float *da[3], *dlt[3];
    for (int t = 1; t <= 3; t++) {
        double *work = malloc(sizeof(double) * NBS_LIK_WORK * R * G);
        double *rows = malloc(sizeof(double) * NBS_LIK_THREAD_ROWS * G * t);
        da[t - 1] = malloc(sizeof(float) * n * G);
        dlt[t - 1] = malloc(sizeof(float) * n * G);
        nbs_lik_batch b = {NBS_LIK_NB, n, G, X, NULL, lib, logits, lt, 0, R, trow, NULL, work, rows, t};
        omp_set_num_threads(t);
        nbs_lik_eval(&b, ll[t - 1], 1.0f, da[t - 1], dlt[t - 1], NULL);
        free(work);
        free(rows);
    }
    omp_set_num_threads(before);
    for (int t = 1; t < 3; t++) {
        for (int i = 0; i < n; i++) assert_true(ll[0][i] == ll[t][i] && isfinite(ll[0][i]));
        assert_memory_equal(da[0], da[t], sizeof(float) * n * G);
        assert_memory_equal(dlt[0], dlt[t], sizeof(float) * n * G);
    }
    for (int t = 0; t < 3; t++) free(da[t]), free(dlt[t]);
    free(logits);
    free(lt);
    nbs_matrix_free(X);
}

static void test_nb_likelihood_threads(void **s) {
    (void)s;
    check_likelihood_threads(1003);
    check_likelihood_threads(40);
}

/* The sparse first layer at a width of two register blocks of 64 outputs and a remainder of 22:
 * the forward equals the plain sum over each row's entries, and the backward through the column
 * view (nbs_sparse_transpose) gives the row path's dW bit for bit (the same sums in the same order). */
static void test_sparse_layer_paths(void **s) {
    (void)s;
    enum { n = 7, in = 50, out = 150 };
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 5);
    int64_t indptr[n + 1] = {0};
    int32_t idx[n * in];
    float val[n * in];
    for (int i = 0, q = 0; i < n; i++, indptr[i] = q)
        for (int g = 0; g < in; g++)
            if (i != 3 && gsl_rng_uniform(r) < 0.3) idx[q] = g, val[q++] = (float)gsl_rng_uniform(r); /* cell 3 empty */
    float *W = malloc(sizeof(float) * in * out), *b = malloc(sizeof(float) * out);
    float *dW1 = calloc(in * out, sizeof(float)), *dW2 = calloc(in * out, sizeof(float));
    float *db1 = calloc(out, sizeof(float)), *db2 = calloc(out, sizeof(float));
    float *y = malloc(sizeof(float) * n * out), *dy = malloc(sizeof(float) * n * out);
    for (int k = 0; k < in * out; k++) W[k] = (float)gsl_ran_gaussian(r, 1.0), dW1[k] = dW2[k] = 0.5f;
    for (int k = 0; k < out; k++) b[k] = (float)gsl_ran_gaussian(r, 1.0);
    for (int k = 0; k < n * out; k++) dy[k] = (float)gsl_ran_gaussian(r, 1.0);
    nbs_dense L1 = {in, out, W, b, dW1, db1}, L2 = {in, out, W, b, dW2, db2};
    nbs_sparse_rows rows = {n, indptr, idx, val, NULL, NULL, NULL};
    nbs_dense_forward_sparse(&L1, &rows, y);
    double worst = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < out; j++) {
            double want = b[j];
            for (int64_t p = indptr[i]; p < indptr[i + 1]; p++) want += (double)val[p] * W[(int64_t)idx[p] * out + j];
            worst = fmax(worst, fabs(y[(int64_t)i * out + j] - want) / fmax(1.0, fabs(want)));
        }
    assert_true(worst < 1e-5);
    int64_t colptr[in + 1];
    int32_t cell[n * in];
    float cval[n * in];
    nbs_sparse_transpose(&rows, in, colptr, cell, cval);
    assert_int_equal(colptr[in], indptr[n]);
    nbs_sparse_rows cols = {n, indptr, idx, val, colptr, cell, cval};
    nbs_dense_backward_sparse(&L1, &rows, dy);
    nbs_dense_backward_sparse(&L2, &cols, dy);
    assert_memory_equal(dW1, dW2, sizeof(float) * in * out);
    assert_memory_equal(db1, db2, sizeof(float) * out);
    int changed = 0; /* and the backward did add something */
    for (int k = 0; k < in * out; k++) changed += dW1[k] != 0.5f;
    assert_true(changed > in * out / 4);
    free(W), free(b), free(dW1), free(dW2), free(db1), free(db2), free(y), free(dy);
    gsl_rng_free(r);
}

/* ---- whole model ---- */

/* The toy cells' covariates, by row of the toy matrix (5 cells): a batch of 3 categories, a second
 * categorical covariate of 2, one continuous; every category occurs. NULL: a model without. */
static const nbs_covariate_layout TOY_LAYOUT = {2, {3, 2}, 1, 1};
static const int32_t TOY_CODES[5 * 2] = {0, 1, 2, 0, 1, 0, 1, 1, 0, 1};
static const float TOY_CONTINUOUS[5] = {0.3f, -1.2f, 0.8f, 1.5f, -0.4f};
static const nbs_covariate_layout *toy_layout;
static const int32_t *toy_codes = TOY_CODES; /* (5, n_categorical) the codes model_loss gives the cells */

static nbs_model_config small_config(void) {
    nbs_config c;
    nbs_config_defaults(&c);
    nbs_model_config mc = c.model;
    mc.latent_dim = 3;
    mc.encoder_layers[0] = 7;
    mc.decoder_layers[0] = 6;
    mc.dropout = 0;
    return mc;
}

static double model_loss(nbs_model *m, const nbs_matrix *X, const int64_t *rows, int n,
                         const float *klw, uint64_t seed, int grad) {
    nbs_cells c = tu_cells(X);
    c.rows = rows;
    c.n = n;
    if (toy_layout) {
        c.covariate_codes = toy_codes;
        c.n_categorical = toy_layout->n_categorical;
        c.continuous = TOY_CONTINUOUS;
        c.n_continuous = toy_layout->n_continuous;
    }
    nbs_workspace *w = tu_workspace(m, X, n);
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, seed);
    double recon, kl[16];
    nbs_error err = {0};
    if (grad) nbs_model_zero_grad(m);
    assert_int_equal(nbs_model_forward(m, w, &c, NBS_PASS_TRAIN, r, &recon, kl, &err), 0);
    if (grad) nbs_model_backward(m, w, 1.0f, klw);
    gsl_rng_free(r);
    nbs_workspace_free(w);
    tu_cells_free(&c);
    double loss = recon / n;
    for (int t = 0; t < nbs_model_kl_terms(m); t++) loss += klw[t] * kl[t];
    return loss;
}

/* Every parameter block: analytic gradient of the whole loss against central differences on
 * a few entries of each block, and on every entry of the covariates' blocks and of a per-batch
 * dispersion, whose rows each take the gradient of some cells only (the same noise and dropout
 * masks for every evaluation). With covariates, the toy cells carry TOY_CODES. */
static void check_model_with(nbs_model_config mc, const nbs_covariate_layout *layout, const char *label) {
    toy_layout = layout;
    const int n = 5, G = 23;
    big = 0; /* a moderate loss keeps float rounding below the differences measured */
    nbs_matrix *X = toy_counts(n, G, 11);
    big = 1;
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 5);
    nbs_error err = {0};
    nbs_model *m = nbs_model_new(&mc, G, layout, r, &err);
    assert_non_null(m);
    /* move off the initial zero log theta and give the dispersion some spread */
    int lt_rows = 0;
    float *lt = nbs_model_param(m, "dispersion", &lt_rows, NULL);
    if (lt)
        for (int g = 0; g < lt_rows * G; g++) lt[g] = (float)gsl_ran_gaussian(r, 0.5);
    int64_t rows[] = {4, 0, 2, 1, 3};
    float klw[16];
    for (int t = 0; t < 16; t++) klw[t] = 0.7f / n * (1 + 0.1f * t);
    model_loss(m, X, rows, n, klw, 99, 1);
    double worst = 0;
    char worst_name[64] = "";
    int checked = 0;
    for (int b = 0; b < nbs_model_n_blocks(m); b++) {
        const char *name = nbs_model_block_name(m, b);
        float *g = nbs_model_grad(m, name);
        if (!g) continue; /* running statistics are not parameters */
        int rr, cc;
        float *p = nbs_model_param(m, name, &rr, &cc);
        int64_t size = (int64_t)rr * cc;
        /* On the sphere, kappa's gradient is the implicit-reparameterisation one, unbiased for the
         * expectation but not the derivative of one sample's loss (test_sphere checks it); so here
         * only what does not feed kappa: the decoder and the direction columns of the head. */
        const int sphere = mc.latent != NBS_LATENT_GAUSSIAN;
        /* a covariate's table feeds kappa only through the encoder */
        const int table = strstr(name, ".embedding") != NULL;
        /* a ladder: the top's head (its direction columns), and what reads z below the top, the lower
         * layers' heads and priors, feed no kappa; the bottom-up layers do */
        char top_head[32] = "encoder.head.W";
        if (mc.n_latent_layers) snprintf(top_head, sizeof top_head, "ladder.%d.head.W", mc.n_latent_layers - 1);
        const int below_top = !strncmp(name, "ladder.", 7) && !strstr(name, ".up.") && strcmp(name, top_head) &&
                              !(strstr(name, ".head.b") && atoi(name + 7) == mc.n_latent_layers - 1);
        if (sphere && strncmp(name, "decoder", 7) && strcmp(name, "dispersion") && strcmp(name, top_head) &&
            !below_top && !(table && !mc.encode_covariates))
            continue;
        const int every = strstr(name, "covariates.W") || strstr(name, "continuous.W") || table ||
                          (!strcmp(name, "dispersion") && rr > 1) || (strstr(name, "skip") && size <= 64);
        for (int64_t k = 0; k < (every ? size : 6); k++) {
            int64_t idx = every ? k : (int64_t)gsl_rng_uniform_int(r, (unsigned long)size);
            if (sphere && !strcmp(name, top_head) && idx % cc == cc - 1) idx--; /* not the kappa column */
            /* Three step sizes: a ReLU kink within a step spoils the larger differences only, while a
             * wrong gradient disagrees with both. */
            double e = INFINITY, fd = 0;
            for (int hs = 0; hs < 3; hs++) {
                const float h = (const float[]){2e-3f, 4e-4f, 1e-4f}[hs], keep = p[idx];
                p[idx] = keep + h;
                double up = model_loss(m, X, rows, n, klw, 99, 0);
                p[idx] = keep - h;
                double down = model_loss(m, X, rows, n, klw, 99, 0);
                p[idx] = keep;
                double f = (up - down) / (2 * h), ef = fabs(f - g[idx]) / fmax(0.05, fabs(f));
                if (ef < e) e = ef, fd = f;
            }
            if (getenv("NBS_DEBUG_FD"))
                print_message("  %s[%lld] fd %.6g an %.6g\n", name, (long long)idx, fd, g[idx]);
            if (e > worst) {
                worst = e;
                snprintf(worst_name, sizeof worst_name, "%s[%lld] fd %.5g analytic %.5g", name,
                         (long long)idx, fd, g[idx]);
            }
            checked++;
        }
    }
    print_message("%s: %d entries checked, worst relative error %.2e (%s)\n", label, checked, worst,
                  worst_name);
    assert_true(worst < 2e-2);
    nbs_model_free(m);
    nbs_matrix_free(X);
    gsl_rng_free(r);
    toy_layout = NULL;
}

static void check_model(nbs_model_config mc, const char *label) { check_model_with(mc, NULL, label); }

static void test_model_gradients_nb(void **s) {
    (void)s;
    check_model(small_config(), "NB, gene dispersion");
}

static void test_model_gradients_variants(void **s) {
    (void)s;
    nbs_model_config mc = small_config();
    mc.likelihood = NBS_LIK_ZINB;
    check_model(mc, "ZINB");
    mc = small_config();
    mc.likelihood = NBS_LIK_POISSON;
    check_model(mc, "Poisson");
    mc = small_config();
    mc.dispersion = NBS_DISP_GENE_CELL;
    check_model(mc, "NB, gene-cell dispersion");
    mc = small_config();
    mc.norm = NBS_NORM_LAYER;
    mc.n_encoder_layers = 2;
    mc.encoder_layers[1] = 5;
    check_model(mc, "layer norm, two encoder layers");
    mc = small_config();
    mc.norm = NBS_NORM_BATCH;
    mc.n_decoder_layers = 2;
    mc.decoder_layers[1] = 4;
    check_model(mc, "batch norm, two decoder layers");
    mc = small_config();
    mc.latent = NBS_LATENT_VMF;
    check_model(mc, "vMF latent (decoder and direction)");
    mc.latent = NBS_LATENT_POWER_SPHERICAL;
    check_model(mc, "Power Spherical latent (decoder and direction)");
    mc = small_config();
    mc.dropout = 0.3;
    mc.input_transform = NBS_INPUT_LOG1P_CP10K;
    check_model(mc, "dropout, log1p CP10k input");
}

/* The ladder (model.latent_layers): the bottom-up layers and heads, the top-down priors (their
 * gradient through the KL and through z of the layer below, with the precision-weighted merge) and
 * the skip connections into every decoder hidden layer, on 2 and 3 layers, Gaussian or vMF at the
 * top; the skip-VAE on a single latent. */
static void test_model_gradients_ladder(void **s) {
    (void)s;
    nbs_model_config mc = small_config();
    mc.n_latent_layers = 2;
    mc.latent_layers[0] = 4;
    mc.latent_layers[1] = 3;
    check_model(mc, "ladder [4, 3]");
    mc.skip_connections = 1;
    mc.n_decoder_layers = 2;
    mc.decoder_layers[1] = 5;
    check_model(mc, "ladder [4, 3], skip connections, two decoder layers");
    mc.n_latent_layers = 3;
    mc.latent_layers[2] = 2;
    mc.norm = NBS_NORM_LAYER;
    mc.dropout = 0.2;
    check_model_with(mc, &TOY_LAYOUT, "ladder [4, 3, 2], skip connections, layer norm, dropout, covariates");
    mc = small_config();
    mc.n_latent_layers = 2;
    mc.latent_layers[0] = 4;
    mc.latent_layers[1] = 3;
    mc.latent = NBS_LATENT_VMF;
    mc.skip_connections = 1;
    check_model(mc, "ladder [4, 3], vMF top, skip connections (all but the bottom-up path)");
    mc = small_config();
    mc.skip_connections = 1;
    mc.n_decoder_layers = 3;
    mc.decoder_layers[1] = 5;
    mc.decoder_layers[2] = 4;
    check_model(mc, "single latent, skip connections into three decoder layers");
}

/* Covariates: one-hot rows in every decoder hidden layer, continuous ones in the first, into the
 * first encoder layer with encode_covariates; per-batch dispersion; every latent. */
static void test_model_gradients_covariates(void **s) {
    (void)s;
    nbs_model_config mc = small_config();
    mc.n_decoder_layers = 2;
    mc.decoder_layers[1] = 4;
    check_model_with(mc, &TOY_LAYOUT, "covariates in two decoder layers");
    mc.encode_covariates = 1;
    mc.norm = NBS_NORM_LAYER;
    check_model_with(mc, &TOY_LAYOUT, "covariates in the encoder too, layer norm");
    mc = small_config();
    mc.dispersion = NBS_DISP_GENE_BATCH;
    check_model_with(mc, &TOY_LAYOUT, "NB, gene-batch dispersion");
    mc.likelihood = NBS_LIK_ZINB;
    mc.norm = NBS_NORM_BATCH;
    check_model_with(mc, &TOY_LAYOUT, "ZINB, gene-batch dispersion, batch norm");
    mc = small_config();
    mc.encode_covariates = 1;
    mc.dispersion = NBS_DISP_GENE_BATCH;
    mc.latent = NBS_LATENT_VMF;
    check_model_with(mc, &TOY_LAYOUT, "vMF latent, covariates, gene-batch dispersion (decoder and direction)");
    mc.latent = NBS_LATENT_POWER_SPHERICAL;
    check_model_with(mc, &TOY_LAYOUT, "Power Spherical latent, covariates, gene-batch dispersion (decoder and direction)");
}

/* Learned embeddings (model.covariate_embedding: embedding): each categorical covariate's table
 * takes, per row, the input gradients of every layer over the cells of that category; checked on
 * every entry of the tables and of the layers' covariates.W (now dim columns per covariate), with
 * and without encode_covariates, for every latent. On the sphere with encode_covariates the tables
 * feed kappa too, so there only the decoder's blocks are checked (as for the encoder's). */
static void test_model_gradients_embedding(void **s) {
    (void)s;
    nbs_model_config mc = small_config();
    mc.covariate_embedding = NBS_COVARIATE_EMBEDDING;
    mc.covariate_embedding_dim = 2;
    mc.n_decoder_layers = 2;
    mc.decoder_layers[1] = 4;
    check_model_with(mc, &TOY_LAYOUT, "embedding (dim 2), two decoder layers");
    mc.encode_covariates = 1;
    mc.norm = NBS_NORM_LAYER;
    check_model_with(mc, &TOY_LAYOUT, "embedding in the encoder too, layer norm");
    mc.dispersion = NBS_DISP_GENE_BATCH;
    mc.norm = NBS_NORM_BATCH;
    mc.covariate_embedding_dim = 3;
    check_model_with(mc, &TOY_LAYOUT, "embedding (dim 3) in the encoder, gene-batch dispersion, batch norm");
    for (int lat = NBS_LATENT_VMF; lat <= NBS_LATENT_POWER_SPHERICAL; lat++)
        for (int enc = 0; enc < 2; enc++) {
            mc = small_config();
            mc.covariate_embedding = NBS_COVARIATE_EMBEDDING;
            mc.covariate_embedding_dim = 2;
            mc.latent = (nbs_latent_kind)lat;
            mc.encode_covariates = enc;
            mc.n_decoder_layers = 2;
            mc.decoder_layers[1] = 4;
            char label[128];
            snprintf(label, sizeof label, "%s latent, embedding%s (decoder, direction%s)",
                     lat == NBS_LATENT_VMF ? "vMF" : "Power Spherical", enc ? " in the encoder too" : "",
                     enc ? "" : ", tables");
            check_model_with(mc, &TOY_LAYOUT, label);
        }
}

/* A model whose covariate layout is all zero is the model without covariates, bit for bit; the
 * covariates' blocks have the documented shapes. */
static void test_covariate_blocks(void **s) {
    (void)s;
    nbs_model_config mc = small_config();
    const nbs_covariate_layout none = {0};
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    nbs_error err = {0};
    gsl_rng_set(r, 3);
    nbs_model *a = nbs_model_new(&mc, 23, NULL, r, &err);
    gsl_rng_set(r, 3);
    nbs_model *b = nbs_model_new(&mc, 23, &none, r, &err);
    float *pa, *pb;
    int64_t na, nb;
    nbs_model_flat(a, &pa, NULL, NULL, NULL, &na, NULL, NULL);
    nbs_model_flat(b, &pb, NULL, NULL, NULL, &nb, NULL, NULL);
    assert_int_equal(na, nb);
    assert_memory_equal(pa, pb, sizeof(float) * (size_t)na);
    mc.n_decoder_layers = 2;
    mc.decoder_layers[1] = 4;
    mc.encode_covariates = 1;
    mc.dispersion = NBS_DISP_GENE_BATCH;
    nbs_model *c = nbs_model_new(&mc, 23, &TOY_LAYOUT, r, &err);
    assert_non_null(c);
    static const struct {
        const char *name;
        int rows, cols;
    } want[] = {{"decoder.0.covariates.W", 5, 6}, {"decoder.1.covariates.W", 5, 4}, {"decoder.0.continuous.W", 1, 6},
                {"encoder.0.covariates.W", 5, 7}, {"encoder.0.continuous.W", 1, 7}, {"dispersion", 3, 23}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        int rr = 0, cc = 0;
        assert_non_null(nbs_model_param(c, want[i].name, &rr, &cc));
        assert_int_equal(rr, want[i].rows);
        assert_int_equal(cc, want[i].cols);
    }
    assert_null(nbs_model_param(c, "decoder.1.continuous.W", NULL, NULL));
    assert_null(nbs_model_param(c, "covariates.0.embedding", NULL, NULL));
    /* with embeddings of dim 2: a table per covariate, and covariates.W reads 2 columns per covariate */
    mc.covariate_embedding = NBS_COVARIATE_EMBEDDING;
    mc.covariate_embedding_dim = 2;
    nbs_model *e = nbs_model_new(&mc, 23, &TOY_LAYOUT, r, &err);
    assert_non_null(e);
    static const struct {
        const char *name;
        int rows, cols;
    } want_e[] = {{"decoder.0.covariates.W", 4, 6}, {"decoder.1.covariates.W", 4, 4}, {"encoder.0.covariates.W", 4, 7},
                  {"covariates.0.embedding", 3, 2}, {"covariates.1.embedding", 2, 2}, {"dispersion", 3, 23}};
    for (size_t i = 0; i < sizeof want_e / sizeof want_e[0]; i++) {
        int rr = 0, cc = 0;
        assert_non_null(nbs_model_param(e, want_e[i].name, &rr, &cc));
        assert_int_equal(rr, want_e[i].rows);
        assert_int_equal(cc, want_e[i].cols);
    }
    /* N(0, 1) draws: 10 of them, mean within 4 / sqrt(10) of 0, none beyond 5 */
    const float *t0 = nbs_model_param(e, "covariates.0.embedding", NULL, NULL);
    double mean = 0;
    for (int k = 0; k < 10; k++) mean += t0[k] / 10.0, assert_true(fabsf(t0[k]) < 5 && t0[k] != 0);
    assert_true(fabs(mean) < 4 / sqrt(10.0));
    /* the layout without categorical covariates has no tables: the model without covariates */
    nbs_model *f = nbs_model_new(&mc, 23, &(nbs_covariate_layout){0, {0}, 1, 0}, r, &err);
    assert_non_null(f);
    assert_null(nbs_model_param(f, "covariates.0.embedding", NULL, NULL));
    assert_null(nbs_model_param(f, "decoder.0.covariates.W", NULL, NULL));
    nbs_model_free(a), nbs_model_free(b), nbs_model_free(c), nbs_model_free(e), nbs_model_free(f);
    gsl_rng_free(r);
}

/* scArches' surgery (nbs_model_grow): TOY_LAYOUT's batch gains a category that sorts second, so the
 * known ones move to codes 0, 2, 3. The grown model holds every old weight at its new place; three
 * training steps (weight decay on, batch norm and dropout in the model) leave every frozen
 * parameter and the running statistics bit-identical and change the new rows; a cell of a known
 * category embeds bit for bit as before. The new rows' gradient is the ordinary model's (whose
 * gradients test_model_gradients_covariates checks against finite differences): bit-identical to
 * an unfrozen model with the same weights, and the frozen entries get none. */
static const nbs_covariate_layout GROWN_LAYOUT = {2, {4, 2}, 1, 1};
static const int32_t GROWN_CODES[5 * 2] = {1, 1, 0, 0, 1, 1, 3, 0, 1, 0};
static int32_t MAP0[3] = {0, 2, 3}, MAP1[2] = {0, 1};

static void check_grow(int embedding) {
    nbs_model_config mc = small_config();
    const int E = 2; /* the tables' dimension with embedding */
    if (embedding) mc.covariate_embedding = NBS_COVARIATE_EMBEDDING, mc.covariate_embedding_dim = E;
    mc.n_decoder_layers = 2;
    mc.decoder_layers[1] = 4;
    mc.encode_covariates = 1;
    mc.dispersion = NBS_DISP_GENE_BATCH;
    mc.norm = NBS_NORM_BATCH;
    mc.dropout = 0.2;
    const int G = 23;
    nbs_matrix *X = toy_counts(5, G, 11);
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 8);
    nbs_error err = {0};
    nbs_model *old = nbs_model_new(&mc, G, &TOY_LAYOUT, r, &err);
    assert_non_null(old);
    float *ost;
    int64_t ons;
    nbs_model_flat(old, NULL, NULL, NULL, &ost, NULL, &ons, NULL);
    for (int64_t k = 0; k < ons; k++) ost[k] = (float)(0.5 + gsl_rng_uniform(r)); /* trained-looking statistics */
    int32_t *map[2] = {MAP0, MAP1};
    nbs_model *m = nbs_model_grow(old, &GROWN_LAYOUT, map, r, &err);
    assert_non_null(m);
    /* the old weights, at the known categories' new rows */
    for (int b = 0; b < nbs_model_n_blocks(m); b++) {
        const char *name = nbs_model_block_name(m, b);
        int rr, cc, orr;
        const float *p = nbs_model_param(m, name, &rr, &cc), *q = nbs_model_param(old, name, &orr, NULL);
        if (embedding && !strcmp(name, "covariates.0.embedding")) {
            assert_int_equal(rr, 4);
            for (int c = 0; c < 3; c++) assert_memory_equal(p + MAP0[c] * cc, q + c * cc, sizeof(float) * cc);
        } else if (!embedding && strstr(name, "covariates.W")) {
            assert_int_equal(rr, 6);
            for (int c = 0; c < 3; c++) assert_memory_equal(p + MAP0[c] * cc, q + c * cc, sizeof(float) * cc);
            for (int c = 0; c < 2; c++) assert_memory_equal(p + (4 + c) * cc, q + (3 + c) * cc, sizeof(float) * cc);
        } else if (!strcmp(name, "dispersion")) {
            assert_int_equal(rr, 4);
            for (int c = 0; c < 3; c++) assert_memory_equal(p + MAP0[c] * cc, q + c * cc, sizeof(float) * cc);
        } else {
            assert_int_equal(rr, orr);
            assert_memory_equal(p, q, sizeof(float) * (size_t)rr * cc);
        }
    }
    /* the mask: exactly the new category's rows (decoder.0, decoder.1, encoder.0, or its table row;
     * dispersion) */
    const uint8_t *tr = nbs_model_trainable(m);
    assert_non_null(tr);
    int64_t np, n_tr = 0;
    float *p0;
    nbs_model_flat(m, &p0, NULL, NULL, NULL, &np, NULL, NULL);
    for (int64_t k = 0; k < np; k++) n_tr += tr[k];
    assert_int_equal(n_tr, (embedding ? E : 6 + 4 + 7) + G);
    /* a known cell's embedding before, with the old codes, and after, with the grown ones */
    nbs_cells c = tu_cells(X);
    c.row0 = 1, c.n = 1;
    c.n_categorical = 2, c.n_continuous = 1, c.continuous = TOY_CONTINUOUS;
    float before[3], after[3];
    c.covariate_codes = TOY_CODES;
    assert_int_equal(nbs_model_embed(old, &c, before, NULL, &err), NBS_OK);
    float *params0 = malloc(sizeof(float) * (size_t)np), *state0 = malloc(sizeof(float) * (size_t)ons + 1), *st;
    memcpy(params0, p0, sizeof(float) * (size_t)np);
    nbs_model_flat(m, NULL, NULL, NULL, &st, NULL, NULL, NULL);
    memcpy(state0, st, sizeof(float) * (size_t)ons);
    nbs_config cfg;
    nbs_config_defaults(&cfg);
    cfg.train.weight_decay = 0.01;
    nbs_workspace *w = tu_workspace(m, X, 5);
    c.row0 = 0, c.n = 5, c.covariate_codes = GROWN_CODES;
    nbs_step_result sr;
    for (int i = 0; i < 3; i++)
        assert_int_equal(nbs_train_step(m, w, &c, &cfg.train, 1.0, r, NULL, &sr, &err), NBS_OK);
    int64_t changed = 0;
    for (int64_t k = 0; k < np; k++) {
        if (!tr[k]) assert_memory_equal(&p0[k], &params0[k], sizeof(float));
        else changed += p0[k] != params0[k];
    }
    assert_memory_equal(st, state0, sizeof(float) * (size_t)ons);
    assert_true(changed >= n_tr * 9 / 10);
    c.row0 = 1, c.n = 1;
    assert_int_equal(nbs_model_embed(m, &c, after, NULL, &err), NBS_OK);
    assert_memory_equal(before, after, sizeof before);
    nbs_workspace_free(w);
    nbs_model_free(m);
    nbs_model_free(old);

    /* the gradient: layer norm and no dropout, so that a frozen and an unfrozen training pass are one */
    mc.norm = NBS_NORM_LAYER;
    mc.dropout = 0;
    old = nbs_model_new(&mc, G, &TOY_LAYOUT, r, &err);
    m = nbs_model_grow(old, &GROWN_LAYOUT, map, r, &err);
    nbs_model *plain = nbs_model_new(&mc, G, &GROWN_LAYOUT, NULL, &err);
    assert_true(old && m && plain);
    float *pp, *pm;
    nbs_model_flat(m, &pm, NULL, NULL, NULL, &np, NULL, NULL);
    nbs_model_flat(plain, &pp, NULL, NULL, NULL, NULL, NULL, NULL);
    memcpy(pp, pm, sizeof(float) * (size_t)np);
    toy_layout = &GROWN_LAYOUT;
    toy_codes = GROWN_CODES;
    int64_t rows[] = {4, 0, 2, 1, 3};
    float klw[3] = {0.2f, 0.2f, 0.2f};
    const double lm = model_loss(m, X, rows, 5, klw, 99, 1), lp = model_loss(plain, X, rows, 5, klw, 99, 1);
    assert_true(lm == lp);
    const float *gm = nbs_model_grad_block(m), *gp = nbs_model_grad_block(plain);
    tr = nbs_model_trainable(m);
    int64_t nonzero_frozen = 0;
    for (int64_t k = 0; k < np; k++) {
        if (tr[k]) assert_memory_equal(&gm[k], &gp[k], sizeof(float));
        else {
            assert_true(gm[k] == 0.0f);
            nonzero_frozen += gp[k] != 0.0f;
        }
    }
    assert_true(nonzero_frozen > np / 2); /* the unfrozen model would have trained them */
    toy_codes = TOY_CODES;
    tu_cells_free(&c);
    free(params0), free(state0);
    nbs_model_free(m), nbs_model_free(old), nbs_model_free(plain);
    nbs_matrix_free(X);
    gsl_rng_free(r);
}

/* The same with embeddings: the batch's table gains the new row (N(0, 1)), the only entries besides
 * the dispersion's that train; every layer's covariates.W stays as it was. */
static void test_model_grow(void **s) {
    (void)s;
    check_grow(0);
    check_grow(1);
}

/* A minibatch of one cell goes through batch norm (running statistics) without NaN. */
static void test_single_cell_batch(void **s) {
    (void)s;
    nbs_model_config mc = small_config();
    mc.norm = NBS_NORM_BATCH;
    nbs_matrix *X = toy_counts(4, 23, 2);
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    nbs_error err = {0};
    nbs_model *m = nbs_model_new(&mc, 23, NULL, r, &err);
    int64_t row = 2;
    float klw[3] = {1, 1, 1};
    double loss = model_loss(m, X, &row, 1, klw, 1, 1);
    assert_true(isfinite(loss));
    assert_null(nbs_model_nonfinite_grad(m));
    nbs_model_free(m);
    nbs_matrix_free(X);
    gsl_rng_free(r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nb_likelihood),
        cmocka_unit_test(test_nb_likelihood_theta_rows), cmocka_unit_test(test_nb_likelihood_threads),
        cmocka_unit_test(test_sparse_layer_paths),
        cmocka_unit_test(test_zinb_likelihood),
        cmocka_unit_test(test_poisson_likelihood),
        cmocka_unit_test(test_model_gradients_nb),
        cmocka_unit_test(test_model_gradients_variants),
        cmocka_unit_test(test_model_gradients_covariates),
        cmocka_unit_test(test_model_gradients_ladder),
        cmocka_unit_test(test_model_gradients_embedding),
        cmocka_unit_test(test_covariate_blocks),
        cmocka_unit_test(test_model_grow),
        cmocka_unit_test(test_single_cell_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
