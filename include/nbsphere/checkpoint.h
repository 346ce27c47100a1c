/* Model files and checkpoints: one HDF5 layout for both, so a model can be resumed, embedded
 * with or diagnosed. Written to a temporary name and renamed; modification times are not
 * stored, so the same state gives the same bytes.
 *
 *   /                 attrs format = "nbsphere-model", format_version, nbsphere_version
 *   /config_yaml      the resolved configuration (a pipeline file that reproduces the run)
 *   /genes/names, /genes/ids                  the model's genes, in its input order
 *   /covariates       (format 3) attrs has_batch, n_categorical, n_continuous;
 *                     categorical_names, categories/<k> (covariate k's categories, byte order),
 *                     continuous_names, continuous_mean, continuous_sd
 *   /params/<block>   every parameter and state block by name (see vae.h), [rows x cols];
 *                     attrs batch_norm_eps, batch_norm_momentum (format 2)
 *   /optimizer/m, /optimizer/v                Adam moments (flat); attr step
 *   /train            attrs epochs_done, step, best_val, best_epoch, bad_epochs;
 *                     rng (the generator's state), best_params (flat, early stopping),
 *                     best_state (format 2: the best epoch's batch-norm statistics, flat)
 *   /log/records      [epochs x 13] the columns of training_log.tsv before the KL ones
 *   /log/kl           [epochs x K] mean KL per term */
#ifndef NBSPHERE_CHECKPOINT_H
#define NBSPHERE_CHECKPOINT_H

#include "nbsphere/config.h"
#include "nbsphere/covariates.h"
#include "nbsphere/train.h"
#include "nbsphere/vae.h"

typedef struct {
    nbs_config config;
    nbs_covariates covariates; /* what the model is conditioned on (none in files before format 3) */
    nbs_model *model;
    int64_t n_genes;
    char **gene_names, **gene_ids;
    nbs_train_state state; /* state.rng restored */
    nbs_train_log log;
} nbs_checkpoint;

/* cov: the covariates the model was built for (NULL: none). */
int nbs_checkpoint_save(const char *path, nbs_model *m, const nbs_config *c, const nbs_covariates *cov,
                        char *const *gene_names, char *const *gene_ids, const nbs_train_state *s,
                        const nbs_train_log *l, nbs_error *err);

/* Reads a model file; every dataset's presence, type and shape is checked against the model
 * its configuration describes, and a mismatch names the dataset. */
int nbs_checkpoint_load(const char *path, nbs_checkpoint *out, nbs_error *err);
void nbs_checkpoint_free(nbs_checkpoint *c);

/* Only the configuration, as the YAML text stored in the file (malloc'd), for `train --resume`. */
int nbs_checkpoint_config_text(const char *path, char **yaml, nbs_error *err);

#endif
