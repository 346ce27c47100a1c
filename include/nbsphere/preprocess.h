/* Preprocessing: cell and gene filters, then highly variable genes (Seurat v3 / scanpy's
 * flavor='seurat_v3' on raw counts), then per-cell library sizes for the NB decoder.
 * Order matters and follows scanpy's usual recipe: cells are filtered first, genes are then
 * judged on the kept cells, and HVGs are chosen among the kept genes. */
#ifndef NBSPHERE_PREPROCESS_H
#define NBSPHERE_PREPROCESS_H

#include <stdint.h>

#include "nbsphere/config.h"
#include "nbsphere/error.h"
#include "nbsphere/matrix.h"

typedef struct {
    nbs_matrix *matrix;     /* kept cells x kept genes, counts unchanged (owned) */
    int64_t n_cells, n_genes;
    int64_t *cells;         /* n_cells row indices into the input matrix, ascending */
    int64_t *genes;         /* n_genes column indices into the input matrix, ascending */
    /* Sum of each kept cell's counts over the kept genes: the l in the decoder's mean l*rho,
     * since rho is a softmax over exactly these genes. */
    double *library_size;
    double *total_counts;   /* the same over all input genes (what min_counts judged) */
    /* What each step removed, in order, for the log line. */
    int64_t n_cells_in, n_genes_in;
    int64_t removed_cells_min_counts; /* total count < min_counts */
    int64_t removed_cells_min_genes;  /* passed min_counts, but fewer than min_genes genes */
    int64_t removed_genes_min_cells;  /* expressed in fewer than min_cells kept cells */
    int64_t removed_genes_hvg;        /* passed min_cells but not among the n_top_genes */
    int64_t cells_zero_library;       /* kept cells with no count in any kept gene */
    int hvg_batches;                  /* batches the genes were ranked in (0: pooled, or no HVG step) */
} nbs_preprocess_result;

/* The batch of each input cell, for batch-aware gene selection. */
typedef struct {
    const int32_t *codes;  /* (input cells) index into names, -1 = none (refused for a kept cell) */
    int n_batches;
    char *const *names;    /* (n_batches) */
    const char *column;    /* the batch column, for messages */
} nbs_preprocess_batches;

/* Runs the filters and HVG selection on a validated matrix. On success *out owns the result.
 * An empty result (no cell or no gene left) is an NBS_ERR_INPUT naming the filter that
 * emptied it and the option to lower. */
int nbs_preprocess_run(const nbs_matrix *m, const nbs_preprocess_config *cfg,
                       nbs_preprocess_result **out, nbs_error *err);
/* The same, taking m (freed, or narrowed in place to become (*out)->matrix): one copy of the
 * counts in memory instead of two. */
int nbs_preprocess_take(nbs_matrix *m, const nbs_preprocess_config *cfg, nbs_preprocess_result **out,
                        nbs_error *err);
/* The same, with each input cell's batch (NULL: none): with cfg->hvg_batch_aware the genes are
 * ranked within each batch (nbs_preprocess_hvg_batched), else over all cells. */
int nbs_preprocess_take_batched(nbs_matrix *m, const nbs_preprocess_config *cfg, const nbs_preprocess_batches *b,
                                nbs_preprocess_result **out, nbs_error *err);
void nbs_preprocess_result_free(nbs_preprocess_result *r);
/* (Re)computes library_size and cells_zero_library from r->matrix: the one place library sizes
 * are summed, for preprocessed data and for data aligned to a saved model's genes alike. */
int nbs_preprocess_library(nbs_preprocess_result *r, nbs_error *err);

/* One line such as "kept 2638 of 2700 cells (62 below min_counts=..., ...), ..." */
void nbs_preprocess_summary(const nbs_preprocess_result *r, const nbs_preprocess_config *cfg,
                            char *buf, size_t size);

/* ---- the pieces, public so they can be tested and reused ---- */

/* Local quadratic regression (loess, degree 2, tricube weights, no robustness iterations), in
 * one dimension, with netlib loess's conventions (as in R's loess and scanpy's skmisc): each
 * local fit uses the floor(n*span) nearest points, weighted by the tricube of the distance
 * over the distance to the farthest of them. DIRECT evaluates the local fit at every x;
 * INTERPOLATE (the default of R and skmisc, hence of Seurat and scanpy) evaluates it only at
 * the vertices of netlib's k-d tree (cell = 0.2) and interpolates between them with cubic
 * Hermite polynomials. 0 < span <= 1, n >= 1. */
typedef enum { NBS_LOESS_INTERPOLATE = 0, NBS_LOESS_DIRECT } nbs_loess_surface;
int nbs_preprocess_loess(const double *x, const double *y, int64_t n, double span,
                         nbs_loess_surface surface, double *fitted, nbs_error *err);

/* Seurat v3 per-gene statistics on raw counts, as scanpy computes them for one batch:
 * mean, variance (ddof 1), the loess fit (interpolated surface) of log10(var) on log10(mean)
 * over non-constant genes (0 for constant genes), and the variance of the counts standardised
 * by that fit and clipped at mean + sqrt(n_cells) * fitted sd. Each output array has n_genes
 * entries; any of them may be NULL except norm_var. */
int nbs_preprocess_seurat_v3(const nbs_matrix *m, double span, double *mean, double *var,
                             double *log10_var_fitted, double *norm_var, nbs_error *err);

/* Batch-aware Seurat v3 (scanpy's highly_variable_genes with batch_key and flavor "seurat_v3" or
 * "seurat_v3_paper"): nbs_preprocess_seurat_v3 within each batch of at least 2 cells (batch[i] in
 * [0, n_batches) for every row of m), each batch's genes ranked by that score (0 = most variable;
 * ties to the lower index, NaN last); per gene, the number of batches in which its rank is below
 * k and the median of those ranks (none: NaN). NBS_HVG_SEURAT_V3 orders the genes by that median
 * (smaller first, NaN last), ties by the number of batches (more first); NBS_HVG_SEURAT_V3_PAPER
 * (Seurat's SelectIntegrationFeatures) by the number of batches first, ties by the median; then
 * by index. The first k, in ascending order, into out
 * (k); *used gets the number of batches ranked (0 when none has 2 cells: nothing is written).
 * Returns the number written. */
int64_t nbs_preprocess_hvg_batched(const nbs_matrix *m, const int32_t *batch, int n_batches, double span, int64_t k,
                                   nbs_hvg_flavor flavor, int64_t *out, int *used, nbs_error *err);

/* Indices of the k largest scores in ascending index order (ties: lower index first).
 * k is clipped to n; returns the number written to out. */
int64_t nbs_preprocess_top_k(const double *score, int64_t n, int64_t k, int64_t *out);


/* ---- out of core (backed.h): the same steps in passes over the rows of a file ---- */

/* Called with each block of rows of the input in order: a CSR view of block->n_cells rows over
 * every input gene (indptr from 0), whose first row is row `first` of the input. */
typedef int (*nbs_rows_visit)(void *ctx, const nbs_matrix *block, int64_t first, nbs_error *err);
/* The input's rows, n_cells x n_genes, handed to visit in order, block by block, by scan; the
 * values as nbs_io_read would validate them. */
typedef struct {
    void *user;
    int64_t n_cells, n_genes;
    int (*scan)(void *user, nbs_rows_visit visit, void *ctx, nbs_error *err);
} nbs_row_source;

/* nbs_preprocess_run without the matrix: the cell filters, the gene filter, pooled Seurat v3 and
 * the library sizes in four passes over src (three without highly variable genes), with the same
 * arithmetic in the same order, so the cells, genes and library sizes are bit-identical to
 * nbs_preprocess_run's. (*out)->matrix is NULL; *row_nnz (kept cells) gets each kept cell's
 * entries in the chosen genes (what sizes a minibatch). Memory: O(cells + genes). */
int nbs_preprocess_stream(const nbs_row_source *src, const nbs_preprocess_config *cfg, nbs_preprocess_result **out,
                          int32_t **row_nnz, nbs_error *err);
/* A data-parallel run's sum over its processes: buf (n doubles) summed, the same bits on every
 * process (nbs_train_reduce.sum). */
typedef struct {
    int (*sum)(void *user, double *buf, int64_t n, nbs_error *err);
    void *user;
} nbs_sum_hook;
/* nbs_preprocess_stream with each input cell's batch and by several processes.
 * b (NULL: none), as nbs_preprocess_take_batched: with cfg->hvg_batch_aware the genes are ranked
 * within each batch, two more passes summing per batch (6 doubles per kept gene and batch),
 * bit-identical to the in-memory selection. b->codes covers every input cell on every process.
 * sum (NULL: one process scanning every row): processes that each scan only their own rows (src
 * visits a range of the input's rows; together the processes' ranges cover every row once); after
 * each pass the per-cell values (pass 0: total and detected genes; pass 3: library size and row
 * length) and the per-gene sums (per batch too) are summed through sum, so every process gets the
 * same result as one process scanning every row. Counts are integers (unless input.non_integer:
 * accept), so the gene sums of pass 1 and 4 are exact in any order; the clipped sums of passes 2
 * and 5 agree to rounding. */
int nbs_preprocess_stream_shared(const nbs_row_source *src, const nbs_preprocess_config *cfg,
                                 const nbs_preprocess_batches *b, const nbs_sum_hook *sum, nbs_preprocess_result **out,
                                 int32_t **row_nnz, nbs_error *err);

#endif
