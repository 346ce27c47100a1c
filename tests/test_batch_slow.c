/* Batch correction on simulated batches: `nbsphere simulate --batches 3` data (3000 cells,
 * 500 genes, 3 branches) trained without and with input.batch_key: batch, for seeds 0-2. With
 * the key the cells' 15 nearest neighbours mix the batches clearly more, and the branches stay
 * as well predicted (15-NN accuracy, nbs_eval_knn_accuracy). */
#include "testutil.h"

#include <gsl/gsl_rng.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/evaluate.h"

enum { CELLS = 3000, BATCHES = 3, K = 15, SEEDS = 3 };
#define EPOCHS 80

/* cell_labels.tsv: branch[CELLS] and batch[CELLS] codes (branch: 0 root, 1.. branches; batch:
 * 0-based), indexed by the barcode's number SIM%07d-1 minus one. */
static void read_truth(const char *path, int32_t *branch, int32_t *batch) {
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[256];
    assert_non_null(fgets(line, sizeof line, f));
    assert_string_equal(line, "barcode\tbranch\tpseudotime\tbatch\n");
    int n = 0, cell, br, bt;
    char name[32];
    while (fgets(line, sizeof line, f)) {
        assert_int_equal(sscanf(line, "SIM%7d-1\t%31s\t%*f\tbatch%d", &cell, name, &bt), 3);
        assert_true(cell >= 1 && cell <= CELLS && bt >= 1 && bt <= BATCHES);
        br = strcmp(name, "root") ? atoi(name + strlen("branch")) : 0;
        branch[cell - 1] = br;
        batch[cell - 1] = bt - 1;
        n++;
    }
    fclose(f);
    assert_int_equal(n, CELLS);
}

/* embedding.tsv (barcode, dim1..dimd) into z[n x d] row-major and cell[n] (0-based cell
 * numbers); returns n (the run may have filtered cells). */
static int read_embedding(const char *path, float *z, int *cell, int *d) {
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[4096];
    assert_non_null(fgets(line, sizeof line, f));
    *d = 0;
    for (char *p = line; (p = strstr(p, "\tdim")); p++) (*d)++;
    assert_true(*d >= 1 && *d <= 64);
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        assert_true(n < CELLS);
        char *p;
        cell[n] = (int)strtol(line + 3, &p, 10) - 1; /* "SIM" */
        p = strchr(p, '\t');
        for (int j = 0; j < *d; j++) {
            assert_non_null(p);
            z[(size_t)n * *d + j] = strtof(p + 1, &p);
        }
        n++;
    }
    fclose(f);
    return n;
}

/* Mean over cells of the share of its K nearest neighbours (Euclidean, itself excluded) from
 * another batch; batch[n] per embedding row. Brute force: n^2 d for 3000 cells is instant. */
static double batch_mixing(const float *z, int n, int d, const int32_t *batch) {
    double *dist = malloc(sizeof(double) * (size_t)n); /* [n] distances from cell i */
    int *nn = malloc(sizeof(int) * (size_t)n);          /* [n] candidate order, first K sorted */
    assert_true(dist && nn);
    double total = 0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int k = 0; k < d; k++) {
                const double e = (double)z[(size_t)i * d + k] - z[(size_t)j * d + k];
                s += e * e;
            }
            dist[j] = j == i ? 1e300 : s;
            nn[j] = j;
        }
        /* partial selection sort: the K smallest to the front */
        int other = 0;
        for (int a = 0; a < K; a++) {
            int best = a;
            for (int j = a + 1; j < n; j++)
                if (dist[nn[j]] < dist[nn[best]]) best = j;
            const int t = nn[a];
            nn[a] = nn[best];
            nn[best] = t;
            other += batch[nn[a]] != batch[i];
        }
        total += (double)other / K;
    }
    free(dist);
    free(nn);
    return total / n;
}

/* Trains on dir/sim_mtx (with batch_key or not) and measures branch accuracy and mixing. */
static void train_and_measure(const char *dir, int seed, int with_key, const int32_t *branch, const int32_t *batch,
                              double *accuracy, double *mixing) {
    char out[4200], args[16384];
    snprintf(out, sizeof out, "%s", tu_path(dir, with_key ? "with_key" : "without"));
    snprintf(args, sizeof args, "train '%s/sim_mtx' --out '%s' --epochs %d --set train.seed=%d%s%s%s", dir, out,
             EPOCHS, seed, with_key ? " --set input.labels_path='" : "", with_key ? tu_path(dir, "cell_labels.tsv") : "",
             with_key ? "' --set input.batch_key=batch" : "");
    char *errout = NULL;
    const int rc = tu_run_cli(args, NULL, &errout);
    if (rc) print_message("%s\n", errout ? errout : "");
    assert_int_equal(rc, 0);
    free(errout);
    float *z = malloc(sizeof(float) * CELLS * 64);
    int *cell = malloc(sizeof(int) * CELLS);
    int32_t *br = malloc(sizeof(int32_t) * CELLS), *bt = malloc(sizeof(int32_t) * CELLS); /* per row */
    assert_true(z && cell && br && bt);
    int d;
    const int n = read_embedding(tu_path(out, "embedding.tsv"), z, cell, &d);
    assert_true(n > CELLS * 9 / 10);
    for (int i = 0; i < n; i++) {
        br[i] = branch[cell[i]];
        bt[i] = batch[cell[i]];
    }
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 1);
    nbs_error err = {0};
    assert_int_equal(nbs_eval_knn_accuracy(z, n, d, br, K, 5, NBS_METRIC_EUCLIDEAN, r, accuracy, NULL, &err), NBS_OK);
    gsl_rng_free(r);
    *mixing = batch_mixing(z, n, d, bt);
    free(z);
    free(cell);
    free(br);
    free(bt);
}

static void test_batch_key_mixes_batches(void **state) {
    (void)state;
    int32_t *branch = malloc(sizeof(int32_t) * CELLS), *batch = malloc(sizeof(int32_t) * CELLS);
    assert_true(branch && batch);
    for (int seed = 0; seed < SEEDS; seed++) {
        char *dir = tu_tmpdir();
        char args[8192];
        snprintf(args, sizeof args, "simulate --out '%s' --cells %d --genes 500 --batches %d --seed %d", dir, CELLS,
                 BATCHES, seed);
        assert_int_equal(tu_run_cli(args, NULL, NULL), 0);
        read_truth(tu_path(dir, "cell_labels.tsv"), branch, batch);
        double acc0, mix0, acc1, mix1;
        train_and_measure(dir, seed, 0, branch, batch, &acc0, &mix0);
        train_and_measure(dir, seed, 1, branch, batch, &acc1, &mix1);
        print_message("seed %d: branch %d-NN accuracy %.3f without the batch key, %.3f with; batch mixing %.3f "
                      "without, %.3f with (2/3 = perfectly mixed)\n", seed, K, acc0, acc1, mix0, mix1);
        assert_true(mix1 > mix0 + 0.3); /* measured: +0.62 to +0.64 over seeds 0-2 */
        assert_true(acc1 > acc0 - 0.05);
        tu_rmtree(dir);
        free(dir);
    }
    free(branch);
    free(batch);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_batch_key_mixes_batches)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
