#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hdf5.h>
#include <hdf5_hl.h>
#include <sys/stat.h>
#include <zlib.h>

#include "nbsphere/error.h"
#include "nbsphere/io.h"
#include "nbsphere/pipeline.h"

static void check_kind(const char *rel, nbs_format want) {
    nbs_error err = {0};
    nbs_format f = NBS_FMT_AUTO;
    assert_int_equal(nbs_io_h5_kind(tu_data(rel), &f, &err), NBS_OK);
    assert_int_equal(f, want);
}

static void test_kind_real_files(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("tenx_h5/scanpy_tests/3.0.0/filtered_feature_bc_matrix.h5");
    check_kind("tenx_h5/scanpy_tests/3.0.0/filtered_feature_bc_matrix.h5", NBS_FMT_10X_H5);
    check_kind("tenx_h5/scanpy_tests/1.2.0/filtered_gene_bc_matrices_h5.h5", NBS_FMT_10X_H5);
    check_kind("tenx_h5/scanpy_tests/1.2.0/multiple_genomes.h5", NBS_FMT_10X_H5);
    NBS_REQUIRE_DATA("pbmc3k/pbmc3k_counts.h5ad");
    check_kind("pbmc3k/pbmc3k_counts.h5ad", NBS_FMT_H5AD);
}

static void test_kind_garbage_is_error(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char path[4096];
    snprintf(path, sizeof path, "%s/garbage.h5", dir);
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    fputs("\x89HDF\r\n\x1a\n this is not really hdf5", fp);
    fclose(fp);
    nbs_error err = {0};
    nbs_format f = NBS_FMT_AUTO;
    assert_int_not_equal(nbs_io_h5_kind(path, &f, &err), NBS_OK);
    assert_non_null(strstr(err.msg, "garbage.h5"));
    tu_rmtree(dir);
    free(dir);
}

/* A valid HDF5 file with neither 10x nor AnnData groups must be refused, naming the file. */
static void test_kind_other_hdf5_is_error(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char path[4096];
    snprintf(path, sizeof path, "%s/other.h5", dir);
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(f >= 0);
    hid_t g = H5Gcreate2(f, "genome_without_matrix", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(g >= 0);
    H5Gclose(g);
    H5Fclose(f);
    nbs_error err = {0};
    nbs_format fmt = NBS_FMT_AUTO;
    assert_int_equal(nbs_io_h5_kind(path, &fmt, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "other.h5"));
    assert_non_null(strstr(err.msg, "neither"));
    tu_rmtree(dir);
    free(dir);
}

static nbs_matrix *read_10x(const char *rel, const char *genome) {
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    int rc = nbs_io_read_10x_h5(tu_data(rel), genome, &m, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, NBS_OK);
    return m;
}

/* The same real 10x v3 matrix as HDF5 and as an MTX folder must read identically. */
static void test_10x_v3_matches_mtx(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("tenx_h5/scanpy_tests/3.0.0/filtered_feature_bc_matrix.h5");
    nbs_matrix *h = read_10x("tenx_h5/scanpy_tests/3.0.0/filtered_feature_bc_matrix.h5", NULL);
    nbs_matrix *t = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_10x_mtx_dir(tu_data("tenx_h5/scanpy_tests/3.0.0/filtered_feature_bc_matrix"), &t, &err), NBS_OK);
    assert_int_equal(h->n_cells, 1107);
    assert_int_equal(h->n_genes, 507);
    assert_int_equal(h->nnz, 23866);
    assert_int_equal(t->nnz, h->nnz);
    assert_memory_equal(h->indptr, t->indptr, (size_t)(h->n_cells + 1) * sizeof *h->indptr);
    assert_memory_equal(h->indices, t->indices, (size_t)h->nnz * sizeof *h->indices);
    assert_memory_equal(h->data, t->data, (size_t)h->nnz * sizeof *h->data);
    for (int64_t c = 0; c < h->n_cells; c++) assert_string_equal(h->barcodes[c], t->barcodes[c]);
    for (int64_t g = 0; g < h->n_genes; g++) {
        assert_string_equal(h->gene_ids[g], t->gene_ids[g]);
        assert_string_equal(h->gene_names[g], t->gene_names[g]);
    }
    nbs_matrix_free(h);
    nbs_matrix_free(t);
}

static void test_10x_v2_and_visium(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("tenx_h5/scanpy_tests/1.2.0/filtered_gene_bc_matrices_h5.h5");
    nbs_matrix *m = read_10x("tenx_h5/scanpy_tests/1.2.0/filtered_gene_bc_matrices_h5.h5", NULL);
    assert_int_equal(m->n_cells, 12);
    assert_int_equal(m->n_genes, 343);
    assert_int_equal(m->nnz, 12);
    for (int64_t k = 0; k < m->nnz; k++) assert_true(m->data[k] == 1.0f);
    nbs_matrix_free(m);
    NBS_REQUIRE_DATA("tenx_h5/visium_placenta/filtered_feature_bc_matrix.h5");
    m = read_10x("tenx_h5/visium_placenta/filtered_feature_bc_matrix.h5", NULL);
    assert_int_equal(m->n_cells, 2898);
    assert_int_equal(m->n_genes, 19465);
    assert_int_equal(m->nnz, 1069459);
    float mx = 0;
    for (int64_t k = 0; k < m->nnz; k++) mx = m->data[k] > mx ? m->data[k] : mx;
    assert_true(mx == 439.0f);
    nbs_matrix_free(m);
}

static void test_10x_several_genomes(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("tenx_h5/scanpy_tests/1.2.0/multiple_genomes.h5");
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_10x_h5(tu_data("tenx_h5/scanpy_tests/1.2.0/multiple_genomes.h5"), NULL, &m, &err),
                     NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "several genomes"));
    assert_non_null(strstr(err.msg, "hg19_chr21"));
    assert_non_null(strstr(err.msg, "input.genome"));
    assert_int_equal(nbs_io_read_10x_h5(tu_data("tenx_h5/scanpy_tests/1.2.0/multiple_genomes.h5"), "nonexistent", &m, &err),
                     NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "no genome 'nonexistent'"));
    m = read_10x("tenx_h5/scanpy_tests/1.2.0/multiple_genomes.h5", "hg19_chr21");
    assert_int_equal(m->n_genes, 343);
    nbs_matrix_free(m);
}

/* A v3 file written here with one thing wrong at a time. */
static void write_v3(const char *path, int64_t n_cells, const int64_t *indptr, int64_t n_ptr,
                     const int64_t *indices, int64_t nnz, int string_data) {
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hid_t g = H5Gcreate2(f, "matrix", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int64_t shape[2] = {3, n_cells};
    hsize_t two = 2, np = (hsize_t)n_ptr, nz = (hsize_t)nnz;
    H5LTmake_dataset(g, "shape", 1, &two, H5T_NATIVE_INT64, shape);
    H5LTmake_dataset(g, "indptr", 1, &np, H5T_NATIVE_INT64, indptr);
    H5LTmake_dataset(g, "indices", 1, &nz, H5T_NATIVE_INT64, indices);
    if (string_data) {
        H5LTmake_dataset_string(g, "data", "abc");
    } else {
        double data[8] = {1, 2, 3, 4, 5, 6, 7, 8};
        H5LTmake_dataset(g, "data", 1, &nz, H5T_NATIVE_DOUBLE, data);
    }
    H5Gclose(g);
    H5Fclose(f);
}

static void expect_10x_error(const char *path, const char *needle) {
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_10x_h5(path, NULL, &m, &err), NBS_ERR_INPUT);
    assert_null(m);
    if (!strstr(err.msg, needle)) print_message("message was: %s\n", err.msg);
    assert_non_null(strstr(err.msg, needle));
}

static void test_10x_bad_files(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    const char *p = tu_path(dir, "bad.h5");
    int64_t ptr[3] = {0, 2, 3}, idx[3] = {0, 2, 1};
    /* shape claims 2e9 cells: indptr's length is checked before anything that size is allocated */
    write_v3(p, 2000000000, ptr, 3, idx, 3, 0);
    expect_10x_error(p, "indptr has 3 values, expected 2000000001");
    int64_t bad_ptr[3] = {0, 3, 2};
    write_v3(p, 2, bad_ptr, 3, idx, 2, 0);
    expect_10x_error(p, "indptr decreases at position 1");
    int64_t oob[3] = {0, 5, 1};
    write_v3(p, 2, ptr, 3, oob, 3, 0);
    expect_10x_error(p, "out of range");
    write_v3(p, 2, ptr, 3, idx, 3, 1);
    expect_10x_error(p, "must be a 1-D numeric array");
    write_v3(p, 2, ptr, 3, idx, 3, 0); /* all numbers fine, but no barcodes */
    expect_10x_error(p, "features is missing");
    tu_rmtree(dir);
    free(dir);
}

/* ---- feature types (CITE-seq, Multiome) and gzip'd .h5 ---- */

/* A 1-D fixed-length string dataset, as Cell Ranger writes its names. */
static void w_strings(hid_t loc, const char *name, const char *const *s, hsize_t n) {
    size_t w = 1;
    for (hsize_t i = 0; i < n; i++) w = strlen(s[i]) > w ? strlen(s[i]) : w;
    char *buf = calloc(n, w);
    for (hsize_t i = 0; i < n; i++) memcpy(buf + i * w, s[i], strlen(s[i]));
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, w);
    H5Tset_strpad(t, H5T_STR_NULLPAD);
    hid_t sp = H5Screate_simple(1, &n, NULL);
    hid_t d = H5Dcreate2(loc, name, t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0);
    H5Dclose(d);
    H5Sclose(sp);
    H5Tclose(t);
    free(buf);
}

/* CITE-seq-like v3 file: 5 features (3 genes, 2 antibodies, interleaved as Cell Ranger never
 * does, so that keeping the right columns is checked) x 3 cells; types NULL writes none. Cell c
 * has count 10 * (feature + 1) + c in feature (c + feature) % 2 == 0. */
static const char *const CITE_IDS[5] = {"ENSG01", "CD3_TotalSeqB", "ENSG02", "ENSG03", "CD19_TotalSeqB"};
static const char *const CITE_NAMES[5] = {"CD3E", "CD3", "LYZ", "MS4A1", "CD19"};
static const char *const CITE_TYPES[5] = {"Gene Expression", "Antibody Capture", "Gene Expression",
                                          "Gene Expression", "Antibody Capture"};
static void write_cite(const char *path, const char *const *types) {
    int64_t indptr[4] = {0}, indices[15], nnz = 0;
    float data[15];
    for (int c = 0; c < 3; c++) {
        for (int g = 0; g < 5; g++)
            if ((c + g) % 2 == 0) indices[nnz] = g, data[nnz++] = (float)(10 * (g + 1) + c);
        indptr[c + 1] = nnz;
    }
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hid_t g = H5Gcreate2(f, "matrix", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int64_t shape[2] = {5, 3};
    hsize_t two = 2, four = 4, nz = (hsize_t)nnz;
    H5LTmake_dataset(g, "shape", 1, &two, H5T_NATIVE_INT64, shape);
    H5LTmake_dataset(g, "indptr", 1, &four, H5T_NATIVE_INT64, indptr);
    H5LTmake_dataset(g, "indices", 1, &nz, H5T_NATIVE_INT64, indices);
    H5LTmake_dataset(g, "data", 1, &nz, H5T_NATIVE_FLOAT, data);
    const char *bc[3] = {"AAAC-1", "AAAG-1", "AAAT-1"};
    w_strings(g, "barcodes", bc, 3);
    hid_t ft = H5Gcreate2(g, "features", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    w_strings(ft, "id", CITE_IDS, 5);
    w_strings(ft, "name", CITE_NAMES, 5);
    if (types) w_strings(ft, "feature_type", types, 5);
    H5Gclose(ft);
    H5Gclose(g);
    H5Fclose(f);
}

/* The same 5 x 3 counts as a 10x folder; a features.tsv of two columns when types is NULL. */
static void write_cite_mtx(const char *dir, const char *const *types) {
    char text[1024];
    size_t n = (size_t)snprintf(text, sizeof text, "%%%%MatrixMarket matrix coordinate integer general\n5 3 8\n");
    for (int c = 0; c < 3; c++)
        for (int g = 0; g < 5; g++)
            if ((c + g) % 2 == 0) n += (size_t)snprintf(text + n, sizeof text - n, "%d %d %d\n", g + 1, c + 1, 10 * (g + 1) + c);
    assert_int_equal(tu_write_file(tu_path(dir, "matrix.mtx"), text), 0);
    n = 0;
    for (int g = 0; g < 5; g++)
        n += (size_t)snprintf(text + n, sizeof text - n, "%s\t%s%s%s\n", CITE_IDS[g], CITE_NAMES[g], types ? "\t" : "",
                              types ? types[g] : "");
    assert_int_equal(tu_write_file(tu_path(dir, "features.tsv"), text), 0);
    assert_int_equal(tu_write_file(tu_path(dir, "barcodes.tsv"), "AAAC-1\nAAAG-1\nAAAT-1\n"), 0);
}

static char logged[4096];
static void capture_log(int level, const char *msg, void *user) {
    (void)level;
    (void)user;
    size_t n = strlen(logged);
    snprintf(logged + n, sizeof logged - n, "%s\n", msg);
}

/* nbs_io_read on path with input.feature_types = types (NULL: the built-in default). */
static int read_typed(const char *path, const char *types, nbs_matrix **m, nbs_error *err) {
    nbs_config c;
    nbs_config_defaults(&c);
    snprintf(c.input.path, sizeof c.input.path, "%s", path);
    if (types) snprintf(c.input.feature_types, sizeof c.input.feature_types, "%s", types);
    logged[0] = '\0';
    nbs_log_set_handler(capture_log, NULL);
    int rc = nbs_io_read(&c.input, m, err);
    nbs_log_set_handler(NULL, NULL);
    if (rc && strcmp(types ? types : "", "Peaks")) print_message("%s\n", err->msg); /* Peaks: the failing case */
    return rc;
}

/* m holds exactly the CITE features `feat` (in file order), with their counts. */
static void expect_cite_features(const nbs_matrix *m, const int *feat, int n) {
    assert_int_equal(m->n_cells, 3);
    assert_int_equal(m->n_genes, n);
    for (int j = 0; j < n; j++) {
        assert_string_equal(m->gene_names[j], CITE_NAMES[feat[j]]);
        assert_string_equal(m->gene_ids[j], CITE_IDS[feat[j]]);
    }
    for (int c = 0; c < 3; c++) {
        int64_t k = m->indptr[c];
        for (int j = 0; j < n; j++) {
            if ((c + feat[j]) % 2) continue;
            assert_true(k < m->indptr[c + 1]);
            assert_int_equal(m->indices[k], j);
            assert_true(m->data[k] == (float)(10 * (feat[j] + 1) + c));
            k++;
        }
        assert_int_equal(k, m->indptr[c + 1]);
    }
}

static const int GEX[3] = {0, 2, 3}, ADT[2] = {1, 4}, ALL[5] = {0, 1, 2, 3, 4};

/* The 10x HDF5 and folder layouts of the same CITE-seq counts: by default the gene-expression
 * rows only, as scanpy's read_10x_h5(gex_only=True), with the drop in the log; `all` or a list
 * keeps others; files without types (v2, two-column features.tsv) keep everything. */
static void test_feature_types(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char h5[4096], mtx[4096];
    snprintf(h5, sizeof h5, "%s", tu_path(dir, "cite.h5"));
    snprintf(mtx, sizeof mtx, "%s", tu_path(dir, "cite_mtx"));
    mkdir(mtx, 0777);
    write_cite(h5, CITE_TYPES);
    write_cite_mtx(mtx, CITE_TYPES);
    const char *paths[2] = {h5, mtx};
    for (int i = 0; i < 2; i++) {
        nbs_matrix *m = NULL;
        nbs_error err = {0};
        assert_int_equal(read_typed(paths[i], NULL, &m, &err), NBS_OK);
        expect_cite_features(m, GEX, 3);
        if (!strstr(logged, "kept 3 features of type Gene Expression; dropped 2 Antibody Capture"))
            print_message("log was: %s\n", logged);
        assert_non_null(strstr(logged, "kept 3 features of type Gene Expression; dropped 2 Antibody Capture"));
        assert_non_null(strstr(logged, "input.feature_types"));
        nbs_matrix_free(m);
        assert_int_equal(read_typed(paths[i], "all", &m, &err), NBS_OK);
        expect_cite_features(m, ALL, 5);
        assert_non_null(strstr(logged, "kept all 5 features: 3 Gene Expression, 2 Antibody Capture"));
        nbs_matrix_free(m);
        /* case and spaces around the commas do not matter */
        assert_int_equal(read_typed(paths[i], " antibody capture ,GENE EXPRESSION", &m, &err), NBS_OK);
        expect_cite_features(m, ALL, 5);
        nbs_matrix_free(m);
        assert_int_equal(read_typed(paths[i], "Antibody Capture", &m, &err), NBS_OK);
        expect_cite_features(m, ADT, 2);
        assert_non_null(strstr(logged, "dropped 3 Gene Expression"));
        nbs_matrix_free(m);
        /* none of the wanted type: an error naming the file, its types and the option */
        assert_int_equal(read_typed(paths[i], "Peaks", &m, &err), NBS_ERR_INPUT);
        assert_null(m);
        assert_non_null(strstr(err.msg, paths[i]));
        assert_non_null(strstr(err.msg, "the file has 3 Gene Expression, 2 Antibody Capture"));
        assert_non_null(strstr(err.msg, "input.feature_types"));
    }
    /* no types in the file: every feature is a gene */
    write_cite(h5, NULL);
    write_cite_mtx(mtx, NULL);
    for (int i = 0; i < 2; i++) {
        nbs_matrix *m = NULL;
        nbs_error err = {0};
        assert_int_equal(read_typed(paths[i], NULL, &m, &err), NBS_OK);
        expect_cite_features(m, ALL, 5);
        assert_string_equal(logged, "");
        nbs_matrix_free(m);
    }
    /* a zero-initialised input section (library callers) means the default */
    write_cite(h5, CITE_TYPES);
    nbs_input_config in;
    memset(&in, 0, sizeof in);
    snprintf(in.path, sizeof in.path, "%s", h5);
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    nbs_log_set_handler(capture_log, NULL);
    assert_int_equal(nbs_io_read(&in, &m, &err), NBS_OK);
    nbs_log_set_handler(NULL, NULL);
    expect_cite_features(m, GEX, 3);
    nbs_matrix_free(m);
    /* the raw reader keeps every feature (test_10x_v3_matches_mtx compares the raw layouts) */
    assert_int_equal(nbs_io_read_10x_h5(h5, NULL, &m, &err), NBS_OK);
    assert_int_equal(m->n_genes, 5);
    nbs_matrix_free(m);
    tu_rmtree(dir);
    free(dir);
}

/* A 10x v2 file (genome group, no feature types) reads as before: every row kept. */
static void test_feature_types_v2(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    const char *p = tu_path(dir, "v2.h5");
    hid_t f = H5Fcreate(p, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hid_t g = H5Gcreate2(f, "GRCh38", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int64_t shape[2] = {2, 2}, indptr[3] = {0, 1, 3}, indices[3] = {1, 0, 1};
    int32_t data[3] = {4, 1, 9};
    hsize_t two = 2, three = 3;
    H5LTmake_dataset(g, "shape", 1, &two, H5T_NATIVE_INT64, shape);
    H5LTmake_dataset(g, "indptr", 1, &three, H5T_NATIVE_INT64, indptr);
    H5LTmake_dataset(g, "indices", 1, &three, H5T_NATIVE_INT64, indices);
    H5LTmake_dataset(g, "data", 1, &three, H5T_NATIVE_INT32, data);
    const char *bc[2] = {"A-1", "B-1"}, *ids[2] = {"ENSG1", "ENSG2"}, *names[2] = {"CD3E", "LYZ"};
    w_strings(g, "barcodes", bc, 2);
    w_strings(g, "genes", ids, 2);
    w_strings(g, "gene_names", names, 2);
    H5Gclose(g);
    H5Fclose(f);
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(read_typed(p, NULL, &m, &err), NBS_OK);
    assert_int_equal(m->n_cells, 2);
    assert_int_equal(m->n_genes, 2);
    assert_string_equal(m->gene_names[1], "LYZ");
    assert_int_equal(m->nnz, 3);
    assert_true(m->data[2] == 9.0f);
    nbs_matrix_free(m);
    tu_rmtree(dir);
    free(dir);
}

/* The CLI on the corpus folder whose features are all antibodies and peaks. */
static void test_feature_types_cli(void **state) {
    (void)state;
    char dir[4096], args[8192];
    assert_non_null(realpath("tests/bad_inputs/tenx_no_gene_expression", dir));
    char *out = NULL, *errout = NULL;
    snprintf(args, sizeof args, "inspect '%s'", dir);
    int rc = tu_run_cli(args, &out, &errout);
    if (rc != 3 || !errout || !strstr(errout, "2 Antibody Capture, 1 Peaks")) print_message("%s\n", errout ? errout : "");
    assert_int_equal(rc, 3);
    assert_non_null(strstr(errout, "tenx_no_gene_expression"));
    assert_non_null(strstr(errout, "the file has 2 Antibody Capture, 1 Peaks"));
    assert_non_null(strstr(errout, "input.feature_types"));
    free(out);
    free(errout);
}

/* The option in a pipeline: a string, "all" or a comma-separated list; a YAML list is refused
 * with the expected form. */
static void test_feature_types_option(void **state) {
    (void)state;
    nbs_pipeline p;
    nbs_error err = {0};
    assert_int_equal(nbs_pipeline_load_string("input:\n  feature_types: Gene Expression, Antibody Capture\n", "t.yaml",
                                              NULL, NULL, 0, 0, &p, &err), NBS_OK);
    assert_string_equal(p.config.input.feature_types, "Gene Expression, Antibody Capture");
    assert_int_equal(nbs_pipeline_load_string("input:\n  format: loom\n", "t.yaml", NULL, NULL, 0, 0, &p, &err), NBS_OK);
    assert_int_equal(p.config.input.format, NBS_FMT_LOOM);
    assert_int_equal(nbs_pipeline_load_string("", "t.yaml", NULL, NULL, 0, 0, &p, &err), NBS_OK);
    assert_string_equal(p.config.input.feature_types, "Gene Expression");
    assert_int_equal(nbs_pipeline_load_string("input:\n  feature_types: [Gene Expression, Peaks]\n", "t.yaml", NULL,
                                              NULL, 0, 0, &p, &err), NBS_ERR_USAGE);
    assert_non_null(strstr(err.msg, "t.yaml:2:18: input.feature_types: got a list; expected all, or 10x feature types"));
}

/* gzip the file src into dst with zlib. */
static void gzip_file(const char *src, const char *dst) {
    size_t n = 0;
    char *bytes = tu_read_file(src, &n);
    assert_non_null(bytes);
    gzFile g = gzopen(dst, "wb");
    assert_non_null(g);
    assert_int_equal(gzwrite(g, bytes, (unsigned)n), (int)n);
    gzclose(g);
    free(bytes);
}

/* filtered_feature_bc_matrix.h5.gz, or a .h5 whose bytes are gzip: detected as 10x and read
 * through a temporary copy that is gone afterwards, also when reading fails. */
static void test_gzip_h5(void **state) {
    (void)state;
    char *dir = tu_tmpdir(), *tmp = tu_tmpdir();
    setenv("TMPDIR", tmp, 1);
    char plain[4096], gz[4096], named_h5[4096], bad[4096];
    snprintf(plain, sizeof plain, "%s", tu_path(dir, "plain.h5"));
    snprintf(gz, sizeof gz, "%s", tu_path(dir, "filtered_feature_bc_matrix.h5.gz"));
    snprintf(named_h5, sizeof named_h5, "%s", tu_path(dir, "gzip_bytes.h5"));
    snprintf(bad, sizeof bad, "%s", tu_path(dir, "cut.h5.gz"));
    write_cite(plain, CITE_TYPES);
    gzip_file(plain, gz);
    gzip_file(plain, named_h5);
    const char *paths[2] = {gz, named_h5};
    for (int i = 0; i < 2; i++) {
        nbs_error err = {0};
        nbs_format f = NBS_FMT_AUTO;
        assert_int_equal(nbs_io_detect_format(paths[i], &f, &err), NBS_OK);
        assert_int_equal(f, NBS_FMT_10X_H5);
        assert_int_equal(tu_count_files(tmp), 0);
        nbs_matrix *m = NULL;
        assert_int_equal(read_typed(paths[i], NULL, &m, &err), NBS_OK);
        expect_cite_features(m, GEX, 3);
        assert_string_equal(m->barcodes[2], "AAAT-1");
        nbs_matrix_free(m);
        assert_int_equal(tu_count_files(tmp), 0);
    }
    /* a cut download: the gzip stream ends early */
    size_t n = 0;
    char *bytes = tu_read_file(gz, &n);
    assert_int_equal(tu_write_bytes(bad, bytes, n / 2), 0);
    free(bytes);
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    nbs_input_config in;
    memset(&in, 0, sizeof in);
    snprintf(in.path, sizeof in.path, "%s", bad);
    in.format = NBS_FMT_10X_H5;
    assert_int_equal(nbs_io_read(&in, &m, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "cut.h5.gz"));
    assert_non_null(strstr(err.msg, "the gzip stream is corrupt or truncated"));
    assert_int_equal(tu_count_files(tmp), 0);
    /* gzip holding text named .h5: not taken for a table */
    gzFile g = gzopen(named_h5, "wb");
    gzputs(g, "a\tb\nc\t1\n");
    gzclose(g);
    nbs_format f;
    assert_int_equal(nbs_io_detect_format(named_h5, &f, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "what the gzip compression holds does not start with the HDF5 signature"));
    unsetenv("TMPDIR");
    tu_rmtree(tmp);
    tu_rmtree(dir);
    free(tmp);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kind_real_files),
        cmocka_unit_test(test_kind_garbage_is_error),
        cmocka_unit_test(test_kind_other_hdf5_is_error),
        cmocka_unit_test(test_10x_v3_matches_mtx),
        cmocka_unit_test(test_10x_v2_and_visium),
        cmocka_unit_test(test_10x_several_genomes),
        cmocka_unit_test(test_10x_bad_files),
        cmocka_unit_test(test_feature_types),
        cmocka_unit_test(test_feature_types_v2),
        cmocka_unit_test(test_feature_types_cli),
        cmocka_unit_test(test_feature_types_option),
        cmocka_unit_test(test_gzip_h5),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
