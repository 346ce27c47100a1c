#include "nbsphere/config.h"

#include <string.h>

void nbs_config_defaults(nbs_config *c) {
    memset(c, 0, sizeof *c);
    c->input.format = NBS_FMT_AUTO;
    c->input.orientation = NBS_ORIENT_AUTO;
    c->input.non_integer = NBS_NONINT_ERROR;
    strcpy(c->input.feature_types, "Gene Expression");

    c->preprocess.min_counts = 0;
    c->preprocess.min_genes = 1;
    c->preprocess.min_cells = 1;
    c->preprocess.n_top_genes = 2000;
    c->preprocess.hvg_span = 0.3;

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

    strcpy(c->output.dir, "nbsphere_out");
    c->output.write_h5ad = 1;
    c->output.write_variances = 0;
    c->output.write_report = 1;
    strcpy(c->output.embedding_key, "X_nbsphere");
}
