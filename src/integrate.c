/* scIB integration metrics on the neighbour graphs of graph.c. Definitions follow the scib
 * package (Luecken et al. 2022; scib.metrics: ilisi_graph/clisi_graph, silhouette,
 * silhouette_batch, graph_connectivity, nmi, ari, cluster_optimal_resolution) and, for LISI,
 * harmony's compute_simpson (Korsunsky et al. 2019) on exact k-NN distances as scib-metrics'
 * lisi_knn does; docs/design.md ("Integration metrics") says where this differs from scib. */
#include "nbsphere/integrate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gsl/gsl_cblas.h>

#include "nbsphere/nn.h"
#include "nbsphere/rng.h"

/* ---- LISI ---- */

/* Entropy H of p_j = exp(-beta D_j) / sum and p itself; D is shifted by its minimum, which
 * changes neither (and keeps exp from underflowing where harmony's unshifted sum would). */
static double hbeta(const double *D, int k, double beta, double *p) {
    double sum = 0, dot = 0;
    for (int j = 0; j < k; j++) {
        p[j] = exp(-D[j] * beta);
        sum += p[j];
        dot += D[j] * p[j];
    }
    for (int j = 0; j < k; j++) p[j] /= sum;
    return log(sum) + beta * dot / sum;
}

int nbs_lisi(const nbs_graph *g, const int32_t *codes, int n_codes, double perplexity, double *lisi,
             nbs_error *err) {
    int kmax = 0;
    for (int64_t i = 0; i < g->n; i++)
        if (g->indptr[i + 1] - g->indptr[i] > kmax) kmax = (int)(g->indptr[i + 1] - g->indptr[i]);
    double *buf = nbs_malloc((size_t)(2 * kmax + n_codes + 1) * sizeof *buf, err); /* D [k], p [k], share [n_codes] */
    if (!buf) return NBS_ERR_NOMEM;
    const double logu = log(perplexity);
    for (int64_t i = 0; i < g->n; i++) {
        const int64_t o = g->indptr[i];
        const int k = (int)(g->indptr[i + 1] - o);
        double *D = buf, *p = buf + kmax, *share = buf + 2 * kmax;
        if (k == 0) {
            lisi[i] = NAN;
            continue;
        }
        double dmin = INFINITY;
        for (int j = 0; j < k; j++) dmin = fmin(dmin, g->weights[o + j]);
        for (int j = 0; j < k; j++) D[j] = g->weights[o + j] - dmin;
        double beta = 1, lo = -INFINITY, hi = INFINITY;
        double h = hbeta(D, k, beta, p);
        for (int it = 0; it < 50 && fabs(h - logu) >= 1e-5; it++) {
            if (h > logu) { /* too flat: sharpen */
                lo = beta;
                beta = isinf(hi) ? beta * 2 : (beta + hi) / 2;
            } else {
                hi = beta;
                beta = isinf(lo) ? beta / 2 : (beta + lo) / 2;
            }
            h = hbeta(D, k, beta, p);
        }
        memset(share, 0, (size_t)n_codes * sizeof *share);
        for (int j = 0; j < k; j++) share[codes[g->indices[o + j]]] += p[j];
        double simpson = 0;
        for (int c = 0; c < n_codes; c++) simpson += share[c] * share[c];
        lisi[i] = simpson > 0 ? 1 / simpson : NAN;
    }
    free(buf);
    return NBS_OK;
}

/* ---- silhouette ---- */

int nbs_silhouette(const float *x, int d, const int64_t *rows, int64_t m, const int32_t *codes, int n_codes,
                   double *s, nbs_error *err) {
    enum { BLOCK = 256 };
    nbs_nn_blas_serial();
    int64_t *count = nbs_calloc((size_t)n_codes, sizeof *count, err);             /* [n_codes] */
    double *xs = nbs_malloc((size_t)(m ? m : 1) * (size_t)d * sizeof *xs, err);  /* [m x d] in double */
    double *nrm = nbs_malloc((size_t)(m ? m : 1) * sizeof *nrm, err);            /* [m] |x|^2 */
    double *dot = nbs_malloc((size_t)BLOCK * (size_t)(m ? m : 1) * sizeof *dot, err); /* [BLOCK x m] */
    double *sum = nbs_malloc((size_t)BLOCK * (size_t)n_codes * sizeof *sum, err); /* [BLOCK x n_codes] */
    int rc = NBS_ERR_NOMEM;
    if (!count || !xs || !nrm || !dot || !sum) goto done;
    int present = 0;
    for (int64_t i = 0; i < m; i++) present += !count[codes[rows[i]]]++;
    if (present < 2) {
        rc = nbs_error_set(err, NBS_ERR_INPUT, "silhouette: the %lld cells hold %d group%s; it needs at least 2",
                           (long long)m, present, present == 1 ? "" : "s");
        goto done;
    }
    /* double: the widths compare mean distances, and float's cancellation in |a|^2 + |b|^2 - 2ab
     * would show at 1e-4 */
    for (int64_t i = 0; i < m; i++) {
        for (int j = 0; j < d; j++) xs[i * d + j] = x[rows[i] * d + j];
        nrm[i] = cblas_ddot(d, xs + i * d, 1, xs + i * d, 1);
    }
    for (int64_t b0 = 0; b0 < m; b0 += BLOCK) {
        int nb = (int)(m - b0 < BLOCK ? m - b0 : BLOCK);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, (int)m, d, 1.0, xs + b0 * d, d, xs, d, 0.0, dot,
                    (int)m);
#pragma omp parallel for schedule(static)
        for (int q = 0; q < nb; q++) {
            const int64_t i = b0 + q;
            double *sq = sum + (int64_t)q * n_codes;
            memset(sq, 0, (size_t)n_codes * sizeof *sq);
            for (int64_t t = 0; t < m; t++) {
                if (t == i) continue;
                double d2 = nrm[i] + nrm[t] - 2 * dot[(int64_t)q * m + t];
                sq[codes[rows[t]]] += d2 > 0 ? sqrt(d2) : 0.0;
            }
            const int own = codes[rows[i]];
            if (count[own] < 2) { /* sklearn: a cell alone in its group has width 0 */
                s[i] = 0;
                continue;
            }
            double a = sq[own] / (double)(count[own] - 1), b = INFINITY;
            for (int c = 0; c < n_codes; c++)
                if (c != own && count[c]) b = fmin(b, sq[c] / (double)count[c]);
            double den = fmax(a, b);
            s[i] = den > 0 ? (b - a) / den : 0.0;
        }
    }
    rc = NBS_OK;
done:
    free(count);
    free(xs);
    free(nrm);
    free(dot);
    free(sum);
    return rc;
}

/* ---- contingency-based scores ---- */

typedef struct {
    int ra, cb;      /* categories of a and b (max code + 1) */
    double n;        /* cells counted */
    double *tab;     /* [ra x cb] */
    double *ra_sum;  /* [ra] */
    double *cb_sum;  /* [cb] */
} contingency;

static int table(const int32_t *a, const int32_t *b, int64_t n, contingency *t, nbs_error *err) {
    memset(t, 0, sizeof *t);
    for (int64_t i = 0; i < n; i++)
        if (a[i] >= 0 && b[i] >= 0) {
            if (a[i] + 1 > t->ra) t->ra = a[i] + 1;
            if (b[i] + 1 > t->cb) t->cb = b[i] + 1;
        }
    if (!(t->tab = nbs_calloc((size_t)t->ra * (size_t)t->cb + 1, sizeof *t->tab, err)) ||
        !(t->ra_sum = nbs_calloc((size_t)t->ra + 1, sizeof *t->ra_sum, err)) ||
        !(t->cb_sum = nbs_calloc((size_t)t->cb + 1, sizeof *t->cb_sum, err)))
        return NBS_ERR_NOMEM;
    for (int64_t i = 0; i < n; i++)
        if (a[i] >= 0 && b[i] >= 0) {
            t->tab[(int64_t)a[i] * t->cb + b[i]]++;
            t->ra_sum[a[i]]++, t->cb_sum[b[i]]++, t->n++;
        }
    return 0;
}

static void table_free(contingency *t) {
    free(t->tab);
    free(t->ra_sum);
    free(t->cb_sum);
}

static int used(const double *v, int n) {
    int u = 0;
    for (int i = 0; i < n; i++) u += v[i] > 0;
    return u;
}

static double entropy(const double *v, int k, double n) {
    double h = 0;
    for (int i = 0; i < k; i++)
        if (v[i] > 0) h -= v[i] / n * log(v[i] / n);
    return h;
}

int nbs_nmi(const int32_t *a, const int32_t *b, int64_t n, double *out, nbs_error *err) {
    contingency t;
    double r = NAN;
    const int rc = table(a, b, n, &t, err);
    if (!rc && t.n > 0) {
        int ua = used(t.ra_sum, t.ra), ub = used(t.cb_sum, t.cb);
        if (ua == 1 && ub == 1) r = 1.0; /* sklearn: two single-class labelings agree */
        else {
            double mi = 0;
            for (int i = 0; i < t.ra; i++)
                for (int j = 0; j < t.cb; j++) {
                    double v = t.tab[(int64_t)i * t.cb + j];
                    if (v > 0) mi += v / t.n * log(v * t.n / (t.ra_sum[i] * t.cb_sum[j]));
                }
            double norm = (entropy(t.ra_sum, t.ra, t.n) + entropy(t.cb_sum, t.cb, t.n)) / 2;
            r = mi / fmax(norm, 2.220446049250313e-16); /* sklearn's floor: float64's epsilon */
        }
    }
    table_free(&t);
    *out = r;
    return rc;
}

int nbs_ari(const int32_t *a, const int32_t *b, int64_t n, double *out, nbs_error *err) {
    contingency t;
    double r = NAN;
    const int rc = table(a, b, n, &t, err);
    if (!rc && t.n > 0) {
        /* sklearn's pair confusion matrix: pairs together in both, in one only, in neither */
        double sq = 0, sa = 0, sb = 0;
        for (int64_t i = 0; i < (int64_t)t.ra * t.cb; i++) sq += t.tab[i] * t.tab[i];
        for (int i = 0; i < t.ra; i++) sa += t.ra_sum[i] * t.ra_sum[i];
        for (int j = 0; j < t.cb; j++) sb += t.cb_sum[j] * t.cb_sum[j];
        double tp = sq - t.n, fp = sb - sq, fn = sa - sq, tn = t.n * t.n - fp - fn - sq;
        r = fn == 0 && fp == 0 ? 1.0 : 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn));
    }
    table_free(&t);
    *out = r;
    return rc;
}

int nbs_cramers_v(const int32_t *a, const int32_t *b, int64_t n, double *out, nbs_error *err) {
    contingency t;
    double r = NAN;
    const int rc = table(a, b, n, &t, err);
    if (!rc && t.n > 0) {
        int ua = used(t.ra_sum, t.ra), ub = used(t.cb_sum, t.cb), k = ua < ub ? ua : ub;
        double chi2 = 0;
        for (int i = 0; i < t.ra; i++)
            for (int j = 0; j < t.cb; j++) {
                double e = t.ra_sum[i] * t.cb_sum[j] / t.n;
                if (e > 0) chi2 += (t.tab[(int64_t)i * t.cb + j] - e) * (t.tab[(int64_t)i * t.cb + j] - e) / e;
            }
        if (k > 1) r = sqrt(chi2 / (t.n * (k - 1)));
    }
    table_free(&t);
    *out = r;
    return rc;
}

/* ---- the metrics of one embedding ---- */

static int cmp_double(const void *p, const void *q) {
    double x = *(const double *)p, y = *(const double *)q;
    return (x > y) - (x < y);
}

/* The median of the finite values of v [n] (reordered). */
static double median(double *v, int64_t n) {
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(v[i])) v[m++] = v[i];
    if (!m) return NAN;
    qsort(v, (size_t)m, sizeof *v, cmp_double);
    return m % 2 ? v[m / 2] : (v[m / 2 - 1] + v[m / 2]) / 2;
}

static void add_note(nbs_integration *r, const char *text) {
    size_t len = strlen(r->notes);
    snprintf(r->notes + len, sizeof r->notes - len, "%s%s", len ? "; " : "", text);
}

/* An approximate neighbour search is named in the notes (once). */
static void knn_note(nbs_integration *r, const nbs_knn_info *info) {
    if (info->method != NBS_KNN_APPROXIMATE || strstr(r->notes, "approximate neighbours")) return;
    char text[160];
    snprintf(text, sizeof text, "approximate neighbours (FLANN k-means tree, recall@%d %.3f against exact)", info->k,
             info->recall);
    add_note(r, text);
}

/* Median LISI of codes over the k-NN graph of the rows of y [m x d], k = min(90, m - 1) and
 * perplexity k / 3 (scib: perplexity = k0 / 3). */
static int median_lisi(const float *y, int64_t m, int d, const int32_t *codes, int n_codes,
                       const nbs_neighbors_config *nb, uint64_t seed, nbs_integration *r, double *med, nbs_error *err) {
    const int k = m - 1 < NBS_INTEGRATION_LISI_K ? (int)(m - 1) : NBS_INTEGRATION_LISI_K;
    nbs_graph g;
    double *lisi = nbs_malloc((size_t)m * sizeof *lisi, err); /* [m] */
    nbs_knn_info info;
    int rc = lisi ? nbs_graph_knn(y, m, d, k, NBS_METRIC_EUCLIDEAN, nb, seed, &g, &info, err) : NBS_ERR_NOMEM;
    if (!rc) {
        knn_note(r, &info);
        rc = nbs_lisi(&g, codes, n_codes, k / 3.0, lisi, err);
        if (!rc) *med = median(lisi, m);
        nbs_graph_free(&g);
    }
    free(lisi);
    return rc;
}

/* Batch ASW (scib silhouette_batch): within each label, the batch silhouette of its cells,
 * 1 - |s| per cell, averaged per label, then over labels; a label with one batch, or with as
 * many batches as cells, is skipped as scib does. */
static int batch_asw(const float *y, int64_t m, int d, const int32_t *batch, int n_batches, const int32_t *label,
                     int n_labels, double *out, nbs_error *err) {
    int64_t *rows = nbs_malloc((size_t)m * sizeof *rows, err); /* [m] cells of one label */
    double *s = nbs_malloc((size_t)m * sizeof *s, err);        /* [m] */
    uint8_t *seen = nbs_malloc((size_t)n_batches, err);        /* [n_batches] */
    int rc = rows && s && seen ? NBS_OK : NBS_ERR_NOMEM;
    double total = 0;
    int groups = 0;
    for (int l = 0; l < n_labels && !rc; l++) {
        int64_t nr = 0;
        int nb = 0;
        memset(seen, 0, (size_t)n_batches);
        for (int64_t i = 0; i < m; i++)
            if (label[i] == l) {
                rows[nr++] = i;
                nb += !seen[batch[i]]++;
            }
        if (nb < 2 || nb == nr) continue;
        if ((rc = nbs_silhouette(y, d, rows, nr, batch, n_batches, s, err))) break;
        double mean = 0;
        for (int64_t i = 0; i < nr; i++) mean += 1 - fabs(s[i]);
        total += mean / (double)nr;
        groups++;
    }
    *out = groups ? total / groups : NAN;
    free(rows);
    free(s);
    free(seen);
    return rc;
}

/* Graph connectivity (scib graph_connectivity): per label, the share of its cells in the
 * largest connected component of the neighbour graph restricted to the label; mean over labels. */
static int graph_connectivity(const nbs_graph *g, const int32_t *label, int n_labels, double *out, nbs_error *err) {
    const int64_t m = g->n;
    uint8_t *keep = nbs_malloc((size_t)m, err);            /* [m] */
    int32_t *comp = nbs_malloc((size_t)m * sizeof *comp, err); /* [m] */
    int rc = keep && comp ? NBS_OK : NBS_ERR_NOMEM;
    double total = 0;
    int groups = 0;
    for (int l = 0; l < n_labels && !rc; l++) {
        int64_t size = 0, nc = 0, big = 0;
        for (int64_t i = 0; i < m; i++) size += keep[i] = label[i] == l;
        if (!size) continue;
        if ((rc = nbs_graph_components(g, keep, comp, &nc, &big, err))) break;
        total += (double)big / (double)size;
        groups++;
    }
    *out = groups ? total / groups : NAN;
    free(keep);
    free(comp);
    return rc;
}

/* Leiden at 0.1, 0.2, ..., 2.0 (scib cluster_optimal_resolution); the clustering of best NMI
 * against the labels gives NMI and ARI. */
static int leiden_sweep(const nbs_graph *conn, const int32_t *label, uint64_t seed, nbs_integration *r,
                        nbs_error *err) {
    const int64_t m = conn->n;
    int32_t *memb = nbs_malloc((size_t)m * sizeof *memb, err); /* [m] */
    if (!memb) return NBS_ERR_NOMEM;
    int rc = NBS_OK;
    r->nmi = -1;
    for (int step = 1; step <= NBS_INTEGRATION_RESOLUTIONS && !rc; step++) {
        const double res = 2.0 * step / NBS_INTEGRATION_RESOLUTIONS;
        int nc = 0;
        rc = nbs_graph_leiden(conn, res, nbs_stream_seed(seed, NBS_STREAM_LEIDEN, (uint64_t)step, 0), memb, &nc, err);
        if (rc) break;
        double nmi;
        if ((rc = nbs_nmi(label, memb, m, &nmi, err))) break;
        if (nmi > r->nmi) {
            r->nmi = nmi;
            if ((rc = nbs_ari(label, memb, m, &r->ari, err))) break;
            r->resolution = res;
            r->n_clusters = nc;
        }
    }
    free(memb);
    return rc;
}

static double mean_finite(const double *v, int n) {
    double s = 0;
    int k = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(v[i])) s += v[i], k++;
    return k ? s / k : NAN;
}

/* The labels of at least NBS_CONFOUNDED_MIN_CELLS cells all from one batch, into r. */
static int one_batch_labels(const int32_t *batch, const int32_t *label, int64_t m, int n_labels,
                            char *const *names, nbs_integration *r, nbs_error *err) {
    int32_t *first = nbs_malloc((size_t)n_labels * sizeof *first, err); /* [n_labels] batch, -2 = several */
    int64_t *size = nbs_calloc((size_t)n_labels, sizeof *size, err);    /* [n_labels] */
    if (!first || !size) {
        free(first);
        free(size);
        return NBS_ERR_NOMEM;
    }
    for (int l = 0; l < n_labels; l++) first[l] = -1;
    for (int64_t i = 0; i < m; i++) {
        int l = label[i];
        size[l]++;
        first[l] = first[l] == -1 ? batch[i] : first[l] == batch[i] ? first[l] : -2;
    }
    size_t len = 0;
    for (int l = 0; l < n_labels; l++)
        if (first[l] >= 0 && size[l] >= NBS_CONFOUNDED_MIN_CELLS && len + 1 < sizeof r->one_batch_labels) {
            int w = snprintf(r->one_batch_labels + len, sizeof r->one_batch_labels - len, "%s%s (%lld cells)",
                             len ? ", " : "", names ? names[l] : "?", (long long)size[l]);
            len = w > 0 ? len + (size_t)w : len;
            if (len >= sizeof r->one_batch_labels) len = sizeof r->one_batch_labels - 1;
        }
    free(first);
    free(size);
    return NBS_OK;
}

int nbs_integration_metrics(const float *z, int64_t n, int d, nbs_metric metric, const int32_t *batch,
                            int n_batches, const int32_t *labels, int n_labels, char *const *label_names,
                            double knn_accuracy, const nbs_neighbors_config *nb, uint64_t seed, nbs_integration *r,
                            nbs_error *err) {
    memset(r, 0, sizeof *r);
    r->ilisi = r->batch_asw = r->graph_connectivity = r->clisi = r->nmi = r->ari = r->label_asw = NAN;
    r->resolution = r->batch_score = r->bio_score = r->overall = r->cramers_v = NAN;
    r->knn_accuracy = knn_accuracy;
    r->lisi_k = n - 1 < NBS_INTEGRATION_LISI_K ? (int)(n - 1) : NBS_INTEGRATION_LISI_K;
    if (n < 1 || d < 1)
        return nbs_error_set(err, NBS_ERR_USAGE, "integration metrics: need cells (%lld) and dimensions (%d)",
                             (long long)n, d);
    for (int64_t i = 0; i < n; i++) {
        if (batch && (batch[i] < 0 || batch[i] >= n_batches))
            return nbs_error_set(err, NBS_ERR_INTERNAL, "integration metrics: batch code %d of cell %lld is outside "
                                 "0..%d (bug)", batch[i], (long long)i + 1, n_batches - 1);
        if (labels && labels[i] >= n_labels)
            return nbs_error_set(err, NBS_ERR_INTERNAL, "integration metrics: label code %d of cell %lld is outside "
                                 "0..%d (bug)", labels[i], (long long)i + 1, n_labels - 1);
    }
    float *y = nbs_malloc((size_t)n * (size_t)d * sizeof *y, err);        /* [n x d], unit rows for cosine */
    float *yl = nbs_malloc((size_t)n * (size_t)d * sizeof *yl, err);      /* [m x d] the labelled cells */
    int32_t *bl = nbs_malloc((size_t)n * sizeof *bl, err);                /* [m] their batches */
    int32_t *ll = nbs_malloc((size_t)n * sizeof *ll, err);                /* [m] their labels */
    int64_t *rows = nbs_malloc((size_t)n * sizeof *rows, err);            /* [m] 0..m-1 */
    double *s = nbs_malloc((size_t)n * sizeof *s, err);                   /* [m] silhouettes */
    nbs_graph conn = {0}, knn = {0};
    int rc = y && yl && bl && ll && rows && s ? NBS_OK : NBS_ERR_NOMEM;
    if (rc) goto done;
    memcpy(y, z, (size_t)n * (size_t)d * sizeof *y);
    for (int64_t i = 0; i < n * d; i++)
        if (!isfinite(y[i])) {
            rc = nbs_error_set(err, NBS_ERR_INPUT, "integration metrics: embedding value at cell %lld, dimension "
                               "%lld is not finite", (long long)(i / d) + 1, (long long)(i % d) + 1);
            goto done;
        }
    if (metric == NBS_METRIC_COSINE)
        for (int64_t i = 0; i < n; i++) {
            float norm = cblas_snrm2(d, y + i * d, 1);
            if (norm > 0) cblas_sscal(d, 1.0f / norm, y + i * d, 1);
        }
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++)
        if (labels && labels[i] >= 0) {
            memcpy(yl + m * d, y + i * d, (size_t)d * sizeof *yl);
            bl[m] = batch ? batch[i] : 0;
            ll[m] = labels[i];
            rows[m] = m;
            m++;
        }
    r->n_labelled = m;
    int *bcount = nbs_calloc((size_t)(n_batches > 0 ? n_batches : 1), sizeof *bcount, err);
    int *lcount = nbs_calloc((size_t)(n_labels > 0 ? n_labels : 1), sizeof *lcount, err);
    if (!bcount || !lcount) {
        free(bcount);
        free(lcount);
        rc = NBS_ERR_NOMEM;
        goto done;
    }
    for (int64_t i = 0; batch && i < n; i++) r->n_batches += !bcount[batch[i]]++;
    for (int64_t i = 0; i < m; i++) r->n_labels += !lcount[ll[i]]++;
    free(bcount);
    free(lcount);
    const int has_batch = r->n_batches >= 2, has_labels = r->n_labels >= 2 && m > NBS_INTEGRATION_GRAPH_K;
    if (!batch) add_note(r, "no batch: batch-correction scores not computed");
    else if (!has_batch) add_note(r, "one batch: batch-correction scores not defined");
    if (!labels) add_note(r, "no labels: biology scores, batch ASW and graph connectivity not computed");
    else if (!has_labels)
        add_note(r, r->n_labels < 2 ? "fewer than 2 labels: biology scores not defined"
                                    : "too few labelled cells for the neighbour graph");
    if (labels && m < n) add_note(r, "unlabelled cells left out of the label-based scores");

    if (has_batch && n > 1) {
        double med = NAN;
        if ((rc = median_lisi(y, n, d, batch, n_batches, nb, seed, r, &med, err))) goto done;
        r->ilisi = (med - 1) / (r->n_batches - 1);
    }
    if (has_labels) {
        double med = NAN;
        if ((rc = median_lisi(yl, m, d, ll, n_labels, nb, seed, r, &med, err))) goto done;
        r->clisi = (r->n_labels - med) / (r->n_labels - 1);
        if ((rc = nbs_silhouette(yl, d, rows, m, ll, n_labels, s, err))) goto done;
        double mean = 0;
        for (int64_t i = 0; i < m; i++) mean += s[i];
        r->label_asw = (mean / (double)m + 1) / 2;
        nbs_knn_info info;
        if ((rc = nbs_graph_knn(yl, m, d, NBS_INTEGRATION_GRAPH_K - 1, NBS_METRIC_EUCLIDEAN, nb, seed, &knn, &info,
                                err)) ||
            (rc = nbs_graph_connectivities(&knn, &conn, err)) || (rc = leiden_sweep(&conn, ll, seed, r, err)))
            goto done;
        knn_note(r, &info);
        if (has_batch) {
            if ((rc = batch_asw(yl, m, d, bl, n_batches, ll, n_labels, &r->batch_asw, err)) ||
                (rc = graph_connectivity(&conn, ll, n_labels, &r->graph_connectivity, err)))
                goto done;
            if ((rc = nbs_cramers_v(bl, ll, m, &r->cramers_v, err))) goto done;
            if ((rc = one_batch_labels(bl, ll, m, n_labels, label_names, r, err))) goto done;
            r->confounded = r->cramers_v >= NBS_CONFOUNDED_CRAMERS_V || r->one_batch_labels[0];
        }
    }
    const double bat[3] = {r->ilisi, r->batch_asw, r->graph_connectivity};
    const double bio[5] = {r->knn_accuracy, r->clisi, r->nmi, r->ari, r->label_asw};
    r->batch_score = mean_finite(bat, 3);
    r->bio_score = mean_finite(bio, 5);
    r->overall = isfinite(r->batch_score) && isfinite(r->bio_score) ? 0.4 * r->batch_score + 0.6 * r->bio_score : NAN;
done:
    nbs_graph_free(&knn);
    nbs_graph_free(&conn);
    free(y);
    free(yl);
    free(bl);
    free(ll);
    free(rows);
    free(s);
    return rc;
}
