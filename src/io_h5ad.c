/* AnnData .h5ad reader: the count matrix (X, raw/X or a layer; dense, CSR or CSC), the obs/var
 * names and obs columns used as labels. Handles the encodings anndata has written over time:
 * dataframe groups with an `_index` attribute (>= 0.7), compound datasets (< 0.7), categorical
 * groups (>= 0.8) and codes with `__categories/<col>` (0.7), and the h5sparse attributes of
 * early sparse X. A gzip-compressed .h5ad is inflated into a temporary file first. */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "io_h5_internal.h"
#include "io_internal.h"
#include "nbsphere/io.h"

/* An open h5ad; a .h5ad.gz is read through nbs_h5_open_input's inflated copy, whose name is gone
 * as soon as HDF5 holds it open. */
typedef struct {
    hid_t f;
} h5ad_file;

static int h5ad_open(const char *path, h5ad_file *h, nbs_error *err) {
    h->f = nbs_h5_open_input(path, err);
    return h->f < 0 ? (int)err->code : NBS_OK;
}

static void h5ad_close(h5ad_file *h) {
    if (h->f >= 0) H5Fclose(h->f);
    h->f = -1;
}

/* A 2-element integer attribute (shape, h5sparse_shape). */
static int attr_shape(hid_t obj, const char *name, int64_t shape[2]) {
    if (H5Aexists(obj, name) <= 0) return -1;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t sp = a >= 0 ? H5Aget_space(a) : -1, t = a >= 0 ? H5Aget_type(a) : -1;
    int ok = a >= 0 && H5Sget_simple_extent_npoints(sp) == 2 && H5Tget_class(t) == H5T_INTEGER &&
             H5Aread(a, H5T_NATIVE_INT64, shape) >= 0;
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    if (a >= 0) H5Aclose(a);
    return ok ? 0 : -1;
}

/* The last step of both X layouts: the compressed arrays become a validated CSR matrix (taken:
 * freed either way). rc: the status so far; nothing is built after a failure. */
static int finish_compressed(int rc, nbs_compressed_view *v, int major_is_cells, const char *path,
                             const char *loc, nbs_matrix **out, nbs_error *err) {
    if (!rc) {
        char what[NBS_PATH_MAX + 64];
        snprintf(what, sizeof what, "%s (/%s)", path, loc);
        *out = nbs_matrix_take_compressed(v, major_is_cells, what, err);
        if (!*out) rc = err->code;
    }
    free(v->indptr);
    free(v->indices);
    free(v->data);
    return rc;
}

/* Dense X: read in blocks of rows (hyperslabs), keeping only the nonzeros, so a dense file
 * never needs a full double copy in memory. */
static int read_dense(hid_t d, const char *path, const char *loc, nbs_matrix **out, nbs_error *err) {
    hid_t sp = H5Dget_space(d), ty = H5Dget_type(d);
    hsize_t dims[3] = {0, 0, 0};
    int rank = H5Sget_simple_extent_ndims(sp);
    H5T_class_t cls = H5Tget_class(ty);
    H5Tclose(ty);
    if (rank == 2) H5Sget_simple_extent_dims(sp, dims, NULL);
    int rc = NBS_OK;
    if (rank != 2 || (cls != H5T_INTEGER && cls != H5T_FLOAT))
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: dataset /%s must be a 2-D numeric array (cells x genes), "
                           "found rank %d%s", path, loc, rank, cls == H5T_STRING ? " of strings" : "");
    else if (dims[1] > INT32_MAX)
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s has %llu genes; at most %d are supported", path, loc,
                           (unsigned long long)dims[1], INT32_MAX);
    if (!rc) rc = nbs_h5_check_filters(d, path, loc, err);
    int64_t n_cells = (int64_t)dims[0], n_genes = (int64_t)dims[1], nnz = 0, cap = 0;
    int64_t *indptr = NULL;
    int32_t *indices = NULL;
    float *data = NULL;
    double *block = NULL;
    hsize_t rows = n_genes > 0 ? (hsize_t)(1 << 22) / (hsize_t)n_genes + 1 : 1;
    if (!rc && (!(indptr = nbs_calloc((size_t)n_cells + 1, sizeof *indptr, err)) ||
                !(block = nbs_malloc((size_t)rows * (size_t)(n_genes ? n_genes : 1) * sizeof *block, err))))
        rc = NBS_ERR_NOMEM;
    for (hsize_t r0 = 0; !rc && r0 < dims[0]; r0 += rows) {
        hsize_t cnt[2] = {dims[0] - r0 < rows ? dims[0] - r0 : rows, dims[1]}, start[2] = {r0, 0};
        hid_t ms = H5Screate_simple(2, cnt, NULL);
        H5Sselect_hyperslab(sp, H5S_SELECT_SET, start, NULL, cnt, NULL);
        if (H5Dread(d, H5T_NATIVE_DOUBLE, ms, sp, H5P_DEFAULT, block) < 0)
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: cannot read rows %llu.. of /%s (corrupt or truncated file?)",
                               path, (unsigned long long)r0 + 1, loc);
        H5Sclose(ms);
        for (hsize_t i = 0; !rc && i < cnt[0]; i++) {
            const double *row = block + i * dims[1];
            for (hsize_t g = 0; g < dims[1]; g++) {
                if (row[g] == 0) continue;
                if (nnz == cap) {
                    cap = cap ? cap * 2 : 1 << 16;
                    int32_t *ni = realloc(indices, (size_t)cap * sizeof *ni);
                    if (ni) indices = ni;
                    float *nd = realloc(data, (size_t)cap * sizeof *nd);
                    if (nd) data = nd;
                    if (!ni || !nd) {
                        rc = nbs_error_set(err, NBS_ERR_NOMEM, "%s: out of memory reading /%s", path, loc);
                        break;
                    }
                }
                indices[nnz] = (int32_t)g;
                data[nnz++] = (float)row[g];
            }
            indptr[r0 + i + 1] = nnz;
        }
    }
    H5Sclose(sp);
    free(block);
    nbs_compressed_view v = {n_cells, n_genes, nnz, indptr, indices, data};
    return finish_compressed(rc, &v, 1, path, loc, out, err);
}

/* Sparse X: a group with data/indices/indptr; offsets are checked against the stored lengths
 * before any entry array of that size is read. */
static int read_sparse(hid_t g, const char *path, const char *loc, nbs_matrix **out, nbs_error *err) {
    char enc[64] = "";
    int64_t shape[2];
    int csr;
    if (nbs_h5_attr_string(g, "encoding-type", enc, sizeof enc) == 0) {
        if (!strcmp(enc, "csr_matrix")) csr = 1;
        else if (!strcmp(enc, "csc_matrix")) csr = 0;
        else
            return nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s has encoding-type '%s'; expected csr_matrix or "
                                 "csc_matrix (or a dense array)", path, loc, enc);
    } else if (nbs_h5_attr_string(g, "h5sparse_format", enc, sizeof enc) == 0 && (!strcmp(enc, "csr") || !strcmp(enc, "csc"))) {
        csr = !strcmp(enc, "csr");
    } else {
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: group /%s has no encoding-type (csr_matrix or csc_matrix) "
                             "nor h5sparse_format attribute; is it a sparse matrix written by anndata?", path, loc);
    }
    if (attr_shape(g, "shape", shape) && attr_shape(g, "h5sparse_shape", shape))
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s has no 2-element integer 'shape' attribute", path, loc);
    if (shape[0] < 0 || shape[1] < 0 || shape[1] > INT32_MAX || shape[0] > INT32_MAX)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s shape (%lld, %lld) is out of range", path, loc,
                             (long long)shape[0], (long long)shape[1]);
    int64_t n_major = csr ? shape[0] : shape[1], n_minor = csr ? shape[1] : shape[0], len, n_data, n_idx;
    int64_t *indptr = nbs_h5_read_1d(g, "indptr", path, loc, H5T_NATIVE_INT64, sizeof *indptr, n_major + 1, &len, err);
    if (!indptr) return err->code;
    int rc = NBS_OK;
    hid_t dd = nbs_h5_open_1d(g, "data", path, loc, &n_data, err);
    hid_t di = dd < 0 ? -1 : nbs_h5_open_1d(g, "indices", path, loc, &n_idx, err);
    if (dd >= 0) H5Dclose(dd);
    if (di >= 0) H5Dclose(di);
    if (dd < 0 || di < 0) rc = err->code;
    else if (n_data != n_idx)
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s/data has %lld entries but /%s/indices has %lld", path, loc,
                           (long long)n_data, loc, (long long)n_idx);
    else if (indptr[0] != 0 || indptr[n_major] != n_data)
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s/indptr must start at 0 and end at the %lld stored entries, "
                           "found %lld and %lld", path, loc, (long long)n_data, (long long)indptr[0],
                           (long long)indptr[n_major]);
    for (int64_t i = 0; !rc && i < n_major; i++)
        if (indptr[i + 1] < indptr[i])
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s/indptr decreases at position %lld (%lld > %lld); the "
                               "file is corrupt", path, loc, (long long)i + 1, (long long)indptr[i], (long long)indptr[i + 1]);
    int32_t *indices = NULL;
    float *data = NULL;
    if (!rc && (!(indices = nbs_h5_read_1d(g, "indices", path, loc, H5T_NATIVE_INT32, sizeof *indices, n_data, &len, err)) ||
                !(data = nbs_h5_read_1d(g, "data", path, loc, H5T_NATIVE_FLOAT, sizeof *data, n_data, &len, err))))
        rc = err->code;
    nbs_compressed_view v = {n_major, n_minor, n_data, indptr, indices, data};
    return finish_compressed(rc, &v, csr, path, loc, out, err);
}

/* Names of a group's members, comma-separated, for messages. */
static herr_t list_cb(hid_t g, const char *name, const H5L_info_t *info, void *op) {
    (void)g;
    (void)info;
    char *list = op;
    size_t len = strlen(list);
    if (strncmp(name, "__", 2)) snprintf(list + len, 1024 - len, "%s%s", len ? ", " : "", name);
    return 0;
}

static void list_members(hid_t f, const char *grp, char *list) {
    list[0] = '\0';
    if (nbs_h5_type(f, grp) != H5O_TYPE_GROUP) return;
    hid_t g = H5Gopen2(f, grp, H5P_DEFAULT);
    hsize_t idx = 0;
    H5Literate(g, H5_INDEX_NAME, H5_ITER_NATIVE, &idx, list_cb, list);
    H5Gclose(g);
    if (!list[0]) snprintf(list, 1024, "none");
}

/* One member of an old-style (anndata < 0.7) compound dataframe, as text. `member` NULL picks the
 * index ("index", "_index", else the first string member). */
static int read_compound_member(hid_t d, const char *member, const char *path, const char *df, char **out,
                                int64_t n, nbs_error *err) {
    hid_t ft = H5Dget_type(d), sp = H5Dget_space(d);
    int nm = H5Tget_nmembers(ft), idx = -1, rc = NBS_OK;
    for (int i = 0; i < nm && idx < 0; i++) {
        char *name = H5Tget_member_name(ft, (unsigned)i);
        hid_t mt = H5Tget_member_type(ft, (unsigned)i);
        if (member ? !strcmp(name, member)
                   : (!strcmp(name, "index") || !strcmp(name, "_index")))
            idx = i;
        H5Tclose(mt);
        H5free_memory(name);
    }
    for (int i = 0; !member && i < nm && idx < 0; i++) {
        hid_t mt = H5Tget_member_type(ft, (unsigned)i);
        if (H5Tget_class(mt) == H5T_STRING) idx = i;
        H5Tclose(mt);
    }
    hssize_t rows = H5Sget_simple_extent_npoints(sp);
    if (idx < 0) {
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: the compound dataframe /%s has no member '%s'", path, df,
                           member ? member : "index");
    } else if (rows != n) {
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s has %lld rows, but the matrix has %lld", path, df,
                           (long long)rows, (long long)n);
    } else {
        char *name = H5Tget_member_name(ft, (unsigned)idx);
        hid_t mt = H5Tget_member_type(ft, (unsigned)idx);
        H5T_class_t cls = H5Tget_class(mt);
        int vlen = cls == H5T_STRING && H5Tis_variable_str(mt) > 0;
        size_t w = cls == H5T_STRING ? (vlen ? sizeof(char *) : H5Tget_size(mt)) : sizeof(double);
        hid_t st = cls == H5T_STRING ? H5Tcopy(H5T_C_S1) : H5Tcopy(H5T_NATIVE_DOUBLE);
        if (cls == H5T_STRING) {
            H5Tset_cset(st, H5Tget_cset(mt));
            H5Tset_size(st, vlen ? H5T_VARIABLE : w);
            if (!vlen) H5Tset_strpad(st, H5T_STR_NULLPAD);
        }
        hid_t ct = H5Tcreate(H5T_COMPOUND, w);
        H5Tinsert(ct, name, 0, st);
        char *buf = nbs_calloc((size_t)n + 1, w, err);
        if (!buf) rc = NBS_ERR_NOMEM;
        else if ((cls != H5T_STRING && cls != H5T_INTEGER && cls != H5T_FLOAT) || H5Dread(d, ct, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: cannot read member '%s' of /%s as text or numbers", path, name, df);
        for (int64_t i = 0; !rc && i < n; i++) {
            char num[64], *s;
            if (cls != H5T_STRING) {
                snprintf(num, sizeof num, "%.10g", ((double *)buf)[i]);
                s = num;
            } else if (vlen) {
                s = ((char **)buf)[i];
            } else {
                s = buf + (size_t)i * w; /* NUL padding, or the next entry: copy at most w bytes */
            }
            size_t len = cls == H5T_STRING && !vlen ? strnlen(s, w) : (s ? strlen(s) : 0);
            if (!(out[i] = nbs_malloc(len + 1, err))) rc = NBS_ERR_NOMEM;
            else {
                if (len) memcpy(out[i], s, len);
                out[i][len] = '\0';
            }
        }
        if (buf && vlen && cls == H5T_STRING) H5Dvlen_reclaim(ct, sp, H5P_DEFAULT, buf);
        free(buf);
        H5Tclose(ct);
        H5Tclose(st);
        H5Tclose(mt);
        H5free_memory(name);
    }
    H5Sclose(sp);
    H5Tclose(ft);
    return rc;
}

/* The index (row names) of the dataframe df ("obs", "var", "raw/var"): n names into out. */
static int read_df_index(hid_t f, const char *df, const char *path, char **out, int64_t n, nbs_error *err) {
    H5O_type_t t = nbs_h5_type(f, df);
    if (t == H5O_TYPE_UNKNOWN)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: the dataframe /%s is missing; an h5ad needs obs and var", path, df);
    if (t == H5O_TYPE_DATASET) {
        hid_t d = H5Dopen2(f, df, H5P_DEFAULT);
        hid_t ty = H5Dget_type(d);
        int compound = H5Tget_class(ty) == H5T_COMPOUND;
        H5Tclose(ty);
        int rc = compound ? read_compound_member(d, NULL, path, df, out, n, err)
                          : nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s is a dataset but not a compound table "
                                          "(the anndata < 0.7 dataframe encoding)", path, df);
        H5Dclose(d);
        return rc;
    }
    hid_t g = H5Gopen2(f, df, H5P_DEFAULT);
    char idx[256] = "_index";
    nbs_h5_attr_string(g, "_index", idx, sizeof idx); /* the index dataset may be named otherwise */
    int rc;
    if (!nbs_h5_has(g, idx))
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: the index of /%s ('%s', named by its _index attribute) is "
                           "missing", path, df, idx);
    else
        rc = nbs_h5_read_strings(g, idx, path, df, out, n, err);
    H5Gclose(g);
    return rc;
}

/* Reads the matrix at loc (dataset or sparse group). */
static int read_matrix_at(hid_t f, const char *loc, const char *path, nbs_matrix **out, nbs_error *err) {
    H5O_type_t t = nbs_h5_type(f, loc);
    int rc;
    if (t == H5O_TYPE_DATASET) {
        hid_t d = H5Dopen2(f, loc, H5P_DEFAULT);
        rc = read_dense(d, path, loc, out, err);
        H5Dclose(d);
    } else {
        hid_t g = H5Gopen2(f, loc, H5P_DEFAULT);
        rc = read_sparse(g, path, loc, out, err);
        H5Gclose(g);
    }
    return rc;
}

/* gene_ids: var/gene_ids when it is a string column of the right length, else the names. */
static int fill_gene_ids(hid_t f, const char *var, nbs_matrix *m, nbs_error *err) {
    char loc[300];
    snprintf(loc, sizeof loc, "%s/gene_ids", var);
    int rc = -1;
    if (nbs_h5_type(f, loc) == H5O_TYPE_DATASET) {
        hid_t d = H5Dopen2(f, loc, H5P_DEFAULT);
        hid_t t = H5Dget_type(d);
        int is_str = H5Tget_class(t) == H5T_STRING;
        H5Tclose(t);
        H5Dclose(d);
        hid_t g = H5Gopen2(f, var, H5P_DEFAULT);
        nbs_error tmp = {0};
        if (is_str) rc = nbs_h5_read_strings(g, "gene_ids", "", var, m->gene_ids, m->n_genes, &tmp);
        H5Gclose(g);
        if (rc) /* a partial read leaves some ids set */
            for (int64_t i = 0; i < m->n_genes; i++) {
                free(m->gene_ids[i]);
                m->gene_ids[i] = NULL;
            }
        if (rc == NBS_ERR_NOMEM) { /* not an unusable column: the names must not stand in */
            *err = tmp;
            return rc;
        }
    }
    for (int64_t i = 0; rc && i < m->n_genes; i++)
        if (!(m->gene_ids[i] = nbs_strdup(m->gene_names[i], err))) return NBS_ERR_NOMEM;
    return NBS_OK;
}

int nbs_io_read_h5ad(const char *path, const char *layer, nbs_matrix **out, nbs_error *err) {
    h5ad_file h;
    int rc = h5ad_open(path, &h, err);
    if (rc) return rc;
    char loc[NBS_NAME_MAX + 16], var[16] = "var", list[1024];
    if (!layer || !*layer || !strcmp(layer, "X")) snprintf(loc, sizeof loc, "X");
    else if (!strcmp(layer, "raw")) {
        snprintf(loc, sizeof loc, "raw/X");
        snprintf(var, sizeof var, "raw/var");
    } else snprintf(loc, sizeof loc, "layers/%s", layer);
    if (!strcmp(loc, "raw/X") ? nbs_h5_type(h.f, "raw") != H5O_TYPE_GROUP || nbs_h5_type(h.f, loc) == H5O_TYPE_UNKNOWN
        : !strncmp(loc, "layers/", 7) ? nbs_h5_type(h.f, "layers") != H5O_TYPE_GROUP || nbs_h5_type(h.f, loc) == H5O_TYPE_UNKNOWN
                                    : nbs_h5_type(h.f, loc) == H5O_TYPE_UNKNOWN) {
        list_members(h.f, "layers", list);
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: there is no /%s in this file (layers present: %s%s); choose "
                           "input.layer: \"\" for X, raw for raw/X, or a layer name",
                           path, loc, nbs_h5_type(h.f, "layers") == H5O_TYPE_GROUP ? list : "none",
                           nbs_h5_type(h.f, "raw/X") != H5O_TYPE_UNKNOWN ? "; raw/X exists" : "");
    }
    nbs_matrix *m = NULL;
    if (!rc) rc = read_matrix_at(h.f, loc, path, &m, err);
    if (!rc) rc = read_df_index(h.f, "obs", path, m->barcodes, m->n_cells, err);
    if (!rc) rc = read_df_index(h.f, var, path, m->gene_names, m->n_genes, err);
    if (!rc) rc = fill_gene_ids(h.f, var, m, err);
    h5ad_close(&h);
    if (rc) {
        nbs_matrix_free(m);
        return rc;
    }
    *out = m;
    return NBS_OK;
}

void nbs_io_h5ad_other_matrices(const char *path, const char *layer, char *buf, size_t n) {
    buf[0] = '\0';
    h5ad_file h;
    nbs_error tmp = {0};
    if (h5ad_open(path, &h, &tmp)) return;
    char list[1024] = "";
    if (nbs_h5_type(h.f, "layers") == H5O_TYPE_GROUP) list_members(h.f, "layers", list);
    int raw = nbs_h5_type(h.f, "raw/X") != H5O_TYPE_UNKNOWN && !(layer && !strcmp(layer, "raw"));
    if (list[0] && strcmp(list, "none")) snprintf(buf, n, "layers: %s%s", list, raw ? "; raw/X" : "");
    else if (raw) snprintf(buf, n, "raw/X");
    h5ad_close(&h);
}

/* ---- obs columns as labels ---- */

/* A 1-D dataset as text: strings as they are, numbers formatted (%.10g). */
static int column_text(hid_t loc, const char *name, const char *path, const char *grp, char **out, int64_t n,
                       nbs_error *err) {
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0) return nbs_error_set(err, NBS_ERR_INPUT, "%s: cannot open /%s/%s", path, grp, name);
    hid_t t = H5Dget_type(d);
    H5T_class_t cls = H5Tget_class(t);
    H5Tclose(t);
    H5Dclose(d);
    if (cls == H5T_STRING) return nbs_h5_read_strings(loc, name, path, grp, out, n, err);
    if (cls != H5T_INTEGER && cls != H5T_FLOAT)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s/%s is neither text, numbers nor categorical; choose another "
                             "label column", path, grp, name);
    int64_t len;
    double *v = nbs_h5_read_1d(loc, name, path, grp, H5T_NATIVE_DOUBLE, sizeof *v, n, &len, err);
    if (!v) return err->code;
    int rc = NBS_OK;
    for (int64_t i = 0; i < n && !rc; i++) {
        char buf[64];
        snprintf(buf, sizeof buf, "%.10g", v[i]);
        if (!(out[i] = nbs_strdup(buf, err))) rc = NBS_ERR_NOMEM;
    }
    free(v);
    return rc;
}

/* Categorical: codes[i] indexes categories; -1 is a missing value (NULL label). */
static int categorical_text(hid_t codes_loc, const char *codes_name, hid_t cat_loc, const char *cat_name,
                            const char *path, const char *grp, char **out, int64_t n, nbs_error *err) {
    int64_t len, n_cat = -1;
    char **cats = NULL;
    int rc = NBS_OK;
    hid_t cd = H5Dopen2(cat_loc, cat_name, H5P_DEFAULT);
    hid_t sp = cd >= 0 ? H5Dget_space(cd) : -1;
    if (sp >= 0 && H5Sget_simple_extent_ndims(sp) == 1) n_cat = H5Sget_simple_extent_npoints(sp);
    if (sp >= 0) H5Sclose(sp);
    if (cd >= 0) H5Dclose(cd);
    if (n_cat < 0)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: categories '%s' of /%s are missing or not 1-D", path, cat_name, grp);
    if (!(cats = nbs_calloc((size_t)n_cat + 1, sizeof *cats, err))) return NBS_ERR_NOMEM;
    rc = column_text(cat_loc, cat_name, path, grp, cats, n_cat, err);
    int64_t *codes = rc ? NULL : nbs_h5_read_1d(codes_loc, codes_name, path, grp, H5T_NATIVE_INT64, sizeof *codes, n, &len, err);
    if (!rc && !codes) rc = err->code;
    for (int64_t i = 0; !rc && i < n; i++) {
        if (codes[i] < -1 || codes[i] >= n_cat)
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s: code %lld of cell %lld is outside the %lld categories",
                               path, grp, (long long)codes[i], (long long)i + 1, (long long)n_cat);
        else if (codes[i] >= 0 && !(out[i] = nbs_strdup(cats[codes[i]], err)))
            rc = NBS_ERR_NOMEM;
    }
    free(codes);
    nbs_io_free_labels(cats, n_cat);
    return rc;
}

/* The column of the file's obs, in the file's cell order (n_obs values). */
static int read_obs_column(hid_t f, const char *column, const char *path, char **vals, int64_t n, nbs_error *err) {
    char grp[NBS_NAME_MAX + 16], list[1024];
    snprintf(grp, sizeof grp, "obs/%s", column);
    if (nbs_h5_type(f, "obs") == H5O_TYPE_DATASET) {
        hid_t d = H5Dopen2(f, "obs", H5P_DEFAULT);
        int rc = read_compound_member(d, column, path, "obs", vals, n, err);
        H5Dclose(d);
        /* anndata < 0.7 kept the categories of a categorical column in uns/<col>_categories */
        char cats[NBS_NAME_MAX + 32];
        snprintf(cats, sizeof cats, "%s_categories", column);
        if (!rc && nbs_h5_type(f, "uns") == H5O_TYPE_GROUP) {
            hid_t u = H5Gopen2(f, "uns", H5P_DEFAULT);
            if (nbs_h5_has(u, cats)) {
                int64_t n_cat = 0;
                hid_t cd = H5Dopen2(u, cats, H5P_DEFAULT), csp = cd >= 0 ? H5Dget_space(cd) : -1;
                if (csp >= 0) n_cat = H5Sget_simple_extent_npoints(csp), H5Sclose(csp);
                if (cd >= 0) H5Dclose(cd);
                char **names = nbs_calloc((size_t)n_cat + 1, sizeof *names, err);
                rc = names ? column_text(u, cats, path, "uns", names, n_cat, err) : NBS_ERR_NOMEM;
                for (int64_t i = 0; i < n && !rc; i++) {
                    long code = strtol(vals[i], NULL, 10); /* the codes were read as text */
                    free(vals[i]);
                    vals[i] = NULL;
                    if (code >= 0 && code < n_cat && !(vals[i] = nbs_strdup(names[code], err))) rc = NBS_ERR_NOMEM;
                }
                nbs_io_free_labels(names, n_cat);
            }
            H5Gclose(u);
        }
        return rc;
    }
    hid_t obs = H5Gopen2(f, "obs", H5P_DEFAULT);
    H5O_type_t t = nbs_h5_type(obs, column);
    int rc;
    if (t == H5O_TYPE_UNKNOWN) {
        list_members(f, "obs", list);
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: obs has no column '%s'; it has: %s", path, column, list);
    } else if (t == H5O_TYPE_GROUP) { /* anndata >= 0.8 categorical */
        hid_t g = H5Gopen2(obs, column, H5P_DEFAULT);
        if (!nbs_h5_has(g, "codes") || !nbs_h5_has(g, "categories"))
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s is a group but not a categorical (codes, categories)",
                               path, grp);
        else
            rc = categorical_text(g, "codes", g, "categories", path, grp, vals, n, err);
        H5Gclose(g);
    } else {
        char cat_path[NBS_NAME_MAX + 32];
        snprintf(cat_path, sizeof cat_path, "__categories/%s", column);
        if (nbs_h5_has(obs, "__categories") && nbs_h5_type(obs, cat_path) == H5O_TYPE_DATASET) /* anndata 0.7 */
            rc = categorical_text(obs, column, obs, cat_path, path, grp, vals, n, err);
        else
            rc = column_text(obs, column, path, "obs", vals, n, err);
    }
    H5Gclose(obs);
    return rc;
}

typedef struct {
    const char *name;
    int64_t idx;
} named;

static int cmp_named(const void *a, const void *b) {
    return strcmp(((const named *)a)->name, ((const named *)b)->name);
}

/* Maps the source's rows onto m's cells by barcode: labels[i] takes vals[row of m's cell i]. The
 * values are moved out of vals (set to NULL). Unmatched cells keep NULL. Returns the number of
 * matched cells, or -1 when out of memory. */
static int64_t match_cells(char **names, char **vals, int64_t n, const nbs_matrix *m, char **labels, nbs_error *err) {
    named *idx = nbs_malloc((size_t)(n ? n : 1) * sizeof *idx, err);
    if (!idx) return -1;
    for (int64_t i = 0; i < n; i++) idx[i] = (named){names[i] ? names[i] : "", i};
    qsort(idx, (size_t)n, sizeof *idx, cmp_named);
    int64_t matched = 0;
    for (int64_t c = 0; c < m->n_cells; c++) {
        named key = {m->barcodes[c], 0};
        named *hit = bsearch(&key, idx, (size_t)n, sizeof *idx, cmp_named);
        if (!hit) continue;
        matched++;
        /* the same row may serve two cells only with duplicated barcodes; copy then */
        labels[c] = vals[hit->idx] ? nbs_strdup(vals[hit->idx], err) : NULL;
        if (vals[hit->idx] && !labels[c]) { /* not an unlabelled cell: out of memory */
            free(idx);
            return -1;
        }
    }
    free(idx);
    return matched;
}

/* The first cell of m that no name lists; -1 when every cell is listed. */
static int64_t first_unlisted(char **names, int64_t n, const nbs_matrix *m, nbs_error *err, int *nomem) {
    named *idx = nbs_malloc((size_t)(n ? n : 1) * sizeof *idx, err);
    *nomem = !idx;
    if (!idx) return -1;
    for (int64_t i = 0; i < n; i++) idx[i] = (named){names[i] ? names[i] : "", i};
    qsort(idx, (size_t)n, sizeof *idx, cmp_named);
    int64_t c = 0;
    for (; c < m->n_cells; c++) {
        named key = {m->barcodes[c], 0};
        if (!bsearch(&key, idx, (size_t)n, sizeof *idx, cmp_named)) break;
    }
    free(idx);
    return c < m->n_cells ? c : -1;
}

int nbs_io_match_labels(char **names, char **vals, int64_t n, const nbs_matrix *m, char ***labels,
                        const char *path, const char *every_cell, nbs_error *err) {
    if (every_cell) {
        int nomem;
        const int64_t c = first_unlisted(names, n, m, err, &nomem);
        if (nomem) return NBS_ERR_NOMEM;
        if (c >= 0)
            return nbs_error_set(err, NBS_ERR_INPUT, "%s: cell '%s' (cell %lld of the data) is not listed, so it has "
                                 "no '%s'; every cell needs one: add its row (barcodes must match the data's)",
                                 path, m->barcodes[c], (long long)c + 1, every_cell);
    }
    char **out = nbs_calloc((size_t)m->n_cells + 1, sizeof *out, err);
    if (!out) return NBS_ERR_NOMEM;
    int64_t matched = match_cells(names, vals, n, m, out, err);
    if (matched < 0) {
        nbs_io_free_labels(out, m->n_cells);
        return NBS_ERR_NOMEM;
    }
    if (matched == 0 && m->n_cells > 0) {
        nbs_io_free_labels(out, m->n_cells);
        return nbs_error_set(err, NBS_ERR_INPUT,
                             "%s: none of the %lld cells of the matrix (first: '%s') is named in the labels "
                             "(first: '%s'); do the labels belong to this matrix?",
                             path, (long long)m->n_cells, m->barcodes[0], n ? names[0] : "(none)");
    }
    if (matched < m->n_cells)
        nbs_warn("%s: %lld of %lld cells have no label", path, (long long)(m->n_cells - matched),
                 (long long)m->n_cells);
    *labels = out;
    return NBS_OK;
}

static int64_t obs_rows(hid_t f) {
    if (nbs_h5_type(f, "obs") == H5O_TYPE_DATASET) {
        hid_t d = H5Dopen2(f, "obs", H5P_DEFAULT), sp = H5Dget_space(d);
        int64_t n = H5Sget_simple_extent_npoints(sp);
        H5Sclose(sp);
        H5Dclose(d);
        return n;
    }
    hid_t g = H5Gopen2(f, "obs", H5P_DEFAULT);
    char idx[256];
    const int64_t n = nbs_h5_dataframe_rows(g, idx, sizeof idx);
    H5Gclose(g);
    return n;
}

int64_t nbs_h5_dataframe_rows(hid_t df, char *index, size_t n) {
    snprintf(index, n, "_index");
    nbs_h5_attr_string(df, "_index", index, n);
    if (!nbs_h5_has(df, index)) return -1;
    hid_t d = H5Dopen2(df, index, H5P_DEFAULT), sp = H5Dget_space(d);
    const int64_t rows = H5Sget_simple_extent_npoints(sp);
    H5Sclose(sp);
    H5Dclose(d);
    return rows;
}

int nbs_io_read_h5ad_obs(const char *path, const char *column, const nbs_matrix *m, char ***labels,
                         nbs_error *err) {
    return nbs_io_read_h5ad_obs_cells(path, column, m, NULL, labels, err);
}

int nbs_io_read_h5ad_obs_cells(const char *path, const char *column, const nbs_matrix *m, const char *every_cell,
                               char ***labels, nbs_error *err) {
    if (!column || !*column)
        return nbs_error_set(err, NBS_ERR_USAGE, "%s: no obs column named; set input.label_column", path);
    h5ad_file h;
    int rc = h5ad_open(path, &h, err);
    if (rc) return rc;
    int64_t n = nbs_h5_type(h.f, "obs") == H5O_TYPE_UNKNOWN ? -1 : obs_rows(h.f);
    char **names = NULL, **vals = NULL;
    if (n < 0) rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: no readable obs dataframe (obs with an index)", path);
    else if (!(names = nbs_calloc((size_t)n + 1, sizeof *names, err)) || !(vals = nbs_calloc((size_t)n + 1, sizeof *vals, err)))
        rc = NBS_ERR_NOMEM;
    if (!rc) rc = read_df_index(h.f, "obs", path, names, n, err);
    if (!rc) rc = read_obs_column(h.f, column, path, vals, n, err);
    h5ad_close(&h);
    if (!rc) rc = nbs_io_match_labels(names, vals, n, m, labels, path, every_cell, err);
    nbs_io_free_labels(names, n < 0 ? 0 : n);
    nbs_io_free_labels(vals, n < 0 ? 0 : n);
    return rc;
}

void nbs_io_free_labels(char **labels, int64_t n) {
    if (!labels) return;
    for (int64_t i = 0; i < n; i++) free(labels[i]);
    free(labels);
}

/* ---- an embedding from obsm ---- */

/* A scalar string dataset (anndata's encoding of a str in uns) into buf; -1 when absent or not one. */
static int scalar_string(hid_t loc, const char *name, char *buf, size_t n) {
    buf[0] = '\0';
    if (nbs_h5_type(loc, name) != H5O_TYPE_DATASET) return -1;
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT), ty = H5Dget_type(d), sp = H5Dget_space(d);
    int rc = -1;
    if (H5Tget_class(ty) == H5T_STRING && H5Sget_simple_extent_npoints(sp) == 1) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, H5T_VARIABLE);
        char *v = NULL;
        if (H5Tis_variable_str(ty) > 0 && H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v) >= 0 && v) {
            snprintf(buf, n, "%s", v);
            H5free_memory(v);
            rc = 0;
        }
        H5Tclose(mt);
    }
    H5Sclose(sp);
    H5Tclose(ty);
    H5Dclose(d);
    return rc;
}

static int read_obsm(const char *path, const char *key, nbs_embedding_table *e, nbs_error *err) {
    h5ad_file h;
    int rc = h5ad_open(path, &h, err);
    if (rc) return rc;
    char loc[NBS_NAME_MAX + 16], list[1024] = "none";
    snprintf(loc, sizeof loc, "obsm/%s", key);
    if (nbs_h5_type(h.f, "obsm") == H5O_TYPE_GROUP) list_members(h.f, "obsm", list);
    hid_t d = -1, sp = -1;
    hsize_t dims[2] = {0, 0};
    if (nbs_h5_type(h.f, "obsm") != H5O_TYPE_GROUP || nbs_h5_type(h.f, loc) != H5O_TYPE_DATASET)
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: there is no dense /%s (obsm holds: %s); name the embedding with "
                           "--use-rep KEY", path, loc, list);
    if (!rc) {
        d = H5Dopen2(h.f, loc, H5P_DEFAULT);
        sp = H5Dget_space(d);
        hid_t ty = H5Dget_type(d);
        const H5T_class_t cls = H5Tget_class(ty);
        H5Tclose(ty);
        if (H5Sget_simple_extent_ndims(sp) != 2 || (cls != H5T_FLOAT && cls != H5T_INTEGER))
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s must be a 2-D numeric array (cells x dimensions)", path, loc);
        else H5Sget_simple_extent_dims(sp, dims, NULL);
        if (!rc && (dims[0] < 1 || dims[1] < 1 || dims[1] > 4096))
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s is %llu x %llu; expected cells x 1..4096 dimensions", path,
                               loc, (unsigned long long)dims[0], (unsigned long long)dims[1]);
        if (!rc) rc = nbs_h5_check_filters(d, path, loc, err);
    }
    if (!rc && obs_rows(h.f) != (int64_t)dims[0])
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s has %llu rows but obs has %lld cells", path, loc,
                           (unsigned long long)dims[0], (long long)obs_rows(h.f));
    if (!rc) {
        e->n = (int64_t)dims[0];
        e->d = (int)dims[1];
        e->barcodes = nbs_calloc((size_t)e->n, sizeof *e->barcodes, err);
        e->z = e->barcodes ? nbs_malloc((size_t)e->n * (size_t)e->d * sizeof *e->z, err) : NULL;
        if (!e->z) rc = NBS_ERR_NOMEM;
    }
    if (!rc && H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, e->z) < 0)
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: cannot read /%s (corrupt or truncated file?)", path, loc);
    for (int64_t k = 0; !rc && k < e->n * e->d; k++)
        if (!isfinite(e->z[k]))
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s row %lld, column %lld is not a finite number", path, loc,
                               (long long)(k / e->d) + 1, (long long)(k % e->d) + 1);
    if (!rc) rc = read_df_index(h.f, "obs", path, e->barcodes, e->n, err);
    if (!rc) {
        char used[NBS_NAME_MAX];
        snprintf(e->source, sizeof e->source, "obsm['%s'] of %s", key, path);
        if (!scalar_string(h.f, "uns/nbsphere/embedding_key", used, sizeof used) && !strcmp(used, key) &&
            !scalar_string(h.f, "uns/nbsphere/metric", used, sizeof used) &&
            (!strcmp(used, "cosine") || !strcmp(used, "euclidean")))
            snprintf(e->metric, sizeof e->metric, "%s", used);
    }
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    h5ad_close(&h);
    return rc;
}

static int cmp_str_ptr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int has_suffix(const char *s, const char *suffix) {
    const size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcasecmp(s + n - k, suffix);
}

int nbs_io_read_embedding(const char *path, const char *obsm_key, nbs_embedding_table *out, nbs_error *err) {
    memset(out, 0, sizeof *out);
    int rc;
    if (has_suffix(path, ".h5ad") || has_suffix(path, ".h5ad.gz"))
        rc = read_obsm(path, obsm_key && *obsm_key ? obsm_key : "X_nbsphere", out, err);
    else if (obsm_key && *obsm_key)
        rc = nbs_error_set(err, NBS_ERR_USAGE, "%s: --use-rep names an obsm entry, but this is a table, not an .h5ad",
                           path);
    else rc = nbs_io_read_embedding_table(path, out, err);
    /* the cells are matched by barcode: a repeated one would be ambiguous */
    char **sorted = rc ? NULL : nbs_malloc(sizeof *sorted * (size_t)out->n, err);
    if (!rc && !sorted) rc = NBS_ERR_NOMEM;
    if (!rc) {
        memcpy(sorted, out->barcodes, sizeof *sorted * (size_t)out->n);
        qsort(sorted, (size_t)out->n, sizeof *sorted, cmp_str_ptr);
        for (int64_t i = 1; i < out->n && !rc; i++)
            if (!strcmp(sorted[i - 1], sorted[i]))
                rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: the barcode '%s' names two cells of the embedding", path,
                                   sorted[i]);
    }
    free(sorted);
    if (rc) nbs_embedding_table_free(out);
    return rc;
}

void nbs_embedding_table_free(nbs_embedding_table *e) {
    if (!e) return;
    if (e->barcodes)
        for (int64_t i = 0; i < e->n; i++) free(e->barcodes[i]);
    free(e->barcodes);
    free(e->z);
    memset(e, 0, sizeof *e);
}
