#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hdf5.h>

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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kind_real_files),
        cmocka_unit_test(test_kind_garbage_is_error),
        cmocka_unit_test(test_kind_other_hdf5_is_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
