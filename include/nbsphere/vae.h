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

/* Encoder in evaluation mode (no dropout) for rows[0..n) of X (rows == NULL: rows row0..row0+n):
 * writes the latent head [n x head_dim] (see latent.h for how to read it). */
int nbs_model_encode(const nbs_model *m, const nbs_matrix *X, const int64_t *rows, int64_t row0,
                     int n, float *head, nbs_error *err);

/* Decoder in evaluation mode: z [n x d] -> gene logits [n x G]; log rho = log_softmax(logits). */
int nbs_model_decode_logits(const nbs_model *m, const float *z, int n, float *logits,
                            nbs_error *err);

/* Reconstruction log-likelihood sum_g log p(x_g | z) per cell [n] for rows of X given z,
 * with the observed library size. */
int nbs_model_loglik(const nbs_model *m, const nbs_matrix *X, const int64_t *rows, int64_t row0,
                     int n, const float *z, double *loglik, nbs_error *err);

/* Named parameter blocks, for diagnostics, tests and checkpoints. Names:
 *   "encoder.<i>.W" [in x out], "encoder.<i>.b" [out]   hidden layers i = 0..
 *   "encoder.head.W", "encoder.head.b"                   latent head (see latent.h)
 *   "decoder.<i>.W", "decoder.<i>.b"                     decoder.0 takes z
 *   "decoder.out.W", "decoder.out.b"                     gene logits
 *   "dispersion"                                         log theta per gene
 * Returns NULL for an unknown name; rows/cols may be NULL. */
float *nbs_model_param(nbs_model *m, const char *name, int *rows, int *cols);

/* Weights of the decoder's first layer, [d x width] row-major (row j = what z_j feeds). */
const float *nbs_model_decoder_first_weights(const nbs_model *m, int *d, int *width);
float *nbs_model_decoder_first_weights_mut(nbs_model *m);

#endif
