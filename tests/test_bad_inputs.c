/* The bad-input corpus through the CLI: every file in tests/bad_inputs/ (text formats, garbage,
 * pipelines) and HDF5 files built here with the HDF5 C API (wrong types and shapes, missing
 * datasets, bad offsets, huge shapes, bad values, names) are given to `nbsphere inspect` and to
 * `nbsphere train --out DIR`. Each must exit with its documented code (not hang: a watchdog kills
 * a run after a minute), with a message naming the file, and leave no embedding, model,
 * checkpoint or temporary file in DIR.
 * The library-level tests (test_io*.c, test_matrix.c) check the messages in detail; this file
 * checks what a user of the command sees. */
#include "testutil.h"

#include <hdf5.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "nbsphere/error.h"

/* Rejecting a bad input takes milliseconds, but on a loaded machine (or under sanitizers) any
 * run can stall for seconds, so no time is asserted: the watchdog only catches a hang, such as
 * a reader looping on a corrupt length field. */
#ifndef HANG_SECONDS
#define HANG_SECONDS 60
#endif
#define HUNG (-2)

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* tu_run_cli with a watchdog: runs `nbsphere ARGS`, captures stdout and stderr (malloc'd), and
 * returns the exit status, -1 if it did not exit normally, HUNG if it was killed after
 * HANG_SECONDS. */
static int run_watched(const char *args, char **out, char **errout) {
    const char *bin = getenv("NBS_BIN");
    char *dir = tu_tmpdir();
    assert_non_null(dir);
    char cmd[16384];
    /* exec: the shell becomes nbsphere, so the watchdog's kill reaches it */
    snprintf(cmd, sizeof cmd, "exec %s %s >'%s/out' 2>'%s/err' </dev/null", bin && *bin ? bin : "./nbsphere", args,
             dir, dir);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    const double t0 = now();
    int ws = 0;
    pid_t w;
    long pause_ns = 1000000; /* 1 ms, growing to 50 ms: quick runs are not held up */
    for (;;) {
        w = waitpid(pid, &ws, WNOHANG);
        if (w < 0 && errno == EINTR) continue;
        if (w != 0 || now() - t0 >= HANG_SECONDS) break;
        struct timespec ts = {0, pause_ns};
        nanosleep(&ts, NULL);
        if (pause_ns < 50000000) pause_ns *= 2;
    }
    const int hung = w == 0;
    if (hung) {
        kill(pid, SIGKILL);
        waitpid(pid, &ws, 0);
    }
    if (out) *out = tu_read_file(tu_path(dir, "out"), NULL);
    if (errout) *errout = tu_read_file(tu_path(dir, "err"), NULL);
    tu_rmtree(dir);
    free(dir);
    if (hung) return HUNG;
    return w > 0 && WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
}

/* Files a failed run must not leave behind. */
static void assert_no_outputs(const char *dir, const char *label) {
    static const char *const outputs[] = {"embedding.tsv", "embedding.h5ad", "model.h5", "checkpoint.h5",
                                          "training_log.tsv", "collapse_report.json", "report.html"};
    for (size_t i = 0; i < sizeof outputs / sizeof outputs[0]; i++) {
        if (tu_exists(tu_path(dir, outputs[i]))) print_message("%s: left %s behind\n", label, outputs[i]);
        assert_false(tu_exists(tu_path(dir, outputs[i])));
    }
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strstr(e->d_name, ".tmp")) print_message("%s: left temporary %s behind\n", label, e->d_name);
        assert_null(strstr(e->d_name, ".tmp"));
    }
    closedir(d);
}

/* Runs `nbsphere ARGS`; checks the exit code, that it did not hang, that stderr has
 * "nbsphere: error: " and names `names` (a file's base name) and holds `needle`. */
static void expect_failure(const char *args, int code, const char *names, const char *needle) {
    char *out = NULL, *errout = NULL;
    double t0 = now();
    int rc = run_watched(args, &out, &errout);
    double dt = now() - t0;
    const char *e = errout ? errout : "";
    int ok = rc == code && strstr(e, "nbsphere: error: ") && (!names || strstr(e, names)) &&
             (!needle || strstr(e, needle));
    if (!ok)
        print_message("nbsphere %s\n  -> %s %d (wanted %d) after %.2f s; wanted '%s' and '%s' in:\n%s\n", args,
                      rc == HUNG ? "HUNG, killed; status" : "exit", rc, code, dt, names ? names : "",
                      needle ? needle : "", e);
    assert_int_not_equal(rc, HUNG);
    assert_int_equal(rc, code);
    assert_non_null(strstr(e, "nbsphere: error: "));
    if (names) assert_non_null(strstr(e, names));
    if (needle) assert_non_null(strstr(e, needle));
    free(out);
    free(errout);
}

typedef struct {
    const char *name;  /* under tests/bad_inputs/, or under the temporary folder for HDF5 cases */
    int inspect_rc;    /* 0: inspect only reports (the file is readable, training refuses it) */
    int train_rc;
    const char *needle;
} bad_case;

/* Runs one case through inspect and train; `names` is what the message must name. */
static void run_case(const char *path, const bad_case *c, const char *names, const char *out) {
    char args[3 * PATH_MAX];
    if (c->inspect_rc) {
        snprintf(args, sizeof args, "inspect '%s'", path);
        expect_failure(args, c->inspect_rc, names, c->needle);
    } else {
        /* readable: inspect says so (exit 0); only training refuses it */
        snprintf(args, sizeof args, "inspect '%s'", path);
        char *o = NULL, *e = NULL;
        assert_int_equal(run_watched(args, &o, &e), 0);
        free(o);
        free(e);
    }
    tu_rmtree(out);
    snprintf(args, sizeof args, "train '%s' --out '%s' --epochs 1", path, out);
    expect_failure(args, c->train_rc, c->inspect_rc ? names : NULL, c->needle);
    assert_no_outputs(out, c->name);
}

static const char *corpus_dir(void) {
    static char dir[PATH_MAX];
    if (!dir[0]) assert_non_null(realpath("tests/bad_inputs", dir));
    return dir;
}

static void test_text_corpus(void **state) {
    (void)state;
    static const bad_case cases[] = {
        {"mtx_truncated.mtx", 3, 3, "truncated"},
        {"mtx_truncated.mtx.gz", 3, 3, NULL},
        {"mtx_corrupt_stream.mtx.gz", 3, 3, NULL},
        {"mtx_corrupt_bytes.mtx", 3, 3, ":4: expected 'row column value', found '2 ??\xfe 1'"},
        {"mtx_index_out_of_range.mtx", 3, 3, "outside the 3 x 4 matrix"},
        {"mtx_index_zero.mtx", 3, 3, "outside the 3 x 4 matrix"},
        {"mtx_billions_of_genes.mtx", 3, 3, "corrupt header"},
        {"mtx_billions_of_cells.mtx", 3, 3, "corrupt header"},
        {"mtx_hundred_million_genes.mtx", 3, 3, "corrupt header"},
        {"mtx_negative.mtx", 3, 3, "negative value -3"},
        {"mtx_nan.mtx", 3, 3, "non-finite value nan"},
        {"mtx_inf.mtx", 3, 3, "non-finite value inf"},
        {"mtx_non_integer.mtx", 0, 3, "non-integer value 2.5"},
        {"mtx_empty.mtx", 0, 3, "removed all 4 cells"},
        {"mtx_zero_size.mtx", 3, 3, "size line"},
        {"mtx_zero_bytes.mtx", 3, 3, "empty"},
        {"mtx_dense_array.mtx", 3, 3, "banner"},
        {"garbage.mtx", 3, 3, "banner"},
        {"garbage.tsv", 3, 3, NULL},
        {"garbage.h5", 3, 3, "cannot open as HDF5"},
        {"tsv_ragged.tsv", 3, 3, ":3:"},
        {"tsv_negative.tsv", 3, 3, "negative value -2"},
        {"tsv_non_integer.tsv", 0, 3, "non-integer value 0.5"},
        {"tsv_non_utf8_gene.tsv", 3, 3, "not valid UTF-8"},
        {"tsv_header_only.tsv", 3, 3, "no data rows"},
        {"tsv_zero_bytes.tsv", 3, 3, "empty"},
        {"csv_nan.csv", 3, 3, "non-finite value nan"},
        {"csv_inf.csv", 3, 3, "non-finite value inf"},
        {"csv_overflow.csv", 3, 3, "'1e999' is not a number"},
        {"csv_non_utf8_cell.csv", 3, 3, "not valid UTF-8"},
        {"csv_trailing_comma.csv", 3, 3, "column 4"},
        {"csv_unterminated_quote.csv", 3, 3, ":3: field 2 opens a quote here that is never closed"},
        {"csv_misplaced_quote.csv", 3, 3, ":2: a misplaced quote in field 3"},
        {"csv_quoted_comma_ragged.csv", 3, 3, ":3: 4 fields, but the rows above have 3"},
        {"tsv_nul_byte.tsv", 3, 3, ":3: field 2 holds a NUL byte"},
        {"tsv_truncated.tsv.gz", 3, 3, "unexpected end of file (truncated or corrupt file?)"},
        {"tenx_names_mismatch", 3, 3, "3 names but the matrix has 4 cells"},
        {"tenx_too_many_genes", 3, 3, "more lines than the 3 genes"},
        {"tenx_missing_barcodes", 3, 3, "at least one is missing"},
        {"tenx_matrix_is_dir", 3, 3, "is a folder"},
        {"tenx_non_utf8_barcode", 3, 3, "not valid UTF-8"},
    };
    char *tmp = tu_tmpdir();
    char out[PATH_MAX], path[PATH_MAX];
    snprintf(out, sizeof out, "%s", tu_path(tmp, "out"));
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", corpus_dir(), cases[i].name);
        assert_true(tu_exists(path));
        run_case(path, &cases[i], cases[i].name, out);
    }
    /* an empty folder where a 10x folder is expected */
    snprintf(path, sizeof path, "%s", tu_path(tmp, "empty_folder"));
    mkdir(path, 0777);
    bad_case empty = {"empty_folder", 3, 3, "at least one is missing"};
    run_case(path, &empty, "empty_folder", out);
    /* a checkpoint that is not one */
    char args[3 * PATH_MAX];
    snprintf(args, sizeof args, "train --resume '%s/garbage.h5' --out '%s'", corpus_dir(), out);
    expect_failure(args, 3, "garbage.h5", NULL);
    assert_no_outputs(out, "--resume garbage.h5");
    tu_rmtree(tmp);
    free(tmp);
}

/* Pipelines: each names its own problem in its first comment line. */
static void test_pipeline_corpus(void **state) {
    (void)state;
    static const struct {
        const char *name;
        int rc;
        const char *names; /* the file the message must name */
        const char *needle;
    } cases[] = {
        {"pipe_wrong_type.yaml", 2, "pipe_wrong_type.yaml:5:", "'ten' is not an integer"},
        {"pipe_unknown_key.yaml", 2, "pipe_unknown_key.yaml:5:", "unknown key 'epoch'"},
        {"pipe_missing_input.yaml", 2, "pipe_missing_input.yaml", "input.path is missing"},
        {"pipe_input_absent.yaml", 5, "no_such_matrix.mtx", "cannot be opened"},
        {"pipe_input_bad_data.yaml", 3, "mtx_nan.mtx", "non-finite"},
        {"pipe_syntax_error.yaml", 2, "pipe_syntax_error.yaml:", "malformed YAML"},
        {"pipe_wrong_list.yaml", 2, "pipe_wrong_list.yaml:5:", "width -4 is out of range"},
        {"pipe_section_scalar.yaml", 2, "pipe_section_scalar.yaml:2:", "not a mapping"},
        {"garbage.yaml", 2, "garbage.yaml", "malformed YAML"},
    };
    char *tmp = tu_tmpdir();
    char out[PATH_MAX], args[3 * PATH_MAX];
    snprintf(out, sizeof out, "%s", tu_path(tmp, "out"));
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tu_rmtree(out);
        snprintf(args, sizeof args, "run '%s/%s' --out '%s'", corpus_dir(), cases[i].name, out);
        expect_failure(args, cases[i].rc, cases[i].names, cases[i].needle);
        assert_no_outputs(out, cases[i].name);
    }
    /* the output folder of the pipeline itself cannot be made: refused before loading data */
    snprintf(args, sizeof args, "run '%s/pipe_unwritable_output.yaml'", corpus_dir());
    expect_failure(args, 5, "/proc/nbsphere-bad-inputs/out", "cannot create");
    tu_rmtree(tmp);
    free(tmp);
}

/* ---- HDF5 cases, built here ---- */

enum {
    H_OK = 0,
    H_INDPTR_DECREASES,
    H_INDEX_OUT_OF_RANGE,
    H_INDEX_BEYOND_32_BITS,
    H_COUNT_BEYOND_FLOAT,
    H_SHAPE_BILLIONS,
    H_NO_INDICES,
    H_DATA_STRINGS,
    H_INDPTR_2D,
    H_NAN,
    H_NEGATIVE,
    H_FRACTION,
    H_FEW_BARCODES,
    H_LATIN1_BARCODE,
    H_SHAPE_ZERO,
    H_SHAPE_STRING
};

static void w_strings(hid_t loc, const char *name, const char *const *s, hsize_t n) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    hid_t sp = H5Screate_simple(1, &n, NULL);
    hid_t d = H5Dcreate2(loc, name, t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(d >= 0);
    assert_true(H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, s) >= 0);
    H5Dclose(d);
    H5Sclose(sp);
    H5Tclose(t);
}

static void w_array(hid_t loc, const char *name, hid_t ftype, hid_t mtype, const void *v, int rank,
                    const hsize_t *dims) {
    hid_t sp = H5Screate_simple(rank, dims, NULL);
    hid_t d = H5Dcreate2(loc, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(d >= 0);
    assert_true(H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0);
    H5Dclose(d);
    H5Sclose(sp);
}

/* The fixture: 3 genes x 4 cells (CSC by cell), 5 entries, with one fault. */
static void write_10x(const char *path, int fault) {
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(f >= 0);
    hid_t g = H5Gcreate2(f, "matrix", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int64_t shape[2] = {3, fault == H_SHAPE_BILLIONS ? 3000000000LL : fault == H_SHAPE_ZERO ? 0 : 4};
    hsize_t two = 2, n5 = 5, n4 = 4, n3 = 3;
    if (fault == H_SHAPE_STRING) {
        const char *s[2] = {"3", "4"};
        w_strings(g, "shape", s, 2);
    } else {
        w_array(g, "shape", H5T_STD_I64LE, H5T_NATIVE_INT64, shape, 1, &two);
    }
    float data[5] = {5, 1, 2, 7, 3};
    if (fault == H_NAN) data[2] = 0.0f / 0.0f;
    if (fault == H_NEGATIVE) data[2] = -2;
    if (fault == H_FRACTION) data[2] = 0.25f;
    if (fault == H_DATA_STRINGS) {
        const char *s[5] = {"5", "1", "2", "7", "3"};
        w_strings(g, "data", s, 5);
    } else if (fault == H_COUNT_BEYOND_FLOAT) { /* stored as double: 1e300 fits there, not in float */
        double big[5] = {5, 1, 1e300, 7, 3};
        w_array(g, "data", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, big, 1, &n5);
    } else {
        w_array(g, "data", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, data, 1, &n5);
    }
    int64_t indices[5] = {0, 1, 2, 0, 2};
    if (fault == H_INDEX_OUT_OF_RANGE) indices[3] = 7;
    if (fault == H_INDEX_BEYOND_32_BITS) indices[3] = 5000000000LL;
    if (fault != H_NO_INDICES) w_array(g, "indices", H5T_STD_I64LE, H5T_NATIVE_INT64, indices, 1, &n5);
    int64_t indptr[5] = {0, 2, 3, 3, 5};
    if (fault == H_INDPTR_DECREASES) indptr[2] = 1;
    if (fault == H_INDPTR_2D) {
        hsize_t d2[2] = {5, 1};
        w_array(g, "indptr", H5T_STD_I64LE, H5T_NATIVE_INT64, indptr, 2, d2);
    } else {
        hsize_t n = 5;
        w_array(g, "indptr", H5T_STD_I64LE, H5T_NATIVE_INT64, indptr, 1, &n);
    }
    const char *bc[4] = {"AAAC-1", "AAAG-1", "AAAT-1", "AACA-1"};
    if (fault == H_LATIN1_BARCODE) bc[1] = "AA\xe9G-1";
    w_strings(g, "barcodes", bc, fault == H_FEW_BARCODES ? 3 : n4);
    hid_t ft = H5Gcreate2(g, "features", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    const char *ids[3] = {"ENSG1", "ENSG2", "ENSG3"}, *names[3] = {"CD3E", "LYZ", "NKG7"};
    const char *types[3] = {"Gene Expression", "Gene Expression", "Gene Expression"};
    w_strings(ft, "id", ids, n3);
    w_strings(ft, "name", names, n3);
    w_strings(ft, "feature_type", types, n3);
    H5Gclose(ft);
    H5Gclose(g);
    H5Fclose(f);
}

/* An h5ad with a CSR X (4 cells x 3 genes) and one fault. */
enum { A_OK = 0, A_NO_X, A_SHAPE_BILLIONS, A_SHAPE_STRING, A_INDEX_OUT_OF_RANGE, A_INDPTR_DECREASES, A_INF, A_FEW_VAR };

static void w_attr_string(hid_t obj, const char *name, const char *value) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(H5Awrite(a, t, &value) >= 0);
    H5Aclose(a);
    H5Sclose(sp);
    H5Tclose(t);
}

static void w_dataframe(hid_t f, const char *name, const char *const *index, hsize_t n) {
    hid_t g = H5Gcreate2(f, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    w_attr_string(g, "_index", "_index");
    w_attr_string(g, "encoding-type", "dataframe");
    w_strings(g, "_index", index, n);
    H5Gclose(g);
}

static void write_h5ad(const char *path, int fault) {
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(f >= 0);
    if (fault != A_NO_X) {
        hid_t g = H5Gcreate2(f, "X", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        w_attr_string(g, "encoding-type", "csr_matrix");
        if (fault == A_SHAPE_STRING) {
            w_attr_string(g, "shape", "(4, 3)");
        } else {
            int64_t shape[2] = {fault == A_SHAPE_BILLIONS ? 3000000000LL : 4, 3};
            hsize_t two = 2;
            hid_t sp = H5Screate_simple(1, &two, NULL);
            hid_t a = H5Acreate2(g, "shape", H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
            H5Awrite(a, H5T_NATIVE_INT64, shape);
            H5Aclose(a);
            H5Sclose(sp);
        }
        float data[5] = {5, 1, 2, 7, 3};
        if (fault == A_INF) data[4] = 1.0f / 0.0f;
        int32_t indices[5] = {0, 1, 2, 0, 2}, indptr[5] = {0, 2, 3, 3, 5};
        if (fault == A_INDEX_OUT_OF_RANGE) indices[0] = 3;
        if (fault == A_INDPTR_DECREASES) indptr[2] = 1;
        hsize_t n5 = 5;
        w_array(g, "data", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, data, 1, &n5);
        w_array(g, "indices", H5T_STD_I32LE, H5T_NATIVE_INT32, indices, 1, &n5);
        w_array(g, "indptr", H5T_STD_I32LE, H5T_NATIVE_INT32, indptr, 1, &n5);
        H5Gclose(g);
    }
    const char *cells[4] = {"c1", "c2", "c3", "c4"}, *genes[3] = {"CD3E", "LYZ", "NKG7"};
    w_dataframe(f, "obs", cells, 4);
    w_dataframe(f, "var", genes, fault == A_FEW_VAR ? 2 : 3);
    H5Fclose(f);
}

static void test_hdf5_corpus(void **state) {
    (void)state;
    static const struct {
        const char *name;
        int fault, h5ad;
        int inspect_rc, train_rc;
        const char *needle;
    } cases[] = {
        {"10x_indptr_decreases.h5", H_INDPTR_DECREASES, 0, 3, 3, "indptr decreases"},
        {"10x_index_out_of_range.h5", H_INDEX_OUT_OF_RANGE, 0, 3, 3, "out of range"},
        {"10x_index_beyond_32_bits.h5", H_INDEX_BEYOND_32_BITS, 0, 3, 3, "index 2147483647 (or larger) at entry 3"},
        {"10x_count_beyond_float.h5", H_COUNT_BEYOND_FLOAT, 0, 3, 3, "non-finite value inf (or a count beyond 3.4e38)"},
        {"10x_shape_billions.h5", H_SHAPE_BILLIONS, 0, 3, 3, "expected 3000000001"},
        {"10x_no_indices.h5", H_NO_INDICES, 0, 3, 3, "indices"},
        {"10x_data_strings.h5", H_DATA_STRINGS, 0, 3, 3, "numeric"},
        {"10x_indptr_2d.h5", H_INDPTR_2D, 0, 3, 3, "1-D"},
        {"10x_nan.h5", H_NAN, 0, 3, 3, "non-finite value"},
        {"10x_negative.h5", H_NEGATIVE, 0, 3, 3, "negative value -2"},
        {"10x_fraction.h5", H_FRACTION, 0, 0, 3, "non-integer value 0.25"},
        {"10x_few_barcodes.h5", H_FEW_BARCODES, 0, 3, 3, "barcodes"},
        {"10x_latin1_barcode.h5", H_LATIN1_BARCODE, 0, 3, 3, "not valid UTF-8"},
        {"10x_shape_zero.h5", H_SHAPE_ZERO, 0, 3, 3, "shape"},
        {"10x_shape_string.h5", H_SHAPE_STRING, 0, 3, 3, "shape"},
        {"no_x.h5ad", A_NO_X, 1, 3, 3, NULL},
        {"shape_billions.h5ad", A_SHAPE_BILLIONS, 1, 3, 3, "shape"},
        {"shape_string.h5ad", A_SHAPE_STRING, 1, 3, 3, "shape"},
        {"index_out_of_range.h5ad", A_INDEX_OUT_OF_RANGE, 1, 3, 3, "out of range"},
        {"indptr_decreases.h5ad", A_INDPTR_DECREASES, 1, 3, 3, "indptr decreases"},
        {"inf.h5ad", A_INF, 1, 3, 3, "non-finite value inf"},
        {"few_var_names.h5ad", A_FEW_VAR, 1, 3, 3, "var"},
    };
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    char *tmp = tu_tmpdir();
    char out[PATH_MAX], path[PATH_MAX];
    snprintf(out, sizeof out, "%s", tu_path(tmp, "out"));
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(path, sizeof path, "%s", tu_path(tmp, cases[i].name));
        if (cases[i].h5ad) write_h5ad(path, cases[i].fault);
        else write_10x(path, cases[i].fault);
        bad_case c = {cases[i].name, cases[i].inspect_rc, cases[i].train_rc, cases[i].needle};
        run_case(path, &c, cases[i].name, out);
    }
    /* a good file, cut short and with its metadata overwritten */
    snprintf(path, sizeof path, "%s", tu_path(tmp, "good.h5"));
    write_10x(path, H_OK);
    size_t n = 0;
    unsigned char *bytes = (unsigned char *)tu_read_file(path, &n);
    assert_non_null(bytes);
    assert_true(n > 400);
    char args[3 * PATH_MAX];
    snprintf(args, sizeof args, "inspect '%s'", path);
    char *o = NULL, *e = NULL;
    assert_int_equal(run_watched(args, &o, &e), 0); /* the fixture itself is fine */
    assert_non_null(strstr(o, "4 cells"));
    free(o);
    free(e);
    snprintf(path, sizeof path, "%s", tu_path(tmp, "truncated.h5"));
    assert_int_equal(tu_write_bytes(path, bytes, n / 2), 0);
    bad_case cut = {"truncated.h5", 3, 3, NULL};
    run_case(path, &cut, "truncated.h5", out);
    /* bytes 8..200 hold the superblock and the root group's header */
    for (size_t k = 8; k < 200; k++) bytes[k] ^= 0xa5;
    snprintf(path, sizeof path, "%s", tu_path(tmp, "corrupt.h5"));
    assert_int_equal(tu_write_bytes(path, bytes, n), 0);
    bad_case bad = {"corrupt.h5", 3, 3, NULL};
    run_case(path, &bad, "corrupt.h5", out);
    free(bytes);
    tu_rmtree(tmp);
    free(tmp);
}

/* ---- covariates: bad columns through train, embed and diagnose ---- */

#define COV_DATA "tests/model_v2/sim_mtx" /* 60 cells, SIM0000001-1 .. SIM0000060-1 */

/* A labels table for COV_DATA's cells with one fault: cell 4's batch or mito replaced by `value`,
 * or cell `drop` left out (0: none). batch is a/b, mito a number. */
static void write_cov_table(const char *path, const char *column, const char *value, int drop) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "barcode\tbatch\tmito\n");
    for (int i = 1; i <= 60; i++) {
        if (i == drop) continue;
        const int fault = i == 4 && column;
        fprintf(f, "SIM%07d-1\t%s\t%s\n", i, fault && !strcmp(column, "batch") ? value : i % 2 ? "a" : "b",
                fault && !strcmp(column, "mito") ? value : i % 3 ? "0.25" : "1.5");
    }
    fclose(f);
}

/* An h5ad of 4 cells whose obs column batch holds 3 values. */
static void write_h5ad_short_column(const char *path) {
    write_h5ad(path, A_OK);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t obs = H5Gopen2(f, "obs", H5P_DEFAULT);
    const char *b[3] = {"a", "b", "a"};
    w_strings(obs, "batch", b, 3);
    H5Gclose(obs);
    H5Fclose(f);
}

static void test_covariate_inputs(void **state) {
    (void)state;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    char *tmp = tu_tmpdir();
    char out[PATH_MAX], path[PATH_MAX], args[4 * PATH_MAX];
    snprintf(out, sizeof out, "%s", tu_path(tmp, "out"));
    static const struct {
        const char *file, *column, *value;
        int drop;
        const char *sets; /* the covariate keys */
        int rc;
        const char *needle;
    } cases[] = {
        {"cov_missing_column.tsv", NULL, NULL, 0, "--set input.batch_key=donor", 3,
         "input.batch_key 'donor': "},
        {"cov_empty.tsv", "batch", "", 0, "--set input.batch_key=batch", 3,
         "cell 'SIM0000004-1' has an empty or NA value in column 'batch'"},
        {"cov_na.tsv", "batch", "NA", 0, "--set input.categorical_covariates=[batch]", 3,
         "cell 'SIM0000004-1' has an empty or NA value in column 'batch'"},
        {"cov_text_number.tsv", "mito", "high", 0, "--set input.continuous_covariates=[mito]", 3,
         "cell 'SIM0000004-1' has 'high' in column 'mito' (input.continuous_covariates), not a number"},
        {"cov_infinite.tsv", "mito", "inf", 0, "--set input.continuous_covariates=[mito]", 3,
         "cell 'SIM0000004-1' has the non-finite value 'inf' in column 'mito'"},
        {"cov_na_number.tsv", "mito", "NaN", 0, "--set input.continuous_covariates=[mito]", 3,
         "cell 'SIM0000004-1' has an empty or NA value in column 'mito'"},
        {"cov_cell_missing.tsv", NULL, NULL, 9, "--set input.batch_key=batch", 3,
         "cell 'SIM0000009-1' (cell 9 of the data) is not listed, so it has no 'batch'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(path, sizeof path, "%s", tu_path(tmp, cases[i].file));
        write_cov_table(path, cases[i].column, cases[i].value, cases[i].drop);
        tu_rmtree(out);
        snprintf(args, sizeof args, "train %s --out '%s' --epochs 1 --set input.labels_path='%s' %s", COV_DATA, out,
                 path, cases[i].sets);
        expect_failure(args, cases[i].rc, cases[i].file, cases[i].needle);
        assert_no_outputs(out, cases[i].file);
    }
    /* one column without barcodes: one value per cell in order, so its length must be the cells' */
    snprintf(path, sizeof path, "%s", tu_path(tmp, "cov_short.tsv"));
    assert_int_equal(tu_write_file(path, "batch\na\nb\na\n"), 0);
    snprintf(args, sizeof args, "train %s --out '%s' --epochs 1 --set input.labels_path='%s' --set input.batch_key=batch",
             COV_DATA, out, path);
    expect_failure(args, 3, "cov_short.tsv", "one label per cell in the matrix's order is expected: 60 lines");
    /* an obs column of another length than obs */
    snprintf(path, sizeof path, "%s", tu_path(tmp, "cov_short_column.h5ad"));
    write_h5ad_short_column(path);
    snprintf(args, sizeof args, "train '%s' --out '%s' --epochs 1 --set input.batch_key=batch", path, out);
    expect_failure(args, 3, "cov_short_column.h5ad", "obs/batch has 3 names, but the matrix has 4");
    assert_no_outputs(out, "cov_short_column.h5ad");
    /* nowhere to read the column from; the configuration itself */
    snprintf(args, sizeof args, "train %s --out '%s' --epochs 1 --set input.batch_key=batch", COV_DATA, out);
    expect_failure(args, 2, "sim_mtx", "input.batch_key 'batch': there is no labels table");
    snprintf(args, sizeof args, "train %s --out '%s' --set input.batch_key=batch --set input.categorical_covariates=[batch]",
             COV_DATA, out);
    expect_failure(args, 2, "input.categorical_covariates", "column 'batch' is already the batch_key");
    snprintf(args, sizeof args, "train %s --out '%s' --set model.dispersion=gene-batch", COV_DATA, out);
    expect_failure(args, 2, "model.dispersion", "gene_batch needs input.batch_key");

    /* new data for a model with a batch: an unknown category, a missing column, no table */
    char good[PATH_MAX], model[PATH_MAX];
    snprintf(good, sizeof good, "%s", tu_path(tmp, "cov_good.tsv"));
    write_cov_table(good, NULL, NULL, 0);
    snprintf(model, sizeof model, "%s/model.h5", out);
    tu_rmtree(out);
    snprintf(args, sizeof args, "train %s --out '%s' --epochs 1 --set input.labels_path='%s' --set input.batch_key=batch "
             "--set input.continuous_covariates=[mito]", COV_DATA, out, good);
    char *o = NULL, *e = NULL;
    int rc = run_watched(args, &o, &e);
    if (rc) print_message("%s\n", e ? e : "");
    assert_int_equal(rc, 0);
    free(o), free(e);
    char emb[PATH_MAX];
    snprintf(emb, sizeof emb, "%s", tu_path(tmp, "embed"));
    snprintf(path, sizeof path, "%s", tu_path(tmp, "cov_new_batch.tsv"));
    write_cov_table(path, "batch", "c", 0);
    for (int diagnose = 0; diagnose < 2; diagnose++) {
        const char *cmd = diagnose ? "diagnose" : "embed";
        snprintf(args, sizeof args, "%s '%s' %s --out '%s' --labels '%s'", cmd, model, COV_DATA, emb, path);
        expect_failure(args, 3, "cov_new_batch.tsv",
                       "cell 'SIM0000004-1' has 'c' in column 'batch', a category the model was not trained with; it "
                       "knows 2: a, b");
        snprintf(path, sizeof path, "%s/cov_missing_column.tsv", tmp);
        snprintf(args, sizeof args, "%s '%s' %s --out '%s' --labels '%s'", cmd, model, COV_DATA, emb, path);
        FILE *f = fopen(path, "w"); /* the barcodes and mito, no batch */
        assert_non_null(f);
        fprintf(f, "barcode\tmito\n");
        for (int i = 1; i <= 60; i++) fprintf(f, "SIM%07d-1\t1\n", i);
        fclose(f);
        expect_failure(args, 3, "cov_missing_column.tsv", "the model's covariate 'batch': ");
        snprintf(args, sizeof args, "%s '%s' %s --out '%s'", cmd, model, COV_DATA, emb);
        expect_failure(args, 2, "sim_mtx", "the model's covariate 'batch': there is no labels table");
        snprintf(path, sizeof path, "%s", tu_path(tmp, "cov_new_batch.tsv"));
    }
    /* embed --adapt: the refusal points to it; bad epochs; nothing new; a new batch; no covariates */
    snprintf(args, sizeof args, "embed '%s' %s --out '%s' --labels '%s'", model, COV_DATA, emb, path);
    expect_failure(args, 3, "cov_new_batch.tsv", "'nbsphere embed --adapt'");
    static const char *const bad_epochs[] = {"--adapt --adapt-epochs 0", "--adapt --adapt-epochs -3",
                                             "--adapt --adapt-epochs 2.5", "--adapt --adapt-epochs"};
    for (size_t i = 0; i < sizeof bad_epochs / sizeof *bad_epochs; i++) {
        snprintf(args, sizeof args, "embed '%s' %s --out '%s' --labels '%s' %s", model, COV_DATA, emb, path, bad_epochs[i]);
        expect_failure(args, 2, "--adapt-epochs", "needs a whole number of epochs from 1");
    }
    snprintf(args, sizeof args, "embed '%s' %s --out '%s' --labels '%s' --adapt-epochs 5", model, COV_DATA, emb, path);
    expect_failure(args, 2, "--adapt-epochs", "is for --adapt");
    tu_rmtree(emb);
    snprintf(args, sizeof args, "embed '%s' %s --out '%s' --labels '%s' --adapt", model, COV_DATA, emb, good);
    rc = run_watched(args, &o, &e);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(e, "nothing to add; the cells are embedded with the model as it is, and no model.h5"));
    assert_true(tu_exists(tu_path(emb, "embedding.tsv")));
    assert_false(tu_exists(tu_path(emb, "model.h5")));
    free(o), free(e);
    snprintf(args, sizeof args, "embed '%s' %s --out '%s' --labels '%s' --adapt --adapt-epochs 3", model, COV_DATA, emb,
             path);
    expect_failure(args, 3, "'c' of 'batch' (1 cells)", "training their weights needs at least 2");
    FILE *nf = fopen(path, "w"); /* cells 1-20 of a new batch c */
    assert_non_null(nf);
    fprintf(nf, "barcode\tbatch\tmito\n");
    for (int i = 1; i <= 60; i++) fprintf(nf, "SIM%07d-1\t%s\t%s\n", i, i <= 20 ? "c" : i % 2 ? "a" : "b", i % 3 ? "0.25" : "1.5");
    fclose(nf);
    rc = run_watched(args, &o, &e);
    if (rc) print_message("%s\n", e ? e : "");
    assert_int_equal(rc, 0);
    assert_non_null(strstr(e, "new categories 'c' of 'batch' (20 cells)"));
    assert_non_null(strstr(e, "--adapt: 3 epochs on 20 cells"));
    assert_non_null(strstr(e, "validation ELBO"));
    assert_true(tu_exists(tu_path(emb, "model.h5")) && tu_exists(tu_path(emb, "training_log.tsv")));
    free(o), free(e);
    /* the grown model knows 'c' now: embedding those cells needs no --adapt */
    char grown[PATH_MAX], emb2[PATH_MAX];
    snprintf(grown, sizeof grown, "%s/model.h5", emb);
    snprintf(emb2, sizeof emb2, "%s", tu_path(tmp, "embed2"));
    snprintf(args, sizeof args, "embed '%s' %s --out '%s' --labels '%s'", grown, COV_DATA, emb2, path);
    rc = run_watched(args, &o, &e);
    assert_int_equal(rc, 0);
    free(o), free(e);
    tu_rmtree(out);
    snprintf(args, sizeof args, "train %s --out '%s' --epochs 1", COV_DATA, out);
    assert_int_equal(run_watched(args, &o, &e), 0);
    free(o), free(e);
    snprintf(args, sizeof args, "embed '%s' %s --out '%s' --labels '%s' --adapt", model, COV_DATA, emb2, path);
    expect_failure(args, 2, "model.h5", "has no categorical covariate");
    tu_rmtree(tmp);
    free(tmp);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_corpus),
        cmocka_unit_test(test_pipeline_corpus),
        cmocka_unit_test(test_hdf5_corpus),
        cmocka_unit_test(test_covariate_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
