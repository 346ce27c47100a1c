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
 * results instead of a blow-up. Gives the intercept (the fit at the centre) and the linear
 * coefficient (the slope there, in units of t). */
static void local_quadratic(const double s[5], const double ty[3], double *value, double *slope) {
    double a[9] = {s[0], s[1], s[2], s[1], s[2], s[3], s[2], s[3], s[4]};
    double v[9], sv[3], work[3], coef[3] = {0, 0, 0};
    gsl_matrix_view A = gsl_matrix_view_array(a, 3, 3);
    gsl_matrix_view V = gsl_matrix_view_array(v, 3, 3);
    gsl_vector_view S = gsl_vector_view_array(sv, 3);
    gsl_vector_view W = gsl_vector_view_array(work, 3);
    if (gsl_linalg_SV_decomp(&A.matrix, &V.matrix, &S.vector, &W.vector) != 0) {
        *value = *slope = NAN;
        return;
    }
    /* the normal matrix squares the design's condition number, so the cut-off sits near the
     * square root of netlib's 100 * machine epsilon on the design itself */
    double tol = sv[0] * 1e-13;
    for (int j = 0; j < 3; j++) {
        if (!(sv[j] > tol)) continue;
        double uy = 0;
        for (int i = 0; i < 3; i++) uy += a[i * 3 + j] * ty[i];
        for (int i = 0; i < 3; i++) coef[i] += v[i * 3 + j] * uy / sv[j];
    }
    *value = coef[0];
    *slope = coef[1];
}

/* The local fit at x0 over the q nearest of the sorted xs (ys in the same order), with tricube
 * weights on the distance to the q-th nearest: value and slope at x0. */
static void local_fit(const double *xs, const double *ys, int64_t n, int64_t q, double x0,
                      double *value, double *slope) {
    /* The q nearest points on a line are a run of q sorted points; its start is the first lo at
     * which moving right would not bring a nearer point in. */
    int64_t lo = 0, hi = n - q;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (xs[mid + q] - x0 < x0 - xs[mid]) lo = mid + 1;
        else hi = mid;
    }
    double rho = fmax(fabs(x0 - xs[lo]), fabs(xs[lo + q - 1] - x0));
    double s[5] = {0, 0, 0, 0, 0}, ty[3] = {0, 0, 0};
    if (!(rho > 0)) {
        /* q or more points share this x: the local fit is their mean, flat */
        double sum = 0;
        for (int64_t j = lo; j < lo + q; j++) sum += ys[j];
        *value = sum / (double)q;
        *slope = 0;
        return;
    }
    for (int64_t j = lo; j < lo + q; j++) {
        double t = (xs[j] - x0) / rho, u = fabs(t);
        if (u >= 1) continue;
        double c = 1 - u * u * u, w = c * c * c;
        s[0] += w;
        s[1] += w * t;
        s[2] += w * t * t;
        s[3] += w * t * t * t;
        s[4] += w * t * t * t * t;
        ty[0] += w * ys[j];
        ty[1] += w * t * ys[j];
        ty[2] += w * t * t * ys[j];
    }
    local_quadratic(s, ty, value, slope);
    *slope /= rho;
}

/* Vertices of netlib loess's k-d tree in one dimension: the data range widened by 0.5 % on
 * each side, then cells split at their median point until a cell holds at most fc points.
 * Cells are visited breadth first, as netlib does, so its cell/vertex limits (n, at least 200)
 * cut the same tree. Ties at the median move the split to the nearest position, alternating
 * above and below, where neighbouring sorted values differ; a split that would fall on a cell
 * boundary makes the cell a leaf. Returns the number of vertices (unsorted) in v. */
static int64_t kd_vertices(const double *xs, int64_t n, int64_t fc, double *v, int64_t nvmax) {
    double alpha = xs[0], beta = xs[n - 1];
    double margin = 0.005 * fmax(beta - alpha, 1e-10 * fmax(fabs(alpha), fabs(beta)) + 1e-30);
    int64_t ncmax = nvmax, nv = 2, nc = 1;
    /* per cell: point range [l, u] (1-based, as in netlib) and its two vertex values */
    size_t cells = (size_t)ncmax + 1;
    int64_t *cl = malloc(cells * sizeof *cl), *cu = malloc(cells * sizeof *cu);
    double *c0 = malloc(cells * sizeof *c0), *c1 = malloc(cells * sizeof *c1);
    if (!cl || !cu || !c0 || !c1) {
        nv = -1;
        goto done;
    }
    v[0] = alpha - margin;
    v[1] = beta + margin;
    cl[1] = 1;
    cu[1] = n;
    c0[1] = v[0];
    c1[1] = v[1];
#define X1(i) xs[(i) - 1]
    for (int64_t p = 1; p <= nc; p++) {
        int64_t l = cl[p], u = cu[p];
        int leaf = (u - l) + 1 <= fc || !(c1[p] - c0[p] > 0) || ncmax < nc + 2 || nvmax < nv + 1;
        int64_t m = (l + u) / 2;
        if (!leaf) {
            for (int64_t off = 0; m + off < u && m + off >= l;) {
                if (X1(m + off) != X1(m + off + 1)) {
                    m += off;
                    break;
                }
                off = off > 0 ? -off : -off + 1;
            }
            leaf = c0[p] == X1(m) || c1[p] == X1(m);
        }
        if (leaf) continue;
        v[nv++] = X1(m);
        cl[nc + 1] = l;
        cu[nc + 1] = m;
        c0[nc + 1] = c0[p];
        c1[nc + 1] = X1(m);
        cl[nc + 2] = m + 1;
        cu[nc + 2] = u;
        c0[nc + 2] = X1(m);
        c1[nc + 2] = c1[p];
        nc += 2;
    }
#undef X1
done:
    free(cl);
    free(cu);
    free(c0);
    free(c1);
    return nv;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int nbs_preprocess_loess(const double *x, const double *y, int64_t n, double span,
                         nbs_loess_surface surface, double *fitted, nbs_error *err) {
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
    int64_t nvmax = n > 200 ? n : 200;
    size_t *order = nbs_malloc((size_t)n * sizeof *order, err);
    double *xs = nbs_malloc((size_t)n * sizeof *xs, err);
    double *ys = nbs_malloc((size_t)n * sizeof *ys, err);
    double *vx = nbs_malloc((size_t)(nvmax + 2) * sizeof *vx, err);
    double *vval = nbs_malloc((size_t)(nvmax + 2) * 2 * sizeof *vval, err);
    int rc = NBS_ERR_NOMEM;
    if (!order || !xs || !ys || !vx || !vval) goto done;
    gsl_sort_index(order, x, 1, (size_t)n);
    for (int64_t i = 0; i < n; i++) {
        xs[i] = x[order[i]];
        ys[i] = y[order[i]];
    }
    if (surface == NBS_LOESS_DIRECT) {
#pragma omp parallel for schedule(static)
        for (int64_t p = 0; p < n; p++) {
            double slope;
            local_fit(xs, ys, n, q, xs[p], &fitted[order[p]], &slope);
        }
    } else {
        /* scanpy (skmisc) and R fit exactly only at the k-d tree's vertices, then interpolate
         * each cell by the cubic Hermite polynomial through its two vertices' values and
         * slopes. Cells hold at most floor(n * span * cell) points, cell = 0.2 by default. */
        int64_t fc = (int64_t)floor((double)n * span * 0.2);
        int64_t nv = kd_vertices(xs, n, fc, vx, nvmax);
        if (nv < 0) {
            rc = nbs_error_set(err, NBS_ERR_NOMEM, "loess: out of memory for the k-d tree");
            goto done;
        }
        qsort(vx, (size_t)nv, sizeof *vx, cmp_double);
        for (int64_t j = 0; j < nv; j++) local_fit(xs, ys, n, q, vx[j], &vval[2 * j], &vval[2 * j + 1]);
        int64_t cell = 0;
        for (int64_t p = 0; p < n; p++) {
            while (cell < nv - 2 && xs[p] > vx[cell + 1]) cell++;
            double v0 = vx[cell], v1 = vx[cell + 1], w = v1 - v0, h = (xs[p] - v0) / w;
            double phi0 = (1 - h) * (1 - h) * (1 + 2 * h), phi1 = h * h * (3 - 2 * h);
            double psi0 = h * (1 - h) * (1 - h), psi1 = h * h * (h - 1);
            fitted[order[p]] = phi0 * vval[2 * cell] + phi1 * vval[2 * cell + 2] +
                               (psi0 * vval[2 * cell + 1] + psi1 * vval[2 * cell + 3]) * w;
        }
    }
    rc = NBS_OK;
    for (int64_t i = 0; i < n && rc == NBS_OK; i++)
        if (!isfinite(fitted[i]))
            rc = nbs_error_set(err, NBS_ERR_NUMERIC,
                               "loess: the local fit at point %lld (x = %g) is not finite",
                               (long long)i + 1, x[i]);
done:
    free(order);
    free(xs);
    free(ys);
    free(vx);
    free(vval);
    return rc;
}

/* ---- Seurat v3 highly variable genes ---- */

/* Seurat v3 in two steps around the data, so the in-memory and the streamed (nbs_preprocess_stream)
 * selections run the same arithmetic. Trend: mean and var hold each gene's sum and sum of squares
 * over the N cells and become the mean and the variance (scanpy: float64, n/(n-1)); fit gets the
 * loess of log10(var) on log10(mean) over the non-constant genes (0, sd 1, for constant ones) and
 * clip the value at which a count is clipped, mean + sqrt(N) fitted sd. (G) each. */
static int seurat_trend(int64_t G, int64_t N, double span, double *mean, double *var, double *fit, double *clip,
                        nbs_error *err) {
    double *lx = nbs_malloc(((size_t)G + 1) * sizeof *lx, err);
    double *ly = nbs_malloc(((size_t)G + 1) * sizeof *ly, err);
    double *lf = nbs_malloc(((size_t)G + 1) * sizeof *lf, err);
    int64_t *idx = nbs_malloc(((size_t)G + 1) * sizeof *idx, err);
    int rc = NBS_OK;
    if (!lx || !ly || !lf || !idx) {
        rc = NBS_ERR_NOMEM;
        goto done;
    }
    for (int64_t g = 0; g < G; g++) {
        mean[g] /= (double)N;
        var[g] = N > 1 ? (var[g] / (double)N - mean[g] * mean[g]) * ((double)N / (double)(N - 1))
                       : 0.0;
        fit[g] = 0;
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
        if ((rc = nbs_preprocess_loess(lx, ly, nfit, span, NBS_LOESS_INTERPOLATE, lf, err)) != NBS_OK) {
            nbs_error_prefix(err, "highly variable genes (Seurat v3 trend of %lld genes): ",
                             (long long)nfit);
            goto done;
        }
        for (int64_t i = 0; i < nfit; i++) fit[idx[i]] = lf[i];
    }
    /* Standardise each count by the fitted sd, clipping outliers at sqrt(N) sd above the mean
     * so that one huge count cannot make a gene "variable". Zeros are never clipped (the clip
     * value is at least the mean), so only stored entries are visited. */
    const double vmax = sqrt((double)N);
    for (int64_t g = 0; g < G; g++) clip[g] = sqrt(pow(10.0, fit[g])) * vmax + mean[g];
done:
    free(lx);
    free(ly);
    free(lf);
    free(idx);
    return rc;
}

/* Score: s1 and s2, the sums of the clipped counts and of their squares (G), give the variance of
 * the standardised counts. */
static void seurat_score(int64_t G, int64_t N, const double *mean, const double *fit, const double *s1,
                         const double *s2, double *norm_var) {
    for (int64_t g = 0; g < G; g++) {
        double sd2 = pow(10.0, fit[g]);
        norm_var[g] = N > 1 ? ((double)N * mean[g] * mean[g] + s2[g] - 2 * s1[g] * mean[g]) /
                                  ((double)(N - 1) * sd2)
                            : 0.0;
    }
}

int nbs_preprocess_seurat_v3(const nbs_matrix *m, double span, double *mean_out, double *var_out,
                             double *fit_out, double *norm_var, nbs_error *err) {
    int64_t G = m->n_genes, N = m->n_cells;
    double *mean = nbs_calloc((size_t)G + 1, sizeof *mean, err);
    double *var = nbs_calloc((size_t)G + 1, sizeof *var, err);
    double *fit = nbs_calloc((size_t)G + 1, sizeof *fit, err);
    double *clip = nbs_malloc(((size_t)G + 1) * sizeof *clip, err);
    double *s1 = nbs_calloc((size_t)G + 1, sizeof *s1, err);
    double *s2 = nbs_calloc((size_t)G + 1, sizeof *s2, err);
    int rc = NBS_OK;
    if (!mean || !var || !fit || !clip || !s1 || !s2) {
        rc = NBS_ERR_NOMEM;
        goto done;
    }
    for (int64_t k = 0; k < m->nnz; k++) {
        double v = m->data[k];
        mean[m->indices[k]] += v;
        var[m->indices[k]] += v * v;
    }
    if ((rc = seurat_trend(G, N, span, mean, var, fit, clip, err))) goto done;
    for (int64_t k = 0; k < m->nnz; k++) {
        int32_t g = m->indices[k];
        double v = fmin((double)m->data[k], clip[g]);
        s1[g] += v;
        s2[g] += v * v;
    }
    seurat_score(G, N, mean, fit, s1, s2, norm_var);
    if (mean_out) memcpy(mean_out, mean, (size_t)G * sizeof *mean);
    if (var_out) memcpy(var_out, var, (size_t)G * sizeof *var);
    if (fit_out) memcpy(fit_out, fit, (size_t)G * sizeof *fit);
done:
    free(mean);
    free(var);
    free(fit);
    free(clip);
    free(s1);
    free(s2);
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

/* ---- batch-aware selection ---- */

/* Follows scanpy's _highly_variable_genes_seurat_v3 (scanpy/preprocessing/_highly_variable_genes.py,
 * scverse/scanpy 1.10+): per batch the clipped standardised variance, ranks by argsort of its
 * negative, num_batches_high_var = count of ranks < n_top_genes, highly_variable_rank = the
 * median of those ranks (masked median: the mean of the two middle ones for an even count, NaN
 * for none), and the sorts of its two flavors: "seurat_v3" (the median rank ascending, NaN last,
 * then nbatches descending) and "seurat_v3_paper" (nbatches descending, then the median rank);
 * pandas' multi-column sort is stable, so then the gene order. Differences: ties in one batch's
 * score go to the lower index (numpy's argsort is not stable), and a batch of fewer than 2
 * cells is left out (scanpy divides by N - 1 = 0 there). */
typedef struct {
    const int *nbatches;
    const double *median;
    nbs_hvg_flavor flavor;
} batch_order;

/* smaller median rank first, NaN last; 0 when equal or both NaN */
static int cmp_median(double x, double y) {
    if (isnan(x) || isnan(y)) return isnan(x) - isnan(y);
    return (x > y) - (x < y);
}

static int cmp_batch_order(const void *a, const void *b, void *ctx) {
    const batch_order *o = ctx;
    const int64_t i = *(const int64_t *)a, j = *(const int64_t *)b;
    const int by_batches = (o->nbatches[j] > o->nbatches[i]) - (o->nbatches[j] < o->nbatches[i]);
    const int by_median = cmp_median(o->median[i], o->median[j]);
    const int first = o->flavor == NBS_HVG_SEURAT_V3_PAPER ? by_batches : by_median;
    const int second = o->flavor == NBS_HVG_SEURAT_V3_PAPER ? by_median : by_batches;
    if (first) return first;
    if (second) return second;
    return (i > j) - (i < j);
}

/* One batch's scores (G) ranked (0 = most variable): each gene among the top k gets its rank in
 * top_ranks (G, n_batches) at its nbatches-th place. order (G) is scratch. Shared by the in-memory
 * and the streamed selections. */
static void rank_in_batch(const double *score, int64_t G, int64_t k, int n_batches, int64_t *order, int *nbatches,
                          float *top_ranks) {
    for (int64_t g = 0; g < G; g++) order[g] = g;
    qsort_r(order, (size_t)G, sizeof *order, cmp_score_desc, (void *)score); /* order[rank] = gene */
    for (int64_t r = 0; r < k; r++) {
        const int64_t g = order[r];
        top_ranks[g * n_batches + nbatches[g]++] = (float)r;
    }
}

/* The batches' ranks merged (median and count per gene, the flavor's order): the first k genes,
 * ascending, into out (k). median and order (G) are scratch. */
static void merge_batches(int64_t G, int64_t k, int n_batches, const int *nbatches, float *top_ranks, double *median,
                          int64_t *order, nbs_hvg_flavor flavor, int64_t *out) {
    for (int64_t g = 0; g < G; g++) {
        float *r = top_ranks + g * n_batches;
        const int c = nbatches[g];
        for (int i = 1; i < c; i++) /* insertion sort: c <= n_batches */
            for (int j = i; j > 0 && r[j - 1] > r[j]; j--) {
                const float t = r[j];
                r[j] = r[j - 1];
                r[j - 1] = t;
            }
        median[g] = !c ? NAN : c % 2 ? r[c / 2] : 0.5 * ((double)r[c / 2 - 1] + r[c / 2]);
        order[g] = g;
    }
    batch_order o = {nbatches, median, flavor};
    qsort_r(order, (size_t)G, sizeof *order, cmp_batch_order, &o);
    memcpy(out, order, sizeof *out * (size_t)k);
    qsort(out, (size_t)k, sizeof *out, cmp_i64);
}

int64_t nbs_preprocess_hvg_batched(const nbs_matrix *m, const int32_t *batch, int n_batches, double span, int64_t k,
                                   nbs_hvg_flavor flavor, int64_t *out, int *used, nbs_error *err) {
    const int64_t G = m->n_genes, N = m->n_cells;
    *used = 0;
    if (k > G) k = G;
    int64_t *rows = nbs_malloc(sizeof *rows * (size_t)(N + 1), err), *all = nbs_malloc(sizeof *all * (size_t)(G + 1), err);
    int64_t *order = nbs_malloc(sizeof *order * (size_t)(G + 1), err);
    double *score = nbs_malloc(sizeof *score * (size_t)(G + 1), err), *median = nbs_malloc(sizeof *median * (size_t)(G + 1), err);
    int *nbatches = nbs_calloc((size_t)G + 1, sizeof *nbatches, err);
    /* (G, n_batches): gene g's rank in each batch where it is among the top k, in batch order */
    float *top_ranks = nbs_malloc(sizeof *top_ranks * (size_t)(G + 1) * (size_t)(n_batches ? n_batches : 1), err);
    int rc = rows && all && order && score && median && nbatches && top_ranks ? NBS_OK : NBS_ERR_NOMEM;
    for (int64_t g = 0; g < G && !rc; g++) all[g] = g;
    for (int b = 0; b < n_batches && !rc; b++) {
        int64_t nb = 0;
        for (int64_t i = 0; i < N; i++)
            if (batch[i] == b) rows[nb++] = i;
        if (nb < 2) continue;
        nbs_matrix *sub = nbs_matrix_subset(m, rows, nb, all, G, err);
        if (!sub) {
            rc = err->code;
            break;
        }
        rc = nbs_preprocess_seurat_v3(sub, span, NULL, NULL, NULL, score, err);
        nbs_matrix_free(sub);
        if (rc) {
            nbs_error_prefix(err, "batch %d: ", b + 1);
            break;
        }
        rank_in_batch(score, G, k, n_batches, order, nbatches, top_ranks);
        (*used)++;
    }
    int64_t written = 0;
    if (!rc && *used) {
        merge_batches(G, k, n_batches, nbatches, top_ranks, median, order, flavor, out);
        written = k;
    }
    free(rows);
    free(all);
    free(order);
    free(score);
    free(median);
    free(nbatches);
    free(top_ranks);
    return rc ? -1 : written;
}

/* ---- the whole step ---- */

int nbs_preprocess_library(nbs_preprocess_result *r, nbs_error *err) {
    free(r->library_size);
    r->cells_zero_library = 0;
    if (!(r->library_size = nbs_malloc((size_t)(r->matrix->n_cells ? r->matrix->n_cells : 1) * sizeof *r->library_size, err)))
        return err->code;
    nbs_matrix_row_sums(r->matrix, r->library_size);
    for (int64_t i = 0; i < r->matrix->n_cells; i++) r->cells_zero_library += r->library_size[i] == 0;
    return NBS_OK;
}

void nbs_preprocess_result_free(nbs_preprocess_result *r) {
    if (!r) return;
    nbs_matrix_free(r->matrix);
    free(r->cells);
    free(r->genes);
    free(r->library_size);
    free(r->total_counts);
    free(r);
}

/* Cell c (its stored values data, len of them) against the cell filters: kept into r (and its total
 * into totals) or counted as removed; the largest total and detected count so far, for messages. */
/* Cell c's total and detected genes over its stored values. */
static void cell_sums(const float *data, int64_t len, double *total, int64_t *detected) {
    double t = 0;
    int64_t d = 0;
    for (int64_t k = 0; k < len; k++) {
        t += data[k];
        d += data[k] > 0;
    }
    *total = t;
    *detected = d;
}

/* Keeps cell c (appended to r->cells, its total to totals) if it passes both filters. */
static void judge_values(nbs_preprocess_result *r, const nbs_preprocess_config *cfg, int64_t c, double t,
                         int64_t detected, double *totals, double *max_total, int64_t *max_detected) {
    *max_total = fmax(*max_total, t);
    if (t < cfg->min_counts) {
        r->removed_cells_min_counts++;
        return;
    }
    if (detected > *max_detected) *max_detected = detected;
    if (detected < cfg->min_genes) {
        r->removed_cells_min_genes++;
        return;
    }
    totals[r->n_cells] = t;
    r->cells[r->n_cells++] = c;
}

static void judge_cell(nbs_preprocess_result *r, const nbs_preprocess_config *cfg, int64_t c, const float *data,
                       int64_t len, double *totals, double *max_total, int64_t *max_detected) {
    double t;
    int64_t detected;
    cell_sums(data, len, &t, &detected);
    judge_values(r, cfg, c, t, detected, totals, max_total, max_detected);
}

static int cells_verdict(const nbs_preprocess_result *r, int64_t n_in, const nbs_preprocess_config *cfg,
                         double max_total, int64_t max_detected, nbs_error *err) {
    if (r->n_cells > 0) return NBS_OK;
    if (r->removed_cells_min_counts == n_in)
        return nbs_error_set(err, NBS_ERR_INPUT,
                             "preprocess: the cell filter preprocess.min_counts = %g removed all "
                             "%lld cells (the largest cell total is %g); lower min_counts",
                             cfg->min_counts, (long long)n_in, max_total);
    return nbs_error_set(err, NBS_ERR_INPUT,
                         "preprocess: the cell filters removed all %lld cells (%lld below "
                         "min_counts = %g, %lld below min_genes = %lld; the most genes detected "
                         "in a remaining cell is %lld); lower preprocess.min_genes",
                         (long long)n_in, (long long)r->removed_cells_min_counts,
                         cfg->min_counts, (long long)r->removed_cells_min_genes,
                         (long long)cfg->min_genes, (long long)max_detected);
}

/* Cells: total count and detected genes over all genes; keeps those passing both filters. */
static int filter_cells(const nbs_matrix *m, const nbs_preprocess_config *cfg,
                        nbs_preprocess_result *r, double *totals, nbs_error *err) {
    double max_total = 0;
    int64_t max_detected = 0;
    for (int64_t c = 0; c < m->n_cells; c++)
        judge_cell(r, cfg, c, m->data + m->indptr[c], m->indptr[c + 1] - m->indptr[c], totals, &max_total,
                   &max_detected);
    return cells_verdict(r, m->n_cells, cfg, max_total, max_detected, err);
}

/* Genes: expressing[g] (n_genes), the kept cells expressing gene g, against min_cells. */
static int genes_verdict(const int64_t *expressing, int64_t n_genes, const nbs_preprocess_config *cfg,
                         nbs_preprocess_result *r, nbs_error *err) {
    int64_t most = 0;
    for (int64_t g = 0; g < n_genes; g++) {
        if (expressing[g] > most) most = expressing[g];
        if (expressing[g] >= cfg->min_cells) r->genes[r->n_genes++] = g;
        else r->removed_genes_min_cells++;
    }
    if (r->n_genes > 0) return NBS_OK;
    return nbs_error_set(err, NBS_ERR_INPUT,
                         "preprocess: the gene filter preprocess.min_cells = %lld removed all %lld "
                         "genes (the most cells expressing one gene, among the %lld kept cells, "
                         "is %lld); lower min_cells",
                         (long long)cfg->min_cells, (long long)n_genes, (long long)r->n_cells,
                         (long long)most);
}

static int filter_genes(const nbs_matrix *m, const nbs_preprocess_config *cfg,
                        nbs_preprocess_result *r, nbs_error *err) {
    int64_t *expressing = nbs_calloc((size_t)m->n_genes + 1, sizeof *expressing, err);
    if (!expressing) return NBS_ERR_NOMEM;
    for (int64_t i = 0; i < r->n_cells; i++) {
        int64_t c = r->cells[i];
        for (int64_t k = m->indptr[c]; k < m->indptr[c + 1]; k++)
            expressing[m->indices[k]] += m->data[k] > 0;
    }
    int rc = genes_verdict(expressing, m->n_genes, cfg, r, err);
    free(expressing);
    return rc;
}

static int select_hvg(nbs_matrix *x, const nbs_preprocess_config *cfg, const nbs_preprocess_batches *b,
                      nbs_preprocess_result *r, nbs_error *err) {
    double *score = nbs_malloc((size_t)r->n_genes * sizeof *score, err);
    int64_t *top = nbs_malloc((size_t)cfg->n_top_genes * sizeof *top, err);
    int32_t *kept_batch = NULL; /* (kept cells) */
    int rc = NBS_OK, batched = 0;
    if (!score || !top) rc = NBS_ERR_NOMEM;
    if (!rc && b && b->codes && cfg->hvg_batch_aware) {
        if (!(kept_batch = nbs_malloc(sizeof *kept_batch * (size_t)(r->n_cells + 1), err))) rc = NBS_ERR_NOMEM;
        for (int64_t i = 0; !rc && i < r->n_cells; i++)
            if ((kept_batch[i] = b->codes[r->cells[i]]) < 0)
                rc = nbs_error_set(err, NBS_ERR_INPUT, "preprocess: cell '%s' has no value in the batch column '%s'; "
                                   "every cell the filters keep needs one", x->barcodes[i], b->column);
        int used = 0;
        const int64_t k = rc ? 0 : nbs_preprocess_hvg_batched(x, kept_batch, b->n_batches, cfg->hvg_span,
                                                              cfg->n_top_genes, cfg->hvg_flavor, top, &used, err);
        if (k < 0) rc = err->code;
        for (int i = 0; !rc && i < b->n_batches; i++) {
            int64_t n = 0;
            for (int64_t c = 0; c < r->n_cells; c++) n += kept_batch[c] == i;
            if (n < 2)
                nbs_info("highly variable genes: batch '%s' has %lld kept cell%s, too few to rank genes in; it is left "
                         "out of the batch-aware selection", b->names[i], (long long)n, n == 1 ? "" : "s");
        }
        if (!rc && !used)
            nbs_info("highly variable genes: no batch has 2 kept cells; the genes are ranked over all cells");
        batched = !rc && used > 0;
        r->hvg_batches = batched ? used : 0;
    }
    if (!rc && !batched) rc = nbs_preprocess_seurat_v3(x, cfg->hvg_span, NULL, NULL, NULL, score, err);
    if (!rc) {
        int64_t k = batched ? (cfg->n_top_genes < r->n_genes ? cfg->n_top_genes : r->n_genes)
                            : nbs_preprocess_top_k(score, r->n_genes, cfg->n_top_genes, top);
        if (k < 0) rc = nbs_error_set(err, NBS_ERR_NOMEM, "out of memory ranking genes");
        else if (!(rc = nbs_matrix_subset_inplace(x, NULL, 0, top, k, err))) {
            for (int64_t i = 0; i < k; i++) top[i] = r->genes[top[i]];
            memcpy(r->genes, top, (size_t)k * sizeof *top);
            r->removed_genes_hvg = r->n_genes - k;
            r->n_genes = k;
        }
    }
    free(score);
    free(top);
    free(kept_batch);
    return rc;
}

/* m: the input; owned: the same matrix when the caller gives it up (then narrowed in place and
 * kept as the result, so preprocessing never holds two copies of the counts), else NULL. */
static int check_input(const nbs_matrix *m, const nbs_preprocess_config *cfg, nbs_error *err) {
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
    return NBS_OK;
}

static int preprocess(const nbs_matrix *m, nbs_matrix *owned, const nbs_preprocess_config *cfg,
                      const nbs_preprocess_batches *b, nbs_preprocess_result **out, nbs_error *err) {
    *out = NULL;
    nbs_preprocess_result *r = NULL;
    int rc = check_input(m, cfg, err);
    if (rc) goto fail;
    rc = NBS_ERR_NOMEM;
    if (!(r = nbs_calloc(1, sizeof *r, err))) goto fail;
    r->n_cells_in = m->n_cells;
    r->n_genes_in = m->n_genes;
    r->cells = nbs_malloc((size_t)m->n_cells * sizeof *r->cells, err);
    r->genes = nbs_malloc((size_t)m->n_genes * sizeof *r->genes, err);
    r->total_counts = nbs_malloc((size_t)m->n_cells * sizeof *r->total_counts, err);
    if (!r->cells || !r->genes || !r->total_counts) goto fail;
    if ((rc = filter_cells(m, cfg, r, r->total_counts, err))) goto fail;
    if ((rc = filter_genes(m, cfg, r, err))) goto fail;
    if (owned) {
        if ((rc = nbs_matrix_subset_inplace(owned, r->cells, r->n_cells, r->genes, r->n_genes, err))) goto fail;
        r->matrix = owned;
        owned = NULL;
    } else if (!(r->matrix = nbs_matrix_subset(m, r->cells, r->n_cells, r->genes, r->n_genes, err))) {
        rc = NBS_ERR_NOMEM;
        goto fail;
    }
    if (cfg->n_top_genes > 0 && cfg->n_top_genes < r->n_genes && (rc = select_hvg(r->matrix, cfg, b, r, err)))
        goto fail;
    if ((rc = nbs_preprocess_library(r, err))) goto fail;
    *out = r;
    return NBS_OK;
fail:
    nbs_matrix_free(owned);
    nbs_preprocess_result_free(r);
    return rc;
}

int nbs_preprocess_run(const nbs_matrix *m, const nbs_preprocess_config *cfg,
                       nbs_preprocess_result **out, nbs_error *err) {
    return preprocess(m, NULL, cfg, NULL, out, err);
}

int nbs_preprocess_take(nbs_matrix *m, const nbs_preprocess_config *cfg, nbs_preprocess_result **out,
                        nbs_error *err) {
    return preprocess(m, m, cfg, NULL, out, err);
}

int nbs_preprocess_take_batched(nbs_matrix *m, const nbs_preprocess_config *cfg, const nbs_preprocess_batches *b,
                                nbs_preprocess_result **out, nbs_error *err) {
    return preprocess(m, m, cfg, b, out, err);
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
    if (r->hvg_batches > 0 && n > 0 && (size_t)n < size)
        n += snprintf(buf + n, size - (size_t)n, ", ranked within %d batches", r->hvg_batches);
    if (r->cells_zero_library > 0 && n > 0 && (size_t)n < size)
        snprintf(buf + n, size - (size_t)n,
                 "; %lld kept cells have no count in the kept genes", (long long)r->cells_zero_library);
}

/* ---- out of core: the same steps in passes over the rows ---- */

/* One pass of nbs_preprocess_stream: 0 the cell filters over every row; then over the kept cells
 * only, 1 the gene counts and sums, 2 the clipped sums of the Seurat v3 score, 3 the library sizes
 * and row lengths over the chosen genes. */
typedef struct {
    int pass;
    nbs_preprocess_result *r;
    const nbs_preprocess_config *cfg;
    int64_t next;                  /* the next kept cell the pass waits for */
    double max_total;              /* pass 0: for the messages */
    int64_t max_detected;
    int64_t *expressing;           /* (input genes) kept cells expressing each gene */
    double *sum, *sumsq;           /* (input genes) over the kept cells */
    const int64_t *col;            /* (input genes) the gene's column among the chosen ones, or -1 */
    const double *clip;            /* (chosen genes) Seurat v3's clip of each count */
    double *s1, *s2;               /* (chosen genes) sums of the clipped counts and their squares */
    int32_t *row_nnz;              /* (kept cells) entries in the chosen genes */
    double *cell_t, *cell_det;     /* shared, pass 0: (input cells) total and detected genes of the rows scanned */
    /* batch-aware Seurat v3 (stream_hvg_batched), over the genes the filter kept, per batch: 4 the
     * sums and sums of squares, 5 the clipped sums; a batch of fewer than 2 kept cells is skipped */
    const int32_t *batch;          /* (input cells) batch code */
    const int64_t *batch_cells;    /* (batches) kept cells of each batch */
    int64_t G;                     /* the genes the filter kept: the stride of the per-batch sums */
    double *bsum, *bsumsq;         /* (batches, G) pass 4 */
    const double *bclip;           /* (batches, G) */
    double *bs1, *bs2;             /* (batches, G) pass 5 */
} stream_pass;

static int stream_visit(void *ctx, const nbs_matrix *b, int64_t first, nbs_error *err) {
    (void)err;
    stream_pass *x = ctx;
    nbs_preprocess_result *r = x->r;
    for (int64_t i = 0; i < b->n_cells; i++) {
        const int64_t c = first + i, k0 = b->indptr[i], k1 = b->indptr[i + 1];
        const float *v = b->data;
        const int32_t *g = b->indices;
        if (x->pass == 0 && x->cell_t) { /* judged once every process's rows are in */
            int64_t det;
            cell_sums(v + k0, k1 - k0, &x->cell_t[c], &det);
            x->cell_det[c] = (double)det;
            continue;
        }
        if (x->pass == 0) {
            judge_cell(r, x->cfg, c, v + k0, k1 - k0, r->total_counts, &x->max_total, &x->max_detected);
            continue;
        }
        while (x->next < r->n_cells && r->cells[x->next] < c) x->next++; /* a range of the rows starts past them */
        if (x->next >= r->n_cells || r->cells[x->next] != c) continue;
        const int64_t kc = x->next++;
        if (x->pass == 1) {
            for (int64_t k = k0; k < k1; k++) {
                const double d = v[k];
                x->expressing[g[k]] += v[k] > 0;
                x->sum[g[k]] += d;
                x->sumsq[g[k]] += d * d;
            }
        } else if (x->pass == 2) {
            for (int64_t k = k0; k < k1; k++) {
                const int64_t j = x->col[g[k]];
                if (j < 0) continue;
                const double d = fmin((double)v[k], x->clip[j]);
                x->s1[j] += d;
                x->s2[j] += d * d;
            }
        } else if (x->pass >= 4) {
            const int32_t bb = x->batch[c];
            if (x->batch_cells[bb] < 2) continue;
            double *u = (x->pass == 4 ? x->bsum : x->bs1) + bb * x->G, *w = (x->pass == 4 ? x->bsumsq : x->bs2) + bb * x->G;
            const double *clip = x->pass == 5 ? x->bclip + bb * x->G : NULL;
            for (int64_t k = k0; k < k1; k++) {
                const int64_t j = x->col[g[k]];
                if (j < 0) continue;
                const double d = clip ? fmin((double)v[k], clip[j]) : v[k];
                u[j] += d;
                w[j] += d * d;
            }
        } else {
            double l = 0;
            int32_t nz = 0;
            for (int64_t k = k0; k < k1; k++)
                if (x->col[g[k]] >= 0) l += v[k], nz++;
            r->library_size[kc] = l;
            x->row_nnz[kc] = nz;
            r->cells_zero_library += l == 0;
        }
    }
    return NBS_OK;
}

static int stream_run(const nbs_row_source *src, stream_pass *x, int pass, nbs_error *err) {
    x->pass = pass;
    x->next = 0;
    return src->scan(src->user, stream_visit, x, err);
}

/* Shared: the n doubles of buf summed over the processes. */
static int share_sum(const nbs_sum_hook *h, double *buf, int64_t n, nbs_error *err) {
    return h ? h->sum(h->user, buf, n, err) : NBS_OK;
}

/* Shared pass 0: every row's total and detected genes summed over the processes (each filled its
 * own rows), then judged in row order as one process judges them. */
static int shared_cells(const nbs_row_source *src, const nbs_sum_hook *h, stream_pass *x, nbs_error *err) {
    const int64_t N_in = src->n_cells;
    double *buf = nbs_calloc((size_t)(2 * N_in), sizeof *buf, err); /* (2, input cells) */
    if (!buf) return NBS_ERR_NOMEM;
    x->cell_t = buf;
    x->cell_det = buf + N_in;
    int rc = stream_run(src, x, 0, err);
    if (!rc) rc = share_sum(h, buf, 2 * N_in, err);
    for (int64_t c = 0; !rc && c < N_in; c++)
        judge_values(x->r, x->cfg, c, x->cell_t[c], (int64_t)x->cell_det[c], x->r->total_counts, &x->max_total,
                     &x->max_detected);
    x->cell_t = x->cell_det = NULL;
    free(buf);
    return rc;
}

/* Shared pass 1: the kept cells expressing each gene, and its sums. */
static int shared_genes(const nbs_sum_hook *h, stream_pass *x, int64_t G_in, nbs_error *err) {
    double *buf = nbs_malloc(sizeof *buf * (size_t)(G_in + 1), err); /* (input genes) */
    if (!buf) return NBS_ERR_NOMEM;
    for (int64_t g = 0; g < G_in; g++) buf[g] = (double)x->expressing[g];
    int rc = share_sum(h, buf, G_in, err);
    for (int64_t g = 0; !rc && g < G_in; g++) x->expressing[g] = (int64_t)buf[g];
    free(buf);
    if (!rc) rc = share_sum(h, x->sum, G_in, err);
    if (!rc) rc = share_sum(h, x->sumsq, G_in, err);
    return rc;
}

/* Shared pass 3: each kept cell's library size and row length, filled by the process that read it. */
static int shared_library(const nbs_sum_hook *h, stream_pass *x, nbs_error *err) {
    nbs_preprocess_result *r = x->r;
    const int64_t N = r->n_cells;
    double *len = nbs_malloc(sizeof *len * (size_t)(N + 1), err); /* (kept cells) */
    if (!len) return NBS_ERR_NOMEM;
    for (int64_t i = 0; i < N; i++) len[i] = (double)x->row_nnz[i];
    int rc = share_sum(h, r->library_size, N, err);
    if (!rc) rc = share_sum(h, len, N, err);
    r->cells_zero_library = 0;
    for (int64_t i = 0; !rc && i < N; i++) {
        x->row_nnz[i] = (int32_t)len[i];
        r->cells_zero_library += r->library_size[i] == 0;
    }
    free(len);
    return rc;
}

/* select_hvg's batch-aware branch over the stream: nbs_preprocess_hvg_batched's per-batch Seurat v3
 * with the same sums in the same order (passes 4 and 5), ranked and merged by the same code. The
 * genes into top (n_top_genes); *used gets the batches ranked (0: none has 2 kept cells, nothing
 * written). x->col maps the input genes to the G the filter kept. Shared (sum), each pass's per-batch
 * sums are summed over the processes, so every one ranks the same genes. Memory: 6 doubles per gene
 * and batch. */
static int stream_hvg_batched(const nbs_row_source *src, const nbs_sum_hook *sum, stream_pass *x,
                              const nbs_preprocess_config *cfg, const nbs_preprocess_batches *b, int64_t *top, int *used,
                              nbs_error *err) {
    nbs_preprocess_result *r = x->r;
    const int64_t G = r->n_genes, N = r->n_cells, k = cfg->n_top_genes;
    const int B = b->n_batches;
    const size_t BG = (size_t)B * (size_t)G + 1;
    *used = 0;
    int64_t *bn = nbs_calloc((size_t)B + 1, sizeof *bn, err);
    if (!bn) return NBS_ERR_NOMEM;
    int rc = NBS_OK;
    for (int64_t i = 0; i < N && !rc; i++) {
        const int32_t code = b->codes[r->cells[i]];
        if (code < 0 || code >= B)
            rc = nbs_error_set(err, NBS_ERR_INPUT, "preprocess: cell %lld of the input has no value in the batch column "
                               "'%s'; every cell the filters keep needs one", (long long)r->cells[i] + 1, b->column);
        else bn[code]++;
    }
    for (int i = 0; i < B && !rc; i++) {
        if (bn[i] < 2)
            nbs_info("highly variable genes: batch '%s' has %lld kept cell%s, too few to rank genes in; it is left "
                     "out of the batch-aware selection", b->names[i], (long long)bn[i], bn[i] == 1 ? "" : "s");
        else (*used)++;
    }
    if (!rc && !*used) nbs_info("highly variable genes: no batch has 2 kept cells; the genes are ranked over all cells");
    if (rc || !*used) {
        free(bn);
        return rc;
    }
    double *fit = nbs_malloc(sizeof *fit * BG, err), *clip = nbs_malloc(sizeof *clip * BG, err);
    double *score = nbs_malloc(sizeof *score * ((size_t)G + 1), err), *median = nbs_malloc(sizeof *median * ((size_t)G + 1), err);
    int64_t *order = nbs_malloc(sizeof *order * ((size_t)G + 1), err);
    int *nbatches = nbs_calloc((size_t)G + 1, sizeof *nbatches, err);
    float *top_ranks = nbs_malloc(sizeof *top_ranks * BG, err); /* (G, B) */
    x->bsum = nbs_calloc(BG, sizeof *x->bsum, err);
    x->bsumsq = nbs_calloc(BG, sizeof *x->bsumsq, err);
    x->bs1 = nbs_calloc(BG, sizeof *x->bs1, err);
    x->bs2 = nbs_calloc(BG, sizeof *x->bs2, err);
    rc = fit && clip && score && median && order && nbatches && top_ranks && x->bsum && x->bsumsq && x->bs1 && x->bs2
             ? NBS_OK : NBS_ERR_NOMEM;
    x->batch = b->codes;
    x->batch_cells = bn;
    x->G = G;
    x->bclip = clip;
    if (!rc) rc = stream_run(src, x, 4, err);
    if (!rc) rc = share_sum(sum, x->bsum, (int64_t)(BG - 1), err);
    if (!rc) rc = share_sum(sum, x->bsumsq, (int64_t)(BG - 1), err);
    for (int i = 0; i < B && !rc; i++)
        if (bn[i] >= 2 && (rc = seurat_trend(G, bn[i], cfg->hvg_span, x->bsum + (size_t)i * G, x->bsumsq + (size_t)i * G,
                                              fit + (size_t)i * G, clip + (size_t)i * G, err)))
            nbs_error_prefix(err, "batch %d: ", i + 1);
    if (!rc) rc = stream_run(src, x, 5, err);
    if (!rc) rc = share_sum(sum, x->bs1, (int64_t)(BG - 1), err);
    if (!rc) rc = share_sum(sum, x->bs2, (int64_t)(BG - 1), err);
    for (int i = 0; i < B && !rc; i++) {
        if (bn[i] < 2) continue;
        const size_t o = (size_t)i * G;
        seurat_score(G, bn[i], x->bsum + o, fit + o, x->bs1 + o, x->bs2 + o, score);
        rank_in_batch(score, G, k, B, order, nbatches, top_ranks);
    }
    if (!rc) merge_batches(G, k, B, nbatches, top_ranks, median, order, cfg->hvg_flavor, top);
    free(x->bsum), free(x->bsumsq), free(x->bs1), free(x->bs2);
    x->bsum = x->bsumsq = x->bs1 = x->bs2 = NULL;
    free(bn), free(fit), free(clip), free(score), free(median), free(order), free(nbatches), free(top_ranks);
    return rc;
}

int nbs_preprocess_stream(const nbs_row_source *src, const nbs_preprocess_config *cfg, nbs_preprocess_result **out,
                          int32_t **row_nnz, nbs_error *err) {
    return nbs_preprocess_stream_shared(src, cfg, NULL, NULL, out, row_nnz, err);
}

int nbs_preprocess_stream_shared(const nbs_row_source *src, const nbs_preprocess_config *cfg,
                                 const nbs_preprocess_batches *b, const nbs_sum_hook *sum, nbs_preprocess_result **out,
                                 int32_t **row_nnz, nbs_error *err) {
    *out = NULL;
    *row_nnz = NULL;
    const nbs_matrix shape = {.n_cells = src->n_cells, .n_genes = src->n_genes};
    int rc = check_input(&shape, cfg, err);
    if (rc) return rc;
    const int64_t N_in = src->n_cells, G_in = src->n_genes;
    nbs_preprocess_result *r = nbs_calloc(1, sizeof *r, err);
    stream_pass x = {.r = r, .cfg = cfg};
    int64_t *col = NULL, *top = NULL;
    double *mean = NULL, *var = NULL, *fit = NULL, *clip = NULL, *score = NULL;
    rc = NBS_ERR_NOMEM;
    if (!r) goto done;
    r->n_cells_in = N_in;
    r->n_genes_in = G_in;
    r->cells = nbs_malloc((size_t)N_in * sizeof *r->cells, err);
    r->genes = nbs_malloc((size_t)G_in * sizeof *r->genes, err);
    r->total_counts = nbs_malloc((size_t)N_in * sizeof *r->total_counts, err);
    x.expressing = nbs_calloc((size_t)G_in, sizeof *x.expressing, err);
    x.sum = nbs_calloc((size_t)G_in, sizeof *x.sum, err);
    x.sumsq = nbs_calloc((size_t)G_in, sizeof *x.sumsq, err);
    col = nbs_malloc((size_t)G_in * sizeof *col, err);
    if (!r->cells || !r->genes || !r->total_counts || !x.expressing || !x.sum || !x.sumsq || !col) goto done;
    if ((rc = sum ? shared_cells(src, sum, &x, err) : stream_run(src, &x, 0, err)) ||
        (rc = cells_verdict(r, N_in, cfg, x.max_total, x.max_detected, err)))
        goto done;
    if ((rc = stream_run(src, &x, 1, err)) || (sum && (rc = shared_genes(sum, &x, G_in, err))) ||
        (rc = genes_verdict(x.expressing, G_in, cfg, r, err)))
        goto done;
    x.col = col;
    const int64_t G = r->n_genes, N = r->n_cells;
    if (cfg->n_top_genes > 0 && cfg->n_top_genes < G) { /* select_hvg's pooled Seurat v3 */
        rc = NBS_ERR_NOMEM;
        mean = nbs_malloc((size_t)G * sizeof *mean, err);
        var = nbs_malloc((size_t)G * sizeof *var, err);
        fit = nbs_malloc((size_t)G * sizeof *fit, err);
        clip = nbs_malloc((size_t)G * sizeof *clip, err);
        score = nbs_malloc((size_t)G * sizeof *score, err);
        x.s1 = nbs_calloc((size_t)G, sizeof *x.s1, err);
        x.s2 = nbs_calloc((size_t)G, sizeof *x.s2, err);
        top = nbs_malloc((size_t)cfg->n_top_genes * sizeof *top, err);
        if (!mean || !var || !fit || !clip || !score || !x.s1 || !x.s2 || !top) goto done;
        for (int64_t g = 0; g < G_in; g++) col[g] = -1;
        for (int64_t i = 0; i < G; i++) {
            mean[i] = x.sum[r->genes[i]];
            var[i] = x.sumsq[r->genes[i]];
            col[r->genes[i]] = i;
        }
        int used = 0;
        if (b && b->codes && cfg->hvg_batch_aware && (rc = stream_hvg_batched(src, sum, &x, cfg, b, top, &used, err)))
            goto done;
        r->hvg_batches = used;
        if (!used) {
            if ((rc = seurat_trend(G, N, cfg->hvg_span, mean, var, fit, clip, err))) goto done;
            x.clip = clip;
            if ((rc = stream_run(src, &x, 2, err)) || (rc = share_sum(sum, x.s1, G, err)) ||
                (rc = share_sum(sum, x.s2, G, err)))
                goto done;
            seurat_score(G, N, mean, fit, x.s1, x.s2, score);
        }
        const int64_t k = used ? cfg->n_top_genes : nbs_preprocess_top_k(score, G, cfg->n_top_genes, top);
        if (k < 0) {
            rc = nbs_error_set(err, NBS_ERR_NOMEM, "out of memory ranking genes");
            goto done;
        }
        for (int64_t i = 0; i < k; i++) r->genes[i] = r->genes[top[i]]; /* top ascends: in place */
        r->removed_genes_hvg = G - k;
        r->n_genes = k;
    }
    rc = NBS_ERR_NOMEM;
    /* zeroed: shared, each process fills its own cells' */
    r->library_size = nbs_calloc((size_t)N, sizeof *r->library_size, err);
    x.row_nnz = nbs_calloc((size_t)N, sizeof *x.row_nnz, err);
    if (!r->library_size || !x.row_nnz) goto done;
    for (int64_t g = 0; g < G_in; g++) col[g] = -1;
    for (int64_t i = 0; i < r->n_genes; i++) col[r->genes[i]] = i;
    rc = stream_run(src, &x, 3, err);
    if (!rc && sum) rc = shared_library(sum, &x, err);
done:
    free(x.expressing);
    free(x.sum);
    free(x.sumsq);
    free(x.s1);
    free(x.s2);
    free(col);
    free(top);
    free(mean);
    free(var);
    free(fit);
    free(clip);
    free(score);
    if (rc) {
        free(x.row_nnz);
        nbs_preprocess_result_free(r);
        return rc;
    }
    *out = r;
    *row_nnz = x.row_nnz;
    return NBS_OK;
}
