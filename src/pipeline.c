/* YAML pipeline -> nbs_config. One table describes every key (section, name, type, range,
 * enum words); loading, overrides, validation, the writers of a configuration (pipeline_dump.c)
 * and the tests all read it, so a key cannot be parsed one way and documented another.
 * libyaml's document API gives each node its line and column for messages. */
#include "nbsphere/pipeline.h"

#include <errno.h>
#include <math.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <yaml.h>

#include "nbsphere/io.h"
#include "nbsphere/latent.h"
#include "nbsphere/mixture.h"
#include "pipeline_internal.h"

/* Enums are stored through an int: the compiler must agree. */
_Static_assert(sizeof(nbs_format) == sizeof(int), "enum size");
_Static_assert(offsetof(nbs_model_config, encoder_layers) ==
                   offsetof(nbs_model_config, n_encoder_layers) + sizeof(int),
               "layer widths follow their count");
_Static_assert(offsetof(nbs_model_config, decoder_layers) ==
                   offsetof(nbs_model_config, n_decoder_layers) + sizeof(int),
               "layer widths follow their count");
_Static_assert(offsetof(nbs_model_config, latent_layers) ==
                   offsetof(nbs_model_config, n_latent_layers) + sizeof(int),
               "layer widths follow their count");

static const nbs_enum_word W_AUTO[] = {{"auto", NBS_AUTO}, {NULL, 0}}; /* integers that may be `auto` */
static const nbs_enum_word W_BACKED[] = {{"auto", NBS_AUTO}, {"true", 1}, {"false", 0}, {NULL, 0}};

#define F(sec, field) offsetof(nbs_config, sec.field), sizeof(((nbs_config *)0)->sec.field), \
                      alignof(__typeof__(((nbs_config *)0)->sec.field))
#define LAYERS(n, arr)                                                                          \
    offsetof(nbs_config, model.n), sizeof(int) + sizeof(((nbs_config *)0)->model.arr), alignof(int)
#define BIG 1e300

static const nbs_key_desc KEYS[] = {
    {"", "preset", K_STRING, offsetof(nbs_config, preset), sizeof(((nbs_config *)0)->preset), 1,
     0, 0, 0, NULL, "one of scvi, scphere (applied before the file's own keys)"},

    {"input", "path", K_PATH, F(input, path), 0, 0, 0, NULL,
     "the path of a count matrix file or 10x folder"},
    {"input", "samples", K_SAMPLES, F(input, samples), 0, NBS_MAX_SAMPLES, 0, NULL,
     "a mapping of up to 32 sample names to paths (or to {path: ..., format: ..., layer: ...}), "
     "e.g. {ctrl: ctrl.h5, stim: stim.h5ad}"},
    {"input", "join", K_ENUM, F(input, join), 0, 0, 0, nbs_join_words, NULL},
    {"input", "format", K_ENUM, F(input, format), 0, 0, 0, nbs_format_words, NULL},
    {"input", "layer", K_STRING, F(input, layer), 0, 0, 0, NULL,
     "an h5ad layer name (\"\" = X, raw = raw/X) or a loom layer name (\"\" = /matrix)"},
    {"input", "genome", K_STRING, F(input, genome), 0, 0, 0, NULL, "a genome group name"},
    {"input", "feature_types", K_STRING, F(input, feature_types), 0, 0, 0, NULL,
     "all, or 10x feature types separated by commas, e.g. Gene Expression, Antibody Capture"},
    {"input", "orientation", K_ENUM, F(input, orientation), 0, 0, 0, nbs_orientation_words, NULL},
    {"input", "non_integer", K_ENUM, F(input, non_integer), 0, 0, 0, nbs_non_integer_words, NULL},
    {"input", "labels_path", K_PATH, F(input, labels_path), 0, 0, 0, NULL,
     "the path of a labels table, or \"\""},
    {"input", "label_column", K_STRING, F(input, label_column), 0, 0, 0, NULL, "a column name"},
    {"input", "batch_key", K_STRING, F(input, batch_key), 0, 0, 0, NULL,
     "a column name (of the labels table, or of the .h5ad's obs), or \"\""},
    {"input", "categorical_covariates", K_NAMES, F(input, categorical_covariates), 0, NBS_MAX_COVARIATES, 0, NULL,
     "a list of up to 16 column names, e.g. [donor, chemistry]"},
    {"input", "continuous_covariates", K_NAMES, F(input, continuous_covariates), 0, NBS_MAX_COVARIATES, 0, NULL,
     "a list of up to 16 numeric column names, e.g. [percent_mito]"},
    {"input", "backed", K_INT, F(input, backed), 0, 1, 0, W_BACKED,
     "true (read the counts from the file block by block), false, or auto (above input.memory_limit)"},
    {"input", "memory_limit", K_INT, F(input, memory_limit), 1, 1e9, 0, W_AUTO,
     "megabytes (an integer >= 1), or auto (half of the physical memory)"},
    {"input", "backed_block", K_INT, F(input, backed_block), 1, 1e8, 0, NULL,
     "an integer >= 1: consecutive cells read together out of core"},
    {"input", "backed_shuffle_blocks", K_INT, F(input, backed_shuffle_blocks), 1, 1e8, 0, NULL,
     "an integer >= 1: blocks mixed in one out-of-core buffer"},

    {"preprocess", "min_counts", K_DOUBLE, F(preprocess, min_counts), 0, BIG, 0, NULL,
     "a number >= 0"},
    {"preprocess", "min_genes", K_INT64, F(preprocess, min_genes), 0, 1e12, 0, NULL,
     "an integer >= 0"},
    {"preprocess", "min_cells", K_INT64, F(preprocess, min_cells), 0, 1e12, 0, NULL,
     "an integer >= 0"},
    {"preprocess", "n_top_genes", K_INT64, F(preprocess, n_top_genes), 0, 1e9, 0, NULL,
     "an integer >= 0 (0 = all genes)"},
    {"preprocess", "hvg_span", K_DOUBLE, F(preprocess, hvg_span), 0, 1, 1, NULL,
     "a number in (0, 1]"},
    {"preprocess", "hvg_batch_aware", K_BOOL, F(preprocess, hvg_batch_aware), 0, 0, 0, NULL, NULL},
    {"preprocess", "hvg_flavor", K_ENUM, F(preprocess, hvg_flavor), 0, 0, 0, nbs_hvg_flavor_words, NULL},

    {"model", "latent", K_ENUM, F(model, latent), 0, 0, 0, nbs_latent_words, NULL},
    {"model", "latent_dim", K_INT, F(model, latent_dim), 1, 1024, 0, NULL,
     "an integer from 1 to 1024 (2 or more for spherical latents)"},
    {"model", "encoder_layers", K_LAYERS, LAYERS(n_encoder_layers, encoder_layers), 1, 65536, 0,
     NULL, "a list of 1 to 8 layer widths from 1 to 65536, e.g. [128, 64]"},
    {"model", "decoder_layers", K_LAYERS, LAYERS(n_decoder_layers, decoder_layers), 1, 65536, 0,
     NULL, "a list of 1 to 8 layer widths from 1 to 65536, e.g. [128]"},
    {"model", "dropout", K_DOUBLE, F(model, dropout), 0, 0.99, 0, NULL,
     "a number from 0 to 0.99"},
    {"model", "norm", K_ENUM, F(model, norm), 0, 0, 0, nbs_norm_words, NULL},
    {"model", "likelihood", K_ENUM, F(model, likelihood), 0, 0, 0, nbs_likelihood_words, NULL},
    {"model", "dispersion", K_ENUM, F(model, dispersion), 0, 0, 0, nbs_dispersion_words, NULL},
    {"model", "dispersion_init", K_ENUM, F(model, dispersion_init), 0, 0, 0, nbs_dispersion_init_words, NULL},
    {"model", "input_transform", K_ENUM, F(model, input_transform), 0, 0, 0, nbs_input_transform_words, NULL},
    {"model", "kappa_floor", K_DOUBLE, F(model, kappa_floor), 0, 1e5, 0, NULL,
     "a number from 0 to 1e5"},
    {"model", "decoder_init_scale", K_DOUBLE, F(model, decoder_init_scale), 0, 1e3, 1, NULL,
     "a number in (0, 1000]"},
    {"model", "encode_covariates", K_BOOL, F(model, encode_covariates), 0, 0, 0, NULL, NULL},
    {"model", "covariate_embedding", K_ENUM, F(model, covariate_embedding), 0, 0, 0, nbs_covariate_embedding_words,
     NULL},
    {"model", "covariate_embedding_dim", K_INT, F(model, covariate_embedding_dim), 1, 1024, 0, NULL,
     "an integer from 1 to 1024"},
    {"model", "discrete", K_INT, F(model, discrete), 0, NBS_MAX_DISCRETE, 0, NULL,
     "0 (none) or a number of categories from 2 to 50 (a Gaussian-mixture prior; Gaussian latent only)"},
    {"model", "latent_layers", K_LAYERS, LAYERS(n_latent_layers, latent_layers), 1, 1024, 0, NULL,
     "a list of 2 to 4 latent dimensions from 1 to 1024, bottom to top, e.g. [32, 10]; [] for one latent"},
    {"model", "skip_connections", K_BOOL, F(model, skip_connections), 0, 0, 0, NULL, NULL},

    {"train", "epochs", K_INT, F(train, epochs), 1, 1e6, 0, W_AUTO,
     "an integer from 1 to 1000000, or auto (200, or 400 with categorical covariates; fewer beyond 20000 cells)"},
    {"train", "batch_size", K_INT, F(train, batch_size), 1, 1e6, 0, NULL,
     "an integer from 1 to 1000000"},
    {"train", "learning_rate", K_DOUBLE, F(train, learning_rate), 0, 10, 1, NULL,
     "a number in (0, 10]"},
    {"train", "weight_decay", K_DOUBLE, F(train, weight_decay), 0, 10, 0, NULL,
     "a number from 0 to 10"},
    {"train", "adam_eps", K_DOUBLE, F(train, adam_eps), 0, 1, 1, NULL, "a number in (0, 1]"},
    {"train", "seed", K_UINT64, F(train, seed), 0, 0, 0, NULL,
     "an integer from 0 to 18446744073709551615"},
    {"train", "threads", K_INT, F(train, threads), 1, 1024, 0, NULL, "an integer from 1 to 1024"},
    {"train", "validation_fraction", K_DOUBLE, F(train, validation_fraction), 0, 0.9, 0, NULL,
     "a number from 0 to 0.9"},
    {"train", "patience", K_INT, F(train, patience), 0, 1e6, 0, NULL,
     "an integer >= 0 (0 = no early stopping)"},
    {"train", "schedule", K_ENUM, F(train, schedule), 0, 0, 0, nbs_schedule_words, NULL},
    {"train", "beta", K_DOUBLE, F(train, beta), 0, 1e6, 0, NULL, "a number >= 0"},
    {"train", "warmup_epochs", K_INT, F(train, warmup_epochs), 0, 1e6, 0, W_AUTO,
     "an integer >= 0, or auto (half of the epochs)"},
    {"train", "warmup_steps", K_INT64, F(train, warmup_steps), 0, 1e15, 0, NULL,
     "an integer >= 0 (0 = use warmup_epochs)"},
    {"train", "cycles", K_INT, F(train, cycles), 1, 1e6, 0, NULL, "an integer >= 1"},
    {"train", "ramp_fraction", K_DOUBLE, F(train, ramp_fraction), 0, 1, 1, NULL,
     "a number in (0, 1]"},
    {"train", "free_bits", K_DOUBLE, F(train, free_bits), 0, 1e6, 0, NULL,
     "a number >= 0 (nats; 0 = off)"},
    {"train", "grad_clip", K_DOUBLE, F(train, grad_clip), 0, BIG, 0, NULL,
     "a number >= 0 (0 = off)"},
    {"train", "checkpoint_every", K_INT, F(train, checkpoint_every), 0, 1e6, 0, NULL,
     "an integer >= 0 (0 = only at the end)"},
    {"train", "entropy_target", K_DOUBLE, F(train, entropy_target), 0, 1e6, 0, NULL,
     "a number >= 0 (nats, at most log(model.discrete))"},
    {"train", "entropy_weight", K_DOUBLE, F(train, entropy_weight), 0, 1e6, 0, NULL,
     "a number >= 0 (0 = off)"},
    {"train", "entropy_cell_weight", K_DOUBLE, F(train, entropy_cell_weight), 0, 1e6, 0, NULL,
     "a number >= 0 (0 = off)"},

    {"diagnose", "tau_kl", K_DOUBLE, F(diagnose, tau_kl), 0, BIG, 0, NULL, "a number >= 0 (nats)"},
    {"diagnose", "tau_sensitivity", K_DOUBLE, F(diagnose, tau_sensitivity), 0, BIG, 0, NULL,
     "a number >= 0"},
    {"diagnose", "tau_decoder_nats", K_DOUBLE, F(diagnose, tau_decoder_nats), 0, BIG, 0, NULL,
     "a number >= 0 (nats per cell)"},
    {"diagnose", "tau_decoder_relative", K_DOUBLE, F(diagnose, tau_decoder_relative), 0, 1, 0, NULL,
     "a number from 0 to 1 (a fraction of the largest dimension's decoder response)"},
    {"diagnose", "tau_activity", K_DOUBLE, F(diagnose, tau_activity), 0, BIG, 0, NULL,
     "a number >= 0"},
    {"diagnose", "interval", K_INT, F(diagnose, interval), 0, 1e6, 0, NULL,
     "an integer >= 0 (0 = only at the end)"},
    {"diagnose", "subsample", K_INT64, F(diagnose, subsample), 2, 1e12, 0, NULL,
     "an integer >= 2 (the measures compare cells)"},
    {"diagnose", "mi_batch", K_INT, F(diagnose, mi_batch), 2, 1e6, 0, NULL,
     "an integer >= 2 (the estimator compares cells within a batch)"},

    {"trajectory", "enabled", K_BOOL, F(trajectory, enabled), 0, 0, 0, NULL, NULL},
    {"trajectory", "k", K_INT64, F(trajectory, k), 2, 1e4, 0, NULL,
     "an integer >= 2 (neighbours per cell, the cell itself included, as scanpy's n_neighbors)"},
    {"trajectory", "resolution", K_DOUBLE, F(trajectory, resolution), 0, 1e6, 1, NULL, "a number > 0"},
    {"trajectory", "n_dcs", K_INT, F(trajectory, n_dcs), 2, 100, 0, NULL,
     "an integer from 2 to 100 (diffusion components, the first, stationary one included)"},
    {"trajectory", "root", K_STRING, F(trajectory, root), 0, 0, 0, NULL, "a barcode, or \"\""},
    {"trajectory", "root_label", K_STRING, F(trajectory, root_label), 0, 0, 0, NULL,
     "a label of input.label_column, or \"\""},
    {"trajectory", "shortcut_hops", K_INT, F(trajectory, shortcut_hops), 0, 1000, 0, NULL,
     "an integer from 0 to 1000 (reference-graph steps; 0 = no wrap-around diagnostic)"},
    {"trajectory", "wrap_share", K_DOUBLE, F(trajectory, wrap_share), 0, 1, 1, NULL,
     "a number in (0, 1] (the share of a pair's embedding edges that are shortcuts)"},

    {"neighbors", "method", K_ENUM, F(neighbors, method), 0, 0, 0, nbs_knn_method_words, NULL},
    {"neighbors", "exact_max_cells", K_INT64, F(neighbors, exact_max_cells), 0, 1e12, 0, NULL,
     "an integer >= 0 (method auto: searches of up to this many cells stay exact)"},
    {"neighbors", "branching", K_INT, F(neighbors, branching), 2, 1024, 0, NULL,
     "an integer from 2 to 1024 (children of each k-means tree node)"},
    {"neighbors", "checks", K_INT, F(neighbors, checks), 1, 1e6, 0, NULL,
     "an integer from 1 to 1000000 (points compared per query to start with)"},
    {"neighbors", "recall", K_DOUBLE, F(neighbors, recall), 0, 1, 0, NULL,
     "a number from 0 to 1 (checks double until the recall@k against exact reaches it; 0 = keep checks)"},

    {"output", "dir", K_PATH, F(output, dir), 0, 0, 0, NULL, "a folder path"},
    {"output", "write_h5ad", K_BOOL, F(output, write_h5ad), 0, 0, 0, NULL, NULL},
    {"output", "write_variances", K_BOOL, F(output, write_variances), 0, 0, 0, NULL, NULL},
    {"output", "write_report", K_BOOL, F(output, write_report), 0, 0, 0, NULL, NULL},
    {"output", "embedding_key", K_STRING, F(output, embedding_key), 0, 0, 0, NULL,
     "a non-empty obsm key, e.g. X_nbsphere"},
};
#define N_KEYS ((int)(sizeof KEYS / sizeof KEYS[0]))
const char *const nbs_pipeline_sections[NBS_PIPELINE_N_SECTIONS] = {"input", "preprocess", "model",
                                                                   "train", "diagnose", "trajectory", "neighbors",
                                                                   "output"};

/* Where a value came from, for messages. */
typedef struct {
    const char *file; /* NULL: an override */
    size_t line, col;
    const char *set;  /* the override text */
} loc;

typedef struct {
    nbs_pipeline *p;
    const char *name;     /* the pipeline file, for messages */
    const char *base_dir; /* relative paths in the file resolve against it */
    yaml_document_t *doc;
    loc where[sizeof KEYS / sizeof KEYS[0]];
    int given[sizeof KEYS / sizeof KEYS[0]];
    int overridden[sizeof KEYS / sizeof KEYS[0]]; /* a --set will replace the file's value */
    loc input_section;
    int have_input_section;
    int stored; /* NBS_PIPELINE_STORED: the file's paths need not exist */
    nbs_error *err;
} ctx;

static void fmt_loc(char *buf, size_t n, const loc *l) {
    if (l->file)
        snprintf(buf, n, "%s:%zu:%zu", l->file, l->line, l->col);
    else
        snprintf(buf, n, "--set %s", l->set);
}

static loc node_loc(const ctx *c, const yaml_node_t *node) {
    loc l = {c->name, node->start_mark.line + 1, node->start_mark.column + 1, NULL};
    return l;
}

static const char *type_expect(const nbs_key_desc *k, char *buf, size_t n) {
    if (k->words && k->type != K_INT) {
        size_t used = (size_t)snprintf(buf, n, "one of ");
        for (const nbs_enum_word *w = k->words; w->word && used < n; w++) {
            if (!*w->word) continue;
            used += (size_t)snprintf(buf + used, n - used, "%s%s", w == k->words ? "" : ", ", w->word);
        }
        if (k->type == K_STRING && k->expect) snprintf(buf, n, "%s", k->expect);
        return buf;
    }
    if (k->type == K_BOOL) return "true or false";
    return k->expect ? k->expect : "a value";
}


static int reject(ctx *c, const loc *l, nbs_status code, const nbs_key_desc *k, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int reject(ctx *c, const loc *l, nbs_status code, const nbs_key_desc *k, const char *fmt, ...) {
    char where[NBS_ORIGIN_MAX], what[1024], exp[512];
    fmt_loc(where, sizeof where, l);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (!k) return nbs_error_set(c->err, code, "%s: %s", where, what);
    return nbs_error_set(c->err, code, "%s: %s%s%s: %s; expected %s", where, k->section,
                         *k->section ? "." : "", k->key, what, type_expect(k, exp, sizeof exp));
}

static int find_key(const char *section, const char *key) {
    for (int i = 0; i < N_KEYS; i++)
        if (!strcmp(KEYS[i].section, section) && !strcmp(KEYS[i].key, key)) return i;
    return -1;
}

static int parse_i64(const char *s, long long *out) {
    if (!*s) return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end || errno) return -1;
    *out = v;
    return 0;
}

int nbs_pipeline_parse_double(const char *s, double *out) {
    if (!*s) return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end || errno == ERANGE || !isfinite(v)) return -1;
    *out = v;
    return 0;
}

int nbs_pipeline_parse_bool(const char *s, int *out) {
    static const char *yes[] = {"true", "yes", "on", "1"}, *no[] = {"false", "no", "off", "0"};
    for (int i = 0; i < 4; i++) {
        if (!strcasecmp(s, yes[i])) return *out = 1, 0;
        if (!strcasecmp(s, no[i])) return *out = 0, 0;
    }
    return -1;
}

static int in_range(const nbs_key_desc *k, double v) {
    return (k->lo_open ? v > k->lo : v >= k->lo) && v <= k->hi;
}

static void *field(nbs_config *cfg, const nbs_key_desc *k) { return (char *)cfg + k->off; }

static int resolve_path(ctx *c, const nbs_key_desc *k, const loc *l, const char *text, char *out) {
    int n;
    if (*text && text[0] != '/' && l->file && c->base_dir && *c->base_dir)
        n = snprintf(out, NBS_PATH_MAX, "%s/%s", c->base_dir, text);
    else
        n = snprintf(out, NBS_PATH_MAX, "%s", text);
    if (n >= NBS_PATH_MAX)
        return reject(c, l, NBS_ERR_USAGE, k, "path longer than %d characters", NBS_PATH_MAX - 1);
    struct stat st;
    int must_exist = k->off == offsetof(nbs_config, input.path) ||
                     k->off == offsetof(nbs_config, input.labels_path);
    /* a file's path that a --set replaces need not exist: the replacement is checked instead */
    if (must_exist && *out && !(l->file && (c->overridden[k - KEYS] || c->stored)) && stat(out, &st) != 0)
        return reject(c, l, NBS_ERR_IO, k, "'%s' cannot be opened (%s)%s", out, strerror(errno),
                      l->file ? " (relative paths are resolved against the pipeline's folder)" : "");
    return NBS_OK;
}

static int set_scalar(ctx *c, int ki, const char *text, const loc *l) {
    const nbs_key_desc *k = &KEYS[ki];
    nbs_config *cfg = &c->p->config;
    long long iv;
    double dv;
    int bv;
    switch (k->type) {
    case K_INT:
    case K_INT64:
        for (const nbs_enum_word *w = k->type == K_INT ? k->words : NULL; w && w->word; w++) /* e.g. auto */
            if (!strcmp(w->word, text)) {
                *(int *)field(cfg, k) = w->value;
                return NBS_OK;
            }
        if (parse_i64(text, &iv)) return reject(c, l, NBS_ERR_USAGE, k, "'%s' is not an integer", text);
        if (!in_range(k, (double)iv)) return reject(c, l, NBS_ERR_USAGE, k, "%s is out of range", text);
        if (k->type == K_INT) *(int *)field(cfg, k) = (int)iv;
        else *(int64_t *)field(cfg, k) = (int64_t)iv;
        break;
    case K_UINT64: {
        char *end;
        errno = 0;
        unsigned long long u = strtoull(text, &end, 10);
        if (!*text || *end || text[0] == '-' || text[0] == '+')
            return reject(c, l, NBS_ERR_USAGE, k, "'%s' is not a non-negative integer", text);
        if (errno) return reject(c, l, NBS_ERR_USAGE, k, "%s is out of range", text);
        *(uint64_t *)field(cfg, k) = (uint64_t)u;
        break;
    }
    case K_DOUBLE:
        if (nbs_pipeline_parse_double(text, &dv)) return reject(c, l, NBS_ERR_USAGE, k, "'%s' is not a number", text);
        if (!in_range(k, dv)) return reject(c, l, NBS_ERR_USAGE, k, "%s is out of range", text);
        *(double *)field(cfg, k) = dv;
        break;
    case K_BOOL:
        if (nbs_pipeline_parse_bool(text, &bv)) return reject(c, l, NBS_ERR_USAGE, k, "'%s' is not a boolean", text);
        *(int *)field(cfg, k) = bv;
        break;
    case K_ENUM:
        for (const nbs_enum_word *w = k->words; w->word; w++)
            if (!strcmp(w->word, text)) {
                *(int *)field(cfg, k) = w->value;
                return NBS_OK;
            }
        return reject(c, l, NBS_ERR_USAGE, k, "unknown value '%s'", text);
    case K_STRING:
        if (strlen(text) >= k->size)
            return reject(c, l, NBS_ERR_USAGE, k, "longer than %zu characters", k->size - 1);
        if (k->off == offsetof(nbs_config, output.embedding_key) && !*text)
            return reject(c, l, NBS_ERR_USAGE, k, "empty");
        if (k->off == offsetof(nbs_config, preset)) { /* applied now: the file's keys land on top of it */
            int st = nbs_config_apply_preset(cfg, text, NULL);
            if (st) return reject(c, l, NBS_ERR_USAGE, k, "unknown preset '%s'", text);
        }
        strcpy((char *)field(cfg, k), text);
        break;
    case K_PATH: {
        char tmp[NBS_PATH_MAX];
        int st = resolve_path(c, k, l, text, tmp);
        if (st) return st;
        strcpy((char *)field(cfg, k), tmp);
        break;
    }
    case K_LAYERS:
    case K_NAMES:
    case K_SAMPLES:
        return reject(c, l, NBS_ERR_USAGE, k, "got a single value");
    }
    return NBS_OK;
}

static int set_layers(ctx *c, int ki, yaml_document_t *doc, yaml_node_t *node, const loc *l) {
    const nbs_key_desc *k = &KEYS[ki];
    if (node->type != YAML_SEQUENCE_NODE) return reject(c, l, NBS_ERR_USAGE, k, "not a list");
    int n = (int)(node->data.sequence.items.top - node->data.sequence.items.start);
    /* latent_layers: [] is the single latent, as the resolved configuration writes it */
    const int empty_ok = k->off == offsetof(nbs_config, model.n_latent_layers);
    if (n < !empty_ok || n > NBS_MAX_LAYERS)
        return reject(c, l, NBS_ERR_USAGE, k, "a list of %d widths", n);
    int widths[NBS_MAX_LAYERS];
    for (int i = 0; i < n; i++) {
        yaml_node_t *item = yaml_document_get_node(doc, node->data.sequence.items.start[i]);
        loc il = l->file ? node_loc(c, item) : *l;
        if (item->type != YAML_SCALAR_NODE)
            return reject(c, &il, NBS_ERR_USAGE, k, "item %d is not a number", i + 1);
        const char *s = (const char *)item->data.scalar.value;
        long long v;
        if (parse_i64(s, &v)) return reject(c, &il, NBS_ERR_USAGE, k, "'%s' is not an integer", s);
        if (!in_range(k, (double)v))
            return reject(c, &il, NBS_ERR_USAGE, k, "width %s is out of range", s);
        widths[i] = (int)v;
    }
    int *count = (int *)field(&c->p->config, k);
    *count = n;
    memset(count + 1, 0, sizeof(int) * NBS_MAX_LAYERS);
    memcpy(count + 1, widths, sizeof(int) * (size_t)n);
    return NBS_OK;
}

static int set_names(ctx *c, int ki, yaml_document_t *doc, yaml_node_t *node, const loc *l) {
    const nbs_key_desc *k = &KEYS[ki];
    if (node->type != YAML_SEQUENCE_NODE) return reject(c, l, NBS_ERR_USAGE, k, "not a list");
    int n = (int)(node->data.sequence.items.top - node->data.sequence.items.start);
    if (n > k->hi) return reject(c, l, NBS_ERR_USAGE, k, "a list of %d names", n);
    nbs_name_list *list = field(&c->p->config, k);
    nbs_name_list names;
    memset(&names, 0, sizeof names);
    for (int i = 0; i < n; i++) {
        yaml_node_t *item = yaml_document_get_node(doc, node->data.sequence.items.start[i]);
        loc il = l->file ? node_loc(c, item) : *l;
        if (item->type != YAML_SCALAR_NODE) return reject(c, &il, NBS_ERR_USAGE, k, "item %d is not a name", i + 1);
        const char *s = (const char *)item->data.scalar.value;
        if (!*s) return reject(c, &il, NBS_ERR_USAGE, k, "item %d is empty", i + 1);
        if (strlen(s) >= NBS_NAME_MAX)
            return reject(c, &il, NBS_ERR_USAGE, k, "item %d is longer than %d characters", i + 1, NBS_NAME_MAX - 1);
        strcpy(names.names[i], s);
    }
    names.n = n;
    *list = names;
    return NBS_OK;
}

/* One sample's path: resolved as input.path is, and it must exist (unless a --set replaces the
 * file's samples). */
static int sample_path(ctx *c, int ki, const loc *l, const char *text, char *out) {
    const nbs_key_desc *k = &KEYS[ki];
    if (!*text) return reject(c, l, NBS_ERR_USAGE, k, "a sample's path is empty");
    int st = resolve_path(c, k, l, text, out);
    struct stat sb;
    if (!st && !(l->file && c->overridden[ki]) && stat(out, &sb) != 0)
        return reject(c, l, NBS_ERR_IO, k, "'%s' cannot be opened (%s)%s", out, strerror(errno),
                      l->file ? " (relative paths are resolved against the pipeline's folder)" : "");
    return st;
}

/* A sample given as a mapping: path (required), format, layer. */
static int set_sample_options(ctx *c, int ki, yaml_document_t *doc, yaml_node_t *node, const loc *l, nbs_sample *smp) {
    const nbs_key_desc *k = &KEYS[ki];
    for (yaml_node_pair_t *pr = node->data.mapping.pairs.start; pr < node->data.mapping.pairs.top; pr++) {
        yaml_node_t *kn = yaml_document_get_node(doc, pr->key), *vn = yaml_document_get_node(doc, pr->value);
        loc il = l->file ? node_loc(c, vn) : *l;
        const char *opt = kn->type == YAML_SCALAR_NODE ? (const char *)kn->data.scalar.value : "?";
        if (vn->type != YAML_SCALAR_NODE)
            return reject(c, &il, NBS_ERR_USAGE, k, "sample '%s': %s is not a single value", smp->name, opt);
        const char *v = (const char *)vn->data.scalar.value;
        if (!strcmp(opt, "path")) {
            int st = sample_path(c, ki, &il, v, smp->path);
            if (st) return st;
        } else if (!strcmp(opt, "format")) {
            if (nbs_format_parse(v, &smp->format))
                return reject(c, &il, NBS_ERR_USAGE, k, "sample '%s': unknown format '%s' (auto, 10x-h5, h5ad, "
                              "10x-mtx, mtx, tsv, csv, loom)", smp->name, v);
        } else if (!strcmp(opt, "layer")) {
            if (strlen(v) >= sizeof smp->layer)
                return reject(c, &il, NBS_ERR_USAGE, k, "sample '%s': layer longer than %zu characters", smp->name,
                              sizeof smp->layer - 1);
            strcpy(smp->layer, v);
            smp->layer_given = 1;
        } else {
            return reject(c, &il, NBS_ERR_USAGE, k, "sample '%s': unknown option '%s' (path, format, layer)",
                          smp->name, opt);
        }
    }
    if (!smp->path[0]) return reject(c, l, NBS_ERR_USAGE, k, "sample '%s' has no path", smp->name);
    return NBS_OK;
}

/* input.samples: name -> path, or name -> {path, format, layer}. A name is the suffix of its
 * cells' barcodes ("<barcode>-<name>"), so no name may end in "-" and another name: a
 * barcode's sample is then the one name it ends in. */
static int set_samples(ctx *c, int ki, yaml_document_t *doc, yaml_node_t *node, const loc *l) {
    const nbs_key_desc *k = &KEYS[ki];
    if (node->type == YAML_SCALAR_NODE && !*node->data.scalar.value) { /* "samples:" with nothing */
        memset(field(&c->p->config, k), 0, sizeof(nbs_sample_list));
        return NBS_OK;
    }
    if (node->type != YAML_MAPPING_NODE) return reject(c, l, NBS_ERR_USAGE, k, "not a mapping");
    const int n = (int)(node->data.mapping.pairs.top - node->data.mapping.pairs.start);
    if (n > k->hi) return reject(c, l, NBS_ERR_USAGE, k, "%d samples", n);
    nbs_sample_list *list = malloc(sizeof *list);
    if (!list) return nbs_error_set(c->err, NBS_ERR_NOMEM, "out of memory");
    memset(list, 0, sizeof *list);
    int st = NBS_OK;
    for (int i = 0; i < n && !st; i++) {
        yaml_node_pair_t *pr = node->data.mapping.pairs.start + i;
        yaml_node_t *kn = yaml_document_get_node(doc, pr->key), *vn = yaml_document_get_node(doc, pr->value);
        loc kl = l->file ? node_loc(c, kn) : *l, vl = l->file ? node_loc(c, vn) : *l;
        nbs_sample *smp = &list->items[i];
        const char *name = kn->type == YAML_SCALAR_NODE ? (const char *)kn->data.scalar.value : NULL;
        if (!name || !*name) st = reject(c, &kl, NBS_ERR_USAGE, k, "sample %d has no name", i + 1);
        else if (strlen(name) >= sizeof smp->name)
            st = reject(c, &kl, NBS_ERR_USAGE, k, "sample name longer than %zu characters", sizeof smp->name - 1);
        for (int j = 0; !st && j < i; j++) {
            const char *o = list->items[j].name;
            const size_t ln = strlen(name), lo = strlen(o);
            if (!strcmp(o, name)) st = reject(c, &kl, NBS_ERR_USAGE, k, "sample '%s' is given twice", name);
            else if ((ln > lo && name[ln - lo - 1] == '-' && !strcmp(name + ln - lo, o)) ||
                     (lo > ln && o[lo - ln - 1] == '-' && !strcmp(o + lo - ln, name)))
                st = reject(c, &kl, NBS_ERR_USAGE, k, "sample names '%s' and '%s': one ends in '-' and the other, "
                            "so a suffixed barcode could belong to either; rename one", o, name);
        }
        if (st) break;
        strcpy(smp->name, name);
        if (vn->type == YAML_SCALAR_NODE) st = sample_path(c, ki, &vl, (const char *)vn->data.scalar.value, smp->path);
        else if (vn->type == YAML_MAPPING_NODE) st = set_sample_options(c, ki, doc, vn, &vl, smp);
        else st = reject(c, &vl, NBS_ERR_USAGE, k, "sample '%s' is a list", name);
    }
    if (!st) {
        list->n = n;
        memcpy(field(&c->p->config, k), list, sizeof *list);
    }
    free(list);
    return st;
}

/* One key's node from the file. */
static int apply_node(ctx *c, int ki, yaml_node_t *node) {
    loc l = node_loc(c, node);
    c->where[ki] = l;
    c->given[ki] = 1;
    if (KEYS[ki].type == K_LAYERS) return set_layers(c, ki, c->doc, node, &l);
    if (KEYS[ki].type == K_NAMES) return set_names(c, ki, c->doc, node, &l);
    if (KEYS[ki].type == K_SAMPLES) return set_samples(c, ki, c->doc, node, &l);
    if (node->type != YAML_SCALAR_NODE)
        return reject(c, &l, NBS_ERR_USAGE, &KEYS[ki], "got a %s",
                      node->type == YAML_MAPPING_NODE ? "mapping" : "list");
    return set_scalar(c, ki, (const char *)node->data.scalar.value, &l);
}

static const char *scalar(yaml_node_t *n) {
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static int section_keys_list(const char *section, char *buf, size_t n) {
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < N_KEYS && used < n; i++)
        if (!strcmp(KEYS[i].section, section))
            used += (size_t)snprintf(buf + used, n - used, "%s%s", used ? ", " : "", KEYS[i].key);
    return 0;
}

static int walk_section(ctx *c, const char *section, yaml_node_t *map) {
    char keys[1024];
    if (map->type == YAML_SCALAR_NODE && !*scalar(map)) return NBS_OK; /* "train:" with nothing */
    if (map->type != YAML_MAPPING_NODE) {
        loc l = node_loc(c, map);
        section_keys_list(section, keys, sizeof keys);
        return reject(c, &l, NBS_ERR_USAGE, NULL,
                      "section '%s' is not a mapping; expected indented 'key: value' lines (%s)",
                      section, keys);
    }
    for (yaml_node_pair_t *pr = map->data.mapping.pairs.start; pr < map->data.mapping.pairs.top; pr++) {
        yaml_node_t *kn = yaml_document_get_node(c->doc, pr->key);
        yaml_node_t *vn = yaml_document_get_node(c->doc, pr->value);
        loc kl = node_loc(c, kn);
        const char *name = scalar(kn);
        int ki = name ? find_key(section, name) : -1;
        if (ki < 0) {
            section_keys_list(section, keys, sizeof keys);
            return reject(c, &kl, NBS_ERR_USAGE, NULL,
                          "unknown key '%s' in section '%s'; expected one of: %s", name ? name : "?",
                          section, keys);
        }
        if (c->given[ki])
            return reject(c, &kl, NBS_ERR_USAGE, NULL, "%s.%s is given twice (first at line %zu)",
                          section, name, c->where[ki].line);
        int st = apply_node(c, ki, vn);
        if (st) return st;
    }
    return NBS_OK;
}

static int walk_root(ctx *c, yaml_node_t *root) {
    if (!root) return NBS_OK; /* an empty file: defaults */
    if (root->type != YAML_MAPPING_NODE) {
        loc l = node_loc(c, root);
        return reject(c, &l, NBS_ERR_USAGE, NULL,
                      "expected a mapping of sections (preset, input, preprocess, model, train, "
                      "diagnose, trajectory, neighbors, output)");
    }
    yaml_node_pair_t *start = root->data.mapping.pairs.start, *top = root->data.mapping.pairs.top;
    int preset = find_key("", "preset");
    for (yaml_node_pair_t *pr = start; pr < top; pr++) { /* the preset first, wherever it is */
        const char *name = scalar(yaml_document_get_node(c->doc, pr->key));
        if (name && !strcmp(name, "preset")) {
            if (c->given[preset]) {
                loc l = node_loc(c, yaml_document_get_node(c->doc, pr->key));
                return reject(c, &l, NBS_ERR_USAGE, NULL, "preset is given twice");
            }
            int st = apply_node(c, preset, yaml_document_get_node(c->doc, pr->value));
            if (st) return st;
        }
    }
    int seen[NBS_PIPELINE_N_SECTIONS] = {0};
    for (yaml_node_pair_t *pr = start; pr < top; pr++) {
        yaml_node_t *kn = yaml_document_get_node(c->doc, pr->key);
        const char *name = scalar(kn);
        loc l = node_loc(c, kn);
        if (name && !strcmp(name, "preset")) continue;
        int s = -1;
        for (int i = 0; name && i < NBS_PIPELINE_N_SECTIONS; i++)
            if (!strcmp(name, nbs_pipeline_sections[i])) s = i;
        if (s < 0)
            return reject(c, &l, NBS_ERR_USAGE, NULL,
                          "unknown section '%s'; expected one of: preset, input, preprocess, model, "
                          "train, diagnose, trajectory, neighbors, output",
                          name ? name : "?");
        if (seen[s]) return reject(c, &l, NBS_ERR_USAGE, NULL, "section '%s' is given twice", name);
        seen[s] = 1;
        if (s == 0) {
            c->input_section = l;
            c->have_input_section = 1;
        }
        int st = walk_section(c, name, yaml_document_get_node(c->doc, pr->value));
        if (st) return st;
    }
    return NBS_OK;
}

static int parse_error(ctx *c, yaml_parser_t *ps) {
    loc l = {c->name, ps->problem_mark.line + 1, ps->problem_mark.column + 1, NULL};
    if (ps->error == YAML_MEMORY_ERROR) return nbs_error_set(c->err, NBS_ERR_NOMEM, "%s: out of memory", c->name);
    if (ps->error == YAML_READER_ERROR)
        l.line = 1, l.col = ps->problem_offset + 1;
    return reject(c, &l, NBS_ERR_USAGE, NULL,
                  "malformed YAML: %s%s%s; expected 'section:' lines with indented 'key: value' "
                  "pairs (see pipelines/reference.yaml)",
                  ps->problem ? ps->problem : "parse error", ps->context ? " " : "",
                  ps->context ? ps->context : "");
}

/* An override: "section.key=value". Lists are read as YAML, everything else verbatim. */
static int apply_set(ctx *c, const char *assignment) {
    loc l = {NULL, 0, 0, assignment};
    const char *eq = strchr(assignment, '=');
    char key[NBS_NAME_MAX];
    size_t klen = eq ? (size_t)(eq - assignment) : 0;
    if (!eq || klen == 0 || klen >= sizeof key)
        return reject(c, &l, NBS_ERR_USAGE, NULL, "expected section.key=value, e.g. train.epochs=50");
    memcpy(key, assignment, klen);
    key[klen] = '\0';
    char *dot = strchr(key, '.');
    int ki = dot ? (*dot = '\0', find_key(key, dot + 1)) : find_key("", key);
    if (ki < 0) {
        char keys[1024];
        int known_section = 0;
        for (int i = 0; i < NBS_PIPELINE_N_SECTIONS; i++)
            known_section |= dot && !strcmp(key, nbs_pipeline_sections[i]);
        if (known_section) {
            section_keys_list(key, keys, sizeof keys);
            return reject(c, &l, NBS_ERR_USAGE, NULL,
                          "unknown key '%s' in section '%s'; expected one of: %s", dot + 1, key, keys);
        }
        return reject(c, &l, NBS_ERR_USAGE, NULL,
                      "unknown key; expected section.key with section one of input, preprocess, "
                      "model, train, diagnose, trajectory, neighbors, output (or preset=NAME)");
    }
    c->where[ki] = l;
    c->given[ki] = 1;
    const char *value = eq + 1;
    const int list = KEYS[ki].type == K_LAYERS || KEYS[ki].type == K_NAMES || KEYS[ki].type == K_SAMPLES;
    if (!list) return set_scalar(c, ki, value, &l);
    yaml_parser_t ps;
    yaml_document_t doc;
    /* a parser that failed to initialise aborts in yaml_parser_load */
    if (!yaml_parser_initialize(&ps)) return nbs_error_set(c->err, NBS_ERR_NOMEM, "%s: out of memory", assignment);
    yaml_parser_set_input_string(&ps, (const unsigned char *)value, strlen(value));
    if (!yaml_parser_load(&ps, &doc)) {
        const int nomem = ps.error == YAML_MEMORY_ERROR; /* not a malformed list */
        yaml_parser_delete(&ps);
        if (nomem) return nbs_error_set(c->err, NBS_ERR_NOMEM, "%s: out of memory", assignment);
        return reject(c, &l, NBS_ERR_USAGE, &KEYS[ki], "malformed list");
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    int st;
    if (KEYS[ki].type == K_NAMES) { /* nothing after the = is the empty list */
        nbs_name_list *names = field(&c->p->config, &KEYS[ki]);
        st = root ? set_names(c, ki, &doc, root, &l) : (memset(names, 0, sizeof *names), NBS_OK);
    } else if (KEYS[ki].type == K_SAMPLES) { /* and no samples */
        st = root ? set_samples(c, ki, &doc, root, &l)
                  : (memset(field(&c->p->config, &KEYS[ki]), 0, sizeof(nbs_sample_list)), NBS_OK);
    } else {
        st = root ? set_layers(c, ki, &doc, root, &l) : reject(c, &l, NBS_ERR_USAGE, &KEYS[ki], "empty");
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&ps);
    return st;
}

/* Where key ki was set, or the file's start when it was not. */
static loc key_loc(const ctx *c, int ki) {
    return c->given[ki] ? c->where[ki] : (loc){c->name ? c->name : "(defaults)", 1, 1, NULL};
}

/* A column is one covariate: named once over batch_key and both lists; and per-batch dispersion
 * needs a batch. */
static int check_covariates(ctx *c) {
    const nbs_input_config *in = &c->p->config.input;
    const int kb = find_key("input", "batch_key"), kc = find_key("input", "categorical_covariates"),
              kn = find_key("input", "continuous_covariates");
    const char *names[1 + 2 * NBS_MAX_COVARIATES];
    int keys[1 + 2 * NBS_MAX_COVARIATES], n = 0;
    /* with samples and no batch_key the batch is the `sample` column */
    const char *batch = in->batch_key[0] ? in->batch_key : in->samples.n ? "sample" : "";
    if (*batch) names[n] = batch, keys[n++] = kb;
    for (int i = 0; i < in->categorical_covariates.n; i++) names[n] = in->categorical_covariates.names[i], keys[n++] = kc;
    for (int i = 0; i < in->continuous_covariates.n; i++) names[n] = in->continuous_covariates.names[i], keys[n++] = kn;
    for (int i = 1; i < n; i++)
        for (int j = 0; j < i; j++)
            if (!strcmp(names[i], names[j])) {
                loc l = key_loc(c, keys[i]);
                return reject(c, &l, NBS_ERR_USAGE, &KEYS[keys[i]], "column '%s' is already %s", names[i],
                              keys[j] == kb ? (in->batch_key[0] ? "the batch_key" : "the batch (input.samples' 'sample')")
                              : keys[j] == keys[i] ? "in this list" : "in categorical_covariates");
            }
    const int kd = find_key("model", "dispersion");
    if (c->p->config.model.dispersion == NBS_DISP_GENE_BATCH && !*batch) {
        loc l = key_loc(c, kd);
        return reject(c, &l, NBS_ERR_USAGE, &KEYS[kd], "gene_batch needs input.batch_key (the column naming each "
                      "cell's batch) or input.samples (the sample is then the batch)");
    }
    return NBS_OK;
}

/* The discrete latent: 2 or more categories, a Gaussian latent, and the entropy keys only with it
 * and with a target a K-category distribution can reach (log K). */
static int check_discrete(ctx *c) {
    const nbs_config *cfg = &c->p->config;
    const int kk = find_key("model", "discrete"), kt = find_key("train", "entropy_target"),
              kw = find_key("train", "entropy_weight"), kc = find_key("train", "entropy_cell_weight"),
              K = cfg->model.discrete;
    if (K == 1) {
        loc l = key_loc(c, kk);
        return reject(c, &l, NBS_ERR_USAGE, &KEYS[kk], "1 category is no discrete latent");
    }
    if (K && cfg->model.latent != NBS_LATENT_GAUSSIAN) {
        loc l = key_loc(c, kk);
        return reject(c, &l, NBS_ERR_USAGE, &KEYS[kk], "the Gaussian-mixture prior needs model.latent: gaussian "
                      "(the latent is %s)", nbs_latent_word(cfg->model.latent));
    }
    if (K && cfg->model.n_latent_layers) {
        loc l = key_loc(c, kk);
        return reject(c, &l, NBS_ERR_USAGE, &KEYS[kk], "the Gaussian-mixture prior is for a single latent, and "
                      "model.latent_layers makes a ladder; leave out one of them");
    }
    if (!K && (cfg->train.entropy_weight > 0 || cfg->train.entropy_target > 0 || cfg->train.entropy_cell_weight > 0)) {
        const int k = cfg->train.entropy_weight > 0 ? kw : cfg->train.entropy_target > 0 ? kt : kc;
        loc l = key_loc(c, k);
        return reject(c, &l, NBS_ERR_USAGE, &KEYS[k], "the entropy loss is of the discrete latent's categories; "
                      "set model.discrete (e.g. 10) or remove this key");
    }
    if (K && cfg->train.entropy_target > log((double)K) + 1e-12) {
        loc l = key_loc(c, kt);
        return reject(c, &l, NBS_ERR_USAGE, &KEYS[kt], "%g nats is above log(%d) = %.4g, the largest entropy of %d "
                      "categories", cfg->train.entropy_target, K, log((double)K), K);
    }
    if (K && cfg->train.entropy_weight > 0 && cfg->train.entropy_target <= 0) {
        loc l = key_loc(c, kw);
        return reject(c, &l, NBS_ERR_USAGE, &KEYS[kw], "the entropy loss needs train.entropy_target > 0 "
                      "(nats, e.g. %.3g = 0.9 log(%d))", 0.9 * log((double)K), K);
    }
    return NBS_OK;
}

static int finish(ctx *c, int flags) {
    nbs_config *cfg = &c->p->config;
    int cst = check_covariates(c);
    if (cst) return cst;
    int kd = find_key("model", "latent_dim"), kl = find_key("model", "latent");
    const int kll = find_key("model", "latent_layers");
    const nbs_model_config *mc = &cfg->model;
    if (mc->n_latent_layers == 1 || mc->n_latent_layers > NBS_MAX_LATENT_LAYERS) {
        loc l = key_loc(c, kll);
        if (mc->n_latent_layers == 1)
            return reject(c, &l, NBS_ERR_USAGE, &KEYS[kll], "one layer is a single latent: set model.latent_dim: "
                          "%d and leave latent_layers out", mc->latent_layers[0]);
        return reject(c, &l, NBS_ERR_USAGE, &KEYS[kll], "%d layers; a ladder has 2 to %d", mc->n_latent_layers,
                      NBS_MAX_LATENT_LAYERS);
    }
    if (mc->n_latent_layers) { /* the embedding is the top layer: latent_dim is its dimension */
        const int top = mc->latent_layers[mc->n_latent_layers - 1];
        if (c->given[kd] && mc->latent_dim != top) {
            loc l = key_loc(c, kd);
            return reject(c, &l, NBS_ERR_USAGE, &KEYS[kd], "%d, but model.latent_layers' top layer (the embedding) "
                          "has %d dimensions; leave latent_dim out with latent_layers", mc->latent_dim, top);
        }
        if (nbs_latent_ops_of(mc->latent)->on_sphere && top < 2) {
            loc l = key_loc(c, kll);
            return reject(c, &l, NBS_ERR_USAGE, &KEYS[kll], "a spherical top layer (model.latent: %s) needs 2 or more "
                          "dimensions, got %d", nbs_enum_word_of(nbs_latent_words, mc->latent), top);
        }
        cfg->model.latent_dim = top;
    }
    if (nbs_latent_ops_of(cfg->model.latent)->on_sphere && cfg->model.latent_dim < 2) {
        int k = c->given[kd] ? kd : kl;
        loc l = c->given[k] ? c->where[k] : (loc){c->name ? c->name : "(defaults)", 1, 1, NULL};
        return reject(c, &l, NBS_ERR_USAGE, &KEYS[kd], "%d is too small for a spherical latent",
                      cfg->model.latent_dim);
    }
    if ((cst = check_discrete(c))) return cst;
    int ki = find_key("input", "path"), ko = find_key("output", "dir"), ks = find_key("input", "samples");
    if (cfg->input.path[0] && cfg->input.samples.n) {
        loc l = key_loc(c, ks);
        char at[NBS_ORIGIN_MAX];
        fmt_loc(at, sizeof at, &c->where[ki]);
        return reject(c, &l, NBS_ERR_USAGE, NULL, "input.samples and input.path (%s) are both given; give one: a "
                      "mapping of sample names to files, or a single input", at);
    }
    if ((flags & NBS_PIPELINE_REQUIRE_INPUT) && !cfg->input.path[0] && !cfg->input.samples.n) {
        if (c->given[ki] || !c->name)
            return reject(c, c->given[ki] ? &c->where[ki] : &(loc){"(command line)", 1, 1, NULL},
                          NBS_ERR_USAGE, &KEYS[ki], "missing");
        loc l = c->have_input_section ? c->input_section : (loc){c->name, 1, 1, NULL};
        return reject(c, &l, NBS_ERR_USAGE, NULL,
                      "input.path is missing; expected an input section naming the data, e.g.\n"
                      "  input:\n    path: ../example_data/sim.h5");
    }
    char buf[NBS_ORIGIN_MAX];
    const loc *li = &c->where[ki], *lo = &c->where[ko];
    if (c->given[ki]) fmt_loc(buf, sizeof buf, li);
    snprintf(c->p->input_origin, sizeof c->p->input_origin, "%s", c->given[ki] ? buf : "default");
    if (c->given[ko]) fmt_loc(buf, sizeof buf, lo);
    snprintf(c->p->output_origin, sizeof c->p->output_origin, "%s", c->given[ko] ? buf : "default");
    return NBS_OK;
}

static int load(ctx *c, yaml_parser_t *ps, const char *const *sets, int n_sets, int flags) {
    for (int i = 0; i < n_sets; i++) { /* "section.key=value": which file values will be replaced */
        char sec[NBS_NAME_MAX], key[NBS_NAME_MAX];
        if (sscanf(sets[i], "%255[^.=].%255[^=]=", sec, key) == 2) {
            int ki = find_key(sec, key);
            if (ki >= 0) c->overridden[ki] = 1;
        }
    }
    yaml_document_t doc;
    if (!yaml_parser_load(ps, &doc)) return parse_error(c, ps);
    c->doc = &doc;
    int st = walk_root(c, yaml_document_get_root_node(&doc));
    yaml_document_delete(&doc);
    c->doc = NULL;
    if (st) return st;
    /* A second document in the same file would be silently ignored: refuse it. */
    yaml_document_t extra;
    if (!yaml_parser_load(ps, &extra)) return parse_error(c, ps);
    yaml_node_t *r = yaml_document_get_root_node(&extra);
    if (r) {
        loc l = node_loc(c, r);
        yaml_document_delete(&extra);
        return reject(c, &l, NBS_ERR_USAGE, NULL, "a second YAML document; expected one pipeline per file");
    }
    yaml_document_delete(&extra);
    for (int i = 0; i < n_sets; i++)
        if ((st = apply_set(c, sets[i]))) return st;
    return finish(c, flags);
}

static void ctx_init(ctx *c, nbs_pipeline *p, const char *name, const char *base, nbs_error *err) {
    memset(c, 0, sizeof *c);
    memset(p, 0, sizeof *p);
    nbs_config_defaults(&p->config);
    c->p = p;
    c->name = name;
    c->base_dir = base;
    c->err = err;
}

int nbs_pipeline_load_string(const char *text, const char *name, const char *base_dir,
                             const char *const *sets, int n_sets, int flags, nbs_pipeline *p,
                             nbs_error *err) {
    ctx c;
    ctx_init(&c, p, name ? name : "(pipeline)", base_dir, err);
    c.stored = (flags & NBS_PIPELINE_STORED) != 0;
    snprintf(p->config.source, sizeof p->config.source, "%s", c.name);
    yaml_parser_t ps;
    if (!yaml_parser_initialize(&ps)) return nbs_error_set(err, NBS_ERR_NOMEM, "out of memory");
    yaml_parser_set_input_string(&ps, (const unsigned char *)text, strlen(text));
    int st = load(&c, &ps, sets, n_sets, flags);
    yaml_parser_delete(&ps);
    return st;
}

int nbs_pipeline_load(const char *path, const char *const *sets, int n_sets, int flags,
                      nbs_pipeline *p, nbs_error *err) {
    ctx c;
    if (!path) {
        ctx_init(&c, p, NULL, NULL, err);
        snprintf(p->config.source, sizeof p->config.source, "(command line)");
        for (int i = 0; i < n_sets; i++) {
            int st = apply_set(&c, sets[i]);
            if (st) return st;
        }
        return finish(&c, flags);
    }
    FILE *f = fopen(path, "rb");
    if (!f)
        return nbs_error_set(err, NBS_ERR_IO, "%s: cannot open the pipeline file: %s", path,
                             strerror(errno));
    char base[NBS_PATH_MAX];
    snprintf(base, sizeof base, "%s", path);
    char *slash = strrchr(base, '/');
    if (slash) *slash = '\0';
    else strcpy(base, ".");
    if (slash == base) strcpy(base, "/");
    ctx_init(&c, p, path, base, err);
    snprintf(p->config.source, sizeof p->config.source, "%s", path);
    yaml_parser_t ps;
    if (!yaml_parser_initialize(&ps)) {
        fclose(f);
        return nbs_error_set(err, NBS_ERR_NOMEM, "out of memory");
    }
    yaml_parser_set_input_file(&ps, f);
    int st = load(&c, &ps, sets, n_sets, flags);
    yaml_parser_delete(&ps);
    fclose(f);
    return st;
}

int nbs_pipeline_set(nbs_pipeline *p, const char *assignment, nbs_error *err) {
    ctx c;
    memset(&c, 0, sizeof c);
    c.p = p;
    c.err = err;
    int st = apply_set(&c, assignment);
    if (st) return st;
    int ki = find_key("input", "path"), ko = find_key("output", "dir");
    if (c.given[ki]) fmt_loc(p->input_origin, sizeof p->input_origin, &c.where[ki]);
    if (c.given[ko]) fmt_loc(p->output_origin, sizeof p->output_origin, &c.where[ko]);
    return NBS_OK;
}

int nbs_pipeline_prepare_output(const nbs_pipeline *p, nbs_error *err) {
    const char *dir = p->config.output.dir;
    const char *origin = p->output_origin[0] ? p->output_origin : "default";
    char failed[NBS_PATH_MAX];
    if (!*dir)
        return nbs_error_set(err, NBS_ERR_USAGE, "%s: output.dir is empty; expected a folder path", origin);
    const int r = nbs_io_make_writable_dir(dir, failed);
    if (r == -1)
        return nbs_error_set(err, NBS_ERR_IO,
                             "%s: output.dir '%s': cannot create '%s' (%s); expected a folder you "
                             "can write to (change output.dir or pass --out DIR)",
                             origin, dir, failed, strerror(errno));
    if (r == -2)
        return nbs_error_set(err, NBS_ERR_IO,
                             "%s: output.dir '%s' is not writable (%s); expected a folder you can "
                             "write to (change output.dir or pass --out DIR)",
                             origin, dir, strerror(errno));
    return NBS_OK;
}

int nbs_pipeline_n_keys(void) { return N_KEYS; }

const nbs_key_desc *nbs_pipeline_key(int i) { return &KEYS[i]; }

static char name_buf[N_KEYS][NBS_NAME_MAX];
const char *nbs_pipeline_key_name(int i) {
    if (i < 0 || i >= N_KEYS) return NULL;
    if (!name_buf[i][0])
        snprintf(name_buf[i], NBS_NAME_MAX, "%s%s%s", KEYS[i].section, *KEYS[i].section ? "." : "",
                 KEYS[i].key);
    return name_buf[i];
}

void nbs_pipeline_key_span(int i, size_t *offset, size_t *size, size_t *align) {
    *offset = KEYS[i].off;
    *size = KEYS[i].size;
    *align = KEYS[i].align;
}

