/* The model: encoder MLP -> latent stages -> decoder MLP -> gene logits -> NB/ZINB/Poisson
 * likelihood with the observed library size. One training step = forward + backward on a
 * minibatch of cells (nbs_cells). The model holds parameters, gradients, Adam moments and
 * normalisation state in contiguous blocks; a caller's workspace holds everything a pass
 * computes. */
#ifndef NBSPHERE_VAE_H
#define NBSPHERE_VAE_H

#include <gsl/gsl_rng.h>
#include <stdint.h>

#include "nbsphere/config.h"
#include "nbsphere/latent.h"
#include "nbsphere/matrix.h"

typedef struct nbs_model nbs_model;         /* parameters, gradients, optimiser and norm state */
typedef struct nbs_workspace nbs_workspace; /* activations and caches of one caller */

/* The categorical covariates a model can take: the batch and input.categorical_covariates. */
#define NBS_MAX_CATEGORICAL (NBS_MAX_COVARIATES + 1)

/* What the model is conditioned on beyond the counts (covariates.h reads and encodes it): the
 * number of categories of each categorical covariate, the batch first when there is one, and the
 * number of continuous ones. All zero: a model without covariates. */
typedef struct {
    int n_categorical;
    int n_categories[NBS_MAX_CATEGORICAL];
    int n_continuous;
    int has_batch; /* categorical covariate 0 is the batch (dispersion: gene_batch reads it) */
} nbs_covariate_layout;

/* The cells a call works on, with what the model knows of each cell beyond its counts. Per-cell
 * arrays are indexed by row of X (not by position in the batch), so a slice of a batch is only
 * other rows. A model with covariates needs them for every cell, in its layout's counts. */
typedef struct {
    const nbs_matrix *X;            /* counts, CSR (n_cells, G) */
    const int64_t *rows;            /* (n) rows of X, or NULL: rows row0 .. row0 + n - 1 */
    int64_t row0;
    int64_t n;
    const double *library;          /* (n_cells) observed library size of every row of X */
    const int32_t *covariate_codes; /* (n_cells, n_categorical) category codes, or NULL */
    const float *continuous;        /* (n_cells, n_continuous) standardised values, or NULL */
    int n_categorical, n_continuous;
} nbs_cells;

/* Every cell of X in order, with its library sizes (n_cells). */
nbs_cells nbs_cells_all(const nbs_matrix *X, const double *library);
/* Cells [start, start + n) of c, fewer where c ends first: the chunks of a loop over c. */
nbs_cells nbs_cells_slice(const nbs_cells *c, int64_t start, int64_t n);
/* Row of X of batch cell i. */
static inline int64_t nbs_cells_row(const nbs_cells *c, int64_t i) { return c->rows ? c->rows[i] : c->row0 + i; }

/* A model of n_genes genes conditioned on the covariates of cov (NULL: none). With rng the
 * weights are initialised (section 5.1 of docs/design.md); without, they are zero (to be read). */
nbs_model *nbs_model_new(const nbs_model_config *mc, int n_genes, const nbs_covariate_layout *cov, gsl_rng *rng,
                         nbs_error *err);
void nbs_model_free(nbs_model *m);

/* scArches' surgery: m grown to the covariates of grown (the same covariates, each with at least
 * its categories), for new data of categories m was not trained with. old_to_new[k][c] is the code
 * among grown's categories of m's category c of covariate k. Every weight is m's; the new
 * categories' rows of every covariates.W block (with embeddings: of every covariate's table,
 * covariates.W staying frozen as it is) and of the gene-batch dispersion are drawn from
 * rng as a new model's would be and are the only parameters that train (nbs_model_trainable):
 * backward gives the others no gradient and Adam leaves them bit-identical; the grown model's
 * training passes have no dropout and normalise with the batch-norm running statistics, which
 * stay as they are. The optimiser starts afresh (step 0). */
nbs_model *nbs_model_grow(const nbs_model *m, const nbs_covariate_layout *grown, int32_t *const old_to_new[],
                          gsl_rng *rng, nbs_error *err);
/* (n_params) 1 where a parameter trains, 0 where it is frozen; NULL: every parameter trains. */
const uint8_t *nbs_model_trainable(const nbs_model *m);

int nbs_model_n_genes(const nbs_model *m);
const nbs_model_config *nbs_model_config_of(const nbs_model *m);
const nbs_covariate_layout *nbs_model_covariates(const nbs_model *m);

/* The latent stages from the encoder's side: stage 0 feeds the decoder. Each stage has its
 * own latent (latent.h) and KL terms, which take the places [kl_offset, kl_offset + kl_terms)
 * of the model's KL vector (nbs_model_kl_terms in all). */
int nbs_model_n_stages(const nbs_model *m);
const nbs_latent *nbs_model_stage_latent(const nbs_model *m, int s);
int nbs_model_stage_kl_offset(const nbs_model *m, int s);
int nbs_model_kl_terms(const nbs_model *m);
/* The latent of the embedding: stage 0, or a ladder's top layer. */
const nbs_latent *nbs_model_latent(const nbs_model *m);

/* A ladder (model.latent_layers): its stages are the stochastic layers, stage 0 at the bottom
 * (the decoder's input), the top the embedding. Below the top a layer's posterior is the
 * precision-weighted merge of its bottom-up Gaussian and the top-down prior p(z_s | z_{s+1}), so
 * its location depends on the layer above: the functions below run the top-down pass at the
 * posterior locations. */
int nbs_model_ladder(const nbs_model *m);
/* Columns of the decoder's input z of nbs_model_decode_logits / nbs_model_loglik: the latent's d,
 * or in a ladder every layer's z side by side, bottom first (the decoder reads z_0 and, with
 * skip connections, the others too). */
int nbs_model_decoder_dim(const nbs_model *m);
/* Stage `layer`'s posterior for the cells of c, at the locations of the layers above: location
 * (n, d), spread (n, nbs_latent_spread_dim), E_q[z] (n, d) and KL to its prior (n, kl_terms of the
 * stage); any may be NULL. A workspace of its own. */
int nbs_model_layer_posterior(const nbs_model *m, const nbs_cells *c, int layer, float *location, float *spread,
                              float *ez, double *kl, nbs_error *err);
/* The decoder's logits (n, G) (and log theta, as nbs_model_decode_logits) for the cells of c when
 * stage `layer` takes z (n, d of the layer): the layers above at their posterior locations, those
 * below at their merged posterior means given it. Reads the counts (the bottom-up path). */
int nbs_model_decode_layer(const nbs_model *m, nbs_workspace *w, const nbs_cells *c, int layer, const float *z,
                           float *logits, float *log_theta, nbs_error *err);
/* RMS of the weights dimension j of stage s feeds on its way to the counts: the decoder's first
 * layer (stage 0), the top-down prior of the layer below (a ladder's upper layers), and the skip
 * connections. */
double nbs_model_latent_weight_rms(const nbs_model *m, int s, int j);

/* Activations, caches and scratch for batches of up to max_batch cells holding at most
 * max_nnz stored counts (nbs_matrix_max_batch_nnz), allocated once: no step allocates. One
 * workspace per thread: inference on a const model is thread-safe with separate workspaces. */
nbs_workspace *nbs_workspace_new(const nbs_model *m, int max_batch, int64_t max_nnz, nbs_error *err);
void nbs_workspace_free(nbs_workspace *w);
/* An inference workspace (no dropout masks or gradient buffers; a training pass in it is refused)
 * for NBS_EVAL_BATCH cells of X at a time; the evaluation helpers below go through any
 * workspace its capacity at a time. */
#define NBS_EVAL_BATCH 256
nbs_workspace *nbs_workspace_eval(const nbs_model *m, const nbs_matrix *X, nbs_error *err);

/* One minibatch (at most the workspace's max_batch cells), forward. Modes:
 *   NBS_PASS_TRAIN        dropout on, z sampled, gradients of the reconstruction term prepared
 *   NBS_PASS_EVAL_SAMPLE  no dropout, z sampled (validation ELBO)
 *   NBS_PASS_EVAL_MEAN    no dropout, z = posterior location
 * recon_sum = -sum_i log p(x_i|z_i); kl_sum[t] = sum_i KL_it (t < nbs_model_kl_terms).
 * NBS_PASS_TRAIN updates the batch-norm running statistics, so m is not const. */
enum { NBS_PASS_TRAIN = 0, NBS_PASS_EVAL_SAMPLE, NBS_PASS_EVAL_MEAN };
int nbs_model_forward(nbs_model *m, nbs_workspace *w, const nbs_cells *c, int mode, gsl_rng *rng,
                      double *recon_sum, double *kl_sum, nbs_error *err);
/* A data-parallel process's share of each batch (docs/design.md "Data-parallel training"): the
 * cells a forward gets are positions before .. before + n - 1 of a batch of before + n + after
 * cells. Dropout masks and Gaussian samples of the whole batch are drawn from rng in the order
 * one process draws them and the share's are kept, so the generator advances as in one process
 * and each cell gets the noise it would get there; a sphere latent's samples (a rejection sampler
 * whose draws depend on each cell's concentration) come from sphere_rng instead. 0, 0, NULL (the
 * default): the whole batch. */
void nbs_workspace_set_share(nbs_workspace *w, int64_t before, int64_t after, gsl_rng *sphere_rng);
/* Per cell of the workspace's last forward: log p(x_i|z_i) (n), KL terms (n, kl_terms). */
const double *nbs_workspace_loglik(const nbs_workspace *w);
const double *nbs_workspace_kl(const nbs_workspace *w);
/* Spheres: kappa per cell of the last forward (NULL for Gaussian); vMF sampler acceptance rate
 * over the workspace's life (NaN otherwise). Stage 0. */
const float *nbs_workspace_kappa(const nbs_workspace *w);
double nbs_workspace_acceptance(const nbs_workspace *w);
/* Seconds spent since the last call in the layers (matrix products, activations, latent) and
 * in the likelihood (softmax, NB terms and their gradients); resets both. */
void nbs_workspace_take_timers(nbs_workspace *w, double *products, double *likelihood);

/* Backward of the workspace's last NBS_PASS_TRAIN forward for the loss
 *   recon_weight (1/n) sum_i -log p(x_i|z_i) + sum_t kl_weight[t] * sum_i KL_it,
 * so kl_weight already holds beta / n and any free-bits mask; recon_weight is 1 for a batch of
 * its own and n / N when the batch is this process's n of N cells whose gradients are summed.
 * Accumulates into the gradients. */
void nbs_model_backward(nbs_model *m, nbs_workspace *w, float recon_weight, const float *kl_weight);

/* Optimiser side: one memset zeroes every gradient; norm and scaling for clipping; the name of
 * the first block with a non-finite gradient (NULL if none); one Adam step. The gradients are
 * one contiguous block of nbs_model_n_params floats (nbs_model_flat), so a reduction across
 * processes is one call. */
void nbs_model_zero_grad(nbs_model *m);
double nbs_model_grad_norm(const nbs_model *m);
void nbs_model_scale_grad(nbs_model *m, double f);
const char *nbs_model_nonfinite_grad(const nbs_model *m);
void nbs_model_adam(nbs_model *m, double lr, double eps, double weight_decay);
/* The gradient block: n_params floats, at the parameters' offsets. */
float *nbs_model_grad_block(nbs_model *m);

/* Encoder in evaluation mode (no dropout) for the cells of c: writes the latent head of stage s
 * (n, head_dim of the stage) (see latent.h for how to read it). */
int nbs_model_encode(const nbs_model *m, nbs_workspace *w, const nbs_cells *c, int stage, float *head,
                     nbs_error *err);

/* The embedding of the cells of c: posterior location (n, d) and, if spread is not NULL, the
 * posterior spread (n, nbs_latent_spread_dim): Gaussian variances or the sphere's kappa.
 * Uses a workspace of its own, so threads may embed with one model at once. */
int nbs_model_embed(const nbs_model *m, const nbs_cells *c, float *location, float *spread, nbs_error *err);

/* Decoder in evaluation mode for the cells of c (their covariates; the counts are not read):
 * z (c->n, d) -> gene logits (c->n, G); log rho = log_softmax(logits). log_theta, if not NULL,
 * receives log theta (c->n, G) of the NB/ZINB (+inf for Poisson). */
int nbs_model_decode_logits(const nbs_model *m, nbs_workspace *w, const nbs_cells *c, const float *z,
                            float *logits, float *log_theta, nbs_error *err);

/* Reconstruction log-likelihood sum_g log p(x_g | z) per cell (n) for the cells of c given
 * z (n, d), with the observed library size. */
int nbs_model_loglik(const nbs_model *m, nbs_workspace *w, const nbs_cells *c, const float *z,
                     double *loglik, nbs_error *err);

/* Named parameter blocks, for diagnostics, tests and checkpoints. Names:
 *   "encoder.<i>.W" [in x out], "encoder.<i>.b" [out]   hidden layers i = 0..
 *   "encoder.head.W", "encoder.head.b"                   latent head (see latent.h)
 *   "decoder.<i>.W", "decoder.<i>.b"                     decoder.0 takes z
 *   "decoder.out.W", "decoder.out.b"                     gene logits
 *   "decoder.dropout.W/b", "decoder.dispersion.W/b"     ZINB / per-cell dispersion heads
 *   "<layer>.norm.gain/bias", "<layer>.norm.running_mean/var"   normalisation
 *   "dispersion"                                         log theta [n_batches x G] per gene
 *                                                        (and batch category: gene_batch)
 *   "ladder.<s>.up.W/b", "ladder.<s>.head.W/b"           a ladder's bottom-up layer and head of
 *                                                        stage s (0 = bottom)
 *   "ladder.<s>.prior.W/b", "ladder.<s>.prior.head.W/b"  its top-down prior p(z_s | z_{s+1})
 *   "decoder.<i>.skip.<s>.W" [d_s x out]                 skip connection of stage s into decoder
 *                                                        layer i (not 0.skip.0: decoder.0.W)
 *   "decoder.<i>.covariates.W" [categories x out]        one row per category of every
 *                                                        categorical covariate, in order
 *   "decoder.0.continuous.W" [n_continuous x out]        continuous covariates
 *   "encoder.0.covariates.W", "encoder.0.continuous.W"   the same, with encode_covariates
 *   with covariate_embedding: embedding, covariates.W is [n_categorical * dim x out] and
 *   "covariates.<k>.embedding" [n_categories_k x dim]   covariate k's learned table
 *   "encoder.cluster.W/b" [width x K]                    q(c|x) head (model.discrete: K)
 *   "prior.cluster_logits" [1 x K], "prior.mean",        p(c) and p(z|c) = N(mean_c,
 *   "prior.logvar" [K x d]                               diag exp(logvar_c))
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

/* The discrete latent (model.discrete, mixture.h): K categories (0: none) and the place of the KL
 * of c in the KL vector (-1: none); stage 0's KL terms are then the mixture's KL_j. */
int nbs_model_discrete(const nbs_model *m);
int nbs_model_cluster_kl_term(const nbs_model *m);
/* q(c|x) (n, K) of the cells of c in evaluation mode and, when kl is not NULL, each cell's
 * mixture KL terms (n, d + 1: KL_j of z, then KL_c). Uses a workspace of its own. */
int nbs_model_cluster(const nbs_model *m, const nbs_cells *c, float *prob, double *kl, nbs_error *err);
/* The entropy auxiliary loss on the workspace's last NBS_PASS_TRAIN forward (mixture.h):
 * weight * max(0, target - H(qbar)) + cell_weight * mean_i H(q(c|x_i)), qbar the batch's mean
 * q(c|x) (returned; *entropy = H(qbar)).
 * Its gradient times scale (the batch's share of the cells, as recon_weight) is added by the
 * next nbs_model_backward. 0 without a discrete latent. */
double nbs_model_entropy_loss(nbs_model *m, nbs_workspace *w, double target, double weight, double cell_weight,
                              double scale, double *entropy);

/* Weights of the decoder's first layer, [d x width] row-major (row j = what z_j feeds). */
const float *nbs_model_decoder_first_weights(const nbs_model *m, int *d, int *width);
float *nbs_model_decoder_first_weights_mut(nbs_model *m);

#endif
