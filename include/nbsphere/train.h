/* Training: Adam over shuffled minibatches, a seeded train/validation split, KL-weight
 * schedules (constant, linear or sigmoid warm-up, cyclical), free bits, gradient clipping,
 * early stopping on the validation ELBO, and a stop with a diagnosis on non-finite values.
 * Everything a resumed run needs is in nbs_train_state (saved by the checkpoint hook). */
#ifndef NBSPHERE_TRAIN_H
#define NBSPHERE_TRAIN_H

#include <gsl/gsl_rng.h>
#include <stdint.h>

#include "nbsphere/config.h"
#include "nbsphere/progress.h"
#include "nbsphere/vae.h"

/* One row of the per-epoch log (values per cell). */
typedef struct {
    int epoch;
    double loss, recon, kl;         /* training: objective, -log p(x|z), KL (means over the epoch) */
    double val_elbo, val_recon, val_kl; /* validation, beta = 1; NaN without validation cells */
    double beta;                    /* KL weight at the end of the epoch */
    double seconds;
    double kappa_median;            /* spheres: median concentration over the epoch's cells; NaN otherwise */
    double acceptance;              /* vMF: acceptance rate of Wood's sampler so far; NaN otherwise */
    double sec_products, sec_likelihood; /* of the training steps: layers (products) and likelihood */
} nbs_epoch_record;

typedef struct {
    int n, cap, kl_terms;
    nbs_epoch_record *rec;
    double *kl_dims; /* [n x kl_terms] mean training KL per term (per latent dimension for Gaussian) */
} nbs_train_log;

typedef struct {
    int epochs_done;
    int64_t step;
    double best_val;    /* best validation ELBO so far */
    int best_epoch, bad_epochs;
    float *best_params; /* parameters at best_epoch (early stopping), n_params floats */
    float *best_state;  /* batch-norm running statistics at best_epoch, n_state floats */
    gsl_rng *rng;       /* training stream: shuffles, dropout masks, latent noise */
} nbs_train_state;

int nbs_train_state_init(nbs_train_state *s, const nbs_model *m, uint64_t seed, nbs_error *err);
void nbs_train_state_free(nbs_train_state *s);
void nbs_train_log_free(nbs_train_log *l);
int nbs_train_log_append(nbs_train_log *l, const nbs_epoch_record *r, const double *kl_dims,
                         nbs_error *err);
/* The log as TSV (epoch, train_loss, train_recon, train_kl, val_elbo, val_recon, val_kl, beta,
 * seconds, kappa_median, vmf_acceptance, sec_products, sec_likelihood, kl_1..kl_K), through a
 * temporary file. */
int nbs_train_log_write(const nbs_train_log *l, const char *path, nbs_error *err);

/* Signs in the log that training went wrong without a non-finite value: the first epoch's loss
 * far above the last (unstable first steps), an epoch whose loss jumps up by a factor (the
 * optimiser overshoots), a validation ELBO that has stayed below its best for many epochs
 * (overfitting or divergence). message says what was seen and what to try; empty if none. */
typedef struct {
    double first_over_last;   /* training loss, epoch 1 / last epoch */
    double largest_jump;      /* largest loss[e] / loss[e-1] */
    int jump_epoch;           /* where it happened */
    int best_val_epoch;       /* 0 without validation */
    int val_worse_epochs;     /* epochs since then */
    double val_drop;          /* (best - last) / |best| of the validation ELBO */
    int unstable, overfits;   /* the flags message explains */
    char message[640];
} nbs_train_health;
void nbs_train_log_health(const nbs_train_log *l, nbs_train_health *h);

typedef struct {
    nbs_progress *progress; /* may be NULL */
    const char *log_path;   /* per-epoch TSV rewritten after each epoch; NULL = none */
    /* Called after epochs that are multiples of checkpoint_every (and never with a bad state). */
    int (*save_checkpoint)(void *user, nbs_model *m, const nbs_train_state *s,
                           const nbs_train_log *l, nbs_error *err);
    const char *checkpoint_path; /* named in the message when training stops on NaN */
    /* Called after every epoch (diagnostics tracking); a non-zero return stops training. */
    int (*on_epoch)(void *user, nbs_model *m, int epoch, nbs_error *err);
    void *user;
} nbs_train_hooks;

/* KL weight at a minibatch step (0-based) under the schedule. */
double nbs_train_beta(const nbs_train_config *tc, int64_t step, int64_t steps_per_epoch);

/* The seeded split: validation cells are the first n_val of a permutation of 0..n-1. */
int nbs_train_split(int64_t n, const nbs_train_config *tc, int64_t **order, int64_t *n_val,
                    nbs_error *err);

/* Replaces `auto` (NBS_AUTO) in train.epochs and train.warmup_epochs by their values for a
 * dataset of n_cells cells, for a model with or without categorical covariates (nbs_train does
 * it on its own copy). */
void nbs_train_resolve(nbs_train_config *tc, int64_t n_cells, int has_categorical);

/* Where a data-parallel run meets its peers within a step. Each may be NULL; a non-zero
 * return stops training with err set. Every process calls both in every step, before any
 * check that could end the step, so none waits for a peer that has stopped.
 *   sums   after the forward: the batch's reconstruction sum, KL sums (kl_terms) and cell
 *          count, to be summed over the processes, since free bits compare the global batch
 *          mean with lambda before the backward (a non-finite value anywhere stops everyone);
 *   grads  after the backward, before the finiteness check, clipping and Adam: the gradient
 *          block (n_params floats, one contiguous block, already weighted by this process's
 *          share of the cells) to sum, and the batch-norm running statistics (n_state floats)
 *          to average. */
typedef struct {
    int (*sums)(void *user, double *recon, double *kl_sum, int kl_terms, int64_t *n_cells, nbs_error *err);
    int (*grads)(void *user, float *grads, int64_t n_params, float *state, int64_t n_state, nbs_error *err);
    void *user;
    /* This process among size > 1 (0 and 0 or 1: alone). nbs_train then takes steps of
     * size * train.batch_size cells in the order one process would, this process training on its
     * share of each (nbs_workspace_set_share) and validating on its share of the validation
     * cells, whose sums go through `sums` too. */
    int rank, size;
    /* Out of core, where each process reads only its rows (run.c, backed.h), and for the
     * diagnostics, each process measuring its part of the cells (nbs_diagnose_shared); NULL alone.
     *   sum     buf (n doubles) summed over the processes, the same bits on every one (a value
     *           only one process fills, the others leaving 0, reaches every process exactly)
     *   gather  at process 0, every process's send (bytes[r] bytes from process r, bytes known to
     *           all) into recv in rank order; recv is only process 0's */
    int (*sum)(void *user, double *buf, int64_t n, nbs_error *err);
    int (*gather)(void *user, const void *send, const int64_t *bytes, void *recv, nbs_error *err);
} nbs_train_reduce;

/* What one step did: sums over the batch's cells (every process's, after the sums hook). */
typedef struct {
    double recon;                /* -sum_i log p(x_i|z_i) */
    double loss;                 /* recon + beta sum_t KL_t, a free-bits term counted at lambda */
    double kl[NBS_MAX_KL_TERMS]; /* sum_i KL_it */
    int64_t n_cells;             /* the cells those sums are over */
    char failed[96];             /* NBS_ERR_NUMERIC: what became non-finite */
} nbs_step_result;

/* One optimiser step on the cells of batch: zero the gradients, forward (NBS_PASS_TRAIN),
 * KL weights with free bits, backward, reduce, finiteness check, clipping, Adam. Returns
 * NBS_ERR_NUMERIC with out->failed naming the term (err is not set then: the caller knows
 * where in training it is), or another code with err set. */
int nbs_train_step(nbs_model *m, nbs_workspace *w, const nbs_cells *batch, const nbs_train_config *tc,
                   double beta, gsl_rng *rng, const nbs_train_reduce *reduce, nbs_step_result *out,
                   nbs_error *err);

/* Where the minibatches come from when the counts are not in memory (input.backed, backed.h).
 * The cells are then positions 0 .. cells->n - 1 (cells->X unused) and:
 *   order   arranges seq (n cells, in the split's order) for one pass: with rng, the training
 *           epoch's order (in place of one shuffle of all of them); without, the validation
 *           pass's (no draws)
 *   fetch   loads the cells seq[pos .. pos + n) of seq (n_seq cells) into out (their counts, library sizes), valid
 *           until the next call
 *   max_nnz the most stored entries of any batch_size cells (the workspace's capacity) */
typedef struct {
    int (*order)(void *user, int64_t *seq, int64_t n, gsl_rng *rng, nbs_error *err);
    int (*fetch)(void *user, const int64_t *seq, int64_t n_seq, int64_t pos, int64_t n, nbs_cells *out,
                 nbs_error *err);
    int64_t max_nnz;
    void *user;
} nbs_batch_source;

/* Trains m on the cells of cells (their library sizes given; the split into training and
 * validation cells is over them) from s->epochs_done + 1 to tc->epochs; reduce may be NULL
 * (one process). Every process of a data-parallel run holds the same cells, model and state. */
int nbs_train(nbs_model *m, const nbs_cells *cells, const nbs_train_config *tc, nbs_train_state *s,
              nbs_train_log *log, const nbs_train_hooks *hooks, const nbs_train_reduce *reduce, nbs_error *err);
/* The same with the minibatches from src (NULL: the cells of cells, in memory). */
int nbs_train_from(nbs_model *m, const nbs_cells *cells, const nbs_train_config *tc, nbs_train_state *s,
                   nbs_train_log *log, const nbs_train_hooks *h, const nbs_train_reduce *reduce,
                   const nbs_batch_source *src, nbs_error *err);

#endif
