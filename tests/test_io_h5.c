#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hdf5.h>
#include <hdf5_hl.h>

#include "nbsphere/io.h"

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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kind_real_files),
        cmocka_unit_test(test_kind_garbage_is_error),
        cmocka_unit_test(test_kind_other_hdf5_is_error),
        cmocka_unit_test(test_10x_v3_matches_mtx),
        cmocka_unit_test(test_10x_v2_and_visium),
        cmocka_unit_test(test_10x_several_genomes),
        cmocka_unit_test(test_10x_bad_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
