/* Readers and writers of count matrices, labels and embeddings.
 * Reading: nbs_io_read() detects the format from path and content (or takes a forced one),
 * reads, validates (values, names vs. shape) and makes gene names unique, so every caller gets
 * a clean nbs_matrix or an error naming the file, the dataset or line, and what to do.
 * Writing: always to a temporary name in the same folder, then rename(), so a failed write
 * never leaves half a file and never replaces a good one. */
#ifndef NBSPHERE_IO_H
#define NBSPHERE_IO_H

#include <stdint.h>
#include <stdio.h>

#include "nbsphere/config.h"
#include "nbsphere/matrix.h"

/* ---- reading (io.c dispatches; io_h5.c, io_h5ad.c, io_loom.c, io_text.c and io_table.c
 * implement; config.h names the formats) ---- */

/* Format from the path (folder, extension, .gz) and the first bytes (HDF5 signature, also
 * inside gzip; MTX banner, delimiter); an HDF5 file is told apart as 10x, h5ad or loom by its
 * groups (a gzip'd one is inflated to a temporary file for that, except a .h5ad.gz). */
int nbs_io_detect_format(const char *path, nbs_format *out, nbs_error *err);

/* For an HDF5 file (plain or gzip): NBS_FMT_10X_H5 (/matrix group, or v2 genome groups holding
 * indptr/data), NBS_FMT_LOOM (/matrix dataset) or NBS_FMT_H5AD (X plus obs or var at the root);
 * an error naming the file otherwise. */
int nbs_io_h5_kind(const char *path, nbs_format *out, nbs_error *err);

/* Reads any supported format with the input section's options (format, layer, genome, feature
 * types, orientation, non-integer policy). 10x files keep only the features whose type
 * in->feature_types names (default Gene Expression; the log says what was dropped). On success
 * *out owns a validated matrix. */
int nbs_io_read(const nbs_input_config *in, nbs_matrix **out, nbs_error *err);

/* Format-specific readers (used by nbs_io_read; values not yet validated, every feature type
 * kept). The HDF5 readers also take a gzip-compressed file. */
int nbs_io_read_10x_h5(const char *path, const char *genome, nbs_matrix **out, nbs_error *err);
int nbs_io_read_h5ad(const char *path, const char *layer, nbs_matrix **out, nbs_error *err);
int nbs_io_read_10x_mtx_dir(const char *dir, nbs_matrix **out, nbs_error *err);
int nbs_io_read_mtx(const char *path, nbs_orientation orient, nbs_matrix **out, nbs_error *err);
/* Loom (loompy 2 and 3): /matrix (or /layers/<layer>) genes x cells, read in blocks of cells;
 * genes from /row_attrs/Gene (ids from Accession), cells from /col_attrs/CellID. */
int nbs_io_read_loom(const char *path, const char *layer, nbs_matrix **out, nbs_error *err);
/* Dense table: a header row of column names (with or without a name over the row-name column),
 * then one row per cell or gene: a name and one number per column; plain or gzip. Fields are
 * read as RFC 4180 has them (quotes around a field holding the delimiter, "" or a line end),
 * after a UTF-8 byte-order mark; CRLF or LF line ends. A row with another field count than the
 * first data row, or a quote never closed, is an error naming the line. With
 * NBS_ORIENT_AUTO, rows are genes when there are more data columns than rows (a filtered table
 * usually keeps more cells than genes), cells otherwise, and a warning says which. */
int nbs_io_read_table(const char *path, char delim, nbs_orientation orient, nbs_matrix **out,
                      nbs_error *err);

/* Per-cell labels for a matrix's cells, in the matrix's cell order: from an h5ad obs column
 * (categorical, strings, or numbers as text), or from a delimited text file (tab if the first
 * line has one outside quotes, else comma; quoted as the dense table; plain or gzip) with a
 * header whose first column (or one named barcode/barcodes/cell/cell_id) holds barcodes, or
 * (R's write.table) a header one name short, the barcodes then being the unnamed first field
 * unless a column is named so; `column` NULL or "" takes the first other column. A file of one
 * column holds the labels in the matrix's cell order (n_cells records, or n_cells + 1 with a
 * header).
 * labels[i] is malloc'd, NULL where a cell has no label ("NA" or empty in a table, code -1 in a
 * categorical); an error when no cell matches. Free with nbs_io_free_labels. */
int nbs_io_read_h5ad_obs(const char *path, const char *column, const nbs_matrix *m,
                         char ***labels, nbs_error *err);
int nbs_io_read_labels_table(const char *path, const char *column, const nbs_matrix *m,
                             char ***labels, nbs_error *err);
void nbs_io_free_labels(char **labels, int64_t n);

/* An embedding made elsewhere (nbsphere's embedding.tsv, scVI's or PCA's obsm entry), read for
 * the trajectory stage: n cells named by barcodes, d coordinates each. */
typedef struct {
    int64_t n;
    int d;
    char **barcodes; /* [n] */
    float *z;        /* [n x d] row-major */
    char metric[16]; /* "cosine" or "euclidean" when the file says which (uns['nbsphere'], a kappa
                      * column), else "" */
    char source[NBS_NAME_MAX + 32]; /* where the coordinates came from, for the log */
} nbs_embedding_table;

/* Reads an embedding: from an .h5ad (or .h5ad.gz) obsm[obsm_key] (a dense 2-D numeric array; NULL
 * or "" key: X_nbsphere), the barcodes its obs index, the metric uns['nbsphere']['metric'] when that
 * entry describes this key; or from a tab- or comma-separated table with a header: the first column
 * barcodes, the others coordinates, except nbsphere's own extra columns kappa (which marks a
 * spherical embedding) and var1.. (Gaussian variances), which are skipped. Values must be finite;
 * barcodes unique. Free with nbs_embedding_table_free. */
int nbs_io_read_embedding(const char *path, const char *obsm_key, nbs_embedding_table *out, nbs_error *err);
void nbs_embedding_table_free(nbs_embedding_table *e);

/* ---- writing ---- */

/* Embedding as TSV: header "barcode<TAB>dim1..dimd[<TAB>extra...]", one row per cell. Extra
 * columns (e.g. kappa, variances) are optional: n_extra columns named extra_names, values
 * row-major [n x n_extra]. */
int nbs_io_write_embedding_tsv(const char *path, char *const *barcodes, int64_t n, int d,
                               const float *embedding, int n_extra, const char *const *extra_names,
                               const float *extra, nbs_error *err);

/* The same in pieces, for an embedding written a block of cells at a time into a stream of
 * nbs_io_atomic_open: the header line, then rows. Non-zero when a write failed. */
int nbs_io_embedding_tsv_header(FILE *f, int d, int n_extra, const char *const *extra_names);
int nbs_io_embedding_tsv_rows(FILE *f, char *const *barcodes, int64_t n, int d, const float *embedding, int n_extra,
                              const float *extra);

/* A column written into obs: an anndata categorical (codes into categories), or numbers. */
typedef struct {
    const char *name;
    int n_categories;         /* > 0: categorical */
    char *const *categories;  /* (n_categories) */
    const int32_t *codes;     /* categorical: codes[i * stride] is cell i's */
    const double *values;     /* otherwise: values[i * stride] */
    int64_t stride;
} nbs_obs_column;

/* A sparse n_rows x n_cols matrix in CSR form (rows ascending), as anndata stores scipy's csr_matrix. */
typedef struct {
    int64_t n_rows, n_cols;
    const int64_t *indptr;  /* [n_rows + 1] */
    const int64_t *indices; /* [nnz] */
    const double *values;   /* [nnz] written as float32 */
} nbs_h5ad_csr;

/* The trajectory stage's results in the places scanpy keeps them: obsp['distances'] and
 * obsp['connectivities'] with uns['neighbors'] = {connectivities_key, distances_key, params:
 * {n_neighbors, method, metric}}, obsm['X_diffmap'] with uns['diffmap_evals'], uns['iroot'], and
 * uns['paga'] = {connectivities, groups}. (obs['leiden'] and obs['dpt_pseudotime'] are obs
 * columns.) */
typedef struct {
    nbs_h5ad_csr distances, connectivities;
    int n_neighbors;
    const char *method, *metric; /* "gauss"; "euclidean" or "cosine" */
    int n_dcs;
    const double *diffmap;       /* [n x n_dcs] */
    const double *evals;         /* [n_dcs] */
    int64_t iroot;
    nbs_h5ad_csr paga;           /* n_clusters x n_clusters */
    const char *groups;          /* the obs column of the clusters: "leiden" */
} nbs_h5ad_trajectory;

/* Metadata stored with an embedding in h5ad uns/nbsphere (latent type, metric, ...). */
typedef struct {
    const char *key;            /* obsm key, e.g. "X_nbsphere" */
    const char *latent;         /* "gaussian", "vmf", "power_spherical" */
    const char *metric;         /* "euclidean" or "cosine" */
    const char *version;        /* nbsphere version */
    const float *obs_kappa;     /* optional per-cell concentration, written to obs/nbsphere_kappa */
    const char *batch_key;      /* optional: uns/nbsphere/batch_key, the obs column of the batch */
    const nbs_obs_column *obs_columns; /* n_obs_columns more obs columns (the covariates), replacing */
    int n_obs_columns;                 /* any of the same name */
    const nbs_h5ad_trajectory *trajectory; /* NULL: none (else replaces the entries it names) */
} nbs_embedding_meta;

/* Writes an .h5ad readable by anndata/scanpy. If copy_from is an .h5ad (or .h5ad.gz), the output
 * is a copy of it (never modified in place; copy_from may equal path) with obsm[key], uns/nbsphere,
 * obs/nbsphere_kappa and meta's obs columns added or replaced. m's barcodes must be the source's cells, all of them or
 * the subset kept after filtering, in the source's order (else an error names the first cell that
 * is not); a subset copy keeps those rows of X, layers, raw/X, obs and obsm, and leaves out obsp
 * (graphs of all cells), with a warning. Otherwise a new file with X = the
 * counts of m (CSR float32, gzip), obs/var names (var also gene_ids), obsm[key] and uns. With
 * embedding NULL or d == 0, no obsm/uns entries are written (counts only). Objects carry no
 * time stamps: the same inputs give the same bytes. */
int nbs_io_write_h5ad(const char *path, const char *copy_from, const nbs_matrix *m, int d,
                      const float *embedding, const nbs_embedding_meta *meta, nbs_error *err);

/* Out of core: embedding.h5ad written a block of cells at a time into its temporary file on disk,
 * renamed over path when complete (removed on failure). copy_from (an .h5ad whose obs has exactly
 * n rows): a copy of it, made a MiB at a time, gains obsm[meta->key] (n x d) and uns/nbsphere
 * (and obs/nbsphere_kappa with kappa); else a new file whose X (n x n_genes, nnz entries, CSR)
 * comes with the rows. The disk space of what the rows add is reserved first. */
typedef struct nbs_h5ad_stream nbs_h5ad_stream;
int nbs_io_h5ad_stream_open(const char *path, const char *copy_from, int64_t n, int d, int kappa,
                            const nbs_embedding_meta *meta, char *const *gene_names, char *const *gene_ids,
                            int64_t n_genes, int64_t nnz, nbs_h5ad_stream **out, nbs_error *err);
/* The next n cells: names (new file), embedding (n, d), kappa (n) with kappa, counts (new file: n
 * rows of the chosen genes). */
int nbs_io_h5ad_stream_rows(nbs_h5ad_stream *s, int64_t n, char *const *barcodes, const float *z, const float *kappa,
                            const nbs_matrix *counts, nbs_error *err);
/* After the last rows: meta's obs columns (the covariates, the discrete latent's categories, the
 * trajectory's clusters; of all n cells) and its trajectory entries, as nbs_io_write_h5ad writes
 * them. */
int nbs_io_h5ad_stream_obs(nbs_h5ad_stream *s, const nbs_embedding_meta *meta, nbs_error *err);
/* Closes and renames (status NBS_OK and every cell written) or removes the file; returns the status. */
int nbs_io_h5ad_stream_close(nbs_h5ad_stream *s, int status, nbs_error *err);

/* Writers used by `nbsphere simulate` (and tests): Cell Ranger v3 HDF5 and a 10x MTX folder. */
int nbs_io_write_10x_h5(const char *path, const nbs_matrix *m, nbs_error *err);
int nbs_io_write_10x_mtx_dir(const char *dir, const nbs_matrix *m, int gzip, nbs_error *err);

/* ---- temporary-file-then-rename discipline ---- */
/* Text files: nbs_io_atomic_open creates "<path>.tmp.<pid>" (its name into tmp, size >=
 * NBS_PATH_MAX) and opens it for writing; nbs_io_atomic_close closes it and, if every write and
 * the close succeeded, renames it over path, else removes it and returns NBS_ERR_IO ("path:
 * write failed (disk full?)"). To give up half-way, fclose the stream and pass the failure to
 * nbs_io_commit_or_discard. */
int nbs_io_atomic_open(const char *path, char *tmp, FILE **f, nbs_error *err);
int nbs_io_atomic_close(FILE *f, const char *tmp, const char *path, nbs_error *err);
/* Writers with a stream of their own (zlib, HDF5) write to the name nbs_io_tmp_name makes
 * (size >= NBS_PATH_MAX), then call nbs_io_commit_or_discard with their status: NBS_OK renames
 * tmp over path; any other status removes tmp and is returned as it is (err already says why). */
void nbs_io_tmp_name(const char *path, char *tmp);
int nbs_io_commit_or_discard(const char *tmp, const char *path, int status, nbs_error *err);
/* Removes from dir the "<name>.tmp.<pid>" files, for the given names, whose process has ended
 * (left by a kill -9 or a crash mid-write); returns how many. */
int nbs_io_remove_stale_tmp(const char *dir, const char *const *names, int n_names);

/* Creates dir and its missing parents, then writes and removes a probe file in it, so that a
 * folder nobody can write to fails before any work. Returns 0; -1 when a folder could not be
 * made (its path into failed, size >= NBS_PATH_MAX), -2 when dir is not writable; errno says
 * why. */
int nbs_io_make_writable_dir(const char *dir, char *failed);

#endif
