/* Out-of-core input (input.backed): an .h5ad's CSR X (or raw/X, or a CSR layer) or a 10x HDF5
 * matrix read a block of rows at a time, never whole. Both store each cell's counts contiguously
 * (indptr, indices, data), so a run of cells is one read of each dataset. The file serves the
 * streamed preprocessing (nbs_preprocess_stream), the training minibatches (nbs_train_from, in
 * shuffled blocks of contiguous cells), and the cells the diagnostics and the outputs read. */
#ifndef NBSPHERE_BACKED_H
#define NBSPHERE_BACKED_H

#include <stdint.h>

#include "nbsphere/config.h"
#include "nbsphere/covariates.h"
#include "nbsphere/error.h"
#include "nbsphere/matrix.h"
#include "nbsphere/preprocess.h"
#include "nbsphere/train.h"

typedef struct nbs_backed nbs_backed;

/* input.memory_limit in bytes (auto: NBS_BACKED_RAM_FRACTION of the physical memory); *whose names
 * where the figure comes from, for messages. */
double nbs_backed_memory_limit(const nbs_input_config *in, const char **whose);

/* Whether a run reads its input out of core: input.backed true or false as given; auto when the
 * in-memory estimate of the input (nbs_backed_estimate) exceeds input.memory_limit (megabytes;
 * auto: NBS_BACKED_RAM_FRACTION of the physical memory) and the format can be read so. The
 * reason, for the log, into why (size >= 256; "" when there was nothing to choose: auto with an
 * input only memory can read). */
#define NBS_BACKED_RAM_FRACTION 0.5
int nbs_backed_decide(const nbs_input_config *in, nbs_format format, int *backed, char *why, nbs_error *err);
/* Bytes an in-memory run holds for a matrix of n_cells x n_genes with nnz stored counts. */
double nbs_backed_estimate(int64_t n_cells, int64_t n_genes, int64_t nnz);

/* Opens in->path (format NBS_FMT_H5AD with in->layer, or NBS_FMT_10X_H5 with in->genome and
 * in->feature_types): reads the shape, indptr (8 bytes per cell) and the gene names, checks the
 * layout; a dense X, a CSC matrix or a gzip-compressed file is NBS_ERR_INPUT saying to leave
 * input.backed off (or to convert the file).
 * With in->samples (format unused: each sample's, as nbs_samples_read resolves it) every sample's
 * file is opened so, and the handle is one matrix of rows: sample 1's, then sample 2's, ...; the
 * genes matched as nbs_samples_concat matches them (same order, input.join, same refusals), each
 * row's entries in the matched genes' order, and the cell names suffixed "-<sample>". Every
 * function below works across the files (a run of rows may span two). */
int nbs_backed_open(const nbs_input_config *in, nbs_format format, nbs_backed **out, nbs_error *err);
void nbs_backed_close(nbs_backed *b);
int64_t nbs_backed_n_cells(const nbs_backed *b);
int64_t nbs_backed_n_genes(const nbs_backed *b); /* the input genes (after input.feature_types) */
int64_t nbs_backed_nnz(const nbs_backed *b); /* stored in the files (genes a join drops included) */
/* The sample (index in input.samples) of row r; 0 for one file. */
int nbs_backed_file_of_row(const nbs_backed *b, int64_t r);
char *const *nbs_backed_gene_names(const nbs_backed *b);
char *const *nbs_backed_gene_ids(const nbs_backed *b);
/* The rows of the file as nbs_preprocess_stream reads them (blocks of at most
 * NBS_BACKED_SCAN_NNZ stored counts), validated as nbs_io_read validates (input.non_integer). */
#define NBS_BACKED_SCAN_NNZ (1 << 22)
nbs_row_source nbs_backed_rows(nbs_backed *b);
/* The same over rows [row0, row1) only (one process's rows of a data-parallel run, for
 * nbs_preprocess_stream_shared); from then on nbs_backed_rows scans that range too. */
nbs_row_source nbs_backed_rows_range(nbs_backed *b, int64_t row0, int64_t row1);
/* Rows of the file read so far, for every purpose (scans, minibatches, subsets; a row read twice
 * counts twice). */
int64_t nbs_backed_rows_read(const nbs_backed *b);
/* Cell names of rows [row0, row0 + n) of the file into names (n malloc'd strings). */
int nbs_backed_barcodes(nbs_backed *b, int64_t row0, int64_t n, char **names, nbs_error *err);

/* The names of file rows rows[0..n) (ascending; NULL: every row, n = the file's cells) as a matrix
 * of n cells and no genes: what the obs and labels-table readers match cells by (covariates,
 * labels). Read 64 Ki rows at a time; the caller frees it as soon as the columns are read. */
int nbs_backed_cell_names(nbs_backed *b, const int64_t *rows, int64_t n, nbs_matrix **out, nbs_error *err);

/* The kept cells of a preprocessing result, read from b, with only the chosen genes' columns:
 * minibatches in shuffled blocks, and any set of cells as an in-memory matrix. Borrows b and pre
 * (and row_nnz, nbs_preprocess_stream's) for its life. Cells are positions 0 .. pre->n_cells - 1.
 *
 * Blocks are `block` consecutive kept cells; a buffer holds `shuffle_blocks` of them. A training
 * epoch (nbs_batch_source.order with a generator) shuffles the blocks, groups them shuffle_blocks
 * at a time, and shuffles the cells within each group, taken in the split's order; when one group
 * holds every block the block shuffle is skipped, so with block 1 and shuffle_blocks >= cells the
 * epoch's order is exactly the in-memory one (one shuffle of the training cells), and so is every
 * minibatch. Validation groups the blocks in file order, the split's order within a group.
 * Memory: shuffle_blocks x block cells' counts, a minibatch, and 16 bytes per cell. */
typedef struct nbs_backed_loader nbs_backed_loader;
nbs_backed_loader *nbs_backed_loader_new(nbs_backed *b, const nbs_preprocess_result *pre, const int32_t *row_nnz,
                                         int64_t block, int64_t shuffle_blocks, int batch, nbs_error *err);
void nbs_backed_loader_free(nbs_backed_loader *l);
nbs_batch_source nbs_backed_loader_source(nbs_backed_loader *l);
/* The covariates of the kept cells (v, by position; borrowed): each minibatch then carries its
 * cells' rows of them, as nbs_covariates_attach gives the in-memory batches (in a process's share,
 * below, too: the rows go by kept cell, not by what the buffer read). */
int nbs_backed_loader_covariates(nbs_backed_loader *l, const nbs_covariate_values *v, nbs_error *err);
/* A data-parallel run (size > 1 processes, this one rank): the loader reads only the cells of
 * this process's share of each global batch (train.h, nbs_train_reduce: batch x size cells, the
 * process taking positions [m rank / size, m (rank + 1) / size) of each of m cells), each run of
 * consecutive file rows among them one read, at most shuffle_blocks blocks at a time; minibatches
 * are those of one process taking the whole global batch. Call before training. */
int nbs_backed_loader_share(nbs_backed_loader *l, int rank, int size, nbs_error *err);
/* Kept cells cells[0..n) (ascending) as a new matrix (n x chosen genes, no names) and their
 * library sizes (*library, n, malloc'd). */
int nbs_backed_loader_read(nbs_backed_loader *l, const int64_t *cells, int64_t n, nbs_matrix **out, double **library,
                           nbs_error *err);

#endif
