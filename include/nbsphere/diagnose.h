/* Posterior-collapse diagnostics (DESIGN.md section 5). So far: the mutual-information
 * estimator of He et al. 2019 on Gaussian posteriors. */
#ifndef NBSPHERE_DIAGNOSE_H
#define NBSPHERE_DIAGNOSE_H

#include <gsl/gsl_rng.h>
#include <stdint.h>

#include "nbsphere/error.h"

/* I(x;z) for q(z|x) = N(mean_i, diag(var_i)) over n cells, d dims (row-major [n x d]):
 * E_q[log q(z|x)] - E[log q(z)] with q(z) the mixture of the posteriors of the same
 * minibatch (He et al. 2019, calc_mi), one z sample per cell, averaged over consecutive
 * minibatches of `batch` cells (a last partial batch is used if it holds >= 2 cells), clipped
 * at 0. The estimate is biased low by at most log(batch); report the batch with it. */
int nbs_diagnose_mi_gaussian(const float *mean, const float *var, int64_t n, int d, int batch,
                             gsl_rng *rng, double *mi, nbs_error *err);

#endif
