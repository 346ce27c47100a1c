/* Latent layers. Gaussian: head = (mean, log variance), exact per-dimension KL to N(0, I).
 * The spheres (vMF, Power Spherical) read head = (direction, raw concentration). */
#include "nbsphere/latent.h"

#include "nbsphere/sphere.h"
#include "sphere_internal.h"

#include <gsl/gsl_randist.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The log variance is clamped so exp() stays finite whatever the encoder emits early in
 * training; outside the range its gradient is zero. */
#define LOGVAR_MIN -15.0f
#define LOGVAR_MAX 10.0f

struct nbs_latent_cache {
    int max_batch;
    float *eps; /* Gaussian: [max_batch x d] standard normal noise of the last forward */
    int sampled;
    /* spheres: per cell of the last forward */
    nbs_sphere_draw *draw;
    double *u, *v;        /* [max_batch x d] direction as given, [max_batch x (d - 1)] */
    double *dkl;          /* [max_batch] dKL/dkappa */
    float *kappa;         /* [max_batch] */
    int64_t proposals, samples; /* vMF: Wood's proposals and accepted samples so far */
};

int nbs_latent_head_dim(const nbs_latent *L) {
    return L->kind == NBS_LATENT_GAUSSIAN ? 2 * L->dim : L->dim + 1;
}

int nbs_latent_kl_terms(const nbs_latent *L) { return L->kind == NBS_LATENT_GAUSSIAN ? L->dim : 1; }

nbs_latent_cache *nbs_latent_cache_new(const nbs_latent *L, int max_batch, nbs_error *err) {
    nbs_latent_cache *c = nbs_calloc(1, sizeof *c, err);
    if (!c) return NULL;
    c->max_batch = max_batch;
    const size_t n = (size_t)(max_batch > 0 ? max_batch : 1), d = (size_t)L->dim;
    int ok;
    if (L->kind == NBS_LATENT_GAUSSIAN) ok = (c->eps = nbs_calloc(n * d, sizeof(float), err)) != NULL;
    else
        ok = (c->draw = nbs_calloc(n, sizeof *c->draw, err)) && (c->u = nbs_calloc(n * d, sizeof(double), err)) &&
             (c->v = nbs_calloc(n * d, sizeof(double), err)) && (c->dkl = nbs_calloc(n, sizeof(double), err)) &&
             (c->kappa = nbs_calloc(n, sizeof(float), err));
    if (!ok) {
        nbs_latent_cache_free(c);
        return NULL;
    }
    return c;
}

void nbs_latent_cache_free(nbs_latent_cache *c) {
    if (!c) return;
    free(c->eps), free(c->draw), free(c->u), free(c->v), free(c->dkl), free(c->kappa);
    free(c);
}

const float *nbs_latent_cache_kappa(const nbs_latent_cache *c) { return c->kappa; }

double nbs_latent_cache_acceptance(const nbs_latent_cache *c) {
    return c->proposals > 0 ? (double)c->samples / (double)c->proposals : NAN;
}

/* ---- spheres: head = (u [d], raw), mu = u / |u|, kappa = softplus(raw) + floor ---- */

static double softplus(double x) { return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x)); }
static double sigmoid(double x) { return 1 / (1 + exp(-x)); }

static void read_head(const nbs_latent *L, const float *h, double *u, double *kappa) {
    double n2 = 0;
    for (int j = 0; j < L->dim; j++) {
        u[j] = h[j];
        n2 += u[j] * u[j];
    }
    if (!(n2 > 0)) u[0] = 1; /* an all-zero direction: any unit vector is as good */
    *kappa = softplus(h[L->dim]) + L->kappa_floor;
}

static int sphere_forward(const nbs_latent *L, const float *head, int n, gsl_rng *rng, float *z,
                          double *kl, nbs_latent_cache *c, nbs_error *err) {
    const int d = L->dim, hd = d + 1, vmf = L->kind == NBS_LATENT_VMF;
    double zi[NBS_MAX_KL_TERMS];
    for (int i = 0; i < n; i++) {
        double *u = c->u + (int64_t)i * d, kappa;
        read_head(L, head + (int64_t)i * hd, u, &kappa);
        c->kappa[i] = (float)kappa;
        int st;
        if (vmf) {
            nbs_vmf_stats s;
            st = nbs_vmf_stats_eval(d, kappa, &s, err);
            if (kl) kl[i] = s.kl;
            c->dkl[i] = s.dkl_dkappa;
        } else {
            nbs_ps_stats s;
            st = nbs_ps_stats_eval(d, kappa, &s, err);
            if (kl) kl[i] = s.kl;
            c->dkl[i] = s.dkl_dkappa;
        }
        if (st) return st;
        if (rng) {
            double *v = c->v + (int64_t)i * d;
            st = vmf ? nbs_vmf_sample(d, u, kappa, rng, zi, v, &c->draw[i], err)
                     : nbs_ps_sample(d, u, kappa, rng, zi, v, &c->draw[i], err);
            if (st) return st;
            if (vmf) {
                c->proposals += c->draw[i].proposals;
                c->samples++;
            }
        } else { /* the location: mu */
            double n2 = 0;
            for (int j = 0; j < d; j++) n2 += u[j] * u[j];
            for (int j = 0; j < d; j++) zi[j] = u[j] / sqrt(n2);
        }
        for (int j = 0; j < d; j++) z[(int64_t)i * d + j] = (float)zi[j];
    }
    c->sampled = rng != NULL;
    return NBS_OK;
}

static void sphere_backward(const nbs_latent *L, const float *head, int n, const float *dz,
                            const float *kl_weight, nbs_latent_cache *c, float *dhead) {
    const int d = L->dim, hd = d + 1, vmf = L->kind == NBS_LATENT_VMF;
#pragma omp parallel for schedule(dynamic, 8)
    for (int i = 0; i < n; i++) {
        double dzi[NBS_MAX_KL_TERMS], du[NBS_MAX_KL_TERMS], dkappa = 0;
        const double *u = c->u + (int64_t)i * d;
        float *dh = dhead + (int64_t)i * hd;
        for (int j = 0; j < d; j++) dzi[j] = dz ? dz[(int64_t)i * d + j] : 0;
        int st = NBS_OK;
        nbs_error e;
        if (c->sampled) {
            st = vmf ? nbs_vmf_backward(&c->draw[i], u, c->v + (int64_t)i * d, dzi, du, &dkappa, &e)
                     : nbs_ps_backward(&c->draw[i], u, c->v + (int64_t)i * d, dzi, du, &dkappa, &e);
        } else { /* z = u / |u|: dL/du = (I - mu mu^T) dz / |u| */
            double n2 = 0, dot = 0;
            for (int j = 0; j < d; j++) n2 += u[j] * u[j];
            const double nu = sqrt(n2);
            for (int j = 0; j < d; j++) dot += dzi[j] * u[j] / nu;
            for (int j = 0; j < d; j++) du[j] = (dzi[j] - dot * u[j] / nu) / nu;
        }
        if (st) { /* a failed sample gradient: NaN, so training stops and names the block */
            for (int j = 0; j < hd; j++) dh[j] = NAN;
            continue;
        }
        dkappa += kl_weight[0] * c->dkl[i];
        for (int j = 0; j < d; j++) dh[j] = (float)du[j];
        dh[d] = (float)(dkappa * sigmoid(head[(int64_t)i * hd + d]));
    }
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
    int st = rng ? nbs_sphere_reserve(err) : NBS_OK; /* a sample is followed by its backward */
    return st ? st : sphere_forward(L, head, n, rng, z, kl, cache, err);
}

void nbs_latent_backward(const nbs_latent *L, const float *head, int n, const float *dz,
                         const float *kl_weight, nbs_latent_cache *c, float *dhead) {
    if (L->kind != NBS_LATENT_GAUSSIAN) {
        sphere_backward(L, head, n, dz, kl_weight, c, dhead);
        return;
    }
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
    if (L->kind != NBS_LATENT_GAUSSIAN) {
        double u[NBS_MAX_KL_TERMS], kappa;
        for (int i = 0; i < n; i++) {
            read_head(L, head + (int64_t)i * (d + 1), u, &kappa);
            double n2 = 0;
            for (int j = 0; j < d; j++) n2 += u[j] * u[j];
            for (int j = 0; location && j < d; j++) location[(int64_t)i * d + j] = (float)(u[j] / sqrt(n2));
            if (spread) spread[i] = (float)kappa;
        }
        return;
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) {
            const float *h = head + (int64_t)i * 2 * d;
            if (location) location[(int64_t)i * d + j] = h[j];
            if (spread) spread[(int64_t)i * d + j] = (float)exp(clamp_logvar(h[d + j]));
        }
}

void nbs_latent_expectation(const nbs_latent *L, const float *head, int n, float *ez) {
    if (L->kind == NBS_LATENT_GAUSSIAN) {
        nbs_latent_posterior(L, head, n, ez, NULL);
        return;
    }
    /* E[z] = A(kappa) mu (vMF), E[w] mu (Power Spherical); cell by cell, so that no buffer is
     * needed: this cannot report a failed allocation, which left NaN in the diagnostics */
    const int d = L->dim, hd = nbs_latent_head_dim(L);
    for (int i = 0; i < n; i++) {
        float kappa = NAN;
        nbs_latent_posterior(L, head + (int64_t)i * hd, 1, ez + (int64_t)i * d, &kappa);
        double m = NAN;
        nbs_error e;
        if (L->kind == NBS_LATENT_VMF) {
            double a, oma;
            if (!nbs_vmf_mean_ratio(d, kappa, &a, &oma, &e)) m = a;
        } else {
            nbs_ps_stats s;
            if (!nbs_ps_stats_eval(d, kappa, &s, &e)) m = s.mean_w;
        }
        for (int j = 0; j < d; j++) ez[(int64_t)i * d + j] = (float)(m * ez[(int64_t)i * d + j]);
    }
}
