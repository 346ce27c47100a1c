/* Covariates: what the model is told about each cell besides its counts, the batch and other
 * categorical columns and numeric ones (input.batch_key, categorical_covariates,
 * continuous_covariates). They are read from the labels table (input.labels_path) or, without
 * one, from the .h5ad input's obs, one value per cell; a model keeps their categories and
 * standardisation, so that new data are encoded as the training data were. */
#ifndef NBSPHERE_COVARIATES_H
#define NBSPHERE_COVARIATES_H

#include <stdint.h>

#include "nbsphere/config.h"
#include "nbsphere/error.h"
#include "nbsphere/matrix.h"
#include "nbsphere/vae.h"

/* A categorical covariate: its column and its categories in byte order (UTF-8 byte order is
 * code-point order, pandas' order for text; numbers read as text sort as text). */
typedef struct {
    char name[NBS_NAME_MAX];
    int n_categories;
    char **categories; /* (n_categories) malloc'd */
} nbs_categorical_covariate;

/* A continuous covariate: its column and the standardisation (x - mean) / sd the model reads. */
typedef struct {
    char name[NBS_NAME_MAX];
    double mean, sd; /* over the training cells, sd with divisor n */
} nbs_continuous_covariate;

/* The covariates of a model. */
typedef struct {
    int has_batch; /* categorical covariate 0 is input.batch_key */
    int n_categorical, n_continuous;
    nbs_categorical_covariate categorical[NBS_MAX_CATEGORICAL];
    nbs_continuous_covariate continuous[NBS_MAX_COVARIATES];
} nbs_covariates;

/* The covariates of the cells of one matrix, by row. */
typedef struct {
    int64_t n_cells;
    int n_categorical, n_continuous;
    int32_t *codes;      /* (n_cells, n_categorical) index into the covariate's categories */
    float *standardised; /* (n_cells, n_continuous) (x - mean) / sd: what the model reads */
    double *raw;         /* (n_cells, n_continuous) as read, for the outputs */
} nbs_covariate_values;

/* The covariates the input section names, found in the data of the cells of X: categories, means
 * and sds over these cells, and each cell's values. A categorical column with one category, or a
 * numeric one with one value, tells the cells nothing apart and is dropped with a note (the
 * batch too: has_batch is then 0). A missing column, an empty or NA value, a value that is not a
 * finite number in a continuous column, or a column of another length than the cells is
 * NBS_ERR_INPUT naming the file, the column and the cell; no source for the columns is
 * NBS_ERR_USAGE. format is the input's (an .h5ad input's obs is a source). */
int nbs_covariates_fit(const nbs_input_config *in, nbs_format format, const nbs_matrix *X, nbs_covariates *cov,
                       nbs_covariate_values *values, nbs_error *err);

/* The values of a model's covariates for the cells of X (new data, or a resumed run): the same
 * columns from in's sources, encoded with the model's categories and standardisation. A category
 * the model does not know is NBS_ERR_INPUT naming it and listing the known ones. */
int nbs_covariates_encode(const nbs_covariates *cov, const nbs_input_config *in, nbs_format format,
                          const nbs_matrix *X, nbs_covariate_values *values, nbs_error *err);

/* The batch column: input.batch_key, else with input.samples the `sample` column, else "". */
const char *nbs_covariates_batch_column(const nbs_input_config *in);

/* The batch of every cell of X before any filter, for batch-aware gene selection: codes[i]
 * (n_cells, malloc'd) indexes batch->categories (byte order, as nbs_covariates_fit finds
 * them), -1 where a cell has no value (allowed here: the filters may remove it; a kept cell
 * without one is refused by nbs_covariates_fit). No batch column: *codes NULL. */
int nbs_covariates_batch_codes(const nbs_input_config *in, nbs_format format, const nbs_matrix *X, int32_t **codes,
                               nbs_categorical_covariate *batch, nbs_error *err);
void nbs_categorical_covariate_free(nbs_categorical_covariate *c);

/* For `embed --adapt`: the model's covariates grown by the categories the cells of X hold that it
 * does not know. grown has every categorical covariate's known and new categories in byte order
 * (so the codes of known ones may move): old_to_new[k] (malloc'd, cov's n_categories of k) maps
 * each known category's code to its code in grown. *n_new counts the new categories over every
 * covariate (0: nothing to add). Continuous covariates are kept as they are: a value is
 * standardised with the model's mean and sd whatever it is, so none is ever unseen. Encode the
 * cells with nbs_covariates_encode(grown, ...). */
int nbs_covariates_extend(const nbs_covariates *cov, const nbs_input_config *in, nbs_format format,
                          const nbs_matrix *X, nbs_covariates *grown, int32_t *old_to_new[], int *n_new,
                          nbs_error *err);

/* What the model's construction needs: the number of categories of each categorical covariate,
 * and of continuous ones. */
nbs_covariate_layout nbs_covariates_layout(const nbs_covariates *cov);

/* c reads the covariates of values (whose rows are those of c->X). */
void nbs_covariates_attach(const nbs_covariate_values *values, nbs_cells *c);

/* The values of rows rows[0..n) of v into out (n cells, in that order): the covariates of a
 * subsample read apart from the other cells (out of core, the diagnostics' cells). */
int nbs_covariate_values_gather(const nbs_covariate_values *v, const int64_t *rows, int64_t n,
                                nbs_covariate_values *out, nbs_error *err);

/* One line for the log: "batch group_id (2 categories), ...". */
void nbs_covariates_describe(const nbs_covariates *cov, char *buf, size_t n);

void nbs_covariates_free(nbs_covariates *cov);
void nbs_covariate_values_free(nbs_covariate_values *values);

#endif
