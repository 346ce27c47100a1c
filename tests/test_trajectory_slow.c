/* The wrap-around check on trained models where the truth is known: on `nbsphere simulate
 * --trajectory long-branches` with 6 branches (4000 cells, 1000 genes, depth 2000) a vMF model on
 * S^2 (latent_dim 3, 100 epochs) puts two different branches side by side, and the check names
 * them; a Gaussian model with d = 10 on the same data has no shortcut edge and no verdict.
 * bench/trajectory.sh measures the same for seeds 0-2 and d = 2, 3, 10. About 2 minutes. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *run_model(const char *dir, const char *name, const char *latent, int d, int seed) {
    char args[8192], path[4096];
    snprintf(args, sizeof args, "-q run %s/long6.yaml --set model.latent=%s --set model.latent_dim=%d --set train.seed=%d "
             "--out %s/%s", dir, latent, d, seed, dir, name);
    char *errout = NULL;
    const int rc = tu_run_cli(args, NULL, &errout);
    if (rc) fail_msg("nbsphere %s: exit %d\n%s", args, rc, errout ? errout : "");
    free(errout);
    snprintf(path, sizeof path, "%s/%s/collapse_report.json", dir, name);
    char *json = tu_read_file(path, NULL);
    assert_non_null(json);
    char *w = strstr(json, "\"wraparound\"");
    assert_non_null(w);
    char *v = strstr(w, "\"verdict\": ");
    assert_non_null(v);
    char *end = strstr(v, "\",");
    if (end) *end = '\0';
    fprintf(stderr, "%s d=%d seed %d: %.3f%% shortcut edges; %s\n", latent, d, seed, 100 * tu_json_number(w, "fraction"),
            v + 12);
    if (end) *end = '"';
    return json;
}

static void test_sphere_wraps_gaussian_does_not(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char args[8192], path[4096], yaml[4096];
    snprintf(args, sizeof args, "-q simulate --out %s/sim --cells 4000 --genes 1000 --depth 2000 --branches 6 "
             "--trajectory long-branches --format h5ad", dir);
    assert_int_equal(tu_run_cli(args, NULL, NULL), 0);
    snprintf(path, sizeof path, "%s/long6.yaml", dir);
    snprintf(yaml, sizeof yaml, "input: {path: %s/sim/sim.h5ad, format: h5ad, label_column: branch}\n"
             "train: {epochs: 100}\ntrajectory: {enabled: true}\n", dir);
    assert_int_equal(tu_write_file(path, yaml), 0);
    for (int seed = 0; seed < 2; seed++) { /* bench/trajectory.sh: pairs of 143 and 51 shortcut edges */
        char name[32];
        snprintf(name, sizeof name, "vmf3_s%d", seed);
        char *json = run_model(dir, name, "vmf", 3, seed);
        assert_non_null(strstr(json, "\"wraps\": true"));
        assert_non_null(strstr(json, " meet in the embedding but not in the data"));
        const char *named = strstr(json, "branches branch");
        assert_non_null(named); /* two different branches, not parts of one */
        assert_true(tu_json_number(strstr(json, "\"wraparound\""), "fraction") > 0.0005);
        free(json);
    }
    char *json = run_model(dir, "gauss10", "gaussian", 10, 0);
    assert_non_null(strstr(json, "\"wraps\": false"));
    assert_non_null(strstr(json, "no wrap-around"));
    assert_true(tu_json_number(strstr(json, "\"wraparound\""), "fraction") < 0.0002);
    free(json);
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sphere_wraps_gaussian_does_not),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
