/* io_loom.c: loom files (loompy 2 and 3 layouts) written here with the HDF5 C API, read into
 * the cells x genes matrix; malformed ones refused with the place named; format detection of
 * loom against 10x HDF5 and h5ad. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hdf5.h>
#include <zlib.h>

#include "nbsphere/io.h"

typedef struct {
    int64_t G, C;
    hid_t ftype;        /* file type of /matrix */
    hsize_t chunk;      /* chunk edge (gzip'd), 0 = contiguous */
    int vlen;           /* names as variable-length UTF-8 (loompy 3), else fixed-length (loompy 2) */
    int no_row_attrs, no_gene, no_accession, genes_short, transposed, one_d;
    float poison;       /* when nonzero, entry (gene 1, cell 2) holds it */
    const char *layer;  /* a layer holding the same counts; /matrix then holds them + 0.5 */
} loom_spec;

/* The counts of gene g in cell c: about a quarter nonzero, distinct, integers. */
static float count_of(int64_t g, int64_t c) {
    return (g * 3 + c) % 4 == 0 ? (float)((g % 97) + 10 * (c % 13) + 1) : 0.0f;
}

static void w_names(hid_t loc, const char *name, const char *fmt, int64_t n, int vlen) {
    char **s = malloc(sizeof *s * (size_t)n);
    size_t w = 1;
    for (int64_t i = 0; i < n; i++) {
        s[i] = malloc(32);
        snprintf(s[i], 32, fmt, (long long)i);
        w = strlen(s[i]) > w ? strlen(s[i]) : w;
    }
    hsize_t dim = (hsize_t)n;
    hid_t t = H5Tcopy(H5T_C_S1), sp = H5Screate_simple(1, &dim, NULL);
    if (vlen) {
        H5Tset_size(t, H5T_VARIABLE);
        H5Tset_cset(t, H5T_CSET_UTF8);
        hid_t d = H5Dcreate2(loc, name, t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        assert_true(H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, s) >= 0);
        H5Dclose(d);
    } else {
        char *buf = calloc((size_t)n, w);
        for (int64_t i = 0; i < n; i++) memcpy(buf + (size_t)i * w, s[i], strlen(s[i]));
        H5Tset_size(t, w);
        H5Tset_strpad(t, H5T_STR_NULLPAD);
        hid_t d = H5Dcreate2(loc, name, t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        assert_true(H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0);
        H5Dclose(d);
        free(buf);
    }
    H5Sclose(sp);
    H5Tclose(t);
    for (int64_t i = 0; i < n; i++) free(s[i]);
    free(s);
}

/* A genes x cells dataset of the counts (+ add), as loompy writes it. */
static void w_matrix(hid_t loc, const char *name, const loom_spec *sp, float add) {
    const int64_t rows = sp->transposed ? sp->C : sp->G, cols = sp->transposed ? sp->G : sp->C;
    float *v = malloc(sizeof *v * (size_t)(rows * cols));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            v[r * cols + c] = sp->transposed ? count_of(c, r) : count_of(r, c) + add;
    if (sp->poison != 0) v[1 * cols + 2] = sp->poison;
    hsize_t dims[2] = {(hsize_t)rows, (hsize_t)cols}, n = dims[0] * dims[1];
    hid_t space = sp->one_d ? H5Screate_simple(1, &n, NULL) : H5Screate_simple(2, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (sp->chunk && !sp->one_d) {
        hsize_t ch[2] = {sp->chunk < dims[0] ? sp->chunk : dims[0], sp->chunk < dims[1] ? sp->chunk : dims[1]};
        H5Pset_chunk(dcpl, 2, ch);
        H5Pset_deflate(dcpl, 1);
    }
    hid_t d = H5Dcreate2(loc, name, sp->ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    assert_true(d >= 0);
    assert_true(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0);
    H5Dclose(d);
    H5Pclose(dcpl);
    H5Sclose(space);
    free(v);
}

static void write_loom(const char *path, const loom_spec *sp) {
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    assert_true(f >= 0);
    w_matrix(f, "matrix", sp, sp->layer ? 0.5f : 0.0f);
    hid_t layers = H5Gcreate2(f, "layers", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (sp->layer) w_matrix(layers, sp->layer, sp, 0.0f);
    H5Gclose(layers);
    if (!sp->no_row_attrs) {
        hid_t ra = H5Gcreate2(f, "row_attrs", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (!sp->no_gene) w_names(ra, "Gene", "Gene%lld", sp->genes_short ? sp->G - 1 : sp->G, sp->vlen);
        if (!sp->no_accession) w_names(ra, "Accession", "ENSG%05lld", sp->G, sp->vlen);
        H5Gclose(ra);
    }
    hid_t ca = H5Gcreate2(f, "col_attrs", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    w_names(ca, "CellID", "cell%lld", sp->C, sp->vlen);
    H5Gclose(ca);
    hid_t g;
    g = H5Gcreate2(f, "row_graphs", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Gclose(g);
    g = H5Gcreate2(f, "col_graphs", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Gclose(g);
    H5Fclose(f);
}

static int read_loom(const char *path, const char *layer, nbs_format format, nbs_matrix **m, nbs_error *err) {
    nbs_config c;
    nbs_config_defaults(&c);
    snprintf(c.input.path, sizeof c.input.path, "%s", path);
    snprintf(c.input.layer, sizeof c.input.layer, "%s", layer ? layer : "");
    c.input.format = format;
    *m = NULL;
    return nbs_io_read(&c.input, m, err);
}

/* m is the loom's counts transposed: cell c's row holds count_of(g, c) for every gene. */
static void expect_counts(const nbs_matrix *m, int64_t G, int64_t C, int with_ids) {
    assert_int_equal(m->n_cells, C);
    assert_int_equal(m->n_genes, G);
    char want[32];
    for (int64_t c = 0; c < C; c++) {
        snprintf(want, sizeof want, "cell%lld", (long long)c);
        assert_string_equal(m->barcodes[c], want);
        int64_t k = m->indptr[c];
        for (int64_t g = 0; g < G; g++) {
            float v = count_of(g, c);
            if (v == 0) continue;
            assert_true(k < m->indptr[c + 1]);
            assert_int_equal(m->indices[k], g);
            assert_true(m->data[k] == v);
            k++;
        }
        assert_int_equal(k, m->indptr[c + 1]);
    }
    for (int64_t g = 0; g < G; g++) {
        snprintf(want, sizeof want, "Gene%lld", (long long)g);
        assert_string_equal(m->gene_names[g], want);
        if (with_ids) snprintf(want, sizeof want, "ENSG%05lld", (long long)g);
        assert_string_equal(m->gene_ids[g], want);
    }
    assert_int_equal(m->values_are_integer, 1);
}

/* Small looms in both string layouts, integer and float matrices, chunked and contiguous. */
static void test_loom_small(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    const char *p = tu_path(dir, "small.loom");
    loom_spec a = {.G = 4, .C = 5, .ftype = H5T_STD_U16LE, .chunk = 2, .vlen = 1};
    loom_spec b = {.G = 7, .C = 3, .ftype = H5T_IEEE_F32LE, .chunk = 0, .vlen = 0, .no_accession = 1};
    const loom_spec *specs[2] = {&a, &b};
    for (int i = 0; i < 2; i++) {
        write_loom(p, specs[i]);
        nbs_format f = NBS_FMT_AUTO;
        nbs_error err = {0};
        assert_int_equal(nbs_io_detect_format(p, &f, &err), NBS_OK);
        assert_int_equal(f, NBS_FMT_LOOM);
        nbs_matrix *m = NULL;
        int rc = read_loom(p, NULL, NBS_FMT_AUTO, &m, &err);
        if (rc) print_message("%s\n", err.msg);
        assert_int_equal(rc, NBS_OK);
        expect_counts(m, specs[i]->G, specs[i]->C, !specs[i]->no_accession);
        nbs_matrix_free(m);
        assert_int_equal(read_loom(p, NULL, NBS_FMT_LOOM, &m, &err), NBS_OK); /* input.format: loom */
        nbs_matrix_free(m);
    }
    tu_rmtree(dir);
    free(dir);
}

/* Larger than one block of cells (4.5 M values, chunks of 64 x 64): every entry in place across
 * the block boundary. */
static void test_loom_blocks(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    const char *p = tu_path(dir, "big.loom");
    loom_spec s = {.G = 3000, .C = 1500, .ftype = H5T_IEEE_F32LE, .chunk = 64, .vlen = 1};
    write_loom(p, &s);
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    int rc = read_loom(p, NULL, NBS_FMT_AUTO, &m, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, NBS_OK);
    expect_counts(m, s.G, s.C, 1);
    assert_int_equal(m->nnz, s.G * s.C / 4);
    nbs_matrix_free(m);
    tu_rmtree(dir);
    free(dir);
}

/* Values are checked as the other readers check them; a loom whose /matrix is not counts says
 * which layers there are. */
static void test_loom_values_and_layers(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    const char *p = tu_path(dir, "v.loom");
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    loom_spec s = {.G = 4, .C = 5, .ftype = H5T_IEEE_F32LE, .chunk = 2, .vlen = 1, .poison = -3};
    write_loom(p, &s);
    assert_int_equal(read_loom(p, NULL, NBS_FMT_AUTO, &m, &err), NBS_ERR_INPUT);
    assert_null(m);
    assert_non_null(strstr(err.msg, "v.loom"));
    assert_non_null(strstr(err.msg, "negative value -3"));
    s.poison = NAN;
    write_loom(p, &s);
    assert_int_equal(read_loom(p, NULL, NBS_FMT_AUTO, &m, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "non-finite"));
    s.poison = 0;
    s.layer = "spliced";
    write_loom(p, &s);
    assert_int_equal(read_loom(p, NULL, NBS_FMT_AUTO, &m, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "non-integer"));
    assert_non_null(strstr(err.msg, "also holds layers/spliced: choose one with input.layer"));
    assert_int_equal(read_loom(p, "spliced", NBS_FMT_AUTO, &m, &err), NBS_OK);
    expect_counts(m, s.G, s.C, 1);
    nbs_matrix_free(m);
    assert_int_equal(read_loom(p, "unspliced", NBS_FMT_AUTO, &m, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "no loom layer 'unspliced'; /layers holds spliced"));
    tu_rmtree(dir);
    free(dir);
}

static void expect_loom_error(const char *path, const char *needle) {
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(read_loom(path, NULL, NBS_FMT_AUTO, &m, &err), NBS_ERR_INPUT);
    assert_null(m);
    if (!strstr(err.msg, needle)) print_message("message was: %s\n", err.msg);
    assert_non_null(strstr(err.msg, needle));
    assert_non_null(strstr(err.msg, "bad.loom"));
}

static void test_loom_malformed(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    const char *p = tu_path(dir, "bad.loom");
    loom_spec s = {.G = 4, .C = 5, .ftype = H5T_IEEE_F32LE, .vlen = 1};
    s.no_row_attrs = 1;
    write_loom(p, &s);
    expect_loom_error(p, "a loom file needs a group /row_attrs with the gene names");
    s.no_row_attrs = 0, s.no_gene = 1;
    write_loom(p, &s);
    expect_loom_error(p, "no gene names: /row_attrs holds Accession; expected a string dataset Gene");
    s.no_gene = 0, s.genes_short = 1;
    write_loom(p, &s);
    expect_loom_error(p, "/matrix is 4 x 5, but /row_attrs/Gene has 3 entries and /col_attrs/CellID 5");
    s.genes_short = 0, s.transposed = 1;
    write_loom(p, &s);
    expect_loom_error(p, "this one looks transposed: cells x genes");
    s.transposed = 0, s.one_d = 1;
    write_loom(p, &s);
    expect_loom_error(p, "dataset /matrix must be a 2-D numeric array (genes x cells), found rank 1");
    /* named .loom, not HDF5 at all */
    assert_int_equal(tu_write_file(p, "version https://git-lfs.github.com/spec/v1\n"), 0);
    nbs_format f;
    nbs_error err = {0};
    assert_int_equal(nbs_io_detect_format(p, &f, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "named like an HDF5 file"));
    tu_rmtree(dir);
    free(dir);
}

/* loom, 10x HDF5 and h5ad of the same counts are told apart by their groups; each reader sent
 * the wrong kind says what the file is instead of failing on a missing group. */
static void test_detect_loom_10x_h5ad(void **state) {
    (void)state;
    char *dir = tu_tmpdir(), *tmp = tu_tmpdir();
    char loom[4096], tenx[4096], h5ad[4096], gz[4096];
    snprintf(loom, sizeof loom, "%s", tu_path(dir, "a.loom"));
    snprintf(tenx, sizeof tenx, "%s", tu_path(dir, "a.h5"));
    snprintf(h5ad, sizeof h5ad, "%s", tu_path(dir, "a.h5ad"));
    snprintf(gz, sizeof gz, "%s", tu_path(dir, "a.loom.gz"));
    loom_spec s = {.G = 4, .C = 5, .ftype = H5T_STD_I32LE, .chunk = 2, .vlen = 1};
    write_loom(loom, &s);
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(read_loom(loom, NULL, NBS_FMT_AUTO, &m, &err), NBS_OK);
    assert_int_equal(nbs_io_write_10x_h5(tenx, m, &err), NBS_OK);
    assert_int_equal(nbs_io_write_h5ad(h5ad, NULL, m, 0, NULL, NULL, &err), NBS_OK);
    size_t n = 0;
    char *bytes = tu_read_file(loom, &n);
    gzFile g = gzopen(gz, "wb");
    assert_int_equal(gzwrite(g, bytes, (unsigned)n), (int)n);
    gzclose(g);
    free(bytes);
    const char *paths[4] = {loom, tenx, h5ad, gz};
    const nbs_format want[4] = {NBS_FMT_LOOM, NBS_FMT_10X_H5, NBS_FMT_H5AD, NBS_FMT_LOOM};
    setenv("TMPDIR", tmp, 1);
    for (int i = 0; i < 4; i++) {
        nbs_format f = NBS_FMT_AUTO;
        assert_int_equal(nbs_io_detect_format(paths[i], &f, &err), NBS_OK);
        assert_int_equal(f, want[i]);
        nbs_matrix *back = NULL;
        int rc = read_loom(paths[i], NULL, NBS_FMT_AUTO, &back, &err);
        if (rc) print_message("%s: %s\n", paths[i], err.msg);
        assert_int_equal(rc, NBS_OK);
        tu_expect_same_matrix(m, back);
        nbs_matrix_free(back);
    }
    assert_int_equal(tu_count_files(tmp), 0);
    unsetenv("TMPDIR");
    nbs_matrix_free(m);
    m = NULL;
    assert_int_equal(nbs_io_read_10x_h5(loom, NULL, &m, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "a.loom: this is a loom file, not a 10x HDF5 file; set input.format to auto or loom"));
    assert_int_equal(nbs_io_read_loom(tenx, NULL, &m, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "a.h5: this is a 10x HDF5 file, not a loom file"));
    assert_int_equal(nbs_io_read_loom(h5ad, NULL, &m, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "this is an AnnData .h5ad file, not a loom file"));
    nbs_format f;
    assert_int_equal(nbs_format_parse("loom", &f), 0);
    assert_int_equal(f, NBS_FMT_LOOM);
    assert_string_equal(nbs_format_name(NBS_FMT_LOOM), "loom");
    tu_rmtree(tmp);
    tu_rmtree(dir);
    free(tmp);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loom_small),
        cmocka_unit_test(test_loom_blocks),
        cmocka_unit_test(test_loom_values_and_layers),
        cmocka_unit_test(test_loom_malformed),
        cmocka_unit_test(test_detect_loom_10x_h5ad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
