/* The VAE: sparse log1p input -> encoder MLP -> latent head -> latent -> decoder MLP -> gene
 * logits (+ zero-inflation and per-cell dispersion heads) -> count likelihood.
 * Layout follows llm.c: every parameter lives in one float block, its gradient at the same
 * offset in a second block, Adam moments in two more; layers are views into them. */
#include "nbsphere/vae.h"

#include <gsl/gsl_randist.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/likelihood.h"
#include "nbsphere/nn.h"

#define MAX_BLOCKS (8 * NBS_MAX_LAYERS + 16)

typedef struct {
    char name[64];
    int64_t offset; /* into params/grads, or into state when is_state */
    int rows, cols;
    int is_state;
} block;

/* One hidden layer: linear -> optional norm -> ReLU -> optional dropout (encoder only). */
typedef struct {
    nbs_dense lin;
    nbs_norm norm;
    int has_norm;
    float *relu_out, *act, *mask, *xhat, *inv_std; /* workspace [cap x width] (inv_std: cap or width) */
    int used_batch;
} hidden;

struct nbs_model {
    nbs_model_config cfg;
    nbs_latent lat;
    int G, head_dim, kl_terms;
    int64_t n_params, n_state, adam_t;
    float *params, *grads, *adam_m, *adam_v, *state;
    block blocks[MAX_BLOCKS];
    int n_blocks;

    int n_enc, n_dec;
    hidden enc[NBS_MAX_LAYERS], dec[NBS_MAX_LAYERS];
    nbs_dense head, out, out_zi, out_disp;
    int has_zi, has_disp;
    float *log_theta, *dlog_theta; /* per-gene dispersion (NULL when per cell) */

    /* workspace for batches of up to cap cells */
    int cap;
    int64_t nnz_cap;
    int64_t *bptr;
    int32_t *bidx;
    float *bval;
    double *lib, *loglik, *kl;
    double *likwork; /* 3G: per-gene lgamma, psi and value of theta */
    float *head_out, *dhead, *z, *dz, *logits, *dlogits, *zi, *dzi, *disp, *ddisp, *dlt;
    float *dbuf[2], *dtmp; /* backward scratch [cap x widest layer] */
    nbs_latent_cache *lcache;
    int batch_n, grads_ready;
    double t_products, t_likelihood; /* seconds in layers (products) and likelihood, since taken */
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
    int W, b, gain, bias, rmean, rvar;
} layer_ids;

static layer_ids declare_layer(nbs_model *m, const char *prefix, int in, int out, int norm) {
    char nm[64];
    layer_ids id = {-1, -1, -1, -1, -1, -1};
    snprintf(nm, sizeof nm, "%s.W", prefix);
    id.W = add_block(m, nm, in, out, 0);
    snprintf(nm, sizeof nm, "%s.b", prefix);
    id.b = add_block(m, nm, 1, out, 0);
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

static void bind_hidden(nbs_model *m, hidden *h, layer_ids id, nbs_norm_kind norm) {
    bind_dense(m, &h->lin, id);
    h->has_norm = norm != NBS_NORM_NONE;
    h->norm = (nbs_norm){h->lin.out, norm == NBS_NORM_BATCH, P(m, id.gain), P(m, id.bias),
                         D(m, id.gain), D(m, id.bias), S(m, id.rmean), S(m, id.rvar),
                         NBS_BN_EPS, NBS_BN_MOMENTUM};
}

/* torch.nn.Linear's default initialisation: U(-1/sqrt(in), 1/sqrt(in)) for weights and bias. */
static void init_dense(nbs_dense *L, gsl_rng *rng, double scale) {
    const double a = 1.0 / sqrt((double)L->in);
    for (int64_t k = 0; k < (int64_t)L->in * L->out; k++)
        L->W[k] = (float)(scale * a * (2 * gsl_rng_uniform(rng) - 1));
    for (int k = 0; k < L->out; k++) L->b[k] = (float)(a * (2 * gsl_rng_uniform(rng) - 1));
}

static void init_hidden(hidden *h, gsl_rng *rng) {
    init_dense(&h->lin, rng, 1.0);
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
    if (mc->latent != NBS_LATENT_GAUSSIAN && mc->latent_dim < 2)
        return nbs_error_set(err, NBS_ERR_USAGE, "model.latent_dim: spherical latents need 2 or more dimensions");
    if (mc->latent_dim < 1 || mc->n_encoder_layers < 1 || mc->n_decoder_layers < 1 ||
        mc->n_encoder_layers > NBS_MAX_LAYERS || mc->n_decoder_layers > NBS_MAX_LAYERS)
        return nbs_error_set(err, NBS_ERR_USAGE,
                             "model: latent_dim >= 1 and 1 to %d encoder and decoder layers expected",
                             NBS_MAX_LAYERS);
    return NBS_OK;
}

nbs_model *nbs_model_new(const nbs_model_config *mc, int n_genes, gsl_rng *rng, nbs_error *err) {
    if (check_config(mc, n_genes, err)) return NULL;
    nbs_model *m = nbs_calloc(1, sizeof *m, err);
    if (!m) return NULL;
    m->cfg = *mc;
    m->G = n_genes;
    m->lat = (nbs_latent){mc->latent, mc->latent_dim, mc->kappa_floor};
    m->head_dim = nbs_latent_head_dim(&m->lat);
    m->kl_terms = nbs_latent_kl_terms(&m->lat);
    m->n_enc = mc->n_encoder_layers;
    m->n_dec = mc->n_decoder_layers;
    m->has_zi = mc->likelihood == NBS_LIK_ZINB;
    m->has_disp = mc->likelihood != NBS_LIK_POISSON && mc->dispersion == NBS_DISP_GENE_CELL;

    layer_ids enc[NBS_MAX_LAYERS], dec[NBS_MAX_LAYERS], head, out, zi = {-1, -1, -1, -1, -1, -1},
                                                                  disp = zi;
    char nm[64];
    int in = n_genes;
    for (int i = 0; i < m->n_enc; i++) {
        snprintf(nm, sizeof nm, "encoder.%d", i);
        enc[i] = declare_layer(m, nm, in, mc->encoder_layers[i], mc->norm);
        in = mc->encoder_layers[i];
    }
    head = declare_layer(m, "encoder.head", in, m->head_dim, 0);
    in = mc->latent_dim;
    for (int i = 0; i < m->n_dec; i++) {
        snprintf(nm, sizeof nm, "decoder.%d", i);
        dec[i] = declare_layer(m, nm, in, mc->decoder_layers[i], mc->norm);
        in = mc->decoder_layers[i];
    }
    out = declare_layer(m, "decoder.out", in, n_genes, 0);
    if (m->has_zi) zi = declare_layer(m, "decoder.dropout", in, n_genes, 0);
    if (m->has_disp) disp = declare_layer(m, "decoder.dispersion", in, n_genes, 0);
    int disp_gene = mc->likelihood != NBS_LIK_POISSON && !m->has_disp ? add_block(m, "dispersion", 1, n_genes, 0) : -1;

    size_t np = (size_t)m->n_params;
    m->params = nbs_calloc(np, sizeof(float), err);
    m->grads = m->params ? nbs_calloc(np, sizeof(float), err) : NULL;
    m->adam_m = m->grads ? nbs_calloc(np, sizeof(float), err) : NULL;
    m->adam_v = m->adam_m ? nbs_calloc(np, sizeof(float), err) : NULL;
    m->state = m->adam_v ? nbs_calloc((size_t)m->n_state + 1, sizeof(float), err) : NULL;
    m->likwork = m->state ? nbs_calloc(3 * (size_t)n_genes, sizeof(double), err) : NULL;
    if (!m->likwork) {
        nbs_model_free(m);
        return NULL;
    }
    for (int i = 0; i < m->n_enc; i++) bind_hidden(m, &m->enc[i], enc[i], mc->norm);
    for (int i = 0; i < m->n_dec; i++) bind_hidden(m, &m->dec[i], dec[i], mc->norm);
    bind_dense(m, &m->head, head);
    bind_dense(m, &m->out, out);
    if (m->has_zi) bind_dense(m, &m->out_zi, zi);
    if (m->has_disp) bind_dense(m, &m->out_disp, disp);
    m->log_theta = P(m, disp_gene);
    m->dlog_theta = D(m, disp_gene);

    if (rng) {
        for (int i = 0; i < m->n_enc; i++) init_hidden(&m->enc[i], rng);
        init_dense(&m->head, rng, 1.0);
        for (int i = 0; i < m->n_dec; i++) init_hidden(&m->dec[i], rng);
        /* A small last layer makes the decoder start weak, so it must lean on z. */
        init_dense(&m->out, rng, mc->decoder_init_scale);
        if (m->has_zi) init_dense(&m->out_zi, rng, 1.0);
        if (m->has_disp) init_dense(&m->out_disp, rng, 1.0);
        /* log theta = 0 (theta = 1) to start, or N(0, 1) draws as scvi-tools */
        if (m->log_theta && mc->dispersion_init == NBS_DISP_INIT_LOGNORMAL)
            for (int g = 0; g < m->G; g++) m->log_theta[g] = (float)gsl_ran_gaussian(rng, 1.0);
    }
    return m;
}

#define FREE(p) (free(p), (p) = NULL)

static void free_workspace(nbs_model *m) {
    for (int i = 0; i < m->n_enc + m->n_dec; i++) {
        hidden *h = i < m->n_enc ? &m->enc[i] : &m->dec[i - m->n_enc];
        FREE(h->relu_out), FREE(h->act), FREE(h->mask), FREE(h->xhat), FREE(h->inv_std);
    }
    FREE(m->bptr), FREE(m->lib), FREE(m->loglik), FREE(m->kl);
    FREE(m->head_out), FREE(m->dhead), FREE(m->z), FREE(m->dz), FREE(m->logits), FREE(m->dlogits);
    FREE(m->zi), FREE(m->dzi), FREE(m->disp), FREE(m->ddisp), FREE(m->dlt);
    FREE(m->dbuf[0]), FREE(m->dbuf[1]), FREE(m->dtmp);
    nbs_latent_cache_free(m->lcache);
    m->lcache = NULL;
    m->cap = 0;
}

void nbs_model_free(nbs_model *m) {
    if (!m) return;
    free_workspace(m);
    free(m->bidx), free(m->bval);
    free(m->params), free(m->grads), free(m->adam_m), free(m->adam_v), free(m->state), free(m->likwork);
    free(m);
}

/* Workspace for batches of up to n cells, allocated once (no allocation inside a step). */
static int reserve(nbs_model *m, int n, nbs_error *err) {
    if (n <= m->cap) return NBS_OK;
    free_workspace(m);
    int64_t widest = m->head_dim > m->lat.dim ? m->head_dim : m->lat.dim;
    int st = NBS_OK;
#define ALLOC(p, count, type) \
    if (!st && !((p) = nbs_calloc((size_t)(count), sizeof(type), err))) st = err->code
    for (int i = 0; i < m->n_enc + m->n_dec; i++) {
        hidden *h = i < m->n_enc ? &m->enc[i] : &m->dec[i - m->n_enc];
        int64_t w = h->lin.out, sz = (int64_t)n * w;
        if (w > widest) widest = w;
        ALLOC(h->relu_out, sz, float);
        ALLOC(h->act, sz, float);
        ALLOC(h->mask, sz, float);
        ALLOC(h->xhat, sz, float);
        ALLOC(h->inv_std, n > w ? n : w, float);
    }
    const int64_t nG = (int64_t)n * m->G;
    ALLOC(m->bptr, n + 1, int64_t);
    ALLOC(m->lib, n, double);
    ALLOC(m->loglik, n, double);
    ALLOC(m->kl, (int64_t)n * m->kl_terms, double);
    ALLOC(m->head_out, (int64_t)n * m->head_dim, float);
    ALLOC(m->dhead, (int64_t)n * m->head_dim, float);
    ALLOC(m->z, (int64_t)n * m->lat.dim, float);
    ALLOC(m->dz, (int64_t)n * m->lat.dim, float);
    ALLOC(m->logits, nG, float);
    ALLOC(m->dlogits, nG, float);
    ALLOC(m->dlt, nG, float);
    if (m->has_zi) {
        ALLOC(m->zi, nG, float);
        ALLOC(m->dzi, nG, float);
    }
    if (m->has_disp) {
        ALLOC(m->disp, nG, float);
        ALLOC(m->ddisp, nG, float);
    }
    ALLOC(m->dbuf[0], (int64_t)n * widest, float);
    ALLOC(m->dbuf[1], (int64_t)n * widest, float);
    ALLOC(m->dtmp, (int64_t)n * widest, float);
#undef ALLOC
    if (!st && !(m->lcache = nbs_latent_cache_new(&m->lat, n, err))) st = err->code;
    if (st) {
        free_workspace(m);
        return st;
    }
    m->cap = n;
    return NBS_OK;
}

/* ---- forward ---- */

/* Copies the batch's rows into a batch-local CSR with the encoder's input transform applied,
 * and records each cell's observed library size. */
static int gather(nbs_model *m, const nbs_matrix *X, const int64_t *rows, int64_t row0, int n,
                  nbs_error *err) {
    int64_t nnz = 0;
    for (int i = 0; i < n; i++) {
        int64_t r = rows ? rows[i] : row0 + i;
        nnz += X->indptr[r + 1] - X->indptr[r];
    }
    if (nnz > m->nnz_cap) { /* grows only while the largest batch is still unseen */
        int64_t cap = nnz + nnz / 2 + 1024;
        int32_t *bi = realloc(m->bidx, sizeof(int32_t) * cap);
        if (bi) m->bidx = bi;
        float *bv = bi ? realloc(m->bval, sizeof(float) * cap) : NULL;
        if (bv) m->bval = bv;
        if (!bi || !bv) return nbs_error_set(err, NBS_ERR_NOMEM, "out of memory for a minibatch");
        m->nnz_cap = cap;
    }
    int64_t q = 0;
    m->bptr[0] = 0;
    for (int i = 0; i < n; i++) {
        int64_t r = rows ? rows[i] : row0 + i;
        double l = 0;
        for (int64_t p = X->indptr[r]; p < X->indptr[r + 1]; p++) l += X->data[p];
        m->lib[i] = l;
        const double f = m->cfg.input_transform == NBS_INPUT_LOG1P_CP10K && l > 0 ? 1e4 / l : 1.0;
        for (int64_t p = X->indptr[r]; p < X->indptr[r + 1]; p++, q++) {
            m->bidx[q] = X->indices[p];
            m->bval[q] = (float)log1p(f * X->data[p]);
        }
        m->bptr[i + 1] = q;
    }
    return NBS_OK;
}

typedef enum { PASS_TRAIN, PASS_EVAL_SAMPLE, PASS_EVAL_MEAN } pass_mode;

static void hidden_forward(hidden *h, const float *x, const nbs_sparse_rows *sx, int n,
                           int training, double dropout, gsl_rng *rng) {
    const int64_t sz = (int64_t)n * h->lin.out;
    if (sx) nbs_dense_forward_sparse(&h->lin, sx, h->relu_out);
    else nbs_dense_forward(&h->lin, x, n, h->relu_out);
    if (h->has_norm) {
        h->used_batch = nbs_norm_uses_batch(&h->norm, n, training);
        nbs_norm_forward(&h->norm, h->relu_out, n, training, h->xhat, h->inv_std);
    }
    nbs_relu_forward(h->relu_out, sz);
    memcpy(h->act, h->relu_out, sizeof(float) * sz);
    if (training && dropout > 0) {
        nbs_dropout_mask(rng, dropout, h->mask, sz);
        nbs_mul_inplace(h->act, h->mask, sz);
    }
}

static void encode_gathered(nbs_model *m, int n, int training, gsl_rng *rng) {
    nbs_sparse_rows sx = {n, m->bptr, m->bidx, m->bval};
    for (int i = 0; i < m->n_enc; i++)
        hidden_forward(&m->enc[i], i ? m->enc[i - 1].act : NULL, i ? NULL : &sx, n, training,
                       m->cfg.dropout, rng);
    nbs_dense_forward(&m->head, m->enc[m->n_enc - 1].act, n, m->head_out);
}

/* z [n x d] -> logits (and the zero-inflation / dispersion heads). The decoder has no dropout. */
static void decode(nbs_model *m, const float *z, int n, int training) {
    for (int i = 0; i < m->n_dec; i++)
        hidden_forward(&m->dec[i], i ? m->dec[i - 1].act : z, NULL, n, training, 0, NULL);
    const float *h = m->dec[m->n_dec - 1].act;
    nbs_dense_forward(&m->out, h, n, m->logits);
    if (m->has_zi) nbs_dense_forward(&m->out_zi, h, n, m->zi);
    if (m->has_disp) nbs_dense_forward(&m->out_disp, h, n, m->disp);
}

static nbs_lik_batch lik_batch(const nbs_model *m, const nbs_matrix *X, const int64_t *rows, int n) {
    return (nbs_lik_batch){m->cfg.likelihood, n, m->G, X, rows, m->lib, m->logits,
                           m->has_disp ? m->disp : m->log_theta, m->has_disp, m->zi, m->likwork};
}

/* rows == NULL: consecutive rows from row0; the likelihood reads rows through an index. */
static const int64_t *row_index(nbs_model *m, const int64_t *rows, int64_t row0, int n) {
    if (rows) return rows;
    int64_t *idx = (int64_t *)m->dtmp; /* dtmp is at least n x 2 floats: room for n int64 */
    for (int i = 0; i < n; i++) idx[i] = row0 + i;
    return idx;
}

int nbs_model_forward(nbs_model *m, const nbs_matrix *X, const int64_t *rows, int n, int mode,
                      gsl_rng *rng, double *recon_sum, double *kl_sum, nbs_error *err) {
    if (X->n_genes != m->G)
        return nbs_error_set(err, NBS_ERR_INTERNAL, "model has %d genes, data %lld", m->G,
                             (long long)X->n_genes);
    int st = reserve(m, n, err);
    if (!st) st = gather(m, X, rows, 0, n, err);
    if (!st) st = nbs_lik_reserve(m->G, err);
    if (st) return st;
    const int training = mode == NBS_PASS_TRAIN;
    double t0 = omp_get_wtime();
    encode_gathered(m, n, training, rng);
    st = nbs_latent_forward(&m->lat, m->head_out, n, mode == NBS_PASS_EVAL_MEAN ? NULL : rng, m->z,
                            m->kl, m->lcache, err);
    if (st) return st;
    double t1 = omp_get_wtime();
    decode(m, m->z, n, training);
    double t2 = omp_get_wtime();
    nbs_lik_batch b = lik_batch(m, X, row_index(m, rows, 0, n), n);
    const float scale = (float)(-1.0 / n);
    double ll = nbs_lik_eval(&b, m->loglik, scale, training ? m->dlogits : NULL,
                             training && m->cfg.likelihood != NBS_LIK_POISSON ? m->dlt : NULL,
                             training ? m->dzi : NULL);
    m->t_products += (t1 - t0) + (t2 - t1);
    m->t_likelihood += omp_get_wtime() - t2;
    if (recon_sum) *recon_sum = -ll;
    if (kl_sum)
        for (int t = 0; t < m->kl_terms; t++) {
            double s = 0;
            for (int i = 0; i < n; i++) s += m->kl[(int64_t)i * m->kl_terms + t];
            kl_sum[t] = s;
        }
    m->batch_n = n;
    m->grads_ready = training;
    return NBS_OK;
}

const double *nbs_model_last_loglik(const nbs_model *m) { return m->loglik; }
const double *nbs_model_last_kl(const nbs_model *m) { return m->kl; }
const float *nbs_model_last_kappa(const nbs_model *m) { return m->lcache ? nbs_latent_cache_kappa(m->lcache) : NULL; }
double nbs_model_acceptance(const nbs_model *m) { return m->lcache ? nbs_latent_cache_acceptance(m->lcache) : NAN; }

/* ---- backward ---- */

/* dact: gradient w.r.t. h->act (overwritten as scratch); writes dx of the layer's input
 * (NULL for the sparse first layer). */
static void hidden_backward(hidden *h, const float *x, const nbs_sparse_rows *sx, int n,
                            int dropout_on, float *dact, float *dx) {
    const int64_t sz = (int64_t)n * h->lin.out;
    if (dropout_on) nbs_mul_inplace(dact, h->mask, sz);
    nbs_relu_backward(h->relu_out, dact, sz);
    if (h->has_norm) nbs_norm_backward(&h->norm, dact, n, h->xhat, h->inv_std, h->used_batch);
    if (sx) nbs_dense_backward_sparse(&h->lin, sx, dact);
    else nbs_dense_backward(&h->lin, x, dact, n, dx);
}

static void add_into(float *y, const float *x, int64_t n) {
    for (int64_t k = 0; k < n; k++) y[k] += x[k];
}

void nbs_model_backward(nbs_model *m, const float *kl_weight) {
    if (!m->grads_ready) return;
    const double t0 = omp_get_wtime();
    const int n = m->batch_n;
    const float *hdec = m->dec[m->n_dec - 1].act;
    const int64_t hsz = (int64_t)n * m->dec[m->n_dec - 1].lin.out;
    float *d = m->dbuf[0], *dn = m->dbuf[1];
    nbs_dense_backward(&m->out, hdec, m->dlogits, n, d);
    if (m->has_zi) {
        nbs_dense_backward(&m->out_zi, hdec, m->dzi, n, m->dtmp);
        add_into(d, m->dtmp, hsz);
    }
    if (m->has_disp) {
        nbs_dense_backward(&m->out_disp, hdec, m->dlt, n, m->dtmp);
        add_into(d, m->dtmp, hsz);
    } else if (m->dlog_theta) {
        for (int i = 0; i < n; i++) add_into(m->dlog_theta, m->dlt + (int64_t)i * m->G, m->G);
    }
    for (int i = m->n_dec - 1; i >= 0; i--) {
        hidden_backward(&m->dec[i], i ? m->dec[i - 1].act : m->z, NULL, n, 0, d, i ? dn : m->dz);
        float *t = d;
        d = dn;
        dn = t;
    }
    nbs_latent_backward(&m->lat, m->head_out, n, m->dz, kl_weight, m->lcache, m->dhead);
    nbs_dense_backward(&m->head, m->enc[m->n_enc - 1].act, m->dhead, n, d);
    nbs_sparse_rows sx = {n, m->bptr, m->bidx, m->bval};
    const int drop = m->cfg.dropout > 0;
    for (int i = m->n_enc - 1; i >= 0; i--) {
        hidden_backward(&m->enc[i], i ? m->enc[i - 1].act : NULL, i ? NULL : &sx, n, drop, d,
                        i ? dn : NULL);
        float *t = d;
        d = dn;
        dn = t;
    }
    m->grads_ready = 0;
    m->t_products += omp_get_wtime() - t0;
}

void nbs_model_take_timers(nbs_model *m, double *products, double *likelihood) {
    *products = m->t_products;
    *likelihood = m->t_likelihood;
    m->t_products = m->t_likelihood = 0;
}

void nbs_model_zero_grad(nbs_model *m) { memset(m->grads, 0, sizeof(float) * m->n_params); }

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
        for (int64_t k = 0; k < (int64_t)B->rows * B->cols; k++)
            if (!isfinite(g[k])) return B->name;
    }
    return NULL;
}

void nbs_model_adam(nbs_model *m, double lr, double eps, double weight_decay) {
    m->adam_t++;
    nbs_adam_step(m->params, m->grads, m->adam_m, m->adam_v, m->n_params, lr, 0.9, 0.999, eps,
                  weight_decay, m->adam_t);
}

/* ---- evaluation-mode helpers ---- */

#define EVAL_CHUNK 256

int nbs_model_encode(const nbs_model *cm, const nbs_matrix *X, const int64_t *rows, int64_t row0,
                     int n, float *head, nbs_error *err) {
    nbs_model *m = (nbs_model *)cm; /* workspace only; parameters are not touched */
    for (int s = 0; s < n; s += EVAL_CHUNK) {
        int c = n - s < EVAL_CHUNK ? n - s : EVAL_CHUNK;
        int st = reserve(m, c, err);
        if (!st) st = gather(m, X, rows ? rows + s : NULL, row0 + s, c, err);
        if (st) return st;
        encode_gathered(m, c, 0, NULL);
        memcpy(head + (int64_t)s * m->head_dim, m->head_out, sizeof(float) * c * m->head_dim);
    }
    return NBS_OK;
}

int nbs_model_decode_logits(const nbs_model *cm, const float *z, int n, float *logits,
                            float *log_theta, nbs_error *err) {
    nbs_model *m = (nbs_model *)cm;
    const int64_t G = m->G;
    for (int s = 0; s < n; s += EVAL_CHUNK) {
        int c = n - s < EVAL_CHUNK ? n - s : EVAL_CHUNK;
        int st = reserve(m, c, err);
        if (st) return st;
        decode(m, z + (int64_t)s * m->lat.dim, c, 0);
        memcpy(logits + (int64_t)s * G, m->logits, sizeof(float) * c * G);
        if (!log_theta) continue;
        float *lt = log_theta + (int64_t)s * G;
        if (m->has_disp) memcpy(lt, m->disp, sizeof(float) * c * G);
        else
            for (int i = 0; i < c; i++)
                for (int64_t g = 0; g < G; g++) lt[i * G + g] = m->log_theta ? m->log_theta[g] : INFINITY;
    }
    return NBS_OK;
}

int nbs_model_loglik(const nbs_model *cm, const nbs_matrix *X, const int64_t *rows, int64_t row0,
                     int n, const float *z, double *loglik, nbs_error *err) {
    nbs_model *m = (nbs_model *)cm;
    for (int s = 0; s < n; s += EVAL_CHUNK) {
        int c = n - s < EVAL_CHUNK ? n - s : EVAL_CHUNK;
        int st = reserve(m, c, err);
        const int64_t *r = rows ? rows + s : NULL;
        if (!st) st = gather(m, X, r, row0 + s, c, err);
        if (!st) st = nbs_lik_reserve(m->G, err);
        if (st) return st;
        decode(m, z + (int64_t)s * m->lat.dim, c, 0);
        nbs_lik_batch b = lik_batch(m, X, row_index(m, r, row0 + s, c), c);
        nbs_lik_eval(&b, loglik + s, 1.0f, NULL, NULL, NULL);
    }
    return NBS_OK;
}

int nbs_model_embed(const nbs_model *m, const nbs_matrix *X, float *location, float *spread,
                    nbs_error *err) {
    const int hd = m->head_dim, d = m->lat.dim;
    float *head = nbs_malloc(sizeof(float) * EVAL_CHUNK * hd, err);
    if (!head) return err->code;
    int st = NBS_OK;
    for (int64_t s = 0; s < X->n_cells && !st; s += EVAL_CHUNK) {
        int c = (int)(X->n_cells - s < EVAL_CHUNK ? X->n_cells - s : EVAL_CHUNK);
        st = nbs_model_encode(m, X, NULL, s, c, head, err);
        if (!st)
            nbs_latent_posterior(&m->lat, head, c, location + s * d,
                                 !spread ? NULL : spread + s * (m->lat.kind == NBS_LATENT_GAUSSIAN ? d : 1));
    }
    free(head);
    return st;
}

/* ---- accessors ---- */

int nbs_model_n_genes(const nbs_model *m) { return m->G; }
const nbs_latent *nbs_model_latent(const nbs_model *m) { return &m->lat; }
const nbs_model_config *nbs_model_config_of(const nbs_model *m) { return &m->cfg; }
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
