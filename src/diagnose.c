/* Posterior-collapse diagnostics: estimators on posterior parameters. */
#include "nbsphere/diagnose.h"

#include <gsl/gsl_randist.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* ---- the diagnosed cells split over the processes of a data-parallel run ----
 * Each process computes the per-cell terms on its part of the diagnosed cells; their sums go
 * through the sum hook (the same bits on every process) and a mean is the sum over N. What needs
 * every cell at once (I(x;z), the quantiles of kappa) is computed at process 0 on the gathered
 * posteriors, in the diagnosed order and with the rng one process draws from, and sent to the
 * others through the sum hook. Alone r is NULL and the sums are this process's. */
typedef struct {
    const nbs_train_reduce *r; /* NULL alone */
    int64_t N;                 /* the diagnosed cells over every process */
    int64_t *counts;           /* [size] each process's cells, in rank order; NULL alone */
} part;

static int part_lead(const part *p) { return !p->r || p->r->rank == 0; }

/* buf[n] summed over the processes. */
static int part_sum(const part *p, double *buf, int64_t n, nbs_error *err) {
    return p->r ? p->r->sum(p->r->user, buf, n, err) : NBS_OK;
}

/* Process 0's v[n] on every process. */
static int part_share(const part *p, double *v, int n, nbs_error *err) {
    for (int k = 0; k < n && !part_lead(p); k++) v[k] = 0;
    return part_sum(p, v, n, err);
}

/* This process's part of n cells among reduce's processes (NULL or one: alone); every part must
 * hold a cell, which every process checks alike. */
static int part_begin(part *p, const nbs_train_reduce *reduce, int64_t n, nbs_error *err) {
    memset(p, 0, sizeof *p);
    p->N = n;
    if (!reduce || reduce->size <= 1) return NBS_OK;
    const int P = reduce->size;
    double *k = nbs_calloc((size_t)P, sizeof *k, err); /* (processes) */
    if (!k || !(p->counts = nbs_malloc(sizeof *p->counts * (size_t)P, err))) {
        free(k);
        return NBS_ERR_NOMEM;
    }
    p->r = reduce;
    k[reduce->rank] = (double)n;
    int st = part_sum(p, k, P, err);
    p->N = 0;
    for (int q = 0; q < P && !st; q++) p->N += p->counts[q] = (int64_t)k[q];
    for (int q = 0; q < P && !st; q++)
        if (!p->counts[q])
            st = nbs_error_set(err, NBS_ERR_USAGE, "diagnostics over %d processes: process %d has none of the %lld "
                               "diagnosed cells; run on at most %lld processes or raise diagnose.subsample", P, q,
                               (long long)p->N, (long long)p->N);
    free(k);
    return st;
}

/* Every process's rows of mine ([n x width], this process's cells) at process 0 in rank order:
 * *all [N x width], allocated into *own; alone *all is mine; elsewhere NULL. */
static int part_gather(const part *p, const float *mine, int width, const float **all, float **own, nbs_error *err) {
    *own = NULL;
    *all = p->r ? NULL : mine;
    if (!p->r) return NBS_OK;
    const int P = p->r->size;
    int64_t *bytes = nbs_malloc(sizeof *bytes * (size_t)P, err); /* (processes) */
    if (!bytes) return NBS_ERR_NOMEM;
    for (int q = 0; q < P; q++) bytes[q] = p->counts[q] * width * (int64_t)sizeof(float);
    int st = NBS_OK;
    if (part_lead(p) && !(*own = nbs_malloc(sizeof(float) * (size_t)(p->N * width), err))) st = NBS_ERR_NOMEM;
    if (!st) st = p->r->gather(p->r->user, mine, bytes, *own, err);
    free(bytes);
    *all = *own;
    return st;
}

/* The variance over the diagnosed cells (N - 1 in the denominator) of each column of x (this
 * process's [n x d]) into var[d]: the mean, then the squared deviations from it, each summed. */
static int variance_across(const part *p, const float *x, int64_t n, int d, double *var, nbs_error *err) {
    double mean[NBS_MAX_KL_TERMS];
    for (int j = 0; j < d; j++) {
        mean[j] = 0;
        for (int64_t i = 0; i < n; i++) mean[j] += x[i * d + j];
    }
    int st = part_sum(p, mean, d, err);
    for (int j = 0; j < d && !st; j++) {
        mean[j] /= (double)p->N;
        var[j] = 0;
        for (int64_t i = 0; i < n; i++) var[j] += (x[i * d + j] - mean[j]) * (x[i * d + j] - mean[j]);
    }
    if (!st) st = part_sum(p, var, d, err);
    for (int j = 0; j < d && !st; j++) var[j] /= (double)(p->N - 1);
    return st;
}

/* ---- the collapse report ---- */

#define JAC_STEP 1e-2 /* central differences of the decoder, in units of z */

const char *nbs_dim_verdict_word(nbs_dim_verdict v) {
    return v == NBS_DIM_ACTIVE ? "active" : v == NBS_DIM_COLLAPSED ? "collapsed" : "inconsistent";
}

const char *nbs_model_verdict_word(nbs_model_verdict v) {
    return v == NBS_MODEL_HEALTHY ? "healthy" : v == NBS_MODEL_PARTIAL ? "partially collapsed" : "collapsed";
}

void nbs_collapse_report_free(nbs_collapse_report *r) {
    if (!r) return;
    free(r->category_mass), free(r->category_cells);
    free(r->kl), free(r->activity), free(r->sens_weight), free(r->sens_jacobian), free(r->decoder_nats);
    free(r->verdict);
    memset(r, 0, sizeof *r);
}

/* log softmax of each row, in place */
static void log_softmax_rows(float *a, int64_t n, int G) {
    for (int64_t i = 0; i < n; i++) {
        float *r = a + i * G;
        double mx = -INFINITY, s = 0;
        for (int g = 0; g < G; g++) mx = r[g] > mx ? r[g] : mx;
        for (int g = 0; g < G; g++) s += exp(r[g] - mx);
        const double lse = mx + log(s);
        for (int g = 0; g < G; g++) r[g] = (float)(r[g] - lse);
    }
}

/* Two measures of how much the decoder responds to z_j, by central differences along dir_j (e_j,
 * or its tangent projection at z on the sphere), at each cell's posterior location:
 *   sens[j]  = E_x RMS_g |d log mu_g / d z_j|  (log mu = log l + log softmax(logits): l cancels);
 *   nats[j]  = E_x 1/2 s^2 sum_g I_g (d log mu_g / d z_j)^2, the expected KL between the decoder's
 *              count distributions at z and at z moved by one prior standard deviation s along
 *              z_j (s^2 = 1 for the N(0, I) prior, 1/d per coordinate on the uniform sphere), with
 *              I_g = mu theta / (mu + theta) the NB Fisher information in log mu (mu for Poisson;
 *              ZINB's zero inflation is left out, which overstates it a little).
 * nats is what listening costs: a dimension the encoder has abandoned carries prior noise, so a
 * decoder that still responds to it loses about nats[j] per cell in expected likelihood, and
 * training drives it towards 0; a dimension in use carries the cell-to-cell differences, many
 * nats. The raw Jacobian has no such scale (it grows with the number of genes kept and knows
 * nothing of depth). Cells (this process's) go through the decoder JAC_CHUNK at a time; the sums
 * over them are added over the processes and divided by the diagnosed cells. */
#define JAC_CHUNK 128
static int decode_at(const nbs_model *m, nbs_workspace *w, const nbs_cells *c, int layer, const float *z, float *logits,
                     float *lt, nbs_error *err) {
    return layer < 0 ? nbs_model_decode_logits(m, w, c, z, logits, lt, err)
                     : nbs_model_decode_layer(m, w, c, layer, z, logits, lt, err);
}

/* layer < 0: z is the decoder's input; a ladder's layer: z is that layer's, the layers below
 * follow it through the top-down path (nbs_model_decode_layer). */
static int decoder_sensitivity(const part *p, const nbs_model *m, nbs_workspace *w, const nbs_cells *cells, int layer,
                               const float *loc, const double *lib, int d, int sphere, double *sens, double *nats,
                               nbs_error *err) {
    const int G = nbs_model_n_genes(m);
    const int64_t n = cells->n;
    const int64_t c = n < JAC_CHUNK ? n : JAC_CHUNK;
    const double s2 = sphere ? 1.0 / d : 1.0;
    float *zp = malloc(sizeof(float) * c * d), *zm = malloc(sizeof(float) * c * d);
    float *lp = malloc(sizeof(float) * c * G), *lm = malloc(sizeof(float) * c * G);
    float *info = malloc(sizeof(float) * c * G), *lt = malloc(sizeof(float) * c * G); /* I_g; log theta */
    int st = NBS_OK;
    if (!zp || !zm || !lp || !lm || !info || !lt)
        st = nbs_error_set(err, NBS_ERR_NOMEM, "out of memory for the decoder sensitivity");
    for (int j = 0; j < d; j++) sens[j] = nats[j] = 0;
    for (int64_t i0 = 0; i0 < n && !st; i0 += c) {
        const int64_t nc = n - i0 < c ? n - i0 : c;
        const nbs_cells part = nbs_cells_slice(cells, i0, nc); /* their covariates */
        if ((st = decode_at(m, w, &part, layer, loc + i0 * d, info, lt, err))) break;
        log_softmax_rows(info, nc, G);
        for (int64_t i = 0; i < nc; i++)
            for (int g = 0; g < G; g++) {
                const double mu = lib[i0 + i] * exp(info[i * G + g]), th = exp(lt[i * G + g]);
                info[i * G + g] = (float)(isinf(th) ? mu : mu * th / (mu + th));
            }
        for (int j = 0; j < d && !st; j++) {
            memcpy(zp, loc + i0 * d, sizeof(float) * nc * d);
            memcpy(zm, loc + i0 * d, sizeof(float) * nc * d);
            for (int64_t i = 0; i < nc; i++) {
                /* direction: e_j, minus its component along z on the sphere (tangent space) */
                const float *z = loc + (i0 + i) * d;
                double proj = sphere ? z[j] : 0;
                for (int k = 0; k < d; k++) {
                    double dir = (k == j) - proj * (sphere ? z[k] : 0);
                    zp[i * d + k] += (float)(JAC_STEP * dir);
                    zm[i * d + k] -= (float)(JAC_STEP * dir);
                }
            }
            if ((st = decode_at(m, w, &part, layer, zp, lp, NULL, err))) break;
            if ((st = decode_at(m, w, &part, layer, zm, lm, NULL, err))) break;
            log_softmax_rows(lp, nc, G);
            log_softmax_rows(lm, nc, G);
            for (int64_t i = 0; i < nc; i++) {
                double ss = 0, fi = 0;
                for (int g = 0; g < G; g++) {
                    const double dd = ((double)lp[i * G + g] - lm[i * G + g]) / (2 * JAC_STEP);
                    ss += dd * dd;
                    fi += info[i * G + g] * dd * dd;
                }
                sens[j] += sqrt(ss / G);
                nats[j] += 0.5 * s2 * fi;
            }
        }
    }
    free(zp), free(zm), free(lp), free(lm), free(info), free(lt);
    double sum[2 * NBS_MAX_KL_TERMS]; /* sens, nats */
    for (int j = 0; j < d && !st; j++) sum[j] = sens[j], sum[d + j] = nats[j];
    if (!st) st = part_sum(p, sum, 2 * d, err);
    for (int j = 0; j < d && !st; j++) sens[j] = sum[j] / (double)p->N, nats[j] = sum[d + j] / (double)p->N;
    return st;
}

/* "k inconsistent" split by which side is missing: a decoder that still responds to a dimension
 * the encoder has stopped using (it sees only prior noise there) is the usual shape of a fresh
 * collapse, since the decoder's weights outlive the information. */
static void describe_inconsistent(const nbs_collapse_report *r, char *buf, size_t n) {
    const int ignored = r->n_inconsistent - r->n_unsent;
    if (!r->n_inconsistent) snprintf(buf, n, "0 inconsistent");
    else if (!ignored)
        snprintf(buf, n, "%d inconsistent: the encoder sends nothing there, though the decoder still responds", r->n_unsent);
    else if (!r->n_unsent)
        snprintf(buf, n, "%d inconsistent: the decoder ignores what the encoder sends there", ignored);
    else
        snprintf(buf, n, "%d inconsistent: %d sending nothing the decoder still responds to, %d sending what "
                 "the decoder ignores", r->n_inconsistent, r->n_unsent, ignored);
}

/* The decoder uses z when log p(x | z at the posterior) beats log p(x | one constant z) by more
 * than two standard errors over the diagnosed cells (a one-sided test at about 2.3 %) and by more
 * than GAIN_MIN: per-cell log-likelihoods of thousands of nats summed in float carry rounding of
 * 1e-4 to 1e-3 nats, so a smaller gain is arithmetic, whose sign depends on the processor's
 * kernels (the collapse demo's is -1.6e-6 or +3.4e-6 +- 2.5e-7 on two of them). */
#define GAIN_Z 2.0
#define GAIN_MIN 0.01

static void model_verdict(nbs_collapse_report *r) {
    char incons[192];
    describe_inconsistent(r, incons, sizeof incons);
    const char *remedy_list =
        "KL warm-up (train.schedule: linear, train.warmup_epochs: 50) or cyclical annealing "
        "(train.schedule: cyclical); free bits (train.free_bits: 0.2); a weak decoder at the start "
        "(model.decoder_init_scale: 0.1); a smaller train.beta";
    if (r->z_unused) {
        /* whatever the per-dimension measures say: an embedding the decoder does no better with
         * than with a constant describes nothing it learned about the cells */
        r->model = NBS_MODEL_COLLAPSED;
        char why[96] = "";
        if (r->n_sending) snprintf(why, sizeof why, ", although %d of %d dimensions carry %s", r->n_sending, r->d,
                                   nbs_latent_ops_of(r->latent)->on_sphere ? "activity" : "KL");
        snprintf(r->summary, sizeof r->summary,
                 "collapsed: the decoder does not use z: its reconstruction gain over a constant z is "
                 "%.3g +- %.2g nats per cell (not above 0)%s", r->recon_gain, r->recon_gain_se, why);
        snprintf(r->remedies, sizeof r->remedies,
                 "if training diverged or overfitted (see the training curves): normalised hidden layers "
                 "(model.norm: batch), a lower train.learning_rate, gradient clipping (train.grad_clip: "
                 "10), fewer train.epochs or early stopping (train.patience: 20); if the KL won: %s",
                 remedy_list);
        return;
    }
    if (r->n_active == 0) {
        r->model = NBS_MODEL_COLLAPSED;
        snprintf(r->summary, sizeof r->summary,
                 "collapsed: none of the %d latent dimensions carries information the decoder uses "
                 "(%d collapsed, %s; reconstruction gain over a constant z: %.3g +- %.2g nats per "
                 "cell)", r->d, r->n_collapsed, incons, r->recon_gain, r->recon_gain_se);
    } else if (r->n_collapsed > 0 || r->n_inconsistent > 0) {
        r->model = NBS_MODEL_PARTIAL;
        snprintf(r->summary, sizeof r->summary,
                 "partially collapsed: %d of %d dimensions active, %d collapsed, %s "
                 "(reconstruction gain over a constant z: %.3g +- %.2g nats per cell)", r->n_active, r->d,
                 r->n_collapsed, incons, r->recon_gain, r->recon_gain_se);
    } else {
        r->model = NBS_MODEL_HEALTHY;
        snprintf(r->summary, sizeof r->summary,
                 "healthy: all %d dimensions active (reconstruction gain over a constant z: %.3g +- %.2g "
                 "nats per cell)", r->d, r->recon_gain, r->recon_gain_se);
    }
    if (r->model == NBS_MODEL_HEALTHY) snprintf(r->remedies, sizeof r->remedies, "none needed");
    else if (r->model == NBS_MODEL_PARTIAL)
        snprintf(r->remedies, sizeof r->remedies, "if the data need more dimensions: %s; otherwise a "
                 "smaller model.latent_dim gives the same embedding without the dead ones", remedy_list);
    else snprintf(r->remedies, sizeof r->remedies, "%s", remedy_list);
}

/* The largest decoder response of any dimension: tau_decoder_relative's reference. */
static double most_nats(const nbs_collapse_report *r) {
    double most = 0;
    for (int j = 0; j < r->d; j++) most = fmax(most, r->decoder_nats[j]);
    return most;
}

/* The verdicts of dimensions [j0, j1), all on the sphere or none. */
static void dim_verdicts(nbs_collapse_report *r, const nbs_diagnose_config *dc, int j0, int j1, int sphere,
                         double most) {
    for (int j = j0; j < j1; j++) {
        /* the encoder's side: KL (Gaussian) or activity (sphere, where KL does not split) */
        const int sends = sphere ? r->activity[j] >= dc->tau_activity : r->kl[j] >= dc->tau_kl;
        const double nats = r->decoder_nats[j];
        const int listens = !r->z_unused && r->sens_jacobian[j] >= dc->tau_sensitivity &&
                            (nats >= dc->tau_decoder_nats || (nats > 0 && nats >= dc->tau_decoder_relative * most));
        r->verdict[j] = sends && listens ? NBS_DIM_ACTIVE : (!sends && !listens ? NBS_DIM_COLLAPSED : NBS_DIM_INCONSISTENT);
        r->n_active += r->verdict[j] == NBS_DIM_ACTIVE;
        r->n_collapsed += r->verdict[j] == NBS_DIM_COLLAPSED;
        r->n_inconsistent += r->verdict[j] == NBS_DIM_INCONSISTENT;
        r->n_unsent += !sends && listens;
        r->n_sending += sends;
        r->n_inactive_units += r->activity[j] < dc->tau_activity;
    }
}

static double quantile_sorted(const double *v, int64_t n, double p) {
    if (n == 0) return NAN;
    double h = p * (double)(n - 1);
    int64_t lo = (int64_t)floor(h);
    int64_t hi = lo + 1 < n ? lo + 1 : lo;
    return v[lo] + (h - (double)lo) * (v[hi] - v[lo]);
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}


/* Stage s's posterior KL to its prior, the sum over the cells of each term (kl_sum, the stage's
 * kl_terms); its head (n, head_dim) into head when not NULL. The KL needs no sample. */
static int stage_kl(const nbs_model *m, nbs_workspace *w, const nbs_cells *cells, int s, float *head,
                    double *kl_sum, nbs_error *err) {
    const nbs_latent *L = nbs_model_stage_latent(m, s);
    const int64_t n = cells->n, hd = nbs_latent_head_dim(L), K = nbs_latent_kl_terms(L);
    float *own = head ? NULL : nbs_malloc(sizeof(float) * n * hd, err), *z = nbs_malloc(sizeof(float) * n * L->dim, err);
    double *kl = nbs_malloc(sizeof(double) * n * K, err); /* (n, K) */
    nbs_latent_cache *cache = nbs_latent_cache_new(L, (int)n, err);
    if (!head) head = own;
    int st = head && z && kl && cache ? NBS_OK : NBS_ERR_NOMEM;
    if (!st) st = nbs_model_encode(m, w, cells, s, head, err);
    if (!st) st = nbs_latent_forward(L, head, (int)n, NULL, z, kl, cache, err);
    for (int t = 0; t < K && !st; t++) {
        kl_sum[t] = 0;
        for (int64_t i = 0; i < n; i++) kl_sum[t] += kl[i * K + t];
    }
    free(own), free(z), free(kl);
    nbs_latent_cache_free(cache);
    return st;
}

/* The discrete latent: the mixture's KL_j (into r->kl) and KL_c, and the category usage, over the
 * diagnosed cells (cells: this process's). */
static int categories(const part *p, const nbs_model *m, const nbs_cells *cells, nbs_collapse_report *r,
                      nbs_error *err) {
    const int K = nbs_model_discrete(m), d = r->d;
    const int64_t n = cells->n, N = p->N;
    float *prob = nbs_malloc(sizeof(float) * (size_t)(n * K), err);      /* (n, K) */
    double *kl = nbs_malloc(sizeof(double) * (size_t)(n * (d + 1)), err); /* (n, d + 1) */
    r->category_mass = nbs_calloc((size_t)K, sizeof(double), err);
    r->category_cells = nbs_calloc((size_t)K, sizeof(int64_t), err);
    double *sum = nbs_calloc((size_t)(d + 1 + 2 * K), sizeof(double), err); /* (d + 1 KL terms, K masses, K cells) */
    int st = prob && kl && r->category_mass && r->category_cells && sum ? NBS_OK : NBS_ERR_NOMEM;
    if (!st) st = nbs_model_cluster(m, cells, prob, kl, err);
    if (!st) {
        double *mass = sum + d + 1, *cells_of = mass + K; /* the counts exact as doubles */
        for (int64_t i = 0; i < n; i++) {
            for (int t = 0; t <= d; t++) sum[t] += kl[i * (d + 1) + t];
            int best = 0;
            for (int c = 0; c < K; c++) {
                mass[c] += prob[i * K + c];
                if (prob[i * K + c] > prob[i * K + best]) best = c;
            }
            cells_of[best]++;
        }
        st = part_sum(p, sum, d + 1 + 2 * K, err);
        for (int c = 0; c < K && !st; c++) {
            r->category_mass[c] = mass[c];
            r->category_cells[c] = (int64_t)cells_of[c];
        }
    }
    if (!st) {
        r->n_categories = K;
        for (int t = 0; t <= d; t++) {
            if (t < d) r->kl[t] = sum[t] / (double)N;
            r->kl_total += sum[t] / (double)N;
        }
        r->kl_category = sum[d] / (double)N;
        r->category_entropy = 0;
        for (int c = 0; c < K; c++) {
            r->category_mass[c] /= (double)N;
            if (r->category_mass[c] > 0) r->category_entropy -= r->category_mass[c] * log(r->category_mass[c]);
            r->n_dead_categories += r->category_cells[c] < NBS_DEAD_CATEGORY_SHARE * (double)N;
        }
        if (r->n_dead_categories)
            snprintf(r->category_summary, sizeof r->category_summary,
                     "%d of %d categories used by fewer than %.1f %% of cells (entropy of the mean q(c|x) %.3g of "
                     "log K = %.3g nats, KL of c %.3g nats)", r->n_dead_categories, K, 100 * NBS_DEAD_CATEGORY_SHARE,
                     r->category_entropy, log((double)K), r->kl_category);
        else
            snprintf(r->category_summary, sizeof r->category_summary,
                     "all %d categories used (entropy of the mean q(c|x) %.3g of log K = %.3g nats, KL of c %.3g "
                     "nats)", K, r->category_entropy, log((double)K), r->kl_category);
    }
    free(prob), free(kl), free(sum);
    return st;
}

/* The reconstruction gain of z at the posterior (ll) over a constant z (ll0), this process's (n)
 * cells, and its standard error, over the diagnosed cells. */
static int gain_of(const part *p, nbs_collapse_report *r, const double *ll, const double *ll0, int64_t n,
                   nbs_error *err) {
    double g = 0, g2 = 0;
    for (int64_t i = 0; i < n; i++) g += ll[i] - ll0[i];
    int st = part_sum(p, &g, 1, err);
    if (st) return st;
    r->recon_gain = g / (double)p->N;
    for (int64_t i = 0; i < n; i++) g2 += (ll[i] - ll0[i] - r->recon_gain) * (ll[i] - ll0[i] - r->recon_gain);
    if ((st = part_sum(p, &g2, 1, err))) return st;
    r->recon_gain_se = sqrt(g2 / (double)(p->N - 1) / (double)p->N);
    return NBS_OK;
}

int nbs_report_dim_layer(const nbs_collapse_report *r, int j) {
    for (int l = 0; l < r->n_layers; l++)
        if (j >= r->layers[l].offset && j < r->layers[l].offset + r->layers[l].d) return l;
    return -1;
}

int nbs_report_dim_on_sphere(const nbs_collapse_report *r, int j) {
    const int l = nbs_report_dim_layer(r, j);
    return nbs_latent_ops_of(l < 0 ? r->latent : r->layers[l].latent)->on_sphere;
}

/* Layer l's verdict from its dimensions': collapsed when every one is (its KL below tau_kl and the
 * decoder, through the top-down path, insensitive to it), healthy when every one is active. */
static void layer_verdict(nbs_collapse_report *r, int l, int top) {
    nbs_layer_report *Y = &r->layers[l];
    for (int j = Y->offset; j < Y->offset + Y->d; j++) {
        Y->n_active += r->verdict[j] == NBS_DIM_ACTIVE;
        Y->n_collapsed += r->verdict[j] == NBS_DIM_COLLAPSED;
        Y->n_inconsistent += r->verdict[j] == NBS_DIM_INCONSISTENT;
    }
    Y->verdict = Y->n_collapsed == Y->d ? NBS_MODEL_COLLAPSED : Y->n_active == Y->d ? NBS_MODEL_HEALTHY : NBS_MODEL_PARTIAL;
    if (Y->verdict == NBS_MODEL_COLLAPSED)
        snprintf(Y->summary, sizeof Y->summary, "layer %d collapsed: the top-down prior carries it (%s; KL %.3g nats "
                 "per cell, and the decoder does not respond to it)", l + 1,
                 l == top ? "its posterior is the prior, and the layers below do not depend on it"
                          : "its posterior is the top-down prior given the layer above", Y->kl_total);
    else if (Y->verdict == NBS_MODEL_HEALTHY)
        snprintf(Y->summary, sizeof Y->summary, "layer %d healthy: all %d dimensions active (KL %.3g nats per cell)",
                 l + 1, Y->d, Y->kl_total);
    else
        snprintf(Y->summary, sizeof Y->summary, "layer %d partially collapsed: %d of %d dimensions active, %d collapsed, "
                 "%d inconsistent (KL %.3g nats per cell)", l + 1, Y->n_active, Y->d, Y->n_collapsed,
                 Y->n_inconsistent, Y->kl_total);
}

/* The constant z the reconstruction gain compares with: the mean location of the diagnosed cells
 * (loc [n x d], this process's), on the sphere its direction (the first axis when the mean is
 * 0), into c[d]. */
static int constant_z(const part *p, const float *loc, int64_t n, int d, int sphere, float *c, nbs_error *err) {
    double mean[NBS_MAX_KL_TERMS] = {0}, norm = 0;
    for (int j = 0; j < d; j++)
        for (int64_t i = 0; i < n; i++) mean[j] += loc[i * d + j];
    int st = part_sum(p, mean, d, err);
    if (st) return st;
    for (int j = 0; j < d; j++) {
        mean[j] /= (double)p->N;
        norm += mean[j] * mean[j];
    }
    for (int j = 0; j < d; j++) c[j] = (float)(sphere ? (norm > 0 ? mean[j] / sqrt(norm) : (j == 0)) : mean[j]);
    return NBS_OK;
}

/* kappa at 5, 25, 50, 75 and 95 % of the n cells (kappa [n]) into q[5]. */
static int kappa_quantiles(const float *kappa, int64_t n, double *q, nbs_error *err) {
    double *kap = nbs_malloc(sizeof(double) * (size_t)(n ? n : 1), err);
    if (!kap) return NBS_ERR_NOMEM;
    for (int64_t i = 0; i < n; i++) kap[i] = kappa[i];
    qsort(kap, (size_t)n, sizeof(double), cmp_d);
    const double ps[5] = {0.05, 0.25, 0.5, 0.75, 0.95};
    for (int k = 0; k < 5; k++) q[k] = quantile_sorted(kap, n, ps[k]);
    free(kap);
    return NBS_OK;
}

/* kappa's quantiles over the diagnosed cells (kappa [n], this process's) on every process. */
static int kappa_across(const part *p, const float *kappa, double *q, nbs_error *err) {
    const float *all;
    float *own;
    int st = part_gather(p, kappa, 1, &all, &own, err);
    for (int k = 0; k < 5; k++) q[k] = 0;
    if (!st && part_lead(p)) st = kappa_quantiles(all, p->N, q, err);
    if (!st) st = part_share(p, q, 5, err);
    free(own);
    return st;
}

/* I(x;z) of the diagnosed cells (mean, var: this process's [n x d]) on every process: process 0
 * estimates it on all of them, drawing from rng as one process does. */
static int mi_across(const part *p, const float *mean, const float *var, int d, int batch, gsl_rng *rng, double *mi,
                     nbs_error *err) {
    const float *M, *V = NULL;
    float *own_m, *own_v = NULL;
    int st = part_gather(p, mean, d, &M, &own_m, err);
    if (!st) st = part_gather(p, var, d, &V, &own_v, err);
    *mi = 0;
    if (!st && part_lead(p)) st = nbs_diagnose_mi_gaussian(M, V, p->N, d, batch, rng, mi, err);
    if (!st) st = part_share(p, mi, 1, err);
    free(own_m), free(own_v);
    return st;
}

/* The report's size, thresholds and per-dimension arrays [d] (zeroed; NULL where out of memory:
 * the caller checks them with its own buffers). */
static void report_begin(nbs_collapse_report *r, const nbs_diagnose_config *dc, int d, int64_t n,
                         nbs_latent_kind latent, nbs_error *err) {
    r->d = d;
    r->n_cells = n;
    r->latent = latent;
    r->tau_kl = dc->tau_kl;
    r->tau_sensitivity = dc->tau_sensitivity;
    r->tau_activity = dc->tau_activity;
    r->tau_decoder_nats = dc->tau_decoder_nats;
    r->tau_decoder_relative = dc->tau_decoder_relative;
    r->mi_batch = dc->mi_batch;
    r->kl = nbs_calloc((size_t)d, sizeof(double), err);
    r->activity = nbs_calloc((size_t)d, sizeof(double), err);
    r->sens_weight = nbs_calloc((size_t)d, sizeof(double), err);
    r->sens_jacobian = nbs_calloc((size_t)d, sizeof(double), err);
    r->decoder_nats = nbs_calloc((size_t)d, sizeof(double), err);
    r->verdict = nbs_calloc((size_t)d, sizeof(nbs_dim_verdict), err);
}

/* A ladder: every layer's measures side by side in the per-dimension arrays (bottom first), each
 * at the posterior locations of the layers above (nbs_model_layer_posterior); the decoder's
 * response to a layer through the top-down path below it (nbs_model_decode_layer), so a layer the
 * decoder reads only through the priors of the layers below still counts as listened to; the
 * reconstruction gain of every layer at its location over every layer constant; a verdict per
 * layer, and I(x; z) per Gaussian layer and over all of them. */
static int diagnose_ladder(const part *p, const nbs_model *m, const nbs_cells *cells, const nbs_diagnose_config *dc,
                           gsl_rng *rng, nbs_collapse_report *r, nbs_error *err) {
    const int64_t n = cells->n; /* this process's */
    const int L = nbs_model_n_stages(m), D = nbs_model_decoder_dim(m);
    report_begin(r, dc, D, p->N, nbs_model_latent(m)->kind, err);
    r->n_layers = L;
    double *lib = nbs_malloc(sizeof(double) * n, err), *kl = nbs_malloc(sizeof(double) * n * D, err); /* (n, <= D) */
    double *ll = nbs_malloc(sizeof(double) * n, err), *ll0 = nbs_malloc(sizeof(double) * n, err);
    float *loc = nbs_malloc(sizeof(float) * n * D, err), *spread = nbs_malloc(sizeof(float) * n * D, err); /* (n, d) */
    float *ez = nbs_malloc(sizeof(float) * n * D, err);
    float *Z = nbs_malloc(sizeof(float) * n * D, err), *Zv = nbs_malloc(sizeof(float) * n * D, err); /* (n, D) */
    float *Zc = nbs_malloc(sizeof(float) * n * D, err);
    nbs_workspace *w = nbs_workspace_eval(m, cells->X, err);
    int st = r->kl && r->activity && r->sens_weight && r->sens_jacobian && r->decoder_nats && r->verdict && lib &&
             kl && ll && ll0 && loc && spread && ez && Z && Zv && Zc && w ? NBS_OK : NBS_ERR_NOMEM;
    for (int64_t i = 0; lib && i < n; i++) lib[i] = cells->library[nbs_cells_row(cells, i)];
    int all_gauss = 1;
    for (int l = 0, off = 0; l < L && !st; off += r->layers[l++].d) {
        const nbs_latent *Ll = nbs_model_stage_latent(m, l);
        const int d = Ll->dim, K = nbs_latent_kl_terms(Ll), sphere = nbs_latent_on_sphere(Ll);
        nbs_layer_report *Y = &r->layers[l];
        Y->offset = off;
        Y->d = d;
        Y->latent = Ll->kind;
        all_gauss &= !sphere;
        if ((st = nbs_model_layer_posterior(m, cells, l, loc, spread, ez, kl, err))) break;
        double kl_sum[NBS_MAX_KL_TERMS];
        for (int t = 0; t < K; t++) {
            kl_sum[t] = 0;
            for (int64_t i = 0; i < n; i++) kl_sum[t] += kl[i * K + t];
        }
        if ((st = part_sum(p, kl_sum, K, err))) break;
        for (int t = 0; t < K; t++) {
            Y->kl_total += kl_sum[t] / (double)p->N;
            if (!sphere) r->kl[off + t] = kl_sum[t] / (double)p->N;
        }
        r->kl_total += Y->kl_total;
        if ((st = variance_across(p, ez, n, d, r->activity + off, err))) break;
        for (int j = 0; j < d; j++) {
            if (sphere) r->kl[off + j] = NAN;
            r->sens_weight[off + j] = nbs_model_latent_weight_rms(m, l, j);
        }
        st = decoder_sensitivity(p, m, w, cells, l, loc, lib, d, sphere, r->sens_jacobian + off, r->decoder_nats + off,
                                 err);
        if (!st && !sphere) st = mi_across(p, loc, spread, d, dc->mi_batch, rng, &Y->mi, err);
        if (sphere) Y->mi = NAN;
        if (!st && sphere) st = kappa_across(p, spread, r->kappa_q, err);
        /* the layer's columns of Z (locations), Zv (variances) and Zc (the constant: the mean, its
         * direction on the sphere) */
        float c[NBS_MAX_KL_TERMS];
        if (!st) st = constant_z(p, loc, n, d, sphere, c, err);
        for (int64_t i = 0; i < n && !st; i++)
            for (int j = 0; j < d; j++) {
                Z[i * D + off + j] = loc[i * d + j];
                Zv[i * D + off + j] = sphere ? 0 : spread[i * d + j];
                Zc[i * D + off + j] = c[j];
            }
    }
    if (!st) st = nbs_model_loglik(m, w, cells, Z, ll, err);
    if (!st) st = nbs_model_loglik(m, w, cells, Zc, ll0, err);
    if (!st) st = gain_of(p, r, ll, ll0, n, err);
    r->mi = NAN;
    if (!st && all_gauss) st = mi_across(p, Z, Zv, D, dc->mi_batch, rng, &r->mi, err);
    if (!st) {
        r->z_unused = !(r->recon_gain > GAIN_Z * r->recon_gain_se && r->recon_gain > GAIN_MIN);
        for (int l = 0; l < L; l++)
            dim_verdicts(r, dc, r->layers[l].offset, r->layers[l].offset + r->layers[l].d,
                         nbs_latent_ops_of(r->layers[l].latent)->on_sphere, most_nats(r));
        for (int l = 0; l < L; l++) layer_verdict(r, l, L - 1);
        model_verdict(r);
        for (int l = 0; l < L; l++) { /* the layers' verdicts after the model's */
            const size_t u = strlen(r->summary);
            snprintf(r->summary + u, sizeof r->summary - u, "; layer %d %s", l + 1,
                     nbs_model_verdict_word(r->layers[l].verdict));
        }
    }
    free(lib), free(kl), free(ll), free(ll0), free(loc), free(spread), free(ez), free(Z), free(Zv), free(Zc);
    nbs_workspace_free(w);
    return st;
}

/* A single latent (and its stages' KL). */
static int diagnose_one(const part *p, const nbs_model *m, const nbs_cells *cells, const nbs_diagnose_config *dc,
                        gsl_rng *rng, nbs_collapse_report *r, nbs_error *err) {
    const int64_t n = cells->n; /* this process's */
    const nbs_latent *L = nbs_model_latent(m);
    const int d = L->dim, hd = nbs_latent_head_dim(L);
    const int sphere = nbs_latent_on_sphere(L);
    report_begin(r, dc, d, p->N, L->kind, err);
    double *lib = nbs_malloc(sizeof(double) * n, err); /* (n) in diagnosed order: the decoder's mu is l softmax */
    for (int64_t i = 0; lib && i < n; i++) lib[i] = cells->library[nbs_cells_row(cells, i)];
    nbs_workspace *w = nbs_workspace_eval(m, cells->X, err);
    float *head = nbs_malloc(sizeof(float) * n * hd, err);
    float *loc = nbs_malloc(sizeof(float) * n * d, err);
    float *spread = nbs_malloc(sizeof(float) * n * (sphere ? 1 : d), err);
    float *ez = nbs_malloc(sizeof(float) * n * d, err);
    double *ll = nbs_malloc(sizeof(double) * n, err), *ll0 = nbs_malloc(sizeof(double) * n, err);
    float *zc = nbs_malloc(sizeof(float) * n * d, err);
    int st = NBS_OK;
    if (!r->kl || !r->activity || !r->sens_weight || !r->sens_jacobian || !r->decoder_nats || !lib ||
        !r->verdict || !head || !loc || !spread || !ez || !ll || !ll0 || !zc || !w)
        st = NBS_ERR_NOMEM;
    /* the KL of every stage counts in the total; the per-dimension measures are of stage 0, the
     * embedding, whose head is kept */
    for (int s = 0; s < nbs_model_n_stages(m) && !st; s++) {
        double kl_sum[NBS_MAX_KL_TERMS];
        const int K = nbs_latent_kl_terms(nbs_model_stage_latent(m, s));
        st = stage_kl(m, w, cells, s, s ? NULL : head, kl_sum, err);
        if (!st) st = part_sum(p, kl_sum, K, err);
        const int mixture = s == 0 && nbs_model_discrete(m); /* categories() gives its KL */
        for (int t = 0; t < K && !st && !mixture; t++) {
            if (s == 0 && !sphere) r->kl[t] = kl_sum[t] / (double)p->N;
            r->kl_total += kl_sum[t] / (double)p->N;
        }
    }
    if (!st && nbs_model_discrete(m)) st = categories(p, m, cells, r, err); /* stage 0's KL is the mixture's */
    if (!st) {
        nbs_latent_posterior(L, head, (int)n, loc, spread);
        nbs_latent_expectation(L, head, (int)n, ez);
        st = variance_across(p, ez, n, d, r->activity, err);
        for (int j = 0; j < d && sphere; j++) r->kl[j] = NAN;
        int dd, width;
        const float *W = nbs_model_decoder_first_weights(m, &dd, &width);
        for (int j = 0; j < d; j++) {
            double s = 0;
            for (int k = 0; k < width; k++) s += (double)W[(int64_t)j * width + k] * W[(int64_t)j * width + k];
            r->sens_weight[j] = sqrt(s / width);
        }
        if (!st) st = decoder_sensitivity(p, m, w, cells, -1, loc, lib, d, sphere, r->sens_jacobian, r->decoder_nats, err);
    }
    /* how much the decoder uses z at all: z at the posterior vs one constant z */
    if (!st) st = nbs_model_loglik(m, w, cells, loc, ll, err);
    float c[NBS_MAX_KL_TERMS];
    if (!st) st = constant_z(p, loc, n, d, sphere, c, err);
    for (int64_t i = 0; i < n && !st; i++) memcpy(zc + i * d, c, sizeof(float) * (size_t)d);
    if (!st) st = nbs_model_loglik(m, w, cells, zc, ll0, err);
    if (!st) st = gain_of(p, r, ll, ll0, n, err);
    if (!st) {
        if (!sphere) {
            st = mi_across(p, loc, spread, d, dc->mi_batch, rng, &r->mi, err);
        } else {
            r->mi = NAN;
            st = kappa_across(p, spread, r->kappa_q, err);
        }
    }
    if (!st) {
        /* The decoder listens to z_j when its response to a prior-SD move along z_j is large in
         * absolute terms (tau_decoder_nats) or next to the dimension it responds to most
         * (tau_decoder_relative: a weak model, e.g. one held up by free bits, is weak everywhere),
         * and only when z as a whole buys likelihood: otherwise what it responds to is noise. */
        r->z_unused = !(r->recon_gain > GAIN_Z * r->recon_gain_se && r->recon_gain > GAIN_MIN);
        dim_verdicts(r, dc, 0, d, sphere, most_nats(r));
        model_verdict(r);
    }
    free(head), free(loc), free(spread), free(ez), free(ll), free(ll0), free(zc), free(lib);
    nbs_workspace_free(w);
    return st;
}

int nbs_diagnose_shared(const nbs_model *m, const nbs_cells *cells, const nbs_diagnose_config *dc, gsl_rng *rng,
                        const nbs_train_reduce *reduce, nbs_collapse_report *r, nbs_error *err) {
    memset(r, 0, sizeof *r);
    part p;
    int st = part_begin(&p, reduce, cells->n, err);
    if (!st && p.N < 2)
        st = nbs_error_set(err, NBS_ERR_INPUT, "diagnostics need at least 2 cells, got %lld", (long long)p.N);
    if (!st)
        st = nbs_model_ladder(m) ? diagnose_ladder(&p, m, cells, dc, rng, r, err)
                                 : diagnose_one(&p, m, cells, dc, rng, r, err);
    free(p.counts);
    if (st) {
        if (st == NBS_ERR_NOMEM && !err->msg[0]) nbs_error_set(err, NBS_ERR_NOMEM, "out of memory for diagnostics");
        nbs_collapse_report_free(r);
    }
    return st;
}

int nbs_diagnose(const nbs_model *m, const nbs_cells *cells, const nbs_diagnose_config *dc, gsl_rng *rng,
                 nbs_collapse_report *r, nbs_error *err) {
    return nbs_diagnose_shared(m, cells, dc, rng, NULL, r, err);
}

int nbs_diagnose_track_add(nbs_diagnose_track *t, int epoch, const nbs_collapse_report *r, nbs_error *err) {
    if (t->n == t->cap) {
        int cap = t->cap ? 2 * t->cap : 32, d = r->d;
        t->d = d;
        int *e = realloc(t->epoch, sizeof(int) * cap);
        if (e) t->epoch = e;
        double *a = e ? realloc(t->kl, sizeof(double) * cap * d) : NULL;
        if (a) t->kl = a;
        double *b = a ? realloc(t->activity, sizeof(double) * cap * d) : NULL;
        if (b) t->activity = b;
        double *c = b ? realloc(t->sens_jacobian, sizeof(double) * cap * d) : NULL;
        if (c) t->sens_jacobian = c;
        double *mi = c ? realloc(t->mi, sizeof(double) * cap) : NULL;
        if (mi) t->mi = mi;
        double *rg = mi ? realloc(t->recon_gain, sizeof(double) * cap) : NULL;
        if (rg) t->recon_gain = rg;
        int *na = rg ? realloc(t->n_active, sizeof(int) * cap) : NULL;
        if (na) t->n_active = na;
        int *nc = na ? realloc(t->n_collapsed, sizeof(int) * cap) : NULL;
        if (nc) t->n_collapsed = nc;
        if (!nc) return nbs_error_set(err, NBS_ERR_NOMEM, "out of memory for diagnostics tracking");
        t->cap = cap;
    }
    const int d = t->d, i = t->n++;
    t->epoch[i] = epoch;
    memcpy(t->kl + (int64_t)i * d, r->kl, sizeof(double) * d);
    memcpy(t->activity + (int64_t)i * d, r->activity, sizeof(double) * d);
    memcpy(t->sens_jacobian + (int64_t)i * d, r->sens_jacobian, sizeof(double) * d);
    t->mi[i] = r->mi;
    t->recon_gain[i] = r->recon_gain;
    t->n_active[i] = r->n_active;
    t->n_collapsed[i] = r->n_collapsed;
    return NBS_OK;
}

void nbs_diagnose_track_free(nbs_diagnose_track *t) {
    free(t->epoch), free(t->kl), free(t->activity), free(t->sens_jacobian), free(t->mi);
    free(t->recon_gain), free(t->n_active), free(t->n_collapsed);
    memset(t, 0, sizeof *t);
}
