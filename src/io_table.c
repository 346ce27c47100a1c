/* Delimited text: dense count tables (header row, row names) and per-cell label tables, plain
 * or gzip (zlib's gz* functions read both). Both go through one tokenizer: libcsv in strict
 * mode, so a quoted field may hold the delimiter, doubled quotes ("") and line ends (RFC 4180),
 * after a UTF-8 byte-order mark is dropped. It hands over one record at a time: a table is
 * never held whole as text or fields. */
#include <csv.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#include "io_internal.h"
#include "nbsphere/io.h"

#define CHUNK_BYTES (1 << 16)
/* No name, label or count comes near this: a longer field is a quote that is never closed (or
 * not a table), refused before the rest of the file is buffered into it. */
#define FIELD_MAX_BYTES (1 << 20)

typedef struct {
    const char *path;
    nbs_error *err;
    gzFile f;
    struct csv_parser csv;
    char delim;
    unsigned char *in; /* CHUNK_BYTES read from f; in[pos..len) not parsed yet */
    size_t pos, len;
    int eof;
    char *buf; /* the record: its fields one after another, each NUL-terminated */
    size_t used, cap;
    size_t *off; /* where field i starts in buf */
    int64_t n, off_cap;
    int64_t line;       /* the physical line being parsed, from 1 */
    int64_t rec_line;   /* where the record began */
    int64_t field_line; /* where the field being parsed began */
    int between;        /* no byte of a record since the last one ended */
    int ready;          /* the record is complete */
    int rc;             /* an error met in a callback */
} table_reader;

static const char *field(const table_reader *r, int64_t i) { return r->buf + r->off[i]; }

static const char *delim_name(char delim) { return delim == '\t' ? "tab" : "comma"; }

/* Only LF ends a record, so every record ends a physical line and line numbers stay exact; the
 * CR of a CRLF is then trimmed as the one "space" (from unquoted fields, and allowed after a
 * closing quote). Real spaces and tabs are data, as pandas and R read them. */
static int is_cr(unsigned char c) { return c == '\r'; }
static int is_lf(unsigned char c) { return c == '\n'; }

static void on_field(void *s, size_t len, void *data) {
    table_reader *r = data;
    if (r->rc) return;
    if (memchr(s, '\0', len)) { /* C strings would silently cut the field there */
        r->rc = nbs_error_set(r->err, NBS_ERR_INPUT, "%s:%lld: field %lld holds a NUL byte: not a text table "
                              "(binary data, or UTF-16? save it as UTF-8)", r->path, (long long)r->line,
                              (long long)r->n + 1);
        return;
    }
    if (r->n == r->off_cap) {
        int64_t cap = r->off_cap ? r->off_cap * 2 : 64;
        size_t *o = realloc(r->off, (size_t)cap * sizeof *o);
        if (!o) {
            r->rc = nbs_error_set(r->err, NBS_ERR_NOMEM, "%s:%lld: out of memory", r->path, (long long)r->line);
            return;
        }
        r->off = o;
        r->off_cap = cap;
    }
    if (r->used + len + 1 > r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 4096;
        while (cap < r->used + len + 1) cap *= 2;
        char *b = realloc(r->buf, cap);
        if (!b) {
            r->rc = nbs_error_set(r->err, NBS_ERR_NOMEM, "%s:%lld: out of memory", r->path, (long long)r->line);
            return;
        }
        r->buf = b;
        r->cap = cap;
    }
    memcpy(r->buf + r->used, s, len);
    r->buf[r->used + len] = '\0';
    r->off[r->n++] = r->used;
    r->used += len + 1;
    r->field_line = r->line; /* the next field starts after this delimiter */
}

static void on_record(int c, void *data) {
    (void)c;
    table_reader *r = data;
    r->ready = 1;
    r->between = 1;
}

/* The next chunk of the file; a read error or a gzip stream cut short is an error, not the end. */
static int fill(table_reader *r) {
    int got = gzread(r->f, r->in, CHUNK_BYTES), zerr = Z_OK;
    const char *zmsg = got <= 0 ? gzerror(r->f, &zerr) : "";
    size_t n = strlen(r->path);
    if (!strncmp(zmsg, r->path, n) && !strncmp(zmsg + n, ": ", 2)) zmsg += n + 2; /* zlib names the file too */
    if (zerr == Z_ERRNO) return nbs_error_set(r->err, NBS_ERR_IO, "%s: cannot read: %s", r->path, zmsg);
    if (got < 0 || zerr != Z_OK)
        return nbs_error_set(r->err, NBS_ERR_INPUT, "%s: cannot read past line %lld: %s (truncated or corrupt file?)",
                             r->path, (long long)r->line, zmsg);
    r->pos = 0;
    r->len = (size_t)got;
    r->eof = got == 0;
    return NBS_OK;
}

/* A labels file's delimiter, from its first record outside quotes: a tab, else a comma. With
 * neither, the file is one column, and a tab keeps commas in later lines part of the labels. */
static char sniff_delim(const unsigned char *s, size_t n) {
    int quoted = 0, comma = 0;
    for (size_t i = 0; i < n && (quoted || s[i] != '\n'); i++) {
        if (s[i] == '"') quoted = !quoted;
        else if (!quoted && s[i] == '\t') return '\t';
        else if (!quoted && s[i] == ',') comma = 1;
    }
    return comma ? ',' : '\t';
}

/* Opens path for tok_next with delim, or (delim 0) the one sniff_delim finds. Call tok_close
 * whatever it returns. */
static int tok_open(table_reader *r, const char *path, char delim, nbs_error *err) {
    memset(r, 0, sizeof *r);
    r->path = path;
    r->err = err;
    r->line = r->rec_line = r->field_line = 1;
    r->between = 1;
    csv_init(&r->csv, CSV_STRICT | CSV_STRICT_FINI);
    csv_set_space_func(&r->csv, is_cr);
    csv_set_term_func(&r->csv, is_lf);
    if (!(r->f = gzopen(path, "rb")))
        return nbs_error_set(err, NBS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (!(r->in = nbs_malloc(CHUNK_BYTES, err))) return NBS_ERR_NOMEM;
    int rc = fill(r);
    if (rc) return rc;
    if (r->len >= 3 && !memcmp(r->in, "\xef\xbb\xbf", 3)) r->pos = 3; /* Excel's UTF-8 byte-order mark */
    r->delim = delim ? delim : sniff_delim(r->in + r->pos, r->len - r->pos);
    csv_set_delim(&r->csv, (unsigned char)r->delim);
    return NBS_OK;
}

static void tok_close(table_reader *r) {
    if (r->f) gzclose(r->f);
    csv_free(&r->csv);
    free(r->in);
    free(r->buf);
    free(r->off);
}

static int blank(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != '\r' && s[i] != '\n') return 0;
    return 1;
}

/* The next record: r->n fields (field(r, i)) that began on line r->rec_line; r->n == 0 at the
 * end of the file. Blank lines are skipped. Input goes to libcsv one physical line at a time,
 * so a record (which only ends at a line end) is complete when a line is, and errors know the
 * line they are on. */
static int tok_next(table_reader *r) {
    r->used = 0;
    r->n = 0;
    r->ready = 0;
    while (!r->ready) {
        if (r->pos == r->len) {
            if (r->eof) return NBS_OK;
            int rc = fill(r);
            if (rc) return rc;
            if (r->eof) {
                if (csv_fini(&r->csv, on_field, on_record, r))
                    return nbs_error_set(r->err, NBS_ERR_INPUT, "%s:%lld: field %lld opens a quote here that is never "
                                         "closed; close it, and write a quote inside a quoted field as \"\"",
                                         r->path, (long long)r->field_line, (long long)r->n + 1);
                if (r->rc) return r->rc;
                continue;
            }
        }
        const unsigned char *s = r->in + r->pos, *nl = memchr(s, '\n', r->len - r->pos);
        size_t seg = nl ? (size_t)(nl - s) + 1 : r->len - r->pos;
        if (r->between && !blank(s, seg)) {
            r->between = 0;
            r->rec_line = r->field_line = r->line;
        }
        size_t done = csv_parse(&r->csv, s, seg, on_field, on_record, r);
        if (r->rc) return r->rc;
        if (done < seg && csv_error(&r->csv) == CSV_EPARSE)
            return nbs_error_set(r->err, NBS_ERR_INPUT, "%s:%lld: a misplaced quote in field %lld: a field with "
                                 "quotes in it must be quoted whole (\"...\"), each quote inside written as \"\"",
                                 r->path, (long long)r->line, (long long)r->n + 1);
        if (done < seg)
            return nbs_error_set(r->err, NBS_ERR_NOMEM, "%s:%lld: out of memory reading field %lld", r->path,
                                 (long long)r->line, (long long)r->n + 1);
        r->pos += seg;
        r->line += nl != NULL;
        if (csv_get_buffer_size(&r->csv) > FIELD_MAX_BYTES)
            return nbs_error_set(r->err, NBS_ERR_INPUT, "%s:%lld: field %lld, which starts here, is longer than "
                                 "%d MiB: a quote that is never closed (write a quote inside a quoted field as "
                                 "\"\"), or not a table?", r->path, (long long)r->field_line,
                                 (long long)r->n + 1, FIELD_MAX_BYTES >> 20);
    }
    return NBS_OK;
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
    table_reader r;
    int rc = tok_open(&r, path, delim, err);
    int64_t n_head = 0, n_cols = 0, n_rows = 0, rows_cap = 0;
    char **col_names = NULL, **row_names = NULL;
    triplets t = {0};
    const char *dname = delim_name(delim);
    if (!rc) rc = tok_next(&r);
    if (!rc && !r.n)
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:1: the file is empty; expected a header row of column names", path);
    if (!rc) {
        n_head = r.n;
        if (!(col_names = nbs_calloc((size_t)n_head, sizeof *col_names, err))) rc = NBS_ERR_NOMEM;
        for (int64_t i = 0; i < n_head && !rc; i++)
            if (!(col_names[i] = nbs_strdup(field(&r, i), err))) rc = NBS_ERR_NOMEM;
    }
    /* The header names every column, or (R's write.table) every column but the row names. */
    int corner = -1;
    while (!rc && !(rc = tok_next(&r)) && r.n) {
        int64_t nf = r.n;
        long long lineno = (long long)r.rec_line;
        if (corner < 0) {
            if (nf == n_head) corner = 1;
            else if (nf == n_head + 1) corner = 0;
            else {
                rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:%lld: %lld %s-separated fields, but the header has %lld; "
                                   "expected a row name and one value per column (quote a name that holds a %s)",
                                   path, lineno, (long long)nf, dname, (long long)n_head, dname);
                break;
            }
            n_cols = nf - 1;
            if (n_cols < 1) {
                rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:%lld: only a row name and no values; is the delimiter "
                                   "a %s?", path, lineno, dname);
                break;
            }
        }
        if (nf != n_cols + 1) {
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:%lld: %lld fields, but the rows above have %lld (a row name and "
                               "%lld values); every row needs the same number of fields", path, lineno,
                               (long long)nf, (long long)n_cols + 1, (long long)n_cols);
            break;
        }
        if (n_rows == INT32_MAX) {
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:%lld: more than %d data rows; split the table", path, lineno,
                               INT32_MAX);
            break;
        }
        if (n_rows == rows_cap) {
            rows_cap = rows_cap ? rows_cap * 2 : 1024;
            char **nr = realloc(row_names, (size_t)rows_cap * sizeof *nr);
            if (!nr) {
                rc = nbs_error_set(err, NBS_ERR_NOMEM, "%s:%lld: out of memory", path, lineno);
                break;
            }
            row_names = nr;
        }
        if (!(row_names[n_rows] = nbs_strdup(field(&r, 0), err))) {
            rc = NBS_ERR_NOMEM;
            break;
        }
        n_rows++;
        for (int64_t j = 1; j <= n_cols && !rc; j++) {
            const char *s = field(&r, j);
            char *end;
            errno = 0;
            double v = strtod(s, &end);
            while (*end == ' ') end++;
            if (!s[0] || *end || errno == ERANGE)
                rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:%lld: column %lld ('%s'): '%s' is not a number; a count "
                                   "table holds numbers only, after a header row and a row-name column",
                                   path, lineno, (long long)j + 1, corner ? col_names[j] : col_names[j - 1], s);
            else if (v != 0 && trip_push(&t, n_rows - 1, j - 1, v))
                rc = nbs_error_set(err, NBS_ERR_NOMEM, "%s: out of memory at line %lld", path, lineno);
        }
    }
    if (!rc && n_rows == 0)
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: a header row but no data rows; expected one row per cell or gene", path);
    tok_close(&r);
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

/* A one-column file (scPhere's *_celltype.tsv) names no cells: its records are the labels of the
 * matrix's cells in order, after an optional header; the count must say which. r holds the
 * first record. */
static int labels_in_order(table_reader *r, const nbs_matrix *m, char ***labels, nbs_error *err) {
    int64_t n = 0, cells = m->n_cells;
    char **vals = nbs_calloc((size_t)cells + 2, sizeof *vals, err);
    if (!vals) return NBS_ERR_NOMEM;
    int rc = (vals[n++] = nbs_strdup(field(r, 0), err)) ? NBS_OK : NBS_ERR_NOMEM;
    while (!rc && !(rc = tok_next(r)) && r->n) {
        if (r->n != 1)
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:%lld: %lld %s-separated fields, but the first line has one: "
                               "a file of one column holds one label per line (quote a label that holds a %s)",
                               r->path, (long long)r->rec_line, (long long)r->n, delim_name(r->delim),
                               delim_name(r->delim));
        else if (n < cells + 1 && !(vals[n] = nbs_strdup(field(r, 0), err))) rc = NBS_ERR_NOMEM;
        n++;
    }
    if (!rc && n != cells && n != cells + 1) {
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: one column and no barcodes, so one label per cell in the matrix's "
                           "order is expected: %lld lines (or %lld with a header), found %lld; add a barcode column",
                           r->path, (long long)cells, (long long)cells + 1, (long long)n);
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
    nbs_warn("%s: no barcode column: labels taken in the matrix's cell order", r->path);
    *labels = vals;
    return NBS_OK;
}

int nbs_io_read_labels_table(const char *path, const char *column, const nbs_matrix *m, char ***labels,
                             nbs_error *err) {
    return nbs_io_read_labels_table_cells(path, column, m, NULL, labels, err);
}

int nbs_io_read_labels_table_cells(const char *path, const char *column, const nbs_matrix *m,
                                   const char *every_cell, char ***labels, nbs_error *err) {
    table_reader r;
    char **head = NULL, **names = NULL, **vals = NULL;
    int64_t n_head = 0, n = 0, ncap = 0, bc_col = -1, lab_col = -1, shift = -1, bc_field = 0, lab_field = 0;
    int rc = tok_open(&r, path, 0, err);
    if (!rc) rc = tok_next(&r);
    if (!rc && !r.n) rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:1: empty file; expected a header row", path);
    if (!rc && r.n == 1) {
        rc = labels_in_order(&r, m, labels, err);
        tok_close(&r);
        return rc;
    }
    if (!rc) {
        n_head = r.n;
        if (!(head = nbs_calloc((size_t)n_head, sizeof *head, err))) rc = NBS_ERR_NOMEM;
        for (int64_t i = 0; !rc && i < n_head; i++)
            if (!(head[i] = nbs_strdup(field(&r, i), err))) rc = NBS_ERR_NOMEM;
    }
    for (int64_t i = 0; !rc && i < n_head && bc_col < 0; i++)
        if (is_barcode_name(head[i])) bc_col = i;
    for (int64_t i = 0; !rc && column && *column && i < n_head && lab_col < 0; i++)
        if (!strcmp(head[i], column)) lab_col = i;
    if (!rc && column && *column && lab_col < 0) {
        char list[1024] = "";
        for (int64_t i = 0; i < n_head; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", head[i]);
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:1: no label column '%s' in the header; columns: %s", path, column,
                           list);
    }
    while (!rc && !(rc = tok_next(&r)) && r.n) {
        long long lineno = (long long)r.rec_line;
        if (shift < 0) {
            /* The first row says whether the header names every column, or (R's write.table) every
             * column but the row names; then the barcodes are those unless a column is named so. */
            if (r.n != n_head && r.n != n_head + 1) {
                rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:%lld: %lld %s-separated fields, but the header has %lld; "
                                   "expected one per column (quote a field that holds a %s)", path, lineno,
                                   (long long)r.n, delim_name(r.delim), (long long)n_head, delim_name(r.delim));
                break;
            }
            shift = r.n - n_head;
            if (bc_col < 0 && !shift) bc_col = 0;
            for (int64_t i = 0; lab_col < 0 && i < n_head; i++)
                if (i != bc_col) lab_col = i;
            bc_field = bc_col + shift;
            lab_field = lab_col + shift;
        } else if (r.n != n_head + shift) {
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:%lld: %lld %s-separated fields, but the rows above have %lld; "
                               "every row needs the same number of fields (quote a field that holds a %s)", path,
                               lineno, (long long)r.n, delim_name(r.delim), (long long)(n_head + shift),
                               delim_name(r.delim));
            break;
        }
        if (n == ncap) {
            ncap = ncap ? ncap * 2 : 1024;
            char **a = realloc(names, (size_t)ncap * sizeof *a), **b = a ? realloc(vals, (size_t)ncap * sizeof *b) : NULL;
            if (a) names = a;
            if (b) vals = b;
            if (!a || !b) {
                rc = nbs_error_set(err, NBS_ERR_NOMEM, "%s:%lld: out of memory", path, lineno);
                break;
            }
        }
        const char *v = field(&r, lab_field);
        int missing = !*v || !strcmp(v, "NA"); /* R's missing value */
        names[n] = nbs_strdup(field(&r, bc_field), err);
        vals[n] = missing ? NULL : nbs_strdup(v, err);
        if (!names[n] || (!missing && !vals[n])) rc = NBS_ERR_NOMEM;
        n++;
    }
    tok_close(&r);
    free_strs(head, n_head);
    if (!rc) rc = nbs_io_match_labels(names, vals, n, m, labels, path, every_cell, err);
    free_strs(names, n);
    free_strs(vals, n);
    return rc;
}

/* ---- an embedding table ---- */

/* nbsphere's own extra columns of embedding.tsv: kappa (the sphere) and var1.. (variances) */
static int extra_column(const char *s) {
    if (!strcmp(s, "kappa")) return 1;
    if (strncmp(s, "var", 3) || !s[3]) return 0;
    for (const char *c = s + 3; *c; c++)
        if (*c < '0' || *c > '9') return 0;
    return 1;
}

int nbs_io_read_embedding_table(const char *path, nbs_embedding_table *e, nbs_error *err) {
    table_reader r;
    memset(e, 0, sizeof *e);
    int rc = tok_open(&r, path, 0, err);
    int64_t n_head = 0, cap = 0;
    int *coord = NULL; /* [n_head] column i is a coordinate */
    if (!rc) rc = tok_next(&r);
    if (!rc && !r.n)
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:1: the file is empty; expected a header (barcode, then one "
                           "column per embedding dimension)", path);
    if (!rc && r.n < 2)
        rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:1: one column; expected a barcode column and at least one "
                           "coordinate column (%s-separated)", path, delim_name(r.delim));
    if (!rc && !(coord = nbs_calloc((size_t)r.n, sizeof *coord, err))) rc = NBS_ERR_NOMEM;
    if (!rc) {
        n_head = r.n;
        int skipped = 0;
        for (int64_t i = 1; i < n_head; i++) {
            coord[i] = !extra_column(field(&r, i));
            e->d += coord[i];
            if (!coord[i] && !strcmp(field(&r, i), "kappa")) snprintf(e->metric, sizeof e->metric, "cosine");
            skipped += !coord[i];
        }
        if (!e->d) rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:1: no coordinate column (only kappa/var columns)", path);
        snprintf(e->source, sizeof e->source, "%d columns of %s%s", e->d, path,
                 skipped ? " (its kappa/var columns skipped)" : "");
    }
    while (!rc && !(rc = tok_next(&r)) && r.n) {
        if (r.n != n_head) {
            rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:%lld: %lld fields, but the header has %lld; every row is a "
                               "barcode and the same coordinates", path, (long long)r.rec_line, (long long)r.n,
                               (long long)n_head);
            break;
        }
        if (e->n == cap) {
            cap = cap ? 2 * cap : 1024;
            char **nb = realloc(e->barcodes, (size_t)cap * sizeof *nb);
            if (nb) e->barcodes = nb;
            float *nz = realloc(e->z, (size_t)cap * (size_t)e->d * sizeof *nz);
            if (nz) e->z = nz;
            if (!nb || !nz) {
                rc = nbs_error_set(err, NBS_ERR_NOMEM, "%s:%lld: out of memory", path, (long long)r.rec_line);
                break;
            }
        }
        if (!(e->barcodes[e->n] = nbs_strdup(field(&r, 0), err))) {
            rc = NBS_ERR_NOMEM;
            break;
        }
        float *row = e->z + e->n * e->d;
        e->n++;
        for (int64_t i = 1, j = 0; i < n_head && !rc; i++) {
            if (!coord[i]) continue;
            char *end;
            const char *s = field(&r, i);
            double v = strtod(s, &end);
            if (!*s || *end || !isfinite(v) || fabs(v) > FLT_MAX)
                rc = nbs_error_set(err, NBS_ERR_INPUT, "%s:%lld: column %lld of cell %s is '%s', not a finite number",
                                   path, (long long)r.rec_line, (long long)i + 1, e->barcodes[e->n - 1], s);
            row[j++] = (float)v;
        }
    }
    if (!rc && !e->n) rc = nbs_error_set(err, NBS_ERR_INPUT, "%s: a header but no cells", path);
    tok_close(&r);
    free(coord);
    if (rc) nbs_embedding_table_free(e);
    return rc;
}
