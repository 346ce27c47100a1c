/* libFuzzer harness for the HDF5 readers' own checks (attributes, shapes, offsets, indices,
 * names), not for libhdf5's parsing of corrupt files: the input is decoded into the parts of a
 * 10x v3 file or an h5ad (each part's presence, type, rank and values chosen by the bytes), a
 * well-formed HDF5 file holding them is written with the HDF5 API, and nbs_io_read reads it. */
#include <hdf5.h>

#include "fuzz_util.h"
#include "nbsphere/io.h"

typedef struct {
    const uint8_t *p;
    size_t n;
} cursor;

static uint8_t take8(cursor *c) {
    if (!c->n) return 0;
    c->n--;
    return *c->p++;
}

/* Small values are common in real files; a flag byte widens the range to anything. */
static int64_t take_int(cursor *c) {
    uint8_t k = take8(c);
    if (k < 200) return (int64_t)(k % 12) - 1;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | take8(c);
    return (int64_t)v;
}

/* Lengths come from any int64 the input holds: one more, saturating, so a length plus one never
 * overflows (put_array and put_strings clamp anything out of range). */
static int64_t one_more(int64_t n) {
    return n == INT64_MAX ? n : n + 1;
}

static void put_array(hid_t loc, const char *name, cursor *c, int64_t len) {
    if (len < 0 || len > 64) len = 64;
    uint8_t form = take8(c);
    hid_t ftype = (form & 3) == 0 ? H5T_STD_I64LE : (form & 3) == 1 ? H5T_STD_I32LE
                : (form & 3) == 2 ? H5T_IEEE_F32LE : H5T_IEEE_F64LE;
    int rank = (form & 4) ? 2 : 1;
    hsize_t dims[2] = {(hsize_t)len, 1};
    double v[64];
    for (int64_t i = 0; i < len; i++) {
        uint8_t k = take8(c);
        v[i] = k == 255 ? 0.0 / 0.0 : k == 254 ? -1.5 : k == 253 ? 1e300 : (double)(k % 16);
    }
    hid_t sp = H5Screate_simple(rank, dims, NULL);
    hid_t d = H5Dcreate2(loc, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (d >= 0) {
        H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
        H5Dclose(d);
    }
    H5Sclose(sp);
}

static void put_strings(hid_t loc, const char *name, cursor *c, int64_t n) {
    if (n < 0 || n > 64) n = 64;
    char buf[64][4];
    const char *s[64];
    for (int64_t i = 0; i < n; i++) {
        uint8_t k = take8(c);
        /* mostly distinct ASCII names; now and then a byte that is not UTF-8 or an empty name */
        buf[i][0] = k == 255 ? (char)0xe9 : (char)('a' + (i % 26));
        buf[i][1] = k == 254 ? '\0' : (char)('a' + (i / 26) % 26);
        buf[i][2] = (char)('0' + k % 10);
        buf[i][3] = '\0';
        s[i] = buf[i];
    }
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    hsize_t dim = (hsize_t)n;
    hid_t sp = H5Screate_simple(1, &dim, NULL);
    hid_t d = H5Dcreate2(loc, name, t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (d >= 0) {
        H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, s);
        H5Dclose(d);
    }
    H5Sclose(sp);
    H5Tclose(t);
}

static void put_attr_string(hid_t obj, const char *name, const char *value) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) {
        H5Awrite(a, t, &value);
        H5Aclose(a);
    }
    H5Sclose(sp);
    H5Tclose(t);
}

static void put_shape_attr(hid_t obj, cursor *c, int64_t r, int64_t k) {
    uint8_t form = take8(c);
    if (form % 5 == 0) return; /* no shape */
    if (form % 5 == 1) {
        put_attr_string(obj, "shape", "(3, 4)");
        return;
    }
    int64_t v[3] = {r, k, take_int(c)};
    hsize_t n = form % 5 == 2 ? 3 : 2;
    hid_t sp = H5Screate_simple(1, &n, NULL);
    hid_t a = H5Acreate2(obj, form % 5 == 3 ? "h5sparse_shape" : "shape", H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) {
        H5Awrite(a, H5T_NATIVE_INT64, v);
        H5Aclose(a);
    }
    H5Sclose(sp);
}

static void put_dataframe(hid_t f, const char *name, cursor *c, int64_t n) {
    hid_t g = H5Gcreate2(f, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    uint8_t form = take8(c);
    if (!(form & 1)) put_attr_string(g, "_index", (form & 2) ? "missing" : "_index");
    put_attr_string(g, "encoding-type", "dataframe");
    if (!(form & 4)) put_strings(g, "_index", c, form & 8 ? one_more(n) : n);
    H5Gclose(g);
}

static void write_10x(hid_t f, cursor *c) {
    hid_t g = H5Gcreate2(f, "matrix", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int64_t genes = take_int(c), cells = take_int(c), nnz = take_int(c);
    hsize_t two = 2;
    int64_t shape[2] = {genes, cells};
    if (take8(c) & 1) {
        hid_t sp = H5Screate_simple(1, &two, NULL);
        hid_t d = H5Dcreate2(g, "shape", H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        H5Dwrite(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, shape);
        H5Dclose(d);
        H5Sclose(sp);
    } else {
        put_array(g, "shape", c, 2);
    }
    uint8_t parts = take8(c);
    if (!(parts & 1)) put_array(g, "data", c, nnz);
    if (!(parts & 2)) put_array(g, "indices", c, nnz);
    if (!(parts & 4)) put_array(g, "indptr", c, one_more(cells));
    if (!(parts & 8)) put_strings(g, "barcodes", c, cells);
    if (!(parts & 16)) {
        hid_t ft = H5Gcreate2(g, "features", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        put_strings(ft, "id", c, genes);
        if (!(parts & 32)) put_strings(ft, "name", c, genes);
        if (!(parts & 64)) put_strings(ft, "feature_type", c, genes);
        H5Gclose(ft);
    }
    H5Gclose(g);
}

static void write_h5ad(hid_t f, cursor *c) {
    int64_t cells = take_int(c), genes = take_int(c), nnz = take_int(c);
    uint8_t form = take8(c);
    if (form & 1) { /* dense X */
        int small = cells >= 0 && genes >= 0 && cells <= 64 && genes <= 64;
        put_array(f, "X", c, small && cells * genes <= 64 ? cells * genes : 0);
    } else if (!(form & 2)) {
        hid_t g = H5Gcreate2(f, "X", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        int csr = !(form & 4);
        put_attr_string(g, "encoding-type", form & 8 ? "coo_matrix" : csr ? "csr_matrix" : "csc_matrix");
        put_shape_attr(g, c, cells, genes);
        put_array(g, "data", c, nnz);
        put_array(g, "indices", c, nnz);
        put_array(g, "indptr", c, one_more(csr ? cells : genes));
        H5Gclose(g);
    }
    put_dataframe(f, "obs", c, cells);
    put_dataframe(f, "var", c, genes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int init;
    if (!init) {
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
        nbs_log_set_handler(fuzz_quiet_log, NULL);
        init = 1;
    }
    if (size < 1) return 0;
    cursor c = {data + 1, size - 1};
    int h5ad = data[0] & 1;
    const char *path = fuzz_file(NULL, 0, h5ad ? ".h5ad" : ".h5");
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) abort();
    if (h5ad) write_h5ad(f, &c);
    else write_10x(f, &c);
    H5Fclose(f);
    nbs_input_config in = {0};
    snprintf(in.path, sizeof in.path, "%s", path);
    in.format = h5ad ? NBS_FMT_H5AD : NBS_FMT_10X_H5;
    in.non_integer = (data[0] & 2) ? NBS_NONINT_ACCEPT : NBS_NONINT_ERROR;
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    int rc = nbs_io_read(&in, &m, &err);
    fuzz_check_error(rc, &err);
    if (!rc && m->indptr[m->n_cells] != m->nnz) abort();
    nbs_matrix_free(m);
    return 0;
}
