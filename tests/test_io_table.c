/* Dense count tables (TSV/CSV, plain or gzip) and per-cell label tables, both read as RFC 4180
 * (quoted delimiters, "" escapes and line ends; a byte-order mark; CRLF). */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "nbsphere/io.h"

static float entry(const nbs_matrix *m, int64_t c, int64_t g) {
    for (int64_t k = m->indptr[c]; k < m->indptr[c + 1]; k++)
        if (m->indices[k] == g) return m->data[k];
    return 0;
}

static nbs_matrix *read_ok(const char *path, char delim, nbs_orientation o) {
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    int rc = nbs_io_read_table(path, delim, o, &m, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, NBS_OK);
    return m;
}

static void test_cells_in_rows_and_genes_in_rows(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    const char *p = tu_path(dir, "cells.tsv");
    assert_int_equal(tu_write_file(p, "cell\tA\tB\tC\nc1\t1\t0\t2\nc2\t0\t0\t7\n"), 0);
    nbs_matrix *m = read_ok(p, '\t', NBS_ORIENT_CELLS_ROWS);
    assert_int_equal(m->n_cells, 2);
    assert_int_equal(m->n_genes, 3);
    assert_int_equal(m->nnz, 3);
    assert_string_equal(m->barcodes[1], "c2");
    assert_string_equal(m->gene_names[2], "C");
    assert_true(entry(m, 1, 2) == 7.0f);
    nbs_matrix_free(m);

    /* R's write.csv: quoted names, no name over the row names; genes in rows */
    p = tu_path(dir, "genes.csv");
    assert_int_equal(tu_write_file(p, "\"c1\",\"c2\"\r\n\"A\",1,0\r\n\"B\",0,0\r\n\"C\",2,7\r\n"), 0);
    m = read_ok(p, ',', NBS_ORIENT_GENES_ROWS);
    assert_int_equal(m->n_cells, 2);
    assert_int_equal(m->n_genes, 3);
    assert_string_equal(m->barcodes[0], "c1");
    assert_string_equal(m->gene_names[0], "A");
    assert_true(entry(m, 1, 2) == 7.0f);
    assert_true(entry(m, 0, 0) == 1.0f);
    nbs_matrix_free(m);

    /* auto: more columns than rows means genes in rows */
    m = read_ok(tu_path(dir, "cells.tsv"), '\t', NBS_ORIENT_AUTO); /* 2 rows, 3 columns */
    assert_int_equal(m->n_cells, 3);
    assert_int_equal(m->n_genes, 2);
    nbs_matrix_free(m);
    m = read_ok(p, ',', NBS_ORIENT_AUTO); /* 3 rows, 2 columns */
    assert_int_equal(m->n_cells, 3);
    assert_string_equal(m->barcodes[0], "A");
    nbs_matrix_free(m);
    tu_rmtree(dir);
    free(dir);
}

static void test_gzip_table(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    const char *p = tu_path(dir, "t.tsv.gz");
    gzFile f = gzopen(p, "wb");
    assert_non_null(f);
    gzputs(f, "gene");
    for (int c = 0; c < 30000; c++) gzprintf(f, "\tcell%d", c);
    gzputs(f, "\n");
    for (int g = 0; g < 40; g++) {
        gzprintf(f, "g%d", g);
        for (int c = 0; c < 30000; c++) gzprintf(f, "\t%d", (c + g) % 7 == 0 ? c % 5 + 1 : 0);
        gzputs(f, "\n");
    }
    gzclose(f);
    nbs_matrix *m = read_ok(p, '\t', NBS_ORIENT_GENES_ROWS);
    assert_int_equal(m->n_cells, 30000); /* lines longer than the first buffer */
    assert_int_equal(m->n_genes, 40);
    assert_true(entry(m, 7, 0) == 3.0f);
    assert_true(entry(m, 8, 0) == 0.0f);
    assert_string_equal(m->barcodes[29999], "cell29999");
    nbs_matrix_free(m);
    tu_rmtree(dir);
    free(dir);
}

static void expect_table_error_bytes(const char *dir, const char *text, size_t n, const char *needle1,
                                     const char *needle2) {
    const char *p = tu_path(dir, "bad.tsv");
    assert_int_equal(tu_write_bytes(p, text, n), 0);
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_table(p, '\t', NBS_ORIENT_CELLS_ROWS, &m, &err), NBS_ERR_INPUT);
    assert_null(m);
    if (!strstr(err.msg, needle1) || !strstr(err.msg, needle2))
        print_message("wanted '%s' and '%s' in: %s\n", needle1, needle2, err.msg);
    assert_non_null(strstr(err.msg, needle1));
    assert_non_null(strstr(err.msg, needle2));
    assert_non_null(strstr(err.msg, "bad.tsv"));
}

static void expect_table_error(const char *dir, const char *text, const char *needle1, const char *needle2) {
    expect_table_error_bytes(dir, text, strlen(text), needle1, needle2);
}

static void test_table_errors(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    expect_table_error(dir, "", ":1:", "empty");
    expect_table_error(dir, "cell\tA\tB\n", "no data rows", "header");
    expect_table_error(dir, "cell\tA\tB\nc1\t1\t2\nc2\t1\n", ":3:", "same number of fields");
    expect_table_error(dir, "cell\tA\tB\nc1\t1\t2\t3\t4\n", ":2:", "the header has 3");
    expect_table_error(dir, "cell\tA\tB\nc1\t1\tNA\n", ":2:", "'NA' is not a number");
    expect_table_error(dir, "cell\tA\tB\nc1\t1\t\n", "column 3 ('B')", "not a number");
    expect_table_error(dir, "cell\tA\tB\nc1\t1\t2x\n", ":2:", "'2x'");
    /* quoting: a quote never closed names where it opened; a stray one where it is */
    expect_table_error(dir, "cell\tA\tB\nc1\t1\t2\nc2\t\"3\t4\nc3\t5\t6\n", ":3: field 2 opens a quote", "never closed");
    expect_table_error(dir, "cell\tA\tB\nc1\t1\t2\"\n", ":2: a misplaced quote in field 3", "\"\"");
    expect_table_error(dir, "cell\tA\tB\nc1\t\"1\"2\t2\n", ":2: a misplaced quote in field 2", "quoted whole");
    /* a quoted tab is one field, so the row on line 4 (after a quoted line end) is one short */
    expect_table_error(dir, "cell\tA\tB\n\"c\n1\"\t1\t2\n\"c\t2\"\t1\n", ":4:", "same number of fields");
    static const char nul[] = "cell\tA\tB\nc1\t1\0\t2\n";
    expect_table_error_bytes(dir, nul, sizeof nul - 1, ":2: field 2 holds a NUL byte", "UTF-8");
    tu_rmtree(dir);
    free(dir);
}

/* Names and counts in quotes: a comma, a tab, doubled quotes and a line end inside names; a
 * byte-order mark; CRLF with and without quotes before it; a blank line; no final line end. */
static void test_table_quoting(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    const char *p = tu_path(dir, "q.csv");
    assert_int_equal(tu_write_file(p, "\xef\xbb\xbf\"cell\",\"HLA-A, B\",\"CD3E \"\"x\"\"\",\"two\nlines\"\r\n"
                                      "c1,1,0,2\r\n\r\n\"c,2\",\"0\",3,\"4\"\r\nc3,5,6,7"), 0);
    nbs_matrix *m = read_ok(p, ',', NBS_ORIENT_CELLS_ROWS);
    assert_int_equal(m->n_cells, 3);
    assert_int_equal(m->n_genes, 3);
    assert_string_equal(m->gene_names[0], "HLA-A, B");
    assert_string_equal(m->gene_names[1], "CD3E \"x\"");
    assert_string_equal(m->gene_names[2], "two\nlines");
    assert_string_equal(m->barcodes[0], "c1");
    assert_string_equal(m->barcodes[1], "c,2");
    assert_string_equal(m->barcodes[2], "c3");
    assert_true(entry(m, 1, 1) == 3.0f);
    assert_true(entry(m, 1, 2) == 4.0f);
    assert_true(entry(m, 2, 2) == 7.0f);
    nbs_matrix_free(m);

    /* genes in rows, with a byte-order mark before a header that names only the cells */
    p = tu_path(dir, "q.tsv");
    assert_int_equal(tu_write_file(p, "\xef\xbb\xbf\"c\t1\"\tc2\nA\t1\t0\n\"B\tx\"\t0\t5\n"), 0);
    m = read_ok(p, '\t', NBS_ORIENT_GENES_ROWS);
    assert_int_equal(m->n_cells, 2);
    assert_string_equal(m->barcodes[0], "c\t1");
    assert_string_equal(m->gene_names[1], "B\tx");
    assert_true(entry(m, 1, 1) == 5.0f);
    nbs_matrix_free(m);
    tu_rmtree(dir);
    free(dir);
}

/* A field far longer than any name or count (a quote never closed) is refused where it starts,
 * before the rest of the file is buffered into it. */
static void test_table_runaway_quote(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    const char *p = tu_path(dir, "bad.tsv");
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs("cell\tA\nc0\t1\nc1\t\"1\n", f);
    for (int i = 2; i < 300000; i++) fprintf(f, "c%d\t1\n", i);
    fclose(f);
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_table(p, '\t', NBS_ORIENT_CELLS_ROWS, &m, &err), NBS_ERR_INPUT);
    assert_null(m);
    assert_non_null(strstr(err.msg, "bad.tsv:3: field 2, which starts here, is longer than 1 MiB"));
    tu_rmtree(dir);
    free(dir);
}

static void test_labels_pbmc3k_and_kang(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("pbmc3k/cell_labels.tsv");
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_10x_mtx_dir(tu_data("pbmc3k"), &m, &err), NBS_OK);
    char **l = NULL;
    assert_int_equal(nbs_io_read_labels_table(tu_data("pbmc3k/cell_labels.tsv"), "cell_type", m, &l, &err), NBS_OK);
    int b = 0, dc = 0;
    for (int64_t c = 0; c < m->n_cells; c++) {
        assert_non_null(l[c]);
        b += !strcmp(l[c], "B");
        dc += !strcmp(l[c], "DC");
    }
    assert_int_equal(b, 344);
    assert_int_equal(dc, 32);
    nbs_io_free_labels(l, m->n_cells);
    nbs_matrix_free(m);

    NBS_REQUIRE_DATA("kang_muscat/cell_labels.tsv");
    assert_int_equal(nbs_io_read_10x_mtx_dir(tu_data("kang_muscat"), &m, &err), NBS_OK);
    assert_int_equal(nbs_io_read_labels_table(tu_data("kang_muscat/cell_labels.tsv"), "group_id", m, &l, &err), NBS_OK);
    int stim = 0;
    for (int64_t c = 0; c < m->n_cells; c++) stim += l[c] && !strcmp(l[c], "stim");
    assert_int_equal(stim, 806);
    nbs_io_free_labels(l, m->n_cells);
    /* no column named: the first one besides the barcodes (cell_type) */
    assert_int_equal(nbs_io_read_labels_table(tu_data("kang_muscat/cell_labels.tsv"), NULL, m, &l, &err), NBS_OK);
    int mono = 0;
    for (int64_t c = 0; c < m->n_cells; c++) mono += l[c] && !strcmp(l[c], "CD14+ Monocytes");
    assert_int_equal(mono, 400);
    nbs_io_free_labels(l, m->n_cells);
    l = NULL;
    assert_int_equal(nbs_io_read_labels_table(tu_data("kang_muscat/cell_labels.tsv"), "louvain", m, &l, &err),
                     NBS_ERR_INPUT);
    assert_null(l);
    assert_non_null(strstr(err.msg, "sample_id")); /* the columns there are listed */
    nbs_matrix_free(m);
}

static void test_labels_matching(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    const char *mat = tu_path(dir, "m.tsv");
    assert_int_equal(tu_write_file(mat, "cell\tA\nx\t1\ny\t2\nz\t3\n"), 0);
    nbs_matrix *m = read_ok(mat, '\t', NBS_ORIENT_CELLS_ROWS);
    /* another order, a barcode column that is not first, an unknown cell, one cell missing */
    const char *lab = tu_path(dir, "l.csv");
    assert_int_equal(tu_write_file(lab, "type,cell\nT,z\nB,x\nNK,w\n"), 0);
    char **l = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_labels_table(lab, "type", m, &l, &err), NBS_OK);
    assert_string_equal(l[0], "B");
    assert_null(l[1]);
    assert_string_equal(l[2], "T");
    nbs_io_free_labels(l, 3);
    l = NULL;
    assert_int_equal(tu_write_file(lab, "cell,type\nq,T\n"), 0);
    assert_int_equal(nbs_io_read_labels_table(lab, "type", m, &l, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "none of the 3 cells"));
    assert_int_equal(tu_write_file(lab, "cell,type\nx,T,extra,more\n"), 0);
    assert_int_equal(nbs_io_read_labels_table(lab, "type", m, &l, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, ":2:"));
    nbs_matrix_free(m);
    tu_rmtree(dir);
    free(dir);
}

/* Labels with the delimiter, doubled quotes and line ends inside quotes; TSV quoting; a
 * byte-order mark and CRLF. */
static void test_labels_quoting(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    const char *mat = tu_path(dir, "m.tsv");
    assert_int_equal(tu_write_file(mat, "cell\tA\nx\t1\ny\t2\nz\t3\n"), 0);
    nbs_matrix *m = read_ok(mat, '\t', NBS_ORIENT_CELLS_ROWS);
    const char *lab = tu_path(dir, "l.csv");
    assert_int_equal(tu_write_file(lab, "cell,type,note\nx,\"CD4 T, naive\",a\ny,\"say \"\"hi\"\"\",b\n"
                                        "z,\"two\nlines\",c\n"), 0);
    char **l = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_labels_table(lab, "type", m, &l, &err), NBS_OK);
    assert_string_equal(l[0], "CD4 T, naive");
    assert_string_equal(l[1], "say \"hi\"");
    assert_string_equal(l[2], "two\nlines");
    nbs_io_free_labels(l, 3);
    assert_int_equal(nbs_io_read_labels_table(lab, "note", m, &l, &err), NBS_OK); /* the columns stay aligned */
    assert_string_equal(l[0], "a");
    assert_string_equal(l[2], "c");
    nbs_io_free_labels(l, 3);

    /* the label column first: a byte-order mark would hide its name; CRs would stick to barcodes */
    assert_int_equal(tu_write_file(lab, "\xef\xbb\xbftype,cell\r\nT,x\r\n\r\n\"B\",y\r\nNK,\"z\"\r\n"), 0);
    assert_int_equal(nbs_io_read_labels_table(lab, "type", m, &l, &err), NBS_OK);
    assert_string_equal(l[0], "T");
    assert_string_equal(l[1], "B");
    assert_string_equal(l[2], "NK");
    nbs_io_free_labels(l, 3);

    lab = tu_path(dir, "l.tsv");
    assert_int_equal(tu_write_file(lab, "cell\ttype\nx\t\"T\tcells\"\n\"y\"\t\"B, \"\"memory\"\"\"\nz\t\n"), 0);
    assert_int_equal(nbs_io_read_labels_table(lab, NULL, m, &l, &err), NBS_OK);
    assert_string_equal(l[0], "T\tcells");
    assert_string_equal(l[1], "B, \"memory\"");
    assert_null(l[2]); /* empty: no label */
    nbs_io_free_labels(l, 3);

    /* R's write.table: no name over the row names, which hold the barcodes */
    lab = tu_path(dir, "r.txt");
    assert_int_equal(tu_write_file(lab, "\"type\",\"batch\"\n\"x\",\"T\",\"b1\"\n\"z\",\"NK\",\"b2\"\n"), 0);
    assert_int_equal(nbs_io_read_labels_table(lab, NULL, m, &l, &err), NBS_OK);
    assert_string_equal(l[0], "T");
    assert_null(l[1]);
    assert_string_equal(l[2], "NK");
    nbs_io_free_labels(l, 3);

    /* one column: quotes are read, and with no delimiter on the first line commas are label text */
    assert_int_equal(tu_write_file(lab, "type\nCD4 T, naive\n\"B\nplasma\"\nNK\n"), 0);
    assert_int_equal(nbs_io_read_labels_table(lab, NULL, m, &l, &err), NBS_OK);
    assert_string_equal(l[0], "CD4 T, naive");
    assert_string_equal(l[1], "B\nplasma");
    nbs_io_free_labels(l, 3);
    nbs_matrix_free(m);
    tu_rmtree(dir);
    free(dir);
}

static void expect_labels_error(const char *dir, const nbs_matrix *m, const char *text, const char *needle1,
                                const char *needle2) {
    const char *lab = tu_path(dir, "bad.csv");
    assert_int_equal(tu_write_file(lab, text), 0);
    char **l = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_labels_table(lab, "type", m, &l, &err), NBS_ERR_INPUT);
    assert_null(l);
    if (!strstr(err.msg, needle1) || !strstr(err.msg, needle2))
        print_message("wanted '%s' and '%s' in: %s\n", needle1, needle2, err.msg);
    assert_non_null(strstr(err.msg, needle1));
    assert_non_null(strstr(err.msg, needle2));
}

/* A row whose field count differs is an error naming its line, never a guess: the issue's
 * unquoted "CD4 T, naive" among quoted rows; a quote never closed; a stray quote. */
static void test_labels_malformed(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    const char *mat = tu_path(dir, "m.tsv");
    assert_int_equal(tu_write_file(mat, "cell\tA\nx\t1\ny\t2\nz\t3\n"), 0);
    nbs_matrix *m = read_ok(mat, '\t', NBS_ORIENT_CELLS_ROWS);
    expect_labels_error(dir, m, "cell,type\nx,T\ny,CD4 T, naive\n", "bad.csv:3: 3 comma-separated fields",
                        "the rows above have 2");
    expect_labels_error(dir, m, "cell,type\nx,\"CD4 T, naive\"\ny,CD4 T, naive\n", ":3:", "quote a field");
    expect_labels_error(dir, m, "cell,type\nx,CD4 T, naive, again\n", ":2: 4 comma-separated fields",
                        "the header has 2");
    expect_labels_error(dir, m, "cell,type\nx,\"a\nb\"\n\n\"y\nz\",B,extra\n", ":5:", "have 2");
    expect_labels_error(dir, m, "cell,type\nx,T\ny,\"B\nz,NK\n", ":3: field 2 opens a quote", "never closed");
    expect_labels_error(dir, m, "cell,type\nx,T\n\"y\nz,NK\n", ":3: field 1 opens a quote", "never closed");
    expect_labels_error(dir, m, "cell,type\nx,\"T\" cells\n", ":2: a misplaced quote in field 2", "\"\"");
    expect_labels_error(dir, m, "type\nT\nB\tx\nNK\n", ":3: 2 tab-separated fields", "one label per line");
    nbs_matrix_free(m);
    tu_rmtree(dir);
    free(dir);
}

/* Many records with quoted line ends, commas and escapes cross the reader's 64 KiB chunks: all
 * read back, and a bad row at the end is named by its physical line. */
static void test_labels_across_chunks(void **state) {
    (void)state;
    enum { N = 20000 };
    char *dir = tu_tmpdir();
    const char *mat = tu_path(dir, "m.tsv");
    FILE *f = fopen(mat, "w");
    assert_non_null(f);
    fputs("cell\tA\n", f);
    for (int i = 0; i < N; i++) fprintf(f, "c%d\t1\n", i);
    fclose(f);
    nbs_matrix *m = read_ok(mat, '\t', NBS_ORIENT_CELLS_ROWS);
    const char *lab = tu_path(dir, "l.csv");
    f = fopen(lab, "w");
    assert_non_null(f);
    fputs("cell,type\r\n", f);
    for (int i = 0; i < N; i++) fprintf(f, "\"c%d\",\"type %d, \"\"q\"\"\nsecond line %*s\"\r\n", i, i % 7, i % 13, "");
    fclose(f);
    char **l = NULL;
    nbs_error err = {0};
    int rc = nbs_io_read_labels_table(lab, "type", m, &l, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, NBS_OK);
    char want[128];
    for (int i = 0; i < N; i++) {
        snprintf(want, sizeof want, "type %d, \"q\"\nsecond line %*s", i % 7, i % 13, "");
        assert_string_equal(l[i], want);
    }
    nbs_io_free_labels(l, N);
    assert_non_null(f = fopen(lab, "a"));
    fputs("c1,T,extra\r\n", f);
    fclose(f);
    l = NULL;
    assert_int_equal(nbs_io_read_labels_table(lab, "type", m, &l, &err), NBS_ERR_INPUT);
    snprintf(want, sizeof want, "l.csv:%d: 3 comma-separated fields", 2 + 2 * N);
    if (!strstr(err.msg, want)) print_message("wanted '%s' in: %s\n", want, err.msg);
    assert_non_null(strstr(err.msg, want));
    nbs_matrix_free(m);
    tu_rmtree(dir);
    free(dir);
}

/* scPhere's labels: one column, no header, no barcodes, one line per cell in order. */
static void test_labels_in_order(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("scphere_cd14_eryth/cd14_monocyte_erythroid_celltype.tsv");
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_mtx(tu_data("scphere_cd14_eryth/cd14_monocyte_erythroid.mtx"), NBS_ORIENT_GENES_ROWS,
                                     &m, &err), NBS_OK);
    char **l = NULL;
    int rc = nbs_io_read_labels_table(tu_data("scphere_cd14_eryth/cd14_monocyte_erythroid_celltype.tsv"), NULL, m, &l, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, NBS_OK);
    int eryth = 0, mono = 0;
    for (int64_t c = 0; c < m->n_cells; c++) {
        eryth += !strcmp(l[c], "Eryth");
        mono += !strcmp(l[c], "CD14+ Mono");
    }
    assert_int_equal(eryth, 10);
    assert_int_equal(mono, 2293);
    nbs_io_free_labels(l, m->n_cells);
    nbs_matrix_free(m);

    /* with a header line; and a count that fits neither */
    char *dir = tu_tmpdir();
    const char *mat = tu_path(dir, "m.tsv");
    assert_int_equal(tu_write_file(mat, "cell\tA\nx\t1\ny\t2\n"), 0);
    m = read_ok(mat, '\t', NBS_ORIENT_CELLS_ROWS);
    const char *lab = tu_path(dir, "l.txt");
    assert_int_equal(tu_write_file(lab, "type\nT\nB\n"), 0);
    assert_int_equal(nbs_io_read_labels_table(lab, NULL, m, &l, &err), NBS_OK);
    assert_string_equal(l[0], "T");
    assert_string_equal(l[1], "B");
    nbs_io_free_labels(l, 2);
    assert_int_equal(tu_write_file(lab, "T\nB\nNK\nDC\n"), 0);
    assert_int_equal(nbs_io_read_labels_table(lab, NULL, m, &l, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "found 4"));
    nbs_matrix_free(m);
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cells_in_rows_and_genes_in_rows),
        cmocka_unit_test(test_gzip_table),
        cmocka_unit_test(test_table_errors),
        cmocka_unit_test(test_table_quoting),
        cmocka_unit_test(test_table_runaway_quote),
        cmocka_unit_test(test_labels_pbmc3k_and_kang),
        cmocka_unit_test(test_labels_matching),
        cmocka_unit_test(test_labels_quoting),
        cmocka_unit_test(test_labels_malformed),
        cmocka_unit_test(test_labels_across_chunks),
        cmocka_unit_test(test_labels_in_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
