/* HDF5 helpers shared by the 10x (io_h5.c), h5ad (io_h5ad.c) and loom (io_loom.c) readers and
 * the writers (io_write.c). Not part of the public API. */
#ifndef NBSPHERE_IO_H5_INTERNAL_H
#define NBSPHERE_IO_H5_INTERNAL_H

#include <hdf5.h>
#include <stdint.h>

#include "nbsphere/config.h"
#include "nbsphere/error.h"
#include "nbsphere/matrix.h"

/* H5Lexists on one link name (a missing intermediate group answers "no", not an error). */
int nbs_h5_has(hid_t loc, const char *name);

/* Opens a 1-D numeric dataset, checking rank and class; *len gets its length. */
hid_t nbs_h5_open_1d(hid_t loc, const char *name, const char *file, const char *grp, int64_t *len,
                     nbs_error *err);

/* Reads a whole 1-D numeric dataset converted to memtype; its length must be `expect` (any when
 * expect < 0). malloc'd; NULL with err set on failure. */
void *nbs_h5_read_1d(hid_t loc, const char *name, const char *file, const char *grp, hid_t memtype,
                     size_t elsize, int64_t expect, int64_t *len, nbs_error *err);

/* Reads a 1-D string dataset (fixed or variable length) of exactly n entries into names. */
int nbs_h5_read_strings(hid_t loc, const char *name, const char *file, const char *grp,
                        char **names, int64_t n, nbs_error *err);

/* Checks that every filter of a dataset is available in this HDF5 library, so that a missing
 * one (LZF from h5py, Blosc, ...) is reported by name with what to do, not as a read failure. */
int nbs_h5_check_filters(hid_t dset, const char *file, const char *dpath, nbs_error *err);

/* Reads a string attribute (fixed or variable length, scalar or 1-element) into buf; returns 0
 * when present and a string, -1 otherwise. */
int nbs_h5_attr_string(hid_t obj, const char *name, char *buf, size_t n);

/* The object's type at loc/name: H5O_TYPE_GROUP, H5O_TYPE_DATASET, or H5O_TYPE_UNKNOWN when
 * absent. */
H5O_type_t nbs_h5_type(hid_t loc, const char *name);

/* A gzip-compressed file (paul15.h5ad.gz) is inflated with zlib into a fresh temporary file
 * (under $TMPDIR or /tmp) whose name goes to tmp (size >= NBS_PATH_MAX); the caller removes it
 * when done. Returns 1 and fills tmp when path was gzip, 0 when it is not, <0 on error. */
int nbs_io_gunzip_temp(const char *path, char *tmp, nbs_error *err);

/* Opens an HDF5 input read-only; a gzip-compressed one (filtered_feature_bc_matrix.h5.gz) through
 * a temporary inflated copy (nbs_io_gunzip_temp) that is unlinked as soon as HDF5 holds it open,
 * so it never outlives the file handle, an error or a killed run. Close with H5Fclose. Returns
 * -1 with err set (naming path) when it is not readable HDF5. */
hid_t nbs_h5_open_input(const char *path, nbs_error *err);

/* The kind of an open HDF5 input: NBS_FMT_10X_H5 (group /matrix, or v2 genome groups),
 * NBS_FMT_LOOM (dataset /matrix) or NBS_FMT_H5AD (X with obs or var); an error otherwise. */
int nbs_h5_kind_of(hid_t f, const char *path, nbs_format *out, nbs_error *err);

/* nbs_io_read_10x_h5 that also hands back each feature's type (features/feature_type, v3) in
 * *types: n_genes malloc'd strings (free with nbs_io_free_labels), or NULL when the file has
 * none (v2). */
int nbs_io_read_10x_h5_types(const char *path, const char *genome, nbs_matrix **out, char ***types,
                             nbs_error *err);

/* For messages: the loom layers besides `layer` ("layers: spliced, unspliced"; "/matrix" when
 * a layer was read), or "" when there are none. */
void nbs_io_loom_other_matrices(const char *path, const char *layer, char *buf, size_t n);

/* Labels from a source listing (names[i], vals[i]) for n rows, put in m's cell order by barcode
 * into a new array *labels (NULL where a cell is not listed). An error when no cell matches;
 * a warning when some do not. Shared by the h5ad obs and the labels-table readers. */
int nbs_io_match_labels(char **names, char **vals, int64_t n, const nbs_matrix *m, char ***labels,
                        const char *path, nbs_error *err);

/* For messages: the other count matrices an .h5ad offers besides `layer` ("layers: counts,
 * spliced; raw/X"), or "" when there are none. */
void nbs_io_h5ad_other_matrices(const char *path, const char *layer, char *buf, size_t n);

/* 1 when the file starts with the gzip magic bytes. */
int nbs_io_is_gzip(const char *path);

/* HDF5 output files are built in memory (core driver, no backing store) and written to disk in
 * one go by nbs_h5_close_to_file: libhdf5 1.10 cannot close a file whose writes failed (a full
 * disk) and then crashes at exit, so libhdf5 itself never writes to disk. create makes tmp (an
 * empty file, so an unwritable folder fails here) and returns the in-memory file, or -1. */
hid_t nbs_h5_create_in_memory(const char *tmp, hid_t fcpl);
/* Closes f and, unless bad, writes its image to tmp; returns 0, -2 when there was no memory for
 * the image, or -1 if anything else failed (the caller then removes tmp). */
int nbs_h5_close_to_file(hid_t f, const char *tmp, int bad);

#endif
