/* Delimited text: dense count tables (header row, row names; plain or gzip through zlib's gz*
 * functions) and per-cell label tables. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#include "io_h5_internal.h"
#include "nbsphere/io.h"

/* One line of any length into *buf (grown as needed), without its line end. Returns 1, 0 at end
 * of file, -1 when out of memory. */
static int getline_gz(gzFile f, char **buf, size_t *cap) {
    size_t len = 0;
    if (!*buf) {
        *cap = 1 << 16;
        if (!(*buf = malloc(*cap))) return -1;
    }
    for (;;) {
        if (!gzgets(f, *buf + len, (int)(*cap - len))) {
            if (len == 0) return 0;
            break;
        }
        len += strlen(*buf + len);
        if (len && (*buf)[len - 1] == '\n') break;
        if (len + 1 < *cap) { /* last line without a line end */
            if (gzeof(f)) break;
            continue;
        }
        char *nb = realloc(*buf, *cap * 2);
        if (!nb) return -1;
        *buf = nb;
        *cap *= 2;
    }
    while (len && ((*buf)[len - 1] == '\n' || (*buf)[len - 1] == '\r')) (*buf)[--len] = '\0';
    return 1;
}

/* Splits line in place at delim; fields[] points into it. Returns the field count (all of them,
 * even past max, which are not stored). Surrounding double quotes (R's write.csv) are removed. */
static int64_t split(char *line, char delim, char **fields, int64_t max) {
    int64_t n = 0;
    char *p = line;
    for (;;) {
        char *end = strchr(p, delim);
        if (end) *end = '\0';
        size_t len = strlen(p);
        if (len >= 2 && p[0] == '"' && p[len - 1] == '"') {
            p[len - 1] = '\0';
            p++;
        }
        if (n < max) fields[n] = p;
        n++;
        if (!end) break;
        p = end + 1;
    }
    return n;
}

static int64_t count_fields(const char *line, char delim) {
    int64_t n = 1;
    for (; *line; line++) n += *line == delim;
    return n;
}

typedef struct {
    int64_t n, cap;
    int32_t *row, *col;
    float *val;
} triplets;

static int trip_push(triplets *t, int64_t r, int64_t c, double v) {
    if (t->n == t->cap) {
        int64_t cap = t->cap ? t->cap * 2 : 1 << 16;
        int32_t *nr = realloc(t->row, (size_t)cap * sizeof *nr);
        if (nr) t->row = nr;
        int32_t *nc = realloc(t->col, (size_t)cap * sizeof *nc);
        if (nc) t->col = nc;
        float *nv = realloc(t->val, (size_t)cap * sizeof *nv);
        if (nv) t->val = nv;
        if (!nr || !nc || !nv) return -1;
        t->cap = cap;
    }
    t->row[t->n] = (int32_t)r;
    t->col[t->n] = (int32_t)c;
    t->val[t->n++] = (float)v;
    return 0;
}

static void free_strs(char **s, int64_t n) {
    if (!s) return;
    for (int64_t i = 0; i < n; i++) free(s[i]);
    free(s);
}

/* Orientation rule for NBS_ORIENT_AUTO (documented in io.h): rows are genes when the table has
 * more data columns than rows — a filtered single-cell table usually has more cells than genes
 * kept — and rows are cells otherwise. A warning says which was assumed. */
int nbs_io_read_table(const char *path, char delim, nbs_orientation orient, nbs_matrix **out, nbs_error *err) {
    gzFile f = gzopen(path, "rb");
    if (!f) return nbs_error_set(err, NBS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    int got = getline_gz(f, &line, &cap);
    int rc = NBS_OK;
    int64_t n_head = 0, n_cols = 0, n_rows = 0, rows_cap = 0, lineno = 1;
    char **col_names = NULL, **row_names = NULL, **fields = NULL;
    triplets t = {0};
    const char *dname = delim == '\t' ? "tab" : "comma";
    if (got < 0) rc = nbs_error_set(err, NBS_ERR_NOMEM, "%s: out of memory reading the header", path);
    else if (got == 0 || !line[0])
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:1: the file is empty; expected a header row of column names", path);
    if (!rc) {
        n_head = count_fields(line, delim);
        if (!(col_names = nbs_calloc((size_t)n_head, sizeof *col_names, err)) ||
            !(fields = nbs_calloc((size_t)n_head + 1, sizeof *fields, err)))
            rc = NBS_ERR_NOMEM;
        else {
            split(line, delim, fields, n_head);
            for (int64_t i = 0; i < n_head && !rc; i++)
                if (!(col_names[i] = nbs_strdup(fields[i], err))) rc = NBS_ERR_NOMEM;
        }
    }
    /* The header names every column, or (R's write.table) every column but the row names. */
    int corner = -1;
    while (!rc && (got = getline_gz(f, &line, &cap)) == 1) {
        lineno++;
        if (!line[0]) continue;
        int64_t nf = count_fields(line, delim);
        if (corner < 0) {
            if (nf == n_head) corner = 1;
            else if (nf == n_head + 1) corner = 0;
            else {
                rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:%lld: %lld %s-separated fields, but the header has %lld; "
                                   "expected a row name and one value per column", path, (long long)lineno,
                                   (long long)nf, dname, (long long)n_head);
                break;
            }
            n_cols = nf - 1;
            if (n_cols < 1) {
                rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:%lld: only a row name and no values; is the delimiter "
                                   "a %s?", path, (long long)lineno, dname);
                break;
            }
            if (!corner) {
                char **nf2 = realloc(fields, (size_t)(n_head + 2) * sizeof *fields);
                if (!nf2) {
                    rc = nbs_error_set(err, NBS_ERR_NOMEM, "out of memory");
                    break;
                }
                fields = nf2;
            }
        }
        if (nf != n_cols + 1) {
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:%lld: %lld fields, but the rows above have %lld (a row name and "
                               "%lld values); every row needs the same number of fields", path, (long long)lineno,
                               (long long)nf, (long long)n_cols + 1, (long long)n_cols);
            break;
        }
        split(line, delim, fields, nf);
        if (n_rows == INT32_MAX) {
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:%lld: more than %d data rows; split the table",
                               path, (long long)lineno, INT32_MAX);
            break;
        }
        if (n_rows == rows_cap) {
            rows_cap = rows_cap ? rows_cap * 2 : 1024;
            char **nr = realloc(row_names, (size_t)rows_cap * sizeof *nr);
            if (!nr) {
                rc = nbs_error_set(err, NBS_ERR_NOMEM, "out of memory");
                break;
            }
            row_names = nr;
        }
        if (!(row_names[n_rows] = nbs_strdup(fields[0], err))) {
            rc = NBS_ERR_NOMEM;
            break;
        }
        n_rows++;
        for (int64_t j = 1; j <= n_cols && !rc; j++) {
            char *end;
            errno = 0;
            double v = strtod(fields[j], &end);
            while (*end == ' ') end++;
            if (!fields[j][0] || *end || errno == ERANGE)
                rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:%lld: column %lld ('%s'): '%s' is not a number; a count "
                                   "table holds numbers only, after a header row and a row-name column",
                                   path, (long long)lineno, (long long)j + 1,
                                   corner ? col_names[j] : col_names[j - 1], fields[j]);
            else if (v != 0 && trip_push(&t, n_rows - 1, j - 1, v))
                rc = nbs_error_set(err, NBS_ERR_NOMEM, "%s: out of memory at line %lld", path, (long long)lineno);
        }
    }
    if (!rc && got < 0) rc = nbs_error_set(err, NBS_ERR_NOMEM, "%s:%lld: out of memory (line too long?)", path, (long long)lineno + 1);
    if (!rc && n_rows == 0)
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: a header row but no data rows; expected one row per cell or gene", path);
    gzclose(f);
    free(line);
    free(fields);
    nbs_matrix *m = NULL;
    if (!rc) {
        if (orient == NBS_ORIENT_AUTO) {
            orient = n_cols > n_rows ? NBS_ORIENT_GENES_ROWS : NBS_ORIENT_CELLS_ROWS;
            nbs_warn("%s: %lld rows x %lld columns: assuming rows are %s (more columns than rows means genes "
                     "in rows); set input.orientation if that is wrong", path, (long long)n_rows,
                     (long long)n_cols, orient == NBS_ORIENT_GENES_ROWS ? "genes" : "cells");
        }
        int gr = orient == NBS_ORIENT_GENES_ROWS;
        m = nbs_matrix_take_triplets(gr ? n_cols : n_rows, gr ? n_rows : n_cols, t.n, gr ? t.col : t.row,
                                     gr ? t.row : t.col, t.val, path, err);
        t.row = t.col = NULL; /* taken */
        t.val = NULL;
        if (!m) rc = err->code;
    }
    for (int64_t i = 0; m && !rc && i < n_cols; i++) {
        char *name = col_names[corner ? i + 1 : i];
        char **dst = orient == NBS_ORIENT_GENES_ROWS ? &m->barcodes[i] : &m->gene_names[i];
        if (!(*dst = nbs_strdup(name, err))) rc = NBS_ERR_NOMEM;
    }
    for (int64_t i = 0; m && !rc && i < n_rows; i++) {
        char **dst = orient == NBS_ORIENT_GENES_ROWS ? &m->gene_names[i] : &m->barcodes[i];
        if (!(*dst = nbs_strdup(row_names[i], err))) rc = NBS_ERR_NOMEM;
    }
    for (int64_t g = 0; m && !rc && g < m->n_genes; g++)
        if (!(m->gene_ids[g] = nbs_strdup(m->gene_names[g], err))) rc = NBS_ERR_NOMEM;
    free_strs(col_names, n_head);
    free_strs(row_names, n_rows);
    free(t.row);
    free(t.col);
    free(t.val);
    if (rc) {
        nbs_matrix_free(m);
        return rc;
    }
    *out = m;
    return NBS_OK;
}

static int is_barcode_name(const char *s) {
    return !strcasecmp(s, "barcode") || !strcasecmp(s, "barcodes") || !strcasecmp(s, "cell") ||
           !strcasecmp(s, "cell_id") || !strcasecmp(s, "cells");
}

/* A one-column file (scPhere's *_celltype.tsv) names no cells: its lines are the labels of the
 * matrix's cells in order, after an optional header line; the line count must say which. */
static int labels_in_order(gzFile f, const char *first, char **line, size_t *cap, const char *path,
                           const nbs_matrix *m, char ***labels, nbs_error *err) {
    int64_t n = 0, cells = m->n_cells;
    char **vals = nbs_calloc((size_t)cells + 2, sizeof *vals, err);
    if (!vals) return NBS_ERR_NOMEM;
    int rc = (vals[n++] = nbs_strdup(first, err)) ? NBS_OK : NBS_ERR_NOMEM, got = 0;
    while (!rc && (got = getline_gz(f, line, cap)) == 1) {
        if (!(*line)[0]) continue;
        if (n < cells + 1 && !(vals[n] = nbs_strdup(*line, err))) rc = NBS_ERR_NOMEM;
        n++;
    }
    if (!rc && got < 0) rc = nbs_error_set(err, NBS_ERR_NOMEM, "%s: out of memory", path);
    if (!rc && n != cells && n != cells + 1) {
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: one column and no barcodes, so one label per cell in the matrix's "
                           "order is expected: %lld lines (or %lld with a header), found %lld; add a barcode column",
                           path, (long long)cells, (long long)cells + 1, (long long)n);
    }
    if (rc) {
        free_strs(vals, cells + 1);
        return rc;
    }
    if (n == cells + 1) { /* the first line was a header */
        free(vals[0]);
        memmove(vals, vals + 1, (size_t)cells * sizeof *vals);
        vals[cells] = NULL;
    }
    nbs_warn("%s: no barcode column: labels taken in the matrix's cell order", path);
    *labels = vals;
    return NBS_OK;
}

int nbs_io_read_labels_table(const char *path, const char *column, const nbs_matrix *m, char ***labels,
                             nbs_error *err) {
    gzFile f = gzopen(path, "rb");
    if (!f) return nbs_error_set(err, NBS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *line = NULL, **head = NULL, **fields = NULL, **names = NULL, **vals = NULL;
    size_t cap = 0;
    int64_t n_head = 0, n = 0, ncap = 0, lineno = 1, bc_col = 0, lab_col = -1;
    int got = getline_gz(f, &line, &cap), rc = NBS_OK;
    char delim = '\t';
    if (got < 0) rc = nbs_error_set(err, NBS_ERR_NOMEM, "out of memory");
    else if (got == 0 || !line[0]) rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:1: empty file; expected a header row", path);
    if (!rc) {
        delim = strchr(line, '\t') ? '\t' : ',';
        n_head = count_fields(line, delim);
        if (!(head = nbs_calloc((size_t)n_head, sizeof *head, err)) ||
            !(fields = nbs_calloc((size_t)n_head + 2, sizeof *fields, err)))
            rc = NBS_ERR_NOMEM;
        else split(line, delim, head, n_head);
        /* head points into line, which the data rows reuse: copy the header first */
        for (int64_t i = 0; !rc && i < n_head; i++)
            if (!(head[i] = nbs_strdup(head[i], err))) rc = NBS_ERR_NOMEM;
    }
    if (!rc && n_head == 1) {
        rc = labels_in_order(f, head[0], &line, &cap, path, m, labels, err);
        gzclose(f);
        free(line);
        free(fields);
        free_strs(head, n_head);
        return rc;
    }
    for (int64_t i = 0; !rc && i < n_head; i++)
        if (is_barcode_name(head[i])) {
            bc_col = i;
            break;
        }
    for (int64_t i = 0; !rc && i < n_head; i++)
        if (column && *column ? !strcmp(head[i], column) : i != bc_col) {
            lab_col = i;
            break;
        }
    if (!rc && lab_col < 0) {
        char list[1024] = "";
        for (int64_t i = 0; i < n_head; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", head[i]);
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:1: no label column '%s' in the header; columns: %s", path,
                           column && *column ? column : "(any besides the barcodes)", list);
    }
    while (!rc && (got = getline_gz(f, &line, &cap)) == 1) {
        lineno++;
        if (!line[0]) continue;
        int64_t nf = count_fields(line, delim);
        /* a header without a name over the row names (R's write.table) */
        int64_t shift = nf == n_head + 1 ? 1 : 0;
        if (nf != n_head && !shift) {
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:%lld: %lld fields, but the header has %lld", path,
                               (long long)lineno, (long long)nf, (long long)n_head);
            break;
        }
        split(line, delim, fields, n_head + 1);
        if (n == ncap) {
            ncap = ncap ? ncap * 2 : 1024;
            char **a = realloc(names, (size_t)ncap * sizeof *a), **b = a ? realloc(vals, (size_t)ncap * sizeof *b) : NULL;
            if (a) names = a;
            if (b) vals = b;
            if (!a || !b) {
                rc = nbs_error_set(err, NBS_ERR_NOMEM, "out of memory");
                break;
            }
        }
        const char *bc = shift ? fields[0] : fields[bc_col], *v = fields[lab_col + shift];
        names[n] = nbs_strdup(bc, err);
        vals[n] = *v && strcmp(v, "NA") ? nbs_strdup(v, err) : NULL; /* R's missing value */
        n++;
        if (!names[n - 1]) rc = NBS_ERR_NOMEM;
    }
    if (!rc && got < 0) rc = nbs_error_set(err, NBS_ERR_NOMEM, "out of memory");
    gzclose(f);
    free(line);
    free(fields);
    free_strs(head, n_head);
    if (!rc) rc = nbs_io_match_labels(names, vals, n, m, labels, path, err);
    free_strs(names, n);
    free_strs(vals, n);
    return rc;
}
