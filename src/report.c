/* The collapse report's files for programs and spreadsheets: collapse_report.json and
 * collapse_dimensions.tsv, each written through a temporary name (io.h). The HTML page is
 * report_html.c; what both share (the input's checks, the epoch a dimension collapsed) is here. */
#include <math.h>
#include <stdio.h>

#include "nbsphere/io.h"
#include "nbsphere/json.h"
#include "nbsphere/version.h"
#include "report_internal.h"

int nbs_report_check_input(const char *path, const nbs_report_input *in, nbs_error *err) {
    if (!in || !in->report)
        return nbs_error_set(err, NBS_ERR_INTERNAL, "%s: no collapse report to write (bug)", path);
    const nbs_collapse_report *r = in->report;
    if (r->d > 0 && (!r->kl || !r->activity || !r->sens_weight || !r->sens_jacobian || !r->decoder_nats ||
                     !r->verdict))
        return nbs_error_set(err, NBS_ERR_INTERNAL,
                             "%s: the collapse report has %d dimensions but no per-dimension "
                             "measures (bug: nbs_diagnose did not fill it)", path, r->d);
    if (in->n_cells > 0 && in->embedding && in->d < 1)
        return nbs_error_set(err, NBS_ERR_INTERNAL, "%s: embedding of %lld cells with d = %d (bug)",
                             path, (long long)in->n_cells, in->d);
    return NBS_OK;
}

/* The measure that says whether the encoder sends information through dimension j, and its
 * threshold: KL_j for the Gaussian, activity on the sphere (where the KL does not split). */
static double sends_value(const nbs_collapse_report *r, const double *kl, const double *act, int j) {
    return nbs_report_dim_on_sphere(r, j) ? act[j] : kl[j];
}
static double sends_tau(const nbs_collapse_report *r, int j) {
    return nbs_report_dim_on_sphere(r, j) ? r->tau_activity : r->tau_kl;
}

/* The moment of posterior collapse: the first tracked epoch from which the encoder sent nothing
 * through dimension j (below its threshold) to the end of the track, whatever the decoder still
 * does (its weights outlive the information, so its sensitivity falls later, if ever); -1 if the
 * encoder still sent at the last tracked epoch, or there is no track. */
int nbs_report_collapsed_since(const nbs_report_input *in, int j) {
    if (!nbs_report_has_track(in)) return -1;
    const nbs_diagnose_track *t = in->track;
    const nbs_collapse_report *r = in->report;
    int since = -1;
    if (sends_value(r, r->kl, r->activity, j) >= sends_tau(r, j)) return -1; /* the final diagnosis says it sends */
    for (int i = t->n - 1; i >= 0; i--) {
        const int64_t o = (int64_t)i * t->d;
        if (sends_value(r, t->kl + o, t->activity + o, j) >= sends_tau(r, j)) break;
        since = t->epoch[i];
    }
    return since;
}

const char *const nbs_report_gain_definition =
    "mean over the diagnosed cells of log p(x | z at the posterior location, the cell's own covariates) - "
    "log p(x | one constant z, the same covariates): what z adds to the reconstruction beyond the batch and "
    "other covariates, which stay fixed in both terms";
const char *const nbs_report_confounded_warning =
    "batch and labels are confounded: correcting for the batch may remove biology";

int nbs_report_metrics(const nbs_integration *r, nbs_report_metric *out) {
    const nbs_report_metric m[NBS_REPORT_METRICS] = {
        {"ilisi", "iLISI", "batch",
         "(median over cells of the inverse Simpson index of the batches among the cell's k nearest neighbours, "
         "weighted to perplexity k/3) - 1, over (batches - 1); 1 = batches fully mixed", r->ilisi},
        {"batch_asw", "batch ASW", "batch",
         "within each label, mean over its cells of 1 - |silhouette width of the batch|, then mean over labels; "
         "1 = batches overlap", r->batch_asw},
        {"graph_connectivity", "graph connectivity", "batch",
         "mean over labels of the share of the label's cells in the largest connected component of the 15-NN "
         "graph restricted to the label; 1 = each label one piece", r->graph_connectivity},
        {"knn_accuracy", "k-NN label accuracy", "bio",
         "5-fold cross-validated accuracy of the majority label of the 15 nearest cells", r->knn_accuracy},
        {"clisi", "cLISI", "bio",
         "(labels - median inverse Simpson index of the labels among the k nearest neighbours) over (labels - 1); "
         "1 = neighbourhoods hold one label", r->clisi},
        {"nmi", "Leiden NMI", "bio",
         "normalised mutual information (arithmetic mean of the entropies) of the labels and the Leiden clusters, "
         "at the resolution of 0.1 to 2.0 with the best NMI", r->nmi},
        {"ari", "Leiden ARI", "bio", "adjusted Rand index of the labels and the Leiden clusters of the best NMI",
         r->ari},
        {"cell_type_asw", "cell-type ASW", "bio", "(mean silhouette width of the labels + 1) / 2", r->label_asw},
        {"batch_score", "batch correction", "aggregate", "mean of the defined batch metrics", r->batch_score},
        {"bio_score", "biology conservation", "aggregate", "mean of the defined biology metrics", r->bio_score},
        {"overall", "overall (scIB)", "aggregate", "0.4 x batch correction + 0.6 x biology conservation",
         r->overall},
    };
    for (int i = 0; i < NBS_REPORT_METRICS; i++) out[i] = m[i];
    return NBS_REPORT_METRICS;
}

typedef void (*report_body)(FILE *f, const nbs_report_input *in);

/* Checks the input, then writes the body through a temporary name. */
static int write_report(const char *path, const nbs_report_input *in, report_body body, nbs_error *err) {
    char tmp[NBS_PATH_MAX];
    FILE *f;
    int st = nbs_report_check_input(path, in, err);
    if (!st) st = nbs_io_atomic_open(path, tmp, &f, err);
    if (st) return st;
    body(f, in);
    return nbs_io_atomic_close(f, tmp, path, err);
}

/* ------------------------------------------------------------------ JSON */

static void json_num_array(FILE *f, const double *v, int n, int64_t stride) {
    fprintf(f, "[");
    for (int i = 0; i < n; i++) {
        if (i) fprintf(f, ", ");
        nbs_json_number(f, v[(int64_t)i * stride], 9);
    }
    fprintf(f, "]");
}

static void json_int_array(FILE *f, const int *v, int n) {
    fprintf(f, "[");
    for (int i = 0; i < n; i++) fprintf(f, "%s%d", i ? ", " : "", v[i]);
    fprintf(f, "]");
}

static void json_tracking(FILE *f, const nbs_report_input *in) {
    if (!nbs_report_has_track(in)) {
        fprintf(f, "null");
        return;
    }
    const nbs_diagnose_track *t = in->track;
    fprintf(f, "{\n");
    nbs_json_key(f, 4, "epochs");
    json_int_array(f, t->epoch, t->n);
    fprintf(f, ",\n");
    nbs_json_key(f, 4, "active");
    json_int_array(f, t->n_active, t->n);
    fprintf(f, ",\n");
    nbs_json_key(f, 4, "collapsed");
    json_int_array(f, t->n_collapsed, t->n);
    fprintf(f, ",\n");
    nbs_json_key(f, 4, "mutual_information");
    json_num_array(f, t->mi, t->n, 1);
    fprintf(f, ",\n");
    nbs_json_key(f, 4, "kl");
    fprintf(f, "[");
    for (int i = 0; i < t->n; i++) {
        fprintf(f, "%s\n      ", i ? "," : "");
        json_num_array(f, t->kl + (int64_t)i * t->d, t->d, 1);
    }
    fprintf(f, "\n    ]\n  }");
}

/* What the training log shows (nbs_train_log_health); null without a log. */
static void json_training(FILE *f, const nbs_report_input *in) {
    if (!nbs_report_has_log(in)) {
        fprintf(f, "null");
        return;
    }
    nbs_train_health th;
    nbs_train_log_health(in->log, &th);
    fprintf(f, "{\"unstable\": %s, \"overfits\": %s, \"first_over_last_loss\": ",
                       th.unstable ? "true" : "false", th.overfits ? "true" : "false");
    nbs_json_number(f, th.first_over_last, 9);
    fprintf(f, ", \"largest_loss_jump\": ");
    nbs_json_number(f, th.largest_jump, 9);
    fprintf(f, ", \"largest_loss_jump_epoch\": %d, \"best_validation_epoch\": ", th.jump_epoch);
    if (th.best_val_epoch) fprintf(f, "%d", th.best_val_epoch);
    else fprintf(f, "null");
    fprintf(f, ", \"epochs_since_best_validation\": %d, \"message\": ", th.val_worse_epochs);
    nbs_json_string(f, th.message[0] ? th.message : NULL);
    fprintf(f, "}");
}

/* The scIB metrics; a metric not defined for the data is left out (the notes say why). */
static void json_integration(FILE *f, const nbs_report_input *in) {
    const nbs_integration *r = in->integration;
    nbs_report_metric m[NBS_REPORT_METRICS];
    int nm = nbs_report_metrics(r, m);
    nbs_json_key(f, 2, "integration");
    fprintf(f, "{\n");
    nbs_json_key(f, 4, "batch_key");
    nbs_json_string(f, in->batch_key);
    fprintf(f, ",\n");
    nbs_json_key(f, 4, "label_column");
    nbs_json_string(f, in->label_column);
    fprintf(f, ",\n");
    nbs_json_key(f, 4, "batches");
    fprintf(f, "%d,\n", r->n_batches);
    nbs_json_key(f, 4, "labels");
    fprintf(f, "%d,\n", r->n_labels);
    nbs_json_key(f, 4, "labelled_cells");
    fprintf(f, "%lld,\n", (long long)r->n_labelled);
    nbs_json_key(f, 4, "lisi_k");
    fprintf(f, "%d,\n", r->lisi_k);
    nbs_json_key(f, 4, "lisi_perplexity");
    nbs_json_number(f, r->lisi_k / 3.0, 9);
    fprintf(f, ",\n");
    nbs_json_key(f, 4, "graph_k");
    fprintf(f, "%d,\n", NBS_INTEGRATION_GRAPH_K);
    nbs_json_key(f, 4, "leiden_resolution");
    nbs_json_number(f, r->resolution, 9);
    fprintf(f, ",\n");
    nbs_json_key(f, 4, "leiden_clusters");
    if (isfinite(r->resolution)) fprintf(f, "%d,\n", r->n_clusters);
    else fprintf(f, "null,\n");
    nbs_json_key(f, 4, "metrics");
    fprintf(f, "{");
    int first = 1;
    for (int i = 0; i < nm; i++) {
        if (!isfinite(m[i].value)) continue;
        fprintf(f, "%s\n      ", first ? "" : ",");
        first = 0;
        nbs_json_string(f, m[i].key);
        fprintf(f, ": {\"value\": ");
        nbs_json_number(f, m[i].value, 9);
        fprintf(f, ", \"kind\": ");
        nbs_json_string(f, m[i].kind);
        fprintf(f, ", \"definition\": ");
        nbs_json_string(f, m[i].definition);
        fprintf(f, "}");
    }
    fprintf(f, "%s},\n", first ? "" : "\n    ");
    nbs_json_key(f, 4, "confounding");
    fprintf(f, "{\"cramers_v\": ");
    nbs_json_number(f, r->cramers_v, 9);
    fprintf(f, ", \"threshold\": ");
    nbs_json_number(f, NBS_CONFOUNDED_CRAMERS_V, 9);
    fprintf(f, ", \"labels_in_one_batch\": ");
    nbs_json_string(f, r->one_batch_labels[0] ? r->one_batch_labels : NULL);
    fprintf(f, ", \"confounded\": %s, \"warning\": ", r->confounded ? "true" : "false");
    nbs_json_string(f, r->confounded ? nbs_report_confounded_warning : NULL);
    fprintf(f, "},\n");
    nbs_json_key(f, 4, "reconstruction_gain_covariates_fixed");
    fprintf(f, "{\"nats\": ");
    nbs_json_number(f, in->report->recon_gain, 9);
    fprintf(f, ", \"se\": ");
    nbs_json_number(f, in->report->recon_gain_se, 9);
    fprintf(f, ", \"definition\": ");
    nbs_json_string(f, nbs_report_gain_definition);
    fprintf(f, "},\n");
    nbs_json_key(f, 4, "notes");
    nbs_json_string(f, r->notes[0] ? r->notes : NULL);
    fprintf(f, "\n  },\n");
}

/* How a k-NN search ran (graph.h): ', "knn_method": ..., "knn_recall": ...' (recall null for exact). */
static void json_knn_search(FILE *f, const nbs_knn_info *info) {
    const int approx = info->method == NBS_KNN_APPROXIMATE;
    fprintf(f, ", \"knn_method\": \"%s\", \"knn_recall\": ", approx ? "approximate" : "exact");
    nbs_json_number(f, approx ? info->recall : NAN, 9);
}

/* The trajectory stage: graph, clusters, root, cells without pseudotime, diffusion eigenvalues. */
static void json_trajectory(FILE *f, const nbs_trajectory *t) {
    nbs_json_key(f, 2, "trajectory");
    fprintf(f, "{\"k\": %d, \"metric\": \"%s\", \"kernel\": \"gauss\", \"n_clusters\": %d, \"resolution\": ", t->k,
            t->metric == NBS_METRIC_COSINE ? "cosine" : "euclidean", t->n_clusters);
    nbs_json_number(f, t->resolution, 9);
    fprintf(f, ", \"root_index\": %lld, \"root\": ", (long long)t->root);
    nbs_json_string(f, t->root_rule);
    fprintf(f, ", \"components\": %lld, \"cells_without_pseudotime\": %lld, \"diffusion_eigenvalues\": ",
            (long long)t->n_components, (long long)t->n_unreached);
    json_num_array(f, t->evals, t->n_dcs, 1);
    json_knn_search(f, &t->knn_info);
    const nbs_wraparound *w = &t->wrap;
    if (w->computed) {
        fprintf(f, ",\n    \"wraparound\": {\"reference\": \"PCA of log1p(CP10k)\", \"reference_dims\": %d, "
                   "\"threshold_hops\": %d, \"wrap_share\": ", w->ref_dims, w->hops);
        nbs_json_number(f, w->min_share, 9);
        fprintf(f, ", \"min_edges\": %d, \"edges\": %lld, \"shortcuts\": %lld, \"fraction\": ", NBS_WRAP_MIN_EDGES,
                (long long)w->n_edges, (long long)w->n_shortcuts);
        nbs_json_number(f, w->fraction, 9);
        fprintf(f, ", \"wraps\": %s, \"verdict\": ", w->wraps ? "true" : "false");
        nbs_json_string(f, w->verdict);
        for (int by_label = 0; by_label < 2; by_label++) {
            const nbs_wrap_pair *pairs = by_label ? w->label_pairs : w->pairs;
            const int np = by_label ? w->n_label_pairs : w->n_pairs;
            if (by_label && !w->label_pairs) break;
            fprintf(f, ",\n      \"%s\": [", by_label ? "label_pairs" : "pairs");
            for (int p = 0; p < np; p++) {
                fprintf(f, "%s{\"a\": ", p ? ",\n        " : "");
                if (by_label) nbs_json_string(f, w->label_names[pairs[p].a]);
                else fprintf(f, "\"%d\"", pairs[p].a);
                fprintf(f, ", \"b\": ");
                if (by_label) nbs_json_string(f, w->label_names[pairs[p].b]);
                else fprintf(f, "\"%d\"", pairs[p].b);
                fprintf(f, ", \"shortcuts\": %lld, \"edges\": %lld, \"share\": ", (long long)pairs[p].shortcuts,
                        (long long)pairs[p].edges);
                nbs_json_number(f, (double)pairs[p].shortcuts / (double)pairs[p].edges, 9);
                fprintf(f, "}");
            }
            fprintf(f, "]");
        }
        fprintf(f, "}");
    }
    fprintf(f, "},\n");
}

/* "discrete": the category usage of the discrete latent */
static void json_categories(FILE *f, const nbs_collapse_report *r) {
    nbs_json_key(f, 2, "discrete");
    fprintf(f, "{\"categories\": %d, \"entropy\": ", r->n_categories);
    nbs_json_number(f, r->category_entropy, 9);
    fprintf(f, ", \"max_entropy\": ");
    nbs_json_number(f, log((double)r->n_categories), 9);
    fprintf(f, ", \"kl\": ");
    nbs_json_number(f, r->kl_category, 9);
    fprintf(f, ", \"dead\": %d, \"dead_share\": ", r->n_dead_categories);
    nbs_json_number(f, NBS_DEAD_CATEGORY_SHARE, 9);
    fprintf(f, ", \"summary\": ");
    nbs_json_string(f, r->category_summary);
    fprintf(f, ",\n    \"cells\": [");
    for (int c = 0; c < r->n_categories; c++) fprintf(f, "%s%lld", c ? ", " : "", (long long)r->category_cells[c]);
    fprintf(f, "],\n    \"mean_probability\": [");
    for (int c = 0; c < r->n_categories; c++) {
        if (c) fprintf(f, ", ");
        nbs_json_number(f, r->category_mass[c], 9);
    }
    fprintf(f, "]},\n");
}

/* A ladder's layers, bottom (1) first: each one's dimensions, KL, MI and verdict. */
static void json_layers(FILE *f, const nbs_collapse_report *r) {
    nbs_json_key(f, 2, "layers");
    fprintf(f, "[");
    for (int l = 0; l < r->n_layers; l++) {
        const nbs_layer_report *Y = &r->layers[l];
        fprintf(f, "%s\n    {\"layer\": %d, \"latent\": ", l ? "," : "", l + 1);
        nbs_json_string(f, nbs_latent_word(Y->latent));
        fprintf(f, ", \"dims\": [%d, %d], \"kl\": ", Y->offset + 1, Y->offset + Y->d);
        nbs_json_number(f, Y->kl_total, 9);
        fprintf(f, ", \"mutual_information\": ");
        nbs_json_number(f, Y->mi, 9);
        fprintf(f, ", \"active_units\": %d, \"collapsed_units\": %d, \"inconsistent_units\": %d, \"verdict\": ",
                Y->n_active, Y->n_collapsed, Y->n_inconsistent);
        nbs_json_string(f, nbs_model_verdict_word(Y->verdict));
        fprintf(f, ", \"summary\": ");
        nbs_json_string(f, Y->summary);
        fprintf(f, "}");
    }
    fprintf(f, "\n  ],\n");
}

/* The opening of a report object: the version and the title. */
static void json_head(FILE *f, const char *title) {
    fprintf(f, "{\n");
    nbs_json_key(f, 2, "nbsphere_version");
    nbs_json_string(f, NBS_VERSION);
    fprintf(f, ",\n");
    nbs_json_key(f, 2, "title");
    nbs_json_string(f, title);
    fprintf(f, ",\n");
}

static void json_body(FILE *f, const nbs_report_input *in) {
    const nbs_collapse_report *r = in->report;
    json_head(f, in->title);
    nbs_json_key(f, 2, "latent");
    nbs_json_string(f, nbs_latent_word(r->latent));
    fprintf(f, ",\n");
    nbs_json_key(f, 2, "latent_dim");
    fprintf(f, "%d,\n", r->d);
    nbs_json_key(f, 2, "cells");
    fprintf(f, "%lld,\n", (long long)in->n_cells);
    nbs_json_key(f, 2, "diagnosed_cells");
    fprintf(f, "%lld,\n", (long long)r->n_cells);
    nbs_json_key(f, 2, "thresholds");
    fprintf(f, "{\"tau_kl\": ");
    nbs_json_number(f, r->tau_kl, 9);
    fprintf(f, ", \"tau_sensitivity\": ");
    nbs_json_number(f, r->tau_sensitivity, 9);
    fprintf(f, ", \"tau_activity\": ");
    nbs_json_number(f, r->tau_activity, 9);
    fprintf(f, ", \"tau_decoder_nats\": ");
    nbs_json_number(f, r->tau_decoder_nats, 9);
    fprintf(f, ", \"tau_decoder_relative\": ");
    nbs_json_number(f, r->tau_decoder_relative, 9);
    fprintf(f, "},\n");
    nbs_json_key(f, 2, "verdict");
    nbs_json_string(f, nbs_model_verdict_word(r->model));
    fprintf(f, ",\n");
    nbs_json_key(f, 2, "summary");
    nbs_json_string(f, r->summary);
    fprintf(f, ",\n");
    nbs_json_key(f, 2, "remedies");
    nbs_json_string(f, r->remedies);
    fprintf(f, ",\n");
    nbs_json_key(f, 2, "total_kl");
    nbs_json_number(f, r->kl_total, 9);
    fprintf(f, ",\n");
    nbs_json_key(f, 2, "mutual_information");
    fprintf(f, "{\"nats\": ");
    nbs_json_number(f, r->mi, 9);
    fprintf(f, ", \"batch\": %d, \"estimator\": ", r->mi_batch);
    nbs_json_string(f, nbs_report_is_sphere(r) ? NULL
                                               : "minibatch aggregate posterior (He et al. 2019); biased "
                                                 "low by at most log(batch)");
    fprintf(f, "},\n");
    nbs_json_key(f, 2, "reconstruction_gain");
    nbs_json_number(f, r->recon_gain, 9);
    fprintf(f, ",\n");
    nbs_json_key(f, 2, "reconstruction_gain_se");
    nbs_json_number(f, r->recon_gain_se, 9);
    fprintf(f, ",\n");
    nbs_json_key(f, 2, "decoder_uses_z");
    fprintf(f, "%s,\n", r->z_unused ? "false" : "true");
    if (r->n_categories) json_categories(f, r);
    nbs_json_key(f, 2, "active_units");
    fprintf(f, "%d,\n", r->n_active);
    nbs_json_key(f, 2, "collapsed_units");
    fprintf(f, "%d,\n", r->n_collapsed);
    nbs_json_key(f, 2, "inconsistent_units");
    fprintf(f, "%d,\n", r->n_inconsistent);
    nbs_json_key(f, 2, "inactive_units");
    fprintf(f, "%d,\n", r->n_inactive_units);
    if (nbs_report_is_sphere(r)) {
        static const char *qn[5] = {"p05", "p25", "p50", "p75", "p95"};
        nbs_json_key(f, 2, "kappa_quantiles");
        fprintf(f, "{");
        for (int q = 0; q < 5; q++) {
            fprintf(f, "%s\"%s\": ", q ? ", " : "", qn[q]);
            nbs_json_number(f, r->kappa_q[q], 9);
        }
        fprintf(f, "},\n");
    }
    if (isfinite(in->knn_embedding) || isfinite(in->knn_pca)) {
        nbs_json_key(f, 2, "quality");
        fprintf(f, "{\"knn_k\": %d, \"label_column\": ", in->knn_k);
        nbs_json_string(f, in->label_column);
        fprintf(f, ", \"embedding\": ");
        nbs_json_number(f, in->knn_embedding, 9);
        fprintf(f, ", \"pca\": ");
        nbs_json_number(f, in->knn_pca, 9);
        if (in->knn_info) json_knn_search(f, in->knn_info);
        fprintf(f, "},\n");
    }
    if (in->integration) json_integration(f, in);
    if (in->trajectory) json_trajectory(f, in->trajectory);
    nbs_json_key(f, 2, "dimensions");
    fprintf(f, "[");
    for (int j = 0; j < r->d; j++) {
        fprintf(f, "%s\n    {\"dim\": %d, ", j ? "," : "", j + 1);
        if (r->n_layers) fprintf(f, "\"layer\": %d, ", nbs_report_dim_layer(r, j) + 1);
        fprintf(f, "\"kl\": ");
        nbs_json_number(f, nbs_report_dim_on_sphere(r, j) ? NAN : r->kl[j], 9);
        fprintf(f, ", \"activity\": ");
        nbs_json_number(f, r->activity[j], 9);
        fprintf(f, ", \"sensitivity_weight\": ");
        nbs_json_number(f, r->sens_weight[j], 9);
        fprintf(f, ", \"sensitivity_jacobian\": ");
        nbs_json_number(f, r->sens_jacobian[j], 9);
        fprintf(f, ", \"decoder_nats\": ");
        nbs_json_number(f, r->decoder_nats[j], 9);
        fprintf(f, ", \"verdict\": ");
        nbs_json_string(f, nbs_dim_verdict_word(r->verdict[j]));
        int since = nbs_report_collapsed_since(in, j);
        if (since >= 0) fprintf(f, ", \"collapsed_since_epoch\": %d}", since);
        else fprintf(f, ", \"collapsed_since_epoch\": null}");
    }
    fprintf(f, "%s],\n", r->d ? "\n  " : "");
    if (r->n_layers) json_layers(f, r);
    nbs_json_key(f, 2, "training");
    json_training(f, in);
    fprintf(f, ",\n");
    nbs_json_key(f, 2, "tracking");
    json_tracking(f, in);
    fprintf(f, "\n}\n");
}

int nbs_report_write_json(const char *path, const nbs_report_input *in, nbs_error *err) {
    return write_report(path, in, json_body, err);
}

int nbs_report_write_trajectory_json(const char *path, const nbs_report_input *in, const char *source,
                                     nbs_error *err) {
    if (!in || !in->trajectory)
        return nbs_error_set(err, NBS_ERR_INTERNAL, "%s: no trajectory to write (bug)", path);
    char tmp[NBS_PATH_MAX];
    FILE *f;
    int st = nbs_io_atomic_open(path, tmp, &f, err);
    if (st) return st;
    json_head(f, in->title);
    nbs_json_key(f, 2, "embedding");
    nbs_json_string(f, source);
    fprintf(f, ",\n");
    json_trajectory(f, in->trajectory);
    nbs_json_key(f, 2, "n_cells");
    fprintf(f, "%lld\n}\n", (long long)in->n_cells);
    return nbs_io_atomic_close(f, tmp, path, err);
}

/* ------------------------------------------------------------------ TSV */

static void tsv_num(FILE *f, double v) {
    if (isfinite(v)) fprintf(f, "\t%.6g", v);
    else fprintf(f, "\tNA");
}

/* The discrete latent's collapse_categories.tsv: one row per category. */
static void tsv_categories(FILE *f, const nbs_report_input *in) {
    const nbs_collapse_report *r = in->report;
    fprintf(f, "category\tcells\tshare\tmean_probability\tverdict\n");
    for (int c = 0; c < r->n_categories; c++) {
        fprintf(f, "%d\t%lld", c, (long long)r->category_cells[c]);
        tsv_num(f, (double)r->category_cells[c] / (double)r->n_cells);
        tsv_num(f, r->category_mass[c]);
        fprintf(f, "\t%s\n", r->category_cells[c] < NBS_DEAD_CATEGORY_SHARE * (double)r->n_cells ? "dead" : "used");
    }
}

static void tsv_body(FILE *f, const nbs_report_input *in) {
    const nbs_collapse_report *r = in->report;
    /* a ladder's dimensions carry their layer (1 = bottom) */
    fprintf(f, "dim%s\tkl\tactivity\tsensitivity_weight\tsensitivity_jacobian\tdecoder_nats\t"
               "verdict\tcollapsed_since_epoch\n", r->n_layers ? "\tlayer" : "");
    for (int j = 0; j < r->d; j++) {
        fprintf(f, "%d", j + 1);
        if (r->n_layers) fprintf(f, "\t%d", nbs_report_dim_layer(r, j) + 1);
        tsv_num(f, nbs_report_dim_on_sphere(r, j) ? NAN : r->kl[j]);
        tsv_num(f, r->activity[j]);
        tsv_num(f, r->sens_weight[j]);
        tsv_num(f, r->sens_jacobian[j]);
        tsv_num(f, r->decoder_nats[j]);
        fprintf(f, "\t%s", nbs_dim_verdict_word(r->verdict[j]));
        int since = nbs_report_collapsed_since(in, j);
        if (since >= 0) fprintf(f, "\t%d\n", since);
        else fprintf(f, "\tNA\n");
    }
}

int nbs_report_write_categories_tsv(const char *path, const nbs_report_input *in, nbs_error *err) {
    return write_report(path, in, tsv_categories, err);
}

int nbs_report_write_tsv(const char *path, const nbs_report_input *in, nbs_error *err) {
    return write_report(path, in, tsv_body, err);
}

static void integration_tsv_body(FILE *f, const nbs_report_input *in) {
    nbs_report_metric m[NBS_REPORT_METRICS];
    int nm = nbs_report_metrics(in->integration, m);
    fprintf(f, "metric\tkind\tvalue\tdefinition\n");
    for (int i = 0; i < nm; i++) {
        if (!isfinite(m[i].value)) continue; /* not defined for these data */
        fprintf(f, "%s\t%s", m[i].key, m[i].kind);
        tsv_num(f, m[i].value);
        fprintf(f, "\t%s\n", m[i].definition);
    }
}

int nbs_report_write_integration_tsv(const char *path, const nbs_report_input *in, nbs_error *err) {
    if (!in || !in->integration)
        return nbs_error_set(err, NBS_ERR_INTERNAL, "%s: no integration metrics to write (bug)", path);
    return write_report(path, in, integration_tsv_body, err);
}
