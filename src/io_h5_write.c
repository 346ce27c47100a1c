/* The HDF5 writers' building blocks (io_write.c, checkpoint.c, simulate.c): objects without
 * modification times, so the same data give the same bytes, and anndata's encodings. */
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>

#include "io_h5_internal.h"

hid_t nbs_h5_dcpl(int rank, const hsize_t *dims, int gzip) {
    hid_t p = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_obj_track_times(p, 0);
    /* an empty dataset has nothing to compress: it stays contiguous */
    if (gzip && rank >= 1 && rank <= 2 && dims[0] > 0 && (rank < 2 || dims[1] > 0)) {
        hsize_t chunk[2] = {dims[0] < 65536 ? dims[0] : 65536, rank > 1 ? dims[1] : 1};
        if (rank > 1 && chunk[0] * chunk[1] > 65536) chunk[0] = 65536 / chunk[1] ? 65536 / chunk[1] : 1;
        H5Pset_chunk(p, rank, chunk);
        H5Pset_deflate(p, 4);
    }
    return p;
}

hid_t nbs_h5_new_group(hid_t loc, const char *name) {
    hid_t p = H5Pcreate(H5P_GROUP_CREATE);
    H5Pset_obj_track_times(p, 0);
    hid_t g = H5Gcreate2(loc, name, H5P_DEFAULT, p, H5P_DEFAULT);
    H5Pclose(p);
    return g;
}

hid_t nbs_h5_vstr_type(void) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    return t;
}

int nbs_h5_set_attr(hid_t obj, const char *name, hid_t ftype, hid_t mtype, const void *v) {
    hid_t sp = H5Screate(H5S_SCALAR);
    if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
    hid_t a = H5Acreate2(obj, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT);
    int bad = a < 0 || H5Awrite(a, mtype, v) < 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    return bad ? -1 : 0;
}

int nbs_h5_set_attr_str(hid_t obj, const char *name, const char *value) {
    hid_t t = nbs_h5_vstr_type();
    int bad = nbs_h5_set_attr(obj, name, t, t, &value);
    H5Tclose(t);
    return bad;
}

int nbs_h5_set_encoding(hid_t obj, const char *type, const char *version) {
    return nbs_h5_set_attr_str(obj, "encoding-type", type) || nbs_h5_set_attr_str(obj, "encoding-version", version);
}

/* As h5py writes a list of names: strings, or an empty float64 array when there are none. */
int nbs_h5_set_attr_strs(hid_t obj, const char *name, const char *const *v, hsize_t n) {
    if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
    hid_t t = n ? nbs_h5_vstr_type() : H5Tcopy(H5T_IEEE_F64LE), sp = H5Screate_simple(1, &n, NULL);
    hid_t a = H5Acreate2(obj, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
    int bad = a < 0 || (n && H5Awrite(a, t, v) < 0);
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    H5Tclose(t);
    return bad ? -1 : 0;
}

int nbs_h5_write_ds(hid_t loc, const char *name, hid_t ftype, hid_t mtype, int rank, const hsize_t *dims,
                    const void *v, int gzip) {
    hid_t sp = H5Screate_simple(rank, dims, NULL), p = nbs_h5_dcpl(rank, dims, gzip);
    hid_t d = H5Dcreate2(loc, name, ftype, sp, H5P_DEFAULT, p, H5P_DEFAULT);
    hsize_t total = dims[0] * (rank > 1 ? dims[1] : 1);
    int bad = d < 0 || (total && v && H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) < 0);
    if (d >= 0) H5Dclose(d);
    H5Pclose(p);
    H5Sclose(sp);
    return bad ? -1 : 0;
}

int nbs_h5_write_strs(hid_t loc, const char *name, char *const *s, hsize_t n, int enc) {
    hid_t t = nbs_h5_vstr_type();
    int bad = nbs_h5_write_ds(loc, name, t, t, 1, &n, s, 0);
    H5Tclose(t);
    if (!bad && enc) {
        hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
        bad = nbs_h5_set_encoding(d, "string-array", "0.2.0");
        H5Dclose(d);
    }
    return bad;
}

int nbs_h5_write_scalar_str(hid_t loc, const char *name, const char *value, int enc) {
    hid_t t = nbs_h5_vstr_type(), sp = H5Screate(H5S_SCALAR), p = nbs_h5_dcpl(0, NULL, 0);
    hid_t d = H5Dcreate2(loc, name, t, sp, H5P_DEFAULT, p, H5P_DEFAULT);
    int bad = d < 0 || H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, &value) < 0 ||
              (enc && nbs_h5_set_encoding(d, "string", "0.2.0"));
    if (d >= 0) H5Dclose(d);
    H5Pclose(p);
    H5Sclose(sp);
    H5Tclose(t);
    return bad ? -1 : 0;
}

int nbs_h5_write_array(hid_t loc, const char *name, hid_t ftype, hid_t mtype, int rank, const hsize_t *dims,
                       const void *v, int gzip) {
    if (nbs_h5_write_ds(loc, name, ftype, mtype, rank, dims, v, gzip)) return -1;
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    int bad = nbs_h5_set_encoding(d, "array", "0.2.0");
    H5Dclose(d);
    return bad;
}

int nbs_h5_append_column_order(hid_t df, const char *const *names, int n) {
    char **old = NULL;
    hssize_t n_old = 0;
    int rc = 0;
    hid_t st = nbs_h5_vstr_type();
    if (H5Aexists(df, "column-order") > 0) {
        hid_t a = H5Aopen(df, "column-order", H5P_DEFAULT);
        hid_t t = H5Aget_type(a), sp = H5Aget_space(a);
        n_old = H5Sget_simple_extent_npoints(sp);
        if (n_old > 0 && H5Tget_class(t) == H5T_STRING) { /* else h5py's empty float64 array */
            old = calloc((size_t)n_old, sizeof *old);
            rc = !old ? -2 : H5Aread(a, st, old) < 0 ? -1 : 0;
        } else {
            n_old = 0;
        }
        H5Sclose(sp);
        H5Tclose(t);
        H5Aclose(a);
    }
    const char **all = rc ? NULL : calloc((size_t)n_old + (size_t)n, sizeof *all);
    if (!rc && !all) rc = -2;
    if (all) {
        hsize_t m = 0;
        for (hssize_t i = 0; i < n_old; i++) all[m++] = old[i];
        for (int j = 0; j < n; j++) {
            int listed = 0;
            for (hssize_t i = 0; i < n_old; i++) listed |= old[i] && !strcmp(old[i], names[j]);
            if (!listed) all[m++] = names[j];
        }
        if (m > (hsize_t)n_old) rc = nbs_h5_set_attr_strs(df, "column-order", all, m);
        free(all);
    }
    if (old) {
        hsize_t no = (hsize_t)n_old;
        hid_t sp = H5Screate_simple(1, &no, NULL);
        H5Dvlen_reclaim(st, sp, H5P_DEFAULT, old);
        H5Sclose(sp);
        free(old);
    }
    H5Tclose(st);
    return rc;
}
