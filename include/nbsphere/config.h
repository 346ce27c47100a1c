/* The resolved configuration of one run: every option a pipeline file (pipelines/ folder)
 * or a --set override can name. nbs_config_defaults() gives the documented defaults, the
 * presets replace some of them, and pipeline.c fills the rest from YAML. Modules read only
 * their own section. The words of the enums, as files, messages and outputs spell them, are
 * here too. */
#ifndef NBSPHERE_CONFIG_H
#define NBSPHERE_CONFIG_H

#include <stdint.h>

#include "nbsphere/matrix.h"

#define NBS_PATH_MAX 4096
#define NBS_NAME_MAX 256
#define NBS_MAX_LAYERS 8
#define NBS_MAX_COVARIATES 16 /* columns in each covariate list */
#define NBS_MAX_SAMPLES 32    /* entries of input.samples */

typedef enum {
    NBS_FMT_AUTO = 0,
    NBS_FMT_10X_H5,   /* Cell Ranger HDF5, v2 (genome groups) or v3 (matrix/features) */
    NBS_FMT_H5AD,     /* AnnData */
    NBS_FMT_10X_MTX,  /* a 10x folder: matrix.mtx[.gz], features.tsv[.gz]|genes.tsv, barcodes */
    NBS_FMT_MTX,      /* a bare Matrix Market file */
    NBS_FMT_TSV,      /* dense, tab-separated, header row and row names */
    NBS_FMT_CSV,      /* dense, comma-separated */
    NBS_FMT_LOOM      /* loom (loompy): /matrix genes x cells, /row_attrs, /col_attrs */
} nbs_format;

/* Orientation of bare MTX and dense tables. */
typedef enum { NBS_ORIENT_AUTO = 0, NBS_ORIENT_CELLS_ROWS, NBS_ORIENT_GENES_ROWS } nbs_orientation;

/* An integer key set to `auto`: resolved where the data are known. */
#define NBS_AUTO (-1)

/* A list of column names (input.categorical_covariates, ...); unused entries are zero. */
typedef struct {
    int n;
    char names[NBS_MAX_COVARIATES][NBS_NAME_MAX];
} nbs_name_list;

/* One entry of input.samples: a name (the suffix of its barcodes and its category in the
 * `sample` column) and a file read as input.path would be, with its own format and layer when
 * given (else input.format and input.layer). */
typedef struct {
    char name[NBS_NAME_MAX];
    char path[NBS_PATH_MAX];
    nbs_format format;         /* NBS_FMT_AUTO: input.format */
    int layer_given;           /* 1: layer below, 0: input.layer */
    char layer[NBS_NAME_MAX];
} nbs_sample;

typedef struct {
    int n;
    nbs_sample items[NBS_MAX_SAMPLES]; /* in the order of the mapping */
} nbs_sample_list;

/* How the genes of several samples are combined: those in every sample, or all (zeros where a
 * sample lacks one), as anndata.concat's join. */
typedef enum { NBS_JOIN_INNER = 0, NBS_JOIN_OUTER } nbs_join;
/* Batch-aware HVG order, scanpy's flavor names: the median rank over the batches first, or the
 * number of batches selecting the gene first (Seurat's SelectIntegrationFeatures) */
typedef enum { NBS_HVG_SEURAT_V3 = 0, NBS_HVG_SEURAT_V3_PAPER } nbs_hvg_flavor;

typedef struct {
    char path[NBS_PATH_MAX];   /* one input; "" when samples are given */
    nbs_sample_list samples;   /* several inputs, stacked by cells (input.samples) */
    nbs_join join;
    nbs_format format;
    char layer[NBS_NAME_MAX];  /* h5ad: "" = X, "raw" = raw/X, otherwise layers/<layer>; loom: "" = /matrix */
    char genome[NBS_NAME_MAX]; /* 10x v2: genome group to read; "" = the only one */
    /* 10x HDF5 and folders: the feature types kept, "all" or a comma-separated list ("Gene
     * Expression, Antibody Capture"; case and spaces around commas ignored); "" is the default,
     * "Gene Expression", as scanpy's read_10x_h5(gex_only=True) */
    char feature_types[NBS_NAME_MAX];
    nbs_orientation orientation;
    nbs_nonint_policy non_integer;
    char labels_path[NBS_PATH_MAX]; /* optional TSV with a barcode column (else labels from h5ad obs) */
    char label_column[NBS_NAME_MAX];/* obs / labels column used to colour plots and score kNN */
    /* Covariates the model is conditioned on, columns of the same sources as the labels: the
     * batch (categorical covariate 0; "" = none), further categorical ones, and numeric ones
     * (standardised over the training cells). */
    char batch_key[NBS_NAME_MAX];
    nbs_name_list categorical_covariates;
    nbs_name_list continuous_covariates;
    /* Out of core (backed.h): 1 reads the counts from the file block by block, 0 loads them,
     * NBS_AUTO decides by the in-memory estimate against memory_limit (megabytes; NBS_AUTO: a
     * fraction of the physical memory). Minibatches come from buffers of backed_shuffle_blocks
     * blocks of backed_block consecutive cells. */
    int backed;
    int memory_limit;
    int backed_block;
    int backed_shuffle_blocks;
} nbs_input_config;

typedef struct {
    double min_counts;      /* cells: minimum total count */
    int64_t min_genes;      /* cells: minimum number of detected genes */
    int64_t min_cells;      /* genes: minimum number of cells expressing it */
    int64_t n_top_genes;    /* highly variable genes (Seurat v3); 0 = keep all genes */
    double hvg_span;        /* loess span of the Seurat v3 variance fit (scanpy: 0.3) */
    int hvg_batch_aware;    /* with a batch: rank genes within each batch (scanpy's batch_key) */
    nbs_hvg_flavor hvg_flavor; /* how the batches' ranks are combined */
} nbs_preprocess_config;

typedef enum { NBS_LATENT_GAUSSIAN = 0, NBS_LATENT_VMF, NBS_LATENT_POWER_SPHERICAL } nbs_latent_kind;
typedef enum { NBS_LIK_NB = 0, NBS_LIK_ZINB, NBS_LIK_POISSON } nbs_likelihood_kind;
/* log theta per gene, per gene and cell (a decoder head), or per gene and batch category */
typedef enum { NBS_DISP_GENE = 0, NBS_DISP_GENE_CELL, NBS_DISP_GENE_BATCH } nbs_dispersion_kind;
typedef enum { NBS_DISP_INIT_ONE = 0, NBS_DISP_INIT_LOGNORMAL } nbs_dispersion_init;
typedef enum { NBS_NORM_NONE = 0, NBS_NORM_LAYER, NBS_NORM_BATCH } nbs_norm_kind;
typedef enum { NBS_INPUT_LOG1P = 0, NBS_INPUT_LOG1P_CP10K } nbs_input_transform;
/* how a categorical covariate enters a layer: its one-hot block, or a learned table's row */
typedef enum { NBS_COVARIATE_ONEHOT = 0, NBS_COVARIATE_EMBEDDING } nbs_covariate_embedding;

typedef struct {
    nbs_latent_kind latent;
    int latent_dim;
    int n_encoder_layers;
    int encoder_layers[NBS_MAX_LAYERS]; /* hidden widths, input side first */
    int n_decoder_layers;
    int decoder_layers[NBS_MAX_LAYERS]; /* hidden widths, latent side first */
    double dropout;
    nbs_norm_kind norm;
    nbs_likelihood_kind likelihood;
    nbs_dispersion_kind dispersion;
    nbs_dispersion_init dispersion_init; /* per-gene theta at the start: 1, or exp(N(0, 1)) as scvi-tools */
    nbs_input_transform input_transform;
    double kappa_floor;         /* spherical latents: kappa = softplus(.) + floor */
    double decoder_init_scale;  /* scale of the decoder's last layer at initialisation (1 = default init) */
    int encode_covariates;      /* the categorical and continuous covariates into the first encoder layer too */
    nbs_covariate_embedding covariate_embedding; /* one-hot blocks, or a learned table per covariate */
    int covariate_embedding_dim; /* columns of each table (scvi-tools' embedding_dim: 5) */
    int discrete;               /* K categories of a discrete latent with a Gaussian-mixture prior (mixture.h); 0 = none */
    /* A ladder (Sonderby et al. 2016): 2 to NBS_MAX_LATENT_LAYERS stochastic layers of these
     * dimensions, bottom (read by the decoder) first, the top of kind `latent`; 0: one latent of
     * latent_dim */
    int n_latent_layers;
    int latent_layers[NBS_MAX_LAYERS];
    int skip_connections; /* every latent layer into every decoder hidden layer (Dieng et al. 2019) */
} nbs_model_config;

/* Most stochastic layers of a ladder. */
#define NBS_MAX_LATENT_LAYERS 4

typedef enum {
    NBS_SCHED_CONSTANT = 0,
    NBS_SCHED_LINEAR,   /* linear warm-up from 0 to beta */
    NBS_SCHED_SIGMOID,
    NBS_SCHED_CYCLICAL  /* Fu et al. 2019: cycles, ramp fraction */
} nbs_schedule_kind;

typedef struct {
    int epochs;                 /* NBS_AUTO: by the number of cells (nbs_train_resolve) */
    int batch_size;
    double learning_rate;
    double weight_decay;
    double adam_eps;            /* Adam's epsilon: larger damps the steps of rarely-moved weights */
    uint64_t seed;
    int threads;
    double validation_fraction;
    int patience;               /* early stopping, epochs without improvement; 0 = off */
    nbs_schedule_kind schedule;
    double beta;                /* target KL weight */
    int warmup_epochs;          /* linear/sigmoid: epochs to reach beta (ignored if warmup_steps > 0);
                                   NBS_AUTO: half of the epochs */
    int64_t warmup_steps;       /* linear/sigmoid: minibatch steps to reach beta */
    int cycles;                 /* cyclical: M */
    double ramp_fraction;       /* cyclical: R */
    double free_bits;           /* lambda, nats per dimension (Gaussian) or in total (sphere); 0 = off */
    double grad_clip;           /* global gradient-norm clip; 0 = off */
    int checkpoint_every;       /* epochs between checkpoints; 0 = only at the end */
    double entropy_target;      /* discrete latent: H nats the minibatch's mean q(c|x) should keep */
    double entropy_weight;      /* lambda of lambda max(0, H - H(qbar(c))); 0 = off */
    double entropy_cell_weight; /* mu of mu mean_i H(q(c|x_i)), confident cells; 0 = off */
} nbs_train_config;

typedef struct {
    double tau_kl;          /* nats: KL_j below this counts as "no information" */
    double tau_sensitivity; /* Jacobian sensitivity below this counts as "ignored" */
    double tau_decoder_nats; /* ... and so does a decoder response below this many nats per cell */
    double tau_decoder_relative; /* ... unless it is at least this fraction of the largest one's */
    double tau_activity;    /* Var_x E[z_j|x] below this counts as inactive (Burda et al.: 0.01) */
    int interval;           /* epochs between tracked diagnostics; 0 = only at the end */
    int64_t subsample;      /* cells used for tracking during training */
    int mi_batch;           /* minibatch size of the I(x;z) estimator */
} nbs_diagnose_config;

/* The trajectory stage (trajectory.h): neighbours, Leiden, PAGA, diffusion map and pseudotime of
 * the embedding. The root of the pseudotime is a barcode, or a label of input.label_column. */
typedef struct {
    double resolution;      /* Leiden resolution */
    int64_t k;              /* neighbours per cell as scanpy's n_neighbors: the cell itself included */
    int enabled;            /* `run`: after diagnose (`nbsphere trajectory` always runs it) */
    int n_dcs;              /* diffusion components, the stationary one included (scanpy's n_dcs) */
    char root[NBS_NAME_MAX];       /* root barcode, or "" */
    char root_label[NBS_NAME_MAX]; /* or the label whose extreme cell on DC1 is the root, or "" */
    int shortcut_hops;      /* wrap-around: an embedding edge more than this many reference-graph
                               steps long is a shortcut; 0 = no diagnostic */
    double wrap_share;      /* wrap-around: a pair is named when this share of its edges are shortcuts */
} nbs_trajectory_config;

/* The k-nearest-neighbour search behind every neighbour graph (graph.h: the trajectory stage,
 * the wrap-around diagnostic, the integration metrics) and the k-NN label score. */
typedef enum {
    NBS_KNN_EXACT,          /* brute force by blocked BLAS products: O(n^2); 0, so a zeroed config is exact */
    NBS_KNN_AUTO,           /* exact up to exact_max_cells cells, approximate above */
    NBS_KNN_APPROXIMATE     /* FLANN's hierarchical k-means tree */
} nbs_knn_method;

typedef struct {
    nbs_knn_method method;
    int64_t exact_max_cells; /* auto: the largest search that stays exact (cells searched) */
    int branching;          /* approximate: children of each k-means tree node */
    int checks;             /* approximate: points compared per query to start with ... */
    double recall;          /* ... doubled until the recall@k measured against exact reaches this */
} nbs_neighbors_config;

typedef struct {
    char dir[NBS_PATH_MAX];
    int write_h5ad;         /* embedding into .h5ad obsm['X_nbsphere'] */
    int write_variances;    /* posterior variances (Gaussian) / kappa (sphere) in the TSV */
    int write_report;       /* collapse_report.json, per-dimension TSV, report.html */
    char embedding_key[NBS_NAME_MAX]; /* obsm key, default X_nbsphere */
} nbs_output_config;

typedef struct {
    char source[NBS_PATH_MAX]; /* the pipeline file, for the manifest */
    char preset[NBS_NAME_MAX]; /* "", "scvi" or "scphere" */
    nbs_input_config input;
    nbs_preprocess_config preprocess;
    nbs_model_config model;
    nbs_train_config train;
    nbs_diagnose_config diagnose;
    nbs_trajectory_config trajectory;
    nbs_neighbors_config neighbors;
    nbs_output_config output;
} nbs_config;

/* Fills every field with its documented default (pipelines/reference.yaml lists them). */
void nbs_config_defaults(nbs_config *c);

/* Applies a preset on top of the current configuration and records its name in c->preset:
 * "scvi" (scvi-tools' SCVI defaults), "scphere" (the scPhere demo) or "" (none). Another name is
 * NBS_ERR_USAGE. */
int nbs_config_apply_preset(nbs_config *c, const char *name, nbs_error *err);

/* ---- the words of the enums ---- */

typedef struct {
    const char *word;
    int value;
} nbs_enum_word;

/* Each list ends with {NULL, 0}. */
extern const nbs_enum_word nbs_format_words[], nbs_orientation_words[], nbs_non_integer_words[],
    nbs_latent_words[], nbs_likelihood_words[], nbs_dispersion_words[], nbs_dispersion_init_words[],
    nbs_norm_words[], nbs_input_transform_words[], nbs_schedule_words[], nbs_join_words[],
    nbs_hvg_flavor_words[], nbs_covariate_embedding_words[], nbs_knn_method_words[];

/* The word of value in words; "unknown" when it has none. */
const char *nbs_enum_word_of(const nbs_enum_word *words, int value);

const char *nbs_latent_word(nbs_latent_kind k);
/* "auto", "10x-h5", "h5ad", "10x-mtx", "mtx", "tsv", "csv", "loom". */
const char *nbs_format_name(nbs_format f);
/* The inverse, ignoring case; -1 when name is no format. */
int nbs_format_parse(const char *name, nbs_format *out);

#endif
