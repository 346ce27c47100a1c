/* The Gaussian-mixture prior of the discrete latent and its entropy loss (mixture.h). Every
 * sum is in double; the KL of c is taken from log-probabilities, so a category whose
 * probability underflows adds 0 rather than 0 * log 0. */
#include "nbsphere/mixture.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* latent.c's clamp of the posterior's log variance (its gradient is 0 outside) */
#define Q_LOGVAR_MIN -15.0f
#define Q_LOGVAR_MAX 10.0f

static double clampd(double v, double lo, double hi) { return v < lo ? lo : (v > hi ? hi : v); }

void nbs_mixture_softmax(const float *logits, int n, int K, double *log_prob, double *prob) {
    for (int64_t i = 0; i < n; i++) {
        const float *a = logits + i * K;
        double mx = a[0], s = 0;
        for (int c = 1; c < K; c++) mx = a[c] > mx ? a[c] : mx;
        for (int c = 0; c < K; c++) s += exp(a[c] - mx);
        const double lse = mx + log(s);
        for (int c = 0; c < K; c++) {
            log_prob[i * K + c] = a[c] - lse;
            prob[i * K + c] = exp(a[c] - lse);
        }
    }
}

/* log p(c) (K) from the prior's logits */
static void prior_log(const nbs_mixture *p, double *lp) {
    double mx = p->logits[0], s = 0;
    for (int c = 1; c < p->K; c++) mx = p->logits[c] > mx ? p->logits[c] : mx;
    for (int c = 0; c < p->K; c++) s += exp(p->logits[c] - mx);
    for (int c = 0; c < p->K; c++) lp[c] = p->logits[c] - mx - log(s);
}

/* KL(N(m, e^v) || N(mu, e^s)) of one dimension */
static double kl_1(double m, double v, double mu, double s) {
    const double dm = m - mu;
    return 0.5 * (s - v + (exp(v) + dm * dm) * exp(-s) - 1);
}

void nbs_mixture_kl(const nbs_mixture *p, const float *head, const double *log_prob, const double *prob, int n,
                    double *kl) {
    const int K = p->K, d = p->d;
    double lpc[NBS_MAX_DISCRETE];
    prior_log(p, lpc);
    for (int64_t i = 0; i < n; i++) {
        const float *m = head + i * 2 * d, *lv = m + d;
        const double *q = prob + i * K, *lq = log_prob + i * K;
        double *k = kl + i * (d + 1);
        for (int j = 0; j < d; j++) {
            const double v = clampd(lv[j], Q_LOGVAR_MIN, Q_LOGVAR_MAX);
            double s = 0;
            for (int c = 0; c < K; c++)
                s += q[c] * kl_1(m[j], v, p->mean[c * d + j],
                                 clampd(p->logvar[c * d + j], NBS_MIX_LOGVAR_MIN, NBS_MIX_LOGVAR_MAX));
            k[j] = s;
        }
        double kc = 0;
        for (int c = 0; c < K; c++) kc += q[c] * (lq[c] - lpc[c]);
        k[d] = kc;
    }
}

void nbs_mixture_backward(const nbs_mixture *p, const float *head, const double *log_prob, const double *prob, int n,
                          const float *kl_weight, const float *dprob_extra, float *dhead, float *dlogits,
                          float *dprior_logits, float *dmean, float *dlogvar) {
    const int K = p->K, d = p->d;
    const double wc = kl_weight[d];
    double lpc[NBS_MAX_DISCRETE], pc[NBS_MAX_DISCRETE], g[NBS_MAX_DISCRETE];
    prior_log(p, lpc);
    for (int c = 0; c < K; c++) pc[c] = exp(lpc[c]);
    for (int64_t i = 0; i < n; i++) {
        const float *m = head + i * 2 * d, *lv = m + d;
        float *dm = dhead + i * 2 * d, *dlv = dm + d;
        const double *q = prob + i * K, *lq = log_prob + i * K;
        /* g_c = d loss / d q(c|x): the weighted KL_cj, the KL of c, the extra term */
        for (int c = 0; c < K; c++) g[c] = wc * (lq[c] - lpc[c] + 1) + (dprob_extra ? dprob_extra[i * K + c] : 0);
        for (int j = 0; j < d; j++) {
            const double w = kl_weight[j];
            if (w == 0) continue;
            const double v = clampd(lv[j], Q_LOGVAR_MIN, Q_LOGVAR_MAX), ev = exp(v);
            const int v_free = lv[j] >= Q_LOGVAR_MIN && lv[j] <= Q_LOGVAR_MAX;
            double gm = 0, gv = 0;
            for (int c = 0; c < K; c++) {
                const float sraw = p->logvar[c * d + j];
                const double s = clampd(sraw, NBS_MIX_LOGVAR_MIN, NBS_MIX_LOGVAR_MAX), es = exp(-s);
                const double diff = m[j] - p->mean[c * d + j];
                g[c] += w * kl_1(m[j], v, p->mean[c * d + j], s);
                const double qw = q[c] * w;
                gm += qw * diff * es;
                gv += qw * 0.5 * (ev * es - 1);
                dmean[c * d + j] -= (float)(qw * diff * es);
                if (sraw >= NBS_MIX_LOGVAR_MIN && sraw <= NBS_MIX_LOGVAR_MAX)
                    dlogvar[c * d + j] += (float)(qw * 0.5 * (1 - (ev + diff * diff) * es));
            }
            dm[j] += (float)gm;
            if (v_free) dlv[j] += (float)gv;
        }
        /* through the softmax: d/da_k = q_k (g_k - sum_c q_c g_c) */
        double mean_g = 0;
        for (int c = 0; c < K; c++) mean_g += q[c] * g[c];
        for (int c = 0; c < K; c++) dlogits[i * K + c] = (float)(q[c] * (g[c] - mean_g));
        /* KL_c's prior side: d/dr_k of -sum_c q_c log p_c = p_k - q_k */
        for (int c = 0; wc != 0 && c < K; c++) dprior_logits[c] += (float)(wc * (pc[c] - q[c]));
    }
}

double nbs_mixture_mean_entropy(const double *prob, int n, int K, double *qbar) {
    double qb[NBS_MAX_DISCRETE] = {0}, h = 0;
    for (int64_t i = 0; i < n; i++)
        for (int c = 0; c < K; c++) qb[c] += prob[i * K + c];
    for (int c = 0; c < K; c++) {
        qb[c] /= n > 0 ? n : 1;
        if (qb[c] > 0) h -= qb[c] * log(qb[c]);
        if (qbar) qbar[c] = qb[c];
    }
    return h;
}

double nbs_mixture_entropy_loss(const double *log_prob, const double *prob, int n, int K, double target,
                                double weight, double cell_weight, double scale, float *dprob, double *entropy) {
    double qb[NBS_MAX_DISCRETE], loss = 0;
    const double h = nbs_mixture_mean_entropy(prob, n, K, qb);
    if (entropy) *entropy = h;
    memset(dprob, 0, sizeof(float) * (size_t)n * K);
    if (n < 1) return 0;
    /* per cell: d/dq_ic of -(1/n) q_ic log q_ic = -(log q_ic + 1)/n */
    for (int64_t i = 0; cell_weight > 0 && i < n; i++)
        for (int c = 0; c < K; c++) {
            const double lq = log_prob[i * K + c];
            loss -= cell_weight * prob[i * K + c] * lq / n;
            dprob[i * K + c] = (float)(-scale * cell_weight * (lq + 1) / n);
        }
    if (weight <= 0 || h >= target) return loss;
    /* d(-H)/dqbar_c = log qbar_c + 1, and dqbar_c/dq(c|x_i) = 1/n; a category of qbar 0 has
     * q(c|x_i) = 0 in every cell, where the softmax passes no gradient anyway */
    for (int c = 0; c < K; c++) {
        const float gc = qb[c] > 0 ? (float)(scale * weight * (log(qb[c]) + 1) / n) : 0.0f;
        for (int64_t i = 0; i < n; i++) dprob[i * K + c] += gc;
    }
    return loss + weight * (target - h);
}
