/* h5ad reader and obs labels: small fixtures written here with the HDF5 C API (every encoding
 * and every malformed case), and the real pbmc3k and paul15 files. */
#include "testutil.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/io.h"

/* The fixture matrix, 3 cells x 4 genes:
 *   c0: 0 1 0 2
 *   c1: 0 0 0 0
 *   c2: 5 1 3 0 */
static const float DENSE[3][4] = {{0, 1, 0, 2}, {0, 0, 0, 0}, {5, 1, 3, 0}};
static const char *const CELLS[3] = {"AAAC-1", "AAAG-1", "AAAT-1"};
static const char *const GENES[4] = {"CD3E", "MS4A1", "LYZ", "NKG7"};

static void w_attr_str(hid_t obj, const char *name, const char *value) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(a >= 0);
    assert_true(H5Awrite(a, t, &value) >= 0);
    H5Aclose(a);
    H5Sclose(sp);
    H5Tclose(t);
}

static void w_attr_shape(hid_t obj, const char *name, int64_t r, int64_t c) {
    int64_t v[2] = {r, c};
    hsize_t n = 2;
    hid_t sp = H5Screate_simple(1, &n, NULL);
    hid_t a = H5Acreate2(obj, name, H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(H5Awrite(a, H5T_NATIVE_INT64, v) >= 0);
    H5Aclose(a);
    H5Sclose(sp);
}

static void w_strs(hid_t loc, const char *name, const char *const *s, hsize_t n) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    hid_t sp = H5Screate_simple(1, &n, NULL);
    hid_t d = H5Dcreate2(loc, name, t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(d >= 0);
    assert_true(H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, s) >= 0);
    H5Dclose(d);
    H5Sclose(sp);
    H5Tclose(t);
}

static void w_arr(hid_t loc, const char *name, hid_t ftype, hid_t mtype, const void *v, hsize_t n, hid_t dcpl) {
    hid_t sp = H5Screate_simple(1, &n, NULL);
    hid_t d = H5Dcreate2(loc, name, ftype, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    assert_true(d >= 0);
    assert_true(H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0);
    H5Dclose(d);
    H5Sclose(sp);
}

static hid_t group(hid_t loc, const char *name) {
    hid_t g = H5Gcreate2(loc, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(g >= 0);
    return g;
}

/* A dataframe group with its index in `index_name` (and the _index attribute naming it). */
static void w_df(hid_t f, const char *name, const char *index_name, const char *const *names, hsize_t n) {
    hid_t g = group(f, name);
    w_attr_str(g, "_index", index_name);
    w_attr_str(g, "encoding-type", "dataframe");
    w_strs(g, index_name, names, n);
    H5Gclose(g);
}

enum { SP_CSR, SP_CSC, SP_H5SPARSE_CSR };

/* A sparse matrix group at loc/name in the given layout; `bad` corrupts indptr. */
static void w_sparse(hid_t loc, const char *name, int layout, int bad, hid_t dcpl) {
    int csr = layout != SP_CSC;
    int64_t indptr[5], n_major = csr ? 3 : 4, nnz = 0;
    int32_t indices[12];
    float data[12];
    indptr[0] = 0;
    for (int64_t a = 0; a < n_major; a++) {
        for (int b = 0; b < (csr ? 4 : 3); b++) {
            float v = csr ? DENSE[a][b] : DENSE[b][a];
            if (v != 0) {
                indices[nnz] = b;
                data[nnz++] = v;
            }
        }
        indptr[a + 1] = nnz;
    }
    if (bad) { /* not monotone: 0 2 1 6 */
        indptr[2] = 1;
    }
    hid_t g = group(loc, name);
    if (layout == SP_H5SPARSE_CSR) {
        w_attr_str(g, "h5sparse_format", "csr");
        w_attr_shape(g, "h5sparse_shape", 3, 4);
    } else {
        w_attr_str(g, "encoding-type", csr ? "csr_matrix" : "csc_matrix");
        w_attr_str(g, "encoding-version", "0.1.0");
        w_attr_shape(g, "shape", 3, 4);
    }
    w_arr(g, "indptr", H5T_STD_I64LE, H5T_NATIVE_INT64, indptr, (hsize_t)n_major + 1, H5P_DEFAULT);
    w_arr(g, "indices", H5T_STD_I32LE, H5T_NATIVE_INT32, indices, (hsize_t)nnz, H5P_DEFAULT);
    w_arr(g, "data", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, data, (hsize_t)nnz, dcpl);
    H5Gclose(g);
}

static void w_dense(hid_t loc, const char *name, hid_t ftype, hid_t dcpl) {
    hsize_t dims[2] = {3, 4};
    hid_t sp = H5Screate_simple(2, dims, NULL);
    hid_t d = H5Dcreate2(loc, name, ftype, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    assert_true(d >= 0);
    assert_true(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, DENSE) >= 0);
    H5Dclose(d);
    H5Sclose(sp);
}

typedef enum { X_CSR, X_CSC, X_H5SPARSE, X_DENSE_INT, X_DENSE_GZIP, X_NONE, X_BAD_INDPTR } x_kind;

/* A complete small h5ad: X of the given kind, obs (index named "barcode", as in pbmc3k) with a
 * categorical (anndata 0.8 group), a 0.7-style coded column, a string and a numeric column. */
static char *make_h5ad(const char *dir, const char *file, x_kind x, int n_var_names) {
    char *path = strdup(tu_path(dir, file));
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(f >= 0);
    hid_t gz = H5Pcreate(H5P_DATASET_CREATE);
    hsize_t chunk2[2] = {2, 4};
    H5Pset_chunk(gz, 2, chunk2);
    H5Pset_deflate(gz, 4);
    switch (x) {
    case X_CSR: w_sparse(f, "X", SP_CSR, 0, H5P_DEFAULT); break;
    case X_CSC: w_sparse(f, "X", SP_CSC, 0, H5P_DEFAULT); break;
    case X_H5SPARSE: w_sparse(f, "X", SP_H5SPARSE_CSR, 0, H5P_DEFAULT); break;
    case X_DENSE_INT: w_dense(f, "X", H5T_STD_I32LE, H5P_DEFAULT); break;
    case X_DENSE_GZIP: w_dense(f, "X", H5T_IEEE_F64LE, gz); break;
    case X_BAD_INDPTR: w_sparse(f, "X", SP_CSR, 1, H5P_DEFAULT); break;
    case X_NONE: break;
    }
    H5Pclose(gz);
    w_df(f, "var", "_index", GENES, (hsize_t)n_var_names);
    w_df(f, "obs", "barcode", CELLS, 3);
    hid_t obs = H5Gopen2(f, "obs", H5P_DEFAULT);
    hid_t ct = group(obs, "cell_type");
    static const char *const cats[] = {"B", "T"};
    int8_t codes[3] = {1, -1, 0};
    w_strs(ct, "categories", cats, 2);
    w_arr(ct, "codes", H5T_STD_I8LE, H5T_NATIVE_INT8, codes, 3, H5P_DEFAULT);
    w_attr_str(ct, "encoding-type", "categorical");
    H5Gclose(ct);
    hid_t old = group(obs, "__categories");
    static const char *const batches[] = {"b1", "b2"};
    w_strs(old, "batch", batches, 2);
    H5Gclose(old);
    int16_t bcodes[3] = {0, 1, 1};
    w_arr(obs, "batch", H5T_STD_I16LE, H5T_NATIVE_INT16, bcodes, 3, H5P_DEFAULT);
    static const char *const donors[] = {"d1", "d2", "d3"};
    w_strs(obs, "donor", donors, 3);
    double depth[3] = {3, 0, 9.5};
    w_arr(obs, "depth", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, depth, 3, H5P_DEFAULT);
    H5Gclose(obs);
    H5Fclose(f);
    return path;
}

static void expect_fixture(const nbs_matrix *m) {
    assert_int_equal(m->n_cells, 3);
    assert_int_equal(m->n_genes, 4);
    assert_int_equal(m->nnz, 5);
    for (int c = 0; c < 3; c++) {
        float row[4] = {0, 0, 0, 0};
        for (int64_t k = m->indptr[c]; k < m->indptr[c + 1]; k++) row[m->indices[k]] = m->data[k];
        for (int g = 0; g < 4; g++) assert_true(row[g] == DENSE[c][g]);
        assert_string_equal(m->barcodes[c], CELLS[c]);
    }
    for (int g = 0; g < 4; g++) {
        assert_string_equal(m->gene_names[g], GENES[g]);
        assert_string_equal(m->gene_ids[g], GENES[g]);
    }
}

static int read_fixture(x_kind x, const char *layer, nbs_matrix **m, nbs_error *err) {
    char *dir = tu_tmpdir();
    char *path = make_h5ad(dir, "f.h5ad", x, 4);
    int rc = nbs_io_read_h5ad(path, layer, m, err);
    free(path);
    tu_rmtree(dir);
    free(dir);
    return rc;
}

static void test_every_x_encoding(void **state) {
    (void)state;
    x_kind kinds[] = {X_CSR, X_CSC, X_H5SPARSE, X_DENSE_INT, X_DENSE_GZIP};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        nbs_matrix *m = NULL;
        nbs_error err = {0};
        int rc = read_fixture(kinds[i], "", &m, &err);
        if (rc) print_message("kind %d: %s\n", (int)kinds[i], err.msg);
        assert_int_equal(rc, NBS_OK);
        expect_fixture(m);
        nbs_matrix_free(m);
    }
}

static void test_layers_and_raw(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char *path = make_h5ad(dir, "l.h5ad", X_DENSE_INT, 4);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t layers = group(f, "layers");
    w_sparse(layers, "counts", SP_CSC, 0, H5P_DEFAULT);
    H5Gclose(layers);
    hid_t raw = group(f, "raw");
    w_sparse(raw, "X", SP_CSR, 0, H5P_DEFAULT);
    static const char *const raw_genes[4] = {"g1", "g2", "g3", "g4"};
    w_df(raw, "var", "_index", raw_genes, 4);
    H5Gclose(raw);
    H5Fclose(f);
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_h5ad(path, "counts", &m, &err), NBS_OK);
    expect_fixture(m);
    nbs_matrix_free(m);
    assert_int_equal(nbs_io_read_h5ad(path, "raw", &m, &err), NBS_OK);
    assert_int_equal(m->nnz, 5);
    assert_string_equal(m->gene_names[3], "g4"); /* names of raw/X come from raw/var */
    nbs_matrix_free(m);
    m = NULL;
    assert_int_equal(nbs_io_read_h5ad(path, "spliced", &m, &err), NBS_ERR_INPUT);
    assert_null(m);
    assert_non_null(strstr(err.msg, "layers/spliced"));
    assert_non_null(strstr(err.msg, "counts")); /* the layers there are listed */
    free(path);
    tu_rmtree(dir);
    free(dir);
}

static void test_malformed_files(void **state) {
    (void)state;
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(read_fixture(X_NONE, "", &m, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "no /X"));
    assert_int_equal(read_fixture(X_BAD_INDPTR, "", &m, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "indptr decreases"));
    assert_null(m);

    char *dir = tu_tmpdir();
    char *path = make_h5ad(dir, "short.h5ad", X_CSR, 3); /* 3 var names for 4 genes */
    assert_int_equal(nbs_io_read_h5ad(path, "", &m, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "3 names, but the matrix has 4"));
    assert_non_null(strstr(err.msg, "var"));
    free(path);
    /* an obs without the dataset its _index attribute names */
    path = make_h5ad(dir, "noidx.h5ad", X_CSR, 4);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Ldelete(f, "obs/barcode", H5P_DEFAULT);
    H5Fclose(f);
    assert_int_equal(nbs_io_read_h5ad(path, "", &m, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "'barcode'"));
    free(path);
    assert_int_equal(tu_write_file(tu_path(dir, "junk.h5ad"), "junk"), 0);
    assert_int_equal(nbs_io_read_h5ad(tu_path(dir, "junk.h5ad"), "", &m, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "junk.h5ad"));
    tu_rmtree(dir);
    free(dir);
}

/* h5py's LZF filter (id 32000) is not in libhdf5: the message names it and says what to do. The
 * filter is set optional so that this library can create the dataset without the plugin. */
static void test_lzf_filter_named(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char *path = make_h5ad(dir, "lzf.h5ad", X_NONE, 4);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    hsize_t chunk = 4;
    H5Pset_chunk(dcpl, 1, &chunk);
    if (H5Pset_filter(dcpl, 32000, H5Z_FLAG_OPTIONAL, 0, NULL) < 0) {
        H5Pclose(dcpl);
        H5Fclose(f);
        print_message("SKIP: this HDF5 library refuses to set filter 32000 without the plugin\n");
        tu_rmtree(dir);
        free(dir);
        free(path);
        skip();
    }
    w_sparse(f, "X", SP_CSR, 0, dcpl);
    H5Pclose(dcpl);
    H5Fclose(f);
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_h5ad(path, "", &m, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "LZF"));
    assert_non_null(strstr(err.msg, "32000"));
    assert_non_null(strstr(err.msg, "X/data"));
    assert_non_null(strstr(err.msg, "gzip"));
    free(path);
    tu_rmtree(dir);
    free(dir);
}

/* anndata < 0.7: obs and var are compound datasets with an "index" member. */
static void test_old_compound_dataframes(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char *path = strdup(tu_path(dir, "old.h5ad"));
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    w_sparse(f, "X", SP_H5SPARSE_CSR, 0, H5P_DEFAULT);
    typedef struct {
        char index[8];
        int64_t louvain;
    } row;
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, 8);
    hid_t ct = H5Tcreate(H5T_COMPOUND, sizeof(row));
    H5Tinsert(ct, "index", HOFFSET(row, index), st);
    H5Tinsert(ct, "louvain", HOFFSET(row, louvain), H5T_NATIVE_INT64);
    row obs[3] = {{"AAAC-1", 1}, {"AAAG-1", 0}, {"AAAT-1", 1}}, var[4] = {{"CD3E", 0}, {"MS4A1", 0}, {"LYZ", 0}, {"NKG7", 0}};
    hsize_t n = 3;
    hid_t sp = H5Screate_simple(1, &n, NULL);
    hid_t d = H5Dcreate2(f, "obs", ct, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, ct, H5S_ALL, H5S_ALL, H5P_DEFAULT, obs);
    H5Dclose(d);
    H5Sclose(sp);
    n = 4;
    sp = H5Screate_simple(1, &n, NULL);
    d = H5Dcreate2(f, "var", ct, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, ct, H5S_ALL, H5S_ALL, H5P_DEFAULT, var);
    H5Dclose(d);
    H5Sclose(sp);
    hid_t uns = group(f, "uns");
    static const char *const lv[] = {"cl0", "cl1"};
    w_strs(uns, "louvain_categories", lv, 2);
    H5Gclose(uns);
    H5Tclose(ct);
    H5Tclose(st);
    H5Fclose(f);
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    int rc = nbs_io_read_h5ad(path, "", &m, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, NBS_OK);
    expect_fixture(m);
    char **labels = NULL;
    rc = nbs_io_read_h5ad_obs(path, "louvain", m, &labels, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, NBS_OK);
    assert_string_equal(labels[0], "cl1");
    assert_string_equal(labels[1], "cl0");
    nbs_io_free_labels(labels, m->n_cells);
    nbs_matrix_free(m);
    free(path);
    tu_rmtree(dir);
    free(dir);
}

static void test_obs_columns(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char *path = make_h5ad(dir, "obs.h5ad", X_CSR, 4);
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_h5ad(path, "", &m, &err), NBS_OK);
    char **l = NULL;
    assert_int_equal(nbs_io_read_h5ad_obs(path, "cell_type", m, &l, &err), NBS_OK);
    assert_string_equal(l[0], "T");
    assert_null(l[1]); /* code -1: missing */
    assert_string_equal(l[2], "B");
    nbs_io_free_labels(l, 3);
    assert_int_equal(nbs_io_read_h5ad_obs(path, "batch", m, &l, &err), NBS_OK);
    assert_string_equal(l[0], "b1");
    assert_string_equal(l[2], "b2");
    nbs_io_free_labels(l, 3);
    assert_int_equal(nbs_io_read_h5ad_obs(path, "donor", m, &l, &err), NBS_OK);
    assert_string_equal(l[1], "d2");
    nbs_io_free_labels(l, 3);
    assert_int_equal(nbs_io_read_h5ad_obs(path, "depth", m, &l, &err), NBS_OK);
    assert_string_equal(l[0], "3");
    assert_string_equal(l[2], "9.5");
    nbs_io_free_labels(l, 3);
    l = NULL;
    assert_int_equal(nbs_io_read_h5ad_obs(path, "louvain", m, &l, &err), NBS_ERR_INPUT);
    assert_null(l);
    assert_non_null(strstr(err.msg, "no column 'louvain'"));
    assert_non_null(strstr(err.msg, "cell_type")); /* what is there instead */
    /* labels follow the matrix's cells, which may be a subset in another order */
    int64_t keep[2] = {0, 2};
    nbs_matrix *sub = nbs_matrix_subset(m, keep, 2, NULL, 0, &err);
    assert_non_null(sub);
    {
        char *tmp = sub->barcodes[0];
        sub->barcodes[0] = sub->barcodes[1];
        sub->barcodes[1] = tmp;
        assert_int_equal(nbs_io_read_h5ad_obs(path, "cell_type", sub, &l, &err), NBS_OK);
        assert_string_equal(l[0], "B");
        assert_string_equal(l[1], "T");
        nbs_io_free_labels(l, 2);
        nbs_matrix_free(sub);
    }
    nbs_matrix_free(m);
    free(path);
    tu_rmtree(dir);
    free(dir);
}

static void test_pbmc3k_h5ad_matches_mtx(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("pbmc3k/pbmc3k_counts.h5ad");
    nbs_matrix *h = NULL, *t = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_h5ad(tu_data("pbmc3k/pbmc3k_counts.h5ad"), "", &h, &err), NBS_OK);
    assert_int_equal(nbs_io_read_10x_mtx_dir(tu_data("pbmc3k"), &t, &err), NBS_OK);
    assert_int_equal(h->n_cells, t->n_cells);
    assert_int_equal(h->n_genes, t->n_genes);
    assert_int_equal(h->nnz, t->nnz);
    assert_memory_equal(h->indptr, t->indptr, (size_t)(h->n_cells + 1) * sizeof *h->indptr);
    assert_memory_equal(h->indices, t->indices, (size_t)h->nnz * sizeof *h->indices);
    assert_memory_equal(h->data, t->data, (size_t)h->nnz * sizeof *h->data);
    for (int64_t c = 0; c < h->n_cells; c++) assert_string_equal(h->barcodes[c], t->barcodes[c]);
    for (int64_t g = 0; g < h->n_genes; g++) assert_string_equal(h->gene_ids[g], t->gene_ids[g]);
    /* the README's counts of obs cell_type */
    char **l = NULL;
    assert_int_equal(nbs_io_read_h5ad_obs(tu_data("pbmc3k/pbmc3k_counts.h5ad"), "cell_type", h, &l, &err), NBS_OK);
    static const struct {
        const char *name;
        int n;
    } want[] = {{"Naive CD4 T", 697}, {"Memory CD4 T", 483}, {"CD14+ Mono", 480}, {"B", 344}, {"CD8 T", 271},
                {"FCGR3A+ Mono", 162}, {"NK", 155}, {"DC", 32}, {"Platelet", 14}};
    int total = 0;
    for (size_t k = 0; k < 9; k++) {
        int n = 0;
        for (int64_t c = 0; c < h->n_cells; c++) n += l[c] && !strcmp(l[c], want[k].name);
        assert_int_equal(n, want[k].n);
        total += n;
    }
    assert_int_equal(total, 2638);
    nbs_io_free_labels(l, h->n_cells);
    nbs_matrix_free(h);
    nbs_matrix_free(t);
}

static void test_paul15_clusters(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("paul15/paul15.h5ad.gz");
    const char *path = tu_data("paul15/paul15.h5ad.gz");
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_h5ad(path, NULL, &m, &err), NBS_OK);
    char **l = NULL;
    assert_int_equal(nbs_io_read_h5ad_obs(path, "paul15_clusters", m, &l, &err), NBS_OK);
    int ery = 0, eos = 0;
    for (int64_t c = 0; c < m->n_cells; c++) {
        assert_non_null(l[c]);
        ery += !strcmp(l[c], "2Ery");
        eos += !strcmp(l[c], "18Eos");
    }
    assert_int_equal(ery, 329);
    assert_int_equal(eos, 9);
    nbs_io_free_labels(l, m->n_cells);
    nbs_matrix_free(m);
}

/* X holding normalised values: nbs_io_read's error says where the counts may be instead. */
static void test_normalised_x_points_to_counts(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char *path = make_h5ad(dir, "norm.h5ad", X_NONE, 4);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hsize_t dims[2] = {3, 4};
    float logv[12] = {0, 0.69f, 0, 1.1f, 0, 0, 0, 0, 1.79f, 0.69f, 1.39f, 0};
    hid_t sp = H5Screate_simple(2, dims, NULL);
    hid_t d = H5Dcreate2(f, "X", H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, logv);
    H5Dclose(d);
    H5Sclose(sp);
    hid_t layers = group(f, "layers");
    w_sparse(layers, "counts", SP_CSR, 0, H5P_DEFAULT);
    H5Gclose(layers);
    H5Fclose(f);
    nbs_input_config in;
    memset(&in, 0, sizeof in);
    snprintf(in.path, sizeof in.path, "%s", path);
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read(&in, &m, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "non-integer"));
    assert_non_null(strstr(err.msg, "layers: counts"));
    snprintf(in.layer, sizeof in.layer, "counts");
    assert_int_equal(nbs_io_read(&in, &m, &err), NBS_OK);
    expect_fixture(m);
    nbs_matrix_free(m);
    free(path);
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_x_encoding),
        cmocka_unit_test(test_layers_and_raw),
        cmocka_unit_test(test_malformed_files),
        cmocka_unit_test(test_lzf_filter_named),
        cmocka_unit_test(test_old_compound_dataframes),
        cmocka_unit_test(test_obs_columns),
        cmocka_unit_test(test_pbmc3k_h5ad_matches_mtx),
        cmocka_unit_test(test_paul15_clusters),
        cmocka_unit_test(test_normalised_x_points_to_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
