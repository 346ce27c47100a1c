/* The hyperspherical latent space: log Bessel I and the ratio A_d against GSL and closed forms,
 * the vMF and Power Spherical KLs and moments against GSL quadrature of the marginal density
 * of w = mu^T z, their kappa-derivatives against finite differences, the limits, a grid with no
 * NaN/Inf, and the samplers: unit vectors, moments and gradient estimators unbiased within a
 * stated number of standard errors (the reparameterised vMF part shown biased without the
 * rejection correction; the implicit gradient unbiased and far less noisy than the corrected
 * one once the loss has an offset), and every backward against finite differences. */
#include "testutil.h"

#include <gsl/gsl_cdf.h>
#include <gsl/gsl_errno.h>
#include <gsl/gsl_integration.h>
#include <gsl/gsl_rng.h>
#include <gsl/gsl_sf_bessel.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/sphere.h"

static const int GRID_D[] = {3, 4, 5, 10, 32, 64, 128, 256};
#define N_GRID_D ((int)(sizeof GRID_D / sizeof GRID_D[0]))

static void near(double got, double want, double rtol, double atol, const char *what, int d,
                 double kappa) {
    if (!(fabs(got - want) <= rtol * fabs(want) + atol))
        fail_msg("%s (d = %d, kappa = %g): got %.17g, expected %.17g (rel diff %.3g)", what, d, kappa,
                 got, want, fabs(got - want) / fabs(want));
}

static double log_bessel(double nu, double x) {
    double v = NAN;
    nbs_error err = {0};
    assert_int_equal(nbs_bessel_log_i(nu, x, &v, &err), 0);
    return v;
}

static nbs_vmf_stats vmf(int d, double kappa) {
    nbs_vmf_stats s;
    nbs_error err = {0};
    if (nbs_vmf_stats_eval(d, kappa, &s, &err)) fail_msg("%s", err.msg);
    return s;
}

static nbs_ps_stats ps(int d, double kappa) {
    nbs_ps_stats s;
    nbs_error err = {0};
    if (nbs_ps_stats_eval(d, kappa, &s, &err)) fail_msg("%s", err.msg);
    return s;
}

/* ------------------------------------------------------------ special functions */

/* Wherever GSL's scaled I_nu is a normal double, ours agrees with it; this covers all three of
 * our branches (series, Debye, GSL itself). */
static void test_log_bessel_matches_gsl(void **state) {
    (void)state;
    gsl_set_error_handler_off();
    int compared = 0;
    for (int i = 0; i < N_GRID_D; i++)
        for (double x = 1e-6; x <= 1.01e6; x *= 3.1) {
            const double nu = 0.5 * GRID_D[i] - 1;
            gsl_sf_result r;
            if (gsl_sf_bessel_Inu_scaled_e(nu, x, &r) || !(r.val > 1e-300)) continue;
            double ours;
            nbs_error err = {0};
            assert_int_equal(nbs_bessel_log_i_scaled(nu, x, &ours, &err), 0);
            near(ours, log(r.val), 1e-9, 1e-11, "log I scaled vs GSL", GRID_D[i], x);
            compared++;
        }
    assert_true(compared > 150);
}

/* log I and the KL are continuous across the switches between evaluation methods: the series
 * bound kappa^2 = 10 (nu + 1), Hankel's kappa = 100 (nu + 1)^2 (nu < 25), and in the order at
 * the Debye bound nu = 25, where GSL is the reference on both sides. */
static void test_branches_meet(void **state) {
    (void)state;
    gsl_set_error_handler_off();
    for (int d = 2; d <= 256; d++) {
        const double nu = 0.5 * d - 1;
        double xs[2] = {sqrt(10 * (nu + 1)), 100 * (nu + 1) * (nu + 1)};
        for (int b = 0; b < (nu < 25 ? 2 : 1); b++) {
            const double lo = xs[b] * (1 - 1e-12), hi = xs[b] * (1 + 1e-12);
            /* GSL (one side of most switches) is good to about 1e-10 */
            near(log_bessel(nu, lo), log_bessel(nu, hi), 1e-9, 1e-12, "log I across a switch", d, xs[b]);
            near(vmf(d, lo).kl, vmf(d, hi).kl, 1e-9, 1e-15, "KL across a switch", d, xs[b]);
        }
    }
    const double nus[] = {24, 24.5, 25, 25.5, 26};
    for (int i = 0; i < 5; i++)
        for (double x = 0.5; x < 1e4; x *= 1.9) {
            gsl_sf_result r;
            if (gsl_sf_bessel_Inu_scaled_e(nus[i], x, &r) || !(r.val > 1e-300)) continue;
            near(log_bessel(nus[i], x) - x, log(r.val), 1e-9, 1e-11, "log I near the Debye bound", (int)(2 * nus[i] + 2), x);
        }
}

/* I_{1/2}(x) = sinh(x) sqrt(2 / (pi x)), over the whole range, including where I overflows. */
static void test_log_bessel_half_order_closed_form(void **state) {
    (void)state;
    for (double x = 1e-6; x <= 1.01e6; x *= 1.7) {
        const double want = x + log(-expm1(-2 * x) / 2) + 0.5 * log(2 / (M_PI * x));
        near(log_bessel(0.5, x), want, 1e-12, 1e-12, "log I_1/2", 3, x);
    }
    /* I_127(1e-6) ~ 1e-1000 and I_0(1e6) ~ 1e434000: finite logs, leading terms right. */
    near(log_bessel(127, 1e-6), 127 * log(0.5e-6) - lgamma(128), 1e-12, 0, "tiny x", 256, 1e-6);
    near(log_bessel(0, 1e6), 1e6 - 0.5 * log(2 * M_PI * 1e6), 1e-12, 0, "huge x", 2, 1e6);
}

static void test_ratio_matches_gsl_and_closed_form(void **state) {
    (void)state;
    gsl_set_error_handler_off();
    nbs_error err = {0};
    for (int i = 0; i < N_GRID_D; i++)
        for (double x = 1e-3; x <= 1.01e5; x *= 3.7) {
            const int d = GRID_D[i];
            gsl_sf_result r1, r0;
            if (gsl_sf_bessel_Inu_scaled_e(0.5 * d, x, &r1) ||
                gsl_sf_bessel_Inu_scaled_e(0.5 * d - 1, x, &r0) || !(r1.val > 1e-300))
                continue;
            double a, oma;
            assert_int_equal(nbs_vmf_mean_ratio(d, x, &a, &oma, &err), 0);
            near(a, r1.val / r0.val, 1e-9, 0, "A_d vs GSL", d, x);
            near(a + oma, 1, 1e-15, 0, "A + (1 - A)", d, x);
        }
    /* d = 3: A = coth k - 1/k, 1 - A = 1/k - 2/expm1(2k) (no cancellation for k >= 1); at
     * k = 1e6, 1 - A = 1e-6 exactly to double precision, which exp(log I - log I) cannot give. */
    for (double x = 1; x <= 1.01e6; x *= 2.3) {
        double a, oma;
        assert_int_equal(nbs_vmf_mean_ratio(3, x, &a, &oma, &err), 0);
        const double oma_want = 1 / x - 2 / expm1(2 * x);
        near(oma, oma_want, 1e-13, 0, "1 - A_3", 3, x);
        near(a, 1 - oma_want, 1e-14, 0, "A_3", 3, x);
    }
    for (double x = 1e-6; x < 0.05; x *= 4) { /* series of coth k - 1/k */
        double a;
        assert_int_equal(nbs_vmf_mean_ratio(3, x, &a, NULL, &err), 0);
        near(a, x / 3 - x * x * x / 45 + 2 * pow(x, 5) / 945 - pow(x, 7) / 4725, 1e-12, 0, "A_3 small", 3, x);
    }
}

/* ------------------------------------------------------------ quadrature of the marginal of w */

/* Integrates exp(l(s) - l(s*)) h(s) over s = 1 - w in [0, 2], with break points at the mode s*
 * and at multiples of the width sigma there, so the adaptive rule finds a peak of any width. */
typedef struct {
    int kind; /* 0: vMF, l = -kappa s + a log(s (2 - s)); 1: PS, l = (kappa + a) log(2 - s) + a log s */
    double kappa, a, smode, lmode;
    int moment; /* 0: 1, 1: s, 2: log(2 - s) */
} marg;

static double marg_log(const marg *m, double s) {
    const double t = m->a != 0 ? m->a * log(s * (2 - s)) : 0;
    if (m->kind == 0) return -m->kappa * s + t;
    return m->kappa * log(2 - s) + t;
}

static double marg_fn(double s, void *p) {
    const marg *m = p;
    if (s <= 0 || s >= 2) return 0;
    const double g = exp(marg_log(m, s) - m->lmode);
    return m->moment == 0 ? g : m->moment == 1 ? s * g : log(2 - s) * g;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double marg_integral(marg *m, int moment) {
    m->moment = moment;
    const double k = m->kappa, a = m->a;
    double sigma;
    if (m->kind == 0) {
        m->smode = a > 0 ? 2 * a / ((k + a) + hypot(k, a)) : 0;
        sigma = a > 0 ? 1 / sqrt(a / (m->smode * m->smode) + a / pow(2 - m->smode, 2)) : 1 / k;
    } else {
        m->smode = a > 0 ? 2 * a / (k + 2 * a) : 0;
        sigma = 1 / sqrt((k + a) / pow(2 - m->smode, 2) + (a > 0 ? a / (m->smode * m->smode) : 1 / 4.0));
    }
    if (sigma > 1) sigma = 1;
    m->lmode = a > 0 ? marg_log(m, m->smode) : marg_log(m, 0);
    double pts[12];
    size_t n = 0;
    const double cand[] = {0, m->smode, m->smode - 3 * sigma, m->smode + 3 * sigma,
                           m->smode + 15 * sigma, m->smode + 60 * sigma, 2};
    for (size_t i = 0; i < sizeof cand / sizeof cand[0]; i++)
        if (cand[i] >= 0 && cand[i] <= 2) pts[n++] = cand[i];
    qsort(pts, n, sizeof pts[0], cmp_double);
    size_t u = 1;
    for (size_t i = 1; i < n; i++)
        if (pts[i] > pts[u - 1]) pts[u++] = pts[i];
    gsl_integration_workspace *ws = gsl_integration_workspace_alloc(2000);
    gsl_function F = {marg_fn, m};
    double val, abserr;
    const int st = gsl_integration_qagp(&F, pts, u, 0, 1e-12, 2000, ws, &val, &abserr);
    gsl_integration_workspace_free(ws);
    if (st && abserr > 1e-9 * fabs(val))
        fail_msg("quadrature failed: kind %d kappa %g a %g (%s, %g +- %g)", m->kind, k, a,
                 gsl_strerror(st), val, abserr);
    return val;
}

/* E[w], E[1 - w] and the KL of vMF(mu, kappa) from the marginal of w,
 * p(w) = exp(kappa w) (1 - w^2)^a / Z with a = (d - 3)/2. The density on the sphere is
 * q(z) = C exp(kappa w) with C |S^{d-2}| Z = 1, so
 * KL = E[log q] + log|S^{d-1}| = -log Z + kappa E[w] + log|S^{d-1}| - log|S^{d-2}|; with
 * s = 1 - w and log Z = kappa + l(s*) + log Z' this is
 * KL = -l(s*) - log Z' - kappa E[s] + log|S^{d-1}| - log|S^{d-2}|. */
static void vmf_by_quadrature(int d, double kappa, double *ew, double *es, double *kl) {
    marg m = {0, kappa, 0.5 * (d - 3), 0, 0, 0};
    const double z = marg_integral(&m, 0), s1 = marg_integral(&m, 1);
    *es = s1 / z;
    *ew = 1 - *es;
    *kl = -m.lmode - log(z) - kappa * *es + nbs_sphere_log_area(d) - nbs_sphere_log_area(d - 1);
}

static void test_vmf_moments_and_kl_match_quadrature(void **state) {
    (void)state;
    gsl_set_error_handler_off();
    const double ks[] = {1e-3, 0.5, 5, 50, 500, 1e4, 1e6};
    for (int i = 0; i < N_GRID_D; i++)
        for (int j = 0; j < 7; j++) {
            const int d = GRID_D[i];
            const double k = ks[j];
            double ew, es, kl;
            vmf_by_quadrature(d, k, &ew, &es, &kl);
            const nbs_vmf_stats s = vmf(d, k);
            near(s.a, ew, 1e-6, 0, "A_d vs E[w] by quadrature", d, k);
            near(s.one_minus_a, es, 1e-6, 0, "1 - A_d vs E[1 - w] by quadrature", d, k);
            near(s.kl, kl, 1e-6, 1e-10, "vMF KL vs quadrature", d, k);
        }
}

static void test_vmf_kl_limits(void **state) {
    (void)state;
    for (int i = 0; i < N_GRID_D; i++) {
        const int d = GRID_D[i];
        /* small kappa: KL = kappa^2 / (2d) (1 + O(kappa^2 / d)), computed without cancellation */
        for (double k = 1e-6; k <= 1e-3; k *= 10)
            near(vmf(d, k).kl, k * k / (2 * d), 1e-5, 0, "KL -> kappa^2/(2d)", d, k);
        /* large kappa: the posterior is a Gaussian of covariance I/kappa in the d - 1 tangent
         * directions, so KL = -entropy + log|S^{d-1}|
         *   ~ ((d-1)/2) log(kappa / (2 pi)) - (d-1)/2 + log|S^{d-1}|, with an O(d^2/kappa) error. */
        double prev = 0;
        for (double k = 1e4; k <= 1.01e6; k *= 10) {
            const double asym = 0.5 * (d - 1) * (log(k / (2 * M_PI)) - 1) + nbs_sphere_log_area(d);
            const double diff = fabs(vmf(d, k).kl - asym);
            if (!(diff < (double)d * d / k)) fail_msg("d %d kappa %g: KL - asymptote = %g", d, k, diff);
            if (prev > 0 && !(diff < prev / 5 || diff < 1e-12 * asym)) /* d = 3: exact */ fail_msg("d %d kappa %g: the gap does not shrink like 1/kappa", d, k);
            prev = diff;
        }
    }
}

static void test_vmf_gradients_match_finite_differences(void **state) {
    (void)state;
    for (int i = 0; i < N_GRID_D; i++)
        for (double k = 1e-6; k <= 1.01e6; k *= 7.3) {
            const int d = GRID_D[i];
            const double h = 1e-4 * k;
            const nbs_vmf_stats s = vmf(d, k), p = vmf(d, k + h), m = vmf(d, k - h);
            const double fd_kl = (p.kl - m.kl) / (2 * h);
            /* differences of whichever of A and 1 - A is small keep their digits */
            const double fd_a = s.a < 0.5 ? (p.a - m.a) / (2 * h) : (m.one_minus_a - p.one_minus_a) / (2 * h);
            near(s.dkl_dkappa, fd_kl, 1e-6, 1e-12, "dKL/dkappa vs finite differences", d, k);
            near(s.da_dkappa, fd_a, 1e-6, 1e-14, "dA/dkappa vs finite differences", d, k);
            near(s.dkl_dkappa, k * s.one_minus_a * (1 + s.a) - (d - 1) * s.a, 1e-6, 1e-12,
                 "dKL/dkappa vs its definition", d, k);
        }
}

/* No 0, Inf or NaN anywhere on d in {3..256} x kappa in [1e-6, 1e6]; the KL rises with kappa. */
static void test_no_nan_on_grid(void **state) {
    (void)state;
    for (int i = 0; i < N_GRID_D; i++) {
        const int d = GRID_D[i];
        double prev_kl = -1;
        for (double k = 1e-6; k <= 1.0001e6; k *= pow(10, 0.2)) {
            const nbs_vmf_stats s = vmf(d, k);
            const double v[] = {s.a, s.one_minus_a, s.da_dkappa, s.kl, s.dkl_dkappa,
                                log_bessel(0.5 * d - 1, k)};
            for (int j = 0; j < 6; j++)
                if (!isfinite(v[j]) || (j < 5 && !(v[j] > 0)))
                    fail_msg("d %d kappa %g: value %d is %g", d, k, j, v[j]);
            assert_true(s.a < 1 && s.one_minus_a <= 1);
            assert_true(s.kl > prev_kl);
            prev_kl = s.kl;
            const nbs_ps_stats q = ps(d, k);
            assert_true(isfinite(q.kl) && q.kl > 0 && isfinite(q.dkl_dkappa) && q.dkl_dkappa > 0);
        }
    }
}

static void test_bad_arguments_rejected(void **state) {
    (void)state;
    nbs_error err = {0};
    nbs_vmf_stats s;
    double v;
    assert_int_equal(nbs_vmf_stats_eval(10, 0, &s, &err), NBS_ERR_NUMERIC);
    assert_non_null(strstr(err.msg, "kappa"));
    assert_int_equal(nbs_vmf_stats_eval(10, NAN, &s, &err), NBS_ERR_NUMERIC);
    assert_int_equal(nbs_vmf_stats_eval(1, 1, &s, &err), NBS_ERR_INTERNAL);
    assert_non_null(strstr(err.msg, "dimension 1"));
    assert_int_equal(nbs_bessel_log_i(-1, 1, &v, &err), NBS_ERR_NUMERIC);
    assert_int_equal(nbs_bessel_log_i(1, INFINITY, &v, &err), NBS_ERR_NUMERIC);
    double u[3] = {0, 0, 0}, z[3], vv[2];
    nbs_sphere_draw dr;
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    assert_int_equal(nbs_vmf_sample(3, u, 1, r, z, vv, &dr, &err), NBS_ERR_NUMERIC);
    assert_non_null(strstr(err.msg, "norm"));
    gsl_rng_free(r);
}

/* ------------------------------------------------------------ samplers */

static void random_direction(gsl_rng *r, int d, double *u) {
    for (int j = 0; j < d; j++) u[j] = gsl_rng_uniform(r) - 0.5;
}

typedef struct {
    double sum, sum2;
    long n;
} acc;
static void acc_add(acc *a, double x) {
    a->sum += x;
    a->sum2 += x * x;
    a->n++;
}
static double acc_mean(const acc *a) { return a->sum / a->n; }
static double acc_se(const acc *a) {
    const double m = acc_mean(a);
    return sqrt((a->sum2 / a->n - m * m) / (a->n - 1));
}

/* |mean - want| in standard errors. */
static double zscore(const acc *a, double want) { return fabs(acc_mean(a) - want) / acc_se(a); }

#define NSAMP 20000
#define ZMAX 5.0

/* Samples are unit vectors with mu^T z = w; the mean of w is A_d(kappa) and the mean of the
 * gradient estimator of w (pathwise + rejection correction) is dA_d/dkappa, within 5 standard
 * errors; the pathwise part alone misses dA/dkappa where rejections are frequent. */
static void test_vmf_sampler_unbiased(void **state) {
    (void)state;
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 7);
    const struct {
        int d;
        double kappa;
    } cases[] = {{3, 0.5}, {3, 5}, {5, 2}, {10, 20}, {64, 300}, {256, 1e4}};
    double u[256], z[256], v[256], du[256];
    int biased_seen = 0;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int d = cases[c].d;
        const double k = cases[c].kappa;
        const nbs_vmf_stats s = vmf(d, k);
        acc w = {0}, g = {0}, gb = {0}, rep = {0}, imp = {0}, g100 = {0};
        long proposals = 0;
        random_direction(r, d, u);
        for (int i = 0; i < NSAMP; i++) {
            nbs_sphere_draw dr;
            nbs_error err = {0};
            assert_int_equal(nbs_vmf_sample(d, u, k, r, z, v, &dr, &err), 0);
            proposals += dr.proposals;
            double n2 = 0, dot = 0;
            for (int j = 0; j < d; j++) {
                n2 += z[j] * z[j];
                dot += z[j] * u[j] / dr.norm;
            }
            if (fabs(n2 - 1) > 1e-12) fail_msg("d %d kappa %g: |z|^2 = %.17g", d, k, n2);
            if (fabs(dot - dr.w) > 1e-12) fail_msg("d %d kappa %g: mu.z %g != w %g", d, k, dot, dr.w);
            acc_add(&w, dr.w);
            /* L(z) = mu^T z through the per-cell API: dL/dz = mu, f = L (and, second, with the
             * baseline A subtracted, which must not change the mean). */
            double mu[256], dk, dkb;
            for (int j = 0; j < d; j++) mu[j] = u[j] / dr.norm;
            assert_int_equal(nbs_vmf_backward_rsvi(&dr, u, v, mu, dr.w, du, &dk, &err), 0);
            assert_int_equal(nbs_vmf_backward_rsvi(&dr, u, v, mu, s.one_minus_a - dr.one_minus_w, du, &dkb, &err), 0);
            double dw;
            assert_int_equal(nbs_vmf_w_gradients(&dr, &dw, NULL, &err), 0);
            acc_add(&g, dk);
            acc_add(&gb, dkb);
            acc_add(&rep, dw);
            double dki;
            assert_int_equal(nbs_vmf_backward(&dr, u, v, mu, du, &dki, &err), 0);
            acc_add(&imp, dki);
            assert_int_equal(nbs_vmf_backward_rsvi(&dr, u, v, mu, dr.w + 100, du, &dk, &err), 0);
            acc_add(&g100, dk);
        }
        const double rate = (double)NSAMP / proposals;
        print_message("vMF d=%d kappa=%g: acceptance %.3f, E[w] z=%.2f, grad z=%.2f (baseline %.2f), "
                      "pathwise only z=%.1f; implicit z=%.2f, its SE / corrected SE %.2f (baseline %.2f, offset 100: %.3f)\n",
                      d, k, rate, zscore(&w, s.a), zscore(&g, s.da_dkappa), zscore(&gb, s.da_dkappa),
                      zscore(&rep, s.da_dkappa), zscore(&imp, s.da_dkappa), acc_se(&imp) / acc_se(&g), acc_se(&imp) / acc_se(&gb), acc_se(&imp) / acc_se(&g100));
        if (zscore(&imp, s.da_dkappa) > ZMAX)
            fail_msg("d %d kappa %g: implicit gradient off by %.1f SE", d, k, zscore(&imp, s.da_dkappa));
        /* an offset in the loss leaves the corrected estimator unbiased but multiplies its
         * noise; the implicit one never sees the loss: this is why nbs_vmf_backward uses it */
        assert_true(zscore(&g100, s.da_dkappa) < ZMAX);
        assert_true(acc_se(&imp) < 0.05 * acc_se(&g100));
        assert_true(rate > 0.3 && rate <= 1);
        if (zscore(&w, s.a) > ZMAX) fail_msg("d %d kappa %g: mean of w off by %.1f SE", d, k, zscore(&w, s.a));
        if (zscore(&g, s.da_dkappa) > ZMAX || zscore(&gb, s.da_dkappa) > ZMAX)
            fail_msg("d %d kappa %g: corrected gradient off by %.1f / %.1f SE", d, k,
                     zscore(&g, s.da_dkappa), zscore(&gb, s.da_dkappa));
        if (zscore(&rep, s.da_dkappa) > 10) biased_seen++;
    }
    /* Without the correction the estimator is biased where rejection matters (low d, small
     * kappa): this is why the correction is in the backward. */
    assert_true(biased_seen >= 1);
    gsl_rng_free(r);
}

/* dL/du and the pathwise dL/dkappa of one sample against central differences of z with the
 * noise (eps, v) held fixed; L = c^T z for a random c. */
static void test_vmf_backward_matches_finite_differences(void **state) {
    (void)state;
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 11);
    const int ds[] = {3, 5, 16};
    const double ks[] = {0.3, 4, 200};
    double u[16], z[16], v[16], du[16], c[16], up[16], zp[16], zm[16];
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++) {
            const int d = ds[a];
            const double k = ks[b];
            nbs_error err = {0};
            nbs_sphere_draw dr;
            random_direction(r, d, u);
            for (int j = 0; j < d; j++) c[j] = gsl_rng_uniform(r) - 0.5;
            if (b == 0) u[0] = -fabs(u[0]); /* both signs of the reflection */
            assert_int_equal(nbs_vmf_sample(d, u, k, r, z, v, &dr, &err), 0);
            double dk;
            assert_int_equal(nbs_vmf_backward_rsvi(&dr, u, v, c, 0, du, &dk, &err), 0);
            double du_imp[16], dk_imp;
            assert_int_equal(nbs_vmf_backward(&dr, u, v, c, du_imp, &dk_imp, &err), 0);
            assert_memory_equal(du, du_imp, sizeof(double) * d); /* kappa's estimator only differs */
            const double h = 1e-6;
            for (int j = 0; j < d; j++) {
                memcpy(up, u, sizeof(double) * d);
                up[j] += h;
                assert_int_equal(nbs_sphere_place(d, up, dr.w, dr.one_minus_w, v, zp, &err), 0);
                up[j] -= 2 * h;
                assert_int_equal(nbs_sphere_place(d, up, dr.w, dr.one_minus_w, v, zm, &err), 0);
                double fd = 0;
                for (int i = 0; i < d; i++) fd += c[i] * (zp[i] - zm[i]) / (2 * h);
                near(du[j], fd, 1e-5, 1e-8, "dL/du vs finite differences", d, k);
            }
            /* w(eps, kappa) = 1 - 2 b eps / (1 - (1 - b) eps), b(kappa) from Wood */
            const double hk = 1e-5 * k;
            double L[2];
            for (int sgn = 0; sgn < 2; sgn++) {
                const double kk = k + (sgn ? -hk : hk);
                const double bb = (d - 1) / (2 * kk + sqrt(4 * kk * kk + (double)(d - 1) * (d - 1)));
                const double omw = 2 * bb * dr.eps / (1 - (1 - bb) * dr.eps);
                assert_int_equal(nbs_sphere_place(d, u, 1 - omw, omw, v, zp, &err), 0);
                L[sgn] = 0;
                for (int i = 0; i < d; i++) L[sgn] += c[i] * zp[i];
            }
            near(dk, (L[0] - L[1]) / (2 * hk), 1e-5, 1e-9, "pathwise dL/dkappa vs finite differences", d, k);
        }
    gsl_rng_free(r);
}

/* d = 3 has a closed-form CDF, F(w) = (e^{kappa w} - e^{-kappa}) / (e^{kappa} - e^{-kappa}), so the
 * implicit gradient of one sample is the kappa-derivative of F^{-1}(F(w)) at a fixed quantile. */
static void test_vmf_implicit_gradient_pointwise(void **state) {
    (void)state;
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 13);
    const double ks[] = {0.05, 1, 7, 60};
    for (int b = 0; b < 4; b++)
        for (int rep = 0; rep < 5; rep++) {
            const double k = ks[b];
            double u[3] = {0.3, -0.4, 0.5}, z[3], v[2], dw;
            nbs_sphere_draw dr;
            nbs_error err = {0};
            assert_int_equal(nbs_vmf_sample(3, u, k, r, z, v, &dr, &err), 0);
            assert_int_equal(nbs_vmf_dw_dkappa_implicit(&dr, &dw, &err), 0);
            /* with 1 + w = 2 - s: F = expm1(kappa (1 + w)) / expm1(2 kappa) */
            const double q = expm1(k * (2 - dr.one_minus_w)) / expm1(2 * k);
            const double h = 1e-5 * k;
            double wpm[2];
            for (int sgn = 0; sgn < 2; sgn++) {
                const double kk = k + (sgn ? -h : h);
                wpm[sgn] = -1 + log1p(q * expm1(2 * kk)) / kk;
            }
            near(dw, (wpm[0] - wpm[1]) / (2 * h), 1e-5, 1e-9, "vMF implicit dw/dkappa vs inverse CDF", 3, k);
        }
    gsl_rng_free(r);
}

/* Samples and every gradient stay finite at the ends of the kappa range, for every d. */
static void test_samplers_finite_at_extremes(void **state) {
    (void)state;
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 17);
    const double ks[] = {1e-6, 1e-3, 1, 1e3, 1e6};
    double u[256], z[256], v[256], du[256];
    for (int i = 0; i < N_GRID_D; i++)
        for (int j = 0; j < 5; j++)
            for (int rep = 0; rep < 10; rep++) {
                const int d = GRID_D[i];
                const double k = ks[j];
                random_direction(r, d, u);
                nbs_sphere_draw dr;
                nbs_error err = {0};
                double dk[3];
                if (nbs_vmf_sample(d, u, k, r, z, v, &dr, &err) ||
                    nbs_vmf_backward_rsvi(&dr, u, v, u, 1, du, &dk[0], &err) ||
                    nbs_vmf_backward(&dr, u, v, u, du, &dk[1], &err) ||
                    nbs_ps_sample(d, u, k, r, z, v, &dr, &err) ||
                    nbs_ps_backward(&dr, u, v, u, du, &dk[2], &err))
                    fail_msg("d %d kappa %g: %s", d, k, err.msg);
                for (int t = 0; t < 3; t++)
                    if (!isfinite(dk[t])) fail_msg("d %d kappa %g: gradient %d is %g", d, k, t, dk[t]);
                for (int t = 0; t < d; t++)
                    if (!isfinite(z[t]) || !isfinite(du[t])) fail_msg("d %d kappa %g: z or du not finite", d, k);
            }
    gsl_rng_free(r);
}

/* The circle, d = 2 (nu = 0): A_2 = I_1/I_0 and KL = -kappa (1 - A) - log(I_0 e^{-kappa}) against
 * GSL's integer-order Bessel functions, and both samplers' kappa gradients unbiased (their
 * quadratures run in the angle there, where the density of w is infinite at both ends). */
static void test_circle(void **state) {
    (void)state;
    for (double k = 1e-6; k <= 1.01e6; k *= 4.7) {
        const nbs_vmf_stats s = vmf(2, k);
        const double a = gsl_sf_bessel_I1_scaled(k) / gsl_sf_bessel_I0_scaled(k);
        near(s.a, a, 1e-12, 0, "A_2 vs GSL", 2, k);
        near(s.kl, -k * (1 - a) - log(gsl_sf_bessel_I0_scaled(k)), 1e-9, 1e-15, "vMF KL on the circle", 2, k);
    }
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 23);
    const double ks[] = {1e-3, 2, 1e4};
    for (int j = 0; j < 3; j++) {
        const double k = ks[j];
        double u[2] = {0.6, -0.8}, z[2], v[1], du[2], dk;
        acc gv = {0}, gp = {0};
        for (int i = 0; i < NSAMP / 2; i++) {
            nbs_sphere_draw dr;
            nbs_error err = {0};
            if (nbs_vmf_sample(2, u, k, r, z, v, &dr, &err) || nbs_vmf_backward(&dr, u, v, u, du, &dk, &err))
                fail_msg("%s", err.msg);
            acc_add(&gv, dk); /* |u| = 1, so dz = u = mu gives d(mu^T z) */
            if (nbs_ps_sample(2, u, k, r, z, v, &dr, &err) || nbs_ps_backward(&dr, u, v, u, du, &dk, &err))
                fail_msg("%s", err.msg);
            acc_add(&gp, dk);
        }
        if (zscore(&gv, vmf(2, k).da_dkappa) > ZMAX || zscore(&gp, ps(2, k).dmean_dkappa) > ZMAX)
            fail_msg("circle, kappa %g: gradient off by %.1f (vMF) / %.1f (PS) SE", k,
                     zscore(&gv, vmf(2, k).da_dkappa), zscore(&gp, ps(2, k).dmean_dkappa));
    }
    gsl_rng_free(r);
}

/* Power Spherical: closed forms against quadrature of p(w) prop. to (1 + w)^kappa (1 - w^2)^a,
 * a = (d - 3)/2. With N = |S^{d-2}| Z the normaliser on the sphere,
 * KL = kappa E[log(1 + w)] - log Z - log|S^{d-2}| + log|S^{d-1}|. */
static void test_ps_closed_forms_match_quadrature(void **state) {
    (void)state;
    gsl_set_error_handler_off();
    const int ds[] = {3, 4, 10, 64, 256};
    const double ks[] = {1e-4, 0.5, 5, 50, 500, 1e4, 1e6};
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 7; j++) {
            const int d = ds[i];
            const double k = ks[j];
            marg m = {1, k, 0.5 * (d - 3), 0, 0, 0};
            const double z = marg_integral(&m, 0), es = marg_integral(&m, 1) / z;
            const double elog = marg_integral(&m, 2) / z;
            const double kl = k * elog - (m.lmode + log(z)) - nbs_sphere_log_area(d - 1) +
                              nbs_sphere_log_area(d);
            const nbs_ps_stats s = ps(d, k);
            near(1 - s.mean_w, es, 1e-6, 0, "PS 1 - E[w] vs quadrature", d, k);
            near(s.kl, kl, 1e-6, 1e-10, "PS KL vs quadrature", d, k);
            const double h = 1e-4 * k;
            const nbs_ps_stats p = ps(d, k + h), q = ps(d, k - h);
            near(s.dkl_dkappa, (p.kl - q.kl) / (2 * h), 1e-6, 1e-13, "PS dKL/dkappa vs FD", d, k);
            near(s.dmean_dkappa, (p.mean_w - q.mean_w) / (2 * h), 1e-6, 0, "PS dE[w]/dkappa vs FD", d, k);
        }
    /* the small-kappa series and the closed form meet at the switch: KL ~ kappa^2 there, so the
     * ratio across it is the squared ratio of kappas up to O(kappa) * 2e-6 */
    for (int i = 0; i < N_GRID_D; i++) {
        const double km = 0.999999e-3, kp = 1.000001e-3;
        near(ps(GRID_D[i], kp).kl / ps(GRID_D[i], km).kl, (kp / km) * (kp / km), 1e-8, 0,
             "PS KL across the series switch", GRID_D[i], 1e-3);
    }
}

/* dw/dkappa of one PS sample against differences of the inverse Beta CDF at the same quantile. */
static void test_ps_implicit_gradient_pointwise(void **state) {
    (void)state;
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 5);
    const int ds[] = {3, 10, 64};
    const double ks[] = {0.2, 3, 40};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            for (int rep = 0; rep < 4; rep++) {
                const int d = ds[a];
                const double k = ks[b], beta = 0.5 * (d - 1);
                double u[64], z[64], v[64];
                random_direction(r, d, u);
                nbs_sphere_draw dr;
                nbs_error err = {0};
                assert_int_equal(nbs_ps_sample(d, u, k, r, z, v, &dr, &err), 0);
                double dw;
                assert_int_equal(nbs_ps_dw_dkappa(&dr, &dw, &err), 0);
                /* 1 - eps = r ~ Beta(beta, alpha): hold its quantile fixed while alpha moves */
                const double p = gsl_cdf_beta_P(dr.eps, beta, beta + k), h = 1e-5 * (beta + k);
                const double rp = gsl_cdf_beta_Pinv(p, beta, beta + k + h);
                const double rm = gsl_cdf_beta_Pinv(p, beta, beta + k - h);
                near(dw, -2 * (rp - rm) / (2 * h), 1e-4, 1e-9, "PS dw/dkappa vs inverse CDF", d, k);
            }
    gsl_rng_free(r);
}

static void test_ps_sampler_unbiased(void **state) {
    (void)state;
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 3);
    const struct {
        int d;
        double kappa;
    } cases[] = {{3, 0.5}, {5, 4}, {32, 50}, {256, 1e4}};
    double u[256], z[256], v[256], du[256], mu[256];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int d = cases[c].d;
        const double k = cases[c].kappa;
        const nbs_ps_stats s = ps(d, k);
        acc w = {0}, g = {0};
        random_direction(r, d, u);
        for (int i = 0; i < NSAMP / 2; i++) {
            nbs_sphere_draw dr;
            nbs_error err = {0};
            assert_int_equal(nbs_ps_sample(d, u, k, r, z, v, &dr, &err), 0);
            double n2 = 0;
            for (int j = 0; j < d; j++) {
                n2 += z[j] * z[j];
                mu[j] = u[j] / dr.norm;
            }
            if (fabs(n2 - 1) > 1e-12) fail_msg("PS d %d kappa %g: |z|^2 = %.17g", d, k, n2);
            double dk;
            if (nbs_ps_backward(&dr, u, v, mu, du, &dk, &err)) fail_msg("%s", err.msg);
            acc_add(&w, dr.w);
            acc_add(&g, dk);
        }
        /* d E[w]/dkappa also by differences of the closed form, as an independent target */
        const double h = 1e-4 * k;
        const double fd = (ps(d, k + h).mean_w - ps(d, k - h).mean_w) / (2 * h);
        print_message("PS d=%d kappa=%g: E[w] z=%.2f, dw/dkappa z=%.2f\n", d, k, zscore(&w, s.mean_w),
                      zscore(&g, fd));
        if (zscore(&w, s.mean_w) > ZMAX) fail_msg("PS d %d kappa %g: mean of w off by %.1f SE", d, k, zscore(&w, s.mean_w));
        if (zscore(&g, fd) > ZMAX) fail_msg("PS d %d kappa %g: mean gradient off by %.1f SE", d, k, zscore(&g, fd));
    }
    gsl_rng_free(r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_log_bessel_matches_gsl),
        cmocka_unit_test(test_log_bessel_half_order_closed_form),
        cmocka_unit_test(test_branches_meet),
        cmocka_unit_test(test_ratio_matches_gsl_and_closed_form),
        cmocka_unit_test(test_vmf_moments_and_kl_match_quadrature),
        cmocka_unit_test(test_vmf_kl_limits),
        cmocka_unit_test(test_vmf_gradients_match_finite_differences),
        cmocka_unit_test(test_no_nan_on_grid),
        cmocka_unit_test(test_bad_arguments_rejected),
        cmocka_unit_test(test_vmf_sampler_unbiased),
        cmocka_unit_test(test_vmf_backward_matches_finite_differences),
        cmocka_unit_test(test_vmf_implicit_gradient_pointwise),
        cmocka_unit_test(test_samplers_finite_at_extremes),
        cmocka_unit_test(test_circle),
        cmocka_unit_test(test_ps_closed_forms_match_quadrature),
        cmocka_unit_test(test_ps_implicit_gradient_pointwise),
        cmocka_unit_test(test_ps_sampler_unbiased),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
