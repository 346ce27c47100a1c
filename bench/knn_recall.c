/* make bench-knn: the approximate k-NN graph (FLANN's hierarchical k-means tree, graph.c) against the
 * exact one on a simulated data set: recall@k over every cell and the time of each search.
 *
 *   knn_recall MTX_DIR [k] [dims] [threads] [branching:checks[:recall] ...]
 *
 * The embedding is PCA (dims components, default 10, like a 10-d latent) of log1p(CP10k) of the
 * counts in MTX_DIR (a 10x MTX folder, e.g. nbsphere simulate's sim_mtx), as nbsphere's label
 * score computes it. k defaults to 15. Each branching:checks pair (default 32:512 32:1024 64:512
 * 64:1024 128:1024 and the defaults of `neighbors` 64:512:0.95) is one approximate search, with
 * checks fixed, or doubled from there until the sampled recall reaches :recall (the checks
 * column says where it stopped); output is a TSV: method, branching, checks, seconds
 * (wall and CPU; the approximate ones include the recall check on 1000 queries), recall over every cell, and the recall the search itself measured on its sample of queries. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nbsphere/evaluate.h"
#include "nbsphere/graph.h"
#include "nbsphere/io.h"
#include "nbsphere/nn.h"
#include "nbsphere/rng.h"

static double clock_of(clockid_t c) {
    struct timespec t;
    clock_gettime(c, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}
static double now(void) { return clock_of(CLOCK_MONOTONIC); }
/* CPU seconds of all threads: on a shared machine wall time depends on the others' load */
static double cpu(void) { return clock_of(CLOCK_PROCESS_CPUTIME_ID); }

static int fail(const nbs_error *err) {
    fprintf(stderr, "knn_recall: %s\n", err->msg);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: knn_recall MTX_DIR [k] [dims] [threads] [branching:checks[:recall] ...]\n");
        return 2;
    }
    const int k = argc > 2 ? atoi(argv[2]) : 15, dims = argc > 3 ? atoi(argv[3]) : 10;
    const int threads = argc > 4 ? atoi(argv[4]) : 2;
    static const char *grid_default[] = {"32:512", "32:1024", "64:512", "64:1024", "128:1024", "64:512:0.95"};
    const char **grid = argc > 5 ? (const char **)argv + 5 : grid_default;
    const int n_grid = argc > 5 ? argc - 5 : (int)(sizeof grid_default / sizeof *grid_default);
    nbs_error err = {0};
    nbs_nn_set_threads(threads);
    nbs_matrix *m = NULL;
    double t0 = now();
    if (nbs_io_read_10x_mtx_dir(argv[1], &m, &err)) return fail(&err);
    const int64_t n = m->n_cells;
    float *z = malloc(sizeof *z * (size_t)n * (size_t)dims); /* [n x dims] */
    gsl_rng *r = nbs_stream_rng(0, NBS_STREAM_EVALUATE, 0, &err);
    if (!z || !r || nbs_eval_pca(m, dims, 4, r, z, NULL, &err)) return fail(&err);
    fprintf(stderr, "knn_recall: %lld cells x %lld genes, PCA to %d dimensions (%.1f s)\n", (long long)n,
            (long long)m->n_genes, dims, now() - t0);

    nbs_graph exact, approx;
    nbs_knn_info info;
    t0 = now();
    double c0 = cpu();
    if (nbs_graph_knn(z, n, dims, k, NBS_METRIC_EUCLIDEAN, NULL, 0, &exact, &info, &err)) return fail(&err);
    printf("method\tbranching\tchecks\tseconds\tcpu_seconds\trecall@%d\tsampled_recall\n", k);
    printf("exact\t\t\t%.2f\t%.2f\t1\t1\n", now() - t0, cpu() - c0);
    fflush(stdout);
    for (int g = 0; g < n_grid; g++) {
        nbs_neighbors_config nb = {NBS_KNN_APPROXIMATE, 0, 64, 512, 0};
        if (sscanf(grid[g], "%d:%d:%lf", &nb.branching, &nb.checks, &nb.recall) < 2) {
            fprintf(stderr, "knn_recall: '%s' is not branching:checks[:recall]\n", grid[g]);
            return 2;
        }
        t0 = now();
        c0 = cpu();
        if (nbs_graph_knn(z, n, dims, k, NBS_METRIC_EUCLIDEAN, &nb, 0, &approx, &info, &err)) return fail(&err);
        const double sec = now() - t0, csec = cpu() - c0;
        /* recall over every cell: the share of each exact neighbour list that the approximate one holds */
        int64_t found = 0;
        for (int64_t i = 0; i < n; i++)
            for (int u = 0; u < k; u++)
                for (int v = 0; v < k; v++) found += approx.indices[i * k + v] == exact.indices[i * k + u];
        printf("approximate\t%d\t%d\t%.2f\t%.2f\t%.4f\t%.4f\n", nb.branching, info.checks, sec, csec,
               (double)found / (double)(n * k), info.recall);
        fflush(stdout);
        nbs_graph_free(&approx);
    }
    nbs_graph_free(&exact);
    gsl_rng_free(r);
    free(z);
    nbs_matrix_free(m);
    return 0;
}
