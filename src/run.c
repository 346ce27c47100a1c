/* One run: output check -> load -> preprocess -> train -> diagnose -> write, with the manifest
 * recording inputs, configuration, versions and per-stage timings. Stages talk only through
 * the structs they hand on; this file owns their order and lifetimes, nothing else. */
#include "nbsphere/run.h"

#include <gsl/gsl_randist.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/backed.h"
#include "nbsphere/checkpoint.h"
#include "nbsphere/covariates.h"
#include "nbsphere/diagnose.h"
#include "nbsphere/evaluate.h"
#include "nbsphere/integrate.h"
#include "nbsphere/io.h"
#include "nbsphere/manifest.h"
#include "nbsphere/mixture.h"
#include "nbsphere/nn.h"
#include "nbsphere/preprocess.h"
#include "nbsphere/report.h"
#include "nbsphere/train.h"
#include "nbsphere/trajectory.h"
#include "nbsphere/rng.h"
#include "nbsphere/samples.h"
#include "nbsphere/version.h"
#include "sphere_internal.h"

#define KNN_K 15     /* k-NN label accuracy as the issues quote it: 15 neighbours, 5 folds */
#define KNN_FOLDS 5
#define PCA_DIMS 10  /* the baseline: 10 principal components of log1p(CP10k) */
#define REF_DIMS 50  /* the wrap-around reference: scanpy's default n_pcs for sc.pp.neighbors */

typedef struct {
    const nbs_pipeline *p;
    const nbs_run_options *o;
    nbs_manifest *manifest;
    nbs_format format;          /* of the input, as read */
    nbs_matrix *counts;         /* as loaded */
    nbs_preprocess_result *pre; /* filtered cells, selected genes */
    nbs_checkpoint ck;          /* model, its covariates, training state and log */
    nbs_covariate_values cov;   /* the covariates of every kept cell, by row of pre->matrix */
    int64_t *diag_rows;         /* the fixed subsample the diagnostics are computed on */
    int64_t n_diag;
    nbs_diagnose_track track;   /* measures over training */
    nbs_collapse_report report; /* measures at the end */
    int have_report;
    int trained;                /* this run trained the model (not embed/diagnose) */
    char **labels;              /* per kept cell, from input.label_column; NULL without */
    double knn_embedding, knn_pca; /* 15-NN label accuracy (5-fold), NaN when not computed */
    nbs_knn_info knn_info;         /* how the embedding's label score searched its neighbours */
    float *z, *spread;          /* the embedding of every kept cell (location; variances or kappa) */
    int d, cosine;              /* its width, and whether its distance is the cosine (the sphere) */
    const char *emb_source;     /* a given embedding (not the model's): where it came from */
    int32_t *cluster;           /* discrete latent: [n] each kept cell's most probable category */
    double *cluster_p;          /* [n] its q(c|x) */
    nbs_integration integration; /* scIB metrics, with a batch covariate or labels */
    int have_integration;
    char **batch_labels;         /* [n] each kept cell's batch name (pointers into the covariates) */
    nbs_trajectory traj;         /* the trajectory stage's graphs, clusters and pseudotime */
    int have_traj;
    double t_stage;
    /* out of core (input.backed): the file, the loader of its kept cells, and the diagnostics'
     * subsample read from it; pre->matrix is NULL then */
    int out_of_core;
    nbs_backed *backed;
    nbs_backed_loader *loader;
    int32_t *row_nnz;            /* (kept cells) entries in the chosen genes */
    char **backed_names, **backed_ids; /* (chosen genes) pointers into the file's gene names */
    nbs_matrix *diag_X;          /* (n_diag, genes) the subsample's counts */
    double *diag_lib;            /* (n_diag) */
    nbs_covariate_values diag_cov; /* (n_diag) the subsample's covariates */
    int embedded;                /* every kept cell embedded (embed_all_backed): at process 0 in z, spread, cluster */
} run_state;

static void stage_begin(run_state *s, const char *name) {
    s->t_stage = nbs_progress_now();
    nbs_progress_stage(s->o->progress, name);
}

static int stage_end(run_state *s, const char *name, const char *summary, nbs_error *err) {
    nbs_progress_done(s->o->progress, summary);
    return nbs_manifest_add_stage(s->manifest, name, nbs_progress_now() - s->t_stage, err);
}

static int out_path(const run_state *s, const char *name, char *buf) {
    int n = snprintf(buf, NBS_PATH_MAX, "%s/%s", s->p->config.output.dir, name);
    return n < NBS_PATH_MAX ? 0 : -1;
}

/* What the input is called in messages and the report's title: its path, or the samples. */
static const char *input_title(const nbs_input_config *in) {
    static _Thread_local char buf[1024];
    if (!in->samples.n) return in->path;
    size_t used = (size_t)snprintf(buf, sizeof buf, "input.samples");
    for (int i = 0; i < in->samples.n && used < sizeof buf; i++)
        used += (size_t)snprintf(buf + used, sizeof buf - used, "%s%s", i ? ", " : " ", in->samples.items[i].name);
    return buf;
}

/* The load stage is nbs_io_read; the detected format is reported to inspect and the log. */
int nbs_run_read_input(const nbs_input_config *in, nbs_format *format_used, nbs_matrix **out,
                       nbs_error *err) {
    if (in->samples.n) { /* several files: no single format (and no obs to copy) */
        if (format_used) *format_used = NBS_FMT_AUTO;
        return nbs_samples_read(in, out, err);
    }
    nbs_input_config resolved = *in;
    int rc = resolved.format == NBS_FMT_AUTO ? nbs_io_detect_format(in->path, &resolved.format, err) : NBS_OK;
    if (rc) return rc;
    if (format_used) *format_used = resolved.format;
    return nbs_io_read(&resolved, out, err);
}

static int stage_load(run_state *s, nbs_error *err) {
    const nbs_input_config *in = &s->p->config.input;
    stage_begin(s, "load");
    nbs_progress_fraction(s->o->progress, 0, input_title(in)); /* on a terminal: what is being read */
    int st = NBS_OK;
    if (in->samples.n)
        for (int i = 0; i < in->samples.n && !st; i++) st = nbs_manifest_add_input(s->manifest, in->samples.items[i].path, err);
    else st = nbs_manifest_add_input(s->manifest, in->path, err);
    if (!st && in->labels_path[0]) st = nbs_manifest_add_input(s->manifest, in->labels_path, err);
    if (!st) st = nbs_run_read_input(in, &s->format, &s->counts, err);
    if (st) return st;
    char msg[256];
    snprintf(msg, sizeof msg, "%lld cells x %lld genes, %lld nonzeros",
             (long long)s->counts->n_cells, (long long)s->counts->n_genes,
             (long long)s->counts->nnz);
    return stage_end(s, "load", msg, err);
}

/* ---- preprocess ---- */

/* Cells kept per sample after the QC filters, for the log. */
static void log_kept_per_sample(const run_state *s) {
    const nbs_sample_list *smp = &s->p->config.input.samples;
    int64_t kept[NBS_MAX_SAMPLES] = {0};
    const nbs_matrix *X = s->pre->matrix; /* NULL out of core: the file of each kept row */
    for (int64_t i = 0; i < s->pre->n_cells; i++) {
        const int k = X ? nbs_sample_of_barcode(smp, X->barcodes[i]) : nbs_backed_file_of_row(s->backed, s->pre->cells[i]);
        if (k >= 0) kept[k]++;
    }
    for (int k = 0; k < smp->n; k++)
        nbs_info("sample '%s': %lld cells kept after the QC filters", smp->items[k].name, (long long)kept[k]);
}

/* Which Seurat v3 selection chose the genes, for the log (in memory and out of core alike). */
static void log_hvg(const run_state *s, const char *column) {
    const nbs_preprocess_config *pc = &s->p->config.preprocess;
    if (*column && s->pre->removed_genes_hvg > 0) {
        if (s->pre->hvg_batches)
            nbs_info("highly variable genes: Seurat v3 ranked within each of %d batches of '%s', genes ordered by %s "
                     "(preprocess.hvg_flavor: %s)", s->pre->hvg_batches, column,
                     pc->hvg_flavor == NBS_HVG_SEURAT_V3_PAPER
                         ? "the number of batches that rank them among the top n_top_genes, then by their median rank"
                         : "their median rank over the batches that rank them among the top n_top_genes, then by "
                           "the number of those batches",
                     nbs_enum_word_of(nbs_hvg_flavor_words, pc->hvg_flavor));
        else
            nbs_info("highly variable genes: Seurat v3 over all cells pooled%s", pc->hvg_batch_aware ? ""
                     : " (preprocess.hvg_batch_aware: false)");
    }
}

static int stage_preprocess(run_state *s, nbs_error *err) {
    const nbs_preprocess_config *pc = &s->p->config.preprocess;
    const nbs_input_config *in = &s->p->config.input;
    stage_begin(s, "preprocess");
    /* the batch of every loaded cell, for batch-aware gene selection */
    int32_t *codes = NULL;
    nbs_categorical_covariate batch = {0};
    const char *column = nbs_covariates_batch_column(in);
    const int ranks = pc->n_top_genes > 0 && pc->n_top_genes < s->counts->n_genes;
    int st = *column && ranks && pc->hvg_batch_aware
                 ? nbs_covariates_batch_codes(in, s->format, s->counts, &codes, &batch, err)
                 : NBS_OK;
    const nbs_preprocess_batches b = {codes, batch.n_categories, batch.categories, column};
    if (!st) st = nbs_preprocess_take_batched(s->counts, pc, codes ? &b : NULL, &s->pre, err); /* the rest needs only its result */
    else nbs_matrix_free(s->counts);
    s->counts = NULL;
    free(codes);
    nbs_categorical_covariate_free(&batch);
    if (st) return st;
    log_hvg(s, column);
    if (in->samples.n) log_kept_per_sample(s);
    char msg[512];
    nbs_preprocess_summary(s->pre, pc, msg, sizeof msg);
    if (s->pre->cells_zero_library)
        nbs_warn("%lld cells have no counts in the selected genes; they are kept and embedded from "
                 "an empty profile", (long long)s->pre->cells_zero_library);
    return stage_end(s, "preprocess", msg, err);
}

/* ---- diagnose ---- */

static const nbs_train_reduce *split_run(const run_state *s);
static void my_range(const nbs_train_reduce *r, int64_t n, int64_t *lo, int64_t *hi);

/* This process's part [lo, hi) of the diagnosed cells (s->diag_rows): under mpirun each process
 * diagnoses a contiguous part, in rank order (nbs_diagnose_shared); alone all of them. */
static void diag_part(const run_state *s, int64_t *lo, int64_t *hi) {
    *lo = 0, *hi = s->n_diag;
    if (split_run(s)) my_range(split_run(s), s->n_diag, lo, hi);
}

/* A seeded subsample of at most diagnose.subsample cells, in row order, fixed for the run; every
 * process draws the same (out of core, each reads only its part's rows). */
static int choose_diag_rows(run_state *s, nbs_error *err) {
    const int64_t n = s->pre->n_cells, k = s->p->config.diagnose.subsample < n ? s->p->config.diagnose.subsample : n;
    const nbs_train_reduce *split = split_run(s);
    if (split && k < split->size)
        return nbs_error_set(err, NBS_ERR_USAGE, "diagnostics over %d processes need at least one cell on each, but "
                             "%lld cells are diagnosed (diagnose.subsample, at most the kept cells); run on at most "
                             "%lld processes", split->size, (long long)k, (long long)k);
    int64_t *all = nbs_malloc(sizeof(int64_t) * (size_t)(n ? n : 1), err);
    if (!all) return err->code;
    for (int64_t i = 0; i < n; i++) all[i] = i;
    if (k < n) {
        gsl_rng *r = nbs_stream_rng(s->p->config.train.seed, NBS_STREAM_DIAG_CELLS, 0, err);
        if (!r) {
            free(all);
            return err->code;
        }
        gsl_ran_choose(r, all, (size_t)k, all, (size_t)n, sizeof(int64_t)); /* keeps row order */
        gsl_rng_free(r);
    }
    s->diag_rows = all;
    s->n_diag = k;
    if (!s->loader) return NBS_OK;
    int64_t lo, hi; /* out of core each process reads only its part of the diagnosed cells */
    diag_part(s, &lo, &hi);
    int st = nbs_backed_loader_read(s->loader, all + lo, hi - lo, &s->diag_X, &s->diag_lib, err);
    return st ? st : nbs_covariate_values_gather(&s->cov, all + lo, hi - lo, &s->diag_cov, err);
}

/* Every kept cell with its library size and covariates. */
static nbs_cells all_cells(const run_state *s) {
    nbs_cells c = nbs_cells_all(s->pre->matrix, s->pre->library_size);
    nbs_covariates_attach(&s->cov, &c);
    return c;
}

static int diagnose_now(run_state *s, nbs_model *m, int epoch, nbs_collapse_report *r, nbs_error *err) {
    memset(r, 0, sizeof *r); /* freeable whatever fails (nbs_diagnose clears it only once called) */
    gsl_rng *g = nbs_stream_rng(s->p->config.train.seed, NBS_STREAM_DIAGNOSE, (uint64_t)epoch, err);
    if (!g) return err->code;
    int64_t lo, hi;
    diag_part(s, &lo, &hi);
    nbs_cells c = s->diag_X ? nbs_cells_all(s->diag_X, s->diag_lib) : all_cells(s); /* this process's part */
    if (s->diag_X) nbs_covariates_attach(&s->diag_cov, &c);
    else {
        c.rows = s->diag_rows + lo;
        c.n = hi - lo;
    }
    int st = nbs_diagnose_shared(m, &c, &s->p->config.diagnose, g, split_run(s), r, err);
    gsl_rng_free(g);
    return st;
}

/* Training hook: the measures every diagnose.interval epochs, so the report shows when a
 * dimension collapsed. */
static int track_epoch(void *user, nbs_model *m, int epoch, nbs_error *err) {
    run_state *s = user;
    const int every = s->p->config.diagnose.interval;
    if (every <= 0 || epoch % every) return NBS_OK;
    nbs_collapse_report r;
    int st = diagnose_now(s, m, epoch, &r, err);
    if (!st) st = nbs_diagnose_track_add(&s->track, epoch, &r, err);
    if (!st) nbs_debug("epoch %d: %d of %d latent dimensions active, %d collapsed", epoch, r.n_active, r.d, r.n_collapsed);
    nbs_collapse_report_free(&r);
    return st;
}


/* Labels for the kept cells, from a labels table or the h5ad's obs. */
static int read_labels(run_state *s, nbs_error *err) {
    const nbs_input_config *in = &s->p->config.input;
    if (!in->label_column[0] || s->labels) return NBS_OK;
    if (!in->labels_path[0] && s->format != NBS_FMT_H5AD)
        return nbs_error_set(err, NBS_ERR_USAGE, "input.label_column '%s' is set, but there is no labels table "
                             "(input.labels_path) and the input is not an .h5ad with that obs column",
                             in->label_column);
    /* out of core, the kept cells' names only while the labels are matched to them */
    nbs_matrix *names = NULL;
    int st = s->pre->matrix ? NBS_OK : nbs_backed_cell_names(s->backed, s->pre->cells, s->pre->n_cells, &names, err);
    const nbs_matrix *X = names ? names : s->pre->matrix;
    if (!st && in->labels_path[0]) st = nbs_io_read_labels_table(in->labels_path, in->label_column, X, &s->labels, err);
    else if (!st) st = nbs_io_read_h5ad_obs(in->path, in->label_column, X, &s->labels, err);
    nbs_matrix_free(names);
    return st;
}

/* How well the embedding keeps the labels apart, next to PCA of log1p(CP10k) on the same genes:
 * k-NN label accuracy with k-fold cross-validation (the metric the issues quote). */
static int backed_pca(run_state *s, int k, float *pcs, nbs_error *err);

static int label_quality(run_state *s, const float *z, int d, int cosine, nbs_error *err) {
    const nbs_matrix *X = s->pre->matrix; /* NULL out of core: the PCA streamed from the file */
    const int64_t n = s->pre->n_cells;
    int32_t *codes = nbs_malloc(sizeof(int32_t) * (size_t)n, err);
    float *pcs = codes ? nbs_malloc(sizeof(float) * (size_t)n * PCA_DIMS, err) : NULL;
    gsl_rng *r = pcs ? nbs_stream_rng(s->p->config.train.seed, NBS_STREAM_EVALUATE, 0, err) : NULL;
    int st = r ? NBS_OK : err->code;
    int n_classes = 0;
    if (!st) st = nbs_eval_label_codes(s->labels, n, codes, &n_classes, err);
    const nbs_neighbors_config *nb = &s->p->config.neighbors;
    const uint64_t seed = s->p->config.train.seed;
    nbs_knn_info pca_info;
    if (!st) {
        st = nbs_eval_knn_accuracy(z, n, d, codes, KNN_K, KNN_FOLDS, cosine ? NBS_METRIC_COSINE : NBS_METRIC_EUCLIDEAN,
                                   nb, seed, r, &s->knn_embedding, NULL, &s->knn_info, err);
    }
    const int k = s->pre->n_genes < PCA_DIMS ? (int)s->pre->n_genes : PCA_DIMS;
    if (!st) st = X ? nbs_eval_pca(X, k, 4, r, pcs, NULL, err) : backed_pca(s, k, pcs, err);
    if (!st) {
        nbs_stream_set(r, s->p->config.train.seed, NBS_STREAM_EVALUATE, 0); /* the same folds as the embedding's */
        st = nbs_eval_knn_accuracy(pcs, n, k, codes, KNN_K, KNN_FOLDS, NBS_METRIC_EUCLIDEAN, nb, seed, r, &s->knn_pca,
                                   NULL, &pca_info, err);
    }
    if (!st) {
        nbs_info("%d-NN accuracy of the '%s' labels (%d classes, %d-fold): embedding %.3f, PCA (%d components "
                 "of log1p CP10k) %.3f", KNN_K, s->p->config.input.label_column, n_classes, KNN_FOLDS,
                 s->knn_embedding, k, s->knn_pca);
        if (s->knn_info.method == NBS_KNN_APPROXIMATE) {
            char how[320];
            nbs_knn_describe(&s->knn_info, how, sizeof how);
            nbs_info("%d-NN accuracy: each fold's neighbours %s; PCA's recall@%d %.4f", KNN_K, how, KNN_K,
                     pca_info.recall);
        }
    }
    free(codes);
    free(pcs);
    if (r) gsl_rng_free(r);
    return st;
}

static int embed_all_backed(run_state *s, nbs_error *err);

/* The discrete latent of cells c (n): each one's most probable category and its probability. */
static int cluster_cells(const run_state *s, const nbs_cells *c, int32_t *cluster, double *cluster_p, nbs_error *err) {
    const int K = nbs_model_discrete(s->ck.model);
    const int64_t n = c->n;
    float *prob = nbs_malloc(sizeof(float) * (size_t)(n * K + 1), err); /* (n, K) */
    int st = prob ? nbs_model_cluster(s->ck.model, c, prob, NULL, err) : NBS_ERR_NOMEM;
    for (int64_t i = 0; !st && i < n; i++) {
        int best = 0;
        for (int k = 1; k < K; k++)
            if (prob[i * K + k] > prob[i * K + best]) best = k;
        cluster[i] = best;
        cluster_p[i] = prob[i * K + best];
    }
    free(prob);
    return st;
}

/* The embedding of the kept cells, computed once for the label score and the outputs (out of core:
 * read from the file a block at a time, kept in memory). */
static int embed_cells(run_state *s, nbs_error *err) {
    if (s->z) return NBS_OK;
    if (s->backed) return embed_all_backed(s, err);
    const nbs_latent *L = nbs_model_latent(s->ck.model);
    const int64_t n = s->pre->matrix->n_cells;
    s->z = nbs_malloc(sizeof(float) * (size_t)(n * L->dim + 1), err);
    s->spread = s->z ? nbs_malloc(sizeof(float) * (size_t)(n * nbs_latent_spread_dim(L) + 1), err)
                     : NULL;
    if (!s->spread) return err->code;
    s->d = L->dim;
    s->cosine = nbs_latent_on_sphere(L);
    const nbs_cells all = all_cells(s);
    int st = nbs_model_embed(s->ck.model, &all, s->z, s->spread, err);
    if (st || !nbs_model_discrete(s->ck.model)) return st;
    s->cluster = nbs_malloc(sizeof(int32_t) * (size_t)(n + 1), err);
    s->cluster_p = nbs_malloc(sizeof(double) * (size_t)(n + 1), err);
    return s->cluster && s->cluster_p ? cluster_cells(s, &all, s->cluster, s->cluster_p, err) : NBS_ERR_NOMEM;
}

static int cmp_barcode(const void *a, const void *b, void *names) {
    char *const *n = names;
    return strcmp(n[*(const int64_t *)a], n[*(const int64_t *)b]);
}

/* A given embedding in place of the model's: its rows of the kept cells, in their order. */
static int load_embedding(run_state *s, const char *path, nbs_error *err) {
    nbs_embedding_table e;
    int st = nbs_io_read_embedding(path, s->o->use_rep, &e, err);
    if (st) return st;
    const nbs_matrix *X = s->pre->matrix;
    const int64_t n = X->n_cells;
    int64_t *order = nbs_malloc(sizeof *order * (size_t)e.n, err); /* [e.n] rows by barcode */
    s->z = order ? nbs_malloc(sizeof *s->z * (size_t)(n * e.d + 1), err) : NULL;
    if (!s->z) st = NBS_ERR_NOMEM;
    for (int64_t r = 0; !st && r < e.n; r++) order[r] = r;
    if (!st) qsort_r(order, (size_t)e.n, sizeof *order, cmp_barcode, e.barcodes);
    int64_t missing = 0, first = -1;
    for (int64_t i = 0; !st && i < n; i++) {
        int64_t lo = 0, hi = e.n; /* the first row whose barcode is not below cell i's */
        while (lo < hi) {
            const int64_t mid = lo + (hi - lo) / 2;
            if (strcmp(e.barcodes[order[mid]], X->barcodes[i]) < 0) lo = mid + 1;
            else hi = mid;
        }
        if (lo == e.n || strcmp(e.barcodes[order[lo]], X->barcodes[i])) {
            if (!missing++) first = i;
            continue;
        }
        memcpy(s->z + i * e.d, e.z + order[lo] * e.d, sizeof *s->z * (size_t)e.d);
    }
    if (!st && missing)
        st = nbs_error_set(err, NBS_ERR_INPUT, "%s: %lld of the %lld cells that %s keeps after quality control are not "
                           "in the embedding (the first: %s); embed the same cells, with the same barcodes (an "
                           "embedding.h5ad or .tsv of nbsphere has the barcodes of the data it embedded)", path,
                           (long long)missing, (long long)n, s->p->config.input.path, X->barcodes[first]);
    if (!st) {
        const char *metric = s->o->metric ? s->o->metric : e.metric;
        s->d = e.d;
        s->cosine = !strcmp(metric, "cosine");
        s->emb_source = path;
        if (e.n > n) nbs_info("%s: %lld of its %lld cells are not among the data's kept cells and are left out", path,
                              (long long)(e.n - n), (long long)e.n);
        nbs_info("embedding: %s, %lld cells x %d, %s distance%s", e.source, (long long)n, e.d,
                 s->cosine ? "cosine" : "euclidean",
                 s->o->metric ? " (--metric)" : e.metric[0] ? " (as the file says)"
                                                 : " (the file does not say; --metric cosine for a spherical one)");
        for (int64_t i = 0; s->cosine && i < n && !st; i++) { /* the graph scales rows to unit length */
            double q = 0;
            for (int j = 0; j < e.d; j++) q += fabs(s->z[i * e.d + j]);
            if (q == 0)
                st = nbs_error_set(err, NBS_ERR_INPUT, "%s: cell %s is the zero vector, which has no direction for "
                                   "the cosine distance", path, X->barcodes[i]);
        }
    }
    free(order);
    nbs_embedding_table_free(&e);
    return st;
}

/* scIB integration metrics (integrate.h) when the model has a batch covariate or labels are given;
 * a confounding of batch and labels is warned about. */
static int integration_quality(run_state *s, const float *z, int d, int cosine, nbs_error *err) {
    const nbs_covariates *cov = &s->ck.covariates;
    if (!cov->has_batch && !s->labels) return NBS_OK;
    const int64_t n = s->pre->n_cells;
    int32_t *batch = nbs_malloc(sizeof(int32_t) * (size_t)n, err);       /* [n] */
    int32_t *codes = nbs_malloc(sizeof(int32_t) * (size_t)n, err);       /* [n] */
    char **names = nbs_malloc(sizeof(char *) * (size_t)(n ? n : 1), err); /* [n_labels] */
    int st = batch && codes && names ? NBS_OK : NBS_ERR_NOMEM, n_labels = 0;
    if (!st && cov->has_batch) {
        s->batch_labels = nbs_malloc(sizeof(char *) * (size_t)n, err);
        if (!s->batch_labels) st = NBS_ERR_NOMEM;
        for (int64_t i = 0; !st && i < n; i++) {
            batch[i] = s->cov.codes[i * s->cov.n_categorical];
            s->batch_labels[i] = cov->categorical[0].categories[batch[i]];
        }
    }
    if (!st && s->labels) {
        st = nbs_eval_label_codes(s->labels, n, codes, &n_labels, err);
        for (int64_t i = n - 1; !st && i >= 0; i--)
            if (codes[i] >= 0) names[codes[i]] = s->labels[i];
    }
    if (!st) {
        double t0 = nbs_progress_now();
        st = nbs_integration_metrics(z, n, d, cosine ? NBS_METRIC_COSINE : NBS_METRIC_EUCLIDEAN,
                                     cov->has_batch ? batch : NULL, cov->has_batch ? cov->categorical[0].n_categories : 0,
                                     s->labels ? codes : NULL, n_labels, names, s->knn_embedding, &s->p->config.neighbors,
                                     s->p->config.train.seed,
                                     &s->integration, err);
        const nbs_integration *r = &s->integration;
        if (!st) {
            s->have_integration = 1;
            nbs_info("integration (scIB, %.1f s): batch %.3f (iLISI %.3f, batch ASW %.3f, graph connectivity %.3f), "
                     "biology %.3f (cLISI %.3f, NMI %.3f, ARI %.3f at Leiden resolution %.1f, cell-type ASW %.3f), "
                     "overall %.3f%s%s", nbs_progress_now() - t0, r->batch_score, r->ilisi, r->batch_asw,
                     r->graph_connectivity, r->bio_score, r->clisi, r->nmi, r->ari, r->resolution, r->label_asw,
                     r->overall, r->notes[0] ? "; " : "", r->notes);
            if (r->confounded)
                nbs_warn("batch and labels are confounded: correcting for the batch may remove biology (Cramer's V "
                         "%.2f%s%s)", r->cramers_v, r->one_batch_labels[0] ? "; labels in one batch only: " : "",
                         r->one_batch_labels);
        }
    }
    free(batch);
    free(codes);
    free(names);
    return st;
}

static int stage_diagnose(run_state *s, nbs_error *err) {
    stage_begin(s, "diagnose");
    int st = diagnose_now(s, s->ck.model, 0, &s->report, err);
    if (st) return st;
    if ((st = read_labels(s, err))) return st;
    if (s->labels) {
        const nbs_latent *L = nbs_model_latent(s->ck.model);
        if ((st = embed_cells(s, err))) return st;
        if ((st = label_quality(s, s->z, L->dim, nbs_latent_on_sphere(L), err))) return st;
    }
    if (s->ck.covariates.has_batch || s->labels) {
        const nbs_latent *L = nbs_model_latent(s->ck.model);
        if ((st = embed_cells(s, err))) return st;
        if ((st = integration_quality(s, s->z, L->dim, nbs_latent_on_sphere(L), err))) return st;
    }
    s->have_report = 1;
    for (int j = 0; j < s->report.d; j++)
        nbs_debug("z_%d: KL %.4g, activity %.4g, sensitivity %.4g (weights %.4g): %s", j + 1, s->report.kl[j],
                  s->report.activity[j], s->report.sens_jacobian[j], s->report.sens_weight[j],
                  nbs_dim_verdict_word(s->report.verdict[j]));
    if (s->report.model != NBS_MODEL_HEALTHY)
        nbs_warn("posterior collapse: %s. Try: %s", s->report.summary, s->report.remedies);
    if (s->report.n_dead_categories)
        nbs_warn("discrete latent: %s. Try train.entropy_target (e.g. %.3g nats) with train.entropy_weight, or a "
                 "smaller model.discrete", s->report.category_summary, 0.9 * log((double)s->report.n_categories));
    else if (s->report.n_categories)
        nbs_info("discrete latent: %s", s->report.category_summary);
    return stage_end(s, "diagnose", s->report.summary, err);
}

/* ---- trajectory ---- */

/* The wrap-around diagnostic against PCA of log1p(CP10k) of the model's genes (REF_DIMS
 * components, fewer with fewer genes or cells; out of core streamed from the file). */
static int wraparound(run_state *s, nbs_error *err) {
    const nbs_matrix *X = s->pre->matrix; /* NULL out of core */
    const int64_t n = s->pre->n_cells;
    int dims = REF_DIMS;
    if (s->pre->n_genes < dims) dims = (int)s->pre->n_genes;
    if (n < dims) dims = (int)n;
    float *pcs = nbs_malloc(sizeof *pcs * (size_t)n * (size_t)dims, err); /* [n x dims] */
    gsl_rng *r = pcs ? nbs_stream_rng(s->p->config.train.seed, NBS_STREAM_REFERENCE, 0, err) : NULL;
    int st = !r ? (int)err->code : X ? nbs_eval_pca(X, dims, 4, r, pcs, NULL, err) : backed_pca(s, dims, pcs, err);
    if (!st) st = nbs_traj_wraparound(&s->traj, pcs, dims, &s->p->config.trajectory, s->labels, err);
    free(pcs);
    if (r) gsl_rng_free(r);
    if (st) return st;
    if (s->traj.ref_knn_info.method == NBS_KNN_APPROXIMATE) {
        char how[320];
        nbs_knn_describe(&s->traj.ref_knn_info, how, sizeof how);
        nbs_info("wrap-around: the reference graph's neighbours %s", how);
    }
    const nbs_wraparound *w = &s->traj.wrap;
    if (w->wraps) nbs_warn("wrap-around: %s", w->verdict);
    else nbs_info("wrap-around: %s", w->verdict);
    return NBS_OK;
}

static int stage_trajectory(run_state *s, nbs_error *err) {
    const nbs_config *c = &s->p->config;
    stage_begin(s, "trajectory");
    int st = read_labels(s, err);
    if (!st) st = embed_cells(s, err);
    if (st) return st;
    /* out of core, the kept cells' names (for trajectory.root and the messages) while the stage runs */
    nbs_matrix *names = NULL;
    if (!s->pre->matrix && (st = nbs_backed_cell_names(s->backed, s->pre->cells, s->pre->n_cells, &names, err))) return st;
    const nbs_matrix *X = names ? names : s->pre->matrix;
    st = nbs_trajectory_compute(s->z, X->n_cells, s->d, s->cosine ? NBS_METRIC_COSINE : NBS_METRIC_EUCLIDEAN,
                                &c->trajectory, &c->neighbors, X->barcodes, s->labels, c->input.label_column,
                                c->train.seed, &s->traj, err);
    nbs_matrix_free(names);
    if (st) return st;
    s->have_traj = 1;
    if (c->trajectory.shortcut_hops > 0) st = wraparound(s, err);
    if (st) return st;
    const nbs_trajectory *t = &s->traj;
    char msg[768];
    snprintf(msg, sizeof msg, "%d Leiden clusters (resolution %g), diffusion eigenvalues %.4f .. %.4f, root %s%s%s",
             t->n_clusters, t->resolution, t->evals[1], t->evals[t->n_dcs - 1], t->root_rule,
             t->n_unreached ? "; some cells without pseudotime" : "", t->wrap.wraps ? "; wrap-around" : "");
    return stage_end(s, "trajectory", msg, err);
}

/* ---- train ---- */

/* The names and ids of the model's genes: the matrix's, or out of core the chosen ones of the file. */
static char **model_gene_names(const run_state *s) { return s->backed ? s->backed_names : s->pre->matrix->gene_names; }
static char **model_gene_ids(const run_state *s) { return s->backed ? s->backed_ids : s->pre->matrix->gene_ids; }

static int save_checkpoint(void *user, nbs_model *m, const nbs_train_state *ts, const nbs_train_log *l,
                           nbs_error *err) {
    run_state *s = user;
    char path[NBS_PATH_MAX];
    if (out_path(s, NBS_OUT_CHECKPOINT, path)) return nbs_error_set(err, NBS_ERR_USAGE, "output.dir is too long");
    return nbs_checkpoint_save(path, m, &s->p->config, &s->ck.covariates, model_gene_names(s), model_gene_ids(s), ts,
                               l, err);
}

/* A resumed run must see the genes its checkpoint was trained on, in the same order. */
static int check_resume_genes(const nbs_checkpoint *ck, char *const *names, int64_t n_genes, const char *path,
                              nbs_error *err) {
    int same = ck->n_genes == n_genes;
    for (int64_t g = 0; same && g < n_genes; g++) same = !strcmp(ck->gene_names[g], names[g]);
    if (!same)
        return nbs_error_set(err, NBS_ERR_INPUT,
                             "%s: the checkpoint was trained on %lld genes, but this input and "
                             "preprocessing give %lld other ones; resume with the same input and "
                             "preprocess section (they are in the checkpoint's configuration)",
                             path, (long long)ck->n_genes, (long long)n_genes);
    return NBS_OK;
}

/* Out of core, the covariates of the kept cells: their names are read from the file (for the readers
 * that match cells by barcode) only while the columns are, then only the values stay. */
static int backed_covariates(run_state *s, int fit, nbs_error *err) {
    const nbs_input_config *in = &s->p->config.input;
    const nbs_covariates *cov = &s->ck.covariates;
    const int any = fit ? *nbs_covariates_batch_column(in) || in->categorical_covariates.n || in->continuous_covariates.n
                        : cov->n_categorical || cov->n_continuous;
    if (!any) return NBS_OK;
    nbs_matrix *names = NULL;
    int st = nbs_backed_cell_names(s->backed, s->pre->cells, s->pre->n_cells, &names, err);
    if (!st) st = fit ? nbs_covariates_fit(in, s->format, names, &s->ck.covariates, &s->cov, err)
                      : nbs_covariates_encode(cov, in, s->format, names, &s->cov, err);
    nbs_matrix_free(names);
    return st ? st : nbs_backed_loader_covariates(s->loader, &s->cov, err);
}

/* out of core under mpirun (below) */
static int log_rows_read(run_state *s, int64_t rows, int epochs, nbs_error *err);

static int stage_train(run_state *s, nbs_error *err) {
    const nbs_config *c = &s->p->config;
    const nbs_matrix *X = s->pre->matrix; /* NULL out of core */
    const int64_t n_genes = s->pre->n_genes;
    stage_begin(s, "train");
    int st = NBS_OK;
    if (s->o->resume) {
        st = nbs_checkpoint_load(s->o->resume, &s->ck, err);
        if (!st) st = check_resume_genes(&s->ck, model_gene_names(s), n_genes, s->o->resume, err);
        /* the checkpoint's categories and standardisation, not the resumed data's own */
        if (!st && X) st = nbs_covariates_encode(&s->ck.covariates, &c->input, s->format, X, &s->cov, err);
        else if (!st && s->backed) st = backed_covariates(s, 0, err);
        if (st) return st;
        nbs_info("resuming from %s after epoch %d", s->o->resume, s->ck.state.epochs_done);
    } else {
        if (n_genes > INT32_MAX) return nbs_error_set(err, NBS_ERR_INPUT, "too many genes");
        if (X && (st = nbs_covariates_fit(&c->input, s->format, X, &s->ck.covariates, &s->cov, err))) return st;
        if (!X && s->backed && (st = backed_covariates(s, 1, err))) return st;
        const nbs_covariate_layout layout = nbs_covariates_layout(&s->ck.covariates);
        gsl_rng *r = nbs_stream_rng(c->train.seed, NBS_STREAM_INIT, 0, err);
        if (!r) return err->code;
        s->ck.model = nbs_model_new(&c->model, (int)n_genes, &layout, r, err);
        gsl_rng_free(r);
        if (!s->ck.model) return err->code;
        if ((st = nbs_train_state_init(&s->ck.state, s->ck.model, c->train.seed, err))) return st;
    }
    char log_path[NBS_PATH_MAX], ckpt_path[NBS_PATH_MAX];
    if (out_path(s, NBS_OUT_LOG, log_path) || out_path(s, NBS_OUT_CHECKPOINT, ckpt_path))
        return nbs_error_set(err, NBS_ERR_USAGE, "output.dir is too long");
    const int writer = !s->o->reduce || s->o->reduce->rank == 0;
    if ((st = choose_diag_rows(s, err))) return st; /* every process diagnoses its part */
    if (s->ck.covariates.n_categorical || s->ck.covariates.n_continuous) {
        char desc[1024];
        nbs_covariates_describe(&s->ck.covariates, desc, sizeof desc);
        nbs_info("covariates: %s", desc);
    }
    nbs_train_hooks h = {s->o->progress, log_path, save_checkpoint, ckpt_path, track_epoch, s};
    const nbs_train_hooks peer = {.on_epoch = track_epoch, .user = s}; /* a peer writes nothing, diagnoses its part */
    if (s->backed) { /* positions of the kept cells; the minibatches come from the file */
        const nbs_cells pos = {.n = s->pre->n_cells};
        const nbs_batch_source src = nbs_backed_loader_source(s->loader);
        const int64_t read0 = nbs_backed_rows_read(s->backed);
        const int epoch0 = s->ck.state.epochs_done;
        st = nbs_train_from(s->ck.model, &pos, &c->train, &s->ck.state, &s->ck.log, writer ? &h : &peer,
                            s->o->reduce, &src, err);
        if (!st && split_run(s))
            st = log_rows_read(s, nbs_backed_rows_read(s->backed) - read0, s->ck.state.epochs_done - epoch0, err);
    } else {
        const nbs_cells all = all_cells(s);
        st = nbs_train(s->ck.model, &all, &c->train, &s->ck.state, &s->ck.log, writer ? &h : &peer, s->o->reduce,
                       err);
    }
    if (!writer) return st;
    if (!st) st = nbs_manifest_add_output(s->manifest, NBS_OUT_LOG, err);
    if (st) return st;
    char model_path[NBS_PATH_MAX];
    if (out_path(s, NBS_OUT_MODEL, model_path)) return nbs_error_set(err, NBS_ERR_USAGE, "output.dir is too long");
    st = nbs_checkpoint_save(model_path, s->ck.model, c, &s->ck.covariates, model_gene_names(s), model_gene_ids(s),
                             &s->ck.state, &s->ck.log, err);
    if (!st) st = nbs_manifest_add_output(s->manifest, NBS_OUT_MODEL, err);
    if (st) return st;
    remove(ckpt_path); /* model.h5 holds everything the periodic checkpoint did, and more */
    s->trained = 1;
    const nbs_train_log *l = &s->ck.log;
    nbs_train_health th;
    nbs_train_log_health(l, &th);
    if (th.message[0]) nbs_warn("training: %s", th.message);
    char msg[256] = "no epochs to train";
    if (l->n > 0) {
        const nbs_epoch_record *r = &l->rec[l->n - 1];
        snprintf(msg, sizeof msg, "%d epochs, ELBO %.4g (validation %.4g), KL %.3g", r->epoch,
                 -(r->recon + r->kl), r->val_elbo, r->kl);
    }
    return stage_end(s, "train", msg, err);
}

/* ---- write ---- */

/* The genes the model uses, in its order: id and name, one per line (no header). */
static int write_genes(run_state *s, nbs_error *err) {
    char path[NBS_PATH_MAX], tmp[NBS_PATH_MAX];
    if (out_path(s, NBS_OUT_GENES, path)) return nbs_error_set(err, NBS_ERR_USAGE, "output.dir is too long");
    FILE *f;
    int st = nbs_io_atomic_open(path, tmp, &f, err);
    if (st) return st;
    char **ids = model_gene_ids(s), **names = model_gene_names(s);
    for (int64_t g = 0; g < s->pre->n_genes; g++) fprintf(f, "%s\t%s\n", ids[g], names[g]);
    st = nbs_io_atomic_close(f, tmp, path, err);
    return st ? st : nbs_manifest_add_output(s->manifest, NBS_OUT_GENES, err);
}

/* What embedding.h5ad gets besides the embedding: the covariates as obs columns (unless they came
 * from the obs being copied), the discrete latent's categories, the trajectory's results where scanpy
 * keeps them. The names, columns and PAGA's sparse form live here (free with h5ad_extras_free). */
typedef struct {
    nbs_obs_column cols[NBS_MAX_CATEGORICAL + NBS_MAX_COVARIATES + 5];
    char names_k[NBS_MAX_DISCRETE][8], *category_names[NBS_MAX_DISCRETE];
    char names_c[256][8], *cluster_names[256];
    nbs_h5ad_trajectory ht;
    int64_t *paga_ptr, *paga_idx; /* PAGA as a sparse matrix: the nonzero entries of the dense one */
    double *paga_val;
} h5ad_extras;

static void h5ad_extras_free(h5ad_extras *x) {
    free(x->paga_ptr);
    free(x->paga_idx);
    free(x->paga_val);
}

/* meta's obs columns and trajectory from the run (n kept cells); obs_copied: the input's obs is copied. */
static int h5ad_extras_fill(run_state *s, int obs_copied, int64_t n, nbs_embedding_meta *meta, h5ad_extras *x,
                            nbs_error *err) {
    const nbs_covariates *cov = &s->ck.covariates;
    const int gauss = !s->cosine;
    nbs_obs_column *cols = x->cols;
    int st = NBS_OK;
    memset(x, 0, sizeof *x);
    if (!obs_copied) {
        for (int k = 0; k < cov->n_categorical; k++)
            cols[meta->n_obs_columns++] = (nbs_obs_column){cov->categorical[k].name, cov->categorical[k].n_categories,
                                                           cov->categorical[k].categories, s->cov.codes + k, NULL,
                                                           cov->n_categorical};
        for (int k = 0; k < cov->n_continuous; k++)
            cols[meta->n_obs_columns++] = (nbs_obs_column){cov->continuous[k].name, 0, NULL, NULL, s->cov.raw + k,
                                                           cov->n_continuous};
        meta->obs_columns = cols;
    }
    /* the discrete latent's categories ("0" .. "K-1") and their probabilities */
    if (s->cluster) {
        const int K = nbs_model_discrete(s->ck.model);
        for (int k = 0; k < K; k++) {
            snprintf(x->names_k[k], sizeof x->names_k[k], "%d", k);
            x->category_names[k] = x->names_k[k];
        }
        cols[meta->n_obs_columns++] = (nbs_obs_column){"nbsphere_cluster", K, x->category_names, s->cluster, NULL, 1};
        cols[meta->n_obs_columns++] = (nbs_obs_column){"nbsphere_cluster_probability", 0, NULL, NULL, s->cluster_p, 1};
        meta->obs_columns = cols;
    }
    /* the trajectory stage's results where scanpy keeps them */
    const nbs_trajectory *t = &s->traj;
    if (s->have_traj) {
        for (int k = 0; k < t->n_clusters && k < 256; k++) {
            snprintf(x->names_c[k], sizeof x->names_c[k], "%d", k);
            x->cluster_names[k] = x->names_c[k];
        }
        if (t->n_clusters > 256) st = nbs_error_set(err, NBS_ERR_INPUT, "trajectory: %d Leiden clusters are more "
                                                    "than 256; lower trajectory.resolution", t->n_clusters);
        cols[meta->n_obs_columns++] = (nbs_obs_column){"leiden", t->n_clusters, x->cluster_names, t->cluster, NULL, 1};
        cols[meta->n_obs_columns++] = (nbs_obs_column){"dpt_pseudotime", 0, NULL, NULL, t->pseudotime, 1};
        if (t->wrap.computed)
            cols[meta->n_obs_columns++] = (nbs_obs_column){"shortcut_score", 0, NULL, NULL, t->wrap.score, 1};
        meta->obs_columns = cols;
        x->ht = (nbs_h5ad_trajectory){{n, n, t->knn.indptr, t->knn.indices, t->knn.weights},
                                      {n, n, t->kernel.indptr, t->kernel.indices, t->kernel.weights},
                                      t->k, "gauss", gauss ? "euclidean" : "cosine", t->n_dcs, t->diffmap,
                                      t->evals, t->root, {0, 0, NULL, NULL, NULL}, "leiden"};
        meta->trajectory = &x->ht;
    }
    int64_t paga_nnz = 0;
    if (!st && s->have_traj) {
        const int nc = t->n_clusters;
        x->paga_ptr = nbs_calloc((size_t)nc + 1, sizeof *x->paga_ptr, err);
        x->paga_idx = nbs_malloc(sizeof *x->paga_idx * (size_t)nc * (size_t)nc + 1, err);
        x->paga_val = nbs_malloc(sizeof *x->paga_val * (size_t)nc * (size_t)nc + 1, err);
        if (!x->paga_ptr || !x->paga_idx || !x->paga_val) st = NBS_ERR_NOMEM;
        for (int a = 0; !st && a < nc; a++) {
            for (int b = 0; b < nc; b++)
                if (t->paga[a * nc + b] > 0) x->paga_idx[paga_nnz] = b, x->paga_val[paga_nnz++] = t->paga[a * nc + b];
            x->paga_ptr[a + 1] = paga_nnz;
        }
        x->ht.paga = (nbs_h5ad_csr){nc, nc, x->paga_ptr, x->paga_idx, x->paga_val};
    }
    return st;
}

/* embedding.h5ad: the embedding (and the trajectory's entries) with the input's cells. An .h5ad input
 * is copied (only the kept cells), so all of its obs, var and layers stay; other inputs give a new
 * file with the counts the model saw. */
static int write_h5ad(run_state *s, const float *spread, nbs_error *err) {
    const nbs_config *c = &s->p->config;
    const nbs_matrix *X = s->pre->matrix;
    const int d = s->d, gauss = !s->cosine;
    char path[NBS_PATH_MAX];
    const char *copy = s->format == NBS_FMT_H5AD ? s->p->config.input.path : NULL;
    const nbs_covariates *cov = &s->ck.covariates;
    nbs_embedding_meta meta = {c->output.embedding_key,
                               s->ck.model ? nbs_latent_word(nbs_model_latent(s->ck.model)->kind) : "given",
                               gauss ? "euclidean" : "cosine", NBS_VERSION, gauss ? NULL : spread,
                               cov->has_batch ? cov->categorical[0].name : NULL, NULL, 0, NULL};
    h5ad_extras x;
    int st = h5ad_extras_fill(s, copy && !c->input.labels_path[0], X->n_cells, &meta, &x, err);
    if (!st && out_path(s, NBS_OUT_H5AD, path)) st = nbs_error_set(err, NBS_ERR_USAGE, "output.dir is too long");
    if (!st) st = nbs_io_write_h5ad(path, copy, X, d, s->z, &meta, err);
    if (!st) st = nbs_manifest_add_output(s->manifest, NBS_OUT_H5AD, err);
    h5ad_extras_free(&x);
    return st;
}

/* embedding.tsv's columns after the embedding for n cells: the n_extra of spread (variances on request,
 * or kappa) and the discrete latent's category and probability, into extra (n, n_extra + 2). */
static void cluster_columns(int64_t n, int n_extra, const float *spread, const int32_t *cluster, const double *cluster_p,
                            float *extra) {
    const int e = n_extra + 2;
    for (int64_t i = 0; i < n; i++) {
        for (int j = 0; j < n_extra; j++) extra[i * e + j] = spread[i * n_extra + j];
        extra[i * e + n_extra] = (float)cluster[i];
        extra[i * e + n_extra + 1] = (float)cluster_p[i];
    }
}

/* The reports on the embedding z of n cells: every kept cell (all), with the labels, integration and
 * trajectory; or out of core, when nothing needed every cell's embedding, the diagnostics' subsample. */
static int write_reports(run_state *s, const float *z, int64_t n, const float *spread, int all, nbs_error *err) {
    const nbs_config *c = &s->p->config;
    const nbs_latent *L = nbs_model_latent(s->ck.model);
    const int d = L->dim, gauss = !nbs_latent_on_sphere(L);
    char path[NBS_PATH_MAX];
    int st = NBS_OK;
    nbs_report_input ri = {&s->report, &s->track, &s->ck.log, z, n, d, gauss ? NULL : spread,
                           all ? s->labels : NULL, all && c->input.label_column[0] ? c->input.label_column : NULL,
                           input_title(&c->input), s->knn_embedding, s->knn_pca, KNN_K,
                           s->have_integration ? &s->integration : NULL,
                           s->ck.covariates.has_batch ? s->ck.covariates.categorical[0].name : NULL,
                           all ? s->batch_labels : NULL, all && s->have_traj ? &s->traj : NULL,
                           isfinite(s->knn_embedding) ? &s->knn_info : NULL};
    const char *reports[5] = {NBS_OUT_REPORT_JSON, NBS_OUT_REPORT_TSV, NBS_OUT_REPORT_HTML, NBS_OUT_INTEGRATION_TSV,
                              NBS_OUT_CATEGORIES_TSV};
    for (int i = 0; i < 5 && !st; i++) {
        if ((i == 3 && !s->have_integration) || (i == 4 && !s->report.n_categories)) continue;
        if (out_path(s, reports[i], path)) st = nbs_error_set(err, NBS_ERR_USAGE, "output.dir is too long");
        else if (i == 0) st = nbs_report_write_json(path, &ri, err);
        else if (i == 1) st = nbs_report_write_tsv(path, &ri, err);
        else if (i == 2) st = nbs_report_write_html(path, &ri, err);
        else if (i == 3) st = nbs_report_write_integration_tsv(path, &ri, err);
        else st = nbs_report_write_categories_tsv(path, &ri, err);
        if (!st) st = nbs_manifest_add_output(s->manifest, reports[i], err);
    }
    return st;
}

static int stage_write(run_state *s, nbs_error *err) {
    const nbs_config *c = &s->p->config;
    const nbs_matrix *X = s->pre->matrix;
    const nbs_latent *L = nbs_model_latent(s->ck.model);
    const int d = L->dim, gauss = !nbs_latent_on_sphere(L);
    stage_begin(s, "write");
    const int64_t n = X->n_cells;
    int st = embed_cells(s, err);
    const float *z = s->z, *spread = s->spread;
    char path[NBS_PATH_MAX];
    /* extra TSV columns: variances (Gaussian, on request) or kappa (spheres, always) */
    char names_buf[NBS_MAX_KL_TERMS][16];
    const char *names[NBS_MAX_KL_TERMS + 2]; /* + the discrete latent's two */
    int n_extra = gauss ? (c->output.write_variances ? d : 0) : 1;
    for (int j = 0; j < n_extra; j++) {
        if (gauss) snprintf(names_buf[j], sizeof names_buf[j], "var%d", j + 1);
        else snprintf(names_buf[j], sizeof names_buf[j], "kappa");
        names[j] = names_buf[j];
    }
    /* the discrete latent: two more columns, the category and its probability */
    float *extra = NULL; /* (n, n_extra + 2) */
    if (!st && s->cluster) {
        const int e = n_extra + 2;
        if (!(extra = nbs_malloc(sizeof(float) * (size_t)(n * e + 1), err))) st = NBS_ERR_NOMEM;
        else cluster_columns(n, n_extra, spread, s->cluster, s->cluster_p, extra);
        names[n_extra] = "nbsphere_cluster";
        names[n_extra + 1] = "nbsphere_cluster_probability";
        n_extra = e;
    }
    if (!st && out_path(s, NBS_OUT_EMBEDDING, path)) st = nbs_error_set(err, NBS_ERR_USAGE, "output.dir is too long");
    if (!st) st = nbs_io_write_embedding_tsv(path, X->barcodes, n, d, z, n_extra, names, extra ? extra : spread, err);
    free(extra);
    if (!st) st = nbs_manifest_add_output(s->manifest, NBS_OUT_EMBEDDING, err);
    if (!st && s->trained) st = write_genes(s, err);
    if (!st && c->output.write_h5ad) st = write_h5ad(s, spread, err);
    if (!st && c->output.write_report && s->have_report) st = write_reports(s, z, n, spread, 1, err);
    char msg[256];
    snprintf(msg, sizeof msg, "%lld cells embedded in %d dimensions", (long long)n, d);
    return st ? st : stage_end(s, "write", msg, err);
}

/* ---- out of core (input.backed, backed.h) ---- */

#define BACKED_WRITE_CELLS 4096 /* cells embedded and written at a time out of core */

/* ---- out of core under mpirun: each process reads only its rows ----
 * Preprocessing scans each process's contiguous range of the file's rows and sums the statistics,
 * the per-batch ones of batch-aware genes too (nbs_preprocess_stream_shared); training reads each
 * process's share of every global batch, with its covariates (nbs_backed_loader_share); the
 * embedding, and the discrete latent's categories, are computed by each process on its contiguous
 * range of the kept cells and gathered block by block at process 0 (embed_block): once for the
 * label score, the integration metrics and the trajectory (embed_all_backed), and for the writing,
 * which process 0 does. */

static const nbs_train_reduce *split_run(const run_state *s) {
    const nbs_train_reduce *r = s->o->reduce;
    return r && r->size > 1 && r->sum && r->gather ? r : NULL;
}

/* This process's part [lo, hi) of n items: [rank n / size, (rank + 1) n / size). */
static void my_range(const nbs_train_reduce *r, int64_t n, int64_t *lo, int64_t *hi) {
    *lo = n * r->rank / r->size;
    *hi = n * (r->rank + 1) / r->size;
}

/* Every process goes out of core, or none: process 0's choice (auto compares with each node's
 * memory, which may differ). */
static int follow_process_zero(const run_state *s, int *backed, nbs_error *err) {
    const nbs_train_reduce *r = split_run(s);
    if (!r) return NBS_OK;
    double v = r->rank == 0 ? *backed : 0;
    int st = r->sum(r->user, &v, 1, err);
    *backed = v != 0;
    return st;
}

/* The rows each process read in training, logged by process 0 and kept in the manifest. */
static int log_rows_read(run_state *s, int64_t rows, int epochs, nbs_error *err) {
    const nbs_train_reduce *r = split_run(s);
    double *k = nbs_calloc((size_t)r->size, sizeof *k, err); /* (processes) */
    int64_t *kr = k ? nbs_malloc(sizeof *kr * (size_t)r->size, err) : NULL; /* (processes) */
    int st = kr ? NBS_OK : NBS_ERR_NOMEM;
    if (!st) k[r->rank] = (double)rows;
    if (!st) st = r->sum(r->user, k, r->size, err);
    for (int q = 0; !st && q < r->size; q++) {
        kr[q] = (int64_t)k[q];
        nbs_info("out of core: process %d of %d read %lld rows of the file in %d epochs of %lld kept cells (%.1f per "
                 "epoch)", q, r->size, (long long)kr[q], epochs, (long long)s->pre->n_cells,
                 epochs > 0 ? k[q] / epochs : 0.0);
    }
    if (!st) st = nbs_manifest_set_rows_read(s->manifest, r->size, kr, epochs, err);
    free(k), free(kr);
    return st;
}

/* Whether embedding.h5ad out of core is a copy of the input (an .h5ad that kept every cell), so
 * that its rows need no counts. */
static int h5ad_copies_input(const run_state *s) {
    return s->format == NBS_FMT_H5AD && s->pre->n_cells == s->pre->n_cells_in;
}

static int embed_backed(run_state *s, int64_t c0, int64_t n, int64_t *rows, float *z, float *spread, int32_t *cluster,
                        double *cluster_p, nbs_matrix **X, nbs_error *err);

/* The embedding of kept cells [c0, c0 + n) at process 0 (z, spread, with the discrete latent the
 * categories into s->cluster at c0 and, when with_X, the counts *X), each process embedding the
 * cells of the block in its range and sending them; on the others z, spread and X are not written.
 * Once every cell is embedded (s->embedded) only the counts are sent and process 0 copies the rest.
 * One process: embed_backed. */
static int embed_block(run_state *s, int64_t c0, int64_t n, int with_X, int64_t *rows, float *z, float *spread,
                       nbs_matrix **X, nbs_error *err) {
    const nbs_train_reduce *r = split_run(s);
    if (!r) return embed_backed(s, c0, n, rows, z, spread, s->cluster ? s->cluster + c0 : NULL,
                                s->cluster ? s->cluster_p + c0 : NULL, X, err);
    const nbs_latent *L = nbs_model_latent(s->ck.model);
    const int d = L->dim, sd = nbs_latent_spread_dim(L), K = nbs_model_discrete(s->ck.model), P = r->size;
    const int send_z = !s->embedded;
    if (!send_z && r->rank == 0) {
        memcpy(z, s->z + c0 * d, sizeof *z * (size_t)(n * d));
        memcpy(spread, s->spread + c0 * sd, sizeof *spread * (size_t)(n * sd));
    }
    if (!send_z && !with_X) return NBS_OK;
    /* (5, P) bytes from each process: z, spread, categories, their probabilities, counts */
    int64_t *bz = nbs_malloc(sizeof *bz * (size_t)(5 * P), err);
    if (!bz) return NBS_ERR_NOMEM;
    int64_t *bs = bz + P, *bk = bz + 2 * P, *bp = bz + 3 * P, *bx = bz + 4 * P, a = 0, b = 0;
    for (int q = 0; q < P; q++) {
        const int64_t lo = s->pre->n_cells * q / P, hi = s->pre->n_cells * (q + 1) / P;
        const int64_t qa = lo > c0 ? lo : c0, qb = hi < c0 + n ? hi : c0 + n, m = qb > qa ? qb - qa : 0;
        int64_t nnz = 0;
        for (int64_t i = qa; i < qa + m; i++) nnz += s->row_nnz[i];
        bz[q] = m * d * (int64_t)sizeof(float);
        bs[q] = m * sd * (int64_t)sizeof(float);
        bk[q] = K ? m * (int64_t)sizeof(int32_t) : 0;
        bp[q] = K ? m * (int64_t)sizeof(double) : 0;
        bx[q] = nnz * (int64_t)sizeof(int32_t); /* indices; the values are as many floats */
        if (q == r->rank) a = qa, b = qa + m;
    }
    nbs_matrix *mine = NULL; /* this process's cells of the block */
    const size_t m = (size_t)(b - a);
    float *zl = nbs_malloc(sizeof *zl * (m * (size_t)d + 1), err), *sl = nbs_malloc(sizeof *sl * (m * (size_t)sd + 1), err);
    int32_t *kl = nbs_malloc(sizeof *kl * (m + 1), err); /* (m) this process's categories */
    double *pl = nbs_malloc(sizeof *pl * (m + 1), err);  /* (m) */
    int st = zl && sl && kl && pl ? NBS_OK : NBS_ERR_NOMEM;
    if (!st && m && send_z) st = embed_backed(s, a, b - a, rows, zl, sl, K ? kl : NULL, K ? pl : NULL, &mine, err);
    else if (!st && m) { /* the counts alone */
        double *lib = NULL;
        for (int64_t i = a; i < b; i++) rows[i - a] = i;
        st = nbs_backed_loader_read(s->loader, rows, b - a, &mine, &lib, err);
        free(lib);
    }
    nbs_matrix *all = NULL;
    if (!st && with_X && r->rank == 0) {
        int64_t nnz = 0;
        for (int64_t i = c0; i < c0 + n; i++) nnz += s->row_nnz[i];
        if ((all = nbs_matrix_new(n, s->pre->n_genes, nnz, err))) {
            all->values_are_integer = 1;
            all->indptr[0] = 0;
            for (int64_t i = 0; i < n; i++) all->indptr[i + 1] = all->indptr[i] + s->row_nnz[c0 + i];
        } else {
            st = NBS_ERR_NOMEM;
        }
    }
    /* a process that failed leaves the gathers: main ends the job (nbs_parallel_abort) */
    const int32_t none_i = 0;
    const float none_f = 0;
    const int root = r->rank == 0;
    if (!st && send_z) st = r->gather(r->user, zl, bz, z, err);
    if (!st && send_z) st = r->gather(r->user, sl, bs, spread, err);
    if (!st && send_z && K) st = r->gather(r->user, kl, bk, root ? s->cluster + c0 : NULL, err);
    if (!st && send_z && K) st = r->gather(r->user, pl, bp, root ? s->cluster_p + c0 : NULL, err);
    if (!st && with_X) st = r->gather(r->user, mine ? (const void *)mine->indices : &none_i, bx, all ? all->indices : NULL, err);
    if (!st && with_X) st = r->gather(r->user, mine ? (const void *)mine->data : &none_f, bx, all ? all->data : NULL, err);
    nbs_matrix_free(mine);
    free(zl), free(sl), free(kl), free(pl), free(bz);
    if (st) {
        nbs_matrix_free(all);
        return st;
    }
    if (X) *X = all;
    return NBS_OK;
}

/* The report's figures out of core without every cell's embedding: the diagnosed cells' locations
 * zd (n_diag, d) and spreads kd (n_diag, spread dim) at process 0. Each process embeds the part it
 * read (diag_X) and, under mpirun, sends it to process 0 in rank order (peers pass NULL). */
static int embed_diag_cells(run_state *s, float *zd, float *kd, nbs_error *err) {
    const nbs_latent *L = nbs_model_latent(s->ck.model);
    const int d = L->dim, sd = nbs_latent_spread_dim(L);
    nbs_cells dc = nbs_cells_all(s->diag_X, s->diag_lib);
    nbs_covariates_attach(&s->diag_cov, &dc);
    const nbs_train_reduce *r = split_run(s);
    if (!r) return nbs_model_embed(s->ck.model, &dc, zd, kd, err);
    const int64_t m = s->diag_X->n_cells, P = r->size;
    float *zl = nbs_malloc(sizeof *zl * (size_t)(m * d + 1), err), *kl = nbs_malloc(sizeof *kl * (size_t)(m * sd + 1), err);
    int64_t *bz = nbs_malloc(sizeof *bz * (size_t)(2 * P), err); /* (2, P) bytes of locations, spreads */
    int st = zl && kl && bz ? nbs_model_embed(s->ck.model, &dc, zl, kl, err) : NBS_ERR_NOMEM;
    for (int64_t q = 0; !st && q < P; q++) {
        const int64_t cells = s->n_diag * (q + 1) / P - s->n_diag * q / P; /* diag_part of process q */
        bz[q] = cells * d * (int64_t)sizeof(float);
        bz[P + q] = cells * sd * (int64_t)sizeof(float);
    }
    /* a process that failed leaves the gathers: main ends the job (nbs_parallel_abort) */
    if (!st) st = r->gather(r->user, zl, bz, zd, err);
    if (!st) st = r->gather(r->user, kl, bz + P, kd, err);
    free(zl), free(kl), free(bz);
    return st;
}

/* Whether process 0 embeds every kept cell before writing (embed_all_backed, for the label score,
 * the integration metrics and the trajectory stage, as stage_diagnose and stage_trajectory ask):
 * under mpirun the peers take part, so each process answers the same from the configuration and
 * the model's covariates. */
static int backed_embeds_all(const run_state *s) {
    const nbs_config *c = &s->p->config;
    return c->input.label_column[0] || s->ck.covariates.has_batch || c->trajectory.enabled;
}

/* A peer's part of the diagnostics (its cells of every kept cell's embedding, when process 0 embeds
 * them all) and of stage_write_backed (its cells of every write block), sent to process 0. */
static int peer_write_backed(run_state *s, nbs_error *err) {
    const nbs_config *c = &s->p->config;
    const int64_t n = s->pre->n_cells, B = BACKED_WRITE_CELLS;
    const int with_X = c->output.write_h5ad && !h5ad_copies_input(s);
    int st = backed_embeds_all(s) ? embed_all_backed(s, err) : NBS_OK;
    int64_t *rows = st ? NULL : nbs_malloc(sizeof *rows * (size_t)B, err); /* (B) */
    if (!st && !rows) st = NBS_ERR_NOMEM;
    for (int64_t c0 = 0; !st && c0 < n; c0 += B) st = embed_block(s, c0, c0 + B < n ? B : n - c0, with_X, rows, NULL, NULL, NULL, err);
    free(rows);
    /* the report's figures from the diagnosed cells, as process 0 draws them (stage_write_backed) */
    if (!st && c->output.write_report && !backed_embeds_all(s)) st = embed_diag_cells(s, NULL, NULL, err);
    return st;
}

/* Whether this run reads its input out of core; the choice is logged either way. */
static int decide_backed(run_state *s, nbs_error *err) {
    const nbs_config *c = &s->p->config;
    const nbs_input_config *in = &c->input;
    nbs_format f = in->format;
    nbs_error scratch = {0};
    if (!in->samples.n && f == NBS_FMT_AUTO && nbs_io_detect_format(in->path, &f, &scratch)) f = NBS_FMT_AUTO;
    char why[256];
    int backed = 0;
    int st = nbs_backed_decide(in, f, &backed, why, err);
    if (!st) st = follow_process_zero(s, &backed, err);
    if (st) return st;
    if (in->backed != 0 && why[0]) nbs_info("%s", why);
    if (!backed) return NBS_OK;
    s->format = in->samples.n ? NBS_FMT_AUTO : f; /* several files: each sample has its own format */
    s->out_of_core = 1;
    return NBS_OK;
}

static int stage_load_backed(run_state *s, nbs_error *err) {
    const nbs_input_config *in = &s->p->config.input;
    stage_begin(s, "load");
    const int peer = split_run(s) && s->o->reduce->rank > 0; /* no manifest: no checksum of the whole file */
    int st = NBS_OK;
    for (int i = 0; !peer && i < (in->samples.n ? in->samples.n : 1) && !st; i++)
        st = nbs_manifest_add_input(s->manifest, in->samples.n ? in->samples.items[i].path : in->path, err);
    if (!st) st = nbs_backed_open(in, s->format, &s->backed, err);
    if (st) return st;
    char msg[256];
    snprintf(msg, sizeof msg, "%lld cells x %lld genes, %lld nonzeros, read from the file block by block",
             (long long)nbs_backed_n_cells(s->backed), (long long)nbs_backed_n_genes(s->backed),
             (long long)nbs_backed_nnz(s->backed));
    return stage_end(s, "load", msg, err);
}

/* The batch of every cell of the file, for batch-aware gene selection, as stage_preprocess reads it:
 * the names of every cell are held while the column is read. */
static int backed_batch_codes(run_state *s, const char *column, int32_t **codes, nbs_categorical_covariate *batch,
                              nbs_error *err) {
    const nbs_preprocess_config *pc = &s->p->config.preprocess;
    if (!*column || !pc->hvg_batch_aware || pc->n_top_genes <= 0 || pc->n_top_genes >= nbs_backed_n_genes(s->backed))
        return NBS_OK;
    nbs_matrix *names = NULL;
    int st = nbs_backed_cell_names(s->backed, NULL, nbs_backed_n_cells(s->backed), &names, err);
    if (!st) st = nbs_covariates_batch_codes(&s->p->config.input, s->format, names, codes, batch, err);
    nbs_matrix_free(names);
    return st;
}

/* Out of core the PCA of the counts (the label score's baseline, the wrap-around check) holds a gene
 * x gene covariance (nbs_eval_pca_stream): refused before training, naming the genes, when it
 * would not fit in input.memory_limit, rather than failing after it. */
static int check_pca_memory(const run_state *s, nbs_error *err) {
    const nbs_config *c = &s->p->config;
    const int k = c->trajectory.enabled ? REF_DIMS : PCA_DIMS;
    if (!c->input.label_column[0] && !c->trajectory.enabled) return NBS_OK;
    const double G = (double)s->pre->n_genes, need = 8.0 * G * (G + 258 + k);
    const char *whose;
    const double limit = nbs_backed_memory_limit(&c->input, &whose);
    if (need <= limit) return NBS_OK;
    return nbs_error_set(err, NBS_ERR_USAGE, "out of core, the PCA of the counts that %s needs takes %.1f MB for "
                         "the covariance of the %lld chosen genes, more than %s (%.0f MB); choose fewer genes "
                         "(preprocess.n_top_genes, e.g. 2000) or raise input.memory_limit",
                         c->input.label_column[0] ? "the label score (input.label_column)" : "the trajectory's "
                         "wrap-around check", need / 1048576.0, (long long)s->pre->n_genes, whose, limit / 1048576.0);
}

static int stage_preprocess_backed(run_state *s, nbs_error *err) {
    const nbs_config *c = &s->p->config;
    stage_begin(s, "preprocess");
    const nbs_train_reduce *r = split_run(s);
    int64_t lo = 0, hi = nbs_backed_n_cells(s->backed);
    if (r) my_range(r, hi, &lo, &hi);
    const nbs_row_source rows = r ? nbs_backed_rows_range(s->backed, lo, hi) : nbs_backed_rows(s->backed);
    const nbs_sum_hook sum = {r ? r->sum : NULL, r ? r->user : NULL};
    const char *column = nbs_covariates_batch_column(&c->input);
    int32_t *codes = NULL; /* (input cells): every process has every cell's batch */
    nbs_categorical_covariate batch = {0};
    int st = backed_batch_codes(s, column, &codes, &batch, err);
    const nbs_preprocess_batches b = {codes, batch.n_categories, batch.categories, column};
    if (!st)
        st = nbs_preprocess_stream_shared(&rows, &c->preprocess, codes ? &b : NULL, r ? &sum : NULL, &s->pre,
                                          &s->row_nnz, err);
    free(codes);
    nbs_categorical_covariate_free(&batch);
    if (st) return st;
    log_hvg(s, column);
    if (c->input.samples.n) log_kept_per_sample(s);
    if ((st = check_pca_memory(s, err))) return st;
    if (r)
        nbs_info("out of core over %d processes: each scans its rows of the file in preprocessing (process 0: rows "
                 "%lld to %lld) and reads only its share of each minibatch in training", r->size, (long long)lo + 1,
                 (long long)hi);
    const int64_t G = s->pre->n_genes;
    s->backed_names = nbs_malloc(sizeof *s->backed_names * (size_t)G, err);
    s->backed_ids = nbs_malloc(sizeof *s->backed_ids * (size_t)G, err);
    if (!s->backed_names || !s->backed_ids) return NBS_ERR_NOMEM;
    for (int64_t g = 0; g < G; g++) {
        s->backed_names[g] = nbs_backed_gene_names(s->backed)[s->pre->genes[g]];
        s->backed_ids[g] = nbs_backed_gene_ids(s->backed)[s->pre->genes[g]];
    }
    const nbs_input_config *in = &c->input;
    s->loader = nbs_backed_loader_new(s->backed, s->pre, s->row_nnz, in->backed_block, in->backed_shuffle_blocks,
                                      c->train.batch_size, err);
    if (!s->loader) return err->code;
    if (r && (st = nbs_backed_loader_share(s->loader, r->rank, r->size, err))) return st;
    nbs_info("out of core: minibatches from buffers of %d blocks of %d consecutive cells (input.backed_shuffle_blocks, "
             "input.backed_block), shuffled within each buffer", in->backed_shuffle_blocks, in->backed_block);
    char msg[512];
    nbs_preprocess_summary(s->pre, &c->preprocess, msg, sizeof msg);
    if (s->pre->cells_zero_library)
        nbs_warn("%lld cells have no counts in the selected genes; they are kept and embedded from "
                 "an empty profile", (long long)s->pre->cells_zero_library);
    return stage_end(s, "preprocess", msg, err);
}

/* The embedding of kept cells [c0, c0 + n) read from the file: location (n, d), spread (n, spread
 * dim), with the discrete latent (cluster not NULL) their categories and probabilities (n each),
 * and their counts *X (n, genes; the caller frees it). When every cell's embedding is in memory
 * already (embed_all_backed), it is copied from there. */
static int embed_backed(run_state *s, int64_t c0, int64_t n, int64_t *rows, float *z, float *spread, int32_t *cluster,
                        double *cluster_p, nbs_matrix **X, nbs_error *err) {
    const nbs_latent *L = nbs_model_latent(s->ck.model);
    double *lib;
    for (int64_t i = 0; i < n; i++) rows[i] = c0 + i;
    int st = nbs_backed_loader_read(s->loader, rows, n, X, &lib, err);
    if (st) return st;
    if (s->embedded) {
        const int d = L->dim, sd = nbs_latent_spread_dim(L);
        memcpy(z, s->z + c0 * d, sizeof *z * (size_t)(n * d));
        memcpy(spread, s->spread + c0 * sd, sizeof *spread * (size_t)(n * sd));
        free(lib);
        return NBS_OK;
    }
    nbs_cells cells = nbs_cells_all(*X, lib);
    const nbs_covariate_values *v = &s->cov; /* rows 0 .. n - 1 of *X are kept cells c0 .. c0 + n - 1 */
    if (v->codes) cells.covariate_codes = v->codes + c0 * v->n_categorical, cells.n_categorical = v->n_categorical;
    if (v->standardised) cells.continuous = v->standardised + c0 * v->n_continuous, cells.n_continuous = v->n_continuous;
    st = nbs_model_embed(s->ck.model, &cells, z, spread, err);
    if (!st && cluster) st = cluster_cells(s, &cells, cluster, cluster_p, err);
    free(lib);
    return st;
}

/* With the discrete latent, room for every kept cell's category and its probability (12 bytes a
 * cell; at process 0 only under mpirun: the peers send theirs a block at a time, embed_block). */
static int backed_clusters(run_state *s, nbs_error *err) {
    if (s->cluster || !nbs_model_discrete(s->ck.model)) return NBS_OK;
    s->cluster = nbs_malloc(sizeof *s->cluster * (size_t)(s->pre->n_cells + 1), err);
    s->cluster_p = s->cluster ? nbs_malloc(sizeof *s->cluster_p * (size_t)(s->pre->n_cells + 1), err) : NULL;
    return s->cluster_p ? NBS_OK : NBS_ERR_NOMEM;
}

/* Out of core, every kept cell's embedding in memory, for what needs all of it at once (the labels'
 * k-NN score, the integration metrics, the trajectory stage): read and embedded a block at a time,
 * under mpirun each process its range of every block, gathered at process 0 (embed_block), which
 * alone holds it; the write stage then copies it from there. */
static int embed_all_backed(run_state *s, nbs_error *err) {
    const nbs_latent *L = nbs_model_latent(s->ck.model);
    const int64_t n = s->pre->n_cells, B = BACKED_WRITE_CELLS;
    const int d = L->dim, sd = nbs_latent_spread_dim(L);
    const int root = !split_run(s) || s->o->reduce->rank == 0;
    float *z = root ? nbs_malloc(sizeof *z * (size_t)(n * d + 1), err) : NULL;                  /* (n, d) */
    float *spread = z ? nbs_malloc(sizeof *spread * (size_t)(n * sd + 1), err) : NULL;          /* (n, sd) */
    int64_t *rows = spread || !root ? nbs_malloc(sizeof *rows * (size_t)B, err) : NULL;         /* (B) */
    int st = rows ? (root ? backed_clusters(s, err) : NBS_OK) : NBS_ERR_NOMEM;
    for (int64_t c0 = 0; !st && c0 < n; c0 += B) {
        nbs_matrix *X = NULL;
        st = embed_block(s, c0, c0 + B < n ? B : n - c0, 0, rows, z ? z + c0 * d : NULL, spread ? spread + c0 * sd : NULL,
                         &X, err);
        nbs_matrix_free(X);
    }
    free(rows);
    if (st) {
        free(z);
        free(spread);
        return st;
    }
    s->embedded = 1;
    s->z = z;
    s->spread = spread;
    s->d = d;
    s->cosine = nbs_latent_on_sphere(L);
    if (root)
        nbs_info("out of core: the embedding of the %lld cells is kept in memory (%.1f MB) for the label score, the "
                 "integration metrics and the trajectory stage", (long long)n, 4.0 * (double)n * (d + sd) / 1e6);
    return NBS_OK;
}

/* The kept cells [c0, c1) in the chosen genes, read from the file BACKED_WRITE_CELLS at a time: the
 * rows the out-of-core PCA streams (each read twice). */
typedef struct {
    run_state *s;
    int64_t c0, c1;
} kept_rows;

static int scan_kept(void *user, nbs_rows_visit visit, void *ctx, nbs_error *err) {
    const kept_rows *k = user;
    int64_t *rows = nbs_malloc(sizeof *rows * BACKED_WRITE_CELLS, err); /* (BACKED_WRITE_CELLS) */
    int st = rows ? NBS_OK : NBS_ERR_NOMEM;
    for (int64_t c0 = k->c0; !st && c0 < k->c1; c0 += BACKED_WRITE_CELLS) {
        const int64_t n = k->c1 - c0 < BACKED_WRITE_CELLS ? k->c1 - c0 : BACKED_WRITE_CELLS;
        for (int64_t i = 0; i < n; i++) rows[i] = c0 + i;
        nbs_matrix *X = NULL;
        double *lib = NULL; /* unused: the PCA's library is the cell's counts in these genes, as in memory */
        st = nbs_backed_loader_read(k->s->loader, rows, n, &X, &lib, err);
        if (!st) st = visit(ctx, X, c0, err);
        nbs_matrix_free(X);
        free(lib);
    }
    free(rows);
    return st;
}

/* Out of core, PCA of log1p(CP10k) of the kept cells in the chosen genes, the in-memory PCA's
 * transform and centring (nbs_eval_pca_stream: two passes over the file, the G x G covariance in
 * memory): pcs [kept cells x k]. It runs where the label score and the trajectory do, at process 0,
 * which reads every kept cell under mpirun too. */
static int backed_pca(run_state *s, int k, float *pcs, nbs_error *err) {
    kept_rows rows = {s, 0, s->pre->n_cells};
    const nbs_row_source src = {&rows, s->pre->n_cells, s->pre->n_genes, scan_kept};
    const double G = (double)s->pre->n_genes;
    nbs_info("out of core: PCA of log1p CP10k (%d components) from the gene covariance, two passes over the file "
             "(%.1f MB for the covariance, %.1f MB for the scores)", k, 8.0 * G * (G + 258 + k) / 1e6,
             4.0 * (double)s->pre->n_cells * k / 1e6);
    return nbs_eval_pca_stream(&src, k, NULL, pcs, NULL, err);
}

/* embedding.h5ad out of core: a copy of an .h5ad input that kept every cell, else a new file with the
 * counts the model saw (noted for an .h5ad input: a copy needs every cell). */
static int open_h5ad_stream(run_state *s, nbs_h5ad_stream **out, int *copied, nbs_error *err) {
    const nbs_config *c = &s->p->config;
    const nbs_latent *L = nbs_model_latent(s->ck.model);
    const int gauss = !nbs_latent_on_sphere(L);
    const int copy = *copied = h5ad_copies_input(s);
    const nbs_covariates *cov = &s->ck.covariates;
    if (s->format == NBS_FMT_H5AD && !copy)
        nbs_info("embedding.h5ad: the filters kept %lld of the %lld cells; out of core it is a new file with their "
                 "counts in the chosen genes, not a copy of %s", (long long)s->pre->n_cells,
                 (long long)s->pre->n_cells_in, c->input.path);
    int64_t nnz = 0;
    for (int64_t i = 0; i < s->pre->n_cells; i++) nnz += s->row_nnz[i];
    const nbs_embedding_meta meta = {c->output.embedding_key, nbs_latent_word(L->kind), gauss ? "euclidean" : "cosine",
                                     NBS_VERSION, NULL, cov->has_batch ? cov->categorical[0].name : NULL, NULL, 0, NULL};
    char path[NBS_PATH_MAX];
    if (out_path(s, NBS_OUT_H5AD, path)) return nbs_error_set(err, NBS_ERR_USAGE, "output.dir is too long");
    return nbs_io_h5ad_stream_open(path, copy ? c->input.path : NULL, s->pre->n_cells, L->dim, !gauss, &meta,
                                   s->backed_names, s->backed_ids, s->pre->n_genes, nnz, out, err);
}

/* embedding.h5ad's obs columns and trajectory entries, once every row is in (h5ad_extras_fill). */
static int backed_h5ad_obs(run_state *s, nbs_h5ad_stream *h5, int copied, nbs_error *err) {
    nbs_embedding_meta meta = {0};
    h5ad_extras x;
    int st = h5ad_extras_fill(s, copied && !s->p->config.input.labels_path[0], s->pre->n_cells, &meta, &x, err);
    if (!st && (meta.n_obs_columns || meta.trajectory)) st = nbs_io_h5ad_stream_obs(h5, &meta, err);
    h5ad_extras_free(&x);
    return st;
}

/* embedding.tsv a block of cells at a time into its temporary file, renamed when complete; the
 * report shows the diagnostics' subsample. */
static int stage_write_backed(run_state *s, nbs_error *err) {
    const nbs_config *c = &s->p->config;
    const nbs_latent *L = nbs_model_latent(s->ck.model);
    const int d = L->dim, gauss = !nbs_latent_on_sphere(L), sd = nbs_latent_spread_dim(L);
    const int n_extra = gauss ? (c->output.write_variances ? d : 0) : 1, K = nbs_model_discrete(s->ck.model);
    const int e = n_extra + (K ? 2 : 0); /* the discrete latent: its category and probability */
    const int64_t n = s->pre->n_cells, B = BACKED_WRITE_CELLS;
    stage_begin(s, "write");
    s->d = d;
    s->cosine = !gauss;
    char names_buf[NBS_MAX_KL_TERMS][16];
    const char *names[NBS_MAX_KL_TERMS + 2];
    for (int j = 0; j < n_extra; j++) {
        snprintf(names_buf[j], sizeof names_buf[j], gauss ? "var%d" : "kappa", j + 1);
        names[j] = names_buf[j];
    }
    if (K) names[n_extra] = "nbsphere_cluster", names[n_extra + 1] = "nbsphere_cluster_probability";
    int64_t *rows = nbs_malloc(sizeof *rows * (size_t)B, err);          /* (B) */
    float *z = nbs_malloc(sizeof *z * (size_t)(B * d), err);             /* (B, d) */
    float *spread = nbs_malloc(sizeof *spread * (size_t)(B * sd), err);  /* (B, sd) */
    float *extra = K ? nbs_malloc(sizeof *extra * (size_t)(B * e), err) : NULL; /* (B, e) */
    char path[NBS_PATH_MAX], tmp[NBS_PATH_MAX];
    FILE *f = NULL;
    nbs_h5ad_stream *h5 = NULL;
    int st = rows && z && spread && (extra || !K) ? backed_clusters(s, err) : NBS_ERR_NOMEM, copied = 0;
    if (!st && c->output.write_h5ad) st = open_h5ad_stream(s, &h5, &copied, err);
    if (!st && out_path(s, NBS_OUT_EMBEDDING, path)) st = nbs_error_set(err, NBS_ERR_USAGE, "output.dir is too long");
    if (!st) st = nbs_io_atomic_open(path, tmp, &f, err);
    int bad = !st && nbs_io_embedding_tsv_header(f, d, e, names);
    for (int64_t c0 = 0; !st && !bad && c0 < n; c0 += B) {
        const int64_t m = c0 + B < n ? B : n - c0;
        const int64_t r0 = s->pre->cells[c0], r1 = s->pre->cells[c0 + m - 1] + 1; /* file rows of the block */
        char **file_names = nbs_calloc((size_t)(r1 - r0), sizeof *file_names, err);
        char **bc = nbs_malloc(sizeof *bc * (size_t)m, err);
        nbs_matrix *X = NULL;
        st = file_names && bc ? embed_block(s, c0, m, h5 && !h5ad_copies_input(s), rows, z, spread, &X, err)
                              : NBS_ERR_NOMEM;
        if (!st) st = nbs_backed_barcodes(s->backed, r0, r1 - r0, file_names, err);
        for (int64_t i = 0; !st && i < m; i++) bc[i] = file_names[s->pre->cells[c0 + i] - r0];
        if (!st && K) cluster_columns(m, n_extra, spread, s->cluster + c0, s->cluster_p + c0, extra);
        if (!st) bad = nbs_io_embedding_tsv_rows(f, bc, m, d, z, e, K ? extra : spread);
        if (!st && h5) st = nbs_io_h5ad_stream_rows(h5, m, bc, z, gauss ? NULL : spread, X, err);
        nbs_matrix_free(X);
        if (file_names) nbs_io_free_labels(file_names, r1 - r0);
        free(bc);
    }
    if (f) {
        if (st) {
            fclose(f);
            st = nbs_io_commit_or_discard(tmp, path, st, err);
        } else {
            st = nbs_io_atomic_close(f, tmp, path, err);
        }
    }
    free(rows);
    free(z);
    free(spread);
    free(extra);
    if (!st) st = nbs_manifest_add_output(s->manifest, NBS_OUT_EMBEDDING, err);
    if (h5) {
        if (!st) st = backed_h5ad_obs(s, h5, copied, err);
        st = nbs_io_h5ad_stream_close(h5, st, err);
        if (!st) st = nbs_manifest_add_output(s->manifest, NBS_OUT_H5AD, err);
    }
    if (!st && s->trained) st = write_genes(s, err);
    if (!st && c->output.write_report && s->have_report && s->z) st = write_reports(s, s->z, n, s->spread, 1, err);
    else if (!st && c->output.write_report && s->have_report) { /* the figures: the diagnostics' subsample */
        const int64_t nd = s->n_diag;
        float *zd = nbs_malloc(sizeof *zd * (size_t)(nd * d + 1), err), *kd = nbs_malloc(sizeof *kd * (size_t)(nd * sd + 1), err);
        st = zd && kd ? embed_diag_cells(s, zd, kd, err) : NBS_ERR_NOMEM;
        if (!st) st = write_reports(s, zd, nd, kd, 0, err);
        free(zd);
        free(kd);
    }
    char msg[256];
    snprintf(msg, sizeof msg, "%lld cells embedded in %d dimensions, %lld at a time", (long long)n, d, (long long)B);
    return st ? st : stage_end(s, "write", msg, err);
}

static int finish_manifest(run_state *s, int status, const nbs_error *failure, nbs_error *err) {
    char path[NBS_PATH_MAX];
    if (out_path(s, NBS_OUT_MANIFEST, path))
        return nbs_error_set(err, NBS_ERR_USAGE, "output.dir is too long");
    /* listing itself is the run's last allocation: if that fails, the run failed */
    int st = status ? NBS_OK : nbs_manifest_add_output(s->manifest, NBS_OUT_MANIFEST, err);
    if (st) nbs_manifest_set_status(s->manifest, "failed", err->msg);
    else if (status) nbs_manifest_set_status(s->manifest, "failed", failure->msg);
    else nbs_manifest_set_status(s->manifest, "ok", NULL);
    int wst = nbs_manifest_write(s->manifest, &s->p->config, path, st ? NULL : err);
    return st ? st : wst;
}

/* ---- embed and diagnose: a saved model on a data file ---- */

/* Loads the model and the data, and puts the data's genes in the model's order (absent genes
 * count zero, with a warning); the result stands in for the preprocessing stage's output. */
static int load_model_and_data(run_state *s, const char *model_path, nbs_error *err) {
    const char *data = input_title(&s->p->config.input);
    if (s->p->config.input.backed == 1)
        nbs_info("input.backed: true is for run and train; this command loads %s into memory", data);
    int st = nbs_manifest_add_input(s->manifest, model_path, err);
    if (!st) {
        stage_begin(s, "load model");
        st = nbs_checkpoint_load(model_path, &s->ck, err);
        if (!st) {
            const nbs_model_config *mc = &s->ck.config.model;
            char msg[256];
            snprintf(msg, sizeof msg, "%lld genes, %s latent of %d dimensions, trained %d epochs",
                     (long long)s->ck.n_genes, nbs_latent_word(mc->latent), mc->latent_dim,
                     s->ck.state.epochs_done);
            st = stage_end(s, "load model", msg, err);
        }
    }
    if (!st) st = stage_load(s, err);
    if (st) return st;
    int64_t missing = 0;
    nbs_matrix *aligned = nbs_matrix_align_genes(s->counts, s->ck.gene_names, s->ck.n_genes, &missing, err);
    if (!aligned) return err->code;
    if (missing == s->ck.n_genes) {
        nbs_matrix_free(aligned);
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: none of the model's %lld genes is in this data "
                             "(matched by gene name); is it the same organism and annotation?", data,
                             (long long)s->ck.n_genes);
    }
    if (missing > 0)
        nbs_warn("%lld of the model's %lld genes are not in %s; they are treated as zero counts, "
                 "which shifts the embedding the more of them are missing", (long long)missing,
                 (long long)s->ck.n_genes, data);
    s->pre = calloc(1, sizeof *s->pre);
    if (!s->pre) {
        nbs_matrix_free(aligned);
        return nbs_error_set(err, NBS_ERR_NOMEM, "out of memory");
    }
    s->pre->matrix = aligned;
    s->pre->n_cells = aligned->n_cells;
    s->pre->n_genes = aligned->n_genes;
    if ((st = nbs_preprocess_library(s->pre, err))) return st;
    if (s->o->adapt) return NBS_OK; /* stage_adapt encodes them, with the categories it adds */
    /* the cells' own covariates, from the same columns, in the model's categories */
    return nbs_covariates_encode(&s->ck.covariates, &s->p->config.input, s->format, aligned, &s->cov, err);
}

/* ---- adapt: new categories into a trained model ---- */

/* The categories grown adds to covariate k of cov, "a, b" (cells), for the log. */
static void describe_new(const nbs_covariates *cov, const nbs_covariates *grown, int32_t *const map[],
                         const nbs_covariate_values *v, char *buf, size_t n) {
    size_t used = 0;
    buf[0] = '\0';
    for (int k = 0; k < cov->n_categorical; k++)
        for (int c = 0; c < grown->categorical[k].n_categories; c++) {
            int known = 0;
            for (int i = 0; i < cov->categorical[k].n_categories && !known; i++) known = map[k][i] == c;
            int64_t cells = 0;
            for (int64_t i = 0; i < v->n_cells; i++) cells += v->codes[i * v->n_categorical + k] == c;
            if (!known && used < n)
                used += (size_t)snprintf(buf + used, n - used, "%s'%s' of '%s' (%lld cells)", used ? ", " : "",
                                         grown->categorical[k].categories[c], cov->categorical[k].name,
                                         (long long)cells);
        }
}

/* scArches' surgery (nbs_model_grow): the data's categories the model does not know get rows of
 * their own in every layer that reads the covariates (and in the gene-batch dispersion), which
 * train on the cells that hold them with every other weight frozen. */
static int stage_adapt(run_state *s, const char *model_path, nbs_error *err) {
    const nbs_covariates *cov = &s->ck.covariates;
    const nbs_matrix *X = s->pre->matrix;
    const nbs_input_config *in = &s->p->config.input;
    if (!cov->n_categorical)
        return nbs_error_set(err, NBS_ERR_USAGE, "--adapt: %s has no categorical covariate (it was trained without "
                             "input.batch_key and input.categorical_covariates%s), so there are no categories to "
                             "add; embed without --adapt", model_path,
                             cov->n_continuous ? "; its continuous covariates take any value as it is" : "");
    stage_begin(s, "adapt");
    nbs_covariates grown;
    int32_t *map[NBS_MAX_CATEGORICAL];
    int n_new;
    int st = nbs_covariates_extend(cov, in, s->format, X, &grown, map, &n_new, err);
    if (st) return st;
    if (!n_new) {
        for (int k = 0; k < NBS_MAX_CATEGORICAL; k++) free(map[k]);
        nbs_covariates_free(&grown);
        nbs_info("--adapt: every category in %s is one the model knows: nothing to add; the cells are embedded "
                 "with the model as it is, and no model.h5 is written", in->path);
        st = nbs_covariates_encode(cov, in, s->format, X, &s->cov, err);
        return st ? st : stage_end(s, "adapt", "no new categories", err);
    }
    nbs_train_config tc = s->p->config.train;
    tc.epochs = s->o->adapt_epochs;
    tc.schedule = NBS_SCHED_CONSTANT; /* the encoder is trained: no warm-up against collapse is needed */
    nbs_model *m = NULL;
    nbs_train_state ts = {0};
    nbs_train_log log = {0};
    int64_t *rows = NULL, n_rows = 0;
    char desc[1024], log_path[NBS_PATH_MAX], model_out[NBS_PATH_MAX];
    if (out_path(s, NBS_OUT_LOG, log_path) || out_path(s, NBS_OUT_MODEL, model_out))
        st = nbs_error_set(err, NBS_ERR_USAGE, "output.dir is too long");
    if (!st) st = nbs_covariates_encode(&grown, in, s->format, X, &s->cov, err);
    if (!st) {
        describe_new(cov, &grown, map, &s->cov, desc, sizeof desc);
        nbs_info("--adapt: new categories %s; training only their weights for %d epochs", desc, tc.epochs);
        /* the cells that hold a new category: only theirs reach the new rows */
        if (!(rows = nbs_malloc(sizeof *rows * (size_t)(X->n_cells ? X->n_cells : 1), err))) st = (int)err->code;
    }
    for (int64_t i = 0; !st && i < X->n_cells; i++) {
        int is_new = 0;
        for (int k = 0; k < cov->n_categorical && !is_new; k++) {
            is_new = 1;
            for (int c = 0; c < cov->categorical[k].n_categories && is_new; c++)
                is_new = map[k][c] != s->cov.codes[i * s->cov.n_categorical + k];
        }
        if (is_new) rows[n_rows++] = i;
    }
    if (!st && n_rows < 2)
        st = nbs_error_set(err, NBS_ERR_INPUT, "--adapt: %s: the new categories %s; training their weights needs at "
                           "least 2 cells of them", in->labels_path[0] ? in->labels_path : in->path, desc);
    if (!st) {
        const nbs_covariate_layout layout = nbs_covariates_layout(&grown);
        gsl_rng *r = nbs_stream_rng(tc.seed, NBS_STREAM_ADAPT, 0, err);
        m = r ? nbs_model_grow(s->ck.model, &layout, map, r, err) : NULL;
        if (r) gsl_rng_free(r);
        st = m ? nbs_train_state_init(&ts, m, tc.seed, err) : (int)err->code;
    }
    if (!st) {
        nbs_cells c = all_cells(s);
        c.rows = rows;
        c.n = n_rows;
        nbs_train_hooks h = {s->o->progress, log_path, NULL, NULL, NULL, NULL};
        st = nbs_train(m, &c, &tc, &ts, &log, &h, NULL, err);
        if (st) nbs_error_prefix(err, "--adapt: ");
    }
    if (!st) st = nbs_manifest_add_output(s->manifest, NBS_OUT_LOG, err);
    if (!st) st = nbs_checkpoint_save(model_out, m, &s->ck.config, &grown, s->ck.gene_names, s->ck.gene_ids, &ts, &log,
                                      err);
    if (!st) st = nbs_manifest_add_output(s->manifest, NBS_OUT_MODEL, err);
    for (int k = 0; k < NBS_MAX_CATEGORICAL; k++) free(map[k]);
    free(rows);
    if (st) {
        nbs_model_free(m);
        nbs_train_state_free(&ts);
        nbs_train_log_free(&log);
        nbs_covariates_free(&grown);
        return st;
    }
    /* the grown model takes the place of the one loaded, for the embedding and the outputs */
    nbs_model_free(s->ck.model);
    nbs_train_state_free(&s->ck.state);
    nbs_train_log_free(&s->ck.log);
    nbs_covariates_free(&s->ck.covariates);
    s->ck.model = m;
    s->ck.state = ts;
    s->ck.log = log;
    s->ck.covariates = grown;
    char msg[320];
    const nbs_epoch_record *last = log.n ? &log.rec[log.n - 1] : NULL;
    if (last && isfinite(last->val_elbo))
        snprintf(msg, sizeof msg, "%d epochs on %lld cells, validation ELBO %.6g (training ELBO %.6g)", last->epoch,
                 (long long)n_rows, last->val_elbo, -(last->recon + last->kl));
    else
        snprintf(msg, sizeof msg, "%d epochs on %lld cells, training ELBO %.6g (no validation cells)",
                 last ? last->epoch : 0, (long long)n_rows, last ? -(last->recon + last->kl) : NAN);
    nbs_info("--adapt: %s", msg);
    return stage_end(s, "adapt", msg, err);
}

static void free_run(run_state *s) {
    if (s->labels) nbs_io_free_labels(s->labels, s->pre->n_cells);
    nbs_backed_loader_free(s->loader);
    nbs_backed_close(s->backed);
    free(s->row_nnz);
    free(s->backed_names);
    free(s->backed_ids);
    nbs_matrix_free(s->diag_X);
    free(s->diag_lib);
    nbs_covariate_values_free(&s->diag_cov);
    nbs_matrix_free(s->counts);
    nbs_preprocess_result_free(s->pre);
    nbs_checkpoint_free(&s->ck);
    nbs_covariate_values_free(&s->cov);
    free(s->diag_rows);
    free(s->z);
    free(s->spread);
    free(s->cluster);
    free(s->cluster_p);
    free(s->batch_labels);
    nbs_trajectory_free(&s->traj);
    nbs_diagnose_track_free(&s->track);
    nbs_collapse_report_free(&s->report);
    nbs_manifest_free(s->manifest);
}

static int finish_run(run_state *s, int st, nbs_error *err) {
    nbs_error merr = {0};
    int mst = finish_manifest(s, st, err, &merr);
    if (!st && mst) {
        *err = merr;
        st = mst;
    }
    free_run(s);
    return st;
}

static int begin_run(run_state *s, const nbs_pipeline *p, const nbs_run_options *o, nbs_error *err) {
    memset(s, 0, sizeof *s);
    s->p = p;
    s->o = o;
    s->knn_embedding = s->knn_pca = NAN;
    /* GSL's default handler aborts, also when a gsl_*_alloc runs out of memory (the Gaussian
     * path never reaches the sphere code that turns it off): every failure must be a status */
    nbs_sphere_gsl_init();
    nbs_nn_set_threads(p->config.train.threads); /* every command: the same pool as training */
    int st = nbs_pipeline_prepare_output(p, err);
    if (st) return st;
    static const char *const outputs[] = {NBS_OUT_MANIFEST, NBS_OUT_CONFIG, NBS_OUT_LOG, NBS_OUT_CHECKPOINT,
                                          NBS_OUT_MODEL, NBS_OUT_EMBEDDING, NBS_OUT_H5AD, NBS_OUT_GENES,
                                          NBS_OUT_REPORT_JSON, NBS_OUT_REPORT_TSV, NBS_OUT_REPORT_HTML,
                                          NBS_OUT_INTEGRATION_TSV, NBS_OUT_TRAJECTORY_JSON, NBS_OUT_CATEGORIES_TSV};
    int stale = nbs_io_remove_stale_tmp(p->config.output.dir, outputs, sizeof outputs / sizeof *outputs);
    if (stale) nbs_info("%s: removed %d temporary file%s left by an interrupted run", p->config.output.dir,
                        stale, stale > 1 ? "s" : "");
    return (s->manifest = nbs_manifest_new(o->command_line, err)) ? NBS_OK : (int)err->code;
}

int nbs_run_embed(const char *model_path, const nbs_pipeline *p, const nbs_run_options *o,
                  nbs_error *err) {
    run_state s;
    int st = begin_run(&s, p, o, err);
    if (st) return st;
    st = load_model_and_data(&s, model_path, err);
    if (!st && o->adapt) st = stage_adapt(&s, model_path, err);
    if (!st) st = stage_write(&s, err);
    return finish_run(&s, st, err);
}

/* diagnose and trajectory: a saved model's report on data, with the trajectory stage or not */
static int run_saved_model(const char *model_path, const nbs_pipeline *p, const nbs_run_options *o, int trajectory,
                           nbs_error *err) {
    run_state s;
    int st = begin_run(&s, p, o, err);
    if (st) return st;
    st = load_model_and_data(&s, model_path, err);
    if (!st) st = choose_diag_rows(&s, err);
    if (!st) st = stage_diagnose(&s, err);
    if (!st && trajectory) st = stage_trajectory(&s, err);
    if (!st) st = stage_write(&s, err);
    return finish_run(&s, st, err);
}

int nbs_run_diagnose(const char *model_path, const nbs_pipeline *p, const nbs_run_options *o,
                     nbs_error *err) {
    return run_saved_model(model_path, p, o, 0, err);
}

int nbs_run_trajectory(const char *model_path, const nbs_pipeline *p, const nbs_run_options *o,
                       nbs_error *err) {
    return run_saved_model(model_path, p, o, 1, err);
}

/* The outputs of a given embedding's trajectory: no model, so no embedding.tsv, genes or collapse
 * report. */
static int stage_write_trajectory(run_state *s, nbs_error *err) {
    const nbs_config *c = &s->p->config;
    stage_begin(s, "write");
    int st = c->output.write_h5ad ? write_h5ad(s, NULL, err) : NBS_OK;
    nbs_report_input ri = {NULL, NULL, NULL, s->z, s->pre->matrix->n_cells, s->d, NULL, s->labels,
                           c->input.label_column[0] ? c->input.label_column : NULL, input_title(&c->input), NAN, NAN,
                           KNN_K, NULL, NULL, NULL, &s->traj, NULL};
    const char *files[2] = {NBS_OUT_REPORT_HTML, NBS_OUT_TRAJECTORY_JSON};
    char path[NBS_PATH_MAX];
    for (int i = 0; i < 2 && !st && c->output.write_report; i++) {
        if (out_path(s, files[i], path)) st = nbs_error_set(err, NBS_ERR_USAGE, "output.dir is too long");
        else if (i == 0) st = nbs_report_write_trajectory_html(path, &ri, s->emb_source, err);
        else st = nbs_report_write_trajectory_json(path, &ri, s->emb_source, err);
        if (!st) st = nbs_manifest_add_output(s->manifest, files[i], err);
    }
    return st ? st : stage_end(s, "write", "trajectory of the given embedding written", err);
}

int nbs_run_trajectory_embedding(const char *embedding_path, const nbs_pipeline *p, const nbs_run_options *o,
                                 nbs_error *err) {
    run_state s;
    int st = begin_run(&s, p, o, err);
    if (st) return st;
    st = stage_load(&s, err);
    if (!st) st = stage_preprocess(&s, err);
    if (!st) {
        stage_begin(&s, "load embedding");
        st = load_embedding(&s, embedding_path, err);
        char msg[NBS_PATH_MAX + 64];
        snprintf(msg, sizeof msg, "%s: %d dimensions", embedding_path, s.d);
        if (!st) st = stage_end(&s, "load embedding", msg, err);
    }
    if (!st) st = stage_trajectory(&s, err);
    if (!st) st = stage_write_trajectory(&s, err);
    return finish_run(&s, st, err);
}

/* A peer's part of stage_diagnose: the final report's measures on its part of the diagnosed
 * cells, which process 0 combines and writes. */
static int peer_diagnose(run_state *s, nbs_error *err) {
    return diagnose_now(s, s->ck.model, 0, &s->report, err);
}

/* A data-parallel peer (process > 0): the load, preprocessing, training and diagnostics of process
 * 0, which writes everything; its manifest stays in memory (the stages record into it). */
static int run_peer(const nbs_pipeline *p, const nbs_run_options *o, nbs_error *err) {
    run_state s;
    memset(&s, 0, sizeof s);
    s.p = p;
    s.o = o;
    nbs_sphere_gsl_init();
    nbs_nn_set_threads(p->config.train.threads);
    int st = (s.manifest = nbs_manifest_new(o->command_line, err)) ? NBS_OK : (int)err->code;
    if (!st) st = decide_backed(&s, err);
    if (!st && s.out_of_core) { /* its rows only; its part of the embedding goes to process 0 */
        st = stage_load_backed(&s, err);
        if (!st) st = stage_preprocess_backed(&s, err);
        if (!st) st = stage_train(&s, err);
        if (!st) st = peer_diagnose(&s, err);
        if (!st) st = peer_write_backed(&s, err);
        free_run(&s);
        return st;
    }
    if (!st) st = stage_load(&s, err);
    if (!st) st = stage_preprocess(&s, err);
    if (!st) st = stage_train(&s, err);
    if (!st) st = peer_diagnose(&s, err);
    free_run(&s);
    return st;
}

int nbs_run(const nbs_pipeline *p, const nbs_run_options *o, nbs_error *err) {
    if (o->reduce && o->reduce->rank > 0) return run_peer(p, o, err);
    run_state s;
    int st = begin_run(&s, p, o, err);
    if (st) return st;
    char cfg_path[NBS_PATH_MAX];
    if (out_path(&s, NBS_OUT_CONFIG, cfg_path)) st = nbs_error_set(err, NBS_ERR_USAGE, "output.dir is too long");
    if (!st) st = nbs_pipeline_write_yaml(&p->config, cfg_path, err);
    if (!st) st = nbs_manifest_add_output(s.manifest, NBS_OUT_CONFIG, err);
    if (!st) st = decide_backed(&s, err);
    if (!st && s.out_of_core) { /* out of core: the counts stay in the file */
        st = stage_load_backed(&s, err);
        if (!st) st = stage_preprocess_backed(&s, err);
        if (!st) st = read_labels(&s, err);
        if (!st) st = stage_train(&s, err);
        if (!st) st = stage_diagnose(&s, err);
        if (!st && p->config.trajectory.enabled) st = stage_trajectory(&s, err);
        if (!st) st = stage_write_backed(&s, err);
        return finish_run(&s, st, err);
    }
    if (!st) st = stage_load(&s, err);
    if (!st) st = stage_preprocess(&s, err);
    if (!st) st = read_labels(&s, err); /* a labels problem is reported before training, not after */
    if (!st) st = stage_train(&s, err);
    if (!st) st = stage_diagnose(&s, err);
    if (!st && p->config.trajectory.enabled) st = stage_trajectory(&s, err);
    if (!st) st = stage_write(&s, err);
    /* The manifest is written for failed runs too: it says how far the run got and why. */
    return finish_run(&s, st, err);
}
