/* Integration metrics of an embedding (scIB: Luecken et al. 2022, Nat. Methods 19:41, the scib
 * package): how well batches mix (iLISI, batch ASW, graph connectivity) and how well the labels
 * stay apart (k-NN label accuracy, cLISI, Leiden NMI and ARI, cell-type ASW), with scIB's
 * overall score 0.4 batch + 0.6 biology. Each score lies in [0, 1], higher is better; a score
 * that is not defined for the data (one batch, no labels) is NaN and said so in notes. */
#ifndef NBSPHERE_INTEGRATE_H
#define NBSPHERE_INTEGRATE_H

#include <stdint.h>

#include "nbsphere/error.h"
#include "nbsphere/evaluate.h"
#include "nbsphere/graph.h"

#define NBS_INTEGRATION_LISI_K 90        /* scib's k0 for LISI */
#define NBS_INTEGRATION_GRAPH_K 15       /* sc.pp.neighbors' default: Leiden and graph connectivity */
#define NBS_INTEGRATION_RESOLUTIONS 20   /* Leiden at 0.1, 0.2, ..., 2.0 (scib's sweep) */
#define NBS_CONFOUNDED_CRAMERS_V 0.5     /* batch-label association called confounding */
#define NBS_CONFOUNDED_MIN_CELLS 10      /* a label this large seen in one batch only */

/* Per-cell LISI (Korsunsky et al. 2019, Harmony): for cell i with neighbour distances D_ij
 * (k-NN graph g, Euclidean), p_ij = exp(-beta D_ij) / sum, beta found by bisection so the
 * entropy of p is log(perplexity) (tolerance 1e-5, 50 steps, as harmony's compute_simpson),
 * and LISI_i = 1 / sum_c (sum of p_ij over neighbours j of category c)^2, the effective number
 * of categories around the cell. codes [n] in 0..n_codes-1; lisi [n] (NaN for a cell whose
 * weights vanish). */
int nbs_lisi(const nbs_graph *g, const int32_t *codes, int n_codes, double perplexity, double *lisi,
             nbs_error *err);

/* Silhouette widths as sklearn.metrics.silhouette_samples (Euclidean) of the cells rows [m] of
 * x [* x d] with groups codes (by row of x, 0..n_codes-1): s = (b - a) / max(a, b), a the mean
 * distance to the cell's own group, b the smallest mean distance to another group; 0 for a cell
 * alone in its group. s [m]. Needs at least 2 groups among the cells. */
int nbs_silhouette(const float *x, int d, const int64_t *rows, int64_t m, const int32_t *codes, int n_codes,
                   double *s, nbs_error *err);

/* sklearn's normalized_mutual_info_score (arithmetic mean of the entropies) and
 * adjusted_rand_score of two labelings a, b [n] (codes >= 0; cells with a negative code in
 * either are skipped) into *out (NaN when no cell has both). NBS_ERR_NOMEM if the contingency
 * table cannot be allocated. */
int nbs_nmi(const int32_t *a, const int32_t *b, int64_t n, double *out, nbs_error *err);
int nbs_ari(const int32_t *a, const int32_t *b, int64_t n, double *out, nbs_error *err);
/* Cramér's V of the contingency table of a and b: sqrt(chi^2 / (n (min(r, c) - 1))); NaN when
 * either has a single category among the counted cells. */
int nbs_cramers_v(const int32_t *a, const int32_t *b, int64_t n, double *out, nbs_error *err);

typedef struct {
    int n_batches, n_labels;           /* categories seen among the cells */
    int64_t n_labelled;
    int lisi_k;                        /* neighbours of LISI: min(90, cells - 1); perplexity lisi_k / 3 */
    /* batch correction (NaN: not defined) */
    double ilisi;                      /* (median iLISI - 1) / (B - 1) */
    double batch_asw;                  /* mean over labels of mean(1 - |s_batch|) within the label */
    double graph_connectivity;         /* mean over labels of largest component / label size */
    /* biology conservation */
    double knn_accuracy;               /* given by the caller (nbs_eval_knn_accuracy) */
    double clisi;                      /* (L - median cLISI) / (L - 1) */
    double nmi, ari;                   /* Leiden clusters vs labels at the resolution of best NMI */
    double resolution;
    int n_clusters;
    double label_asw;                  /* (mean silhouette of the labels + 1) / 2 */
    /* aggregates */
    double batch_score, bio_score, overall;
    /* confounding of batch and labels */
    double cramers_v;
    int confounded;
    char one_batch_labels[512];        /* labels of >= NBS_CONFOUNDED_MIN_CELLS cells, all in one batch */
    char notes[512];                   /* why scores are missing */
} nbs_integration;

/* The metrics of an embedding z [n x d] (metric as for the k-NN score: cosine = Euclidean on
 * unit rows). batch [n] codes 0..n_batches-1 or NULL; labels [n] codes (negative: unlabelled,
 * left out of every label-based score) or NULL, label_names [n_labels] for the confounding
 * list; knn_accuracy NaN when not computed. Leiden runs are seeded from seed with
 * NBS_STREAM_LEIDEN, index = resolution step. The neighbour graphs (LISI, Leiden) are searched
 * as nb says (graph.h nbs_knn_find; NULL: exact); an approximate search is named in notes. */
int nbs_integration_metrics(const float *z, int64_t n, int d, nbs_metric metric, const int32_t *batch,
                            int n_batches, const int32_t *labels, int n_labels, char *const *label_names,
                            double knn_accuracy, const nbs_neighbors_config *nb, uint64_t seed,
                            nbs_integration *out, nbs_error *err);

#endif
