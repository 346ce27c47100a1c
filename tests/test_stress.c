/* Numerics under stress, through the CLI: cells left with no counts after gene selection, genes
 * never expressed, a minibatch of one cell, a count of a million, extreme dispersion. Each run
 * must finish (exit 0) and no output file may hold a NaN or an infinity. A numerical stop
 * (exit 4) is not accepted: these are quirks of real data, not a diverging configuration, and
 * training survives every one of them (seeds 0-39 with these settings and 40 epochs for seeds
 * 0-5, gcc and clang, native and portable builds; seeds 0-19 under AddressSanitizer), so a
 * stop here is a regression. */
#include "testutil.h"

#include <ctype.h>
#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/checkpoint.h"

enum { N_CELLS = 65, N_GENES = 30 };

/* A small deterministic generator, so the fixtures need no files. */
static uint64_t lcg(uint64_t *s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

typedef double (*count_fn)(int cell, int gene, uint64_t *rng);

/* Writes a 10x-layout MTX (genes x cells) of count(cell, gene); returns the path (static, valid
 * until the next call). */
static const char *write_mtx(const char *dir, const char *name, count_fn count) {
    static double v[N_CELLS][N_GENES];
    uint64_t rng = 42;
    int nnz = 0;
    for (int c = 0; c < N_CELLS; c++)
        for (int g = 0; g < N_GENES; g++) nnz += (v[c][g] = count(c, g, &rng)) != 0;
    size_t cap = 64 + (size_t)nnz * 48, len = 0;
    char *text = malloc(cap);
    assert_non_null(text);
    len += (size_t)snprintf(text + len, cap - len, "%%%%MatrixMarket matrix coordinate integer general\n%d %d %d\n",
                            N_GENES, N_CELLS, nnz);
    for (int c = 0; c < N_CELLS; c++)
        for (int g = 0; g < N_GENES; g++)
            if (v[c][g] != 0) len += (size_t)snprintf(text + len, cap - len, "%d %d %.0f\n", g + 1, c + 1, v[c][g]);
    static char path[PATH_MAX]; /* tu_path's buffers rotate: keep our own */
    snprintf(path, sizeof path, "%s", tu_path(dir, name));
    assert_int_equal(tu_write_file(path, text), 0);
    free(text);
    return path;
}

static double base(int c, int g, uint64_t *rng) {
    (void)c;
    return (double)(lcg(rng) % (unsigned)(2 + g % 5)); /* 0..5, genes of several variances */
}

/* Cells 0-9 express only genes 0-4, which barely vary, so gene selection drops all they have. */
static double zero_after_selection(int c, int g, uint64_t *rng) {
    if (g < 5) return 1;
    if (c < 10) return 0;
    return (double)(lcg(rng) % 8) * (g % 3 == 0 ? 3 : 1);
}

static double never_expressed(int c, int g, uint64_t *rng) {
    return g >= N_GENES - 5 ? 0 : base(c, g, rng);
}

static double huge_count(int c, int g, uint64_t *rng) {
    return c == 3 && g == 7 ? 1e6 : base(c, g, rng);
}

/* Counts of 0 or 50000 for a third of the genes: a dispersion near zero. */
static double extreme_dispersion(int c, int g, uint64_t *rng) {
    if (g % 3 == 0) return lcg(rng) % 10 == 0 ? 50000 : 0;
    return base(c, g, rng);
}

/* Fails if a text file holds "nan" or "inf" as a word (any case). */
static void assert_no_nonfinite_text(const char *path) {
    char *t = tu_read_file(path, NULL);
    if (!t) return;
    for (char *p = t; *p; p++) {
        if (p != t && isalnum((unsigned char)p[-1])) continue;
        int bad = (!strncasecmp(p, "nan", 3) || !strncasecmp(p, "inf", 3)) && !isalpha((unsigned char)p[3]);
        if (bad) print_message("%s: non-finite value near '%.40s'\n", path, p);
        assert_false(bad);
    }
    free(t);
}

static void assert_outputs_finite(const char *out) {
    DIR *d = opendir(out);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n > 4 && (!strcmp(e->d_name + n - 4, ".tsv") || !strcmp(e->d_name + n - 5, ".json")))
            assert_no_nonfinite_text(tu_path(out, e->d_name));
    }
    closedir(d);
    char model[PATH_MAX];
    snprintf(model, sizeof model, "%s/model.h5", out);
    if (!tu_exists(model)) return;
    nbs_checkpoint ck;
    nbs_error err = {0};
    if (nbs_checkpoint_load(model, &ck, &err)) fail_msg("%s", err.msg);
    float *p;
    nbs_model_flat(ck.model, &p, NULL, NULL, NULL, NULL, NULL, NULL);
    int64_t n = nbs_model_n_params(ck.model);
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(p[i])) print_message("%s: parameter %lld is %g\n", model, (long long)i, p[i]);
        assert_true(isfinite(p[i]));
    }
    nbs_checkpoint_free(&ck);
}

/* Trains on data with extra options: exit 0 with the embedding written. Minibatches of 16 (unless
 * extra says otherwise) give the optimiser 16 steps on the stressed data, not one per epoch. */
static void train_survives(const char *data, const char *extra, const char *label) {
    char *dir = tu_tmpdir();
    char args[3 * PATH_MAX];
    char out[PATH_MAX];
    snprintf(out, sizeof out, "%s", tu_path(dir, "out"));
    snprintf(args, sizeof args, "train '%s' --out '%s' --epochs 4 --batch-size 16 --seed 2 --set train.threads=1 %s",
             data, out, extra);
    char *o = NULL, *e = NULL;
    int rc = tu_run_cli(args, &o, &e);
    if (rc != 0) print_message("%s: exit %d (training must survive this)\n%s\n", label, rc, e ? e : "");
    assert_int_equal(rc, 0);
    assert_true(tu_exists(tu_path(out, "embedding.tsv")));
    assert_outputs_finite(out);
    free(o);
    free(e);
    tu_rmtree(dir);
    free(dir);
}

static void test_zero_count_cells_after_selection(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    train_survives(write_mtx(dir, "zsel.mtx", zero_after_selection), "--set preprocess.n_top_genes=10", "zero cells");
    tu_rmtree(dir);
    free(dir);
}

static void test_genes_never_expressed(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    train_survives(write_mtx(dir, "never.mtx", never_expressed),
                   "--set preprocess.min_cells=0 --set preprocess.n_top_genes=0", "never expressed");
    tu_rmtree(dir);
    free(dir);
}

static void test_single_cell_minibatch(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    const char *p = write_mtx(dir, "one.mtx", base);
    /* 65 cells, a tenth held out: minibatches of 8 leave one cell over; then batches of one */
    train_survives(p, "--batch-size 8 --set preprocess.n_top_genes=0", "last batch of one");
    train_survives(p, "--batch-size 1 --set preprocess.n_top_genes=0", "batches of one");
    tu_rmtree(dir);
    free(dir);
}

static void test_huge_count(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    const char *p = write_mtx(dir, "huge.mtx", huge_count);
    train_survives(p, "--set preprocess.n_top_genes=0", "1e6 count");
    train_survives(p, "--set preprocess.n_top_genes=0 --lr 0.05", "1e6 count, large steps");
    tu_rmtree(dir);
    free(dir);
}

static void test_extreme_dispersion(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    const char *p = write_mtx(dir, "disp.mtx", extreme_dispersion);
    train_survives(p, "--set preprocess.n_top_genes=0", "extreme dispersion");
    train_survives(p, "--set preprocess.n_top_genes=0 --set model.likelihood=zinb", "extreme dispersion, zinb");
    tu_rmtree(dir);
    free(dir);
}

/* Three cells leave none for validation: the log says NA, not nan. */
static void test_no_validation_cells(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", tu_path(dir, "three.tsv"));
    assert_int_equal(tu_write_file(path, "cell\tg1\tg2\tg3\nc1\t1\t2\t0\nc2\t1\t3\t5\nc3\t0\t4\t1\n"), 0);
    train_survives(path, "", "three cells");
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zero_count_cells_after_selection),
        cmocka_unit_test(test_genes_never_expressed),
        cmocka_unit_test(test_single_cell_minibatch),
        cmocka_unit_test(test_huge_count),
        cmocka_unit_test(test_extreme_dispersion),
        cmocka_unit_test(test_no_validation_cells),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
