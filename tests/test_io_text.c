/* Matrix Market readers: real 10x folders and a bare genes x cells file from ../shared/data
 * (shapes and nonzeros as its README lists them), and the bad inputs a user really has. */
#include "testutil.h"

#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "nbsphere/io.h"

static double row_sum(const nbs_matrix *m, int64_t c) {
    double s = 0;
    for (int64_t k = m->indptr[c]; k < m->indptr[c + 1]; k++) s += m->data[k];
    return s;
}

static nbs_matrix *read_dir(const char *rel) {
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    int rc = nbs_io_read_10x_mtx_dir(tu_data(rel), &m, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, NBS_OK);
    return m;
}

static void test_pbmc3k_folder(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("pbmc3k/matrix.mtx.gz");
    nbs_matrix *m = read_dir("pbmc3k");
    assert_int_equal(m->n_cells, 2638);
    assert_int_equal(m->n_genes, 13714);
    assert_int_equal(m->nnz, 2238732);
    assert_string_equal(m->barcodes[0], "AAACATACAACCAC-1");
    assert_string_equal(m->gene_ids[0], "ENSG00000237683");
    assert_string_equal(m->gene_names[0], "AL627309.1");
    /* cell 1: nCount_RNA 2419, nFeature_RNA 779, 3.01778 % mitochondrial = 73 counts */
    assert_true(row_sum(m, 0) == 2419.0);
    assert_int_equal(m->indptr[1] - m->indptr[0], 779);
    double mt = 0;
    for (int64_t k = m->indptr[0]; k < m->indptr[1]; k++)
        if (strncmp(m->gene_names[m->indices[k]], "MT-", 3) == 0) mt += m->data[k];
    assert_true(mt == 73.0);
    nbs_matrix_free(m);
}

static void test_kang_folder(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("kang_muscat/matrix.mtx.gz");
    nbs_matrix *m = read_dir("kang_muscat");
    assert_int_equal(m->n_cells, 1556);
    assert_int_equal(m->n_genes, 1267);
    assert_int_equal(m->nnz, 585251);
    float mx = 0;
    for (int64_t k = 0; k < m->nnz; k++) mx = m->data[k] > mx ? m->data[k] : mx;
    assert_true(mx == 1891.0f);
    nbs_matrix_free(m);
}

static void test_scanpy_v3_folder(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("tenx_h5/scanpy_tests/3.0.0/filtered_feature_bc_matrix/matrix.mtx.gz");
    nbs_matrix *m = read_dir("tenx_h5/scanpy_tests/3.0.0/filtered_feature_bc_matrix");
    assert_int_equal(m->n_cells, 1107);
    assert_int_equal(m->n_genes, 507);
    assert_int_equal(m->nnz, 23866);
    nbs_matrix_free(m);
}

static void test_bare_mtx_genes_rows(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("scphere_cd14_eryth/cd14_monocyte_erythroid.mtx");
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_mtx(tu_data("scphere_cd14_eryth/cd14_monocyte_erythroid.mtx"),
                                     NBS_ORIENT_GENES_ROWS, &m, &err), NBS_OK);
    assert_int_equal(m->n_cells, 2303);
    assert_int_equal(m->n_genes, 2000);
    assert_int_equal(m->nnz, 311647);
    /* first entry of the file: gene 1, cell 4, value 1 */
    assert_int_equal(m->indptr[4] - m->indptr[3] > 0, 1);
    assert_int_equal(m->indices[m->indptr[3]], 0);
    assert_true(m->data[m->indptr[3]] == 1.0f);
    nbs_matrix_free(m);
}

/* Writes text as dir/name, reads it as a cells-rows MTX, expects failure with all needles. */
static void expect_mtx_error(const char *text, int status, const char *needle) {
    char *dir = tu_tmpdir();
    const char *path = tu_path(dir, "m.mtx");
    assert_int_equal(tu_write_file(path, text), 0);
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_mtx(path, NBS_ORIENT_CELLS_ROWS, &m, &err), status);
    assert_null(m);
    if (!strstr(err.msg, needle)) print_message("message was: %s\n", err.msg);
    assert_non_null(strstr(err.msg, needle));
    assert_non_null(strstr(err.msg, "m.mtx"));
    tu_rmtree(dir);
    free(dir);
}

static void test_mtx_bad_inputs(void **state) {
    (void)state;
    expect_mtx_error("hello\n", NBS_ERR_INPUT, "banner");
    expect_mtx_error("%%MatrixMarket matrix array real general\n2 2\n1\n2\n3\n4\n", NBS_ERR_INPUT, "banner");
    expect_mtx_error("%%MatrixMarket matrix coordinate integer general\n2 x 1\n", NBS_ERR_INPUT, "size line");
    /* a header claiming billions of entries is refused before any allocation */
    expect_mtx_error("%%MatrixMarket matrix coordinate integer general\n3000000000 2 9000000000\n1 1 1\n",
                     NBS_ERR_INPUT, "claims 9000000000 entries");
    expect_mtx_error("%%MatrixMarket matrix coordinate integer general\n2 2 3\n1 1 1\n2 2 5\n", NBS_ERR_INPUT,
                     "truncated");
    expect_mtx_error("%%MatrixMarket matrix coordinate integer general\n2 2 1\n1 1 1\n2 2 5\n", NBS_ERR_INPUT,
                     "more entries");
    expect_mtx_error("%%MatrixMarket matrix coordinate integer general\n2 2 1\n3 1 1\n", NBS_ERR_INPUT,
                     "m.mtx:3: entry (3, 1) is outside");
    expect_mtx_error("%%MatrixMarket matrix coordinate integer general\n2 2 1\n1 one 1\n", NBS_ERR_INPUT,
                     "m.mtx:3: expected 'row column value'");
    expect_mtx_error("%%MatrixMarket matrix coordinate integer general\n2 2 2\n1 1 1\n1 1 2\n", NBS_ERR_INPUT,
                     "entries 1 and 2");
}

static void test_folder_names_mismatch(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    assert_int_equal(tu_write_file(tu_path(dir, "matrix.mtx"),
                                   "%%MatrixMarket matrix coordinate integer general\n3 2 2\n1 1 4\n3 2 7\n"), 0);
    assert_int_equal(tu_write_file(tu_path(dir, "genes.tsv"), "g1\tA\ng2\tB\ng3\tC\n"), 0);
    assert_int_equal(tu_write_file(tu_path(dir, "barcodes.tsv"), "c1\n"), 0);
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_10x_mtx_dir(dir, &m, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "barcodes.tsv: 1 names but the matrix has 2 cells"));
    assert_int_equal(tu_write_file(tu_path(dir, "barcodes.tsv"), "c1\nc2\n"), 0);
    assert_int_equal(nbs_io_read_10x_mtx_dir(dir, &m, &err), NBS_OK);
    assert_int_equal(m->n_cells, 2);
    assert_string_equal(m->gene_names[2], "C");
    assert_string_equal(m->barcodes[1], "c2");
    assert_true(m->data[1] == 7.0f && m->indices[1] == 2);
    nbs_matrix_free(m);
    remove(tu_path(dir, "genes.tsv"));
    assert_int_equal(nbs_io_read_10x_mtx_dir(dir, &m, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "missing"));
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pbmc3k_folder),
        cmocka_unit_test(test_kang_folder),
        cmocka_unit_test(test_scanpy_v3_folder),
        cmocka_unit_test(test_bare_mtx_genes_rows),
        cmocka_unit_test(test_mtx_bad_inputs),
        cmocka_unit_test(test_folder_names_mismatch),
    };
    return cmocka_run_group_tests_name("io_text", tests, NULL, NULL);
}
