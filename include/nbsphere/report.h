/* The collapse report files: collapse_report.json (schema in README.md, "The collapse report"),
 * collapse_dimensions.tsv (one row per latent dimension) and report.html (one self-contained
 * page with inline SVG plots). Each is written through a temporary name and renamed into place,
 * so a failure never leaves half a file. */
#ifndef NBSPHERE_REPORT_H
#define NBSPHERE_REPORT_H

#include <stdint.h>

#include "nbsphere/diagnose.h"
#include "nbsphere/error.h"
#include "nbsphere/integrate.h"
#include "nbsphere/train.h"
#include "nbsphere/trajectory.h"

typedef struct {
    const nbs_collapse_report *report;  /* final measures (required) */
    const nbs_diagnose_track *track;    /* measures tracked during training; NULL or n == 0: none */
    const nbs_train_log *log;           /* per-epoch training curves; NULL or n == 0: none */
    const float *embedding;             /* posterior location [n_cells x d] (unit vectors on the sphere) */
    int64_t n_cells;
    int d;
    const float *kappa;                 /* sphere: concentration per cell [n_cells]; NULL otherwise */
    char *const *labels;                /* per cell, may be NULL (or entries NULL = unlabelled) */
    const char *label_column;           /* name of the labels, for legends; may be NULL */
    const char *title;                  /* e.g. the input file */
    double knn_embedding, knn_pca;      /* k-NN label accuracy of the embedding and of PCA; NaN = not computed */
    int knn_k;
    const nbs_integration *integration; /* scIB metrics; NULL = not computed */
    const char *batch_key;              /* the batch covariate's column, may be NULL */
    char *const *batch_labels;          /* per cell, its batch (for the map coloured by batch); may be NULL */
    const nbs_trajectory *trajectory;   /* the trajectory stage; NULL = not run */
    const nbs_knn_info *knn_info;       /* how the embedding's k-NN score searched; NULL = not computed */
} nbs_report_input;

int nbs_report_write_json(const char *path, const nbs_report_input *in, nbs_error *err);
/* integration.tsv: metric, kind (batch, bio, aggregate), value, definition; only with in->integration. */
int nbs_report_write_integration_tsv(const char *path, const nbs_report_input *in, nbs_error *err);
int nbs_report_write_tsv(const char *path, const nbs_report_input *in, nbs_error *err);
/* collapse_categories.tsv of a discrete latent: category, cells, share, mean_probability, verdict. */
int nbs_report_write_categories_tsv(const char *path, const nbs_report_input *in, nbs_error *err);
int nbs_report_write_html(const char *path, const nbs_report_input *in, nbs_error *err);
/* A given embedding's trajectory, without a model and so without collapse measures (in->report
 * NULL, in->trajectory set): report.html with the trajectory section alone, and a JSON file of
 * collapse_report.json's "trajectory" object with the version, title and embedding's source. */
int nbs_report_write_trajectory_html(const char *path, const nbs_report_input *in, const char *source,
                                     nbs_error *err);
int nbs_report_write_trajectory_json(const char *path, const nbs_report_input *in, const char *source,
                                     nbs_error *err);

#endif
