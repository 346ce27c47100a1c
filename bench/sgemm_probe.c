/* Measures this machine's single-precision GEMM speed with OpenBLAS at the thread count set by
 * OPENBLAS_NUM_THREADS, at the shapes of the scVI encoder (batch 128 x 2000 genes x 128 hidden)
 * and at a large square size (the peak). Prints "shape GFLOP/s" lines. */
#define _POSIX_C_SOURCE 199309L
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static double probe(int m, int n, int k)
{
    float *a = malloc(sizeof(float) * m * k), *b = malloc(sizeof(float) * k * n),
          *c = malloc(sizeof(float) * m * n);
    for (long i = 0; i < (long)m * k; i++) a[i] = (float)(i % 7) * 0.1f;
    for (long i = 0; i < (long)k * n; i++) b[i] = (float)(i % 5) * 0.1f;
    int reps = 1;
    double t = 0;
    while (t < 0.5) {
        double t0 = now();
        for (int r = 0; r < reps; r++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
        t = now() - t0;
        if (t < 0.5) reps *= 2;
    }
    free(a); free(b); free(c);
    return 2.0 * m * n * k * reps / t / 1e9;
}

int main(void)
{
    printf("peak %.2f\n", probe(2048, 2048, 2048));
    printf("enc_128x2000x128 %.2f\n", probe(128, 128, 2000));
    printf("dec_128x128x2000 %.2f\n", probe(128, 2000, 128));
    return 0;
}
