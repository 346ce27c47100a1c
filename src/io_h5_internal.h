/* HDF5 helpers shared by the 10x (io_h5.c), h5ad (io_h5ad.c) and loom (io_loom.c) readers and
 * the writers (io_write.c, checkpoint.c, simulate.c; building blocks in io_h5_write.c). Not part
 * of the public API. */
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

/* The rows of an anndata dataframe group (obs, var): the length of its index dataset, whose
 * name (the _index attribute, default "_index") goes to index; -1 when there is none. */
int64_t nbs_h5_dataframe_rows(hid_t df, char *index, size_t n);

/* For messages: the other count matrices an .h5ad offers besides `layer` ("layers: counts,
 * spliced; raw/X"), or "" when there are none. */
void nbs_io_h5ad_other_matrices(const char *path, const char *layer, char *buf, size_t n);

/* HDF5 output files are built in memory (core driver, no backing store) and written to disk in
 * one go by nbs_h5_close_to_file: libhdf5 1.10 cannot close a file whose writes failed (a full
 * disk) and then crashes at exit, so libhdf5 itself never writes to disk. create makes tmp (an
 * empty file, so an unwritable folder fails here) and returns the in-memory file, or -1. */
hid_t nbs_h5_create_in_memory(const char *tmp, hid_t fcpl);
/* Closes f and, unless bad, writes its image to tmp; returns 0, -2 when there was no memory for
 * the image, or -1 if anything else failed (the caller then removes tmp). */
int nbs_h5_close_to_file(hid_t f, const char *tmp, int bad);


/* ---- writing (io_h5_write.c) ----
 * Every object is created without time stamps. The int functions return 0, or -1 when HDF5
 * failed. */

/* Dataset creation properties; gzip: level-4 deflate in chunks of at most 65536 elements (rank 1
 * or 2, and not for an empty dataset, which stays contiguous). */
hid_t nbs_h5_dcpl(int rank, const hsize_t *dims, int gzip);
hid_t nbs_h5_new_group(hid_t loc, const char *name);
/* Variable-length UTF-8 strings, as h5py and anndata write them. */
hid_t nbs_h5_vstr_type(void);
/* A scalar attribute (v in mtype, stored as ftype), replacing one of the same name; the same
 * for a string. */
int nbs_h5_set_attr(hid_t obj, const char *name, hid_t ftype, hid_t mtype, const void *v);
int nbs_h5_set_attr_str(hid_t obj, const char *name, const char *value);
/* A 1-D string attribute (an empty float64 array when n == 0, as h5py writes an empty list). */
int nbs_h5_set_attr_strs(hid_t obj, const char *name, const char *const *v, hsize_t n);
/* anndata's encoding-type and encoding-version attributes. */
int nbs_h5_set_encoding(hid_t obj, const char *type, const char *version);
/* A dataset of rank 1 or 2 with the values v in mtype, stored as ftype (v NULL: created, to be
 * written a block of rows at a time). */
int nbs_h5_write_ds(hid_t loc, const char *name, hid_t ftype, hid_t mtype, int rank, const hsize_t *dims,
                    const void *v, int gzip);
/* The same with anndata's "array" encoding. */
int nbs_h5_write_array(hid_t loc, const char *name, hid_t ftype, hid_t mtype, int rank, const hsize_t *dims,
                       const void *v, int gzip);
/* n strings; enc adds anndata's "string-array" encoding (an index or a text column). */
int nbs_h5_write_strs(hid_t loc, const char *name, char *const *s, hsize_t n, int enc);
/* A scalar string dataset; enc adds anndata's "string" encoding. */
int nbs_h5_write_scalar_str(hid_t loc, const char *name, const char *value, int enc);
/* Adds to a dataframe's column-order the names it does not list yet (anndata ignores a column
 * that is not listed); 0, -1 when HDF5 failed, -2 when out of memory. */
int nbs_h5_append_column_order(hid_t df, const char *const *names, int n);

#endif
