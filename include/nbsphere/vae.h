/* The model: encoder MLP -> latent -> decoder MLP -> gene logits -> NB/ZINB/Poisson
 * likelihood with the observed library size. One training step = forward + backward on a
 * minibatch of CSR rows. Parameters, gradients and Adam moments live in contiguous blocks. */
#ifndef NBSPHERE_VAE_H
#define NBSPHERE_VAE_H

#include <gsl/gsl_rng.h>
#include <stdint.h>

#include "nbsphere/config.h"
#include "nbsphere/latent.h"
#include "nbsphere/matrix.h"

typedef struct nbs_model nbs_model;

nbs_model *nbs_model_new(const nbs_model_config *mc, int n_genes, gsl_rng *rng, nbs_error *err);
void nbs_model_free(nbs_model *m);

int nbs_model_n_genes(const nbs_model *m);
const nbs_latent *nbs_model_latent(const nbs_model *m);
const nbs_model_config *nbs_model_config_of(const nbs_model *m);

/* One minibatch, forward: rows[0..n) of X (rows == NULL: rows 0..n). Modes:
 *   NBS_PASS_TRAIN        dropout on, z sampled, gradients of the reconstruction term prepared
 *   NBS_PASS_EVAL_SAMPLE  no dropout, z sampled (validation ELBO)
 *   NBS_PASS_EVAL_MEAN    no dropout, z = posterior location
 * recon_sum = -sum_i log p(x_i|z_i); kl_sum[t] = sum_i KL_it (t < nbs_latent_kl_terms). */
enum { NBS_PASS_TRAIN = 0, NBS_PASS_EVAL_SAMPLE, NBS_PASS_EVAL_MEAN };
int nbs_model_forward(nbs_model *m, const nbs_matrix *X, const int64_t *rows, int n, int mode,
                      gsl_rng *rng, double *recon_sum, double *kl_sum, nbs_error *err);
/* Per cell of the last forward: log p(x_i|z_i) [n], KL terms [n x kl_terms]. */
const double *nbs_model_last_loglik(const nbs_model *m);
const double *nbs_model_last_kl(const nbs_model *m);
/* Spheres: kappa per cell of the last forward (NULL for Gaussian); vMF sampler acceptance rate. */
const float *nbs_model_last_kappa(const nbs_model *m);
double nbs_model_acceptance(const nbs_model *m);

/* Backward of the last NBS_PASS_TRAIN forward for the loss
 *   (1/n) sum_i -log p(x_i|z_i) + sum_t kl_weight[t] * sum_i KL_it,
 * so kl_weight already holds beta / n and any free-bits mask. Accumulates into the gradients. */
void nbs_model_backward(nbs_model *m, const float *kl_weight);

/* Optimiser side: one memset zeroes every gradient; norm and scaling for clipping; the name of
 * the first block with a non-finite gradient (NULL if none); one Adam step. */
void nbs_model_zero_grad(nbs_model *m);
double nbs_model_grad_norm(const nbs_model *m);
void nbs_model_scale_grad(nbs_model *m, double f);
const char *nbs_model_nonfinite_grad(const nbs_model *m);
void nbs_model_adam(nbs_model *m, double lr, double eps, double weight_decay);
/* Seconds spent since the last call in the layers (matrix products, activations, latent) and
 * in the likelihood (softmax, NB terms and their gradients); resets both. */
void nbs_model_take_timers(nbs_model *m, double *products, double *likelihood);

/* Encoder in evaluation mode (no dropout) for rows[0..n) of X (rows == NULL: rows row0..row0+n):
 * writes the latent head [n x head_dim] (see latent.h for how to read it). */
int nbs_model_encode(const nbs_model *m, const nbs_matrix *X, const int64_t *rows, int64_t row0,
                     int n, float *head, nbs_error *err);

/* The embedding of every cell of X: posterior location [n_cells x d] and, if spread is not
 * NULL, the Gaussian variances [n_cells x d] or the sphere's concentration [n_cells]. */
int nbs_model_embed(const nbs_model *m, const nbs_matrix *X, float *location, float *spread,
                    nbs_error *err);

/* Decoder in evaluation mode: z [n x d] -> gene logits [n x G]; log rho = log_softmax(logits).
 * log_theta, if not NULL, receives log theta [n x G] of the NB/ZINB (+inf for Poisson). */
int nbs_model_decode_logits(const nbs_model *m, const float *z, int n, float *logits,
                            float *log_theta, nbs_error *err);

/* Reconstruction log-likelihood sum_g log p(x_g | z) per cell [n] for rows of X given z,
 * with the observed library size. */
int nbs_model_loglik(const nbs_model *m, const nbs_matrix *X, const int64_t *rows, int64_t row0,
                     int n, const float *z, double *loglik, nbs_error *err);

/* Named parameter blocks, for diagnostics, tests and checkpoints. Names:
 *   "encoder.<i>.W" [in x out], "encoder.<i>.b" [out]   hidden layers i = 0..
 *   "encoder.head.W", "encoder.head.b"                   latent head (see latent.h)
 *   "decoder.<i>.W", "decoder.<i>.b"                     decoder.0 takes z
 *   "decoder.out.W", "decoder.out.b"                     gene logits
 *   "decoder.dropout.W/b", "decoder.dispersion.W/b"     ZINB / per-cell dispersion heads
 *   "<layer>.norm.gain/bias", "<layer>.norm.running_mean/var"   normalisation
 *   "dispersion"                                         log theta per gene
 * Returns NULL for an unknown name; rows/cols may be NULL. */
float *nbs_model_param(nbs_model *m, const char *name, int *rows, int *cols);
float *nbs_model_grad(nbs_model *m, const char *name); /* the gradient of a parameter block */
int nbs_model_n_blocks(const nbs_model *m);            /* every block, state ones included */
const char *nbs_model_block_name(const nbs_model *m, int i);
int64_t nbs_model_n_params(const nbs_model *m);
int64_t nbs_model_n_state(const nbs_model *m); /* batch-norm running statistics, floats */
/* Batch norm's eps and running-statistics momentum (every layer shares them; NBS_BN_* for a new
 * model), read and set by model files so a model keeps the constants it was trained with. */
void nbs_model_batch_norm(const nbs_model *m, double *eps, double *momentum);
void nbs_model_set_batch_norm(nbs_model *m, double eps, double momentum);
/* The flat blocks, for checkpoints: parameters, Adam moments and step, and state (batch-norm
 * running statistics, n_state floats). Any pointer may be NULL. */
void nbs_model_flat(nbs_model *m, float **params, float **adam_m, float **adam_v, float **state,
                    int64_t *n_params, int64_t *n_state, int64_t **adam_t);

/* Weights of the decoder's first layer, [d x width] row-major (row j = what z_j feeds). */
const float *nbs_model_decoder_first_weights(const nbs_model *m, int *d, int *width);
float *nbs_model_decoder_first_weights_mut(nbs_model *m);

#endif
