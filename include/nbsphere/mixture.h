/* The discrete latent (model.discrete: K): a categorical c with K categories and a Gaussian
 * mixture prior on the Gaussian latent z, GMVAE after scVAE (Grønbech et al. 2020,
 * Bioinformatics 36:4415) in its mean-field form q(c, z | x) = q(c|x) q(z|x) (as VaDE, Jiang et
 * al. 2017): p(c) = softmax(prior logits), p(z|c) = N(mu_c, diag exp(s_c)), q(c|x) = softmax of
 * an encoder head, q(z|x) the Gaussian latent's N(m, diag exp(v)). Its KL terms are exact,
 * enumerated over c:
 *   KL_j   = sum_c q(c|x) KL(N(m_j, e^v_j) || N(mu_cj, e^s_cj))   one per dimension j < d
 *   KL_c   = KL(q(c|x) || p(c))                                   term d
 * and the entropy auxiliary loss lambda max(0, H - H(qbar)) of the minibatch's mean qbar(c).
 * Pure arithmetic on arrays (vae.c owns the blocks and buffers); shapes per batch of n cells. */
#ifndef NBSPHERE_MIXTURE_H
#define NBSPHERE_MIXTURE_H

/* Largest number of categories (model.discrete). */
#define NBS_MAX_DISCRETE 50

/* The prior's parameters, views into the model's parameter block (and the gradients' one). */
typedef struct {
    int K, d;
    const float *logits; /* (K) log p(c) up to a constant */
    const float *mean;   /* (K, d) mu_c */
    const float *logvar; /* (K, d) s_c, clamped to [NBS_MIX_LOGVAR_MIN, NBS_MIX_LOGVAR_MAX] */
} nbs_mixture;

#define NBS_MIX_LOGVAR_MIN -10.0f
#define NBS_MIX_LOGVAR_MAX 10.0f

/* logits (n, K) -> log q(c|x) (n, K) and q(c|x) (n, K), in double. */
void nbs_mixture_softmax(const float *logits, int n, int K, double *log_prob, double *prob);

/* kl (n, d + 1): the d KL_j of each cell then its KL_c. head (n, 2d) is the Gaussian latent's
 * (mean, log variance; the log variance clamped as latent.c clamps it). */
void nbs_mixture_kl(const nbs_mixture *p, const float *head, const double *log_prob, const double *prob, int n,
                    double *kl);

/* Backward of sum_i sum_t kl_weight[t] kl_it + sum_i,c dprob_extra[i,c] q(c|x_i):
 * dhead (n, 2d) += d/dhead, dlogits (n, K) = d/d(encoder logits) (overwritten), and the
 * prior's gradients dprior_logits (K), dmean (K, d), dlogvar (K, d) +=. dprob_extra may be NULL. */
void nbs_mixture_backward(const nbs_mixture *p, const float *head, const double *log_prob, const double *prob, int n,
                          const float *kl_weight /* (d + 1) */, const float *dprob_extra /* (n, K) */,
                          float *dhead, float *dlogits, float *dprior_logits, float *dmean, float *dlogvar);

/* Entropy in nats of qbar = the mean of prob (n, K) over its n rows; qbar (K) when not NULL. */
double nbs_mixture_mean_entropy(const double *prob, int n, int K, double *qbar);

/* The entropy auxiliary loss of the batch (returned)
 *   weight * max(0, target - H(qbar)) + cell_weight * (1/n) sum_i H(q(c|x_i)),
 * and its gradient times scale with respect to each q(c|x_i) into dprob (n, K) (overwritten).
 * The first term spreads the cells over the categories; the second makes each cell's
 * assignment confident, so that the spread cannot be met by every cell being unsure (together
 * they are the negative mutual information I(x; c) of IMSAT, Hu et al. 2017). *entropy: H(qbar). */
double nbs_mixture_entropy_loss(const double *log_prob, const double *prob, int n, int K, double target,
                                double weight, double cell_weight, double scale, float *dprob, double *entropy);

#endif
