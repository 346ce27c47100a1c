/* The collapse demo on real data (pipelines/collapse-demo.yaml): the collapsing configuration
 * is reported as collapsed, and the same model with free bits, a KL warm-up, cyclical annealing
 * or a small decoder initialisation is not. The
 * verdicts are read from collapse_report.json; the embedding's label accuracy shows the same. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Runs the demo with extra arguments; returns collapse_report.json's text. */
static char *demo(const char *dir, const char *name, const char *extra) {
    char args[8192], path[4096];
    /* the data through tu_data, so NBS_DATA_DIR is honoured wherever the clone is */
    char data[2048], labels[2048];
    snprintf(data, sizeof data, "%s", tu_data("kang_muscat"));
    snprintf(labels, sizeof labels, "%s", tu_data("kang_muscat/cell_labels.tsv"));
    snprintf(args, sizeof args, "run pipelines/collapse-demo.yaml --out %s/%s --set input.path=%s "
             "--set input.labels_path=%s %s", dir, name, data, labels, extra);
    char *errout = NULL;
    int rc = tu_run_cli(args, NULL, &errout);
    if (rc) fail_msg("nbsphere %s: exit %d\n%s", args, rc, errout ? errout : "");
    const char *knn = errout ? strstr(errout, "15-NN accuracy") : NULL;
    print_message("%s: %.*s\n", name, knn ? (int)(strchr(knn, '\n') - knn) : 0, knn ? knn : "");
    free(errout);
    snprintf(path, sizeof path, "%s/%s/collapse_report.json", dir, name);
    char *json = tu_read_file(path, NULL);
    assert_non_null(json);
    return json;
}

static double json_number(const char *json, const char *key) {
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(json, pat);
    assert_non_null(p);
    return atof(p + strlen(pat));
}

/* The model-level verdict: the first "verdict" key (dimensions have their own further down). */
static int verdict_is(const char *json, const char *word) {
    const char *p = strstr(json, "\"verdict\": \"");
    assert_non_null(p);
    p += strlen("\"verdict\": \"");
    return !strncmp(p, word, strlen(word)) && p[strlen(word)] == '"';
}

/* A remedy's run: not collapsed, some dimensions active, and the decoder gains from z. */
static void expect_cured(const char *json, const char *collapsed, double min_accuracy) {
    assert_false(verdict_is(json, "collapsed"));
    assert_true(json_number(json, "active_units") >= 1);
    assert_true(json_number(json, "reconstruction_gain") > json_number(collapsed, "reconstruction_gain") + 30);
    assert_true(json_number(json, "embedding") > min_accuracy);
}

static void test_collapse_and_remedies(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("kang_muscat/matrix.mtx.gz");
    char *dir = tu_tmpdir();
    char *collapsed = demo(dir, "collapsed", "");
    /* every dimension dead (at most one left, should the first steps' numerics differ) */
    assert_true(verdict_is(collapsed, "collapsed") || verdict_is(collapsed, "partially collapsed"));
    assert_true(json_number(collapsed, "active_units") <= 1);
    assert_true(json_number(collapsed, "embedding") < 0.6); /* PCA: 0.915; chance (largest type): 0.26 */
    /* and it dates the collapse of every dead dimension (tracked every 5 epochs) */
    int undated = 0;
    for (const char *p = collapsed; (p = strstr(p, "\"collapsed_since_epoch\": null")); p++) undated++;
    assert_true(undated <= 1);

    char *fb = demo(dir, "free-bits", "--set train.free_bits=0.5");
    assert_true(verdict_is(fb, "healthy"));
    expect_cured(fb, collapsed, 0.7);
    char *warm = demo(dir, "warm-up", "--set train.schedule=linear --set train.warmup_epochs=40");
    expect_cured(warm, collapsed, 0.7);
    char *cyc = demo(dir, "cyclical", "--set train.schedule=cyclical");
    expect_cured(cyc, collapsed, 0.55);
    char *init = demo(dir, "small-init", "--set model.decoder_init_scale=0.01");
    expect_cured(init, collapsed, 0.45);
    free(collapsed), free(fb), free(warm), free(cyc), free(init);
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_collapse_and_remedies)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
