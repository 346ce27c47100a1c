#include "testutil.h"

#include <gsl/gsl_rng.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/io.h"
#include "nbsphere/simulate.h"

static gsl_rng *rng_with(unsigned long seed) {
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, seed);
    return r;
}

static nbs_sim_data small(unsigned long seed, int64_t cells, int64_t genes) {
    nbs_sim_config c;
    nbs_sim_defaults(&c);
    c.n_cells = cells;
    c.n_genes = genes;
    gsl_rng *r = rng_with(seed);
    nbs_sim_data d;
    nbs_error err = {0};
    int st = nbs_simulate(&c, r, &d, &err);
    if (st) print_message("%s\n", err.msg);
    assert_int_equal(st, NBS_OK);
    gsl_rng_free(r);
    return d;
}

/* One NB(mean 3, theta 2) draw: mean 3, variance 3 + 9/2 = 7.5. */
static void test_nb_moments(void **state) {
    (void)state;
    gsl_rng *r = rng_with(1);
    const int n = 400000;
    double s = 0, s2 = 0;
    for (int i = 0; i < n; i++) {
        double x = nbs_sim_nb(r, 3.0, 2.0);
        s += x;
        s2 += x * x;
    }
    double mean = s / n, var = s2 / n - mean * mean;
    /* sd of the mean is sqrt(7.5/n) = 0.0043; of the variance about 0.05 */
    assert_true(fabs(mean - 3.0) < 0.02);
    assert_true(fabs(var - 7.5) < 0.25);
    assert_int_equal(nbs_sim_nb(r, 0.0, 2.0), 0);
    gsl_rng_free(r);
}

/* Every entry against its own NB mean and variance: Pearson residuals have mean 0, variance 1. */
static void test_counts_follow_their_nb(void **state) {
    (void)state;
    nbs_sim_data d = small(7, 1000, 500);
    const nbs_matrix *m = d.counts;
    double *lr = malloc(sizeof(double) * (size_t)m->n_genes);
    double sr = 0, sr2 = 0, zeros = 0;
    for (int64_t i = 0; i < m->n_cells; i++) {
        nbs_sim_cell_log_rho(&d, i, lr);
        double tot = 0;
        for (int64_t g = 0; g < m->n_genes; g++) tot += exp(lr[g]);
        assert_true(fabs(tot - 1) < 1e-9);
        int64_t k = m->indptr[i];
        for (int64_t g = 0; g < m->n_genes; g++) {
            double x = 0;
            if (k < m->indptr[i + 1] && m->indices[k] == g) x = m->data[k++];
            double mu = d.library[i] * exp(lr[g]);
            double r = (x - mu) / sqrt(mu + mu * mu / d.theta[g]);
            sr += r;
            sr2 += r * r;
            zeros += x == 0;
        }
    }
    double n = (double)m->n_cells * (double)m->n_genes;
    print_message("pearson mean %.4f var %.4f zeros %.3f\n", sr / n, sr2 / n, zeros / n);
    assert_true(fabs(sr / n) < 0.01);
    assert_true(fabs(sr2 / n - 1) < 0.05);
    /* sparse like real droplet data */
    assert_true(zeros / n > 0.7);
    free(lr);
    nbs_sim_data_free(&d);
}

/* Library sizes are log-normal around the configured depth; most genes are mostly zeros. */
static void test_depth_and_sparsity(void **state) {
    (void)state;
    nbs_sim_data d = small(3, 2000, 1000);
    const nbs_matrix *m = d.counts;
    double slog = 0;
    for (int64_t i = 0; i < m->n_cells; i++) slog += log(d.library[i]);
    assert_true(fabs(exp(slog / (double)m->n_cells) - 600) < 20);
    /* observed totals track the drawn library sizes */
    double *rs = malloc(sizeof(double) * (size_t)m->n_cells);
    nbs_matrix_row_sums(m, rs);
    double ratio = 0;
    for (int64_t i = 0; i < m->n_cells; i++) ratio += rs[i] / d.library[i];
    assert_true(fabs(ratio / (double)m->n_cells - 1) < 0.05);
    int *cells_with = calloc((size_t)m->n_genes, sizeof(int));
    for (int64_t k = 0; k < m->nnz; k++) cells_with[m->indices[k]]++;
    int sparse_genes = 0;
    for (int64_t g = 0; g < m->n_genes; g++) sparse_genes += cells_with[g] < 0.1 * (double)m->n_cells;
    print_message("genes with >= 90%% zeros: %d of %lld\n", sparse_genes, (long long)m->n_genes);
    assert_true(sparse_genes > m->n_genes / 3);
    assert_true(m->values_are_integer);
    free(cells_with);
    free(rs);
    nbs_sim_data_free(&d);
}

/* Late cells of different branches differ: a nearest-centroid classifier trained on half the
 * late cells (log1p of counts per 10k) labels the other half correctly. */
static void test_branches_distinguishable(void **state) {
    (void)state;
    nbs_sim_data d = small(11, 2000, 1000);
    const nbs_matrix *m = d.counts;
    int B = d.config.n_branches;
    int64_t G = m->n_genes;
    double *cent = calloc((size_t)(B + 1) * (size_t)G, sizeof(double));
    int ncent[8] = {0};
    double *rs = malloc(sizeof(double) * (size_t)m->n_cells);
    double *row = malloc(sizeof(double) * (size_t)G);
    nbs_matrix_row_sums(m, rs);
    int counts_branch[8] = {0};
    for (int pass = 0; pass < 2; pass++) {
        int right = 0, total = 0;
        for (int64_t i = 0; i < m->n_cells; i++) {
            if (d.pseudotime[i] < 0.7) continue;
            if (pass == 0) counts_branch[d.branch[i]]++;
            if ((i % 2) != pass) continue;
            memset(row, 0, sizeof(double) * (size_t)G);
            for (int64_t k = m->indptr[i]; k < m->indptr[i + 1]; k++)
                row[m->indices[k]] = log1p(m->data[k] * 1e4 / rs[i]);
            if (pass == 0) {
                for (int64_t g = 0; g < G; g++) cent[d.branch[i] * G + g] += row[g];
                ncent[d.branch[i]]++;
                continue;
            }
            int best = -1;
            double bd = INFINITY;
            for (int b = 1; b <= B; b++) {
                double dist = 0;
                for (int64_t g = 0; g < G; g++) {
                    double e = row[g] - cent[b * G + g] / ncent[b];
                    dist += e * e;
                }
                if (dist < bd) bd = dist, best = b;
            }
            right += best == d.branch[i];
            total++;
        }
        if (pass == 1) {
            print_message("late cells classified by branch: %d of %d\n", right, total);
            assert_true(total > 200);
            assert_true(right > 0.95 * total);
        }
    }
    assert_int_equal(counts_branch[0], 0); /* no root cells after the split */
    for (int b = 1; b <= B; b++) assert_true(counts_branch[b] > 100);
    free(cent);
    free(rs);
    free(row);
    nbs_sim_data_free(&d);
}

static void test_seed_reproduces(void **state) {
    (void)state;
    nbs_sim_data a = small(5, 300, 200), b = small(5, 300, 200), c = small(6, 300, 200);
    assert_int_equal(a.counts->nnz, b.counts->nnz);
    assert_memory_equal(a.counts->indices, b.counts->indices, (size_t)a.counts->nnz * sizeof(int32_t));
    assert_memory_equal(a.counts->data, b.counts->data, (size_t)a.counts->nnz * sizeof(float));
    assert_memory_equal(a.pseudotime, b.pseudotime, 300 * sizeof(double));
    assert_true(a.counts->nnz != c.counts->nnz ||
                memcmp(a.counts->data, c.counts->data, (size_t)a.counts->nnz * sizeof(float)));
    nbs_sim_data_free(&a);
    nbs_sim_data_free(&b);
    nbs_sim_data_free(&c);
}

static void test_labels_file(void **state) {
    (void)state;
    nbs_sim_data d = small(2, 50, 20);
    char *dir = tu_tmpdir();
    nbs_error err = {0};
    assert_int_equal(nbs_sim_write_labels(&d, dir, &err), NBS_OK);
    char *text = tu_read_file(tu_path(dir, "cell_labels.tsv"), NULL);
    assert_non_null(text);
    assert_int_equal(strncmp(text, "barcode\tbranch\tpseudotime\nSIM0000001-1\t", 39), 0);
    int lines = 0;
    for (char *p = text; *p; p++) lines += *p == '\n';
    assert_int_equal(lines, 51);
    assert_int_equal(tu_count_files(dir), 1); /* no temporary file left */
    free(text);
    assert_int_equal(nbs_sim_write_labels(&d, tu_path(dir, "missing/sub"), &err), NBS_ERR_IO);
    tu_rmtree(dir);
    free(dir);
    nbs_sim_data_free(&d);
}

/* The truth lands in an anndata-made .h5ad as obs columns that anndata reads back. */
static void test_h5ad_obs_columns(void **state) {
    (void)state;
    if (system("/usr/bin/python3 -c 'import anndata' 2>/dev/null") != 0) {
        print_message("SKIP: /usr/bin/python3 with anndata is not installed\n");
        skip();
    }
    nbs_sim_data d = small(4, 40, 10);
    char *dir = tu_tmpdir();
    char path[4200], cmd[9000];
    snprintf(path, sizeof path, "%s", tu_path(dir, "t.h5ad"));
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c \"import anndata, numpy as np, pandas as pd; "
             "a = anndata.AnnData(X=np.zeros((40, 3), dtype=np.float32), "
             "obs=pd.DataFrame({'n': np.arange(40)}, index=['c%%d' %% i for i in range(40)])); "
             "a.write_h5ad('%s')\"", path);
    assert_int_equal(system(cmd), 0);
    nbs_error err = {0};
    int st = nbs_sim_add_h5ad_obs(&d, path, &err);
    if (st) print_message("%s\n", err.msg);
    assert_int_equal(st, NBS_OK);
    /* anndata prints branch counts and the first pseudotime; compare with ours */
    int counts[8] = {0};
    for (int i = 0; i < 40; i++) counts[d.branch[i]]++;
    char want[256];
    snprintf(want, sizeof want, "n,branch,pseudotime %d %d %d %d %.6f", counts[0], counts[1],
             counts[2], counts[3], d.pseudotime[0]);
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c \"import anndata; a = anndata.read_h5ad('%s'); o = a.obs; "
             "vc = o['branch'].value_counts(); "
             "print(','.join(o.columns), *[vc.get(k, 0) for k in ['root', 'branch1', 'branch2', 'branch3']], "
             "'%%.6f' %% o['pseudotime'].iloc[0])\" > '%s'", path, tu_path(dir, "out.txt"));
    assert_int_equal(system(cmd), 0);
    char *got = tu_read_file(tu_path(dir, "out.txt"), NULL);
    assert_non_null(got);
    if (!strstr(got, want)) print_message("anndata says '%s', expected '%s'\n", got, want);
    assert_non_null(strstr(got, want));
    free(got);
    /* a second time fails cleanly: the columns exist */
    assert_int_equal(nbs_sim_add_h5ad_obs(&d, path, &err), NBS_ERR_IO);
    tu_rmtree(dir);
    free(dir);
    nbs_sim_data_free(&d);
}

/* The MTX folder reads back through the 10x folder reader, entry for entry, and the same data
 * give the same bytes. */
static void test_mtx_folder_round_trip(void **state) {
    (void)state;
    nbs_sim_data d = small(8, 120, 60);
    char *dir = tu_tmpdir();
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s", tu_path(dir, "a"));
    snprintf(b, sizeof b, "%s", tu_path(dir, "b"));
    nbs_error err = {0};
    assert_int_equal(nbs_sim_write_mtx_dir(&d, a, &err), NBS_OK);
    assert_int_equal(nbs_sim_write_mtx_dir(&d, b, &err), NBS_OK);
    assert_int_equal(tu_count_files(a), 3);
    nbs_matrix *m = NULL;
    int st = nbs_io_read_10x_mtx_dir(a, &m, &err);
    if (st) print_message("%s\n", err.msg);
    assert_int_equal(st, NBS_OK);
    assert_int_equal(m->n_cells, 120);
    assert_int_equal(m->n_genes, 60);
    assert_int_equal(m->nnz, d.counts->nnz);
    assert_memory_equal(m->indptr, d.counts->indptr, 121 * sizeof(int64_t));
    assert_memory_equal(m->indices, d.counts->indices, (size_t)m->nnz * sizeof(int32_t));
    assert_memory_equal(m->data, d.counts->data, (size_t)m->nnz * sizeof(float));
    assert_string_equal(m->barcodes[119], d.counts->barcodes[119]);
    assert_string_equal(m->gene_ids[59], "SIMG000060");
    assert_string_equal(m->gene_names[59], "Gene60");
    nbs_matrix_free(m);
    const char *files[] = {"matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz"};
    for (int i = 0; i < 3; i++) {
        size_t na, nb;
        char *x = tu_read_file(tu_path(a, files[i]), &na);
        char *y = tu_read_file(tu_path(b, files[i]), &nb);
        assert_true(x && y && na == nb);
        assert_memory_equal(x, y, na);
        free(x);
        free(y);
    }
    tu_rmtree(dir);
    free(dir);
    nbs_sim_data_free(&d);
}

/* Batches: one batch draws nothing extra; with three, each batch's mean UMIs per cell follow its
 * library shift, and each gene's per-batch mean share follows the batch factors far beyond the
 * sampling noise; cell_labels.tsv and the h5ad's obs carry the batch. */
static void test_batch_effects(void **state) {
    (void)state;
    nbs_sim_config c;
    nbs_sim_defaults(&c);
    c.n_cells = 3000;
    c.n_genes = 500;
    nbs_sim_data one, d;
    nbs_error err = {0};
    gsl_rng *r = rng_with(5);
    assert_int_equal(nbs_simulate(&c, r, &one, &err), NBS_OK);
    assert_null(one.batch_log_gene);
    for (int64_t i = 0; i < c.n_cells; i++) assert_int_equal(one.batch[i], 0);
    c.n_batches = 3;
    gsl_rng_set(r, 5);
    assert_int_equal(nbs_simulate(&c, r, &d, &err), NBS_OK);
    gsl_rng_free(r);
    /* the trajectory is drawn first, so it is the one-batch data's */
    for (int64_t i = 0; i < c.n_cells; i++) {
        assert_int_equal(d.branch[i], one.branch[i]);
        assert_true(d.pseudotime[i] == one.pseudotime[i]);
    }
    enum { K = 3, G = 500 };
    double umis[K] = {0}, lib[K] = {0}, *sum = calloc((size_t)K * G, sizeof *sum); /* [K x G] */
    int n[K] = {0};
    for (int64_t i = 0; i < c.n_cells; i++) {
        const int b = d.batch[i];
        assert_true(b >= 0 && b < K);
        n[b]++;
        lib[b] += d.library[i];
        for (int64_t p = d.counts->indptr[i]; p < d.counts->indptr[i + 1]; p++) {
            umis[b] += d.counts->data[p];
            sum[b * G + d.counts->indices[p]] += d.counts->data[p];
        }
    }
    for (int b = 0; b < K; b++) {
        assert_true(n[b] > 900); /* uniform: ~1000 each */
        const double got = log(umis[b] / n[b]) - log(umis[0] / n[0]);
        const double want = d.batch_log_depth[b] - d.batch_log_depth[0];
        print_message("batch%d: %d cells, mean UMIs %.0f, log shift vs batch1 %.3f (drawn %.3f)\n", b + 1, n[b],
                      umis[b] / n[b], got, want);
        assert_true(fabs(got - want) < 0.06); /* sd of a log mean library ~0.35 / sqrt(1000) */
    }
    assert_true(fabs(d.batch_log_depth[1] - d.batch_log_depth[0]) > 0.1);
    /* per gene with >= 200 UMIs in both batches: log(share in batch b / share in batch 1) against
     * the drawn factor difference (up to a constant from the normalisation of the shares) */
    for (int b = 1; b < K; b++) {
        double sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0;
        int m = 0;
        for (int g = 0; g < G; g++) {
            if (sum[b * G + g] < 200 || sum[g] < 200) continue;
            const double x = d.batch_log_gene[b * G + g] - d.batch_log_gene[g];
            const double y = log(sum[b * G + g] / lib[b]) - log(sum[g] / lib[0]);
            sx += x, sy += y, sxx += x * x, syy += y * y, sxy += x * y, m++;
        }
        const double cov = sxy / m - sx / m * sy / m, vx = sxx / m - sx / m * sx / m, vy = syy / m - sy / m * sy / m;
        const double rho = cov / sqrt(vx * vy);
        print_message("batch%d vs batch1: %d genes, correlation of observed and drawn log factors %.3f\n", b + 1, m, rho);
        assert_true(m > 100);
        assert_true(rho > 0.9);
    }
    free(sum);

    char *dir = tu_tmpdir();
    assert_int_equal(nbs_sim_write_labels(&d, dir, &err), NBS_OK);
    char *labels = tu_read_file(tu_path(dir, "cell_labels.tsv"), NULL);
    assert_non_null(labels);
    char want[128], name[32];
    nbs_sim_branch_name(d.branch[0], name, sizeof name);
    snprintf(want, sizeof want, "barcode\tbranch\tpseudotime\tbatch\nSIM0000001-1\t%s\t%.6f\tbatch%d\n", name,
             d.pseudotime[0], d.batch[0] + 1);
    assert_true(!strncmp(labels, want, strlen(want)));
    free(labels);
    char h5ad[4200];
    snprintf(h5ad, sizeof h5ad, "%s", tu_path(dir, "sim.h5ad"));
    assert_int_equal(nbs_io_write_h5ad(h5ad, NULL, d.counts, 0, NULL, NULL, &err), NBS_OK);
    assert_int_equal(nbs_sim_add_h5ad_obs(&d, h5ad, &err), NBS_OK);
    char **obs = NULL;
    int st = nbs_io_read_h5ad_obs(h5ad, "batch", d.counts, &obs, &err);
    if (st) print_message("%s\n", err.msg);
    assert_int_equal(st, NBS_OK);
    for (int64_t i = 0; i < c.n_cells; i++) {
        snprintf(name, sizeof name, "batch%d", d.batch[i] + 1);
        assert_string_equal(obs[i], name);
    }
    nbs_io_free_labels(obs, c.n_cells);
    tu_rmtree(dir);
    free(dir);
    nbs_sim_data_free(&one);
    nbs_sim_data_free(&d);
}

static void test_bad_config(void **state) {
    (void)state;
    nbs_sim_config c;
    nbs_sim_defaults(&c);
    c.n_branches = 0;
    nbs_sim_data d;
    nbs_error err = {0};
    gsl_rng *r = rng_with(1);
    assert_int_equal(nbs_simulate(&c, r, &d, &err), NBS_ERR_USAGE);
    assert_non_null(strstr(err.msg, "0 branches"));
    nbs_sim_defaults(&c);
    c.n_cells = 0;
    assert_int_equal(nbs_simulate(&c, r, &d, &err), NBS_ERR_USAGE);
    nbs_sim_defaults(&c);
    c.n_cells = 5;
    c.n_batches = 6;
    assert_int_equal(nbs_simulate(&c, r, &d, &err), NBS_ERR_USAGE);
    assert_non_null(strstr(err.msg, "6 batches for 5 cells"));
    gsl_rng_free(r);
}

/* The distance of cell 0's true log shares, moved to branch b at time t, from the split. */
static double from_split(nbs_sim_data *d, int b, double t, const double *split, double *lr) {
    d->branch[0] = b, d->pseudotime[0] = t;
    nbs_sim_cell_log_rho(d, 0, lr);
    double s = 0;
    for (int64_t g = 0; g < d->config.n_genes; g++) s += (lr[g] - split[g]) * (lr[g] - split[g]);
    return sqrt(s);
}

/* --trajectory long-branches: expression keeps changing to the tip (the tree's has settled by
 * mid-branch), the tips are further apart than either is from the split, and expression is
 * continuous at the split. */
static void test_long_branches_shape(void **state) {
    (void)state;
    double ratio[2];
    for (int shape = 0; shape < 2; shape++) {
        nbs_sim_config c;
        nbs_sim_defaults(&c);
        if (shape) nbs_sim_long_branches(&c);
        c.n_cells = 50;
        gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
        gsl_rng_set(r, 1);
        nbs_sim_data d;
        nbs_error err = {0};
        assert_int_equal(nbs_simulate(&c, r, &d, &err), NBS_OK);
        const int64_t G = c.n_genes;
        double *split = malloc(sizeof *split * (size_t)G), *lr = malloc(sizeof *lr * (size_t)G);
        double *tip1 = malloc(sizeof *tip1 * (size_t)G);
        d.branch[0] = 0, d.pseudotime[0] = c.split_time;
        nbs_sim_cell_log_rho(&d, 0, split);
        assert_float_equal(from_split(&d, 1, c.split_time + 1e-9, split, lr), 0, 1e-6);
        const double mid = from_split(&d, 1, c.split_time + 0.5 * (1 - c.split_time), split, lr);
        const double tip = from_split(&d, 1, 1.0, split, lr);
        memcpy(tip1, lr, sizeof *lr * (size_t)G);
        ratio[shape] = tip / mid;
        if (shape) {
            from_split(&d, 2, 1.0, split, lr);
            double apart = 0;
            for (int64_t g = 0; g < G; g++) apart += (lr[g] - tip1[g]) * (lr[g] - tip1[g]);
            assert_true(sqrt(apart) > 1.2 * tip);
        }
        free(split), free(lr), free(tip1);
        nbs_sim_data_free(&d);
        gsl_rng_free(r);
    }
    printf("distance from the split, tip over mid-branch: tree %.2f, long branches %.2f\n", ratio[0], ratio[1]);
    assert_true(ratio[0] < 1.3);
    assert_true(ratio[1] > 1.4);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nb_moments),         cmocka_unit_test(test_counts_follow_their_nb),
        cmocka_unit_test(test_depth_and_sparsity), cmocka_unit_test(test_branches_distinguishable),
        cmocka_unit_test(test_seed_reproduces),    cmocka_unit_test(test_labels_file),
        cmocka_unit_test(test_h5ad_obs_columns),   cmocka_unit_test(test_mtx_folder_round_trip),   cmocka_unit_test(test_batch_effects),
        cmocka_unit_test(test_bad_config),
        cmocka_unit_test(test_long_branches_shape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
