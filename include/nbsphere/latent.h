/* The latent layer between encoder and decoder: Gaussian, von Mises-Fisher or Power
 * Spherical posterior; sampling with reparameterised gradients, KL to the prior (N(0,I) for
 * Gaussian, uniform on S^{d-1} for the spheres) and its gradient. The encoder's last layer
 * produces a raw "head" per cell; everything about how the head is read lives here. */
#ifndef NBSPHERE_LATENT_H
#define NBSPHERE_LATENT_H

#include <gsl/gsl_rng.h>

#include "nbsphere/config.h"
#include "nbsphere/error.h"

/* Largest latent dimension (the pipeline accepts 1..1024). */
#define NBS_MAX_KL_TERMS 1024

typedef struct {
    nbs_latent_kind kind;
    int dim;            /* d: latent dimension (sphere: S^{d-1} in R^d) */
    double kappa_floor; /* spheres: kappa = softplus(raw) + kappa_floor */
} nbs_latent;

/* Width of the encoder head per cell: Gaussian 2d (mean, log variance);
 * spheres d + 1 (unnormalised direction, raw concentration). */
int nbs_latent_head_dim(const nbs_latent *L);

/* Number of KL terms per cell: d for Gaussian (exact per-dimension KL), 1 for the spheres. */
int nbs_latent_kl_terms(const nbs_latent *L);

/* Per-batch workspace remembered between forward and backward (samples, noise, kappa, ...). */
typedef struct nbs_latent_cache nbs_latent_cache;
nbs_latent_cache *nbs_latent_cache_new(const nbs_latent *L, int max_batch, nbs_error *err);
void nbs_latent_cache_free(nbs_latent_cache *c);
/* Spheres: kappa of each cell of the last forward (NULL for Gaussian); the acceptance rate of
 * Wood's vMF sampler over every sample drawn with this cache (NaN otherwise). */
const float *nbs_latent_cache_kappa(const nbs_latent_cache *c);
double nbs_latent_cache_acceptance(const nbs_latent_cache *c);

/* head [n x head_dim] -> z [n x d] and kl [n x kl_terms].
 * rng != NULL: z is a reparameterised sample; rng == NULL: z is the posterior location
 * (Gaussian mean, sphere direction mu) and no gradient through sampling is kept. */
int nbs_latent_forward(const nbs_latent *L, const float *head, int n, gsl_rng *rng, float *z,
                       double *kl, nbs_latent_cache *cache, nbs_error *err);

/* dz [n x d] = dLoss/dz; kl_weight [kl_terms] = dLoss/dKL_term (already holding beta, the
 * batch mean and any free-bits mask; the same for every cell). Writes dhead [n x head_dim]
 * (overwritten, not accumulated). Must follow the forward of the same batch. */
void nbs_latent_backward(const nbs_latent *L, const float *head, int n, const float *dz,
                         const float *kl_weight, nbs_latent_cache *cache, float *dhead);

/* Posterior summary without sampling: location [n x d] (Gaussian mean; sphere unit direction)
 * and spread [n x d] Gaussian variances, or [n] sphere concentration kappa. Either may be NULL. */
void nbs_latent_posterior(const nbs_latent *L, const float *head, int n, float *location,
                          float *spread);

/* E_q[z] [n x d]: the Gaussian mean, or A_d(kappa) * mu on the sphere (used for active units). */
void nbs_latent_expectation(const nbs_latent *L, const float *head, int n, float *ez);

#endif
