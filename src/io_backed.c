/* Out-of-core input (backed.h): rows of an .h5ad CSR matrix or a 10x HDF5 matrix (or of several,
 * input.samples, one after the other) read in contiguous runs with hyperslabs, and the loader that
 * serves minibatches from shuffled blocks. */
#include "nbsphere/backed.h"

#include <gsl/gsl_randist.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "io_h5_internal.h"
#include "io_internal.h"
#include "nbsphere/io.h"
#include "nbsphere/samples.h"

/* One file of the input: its matrix group and datasets, and how its columns map to the input's
 * genes. */
typedef struct {
    char path[NBS_PATH_MAX];
    char loc[NBS_NAME_MAX + 16]; /* the matrix group, for messages: X, layers/counts, matrix */
    hid_t f, g, d_idx, d_data;   /* the file, the matrix group, its indices and data */
    hid_t names_loc;             /* the group holding the cell names, and their dataset */
    char names_ds[NBS_NAME_MAX];
    char sample[NBS_NAME_MAX];   /* input.samples: the name its barcodes are suffixed with; "": one file */
    int64_t n_cells, n_file_genes, n_genes, nnz; /* n_genes: after input.feature_types */
    int64_t row0, nnz0;          /* its first row and entry among the input's */
    int64_t *indptr;             /* (n_cells + 1) while opening; then the input's indptr holds it */
    int64_t *gene_of;            /* (n_file_genes) its gene of a file column, -1 dropped; NULL: same */
    int64_t *to;                 /* (n_genes) input gene of its gene, -1 dropped (input.join inner); NULL: same */
    char **gene_names, **gene_ids; /* (n_genes) */
    int peek;                    /* the layout only (nbs_backed_decide): no indptr, names or notes */
} backed_file;

/* The input: its files' rows one after the other, as one matrix of the input's genes. */
struct nbs_backed {
    backed_file *file;           /* (n_files) */
    int n_files;
    int64_t n_cells, n_genes, nnz;
    int64_t *indptr;             /* (n_cells + 1) over the files' rows, their entries one after the other */
    char **gene_names, **gene_ids; /* (n_genes) the file's for one file (not owned), else the matched genes' */
    nbs_nonint_policy non_integer;
    /* one block of rows as read: indptr (rows + 1, from 0), input-gene indices and values */
    int64_t *blk_indptr, blk_rows_cap;
    int32_t *blk_idx;
    float *blk_data;
    int64_t blk_cap;
    int ranged;                  /* nbs_backed_rows_range: the scan visits rows [scan0, scan1) only */
    int64_t scan0, scan1;
    int64_t rows_read;           /* rows read from the files so far (nbs_backed_rows_read) */
};

/* ---- deciding ---- */

double nbs_backed_estimate(int64_t n_cells, int64_t n_genes, int64_t nnz) {
    /* the loaded CSR (8 bytes an entry, 8 a row) and names (about 64 bytes each) */
    return 8.0 * (double)nnz + 72.0 * (double)n_cells + 64.0 * (double)n_genes;
}

/* The stored entries and shape of the matrix the input names, without reading it: NBS_OK, or the
 * status (NBS_ERR_INPUT when the file is not of a layout out-of-core reading takes). */
static int open_one(backed_file *b, const nbs_input_config *in, nbs_format format, nbs_error *err);
static void close_file(backed_file *b);
static backed_file *file_of(const nbs_backed *b, int64_t r);

static int peek_size(const nbs_input_config *in, nbs_format format, int64_t *n_cells, int64_t *n_genes, int64_t *nnz) {
    nbs_error e = {0};
    backed_file b = {.peek = 1};
    const int st = open_one(&b, in, format, &e);
    *n_cells = b.n_cells;
    *n_genes = b.n_genes;
    *nnz = b.nnz;
    close_file(&b);
    return st;
}

/* File i of the input (0 of one; sample i of input.samples, into *one) as an input section of one
 * file, and its format (detected when auto). */
static int file_input(const nbs_input_config *in, nbs_format format, int i, nbs_input_config *one,
                      const nbs_input_config **fi, nbs_format *ff, nbs_error *err) {
    if (!in->samples.n) {
        *fi = in;
        *ff = format;
        return NBS_OK;
    }
    *fi = one;
    nbs_sample_input(in, i, one);
    const int st = one->format == NBS_FMT_AUTO ? nbs_io_detect_format(one->path, &one->format, err) : NBS_OK;
    if (st) nbs_error_prefix(err, "input.samples '%s': ", in->samples.items[i].name);
    *ff = one->format;
    return st;
}

static int readable(nbs_format f) { return f == NBS_FMT_H5AD || f == NBS_FMT_10X_H5; }

double nbs_backed_memory_limit(const nbs_input_config *in, const char **whose) {
    if (in->memory_limit != NBS_AUTO) {
        *whose = "input.memory_limit";
        return (double)in->memory_limit * 1048576.0;
    }
    const long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    *whose = "input.memory_limit auto, half of the physical memory";
    return pages > 0 && size > 0 ? NBS_BACKED_RAM_FRACTION * (double)pages * (double)size : INFINITY;
}

int nbs_backed_decide(const nbs_input_config *in, nbs_format format, int *backed, char *why, nbs_error *err) {
    const int n_files = in->samples.n ? in->samples.n : 1;
    nbs_input_config *one = in->samples.n ? malloc(sizeof *one) : NULL; /* a sample's input section */
    if (in->samples.n && !one) return nbs_error_set(err, NBS_ERR_NOMEM, "out of memory");
    const nbs_input_config *fi;
    nbs_format ff;
    nbs_error scratch = {0};
    int st = NBS_OK;
    *backed = 0;
    why[0] = '\0';
    if (in->backed == 1) {
        for (int i = 0; i < n_files && !st; i++) {
            if ((st = file_input(in, format, i, one, &fi, &ff, err))) break;
            if (!readable(ff) && !in->samples.n)
                st = nbs_error_set(err, NBS_ERR_USAGE, "input.backed: true reads an .h5ad (CSR X or layer) or a 10x .h5 "
                                   "file out of core; %s is %s: set input.backed: false (or auto), or convert it to .h5ad",
                                   in->path, nbs_enum_word_of(nbs_format_words, ff));
            else if (!readable(ff))
                st = nbs_error_set(err, NBS_ERR_USAGE, "input.backed: true reads samples of .h5ad (CSR X or layer) or "
                                   "10x .h5 files out of core; input.samples '%s' (%s) is %s: set input.backed: false "
                                   "(or auto), or convert it to .h5ad", in->samples.items[i].name, fi->path,
                                   nbs_enum_word_of(nbs_format_words, ff));
        }
        free(one);
        if (st) return st;
        *backed = 1;
        snprintf(why, 256, "input.backed: true");
        return NBS_OK;
    }
    if (in->backed == 0) {
        free(one);
        snprintf(why, 256, "input.backed: false");
        return NBS_OK;
    }
    const char *whose;
    const double limit = nbs_backed_memory_limit(in, &whose);
    /* nothing to choose unless every file can be read out of core (the in-memory reader reports a
     * file it cannot read) */
    for (int i = 0; i < n_files && !st; i++)
        if (file_input(in, format, i, one, &fi, &ff, &scratch) || !readable(ff)) st = NBS_ERR_INPUT;
    if (st) {
        free(one);
        return NBS_OK;
    }
    int64_t n = 0, g = 0, nnz = 0;
    int gz = 0;
    for (int i = 0; i < n_files && !st; i++) {
        int64_t fn = 0, fg = 0, fnnz = 0;
        file_input(in, format, i, one, &fi, &ff, &scratch);
        const size_t len = strlen(fi->path);
        gz = len > 3 && !strcmp(fi->path + len - 3, ".gz");
        st = !gz ? peek_size(fi, ff, &fn, &fg, &fnnz) : NBS_ERR_INPUT;
        if (st == NBS_ERR_NOMEM) st = nbs_error_set(err, NBS_ERR_NOMEM, "out of memory opening %s", fi->path);
        n += fn, nnz += fnnz, g = fg > g ? fg : g;
    }
    free(one);
    if (st == NBS_ERR_NOMEM) return st;
    if (st) {
        snprintf(why, 256, "input.backed auto: in memory (%s)", gz ? "a gzip-compressed input is inflated to be read; "
                 "input.backed: true reads it out of core" : "its matrix is not one out-of-core reading takes");
        return NBS_OK;
    }
    const double need = nbs_backed_estimate(n, g, nnz);
    *backed = need > limit;
    snprintf(why, 256, "input.backed auto: %s (the counts need about %.0f MB in memory; %s: %.0f MB)",
             *backed ? "out of core" : "in memory", need / 1048576.0, whose, limit / 1048576.0);
    return NBS_OK;
}

/* ---- opening ---- */

static void close_file(backed_file *b) {
    if (b->d_idx >= 0) H5Dclose(b->d_idx);
    if (b->d_data >= 0) H5Dclose(b->d_data);
    if (b->names_loc >= 0) H5Oclose(b->names_loc);
    if (b->g >= 0) H5Gclose(b->g);
    if (b->f >= 0) H5Fclose(b->f);
    b->d_idx = b->d_data = b->names_loc = b->g = b->f = -1;
    free(b->indptr);
    free(b->gene_of);
    free(b->to);
    if (b->gene_names) nbs_io_free_labels(b->gene_names, b->n_genes);
    if (b->gene_ids) nbs_io_free_labels(b->gene_ids, b->n_genes);
    b->indptr = b->gene_of = b->to = NULL;
    b->gene_names = b->gene_ids = NULL;
}

void nbs_backed_close(nbs_backed *b) {
    if (!b) return;
    /* input.samples (even of one file) matched the genes into arrays of their own */
    const int owned = b->gene_names && !(b->file && b->n_files && b->gene_names == b->file[0].gene_names);
    for (int i = 0; b->file && i < b->n_files; i++) close_file(&b->file[i]);
    free(b->file);
    if (owned) nbs_io_free_labels(b->gene_names, b->n_genes);
    if (owned && b->gene_ids) nbs_io_free_labels(b->gene_ids, b->n_genes);
    free(b->indptr);
    free(b->blk_indptr);
    free(b->blk_idx);
    free(b->blk_data);
    free(b);
}

static int listed(const char *wanted, const char *type) {
    const size_t tl = strlen(type);
    for (const char *p = wanted; *p;) {
        p += strspn(p, " \t");
        size_t len = strcspn(p, ","), end = len;
        while (end && (p[end - 1] == ' ' || p[end - 1] == '\t')) end--;
        if (end == tl && !strncasecmp(p, type, tl)) return 1;
        p += len + (p[len] == ',');
    }
    return 0;
}

/* Strings of a dataset, n of them (the file's genes). */
static char **read_names(hid_t loc, const char *name, const char *path, const char *grp, int64_t n, nbs_error *err) {
    char **s = nbs_calloc((size_t)(n ? n : 1), sizeof *s, err);
    if (s && nbs_h5_read_strings(loc, name, path, grp, s, n, err)) {
        nbs_io_free_labels(s, n);
        s = NULL;
    }
    return s;
}

/* An .h5ad: the CSR group at X, raw/X or layers/<layer>, var's index (and gene_ids), obs's index. */
static int open_h5ad(backed_file *b, const nbs_input_config *in, nbs_error *err) {
    const char *layer = in->layer;
    char var[16] = "var";
    if (!*layer || !strcmp(layer, "X")) snprintf(b->loc, sizeof b->loc, "X");
    else if (!strcmp(layer, "raw")) snprintf(b->loc, sizeof b->loc, "raw/X"), snprintf(var, sizeof var, "raw/var");
    else snprintf(b->loc, sizeof b->loc, "layers/%s", layer);
    const H5O_type_t t = nbs_h5_type(b->f, b->loc);
    char enc[64] = "";
    if (t == H5O_TYPE_UNKNOWN)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: there is no /%s in this file; choose input.layer", b->path, b->loc);
    if (t == H5O_TYPE_DATASET)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s is a dense array; out-of-core reading (input.backed) needs a "
                             "CSR matrix (anndata's csr_matrix, each cell's counts stored together): set "
                             "input.backed: false, or write the file with X as scipy.sparse.csr_matrix", b->path, b->loc);
    b->g = H5Gopen2(b->f, b->loc, H5P_DEFAULT);
    if (b->g < 0 || (nbs_h5_attr_string(b->g, "encoding-type", enc, sizeof enc) &&
                     nbs_h5_attr_string(b->g, "h5sparse_format", enc, sizeof enc)))
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s is not a sparse matrix written by anndata (no encoding-type)",
                             b->path, b->loc);
    if (strcmp(enc, "csr_matrix") && strcmp(enc, "csr"))
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s is stored as %s (genes together); out-of-core reading "
                             "(input.backed) needs each cell's counts together (csr_matrix): set input.backed: false, "
                             "or convert it (adata.X = adata.X.tocsr())", b->path, b->loc, enc);
    int64_t shape[2];
    hid_t a = H5Aexists(b->g, "shape") > 0 ? H5Aopen(b->g, "shape", H5P_DEFAULT)
              : H5Aexists(b->g, "h5sparse_shape") > 0 ? H5Aopen(b->g, "h5sparse_shape", H5P_DEFAULT) : -1;
    hid_t sp = a >= 0 ? H5Aget_space(a) : -1;
    const int ok = a >= 0 && H5Sget_simple_extent_npoints(sp) == 2 && H5Aread(a, H5T_NATIVE_INT64, shape) >= 0;
    if (sp >= 0) H5Sclose(sp);
    if (a >= 0) H5Aclose(a);
    if (!ok || shape[0] < 0 || shape[1] < 0 || shape[0] > INT32_MAX || shape[1] > INT32_MAX)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s has no valid 2-element 'shape' attribute", b->path, b->loc);
    b->n_cells = shape[0];
    b->n_file_genes = b->n_genes = shape[1];
    if (b->peek) return NBS_OK;
    char idx[256] = "_index";
    hid_t vg = nbs_h5_type(b->f, var) == H5O_TYPE_GROUP ? H5Gopen2(b->f, var, H5P_DEFAULT) : -1;
    if (vg < 0)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s is not a dataframe group (anndata >= 0.7); out-of-core reading "
                             "needs one: set input.backed: false", b->path, var);
    nbs_h5_attr_string(vg, "_index", idx, sizeof idx);
    int rc = (b->gene_names = read_names(vg, idx, b->path, var, b->n_genes, err)) ? NBS_OK : (int)err->code;
    if (!rc && nbs_h5_type(vg, "gene_ids") == H5O_TYPE_DATASET) {
        nbs_error tmp = {0};
        b->gene_ids = read_names(vg, "gene_ids", b->path, var, b->n_genes, &tmp);
    }
    H5Gclose(vg);
    if (rc) return rc;
    b->names_loc = nbs_h5_type(b->f, "obs") == H5O_TYPE_GROUP ? H5Oopen(b->f, "obs", H5P_DEFAULT) : -1;
    if (b->names_loc < 0)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: /obs is not a dataframe group (anndata >= 0.7); out-of-core reading "
                             "needs one: set input.backed: false", b->path);
    snprintf(b->names_ds, sizeof b->names_ds, "_index");
    nbs_h5_attr_string(b->names_loc, "_index", b->names_ds, sizeof b->names_ds);
    return NBS_OK;
}

static herr_t find_genome(hid_t g, const char *name, const H5L_info_t *info, void *op) {
    (void)info;
    char p[NBS_NAME_MAX + 16];
    snprintf(p, sizeof p, "%s/indptr", name);
    if (H5Lexists(g, name, H5P_DEFAULT) > 0 && nbs_h5_type(g, name) == H5O_TYPE_GROUP && nbs_h5_has(g, p)) {
        char *out = op;
        if (out[0]) out[0] = '\n'; /* more than one */
        else snprintf(out, NBS_NAME_MAX, "%s", name);
    }
    return 0;
}

/* A 10x HDF5: v3's /matrix (features with types), or a v2 genome group. */
static int open_10x(backed_file *b, const nbs_input_config *in, nbs_error *err) {
    const int v3 = nbs_h5_type(b->f, "matrix") == H5O_TYPE_GROUP;
    if (v3) snprintf(b->loc, sizeof b->loc, "matrix");
    else if (in->genome[0]) snprintf(b->loc, sizeof b->loc, "%s", in->genome);
    else {
        char found[NBS_NAME_MAX] = "";
        H5Literate(b->f, H5_INDEX_NAME, H5_ITER_INC, NULL, find_genome, found);
        if (!found[0] || found[0] == '\n')
            return nbs_error_set(err, NBS_ERR_INPUT, "%s: %s; set input.genome", b->path,
                                 found[0] ? "several genome groups" : "no matrix group");
        snprintf(b->loc, sizeof b->loc, "%s", found);
    }
    if (nbs_h5_type(b->f, b->loc) != H5O_TYPE_GROUP)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: there is no group /%s", b->path, b->loc);
    b->g = H5Gopen2(b->f, b->loc, H5P_DEFAULT);
    int64_t len;
    int64_t *shape = nbs_h5_read_1d(b->g, "shape", b->path, b->loc, H5T_NATIVE_INT64, sizeof *shape, 2, &len, err);
    if (!shape) return err->code;
    b->n_file_genes = shape[0];
    b->n_cells = shape[1];
    free(shape);
    if (b->n_cells < 0 || b->n_file_genes < 0 || b->n_cells > INT32_MAX || b->n_file_genes > INT32_MAX)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s/shape (%lld, %lld) is out of range", b->path, b->loc,
                             (long long)b->n_file_genes, (long long)b->n_cells);
    b->n_genes = b->n_file_genes;
    if (b->peek) return NBS_OK;
    char fgrp[NBS_NAME_MAX + 32];
    snprintf(fgrp, sizeof fgrp, "%s/features", b->loc);
    hid_t fl = v3 ? H5Gopen2(b->g, "features", H5P_DEFAULT) : b->g;
    if (fl < 0) return nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s is missing", b->path, fgrp);
    const char *grp = v3 ? fgrp : b->loc;
    char **names = read_names(fl, v3 ? "name" : "gene_names", b->path, grp, b->n_file_genes, err);
    char **ids = names ? read_names(fl, v3 ? "id" : "genes", b->path, grp, b->n_file_genes, err) : NULL;
    char **types = NULL;
    if (ids && v3 && nbs_h5_has(fl, "feature_type")) types = read_names(fl, "feature_type", b->path, grp, b->n_file_genes, err);
    if (v3) H5Gclose(fl);
    int rc = !names || !ids || (v3 && nbs_h5_has(b->g, "features/feature_type") && !types) ? (int)err->code : NBS_OK;
    const char *wanted = in->feature_types[0] ? in->feature_types : "Gene Expression";
    if (!rc && types && !listed(wanted, "all")) { /* keep the wanted types, as nbs_io_read does */
        if (!(b->gene_of = nbs_malloc(sizeof *b->gene_of * (size_t)(b->n_file_genes + 1), err))) rc = NBS_ERR_NOMEM;
        b->n_genes = 0;
        for (int64_t j = 0; !rc && j < b->n_file_genes; j++) {
            if (!listed(wanted, types[j])) {
                b->gene_of[j] = -1;
                free(names[j]), free(ids[j]);
                continue;
            }
            names[b->n_genes] = names[j];
            ids[b->n_genes] = ids[j];
            b->gene_of[j] = b->n_genes++;
        }
        if (!rc && b->n_genes < b->n_file_genes)
            nbs_info("%s: kept %lld of %lld features (input.feature_types: %s)", b->path, (long long)b->n_genes,
                     (long long)b->n_file_genes, wanted);
        if (!rc && !b->n_genes)
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: no features of the types input.feature_types asks for (%s); set "
                               "input.feature_types (e.g. all)", b->path, wanted);
        for (int64_t j = b->n_genes; j < b->n_file_genes; j++) names[j] = ids[j] = NULL;
    }
    if (types) nbs_io_free_labels(types, b->n_file_genes);
    b->gene_names = names;
    b->gene_ids = ids;
    if (rc) return rc;
    b->names_loc = H5Oopen(b->g, ".", H5P_DEFAULT);
    snprintf(b->names_ds, sizeof b->names_ds, "barcodes");
    return NBS_OK;
}

/* Opens file b of the input (its layout; with b->peek only the shape and stored entries): on
 * failure the caller closes it. */
static int open_one(backed_file *b, const nbs_input_config *in, nbs_format format, nbs_error *err) {
    b->f = b->g = b->d_idx = b->d_data = b->names_loc = -1;
    snprintf(b->path, sizeof b->path, "%s", in->path);
    int rc = (b->f = nbs_h5_open_input(in->path, err)) < 0 ? (int)err->code : NBS_OK;
    if (!rc) rc = format == NBS_FMT_H5AD ? open_h5ad(b, in, err) : open_10x(b, in, err);
    int64_t n_idx = 0, len = 0;
    if (!rc && b->peek) { /* the stored counts, for the estimate, in a layout that holds together */
        int64_t n_ptr = -1;
        hid_t d = nbs_h5_open_1d(b->g, "data", b->path, b->loc, &b->nnz, err);
        hid_t p = d >= 0 ? nbs_h5_open_1d(b->g, "indptr", b->path, b->loc, &n_ptr, err) : -1;
        if (d < 0 || p < 0) rc = err->code;
        else if (n_ptr != b->n_cells + 1) rc = NBS_ERR_INPUT; /* the reader that loads it says what is wrong */
        if (d >= 0) H5Dclose(d);
        if (p >= 0) H5Dclose(p);
        return rc;
    }
    if (!rc && !(b->indptr = nbs_h5_read_1d(b->g, "indptr", b->path, b->loc, H5T_NATIVE_INT64, sizeof *b->indptr,
                                            b->n_cells + 1, &len, err)))
        rc = err->code;
    if (!rc && ((b->d_data = nbs_h5_open_1d(b->g, "data", b->path, b->loc, &b->nnz, err)) < 0 ||
                (b->d_idx = nbs_h5_open_1d(b->g, "indices", b->path, b->loc, &n_idx, err)) < 0))
        rc = err->code;
    char what[NBS_PATH_MAX + 64];
    snprintf(what, sizeof what, "%s/data", b->loc);
    if (!rc && (nbs_h5_check_filters(b->d_data, b->path, what, err) ||
                nbs_h5_check_filters(b->d_idx, b->path, b->loc, err)))
        rc = err->code;
    if (!rc && n_idx != b->nnz)
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s/data has %lld entries but indices has %lld", b->path, b->loc,
                           (long long)b->nnz, (long long)n_idx);
    if (!rc && (b->indptr[0] != 0 || b->indptr[b->n_cells] != b->nnz))
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s/indptr must start at 0 and end at the %lld stored entries",
                           b->path, b->loc, (long long)b->nnz);
    for (int64_t i = 0; !rc && i < b->n_cells; i++)
        if (b->indptr[i + 1] < b->indptr[i])
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s/indptr decreases at position %lld; the file is corrupt",
                               b->path, b->loc, (long long)i + 1);
    if (!rc && !b->gene_ids) { /* no ids: the names stand in, as nbs_io_read does */
        if (!(b->gene_ids = nbs_calloc((size_t)(b->n_genes + 1), sizeof *b->gene_ids, err))) rc = NBS_ERR_NOMEM;
        for (int64_t g = 0; !rc && g < b->n_genes; g++)
            if (!(b->gene_ids[g] = nbs_strdup(b->gene_names[g], err))) rc = NBS_ERR_NOMEM;
    }
    if (!rc) {
        const int64_t changed = nbs_matrix_make_names_unique(b->gene_names, b->n_genes, err);
        if (changed < 0) rc = err->code;
        else if (changed > 0)
            nbs_warn("%s: %lld duplicate gene names made unique (X, X-1, X-2, ...)", b->path, (long long)changed);
    }
    return rc;
}

/* input.samples: the genes of the files matched as nbs_samples_concat matches them (each file's
 * map to the input genes, file->to), logged as nbs_samples_read logs them. */
static int match_files(nbs_backed *b, nbs_join join, nbs_error *err) {
    const int n = b->n_files;
    nbs_sample_genes parts[NBS_MAX_SAMPLES] = {{0}};
    const char *names[NBS_MAX_SAMPLES] = {0}, *paths[NBS_MAX_SAMPLES] = {0};
    int64_t *maps[NBS_MAX_SAMPLES] = {0}, lacked[NBS_MAX_SAMPLES], dropped = 0, G = 0;
    char **ids = NULL, **gnames = NULL; /* (G) into the files' strings */
    for (int i = 0; i < n && i < NBS_MAX_SAMPLES; i++) {
        const backed_file *f = &b->file[i];
        parts[i] = (nbs_sample_genes){f->n_cells, f->n_genes, f->gene_ids, f->gene_names};
        names[i] = f->sample;
        paths[i] = f->path;
    }
    int st = nbs_samples_match_genes(parts, names, paths, n, join, maps, &G, &ids, &gnames, lacked, &dropped, err);
    if (st) return st;
    for (int i = 0; i < n; i++) b->file[i].to = maps[i];
    b->n_genes = G;
    if (!(b->gene_names = nbs_calloc((size_t)G + 1, sizeof *b->gene_names, err)) ||
        !(b->gene_ids = nbs_calloc((size_t)G + 1, sizeof *b->gene_ids, err)))
        st = NBS_ERR_NOMEM;
    for (int64_t g = 0; !st && g < G; g++)
        if (!(b->gene_names[g] = nbs_strdup(gnames[g], err)) || !(b->gene_ids[g] = nbs_strdup(ids[g], err)))
            st = NBS_ERR_NOMEM;
    free(ids);
    free(gnames);
    if (!st) nbs_samples_log_genes(names, n, join, lacked, G, dropped);
    return st;
}

int nbs_backed_open(const nbs_input_config *in, nbs_format format, nbs_backed **out, nbs_error *err) {
    *out = NULL;
    const int n = in->samples.n ? in->samples.n : 1;
    nbs_backed *b = nbs_calloc(1, sizeof *b, err);
    if (!b) return err->code;
    b->non_integer = in->non_integer;
    nbs_input_config *one = in->samples.n ? nbs_malloc(sizeof *one, err) : NULL; /* a sample's input section */
    int rc = (!in->samples.n || one) && (b->file = nbs_calloc((size_t)n, sizeof *b->file, err)) ? NBS_OK : NBS_ERR_NOMEM;
    for (int i = 0; !rc && i < n; i++) {
        backed_file *f = &b->file[i];
        const nbs_input_config *fi;
        nbs_format ff;
        f->f = f->g = f->d_idx = f->d_data = f->names_loc = -1;
        b->n_files = i + 1;
        if ((rc = file_input(in, format, i, one, &fi, &ff, err))) break;
        if (in->samples.n && !readable(ff)) {
            rc = nbs_error_set(err, NBS_ERR_INPUT, "input.samples '%s' (%s) is %s; out-of-core reading (input.backed) "
                               "takes .h5ad and 10x .h5 files: set input.backed: false, or convert it to .h5ad",
                               in->samples.items[i].name, fi->path, nbs_enum_word_of(nbs_format_words, ff));
            break;
        }
        if ((rc = open_one(f, fi, ff, err))) {
            if (in->samples.n) nbs_error_prefix(err, "input.samples '%s': ", in->samples.items[i].name);
            break;
        }
        /* the file's rows after the ones before: its indptr into the input's */
        int64_t *p = realloc(b->indptr, sizeof *p * (size_t)(b->n_cells + f->n_cells + 1));
        if (!p) {
            rc = nbs_error_set(err, NBS_ERR_NOMEM, "out of memory opening %s", f->path);
            break;
        }
        b->indptr = p;
        f->row0 = b->n_cells, f->nnz0 = b->nnz;
        for (int64_t r = 0; r <= f->n_cells; r++) b->indptr[f->row0 + r] = f->nnz0 + f->indptr[r];
        free(f->indptr);
        f->indptr = NULL;
        b->n_cells += f->n_cells, b->nnz += f->nnz;
        if (in->samples.n) {
            snprintf(f->sample, sizeof f->sample, "%s", in->samples.items[i].name);
            nbs_info("sample '%s' (%s, %s): %lld cells x %lld genes, read out of core", f->sample, f->path,
                     nbs_format_name(ff), (long long)f->n_cells, (long long)f->n_genes);
        }
    }
    free(one);
    if (!rc && in->samples.n) rc = match_files(b, in->join, err);
    else if (!rc) {
        b->n_genes = b->file[0].n_genes;
        b->gene_names = b->file[0].gene_names;
        b->gene_ids = b->file[0].gene_ids;
    }
    if (rc) {
        nbs_backed_close(b);
        return rc;
    }
    *out = b;
    return NBS_OK;
}

int64_t nbs_backed_n_cells(const nbs_backed *b) { return b->n_cells; }
int64_t nbs_backed_n_genes(const nbs_backed *b) { return b->n_genes; }
int64_t nbs_backed_nnz(const nbs_backed *b) { return b->nnz; }
int nbs_backed_file_of_row(const nbs_backed *b, int64_t r) { return (int)(file_of(b, r) - b->file); }
char *const *nbs_backed_gene_names(const nbs_backed *b) { return b->gene_names; }
char *const *nbs_backed_gene_ids(const nbs_backed *b) { return b->gene_ids; }

/* ---- reading rows ---- */

static int read_range(hid_t d, hid_t memtype, int64_t off, int64_t n, void *buf) {
    if (n == 0) return 0;
    hid_t fs = H5Dget_space(d);
    hsize_t start = (hsize_t)off, count = (hsize_t)n;
    hid_t ms = H5Screate_simple(1, &count, NULL);
    int ok = fs >= 0 && ms >= 0 && H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, NULL, &count, NULL) >= 0 &&
             H5Dread(d, memtype, ms, fs, H5P_DEFAULT, buf) >= 0;
    if (ms >= 0) H5Sclose(ms);
    if (fs >= 0) H5Sclose(fs);
    return ok ? 0 : -1;
}

static void sort_row(int32_t *idx, float *val, int64_t n) { /* insertion sort: rows come nearly sorted */
    for (int64_t i = 1; i < n; i++) {
        const int32_t j = idx[i];
        const float v = val[i];
        int64_t k = i;
        for (; k > 0 && idx[k - 1] > j; k--) idx[k] = idx[k - 1], val[k] = val[k - 1];
        idx[k] = j, val[k] = v;
    }
}

/* The file holding row r of the input. */
static backed_file *file_of(const nbs_backed *b, int64_t r) {
    int lo = 0, hi = b->n_files - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (b->file[mid].row0 <= r) lo = mid;
        else hi = mid - 1;
    }
    return &b->file[lo];
}

/* Rows [r0, r1) of the input (across files) into the block (input genes, sorted within each row),
 * validated; messages name the file and its own row and gene. */
static int read_rows(nbs_backed *b, int64_t r0, int64_t r1, nbs_error *err) {
    const int64_t rows = r1 - r0, k0 = b->indptr[r0], len = b->indptr[r1] - k0;
    if (rows + 1 > b->blk_rows_cap) {
        int64_t *p = realloc(b->blk_indptr, sizeof *p * (size_t)(rows + 1));
        if (!p) return nbs_error_set(err, NBS_ERR_NOMEM, "out of memory reading %s", file_of(b, r0)->path);
        b->blk_indptr = p, b->blk_rows_cap = rows + 1;
    }
    if (len > b->blk_cap) {
        int32_t *i = realloc(b->blk_idx, sizeof *i * (size_t)len);
        if (i) b->blk_idx = i;
        float *v = i ? realloc(b->blk_data, sizeof *v * (size_t)len) : NULL;
        if (v) b->blk_data = v;
        if (!i || !v) return nbs_error_set(err, NBS_ERR_NOMEM, "out of memory reading %s", file_of(b, r0)->path);
        b->blk_cap = len;
    }
    b->rows_read += rows;
    /* each file's part of the rows, one read of its indices and of its data */
    for (int64_t r = r0; r < r1;) {
        const backed_file *f = file_of(b, r);
        const int64_t e = f->row0 + f->n_cells < r1 ? f->row0 + f->n_cells : r1;
        const int64_t at = b->indptr[r] - k0, n = b->indptr[e] - b->indptr[r];
        if (read_range(f->d_idx, H5T_NATIVE_INT32, b->indptr[r] - f->nnz0, n, b->blk_idx + at) ||
            read_range(f->d_data, H5T_NATIVE_FLOAT, b->indptr[r] - f->nnz0, n, b->blk_data + at))
            return nbs_error_set(err, NBS_ERR_INPUT, "%s: cannot read the entries of cells %lld to %lld of /%s (corrupt "
                                 "or truncated file?)", f->path, (long long)(r - f->row0) + 1,
                                 (long long)(e - f->row0), f->loc);
        r = e;
    }
    int64_t w = 0;
    b->blk_indptr[0] = 0;
    const backed_file *f = file_of(b, r0);
    for (int64_t r = 0; r < rows; r++) {
        if (r0 + r >= f->row0 + f->n_cells) f = file_of(b, r0 + r);
        const int64_t start = w, cell = r0 + r - f->row0 + 1; /* the file's own row, for messages */
        int sorted = 1;
        for (int64_t k = b->indptr[r0 + r] - k0; k < b->indptr[r0 + r + 1] - k0; k++) {
            const int32_t j = b->blk_idx[k];
            float x = b->blk_data[k];
            if (j < 0 || j >= f->n_file_genes)
                return nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s/indices: cell %lld has gene index %d, outside 0..%lld",
                                     f->path, f->loc, (long long)cell, j, (long long)f->n_file_genes - 1);
            const int64_t fg = f->gene_of ? f->gene_of[j] : j; /* the file's gene */
            if (fg < 0) continue;
            if (!isfinite(x) || x < 0)
                return nbs_error_set(err, NBS_ERR_INPUT, "%s: %s value %g at cell %lld, gene %lld (%s) of /%s; counts must "
                                     "be finite and non-negative (give raw counts, e.g. input.layer: counts)", f->path,
                                     x < 0 ? "negative" : "non-finite", x, (long long)cell, (long long)fg + 1,
                                     f->gene_names[fg], f->loc);
            if (x != floorf(x)) {
                if (b->non_integer == NBS_NONINT_ERROR)
                    return nbs_error_set(err, NBS_ERR_INPUT, "%s: non-integer value %g at cell %lld, gene %lld (%s) of /%s; "
                                         "nbsphere models raw counts — give raw counts, or set input.non_integer to "
                                         "'round' or 'accept'", f->path, x, (long long)cell, (long long)fg + 1,
                                         f->gene_names[fg], f->loc);
                if (b->non_integer == NBS_NONINT_ROUND) x = roundf(x);
            }
            const int64_t g = f->to ? f->to[fg] : fg; /* the input's gene; -1: not in every sample */
            if (g < 0) continue;
            if (w > start && b->blk_idx[w - 1] >= g) sorted = 0;
            b->blk_idx[w] = (int32_t)g; /* w <= k: compacting in place */
            b->blk_data[w++] = x;
        }
        if (!sorted) {
            sort_row(b->blk_idx + start, b->blk_data + start, w - start);
            for (int64_t k = start + 1; k < w; k++)
                if (b->blk_idx[k] == b->blk_idx[k - 1])
                    return nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s: cell %lld stores gene '%s' twice", f->path, f->loc,
                                         (long long)cell, b->gene_names[b->blk_idx[k]]);
        }
        b->blk_indptr[r + 1] = w;
    }
    return NBS_OK;
}

static int scan_rows(void *user, nbs_rows_visit visit, void *ctx, nbs_error *err) {
    nbs_backed *b = user;
    const int64_t end = b->ranged ? b->scan1 : b->n_cells;
    for (int64_t r0 = b->ranged ? b->scan0 : 0; r0 < end;) {
        int64_t r1 = r0 + 1;
        while (r1 < end && b->indptr[r1 + 1] - b->indptr[r0] <= NBS_BACKED_SCAN_NNZ) r1++;
        int st = read_rows(b, r0, r1, err);
        const nbs_matrix view = {.n_cells = r1 - r0, .n_genes = b->n_genes, .nnz = b->blk_indptr[r1 - r0],
                                 .indptr = b->blk_indptr, .indices = b->blk_idx, .data = b->blk_data};
        if (!st) st = visit(ctx, &view, r0, err);
        if (st) return st;
        r0 = r1;
    }
    return NBS_OK;
}

nbs_row_source nbs_backed_rows(nbs_backed *b) {
    return (nbs_row_source){b, b->n_cells, b->n_genes, scan_rows};
}

nbs_row_source nbs_backed_rows_range(nbs_backed *b, int64_t row0, int64_t row1) {
    b->ranged = 1;
    b->scan0 = row0 < 0 ? 0 : row0 > b->n_cells ? b->n_cells : row0;
    b->scan1 = row1 < b->scan0 ? b->scan0 : row1 > b->n_cells ? b->n_cells : row1;
    return nbs_backed_rows(b);
}

int64_t nbs_backed_rows_read(const nbs_backed *b) { return b->rows_read; }

/* Cell names of rows [row0, row0 + n) of one file. */
static int file_barcodes(backed_file *b, int64_t row0, int64_t n, char **names, nbs_error *err) {
    hid_t d = H5Dopen2(b->names_loc, b->names_ds, H5P_DEFAULT);
    hid_t ty = d >= 0 ? H5Dget_type(d) : -1, fs = d >= 0 ? H5Dget_space(d) : -1;
    hsize_t dims[1] = {0}, start = (hsize_t)row0, count = (hsize_t)n;
    int rc = NBS_OK;
    if (d < 0 || H5Tget_class(ty) != H5T_STRING || H5Sget_simple_extent_ndims(fs) != 1 ||
        H5Sget_simple_extent_dims(fs, dims, NULL) < 0 || (int64_t)dims[0] != b->n_cells)
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: the cell names (%s) must be %lld strings", b->path, b->names_ds,
                           (long long)b->n_cells);
    hid_t ms = !rc ? H5Screate_simple(1, &count, NULL) : -1;
    if (!rc && H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, NULL, &count, NULL) < 0) rc = NBS_ERR_INPUT;
    hid_t mt = H5Tcopy(H5T_C_S1);
    if (!rc && H5Tis_variable_str(ty) > 0) {
        char **tmp = nbs_calloc((size_t)(n ? n : 1), sizeof *tmp, err);
        H5Tset_cset(mt, H5Tget_cset(ty));
        H5Tset_size(mt, H5T_VARIABLE);
        if (!tmp || H5Dread(d, mt, ms, fs, H5P_DEFAULT, tmp) < 0) rc = tmp ? NBS_ERR_INPUT : NBS_ERR_NOMEM;
        else {
            for (int64_t i = 0; i < n && !rc; i++)
                if (!(names[i] = nbs_strdup(tmp[i] ? tmp[i] : "", err))) rc = NBS_ERR_NOMEM;
            H5Dvlen_reclaim(mt, ms, H5P_DEFAULT, tmp);
        }
        free(tmp);
    } else if (!rc) {
        const size_t w = H5Tget_size(ty);
        char *buf = nbs_malloc((size_t)n * w + 1, err);
        H5Tset_cset(mt, H5Tget_cset(ty));
        H5Tset_size(mt, w);
        H5Tset_strpad(mt, H5T_STR_NULLPAD);
        if (!buf || H5Dread(d, mt, ms, fs, H5P_DEFAULT, buf) < 0) rc = buf ? NBS_ERR_INPUT : NBS_ERR_NOMEM;
        for (int64_t i = 0; i < n && !rc; i++) {
            if (!(names[i] = nbs_malloc(w + 1, err))) rc = NBS_ERR_NOMEM;
            else memcpy(names[i], buf + (size_t)i * w, w), names[i][w] = '\0';
        }
        free(buf);
    }
    if (rc == NBS_ERR_INPUT && !err->msg[0])
        nbs_error_set(err, NBS_ERR_INPUT, "%s: cannot read the names of cells %lld to %lld", b->path,
                      (long long)row0 + 1, (long long)(row0 + n));
    H5Tclose(mt);
    if (ms >= 0) H5Sclose(ms);
    if (fs >= 0) H5Sclose(fs);
    if (ty >= 0) H5Tclose(ty);
    if (d >= 0) H5Dclose(d);
    return rc;
}

int nbs_backed_barcodes(nbs_backed *b, int64_t row0, int64_t n, char **names, nbs_error *err) {
    for (int64_t r = row0; r < row0 + n;) {
        backed_file *f = file_of(b, r);
        const int64_t e = f->row0 + f->n_cells < row0 + n ? f->row0 + f->n_cells : row0 + n;
        int st = file_barcodes(f, r - f->row0, e - r, names + (r - row0), err);
        for (int64_t i = r - row0; !st && f->sample[0] && i < e - row0; i++) { /* "<barcode>-<sample>", as in memory */
            const size_t size = strlen(names[i]) + strlen(f->sample) + 2;
            char *v = realloc(names[i], size);
            if (!v) st = nbs_error_set(err, NBS_ERR_NOMEM, "out of memory reading the cell names of %s", f->path);
            else snprintf(v + strlen(v), size - strlen(v), "-%s", f->sample), names[i] = v;
        }
        if (st) {
            for (int64_t i = 0; i < e - row0; i++) free(names[i]), names[i] = NULL;
            return st;
        }
        r = e;
    }
    return NBS_OK;
}

int nbs_backed_cell_names(nbs_backed *b, const int64_t *rows, int64_t n, nbs_matrix **out, nbs_error *err) {
    enum { CHUNK = 1 << 16 };
    *out = NULL;
    nbs_matrix *m = nbs_matrix_new(n, 0, 0, err);
    char **tmp = m ? nbs_calloc(CHUNK, sizeof *tmp, err) : NULL; /* (CHUNK) the names of a run of file rows */
    int st = tmp ? NBS_OK : NBS_ERR_NOMEM;
    for (int64_t i = 0; !st && i < n;) {
        const int64_t r0 = rows ? rows[i] : i;
        int64_t j = i + 1;
        while (j < n && (rows ? rows[j] : j) < r0 + CHUNK) j++;
        const int64_t len = (rows ? rows[j - 1] : j - 1) + 1 - r0;
        st = nbs_backed_barcodes(b, r0, len, tmp, err);
        for (int64_t t = i; !st && t < j; t++) {
            const int64_t r = (rows ? rows[t] : t) - r0;
            m->barcodes[t] = tmp[r];
            tmp[r] = NULL;
        }
        for (int64_t r = 0; r < len; r++) free(tmp[r]), tmp[r] = NULL;
        i = j;
    }
    free(tmp);
    if (st) {
        nbs_matrix_free(m);
        return st;
    }
    *out = m;
    return NBS_OK;
}

/* ---- the loader ---- */

struct nbs_backed_loader {
    nbs_backed *b;
    const int64_t *cells;    /* (n) file row of each kept cell, ascending */
    const double *library;   /* (n) */
    const int32_t *row_nnz;  /* (n) entries in the chosen genes */
    int64_t n, G;            /* kept cells, chosen genes */
    int64_t *col;            /* (input genes) column among the chosen genes, or -1 */
    int64_t block, k, n_blocks;
    int32_t *slot_of_block;  /* (n_blocks) buffer slot holding the block, or -1 */
    int32_t *group;          /* (n_blocks) scratch of order: the block's group */
    int64_t *perm;           /* (n_blocks) scratch of order: the blocks shuffled */
    int64_t *count;          /* (n_blocks + 1) scratch of order: cells per group */
    int64_t *tmp;            /* (n) scratch of order */
    /* the buffer: slot s holds block block_of_slot[s] as a CSR of its cells (block + 1 offsets) */
    int64_t *block_of_slot;  /* (k) */
    int64_t **s_indptr;      /* (k) x (block + 1) */
    int32_t **s_idx;         /* (k) x cap */
    float **s_data;
    int64_t *s_cap;          /* (k) */
    /* the minibatch handed to training */
    nbs_matrix mb;           /* (batch, G), room for max_nnz entries */
    double *mb_lib;          /* (batch) */
    const nbs_covariate_values *cov; /* (n cells) of the kept cells, or NULL */
    int32_t *mb_codes;       /* (batch, n_categorical) the minibatch's rows of cov */
    float *mb_cont;          /* (batch, n_continuous) */
    int batch;
    int64_t max_nnz;
    /* nbs_backed_loader_share: this process's share of each global batch, and which kept cells
     * of that share the buffer holds */
    int rank, size;          /* size 0: one process, whole blocks */
    uint8_t *loaded;         /* (n) */
};

void nbs_backed_loader_free(nbs_backed_loader *l) {
    if (!l) return;
    for (int64_t s = 0; s < l->k; s++) {
        if (l->s_indptr) free(l->s_indptr[s]);
        if (l->s_idx) free(l->s_idx[s]);
        if (l->s_data) free(l->s_data[s]);
    }
    free(l->s_indptr), free(l->s_idx), free(l->s_data), free(l->s_cap), free(l->block_of_slot);
    free(l->col), free(l->slot_of_block), free(l->group), free(l->perm), free(l->count), free(l->tmp);
    free(l->mb.indptr), free(l->mb.indices), free(l->mb.data), free(l->mb_lib);
    free(l->mb_codes), free(l->mb_cont), free(l->loaded);
    free(l);
}

static int cmp_desc_i32(const void *a, const void *b) {
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x < y) - (x > y);
}

nbs_backed_loader *nbs_backed_loader_new(nbs_backed *b, const nbs_preprocess_result *pre, const int32_t *row_nnz,
                                         int64_t block, int64_t shuffle_blocks, int batch, nbs_error *err) {
    nbs_backed_loader *l = nbs_calloc(1, sizeof *l, err);
    if (!l) return NULL;
    l->b = b;
    l->cells = pre->cells;
    l->library = pre->library_size;
    l->row_nnz = row_nnz;
    l->n = pre->n_cells;
    l->G = pre->n_genes;
    l->block = block < 1 ? 1 : block;
    l->n_blocks = (l->n + l->block - 1) / l->block;
    l->k = shuffle_blocks < 1 ? 1 : shuffle_blocks > l->n_blocks ? l->n_blocks : shuffle_blocks;
    l->batch = batch;
    const size_t nb = (size_t)l->n_blocks + 1, k = (size_t)l->k;
    l->col = nbs_malloc(sizeof *l->col * (size_t)(b->n_genes + 1), err);
    l->slot_of_block = nbs_malloc(sizeof *l->slot_of_block * nb, err);
    l->group = nbs_malloc(sizeof *l->group * nb, err);
    l->perm = nbs_malloc(sizeof *l->perm * nb, err);
    l->count = nbs_malloc(sizeof *l->count * (nb + 1), err);
    l->tmp = nbs_malloc(sizeof *l->tmp * (size_t)(l->n + 1), err);
    l->block_of_slot = nbs_malloc(sizeof *l->block_of_slot * k, err);
    l->s_indptr = nbs_calloc(k, sizeof *l->s_indptr, err);
    l->s_idx = nbs_calloc(k, sizeof *l->s_idx, err);
    l->s_data = nbs_calloc(k, sizeof *l->s_data, err);
    l->s_cap = nbs_calloc(k, sizeof *l->s_cap, err);
    int32_t *sorted = nbs_malloc(sizeof *sorted * (size_t)(l->n + 1), err);
    int ok = l->col && l->slot_of_block && l->group && l->perm && l->count && l->tmp && l->block_of_slot &&
             l->s_indptr && l->s_idx && l->s_data && l->s_cap && sorted;
    for (size_t s = 0; ok && s < k; s++)
        ok = (l->s_indptr[s] = nbs_malloc(sizeof **l->s_indptr * (size_t)(l->block + 1), err)) != NULL;
    if (ok) {
        for (int64_t g = 0; g < b->n_genes; g++) l->col[g] = -1;
        for (int64_t i = 0; i < l->G; i++) l->col[pre->genes[i]] = i;
        for (int64_t j = 0; j < l->n_blocks; j++) l->slot_of_block[j] = -1;
        for (size_t s = 0; s < k; s++) l->block_of_slot[s] = -1;
        /* a minibatch's capacity: the batch longest rows, as nbs_matrix_max_batch_nnz */
        memcpy(sorted, row_nnz, sizeof *sorted * (size_t)l->n);
        qsort(sorted, (size_t)l->n, sizeof *sorted, cmp_desc_i32);
        for (int64_t i = 0; i < l->n && i < batch; i++) l->max_nnz += sorted[i];
        l->mb.n_genes = l->G;
        l->mb.indptr = nbs_malloc(sizeof *l->mb.indptr * (size_t)(batch + 1), err);
        l->mb.indices = nbs_malloc(sizeof *l->mb.indices * (size_t)(l->max_nnz + 1), err);
        l->mb.data = nbs_malloc(sizeof *l->mb.data * (size_t)(l->max_nnz + 1), err);
        l->mb.values_are_integer = 1;
        l->mb_lib = nbs_malloc(sizeof *l->mb_lib * (size_t)(batch + 1), err);
        ok = l->mb.indptr && l->mb.indices && l->mb.data && l->mb_lib;
    }
    free(sorted);
    if (!ok) {
        nbs_backed_loader_free(l);
        return NULL;
    }
    return l;
}

/* Kept cells [c0, c1), or the n_want kept cells want (ascending, one block's), read in one run of
 * file rows, their chosen genes' entries appended to idx/val from indptr[0] on (indptr: n + 1). */
static int load_cells(nbs_backed_loader *l, int64_t c0, int64_t c1, int32_t *idx, float *val, int64_t *indptr,
                      const int64_t *want, int64_t n_want, nbs_error *err) {
    nbs_backed *b = l->b;
    const int64_t r0 = l->cells[want ? want[0] : c0], r1 = l->cells[want ? want[n_want - 1] : c1 - 1] + 1;
    int st = read_rows(b, r0, r1, err);
    if (st) return st;
    const int64_t n = want ? n_want : c1 - c0;
    int64_t w = indptr[0];
    for (int64_t i = 0; i < n; i++) {
        const int64_t r = l->cells[want ? want[i] : c0 + i] - r0;
        for (int64_t k = b->blk_indptr[r]; k < b->blk_indptr[r + 1]; k++) {
            const int64_t j = l->col[b->blk_idx[k]];
            if (j >= 0) idx[w] = (int32_t)j, val[w++] = b->blk_data[k];
        }
        indptr[i + 1] = w;
    }
    return NBS_OK;
}

/* Room for need entries in slot s's arrays. */
static int slot_room(nbs_backed_loader *l, int64_t s, int64_t need, nbs_error *err) {
    if (need <= l->s_cap[s]) return NBS_OK;
    int32_t *i = realloc(l->s_idx[s], sizeof *i * (size_t)need);
    if (i) l->s_idx[s] = i;
    float *v = i ? realloc(l->s_data[s], sizeof *v * (size_t)need) : NULL;
    if (v) l->s_data[s] = v;
    if (!i || !v) return nbs_error_set(err, NBS_ERR_NOMEM, "out of memory for the out-of-core buffer (input.backed_block "
                                       "x input.backed_shuffle_blocks cells): lower them");
    l->s_cap[s] = need;
    return NBS_OK;
}

static int load_block(nbs_backed_loader *l, int64_t blk, int64_t s, nbs_error *err) {
    const int64_t c0 = blk * l->block, c1 = c0 + l->block < l->n ? c0 + l->block : l->n;
    int64_t need = 0;
    for (int64_t c = c0; c < c1; c++) need += l->row_nnz[c];
    int st = slot_room(l, s, need, err);
    if (st) return st;
    l->s_indptr[s][0] = 0;
    st = load_cells(l, c0, c1, l->s_idx[s], l->s_data[s], l->s_indptr[s], NULL, 0, err);
    if (st) return st;
    if (l->block_of_slot[s] >= 0) l->slot_of_block[l->block_of_slot[s]] = -1;
    l->block_of_slot[s] = blk;
    l->slot_of_block[blk] = (int32_t)s;
    return NBS_OK;
}

/* The used blocks claimed in perm[0..used) loaded into slots 0..used-1 by load, in ascending block
 * order so that the file is read forwards. */
static int load_claimed(nbs_backed_loader *l, int64_t used,
                        int (*load)(nbs_backed_loader *, int64_t, int64_t, nbs_error *), nbs_error *err) {
    for (int64_t i = 1; i < used; i++) {
        const int64_t v = l->perm[i];
        int64_t j = i;
        for (; j > 0 && l->perm[j - 1] > v; j--) l->perm[j] = l->perm[j - 1];
        l->perm[j] = v;
    }
    for (int64_t i = 0; i < used; i++) l->slot_of_block[l->perm[i]] = -1;
    for (int64_t i = 0; i < used; i++) {
        int st = load(l, l->perm[i], i, err);
        if (st) return st;
    }
    return NBS_OK;
}

/* The buffer refilled with the blocks of the next k distinct blocks of seq from pos on: the rest
 * of a group of the order (and, at a group's end, the start of the next). */
static int refill(nbs_backed_loader *l, const int64_t *seq, int64_t n_seq, int64_t pos, nbs_error *err) {
    for (int64_t s = 0; s < l->k; s++)
        if (l->block_of_slot[s] >= 0) l->slot_of_block[l->block_of_slot[s]] = -1, l->block_of_slot[s] = -1;
    int64_t used = 0;
    for (int64_t p = pos; p < n_seq && used < l->k; p++) {
        const int64_t blk = seq[p] / l->block;
        if (l->slot_of_block[blk] >= 0) continue;
        l->slot_of_block[blk] = (int32_t)used; /* claimed; loaded below in file order */
        l->perm[used++] = blk;
    }
    return load_claimed(l, used, load_block, err);
}

/* ---- the loader of one process's share (nbs_backed_loader_share) ---- */

int nbs_backed_loader_share(nbs_backed_loader *l, int rank, int size, nbs_error *err) {
    if (size <= 1) return NBS_OK;
    if (!(l->loaded = nbs_calloc((size_t)l->n + 1, 1, err))) return NBS_ERR_NOMEM;
    l->rank = rank;
    l->size = size;
    return NBS_OK;
}

/* Whether position p of a pass over n_seq cells is this process's: train.c's share_of and
 * global_batches (global batches of batch x size cells; a last one with fewer cells than
 * processes is left out). */
static int is_mine(const nbs_backed_loader *l, int64_t n_seq, int64_t p) {
    const int64_t g = (int64_t)l->batch * l->size, off = p / g * g, mb = n_seq - off < g ? n_seq - off : g;
    if (mb < l->size) return 0;
    const int64_t lo = mb * l->rank / l->size, hi = mb * (l->rank + 1) / l->size;
    return p - off >= lo && p - off < hi;
}

/* Block blk into slot s: only its cells marked loaded, each run of consecutive file rows one read;
 * the others as empty rows. */
static int load_block_share(nbs_backed_loader *l, int64_t blk, int64_t s, nbs_error *err) {
    const int64_t c0 = blk * l->block, c1 = c0 + l->block < l->n ? c0 + l->block : l->n;
    int64_t need = 0;
    for (int64_t c = c0; c < c1; c++) need += l->loaded[c] ? l->row_nnz[c] : 0;
    int st = slot_room(l, s, need, err);
    if (st) return st;
    int64_t *ip = l->s_indptr[s]; /* (block + 1) */
    ip[0] = 0;
    for (int64_t c = c0; c < c1;) {
        if (!l->loaded[c]) {
            ip[c - c0 + 1] = ip[c - c0];
            c++;
            continue;
        }
        int64_t e = c + 1;
        while (e < c1 && l->loaded[e] && l->cells[e] == l->cells[e - 1] + 1) e++;
        st = load_cells(l, c, e, l->s_idx[s], l->s_data[s], ip + (c - c0), NULL, 0, err);
        if (st) return st;
        c = e;
    }
    l->block_of_slot[s] = blk;
    l->slot_of_block[blk] = (int32_t)s;
    return NBS_OK;
}

/* refill for one process's share: this process's cells at its positions from pos on, up to the
 * first that would need a (k + 1)-th block, read from at most k blocks in file order. */
static int refill_share(nbs_backed_loader *l, const int64_t *seq, int64_t n_seq, int64_t pos, nbs_error *err) {
    for (int64_t s = 0; s < l->k; s++) {
        const int64_t blk = l->block_of_slot[s];
        if (blk < 0) continue;
        const int64_t c1 = (blk + 1) * l->block < l->n ? (blk + 1) * l->block : l->n;
        for (int64_t c = blk * l->block; c < c1; c++) l->loaded[c] = 0;
        l->slot_of_block[blk] = -1, l->block_of_slot[s] = -1;
    }
    int64_t used = 0;
    for (int64_t p = pos; p < n_seq; p++) {
        if (!is_mine(l, n_seq, p)) continue;
        const int64_t blk = seq[p] / l->block;
        if (l->slot_of_block[blk] < 0) {
            if (used == l->k) break;
            l->slot_of_block[blk] = (int32_t)used; /* claimed; loaded below in file order */
            l->perm[used++] = blk;
        }
        l->loaded[seq[p]] = 1;
    }
    return load_claimed(l, used, load_block_share, err);
}

static int loader_fetch(void *user, const int64_t *seq, int64_t n_seq, int64_t pos, int64_t n, nbs_cells *out,
                        nbs_error *err) {
    nbs_backed_loader *l = user;
    int64_t w = 0;
    l->mb.indptr[0] = 0;
    for (int64_t i = 0; i < n; i++) {
        const int64_t c = seq[pos + i], blk = c / l->block;
        if (l->loaded && !l->loaded[c]) {
            int st = refill_share(l, seq, n_seq, pos + i, err);
            if (st) return st;
        } else if (l->slot_of_block[blk] < 0) {
            int st = refill(l, seq, n_seq, pos + i, err);
            if (st) return st;
        }
        const int64_t s = l->slot_of_block[blk], r = c - blk * l->block;
        const int64_t k0 = l->s_indptr[s][r], len = l->s_indptr[s][r + 1] - k0;
        if (len) { /* a slot whose cells have no counts in the chosen genes has no arrays yet */
            memcpy(l->mb.indices + w, l->s_idx[s] + k0, sizeof *l->mb.indices * (size_t)len);
            memcpy(l->mb.data + w, l->s_data[s] + k0, sizeof *l->mb.data * (size_t)len);
        }
        w += len;
        l->mb.indptr[i + 1] = w;
        l->mb_lib[i] = l->library[c];
        if (!l->cov) continue;
        const int nc = l->cov->n_categorical, nk = l->cov->n_continuous;
        if (nc) memcpy(l->mb_codes + i * nc, l->cov->codes + c * nc, sizeof *l->mb_codes * (size_t)nc);
        if (nk) memcpy(l->mb_cont + i * nk, l->cov->standardised + c * nk, sizeof *l->mb_cont * (size_t)nk);
    }
    l->mb.n_cells = n;
    l->mb.nnz = w;
    *out = (nbs_cells){.X = &l->mb, .rows = NULL, .row0 = 0, .n = n, .library = l->mb_lib};
    if (l->cov) {
        out->covariate_codes = l->cov->n_categorical ? l->mb_codes : NULL;
        out->n_categorical = l->cov->n_categorical;
        out->continuous = l->cov->n_continuous ? l->mb_cont : NULL;
        out->n_continuous = l->cov->n_continuous;
    }
    return NBS_OK;
}

int nbs_backed_loader_covariates(nbs_backed_loader *l, const nbs_covariate_values *v, nbs_error *err) {
    free(l->mb_codes), free(l->mb_cont);
    l->mb_codes = NULL, l->mb_cont = NULL, l->cov = NULL;
    if (!v || (!v->n_categorical && !v->n_continuous)) return NBS_OK;
    if (v->n_cells != l->n)
        return nbs_error_set(err, NBS_ERR_INTERNAL, "covariates of %lld cells for a loader of %lld", (long long)v->n_cells,
                             (long long)l->n);
    l->mb_codes = nbs_malloc(sizeof *l->mb_codes * (size_t)l->batch * (size_t)v->n_categorical + 1, err);
    l->mb_cont = l->mb_codes ? nbs_malloc(sizeof *l->mb_cont * (size_t)l->batch * (size_t)v->n_continuous + 1, err)
                             : NULL;
    if (!l->mb_cont) return NBS_ERR_NOMEM;
    l->cov = v;
    return NBS_OK;
}

static int loader_order(void *user, int64_t *seq, int64_t n, gsl_rng *rng, nbs_error *err) {
    (void)err;
    nbs_backed_loader *l = user;
    const int64_t nb = l->n_blocks, k = l->k, n_groups = (nb + k - 1) / k;
    if (rng && nb > k) { /* one group holding every block needs no block shuffle */
        for (int64_t j = 0; j < nb; j++) l->perm[j] = j;
        gsl_ran_shuffle(rng, l->perm, (size_t)nb, sizeof *l->perm);
        for (int64_t i = 0; i < nb; i++) l->group[l->perm[i]] = (int32_t)(i / k);
    } else {
        for (int64_t j = 0; j < nb; j++) l->group[j] = (int32_t)(j / k);
    }
    /* a stable counting sort by group keeps the split's order within each group */
    memset(l->count, 0, sizeof *l->count * (size_t)(n_groups + 1));
    for (int64_t i = 0; i < n; i++) l->count[l->group[seq[i] / l->block] + 1]++;
    for (int64_t g = 0; g < n_groups; g++) l->count[g + 1] += l->count[g];
    for (int64_t i = 0; i < n; i++) l->tmp[l->count[l->group[seq[i] / l->block]]++] = seq[i];
    memcpy(seq, l->tmp, sizeof *seq * (size_t)n);
    if (rng) /* count[g] now ends group g */
        for (int64_t g = 0, start = 0; g < n_groups; start = l->count[g++])
            gsl_ran_shuffle(rng, seq + start, (size_t)(l->count[g] - start), sizeof *seq);
    return NBS_OK;
}

nbs_batch_source nbs_backed_loader_source(nbs_backed_loader *l) {
    return (nbs_batch_source){loader_order, loader_fetch, l->max_nnz, l};
}

int nbs_backed_loader_read(nbs_backed_loader *l, const int64_t *cells, int64_t n, nbs_matrix **out, double **library,
                           nbs_error *err) {
    *out = NULL;
    *library = NULL;
    int64_t nnz = 0;
    for (int64_t i = 0; i < n; i++) nnz += l->row_nnz[cells[i]];
    nbs_matrix *m = nbs_matrix_new(n, l->G, nnz, err);
    double *lib = m ? nbs_malloc(sizeof *lib * (size_t)(n + 1), err) : NULL;
    int st = lib ? NBS_OK : NBS_ERR_NOMEM;
    if (!st) m->values_are_integer = 1, m->indptr[0] = 0;
    /* the cells a block holds, one read per block */
    for (int64_t i = 0; !st && i < n;) {
        int64_t j = i + 1;
        while (j < n && cells[j] / l->block == cells[i] / l->block) j++;
        st = load_cells(l, 0, 0, m->indices, m->data, m->indptr + i, cells + i, j - i, err);
        for (int64_t t = i; t < j; t++) lib[t] = l->library[cells[t]];
        i = j;
    }
    if (st) {
        nbs_matrix_free(m);
        free(lib);
        return st;
    }
    *out = m;
    *library = lib;
    return NBS_OK;
}
