#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/pipeline.h"

/* Path of the repository's pipelines folder (tests run from the repository root). */
static const char *pipelines(const char *name) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "pipelines/%s", name);
    return buf;
}

/* Loads text from a real file in a temp folder, so messages carry the file name. */
static int load_text(const char *text, const char *const *sets, int n_sets, int flags,
                     nbs_pipeline *p, nbs_error *err, char **dir_out) {
    char *dir = tu_tmpdir();
    const char *path = tu_path(dir, "p.yaml");
    char keep[4096];
    snprintf(keep, sizeof keep, "%s", path);
    assert_int_equal(tu_write_file(keep, text), 0);
    tu_write_file(tu_path(dir, "data.tsv"), "cell\tg1\nc1\t1\n");
    int st = nbs_pipeline_load(keep, sets, n_sets, flags, p, err);
    if (dir_out) *dir_out = dir;
    else {
        tu_rmtree(dir);
        free(dir);
    }
    return st;
}

/* The message of a rejected file starts with "<file>:<line>:<column>: " and names the issue. */
static void expect_reject(const char *text, nbs_status code, int line, int col, const char *needle) {
    nbs_pipeline p;
    nbs_error err = {0};
    char *dir;
    int st = load_text(text, NULL, 0, NBS_PIPELINE_REQUIRE_INPUT, &p, &err, &dir);
    char where[4200];
    snprintf(where, sizeof where, "%s:%d:%d: ", tu_path(dir, "p.yaml"), line, col);
    if (st != (int)code || !strstr(err.msg, where) || !strstr(err.msg, needle))
        print_message("status %d, message: %s\n(wanted %s ... %s)\n", st, err.msg, where, needle);
    assert_int_equal(st, code);
    assert_int_equal(err.code, code);
    assert_non_null(strstr(err.msg, where));
    assert_non_null(strstr(err.msg, needle));
    tu_rmtree(dir);
    free(dir);
}

static void test_unknown_key(void **state) {
    (void)state;
    expect_reject("input:\n  path: data.tsv\ntrain:\n  epochs: 5\n  epoch: 7\n", NBS_ERR_USAGE, 5, 3,
                  "unknown key 'epoch' in section 'train'; expected one of: epochs, batch_size");
    expect_reject("input:\n  path: data.tsv\ntrian:\n  epochs: 5\n", NBS_ERR_USAGE, 3, 1,
                  "unknown section 'trian'");
}

static void test_wrong_type(void **state) {
    (void)state;
    expect_reject("input:\n  path: data.tsv\ntrain:\n  epochs: many\n", NBS_ERR_USAGE, 4, 11,
                  "train.epochs: 'many' is not an integer; expected an integer from 1 to 1000000");
    expect_reject("input:\n  path: data.tsv\nmodel:\n  encoder_layers: 128\n", NBS_ERR_USAGE, 4, 19,
                  "model.encoder_layers: not a list; expected a list of 1 to 8");
    expect_reject("input:\n  path: data.tsv\nmodel:\n  encoder_layers: [128, x]\n", NBS_ERR_USAGE, 4,
                  25, "'x' is not an integer");
    expect_reject("input:\n  path: data.tsv\ntrain:\n  epochs: [1, 2]\n", NBS_ERR_USAGE, 4, 11,
                  "train.epochs: got a list");
    expect_reject("input:\n  path: data.tsv\noutput:\n  write_h5ad: maybe\n", NBS_ERR_USAGE, 4, 15,
                  "expected true or false");
    expect_reject("input:\n  path: data.tsv\ntrain: 5\n", NBS_ERR_USAGE, 3, 8,
                  "section 'train' is not a mapping");
}

/* model.latent_layers: 2 to 4 layers of 1 to 1024 dimensions; one layer is latent_dim's job; an
 * explicit latent_dim must be the top layer's (the embedding); [] is a single latent (what a
 * resolved configuration writes), and skip connections on a single latent are the skip-VAE. */
static void test_latent_layers(void **state) {
    (void)state;
    const char *head = "input:\n  path: data.tsv\nmodel:\n";
    char text[512];
    snprintf(text, sizeof text, "%s  latent_layers: [32]\n", head);
    expect_reject(text, NBS_ERR_USAGE, 4, 18, "model.latent_layers: one layer is a single latent: set model.latent_dim: 32");
    snprintf(text, sizeof text, "%s  latent_layers: [32, 16, 8, 4, 2]\n", head);
    expect_reject(text, NBS_ERR_USAGE, 4, 18, "model.latent_layers: 5 layers; a ladder has 2 to 4");
    snprintf(text, sizeof text, "%s  latent_layers: [32, 0]\n", head);
    expect_reject(text, NBS_ERR_USAGE, 4, 23, "model.latent_layers: width 0 is out of range");
    snprintf(text, sizeof text, "%s  latent_layers: [32, -3]\n", head);
    expect_reject(text, NBS_ERR_USAGE, 4, 23, "width -3 is out of range");
    snprintf(text, sizeof text, "%s  latent_dim: 5\n  latent_layers: [32, 10]\n", head);
    expect_reject(text, NBS_ERR_USAGE, 4, 15, "model.latent_dim: 5, but model.latent_layers' top layer (the embedding) has 10");
    snprintf(text, sizeof text, "%s  latent: vmf\n  latent_layers: [32, 1]\n", head);
    expect_reject(text, NBS_ERR_USAGE, 5, 18, "a spherical top layer (model.latent: vmf) needs 2 or more dimensions, got 1");
    nbs_pipeline p;
    nbs_error err = {0};
    snprintf(text, sizeof text, "%s  latent_layers: [32, 10]\n  skip_connections: true\n", head);
    assert_int_equal(load_text(text, NULL, 0, NBS_PIPELINE_REQUIRE_INPUT, &p, &err, NULL), 0);
    assert_int_equal(p.config.model.n_latent_layers, 2);
    assert_int_equal(p.config.model.latent_layers[1], 10);
    assert_int_equal(p.config.model.latent_dim, 10); /* the top layer's */
    assert_true(p.config.model.skip_connections);
    snprintf(text, sizeof text, "%s  latent_layers: []\n  skip_connections: true\n", head);
    assert_int_equal(load_text(text, NULL, 0, NBS_PIPELINE_REQUIRE_INPUT, &p, &err, NULL), 0);
    assert_int_equal(p.config.model.n_latent_layers, 0);
    assert_int_equal(p.config.model.latent_dim, 10);
}

static void test_out_of_range(void **state) {
    (void)state;
    expect_reject("input:\n  path: data.tsv\ntrain:\n  learning_rate: 0\n", NBS_ERR_USAGE, 4, 18,
                  "train.learning_rate: 0 is out of range; expected a number in (0, 10]");
    expect_reject("input:\n  path: data.tsv\nmodel:\n  dropout: 1.5\n", NBS_ERR_USAGE, 4, 12,
                  "model.dropout: 1.5 is out of range");
    expect_reject("input:\n  path: data.tsv\nmodel:\n  latent: vmf\n  latent_dim: 1\n", NBS_ERR_USAGE, 5,
                  15, "too small for a spherical latent");
    expect_reject("input:\n  path: data.tsv\nmodel:\n  decoder_layers: [1,2,3,4,5,6,7,8,9]\n",
                  NBS_ERR_USAGE, 4, 19, "a list of 9 widths");
    expect_reject("input:\n  path: data.tsv\ntrain:\n  seed: -1\n", NBS_ERR_USAGE, 4, 9,
                  "not a non-negative integer");
}

static void test_bad_enum_word(void **state) {
    (void)state;
    expect_reject("input:\n  path: data.tsv\nmodel:\n  latent: sphere\n", NBS_ERR_USAGE, 4, 11,
                  "model.latent: unknown value 'sphere'; expected one of gaussian, vmf, power_spherical");
    expect_reject("input:\n  path: data.tsv\n  format: h5\n", NBS_ERR_USAGE, 3, 11,
                  "expected one of auto, 10x-h5, h5ad, 10x-mtx, mtx, tsv, csv");
    expect_reject("preset: seurat\ninput:\n  path: data.tsv\n", NBS_ERR_USAGE, 1, 9,
                  "unknown preset 'seurat'");
}

static void test_missing_input(void **state) {
    (void)state;
    expect_reject("input:\n  path: nowhere.h5\n", NBS_ERR_IO, 2, 9, "nowhere.h5' cannot be opened");
    expect_reject("train:\n  epochs: 3\ninput:\n  format: auto\n", NBS_ERR_USAGE, 3, 1,
                  "input.path is missing");
    expect_reject("train:\n  epochs: 3\n", NBS_ERR_USAGE, 1, 1, "input.path is missing");
}

static void test_malformed_yaml(void **state) {
    (void)state;
    expect_reject("input:\n  path: data.tsv\ntrain:\n  epochs: [1, 2\n", NBS_ERR_USAGE, 5, 1,
                  "malformed YAML");
    expect_reject("input:\n  path: data.tsv\n train: x\n", NBS_ERR_USAGE, 3, 2, "malformed YAML");
    expect_reject("input:\n  path: data.tsv\ntrain:\n  epochs: 3\n  epochs: 4\n", NBS_ERR_USAGE, 5,
                  3, "train.epochs is given twice (first at line 4)");
}

static void test_unwritable_output(void **state) {
    (void)state;
    /* A folder below a regular file cannot be created, even by root. */
    nbs_pipeline p;
    nbs_error err = {0};
    char *dir;
    int st = load_text("input:\n  path: data.tsv\noutput:\n  dir: data.tsv/out\n", NULL, 0,
                       NBS_PIPELINE_REQUIRE_INPUT, &p, &err, &dir);
    assert_int_equal(st, NBS_OK);
    char where[4200];
    snprintf(where, sizeof where, "%s:4:8: output.dir", tu_path(dir, "p.yaml"));
    assert_string_equal(p.config.output.dir, tu_path(dir, "data.tsv/out"));
    st = nbs_pipeline_prepare_output(&p, &err);
    assert_int_equal(st, NBS_ERR_IO);
    assert_non_null(strstr(err.msg, where));
    assert_non_null(strstr(err.msg, "Not a directory"));
    /* A good folder is created and the probe file leaves nothing behind. */
    const char *sets[] = {"output.dir=ignored"};
    char good[4200];
    snprintf(good, sizeof good, "output.dir=%s", tu_path(dir, "a/b/c"));
    sets[0] = good;
    st = nbs_pipeline_set(&p, sets[0], &err);
    assert_int_equal(st, NBS_OK);
    assert_int_equal(nbs_pipeline_prepare_output(&p, &err), NBS_OK);
    assert_int_equal(tu_count_files(tu_path(dir, "a/b/c")), 0);
    /* the same failure through an override names the override */
    char bad[4200];
    snprintf(bad, sizeof bad, "output.dir=%s", tu_path(dir, "data.tsv/x"));
    assert_int_equal(nbs_pipeline_set(&p, bad, &err), NBS_OK);
    assert_int_equal(nbs_pipeline_prepare_output(&p, &err), NBS_ERR_IO);
    assert_non_null(strstr(err.msg, "--set output.dir="));
    tu_rmtree(dir);
    free(dir);
}

static void test_overrides(void **state) {
    (void)state;
    nbs_pipeline p;
    nbs_error err = {0};
    const char *sets[] = {"train.epochs=50", "model.encoder_layers=[256, 64]", "model.latent=vmf",
                          "output.write_h5ad=false", "train.seed=18446744073709551615"};
    char *dir;
    assert_int_equal(load_text("input:\n  path: data.tsv\ntrain:\n  epochs: 5\n", sets, 5, 0, &p,
                               &err, &dir), NBS_OK);
    assert_int_equal(p.config.train.epochs, 50);
    assert_int_equal(p.config.model.n_encoder_layers, 2);
    assert_int_equal(p.config.model.encoder_layers[0], 256);
    assert_int_equal(p.config.model.encoder_layers[1], 64);
    assert_int_equal(p.config.model.latent, NBS_LATENT_VMF);
    assert_int_equal(p.config.output.write_h5ad, 0);
    assert_true(p.config.train.seed == UINT64_MAX);
    /* relative input path resolved against the pipeline's folder */
    assert_string_equal(p.config.input.path, tu_path(dir, "data.tsv"));
    assert_non_null(strstr(p.input_origin, "p.yaml:2:9"));
    tu_rmtree(dir);
    free(dir);

    const char *bad[] = {"train.epochs=0"};
    assert_int_equal(load_text("input:\n  path: data.tsv\n", bad, 1, 0, &p, &err, NULL), NBS_ERR_USAGE);
    assert_non_null(strstr(err.msg, "--set train.epochs=0: train.epochs: 0 is out of range"));
    const char *bad2[] = {"train.epoch=3"};
    assert_int_equal(load_text("", bad2, 1, 0, &p, &err, NULL), NBS_ERR_USAGE);
    assert_non_null(strstr(err.msg, "--set train.epoch=3: unknown key 'epoch' in section 'train'"));
    const char *bad3[] = {"epochs"};
    assert_int_equal(load_text("", bad3, 1, 0, &p, &err, NULL), NBS_ERR_USAGE);
    assert_non_null(strstr(err.msg, "expected section.key=value"));
    const char *bad4[] = {"model.decoder_layers=[32, -1]"};
    assert_int_equal(load_text("", bad4, 1, 0, &p, &err, NULL), NBS_ERR_USAGE);
    assert_non_null(strstr(err.msg, "width -1 is out of range"));
    /* an override can supply a required input */
    char *d2 = tu_tmpdir();
    char in[4200];
    tu_write_file(tu_path(d2, "x.tsv"), "cell\tg\nc\t1\n");
    snprintf(in, sizeof in, "input.path=%s", tu_path(d2, "x.tsv"));
    const char *s2[] = {in};
    assert_int_equal(nbs_pipeline_load(NULL, s2, 1, NBS_PIPELINE_REQUIRE_INPUT, &p, &err), NBS_OK);
    assert_int_equal(strncmp(p.input_origin, "--set input.path=", 17), 0);
    tu_rmtree(d2);
    free(d2);
}

static void test_presets(void **state) {
    (void)state;
    nbs_pipeline p;
    nbs_error err = {0};
    /* the preset applies first even when it comes last; the file's keys win */
    assert_int_equal(load_text("model:\n  latent_dim: 5\npreset: scvi\n", NULL, 0, 0, &p, &err, NULL),
                     NBS_OK);
    assert_string_equal(p.config.preset, "scvi");
    assert_int_equal(p.config.model.latent_dim, 5);
    assert_int_equal(p.config.model.latent, NBS_LATENT_GAUSSIAN);
    assert_int_equal(p.config.model.n_encoder_layers, 1);
    assert_int_equal(p.config.model.encoder_layers[0], 128);
    assert_int_equal(p.config.train.batch_size, 128);
    assert_true(p.config.train.learning_rate == 1e-3);
    assert_int_equal(p.config.train.schedule, NBS_SCHED_LINEAR);
    assert_int_equal(p.config.model.likelihood, NBS_LIK_NB);

    assert_int_equal(load_text("preset: scphere\n", NULL, 0, 0, &p, &err, NULL), NBS_OK);
    assert_int_equal(p.config.model.latent, NBS_LATENT_VMF);
    assert_int_equal(p.config.model.n_encoder_layers, 3);
    int enc[] = {128, 64, 32}, dec[] = {32, 128};
    for (int i = 0; i < 3; i++) assert_int_equal(p.config.model.encoder_layers[i], enc[i]);
    assert_int_equal(p.config.model.n_decoder_layers, 2);
    for (int i = 0; i < 2; i++) assert_int_equal(p.config.model.decoder_layers[i], dec[i]);
    assert_int_equal(p.config.model.likelihood, NBS_LIK_NB);
}

/* reference.yaml must reproduce nbs_config_defaults exactly and name every key. */
static void test_reference_yaml(void **state) {
    (void)state;
    nbs_pipeline p;
    nbs_error err = {0};
    int st = nbs_pipeline_load(pipelines("reference.yaml"), NULL, 0, 0, &p, &err);
    if (st) print_message("%s\n", err.msg);
    assert_int_equal(st, NBS_OK);
    nbs_config def;
    nbs_config_defaults(&def);
    /* output.dir is a relative path, so it resolves against pipelines/ */
    assert_string_equal(p.config.output.dir, "pipelines/nbsphere_out");
    memcpy(p.config.output.dir, def.output.dir, sizeof def.output.dir);
    memcpy(p.config.source, def.source, sizeof def.source);
    assert_memory_equal(&p.config, &def, sizeof def);

    char *text = tu_read_file(pipelines("reference.yaml"), NULL);
    assert_non_null(text);
    for (int i = 0; i < nbs_pipeline_n_keys(); i++) {
        const char *name = nbs_pipeline_key_name(i);
        const char *dot = strchr(name, '.');
        char want[512];
        if (!dot) {
            snprintf(want, sizeof want, "\n%s:", name);
        } else {
            char sec[128];
            snprintf(sec, sizeof sec, "\n%.*s:\n", (int)(dot - name), name);
            const char *s = strstr(text, sec);
            assert_non_null(s);
            /* the key must be in that section: before the next unindented line */
            snprintf(want, sizeof want, "\n  %s:", dot + 1);
            const char *k = strstr(s, want);
            if (!k) print_message("reference.yaml lacks %s\n", name);
            assert_non_null(k);
            for (const char *q = s + strlen(sec); q < k; q++)
                if (q[0] == '\n' && q[1] != ' ' && q[1] != '#' && q[1] != '\n') fail_msg("%s out of place", name);
            continue;
        }
        assert_non_null(strstr(text, want));
    }
    free(text);
}

/* docs/options.md has a row "| `section.key` | `default` | meaning |" for every key, under its
 * section's heading ("## `section`"; a top-level key before the first of them), with the default
 * the code sets: the default cell, loaded as that key's YAML value, reproduces
 * nbs_config_defaults. A row under a section heading that names no key is stale. */
static void test_options_md(void **state) {
    (void)state;
    char *text = tu_read_file("docs/options.md", NULL);
    assert_non_null(text);
    const char *first_section = strstr(text, "\n## `");
    assert_non_null(first_section);
    nbs_config def;
    nbs_config_defaults(&def);
    int bad = 0;
    for (int i = 0; i < nbs_pipeline_n_keys(); i++) {
        const char *name = nbs_pipeline_key_name(i);
        const char *dot = strchr(name, '.');
        const char *from = text, *to = first_section; /* where the key's row must be */
        if (dot) {
            char heading[160];
            snprintf(heading, sizeof heading, "\n## `%.*s`\n", (int)(dot - name), name);
            from = strstr(text, heading);
            if (!from) {
                print_message("docs/options.md has no section %s for %s\n", heading + 1, name);
                bad++;
                continue;
            }
            from += strlen(heading);
            to = strstr(from, "\n## ");
            if (!to) to = from + strlen(from);
        }
        char row[256];
        snprintf(row, sizeof row, "\n| `%s` | ", name);
        const char *r = strstr(from, row);
        if (!r || r >= to) {
            print_message("docs/options.md lacks the row %s in its section\n", row + 1);
            bad++;
            continue;
        }
        /* the default cell: `value` */
        const char *cell = r + strlen(row), *end = strchr(cell, '\n');
        const char *close = cell[0] == '`' ? strchr(cell + 1, '`') : NULL;
        if (!close || close > end) {
            print_message("docs/options.md: %s: the default is not written `value`\n", name);
            bad++;
            continue;
        }
        char yaml[1024];
        if (dot)
            snprintf(yaml, sizeof yaml, "%.*s:\n  %s: %.*s\n", (int)(dot - name), name, dot + 1,
                     (int)(close - cell - 1), cell + 1);
        else
            snprintf(yaml, sizeof yaml, "%s: %.*s\n", name, (int)(close - cell - 1), cell + 1);
        nbs_pipeline p;
        nbs_error err = {0};
        if (nbs_pipeline_load_string(yaml, "docs/options.md", NULL, NULL, 0, 0, &p, &err)) {
            print_message("docs/options.md: %s: the default does not load: %s\n", name, err.msg);
            bad++;
            continue;
        }
        memcpy(p.config.source, def.source, sizeof def.source);
        if (memcmp(&p.config, &def, sizeof def)) {
            char v[1024];
            nbs_pipeline_format_value(&def, name, v, sizeof v);
            print_message("docs/options.md: %s: the default %.*s is not the code's '%s'\n", name,
                          (int)(close - cell + 1), cell, v);
            bad++;
        }
    }
    /* every row under a section heading names a key of that section */
    for (const char *h = first_section; h; h = strstr(h + 1, "\n## `")) {
        const char *sec = h + 5, *sec_end = strchr(sec, '`');
        const char *next = strstr(h + 1, "\n## ");
        for (const char *r = strstr(h, "\n| `"); r && (!next || r < next); r = strstr(r + 1, "\n| `")) {
            const char *key = r + 4, *key_end = strchr(key, '`');
            char name[256];
            snprintf(name, sizeof name, "%.*s", (int)(key_end - key), key);
            int known = 0;
            for (int i = 0; i < nbs_pipeline_n_keys(); i++) known |= !strcmp(nbs_pipeline_key_name(i), name);
            if (!known || strncmp(name, sec, (size_t)(sec_end - sec)) || name[sec_end - sec] != '.') {
                print_message("docs/options.md: the row of %s under ## `%.*s` names no key of that section\n", name,
                              (int)(sec_end - sec), sec);
                bad++;
            }
        }
    }
    free(text);
    if (bad) fail_msg("docs/options.md: %d key rows missing, misplaced, stale or with a wrong default", bad);
}

/* The keys tile nbs_config: a field added to config.h without a key leaves a hole here. */
static void test_keys_cover_every_field(void **state) {
    (void)state;
    int n = nbs_pipeline_n_keys();
    size_t off[144], size[144], align[144];
    assert_true(n < 127);
    for (int i = 0; i < n; i++) nbs_pipeline_key_span(i, &off[i], &size[i], &align[i]);
    off[n] = offsetof(nbs_config, source); /* the pipeline's own path: set by the loader */
    size[n] = sizeof(((nbs_config *)0)->source);
    align[n] = 1;
    n++;
    /* Sections start at their struct's alignment, which may exceed their first field's. */
    size_t sec_off[] = {offsetof(nbs_config, input), offsetof(nbs_config, preprocess),
                        offsetof(nbs_config, model), offsetof(nbs_config, train),
                        offsetof(nbs_config, diagnose), offsetof(nbs_config, output)};
    size_t sec_align[] = {_Alignof(nbs_input_config), _Alignof(nbs_preprocess_config),
                          _Alignof(nbs_model_config), _Alignof(nbs_train_config),
                          _Alignof(nbs_diagnose_config), _Alignof(nbs_output_config)};
    size_t sec_size[] = {sizeof(nbs_input_config), sizeof(nbs_preprocess_config),
                         sizeof(nbs_model_config), sizeof(nbs_train_config),
                         sizeof(nbs_diagnose_config), sizeof(nbs_output_config)};
    for (int s = 0; s < 6; s++) { /* start and end (after tail padding) of each section */
        off[n] = sec_off[s], size[n] = 0, align[n] = sec_align[s], n++;
        off[n] = sec_off[s] + sec_size[s], size[n] = 0, align[n] = sec_align[s], n++;
    }
    for (int i = 1; i < n; i++) /* sort by offset */
        for (int j = i; j > 0 && (off[j] < off[j - 1] || (off[j] == off[j - 1] && size[j] < size[j - 1])); j--) {
            size_t t;
            t = off[j], off[j] = off[j - 1], off[j - 1] = t;
            t = size[j], size[j] = size[j - 1], size[j - 1] = t;
            t = align[j], align[j] = align[j - 1], align[j - 1] = t;
        }
    size_t end = 0;
    for (int i = 0; i < n; i++) {
        size_t want = (end + align[i] - 1) / align[i] * align[i];
        if (off[i] != want) fail_msg("a field at bytes %zu..%zu of nbs_config has no pipeline key", end, off[i]);
        end = off[i] + size[i];
    }
    assert_true(sizeof(nbs_config) - end < 8);
}

static void test_every_pipeline_loads(void **state) {
    (void)state;
    /* the real-data pipelines name their data beside the repository; the data come through
     * tu_data (NBS_DATA_DIR honoured) as --set overrides, which the loader checks instead */
    static const struct {
        const char *file, *data, *labels;
    } files[] = {{"default.yaml", NULL, NULL},
                 {"sphere.yaml", NULL, NULL},
                 {"pbmc3k.yaml", "pbmc3k", "pbmc3k/cell_labels.tsv"},
                 {"kang.yaml", "kang_muscat", "kang_muscat/cell_labels.tsv"},
                 {"paul15.yaml", "paul15/paul15.h5ad.gz", NULL},
                 {"collapse-demo.yaml", "kang_muscat", "kang_muscat/cell_labels.tsv"},
                 {"clusters.yaml", "kang_muscat", "kang_muscat/cell_labels.tsv"}};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        nbs_pipeline p;
        nbs_error err = {0};
        char set_path[4200], set_labels[4200];
        const char *sets[2] = {set_path, set_labels};
        int n_sets = 0;
        if (files[i].data) {
            if (!tu_exists(tu_data(files[i].data))) {
                print_message("SKIP: %s needs %s\n", files[i].file, tu_data(files[i].data));
                continue;
            }
            snprintf(set_path, sizeof set_path, "input.path=%s", tu_data(files[i].data));
            n_sets = 1;
            if (files[i].labels) {
                snprintf(set_labels, sizeof set_labels, "input.labels_path=%s", tu_data(files[i].labels));
                n_sets = 2;
            }
        }
        int st = nbs_pipeline_load(pipelines(files[i].file), sets, n_sets, NBS_PIPELINE_REQUIRE_INPUT, &p, &err);
        if (st) print_message("%s: %s\n", files[i].file, err.msg);
        assert_int_equal(st, NBS_OK);
    }
}

/* A file's input path that a --set replaces need not exist; without the --set it is refused. */
static void test_set_replaces_missing_input(void **state) {
    (void)state;
    const char *text = "input:\n  path: no/such/folder\n";
    const char *sets[] = {"input.path=example_data/sim_mtx"};
    nbs_pipeline p;
    nbs_error err = {0};
    assert_int_equal(nbs_pipeline_load_string(text, "t.yaml", ".", sets, 1, NBS_PIPELINE_REQUIRE_INPUT, &p, &err), NBS_OK);
    assert_non_null(strstr(p.config.input.path, "example_data/sim_mtx"));
    assert_int_equal(nbs_pipeline_load_string(text, "t.yaml", ".", NULL, 0, NBS_PIPELINE_REQUIRE_INPUT, &p, &err), NBS_ERR_IO);
    assert_non_null(strstr(err.msg, "t.yaml:2:"));
}

static void test_json_dump(void **state) {
    (void)state;
    nbs_config c;
    nbs_config_defaults(&c);
    c.train.seed = 7;
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    nbs_pipeline_write_json(&c, f, 0);
    fclose(f);
    assert_non_null(strstr(buf, "\"encoder_layers\": [128]"));
    assert_non_null(strstr(buf, "\"latent\": \"gaussian\""));
    assert_non_null(strstr(buf, "\"seed\": \"7\""));
    assert_non_null(strstr(buf, "\"learning_rate\": 0.001"));
    /* an integer's word is a JSON string, true and false literals */
    assert_non_null(strstr(buf, "\"backed\": \"auto\""));
    assert_non_null(strstr(buf, "\"memory_limit\": \"auto\""));
    free(buf);
    c.input.backed = 1;
    f = open_memstream(&buf, &n);
    nbs_pipeline_write_json(&c, f, 0);
    fclose(f);
    assert_non_null(strstr(buf, "\"backed\": true"));
    free(buf);
    char v[64];
    assert_int_equal(nbs_pipeline_format_value(&c, "model.encoder_layers", v, sizeof v), 0);
    assert_string_equal(v, "[128]");
    assert_int_equal(nbs_pipeline_format_value(&c, "model.nothing", v, sizeof v), -1);
}

/* The resolved configuration written as YAML loads back to the same configuration. */
static void test_yaml_round_trip(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    nbs_pipeline p, q;
    nbs_error err = {0};
    char in[4200];
    snprintf(in, sizeof in, "input.path=%s", dir);
    const char *sets[] = {in, "preset=scphere", "input.layer=counts: raw #1", "input.genome=true",
                          "train.seed=12345678901234", "train.learning_rate=0.000123",
                          "output.embedding_key=X_sphere", "input.label_column= padded ",
                          "model.decoder_layers=[7, 8, 9]", "output.write_variances=yes"};
    assert_int_equal(nbs_pipeline_load(NULL, sets, 10, 0, &p, &err), NBS_OK);
    char out[4200];
    snprintf(out, sizeof out, "%s", tu_path(dir, "config.yaml"));
    int st = nbs_pipeline_write_yaml(&p.config, out, &err);
    assert_int_equal(st, NBS_OK);
    st = nbs_pipeline_load(out, NULL, 0, NBS_PIPELINE_REQUIRE_INPUT, &q, &err);
    if (st) print_message("%s\n", err.msg);
    assert_int_equal(st, NBS_OK);
    memset(q.config.source, 0, sizeof q.config.source);
    memset(p.config.source, 0, sizeof p.config.source);
    memset(q.config.preset, 0, sizeof q.config.preset);
    memset(p.config.preset, 0, sizeof p.config.preset);
    /* output.dir was relative ("nbsphere_out"): it is written as an absolute path */
    assert_true(q.config.output.dir[0] == '/');
    memcpy(q.config.output.dir, p.config.output.dir, sizeof p.config.output.dir);
    assert_string_equal(q.config.input.layer, "counts: raw #1");
    assert_string_equal(q.config.input.label_column, " padded ");
    assert_memory_equal(&p.config, &q.config, sizeof p.config);
    tu_rmtree(dir);
    free(dir);
}

/* The covariate keys: name lists through YAML, --set, the YAML and JSON writers; one column
 * named twice, and a per-batch dispersion without a batch, are refused where they are set. */
static void test_covariate_keys(void **state) {
    (void)state;
    const char *text = "input:\n  path: data.tsv\n  batch_key: sample\n"
                       "  categorical_covariates: [donor, \"a,b\", \"x y\", \"[odd]\"]\n"
                       "  continuous_covariates: [percent_mito]\nmodel:\n  dispersion: gene-batch\n"
                       "  encode_covariates: true\n";
    nbs_pipeline p, q;
    nbs_error err = {0};
    char *dir;
    int st = load_text(text, NULL, 0, NBS_PIPELINE_REQUIRE_INPUT, &p, &err, &dir);
    if (st) print_message("%s\n", err.msg);
    assert_int_equal(st, NBS_OK);
    const nbs_input_config *in = &p.config.input;
    assert_string_equal(in->batch_key, "sample");
    assert_int_equal(in->categorical_covariates.n, 4);
    assert_string_equal(in->categorical_covariates.names[1], "a,b");
    assert_string_equal(in->categorical_covariates.names[3], "[odd]");
    assert_int_equal(in->continuous_covariates.n, 1);
    assert_int_equal(p.config.model.dispersion, NBS_DISP_GENE_BATCH);
    assert_true(p.config.model.encode_covariates);
    /* written and read back: the same configuration */
    const char *out = tu_path(dir, "config.yaml");
    char keep[4096];
    snprintf(keep, sizeof keep, "%s", out);
    assert_int_equal(nbs_pipeline_write_yaml(&p.config, keep, &err), NBS_OK);
    char *yaml = tu_read_file(keep, NULL);
    assert_non_null(strstr(yaml, "categorical_covariates: [donor, \"a,b\", x y, \"[odd]\"]"));
    assert_non_null(strstr(yaml, "dispersion: gene_batch"));
    free(yaml);
    assert_int_equal(nbs_pipeline_load(keep, NULL, 0, NBS_PIPELINE_REQUIRE_INPUT, &q, &err), NBS_OK);
    memcpy(q.config.source, p.config.source, sizeof p.config.source);
    memcpy(q.config.output.dir, p.config.output.dir, sizeof p.config.output.dir);
    assert_memory_equal(&p.config, &q.config, sizeof p.config);
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    nbs_pipeline_write_json(&p.config, f, 0);
    fclose(f);
    assert_non_null(strstr(buf, "\"categorical_covariates\": [\"donor\", \"a,b\", \"x y\", \"[odd]\"]"));
    assert_non_null(strstr(buf, "\"continuous_covariates\": [\"percent_mito\"]"));
    assert_non_null(strstr(buf, "\"batch_key\": \"sample\""));
    free(buf);
    /* --set: a list, and nothing (the empty list) */
    const char *sets[] = {"input.categorical_covariates=[chemistry]", "input.continuous_covariates="};
    assert_int_equal(nbs_pipeline_load(keep, sets, 2, NBS_PIPELINE_REQUIRE_INPUT, &q, &err), NBS_OK);
    assert_int_equal(q.config.input.categorical_covariates.n, 1);
    assert_string_equal(q.config.input.categorical_covariates.names[0], "chemistry");
    assert_int_equal(q.config.input.continuous_covariates.n, 0);
    tu_rmtree(dir);
    free(dir);

    expect_reject("input:\n  path: data.tsv\n  categorical_covariates: donor\n", NBS_ERR_USAGE, 3, 27,
                  "input.categorical_covariates: not a list; expected a list of up to 16 column names");
    expect_reject("input:\n  path: data.tsv\n  continuous_covariates: [a, \"\"]\n", NBS_ERR_USAGE, 3, 30,
                  "item 2 is empty");
    expect_reject("input:\n  path: data.tsv\n  categorical_covariates: [a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q]\n",
                  NBS_ERR_USAGE, 3, 27, "a list of 17 names");
    expect_reject("input:\n  path: data.tsv\n  batch_key: s\n  continuous_covariates: [s]\n", NBS_ERR_USAGE, 4, 26,
                  "input.continuous_covariates: column 's' is already the batch_key");
    expect_reject("input:\n  path: data.tsv\n  categorical_covariates: [d]\n  continuous_covariates: [d]\n",
                  NBS_ERR_USAGE, 4, 26, "column 'd' is already in categorical_covariates");
    expect_reject("input:\n  path: data.tsv\nmodel:\n  dispersion: gene_batch\n", NBS_ERR_USAGE, 4, 15,
                  "model.dispersion: gene_batch needs input.batch_key");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_latent_layers),
        cmocka_unit_test(test_unknown_key),       cmocka_unit_test(test_wrong_type),
        cmocka_unit_test(test_out_of_range),      cmocka_unit_test(test_bad_enum_word),
        cmocka_unit_test(test_missing_input),     cmocka_unit_test(test_malformed_yaml),
        cmocka_unit_test(test_unwritable_output), cmocka_unit_test(test_overrides),
        cmocka_unit_test(test_presets),           cmocka_unit_test(test_reference_yaml),
        cmocka_unit_test(test_options_md),
        cmocka_unit_test(test_keys_cover_every_field), cmocka_unit_test(test_every_pipeline_loads),
        cmocka_unit_test(test_covariate_keys),
        cmocka_unit_test(test_set_replaces_missing_input), cmocka_unit_test(test_json_dump),         cmocka_unit_test(test_yaml_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
