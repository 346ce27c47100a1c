/* Covariates: found in a labels table (sorted categories, single-category and constant columns
 * dropped, standardisation), new data encoded with a model's categories, model files with
 * covariates saved and loaded (embed gives the run's embedding; obs columns in the h5ad) and
 * resumed, model files of format 2 still loading and embedding as before, and Kang with
 * batch_key: group_id. */
#include "testutil.h"

#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/checkpoint.h"
#include "nbsphere/covariates.h"
#include "nbsphere/io.h"

#define DATA "tests/model_v2/sim_mtx" /* 60 cells, SIM0000001-1 .. SIM0000060-1 */

static nbs_matrix *read_data(void) {
    nbs_matrix *X = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_10x_mtx_dir(DATA, &X, &err), NBS_OK);
    assert_int_equal(X->n_cells, 60);
    return X;
}

/* A labels table for the 60 cells: batch in {b, a, c} (cell i: "bac"[i % 3]), one (always x),
 * donor d1/d2 (i % 2), mito = i / 10; `unknown` puts "zzz" into cell 7's batch. */
static void write_table(const char *path, int unknown) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "barcode\tbatch\tone\tdonor\tmito\n");
    for (int i = 0; i < 60; i++)
        fprintf(f, "SIM%07d-1\t%s\tx\td%d\t%g\n", i + 1, unknown && i == 7 ? "zzz" : (const char *[]){"b", "a", "c"}[i % 3],
                1 + i % 2, i / 10.0);
    fclose(f);
}

static void test_fit_from_table(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    const char *table = tu_path(dir, "labels.tsv");
    write_table(table, 0);
    nbs_matrix *X = read_data();
    nbs_config c;
    nbs_config_defaults(&c);
    snprintf(c.input.labels_path, sizeof c.input.labels_path, "%s", table);
    strcpy(c.input.batch_key, "batch");
    c.input.categorical_covariates.n = 2;
    strcpy(c.input.categorical_covariates.names[0], "one");
    strcpy(c.input.categorical_covariates.names[1], "donor");
    c.input.continuous_covariates.n = 1;
    strcpy(c.input.continuous_covariates.names[0], "mito");
    nbs_covariates cov;
    nbs_covariate_values v;
    nbs_error err = {0};
    int st = nbs_covariates_fit(&c.input, NBS_FMT_10X_MTX, X, &cov, &v, &err);
    if (st) print_message("%s\n", err.msg);
    assert_int_equal(st, NBS_OK);
    /* "one" has a single category: dropped */
    assert_int_equal(cov.has_batch, 1);
    assert_int_equal(cov.n_categorical, 2);
    assert_string_equal(cov.categorical[0].name, "batch");
    assert_string_equal(cov.categorical[1].name, "donor");
    assert_int_equal(cov.categorical[0].n_categories, 3);
    assert_string_equal(cov.categorical[0].categories[0], "a");
    assert_string_equal(cov.categorical[0].categories[1], "b");
    assert_string_equal(cov.categorical[0].categories[2], "c");
    assert_int_equal(cov.n_continuous, 1);
    /* mito = i / 10, i = 0..59: mean 2.95, population sd sqrt((60^2 - 1) / 12) / 10 */
    assert_true(fabs(cov.continuous[0].mean - 2.95) < 1e-12);
    assert_true(fabs(cov.continuous[0].sd - sqrt((3600.0 - 1) / 12) / 10) < 1e-12);
    for (int i = 0; i < 60; i++) {
        const int b = (const int[]){1, 0, 2}[i % 3];
        assert_int_equal(v.codes[i * 2], b);
        assert_int_equal(v.codes[i * 2 + 1], i % 2);
        assert_true(fabs(v.raw[i] - i / 10.0) < 1e-12);
        assert_true(fabs(v.standardised[i] - (i / 10.0 - 2.95) / cov.continuous[0].sd) < 1e-6);
    }
    const nbs_covariate_layout l = nbs_covariates_layout(&cov);
    assert_int_equal(l.n_categorical, 2);
    assert_int_equal(l.n_categories[0], 3);
    assert_int_equal(l.n_categories[1], 2);
    assert_int_equal(l.n_continuous, 1);
    assert_int_equal(l.has_batch, 1);
    nbs_covariate_values_free(&v);
    nbs_covariates_free(&cov);

    /* a batch of one category is dropped too: the model then has no batch */
    strcpy(c.input.batch_key, "one");
    c.input.categorical_covariates.n = 0;
    assert_int_equal(nbs_covariates_fit(&c.input, NBS_FMT_10X_MTX, X, &cov, &v, &err), NBS_OK);
    assert_int_equal(cov.has_batch, 0);
    assert_int_equal(cov.n_categorical, 0);
    nbs_covariate_values_free(&v);
    nbs_covariates_free(&cov);
    nbs_matrix_free(X);
    tu_rmtree(dir);
    free(dir);
}

/* New data: the model's categories and standardisation; a category it never saw is refused. */
static void test_encode_new_data(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    const char *table = tu_path(dir, "labels.tsv"), *other = tu_path(dir, "other.tsv");
    write_table(table, 0);
    write_table(other, 1);
    nbs_matrix *X = read_data();
    nbs_config c;
    nbs_config_defaults(&c);
    snprintf(c.input.labels_path, sizeof c.input.labels_path, "%s", table);
    strcpy(c.input.batch_key, "batch");
    c.input.continuous_covariates.n = 1;
    strcpy(c.input.continuous_covariates.names[0], "mito");
    nbs_covariates cov;
    nbs_covariate_values fit, enc;
    nbs_error err = {0};
    assert_int_equal(nbs_covariates_fit(&c.input, NBS_FMT_10X_MTX, X, &cov, &fit, &err), NBS_OK);
    nbs_input_config in;
    nbs_config_defaults(&c); /* the model knows the columns; the new data's input names none */
    in = c.input;
    snprintf(in.labels_path, sizeof in.labels_path, "%s", table);
    assert_int_equal(nbs_covariates_encode(&cov, &in, NBS_FMT_10X_MTX, X, &enc, &err), NBS_OK);
    assert_memory_equal(fit.codes, enc.codes, sizeof(int32_t) * 60);
    assert_memory_equal(fit.standardised, enc.standardised, sizeof(float) * 60);
    nbs_covariate_values_free(&enc);
    snprintf(in.labels_path, sizeof in.labels_path, "%s", other);
    assert_int_equal(nbs_covariates_encode(&cov, &in, NBS_FMT_10X_MTX, X, &enc, &err), NBS_ERR_INPUT);
    print_message("%s\n", err.msg);
    assert_non_null(strstr(err.msg, "other.tsv"));
    assert_non_null(strstr(err.msg, "'zzz'"));
    assert_non_null(strstr(err.msg, "SIM0000008-1"));
    assert_non_null(strstr(err.msg, "it knows 3: a, b, c"));
    assert_null(enc.codes);
    nbs_covariate_values_free(&fit);
    nbs_covariates_free(&cov);
    nbs_matrix_free(X);
    tu_rmtree(dir);
    free(dir);
}

/* An obs column of the h5ad: its encoding-type attribute ("" for none). */
static void obs_encoding(hid_t f, const char *column, char *buf, size_t n) {
    char path[256];
    snprintf(path, sizeof path, "obs/%s", column);
    buf[0] = '\0';
    hid_t o = H5Oopen(f, path, H5P_DEFAULT);
    assert_true(o >= 0);
    hid_t a = H5Aopen(o, "encoding-type", H5P_DEFAULT);
    if (a >= 0) {
        hid_t t = H5Aget_type(a);
        char *s = NULL;
        if (H5Tis_variable_str(t) > 0) {
            H5Aread(a, t, &s);
            snprintf(buf, n, "%s", s ? s : "");
            H5free_memory(s);
        }
        H5Tclose(t);
        H5Aclose(a);
    }
    H5Oclose(o);
}

/* A model with covariates through the CLI: model.h5 keeps them; embed with the same columns
 * gives the run's embedding byte for byte; the h5ad has the batch as a categorical and mito as
 * numbers in obs, and uns/nbsphere/batch_key. */
static void test_model_file_round_trip(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    const char *table = tu_path(dir, "labels.tsv");
    write_table(table, 0);
    char args[8192], run[4096], emb[4096];
    snprintf(run, sizeof run, "%s", tu_path(dir, "run"));
    snprintf(emb, sizeof emb, "%s", tu_path(dir, "embed"));
    snprintf(args, sizeof args,
             "train %s --out '%s' --epochs 3 --set input.labels_path='%s' --set input.batch_key=batch "
             "--set input.categorical_covariates=[donor] --set input.continuous_covariates=[mito] "
             "--set model.encode_covariates=true --set model.dispersion=gene_batch --set model.encoder_layers=[8] "
             "--set model.decoder_layers=[8,6] --set model.latent_dim=2 --set train.batch_size=16",
             DATA, run, table);
    char *errout = NULL;
    int rc = tu_run_cli(args, NULL, &errout);
    if (rc) print_message("%s\n", errout ? errout : "");
    assert_int_equal(rc, 0);
    assert_non_null(strstr(errout, "covariates: batch 'batch' (3 categories), 'donor' (2 categories), 'mito'"));
    free(errout);

    nbs_checkpoint ck;
    nbs_error err = {0};
    assert_int_equal(nbs_checkpoint_load(tu_path(run, "model.h5"), &ck, &err), NBS_OK);
    assert_int_equal(ck.covariates.has_batch, 1);
    assert_int_equal(ck.covariates.n_categorical, 2);
    assert_string_equal(ck.covariates.categorical[1].name, "donor");
    assert_string_equal(ck.covariates.categorical[1].categories[1], "d2");
    assert_int_equal(ck.covariates.n_continuous, 1);
    assert_string_equal(ck.covariates.continuous[0].name, "mito");
    assert_true(fabs(ck.covariates.continuous[0].mean - 2.95) < 1e-12);
    assert_true(ck.config.model.encode_covariates);
    int rows = 0, cols = 0;
    assert_non_null(nbs_model_param(ck.model, "dispersion", &rows, &cols));
    assert_int_equal(rows, 3);
    assert_non_null(nbs_model_param(ck.model, "decoder.1.covariates.W", &rows, &cols));
    assert_int_equal(rows, 5);
    assert_non_null(nbs_model_param(ck.model, "encoder.0.continuous.W", &rows, &cols));
    nbs_checkpoint_free(&ck);

    snprintf(args, sizeof args, "embed '%s' %s --labels '%s' --out '%s'", tu_path(run, "model.h5"), DATA, table, emb);
    rc = tu_run_cli(args, NULL, &errout);
    if (rc) print_message("%s\n", errout ? errout : "");
    assert_int_equal(rc, 0);
    free(errout);
    char a[4096], b[4096];
    snprintf(a, sizeof a, "%s", tu_path(run, "embedding.tsv"));
    snprintf(b, sizeof b, "%s", tu_path(emb, "embedding.tsv"));
    assert_true(tu_same_bytes(a, b));

    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(tu_path(run, "embedding.h5ad"), H5F_ACC_RDONLY, H5P_DEFAULT);
    assert_true(f >= 0);
    char enc[64];
    obs_encoding(f, "batch", enc, sizeof enc);
    assert_string_equal(enc, "categorical");
    obs_encoding(f, "donor", enc, sizeof enc);
    assert_string_equal(enc, "categorical");
    obs_encoding(f, "mito", enc, sizeof enc);
    assert_string_equal(enc, "array");
    assert_true(H5Lexists(f, "uns/nbsphere/batch_key", H5P_DEFAULT) > 0);
    H5Fclose(f);
    if (!system("/usr/bin/python3 -c 'import anndata' >/dev/null 2>&1")) {
        char py[8192];
        snprintf(py, sizeof py,
                 "/usr/bin/python3 -c \"import anndata; a = anndata.read_h5ad('%s'); "
                 "assert str(a.obs.batch.dtype) == 'category' and list(a.obs.batch.cat.categories) == ['a', 'b', 'c']; "
                 "assert a.obs.batch.iloc[0] == 'b' and str(a.obs.mito.dtype) == 'float64' and a.obs.mito.iloc[5] == 0.5; "
                 "assert a.uns['nbsphere']['batch_key'] == 'batch'\"",
                 tu_path(run, "embedding.h5ad"));
        assert_int_equal(system(py), 0);
    } else {
        print_message("SKIP (part): /usr/bin/python3 has no anndata\n");
    }
    tu_rmtree(dir);
    free(dir);
}

/* model.covariate_embedding: embedding. model.h5 keeps the tables (one per categorical covariate,
 * n_categories x dim) and the setting; embed gives the run's embedding. embed --adapt of cells 12
 * of them in a new batch ("zzz") grows the batch's table by a row and leaves every other weight as it was:
 * the reference cells embed bit for bit as before. */
static void test_embedding_model_file_and_adapt(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char table[4200], query[4200], run[4200], emb[4200], ad[4200], again[4200], args[16384];
    snprintf(table, sizeof table, "%s", tu_path(dir, "labels.tsv"));
    snprintf(query, sizeof query, "%s", tu_path(dir, "query.tsv"));
    write_table(table, 0);
    FILE *f = fopen(query, "w"); /* the first 12 cells in a new batch "zzz", the others as in table */
    assert_non_null(f);
    fprintf(f, "barcode\tbatch\tdonor\n");
    for (int i = 0; i < 60; i++)
        fprintf(f, "SIM%07d-1\t%s\td%d\n", i + 1, i < 12 ? "zzz" : (const char *[]){"b", "a", "c"}[i % 3], 1 + i % 2);
    fclose(f);
    snprintf(run, sizeof run, "%s", tu_path(dir, "run"));
    snprintf(emb, sizeof emb, "%s", tu_path(dir, "embed"));
    snprintf(ad, sizeof ad, "%s", tu_path(dir, "adapt"));
    snprintf(again, sizeof again, "%s", tu_path(dir, "again"));
    snprintf(args, sizeof args,
             "train %s --out '%s' --epochs 3 --set input.labels_path='%s' --set input.batch_key=batch "
             "--set input.categorical_covariates=[donor] --set model.encode_covariates=true "
             "--set model.covariate_embedding=embedding --set model.covariate_embedding_dim=3 "
             "--set model.encoder_layers=[8] --set model.decoder_layers=[8,6] --set model.latent_dim=2 "
             "--set train.batch_size=16 -q",
             DATA, run, table);
    char *errout = NULL;
    int rc = tu_run_cli(args, NULL, &errout);
    if (rc) print_message("%s\n", errout ? errout : "");
    assert_int_equal(rc, 0);
    free(errout);
    nbs_checkpoint ck;
    nbs_error err = {0};
    assert_int_equal(nbs_checkpoint_load(tu_path(run, "model.h5"), &ck, &err), NBS_OK);
    assert_int_equal(ck.config.model.covariate_embedding, NBS_COVARIATE_EMBEDDING);
    assert_int_equal(ck.config.model.covariate_embedding_dim, 3);
    int rows = 0, cols = 0;
    assert_non_null(nbs_model_param(ck.model, "covariates.0.embedding", &rows, &cols));
    assert_int_equal(rows, 3), assert_int_equal(cols, 3);
    assert_non_null(nbs_model_param(ck.model, "covariates.1.embedding", &rows, &cols));
    assert_int_equal(rows, 2), assert_int_equal(cols, 3);
    assert_non_null(nbs_model_param(ck.model, "decoder.1.covariates.W", &rows, &cols));
    assert_int_equal(rows, 6); /* 2 covariates x 3 columns */
    float old_table[9];
    memcpy(old_table, nbs_model_param(ck.model, "covariates.0.embedding", NULL, NULL), sizeof old_table);
    nbs_checkpoint_free(&ck);

    snprintf(args, sizeof args, "embed '%s' %s --labels '%s' --out '%s' -q", tu_path(run, "model.h5"), DATA, table, emb);
    assert_int_equal(tu_run_cli(args, NULL, NULL), 0);
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s", tu_path(run, "embedding.tsv"));
    snprintf(b, sizeof b, "%s", tu_path(emb, "embedding.tsv"));
    assert_true(tu_same_bytes(a, b));

    snprintf(args, sizeof args, "embed '%s' %s --labels '%s' --out '%s' --adapt --adapt-epochs 3",
             tu_path(run, "model.h5"), DATA, query, ad);
    rc = tu_run_cli(args, NULL, &errout);
    if (rc) print_message("%s\n", errout ? errout : "");
    assert_int_equal(rc, 0);
    assert_non_null(strstr(errout, "--adapt: new categories"));
    free(errout);
    assert_int_equal(nbs_checkpoint_load(tu_path(ad, "model.h5"), &ck, &err), NBS_OK);
    const float *t = nbs_model_param(ck.model, "covariates.0.embedding", &rows, &cols);
    assert_non_null(t);
    assert_int_equal(rows, 4); /* a, b, c, zzz: the known rows as they were, zzz's trained */
    assert_memory_equal(t, old_table, sizeof old_table);
    nbs_checkpoint_free(&ck);
    snprintf(args, sizeof args, "embed '%s' %s --labels '%s' --out '%s' -q", tu_path(ad, "model.h5"), DATA, table,
             again);
    assert_int_equal(tu_run_cli(args, NULL, NULL), 0);
    snprintf(b, sizeof b, "%s", tu_path(again, "embedding.tsv"));
    assert_true(tu_same_bytes(a, b));
    tu_rmtree(dir);
    free(dir);
}

/* A resumed run encodes its cells with the checkpoint's categories and standardisation and ends
 * where the uninterrupted run does. */
static void test_resume_with_covariates(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    const char *table = tu_path(dir, "labels.tsv");
    write_table(table, 0);
    char sets[4096], args[16384], whole[4096], part[4096], resumed[4096];
    snprintf(sets, sizeof sets, "--set input.labels_path='%s' --set input.batch_key=batch --set "
             "input.continuous_covariates=[mito] --set model.dispersion=gene_batch --set train.schedule=constant", table);
    snprintf(whole, sizeof whole, "%s", tu_path(dir, "whole"));
    snprintf(part, sizeof part, "%s", tu_path(dir, "part"));
    snprintf(resumed, sizeof resumed, "%s", tu_path(dir, "resumed"));
    snprintf(args, sizeof args, "train %s --out '%s' --epochs 4 %s", DATA, whole, sets);
    assert_int_equal(tu_run_cli(args, NULL, NULL), 0);
    snprintf(args, sizeof args, "train %s --out '%s' --epochs 2 %s", DATA, part, sets);
    assert_int_equal(tu_run_cli(args, NULL, NULL), 0);
    snprintf(args, sizeof args, "train --resume '%s/model.h5' --epochs 4 --out '%s'", part, resumed);
    assert_int_equal(tu_run_cli(args, NULL, NULL), 0);
    char a[4096], b[4096];
    snprintf(a, sizeof a, "%s/embedding.tsv", whole);
    snprintf(b, sizeof b, "%s/embedding.tsv", resumed);
    assert_true(tu_same_bytes(a, b));
    tu_rmtree(dir);
    free(dir);
}

/* A model file of format 2 (no covariates) loads and embeds its cells as the build that wrote it
 * did (to float rounding: other processors take other kernels). */
static void test_format_2_model_loads(void **state) {
    (void)state;
    nbs_checkpoint ck;
    nbs_error err = {0};
    int st = nbs_checkpoint_load("tests/model_v2/model.h5", &ck, &err);
    if (st) print_message("%s\n", err.msg);
    assert_int_equal(st, NBS_OK);
    assert_int_equal(ck.covariates.n_categorical, 0);
    assert_int_equal(ck.covariates.n_continuous, 0);
    assert_int_equal(nbs_model_covariates(ck.model)->n_categorical, 0);
    assert_null(nbs_model_param(ck.model, "decoder.0.covariates.W", NULL, NULL));
    nbs_checkpoint_free(&ck);
    char *dir = tu_tmpdir();
    char args[4096];
    snprintf(args, sizeof args, "embed tests/model_v2/model.h5 %s --out '%s'", DATA, dir);
    char *errout = NULL;
    int rc = tu_run_cli(args, NULL, &errout);
    if (rc) print_message("%s\n", errout ? errout : "");
    assert_int_equal(rc, 0);
    free(errout);
    char *got = tu_read_file(tu_path(dir, "embedding.tsv"), NULL), *want = tu_read_file("tests/model_v2/embedding.tsv", NULL);
    assert_non_null(got);
    assert_non_null(want);
    const char *g = strchr(got, '\n'), *w = strchr(want, '\n');
    int values = 0;
    while (g && w && g[1] && w[1]) { /* row by row: the same barcode, values within 1e-5 */
        g++, w++;
        const char *ge = strchr(g, '\t'), *we = strchr(w, '\t');
        assert_true(ge && we && ge - g == we - w && !strncmp(g, w, (size_t)(ge - g)));
        for (int j = 0; j < 2; j++) {
            char *e1, *e2;
            const double x = strtod(ge + 1, &e1), y = strtod(we + 1, &e2);
            assert_true(fabs(x - y) <= 1e-5 * fmax(1, fabs(y)));
            ge = e1, we = e2, values++;
        }
        g = strchr(g, '\n'), w = strchr(w, '\n');
    }
    assert_int_equal(values, 120);
    free(got), free(want);
    tu_rmtree(dir);
    free(dir);
}

/* Kang with the stimulation as the batch: the run trains, and embedding.h5ad's obs holds
 * group_id as a categorical of ctrl and stim. */
static void test_kang_batch_key(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("kang_muscat/matrix.mtx.gz");
    char *dir = tu_tmpdir();
    char *json = tu_run_kang("kang.yaml", dir, "batch", "--set input.batch_key=group_id --set train.epochs=10");
    free(json);
    char path[4096];
    snprintf(path, sizeof path, "%s/batch/embedding.h5ad", dir);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    assert_true(f >= 0);
    char enc[64];
    obs_encoding(f, "group_id", enc, sizeof enc);
    assert_string_equal(enc, "categorical");
    hid_t d = H5Dopen2(f, "obs/group_id/categories", H5P_DEFAULT);
    assert_true(d >= 0);
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    char *cats[2] = {NULL, NULL};
    hid_t sp = H5Dget_space(d);
    assert_int_equal(H5Sget_simple_extent_npoints(sp), 2);
    assert_true(H5Dread(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, cats) >= 0);
    assert_string_equal(cats[0], "ctrl");
    assert_string_equal(cats[1], "stim");
    H5Dvlen_reclaim(t, sp, H5P_DEFAULT, cats);
    H5Sclose(sp);
    H5Tclose(t);
    H5Dclose(d);
    H5Fclose(f);
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fit_from_table),
        cmocka_unit_test(test_encode_new_data),
        cmocka_unit_test(test_model_file_round_trip),
        cmocka_unit_test(test_embedding_model_file_and_adapt),
        cmocka_unit_test(test_resume_with_covariates),
        cmocka_unit_test(test_format_2_model_loads),
        cmocka_unit_test(test_kang_batch_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
