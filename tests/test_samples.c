/* Several samples in one pipeline (input.samples, samples.c) and batch-aware Seurat v3 gene
 * selection (nbs_preprocess_hvg_batched): gene matching by id then name, inner and outer joins,
 * barcode suffixes, the sample as the default batch, every refused input, and the two-sample
 * example pipeline end to end. */
#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/covariates.h"
#include "nbsphere/io.h"
#include "nbsphere/pipeline.h"
#include "nbsphere/preprocess.h"
#include "nbsphere/samples.h"
#include "testutil.h"

/* A matrix from a dense (n_cells, n_genes) array; ids NULL: the names stand in, as readers of
 * formats without ids do. */
static nbs_matrix *mk(int nc, int ng, const float *dense, const char *const *ids, const char *const *names,
                      const char *barcode_prefix) {
    int32_t c[256], g[256];
    float v[256];
    int n = 0;
    for (int i = 0; i < nc; i++)
        for (int j = 0; j < ng; j++)
            if (dense[i * ng + j] != 0) c[n] = i, g[n] = j, v[n++] = dense[i * ng + j];
    nbs_error err = {0};
    nbs_matrix *m = nbs_matrix_from_triplets(nc, ng, n, c, g, v, "test", &err);
    assert_non_null(m);
    for (int j = 0; j < ng; j++) {
        m->gene_names[j] = strdup(names[j]);
        m->gene_ids[j] = strdup(ids ? ids[j] : names[j]);
    }
    for (int i = 0; i < nc; i++) {
        char b[64];
        snprintf(b, sizeof b, "%s%d", barcode_prefix, i + 1);
        m->barcodes[i] = strdup(b);
    }
    return m;
}

static float at(const nbs_matrix *m, int64_t cell, const char *gene_name) {
    for (int64_t k = m->indptr[cell]; k < m->indptr[cell + 1]; k++)
        if (!strcmp(m->gene_names[m->indices[k]], gene_name)) return m->data[k];
    return 0;
}

static int64_t gene_index(const nbs_matrix *m, const char *name) {
    for (int64_t g = 0; g < m->n_genes; g++)
        if (!strcmp(m->gene_names[g], name)) return g;
    return -1;
}

/* a (ids): E1 A, E2 B, E3 C, E9 X;  b (ids, other order; E2 renamed B2, E7 also named C):
 * E3 C, E2 B2, E7 C, E1 A;  c (names only): C, A, Z.
 * By id: A (E1), B (E2 = B2), C (E3) in a and b; b's E7 'C' differs in id from E3, so it is
 * another gene. c has no ids: A and C match by name (the first gene of that name), Z is new.
 * Inner join: A, C (in every sample). Outer: A B C X E7:C Z (first appearance). */
static void three_samples(nbs_matrix **p) {
    const char *ia[] = {"E1", "E2", "E3", "E9"}, *na[] = {"A", "B", "C", "X"};
    const float da[] = {1, 2, 3, 4, 0, 5, 0, 6};
    const char *ib[] = {"E3", "E2", "E7", "E1"}, *nb[] = {"C", "B2", "C-1", "A"};
    const float db[] = {7, 8, 9, 10};
    const char *nc[] = {"C", "A", "Z"};
    const float dc[] = {11, 0, 12, 0, 13, 14};
    p[0] = mk(2, 4, da, ia, na, "AAA-");
    p[1] = mk(1, 4, db, ib, nb, "AAA-");
    p[2] = mk(2, 3, dc, NULL, nc, "AAA-");
}

static void test_concat_inner_by_id_then_name(void **state) {
    (void)state;
    nbs_matrix *p[3], *m = NULL;
    three_samples(p);
    const char *names[] = {"s1", "s2", "s3"}, *paths[] = {"a.h5", "b.h5ad", "c.tsv"};
    int64_t lacked[3], dropped = -1;
    nbs_error err = {0};
    assert_int_equal(nbs_samples_concat(p, names, paths, 3, NBS_JOIN_INNER, &m, lacked, &dropped, &err), NBS_OK);
    for (int i = 0; i < 3; i++) assert_null(p[i]); /* taken */
    /* union: A B C X C-1 Z = 6 genes; a lacks C-1 Z, b lacks X Z, c lacks B X C-1 */
    assert_int_equal(lacked[0], 2);
    assert_int_equal(lacked[1], 2);
    assert_int_equal(lacked[2], 3);
    assert_int_equal(dropped, 4);
    assert_int_equal(m->n_cells, 5);
    assert_int_equal(m->n_genes, 2);
    assert_string_equal(m->gene_names[0], "A"); /* the first sample's order */
    assert_string_equal(m->gene_names[1], "C");
    assert_string_equal(m->gene_ids[0], "E1");
    assert_string_equal(m->gene_ids[1], "E3");
    assert_string_equal(m->barcodes[0], "AAA-1-s1");
    assert_string_equal(m->barcodes[2], "AAA-1-s2");
    assert_string_equal(m->barcodes[4], "AAA-2-s3");
    /* values follow their genes, whatever each file's order */
    const float expect[5][2] = {{1, 3}, {0, 0}, {10, 7}, {0, 11}, {13, 0}};
    for (int i = 0; i < 5; i++) {
        assert_true(at(m, i, "A") == expect[i][0]);
        assert_true(at(m, i, "C") == expect[i][1]);
    }
    for (int64_t i = 0; i < m->n_cells; i++) /* CSR rows stay sorted */
        for (int64_t k = m->indptr[i] + 1; k < m->indptr[i + 1]; k++) assert_true(m->indices[k - 1] < m->indices[k]);
    assert_int_equal(m->nnz, 6);
    nbs_matrix_free(m);
}

static void test_concat_outer_zeros(void **state) {
    (void)state;
    nbs_matrix *p[3], *m = NULL;
    three_samples(p);
    const char *names[] = {"s1", "s2", "s3"}, *paths[] = {"a.h5", "b.h5ad", "c.tsv"};
    int64_t dropped = -1;
    nbs_error err = {0};
    assert_int_equal(nbs_samples_concat(p, names, paths, 3, NBS_JOIN_OUTER, &m, NULL, &dropped, &err), NBS_OK);
    assert_int_equal(dropped, 0);
    assert_int_equal(m->n_genes, 6);
    const char *order[] = {"A", "B", "C", "X", "C-1", "Z"};
    for (int g = 0; g < 6; g++) assert_string_equal(m->gene_names[g], order[g]);
    assert_string_equal(m->gene_ids[gene_index(m, "Z")], "Z");
    /* b's B2 is a's B (same id E2): one column, named as first seen */
    assert_true(at(m, 2, "B") == 8);
    assert_true(at(m, 2, "C-1") == 9);
    assert_true(at(m, 2, "X") == 0); /* b lacks X: zero */
    assert_true(at(m, 0, "X") == 4);
    assert_true(at(m, 3, "Z") == 12);
    assert_true(at(m, 4, "Z") == 14 && at(m, 4, "A") == 13);
    assert_true(at(m, 3, "B") == 0 && at(m, 3, "C-1") == 0);
    assert_int_equal(m->nnz, 6 + 4 + 4);
    nbs_matrix_free(m);
}

static void expect_concat_error(nbs_matrix **p, int n, const char *needle) {
    const char *names[] = {"s1", "s2"}, *paths[] = {"first.h5", "second.tsv"};
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_samples_concat(p, names, paths, n, NBS_JOIN_INNER, &m, NULL, NULL, &err), NBS_ERR_INPUT);
    assert_null(m);
    if (!strstr(err.msg, needle)) fail_msg("expected '%s' in: %s", needle, err.msg);
}

static void test_concat_refuses(void **state) {
    (void)state;
    const char *ia[] = {"E1", "E1"}, *na[] = {"A", "B"}, *nz[] = {"Y", "Z"};
    const float d[] = {1, 2, 3, 4};
    nbs_matrix *p[2];
    /* duplicate ids in one sample */
    p[0] = mk(2, 2, d, ia, na, "c");
    p[1] = mk(2, 2, d, NULL, na, "c");
    expect_concat_error(p, 2, "first.h5 (sample 's1'): gene id 'E1' is given twice");
    /* no gene in common */
    p[0] = mk(2, 2, d, NULL, na, "c");
    p[1] = mk(2, 2, d, NULL, nz, "c");
    expect_concat_error(p, 2, "no gene is in every sample (first.h5 (2 genes), second.tsv (2 genes)");
    /* an empty sample */
    p[0] = mk(2, 2, d, NULL, na, "c");
    nbs_error err = {0};
    p[1] = nbs_matrix_new(0, 2, 0, &err);
    p[1]->gene_names[0] = strdup("A"), p[1]->gene_ids[0] = strdup("A");
    p[1]->gene_names[1] = strdup("B"), p[1]->gene_ids[1] = strdup("B");
    expect_concat_error(p, 2, "second.tsv (sample 's2'): the sample is empty (0 cells x 2 genes)");
}

static void test_sample_of_barcode(void **state) {
    (void)state;
    nbs_sample_list s = {0};
    s.n = 2;
    strcpy(s.items[0].name, "ctrl");
    strcpy(s.items[1].name, "stim-2");
    assert_int_equal(nbs_sample_of_barcode(&s, "AAAC-1-ctrl"), 0);
    assert_int_equal(nbs_sample_of_barcode(&s, "AAAC-1-stim-2"), 1);
    assert_int_equal(nbs_sample_of_barcode(&s, "AAAC-1-2"), -1);
    assert_int_equal(nbs_sample_of_barcode(&s, "ctrl"), -1); /* no '-' before it */
}

/* ---- the pipeline keys ---- */

static char *dir;

static int load(const char *yaml, const char *set, nbs_pipeline *p, nbs_error *err) {
    const char *sets[1] = {set};
    return nbs_pipeline_load_string(yaml, "p.yaml", dir, set ? sets : NULL, set ? 1 : 0, NBS_PIPELINE_REQUIRE_INPUT,
                                    p, err);
}

static void expect_pipeline_error(const char *yaml, int code, const char *needle) {
    nbs_pipeline *p = malloc(sizeof *p);
    nbs_error err = {0};
    assert_int_equal(load(yaml, NULL, p, &err), code);
    if (!strstr(err.msg, needle)) fail_msg("expected '%s' in: %s", needle, err.msg);
    free(p);
}

static void test_pipeline_samples(void **state) {
    (void)state;
    dir = tu_tmpdir();
    assert_int_equal(tu_write_file(tu_path(dir, "a.tsv"), "gene\tc1\nA\t1\n"), 0);
    assert_int_equal(tu_write_file(tu_path(dir, "b.csv"), "gene,c1\nA,1\n"), 0);
    nbs_pipeline *p = malloc(sizeof *p), *q = malloc(sizeof *q);
    nbs_error err = {0};
    assert_int_equal(load("input:\n  samples:\n    ctrl: a.tsv\n    stim: {path: b.csv, format: csv, layer: raw}\n"
                          "  join: outer\n", NULL, p, &err), NBS_OK);
    const nbs_input_config *in = &p->config.input;
    assert_int_equal(in->samples.n, 2);
    assert_string_equal(in->samples.items[0].name, "ctrl");
    assert_string_equal(in->samples.items[0].path, tu_path(dir, "a.tsv"));
    assert_int_equal(in->samples.items[0].format, NBS_FMT_AUTO);
    assert_int_equal(in->samples.items[1].format, NBS_FMT_CSV);
    assert_int_equal(in->samples.items[1].layer_given, 1);
    assert_string_equal(in->samples.items[1].layer, "raw");
    assert_int_equal(in->join, NBS_JOIN_OUTER);
    assert_int_equal(p->config.preprocess.hvg_batch_aware, 1);
    /* config.yaml reads back to the same samples */
    const char *out = tu_path(dir, "config.yaml");
    assert_int_equal(nbs_pipeline_write_yaml(&p->config, out, &err), NBS_OK);
    assert_int_equal(nbs_pipeline_load(out, NULL, 0, 0, q, &err), NBS_OK);
    assert_memory_equal(&q->config.input.samples, &p->config.input.samples, sizeof(nbs_sample_list));
    assert_int_equal(q->config.input.join, NBS_JOIN_OUTER);
    /* --set replaces the file's samples */
    char set[512];
    snprintf(set, sizeof set, "input.samples={x: %s}", tu_path(dir, "b.csv"));
    assert_int_equal(load("input:\n  samples: {ctrl: missing.tsv}\n", set, p, &err), NBS_OK);
    assert_int_equal(p->config.input.samples.n, 1);
    assert_string_equal(p->config.input.samples.items[0].name, "x");
    free(p);
    free(q);
}

static void test_pipeline_samples_refused(void **state) {
    (void)state;
    expect_pipeline_error("input:\n  path: a.tsv\n  samples: {ctrl: a.tsv}\n", NBS_ERR_USAGE,
                          "input.samples and input.path (p.yaml:2:9) are both given");
    expect_pipeline_error("input:\n  samples:\n    ctrl: a.tsv\n    ctrl: b.csv\n", NBS_ERR_USAGE,
                          "p.yaml:4:5: input.samples: sample 'ctrl' is given twice");
    expect_pipeline_error("input:\n  samples: {a: a.tsv, x-a: b.csv}\n", NBS_ERR_USAGE,
                          "sample names 'a' and 'x-a': one ends in '-' and the other");
    expect_pipeline_error("input:\n  samples: {a: nothere.h5}\n", NBS_ERR_IO, "nothere.h5' cannot be opened");
    expect_pipeline_error("input:\n  samples: {a: \"\"}\n", NBS_ERR_USAGE, "a sample's path is empty");
    expect_pipeline_error("input:\n  samples: {a: {format: csv}}\n", NBS_ERR_USAGE, "sample 'a' has no path");
    expect_pipeline_error("input:\n  samples: {a: {path: a.tsv, colour: red}}\n", NBS_ERR_USAGE,
                          "sample 'a': unknown option 'colour'");
    expect_pipeline_error("input:\n  samples: [a.tsv]\n", NBS_ERR_USAGE, "input.samples: not a mapping");
    expect_pipeline_error("input:\n  samples: {a: a.tsv}\n  categorical_covariates: [sample]\n", NBS_ERR_USAGE,
                          "column 'sample' is already the batch (input.samples' 'sample')");
    expect_pipeline_error("input:\n  join: left\n  samples: {a: a.tsv}\n", NBS_ERR_USAGE, "one of inner, outer");
}

/* The batch is the sample unless input.batch_key names another column; categories in byte order. */
static void test_sample_is_the_batch(void **state) {
    (void)state;
    nbs_pipeline *p = malloc(sizeof *p);
    nbs_error err = {0};
    assert_int_equal(load("input:\n  samples: {stim: a.tsv, ctrl: b.csv}\n", NULL, p, &err), NBS_OK);
    nbs_matrix *parts[2];
    const float d[] = {1, 2, 3, 4};
    const char *na[] = {"A", "B"};
    parts[0] = mk(2, 2, d, NULL, na, "bc");
    parts[1] = mk(1, 2, d, NULL, na, "bc");
    const char *names[] = {"stim", "ctrl"}, *paths[] = {"a.tsv", "b.csv"};
    nbs_matrix *m = NULL;
    assert_int_equal(nbs_samples_concat(parts, names, paths, 2, NBS_JOIN_INNER, &m, NULL, NULL, &err), NBS_OK);
    nbs_covariates cov;
    nbs_covariate_values v;
    assert_string_equal(nbs_covariates_batch_column(&p->config.input), "sample");
    assert_int_equal(nbs_covariates_fit(&p->config.input, NBS_FMT_AUTO, m, &cov, &v, &err), NBS_OK);
    assert_int_equal(cov.has_batch, 1);
    assert_string_equal(cov.categorical[0].name, "sample");
    assert_int_equal(cov.categorical[0].n_categories, 2);
    assert_string_equal(cov.categorical[0].categories[0], "ctrl"); /* byte order, not the mapping's */
    assert_string_equal(cov.categorical[0].categories[1], "stim");
    assert_int_equal(v.codes[0], 1);
    assert_int_equal(v.codes[1], 1);
    assert_int_equal(v.codes[2], 0);
    nbs_covariates_free(&cov);
    nbs_covariate_values_free(&v);
    /* another batch column: 'sample' is still there by name, the other needs a labels table */
    p->config.input.batch_key[0] = '\0';
    strcpy(p->config.input.batch_key, "donor");
    assert_int_equal(nbs_covariates_fit(&p->config.input, NBS_FMT_AUTO, m, &cov, &v, &err), NBS_ERR_USAGE);
    assert_non_null(strstr(err.msg, "with input.samples, the columns other than 'sample' come from a labels table"));
    const char *table = tu_path(dir, "donors.tsv");
    assert_int_equal(tu_write_file(table, "barcode\tdonor\nbc1-stim\td1\nbc2-stim\td2\nbc1-ctrl\td1\n"), 0);
    strcpy(p->config.input.labels_path, table);
    p->config.input.categorical_covariates.n = 1;
    strcpy(p->config.input.categorical_covariates.names[0], "sample");
    assert_int_equal(nbs_covariates_fit(&p->config.input, NBS_FMT_AUTO, m, &cov, &v, &err), NBS_OK);
    assert_string_equal(cov.categorical[0].name, "donor");
    assert_string_equal(cov.categorical[1].name, "sample");
    assert_int_equal(v.codes[1 * 2 + 0], 1); /* bc2-stim: donor d2 */
    assert_int_equal(v.codes[1 * 2 + 1], 1); /* stim */
    nbs_covariates_free(&cov);
    nbs_covariate_values_free(&v);
    nbs_matrix_free(m);
    free(p);
}

/* ---- batch-aware highly variable genes ---- */

/* 2 batches of 80 cells, 200 genes. Genes 0-189: Poisson with means 0.2..28.5, alike in both
 * batches (a trend for the loess over the whole range). Genes 190-194: bursty in batch 0 only
 * (Poisson 40 in a fifth of its cells, else 3). Genes 195-199: constant inside each batch (2 in
 * batch 0, 20 in batch 1): no variance within a batch, a large one pooled. Optionally one more
 * cell, of a third batch. */
enum { HC = 160, HG = 200 };
static nbs_matrix *hvg_data(int32_t *batch, int extra_cell) {
    const int n = HC + extra_cell;
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 7);
    int32_t *ci = malloc(sizeof *ci * n * HG), *gi = malloc(sizeof *gi * n * HG);
    float *v = malloc(sizeof *v * n * HG);
    int64_t nnz = 0;
    for (int c = 0; c < n; c++) {
        const int b = c < HC ? c / 80 : 2;
        batch[c] = b;
        for (int g = 0; g < HG; g++) {
            double x;
            if (g < 190) x = gsl_ran_poisson(r, 0.2 + 0.15 * g);
            else if (g < 195) x = gsl_ran_poisson(r, b == 0 && gsl_rng_uniform(r) < 0.2 ? 40 : 3);
            else x = b == 1 ? 20 : 2;
            if (x > 0) ci[nnz] = c, gi[nnz] = g, v[nnz++] = (float)x;
        }
    }
    gsl_rng_free(r);
    nbs_error err = {0};
    nbs_matrix *m = nbs_matrix_take_triplets(n, HG, nnz, ci, gi, v, "hvg", &err);
    assert_non_null(m);
    return m;
}

static int cmp_i64_test(const void *a, const void *b) {
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int contains(const int64_t *s, int64_t n, int64_t g) {
    for (int64_t i = 0; i < n; i++)
        if (s[i] == g) return 1;
    return 0;
}

static void test_hvg_batched_known_answer(void **state) {
    (void)state;
    int32_t batch[HC + 1];
    nbs_matrix *m = hvg_data(batch, 0);
    nbs_error err = {0};
    int64_t top[10], pooled[10];
    int used = -1;
    assert_int_equal(nbs_preprocess_hvg_batched(m, batch, 2, 0.3, 10, NBS_HVG_SEURAT_V3_PAPER, top, &used, &err), 10);
    assert_int_equal(used, 2);
    double score[HG];
    assert_int_equal(nbs_preprocess_seurat_v3(m, 0.3, NULL, NULL, NULL, score, &err), NBS_OK);
    assert_int_equal(nbs_preprocess_top_k(score, HG, 10, pooled), 10);
    for (int i = 1; i < 10; i++) assert_true(top[i - 1] < top[i]); /* ascending */
    /* within batches: the bursty genes in, the batch-shifted ones out; pooled: the shifted in */
    for (int g = 190; g < 195; g++) assert_true(contains(top, 10, g));
    for (int g = 195; g < 200; g++) assert_false(contains(top, 10, g));
    for (int g = 195; g < 200; g++) assert_true(contains(pooled, 10, g));
    /* a batch of one cell is left out: the same genes as without that cell */
    int32_t batch3[HC + 1];
    nbs_matrix *m3 = hvg_data(batch3, 1);
    int64_t top3[10];
    assert_int_equal(nbs_preprocess_hvg_batched(m3, batch3, 3, 0.3, 10, NBS_HVG_SEURAT_V3_PAPER, top3, &used, &err), 10);
    assert_int_equal(used, 2);
    assert_memory_equal(top3, top, sizeof top);
    /* a single batch is the pooled selection */
    int32_t one[HC] = {0};
    assert_int_equal(nbs_preprocess_hvg_batched(m, one, 1, 0.3, 10, NBS_HVG_SEURAT_V3, top, &used, &err), 10);
    assert_memory_equal(top, pooled, sizeof top);
    /* no batch with 2 cells: nothing ranked */
    int32_t own[HC];
    for (int i = 0; i < HC; i++) own[i] = i;
    assert_int_equal(nbs_preprocess_hvg_batched(m, own, HC, 0.3, 10, NBS_HVG_SEURAT_V3, top, &used, &err), 0);
    assert_int_equal(used, 0);
    nbs_matrix_free(m);
    nbs_matrix_free(m3);
}

/* The two orders of scanpy's flavors, against the combination written out here from scanpy's
 * definition (_highly_variable_genes_seurat_v3: per batch, ranks of the score; per gene the count
 * of ranks below k and their median; "seurat_v3" sorts by (median ascending NaN last, count
 * descending), "seurat_v3_paper" by (count descending, median ascending NaN last)), from the
 * per-batch scores of nbs_preprocess_seurat_v3; and on this data the two select different genes
 * for some k. */
typedef struct {
    int count;
    double median;
    int64_t gene;
    int paper;
} hvg_key;

static int cmp_hvg_key(const void *a, const void *b) {
    const hvg_key *x = a, *y = b;
    const int nan_x = isnan(x->median), nan_y = isnan(y->median);
    const int med = nan_x != nan_y ? nan_x - nan_y : nan_x ? 0 : (x->median > y->median) - (x->median < y->median);
    const int cnt = (y->count > x->count) - (y->count < x->count);
    const int first = x->paper ? cnt : med, second = x->paper ? med : cnt;
    return first ? first : second ? second : (x->gene > y->gene) - (x->gene < y->gene);
}

static int cmp_rank_desc(const void *a, const void *b, void *ctx) {
    const double *s = ctx;
    const int64_t i = *(const int64_t *)a, j = *(const int64_t *)b;
    if (s[i] != s[j]) return s[i] > s[j] ? -1 : 1;
    return (i > j) - (i < j);
}

static void test_hvg_flavors_match_their_definition(void **state) {
    (void)state;
    int32_t batch[HC + 1];
    nbs_matrix *m = hvg_data(batch, 0);
    nbs_error err = {0};
    static int rank[2][HG]; /* rank[b][g]: 0 = most variable in batch b */
    int64_t genes[HG], cells[HC / 2];
    for (int g = 0; g < HG; g++) genes[g] = g;
    for (int b = 0; b < 2; b++) {
        for (int i = 0; i < HC / 2; i++) cells[i] = b * (HC / 2) + i;
        nbs_matrix *sub = nbs_matrix_subset(m, cells, HC / 2, genes, HG, &err);
        assert_non_null(sub);
        double score[HG];
        assert_int_equal(nbs_preprocess_seurat_v3(sub, 0.3, NULL, NULL, NULL, score, &err), NBS_OK);
        int64_t order[HG];
        for (int g = 0; g < HG; g++) order[g] = g;
        qsort_r(order, HG, sizeof *order, cmp_rank_desc, score);
        for (int r = 0; r < HG; r++) rank[b][order[r]] = r;
        nbs_matrix_free(sub);
    }
    int differ = 0;
    for (int k = 5; k <= 40; k++) {
        int64_t want[2][40], got[2][40];
        for (int paper = 0; paper < 2; paper++) {
            hvg_key key[HG];
            for (int g = 0; g < HG; g++) {
                int c = 0;
                double in[2];
                for (int b = 0; b < 2; b++)
                    if (rank[b][g] < k) in[c++] = rank[b][g];
                key[g] = (hvg_key){c, c == 0 ? NAN : c == 1 ? in[0] : 0.5 * (in[0] + in[1]), g, paper};
            }
            qsort(key, HG, sizeof *key, cmp_hvg_key);
            for (int i = 0; i < k; i++) want[paper][i] = key[i].gene;
            qsort(want[paper], (size_t)k, sizeof **want, cmp_i64_test);
            int used = 0;
            assert_int_equal(nbs_preprocess_hvg_batched(m, batch, 2, 0.3, k,
                                                        paper ? NBS_HVG_SEURAT_V3_PAPER : NBS_HVG_SEURAT_V3,
                                                        got[paper], &used, &err), k);
            assert_memory_equal(got[paper], want[paper], sizeof(int64_t) * (size_t)k);
        }
        differ += memcmp(want[0], want[1], sizeof(int64_t) * (size_t)k) != 0;
    }
    printf("the two flavors select different genes for %d of the 36 values of k from 5 to 40\n", differ);
    assert_true(differ > 0);
    nbs_matrix_free(m);
}

/* ---- the example pipeline, end to end ---- */

static void test_two_samples_pipeline(void **state) {
    (void)state;
    char *out = tu_tmpdir(), *gen = tu_tmpdir();
    char args[4096], *so = NULL, *se = NULL;
    /* the example files are what their README's commands make */
    snprintf(args, sizeof args, "simulate --out '%s/a' --cells 300 --genes 300 --seed 1 --format 10x-h5", gen);
    assert_int_equal(tu_run_cli(args, NULL, NULL), 0);
    snprintf(args, sizeof args, "simulate --out '%s/b' --cells 200 --genes 280 --seed 1 --depth 1500 --format h5ad", gen);
    assert_int_equal(tu_run_cli(args, NULL, NULL), 0);
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s/a/sim_10x.h5", gen);
    snprintf(b, sizeof b, "%s/b/sim.h5ad", gen);
    assert_true(tu_same_bytes(a, "example_data/two_samples/ctrl/sim_10x.h5"));
    assert_true(tu_same_bytes(b, "example_data/two_samples/stim/sim.h5ad"));
    snprintf(args, sizeof args, "run pipelines/two_samples.yaml --set train.epochs=2 --out '%s/run'", out);
    if (tu_run_cli(args, &so, &se)) fail_msg("run failed: %s", se);
    assert_non_null(strstr(se, "sample 'ctrl' (")); /* what each sample brought */
    assert_non_null(strstr(se, "300 cells x 300 genes read"));
    assert_non_null(strstr(se, "sample 'stim' lacks 20 of the 300 genes of all samples"));
    assert_non_null(strstr(se, "280 genes are in every sample, 20 dropped"));
    assert_non_null(strstr(se, "sample 'stim': 200 cells kept after the QC filters"));
    assert_non_null(strstr(se, "ranked within each of 2 batches of 'sample'"));
    char h5ad[4200];
    snprintf(h5ad, sizeof h5ad, "%s/run/embedding.h5ad", out);
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_h5ad(h5ad, "", &m, &err), NBS_OK);
    assert_int_equal(m->n_cells, 500);
    assert_string_equal(m->barcodes[0], "SIM0000001-1-ctrl");
    assert_string_equal(m->barcodes[300], "SIM0000001-1-stim"); /* the same barcode, told apart */
    char **sample = NULL;
    assert_int_equal(nbs_io_read_h5ad_obs(h5ad, "sample", m, &sample, &err), NBS_OK);
    assert_string_equal(sample[0], "ctrl");
    assert_string_equal(sample[499], "stim");
    nbs_io_free_labels(sample, m->n_cells);
    nbs_matrix_free(m);
    free(so);
    free(se);
    tu_rmtree(out);
    tu_rmtree(gen);
    free(out);
    free(gen);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concat_inner_by_id_then_name),
        cmocka_unit_test(test_concat_outer_zeros),
        cmocka_unit_test(test_concat_refuses),
        cmocka_unit_test(test_sample_of_barcode),
        cmocka_unit_test(test_pipeline_samples),
        cmocka_unit_test(test_pipeline_samples_refused),
        cmocka_unit_test(test_sample_is_the_batch),
        cmocka_unit_test(test_hvg_batched_known_answer),
        cmocka_unit_test(test_hvg_flavors_match_their_definition),
        cmocka_unit_test(test_two_samples_pipeline),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (dir) tu_rmtree(dir);
    free(dir);
    return rc;
}
