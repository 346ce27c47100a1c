/* Loom reader (loompy's layout, spec 2 and 3): /matrix holds genes x cells (any numeric type,
 * usually chunked 64 x 64 and gzip'd), /layers/<name> more matrices of that shape, /row_attrs
 * one dataset per gene attribute (Gene, Accession), /col_attrs one per cell (CellID). The
 * matrix is read a block of cells (columns) at a time and each block becomes the CSR rows of
 * its cells, so a large loom is never held dense. */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io_h5_internal.h"
#include "nbsphere/io.h"

/* loompy's names first, then those of scanpy's write_loom and the HCA pipelines */
static const char *const GENE_ATTRS[] = {"Gene", "var_names", "gene_names", NULL};
static const char *const ID_ATTRS[] = {"Accession", "gene_ids", "ensembl_ids", NULL};
static const char *const CELL_ATTRS[] = {"CellID", "obs_names", "cell_names", NULL};

/* Dense values held per block: about 16 MB of floats, or one chunk column when that is more. */
#define BLOCK_VALUES ((hsize_t)1 << 22)

static herr_t list_cb(hid_t g, const char *name, const H5L_info_t *info, void *op) {
    (void)g;
    (void)info;
    char *list = op;
    size_t len = strlen(list);
    snprintf(list + len, 1024 - len, "%s%s", len ? ", " : "", name);
    return 0;
}

/* Members of loc/grp, comma-separated (size 1024), "nothing" when empty or absent; returns
 * 0 then, 1 otherwise. */
static int list_group(hid_t loc, const char *grp, char *list) {
    list[0] = '\0';
    hid_t g = nbs_h5_type(loc, grp) == H5O_TYPE_GROUP ? H5Gopen2(loc, grp, H5P_DEFAULT) : -1;
    hsize_t idx = 0;
    if (g >= 0) {
        H5Literate(g, H5_INDEX_NAME, H5_ITER_NATIVE, &idx, list_cb, list);
        H5Gclose(g);
    }
    if (list[0]) return 1;
    snprintf(list, 1024, "nothing");
    return 0;
}

static const char *find_attr(hid_t g, const char *const *names) {
    for (; *names; names++)
        if (nbs_h5_type(g, *names) == H5O_TYPE_DATASET) return *names;
    return NULL;
}

/* Length of a 1-D dataset, -1 when it is not one. */
static int64_t length_1d(hid_t g, const char *name) {
    hid_t d = H5Dopen2(g, name, H5P_DEFAULT);
    hid_t sp = d >= 0 ? H5Dget_space(d) : -1;
    hsize_t dims[2] = {0, 0};
    int rank = sp >= 0 ? H5Sget_simple_extent_dims(sp, dims, NULL) : -1;
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    return rank == 1 ? (int64_t)dims[0] : -1;
}

/* The dataset to read: /matrix, or /layers/<layer>. */
static int matrix_path(hid_t f, const char *path, const char *layer, char *dpath, size_t n, nbs_error *err) {
    if (!layer || !*layer) {
        snprintf(dpath, n, "matrix");
        return NBS_OK;
    }
    hid_t g = nbs_h5_type(f, "layers") == H5O_TYPE_GROUP ? H5Gopen2(f, "layers", H5P_DEFAULT) : -1;
    int ok = g >= 0 && !strchr(layer, '/') && nbs_h5_type(g, layer) == H5O_TYPE_DATASET;
    if (g >= 0) H5Gclose(g);
    if (!ok) {
        char list[1024];
        list_group(f, "layers", list);
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: no loom layer '%s'; /layers holds %s (input.layer: \"\" for "
                             "/matrix, or one of those)", path, layer, list);
    }
    snprintf(dpath, n, "layers/%s", layer);
    return NBS_OK;
}

/* The genes x cells dataset d into CSR rows of cells (v: C rows, G columns), blocks of whole
 * chunk columns at a time so that each chunk is read and inflated once. */
static int read_blocks(hid_t d, const char *path, const char *dpath, int64_t G, int64_t C, nbs_compressed_view *v,
                       nbs_error *err) {
    hsize_t width = BLOCK_VALUES / (hsize_t)G, chunk[2] = {0, 0};
    if (!width) width = 1;
    hid_t dcpl = H5Dget_create_plist(d);
    /* a chunk column wider than 4 blocks (an odd layout) is left to HDF5's chunk cache */
    if (dcpl >= 0 && H5Pget_layout(dcpl) == H5D_CHUNKED && H5Pget_chunk(dcpl, 2, chunk) == 2 && chunk[1] > 0 &&
        chunk[1] <= 4 * width)
        width = width < chunk[1] ? chunk[1] : width / chunk[1] * chunk[1];
    if (dcpl >= 0) H5Pclose(dcpl);
    if (width > (hsize_t)C) width = (hsize_t)C;
    float *block = nbs_malloc(sizeof *block * (size_t)G * (size_t)width, err);
    int64_t *pos = nbs_malloc(sizeof *pos * (size_t)width, err);
    int64_t *indptr = nbs_calloc((size_t)C + 1, sizeof *indptr, err), nnz = 0, cap = 0;
    int32_t *indices = NULL;
    float *data = NULL;
    int rc = block && pos && indptr ? NBS_OK : NBS_ERR_NOMEM;
    hid_t fs = H5Dget_space(d);
    for (int64_t c0 = 0; !rc && c0 < C; c0 += (int64_t)width) {
        const hsize_t b = (hsize_t)(C - c0) < width ? (hsize_t)(C - c0) : width;
        hsize_t start[2] = {0, (hsize_t)c0}, count[2] = {(hsize_t)G, b};
        hid_t ms = H5Screate_simple(2, count, NULL);
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
        herr_t r = H5Dread(d, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, block);
        H5Sclose(ms);
        if (r < 0) {
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: cannot read cells %lld to %lld of /%s (corrupt or truncated "
                               "file?)", path, (long long)c0 + 1, (long long)(c0 + (int64_t)b), dpath);
            break;
        }
        /* two passes over the block in its own (gene-major) order: count each cell's entries,
         * then place them, genes ascending within each cell */
        memset(pos, 0, sizeof *pos * (size_t)b);
        for (int64_t g = 0; g < G; g++) {
            const float *row = block + (size_t)g * b;
            for (hsize_t j = 0; j < b; j++) pos[j] += row[j] != 0; /* NaN is kept, and refused later */
        }
        int64_t end = nnz;
        for (hsize_t j = 0; j < b; j++) {
            const int64_t k = pos[j];
            pos[j] = end;
            indptr[c0 + (int64_t)j + 1] = end += k;
        }
        if (end > cap) {
            cap = end > 2 * cap ? end : 2 * cap;
            int32_t *ni = realloc(indices, sizeof *ni * (size_t)cap);
            if (ni) indices = ni;
            float *nd = realloc(data, sizeof *nd * (size_t)cap);
            if (nd) data = nd;
            if (!ni || !nd) {
                rc = nbs_error_set(err, NBS_ERR_NOMEM, "%s: out of memory for %lld entries of /%s", path,
                                   (long long)end, dpath);
                break;
            }
        }
        for (int64_t g = 0; g < G; g++) {
            const float *row = block + (size_t)g * b;
            for (hsize_t j = 0; j < b; j++)
                if (row[j] != 0) {
                    const int64_t k = pos[j]++;
                    indices[k] = (int32_t)g;
                    data[k] = row[j];
                }
        }
        nnz = end;
    }
    H5Sclose(fs);
    free(block);
    free(pos);
    if (!rc && nnz > 0 && nnz < cap) { /* give the doubling's slack back */
        int32_t *ni = realloc(indices, sizeof *ni * (size_t)nnz);
        if (ni) indices = ni;
        float *nd = realloc(data, sizeof *nd * (size_t)nnz);
        if (nd) data = nd;
    }
    *v = (nbs_compressed_view){C, G, nnz, indptr, indices, data};
    return rc;
}

int nbs_io_read_loom(const char *path, const char *layer, nbs_matrix **out, nbs_error *err) {
    *out = NULL;
    hid_t f = nbs_h5_open_input(path, err);
    if (f < 0) return err->code;
    nbs_format kind;
    int rc = nbs_h5_kind_of(f, path, &kind, err);
    if (!rc && kind != NBS_FMT_LOOM)
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: this is %s, not a loom file; set input.format to auto or %s", path,
                           kind == NBS_FMT_H5AD ? "an AnnData .h5ad file" : "a 10x HDF5 file", nbs_format_name(kind));
    char dpath[NBS_NAME_MAX + 16], list[1024];
    if (!rc) rc = matrix_path(f, path, layer, dpath, sizeof dpath, err);
    hid_t ra = -1, ca = -1, d = -1;
    for (int i = 0; i < 2 && !rc; i++) {
        const char *grp = i ? "col_attrs" : "row_attrs";
        hid_t g = nbs_h5_type(f, grp) == H5O_TYPE_GROUP ? H5Gopen2(f, grp, H5P_DEFAULT) : -1;
        if (g < 0)
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: a loom file needs a group /%s with the %s names (loompy: "
                               "/%s/%s); this one has none. Was it written by loompy or scanpy's write_loom?",
                               path, grp, i ? "cell" : "gene", grp, i ? "CellID" : "Gene");
        *(i ? &ca : &ra) = g;
    }
    const char *gene = rc ? NULL : find_attr(ra, GENE_ATTRS), *cell = rc ? NULL : find_attr(ca, CELL_ATTRS);
    if (!rc && (!gene || !cell)) {
        list_group(f, gene ? "col_attrs" : "row_attrs", list);
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: no %s names: /%s holds %s; expected a string dataset %s (or %s)",
                           path, gene ? "cell" : "gene", gene ? "col_attrs" : "row_attrs", list,
                           gene ? "CellID" : "Gene", gene ? "obs_names, cell_names" : "var_names, gene_names");
    }
    hsize_t dims[2] = {0, 0};
    if (!rc) {
        d = H5Dopen2(f, dpath, H5P_DEFAULT);
        hid_t sp = d >= 0 ? H5Dget_space(d) : -1, ty = d >= 0 ? H5Dget_type(d) : -1;
        int rank = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
        H5T_class_t cls = ty >= 0 ? H5Tget_class(ty) : H5T_NO_CLASS;
        if (rank == 2) H5Sget_simple_extent_dims(sp, dims, NULL);
        if (sp >= 0) H5Sclose(sp);
        if (ty >= 0) H5Tclose(ty);
        if (rank != 2 || (cls != H5T_INTEGER && cls != H5T_FLOAT))
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: dataset /%s must be a 2-D numeric array (genes x cells), "
                               "found rank %d%s", path, dpath, rank, cls == H5T_STRING ? " of strings" : "");
        else rc = nbs_h5_check_filters(d, path, dpath, err);
    }
    const int64_t G = (int64_t)dims[0], C = (int64_t)dims[1];
    if (!rc) { /* the names' lengths are checked before anything of the matrix's size is allocated */
        int64_t ng = length_1d(ra, gene), nc = length_1d(ca, cell);
        if (ng < 0 || nc < 0)
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s/%s must be a 1-D array of names", path,
                               ng < 0 ? "row_attrs" : "col_attrs", ng < 0 ? gene : cell);
        else if (ng != G || nc != C)
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s is %lld x %lld, but /row_attrs/%s has %lld entries and "
                               "/col_attrs/%s %lld; a loom's matrix has one row per gene and one column per cell%s",
                               path, dpath, (long long)G, (long long)C, gene, (long long)ng, cell, (long long)nc,
                               ng == C && nc == G ? " (this one looks transposed: cells x genes)" : "");
        else if (G == 0 || C == 0)
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s is %lld x %lld; expected at least one gene and one cell",
                               path, dpath, (long long)G, (long long)C);
        else if (G > INT32_MAX)
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: /%s has %lld genes; at most %d are supported", path, dpath,
                               (long long)G, INT32_MAX);
    }
    nbs_matrix *m = NULL;
    if (!rc) {
        nbs_compressed_view v;
        rc = read_blocks(d, path, dpath, G, C, &v, err);
        char what[NBS_PATH_MAX + 64];
        snprintf(what, sizeof what, "%s (/%s)", path, dpath);
        if (!rc && !(m = nbs_matrix_take_compressed(&v, 1, what, err))) rc = err->code;
        free(v.indptr); /* cleared when taken */
        free(v.indices);
        free(v.data);
    }
    if (!rc) rc = nbs_h5_read_strings(ra, gene, path, "/row_attrs", m->gene_names, G, err);
    if (!rc) rc = nbs_h5_read_strings(ca, cell, path, "/col_attrs", m->barcodes, C, err);
    const char *id = rc ? NULL : find_attr(ra, ID_ATTRS);
    if (!rc && id) rc = nbs_h5_read_strings(ra, id, path, "/row_attrs", m->gene_ids, G, err);
    for (int64_t g = 0; !rc && !id && g < G; g++) /* no ids: the names stand in, as in the other readers */
        if (!(m->gene_ids[g] = nbs_strdup(m->gene_names[g], err))) rc = NBS_ERR_NOMEM;
    if (d >= 0) H5Dclose(d);
    if (ra >= 0) H5Gclose(ra);
    if (ca >= 0) H5Gclose(ca);
    H5Fclose(f);
    if (rc) {
        nbs_matrix_free(m);
        return rc;
    }
    *out = m;
    return NBS_OK;
}

void nbs_io_loom_other_matrices(const char *path, const char *layer, char *buf, size_t n) {
    buf[0] = '\0';
    nbs_error quiet = {0};
    hid_t f = nbs_h5_open_input(path, &quiet);
    if (f < 0) return;
    char list[1024], *save = NULL;
    int any = list_group(f, "layers", list);
    size_t used = layer && *layer ? (size_t)snprintf(buf, n, "/matrix") : 0;
    if (any)
        for (char *s = strtok_r(list, ",", &save); s && used < n; s = strtok_r(NULL, ",", &save)) {
            s += *s == ' ';
            if (layer && !strcmp(s, layer)) continue;
            used += (size_t)snprintf(buf + used, n - used, "%slayers/%s", used ? ", " : "", s);
        }
    H5Fclose(f);
}
