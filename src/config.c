/* The configuration's defaults, its presets and the words of its enums. */
#include "nbsphere/config.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

void nbs_config_defaults(nbs_config *c) {
    memset(c, 0, sizeof *c);
    c->input.format = NBS_FMT_AUTO;
    c->input.orientation = NBS_ORIENT_AUTO;
    c->input.non_integer = NBS_NONINT_ERROR;
    strcpy(c->input.feature_types, "Gene Expression");
    c->input.backed = NBS_AUTO;
    c->input.memory_limit = NBS_AUTO;
    c->input.backed_block = 256;
    c->input.backed_shuffle_blocks = 64;

    c->preprocess.min_counts = 0;
    c->preprocess.min_genes = 1;
    c->preprocess.min_cells = 1;
    c->preprocess.n_top_genes = 2000;
    c->preprocess.hvg_span = 0.3;
    c->preprocess.hvg_batch_aware = 1;

    c->model.latent = NBS_LATENT_GAUSSIAN;
    c->model.latent_dim = 10;
    c->model.n_encoder_layers = 1;
    c->model.encoder_layers[0] = 128;
    c->model.n_decoder_layers = 1;
    c->model.decoder_layers[0] = 128;
    c->model.dropout = 0.1;
    c->model.norm = NBS_NORM_NONE;
    c->model.likelihood = NBS_LIK_NB;
    c->model.dispersion = NBS_DISP_GENE;
    c->model.dispersion_init = NBS_DISP_INIT_ONE;
    c->model.input_transform = NBS_INPUT_LOG1P;
    c->model.kappa_floor = 1.0;
    c->model.decoder_init_scale = 1.0;
    c->model.covariate_embedding = NBS_COVARIATE_ONEHOT;
    c->model.covariate_embedding_dim = 5;

    c->train.epochs = NBS_AUTO;
    c->train.batch_size = 128;
    c->train.learning_rate = 1e-3;
    c->train.weight_decay = 0;
    c->train.adam_eps = 1e-8;
    c->train.seed = 0;
    c->train.threads = 2;
    c->train.validation_fraction = 0.1;
    c->train.patience = 0;
    c->train.schedule = NBS_SCHED_LINEAR;
    c->train.beta = 1.0;
    c->train.warmup_epochs = NBS_AUTO;
    c->train.warmup_steps = 0;
    c->train.cycles = 4;
    c->train.ramp_fraction = 0.5;
    c->train.free_bits = 0;
    c->train.grad_clip = 0;
    c->train.checkpoint_every = 10;

    c->diagnose.tau_kl = 0.1;
    c->diagnose.tau_sensitivity = 0.01;
    c->diagnose.tau_decoder_nats = 2.0;
    c->diagnose.tau_decoder_relative = 0.05;
    c->diagnose.tau_activity = 0.01;
    c->diagnose.interval = 5;
    c->diagnose.subsample = 1000;
    c->diagnose.mi_batch = 256;
    c->trajectory.enabled = 0;
    c->trajectory.k = 15;
    c->trajectory.resolution = 1.0;
    c->trajectory.n_dcs = 10;
    c->trajectory.shortcut_hops = 5;
    c->trajectory.wrap_share = 0.05;
    c->neighbors.method = NBS_KNN_AUTO;
    c->neighbors.exact_max_cells = 100000;
    c->neighbors.branching = 32;
    c->neighbors.checks = 512;
    c->neighbors.recall = 0.95;

    strcpy(c->output.dir, "nbsphere_out");
    c->output.write_h5ad = 1;
    c->output.write_variances = 0;
    c->output.write_report = 1;
    strcpy(c->output.embedding_key, "X_nbsphere");
}

static void set_layers(int *count, int *widths, const int *w, int n) {
    *count = n;
    memset(widths, 0, sizeof(int) * NBS_MAX_LAYERS);
    memcpy(widths, w, sizeof(int) * (size_t)n);
}

int nbs_config_apply_preset(nbs_config *c, const char *name, nbs_error *err) {
    nbs_model_config *m = &c->model;
    nbs_train_config *t = &c->train;
    if (!strcmp(name, "scvi")) {
        /* scvi-tools 1.x SCVI/TrainingPlan defaults: n_hidden 128, n_layers 1, n_latent 10,
         * dropout 0.1, batch norm (eps 1e-3, momentum 0.01), gene dispersion starting at
         * log theta ~ N(0, 1), NB, log1p input, Adam lr 1e-3 with weight
         * decay 1e-6 and eps 0.01, batch 128, KL warm-up over n_epochs_kl_warmup = 400, max 400 epochs. */
        m->latent = NBS_LATENT_GAUSSIAN;
        m->latent_dim = 10;
        set_layers(&m->n_encoder_layers, m->encoder_layers, (const int[]){128}, 1);
        set_layers(&m->n_decoder_layers, m->decoder_layers, (const int[]){128}, 1);
        m->dropout = 0.1;
        m->norm = NBS_NORM_BATCH;
        m->likelihood = NBS_LIK_NB;
        m->dispersion = NBS_DISP_GENE;
        m->dispersion_init = NBS_DISP_INIT_LOGNORMAL;
        m->input_transform = NBS_INPUT_LOG1P;
        t->batch_size = 128;
        t->learning_rate = 1e-3;
        t->weight_decay = 1e-6;
        t->adam_eps = 0.01;
        t->schedule = NBS_SCHED_LINEAR;
        t->beta = 1.0;
        t->epochs = 400;
        t->warmup_epochs = 400;
        t->warmup_steps = 0;
        t->validation_fraction = 0.1;
    } else if (!strcmp(name, "scphere")) {
        /* scPhere (Ding & Regev 2021) demo: vMF latent with z_dim = 2, i.e. S^2 in R^3,
         * encoder [128, 64, 32], decoder [32, 128], NB, minibatch 128, lr 1e-3, 250 epochs,
         * no KL annealing. */
        m->latent = NBS_LATENT_VMF;
        m->latent_dim = 3;
        set_layers(&m->n_encoder_layers, m->encoder_layers, (const int[]){128, 64, 32}, 3);
        set_layers(&m->n_decoder_layers, m->decoder_layers, (const int[]){32, 128}, 2);
        m->dropout = 0;
        m->norm = NBS_NORM_NONE;
        m->likelihood = NBS_LIK_NB;
        m->dispersion = NBS_DISP_GENE;
        t->batch_size = 128;
        t->learning_rate = 1e-3;
        t->epochs = 250;
        t->schedule = NBS_SCHED_CONSTANT;
        t->beta = 1.0;
    } else if (*name) {
        return nbs_error_set(err, NBS_ERR_USAGE, "unknown preset '%s'; expected scvi or scphere", name);
    }
    snprintf(c->preset, sizeof c->preset, "%s", name);
    return NBS_OK;
}

const nbs_enum_word nbs_format_words[] = {{"auto", NBS_FMT_AUTO}, {"10x-h5", NBS_FMT_10X_H5},
                                          {"h5ad", NBS_FMT_H5AD},  {"10x-mtx", NBS_FMT_10X_MTX},
                                          {"mtx", NBS_FMT_MTX},    {"tsv", NBS_FMT_TSV},
                                          {"csv", NBS_FMT_CSV},    {"loom", NBS_FMT_LOOM},
                                          {NULL, 0}};
const nbs_enum_word nbs_orientation_words[] = {{"auto", NBS_ORIENT_AUTO},
                                               {"cells_rows", NBS_ORIENT_CELLS_ROWS},
                                               {"genes_rows", NBS_ORIENT_GENES_ROWS},
                                               {NULL, 0}};
const nbs_enum_word nbs_non_integer_words[] = {
    {"error", NBS_NONINT_ERROR}, {"round", NBS_NONINT_ROUND}, {"accept", NBS_NONINT_ACCEPT}, {NULL, 0}};
const nbs_enum_word nbs_latent_words[] = {{"gaussian", NBS_LATENT_GAUSSIAN},
                                          {"vmf", NBS_LATENT_VMF},
                                          {"power_spherical", NBS_LATENT_POWER_SPHERICAL},
                                          {NULL, 0}};
const nbs_enum_word nbs_likelihood_words[] = {
    {"nb", NBS_LIK_NB}, {"zinb", NBS_LIK_ZINB}, {"poisson", NBS_LIK_POISSON}, {NULL, 0}};
/* scvi-tools spells the last two gene-cell and gene-batch: read too, written as here */
const nbs_enum_word nbs_dispersion_words[] = {{"gene", NBS_DISP_GENE},          {"gene_cell", NBS_DISP_GENE_CELL},
                                              {"gene_batch", NBS_DISP_GENE_BATCH}, {"gene-cell", NBS_DISP_GENE_CELL},
                                              {"gene-batch", NBS_DISP_GENE_BATCH}, {NULL, 0}};
const nbs_enum_word nbs_dispersion_init_words[] = {
    {"one", NBS_DISP_INIT_ONE}, {"lognormal", NBS_DISP_INIT_LOGNORMAL}, {NULL, 0}};
const nbs_enum_word nbs_norm_words[] = {
    {"none", NBS_NORM_NONE}, {"layer", NBS_NORM_LAYER}, {"batch", NBS_NORM_BATCH}, {NULL, 0}};
const nbs_enum_word nbs_input_transform_words[] = {
    {"log1p", NBS_INPUT_LOG1P}, {"log1p_cp10k", NBS_INPUT_LOG1P_CP10K}, {NULL, 0}};
/* scvi-tools' batch_representation spells the first one-hot: read too, written as here */
const nbs_enum_word nbs_covariate_embedding_words[] = {
    {"onehot", NBS_COVARIATE_ONEHOT}, {"embedding", NBS_COVARIATE_EMBEDDING}, {"one-hot", NBS_COVARIATE_ONEHOT},
    {NULL, 0}};
const nbs_enum_word nbs_knn_method_words[] = {
    {"auto", NBS_KNN_AUTO}, {"exact", NBS_KNN_EXACT}, {"approximate", NBS_KNN_APPROXIMATE}, {NULL, 0}};
const nbs_enum_word nbs_join_words[] = {{"inner", NBS_JOIN_INNER}, {"outer", NBS_JOIN_OUTER}, {NULL, 0}};
const nbs_enum_word nbs_hvg_flavor_words[] = {
    {"seurat_v3", NBS_HVG_SEURAT_V3}, {"seurat_v3_paper", NBS_HVG_SEURAT_V3_PAPER}, {NULL, 0}};
const nbs_enum_word nbs_schedule_words[] = {{"constant", NBS_SCHED_CONSTANT},
                                            {"linear", NBS_SCHED_LINEAR},
                                            {"sigmoid", NBS_SCHED_SIGMOID},
                                            {"cyclical", NBS_SCHED_CYCLICAL},
                                            {NULL, 0}};

const char *nbs_enum_word_of(const nbs_enum_word *words, int value) {
    for (; words->word; words++)
        if (words->value == value) return words->word;
    return "unknown";
}

const char *nbs_latent_word(nbs_latent_kind k) { return nbs_enum_word_of(nbs_latent_words, (int)k); }

const char *nbs_format_name(nbs_format f) { return nbs_enum_word_of(nbs_format_words, (int)f); }

int nbs_format_parse(const char *name, nbs_format *out) {
    for (const nbs_enum_word *w = nbs_format_words; name && w->word; w++)
        if (!strcasecmp(name, w->word)) {
            *out = (nbs_format)w->value;
            return 0;
        }
    return -1;
}
