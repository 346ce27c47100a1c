/* The 2-D map of the embedding in the HTML report. The 3-D sphere gets the Lambert azimuthal
 * equal-area projection centred on the mean direction, which keeps areas (so point density is
 * honest) and maps the whole sphere onto a disk of radius 2; everything else gets the first two
 * principal components. */
#include <gsl/gsl_eigen.h>
#include <gsl/gsl_matrix.h>
#include <gsl/gsl_vector.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "report_internal.h"

int nbs_report_project(const float *z, int64_t n, int d, int lambert, double *xy, char *xlab, char *ylab,
                       size_t lablen, nbs_error *err) {
    double *mean = nbs_calloc((size_t)d, sizeof(double), err);
    if (!mean) return err ? err->code : NBS_ERR_NOMEM;
    int64_t used = 0;
    for (int64_t i = 0; i < n; i++) {
        int ok = 1;
        for (int k = 0; k < d; k++) ok &= isfinite(z[i * d + k]);
        if (!ok) continue;
        for (int k = 0; k < d; k++) mean[k] += z[i * d + k];
        used++;
    }
    for (int k = 0; k < d; k++) mean[k] = used ? mean[k] / used : 0;
    for (int64_t i = 0; i < 2 * n; i++) xy[i] = NAN;
    if (lambert) {
        double c[3] = {mean[0], mean[1], mean[2]}, u[3], v[3];
        double nc = sqrt(c[0] * c[0] + c[1] * c[1] + c[2] * c[2]);
        if (nc < 1e-9) c[0] = 0, c[1] = 0, c[2] = 1, nc = 1; /* no mean direction: any centre */
        for (int k = 0; k < 3; k++) c[k] /= nc;
        /* tangent basis: the axis least aligned with the centre, made orthogonal to it */
        int ax = fabs(c[0]) <= fabs(c[1]) && fabs(c[0]) <= fabs(c[2]) ? 0 : fabs(c[1]) <= fabs(c[2]) ? 1 : 2;
        for (int k = 0; k < 3; k++) u[k] = (k == ax) - c[ax] * c[k];
        double nu = sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2]);
        for (int k = 0; k < 3; k++) u[k] /= nu;
        v[0] = c[1] * u[2] - c[2] * u[1], v[1] = c[2] * u[0] - c[0] * u[2], v[2] = c[0] * u[1] - c[1] * u[0];
        for (int64_t i = 0; i < n; i++) {
            const float *p = z + i * 3;
            double nz = sqrt((double)p[0] * p[0] + (double)p[1] * p[1] + (double)p[2] * p[2]);
            if (!(nz > 0) || !isfinite(nz)) continue;
            double w[3] = {p[0] / nz, p[1] / nz, p[2] / nz};
            double t = 1 + w[0] * c[0] + w[1] * c[1] + w[2] * c[2];
            double pu = w[0] * u[0] + w[1] * u[1] + w[2] * u[2], pv = w[0] * v[0] + w[1] * v[1] + w[2] * v[2];
            if (t < 1e-12) { /* the antipode itself: on the rim, direction arbitrary */
                xy[2 * i] = 2, xy[2 * i + 1] = 0;
                continue;
            }
            double s = sqrt(2 / t);
            xy[2 * i] = s * pu, xy[2 * i + 1] = s * pv;
        }
        snprintf(xlab, lablen, "equal-area x");
        snprintf(ylab, lablen, "equal-area y");
        free(mean);
        return NBS_OK;
    }
    /* PCA from the d x d covariance: d is small, so this is cheap for any number of cells. */
    gsl_matrix *cov = gsl_matrix_calloc((size_t)d, (size_t)d), *evec = gsl_matrix_alloc((size_t)d, (size_t)d);
    gsl_vector *eval = gsl_vector_alloc((size_t)d);
    gsl_eigen_symmv_workspace *ws = gsl_eigen_symmv_alloc((size_t)d);
    int st = NBS_OK;
    if (!cov || !evec || !eval || !ws) {
        st = nbs_error_set(err, NBS_ERR_NOMEM, "out of memory for the PCA of the embedding (d = %d)", d);
        goto done;
    }
    for (int64_t i = 0; i < n; i++) {
        int ok = 1;
        for (int k = 0; k < d; k++) ok &= isfinite(z[i * d + k]);
        if (!ok) continue;
        for (int a = 0; a < d; a++)
            for (int c = a; c < d; c++)
                *gsl_matrix_ptr(cov, a, c) += (z[i * d + a] - mean[a]) * (z[i * d + c] - mean[c]);
    }
    for (int a = 0; a < d; a++)
        for (int c = a; c < d; c++) {
            double v = gsl_matrix_get(cov, a, c) / (used > 1 ? used - 1 : 1);
            gsl_matrix_set(cov, a, c, v), gsl_matrix_set(cov, c, a, v);
        }
    double trace = 0;
    for (int a = 0; a < d; a++) trace += gsl_matrix_get(cov, a, a);
    gsl_eigen_symmv(cov, eval, evec, ws);
    gsl_eigen_symmv_sort(eval, evec, GSL_EIGEN_SORT_VAL_DESC);
    const int npc = d >= 2 ? 2 : 1;
    for (int64_t i = 0; i < n; i++) {
        int ok = 1;
        for (int k = 0; k < d; k++) ok &= isfinite(z[i * d + k]);
        if (!ok) continue;
        for (int p = 0; p < 2; p++) {
            double s = 0;
            if (p < npc)
                for (int k = 0; k < d; k++) s += (z[i * d + k] - mean[k]) * gsl_matrix_get(evec, k, p);
            xy[2 * i + p] = s;
        }
    }
    for (int p = 0; p < 2; p++) {
        char *lab = p ? ylab : xlab;
        if (p >= npc) snprintf(lab, lablen, "(one dimension only)");
        else if (trace > 0)
            snprintf(lab, lablen, "PC%d (%.0f %% of variance)", p + 1, 100 * gsl_vector_get(eval, p) / trace);
        else snprintf(lab, lablen, "PC%d", p + 1);
    }
done:
    if (ws) gsl_eigen_symmv_free(ws);
    if (eval) gsl_vector_free(eval);
    if (evec) gsl_matrix_free(evec);
    if (cov) gsl_matrix_free(cov);
    free(mean);
    return st;
}
