/* The collapse report for people: report.html, one self-contained page with inline SVG plots,
 * built in memory (nbs_svg_buf) and written in one go through a temporary name, so an error
 * half-way leaves no file behind. Plot geometry lives in svg.c; this file decides what to show
 * and says in captions what a good model looks like. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/io.h"
#include "nbsphere/svg.h"
#include "nbsphere/version.h"
#include "report_internal.h"

#define MAX_POINTS 5000
#define MAX_HEAT_COLUMNS 150
#define MAX_COLOURED 20      /* categories with their own colour; the rest are drawn grey */
#define NUMERIC_AS_CATEGORY 30

static const char *COL_ACTIVE = "#1f77b4", *COL_INCONSISTENT = "#ff7f0e",
                  *COL_COLLAPSED = "#9e9e9e", *COL_UNLABELLED = "#c8c8c8";

static const char *verdict_class(nbs_model_verdict v) {
    return v == NBS_MODEL_HEALTHY ? "healthy" : v == NBS_MODEL_PARTIAL ? "partial" : "collapsed";
}

static int write_buf(const char *path, const nbs_svg_buf *b, nbs_error *err) {
    if (b->failed)
        return nbs_error_set(err, NBS_ERR_NOMEM, "%s: out of memory while composing the file", path);
    char tmp[NBS_PATH_MAX];
    FILE *f;
    int st = nbs_io_atomic_open(path, tmp, &f, err);
    if (st) return st;
    if (b->len) fwrite(b->s, 1, b->len, f);
    return nbs_io_atomic_close(f, tmp, path, err);
}

/* ------------------------------------------------------------------ HTML: line plots */

typedef struct {
    const double *x, *y;
    int n;
    const char *colour, *name, *dash;
} series;

static void finite_range(const double *v, int n, double *lo, double *hi) {
    for (int i = 0; i < n; i++)
        if (isfinite(v[i])) {
            if (v[i] < *lo) *lo = v[i];
            if (v[i] > *hi) *hi = v[i];
        }
}

/* One panel of lines over epochs. y_floor/y_ceil (NaN = none) pin ends of the y range, e.g. 0
 * for counts; integer_y for counts of dimensions. */
static void line_panel(nbs_svg_buf *b, const char *title, const char *ylabel, const series *s,
                       int ns, int width, int height, double y_floor, double y_ceil, int integer_y) {
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (int k = 0; k < ns; k++) {
        finite_range(s[k].x, s[k].n, &x0, &x1);
        finite_range(s[k].y, s[k].n, &y0, &y1);
    }
    if (isfinite(y_floor)) y0 = y_floor;
    if (isfinite(y_ceil) && !(y1 > y_ceil)) y1 = y_ceil;
    if (!(x1 > x0)) {
        x0 = isfinite(x0) ? x0 - 1 : 0;
        x1 = x0 + 2;
    }
    nbs_svg_nice_range(&y0, &y1);
    nbs_svg_axes a = {x0, x1, y0, y1, 70, 30, width - 90, height - 80};
    nbs_svg_begin(b, width, height, title);
    nbs_svg_draw_axes_int(b, &a, "epoch", ylabel, 1, integer_y);
    for (int k = 0; k < ns; k++) nbs_svg_polyline(b, &a, s[k].x, s[k].y, s[k].n, s[k].colour, s[k].dash);
    for (int k = 0, lx = (int)a.left + 8; k < ns; k++) {
        if (!s[k].name) continue;
        nbs_svg_legend_item(b, lx, a.top + 16, s[k].colour, s[k].name);
        lx += 24 + 7 * (int)strlen(s[k].name);
    }
    nbs_svg_end(b);
}

static void section(nbs_svg_buf *b, const char *id, const char *heading, const char *caption) {
    nbs_svg_buf_printf(b, "<section id=\"%s\"><h2>", id);
    nbs_svg_buf_text(b, heading);
    nbs_svg_buf_printf(b, "</h2>\n");
    if (caption) {
        nbs_svg_buf_printf(b, "<p class=\"cap\">");
        nbs_svg_buf_text(b, caption);
        nbs_svg_buf_printf(b, "</p>\n");
    }
}
static void section_end(nbs_svg_buf *b) { nbs_svg_buf_printf(b, "</section>\n"); }
static void note(nbs_svg_buf *b, const char *text) {
    nbs_svg_buf_printf(b, "<p class=\"none\">");
    nbs_svg_buf_text(b, text);
    nbs_svg_buf_printf(b, "</p>\n");
}

static int training_curves(nbs_svg_buf *b, const nbs_report_input *in, nbs_error *err) {
    section(b, "training", "Training curves",
            "Per cell, over epochs. Good: the validation curve follows the training curve down and "
            "flattens; a validation curve that turns up means over-fitting. A KL that falls to "
            "near 0 while the reconstruction stays flat is the signature of posterior collapse.");
    if (!nbs_report_has_log(in)) {
        note(b, "No training log was given, so there are no curves.");
        section_end(b);
        return NBS_OK;
    }
    const nbs_train_log *l = in->log;
    const int n = l->n;
    double *v = nbs_malloc(sizeof(double) * 8 * (size_t)n, err);
    if (!v) return err ? err->code : NBS_ERR_NOMEM;
    double *ep = v, *elbo_t = v + n, *elbo_v = v + 2 * n, *rec_t = v + 3 * n, *rec_v = v + 4 * n,
           *kl_t = v + 5 * n, *kl_v = v + 6 * n, *beta = v + 7 * n;
    for (int i = 0; i < n; i++) {
        const nbs_epoch_record *r = &l->rec[i];
        ep[i] = r->epoch;
        elbo_t[i] = r->recon + r->kl; /* -ELBO at beta = 1, comparable with validation */
        elbo_v[i] = -r->val_elbo;
        rec_t[i] = r->recon;
        rec_v[i] = r->val_recon;
        kl_t[i] = r->kl;
        kl_v[i] = r->val_kl;
        beta[i] = r->beta;
    }
    nbs_svg_buf_printf(b, "<div class=\"row\">\n");
    series s1[2] = {{ep, elbo_t, n, COL_ACTIVE, "train", NULL},
                    {ep, elbo_v, n, COL_INCONSISTENT, "validation", "6,3"}};
    line_panel(b, "\xe2\x88\x92" "ELBO (nats per cell)", "\xe2\x88\x92" "ELBO", s1, 2, 560, 300, NAN, NAN, 0);
    series s2[2] = {{ep, rec_t, n, COL_ACTIVE, "train", NULL},
                    {ep, rec_v, n, COL_INCONSISTENT, "validation", "6,3"}};
    line_panel(b, "Reconstruction \xe2\x88\x92log p(x|z)", "nats per cell", s2, 2, 560, 300, NAN, NAN, 0);
    series s3[2] = {{ep, kl_t, n, COL_ACTIVE, "train", NULL},
                    {ep, kl_v, n, COL_INCONSISTENT, "validation", "6,3"}};
    line_panel(b, "KL(q(z|x) \xe2\x80\x96 p(z))", "nats per cell", s3, 2, 560, 300, 0, NAN, 0);
    series s4[1] = {{ep, beta, n, "#555555", NULL, NULL}};
    line_panel(b, "KL weight \xce\xb2", "\xce\xb2", s4, 1, 560, 170, 0, 1, 0);
    nbs_svg_buf_printf(b, "</div>\n");
    section_end(b);
    free(v);
    return NBS_OK;
}

/* ------------------------------------------------------------------ HTML: KL heatmap */

static int kl_heatmap(nbs_svg_buf *b, const nbs_report_input *in, nbs_error *err) {
    section(b, "kl-heatmap", "KL per latent dimension over training",
            "Each row is a latent dimension, each column an epoch (neighbouring epochs averaged "
            "when there are many); colour is log10(KL + 0.001) in nats per cell. Good: most rows "
            "stay bright. A row that turns dark and stays dark is a dimension that collapsed.");
    if (!nbs_report_has_log(in) || in->log->kl_terms < 1 || !in->log->kl_dims) {
        note(b, "No training log with per-dimension KL was given.");
        section_end(b);
        return NBS_OK;
    }
    const nbs_train_log *l = in->log;
    const int K = l->kl_terms, n = l->n;
    const int cols = n < MAX_HEAT_COLUMNS ? n : MAX_HEAT_COLUMNS;
    double *cell = nbs_malloc(sizeof(double) * (size_t)cols * K, err);
    if (!cell) return err ? err->code : NBS_ERR_NOMEM;
    double lo = INFINITY, hi = -INFINITY;
    for (int c = 0; c < cols; c++) {
        int e0 = (int)((int64_t)c * n / cols), e1 = (int)((int64_t)(c + 1) * n / cols);
        for (int k = 0; k < K; k++) {
            double s = 0;
            int m = 0;
            for (int e = e0; e < e1; e++) {
                double v = l->kl_dims[(int64_t)e * K + k];
                if (isfinite(v)) s += v, m++;
            }
            double v = m ? log10((s / m > 0 ? s / m : 0) + 1e-3) : NAN;
            cell[(int64_t)c * K + k] = v;
            if (isfinite(v)) {
                if (v < lo) lo = v;
                if (v > hi) hi = v;
            }
        }
    }
    if (!isfinite(lo)) lo = -3, hi = 0;
    if (hi - lo < 1e-9) hi = lo + 1;
    const int width = 760, height = 120 + (K > 40 ? 6 * K : K > 8 ? 12 * K : 24 * K);
    nbs_svg_axes a = {l->rec[0].epoch - 0.5, l->rec[n - 1].epoch + 0.5, 0.5, K + 0.5, 70, 30, 560,
                      height - 80};
    nbs_svg_begin(b, width, height, K > 1 ? "log10(KL + 0.001) per dimension and epoch"
                                          : "log10(KL + 0.001), total (the sphere's KL does not split by dimension)");
    /* Axes first: the cells then cover the grid lines, and the frame is drawn again on top. */
    nbs_svg_draw_axes_int(b, &a, "epoch", K > 1 ? "latent dimension" : "total KL", 1, 1);
    /* Colours are quantised to 64 levels and each level is one <path>, which keeps the page
     * small (one short subpath per cell instead of a <rect> element). */
    const int levels = 64;
    const double cw = a.width / cols, ch = a.height / K;
    for (int q = 0; q < levels; q++) {
        int open = 0;
        for (int k = 0; k < K; k++)
            for (int c = 0; c < cols; c++) {
                double v = cell[(int64_t)c * K + k];
                if (!isfinite(v)) continue;
                int lev = (int)((v - lo) / (hi - lo) * (levels - 1) + 0.5);
                if (lev != q) continue;
                if (!open) {
                    char col[8];
                    nbs_svg_colormap((double)q / (levels - 1), col);
                    nbs_svg_buf_printf(b, "<path fill=\"%s\" d=\"", col);
                    open = 1;
                }
                /* 0.3 px overlap hides hairline seams between neighbouring cells */
                nbs_svg_buf_printf(b, "M%.1f %.1fh%.1fv%.1fh-%.1fz", a.left + c * cw,
                                   nbs_svg_y(&a, k + 1.5), cw + 0.3, ch + 0.3, cw + 0.3);
            }
        if (open) nbs_svg_buf_printf(b, "\"/>\n");
    }
    nbs_svg_buf_printf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
                          "fill=\"none\" stroke=\"#333\"/>\n",
                       a.left, a.top, a.width, a.height);
    nbs_svg_colorbar(b, a.left + a.width + 20, a.top, 16, a.height, lo, hi, "log10(KL + 0.001)");
    nbs_svg_end(b);
    free(cell);
    section_end(b);
    return NBS_OK;
}

/* ------------------------------------------------------------------ HTML: per-dimension bars */

static const char *dim_colour(nbs_dim_verdict v) {
    return v == NBS_DIM_ACTIVE ? COL_ACTIVE : v == NBS_DIM_INCONSISTENT ? COL_INCONSISTENT : COL_COLLAPSED;
}

/* Bars of one measure per dimension on a log10 axis: the measures span orders of magnitude and
 * the thresholds sit far below the active dimensions, where a linear axis would hide them. */
static void bar_panel(nbs_svg_buf *b, const nbs_collapse_report *r, const double *v, double tau,
                      const char *title, const char *ylabel, const char *tau_label) {
    const int d = r->d, width = 560, height = 300;
    double lo = INFINITY, hi = -INFINITY;
    for (int j = 0; j < d; j++)
        if (isfinite(v[j]) && v[j] > 0) {
            double l = log10(v[j]);
            if (l < lo) lo = l;
            if (l > hi) hi = l;
        }
    double lt = tau > 0 ? log10(tau) : NAN;
    if (isfinite(lt)) {
        if (lt - 1 < lo) lo = lt - 1;
        if (lt + 0.5 > hi) hi = lt + 0.5;
    }
    if (!isfinite(lo)) lo = -3, hi = 0;
    /* a margin below the smallest value, so that even it shows as a bar */
    lo = floor(lo - 0.3), hi = ceil(hi);
    if (hi <= lo) hi = lo + 1;
    nbs_svg_axes a = {0.5, d + 0.5, lo, hi, 70, 30, width - 90, height - 80};
    nbs_svg_begin(b, width, height, title);
    nbs_svg_draw_axes_int(b, &a, "latent dimension", ylabel, 1, 1);
    const double bw = a.width / d;
    for (int j = 0; j < d; j++) {
        double x = nbs_svg_x(&a, j + 1) - bw * 0.4, base = nbs_svg_y(&a, lo);
        if (isfinite(v[j])) {
            double l = v[j] > 0 ? log10(v[j]) : lo;
            if (l < lo) l = lo;
            double top = nbs_svg_y(&a, l);
            nbs_svg_buf_printf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
                                  "fill=\"%s\"><title>dimension %d: %.4g (%s)</title></rect>\n",
                               x, top, bw * 0.8, base - top, dim_colour(r->verdict[j]), j + 1, v[j],
                               nbs_dim_verdict_word(r->verdict[j]));
        }
        if (r->verdict[j] == NBS_DIM_COLLAPSED) { /* written upwards from just above the bar */
            double l = isfinite(v[j]) && v[j] > 0 ? fmax(log10(v[j]), lo) : lo;
            nbs_svg_buf_printf(b, "<text transform=\"translate(%.1f,%.1f) rotate(-90)\" "
                                  "font-size=\"10\" fill=\"#555\">collapsed</text>\n",
                               nbs_svg_x(&a, j + 1) + 3.5, nbs_svg_y(&a, l) - 4);
        }
    }
    if (isfinite(lt)) nbs_svg_hline(b, &a, lt, "#c62828", tau_label);
    /* the legend shares the title's line, clear of the axis labels */
    nbs_svg_legend_item(b, width - 290, 18, COL_ACTIVE, "active");
    nbs_svg_legend_item(b, width - 220, 18, COL_INCONSISTENT, "inconsistent");
    nbs_svg_legend_item(b, width - 110, 18, COL_COLLAPSED, "collapsed");
    nbs_svg_end(b);
}

static void dimension_bars(nbs_svg_buf *b, const nbs_report_input *in) {
    const nbs_collapse_report *r = in->report;
    section(b, "dimensions", "Latent dimensions",
            nbs_report_is_sphere(r) ? "Per dimension, on a log scale: how much the posterior location varies "
                        "between cells (activity: the encoder uses the dimension) and how much the "
                        "decoder's count distributions change when z moves one prior standard "
                        "deviation along it (nats per cell: the decoder listens). A dimension is "
                        "active when both exceed their dashed threshold, collapsed when both are "
                        "below (grey), inconsistent when they disagree (orange). Good: most "
                        "dimensions active."
                      : "Per dimension, on a log scale: the KL of the posterior from the prior (the "
                        "encoder sends information), how much the decoder's count distributions "
                        "change when z moves one prior standard deviation along it (nats per cell: "
                        "the decoder listens) and the activity. A dimension is active when KL and "
                        "the decoder's response both exceed their dashed threshold, collapsed when "
                        "both are below (grey), inconsistent when they disagree (orange). Good: "
                        "most dimensions active.");
    if (r->d < 1) {
        note(b, "The report has no latent dimensions.");
        section_end(b);
        return;
    }
    char lab[64];
    nbs_svg_buf_printf(b, "<div class=\"row\">\n");
    if (!nbs_report_is_sphere(r)) {
        snprintf(lab, sizeof lab, "\xcf\x84_KL = %g", r->tau_kl);
        bar_panel(b, r, r->kl, r->tau_kl, "KL per dimension", "log10 KL (nats per cell)", lab);
    }
    snprintf(lab, sizeof lab, "\xcf\x84_decoder = %g nats", r->tau_decoder_nats);
    bar_panel(b, r, r->decoder_nats, r->tau_decoder_nats, "Decoder response (nats per cell)",
              "log10 nats per prior SD of z_j", lab);
    snprintf(lab, sizeof lab, "\xcf\x84_activity = %g", r->tau_activity);
    bar_panel(b, r, r->activity, r->tau_activity, "Activity Var(E[z | x])", "log10 activity", lab);
    nbs_svg_buf_printf(b, "</div>\n<details><summary>Table of the measures</summary>\n<table><tr>"
                          "<th>dim</th><th>KL</th><th>activity</th><th>sensitivity (weights)</th>"
                          "<th>sensitivity (Jacobian)</th><th>decoder response (nats)</th><th>verdict</th>"
                          "<th>collapsed since epoch</th></tr>\n");
    for (int j = 0; j < r->d; j++) {
        const double vals[5] = {nbs_report_dim_on_sphere(r, j) ? NAN : r->kl[j], r->activity[j], r->sens_weight[j],
                                r->sens_jacobian[j], r->decoder_nats[j]};
        nbs_svg_buf_printf(b, "<tr><td>%d</td>", j + 1);
        for (int k = 0; k < 5; k++) {
            if (isfinite(vals[k])) nbs_svg_buf_printf(b, "<td>%.4g</td>", vals[k]);
            else nbs_svg_buf_printf(b, "<td>\xe2\x80\x93</td>");
        }
        int since = nbs_report_collapsed_since(in, j);
        nbs_svg_buf_printf(b, "<td style=\"color:%s\">%s</td>", dim_colour(r->verdict[j]),
                           nbs_dim_verdict_word(r->verdict[j]));
        if (since >= 0) nbs_svg_buf_printf(b, "<td>%d</td></tr>\n", since);
        else nbs_svg_buf_printf(b, "<td>\xe2\x80\x93</td></tr>\n");
    }
    nbs_svg_buf_printf(b, "</table></details>\n");
    section_end(b);
}

/* The discrete latent: cells per category (most probable category) as bars, dead ones grey, with
 * the mean q(c|x) in each bar's tooltip and the 0.5 % line below which a category is dead. */
static void category_bars(nbs_svg_buf *b, const nbs_collapse_report *r) {
    if (!r->n_categories) return;
    const int K = r->n_categories, width = 560, height = 300;
    section(b, "categories", "Discrete latent: categories",
            "Cells per category of the discrete latent (each cell counted in its most probable "
            "category). A category most probable for fewer than 0.5 % of the cells is dead (grey, "
            "below the dashed line). Good: every category used, the entropy of the mean q(c|x) "
            "near log K; if categories die, train.entropy_target with train.entropy_weight and "
            "train.entropy_cell_weight keeps them in use.");
    nbs_svg_buf_printf(b, "<p>");
    nbs_svg_buf_text(b, r->category_summary);
    nbs_svg_buf_printf(b, "</p>\n");
    int64_t most = 1;
    for (int c = 0; c < K; c++) most = r->category_cells[c] > most ? r->category_cells[c] : most;
    double lo = 0, hi = (double)most;
    nbs_svg_nice_range(&lo, &hi);
    nbs_svg_axes a = {-0.5, K - 0.5, lo, hi, 70, 30, width - 90, height - 80};
    nbs_svg_begin(b, width, height, "Cells per category");
    nbs_svg_draw_axes_int(b, &a, "category", "cells", 1, 1);
    const double bw = a.width / K, dead = NBS_DEAD_CATEGORY_SHARE * (double)r->n_cells;
    for (int c = 0; c < K; c++) {
        const double x = nbs_svg_x(&a, c) - bw * 0.4, top = nbs_svg_y(&a, (double)r->category_cells[c]),
                     base = nbs_svg_y(&a, 0);
        const int is_dead = r->category_cells[c] < dead;
        nbs_svg_buf_printf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\">"
                              "<title>category %d: %lld cells, mean q(c|x) %.3g (%s)</title></rect>\n",
                           x, top, bw * 0.8, base - top, is_dead ? COL_COLLAPSED : COL_ACTIVE, c,
                           (long long)r->category_cells[c], r->category_mass[c], is_dead ? "dead" : "used");
    }
    nbs_svg_hline(b, &a, dead, "#c62828", "0.5 % of cells");
    nbs_svg_legend_item(b, width - 200, 18, COL_ACTIVE, "used");
    nbs_svg_legend_item(b, width - 130, 18, COL_COLLAPSED, "dead");
    nbs_svg_end(b);
    section_end(b);
}

/* A ladder: per layer, bottom first, its verdict and the bars of its dimensions (the layer's slice
 * of the report, numbered within the layer). */
static void layer_bars(nbs_svg_buf *b, const nbs_report_input *in) {
    const nbs_collapse_report *r = in->report;
    if (!r->n_layers) return;
    section(b, "layers", "Latent layers",
            "A ladder's stochastic layers, layer 1 at the bottom (read by the decoder), the top one the "
            "embedding. Below the top a layer's KL is to its top-down prior given the layer above, and "
            "the decoder's response to a layer goes through the layers below it (and the skip "
            "connections). A layer is collapsed when all its dimensions are: its posterior is then its "
            "prior, which carries it. Good: every layer healthy or partially collapsed.");
    char lab[64], title[96];
    for (int l = 0; l < r->n_layers; l++) {
        const nbs_layer_report *Y = &r->layers[l];
        nbs_collapse_report sub = *r; /* the layer's dimensions as a report of their own */
        const int o = Y->offset;
        sub.d = Y->d;
        sub.verdict = r->verdict + o;
        nbs_svg_buf_printf(b, "<h3>Layer %d%s (%s, %d dimensions): %s</h3>\n<p>", l + 1,
                           l == r->n_layers - 1 ? ", top" : !l ? ", bottom" : "", nbs_latent_word(Y->latent), Y->d,
                           nbs_model_verdict_word(Y->verdict));
        nbs_svg_buf_text(b, Y->summary);
        if (isfinite(Y->mi)) nbs_svg_buf_printf(b, "; I(x;z) %.3g nats", Y->mi);
        nbs_svg_buf_printf(b, ".</p>\n<div class=\"row\">\n");
        if (!nbs_latent_ops_of(Y->latent)->on_sphere) {
            snprintf(lab, sizeof lab, "\xcf\x84_KL = %g", r->tau_kl);
            snprintf(title, sizeof title, "Layer %d: KL per dimension", l + 1);
            bar_panel(b, &sub, r->kl + o, r->tau_kl, title, "log10 KL (nats per cell)", lab);
        }
        snprintf(lab, sizeof lab, "\xcf\x84_decoder = %g nats", r->tau_decoder_nats);
        snprintf(title, sizeof title, "Layer %d: decoder response", l + 1);
        bar_panel(b, &sub, r->decoder_nats + o, r->tau_decoder_nats, title, "log10 nats per prior SD of z_j", lab);
        snprintf(lab, sizeof lab, "\xcf\x84_activity = %g", r->tau_activity);
        snprintf(title, sizeof title, "Layer %d: activity Var(E[z | x])", l + 1);
        bar_panel(b, &sub, r->activity + o, r->tau_activity, title, "log10 activity", lab);
        nbs_svg_buf_printf(b, "</div>\n");
    }
    section_end(b);
}

/* ------------------------------------------------------------------ HTML: tracking */

static int tracking(nbs_svg_buf *b, const nbs_report_input *in, nbs_error *err) {
    if (!nbs_report_has_track(in)) return NBS_OK; /* nothing was tracked: no section at all */
    const nbs_diagnose_track *t = in->track;
    const nbs_collapse_report *r = in->report;
    section(b, "tracking", "Collapse over training",
            "The verdicts recomputed during training. Good: the number of active dimensions rises "
            "early and stays up; a fall marks the epoch where dimensions collapsed. The mutual "
            "information I(x;z) should grow and level off; it is capped near log(batch).");
    const int n = t->n;
    double *v = nbs_malloc(sizeof(double) * 5 * (size_t)n, err);
    if (!v) return err ? err->code : NBS_ERR_NOMEM;
    double *ep = v, *act = v + n, *col = v + 2 * n, *inc = v + 3 * n, *mi = v + 4 * n;
    int any_mi = 0;
    for (int i = 0; i < n; i++) {
        ep[i] = t->epoch[i];
        act[i] = t->n_active[i];
        col[i] = t->n_collapsed[i];
        inc[i] = t->d - t->n_active[i] - t->n_collapsed[i];
        mi[i] = t->mi ? t->mi[i] : NAN;
        any_mi |= isfinite(mi[i]);
    }
    nbs_svg_buf_printf(b, "<div class=\"row\">\n");
    series s1[3] = {{ep, act, n, COL_ACTIVE, "active", NULL},
                    {ep, col, n, COL_COLLAPSED, "collapsed", NULL},
                    {ep, inc, n, COL_INCONSISTENT, "inconsistent", "6,3"}};
    line_panel(b, "Dimensions by verdict", "dimensions", s1, 3, 560, 300, 0, t->d, 1);
    if (any_mi && !nbs_report_is_sphere(r)) {
        series s2[1] = {{ep, mi, n, COL_ACTIVE, NULL, NULL}};
        line_panel(b, "Mutual information I(x;z)", "nats", s2, 1, 560, 300, 0, NAN, 0);
    }
    nbs_svg_buf_printf(b, "</div>\n");
    free(v);
    section_end(b);
    return NBS_OK;
}

/* ------------------------------------------------------------------ HTML: kappa */

static int kappa_histogram(nbs_svg_buf *b, const nbs_report_input *in) {
    const nbs_collapse_report *r = in->report;
    if (!nbs_report_is_sphere(r)) return NBS_OK;
    section(b, "kappa", "Posterior concentration \xce\xba",
            "How sharply the encoder places each cell on the sphere (log10 scale). Good: most cells "
            "well above 1. When \xce\xba is near 0 for every cell, the posterior is the uniform "
            "prior and the embedding carries no information.");
    enum { BINS = 30 };
    int64_t count[BINS] = {0};
    double lo = INFINITY, hi = -INFINITY;
    int64_t m = 0;
    for (int64_t i = 0; in->kappa && i < in->n_cells; i++)
        if (in->kappa[i] > 0 && isfinite(in->kappa[i])) {
            double l = log10(in->kappa[i]);
            if (l < lo) lo = l;
            if (l > hi) hi = l;
            m++;
        }
    if (!m) {
        note(b, "No per-cell \xce\xba was given.");
        section_end(b);
        return NBS_OK;
    }
    nbs_svg_nice_range(&lo, &hi);
    for (int64_t i = 0; i < in->n_cells; i++)
        if (in->kappa[i] > 0 && isfinite(in->kappa[i])) {
            int k = (int)((log10(in->kappa[i]) - lo) / (hi - lo) * BINS);
            count[k < 0 ? 0 : k >= BINS ? BINS - 1 : k]++;
        }
    double top = 0;
    for (int k = 0; k < BINS; k++)
        if (count[k] > top) top = (double)count[k];
    double y0 = 0, y1 = top;
    nbs_svg_nice_range(&y0, &y1);
    nbs_svg_axes a = {lo, hi, y0, y1, 70, 30, 470, 220};
    nbs_svg_begin(b, 560, 300, "Histogram of log10 \xce\xba over cells");
    nbs_svg_draw_axes_int(b, &a, "log10 \xce\xba", "cells", 0, 1);
    const double w = a.width / BINS;
    for (int k = 0; k < BINS; k++) {
        if (!count[k]) continue;
        double yt = nbs_svg_y(&a, (double)count[k]);
        nbs_svg_buf_printf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>",
                           a.left + k * w + 0.5, yt, w - 1, a.top + a.height - yt, COL_ACTIVE);
    }
    nbs_svg_buf_printf(b, "\n");
    nbs_svg_end(b);
    nbs_svg_buf_printf(b, "<p class=\"cap\">Quantiles of \xce\xba (5, 25, 50, 75, 95 %%): ");
    for (int q = 0; q < 5; q++) nbs_svg_buf_printf(b, "%s%.3g", q ? ", " : "", r->kappa_q[q]);
    nbs_svg_buf_printf(b, ".</p>\n");
    section_end(b);
    return NBS_OK;
}


/* ------------------------------------------------------------------ HTML: embedding view */

typedef struct {
    const char *name;
    int64_t count;
    double num;
    char colour[8];
    int slot; /* index into the drawing groups */
} category;

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}
static int cmp_cat_name(const void *key, const void *c) {
    return strcmp((const char *)key, ((const category *)c)->name);
}

static int parse_number(const char *s, double *v) {
    char *end;
    *v = strtod(s, &end);
    while (end != s && (*end == ' ' || *end == '\t')) end++;
    return end != s && *end == '\0' && isfinite(*v);
}

/* Legends cut long labels at a character boundary (UTF-8 continuation bytes are 10xxxxxx). */
static void short_label(char *out, size_t n, const char *s, int64_t count) {
    char cut[40];
    size_t len = strlen(s);
    if (len < sizeof cut) {
        snprintf(out, n, "%s (%lld)", s, (long long)count);
        return;
    }
    size_t k = sizeof cut - 4;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
    memcpy(cut, s, k);
    memcpy(cut + k, "...", 4);
    snprintf(out, n, "%s (%lld)", cut, (long long)count);
}

typedef struct {
    char colour[8];
    int64_t count; /* cells of the group in the whole data, to draw large groups first */
} group;

/* Drawing groups: slots 0..31 are categories (or viridis bands), then "other" and unlabelled. */
enum { SLOT_OTHER = 32, SLOT_UNLABELLED = 33, NSLOTS = 34 };

/* How cells are coloured: no labels (one colour), categories, or a continuous number. */
typedef struct {
    int mode; /* 0 no labels, 1 categories, 2 continuous (viridis) */
    int ncat, numeric;
    category *cat; /* sorted by name, for bsearch */
    int *order;    /* categories in legend order */
    int64_t unlabelled;
    double lo, hi;
    group g[NSLOTS];
} colouring;

static void colouring_free(colouring *col) {
    free(col->cat);
    free(col->order);
}

static int cmp_rank(const void *a, const void *b, void *ctx) {
    const colouring *col = ctx;
    const category *x = &col->cat[*(const int *)a], *y = &col->cat[*(const int *)b];
    if (col->numeric && x->num != y->num) return (x->num > y->num) - (x->num < y->num);
    if (x->count != y->count) return x->count < y->count ? 1 : -1;
    return strcmp(x->name, y->name);
}

static int build_colouring(const nbs_report_input *in, colouring *col, nbs_error *err) {
    memset(col, 0, sizeof *col);
    const int64_t n = in->n_cells;
    if (!in->labels) {
        snprintf(col->g[0].colour, 8, "%s", COL_ACTIVE);
        col->g[0].count = n;
        return NBS_OK;
    }
    const char **sorted = nbs_malloc(sizeof(char *) * (size_t)(n ? n : 1), err);
    if (!sorted) return err ? err->code : NBS_ERR_NOMEM;
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++)
        if (in->labels[i]) sorted[m++] = in->labels[i];
    col->unlabelled = n - m;
    qsort(sorted, (size_t)m, sizeof *sorted, cmp_str);
    int64_t ncat = 0;
    for (int64_t i = 0; i < m; i++) ncat += !i || strcmp(sorted[i], sorted[i - 1]) != 0;
    col->cat = nbs_calloc((size_t)(ncat ? ncat : 1), sizeof(category), err);
    col->order = col->cat ? nbs_malloc(sizeof(int) * (size_t)(ncat ? ncat : 1), err) : NULL;
    if (!col->order) {
        free(sorted);
        colouring_free(col);
        return err ? err->code : NBS_ERR_NOMEM;
    }
    col->numeric = 1;
    for (int64_t i = 0, c = -1; i < m; i++) {
        if (!i || strcmp(sorted[i], sorted[i - 1]) != 0) {
            c++;
            col->cat[c].name = sorted[i];
            col->numeric &= parse_number(sorted[i], &col->cat[c].num);
        }
        col->cat[c].count++;
    }
    free(sorted);
    col->ncat = (int)ncat;
    snprintf(col->g[SLOT_UNLABELLED].colour, 8, "%s", COL_UNLABELLED);
    col->g[SLOT_UNLABELLED].count = col->unlabelled;
    snprintf(col->g[SLOT_OTHER].colour, 8, "%s", COL_COLLAPSED);
    if (col->numeric && ncat > NUMERIC_AS_CATEGORY) {
        /* a continuous label (e.g. pseudotime): 32 viridis bands */
        col->mode = 2;
        col->lo = INFINITY, col->hi = -INFINITY;
        for (int c = 0; c < col->ncat; c++) {
            if (col->cat[c].num < col->lo) col->lo = col->cat[c].num;
            if (col->cat[c].num > col->hi) col->hi = col->cat[c].num;
        }
        for (int q = 0; q < 32; q++) nbs_svg_colormap((q + 0.5) / 32, col->g[q].colour);
        for (int c = 0; c < col->ncat; c++) {
            double t = col->hi > col->lo ? (col->cat[c].num - col->lo) / (col->hi - col->lo) : 0.5;
            int q = (int)(t * 32);
            col->cat[c].slot = q < 0 ? 0 : q > 31 ? 31 : q;
            col->g[col->cat[c].slot].count += col->cat[c].count;
        }
        return NBS_OK;
    }
    col->mode = 1;
    /* legend and colour order: numbers by value, words by how many cells carry them */
    for (int c = 0; c < col->ncat; c++) col->order[c] = c;
    qsort_r(col->order, (size_t)col->ncat, sizeof(int), cmp_rank, col);
    for (int r = 0; r < col->ncat; r++) {
        category *c = &col->cat[col->order[r]];
        if (col->numeric && col->ncat > MAX_COLOURED) { /* 21..30 numbers: ordered colours */
            c->slot = r;
            nbs_svg_colormap(col->ncat > 1 ? (double)r / (col->ncat - 1) : 0.5, c->colour);
        } else if (col->ncat <= MAX_COLOURED || r < MAX_COLOURED - 1) {
            c->slot = r;
            snprintf(c->colour, 8, "%s", nbs_svg_category_colour(r));
        } else { /* beyond the distinct colours: grey, summed up as "other" in the legend */
            c->slot = SLOT_OTHER;
            snprintf(c->colour, 8, "%s", COL_COLLAPSED);
        }
        if (c->slot != SLOT_OTHER) snprintf(col->g[c->slot].colour, 8, "%s", c->colour);
        col->g[c->slot].count += c->count;
    }
    return NBS_OK;
}

static int slot_of_cell(const nbs_report_input *in, const colouring *col, int64_t i) {
    if (col->mode == 0) return 0;
    if (!in->labels[i]) return SLOT_UNLABELLED;
    const category *c = bsearch(in->labels[i], col->cat, (size_t)col->ncat, sizeof(category), cmp_cat_name);
    return c ? c->slot : SLOT_UNLABELLED;
}

static void legend(nbs_svg_buf *b, const nbs_report_input *in, const colouring *col, double x, double y) {
    char text[96];
    nbs_svg_buf_printf(b, "<text x=\"%.1f\" y=\"%.1f\" font-weight=\"bold\">", x, y);
    nbs_svg_buf_text(b, in->label_column ? in->label_column : col->mode ? "label" : "cells");
    nbs_svg_buf_printf(b, "</text>\n");
    y += 20;
    if (col->mode == 0) {
        snprintf(text, sizeof text, "all cells (%lld)", (long long)in->n_cells);
        nbs_svg_legend_item(b, x, y, col->g[0].colour, text);
        return;
    }
    if (col->mode == 2) {
        nbs_svg_colorbar(b, x, y - 10, 16, 200, col->lo, col->hi, "");
        y += 220;
    } else {
        int64_t other = 0, other_n = 0;
        for (int r = 0; r < col->ncat; r++) {
            const category *c = &col->cat[col->order[r]];
            if (c->slot == SLOT_OTHER) {
                other += c->count, other_n++;
                continue;
            }
            short_label(text, sizeof text, c->name, c->count);
            nbs_svg_legend_item(b, x, y, c->colour, text);
            y += 17;
        }
        if (other_n) {
            snprintf(text, sizeof text, "%lld other labels (%lld)", (long long)other_n, (long long)other);
            nbs_svg_legend_item(b, x, y, COL_COLLAPSED, text);
            y += 17;
        }
    }
    if (col->unlabelled) {
        snprintf(text, sizeof text, "unlabelled (%lld)", (long long)col->unlabelled);
        nbs_svg_legend_item(b, x, y, COL_UNLABELLED, text);
    }
}

static int cmp_slot_count(const void *a, const void *b, void *ctx) {
    const group *g = ctx;
    int64_t x = g[*(const int *)a].count, y = g[*(const int *)b].count;
    return x != y ? (x < y ? 1 : -1) : *(const int *)a - *(const int *)b;
}

/* The map of the cells at xy [n x 2], coloured by in->labels (NULL: one colour); space names what
 * xy is (NULL: the embedding's projection). */
static int draw_map_of(nbs_svg_buf *b, const nbs_report_input *in, const double *xy, int lambert, const char *space,
                       const char *xlab, const char *ylab, nbs_error *err) {
    const int64_t n = in->n_cells;
    colouring col;
    int st = build_colouring(in, &col, err);
    if (st) return st;
    /* every cell if they are few, else cells evenly spaced in the input order */
    const int64_t m = n < MAX_POINTS ? n : MAX_POINTS;
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (int64_t k = 0; k < m; k++) {
        int64_t i = (int64_t)((double)k * n / m);
        if (!isfinite(xy[2 * i]) || !isfinite(xy[2 * i + 1])) continue;
        if (xy[2 * i] < x0) x0 = xy[2 * i];
        if (xy[2 * i] > x1) x1 = xy[2 * i];
        if (xy[2 * i + 1] < y0) y0 = xy[2 * i + 1];
        if (xy[2 * i + 1] > y1) y1 = xy[2 * i + 1];
    }
    if (lambert) x0 = y0 = -2.1, x1 = y1 = 2.1;
    else if (!isfinite(x0)) x0 = y0 = -1, x1 = y1 = 1;
    else { /* equal scales on both axes, so distances read the same in every direction */
        double span = fmax(fmax(x1 - x0, y1 - y0), 1e-9) * 1.08, cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
        x0 = cx - span / 2, x1 = cx + span / 2, y0 = cy - span / 2, y1 = cy + span / 2;
    }
    nbs_svg_axes a = {x0, x1, y0, y1, 70, 30, 480, 480};
    char title[160];
    snprintf(title, sizeof title, "%s, coloured by %s",
             space ? space : lambert ? "Equal-area map of the sphere" : "Principal components of the embedding",
             in->labels ? (in->label_column ? in->label_column : "label") : "nothing (no labels)");
    nbs_svg_begin(b, 860, 580, title);
    nbs_svg_draw_axes(b, &a, xlab, ylab, 0);
    if (lambert)
        nbs_svg_buf_printf(b, "<circle class=\"sphere-disk\" cx=\"%.1f\" cy=\"%.1f\" r=\"%.1f\" "
                              "fill=\"#f6f6f6\" stroke=\"#555\" stroke-width=\"1.2\"/>\n",
                           nbs_svg_x(&a, 0), nbs_svg_y(&a, 0), 2 * a.width / (x1 - x0));
    /* One <path> of zero-length round-capped segments per colour: a dot per cell at a fraction
     * of the size of a <circle> element each. Large groups are drawn first, so small ones stay
     * visible on top. */
    int order[NSLOTS];
    for (int s = 0; s < NSLOTS; s++) order[s] = s;
    qsort_r(order, NSLOTS, sizeof(int), cmp_slot_count, col.g);
    for (int o = 0; o < NSLOTS; o++) {
        const int s = order[o];
        if (!col.g[s].count) continue;
        int open = 0;
        for (int64_t k = 0; k < m; k++) {
            int64_t i = (int64_t)((double)k * n / m);
            if (!isfinite(xy[2 * i]) || !isfinite(xy[2 * i + 1]) || slot_of_cell(in, &col, i) != s) continue;
            if (!open) {
                nbs_svg_buf_printf(b, "<path stroke=\"%s\" stroke-width=\"3.5\" stroke-linecap=\"round\" "
                                      "stroke-opacity=\"0.8\" d=\"", col.g[s].colour);
                open = 1;
            }
            nbs_svg_buf_printf(b, "M%.1f %.1fh0", nbs_svg_x(&a, xy[2 * i]), nbs_svg_y(&a, xy[2 * i + 1]));
        }
        if (open) nbs_svg_buf_printf(b, "\"/>\n");
    }
    legend(b, in, &col, a.left + a.width + 30, a.top + 10);
    nbs_svg_end(b);
    if (m < n)
        nbs_svg_buf_printf(b, "<p class=\"cap\">%lld of %lld cells drawn (evenly spaced in the input "
                              "order, about one in %.1f); the projection and the legend's counts use "
                              "all cells.</p>\n", (long long)m, (long long)n, (double)n / m);
    else nbs_svg_buf_printf(b, "<p class=\"cap\">All %lld cells drawn.</p>\n", (long long)n);
    colouring_free(&col);
    return NBS_OK;
}

static int draw_map(nbs_svg_buf *b, const nbs_report_input *in, const double *xy, int lambert, const char *xlab,
                    const char *ylab, nbs_error *err) {
    return draw_map_of(b, in, xy, lambert, NULL, xlab, ylab, err);
}

static int embedding_view(nbs_svg_buf *b, const nbs_report_input *in, nbs_error *err) {
    const nbs_collapse_report *r = in->report;
    const int lambert = nbs_report_is_sphere(r) && in->d == 3;
    section(b, "embedding", "The embedding",
            lambert ? "Lambert azimuthal equal-area projection of the sphere, centred on the mean "
                      "direction of the cells: the whole sphere maps onto the disk of radius 2 "
                      "(outline), its rim is the point opposite the centre. Areas are kept, so "
                      "point density is faithful; shapes near the rim are stretched. Good: cells "
                      "with the same label form compact groups and related labels lie close."
            : nbs_report_is_sphere(r) ? "First two principal components of the unit vectors on the sphere. Good: "
                          "cells with the same label form compact groups and related labels lie close."
                        : "First two principal components of the posterior means. Good: cells with "
                          "the same label form compact groups and related labels lie close.");
    if (!in->embedding || in->n_cells <= 0 || in->d < 1) {
        note(b, "No embedding was given.");
        section_end(b);
        return NBS_OK;
    }
    const int64_t n = in->n_cells;
    double *xy = nbs_malloc(sizeof(double) * 2 * (size_t)n, err);
    if (!xy) return err ? err->code : NBS_ERR_NOMEM;
    char xlab[64], ylab[64];
    int st = nbs_report_project(in->embedding, n, in->d, lambert, xy, xlab, ylab, sizeof xlab, err);
    if (!st) st = draw_map(b, in, xy, lambert, xlab, ylab, err);
    free(xy);
    section_end(b);
    return st;
}

/* The scIB metrics: their table, a confounding warning, and the map coloured by batch and by label. */
static int integration_view(nbs_svg_buf *b, const nbs_report_input *in, nbs_error *err) {
    const nbs_integration *r = in->integration;
    if (!r) return NBS_OK;
    section(b, "integration", "Integration (scIB metrics)",
            "How well the batches mix and the labels stay apart in the embedding (Luecken et al. 2022); each "
            "score lies in [0, 1], higher is better. Neighbourhoods are exact k-NN in the embedding; Leiden "
            "runs on the 15-NN connectivities graph.");
    if (r->confounded) {
        nbs_svg_buf_printf(b, "<p class=\"banner v-partial\"><b>Warning:</b> ");
        nbs_svg_buf_text(b, nbs_report_confounded_warning);
        nbs_svg_buf_printf(b, " (Cram\xc3\xa9r's V of batch and label %.2f, threshold %.2f", r->cramers_v,
                           NBS_CONFOUNDED_CRAMERS_V);
        if (r->one_batch_labels[0]) {
            nbs_svg_buf_printf(b, "; labels found in one batch only: ");
            nbs_svg_buf_text(b, r->one_batch_labels);
        }
        nbs_svg_buf_printf(b, ")</p>\n");
    }
    nbs_report_metric m[NBS_REPORT_METRICS];
    int nm = nbs_report_metrics(r, m);
    nbs_svg_buf_printf(b, "<table>\n<tr><th>metric</th><th>kind</th><th>value</th><th>definition</th></tr>\n");
    for (int i = 0; i < nm; i++) {
        if (!isfinite(m[i].value)) continue;
        nbs_svg_buf_printf(b, "<tr><td>%s</td><td>%s</td><td>%.3f</td><td>", m[i].name, m[i].kind, m[i].value);
        nbs_svg_buf_text(b, m[i].definition);
        nbs_svg_buf_printf(b, "</td></tr>\n");
    }
    nbs_svg_buf_printf(b, "</table>\n<p class=\"cap\">%d batches, %d labels on %lld labelled cells; LISI with k = "
                          "%d, perplexity %.0f", r->n_batches, r->n_labels, (long long)r->n_labelled, r->lisi_k,
                       r->lisi_k / 3.0);
    if (isfinite(r->resolution))
        nbs_svg_buf_printf(b, "; Leiden resolution %.1f (%d clusters) of the best NMI", r->resolution, r->n_clusters);
    nbs_svg_buf_printf(b, ". Reconstruction gain with the covariates held fixed: %.4g \xc2\xb1 %.2g nats per cell (",
                       in->report->recon_gain, in->report->recon_gain_se);
    nbs_svg_buf_text(b, nbs_report_gain_definition);
    nbs_svg_buf_printf(b, ").");
    if (r->notes[0]) {
        nbs_svg_buf_printf(b, " Not computed: ");
        nbs_svg_buf_text(b, r->notes);
        nbs_svg_buf_printf(b, ".");
    }
    nbs_svg_buf_printf(b, "</p>\n");
    int st = NBS_OK;
    if (in->embedding && in->n_cells > 0 && in->d >= 1 && (in->batch_labels || in->labels)) {
        const int lambert = nbs_report_is_sphere(in->report) && in->d == 3;
        double *xy = nbs_malloc(sizeof(double) * 2 * (size_t)in->n_cells, err);
        if (!xy) return err ? err->code : NBS_ERR_NOMEM;
        char xlab[64], ylab[64];
        st = nbs_report_project(in->embedding, in->n_cells, in->d, lambert, xy, xlab, ylab, sizeof xlab, err);
        nbs_svg_buf_printf(b, "<div class=\"row\">\n");
        if (!st && in->batch_labels) { /* the same map, coloured by batch: good when the colours mix */
            nbs_report_input by_batch = *in;
            by_batch.labels = in->batch_labels;
            by_batch.label_column = in->batch_key ? in->batch_key : "batch";
            st = draw_map(b, &by_batch, xy, lambert, xlab, ylab, err);
        }
        if (!st && in->labels) st = draw_map(b, in, xy, lambert, xlab, ylab, err);
        nbs_svg_buf_printf(b, "</div>\n");
        free(xy);
    }
    section_end(b);
    return st;
}

/* ------------------------------------------------------------------ HTML: trajectory */

/* The PAGA graph: a node per cluster at its cells' mean layout position (area by cells), an edge
 * per pair with a connectivity of at least 0.05, its width by the connectivity; with the
 * wrap-around diagnostic, a dashed red edge per pair of clusters joined by at least
 * NBS_WRAP_MIN_EDGES shortcut edges, its width by their share of the pair's edges. */
static void paga_graph(nbs_svg_buf *b, const nbs_trajectory *t, const double *cx, const double *cy, const double *size) {
    const int nc = t->n_clusters;
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY, big = 1;
    for (int c = 0; c < nc; c++) {
        if (!size[c]) continue;
        x0 = fmin(x0, cx[c]), x1 = fmax(x1, cx[c]), y0 = fmin(y0, cy[c]), y1 = fmax(y1, cy[c]);
        big = fmax(big, size[c]);
    }
    double span = fmax(fmax(x1 - x0, y1 - y0), 1e-9) * 1.15, mx = (x0 + x1) / 2, my = (y0 + y1) / 2;
    nbs_svg_axes a = {mx - span / 2, mx + span / 2, my - span / 2, my + span / 2, 30, 30, 480, 480};
    nbs_svg_begin(b, 560, 560, t->wrap.computed ? "PAGA graph of the Leiden clusters (edge width: connectivity; "
                                                  "dashed red: shortcut edges)"
                                                : "PAGA graph of the Leiden clusters (edge width: connectivity)");
    for (int p = 0; p < nc; p++)
        for (int q = p + 1; q < nc; q++) {
            const double w = t->paga[p * nc + q];
            if (w < 0.05 || !size[p] || !size[q]) continue;
            nbs_svg_buf_printf(b, "<line class=\"paga-edge\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                                  "stroke=\"#444\" stroke-opacity=\"%.2f\" stroke-width=\"%.1f\"><title>%d-%d: %.3f"
                                  "</title></line>\n",
                               nbs_svg_x(&a, cx[p]), nbs_svg_y(&a, cy[p]), nbs_svg_x(&a, cx[q]), nbs_svg_y(&a, cy[q]),
                               0.3 + 0.6 * w, 0.5 + 8 * w, p, q, w);
        }
    for (int p = 0; t->wrap.computed && p < t->wrap.n_pairs; p++) {
        const nbs_wrap_pair *q = t->wrap.pairs + p;
        if (q->a == q->b || q->shortcuts < NBS_WRAP_MIN_EDGES || !size[q->a] || !size[q->b]) continue;
        const double share = (double)q->shortcuts / (double)q->edges;
        nbs_svg_buf_printf(b, "<line class=\"shortcut-edge\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                              "stroke=\"#d62728\" stroke-dasharray=\"6 4\" stroke-width=\"%.1f\"><title>%d-%d: %lld "
                              "shortcut edges, %.0f%% of their edges</title></line>\n",
                           nbs_svg_x(&a, cx[q->a]), nbs_svg_y(&a, cy[q->a]), nbs_svg_x(&a, cx[q->b]),
                           nbs_svg_y(&a, cy[q->b]), 1.5 + 6 * share, q->a, q->b, (long long)q->shortcuts, 100 * share);
    }
    for (int c = 0; c < nc; c++) {
        if (!size[c]) continue;
        const double r = 5 + 20 * sqrt(size[c] / big);
        nbs_svg_buf_printf(b, "<circle class=\"paga-node\" cx=\"%.1f\" cy=\"%.1f\" r=\"%.1f\" fill=\"%s\" "
                              "stroke=\"#222\"><title>cluster %d: %.0f cells</title></circle>\n"
                              "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-weight=\"bold\">%d</text>\n",
                           nbs_svg_x(&a, cx[c]), nbs_svg_y(&a, cy[c]), r,
                           nc <= 20 ? nbs_svg_category_colour(c) : "#9ecae1", c, size[c], nbs_svg_x(&a, cx[c]),
                           nbs_svg_y(&a, cy[c]) + 4, c);
    }
    nbs_svg_end(b);
}

typedef struct {
    const char *name;
    double q1, median, q3, lo, hi;
    int64_t count;
} label_box;

static int cmp_box(const void *a, const void *b) {
    const label_box *x = a, *y = b;
    return (x->median > y->median) - (x->median < y->median);
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Pseudotime per label: a box (quartiles, median) and whiskers (5th-95th percentile) per label,
 * labels by median, at most 40 (the most frequent). */
static int pseudotime_boxes(nbs_svg_buf *b, const nbs_report_input *in, nbs_error *err) {
    const nbs_trajectory *t = in->trajectory;
    const int64_t n = in->n_cells;
    enum { MAX_BOXES = 40 };
    label_box box[MAX_BOXES];
    int nb = 0;
    char **seen = nbs_malloc(sizeof *seen * (size_t)n + 1, err);
    double *v = nbs_malloc(sizeof *v * (size_t)n + 1, err);
    if (!seen || !v) {
        free(seen);
        free(v);
        return NBS_ERR_NOMEM;
    }
    int64_t ns = 0;
    for (int64_t i = 0; i < n; i++) { /* distinct labels, first seen first */
        if (!in->labels[i]) continue;
        int dup = 0;
        for (int64_t j = 0; j < ns && !dup; j++) dup = !strcmp(seen[j], in->labels[i]);
        if (!dup && ns < 1000) seen[ns++] = in->labels[i];
    }
    for (int64_t l = 0; l < ns; l++) {
        int64_t m = 0;
        for (int64_t i = 0; i < n; i++)
            if (in->labels[i] && !strcmp(in->labels[i], seen[l]) && isfinite(t->pseudotime[i])) v[m++] = t->pseudotime[i];
        if (!m) continue;
        qsort(v, (size_t)m, sizeof *v, cmp_double);
        label_box x = {seen[l], v[m / 4], v[m / 2], v[(3 * m) / 4], v[m / 20], v[m - 1 - m / 20], m};
        if (nb < MAX_BOXES) box[nb++] = x;
        else { /* keep the most frequent */
            int small = 0;
            for (int k = 1; k < nb; k++)
                if (box[k].count < box[small].count) small = k;
            if (box[small].count < m) box[small] = x;
        }
    }
    free(seen);
    free(v);
    if (!nb) return NBS_OK;
    qsort(box, (size_t)nb, sizeof *box, cmp_box);
    const double row = 18;
    nbs_svg_axes a = {0, 1, 0, nb, 170, 30, 520, row * nb};
    char title[160];
    snprintf(title, sizeof title, "Pseudotime per %s (box: quartiles and median; whiskers: 5th to 95th percentile)",
             in->label_column ? in->label_column : "label");
    nbs_svg_begin(b, 740, (int)(row * nb) + 80, title);
    nbs_svg_buf_printf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#999\"/>\n",
                       a.left, a.top, a.width, a.height);
    for (int k = 0; k <= 4; k++)
        nbs_svg_buf_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.2f</text>\n",
                           nbs_svg_x(&a, k / 4.0), a.top + a.height + 16, k / 4.0);
    nbs_svg_buf_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">diffusion pseudotime</text>\n",
                       a.left + a.width / 2, a.top + a.height + 34);
    for (int k = 0; k < nb; k++) {
        const double y = a.top + row * (k + 0.5);
        char text[96];
        short_label(text, sizeof text, box[k].name, box[k].count);
        nbs_svg_buf_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">", a.left - 6, y + 4);
        nbs_svg_buf_text(b, text);
        nbs_svg_buf_printf(b, "</text>\n<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#555\"/>\n"
                              "<rect class=\"pt-box\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
                              "fill=\"%s\" stroke=\"#333\"/>\n<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                              "stroke=\"#000\" stroke-width=\"2\"/>\n",
                           nbs_svg_x(&a, box[k].lo), y, nbs_svg_x(&a, box[k].hi), y, nbs_svg_x(&a, box[k].q1), y - 6,
                           fmax(nbs_svg_x(&a, box[k].q3) - nbs_svg_x(&a, box[k].q1), 1), 12.0, COL_ACTIVE,
                           nbs_svg_x(&a, box[k].median), y - 6, nbs_svg_x(&a, box[k].median), y + 6);
    }
    nbs_svg_end(b);
    return NBS_OK;
}

/* The wrap-around verdict and the pairs of clusters (and labels) joined by shortcut edges, at
 * most 20 of each, most shortcuts first. */
static void wrap_tables(nbs_svg_buf *b, const nbs_trajectory *t) {
    const nbs_wraparound *w = &t->wrap;
    nbs_svg_buf_printf(b, "<h3>Wrap-around</h3>\n<p class=\"cap\">The same %d-neighbour graph built on %d principal "
                          "components of log1p(CP10k) of the model's genes (the reference: what the data say), and for "
                          "every edge of the embedding's graph the number of steps between its two cells in the "
                          "reference graph. An edge more than %d steps long, or between cells the reference graph does "
                          "not connect, is a <b>shortcut</b>: the embedding puts together cells the data keep apart, "
                          "as a compact latent space does when distant branches wrap around and meet. A pair is named "
                          "when it has at least %d shortcut edges making up at least %.0f%% of its edges. Good: a "
                          "fraction near 0 and no named pair.</p>\n",
                       t->k, w->ref_dims, w->hops, NBS_WRAP_MIN_EDGES, 100 * w->min_share);
    nbs_svg_buf_printf(b, "<p class=\"banner %s\"><b>", w->wraps ? "v-collapsed" : "v-healthy");
    nbs_svg_buf_text(b, w->verdict);
    nbs_svg_buf_printf(b, "</b> (%lld of %lld embedding edges are shortcuts, %.2f%%; per cell in "
                          "obs['shortcut_score'])</p>\n", (long long)w->n_shortcuts, (long long)w->n_edges,
                       100 * w->fraction);
    for (int by_label = 0; by_label < 2; by_label++) {
        const nbs_wrap_pair *pairs = by_label ? w->label_pairs : w->pairs;
        const int np = by_label ? w->n_label_pairs : w->n_pairs;
        if (!pairs || !np) continue;
        nbs_svg_buf_printf(b, "<table class=\"wrap-pairs\">\n<tr><th>%s</th><th>%s</th><th>shortcut edges</th>"
                              "<th>edges</th><th>share</th></tr>\n", by_label ? "label" : "cluster",
                           by_label ? "label" : "cluster");
        for (int p = 0; p < np && p < 20; p++) {
            const nbs_wrap_pair *q = pairs + p;
            if (by_label) {
                nbs_svg_buf_printf(b, "<tr><td>");
                nbs_svg_buf_text(b, w->label_names[q->a]);
                nbs_svg_buf_printf(b, "</td><td>");
                nbs_svg_buf_text(b, w->label_names[q->b]);
                nbs_svg_buf_printf(b, "</td>");
            } else {
                nbs_svg_buf_printf(b, "<tr><td>%d</td><td>%d</td>", q->a, q->b);
            }
            nbs_svg_buf_printf(b, "<td>%lld</td><td>%lld</td><td>%.1f%%</td></tr>\n", (long long)q->shortcuts,
                               (long long)q->edges, 100.0 * (double)q->shortcuts / (double)q->edges);
        }
        nbs_svg_buf_printf(b, "</table>\n");
    }
}

/* The layout coloured by cluster, label and pseudotime, the PAGA graph, pseudotime per label. */
static int trajectory_view(nbs_svg_buf *b, const nbs_report_input *in, nbs_error *err) {
    const nbs_trajectory *t = in->trajectory;
    if (!t) return NBS_OK;
    const int64_t n = in->n_cells;
    section(b, "trajectory", "Trajectory",
            "The k-NN graph of the embedding with scanpy's gauss kernel (Haghverdi et al. 2016), its Leiden "
            "clusters, their PAGA connectivities (Wolf et al. 2019: edges between two clusters over the number "
            "expected if the edges were placed at random, at most 1), and diffusion pseudotime (DPT) from the "
            "root. The maps are a force-directed layout of the graph (Fruchterman-Reingold), not of the "
            "embedding itself. Good: pseudotime rises along the known order of the labels, and the PAGA "
            "edges join only clusters the biology connects.");
    nbs_svg_buf_printf(b, "<p>%d neighbours per cell (the cell itself included), %s distance; %d Leiden clusters at "
                          "resolution %g; %d diffusion components, eigenvalues",
                       t->k, t->metric == NBS_METRIC_COSINE ? "cosine" : "Euclidean", t->n_clusters, t->resolution,
                       t->n_dcs);
    for (int j = 0; j < t->n_dcs; j++) nbs_svg_buf_printf(b, "%s %.4f", j ? "," : "", t->evals[j]);
    nbs_svg_buf_printf(b, ". Root: ");
    nbs_svg_buf_text(b, t->root_rule);
    nbs_svg_buf_printf(b, ".</p>\n");
    if (t->n_unreached)
        nbs_svg_buf_printf(b, "<p class=\"banner v-partial\"><b>%lld of %lld cells have no pseudotime</b>: they lie "
                              "in another connected component of the neighbour graph than the root (%lld "
                              "components).</p>\n", (long long)t->n_unreached, (long long)n,
                           (long long)t->n_components);
    char **cl = nbs_calloc((size_t)n + 1, sizeof *cl, err), **pt = nbs_calloc((size_t)n + 1, sizeof *pt, err);
    char *text = nbs_malloc((size_t)n * 24 + 1, err);
    double *cx = nbs_calloc((size_t)t->n_clusters, sizeof *cx, err), *cy = nbs_calloc((size_t)t->n_clusters, sizeof *cy, err);
    double *size = nbs_calloc((size_t)t->n_clusters, sizeof *size, err);
    int st = cl && pt && text && cx && cy && size ? NBS_OK : NBS_ERR_NOMEM;
    for (int64_t i = 0; !st && i < n; i++) {
        char *c = text + i * 24;
        snprintf(c, 8, "%d", t->cluster[i]);
        cl[i] = c;
        if (isfinite(t->pseudotime[i])) {
            snprintf(c + 8, 16, "%.4f", t->pseudotime[i]);
            pt[i] = c + 8;
        }
        const int k = t->cluster[i];
        cx[k] += t->layout[2 * i], cy[k] += t->layout[2 * i + 1], size[k]++;
    }
    if (!st) {
        for (int k = 0; k < t->n_clusters; k++)
            if (size[k]) cx[k] /= size[k], cy[k] /= size[k];
        nbs_svg_buf_printf(b, "<div class=\"row\">\n");
        nbs_report_input by = *in;
        by.labels = cl;
        by.label_column = "leiden";
        st = draw_map_of(b, &by, t->layout, 0, "Graph layout", "layout 1", "layout 2", err);
        if (!st) paga_graph(b, t, cx, cy, size);
        if (!st && in->labels) st = draw_map_of(b, in, t->layout, 0, "Graph layout", "layout 1", "layout 2", err);
        by.labels = pt;
        by.label_column = "dpt_pseudotime";
        if (!st) st = draw_map_of(b, &by, t->layout, 0, "Graph layout", "layout 1", "layout 2", err);
        nbs_svg_buf_printf(b, "</div>\n");
    }
    if (!st && in->labels) st = pseudotime_boxes(b, in, err);
    if (!st && t->wrap.computed) wrap_tables(b, t);
    free(cl);
    free(pt);
    free(text);
    free(cx);
    free(cy);
    free(size);
    section_end(b);
    return st;
}

/* ------------------------------------------------------------------ HTML: page */

static const char *CSS =
    "body{font-family:system-ui,sans-serif;max-width:1180px;margin:0 auto;padding:16px;color:#222}"
    "h1{font-size:24px;margin-bottom:2px}h2{font-size:18px;border-bottom:1px solid #ddd;"
    "padding-bottom:4px;margin-top:28px}.meta{color:#555;margin-top:0}"
    ".banner{padding:10px 18px;border-radius:6px;border-left:10px solid}"
    ".banner h2{border:0;margin-top:6px}"
    ".v-healthy{background:#e8f5e9;border-color:#2e7d32}"
    ".v-partial{background:#fff8e1;border-color:#f9a825}"
    ".v-collapsed{background:#ffebee;border-color:#c62828}"
    ".row{display:flex;flex-wrap:wrap;gap:10px}.cap{color:#444;font-size:14px;max-width:1000px}"
    ".none{color:#888;font-style:italic}"
    "table{border-collapse:collapse;font-size:14px}th,td{padding:3px 10px;text-align:left;"
    "border-bottom:1px solid #e4e4e4;vertical-align:top}details{margin-top:10px}"
    "svg{max-width:100%;height:auto}footer{color:#777;font-size:12px;margin-top:30px}";

static void banner(nbs_svg_buf *b, const nbs_report_input *in) {
    const nbs_collapse_report *r = in->report;
    nbs_svg_buf_printf(b, "<section id=\"verdict\" class=\"banner v-%s\"><h2>Verdict: %s</h2>\n<p>",
                       verdict_class(r->model), nbs_model_verdict_word(r->model));
    nbs_svg_buf_text(b, r->summary);
    nbs_svg_buf_printf(b, "</p>\n");
    if (r->remedies[0]) {
        nbs_svg_buf_printf(b, "<p><b>What to try:</b> ");
        nbs_svg_buf_text(b, r->remedies);
        nbs_svg_buf_printf(b, "</p>\n");
    }
    nbs_train_health th;
    if (in->log) nbs_train_log_health(in->log, &th);
    if (in->log && th.message[0]) {
        nbs_svg_buf_printf(b, "<p><b>Training:</b> ");
        nbs_svg_buf_text(b, th.message);
        nbs_svg_buf_printf(b, " (see the training curves below)</p>\n");
    }
    nbs_svg_buf_printf(b, "<table>\n<tr><th>latent space</th><td>%s, %d dimensions; measured on %lld cells</td></tr>\n",
                       nbs_latent_word(r->latent), r->d, (long long)r->n_cells);
    nbs_svg_buf_printf(b, "<tr><th>dimensions</th><td>%d active, %d collapsed, %d inconsistent; "
                          "%d with activity below \xcf\x84_activity</td></tr>\n",
                       r->n_active, r->n_collapsed, r->n_inconsistent, r->n_inactive_units);
    nbs_svg_buf_printf(b, "<tr><th>total KL</th><td>%.4g nats per cell</td></tr>\n", r->kl_total);
    if (r->n_categories) {
        nbs_svg_buf_printf(b, "<tr><th>discrete latent</th><td>");
        nbs_svg_buf_text(b, r->category_summary);
        nbs_svg_buf_printf(b, " (see the categories below)</td></tr>\n");
    }
    if (isfinite(r->mi))
        nbs_svg_buf_printf(b, "<tr><th>mutual information I(x;z)</th><td>%.4g nats (minibatches of "
                              "%d cells: cannot exceed log %d = %.3g)</td></tr>\n",
                           r->mi, r->mi_batch, r->mi_batch, r->mi_batch > 0 ? log(r->mi_batch) : NAN);
    nbs_svg_buf_printf(b, "<tr><th>reconstruction gain</th><td>%.4g \xc2\xb1 %.2g nats per cell over a "
                          "decoder fed a constant z%s (%s)</td></tr>\n", r->recon_gain, r->recon_gain_se,
                       in->batch_key ? ", each cell's covariates held fixed in both" : "",
                       r->z_unused ? "not above 0: the decoder does not use z" : "the decoder uses z");
    if (in->integration && in->integration->confounded) {
        nbs_svg_buf_printf(b, "<tr><th>batch and labels</th><td>");
        nbs_svg_buf_text(b, nbs_report_confounded_warning);
        nbs_svg_buf_printf(b, " (see Integration below)</td></tr>\n");
    }
    if (isfinite(in->knn_embedding) || isfinite(in->knn_pca)) { /* both or neither (label_quality) */
        nbs_svg_buf_printf(b, "<tr><th>%d-NN label accuracy</th><td>embedding %.3f, PCA of the counts %.3f",
                           in->knn_k, in->knn_embedding, in->knn_pca);
        if (in->label_column) {
            nbs_svg_buf_printf(b, " (labels: ");
            nbs_svg_buf_text(b, in->label_column);
            nbs_svg_buf_printf(b, ")");
        }
        nbs_svg_buf_printf(b, "; good: the embedding close to or above PCA</td></tr>\n");
    }
    nbs_svg_buf_printf(b, "<tr><th>thresholds used</th><td>\xcf\x84_KL = %g nats, "
                          "\xcf\x84_sensitivity = %g, \xcf\x84_decoder = %g nats or %g of the largest, "
                          "\xcf\x84_activity = %g</td></tr>\n</table>\n",
                       r->tau_kl, r->tau_sensitivity, r->tau_decoder_nats, r->tau_decoder_relative,
                       r->tau_activity);
    section_end(b);
}

int nbs_report_write_html(const char *path, const nbs_report_input *in, nbs_error *err) {
    int st = nbs_report_check_input(path, in, err);
    if (st) return st;
    const nbs_collapse_report *r = in->report;
    nbs_svg_buf b;
    nbs_svg_buf_init(&b);
    nbs_svg_buf_printf(&b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                           "<meta name=\"viewport\" content=\"width=device-width\"><title>"
                           "nbsphere collapse report");
    if (in->title) {
        nbs_svg_buf_printf(&b, ": ");
        nbs_svg_buf_text(&b, in->title);
    }
    nbs_svg_buf_printf(&b, "</title><style>%s</style></head><body>\n<h1>Posterior-collapse report</h1>\n"
                           "<p class=\"meta\">", CSS);
    if (in->title) {
        nbs_svg_buf_text(&b, in->title);
        nbs_svg_buf_printf(&b, " \xc2\xb7 ");
    }
    nbs_svg_buf_printf(&b, "%s latent, %d dimensions, %lld cells \xc2\xb7 nbsphere %s</p>\n",
                       nbs_latent_word(r->latent), r->d, (long long)in->n_cells, NBS_VERSION);
    banner(&b, in);
    if (!(st = training_curves(&b, in, err)) && !(st = kl_heatmap(&b, in, err))) {
        dimension_bars(&b, in);
        layer_bars(&b, in);
        category_bars(&b, r);
        if (!(st = tracking(&b, in, err)) && !(st = kappa_histogram(&b, in)))
            st = embedding_view(&b, in, err);
        if (!st) st = integration_view(&b, in, err);
        if (!st) st = trajectory_view(&b, in, err);
    }
    nbs_svg_buf_printf(&b, "<footer>Written by nbsphere %s. The same measures are in "
                           "collapse_report.json and collapse_dimensions.tsv.</footer>\n</body></html>\n",
                       NBS_VERSION);
    if (!st) st = write_buf(path, &b, err);
    nbs_svg_buf_free(&b);
    return st;
}

int nbs_report_write_trajectory_html(const char *path, const nbs_report_input *in, const char *source,
                                     nbs_error *err) {
    if (!in || !in->trajectory)
        return nbs_error_set(err, NBS_ERR_INTERNAL, "%s: no trajectory to write (bug)", path);
    nbs_svg_buf b;
    nbs_svg_buf_init(&b);
    nbs_svg_buf_printf(&b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                           "<meta name=\"viewport\" content=\"width=device-width\"><title>nbsphere trajectory");
    if (in->title) {
        nbs_svg_buf_printf(&b, ": ");
        nbs_svg_buf_text(&b, in->title);
    }
    nbs_svg_buf_printf(&b, "</title><style>%s</style></head><body>\n<h1>Trajectory report</h1>\n<p class=\"meta\">",
                       CSS);
    if (in->title) {
        nbs_svg_buf_text(&b, in->title);
        nbs_svg_buf_printf(&b, " \xc2\xb7 ");
    }
    nbs_svg_buf_printf(&b, "an embedding of %d dimensions, %lld cells, given as ", in->d, (long long)in->n_cells);
    nbs_svg_buf_text(&b, source);
    nbs_svg_buf_printf(&b, " (no model, so no collapse measures) \xc2\xb7 nbsphere %s</p>\n", NBS_VERSION);
    int st = trajectory_view(&b, in, err);
    nbs_svg_buf_printf(&b, "<footer>Written by nbsphere %s. The same measures are in trajectory.json.</footer>\n"
                           "</body></html>\n", NBS_VERSION);
    if (!st) st = write_buf(path, &b, err);
    nbs_svg_buf_free(&b);
    return st;
}
