/* The discrete latent (model.discrete, mixture.h): the mixture KL against hand-computed values,
 * its gradients and the entropy loss's against central finite differences (on the arrays and
 * through the whole model), a model file round trip, and the pipeline's refusals. */
#include <gsl/gsl_randist.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/checkpoint.h"
#include "nbsphere/integrate.h"
#include "nbsphere/mixture.h"
#include "nbsphere/pipeline.h"
#include "nbsphere/train.h"
#include "testutil.h"

/* K = 2, d = 1: q(z|x) = N(0.5, 0.25), p(z|c) = N(0, 1) and N(1, 4), p(c) uniform,
 * q(c|x) = (0.75, 0.25). Values from
 *   kl = lambda mu, s: 0.5*(s - v + (exp(v) + (m - mu)**2)/exp(s) - 1)
 *   sum(q[c]*kl(mu[c], s[c])), sum(q[c]*log(q[c]/0.5))   (python3, math) */
static void test_mixture_kl_known(void **s) {
    (void)s;
    const float logits[2] = {0, 0}, mean[2] = {0, 1}, logvar[2] = {0, (float)log(4.0)};
    const nbs_mixture p = {2, 1, logits, mean, logvar};
    const float head[2] = {0.5f, (float)log(0.25)}, qlog[2] = {(float)log(3.0), 0};
    double lq[2], q[2], kl[2];
    nbs_mixture_softmax(qlog, 1, 2, lq, q);
    assert_true(fabs(q[0] - 0.75) < 1e-7);
    nbs_mixture_kl(&p, head, lq, q, 1, kl);
    assert_true(fabs(kl[0] - 0.5695589756999315) < 1e-6);
    assert_true(fabs(kl[1] - 0.13081203594113697) < 1e-6);
    /* entropy of the mean of (0.75, 0.25) and (0.1, 0.9): -sum qbar log qbar = 0.6818546087307834 */
    const double prob[4] = {0.75, 0.25, 0.1, 0.9};
    assert_true(fabs(nbs_mixture_mean_entropy(prob, 2, 2, NULL) - 0.6818546087307834) < 1e-12);
    float dprob[4];
    double h;
    double logp[4];
    for (int k = 0; k < 4; k++) logp[k] = log(prob[k]);
    assert_true(nbs_mixture_entropy_loss(logp, prob, 2, 2, 0.6, 3.0, 0, 1.0, dprob, &h) == 0); /* above the target */
    for (int k = 0; k < 4; k++) assert_true(dprob[k] == 0);
    assert_true(fabs(nbs_mixture_entropy_loss(logp, prob, 2, 2, 0.69, 3.0, 0, 1.0, dprob, &h) - 3 * (0.69 - h)) < 1e-12);
    /* the per-cell term: the mean of H(0.75, 0.25) = 0.5623351446188083 and H(0.1, 0.9) = 0.3250829733914482 */
    assert_true(fabs(nbs_mixture_entropy_loss(logp, prob, 2, 2, 0.6, 3.0, 2.0, 1.0, dprob, &h) -
                     2 * (0.5623351446188083 + 0.3250829733914482) / 2) < 1e-12);
}

/* ---- the arrays: loss = sum_it w_t kl_it + entropy loss, every input perturbed ---- */

enum { N = 4, K = 3, DD = 2 };
static float A_head[N * 2 * DD], A_logits[N * K], A_pl[K], A_mean[K * DD], A_lv[K * DD];
static const float A_w[DD + 1] = {0.7f, 1.3f, 0.9f};
#define TARGET 1.09 /* above H(qbar) of the draws below (log 3 = 1.0986): the hinge is active */
#define LAMBDA 2.5

static double array_loss(float *dhead, float *dlogits, float *dpl, float *dmean, float *dlv) {
    const nbs_mixture p = {K, DD, A_pl, A_mean, A_lv};
    double lq[N * K], q[N * K], kl[N * (DD + 1)], h;
    float dprob[N * K];
    nbs_mixture_softmax(A_logits, N, K, lq, q);
    nbs_mixture_kl(&p, A_head, lq, q, N, kl);
    double loss = nbs_mixture_entropy_loss(lq, q, N, K, TARGET, LAMBDA, 0.8, 1.0, dprob, &h);
    assert_true(h < TARGET);
    for (int i = 0; i < N; i++)
        for (int t = 0; t <= DD; t++) loss += A_w[t] * kl[i * (DD + 1) + t];
    if (dhead) nbs_mixture_backward(&p, A_head, lq, q, N, A_w, dprob, dhead, dlogits, dpl, dmean, dlv);
    return loss;
}

static void test_mixture_gradients(void **s) {
    (void)s;
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 3);
    for (int k = 0; k < N * 2 * DD; k++) A_head[k] = (float)gsl_ran_gaussian(r, 0.8);
    for (int k = 0; k < N * K; k++) A_logits[k] = (float)gsl_ran_gaussian(r, 1.0);
    for (int k = 0; k < K; k++) A_pl[k] = (float)gsl_ran_gaussian(r, 0.5);
    for (int k = 0; k < K * DD; k++) A_mean[k] = (float)gsl_ran_gaussian(r, 1.0), A_lv[k] = (float)gsl_ran_gaussian(r, 0.5);
    float dhead[N * 2 * DD] = {0}, dlogits[N * K], dpl[K] = {0}, dmean[K * DD] = {0}, dlv[K * DD] = {0};
    array_loss(dhead, dlogits, dpl, dmean, dlv);
    struct { const char *name; float *x, *g; int n; } in[] = {
        {"head", A_head, dhead, N * 2 * DD}, {"logits", A_logits, dlogits, N * K}, {"prior logits", A_pl, dpl, K},
        {"prior mean", A_mean, dmean, K * DD}, {"prior logvar", A_lv, dlv, K * DD}};
    double worst = 0;
    for (int b = 0; b < 5; b++)
        for (int k = 0; k < in[b].n; k++) {
            const float h = 1e-3f, keep = in[b].x[k];
            in[b].x[k] = keep + h;
            const double up = array_loss(NULL, NULL, NULL, NULL, NULL);
            in[b].x[k] = keep - h;
            const double down = array_loss(NULL, NULL, NULL, NULL, NULL);
            in[b].x[k] = keep;
            const double fd = (up - down) / (2 * (double)h), e = fabs(fd - in[b].g[k]) / fmax(0.01, fabs(fd));
            if (e > worst) worst = e;
            if (e > 1e-3) print_message("%s[%d]: fd %.6g analytic %.6g\n", in[b].name, k, fd, in[b].g[k]);
        }
    print_message("mixture KL + entropy loss: worst relative error %.2e over every input\n", worst);
    assert_true(worst < 1e-3);
    gsl_rng_free(r);
}

/* ---- the whole model ---- */

static nbs_matrix *toy(int n, int G) {
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 11);
    int64_t k = 0;
    int32_t *ci = malloc(sizeof(int32_t) * n * G), *gi = malloc(sizeof(int32_t) * n * G);
    float *v = malloc(sizeof(float) * n * G);
    for (int i = 0; i < n; i++)
        for (int g = 0; g < G; g++) {
            unsigned x = gsl_ran_negative_binomial(r, 0.5, 0.3 + 0.2 * ((g + i) % 5));
            if (x) ci[k] = i, gi[k] = g, v[k++] = (float)x;
        }
    nbs_error err = {0};
    nbs_matrix *m = nbs_matrix_from_triplets(n, G, k, ci, gi, v, "toy", &err);
    assert_non_null(m);
    free(ci), free(gi), free(v);
    gsl_rng_free(r);
    return m;
}

static nbs_model_config mix_config(int K_) {
    nbs_config c;
    nbs_config_defaults(&c);
    nbs_model_config mc = c.model;
    mc.latent_dim = 3;
    mc.encoder_layers[0] = 7;
    mc.decoder_layers[0] = 6;
    mc.dropout = 0;
    mc.discrete = K_;
    return mc;
}

/* recon/n + sum_t klw_t KL_t + the entropy loss (target, weight) of one training pass */
static double model_loss(nbs_model *m, const nbs_matrix *X, int n, const float *klw, double target, double weight,
                         int grad, double *entropy) {
    nbs_cells c = tu_cells(X);
    c.n = n;
    nbs_workspace *w = tu_workspace(m, X, n);
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 99);
    double recon, kl[16];
    nbs_error err = {0};
    if (grad) nbs_model_zero_grad(m);
    assert_int_equal(nbs_model_forward(m, w, &c, NBS_PASS_TRAIN, r, &recon, kl, &err), 0);
    double loss = recon / n + nbs_model_entropy_loss(m, w, target, weight, 0.6 * weight, 1.0, entropy);
    if (grad) nbs_model_backward(m, w, 1.0f, klw);
    for (int t = 0; t < nbs_model_kl_terms(m); t++) loss += klw[t] * kl[t];
    gsl_rng_free(r);
    nbs_workspace_free(w);
    tu_cells_free(&c);
    return loss;
}

static void test_model_gradients_discrete(void **s) {
    (void)s;
    const int n = 6, G = 19;
    nbs_matrix *X = toy(n, G);
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 5);
    nbs_error err = {0};
    nbs_model_config mc = mix_config(4);
    nbs_model *m = nbs_model_new(&mc, G, NULL, r, &err);
    assert_non_null(m);
    assert_int_equal(nbs_model_kl_terms(m), 4); /* d terms of z, then c */
    assert_int_equal(nbs_model_cluster_kl_term(m), 3);
    /* off the initial uniform p(c) and unit variances */
    int rr, cc;
    float *pl = nbs_model_param(m, "prior.cluster_logits", NULL, NULL), *lv = nbs_model_param(m, "prior.logvar", &rr, &cc);
    for (int k = 0; k < 4; k++) pl[k] = (float)gsl_ran_gaussian(r, 0.5);
    for (int k = 0; k < rr * cc; k++) lv[k] = (float)gsl_ran_gaussian(r, 0.4);
    float klw[16];
    for (int t = 0; t < 16; t++) klw[t] = 0.7f / n * (1 + 0.1f * t);
    double h;
    model_loss(m, X, n, klw, 1.386, 2.0, 0, &h);
    const double target = h + 0.1; /* the hinge active, whatever the draws */
    model_loss(m, X, n, klw, target, 2.0, 1, &h);
    const char *blocks[] = {"encoder.cluster.W", "encoder.cluster.b", "prior.cluster_logits", "prior.mean",
                            "prior.logvar", "encoder.head.W", "encoder.head.b", "encoder.0.W", "decoder.0.W"};
    double worst = 0;
    int checked = 0;
    for (int b = 0; b < 9; b++) {
        float *p = nbs_model_param(m, blocks[b], &rr, &cc), *g = nbs_model_grad(m, blocks[b]);
        assert_non_null(p);
        const int64_t size = (int64_t)rr * cc, every = size <= 40;
        for (int64_t k = 0; k < (every ? size : 10); k++) {
            const int64_t idx = every ? k : (int64_t)gsl_rng_uniform_int(r, (unsigned long)size);
            double e = INFINITY, fd = 0;
            for (int hs = 0; hs < 3; hs++) { /* a ReLU kink spoils the larger steps only */
                const float st = (const float[]){2e-3f, 4e-4f, 1e-4f}[hs], keep = p[idx];
                p[idx] = keep + st;
                const double up = model_loss(m, X, n, klw, target, 2.0, 0, NULL);
                p[idx] = keep - st;
                const double down = model_loss(m, X, n, klw, target, 2.0, 0, NULL);
                p[idx] = keep;
                const double f = (up - down) / (2 * st), ef = fabs(f - g[idx]) / fmax(0.05, fabs(f));
                if (ef < e) e = ef, fd = f;
            }
            if (e > 2e-2) print_message("  %s[%lld] fd %.6g analytic %.6g\n", blocks[b], (long long)idx, fd, g[idx]);
            worst = fmax(worst, e);
            checked++;
        }
    }
    print_message("discrete latent (K = 4) with the entropy loss: %d entries checked, worst relative error %.2e\n",
                  checked, worst);
    assert_true(worst < 2e-2);
    nbs_model_free(m);
    nbs_matrix_free(X);
    gsl_rng_free(r);
}

/* A model file keeps the discrete latent: the same q(c|x) after loading. */
static void test_discrete_round_trip(void **s) {
    (void)s;
    const int n = 6, G = 19;
    nbs_matrix *X = toy(n, G);
    nbs_config cfg;
    nbs_config_defaults(&cfg);
    cfg.model = mix_config(5);
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 8);
    nbs_error err = {0};
    nbs_model *m = nbs_model_new(&cfg.model, G, NULL, r, &err);
    assert_non_null(m);
    nbs_train_state st;
    assert_int_equal(nbs_train_state_init(&st, m, 1, &err), 0);
    nbs_train_log log = {.kl_terms = nbs_model_kl_terms(m)};
    char *dir = tu_tmpdir();
    const char *path = tu_path(dir, "model.h5");
    assert_int_equal(nbs_checkpoint_save(path, m, &cfg, NULL, X->gene_names, X->gene_ids, &st, &log, &err), 0);
    nbs_checkpoint ck;
    if (nbs_checkpoint_load(path, &ck, &err)) fail_msg("%s", err.msg);
    assert_int_equal(nbs_model_discrete(ck.model), 5);
    nbs_cells c = tu_cells(X);
    float a[6 * 5], b[6 * 5];
    double kla[6 * 4], klb[6 * 4];
    assert_int_equal(nbs_model_cluster(m, &c, a, kla, &err), 0);
    assert_int_equal(nbs_model_cluster(ck.model, &c, b, klb, &err), 0);
    assert_memory_equal(a, b, sizeof a);
    assert_memory_equal(kla, klb, sizeof kla);
    for (int i = 0; i < n; i++) {
        double sum = 0;
        for (int k = 0; k < 5; k++) sum += a[i * 5 + k];
        assert_true(fabs(sum - 1) < 1e-5);
    }
    tu_cells_free(&c);
    nbs_checkpoint_free(&ck);
    nbs_train_state_free(&st);
    nbs_model_free(m);
    nbs_matrix_free(X);
    gsl_rng_free(r);
    tu_rmtree(dir);
    free(dir);
}

/* Bad settings: each refused at its key with what to do. */
static void test_discrete_bad_config(void **s) {
    (void)s;
    struct { const char *set[2]; const char *says; } bad[] = {
        {{"model.discrete=1", NULL}, "1 category is no discrete latent"},
        {{"model.discrete=51", NULL}, "model.discrete"},
        {{"model.discrete=-2", NULL}, "model.discrete"},
        {{"model.discrete=4", "model.latent=vmf"}, "needs model.latent: gaussian"},
        {{"model.discrete=4", "model.latent=power_spherical"}, "needs model.latent: gaussian"},
        {{"train.entropy_weight=1", NULL}, "set model.discrete"},
        {{"train.entropy_target=0.5", NULL}, "set model.discrete"},
        {{"train.entropy_cell_weight=0.5", NULL}, "set model.discrete"},
        {{"model.discrete=4", "train.entropy_cell_weight=-1"}, "train.entropy_cell_weight"},
        {{"model.discrete=4", "train.entropy_weight=-1"}, "train.entropy_weight"},
        {{"model.discrete=4", "train.entropy_target=-0.1"}, "train.entropy_target"},
        {{"model.discrete=4", "train.entropy_target=1.5"}, "above log(4) = 1.386"},
        {{"model.discrete=4", "train.entropy_weight=2"}, "needs train.entropy_target > 0"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        nbs_pipeline p;
        nbs_error err = {0};
        const int n = bad[i].set[1] ? 2 : 1;
        assert_int_equal(nbs_pipeline_load_string("", "p.yaml", NULL, bad[i].set, n, 0, &p, &err), NBS_ERR_USAGE);
        if (!strstr(err.msg, bad[i].says)) print_message("%s: %s\n", bad[i].set[0], err.msg);
        assert_non_null(strstr(err.msg, bad[i].says));
    }
    nbs_pipeline p;
    nbs_error err = {0};
    const char *good[] = {"model.discrete=4", "train.entropy_target=1.386", "train.entropy_weight=5"};
    assert_int_equal(nbs_pipeline_load_string("", "p.yaml", NULL, good, 3, 0, &p, &err), NBS_OK);
    /* the library refuses what the pipeline would */
    nbs_model_config mc = mix_config(1);
    assert_null(nbs_model_new(&mc, 5, NULL, NULL, &err));
    assert_non_null(strstr(err.msg, "model.discrete"));
    mc = mix_config(3);
    mc.latent = NBS_LATENT_VMF;
    assert_null(nbs_model_new(&mc, 5, NULL, NULL, &err));
    assert_non_null(strstr(err.msg, "gaussian"));
}

/* ---- the entropy loss on the simulator's known groups ---- */

/* The run's nbsphere_cluster column of embedding.tsv against the simulator's branches: cells
 * per category (K) and the ARI. */
static double cluster_ari(const char *dir, const char *run, const char *labels, int K, int64_t *per_category) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s/embedding.tsv", dir, run);
    char *emb = tu_read_file(path, NULL), *lab = tu_read_file(labels, NULL);
    assert_non_null(emb);
    assert_non_null(lab);
    /* header: barcode, dim1..dim10, nbsphere_cluster, nbsphere_cluster_probability */
    const char *hdr = "\tnbsphere_cluster\tnbsphere_cluster_probability\n";
    assert_non_null(strstr(emb, hdr));
    int32_t a[4000], b[4000];
    int64_t n = 0;
    char names[8][32];
    int n_names = 0;
    memset(per_category, 0, sizeof(int64_t) * K);
    char *save1, *save2, *line = strtok_r(emb, "\n", &save1), *lline = strtok_r(lab, "\n", &save2);
    /* both files list the cells in the simulator's order (no cell is filtered at these depths) */
    while ((line = strtok_r(NULL, "\n", &save1)) && (lline = strtok_r(NULL, "\n", &save2))) {
        char *tab = strrchr(line, '\t');
        *tab = '\0';
        const int code = atoi(strrchr(line, '\t') + 1);
        char *l1 = strchr(lline, '\t') + 1, *l2 = strchr(l1, '\t');
        *l2 = '\0';
        assert_int_equal(strncmp(line, lline, (size_t)(strchr(lline, '\t') - lline)), 0);
        int g = 0;
        while (g < n_names && strcmp(names[g], l1)) g++;
        if (g == n_names) snprintf(names[n_names++], 32, "%s", l1);
        assert_true(code >= 0 && code < K);
        per_category[code]++;
        a[n] = code, b[n++] = g;
    }
    double ari;
    nbs_error err = {0};
    assert_int_equal(nbs_ari(a, b, n, &ari, &err), 0);
    free(emb), free(lab);
    return ari;
}

/* 2000 cells of 5 groups (the root and 4 branches), a strong decoder ([256, 256]) at beta 20,
 * K = 5. Without the entropy loss every cell lands in one category; with it (both terms) the
 * categories stay in use and follow the groups. Measured here: ARI 0.000 (2000 cells in one
 * category) and 0.409 (566, 1099 and 335 cells in three); the thresholds leave room for
 * another CPU's rounding. */
static void test_entropy_loss_simulator(void **s) {
    (void)s;
    char *dir = tu_tmpdir(), args[8192];
    snprintf(args, sizeof args, "simulate --out %s/sim --cells 2000 --genes 500 --branches 4 --depth 1500 --seed 1",
             dir);
    assert_int_equal(tu_run_cli(args, NULL, NULL), 0);
    char yaml[4096];
    snprintf(yaml, sizeof yaml,
             "input: {path: %s/sim/sim_mtx}\npreprocess: {n_top_genes: 0}\n"
             "model: {latent_dim: 10, decoder_layers: [256, 256], discrete: 5}\n"
             "train: {epochs: 20, schedule: constant, beta: 20, seed: 0}\noutput: {write_report: false, write_h5ad: false}\n",
             dir);
    assert_int_equal(tu_write_file(tu_path(dir, "p.yaml"), yaml), 0);
    char labels[4200];
    snprintf(labels, sizeof labels, "%s/sim/cell_labels.tsv", dir);
    int64_t cells[5];
    double ari[2];
    int used[2], largest[2];
    for (int run = 0; run < 2; run++) {
        snprintf(args, sizeof args, "run %s/p.yaml --out %s/r%d %s", dir, dir, run,
                 run ? "--set train.entropy_weight=100 --set train.entropy_target=1.45 "
                       "--set train.entropy_cell_weight=40" : "");
        assert_int_equal(tu_run_cli(args, NULL, NULL), 0);
        char name[8];
        snprintf(name, sizeof name, "r%d", run);
        ari[run] = cluster_ari(dir, name, labels, 5, cells);
        used[run] = largest[run] = 0;
        for (int k = 0; k < 5; k++) {
            used[run] += cells[k] >= 100; /* 5 % of the cells */
            if (cells[k] > largest[run]) largest[run] = (int)cells[k];
        }
        print_message("%s the entropy loss: ARI %.3f, cells per category %lld %lld %lld %lld %lld\n",
                      run ? "with" : "without", ari[run], (long long)cells[0], (long long)cells[1],
                      (long long)cells[2], (long long)cells[3], (long long)cells[4]);
    }
    assert_true(largest[0] >= 1900 && ari[0] < 0.05);
    assert_true(used[1] >= 3 && ari[1] > 0.25);
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixture_kl_known),
        cmocka_unit_test(test_mixture_gradients),
        cmocka_unit_test(test_model_gradients_discrete),
        cmocka_unit_test(test_discrete_round_trip),
        cmocka_unit_test(test_discrete_bad_config),
        cmocka_unit_test(test_entropy_loss_simulator),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
