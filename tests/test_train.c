/* Training: schedules, seeded reproducibility, checkpoint/resume equivalence, free bits, and
 * the stop on non-finite values — on the project's own example data. */
#include "testutil.h"

#include <hdf5.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/checkpoint.h"
#include "nbsphere/io.h"
#include "nbsphere/nn.h"
#include "nbsphere/train.h"

static nbs_matrix *example(void) {
    static nbs_matrix *X;
    if (!X) {
        nbs_error err = {0};
        assert_int_equal(nbs_io_read_10x_mtx_dir("example_data/sim_mtx", &X, &err), 0);
    }
    return X;
}

/* The example's cells with their library sizes, made once like the matrix. */
static const nbs_cells *example_cells(void) {
    static nbs_cells c;
    if (!c.X) c = tu_cells(example());
    return &c;
}

static nbs_config small(void) {
    nbs_config c;
    nbs_config_defaults(&c);
    c.model.encoder_layers[0] = 32;
    c.model.decoder_layers[0] = 32;
    c.model.latent_dim = 4;
    c.train.epochs = 3;
    c.train.warmup_epochs = 2;
    c.train.seed = 42;
    c.train.checkpoint_every = 0;
    return c;
}

typedef struct {
    nbs_model *m;
    nbs_train_state s;
    nbs_train_log log;
} trained;

static int train_for(const nbs_config *c, trained *t, nbs_error *err) {
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, c->train.seed);
    t->m = nbs_model_new(&c->model, (int)example()->n_genes, NULL, r, err);
    gsl_rng_free(r);
    assert_non_null(t->m);
    memset(&t->log, 0, sizeof t->log);
    assert_int_equal(nbs_train_state_init(&t->s, t->m, c->train.seed, err), 0);
    return nbs_train(t->m, example_cells(), &c->train, &t->s, &t->log, NULL, NULL, err);
}

static void release(trained *t) {
    nbs_model_free(t->m);
    nbs_train_state_free(&t->s);
    nbs_train_log_free(&t->log);
}

static const float *params(nbs_model *m, int64_t *n) {
    float *p;
    nbs_model_flat(m, &p, NULL, NULL, NULL, n, NULL, NULL);
    return p;
}

static void test_schedules(void **s) {
    (void)s;
    nbs_train_config tc = small().train;
    tc.epochs = 10;
    tc.beta = 2;
    tc.warmup_epochs = 4;
    const int64_t spe = 5; /* steps per epoch */
    tc.schedule = NBS_SCHED_CONSTANT;
    assert_true(nbs_train_beta(&tc, 0, spe) == 2);
    tc.schedule = NBS_SCHED_LINEAR;
    assert_true(fabs(nbs_train_beta(&tc, 9, spe) - 1.0) < 1e-12); /* half way through 20 steps */
    assert_true(nbs_train_beta(&tc, 19, spe) == 2 && nbs_train_beta(&tc, 40, spe) == 2);
    tc.schedule = NBS_SCHED_SIGMOID;
    assert_true(fabs(nbs_train_beta(&tc, 9, spe) - 1.0) < 1e-12);
    assert_true(nbs_train_beta(&tc, 0, spe) < 0.02);
    tc.warmup_steps = 10; /* steps take precedence over epochs */
    tc.schedule = NBS_SCHED_LINEAR;
    assert_true(fabs(nbs_train_beta(&tc, 4, spe) - 1.0) < 1e-12);
    tc.schedule = NBS_SCHED_CYCLICAL; /* 50 steps, 4 cycles of 12.5, ramp over half of each */
    tc.cycles = 4;
    tc.ramp_fraction = 0.5;
    assert_true(nbs_train_beta(&tc, 0, spe) == 0);
    assert_true(fabs(nbs_train_beta(&tc, 3, spe) - 2 * (3 / 12.5) / 0.5) < 1e-12);
    assert_true(nbs_train_beta(&tc, 10, spe) == 2);
    assert_true(nbs_train_beta(&tc, 13, spe) < 0.2); /* the second cycle starts again near 0 */
}

/* The same seed, data and thread count give bit-identical parameters; another seed does not. */
static void test_seed_reproduces(void **s) {
    (void)s;
    nbs_error err = {0};
    nbs_config c = small();
    trained a, b, d;
    assert_int_equal(train_for(&c, &a, &err), 0);
    assert_int_equal(train_for(&c, &b, &err), 0);
    c.train.seed = 43;
    assert_int_equal(train_for(&c, &d, &err), 0);
    int64_t n;
    const float *pa = params(a.m, &n), *pb = params(b.m, NULL), *pd = params(d.m, NULL);
    assert_memory_equal(pa, pb, sizeof(float) * n);
    assert_true(memcmp(pa, pd, sizeof(float) * n) != 0);
    assert_int_equal(a.log.n, 3);
    assert_true(a.log.rec[2].val_elbo == b.log.rec[2].val_elbo);
    release(&a), release(&b), release(&d);
}

typedef struct {
    const nbs_config *c;
    const char *path;
    int saved;
} ckpt_ctx;

static int save_hook(void *user, nbs_model *m, const nbs_train_state *s, const nbs_train_log *l,
                     nbs_error *err) {
    ckpt_ctx *x = user;
    const nbs_matrix *X = example();
    x->saved++;
    return nbs_checkpoint_save(x->path, m, x->c, NULL, X->gene_names, X->gene_ids, s, l, err);
}

/* Training 4 epochs straight equals training 2, saving, loading and training 2 more. */
static void check_resume(int ladder) {
    nbs_error err = {0};
    nbs_config c = small();
    c.train.epochs = 4;
    c.model.dropout = 0.2; /* masks come from the saved generator too */
    c.model.norm = NBS_NORM_BATCH; /* running statistics are state that must be saved */
    if (ladder) { /* a ladder with skip connections: its blocks by name, its KL vector in the log */
        c.model.n_latent_layers = 2;
        c.model.latent_layers[0] = 5;
        c.model.latent_layers[1] = 3;
        c.model.latent_dim = 3;
        c.model.skip_connections = 1;
    }
    trained full;
    assert_int_equal(train_for(&c, &full, &err), 0);

    char *dir = tu_tmpdir();
    const char *path = tu_path(dir, "ckpt.h5");
    c.train.checkpoint_every = 2;
    ckpt_ctx ctx = {&c, path, 0};
    nbs_train_hooks h = {NULL, NULL, save_hook, path, NULL, &ctx};
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, c.train.seed);
    trained part = {0};
    part.m = nbs_model_new(&c.model, (int)example()->n_genes, NULL, r, &err);
    gsl_rng_free(r);
    assert_int_equal(nbs_train_state_init(&part.s, part.m, c.train.seed, &err), 0);
    nbs_train_config stop_at_2 = c.train; /* an interrupted run: it got as far as epoch 2 */
    stop_at_2.epochs = 2;
    c.train.epochs = 4;
    assert_int_equal(nbs_train(part.m, example_cells(), &stop_at_2, &part.s, &part.log, NULL, NULL, &err), 0);
    assert_int_equal(save_hook(&ctx, part.m, &part.s, &part.log, &err), 0);

    nbs_checkpoint ck;
    if (nbs_checkpoint_load(path, &ck, &err)) fail_msg("%s", err.msg);
    { /* the file holds exactly the interrupted run's state */
        int64_t n;
        float *a, *b, *am, *bm, *st_a, *st_b;
        int64_t ns, *ta, *tb;
        nbs_model_flat(part.m, &a, &am, NULL, &st_a, &n, &ns, &ta);
        nbs_model_flat(ck.model, &b, &bm, NULL, &st_b, NULL, NULL, &tb);
        assert_memory_equal(a, b, sizeof(float) * n);
        assert_memory_equal(am, bm, sizeof(float) * n);
        assert_memory_equal(st_a, st_b, sizeof(float) * ns);
        assert_int_equal(*ta, *tb);
        assert_memory_equal(gsl_rng_state(part.s.rng), gsl_rng_state(ck.state.rng), gsl_rng_size(ck.state.rng));
        assert_memory_equal(&ck.config.train, &c.train, sizeof c.train);
        assert_memory_equal(&ck.config.model, &c.model, sizeof c.model);
    }
    release(&part);
    assert_int_equal(ck.state.epochs_done, 2);
    assert_int_equal(ck.log.n, 2);
    assert_int_equal(ck.n_genes, example()->n_genes);
    assert_string_equal(ck.gene_names[5], example()->gene_names[5]);
    assert_int_equal(nbs_train(ck.model, example_cells(), &ck.config.train, &ck.state, &ck.log, &h, NULL, &err), 0);
    int64_t n;
    const float *pf = params(full.m, &n), *pr = params(ck.model, NULL);
    assert_memory_equal(pf, pr, sizeof(float) * n);
    assert_true(full.log.rec[3].val_elbo == ck.log.rec[3].val_elbo);
    if (ladder) { /* the loaded model embeds as the trained one; the log keeps every layer's KL terms */
        assert_int_equal(ck.log.kl_terms, 8);
        assert_memory_equal(full.log.kl_dims, ck.log.kl_dims, sizeof(double) * 4 * 8);
        const int64_t nc = example()->n_cells;
        float *za = malloc(sizeof(float) * nc * 3), *zb = malloc(sizeof(float) * nc * 3);
        assert_int_equal(nbs_model_embed(full.m, example_cells(), za, NULL, &err), 0);
        assert_int_equal(nbs_model_embed(ck.model, example_cells(), zb, NULL, &err), 0);
        assert_memory_equal(za, zb, sizeof(float) * nc * 3);
        free(za), free(zb);
    }
    nbs_checkpoint_free(&ck);
    release(&full);
    tu_rmtree(dir);
    free(dir);
}

static void test_resume_ladder(void **s) {
    (void)s;
    check_resume(1);
}

static void test_resume_matches(void **s) {
    (void)s;
    check_resume(0);
    nbs_error err = {0};
    nbs_checkpoint ck;
    char *dir = tu_tmpdir();
    const char *path = tu_path(dir, "ckpt.h5");

    /* a damaged model file is refused with the dataset named */
    assert_int_equal(tu_write_file(path, "not hdf5"), 0);
    assert_int_not_equal(nbs_checkpoint_load(path, &ck, &err), 0);
    assert_non_null(strstr(err.msg, path));
    tu_rmtree(dir);
    free(dir);
}

/* With free bits far above what the KL reaches, the KL has no gradient and grows. */
static void test_free_bits(void **s) {
    (void)s;
    nbs_error err = {0};
    nbs_config c = small();
    c.train.schedule = NBS_SCHED_CONSTANT;
    trained plain, fb;
    assert_int_equal(train_for(&c, &plain, &err), 0);
    c.train.free_bits = 1e6;
    assert_int_equal(train_for(&c, &fb, &err), 0);
    print_message("KL after 3 epochs: %.3f without free bits, %.3f with\n", plain.log.rec[2].kl, fb.log.rec[2].kl);
    assert_true(fb.log.rec[2].kl > 1.5 * plain.log.rec[2].kl);
    release(&plain), release(&fb);
}

/* A poisoned parameter stops training with a message naming the step and the term. */
static void test_nan_stops_with_diagnosis(void **s) {
    (void)s;
    nbs_error err = {0};
    nbs_config c = small();
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    trained t = {0};
    t.m = nbs_model_new(&c.model, (int)example()->n_genes, NULL, r, &err);
    gsl_rng_free(r);
    assert_int_equal(nbs_train_state_init(&t.s, t.m, 1, &err), 0);
    nbs_model_param(t.m, "decoder.out.b", NULL, NULL)[7] = NAN;
    int st = nbs_train(t.m, example_cells(), &c.train, &t.s, &t.log, NULL, NULL, &err);
    assert_int_equal(st, NBS_ERR_NUMERIC);
    print_message("%s\n", err.msg);
    assert_non_null(strstr(err.msg, "epoch 1, step 1"));
    assert_non_null(strstr(err.msg, "reconstruction"));
    release(&t);
}

/* Early stopping: with a learning rate far too high the validation ELBO stops improving, training
 * ends before train.epochs, and the parameters are those of the best epoch. */
static void test_early_stopping_keeps_best(void **s) {
    (void)s;
    nbs_error err = {0};
    nbs_config c = small();
    c.train.epochs = 30;
    c.train.patience = 2;
    c.train.learning_rate = 0.05;
    trained t;
    assert_int_equal(train_for(&c, &t, &err), 0);
    print_message("stopped after %d of %d epochs; best epoch %d\n", t.log.n, c.train.epochs, t.s.best_epoch);
    assert_true(t.log.n < c.train.epochs);
    assert_int_equal(t.log.n, t.s.best_epoch + c.train.patience);
    int64_t n;
    const float *p = params(t.m, &n);
    assert_memory_equal(p, t.s.best_params, sizeof(float) * n);
    for (int e = 0; e < t.log.n; e++) assert_true(t.log.rec[e].val_elbo <= t.s.best_val);
    release(&t);
}

typedef struct {
    int64_t n_state;
    float *state_at; /* [epochs x n_state] batch-norm statistics after each epoch */
} state_trace;

static int trace_state(void *user, nbs_model *m, int epoch, nbs_error *err) {
    (void)err;
    state_trace *t = user;
    float *st;
    nbs_model_flat(m, NULL, NULL, NULL, &st, NULL, NULL, NULL);
    memcpy(t->state_at + (int64_t)(epoch - 1) * t->n_state, st, sizeof(float) * (size_t)t->n_state);
    return NBS_OK;
}

/* Early stopping with batch norm keeps the best epoch's running statistics with its weights, not
 * those of the epochs after it; model.h5 stores the batch-norm constants and the best statistics,
 * and a format-1 file (without either) still loads, with the constants it was trained with. */
static void test_early_stopping_restores_batch_norm(void **s) {
    (void)s;
    nbs_error err = {0};
    nbs_config c = small();
    c.model.norm = NBS_NORM_BATCH;
    c.train.epochs = 30;
    c.train.patience = 2;
    c.train.learning_rate = 0.05;
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, c.train.seed);
    trained t = {0};
    t.m = nbs_model_new(&c.model, (int)example()->n_genes, NULL, r, &err);
    gsl_rng_free(r);
    assert_non_null(t.m);
    nbs_model_set_batch_norm(t.m, 2e-3, 0.05); /* not the defaults, so the file must carry them */
    assert_int_equal(nbs_train_state_init(&t.s, t.m, c.train.seed, &err), 0);
    state_trace tr = {nbs_model_n_state(t.m), NULL};
    assert_true(tr.n_state > 0);
    tr.state_at = calloc((size_t)(c.train.epochs * tr.n_state), sizeof(float));
    nbs_train_hooks h = {NULL, NULL, NULL, NULL, trace_state, &tr};
    assert_int_equal(nbs_train(t.m, example_cells(), &c.train, &t.s, &t.log, &h, NULL, &err), 0);
    assert_true(t.log.n < c.train.epochs);
    float *st;
    nbs_model_flat(t.m, NULL, NULL, NULL, &st, NULL, NULL, NULL);
    const size_t bytes = sizeof(float) * (size_t)tr.n_state;
    assert_memory_equal(st, tr.state_at + (int64_t)(t.s.best_epoch - 1) * tr.n_state, bytes);
    assert_true(memcmp(st, tr.state_at + (int64_t)(t.log.n - 1) * tr.n_state, bytes) != 0);

    char *dir = tu_tmpdir();
    const char *path = tu_path(dir, "model.h5");
    const nbs_matrix *X = example();
    assert_int_equal(nbs_checkpoint_save(path, t.m, &c, NULL, X->gene_names, X->gene_ids, &t.s, &t.log, &err), 0);
    nbs_checkpoint ck;
    if (nbs_checkpoint_load(path, &ck, &err)) fail_msg("%s", err.msg);
    double eps, momentum;
    nbs_model_batch_norm(ck.model, &eps, &momentum);
    assert_true(eps == 2e-3 && momentum == 0.05);
    assert_memory_equal(ck.state.best_state, t.s.best_state, bytes);
    nbs_checkpoint_free(&ck);

    /* format 1: no constants, no best statistics */
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    assert_true(f >= 0);
    int one = 1;
    hid_t a = H5Aopen(f, "format_version", H5P_DEFAULT);
    assert_true(a >= 0 && H5Awrite(a, H5T_NATIVE_INT, &one) >= 0);
    H5Aclose(a);
    assert_true(H5Adelete_by_name(f, "params", "batch_norm_eps", H5P_DEFAULT) >= 0);
    assert_true(H5Adelete_by_name(f, "params", "batch_norm_momentum", H5P_DEFAULT) >= 0);
    assert_true(H5Ldelete(f, "train/best_state", H5P_DEFAULT) >= 0);
    H5Fclose(f);
    if (nbs_checkpoint_load(path, &ck, &err)) fail_msg("%s", err.msg);
    nbs_model_batch_norm(ck.model, &eps, &momentum);
    assert_true(eps == NBS_BN_EPS && momentum == NBS_BN_MOMENTUM);
    float *ck_state;
    nbs_model_flat(ck.model, NULL, NULL, NULL, &ck_state, NULL, NULL, NULL);
    assert_memory_equal(ck.state.best_state, ck_state, bytes);
    nbs_checkpoint_free(&ck);
    free(tr.state_at);
    release(&t);
    tu_rmtree(dir);
    free(dir);
}

/* train.epochs auto: 200 up to 20000 cells (400 with categorical covariates, scvi-tools'
 * min(round(20000 / cells * 400), 400)), then the same number of steps, at least 10; the warm-up
 * auto is half; explicit values stay. */
static void test_auto_epochs(void **s) {
    (void)s;
    nbs_config c;
    nbs_config_defaults(&c);
    assert_int_equal(c.train.epochs, NBS_AUTO);
    const int64_t cells[] = {300, 20000, 50000, 100000, 10000000};
    const int want[] = {200, 200, 80, 40, 10}, want_covariates[] = {400, 400, 160, 80, 10};
    for (int i = 0; i < 5; i++)
        for (int cov = 0; cov < 2; cov++) {
            nbs_train_config t = c.train;
            nbs_train_resolve(&t, cells[i], cov);
            const int w = cov ? want_covariates[i] : want[i];
            assert_int_equal(t.epochs, w);
            assert_int_equal(t.warmup_epochs, w / 2);
        }
    nbs_train_config t = c.train;
    t.epochs = 7, t.warmup_epochs = 0;
    nbs_train_resolve(&t, 50000, 0);
    assert_int_equal(t.epochs, 7);
    assert_int_equal(t.warmup_epochs, 0);
    t.warmup_epochs = NBS_AUTO;
    nbs_train_resolve(&t, 50000, 0);
    assert_int_equal(t.warmup_epochs, 3);
}

/* A log of n epochs: loss falling from 2x to x, validation ELBO -loss unless edited. */
static void fill_log(nbs_train_log *l, int n) {
    memset(l, 0, sizeof *l);
    l->kl_terms = 1;
    double kl = 0;
    for (int e = 1; e <= n; e++) {
        nbs_epoch_record r = {0};
        r.epoch = e;
        r.loss = 1000 * (1 + 1.0 / e);
        r.val_elbo = -r.loss;
        nbs_error err = {0};
        assert_int_equal(nbs_train_log_append(l, &r, &kl, &err), 0);
    }
}

/* The training-health check flags unstable first steps, a jump in the loss and a validation ELBO
 * that stays below its best, and nothing in an ordinary log. */
static void test_training_health(void **s) {
    (void)s;
    nbs_train_log l;
    nbs_train_health h;
    fill_log(&l, 100);
    nbs_train_log_health(&l, &h);
    assert_false(h.unstable || h.overfits);
    assert_string_equal(h.message, "");
    assert_int_equal(h.best_val_epoch, 100);
    l.rec[0].loss = 50 * l.rec[99].loss; /* a first epoch far above the rest */
    nbs_train_log_health(&l, &h);
    assert_true(h.unstable && !h.overfits);
    assert_non_null(strstr(h.message, "first epoch's loss was 50 times the last"));
    assert_non_null(strstr(h.message, "model.norm: batch"));
    nbs_train_log_free(&l);

    fill_log(&l, 100);
    l.rec[40].loss = 3 * l.rec[39].loss; /* epoch 41 overshoots */
    nbs_train_log_health(&l, &h);
    assert_true(h.unstable && h.jump_epoch == 41 && fabs(h.largest_jump - 3) < 1e-12);
    assert_non_null(strstr(h.message, "jumped 3-fold at epoch 41"));
    nbs_train_log_free(&l);

    fill_log(&l, 100); /* the validation ELBO peaks at epoch 20 and ends 20 % lower */
    for (int e = 20; e < 100; e++) l.rec[e].val_elbo = l.rec[19].val_elbo * (1 + 0.2 * (e - 19) / 80.0);
    nbs_train_log_health(&l, &h);
    assert_true(h.overfits && !h.unstable);
    assert_int_equal(h.best_val_epoch, 20);
    assert_int_equal(h.val_worse_epochs, 80);
    assert_non_null(strstr(h.message, "below its best (epoch 20) for 80 epochs and ends 20.0 % lower"));
    for (int e = 20; e < 100; e++) l.rec[e].val_elbo = l.rec[19].val_elbo * 1.005; /* 0.5 %: noise */
    nbs_train_log_health(&l, &h);
    assert_false(h.overfits);
    nbs_train_log_free(&l);
}

/* Gradient clipping: the global norm is measured and scaled exactly to the limit, and training
 * with a limit takes other steps than without (Adam is scale-invariant, so the effect is on how a
 * large gradient weighs against the running moments, not on the step size itself). */
static void test_grad_clip(void **s) {
    (void)s;
    nbs_error err = {0};
    nbs_config c = small();
    c.train.epochs = 1;
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 1);
    nbs_model *m = nbs_model_new(&c.model, (int)example()->n_genes, NULL, r, &err);
    int64_t rows[64];
    for (int i = 0; i < 64; i++) rows[i] = i * 7;
    float klw[4] = {1.0f / 64, 1.0f / 64, 1.0f / 64, 1.0f / 64};
    double recon, kl[4];
    nbs_cells batch = *example_cells();
    batch.rows = rows;
    batch.n = 64;
    nbs_workspace *w = tu_workspace(m, example(), 64);
    nbs_model_zero_grad(m);
    assert_int_equal(nbs_model_forward(m, w, &batch, NBS_PASS_TRAIN, r, &recon, kl, &err), 0);
    nbs_model_backward(m, w, 1.0f, klw);
    nbs_workspace_free(w);
    const double norm = nbs_model_grad_norm(m);
    assert_true(norm > 1);
    nbs_model_scale_grad(m, 0.5 / norm);
    assert_true(fabs(nbs_model_grad_norm(m) - 0.5) < 1e-4);
    nbs_model_free(m);
    gsl_rng_free(r);

    trained plain, clipped;
    assert_int_equal(train_for(&c, &plain, &err), 0);
    c.train.grad_clip = 0.5;
    assert_int_equal(train_for(&c, &clipped, &err), 0);
    int64_t n;
    const float *pp = params(plain.m, &n), *pc = params(clipped.m, NULL);
    assert_true(memcmp(pp, pc, sizeof(float) * n) != 0);
    assert_true(isfinite(clipped.log.rec[0].val_elbo));
    release(&plain), release(&clipped);
}

/* A second process, emulated inside the first one's reduction hooks: its forward on its half
 * continues from the first process's generator (so the two halves draw what one batch would),
 * its sums and gradients are added to the first process's. */
typedef struct {
    nbs_model *m;
    nbs_workspace *w;
    nbs_cells batch;
    gsl_rng *first_rng;
    double beta;
    int64_t n_all;
    float *grads; /* (n_params) what the grads hook saw, reduced */
} peer;

static int peer_sums(void *user, double *recon, double *kl, int K, int64_t *n, nbs_error *err) {
    peer *p = user;
    gsl_rng *r = gsl_rng_clone(p->first_rng);
    double rp, klp[NBS_MAX_KL_TERMS];
    nbs_model_zero_grad(p->m);
    int st = nbs_model_forward(p->m, p->w, &p->batch, NBS_PASS_TRAIN, r, &rp, klp, err);
    gsl_rng_free(r);
    *recon += rp;
    for (int t = 0; t < K; t++) kl[t] += klp[t];
    *n += p->batch.n;
    p->n_all = *n;
    return st;
}

static int peer_grads(void *user, float *grads, int64_t n_params, float *state, int64_t n_state, nbs_error *err) {
    (void)state, (void)n_state, (void)err;
    peer *p = user;
    if (p->m) {
        float klw[NBS_MAX_KL_TERMS];
        for (int t = 0; t < nbs_model_kl_terms(p->m); t++) klw[t] = (float)(p->beta / p->n_all);
        nbs_model_backward(p->m, p->w, (float)((double)p->batch.n / p->n_all), klw);
        const float *g = nbs_model_grad_block(p->m);
        for (int64_t k = 0; k < n_params; k++) grads[k] += g[k];
    }
    memcpy(p->grads, grads, sizeof(float) * (size_t)n_params);
    return 0;
}

/* Data-parallel steps meet in the reduction hooks: two halves of a batch, their sums and
 * gradients summed, take the step one process takes on the whole batch (the reconstruction
 * weighted by each half's share of the cells, the KL by the whole batch's count). */
static void test_reduction_hooks_split_a_batch(void **s) {
    (void)s;
    nbs_error err = {0};
    nbs_config c = small();
    c.model.dropout = 0; /* no masks: the halves draw exactly the whole batch's noise */
    c.model.norm = NBS_NORM_NONE; /* batch statistics would differ between halves */
    nbs_model *m[3];
    for (int k = 0; k < 3; k++) {
        gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
        m[k] = nbs_model_new(&c.model, (int)example()->n_genes, NULL, r, &err); /* the same weights */
        gsl_rng_free(r);
        assert_non_null(m[k]);
    }
    int64_t rows[64];
    for (int i = 0; i < 64; i++) rows[i] = (i * 13) % example()->n_cells;
    nbs_cells whole = *example_cells(), first, second;
    whole.rows = rows;
    whole.n = 64;
    first = nbs_cells_slice(&whole, 0, 32);
    second = nbs_cells_slice(&whole, 32, 32);
    const int64_t np = nbs_model_n_params(m[0]);
    float *g_whole = malloc(sizeof(float) * np), *g_split = malloc(sizeof(float) * np);
    nbs_workspace *w[3];
    for (int k = 0; k < 3; k++) w[k] = tu_workspace(m[k], example(), 64);
    const double beta = 0.7;
    nbs_step_result whole_r, split_r;

    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    peer alone = {NULL, NULL, whole, r, beta, 64, g_whole};
    nbs_train_reduce capture = {NULL, peer_grads, &alone, 0, 0, NULL, NULL};
    assert_int_equal(nbs_train_step(m[0], w[0], &whole, &c.train, beta, r, &capture, &whole_r, &err), 0);

    gsl_rng_set(r, gsl_rng_default_seed);
    peer other = {m[2], w[2], second, r, beta, 0, g_split};
    nbs_train_reduce two = {peer_sums, peer_grads, &other, 0, 0, NULL, NULL};
    assert_int_equal(nbs_train_step(m[1], w[1], &first, &c.train, beta, r, &two, &split_r, &err), 0);

    assert_int_equal(split_r.n_cells, 64);
    assert_true(fabs(split_r.recon - whole_r.recon) < 1e-6 * fabs(whole_r.recon));
    assert_true(fabs(split_r.loss - whole_r.loss) < 1e-6 * fabs(whole_r.loss));
    double diff = 0, norm = 0;
    for (int64_t k = 0; k < np; k++) {
        diff += ((double)g_split[k] - g_whole[k]) * ((double)g_split[k] - g_whole[k]);
        norm += (double)g_whole[k] * g_whole[k];
    }
    print_message("two halves vs one batch: gradient relative difference %.2e (norm %.3g)\n", sqrt(diff / norm), sqrt(norm));
    assert_true(norm > 0 && sqrt(diff / norm) < 1e-5);
    gsl_rng_free(r);
    for (int k = 0; k < 3; k++) nbs_workspace_free(w[k]), nbs_model_free(m[k]);
    free(g_whole), free(g_split);
}

/* A data-parallel share of a batch (nbs_workspace_set_share) draws the whole batch's dropout
 * masks and Gaussian samples and keeps its own: each half's cells get the log-likelihood and KL
 * they get in the whole batch, and the generator ends where the whole batch leaves it. Without
 * the share, the second half would take the first half's noise. */
static void test_share_draws_the_whole_batchs_noise(void **s) {
    (void)s;
    nbs_error err = {0};
    nbs_config c = small();
    c.model.dropout = 0.2;
    c.model.norm = NBS_NORM_NONE;
    gsl_rng *init = gsl_rng_alloc(gsl_rng_mt19937);
    nbs_model *m = nbs_model_new(&c.model, (int)example()->n_genes, NULL, init, &err);
    gsl_rng_free(init);
    assert_non_null(m);
    const int K = nbs_model_kl_terms(m);
    int64_t rows[64];
    for (int i = 0; i < 64; i++) rows[i] = (i * 13) % example()->n_cells;
    nbs_cells whole = *example_cells();
    whole.rows = rows;
    whole.n = 64;
    const nbs_cells half[2] = {nbs_cells_slice(&whole, 0, 32), nbs_cells_slice(&whole, 32, 32)};
    nbs_workspace *w = tu_workspace(m, example(), 64);
    double rc, kl[NBS_MAX_KL_TERMS], ll_whole[64], ll_half[64], ll_plain[32], kl_whole[64], kl_half[64];
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    assert_int_equal(nbs_model_forward(m, w, &whole, NBS_PASS_TRAIN, r, &rc, kl, &err), 0);
    memcpy(ll_whole, nbs_workspace_loglik(w), sizeof ll_whole);
    for (int i = 0; i < 64; i++) kl_whole[i] = nbs_workspace_kl(w)[(int64_t)i * K];
    const unsigned long next_whole = gsl_rng_get(r);
    for (int h = 0; h < 2; h++) {
        gsl_rng_set(r, gsl_rng_default_seed);
        nbs_workspace_set_share(w, 32 * h, 32 * (1 - h), NULL);
        assert_int_equal(nbs_model_forward(m, w, &half[h], NBS_PASS_TRAIN, r, &rc, kl, &err), 0);
        memcpy(ll_half + 32 * h, nbs_workspace_loglik(w), sizeof(double) * 32);
        for (int i = 0; i < 32; i++) kl_half[32 * h + i] = nbs_workspace_kl(w)[(int64_t)i * K];
        assert_int_equal(gsl_rng_get(r), next_whole);
    }
    gsl_rng_set(r, gsl_rng_default_seed);
    nbs_workspace_set_share(w, 0, 0, NULL);
    assert_int_equal(nbs_model_forward(m, w, &half[1], NBS_PASS_TRAIN, r, &rc, kl, &err), 0);
    memcpy(ll_plain, nbs_workspace_loglik(w), sizeof ll_plain);
    double dmax = 0, dplain = 0;
    for (int i = 0; i < 64; i++) {
        dmax = fmax(dmax, fabs(ll_half[i] - ll_whole[i]) / fabs(ll_whole[i]));
        dmax = fmax(dmax, fabs(kl_half[i] - kl_whole[i]) / fmax(1e-3, fabs(kl_whole[i])));
    }
    for (int i = 0; i < 32; i++) dplain = fmax(dplain, fabs(ll_plain[i] - ll_whole[32 + i]) / fabs(ll_whole[32 + i]));
    print_message("halves with shares vs the whole batch: %.2e relative; second half without its share: %.2e\n",
                  dmax, dplain);
    assert_true(dmax < 1e-6);
    assert_true(dplain > 1e-3);
    gsl_rng_free(r);
    nbs_workspace_free(w);
    nbs_model_free(m);
}

typedef struct {
    const nbs_model *m;
    float *loc, *spread;
    int st;
} embed_job;

static void *embed_thread(void *p) {
    embed_job *j = p;
    nbs_error err = {0};
    j->st = nbs_model_embed(j->m, example_cells(), j->loc, j->spread, &err);
    return NULL;
}

/* Inference reads a const model and keeps what it computes in its own workspace: two threads
 * embedding with one model at the same time get the single-thread result bit for bit. */
static void test_concurrent_embedding(void **s) {
    (void)s;
    nbs_error err = {0};
    const nbs_latent_kind kinds[2] = {NBS_LATENT_GAUSSIAN, NBS_LATENT_VMF};
    for (int k = 0; k < 2; k++) {
        nbs_config c = small();
        c.model.latent = kinds[k];
        c.model.norm = NBS_NORM_BATCH;
        c.train.epochs = 2;
        trained t;
        assert_int_equal(train_for(&c, &t, &err), 0);
        const int64_t n = example()->n_cells, d = c.model.latent_dim, sd = nbs_latent_ops_of(kinds[k])->on_sphere ? 1 : d;
        float *ref = malloc(sizeof(float) * n * d), *ref_spread = malloc(sizeof(float) * n * sd);
        assert_int_equal(nbs_model_embed(t.m, example_cells(), ref, ref_spread, &err), 0);
        embed_job jobs[2];
        pthread_t th[2];
        for (int i = 0; i < 2; i++) {
            jobs[i] = (embed_job){t.m, malloc(sizeof(float) * n * d), malloc(sizeof(float) * n * sd), -1};
            assert_int_equal(pthread_create(&th[i], NULL, embed_thread, &jobs[i]), 0);
        }
        for (int i = 0; i < 2; i++) {
            assert_int_equal(pthread_join(th[i], NULL), 0);
            assert_int_equal(jobs[i].st, 0);
            assert_memory_equal(jobs[i].loc, ref, sizeof(float) * n * d);
            assert_memory_equal(jobs[i].spread, ref_spread, sizeof(float) * n * sd);
            free(jobs[i].loc), free(jobs[i].spread);
        }
        free(ref), free(ref_spread);
        release(&t);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schedules),
        cmocka_unit_test(test_seed_reproduces),
        cmocka_unit_test(test_resume_matches),
        cmocka_unit_test(test_resume_ladder),
        cmocka_unit_test(test_free_bits),
        cmocka_unit_test(test_nan_stops_with_diagnosis),
        cmocka_unit_test(test_early_stopping_keeps_best),
        cmocka_unit_test(test_early_stopping_restores_batch_norm),
        cmocka_unit_test(test_training_health),
        cmocka_unit_test(test_auto_epochs),
        cmocka_unit_test(test_grad_clip),
        cmocka_unit_test(test_concurrent_embedding),
        cmocka_unit_test(test_reduction_hooks_split_a_batch),
        cmocka_unit_test(test_share_draws_the_whole_batchs_noise),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
