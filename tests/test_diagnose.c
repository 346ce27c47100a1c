#include "testutil.h"

#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>
#include <math.h>
#include <stdlib.h>

#include "nbsphere/diagnose.h"

/* x ~ N(0, s^2), q(z|x) = N(x, 1): I(x;z) = 0.5 log(1 + s^2) per dimension. */
static void test_mi_known_gaussian(void **state) {
    (void)state;
    const int64_t n = 8192;
    const int d = 2;
    const double s = 2.0;
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, 7);
    float *mean = malloc(sizeof(float) * n * d), *var = malloc(sizeof(float) * n * d);
    for (int64_t i = 0; i < n * d; i++) {
        mean[i] = (float)gsl_ran_gaussian(rng, s);
        var[i] = 1.0f;
    }
    double mi = -1;
    nbs_error err = {0};
    assert_int_equal(nbs_diagnose_mi_gaussian(mean, var, n, d, 512, rng, &mi, &err), NBS_OK);
    double truth = d * 0.5 * log(1 + s * s);
    assert_true(fabs(mi - truth) < 0.06 * truth);
    /* a posterior that ignores x carries no information */
    for (int64_t i = 0; i < n * d; i++) mean[i] = 0;
    assert_int_equal(nbs_diagnose_mi_gaussian(mean, var, n, d, 512, rng, &mi, &err), NBS_OK);
    assert_true(mi >= 0 && mi < 0.01);
    var[5] = 0;
    assert_int_equal(nbs_diagnose_mi_gaussian(mean, var, n, d, 512, rng, &mi, &err),
                     NBS_ERR_NUMERIC);
    free(mean);
    free(var);
    gsl_rng_free(rng);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_mi_known_gaussian)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
