/* Posterior-collapse diagnostics: estimators on posterior parameters. */
#include "nbsphere/diagnose.h"

#include <gsl/gsl_randist.h>
#include <math.h>
#include <stdlib.h>

/* One minibatch [b x d]: mean over its cells of log q(z_i|x_i) - log q(z_i). */
static double mi_batch(const float *mean, const float *var, int b, int d, const double *z) {
    double sum = 0;
    double *logd = malloc(sizeof(double) * (size_t)b);
    if (!logd) return NAN;
    for (int i = 0; i < b; i++) {
        double self = 0, mx = -INFINITY;
        for (int k = 0; k < b; k++) {
            double s = 0;
            for (int j = 0; j < d; j++) {
                double v = var[(size_t)k * d + j], dev = z[(size_t)i * d + j] - mean[(size_t)k * d + j];
                s += -0.5 * (dev * dev / v + log(2 * M_PI * v));
            }
            logd[k] = s;
            if (k == i) self = s;
            if (s > mx) mx = s;
        }
        double acc = 0;
        for (int k = 0; k < b; k++) acc += exp(logd[k] - mx);
        sum += self - (mx + log(acc) - log((double)b));
    }
    free(logd);
    return sum / b;
}

int nbs_diagnose_mi_gaussian(const float *mean, const float *var, int64_t n, int d, int batch,
                             gsl_rng *rng, double *mi, nbs_error *err) {
    if (n < 2 || d < 1 || batch < 2)
        return nbs_error_set(err, NBS_ERR_USAGE,
                             "mutual information: need >= 2 cells, >= 1 dimension and a batch "
                             "of >= 2 (got %lld cells, d = %d, batch %d)",
                             (long long)n, d, batch);
    double *z = malloc(sizeof(double) * (size_t)batch * (size_t)d);
    if (!z) return nbs_error_set(err, NBS_ERR_NOMEM, "mutual information: out of memory");
    double total = 0;
    int used = 0;
    for (int64_t start = 0; start + 2 <= n; start += batch) {
        int b = (int)(n - start < batch ? n - start : batch);
        const float *m = mean + start * d, *v = var + start * d;
        for (int i = 0; i < b * d; i++) {
            if (!(v[i] > 0)) {
                free(z);
                return nbs_error_set(err, NBS_ERR_NUMERIC,
                                     "mutual information: cell %lld, dimension %d has "
                                     "posterior variance %g (must be > 0)",
                                     (long long)(start + i / d + 1), i % d + 1, (double)v[i]);
            }
            z[i] = m[i] + gsl_ran_gaussian(rng, sqrt(v[i]));
        }
        double r = mi_batch(m, v, b, d, z);
        if (isnan(r)) {
            free(z);
            return nbs_error_set(err, NBS_ERR_NOMEM, "mutual information: out of memory");
        }
        total += r;
        used++;
    }
    free(z);
    *mi = fmax(0.0, total / used);
    return NBS_OK;
}
