/* The modified Bessel function of the first kind in logs, and the ratio A_d = I_{d/2}/I_{d/2-1}.
 *
 * The vMF normaliser needs log I_nu(kappa) with nu = d/2 - 1 up to 127 and kappa from 1e-6 to
 * 1e6: I_127(1e-6) ~ 1e-1000 and I_0(1e6) ~ 1e434000 are far outside double, so every branch
 * works in logs. Three regions:
 *   - kappa^2 <= 10 (nu + 1): the power series, summed in logs (all terms positive, so no
 *     cancellation; the region bound keeps the number of terms small);
 *   - nu >= DEBYE_MIN_NU otherwise: the Debye uniform asymptotic expansion in 1/nu (uniform in
 *     kappa / nu, so it covers large kappa too);
 *   - kappa > 100 (nu + 1)^2 otherwise: Hankel's large-argument expansion (GSL's scaled I_nu
 *     returns NaN there for nu = 0, i.e. d = 2);
 *   - otherwise GSL's exponentially scaled I_nu, which is finite there.
 * The ratio comes from Perron's continued fraction (Gautschi & Slavik 1978), which converges for
 * every kappa > 0 and, rearranged, gives 1 - A without subtracting nearly equal numbers. */
#include <float.h>
#include <gsl/gsl_errno.h>
#include <gsl/gsl_sf_bessel.h>
#include <math.h>
#include <pthread.h>

#include "nbsphere/sphere.h"
#include "sphere_internal.h"

/* Debye with terms up to u_4/nu^4 has a relative error of order u_5 / nu^5 < 1e-9 from here. */
#define DEBYE_MIN_NU 25.0
#define SERIES_MAX_TERMS 2000
#define CF_MAX_TERMS 100000
#ifndef SMALL_X_DKL
#define SMALL_X_DKL 1.0
#endif

static pthread_once_t gsl_once = PTHREAD_ONCE_INIT;
/* Turning GSL's handler off is process-wide; it is done once, here, because a library must
 * not abort its caller on a domain or underflow error: each GSL call's status is checked. */
static void gsl_handler_off(void) { gsl_set_error_handler_off(); }
void nbs_sphere_gsl_init(void) { pthread_once(&gsl_once, gsl_handler_off); }

int nbs_bessel_use_series(double nu, double x) { return x * x <= 10.0 * (nu + 1.0); }

double nbs_bessel_series_tail(double nu, double x) {
    const double q = 0.25 * x * x;
    double term = 1, sum = 0;
    for (int k = 1; k <= SERIES_MAX_TERMS; k++) {
        term *= q / (k * (k + nu));
        sum += term;
        if (term <= sum * 1e-17) break;
    }
    return sum;
}

/* log I_nu(x) - x by the Debye expansion: with p = sqrt(nu^2 + x^2), t = nu / p,
 * I_nu(x) ~ exp(p + nu log(x / (nu + p))) / sqrt(2 pi p) * sum_k u_k(t) / nu^k. p - x is formed
 * as nu^2 / (p + x) so the scaled value keeps its digits at large x. */
static double debye_log_scaled(double nu, double x) {
    const double p = hypot(nu, x), t = nu / p, t2 = t * t;
    const double u1 = t * (3 - 5 * t2) / 24;
    const double u2 = t2 * (81 + t2 * (-462 + t2 * 385)) / 1152;
    const double u3 = t * t2 * (30375 + t2 * (-369603 + t2 * (765765 - t2 * 425425))) / 414720;
    const double u4 = t2 * t2 *
                      (4465125 + t2 * (-94121676 + t2 * (349922430 + t2 * (-446185740 +
                                                                            t2 * 185910725)))) /
                      39813120;
    const double in = 1 / nu;
    const double series = 1 + in * (u1 + in * (u2 + in * (u3 + in * u4)));
    return nu * nu / (p + x) + nu * log(x / (nu + p)) - 0.5 * log(2 * M_PI * p) + log(series);
}

/* log I_nu(x) - x for x > 100 (nu + 1)^2: I_nu(x) e^{-x} ~ (2 pi x)^{-1/2} sum_k c_k with
 * c_k = c_{k-1} (-(4 nu^2 - (2k - 1)^2)) / (8 k x); the terms shrink by at least 0.005 at first. */
static double hankel_log_scaled(double nu, double x) {
    const double mu = 4 * nu * nu;
    double term = 1, sum = 1;
    for (int k = 1; k < 40; k++) {
        const double odd = 2.0 * k - 1;
        term *= -(mu - odd * odd) / (8.0 * k * x);
        sum += term;
        if (fabs(term) < 1e-17 * fabs(sum)) break;
    }
    return log(sum) - 0.5 * log(2 * M_PI * x);
}

static int check_args(double nu, double x, nbs_error *err) {
    if (!(nu >= 0) || !isfinite(nu) || !(x > 0) || !isfinite(x))
        return nbs_error_set(err, NBS_ERR_NUMERIC,
                             "log Bessel I: order %g and argument %g out of the domain (expected a "
                             "finite order >= 0 and a finite argument > 0); a non-finite or zero "
                             "concentration usually means the encoder diverged: lower the learning rate",
                             nu, x);
    return NBS_OK;
}

int nbs_bessel_log_i_scaled(double nu, double x, double *out, nbs_error *err) {
    nbs_sphere_gsl_init();
    int st = check_args(nu, x, err);
    if (st) return st;
    if (nbs_bessel_use_series(nu, x)) {
        *out = nu * log(0.5 * x) - lgamma(nu + 1) + log1p(nbs_bessel_series_tail(nu, x)) - x;
        return NBS_OK;
    }
    if (nu >= DEBYE_MIN_NU) {
        *out = debye_log_scaled(nu, x);
        return NBS_OK;
    }
    if (x > 100 * (nu + 1) * (nu + 1)) {
        *out = hankel_log_scaled(nu, x);
        return NBS_OK;
    }
    gsl_sf_result r;
    const int gs = gsl_sf_bessel_Inu_scaled_e(nu, x, &r);
    if (gs != GSL_SUCCESS || !(r.val > 0) || !isfinite(r.val))
        return nbs_error_set(err, NBS_ERR_INTERNAL,
                             "log Bessel I: GSL's scaled I_%g(%g) failed (%s, value %g); this region "
                             "should be safe: please report it",
                             nu, x, gsl_strerror(gs), r.val);
    *out = log(r.val);
    return NBS_OK;
}

int nbs_bessel_log_i(double nu, double x, double *out, nbs_error *err) {
    int st = nbs_bessel_log_i_scaled(nu, x, out, err);
    if (!st) *out += x;
    return st;
}

/* Perron's continued fraction, with n = d/2 the order of the numerator:
 *   A = I_n / I_{n-1} = x / (b0 + a1 / (b1 + a2 / (b2 + ...))),
 *   b_0 = 2n + x,  b_k = 2n + 2x + k (k >= 1),  a_k = -(2n + 2k - 1) x.
 * Write T = a1 / (b1 + T2) for the tail and D = b0 + T = d + x + T, so A = x / D and
 * 1 - A = (d + T) / D. As x grows T -> -(d + 1) / 2, so d + T stays near (d - 1) / 2: no
 * cancellation. T2 is evaluated by the modified Lentz method. */
int nbs_vmf_ratio_parts(int d, double x, double *a, double *one_minus_a, double *dkl) {
    /* Lentz runs on b_2 + a_3 / (b_3 + ...), which starts from a nonzero b_2: starting from
     * an empty fraction (the usual "tiny" seed) would overflow a_3 / tiny at large x. */
    const double tiny = 1e-300;
    double f = d + 2 * x + 2, C = f, Dl = 0;
    int converged = 0;
    for (int k = 3; k < CF_MAX_TERMS; k++) {
        const double ak = -(d + 2.0 * k - 1) * x, bk = d + 2 * x + k;
        Dl = bk + ak * Dl;
        if (Dl == 0) Dl = tiny;
        C = bk + ak / C;
        if (C == 0) C = tiny;
        Dl = 1 / Dl;
        const double delta = C * Dl;
        f *= delta;
        if (fabs(delta - 1) < 2 * DBL_EPSILON) {
            converged = 1;
            break;
        }
    }
    f = -(d + 3.0) * x / f;
    const double T2 = f, b1 = d + 2 * x + 1;
    const double T = -(d + 1) * x / (b1 + T2);
    const double D = d + x + T;
    const double A = x / D, eps = (d + T) / D;
    if (a) *a = A;
    if (one_minus_a) *one_minus_a = eps;
    if (dkl) {
        /* dKL/dx = x (1 - A^2) - (d - 1) A. For small x, 1 - A^2 - (d - 1)/D
         * = (1 + x + T)/D - A^2 with x + T = x (2x + T2)/(b1 + T2): no term cancels. At large x
         * that bracket is O(1/x) from O(1) terms; there dKL/dx = [2 x eps - (d - 1)] - x eps^2
         * + (d - 1) eps, and with delta = T + (d + 1)/2 formed from T2 directly,
         * 2 x eps - (d - 1) = [2 x delta - (d - 1)(d + T)] / D loses only a factor of about d. */
        if (x < SMALL_X_DKL * d) {
            const double xT = x * (2 * x + T2) / (b1 + T2);
            *dkl = x * ((1 + xT) / D - A * A);
        } else {
            const double delta = 0.5 * (d + 1) * (d + 1 + T2) / (b1 + T2);
            const double lead = (2 * x * delta - (d - 1) * (d + T)) / D;
            *dkl = lead - x * eps * eps + (d - 1) * eps;
        }
    }
    return converged ? NBS_OK : NBS_ERR_NUMERIC;
}

int nbs_vmf_mean_ratio(int d, double kappa, double *a, double *one_minus_a, nbs_error *err) {
    if (d < 2 || d > NBS_SPHERE_MAX_DIM || !(kappa > 0) || !isfinite(kappa))
        return nbs_error_set(err, NBS_ERR_NUMERIC,
                             "vMF mean ratio: dimension %d and concentration %g out of the domain "
                             "(expected 2 <= d <= %d and a finite kappa > 0)",
                             d, kappa, NBS_SPHERE_MAX_DIM);
    if (nbs_vmf_ratio_parts(d, kappa, a, one_minus_a, NULL))
        return nbs_error_set(err, NBS_ERR_INTERNAL,
                             "vMF mean ratio: Perron's continued fraction did not converge in %d "
                             "terms for d = %d, kappa = %g; please report it",
                             CF_MAX_TERMS, d, kappa);
    return NBS_OK;
}
