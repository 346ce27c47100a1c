/* End to end through the command line: a pipeline run writes every output, a saved model
 * embeds the same cells to the same coordinates, a resumed run matches an uninterrupted one,
 * and a failing run leaves no output behind. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int count_lines(const char *text) {
    int n = 0;
    for (const char *p = text; *p; p++) n += *p == '\n';
    return n;
}

static char *run_ok(const char *args) {
    char *out = NULL, *errout = NULL;
    int rc = tu_run_cli(args, &out, &errout);
    if (rc != 0) fail_msg("nbsphere %s: exit %d\n%s", args, rc, errout ? errout : "");
    free(out);
    return errout;
}

static void test_run_writes_outputs_and_embed_matches(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char args[4096];
    snprintf(args, sizeof args, "run pipelines/default.yaml --out %s/run --set train.epochs=3", dir);
    free(run_ok(args));
    const char *files[] = {"config.yaml", "manifest.json", "model.h5", "training_log.tsv",
                           "embedding.tsv", "embedding.h5ad"};
    char path[4096];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/run/%s", dir, files[i]);
        if (!tu_exists(path)) fail_msg("missing output %s", path);
    }
    snprintf(path, sizeof path, "%s/run/checkpoint.h5", dir);
    assert_false(tu_exists(path)); /* superseded by model.h5 */
    snprintf(path, sizeof path, "%s/run/embedding.tsv", dir);
    char *emb = tu_read_file(path, NULL);
    assert_non_null(emb);
    assert_int_equal(count_lines(emb), 2001);
    assert_true(!strncmp(emb, "barcode\tdim1\t", 13));
    snprintf(path, sizeof path, "%s/run/training_log.tsv", dir);
    char *log = tu_read_file(path, NULL);
    assert_int_equal(count_lines(log), 4);
    snprintf(path, sizeof path, "%s/run/manifest.json", dir);
    char *man = tu_read_file(path, NULL);
    assert_non_null(strstr(man, "\"ok\""));
    if (access("/usr/bin/python3", X_OK) == 0) { /* JSON: words such as input.backed's auto quoted */
        char cmd[8192];
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 -c \"import json,sys; json.load(open(sys.argv[1]))\" '%s'", path);
        assert_int_equal(system(cmd), 0);
    }

    /* The saved model gives the same coordinates for the same cells, to the bit: run's final
     * embedding and embed are one code path (nbs_model_embed on the same sorted CSR rows in the
     * model's gene order, products in fixed row blocks), so this holds on any processor and, as
     * checked here, with another thread count (run trained and embedded with 2). */
    snprintf(args, sizeof args, "embed %s/run/model.h5 example_data/sim_mtx --threads 1 --out %s/emb", dir, dir);
    free(run_ok(args));
    snprintf(path, sizeof path, "%s/emb/embedding.tsv", dir);
    char *emb2 = tu_read_file(path, NULL);
    assert_non_null(emb2);
    assert_string_equal(emb, emb2);

    /* diagnose: the report of the saved model on the same cells, with labels */
    snprintf(args, sizeof args, "diagnose %s/run/model.h5 example_data/sim_mtx --labels example_data/cell_labels.tsv "
             "--label-column branch --out %s/diag", dir, dir);
    free(run_ok(args));
    const char *reports[] = {"collapse_report.json", "collapse_dimensions.tsv", "report.html"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/diag/%s", dir, reports[i]);
        if (!tu_exists(path)) fail_msg("diagnose did not write %s", path);
    }
    snprintf(path, sizeof path, "%s/diag/collapse_report.json", dir);
    char *js = tu_read_file(path, NULL);
    assert_non_null(strstr(js, "\"label_column\": \"branch\""));
    assert_non_null(strstr(js, "\"tau_kl\": 0.1"));
    free(js);
    snprintf(path, sizeof path, "%s/run/report.html", dir);
    assert_true(tu_exists(path));
    snprintf(path, sizeof path, "%s/run/genes.tsv", dir);
    char *genes = tu_read_file(path, NULL);
    assert_int_equal(count_lines(genes), 500); /* pipelines/default.yaml: 500 HVGs */
    free(genes);

    /* a model and data without a shared gene: a clear refusal */
    char *errout = NULL;
    if (tu_exists(tu_data("pbmc3k/matrix.mtx.gz"))) {
        snprintf(args, sizeof args, "embed %s/run/model.h5 %s --out %s/emb3", dir, tu_data("pbmc3k"), dir);
        assert_int_equal(tu_run_cli(args, NULL, &errout), 3);
        assert_non_null(strstr(errout, "none of the model's 500 genes"));
        free(errout);
    }
    free(emb), free(emb2), free(log), free(man);
    tu_rmtree(dir);
    free(dir);
}

/* Four epochs straight, or two then `train --resume` to four: the same embedding. */
static void test_resume_from_cli(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char args[4096], path[4096];
    snprintf(args, sizeof args,
             "run pipelines/default.yaml --out %s/full --set train.epochs=4 --set model.dropout=0.2", dir);
    free(run_ok(args));
    snprintf(args, sizeof args,
             "run pipelines/default.yaml --out %s/part --set train.epochs=2 --set model.dropout=0.2", dir);
    free(run_ok(args));
    snprintf(args, sizeof args, "train --resume %s/part/model.h5 --epochs 4", dir);
    char *errout = run_ok(args);
    assert_non_null(strstr(errout, "after epoch 2"));
    free(errout);
    snprintf(path, sizeof path, "%s/full/embedding.tsv", dir);
    char *a = tu_read_file(path, NULL);
    snprintf(path, sizeof path, "%s/part/embedding.tsv", dir);
    char *b = tu_read_file(path, NULL);
    assert_non_null(a);
    assert_non_null(b);
    assert_string_equal(a, b);
    snprintf(path, sizeof path, "%s/part/training_log.tsv", dir);
    char *log = tu_read_file(path, NULL);
    assert_int_equal(count_lines(log), 5); /* the log goes on from the checkpoint's */
    free(a), free(b), free(log);
    tu_rmtree(dir);
    free(dir);
}

/* Bad input: a clear error, the documented exit code, and no output files but the manifest. */
static void test_failed_run_leaves_no_outputs(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char args[4096], path[4096];
    snprintf(path, sizeof path, "%s/bad.mtx", dir);
    assert_int_equal(tu_write_file(path, "%%MatrixMarket matrix coordinate integer general\n3 2 1\n1 1 -4\n"), 0);
    snprintf(args, sizeof args, "train %s --out %s/out", path, dir);
    char *errout = NULL;
    assert_int_equal(tu_run_cli(args, NULL, &errout), 3);
    assert_non_null(strstr(errout, "bad.mtx"));
    free(errout);
    snprintf(path, sizeof path, "%s/out/embedding.tsv", dir);
    assert_false(tu_exists(path));
    snprintf(path, sizeof path, "%s/out/model.h5", dir);
    assert_false(tu_exists(path));
    snprintf(path, sizeof path, "%s/out/manifest.json", dir);
    char *man = tu_read_file(path, NULL);
    assert_non_null(man);
    assert_non_null(strstr(man, "failed"));
    free(man);
    /* a model file that is not one */
    snprintf(args, sizeof args, "embed %s/bad.mtx example_data/sim_mtx --out %s/e", dir, dir);
    assert_int_equal(tu_run_cli(args, NULL, &errout), 3);
    assert_non_null(strstr(errout, "bad.mtx"));
    free(errout);
    tu_rmtree(dir);
    free(dir);
}

/* A model file outlives the data it was trained on (or travels to another machine): its stored
 * input path is history, so embed, diagnose and trajectory load it whether that path exists or
 * not. */
static void test_model_outlives_its_data(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char args[8192];
    for (int i = 0; i < 2; i++) {
        snprintf(args, sizeof args, "-q simulate --out %s/sim%d --cells 300 --genes 100 --seed 4", dir, i);
        free(run_ok(args));
    }
    snprintf(args, sizeof args, "-q train %s/sim0/sim_mtx --out %s/m --epochs 2", dir, dir);
    free(run_ok(args));
    snprintf(args, sizeof args, "rm -r '%s/sim0'", dir);
    assert_int_equal(system(args), 0);
    const char *cmds[] = {"embed", "diagnose", "trajectory"};
    for (int c = 0; c < 3; c++) {
        snprintf(args, sizeof args, "-q %s %s/m/model.h5 %s/sim1/sim_mtx --out %s/%s", cmds[c], dir, dir, dir, cmds[c]);
        free(run_ok(args));
    }
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_outlives_its_data),
        cmocka_unit_test(test_run_writes_outputs_and_embed_matches),
        cmocka_unit_test(test_resume_from_cli),
        cmocka_unit_test(test_failed_run_leaves_no_outputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
