/* HDF5 helpers shared by the 10x (io_h5.c), h5ad (io_h5ad.c) readers and the writers
 * (io_write.c). Not part of the public API. */
#ifndef NBSPHERE_IO_H5_INTERNAL_H
#define NBSPHERE_IO_H5_INTERNAL_H

#include <hdf5.h>
#include <stdint.h>

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
/* Closes f and, unless bad, writes its image to tmp; returns 0, or -1 if anything failed (the
 * caller then removes tmp). */
int nbs_h5_close_to_file(hid_t f, const char *tmp, int bad);

#endif
