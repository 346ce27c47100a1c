#include "nbsphere/likelihood.h"
#include "nbsphere/nn.h"

#include <gsl/gsl_sf_psi.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>

#include "vecmath_internal.h" /* libmvec's vector exp and log for the simd loops */

/* Most counts are small integers: for those, lgamma(x + t) - lgamma(t) and psi(x + t) - psi(t)
 * are a short product and sum (Gamma's recurrence), and lgamma(x + 1) is a table. This keeps
 * the special functions, the costliest part of the likelihood, off the common path. */
#define SMALL_COUNT 16
static double LGAMMA_X1[SMALL_COUNT + 1];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;
static void fill_table(void) {
    for (int x = 0; x <= SMALL_COUNT; x++) LGAMMA_X1[x] = lgamma(x + 1.0);
}

static double lgamma_x1(double x) {
    return (x <= SMALL_COUNT && x == (int)x) ? LGAMMA_X1[(int)x] : lgamma(x + 1);
}

/* The scratch of a row of per-gene theta (nbs_lik_batch.work): NBS_LIK_WORK rows of G values;
 * W_DLG(x), W_DPSI(x): the cached small_diffs of a count x <= NBS_LIK_SMALL_CACHED. */
enum { W_LGAMMA, W_PSI, W_THETA, W_SMALL };
#define W_DLG(x) (W_SMALL + 2 * ((x) - 1))
#define W_DPSI(x) (W_SMALL + 2 * ((x) - 1) + 1)

/* For a small integer count x: lgamma(x + t) - lgamma(t) = log prod_k (t + k) and psi(x + t) -
 * psi(t) = sum_k 1 / (t + k), k < x. One home for both the cache and the direct path, so that a
 * cached value is the direct one bit for bit. */
static void small_diffs(int x, double t, double *dlg, double *dpsi) {
    double prod = 1, sum = 0;
    for (int k = 0; k < x; k++) {
        prod *= t + k;
        sum += 1 / (t + k);
    }
    *dlg = log(prod);
    *dpsi = sum;
}

/* lgamma(x + t) - lgamma(t) and psi(x + t) - psi(t). c: the gene's column of its work rows
 * (stride G), or NULL; each value there is NaN where not computed: lgamma(t), psi(t) for large
 * counts, and small_diffs for the counts up to NBS_LIK_SMALL_CACHED (96 % of the nonzeros of the
 * simulated data, 60 % of them counts of 1). */
static void gamma_diffs(double x, double t, const double *c, int64_t G, double *dlg, double *dpsi) {
    if (x <= SMALL_COUNT && x == (int)x && t < 1e15) { /* the product stays finite */
        const int k = (int)x;
        if (k >= 1 && k <= NBS_LIK_SMALL_CACHED && c && !isnan(c[W_DLG(k) * G])) {
            *dlg = c[W_DLG(k) * G];
            *dpsi = c[W_DPSI(k) * G];
            return;
        }
        small_diffs(k, t, dlg, dpsi);
        return;
    }
    const double lg_t = c && !isnan(c[W_LGAMMA * G]) ? c[W_LGAMMA * G] : lgamma(t);
    const double psi_t = c && !isnan(c[W_PSI * G]) ? c[W_PSI * G] : gsl_sf_psi(t);
    *dlg = lgamma(x + t) - lg_t;
    *dpsi = gsl_sf_psi(x + t) - psi_t;
}


/* rho = softmax(a) into rho[G]; returns log-sum-exp. */
static double softmax(const float *a, int G, double *rho) {
    /* The maximum in MAXW lanes, then across them: clang (14) cannot vectorise a float max
     * reduction without -ffast-math's no-NaN promise (and -Werror turns its "loop not
     * vectorized" into an error), while a lane-wise max vectorises with any compiler. The
     * result is the same in any order. */
    enum { MAXW = 16 };
    float lane[MAXW];
    for (int k = 0; k < MAXW; k++) lane[k] = -INFINITY;
    int g0 = 0;
    for (; g0 + MAXW <= G; g0 += MAXW)
#pragma omp simd
        for (int k = 0; k < MAXW; k++) lane[k] = a[g0 + k] > lane[k] ? a[g0 + k] : lane[k];
    for (; g0 < G; g0++) lane[0] = a[g0] > lane[0] ? a[g0] : lane[0];
    float amax = lane[0];
    for (int k = 1; k < MAXW; k++) amax = lane[k] > amax ? lane[k] : amax;
    double z = 0;
#pragma omp simd reduction(+ : z)
    for (int g = 0; g < G; g++) {
        rho[g] = exp((double)a[g] - amax);
        z += rho[g];
    }
    const double inv_z = 1 / z;
#pragma omp simd
    for (int g = 0; g < G; g++) rho[g] *= inv_z;
    return amax + log(z);
}

/* NB, the default, in two passes: every entry as if its count were 0 (branch-free, vectorised:
 * one log per entry, kept in lthmu), then the nonzero entries' extra terms. s_g = d ll_g / d log mu_g
 * and t_g = d ll_g / d log theta_g go to the rows s and t. */
/* The cell's row of per-gene log theta (0 without batches). */
static int64_t theta_row(const nbs_lik_batch *b, int i) { return b->theta_row ? b->theta_row[i] : 0; }

static double cell_nb(const nbs_lik_batch *b, int i, const double *rho, double lse, double *s, double *t,
                      double *lthmu, double *wrow) {
    const int G = b->G, per_cell = b->theta_per_cell;
    const float *a = b->logits + (int64_t)i * G;
    const int64_t row = per_cell ? i : theta_row(b, i);
    const float *lt = b->log_theta + row * G;
    const double *work = per_cell ? NULL : b->work + row * NBS_LIK_WORK * G; /* the row's W_* */
    const double *th_gene = per_cell ? NULL : work + W_THETA * (int64_t)G;
    const double *th_row = per_cell ? t : th_gene; /* theta per entry: t holds it until overwritten */
    if (per_cell)
#pragma omp simd
        for (int g = 0; g < G; g++) t[g] = exp((double)lt[g]);
    const double l = b->library[i];
    double ll = 0;
#pragma omp simd reduction(+ : ll)
    for (int g = 0; g < G; g++) {
        const double th = th_row[g], mu = l * rho[g];
        const double log_thmu = log(th + mu), w = th / (th + mu);
        lthmu[g] = log_thmu;
        wrow[g] = w;
        ll += th * (lt[g] - log_thmu); /* log NB(0 | mu, theta) */
        s[g] = -w * mu;
        t[g] = th * (lt[g] - log_thmu + 1 - w);
    }
    const nbs_matrix *X = b->X;
    const int64_t r = b->rows ? b->rows[i] : i;
    const double log_l = l > 0 ? log(l) : 0;
    for (int64_t p = X->indptr[r]; p < X->indptr[r + 1]; p++) {
        const int g = (int)X->indices[p];
        const double x = X->data[p];
        if (x == 0) continue;
        /* per gene, theta and w are the dense pass's; per cell, theta is computed again here */
        const double th = per_cell ? exp((double)lt[g]) : th_gene[g];
        const double log_thmu = lthmu[g], w = per_cell ? th / (th + l * rho[g]) : wrow[g];
        double dlg, dpsi;
        gamma_diffs(x, th, per_cell ? NULL : work + g, G, &dlg, &dpsi);
        ll += dlg - lgamma_x1(x) + x * (log_l + a[g] - lse - log_thmu);
        s[g] += w * x;
        t[g] += th * dpsi - w * x;
    }
    return ll;
}

/* ZINB and Poisson: one pass per entry with the count at hand. */
static double cell_general(const nbs_lik_batch *b, int i, const double *rho, double lse, double *s, double *t,
                           float scale, float *dzi) {
    const int G = b->G;
    const float *a = b->logits + (int64_t)i * G;
    const int per_cell = b->theta_per_cell;
    const int64_t row = per_cell ? i : theta_row(b, i);
    const float *lt_row = b->log_theta ? b->log_theta + row * G : NULL;
    const double *work = b->log_theta && !per_cell ? b->work + row * NBS_LIK_WORK * G : NULL; /* the row's W_* */
    const double *th_gene = work ? work + W_THETA * (int64_t)G : NULL;
    const float *zl = b->zi_logits ? b->zi_logits + (int64_t)i * G : NULL;
    const nbs_matrix *X = b->X;
    const int64_t r = b->rows ? b->rows[i] : i;
    int64_t p = X->indptr[r];
    const int64_t pe = X->indptr[r + 1];
    const double l = b->library[i];
    const double log_l = l > 0 ? log(l) : 0;
    double ll = 0;
    for (int g = 0; g < G; g++) {
        double x = 0;
        if (p < pe && X->indices[p] == g) x = X->data[p++];
        const double mu = l * rho[g];
        if (b->kind == NBS_LIK_POISSON) {
            ll -= mu;
            if (x > 0) ll += x * (log_l + a[g] - lse) - lgamma_x1(x);
            s[g] = x - mu;
            continue;
        }
        const double lt = lt_row[g], th = per_cell || !th_gene ? exp(lt) : th_gene[g];
        const double log_thmu = log(th + mu);
        const double nb0 = th * (lt - log_thmu); /* log NB(0) and the dense part of every entry */
        double dnb_dlt = th * (lt - log_thmu + 1 - (x + th) / (th + mu)), ds = th * (x - mu) / (th + mu);
        double nb = nb0;
        if (x > 0) {
            double dlg, dpsi;
            gamma_diffs(x, th, work ? work + g : NULL, G, &dlg, &dpsi);
            nb += dlg - lgamma_x1(x) + x * (log_l + a[g] - lse - log_thmu);
            dnb_dlt += th * dpsi;
        }
        /* ZINB */
        const double q = zl[g];
        if (x > 0) {
            ll += nb - nbs_softplus(q); /* log(1 - pi) + log NB(x) */
            if (dzi) dzi[g] = (float)(scale * -(1 / (1 + exp(-q))));
        } else {
            /* log(pi + (1 - pi) NB(0)), pi = sigmoid(q), in log space */
            const double lp = -nbs_softplus(-q), lnp = -nbs_softplus(q) + nb0;
            const double m = lp > lnp ? lp : lnp;
            const double ll_g = m + log(exp(lp - m) + exp(lnp - m));
            const double w = exp(lnp - ll_g); /* share of the zero the NB explains */
            const double pi = exp(lp);
            if (dzi) dzi[g] = (float)(scale * pi * (1 - pi) * (1 - exp(nb0)) / exp(ll_g));
            ll += ll_g;
            ds *= w;
            dnb_dlt *= w;
        }
        s[g] = ds;
        t[g] = dnb_dlt;
    }
    return ll;
}

/* One cell: returns its log-likelihood; gradients (if asked) into the row pointers. */
static double cell_eval(const nbs_lik_batch *b, int i, float scale, float *da, float *dlt, float *dzi) {
    const int G = b->G;
    double *rho = b->thread_rows + (int64_t)omp_get_thread_num() * NBS_LIK_THREAD_ROWS * G;
    double *s = rho + G, *t = rho + 2 * (int64_t)G, *lthmu = rho + 3 * (int64_t)G, *wrow = rho + 4 * (int64_t)G;
    const double lse = softmax(b->logits + (int64_t)i * G, G, rho);
    const double ll = b->kind == NBS_LIK_NB ? cell_nb(b, i, rho, lse, s, t, lthmu, wrow)
                                            : cell_general(b, i, rho, lse, s, t, scale, dzi);
    if (da) { /* d ll / d a_g = s_g - rho_g * sum_h s_h */
        double ssum = 0;
#pragma omp simd reduction(+ : ssum)
        for (int g = 0; g < G; g++) ssum += s[g];
#pragma omp simd
        for (int g = 0; g < G; g++) da[g] = (float)(scale * (s[g] - rho[g] * ssum));
    }
    if (dlt)
#pragma omp simd
        for (int g = 0; g < G; g++) dlt[g] = (float)(scale * t[g]);
    return ll;
}

double nbs_lik_eval(const nbs_lik_batch *b, double *loglik, float scale, float *dlogits,
                    float *dlog_theta, float *dzi_logits) {
    const int64_t G = b->G;
    pthread_once(&table_once, fill_table);
    const int threads = omp_get_max_threads() < b->n_threads ? omp_get_max_threads() : b->n_threads;
    if (b->kind != NBS_LIK_POISSON && !b->theta_per_cell) {
        /* Per row and gene: theta, and what gamma_diffs can reuse for the genes a count of this
         * batch asks for: lgamma and psi of theta (a count not a small integer), small_diffs (a
         * count up to NBS_LIK_SMALL_CACHED). The others stay NaN, which gamma_diffs reads as
         * "compute it". Only the rows the batch's cells use are prepared: a NaN first theta of
         * a thread's genes marks the row not prepared yet (one that is NaN is prepared again, to
         * the same values). Threads split the genes and each reads every stored count: what a
         * (row, gene) holds depends on that pair alone, the same for any number of threads. */
#pragma omp parallel num_threads(threads)
        {
            /* in blocks of 64 genes, so that every thread's loops vectorise the genes a single
             * thread's would (libmvec's exp and glibc's scalar one differ in the last bit) */
            const int t = omp_get_thread_num(), T = omp_get_num_threads();
            const int64_t blocks = (G + 63) / 64, b0 = blocks * t / T * 64, b1 = blocks * (t + 1) / T * 64;
            const int64_t g0 = b0 < G ? b0 : G, g1 = t == T - 1 || b1 > G ? G : b1;
            for (int64_t r = 0; g1 > g0 && r < b->theta_rows; r++) b->work[(r * NBS_LIK_WORK + W_THETA) * G + g0] = NAN;
            const nbs_matrix *X = b->X;
            for (int i = 0; g1 > g0 && i < b->n; i++) {
                const int64_t r = b->rows ? b->rows[i] : i, tr = theta_row(b, i);
                double *work = b->work + tr * NBS_LIK_WORK * G;
                if (isnan(work[W_THETA * G + g0])) {
                    for (int64_t g = g0; g < g1; g++) work[W_THETA * G + g] = exp(b->log_theta[tr * G + g]);
                    for (int64_t k = 0; k < NBS_LIK_WORK; k++)
                        if (k != W_THETA)
                            for (int64_t g = g0; g < g1; g++) work[k * G + g] = NAN;
                }
                for (int64_t p = X->indptr[r]; p < X->indptr[r + 1]; p++) {
                    if (X->indices[p] < g0 || X->indices[p] >= g1) continue;
                    const double x = X->data[p];
                    double *c = work + X->indices[p];
                    const double th = c[W_THETA * G];
                    if (x <= SMALL_COUNT && x == (int)x) {
                        const int k = (int)x;
                        if (k >= 1 && k <= NBS_LIK_SMALL_CACHED && th < 1e15 && isnan(c[W_DLG(k) * G]))
                            small_diffs(k, th, &c[W_DLG(k) * G], &c[W_DPSI(k) * G]);
                    } else if (isnan(c[W_LGAMMA * G])) {
                        c[W_LGAMMA * G] = lgamma(th);
                        c[W_PSI * G] = gsl_sf_psi(th);
                    }
                }
            }
        }
    }
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int i = 0; i < b->n; i++)
        loglik[i] = cell_eval(b, i, scale, dlogits ? dlogits + i * G : NULL,
                              dlog_theta ? dlog_theta + i * G : NULL,
                              dzi_logits ? dzi_logits + i * G : NULL);
    double total = 0; /* summed in order, so a seed reproduces the logged loss bit for bit */
    for (int i = 0; i < b->n; i++) total += loglik[i];
    return total;
}
