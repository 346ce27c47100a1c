#include "nbsphere/checkpoint.h"

#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io_h5_internal.h"
#include "nbsphere/io.h"
#include "nbsphere/nn.h"
#include "nbsphere/pipeline.h"
#include "nbsphere/version.h"

#define FORMAT_NAME "nbsphere-model"
/* 2: batch norm's eps and momentum (attributes of /params) and the best epoch's batch-norm
 * statistics (/train/best_state). Version 1 files lack both and still load.
 * 3: /covariates, the covariates the model is conditioned on. Earlier files have none. */
#define FORMAT_VERSION 3
#define LOG_COLS 13

/* ---- writing ---- */

/* A fixed-length string attribute (the format name and version, which are ASCII). */
static int attr_string(hid_t loc, const char *name, const char *v) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(v) + 1);
    int st = nbs_h5_set_attr(loc, name, t, t, v);
    H5Tclose(t);
    return st;
}

static char *config_text(const nbs_config *c) {
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f) return NULL;
    nbs_pipeline_print_yaml(c, f);
    fclose(f);
    return buf;
}

/* n names of fixed arrays as a string dataset */
static int write_names(hid_t g, const char *dataset, const char (*names)[NBS_NAME_MAX], int n) {
    const char *p[NBS_MAX_CATEGORICAL];
    for (int i = 0; i < n; i++) p[i] = names[i];
    return nbs_h5_write_strs(g, dataset, (char *const *)p, (hsize_t)n, 0);
}

/* /covariates: attrs has_batch, n_categorical, n_continuous; categorical_names [n_categorical] and
 * categories/<k> [categories of covariate k]; continuous_names, continuous_mean, continuous_sd
 * [n_continuous] */
static int write_covariates(hid_t f, const nbs_covariates *cov) {
    const nbs_covariates none = {0};
    if (!cov) cov = &none;
    hid_t g = nbs_h5_new_group(f, "covariates");
    if (g < 0) return 1;
    int bad = nbs_h5_set_attr(g, "has_batch", H5T_NATIVE_INT, H5T_NATIVE_INT, &cov->has_batch) ||
              nbs_h5_set_attr(g, "n_categorical", H5T_NATIVE_INT, H5T_NATIVE_INT, &cov->n_categorical) ||
              nbs_h5_set_attr(g, "n_continuous", H5T_NATIVE_INT, H5T_NATIVE_INT, &cov->n_continuous);
    char names[NBS_MAX_CATEGORICAL][NBS_NAME_MAX];
    if (!bad && cov->n_categorical) {
        for (int k = 0; k < cov->n_categorical; k++) snprintf(names[k], NBS_NAME_MAX, "%s", cov->categorical[k].name);
        bad = write_names(g, "categorical_names", (const char (*)[NBS_NAME_MAX])names, cov->n_categorical);
        hid_t cg = bad ? -1 : nbs_h5_new_group(g, "categories");
        bad |= cg < 0;
        for (int k = 0; !bad && k < cov->n_categorical; k++) {
            char key[16];
            snprintf(key, sizeof key, "%d", k);
            bad = nbs_h5_write_strs(cg, key, cov->categorical[k].categories, (hsize_t)cov->categorical[k].n_categories, 0);
        }
        if (cg >= 0) H5Gclose(cg);
    }
    if (!bad && cov->n_continuous) {
        double mean[NBS_MAX_COVARIATES], sd[NBS_MAX_COVARIATES];
        for (int k = 0; k < cov->n_continuous; k++) {
            snprintf(names[k], NBS_NAME_MAX, "%s", cov->continuous[k].name);
            mean[k] = cov->continuous[k].mean;
            sd[k] = cov->continuous[k].sd;
        }
        hsize_t nc[1] = {(hsize_t)cov->n_continuous};
        bad = write_names(g, "continuous_names", (const char (*)[NBS_NAME_MAX])names, cov->n_continuous) ||
              nbs_h5_write_ds(g, "continuous_mean", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, nc, mean, 0) ||
              nbs_h5_write_ds(g, "continuous_sd", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, nc, sd, 0);
    }
    H5Gclose(g);
    return bad;
}

/* Returns 1 if anything failed; *nomem says whether an allocation of ours was the cause. */
static int write_all(hid_t f, nbs_model *m, const nbs_config *c, const nbs_covariates *cov, char *const *names,
                     char *const *ids, const nbs_train_state *s, const nbs_train_log *l, int *nomem) {
    int bad = 0, version = FORMAT_VERSION;
    bad |= attr_string(f, "format", FORMAT_NAME);
    bad |= nbs_h5_set_attr(f, "format_version", H5T_NATIVE_INT, H5T_NATIVE_INT, &version);
    bad |= attr_string(f, "nbsphere_version", NBS_VERSION);
    char *yaml = config_text(c);
    *nomem |= !yaml;
    bad |= !yaml || nbs_h5_write_scalar_str(f, "config_yaml", yaml, 0);
    free(yaml);

    const int64_t G = nbs_model_n_genes(m);
    hid_t g = nbs_h5_new_group(f, "genes");
    bad |= g < 0 || nbs_h5_write_strs(g, "names", names, (hsize_t)G, 0) ||
           nbs_h5_write_strs(g, "ids", ids ? ids : names, (hsize_t)G, 0);
    if (g >= 0) H5Gclose(g);
    bad |= write_covariates(f, cov);

    g = nbs_h5_new_group(f, "params");
    bad |= g < 0;
    double bn_eps, bn_momentum;
    nbs_model_batch_norm(m, &bn_eps, &bn_momentum);
    if (!bad) bad |= nbs_h5_set_attr(g, "batch_norm_eps", H5T_NATIVE_DOUBLE, H5T_NATIVE_DOUBLE, &bn_eps) ||
                     nbs_h5_set_attr(g, "batch_norm_momentum", H5T_NATIVE_DOUBLE, H5T_NATIVE_DOUBLE, &bn_momentum);
    for (int b = 0; !bad && b < nbs_model_n_blocks(m); b++) {
        int r, cc;
        const char *name = nbs_model_block_name(m, b);
        float *p = nbs_model_param(m, name, &r, &cc);
        hsize_t dims[2] = {(hsize_t)r, (hsize_t)cc};
        bad |= nbs_h5_write_ds(g, name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 2, dims, p, 0);
    }
    if (g >= 0) H5Gclose(g);

    float *pm, *pv;
    int64_t np, *t;
    nbs_model_flat(m, NULL, &pm, &pv, NULL, &np, NULL, &t);
    hsize_t dn[1] = {(hsize_t)np};
    g = nbs_h5_new_group(f, "optimizer");
    bad |= g < 0 || nbs_h5_write_ds(g, "m", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, dn, pm, 0) ||
           nbs_h5_write_ds(g, "v", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, dn, pv, 0) ||
           nbs_h5_set_attr(g, "step", H5T_NATIVE_INT64, H5T_NATIVE_INT64, t);
    if (g >= 0) H5Gclose(g);

    g = nbs_h5_new_group(f, "train");
    bad |= g < 0;
    if (!bad) {
        bad |= nbs_h5_set_attr(g, "epochs_done", H5T_NATIVE_INT, H5T_NATIVE_INT, &s->epochs_done);
        bad |= nbs_h5_set_attr(g, "step", H5T_NATIVE_INT64, H5T_NATIVE_INT64, &s->step);
        bad |= nbs_h5_set_attr(g, "best_val", H5T_NATIVE_DOUBLE, H5T_NATIVE_DOUBLE, &s->best_val);
        bad |= nbs_h5_set_attr(g, "best_epoch", H5T_NATIVE_INT, H5T_NATIVE_INT, &s->best_epoch);
        bad |= nbs_h5_set_attr(g, "bad_epochs", H5T_NATIVE_INT, H5T_NATIVE_INT, &s->bad_epochs);
        hsize_t rn[1] = {gsl_rng_size(s->rng)};
        bad |= nbs_h5_write_ds(g, "rng", H5T_STD_U8LE, H5T_NATIVE_UCHAR, 1, rn, gsl_rng_state(s->rng), 0);
        bad |= nbs_h5_write_ds(g, "best_params", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, dn, s->best_params, 0);
        hsize_t ds[1] = {(hsize_t)nbs_model_n_state(m)};
        bad |= nbs_h5_write_ds(g, "best_state", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, ds, s->best_state, 0);
    }
    if (g >= 0) H5Gclose(g);

    g = nbs_h5_new_group(f, "log");
    bad |= g < 0;
    if (!bad) {
        double *rows = calloc((size_t)l->n * LOG_COLS + 1, sizeof(double));
        *nomem |= !rows;
        bad |= !rows;
        for (int i = 0; rows && i < l->n; i++) {
            const nbs_epoch_record *r = &l->rec[i];
            double v[LOG_COLS] = {r->epoch, r->loss, r->recon, r->kl, r->val_elbo, r->val_recon,
                                  r->val_kl, r->beta, r->seconds, r->kappa_median, r->acceptance,
                                  r->sec_products, r->sec_likelihood};
            memcpy(rows + (int64_t)i * LOG_COLS, v, sizeof v);
        }
        hsize_t d1[2] = {(hsize_t)l->n, LOG_COLS}, d2[2] = {(hsize_t)l->n, (hsize_t)l->kl_terms};
        bad |= !rows || nbs_h5_write_ds(g, "records", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 2, d1, rows, 0) ||
               nbs_h5_write_ds(g, "kl", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 2, d2, l->kl_dims, 0);
        free(rows);
    }
    if (g >= 0) H5Gclose(g);
    return bad;
}

int nbs_checkpoint_save(const char *path, nbs_model *m, const nbs_config *c, const nbs_covariates *cov,
                        char *const *gene_names, char *const *gene_ids, const nbs_train_state *s,
                        const nbs_train_log *l, nbs_error *err) {
    char tmp[NBS_PATH_MAX];
    nbs_io_tmp_name(path, tmp);
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    H5Pset_obj_track_times(fcpl, 0);
    hid_t f;
    H5E_BEGIN_TRY { f = nbs_h5_create_in_memory(tmp, fcpl); }
    H5E_END_TRY;
    H5Pclose(fcpl);
    if (f < 0) return nbs_error_set(err, NBS_ERR_IO, "%s: cannot create the model file", tmp);
    int bad, nomem = 0;
    H5E_BEGIN_TRY {
        bad = write_all(f, m, c, cov, gene_names, gene_ids, s, l, &nomem);
        int closed = nbs_h5_close_to_file(f, tmp, bad);
        if (closed) bad = 1;
        if (closed == -2) nomem = 1;
    }
    H5E_END_TRY;
    /* out of memory is not the disk: the message must not send the user looking for space */
    const int st = !bad ? NBS_OK
                 : nomem ? nbs_error_set(err, NBS_ERR_NOMEM, "%s: out of memory while composing the model file; "
                                         "the previous file, if any, is unchanged", path)
                         : nbs_error_set(err, NBS_ERR_IO, "%s: writing the model failed (disk full?); the "
                                         "previous file, if any, is unchanged", path);
    return nbs_io_commit_or_discard(tmp, path, st, err);
}

/* ---- reading ---- */

/* Variable-length string memory type in the dataset's own character set (HDF5 does not
 * convert between ASCII and UTF-8). */
static hid_t vlen_string_type(hid_t d) {
    hid_t ft = H5Dget_type(d), t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    if (ft >= 0) {
        H5Tset_cset(t, H5Tget_cset(ft));
        H5Tclose(ft);
    }
    return t;
}

static int read_array(hid_t loc, const char *name, hid_t memtype, int rank, const hsize_t *want,
                      void *out, const char *path, nbs_error *err) {
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0) return nbs_error_set(err, NBS_ERR_INPUT, "%s: dataset '%s' is missing; is this an "
                                    "nbsphere model file?", path, name);
    hid_t sp = H5Dget_space(d);
    hsize_t dims[4] = {0};
    int r = H5Sget_simple_extent_ndims(sp);
    int ok = r == rank && r <= 4;
    if (ok) H5Sget_simple_extent_dims(sp, dims, NULL);
    for (int i = 0; ok && i < rank; i++) ok = dims[i] == want[i];
    H5Sclose(sp);
    if (!ok) {
        H5Dclose(d);
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: dataset '%s' has a shape that does not match "
                             "the model its configuration describes (file damaged or edited?)", path, name);
    }
    herr_t st = H5Dread(d, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, out);
    H5Dclose(d);
    return st < 0 ? nbs_error_set(err, NBS_ERR_INPUT, "%s: cannot read dataset '%s'", path, name) : NBS_OK;
}

static int read_attr(hid_t loc, const char *name, hid_t memtype, void *out, const char *path,
                     const char *grp, nbs_error *err) {
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    herr_t st = a < 0 ? -1 : H5Aread(a, memtype, out);
    if (a >= 0) H5Aclose(a);
    return st < 0 ? nbs_error_set(err, NBS_ERR_INPUT, "%s: attribute '%s' of '%s' is missing or unreadable",
                                  path, name, grp) : NBS_OK;
}

/* A 1-D string dataset grp/name of any length *n into a new array *out. */
static int read_strings(hid_t loc, const char *grp, const char *name, int64_t *n, char ***out, const char *path,
                        nbs_error *err) {
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0) return nbs_error_set(err, NBS_ERR_INPUT, "%s: dataset '%s/%s' is missing", path, grp, name);
    hid_t sp = H5Dget_space(d);
    hsize_t dims[1] = {0};
    int rank = H5Sget_simple_extent_ndims(sp);
    if (rank == 1) H5Sget_simple_extent_dims(sp, dims, NULL);
    H5Sclose(sp);
    hid_t t = vlen_string_type(d);
    char **s = rank == 1 ? nbs_calloc(dims[0] + 1, sizeof(char *), err) : NULL;
    int st = NBS_OK;
    if (rank != 1) st = nbs_error_set(err, NBS_ERR_INPUT, "%s: '%s/%s' is not a list", path, grp, name);
    else if (!s) st = (int)err->code;
    else if (H5Dread(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, s) < 0)
        st = nbs_error_set(err, NBS_ERR_INPUT, "%s: cannot read '%s/%s' as strings", path, grp, name);
    H5Tclose(t);
    H5Dclose(d);
    if (st) {
        free(s);
        return st;
    }
    /* HDF5 allocated the strings with its own allocator; copy them into ours */
    for (hsize_t i = 0; i < dims[0]; i++) {
        char *own = strdup(s[i] ? s[i] : "");
        H5free_memory(s[i]);
        s[i] = own;
    }
    *n = (int64_t)dims[0];
    *out = s;
    return NBS_OK;
}

static int read_config_text(hid_t f, const char *path, char **out, nbs_error *err) {
    hid_t d = H5Dopen2(f, "config_yaml", H5P_DEFAULT);
    if (d < 0) return nbs_error_set(err, NBS_ERR_INPUT, "%s: 'config_yaml' is missing; is this an "
                                    "nbsphere model file?", path);
    hid_t t = vlen_string_type(d);
    char *text = NULL;
    herr_t st = H5Dread(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, &text);
    H5Tclose(t);
    H5Dclose(d);
    if (st < 0 || !text) return nbs_error_set(err, NBS_ERR_INPUT, "%s: cannot read 'config_yaml'", path);
    *out = strdup(text);
    H5free_memory(text);
    return *out ? NBS_OK : nbs_error_set(err, NBS_ERR_NOMEM, "out of memory");
}

/* Opens a model file read-only, without HDF5's own error printout. */
static hid_t open_model(const char *path, nbs_error *err) {
    hid_t f;
    H5E_BEGIN_TRY { f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT); }
    H5E_END_TRY;
    if (f < 0) nbs_error_set(err, NBS_ERR_INPUT, "%s: cannot open as HDF5 (missing, truncated or not a "
                             "model file)", path);
    return f;
}

int nbs_checkpoint_config_text(const char *path, char **yaml, nbs_error *err) {
    hid_t f = open_model(path, err);
    if (f < 0) return err->code;
    int st;
    H5E_BEGIN_TRY { st = read_config_text(f, path, yaml, err); }
    H5E_END_TRY;
    H5Fclose(f);
    return st;
}

static int read_config(hid_t f, const char *path, nbs_config *c, nbs_error *err) {
    char *text = NULL;
    int rc = read_config_text(f, path, &text, err);
    if (rc) return rc;
    char name[NBS_PATH_MAX + 32];
    snprintf(name, sizeof name, "%s:config_yaml", path);
    nbs_pipeline p;
    rc = nbs_pipeline_load_string(text, name, NULL, NULL, 0, NBS_PIPELINE_STORED, &p, err);
    free(text);
    if (!rc) *c = p.config;
    return rc;
}

static void free_strings(char **s, int64_t n) {
    for (int64_t i = 0; s && i < n; i++) free(s[i]);
    free(s);
}

/* n names read into fixed arrays; each must be a non-empty name that fits. */
static int read_names(hid_t g, const char *dataset, int n, char (*names)[NBS_NAME_MAX], const char *path,
                      nbs_error *err) {
    char **s = NULL;
    int64_t len = 0;
    int st = read_strings(g, "covariates", dataset, &len, &s, path, err);
    if (!st && len != n)
        st = nbs_error_set(err, NBS_ERR_INPUT, "%s: covariates/%s holds %lld names, expected %d (file damaged or "
                           "edited?)", path, dataset, (long long)len, n);
    for (int i = 0; !st && i < n; i++) {
        if (!s[i] || !*s[i] || strlen(s[i]) >= NBS_NAME_MAX)
            st = nbs_error_set(err, NBS_ERR_INPUT, "%s: covariates/%s: name %d is empty or too long", path, dataset, i + 1);
        else snprintf(names[i], NBS_NAME_MAX, "%s", s[i]);
    }
    free_strings(s, len);
    return st;
}

/* /covariates (format 3; earlier files have none). Categories must be distinct and in byte
 * order, as training wrote them, since new data are encoded by searching them. */
static int read_covariates(hid_t f, const char *path, int version, nbs_covariates *cov, nbs_error *err) {
    memset(cov, 0, sizeof *cov);
    if (version < 3) return NBS_OK;
    hid_t g = H5Gopen2(f, "covariates", H5P_DEFAULT);
    if (g < 0) return nbs_error_set(err, NBS_ERR_INPUT, "%s: group 'covariates' is missing", path);
    int st = read_attr(g, "has_batch", H5T_NATIVE_INT, &cov->has_batch, path, "covariates", err);
    if (!st) st = read_attr(g, "n_categorical", H5T_NATIVE_INT, &cov->n_categorical, path, "covariates", err);
    if (!st) st = read_attr(g, "n_continuous", H5T_NATIVE_INT, &cov->n_continuous, path, "covariates", err);
    if (!st && (cov->n_categorical < 0 || cov->n_categorical > NBS_MAX_CATEGORICAL || cov->n_continuous < 0 ||
                cov->n_continuous > NBS_MAX_COVARIATES || (cov->has_batch && !cov->n_categorical)))
        st = nbs_error_set(err, NBS_ERR_INPUT, "%s: covariates: %d categorical and %d continuous are out of range "
                           "(file damaged or edited?)", path, cov->n_categorical, cov->n_continuous);
    const int n_cat = st ? 0 : cov->n_categorical, n_cont = st ? 0 : cov->n_continuous;
    char names[NBS_MAX_CATEGORICAL][NBS_NAME_MAX];
    if (!st && n_cat) st = read_names(g, "categorical_names", n_cat, names, path, err);
    hid_t cg = !st && n_cat ? H5Gopen2(g, "categories", H5P_DEFAULT) : -1;
    if (!st && n_cat && cg < 0) st = nbs_error_set(err, NBS_ERR_INPUT, "%s: group 'covariates/categories' is missing", path);
    for (int k = 0; !st && k < n_cat; k++) {
        nbs_categorical_covariate *c = &cov->categorical[k];
        snprintf(c->name, sizeof c->name, "%s", names[k]);
        char key[16];
        snprintf(key, sizeof key, "%d", k);
        int64_t len = 0;
        st = read_strings(cg, "covariates/categories", key, &len, &c->categories, path, err);
        if (!st && (len < 1 || len > INT32_MAX / NBS_MAX_CATEGORICAL))
            st = nbs_error_set(err, NBS_ERR_INPUT, "%s: covariates/categories/%d holds %lld categories", path, k,
                               (long long)len);
        if (!st) c->n_categories = (int)len;
        else if (c->categories) free_strings(c->categories, len), c->categories = NULL;
        for (int i = 1; !st && i < c->n_categories; i++)
            if (strcmp(c->categories[i - 1], c->categories[i]) >= 0)
                st = nbs_error_set(err, NBS_ERR_INPUT, "%s: covariates/categories/%d is not in byte order (file "
                                   "damaged or edited?)", path, k);
    }
    if (cg >= 0) H5Gclose(cg);
    if (!st && n_cont) st = read_names(g, "continuous_names", n_cont, names, path, err);
    double mean[NBS_MAX_COVARIATES], sd[NBS_MAX_COVARIATES];
    hsize_t nc[1] = {(hsize_t)n_cont};
    if (!st && n_cont) st = read_array(g, "continuous_mean", H5T_NATIVE_DOUBLE, 1, nc, mean, path, err);
    if (!st && n_cont) st = read_array(g, "continuous_sd", H5T_NATIVE_DOUBLE, 1, nc, sd, path, err);
    for (int k = 0; !st && k < n_cont; k++) {
        if (!isfinite(mean[k]) || !(sd[k] > 0) || !isfinite(sd[k]))
            st = nbs_error_set(err, NBS_ERR_INPUT, "%s: covariate '%s' has mean %g and sd %g (file damaged or "
                               "edited?)", path, names[k], mean[k], sd[k]);
        nbs_continuous_covariate *c = &cov->continuous[k];
        snprintf(c->name, sizeof c->name, "%s", names[k]);
        c->mean = mean[k];
        c->sd = sd[k];
    }
    H5Gclose(g);
    return st;
}

static int read_all(hid_t f, const char *path, nbs_checkpoint *c, nbs_error *err) {
    char fmt[64] = "";
    hid_t ft = H5Tcopy(H5T_C_S1);
    H5Tset_size(ft, sizeof fmt);
    int st = read_attr(f, "format", ft, fmt, path, "/", err);
    H5Tclose(ft);
    if (st || strcmp(fmt, FORMAT_NAME))
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: not an nbsphere model file (no format attribute "
                             "'%s'); pass the model.h5 a run wrote", path, FORMAT_NAME);
    int version = 0;
    if ((st = read_attr(f, "format_version", H5T_NATIVE_INT, &version, path, "/", err))) return st;
    if (version > FORMAT_VERSION)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: model format version %d is newer than this "
                             "nbsphere reads (%d); upgrade nbsphere", path, version, FORMAT_VERSION);
    if ((st = read_config(f, path, &c->config, err))) return st;
    hid_t g = H5Gopen2(f, "genes", H5P_DEFAULT);
    if (g < 0) return nbs_error_set(err, NBS_ERR_INPUT, "%s: group 'genes' is missing", path);
    int64_t n_ids = 0;
    st = read_strings(g, "genes", "names", &c->n_genes, &c->gene_names, path, err);
    if (!st) st = read_strings(g, "genes", "ids", &n_ids, &c->gene_ids, path, err);
    H5Gclose(g);
    if (!st && n_ids != c->n_genes)
        st = nbs_error_set(err, NBS_ERR_INPUT, "%s: genes/ids and genes/names differ in length", path);
    if (!st && (c->n_genes < 1 || c->n_genes > INT32_MAX))
        st = nbs_error_set(err, NBS_ERR_INPUT, "%s: the model has %lld genes", path, (long long)c->n_genes);
    if (!st) st = read_covariates(f, path, version, &c->covariates, err);
    if (st) return st;
    const nbs_covariate_layout layout = nbs_covariates_layout(&c->covariates);
    if (!(c->model = nbs_model_new(&c->config.model, (int)c->n_genes, &layout, NULL, err))) return err->code;
    nbs_model *m = c->model;

    if ((g = H5Gopen2(f, "params", H5P_DEFAULT)) < 0)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: group 'params' is missing", path);
    if (version >= 2) {
        double bn_eps, bn_momentum;
        st = read_attr(g, "batch_norm_eps", H5T_NATIVE_DOUBLE, &bn_eps, path, "params", err);
        if (!st) st = read_attr(g, "batch_norm_momentum", H5T_NATIVE_DOUBLE, &bn_momentum, path, "params", err);
        if (!st && !(bn_eps > 0 && bn_eps < 1 && bn_momentum >= 0 && bn_momentum <= 1))
            st = nbs_error_set(err, NBS_ERR_INPUT, "%s: batch-norm eps %g or momentum %g is out of range "
                               "(file damaged or edited?)", path, bn_eps, bn_momentum);
        if (!st) nbs_model_set_batch_norm(m, bn_eps, bn_momentum);
    } else if (c->config.model.norm == NBS_NORM_BATCH) {
        nbs_warn("%s: a format-1 model file does not record its batch-norm constants; read with eps %g "
                 "and momentum %g, which nbsphere has used since 2026-11-28 (earlier builds: 1e-5 and 0.1)",
                 path, NBS_BN_EPS, NBS_BN_MOMENTUM);
    }
    for (int b = 0; !st && b < nbs_model_n_blocks(m); b++) {
        int r, cc;
        const char *name = nbs_model_block_name(m, b);
        float *p = nbs_model_param(m, name, &r, &cc);
        hsize_t dims[2] = {(hsize_t)r, (hsize_t)cc};
        st = read_array(g, name, H5T_NATIVE_FLOAT, 2, dims, p, path, err);
    }
    H5Gclose(g);
    if (st) return st;

    float *pm, *pv;
    int64_t np, *t;
    nbs_model_flat(m, NULL, &pm, &pv, NULL, &np, NULL, &t);
    hsize_t dn[1] = {(hsize_t)np};
    if ((g = H5Gopen2(f, "optimizer", H5P_DEFAULT)) < 0)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: group 'optimizer' is missing", path);
    st = read_array(g, "m", H5T_NATIVE_FLOAT, 1, dn, pm, path, err);
    if (!st) st = read_array(g, "v", H5T_NATIVE_FLOAT, 1, dn, pv, path, err);
    if (!st) st = read_attr(g, "step", H5T_NATIVE_INT64, t, path, "optimizer", err);
    H5Gclose(g);
    if (st) return st;

    if ((st = nbs_train_state_init(&c->state, m, c->config.train.seed, err))) return st;
    nbs_train_state *s = &c->state;
    if ((g = H5Gopen2(f, "train", H5P_DEFAULT)) < 0)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: group 'train' is missing", path);
    st = read_attr(g, "epochs_done", H5T_NATIVE_INT, &s->epochs_done, path, "train", err);
    if (!st) st = read_attr(g, "step", H5T_NATIVE_INT64, &s->step, path, "train", err);
    if (!st) st = read_attr(g, "best_val", H5T_NATIVE_DOUBLE, &s->best_val, path, "train", err);
    if (!st) st = read_attr(g, "best_epoch", H5T_NATIVE_INT, &s->best_epoch, path, "train", err);
    if (!st) st = read_attr(g, "bad_epochs", H5T_NATIVE_INT, &s->bad_epochs, path, "train", err);
    hsize_t rn[1] = {gsl_rng_size(s->rng)};
    if (!st) st = read_array(g, "rng", H5T_NATIVE_UCHAR, 1, rn, gsl_rng_state(s->rng), path, err);
    if (!st) st = read_array(g, "best_params", H5T_NATIVE_FLOAT, 1, dn, s->best_params, path, err);
    hsize_t ds[1] = {(hsize_t)nbs_model_n_state(m)};
    float *state;
    nbs_model_flat(m, NULL, NULL, NULL, &state, NULL, NULL, NULL);
    if (!st && version >= 2) st = read_array(g, "best_state", H5T_NATIVE_FLOAT, 1, ds, s->best_state, path, err);
    else if (!st) memcpy(s->best_state, state, sizeof(float) * ds[0]); /* format 1 kept none: the latest */
    H5Gclose(g);
    if (st) return st;

    if ((g = H5Gopen2(f, "log", H5P_DEFAULT)) < 0)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: group 'log' is missing", path);
    const int K = nbs_model_kl_terms(m); /* every stage's and the discrete latent's */
    c->log.kl_terms = K;
    const int n = s->epochs_done > 0 ? s->epochs_done : 0;
    double *rows = nbs_calloc((size_t)n * LOG_COLS + 1, sizeof(double), err);
    double *kl = rows ? nbs_calloc((size_t)n * K + 1, sizeof(double), err) : NULL;
    hsize_t d1[2] = {(hsize_t)n, LOG_COLS}, d2[2] = {(hsize_t)n, (hsize_t)K};
    st = !kl ? (int)err->code : read_array(g, "records", H5T_NATIVE_DOUBLE, 2, d1, rows, path, err);
    if (!st) st = read_array(g, "kl", H5T_NATIVE_DOUBLE, 2, d2, kl, path, err);
    for (int i = 0; !st && i < n; i++) {
        const double *v = rows + (int64_t)i * LOG_COLS;
        nbs_epoch_record r = {(int)v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12]};
        st = nbs_train_log_append(&c->log, &r, kl + (int64_t)i * K, err);
    }
    free(rows);
    free(kl);
    H5Gclose(g);
    return st;
}

int nbs_checkpoint_load(const char *path, nbs_checkpoint *out, nbs_error *err) {
    memset(out, 0, sizeof *out);
    hid_t f = open_model(path, err);
    if (f < 0) return err->code;
    int st;
    H5E_BEGIN_TRY { st = read_all(f, path, out, err); }
    H5E_END_TRY;
    H5Fclose(f);
    if (st) nbs_checkpoint_free(out);
    return st;
}

void nbs_checkpoint_free(nbs_checkpoint *c) {
    nbs_model_free(c->model);
    nbs_covariates_free(&c->covariates);
    for (int64_t i = 0; c->gene_names && i < c->n_genes; i++) free(c->gene_names[i]);
    for (int64_t i = 0; c->gene_ids && i < c->n_genes; i++) free(c->gene_ids[i]);
    free(c->gene_names);
    free(c->gene_ids);
    if (c->state.rng || c->state.best_params) nbs_train_state_free(&c->state);
    nbs_train_log_free(&c->log);
    memset(c, 0, sizeof *c);
}
