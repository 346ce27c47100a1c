#include "testutil.h"

#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/diagnose.h"
#include "nbsphere/io.h"
#include "nbsphere/train.h"

/* x ~ N(0, s^2), q(z|x) = N(x, 1): I(x;z) = 0.5 log(1 + s^2) per dimension. */
static void test_mi_known_gaussian(void **state) {
    (void)state;
    const int64_t n = 8192;
    const int d = 2;
    const double s = 2.0;
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, 7);
    float *mean = malloc(sizeof(float) * n * d), *var = malloc(sizeof(float) * n * d);
    for (int64_t i = 0; i < n * d; i++) {
        mean[i] = (float)gsl_ran_gaussian(rng, s);
        var[i] = 1.0f;
    }
    double mi = -1;
    nbs_error err = {0};
    assert_int_equal(nbs_diagnose_mi_gaussian(mean, var, n, d, 512, rng, &mi, &err), NBS_OK);
    double truth = d * 0.5 * log(1 + s * s);
    assert_true(fabs(mi - truth) < 0.06 * truth);
    /* a posterior that ignores x carries no information */
    for (int64_t i = 0; i < n * d; i++) mean[i] = 0;
    assert_int_equal(nbs_diagnose_mi_gaussian(mean, var, n, d, 512, rng, &mi, &err), NBS_OK);
    assert_true(mi >= 0 && mi < 0.01);
    var[5] = 0;
    assert_int_equal(nbs_diagnose_mi_gaussian(mean, var, n, d, 512, rng, &mi, &err),
                     NBS_ERR_NUMERIC);
    free(mean);
    free(var);
    gsl_rng_free(rng);
}

/* A model where the verdicts are known by construction: z_3 is neither encoded nor decoded
 * (collapsed), z_4 is encoded but the decoder ignores it (inconsistent), the rest are random. */
static void test_verdicts_by_construction(void **state) {
    (void)state;
    nbs_config c;
    nbs_config_defaults(&c);
    c.model.latent_dim = 4;
    c.model.encoder_layers[0] = 16;
    c.model.decoder_layers[0] = 16;
    c.diagnose.tau_kl = 0.01; /* an untrained random encoder sends only a few hundredths of a nat */
    c.diagnose.tau_decoder_nats = 1e-3; /* and its random decoder moves the counts little */
    const int G = 40, n = 60;
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 4);
    int32_t *ci = malloc(sizeof(int32_t) * n * G), *gi = malloc(sizeof(int32_t) * n * G);
    int64_t k = 0;
    float *v = malloc(sizeof(float) * n * G);
    for (int i = 0; i < n; i++)
        for (int g = 0; g < G; g++) {
            unsigned x = gsl_ran_poisson(r, (i % 3 == g % 3) ? 6 : 0.5);
            if (x) ci[k] = i, gi[k] = g, v[k++] = x;
        }
    nbs_error err = {0};
    nbs_matrix *X = nbs_matrix_from_triplets(n, G, k, ci, gi, v, "toy", &err);
    nbs_model *m = nbs_model_new(&c.model, G, NULL, r, &err);
    assert_non_null(m);
    int rows, cols;
    float *hw = nbs_model_param(m, "encoder.head.W", &rows, &cols), *hb = nbs_model_param(m, "encoder.head.b", NULL, NULL);
    for (int i = 0; i < rows; i++) hw[i * cols + 2] = hw[i * cols + 4 + 2] = 0; /* mean and log variance of z_3 */
    hb[2] = hb[4 + 2] = 0;
    for (int i = 0; i < rows; i++) hw[i * cols + 3] *= 20; /* z_4: a strongly encoded mean */
    int d, width;
    nbs_model_decoder_first_weights(m, &d, &width);
    float *W = nbs_model_decoder_first_weights_mut(m);
    for (int j = 0; j < width; j++) W[2 * width + j] = W[3 * width + j] = 0;
    nbs_collapse_report rep;
    nbs_cells cells = tu_cells(X);
    assert_int_equal(nbs_diagnose(m, &cells, &c.diagnose, r, &rep, &err), 0);
    tu_cells_free(&cells);
    for (int j = 0; j < 4; j++)
        print_message("z_%d: KL %.4g activity %.4g sens_w %.4g sens_jac %.4g -> %s\n", j + 1, rep.kl[j],
                      rep.activity[j], rep.sens_weight[j], rep.sens_jacobian[j], nbs_dim_verdict_word(rep.verdict[j]));
    print_message("%s\n", rep.summary);
    assert_true(rep.kl[2] == 0 && rep.activity[2] == 0 && rep.sens_jacobian[2] == 0 && rep.sens_weight[2] == 0);
    assert_int_equal(rep.verdict[0], NBS_DIM_ACTIVE);
    assert_int_equal(rep.verdict[1], NBS_DIM_ACTIVE);
    assert_int_equal(rep.verdict[2], NBS_DIM_COLLAPSED);
    assert_int_equal(rep.verdict[3], NBS_DIM_INCONSISTENT);
    assert_true(rep.kl[3] > c.diagnose.tau_kl && rep.sens_jacobian[3] == 0);
    assert_true(rep.sens_jacobian[0] > 0 && rep.sens_jacobian[1] > 0);
    assert_true(rep.decoder_nats[2] == 0 && rep.decoder_nats[3] == 0);
    assert_true(rep.decoder_nats[0] > c.diagnose.tau_decoder_nats && rep.decoder_nats[1] > c.diagnose.tau_decoder_nats);
    assert_false(rep.z_unused);
    assert_int_equal(rep.model, NBS_MODEL_PARTIAL);
    assert_int_equal(rep.n_unsent, 0); /* z_4's encoder sends; its decoder ignores it */
    assert_non_null(strstr(rep.summary, "1 inconsistent: the decoder ignores what the encoder sends"));
    assert_non_null(strstr(rep.remedies, "free_bits"));
    assert_true(rep.mi >= 0 && rep.mi <= log(c.diagnose.mi_batch));
    nbs_collapse_report_free(&rep);
    nbs_model_free(m);
    nbs_matrix_free(X);
    free(ci), free(gi), free(v);
    gsl_rng_free(r);
}

/* A decoder that ignores z (its first layer zeroed) gains nothing from z: the model is never
 * "healthy", however much the encoder sends, and the summary says why. */
/* A small model (4 latent dimensions, layers of 64) trained on the example data. */
typedef struct {
    nbs_config c;
    nbs_matrix *X;
    gsl_rng *r;
    nbs_model *m;
    nbs_train_state s;
    nbs_train_log log;
    nbs_cells cells; /* every cell of X */
} trained_toy;

static void train_toy(trained_toy *t, int epochs, int warmup) {
    nbs_error err = {0};
    memset(t, 0, sizeof *t);
    assert_int_equal(nbs_io_read_10x_mtx_dir("example_data/sim_mtx", &t->X, &err), 0);
    nbs_config_defaults(&t->c);
    t->c.model.latent_dim = 4;
    t->c.model.encoder_layers[0] = 64;
    t->c.model.decoder_layers[0] = 64;
    t->c.train.epochs = epochs;
    t->c.train.warmup_epochs = warmup;
    t->c.train.checkpoint_every = 0;
    t->r = gsl_rng_alloc(gsl_rng_mt19937);
    t->m = nbs_model_new(&t->c.model, (int)t->X->n_genes, NULL, t->r, &err);
    assert_non_null(t->m);
    assert_int_equal(nbs_train_state_init(&t->s, t->m, 0, &err), 0);
    t->cells = tu_cells(t->X);
    assert_int_equal(nbs_train(t->m, &t->cells, &t->c.train, &t->s, &t->log, NULL, NULL, &err), 0);
}

static void toy_free(trained_toy *t) {
    nbs_train_state_free(&t->s);
    nbs_train_log_free(&t->log);
    nbs_model_free(t->m);
    tu_cells_free(&t->cells);
    nbs_matrix_free(t->X);
    gsl_rng_free(t->r);
}

static void test_decoder_ignoring_z_is_not_healthy(void **state) {
    (void)state;
    nbs_error err = {0};
    trained_toy t;
    train_toy(&t, 8, 4);
    nbs_model *m = t.m;
    int d, width;
    nbs_model_decoder_first_weights(m, &d, &width);
    memset(nbs_model_decoder_first_weights_mut(m), 0, sizeof(float) * (size_t)d * width);
    nbs_collapse_report rep;
    const nbs_cells first = nbs_cells_slice(&t.cells, 0, 500);
    assert_int_equal(nbs_diagnose(m, &first, &t.c.diagnose, t.r, &rep, &err), 0);
    print_message("%s\n", rep.summary);
    assert_true(rep.recon_gain == 0 && rep.recon_gain_se == 0);
    assert_true(rep.n_sending == 4); /* the trained encoder still sends through every dimension */
    assert_true(rep.z_unused);
    assert_int_equal(rep.model, NBS_MODEL_COLLAPSED);
    assert_non_null(strstr(rep.summary, "the decoder does not use z"));
    assert_non_null(strstr(rep.summary, "4 of 4 dimensions carry KL"));
    assert_non_null(strstr(rep.remedies, "model.norm: batch"));
    for (int j = 0; j < 4; j++) assert_true(rep.decoder_nats[j] == 0 && rep.verdict[j] == NBS_DIM_INCONSISTENT);
    nbs_collapse_report_free(&rep);
    toy_free(&t);
}

/* A ladder [3, 2] trained briefly on the example data, then its top layer killed: its head gives
 * every cell the N(0, I) prior (KL 0, no activity) and the top-down prior of layer 1 ignores z_2
 * (its first weights zeroed; with skip connections their weights from z_2 too), so the decoder
 * cannot respond to it. Layer 2 is flagged collapsed, exactly, and layer 1 is not; the same model
 * trained with free bits and left alive has no collapsed layer. */
static void check_ladder_dead_top(int skip, int kill) {
    nbs_error err = {0};
    trained_toy t;
    memset(&t, 0, sizeof t);
    assert_int_equal(nbs_io_read_10x_mtx_dir("example_data/sim_mtx", &t.X, &err), 0);
    nbs_config_defaults(&t.c);
    nbs_model_config *mc = &t.c.model;
    mc->n_latent_layers = 2;
    mc->latent_layers[0] = 3;
    mc->latent_layers[1] = 2;
    mc->latent_dim = 2;
    mc->skip_connections = skip;
    mc->encoder_layers[0] = 64;
    mc->n_decoder_layers = 2;
    mc->decoder_layers[0] = 64;
    mc->decoder_layers[1] = 32;
    t.c.train.epochs = 10;
    t.c.train.warmup_epochs = 5;
    t.c.train.checkpoint_every = 0;
    t.c.train.free_bits = kill ? 0 : 0.5; /* the live control: every dimension kept sending */
    t.r = gsl_rng_alloc(gsl_rng_mt19937);
    t.m = nbs_model_new(mc, (int)t.X->n_genes, NULL, t.r, &err);
    assert_non_null(t.m);
    nbs_model *m = t.m;
    assert_true(nbs_model_ladder(m) && nbs_model_decoder_dim(m) == 5);
    assert_int_equal(nbs_train_state_init(&t.s, m, 0, &err), 0);
    t.cells = tu_cells(t.X);
    assert_int_equal(nbs_train(m, &t.cells, &t.c.train, &t.s, &t.log, NULL, NULL, &err), 0);
    if (kill) {
        int rows, cols;
        float *hw = nbs_model_param(m, "ladder.1.head.W", &rows, &cols), *hb = nbs_model_param(m, "ladder.1.head.b", NULL, NULL);
        memset(hw, 0, sizeof(float) * rows * cols); /* mean 0, log variance 0: the prior for every cell */
        memset(hb, 0, sizeof(float) * cols);
        float *pw = nbs_model_param(m, "ladder.0.prior.W", &rows, &cols);
        memset(pw, 0, sizeof(float) * rows * cols);
        for (int i = 0; skip && i < 2; i++) {
            char nm[64];
            snprintf(nm, sizeof nm, "decoder.%d.skip.1.W", i);
            float *sw = nbs_model_param(m, nm, &rows, &cols);
            assert_non_null(sw);
            memset(sw, 0, sizeof(float) * rows * cols);
        }
    }
    nbs_collapse_report rep;
    const nbs_cells first = nbs_cells_slice(&t.cells, 0, 500);
    assert_int_equal(nbs_diagnose(m, &first, &t.c.diagnose, t.r, &rep, &err), 0);
    assert_int_equal(rep.d, 5);
    assert_int_equal(rep.n_layers, 2);
    for (int j = 0; j < 5; j++)
        print_message("layer %d z_%d: KL %.4g activity %.4g sens_w %.4g nats %.4g -> %s\n", nbs_report_dim_layer(&rep, j) + 1,
                      j + 1, rep.kl[j], rep.activity[j], rep.sens_weight[j], rep.decoder_nats[j],
                      nbs_dim_verdict_word(rep.verdict[j]));
    for (int l = 0; l < 2; l++) print_message("%s\n", rep.layers[l].summary);
    assert_int_equal(rep.layers[0].offset, 0);
    assert_int_equal(rep.layers[1].offset, 3);
    if (kill) {
        for (int j = 3; j < 5; j++) {
            assert_true(rep.kl[j] < 1e-9 && rep.activity[j] < 1e-12 && rep.sens_weight[j] == 0);
            assert_true(rep.decoder_nats[j] == 0 && rep.verdict[j] == NBS_DIM_COLLAPSED);
        }
        assert_int_equal(rep.layers[1].verdict, NBS_MODEL_COLLAPSED);
        assert_non_null(strstr(rep.layers[1].summary, "layer 2 collapsed: the top-down prior carries it"));
        assert_non_null(strstr(rep.summary, "layer 2 collapsed"));
    } else {
        assert_true(rep.layers[1].verdict != NBS_MODEL_COLLAPSED);
    }
    /* layer 1 carries the cells either way */
    assert_true(rep.layers[0].verdict != NBS_MODEL_COLLAPSED && rep.layers[0].n_active >= 1);
    assert_true(rep.layers[0].mi > 0 && rep.layers[0].mi <= log(t.c.diagnose.mi_batch));
    assert_false(rep.z_unused);
    nbs_collapse_report_free(&rep);
    toy_free(&t);
}

static void test_ladder_dead_top_layer(void **state) {
    (void)state;
    check_ladder_dead_top(0, 1);
    check_ladder_dead_top(1, 1);
    check_ladder_dead_top(0, 0);
    check_ladder_dead_top(1, 0);
}

/* A healthy trained model (the example data, a small model, KL warm-up): no dimension flagged. */
static void test_healthy_trained_model(void **state) {
    (void)state;
    nbs_error err = {0};
    trained_toy t;
    train_toy(&t, 15, 5);
    nbs_collapse_report rep;
    const nbs_cells first = nbs_cells_slice(&t.cells, 0, 800);
    assert_int_equal(nbs_diagnose(t.m, &first, &t.c.diagnose, t.r, &rep, &err), 0);
    print_message("%s\n", rep.summary);
    assert_int_equal(rep.n_active, 4);
    assert_int_equal(rep.n_collapsed + rep.n_inconsistent, 0);
    assert_int_equal(rep.model, NBS_MODEL_HEALTHY);
    assert_true(rep.recon_gain > 1);
    assert_true(rep.recon_gain > 10 * rep.recon_gain_se && !rep.z_unused);
    for (int j = 0; j < 4; j++) assert_true(rep.decoder_nats[j] > t.c.diagnose.tau_decoder_nats);
    nbs_collapse_report_free(&rep);
    toy_free(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_mi_known_gaussian),
                                       cmocka_unit_test(test_verdicts_by_construction),
                                       cmocka_unit_test(test_ladder_dead_top_layer),
                                       cmocka_unit_test(test_decoder_ignoring_z_is_not_healthy),
                                       cmocka_unit_test(test_healthy_trained_model)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
