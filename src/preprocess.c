#include "nbsphere/preprocess.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gsl/gsl_linalg.h>
#include <gsl/gsl_sort.h>

/* ---- loess ---- */

/* Weighted least squares of y on (1, t, t^2) from the moment sums, t the distance scaled by the
 * neighbourhood radius. Near-singular directions (a neighbourhood with fewer than three distinct
 * x) are dropped through the pseudoinverse, as netlib loess does, so a flat or linear local fit
 * results instead of a blow-up. Returns the intercept, i.e. the fit at the centre. */
static double local_quadratic(const double s[5], const double ty[3]) {
    double a[9] = {s[0], s[1], s[2], s[1], s[2], s[3], s[2], s[3], s[4]};
    double v[9], sv[3], work[3], coef[3] = {0, 0, 0};
    gsl_matrix_view A = gsl_matrix_view_array(a, 3, 3);
    gsl_matrix_view V = gsl_matrix_view_array(v, 3, 3);
    gsl_vector_view S = gsl_vector_view_array(sv, 3);
    gsl_vector_view W = gsl_vector_view_array(work, 3);
    if (gsl_linalg_SV_decomp(&A.matrix, &V.matrix, &S.vector, &W.vector) != 0) return NAN;
    /* the normal matrix squares the design's condition number, hence the squared tolerance */
    double tol = sv[0] * 1e-13;
    for (int j = 0; j < 3; j++) {
        if (!(sv[j] > tol)) continue;
        double uy = 0;
        for (int i = 0; i < 3; i++) uy += a[i * 3 + j] * ty[i];
        for (int i = 0; i < 3; i++) coef[i] += v[i * 3 + j] * uy / sv[j];
    }
    return coef[0];
}

int nbs_preprocess_loess(const double *x, const double *y, int64_t n, double span,
                         double *fitted, nbs_error *err) {
    if (n < 1)
        return nbs_error_set(err, NBS_ERR_INPUT, "loess: no points to fit");
    if (!(span > 0 && span <= 1))
        return nbs_error_set(err, NBS_ERR_USAGE,
                             "loess: span %g is outside (0, 1]; set preprocess.hvg_span to a "
                             "fraction such as 0.3",
                             span);
    /* netlib loess: q = floor(n * span) neighbours; a quadratic needs three of them with
     * positive weight, so tiny inputs get the smallest usable neighbourhood */
    int64_t q = (int64_t)floor((double)n * span);
    if (q < 4) q = 4;
    if (q > n) q = n;
    size_t *order = nbs_malloc((size_t)n * sizeof *order, err);
    double *xs = nbs_malloc((size_t)n * sizeof *xs, err);
    if (!order || !xs) {
        free(order);
        free(xs);
        return NBS_ERR_NOMEM;
    }
    gsl_sort_index(order, x, 1, (size_t)n);
    for (int64_t i = 0; i < n; i++) xs[i] = x[order[i]];

#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < n; p++) {
        double x0 = xs[p];
        /* The q nearest neighbours of a point on a line are a run of q sorted points; its start
         * is the first lo at which moving right would not bring a nearer point in. */
        int64_t lo = p - q + 1 > 0 ? p - q + 1 : 0, hi = p < n - q ? p : n - q;
        while (lo < hi) {
            int64_t mid = lo + (hi - lo) / 2;
            if (xs[mid + q] - x0 < x0 - xs[mid]) lo = mid + 1;
            else hi = mid;
        }
        double rho = fmax(x0 - xs[lo], xs[lo + q - 1] - x0);
        double s[5] = {0, 0, 0, 0, 0}, ty[3] = {0, 0, 0}, f;
        if (rho > 0) {
            for (int64_t j = lo; j < lo + q; j++) {
                double t = (xs[j] - x0) / rho, u = fabs(t);
                if (u >= 1) continue;
                double c = 1 - u * u * u, w = c * c * c, yj = y[order[j]];
                s[0] += w;
                s[1] += w * t;
                s[2] += w * t * t;
                s[3] += w * t * t * t;
                s[4] += w * t * t * t * t;
                ty[0] += w * yj;
                ty[1] += w * t * yj;
                ty[2] += w * t * t * yj;
            }
            f = local_quadratic(s, ty);
        } else {
            /* q or more points share this x: the local fit is their mean */
            double sum = 0;
            for (int64_t j = lo; j < lo + q; j++) sum += y[order[j]];
            f = sum / (double)q;
        }
        fitted[order[p]] = f;
    }
    free(order);
    free(xs);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(fitted[i]))
            return nbs_error_set(err, NBS_ERR_NUMERIC,
                                 "loess: the local fit at point %lld (x = %g) is not finite",
                                 (long long)i + 1, x[i]);
    return NBS_OK;
}

/* ---- Seurat v3 highly variable genes ---- */

int nbs_preprocess_seurat_v3(const nbs_matrix *m, double span, double *mean_out, double *var_out,
                             double *fit_out, double *norm_var, nbs_error *err) {
    int64_t G = m->n_genes, N = m->n_cells;
    double *mean = nbs_calloc((size_t)G + 1, sizeof *mean, err);
    double *var = nbs_calloc((size_t)G + 1, sizeof *var, err);
    double *fit = nbs_calloc((size_t)G + 1, sizeof *fit, err);
    double *lx = nbs_malloc(((size_t)G + 1) * sizeof *lx, err);
    double *ly = nbs_malloc(((size_t)G + 1) * sizeof *ly, err);
    double *lf = nbs_malloc(((size_t)G + 1) * sizeof *lf, err);
    int64_t *idx = nbs_malloc(((size_t)G + 1) * sizeof *idx, err);
    int rc = NBS_OK;
    if (!mean || !var || !fit || !lx || !ly || !lf || !idx) {
        rc = NBS_ERR_NOMEM;
        goto done;
    }
    /* scanpy: float64 mean and mean of squares, variance with the n/(n-1) correction */
    for (int64_t k = 0; k < m->nnz; k++) {
        double v = m->data[k];
        mean[m->indices[k]] += v;
        var[m->indices[k]] += v * v;
    }
    for (int64_t g = 0; g < G; g++) {
        mean[g] /= (double)N;
        var[g] = N > 1 ? (var[g] / (double)N - mean[g] * mean[g]) * ((double)N / (double)(N - 1))
                       : 0.0;
    }
    /* the trend is fitted on non-constant genes only; constant ones keep fit 0 (sd 1) */
    int64_t nfit = 0;
    for (int64_t g = 0; g < G; g++)
        if (var[g] > 0) {
            lx[nfit] = log10(mean[g]);
            ly[nfit] = log10(var[g]);
            idx[nfit++] = g;
        }
    if (nfit > 0) {
        if ((rc = nbs_preprocess_loess(lx, ly, nfit, span, lf, err)) != NBS_OK) {
            nbs_error_prefix(err, "highly variable genes (Seurat v3 trend of %lld genes): ",
                             (long long)nfit);
            goto done;
        }
        for (int64_t i = 0; i < nfit; i++) fit[idx[i]] = lf[i];
    }
    /* Standardise each count by the fitted sd, clipping outliers at sqrt(N) sd above the mean
     * so that one huge count cannot make a gene "variable". Zeros are never clipped (the clip
     * value is at least the mean), so only stored entries are visited. */
    double *s1 = lx, *s2 = ly, vmax = sqrt((double)N);
    for (int64_t g = 0; g < G; g++) {
        s1[g] = 0;
        s2[g] = 0;
        lf[g] = sqrt(pow(10.0, fit[g])) * vmax + mean[g];
    }
    for (int64_t k = 0; k < m->nnz; k++) {
        int32_t g = m->indices[k];
        double v = fmin((double)m->data[k], lf[g]);
        s1[g] += v;
        s2[g] += v * v;
    }
    for (int64_t g = 0; g < G; g++) {
        double sd2 = pow(10.0, fit[g]);
        norm_var[g] = N > 1 ? ((double)N * mean[g] * mean[g] + s2[g] - 2 * s1[g] * mean[g]) /
                                  ((double)(N - 1) * sd2)
                            : 0.0;
    }
    if (mean_out) memcpy(mean_out, mean, (size_t)G * sizeof *mean);
    if (var_out) memcpy(var_out, var, (size_t)G * sizeof *var);
    if (fit_out) memcpy(fit_out, fit, (size_t)G * sizeof *fit);
done:
    free(mean);
    free(var);
    free(fit);
    free(lx);
    free(ly);
    free(lf);
    free(idx);
    return rc;
}

static int cmp_score_desc(const void *a, const void *b, void *ctx) {
    const double *s = ctx;
    int64_t i = *(const int64_t *)a, j = *(const int64_t *)b;
    double x = isnan(s[i]) ? -INFINITY : s[i], y = isnan(s[j]) ? -INFINITY : s[j];
    if (x != y) return x > y ? -1 : 1;
    return (i > j) - (i < j);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int64_t nbs_preprocess_top_k(const double *score, int64_t n, int64_t k, int64_t *out) {
    if (k > n) k = n;
    if (k <= 0) return 0;
    int64_t *all = malloc((size_t)n * sizeof *all);
    if (!all) return -1;
    for (int64_t i = 0; i < n; i++) all[i] = i;
    qsort_r(all, (size_t)n, sizeof *all, cmp_score_desc, (void *)score);
    memcpy(out, all, (size_t)k * sizeof *out);
    free(all);
    qsort(out, (size_t)k, sizeof *out, cmp_i64);
    return k;
}

/* ---- the whole step ---- */

void nbs_preprocess_result_free(nbs_preprocess_result *r) {
    if (!r) return;
    nbs_matrix_free(r->matrix);
    free(r->cells);
    free(r->genes);
    free(r->library_size);
    free(r->total_counts);
    free(r);
}

/* Cells: total count and detected genes over all genes; keeps those passing both filters. */
static int filter_cells(const nbs_matrix *m, const nbs_preprocess_config *cfg,
                        nbs_preprocess_result *r, double *totals, nbs_error *err) {
    double max_total = 0;
    int64_t max_detected = 0;
    for (int64_t c = 0; c < m->n_cells; c++) {
        double t = 0;
        int64_t detected = 0;
        for (int64_t k = m->indptr[c]; k < m->indptr[c + 1]; k++) {
            t += m->data[k];
            detected += m->data[k] > 0;
        }
        max_total = fmax(max_total, t);
        if (t < cfg->min_counts) {
            r->removed_cells_min_counts++;
            continue;
        }
        if (detected > max_detected) max_detected = detected;
        if (detected < cfg->min_genes) {
            r->removed_cells_min_genes++;
            continue;
        }
        totals[r->n_cells] = t;
        r->cells[r->n_cells++] = c;
    }
    if (r->n_cells > 0) return NBS_OK;
    if (r->removed_cells_min_counts == m->n_cells)
        return nbs_error_set(err, NBS_ERR_INPUT,
                             "preprocess: the cell filter preprocess.min_counts = %g removed all "
                             "%lld cells (the largest cell total is %g); lower min_counts",
                             cfg->min_counts, (long long)m->n_cells, max_total);
    return nbs_error_set(err, NBS_ERR_INPUT,
                         "preprocess: the cell filters removed all %lld cells (%lld below "
                         "min_counts = %g, %lld below min_genes = %lld; the most genes detected "
                         "in a remaining cell is %lld); lower preprocess.min_genes",
                         (long long)m->n_cells, (long long)r->removed_cells_min_counts,
                         cfg->min_counts, (long long)r->removed_cells_min_genes,
                         (long long)cfg->min_genes, (long long)max_detected);
}

/* Genes: number of kept cells expressing each gene. */
static int filter_genes(const nbs_matrix *m, const nbs_preprocess_config *cfg,
                        nbs_preprocess_result *r, nbs_error *err) {
    int64_t *expressing = nbs_calloc((size_t)m->n_genes + 1, sizeof *expressing, err);
    if (!expressing) return NBS_ERR_NOMEM;
    for (int64_t i = 0; i < r->n_cells; i++) {
        int64_t c = r->cells[i];
        for (int64_t k = m->indptr[c]; k < m->indptr[c + 1]; k++)
            expressing[m->indices[k]] += m->data[k] > 0;
    }
    int64_t most = 0;
    for (int64_t g = 0; g < m->n_genes; g++) {
        if (expressing[g] > most) most = expressing[g];
        if (expressing[g] >= cfg->min_cells) r->genes[r->n_genes++] = g;
        else r->removed_genes_min_cells++;
    }
    free(expressing);
    if (r->n_genes > 0) return NBS_OK;
    return nbs_error_set(err, NBS_ERR_INPUT,
                         "preprocess: the gene filter preprocess.min_cells = %lld removed all %lld "
                         "genes (the most cells expressing one gene, among the %lld kept cells, "
                         "is %lld); lower min_cells",
                         (long long)cfg->min_cells, (long long)m->n_genes, (long long)r->n_cells,
                         (long long)most);
}

/* Seurat v3 on the filtered cells and genes; narrows r->genes to the chosen ones. */
static int select_hvg(const nbs_matrix *m, const nbs_preprocess_config *cfg,
                      nbs_preprocess_result *r, nbs_error *err) {
    nbs_matrix *sub = nbs_matrix_subset(m, r->cells, r->n_cells, r->genes, r->n_genes, err);
    if (!sub) return err ? err->code : NBS_ERR_NOMEM;
    double *score = nbs_malloc((size_t)r->n_genes * sizeof *score, err);
    int64_t *top = nbs_malloc((size_t)cfg->n_top_genes * sizeof *top, err);
    int rc = NBS_OK;
    if (!score || !top) rc = NBS_ERR_NOMEM;
    else if ((rc = nbs_preprocess_seurat_v3(sub, cfg->hvg_span, NULL, NULL, NULL, score, err)))
        ;
    else {
        int64_t k = nbs_preprocess_top_k(score, r->n_genes, cfg->n_top_genes, top);
        if (k < 0) rc = nbs_error_set(err, NBS_ERR_NOMEM, "out of memory ranking genes");
        else {
            for (int64_t i = 0; i < k; i++) top[i] = r->genes[top[i]];
            memcpy(r->genes, top, (size_t)k * sizeof *top);
            r->removed_genes_hvg = r->n_genes - k;
            r->n_genes = k;
        }
    }
    free(score);
    free(top);
    nbs_matrix_free(sub);
    return rc;
}

int nbs_preprocess_run(const nbs_matrix *m, const nbs_preprocess_config *cfg,
                       nbs_preprocess_result **out, nbs_error *err) {
    *out = NULL;
    if (cfg->n_top_genes < 0)
        return nbs_error_set(err, NBS_ERR_USAGE,
                             "preprocess.n_top_genes = %lld; give a positive number of highly "
                             "variable genes, or 0 to keep all genes",
                             (long long)cfg->n_top_genes);
    if (cfg->n_top_genes > 0 && !(cfg->hvg_span > 0 && cfg->hvg_span <= 1))
        return nbs_error_set(err, NBS_ERR_USAGE,
                             "preprocess.hvg_span = %g; the loess span is a fraction of the genes "
                             "in (0, 1] (scanpy uses 0.3)",
                             cfg->hvg_span);
    if (m->n_cells == 0 || m->n_genes == 0)
        return nbs_error_set(err, NBS_ERR_INPUT, "preprocess: the matrix is empty (%lld x %lld)",
                             (long long)m->n_cells, (long long)m->n_genes);
    nbs_preprocess_result *r = nbs_calloc(1, sizeof *r, err);
    if (!r) return NBS_ERR_NOMEM;
    r->n_cells_in = m->n_cells;
    r->n_genes_in = m->n_genes;
    r->cells = nbs_malloc((size_t)m->n_cells * sizeof *r->cells, err);
    r->genes = nbs_malloc((size_t)m->n_genes * sizeof *r->genes, err);
    r->total_counts = nbs_malloc((size_t)m->n_cells * sizeof *r->total_counts, err);
    int rc = NBS_ERR_NOMEM;
    if (!r->cells || !r->genes || !r->total_counts) goto fail;
    if ((rc = filter_cells(m, cfg, r, r->total_counts, err))) goto fail;
    if ((rc = filter_genes(m, cfg, r, err))) goto fail;
    if (cfg->n_top_genes > 0 && cfg->n_top_genes < r->n_genes &&
        (rc = select_hvg(m, cfg, r, err)))
        goto fail;
    rc = NBS_ERR_NOMEM;
    if (!(r->matrix = nbs_matrix_subset(m, r->cells, r->n_cells, r->genes, r->n_genes, err)))
        goto fail;
    if (!(r->library_size = nbs_malloc((size_t)r->n_cells * sizeof *r->library_size, err)))
        goto fail;
    nbs_matrix_row_sums(r->matrix, r->library_size);
    for (int64_t i = 0; i < r->n_cells; i++) r->cells_zero_library += r->library_size[i] == 0;
    *out = r;
    return NBS_OK;
fail:
    nbs_preprocess_result_free(r);
    return rc;
}

void nbs_preprocess_summary(const nbs_preprocess_result *r, const nbs_preprocess_config *cfg,
                            char *buf, size_t size) {
    int n = snprintf(buf, size,
                     "kept %lld of %lld cells (%lld below min_counts=%g, %lld below "
                     "min_genes=%lld) and %lld of %lld genes (%lld below min_cells=%lld, %lld "
                     "not among the %lld most variable)",
                     (long long)r->n_cells, (long long)r->n_cells_in,
                     (long long)r->removed_cells_min_counts, cfg->min_counts,
                     (long long)r->removed_cells_min_genes, (long long)cfg->min_genes,
                     (long long)r->n_genes, (long long)r->n_genes_in,
                     (long long)r->removed_genes_min_cells, (long long)cfg->min_cells,
                     (long long)r->removed_genes_hvg, (long long)cfg->n_top_genes);
    if (r->cells_zero_library > 0 && n > 0 && (size_t)n < size)
        snprintf(buf + n, size - (size_t)n,
                 "; %lld kept cells have no count in the kept genes", (long long)r->cells_zero_library);
}
