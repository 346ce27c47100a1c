#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "nbsphere/matrix.h"

static void *dup_bytes(const void *a, size_t n) {
    void *b = malloc(n);
    memcpy(b, a, n);
    return b;
}

static void test_from_csc_transposes(void **state) {
    (void)state;
    /* genes x cells CSC of a 2-cell, 3-gene matrix: cell0 = [1,0,2], cell1 = [0,3,4] */
    int64_t indptr[] = {0, 1, 2, 4};
    int32_t indices[] = {0, 1, 0, 1};
    float data[] = {1, 3, 2, 4};
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
    int32_t indices[] = {0, 1, 2};
    float data[] = {1, 1, 1};
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
    int32_t indices[] = {2, 0, 1};
    float data[] = {5, 7, 9};
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


/* Taking the arrays of a cell-major layout gives what copying gives (rows sorted, duplicates and
 * bad offsets refused), and a gene-major one is transposed the same way; failures free them. */
static void test_take_compressed_equals_copy(void **state) {
    (void)state;
    int64_t indptr[] = {0, 3, 3, 5};
    int32_t indices[] = {2, 0, 1, 3, 1};
    float data[] = {5, 7, 9, 1, 2};
    nbs_error err = {0};
    for (int major_is_cells = 0; major_is_cells < 2; major_is_cells++) {
        nbs_compressed_view v = {3, 4, 5, indptr, indices, data};
        nbs_matrix *a = nbs_matrix_from_compressed(&v, major_is_cells, "t", &err);
        nbs_compressed_view w = {3, 4, 5, dup_bytes(indptr, sizeof indptr), dup_bytes(indices, sizeof indices),
                                 dup_bytes(data, sizeof data)};
        nbs_matrix *b = nbs_matrix_take_compressed(&w, major_is_cells, "t", &err);
        assert_non_null(a);
        assert_non_null(b);
        assert_null(w.indptr);
        assert_int_equal(a->n_cells, b->n_cells);
        assert_int_equal(a->nnz, b->nnz);
        assert_memory_equal(a->indptr, b->indptr, sizeof *a->indptr * (size_t)(a->n_cells + 1));
        assert_memory_equal(a->indices, b->indices, sizeof *a->indices * 5);
        assert_memory_equal(a->data, b->data, sizeof *a->data * 5);
        nbs_matrix_free(a);
        nbs_matrix_free(b);
    }
    int32_t dup[] = {2, 2, 1, 3, 1};
    nbs_compressed_view d = {3, 4, 5, dup_bytes(indptr, sizeof indptr), dup_bytes(dup, sizeof dup), dup_bytes(data, sizeof data)};
    assert_null(nbs_matrix_take_compressed(&d, 1, "dup.h5", &err));
    assert_non_null(strstr(err.msg, "two entries for gene 3"));
    int32_t far[] = {2, 0, 1, 2147483647, 1}; /* what HDF5 leaves of an index too large for 32 bits */
    nbs_compressed_view f = {3, 4, 5, dup_bytes(indptr, sizeof indptr), dup_bytes(far, sizeof far), dup_bytes(data, sizeof data)};
    assert_null(nbs_matrix_take_compressed(&f, 1, "far.h5", &err));
    assert_non_null(strstr(err.msg, "index 2147483647 (or larger) at entry 3 is out of range [0, 4)"));
}

static void test_triplet_duplicates_rejected(void **state) {
    (void)state;
    int32_t c[] = {0, 1, 0}, g[] = {1, 0, 1};
    float v[] = {1, 2, 3};
    nbs_error err = {0};
    assert_null(nbs_matrix_from_triplets(2, 2, 3, c, g, v, "x.mtx", &err));
    assert_non_null(strstr(err.msg, "entries 1 and 3"));
}


/* Taking the arrays gives the same matrix as copying them: in order (adopted, a zero dropped in
 * place), out of order (sorted), and the same errors. */
static void test_take_triplets_equals_copy(void **state) {
    (void)state;
    const int32_t oc[] = {0, 0, 1, 2, 2, 2}, og[] = {0, 3, 2, 1, 2, 3};
    const float ov[] = {1, 2, 0, 4, 5, 6};
    const int32_t uc[] = {2, 0, 2, 0, 1, 2}, ug[] = {3, 3, 1, 0, 2, 2};
    const float uv[] = {6, 2, 4, 1, 7, 5};
    const int32_t *cs[] = {oc, uc}, *gs[] = {og, ug};
    const float *vs[] = {ov, uv};
    nbs_error err = {0};
    for (int t = 0; t < 2; t++) {
        nbs_matrix *a = nbs_matrix_from_triplets(3, 4, 6, cs[t], gs[t], vs[t], "t", &err);
        nbs_matrix *b = nbs_matrix_take_triplets(3, 4, 6, dup_bytes(cs[t], sizeof oc), dup_bytes(gs[t], sizeof og), dup_bytes(vs[t], sizeof ov), "t", &err);
        assert_non_null(a);
        assert_non_null(b);
        assert_int_equal(b->nnz, t ? 6 : 5);
        for (int64_t c = 0; c < 3; c++)
            for (int64_t k = b->indptr[c] + 1; k < b->indptr[c + 1]; k++) assert_true(b->indices[k] > b->indices[k - 1]);
        assert_int_equal(a->nnz, b->nnz);
        assert_memory_equal(a->indptr, b->indptr, sizeof *a->indptr * 4);
        assert_memory_equal(a->indices, b->indices, sizeof *a->indices * (size_t)a->nnz);
        assert_memory_equal(a->data, b->data, sizeof *a->data * (size_t)a->nnz);
        nbs_matrix_free(a);
        nbs_matrix_free(b);
    }
    const int32_t dc[] = {0, 1, 1}, dg[] = {0, 2, 2}; /* in order but for a repeated entry */
    const float dv[] = {1, 2, 3};
    assert_null(nbs_matrix_take_triplets(2, 3, 3, dup_bytes(dc, sizeof dc), dup_bytes(dg, sizeof dg), dup_bytes(dv, sizeof dv), "d.mtx", &err));
    assert_non_null(strstr(err.msg, "entries 2 and 3"));
    const int32_t rc[] = {0, 5}, rg[] = {0, 1};
    assert_null(nbs_matrix_take_triplets(2, 3, 2, dup_bytes(rc, sizeof rc), dup_bytes(rg, sizeof rg), dup_bytes(dv, 2 * sizeof *dv), "r.mtx", &err));
    assert_non_null(strstr(err.msg, "outside the 2 x 3 matrix"));
}

/* In place and copied selections agree, names included. */
static void test_subset_inplace_equals_copy(void **state) {
    (void)state;
    const int32_t c[] = {0, 0, 1, 1, 2, 3, 3, 3}, g[] = {0, 2, 1, 3, 2, 0, 1, 3};
    const float v[] = {1, 2, 3, 4, 5, 6, 7, 8};
    nbs_error err = {0};
    const int64_t cells[] = {0, 2, 3}, genes[] = {1, 2, 3};
    for (int mode = 0; mode < 3; mode++) { /* both, cells only, genes only */
        nbs_matrix *m = nbs_matrix_from_triplets(4, 4, 8, c, g, v, "t", &err);
        assert_int_equal(nbs_matrix_default_names(&m->barcodes, 4, "cell", &err), 0);
        assert_int_equal(nbs_matrix_default_names(&m->gene_names, 4, "gene", &err), 0);
        assert_int_equal(nbs_matrix_default_names(&m->gene_ids, 4, "id", &err), 0);
        const int64_t *ci = mode == 2 ? NULL : cells, *gi = mode == 1 ? NULL : genes;
        nbs_matrix *copy = nbs_matrix_subset(m, ci, 3, gi, 3, &err);
        assert_non_null(copy);
        assert_int_equal(nbs_matrix_subset_inplace(m, ci, 3, gi, 3, &err), 0);
        tu_expect_same_matrix(copy, m);
        nbs_matrix_free(copy);
        nbs_matrix_free(m);
    }
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
    int32_t c[] = {0, 1}, g[] = {0, 1};
    float v[] = {1.5, -2};
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

static int longer_first(const void *a, const void *b) {
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* The workspace bound: the k longest rows' entries, for every k (ties, k past the cells). */
static void test_max_batch_nnz(void **state) {
    (void)state;
    enum { N = 40, G = 12 };
    int32_t ci[N * G], gi[N * G];
    float v[N * G];
    int64_t k = 0, len[N];
    for (int i = 0; i < N; i++) {
        len[i] = (i * 7) % G; /* repeated lengths, some rows empty */
        for (int g = 0; g < len[i]; g++) ci[k] = i, gi[k] = g, v[k++] = 1;
    }
    nbs_error err = {0};
    nbs_matrix *X = nbs_matrix_from_triplets(N, G, k, ci, gi, v, "toy", &err);
    assert_non_null(X);
    qsort(len, N, sizeof len[0], longer_first);
    int64_t top = 0;
    for (int64_t b = 1; b <= N + 2; b++) {
        if (b <= N) top += len[b - 1];
        assert_int_equal(nbs_matrix_max_batch_nnz(X, b), top);
    }
    nbs_matrix_free(X);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_from_csc_transposes),
        cmocka_unit_test(test_bad_indptr_rejected),
        cmocka_unit_test(test_unsorted_rows_sorted_duplicates_rejected),
        cmocka_unit_test(test_triplet_duplicates_rejected),
        cmocka_unit_test(test_take_compressed_equals_copy),
        cmocka_unit_test(test_take_triplets_equals_copy),
        cmocka_unit_test(test_subset_inplace_equals_copy),
        cmocka_unit_test(test_names_unique_like_anndata),
        cmocka_unit_test(test_validate_values),
        cmocka_unit_test(test_max_batch_nnz),
    };
    return cmocka_run_group_tests_name("matrix", tests, NULL, NULL);
}
