/* Shared by the collapse report's writers: report.c (JSON, TSV), report_html.c (the page) and
 * report_project.c (the 2-D map of the embedding). Not part of the public API. */
#ifndef NBSPHERE_REPORT_INTERNAL_H
#define NBSPHERE_REPORT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "nbsphere/latent.h"
#include "nbsphere/report.h"

static inline int nbs_report_is_sphere(const nbs_collapse_report *r) {
    return nbs_latent_ops_of(r->latent)->on_sphere;
}
static inline int nbs_report_has_track(const nbs_report_input *in) {
    return in->track && in->track->n > 0 && in->track->d == in->report->d;
}
static inline int nbs_report_has_log(const nbs_report_input *in) { return in->log && in->log->n > 0; }

/* One integration metric as the reports list it. */
typedef struct {
    const char *key, *name, *kind; /* kind: "batch", "bio" or "aggregate" */
    const char *definition;
    double value;                  /* NaN: not defined for these data (omitted) */
} nbs_report_metric;

/* The integration metrics of r in report order, with their one-line definitions; returns how
 * many (at most NBS_REPORT_METRICS). */
#define NBS_REPORT_METRICS 11
int nbs_report_metrics(const nbs_integration *r, nbs_report_metric *out);

/* The definition of the reconstruction gain, which holds the covariates fixed. */
extern const char *const nbs_report_gain_definition;
extern const char *const nbs_report_confounded_warning;

/* NBS_ERR_INTERNAL (a bug of the caller) when in lacks the report or its per-dimension measures. */
int nbs_report_check_input(const char *path, const nbs_report_input *in, nbs_error *err);

/* The first tracked epoch from which the encoder sent nothing through dimension j, or -1. */
int nbs_report_collapsed_since(const nbs_report_input *in, int j);

/* 2-D coordinates of each of the n cells of z [n x d] into xy [n x 2] (NaN for cells with
 * non-finite values), and the axes' labels: with lambert (unit vectors in 3-D), the Lambert
 * azimuthal equal-area map of the sphere; otherwise the first two principal components. */
int nbs_report_project(const float *z, int64_t n, int d, int lambert, double *xy, char *xlab, char *ylab,
                       size_t lablen, nbs_error *err);

#endif
