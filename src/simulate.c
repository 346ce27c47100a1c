/* The simulator behind `nbsphere simulate` (see simulate.h for the model). Gene programmes:
 * each gene has a base log-share drawn wide (so most genes are rare and ~90 % zeros at a
 * depth of ~1500 UMIs), a fraction follows a shared sigmoid trend in pseudotime, and on each
 * branch a different random fraction rises or falls with a smooth ramp that starts at zero at
 * the split, so the trajectory is continuous at the branch point. Batches, when asked for, are
 * drawn only after all of that, so a single batch leaves every draw as it was. */
#include "nbsphere/simulate.h"

#include <gsl/gsl_randist.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io_h5_internal.h"
#include "nbsphere/io.h"

void nbs_sim_defaults(nbs_sim_config *c) {
    c->n_cells = 2000;
    c->n_genes = 1000;
    c->n_branches = 3;
    c->split_time = 0.3;
    c->depth = 600;
    c->depth_sdlog = 0.35;
    c->theta = 2.0;
    c->trend_fraction = 0.3;
    c->branch_fraction = 0.2;
    c->n_batches = 1;
    c->batch_sdlog = 0.5;
    c->batch_depth_sdlog = 0.3;
    c->shape = NBS_SIM_TREE;
}

void nbs_sim_long_branches(nbs_sim_config *c) {
    c->shape = NBS_SIM_LONG_BRANCHES;
    c->n_branches = 2;
    c->split_time = 0.1;
    c->branch_fraction = 0.5;
}

unsigned int nbs_sim_nb(gsl_rng *rng, double mean, double theta) {
    if (mean <= 0) return 0;
    double lambda = gsl_ran_gamma(rng, theta, mean / theta);
    return gsl_ran_poisson(rng, lambda);
}

void nbs_sim_branch_name(int branch, char *buf, size_t n) {
    if (branch == 0) snprintf(buf, n, "root");
    else snprintf(buf, n, "branch%d", branch);
}

void nbs_sim_batch_name(int batch, char *buf, size_t n) { snprintf(buf, n, "batch%d", batch + 1); }

static double smoothstep(double x) {
    if (x <= 0) return 0;
    if (x >= 1) return 1;
    return x * x * (3 - 2 * x);
}

static int check_config(const nbs_sim_config *c, nbs_error *err) {
    if (c->n_cells < 1 || c->n_cells > 10000000 || c->n_genes < 2 || c->n_genes > 1000000)
        return nbs_error_set(err, NBS_ERR_USAGE,
                             "simulate: %lld cells x %lld genes; expected 1 to 10^7 cells and 2 to "
                             "10^6 genes", (long long)c->n_cells, (long long)c->n_genes);
    if ((double)c->n_cells * (double)c->n_genes > 4e9)
        return nbs_error_set(err, NBS_ERR_USAGE,
                             "simulate: %lld x %lld entries is too many; expected at most 4e9",
                             (long long)c->n_cells, (long long)c->n_genes);
    if (c->n_branches < 1 || c->n_branches > 100)
        return nbs_error_set(err, NBS_ERR_USAGE, "simulate: %d branches; expected 1 to 100", c->n_branches);
    if (c->n_batches < 1 || c->n_batches > 100 || c->n_batches > c->n_cells)
        return nbs_error_set(err, NBS_ERR_USAGE,
                             "simulate: %d batches for %lld cells; expected 1 to 100 and at most one "
                             "batch per cell", c->n_batches, (long long)c->n_cells);
    if (!(c->batch_sdlog >= 0) || !(c->batch_depth_sdlog >= 0))
        return nbs_error_set(err, NBS_ERR_USAGE, "simulate: expected batch sdlogs >= 0");
    if (!(c->split_time > 0 && c->split_time < 1) || !(c->depth > 0) || !(c->theta > 0) ||
        !(c->depth_sdlog >= 0))
        return nbs_error_set(err, NBS_ERR_USAGE,
                             "simulate: expected 0 < split_time < 1, depth > 0, theta > 0, sdlog >= 0");
    return NBS_OK;
}

/* Per-gene programme parameters. */
typedef struct nbs_sim_programme {
    double *base, *trend_amp, *trend_mid, *branch_amp, *branch_mid;
} programme;

static void programme_free(programme *p) {
    if (!p) return;
    free(p->base);
    free(p->trend_amp);
    free(p->trend_mid);
    free(p->branch_amp);
    free(p->branch_mid);
    free(p);
}

void nbs_sim_data_free(nbs_sim_data *d) {
    if (!d) return;
    nbs_matrix_free(d->counts);
    free(d->branch);
    free(d->pseudotime);
    free(d->library);
    free(d->theta);
    free(d->batch);
    free(d->batch_log_gene);
    free(d->batch_log_depth);
    programme_free(d->programme);
    memset(d, 0, sizeof *d);
}

static void draw_programme(const nbs_sim_config *c, gsl_rng *rng, programme *p, double *theta) {
    int64_t G = c->n_genes;
    int B = c->n_branches;
    for (int64_t g = 0; g < G; g++) {
        p->base[g] = gsl_ran_gaussian(rng, 2.0);
        theta[g] = c->theta * exp(gsl_ran_gaussian(rng, 0.5));
        int trend = gsl_rng_uniform(rng) < c->trend_fraction;
        p->trend_amp[g] = trend ? gsl_ran_gaussian(rng, 1.5) : 0;
        p->trend_mid[g] = gsl_rng_uniform(rng);
        for (int b = 0; b < B; b++) {
            int on = gsl_rng_uniform(rng) < c->branch_fraction;
            /* mostly up-regulated: branch markers, as in real lineage commitment */
            double a = on ? (1.0 + 1.5 * gsl_rng_uniform(rng)) * (gsl_rng_uniform(rng) < 0.75 ? 1 : -1) : 0;
            p->branch_amp[b * G + g] = a;
            p->branch_mid[b * G + g] = 0.2 + 0.6 * gsl_rng_uniform(rng);
        }
    }
}

/* log rho of one cell (normalised so the shares sum to 1); batch_gene[G] is its batch's log
 * factors, or NULL for none (then nothing is added, so one batch keeps the exact values). */
static void cell_log_rho(const nbs_sim_config *c, const programme *p, int branch, double t,
                         const double *batch_gene, double *out) {
    int64_t G = c->n_genes;
    double s = (t - c->split_time) / (1 - c->split_time);
    double maxv = -INFINITY;
    for (int64_t g = 0; g < G; g++) {
        double v = p->base[g] + p->trend_amp[g] / (1 + exp(-(t - p->trend_mid[g]) / 0.1));
        if (branch > 0) {
            int64_t k = (int64_t)(branch - 1) * G + g;
            if (c->shape == NBS_SIM_TREE) {
                v += p->branch_amp[k] * smoothstep(s / p->branch_mid[k]);
            } else {
                /* onsets spread along the branch (branch_mid's [0.2, 0.8] mapped to [0, 1 - width]):
                 * expression changes all the way to the tip, which has every gene of its branch on */
                const double onset = (p->branch_mid[k] - 0.2) / 0.6 * (1 - NBS_SIM_RAMP_WIDTH);
                v += p->branch_amp[k] * smoothstep((s - onset) / NBS_SIM_RAMP_WIDTH);
            }
        }
        if (batch_gene) v += batch_gene[g];
        out[g] = v;
        if (v > maxv) maxv = v;
    }
    double sum = 0;
    for (int64_t g = 0; g < G; g++) sum += exp(out[g] - maxv);
    double lz = maxv + log(sum);
    for (int64_t g = 0; g < G; g++) out[g] -= lz;
}

static int fill_names(nbs_matrix *m, nbs_error *err) {
    for (int64_t i = 0; i < m->n_cells; i++) {
        char b[32];
        snprintf(b, sizeof b, "SIM%07lld-1", (long long)(i + 1));
        if (!(m->barcodes[i] = nbs_strdup(b, err))) return err->code;
    }
    for (int64_t g = 0; g < m->n_genes; g++) {
        char id[32], name[32];
        snprintf(id, sizeof id, "SIMG%06lld", (long long)(g + 1));
        snprintf(name, sizeof name, "Gene%lld", (long long)(g + 1));
        if (!(m->gene_ids[g] = nbs_strdup(id, err)) || !(m->gene_names[g] = nbs_strdup(name, err)))
            return err->code;
    }
    return NBS_OK;
}

/* Counts of all cells as CSR: rows are drawn one at a time and appended. */
static int draw_counts(const nbs_sim_config *c, gsl_rng *rng, nbs_sim_data *d, nbs_error *err) {
    int64_t N = c->n_cells, G = c->n_genes, cap = N * 16 + 1024, nnz = 0;
    int32_t *idx = nbs_malloc((size_t)cap * sizeof *idx, err);
    float *val = nbs_malloc((size_t)cap * sizeof *val, err);
    int64_t *indptr = nbs_calloc((size_t)N + 1, sizeof *indptr, err);
    double *lr = nbs_malloc((size_t)G * sizeof *lr, err);
    int st = (idx && val && indptr && lr) ? NBS_OK : NBS_ERR_NOMEM;
    for (int64_t i = 0; i < N && !st; i++) {
        nbs_sim_cell_log_rho(d, i, lr);
        for (int64_t g = 0; g < G; g++) {
            unsigned x = nbs_sim_nb(rng, d->library[i] * exp(lr[g]), d->theta[g]);
            if (!x) continue;
            if (nnz == cap) {
                cap *= 2;
                int32_t *ni = realloc(idx, (size_t)cap * sizeof *idx);
                if (ni) idx = ni;
                float *nv = ni ? realloc(val, (size_t)cap * sizeof *val) : NULL;
                if (nv) val = nv;
                if (!ni || !nv) {
                    st = nbs_error_set(err, NBS_ERR_NOMEM, "simulate: out of memory at cell %lld",
                                       (long long)i + 1);
                    break;
                }
            }
            idx[nnz] = (int32_t)g;
            val[nnz++] = (float)x;
        }
        indptr[i + 1] = nnz;
    }
    if (!st && !(d->counts = nbs_matrix_new(N, G, nnz, err))) st = err->code;
    if (!st) {
        memcpy(d->counts->indptr, indptr, (size_t)(N + 1) * sizeof *indptr);
        memcpy(d->counts->indices, idx, (size_t)nnz * sizeof *idx);
        memcpy(d->counts->data, val, (size_t)nnz * sizeof *val);
        d->counts->values_are_integer = 1;
        st = fill_names(d->counts, err);
    }
    free(idx);
    free(val);
    free(indptr);
    free(lr);
    return st;
}

void nbs_sim_cell_log_rho(const nbs_sim_data *d, int64_t cell, double *out) {
    const double *bg = d->batch_log_gene ? d->batch_log_gene + (int64_t)d->batch[cell] * d->config.n_genes : NULL;
    cell_log_rho(&d->config, d->programme, d->branch[cell], d->pseudotime[cell], bg, out);
}

int nbs_simulate(const nbs_sim_config *c, gsl_rng *rng, nbs_sim_data *d, nbs_error *err) {
    memset(d, 0, sizeof *d);
    int st = check_config(c, err);
    if (st) return st;
    d->config = *c;
    int64_t N = c->n_cells, G = c->n_genes;
    int B = c->n_branches;
    programme *p = d->programme = nbs_calloc(1, sizeof *p, err);
    if (!p) return NBS_ERR_NOMEM;
    p->base = nbs_malloc((size_t)G * sizeof(double), err);
    p->trend_amp = nbs_malloc((size_t)G * sizeof(double), err);
    p->trend_mid = nbs_malloc((size_t)G * sizeof(double), err);
    p->branch_amp = nbs_malloc((size_t)(G * B) * sizeof(double), err);
    p->branch_mid = nbs_malloc((size_t)(G * B) * sizeof(double), err);
    d->branch = nbs_malloc((size_t)N * sizeof *d->branch, err);
    d->pseudotime = nbs_malloc((size_t)N * sizeof(double), err);
    d->library = nbs_malloc((size_t)N * sizeof(double), err);
    d->theta = nbs_malloc((size_t)G * sizeof(double), err);
    d->batch = nbs_calloc((size_t)N, sizeof *d->batch, err);
    const int K = c->n_batches;
    if (K > 1) {
        d->batch_log_gene = nbs_malloc((size_t)(K * G) * sizeof(double), err);
        d->batch_log_depth = nbs_malloc((size_t)K * sizeof(double), err);
    }
    if (!p->base || !p->trend_amp || !p->trend_mid || !p->branch_amp || !p->branch_mid ||
        !d->branch || !d->pseudotime || !d->library || !d->theta || !d->batch ||
        (K > 1 && (!d->batch_log_gene || !d->batch_log_depth)))
        st = NBS_ERR_NOMEM;
    if (!st) {
        draw_programme(c, rng, p, d->theta);
        for (int64_t i = 0; i < N; i++) {
            /* pseudotime uniform on [0, 1]; past the split a cell picks a branch uniformly */
            double t = gsl_rng_uniform(rng);
            int b = t < c->split_time ? 0 : 1 + (int)gsl_rng_uniform_int(rng, (unsigned long)B);
            d->pseudotime[i] = t;
            d->branch[i] = b;
            d->library[i] = c->depth * exp(gsl_ran_gaussian(rng, c->depth_sdlog));
        }
        if (K > 1) {
            /* each batch: log-normal factors on the genes' means, a shift of the log library
             * size; each cell: a batch uniformly at random, independent of its branch */
            for (int64_t k = 0; k < K * G; k++) d->batch_log_gene[k] = gsl_ran_gaussian(rng, c->batch_sdlog);
            for (int b = 0; b < K; b++) d->batch_log_depth[b] = gsl_ran_gaussian(rng, c->batch_depth_sdlog);
            for (int64_t i = 0; i < N; i++) {
                d->batch[i] = (int)gsl_rng_uniform_int(rng, (unsigned long)K);
                d->library[i] *= exp(d->batch_log_depth[d->batch[i]]);
            }
        }
        st = draw_counts(c, rng, d, err);
    }
    if (st) nbs_sim_data_free(d);
    return st;
}

int nbs_sim_write_labels(const nbs_sim_data *d, const char *dir, nbs_error *err) {
    char path[NBS_PATH_MAX], tmp[NBS_PATH_MAX];
    snprintf(path, sizeof path, "%s/cell_labels.tsv", dir);
    FILE *f;
    int st = nbs_io_atomic_open(path, tmp, &f, err);
    if (st) return st;
    const int batches = d->config.n_batches > 1;
    fprintf(f, "barcode\tbranch\tpseudotime%s\n", batches ? "\tbatch" : "");
    for (int64_t i = 0; i < d->counts->n_cells; i++) {
        char b[32], k[32];
        nbs_sim_branch_name(d->branch[i], b, sizeof b);
        fprintf(f, "%s\t%s\t%.6f", d->counts->barcodes[i], b, d->pseudotime[i]);
        if (batches) {
            nbs_sim_batch_name(d->batch[i], k, sizeof k);
            fprintf(f, "\t%s", k);
        }
        fputc('\n', f);
    }
    return nbs_io_atomic_close(f, tmp, path, err);
}

/* ---- h5ad obs columns ---- */

/* obs/<name> as a categorical: n_categories names from name_of, per-cell codes[n] (int8, so at
 * most 127 categories; the simulator allows 101 branch names and 100 batches). */
static int add_categorical_column(hid_t obs, const char *name, int n_categories,
                                  void (*name_of)(int, char *, size_t), const int *cell_codes,
                                  hsize_t n) {
    hsize_t nc = (hsize_t)n_categories;
    hid_t g = nbs_h5_new_group(obs, name);
    if (g < 0) return -1;
    char (*cat)[32] = calloc(nc, sizeof *cat);
    char **cats = calloc(nc, sizeof *cats);
    signed char *codes = malloc(n);
    int rc = (cat && cats && codes && n_categories <= 127) ? 0 : -1;
    if (!rc) {
        for (hsize_t b = 0; b < nc; b++) {
            name_of((int)b, cat[b], sizeof cat[b]);
            cats[b] = cat[b];
        }
        for (hsize_t i = 0; i < n; i++) codes[i] = (signed char)cell_codes[i];
        rc = nbs_h5_write_strs(g, "categories", cats, nc, 1) ||
             nbs_h5_write_array(g, "codes", H5T_STD_I8LE, H5T_NATIVE_SCHAR, 1, &n, codes, 0);
    }
    if (!rc) {
        /* h5py's numpy bool: an int8 enum {FALSE, TRUE}; pandas refuses a plain integer */
        signed char no = 0, yes = 1;
        hid_t bt = H5Tenum_create(H5T_NATIVE_SCHAR);
        H5Tenum_insert(bt, "FALSE", &no);
        H5Tenum_insert(bt, "TRUE", &yes);
        rc = nbs_h5_set_attr(g, "ordered", bt, bt, &no);
        H5Tclose(bt);
        rc = rc || nbs_h5_set_encoding(g, "categorical", "0.2.0");
    }
    free(cat);
    free(cats);
    free(codes);
    H5Gclose(g);
    return rc;
}

int nbs_sim_add_h5ad_obs(const nbs_sim_data *d, const char *path, nbs_error *err) {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) return nbs_error_set(err, NBS_ERR_IO, "%s: cannot open to add obs columns", path);
    hid_t obs = H5Gopen2(f, "obs", H5P_DEFAULT);
    int rc = obs < 0;
    const int batches = d->config.n_batches > 1;
    if (!rc && (H5Lexists(obs, "branch", H5P_DEFAULT) > 0 || H5Lexists(obs, "pseudotime", H5P_DEFAULT) > 0 ||
                (batches && H5Lexists(obs, "batch", H5P_DEFAULT) > 0))) {
        H5Gclose(obs);
        H5Fclose(f);
        return nbs_error_set(err, NBS_ERR_IO, "%s: obs/branch, obs/pseudotime or obs/batch exists already", path);
    }
    if (!rc) {
        static const char *const cols[] = {"branch", "pseudotime", "batch"};
        const hsize_t n = (hsize_t)d->counts->n_cells;
        rc = add_categorical_column(obs, "branch", d->config.n_branches + 1, nbs_sim_branch_name, d->branch, n) ||
             nbs_h5_write_array(obs, "pseudotime", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 1, &n, d->pseudotime, 0) ||
             (batches && add_categorical_column(obs, "batch", d->config.n_batches, nbs_sim_batch_name, d->batch, n)) ||
             nbs_h5_append_column_order(obs, cols, 2 + batches);
        H5Gclose(obs);
    }
    if (H5Fclose(f) < 0) rc = 1;
    if (rc)
        return nbs_error_set(err, NBS_ERR_IO,
                             "%s: cannot add obs/branch, obs/pseudotime and obs/batch (expected an h5ad "
                             "with an obs group and no such columns yet)", path);
    return NBS_OK;
}

int nbs_sim_write_mtx_dir(const nbs_sim_data *d, const char *dir, nbs_error *err) {
    return nbs_io_write_10x_mtx_dir(dir, d->counts, 1, err);
}
