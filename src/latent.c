/* Latent layers behind one interface (nbs_latent_ops, latent.h), one table per kind.
 * Gaussian: head = (mean, log variance), exact per-dimension KL to N(0, I). The spheres (vMF,
 * Power Spherical) read head = (direction, raw concentration) and share everything but the
 * per-cell maths of sphere.h (struct nbs_latent_sphere). */
#include "nbsphere/latent.h"

#include "nbsphere/nn.h"
#include "nbsphere/sphere.h"

#include <gsl/gsl_randist.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>

/* The log variance is clamped so exp() stays finite whatever the encoder emits early in
 * training; outside the range its gradient is zero. */
#define LOGVAR_MIN -15.0f
#define LOGVAR_MAX 10.0f

/* B = max_batch, T = n_slots. Each kind's cache_init makes its own buffers; the rest stay NULL. */
struct nbs_latent_cache {
    const nbs_latent_ops *ops; /* of the kind it was made for */
    int max_batch;
    int sampled; /* the last forward drew a sample (rng != NULL) */
    /* Gaussian */
    float *eps; /* (B, d): standard normal noise of the last forward */
    /* spheres: per cell of the last forward */
    nbs_sphere_draw *draw; /* (B) */
    double *u;             /* (B, d): the direction as the head gave it */
    double *v;             /* (B, d - 1): each sample's tangent direction */
    double *dkl;           /* (B): dKL/dkappa */
    float *kappa;          /* (B) */
    int64_t proposals, samples; /* has_acceptance: proposals and accepted samples so far */
    /* spheres: per OpenMP thread, so that no step allocates */
    int n_slots;           /* T: omp_get_max_threads() when the cache was made */
    double *rows;          /* (T, 2, d): one cell's z (forward) or dL/dz, then its dL/du */
    nbs_sphere_work *work; /* (T) */
};

/* ---------------------------------------------------------------- Gaussian */

static float clamp_logvar(float v) { return v < LOGVAR_MIN ? LOGVAR_MIN : (v > LOGVAR_MAX ? LOGVAR_MAX : v); }

static int gaussian_head_dim(const nbs_latent *L) { return 2 * L->dim; }
/* d KL terms and d variances per cell */
static int per_dimension(const nbs_latent *L) { return L->dim; }

static int gaussian_cache_init(const nbs_latent *L, nbs_latent_cache *c, int max_batch, nbs_error *err) {
    const size_t n = (size_t)(max_batch > 0 ? max_batch : 1);
    return (c->eps = nbs_calloc(n * (size_t)L->dim, sizeof(float), err)) ? NBS_OK : NBS_ERR_NOMEM;
}

static void gaussian_cache_release(nbs_latent_cache *c) { free(c->eps); }

static int gaussian_forward(const nbs_latent *L, const float *head, int n, gsl_rng *rng, float *z,
                            double *kl, nbs_latent_cache *c, nbs_error *err) {
    (void)err;
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

static void gaussian_backward(const nbs_latent *L, const float *head, int n, const float *dz,
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

static void gaussian_posterior(const nbs_latent *L, const float *head, int n, float *location, float *spread) {
    const int d = L->dim;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++) {
            const float *h = head + (int64_t)i * 2 * d;
            if (location) location[(int64_t)i * d + j] = h[j];
            if (spread) spread[(int64_t)i * d + j] = (float)exp(clamp_logvar(h[d + j]));
        }
}

/* E_q[z] is the mean */
static void gaussian_expectation(const nbs_latent *L, const float *head, int n, float *ez) {
    gaussian_posterior(L, head, n, ez, NULL);
}

static const nbs_latent_ops GAUSSIAN_OPS = {
    .on_sphere = 0,
    .has_acceptance = 0,
    .head_dim = gaussian_head_dim,
    .kl_terms = per_dimension,
    .spread_dim = per_dimension,
    .cache_init = gaussian_cache_init,
    .cache_release = gaussian_cache_release,
    .forward = gaussian_forward,
    .backward = gaussian_backward,
    .posterior = gaussian_posterior,
    .expectation = gaussian_expectation,
    .sphere = NULL,
};

/* ---------------------------------------------------------------- spheres */

/* What the two spheres differ in, per cell (sphere.h): the samplers take the thread's
 * workspace, so that a training step allocates nothing. u, z, dz, du: (d); v: (d - 1). */
struct nbs_latent_sphere {
    /* KL(q || uniform) and its kappa-derivative */
    int (*kl)(int d, double kappa, double *kl, double *dkl_dkappa, nbs_error *err);
    /* E_q[mu^T z], which scales mu into E_q[z] */
    int (*mean_w)(int d, double kappa, double *m, nbs_error *err);
    int (*sample)(int d, const double *u, double kappa, gsl_rng *rng, double *z, double *v,
                  nbs_sphere_draw *draw, nbs_sphere_work *w, nbs_error *err);
    int (*backward)(const nbs_sphere_draw *draw, const double *u, const double *v, const double *dz,
                    double *du, double *dkappa, nbs_sphere_work *w, nbs_error *err);
};

/* The KL part of either stats struct of sphere.h. */
#define SPHERE_KL(name, stats_type, eval)                                                  \
    static int name(int d, double kappa, double *kl, double *dkl, nbs_error *err) {        \
        stats_type s;                                                                      \
        const int st = eval(d, kappa, &s, err);                                            \
        *kl = st ? NAN : s.kl, *dkl = st ? NAN : s.dkl_dkappa;                             \
        return st;                                                                         \
    }
SPHERE_KL(vmf_kl, nbs_vmf_stats, nbs_vmf_stats_eval)
SPHERE_KL(ps_kl, nbs_ps_stats, nbs_ps_stats_eval)
#undef SPHERE_KL

static int vmf_mean_w(int d, double kappa, double *m, nbs_error *err) {
    double one_minus_a;
    return nbs_vmf_mean_ratio(d, kappa, m, &one_minus_a, err);
}

static int ps_mean_w(int d, double kappa, double *m, nbs_error *err) {
    nbs_ps_stats s;
    const int st = nbs_ps_stats_eval(d, kappa, &s, err);
    if (!st) *m = s.mean_w;
    return st;
}

static const struct nbs_latent_sphere VMF = {vmf_kl, vmf_mean_w, nbs_vmf_sample_ws, nbs_vmf_backward_ws};
static const struct nbs_latent_sphere PS = {ps_kl, ps_mean_w, nbs_ps_sample_ws, nbs_ps_backward_ws};

/* head = (u [d], raw), mu = u / |u|, kappa = softplus(raw) + floor */
static int sphere_head_dim(const nbs_latent *L) { return L->dim + 1; }
/* one KL term and one kappa per cell */
static int per_cell(const nbs_latent *L) {
    (void)L;
    return 1;
}

static double sigmoid(double x) { return 1 / (1 + exp(-x)); }

/* h (d + 1) -> u (d), kappa */
static void read_head(const nbs_latent *L, const float *h, double *u, double *kappa) {
    double n2 = 0;
    for (int j = 0; j < L->dim; j++) {
        u[j] = h[j];
        n2 += u[j] * u[j];
    }
    if (!(n2 > 0)) u[0] = 1; /* an all-zero direction: any unit vector is as good */
    *kappa = nbs_softplus(h[L->dim]) + L->kappa_floor;
}

static int sphere_cache_init(const nbs_latent *L, nbs_latent_cache *c, int max_batch, nbs_error *err) {
    const size_t n = (size_t)(max_batch > 0 ? max_batch : 1), d = (size_t)L->dim;
    c->n_slots = omp_get_max_threads();
    const size_t T = (size_t)c->n_slots;
    if (!(c->draw = nbs_calloc(n, sizeof *c->draw, err)) || !(c->u = nbs_calloc(n * d, sizeof(double), err)) ||
        !(c->v = nbs_calloc(n * (d - 1), sizeof(double), err)) || !(c->dkl = nbs_calloc(n, sizeof(double), err)) ||
        !(c->kappa = nbs_calloc(n, sizeof(float), err)) || !(c->rows = nbs_calloc(T * 2 * d, sizeof(double), err)) ||
        !(c->work = nbs_calloc(T, sizeof *c->work, err)))
        return NBS_ERR_NOMEM;
    for (int t = 0; t < c->n_slots; t++) {
        const int st = nbs_sphere_work_init(&c->work[t], L->dim, err);
        if (st) return st;
    }
    return NBS_OK;
}

static void sphere_cache_release(nbs_latent_cache *c) {
    for (int t = 0; c->work && t < c->n_slots; t++) nbs_sphere_work_free(&c->work[t]);
    free(c->draw), free(c->u), free(c->v), free(c->dkl), free(c->kappa), free(c->rows), free(c->work);
}

/* The KL terms in parallel (each depends on its cell alone: the same bits with any number of
 * threads), then the samples serially in cell order: they are drawn from the one generator. */
static int sphere_forward(const nbs_latent *L, const float *head, int n, gsl_rng *rng, float *z,
                          double *kl, nbs_latent_cache *c, nbs_error *err) {
    const struct nbs_latent_sphere *M = c->ops->sphere;
    const int d = L->dim, hd = d + 1;
    int failed = n; /* the first cell whose KL failed, and its error */
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        double kappa, kli;
        read_head(L, head + (int64_t)i * hd, c->u + (int64_t)i * d, &kappa);
        c->kappa[i] = (float)kappa;
        nbs_error e;
        const int st = M->kl(d, kappa, &kli, &c->dkl[i], &e);
        if (kl) kl[i] = kli;
        if (st)
#pragma omp critical(sphere_kl_failed)
            if (i < failed) {
                failed = i;
                *err = e;
            }
    }
    if (failed < n) return err->code;
    double *zi = c->rows; /* (d): the first thread's row */
    for (int i = 0; i < n; i++) {
        double *u = c->u + (int64_t)i * d, kappa;
        read_head(L, head + (int64_t)i * hd, u, &kappa);
        if (rng) {
            const int st = M->sample(d, u, kappa, rng, zi, c->v + (int64_t)i * (d - 1), &c->draw[i], &c->work[0], err);
            if (st) return st;
            if (c->ops->has_acceptance) {
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

/* Cells in parallel, each thread with its own row and workspace of the cache. */
static void sphere_backward(const nbs_latent *L, const float *head, int n, const float *dz,
                            const float *kl_weight, nbs_latent_cache *c, float *dhead) {
    const struct nbs_latent_sphere *M = c->ops->sphere;
    const int d = L->dim, hd = d + 1, pool = omp_get_max_threads();
#pragma omp parallel for schedule(dynamic, 8) num_threads(pool < c->n_slots ? pool : c->n_slots)
    for (int i = 0; i < n; i++) {
        const int t = omp_get_thread_num();
        double *dzi = c->rows + (int64_t)t * 2 * d, *du = dzi + d, dkappa = 0;
        const double *u = c->u + (int64_t)i * d;
        float *dh = dhead + (int64_t)i * hd;
        for (int j = 0; j < d; j++) dzi[j] = dz ? dz[(int64_t)i * d + j] : 0;
        int st = NBS_OK;
        nbs_error e;
        if (c->sampled) {
            st = M->backward(&c->draw[i], u, c->v + (int64_t)i * (d - 1), dzi, du, &dkappa, &c->work[t], &e);
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

static void sphere_posterior(const nbs_latent *L, const float *head, int n, float *location, float *spread) {
    const int d = L->dim;
    double u[NBS_MAX_KL_TERMS], kappa;
    for (int i = 0; i < n; i++) {
        read_head(L, head + (int64_t)i * (d + 1), u, &kappa);
        double n2 = 0;
        for (int j = 0; j < d; j++) n2 += u[j] * u[j];
        for (int j = 0; location && j < d; j++) location[(int64_t)i * d + j] = (float)(u[j] / sqrt(n2));
        if (spread) spread[i] = (float)kappa;
    }
}

/* E[z] = E[mu^T z] mu, cell by cell, so that no buffer is needed: this cannot report a failed
 * allocation, which left NaN in the diagnostics */
static void sphere_expectation(const nbs_latent *L, const float *head, int n, float *ez) {
    const struct nbs_latent_sphere *M = nbs_latent_ops_of(L->kind)->sphere;
    const int d = L->dim, hd = d + 1;
    for (int i = 0; i < n; i++) {
        float kappa = NAN;
        sphere_posterior(L, head + (int64_t)i * hd, 1, ez + (int64_t)i * d, &kappa);
        double m = NAN;
        nbs_error e;
        if (M->mean_w(d, kappa, &m, &e)) m = NAN;
        for (int j = 0; j < d; j++) ez[(int64_t)i * d + j] = (float)(m * ez[(int64_t)i * d + j]);
    }
}

#define SPHERE_OPS(rejects, maths)                                                                 \
    {                                                                                              \
        .on_sphere = 1, .has_acceptance = (rejects), .head_dim = sphere_head_dim, .kl_terms = per_cell, \
        .spread_dim = per_cell, .cache_init = sphere_cache_init, .cache_release = sphere_cache_release, \
        .forward = sphere_forward, .backward = sphere_backward, .posterior = sphere_posterior,      \
        .expectation = sphere_expectation, .sphere = (maths),                                      \
    }
static const nbs_latent_ops VMF_OPS = SPHERE_OPS(1, &VMF); /* Wood's sampler rejects */
static const nbs_latent_ops PS_OPS = SPHERE_OPS(0, &PS);
#undef SPHERE_OPS

/* ---------------------------------------------------------------- the interface */

/* The one place where the kinds are told apart. */
const nbs_latent_ops *nbs_latent_ops_of(nbs_latent_kind kind) {
    switch (kind) {
    case NBS_LATENT_VMF: return &VMF_OPS;
    case NBS_LATENT_POWER_SPHERICAL: return &PS_OPS;
    case NBS_LATENT_GAUSSIAN: break;
    }
    return &GAUSSIAN_OPS;
}

int nbs_latent_head_dim(const nbs_latent *L) { return nbs_latent_ops_of(L->kind)->head_dim(L); }
int nbs_latent_kl_terms(const nbs_latent *L) { return nbs_latent_ops_of(L->kind)->kl_terms(L); }
int nbs_latent_spread_dim(const nbs_latent *L) { return nbs_latent_ops_of(L->kind)->spread_dim(L); }
int nbs_latent_on_sphere(const nbs_latent *L) { return nbs_latent_ops_of(L->kind)->on_sphere; }
int nbs_latent_has_acceptance(const nbs_latent *L) { return nbs_latent_ops_of(L->kind)->has_acceptance; }

nbs_latent_cache *nbs_latent_cache_new(const nbs_latent *L, int max_batch, nbs_error *err) {
    nbs_latent_cache *c = nbs_calloc(1, sizeof *c, err);
    if (!c) return NULL;
    c->ops = nbs_latent_ops_of(L->kind);
    c->max_batch = max_batch;
    if (c->ops->cache_init(L, c, max_batch, err)) {
        nbs_latent_cache_free(c);
        return NULL;
    }
    return c;
}

void nbs_latent_cache_free(nbs_latent_cache *c) {
    if (!c) return;
    c->ops->cache_release(c);
    free(c);
}

const float *nbs_latent_cache_kappa(const nbs_latent_cache *c) { return c->kappa; }

double nbs_latent_cache_acceptance(const nbs_latent_cache *c) {
    return c->proposals > 0 ? (double)c->samples / (double)c->proposals : NAN;
}

int nbs_latent_forward(const nbs_latent *L, const float *head, int n, gsl_rng *rng, float *z,
                       double *kl, nbs_latent_cache *cache, nbs_error *err) {
    if (n > cache->max_batch)
        return nbs_error_set(err, NBS_ERR_INTERNAL, "latent: batch of %d over the cache's %d", n,
                             cache->max_batch);
    return nbs_latent_ops_of(L->kind)->forward(L, head, n, rng, z, kl, cache, err);
}

void nbs_latent_backward(const nbs_latent *L, const float *head, int n, const float *dz,
                         const float *kl_weight, nbs_latent_cache *cache, float *dhead) {
    nbs_latent_ops_of(L->kind)->backward(L, head, n, dz, kl_weight, cache, dhead);
}

void nbs_latent_posterior(const nbs_latent *L, const float *head, int n, float *location,
                          float *spread) {
    nbs_latent_ops_of(L->kind)->posterior(L, head, n, location, spread);
}

void nbs_latent_expectation(const nbs_latent *L, const float *head, int n, float *ez) {
    nbs_latent_ops_of(L->kind)->expectation(L, head, n, ez);
}
