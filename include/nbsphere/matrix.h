/* The count matrix: compressed sparse rows, cells x genes, with cell and gene names.
 * Every reader produces one; everything downstream consumes one. */
#ifndef NBSPHERE_MATRIX_H
#define NBSPHERE_MATRIX_H

#include <stdint.h>

#include "nbsphere/error.h"

typedef struct {
    int64_t n_cells;  /* rows */
    int64_t n_genes;  /* columns */
    int64_t nnz;
    int64_t *indptr;  /* n_cells + 1 offsets into indices/data */
    int32_t *indices; /* gene index of each stored entry, strictly increasing within a row */
    float *data;      /* counts; exact for integers below 2^24 */
    int values_are_integer; /* 1 when every stored value is a whole number */
    char **barcodes;        /* n_cells cell names (never NULL once loaded) */
    char **gene_ids;        /* n_genes ids (e.g. Ensembl); equal to gene_names when absent */
    char **gene_names;      /* n_genes symbols, unique (see nbs_matrix_make_names_unique) */
} nbs_matrix;

/* Allocates an empty matrix with room for nnz entries; names are allocated as NULL arrays. */
nbs_matrix *nbs_matrix_new(int64_t n_cells, int64_t n_genes, int64_t nnz, nbs_error *err);
void nbs_matrix_free(nbs_matrix *m);

/* Builds a CSR matrix from a compressed layout whose major axis may be genes (CSC of cells x
 * genes, as 10x HDF5 and h5ad CSC store it). Indices are validated (range), sorted within
 * each row, and duplicates rejected; `what` names the source for messages. Takes no ownership. */
typedef struct {
    int64_t n_major, n_minor, nnz;
    int64_t *indptr;  /* n_major + 1 */
    int32_t *indices; /* nnz minor indices (readers let HDF5 convert; out-of-range values saturate
                         and are refused as out of range) */
    float *data;      /* nnz values, in the matrix's own type */
} nbs_compressed_view;
nbs_matrix *nbs_matrix_from_compressed(const nbs_compressed_view *v, int major_is_cells,
                                       const char *what, nbs_error *err);
/* The same, taking the view's arrays (freed, also on failure; the pointers are cleared): with
 * cells as the major axis (10x HDF5, h5ad CSR) they become the matrix's own, so a reader holds
 * one copy of the entries, 8 bytes each. */
nbs_matrix *nbs_matrix_take_compressed(nbs_compressed_view *v, int major_is_cells, const char *what,
                                       nbs_error *err);

/* Builds from unsorted (cell, gene, value) triplets, 0-based, in the matrix's own types (so a
 * reader holds 12 bytes per entry and the result 8 more, nothing else); duplicates are an error
 * naming the entries (by their positions, 1-based, in the source). Zero values are dropped. */
nbs_matrix *nbs_matrix_from_triplets(int64_t n_cells, int64_t n_genes, int64_t n,
                                     const int32_t *cell, const int32_t *gene, const float *value,
                                     const char *what, nbs_error *err);

/* The same, taking ownership of the arrays (freed, also on failure): when the entries come cell
 * by cell with genes in order, as 10x writes its files, gene and value become the matrix's own
 * arrays, so loading holds 12 bytes per entry at most. */
nbs_matrix *nbs_matrix_take_triplets(int64_t n_cells, int64_t n_genes, int64_t n, int32_t *cell, int32_t *gene,
                                     float *value, const char *what, nbs_error *err);

/* Checks values: negative, NaN/Inf are errors; non-integers are an error unless policy says
 * otherwise. Sets values_are_integer. `what` names the source file for messages. */
typedef enum { NBS_NONINT_ERROR = 0, NBS_NONINT_ROUND, NBS_NONINT_ACCEPT } nbs_nonint_policy;
int nbs_matrix_validate_values(nbs_matrix *m, nbs_nonint_policy policy, const char *what,
                               nbs_error *err);

/* Makes gene names unique the way scanpy/anndata does (var_names_make_unique: the second
 * "X" becomes "X-1", the third "X-2", ...). Returns the number of names changed. */
int64_t nbs_matrix_make_names_unique(char **names, int64_t n, nbs_error *err);

/* Row and column selection; index arrays are sorted ascending. Names are copied. */
nbs_matrix *nbs_matrix_subset(const nbs_matrix *m, const int64_t *cells, int64_t n_cells,
                              const int64_t *genes, int64_t n_genes, nbs_error *err);
/* The same selection in place (no second copy of the entries); NULL keeps all rows or columns. */
int nbs_matrix_subset_inplace(nbs_matrix *m, const int64_t *cells, int64_t n_cells, const int64_t *genes,
                              int64_t n_genes, nbs_error *err);

/* Per-cell sums of the stored values (library sizes), length n_cells. */
void nbs_matrix_row_sums(const nbs_matrix *m, double *out);
/* The most stored entries any k rows hold together (the k longest rows): what a workspace for
 * batches of k cells must fit. */
int64_t nbs_matrix_max_batch_nnz(const nbs_matrix *m, int64_t k);

/* Fills names with "prefix1", "prefix2", ... when a source has none. */
int nbs_matrix_default_names(char ***names, int64_t n, const char *prefix, nbs_error *err);

/* The columns of m rearranged to the gene list names[0..n) (matched by name): a model's genes
 * in its order. Genes of the list that m lacks become all-zero columns, counted in *missing. */
nbs_matrix *nbs_matrix_align_genes(const nbs_matrix *m, char *const *names, int64_t n,
                                   int64_t *missing, nbs_error *err);

#endif
