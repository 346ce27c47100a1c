/* nbsphere command line: parses arguments, loads the pipeline and calls the modules in order.
 * Only this file prints to stdout and chooses exit codes; the exit code is the nbs_status of
 * the failure (error.h): 0 ok, 1 internal, 2 usage, 3 bad input, 4 numerical, 5 I/O, 6 memory. */
#include <dirent.h>
#include <sched.h>
#include <errno.h>
#include <gsl/gsl_rng.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nbsphere/checkpoint.h"
#include "nbsphere/error.h"
#include "nbsphere/inspect.h"
#include "nbsphere/io.h"
#include "nbsphere/json.h"
#include "nbsphere/manifest.h"
#include "nbsphere/pipeline.h"
#include "nbsphere/progress.h"
#include "nbsphere/run.h"
#include "nbsphere/simulate.h"
#ifdef NBS_MPI
#include "nbsphere/parallel.h"
#endif

/* Shared state of one invocation. */
typedef struct {
    int verbosity; /* 0 quiet, 1 normal, 2 verbose */
    nbs_progress *progress;
    char command_line[8192];
    const nbs_train_reduce *reduce; /* mpirun with more than one process: train and run; else NULL */
} cli;

typedef struct {
    const char *name;
    int (*fn)(cli *c, int argc, char **argv, nbs_error *err);
    const char *summary;
    const char *usage;
} command;

static const char EXIT_CODES[] =
    "Exit codes: 0 success, 1 internal error, 2 bad usage or pipeline, 3 bad input data,\n"
    "4 numerical failure in training, 5 file could not be read or written, 6 out of memory.\n";

static int usage_error(nbs_error *err, const char *cmd, const char *what) {
    return nbs_error_set(err, NBS_ERR_USAGE, "%s: %s (see 'nbsphere %s --help')", cmd, what, cmd);
}

/* "--name value" or "--name=value"; advances *i past what it consumed. */
static const char *opt_value(int argc, char **argv, int *i, const char *name, int *missing) {
    size_t n = strlen(name);
    const char *a = argv[*i];
    *missing = 0;
    if (strncmp(a, name, n)) return NULL;
    if (a[n] == '=') return a + n + 1;
    if (a[n] != '\0') return NULL;
    if (*i + 1 >= argc) {
        *missing = 1;
        return NULL;
    }
    return argv[++*i];
}

static int is_help(const char *a) { return !strcmp(a, "--help") || !strcmp(a, "-h"); }

static int parse_long(const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* ---- run ---- */

static const char RUN_USAGE[] =
    "usage: nbsphere run PIPELINE [--set section.key=value]... [--out DIR]\n"
    "\n"
    "Runs a pipeline file (YAML; see pipelines/reference.yaml for every key): loads the input,\n"
    "preprocesses, trains the VAE, diagnoses collapse and writes the outputs into output.dir.\n"
    "\n"
    "  --set section.key=value  override one key (repeatable), e.g. --set train.epochs=50\n"
    "                           or --set model.encoder_layers=[256,128]\n"
    "  --out DIR                output folder (same as --set output.dir=DIR)\n";

typedef struct {
    const char *sets[256];
    int n_sets;
    char out_set[NBS_PATH_MAX + 16];
} run_args;

/* Options shared by run and train; returns 1 if argv[*i] was one of them, <0 on error. */
static int common_run_opt(int argc, char **argv, int *i, run_args *r, const char *cmd, nbs_error *err) {
    int missing;
    const char *v;
    if ((v = opt_value(argc, argv, i, "--set", &missing)) || missing) {
        if (missing) return -usage_error(err, cmd, "--set needs section.key=value");
        if (r->n_sets >= 200) return -usage_error(err, cmd, "too many --set options");
        r->sets[r->n_sets++] = v;
        return 1;
    }
    if ((v = opt_value(argc, argv, i, "--out", &missing)) || missing) {
        if (missing) return -usage_error(err, cmd, "--out needs a folder");
        snprintf(r->out_set, sizeof r->out_set, "output.dir=%s", v);
        return 1;
    }
    return 0;
}

/* resume: a model file whose stored configuration is the starting point instead of a pipeline. */
static int do_run(cli *c, const char *pipeline_path, const char *resume, run_args *r, int flags,
                  nbs_error *err) {
    if (r->out_set[0]) r->sets[r->n_sets++] = r->out_set; /* --out wins over --set output.dir */
    nbs_pipeline *p = malloc(sizeof *p);
    if (!p) return nbs_error_set(err, NBS_ERR_NOMEM, "out of memory");
    int st;
    if (resume) {
        char *yaml = NULL;
        st = nbs_checkpoint_config_text(resume, &yaml, err);
        if (!st) st = nbs_pipeline_load_string(yaml, resume, NULL, r->sets, r->n_sets, flags, p, err);
        free(yaml);
    } else {
        st = nbs_pipeline_load(pipeline_path, r->sets, r->n_sets, flags, p, err);
    }
    if (!st) {
        nbs_run_options o = {c->command_line, c->progress, resume, 0, 0, NULL, NULL, c->reduce};
        st = nbs_run(p, &o, err);
        char shown[NBS_PATH_MAX];
        if (!st && c->verbosity >= 1)
            fprintf(stderr, "nbsphere: outputs in %s\n",
                    realpath(p->config.output.dir, shown) ? shown : p->config.output.dir);
    }
    free(p);
    return st;
}

static int cmd_run(cli *c, int argc, char **argv, nbs_error *err) {
    run_args r = {0};
    const char *pipeline = NULL;
    for (int i = 0; i < argc; i++) {
        int k = common_run_opt(argc, argv, &i, &r, "run", err);
        if (k < 0) return -k;
        if (k) continue;
        if (argv[i][0] == '-' && argv[i][1]) return usage_error(err, "run", "unknown option");
        if (pipeline) return usage_error(err, "run", "more than one pipeline file given");
        pipeline = argv[i];
    }
    if (!pipeline) return usage_error(err, "run", "no pipeline file given");
    return do_run(c, pipeline, NULL, &r, NBS_PIPELINE_REQUIRE_INPUT, err);
}

/* ---- train ---- */

static const char TRAIN_USAGE[] =
    "usage: nbsphere train DATA [--pipeline FILE] [options] [--set section.key=value]...\n"
    "                     [--out DIR]\n"
    "       nbsphere train --resume MODEL [DATA] [--epochs N] [--set ...] [--out DIR]\n"
    "\n"
    "Trains on a count matrix without writing a pipeline file; every pipeline key is available\n"
    "through --set, and a pipeline file can supply the rest.\n"
    "\n"
    "  --resume MODEL      continue from a checkpoint.h5 or model.h5 with the configuration\n"
    "                      stored in it (same input and preprocessing; raise --epochs to go on\n"
    "                      after a finished run); outputs go to its output folder unless --out\n"
    "  --pipeline FILE     start from this pipeline's configuration (its input is replaced)\n"
    "  --format F          auto | 10x-h5 | h5ad | loom | 10x-mtx | mtx | tsv | csv\n"
    "  --latent K          gaussian | vmf | power_spherical\n"
    "  --latent-dim D      latent dimension\n"
    "  --epochs N          training epochs\n"
    "  --batch-size N      cells per minibatch\n"
    "  --lr X              learning rate\n"
    "  --seed S            random seed\n"
    "  --threads T         threads\n"
    "  --preset NAME       scvi | scphere\n"
    "  --set section.key=value, --out DIR   as for 'nbsphere run'\n";

static int cmd_train(cli *c, int argc, char **argv, nbs_error *err) {
    static const char *const sugar[][2] = {
        {"--format", "input.format"},        {"--latent", "model.latent"},
        {"--latent-dim", "model.latent_dim"}, {"--epochs", "train.epochs"},
        {"--batch-size", "train.batch_size"}, {"--lr", "train.learning_rate"},
        {"--seed", "train.seed"},            {"--threads", "train.threads"},
        {"--preset", "preset"}};
    static char buf[16][NBS_PATH_MAX + 64];
    int nbuf = 0;
    run_args r = {0};
    const char *data = NULL, *pipeline = NULL, *resume = NULL;
    const char *first[16];
    int n_first = 0;
    for (int i = 0; i < argc; i++) {
        int k = common_run_opt(argc, argv, &i, &r, "train", err);
        if (k < 0) return -k;
        if (k) continue;
        int missing, hit = 0;
        const char *v = opt_value(argc, argv, &i, "--pipeline", &missing);
        if (v || missing) {
            if (missing) return usage_error(err, "train", "--pipeline needs a file");
            pipeline = v;
            continue;
        }
        v = opt_value(argc, argv, &i, "--resume", &missing);
        if (v || missing) {
            if (missing) return usage_error(err, "train", "--resume needs a checkpoint or model file");
            resume = v;
            continue;
        }
        for (size_t s = 0; s < sizeof sugar / sizeof sugar[0] && !hit; s++) {
            v = opt_value(argc, argv, &i, sugar[s][0], &missing);
            if (missing) {
                char m[128];
                snprintf(m, sizeof m, "%s needs a value", sugar[s][0]);
                return usage_error(err, "train", m);
            }
            if (v) {
                if (nbuf >= 16) return usage_error(err, "train", "too many options");
                snprintf(buf[nbuf], sizeof buf[0], "%s=%s", sugar[s][1], v);
                first[n_first++] = buf[nbuf++];
                hit = 1;
            }
        }
        if (hit) continue;
        if (argv[i][0] == '-' && argv[i][1]) return usage_error(err, "train", "unknown option");
        if (data) return usage_error(err, "train", "more than one data file given");
        data = argv[i];
    }
    if (!data && !resume) return usage_error(err, "train", "no data file given");
    if (resume && pipeline) return usage_error(err, "train", "--resume and --pipeline exclude each other");
    /* data and the short options come before the --set ones, so --set has the last word */
    static char in[NBS_PATH_MAX + 16];
    snprintf(in, sizeof in, "input.path=%s", data ? data : "");
    run_args all = r;
    all.n_sets = 0;
    if (data) all.sets[all.n_sets++] = in;
    for (int i = 0; i < n_first; i++) all.sets[all.n_sets++] = first[i];
    for (int i = 0; i < r.n_sets; i++) all.sets[all.n_sets++] = r.sets[i];
    return do_run(c, pipeline, resume, &all, NBS_PIPELINE_REQUIRE_INPUT, err);
}

/* ---- simulate ---- */

static const char SIMULATE_USAGE[] =
    "usage: nbsphere simulate --out DIR [--cells N] [--genes G] [--branches B] [--seed S]\n"
    "                         [--depth D] [--batches K] [--format mtx,10x-h5,h5ad]\n"
    "                         [--trajectory tree|long-branches]\n"
    "\n"
    "Writes a synthetic count dataset along a branching trajectory (a root segment and B\n"
    "branches; negative-binomial noise; log-normal library sizes) into DIR:\n"
    "  sim_mtx/ (10x MTX folder: matrix.mtx.gz, features.tsv.gz, barcodes.tsv.gz),\n"
    "  sim_10x.h5 (Cell Ranger v3 HDF5) and sim.h5ad (AnnData, with obs branch and pseudotime),\n"
    "  as --format asks, and cell_labels.tsv (barcode, branch, pseudotime).\n"
    "With --batches K > 1 each cell falls into one of K batches uniformly at random; a batch\n"
    "multiplies every gene's mean by its own log-normal factor (sdlog 0.5) and shifts the log\n"
    "library size (normal, sd 0.3); the batch (batch1, ...) is an extra column of\n"
    "cell_labels.tsv and of the h5ad's obs, for input.batch_key: batch.\n"
    "--trajectory long-branches: 2 branches (unless --branches) split at pseudotime 0.1, half\n"
    "the genes of each branch switching on in transient waves one after another, so the\n"
    "branches are long curves in expression whose tips are far apart (default: tree, where\n"
    "each branch gene ramps once and stays).\n"
    "\n"
    "  --cells N      cells (default 2000)        --genes G     genes (default 1000)\n"
    "  --branches B   branches (default 3)        --seed S      random seed (default 0)\n"
    "  --depth D      median UMIs per cell (default 600)\n"
    "  --batches K    batches with batch effects (default 1: none), at most 100 and --cells\n"
    "  --format LIST  comma-separated output formats: mtx (default), 10x-h5, h5ad\n"
    "  --trajectory S the shape: tree (default) or long-branches\n"
    "The same seed and sizes give byte-identical files.\n";

enum { SIM_H5 = 1, SIM_H5AD = 2, SIM_MTX = 4 };

static int parse_sim_formats(const char *list, int *out, nbs_error *err) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    *out = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (!strcmp(t, "mtx") || !strcmp(t, "10x-mtx")) *out |= SIM_MTX;
        else if (!strcmp(t, "10x-h5") || !strcmp(t, "h5")) *out |= SIM_H5;
        else if (!strcmp(t, "h5ad")) *out |= SIM_H5AD;
        else
            return nbs_error_set(err, NBS_ERR_USAGE,
                                 "simulate: --format: unknown format '%s'; expected a comma-separated "
                                 "list of: mtx, 10x-h5, h5ad", t);
    }
    if (!*out) return nbs_error_set(err, NBS_ERR_USAGE, "simulate: --format is empty; expected mtx, 10x-h5 or h5ad");
    return NBS_OK;
}

static int sim_write(const nbs_sim_data *d, const char *dir, int formats, nbs_error *err) {
    char path[NBS_PATH_MAX + 32];
    int st = nbs_sim_write_labels(d, dir, err);
    if (!st && (formats & SIM_MTX)) {
        snprintf(path, sizeof path, "%s/sim_mtx", dir);
        st = nbs_sim_write_mtx_dir(d, path, err);
    }
    if (!st && (formats & SIM_H5)) {
        snprintf(path, sizeof path, "%s/sim_10x.h5", dir);
        st = nbs_io_write_10x_h5(path, d->counts, err);
    }
    if (!st && (formats & SIM_H5AD)) {
        /* the truth goes into obs of a temporary file, which is then renamed into place */
        char tmp[NBS_PATH_MAX];
        snprintf(path, sizeof path, "%s/sim.h5ad", dir);
        nbs_io_tmp_name(path, tmp);
        st = nbs_io_write_h5ad(tmp, NULL, d->counts, 0, NULL, NULL, err);
        if (!st) st = nbs_sim_add_h5ad_obs(d, tmp, err);
        st = nbs_io_commit_or_discard(tmp, path, st, err);
    }
    return st;
}

static int cmd_simulate(cli *c, int argc, char **argv, nbs_error *err) {
    nbs_sim_config sc;
    nbs_sim_defaults(&sc);
    const char *out = NULL;
    unsigned long long seed = 0;
    int formats = SIM_MTX, branches = 0;
    for (int i = 0; i < argc; i++) {
        int missing;
        const char *v;
        long long n;
        const char *name = argv[i];
        if ((v = opt_value(argc, argv, &i, "--out", &missing))) out = v;
        else if ((v = opt_value(argc, argv, &i, "--cells", &missing))) {
            if (parse_long(v, 1, 10000000, &n)) return usage_error(err, "simulate", "--cells: expected an integer from 1 to 10000000");
            sc.n_cells = n;
        } else if ((v = opt_value(argc, argv, &i, "--genes", &missing))) {
            if (parse_long(v, 2, 1000000, &n)) return usage_error(err, "simulate", "--genes: expected an integer from 2 to 1000000");
            sc.n_genes = n;
        } else if ((v = opt_value(argc, argv, &i, "--branches", &missing))) {
            if (parse_long(v, 1, 100, &n)) return usage_error(err, "simulate", "--branches: expected an integer from 1 to 100");
            branches = (int)n;
        } else if ((v = opt_value(argc, argv, &i, "--trajectory", &missing))) {
            if (!strcmp(v, "long-branches")) nbs_sim_long_branches(&sc);
            else if (strcmp(v, "tree"))
                return usage_error(err, "simulate", "--trajectory: expected tree or long-branches");
        } else if ((v = opt_value(argc, argv, &i, "--seed", &missing))) {
            if (parse_long(v, 0, (long long)1 << 62, &n)) return usage_error(err, "simulate", "--seed: expected a non-negative integer");
            seed = (unsigned long long)n;
        } else if ((v = opt_value(argc, argv, &i, "--depth", &missing))) {
            if (parse_long(v, 1, 100000000, &n)) return usage_error(err, "simulate", "--depth: expected a positive integer");
            sc.depth = (double)n;
        } else if ((v = opt_value(argc, argv, &i, "--batches", &missing))) {
            if (parse_long(v, 1, 100, &n)) return usage_error(err, "simulate", "--batches: expected an integer from 1 to 100");
            sc.n_batches = (int)n;
        } else if ((v = opt_value(argc, argv, &i, "--format", &missing))) {
            int st = parse_sim_formats(v, &formats, err);
            if (st) return st;
        } else if (missing) {
            char m[128];
            snprintf(m, sizeof m, "%s needs a value", name);
            return usage_error(err, "simulate", m);
        } else {
            return usage_error(err, "simulate", "unknown argument");
        }
    }
    if (!out) return usage_error(err, "simulate", "--out DIR is required");
    if (branches) sc.n_branches = branches; /* after --trajectory, whatever the order */
    if (sc.n_batches > sc.n_cells) {
        char m[128];
        snprintf(m, sizeof m, "--batches: %d batches for %lld cells; expected at most one batch per cell",
                 sc.n_batches, (long long)sc.n_cells);
        return usage_error(err, "simulate", m);
    }
    nbs_pipeline probe;
    memset(&probe, 0, sizeof probe);
    snprintf(probe.config.output.dir, sizeof probe.config.output.dir, "%s", out);
    snprintf(probe.output_origin, sizeof probe.output_origin, "--out %s", out);
    int st = nbs_pipeline_prepare_output(&probe, err);
    if (st) return st;
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    if (!rng) return nbs_error_set(err, NBS_ERR_NOMEM, "out of memory");
    gsl_rng_set(rng, (unsigned long)seed);
    nbs_progress_stage(c->progress, "simulate");
    nbs_sim_data d;
    st = nbs_simulate(&sc, rng, &d, err);
    gsl_rng_free(rng);
    if (st) return st;
    st = sim_write(&d, out, formats, err);
    if (!st) {
        char msg[256];
        char batches[32] = "";
        if (sc.n_batches > 1) snprintf(batches, sizeof batches, ", %d batches", sc.n_batches);
        snprintf(msg, sizeof msg, "%lld cells x %lld genes, %lld nonzeros, %d branches%s, seed %llu",
                 (long long)d.counts->n_cells, (long long)d.counts->n_genes,
                 (long long)d.counts->nnz, sc.n_branches, batches, seed);
        nbs_progress_done(c->progress, msg);
    }
    nbs_sim_data_free(&d);
    return st;
}

/* ---- embed ---- */

static const char EMBED_USAGE[] =
    "usage: nbsphere embed MODEL DATA [--out DIR] [--format F] [--layer L] [--genome G]\n"
    "                     [--orientation O] [--labels FILE] [--adapt [--adapt-epochs N]]\n"
    "                     [--set section.key=value]...\n"
    "\n"
    "Embeds the cells of DATA with a trained model (the model.h5 a run wrote). Genes are matched\n"
    "to the model's by name and put in its order; genes the data lack count as zero (a warning\n"
    "says how many). No cell is filtered. Writes embedding.tsv, embedding.h5ad (for an .h5ad\n"
    "input: a copy of it with obsm['X_nbsphere'] added) and manifest.json into DIR.\n"
    "Several samples instead of DATA: --set 'input.samples={ctrl: a.h5, stim: b.h5ad}' (cells\n"
    "stacked, barcodes suffixed -<sample>; a model with the 'sample' batch must know the names).\n"
    "\n"
    "  --out DIR        output folder (default nbsphere_embed)\n"
    "  --format F       auto | 10x-h5 | h5ad | loom | 10x-mtx | mtx | tsv | csv (default auto)\n"
    "  --layer L        h5ad: \"\" = X, raw = raw/X, otherwise layers/L\n"
    "  --genome G       10x v2 HDF5: the genome group to read\n"
    "  --orientation O  bare .mtx and tables: cells_rows or genes_rows\n"
    "  --threads T      threads (default 2); the embedding is the same with any number\n"
    "  --labels FILE    a table with a barcode column holding the model's covariate columns\n"
    "                   (its batch, ...), for data that do not have them in an .h5ad's obs\n"
    "  --adapt          add the categories of DATA the model was not trained with (a new batch)\n"
    "                   to the model, as scArches does: only their new weights train, on the\n"
    "                   cells that hold them, every other weight frozen; writes the grown\n"
    "                   model.h5 and its training_log.tsv too. Training options from --set\n"
    "                   train.seed, train.learning_rate, train.batch_size, ...\n"
    "  --adapt-epochs N epochs of that training (default 200, scvi-tools' query training)\n"
    "  --set output.write_variances=true   posterior variances as extra TSV columns\n";

static const char DIAGNOSE_USAGE[] =
    "usage: nbsphere diagnose MODEL DATA [--out DIR] [--labels FILE] [--label-column C]\n"
    "                        [--format F] [--layer L] [--genome G] [--set section.key=value]...\n"
    "\n"
    "Computes the posterior-collapse report of a trained model (the model.h5 a run wrote) on the\n"
    "cells of DATA (genes matched to the model's by name): per latent dimension the KL, the\n"
    "activity and the decoder's sensitivity, a verdict per dimension and for the model, I(x;z),\n"
    "with the training curves stored in the model. Writes collapse_report.json,\n"
    "collapse_dimensions.tsv, report.html, embedding.tsv and manifest.json into DIR.\n"
    "DATA may be replaced by --set 'input.samples={name: file, ...}', as for 'nbsphere embed'.\n"
    "The thresholds are the model's diagnose section unless --set overrides them.\n"
    "\n"
    "  --out DIR           output folder (default nbsphere_diagnose)\n"
    "  --labels FILE       a table with a barcode column, to colour the embedding and score it,\n"
    "                      and holding the model's covariate columns, if it has covariates\n"
    "  --label-column C    the labels column (of FILE, or of the .h5ad's obs)\n"
    "  --format, --layer, --genome, --orientation, --threads   as for 'nbsphere embed'\n"
    "  --set diagnose.tau_kl=0.05   e.g. other thresholds (see pipelines/reference.yaml)\n";

static const char TRAJECTORY_USAGE[] =
    "usage: nbsphere trajectory MODEL|EMBEDDING DATA [--out DIR] [--labels FILE]\n"
    "                          [--label-column C] [--root BARCODE | --root-label L] [--k K]\n"
    "                          [--resolution R] [--n-dcs N] [--use-rep KEY] [--metric M]\n"
    "                          [--format F] [--layer L] [--genome G] [--set section.key=value]...\n"
    "\n"
    "Embeds the cells of DATA with a trained model (as 'nbsphere diagnose', whose report it\n"
    "writes too), then runs the trajectory stage on the embedding: the k-NN graph (Euclidean,\n"
    "or cosine on the sphere) with scanpy's gauss kernel, Leiden clusters, PAGA connectivities\n"
    "between them, a diffusion map and diffusion pseudotime (DPT) from a root cell, and a\n"
    "force-directed layout. embedding.h5ad gets obsp['distances'], obsp['connectivities'],\n"
    "uns['neighbors'], obs['leiden'], uns['paga'], obsm['X_diffmap'], uns['diffmap_evals'],\n"
    "uns['iroot'] and obs['dpt_pseudotime'], as scanpy writes them; report.html a trajectory\n"
    "section, collapse_report.json a 'trajectory' object.\n"
    "An EMBEDDING made elsewhere instead of a model (a file ending in .h5ad: its obsm entry;\n"
    ".tsv, .csv or .txt: a barcode column, then one column per dimension, as nbsphere's\n"
    "embedding.tsv) goes through the same stage; DATA is preprocessed as for training (its\n"
    "genes are the wrap-around check's reference) and every cell it keeps must be in the\n"
    "embedding. Outputs: embedding.h5ad, report.html (trajectory only), trajectory.json.\n"
    "\n"
    "  --out DIR           output folder (default nbsphere_trajectory)\n"
    "  --labels FILE       a table with a barcode column, for the labels (and covariates)\n"
    "  --label-column C    the labels column (of FILE, or of the .h5ad's obs)\n"
    "  --root BARCODE      the root cell of the pseudotime\n"
    "  --root-label L      or: the cell of label L at the end of the first diffusion component\n"
    "                      where the cells of L lie (without either: the smallest DC1)\n"
    "  --k K               neighbours per cell, the cell itself included (default 15)\n"
    "  --resolution R      Leiden resolution (default 1)\n"
    "  --n-dcs N           diffusion components, the stationary one included (default 10)\n"
    "  --use-rep KEY       EMBEDDING .h5ad: its obsm key (default X_nbsphere), e.g. X_pca, X_scVI\n"
    "  --metric M          EMBEDDING: euclidean or cosine (default: what the file says, from\n"
    "                      nbsphere's uns or a kappa column; else euclidean, with a note)\n"
    "  --format, --layer, --genome, --orientation, --threads   as for 'nbsphere embed'\n";

/* An embedding for `trajectory` rather than a model file: an .h5ad or a table, by its name. */
static int is_embedding_file(const char *path) {
    static const char *const ends[] = {".h5ad", ".h5ad.gz", ".tsv", ".tsv.gz", ".csv", ".csv.gz", ".txt", ".txt.gz"};
    const size_t n = strlen(path);
    for (size_t e = 0; e < sizeof ends / sizeof *ends; e++) {
        const size_t k = strlen(ends[e]);
        if (n > k && !strcasecmp(path + n - k, ends[e])) return 1;
    }
    return 0;
}

/* embed, diagnose and trajectory: MODEL DATA plus input options; diagnose and trajectory start
 * from the model's stored configuration (its thresholds), with the input section reset to DATA. */
enum { MODE_EMBED, MODE_DIAGNOSE, MODE_TRAJECTORY };
static int model_on_data(cli *c, int argc, char **argv, int mode, nbs_error *err) {
    const char *cmd = mode == MODE_TRAJECTORY ? "trajectory" : mode == MODE_DIAGNOSE ? "diagnose" : "embed";
    const int diagnose = mode != MODE_EMBED; /* from the model's configuration */
    run_args r = {0};
    enum { MAX_OPTS = 16 };
    static char buf[MAX_OPTS + 2][NBS_PATH_MAX + 32]; /* the options, then input.path and output.dir */
    int nb = 0;
    const char *files[2] = {NULL, NULL};
    int n_files = 0;
    static const char *const opts[][2] = {{"--format", "input.format"},
                                          {"--layer", "input.layer"},
                                          {"--genome", "input.genome"},
                                          {"--orientation", "input.orientation"},
                                          {"--threads", "train.threads"},
                                          {"--labels", "input.labels_path"},
                                          {"--label-column", "input.label_column"},
                                          {"--root", "trajectory.root"},
                                          {"--root-label", "trajectory.root_label"},
                                          {"--k", "trajectory.k"},
                                          {"--resolution", "trajectory.resolution"},
                                          {"--n-dcs", "trajectory.n_dcs"}};
    /* embed: labels only for the covariates */
    const size_t n_opts = mode == MODE_TRAJECTORY ? 12 : diagnose ? 7 : 6;
    int adapt = 0;
    long long adapt_epochs = -1; /* not given */
    const char *use_rep = NULL, *metric = NULL; /* trajectory of a given embedding */
    for (int i = 0; i < argc; i++) {
        int k = common_run_opt(argc, argv, &i, &r, cmd, err);
        if (k < 0) return -k;
        if (k) continue;
        int hit = 0, missing;
        if (mode == MODE_TRAJECTORY) {
            const char *v = opt_value(argc, argv, &i, "--use-rep", &missing);
            if (missing) return usage_error(err, cmd, "--use-rep needs an obsm key, e.g. X_pca");
            if (v) {
                use_rep = v;
                continue;
            }
            v = opt_value(argc, argv, &i, "--metric", &missing);
            if (missing || (v && strcmp(v, "euclidean") && strcmp(v, "cosine")))
                return usage_error(err, cmd, "--metric takes euclidean or cosine");
            if (v) {
                metric = v;
                continue;
            }
        }
        if (!diagnose && !strcmp(argv[i], "--adapt")) {
            adapt = 1;
            continue;
        }
        const char *v = diagnose ? NULL : opt_value(argc, argv, &i, "--adapt-epochs", &missing);
        if (!diagnose && (v || missing)) {
            if (missing || parse_long(v, 1, 1000000, &adapt_epochs))
                return usage_error(err, cmd, "--adapt-epochs needs a whole number of epochs from 1 to 1000000");
            continue;
        }
        for (size_t o = 0; o < n_opts && !hit; o++) {
            const char *v = opt_value(argc, argv, &i, opts[o][0], &missing);
            if (missing) {
                char m[96];
                snprintf(m, sizeof m, "%s needs a value", opts[o][0]);
                return usage_error(err, cmd, m);
            }
            if (v) {
                if (nb == MAX_OPTS) return usage_error(err, cmd, "too many options");
                snprintf(buf[nb], sizeof buf[0], "%s=%s", opts[o][1], v);
                r.sets[r.n_sets++] = buf[nb++];
                hit = 1;
            }
        }
        if (hit) continue;
        if (argv[i][0] == '-' && argv[i][1]) return usage_error(err, cmd, "unknown option");
        if (n_files == 2)
            return usage_error(err, cmd, mode == MODE_TRAJECTORY ? "expected two files, MODEL (or EMBEDDING) and DATA"
                                                                 : "expected two files, MODEL and DATA");
        files[n_files++] = argv[i];
    }
    /* several samples instead of DATA: --set input.samples={name: path, ...} */
    int samples = 0;
    for (int i = 0; i < r.n_sets; i++) samples |= !strncmp(r.sets[i], "input.samples=", 14);
    if (n_files < 2 && !(samples && n_files == 1))
        return usage_error(err, cmd, "expected two files, MODEL and DATA (or MODEL and --set input.samples=...)");
    if (adapt_epochs > 0 && !adapt) return usage_error(err, cmd, "--adapt-epochs is for --adapt");
    /* an embedding (.h5ad obsm, or a table) instead of a model: the data's own defaults */
    const int given = mode == MODE_TRAJECTORY && is_embedding_file(files[0]);
    if ((use_rep || metric) && !given)
        return usage_error(err, cmd, "--use-rep and --metric are for an embedding (.h5ad, .tsv, .csv), not a model");
    /* the data first, so that the options and --set refine them */
    run_args all = {0};
    snprintf(buf[nb], sizeof buf[0], "input.path=%s", files[1] ? files[1] : "");
    all.sets[all.n_sets++] = buf[nb];
    snprintf(buf[nb + 1], sizeof buf[0], "output.dir=nbsphere_%s", cmd);
    all.sets[all.n_sets++] = buf[nb + 1];
    for (int i = 0; i < r.n_sets; i++) all.sets[all.n_sets++] = r.sets[i];
    if (r.out_set[0]) all.sets[all.n_sets++] = r.out_set;
    nbs_pipeline *p = malloc(sizeof *p);
    if (!p) return nbs_error_set(err, NBS_ERR_NOMEM, "out of memory");
    int st;
    if (diagnose && !given) {
        char *yaml = NULL;
        st = nbs_checkpoint_config_text(files[0], &yaml, err);
        if (!st) st = nbs_pipeline_load_string(yaml, files[0], NULL, NULL, 0, NBS_PIPELINE_STORED, p, err);
        free(yaml);
        if (!st) { /* the model's input section described the training data, not DATA */
            nbs_config defaults;
            nbs_config_defaults(&defaults);
            p->config.input = defaults.input;
        }
        for (int i = 0; !st && i < all.n_sets; i++) st = nbs_pipeline_set(p, all.sets[i], err);
    } else {
        st = nbs_pipeline_load(NULL, all.sets, all.n_sets, NBS_PIPELINE_REQUIRE_INPUT, p, err);
    }
    if (!st) {
        nbs_run_options o = {c->command_line, c->progress, NULL, adapt, adapt_epochs > 0 ? (int)adapt_epochs : 200,
                             use_rep, metric, NULL};
        st = given                   ? nbs_run_trajectory_embedding(files[0], p, &o, err)
             : mode == MODE_TRAJECTORY ? nbs_run_trajectory(files[0], p, &o, err)
             : diagnose              ? nbs_run_diagnose(files[0], p, &o, err)
                                     : nbs_run_embed(files[0], p, &o, err);
        if (!st && c->verbosity >= 1) fprintf(stderr, "nbsphere: outputs in %s\n", p->config.output.dir);
    }
    free(p);
    return st;
}

static int cmd_embed(cli *c, int argc, char **argv, nbs_error *err) {
    return model_on_data(c, argc, argv, MODE_EMBED, err);
}
static int cmd_diagnose(cli *c, int argc, char **argv, nbs_error *err) {
    return model_on_data(c, argc, argv, MODE_DIAGNOSE, err);
}
static int cmd_trajectory(cli *c, int argc, char **argv, nbs_error *err) {
    return model_on_data(c, argc, argv, MODE_TRAJECTORY, err);
}

/* ---- inspect ---- */

static const char INSPECT_USAGE[] =
    "usage: nbsphere inspect FILE [--json] [--format F] [--layer L] [--genome G]\n"
    "                       [--orientation cells_rows|genes_rows]\n"
    "\n"
    "Reads a count matrix and prints what it holds: format, cells, genes, nonzeros, density,\n"
    "count range, whether counts are integers, library-size quantiles and how the file is\n"
    "oriented. --json prints the same as one JSON object for scripts.\n"
    "\n"
    "  --format F       auto | 10x-h5 | h5ad | loom | 10x-mtx | mtx | tsv | csv (default auto)\n"
    "  --layer L        h5ad: \"\" = X, raw = raw/X, otherwise layers/L\n"
    "  --genome G       10x v2 HDF5: the genome group to read\n"
    "  --orientation O  bare .mtx: cells_rows or genes_rows (default: the 10x layout)\n";

static void print_stats_text(const char *path, nbs_format f, const nbs_matrix *m, const nbs_inspect_stats *s) {
    printf("file          %s\n", path);
    printf("format        %s\n", nbs_format_name(f));
    printf("shape         %lld cells x %lld genes, %lld nonzeros\n", (long long)m->n_cells,
           (long long)m->n_genes, (long long)m->nnz);
    printf("density       %.4f (%.1f %% zeros)\n", s->density, 100.0 * (1 - s->density));
    printf("counts        %g to %g (nonzero entries), %s\n", s->count_min, s->count_max,
           m->values_are_integer ? "all integers" : "not all integers");
    printf("library size  min %g, 5%% %g, 25%% %g, median %g, 75%% %g, 95%% %g, max %g\n", s->library[0],
           s->library[1], s->library[2], s->library[3], s->library[4], s->library[5], s->library[6]);
    printf("empty         %lld cell%s, %lld gene%s without any count\n", (long long)s->empty_cells,
           s->empty_cells == 1 ? "" : "s", (long long)s->empty_genes, s->empty_genes == 1 ? "" : "s");
    printf("orientation   %s\n", s->orientation);
    printf("first names   cell %s, gene %s (%s)\n", m->n_cells ? m->barcodes[0] : "-",
           m->n_genes ? m->gene_names[0] : "-", m->n_genes ? m->gene_ids[0] : "-");
}

static void print_stats_json(const char *path, nbs_format f, const nbs_matrix *m, const nbs_inspect_stats *s) {
    static const char *const quantiles[7] = {"min", "q05", "q25", "median", "q75", "q95", "max"};
    FILE *o = stdout;
    fputs("{\n", o);
    nbs_json_key(o, 2, "file");
    nbs_json_string(o, path);
    fputs(",\n", o);
    nbs_json_key(o, 2, "format");
    nbs_json_string(o, nbs_format_name(f));
    fprintf(o, ",\n  \"cells\": %lld,\n  \"genes\": %lld,\n  \"nonzeros\": %lld,\n", (long long)m->n_cells,
            (long long)m->n_genes, (long long)m->nnz);
    nbs_json_key(o, 2, "density");
    nbs_json_number(o, s->density, 6);
    fputs(",\n", o);
    nbs_json_key(o, 2, "count_min");
    nbs_json_number(o, s->count_min, 6);
    fputs(",\n", o);
    nbs_json_key(o, 2, "count_max");
    nbs_json_number(o, s->count_max, 6);
    fprintf(o, ",\n  \"integer\": %s,\n", m->values_are_integer ? "true" : "false");
    nbs_json_key(o, 2, "library_size");
    for (int q = 0; q < 7; q++) {
        fputs(q ? ", " : "{", o);
        nbs_json_key(o, 0, quantiles[q]);
        nbs_json_number(o, s->library[q], 6);
    }
    fprintf(o, "},\n  \"empty_cells\": %lld,\n  \"empty_genes\": %lld,\n", (long long)s->empty_cells,
            (long long)s->empty_genes);
    nbs_json_key(o, 2, "orientation");
    nbs_json_string(o, s->orientation);
    fputs("\n}\n", o);
}

static int cmd_inspect(cli *c, int argc, char **argv, nbs_error *err) {
    (void)c;
    run_args r = {0};
    static char buf[5][NBS_PATH_MAX + 32];
    int json = 0, nb = 0;
    const char *file = NULL;
    static const char *const opts[][2] = {{"--format", "input.format"},
                                          {"--layer", "input.layer"},
                                          {"--genome", "input.genome"},
                                          {"--orientation", "input.orientation"}};
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            json = 1;
            continue;
        }
        int hit = 0, missing;
        for (size_t k = 0; k < sizeof opts / sizeof opts[0] && !hit; k++) {
            const char *v = opt_value(argc, argv, &i, opts[k][0], &missing);
            if (missing) {
                char m[96];
                snprintf(m, sizeof m, "%s needs a value", opts[k][0]);
                return usage_error(err, "inspect", m);
            }
            if (v) {
                snprintf(buf[nb], sizeof buf[0], "%s=%s", opts[k][1], v);
                r.sets[r.n_sets++] = buf[nb++];
                hit = 1;
            }
        }
        if (hit) continue;
        if (argv[i][0] == '-' && argv[i][1]) return usage_error(err, "inspect", "unknown option");
        if (file) return usage_error(err, "inspect", "more than one file given");
        file = argv[i];
    }
    if (!file) return usage_error(err, "inspect", "no file given");
    snprintf(buf[nb], sizeof buf[0], "input.path=%s", file);
    r.sets[r.n_sets++] = buf[nb];
    nbs_pipeline *p = malloc(sizeof *p);
    if (!p) return nbs_error_set(err, NBS_ERR_NOMEM, "out of memory");
    int st = nbs_pipeline_load(NULL, r.sets, r.n_sets, NBS_PIPELINE_REQUIRE_INPUT, p, err);
    nbs_matrix *m = NULL;
    nbs_format f = NBS_FMT_AUTO;
    if (!st) {
        /* inspect describes what is there: non-integer values are reported, not refused */
        if (p->config.input.non_integer == NBS_NONINT_ERROR) p->config.input.non_integer = NBS_NONINT_ACCEPT;
        st = nbs_run_read_input(&p->config.input, &f, &m, err);
    }
    nbs_inspect_stats s;
    if (!st) st = nbs_inspect_matrix(m, f, p->config.input.orientation, &s, err);
    if (!st) {
        if (json) print_stats_json(file, f, m, &s);
        else print_stats_text(file, f, m, &s);
    }
    nbs_matrix_free(m);
    free(p);
    return st;
}

/* ---- dispatch ---- */

static const command COMMANDS[] = {
    {"run", cmd_run, "run a pipeline file end to end", RUN_USAGE},
    {"train", cmd_train, "train on a data file with options instead of a pipeline", TRAIN_USAGE},
    {"embed", cmd_embed, "embed the cells of a data file with a trained model", EMBED_USAGE},
    {"diagnose", cmd_diagnose, "posterior-collapse report of a trained model on a data file", DIAGNOSE_USAGE},
    {"trajectory", cmd_trajectory, "clusters, PAGA, diffusion map and pseudotime of a model's embedding",
     TRAJECTORY_USAGE},
    {"inspect", cmd_inspect, "describe a count matrix file (shape, sparsity, counts, library sizes)",
     INSPECT_USAGE},
    {"simulate", cmd_simulate, "write a synthetic branching-trajectory dataset", SIMULATE_USAGE},
};
#define N_COMMANDS ((int)(sizeof COMMANDS / sizeof COMMANDS[0]))

static void print_usage(FILE *f) {
    fprintf(f,
            "usage: nbsphere [--quiet | --verbose] COMMAND [options]\n"
            "       nbsphere --version | --help | COMMAND --help\n\n"
            "Negative-binomial VAEs with Gaussian or hyperspherical latents for single-cell counts,\n"
            "with a per-dimension report of posterior collapse.\n\nCommands:\n");
    for (int i = 0; i < N_COMMANDS; i++) fprintf(f, "  %-10s %s\n", COMMANDS[i].name, COMMANDS[i].summary);
    fprintf(f, "\nOptions:\n  --quiet    only errors and warnings\n  --verbose  more detail\n"
               "  --version  versions of nbsphere and its libraries\n\n%s", EXIT_CODES);
}

/* This process's threads that are running or runnable (OpenBLAS's, spinning as it starts, too). */
static int own_runnable_threads(void) {
    DIR *d = opendir("/proc/self/task");
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        char path[300], line[512];
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "/proc/self/task/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        /* the state follows the command name's last ')': the name may hold spaces and ')' */
        const char *close = fgets(line, sizeof line, f) ? strrchr(line, ')') : NULL;
        char state = 0;
        if (close && sscanf(close + 1, " %c", &state) == 1 && state == 'R') n++;
        fclose(f);
    }
    if (d) closedir(d);
    return n;
}

/* Tasks of other programs running now: the fewest of /proc/loadavg's runnable count, less this
 * process's, over ten readings half a millisecond apart (a task that runs all the time is in
 * each; a short one, such as a shell's fork, is not); -1 if unknown. */
static int other_runnable_tasks(void) {
    int fewest = -1;
    for (int k = 0; k < 10; k++) {
        FILE *f = fopen("/proc/loadavg", "r");
        int running = -1, total;
        if (!f) return -1;
        if (fscanf(f, "%*s %*s %*s %d/%d", &running, &total) != 2) running = -1;
        fclose(f);
        if (running < 1) return -1;
        const int others = running - own_runnable_threads();
        if (fewest < 0 || others < fewest) fewest = others < 0 ? 0 : others;
        usleep(500);
    }
    return fewest;
}

/* A positive integer environment variable, or fallback. */
static long env_count(const char *name, long fallback) {
    const char *v = getenv(name);
    char *end;
    const long n = v ? strtol(v, &end, 10) : 0;
    return v && end != v && n > 0 ? n : fallback;
}

/* How idle OpenMP workers wait is read once, when the program loads (nbs_omp_wait_vars). So
 * unless the user chose (one of those variables), nbsphere restarts itself once with a choice.
 * Workers that sleep at once between the many short parallel regions of a step (passive) make an
 * epoch about 17 % slower at 2 threads on an idle 2-core machine than workers that spin 10,000
 * rounds first (0.30 against 0.25 s, simulated 10k; the same bits either way); spinning workers
 * wait for descheduled ones when other programs want the cores too (6-20x slower there with
 * libgomp's default spin). So: a short spin (libomp: 1 ms) when the cores this process may run on,
 * less other programs' running tasks, leave room for its threads (OMP_NUM_THREADS, else 2, the
 * default train.threads) times the MPI processes on this node; passive waiting otherwise. */
static void choose_omp_waiting(char **argv) {
    for (int i = 0; i < NBS_N_OMP_WAIT_VARS; i++)
        if (getenv(nbs_omp_wait_vars[i])) return;
    cpu_set_t set;
    const long cores = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : sysconf(_SC_NPROCESSORS_ONLN);
    const long ranks = env_count("OMPI_COMM_WORLD_LOCAL_SIZE", env_count("MPI_LOCALNRANKS", 1));
    const long wanted = env_count("OMP_NUM_THREADS", 2) * ranks;
    const int others = other_runnable_tasks();
    const int spin = others >= 0 && cores - others >= wanted;
    int set_ok = spin ? !setenv("GOMP_SPINCOUNT", "10000", 1) && !setenv("KMP_BLOCKTIME", "1", 1)
                      : !setenv("OMP_WAIT_POLICY", "passive", 1);
    if (set_ok) {
        /* the binary's own path, so that ps and pgrep still show nbsphere, not exe */
        char self[4096];
        const ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
        if (len > 0) {
            self[len] = '\0';
            execv(self, argv);
        }
        execv("/proc/self/exe", argv);
    }
    /* not restarted: the runtime keeps what it read at load, and the manifest must not say otherwise */
    for (int i = 0; i < NBS_N_OMP_WAIT_VARS; i++) unsetenv(nbs_omp_wait_vars[i]);
}

#ifdef NBS_MPI
/* The peers of a data-parallel run stay silent: process 0 says everything once. */
static void discard_log(int level, const char *msg, void *user) { (void)level, (void)msg, (void)user; }
#endif

int main(int argc, char **argv) {
    choose_omp_waiting(argv);
    cli c = {.verbosity = 1};
    int rank = 0, n_proc = 1;
#ifdef NBS_MPI
    nbs_error merr = {0};
    if (nbs_parallel_init(&argc, &argv, &merr)) {
        fprintf(stderr, "nbsphere: error: %s\n", merr.msg);
        return merr.code;
    }
    const nbs_train_reduce reduce = nbs_parallel_reduce();
    rank = reduce.rank;
    n_proc = reduce.size;
    if (n_proc > 1) c.reduce = &reduce;
#endif
    size_t used = 0;
    for (int i = 0; i < argc && used < sizeof c.command_line; i++)
        used += (size_t)snprintf(c.command_line + used, sizeof c.command_line - used, "%s%s",
                                 i ? " " : "", argv[i]);
    /* --quiet/--verbose may stand anywhere; the rest goes to the command */
    char **rest = malloc(sizeof(char *) * (size_t)(argc + 1));
    if (!rest) return NBS_ERR_NOMEM;
    int n = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quiet") || !strcmp(argv[i], "-q")) c.verbosity = 0;
        else if (!strcmp(argv[i], "--verbose") || !strcmp(argv[i], "-v")) c.verbosity = 2;
        else rest[n++] = argv[i];
    }
    int st = NBS_OK;
    nbs_error err = {0};
    if (n == 0) {
        print_usage(stderr);
        st = NBS_ERR_USAGE;
    } else if (!strcmp(rest[0], "--version")) {
        nbs_versions_print(stdout);
    } else if (is_help(rest[0]) || !strcmp(rest[0], "help")) {
        const command *cmd = NULL;
        for (int i = 0; n > 1 && i < N_COMMANDS; i++)
            if (!strcmp(rest[1], COMMANDS[i].name)) cmd = &COMMANDS[i];
        if (cmd) printf("%s\n%s", cmd->usage, EXIT_CODES);
        else print_usage(stdout);
    } else {
        const command *cmd = NULL;
        for (int i = 0; i < N_COMMANDS; i++)
            if (!strcmp(rest[0], COMMANDS[i].name)) cmd = &COMMANDS[i];
        int help = 0;
        for (int i = 1; i < n; i++) help |= is_help(rest[i]);
        if (!cmd) {
            st = nbs_error_set(&err, NBS_ERR_USAGE, "unknown command '%s' (see 'nbsphere --help')", rest[0]);
        } else if (help) {
            printf("%s\n%s", cmd->usage, EXIT_CODES);
        } else if (n_proc > 1 && strcmp(cmd->name, "train") && strcmp(cmd->name, "run")) {
            st = nbs_error_set(&err, NBS_ERR_USAGE, "%s runs in one process; under mpirun with %d processes only "
                               "train and run split their training over them (run %s without mpirun)",
                               cmd->name, n_proc, cmd->name);
        } else if (rank > 0) {
#ifdef NBS_MPI
            nbs_log_set_handler(discard_log, NULL);
#endif
            c.verbosity = 0;
            st = cmd->fn(&c, n - 1, rest + 1, &err);
        } else {
            c.progress = nbs_progress_new(stderr, c.verbosity, -1);
            st = cmd->fn(&c, n - 1, rest + 1, &err);
            nbs_progress_free(c.progress);
        }
    }
    if (st) {
        if (!err.msg[0]) snprintf(err.msg, sizeof err.msg, "failed with status %d", st);
        if (n_proc > 1) fprintf(stderr, "nbsphere: error (process %d of %d): %s\n", rank, n_proc, err.msg);
        else fprintf(stderr, "nbsphere: error: %s\n", err.msg);
    }
    free(rest);
#ifdef NBS_MPI
    if (st && n_proc > 1) nbs_parallel_abort(st); /* the other processes would wait for this one */
    nbs_parallel_finalize();
#endif
    return st;
}
