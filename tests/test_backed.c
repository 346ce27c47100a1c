/* Out-of-core input (input.backed, backed.h): the streamed preprocessing against the in-memory
 * one, the block-shuffled order, and training that equals the in-memory run bit for bit when the
 * block is one cell and one buffer holds every block, and comes close otherwise. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>

#include "nbsphere/backed.h"
#include "nbsphere/checkpoint.h"
#include "nbsphere/covariates.h"
#include "nbsphere/io.h"
#include "nbsphere/preprocess.h"
#include "nbsphere/rng.h"
#include "nbsphere/samples.h"
#include "testutil.h"

static char *dir;

static int setup(void **state) {
    (void)state;
    dir = tu_tmpdir();
    char args[1024];
    snprintf(args, sizeof args, "--quiet simulate --out '%s' --cells 900 --genes 300 --seed 4 --format h5ad,10x-h5", dir);
    char yaml[1024];
    snprintf(yaml, sizeof yaml, "input:\n  path: %s/sim.h5ad\n", dir);
    if (tu_run_cli(args, NULL, NULL) || tu_write_file(tu_path(dir, "p.yaml"), yaml)) return -1;
    /* three batches (obs 'batch': batch1 .. batch3) with batch effects, and a fourth file with a batch more */
    snprintf(args, sizeof args, "--quiet simulate --out '%s/batched' --cells 900 --genes 300 --seed 6 --batches 3 "
             "--format h5ad", dir);
    if (tu_run_cli(args, NULL, NULL)) return -1;
    snprintf(args, sizeof args, "--quiet simulate --out '%s/batch4' --cells 200 --genes 300 --seed 7 --batches 4 "
             "--format h5ad", dir);
    return tu_run_cli(args, NULL, NULL);
}

static int teardown(void **state) {
    (void)state;
    tu_rmtree(dir);
    free(dir);
    return 0;
}

static nbs_input_config input_of(const char *path, nbs_format f) {
    nbs_config c;
    nbs_config_defaults(&c);
    snprintf(c.input.path, sizeof c.input.path, "%s", path);
    c.input.format = f;
    return c.input;
}

/* The streamed passes give the cells, genes, totals and library sizes of nbs_preprocess_run, bit
 * for bit, with filters that remove cells and genes and an HVG step. */
static void expect_stream_equals_memory(const char *file, nbs_format f) {
    const nbs_input_config in = input_of(tu_path(dir, file), f);
    nbs_preprocess_config pc;
    nbs_config c;
    nbs_config_defaults(&c);
    pc = c.preprocess;
    pc.min_counts = 300; /* the simulation's median depth is 600: removes cells */
    pc.min_cells = 20;   /* removes rare genes */
    pc.n_top_genes = 120;
    nbs_error err = {0};
    nbs_matrix *m = NULL;
    assert_int_equal(nbs_io_read(&in, &m, &err), NBS_OK);
    nbs_preprocess_result *a = NULL, *b = NULL;
    assert_int_equal(nbs_preprocess_run(m, &pc, &a, &err), NBS_OK);
    nbs_backed *bk = NULL;
    assert_int_equal(nbs_backed_open(&in, f, &bk, &err), NBS_OK);
    assert_int_equal(nbs_backed_n_cells(bk), m->n_cells);
    assert_int_equal(nbs_backed_n_genes(bk), m->n_genes);
    for (int64_t g = 0; g < m->n_genes; g++) assert_string_equal(nbs_backed_gene_names(bk)[g], m->gene_names[g]);
    const nbs_row_source src = nbs_backed_rows(bk);
    int32_t *row_nnz = NULL;
    assert_int_equal(nbs_preprocess_stream(&src, &pc, &b, &row_nnz, &err), NBS_OK);
    assert_null(b->matrix);
    assert_true(a->removed_cells_min_counts > 0 && a->removed_genes_min_cells > 0 && a->removed_genes_hvg > 0);
    assert_int_equal(b->n_cells, a->n_cells);
    assert_int_equal(b->n_genes, a->n_genes);
    assert_int_equal(b->removed_cells_min_counts, a->removed_cells_min_counts);
    assert_int_equal(b->removed_cells_min_genes, a->removed_cells_min_genes);
    assert_int_equal(b->removed_genes_min_cells, a->removed_genes_min_cells);
    assert_int_equal(b->removed_genes_hvg, a->removed_genes_hvg);
    assert_int_equal(b->cells_zero_library, a->cells_zero_library);
    assert_memory_equal(b->cells, a->cells, sizeof *a->cells * (size_t)a->n_cells);
    assert_memory_equal(b->genes, a->genes, sizeof *a->genes * (size_t)a->n_genes);
    assert_memory_equal(b->total_counts, a->total_counts, sizeof(double) * (size_t)a->n_cells);
    assert_memory_equal(b->library_size, a->library_size, sizeof(double) * (size_t)a->n_cells);
    for (int64_t i = 0; i < a->n_cells; i++)
        assert_int_equal(row_nnz[i], a->matrix->indptr[i + 1] - a->matrix->indptr[i]);

    /* the loader's rows are the in-memory matrix's rows */
    nbs_backed_loader *l = nbs_backed_loader_new(bk, b, row_nnz, 7, 3, 32, &err);
    assert_non_null(l);
    int64_t pick[5] = {0, 6, 7, 100, b->n_cells - 1};
    nbs_matrix *x = NULL;
    double *lib = NULL;
    assert_int_equal(nbs_backed_loader_read(l, pick, 5, &x, &lib, &err), NBS_OK);
    for (int i = 0; i < 5; i++) {
        const int64_t r = pick[i], n = a->matrix->indptr[r + 1] - a->matrix->indptr[r];
        assert_int_equal(x->indptr[i + 1] - x->indptr[i], n);
        assert_memory_equal(x->indices + x->indptr[i], a->matrix->indices + a->matrix->indptr[r], sizeof(int32_t) * n);
        assert_memory_equal(x->data + x->indptr[i], a->matrix->data + a->matrix->indptr[r], sizeof(float) * n);
        assert_true(lib[i] == a->library_size[r]);
    }
    nbs_matrix_free(x);
    free(lib);
    nbs_backed_loader_free(l);
    free(row_nnz);
    nbs_backed_close(bk);
    nbs_preprocess_result_free(a);
    nbs_preprocess_result_free(b);
    nbs_matrix_free(m);
}

static void test_stream_h5ad(void **state) {
    (void)state;
    expect_stream_equals_memory("sim.h5ad", NBS_FMT_H5AD);
}

static void test_stream_10x(void **state) {
    (void)state;
    expect_stream_equals_memory("sim_10x.h5", NBS_FMT_10X_H5);
}

static int cmp_i64(const void *a, const void *b) {
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The epoch's order: a permutation of the cells given, in runs that each touch at most
 * shuffle_blocks blocks (one buffer); the validation order (no generator) keeps blocks in file
 * order; one buffer holding every block gives exactly gsl_ran_shuffle's order. */
/* Batch-aware Seurat v3 in the streamed passes: the genes nbs_preprocess_take_batched chooses within
 * the three batches, bit for bit (and not the pooled selection's, so the batches count). */
static void test_stream_batched(void **state) {
    (void)state;
    nbs_input_config in = input_of(tu_path(dir, "batched/sim.h5ad"), NBS_FMT_H5AD);
    snprintf(in.batch_key, sizeof in.batch_key, "batch");
    nbs_config c;
    nbs_config_defaults(&c);
    nbs_preprocess_config pc = c.preprocess;
    pc.min_counts = 300;
    pc.n_top_genes = 100;
    nbs_error err = {0};
    nbs_matrix *m = NULL, *copy = NULL;
    assert_int_equal(nbs_io_read(&in, &m, &err), NBS_OK);
    assert_int_equal(nbs_io_read(&in, &copy, &err), NBS_OK);
    int32_t *codes = NULL;
    nbs_categorical_covariate batch;
    assert_int_equal(nbs_covariates_batch_codes(&in, NBS_FMT_H5AD, m, &codes, &batch, &err), NBS_OK);
    assert_int_equal(batch.n_categories, 3);
    const nbs_preprocess_batches b = {codes, batch.n_categories, batch.categories, "batch"};
    nbs_preprocess_result *a = NULL, *pooled = NULL, *st = NULL;
    assert_int_equal(nbs_preprocess_take_batched(m, &pc, &b, &a, &err), NBS_OK);
    assert_int_equal(nbs_preprocess_take(copy, &pc, &pooled, &err), NBS_OK);
    nbs_backed *bk = NULL;
    assert_int_equal(nbs_backed_open(&in, NBS_FMT_H5AD, &bk, &err), NBS_OK);
    const nbs_row_source src = nbs_backed_rows(bk);
    int32_t *row_nnz = NULL;
    assert_int_equal(nbs_preprocess_stream_shared(&src, &pc, &b, NULL, &st, &row_nnz, &err), NBS_OK);
    assert_int_equal(a->hvg_batches, 3);
    assert_int_equal(st->hvg_batches, 3);
    assert_int_equal(st->n_cells, a->n_cells);
    assert_int_equal(st->n_genes, 100);
    assert_int_equal(a->n_genes, 100);
    assert_memory_equal(st->cells, a->cells, sizeof *a->cells * (size_t)a->n_cells);
    assert_memory_equal(st->genes, a->genes, sizeof *a->genes * (size_t)a->n_genes);
    assert_memory_equal(st->library_size, a->library_size, sizeof(double) * (size_t)a->n_cells);
    int differ = 0; /* chosen within the batches, not over all cells pooled (both ascending) */
    for (int64_t g = 0, h = 0; g < 100; g++) {
        while (h < 100 && pooled->genes[h] < a->genes[g]) h++;
        differ += h == 100 || pooled->genes[h] != a->genes[g];
    }
    print_message("batch-aware selection: %d of its 100 genes are not among the pooled selection's\n", differ);
    assert_true(differ > 0);
    /* a kept cell without a batch is refused, naming it */
    codes[a->cells[5]] = -1;
    nbs_preprocess_result *bad = NULL;
    int32_t *bad_nnz = NULL;
    assert_int_equal(nbs_preprocess_stream_shared(&src, &pc, &b, NULL, &bad, &bad_nnz, &err), NBS_ERR_INPUT);
    char want[128];
    snprintf(want, sizeof want, "cell %lld of the input has no value in the batch column 'batch'", (long long)a->cells[5] + 1);
    assert_non_null(strstr(err.msg, want));
    free(codes);
    free(row_nnz);
    nbs_categorical_covariate_free(&batch);
    nbs_backed_close(bk);
    nbs_preprocess_result_free(a);
    nbs_preprocess_result_free(pooled);
    nbs_preprocess_result_free(st);
}

static void test_block_order(void **state) {
    (void)state;
    const nbs_input_config in = input_of(tu_path(dir, "sim.h5ad"), NBS_FMT_H5AD);
    nbs_config c;
    nbs_config_defaults(&c);
    nbs_error err = {0};
    nbs_backed *bk = NULL;
    assert_int_equal(nbs_backed_open(&in, NBS_FMT_H5AD, &bk, &err), NBS_OK);
    const nbs_row_source src = nbs_backed_rows(bk);
    nbs_preprocess_result *pre = NULL;
    int32_t *row_nnz = NULL;
    assert_int_equal(nbs_preprocess_stream(&src, &c.preprocess, &pre, &row_nnz, &err), NBS_OK);
    const int64_t n = pre->n_cells, block = 10, k = 4;
    int64_t *seq = malloc(sizeof *seq * (size_t)n), *ref = malloc(sizeof *ref * (size_t)n);
    gsl_rng *r = nbs_stream_rng(1, NBS_STREAM_TRAIN, 0, &err);
    for (int64_t i = 0; i < n; i++) seq[i] = (i * 37) % n; /* some split order */

    nbs_backed_loader *l = nbs_backed_loader_new(bk, pre, row_nnz, block, k, 16, &err);
    nbs_batch_source s = nbs_backed_loader_source(l);
    memcpy(ref, seq, sizeof *seq * (size_t)n);
    assert_int_equal(s.order(s.user, seq, n, r, &err), NBS_OK);
    int64_t *sorted = malloc(sizeof *sorted * (size_t)n);
    memcpy(sorted, seq, sizeof *seq * (size_t)n);
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_i64);
    for (int64_t i = 0; i < n; i++) assert_int_equal(sorted[i], i);
    /* runs of k * block cells (full groups) span k blocks exactly */
    int64_t full = 0;
    for (int64_t g0 = 0; g0 + k * block <= n; g0 += k * block, full++) {
        int64_t blocks[4] = {-1, -1, -1, -1}, distinct = 0;
        for (int64_t i = g0; i < g0 + k * block; i++) {
            const int64_t b = seq[i] / block;
            int seen = 0;
            for (int j = 0; j < distinct; j++) seen |= blocks[j] == b;
            if (!seen) {
                assert_true(distinct < k);
                blocks[distinct++] = b;
            }
        }
        assert_int_equal(distinct, k);
    }
    assert_true(full >= 20);
    /* validation: groups in file order, the split's order inside */
    memcpy(seq, ref, sizeof *seq * (size_t)n);
    assert_int_equal(s.order(s.user, seq, n, NULL, &err), NBS_OK);
    for (int64_t i = 1; i < n; i++) assert_true(seq[i] / (block * k) >= seq[i - 1] / (block * k));
    /* minibatches straddling buffers still hold the right cells */
    nbs_cells mb;
    assert_int_equal(s.fetch(s.user, seq, n, 35, 16, &mb, &err), NBS_OK);
    assert_int_equal(mb.n, 16);
    for (int i = 0; i < 16; i++) assert_true(mb.library[i] == pre->library_size[seq[35 + i]]);
    nbs_backed_loader_free(l);

    /* one buffer holding every block: exactly one shuffle of the given order */
    l = nbs_backed_loader_new(bk, pre, row_nnz, 1, n, 16, &err);
    s = nbs_backed_loader_source(l);
    memcpy(seq, ref, sizeof *seq * (size_t)n);
    gsl_rng *r2 = gsl_rng_clone(r);
    assert_int_equal(s.order(s.user, seq, n, r, &err), NBS_OK);
    gsl_ran_shuffle(r2, ref, (size_t)n, sizeof *ref);
    assert_memory_equal(seq, ref, sizeof *seq * (size_t)n);
    nbs_backed_loader_free(l);
    gsl_rng_free(r);
    gsl_rng_free(r2);
    free(seq), free(ref), free(sorted), free(row_nnz);
    nbs_preprocess_result_free(pre);
    nbs_backed_close(bk);
}

/* A run's training: in memory, out of core with blocks of one cell and one buffer for all, and
 * out of core with small blocks and buffers. */
static void run(const char *name, const char *extra) {
    char args[2048];
    snprintf(args, sizeof args, "--quiet run '%s/p.yaml' --out '%s/%s' --set train.epochs=12 "
             "--set train.batch_size=64 --set preprocess.n_top_genes=150 --set diagnose.subsample=300 "
             "%s", dir, dir, name, extra);
    char *out = NULL, *errout = NULL;
    int rc = tu_run_cli(args, &out, &errout);
    if (rc) print_message("%s\n", errout ? errout : "");
    assert_int_equal(rc, 0);
    free(out), free(errout);
}

/* The validation ELBO of a run's last epoch (column 5 of training_log.tsv). */
static double last_val_elbo(const char *name) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s/training_log.tsv", dir, name);
    char *t = tu_read_file(p, NULL);
    assert_non_null(t);
    char *last = t + strlen(t) - 1;
    while (last > t && last[-1] != '\n') last--;
    double v[5];
    assert_int_equal(sscanf(last, "%*d\t%lf\t%lf\t%lf\t%lf\t%lf", &v[0], &v[1], &v[2], &v[3], &v[4]), 5);
    free(t);
    return v[3];
}

/* The files names (NULL-terminated) of runs a and b (folders in dir) byte-identical. */
static void expect_same_files(const char *a, const char *b, const char *const *names) {
    char x[1024], y[1024];
    for (int i = 0; names[i]; i++) {
        snprintf(x, sizeof x, "%s/%s/%s", dir, a, names[i]);
        snprintf(y, sizeof y, "%s/%s/%s", dir, b, names[i]);
        assert_true(tu_same_bytes(x, y));
    }
}

static void expect_same_params(const char *a, const char *b, int same) {
    char pa[1024], pb[1024];
    snprintf(pa, sizeof pa, "%s/%s/model.h5", dir, a);
    snprintf(pb, sizeof pb, "%s/%s/model.h5", dir, b);
    nbs_checkpoint ca, cb;
    nbs_error err = {0};
    assert_int_equal(nbs_checkpoint_load(pa, &ca, &err), NBS_OK);
    assert_int_equal(nbs_checkpoint_load(pb, &cb, &err), NBS_OK);
    float *x, *y;
    int64_t nx, ny;
    nbs_model_flat(ca.model, &x, NULL, NULL, NULL, &nx, NULL, NULL);
    nbs_model_flat(cb.model, &y, NULL, NULL, NULL, &ny, NULL, NULL);
    assert_int_equal(nx, ny);
    assert_int_equal(!memcmp(x, y, sizeof *x * (size_t)nx), same);
    nbs_checkpoint_free(&ca);
    nbs_checkpoint_free(&cb);
}

static void test_training_equals_memory(void **state) {
    (void)state;
    run("mem", "--set input.backed=false");
    run("one", "--set input.backed=true --set input.backed_block=1 --set input.backed_shuffle_blocks=100000");
    run("blocks", "--set input.backed=true --set input.backed_block=16 --set input.backed_shuffle_blocks=4");
    char a[1024], b[1024];
    snprintf(a, sizeof a, "%s/mem/embedding.tsv", dir);
    snprintf(b, sizeof b, "%s/one/embedding.tsv", dir);
    assert_true(tu_same_bytes(a, b)); /* every minibatch and validation pass the same: bit-identical */
    snprintf(a, sizeof a, "%s/mem/genes.tsv", dir);
    snprintf(b, sizeof b, "%s/one/genes.tsv", dir);
    assert_true(tu_same_bytes(a, b));
    expect_same_params("mem", "one", 1);
    /* embedding.h5ad, streamed out of core as a copy of the input: the same obsm and cells */
    nbs_embedding_table ea, eb;
    nbs_error err = {0};
    snprintf(a, sizeof a, "%s/mem/embedding.h5ad", dir);
    snprintf(b, sizeof b, "%s/one/embedding.h5ad", dir);
    assert_int_equal(nbs_io_read_embedding(a, NULL, &ea, &err), NBS_OK);
    assert_int_equal(nbs_io_read_embedding(b, NULL, &eb, &err), NBS_OK);
    assert_int_equal(ea.n, eb.n);
    assert_int_equal(ea.d, eb.d);
    assert_memory_equal(ea.z, eb.z, sizeof(float) * (size_t)(ea.n * ea.d));
    for (int64_t i = 0; i < ea.n; i++) assert_string_equal(ea.barcodes[i], eb.barcodes[i]);
    nbs_embedding_table_free(&ea);
    nbs_embedding_table_free(&eb);
    assert_true(last_val_elbo("mem") == last_val_elbo("one"));
    /* blocks of 16 cells, 4 per buffer (64 cells, one minibatch): another order, another model,
     * a validation ELBO within 1 % of the in-memory run's */
    expect_same_params("mem", "blocks", 0);
    const double m = last_val_elbo("mem"), o = last_val_elbo("blocks");
    print_message("validation ELBO: in memory %.4f, out of core (16-cell blocks, 4 per buffer) %.4f (%.3f %%)\n", m, o,
                  100 * (o - m) / fabs(m));
    assert_true(fabs(o - m) < 0.01 * fabs(m));
}

/* obs column `column` of dir/name/embedding.h5ad, as text, for the cells of m. */
static char **obs_of(const char *name, const char *column, const nbs_matrix *m) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s/embedding.h5ad", dir, name);
    char **v = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_h5ad_obs(p, column, m, &v, &err), NBS_OK);
    return v;
}

/* Out of core with a batch (batch-aware genes, batch dispersion, integration metrics), a continuous
 * covariate, the discrete latent, labels and the trajectory stage, at block 1 and one buffer for all:
 * the in-memory run's genes, model, embedding, categories, integration metrics, label score and
 * trajectory, bit for bit. PCA of the counts (the label score's baseline, the wrap-around diagnostic's
 * reference) is streamed out of core, exact where the in-memory one is randomized: the PCA score within
 * 0.01 and the same wrap-around verdict. The model keeps the batches it saw: one it never saw is
 * refused when embedding. */
static void test_covariates_equal_memory(void **state) {
    (void)state;
    char common[1024];
    snprintf(common, sizeof common, "--set input.path='%s/batched/sim.h5ad' --set input.batch_key=batch "
             "--set input.continuous_covariates=[pseudotime] --set model.discrete=3 --set trajectory.enabled=true "
             "--set input.label_column=branch", dir);
    char extra[2048];
    snprintf(extra, sizeof extra, "%s --set input.backed=false", common);
    run("cmem", extra);
    snprintf(extra, sizeof extra, "%s --set input.backed=true --set input.backed_block=1 "
             "--set input.backed_shuffle_blocks=100000", common);
    run("cone", extra);
    const char *same[] = {"embedding.tsv", "genes.tsv", "integration.tsv", "collapse_categories.tsv", NULL};
    expect_same_files("cmem", "cone", same);
    char a[1024], b[1024];
    expect_same_params("cmem", "cone", 1);
    assert_true(last_val_elbo("cmem") == last_val_elbo("cone"));
    snprintf(a, sizeof a, "%s/cone/embedding.tsv", dir); /* with the discrete latent's columns */
    char *t = tu_read_file(a, NULL);
    assert_non_null(strstr(t, "\tnbsphere_cluster\tnbsphere_cluster_probability\n"));
    free(t);
    /* the label score of the embedding, and of PCA of the counts */
    snprintf(a, sizeof a, "%s/cmem/collapse_report.json", dir);
    snprintf(b, sizeof b, "%s/cone/collapse_report.json", dir);
    char *ja = tu_read_file(a, NULL), *jb = tu_read_file(b, NULL);
    const double ka = tu_json_number(strstr(ja, "\"quality\""), "embedding");
    const double kb = tu_json_number(strstr(jb, "\"quality\""), "embedding");
    print_message("15-NN accuracy of the branches: in memory %.4f, out of core %.4f\n", ka, kb);
    assert_true(ka == kb && ka > 0.25);
    const double pa = tu_json_number(strstr(ja, "\"quality\""), "pca");
    const double pb = tu_json_number(strstr(jb, "\"quality\""), "pca");
    print_message("15-NN accuracy of PCA-10: in memory (randomized) %.4f, out of core (streamed) %.4f\n", pa, pb);
    assert_true(pa > 0.25 && fabs(pa - pb) <= 0.01);
    const char *wa = strstr(ja, "\"wraparound\""), *wb = strstr(jb, "\"wraparound\"");
    assert_non_null(wa);
    assert_non_null(wb);
    const double fa = tu_json_number(wa, "fraction"), fb = tu_json_number(wb, "fraction");
    print_message("wrap-around shortcuts: in memory %.4f, out of core %.4f of the edges\n", fa, fb);
    const char *va = strstr(wa, "\"wraps\": "), *vb = strstr(wb, "\"wraps\": ");
    assert_non_null(va);
    assert_non_null(vb);
    assert_true(strncmp(va, vb, strlen("\"wraps\": false")) == 0);
    assert_true(fabs(fa - fb) <= 0.01);
    free(ja);
    free(jb);
    snprintf(b, sizeof b, "%s/cone/report.html", dir); /* the PCA figure, as in memory */
    char *h = tu_read_file(b, NULL);
    assert_non_null(strstr(h, "PCA of the counts 0."));
    assert_null(strstr(h, "not computed"));
    free(h);
    /* embedding.h5ad (a copy of the input: every cell kept) with the same obs columns */
    nbs_config c;
    nbs_config_defaults(&c);
    snprintf(a, sizeof a, "%s/cmem/embedding.h5ad", dir);
    c.input = input_of(a, NBS_FMT_H5AD);
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read(&c.input, &m, &err), NBS_OK);
    const char *cols[] = {"batch", "nbsphere_cluster", "nbsphere_cluster_probability", "leiden", "dpt_pseudotime"};
    for (int k = 0; k < 5; k++) {
        char **x = obs_of("cmem", cols[k], m), **y = obs_of("cone", cols[k], m);
        for (int64_t i = 0; i < m->n_cells; i++) assert_string_equal(x[i], y[i]);
        nbs_io_free_labels(x, m->n_cells);
        nbs_io_free_labels(y, m->n_cells);
    }
    nbs_matrix_free(m);
    /* a batch the model never saw */
    char args[2048], *errout = NULL;
    snprintf(args, sizeof args, "--quiet embed '%s/cone/model.h5' '%s/batch4/sim.h5ad' --out '%s/e4'", dir, dir, dir);
    assert_int_equal(tu_run_cli(args, NULL, &errout), 3);
    assert_non_null(strstr(errout, "has 'batch4' in column 'batch', a category the model was not trained with; it "
                                   "knows 3: batch1, batch2, batch3"));
    free(errout);
}

/* A 10x input out of core: embedding.h5ad is a new file, written a block of cells at a time, with
 * the counts the model saw and the covariates (from the labels table) as obs columns, as the
 * in-memory writer makes it (blocks of 4096 cells: 5000 cells take two, the second partial, so the
 * second block's covariates and discrete categories come from their offset). */
static void test_new_h5ad_streamed(void **state) {
    (void)state;
    char args[4096];
    snprintf(args, sizeof args, "--quiet simulate --out '%s/tenx' --cells 5000 --genes 200 --seed 2 --format 10x-h5",
             dir);
    assert_int_equal(tu_run_cli(args, NULL, NULL), 0);
    char common[1024];
    snprintf(common, sizeof common, "--set train.epochs=2 --set preprocess.n_top_genes=100 --set preprocess.min_counts=300 "
             "--set input.labels_path='%s/tenx/cell_labels.tsv' --set input.categorical_covariates=[branch] "
             "--set input.continuous_covariates=[pseudotime]", dir);
    for (int run = 0; run < 4; run++) { /* m, b: vMF; dm, db: Gaussian with the discrete latent */
        const int backed = run % 2;
        snprintf(args, sizeof args, "--quiet run '%s/p.yaml' --out '%s/tenx/%s' --set input.path='%s/tenx/sim_10x.h5' "
                 "%s %s --set input.backed=%s --set input.backed_block=1 --set input.backed_shuffle_blocks=100000",
                 dir, dir, (const char *[]){"m", "b", "dm", "db"}[run], dir, common,
                 run < 2 ? "--set model.latent=vmf" : "--set model.discrete=3", backed ? "true" : "false");
        assert_int_equal(tu_run_cli(args, NULL, NULL), 0);
    }
    char a[1024], b[1024];
    snprintf(a, sizeof a, "%s/tenx/dm/embedding.tsv", dir);
    snprintf(b, sizeof b, "%s/tenx/db/embedding.tsv", dir);
    assert_true(tu_same_bytes(a, b)); /* with the category and its probability of every cell */
    nbs_config c;
    nbs_config_defaults(&c);
    nbs_error err = {0};
    nbs_matrix *m[2];
    nbs_embedding_table e[2];
    for (int i = 0; i < 2; i++) {
        snprintf(args, sizeof args, "%s/tenx/%s/embedding.h5ad", dir, i ? "b" : "m");
        c.input = input_of(args, NBS_FMT_H5AD);
        assert_int_equal(nbs_io_read(&c.input, &m[i], &err), NBS_OK);
        assert_int_equal(nbs_io_read_embedding(args, NULL, &e[i], &err), NBS_OK);
        assert_string_equal(e[i].metric, "cosine");
    }
    assert_true(m[0]->n_cells < 5000 && m[0]->n_cells > 4096); /* min_counts removed some */
    tu_expect_same_matrix(m[0], m[1]);
    assert_int_equal(e[0].n, e[1].n);
    assert_memory_equal(e[0].z, e[1].z, sizeof(float) * (size_t)(e[0].n * e[0].d));
    const char *cols[] = {"branch", "pseudotime"};
    for (int k = 0; k < 2; k++) {
        char **x = obs_of("tenx/m", cols[k], m[0]), **y = obs_of("tenx/b", cols[k], m[0]);
        for (int64_t i = 0; i < m[0]->n_cells; i++) assert_string_equal(x[i], y[i]);
        nbs_io_free_labels(x, m[0]->n_cells);
        nbs_io_free_labels(y, m[0]->n_cells);
    }
    for (int i = 0; i < 2; i++) {
        nbs_matrix_free(m[i]);
        nbs_embedding_table_free(&e[i]);
    }
    snprintf(args, sizeof args, "%s/tenx/b", dir);
    assert_int_equal(tu_count_files(args), 10); /* no temporary file left */
}

/* A CSR file written with the given rows (3 cells x 4 genes): its entries as stored. */
static void write_csr(const char *path, const int64_t *indptr, const int32_t *idx, const float *val) {
    nbs_error err = {0};
    nbs_matrix *m = nbs_matrix_new(3, 4, indptr[3], &err);
    memcpy(m->indptr, indptr, sizeof *indptr * 4);
    memcpy(m->indices, idx, sizeof *idx * (size_t)indptr[3]);
    memcpy(m->data, val, sizeof *val * (size_t)indptr[3]);
    assert_int_equal(nbs_matrix_default_names(&m->barcodes, 3, "c", &err), NBS_OK);
    assert_int_equal(nbs_matrix_default_names(&m->gene_names, 4, "g", &err), NBS_OK);
    assert_int_equal(nbs_matrix_default_names(&m->gene_ids, 4, "g", &err), NBS_OK);
    assert_int_equal(nbs_io_write_h5ad(path, NULL, m, 0, NULL, NULL, &err), NBS_OK);
    nbs_matrix_free(m);
}

static int stream(const char *path, nbs_preprocess_result **pre, nbs_error *err) {
    const nbs_input_config in = input_of(path, NBS_FMT_H5AD);
    nbs_config c;
    nbs_config_defaults(&c);
    c.preprocess.n_top_genes = 0;
    nbs_backed *bk = NULL;
    int32_t *row_nnz = NULL;
    int st = nbs_backed_open(&in, NBS_FMT_H5AD, &bk, err);
    const nbs_row_source src = st ? (nbs_row_source){0} : nbs_backed_rows(bk);
    if (!st) st = nbs_preprocess_stream(&src, &c.preprocess, pre, &row_nnz, err);
    free(row_nnz);
    nbs_backed_close(bk);
    return st;
}

/* Rows whose indices are not ascending are sorted (the sums as the in-memory reader's, which
 * sorts too); a gene stored twice, a negative count and a fraction are refused naming the cell. */
static void test_bad_rows(void **state) {
    (void)state;
    const int64_t ptr[4] = {0, 2, 5, 6};
    const int32_t unsorted[6] = {1, 0, 3, 2, 0, 1}, twice[6] = {0, 1, 2, 2, 3, 1};
    const float ok[6] = {1, 2, 3, 4, 5, 6}, negative[6] = {1, 2, 3, -4, 5, 6}, fraction[6] = {1, 2, 3, 4, 5.5f, 6};
    const char *p = tu_path(dir, "bad.h5ad");
    nbs_preprocess_result *pre = NULL;
    nbs_error err = {0};
    write_csr(p, ptr, unsorted, ok);
    assert_int_equal(stream(p, &pre, &err), NBS_OK);
    const double lib[3] = {3, 12, 6};
    assert_memory_equal(pre->library_size, lib, sizeof lib);
    nbs_preprocess_result_free(pre);
    write_csr(p, ptr, twice, ok);
    assert_int_equal(stream(p, &pre, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "cell 2 stores gene 'g3' twice"));
    write_csr(p, ptr, unsorted, negative);
    assert_int_equal(stream(p, &pre, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "negative value -4 at cell 2"));
    write_csr(p, ptr, unsorted, fraction);
    assert_int_equal(stream(p, &pre, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "non-integer value 5.5 at cell 2"));
}

/* dir/<out>: the h5ad dir/<in> with its genes reversed and the first `drop` of them left out (as a
 * sample of another annotation order that lacks genes), or, with prefix, every gene renamed. */
static void write_regened(const char *in_name, const char *out_name, int64_t drop, const char *prefix) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, in_name);
    nbs_input_config in = input_of(p, NBS_FMT_H5AD);
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read(&in, &m, &err), NBS_OK);
    const int64_t G = m->n_genes, H = G - drop;
    nbs_matrix *o = nbs_matrix_new(m->n_cells, H, m->nnz, &err);
    assert_non_null(o);
    int64_t w = 0;
    o->indptr[0] = 0;
    for (int64_t c = 0; c < m->n_cells; c++) { /* reversed columns: each row's entries backwards */
        for (int64_t k = m->indptr[c + 1] - 1; k >= m->indptr[c]; k--)
            if (m->indices[k] >= drop) o->indices[w] = (int32_t)(G - 1 - m->indices[k]), o->data[w++] = m->data[k];
        o->indptr[c + 1] = w;
        o->barcodes[c] = strdup(m->barcodes[c]);
    }
    o->nnz = w;
    for (int64_t j = 0; j < H; j++) {
        char name[256];
        snprintf(name, sizeof name, "%s%s", prefix, m->gene_names[G - 1 - j]);
        o->gene_names[j] = strdup(name);
        snprintf(name, sizeof name, "%s%s", prefix, m->gene_ids[G - 1 - j]);
        o->gene_ids[j] = strdup(name);
    }
    snprintf(p, sizeof p, "%s/%s", dir, out_name);
    assert_int_equal(nbs_io_write_h5ad(p, NULL, o, 0, NULL, NULL, &err), NBS_OK);
    nbs_matrix_free(m);
    nbs_matrix_free(o);
}

/* The barcodes (first column) of dir/name/embedding.tsv, one a line. */
static char *embedded_cells(const char *name) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s/embedding.tsv", dir, name);
    char *t = tu_read_file(p, NULL), *w = t;
    assert_non_null(t);
    for (const char *r = t; *r;) {
        const size_t n = strcspn(r, "\t\n"), line = strcspn(r, "\n");
        const char *next = r + line + (r[line] != '\0');
        memmove(w, r, n), w += n, *w++ = '\n'; /* w + n + 1 <= next: the rest is not overwritten */
        r = next;
    }
    *w = '\0';
    return t;
}

/* A scan's blocks against the in-memory matrix (ctx), row by row. */
static int expect_rows(void *ctx, const nbs_matrix *block, int64_t first, nbs_error *err) {
    (void)err;
    const nbs_matrix *m = ctx;
    for (int64_t r = 0; r < block->n_cells; r++) {
        const int64_t k0 = m->indptr[first + r], len = m->indptr[first + r + 1] - k0, b0 = block->indptr[r];
        assert_int_equal(block->indptr[r + 1] - b0, len);
        assert_memory_equal(block->indices + b0, m->indices + k0, sizeof *m->indices * (size_t)len);
        assert_memory_equal(block->data + b0, m->data + k0, sizeof *m->data * (size_t)len);
    }
    return NBS_OK;
}

/* The samples read out of core are nbs_samples_read's matrix: genes, every row (in one scan over
 * the three files, and in a range that starts inside one file and ends inside another) and the
 * cell names across a file boundary. */
static void no_log(int level, const char *msg, void *user) { (void)user, (void)level, (void)msg; }

static void expect_samples_rows(const nbs_input_config *in) {
    nbs_log_set_handler(no_log, NULL); /* the readers' notes */
    nbs_matrix *m = NULL;
    nbs_backed *bk = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_samples_read(in, &m, &err), NBS_OK);
    assert_int_equal(nbs_backed_open(in, NBS_FMT_AUTO, &bk, &err), NBS_OK);
    assert_int_equal(nbs_backed_n_cells(bk), m->n_cells);
    assert_int_equal(nbs_backed_n_genes(bk), m->n_genes);
    for (int64_t g = 0; g < m->n_genes; g++) {
        assert_string_equal(nbs_backed_gene_names(bk)[g], m->gene_names[g]);
        assert_string_equal(nbs_backed_gene_ids(bk)[g], m->gene_ids[g]);
    }
    nbs_row_source src = nbs_backed_rows(bk);
    assert_int_equal(src.scan(src.user, expect_rows, m, &err), NBS_OK);
    src = nbs_backed_rows_range(bk, 30, 120);
    assert_int_equal(src.n_cells, m->n_cells); /* the range is of the same rows */
    assert_int_equal(src.scan(src.user, expect_rows, m, &err), NBS_OK);
    assert_int_equal(nbs_backed_rows_read(bk), m->n_cells + 90);
    char *names[10];
    assert_int_equal(nbs_backed_barcodes(bk, 45, 10, names, &err), NBS_OK);
    for (int i = 0; i < 10; i++) {
        assert_string_equal(names[i], m->barcodes[45 + i]);
        assert_int_equal(nbs_backed_file_of_row(bk, 45 + i), i < 5 ? 0 : 1);
        free(names[i]);
    }
    assert_non_null(strstr(m->barcodes[50], "-b"));
    nbs_backed_close(bk);
    nbs_matrix_free(m);
    nbs_log_set_handler(NULL, NULL);
}

/* input.samples out of core: three samples of 50 cells (.h5ad, 10x .h5, and an .h5ad with its genes
 * reversed and 30 of them missing, input.join: outer) read as one run of rows. With blocks of one
 * cell and one buffer for all, the in-memory samples run bit for bit (the matched genes and their
 * order, the sample as the batch of batch-aware genes and of the model, integration metrics);
 * with 7-cell blocks (2 of the 22 span a file boundary) 3 to a buffer, every cell embedded once and a
 * model close to it. */
static void test_samples_equal_memory(void **state) {
    (void)state;
    char args[2048];
    for (int i = 1; i <= 3; i++) {
        snprintf(args, sizeof args, "--quiet simulate --out '%s/smp%d' --cells 50 --genes 300 --seed %d --format "
                 "h5ad,10x-h5", dir, i, 20 + i);
        assert_int_equal(tu_run_cli(args, NULL, NULL), 0);
    }
    write_regened("smp3/sim.h5ad", "smp3_rev.h5ad", 30, "");
    nbs_config c;
    nbs_config_defaults(&c);
    const char *paths[3] = {"smp1/sim.h5ad", "smp2/sim_10x.h5", "smp3_rev.h5ad"}, *names[3] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++) {
        nbs_sample *smp = &c.input.samples.items[i];
        snprintf(smp->name, sizeof smp->name, "%s", names[i]);
        snprintf(smp->path, sizeof smp->path, "%s/%s", dir, paths[i]);
    }
    c.input.samples.n = 3;
    c.input.join = NBS_JOIN_OUTER;
    expect_samples_rows(&c.input);
    c.input.join = NBS_JOIN_INNER; /* 270 genes, sample c's order no more */
    expect_samples_rows(&c.input);
    char common[2048];
    snprintf(common, sizeof common, "--set input.path= --set 'input.samples={a: %s/smp1/sim.h5ad, b: "
             "%s/smp2/sim_10x.h5, c: %s/smp3_rev.h5ad}' --set input.join=outer --set train.batch_size=16 "
             "--set diagnose.subsample=100", dir, dir, dir);
    char extra[4096];
    snprintf(extra, sizeof extra, "%s --set input.backed=false", common);
    run("smem", extra);
    snprintf(extra, sizeof extra, "%s --set input.backed=true --set input.backed_block=1 "
             "--set input.backed_shuffle_blocks=100000", common);
    run("sone", extra);
    snprintf(extra, sizeof extra, "%s --set input.backed=true --set input.backed_block=7 "
             "--set input.backed_shuffle_blocks=3", common);
    run("sblk", extra);
    const char *same[] = {"embedding.tsv", "genes.tsv", "integration.tsv", NULL};
    expect_same_files("smem", "sone", same);
    char a[1024];
    expect_same_params("smem", "sone", 1);
    assert_true(last_val_elbo("smem") == last_val_elbo("sone"));
    /* the union of the genes (300: sample c's 270 are among them), the sample as the model's batch */
    snprintf(a, sizeof a, "%s/sone/model.h5", dir);
    nbs_checkpoint ck;
    nbs_error err = {0};
    assert_int_equal(nbs_checkpoint_load(a, &ck, &err), NBS_OK);
    assert_true(ck.covariates.has_batch);
    assert_int_equal(ck.covariates.categorical[0].n_categories, 3);
    assert_string_equal(ck.covariates.categorical[0].categories[2], "c");
    nbs_checkpoint_free(&ck);
    /* blocks across the files: the same cells, each once, in the same order, and a close model */
    char *ca = embedded_cells("smem"), *cb = embedded_cells("sblk");
    assert_string_equal(ca, cb);
    assert_non_null(strstr(ca, "-a\n"));
    assert_non_null(strstr(ca, "-c\n"));
    free(ca), free(cb);
    expect_same_params("smem", "sblk", 0);
    const double m = last_val_elbo("smem"), o = last_val_elbo("sblk");
    print_message("validation ELBO, 3 samples: in memory %.4f, out of core (7-cell blocks, 3 per buffer) %.4f "
                  "(%.3f %%)\n", m, o, 100 * (o - m) / fabs(m));
    assert_true(fabs(o - m) < 0.05 * fabs(m)); /* in memory, train.seed 1, 2, 3 give -188, -199, -182 */
    /* the in-memory reader's refusals, word for word: no gene in common (join inner) */
    write_regened("smp3/sim.h5ad", "smp3_other.h5ad", 0, "x");
    char *e_mem = NULL, *e_bk = NULL;
    snprintf(args, sizeof args, "--quiet run '%s/p.yaml' --out '%s/x' --set input.path= --set 'input.samples={a: "
             "%s/smp1/sim.h5ad, o: %s/smp3_other.h5ad}' --set input.backed=false", dir, dir, dir, dir);
    assert_int_equal(tu_run_cli(args, NULL, &e_mem), 3);
    snprintf(args, sizeof args, "--quiet run '%s/p.yaml' --out '%s/x' --set input.path= --set 'input.samples={a: "
             "%s/smp1/sim.h5ad, o: %s/smp3_other.h5ad}' --set input.backed=true", dir, dir, dir, dir);
    assert_int_equal(tu_run_cli(args, NULL, &e_bk), 3);
    assert_non_null(strstr(e_mem, "input.samples: no gene is in every sample ("));
    assert_string_equal(e_mem, e_bk);
    free(e_mem), free(e_bk);
    /* a sample out-of-core reading cannot take */
    snprintf(args, sizeof args, "--quiet simulate --out '%s/smpm' --cells 50 --genes 300 --seed 9", dir);
    assert_int_equal(tu_run_cli(args, NULL, NULL), 0);
    snprintf(args, sizeof args, "--quiet run '%s/p.yaml' --out '%s/x' --set input.backed=true --set input.path= "
             "--set 'input.samples={a: %s/smp1/sim.h5ad, m: %s/smpm/sim_mtx}'", dir, dir, dir, dir);
    assert_int_equal(tu_run_cli(args, NULL, &e_bk), 2);
    assert_non_null(strstr(e_bk, "input.samples 'm' ("));
    assert_non_null(strstr(e_bk, "is 10x-mtx: set input.backed: false (or auto)"));
    free(e_bk);
}

/* What out of core refuses, with the key to change; a batch column the file lacks is bad input. */
static void test_refusals(void **state) {
    (void)state;
    char args[2048], *errout = NULL;
    snprintf(args, sizeof args, "--quiet run '%s/p.yaml' --out '%s/x' --set input.backed=true "
             "--set input.batch_key=donor", dir, dir);
    assert_int_equal(tu_run_cli(args, NULL, &errout), 3);
    assert_non_null(strstr(errout, "input.batch_key 'donor': "));
    assert_non_null(strstr(errout, "obs has no column 'donor'; it has: "));
    free(errout);
    nbs_config c;
    nbs_config_defaults(&c);
    c.input.backed = 1;
    int backed = 0;
    char why[256];
    nbs_error err = {0};
    assert_int_equal(nbs_backed_decide(&c.input, NBS_FMT_MTX, &backed, why, &err), NBS_ERR_USAGE);
    assert_non_null(strstr(err.msg, "input.backed: false"));
    /* auto: a limit of 1 MB sends a 3000-cell file (about 2.5 MB in memory) out of core */
    snprintf(args, sizeof args, "--quiet simulate --out '%s/big' --cells 3000 --genes 300 --format h5ad", dir);
    assert_int_equal(tu_run_cli(args, NULL, NULL), 0);
    snprintf(args, sizeof args, "%s/big/sim.h5ad", dir);
    c.input = input_of(args, NBS_FMT_H5AD);
    c.input.memory_limit = 1;
    assert_int_equal(nbs_backed_decide(&c.input, NBS_FMT_H5AD, &backed, why, &err), NBS_OK);
    assert_int_equal(backed, 1);
    assert_non_null(strstr(why, "out of core"));
    c.input.memory_limit = 1000;
    assert_int_equal(nbs_backed_decide(&c.input, NBS_FMT_H5AD, &backed, why, &err), NBS_OK);
    assert_int_equal(backed, 0);
    /* the label score's PCA holds a gene x gene covariance out of core: 300 genes take 1.3 MB, more
     * than a 1 MB limit, refused before training (no training log), naming the genes and the key */
    snprintf(args, sizeof args, "--quiet train '%s/big/sim.h5ad' --out '%s/pca_mem' --set input.backed=true "
             "--set input.memory_limit=1 --set input.labels_path='%s/big/cell_labels.tsv' "
             "--set input.label_column=branch --set preprocess.n_top_genes=0", dir, dir, dir);
    errout = NULL;
    assert_int_equal(tu_run_cli(args, NULL, &errout), 2);
    assert_non_null(errout);
    assert_non_null(strstr(errout, "the PCA of the counts that the label score (input.label_column) needs takes 1.3 MB "
                                   "for the covariance of the 300 chosen genes, more than input.memory_limit (1 MB)"));
    free(errout);
    snprintf(args, sizeof args, "%s/pca_mem/training_log.tsv", dir);
    assert_false(tu_exists(args));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_h5ad),
        cmocka_unit_test(test_stream_10x),
        cmocka_unit_test(test_stream_batched),
        cmocka_unit_test(test_block_order),
        cmocka_unit_test(test_training_equals_memory),
        cmocka_unit_test(test_covariates_equal_memory),
        cmocka_unit_test(test_new_h5ad_streamed),
        cmocka_unit_test(test_samples_equal_memory),
        cmocka_unit_test(test_bad_rows),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
