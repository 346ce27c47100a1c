/* HDF5 input/output: 10x Cell Ranger HDF5, AnnData .h5ad and loom (docs/design.md §3).
 * Here: opening (plain or gzip), kind detection, the 10x reader (v3 and v2) and the helpers
 * io_h5_internal.h lists. */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/error.h"
#include "nbsphere/io.h"
#include "io_h5_internal.h"
#include "io_internal.h"

/* H5Lexists on a missing intermediate group is an error, not "no"; check one level at a time. */
int nbs_h5_has(hid_t loc, const char *name) {
    return H5Lexists(loc, name, H5P_DEFAULT) > 0;
}

H5O_type_t nbs_h5_type(hid_t loc, const char *name) {
    H5O_info_t oi;
    if (!nbs_h5_has(loc, name) || H5Oget_info_by_name(loc, name, &oi, H5P_DEFAULT) < 0)
        return H5O_TYPE_UNKNOWN;
    return oi.type;
}

int nbs_h5_check_filters(hid_t dset, const char *file, const char *dpath, nbs_error *err) {
    hid_t dcpl = H5Dget_create_plist(dset);
    if (dcpl < 0) return NBS_OK;
    int n = H5Pget_nfilters(dcpl), rc = NBS_OK;
    for (int i = 0; i < n && !rc; i++) {
        unsigned flags = 0, conf = 0;
        size_t nelem = 0;
        char name[128] = "";
        H5Z_filter_t id = H5Pget_filter2(dcpl, (unsigned)i, &flags, &nelem, NULL, sizeof name, name, &conf);
        if (id < 0 || H5Zfilter_avail(id) > 0) continue;
        /* the optional flag lets HDF5 skip a filter on write; on read the data are still encoded */
        const char *known = id == 32000 ? "LZF (h5py's own filter)" : id == 32001 ? "Blosc"
                          : id == 32004 ? "LZ4" : id == 32008 ? "bitshuffle" : id == 32015 ? "Zstandard" : NULL;
        rc = nbs_error_set(err, NBS_ERR_INPUT,
                           "%s: dataset %s is compressed with %s (HDF5 filter id %d), which this HDF5 "
                           "library cannot decode; re-save the file with gzip compression (in Python: "
                           "adata.write_h5ad(path, compression='gzip')) or none",
                           file, dpath, known ? known : (name[0] ? name : "an unknown filter"), (int)id);
    }
    H5Pclose(dcpl);
    return rc;
}

int nbs_h5_attr_string(hid_t obj, const char *name, char *buf, size_t n) {
    if (H5Aexists(obj, name) <= 0) return -1;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t t = a >= 0 ? H5Aget_type(a) : -1, sp = a >= 0 ? H5Aget_space(a) : -1;
    int rc = -1;
    if (t >= 0 && H5Tget_class(t) == H5T_STRING && H5Sget_simple_extent_npoints(sp) == 1) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_cset(mt, H5Tget_cset(t)); /* HDF5 does not convert between ASCII and UTF-8 */
        if (H5Tis_variable_str(t) > 0) {
            char *s = NULL;
            H5Tset_size(mt, H5T_VARIABLE);
            if (H5Aread(a, mt, &s) >= 0 && s) {
                snprintf(buf, n, "%s", s);
                rc = 0;
            }
            if (s) H5free_memory(s);
        } else {
            size_t w = H5Tget_size(t);
            char *s = calloc(w + 1, 1);
            H5Tset_size(mt, w);
            H5Tset_strpad(mt, H5T_STR_NULLPAD);
            if (s && H5Aread(a, mt, s) >= 0) {
                snprintf(buf, n, "%s", s);
                rc = 0;
            }
            free(s);
        }
        H5Tclose(mt);
    }
    if (sp >= 0) H5Sclose(sp);
    if (t >= 0) H5Tclose(t);
    if (a >= 0) H5Aclose(a);
    return rc;
}

/* v2 layout: one group per genome holding indptr and data. */
static herr_t v2_visit(hid_t g, const char *name, const H5L_info_t *info, void *op) {
    (void)info;
    H5O_info_t oi;
    if (H5Oget_info_by_name(g, name, &oi, H5P_DEFAULT) < 0) return 0;
    if (oi.type != H5O_TYPE_GROUP) return 0;
    hid_t sub = H5Gopen2(g, name, H5P_DEFAULT);
    if (sub < 0) return 0;
    int ok = nbs_h5_has(sub, "indptr") && nbs_h5_has(sub, "data");
    H5Gclose(sub);
    if (ok) *(int *)op = 1;
    return ok; /* a positive value stops the iteration */
}

hid_t nbs_h5_open_input(const char *path, nbs_error *err) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    char tmp[NBS_PATH_MAX];
    int gz = nbs_io_gunzip_temp(path, tmp, err);
    if (gz < 0) return -1;
    if (gz) nbs_debug("%s: gzip-compressed; reading an inflated copy in %s", path, tmp);
    const char *real = gz ? tmp : path, *inside = gz ? " once decompressed" : "";
    int is_h5 = H5Fis_hdf5(real) > 0;
    hid_t f = is_h5 ? H5Fopen(real, H5F_ACC_RDONLY, H5P_DEFAULT) : -1;
    /* HDF5 reads through its open descriptor: the name can go now, so no copy outlives an
     * error or a killed run */
    if (gz) remove(tmp);
    if (!is_h5)
        nbs_error_set(err, NBS_ERR_INPUT, "%s: not a readable HDF5 file%s (missing, truncated or corrupt)", path,
                      inside);
    else if (f < 0)
        nbs_error_set(err, NBS_ERR_INPUT, "%s: cannot open as HDF5%s (truncated or corrupt?)", path, inside);
    return f;
}

int nbs_h5_kind_of(hid_t f, const char *path, nbs_format *out, nbs_error *err) {
    H5O_type_t matrix = nbs_h5_type(f, "matrix");
    if (matrix == H5O_TYPE_GROUP) { /* 10x v3 keeps a CSC group there, loom a 2-D dataset */
        *out = NBS_FMT_10X_H5;
    } else if (matrix == H5O_TYPE_DATASET) {
        *out = NBS_FMT_LOOM;
    } else if (nbs_h5_has(f, "X") && (nbs_h5_has(f, "obs") || nbs_h5_has(f, "var"))) {
        *out = NBS_FMT_H5AD;
    } else {
        int v2 = 0;
        hsize_t idx = 0;
        H5Literate(f, H5_INDEX_NAME, H5_ITER_NATIVE, &idx, v2_visit, &v2);
        if (!v2)
            return nbs_error_set(err, NBS_ERR_INPUT,
                                 "%s: HDF5 file is neither a 10x Cell Ranger file (group /matrix, or "
                                 "genome groups with indptr/data), an AnnData .h5ad (X, obs, var at the "
                                 "root) nor a loom file (dataset /matrix); use --format or convert it", path);
        *out = NBS_FMT_10X_H5;
    }
    return NBS_OK;
}

int nbs_io_h5_kind(const char *path, nbs_format *out, nbs_error *err) {
    hid_t f = nbs_h5_open_input(path, err);
    if (f < 0) return err->code;
    int rc = nbs_h5_kind_of(f, path, out, err);
    H5Fclose(f);
    return rc;
}

/* Opens a 1-D numeric dataset and returns its length, checking rank and class so that a string
 * or 2-D dataset where numbers are expected is an error naming the dataset. */
hid_t nbs_h5_open_1d(hid_t loc, const char *name, const char *file, const char *grp, int64_t *len,
                     nbs_error *err) {
    if (!nbs_h5_has(loc, name)) {
        nbs_error_set(err, NBS_ERR_INPUT, "%s: dataset %s/%s is missing", file, grp, name);
        return -1;
    }
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    hid_t sp = d >= 0 ? H5Dget_space(d) : -1;
    hid_t ty = d >= 0 ? H5Dget_type(d) : -1;
    H5T_class_t cls = ty >= 0 ? H5Tget_class(ty) : H5T_NO_CLASS;
    hsize_t dims[2] = {0, 0};
    int rank = sp >= 0 ? H5Sget_simple_extent_dims(sp, dims, NULL) : -1;
    if (sp >= 0) H5Sclose(sp);
    if (ty >= 0) H5Tclose(ty);
    if (d < 0 || rank != 1 || (cls != H5T_INTEGER && cls != H5T_FLOAT)) {
        if (d >= 0) H5Dclose(d);
        nbs_error_set(err, NBS_ERR_INPUT, "%s: dataset %s/%s must be a 1-D numeric array%s", file, grp,
                      name, d < 0 ? " (cannot open it: corrupt file?)" : "");
        return -1;
    }
    *len = (int64_t)dims[0];
    return d;
}

/* Reads a whole 1-D numeric dataset converted to memtype; its length must be `expect` (or any
 * when expect < 0). */
void *nbs_h5_read_1d(hid_t loc, const char *name, const char *file, const char *grp, hid_t memtype,
                     size_t elsize, int64_t expect, int64_t *len, nbs_error *err) {
    hid_t d = nbs_h5_open_1d(loc, name, file, grp, len, err);
    if (d < 0) return NULL;
    if (expect >= 0 && *len != expect) {
        H5Dclose(d);
        nbs_error_set(err, NBS_ERR_INPUT, "%s: dataset %s/%s has %lld values, expected %lld", file, grp,
                      name, (long long)*len, (long long)expect);
        return NULL;
    }
    char dpath[600];
    snprintf(dpath, sizeof dpath, "%s/%s", grp, name);
    if (nbs_h5_check_filters(d, file, dpath, err)) {
        H5Dclose(d);
        return NULL;
    }
    void *buf = nbs_malloc((size_t)*len * elsize, err);
    if (buf && H5Dread(d, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
        free(buf);
        buf = NULL;
        nbs_error_set(err, NBS_ERR_INPUT,
                      "%s: cannot read dataset %s/%s (corrupt or truncated file, or a compression "
                      "filter this HDF5 library lacks)",
                      file, grp, name);
    }
    H5Dclose(d);
    return buf;
}

/* Reads a 1-D string dataset (fixed or variable length) of exactly n entries into names. */
int nbs_h5_read_strings(hid_t loc, const char *name, const char *file, const char *grp, char **names,
                        int64_t n, nbs_error *err) {
    if (!nbs_h5_has(loc, name))
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: dataset %s/%s is missing", file, grp, name);
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    hid_t ty = d >= 0 ? H5Dget_type(d) : -1, sp = d >= 0 ? H5Dget_space(d) : -1;
    hsize_t dims[2] = {0, 0};
    int rank = sp >= 0 ? H5Sget_simple_extent_dims(sp, dims, NULL) : -1;
    int rc = NBS_OK;
    if (d < 0 || H5Tget_class(ty) != H5T_STRING || rank != 1) {
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: dataset %s/%s must be a 1-D array of strings", file, grp, name);
    } else if ((int64_t)dims[0] != n) {
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: dataset %s/%s has %lld names, but the matrix has %lld",
                           file, grp, name, (long long)dims[0], (long long)n);
    } else if (nbs_h5_check_filters(d, file, name, err)) {
        rc = err->code;
    } else if (H5Tis_variable_str(ty) > 0) {
        char **tmp = nbs_calloc((size_t)n, sizeof *tmp, err);
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_cset(mt, H5Tget_cset(ty)); /* HDF5 does not convert between ASCII and UTF-8 */
        H5Tset_size(mt, H5T_VARIABLE);
        if (!tmp || H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, tmp) < 0) {
            rc = tmp ? nbs_error_set(err, NBS_ERR_INPUT, "%s: cannot read %s/%s", file, grp, name) : NBS_ERR_NOMEM;
        } else {
            for (int64_t i = 0; i < n && !rc; i++)
                if (!(names[i] = nbs_strdup(tmp[i] ? tmp[i] : "", err))) rc = NBS_ERR_NOMEM;
            H5Dvlen_reclaim(mt, sp, H5P_DEFAULT, tmp);
        }
        H5Tclose(mt);
        free(tmp);
    } else {
        size_t w = H5Tget_size(ty);
        char *buf = nbs_malloc((size_t)n * w + 1, err);
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_cset(mt, H5Tget_cset(ty));
        H5Tset_size(mt, w);
        H5Tset_strpad(mt, H5T_STR_NULLPAD);
        if (!buf || H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
            rc = buf ? nbs_error_set(err, NBS_ERR_INPUT, "%s: cannot read %s/%s", file, grp, name) : NBS_ERR_NOMEM;
        } else {
            for (int64_t i = 0; i < n && !rc; i++) {
                if (!(names[i] = nbs_malloc(w + 1, err))) rc = NBS_ERR_NOMEM;
                else {
                    memcpy(names[i], buf + (size_t)i * w, w);
                    names[i][w] = '\0';
                }
            }
        }
        H5Tclose(mt);
        free(buf);
    }
    if (sp >= 0) H5Sclose(sp);
    if (ty >= 0) H5Tclose(ty);
    if (d >= 0) H5Dclose(d);
    return rc;
}

/* Finds the group holding the matrix: /matrix (v3), else the genome group (v2). */
static herr_t list_genomes(hid_t g, const char *name, const H5L_info_t *info, void *op) {
    int found = 0;
    v2_visit(g, name, info, &found);
    if (found) {
        char *list = op;
        size_t len = strlen(list);
        snprintf(list + len, 1024 - len, "%s%s", len ? ", " : "", name);
    }
    return 0;
}

static int read_10x_group(hid_t g, const char *path, const char *grp, int v3, nbs_matrix **out, char ***types,
                          nbs_error *err) {
    int64_t n, len;
    int64_t *shape = nbs_h5_read_1d(g, "shape", path, grp, H5T_NATIVE_INT64, sizeof(int64_t), 2, &n, err);
    if (!shape) return err->code;
    int64_t n_genes = shape[0], n_cells = shape[1];
    free(shape);
    /* INT64_MAX cells would overflow the n_cells + 1 offsets below */
    if (n_genes <= 0 || n_cells <= 0 || n_genes > INT32_MAX || n_cells == INT64_MAX)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: %s/shape gives %lld genes x %lld cells; expected positive sizes",
                             path, grp, (long long)n_genes, (long long)n_cells);
    /* lengths are checked against shape before anything of that size is allocated */
    int64_t *indptr = nbs_h5_read_1d(g, "indptr", path, grp, H5T_NATIVE_INT64, sizeof(int64_t), n_cells + 1, &len, err);
    if (!indptr) return err->code;
    int64_t nnz = indptr[n_cells];
    int32_t *indices = NULL;
    float *data = NULL;
    int rc = NBS_OK;
    if (nnz < 0 || indptr[0] != 0) {
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: %s/indptr must start at 0 and end at the entry count, found %lld and %lld",
                           path, grp, (long long)indptr[0], (long long)nnz);
    } else if (!(indices = nbs_h5_read_1d(g, "indices", path, grp, H5T_NATIVE_INT32, sizeof(int32_t), nnz, &len, err)) ||
               !(data = nbs_h5_read_1d(g, "data", path, grp, H5T_NATIVE_FLOAT, sizeof(float), nnz, &len, err))) {
        rc = err->code;
    }
    nbs_matrix *m = NULL;
    if (!rc) { /* the arrays become the matrix's own: one copy of the entries */
        char what[NBS_PATH_MAX + 64];
        snprintf(what, sizeof what, "%s (%s)", path, grp);
        nbs_compressed_view v = {n_cells, n_genes, nnz, indptr, indices, data};
        m = nbs_matrix_take_compressed(&v, 1, what, err);
        if (!m) rc = err->code;
    } else {
        free(indptr);
        free(indices);
        free(data);
    }
    if (rc) return rc;
    hid_t feat = v3 ? H5Gopen2(g, "features", H5P_DEFAULT) : g;
    char fgrp[300];
    snprintf(fgrp, sizeof fgrp, "%s%s", grp, v3 ? "/features" : "");
    if (feat < 0) rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: group %s/features is missing", path, grp);
    if (!rc) rc = nbs_h5_read_strings(g, "barcodes", path, grp, m->barcodes, n_cells, err);
    if (!rc) rc = nbs_h5_read_strings(feat, v3 ? "id" : "genes", path, fgrp, m->gene_ids, n_genes, err);
    if (!rc) rc = nbs_h5_read_strings(feat, v3 ? "name" : "gene_names", path, fgrp, m->gene_names, n_genes, err);
    /* v2 files have no feature types: every row is a gene */
    if (!rc && types && v3 && nbs_h5_has(feat, "feature_type")) {
        if (!(*types = nbs_calloc((size_t)n_genes, sizeof **types, err))) rc = NBS_ERR_NOMEM;
        else rc = nbs_h5_read_strings(feat, "feature_type", path, fgrp, *types, n_genes, err);
    }
    if (v3 && feat >= 0) H5Gclose(feat);
    if (rc) {
        if (types && *types) nbs_io_free_labels(*types, n_genes);
        if (types) *types = NULL;
        nbs_matrix_free(m);
        return rc;
    }
    *out = m;
    return NBS_OK;
}

int nbs_io_read_10x_h5(const char *path, const char *genome, nbs_matrix **out, nbs_error *err) {
    return nbs_io_read_10x_h5_types(path, genome, out, NULL, err);
}

int nbs_io_read_10x_h5_types(const char *path, const char *genome, nbs_matrix **out, char ***types,
                             nbs_error *err) {
    if (types) *types = NULL;
    hid_t f = nbs_h5_open_input(path, err);
    if (f < 0) return err->code;
    nbs_format kind;
    int rc = nbs_h5_kind_of(f, path, &kind, err);
    if (!rc && kind != NBS_FMT_10X_H5)
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: this is %s, not a 10x HDF5 file; set input.format to auto or %s",
                           path, kind == NBS_FMT_LOOM ? "a loom file" : "an AnnData .h5ad file", nbs_format_name(kind));
    if (rc) {
        H5Fclose(f);
        return rc;
    }
    char grp[300] = "matrix";
    int v3 = nbs_h5_has(f, "matrix");
    if (!v3) {
        char list[1024] = "";
        hsize_t idx = 0;
        H5Literate(f, H5_INDEX_NAME, H5_ITER_NATIVE, &idx, list_genomes, list);
        if (genome && *genome) {
            hid_t probe = nbs_h5_has(f, genome) ? H5Gopen2(f, genome, H5P_DEFAULT) : -1;
            int ok = probe >= 0 && nbs_h5_has(probe, "indptr");
            if (probe >= 0) H5Gclose(probe);
            if (!ok) rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: no genome '%s'; the file has: %s", path, genome, list);
            snprintf(grp, sizeof grp, "%s", genome);
        } else if (strchr(list, ',')) {
            rc = nbs_error_set(err, NBS_ERR_INPUT,
                               "%s: the file holds several genomes (%s); choose one with input.genome", path, list);
        } else {
            snprintf(grp, sizeof grp, "%s", list);
        }
    }
    hid_t g = rc ? -1 : H5Gopen2(f, grp, H5P_DEFAULT);
    if (!rc && g < 0) rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: cannot open group /%s", path, grp);
    if (!rc) rc = read_10x_group(g, path, grp, v3, out, types, err);
    if (g >= 0) H5Gclose(g);
    H5Fclose(f);
    return rc;
}
