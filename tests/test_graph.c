/* Neighbour graphs (graph.h) and the scIB integration metrics (integrate.h) against
 * scikit-learn, scipy, numpy and python-igraph on small constructed data: the expected
 * constants come from tests/integrate_reference.py (run it with /usr/bin/python3 to see them),
 * plus edge cases: one batch, a label with one cell, unlabelled cells; and the approximate k-NN
 * search (FLANN) against the exact one on a constructed mixture. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <gsl/gsl_randist.h>

#include "nbsphere/graph.h"
#include "nbsphere/integrate.h"
#include "nbsphere/nn.h"

enum { N = 48, D = 3 };

/* The reference script's data: label i % 3, batch (i / 3) % 2. */
/* A pair score's value, asserting it computed. */
static double score_of(int (*score)(const int32_t *, const int32_t *, int64_t, double *, nbs_error *),
                       const int32_t *a, const int32_t *b, int64_t n) {
    nbs_error err = {0};
    double v = -2;
    assert_int_equal(score(a, b, n, &v, &err), NBS_OK);
    return v;
}

static void toy(float *x, int32_t *lab, int32_t *bat) {
    for (int i = 0; i < N; i++) {
        lab[i] = i % 3;
        bat[i] = (i / 3) % 2;
        for (int j = 0; j < D; j++)
            x[i * D + j] = (float)(((i * 37 + j * 11) % 17) / 17.0 + 2.0 * lab[i] * (j == lab[i]) +
                                   0.3 * bat[i] * (j == 2));
    }
}

/* sklearn NearestNeighbors(n_neighbors=6): cell 0's five others and their distances */
static void test_knn_matches_sklearn(void **state) {
    (void)state;
    float x[N * D];
    int32_t lab[N], bat[N];
    toy(x, lab, bat);
    nbs_graph g;
    nbs_error err = {0};
    assert_int_equal(nbs_graph_knn(x, N, D, 5, NBS_METRIC_EUCLIDEAN, NULL, 0, &g, NULL, &err), NBS_OK);
    const int64_t idx[5] = {6, 12, 18, 24, 30};
    const double dist[5] = {0.101885338, 0.203770675, 0.305656015, 0.407541368, 0.509426712};
    assert_int_equal(g.indptr[1], 5);
    for (int j = 0; j < 5; j++) {
        assert_int_equal(g.indices[j], idx[j]);
        assert_true(fabs(g.weights[j] - dist[j]) < 1e-5);
    }
    for (int64_t e = 0; e < g.indptr[N]; e++) assert_true(g.indices[e] != e / 5); /* never itself */
    nbs_graph_free(&g);
    /* as many neighbours as cells is refused with a message */
    assert_int_equal(nbs_graph_knn(x, 5, D, 5, NBS_METRIC_EUCLIDEAN, NULL, 0, &g, NULL, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "too few"));
    x[7] = NAN;
    assert_int_equal(nbs_graph_knn(x, N, D, 5, NBS_METRIC_EUCLIDEAN, NULL, 0, &g, NULL, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "cell 3, dimension 2"));
}

/* UMAP connectivities: symmetric, in (0, 1], and each cell's own (directed) weights sum to
 * log2(k + 1) before the union, which leaves every row's sum at least that */
static void test_connectivities(void **state) {
    (void)state;
    float x[N * D];
    int32_t lab[N], bat[N];
    toy(x, lab, bat);
    nbs_graph knn, c;
    nbs_error err = {0};
    assert_int_equal(nbs_graph_knn(x, N, D, 14, NBS_METRIC_EUCLIDEAN, NULL, 0, &knn, NULL, &err), NBS_OK);
    assert_int_equal(nbs_graph_connectivities(&knn, &c, &err), NBS_OK);
    for (int64_t i = 0; i < N; i++) {
        double row = 0;
        for (int64_t e = c.indptr[i]; e < c.indptr[i + 1]; e++) {
            int64_t j = c.indices[e];
            assert_true(c.weights[e] > 0 && c.weights[e] <= 1 + 1e-12);
            if (e > c.indptr[i]) assert_true(j > c.indices[e - 1]);
            int found = 0;
            for (int64_t f = c.indptr[j]; f < c.indptr[j + 1]; f++)
                if (c.indices[f] == i) found = 1, assert_true(fabs(c.weights[f] - c.weights[e]) < 1e-15);
            assert_true(found);
            row += c.weights[e];
        }
        assert_true(row >= log2(15.0) - 1e-4);
    }
    nbs_graph_free(&knn);
    nbs_graph_free(&c);
}

/* scipy connected_components: edges 0-1, 1-2, 3-4 and 5 alone give 3; without vertex 1, {0},
 * {2}, {3, 4} */
static void test_components(void **state) {
    (void)state;
    int64_t indptr[7] = {0, 1, 3, 4, 5, 6, 6}, indices[6] = {1, 0, 2, 1, 4, 3};
    double w[6] = {1, 1, 1, 1, 1, 1};
    nbs_graph g = {6, indptr, indices, w};
    int32_t comp[6];
    int64_t nc = 0, big = 0;
    nbs_error err = {0};
    assert_int_equal(nbs_graph_components(&g, NULL, comp, &nc, &big, &err), NBS_OK);
    assert_int_equal(nc, 3);
    assert_int_equal(big, 3);
    assert_int_equal(comp[0], comp[2]);
    assert_true(comp[3] == comp[4] && comp[3] != comp[0] && comp[5] != comp[0] && comp[5] != comp[3]);
    const uint8_t keep[6] = {1, 0, 1, 1, 1, 0};
    assert_int_equal(nbs_graph_components(&g, keep, comp, &nc, &big, &err), NBS_OK);
    assert_int_equal(nc, 3);
    assert_int_equal(big, 2);
    assert_int_equal(comp[1], -1);
    assert_int_equal(comp[5], -1);
}

/* python-igraph community_leiden(objective_function="modularity", resolution 1): three
 * 5-cliques in a ring split into the cliques (modularity 0.575757576) */
static void test_leiden_cliques(void **state) {
    (void)state;
    int64_t indptr[16], indices[70];
    double w[70];
    int64_t e = 0;
    for (int i = 0; i < 15; i++) {
        indptr[i] = e;
        int c = i / 5;
        for (int j = c * 5; j < c * 5 + 5; j++)
            if (j != i) indices[e] = j, w[e++] = 1;
        if (i % 5 == 4) indices[e] = (i + 1) % 15, w[e++] = 1; /* the ring: 4-5, 9-10, 14-0 */
        if (i % 5 == 0) indices[e] = (i + 14) % 15, w[e++] = 1;
    }
    indptr[15] = e;
    nbs_graph g = {15, indptr, indices, w};
    int32_t memb[15], again[15];
    int nc = 0;
    nbs_error err = {0};
    assert_int_equal(nbs_graph_leiden(&g, 1.0, 7, memb, &nc, &err), NBS_OK);
    assert_int_equal(nc, 3);
    const int32_t truth[15] = {0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2};
    assert_true(fabs(score_of(nbs_ari, memb, truth, 15) - 1) < 1e-12);
    /* the seed reproduces the partition; a tiny resolution merges everything */
    assert_int_equal(nbs_graph_leiden(&g, 1.0, 7, again, &nc, &err), NBS_OK);
    assert_memory_equal(memb, again, sizeof memb);
    assert_int_equal(nbs_graph_leiden(&g, 1e-3, 7, again, &nc, &err), NBS_OK);
    assert_int_equal(nc, 1);
    assert_int_equal(nbs_graph_leiden(&g, -1, 7, again, &nc, &err), NBS_ERR_USAGE);
}

/* sklearn normalized_mutual_info_score, adjusted_rand_score; Cramér's V by numpy */
static void test_nmi_ari_cramer(void **state) {
    (void)state;
    const int32_t a[10] = {0, 0, 1, 1, 2, 2, 2, 0, 1, 3}, b[10] = {1, 1, 0, 0, 0, 2, 2, 1, 0, 0};
    assert_true(fabs(score_of(nbs_nmi, a, b, 10) - 0.715769916) < 1e-8);
    assert_true(fabs(score_of(nbs_ari, a, b, 10) - 0.482758621) < 1e-8);
    assert_true(fabs(score_of(nbs_cramers_v, a, b, 10) - 0.875595036) < 1e-8);
    const int32_t one[4] = {0, 0, 0, 0}, other[4] = {2, 2, 2, 2};
    assert_true(score_of(nbs_nmi, one, other, 4) == 1.0); /* sklearn: both a single class */
    assert_true(score_of(nbs_ari, one, other, 4) == 1.0);
}

/* sklearn silhouette_samples; numpy for scib's batch ASW and harmony's LISI */
static void test_silhouette_lisi(void **state) {
    (void)state;
    float x[N * D];
    int32_t lab[N], bat[N];
    toy(x, lab, bat);
    int64_t rows[N];
    double s[N], lisi[N];
    for (int i = 0; i < N; i++) rows[i] = i;
    nbs_error err = {0};
    assert_int_equal(nbs_silhouette(x, D, rows, N, lab, 3, s, &err), NBS_OK);
    double mean = 0;
    for (int i = 0; i < N; i++) mean += s[i];
    assert_true(fabs((mean / N + 1) / 2 - 0.868285486) < 1e-6);
    nbs_graph g;
    assert_int_equal(nbs_graph_knn(x, N, D, 15, NBS_METRIC_EUCLIDEAN, NULL, 0, &g, NULL, &err), NBS_OK);
    assert_int_equal(nbs_lisi(&g, bat, 2, 5.0, lisi, &err), NBS_OK);
    assert_true(fabs(lisi[0] - 1.08406585) < 1e-5);
    double sorted[N];
    memcpy(sorted, lisi, sizeof sorted);
    for (int i = 1; i < N; i++) /* median of 48: mean of the 24th and 25th */
        for (int j = i; j > 0 && sorted[j - 1] > sorted[j]; j--) {
            double t = sorted[j];
            sorted[j] = sorted[j - 1], sorted[j - 1] = t;
        }
    assert_true(fabs((sorted[23] + sorted[24]) / 2 - 1.14162021) < 1e-5);
    assert_int_equal(nbs_lisi(&g, lab, 3, 5.0, lisi, &err), NBS_OK);
    assert_true(fabs(lisi[0] - 1) < 1e-6);
    nbs_graph_free(&g);
    /* one group only is refused */
    int32_t zero[N] = {0};
    assert_int_equal(nbs_silhouette(x, D, rows, N, zero, 1, s, &err), NBS_ERR_INPUT);
}

/* The whole set: known scores on the toy data (LISI k = min(90, n - 1) = 47, perplexity 47/3),
 * and the edge cases */
static void test_integration_metrics(void **state) {
    (void)state;
    float x[N * D];
    int32_t lab[N], bat[N];
    toy(x, lab, bat);
    char *names[3] = {"a", "b", "c"};
    nbs_integration r;
    nbs_error err = {0};
    assert_int_equal(nbs_integration_metrics(x, N, D, NBS_METRIC_EUCLIDEAN, bat, 2, lab, 3, names, 0.9, NULL, 1, &r, &err),
                     NBS_OK);
    assert_true(fabs(r.batch_asw - 0.665345797) < 1e-6);
    assert_true(fabs(r.label_asw - 0.868285486) < 1e-6);
    assert_true(fabs(r.clisi - 0.950724247) < 1e-5);
    assert_true(fabs(r.ilisi - 0.917509549) < 1e-5);
    assert_true(fabs(r.nmi - 1) < 1e-12 && fabs(r.ari - 1) < 1e-12);
    assert_true(r.graph_connectivity > 0 && r.graph_connectivity <= 1);
    assert_true(fabs(r.batch_score - (r.ilisi + r.batch_asw + r.graph_connectivity) / 3) < 1e-12);
    assert_true(fabs(r.bio_score - (0.9 + r.clisi + r.nmi + r.ari + r.label_asw) / 5) < 1e-12);
    assert_true(fabs(r.overall - (0.4 * r.batch_score + 0.6 * r.bio_score)) < 1e-12);
    assert_true(fabs(r.cramers_v) < 1e-12); /* every label equally in both batches */
    assert_false(r.confounded);

    /* one batch: batch scores omitted with a note, not a number */
    int32_t one[N] = {0};
    assert_int_equal(nbs_integration_metrics(x, N, D, NBS_METRIC_EUCLIDEAN, one, 1, lab, 3, names, NAN, NULL, 1, &r, &err),
                     NBS_OK);
    assert_true(isnan(r.ilisi) && isnan(r.batch_asw) && isnan(r.graph_connectivity) && isnan(r.overall));
    assert_true(isfinite(r.bio_score));
    assert_non_null(strstr(r.notes, "one batch"));

    /* a label with one cell, some cells unlabelled, and a label found in one batch only */
    int32_t l2[N], b2[N];
    for (int i = 0; i < N; i++) l2[i] = lab[i], b2[i] = bat[i];
    l2[0] = 3;                      /* alone */
    l2[1] = l2[4] = -1;             /* unlabelled */
    for (int i = 0; i < N; i++)
        if (lab[i] == 2) b2[i] = 1; /* label c only in batch 1 */
    char *names4[4] = {"a", "b", "c", "d"};
    assert_int_equal(nbs_integration_metrics(x, N, D, NBS_METRIC_EUCLIDEAN, b2, 2, l2, 4, names4, NAN, NULL, 1, &r, &err),
                     NBS_OK);
    assert_int_equal(r.n_labelled, N - 2);
    assert_int_equal(r.n_labels, 4);
    assert_non_null(strstr(r.notes, "unlabelled"));
    assert_true(isfinite(r.batch_asw) && isfinite(r.graph_connectivity) && isfinite(r.nmi));
    assert_true(r.confounded);
    assert_non_null(strstr(r.one_batch_labels, "c (16 cells)"));
    assert_null(strstr(r.one_batch_labels, "d ("));  /* one cell says nothing */

    /* no labels: only iLISI */
    assert_int_equal(nbs_integration_metrics(x, N, D, NBS_METRIC_COSINE, bat, 2, NULL, 0, NULL, NAN, NULL, 1, &r, &err),
                     NBS_OK);
    assert_true(isfinite(r.ilisi) && isnan(r.batch_asw) && isnan(r.nmi) && isnan(r.overall));
    assert_non_null(strstr(r.notes, "no labels"));
}

/* ---- approximate k-NN (FLANN) ---- */

enum { AN = 5000, AD = 10, AK = 15, CENTRES = 10 };
/* recall@15 of test_knn_approximate's tree, measured 0.955 (Euclidean), 0.965 (cosine), 0.968
 * (the label score's folds); the bound leaves 0.05 */
#define KNN_RECALL_BOUND 0.90

/* A mixture of CENTRES Gaussians in AD dimensions: centres N(0, 1.5^2 I), cells N(centre, I)
 * (overlapping, so the label score is below 1);
 * label [AN] the centre. */
static void mixture(float *x, int32_t *label) {
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 11);
    double c[CENTRES * AD];
    for (int i = 0; i < CENTRES * AD; i++) c[i] = gsl_ran_gaussian(r, 1.5);
    for (int i = 0; i < AN; i++) {
        label[i] = (int32_t)gsl_rng_uniform_int(r, CENTRES);
        for (int j = 0; j < AD; j++) x[i * AD + j] = (float)(c[label[i] * AD + j] + gsl_ran_gaussian(r, 1.0));
    }
    gsl_rng_free(r);
}

/* Share of the exact graph's neighbours the other graph holds, over every cell. */
static double graph_recall(const nbs_graph *exact, const nbs_graph *g, int k) {
    int64_t found = 0;
    for (int64_t i = 0; i < exact->n; i++)
        for (int u = 0; u < k; u++)
            for (int v = 0; v < k; v++) found += g->indices[i * k + v] == exact->indices[i * k + u];
    return (double)found / (double)(exact->n * k);
}

/* Recall@15 of the k-means tree (branching 16, 128 checks and no raising them: fewer than the
 * defaults, so that recall is short of 1 and the bound means something) on the mixture, against
 * KNN_RECALL_BOUND; the same seed gives the same graph, distances are exact
 * ones for the neighbours found, and the sampled recall in info agrees with the full one. */
static void test_knn_approximate(void **state) {
    (void)state;
    float *x = malloc(sizeof *x * AN * AD);
    int32_t *label = malloc(sizeof *label * AN);
    mixture(x, label);
    nbs_error err = {0};
    nbs_graph exact, a, b;
    nbs_knn_info ie, ia, ib;
    const nbs_neighbors_config nb = {NBS_KNN_APPROXIMATE, 0, 16, 128, 0};
    assert_int_equal(nbs_graph_knn(x, AN, AD, AK, NBS_METRIC_EUCLIDEAN, NULL, 0, &exact, &ie, &err), NBS_OK);
    assert_int_equal(ie.method, NBS_KNN_EXACT);
    assert_int_equal(nbs_graph_knn(x, AN, AD, AK, NBS_METRIC_EUCLIDEAN, &nb, 7, &a, &ia, &err), NBS_OK);
    assert_int_equal(ia.method, NBS_KNN_APPROXIMATE);
    assert_int_equal(ia.recall_queries, NBS_KNN_RECALL_QUERIES);
    assert_int_equal(ia.checks, 128); /* recall 0: checks as given */
    const double recall = graph_recall(&exact, &a, AK);
    print_message("approximate recall@%d on %d cells: %.4f (sampled %.4f)\n", AK, AN, recall, ia.recall);
    assert_true(recall >= KNN_RECALL_BOUND);
    assert_true(fabs(ia.recall - recall) < 0.03);
    for (int64_t i = 0; i < AN; i++) {
        assert_int_equal(a.indptr[i + 1], (i + 1) * AK);
        for (int j = 0; j < AK; j++) {
            const int64_t e = i * AK + j, nbr = a.indices[e];
            assert_true(nbr >= 0 && nbr < AN && nbr != i);
            if (j) assert_true(a.weights[e] >= a.weights[e - 1] - 1e-6); /* nearest first */
            double d2 = 0;
            for (int c = 0; c < AD; c++) d2 += (x[i * AD + c] - x[nbr * AD + c]) * (x[i * AD + c] - x[nbr * AD + c]);
            assert_true(fabs(a.weights[e] - sqrt(d2)) < 1e-4 * (1 + sqrt(d2)));
        }
    }
    /* the same seed: the same graph, on one thread as on two */
    nbs_nn_set_threads(1);
    assert_int_equal(nbs_graph_knn(x, AN, AD, AK, NBS_METRIC_EUCLIDEAN, &nb, 7, &b, &ib, &err), NBS_OK);
    nbs_nn_set_threads(2);
    assert_memory_equal(a.indices, b.indices, sizeof *a.indices * AN * AK);
    assert_memory_equal(a.weights, b.weights, sizeof *a.weights * AN * AK);
    nbs_graph_free(&b);
    /* cosine: unit rows, so the tree's Euclidean order is the cosine's */
    assert_int_equal(nbs_graph_knn(x, AN, AD, AK, NBS_METRIC_COSINE, NULL, 0, &b, NULL, &err), NBS_OK);
    nbs_graph c;
    assert_int_equal(nbs_graph_knn(x, AN, AD, AK, NBS_METRIC_COSINE, &nb, 7, &c, NULL, &err), NBS_OK);
    const double cos_recall = graph_recall(&b, &c, AK);
    print_message("approximate cosine recall@%d: %.4f\n", AK, cos_recall);
    assert_true(cos_recall >= KNN_RECALL_BOUND);
    nbs_graph_free(&b);
    nbs_graph_free(&c);

    /* a recall to reach: 16 checks (recall about 0.4) are doubled until the sample's recall is
     * 0.98, and the whole graph's follows */
    const nbs_neighbors_config tuned = {NBS_KNN_APPROXIMATE, 0, 16, 16, 0.98};
    assert_int_equal(nbs_graph_knn(x, AN, AD, AK, NBS_METRIC_EUCLIDEAN, &tuned, 7, &c, &ib, &err), NBS_OK);
    const double tuned_recall = graph_recall(&exact, &c, AK);
    print_message("checks raised from 16 to %d: sampled recall %.4f, full %.4f\n", ib.checks, ib.recall, tuned_recall);
    assert_true(ib.checks > 16 && ib.checks <= AN);
    assert_true(ib.recall >= 0.98);
    assert_true(tuned_recall >= 0.96);
    char how[400];
    nbs_knn_describe(&ib, how, sizeof how);
    assert_non_null(strstr(how, "raised from neighbors.checks = 16"));
    nbs_graph_free(&c);

    /* label scoring with a k-means tree per fold: the accuracy of the exact search within 0.01 */
    double acc_exact, acc_approx;
    nbs_knn_info il;
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(r, 3);
    assert_int_equal(nbs_eval_knn_accuracy(x, AN, AD, label, AK, 5, NBS_METRIC_EUCLIDEAN, NULL, 0, r, &acc_exact,
                                           NULL, &il, &err), NBS_OK);
    assert_int_equal(il.method, NBS_KNN_EXACT);
    gsl_rng_set(r, 3);
    assert_int_equal(nbs_eval_knn_accuracy(x, AN, AD, label, AK, 5, NBS_METRIC_EUCLIDEAN, &nb, 7, r, &acc_approx,
                                           NULL, &il, &err), NBS_OK);
    print_message("15-NN accuracy: exact %.4f, approximate %.4f (fold recall %.4f on %lld queries)\n", acc_exact,
                  acc_approx, il.recall, (long long)il.recall_queries);
    assert_int_equal(il.method, NBS_KNN_APPROXIMATE);
    assert_int_equal(il.recall_queries, 5 * NBS_KNN_RECALL_QUERIES);
    assert_true(il.recall >= KNN_RECALL_BOUND);
    assert_true(fabs(acc_exact - acc_approx) < 0.01);
    gsl_rng_free(r);

    nbs_graph_free(&exact);
    nbs_graph_free(&a);
    free(x);
    free(label);
}

/* method auto: exact up to exact_max_cells (the very graph of nbs_knn_search), approximate
 * one cell above; bad input gets a message on either path */
static void test_knn_auto_and_bad_input(void **state) {
    (void)state;
    enum { M = 600 };
    float *x = malloc(sizeof *x * AN * AD);
    int32_t *label = malloc(sizeof *label * AN);
    mixture(x, label);
    nbs_error err = {0};
    nbs_graph g, e;
    nbs_knn_info info;
    nbs_neighbors_config nb = {NBS_KNN_AUTO, M, 16, 128, 0.95};
    assert_int_equal(nbs_knn_choose(&nb, M), NBS_KNN_EXACT);
    assert_int_equal(nbs_knn_choose(&nb, M + 1), NBS_KNN_APPROXIMATE);
    assert_int_equal(nbs_knn_choose(NULL, 1000000000), NBS_KNN_EXACT);
    assert_int_equal(nbs_graph_knn(x, M, AD, AK, NBS_METRIC_EUCLIDEAN, &nb, 7, &g, &info, &err), NBS_OK);
    assert_int_equal(info.method, NBS_KNN_EXACT);
    assert_true(info.auto_chosen);
    /* identical to nbs_knn_search's neighbours and to the graph without options */
    int64_t rows[M], nn[M * AK];
    for (int i = 0; i < M; i++) rows[i] = i;
    assert_int_equal(nbs_knn_search(x, AD, rows, M, rows, M, AK, 1, nn, NULL, &err), NBS_OK);
    assert_memory_equal(g.indices, nn, sizeof nn);
    assert_int_equal(nbs_graph_knn(x, M, AD, AK, NBS_METRIC_EUCLIDEAN, NULL, 0, &e, NULL, &err), NBS_OK);
    assert_memory_equal(g.weights, e.weights, sizeof *e.weights * M * AK);
    nbs_graph_free(&g);
    nbs_graph_free(&e);
    assert_int_equal(nbs_graph_knn(x, M + 1, AD, AK, NBS_METRIC_EUCLIDEAN, &nb, 7, &g, &info, &err), NBS_OK);
    assert_int_equal(info.method, NBS_KNN_APPROXIMATE);
    char how[320];
    nbs_knn_describe(&info, how, sizeof how);
    assert_non_null(strstr(how, "FLANN"));
    assert_non_null(strstr(how, "recall@15"));
    nbs_graph_free(&g);

    /* k >= n, non-finite values, too few reference rows for the tree */
    nb.method = NBS_KNN_APPROXIMATE;
    assert_int_equal(nbs_graph_knn(x, AK, AD, AK, NBS_METRIC_EUCLIDEAN, &nb, 7, &g, NULL, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "too few"));
    x[41 * AD + 3] = INFINITY;
    assert_int_equal(nbs_graph_knn(x, M, AD, AK, NBS_METRIC_EUCLIDEAN, &nb, 7, &g, NULL, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "cell 42, dimension 4"));
    assert_int_equal(nbs_knn_find(x, AD, rows, M, rows, M, AK, 1, &nb, 7, nn, NULL, NULL, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "row 42, dimension 4"));
    x[41 * AD + 3] = 0;
    assert_int_equal(nbs_knn_find(x, AD, rows, AK, rows, M, AK, 0, &nb, 7, nn, NULL, NULL, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "neighbors.method: exact"));
    free(x);
    free(label);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_knn_matches_sklearn), cmocka_unit_test(test_connectivities),
        cmocka_unit_test(test_components),          cmocka_unit_test(test_leiden_cliques),
        cmocka_unit_test(test_nmi_ari_cramer),      cmocka_unit_test(test_silhouette_lisi),
        cmocka_unit_test(test_integration_metrics), cmocka_unit_test(test_knn_approximate),
        cmocka_unit_test(test_knn_auto_and_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
