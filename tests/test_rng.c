/* Random streams: the documented derivation (values computed independently from SplitMix64's
 * definition), and streams of different purposes, epochs and processes that do not coincide. */
#include "testutil.h"

#include <stdlib.h>

#include "nbsphere/rng.h"

static void test_known_values(void **state) {
    (void)state;
    assert_int_equal(nbs_stream_seed(0, NBS_STREAM_INIT, 0, 0), 1448635441ULL);
    assert_int_equal(nbs_stream_seed(42, NBS_STREAM_VALIDATION, 7, 0), 2721082025ULL);
    assert_int_equal(nbs_stream_seed(42, NBS_STREAM_VALIDATION, 7, 3), 2639662643ULL);
}

static int cmp_u64(const void *a, const void *b) {
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* 7 purposes x 300 indices x 2 processes x 3 seeds: no two stream seeds alike, and the old
 * mistake (initialisation and training drawing from one seed) cannot return. */
static void test_streams_are_distinct(void **state) {
    (void)state;
    enum { N = 7 * 300 * 2 * 3 };
    uint64_t *s = malloc(sizeof *s * N);
    int k = 0;
    for (uint64_t seed = 0; seed < 3; seed++)
        for (int p = NBS_STREAM_INIT; p <= NBS_STREAM_EVALUATE; p++)
            for (uint64_t i = 0; i < 300; i++)
                for (uint64_t r = 0; r < 2; r++) s[k++] = nbs_stream_seed(seed, (nbs_stream)p, i, r);
    assert_int_equal(k, N);
    qsort(s, N, sizeof *s, cmp_u64);
    for (int i = 1; i < N; i++) assert_true(s[i] != s[i - 1]);
    assert_true(s[N - 1] <= 0xffffffffULL);
    free(s);
    nbs_error err = {0};
    gsl_rng *a = nbs_stream_rng(5, NBS_STREAM_INIT, 0, &err), *b = nbs_stream_rng(5, NBS_STREAM_TRAIN, 0, &err);
    assert_true(gsl_rng_get(a) != gsl_rng_get(b));
    gsl_rng_free(a), gsl_rng_free(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_values),
        cmocka_unit_test(test_streams_are_distinct),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
