/* Training on the sphere never produces NaN on the real datasets, for d in {3, 10, 32, 128} and
 * two seeds; the embedding is written as unit vectors with a finite kappa per cell, and the
 * .h5ad records that its metric is cosine. */
#include "testutil.h"

#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every row of embedding.tsv: unit norm over the d coordinates, finite kappa > 0 after them. */
static void check_embedding(const char *path, int d, int64_t *rows) {
    char *text = tu_read_file(path, NULL);
    assert_non_null(text);
    char *save = NULL, *line = strtok_r(text, "\n", &save); /* header */
    assert_non_null(strstr(line, "kappa"));
    *rows = 0;
    while ((line = strtok_r(NULL, "\n", &save))) {
        char *p = strchr(line, '\t'), *end;
        double n2 = 0;
        for (int j = 0; j < d; j++) {
            double x = strtod(p + 1, &end);
            assert_true(isfinite(x));
            n2 += x * x;
            p = end;
        }
        double kappa = strtod(p + 1, &end);
        if (!(fabs(n2 - 1) < 1e-4 && isfinite(kappa) && kappa > 0))
            fail_msg("%s: row %lld: |z|^2 = %g, kappa = %g", path, (long long)*rows + 1, n2, kappa);
        (*rows)++;
    }
    free(text);
}

static char *h5_string(const char *file, const char *dataset) {
    hid_t f = H5Fopen(file, H5F_ACC_RDONLY, H5P_DEFAULT);
    assert_true(f >= 0);
    hid_t d = H5Dopen2(f, dataset, H5P_DEFAULT);
    assert_true(d >= 0);
    hid_t ft = H5Dget_type(d), t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5Tget_cset(ft));
    char *s = NULL;
    assert_true(H5Dread(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, &s) >= 0);
    char *out = strdup(s);
    H5free_memory(s);
    H5Tclose(t), H5Tclose(ft), H5Dclose(d), H5Fclose(f);
    return out;
}

static void test_no_nan_on_real_data(void **state) {
    (void)state;
    static const char *const data[] = {"kang_muscat", "pbmc3k", "paul15/paul15.h5ad.gz"};
    static const int dims[] = {3, 10, 32, 128};
    char *dir = tu_tmpdir();
    int runs = 0;
    for (size_t k = 0; k < sizeof data / sizeof data[0]; k++) {
        if (!tu_exists(tu_data(data[k]))) {
            print_message("SKIP part: %s not found\n", tu_data(data[k]));
            continue;
        }
        for (size_t j = 0; j < sizeof dims / sizeof dims[0]; j++)
            for (int seed = 0; seed < 2; seed++) {
                char args[8192], out[4096], path[4200];
                snprintf(out, sizeof out, "%s/run-%zu-%d-%d", dir, k, dims[j], seed);
                snprintf(args, sizeof args,
                         "train %s --latent vmf --latent-dim %d --seed %d --epochs 3 --out %s "
                         "--set preprocess.n_top_genes=1000 --set train.warmup_epochs=1 "
                         "--set diagnose.interval=1 --set diagnose.subsample=300",
                         tu_data(data[k]), dims[j], seed, out);
                char *errout = NULL;
                int rc = tu_run_cli(args, NULL, &errout);
                if (rc) fail_msg("%s d=%d seed=%d: exit %d\n%s", data[k], dims[j], seed, rc, errout ? errout : "");
                free(errout);
                snprintf(path, sizeof path, "%s/embedding.tsv", out);
                int64_t rows;
                check_embedding(path, dims[j], &rows);
                assert_true(rows > 1000);
                if (j == 0 && seed == 0) {
                    snprintf(path, sizeof path, "%s/embedding.h5ad", out);
                    char *metric = h5_string(path, "uns/nbsphere/metric"), *latent = h5_string(path, "uns/nbsphere/latent");
                    assert_string_equal(metric, "cosine");
                    assert_string_equal(latent, "vmf");
                    free(metric), free(latent);
                }
                runs++;
            }
    }
    print_message("%d runs without a non-finite value\n", runs);
    if (!runs) skip();
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_no_nan_on_real_data)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
