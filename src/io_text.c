/* Matrix Market readers: a bare .mtx[.gz] and a 10x folder (matrix.mtx[.gz] with features/genes
 * and barcodes lists). zlib's gz* functions read plain and gzip files alike. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <zlib.h>

#include "io_internal.h"
#include "nbsphere/io.h"

#define LINE_MAX_LEN 65536
/* Empty rows or columns a Matrix Market header may claim beyond its entry count. */
#define NBS_MTX_MAX_EMPTY (1 << 20)

/* Reads one line into buf; returns 0 at end of file, -1 if the line is too long. */
static int read_line(gzFile f, char *buf, int n) {
    if (!gzgets(f, buf, n)) return 0;
    size_t len = strlen(buf);
    if (len == (size_t)n - 1 && buf[len - 1] != '\n' && !gzeof(f)) return -1;
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) buf[--len] = '\0';
    return 1;
}

static int64_t file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (int64_t)st.st_size : -1;
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

typedef struct {
    int64_t n_rows, n_cols, n, cap, declared;
    int32_t *row, *col; /* 0-based */
    float *val;
} mtx_entries;

static void entries_free(mtx_entries *e) {
    free(e->row);
    free(e->col);
    free(e->val);
}

/* Doubles as entries arrive, never past the count the header declares (more is an error). */
static int entries_grow(mtx_entries *e, int64_t want, nbs_error *err) {
    if (want <= e->cap) return NBS_OK;
    int64_t cap = e->cap ? e->cap * 2 : 1024;
    while (cap < want) cap *= 2;
    if (cap > e->declared) cap = e->declared > want ? e->declared : want;
    int32_t *r = realloc(e->row, (size_t)cap * sizeof *r);
    if (r) e->row = r;
    int32_t *c = realloc(e->col, (size_t)cap * sizeof *c);
    if (c) e->col = c;
    float *v = realloc(e->val, (size_t)cap * sizeof *v);
    if (v) e->val = v;
    if (!r || !c || !v) return nbs_error_set(err, NBS_ERR_NOMEM, "out of memory reading entries");
    e->cap = cap;
    return NBS_OK;
}

static int parse_mtx(const char *path, mtx_entries *e, nbs_error *err) {
    if (is_dir(path)) /* gzopen opens a folder, and reading it gives a misleading message */
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: is a folder, expected a Matrix Market file", path);
    gzFile f = gzopen(path, "rb");
    if (!f) return nbs_error_set(err, NBS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *line = malloc(LINE_MAX_LEN);
    int rc = NBS_OK, pattern = 0;
    long lineno = 1;
    if (!line) {
        gzclose(f);
        return nbs_error_set(err, NBS_ERR_NOMEM, "out of memory");
    }
    char field[5][64];
    if (read_line(f, line, LINE_MAX_LEN) != 1 ||
        sscanf(line, "%63s %63s %63s %63s %63s", field[0], field[1], field[2], field[3], field[4]) != 5 ||
        strcasecmp(field[0], "%%MatrixMarket") || strcasecmp(field[1], "matrix") ||
        strcasecmp(field[2], "coordinate")) {
        rc = nbs_error_set(err, NBS_ERR_INPUT,
                           "%s:1: expected a Matrix Market banner '%%%%MatrixMarket matrix "
                           "coordinate integer|real|pattern general'",
                           path);
        goto done;
    }
    pattern = strcasecmp(field[3], "pattern") == 0;
    if (!pattern && strcasecmp(field[3], "integer") && strcasecmp(field[3], "real")) {
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:1: unsupported value type '%s' (expected integer, real or pattern)", path, field[3]);
        goto done;
    }
    if (strcasecmp(field[4], "general")) {
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:1: unsupported symmetry '%s' (expected general)", path, field[4]);
        goto done;
    }
    int got;
    while ((got = read_line(f, line, LINE_MAX_LEN)) == 1 && (lineno++, line[0] == '%' || line[0] == '\0'))
        ;
    long long r, c, nz;
    char extra;
    if (got != 1 || sscanf(line, "%lld %lld %lld %c", &r, &c, &nz, &extra) != 3 || r <= 0 || c <= 0 || nz < 0) {
        rc = nbs_error_set(err, NBS_ERR_INPUT,
                           "%s:%ld: expected the size line 'rows columns entries' with positive numbers",
                           path, lineno);
        goto done;
    }
    /* Each entry takes at least 4 bytes ("1 1\n"); a plain file's size bounds the entry count
     * before anything is allocated. A gzip file is not trusted either: arrays grow as read. */
    int64_t size = file_size(path);
    if (!nbs_io_is_gzip(path) && size >= 0 && nz > size / 4) {
        rc = nbs_error_set(err, NBS_ERR_INPUT,
                           "%s:%ld: the header claims %lld entries but the file has only %lld bytes "
                           "(truncated or corrupt file?)",
                           path, lineno, nz, (long long)size);
        goto done;
    }
    /* Rows and columns cost memory (offsets, names) even when empty, so a header claiming
     * billions of them must be refused before anything is allocated. Real matrices, even
     * Cell Ranger's raw ones with every barcode, hold far more entries than empty rows or
     * columns; a dimension exceeding the entries by more than NBS_MTX_MAX_EMPTY is taken
     * for a corrupt header. Gene indices must also fit the 32-bit column indices. */
    if (r - nz > NBS_MTX_MAX_EMPTY || c - nz > NBS_MTX_MAX_EMPTY || r > INT32_MAX || c > INT32_MAX) {
        rc = nbs_error_set(err, NBS_ERR_INPUT,
                           "%s:%ld: the header claims a %lld x %lld matrix but only %lld entries: more "
                           "than %d empty rows or columns (or a dimension above %d) means a corrupt "
                           "header; check the size line 'rows columns entries'",
                           path, lineno, r, c, nz, NBS_MTX_MAX_EMPTY, INT32_MAX);
        goto done;
    }
    e->n_rows = r;
    e->n_cols = c;
    e->declared = nz;
    while ((got = read_line(f, line, LINE_MAX_LEN)) == 1) {
        lineno++;
        if (line[0] == '\0' || line[0] == '%') continue;
        long long i, j;
        double v = 1;
        int n = pattern ? sscanf(line, "%lld %lld %c", &i, &j, &extra)
                        : sscanf(line, "%lld %lld %lf %c", &i, &j, &v, &extra);
        if (n != (pattern ? 2 : 3)) {
            /* control bytes (binary data) would garble the terminal: show them as '?' */
            for (char *q = line; *q && q - line < 60; q++)
                if ((unsigned char)*q < 0x20 || *q == 0x7f) *q = '?';
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:%ld: expected '%s', found '%.60s'", path, lineno,
                               pattern ? "row column" : "row column value", line);
            goto done;
        }
        if (i < 1 || i > r || j < 1 || j > c) {
            rc = nbs_error_set(err, NBS_ERR_INPUT,
                               "%s:%ld: entry (%lld, %lld) is outside the %lld x %lld matrix of the header",
                               path, lineno, i, j, r, c);
            goto done;
        }
        if (e->n >= e->declared) {
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:%ld: more entries than the %lld the header declares",
                               path, lineno, (long long)e->declared);
            goto done;
        }
        if ((rc = entries_grow(e, e->n + 1, err))) goto done;
        e->row[e->n] = (int32_t)(i - 1);
        e->col[e->n] = (int32_t)(j - 1);
        e->val[e->n++] = (float)v; /* the matrix's own type */
    }
    if (got < 0) {
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:%ld: line too long (binary data?)", path, lineno + 1);
    } else if (e->n != e->declared) {
        int zerr;
        const char *zmsg = gzerror(f, &zerr);
        rc = nbs_error_set(err, NBS_ERR_INPUT,
                           "%s: the header declares %lld entries but the file holds %lld%s%s "
                           "(truncated file?)",
                           path, (long long)e->declared, (long long)e->n, zerr ? ": " : "", zerr ? zmsg : "");
    }
done:
    free(line);
    gzclose(f);
    return rc;
}

int nbs_io_read_mtx(const char *path, nbs_orientation orient, nbs_matrix **out, nbs_error *err) {
    mtx_entries e = {0};
    int rc = parse_mtx(path, &e, err);
    if (rc) {
        entries_free(&e);
        return rc;
    }
    if (orient == NBS_ORIENT_AUTO) {
        nbs_warn("%s: assuming rows are genes and columns are cells (the 10x layout); set "
                 "input.orientation to cells_rows if it is the other way round",
                 path);
        orient = NBS_ORIENT_GENES_ROWS;
    }
    int genes_rows = orient == NBS_ORIENT_GENES_ROWS;
    nbs_matrix *m = nbs_matrix_take_triplets(genes_rows ? e.n_cols : e.n_rows, genes_rows ? e.n_rows : e.n_cols,
                                             e.n, genes_rows ? e.col : e.row, genes_rows ? e.row : e.col,
                                             e.val, path, err);
    if (!m) return err ? err->code : NBS_ERR_INPUT;
    if (nbs_matrix_default_names(&m->barcodes, m->n_cells, "cell", err) ||
        nbs_matrix_default_names(&m->gene_names, m->n_genes, "gene", err) ||
        nbs_matrix_default_names(&m->gene_ids, m->n_genes, "gene", err)) {
        nbs_matrix_free(m);
        return NBS_ERR_NOMEM;
    }
    *out = m;
    return NBS_OK;
}

/* Copies tab-separated field `col` of line (the first field if the line has fewer). */
static char *field_dup(const char *line, int col, nbs_error *err) {
    const char *p = line;
    for (int k = 0; k < col && p; k++) p = strchr(p, '\t') ? strchr(p, '\t') + 1 : NULL;
    if (!p) p = line; /* a one-column file: ids double as names */
    size_t len = strcspn(p, "\t");
    char *out = nbs_malloc(len + 1, err);
    if (out) {
        memcpy(out, p, len);
        out[len] = '\0';
    }
    return out;
}

/* Reads a names file in one pass: field 0 into first[], and field 1 (or 0) into second[] when
 * second is not NULL; exactly `expected` lines. */
static int read_names(const char *path, char **first, char **second, int64_t expected,
                      const char *what, nbs_error *err) {
    if (is_dir(path)) return nbs_error_set(err, NBS_ERR_INPUT, "%s: is a folder, expected a names file", path);
    gzFile f = gzopen(path, "rb");
    if (!f) return nbs_error_set(err, NBS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *line = nbs_malloc(LINE_MAX_LEN, err);
    int64_t n = 0;
    int got = 0, rc = line ? NBS_OK : NBS_ERR_NOMEM;
    while (!rc && (got = read_line(f, line, LINE_MAX_LEN)) == 1) {
        if (n >= expected) {
            rc = nbs_error_set(err, NBS_ERR_INPUT,
                               "%s: more lines than the %lld %s of the matrix; do the names belong to this matrix?",
                               path, (long long)expected, what);
        } else if (!(first[n] = field_dup(line, 0, err)) || (second && !(second[n] = field_dup(line, 1, err)))) {
            rc = NBS_ERR_NOMEM;
        } else {
            n++;
        }
    }
    if (!rc && got < 0) rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:%lld: line too long", path, (long long)n + 1);
    else if (!rc && n != expected)
        rc = nbs_error_set(err, NBS_ERR_INPUT,
                           "%s: %lld names but the matrix has %lld %s; do the files belong together?",
                           path, (long long)n, (long long)expected, what);
    free(line);
    gzclose(f);
    return rc;
}

/* First existing file of dir/<candidates> into out; 0 if none exists. */
static int find_file(const char *dir, const char *const *candidates, char *out) {
    for (; *candidates; candidates++) {
        snprintf(out, NBS_PATH_MAX, "%s/%s", dir, *candidates);
        if (file_size(out) >= 0) return 1;
    }
    return 0;
}

int nbs_io_read_10x_mtx_dir(const char *dir, nbs_matrix **out, nbs_error *err) {
    static const char *const mtx_names[] = {"matrix.mtx.gz", "matrix.mtx", NULL};
    static const char *const gene_names[] = {"features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv", NULL};
    static const char *const bc_names[] = {"barcodes.tsv.gz", "barcodes.tsv", NULL};
    char mtx[NBS_PATH_MAX], genes[NBS_PATH_MAX], bcs[NBS_PATH_MAX];
    if (!find_file(dir, mtx_names, mtx) || !find_file(dir, gene_names, genes) || !find_file(dir, bc_names, bcs))
        return nbs_error_set(err, NBS_ERR_INPUT,
                             "%s: a 10x folder needs matrix.mtx[.gz], features.tsv[.gz] (or genes.tsv) "
                             "and barcodes.tsv[.gz]; at least one is missing",
                             dir);
    nbs_matrix *m = NULL;
    int rc = nbs_io_read_mtx(mtx, NBS_ORIENT_GENES_ROWS, &m, err);
    if (rc) return rc;
    for (int64_t g = 0; g < m->n_genes; g++) {
        free(m->gene_ids[g]);
        free(m->gene_names[g]);
        m->gene_ids[g] = m->gene_names[g] = NULL;
    }
    for (int64_t c = 0; c < m->n_cells; c++) {
        free(m->barcodes[c]);
        m->barcodes[c] = NULL;
    }
    if ((rc = read_names(genes, m->gene_ids, m->gene_names, m->n_genes, "genes (rows)", err)) ||
        (rc = read_names(bcs, m->barcodes, NULL, m->n_cells, "cells (columns)", err))) {
        nbs_matrix_free(m);
        return rc;
    }
    *out = m;
    return NBS_OK;
}
