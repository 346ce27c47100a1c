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

/* One latent stage. A model holds one per stochastic layer; each has a cache of its own, and
 * nothing is shared between stages. */
typedef struct {
    nbs_latent_kind kind;
    int dim;            /* d: latent dimension (sphere: S^{d-1} in R^d) */
    double kappa_floor; /* spheres: kappa = softplus(raw) + kappa_floor */
} nbs_latent;

/* Per-batch workspace remembered between forward and backward (samples, noise, kappa, ...). */
typedef struct nbs_latent_cache nbs_latent_cache;

/* What one kind of latent is and does: one table per kind; the nbs_latent_* functions below
 * look it up from L->kind and call through it, so a new kind is a new table. Shapes are per
 * batch of n cells, with hd = head_dim, K = kl_terms, S = spread_dim. */
typedef struct nbs_latent_ops {
    int on_sphere;      /* z lies on S^{d-1}: a concentration kappa, the cosine metric, d >= 2 */
    int has_acceptance; /* a rejection sampler: the cache counts its acceptance rate */
    int (*head_dim)(const nbs_latent *L);
    int (*kl_terms)(const nbs_latent *L);
    int (*spread_dim)(const nbs_latent *L); /* per-cell floats of the posterior's spread */
    /* Makes the kind's buffers in a zeroed cache for max_batch cells; cache_release frees
     * whatever it made, also after a failure part way. */
    int (*cache_init)(const nbs_latent *L, nbs_latent_cache *c, int max_batch, nbs_error *err);
    void (*cache_release)(nbs_latent_cache *c);
    int (*forward)(const nbs_latent *L, const float *head /* (n, hd) */, int n, gsl_rng *rng,
                   float *z /* (n, d) */, double *kl /* (n, K) or NULL */, nbs_latent_cache *c,
                   nbs_error *err);
    void (*backward)(const nbs_latent *L, const float *head /* (n, hd) */, int n,
                     const float *dz /* (n, d) or NULL */, const float *kl_weight /* (K) */,
                     nbs_latent_cache *c, float *dhead /* (n, hd) */);
    void (*posterior)(const nbs_latent *L, const float *head /* (n, hd) */, int n,
                      float *location /* (n, d) or NULL */, float *spread /* (n, S) or NULL */);
    void (*expectation)(const nbs_latent *L, const float *head /* (n, hd) */, int n,
                        float *ez /* (n, d) */);
    /* spheres: the per-cell maths (sphere.h) of the posterior, which differs between the two
     * while the functions above are shared; NULL for the others */
    const struct nbs_latent_sphere *sphere;
} nbs_latent_ops;

/* The table of a kind (every kind has one). */
const nbs_latent_ops *nbs_latent_ops_of(nbs_latent_kind kind);

/* Width of the encoder head per cell: Gaussian 2d (mean, log variance);
 * spheres d + 1 (unnormalised direction, raw concentration). */
int nbs_latent_head_dim(const nbs_latent *L);

/* Number of KL terms per cell: d for Gaussian (exact per-dimension KL), 1 for the spheres. */
int nbs_latent_kl_terms(const nbs_latent *L);

/* Floats per cell of nbs_latent_posterior's spread: d for Gaussian (variances), 1 for the
 * spheres (kappa). */
int nbs_latent_spread_dim(const nbs_latent *L);

/* 1 if z lies on the unit sphere (kappa, cosine metric, d >= 2), else 0. */
int nbs_latent_on_sphere(const nbs_latent *L);

/* 1 if the sampler rejects proposals, so that nbs_latent_cache_acceptance has a value. */
int nbs_latent_has_acceptance(const nbs_latent *L);

/* For batches of up to max_batch cells, with scratch for each thread of the OpenMP pool as it
 * is now (omp_get_max_threads()): forward and backward then allocate nothing. A pool grown
 * later runs the backward on no more threads than the cache has scratch for. */
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
