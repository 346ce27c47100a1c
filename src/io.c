/* Format names, format detection and the one entry point every caller reads through
 * (nbs_io_read): dispatch to the format's reader, then the checks every reader's output needs. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <zlib.h>

#include "io_h5_internal.h"
#include "nbsphere/io.h"

static const char *const FORMAT_NAMES[] = {"auto", "10x-h5", "h5ad", "10x-mtx", "mtx", "tsv", "csv"};
#define N_FORMATS ((int)(sizeof FORMAT_NAMES / sizeof FORMAT_NAMES[0]))

const char *nbs_format_name(nbs_format f) {
    return (int)f >= 0 && (int)f < N_FORMATS ? FORMAT_NAMES[f] : "unknown";
}

int nbs_format_parse(const char *name, nbs_format *out) {
    for (int i = 0; i < N_FORMATS; i++)
        if (name && !strcasecmp(name, FORMAT_NAMES[i])) {
            *out = (nbs_format)i;
            return 0;
        }
    return -1;
}

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
    unsigned char sig[8] = {0};
    FILE *fp = fopen(path, "rb");
    if (!fp) return nbs_error_set(err, NBS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t got = fread(sig, 1, sizeof sig, fp);
    fclose(fp);
    if (got == 0)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: the file is empty; expected a count matrix", path);
    static const unsigned char HDF5_SIG[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    int gz = got >= 2 && sig[0] == 0x1f && sig[1] == 0x8b;
    if (got == 8 && !memcmp(sig, HDF5_SIG, 8)) return nbs_io_h5_kind(path, out, err);
    if (has_suffix(path, ".h5ad.gz")) {
        if (!gz)
            return nbs_error_set(err, NBS_ERR_INPUT, "%s: named .h5ad.gz but not gzip-compressed; "
                                 "rename it or set input.format", path);
        *out = NBS_FMT_H5AD;
        return NBS_OK;
    }
    if (has_suffix(path, ".h5") || has_suffix(path, ".h5ad") || has_suffix(path, ".hdf5"))
        return nbs_error_set(err, NBS_ERR_INPUT,
                             "%s: named like an HDF5 file but does not start with the HDF5 signature "
                             "(truncated download, a Git LFS pointer, or another format?)", path);
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
                         "no tab or comma in the first line; expected a 10x folder, .h5, .h5ad[.gz], "
                         ".mtx[.gz], .tsv or .csv, or set input.format", path);
}

int nbs_io_read(const nbs_input_config *in, nbs_matrix **out, nbs_error *err) {
    nbs_format f = in->format;
    *out = NULL;
    int rc = f == NBS_FMT_AUTO ? nbs_io_detect_format(in->path, &f, err) : NBS_OK;
    if (rc) return rc;
    switch (f) {
    case NBS_FMT_10X_H5: rc = nbs_io_read_10x_h5(in->path, in->genome, out, err); break;
    case NBS_FMT_H5AD: rc = nbs_io_read_h5ad(in->path, in->layer, out, err); break;
    case NBS_FMT_10X_MTX: rc = nbs_io_read_10x_mtx_dir(in->path, out, err); break;
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
    rc = nbs_matrix_validate_values(*out, in->non_integer, in->path, err);
    if (rc == NBS_ERR_INPUT && f == NBS_FMT_H5AD && err) {
        /* processed files keep log values in X and the counts elsewhere: say where */
        char other[1200];
        nbs_io_h5ad_other_matrices(in->path, in->layer, other, sizeof other);
        size_t len = strlen(err->msg);
        if (other[0])
            snprintf(err->msg + len, sizeof err->msg - len, ". This file also holds %s: choose one with input.layer "
                     "(a layer name, or raw)", other);
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
