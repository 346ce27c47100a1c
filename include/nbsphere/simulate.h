/* Synthetic single-cell counts along a branching trajectory, for the example data, demos and
 * tests where the truth must be known: a root segment splits into B branches; every gene's
 * log-mean moves smoothly with pseudotime, and differently on each branch; library sizes are
 * log-normal; counts are negative binomial (gamma-Poisson) with a per-gene dispersion.
 * Optionally the cells fall into batches, each with gene-wise log-normal factors on the means
 * and its own shift of the log library size, so batch correction can be tested against truth.
 * The generator is passed in, so a seed reproduces the data exactly. */
#ifndef NBSPHERE_SIMULATE_H
#define NBSPHERE_SIMULATE_H

#include <gsl/gsl_rng.h>
#include <stdint.h>

#include "nbsphere/matrix.h"

/* The shape of the trajectory. NBS_SIM_TREE: each branch's genes ramp up or down once and stay
 * there, so the branches end at B distinct states not far from the split. NBS_SIM_LONG_BRANCHES:
 * each branch's genes switch one after another, their onsets spread evenly along the branch and
 * each ramp NBS_SIM_RAMP_WIDTH of the branch long, so expression keeps changing to the tip and a
 * tip has all of its branch's genes switched: long curves in expression whose tips are far apart
 * (the test case of the trajectory stage's wrap-around diagnostic). */
typedef enum { NBS_SIM_TREE = 0, NBS_SIM_LONG_BRANCHES } nbs_sim_shape;
#define NBS_SIM_RAMP_WIDTH 0.25

typedef struct {
    int64_t n_cells;
    int64_t n_genes;
    int n_branches;         /* B >= 1 branches after the root segment */
    double split_time;      /* pseudotime where the root ends and the branches begin, in (0, 1) */
    double depth;           /* median library size (UMIs per cell) */
    double depth_sdlog;     /* sd of log library size */
    double theta;           /* median NB dispersion; per-gene values are log-normal around it */
    double trend_fraction;  /* share of genes following the shared pseudotime trend */
    double branch_fraction; /* share of genes responding on each branch */
    int n_batches;          /* 1 to min(100, n_cells); 1 = no batch effects */
    double batch_sdlog;     /* sd of a batch's log factor on each gene's mean */
    double batch_depth_sdlog; /* sd of a batch's shift of the log library size */
    nbs_sim_shape shape;    /* the tree (default) or long branches */
} nbs_sim_config;

/* 2000 cells, 1000 genes, 3 branches, split at 0.3, depth 600, theta 2; one batch (batch effects
 * sdlog 0.5 on the genes, 0.3 on the library size when there are more). */
void nbs_sim_defaults(nbs_sim_config *c);
/* The long-branches shape on top of c: 2 branches, split at 0.1 (branches nine times the root's
 * length), half the genes responding on each branch; callers may change them afterwards. */
void nbs_sim_long_branches(nbs_sim_config *c);

typedef struct {
    nbs_matrix *counts;  /* cells x genes, integer counts */
    int *branch;         /* per cell: 0 = root segment, 1..B = branch */
    double *pseudotime;  /* per cell, in [0, 1] */
    double *library;     /* per cell: the drawn library size l_c */
    double *theta;       /* per gene dispersion */
    int *batch;          /* per cell: 0..n_batches-1 (all 0 with one batch) */
    double *batch_log_gene;  /* [n_batches x n_genes]: batch b's log factor on gene g's mean
                              * (at b * n_genes + g); NULL with one batch */
    double *batch_log_depth; /* [n_batches]: batch b's shift of the log library size; NULL with
                              * one batch */
    nbs_sim_config config;
    struct nbs_sim_programme *programme; /* the genes' trends (opaque) */
} nbs_sim_data;

/* Draws a dataset. The batches are drawn after the trajectory and library sizes, so one batch
 * gives exactly the data of a simulator without batches. */
int nbs_simulate(const nbs_sim_config *c, gsl_rng *rng, nbs_sim_data *out, nbs_error *err);
void nbs_sim_data_free(nbs_sim_data *d);

/* The true log expression shares of one cell, out[G] (sum_g exp(out[g]) = 1), its batch's gene
 * factors included: the NB mean of entry (cell, g) is library[cell] * exp(out[g]). */
void nbs_sim_cell_log_rho(const nbs_sim_data *d, int64_t cell, double *out);

/* One negative-binomial draw with the given mean and dispersion (variance mean + mean^2/theta),
 * as a gamma-Poisson mixture. */
unsigned int nbs_sim_nb(gsl_rng *rng, double mean, double theta);

/* Branch name of a cell ("root", "branch1", ...) into buf. */
void nbs_sim_branch_name(int branch, char *buf, size_t n);
/* Batch name of a cell ("batch1", ...; batch is 0-based) into buf. */
void nbs_sim_batch_name(int batch, char *buf, size_t n);

/* Writes dir/cell_labels.tsv: barcode, branch, pseudotime and, with more than one batch, batch
 * (header line first), via a temporary file. */
int nbs_sim_write_labels(const nbs_sim_data *d, const char *dir, nbs_error *err);

/* Writes the counts as a 10x v3 folder (created if needed): matrix.mtx.gz (genes x cells,
 * integer), features.tsv.gz (id, name, "Gene Expression"), barcodes.tsv.gz. gzip headers
 * carry no time stamp, so the same data give the same bytes. Each file goes through a
 * temporary name. */
int nbs_sim_write_mtx_dir(const nbs_sim_data *d, const char *dir, nbs_error *err);

/* Adds the truth to an existing .h5ad in place: obs/branch (categorical), obs/pseudotime
 * (float64) and, with more than one batch, obs/batch (categorical), in the anndata 0.8 encoding, and appends them to obs's column-order. Used on the
 * temporary file before it is renamed into place. */
int nbs_sim_add_h5ad_obs(const nbs_sim_data *d, const char *path, nbs_error *err);

#endif
