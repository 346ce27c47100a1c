/* The trajectory stage (trajectory.h): the gauss kernel on a tiny example against the constants
 * tests/trajectory_reference.py prints (run it without arguments), PAGA on a graph counted by
 * hand, the diffusion map and DPT on simulated data against the same script run on the same
 * embedding (when /usr/bin/python3 with numpy and scipy is there), DPT against the simulated
 * time, bad roots and sizes, the wrap-around diagnostic's hop counts on a path and its shortcuts
 * on a circle whose reference is a line, and `nbsphere trajectory` of a given embedding (the
 * run's own embedding.h5ad and .tsv, read back with HDF5; bad embeddings). */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/evaluate.h"
#include "nbsphere/rng.h"
#include "nbsphere/simulate.h"
#include "nbsphere/trajectory.h"

#include <hdf5.h>

/* Spearman correlation of a and b [n] (average ranks for ties; NaN entries left out). */
static void ranks(const double *v, const int64_t *keep, int64_t m, double *r) {
    for (int64_t a = 0; a < m; a++) {
        double less = 0, same = 0;
        for (int64_t b = 0; b < m; b++) {
            less += v[keep[b]] < v[keep[a]];
            same += v[keep[b]] == v[keep[a]];
        }
        r[a] = less + (same + 1) / 2;
    }
}

static double spearman(const double *a, const double *b, int64_t n) {
    int64_t *keep = calloc((size_t)n + 1, sizeof *keep), m = 0;
    assert_non_null(keep);
    for (int64_t i = 0; i < n; i++)
        if (!isnan(a[i]) && !isnan(b[i])) keep[m++] = i;
    double *ra = malloc(sizeof *ra * (size_t)m), *rb = malloc(sizeof *rb * (size_t)m);
    ranks(a, keep, m, ra);
    ranks(b, keep, m, rb);
    double ma = 0, mb = 0, sab = 0, saa = 0, sbb = 0;
    for (int64_t i = 0; i < m; i++) ma += ra[i] / m, mb += rb[i] / m;
    for (int64_t i = 0; i < m; i++)
        sab += (ra[i] - ma) * (rb[i] - mb), saa += (ra[i] - ma) * (ra[i] - ma), sbb += (rb[i] - mb) * (rb[i] - mb);
    free(keep);
    free(ra);
    free(rb);
    return sab / sqrt(saa * sbb);
}

/* The script's tiny example: 7 points on a line, one off it; k = 3 (two others each). */
static void test_gauss_kernel_matches_scanpy_formula(void **state) {
    (void)state;
    const float x[] = {0, 0, 1, 0, 2.5f, 0, 3, 0, 5, 0, 5.5f, 0, 6, 0, 3, 2};
    nbs_error err = {0};
    nbs_graph knn, w;
    int64_t floored = -1;
    assert_int_equal(nbs_graph_knn(x, 8, 2, 2, NBS_METRIC_EUCLIDEAN, NULL, 0, &knn, NULL, &err), NBS_OK);
    assert_int_equal(nbs_traj_gauss_kernel(&knn, &w, &floored, &err), NBS_OK);
    assert_int_equal(floored, 0);
    /* from `python3 tests/trajectory_reference.py`: row: column:weight */
    static const struct {
        int i, j;
        double w;
    } want[] = {{0, 1, 0.58674216}, {0, 2, 0.0496003176}, {1, 0, 0.58674216}, {1, 2, 0.135335283},
                {1, 3, 0.0757428675}, {2, 0, 0.0496003176}, {2, 1, 0.135335283}, {2, 3, 0.834926988},
                {2, 7, 0.0713434448}, {3, 1, 0.0757428675}, {3, 2, 0.834926988}, {3, 7, 0.143758048},
                {4, 5, 0.401892043}, {4, 6, 0.135335283}, {5, 4, 0.401892043}, {5, 6, 0.401892043},
                {6, 4, 0.135335283}, {6, 5, 0.401892043}, {7, 2, 0.0713434448}, {7, 3, 0.143758048}};
    const int nw = (int)(sizeof want / sizeof want[0]);
    assert_int_equal(w.indptr[8], nw);
    for (int e = 0; e < nw; e++) {
        assert_true(want[e].i >= 0 && w.indptr[want[e].i] <= e && e < w.indptr[want[e].i + 1]);
        assert_int_equal(w.indices[e], want[e].j);
        assert_float_equal(w.weights[e], want[e].w, 1e-6);
    }
    nbs_graph_free(&knn);
    nbs_graph_free(&w);
}

/* Two clusters of 3 cells, 2 neighbours each; edges 0->1, 0->2, 1->0, 1->3, 2->0, 2->1, 3->4, 3->5,
 * 4->3, 4->5, 5->3, 5->2: between the clusters 1->3 and 5->2, so E = 2; e_0 = e_1 = 6, n = 6, and
 * expected = (6 * 3 + 6 * 3) / 5 = 7.2, conn = 2 / 7.2. */
static void test_paga_counts_edges_against_random(void **state) {
    (void)state;
    int64_t indptr[] = {0, 2, 4, 6, 8, 10, 12};
    int64_t indices[] = {1, 2, 0, 3, 0, 1, 4, 5, 3, 5, 3, 2};
    double dist[12];
    for (int i = 0; i < 12; i++) dist[i] = 1;
    nbs_graph knn = {6, indptr, indices, dist};
    int32_t cluster[] = {0, 0, 0, 1, 1, 1};
    double conn[4];
    nbs_error err = {0};
    assert_int_equal(nbs_traj_paga(&knn, cluster, 2, conn, &err), NBS_OK);
    assert_float_equal(conn[0], 0, 0);
    assert_float_equal(conn[1], 2 / 7.2, 1e-12);
    assert_float_equal(conn[2], 2 / 7.2, 1e-12);
    assert_float_equal(conn[3], 0, 0);
}

/* Simulated cells (2 branches), 10 principal components of log1p CP10k. */
typedef struct {
    nbs_sim_data sim;
    float *pcs;      /* [n x 10] */
    int64_t n, root; /* root: the cell of the smallest true time */
} sim_case;

static void sim_setup(sim_case *s, int64_t n) {
    nbs_sim_config c;
    nbs_sim_defaults(&c);
    c.n_cells = n;
    c.n_genes = 400;
    c.n_branches = 2;
    nbs_error err = {0};
    gsl_rng *r = nbs_stream_rng(7, NBS_STREAM_INIT, 0, &err);
    assert_int_equal(nbs_simulate(&c, r, &s->sim, &err), NBS_OK);
    s->n = n;
    s->pcs = malloc(sizeof *s->pcs * (size_t)n * 10);
    assert_int_equal(nbs_eval_pca(s->sim.counts, 10, 4, r, s->pcs, NULL, &err), NBS_OK);
    gsl_rng_free(r);
    s->root = 0;
    for (int64_t i = 1; i < n; i++)
        if (s->sim.pseudotime[i] < s->sim.pseudotime[s->root]) s->root = i;
}

static void sim_free(sim_case *s) {
    nbs_sim_data_free(&s->sim);
    free(s->pcs);
}

static nbs_trajectory_config config(void) {
    nbs_config c;
    nbs_config_defaults(&c);
    return c.trajectory;
}

static void test_dpt_follows_simulated_time(void **state) {
    (void)state;
    sim_case s;
    sim_setup(&s, 1500);
    nbs_trajectory_config c = config();
    snprintf(c.root, sizeof c.root, "%s", s.sim.counts->barcodes[s.root]);
    nbs_trajectory t;
    nbs_error err = {0};
    int rc = nbs_trajectory_compute(s.pcs, s.n, 10, NBS_METRIC_EUCLIDEAN, &c, NULL, s.sim.counts->barcodes, NULL, NULL, 1,
                                    &t, &err);
    if (rc) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(rc, NBS_OK);
    assert_int_equal(t.root, s.root);
    assert_int_equal(t.n_unreached, 0);
    assert_float_equal(t.evals[0], 1.0, 1e-9); /* the stationary state of a connected graph */
    for (int j = 1; j < c.n_dcs; j++) assert_true(t.evals[j] <= t.evals[j - 1] && t.evals[j] < 1);
    const double rho = spearman(t.pseudotime, s.sim.pseudotime, s.n);
    fprintf(stderr, "DPT on 10 PCs of 1500 simulated cells: Spearman %.4f with the simulated time, %d Leiden "
            "clusters\n", rho, t.n_clusters);
    assert_true(rho > 0.8); /* 0.840 when written */
    assert_true(t.n_clusters >= 3);
    /* PAGA is symmetric in [0, 1] */
    for (int a = 0; a < t.n_clusters; a++)
        for (int b = 0; b < t.n_clusters; b++) {
            const double v = t.paga[a * t.n_clusters + b];
            assert_true(v >= 0 && v <= 1);
            assert_float_equal(v, t.paga[b * t.n_clusters + a], 1e-15);
        }
    nbs_trajectory_free(&t);
    sim_free(&s);
}

static int have_scipy(void) {
    return system("/usr/bin/python3 -c 'import numpy, scipy' >/dev/null 2>&1") == 0;
}

/* The same embedding through tests/trajectory_reference.py (numpy/scipy, scanpy's formulas). */
static void test_diffmap_and_dpt_match_python(void **state) {
    (void)state;
    if (!have_scipy()) {
        fprintf(stderr, "no /usr/bin/python3 with numpy and scipy: skipped\n");
        skip();
    }
    sim_case s;
    sim_setup(&s, 600);
    char *dir = tu_tmpdir();
    char in[4096], out[4096], cmd[9000];
    snprintf(in, sizeof in, "%s/pcs.tsv", dir);
    snprintf(out, sizeof out, "%s/ref.tsv", dir);
    FILE *f = fopen(in, "w");
    for (int64_t i = 0; i < s.n; i++)
        for (int j = 0; j < 10; j++) fprintf(f, "%.9g%c", s.pcs[i * 10 + j], j == 9 ? '\n' : '\t');
    fclose(f);
    nbs_trajectory_config c = config();
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %s %d %d %lld %s", "tests/trajectory_reference.py", in,
             (int)c.k, c.n_dcs, (long long)s.root, out);
    assert_int_equal(system(cmd), 0);
    snprintf(c.root, sizeof c.root, "%s", s.sim.counts->barcodes[s.root]);
    nbs_trajectory t;
    nbs_error err = {0};
    assert_int_equal(nbs_trajectory_compute(s.pcs, s.n, 10, NBS_METRIC_EUCLIDEAN, &c, NULL, s.sim.counts->barcodes, NULL,
                                            NULL, 1, &t, &err), NBS_OK);
    f = fopen(out, "r");
    assert_non_null(f);
    double ev, *pt = malloc(sizeof *pt * (size_t)s.n), max_dc = 0;
    for (int j = 0; j < c.n_dcs; j++) {
        assert_int_equal(fscanf(f, "%lf", &ev), 1);
        assert_float_equal(t.evals[j], ev, 1e-6);
    }
    for (int64_t i = 0; i < s.n; i++) {
        assert_int_equal(fscanf(f, "%lf", &pt[i]), 1);
        for (int j = 1; j < c.n_dcs; j++) {
            double v;
            assert_int_equal(fscanf(f, "%lf", &v), 1);
            const double dv = fabs(fabs(t.diffmap[i * c.n_dcs + j]) - v);
            if (dv > max_dc) max_dc = dv;
        }
    }
    fclose(f);
    const double rho = spearman(t.pseudotime, pt, s.n);
    double max_pt = 0;
    for (int64_t i = 0; i < s.n; i++) max_pt = fmax(max_pt, fabs(pt[i] - t.pseudotime[i]));
    fprintf(stderr, "against numpy/scipy on 600 cells: DPT Spearman %.6f, largest difference %.2g (pseudotime), "
            "%.2g (|diffusion components|)\n", rho, max_pt, max_dc);
    assert_true(rho > 0.99);
    assert_true(max_pt < 1e-4);
    assert_true(max_dc < 1e-4);
    free(pt);
    nbs_trajectory_free(&t);
    sim_free(&s);
    tu_rmtree(dir);
    free(dir);
}

/* Two far-apart groups: the root's group gets pseudotimes, the other NaN. */
static void test_other_component_gets_nan(void **state) {
    (void)state;
    enum { N = 60 };
    float x[N * 2];
    char names[N][16], *bc[N];
    for (int i = 0; i < N; i++) {
        x[2 * i] = (float)(i % 30) * 0.1f + (i >= 30 ? 100.0f : 0.0f);
        x[2 * i + 1] = (float)((i * 7) % 5) * 0.01f;
        snprintf(names[i], sizeof names[i], "c%d", i);
        bc[i] = names[i];
    }
    nbs_trajectory_config c = config();
    c.k = 5;
    c.n_dcs = 4;
    snprintf(c.root, sizeof c.root, "c0");
    nbs_trajectory t;
    nbs_error err = {0};
    assert_int_equal(nbs_trajectory_compute(x, N, 2, NBS_METRIC_EUCLIDEAN, &c, NULL, bc, NULL, NULL, 3, &t, &err), NBS_OK);
    assert_int_equal(t.n_components, 2);
    assert_int_equal(t.n_unreached, 30);
    /* two components: eigenvalue 1 twice (the solver must find the repeat) */
    assert_float_equal(t.evals[0], 1, 1e-9);
    assert_float_equal(t.evals[1], 1, 1e-9);
    for (int i = 0; i < N; i++) assert_true(i < 30 ? !isnan(t.pseudotime[i]) : isnan(t.pseudotime[i]));
    /* scaled to 1 at its largest; the far end of the line is later than the root's neighbour */
    double top = 0;
    for (int i = 0; i < 30; i++) top = fmax(top, t.pseudotime[i]);
    assert_float_equal(top, 1, 1e-12);
    assert_true(t.pseudotime[29] > 0.5 && t.pseudotime[1] < 0.2);
    nbs_trajectory_free(&t);
}

static void test_bad_roots_and_sizes(void **state) {
    (void)state;
    enum { N = 40 };
    float x[N * 2];
    char names[N][16], *bc[N], *labels[N];
    for (int i = 0; i < N; i++) {
        x[2 * i] = (float)i;
        x[2 * i + 1] = (float)(i % 3);
        snprintf(names[i], sizeof names[i], "c%d", i);
        bc[i] = names[i];
        labels[i] = i < 20 ? "early" : "late";
    }
    nbs_trajectory_config c = config();
    nbs_trajectory t;
    nbs_error err = {0};
    snprintf(c.root, sizeof c.root, "nope");
    assert_int_equal(nbs_trajectory_compute(x, N, 2, NBS_METRIC_EUCLIDEAN, &c, NULL, bc, NULL, NULL, 1, &t, &err),
                     NBS_ERR_USAGE);
    assert_non_null(strstr(err.msg, "'nope' is not the barcode"));
    c.root[0] = '\0';
    snprintf(c.root_label, sizeof c.root_label, "middle");
    assert_int_equal(nbs_trajectory_compute(x, N, 2, NBS_METRIC_EUCLIDEAN, &c, NULL, bc, labels, "stage", 1, &t, &err),
                     NBS_ERR_USAGE);
    assert_non_null(strstr(err.msg, "no cell has the label 'middle' in column 'stage'; its labels are: early, late"));
    /* the root label's cells lie at one end of DC1: the root is the extreme one there */
    snprintf(c.root_label, sizeof c.root_label, "early");
    assert_int_equal(nbs_trajectory_compute(x, N, 2, NBS_METRIC_EUCLIDEAN, &c, NULL, bc, labels, "stage", 1, &t, &err),
                     NBS_OK);
    assert_true(t.root <= 2);
    assert_true(t.pseudotime[N - 1] > 0.9);
    nbs_trajectory_free(&t);
    c.k = N;
    assert_int_equal(nbs_trajectory_compute(x, N, 2, NBS_METRIC_EUCLIDEAN, &c, NULL, bc, labels, "stage", 1, &t, &err),
                     NBS_ERR_USAGE);
    assert_non_null(strstr(err.msg, "trajectory.k = 40"));
}

/* Hop counts on the path 0 - 1 - ... - 9 and an isolated vertex 10, from 0 to 1, 3, 9, 10 and 0
 * itself, and from 9 to 8, with at most 4 steps. */
static void test_edge_hops_on_a_path(void **state) {
    (void)state;
    enum { N = 11 };
    int64_t gp[N + 1], gi[2 * (N - 2)], m = 0;
    for (int64_t v = 0; v < N; v++) {
        gp[v] = m;
        if (v < 10 && v > 0) gi[m++] = v - 1;
        if (v < 9) gi[m++] = v + 1;
    }
    gp[N] = m;
    double gw[2 * (N - 2)];
    for (int64_t e = 0; e < m; e++) gw[e] = 1;
    nbs_graph g = {N, gp, gi, gw};
    int64_t ep[N + 1] = {0, 5, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6}, ei[6] = {1, 3, 9, 10, 0, 8};
    double ew[6] = {1, 1, 1, 1, 1, 1};
    nbs_graph e = {N, ep, ei, ew};
    int32_t hops[6];
    nbs_error err = {0};
    assert_int_equal(nbs_traj_edge_hops(&g, &e, 4, hops, &err), NBS_OK);
    const int32_t want[6] = {1, 3, -1, -1, 0, 1};
    for (int q = 0; q < 6; q++) assert_int_equal(hops[q], want[q]);
    assert_int_equal(nbs_traj_edge_hops(&g, &e, 9, hops, &err), NBS_OK);
    assert_int_equal(hops[2], 9); /* the far end within reach */
    assert_int_equal(hops[3], -1); /* another component: never */
}

/* 200 cells evenly on a circle (the embedding) whose reference space is the line of their
 * index: with k = 11 (10 neighbours, 5 each side) the embedding joins 0..4 to 195..199 across
 * the wrap: d pairs d apart for d = 1..5, 15 pairs, 30 directed edges, each about 40 reference
 * steps long; every other edge is 1 step (at most 5 apart on the line). The two halves are the
 * clusters (and the labels): they meet at 99|100 too, but there the data agree. */
static void test_wraparound_on_a_circle(void **state) {
    (void)state;
    enum { N = 200 };
    float circle[2 * N], line[N];
    char *labels[N];
    for (int i = 0; i < N; i++) {
        circle[2 * i] = (float)cos(2 * M_PI * i / N), circle[2 * i + 1] = (float)sin(2 * M_PI * i / N);
        line[i] = (float)i;
        labels[i] = i < N / 2 ? "left" : "right";
    }
    nbs_trajectory_config c = config();
    c.k = 11;
    c.shortcut_hops = 5;
    c.wrap_share = 0.25;
    nbs_error err = {0};
    for (int with_labels = 0; with_labels < 2; with_labels++) {
        nbs_trajectory t;
        memset(&t, 0, sizeof t);
        t.n = N, t.k = 11, t.n_clusters = 2;
        assert_int_equal(nbs_graph_knn(circle, N, 2, 10, NBS_METRIC_EUCLIDEAN, NULL, 0, &t.knn, NULL, &err), NBS_OK);
        t.cluster = malloc(sizeof *t.cluster * N);
        for (int i = 0; i < N; i++) t.cluster[i] = i >= N / 2;
        assert_int_equal(nbs_traj_wraparound(&t, line, 1, &c, with_labels ? labels : NULL, &err), NBS_OK);
        const nbs_wraparound *w = &t.wrap;
        assert_int_equal(w->n_edges, N * 10);
        assert_int_equal(w->n_shortcuts, 30);
        assert_float_equal(w->fraction, 30.0 / 2000, 1e-12);
        for (int64_t i = 0; i < N; i++)
            for (int64_t e = t.knn.indptr[i]; e < t.knn.indptr[i + 1]; e++) {
                const int64_t j = t.knn.indices[e];
                const int wrap = (i < 5 && j >= 195) || (j < 5 && i >= 195);
                assert_int_equal(w->ref_hops[e], wrap ? -1 : 1);
            }
        /* cell 0 has 5 of its 10 neighbours across the wrap, cell 4 one (199), cell 5 none */
        assert_float_equal(w->score[0], 0.5, 1e-12);
        assert_float_equal(w->score[4], 0.1, 1e-12);
        assert_float_equal(w->score[5], 0, 0);
        assert_float_equal(w->score[199], 0.5, 1e-12);
        /* the pair of halves: 60 edges (30 at each meeting point), 30 of them shortcuts */
        assert_int_equal(w->n_pairs, 1);
        assert_int_equal(w->pairs[0].a, 0);
        assert_int_equal(w->pairs[0].b, 1);
        assert_int_equal(w->pairs[0].shortcuts, 30);
        assert_int_equal(w->pairs[0].edges, 60);
        assert_true(w->wraps);
        assert_non_null(strstr(w->verdict, with_labels ? "branches left and right meet in the embedding but not in "
                                                         "the data (30 shortcut edges, 50% of their edges)"
                                                       : "branches cluster 0 and cluster 1 meet in the embedding"));
        if (with_labels) assert_int_equal(w->n_label_pairs, 1);
        nbs_trajectory_free(&t);
    }
    /* the embedding is the line itself: no shortcut, no verdict */
    nbs_trajectory t;
    memset(&t, 0, sizeof t);
    t.n = N, t.k = 11, t.n_clusters = 2;
    assert_int_equal(nbs_graph_knn(line, N, 1, 10, NBS_METRIC_EUCLIDEAN, NULL, 0, &t.knn, NULL, &err), NBS_OK);
    t.cluster = calloc(N, sizeof *t.cluster);
    assert_int_equal(nbs_traj_wraparound(&t, line, 1, &c, labels, &err), NBS_OK);
    assert_int_equal(t.wrap.n_shortcuts, 0);
    assert_false(t.wrap.wraps);
    assert_non_null(strstr(t.wrap.verdict, "no wrap-around: 0.00% of the embedding edges"));
    nbs_trajectory_free(&t);
    /* the circle again with wrap_share above the pair's 50 %: counted, not named */
    memset(&t, 0, sizeof t);
    t.n = N, t.k = 11, t.n_clusters = 2;
    assert_int_equal(nbs_graph_knn(circle, N, 2, 10, NBS_METRIC_EUCLIDEAN, NULL, 0, &t.knn, NULL, &err), NBS_OK);
    t.cluster = malloc(sizeof *t.cluster * N);
    for (int i = 0; i < N; i++) t.cluster[i] = i >= N / 2;
    c.wrap_share = 0.6;
    assert_int_equal(nbs_traj_wraparound(&t, line, 1, &c, NULL, &err), NBS_OK);
    assert_int_equal(t.wrap.n_shortcuts, 30);
    assert_false(t.wrap.wraps);
    assert_non_null(strstr(t.wrap.verdict, "no wrap-around: 1.50%"));
    nbs_trajectory_free(&t);
}

/* On `simulate --trajectory long-branches` (1500 cells): an embedding on the circle that follows
 * the simulated time, branch1 at angle pi t and branch2 at -pi t, so their tips meet at pi, is
 * named as wrapping around against PCA of the simulated counts; the same with angles 0.7 pi t
 * (the tips 0.6 pi apart) is not. The truth is the simulator's: the tips are 9 reference steps
 * apart (median over tip cells, 50 PCs, k = 15: checked with sklearn, see the README). */
static void test_wraparound_on_long_branches(void **state) {
    (void)state;
    nbs_sim_config sc;
    nbs_sim_defaults(&sc);
    nbs_sim_long_branches(&sc);
    sc.n_cells = 1500;
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 3);
    nbs_sim_data d;
    nbs_error err = {0};
    assert_int_equal(nbs_simulate(&sc, r, &d, &err), NBS_OK);
    const int64_t n = sc.n_cells;
    enum { DIMS = 50 };
    float *ref = malloc(sizeof *ref * (size_t)n * DIMS), *z = malloc(sizeof *z * (size_t)n * 2);
    char names[3][16], **labels = malloc(sizeof *labels * (size_t)n);
    for (int b = 0; b < 3; b++) nbs_sim_branch_name(b, names[b], sizeof names[b]);
    for (int64_t i = 0; i < n; i++) labels[i] = names[d.branch[i]];
    assert_int_equal(nbs_eval_pca(d.counts, DIMS, 4, r, ref, NULL, &err), NBS_OK);
    nbs_trajectory_config c = config();
    for (int wrapped = 1; wrapped >= 0; wrapped--) {
        for (int64_t i = 0; i < n; i++) {
            const double side = d.branch[i] == 2 || (d.branch[i] == 0 && i % 2) ? -1 : 1;
            const double a = side * (wrapped ? 1.0 : 0.7) * M_PI * d.pseudotime[i];
            z[2 * i] = (float)cos(a), z[2 * i + 1] = (float)sin(a);
        }
        nbs_trajectory t;
        memset(&t, 0, sizeof t);
        t.n = n, t.k = (int)c.k, t.n_clusters = 1;
        assert_int_equal(nbs_graph_knn(z, n, 2, t.k - 1, NBS_METRIC_COSINE, NULL, 0, &t.knn, NULL, &err), NBS_OK);
        t.cluster = calloc((size_t)n, sizeof *t.cluster);
        assert_int_equal(nbs_traj_wraparound(&t, ref, DIMS, &c, labels, &err), NBS_OK);
        const nbs_wraparound *w = &t.wrap;
        printf("long branches, %s: %.2f%% shortcut edges; %s\n", wrapped ? "tips meeting" : "tips apart",
               100 * w->fraction, w->verdict);
        if (wrapped) {
            assert_true(w->wraps);
            /* the top label pair is the tips', and the only one named (labels in order of first appearance) */
            const char *a = w->label_names[w->label_pairs[0].a], *b = w->label_names[w->label_pairs[0].b];
            assert_true((!strcmp(a, "branch1") && !strcmp(b, "branch2")) || (!strcmp(a, "branch2") && !strcmp(b, "branch1")));
            char want[128];
            snprintf(want, sizeof want, "branches %s and %s meet in the embedding but not in the data", a, b);
            assert_non_null(strstr(w->verdict, want));
            assert_null(strchr(w->verdict, ';'));
            /* the shortcuts sit at the tips: their cells' mean simulated time */
            double tsum = 0, ssum = 0;
            for (int64_t i = 0; i < n; i++) tsum += w->score[i] * d.pseudotime[i], ssum += w->score[i];
            assert_true(tsum / ssum > 0.85);
        } else {
            assert_false(w->wraps);
            assert_true(w->fraction < 0.002);
        }
        nbs_trajectory_free(&t);
    }
    free(ref);
    free(z);
    free(labels);
    nbs_sim_data_free(&d);
    gsl_rng_free(r);
}

/* A ring of n cells (odd) with equal weights: q_i = 2, z_i^2 = 1/2, so T = A / 2 and its spectrum
 * is cos(2 pi k / n), every value but 1 twice. The 9 of largest magnitude are 1, cos(j pi / n)
 * twice for j = 2, 4 and -cos(j pi / n) twice for j = 3, 1: gaps of 1e-5 near +-1 (n = 1201) and
 * four pairs of repeats, which a single-vector Krylov basis cannot span. Before the thick
 * restarts the eigensolver stopped with "did not converge in 30 restarts (0 of 9 components)" on
 * n = 1201 (n = 301 takes the dense path). Checked: eigenvalues, residuals T x - l x, that the
 * nine vectors are orthonormal (both vectors of each repeat found), sign convention. */
static void test_diffmap_on_a_ring_clustered_and_repeated(void **state) {
    (void)state;
    enum { DCS = 9 };
    const int64_t sizes[] = {301, 1201};
    for (int s = 0; s < 2; s++) {
        const int64_t n = sizes[s];
        nbs_graph g = {n, malloc(sizeof(int64_t) * (size_t)(n + 1)), malloc(sizeof(int64_t) * (size_t)(2 * n)),
                       malloc(sizeof(double) * (size_t)(2 * n))};
        for (int64_t i = 0; i < n; i++) {
            const int64_t a = (i + n - 1) % n, b = (i + 1) % n; /* rows ascending: 0 and n - 1 wrap */
            g.indptr[i] = 2 * i;
            g.indices[2 * i] = a < b ? a : b, g.indices[2 * i + 1] = a < b ? b : a;
            g.weights[2 * i] = g.weights[2 * i + 1] = 0.37; /* any constant: the normalisations remove it */
        }
        g.indptr[n] = 2 * n;
        double *x = malloc(sizeof *x * (size_t)n * DCS), ev[DCS];
        nbs_error err = {0};
        const int rc = nbs_traj_diffmap(&g, DCS, 5, x, ev, &err);
        if (rc) fprintf(stderr, "%s\n", err.msg);
        assert_int_equal(rc, NBS_OK);
        const double pi = 3.14159265358979323846, c = pi / (double)n;
        const double want[DCS] = {1, cos(2 * c), cos(2 * c), cos(4 * c), cos(4 * c),
                                  -cos(3 * c), -cos(3 * c), -cos(c), -cos(c)};
        double dev = 0, res = 0, orth = 0;
        for (int j = 0; j < DCS; j++) {
            dev = fmax(dev, fabs(ev[j] - want[j]));
            double r2 = 0, big = 0;
            for (int64_t i = 0; i < n; i++) {
                const double tx = (x[((i + n - 1) % n) * DCS + j] + x[((i + 1) % n) * DCS + j]) / 2;
                r2 += (tx - ev[j] * x[i * DCS + j]) * (tx - ev[j] * x[i * DCS + j]);
                if (fabs(x[i * DCS + j]) > fabs(big)) big = x[i * DCS + j];
            }
            res = fmax(res, sqrt(r2));
            assert_true(big > 0);
            for (int l = 0; l <= j; l++) {
                double d = 0;
                for (int64_t i = 0; i < n; i++) d += x[i * DCS + j] * x[i * DCS + l];
                orth = fmax(orth, fabs(d - (l == j)));
            }
        }
        fprintf(stderr, "ring of %lld cells, %d components: eigenvalues within %.2g of cos(j pi / n), residuals "
                "below %.2g, orthonormal within %.2g\n", (long long)n, DCS, dev, res, orth);
        assert_true(dev < 1e-8);
        assert_true(res < 1e-8);
        assert_true(orth < 1e-8);
        free(x);
        nbs_graph_free(&g);
    }
}

/* obs/dpt_pseudotime of an embedding.h5ad [n] (malloc'd). */
static double *read_pseudotime(const char *path, int64_t n) {
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    assert_true(f >= 0);
    hid_t d = H5Dopen2(f, "obs/dpt_pseudotime", H5P_DEFAULT);
    assert_true(d >= 0);
    hid_t sp = H5Dget_space(d);
    assert_int_equal(H5Sget_simple_extent_npoints(sp), n);
    double *v = malloc(sizeof *v * (size_t)n);
    assert_true(H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0);
    H5Sclose(sp);
    H5Dclose(d);
    H5Fclose(f);
    return v;
}

static void expect_cli(const char *args, int code, const char *needle) {
    char *errout = NULL;
    const int rc = tu_run_cli(args, NULL, &errout);
    if (rc != code || (needle && (!errout || !strstr(errout, needle))))
        fail_msg("nbsphere %s: exit %d (expected %d), stderr without '%s':\n%s", args, rc, code, needle ? needle : "",
                 errout ? errout : "");
    free(errout);
}

/* `nbsphere trajectory EMBEDDING DATA`: a model's embedding.h5ad and embedding.tsv, given back as
 * embeddings, give exactly the pseudotime of the run that trained it; the outputs of a given
 * embedding (no collapse report); and bad embeddings refused with the file and the cell named. */
static void test_trajectory_of_given_embedding(void **state) {
    (void)state;
    enum { N = 400 };
    char *dir = tu_tmpdir();
    char args[8192], path[4096];
    snprintf(args, sizeof args, "simulate --out %s/sim --cells %d --genes 150 --format h5ad --seed 3", dir, N);
    expect_cli(args, 0, NULL);
    snprintf(path, sizeof path, "%s/p.yaml", dir);
    char yaml[4096];
    snprintf(yaml, sizeof yaml, "input:\n  path: %s/sim/sim.h5ad\n  format: h5ad\n  label_column: branch\n"
             "train:\n  epochs: 3\ntrajectory:\n  enabled: true\n  root_label: root\n", dir);
    assert_int_equal(tu_write_file(path, yaml), 0);
    snprintf(args, sizeof args, "run %s --out %s/m", path, dir);
    expect_cli(args, 0, NULL);
    snprintf(path, sizeof path, "%s/m/embedding.h5ad", dir);
    double *want = read_pseudotime(path, N);
    const char *given[] = {"embedding.h5ad", "embedding.tsv"};
    for (int g = 0; g < 2; g++) {
        snprintf(args, sizeof args, "trajectory %s/m/%s %s/sim/sim.h5ad --label-column branch --root-label root "
                 "--out %s/t%d", dir, given[g], dir, dir, g);
        expect_cli(args, 0, g ? "(the file does not say" : NULL);
        snprintf(path, sizeof path, "%s/t%d/embedding.h5ad", dir, g);
        double *got = read_pseudotime(path, N);
        int64_t same = 0;
        for (int64_t i = 0; i < N; i++) same += got[i] == want[i] || (isnan(got[i]) && isnan(want[i]));
        /* the table's coordinates are the model's float32 printed to 9 digits, which round-trip */
        fprintf(stderr, "trajectory of the run's %s: %lld of %d pseudotimes identical\n", given[g], (long long)same, N);
        assert_int_equal(same, N);
        free(got);
        snprintf(path, sizeof path, "%s/t%d/trajectory.json", dir, g);
        char *json = tu_read_file(path, NULL);
        assert_non_null(json);
        assert_non_null(strstr(json, "\"wraparound\""));
        assert_non_null(strstr(json, given[g]));
        free(json);
        snprintf(path, sizeof path, "%s/t%d/report.html", dir, g);
        char *html = tu_read_file(path, NULL);
        assert_non_null(html);
        assert_non_null(strstr(html, "<h1>Trajectory report</h1>"));
        assert_non_null(strstr(html, "id=\"trajectory\""));
        free(html);
        snprintf(path, sizeof path, "%s/t%d/collapse_report.json", dir, g);
        assert_false(tu_exists(path));
    }
    free(want);

    /* bad embeddings: a kept cell missing, a value not finite, a barcode twice, an absent obsm key */
    char *tsv = NULL;
    snprintf(path, sizeof path, "%s/m/embedding.tsv", dir);
    tsv = tu_read_file(path, NULL);
    assert_non_null(tsv);
    char *last = strrchr(tsv, '\n');
    *last = '\0';
    last = strrchr(tsv, '\n'); /* the start of the last row */
    char bad[4096];
    const char *cases[][2] = {{"missing", "are not in the embedding"}, {"nan", "not a finite number"},
                              {"twice", "names two cells"}};
    for (int c = 0; c < 3; c++) {
        snprintf(bad, sizeof bad, "%s/%s.tsv", dir, cases[c][0]);
        FILE *f = fopen(bad, "w");
        assert_non_null(f);
        if (c == 0) fprintf(f, "%.*s\n", (int)(last - tsv), tsv);
        else if (c == 1) {
            const char *tab = strchr(last + 1, '\t');
            fprintf(f, "%.*s\tnan%s\n", (int)(tab - tsv), tsv, strchr(tab + 1, '\t') ? strchr(tab + 1, '\t') : "");
        } else fprintf(f, "%s\n%s\n", tsv, last + 1);
        fclose(f);
        snprintf(args, sizeof args, "trajectory %s %s/sim/sim.h5ad --out %s/bad%d", bad, dir, dir, c);
        expect_cli(args, 3, cases[c][1]);
        snprintf(path, sizeof path, "%s/bad%d/embedding.h5ad", dir, c);
        assert_false(tu_exists(path));
    }
    free(tsv);
    snprintf(args, sizeof args, "trajectory %s/m/embedding.h5ad %s/sim/sim.h5ad --use-rep X_scVI --out %s/bad3", dir,
             dir, dir);
    expect_cli(args, 3, "obsm holds: X_diffmap, X_nbsphere");
    snprintf(args, sizeof args, "trajectory %s/m/model.h5 %s/sim/sim.h5ad --use-rep X_pca --out %s/bad4", dir, dir, dir);
    expect_cli(args, 2, "are for an embedding");
    snprintf(args, sizeof args, "trajectory %s/m/embedding.tsv %s/sim/sim.h5ad --metric manhattan --out %s/bad5", dir,
             dir, dir);
    expect_cli(args, 2, "--metric takes euclidean or cosine");
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gauss_kernel_matches_scanpy_formula),
        cmocka_unit_test(test_paga_counts_edges_against_random),
        cmocka_unit_test(test_dpt_follows_simulated_time),
        cmocka_unit_test(test_diffmap_and_dpt_match_python),
        cmocka_unit_test(test_other_component_gets_nan),
        cmocka_unit_test(test_diffmap_on_a_ring_clustered_and_repeated),
        cmocka_unit_test(test_bad_roots_and_sizes),
        cmocka_unit_test(test_edge_hops_on_a_path),
        cmocka_unit_test(test_wraparound_on_a_circle),
        cmocka_unit_test(test_wraparound_on_long_branches),
        cmocka_unit_test(test_trajectory_of_given_embedding),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
