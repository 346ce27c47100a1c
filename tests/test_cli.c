#include "testutil.h"

#include <dirent.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>

#include <math.h>

#include "nbsphere/manifest.h"
#include "nbsphere/progress.h"
#include "nbsphere/version.h"

/* Runs the CLI; asserts the exit code; returns stdout+stderr joined (malloc'd). */
static char *run_expect(const char *args, int code) {
    char *out = NULL, *errout = NULL;
    int rc = tu_run_cli(args, &out, &errout);
    size_t a = out ? strlen(out) : 0, b = errout ? strlen(errout) : 0;
    char *all = malloc(a + b + 2);
    snprintf(all, a + b + 2, "%s\n%s", out ? out : "", errout ? errout : "");
    if (rc != code) print_message("nbsphere %s -> exit %d (wanted %d)\n%s\n", args, rc, code, all);
    assert_int_equal(rc, code);
    free(out);
    free(errout);
    return all;
}

static void expect_contains(const char *args, int code, const char *needle) {
    char *all = run_expect(args, code);
    if (!strstr(all, needle)) print_message("nbsphere %s: no '%s' in:\n%s\n", args, needle, all);
    assert_non_null(strstr(all, needle));
    free(all);
}

/* The commands in src/main.c's table, in order, found by their {"name", cmd_... entries: the
 * test follows the table, so a new command cannot be left out of it. Returns the count. */
static int commands_in_source(char names[][32], int max) {
    char *src = tu_read_file("src/main.c", NULL);
    assert_non_null(src);
    const char *p = strstr(src, "static const command COMMANDS[] = {");
    assert_non_null(p);
    const char *end = strstr(p, "\n};");
    assert_non_null(end);
    int n = 0;
    for (const char *q = strstr(p, "{\""); q && q < end && n < max; q = strstr(q + 1, "{\"")) {
        const char *close = strchr(q + 2, '"');
        if (!close) break;
        size_t len = (size_t)(close - (q + 2));
        /* an entry of the table: the name, then the function */
        if (len == 0 || len >= 32 || strncmp(close, "\", cmd_", 7)) continue;
        memcpy(names[n], q + 2, len);
        names[n++][len] = '\0';
    }
    free(src);
    return n;
}

static void test_help_of_every_command(void **state) {
    (void)state;
    char cmds[64][32];
    const int n = commands_in_source(cmds, 64);
    assert_true(n >= 6); /* run, train, embed, diagnose, inspect, simulate at least */
    /* `nbsphere --help` lists the same commands, in the same order */
    char *top = run_expect("--help", 0);
    const char *list = strstr(top, "Commands:\n");
    assert_non_null(list);
    list += strlen("Commands:\n");
    int listed = 0;
    for (const char *line = list; *line == ' '; line = strchr(line, '\n') + 1, listed++) {
        char word[32] = "";
        assert_int_equal(sscanf(line, " %31s", word), 1);
        if (listed >= n || strcmp(word, cmds[listed]))
            print_message("--help lists '%s' where src/main.c's table has '%s'\n", word, listed < n ? cmds[listed] : "");
        assert_true(listed < n);
        assert_string_equal(word, cmds[listed]);
    }
    assert_int_equal(listed, n);
    free(top);
    for (int i = 0; i < n; i++) {
        char args[64], want[64];
        snprintf(args, sizeof args, "%s --help", cmds[i]);
        snprintf(want, sizeof want, "usage: nbsphere %s", cmds[i]);
        expect_contains(args, 0, want);
        expect_contains(args, 0, "5 file could not be read or written");
        snprintf(args, sizeof args, "help %s", cmds[i]);
        expect_contains(args, 0, want);
        snprintf(args, sizeof args, "%s -h", cmds[i]);
        expect_contains(args, 0, want);
    }
}

static void test_version(void **state) {
    (void)state;
    static const char nbs[] = "nbsphere " NBS_VERSION;
    const char *want[] = {nbs, "HDF5 1.", "GSL 2.", "OpenBLAS ", "libyaml 0.", "zlib 1."};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) expect_contains("--version", 0, want[i]);
}

static void test_usage_errors(void **state) {
    (void)state;
    expect_contains("", 2, "usage: nbsphere");
    expect_contains("frobnicate", 2, "nbsphere: error: unknown command 'frobnicate'");
    expect_contains("run", 2, "nbsphere: error: run: no pipeline file given");
    expect_contains("run a.yaml b.yaml", 2, "more than one pipeline file");
    expect_contains("run --bogus x.yaml", 2, "run: unknown option");
    expect_contains("run x.yaml --set", 2, "--set needs section.key=value");
    expect_contains("train", 2, "train: no data file given");
    expect_contains("simulate --cells 10", 2, "--out DIR is required");
    expect_contains("simulate --out /tmp/x --cells zero", 2, "--cells: expected an integer");
    expect_contains("simulate --out /tmp/x --format png", 2, "unknown format 'png'");
    expect_contains("simulate --out /tmp/x --batches 0", 2, "--batches: expected an integer from 1 to 100");
    expect_contains("simulate --out /tmp/x --batches -2", 2, "--batches: expected an integer from 1 to 100");
    expect_contains("simulate --out /tmp/x --batches two", 2, "--batches: expected an integer from 1 to 100");
    expect_contains("simulate --out /tmp/x --cells 5 --batches 6", 2, "6 batches for 5 cells");
}

static void test_missing_and_bad_files(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char args[8192];
    snprintf(args, sizeof args, "run '%s'", tu_path(dir, "absent.yaml"));
    expect_contains(args, 5, "cannot open the pipeline file");
    tu_write_file(tu_path(dir, "bad.yaml"), "input:\n  path: counts.tsv\ntrain:\n  epochs: -3\n");
    tu_write_file(tu_path(dir, "counts.tsv"), "cell\tg1\tg2\nc1\t1\t2\n");
    snprintf(args, sizeof args, "run '%s'", tu_path(dir, "bad.yaml"));
    char want[4200];
    snprintf(want, sizeof want, "nbsphere: error: %s:4:11: train.epochs: -3 is out of range",
             tu_path(dir, "bad.yaml"));
    expect_contains(args, 2, want);
    /* the same pipeline repaired by an override */
    tu_write_file(tu_path(dir, "missing.yaml"), "input:\n  path: nothing.h5\n");
    snprintf(args, sizeof args, "run '%s'", tu_path(dir, "missing.yaml"));
    expect_contains(args, 5, "input.path: '");
    snprintf(args, sizeof args, "train '%s' --epochs 0", tu_path(dir, "counts.tsv"));
    expect_contains(args, 2, "--set train.epochs=0: train.epochs: 0 is out of range");
    /* an output folder that cannot be created fails before anything runs */
    snprintf(args, sizeof args, "train '%s' --out '%s'", tu_path(dir, "counts.tsv"),
             tu_path(dir, "counts.tsv/out"));
    expect_contains(args, 5, "cannot create");
    tu_rmtree(dir);
    free(dir);
}

/* A 10x folder written by hand: 3 genes x 4 cells. */
static void write_mtx_folder(const char *dir, const char *entries, int nnz) {
    char text[4096];
    mkdir(dir, 0777);
    snprintf(text, sizeof text, "%%%%MatrixMarket matrix coordinate integer general\n3 4 %d\n%s", nnz, entries);
    tu_write_file(tu_path(dir, "matrix.mtx"), text);
    tu_write_file(tu_path(dir, "genes.tsv"), "G1\tA\nG2\tB\nG3\tA\n");
    tu_write_file(tu_path(dir, "barcodes.tsv"), "c1\nc2\nc3\nc4\n");
}

/* Bad data exits 3, and the failed run still leaves a manifest saying why, no temporary files. */
static void test_bad_input_exit_code(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char data[4200], out[4200], args[9000];
    snprintf(data, sizeof data, "%s", tu_path(dir, "tenx"));
    snprintf(out, sizeof out, "%s", tu_path(dir, "out"));
    write_mtx_folder(data, "1 1 5\n2 2 -1\n3 3 2\n", 3);
    snprintf(args, sizeof args, "train '%s' --out '%s'", data, out);
    expect_contains(args, 3, "nbsphere: error: ");
    char *m = tu_read_file(tu_path(out, "manifest.json"), NULL);
    assert_non_null(m);
    assert_non_null(strstr(m, "\"status\": \"failed\""));
    free(m);
    assert_int_equal(tu_count_files(out), 2); /* config.yaml and manifest.json */
    tu_rmtree(dir);
    free(dir);
}

/* A good folder: the run loads it, records its checksums and leaves only finished files. */
static void test_train_small_folder(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char data[4200], out[4200], args[9000];
    snprintf(data, sizeof data, "%s", tu_path(dir, "tenx"));
    snprintf(out, sizeof out, "%s", tu_path(dir, "out"));
    write_mtx_folder(data, "1 1 5\n2 2 1\n3 3 2\n1 4 7\n", 4);
    snprintf(args, sizeof args, "--quiet train '%s' --out '%s' --seed 9", data, out);
    char *all = run_expect(args, 0);
    assert_null(strstr(all, "load:")); /* --quiet */
    free(all);
    char *m = tu_read_file(tu_path(out, "manifest.json"), NULL);
    assert_non_null(m);
    assert_non_null(strstr(m, "\"status\": \"ok\""));
    assert_non_null(strstr(m, "\"seed\": \"9\""));
    assert_non_null(strstr(m, "matrix.mtx\", \"bytes\": "));
    assert_non_null(strstr(m, "\"stage\": \"load\""));
    free(m);
    /* not a terminal: plain lines, no carriage returns */
    snprintf(args, sizeof args, "train '%s' --out '%s'", data, out);
    all = run_expect(args, 0);
    assert_non_null(strstr(all, "load: 4 cells x 3 genes, 4 nonzeros"));
    assert_null(strchr(all, '\r'));
    free(all);
    DIR *d = opendir(out);
    struct dirent *e;
    while ((e = readdir(d))) assert_null(strstr(e->d_name, ".tmp"));
    closedir(d);
    tu_rmtree(dir);
    free(dir);
}

/* example_data/ is what `nbsphere simulate` writes with the command in its README: byte for byte. */
static void test_simulate_reproduces_example_data(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char args[4200];
    snprintf(args, sizeof args, "simulate --out '%s' --cells 2000 --genes 1000 --branches 3 --seed 0", dir);
    expect_contains(args, 0, "simulate: 2000 cells x 1000 genes");
    const char *files[] = {"cell_labels.tsv", "sim_mtx/matrix.mtx.gz", "sim_mtx/features.tsv.gz",
                           "sim_mtx/barcodes.tsv.gz"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char ours[4200], committed[512];
        snprintf(ours, sizeof ours, "%s", tu_path(dir, files[i]));
        snprintf(committed, sizeof committed, "example_data/%s", files[i]);
        if (!tu_same_bytes(ours, committed)) print_message("%s differs from a fresh simulation\n", committed);
        assert_true(tu_same_bytes(ours, committed));
    }
    /* README.md names the same command */
    char *readme = tu_read_file("example_data/README.md", NULL);
    assert_non_null(readme);
    assert_non_null(strstr(readme, "nbsphere simulate --out example_data --cells 2000 --genes 1000 --branches 3 --seed 0"));
    free(readme);
    tu_rmtree(dir);
    free(dir);
}

/* The first run a new user makes: the default pipeline on the example data. */
static void test_run_default_pipeline(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char out[4200], args[4400];
    snprintf(out, sizeof out, "%s", tu_path(dir, "out"));
    snprintf(args, sizeof args, "run pipelines/default.yaml --out '%s'", out);
    char *all = run_expect(args, 0);
    assert_non_null(strstr(all, "load: 2000 cells x 1000 genes"));
    free(all);
    const char *want[] = {"manifest.json", "config.yaml"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) assert_true(tu_exists(tu_path(out, want[i])));
    char *m = tu_read_file(tu_path(out, "manifest.json"), NULL);
    assert_non_null(strstr(m, "\"status\": \"ok\""));
    assert_non_null(strstr(m, "example_data/sim_mtx/matrix.mtx.gz\", \"bytes\": "));
    assert_non_null(strstr(m, "example_data/cell_labels.tsv\", \"bytes\": "));
    free(m);
    DIR *d = opendir(out);
    struct dirent *e;
    while ((e = readdir(d))) { /* nothing half-written, no probe left */
        assert_null(strstr(e->d_name, ".tmp"));
        assert_null(strstr(e->d_name, "probe"));
    }
    closedir(d);
    tu_rmtree(dir);
    free(dir);
}

/* How the OpenMP runtime's idle workers wait is the user's if they set it, else main's choice (a
 * short spin or passive), and manifest.json says which; the outputs are the same bits under each.
 * The variables are saved and restored around the test (setup, teardown), whatever it asserts. */
static const char *const WAIT_VARS[3] = {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"};
static char *saved_wait[3];

static int save_wait_vars(void **state) {
    (void)state;
    for (int i = 0; i < 3; i++) {
        const char *v = getenv(WAIT_VARS[i]);
        saved_wait[i] = v ? strdup(v) : NULL;
    }
    return 0;
}

static int restore_wait_vars(void **state) {
    (void)state;
    for (int i = 0; i < 3; i++) {
        if (saved_wait[i]) setenv(WAIT_VARS[i], saved_wait[i], 1);
        else unsetenv(WAIT_VARS[i]);
        free(saved_wait[i]);
        saved_wait[i] = NULL;
    }
    return 0;
}

static void test_openmp_waiting(void **state) {
    (void)state;
    /* as the user sets them; all NULL: main chooses */
    const char *const settings[3][3] = {{NULL, NULL, NULL}, {"passive", NULL, NULL}, {NULL, "10000", NULL}};
    const char *const spin = "{\"OMP_WAIT_POLICY\": null, \"GOMP_SPINCOUNT\": \"10000\", \"KMP_BLOCKTIME\": \"1\"}";
    const char *const passive = "{\"OMP_WAIT_POLICY\": \"passive\", \"GOMP_SPINCOUNT\": null, \"KMP_BLOCKTIME\": null}";
    const char *const users_spin = "{\"OMP_WAIT_POLICY\": null, \"GOMP_SPINCOUNT\": \"10000\", \"KMP_BLOCKTIME\": null}";
    char *dir = tu_tmpdir(), *embedding[3];
    for (int r = 0; r < 3; r++) {
        for (int i = 0; i < 3; i++)
            if (settings[r][i]) setenv(WAIT_VARS[i], settings[r][i], 1);
            else unsetenv(WAIT_VARS[i]);
        char out[4200], args[4600], name[16];
        snprintf(name, sizeof name, "out%d", r);
        snprintf(out, sizeof out, "%s", tu_path(dir, name));
        snprintf(args, sizeof args,
                 "-q train example_data/sim_mtx --out '%s' --set train.epochs=3 --set train.threads=2 "
                 "--set output.write_report=false",
                 out);
        free(run_expect(args, 0));
        char *m = tu_read_file(tu_path(out, "manifest.json"), NULL);
        assert_non_null(m);
        if (!strstr(m, "\"openmp_waiting\": ")) fail_msg("no openmp_waiting in manifest.json:\n%s", m);
        /* the user's setting as given (nothing added); main's choice one of its two, never the
         * runtime's long default spin */
        if (r == 1) assert_non_null(strstr(m, passive));
        else if (r == 2) assert_non_null(strstr(m, users_spin));
        else assert_true(strstr(m, passive) || strstr(m, spin));
        free(m);
        embedding[r] = tu_read_file(tu_path(out, "embedding.tsv"), NULL);
        assert_non_null(embedding[r]);
    }
    assert_string_equal(embedding[0], embedding[1]);
    assert_string_equal(embedding[0], embedding[2]);
    for (int r = 0; r < 3; r++) free(embedding[r]);
    tu_rmtree(dir);
    free(dir);
}

/* inspect on every real file its README describes: cells x genes and nonzeros as listed there. */
static void test_inspect_real_files(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("pbmc3k/matrix.mtx.gz");
    static const struct {
        const char *rel, *extra, *shape;
    } files[] = {
        {"pbmc3k", "", "2638 cells x 13714 genes, 2238732 nonzeros"},
        {"kang_muscat", "", "1556 cells x 1267 genes, 585251 nonzeros"},
        {"scphere_cd14_eryth/cd14_monocyte_erythroid.mtx", "--orientation genes_rows",
         "2303 cells x 2000 genes, 311647 nonzeros"},
        {"tenx_h5/visium_placenta/filtered_feature_bc_matrix.h5", "", "2898 cells x 19465 genes, 1069459 nonzeros"},
        {"tenx_h5/scanpy_tests/3.0.0/filtered_feature_bc_matrix.h5", "", "1107 cells x 507 genes, 23866 nonzeros"},
        {"tenx_h5/scanpy_tests/3.0.0/filtered_feature_bc_matrix", "", "1107 cells x 507 genes, 23866 nonzeros"},
        {"tenx_h5/scanpy_tests/1.2.0/filtered_gene_bc_matrices_h5.h5", "", "12 cells x 343 genes, 12 nonzeros"},
        {"tenx_h5/scanpy_tests/1.2.0/filtered_gene_bc_matrices/hg19_chr21", "--format 10x-mtx",
         "12 cells x 343 genes, 12 nonzeros"},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char args[4400];
        snprintf(args, sizeof args, "inspect '%s' %s", tu_data(files[i].rel), files[i].extra);
        expect_contains(args, 0, files[i].shape);
    }
    char args[4400];
    snprintf(args, sizeof args, "inspect '%s'", tu_data("pbmc3k"));
    expect_contains(args, 0, "library size  min 556, ");  /* README: 556-8875, median 2213 */
    expect_contains(args, 0, "median 2213, ");
    expect_contains(args, 0, "max 8875");
    expect_contains(args, 0, "1 gene without any count"); /* README: one all-zero gene */
    expect_contains(args, 0, "all integers");
    snprintf(args, sizeof args, "inspect --json '%s'", tu_data("kang_muscat"));
    expect_contains(args, 0, "\"cells\": 1556,\n  \"genes\": 1267,\n  \"nonzeros\": 585251,");
    expect_contains(args, 0, "\"library_size\": {\"min\": 371, ");
    expect_contains(args, 0, "\"max\": 5738}");
    snprintf(args, sizeof args, "inspect '%s'", tu_data("kang_muscat/absent.h5"));
    expect_contains(args, 5, "absent.h5' cannot be opened");
    snprintf(args, sizeof args, "inspect '%s' --format png", tu_data("kang_muscat"));
    expect_contains(args, 2, "unknown value 'png'");
}

static void test_sha256_vectors(void **state) {
    (void)state;
    struct {
        const char *in;
        const char *hex;
    } v[] = {{"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
             {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
             {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
              "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"}};
    char *dir = tu_tmpdir();
    for (int i = 0; i < 3; i++) {
        tu_write_file(tu_path(dir, "f"), v[i].in);
        char hex[65];
        int64_t size;
        nbs_error err = {0};
        assert_int_equal(nbs_sha256_file(tu_path(dir, "f"), hex, &size, &err), NBS_OK);
        assert_string_equal(hex, v[i].hex);
        assert_int_equal(size, (int64_t)strlen(v[i].in));
    }
    /* a million 'a', fed in uneven pieces */
    nbs_sha256_ctx c;
    nbs_sha256_init(&c);
    char block[997];
    memset(block, 'a', sizeof block);
    size_t left = 1000000;
    while (left) {
        size_t k = left < sizeof block ? left : sizeof block;
        nbs_sha256_update(&c, block, k);
        left -= k;
    }
    unsigned char d[32];
    nbs_sha256_final(&c, d);
    char hex[65];
    for (int i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", d[i]);
    assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    tu_rmtree(dir);
    free(dir);
}

static void test_manifest_contents(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    tu_write_file(tu_path(dir, "in.txt"), "abc");
    nbs_error err = {0};
    nbs_manifest *m = nbs_manifest_new("nbsphere run x.yaml", &err);
    assert_non_null(m);
    char in[4200];
    snprintf(in, sizeof in, "%s", tu_path(dir, "in.txt"));
    assert_int_equal(nbs_manifest_add_input(m, in, &err), NBS_OK);
    assert_int_equal(nbs_manifest_add_stage(m, "load", 1.5, &err), NBS_OK);
    assert_int_equal(nbs_manifest_add_output(m, "embedding.tsv", &err), NBS_OK);
    nbs_manifest_set_status(m, "ok", NULL);
    nbs_config c;
    nbs_config_defaults(&c);
    c.train.seed = 42;
    char out[4200];
    snprintf(out, sizeof out, "%s", tu_path(dir, "manifest.json"));
    assert_int_equal(nbs_manifest_write(m, &c, out, &err), NBS_OK);
    nbs_manifest_free(m);
    char *text = tu_read_file(out, NULL);
    assert_non_null(text);
    const char *want[] = {"\"sha256\": \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"",
                          "\"bytes\": 3", "\"seed\": \"42\"", "\"stage\": \"load\", \"seconds\": 1.500",
                          "\"hdf5\": \"1.", "\"openblas\": ", "\"start_time\": \"20",
                          "\"end_time\": \"20", "\"latent\": \"gaussian\"", "\"status\": \"ok\"",
                          "\"command\": \"nbsphere run x.yaml\""};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        if (!strstr(text, want[i])) print_message("manifest lacks %s:\n%s\n", want[i], text);
        assert_non_null(strstr(text, want[i]));
    }
    free(text);
    assert_int_equal(tu_count_files(dir), 2); /* in.txt and manifest.json; no temporary left */
    tu_rmtree(dir);
    free(dir);
}

/* The progress line: a redrawn bar on a terminal, plain lines otherwise; log lines clear the bar. */
static void test_progress_lines(void **state) {
    (void)state;
    for (int tty = 0; tty <= 1; tty++) {
        char *buf = NULL;
        size_t n = 0;
        FILE *f = open_memstream(&buf, &n);
        nbs_progress *p = nbs_progress_new(f, 1, tty);
        nbs_progress_stage(p, "train");
        nbs_progress_train t = {2, 10, 5, 5, -1234.5, 12.25, NAN, 0.5, 7, 10};
        nbs_progress_epoch(p, &t);
        nbs_warn("something odd");
        nbs_debug("hidden at verbosity 1");
        nbs_progress_done(p, "finished");
        nbs_progress_free(p);
        fclose(f);
        assert_non_null(strstr(buf, "train epoch 2/10"));
        assert_non_null(strstr(buf, "ELBO -1234"));
        assert_non_null(strstr(buf, "KL 12.25"));
        assert_non_null(strstr(buf, "active 7/10"));
        assert_non_null(strstr(buf, "ETA "));
        assert_non_null(strstr(buf, "nbsphere: warning: something odd\n"));
        assert_null(strstr(buf, "hidden"));
        assert_non_null(strstr(buf, "train: finished ("));
        if (tty) {
            assert_non_null(strstr(buf, "batch 5/5"));
            assert_non_null(strstr(buf, "\r\033[K[####"));
            assert_non_null(strstr(buf, "\r\033[Knbsphere: warning")); /* the bar is erased first */
        } else {
            assert_null(strchr(buf, '\r'));
            assert_non_null(strstr(buf, "train epoch 2/10 ELBO"));
        }
        free(buf);
    }
    /* quiet: only the warning */
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    nbs_progress *p = nbs_progress_new(f, 0, 0);
    nbs_progress_stage(p, "load");
    nbs_info("loading");
    nbs_warn("careful");
    nbs_progress_done(p, "done");
    nbs_progress_free(p);
    fclose(f);
    assert_string_equal(buf, "nbsphere: warning: careful\n");
    free(buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help_of_every_command), cmocka_unit_test(test_version),
        cmocka_unit_test(test_usage_errors),          cmocka_unit_test(test_missing_and_bad_files),
        cmocka_unit_test(test_bad_input_exit_code),   cmocka_unit_test(test_train_small_folder),
        cmocka_unit_test(test_sha256_vectors),        cmocka_unit_test(test_manifest_contents),
        cmocka_unit_test(test_progress_lines),
        cmocka_unit_test(test_simulate_reproduces_example_data),
        cmocka_unit_test(test_run_default_pipeline),
        cmocka_unit_test_setup_teardown(test_openmp_waiting, save_wait_vars, restore_wait_vars),
        cmocka_unit_test(test_inspect_real_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
