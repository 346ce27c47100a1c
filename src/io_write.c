/* Writers: the embedding as TSV, .h5ad (new, or a copy of the input with obsm added), Cell
 * Ranger v3 HDF5 and 10x MTX folders. Every file is written under a temporary name and renamed
 * into place (io_util.c). HDF5 objects are created without modification times, so the same data
 * give byte-identical files. */
#include <errno.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "io_h5_internal.h"
#include "nbsphere/io.h"
#include "nbsphere/manifest.h"

/* ---- embedding TSV ---- */

int nbs_io_write_embedding_tsv(const char *path, char *const *barcodes, int64_t n, int d,
                               const float *embedding, int n_extra, const char *const *extra_names,
                               const float *extra, nbs_error *err) {
    char tmp[NBS_PATH_MAX];
    nbs_io_tmp_name(path, tmp);
    FILE *f = fopen(tmp, "w");
    if (!f) return nbs_error_set(err, NBS_ERR_IO, "%s: cannot write: %s", tmp, strerror(errno));
    int bad = fputs("barcode", f) < 0;
    for (int j = 0; j < d && !bad; j++) bad = fprintf(f, "\tdim%d", j + 1) < 0;
    for (int j = 0; j < n_extra && !bad; j++) bad = fprintf(f, "\t%s", extra_names[j]) < 0;
    bad = bad || fputc('\n', f) == EOF;
    /* %.9g: a float32 read back from the text is the same float32 */
    for (int64_t i = 0; i < n && !bad; i++) {
        bad = fputs(barcodes[i], f) < 0;
        for (int j = 0; j < d && !bad; j++) bad = fprintf(f, "\t%.9g", (double)embedding[i * d + j]) < 0;
        for (int j = 0; j < n_extra && !bad; j++) bad = fprintf(f, "\t%.9g", (double)extra[i * n_extra + j]) < 0;
        bad = bad || fputc('\n', f) == EOF;
    }
    if (fclose(f) != 0) bad = 1;
    if (bad) {
        remove(tmp);
        return nbs_error_set(err, NBS_ERR_IO, "%s: write failed (disk full?)", path);
    }
    return nbs_io_commit(tmp, path, err);
}

/* ---- HDF5 building blocks ---- */

/* Creation property lists without time stamps (and, for datasets, optional gzip chunks). */
static hid_t gcpl(void) {
    hid_t p = H5Pcreate(H5P_GROUP_CREATE);
    H5Pset_obj_track_times(p, 0);
    return p;
}

static hid_t dcpl(int rank, const hsize_t *dims, int gzip) {
    hid_t p = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_obj_track_times(p, 0);
    if (gzip) {
        hsize_t chunk[2] = {dims[0] < 65536 ? (dims[0] ? dims[0] : 1) : 65536, rank > 1 ? dims[1] : 1};
        if (rank > 1 && chunk[0] * chunk[1] > 65536) chunk[0] = 65536 / chunk[1] ? 65536 / chunk[1] : 1;
        H5Pset_chunk(p, rank, chunk);
        H5Pset_deflate(p, 4);
    }
    return p;
}

static hid_t mk_group(hid_t loc, const char *name) {
    hid_t p = gcpl();
    hid_t g = H5Gcreate2(loc, name, H5P_DEFAULT, p, H5P_DEFAULT);
    H5Pclose(p);
    return g;
}

static hid_t vstr_type(void) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    return t;
}

static int attr_str(hid_t obj, const char *name, const char *value) {
    hid_t t = vstr_type(), sp = H5Screate(H5S_SCALAR);
    if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
    hid_t a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    int bad = a < 0 || H5Awrite(a, t, &value) < 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    H5Tclose(t);
    return bad ? -1 : 0;
}

static int attr_enc(hid_t obj, const char *type, const char *version) {
    return attr_str(obj, "encoding-type", type) || attr_str(obj, "encoding-version", version);
}

/* column-order as h5py writes it: strings, or an empty float64 array when there are none. */
static int attr_str_array(hid_t obj, const char *name, const char *const *v, hsize_t n) {
    if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
    hid_t t = n ? vstr_type() : H5Tcopy(H5T_IEEE_F64LE), sp = H5Screate_simple(1, &n, NULL);
    hid_t a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    int bad = a < 0 || (n && H5Awrite(a, t, v) < 0);
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    H5Tclose(t);
    return bad ? -1 : 0;
}

static int write_ds(hid_t loc, const char *name, hid_t ftype, hid_t mtype, int rank, const hsize_t *dims,
                    const void *v, int gzip) {
    hid_t sp = H5Screate_simple(rank, dims, NULL), p = dcpl(rank, dims, gzip);
    hid_t d = H5Dcreate2(loc, name, ftype, sp, H5P_DEFAULT, p, H5P_DEFAULT);
    hsize_t total = dims[0] * (rank > 1 ? dims[1] : 1);
    int bad = d < 0 || (total && H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) < 0);
    if (d >= 0) H5Dclose(d);
    H5Pclose(p);
    H5Sclose(sp);
    return bad ? -1 : 0;
}

/* A string-array dataset (anndata's encoding for an index or a text column). */
static int write_strs(hid_t loc, const char *name, char *const *s, hsize_t n, int enc) {
    hid_t t = vstr_type();
    int bad = write_ds(loc, name, t, t, 1, &n, s, 0);
    H5Tclose(t);
    if (!bad && enc) {
        hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
        bad = attr_enc(d, "string-array", "0.2.0");
        H5Dclose(d);
    }
    return bad;
}

static int write_scalar_str(hid_t loc, const char *name, const char *value) {
    hid_t t = vstr_type(), sp = H5Screate(H5S_SCALAR), p = dcpl(0, NULL, 0);
    hid_t d = H5Dcreate2(loc, name, t, sp, H5P_DEFAULT, p, H5P_DEFAULT);
    int bad = d < 0 || H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, &value) < 0 || attr_enc(d, "string", "0.2.0");
    if (d >= 0) H5Dclose(d);
    H5Pclose(p);
    H5Sclose(sp);
    H5Tclose(t);
    return bad ? -1 : 0;
}

static int write_array_enc(hid_t loc, const char *name, hid_t ftype, hid_t mtype, int rank, const hsize_t *dims,
                           const void *v, int gzip) {
    if (write_ds(loc, name, ftype, mtype, rank, dims, v, gzip)) return -1;
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    int bad = attr_enc(d, "array", "0.2.0");
    H5Dclose(d);
    return bad;
}

static int unlink_if(hid_t loc, const char *name) {
    return nbs_h5_has(loc, name) ? (H5Ldelete(loc, name, H5P_DEFAULT) < 0 ? -1 : 0) : 0;
}

/* An empty dict group (layers, obsp, ...). */
static int empty_dict(hid_t f, const char *name) {
    hid_t g = mk_group(f, name);
    int bad = g < 0 || attr_enc(g, "dict", "0.1.0");
    if (g >= 0) H5Gclose(g);
    return bad;
}

static int dataframe(hid_t f, const char *name, char *const *index, int64_t n, const char *col, char *const *col_values) {
    hid_t g = mk_group(f, name);
    if (g < 0) return -1;
    const char *order[1] = {col};
    int bad = attr_enc(g, "dataframe", "0.2.0") || attr_str(g, "_index", "_index") ||
              attr_str_array(g, "column-order", order, col ? 1 : 0) || write_strs(g, "_index", index, (hsize_t)n, 1);
    if (!bad && col) bad = write_strs(g, col, col_values, (hsize_t)n, 1);
    H5Gclose(g);
    return bad;
}

/* obsm/<key>, uns/nbsphere and obs/nbsphere_kappa, into an open file (new or copied). */
static int add_embedding(hid_t f, int64_t n, int d, const float *emb, const nbs_embedding_meta *meta) {
    const char *key = meta && meta->key && *meta->key ? meta->key : "X_nbsphere";
    hid_t obsm = nbs_h5_has(f, "obsm") ? H5Gopen2(f, "obsm", H5P_DEFAULT) : mk_group(f, "obsm");
    if (obsm < 0) return -1;
    hsize_t dims[2] = {(hsize_t)n, (hsize_t)d};
    int bad = attr_enc(obsm, "dict", "0.1.0") || unlink_if(obsm, key) ||
              write_array_enc(obsm, key, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, dims, emb, 1);
    H5Gclose(obsm);
    hid_t uns = bad ? -1 : nbs_h5_has(f, "uns") ? H5Gopen2(f, "uns", H5P_DEFAULT) : mk_group(f, "uns");
    if (uns < 0) return -1;
    bad = attr_enc(uns, "dict", "0.1.0") || unlink_if(uns, "nbsphere");
    hid_t g = bad ? -1 : mk_group(uns, "nbsphere");
    if (g < 0) bad = 1;
    else {
        bad = attr_enc(g, "dict", "0.1.0") || write_scalar_str(g, "embedding_key", key) ||
              write_scalar_str(g, "latent", meta && meta->latent ? meta->latent : "unknown") ||
              write_scalar_str(g, "metric", meta && meta->metric ? meta->metric : "euclidean") ||
              write_scalar_str(g, "version", meta && meta->version ? meta->version : "unknown");
        H5Gclose(g);
    }
    H5Gclose(uns);
    if (bad || !meta || !meta->obs_kappa) return bad;
    hid_t obs = H5Gopen2(f, "obs", H5P_DEFAULT);
    if (obs < 0) return -1;
    hsize_t nn = (hsize_t)n;
    bad = unlink_if(obs, "nbsphere_kappa") ||
          write_array_enc(obs, "nbsphere_kappa", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, &nn, meta->obs_kappa, 0);
    /* column-order must list it, or anndata ignores the column */
    if (!bad) {
        char **old = NULL;
        hssize_t n_old = 0;
        hid_t st = vstr_type();
        if (H5Aexists(obs, "column-order") > 0) {
            hid_t a = H5Aopen(obs, "column-order", H5P_DEFAULT);
            hid_t t = H5Aget_type(a), sp = H5Aget_space(a);
            n_old = H5Sget_simple_extent_npoints(sp);
            if (n_old > 0 && H5Tget_class(t) == H5T_STRING) {
                old = calloc((size_t)n_old + 1, sizeof *old);
                if (!old || H5Aread(a, st, old) < 0) bad = 1;
            } else n_old = 0;
            H5Sclose(sp);
            H5Tclose(t);
            H5Aclose(a);
        }
        int present = 0;
        for (hssize_t i = 0; i < n_old && old; i++) present |= old[i] && !strcmp(old[i], "nbsphere_kappa");
        const char **all = bad || present ? NULL : calloc((size_t)n_old + 1, sizeof *all);
        if (all) {
            for (hssize_t i = 0; i < n_old; i++) all[i] = old[i];
            all[n_old] = "nbsphere_kappa";
            bad = attr_str_array(obs, "column-order", all, (hsize_t)n_old + 1);
            free(all);
        } else if (!present) bad = 1;
        if (old) {
            hsize_t no = (hsize_t)n_old;
            hid_t sp = H5Screate_simple(1, &no, NULL);
            H5Dvlen_reclaim(st, sp, H5P_DEFAULT, old);
            H5Sclose(sp);
            free(old);
        }
        H5Tclose(st);
    }
    H5Gclose(obs);
    return bad;
}

static hid_t create_file(const char *tmp) {
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    H5Pset_obj_track_times(fcpl, 0); /* the root group */
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, fcpl, H5P_DEFAULT);
    H5Pclose(fcpl);
    return f;
}

static int write_new_h5ad(hid_t f, const nbs_matrix *m) {
    hid_t x = mk_group(f, "X");
    if (x < 0) return -1;
    int64_t shape[2] = {m->n_cells, m->n_genes};
    hsize_t two = 2, nnz = (hsize_t)m->nnz, np = (hsize_t)m->n_cells + 1;
    hid_t sp = H5Screate_simple(1, &two, NULL);
    hid_t a = H5Acreate2(x, "shape", H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    int bad = a < 0 || H5Awrite(a, H5T_NATIVE_INT64, shape) < 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    bad = bad || attr_enc(x, "csr_matrix", "0.1.0") ||
          write_ds(x, "data", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, &nnz, m->data, 1) ||
          write_ds(x, "indices", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, &nnz, m->indices, 1) ||
          write_ds(x, "indptr", H5T_STD_I64LE, H5T_NATIVE_INT64, 1, &np, m->indptr, 1);
    H5Gclose(x);
    return bad || dataframe(f, "obs", m->barcodes, m->n_cells, NULL, NULL) ||
           dataframe(f, "var", m->gene_names, m->n_genes, "gene_ids", m->gene_ids) || empty_dict(f, "layers") ||
           empty_dict(f, "obsp") || empty_dict(f, "varm") || empty_dict(f, "varp");
}

/* Copies every root object and attribute of src into dst (H5Ocopy keeps the encodings). */
static herr_t copy_link(hid_t g, const char *name, const H5L_info_t *info, void *op) {
    (void)info;
    return H5Ocopy(g, name, *(hid_t *)op, name, H5P_DEFAULT, H5P_DEFAULT) < 0 ? -1 : 0;
}

static herr_t copy_attr(hid_t loc, const char *name, const H5A_info_t *info, void *op) {
    (void)info;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    hid_t t = H5Aget_type(a), sp = H5Aget_space(a);
    size_t sz = H5Tget_size(t) * (size_t)(H5Sget_simple_extent_npoints(sp) > 0 ? H5Sget_simple_extent_npoints(sp) : 1);
    void *buf = calloc(sz ? sz : 1, 1);
    hid_t b = H5Acreate2(*(hid_t *)op, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    herr_t r = (!buf || b < 0 || H5Aread(a, t, buf) < 0 || H5Awrite(b, t, buf) < 0) ? -1 : 0;
    if (buf && H5Tdetect_class(t, H5T_VLEN) <= 0 && H5Tis_variable_str(t) > 0) H5Dvlen_reclaim(t, sp, H5P_DEFAULT, buf);
    free(buf);
    if (b >= 0) H5Aclose(b);
    H5Sclose(sp);
    H5Tclose(t);
    H5Aclose(a);
    return r;
}

/* The source's cells must be m's cells in the same order. */
static int check_cells(hid_t src, const char *copy_from, const nbs_matrix *m, nbs_error *err) {
    if (nbs_h5_type(src, "obs") != H5O_TYPE_GROUP)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: obs is not a dataframe group (anndata < 0.7 file?); re-save it "
                             "with a current anndata, or write a new h5ad instead of a copy", copy_from);
    hid_t obs = H5Gopen2(src, "obs", H5P_DEFAULT);
    char idx[256] = "_index";
    nbs_h5_attr_string(obs, "_index", idx, sizeof idx);
    int64_t n = -1;
    if (nbs_h5_has(obs, idx)) {
        hid_t d = H5Dopen2(obs, idx, H5P_DEFAULT), sp = H5Dget_space(d);
        n = H5Sget_simple_extent_npoints(sp);
        H5Sclose(sp);
        H5Dclose(d);
    }
    char **names = n >= 0 ? nbs_calloc((size_t)n + 1, sizeof *names, err) : NULL;
    int rc = n < 0 ? nbs_error_set(err, NBS_ERR_INPUT, "%s: obs has no index dataset '%s'", copy_from, idx)
                   : !names ? NBS_ERR_NOMEM : nbs_h5_read_strings(obs, idx, copy_from, "obs", names, n, err);
    H5Gclose(obs);
    if (!rc && n != m->n_cells)
        rc = nbs_error_set(err, NBS_ERR_INPUT,
                           "%s: has %lld cells but the embedding has %lld (cells were filtered); a copy needs every "
                           "cell of the source: set the filters so that no cell is removed, or write a new h5ad "
                           "(output without copy_from), which holds only the kept cells",
                           copy_from, (long long)n, (long long)m->n_cells);
    for (int64_t i = 0; !rc && i < n; i++)
        if (strcmp(names[i], m->barcodes[i]))
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: cell %lld is '%s' in obs but '%s' in the embedding; the copy "
                               "must hold the same cells in the same order", copy_from, (long long)i + 1, names[i],
                               m->barcodes[i]);
    nbs_io_free_labels(names, n < 0 ? 0 : n);
    return rc;
}

int nbs_io_write_h5ad(const char *path, const char *copy_from, const nbs_matrix *m, int d,
                      const float *embedding, const nbs_embedding_meta *meta, nbs_error *err) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    char tmp[NBS_PATH_MAX], gz[NBS_PATH_MAX] = "";
    hid_t src = -1;
    int rc = NBS_OK;
    if (copy_from && *copy_from) {
        int g = nbs_io_gunzip_temp(copy_from, gz, err);
        if (g < 0) return err->code;
        if (!g) gz[0] = '\0';
        const char *real = g ? gz : copy_from;
        src = H5Fis_hdf5(real) > 0 ? H5Fopen(real, H5F_ACC_RDONLY, H5P_DEFAULT) : -1;
        if (src < 0) rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: cannot open as HDF5 to copy from", copy_from);
        else rc = check_cells(src, copy_from, m, err);
    }
    nbs_io_tmp_name(path, tmp);
    hid_t f = rc ? -1 : create_file(tmp);
    if (!rc && f < 0) rc = nbs_error_set(err, NBS_ERR_IO, "%s: cannot create (folder missing or not writable?)", tmp);
    int bad = 0;
    if (!rc && src >= 0) {
        hsize_t idx = 0;
        hid_t root = H5Gopen2(src, "/", H5P_DEFAULT), droot = H5Gopen2(f, "/", H5P_DEFAULT);
        hsize_t aidx = 0;
        bad = H5Literate(src, H5_INDEX_NAME, H5_ITER_INC, &idx, copy_link, &f) < 0 ||
              H5Aiterate2(root, H5_INDEX_NAME, H5_ITER_INC, &aidx, copy_attr, &droot) < 0;
        H5Gclose(root);
        H5Gclose(droot);
    } else if (!rc) {
        bad = attr_enc(f, "anndata", "0.1.0") || write_new_h5ad(f, m);
    }
    if (!rc && !bad && embedding && d > 0) bad = add_embedding(f, m->n_cells, d, embedding, meta);
    if (f >= 0 && H5Fclose(f) < 0) bad = 1;
    if (src >= 0) H5Fclose(src);
    if (gz[0]) remove(gz);
    if (!rc && bad)
        rc = nbs_error_set(err, NBS_ERR_IO, "%s: writing the h5ad failed (disk full, or an HDF5 error%s)", path,
                           src >= 0 ? " while copying the source" : "");
    if (rc) {
        remove(tmp);
        return rc;
    }
    return nbs_io_commit(tmp, path, err);
}

/* ---- Cell Ranger v3 HDF5 ---- */

/* Fixed-length ASCII strings, as Cell Ranger writes them. */
static int write_fixed_strs(hid_t loc, const char *name, char *const *s, const char *constant, hsize_t n) {
    size_t w = 1;
    for (hsize_t i = 0; i < n; i++) {
        size_t len = strlen(constant ? constant : s[i]);
        if (len > w) w = len;
    }
    char *buf = calloc(n ? n : 1, w);
    if (!buf) return -1;
    for (hsize_t i = 0; i < n; i++) memcpy(buf + i * w, constant ? constant : s[i], strlen(constant ? constant : s[i]));
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, w);
    H5Tset_strpad(t, H5T_STR_NULLPAD);
    int bad = write_ds(loc, name, t, t, 1, &n, buf, 1);
    H5Tclose(t);
    free(buf);
    return bad;
}

int nbs_io_write_10x_h5(const char *path, const nbs_matrix *m, nbs_error *err) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    char tmp[NBS_PATH_MAX];
    nbs_io_tmp_name(path, tmp);
    hid_t f = create_file(tmp);
    if (f < 0) return nbs_error_set(err, NBS_ERR_IO, "%s: cannot create (folder missing or not writable?)", tmp);
    int integer = 1;
    for (int64_t k = 0; k < m->nnz && integer; k++) integer = m->data[k] == floorf(m->data[k]) && fabsf(m->data[k]) < 2147483648.0f;
    int32_t *counts = integer ? malloc((size_t)(m->nnz ? m->nnz : 1) * sizeof *counts) : NULL;
    int64_t *idx = malloc((size_t)(m->nnz ? m->nnz : 1) * sizeof *idx);
    int bad = !idx || (integer && !counts);
    for (int64_t k = 0; !bad && k < m->nnz; k++) {
        idx[k] = m->indices[k];
        if (counts) counts[k] = (int32_t)m->data[k];
    }
    /* CSR of cells x genes is CSC of genes x cells: the same arrays, Cell Ranger's layout */
    int32_t shape[2] = {(int32_t)m->n_genes, (int32_t)m->n_cells};
    hsize_t nnz = (hsize_t)m->nnz, np = (hsize_t)m->n_cells + 1, two = 2, nc = (hsize_t)m->n_cells,
            ng = (hsize_t)m->n_genes;
    hid_t g = bad ? -1 : mk_group(f, "matrix");
    hid_t ft = g < 0 ? -1 : mk_group(g, "features");
    bad = bad || g < 0 || ft < 0 || attr_str(f, "filetype", "matrix") ||
          attr_str(f, "software_version", "nbsphere " NBS_VERSION) ||
          (counts ? write_ds(g, "data", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, &nnz, counts, 1)
                  : write_ds(g, "data", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, &nnz, m->data, 1)) ||
          write_ds(g, "indices", H5T_STD_I64LE, H5T_NATIVE_INT64, 1, &nnz, idx, 1) ||
          write_ds(g, "indptr", H5T_STD_I64LE, H5T_NATIVE_INT64, 1, &np, m->indptr, 1) ||
          write_ds(g, "shape", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, &two, shape, 0) ||
          write_fixed_strs(g, "barcodes", m->barcodes, NULL, nc) || write_fixed_strs(ft, "id", m->gene_ids, NULL, ng) ||
          write_fixed_strs(ft, "name", m->gene_names, NULL, ng) ||
          write_fixed_strs(ft, "feature_type", NULL, "Gene Expression", ng) ||
          write_fixed_strs(ft, "genome", NULL, "unknown", ng);
    if (!bad) {
        char *keys[1] = {"genome"};
        bad = write_fixed_strs(ft, "_all_tag_keys", keys, NULL, 1);
    }
    /* Cell Ranger's version attribute: 2 for the feature-barcode (v3) layout */
    if (!bad) {
        hid_t sp = H5Screate(H5S_SCALAR);
        int64_t v = 2;
        hid_t a = H5Acreate2(f, "version", H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
        bad = a < 0 || H5Awrite(a, H5T_NATIVE_INT64, &v) < 0;
        if (a >= 0) H5Aclose(a);
        H5Sclose(sp);
    }
    if (ft >= 0) H5Gclose(ft);
    if (g >= 0) H5Gclose(g);
    if (H5Fclose(f) < 0) bad = 1;
    free(counts);
    free(idx);
    if (bad) {
        remove(tmp);
        return nbs_error_set(err, NBS_ERR_IO, "%s: writing the 10x HDF5 file failed (disk full?)", path);
    }
    return nbs_io_commit(tmp, path, err);
}

/* ---- 10x MTX folder ---- */

typedef int (*text_body)(gzFile f, const nbs_matrix *m);

static int body_matrix(gzFile f, const nbs_matrix *m) {
    int integer = 1;
    for (int64_t k = 0; k < m->nnz && integer; k++) integer = m->data[k] == floorf(m->data[k]);
    int ok = gzprintf(f, "%%%%MatrixMarket matrix coordinate %s general\n%lld %lld %lld\n",
                      integer ? "integer" : "real", (long long)m->n_genes, (long long)m->n_cells,
                      (long long)m->nnz) > 0;
    for (int64_t i = 0; i < m->n_cells && ok; i++)
        for (int64_t k = m->indptr[i]; k < m->indptr[i + 1] && ok; k++)
            ok = integer ? gzprintf(f, "%d %lld %.0f\n", m->indices[k] + 1, (long long)i + 1, (double)m->data[k]) > 0
                         : gzprintf(f, "%d %lld %.9g\n", m->indices[k] + 1, (long long)i + 1, (double)m->data[k]) > 0;
    return ok ? 0 : -1;
}

static int body_features(gzFile f, const nbs_matrix *m) {
    int ok = 1;
    for (int64_t g = 0; g < m->n_genes && ok; g++)
        ok = gzprintf(f, "%s\t%s\tGene Expression\n", m->gene_ids[g], m->gene_names[g]) > 0;
    return ok ? 0 : -1;
}

static int body_barcodes(gzFile f, const nbs_matrix *m) {
    int ok = 1;
    for (int64_t i = 0; i < m->n_cells && ok; i++) ok = gzprintf(f, "%s\n", m->barcodes[i]) > 0;
    return ok ? 0 : -1;
}

/* gzip through zlib ("wb6": no time stamp in the header) or plain ("wT"), via a temporary name. */
static int write_text(const char *dir, const char *name, int gzip, text_body body, const nbs_matrix *m, nbs_error *err) {
    char path[NBS_PATH_MAX], tmp[NBS_PATH_MAX];
    snprintf(path, sizeof path, "%s/%s%s", dir, name, gzip ? ".gz" : "");
    nbs_io_tmp_name(path, tmp);
    gzFile f = gzopen(tmp, gzip ? "wb6" : "wT");
    if (!f) return nbs_error_set(err, NBS_ERR_IO, "%s: cannot write: %s", tmp, strerror(errno));
    int bad = body(f, m);
    if (gzclose(f) != Z_OK) bad = 1;
    if (bad) {
        remove(tmp);
        return nbs_error_set(err, NBS_ERR_IO, "%s: write failed (disk full?)", path);
    }
    return nbs_io_commit(tmp, path, err);
}

int nbs_io_write_10x_mtx_dir(const char *dir, const nbs_matrix *m, int gzip, nbs_error *err) {
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return nbs_error_set(err, NBS_ERR_IO, "%s: cannot create the folder: %s", dir, strerror(errno));
    int st = write_text(dir, "features.tsv", gzip, body_features, m, err);
    if (!st) st = write_text(dir, "barcodes.tsv", gzip, body_barcodes, m, err);
    if (!st) st = write_text(dir, "matrix.mtx", gzip, body_matrix, m, err);
    return st;
}
