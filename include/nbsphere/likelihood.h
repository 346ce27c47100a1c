/* Count likelihoods of the decoder's output: NB (default), ZINB and Poisson, with the mean
 * mu_g = l * softmax(logits)_g and the cell's observed library size l. One fused pass per cell
 * computes the log-likelihood and its gradients; lgamma/digamma run only on nonzero counts,
 * since for x = 0 those terms cancel (docs/design.md §5.4). */
#ifndef NBSPHERE_LIKELIHOOD_H
#define NBSPHERE_LIKELIHOOD_H

#include <stdint.h>

#include "nbsphere/config.h"
#include "nbsphere/error.h"
#include "nbsphere/matrix.h"

/* Rows of nbs_lik_batch.work per row of per-gene theta: theta, lgamma and psi of it, and for the
 * counts x = 1..NBS_LIK_SMALL_CACHED the two sums of Gamma's recurrence (lgamma(x + theta) -
 * lgamma(theta), psi(x + theta) - psi(theta)), each where a count of the batch needs them. */
#define NBS_LIK_SMALL_CACHED 4
#define NBS_LIK_WORK (3 + 2 * NBS_LIK_SMALL_CACHED)

/* Scratch rows of G doubles each thread of nbs_lik_eval uses (nbs_lik_batch.thread_rows). */
#define NBS_LIK_THREAD_ROWS 5

typedef struct {
    nbs_likelihood_kind kind;
    int n, G;
    const nbs_matrix *X;      /* counts; batch cell i is row rows[i] of X */
    const int64_t *rows;
    const double *library;    /* [n] observed library size of each batch cell */
    const float *logits;      /* [n x G] */
    const float *log_theta;   /* NB/ZINB: (theta_rows, G) per gene (and batch), or (n, G) when theta_per_cell */
    int theta_per_cell;
    int theta_rows;           /* per gene: rows of log_theta, 1 or one per batch category */
    const int32_t *theta_row; /* (n) the row of log_theta of each batch cell, or NULL: row 0 */
    const float *zi_logits;   /* ZINB: [n x G] logit of the zero-inflation probability */
    double *work;             /* (theta_rows, NBS_LIK_WORK, G) scratch: per row and gene values of theta */
    double *thread_rows;      /* (n_threads, NBS_LIK_THREAD_ROWS, G) scratch rows of each thread */
    int n_threads;            /* the parallel loop uses at most this many threads */
} nbs_lik_batch;

/* Writes loglik[i] (required) = sum_g log p(x_ig). Gradient outputs (each may be NULL) receive
 * scale * d loglik_i / d(.), per entry [n x G], overwritten: dlogits, dlog_theta (per entry
 * even when theta is per gene: the caller sums each cell's row into its row of log theta),
 * dzi_logits. Returns the total. */
double nbs_lik_eval(const nbs_lik_batch *b, double *loglik, float scale, float *dlogits,
                    float *dlog_theta, float *dzi_logits);

#endif
