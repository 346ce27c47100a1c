/* Progress of a run for people watching it: on a terminal, one line redrawn in place (stage,
 * epoch, batch, ETA, ELBO, KL, active dimensions); otherwise plain log lines, one per epoch.
 * It also owns the log sink (nbs_log_set_handler), so warnings never tear the bar apart.
 * Verbosity: 0 = quiet (warnings and errors only), 1 = normal, 2 = verbose (debug lines). */
#ifndef NBSPHERE_PROGRESS_H
#define NBSPHERE_PROGRESS_H

#include <stdint.h>
#include <stdio.h>

typedef struct nbs_progress nbs_progress;

/* out: where progress goes (stderr in the CLI); is_tty < 0: ask isatty(). Installs itself as
 * the log handler; nbs_progress_free restores the default one. */
nbs_progress *nbs_progress_new(FILE *out, int verbosity, int is_tty);
void nbs_progress_free(nbs_progress *p);

/* A training state; fields unknown so far are negative (or NaN for the doubles). */
typedef struct {
    int epoch, n_epochs;      /* 1-based epoch */
    int64_t batch, n_batches; /* 1-based batch within the epoch */
    double elbo, kl;          /* per cell, of the last finished epoch or running mean */
    double val_elbo;          /* validation ELBO per cell */
    double beta;              /* current KL weight */
    int active_dims, latent_dim;
} nbs_progress_train;

/* Starts a stage ("load", "preprocess", "train", ...): resets the clock used for the ETA. */
void nbs_progress_stage(nbs_progress *p, const char *stage);
/* Generic fraction done of the current stage (e.g. bytes read while loading), with a note. */
void nbs_progress_fraction(nbs_progress *p, double done, const char *note);
/* Within an epoch (terminal only redraws, at most ~10 times a second). */
void nbs_progress_batch(nbs_progress *p, const nbs_progress_train *t);
/* End of an epoch: redraws the bar on a terminal, prints a log line otherwise. */
void nbs_progress_epoch(nbs_progress *p, const nbs_progress_train *t);
/* Ends the current stage: the bar line is finished with a newline and a summary. */
void nbs_progress_done(nbs_progress *p, const char *summary);

/* The line that would be drawn for t (for tests): into buf, at most n bytes. */
void nbs_progress_format(const nbs_progress *p, const nbs_progress_train *t, char *buf, size_t n);

/* Seconds since an arbitrary origin (monotonic clock). */
double nbs_progress_now(void);

#endif
