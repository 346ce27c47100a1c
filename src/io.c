/* Format detection and the one entry point every caller reads through (nbs_io_read): dispatch
 * to the format's reader, then the checks every reader's output needs. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <zlib.h>

#include "io_h5_internal.h"
#include "io_internal.h"
#include "nbsphere/io.h"
#include "utf8_internal.h"

static int has_suffix(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcasecmp(s + a - b, suf);
}

/* The first line of a (possibly gzip) text file, without its line end; "" if unreadable. */
static void first_line(const char *path, char *buf, int n) {
    buf[0] = '\0';
    gzFile f = gzopen(path, "rb");
    if (!f) return;
    if (!gzgets(f, buf, n)) buf[0] = '\0';
    gzclose(f);
    buf[strcspn(buf, "\r\n")] = '\0';
}

int nbs_io_detect_format(const char *path, nbs_format *out, nbs_error *err) {
    struct stat st;
    if (stat(path, &st) != 0)
        return nbs_error_set(err, NBS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        *out = NBS_FMT_10X_MTX;
        return NBS_OK;
    }
    unsigned char sig[8] = {0}, inner[8] = {0};
    FILE *fp = fopen(path, "rb");
    if (!fp) return nbs_error_set(err, NBS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t got = fread(sig, 1, sizeof sig, fp);
    fclose(fp);
    if (got == 0)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: the file is empty; expected a count matrix", path);
    static const unsigned char HDF5_SIG[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    int gz = nbs_io_is_gzip(path), gz_h5 = 0;
    if (gz) { /* the first bytes inside: a gzip'd 10x .h5 is HDF5 once inflated */
        gzFile g = gzopen(path, "rb");
        gz_h5 = g && gzread(g, inner, sizeof inner) == (int)sizeof inner && !memcmp(inner, HDF5_SIG, 8);
        if (g) gzclose(g);
    }
    if (got == 8 && !memcmp(sig, HDF5_SIG, 8)) return nbs_io_h5_kind(path, out, err);
    if (has_suffix(path, ".h5ad.gz")) {
        if (!gz)
            return nbs_error_set(err, NBS_ERR_INPUT, "%s: named .h5ad.gz but not gzip-compressed; "
                                 "rename it or set input.format", path);
        *out = NBS_FMT_H5AD;
        return NBS_OK;
    }
    /* which HDF5 kind it is needs the groups: inflated once more here, to a temporary file */
    if (gz_h5) return nbs_io_h5_kind(path, out, err);
    if (has_suffix(path, ".h5") || has_suffix(path, ".h5ad") || has_suffix(path, ".hdf5") ||
        has_suffix(path, ".loom") || has_suffix(path, ".h5.gz") || has_suffix(path, ".hdf5.gz") ||
        has_suffix(path, ".loom.gz"))
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: named like an HDF5 file but %s", path,
                             gz ? "what the gzip compression holds does not start with the HDF5 signature "
                                  "(a compressed file of another format?)"
                                : "does not start with the HDF5 signature (truncated download, a Git LFS "
                                  "pointer, or another format?)");
    char line[4096];
    first_line(path, line, sizeof line);
    if (!strncasecmp(line, "%%MatrixMarket", 14) || has_suffix(path, ".mtx") || has_suffix(path, ".mtx.gz")) {
        *out = NBS_FMT_MTX;
        return NBS_OK;
    }
    if (has_suffix(path, ".tsv") || has_suffix(path, ".tsv.gz") || has_suffix(path, ".tab")) {
        *out = NBS_FMT_TSV;
        return NBS_OK;
    }
    if (has_suffix(path, ".csv") || has_suffix(path, ".csv.gz")) {
        *out = NBS_FMT_CSV;
        return NBS_OK;
    }
    /* Any other name (.txt, no extension): the header line's delimiter decides. */
    size_t tabs = 0, commas = 0;
    for (const char *p = line; *p; p++) {
        tabs += *p == '\t';
        commas += *p == ',';
    }
    if (tabs || commas) {
        *out = tabs >= commas ? NBS_FMT_TSV : NBS_FMT_CSV;
        return NBS_OK;
    }
    return nbs_error_set(err, NBS_ERR_INPUT,
                         "%s: cannot tell the format: not a folder, not HDF5, no MatrixMarket banner and "
                         "no tab or comma in the first line; expected a 10x folder, .h5[.gz], .h5ad[.gz], "
                         ".loom, .mtx[.gz], .tsv or .csv, or set input.format", path);
}

/* Length of the valid UTF-8 prefix of s; equals strlen(s) when the whole string is valid. */
static size_t utf8_valid_prefix(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    int n;
    while ((n = nbs_utf8_char_len(p + i))) i += (size_t)n;
    return i;
}

/* Names go into h5ad files and TSV outputs that anndata and pandas read as UTF-8; a name in
 * another encoding (Latin-1 from an old spreadsheet) would make those outputs unreadable. */
static int check_names_utf8(const char *path, char *const *names, int64_t n, const char *what, nbs_error *err) {
    for (int64_t i = 0; names && i < n; i++) {
        if (!names[i]) continue;
        size_t ok = utf8_valid_prefix(names[i]);
        if (names[i][ok])
            return nbs_error_set(err, NBS_ERR_INPUT,
                                 "%s: the name of %s %lld is not valid UTF-8 (byte 0x%02x at position %zu); "
                                 "names must be UTF-8: convert the file, e.g. with iconv -f latin1 -t utf-8",
                                 path, what, (long long)i + 1, (unsigned char)names[i][ok], ok + 1);
    }
    return NBS_OK;
}

/* The types of a 10x folder's features: the third column of features.tsv[.gz] (Cell Ranger >= 3;
 * genes.tsv has two), into *types (n malloc'd strings), or NULL when there is no such column.
 * The folder reader has already checked the file's line count against the matrix. */
static int mtx_dir_feature_types(const char *dir, int64_t n, char ***types, nbs_error *err) {
    *types = NULL;
    char path[NBS_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/features.tsv.gz", dir);
    gzFile f = gzopen(path, "rb");
    if (!f) {
        snprintf(path, sizeof path, "%s/features.tsv", dir);
        if (!(f = gzopen(path, "rb"))) return NBS_OK; /* genes.tsv: genes only */
    }
    char *line = nbs_malloc(1 << 16, err);
    int rc = line ? NBS_OK : NBS_ERR_NOMEM;
    for (int64_t i = 0; !rc && i < n && gzgets(f, line, 1 << 16); i++) {
        line[strcspn(line, "\r\n")] = '\0';
        char *t = strchr(line, '\t');
        t = t ? strchr(t + 1, '\t') : NULL;
        if (!t) {
            if (i == 0) break; /* two columns: ids and names of genes */
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:%lld: no third column (feature type), which the lines "
                               "before have; is the file cut or edited?", path, (long long)i + 1);
        } else if (!*types && !(*types = nbs_calloc((size_t)n, sizeof **types, err))) {
            rc = NBS_ERR_NOMEM;
        } else {
            t++;
            t[strcspn(t, "\t")] = '\0'; /* a fourth column (genome, some tools) is not the type */
            if (!((*types)[i] = nbs_strdup(t, err))) rc = NBS_ERR_NOMEM;
        }
    }
    free(line);
    gzclose(f);
    if (rc && *types) {
        nbs_io_free_labels(*types, n);
        *types = NULL;
    }
    return rc;
}

/* 1 when `type` is in the comma-separated list `wanted` (case and surrounding spaces ignored). */
static int type_wanted(const char *wanted, const char *type) {
    size_t tl = strlen(type);
    for (const char *p = wanted; *p;) {
        p += strspn(p, " \t");
        size_t len = strcspn(p, ",");
        size_t end = len;
        while (end && (p[end - 1] == ' ' || p[end - 1] == '\t')) end--;
        if (end == tl && !strncasecmp(p, type, tl)) return 1;
        p += len + (p[len] == ',');
    }
    return 0;
}

#define MAX_TYPES 32 /* distinct types counted by name; more are lumped as "other" */

/* Keeps the features whose type input.feature_types asks for (types: one per gene, taken and
 * freed; NULL = the file has no types and everything is kept). The log says what was dropped,
 * a file with none of the wanted types is an error listing the types it has. */
static int select_feature_types(const char *path, nbs_matrix *m, char **types, const char *wanted, nbs_error *err) {
    if (!types) return NBS_OK;
    if (!*wanted) wanted = "Gene Expression";
    const int all = type_wanted(wanted, "all");
    const int64_t n = m->n_genes;
    const char *name[MAX_TYPES + 1];
    int64_t count[MAX_TYPES + 1] = {0}, drop[MAX_TYPES + 1] = {0};
    int n_types = 0;
    int64_t *keep = nbs_malloc(sizeof *keep * (size_t)(n ? n : 1), err), n_keep = 0;
    if (!keep) {
        nbs_io_free_labels(types, n);
        return NBS_ERR_NOMEM;
    }
    for (int64_t g = 0; g < n; g++) {
        const char *t = types[g];
        int k = 0;
        while (k < n_types && strcmp(name[k], t)) k++;
        if (k == n_types && n_types < MAX_TYPES) name[n_types++] = t;
        else if (k == n_types) name[k = MAX_TYPES] = "(other types)";
        count[k]++;
        if (all || type_wanted(wanted, t)) keep[n_keep++] = g;
        else drop[k]++;
    }
    int slots = n_types + (count[MAX_TYPES] > 0);
    char have[1024] = "", dropped[1024] = "";
    size_t hl = 0, dl = 0;
    for (int j = 0; j < slots; j++) {
        int k = j < n_types ? j : MAX_TYPES;
        const char *label = *name[k] ? name[k] : "(empty type)";
        if (hl < sizeof have)
            hl += (size_t)snprintf(have + hl, sizeof have - hl, "%s%lld %s", hl ? ", " : "", (long long)count[k], label);
        if (drop[k] && dl < sizeof dropped)
            dl += (size_t)snprintf(dropped + dl, sizeof dropped - dl, "%s%lld %s", dl ? ", " : "", (long long)drop[k], label);
    }
    int rc = NBS_OK;
    if (n_keep == 0) {
        rc = nbs_error_set(err, NBS_ERR_INPUT,
                           "%s: no features of the type%s input.feature_types asks for (%s); the file has %s. "
                           "Set input.feature_types to the types to read (e.g. --set input.feature_types=all)",
                           path, strchr(wanted, ',') ? "s" : "", wanted, have);
    } else if (n_keep < n) {
        nbs_info("%s: kept %lld features of type %s; dropped %s (input.feature_types; set it to all to keep every type)", path,
                 (long long)n_keep, wanted, dropped);
        rc = nbs_matrix_subset_inplace(m, NULL, 0, keep, n_keep, err);
    } else if (slots > 1) {
        nbs_info("%s: kept all %lld features: %s", path, (long long)n, have);
    }
    free(keep);
    nbs_io_free_labels(types, n);
    return rc;
}

int nbs_io_read(const nbs_input_config *in, nbs_matrix **out, nbs_error *err) {
    nbs_format f = in->format;
    *out = NULL;
    int rc = f == NBS_FMT_AUTO ? nbs_io_detect_format(in->path, &f, err) : NBS_OK;
    if (rc) return rc;
    char **types = NULL; /* 10x feature types, one per gene */
    switch (f) {
    case NBS_FMT_10X_H5: rc = nbs_io_read_10x_h5_types(in->path, in->genome, out, &types, err); break;
    case NBS_FMT_H5AD: rc = nbs_io_read_h5ad(in->path, in->layer, out, err); break;
    case NBS_FMT_10X_MTX:
        rc = nbs_io_read_10x_mtx_dir(in->path, out, err);
        if (!rc && (rc = mtx_dir_feature_types(in->path, (*out)->n_genes, &types, err))) nbs_matrix_free(*out);
        break;
    case NBS_FMT_LOOM: rc = nbs_io_read_loom(in->path, in->layer, out, err); break;
    case NBS_FMT_MTX: rc = nbs_io_read_mtx(in->path, in->orientation, out, err); break;
    case NBS_FMT_TSV: rc = nbs_io_read_table(in->path, '\t', in->orientation, out, err); break;
    case NBS_FMT_CSV: rc = nbs_io_read_table(in->path, ',', in->orientation, out, err); break;
    default:
        return nbs_error_set(err, NBS_ERR_USAGE, "%s: unknown input format %d", in->path, (int)f);
    }
    if (rc) {
        *out = NULL;
        return rc;
    }
    /* before the checks: names and values of dropped features do not matter */
    rc = select_feature_types(in->path, *out, types, in->feature_types, err);
    if (!rc && !(rc = check_names_utf8(in->path, (*out)->barcodes, (*out)->n_cells, "cell", err)) &&
        !(rc = check_names_utf8(in->path, (*out)->gene_names, (*out)->n_genes, "gene", err)))
        rc = check_names_utf8(in->path, (*out)->gene_ids, (*out)->n_genes, "gene id", err);
    if (!rc) rc = nbs_matrix_validate_values(*out, in->non_integer, in->path, err);
    if (rc == NBS_ERR_INPUT && (f == NBS_FMT_H5AD || f == NBS_FMT_LOOM) && err) {
        /* processed files keep log values in X and the counts elsewhere: say where */
        char other[1200];
        if (f == NBS_FMT_H5AD) nbs_io_h5ad_other_matrices(in->path, in->layer, other, sizeof other);
        else nbs_io_loom_other_matrices(in->path, in->layer, other, sizeof other);
        size_t len = strlen(err->msg);
        if (other[0])
            snprintf(err->msg + len, sizeof err->msg - len, ". This file also holds %s: choose one with input.layer "
                     "(a layer name, or %s)", other, f == NBS_FMT_H5AD ? "raw" : "\"\" for /matrix");
    }
    if (!rc) {
        int64_t changed = nbs_matrix_make_names_unique((*out)->gene_names, (*out)->n_genes, err);
        if (changed < 0) rc = err->code;
        else if (changed > 0)
            nbs_warn("%s: %lld duplicate gene names made unique (X, X-1, X-2, ...)", in->path,
                     (long long)changed);
    }
    if (rc) {
        nbs_matrix_free(*out);
        *out = NULL;
    }
    return rc;
}
