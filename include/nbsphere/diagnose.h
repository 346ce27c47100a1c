/* Posterior-collapse diagnostics (docs/design.md §7): per latent dimension the KL, the
 * activity of the encoder and the sensitivity of the decoder, a verdict per dimension and for
 * the model, and I(x;z); computed on a fixed subsample of cells, during training and after. */
#ifndef NBSPHERE_DIAGNOSE_H
#define NBSPHERE_DIAGNOSE_H

#include <gsl/gsl_rng.h>
#include <stdint.h>

#include "nbsphere/config.h"
#include "nbsphere/error.h"
#include "nbsphere/matrix.h"
#include "nbsphere/train.h"
#include "nbsphere/vae.h"

typedef enum { NBS_DIM_ACTIVE = 0, NBS_DIM_COLLAPSED, NBS_DIM_INCONSISTENT } nbs_dim_verdict;
typedef enum { NBS_MODEL_HEALTHY = 0, NBS_MODEL_PARTIAL, NBS_MODEL_COLLAPSED } nbs_model_verdict;

/* One layer of a ladder (model.latent_layers): its dimensions are [offset, offset + d) of the
 * report's per-dimension arrays, layer 1 (the bottom) first. */
typedef struct {
    int offset, d;
    nbs_latent_kind latent;
    double kl_total;         /* mean KL per cell to the layer's prior (the top-down one below the top) */
    double mi;               /* I(x; z of the layer) (Gaussian layers, at the locations above); NaN on the sphere */
    int n_active, n_collapsed, n_inconsistent;
    nbs_model_verdict verdict; /* healthy, partially collapsed, or collapsed: every dimension collapsed */
    char summary[256];
} nbs_layer_report;

typedef struct {
    int d;                /* dimensions: a ladder's every layer side by side */
    nbs_latent_kind latent; /* the embedding's (a ladder's top layer) */
    int n_layers;         /* a ladder's layers; 0 for a single latent */
    nbs_layer_report layers[NBS_MAX_LATENT_LAYERS];
    int64_t n_cells;      /* cells the measures were computed on */
    double *kl;           /* [d] mean KL_j over cells (Gaussian); NaN on the sphere */
    double kl_total;      /* mean total KL per cell */
    double *activity;     /* [d] Var_x E[z_j | x] */
    double *sens_weight;  /* [d] RMS of the first decoder layer's weights from z_j */
    double *sens_jacobian;/* [d] E_x RMS_g |d log mu_g / d z_j| at the posterior location
                             (sphere: along the tangent direction of e_j at mu) */
    double *decoder_nats; /* [d] expected KL (nats per cell) between the decoder's count
                             distributions at z and at z moved one prior SD along z_j */
    nbs_dim_verdict *verdict; /* [d] */
    int n_active, n_collapsed, n_inconsistent, n_inactive_units; /* inactive: activity < tau_activity */
    int n_unsent;               /* inconsistent ones whose encoder sends nothing (the decoder still responds) */
    int n_sending;              /* dimensions whose encoder sends (KL, or activity on the sphere) */
    double mi;            /* I(x;z) in nats, He et al. 2019; NaN on the sphere */
    int mi_batch;
    double recon_gain;    /* mean log p(x|z at the posterior location) - log p(x|z = a constant) */
    double recon_gain_se; /* its standard error over the diagnosed cells */
    int z_unused;         /* recon_gain not significantly above 0: the decoder does not use z */
    double kappa_q[5];    /* sphere: kappa at 5, 25, 50, 75, 95 % */
    nbs_model_verdict model;
    char summary[512];    /* one line: the verdict and why */
    char remedies[512];   /* what to try, naming the options */
    double tau_kl, tau_sensitivity, tau_activity, tau_decoder_nats, tau_decoder_relative;
    /* the discrete latent (model.discrete), over the diagnosed cells; n_categories 0: none. kl
     * above is then the mixture's KL_j, and kl_total counts kl_category */
    int n_categories;
    double *category_mass;   /* [K] qbar(c): the mean of q(c|x) */
    int64_t *category_cells; /* [K] cells whose most probable category is c */
    double category_entropy; /* H(qbar) in nats (log K: every category equally used) */
    double kl_category;      /* mean KL(q(c|x) || p(c)) */
    int n_dead_categories;   /* most probable for fewer than NBS_DEAD_CATEGORY_SHARE of the cells */
    char category_summary[256];
} nbs_collapse_report;

/* A category most probable for fewer than this share of the cells is dead. */
#define NBS_DEAD_CATEGORY_SHARE 0.005

/* Measures on the cells of c (X with the genes of the model, in its order). */
int nbs_diagnose(const nbs_model *m, const nbs_cells *cells, const nbs_diagnose_config *dc, gsl_rng *rng, nbs_collapse_report *out,
                 nbs_error *err);
/* The same measures with the diagnosed cells split over the processes of a data-parallel run:
 * cells is this process's part, the parts in rank order making up the diagnosed cells, each
 * holding at least one. Every process computes its part's terms and the parts meet through
 * reduce's sum hook (means, variances, sensitivities, the gain and its standard error); I(x;z)
 * and kappa's quantiles, which need every cell, are computed at process 0 on the posteriors
 * gathered in the diagnosed order (the gather hook), drawing from rng as one process does. Every
 * process gets the report, which equals one process's on all the cells within the rounding of
 * the sums. reduce NULL or of one process: nbs_diagnose, with the same bits. */
int nbs_diagnose_shared(const nbs_model *m, const nbs_cells *cells, const nbs_diagnose_config *dc, gsl_rng *rng,
                        const nbs_train_reduce *reduce, nbs_collapse_report *out, nbs_error *err);
void nbs_collapse_report_free(nbs_collapse_report *r);

const char *nbs_dim_verdict_word(nbs_dim_verdict v);     /* "active", "collapsed", "inconsistent" */
const char *nbs_model_verdict_word(nbs_model_verdict v); /* "healthy", "partially collapsed", "collapsed" */
/* 1 if dimension j of the report lies on a sphere (the spheres' dimensions have no KL of their own). */
int nbs_report_dim_on_sphere(const nbs_collapse_report *r, int j);
/* The ladder layer (0 = bottom) dimension j belongs to; -1 for a single latent. */
int nbs_report_dim_layer(const nbs_collapse_report *r, int j);

/* The same measures over training, for the report: one entry per tracked epoch. */
typedef struct {
    int n, cap, d;
    int *epoch;
    double *kl, *activity, *sens_jacobian; /* [n x d] each */
    double *mi, *recon_gain;               /* [n] */
    int *n_active, *n_collapsed;           /* [n] */
} nbs_diagnose_track;
int nbs_diagnose_track_add(nbs_diagnose_track *t, int epoch, const nbs_collapse_report *r, nbs_error *err);
void nbs_diagnose_track_free(nbs_diagnose_track *t);

/* I(x;z) for q(z|x) = N(mean_i, diag(var_i)) over n cells, d dims (row-major [n x d]):
 * E_q[log q(z|x)] - E[log q(z)] with q(z) the mixture of the posteriors of the same
 * minibatch (He et al. 2019, calc_mi), one z sample per cell, averaged over consecutive
 * minibatches of `batch` cells (a last partial batch is used if it holds >= 2 cells), clipped
 * at 0. The estimate is biased low by at most log(batch); report the batch with it. */
int nbs_diagnose_mi_gaussian(const float *mean, const float *var, int64_t n, int d, int batch,
                             gsl_rng *rng, double *mi, nbs_error *err);

#endif
