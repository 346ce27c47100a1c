/* io.c: format names, detection, the nbs_io_read dispatcher; `nbsphere inspect` on every real
 * matrix file against the shapes the data README lists. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "nbsphere/io.h"

static void test_format_names_round_trip(void **state) {
    (void)state;
    for (int f = NBS_FMT_AUTO; f <= NBS_FMT_LOOM; f++) {
        nbs_format back = (nbs_format)99;
        assert_int_equal(nbs_format_parse(nbs_format_name((nbs_format)f), &back), 0);
        assert_int_equal(back, f);
    }
    nbs_format x;
    assert_int_equal(nbs_format_parse("zarr", &x), -1);
    assert_string_equal(nbs_format_name(NBS_FMT_10X_H5), "10x-h5");
    assert_string_equal(nbs_format_name((nbs_format)42), "unknown");
}

static void expect_detect(const char *path, nbs_format want) {
    nbs_error err = {0};
    nbs_format f = NBS_FMT_AUTO;
    int rc = nbs_io_detect_format(path, &f, &err);
    if (rc) print_message("%s: %s\n", path, err.msg);
    assert_int_equal(rc, NBS_OK);
    assert_int_equal(f, want);
}

static void test_detect_real_files(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("pbmc3k/pbmc3k_counts.h5ad");
    expect_detect(tu_data("pbmc3k"), NBS_FMT_10X_MTX);
    expect_detect(tu_data("pbmc3k/pbmc3k_counts.h5ad"), NBS_FMT_H5AD);
    expect_detect(tu_data("paul15/paul15.h5ad.gz"), NBS_FMT_H5AD);
    expect_detect(tu_data("pbmc3k/matrix.mtx.gz"), NBS_FMT_MTX);
    expect_detect(tu_data("scphere_cd14_eryth/cd14_monocyte_erythroid.mtx"), NBS_FMT_MTX);
    expect_detect(tu_data("tenx_h5/visium_placenta/filtered_feature_bc_matrix.h5"), NBS_FMT_10X_H5);
    expect_detect(tu_data("pbmc3k/cell_labels.tsv"), NBS_FMT_TSV);
}

static void test_detect_by_content(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    /* names that say nothing: the banner or the delimiter decides */
    assert_int_equal(tu_write_file(tu_path(dir, "a.txt"), "%%MatrixMarket matrix coordinate integer general\n2 2 1\n1 1 3\n"), 0);
    expect_detect(tu_path(dir, "a.txt"), NBS_FMT_MTX);
    assert_int_equal(tu_write_file(tu_path(dir, "b.txt"), "gene\tc1\tc2\ng1\t1\t0\n"), 0);
    expect_detect(tu_path(dir, "b.txt"), NBS_FMT_TSV);
    assert_int_equal(tu_write_file(tu_path(dir, "c"), "gene,c1,c2\ng1,1,0\n"), 0);
    expect_detect(tu_path(dir, "c"), NBS_FMT_CSV);
    assert_int_equal(tu_write_file(tu_path(dir, "d.csv"), "x\n"), 0);
    expect_detect(tu_path(dir, "d.csv"), NBS_FMT_CSV);

    nbs_error err = {0};
    nbs_format f;
    assert_int_equal(tu_write_file(tu_path(dir, "empty.tsv"), ""), 0);
    assert_int_equal(nbs_io_detect_format(tu_path(dir, "empty.tsv"), &f, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "empty"));
    assert_int_equal(tu_write_file(tu_path(dir, "lfs.h5ad"), "version https://git-lfs.github.com/spec/v1\n"), 0);
    assert_int_equal(nbs_io_detect_format(tu_path(dir, "lfs.h5ad"), &f, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "HDF5 signature"));
    assert_int_equal(tu_write_file(tu_path(dir, "plain.h5ad.gz"), "not gzip"), 0);
    assert_int_equal(nbs_io_detect_format(tu_path(dir, "plain.h5ad.gz"), &f, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "not gzip"));
    assert_int_equal(tu_write_file(tu_path(dir, "words"), "just some words\n"), 0);
    assert_int_equal(nbs_io_detect_format(tu_path(dir, "words"), &f, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "words"));
    assert_non_null(strstr(err.msg, "input.format"));
    assert_int_equal(nbs_io_detect_format(tu_path(dir, "absent.h5"), &f, &err), NBS_ERR_IO);
    tu_rmtree(dir);
    free(dir);
}

/* nbs_io_read validates values and makes gene names unique, whatever the reader. */
static void test_read_validates_and_uniquifies(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    nbs_input_config in;
    memset(&in, 0, sizeof in);
    snprintf(in.path, sizeof in.path, "%s", tu_path(dir, "t.tsv"));
    in.orientation = NBS_ORIENT_CELLS_ROWS;
    assert_int_equal(tu_write_file(in.path, "cell\tA\tA\tB\nc1\t1\t0\t2\nc2\t0\t3\t0\n"), 0);
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read(&in, &m, &err), NBS_OK);
    assert_string_equal(m->gene_names[0], "A");
    assert_string_equal(m->gene_names[1], "A-1");
    assert_int_equal(m->values_are_integer, 1);
    nbs_matrix_free(m);

    assert_int_equal(tu_write_file(in.path, "cell\tA\tB\nc1\t1.5\t0\n"), 0);
    assert_int_equal(nbs_io_read(&in, &m, &err), NBS_ERR_INPUT);
    assert_null(m);
    assert_non_null(strstr(err.msg, "non-integer"));
    in.non_integer = NBS_NONINT_ROUND;
    assert_int_equal(nbs_io_read(&in, &m, &err), NBS_OK);
    assert_true(m->data[0] == 2.0f);
    nbs_matrix_free(m);
    tu_rmtree(dir);
    free(dir);
}

/* A gzip .h5ad is inflated into a temporary file which is removed afterwards. */
static void test_read_gzip_h5ad_leaves_no_temp(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("paul15/paul15.h5ad.gz");
    char *tmp = tu_tmpdir();
    setenv("TMPDIR", tmp, 1);
    nbs_input_config in;
    memset(&in, 0, sizeof in);
    snprintf(in.path, sizeof in.path, "%s", tu_data("paul15/paul15.h5ad.gz"));
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    int rc = nbs_io_read(&in, &m, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, NBS_OK);
    assert_int_equal(m->n_cells, 2730);
    assert_int_equal(m->n_genes, 3451);
    assert_int_equal(m->nnz, 2386248);
    assert_string_equal(m->barcodes[0], "0");
    assert_string_equal(m->barcodes[2729], "2729");
    nbs_matrix_free(m);
    assert_int_equal(tu_count_files(tmp), 0);
    unsetenv("TMPDIR");
    tu_rmtree(tmp);
    free(tmp);
}

/* Every real matrix file, through the CLI: cells, genes and nonzeros as the README lists. */
static void test_inspect_every_real_file(void **state) {
    (void)state;
    static const struct {
        const char *rel;
        long cells, genes, nnz;
    } files[] = {
        {"pbmc3k", 2638, 13714, 2238732},
        {"pbmc3k/pbmc3k_counts.h5ad", 2638, 13714, 2238732},
        {"paul15/paul15.h5ad.gz", 2730, 3451, 2386248},
        {"kang_muscat", 1556, 1267, 585251},
        {"scphere_cd14_eryth/cd14_monocyte_erythroid.mtx", 2303, 2000, 311647},
        {"tenx_h5/visium_placenta/filtered_feature_bc_matrix.h5", 2898, 19465, 1069459},
        {"tenx_h5/scanpy_tests/3.0.0/filtered_feature_bc_matrix.h5", 1107, 507, 23866},
        {"tenx_h5/scanpy_tests/3.0.0/filtered_feature_bc_matrix", 1107, 507, 23866},
        {"tenx_h5/scanpy_tests/1.2.0/filtered_gene_bc_matrices_h5.h5", 12, 343, 12},
        {"tenx_h5/scanpy_tests/1.2.0/filtered_gene_bc_matrices/hg19_chr21", 12, 343, 12},
    };
    NBS_REQUIRE_DATA("pbmc3k/pbmc3k_counts.h5ad");
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char args[4200], want[256];
        snprintf(args, sizeof args, "inspect --json '%s'", tu_data(files[i].rel));
        char *out = NULL, *errout = NULL;
        int rc = tu_run_cli(args, &out, &errout);
        if (rc) print_message("%s: %s\n", files[i].rel, errout ? errout : "");
        assert_int_equal(rc, 0);
        snprintf(want, sizeof want, "\"cells\": %ld,\n  \"genes\": %ld,\n  \"nonzeros\": %ld,", files[i].cells,
                 files[i].genes, files[i].nnz);
        if (!strstr(out, want)) print_message("%s: expected %s in\n%s\n", files[i].rel, want, out);
        assert_non_null(strstr(out, want));
        free(out);
        free(errout);
    }
}

/* Tables through the CLI: the orientation flag is honoured; a bad table exits with 3 and names
 * the line. */
static void test_inspect_tables(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char args[4300];
    const char *p = tu_path(dir, "t.csv");
    assert_int_equal(tu_write_file(p, "gene,c1,c2,c3\ng1,1,0,2\ng2,0,5,0\n"), 0);
    snprintf(args, sizeof args, "inspect --json --orientation genes_rows '%s'", p);
    char *out = NULL, *errout = NULL;
    assert_int_equal(tu_run_cli(args, &out, &errout), 0);
    assert_non_null(strstr(out, "\"cells\": 3,\n  \"genes\": 2,\n  \"nonzeros\": 3,"));
    assert_non_null(strstr(out, "\"format\": \"csv\""));
    free(out);
    free(errout);
    assert_int_equal(tu_write_file(p, "gene,c1,c2\ng1,1,0\ng2,0\n"), 0);
    snprintf(args, sizeof args, "inspect '%s'", p);
    assert_int_equal(tu_run_cli(args, &out, &errout), 3);
    assert_non_null(strstr(errout, "t.csv:3:"));
    free(out);
    free(errout);
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_names_round_trip),
        cmocka_unit_test(test_detect_real_files),
        cmocka_unit_test(test_detect_by_content),
        cmocka_unit_test(test_read_validates_and_uniquifies),
        cmocka_unit_test(test_read_gzip_h5ad_leaves_no_temp),
        cmocka_unit_test(test_inspect_every_real_file),
        cmocka_unit_test(test_inspect_tables),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
