/* The element-wise floor of the NB likelihood: nanoseconds per entry of glibc libmvec's vector
 * exp and log, called the way src/likelihood.c calls them (double, `omp simd` loops over a row
 * of 2,000 genes, which stays in L1), with the vector width of the flags this is compiled with
 * (make bench compiles it with the build's ARCH). Prints "exp NS", "log NS" and "div NS" (the
 * division th / (th + mu) each entry also needs), one thread. */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <time.h>

#include "vecmath_internal.h" /* the likelihood's declarations of libmvec's exp and log */

enum { G = 2000 };
static float in[G]; /* float inputs in double arithmetic, as the likelihood's logits and log theta */
static double out[G];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* Each kernel once over the row; noinline keeps the compiler from fusing the repetitions. */
__attribute__((noinline)) static void row_exp(void) {
#pragma omp simd
    for (int g = 0; g < G; g++) out[g] = exp((double)in[g]);
}
__attribute__((noinline)) static void row_log(void) {
#pragma omp simd
    for (int g = 0; g < G; g++) out[g] = log((double)in[g]);
}
__attribute__((noinline)) static void row_div(void) {
#pragma omp simd
    for (int g = 0; g < G; g++) out[g] = in[g] / (in[g] + 1.5);
}

/* ns per entry: the fastest of 7 rounds of >= 0.05 s each (the machine may be shared) */
static double probe(void (*f)(void)) {
    double best = INFINITY;
    for (int round = 0; round < 7; round++) {
        long reps = 0;
        const double t0 = now();
        double t;
        do {
            for (int r = 0; r < 100; r++) f();
            reps += 100;
        } while ((t = now() - t0) < 0.05);
        const double ns = t / ((double)reps * G) * 1e9;
        best = ns < best ? ns : best;
    }
    return best;
}

int main(void) {
    for (int g = 0; g < G; g++) in[g] = (float)(0.5 + 7.0 * g / G); /* the range of log(theta + mu) inputs */
    const double e = probe(row_exp), l = probe(row_log), d = probe(row_div);
    double check = 0;
    for (int g = 0; g < G; g++) check += out[g];
    printf("exp %.4f\nlog %.4f\ndiv %.4f\n", e, l, d);
    return !(check > 0); /* uses the results, so no loop is dropped */
}
