/* Text buffer and SVG axes for the HTML report. Plots are drawn by report_html.c; this file
 * only knows about pixels, ticks and colours. */
#include "nbsphere/svg.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void nbs_svg_buf_init(nbs_svg_buf *b) { memset(b, 0, sizeof *b); }

void nbs_svg_buf_free(nbs_svg_buf *b) {
    free(b->s);
    memset(b, 0, sizeof *b);
}

static int reserve(nbs_svg_buf *b, size_t extra) {
    if (b->failed) return 0;
    if (b->len + extra + 1 <= b->cap) return 1;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra + 1) cap *= 2;
    char *s = realloc(b->s, cap);
    if (!s) {
        b->failed = 1;
        return 0;
    }
    b->s = s;
    b->cap = cap;
    return 1;
}

void nbs_svg_buf_printf(nbs_svg_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !reserve(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void nbs_svg_buf_text(nbs_svg_buf *b, const char *s) {
    for (; s && *s; s++) {
        switch (*s) {
        case '&': nbs_svg_buf_printf(b, "&amp;"); break;
        case '<': nbs_svg_buf_printf(b, "&lt;"); break;
        case '>': nbs_svg_buf_printf(b, "&gt;"); break;
        case '"': nbs_svg_buf_printf(b, "&quot;"); break;
        case '\'': nbs_svg_buf_printf(b, "&#39;"); break;
        default: nbs_svg_buf_printf(b, "%c", *s);
        }
    }
}

double nbs_svg_x(const nbs_svg_axes *a, double x) {
    double span = a->x1 - a->x0;
    return a->left + (span > 0 ? (x - a->x0) / span : 0.5) * a->width;
}

double nbs_svg_y(const nbs_svg_axes *a, double y) {
    double span = a->y1 - a->y0;
    return a->top + a->height - (span > 0 ? (y - a->y0) / span : 0.5) * a->height;
}

static double nice_step(double lo, double hi, int target) {
    double raw = (hi - lo) / (target > 1 ? target : 1);
    if (!(raw > 0)) return 1;
    double p = pow(10, floor(log10(raw)));
    double f = raw / p;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
}

void nbs_svg_nice_range(double *lo, double *hi) {
    if (!isfinite(*lo) || !isfinite(*hi)) {
        *lo = 0;
        *hi = 1;
    }
    if (*hi <= *lo) {
        double pad = fabs(*lo) > 0 ? fabs(*lo) * 0.1 : 1;
        *lo -= pad;
        *hi += pad;
    }
    double step = nice_step(*lo, *hi, 5);
    *lo = floor(*lo / step + 1e-9) * step;
    *hi = ceil(*hi / step - 1e-9) * step;
}

int nbs_svg_nice_ticks(double lo, double hi, int target, double *ticks, int max) {
    double step = nice_step(lo, hi, target);
    int n = 0;
    for (double t = ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9 && n < max; t += step)
        ticks[n++] = fabs(t) < step * 1e-9 ? 0 : t;
    return n;
}

void nbs_svg_begin(nbs_svg_buf *b, int width, int height, const char *title) {
    nbs_svg_buf_printf(b,
                       "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
                       "viewBox=\"0 0 %d %d\" role=\"img\" font-family=\"sans-serif\" "
                       "font-size=\"12\"><title>",
                       width, height, width, height);
    nbs_svg_buf_text(b, title);
    nbs_svg_buf_printf(b, "</title><rect width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>"
                          "<text x=\"10\" y=\"18\" font-size=\"14\" font-weight=\"bold\">",
                       width, height);
    nbs_svg_buf_text(b, title);
    nbs_svg_buf_printf(b, "</text>\n");
}

void nbs_svg_end(nbs_svg_buf *b) { nbs_svg_buf_printf(b, "</svg>\n"); }

static void tick_label(char *out, size_t n, double v) {
    double a = fabs(v);
    if (v == 0) snprintf(out, n, "0");
    else if (a >= 1e5 || a < 1e-3) snprintf(out, n, "%.1e", v);
    else snprintf(out, n, "%g", v);
}

void nbs_svg_draw_axes(nbs_svg_buf *b, const nbs_svg_axes *a, const char *xlabel,
                       const char *ylabel, int integer_x) {
    nbs_svg_draw_axes_int(b, a, xlabel, ylabel, integer_x, 0);
}

void nbs_svg_draw_axes_int(nbs_svg_buf *b, const nbs_svg_axes *a, const char *xlabel,
                           const char *ylabel, int integer_x, int integer_y) {
    double ticks[32];
    char lab[32];
    double bottom = a->top + a->height;
    nbs_svg_buf_printf(b, "<g stroke=\"#333\" fill=\"none\"><rect x=\"%.1f\" y=\"%.1f\" "
                          "width=\"%.1f\" height=\"%.1f\"/></g>\n",
                       a->left, a->top, a->width, a->height);
    int nx = nbs_svg_nice_ticks(a->x0, a->x1, 6, ticks, 32);
    for (int i = 0; i < nx; i++) {
        if (integer_x && fabs(ticks[i] - round(ticks[i])) > 1e-9) continue;
        double x = nbs_svg_x(a, ticks[i]);
        tick_label(lab, sizeof lab, ticks[i]);
        nbs_svg_buf_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                              "stroke=\"#333\"/><text x=\"%.1f\" y=\"%.1f\" "
                              "text-anchor=\"middle\">%s</text>\n",
                           x, bottom, x, bottom + 5, x, bottom + 18, lab);
    }
    int ny = nbs_svg_nice_ticks(a->y0, a->y1, 5, ticks, 32);
    for (int i = 0; i < ny; i++) {
        if (integer_y && fabs(ticks[i] - round(ticks[i])) > 1e-9) continue;
        double y = nbs_svg_y(a, ticks[i]);
        tick_label(lab, sizeof lab, ticks[i]);
        nbs_svg_buf_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                              "stroke=\"#ddd\"/><line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" "
                              "y2=\"%.1f\" stroke=\"#333\"/><text x=\"%.1f\" y=\"%.1f\" "
                              "text-anchor=\"end\">%s</text>\n",
                           a->left, y, a->left + a->width, y, a->left - 5, y, a->left, y,
                           a->left - 8, y + 4, lab);
    }
    nbs_svg_buf_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">",
                       a->left + a->width / 2, bottom + 36);
    nbs_svg_buf_text(b, xlabel);
    nbs_svg_buf_printf(b, "</text><text transform=\"translate(%.1f,%.1f) rotate(-90)\" "
                          "text-anchor=\"middle\">",
                       a->left - 50, a->top + a->height / 2);
    nbs_svg_buf_text(b, ylabel);
    nbs_svg_buf_printf(b, "</text>\n");
}

void nbs_svg_hline(nbs_svg_buf *b, const nbs_svg_axes *a, double y, const char *colour,
                   const char *label) {
    if (y < a->y0 || y > a->y1) return;
    double py = nbs_svg_y(a, y);
    /* the label gets a white halo (stroke painted under the fill) so it stays legible where it
     * crosses bars or lines */
    nbs_svg_buf_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                          "stroke-dasharray=\"6,4\" stroke-width=\"1.5\"/><text x=\"%.1f\" "
                          "y=\"%.1f\" text-anchor=\"end\" fill=\"%s\" stroke=\"#fff\" "
                          "stroke-width=\"3\" paint-order=\"stroke\">",
                       a->left, py, a->left + a->width, py, colour, a->left + a->width - 4,
                       py - 4, colour);
    nbs_svg_buf_text(b, label);
    nbs_svg_buf_printf(b, "</text>\n");
}

/* viridis at 9 stops, linearly interpolated */
void nbs_svg_colormap(double t, char out[8]) {
    static const unsigned char stops[9][3] = {
        {68, 1, 84},    {71, 44, 122},  {59, 81, 139},   {44, 113, 142}, {33, 144, 141},
        {39, 173, 129}, {92, 200, 99},  {170, 220, 50},  {253, 231, 37}};
    if (!(t >= 0)) t = 0;
    if (t > 1) t = 1;
    double pos = t * 8;
    int i = (int)pos;
    if (i >= 8) i = 7;
    double f = pos - i;
    int rgb[3];
    for (int k = 0; k < 3; k++)
        rgb[k] = (int)lround(stops[i][k] + f * (stops[i + 1][k] - stops[i][k]));
    snprintf(out, 8, "#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
}

const char *nbs_svg_category_colour(int i) {
    static const char *pal[20] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
                                  "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
                                  "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"};
    return pal[(i % 20 + 20) % 20];
}

void nbs_svg_polyline(nbs_svg_buf *b, const nbs_svg_axes *a, const double *x, const double *y,
                      int n, const char *colour, const char *dash) {
    int open = 0;
    for (int i = 0; i < n; i++) {
        if (!isfinite(x[i]) || !isfinite(y[i])) {
            if (open) nbs_svg_buf_printf(b, "\"/>\n");
            open = 0;
            continue;
        }
        if (!open) {
            nbs_svg_buf_printf(b, "<path fill=\"none\" stroke=\"%s\" stroke-width=\"1.8\"%s%s%s d=\"M",
                               colour, dash ? " stroke-dasharray=\"" : "", dash ? dash : "",
                               dash ? "\"" : "");
            open = 1;
        } else {
            nbs_svg_buf_printf(b, "L");
        }
        nbs_svg_buf_printf(b, "%.1f %.1f", nbs_svg_x(a, x[i]), nbs_svg_y(a, y[i]));
    }
    if (open) nbs_svg_buf_printf(b, "\"/>\n");
}

void nbs_svg_legend_item(nbs_svg_buf *b, double x, double y, const char *colour, const char *text) {
    nbs_svg_buf_printf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"12\" height=\"12\" fill=\"%s\"/>"
                          "<text x=\"%.1f\" y=\"%.1f\">",
                       x, y - 10, colour, x + 17, y);
    nbs_svg_buf_text(b, text);
    nbs_svg_buf_printf(b, "</text>\n");
}

void nbs_svg_colorbar(nbs_svg_buf *b, double x, double y, double w, double h, double lo, double hi,
                      const char *label) {
    /* 32 bands are indistinguishable from a smooth gradient at these sizes and need no
     * <defs>/gradient ids that could clash between plots on one page. */
    const int bands = 32;
    for (int k = 0; k < bands; k++) {
        char c[8];
        nbs_svg_colormap((k + 0.5) / bands, c);
        double y1 = y + h - (k + 1) * h / bands;
        nbs_svg_buf_printf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>",
                           x, y1, w, h / bands + 0.5, c);
    }
    nbs_svg_buf_printf(b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
                          "stroke=\"#333\"/>\n",
                       x, y, w, h);
    nbs_svg_axes ax = {lo, hi, lo, hi, x, y, w, h};
    double ticks[32];
    char lab[32];
    int nt = hi > lo ? nbs_svg_nice_ticks(lo, hi, 5, ticks, 32) : 0;
    for (int i = 0; i < nt; i++) {
        double py = nbs_svg_y(&ax, ticks[i]);
        tick_label(lab, sizeof lab, ticks[i]);
        nbs_svg_buf_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333\"/>"
                              "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n",
                           x + w, py, x + w + 4, py, x + w + 6, py + 4, lab);
    }
    nbs_svg_buf_printf(b, "<text transform=\"translate(%.1f,%.1f) rotate(-90)\" "
                          "text-anchor=\"middle\">",
                       x + w + 48, y + h / 2);
    nbs_svg_buf_text(b, label);
    nbs_svg_buf_printf(b, "</text>\n");
}
