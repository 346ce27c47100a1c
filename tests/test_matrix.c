#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "nbsphere/matrix.h"

static void test_from_csc_transposes(void **state) {
    (void)state;
    /* genes x cells CSC of a 2-cell, 3-gene matrix: cell0 = [1,0,2], cell1 = [0,3,4] */
    int64_t indptr[] = {0, 1, 2, 4};
    int64_t indices[] = {0, 1, 0, 1};
    double data[] = {1, 3, 2, 4};
    nbs_compressed_view v = {3, 2, 4, indptr, indices, data};
    nbs_error err = {0};
    nbs_matrix *m = nbs_matrix_from_compressed(&v, 0, "test", &err);
    assert_non_null(m);
    assert_int_equal(m->n_cells, 2);
    assert_int_equal(m->n_genes, 3);
    assert_int_equal(m->indptr[1], 2);
    assert_int_equal(m->indices[1], 2);
    assert_true(m->data[1] == 2.0f);
    assert_true(m->data[3] == 4.0f);
    nbs_matrix_free(m);
}

static void test_bad_indptr_rejected(void **state) {
    (void)state;
    int64_t indptr[] = {0, 3, 2};
    int64_t indices[] = {0, 1, 2};
    double data[] = {1, 1, 1};
    nbs_compressed_view v = {2, 3, 2, indptr, indices, data};
    nbs_error err = {0};
    assert_null(nbs_matrix_from_compressed(&v, 1, "f.h5", &err));
    assert_int_equal(err.code, NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "f.h5"));
}

/* Cell Ranger files may hold a column's entries out of order: they are sorted, duplicates refused. */
static void test_unsorted_rows_sorted_duplicates_rejected(void **state) {
    (void)state;
    int64_t indptr[] = {0, 3};
    int64_t indices[] = {2, 0, 1};
    double data[] = {5, 7, 9};
    nbs_compressed_view v = {1, 3, 3, indptr, indices, data};
    nbs_error err = {0};
    nbs_matrix *m = nbs_matrix_from_compressed(&v, 1, "t", &err);
    assert_non_null(m);
    assert_int_equal(m->indices[0], 0);
    assert_int_equal(m->indices[2], 2);
    assert_true(m->data[0] == 7.0f && m->data[1] == 9.0f && m->data[2] == 5.0f);
    nbs_matrix_free(m);
    indices[1] = 2;
    assert_null(nbs_matrix_from_compressed(&v, 1, "dup.h5", &err));
    assert_non_null(strstr(err.msg, "two entries for gene 3"));
}

static void test_triplet_duplicates_rejected(void **state) {
    (void)state;
    int64_t c[] = {0, 1, 0}, g[] = {1, 0, 1};
    double v[] = {1, 2, 3};
    nbs_error err = {0};
    assert_null(nbs_matrix_from_triplets(2, 2, 3, c, g, v, "x.mtx", &err));
    assert_non_null(strstr(err.msg, "entries 1 and 3"));
}

static void test_names_unique_like_anndata(void **state) {
    (void)state;
    char *names[5];
    const char *src[] = {"A", "B", "A", "A-1", "A"};
    for (int i = 0; i < 5; i++) names[i] = strdup(src[i]);
    nbs_error err = {0};
    assert_int_equal(nbs_matrix_make_names_unique(names, 5, &err), 2);
    assert_string_equal(names[0], "A");
    assert_string_equal(names[2], "A-2"); /* "A-1" is taken by an existing name */
    assert_string_equal(names[4], "A-3");
    for (int i = 0; i < 5; i++) free(names[i]);
}

static void test_validate_values(void **state) {
    (void)state;
    int64_t c[] = {0, 1}, g[] = {0, 1};
    double v[] = {1.5, -2};
    nbs_error err = {0};
    nbs_matrix *m = nbs_matrix_from_triplets(2, 2, 2, c, g, v, "t", &err);
    assert_non_null(m);
    nbs_matrix_default_names(&m->barcodes, 2, "cell", &err);
    nbs_matrix_default_names(&m->gene_names, 2, "gene", &err);
    assert_int_equal(nbs_matrix_validate_values(m, NBS_NONINT_ACCEPT, "t", &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "negative"));
    m->data[1] = 2;
    assert_int_equal(nbs_matrix_validate_values(m, NBS_NONINT_ERROR, "t", &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "non-integer"));
    assert_int_equal(nbs_matrix_validate_values(m, NBS_NONINT_ROUND, "t", &err), NBS_OK);
    assert_true(m->data[0] == 2.0f);
    nbs_matrix_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_from_csc_transposes),
        cmocka_unit_test(test_bad_indptr_rejected),
        cmocka_unit_test(test_unsorted_rows_sorted_duplicates_rejected),
        cmocka_unit_test(test_triplet_duplicates_rejected),
        cmocka_unit_test(test_names_unique_like_anndata),
        cmocka_unit_test(test_validate_values),
    };
    return cmocka_run_group_tests_name("matrix", tests, NULL, NULL);
}
