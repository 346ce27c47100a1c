#include "nbsphere/nn.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <string.h>

/* One thread pool: OpenBLAS runs single-threaded inside OpenMP regions, so there is no second
 * pool to oversubscribe the cores and each product is computed by one known kernel call. */
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

void nbs_dense_forward_sparse(const nbs_dense *L, const nbs_sparse_rows *x, float *y) {
    const int out = L->out;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < x->n; i++) {
        float *yi = y + (int64_t)i * out;
        memcpy(yi, L->b, sizeof(float) * out);
        for (int64_t p = x->indptr[i]; p < x->indptr[i + 1]; p++) { /* inline: a call per nonzero costs more */
            const float v = x->values[p], *w = L->W + (int64_t)x->indices[p] * out;
#pragma omp simd
            for (int j = 0; j < out; j++) yi[j] += v * w[j];
        }
    }
}

void nbs_dense_backward_sparse(const nbs_dense *L, const nbs_sparse_rows *x, const float *dy) {
    const int out = L->out;
    /* Rows of dW are shared between cells, so threads split the columns instead: each adds
     * into its own block of every touched row, in the same order on every run. */
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
    const int use_batch = nbs_norm_uses_batch(N, n, training);
    for (int j = 0; j < w; j++) {
        double mean, var;
        if (use_batch) {
            mean = 0;
            var = 0;
            for (int i = 0; i < n; i++) mean += y[(int64_t)i * w + j];
            mean /= n;
            for (int i = 0; i < n; i++) {
                const double d = y[(int64_t)i * w + j] - mean;
                var += d * d;
            }
            var /= n;
            N->run_mean[j] = (float)((1 - N->momentum) * N->run_mean[j] + N->momentum * mean);
            N->run_var[j] = (float)((1 - N->momentum) * N->run_var[j] + N->momentum * var * n / (n - 1));
        } else {
            mean = N->run_mean[j];
            var = N->run_var[j];
        }
        const double is = 1.0 / sqrt(var + N->eps);
        inv_std[j] = (float)is;
        for (int i = 0; i < n; i++) {
            float *v = y + (int64_t)i * w + j;
            xhat[(int64_t)i * w + j] = (float)((*v - mean) * is);
            *v = N->gain[j] * xhat[(int64_t)i * w + j] + N->bias[j];
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
    for (int j = 0; j < w; j++) {
        if (!used_batch_stats) { /* running statistics are constants */
            for (int i = 0; i < n; i++) dy[(int64_t)i * w + j] *= N->gain[j] * inv_std[j];
            continue;
        }
        double m1 = 0, m2 = 0;
        for (int i = 0; i < n; i++) {
            const double g = dy[(int64_t)i * w + j] * N->gain[j];
            m1 += g;
            m2 += g * xhat[(int64_t)i * w + j];
        }
        m1 /= n;
        m2 /= n;
        for (int i = 0; i < n; i++) {
            float *d = dy + (int64_t)i * w + j;
            *d = (float)(inv_std[j] * (*d * N->gain[j] - m1 - xhat[(int64_t)i * w + j] * m2));
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
