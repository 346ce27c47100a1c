/* Building blocks of the networks: dense layers (dense or CSR input), ReLU, dropout, layer and
 * batch normalisation, and Adam. Tensors are float32 row-major [batch x features]; forward and
 * backward of each block sit side by side; backward accumulates parameter gradients (the
 * model zeroes its gradient block once per step) and overwrites the input gradient. */
#ifndef NBSPHERE_NN_H
#define NBSPHERE_NN_H

#include <gsl/gsl_rng.h>
#include <math.h>
#include <stdint.h>

typedef struct {
    int in, out;
    float *W, *b;   /* [in x out], [out] — views into the model's parameter block */
    float *dW, *db; /* the same places in the gradient block */
} nbs_dense;

/* y = x W + b */
void nbs_dense_forward(const nbs_dense *L, const float *x, int n, float *y);
/* dW += x^T dy, db += colsum(dy); dx = dy W^T (dx may be NULL). */
void nbs_dense_backward(const nbs_dense *L, const float *x, const float *dy, int n, float *dx);

/* A batch of sparse input rows (CSR, already transformed, e.g. log1p counts), and optionally the
 * same entries by column (CSC, each column's cells in increasing order; nbs_sparse_transpose). */
typedef struct {
    int n;
    const int64_t *indptr; /* n + 1 */
    const int32_t *indices;
    const float *values;
    const int64_t *colptr;  /* in + 1, or NULL: no column view */
    const int32_t *colcell; /* nnz */
    const float *colvalue;  /* nnz */
} nbs_sparse_rows;
/* Fills the column view of x's `in` columns into colptr (in + 1), cell and value (nnz). */
void nbs_sparse_transpose(const nbs_sparse_rows *x, int in, int64_t *colptr, int32_t *cell, float *value);
void nbs_dense_forward_sparse(const nbs_dense *L, const nbs_sparse_rows *x, float *y);
/* dW += x^T dy over the stored entries only, db += colsum(dy); with x's column view when it has
 * one (faster; the same sums in the same order). */
void nbs_dense_backward_sparse(const nbs_dense *L, const nbs_sparse_rows *x, const float *dy);

/* Inputs concatenated to a layer's own, without forming the concatenation: [x, onehot, c] W
 * = x W_x + W_cat[codes] + c W_c. Every row of W_cat belongs to one category of one covariate;
 * rows (n, k) holds, per cell, the rows of its k categories. Backward adds dy into those rows
 * only. */
void nbs_onehot_forward(const float *W, int out, const int32_t *rows, int k, int n, float *y);
void nbs_onehot_backward(float *dW, int out, const int32_t *rows, int k, int n, const float *dy);
/* y += x W: x (n, k), W (k, out), no bias; backward dW += x^T dy. */
void nbs_linear_add_forward(const float *W, int k, int out, const float *x, int n, float *y);
void nbs_linear_add_backward(float *dW, int k, int out, const float *x, int n, const float *dy);
/* dx += dy W^T: the gradient of x (n, k) when x is itself learned (a covariate's embedding). */
void nbs_linear_add_input_backward(const float *W, int k, int out, const float *dy, int n, float *dx);

/* In place; backward masks dy with y > 0 (y = the forward's output). */
void nbs_relu_forward(float *y, int64_t n);
/* log(1 + exp(x)) without overflow (the spheres' concentration, ZINB's zero inflation). */
static inline double nbs_softplus(double x) { return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x)); }
void nbs_relu_backward(const float *y, float *dy, int64_t n);

/* Inverted dropout: mask[k] is 0 or 1/(1-p); y *= mask. p = 0 fills the mask with 1. */
void nbs_dropout_mask(gsl_rng *rng, double p, float *mask, int64_t n);
void nbs_mul_inplace(float *y, const float *mask, int64_t n);

/* Normalisation of a [n x width] activation, in place, with affine gain and bias.
 * Layer norm: per row. Batch norm: per column over the batch while training (n > 1), running
 * statistics otherwise — so a last minibatch of one cell is normalised by the running
 * statistics instead of dividing by a zero variance. */
typedef struct {
    int width, batch;     /* batch = 1: batch norm, 0: layer norm */
    float *gain, *bias;   /* parameters [width] */
    float *dgain, *dbias;
    float *run_mean, *run_var; /* batch norm: running statistics [width] (state, not parameters) */
    double eps, momentum; /* batch norm: variance floor and running-statistics rate (see NBS_BN_*) */
} nbs_norm;

/* Batch norm as scvi-tools configures it for count data (eps 1e-3, slow running statistics), so
 * that `preset: scvi` is that model; torch's defaults are 1e-5 and 0.1. A model file records the
 * constants it was trained with. */
#define NBS_BN_EPS 1e-3
#define NBS_BN_MOMENTUM 0.01
/* xhat [n x width] and inv_std ([n] layer norm, [width] batch norm) are kept for backward. */
void nbs_norm_forward(const nbs_norm *N, float *y, int n, int training, float *xhat, float *inv_std);
/* dy in, dx out in place of dy. used_batch_stats: what the forward did (see nbs_norm_uses_batch). */
void nbs_norm_backward(const nbs_norm *N, float *dy, int n, const float *xhat, const float *inv_std,
                       int used_batch_stats);
int nbs_norm_uses_batch(const nbs_norm *N, int n, int training);

/* One Adam step over a flat block (bias-corrected; L2 weight decay added to the gradient as in
 * torch.optim.Adam). t is the 1-based step number. */
void nbs_adam_step(float *param, const float *grad, float *m, float *v, int64_t n, double lr,
                   double beta1, double beta2, double eps, double weight_decay, int64_t t);

/* Threads of the one OpenMP pool that runs everything (OpenBLAS is kept single-threaded). */
void nbs_nn_set_threads(int threads);

/* Makes OpenBLAS single-threaded, once per process; every BLAS caller runs it first, so a library
 * user who never sets the thread count still gets one pool and the CLI's results. */
void nbs_nn_blas_serial(void);

#endif
