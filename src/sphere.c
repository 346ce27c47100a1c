/* von Mises-Fisher and Power Spherical posteriors on S^{d-1}: KL to the uniform prior,
 * samplers and their gradients, per cell (see sphere.h). The Bessel pieces are in bessel.c. */
#include <gsl/gsl_errno.h>
#include <gsl/gsl_integration.h>
#include <gsl/gsl_randist.h>
#include <gsl/gsl_sf_gamma.h>
#include <gsl/gsl_sf_psi.h>
#include <math.h>
#include <stdlib.h>

#include "nbsphere/sphere.h"
#include "sphere_internal.h"

/* Below this kappa the Power Spherical KL is its Taylor series: the closed form subtracts
 * O(kappa) terms to get an O(kappa^2) result. */
#define PS_KL_SERIES_MAX 1e-3
#define QUAD_INTERVALS 1000
/* Relative tolerance of the per-sample gradient quadratures: far below the Monte Carlo noise
 * of any gradient estimate, and loose enough for one or two Gauss-Kronrod rules. */
#define QUAD_RELTOL 1e-8

static int check_dk(const char *what, int d, double kappa, nbs_error *err) {
    if (d < 2 || d > NBS_SPHERE_MAX_DIM)
        return nbs_error_set(err, NBS_ERR_INTERNAL, "%s: latent dimension %d out of range (expected 2..%d)",
                             what, d, NBS_SPHERE_MAX_DIM);
    if (!(kappa > 0) || !isfinite(kappa))
        return nbs_error_set(err, NBS_ERR_NUMERIC,
                             "%s: concentration kappa = %g (expected finite and > 0); a diverging "
                             "encoder is the usual cause: lower the learning rate or raise the "
                             "kappa floor",
                             what, kappa);
    return NBS_OK;
}

double nbs_sphere_log_area(int d) { return M_LN2 + 0.5 * d * log(M_PI) - lgamma(0.5 * d); }

/* ---------------------------------------------------------------- vMF: KL and moments */

int nbs_vmf_stats_eval(int d, double kappa, nbs_vmf_stats *s, nbs_error *err) {
    int st = check_dk("vMF KL", d, kappa, err);
    if (st) return st;
    if (nbs_vmf_ratio_parts(d, kappa, &s->a, &s->one_minus_a, &s->dkl_dkappa))
        return nbs_vmf_mean_ratio(d, kappa, NULL, NULL, err); /* fills the message */
    s->da_dkappa = s->dkl_dkappa / kappa;
    const double nu = 0.5 * d - 1;
    if (nbs_bessel_use_series(nu, kappa)) {
        /* KL = kappa A + nu log kappa - log I_nu(kappa) - nu log 2 - lgamma(nu + 1); with
         * I_nu written as its series the logs cancel exactly, leaving kappa A - log1p(tail),
         * two O(kappa^2) terms whose difference kappa^2 / (2d) keeps its digits. */
        s->kl = kappa * s->a - log1p(nbs_bessel_series_tail(nu, kappa));
    } else {
        /* kappa A - log I = -kappa (1 - A) - log(I e^{-kappa}): no large terms cancel. */
        double lis;
        st = nbs_bessel_log_i_scaled(nu, kappa, &lis, err);
        if (st) return st;
        s->kl = -kappa * s->one_minus_a - lis + nu * log(0.5 * kappa) - lgamma(nu + 1);
    }
    if (s->kl < 0) s->kl = 0; /* rounding at the last digit; the KL is never negative */
    return NBS_OK;
}

/* ---------------------------------------------------------------- shared geometry */

/* The reflection: with sigma = sign(mu_1) and h = e1 + sigma mu, H = I - 2 h h^T / |h|^2 maps
 * e1 to -sigma mu and mu to -sigma e1. Placing y = (-sigma w, sqrt(1 - w^2) v) gives
 * z = H y with mu^T z = w. The usual choice h = e1 - mu degenerates (|h| -> 0) as mu -> e1;
 * choosing the sign keeps |h|^2 = 2 (1 + |mu_1|) >= 2. */
typedef struct {
    double sigma, norm_u, hh; /* hh = |h|^2 */
} reflection;

static int reflection_from_u(int d, const double *u, double *mu, double *h, reflection *R,
                             nbs_error *err) {
    double n2 = 0;
    for (int j = 0; j < d; j++) n2 += u[j] * u[j];
    const double norm = sqrt(n2);
    if (!(norm > 0) || !isfinite(norm))
        return nbs_error_set(err, NBS_ERR_NUMERIC,
                             "sphere: the encoder's direction has norm %g (expected finite and > 0); "
                             "lower the learning rate",
                             norm);
    for (int j = 0; j < d; j++) mu[j] = u[j] / norm;
    R->sigma = mu[0] > 0 ? 1.0 : -1.0;
    R->norm_u = norm;
    for (int j = 0; j < d; j++) h[j] = R->sigma * mu[j];
    h[0] += 1;
    R->hh = 2 * (1 + fabs(mu[0]));
    return NBS_OK;
}

static void fill_y(int d, double sigma, double w, double one_minus_w, const double *v, double *y) {
    const double s = sqrt(one_minus_w * (2 - one_minus_w));
    y[0] = -sigma * w;
    for (int j = 1; j < d; j++) y[j] = s * v[j - 1];
}

static void apply_reflection(int d, const double *h, double hh, const double *x, double *out) {
    double dot = 0;
    for (int j = 0; j < d; j++) dot += h[j] * x[j];
    const double c = 2 * dot / hh;
    for (int j = 0; j < d; j++) out[j] = x[j] - c * h[j];
}

/* ---------------------------------------------------------------- workspace */

int nbs_sphere_work_init(nbs_sphere_work *w, int d, nbs_error *err) {
    *w = (nbs_sphere_work){d, NULL, NULL};
    nbs_sphere_gsl_init(); /* GSL's failed allocation then returns NULL instead of aborting */
    if (d < 2 || d > NBS_SPHERE_MAX_DIM)
        return nbs_error_set(err, NBS_ERR_INTERNAL, "sphere workspace: latent dimension %d out of range (expected 2..%d)",
                             d, NBS_SPHERE_MAX_DIM);
    if (!(w->buf = nbs_malloc(3 * (size_t)d * sizeof(double), err))) return NBS_ERR_NOMEM;
    if (!(w->quad = gsl_integration_workspace_alloc(QUAD_INTERVALS))) {
        nbs_sphere_work_free(w);
        return nbs_error_set(err, NBS_ERR_NOMEM, "out of memory for the sphere's quadrature workspace");
    }
    return NBS_OK;
}

void nbs_sphere_work_free(nbs_sphere_work *w) {
    free(w->buf);
    if (w->quad) gsl_integration_workspace_free(w->quad);
    *w = (nbs_sphere_work){0, NULL, NULL};
}

/* The workspace of one call of a function without _ws: the reflection's scratch on the stack
 * (d is at most NBS_SPHERE_MAX_DIM), the quadrature's allocated only for a call that
 * integrates. */
typedef struct {
    nbs_sphere_work w;
    double buf[3 * NBS_SPHERE_MAX_DIM];
} call_work;

static void call_work_init(call_work *c, int d) {
    c->w = (nbs_sphere_work){d < NBS_SPHERE_MAX_DIM ? d : NBS_SPHERE_MAX_DIM, c->buf, NULL};
}

static int call_work_quad(call_work *c, nbs_error *err) {
    nbs_sphere_gsl_init();
    c->w.quad = gsl_integration_workspace_alloc(QUAD_INTERVALS);
    return c->w.quad ? NBS_OK : nbs_error_set(err, NBS_ERR_NOMEM, "out of memory for the sphere's quadrature workspace");
}

static void call_work_free(call_work *c) {
    if (c->w.quad) gsl_integration_workspace_free(c->w.quad);
}

/* w's reflection scratch, (3, d): mu, h, y. */
static double *reflection_scratch(int d, nbs_sphere_work *w, nbs_error *err) {
    if (d > w->d) {
        nbs_error_set(err, NBS_ERR_INTERNAL, "sphere: dimension %d over the workspace's %d", d, w->d);
        return NULL;
    }
    return w->buf;
}

static int place_ws(int d, const double *u, double w, double one_minus_w, const double *v, double *z,
                    nbs_sphere_work *ws, nbs_error *err) {
    double *buf = reflection_scratch(d, ws, err);
    if (!buf) return NBS_ERR_INTERNAL;
    double *mu = buf, *h = buf + d, *y = buf + 2 * d;
    reflection R;
    int st = reflection_from_u(d, u, mu, h, &R, err);
    if (!st) {
        fill_y(d, R.sigma, w, one_minus_w, v, y);
        apply_reflection(d, h, R.hh, y, z);
    }
    return st;
}

int nbs_sphere_place(int d, const double *u, double w, double one_minus_w, const double *v,
                     double *z, nbs_error *err) {
    call_work c;
    call_work_init(&c, d);
    return place_ws(d, u, w, one_minus_w, v, z, &c.w, err);
}

/* Backward of z = H(mu) y(w) with mu = u / |u|: dz -> du (written) and dL/dw (returned). */
static int place_backward(int d, const double *u, double w, double one_minus_w, const double *v,
                          const double *dz, double *du, double *dldw, nbs_sphere_work *ws, nbs_error *err) {
    double *buf = reflection_scratch(d, ws, err);
    if (!buf) return NBS_ERR_INTERNAL;
    double *mu = buf, *h = buf + d, *y = buf + 2 * d;
    reflection R;
    int st = reflection_from_u(d, u, mu, h, &R, err);
    if (st) return st;
    fill_y(d, R.sigma, w, one_minus_w, v, y);
    double s = 0, gh = 0;
    for (int j = 0; j < d; j++) {
        s += h[j] * y[j];
        gh += dz[j] * h[j];
    }
    /* dL/dy = H dz (H symmetric): it gives the w-derivative. */
    const double c = 2 * gh / R.hh;
    const double sq = sqrt(one_minus_w * (2 - one_minus_w));
    double tang = 0;
    for (int j = 1; j < d; j++) tang += (dz[j] - c * h[j]) * v[j - 1];
    *dldw = -R.sigma * (dz[0] - c * h[0]) - (sq > 0 ? w / sq * tang : 0);
    /* z = y - 2 h (h.y) / |h|^2 differentiated in h, then h = e1 + sigma mu, then the
     * projection of mu = u / |u| onto the tangent space. */
    double mdot = 0;
    for (int j = 0; j < d; j++) {
        const double dh = -2 / R.hh * (s * dz[j] + gh * y[j]) + 4 * s * gh / (R.hh * R.hh) * h[j];
        du[j] = R.sigma * dh; /* dL/dmu for now */
        mdot += du[j] * mu[j];
    }
    for (int j = 0; j < d; j++) du[j] = (du[j] - mdot * mu[j]) / R.norm_u;
    return NBS_OK;
}

/* ---------------------------------------------------------------- vMF sampler (Wood 1994) */

/* Wood's envelope parameter in the form that neither overflows nor cancels. */
static double wood_b(int d, double kappa, double *R) {
    const double dm1 = d - 1.0;
    *R = hypot(2 * kappa, dm1);
    return dm1 / (2 * kappa + *R);
}

/* The end of both samplers, once draw holds w: the tangent direction v, z placed, and |u|. */
static int place_draw(int d, const double *u, gsl_rng *rng, double *z, double *v, nbs_sphere_draw *draw,
                      nbs_sphere_work *w, nbs_error *err) {
    gsl_ran_dir_nd(rng, (size_t)(d - 1), v);
    int st = place_ws(d, u, draw->w, draw->one_minus_w, v, z, w, err);
    if (st) return st;
    double n2 = 0;
    for (int j = 0; j < d; j++) n2 += u[j] * u[j];
    draw->norm = sqrt(n2);
    return NBS_OK;
}

int nbs_vmf_sample_ws(int d, const double *u, double kappa, gsl_rng *rng, double *z, double *v,
                      nbs_sphere_draw *draw, nbs_sphere_work *w, nbs_error *err) {
    int st = check_dk("vMF sampler", d, kappa, err);
    if (st) return st;
    double R;
    const double b = wood_b(d, kappa, &R), dm1 = d - 1.0, half = 0.5 * dm1;
    /* x0 = (1 - b)/(1 + b); everything below is written with 1 - x0 and 1 - w, which stay
     * exact when w is within 1e-12 of 1. */
    const double omx0 = 2 * b / (1 + b), x0 = (1 - b) / (1 + b);
    const double log1mx02 = log(omx0 * (2 - omx0));
    double eps = 0, omw = 0;
    int n = 0;
    for (;;) {
        n++;
        eps = gsl_ran_beta(rng, half, half);
        const double den = 1 - (1 - b) * eps;
        omw = 2 * b * eps / den;
        const double t = kappa * (omx0 - omw) + dm1 * (log(omx0 + x0 * omw) - log1mx02);
        if (t >= log(gsl_rng_uniform_pos(rng))) break; /* _pos: log(0) never happens */
        if (n > 1000000)
            return nbs_error_set(err, NBS_ERR_INTERNAL,
                                 "vMF sampler: no acceptance in %d proposals for d = %d, kappa = %g; "
                                 "please report it",
                                 n, d, kappa);
    }
    draw->d = d;
    draw->kappa = kappa;
    draw->b = b;
    draw->eps = eps;
    draw->one_minus_w = omw;
    draw->w = 1 - omw;
    draw->proposals = n;
    return place_draw(d, u, rng, z, v, draw, w, err);
}

int nbs_vmf_w_gradients(const nbs_sphere_draw *draw, double *dw_dkappa, double *score,
                        nbs_error *err) {
    const int d = draw->d;
    const double kappa = draw->kappa, eps = draw->eps, omw = draw->one_minus_w, w = draw->w;
    double R;
    const double b = wood_b(d, kappa, &R);
    const double den = 1 - (1 - b) * eps;
    /* w = (1 - (1 + b) eps) / (1 - (1 - b) eps): dw/db = -2 eps (1 - eps) / den^2 and
     * db/dkappa = -2 b / R with R = sqrt(4 kappa^2 + (d - 1)^2). */
    const double dbdk = -2 * b / R;
    const double dw = -2 * eps * (1 - eps) / (den * den) * dbdk;
    if (dw_dkappa) *dw_dkappa = dw;
    if (score) {
        nbs_vmf_stats s;
        int st = nbs_vmf_stats_eval(d, kappa, &s, err);
        if (st) return st;
        /* log g(w | kappa) = kappa w + ((d - 3)/2) log(1 - w^2) - log Z(kappa), with
         * d log Z / dkappa = A; log |dw/deps| = log(2b) - 2 log(den). Both differentiated
         * along w = w(eps, kappa). */
        const double a3 = 0.5 * (d - 3);
        const double omw2 = omw * (2 - omw);
        const double dlogg = (s.one_minus_a - omw) + (kappa - (a3 != 0 ? 2 * a3 * w / omw2 : 0)) * dw;
        const double dlogjac = dbdk * (1 / b - 2 * eps / den);
        *score = dlogg + dlogjac;
    }
    return NBS_OK;
}

int nbs_vmf_backward_rsvi(const nbs_sphere_draw *draw, const double *u, const double *v,
                          const double *dz, double f, double *du, double *dkappa, nbs_error *err) {
    double dldw, dw, score;
    call_work c;
    call_work_init(&c, draw->d);
    int st = place_backward(draw->d, u, draw->w, draw->one_minus_w, v, dz, du, &dldw, &c.w, err);
    if (!st) st = nbs_vmf_w_gradients(draw, &dw, &score, err);
    if (st) return st;
    *dkappa = dldw * dw + f * score;
    return NBS_OK;
}

/* Implicit reparameterisation (Figurnov et al. 2018): hold the CDF F(w | kappa) of the sample
 * fixed, so dw/dkappa = -(dF/dkappa) / p(w). With d log Z / dkappa = A,
 * dF/dkappa = integral over t < w of (t - A) p(t) = -(integral over t > w of the same), and in
 * s = 1 - t with the density ratio g(s) / g(s_w) = exp(l(s) - l(s_w)),
 * l(s) = -kappa s + a log(s (2 - s)), a = (d - 3)/2, the normaliser Z cancels. */
typedef struct {
    double kappa, a, oma, lw;
} vmf_integrand;

static double vmf_log_g(const vmf_integrand *P, double s) {
    return -P->kappa * s + (P->a != 0 ? P->a * log(s * (2 - s)) : 0);
}

static double vmf_fn(double s, void *vp) {
    const vmf_integrand *P = vp;
    if (s <= 0 || s >= 2) return 0;
    return (P->oma - s) * exp(vmf_log_g(P, s) - P->lw);
}

/* d = 2: the density of s has (s (2 - s))^{-1/2} at both ends, which adaptive rules resolve
 * badly on short intervals; in the angle theta (s = 1 - cos theta) it is smooth,
 * (s (2 - s))^{-1/2} ds = d theta. */
static double vmf_fn_angle(double theta, void *vp) {
    const vmf_integrand *P = vp;
    const double sh = sin(0.5 * theta), s = 2 * sh * sh;
    return (P->oma - s) * exp(-P->kappa * s - P->lw);
}

/* Adaptive quadrature of f over [lo, hi] with break points at the peak of the density (mode
 * m, width sd) so that a peak of any width is found; "what" names the caller in errors. */
static int tail_integral(gsl_function *F, double lo, double hi, double m, double sd, const char *what,
                         int d, double kappa, double *val, nbs_sphere_work *w, nbs_error *err) {
    double pts[6];
    size_t np = 0;
    pts[np++] = lo;
    const double cand[3] = {m - sd, m, m + 10 * sd};
    for (int i = 0; i < 3; i++)
        if (cand[i] > lo && cand[i] < hi && cand[i] > pts[np - 1]) pts[np++] = cand[i];
    pts[np++] = hi;
    if (!w->quad) return nbs_error_set(err, NBS_ERR_INTERNAL, "%s: no quadrature workspace", what);
    double abserr = 0;
    const int gs = gsl_integration_qagp(F, pts, np, 0, QUAD_RELTOL, QUAD_INTERVALS, w->quad, val, &abserr);
    if ((gs != GSL_SUCCESS && !(abserr <= 1e-6 * fabs(*val) + 1e-300)) || !isfinite(*val))
        return nbs_error_set(err, NBS_ERR_NUMERIC,
                             "%s: quadrature failed for d = %d, kappa = %g on [%g, %g] (%s, "
                             "estimate %g +- %g)",
                             what, d, kappa, lo, hi, gsl_strerror(gs), *val, abserr);
    return NBS_OK;
}

static int vmf_dw_implicit(const nbs_sphere_draw *draw, double *dw_dkappa, nbs_sphere_work *w, nbs_error *err) {
    const int d = draw->d;
    const double k = draw->kappa, sw = draw->one_minus_w;
    nbs_sphere_gsl_init();
    double oma;
    int rc = check_dk("vMF implicit gradient", d, k, err);
    if (!rc) rc = nbs_vmf_mean_ratio(d, k, NULL, &oma, err);
    if (rc) return rc;
    vmf_integrand P = {k, 0.5 * (d - 3), oma, 0};
    P.lw = vmf_log_g(&P, sw);
    double mode = 0, sd = 1 / k;
    if (P.a > 0) {
        mode = 2 * P.a / ((k + P.a) + hypot(k, P.a));
        sd = 1 / sqrt(P.a / (mode * mode) + P.a / ((2 - mode) * (2 - mode)));
    }
    if (sd > 1) sd = 1;
    /* the side of s_w with less mass, so no two large values cancel */
    const int upper = sw <= oma;
    double val;
    if (d == 2) {
        const double tw = 2 * asin(sqrt(0.5 * sw));
        gsl_function F = {vmf_fn_angle, &P};
        rc = tail_integral(&F, upper ? 0 : tw, upper ? tw : M_PI, 0, fmin(1, 1 / sqrt(k)),
                           "vMF implicit gradient", d, k, &val, w, err);
    } else {
        gsl_function F = {vmf_fn, &P};
        rc = tail_integral(&F, upper ? 0 : sw, upper ? sw : 2, mode, sd, "vMF implicit gradient", d,
                           k, &val, w, err);
    }
    if (rc) return rc;
    *dw_dkappa = upper ? val : -val;
    return NBS_OK;
}

/* ---------------------------------------------------------------- Power Spherical */

/* psi(a + b) - psi(a) and psi'(a) - psi'(a + b). For large a both are O(b / a) and
 * O(b / a^2) differences of O(log a) and O(1/a) values; there the asymptotic series of psi and
 * psi' are differenced term by term, the leading term exactly (log1p, and b / (a (a + b))). */
#define PSI_ASYMPTOTIC_MIN 100.0
static double psi_diff(double a, double b) {
    if (a < PSI_ASYMPTOTIC_MIN) return gsl_sf_psi(a + b) - gsl_sf_psi(a);
    const double c = a + b, a2 = 1 / (a * a), c2 = 1 / (c * c);
    return log1p(b / a) + 0.5 * b / (a * c) + (a2 - c2) / 12 - (a2 * a2 - c2 * c2) / 120 +
           (a2 * a2 * a2 - c2 * c2 * c2) / 252;
}
/* log Gamma(a + b) - log Gamma(a) for a > 0, b >= 0, with an error relative to the result
 * (GSL's lnpoch is off by ~1e-7 relative for b ~ 1e-3 and a ~ 15, which the small-kappa KL
 * cannot afford): shift a up to PSI_ASYMPTOTIC_MIN with Gamma's recurrence (each step a
 * log1p), then difference Stirling's series term by term. */
static double lnpoch(double a, double b) {
    double shift = 0;
    while (a < PSI_ASYMPTOTIC_MIN) {
        shift -= log1p(b / a);
        a += 1;
    }
    const double c = a + b, ia = 1 / a, ic = 1 / c;
    return shift + (a - 0.5) * log1p(b / a) + b * log(c) - b + (ic - ia) / 12 -
           (pow(ic, 3) - pow(ia, 3)) / 360 + (pow(ic, 5) - pow(ia, 5)) / 1260;
}
static double psi1_diff(double a, double b) {
    if (a < PSI_ASYMPTOTIC_MIN) return gsl_sf_psi_1(a) - gsl_sf_psi_1(a + b);
    const double c = a + b, ia = 1 / a, ic = 1 / c;
    return b / (a * c) + 0.5 * (ia * ia - ic * ic) + (pow(ia, 3) - pow(ic, 3)) / 6 -
           (pow(ia, 5) - pow(ic, 5)) / 30 + (pow(ia, 7) - pow(ic, 7)) / 42;
}

int nbs_ps_stats_eval(int d, double kappa, nbs_ps_stats *s, nbs_error *err) {
    nbs_sphere_gsl_init();
    int st = check_dk("Power Spherical KL", d, kappa, err);
    if (st) return st;
    const double beta = 0.5 * (d - 1), a0 = beta, alpha = a0 + kappa;
    s->mean_w = kappa / (d - 1 + kappa);
    s->dmean_dkappa = (d - 1) / ((d - 1 + kappa) * (d - 1 + kappa));
    s->dkl_dkappa = kappa * psi1_diff(alpha, beta);
    if (kappa < PS_KL_SERIES_MAX) {
        /* KL = F(a0) - F(a0 + beta), F(a) = kappa psi(a + kappa) - log Gamma(a + kappa)/Gamma(a)
         * = sum_{m>=1} psi^(m)(a) kappa^(m+1) m / (m+1)!; five terms leave < 1e-15 relative. */
        double kl = 0, kp = kappa, fact = 1;
        for (int m = 1; m <= 5; m++) {
            kp *= kappa;
            fact *= m + 1;
            kl += (gsl_sf_psi_n(m, a0) - gsl_sf_psi_n(m, a0 + beta)) * kp * m / fact;
        }
        s->kl = kl;
    } else {
        /* -log N(kappa) + log N(0) + kappa E[log(1 + w)], log N the log normaliser:
         *   KL = lnpoch(a0 + beta, kappa) - lnpoch(a0, kappa) - kappa (psi(alpha + beta) - psi(alpha))
         *      = lnpoch(alpha, beta) - lnpoch(a0, beta) - kappa (psi(alpha + beta) - psi(alpha)).
         * The rounding error of each is that of its largest term, O(kappa log) in the first
         * and O(beta log) in the second, so the first serves kappa < beta, the second the rest. */
        const int first = kappa < beta;
        const double p1 = first ? lnpoch(a0 + beta, kappa) : lnpoch(alpha, beta);
        const double p2 = first ? lnpoch(a0, kappa) : lnpoch(a0, beta);
        s->kl = p1 - p2 - kappa * psi_diff(alpha, beta);
    }
    if (s->kl < 0) s->kl = 0;
    return NBS_OK;
}

int nbs_ps_sample_ws(int d, const double *u, double kappa, gsl_rng *rng, double *z, double *v,
                     nbs_sphere_draw *draw, nbs_sphere_work *w, nbs_error *err) {
    int st = check_dk("Power Spherical sampler", d, kappa, err);
    if (st) return st;
    const double beta = 0.5 * (d - 1), alpha = beta + kappa;
    /* 1 - eps ~ Beta(beta, alpha) is drawn directly, so 1 - w = 2 (1 - eps) keeps its digits
     * when eps is within 1e-12 of 1 (large kappa). */
    double r = gsl_ran_beta(rng, beta, alpha);
    if (!(r > 0)) r = 1e-300; /* a Gamma variate underflowed: the nearest representable point */
    draw->d = d;
    draw->kappa = kappa;
    draw->b = 0;
    draw->eps = r;
    draw->one_minus_w = 2 * r;
    draw->w = 1 - 2 * r;
    draw->proposals = 1;
    return place_draw(d, u, rng, z, v, draw, w, err);
}

/* (log(1 - q) - E[log(1 - q)]) times the Beta(beta, alpha) density at q divided by the
 * density at the sample r: the integrand of dI_r/dalpha / p(r), of order one near r. */
typedef struct {
    double alpha, beta, elog, logpr;
} ps_integrand;

/* d = 2: beta = 1/2 (and alpha < 1 for kappa < 1/2) make the density infinite at the ends; in
 * phi with q = sin^2 phi, q^{beta-1} (1-q)^{alpha-1} dq = 2 sin^{2beta-1} cos^{2alpha-1} d phi is
 * bounded. */
static double ps_fn_angle(double phi, void *vp) {
    const ps_integrand *P = vp;
    const double sn = sin(phi), cs = cos(phi);
    if (!(sn > 0) || !(cs > 0)) return 0;
    const double l1q = 2 * log(cs);
    const double lp = (2 * P->beta - 1) * log(sn) + (2 * P->alpha - 1) * log(cs) - P->logpr;
    return 2 * (l1q - P->elog) * exp(lp);
}

static double ps_fn(double q, void *vp) {
    const ps_integrand *P = vp;
    if (q <= 0 || q >= 1) return 0;
    const double l1q = log1p(-q);
    const double lp = (P->beta - 1) * log(q) + (P->alpha - 1) * l1q - P->logpr;
    return (l1q - P->elog) * exp(lp);
}

static int ps_dw(const nbs_sphere_draw *draw, double *dw_dkappa, nbs_sphere_work *w, nbs_error *err) {
    nbs_sphere_gsl_init();
    const int d = draw->d;
    const double beta = 0.5 * (d - 1), alpha = beta + draw->kappa, r = draw->eps;
    ps_integrand P = {alpha, beta, -psi_diff(alpha, beta), 0};
    P.logpr = (beta - 1) * log(r) + (alpha - 1) * log1p(-r);
    /* The CDF of q = 1 - eps ~ Beta(beta, alpha) is I_q(beta, alpha); its alpha-derivative is
     * the integral of (log(1 - q) - E log(1 - q)) p(q) up to r, or minus the same beyond r
     * (the full integral is zero). The side with less mass is integrated, so no two large
     * values cancel; break points at the mode's scale let the adaptive rule find the peak
     * however concentrated it is. The Beta function's normaliser cancels in the ratio. */
    const double mean = beta / (alpha + beta);
    const double sd = sqrt(alpha * beta / ((alpha + beta) * (alpha + beta) * (alpha + beta + 1)));
    const int lower = r <= mean;
    double val;
    int rc;
    if (d == 2) {
        const double pr = asin(sqrt(r)), pm = asin(sqrt(mean));
        const double psd = fmin(0.5, sd / (2 * sqrt(mean * (1 - mean))));
        gsl_function F = {ps_fn_angle, &P};
        rc = tail_integral(&F, lower ? 0 : pr, lower ? pr : 0.5 * M_PI, pm, psd,
                           "Power Spherical gradient", d, draw->kappa, &val, w, err);
    } else {
        gsl_function F = {ps_fn, &P};
        rc = tail_integral(&F, lower ? 0 : r, lower ? r : 1, mean, sd, "Power Spherical gradient", d,
                           draw->kappa, &val, w, err);
    }
    if (rc) return rc;
    /* dI/dalpha / p(r) = -dr/dalpha; w = 1 - 2r and dalpha/dkappa = 1. */
    const double dIdalpha_over_p = lower ? val : -val;
    *dw_dkappa = 2 * dIdalpha_over_p;
    return NBS_OK;
}

/* ---------------------------------------------------------------- backward of either sampler */

/* dw/dkappa of one sample, held at its CDF value (vmf_dw_implicit, ps_dw). */
typedef int dw_fn(const nbs_sphere_draw *draw, double *dw_dkappa, nbs_sphere_work *w, nbs_error *err);

static int backward_with(dw_fn *dw_dkappa, const nbs_sphere_draw *draw, const double *u, const double *v,
                         const double *dz, double *du, double *dkappa, nbs_sphere_work *w, nbs_error *err) {
    double dldw, dw;
    int st = place_backward(draw->d, u, draw->w, draw->one_minus_w, v, dz, du, &dldw, w, err);
    if (!st) st = dw_dkappa(draw, &dw, w, err);
    if (st) return st;
    *dkappa = dldw * dw;
    return NBS_OK;
}

/* ---------------------------------------------------------------- the functions without _ws */

/* Each makes a workspace of its own for the one call. */
typedef int sample_fn(int d, const double *u, double kappa, gsl_rng *rng, double *z, double *v,
                      nbs_sphere_draw *draw, nbs_sphere_work *w, nbs_error *err);

static int sample_own_work(sample_fn *sample, int d, const double *u, double kappa, gsl_rng *rng, double *z,
                           double *v, nbs_sphere_draw *draw, nbs_error *err) {
    call_work c;
    call_work_init(&c, d);
    return sample(d, u, kappa, rng, z, v, draw, &c.w, err);
}

int nbs_vmf_sample(int d, const double *u, double kappa, gsl_rng *rng, double *z, double *v,
                   nbs_sphere_draw *draw, nbs_error *err) {
    return sample_own_work(nbs_vmf_sample_ws, d, u, kappa, rng, z, v, draw, err);
}

int nbs_ps_sample(int d, const double *u, double kappa, gsl_rng *rng, double *z, double *v,
                  nbs_sphere_draw *draw, nbs_error *err) {
    return sample_own_work(nbs_ps_sample_ws, d, u, kappa, rng, z, v, draw, err);
}

static int dw_own_work(dw_fn *dw_dkappa, const nbs_sphere_draw *draw, double *dw, nbs_error *err) {
    call_work c;
    call_work_init(&c, draw->d);
    int st = call_work_quad(&c, err);
    if (!st) st = dw_dkappa(draw, dw, &c.w, err);
    call_work_free(&c);
    return st;
}

static int backward_own_work(dw_fn *dw_dkappa, const nbs_sphere_draw *draw, const double *u, const double *v,
                             const double *dz, double *du, double *dkappa, nbs_error *err) {
    call_work c;
    call_work_init(&c, draw->d);
    int st = call_work_quad(&c, err);
    if (!st) st = backward_with(dw_dkappa, draw, u, v, dz, du, dkappa, &c.w, err);
    call_work_free(&c);
    return st;
}

int nbs_vmf_dw_dkappa_implicit(const nbs_sphere_draw *draw, double *dw_dkappa, nbs_error *err) {
    return dw_own_work(vmf_dw_implicit, draw, dw_dkappa, err);
}

int nbs_ps_dw_dkappa(const nbs_sphere_draw *draw, double *dw_dkappa, nbs_error *err) {
    return dw_own_work(ps_dw, draw, dw_dkappa, err);
}

int nbs_vmf_backward(const nbs_sphere_draw *draw, const double *u, const double *v, const double *dz,
                     double *du, double *dkappa, nbs_error *err) {
    return backward_own_work(vmf_dw_implicit, draw, u, v, dz, du, dkappa, err);
}

int nbs_ps_backward(const nbs_sphere_draw *draw, const double *u, const double *v, const double *dz,
                    double *du, double *dkappa, nbs_error *err) {
    return backward_own_work(ps_dw, draw, u, v, dz, du, dkappa, err);
}

int nbs_vmf_backward_ws(const nbs_sphere_draw *draw, const double *u, const double *v, const double *dz,
                        double *du, double *dkappa, nbs_sphere_work *w, nbs_error *err) {
    return backward_with(vmf_dw_implicit, draw, u, v, dz, du, dkappa, w, err);
}

int nbs_ps_backward_ws(const nbs_sphere_draw *draw, const double *u, const double *v, const double *dz,
                       double *du, double *dkappa, nbs_sphere_work *w, nbs_error *err) {
    return backward_with(ps_dw, draw, u, v, dz, du, dkappa, w, err);
}
