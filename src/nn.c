#include "nbsphere/nn.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <string.h>

/* One thread pool: OpenBLAS runs single-threaded inside OpenMP regions, so there is no second
 * pool to oversubscribe the cores and each product is computed by one known kernel call. (One
 * sgemm per backward product with OpenBLAS's own threads was measured too, bench/layers_probe.c
 * and bench/RESULTS.md: its threads spin on after each call and slowed the likelihood that
 * follows by half, on an otherwise idle machine.) */
static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static void blas_serial_now(void) { openblas_set_num_threads(1); }
void nbs_nn_blas_serial(void) { pthread_once(&blas_once, blas_serial_now); }

static void block_range(int64_t n, int64_t *lo, int64_t *hi) {
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    *lo = n * t / T;
    *hi = n * (t + 1) / T;
}

/* Row products are cut into blocks of ROW_BLOCK rows whatever the thread count, so a given n
 * always makes the same sgemm calls with the same shapes: a forward pass gives the same bits with
 * any number of threads, and run's final embedding equals embed's on any processor (OpenBLAS may
 * choose another kernel for another shape, and kernels differ in the order they sum). */
#define ROW_BLOCK 64

void nbs_dense_forward(const nbs_dense *L, const float *x, int n, float *y) {
    nbs_nn_blas_serial();
    const int blocks = (n + ROW_BLOCK - 1) / ROW_BLOCK;
#pragma omp parallel for schedule(static)
    for (int b = 0; b < blocks; b++) {
        const int64_t lo = (int64_t)b * ROW_BLOCK;
        const int rows = n - lo < ROW_BLOCK ? (int)(n - lo) : ROW_BLOCK;
        for (int64_t i = lo; i < lo + rows; i++) memcpy(y + i * L->out, L->b, sizeof(float) * L->out);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, L->out, L->in, 1.0f, x + lo * L->in,
                    L->in, L->W, L->out, 1.0f, y + lo * L->out, L->out);
    }
}

static void add_colsum(float *db, const float *dy, int n, int width) {
    for (int i = 0; i < n; i++) {
        const float *r = dy + (int64_t)i * width;
        for (int j = 0; j < width; j++) db[j] += r[j];
    }
}

void nbs_dense_backward(const nbs_dense *L, const float *x, const float *dy, int n, float *dx) {
    nbs_nn_blas_serial();
    const int in = L->in, out = L->out;
#pragma omp parallel
    {
        int64_t lo, hi;
        /* dW += x^T dy, split along the longer side of dW */
        if (out >= in) {
            block_range(out, &lo, &hi);
            if (hi > lo)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, in, (int)(hi - lo), n, 1.0f, x, in,
                            dy + lo, out, 1.0f, L->dW + lo, out);
        } else {
            block_range(in, &lo, &hi);
            if (hi > lo)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(hi - lo), out, n, 1.0f, x + lo,
                            in, dy, out, 1.0f, L->dW + lo * out, out);
        }
        if (dx) {
            block_range(n, &lo, &hi);
            if (hi > lo)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(hi - lo), in, out, 1.0f,
                            dy + lo * out, out, L->W, out, 0.0f, dx + lo * in, in);
        }
    }
    add_colsum(L->db, dy, n, out);
}

/* nbs_dense_forward_sparse keeps a block of 64 output sums in eight 8-float vectors (registers,
 * with AVX or AVX2; pairs of SSE registers otherwise) over all of a row's nonzeros, instead of
 * loading and storing the row for each nonzero. Every sum is formed in the same order either way. */
typedef float v8sf __attribute__((vector_size(32)));
enum { SPARSE_VECS = 8, SPARSE_COLS = 8 * SPARSE_VECS };

void nbs_dense_forward_sparse(const nbs_dense *L, const nbs_sparse_rows *x, float *y) {
    const int out = L->out;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < x->n; i++) {
        float *yi = y + (int64_t)i * out;
        const int64_t p0 = x->indptr[i], p1 = x->indptr[i + 1];
        int c0 = 0;
        for (; c0 + SPARSE_COLS <= out; c0 += SPARSE_COLS) {
            v8sf acc[SPARSE_VECS];
            memcpy(acc, L->b + c0, sizeof acc);
            for (int64_t p = p0; p < p1; p++) {
                const float v = x->values[p], *w = L->W + (int64_t)x->indices[p] * out + c0;
                for (int k = 0; k < SPARSE_VECS; k++) {
                    v8sf wk;
                    memcpy(&wk, w + 8 * k, sizeof wk);
                    acc[k] += v * wk;
                }
            }
            memcpy(yi + c0, acc, sizeof acc);
        }
        if (c0 == out) continue;
        memcpy(yi + c0, L->b + c0, sizeof(float) * (out - c0));
        for (int64_t p = p0; p < p1; p++) { /* inline: a call per nonzero costs more */
            const float v = x->values[p], *w = L->W + (int64_t)x->indices[p] * out;
#pragma omp simd
            for (int j = c0; j < out; j++) yi[j] += v * w[j];
        }
    }
}

void nbs_sparse_transpose(const nbs_sparse_rows *x, int in, int64_t *colptr, int32_t *cell, float *value) {
    memset(colptr, 0, sizeof(int64_t) * ((size_t)in + 1));
    const int64_t nnz = x->indptr[x->n];
    for (int64_t p = 0; p < nnz; p++) colptr[x->indices[p] + 1]++;
    for (int g = 0; g < in; g++) colptr[g + 1] += colptr[g];
    /* colptr[g] serves as column g's cursor, ending at the start of g + 1; shifted back after */
    for (int i = 0; i < x->n; i++)
        for (int64_t p = x->indptr[i]; p < x->indptr[i + 1]; p++) {
            const int64_t q = colptr[x->indices[p]]++;
            cell[q] = i;
            value[q] = x->values[p];
        }
    for (int g = in; g > 0; g--) colptr[g] = colptr[g - 1];
    colptr[0] = 0;
}

void nbs_dense_backward_sparse(const nbs_dense *L, const nbs_sparse_rows *x, const float *dy) {
    const int out = L->out;
    if (x->colptr) {
        /* Each row of dW is its column's sum over cells: threads split the rows, and a block of
         * SPARSE_COLS outputs stays in registers over the column's entries, in cell order. */
#pragma omp parallel for schedule(static)
        for (int g = 0; g < L->in; g++) {
            const int64_t q0 = x->colptr[g], q1 = x->colptr[g + 1];
            if (q0 == q1) continue;
            float *dw = L->dW + (int64_t)g * out;
            int c0 = 0;
            for (; c0 + SPARSE_COLS <= out; c0 += SPARSE_COLS) {
                v8sf acc[SPARSE_VECS];
                memcpy(acc, dw + c0, sizeof acc);
                for (int64_t q = q0; q < q1; q++) {
                    const float v = x->colvalue[q], *d = dy + (int64_t)x->colcell[q] * out + c0;
                    for (int k = 0; k < SPARSE_VECS; k++) {
                        v8sf dk;
                        memcpy(&dk, d + 8 * k, sizeof dk);
                        acc[k] += v * dk;
                    }
                }
                memcpy(dw + c0, acc, sizeof acc);
            }
            for (int64_t q = q0; c0 < out && q < q1; q++) {
                const float v = x->colvalue[q], *d = dy + (int64_t)x->colcell[q] * out;
#pragma omp simd
                for (int j = c0; j < out; j++) dw[j] += v * d[j];
            }
        }
        add_colsum(L->db, dy, x->n, out);
        return;
    }
    /* Without the column view: rows of dW are shared between cells, so threads split the columns
     * instead: each adds into its own block of every touched row, in the same order on every run. */
#pragma omp parallel
    {
        int64_t lo, hi;
        block_range(out, &lo, &hi);
        const int w = (int)(hi - lo);
        for (int i = 0; w > 0 && i < x->n; i++)
            for (int64_t p = x->indptr[i]; p < x->indptr[i + 1]; p++) {
                const float v = x->values[p], *d = dy + (int64_t)i * out + lo;
                float *dw = L->dW + (int64_t)x->indices[p] * out + lo;
#pragma omp simd
                for (int j = 0; j < w; j++) dw[j] += v * d[j];
            }
    }
    add_colsum(L->db, dy, x->n, out);
}

/* The covariate products are n x k x out additions with small k: plain loops in cell order, so
 * every sum has one order whatever the thread count. */
void nbs_onehot_forward(const float *W, int out, const int32_t *rows, int k, int n, float *y) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < k; j++) {
            const float *w = W + (int64_t)rows[(int64_t)i * k + j] * out;
            float *yi = y + (int64_t)i * out;
#pragma omp simd
            for (int c = 0; c < out; c++) yi[c] += w[c];
        }
}

void nbs_onehot_backward(float *dW, int out, const int32_t *rows, int k, int n, const float *dy) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < k; j++) {
            float *dw = dW + (int64_t)rows[(int64_t)i * k + j] * out;
            const float *d = dy + (int64_t)i * out;
#pragma omp simd
            for (int c = 0; c < out; c++) dw[c] += d[c];
        }
}

void nbs_linear_add_forward(const float *W, int k, int out, const float *x, int n, float *y) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < k; j++) {
            const float v = x[(int64_t)i * k + j], *w = W + (int64_t)j * out;
            float *yi = y + (int64_t)i * out;
#pragma omp simd
            for (int c = 0; c < out; c++) yi[c] += v * w[c];
        }
}

void nbs_linear_add_backward(float *dW, int k, int out, const float *x, int n, const float *dy) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < k; j++) {
            const float v = x[(int64_t)i * k + j], *d = dy + (int64_t)i * out;
            float *dw = dW + (int64_t)j * out;
#pragma omp simd
            for (int c = 0; c < out; c++) dw[c] += v * d[c];
        }
}

void nbs_linear_add_input_backward(const float *W, int k, int out, const float *dy, int n, float *dx) {
    for (int i = 0; i < n; i++)
        for (int j = 0; j < k; j++) {
            const float *w = W + (int64_t)j * out, *d = dy + (int64_t)i * out;
            float sum = 0;
#pragma omp simd reduction(+ : sum)
            for (int c = 0; c < out; c++) sum += w[c] * d[c];
            dx[(int64_t)i * k + j] += sum;
        }
}

void nbs_relu_forward(float *y, int64_t n) {
    for (int64_t k = 0; k < n; k++) y[k] = y[k] > 0 ? y[k] : 0;
}

void nbs_relu_backward(const float *y, float *dy, int64_t n) {
    for (int64_t k = 0; k < n; k++)
        if (!(y[k] > 0)) dy[k] = 0;
}

void nbs_dropout_mask(gsl_rng *rng, double p, float *mask, int64_t n) {
    const float keep = (float)(1.0 / (1.0 - p));
    for (int64_t k = 0; k < n; k++) mask[k] = (p > 0 && gsl_rng_uniform(rng) < p) ? 0.0f : (p > 0 ? keep : 1.0f);
}

void nbs_mul_inplace(float *y, const float *mask, int64_t n) {
    for (int64_t k = 0; k < n; k++) y[k] *= mask[k];
}

#define NORM_EPS 1e-5 /* layer norm */
#define NORM_COLS 64 /* batch norm: columns per block */

int nbs_norm_uses_batch(const nbs_norm *N, int n, int training) {
    return N->batch ? (training && n > 1) : 1;
}

void nbs_norm_forward(const nbs_norm *N, float *y, int n, int training, float *xhat, float *inv_std) {
    const int w = N->width;
    if (!N->batch) {
        for (int i = 0; i < n; i++) {
            float *r = y + (int64_t)i * w;
            double mean = 0, var = 0;
            for (int j = 0; j < w; j++) mean += r[j];
            mean /= w;
            for (int j = 0; j < w; j++) var += (r[j] - mean) * (r[j] - mean);
            const double is = 1.0 / sqrt(var / w + NORM_EPS);
            inv_std[i] = (float)is;
            for (int j = 0; j < w; j++) {
                xhat[(int64_t)i * w + j] = (float)((r[j] - mean) * is);
                r[j] = N->gain[j] * xhat[(int64_t)i * w + j] + N->bias[j];
            }
        }
        return;
    }
    /* Batch norm: columns in blocks of NORM_COLS, each column's sums over the cells in cell order
     * (as one column at a time would take them) but the cells' rows read in turn, contiguously. */
    const int use_batch = nbs_norm_uses_batch(N, n, training);
    for (int j0 = 0; j0 < w; j0 += NORM_COLS) {
        const int jn = w - j0 < NORM_COLS ? w - j0 : NORM_COLS;
        double mean[NORM_COLS], var[NORM_COLS], is[NORM_COLS];
        if (use_batch) {
            for (int c = 0; c < jn; c++) mean[c] = var[c] = 0;
            for (int i = 0; i < n; i++) {
                const float *r = y + (int64_t)i * w + j0;
                for (int c = 0; c < jn; c++) mean[c] += r[c];
            }
            for (int c = 0; c < jn; c++) mean[c] /= n;
            for (int i = 0; i < n; i++) {
                const float *r = y + (int64_t)i * w + j0;
                for (int c = 0; c < jn; c++) {
                    const double d = r[c] - mean[c];
                    var[c] += d * d;
                }
            }
            for (int c = 0; c < jn; c++) {
                const int j = j0 + c;
                var[c] /= n;
                N->run_mean[j] = (float)((1 - N->momentum) * N->run_mean[j] + N->momentum * mean[c]);
                N->run_var[j] = (float)((1 - N->momentum) * N->run_var[j] + N->momentum * var[c] * n / (n - 1));
            }
        } else {
            for (int c = 0; c < jn; c++) {
                mean[c] = N->run_mean[j0 + c];
                var[c] = N->run_var[j0 + c];
            }
        }
        for (int c = 0; c < jn; c++) {
            is[c] = 1.0 / sqrt(var[c] + N->eps);
            inv_std[j0 + c] = (float)is[c];
        }
        for (int i = 0; i < n; i++) {
            float *v = y + (int64_t)i * w + j0, *xh = xhat + (int64_t)i * w + j0;
            const float *gain = N->gain + j0, *bias = N->bias + j0;
            for (int c = 0; c < jn; c++) {
                xh[c] = (float)((v[c] - mean[c]) * is[c]);
                v[c] = gain[c] * xh[c] + bias[c];
            }
        }
    }
}

void nbs_norm_backward(const nbs_norm *N, float *dy, int n, const float *xhat, const float *inv_std,
                       int used_batch_stats) {
    const int w = N->width;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < w; j++) {
            N->dgain[j] += dy[(int64_t)i * w + j] * xhat[(int64_t)i * w + j];
            N->dbias[j] += dy[(int64_t)i * w + j];
        }
    if (!N->batch) { /* dx = is * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gain */
        for (int i = 0; i < n; i++) {
            float *d = dy + (int64_t)i * w;
            const float *xh = xhat + (int64_t)i * w;
            double m1 = 0, m2 = 0;
            for (int j = 0; j < w; j++) {
                const double g = d[j] * N->gain[j];
                m1 += g;
                m2 += g * xh[j];
            }
            m1 /= w;
            m2 /= w;
            for (int j = 0; j < w; j++) d[j] = (float)(inv_std[i] * (d[j] * N->gain[j] - m1 - xh[j] * m2));
        }
        return;
    }
    for (int j0 = 0; j0 < w; j0 += NORM_COLS) { /* in blocks of columns, as the forward */
        const int jn = w - j0 < NORM_COLS ? w - j0 : NORM_COLS;
        const float *gain = N->gain + j0, *is = inv_std + j0;
        if (!used_batch_stats) { /* running statistics are constants */
            for (int i = 0; i < n; i++) {
                float *d = dy + (int64_t)i * w + j0;
                for (int c = 0; c < jn; c++) d[c] *= gain[c] * is[c];
            }
            continue;
        }
        double m1[NORM_COLS], m2[NORM_COLS];
        for (int c = 0; c < jn; c++) m1[c] = m2[c] = 0;
        for (int i = 0; i < n; i++) {
            const float *d = dy + (int64_t)i * w + j0, *xh = xhat + (int64_t)i * w + j0;
            for (int c = 0; c < jn; c++) {
                const double g = d[c] * gain[c];
                m1[c] += g;
                m2[c] += g * xh[c];
            }
        }
        for (int c = 0; c < jn; c++) {
            m1[c] /= n;
            m2[c] /= n;
        }
        for (int i = 0; i < n; i++) {
            float *d = dy + (int64_t)i * w + j0;
            const float *xh = xhat + (int64_t)i * w + j0;
            for (int c = 0; c < jn; c++) d[c] = (float)(is[c] * (d[c] * gain[c] - m1[c] - xh[c] * m2[c]));
        }
    }
}

void nbs_adam_step(float *param, const float *grad, float *m, float *v, int64_t n, double lr,
                   double beta1, double beta2, double eps, double weight_decay, int64_t t) {
    const double c1 = 1 - pow(beta1, (double)t), c2 = 1 - pow(beta2, (double)t);
    /* bias correction folded into the step size; float arithmetic, as the parameters are float,
     * so the loop vectorises */
    const float step = (float)(lr * sqrt(c2) / c1), eps_hat = (float)(eps * sqrt(c2));
    const float b1 = (float)beta1, b2 = (float)beta2, wd = (float)weight_decay;
#pragma omp parallel for simd schedule(static)
    for (int64_t k = 0; k < n; k++) {
        const float g = grad[k] + wd * param[k];
        m[k] = b1 * m[k] + (1 - b1) * g;
        v[k] = b2 * v[k] + (1 - b2) * g * g;
        param[k] -= step * m[k] / (sqrtf(v[k]) + eps_hat);
    }
}

void nbs_nn_set_threads(int threads) {
    /* OpenMP is the only pool; OpenBLAS's own threads would compete with it for the cores. */
    omp_set_num_threads(threads);
    nbs_nn_blas_serial();
}
