/* Latent layers. Gaussian: head = (mean, log variance), exact per-dimension KL to N(0, I).
 * The spheres (vMF, Power Spherical) read head = (direction, raw concentration). */
#include "nbsphere/latent.h"

#include <gsl/gsl_randist.h>
#include <math.h>
#include <stdlib.h>

/* The log variance is clamped so exp() stays finite whatever the encoder emits early in
 * training; outside the range its gradient is zero. */
#define LOGVAR_MIN -15.0f
#define LOGVAR_MAX 10.0f

struct nbs_latent_cache {
    int max_batch;
    float *eps; /* [max_batch x d] standard normal noise of the last forward */
    int sampled;
};

int nbs_latent_head_dim(const nbs_latent *L) {
    return L->kind == NBS_LATENT_GAUSSIAN ? 2 * L->dim : L->dim + 1;
}

int nbs_latent_kl_terms(const nbs_latent *L) { return L->kind == NBS_LATENT_GAUSSIAN ? L->dim : 1; }

nbs_latent_cache *nbs_latent_cache_new(const nbs_latent *L, int max_batch, nbs_error *err) {
    nbs_latent_cache *c = nbs_calloc(1, sizeof *c, err);
    if (!c) return NULL;
    c->max_batch = max_batch;
    c->eps = nbs_calloc((size_t)max_batch * L->dim, sizeof(float), err);
    if (!c->eps) {
        free(c);
        return NULL;
    }
    return c;
}

void nbs_latent_cache_free(nbs_latent_cache *c) {
    if (!c) return;
    free(c->eps);
    free(c);
}

static float clamp_logvar(float v) { return v < LOGVAR_MIN ? LOGVAR_MIN : (v > LOGVAR_MAX ? LOGVAR_MAX : v); }

static int gaussian_forward(const nbs_latent *L, const float *head, int n, gsl_rng *rng, float *z,
                            double *kl, nbs_latent_cache *c) {
    const int d = L->dim;
    for (int i = 0; i < n; i++) {
        const float *m = head + (int64_t)i * 2 * d, *lv = m + d;
        for (int j = 0; j < d; j++) {
            const double v = clamp_logvar(lv[j]);
            double zij = m[j];
            if (rng) {
                const double e = gsl_ran_gaussian_ziggurat(rng, 1.0);
                c->eps[(int64_t)i * d + j] = (float)e;
                zij += exp(0.5 * v) * e;
            }
            z[(int64_t)i * d + j] = (float)zij;
            if (kl) kl[(int64_t)i * d + j] = 0.5 * ((double)m[j] * m[j] + exp(v) - 1 - v);
        }
    }
    c->sampled = rng != NULL;
    return NBS_OK;
}

int nbs_latent_forward(const nbs_latent *L, const float *head, int n, gsl_rng *rng, float *z,
                       double *kl, nbs_latent_cache *cache, nbs_error *err) {
    if (n > cache->max_batch)
        return nbs_error_set(err, NBS_ERR_INTERNAL, "latent: batch of %d over the cache's %d", n,
                             cache->max_batch);
    if (L->kind == NBS_LATENT_GAUSSIAN) return gaussian_forward(L, head, n, rng, z, kl, cache);
    return nbs_error_set(err, NBS_ERR_USAGE, "latent: only the gaussian latent is available in this build");
}

void nbs_latent_backward(const nbs_latent *L, const float *head, int n, const float *dz,
                         const float *kl_weight, nbs_latent_cache *c, float *dhead) {
    const int d = L->dim;
    for (int i = 0; i < n; i++) {
        const float *m = head + (int64_t)i * 2 * d, *lv = m + d;
        float *dm = dhead + (int64_t)i * 2 * d, *dlv = dm + d;
        for (int j = 0; j < d; j++) {
            const double v = clamp_logvar(lv[j]);
            const double dzij = dz ? dz[(int64_t)i * d + j] : 0;
            dm[j] = (float)(dzij + kl_weight[j] * m[j]);
            if (lv[j] < LOGVAR_MIN || lv[j] > LOGVAR_MAX) {
                dlv[j] = 0;
                continue;
            }
            const double ds = c->sampled ? dzij * c->eps[(int64_t)i * d + j] * 0.5 * exp(0.5 * v) : 0;
            dlv[j] = (float)(ds + kl_weight[j] * 0.5 * (exp(v) - 1));
        }
    }
}

void nbs_latent_posterior(const nbs_latent *L, const float *head, int n, float *location,
                          float *spread) {
    const int d = L->dim;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) {
            const float *h = head + (int64_t)i * 2 * d;
            if (location) location[(int64_t)i * d + j] = h[j];
            if (spread) spread[(int64_t)i * d + j] = (float)exp(clamp_logvar(h[d + j]));
        }
}

void nbs_latent_expectation(const nbs_latent *L, const float *head, int n, float *ez) {
    nbs_latent_posterior(L, head, n, ez, NULL);
}
