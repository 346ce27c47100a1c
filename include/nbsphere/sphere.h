/* Mathematics of the hyperspherical latent space S^{d-1} in R^d: the modified Bessel function
 * and its ratio, the von Mises-Fisher (vMF) posterior (KL to the uniform prior, Wood's
 * sampler with implicit or rejection-corrected reparameterisation gradients) and the Power
 * Spherical posterior (closed-form KL, Beta sampler with implicit gradients).
 *
 * Everything here is per cell and in double precision; the batched latent layer (latent.c)
 * converts from the encoder's float head, calls these, and converts back. Domain everywhere:
 * 2 <= d <= NBS_SPHERE_MAX_DIM, kappa > 0 and finite. Accuracy is tested for d in [3, 256] and
 * kappa in [1e-6, 1e6]; there no result is 0, Inf or NaN unless the exact value is 0.
 * Reentrant (no shared state), so cells can be spread over threads, each with its own gsl_rng
 * and its own nbs_sphere_work. docs/sphere.md shows how a latent layer calls these and why the
 * vMF uses implicit gradients. */
#ifndef NBSPHERE_SPHERE_H
#define NBSPHERE_SPHERE_H

#include <gsl/gsl_integration.h>
#include <gsl/gsl_rng.h>

#include "nbsphere/error.h"

#define NBS_SPHERE_MAX_DIM 1024

/* ---- workspace ---- */

/* Scratch of one thread for the samplers and gradients. The *_ws functions take one made
 * beforehand: the latent layer's cache owns one per thread, so that a training step allocates
 * nothing (inside the backward's parallel loop a failed allocation could only show as a NaN
 * gradient). The same functions without _ws make their own per call (tests, one-off use). */
typedef struct {
    int d;                           /* the largest dimension it serves */
    double *buf;                     /* (3, d): mu, h, y of the reflection */
    gsl_integration_workspace *quad; /* subintervals of the gradient quadratures */
} nbs_sphere_work;

/* For dimensions up to d (2..NBS_SPHERE_MAX_DIM; NBS_ERR_INTERNAL otherwise). NBS_ERR_NOMEM if
 * it cannot be made; after a failure nothing is left to free. */
int nbs_sphere_work_init(nbs_sphere_work *w, int d, nbs_error *err);
void nbs_sphere_work_free(nbs_sphere_work *w);

/* ---- special functions (bessel.c) ---- */

/* log I_nu(x) for nu >= 0, x > 0 (no overflow or underflow: the value itself is returned in
 * logs). */
int nbs_bessel_log_i(double nu, double x, double *out, nbs_error *err);

/* log(I_nu(x) e^{-x}), the exponentially scaled form; differences such as kappa - log I stay
 * exact at large x. */
int nbs_bessel_log_i_scaled(double nu, double x, double *out, nbs_error *err);

/* A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa) and 1 - A_d(kappa), both to full relative
 * precision (1 - A is not formed as a difference). Either pointer may be NULL. */
int nbs_vmf_mean_ratio(int d, double kappa, double *a, double *one_minus_a, nbs_error *err);

/* ---- von Mises-Fisher (sphere.c) ---- */

typedef struct {
    double a;           /* A_d(kappa) = E[mu^T z] */
    double one_minus_a; /* 1 - A_d(kappa), exact at large kappa */
    double da_dkappa;   /* dA_d/dkappa = 1 - A^2 - (d-1) A / kappa */
    double kl;          /* KL(vMF(mu, kappa) || U(S^{d-1})) */
    double dkl_dkappa;  /* kappa (1 - A^2) - (d-1) A */
} nbs_vmf_stats;

/* All the kappa-dependent quantities of vMF(mu, kappa) on S^{d-1} at once. */
int nbs_vmf_stats_eval(int d, double kappa, nbs_vmf_stats *s, nbs_error *err);

/* log of the surface area of S^{d-1}: log(2 pi^{d/2} / Gamma(d/2)). */
double nbs_sphere_log_area(int d);

/* One per-cell sample and what its backward needs. The caller owns v (d - 1 doubles: the
 * tangent direction, uniform on S^{d-2}), which the backward reads again. */
typedef struct {
    int d;
    double kappa;
    double norm;        /* |u| of the unnormalised direction u; mu = u / |u| */
    double w;           /* mu^T z */
    double one_minus_w; /* 1 - w, kept exactly (w is within 1e-12 of 1 at large kappa) */
    double eps;         /* vMF: accepted Beta((d-1)/2, (d-1)/2) variate; PS: (1 - w)/2, a
                           Beta(beta, alpha) variate */
    double b;           /* vMF: Wood's b(kappa) */
    int proposals;      /* vMF: proposals drawn until acceptance (>= 1); PS: 1 */
} nbs_sphere_draw;

/* Draws z ~ vMF(u / |u|, kappa) on S^{d-1} (Wood 1994). u: [d], not necessarily unit, nonzero;
 * z: [d]; v: [d - 1], filled. */
int nbs_vmf_sample(int d, const double *u, double kappa, gsl_rng *rng, double *z, double *v,
                   nbs_sphere_draw *draw, nbs_error *err);
int nbs_vmf_sample_ws(int d, const double *u, double kappa, gsl_rng *rng, double *z, double *v,
                      nbs_sphere_draw *draw, nbs_sphere_work *w, nbs_error *err);

/* Backward of one vMF sample, the one to train with. dz: dL/dz [d]. Writes du: dL/du [d]
 * (through the normalisation mu = u / |u| and the reflection) and dkappa: dL/dkappa, with
 * dw/dkappa from implicit reparameterisation (Figurnov et al. 2018): the sample's CDF value
 * is held fixed, dw/dkappa = -(dF(w | kappa)/dkappa) / p(w | kappa), by quadrature of the
 * marginal density of w (a few microseconds per cell). Unbiased (tests/test_sphere.c) and,
 * having no score term, its variance does not grow with the size of the loss.
 * Does not include the KL; add kl_weight * nbs_vmf_stats.dkl_dkappa. */
int nbs_vmf_backward(const nbs_sphere_draw *draw, const double *u, const double *v,
                     const double *dz, double *du, double *dkappa, nbs_error *err);
int nbs_vmf_backward_ws(const nbs_sphere_draw *draw, const double *u, const double *v,
                        const double *dz, double *du, double *dkappa, nbs_sphere_work *w,
                        nbs_error *err);

/* The alternative: Wood's reparameterisation through w(eps, kappa) plus the rejection
 * correction of Naesseth et al. 2017, f * d/dkappa [log g(w | kappa) + log |dw/deps|] with g
 * the density of w. f is the cell's loss L(z), optionally minus a baseline independent of this
 * sample. Also unbiased, but its standard error grows with |f|: with f = L + 100 it is 50 to
 * 1000 times that of nbs_vmf_backward in the tests, and a cell's NB loss is in the thousands.
 * Kept for comparison and for callers with a good baseline. The pathwise part alone is biased
 * (by up to 65 standard errors in the tests), so the correction must not be dropped. */
int nbs_vmf_backward_rsvi(const nbs_sphere_draw *draw, const double *u, const double *v,
                          const double *dz, double f, double *du, double *dkappa, nbs_error *err);

/* The parts of the kappa gradient of w = mu^T z: dw/dkappa along the accepted eps
 * (Wood's pathwise derivative), the score d/dkappa [log g(w | kappa) + log |dw/deps|], and
 * the implicit dw/dkappa. Any output may be NULL. */
int nbs_vmf_w_gradients(const nbs_sphere_draw *draw, double *dw_dkappa, double *score,
                        nbs_error *err);
int nbs_vmf_dw_dkappa_implicit(const nbs_sphere_draw *draw, double *dw_dkappa, nbs_error *err);

/* ---- Power Spherical (sphere.c; De Cao & Aziz 2020), density prop. to (1 + mu^T z)^kappa ---- */

typedef struct {
    double mean_w;      /* E[mu^T z] = kappa / (d - 1 + kappa) */
    double dmean_dkappa;
    double kl;          /* KL(PS(mu, kappa) || U(S^{d-1})) */
    double dkl_dkappa;  /* kappa (psi'(alpha) - psi'(alpha + beta)) */
} nbs_ps_stats;

int nbs_ps_stats_eval(int d, double kappa, nbs_ps_stats *s, nbs_error *err);

/* Draws z ~ PS(u / |u|, kappa). Same conventions as nbs_vmf_sample. */
int nbs_ps_sample(int d, const double *u, double kappa, gsl_rng *rng, double *z, double *v,
                  nbs_sphere_draw *draw, nbs_error *err);
int nbs_ps_sample_ws(int d, const double *u, double kappa, gsl_rng *rng, double *z, double *v,
                     nbs_sphere_draw *draw, nbs_sphere_work *w, nbs_error *err);

/* dw/dkappa of one Power Spherical sample, by implicit differentiation of the Beta CDF. */
int nbs_ps_dw_dkappa(const nbs_sphere_draw *draw, double *dw_dkappa, nbs_error *err);

/* Backward of one Power Spherical sample (fully reparameterised: no score term). */
int nbs_ps_backward(const nbs_sphere_draw *draw, const double *u, const double *v,
                    const double *dz, double *du, double *dkappa, nbs_error *err);
int nbs_ps_backward_ws(const nbs_sphere_draw *draw, const double *u, const double *v,
                       const double *dz, double *du, double *dkappa, nbs_sphere_work *w,
                       nbs_error *err);

/* ---- shared geometry ---- */

/* z = Q (w, sqrt(1 - w^2) v) with Q orthogonal, Q e1 = mu = u / |u| (a Householder reflection;
 * see sphere.c for the sign choice). Deterministic: the tests use it to differentiate z by
 * finite differences. */
int nbs_sphere_place(int d, const double *u, double w, double one_minus_w, const double *v,
                     double *z, nbs_error *err);

#endif
