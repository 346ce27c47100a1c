/* Quality measures for embeddings: a PCA baseline of the same cells, and how well an
 * embedding's neighbourhoods predict known cell labels (cross-validated kNN accuracy).
 * Both are what an embedding is compared against in benchmarks: a VAE embedding that loses
 * to PCA on kNN accuracy has not learned the cell types. */
#ifndef NBSPHERE_EVALUATE_H
#define NBSPHERE_EVALUATE_H

#include <stdint.h>

#include <gsl/gsl_rng.h>

#include "nbsphere/config.h"
#include "nbsphere/error.h"
#include "nbsphere/matrix.h"
#include "nbsphere/preprocess.h"

/* Top-k principal components of log1p(CP10k) of m (every column is used; cells are rows),
 * each gene centred. Randomized SVD (Halko, Martinsson & Tropp 2011): a Gaussian test matrix
 * with k + 10 columns drawn from rng, power_iters rounds of power iteration with QR
 * re-orthonormalisation, then an exact SVD of the small projected matrix. The centring is
 * never materialised: products with the centred matrix are sparse products minus a rank-one
 * correction. scores is [n_cells x k] row-major (cell i's coordinates at scores[i*k]);
 * variance (may be NULL) gets the k explained variances (squared singular value / (n-1)).
 * Signs are fixed so each component's largest-magnitude score is positive. 4 power
 * iterations are plenty for single-cell data. */
int nbs_eval_pca(const nbs_matrix *m, int k, int power_iters, gsl_rng *rng, float *scores,
                 double *variance, nbs_error *err);

/* The same PCA out of core (input.backed): the rows of src (cells x genes; the library of each
 * cell is its counts in src's genes, as above) streamed twice, a block at a time. Pass 1 sums
 * X^T X (densified 256 rows at a time, a BLAS rank-k update), the gene sums and the
 * rows; then the covariance (X^T X - n mu mu^T) / (n - 1), each gene centred as above, and its
 * top k eigenpairs (LAPACK dsyevr). Pass 2 projects each row: scores [rows visited x k], in the
 * order src visits them, (x - mu)^T V; variance (may be NULL) gets the k eigenvalues, which are
 * the explained variances. Each component's largest-magnitude loading is made positive (a
 * convention of the loadings, not of the scores as above: the two agree up to sign).
 * Exact where the randomized PCA is approximate: on data whose top eigenvalues are well apart
 * the two agree to the randomized PCA's accuracy (tests/test_evaluate.c).
 * sum (NULL: src visits every row): src visits this process's rows only, and pass 1's sums are
 * summed over the processes through sum before the eigenvectors, so every process gets the same
 * components and projects its own rows.
 * Memory: 8 (g^2 + (258 + k) g) bytes whatever the number of rows, plus the scores (4 k bytes a row).
 * k is at most NBS_PCA_STREAM_MAX_K. */
#define NBS_PCA_STREAM_MAX_K 128
int nbs_eval_pca_stream(const nbs_row_source *src, int k, const nbs_sum_hook *sum, float *scores, double *variance,
                        nbs_error *err);

typedef enum { NBS_METRIC_EUCLIDEAN = 0, NBS_METRIC_COSINE } nbs_metric;

/* Label strings to integer codes 0..n_classes-1 in order of first appearance; a NULL or empty
 * label gets code -1 (such cells take no part in kNN scoring). */
int nbs_eval_label_codes(char *const *labels, int64_t n, int32_t *codes, int *n_classes,
                         nbs_error *err);

/* Cross-validated kNN accuracy of an embedding [n x d] (row-major float) for labels (codes;
 * negative = unlabelled, skipped). The labelled cells are shuffled with rng and split into
 * `folds` folds; each fold's cells are predicted by the majority label of their k nearest
 * cells in the other folds (a tie goes to the tied label held by the nearest of those
 * neighbours). *accuracy = mean over folds of the fraction predicted correctly; fold_accuracy
 * (may be NULL) gets each fold's. Cosine distance is Euclidean distance after scaling rows to
 * unit length. Each fold's search is nbs_knn_find's (graph.h) with nb and seed (nb NULL:
 * exact): neighbors.method auto keeps it exact while a fold's training cells are at most
 * nb->exact_max_cells, and uses FLANN's k-means tree over them above. info (may be NULL) gets what
 * ran; for the approximate search its recall is the folds' pooled recall against exact. */
struct nbs_knn_info;
int nbs_eval_knn_accuracy(const float *embedding, int64_t n, int d, const int32_t *labels, int k,
                          int folds, nbs_metric metric, const nbs_neighbors_config *nb, uint64_t seed,
                          gsl_rng *rng, double *accuracy, double *fold_accuracy, struct nbs_knn_info *info,
                          nbs_error *err);

#endif
