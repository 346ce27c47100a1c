/* Ways to compute the decoder's output layer (the scVI default's 128 -> genes product, 90 % of
 * the dense FLOPs of an epoch), forward (y = x W + b) and backward (dW += x^T dy, dx = dy W^T),
 * at the thread count of OMP_NUM_THREADS, against the sgemm peak measured in the same run:
 *   nbs      nbs_dense_forward/backward as training calls them: forward in blocks of 64 rows,
 *            backward dW by columns and dx by rows, over the OpenMP threads (serial OpenBLAS)
 *   bwd-blas the forward as nbs, each backward product one sgemm with OpenBLAS's own threads
 *   blas     every product one sgemm over the whole minibatch, OpenBLAS's own threads
 *   nbs-xK   nbs_dense_* on K minibatches' worth of rows at once (larger shapes)
 * It times the products alone: what OpenBLAS's threads cost the OpenMP work that follows them
 * (they spin on after a call) shows only in training (bench/RESULTS.md, 2026-12-01).
 * Prints "name GFLOP/s" lines; usage: layers_probe [genes] [batch]. */
#define _POSIX_C_SOURCE 199309L
#include "nbsphere/nn.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static float *filled(int64_t n, int mod) {
    float *p = malloc(sizeof(float) * n);
    for (int64_t i = 0; i < n; i++) p[i] = (float)(i % mod) * 0.01f - 0.02f;
    return p;
}

typedef void (*step_fn)(const nbs_dense *L, const float *x, const float *dy, int n, float *y, float *dx);

static void step_nbs(const nbs_dense *L, const float *x, const float *dy, int n, float *y, float *dx) {
    nbs_dense_forward(L, x, n, y);
    nbs_dense_backward(L, x, dy, n, dx);
}

static void step_blas(const nbs_dense *L, const float *x, const float *dy, int n, float *y, float *dx) {
    const int in = L->in, out = L->out;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < out; j++) y[(int64_t)i * out + j] = L->b[j];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, out, in, 1.0f, x, in, L->W, out, 1.0f, y, out);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, in, out, n, 1.0f, x, in, dy, out, 1.0f, L->dW, out);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, in, out, 1.0f, dy, out, L->W, out, 0.0f, dx, in);
}

static void step_bwd_blas(const nbs_dense *L, const float *x, const float *dy, int n, float *y, float *dx) {
    const int in = L->in, out = L->out;
    nbs_dense_forward(L, x, n, y);
    openblas_set_num_threads(omp_get_max_threads());
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, in, out, n, 1.0f, x, in, dy, out, 1.0f, L->dW, out);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, in, out, 1.0f, dy, out, L->W, out, 0.0f, dx, in);
    openblas_set_num_threads(1);
}

/* GFLOP/s of the three products: the best of 5 rounds of >= 0.2 s (the machine may be shared) */
static double probe(step_fn f, const nbs_dense *L, int n) {
    float *x = filled((int64_t)n * L->in, 7), *dy = filled((int64_t)n * L->out, 5);
    float *y = malloc(sizeof(float) * n * L->out), *dx = malloc(sizeof(float) * n * L->in);
    double best = 0;
    for (int round = 0; round < 5; round++) {
        long reps = 0;
        const double t0 = now();
        double t;
        do {
            f(L, x, dy, n, y, dx);
            reps++;
        } while ((t = now() - t0) < 0.2);
        const double g = 3 * 2.0 * n * L->in * L->out * reps / t / 1e9;
        best = g > best ? g : best;
    }
    free(x); free(dy); free(y); free(dx);
    return best;
}

int main(int argc, char **argv) {
    const int G = argc > 1 ? atoi(argv[1]) : 2000, batch = argc > 2 ? atoi(argv[2]) : 128, H = 128;
    const int T = omp_get_max_threads();
    nbs_dense L = {H, G, filled((int64_t)H * G, 3), filled(G, 2), filled((int64_t)H * G, 3), filled(G, 2)};
    printf("nbs %.2f\n", probe(step_nbs, &L, batch));
    printf("bwd-blas %.2f\n", probe(step_bwd_blas, &L, batch));
    for (int k = 2; k <= 8; k *= 2) printf("nbs-x%d %.2f\n", k, probe(step_nbs, &L, k * batch));
    openblas_set_num_threads(T);
    printf("blas %.2f\n", probe(step_blas, &L, batch));
    return 0;
}
