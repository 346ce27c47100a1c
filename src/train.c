#include "nbsphere/train.h"

#include <math.h>
#include <gsl/gsl_randist.h>
#include <gsl/gsl_sort_float.h>
#include <gsl/gsl_statistics_float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/io.h"
#include "nbsphere/nn.h"
#include "nbsphere/rng.h"

int nbs_train_state_init(nbs_train_state *s, const nbs_model *m, uint64_t seed, nbs_error *err) {
    memset(s, 0, sizeof *s);
    s->best_val = -INFINITY;
    if (!(s->rng = nbs_stream_rng(seed, NBS_STREAM_TRAIN, 0, err))) return err->code;
    s->best_params = nbs_calloc((size_t)nbs_model_n_params(m), sizeof(float), err);
    s->best_state = s->best_params ? nbs_calloc((size_t)nbs_model_n_state(m) + 1, sizeof(float), err) : NULL;
    return s->best_state ? NBS_OK : err->code;
}

/* The best epoch's model is its parameters and its batch-norm statistics: restoring only the
 * first would pair the best weights with the running statistics of later epochs. */
static void keep_best(nbs_model *m, nbs_train_state *s, int restore) {
    float *p, *st;
    int64_t np, ns;
    nbs_model_flat(m, &p, NULL, NULL, &st, &np, &ns, NULL);
    if (restore) {
        memcpy(p, s->best_params, sizeof(float) * (size_t)np);
        memcpy(st, s->best_state, sizeof(float) * (size_t)ns);
    } else {
        memcpy(s->best_params, p, sizeof(float) * (size_t)np);
        memcpy(s->best_state, st, sizeof(float) * (size_t)ns);
    }
}

void nbs_train_state_free(nbs_train_state *s) {
    if (s->rng) gsl_rng_free(s->rng);
    free(s->best_params);
    free(s->best_state);
    memset(s, 0, sizeof *s);
}

void nbs_train_log_free(nbs_train_log *l) {
    free(l->rec);
    free(l->kl_dims);
    memset(l, 0, sizeof *l);
}

int nbs_train_log_append(nbs_train_log *l, const nbs_epoch_record *r, const double *kl_dims,
                         nbs_error *err) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        nbs_epoch_record *nr = realloc(l->rec, sizeof *nr * cap);
        if (nr) l->rec = nr;
        double *nk = nr ? realloc(l->kl_dims, sizeof(double) * cap * (l->kl_terms ? l->kl_terms : 1)) : NULL;
        if (nk) l->kl_dims = nk;
        if (!nr || !nk) return nbs_error_set(err, NBS_ERR_NOMEM, "out of memory for the training log");
        l->cap = cap;
    }
    l->rec[l->n] = *r;
    memcpy(l->kl_dims + (int64_t)l->n * l->kl_terms, kl_dims, sizeof(double) * l->kl_terms);
    l->n++;
    return NBS_OK;
}

/* One log value: "NA" where there is none (no validation cells) or it is not finite, so
 * readers (pandas, R) see a missing value rather than a NaN that looks like a failed run. */
static void put_value(FILE *f, double v) {
    if (isfinite(v)) fprintf(f, "\t%.6g", v);
    else fputs("\tNA", f);
}

/* Loss ratios that ordinary training never shows: the KL warm-up raises the objective slowly,
 * and per-epoch noise is a few percent. A validation ELBO below its best for max(10, 10 % of the
 * epochs) epochs and by more than 1 % has stopped improving, not paused. */
#define HEALTH_FIRST_LAST 10.0
#define HEALTH_JUMP 2.0
#define HEALTH_WORSE_MIN 10
#define HEALTH_WORSE_FRACTION 0.1
#define HEALTH_VAL_DROP 0.01

void nbs_train_log_health(const nbs_train_log *l, nbs_train_health *h) {
    memset(h, 0, sizeof *h);
    h->first_over_last = h->largest_jump = NAN;
    h->val_drop = NAN;
    if (l->n < 2) return;
    const nbs_epoch_record *r = l->rec;
    h->first_over_last = r[0].loss / r[l->n - 1].loss;
    for (int e = 1; e < l->n; e++) {
        const double jump = r[e].loss / r[e - 1].loss;
        if (!(jump <= h->largest_jump)) h->largest_jump = jump, h->jump_epoch = r[e].epoch;
    }
    int best = -1;
    for (int e = 0; e < l->n; e++)
        if (isfinite(r[e].val_elbo) && (best < 0 || r[e].val_elbo > r[best].val_elbo)) best = e;
    if (best >= 0) {
        h->best_val_epoch = r[best].epoch;
        h->val_worse_epochs = r[l->n - 1].epoch - r[best].epoch;
        h->val_drop = (r[best].val_elbo - r[l->n - 1].val_elbo) / fabs(r[best].val_elbo);
    }
    /* losses are means of -log p + beta KL over count data: positive, so ratios are meaningful */
    const int positive = r[0].loss > 0 && r[l->n - 1].loss > 0;
    h->unstable = positive && (h->first_over_last > HEALTH_FIRST_LAST || h->largest_jump > HEALTH_JUMP);
    const int patience = HEALTH_WORSE_MIN > HEALTH_WORSE_FRACTION * l->n ? HEALTH_WORSE_MIN
                                                                         : (int)(HEALTH_WORSE_FRACTION * l->n);
    h->overfits = best >= 0 && h->val_worse_epochs >= patience && h->val_drop > HEALTH_VAL_DROP;
    size_t k = 0;
    const size_t cap = sizeof h->message;
    if (h->unstable && h->first_over_last > HEALTH_FIRST_LAST)
        k += (size_t)snprintf(h->message + k, cap - k, "the first epoch's loss was %.3g times the last: the "
                              "first steps were unstable; ", h->first_over_last);
    if (h->unstable && h->largest_jump > HEALTH_JUMP && k < cap)
        k += (size_t)snprintf(h->message + k, cap - k, "the loss jumped %.3g-fold at epoch %d: the optimiser "
                              "overshoots; ", h->largest_jump, h->jump_epoch);
    if (h->unstable && k < cap)
        k += (size_t)snprintf(h->message + k, cap - k, "try normalised hidden layers (model.norm: batch), a "
                              "lower train.learning_rate or gradient clipping (train.grad_clip: 10); ");
    if (h->overfits && k < cap)
        k += (size_t)snprintf(h->message + k, cap - k, "the validation ELBO has been below its best (epoch %d) "
                              "for %d epochs and ends %.1f %% lower: the model overfits or diverges; try "
                              "early stopping (train.patience: 20), fewer train.epochs or more model.dropout; ",
                              h->best_val_epoch, h->val_worse_epochs, 100 * h->val_drop);
    if (k >= 2 && k < cap) h->message[k - 2] = '\0'; /* the last "; " */
}

int nbs_train_log_write(const nbs_train_log *l, const char *path, nbs_error *err) {
    char tmp[NBS_PATH_MAX + 32];
    FILE *f;
    int st = nbs_io_atomic_open(path, tmp, &f, err);
    if (st) return st;
    fprintf(f, "epoch\ttrain_loss\ttrain_recon\ttrain_kl\tval_elbo\tval_recon\tval_kl\tbeta\tseconds\tkappa_median\tvmf_acceptance\tsec_products\tsec_likelihood");
    for (int t = 0; t < l->kl_terms; t++) fprintf(f, "\tkl_%d", t + 1);
    fputc('\n', f);
    for (int i = 0; i < l->n; i++) {
        const nbs_epoch_record *r = &l->rec[i];
        fprintf(f, "%d", r->epoch);
        const double v[7] = {r->loss, r->recon, r->kl, r->val_elbo, r->val_recon, r->val_kl, r->beta};
        for (int k = 0; k < 7; k++) put_value(f, v[k]);
        fprintf(f, "\t%.3f", r->seconds);
        put_value(f, r->kappa_median);
        put_value(f, r->acceptance);
        fprintf(f, "\t%.3f\t%.3f", r->sec_products, r->sec_likelihood);
        for (int t = 0; t < l->kl_terms; t++) put_value(f, l->kl_dims[(int64_t)i * l->kl_terms + t]);
        fputc('\n', f);
    }
    return nbs_io_atomic_close(f, tmp, path, err);
}

double nbs_train_beta(const nbs_train_config *tc, int64_t step, int64_t steps_per_epoch) {
    const double total = (double)tc->epochs * steps_per_epoch;
    double warm = tc->warmup_steps > 0 ? (double)tc->warmup_steps : (double)tc->warmup_epochs * steps_per_epoch;
    double t = warm > 0 ? (step + 1) / warm : 1;
    switch (tc->schedule) {
    case NBS_SCHED_CONSTANT: return tc->beta;
    case NBS_SCHED_LINEAR: return tc->beta * (t < 1 ? t : 1);
    case NBS_SCHED_SIGMOID: return t >= 1 ? tc->beta : tc->beta / (1 + exp(-12 * (t - 0.5)));
    case NBS_SCHED_CYCLICAL: { /* Fu et al. 2019: M cycles, each ramping over a fraction R */
        double period = total / (tc->cycles > 0 ? tc->cycles : 1);
        double tau = fmod((double)step, period) / period;
        double r = tc->ramp_fraction > 0 ? tau / tc->ramp_fraction : 1;
        return tc->beta * (r < 1 ? r : 1);
    }
    }
    return tc->beta;
}

int nbs_train_split(int64_t n, const nbs_train_config *tc, int64_t **order, int64_t *n_val,
                    nbs_error *err) {
    *order = nbs_malloc(sizeof(int64_t) * (n ? n : 1), err);
    if (!*order) return err->code;
    for (int64_t i = 0; i < n; i++) (*order)[i] = i;
    /* a stream of its own, so a resumed run (which restores only the training stream) sees the
     * same validation cells */
    gsl_rng *r = nbs_stream_rng(tc->seed, NBS_STREAM_SPLIT, 0, err);
    if (!r) {
        free(*order); /* the caller owns *order only on success */
        *order = NULL;
        return err->code;
    }
    gsl_ran_shuffle(r, *order, (size_t)n, sizeof(int64_t));
    gsl_rng_free(r);
    *n_val = (int64_t)floor(tc->validation_fraction * (double)n + 0.5);
    if (*n_val >= n) *n_val = n - 1; /* at least one training cell */
    if (*n_val < 0) *n_val = 0;
    return NBS_OK;
}

/* A data-parallel run's processes and their shares of each step's cells. */
typedef struct {
    int rank, size;          /* size 1: one process */
    const nbs_train_reduce *reduce;
    gsl_rng *sphere;         /* a sphere latent's own samples (size > 1), else NULL */
} peers;

/* Positions [lo, hi) of a global batch of m cells that this process takes: consecutive,
 * sizes differing by at most one, in rank order. */
static void share_of(const peers *p, int64_t m, int64_t *lo, int64_t *hi) {
    *lo = m * p->rank / p->size;
    *hi = m * (p->rank + 1) / p->size;
}

/* Global batches of batch * size cells over n cells; a last one with fewer cells than
 * processes (some would get none) is left out of a data-parallel run. */
static int64_t global_batches(const peers *p, int64_t n, int batch) {
    const int64_t g = (int64_t)batch * p->size;
    return n / g + (n % g >= p->size);
}

/* Validation ELBO (beta = 1) with its own seeded noise, so it is comparable across epochs
 * and identical in a resumed run; each process takes its share of each batch and the sums
 * of all are reduced. */
static int validate(nbs_model *m, nbs_workspace *w, const nbs_cells *cells, const int64_t *val, int64_t n_val,
                    int batch, uint64_t seed, int epoch, const peers *p, const nbs_batch_source *src, double *recon,
                    double *kl, nbs_error *err) {
    const int K = nbs_model_kl_terms(m);
    double klb[NBS_MAX_KL_TERMS], kl_terms[NBS_MAX_KL_TERMS] = {0};
    gsl_rng *r = nbs_stream_rng(seed, NBS_STREAM_VALIDATION, (uint64_t)epoch, err);
    if (!r) return err->code;
    if (p->sphere) gsl_rng_set(p->sphere, nbs_stream_seed(seed, NBS_STREAM_VALIDATION, (uint64_t)epoch, p->rank + 1));
    *recon = *kl = 0;
    int st = NBS_OK;
    nbs_cells vc = *cells;
    vc.rows = val;
    vc.n = n_val;
    const int64_t g = (int64_t)batch * p->size, n_batches = global_batches(p, n_val, batch);
    int64_t n_seen = 0;
    for (int64_t b = 0; b < n_batches && !st; b++) {
        const int64_t s = b * g, mb = n_val - s < g ? n_val - s : g;
        int64_t lo, hi;
        share_of(p, mb, &lo, &hi);
        nbs_cells bc = nbs_cells_slice(&vc, s + lo, hi - lo);
        if (src && (st = src->fetch(src->user, val, n_val, s + lo, bc.n, &bc, err))) break;
        if (p->size > 1) nbs_workspace_set_share(w, lo, mb - hi, p->sphere);
        double rc;
        st = nbs_model_forward(m, w, &bc, NBS_PASS_EVAL_SAMPLE, r, &rc, klb, err);
        *recon += rc;
        n_seen += bc.n;
        for (int t = 0; t < K; t++) *kl += klb[t], kl_terms[t] += klb[t];
    }
    gsl_rng_free(r);
    if (p->size > 1) {
        nbs_workspace_set_share(w, 0, 0, NULL);
        if (!st && p->reduce->sums) st = p->reduce->sums(p->reduce->user, recon, kl_terms, K, &n_seen, err);
        *kl = 0;
        for (int t = 0; t < K; t++) *kl += kl_terms[t];
    }
    *recon /= (double)n_seen;
    *kl /= (double)n_seen;
    return st;
}

static int numeric_failure(nbs_error *err, const char *what, int epoch, int64_t step, int64_t batch,
                           int64_t n_batches, const nbs_train_hooks *h, int last_ckpt_epoch) {
    char where[NBS_PATH_MAX + 128];
    if (h && h->checkpoint_path && last_ckpt_epoch > 0)
        snprintf(where, sizeof where, "the last good checkpoint is %s (epoch %d); resume from it with "
                 "a lower train.learning_rate or with train.grad_clip set", h->checkpoint_path, last_ckpt_epoch);
    else
        snprintf(where, sizeof where, "no checkpoint was written before it; lower train.learning_rate "
                 "or set train.grad_clip (e.g. 10)");
    return nbs_error_set(err, NBS_ERR_NUMERIC,
                         "training stopped at epoch %d, step %lld (minibatch %lld of %lld): %s became "
                         "non-finite; %s", epoch, (long long)step + 1, (long long)batch + 1,
                         (long long)n_batches, what, where);
}

/* train.epochs auto: 200 epochs up to 20000 cells, 400 (scvi-tools' length) for a model with
 * categorical covariates, beyond 20000 cells as many as make the same number of minibatch steps
 * (scvi-tools likewise scales its epochs with 1 / cells), at least 10. Measured (README, "How the
 * defaults were chosen"): without covariates 400 epochs score a lower 15-NN accuracy than 200 on
 * pollen and paul15, and on 50000 simulated cells 80 epochs match 200; with a batch, the steps at
 * full KL weight are what mix the batches: 400 epochs raise the scIB aggregate on Kang and on the
 * Symphony chemistries (seeds 0-1) at a cost of at most 0.01 in label accuracy. */
#define AUTO_EPOCHS 200
#define AUTO_EPOCHS_COVARIATES 400
#define AUTO_FULL_CELLS 20000
#define AUTO_MIN_EPOCHS 10

void nbs_train_resolve(nbs_train_config *tc, int64_t n_cells, int has_categorical) {
    if (tc->epochs == NBS_AUTO) {
        const double base = has_categorical ? AUTO_EPOCHS_COVARIATES : AUTO_EPOCHS;
        const double e = n_cells <= AUTO_FULL_CELLS ? base : base * AUTO_FULL_CELLS / (double)n_cells;
        tc->epochs = e < AUTO_MIN_EPOCHS ? AUTO_MIN_EPOCHS : (int)lround(e);
    }
    if (tc->warmup_epochs == NBS_AUTO) tc->warmup_epochs = tc->epochs / 2;
}

int nbs_train_step(nbs_model *m, nbs_workspace *w, const nbs_cells *batch, const nbs_train_config *tc,
                   double beta, gsl_rng *rng, const nbs_train_reduce *reduce, nbs_step_result *out,
                   nbs_error *err) {
    const int K = nbs_model_kl_terms(m);
    float klw[NBS_MAX_KL_TERMS];
    out->failed[0] = '\0';
    out->n_cells = batch->n;
    nbs_model_zero_grad(m);
    int st = nbs_model_forward(m, w, batch, NBS_PASS_TRAIN, rng, &out->recon, out->kl, err);
    if (st) return st;
    if (reduce && reduce->sums && (st = reduce->sums(reduce->user, &out->recon, out->kl, K, &out->n_cells, err)))
        return st;
    if (!isfinite(out->recon)) {
        snprintf(out->failed, sizeof out->failed, "the reconstruction term (NB log-likelihood)");
        return NBS_ERR_NUMERIC;
    }
    const int64_t n = out->n_cells;
    out->loss = out->recon;
    for (int t = 0; t < K; t++) {
        if (!isfinite(out->kl[t])) {
            snprintf(out->failed, sizeof out->failed, "the KL term of latent dimension %d", t + 1);
            return NBS_ERR_NUMERIC;
        }
        /* Free bits: below lambda nats (batch mean) a term costs lambda and has no gradient. */
        const double mean_kl = out->kl[t] / n;
        const int free = tc->free_bits > 0 && mean_kl < tc->free_bits;
        klw[t] = free ? 0.0f : (float)(beta / n);
        out->loss += beta * (free ? tc->free_bits * n : out->kl[t]);
    }
    /* the discrete latent's entropy loss, of this process's cells (its q(c|x) mean), at the batch's share */
    if (tc->entropy_weight > 0 || tc->entropy_cell_weight > 0)
        out->loss += (double)n * nbs_model_entropy_loss(m, w, tc->entropy_target, tc->entropy_weight,
                                                        tc->entropy_cell_weight, (double)batch->n / (double)n, NULL);
    nbs_model_backward(m, w, (float)((double)batch->n / (double)n), klw);
    if (reduce && reduce->grads) {
        float *state;
        int64_t np, ns;
        nbs_model_flat(m, NULL, NULL, NULL, &state, &np, &ns, NULL);
        if ((st = reduce->grads(reduce->user, nbs_model_grad_block(m), np, state, ns, err))) return st;
    }
    const char *bad = nbs_model_nonfinite_grad(m);
    if (bad) {
        snprintf(out->failed, sizeof out->failed, "the gradient of %s", bad);
        return NBS_ERR_NUMERIC;
    }
    if (tc->grad_clip > 0) {
        const double norm = nbs_model_grad_norm(m);
        if (norm > tc->grad_clip) nbs_model_scale_grad(m, tc->grad_clip / norm);
    }
    nbs_model_adam(m, tc->learning_rate, tc->adam_eps, tc->weight_decay);
    return NBS_OK;
}

int nbs_train(nbs_model *m, const nbs_cells *cells, const nbs_train_config *tc_in, nbs_train_state *s,
              nbs_train_log *log, const nbs_train_hooks *h, const nbs_train_reduce *reduce, nbs_error *err) {
    return nbs_train_from(m, cells, tc_in, s, log, h, reduce, NULL, err);
}

int nbs_train_from(nbs_model *m, const nbs_cells *cells, const nbs_train_config *tc_in, nbs_train_state *s,
                   nbs_train_log *log, const nbs_train_hooks *h, const nbs_train_reduce *reduce,
                   const nbs_batch_source *src, nbs_error *err) {
    const nbs_matrix *X = cells->X;
    const int64_t n_cells = cells->n;
    nbs_train_config resolved = *tc_in;
    const int has_categorical = nbs_model_covariates(m)->n_categorical > 0;
    nbs_train_resolve(&resolved, n_cells, has_categorical);
    const nbs_train_config *tc = &resolved;
    if (tc_in->epochs == NBS_AUTO && s->epochs_done == 0) /* a value chosen for the user is said */
        nbs_info("train.epochs auto: %d epochs for %lld cells%s%s", tc->epochs, (long long)n_cells,
                 has_categorical ? " with categorical covariates" : "",
                 tc_in->warmup_epochs == NBS_AUTO && !tc->warmup_steps ? ", KL warm-up over half of them" : "");
    const nbs_latent *L = nbs_model_latent(m);
    const int K = nbs_model_kl_terms(m);
    if (K > NBS_MAX_KL_TERMS)
        return nbs_error_set(err, NBS_ERR_USAGE, "model.latent_dim: at most %d dimensions", NBS_MAX_KL_TERMS);
    if (n_cells < 2)
        return nbs_error_set(err, NBS_ERR_INPUT, "training needs at least 2 cells, the data have %lld",
                             (long long)n_cells);
    log->kl_terms = K;
    nbs_nn_set_threads(tc->threads);

    int64_t *order, n_val;
    int st = nbs_train_split(n_cells, tc, &order, &n_val, err);
    if (st) return st;
    for (int64_t i = 0; i < n_cells; i++) order[i] = nbs_cells_row(cells, order[i]); /* positions -> rows of X */
    int64_t *val = order, n_train = n_cells - n_val;
    if (src && (st = src->order(src->user, val, n_val, NULL, err))) { /* the validation pass's order, once */
        free(order);
        return st;
    }
    const int batch = tc->batch_size; /* this process's cells per step */
    peers pr = {0, 1, reduce, NULL};
    if (reduce && reduce->size > 1) pr.rank = reduce->rank, pr.size = reduce->size;
    const int64_t gbatch = (int64_t)batch * pr.size; /* a step's cells over all processes */
    const int64_t n_batches = global_batches(&pr, n_train, batch);
    if (n_train % gbatch && n_train % gbatch < pr.size && s->epochs_done == 0)
        nbs_info("%lld training cells in batches of %d x %d processes: the last %lld cells of each "
                 "epoch's order are left out (fewer than the processes)", (long long)n_train, batch, pr.size,
                 (long long)(n_train % gbatch));
    /* Each epoch shuffles a fresh copy of the split's order, so an epoch's minibatches depend
     * only on the generator's state: what a checkpoint saves. */
    int64_t *train = nbs_malloc(sizeof(int64_t) * (size_t)n_train, err);
    const int sphere = nbs_latent_on_sphere(L);
    float *kappas = train && sphere ? nbs_malloc(sizeof(float) * (size_t)n_train, err) : NULL;
    if (train && (kappas || !sphere) && sphere && pr.size > 1 && !(pr.sphere = gsl_rng_alloc(gsl_rng_mt19937)))
        nbs_error_set(err, NBS_ERR_NOMEM, "out of memory for the random generator");
    nbs_workspace *w = train && (kappas || !sphere) && (pr.sphere || !sphere || pr.size == 1)
                           ? nbs_workspace_new(m, batch, src ? src->max_nnz : nbs_matrix_max_batch_nnz(X, batch), err)
                           : NULL;
    if (!w) {
        free(order), free(train), free(kappas);
        if (pr.sphere) gsl_rng_free(pr.sphere);
        return err->code;
    }
    if (s->epochs_done == 0) {
        double end_beta = nbs_train_beta(tc, (int64_t)tc->epochs * n_batches - 1, n_batches);
        if (end_beta < tc->beta * (1 - 1e-9))
            nbs_warn("the KL weight schedule will end at beta = %.3g, below its target %.3g "
                     "(warm-up longer than training): raise train.epochs or shorten the warm-up",
                     end_beta, tc->beta);
    }
    int last_ckpt = s->epochs_done;
    double kl_epoch[NBS_MAX_KL_TERMS];
    nbs_step_result sr;
    const int patience = n_val > 0 ? tc->patience : 0;
    if (tc->patience > 0 && n_val == 0)
        nbs_warn("early stopping needs validation cells (train.validation_fraction > 0); it is off");
    nbs_cells tcells = *cells;
    tcells.rows = train;
    tcells.n = n_train;

    for (int epoch = s->epochs_done + 1; epoch <= tc->epochs && !st; epoch++) {
        const double t0 = nbs_progress_now();
        memcpy(train, order + n_val, sizeof(int64_t) * (size_t)n_train);
        if (!src) gsl_ran_shuffle(s->rng, train, (size_t)n_train, sizeof(int64_t));
        else if ((st = src->order(src->user, train, n_train, s->rng, err))) break;
        double sum_recon = 0, sum_loss = 0, beta = 0, t_prod, t_lik;
        int64_t n_seen = 0; /* the cells the sums are over: every process's in a data-parallel run */
        int64_t n_kappa = 0; /* this process's cells so far */
        nbs_workspace_take_timers(w, &t_prod, &t_lik);
        memset(kl_epoch, 0, sizeof kl_epoch);
        for (int64_t b = 0; b < n_batches && !st; b++, s->step++) {
            const int64_t off = b * gbatch, mb = n_train - off < gbatch ? n_train - off : gbatch;
            int64_t lo, hi;
            share_of(&pr, mb, &lo, &hi);
            nbs_cells bc = nbs_cells_slice(&tcells, off + lo, hi - lo);
            if (src && (st = src->fetch(src->user, train, n_train, off + lo, bc.n, &bc, err))) break;
            if (pr.size > 1) {
                if (pr.sphere)
                    gsl_rng_set(pr.sphere, nbs_stream_seed(tc->seed, NBS_STREAM_TRAIN, (uint64_t)s->step + 1,
                                                           (uint64_t)pr.rank + 1));
                nbs_workspace_set_share(w, lo, mb - hi, pr.sphere);
            }
            beta = nbs_train_beta(tc, s->step, n_batches);
            st = nbs_train_step(m, w, &bc, tc, beta, s->rng, reduce, &sr, err);
            if (st == NBS_ERR_NUMERIC && sr.failed[0])
                st = numeric_failure(err, sr.failed, epoch, s->step, b, n_batches, h, last_ckpt);
            if (st) break;
            for (int t = 0; t < K; t++) kl_epoch[t] += sr.kl[t];
            sum_recon += sr.recon;
            sum_loss += sr.loss;
            n_seen += sr.n_cells;
            if (kappas) memcpy(kappas + n_kappa, nbs_workspace_kappa(w), sizeof(float) * bc.n);
            n_kappa += bc.n;
            if (h && h->progress) {
                double kl_now = 0;
                for (int t = 0; t < K; t++) kl_now += sr.kl[t] / sr.n_cells;
                nbs_progress_train pt = {epoch, tc->epochs, b + 1, n_batches, -(sr.recon / sr.n_cells + kl_now),
                                         kl_now, NAN, beta, -1, L->dim};
                nbs_progress_batch(h->progress, &pt);
            }
        }
        if (st) break;
        nbs_epoch_record r = {epoch, sum_loss / n_seen, sum_recon / n_seen, 0, NAN, NAN, NAN, beta, 0, NAN, NAN, 0, 0};
        nbs_workspace_take_timers(w, &r.sec_products, &r.sec_likelihood); /* training steps only */
        if (kappas) { /* of this process's cells */
            gsl_sort_float(kappas, 1, (size_t)n_kappa);
            r.kappa_median = gsl_stats_float_median_from_sorted_data(kappas, 1, (size_t)n_kappa);
            if (nbs_latent_has_acceptance(L)) r.acceptance = nbs_workspace_acceptance(w);
        }
        for (int t = 0; t < K; t++) {
            kl_epoch[t] /= (double)n_seen;
            r.kl += kl_epoch[t];
        }
        if (n_val > 0) {
            st = validate(m, w, cells, val, n_val, batch, tc->seed, epoch, &pr, src, &r.val_recon, &r.val_kl, err);
            if (st) break;
            r.val_elbo = -(r.val_recon + r.val_kl);
            if (!isfinite(r.val_elbo)) {
                st = numeric_failure(err, "the validation ELBO", epoch, s->step - 1, n_batches - 1, n_batches,
                                     h, last_ckpt);
                break;
            }
        }
        r.seconds = nbs_progress_now() - t0;
        if ((st = nbs_train_log_append(log, &r, kl_epoch, err))) break;
        s->epochs_done = epoch;
        int stop = 0;
        if (patience > 0) {
            if (r.val_elbo > s->best_val) {
                s->best_val = r.val_elbo;
                s->best_epoch = epoch;
                s->bad_epochs = 0;
                keep_best(m, s, 0);
            } else if (++s->bad_epochs >= patience) {
                stop = 1;
            }
        }
        if (h && h->progress) {
            nbs_progress_train pt = {epoch, tc->epochs, n_batches, n_batches, -(r.recon + r.kl), r.kl,
                                     r.val_elbo, beta, -1, L->dim};
            nbs_progress_epoch(h->progress, &pt);
        }
        if (h && h->log_path && (st = nbs_train_log_write(log, h->log_path, err))) break;
        if (h && h->on_epoch && (st = h->on_epoch(h->user, m, epoch, err))) break;
        if (h && h->save_checkpoint && tc->checkpoint_every > 0 && epoch % tc->checkpoint_every == 0 &&
            epoch < tc->epochs && !stop) {
            if ((st = h->save_checkpoint(h->user, m, s, log, err))) break;
            last_ckpt = epoch;
        }
        if (stop) {
            nbs_info("early stopping at epoch %d: no better validation ELBO for %d epochs; keeping "
                     "epoch %d (%.4g)", epoch, patience, s->best_epoch, s->best_val);
            keep_best(m, s, 1);
            break;
        }
    }
    nbs_workspace_free(w);
    if (pr.sphere) gsl_rng_free(pr.sphere);
    free(order);
    free(train);
    free(kappas);
    return st;
}
