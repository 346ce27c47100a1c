/* HDF5 input/output: 10x Cell Ranger HDF5 and AnnData .h5ad (DESIGN.md §6).
 * So far only the kind detection used by nbs_io_detect_format is implemented. */
#include <hdf5.h>

#include "nbsphere/error.h"
#include "nbsphere/io.h"

/* H5Lexists on a missing intermediate group is an error, not "no"; check one level at a time. */
static int h5_has(hid_t loc, const char *name) {
    return H5Lexists(loc, name, H5P_DEFAULT) > 0;
}

/* v2 layout: one group per genome holding indptr and data. */
static herr_t v2_visit(hid_t g, const char *name, const H5L_info_t *info, void *op) {
    (void)info;
    H5O_info_t oi;
    if (H5Oget_info_by_name(g, name, &oi, H5P_DEFAULT) < 0) return 0;
    if (oi.type != H5O_TYPE_GROUP) return 0;
    hid_t sub = H5Gopen2(g, name, H5P_DEFAULT);
    if (sub < 0) return 0;
    int ok = h5_has(sub, "indptr") && h5_has(sub, "data");
    H5Gclose(sub);
    if (ok) *(int *)op = 1;
    return ok; /* a positive value stops the iteration */
}

int nbs_io_h5_kind(const char *path, nbs_format *out, nbs_error *err) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    if (H5Fis_hdf5(path) <= 0)
        return nbs_error_set(err, NBS_ERR_INPUT,
                             "%s: not a readable HDF5 file (missing, truncated or corrupt)", path);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: cannot open as HDF5 (truncated or corrupt?)",
                             path);
    int rc = NBS_OK;
    if (h5_has(f, "matrix")) {
        *out = NBS_FMT_10X_H5;
    } else if (h5_has(f, "X") && (h5_has(f, "obs") || h5_has(f, "var"))) {
        *out = NBS_FMT_H5AD;
    } else {
        int v2 = 0;
        hsize_t idx = 0;
        H5Literate(f, H5_INDEX_NAME, H5_ITER_NATIVE, &idx, v2_visit, &v2);
        if (v2) {
            *out = NBS_FMT_10X_H5;
        } else {
            rc = nbs_error_set(err, NBS_ERR_INPUT,
                               "%s: HDF5 file is neither a 10x Cell Ranger file (group /matrix, or "
                               "genome groups with indptr/data) nor an AnnData .h5ad (X, obs, var "
                               "at the root); use --format or convert it", path);
        }
    }
    H5Fclose(f);
    return rc;
}
