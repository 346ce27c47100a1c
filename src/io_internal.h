/* Helpers of the readers and writers that are not about HDF5 (io_h5_internal.h has those). Not
 * part of the public API. */
#ifndef NBSPHERE_IO_INTERNAL_H
#define NBSPHERE_IO_INTERNAL_H

#include <stdint.h>

#include "nbsphere/error.h"
#include "nbsphere/io.h"
#include "nbsphere/matrix.h"

/* 1 when the file starts with the gzip magic bytes. */
int nbs_io_is_gzip(const char *path);

/* A gzip-compressed file (paul15.h5ad.gz) is inflated with zlib into a fresh temporary file
 * (under $TMPDIR or /tmp) whose name goes to tmp (size >= NBS_PATH_MAX); the caller removes it
 * when done. Returns 1 and fills tmp when path was gzip, 0 when it is not, <0 on error. */
int nbs_io_gunzip_temp(const char *path, char *tmp, nbs_error *err);

/* Labels from a source listing (names[i], vals[i]) for n rows, put in m's cell order by barcode
 * into a new array *labels (NULL where a cell is not listed). An error when no cell matches;
 * a warning when some do not, or, with every_cell naming the column (covariates), an error naming
 * the first cell that is not listed. Shared by the h5ad obs and the labels-table readers. */
int nbs_io_match_labels(char **names, char **vals, int64_t n, const nbs_matrix *m, char ***labels,
                        const char *path, const char *every_cell, nbs_error *err);

/* The readers behind nbs_io_read_h5ad_obs and nbs_io_read_labels_table, with every_cell as above. */
int nbs_io_read_h5ad_obs_cells(const char *path, const char *column, const nbs_matrix *m, const char *every_cell,
                               char ***labels, nbs_error *err);
int nbs_io_read_labels_table_cells(const char *path, const char *column, const nbs_matrix *m,
                                   const char *every_cell, char ***labels, nbs_error *err);

/* The table half of nbs_io_read_embedding (io_table.c). */
int nbs_io_read_embedding_table(const char *path, nbs_embedding_table *e, nbs_error *err);

#endif
