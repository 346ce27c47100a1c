/* The VAE: sparse log1p input -> encoder MLP -> latent stages (head -> latent) -> decoder MLP
 * -> gene logits (+ zero-inflation and per-cell dispersion heads) -> count likelihood.
 * Layout follows llm.c: every parameter lives in one float block, its gradient at the same
 * offset in a second block, Adam moments in two more; layers are views into them. What a pass
 * computes lives in the caller's workspace (B = cells of the batch, G = genes, d = latent
 * dimension), so the model itself is read-only outside training. */
#include "nbsphere/vae.h"

#include <gsl/gsl_randist.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/likelihood.h"
#include "nbsphere/mixture.h"
#include "nbsphere/nn.h"

/* per hidden layer W, b, covariates.W, continuous.W, four norm blocks and a skip block per latent
 * layer; heads, dispersion and the mixture prior; per ladder layer up, head and prior (W, b each) */
#define MAX_BLOCKS (2 * NBS_MAX_LAYERS * (8 + NBS_MAX_LATENT_LAYERS) + 20 + 8 * NBS_MAX_LATENT_LAYERS)
#define MAX_STAGES NBS_MAX_LATENT_LAYERS

typedef struct {
    char name[64];
    int64_t offset; /* into params/grads, or into state when is_state */
    int rows, cols;
    int is_state;
} block;

/* One hidden layer: linear -> optional norm -> ReLU -> optional dropout (encoder only). A layer
 * the covariates are injected into adds their rows of Wcat (or their embeddings times Wcat) and
 * their values times Wcont to the linear part: the product of the concatenation [x, one-hot or
 * embeddings, continuous] with one weight matrix. */
typedef struct {
    nbs_dense lin;
    float *Wcat, *dWcat;   /* (n_cat_in, out) or NULL */
    float *Wcont, *dWcont; /* (n_continuous, out) or NULL */
    float *Wskip[MAX_STAGES], *dWskip[MAX_STAGES]; /* (d of stage s, out): skip connections, or NULL */
    nbs_norm norm;
    int has_norm;
} hidden;

/* A latent stage: its head reads the encoder's last activation; its KL terms sit at
 * [kl_offset, kl_offset + kl_terms) of the model's KL vector. */
typedef struct {
    nbs_latent lat;
    nbs_dense head; /* (encoder width, head_dim); in a ladder (up width, head_dim) */
    int head_dim, kl_terms, kl_offset;
    /* ladder: the bottom-up deterministic layer the head reads (ReLU; it reads the encoder's last
     * activation or the stage below's up layer) and, below the top, the top-down prior
     * p(z_s | z_{s+1}): a ReLU layer on z_{s+1} and its (mean, log variance) head (prior width, 2d) */
    nbs_dense up, prior_hidden, prior_head;
    int has_prior;
} stage;

struct nbs_model {
    nbs_model_config cfg;
    nbs_covariate_layout cov;
    int n_onehot;                         /* categories over every categorical covariate */
    int cat_offset[NBS_MAX_CATEGORICAL];  /* first row of covariate k's categories (one-hot rows, table rows) */
    int emb_dim;                          /* columns of each covariate's table; 0: one-hot */
    int n_cat_in;                         /* rows of covariates.W: n_onehot, or n_categorical * emb_dim */
    /* (n_onehot, emb_dim) the tables covariates.<k>.embedding one after another (covariate k's rows
     * from cat_offset[k]) and their gradient; NULL when one-hot */
    float *emb, *demb;
    int n_batches;                        /* rows of the per-gene dispersion: batch categories, or 1 */
    int G, kl_terms;
    int64_t n_params, n_state, adam_t;
    float *params, *grads, *adam_m, *adam_v, *state;
    block blocks[MAX_BLOCKS];
    int n_blocks;

    int n_enc, n_dec, n_stages;
    int ladder;      /* the stages are a ladder's layers, stage 0 at the bottom */
    int embed_stage; /* the stage whose posterior is the embedding: the top of a ladder */
    hidden enc[NBS_MAX_LAYERS], dec[NBS_MAX_LAYERS];
    stage stages[MAX_STAGES];
    nbs_dense out, out_zi, out_disp;
    int has_zi, has_disp;
    float *log_theta, *dlog_theta; /* (n_batches, G) per-gene (and batch) dispersion; NULL when per cell */
    /* (n_params) 1 where a parameter trains, or NULL: all do. A model with a mask is adapted to new
     * categories (nbs_model_grow): its training passes run without dropout and normalise with the
     * batch-norm running statistics, which they leave as they are. */
    uint8_t *trainable;
    /* the discrete latent (model.discrete; mixture.h), K = 0: none. Its q(c|x) head reads the
     * encoder's last activation; the KL of c is term cl_kl of the KL vector, after the stages' */
    int K, cl_kl;
    nbs_dense cluster;                   /* (encoder width, K) */
    float *prior_logits, *dprior_logits; /* (K) log p(c) up to a constant */
    float *prior_mean, *dprior_mean;     /* (K, d) */
    float *prior_logvar, *dprior_logvar; /* (K, d) */
};

/* What a training pass of m does: dropout and batch statistics, unless the model is frozen. */
static double dropout_of(const nbs_model *m) { return m->trainable ? 0 : m->cfg.dropout; }

/* What one hidden layer computed for a batch of B <= cap cells. */
typedef struct {
    float *relu_out; /* (B, width) linear -> norm -> ReLU */
    float *act;      /* (B, width) relu_out after dropout: the next layer's input */
    float *mask;     /* (B, width) dropout mask (scaled keep indicator) */
    float *xhat;     /* (B, width) normalised pre-activation */
    float *inv_std;  /* (max(B, width)) 1/std per column (batch norm) or per row (layer norm) */
    int used_batch;  /* the norm used batch statistics (training) rather than running ones */
} hidden_ws;

typedef struct {
    float *head_out, *dhead; /* (B, head_dim) */
    float *z, *dz;           /* (B, d) */
    double *kl;              /* (B, kl_terms of the stage) */
    nbs_latent_cache *cache; /* samples and noise kept for the backward */
    float *dzs;              /* (B, d) gradient of z through the skip connections; training only */
    /* ladder */
    float *up, *dup;         /* (B, up width) the bottom-up layer's activation and its gradient */
    float *ph, *dph;         /* (B, prior width) the top-down prior's hidden activation */
    float *prior, *dprior;   /* (B, 2d) its mean and log variance */
    float *mu, *lv, *eps;    /* (B, d) the merged posterior's mean, log variance and noise */
    int sampled;
} stage_ws;

struct nbs_workspace {
    const nbs_model *model; /* the model it is sized for */
    int training;           /* it holds the masks and gradient buffers of a training pass */
    int cap, n_threads;
    int64_t nnz_cap;
    int G, kl_terms;
    hidden_ws enc[NBS_MAX_LAYERS], dec[NBS_MAX_LAYERS];
    stage_ws stages[MAX_STAGES];
    /* the batch as the encoder reads it: CSR of transformed counts */
    int64_t *bptr;        /* (B + 1) */
    int32_t *bidx;        /* (nnz_cap) */
    float *bval;          /* (nnz_cap) */
    float *bcount;        /* (nnz_cap) the same entries' raw counts, for the likelihood */
    nbs_matrix bX;        /* the batch's rows of X as a CSR of its own (bptr, bidx, bcount): the
                             likelihood reads them in order, not scattered over X */
    int64_t *cptr;        /* training: (G + 1) the same batch by gene (CSC), for the first layer's backward */
    int32_t *ccell;       /* (nnz_cap) */
    float *cval;          /* (nnz_cap) */
    double *lib;          /* (B) observed library sizes */
    int32_t *cov_rows;    /* (B, n_categorical) each cell's categories as rows of covariates.W (one-hot)
                           * or of the tables (embedding) */
    float *cov_emb;       /* (B, n_categorical * emb_dim) each cell's table rows concatenated */
    float *dcov_emb;      /* (B, n_categorical * emb_dim) loss gradient of cov_emb, summed over the layers */
    float *cov_values;    /* (B, n_continuous) each cell's continuous covariates */
    int32_t *batch;       /* (B) batch category of each cell (gene_batch dispersion) */
    double *loglik;       /* (B) log p(x_i | z_i) */
    double *kl;           /* (B, kl_terms) */
    float *logits, *dlogits; /* (B, G) */
    float *dlt;              /* (B, G) d loss / d log theta per entry */
    float *zi, *dzi;         /* (B, G) ZINB zero-inflation logits */
    float *disp;             /* (B, G) per-cell log theta */
    double *likwork;         /* (n_batches, NBS_LIK_WORK, G) the likelihood's per batch and gene scratch */
    double *lik_rows;        /* (n_threads, NBS_LIK_THREAD_ROWS, G) the likelihood's per-thread rows */
    float *dbuf[2], *dtmp;   /* (B, widest layer) backward scratch */
    int batch_n, grads_ready;
    double t_products, t_likelihood; /* seconds in layers (products) and likelihood, since taken */
    /* the discrete latent (K > 0) */
    float *cl_logits, *dcl_logits; /* (B, K) q(c|x) head output and its loss gradient */
    double *cl_logp, *cl_prob;     /* (B, K) log q(c|x), q(c|x) */
    double *cl_kl;                 /* (B, d + 1) the mixture's KL_j then KL_c */
    float *cl_extra;               /* (B, K) d entropy loss / d q(c|x), when cl_extra_ready */
    int cl_extra_ready;
    /* a data-parallel share (nbs_workspace_set_share): the batch's cells before and after this
     * process's, whose noise the forward draws and discards; the spheres' own generator */
    int64_t share_before, share_after;
    gsl_rng *share_sphere_rng;
};

/* ---- construction ---- */

static int add_block(nbs_model *m, const char *name, int rows, int cols, int is_state) {
    block *b = &m->blocks[m->n_blocks++];
    snprintf(b->name, sizeof b->name, "%s", name);
    b->rows = rows;
    b->cols = cols;
    b->is_state = is_state;
    int64_t *n = is_state ? &m->n_state : &m->n_params;
    b->offset = *n;
    *n += (int64_t)rows * cols;
    return m->n_blocks - 1;
}

/* Layer shapes are declared first (offsets), pointers bound once the blocks exist. */
typedef struct {
    int W, b, cat, cont, gain, bias, rmean, rvar;
} layer_ids;

/* A layer takes n_onehot one-hot and n_cont continuous covariate inputs besides its own. */
static layer_ids declare_layer(nbs_model *m, const char *prefix, int in, int out, int norm, int n_onehot,
                               int n_cont) {
    char nm[64];
    layer_ids id = {-1, -1, -1, -1, -1, -1, -1, -1};
    snprintf(nm, sizeof nm, "%s.W", prefix);
    id.W = add_block(m, nm, in, out, 0);
    snprintf(nm, sizeof nm, "%s.b", prefix);
    id.b = add_block(m, nm, 1, out, 0);
    if (n_onehot) {
        snprintf(nm, sizeof nm, "%s.covariates.W", prefix);
        id.cat = add_block(m, nm, n_onehot, out, 0);
    }
    if (n_cont) {
        snprintf(nm, sizeof nm, "%s.continuous.W", prefix);
        id.cont = add_block(m, nm, n_cont, out, 0);
    }
    if (norm) {
        snprintf(nm, sizeof nm, "%s.norm.gain", prefix);
        id.gain = add_block(m, nm, 1, out, 0);
        snprintf(nm, sizeof nm, "%s.norm.bias", prefix);
        id.bias = add_block(m, nm, 1, out, 0);
        if (norm == NBS_NORM_BATCH) {
            snprintf(nm, sizeof nm, "%s.norm.running_mean", prefix);
            id.rmean = add_block(m, nm, 1, out, 1);
            snprintf(nm, sizeof nm, "%s.norm.running_var", prefix);
            id.rvar = add_block(m, nm, 1, out, 1);
        }
    }
    return id;
}

static float *P(nbs_model *m, int id) { return id < 0 ? NULL : m->params + m->blocks[id].offset; }
static float *D(nbs_model *m, int id) { return id < 0 ? NULL : m->grads + m->blocks[id].offset; }
static float *S(nbs_model *m, int id) { return id < 0 ? NULL : m->state + m->blocks[id].offset; }

static void bind_dense(nbs_model *m, nbs_dense *L, layer_ids id) {
    L->in = m->blocks[id.W].rows;
    L->out = m->blocks[id.W].cols;
    L->W = P(m, id.W);
    L->b = P(m, id.b);
    L->dW = D(m, id.W);
    L->db = D(m, id.b);
}

static void bind_hidden(nbs_model *m, hidden *h, layer_ids id, nbs_norm_kind norm, const int *skip) {
    bind_dense(m, &h->lin, id);
    for (int s = 0; skip && s < m->n_stages; s++) h->Wskip[s] = P(m, skip[s]), h->dWskip[s] = D(m, skip[s]);
    h->Wcat = P(m, id.cat);
    h->dWcat = D(m, id.cat);
    h->Wcont = P(m, id.cont);
    h->dWcont = D(m, id.cont);
    h->has_norm = norm != NBS_NORM_NONE;
    h->norm = (nbs_norm){h->lin.out, norm == NBS_NORM_BATCH, P(m, id.gain), P(m, id.bias),
                         D(m, id.gain), D(m, id.bias), S(m, id.rmean), S(m, id.rvar),
                         NBS_BN_EPS, NBS_BN_MOMENTUM};
}

static void fill_uniform(float *p, int64_t count, double a, gsl_rng *rng) {
    for (int64_t k = 0; k < count; k++) p[k] = (float)(a * (2 * gsl_rng_uniform(rng) - 1));
}

/* torch.nn.Linear's default initialisation: U(-1/sqrt(in), 1/sqrt(in)) for weights and bias. */
static void init_dense(nbs_dense *L, gsl_rng *rng, double scale) {
    const double a = 1.0 / sqrt((double)L->in);
    fill_uniform(L->W, (int64_t)L->in * L->out, scale * a, rng);
    fill_uniform(L->b, L->out, a, rng);
}

/* A layer with covariates is one torch Linear over the concatenated input, so its fan-in counts
 * them: the weights of the layer's own input, of the categories and of the continuous values. */
static void init_hidden(const nbs_model *m, hidden *h, gsl_rng *rng) {
    const nbs_dense *L = &h->lin;
    const int n_cat = h->Wcat ? m->n_cat_in : 0, n_cont = h->Wcont ? m->cov.n_continuous : 0;
    int n_skip = 0; /* the skip connections' latent inputs count in the fan-in too */
    for (int s = 0; s < m->n_stages; s++) n_skip += h->Wskip[s] ? m->stages[s].lat.dim : 0;
    const double a = 1.0 / sqrt((double)L->in + n_cat + n_cont + n_skip);
    fill_uniform(L->W, (int64_t)L->in * L->out, a, rng);
    if (h->Wcat) fill_uniform(h->Wcat, (int64_t)n_cat * L->out, a, rng);
    if (h->Wcont) fill_uniform(h->Wcont, (int64_t)n_cont * L->out, a, rng);
    for (int s = 0; s < m->n_stages; s++)
        if (h->Wskip[s]) fill_uniform(h->Wskip[s], (int64_t)m->stages[s].lat.dim * L->out, a, rng);
    fill_uniform(L->b, L->out, a, rng);
    if (!h->has_norm) return;
    for (int j = 0; j < h->norm.width; j++) {
        h->norm.gain[j] = 1;
        h->norm.bias[j] = 0;
        if (h->norm.batch) {
            h->norm.run_mean[j] = 0;
            h->norm.run_var[j] = 1;
        }
    }
}

static int check_config(const nbs_model_config *mc, int n_genes, nbs_error *err) {
    if (n_genes < 1) return nbs_error_set(err, NBS_ERR_INPUT, "model: no genes to model");
    if (nbs_latent_ops_of(mc->latent)->on_sphere && mc->latent_dim < 2)
        return nbs_error_set(err, NBS_ERR_USAGE, "model.latent_dim: spherical latents need 2 or more dimensions");
    if (mc->latent_dim > NBS_MAX_KL_TERMS)
        return nbs_error_set(err, NBS_ERR_USAGE, "model.latent_dim: at most %d dimensions", NBS_MAX_KL_TERMS);
    if (mc->covariate_embedding == NBS_COVARIATE_EMBEDDING &&
        (mc->covariate_embedding_dim < 1 || mc->covariate_embedding_dim > 1024))
        return nbs_error_set(err, NBS_ERR_USAGE, "model.covariate_embedding_dim: %d; expected 1 to 1024",
                             mc->covariate_embedding_dim);
    if (mc->discrete && (mc->discrete < 2 || mc->discrete > NBS_MAX_DISCRETE))
        return nbs_error_set(err, NBS_ERR_USAGE, "model.discrete: %d categories; expected 0 (none) or 2 to %d",
                             mc->discrete, NBS_MAX_DISCRETE);
    if (mc->discrete && mc->latent != NBS_LATENT_GAUSSIAN)
        return nbs_error_set(err, NBS_ERR_USAGE, "model.discrete: the Gaussian-mixture prior needs model.latent: "
                             "gaussian");
    if (mc->discrete && mc->n_latent_layers)
        return nbs_error_set(err, NBS_ERR_USAGE, "model.discrete with model.latent_layers: the mixture prior is for "
                             "a single latent; leave out one of them");
    if (mc->n_latent_layers == 1 || mc->n_latent_layers < 0 || mc->n_latent_layers > NBS_MAX_LATENT_LAYERS)
        return nbs_error_set(err, NBS_ERR_USAGE, "model.latent_layers: %d layers; a ladder has 2 to %d (none: one "
                             "latent of model.latent_dim)", mc->n_latent_layers, NBS_MAX_LATENT_LAYERS);
    for (int s = 0; s < mc->n_latent_layers; s++)
        if (mc->latent_layers[s] < 1 || mc->latent_layers[s] > NBS_MAX_KL_TERMS)
            return nbs_error_set(err, NBS_ERR_USAGE, "model.latent_layers: layer %d has %d dimensions; expected 1 to %d",
                                 s + 1, mc->latent_layers[s], NBS_MAX_KL_TERMS);
    if (mc->n_latent_layers && nbs_latent_ops_of(mc->latent)->on_sphere &&
        mc->latent_layers[mc->n_latent_layers - 1] < 2)
        return nbs_error_set(err, NBS_ERR_USAGE, "model.latent_layers: a spherical top layer needs 2 or more dimensions");
    if (mc->latent_dim < 1 || mc->n_encoder_layers < 1 || mc->n_decoder_layers < 1 ||
        mc->n_encoder_layers > NBS_MAX_LAYERS || mc->n_decoder_layers > NBS_MAX_LAYERS)
        return nbs_error_set(err, NBS_ERR_USAGE,
                             "model: latent_dim >= 1 and 1 to %d encoder and decoder layers expected",
                             NBS_MAX_LAYERS);
    return NBS_OK;
}

static int check_layout(const nbs_covariate_layout *cov, nbs_error *err) {
    if (cov->n_categorical < 0 || cov->n_categorical > NBS_MAX_CATEGORICAL || cov->n_continuous < 0 ||
        cov->n_continuous > NBS_MAX_COVARIATES || (cov->has_batch && cov->n_categorical < 1))
        return nbs_error_set(err, NBS_ERR_INTERNAL, "model: %d categorical and %d continuous covariates%s",
                             cov->n_categorical, cov->n_continuous, cov->has_batch ? " with a batch" : "");
    for (int k = 0; k < cov->n_categorical; k++)
        if (cov->n_categories[k] < 1 || cov->n_categories[k] > INT32_MAX / NBS_MAX_CATEGORICAL)
            return nbs_error_set(err, NBS_ERR_INTERNAL, "model: categorical covariate %d has %d categories", k,
                                 cov->n_categories[k]);
    return NBS_OK;
}

nbs_model *nbs_model_new(const nbs_model_config *mc, int n_genes, const nbs_covariate_layout *cov, gsl_rng *rng,
                         nbs_error *err) {
    const nbs_covariate_layout none = {0};
    if (!cov) cov = &none;
    if (check_config(mc, n_genes, err) || check_layout(cov, err)) return NULL;
    nbs_model *m = nbs_calloc(1, sizeof *m, err);
    if (!m) return NULL;
    m->cfg = *mc;
    m->cov = *cov;
    for (int k = 0; k < cov->n_categorical; k++) {
        m->cat_offset[k] = m->n_onehot;
        m->n_onehot += cov->n_categories[k];
    }
    m->emb_dim = mc->covariate_embedding == NBS_COVARIATE_EMBEDDING && cov->n_categorical
                     ? mc->covariate_embedding_dim : 0;
    m->n_cat_in = m->emb_dim ? cov->n_categorical * m->emb_dim : m->n_onehot;
    m->n_batches = mc->dispersion == NBS_DISP_GENE_BATCH && cov->has_batch ? cov->n_categories[0] : 1;
    m->G = n_genes;
    /* one stage, or a ladder's layers bottom first: Gaussian below, the latent's kind at the top */
    m->ladder = mc->n_latent_layers > 0;
    m->n_stages = m->ladder ? mc->n_latent_layers : 1;
    m->embed_stage = m->n_stages - 1;
    for (int s = 0; s < m->n_stages; s++) {
        stage *S = &m->stages[s];
        const int top = s == m->n_stages - 1;
        S->lat = (nbs_latent){top ? mc->latent : NBS_LATENT_GAUSSIAN, m->ladder ? mc->latent_layers[s] : mc->latent_dim,
                              mc->kappa_floor};
        S->head_dim = nbs_latent_head_dim(&S->lat);
        S->kl_terms = nbs_latent_kl_terms(&S->lat);
        S->kl_offset = m->kl_terms;
        S->has_prior = !top;
        m->kl_terms += S->kl_terms;
    }
    stage *S = &m->stages[0];
    m->K = mc->discrete;
    if (m->K) m->cl_kl = m->kl_terms++;
    m->n_enc = mc->n_encoder_layers;
    m->n_dec = mc->n_decoder_layers;
    m->has_zi = mc->likelihood == NBS_LIK_ZINB;
    m->has_disp = mc->likelihood != NBS_LIK_POISSON && mc->dispersion == NBS_DISP_GENE_CELL;

    layer_ids enc[NBS_MAX_LAYERS], dec[NBS_MAX_LAYERS], head[MAX_STAGES], out,
        zi = {-1, -1, -1, -1, -1, -1, -1, -1}, disp = zi, up[MAX_STAGES], ph[MAX_STAGES], pout[MAX_STAGES];
    int skip[NBS_MAX_LAYERS][MAX_STAGES];
    char nm[64];
    int in = n_genes;
    /* scvi-tools' injection: the categorical covariates into every decoder hidden layer
     * (deeply_inject_covariates), the continuous ones into the first; with encode_covariates both
     * into the first encoder layer too. An embedding enters where the one-hot block would: every
     * decoder hidden layer (scvi-tools' SCVI with batch_representation="embedding" concatenates
     * the batch's embedding to the decoder's input only, as a continuous covariate; here it is
     * injected as deeply as the one-hot) */
    const int n_cont = cov->n_continuous, enc_cov = mc->encode_covariates;
    for (int i = 0; i < m->n_enc; i++) {
        snprintf(nm, sizeof nm, "encoder.%d", i);
        enc[i] = declare_layer(m, nm, in, mc->encoder_layers[i], mc->norm, enc_cov && !i ? m->n_cat_in : 0,
                               enc_cov && !i ? n_cont : 0);
        in = mc->encoder_layers[i];
    }
    if (!m->ladder) head[0] = declare_layer(m, "encoder.head", in, S->head_dim, 0, 0, 0);
    /* the ladder's bottom-up layers and heads, then its top-down priors, each as wide as the
     * encoder's last layer */
    const int U = in;
    for (int s = 0; m->ladder && s < m->n_stages; s++) {
        snprintf(nm, sizeof nm, "ladder.%d.up", s);
        up[s] = declare_layer(m, nm, s ? U : in, U, 0, 0, 0);
        snprintf(nm, sizeof nm, "ladder.%d.head", s);
        head[s] = declare_layer(m, nm, U, m->stages[s].head_dim, 0, 0, 0);
    }
    for (int s = 0; m->ladder && s < m->n_stages - 1; s++) {
        snprintf(nm, sizeof nm, "ladder.%d.prior", s);
        ph[s] = declare_layer(m, nm, m->stages[s + 1].lat.dim, U, 0, 0, 0);
        snprintf(nm, sizeof nm, "ladder.%d.prior.head", s);
        pout[s] = declare_layer(m, nm, U, 2 * m->stages[s].lat.dim, 0, 0, 0);
    }
    in = S->lat.dim;
    for (int i = 0; i < m->n_dec; i++) {
        snprintf(nm, sizeof nm, "decoder.%d", i);
        dec[i] = declare_layer(m, nm, in, mc->decoder_layers[i], mc->norm, m->n_cat_in, i ? 0 : n_cont);
        for (int s = 0; s < m->n_stages; s++) { /* decoder.0 reads z_0 as its input already */
            skip[i][s] = -1;
            if (!mc->skip_connections || (!i && !s)) continue;
            snprintf(nm, sizeof nm, "decoder.%d.skip.%d.W", i, s);
            skip[i][s] = add_block(m, nm, m->stages[s].lat.dim, mc->decoder_layers[i], 0);
        }
        in = mc->decoder_layers[i];
    }
    out = declare_layer(m, "decoder.out", in, n_genes, 0, 0, 0);
    if (m->has_zi) zi = declare_layer(m, "decoder.dropout", in, n_genes, 0, 0, 0);
    if (m->has_disp) disp = declare_layer(m, "decoder.dispersion", in, n_genes, 0, 0, 0);
    int disp_gene = mc->likelihood != NBS_LIK_POISSON && !m->has_disp
                        ? add_block(m, "dispersion", m->n_batches, n_genes, 0) : -1;
    /* the tables last and consecutive, so they are one (n_onehot, emb_dim) array */
    int emb0 = -1;
    for (int k = 0; m->emb_dim && k < cov->n_categorical; k++) {
        snprintf(nm, sizeof nm, "covariates.%d.embedding", k);
        const int id = add_block(m, nm, cov->n_categories[k], m->emb_dim, 0);
        if (!k) emb0 = id;
    }
    /* the discrete latent's blocks after all others, so that a model without it is laid out as before */
    layer_ids cl = {-1, -1, -1, -1, -1, -1, -1, -1};
    int cl_logits = -1, cl_mean = -1, cl_logvar = -1;
    if (m->K) {
        cl = declare_layer(m, "encoder.cluster", mc->encoder_layers[m->n_enc - 1], m->K, 0, 0, 0);
        cl_logits = add_block(m, "prior.cluster_logits", 1, m->K, 0);
        cl_mean = add_block(m, "prior.mean", m->K, mc->latent_dim, 0);
        cl_logvar = add_block(m, "prior.logvar", m->K, mc->latent_dim, 0);
    }

    size_t np = (size_t)m->n_params;
    m->params = nbs_calloc(np, sizeof(float), err);
    m->grads = m->params ? nbs_calloc(np, sizeof(float), err) : NULL;
    m->adam_m = m->grads ? nbs_calloc(np, sizeof(float), err) : NULL;
    m->adam_v = m->adam_m ? nbs_calloc(np, sizeof(float), err) : NULL;
    m->state = m->adam_v ? nbs_calloc((size_t)m->n_state + 1, sizeof(float), err) : NULL;
    if (!m->state) {
        nbs_model_free(m);
        return NULL;
    }
    for (int i = 0; i < m->n_enc; i++) bind_hidden(m, &m->enc[i], enc[i], mc->norm, NULL);
    for (int i = 0; i < m->n_dec; i++) bind_hidden(m, &m->dec[i], dec[i], mc->norm, skip[i]);
    for (int s = 0; s < m->n_stages; s++) {
        bind_dense(m, &m->stages[s].head, head[s]);
        if (m->ladder) bind_dense(m, &m->stages[s].up, up[s]);
        if (m->stages[s].has_prior) {
            bind_dense(m, &m->stages[s].prior_hidden, ph[s]);
            bind_dense(m, &m->stages[s].prior_head, pout[s]);
        }
    }
    bind_dense(m, &m->out, out);
    if (m->has_zi) bind_dense(m, &m->out_zi, zi);
    if (m->has_disp) bind_dense(m, &m->out_disp, disp);
    m->log_theta = P(m, disp_gene);
    m->dlog_theta = D(m, disp_gene);
    m->emb = P(m, emb0);
    m->demb = D(m, emb0);
    if (m->K) {
        bind_dense(m, &m->cluster, cl);
        m->prior_logits = P(m, cl_logits), m->dprior_logits = D(m, cl_logits);
        m->prior_mean = P(m, cl_mean), m->dprior_mean = D(m, cl_mean);
        m->prior_logvar = P(m, cl_logvar), m->dprior_logvar = D(m, cl_logvar);
    }

    if (rng) {
        for (int i = 0; i < m->n_enc; i++) init_hidden(m, &m->enc[i], rng);
        for (int s = 0; s < m->n_stages; s++) {
            if (m->ladder) init_dense(&m->stages[s].up, rng, 1.0);
            init_dense(&m->stages[s].head, rng, 1.0);
        }
        for (int s = 0; s < m->n_stages; s++)
            if (m->stages[s].has_prior) {
                init_dense(&m->stages[s].prior_hidden, rng, 1.0);
                init_dense(&m->stages[s].prior_head, rng, 1.0);
            }
        for (int i = 0; i < m->n_dec; i++) init_hidden(m, &m->dec[i], rng);
        /* A small last layer makes the decoder start weak, so it must lean on z. */
        init_dense(&m->out, rng, mc->decoder_init_scale);
        if (m->has_zi) init_dense(&m->out_zi, rng, 1.0);
        if (m->has_disp) init_dense(&m->out_disp, rng, 1.0);
        /* log theta = 0 (theta = 1) to start, or N(0, 1) draws as scvi-tools */
        if (m->log_theta && mc->dispersion_init == NBS_DISP_INIT_LOGNORMAL)
            for (int64_t k = 0; k < (int64_t)m->n_batches * m->G; k++) m->log_theta[k] = (float)gsl_ran_gaussian(rng, 1.0);
        /* the tables N(0, 1), torch.nn.Embedding's default (scvi.nn.Embedding keeps it) */
        for (int64_t k = 0; m->emb && k < (int64_t)m->n_onehot * m->emb_dim; k++)
            m->emb[k] = (float)gsl_ran_gaussian(rng, 1.0);
        /* the discrete latent last (its draws leave every other block as without it): a uniform p(c),
         * unit-variance components at N(0, I) draws, as VaDE starts from distinct components */
        if (m->K) {
            init_dense(&m->cluster, rng, 1.0);
            for (int64_t k = 0; k < (int64_t)m->K * mc->latent_dim; k++)
                m->prior_mean[k] = (float)gsl_ran_gaussian(rng, 1.0);
        }
    }
    return m;
}

/* scArches' surgery (Lotfollahi et al. 2021; scvi-tools' ArchesMixin.load_query_data with its
 * default unfrozen=False, freeze_expression=True, followed here): the reference model's tensors are
 * kept and a tensor that grew takes the new model's fresh initialisation for its new part, torch's
 * Linear default over the grown fan-in. Only the new categories' rows train; unlike scvi-tools,
 * whose px_r stays frozen, new gene-batch dispersion rows train too (they start as a new model's
 * would). Dropout off and frozen batch-norm statistics are scArches' tutorial settings
 * (freeze_dropout=True; freeze_batchnorm_encoder), here for the decoder too, so a reference cell's
 * embedding and decoding stay exactly as they were. */
nbs_model *nbs_model_grow(const nbs_model *old, const nbs_covariate_layout *grown, int32_t *const old_to_new[],
                          gsl_rng *rng, nbs_error *err) {
    const nbs_covariate_layout *oc = &old->cov;
    int ok = grown->n_categorical == oc->n_categorical && grown->n_continuous == oc->n_continuous &&
             grown->has_batch == oc->has_batch;
    for (int k = 0; ok && k < oc->n_categorical; k++) {
        ok = grown->n_categories[k] >= oc->n_categories[k];
        for (int i = 0; ok && i < oc->n_categories[k]; i++)
            ok = old_to_new[k][i] >= 0 && old_to_new[k][i] < grown->n_categories[k];
    }
    if (!ok) {
        nbs_error_set(err, NBS_ERR_INTERNAL, "model: the grown covariates do not extend the model's");
        return NULL;
    }
    nbs_model *m = nbs_model_new(&old->cfg, old->G, grown, NULL, err);
    if (!m) return NULL;
    if (!(m->trainable = nbs_calloc((size_t)m->n_params, 1, err))) {
        nbs_model_free(m);
        return NULL;
    }
    double eps, momentum;
    nbs_model_batch_norm(old, &eps, &momentum);
    nbs_model_set_batch_norm(m, eps, momentum);
    /* the blocks are declared in the same order; those of unchanged shape are copied as they are */
    for (int b = 0; b < m->n_blocks; b++) {
        const block *B = &m->blocks[b], *A = &old->blocks[b];
        if (strcmp(A->name, B->name) || A->cols != B->cols) {
            nbs_error_set(err, NBS_ERR_INTERNAL, "model: block %s has no counterpart %s", B->name, A->name);
            nbs_model_free(m);
            return NULL;
        }
        if (A->rows == B->rows)
            memcpy((B->is_state ? m->state : m->params) + B->offset, (A->is_state ? old->state : old->params) + A->offset,
                   sizeof(float) * (size_t)A->rows * A->cols);
    }
    /* covariates.W (n_onehot, width) of every layer that reads them: the known categories' rows
     * move to their codes among the grown categories, new rows are drawn and train. With
     * embeddings covariates.W keeps its shape and stays frozen; the tables grow instead. */
    for (int i = 0; !m->emb && i < m->n_enc + m->n_dec; i++) {
        hidden *h = i < m->n_enc ? &m->enc[i] : &m->dec[i - m->n_enc];
        const hidden *ho = i < m->n_enc ? &old->enc[i] : &old->dec[i - m->n_enc];
        if (!h->Wcat) continue;
        const int w = h->lin.out;
        int n_skip = 0;
        for (int s = 0; s < m->n_stages; s++) n_skip += h->Wskip[s] ? m->stages[s].lat.dim : 0;
        const double a =
            1.0 / sqrt((double)h->lin.in + m->n_onehot + (h->Wcont ? m->cov.n_continuous : 0) + n_skip);
        memset(m->trainable + (h->Wcat - m->params), 1, (size_t)m->n_onehot * w);
        for (int k = 0; k < oc->n_categorical; k++)
            for (int c = 0; c < oc->n_categories[k]; c++) {
                const int64_t row = m->cat_offset[k] + old_to_new[k][c];
                memcpy(h->Wcat + row * w, ho->Wcat + (int64_t)(old->cat_offset[k] + c) * w, sizeof(float) * w);
                memset(m->trainable + (h->Wcat - m->params) + row * w, 0, (size_t)w);
            }
        for (int64_t r = 0; r < m->n_onehot; r++)
            if (m->trainable[(h->Wcat - m->params) + r * w]) fill_uniform(h->Wcat + r * w, w, a, rng);
    }
    /* the tables (n_onehot, emb_dim): the same, new rows N(0, 1) as a new model's (scvi.nn.Embedding's
     * extend with freeze_prev) */
    if (m->emb) {
        const int64_t E = m->emb_dim, at = m->emb - m->params;
        memset(m->trainable + at, 1, (size_t)(m->n_onehot * E));
        for (int k = 0; k < oc->n_categorical; k++)
            for (int c = 0; c < oc->n_categories[k]; c++) {
                const int64_t row = m->cat_offset[k] + old_to_new[k][c];
                memcpy(m->emb + row * E, old->emb + (old->cat_offset[k] + c) * E, sizeof(float) * E);
                memset(m->trainable + at + row * E, 0, (size_t)E);
            }
        for (int64_t r = 0; r < m->n_onehot; r++)
            for (int64_t t = 0; m->trainable[at + r * E] && t < E; t++)
                m->emb[r * E + t] = (float)gsl_ran_gaussian(rng, 1.0);
    }
    /* gene-batch dispersion (n_batches, G): the same for the batch's categories */
    if (m->log_theta && m->n_batches != old->n_batches) {
        const int64_t G = m->G, at = m->log_theta - m->params;
        memset(m->trainable + at, 1, (size_t)(m->n_batches * G));
        for (int c = 0; c < old->n_batches; c++) {
            memcpy(m->log_theta + old_to_new[0][c] * G, old->log_theta + c * G, sizeof(float) * G);
            memset(m->trainable + at + old_to_new[0][c] * G, 0, (size_t)G);
        }
        for (int64_t r = 0; r < m->n_batches; r++)
            for (int64_t g = 0; m->trainable[at + r * G] && g < G; g++)
                m->log_theta[r * G + g] =
                    m->cfg.dispersion_init == NBS_DISP_INIT_LOGNORMAL ? (float)gsl_ran_gaussian(rng, 1.0) : 0.0f;
    }
    return m;
}

const uint8_t *nbs_model_trainable(const nbs_model *m) { return m->trainable; }

void nbs_model_free(nbs_model *m) {
    if (!m) return;
    free(m->params), free(m->grads), free(m->adam_m), free(m->adam_v), free(m->state), free(m->trainable);
    free(m);
}

/* ---- workspace ---- */

void nbs_workspace_free(nbs_workspace *w) {
    if (!w) return;
    for (int i = 0; i < NBS_MAX_LAYERS; i++)
        for (int k = 0; k < 2; k++) {
            hidden_ws *h = k ? &w->dec[i] : &w->enc[i];
            free(h->relu_out), free(h->act), free(h->mask), free(h->xhat), free(h->inv_std);
        }
    for (int s = 0; s < MAX_STAGES; s++) {
        stage_ws *S = &w->stages[s];
        free(S->head_out), free(S->dhead), free(S->z), free(S->dz), free(S->kl), free(S->dzs);
        free(S->up), free(S->dup), free(S->ph), free(S->dph), free(S->prior), free(S->dprior);
        free(S->mu), free(S->lv), free(S->eps);
        nbs_latent_cache_free(S->cache);
    }
    free(w->bptr), free(w->bidx), free(w->bval), free(w->bcount), free(w->lib), free(w->loglik), free(w->kl);
    free(w->cptr), free(w->ccell), free(w->cval);
    free(w->cov_rows), free(w->cov_emb), free(w->dcov_emb), free(w->cov_values), free(w->batch);
    free(w->logits), free(w->dlogits), free(w->dlt), free(w->zi), free(w->dzi), free(w->disp);
    free(w->likwork), free(w->lik_rows), free(w->dbuf[0]), free(w->dbuf[1]), free(w->dtmp);
    free(w->cl_logits), free(w->dcl_logits), free(w->cl_logp), free(w->cl_prob), free(w->cl_kl), free(w->cl_extra);
    free(w);
}

/* training = 0: an inference workspace, without the dropout masks and gradient buffers (at G =
 * 20000 genes and 256 cells those are most of its size). */
static nbs_workspace *workspace_make(const nbs_model *m, int n, int64_t max_nnz, int training, nbs_error *err) {
    if (n < 1) n = 1;
    nbs_workspace *w = nbs_calloc(1, sizeof *w, err);
    if (!w) return NULL;
    w->model = m;
    w->training = training;
    w->cap = n;
    w->nnz_cap = max_nnz > 0 ? max_nnz : 1;
    w->G = m->G;
    w->kl_terms = m->kl_terms;
    w->n_threads = omp_get_max_threads();
    int64_t widest = 0;
    int ok = 1;
#define ALLOC(p, count, type) ok = ok && ((p) = nbs_calloc((size_t)(count), sizeof(type), err)) != NULL
    for (int i = 0; i < m->n_enc + m->n_dec; i++) {
        hidden_ws *h = i < m->n_enc ? &w->enc[i] : &w->dec[i - m->n_enc];
        const int64_t width = (i < m->n_enc ? m->enc[i] : m->dec[i - m->n_enc]).lin.out, sz = (int64_t)n * width;
        if (width > widest) widest = width;
        ALLOC(h->relu_out, sz, float);
        ALLOC(h->act, sz, float);
        if (training && i < m->n_enc && m->cfg.dropout > 0) ALLOC(h->mask, sz, float); /* the decoder has no dropout */
        ALLOC(h->xhat, sz, float);
        ALLOC(h->inv_std, n > width ? n : width, float);
    }
    for (int s = 0; s < m->n_stages; s++) {
        const stage *S = &m->stages[s];
        stage_ws *SW = &w->stages[s];
        if (S->head_dim > widest) widest = S->head_dim;
        ALLOC(SW->head_out, (int64_t)n * S->head_dim, float);
        if (training) ALLOC(SW->dhead, (int64_t)n * S->head_dim, float);
        ALLOC(SW->z, (int64_t)n * S->lat.dim, float);
        if (training) ALLOC(SW->dz, (int64_t)n * S->lat.dim, float);
        ALLOC(SW->kl, (int64_t)n * S->kl_terms, double);
        ok = ok && (SW->cache = nbs_latent_cache_new(&S->lat, n, err)) != NULL;
        const int64_t nd = (int64_t)n * S->lat.dim;
        if (training && m->cfg.skip_connections) ALLOC(SW->dzs, nd, float);
        if (!m->ladder) continue;
        const int64_t nu = (int64_t)n * S->up.out;
        ALLOC(SW->up, nu, float);
        if (training) ALLOC(SW->dup, nu, float);
        if (!S->has_prior) continue;
        ALLOC(SW->ph, (int64_t)n * S->prior_hidden.out, float);
        ALLOC(SW->prior, 2 * nd, float);
        ALLOC(SW->mu, nd, float);
        ALLOC(SW->lv, nd, float);
        ALLOC(SW->eps, nd, float);
        if (training) ALLOC(SW->dph, (int64_t)n * S->prior_hidden.out, float);
        if (training) ALLOC(SW->dprior, 2 * nd, float);
    }
    const int64_t nG = (int64_t)n * m->G;
    ALLOC(w->bptr, n + 1, int64_t);
    ALLOC(w->bidx, w->nnz_cap, int32_t);
    ALLOC(w->bval, w->nnz_cap, float);
    ALLOC(w->bcount, w->nnz_cap, float);
    if (training) ALLOC(w->cptr, (int64_t)m->enc[0].lin.in + 1, int64_t);
    if (training) ALLOC(w->ccell, w->nnz_cap, int32_t);
    if (training) ALLOC(w->cval, w->nnz_cap, float);
    ALLOC(w->lib, n, double);
    if (m->cov.n_categorical) ALLOC(w->cov_rows, (int64_t)n * m->cov.n_categorical, int32_t);
    if (m->emb) ALLOC(w->cov_emb, (int64_t)n * m->n_cat_in, float);
    if (m->emb && training) ALLOC(w->dcov_emb, (int64_t)n * m->n_cat_in, float);
    if (m->cov.n_continuous) ALLOC(w->cov_values, (int64_t)n * m->cov.n_continuous, float);
    if (m->n_batches > 1) ALLOC(w->batch, n, int32_t);
    ALLOC(w->loglik, n, double);
    ALLOC(w->kl, (int64_t)n * m->kl_terms, double);
    ALLOC(w->logits, nG, float);
    if (training) ALLOC(w->dlogits, nG, float);
    if (training) ALLOC(w->dlt, nG, float);
    if (m->has_zi) ALLOC(w->zi, nG, float);
    if (m->has_zi && training) ALLOC(w->dzi, nG, float);
    if (m->has_disp) ALLOC(w->disp, nG, float);
    ALLOC(w->likwork, NBS_LIK_WORK * (int64_t)m->n_batches * m->G, double);
    ALLOC(w->lik_rows, (int64_t)w->n_threads * NBS_LIK_THREAD_ROWS * m->G, double);
    if (training) {
        ALLOC(w->dbuf[0], (int64_t)n * widest, float);
        ALLOC(w->dbuf[1], (int64_t)n * widest, float);
        ALLOC(w->dtmp, (int64_t)n * widest, float);
    }
    if (m->K) {
        const int64_t nK = (int64_t)n * m->K;
        ALLOC(w->cl_logits, nK, float);
        ALLOC(w->cl_logp, nK, double);
        ALLOC(w->cl_prob, nK, double);
        ALLOC(w->cl_kl, (int64_t)n * (m->stages[0].lat.dim + 1), double);
        if (training) ALLOC(w->dcl_logits, nK, float);
        if (training) ALLOC(w->cl_extra, nK, float);
    }
#undef ALLOC
    if (!ok) {
        nbs_workspace_free(w);
        return NULL;
    }
    return w;
}

nbs_workspace *nbs_workspace_new(const nbs_model *m, int max_batch, int64_t max_nnz, nbs_error *err) {
    return workspace_make(m, max_batch, max_nnz, 1, err);
}

nbs_workspace *nbs_workspace_eval(const nbs_model *m, const nbs_matrix *X, nbs_error *err) {
    return workspace_make(m, NBS_EVAL_BATCH, nbs_matrix_max_batch_nnz(X, NBS_EVAL_BATCH), 0, err);
}

nbs_cells nbs_cells_all(const nbs_matrix *X, const double *library) {
    return (nbs_cells){.X = X, .n = X->n_cells, .library = library};
}

nbs_cells nbs_cells_slice(const nbs_cells *c, int64_t start, int64_t n) {
    nbs_cells s = *c;
    if (c->rows) s.rows = c->rows + start;
    else s.row0 = c->row0 + start;
    s.n = c->n - start < n ? c->n - start : n;
    return s;
}

/* ---- forward ---- */

void nbs_workspace_set_share(nbs_workspace *w, int64_t before, int64_t after, gsl_rng *sphere_rng) {
    w->share_before = before;
    w->share_after = after;
    w->share_sphere_rng = sphere_rng;
}

/* The draws of other processes' cells, in the order their own forward makes them: count
 * uniforms (dropout masks) or count standard normals (the ziggurat's draws vary in number,
 * so it is run, not counted). */
static void skip_uniform(gsl_rng *rng, int64_t count) {
    for (int64_t k = 0; k < count; k++) (void)gsl_rng_uniform(rng);
}

static void skip_gaussian(gsl_rng *rng, int64_t count) {
    for (int64_t k = 0; k < count; k++) (void)gsl_ran_gaussian_ziggurat(rng, 1.0);
}

/* Each batch cell's covariates as the layers read them: its categories as rows of the
 * covariates.W blocks or of the tables, with the tables' rows looked up, its continuous values,
 * and its batch. */
static int gather_covariates(const nbs_model *m, nbs_workspace *w, const nbs_cells *c, nbs_error *err) {
    const int k = m->cov.n_categorical, kc = m->cov.n_continuous;
    if (w->model != m) /* its buffers are sized for that model's layers */
        return nbs_error_set(err, NBS_ERR_INTERNAL, "a workspace made for another model");
    if (c->n > w->cap)
        return nbs_error_set(err, NBS_ERR_INTERNAL, "a batch of %lld cells for a workspace of %d", (long long)c->n,
                             w->cap);
    if ((k && (!c->covariate_codes || c->n_categorical != k)) || (kc && (!c->continuous || c->n_continuous != kc)))
        return nbs_error_set(err, NBS_ERR_INTERNAL, "the model takes %d categorical and %d continuous covariates, "
                             "the cells carry %d and %d", k, kc, c->covariate_codes ? c->n_categorical : 0,
                             c->continuous ? c->n_continuous : 0);
    for (int i = 0; i < c->n; i++) {
        const int64_t r = nbs_cells_row(c, i);
        for (int j = 0; j < k; j++) {
            const int32_t code = c->covariate_codes[r * k + j];
            if (code < 0 || code >= m->cov.n_categories[j])
                return nbs_error_set(err, NBS_ERR_INTERNAL, "cell %lld: code %d of categorical covariate %d is "
                                     "outside its %d categories", (long long)r, code, j, m->cov.n_categories[j]);
            w->cov_rows[(int64_t)i * k + j] = m->cat_offset[j] + code;
            if (m->emb)
                memcpy(w->cov_emb + ((int64_t)i * k + j) * m->emb_dim,
                       m->emb + (int64_t)(m->cat_offset[j] + code) * m->emb_dim, sizeof(float) * m->emb_dim);
        }
        if (kc) memcpy(w->cov_values + (int64_t)i * kc, c->continuous + r * kc, sizeof(float) * kc);
        if (w->batch) w->batch[i] = c->covariate_codes[r * k];
    }
    return NBS_OK;
}

/* log1p of the small counts, the usual input under `input_transform: log1p`: a table lookup
 * instead of a log1p per stored entry of every minibatch, with the same values. */
#define LOG1P_TABLE 256
static float LOG1P_SMALL[LOG1P_TABLE];
static pthread_once_t log1p_once = PTHREAD_ONCE_INIT;
static void fill_log1p(void) {
    for (int k = 0; k < LOG1P_TABLE; k++) LOG1P_SMALL[k] = (float)log1p((double)k);
}

/* Copies the batch's rows into the workspace's CSR with the encoder's input transform applied,
 * with each cell's row of X, observed library size and covariates. */
static int gather(const nbs_model *m, nbs_workspace *w, const nbs_cells *c, nbs_error *err) {
    const nbs_matrix *X = c->X;
    if (X->n_genes != m->G)
        return nbs_error_set(err, NBS_ERR_INTERNAL, "model has %d genes, data %lld", m->G, (long long)X->n_genes);
    if (c->n > w->cap || !c->library)
        return nbs_error_set(err, NBS_ERR_INTERNAL, "a batch of %lld cells for a workspace of %d%s",
                             (long long)c->n, w->cap, c->library ? "" : ", without library sizes");
    int st = gather_covariates(m, w, c, err);
    if (st) return st;
    pthread_once(&log1p_once, fill_log1p);
    w->bptr[0] = 0; /* where each row goes, then the rows in parallel */
    for (int i = 0; i < c->n; i++) {
        const int64_t r = nbs_cells_row(c, i);
        w->bptr[i + 1] = w->bptr[i] + X->indptr[r + 1] - X->indptr[r];
        if (w->bptr[i + 1] > w->nnz_cap)
            return nbs_error_set(err, NBS_ERR_INTERNAL, "a batch with more than the workspace's %lld counts",
                                 (long long)w->nnz_cap);
    }
    const int64_t q = w->bptr[c->n];
#pragma omp parallel for schedule(static)
    for (int i = 0; i < c->n; i++) {
        const int64_t r = nbs_cells_row(c, i);
        const double l = c->library[r];
        const double f = m->cfg.input_transform == NBS_INPUT_LOG1P_CP10K && l > 0 ? 1e4 / l : 1.0;
        for (int64_t p = X->indptr[r], o = w->bptr[i]; p < X->indptr[r + 1]; p++, o++) {
            const double x = X->data[p];
            w->bidx[o] = X->indices[p];
            w->bcount[o] = X->data[p];
            w->bval[o] = f == 1.0 && x >= 0 && x < LOG1P_TABLE && x == (int)x ? LOG1P_SMALL[(int)x]
                                                                              : (float)log1p(f * x);
        }
        w->lib[i] = l;
    }
    w->bX = (nbs_matrix){.n_cells = c->n, .n_genes = m->G, .nnz = q, .indptr = w->bptr, .indices = w->bidx,
                         .data = w->bcount, .values_are_integer = X->values_are_integer};
    return NBS_OK;
}

/* The layer's input x (n, in) dense, or sx sparse; the covariates from the workspace. */
static void hidden_forward(const nbs_model *m, const hidden *h, hidden_ws *hw, const nbs_workspace *w,
                           const float *x, const nbs_sparse_rows *sx, int n, int training, double dropout,
                           gsl_rng *rng) {
    const int64_t sz = (int64_t)n * h->lin.out;
    if (sx) nbs_dense_forward_sparse(&h->lin, sx, hw->relu_out);
    else nbs_dense_forward(&h->lin, x, n, hw->relu_out);
    if (h->Wcat && m->emb) nbs_linear_add_forward(h->Wcat, m->n_cat_in, h->lin.out, w->cov_emb, n, hw->relu_out);
    else if (h->Wcat) nbs_onehot_forward(h->Wcat, h->lin.out, w->cov_rows, m->cov.n_categorical, n, hw->relu_out);
    if (h->Wcont)
        nbs_linear_add_forward(h->Wcont, m->cov.n_continuous, h->lin.out, w->cov_values, n, hw->relu_out);
    for (int s = 0; s < m->n_stages; s++) /* skip connections: the latent layers' z from the workspace */
        if (h->Wskip[s]) nbs_linear_add_forward(h->Wskip[s], m->stages[s].lat.dim, h->lin.out, w->stages[s].z, n, hw->relu_out);
    if (h->has_norm) { /* a frozen model keeps its running statistics: it normalises as in evaluation */
        const int batch_stats = training && !m->trainable;
        hw->used_batch = nbs_norm_uses_batch(&h->norm, n, batch_stats);
        nbs_norm_forward(&h->norm, hw->relu_out, n, batch_stats, hw->xhat, hw->inv_std);
    }
    nbs_relu_forward(hw->relu_out, sz);
    memcpy(hw->act, hw->relu_out, sizeof(float) * sz);
    if (training && dropout > 0) {
        skip_uniform(rng, w->share_before * h->lin.out);
        nbs_dropout_mask(rng, dropout, hw->mask, sz);
        skip_uniform(rng, w->share_after * h->lin.out);
        nbs_mul_inplace(hw->act, hw->mask, sz);
    }
}

/* ---- the ladder (docs/design.md "Ladder"), forward ---- */

/* The bottom-up path from the encoder's last activation h (n, encoder width): up_s = ReLU(up_{s-1}
 * W + b), each stage's head reading its up layer. */
static void ladder_up(const nbs_model *m, nbs_workspace *w, const float *h, int n) {
    for (int s = 0; s < m->n_stages; s++) {
        const stage *S = &m->stages[s];
        stage_ws *SW = &w->stages[s];
        nbs_dense_forward(&S->up, s ? w->stages[s - 1].up : h, n, SW->up);
        nbs_relu_forward(SW->up, (int64_t)n * S->up.out);
        nbs_dense_forward(&S->head, SW->up, n, SW->head_out);
    }
}

/* latent.c's bounds on a Gaussian's log variance, so that exp() stays finite */
#define LADDER_LV_MIN -15.0
#define LADDER_LV_MAX 10.0

/* Dimension j of cell i of a stage below the top: the precision-weighted merge of its bottom-up
 * Gaussian (head (n, 2d): mean, log variance) and its top-down prior (prior (n, 2d)):
 * 1/var = 1/var_l + 1/var_t, mu = a mu_l + b mu_t with a = var / var_l, b = var / var_t. */
typedef struct {
    double ml, lvl, mt, lvt, vt; /* bottom-up mean and log variance; the prior's, and its variance */
    double a, b, mu, lv;         /* the weights, the merged mean and log variance */
    int clamped_l, clamped_t;    /* a raw log variance outside the bounds: no gradient to it */
} ladder_merge;

static ladder_merge merge_of(const float *head, const float *prior, int d, int64_t i, int j) {
    ladder_merge g;
    const float *h = head + i * 2 * d, *p = prior + i * 2 * d;
    g.ml = h[j];
    g.mt = p[j];
    g.clamped_l = !(h[d + j] >= LADDER_LV_MIN && h[d + j] <= LADDER_LV_MAX);
    g.clamped_t = !(p[d + j] >= LADDER_LV_MIN && p[d + j] <= LADDER_LV_MAX);
    g.lvl = fmin(fmax(h[d + j], LADDER_LV_MIN), LADDER_LV_MAX);
    g.lvt = fmin(fmax(p[d + j], LADDER_LV_MIN), LADDER_LV_MAX);
    g.vt = exp(g.lvt);
    const double pl = exp(-g.lvl), pt = exp(-g.lvt), sum = pl + pt;
    g.a = pl / sum;
    g.b = pt / sum;
    g.mu = g.a * g.ml + g.b * g.mt;
    g.lv = -log(sum);
    return g;
}

/* The top-down pass below stage `from`, whose z is set: for s = from - 1 .. 0 the prior
 * p(z_s | z_{s+1}) = N(mu_t, var_t) from an MLP on z_{s+1}, the merged posterior q(z_s | x, z_{s+1}),
 * its sample (rng) or mean (rng NULL) as z_s, and the analytic KL(q || p) per dimension. */
static void ladder_down(const nbs_model *m, nbs_workspace *w, int n, int from, gsl_rng *rng) {
    for (int s = from - 1; s >= 0; s--) {
        const stage *S = &m->stages[s];
        stage_ws *SW = &w->stages[s];
        const int d = S->lat.dim;
        nbs_dense_forward(&S->prior_hidden, w->stages[s + 1].z, n, SW->ph);
        nbs_relu_forward(SW->ph, (int64_t)n * S->prior_hidden.out);
        nbs_dense_forward(&S->prior_head, SW->ph, n, SW->prior);
        if (rng) skip_gaussian(rng, w->share_before * d);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < d; j++) {
                const ladder_merge g = merge_of(SW->head_out, SW->prior, d, i, j);
                const int64_t k = (int64_t)i * d + j;
                double z = g.mu;
                if (rng) {
                    const double e = gsl_ran_gaussian_ziggurat(rng, 1.0);
                    SW->eps[k] = (float)e;
                    z += exp(0.5 * g.lv) * e;
                }
                const double dev = g.mu - g.mt;
                SW->mu[k] = (float)g.mu;
                SW->lv[k] = (float)g.lv;
                SW->z[k] = (float)z;
                SW->kl[k] = 0.5 * (g.lvt - g.lv + (exp(g.lv) + dev * dev) / g.vt - 1);
            }
        if (rng) skip_gaussian(rng, w->share_after * d);
        SW->sampled = rng != NULL;
    }
}

/* The gathered and encoded batch through a ladder at the posterior locations: the top at its
 * location, every layer below at its merged posterior mean given the one above. */
static int ladder_locations(const nbs_model *m, nbs_workspace *w, int n, nbs_error *err) {
    const int top = m->n_stages - 1;
    stage_ws *TW = &w->stages[top];
    int st = nbs_latent_forward(&m->stages[top].lat, TW->head_out, n, NULL, TW->z, TW->kl, TW->cache, err);
    if (!st) ladder_down(m, w, n, top, NULL);
    return st;
}

/* The decoder's input Z (n, nbs_model_decoder_dim) split into the stages' z buffers, bottom first,
 * where the decoder reads them (skip connections, a ladder); otherwise Z itself. */
static const float *decoder_input(const nbs_model *m, nbs_workspace *w, const float *Z, int n) {
    if (m->n_stages == 1 && !m->cfg.skip_connections) return Z;
    const int D = nbs_model_decoder_dim(m);
    for (int s = 0, off = 0; s < m->n_stages; off += m->stages[s++].lat.dim)
        for (int i = 0; i < n; i++)
            memcpy(w->stages[s].z + (int64_t)i * m->stages[s].lat.dim, Z + (int64_t)i * D + off,
                   sizeof(float) * m->stages[s].lat.dim);
    return w->stages[0].z;
}

int nbs_model_decoder_dim(const nbs_model *m) {
    if (!m->ladder) return m->stages[0].lat.dim;
    int D = 0;
    for (int s = 0; s < m->n_stages; s++) D += m->stages[s].lat.dim;
    return D;
}

/* The gathered batch -> each stage's head (n, head_dim). Training updates batch-norm running
 * statistics, the only write to the model in a forward. */
static void encode_gathered(const nbs_model *m, nbs_workspace *w, int n, int training, gsl_rng *rng) {
    nbs_sparse_rows sx = {n, w->bptr, w->bidx, w->bval, NULL, NULL, NULL};
    for (int i = 0; i < m->n_enc; i++)
        hidden_forward(m, &m->enc[i], &w->enc[i], w, i ? w->enc[i - 1].act : NULL, i ? NULL : &sx, n, training,
                       dropout_of(m), rng);
    if (m->ladder) ladder_up(m, w, w->enc[m->n_enc - 1].act, n);
    else
        for (int s = 0; s < m->n_stages; s++)
            nbs_dense_forward(&m->stages[s].head, w->enc[m->n_enc - 1].act, n, w->stages[s].head_out);
}

static nbs_mixture mixture_of(const nbs_model *m) {
    return (nbs_mixture){m->K, m->stages[0].lat.dim, m->prior_logits, m->prior_mean, m->prior_logvar};
}

/* The discrete latent of the encoded batch: q(c|x) and, with kl, the mixture's KL terms (n, d + 1). */
static void cluster_forward(const nbs_model *m, nbs_workspace *w, int n, int kl) {
    const nbs_mixture p = mixture_of(m);
    nbs_dense_forward(&m->cluster, w->enc[m->n_enc - 1].act, n, w->cl_logits);
    nbs_mixture_softmax(w->cl_logits, n, m->K, w->cl_logp, w->cl_prob);
    if (kl) nbs_mixture_kl(&p, w->stages[0].head_out, w->cl_logp, w->cl_prob, n, w->cl_kl);
}

/* z (n, d) and the gathered covariates -> logits (and the zero-inflation / dispersion heads). The
 * decoder has no dropout. */
static void decode(const nbs_model *m, nbs_workspace *w, const float *z, int n, int training) {
    for (int i = 0; i < m->n_dec; i++)
        hidden_forward(m, &m->dec[i], &w->dec[i], w, i ? w->dec[i - 1].act : z, NULL, n, training, 0, NULL);
    const float *h = w->dec[m->n_dec - 1].act;
    nbs_dense_forward(&m->out, h, n, w->logits);
    if (m->has_zi) nbs_dense_forward(&m->out_zi, h, n, w->zi);
    if (m->has_disp) nbs_dense_forward(&m->out_disp, h, n, w->disp);
}

/* The likelihood of the gathered batch (its cell i is row i of w->bX). */
static nbs_lik_batch lik_batch(const nbs_model *m, const nbs_workspace *w, int n) {
    return (nbs_lik_batch){m->cfg.likelihood, n, m->G, &w->bX, NULL, w->lib, w->logits,
                           m->has_disp ? w->disp : m->log_theta, m->has_disp, m->n_batches, w->batch, w->zi,
                           w->likwork, w->lik_rows, w->n_threads};
}

int nbs_model_forward(nbs_model *m, nbs_workspace *w, const nbs_cells *c, int mode, gsl_rng *rng,
                      double *recon_sum, double *kl_sum, nbs_error *err) {
    if (mode == NBS_PASS_TRAIN && !w->training)
        return nbs_error_set(err, NBS_ERR_INTERNAL, "a training pass in an inference workspace");
    int st = gather(m, w, c, err);
    if (st) return st;
    const int n = (int)c->n, training = mode == NBS_PASS_TRAIN;
    double t0 = omp_get_wtime();
    encode_gathered(m, w, n, training, rng);
    gsl_rng *zrng = mode == NBS_PASS_EVAL_MEAN ? NULL : rng;
    for (int s = 0; s < m->n_stages && !st; s++) {
        const stage *S = &m->stages[s];
        stage_ws *SW = &w->stages[s];
        if (S->has_prior) continue; /* a ladder's lower layers follow from the top-down pass */
        /* A share of a batch: a Gaussian draws d normals per cell in cell order, so the other
         * processes' are skipped; a sphere's rejection sampler draws as many as its cell's
         * concentration makes it, so a share samples from its own generator instead. */
        const int own = zrng && nbs_latent_on_sphere(&S->lat) && w->share_sphere_rng;
        const int skip = zrng && !own && (w->share_before || w->share_after);
        if (skip) skip_gaussian(zrng, w->share_before * S->lat.dim);
        st = nbs_latent_forward(&S->lat, SW->head_out, n, own ? w->share_sphere_rng : zrng, SW->z, SW->kl,
                                SW->cache, err);
        if (skip) skip_gaussian(zrng, w->share_after * S->lat.dim);
    }
    if (!st && m->ladder) ladder_down(m, w, n, m->n_stages - 1, zrng);
    for (int s = 0; s < m->n_stages && !st; s++) {
        const stage *S = &m->stages[s];
        for (int i = 0; i < n; i++) /* the stage's terms into their places of each cell's KL row */
            memcpy(w->kl + (int64_t)i * m->kl_terms + S->kl_offset, w->stages[s].kl + (int64_t)i * S->kl_terms,
                   sizeof(double) * S->kl_terms);
    }
    if (st) return st;
    w->cl_extra_ready = 0;
    if (m->K) { /* stage 0's KL to N(0, I) gives way to the mixture's: KL_j in its places, KL_c at cl_kl */
        const int d = m->stages[0].lat.dim, o = m->stages[0].kl_offset;
        cluster_forward(m, w, n, 1);
        for (int i = 0; i < n; i++) {
            memcpy(w->kl + (int64_t)i * m->kl_terms + o, w->cl_kl + (int64_t)i * (d + 1), sizeof(double) * d);
            w->kl[(int64_t)i * m->kl_terms + m->cl_kl] = w->cl_kl[(int64_t)i * (d + 1) + d];
        }
    }
    double t1 = omp_get_wtime();
    decode(m, w, w->stages[0].z, n, training);
    double t2 = omp_get_wtime();
    nbs_lik_batch b = lik_batch(m, w, n);
    const float scale = (float)(-1.0 / n);
    double ll = nbs_lik_eval(&b, w->loglik, scale, training ? w->dlogits : NULL,
                             training && m->cfg.likelihood != NBS_LIK_POISSON ? w->dlt : NULL,
                             training ? w->dzi : NULL);
    w->t_products += (t1 - t0) + (t2 - t1);
    w->t_likelihood += omp_get_wtime() - t2;
    if (recon_sum) *recon_sum = -ll;
    if (kl_sum)
        for (int t = 0; t < m->kl_terms; t++) {
            double sum = 0;
            for (int i = 0; i < n; i++) sum += w->kl[(int64_t)i * m->kl_terms + t];
            kl_sum[t] = sum;
        }
    w->batch_n = n;
    w->grads_ready = training;
    return NBS_OK;
}

const double *nbs_workspace_loglik(const nbs_workspace *w) { return w->loglik; }
const double *nbs_workspace_kl(const nbs_workspace *w) { return w->kl; }
const float *nbs_workspace_kappa(const nbs_workspace *w) {
    return nbs_latent_cache_kappa(w->stages[w->model->embed_stage].cache);
}
double nbs_workspace_acceptance(const nbs_workspace *w) {
    return nbs_latent_cache_acceptance(w->stages[w->model->embed_stage].cache);
}

void nbs_workspace_take_timers(nbs_workspace *w, double *products, double *likelihood) {
    *products = w->t_products;
    *likelihood = w->t_likelihood;
    w->t_products = w->t_likelihood = 0;
}

/* ---- backward ---- */

/* dact: gradient w.r.t. the layer's act (overwritten as scratch); writes dx of the layer's input
 * (NULL for the sparse first layer). The covariates' weights take the gradient of their rows;
 * with embeddings, the cells' looked-up rows take theirs too (added into w->dcov_emb). */
static void hidden_backward(const nbs_model *m, hidden *h, const hidden_ws *hw, const nbs_workspace *w,
                            const float *x, const nbs_sparse_rows *sx, int n, int dropout_on, float *dact,
                            float *dx) {
    const int64_t sz = (int64_t)n * h->lin.out;
    if (dropout_on) nbs_mul_inplace(dact, hw->mask, sz);
    nbs_relu_backward(hw->relu_out, dact, sz);
    if (h->has_norm) nbs_norm_backward(&h->norm, dact, n, hw->xhat, hw->inv_std, hw->used_batch);
    if (h->dWcat && m->emb) {
        nbs_linear_add_backward(h->dWcat, m->n_cat_in, h->lin.out, w->cov_emb, n, dact);
        nbs_linear_add_input_backward(h->Wcat, m->n_cat_in, h->lin.out, dact, n, w->dcov_emb);
    } else if (h->dWcat) {
        nbs_onehot_backward(h->dWcat, h->lin.out, w->cov_rows, m->cov.n_categorical, n, dact);
    }
    if (h->dWcont)
        nbs_linear_add_backward(h->dWcont, m->cov.n_continuous, h->lin.out, w->cov_values, n, dact);
    for (int s = 0; s < m->n_stages; s++) /* skip connections: their z's gradient into the stage's dzs */
        if (h->dWskip[s]) {
            const int d = m->stages[s].lat.dim;
            nbs_linear_add_backward(h->dWskip[s], d, h->lin.out, w->stages[s].z, n, dact);
            nbs_linear_add_input_backward(h->Wskip[s], d, h->lin.out, dact, n, w->stages[s].dzs);
        }
    if (sx) nbs_dense_backward_sparse(&h->lin, sx, dact);
    else nbs_dense_backward(&h->lin, x, dact, n, dx);
}

static void add_into(float *y, const float *x, int64_t n) {
    for (int64_t k = 0; k < n; k++) y[k] += x[k];
}

/* The mixture's KL (and the entropy loss, when prepared) into stage 0's dhead, the q(c|x) head's
 * dcl_logits and the prior's gradients. */
static void cluster_backward(nbs_model *m, nbs_workspace *w, int n, const float *kl_weight) {
    const nbs_mixture p = mixture_of(m);
    const int d = p.d;
    float klw[NBS_MAX_KL_TERMS + 1];
    memcpy(klw, kl_weight + m->stages[0].kl_offset, sizeof(float) * d);
    klw[d] = kl_weight[m->cl_kl];
    nbs_mixture_backward(&p, w->stages[0].head_out, w->cl_logp, w->cl_prob, n, klw,
                         w->cl_extra_ready ? w->cl_extra : NULL, w->stages[0].dhead, w->dcl_logits,
                         m->dprior_logits, m->dprior_mean, m->dprior_logvar);
    w->cl_extra_ready = 0;
}

double nbs_model_entropy_loss(nbs_model *m, nbs_workspace *w, double target, double weight, double cell_weight,
                              double scale, double *entropy) {
    if (!m->K || !w->grads_ready) {
        if (entropy) *entropy = NAN;
        return 0;
    }
    const double loss = nbs_mixture_entropy_loss(w->cl_logp, w->cl_prob, w->batch_n, m->K, target, weight,
                                                 cell_weight, scale, w->cl_extra, entropy);
    w->cl_extra_ready = weight > 0 || cell_weight > 0;
    return loss;
}

/* The ladder's backward, every stage's dz complete from the decoder's side: top-down bottom first
 * (each layer's merged posterior and its prior take the KL's and the sample's gradient; the prior
 * path's reaches z of the layer above), the top's latent, then the bottom-up path top first,
 * ending in dh (n, encoder width), the gradient of the encoder's last activation h. */
static void ladder_backward(nbs_model *m, nbs_workspace *w, int n, const float *kl_weight, const float *h, float *dh) {
    const int top = m->n_stages - 1;
    for (int s = 0; s < top; s++) {
        stage *S = &m->stages[s];
        stage_ws *SW = &w->stages[s];
        const int d = S->lat.dim;
        const float *wk = kl_weight + S->kl_offset;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < d; j++) {
                const ladder_merge g = merge_of(SW->head_out, SW->prior, d, i, j);
                const int64_t k = (int64_t)i * d + j, r = (int64_t)i * 2 * d;
                const double dz = SW->dz[k], dev = g.mu - g.mt, v = exp(g.lv);
                /* the loss through z = mu + sd eps and KL = (lv_t - lv + (v + dev^2) / v_t - 1) / 2 */
                const double dmu = dz + wk[j] * dev / g.vt;
                const double dlv = (SW->sampled ? dz * SW->eps[k] * 0.5 * exp(0.5 * g.lv) : 0) + wk[j] * 0.5 * (v / g.vt - 1);
                /* through the merge: d mu / d lv_l = -ab (mu_l - mu_t) = -d mu / d lv_t, d lv / d lv_l = a */
                const double c = g.a * g.b * (g.ml - g.mt) * dmu;
                SW->dhead[r + j] = (float)(g.a * dmu);
                SW->dhead[r + d + j] = g.clamped_l ? 0.0f : (float)(g.a * dlv - c);
                SW->dprior[r + j] = (float)(g.b * dmu - wk[j] * dev / g.vt);
                SW->dprior[r + d + j] = g.clamped_t ? 0.0f : (float)(g.b * dlv + c + wk[j] * 0.5 * (1 - (v + dev * dev) / g.vt));
            }
        nbs_dense_backward(&S->prior_head, SW->ph, SW->dprior, n, SW->dph);
        nbs_relu_backward(SW->ph, SW->dph, (int64_t)n * S->prior_hidden.out);
        nbs_dense_backward(&S->prior_hidden, w->stages[s + 1].z, SW->dph, n, w->dtmp);
        add_into(w->stages[s + 1].dz, w->dtmp, (int64_t)n * m->stages[s + 1].lat.dim);
    }
    stage *T = &m->stages[top];
    stage_ws *TW = &w->stages[top];
    nbs_latent_backward(&T->lat, TW->head_out, n, TW->dz, kl_weight + T->kl_offset, TW->cache, TW->dhead);
    for (int s = top; s >= 0; s--) {
        stage *S = &m->stages[s];
        stage_ws *SW = &w->stages[s];
        const int64_t nu = (int64_t)n * S->up.out;
        /* dup holds what the up layer above sent down (nothing at the top) */
        nbs_dense_backward(&S->head, SW->up, SW->dhead, n, s == top ? SW->dup : w->dtmp);
        if (s < top) add_into(SW->dup, w->dtmp, nu);
        nbs_relu_backward(SW->up, SW->dup, nu);
        nbs_dense_backward(&S->up, s ? w->stages[s - 1].up : h, SW->dup, n, s ? w->stages[s - 1].dup : dh);
    }
}

void nbs_model_backward(nbs_model *m, nbs_workspace *w, float recon_weight, const float *kl_weight) {
    if (!w->grads_ready) return;
    const double t0 = omp_get_wtime();
    const int n = w->batch_n;
    if (recon_weight != 1.0f) { /* the forward prepared the gradients of the local batch mean */
        const int64_t nG = (int64_t)n * m->G;
        for (int64_t k = 0; k < nG; k++) w->dlogits[k] *= recon_weight;
        for (int64_t k = 0; w->dlt && k < nG; k++) w->dlt[k] *= recon_weight;
        for (int64_t k = 0; w->dzi && k < nG; k++) w->dzi[k] *= recon_weight;
    }
    if (w->dcov_emb) memset(w->dcov_emb, 0, sizeof(float) * (size_t)n * m->n_cat_in);
    const float *hdec = w->dec[m->n_dec - 1].act;
    const int64_t hsz = (int64_t)n * m->dec[m->n_dec - 1].lin.out;
    float *d = w->dbuf[0], *dn = w->dbuf[1];
    nbs_dense_backward(&m->out, hdec, w->dlogits, n, d);
    if (m->has_zi) {
        nbs_dense_backward(&m->out_zi, hdec, w->dzi, n, w->dtmp);
        add_into(d, w->dtmp, hsz);
    }
    if (m->has_disp) {
        nbs_dense_backward(&m->out_disp, hdec, w->dlt, n, w->dtmp);
        add_into(d, w->dtmp, hsz);
    } else if (m->dlog_theta) { /* each cell's row into its batch's row of log theta */
        for (int i = 0; i < n; i++)
            add_into(m->dlog_theta + (w->batch ? (int64_t)w->batch[i] * m->G : 0), w->dlt + (int64_t)i * m->G, m->G);
    }
    stage_ws *S0 = &w->stages[0];
    for (int s = 0; m->cfg.skip_connections && s < m->n_stages; s++)
        memset(w->stages[s].dzs, 0, sizeof(float) * (size_t)n * m->stages[s].lat.dim);
    for (int i = m->n_dec - 1; i >= 0; i--) {
        hidden_backward(m, &m->dec[i], &w->dec[i], w, i ? w->dec[i - 1].act : S0->z, NULL, n, 0, d, i ? dn : S0->dz);
        float *t = d;
        d = dn;
        dn = t;
    }
    /* what the skip connections sent back: into z_0's gradient, and the upper layers' only one yet */
    for (int s = 0; (m->ladder || m->cfg.skip_connections) && s < m->n_stages; s++) {
        stage_ws *SW = &w->stages[s];
        const size_t nd = (size_t)n * m->stages[s].lat.dim;
        if (!s) {
            if (SW->dzs) add_into(SW->dz, SW->dzs, (int64_t)nd);
        } else if (SW->dzs) memcpy(SW->dz, SW->dzs, sizeof(float) * nd);
        else memset(SW->dz, 0, sizeof(float) * nd);
    }
    /* every stage's head reads the encoder's last activation: their input gradients add up */
    const float *henc = w->enc[m->n_enc - 1].act;
    const int64_t esz = (int64_t)n * m->enc[m->n_enc - 1].lin.out;
    static const float no_kl[NBS_MAX_KL_TERMS]; /* stage 0 with a mixture prior: its KL is the mixture's */
    if (m->ladder) ladder_backward(m, w, n, kl_weight, henc, d);
    for (int s = 0; !m->ladder && s < m->n_stages; s++) {
        stage *S = &m->stages[s];
        stage_ws *SW = &w->stages[s];
        const int mix = m->K && !s;
        nbs_latent_backward(&S->lat, SW->head_out, n, SW->dz, mix ? no_kl : kl_weight + S->kl_offset, SW->cache,
                            SW->dhead);
        if (mix) cluster_backward(m, w, n, kl_weight);
        nbs_dense_backward(&S->head, henc, SW->dhead, n, s ? w->dtmp : d);
        if (s) add_into(d, w->dtmp, esz);
    }
    if (m->K) {
        nbs_dense_backward(&m->cluster, henc, w->dcl_logits, n, w->dtmp);
        add_into(d, w->dtmp, esz);
    }
    nbs_sparse_rows sx = {n, w->bptr, w->bidx, w->bval, w->cptr, w->ccell, w->cval};
    nbs_sparse_transpose(&sx, m->enc[0].lin.in, w->cptr, w->ccell, w->cval);
    const int drop = dropout_of(m) > 0;
    for (int i = m->n_enc - 1; i >= 0; i--) {
        hidden_backward(m, &m->enc[i], &w->enc[i], w, i ? w->enc[i - 1].act : NULL, i ? NULL : &sx, n, drop, d,
                        i ? dn : NULL);
        float *t = d;
        d = dn;
        dn = t;
    }
    /* each cell's embedding gradient into its categories' table rows, serially in cell order */
    for (int64_t i = 0; w->dcov_emb && i < n; i++)
        for (int j = 0; j < m->cov.n_categorical; j++)
            add_into(m->demb + (int64_t)w->cov_rows[i * m->cov.n_categorical + j] * m->emb_dim,
                     w->dcov_emb + (i * m->cov.n_categorical + j) * m->emb_dim, m->emb_dim);
    /* frozen parameters have no gradient: clipping, the finiteness check and a reduction see only
     * the ones that train */
    for (int64_t k = 0; m->trainable && k < m->n_params; k++)
        if (!m->trainable[k]) m->grads[k] = 0;
    w->grads_ready = 0;
    w->t_products += omp_get_wtime() - t0;
}

float *nbs_model_grad_block(nbs_model *m) { return m->grads; }

void nbs_model_zero_grad(nbs_model *m) {
#pragma omp parallel
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        const int64_t lo = m->n_params * t / T, hi = m->n_params * (t + 1) / T;
        memset(m->grads + lo, 0, sizeof(float) * (size_t)(hi - lo));
    }
}

double nbs_model_grad_norm(const nbs_model *m) {
    double s = 0;
    for (int64_t k = 0; k < m->n_params; k++) s += (double)m->grads[k] * m->grads[k];
    return sqrt(s);
}

void nbs_model_scale_grad(nbs_model *m, double f) {
    for (int64_t k = 0; k < m->n_params; k++) m->grads[k] *= (float)f;
}

/* Name of the first parameter block holding a non-finite gradient, or NULL. */
const char *nbs_model_nonfinite_grad(const nbs_model *m) {
    for (int b = 0; b < m->n_blocks; b++) {
        const block *B = &m->blocks[b];
        if (B->is_state) continue;
        const float *g = m->grads + B->offset;
        /* g * 0 is 0 for a finite g and NaN otherwise, so the sum says whether any is not
         * finite, in one vectorised pass instead of a test per gradient */
        float probe = 0;
#pragma omp simd reduction(+ : probe)
        for (int64_t k = 0; k < (int64_t)B->rows * B->cols; k++) probe += g[k] * 0.0f;
        if (probe != 0) return B->name;
    }
    return NULL;
}

void nbs_model_adam(nbs_model *m, double lr, double eps, double weight_decay) {
    m->adam_t++;
    if (!m->trainable) {
        nbs_adam_step(m->params, m->grads, m->adam_m, m->adam_v, m->n_params, lr, 0.9, 0.999, eps,
                      weight_decay, m->adam_t);
        return;
    }
    /* the runs of trainable parameters only, so that weight decay and the moments leave frozen
     * ones bit-identical */
    for (int64_t k = 0; k < m->n_params;) {
        if (!m->trainable[k]) {
            k++;
            continue;
        }
        int64_t e = k;
        while (e < m->n_params && m->trainable[e]) e++;
        nbs_adam_step(m->params + k, m->grads + k, m->adam_m + k, m->adam_v + k, e - k, lr, 0.9, 0.999, eps,
                      weight_decay, m->adam_t);
        k = e;
    }
}

/* ---- evaluation-mode helpers: the workspace's capacity at a time ---- */

int nbs_model_encode(const nbs_model *m, nbs_workspace *w, const nbs_cells *c, int stage, float *head,
                     nbs_error *err) {
    const int hd = m->stages[stage].head_dim;
    for (int64_t s = 0; s < c->n; s += w->cap) {
        const nbs_cells part = nbs_cells_slice(c, s, w->cap);
        int st = gather(m, w, &part, err);
        if (st) return st;
        encode_gathered(m, w, (int)part.n, 0, NULL);
        memcpy(head + s * hd, w->stages[stage].head_out, sizeof(float) * part.n * hd);
    }
    return NBS_OK;
}

/* The last decode's logits (c, G) and, if lt is not NULL, log theta (c, G) out of the workspace. */
static void decoded_out(const nbs_model *m, const nbs_workspace *w, int c, float *logits, float *lt) {
    const int64_t G = m->G;
    memcpy(logits, w->logits, sizeof(float) * c * G);
    if (!lt) return;
    if (m->has_disp) memcpy(lt, w->disp, sizeof(float) * c * G);
    else
        for (int i = 0; i < c; i++) {
            const float *row = m->log_theta ? m->log_theta + (w->batch ? (int64_t)w->batch[i] * G : 0) : NULL;
            for (int64_t g = 0; g < G; g++) lt[i * G + g] = row ? row[g] : INFINITY;
        }
}

int nbs_model_decode_logits(const nbs_model *m, nbs_workspace *w, const nbs_cells *cells, const float *z,
                            float *logits, float *log_theta, nbs_error *err) {
    const int64_t G = m->G, d = nbs_model_decoder_dim(m), n = cells->n;
    for (int64_t s = 0; s < n; s += w->cap) {
        const nbs_cells part = nbs_cells_slice(cells, s, w->cap);
        const int c = (int)part.n;
        int st = gather_covariates(m, w, &part, err);
        if (st) return st;
        decode(m, w, decoder_input(m, w, z + s * d, c), c, 0);
        decoded_out(m, w, c, logits + s * G, log_theta ? log_theta + s * G : NULL);
    }
    return NBS_OK;
}

int nbs_model_decode_layer(const nbs_model *m, nbs_workspace *w, const nbs_cells *cells, int layer, const float *z,
                           float *logits, float *log_theta, nbs_error *err) {
    const int64_t G = m->G, d = m->stages[layer].lat.dim, n = cells->n;
    for (int64_t s = 0; s < n; s += w->cap) {
        const nbs_cells part = nbs_cells_slice(cells, s, w->cap);
        const int c = (int)part.n;
        int st = gather(m, w, &part, err);
        if (st) return st;
        encode_gathered(m, w, c, 0, NULL);
        if (m->ladder && (st = ladder_locations(m, w, c, err))) return st;
        memcpy(w->stages[layer].z, z + s * d, sizeof(float) * c * d);
        if (m->ladder) ladder_down(m, w, c, layer, NULL);
        decode(m, w, w->stages[0].z, c, 0);
        decoded_out(m, w, c, logits + s * G, log_theta ? log_theta + s * G : NULL);
    }
    return NBS_OK;
}

int nbs_model_layer_posterior(const nbs_model *m, const nbs_cells *c, int layer, float *location, float *spread,
                              float *ez, double *kl, nbs_error *err) {
    const stage *S = &m->stages[layer];
    const int d = S->lat.dim, sd = nbs_latent_spread_dim(&S->lat), K = S->kl_terms;
    nbs_workspace *w = nbs_workspace_eval(m, c->X, err);
    int st = w ? NBS_OK : err->code;
    for (int64_t s = 0; s < c->n && !st; s += w->cap) {
        const nbs_cells part = nbs_cells_slice(c, s, w->cap);
        const int n = (int)part.n;
        if ((st = gather(m, w, &part, err))) break;
        encode_gathered(m, w, n, 0, NULL);
        stage_ws *SW = &w->stages[layer];
        if (m->ladder) st = ladder_locations(m, w, n, err);
        else st = nbs_latent_forward(&S->lat, SW->head_out, n, NULL, SW->z, SW->kl, SW->cache, err);
        if (st) break;
        if (!S->has_prior) { /* the top (or only) layer: its own head */
            nbs_latent_posterior(&S->lat, SW->head_out, n, location ? location + s * d : NULL, spread ? spread + s * sd : NULL);
            if (ez) nbs_latent_expectation(&S->lat, SW->head_out, n, ez + s * d);
        } else {
            for (int64_t k = 0; k < (int64_t)n * d; k++) {
                if (location) location[s * d + k] = SW->mu[k];
                if (spread) spread[s * d + k] = (float)exp(SW->lv[k]);
                if (ez) ez[s * d + k] = SW->mu[k];
            }
        }
        if (kl) memcpy(kl + s * K, SW->kl, sizeof(double) * n * K);
    }
    nbs_workspace_free(w);
    return st;
}

int nbs_model_loglik(const nbs_model *m, nbs_workspace *w, const nbs_cells *c, const float *z,
                     double *loglik, nbs_error *err) {
    const int64_t d = nbs_model_decoder_dim(m);
    for (int64_t s = 0; s < c->n; s += w->cap) {
        const nbs_cells part = nbs_cells_slice(c, s, w->cap);
        int st = gather(m, w, &part, err);
        if (st) return st;
        decode(m, w, decoder_input(m, w, z + s * d, (int)part.n), (int)part.n, 0);
        nbs_lik_batch b = lik_batch(m, w, (int)part.n);
        nbs_lik_eval(&b, loglik + s, 1.0f, NULL, NULL, NULL);
    }
    return NBS_OK;
}

int nbs_model_embed(const nbs_model *m, const nbs_cells *c, float *location, float *spread, nbs_error *err) {
    const int e = m->embed_stage;
    const nbs_latent *L = &m->stages[e].lat;
    const int hd = m->stages[e].head_dim, d = L->dim, sd = nbs_latent_spread_dim(L);
    nbs_workspace *w = nbs_workspace_eval(m, c->X, err);
    float *head = w ? nbs_malloc(sizeof(float) * NBS_EVAL_BATCH * hd, err) : NULL;
    int st = head ? NBS_OK : err->code;
    for (int64_t s = 0; s < c->n && !st; s += NBS_EVAL_BATCH) {
        const nbs_cells part = nbs_cells_slice(c, s, NBS_EVAL_BATCH);
        st = nbs_model_encode(m, w, &part, e, head, err);
        if (!st) nbs_latent_posterior(L, head, (int)part.n, location + s * d, spread ? spread + s * sd : NULL);
    }
    free(head);
    nbs_workspace_free(w);
    return st;
}

int nbs_model_cluster(const nbs_model *m, const nbs_cells *c, float *prob, double *kl, nbs_error *err) {
    if (!m->K) return nbs_error_set(err, NBS_ERR_INTERNAL, "the model has no discrete latent");
    const int K = m->K, d = m->stages[0].lat.dim;
    nbs_workspace *w = nbs_workspace_eval(m, c->X, err);
    int st = w ? NBS_OK : err->code;
    for (int64_t s = 0; s < c->n && !st; s += w->cap) {
        const nbs_cells part = nbs_cells_slice(c, s, w->cap);
        if ((st = gather(m, w, &part, err))) break;
        encode_gathered(m, w, (int)part.n, 0, NULL);
        cluster_forward(m, w, (int)part.n, kl != NULL);
        for (int64_t k = 0; prob && k < part.n * K; k++) prob[s * K + k] = (float)w->cl_prob[k];
        if (kl) memcpy(kl + s * (d + 1), w->cl_kl, sizeof(double) * part.n * (d + 1));
    }
    nbs_workspace_free(w);
    return st;
}

/* ---- accessors ---- */

int nbs_model_discrete(const nbs_model *m) { return m->K; }
int nbs_model_cluster_kl_term(const nbs_model *m) { return m->K ? m->cl_kl : -1; }

int nbs_model_n_genes(const nbs_model *m) { return m->G; }
const nbs_latent *nbs_model_latent(const nbs_model *m) { return &m->stages[m->embed_stage].lat; }
int nbs_model_ladder(const nbs_model *m) { return m->ladder; }

double nbs_model_latent_weight_rms(const nbs_model *m, int s, int j) {
    double ss = 0;
    int64_t count = 0;
    const nbs_dense *first = s == 0 ? &m->dec[0].lin : m->ladder && m->stages[s - 1].has_prior ? &m->stages[s - 1].prior_hidden : NULL;
    for (int k = 0; first && k < first->out; k++, count++) ss += (double)first->W[(int64_t)j * first->out + k] * first->W[(int64_t)j * first->out + k];
    for (int i = 0; i < m->n_dec; i++) {
        const float *W = m->dec[i].Wskip[s];
        const int out = m->dec[i].lin.out;
        for (int k = 0; W && k < out; k++, count++) ss += (double)W[(int64_t)j * out + k] * W[(int64_t)j * out + k];
    }
    return count ? sqrt(ss / (double)count) : 0;
}
int nbs_model_n_stages(const nbs_model *m) { return m->n_stages; }
const nbs_latent *nbs_model_stage_latent(const nbs_model *m, int s) { return &m->stages[s].lat; }
int nbs_model_stage_kl_offset(const nbs_model *m, int s) { return m->stages[s].kl_offset; }
int nbs_model_kl_terms(const nbs_model *m) { return m->kl_terms; }
const nbs_model_config *nbs_model_config_of(const nbs_model *m) { return &m->cfg; }
const nbs_covariate_layout *nbs_model_covariates(const nbs_model *m) { return &m->cov; }
int64_t nbs_model_n_params(const nbs_model *m) { return m->n_params; }
int64_t nbs_model_n_state(const nbs_model *m) { return m->n_state; }

void nbs_model_batch_norm(const nbs_model *m, double *eps, double *momentum) {
    *eps = m->enc[0].norm.eps;
    *momentum = m->enc[0].norm.momentum;
}

void nbs_model_set_batch_norm(nbs_model *m, double eps, double momentum) {
    for (int i = 0; i < m->n_enc; i++) m->enc[i].norm.eps = eps, m->enc[i].norm.momentum = momentum;
    for (int i = 0; i < m->n_dec; i++) m->dec[i].norm.eps = eps, m->dec[i].norm.momentum = momentum;
}

float *nbs_model_param(nbs_model *m, const char *name, int *rows, int *cols) {
    for (int b = 0; b < m->n_blocks; b++)
        if (!strcmp(m->blocks[b].name, name)) {
            if (rows) *rows = m->blocks[b].rows;
            if (cols) *cols = m->blocks[b].cols;
            return (m->blocks[b].is_state ? m->state : m->params) + m->blocks[b].offset;
        }
    return NULL;
}

float *nbs_model_grad(nbs_model *m, const char *name) {
    for (int b = 0; b < m->n_blocks; b++)
        if (!strcmp(m->blocks[b].name, name) && !m->blocks[b].is_state)
            return m->grads + m->blocks[b].offset;
    return NULL;
}

int nbs_model_n_blocks(const nbs_model *m) { return m->n_blocks; }
const char *nbs_model_block_name(const nbs_model *m, int i) { return m->blocks[i].name; }

void nbs_model_flat(nbs_model *m, float **params, float **adam_m, float **adam_v, float **state,
                    int64_t *n_params, int64_t *n_state, int64_t **adam_t) {
    if (params) *params = m->params;
    if (adam_m) *adam_m = m->adam_m;
    if (adam_v) *adam_v = m->adam_v;
    if (state) *state = m->state;
    if (n_params) *n_params = m->n_params;
    if (n_state) *n_state = m->n_state;
    if (adam_t) *adam_t = &m->adam_t;
}

const float *nbs_model_decoder_first_weights(const nbs_model *m, int *d, int *width) {
    if (d) *d = m->dec[0].lin.in;
    if (width) *width = m->dec[0].lin.out;
    return m->dec[0].lin.W;
}

float *nbs_model_decoder_first_weights_mut(nbs_model *m) { return m->dec[0].lin.W; }
