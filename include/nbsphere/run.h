/* One run of nbsphere, as `nbsphere run` and `nbsphere train` perform it: check that the
 * output folder is writable, load -> preprocess -> train -> diagnose -> write, and record
 * everything in manifest.json. Each stage's failure is returned with its status; files are
 * written through temporary names, so a failed run leaves no half-written output. */
#ifndef NBSPHERE_RUN_H
#define NBSPHERE_RUN_H

#include "nbsphere/error.h"
#include "nbsphere/pipeline.h"
#include "nbsphere/progress.h"
#include "nbsphere/train.h"

typedef struct {
    const char *command_line; /* recorded in the manifest */
    nbs_progress *progress;   /* may be NULL */
    const char *resume;       /* a checkpoint or model file to continue training from, or NULL */
    int adapt;                /* embed: add the data's new categories to the model (scArches' surgery) */
    int adapt_epochs;         /* ... training their weights this many epochs (> 0) */
    const char *use_rep;      /* trajectory of an embedding: the .h5ad's obsm key (NULL: X_nbsphere) */
    const char *metric;       /* ... its distance, "euclidean" or "cosine" (NULL: what the file says) */
    /* nbs_run's data-parallel training (parallel.h), or NULL: one process. Process 0 runs as one
     * process would and writes every output; the others load, preprocess and train with it and
     * write nothing. */
    const nbs_train_reduce *reduce;
} nbs_run_options;

int nbs_run(const nbs_pipeline *p, const nbs_run_options *o, nbs_error *err);

/* `nbsphere embed`: the model file's encoder on the cells of p's input (genes matched to the
 * model's by name; absent genes count zero, with a warning saying how many), written as
 * embedding.tsv (+ embedding.h5ad) and manifest.json into p's output.dir. */
int nbs_run_embed(const char *model_path, const nbs_pipeline *p, const nbs_run_options *o,
                  nbs_error *err);
/* With o->adapt, categories of the model's categorical covariates that the model does not know are
 * added first (nbs_model_grow): their weights train for o->adapt_epochs epochs on the cells that
 * hold them (p's train section: seed, learning rate, batch size, validation split; the KL weight
 * constant at train.beta), every other weight frozen; the grown model is written as model.h5 with
 * its training_log.tsv. A model without categorical covariates is NBS_ERR_USAGE; data with no
 * new category are embedded with the model as it is (a note says so, no model.h5). */

/* `nbsphere diagnose`: the collapse report (collapse_report.json, collapse_dimensions.tsv,
 * report.html) of a model file on the cells of p's input (genes matched as for embed), with
 * the training curves stored in the model, plus embedding.tsv/.h5ad, into p's output.dir. */
int nbs_run_diagnose(const char *model_path, const nbs_pipeline *p, const nbs_run_options *o,
                     nbs_error *err);

/* `nbsphere trajectory`: nbs_run_diagnose followed by the trajectory stage (trajectory.h, with
 * p's trajectory section whatever its `enabled`), whose graphs, clusters, diffusion map and
 * pseudotime go into embedding.h5ad and the report. */
int nbs_run_trajectory(const char *model_path, const nbs_pipeline *p, const nbs_run_options *o,
                       nbs_error *err);
/* The same stage on an embedding made elsewhere (nbs_io_read_embedding: an .h5ad's obsm entry or a
 * table): p's input is loaded and preprocessed as for training (its selected genes are the
 * wrap-around reference's), every cell it keeps must be in the embedding (matched by barcode;
 * others are left out with a note). Writes embedding.h5ad (the coordinates under
 * output.embedding_key, the trajectory's entries), report.html with the trajectory section alone,
 * trajectory.json (collapse_report.json's trajectory object) and manifest.json. */
int nbs_run_trajectory_embedding(const char *embedding_path, const nbs_pipeline *p, const nbs_run_options *o,
                                 nbs_error *err);

/* The load stage on its own (also used by `inspect`): reads the input section's file with the
 * format it names or detects (*format_used, may be NULL), validates the values and makes gene
 * names unique: nbs_io_read, which reads every format io.h lists. */
int nbs_run_read_input(const nbs_input_config *in, nbs_format *format_used, nbs_matrix **out,
                       nbs_error *err);

/* Names of the files a run writes into output.dir. */
#define NBS_OUT_MANIFEST "manifest.json"
#define NBS_OUT_CONFIG "config.yaml"
#define NBS_OUT_LOG "training_log.tsv"
#define NBS_OUT_CHECKPOINT "checkpoint.h5" /* periodic, removed once model.h5 is written */
#define NBS_OUT_MODEL "model.h5"
#define NBS_OUT_EMBEDDING "embedding.tsv"
#define NBS_OUT_H5AD "embedding.h5ad"
#define NBS_OUT_GENES "genes.tsv" /* the model's genes: id, name */
#define NBS_OUT_REPORT_JSON "collapse_report.json"
#define NBS_OUT_REPORT_TSV "collapse_dimensions.tsv"
#define NBS_OUT_CATEGORIES_TSV "collapse_categories.tsv" /* a discrete latent's categories */
#define NBS_OUT_INTEGRATION_TSV "integration.tsv"
#define NBS_OUT_REPORT_HTML "report.html"
#define NBS_OUT_TRAJECTORY_JSON "trajectory.json" /* trajectory of a given embedding */

#endif
