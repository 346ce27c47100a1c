/* The latent layer as an interface: each kind's table and the facts callers read from it; no
 * allocation inside a training step (forward and backward of every kind under a counter of the
 * library's allocating calls, which the Makefile routes through the wrappers below with
 * -Wl,--wrap); the batched sphere layer equal, bit for bit, to the per-cell functions of
 * sphere.h; stages that share nothing; a cache used by a larger thread pool than it was made
 * for. */
#include "testutil.h"

#include <gsl/gsl_integration.h>
#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/latent.h"
#include "nbsphere/sphere.h"

/* ---- the allocation counter ---- */

static long allocs;
static volatile int counting;

static void counted(void) {
    if (counting) __atomic_add_fetch(&allocs, 1, __ATOMIC_RELAXED);
}

void *__real_malloc(size_t n);
void *__real_calloc(size_t c, size_t n);
void *__real_realloc(void *p, size_t n);
gsl_integration_workspace *__real_gsl_integration_workspace_alloc(size_t n);

void *__wrap_malloc(size_t n) {
    counted();
    return __real_malloc(n);
}
void *__wrap_calloc(size_t c, size_t n) {
    counted();
    return __real_calloc(c, n);
}
void *__wrap_realloc(void *p, size_t n) {
    counted();
    return __real_realloc(p, n);
}
gsl_integration_workspace *__wrap_gsl_integration_workspace_alloc(size_t n) {
    counted();
    return __real_gsl_integration_workspace_alloc(n);
}

/* ---- one batch ---- */

static const nbs_latent_kind KINDS[] = {NBS_LATENT_GAUSSIAN, NBS_LATENT_VMF, NBS_LATENT_POWER_SPHERICAL};
#define N_KINDS 3

/* A stage with a batch of n cells, its inputs and outputs. */
typedef struct {
    nbs_latent L;
    int n, hd, K;
    float *head; /* (n, hd) */
    float *dz;   /* (n, d) */
    float *klw;  /* (K) */
    float *z;    /* (n, d) */
    double *kl;  /* (n, K) */
    float *dh;   /* (n, hd) */
    nbs_latent_cache *cache;
    gsl_rng *rng;
} batch;

/* Heads with moderate and, every fifth cell, large concentrations (spheres). */
static void batch_init(batch *b, nbs_latent_kind kind, int d, int n, unsigned long seed) {
    b->L = (nbs_latent){kind, d, kind == NBS_LATENT_GAUSSIAN ? 0 : 0.5};
    b->n = n;
    b->hd = nbs_latent_head_dim(&b->L);
    b->K = nbs_latent_kl_terms(&b->L);
    b->head = malloc(sizeof(float) * n * b->hd);
    b->dz = malloc(sizeof(float) * n * d);
    b->klw = malloc(sizeof(float) * b->K);
    b->z = malloc(sizeof(float) * n * d);
    b->kl = malloc(sizeof(double) * n * b->K);
    b->dh = malloc(sizeof(float) * n * b->hd);
    b->rng = gsl_rng_alloc(gsl_rng_mt19937);
    assert_true(b->head && b->dz && b->klw && b->z && b->kl && b->dh && b->rng);
    gsl_rng_set(b->rng, seed);
    for (int i = 0; i < n * b->hd; i++) b->head[i] = (float)gsl_ran_gaussian(b->rng, 1.5);
    for (int i = 0; b->L.kind != NBS_LATENT_GAUSSIAN && i < n; i += 5) b->head[i * b->hd + d] = 8.0f + i;
    for (int i = 0; i < n * d; i++) b->dz[i] = (float)gsl_ran_gaussian(b->rng, 1.0);
    for (int t = 0; t < b->K; t++) b->klw[t] = 0.3f + 0.01f * t;
    nbs_error err = {0};
    b->cache = nbs_latent_cache_new(&b->L, n, &err);
    if (!b->cache) fail_msg("%s", err.msg);
}

static void batch_free(batch *b) {
    nbs_latent_cache_free(b->cache);
    gsl_rng_free(b->rng);
    free(b->head), free(b->dz), free(b->klw), free(b->z), free(b->kl), free(b->dh);
}

static void forward(batch *b, int sample) {
    nbs_error err = {0};
    if (nbs_latent_forward(&b->L, b->head, b->n, sample ? b->rng : NULL, b->z, b->kl, b->cache, &err))
        fail_msg("%s", err.msg);
}

static void backward(batch *b) { nbs_latent_backward(&b->L, b->head, b->n, b->dz, b->klw, b->cache, b->dh); }

static void all_finite(const batch *b) {
    for (int i = 0; i < b->n * b->L.dim; i++) assert_true(isfinite(b->z[i]));
    for (int i = 0; i < b->n * b->K; i++) assert_true(isfinite(b->kl[i]));
    for (int i = 0; i < b->n * b->hd; i++) assert_true(isfinite(b->dh[i]));
}

/* ---- tests ---- */

static void test_tables(void **state) {
    (void)state;
    /* head_dim, kl_terms, spread_dim at d = 5, on_sphere, has_acceptance */
    const int want[N_KINDS][5] = {{10, 5, 5, 0, 0}, {6, 1, 1, 1, 1}, {6, 1, 1, 1, 0}};
    for (int k = 0; k < N_KINDS; k++) {
        const nbs_latent L = {KINDS[k], 5, 1};
        const nbs_latent_ops *o = nbs_latent_ops_of(KINDS[k]);
        assert_non_null(o);
        assert_true(o->head_dim && o->kl_terms && o->spread_dim && o->cache_init && o->cache_release && o->forward &&
                    o->backward && o->posterior && o->expectation);
        assert_int_equal(o->sphere != NULL, o->on_sphere);
        const int got[5] = {nbs_latent_head_dim(&L), nbs_latent_kl_terms(&L), nbs_latent_spread_dim(&L),
                            nbs_latent_on_sphere(&L), nbs_latent_has_acceptance(&L)};
        assert_memory_equal(got, want[k], sizeof got);
    }
}

/* Forward (sampled and location) and backward allocate nothing, on the first step already,
 * with two threads, up to the largest dimension. */
static void test_no_allocation_in_a_step(void **state) {
    (void)state;
    omp_set_num_threads(2);
    const int dims[] = {2, 3, 10, 64, NBS_SPHERE_MAX_DIM};
    for (int k = 0; k < N_KINDS; k++)
        for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
            batch b;
            allocs = 0;
            counting = 1;
            batch_init(&b, KINDS[k], dims[i], 24, 11 + i);
            assert_true(allocs > 0); /* the wrappers are in place: making the cache counts */
            allocs = 0;
            forward(&b, 1);
            backward(&b);
            forward(&b, 1);
            backward(&b);
            forward(&b, 0);
            backward(&b);
            counting = 0;
            if (allocs) fail_msg("latent kind %d, d = %d: %ld allocations in a step", KINDS[k], dims[i], allocs);
            all_finite(&b);
            batch_free(&b);
        }
}

/* The layer's sample, KL and head gradient are those of the per-cell functions (which make
 * their own workspace) for the same generator. */
static void test_sphere_layer_is_the_per_cell_maths(void **state) {
    (void)state;
    omp_set_num_threads(2);
    for (int vmf = 0; vmf < 2; vmf++)
        for (int d = 3; d <= 10; d += 7) {
            batch b;
            batch_init(&b, vmf ? NBS_LATENT_VMF : NBS_LATENT_POWER_SPHERICAL, d, 16, 5 + d);
            gsl_rng *r = gsl_rng_clone(b.rng);
            forward(&b, 1);
            backward(&b);
            for (int i = 0; i < b.n; i++) {
                const float *h = b.head + i * b.hd;
                double u[10], z[10], v[9], du[10], dkappa, kl, dkl;
                for (int j = 0; j < d; j++) u[j] = h[j];
                const double raw = h[d];
                const double kappa = (raw > 0 ? raw + log1p(exp(-raw)) : log1p(exp(raw))) + b.L.kappa_floor;
                nbs_sphere_draw dr;
                nbs_error err = {0};
                if (vmf) {
                    nbs_vmf_stats s;
                    assert_int_equal(nbs_vmf_stats_eval(d, kappa, &s, &err), 0);
                    kl = s.kl, dkl = s.dkl_dkappa;
                    assert_int_equal(nbs_vmf_sample(d, u, kappa, r, z, v, &dr, &err), 0);
                } else {
                    nbs_ps_stats s;
                    assert_int_equal(nbs_ps_stats_eval(d, kappa, &s, &err), 0);
                    kl = s.kl, dkl = s.dkl_dkappa;
                    assert_int_equal(nbs_ps_sample(d, u, kappa, r, z, v, &dr, &err), 0);
                }
                double dzi[10];
                for (int j = 0; j < d; j++) dzi[j] = b.dz[i * d + j];
                assert_int_equal((vmf ? nbs_vmf_backward : nbs_ps_backward)(&dr, u, v, dzi, du, &dkappa, &err), 0);
                dkappa += b.klw[0] * dkl;
                assert_true(b.kl[i] == kl);
                assert_true(nbs_latent_cache_kappa(b.cache)[i] == (float)kappa);
                for (int j = 0; j < d; j++) {
                    assert_true(b.z[i * d + j] == (float)z[j]);
                    assert_true(b.dh[i * b.hd + j] == (float)du[j]);
                }
                assert_true(b.dh[i * b.hd + d] == (float)(dkappa * (1 / (1 + exp(-raw)))));
            }
            assert_int_equal(gsl_rng_get(r), gsl_rng_get(b.rng)); /* the same number of draws */
            gsl_rng_free(r);
            batch_free(&b);
        }
}

typedef struct {
    float *z, *dh;
    double acceptance;
} result;

static result keep(const batch *b) {
    result r = {malloc(sizeof(float) * b->n * b->L.dim), malloc(sizeof(float) * b->n * b->hd),
                nbs_latent_cache_acceptance(b->cache)};
    assert_true(r.z && r.dh);
    memcpy(r.z, b->z, sizeof(float) * b->n * b->L.dim);
    memcpy(r.dh, b->dh, sizeof(float) * b->n * b->hd);
    return r;
}

static void same(const result *r, const batch *b) {
    assert_memory_equal(r->z, b->z, sizeof(float) * b->n * b->L.dim);
    assert_memory_equal(r->dh, b->dh, sizeof(float) * b->n * b->hd);
    const double a = nbs_latent_cache_acceptance(b->cache);
    assert_true(a == r->acceptance || (isnan(a) && isnan(r->acceptance)));
    free(r->z), free(r->dh);
}

/* Two stages, a vMF one and a Power Spherical one, run interleaved as a model with two
 * stochastic layers would: each gives what it gives alone. */
static void test_stages_share_nothing(void **state) {
    (void)state;
    omp_set_num_threads(2);
    batch a, p;
    batch_init(&a, NBS_LATENT_VMF, 4, 30, 1);
    forward(&a, 1);
    backward(&a);
    result alone = keep(&a);
    batch_free(&a);
    batch_init(&p, NBS_LATENT_POWER_SPHERICAL, 7, 20, 2);
    forward(&p, 1);
    backward(&p);
    result p_alone = keep(&p);
    batch_free(&p);

    batch_init(&a, NBS_LATENT_VMF, 4, 30, 1);
    batch_init(&p, NBS_LATENT_POWER_SPHERICAL, 7, 20, 2);
    forward(&a, 1);
    forward(&p, 1);
    backward(&p);
    backward(&a);
    same(&alone, &a);
    same(&p_alone, &p);
    batch_free(&a);
    batch_free(&p);
}

/* A cache made for one thread, used when the pool has two: the backward stays within the
 * scratch it has and gives what a two-thread cache gives. */
static void test_pool_grown_after_the_cache(void **state) {
    (void)state;
    for (int k = 1; k < N_KINDS; k++) {
        batch b;
        omp_set_num_threads(2);
        batch_init(&b, KINDS[k], 6, 40, 3);
        forward(&b, 1);
        backward(&b);
        result two = keep(&b);
        batch_free(&b);
        omp_set_num_threads(1);
        batch_init(&b, KINDS[k], 6, 40, 3);
        omp_set_num_threads(2);
        forward(&b, 1);
        backward(&b);
        same(&two, &b);
        batch_free(&b);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tables),
        cmocka_unit_test(test_no_allocation_in_a_step),
        cmocka_unit_test(test_sphere_layer_is_the_per_cell_maths),
        cmocka_unit_test(test_stages_share_nothing),
        cmocka_unit_test(test_pool_grown_after_the_cache),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
