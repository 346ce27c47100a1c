/* Covariates from the columns the input section names: read through the labels readers with
 * every cell required, categories found and sorted, numbers standardised, and new data encoded
 * with a model's categories and standardisation. */
#include "nbsphere/covariates.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "io_internal.h"
#include "nbsphere/io.h"
#include "nbsphere/samples.h"

/* The file a column is read from: the labels table, else the .h5ad input itself. */
static const char *source_of(const nbs_input_config *in) {
    return in->labels_path[0] ? in->labels_path : in->samples.n ? "input.samples" : in->path;
}

/* The value of column of every cell of X (NULL where empty or NA); `what` says which key or model
 * named the column, for messages. */
/* With input.samples, the `sample` column is each cell's sample, from its barcode's suffix. */
static int sample_column(const nbs_input_config *in, const nbs_matrix *X, char ***vals, nbs_error *err) {
    char **v = nbs_calloc((size_t)(X->n_cells ? X->n_cells : 1), sizeof *v, err);
    if (!v) return NBS_ERR_NOMEM;
    for (int64_t i = 0; i < X->n_cells; i++) {
        const int k = nbs_sample_of_barcode(&in->samples, X->barcodes[i]);
        if (k < 0 || !(v[i] = nbs_strdup(in->samples.items[k].name, err))) {
            nbs_io_free_labels(v, X->n_cells);
            if (k >= 0) return NBS_ERR_NOMEM;
            return nbs_error_set(err, NBS_ERR_INPUT, "cell '%s' ends in no sample name of input.samples ('-<sample>'); "
                                 "its sample is unknown", X->barcodes[i]);
        }
    }
    *vals = v;
    return NBS_OK;
}

const char *nbs_covariates_batch_column(const nbs_input_config *in) {
    return in->batch_key[0] ? in->batch_key : in->samples.n ? NBS_SAMPLE_COLUMN : "";
}

static int read_column(const nbs_input_config *in, nbs_format format, const nbs_matrix *X, const char *column,
                       const char *what, char ***vals, nbs_error *err) {
    int st;
    if (in->samples.n && !strcmp(column, NBS_SAMPLE_COLUMN)) st = sample_column(in, X, vals, err);
    else if (in->labels_path[0]) st = nbs_io_read_labels_table_cells(in->labels_path, column, X, column, vals, err);
    else if (format == NBS_FMT_H5AD) st = nbs_io_read_h5ad_obs_cells(in->path, column, X, column, vals, err);
    else if (in->samples.n)
        return nbs_error_set(err, NBS_ERR_USAGE, "%s '%s': with input.samples, the columns other than '%s' come "
                             "from a labels table keyed by the suffixed barcodes ('<barcode>-<sample>'; "
                             "input.labels_path, --labels for embed and diagnose), and there is none", what, column,
                             NBS_SAMPLE_COLUMN);
    else
        return nbs_error_set(err, NBS_ERR_USAGE, "%s '%s': there is no labels table to read the column from "
                             "(input.labels_path; --labels for embed and diagnose) and the input %s is not an "
                             ".h5ad with it in obs", what, column, in->path);
    if (st) nbs_error_prefix(err, "%s '%s': ", what, column);
    return st;
}

/* pandas reads these as missing too; a covariate must have a value in every cell */
static int is_missing(const char *v) {
    return !v || !*v || !strcasecmp(v, "NA") || !strcasecmp(v, "nan") || !strcasecmp(v, "-nan");
}

static int missing_value(const nbs_input_config *in, const nbs_matrix *X, int64_t cell, const char *column,
                         const char *what, nbs_error *err) {
    return nbs_error_set(err, NBS_ERR_INPUT, "%s: cell '%s' has an empty or NA value in column '%s' (%s); every "
                         "cell needs one: fill it in, or leave the cell out of the data", source_of(in),
                         X->barcodes[cell], column, what);
}

/* A continuous value: a finite number, the whole text (spaces around it allowed). */
static int parse_number(const nbs_input_config *in, const nbs_matrix *X, int64_t cell, const char *column,
                        const char *what, const char *text, double *out, nbs_error *err) {
    if (is_missing(text)) return missing_value(in, X, cell, column, what, err);
    char *end;
    const double v = strtod(text, &end);
    while (isspace((unsigned char)*end)) end++;
    if (end == text || *end)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: cell '%s' has '%s' in column '%s' (%s), not a number; a "
                             "continuous covariate needs numbers (a text column belongs in "
                             "input.categorical_covariates)", source_of(in), X->barcodes[cell], text, column, what);
    if (!isfinite(v))
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: cell '%s' has the non-finite value '%s' in column '%s' (%s); "
                             "a continuous covariate needs finite numbers", source_of(in), X->barcodes[cell], text,
                             column, what);
    *out = v;
    return NBS_OK;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The distinct values of vals (n, none missing) in byte order, as new strings. */
static int find_categories(char **vals, int64_t n, nbs_categorical_covariate *cat, nbs_error *err) {
    char **sorted = nbs_malloc(sizeof *sorted * (size_t)(n ? n : 1), err);
    if (!sorted) return NBS_ERR_NOMEM;
    memcpy(sorted, vals, sizeof *sorted * (size_t)n);
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_str);
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++)
        if (!k || strcmp(sorted[i], sorted[k - 1])) sorted[k++] = sorted[i];
    int st = NBS_OK;
    if (k > INT32_MAX / NBS_MAX_CATEGORICAL) st = nbs_error_set(err, NBS_ERR_INPUT, "%lld categories", (long long)k);
    else if (!(cat->categories = nbs_calloc((size_t)k, sizeof *cat->categories, err))) st = NBS_ERR_NOMEM;
    for (int64_t i = 0; !st && i < k; i++)
        if (!(cat->categories[i] = nbs_strdup(sorted[i], err))) st = NBS_ERR_NOMEM;
    cat->n_categories = (int)k;
    free(sorted);
    return st;
}

/* The code of v among cat's sorted categories; -1 when it is none of them. */
static int32_t code_of(const nbs_categorical_covariate *cat, const char *v) {
    char *const *hit = bsearch(&v, cat->categories, (size_t)cat->n_categories, sizeof *cat->categories, cmp_str);
    return hit ? (int32_t)(hit - cat->categories) : -1;
}

static void free_categories(nbs_categorical_covariate *cat) {
    for (int i = 0; cat->categories && i < cat->n_categories; i++) free(cat->categories[i]);
    free(cat->categories);
    cat->categories = NULL;
    cat->n_categories = 0;
}

static int alloc_values(nbs_covariate_values *v, int64_t n, int n_cat, int n_cont, nbs_error *err) {
    memset(v, 0, sizeof *v);
    v->n_cells = n;
    v->n_categorical = n_cat;
    v->n_continuous = n_cont;
    const size_t cells = (size_t)(n ? n : 1);
    if (n_cat && !(v->codes = nbs_malloc(sizeof *v->codes * cells * (size_t)n_cat, err))) return NBS_ERR_NOMEM;
    if (n_cont && (!(v->standardised = nbs_malloc(sizeof *v->standardised * cells * (size_t)n_cont, err)) ||
                   !(v->raw = nbs_malloc(sizeof *v->raw * cells * (size_t)n_cont, err))))
        return NBS_ERR_NOMEM;
    return NBS_OK;
}

/* The columns the input section names, categorical ones first (the batch as the first of them). */
typedef struct {
    const char *name, *key;
} named_column;

int nbs_covariates_fit(const nbs_input_config *in, nbs_format format, const nbs_matrix *X, nbs_covariates *cov,
                       nbs_covariate_values *values, nbs_error *err) {
    memset(cov, 0, sizeof *cov);
    memset(values, 0, sizeof *values);
    named_column cat[NBS_MAX_CATEGORICAL], cont[NBS_MAX_COVARIATES];
    int n_cat = 0, n_cont = 0;
    const char *batch = nbs_covariates_batch_column(in);
    if (*batch) cat[n_cat++] = (named_column){batch, in->batch_key[0] ? "input.batch_key" : "input.samples"};
    for (int i = 0; i < in->categorical_covariates.n; i++)
        cat[n_cat++] = (named_column){in->categorical_covariates.names[i], "input.categorical_covariates"};
    for (int i = 0; i < in->continuous_covariates.n; i++)
        cont[n_cont++] = (named_column){in->continuous_covariates.names[i], "input.continuous_covariates"};
    const int64_t n = X->n_cells;
    /* every column's codes and values by themselves first: which are kept is known only then */
    int32_t *codes[NBS_MAX_CATEGORICAL] = {0};
    double *raw[NBS_MAX_COVARIATES] = {0};
    int st = NBS_OK;
    for (int k = 0; k < n_cat && !st; k++) {
        char **vals = NULL;
        if ((st = read_column(in, format, X, cat[k].name, cat[k].key, &vals, err))) break;
        for (int64_t i = 0; i < n && !st; i++)
            if (is_missing(vals[i])) st = missing_value(in, X, i, cat[k].name, cat[k].key, err);
        nbs_categorical_covariate *c = &cov->categorical[cov->n_categorical];
        if (!st) st = find_categories(vals, n, c, err);
        if (!st && c->n_categories < 2) {
            nbs_info("%s '%s' has one category ('%s') over the %lld cells: dropped, it tells no cells apart",
                     cat[k].key, cat[k].name, c->categories[0], (long long)n);
            free_categories(c);
        } else if (!st) {
            snprintf(c->name, sizeof c->name, "%s", cat[k].name);
            if (!k && *batch) cov->has_batch = 1;
            int32_t *col = codes[cov->n_categorical] = nbs_malloc(sizeof *col * (size_t)(n ? n : 1), err);
            if (!col) st = NBS_ERR_NOMEM;
            for (int64_t i = 0; !st && i < n; i++) col[i] = code_of(c, vals[i]);
            cov->n_categorical++;
        }
        nbs_io_free_labels(vals, n);
    }
    for (int k = 0; k < n_cont && !st; k++) {
        char **vals = NULL;
        if ((st = read_column(in, format, X, cont[k].name, cont[k].key, &vals, err))) break;
        double *col = nbs_malloc(sizeof *col * (size_t)(n ? n : 1), err);
        if (!col) st = NBS_ERR_NOMEM;
        double mean = 0, var = 0;
        for (int64_t i = 0; i < n && !st; i++) st = parse_number(in, X, i, cont[k].name, cont[k].key, vals[i], &col[i], err);
        for (int64_t i = 0; i < n && !st; i++) mean += col[i] / (double)n;
        for (int64_t i = 0; i < n && !st; i++) var += (col[i] - mean) * (col[i] - mean) / (double)n;
        nbs_io_free_labels(vals, n);
        const double sd = sqrt(var);
        if (!st && !(sd > 0 && isfinite(sd))) {
            nbs_info("%s '%s' has one value (%g) over the %lld cells: dropped, it tells no cells apart", cont[k].key,
                     cont[k].name, n ? col[0] : 0.0, (long long)n);
            free(col);
        } else if (!st) {
            nbs_continuous_covariate *c = &cov->continuous[cov->n_continuous];
            snprintf(c->name, sizeof c->name, "%s", cont[k].name);
            c->mean = mean;
            c->sd = sd;
            raw[cov->n_continuous++] = col;
        } else {
            free(col);
        }
    }
    if (!st) st = alloc_values(values, n, cov->n_categorical, cov->n_continuous, err);
    for (int64_t i = 0; !st && i < n; i++) {
        for (int k = 0; k < cov->n_categorical; k++) values->codes[i * cov->n_categorical + k] = codes[k][i];
        for (int k = 0; k < cov->n_continuous; k++) {
            const int64_t at = i * cov->n_continuous + k;
            values->raw[at] = raw[k][i];
            values->standardised[at] = (float)((raw[k][i] - cov->continuous[k].mean) / cov->continuous[k].sd);
        }
    }
    for (int k = 0; k < NBS_MAX_CATEGORICAL; k++) free(codes[k]);
    for (int k = 0; k < NBS_MAX_COVARIATES; k++) free(raw[k]);
    if (st) {
        nbs_covariates_free(cov);
        nbs_covariate_values_free(values);
    }
    return st;
}

int nbs_covariates_batch_codes(const nbs_input_config *in, nbs_format format, const nbs_matrix *X, int32_t **codes,
                               nbs_categorical_covariate *batch, nbs_error *err) {
    *codes = NULL;
    memset(batch, 0, sizeof *batch);
    const char *column = nbs_covariates_batch_column(in);
    if (!*column) return NBS_OK;
    const int64_t n = X->n_cells;
    char **vals = NULL, **present = NULL;
    int st;
    /* the cells the filters will remove need no value: the labels readers leave them NULL */
    if (in->samples.n && !strcmp(column, NBS_SAMPLE_COLUMN)) st = sample_column(in, X, &vals, err);
    else if (in->labels_path[0]) st = nbs_io_read_labels_table(in->labels_path, column, X, &vals, err);
    else if (format == NBS_FMT_H5AD) st = nbs_io_read_h5ad_obs(in->path, column, X, &vals, err);
    else return read_column(in, format, X, column, "input.batch_key", &vals, err); /* the error for no source */
    if (st) {
        nbs_error_prefix(err, "input.batch_key '%s': ", column);
        return st;
    }
    int64_t k = 0;
    if (!(present = nbs_malloc(sizeof *present * (size_t)(n ? n : 1), err))) st = NBS_ERR_NOMEM;
    for (int64_t i = 0; !st && i < n; i++)
        if (!is_missing(vals[i])) present[k++] = vals[i];
    if (!st) st = find_categories(present, k, batch, err);
    if (!st && !(*codes = nbs_malloc(sizeof **codes * (size_t)(n ? n : 1), err))) st = NBS_ERR_NOMEM;
    for (int64_t i = 0; !st && i < n; i++) (*codes)[i] = is_missing(vals[i]) ? -1 : code_of(batch, vals[i]);
    if (!st) snprintf(batch->name, sizeof batch->name, "%s", column);
    free(present);
    nbs_io_free_labels(vals, n);
    if (st) {
        free(*codes);
        *codes = NULL;
        free_categories(batch);
    }
    return st;
}

void nbs_categorical_covariate_free(nbs_categorical_covariate *c) { free_categories(c); }

/* "a, b, c", or "a, b, ..." where the rest would not fit in n (n >= 8) */
static void list_categories(const nbs_categorical_covariate *c, char *buf, size_t n) {
    size_t used = 0;
    buf[0] = '\0';
    int i = 0;
    for (; i < c->n_categories; i++) {
        const int w = snprintf(buf + used, n - used, "%s%s", i ? ", " : "", c->categories[i]);
        if (w < 0 || used + (size_t)w + 6 >= n) break;
        used += (size_t)w;
    }
    if (i < c->n_categories) snprintf(buf + used, n - used, "%s...", used ? ", " : "");
}

int nbs_covariates_encode(const nbs_covariates *cov, const nbs_input_config *in, nbs_format format,
                          const nbs_matrix *X, nbs_covariate_values *values, nbs_error *err) {
    const int64_t n = X->n_cells;
    const int K = cov->n_categorical, KC = cov->n_continuous;
    static const char what[] = "the model's covariate";
    int st = alloc_values(values, n, K, KC, err);
    for (int k = 0; k < K && !st; k++) {
        const nbs_categorical_covariate *c = &cov->categorical[k];
        char **vals = NULL;
        if ((st = read_column(in, format, X, c->name, what, &vals, err))) break;
        for (int64_t i = 0; i < n && !st; i++) {
            if (is_missing(vals[i])) {
                st = missing_value(in, X, i, c->name, what, err);
                break;
            }
            const int32_t code = code_of(c, vals[i]);
            if (code < 0) {
                char known[1024];
                list_categories(c, known, sizeof known);
                st = nbs_error_set(err, NBS_ERR_INPUT, "%s: cell '%s' has '%s' in column '%s', a category the model "
                                   "was not trained with; it knows %d: %s. Embed only cells of those, add the new "
                                   "categories to the model with 'nbsphere embed --adapt' (it trains only their "
                                   "weights), or train a model that saw this one", source_of(in), X->barcodes[i], vals[i], c->name,
                                   c->n_categories, known);
            }
            values->codes[i * K + k] = code;
        }
        nbs_io_free_labels(vals, n);
    }
    for (int k = 0; k < KC && !st; k++) {
        const nbs_continuous_covariate *c = &cov->continuous[k];
        char **vals = NULL;
        if ((st = read_column(in, format, X, c->name, what, &vals, err))) break;
        for (int64_t i = 0; i < n && !st; i++) {
            double v;
            if ((st = parse_number(in, X, i, c->name, what, vals[i], &v, err))) break;
            values->raw[i * KC + k] = v;
            values->standardised[i * KC + k] = (float)((v - c->mean) / c->sd);
        }
        nbs_io_free_labels(vals, n);
    }
    if (st) nbs_covariate_values_free(values);
    return st;
}

int nbs_covariates_extend(const nbs_covariates *cov, const nbs_input_config *in, nbs_format format,
                          const nbs_matrix *X, nbs_covariates *grown, int32_t *old_to_new[], int *n_new,
                          nbs_error *err) {
    static const char what[] = "the model's covariate";
    const int64_t n = X->n_cells;
    *grown = *cov; /* names, counts, the continuous standardisation; categories replaced below */
    for (int k = 0; k < NBS_MAX_CATEGORICAL; k++) grown->categorical[k].categories = NULL, old_to_new[k] = NULL;
    *n_new = 0;
    int st = NBS_OK;
    for (int k = 0; k < cov->n_categorical && !st; k++) {
        const nbs_categorical_covariate *c = &cov->categorical[k];
        nbs_categorical_covariate *g = &grown->categorical[k];
        g->n_categories = 0;
        char **vals = NULL;
        if ((st = read_column(in, format, X, c->name, what, &vals, err))) break;
        /* (n_categories + n) the known categories and every cell's value: their distinct values */
        char **all = nbs_malloc(sizeof *all * (size_t)(c->n_categories + n), err);
        if (!all) st = NBS_ERR_NOMEM;
        for (int64_t i = 0; i < n && !st; i++)
            if (is_missing(vals[i])) st = missing_value(in, X, i, c->name, what, err);
        if (!st) {
            memcpy(all, c->categories, sizeof *all * (size_t)c->n_categories);
            memcpy(all + c->n_categories, vals, sizeof *all * (size_t)n);
            st = find_categories(all, c->n_categories + n, g, err);
        }
        free(all);
        nbs_io_free_labels(vals, n);
        if (!st && !(old_to_new[k] = nbs_malloc(sizeof(int32_t) * (size_t)c->n_categories, err))) st = NBS_ERR_NOMEM;
        for (int i = 0; !st && i < c->n_categories; i++) old_to_new[k][i] = code_of(g, c->categories[i]);
        if (!st) *n_new += g->n_categories - c->n_categories;
    }
    if (st) {
        nbs_covariates_free(grown);
        for (int k = 0; k < NBS_MAX_CATEGORICAL; k++) free(old_to_new[k]), old_to_new[k] = NULL;
    }
    return st;
}

nbs_covariate_layout nbs_covariates_layout(const nbs_covariates *cov) {
    nbs_covariate_layout l = {0};
    l.n_categorical = cov->n_categorical;
    l.n_continuous = cov->n_continuous;
    l.has_batch = cov->has_batch;
    for (int k = 0; k < cov->n_categorical; k++) l.n_categories[k] = cov->categorical[k].n_categories;
    return l;
}

void nbs_covariates_attach(const nbs_covariate_values *values, nbs_cells *c) {
    c->covariate_codes = values->codes;
    c->n_categorical = values->n_categorical;
    c->continuous = values->standardised;
    c->n_continuous = values->n_continuous;
}

int nbs_covariate_values_gather(const nbs_covariate_values *v, const int64_t *rows, int64_t n,
                                nbs_covariate_values *out, nbs_error *err) {
    const int K = v->n_categorical, KC = v->n_continuous;
    int st = alloc_values(out, n, K, KC, err);
    for (int64_t i = 0; !st && i < n; i++) {
        for (int k = 0; k < K; k++) out->codes[i * K + k] = v->codes[rows[i] * K + k];
        for (int k = 0; k < KC; k++) {
            out->standardised[i * KC + k] = v->standardised[rows[i] * KC + k];
            out->raw[i * KC + k] = v->raw[rows[i] * KC + k];
        }
    }
    if (st) nbs_covariate_values_free(out);
    return st;
}

void nbs_covariates_describe(const nbs_covariates *cov, char *buf, size_t n) {
    size_t used = 0;
    buf[0] = '\0';
    for (int k = 0; k < cov->n_categorical && used < n; k++) {
        const nbs_categorical_covariate *c = &cov->categorical[k];
        used += (size_t)snprintf(buf + used, n - used, "%s%s'%s' (%d categories)", used ? ", " : "",
                                 !k && cov->has_batch ? "batch " : "", c->name, c->n_categories);
    }
    for (int k = 0; k < cov->n_continuous && used < n; k++) {
        const nbs_continuous_covariate *c = &cov->continuous[k];
        used += (size_t)snprintf(buf + used, n - used, "%s'%s' (mean %.4g, sd %.4g)", used ? ", " : "", c->name,
                                 c->mean, c->sd);
    }
    if (!used && n) snprintf(buf, n, "none");
}

void nbs_covariates_free(nbs_covariates *cov) {
    for (int k = 0; k < NBS_MAX_CATEGORICAL; k++) free_categories(&cov->categorical[k]);
    memset(cov, 0, sizeof *cov);
}

void nbs_covariate_values_free(nbs_covariate_values *values) {
    free(values->codes);
    free(values->standardised);
    free(values->raw);
    memset(values, 0, sizeof *values);
}
