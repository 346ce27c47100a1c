/* Writers: the embedding as TSV, .h5ad (new, or a copy of the input with obsm added), Cell
 * Ranger v3 HDF5 and 10x MTX folders. Every file is written under a temporary name and renamed
 * into place (io_util.c). HDF5 objects are created without modification times, so the same data
 * give byte-identical files. */
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "io_h5_internal.h"
#include "io_internal.h"
#include "nbsphere/io.h"
#include "nbsphere/version.h"

/* The HDF5 writers' helpers (HDF5 iteration callbacks among them) report only success or
 * failure; one whose own allocation failed also sets this, so that the writer says "out of
 * memory" (NBS_ERR_NOMEM) instead of blaming the disk. Each writer clears it first. */
static _Thread_local int out_of_memory;

static void *note_nomem(void *p) {
    if (!p) out_of_memory = 1;
    return p;
}

/* ---- embedding TSV ---- */

int nbs_io_embedding_tsv_header(FILE *f, int d, int n_extra, const char *const *extra_names) {
    int bad = fputs("barcode", f) < 0;
    for (int j = 0; j < d && !bad; j++) bad = fprintf(f, "\tdim%d", j + 1) < 0;
    for (int j = 0; j < n_extra && !bad; j++) bad = fprintf(f, "\t%s", extra_names[j]) < 0;
    return bad || fputc('\n', f) == EOF;
}

int nbs_io_embedding_tsv_rows(FILE *f, char *const *barcodes, int64_t n, int d, const float *embedding, int n_extra,
                              const float *extra) {
    int bad = 0;
    /* %.9g: a float32 read back from the text is the same float32 */
    for (int64_t i = 0; i < n && !bad; i++) {
        bad = fputs(barcodes[i], f) < 0;
        for (int j = 0; j < d && !bad; j++) bad = fprintf(f, "\t%.9g", (double)embedding[i * d + j]) < 0;
        for (int j = 0; j < n_extra && !bad; j++) bad = fprintf(f, "\t%.9g", (double)extra[i * n_extra + j]) < 0;
        bad = bad || fputc('\n', f) == EOF;
    }
    return bad;
}

int nbs_io_write_embedding_tsv(const char *path, char *const *barcodes, int64_t n, int d,
                               const float *embedding, int n_extra, const char *const *extra_names,
                               const float *extra, nbs_error *err) {
    char tmp[NBS_PATH_MAX];
    FILE *f;
    int st = nbs_io_atomic_open(path, tmp, &f, err);
    if (st) return st;
    if (!nbs_io_embedding_tsv_header(f, d, n_extra, extra_names))
        nbs_io_embedding_tsv_rows(f, barcodes, n, d, embedding, n_extra, extra);
    return nbs_io_atomic_close(f, tmp, path, err); /* a failed write shows in the stream's error flag */
}

static int unlink_if(hid_t loc, const char *name) {
    return nbs_h5_has(loc, name) ? (H5Ldelete(loc, name, H5P_DEFAULT) < 0 ? -1 : 0) : 0;
}

/* An empty dict group (layers, obsp, ...). */
static int empty_dict(hid_t f, const char *name) {
    hid_t g = nbs_h5_new_group(f, name);
    int bad = g < 0 || nbs_h5_set_encoding(g, "dict", "0.1.0");
    if (g >= 0) H5Gclose(g);
    return bad;
}

static int dataframe(hid_t f, const char *name, char *const *index, int64_t n, const char *col, char *const *col_values) {
    hid_t g = nbs_h5_new_group(f, name);
    if (g < 0) return -1;
    const char *order[1] = {col};
    int bad = nbs_h5_set_encoding(g, "dataframe", "0.2.0") || nbs_h5_set_attr_str(g, "_index", "_index") ||
              nbs_h5_set_attr_strs(g, "column-order", order, col ? 1 : 0) ||
              nbs_h5_write_strs(g, "_index", index, (hsize_t)n, 1);
    if (!bad && col) bad = nbs_h5_write_strs(g, col, col_values, (hsize_t)n, 1);
    H5Gclose(g);
    return bad;
}

/* One obs column: a categorical group (anndata >= 0.8: codes, categories, ordered = false) or an
 * array of numbers. */
static int write_obs_column(hid_t obs, const nbs_obs_column *c, int64_t n) {
    hsize_t nn = (hsize_t)n;
    if (unlink_if(obs, c->name)) return -1;
    if (!c->n_categories) {
        double *v = note_nomem(malloc(sizeof *v * (size_t)(n ? n : 1)));
        if (!v) return -1;
        for (int64_t i = 0; i < n; i++) v[i] = c->values[i * c->stride];
        const int bad = nbs_h5_write_array(obs, c->name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, &nn, v, 0);
        free(v);
        return bad;
    }
    int32_t *codes = note_nomem(malloc(sizeof *codes * (size_t)(n ? n : 1)));
    if (!codes) return -1;
    for (int64_t i = 0; i < n; i++) codes[i] = c->codes[i * c->stride];
    hid_t g = nbs_h5_new_group(obs, c->name);
    /* h5py's bool, which pandas needs for `ordered`: an int8 enum of FALSE = 0 and TRUE = 1 */
    hid_t boolean = H5Tenum_create(H5T_NATIVE_SCHAR);
    signed char v = 0;
    int bad = boolean < 0 || H5Tenum_insert(boolean, "FALSE", &v) < 0;
    v = 1;
    bad = bad || H5Tenum_insert(boolean, "TRUE", &v) < 0;
    v = 0;
    bad = bad || g < 0 || nbs_h5_set_encoding(g, "categorical", "0.2.0") ||
              nbs_h5_set_attr(g, "ordered", boolean, boolean, &v) ||
              nbs_h5_write_array(g, "codes", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, &nn, codes, 0) ||
              nbs_h5_write_strs(g, "categories", c->categories, (hsize_t)c->n_categories, 1);
    if (g >= 0) H5Gclose(g);
    if (boolean >= 0) H5Tclose(boolean);
    free(codes);
    return bad;
}

/* obs/nbsphere_kappa and meta's columns, appended to obs's column-order. */
static int add_obs_columns(hid_t f, int64_t n, const nbs_embedding_meta *meta) {
    hid_t obs = H5Gopen2(f, "obs", H5P_DEFAULT);
    if (obs < 0) return -1;
    hsize_t nn = (hsize_t)n;
    int bad = 0;
    if (meta->obs_kappa) {
        static const char *const kappa[] = {"nbsphere_kappa"};
        bad = unlink_if(obs, "nbsphere_kappa") ||
              nbs_h5_write_array(obs, "nbsphere_kappa", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, &nn, meta->obs_kappa, 0);
        if (!bad) {
            const int rc = nbs_h5_append_column_order(obs, kappa, 1);
            if (rc == -2) out_of_memory = 1;
            bad = rc != 0;
        }
    }
    for (int k = 0; !bad && k < meta->n_obs_columns; k++) {
        bad = write_obs_column(obs, &meta->obs_columns[k], n);
        if (!bad) {
            const int rc = nbs_h5_append_column_order(obs, &meta->obs_columns[k].name, 1);
            if (rc == -2) out_of_memory = 1;
            bad = rc != 0;
        }
    }
    H5Gclose(obs);
    return bad;
}

/* obsm/<key>, uns/nbsphere and the obs columns, into an open file (new or copied). */
static int add_embedding(hid_t f, int64_t n, int d, const float *emb, const nbs_embedding_meta *meta) {
    const char *key = meta && meta->key && *meta->key ? meta->key : "X_nbsphere";
    hid_t obsm = nbs_h5_has(f, "obsm") ? H5Gopen2(f, "obsm", H5P_DEFAULT) : nbs_h5_new_group(f, "obsm");
    if (obsm < 0) return -1;
    hsize_t dims[2] = {(hsize_t)n, (hsize_t)d};
    int bad = nbs_h5_set_encoding(obsm, "dict", "0.1.0") || unlink_if(obsm, key) ||
              nbs_h5_write_array(obsm, key, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, dims, emb, 1);
    H5Gclose(obsm);
    hid_t uns = bad ? -1 : nbs_h5_has(f, "uns") ? H5Gopen2(f, "uns", H5P_DEFAULT) : nbs_h5_new_group(f, "uns");
    if (uns < 0) return -1;
    bad = nbs_h5_set_encoding(uns, "dict", "0.1.0") || unlink_if(uns, "nbsphere");
    hid_t g = bad ? -1 : nbs_h5_new_group(uns, "nbsphere");
    if (g < 0) bad = 1;
    else {
        bad = nbs_h5_set_encoding(g, "dict", "0.1.0") || nbs_h5_write_scalar_str(g, "embedding_key", key, 1) ||
              nbs_h5_write_scalar_str(g, "latent", meta && meta->latent ? meta->latent : "unknown", 1) ||
              nbs_h5_write_scalar_str(g, "metric", meta && meta->metric ? meta->metric : "euclidean", 1) ||
              nbs_h5_write_scalar_str(g, "version", meta && meta->version ? meta->version : "unknown", 1);
        if (!bad && meta && meta->batch_key) bad = nbs_h5_write_scalar_str(g, "batch_key", meta->batch_key, 1);
        H5Gclose(g);
    }
    H5Gclose(uns);
    if (bad || !meta || (!meta->obs_kappa && !meta->n_obs_columns)) return bad;
    return add_obs_columns(f, n, meta);
}

/* ---- the trajectory stage's entries ---- */

static hid_t open_or_new(hid_t loc, const char *name) {
    hid_t g = nbs_h5_has(loc, name) ? H5Gopen2(loc, name, H5P_DEFAULT) : nbs_h5_new_group(loc, name);
    if (g >= 0 && nbs_h5_set_encoding(g, "dict", "0.1.0")) {
        H5Gclose(g);
        return -1;
    }
    return g;
}

/* anndata's numeric scalar (an int64 0-d dataset). */
static int write_int_scalar(hid_t loc, const char *name, int64_t v) {
    hid_t sp = H5Screate(H5S_SCALAR), p = nbs_h5_dcpl(0, NULL, 0);
    hid_t d = H5Dcreate2(loc, name, H5T_STD_I64LE, sp, H5P_DEFAULT, p, H5P_DEFAULT);
    int bad = d < 0 || H5Dwrite(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v) < 0 ||
              nbs_h5_set_encoding(d, "numeric-scalar", "0.2.0");
    if (d >= 0) H5Dclose(d);
    H5Pclose(p);
    H5Sclose(sp);
    return bad ? -1 : 0;
}

/* A csr_matrix group: data float32, indices int32, indptr int64, shape attribute. */
static int write_csr(hid_t loc, const char *name, const nbs_h5ad_csr *m) {
    if (unlink_if(loc, name)) return -1;
    const int64_t nnz = m->indptr[m->n_rows];
    float *data = note_nomem(malloc(sizeof *data * (size_t)(nnz ? nnz : 1)));
    int32_t *idx = note_nomem(malloc(sizeof *idx * (size_t)(nnz ? nnz : 1)));
    hid_t g = data && idx ? nbs_h5_new_group(loc, name) : -1;
    int bad = g < 0;
    if (!bad) {
        for (int64_t e = 0; e < nnz; e++) data[e] = (float)m->values[e], idx[e] = (int32_t)m->indices[e];
        int64_t shape[2] = {m->n_rows, m->n_cols};
        hsize_t two = 2, hn = (hsize_t)nnz, np = (hsize_t)m->n_rows + 1;
        hid_t sp = H5Screate_simple(1, &two, NULL);
        hid_t a = H5Acreate2(g, "shape", H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
        bad = a < 0 || H5Awrite(a, H5T_NATIVE_INT64, shape) < 0;
        if (a >= 0) H5Aclose(a);
        H5Sclose(sp);
        bad = bad || nbs_h5_set_encoding(g, "csr_matrix", "0.1.0") ||
              nbs_h5_write_ds(g, "data", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, &hn, data, 1) ||
              nbs_h5_write_ds(g, "indices", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, &hn, idx, 1) ||
              nbs_h5_write_ds(g, "indptr", H5T_STD_I64LE, H5T_NATIVE_INT64, 1, &np, m->indptr, 1);
        H5Gclose(g);
    }
    free(data);
    free(idx);
    return bad;
}

static int add_trajectory(hid_t f, int64_t n, const nbs_h5ad_trajectory *t) {
    hid_t obsp = open_or_new(f, "obsp");
    int bad = obsp < 0 || write_csr(obsp, "distances", &t->distances) ||
              write_csr(obsp, "connectivities", &t->connectivities);
    if (obsp >= 0) H5Gclose(obsp);
    hid_t obsm = bad ? -1 : open_or_new(f, "obsm");
    if (obsm < 0) return -1;
    hsize_t dims[2] = {(hsize_t)n, (hsize_t)t->n_dcs};
    bad = unlink_if(obsm, "X_diffmap") ||
          nbs_h5_write_array(obsm, "X_diffmap", H5T_IEEE_F32LE, H5T_NATIVE_DOUBLE, 2, dims, t->diffmap, 1);
    H5Gclose(obsm);
    hid_t uns = bad ? -1 : open_or_new(f, "uns");
    if (uns < 0) return -1;
    bad = unlink_if(uns, "neighbors") || unlink_if(uns, "paga") || unlink_if(uns, "diffmap_evals") ||
          unlink_if(uns, "iroot");
    hid_t nb = bad ? -1 : open_or_new(uns, "neighbors"), params = nb < 0 ? -1 : open_or_new(nb, "params");
    bad = params < 0 || nbs_h5_write_scalar_str(nb, "connectivities_key", "connectivities", 1) ||
          nbs_h5_write_scalar_str(nb, "distances_key", "distances", 1) ||
          write_int_scalar(params, "n_neighbors", t->n_neighbors) ||
          nbs_h5_write_scalar_str(params, "method", t->method, 1) ||
          nbs_h5_write_scalar_str(params, "metric", t->metric, 1);
    if (params >= 0) H5Gclose(params);
    if (nb >= 0) H5Gclose(nb);
    hsize_t nd = (hsize_t)t->n_dcs;
    bad = bad || nbs_h5_write_array(uns, "diffmap_evals", H5T_IEEE_F32LE, H5T_NATIVE_DOUBLE, 1, &nd, t->evals, 0) ||
          write_int_scalar(uns, "iroot", t->iroot);
    hid_t paga = bad ? -1 : open_or_new(uns, "paga");
    bad = paga < 0 || write_csr(paga, "connectivities", &t->paga) ||
          nbs_h5_write_scalar_str(paga, "groups", t->groups, 1);
    if (paga >= 0) H5Gclose(paga);
    H5Gclose(uns);
    return bad;
}

static hid_t create_file(const char *tmp) {
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    H5Pset_obj_track_times(fcpl, 0); /* the root group */
    hid_t f = nbs_h5_create_in_memory(tmp, fcpl);
    H5Pclose(fcpl);
    return f;
}

/* X as anndata's csr_matrix of n x n_genes with nnz entries: data, indices and indptr written
 * now, or (NULL) created to be filled later by blocks. */
static int write_csr_x(hid_t f, int64_t n, int64_t n_genes, int64_t nnz, const float *data, const int32_t *indices,
                       const int64_t *indptr) {
    hid_t x = nbs_h5_new_group(f, "X");
    if (x < 0) return -1;
    int64_t shape[2] = {n, n_genes};
    hsize_t two = 2, hn = (hsize_t)nnz, np = (hsize_t)n + 1;
    hid_t sp = H5Screate_simple(1, &two, NULL);
    hid_t a = H5Acreate2(x, "shape", H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    int bad = a < 0 || H5Awrite(a, H5T_NATIVE_INT64, shape) < 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    bad = bad || nbs_h5_set_encoding(x, "csr_matrix", "0.1.0") ||
          nbs_h5_write_ds(x, "data", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, &hn, data, 1) ||
          nbs_h5_write_ds(x, "indices", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, &hn, indices, 1) ||
          nbs_h5_write_ds(x, "indptr", H5T_STD_I64LE, H5T_NATIVE_INT64, 1, &np, indptr, 1);
    H5Gclose(x);
    return bad;
}

static int write_new_h5ad(hid_t f, const nbs_matrix *m) {
    return write_csr_x(f, m->n_cells, m->n_genes, m->nnz, m->data, m->indices, m->indptr) || dataframe(f, "obs", m->barcodes, m->n_cells, NULL, NULL) ||
           dataframe(f, "var", m->gene_names, m->n_genes, "gene_ids", m->gene_ids) || empty_dict(f, "layers") ||
           empty_dict(f, "obsp") || empty_dict(f, "varm") || empty_dict(f, "varp");
}

/* ---- copies of an existing .h5ad ---- */

static herr_t copy_link(hid_t g, const char *name, const H5L_info_t *info, void *op) {
    (void)info;
    return H5Ocopy(g, name, *(hid_t *)op, name, H5P_DEFAULT, H5P_DEFAULT) < 0 ? -1 : 0;
}

static herr_t copy_attr(hid_t loc, const char *name, const H5A_info_t *info, void *op) {
    (void)info;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    hid_t t = H5Aget_type(a), sp = H5Aget_space(a);
    hssize_t n = H5Sget_simple_extent_npoints(sp);
    size_t sz = H5Tget_size(t) * (size_t)(n > 0 ? n : 1);
    void *buf = note_nomem(calloc(sz ? sz : 1, 1));
    if (H5Aexists(*(hid_t *)op, name) > 0) H5Adelete(*(hid_t *)op, name);
    hid_t b = H5Acreate2(*(hid_t *)op, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    int vlen = H5Tdetect_class(t, H5T_VLEN) > 0 || H5Tis_variable_str(t) > 0;
    herr_t r = (!buf || b < 0 || H5Aread(a, t, buf) < 0 || H5Awrite(b, t, buf) < 0) ? -1 : 0;
    if (buf && vlen && r == 0) H5Dvlen_reclaim(t, sp, H5P_DEFAULT, buf);
    free(buf);
    if (b >= 0) H5Aclose(b);
    H5Sclose(sp);
    H5Tclose(t);
    H5Aclose(a);
    return r;
}

static int copy_attrs(hid_t from, hid_t to) {
    hsize_t idx = 0;
    return H5Aiterate2(from, H5_INDEX_NAME, H5_ITER_INC, &idx, copy_attr, &to) < 0 ? -1 : 0;
}

/* Which of the source's cells the output keeps: keep[i] is the source row of m's cell i. */
typedef struct {
    int64_t n_obs, n_keep;
    int64_t *keep;   /* n_keep */
    int64_t *newrow; /* n_obs: the output row, or -1 */
    int dropped;     /* obsp members left out */
} subset_plan;

typedef struct {
    const char *name;
    int64_t idx;
} named_row;

static int cmp_named_row(const void *a, const void *b) {
    return strcmp(((const named_row *)a)->name, ((const named_row *)b)->name);
}

/* The source's cells must be m's cells, all of them in the same order (a plain copy) or a subset
 * in the source's order (the cells kept after filtering: a subset copy, *plan filled). */
static int plan_cells(hid_t src, const char *copy_from, const nbs_matrix *m, subset_plan *plan, nbs_error *err) {
    if (nbs_h5_type(src, "obs") != H5O_TYPE_GROUP)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: obs is not a dataframe group (anndata < 0.7 file?); re-save it "
                             "with a current anndata, or write a new h5ad instead of a copy", copy_from);
    hid_t obs = H5Gopen2(src, "obs", H5P_DEFAULT);
    char idx[256];
    const int64_t n = nbs_h5_dataframe_rows(obs, idx, sizeof idx);
    char **names = n >= 0 ? nbs_calloc((size_t)n + 1, sizeof *names, err) : NULL;
    int rc = n < 0 ? nbs_error_set(err, NBS_ERR_INPUT, "%s: obs has no index dataset '%s'", copy_from, idx)
                   : !names ? NBS_ERR_NOMEM : nbs_h5_read_strings(obs, idx, copy_from, "obs", names, n, err);
    H5Gclose(obs);
    int same = !rc && n == m->n_cells;
    for (int64_t i = 0; same && i < n; i++) same = !strcmp(names[i], m->barcodes[i]);
    if (rc || same) {
        nbs_io_free_labels(names, n < 0 ? 0 : n);
        return rc;
    }
    named_row *sorted = nbs_malloc((size_t)(n ? n : 1) * sizeof *sorted, err);
    plan->n_obs = n;
    plan->n_keep = m->n_cells;
    plan->keep = nbs_malloc((size_t)(m->n_cells ? m->n_cells : 1) * sizeof *plan->keep, err);
    plan->newrow = nbs_malloc((size_t)(n ? n : 1) * sizeof *plan->newrow, err);
    if (!sorted || !plan->keep || !plan->newrow) rc = NBS_ERR_NOMEM;
    for (int64_t i = 0; !rc && i < n; i++) {
        sorted[i] = (named_row){names[i], i};
        plan->newrow[i] = -1;
    }
    if (!rc) qsort(sorted, (size_t)n, sizeof *sorted, cmp_named_row);
    for (int64_t i = 0; !rc && i < m->n_cells; i++) {
        named_row key = {m->barcodes[i], 0};
        named_row *hit = bsearch(&key, sorted, (size_t)n, sizeof *sorted, cmp_named_row);
        if (!hit)
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: cell '%s' (cell %lld of the embedding) is not in obs; a copy "
                               "can only hold cells of the source", copy_from, m->barcodes[i], (long long)i + 1);
        else if (i > 0 && hit->idx <= plan->keep[i - 1])
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: cell %lld is '%s' in the embedding, out of the source's obs "
                               "order; a copy keeps the source's cell order", copy_from, (long long)i + 1, m->barcodes[i]);
        else {
            plan->keep[i] = hit->idx;
            plan->newrow[hit->idx] = i;
        }
    }
    free(sorted);
    nbs_io_free_labels(names, n);
    return rc;
}

/* A new dataset creation list for a subset of a source dataset: gzip kept, no time stamps. */
static hid_t subset_dcpl(hid_t src, int rank, const hsize_t *dims) {
    hid_t s = H5Dget_create_plist(src);
    int gzip = 0, nf = H5Pget_nfilters(s);
    for (int i = 0; i < nf; i++) {
        unsigned flags, conf;
        size_t ne = 0;
        gzip |= H5Pget_filter2(s, (unsigned)i, &flags, &ne, NULL, 0, NULL, &conf) == H5Z_FILTER_DEFLATE;
    }
    H5Pclose(s);
    return nbs_h5_dcpl(rank, dims, gzip && rank >= 1 && rank <= 2);
}

/* name in sg, rows = cells: the kept rows into dg/name, same type and attributes. */
static int subset_rows(hid_t sg, hid_t dg, const char *name, const subset_plan *p) {
    hid_t d = H5Dopen2(sg, name, H5P_DEFAULT), ft = H5Dget_type(d), sp = H5Dget_space(d);
    hid_t mt = H5Tget_native_type(ft, H5T_DIR_ASCEND);
    int rank = H5Sget_simple_extent_ndims(sp);
    hsize_t dims[H5S_MAX_RANK];
    H5Sget_simple_extent_dims(sp, dims, NULL);
    size_t row = H5Tget_size(mt);
    for (int k = 1; k < rank; k++) row *= dims[k];
    char *buf = note_nomem(malloc(dims[0] * row + 1)), *out = note_nomem(malloc((size_t)p->n_keep * row + 1));
    int bad = !buf || !out || H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0;
    int vlen = H5Tdetect_class(mt, H5T_VLEN) > 0 || H5Tis_variable_str(mt) > 0;
    for (int64_t i = 0; !bad && i < p->n_keep; i++) memcpy(out + (size_t)i * row, buf + (size_t)p->keep[i] * row, row);
    if (!bad) {
        hsize_t nd[H5S_MAX_RANK];
        memcpy(nd, dims, sizeof nd);
        nd[0] = (hsize_t)p->n_keep;
        hid_t nsp = H5Screate_simple(rank, nd, NULL), pl = subset_dcpl(d, rank, nd);
        hid_t o = H5Dcreate2(dg, name, ft, nsp, H5P_DEFAULT, pl, H5P_DEFAULT);
        bad = o < 0 || (p->n_keep && H5Dwrite(o, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0) || copy_attrs(d, o);
        if (o >= 0) H5Dclose(o);
        H5Pclose(pl);
        H5Sclose(nsp);
        if (vlen) H5Dvlen_reclaim(mt, sp, H5P_DEFAULT, buf); /* out only borrowed its pointers */
    }
    free(buf);
    free(out);
    H5Tclose(mt);
    H5Tclose(ft);
    H5Sclose(sp);
    H5Dclose(d);
    return bad ? -1 : 0;
}

/* Writes a 1-D array with the file type of src/name (and its attributes). */
static int write_like(hid_t sg, hid_t dg, const char *name, hid_t memtype, const void *v, hsize_t n) {
    hid_t d = H5Dopen2(sg, name, H5P_DEFAULT);
    if (d < 0) return -1;
    hid_t ft = H5Dget_type(d);
    int bad = nbs_h5_write_ds(dg, name, ft, memtype, 1, &n, v, 1);
    if (!bad) {
        hid_t o = H5Dopen2(dg, name, H5P_DEFAULT);
        bad = copy_attrs(d, o);
        H5Dclose(o);
    }
    H5Tclose(ft);
    H5Dclose(d);
    return bad;
}

/* A sparse matrix whose rows are cells: CSR keeps the kept rows' segments; CSC keeps the entries
 * of kept rows, renumbered (the renumbering is monotone, so columns stay sorted). */
static int subset_sparse(hid_t g, hid_t dg, const char *name, int csr, const int64_t shape[2], const char *shape_attr,
                         const subset_plan *p) {
    int64_t n_major = csr ? shape[0] : shape[1], len, nnz;
    nbs_error e = {0};
    int64_t *indptr = nbs_h5_read_1d(g, "indptr", "", name, H5T_NATIVE_INT64, sizeof *indptr, n_major + 1, &len, &e);
    if (!indptr || indptr[0] != 0 || indptr[n_major] < 0) {
        if (e.code == NBS_ERR_NOMEM) out_of_memory = 1;
        free(indptr);
        return -1;
    }
    nnz = indptr[n_major];
    int64_t *indices = nbs_h5_read_1d(g, "indices", "", name, H5T_NATIVE_INT64, sizeof *indices, nnz, &len, &e);
    if (!indices && e.code == NBS_ERR_NOMEM) out_of_memory = 1;
    hid_t dd = H5Dopen2(g, "data", H5P_DEFAULT), ft = dd >= 0 ? H5Dget_type(dd) : -1;
    hid_t mt = ft >= 0 ? H5Tget_native_type(ft, H5T_DIR_ASCEND) : -1;
    size_t es = mt >= 0 ? H5Tget_size(mt) : 1;
    char *data = note_nomem(malloc((size_t)nnz * es + 1)), *nd = note_nomem(malloc((size_t)nnz * es + 1));
    int64_t n_out = csr ? p->n_keep : n_major;
    int64_t *np = note_nomem(malloc((size_t)(n_out + 1) * sizeof *np));
    int64_t *ni = note_nomem(malloc((size_t)(nnz ? nnz : 1) * sizeof *ni));
    int bad = !indices || mt < 0 || !data || !nd || !np || !ni || H5Dread(dd, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0;
    int64_t k2 = 0;
    if (!bad) np[0] = 0;
    for (int64_t i = 0; !bad && i < n_out; i++) {
        int64_t src = csr ? p->keep[i] : i;
        for (int64_t k = indptr[src]; k < indptr[src + 1] && !bad; k++) {
            int64_t col = indices[k];
            if (!csr) {
                if (col < 0 || col >= p->n_obs) bad = 1;
                else if ((col = p->newrow[col]) < 0) continue;
            }
            ni[k2] = col;
            memcpy(nd + (size_t)k2 * es, data + (size_t)k * es, es);
            k2++;
        }
        np[i + 1] = k2;
    }
    hid_t o = bad ? -1 : nbs_h5_new_group(dg, name);
    bad = bad || o < 0 || copy_attrs(g, o);
    if (!bad) {
        int64_t ns[2] = {p->n_keep, shape[1]};
        hsize_t two = 2;
        H5Adelete(o, shape_attr);
        hid_t sp = H5Screate_simple(1, &two, NULL);
        hid_t a = H5Acreate2(o, shape_attr, H5T_STD_I64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
        bad = a < 0 || H5Awrite(a, H5T_NATIVE_INT64, ns) < 0;
        if (a >= 0) H5Aclose(a);
        H5Sclose(sp);
    }
    bad = bad || write_like(g, o, "indptr", H5T_NATIVE_INT64, np, (hsize_t)n_out + 1) ||
          write_like(g, o, "indices", H5T_NATIVE_INT64, ni, (hsize_t)k2) || write_like(g, o, "data", mt, nd, (hsize_t)k2);
    if (o >= 0) H5Gclose(o);
    if (mt >= 0) H5Tclose(mt);
    if (ft >= 0) H5Tclose(ft);
    if (dd >= 0) H5Dclose(dd);
    free(indptr);
    free(indices);
    free(data);
    free(nd);
    free(np);
    free(ni);
    return bad ? -1 : 0;
}

static int copy_tree(hid_t sg, hid_t dg, const char *path, int per_cell, subset_plan *p);

/* One member of a group in a subset copy. Per-cell parts (X, layers, raw/X, obs, obsm) keep the
 * kept rows of every array whose first axis is the cells; the rest is copied unchanged. */
static int copy_member(hid_t sg, hid_t dg, const char *path, const char *name, int per_cell, subset_plan *p) {
    int top = !*path;
    if (top) per_cell = !strcmp(name, "X") || !strcmp(name, "obs") || !strcmp(name, "obsm") || !strcmp(name, "layers");
    else if (!strcmp(path, "raw") && !strcmp(name, "X")) per_cell = 1;
    char child[1024];
    snprintf(child, sizeof child, "%s%s%s", path, top ? "" : "/", name);
    H5O_type_t t = nbs_h5_type(sg, name);
    if (!strcmp(name, "__categories")) per_cell = 0; /* anndata 0.7: category names, not cells */
    if (t == H5O_TYPE_DATASET) {
        if (!per_cell) return H5Ocopy(sg, name, dg, name, H5P_DEFAULT, H5P_DEFAULT) < 0 ? -1 : 0;
        hid_t d = H5Dopen2(sg, name, H5P_DEFAULT), sp = H5Dget_space(d);
        hsize_t dims[H5S_MAX_RANK] = {0};
        int rank = H5Sget_simple_extent_dims(sp, dims, NULL);
        H5Sclose(sp);
        H5Dclose(d);
        if (rank >= 1 && (int64_t)dims[0] == p->n_obs) return subset_rows(sg, dg, name, p);
        return H5Ocopy(sg, name, dg, name, H5P_DEFAULT, H5P_DEFAULT) < 0 ? -1 : 0;
    }
    if (t != H5O_TYPE_GROUP) return H5Ocopy(sg, name, dg, name, H5P_DEFAULT, H5P_DEFAULT) < 0 ? -1 : 0;
    hid_t g = H5Gopen2(sg, name, H5P_DEFAULT);
    char enc[64] = "";
    int64_t shape[2] = {0, 0};
    const char *shape_attr = "shape";
    int rc;
    if (nbs_h5_attr_string(g, "encoding-type", enc, sizeof enc) && !nbs_h5_attr_string(g, "h5sparse_format", enc, sizeof enc)) {
        snprintf(enc, sizeof enc, "%s_matrix", strcmp(enc, "csc") ? "csr" : "csc");
        shape_attr = "h5sparse_shape";
    }
    int sparse = !strcmp(enc, "csr_matrix") || !strcmp(enc, "csc_matrix");
    if (sparse && H5Aexists(g, shape_attr) > 0) {
        hid_t a = H5Aopen(g, shape_attr, H5P_DEFAULT);
        H5Aread(a, H5T_NATIVE_INT64, shape);
        H5Aclose(a);
    }
    if (top && !strcmp(name, "obsp")) { /* a neighbour graph of all cells is wrong for a subset */
        hid_t o = nbs_h5_new_group(dg, name);
        H5G_info_t gi;
        if (H5Gget_info(g, &gi) >= 0 && gi.nlinks > 0) p->dropped = 1;
        rc = o < 0 || copy_attrs(g, o);
        if (o >= 0) H5Gclose(o);
    } else if (per_cell && sparse && shape[0] == p->n_obs) {
        rc = subset_sparse(g, dg, name, !strcmp(enc, "csr_matrix"), shape, shape_attr, p);
    } else if (per_cell && !strcmp(enc, "categorical")) {
        hid_t o = nbs_h5_new_group(dg, name);
        rc = o < 0 || copy_attrs(g, o) || subset_rows(g, o, "codes", p) ||
             H5Ocopy(g, "categories", o, "categories", H5P_DEFAULT, H5P_DEFAULT) < 0;
        if (o >= 0) H5Gclose(o);
    } else {
        hid_t o = nbs_h5_new_group(dg, name);
        rc = o < 0 || copy_attrs(g, o) || copy_tree(g, o, child, per_cell, p);
        if (o >= 0) H5Gclose(o);
    }
    H5Gclose(g);
    return rc ? -1 : 0;
}

typedef struct {
    hid_t dg;
    const char *path;
    int per_cell;
    subset_plan *p;
    int bad;
} tree_op;

static herr_t tree_cb(hid_t g, const char *name, const H5L_info_t *info, void *op) {
    (void)info;
    tree_op *t = op;
    if (copy_member(g, t->dg, t->path, name, t->per_cell, t->p)) t->bad = 1;
    return t->bad ? -1 : 0;
}

static int copy_tree(hid_t sg, hid_t dg, const char *path, int per_cell, subset_plan *p) {
    tree_op op = {dg, path, per_cell, p, 0};
    hsize_t idx = 0;
    return H5Literate(sg, H5_INDEX_NAME, H5_ITER_INC, &idx, tree_cb, &op) < 0 || op.bad ? -1 : 0;
}

int nbs_io_write_h5ad(const char *path, const char *copy_from, const nbs_matrix *m, int d,
                      const float *embedding, const nbs_embedding_meta *meta, nbs_error *err) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    char tmp[NBS_PATH_MAX], gz[NBS_PATH_MAX] = "";
    hid_t src = -1;
    subset_plan plan = {0, 0, NULL, NULL, 0};
    int rc = NBS_OK;
    out_of_memory = 0;
    if (copy_from && *copy_from) {
        int g = nbs_io_gunzip_temp(copy_from, gz, err);
        if (g < 0) return err->code;
        if (!g) gz[0] = '\0';
        const char *real = g ? gz : copy_from;
        src = H5Fis_hdf5(real) > 0 ? H5Fopen(real, H5F_ACC_RDONLY, H5P_DEFAULT) : -1;
        if (src < 0) rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: cannot open as HDF5 to copy from", copy_from);
        else rc = plan_cells(src, copy_from, m, &plan, err);
    }
    nbs_io_tmp_name(path, tmp);
    hid_t f = rc ? -1 : create_file(tmp);
    if (!rc && f < 0) rc = nbs_error_set(err, NBS_ERR_IO, "%s: cannot create (folder missing or not writable?)", tmp);
    int bad = 0;
    if (!rc && src >= 0) {
        hsize_t idx = 0;
        hid_t root = H5Gopen2(src, "/", H5P_DEFAULT), droot = H5Gopen2(f, "/", H5P_DEFAULT);
        bad = plan.keep ? copy_tree(root, droot, "", 0, &plan)
                        : H5Literate(src, H5_INDEX_NAME, H5_ITER_INC, &idx, copy_link, &f) < 0;
        bad = bad || copy_attrs(root, droot);
        H5Gclose(root);
        H5Gclose(droot);
        if (!bad && plan.dropped)
            nbs_warn("%s: obsp (cell-cell graphs) left out of the copy of %s: they were computed on all %lld cells, "
                     "the copy holds %lld; recompute them (e.g. scanpy.pp.neighbors)", path, copy_from,
                     (long long)plan.n_obs, (long long)plan.n_keep);
    } else if (!rc) {
        bad = nbs_h5_set_encoding(f, "anndata", "0.1.0") || write_new_h5ad(f, m);
    }
    if (!rc && !bad && embedding && d > 0) bad = add_embedding(f, m->n_cells, d, embedding, meta);
    if (!rc && !bad && embedding && d > 0 && meta && meta->trajectory) bad = add_trajectory(f, m->n_cells, meta->trajectory);
    const int closed = f >= 0 ? nbs_h5_close_to_file(f, tmp, bad || rc) : 0;
    if (closed) bad = 1;
    if (src >= 0) H5Fclose(src);
    if (gz[0]) remove(gz);
    free(plan.keep);
    free(plan.newrow);
    if (!rc && bad && (closed == -2 || out_of_memory))
        rc = nbs_error_set(err, NBS_ERR_NOMEM, "%s: out of memory while composing the file", path);
    if (!rc && bad)
        rc = nbs_error_set(err, NBS_ERR_IO, "%s: writing the h5ad failed (disk full, or an HDF5 error%s)", path,
                           src >= 0 ? " while copying the source" : "");
    return nbs_io_commit_or_discard(tmp, path, rc, err);
}

/* ---- out of core: embedding.h5ad a block of cells at a time ---- */

struct nbs_h5ad_stream {
    char path[NBS_PATH_MAX], tmp[NBS_PATH_MAX];
    char key[NBS_NAME_MAX];
    hid_t f;
    int64_t n, nnz, rows_done, nnz_done;
    int d, kappa, copy;
};

/* The bytes of from into to, a MiB at a time: 0, -1 when reading failed, -2 writing. */
static int copy_bytes(const char *from, const char *to) {
    FILE *in = fopen(from, "rb"), *out = in ? fopen(to, "wb") : NULL;
    char *buf = out ? malloc(1 << 20) : NULL;
    int rc = !in ? -1 : !out || !buf ? -2 : 0;
    for (size_t got; !rc && (got = fread(buf, 1, 1 << 20, in)) > 0;)
        if (fwrite(buf, 1, got, out) != got) rc = -2;
    if (!rc && ferror(in)) rc = -1;
    if (out && fclose(out) && !rc) rc = -2;
    if (in) fclose(in);
    free(buf);
    return rc;
}

/* Disk blocks for what the stream will add, reserved past the file's end before libhdf5 writes
 * to it (libhdf5 1.10 cannot close a file whose writes failed): -1 when the disk lacks them. A
 * file system without fallocate goes on unreserved. */
static int reserve(const char *tmp, double bytes) {
    int fd = open(tmp, O_WRONLY);
    if (fd < 0) return -1;
    struct stat st;
    int rc = fstat(fd, &st) ? -1 : fallocate(fd, FALLOC_FL_KEEP_SIZE, st.st_size, (off_t)bytes) ? errno : 0;
    close(fd);
    return rc == 0 || rc == EOPNOTSUPP || rc == ENOSYS ? 0 : -1;
}

/* Rows [row0, row0 + n) of a (rows, cols) dataset (cols 1: rank 1) from v. */
static int write_rows(hid_t loc, const char *name, hid_t mtype, int64_t row0, int64_t n, int64_t cols, const void *v) {
    if (n == 0) return 0;
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT), fs = d >= 0 ? H5Dget_space(d) : -1;
    const int rank = fs >= 0 ? H5Sget_simple_extent_ndims(fs) : 0;
    hsize_t start[2] = {(hsize_t)row0, 0}, count[2] = {(hsize_t)n, (hsize_t)cols};
    hid_t ms = rank > 0 ? H5Screate_simple(rank, count, NULL) : -1;
    int bad = ms < 0 || H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
              H5Dwrite(d, mtype, ms, fs, H5P_DEFAULT, v) < 0;
    if (ms >= 0) H5Sclose(ms);
    if (fs >= 0) H5Sclose(fs);
    if (d >= 0) H5Dclose(d);
    return bad ? -1 : 0;
}

/* A new file's skeleton: X (csr_matrix of n x n_genes, nnz entries), obs (index), var, empty dicts. */
static int stream_skeleton(hid_t f, int64_t n, char *const *gene_names, char *const *gene_ids, int64_t n_genes,
                           int64_t nnz) {
    int bad = write_csr_x(f, n, n_genes, nnz, NULL, NULL, NULL);
    hid_t obs = bad ? -1 : nbs_h5_new_group(f, "obs");
    if (obs < 0) return -1;
    hsize_t hrows = (hsize_t)n;
    hid_t t = nbs_h5_vstr_type();
    bad = nbs_h5_set_encoding(obs, "dataframe", "0.2.0") || nbs_h5_set_attr_str(obs, "_index", "_index") ||
          nbs_h5_set_attr_strs(obs, "column-order", NULL, 0) ||
          nbs_h5_write_ds(obs, "_index", t, t, 1, &hrows, NULL, 0);
    H5Tclose(t);
    if (!bad) {
        hid_t d = H5Dopen2(obs, "_index", H5P_DEFAULT);
        bad = d < 0 || nbs_h5_set_encoding(d, "string-array", "0.2.0");
        if (d >= 0) H5Dclose(d);
    }
    H5Gclose(obs);
    return bad || dataframe(f, "var", gene_names, n_genes, "gene_ids", gene_ids) || empty_dict(f, "layers") ||
           empty_dict(f, "obsp") || empty_dict(f, "varm") || empty_dict(f, "varp");
}

int nbs_io_h5ad_stream_open(const char *path, const char *copy_from, int64_t n, int d, int kappa,
                            const nbs_embedding_meta *meta, char *const *gene_names, char *const *gene_ids,
                            int64_t n_genes, int64_t nnz, nbs_h5ad_stream **out, nbs_error *err) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    *out = NULL;
    nbs_h5ad_stream *s = nbs_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    snprintf(s->path, sizeof s->path, "%s", path);
    snprintf(s->key, sizeof s->key, "%s", meta->key && *meta->key ? meta->key : "X_nbsphere");
    s->n = n, s->d = d, s->kappa = kappa, s->nnz = nnz, s->copy = copy_from != NULL, s->f = -1;
    nbs_io_tmp_name(path, s->tmp);
    int rc = NBS_OK, bad = 0;
    char gz[NBS_PATH_MAX] = "";
    double adds = 4.0 * (double)n * (d + 1) + (1 << 20); /* obsm, kappa and the metadata */
    if (copy_from) {
        const int g = nbs_io_gunzip_temp(copy_from, gz, err);
        if (g < 0) rc = err->code;
        else if (!g) gz[0] = '\0';
        const int c = rc ? 0 : copy_bytes(gz[0] ? gz : copy_from, s->tmp);
        if (gz[0]) remove(gz);
        if (c) rc = nbs_error_set(err, NBS_ERR_IO, c == -1 ? "%s: cannot read it to copy" : "%s: cannot write the copy "
                                  "(disk full?)", c == -1 ? copy_from : s->tmp);
        if (!rc && reserve(s->tmp, adds))
            rc = nbs_error_set(err, NBS_ERR_IO, "%s: no room on the disk for the embedding", s->tmp);
        if (!rc && (s->f = H5Fopen(s->tmp, H5F_ACC_RDWR, H5P_DEFAULT)) < 0)
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: cannot open the copy of %s as HDF5", s->tmp, copy_from);
        hid_t obs = !rc ? H5Gopen2(s->f, "obs", H5P_DEFAULT) : -1;
        char idx[256];
        const int64_t rows = obs >= 0 ? nbs_h5_dataframe_rows(obs, idx, sizeof idx) : -1;
        if (!rc && rows != n)
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: obs has %lld rows, the embedding %lld cells; a copy needs every "
                               "cell of the file", copy_from, (long long)rows, (long long)n);
        if (obs >= 0) {
            bad = unlink_if(obs, "nbsphere_kappa");
            H5Gclose(obs);
        }
    } else {
        FILE *probe = fopen(s->tmp, "wb");
        if (!probe) rc = nbs_error_set(err, NBS_ERR_IO, "%s: cannot create (folder missing or not writable?)", s->tmp);
        else fclose(probe);
        adds += 8.0 * (double)nnz + 48.0 * (double)n;
        if (!rc && reserve(s->tmp, adds))
            rc = nbs_error_set(err, NBS_ERR_IO, "%s: no room on the disk for the embedding", s->tmp);
        hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
        H5Pset_obj_track_times(fcpl, 0);
        if (!rc && (s->f = H5Fcreate(s->tmp, H5F_ACC_TRUNC, fcpl, H5P_DEFAULT)) < 0)
            rc = nbs_error_set(err, NBS_ERR_IO, "%s: cannot create", s->tmp);
        H5Pclose(fcpl);
        bad = !rc && (nbs_h5_set_encoding(s->f, "anndata", "0.1.0") ||
                      stream_skeleton(s->f, n, gene_names, gene_ids, n_genes, nnz));
    }
    nbs_embedding_meta m = *meta; /* obsm (empty, written by rows) and uns/nbsphere */
    m.obs_kappa = NULL, m.n_obs_columns = 0, m.trajectory = NULL;
    if (!rc && !bad) bad = add_embedding(s->f, n, d, NULL, &m);
    if (!rc && !bad && kappa) {
        static const char *const col[] = {"nbsphere_kappa"};
        hsize_t hn = (hsize_t)n;
        hid_t obs = H5Gopen2(s->f, "obs", H5P_DEFAULT);
        bad = obs < 0 || nbs_h5_write_array(obs, "nbsphere_kappa", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, &hn, NULL, 0) ||
              nbs_h5_append_column_order(obs, col, 1);
        if (obs >= 0) H5Gclose(obs);
    }
    if (!rc && bad) rc = nbs_error_set(err, NBS_ERR_IO, "%s: writing the h5ad failed (an HDF5 error)", s->tmp);
    if (rc) {
        if (s->f >= 0) H5Fclose(s->f);
        remove(s->tmp);
        free(s);
        return rc;
    }
    *out = s;
    return NBS_OK;
}

int nbs_io_h5ad_stream_rows(nbs_h5ad_stream *s, int64_t n, char *const *barcodes, const float *z, const float *kappa,
                            const nbs_matrix *counts, nbs_error *err) {
    if (s->rows_done + n > s->n || (!s->copy && (!counts || counts->n_cells != n || s->nnz_done + counts->nnz > s->nnz)))
        return nbs_error_set(err, NBS_ERR_INTERNAL, "%s: more cells or counts than the file was made for", s->path);
    hid_t obsm = H5Gopen2(s->f, "obsm", H5P_DEFAULT), obs = H5Gopen2(s->f, "obs", H5P_DEFAULT);
    int bad = obsm < 0 || obs < 0 || write_rows(obsm, s->key, H5T_NATIVE_FLOAT, s->rows_done, n, s->d, z) ||
              (s->kappa && write_rows(obs, "nbsphere_kappa", H5T_NATIVE_FLOAT, s->rows_done, n, 1, kappa));
    if (!bad && !s->copy) {
        hid_t t = nbs_h5_vstr_type(), x = H5Gopen2(s->f, "X", H5P_DEFAULT);
        int64_t *ptr = malloc(sizeof *ptr * (size_t)(n + 1)); /* (n + 1) this block's offsets in the file */
        bad = !ptr || x < 0 || write_rows(obs, "_index", t, s->rows_done, n, 1, barcodes);
        for (int64_t i = 0; !bad && i <= n; i++) ptr[i] = s->nnz_done + counts->indptr[i];
        /* indptr[rows_done] is written by the block before (the same value) or here for the first */
        bad = bad || write_rows(x, "indptr", H5T_NATIVE_INT64, s->rows_done, n + 1, 1, ptr) ||
              write_rows(x, "indices", H5T_NATIVE_INT32, s->nnz_done, counts->nnz, 1, counts->indices) ||
              write_rows(x, "data", H5T_NATIVE_FLOAT, s->nnz_done, counts->nnz, 1, counts->data);
        free(ptr);
        if (x >= 0) H5Gclose(x);
        H5Tclose(t);
        if (!bad) s->nnz_done += counts->nnz;
    }
    if (obs >= 0) H5Gclose(obs);
    if (obsm >= 0) H5Gclose(obsm);
    if (bad) return nbs_error_set(err, NBS_ERR_IO, "%s: writing cells %lld to %lld failed (an HDF5 error)", s->tmp,
                                  (long long)s->rows_done + 1, (long long)(s->rows_done + n));
    s->rows_done += n;
    return NBS_OK;
}

int nbs_io_h5ad_stream_obs(nbs_h5ad_stream *s, const nbs_embedding_meta *meta, nbs_error *err) {
    if (s->rows_done != s->n)
        return nbs_error_set(err, NBS_ERR_INTERNAL, "%s: obs columns before every cell was written", s->path);
    nbs_embedding_meta m = *meta; /* kappa came with the rows */
    m.obs_kappa = NULL;
    out_of_memory = 0;
    int bad = m.n_obs_columns && add_obs_columns(s->f, s->n, &m);
    if (!bad && m.trajectory) bad = add_trajectory(s->f, s->n, m.trajectory);
    if (bad && out_of_memory) return nbs_error_set(err, NBS_ERR_NOMEM, "%s: out of memory writing obs", s->tmp);
    return bad ? nbs_error_set(err, NBS_ERR_IO, "%s: writing obs columns failed (an HDF5 error)", s->tmp) : NBS_OK;
}

int nbs_io_h5ad_stream_close(nbs_h5ad_stream *s, int status, nbs_error *err) {
    if (!s) return status;
    if (!status && (s->rows_done != s->n || s->nnz_done != (s->copy ? 0 : s->nnz)))
        status = nbs_error_set(err, NBS_ERR_INTERNAL, "%s: %lld of %lld cells written", s->path, (long long)s->rows_done,
                               (long long)s->n);
    if (H5Fclose(s->f) < 0 && !status)
        status = nbs_error_set(err, NBS_ERR_IO, "%s: writing the h5ad failed (disk full, or an HDF5 error)", s->tmp);
    struct stat st; /* the reservation's unused blocks past the end go back to the disk */
    if (!status && !stat(s->tmp, &st) && truncate(s->tmp, st.st_size))
        status = nbs_error_set(err, NBS_ERR_IO, "%s: cannot finish the file (%s)", s->tmp, strerror(errno));
    status = nbs_io_commit_or_discard(s->tmp, s->path, status, err);
    free(s);
    return status;
}

/* ---- Cell Ranger v3 HDF5 ---- */

/* Fixed-length ASCII strings, as Cell Ranger writes them. */
static int write_fixed_strs(hid_t loc, const char *name, char *const *s, const char *constant, hsize_t n) {
    size_t w = 1;
    for (hsize_t i = 0; i < n; i++) {
        size_t len = strlen(constant ? constant : s[i]);
        if (len > w) w = len;
    }
    char *buf = note_nomem(calloc(n ? n : 1, w));
    if (!buf) return -1;
    for (hsize_t i = 0; i < n; i++) memcpy(buf + i * w, constant ? constant : s[i], strlen(constant ? constant : s[i]));
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, w);
    H5Tset_strpad(t, H5T_STR_NULLPAD);
    int bad = nbs_h5_write_ds(loc, name, t, t, 1, &n, buf, 1);
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
    out_of_memory = 0;
    int32_t *counts = integer ? note_nomem(malloc((size_t)(m->nnz ? m->nnz : 1) * sizeof *counts)) : NULL;
    int64_t *idx = note_nomem(malloc((size_t)(m->nnz ? m->nnz : 1) * sizeof *idx));
    int bad = !idx || (integer && !counts);
    for (int64_t k = 0; !bad && k < m->nnz; k++) {
        idx[k] = m->indices[k];
        if (counts) counts[k] = (int32_t)m->data[k];
    }
    /* CSR of cells x genes is CSC of genes x cells: the same arrays, Cell Ranger's layout */
    int32_t shape[2] = {(int32_t)m->n_genes, (int32_t)m->n_cells};
    hsize_t nnz = (hsize_t)m->nnz, np = (hsize_t)m->n_cells + 1, two = 2, nc = (hsize_t)m->n_cells,
            ng = (hsize_t)m->n_genes;
    hid_t g = bad ? -1 : nbs_h5_new_group(f, "matrix");
    hid_t ft = g < 0 ? -1 : nbs_h5_new_group(g, "features");
    bad = bad || g < 0 || ft < 0 || nbs_h5_set_attr_str(f, "filetype", "matrix") ||
          nbs_h5_set_attr_str(f, "software_version", "nbsphere " NBS_VERSION) ||
          (counts ? nbs_h5_write_ds(g, "data", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, &nnz, counts, 1)
                  : nbs_h5_write_ds(g, "data", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, &nnz, m->data, 1)) ||
          nbs_h5_write_ds(g, "indices", H5T_STD_I64LE, H5T_NATIVE_INT64, 1, &nnz, idx, 1) ||
          nbs_h5_write_ds(g, "indptr", H5T_STD_I64LE, H5T_NATIVE_INT64, 1, &np, m->indptr, 1) ||
          nbs_h5_write_ds(g, "shape", H5T_STD_I32LE, H5T_NATIVE_INT32, 1, &two, shape, 0) ||
          write_fixed_strs(g, "barcodes", m->barcodes, NULL, nc) || write_fixed_strs(ft, "id", m->gene_ids, NULL, ng) ||
          write_fixed_strs(ft, "name", m->gene_names, NULL, ng) ||
          write_fixed_strs(ft, "feature_type", NULL, "Gene Expression", ng) ||
          write_fixed_strs(ft, "genome", NULL, "unknown", ng);
    if (!bad) {
        char *keys[1] = {"genome"};
        bad = write_fixed_strs(ft, "_all_tag_keys", keys, NULL, 1);
    }
    /* Cell Ranger's version attribute: 2 for the feature-barcode (v3) layout */
    const int64_t version = 2;
    bad = bad || nbs_h5_set_attr(f, "version", H5T_STD_I64LE, H5T_NATIVE_INT64, &version);
    if (ft >= 0) H5Gclose(ft);
    if (g >= 0) H5Gclose(g);
    const int closed = nbs_h5_close_to_file(f, tmp, bad);
    if (closed) bad = 1;
    free(counts);
    free(idx);
    const int st = !bad ? NBS_OK
                 : closed == -2 || out_of_memory
                     ? nbs_error_set(err, NBS_ERR_NOMEM, "%s: out of memory while composing the file", path)
                     : nbs_error_set(err, NBS_ERR_IO, "%s: writing the 10x HDF5 file failed (disk full?)", path);
    return nbs_io_commit_or_discard(tmp, path, st, err);
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
    return nbs_io_commit_or_discard(
        tmp, path, bad ? nbs_error_set(err, NBS_ERR_IO, "%s: write failed (disk full?)", path) : NBS_OK, err);
}

int nbs_io_write_10x_mtx_dir(const char *dir, const nbs_matrix *m, int gzip, nbs_error *err) {
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return nbs_error_set(err, NBS_ERR_IO, "%s: cannot create the folder: %s", dir, strerror(errno));
    int st = write_text(dir, "features.tsv", gzip, body_features, m, err);
    if (!st) st = write_text(dir, "barcodes.tsv", gzip, body_barcodes, m, err);
    if (!st) st = write_text(dir, "matrix.mtx", gzip, body_matrix, m, err);
    return st;
}
