/* A small helper for writing text (HTML, SVG) into a growing buffer, and for drawing plot axes
 * with readable ticks in inline SVG. Used by report_html.c; no I/O here. */
#ifndef NBSPHERE_SVG_H
#define NBSPHERE_SVG_H

#include <stddef.h>

/* Growing text buffer. An allocation failure sets failed and later writes are dropped, so
 * callers check once at the end instead of after every write. */
typedef struct {
    char *s;
    size_t len, cap;
    int failed;
} nbs_svg_buf;

void nbs_svg_buf_init(nbs_svg_buf *b);
void nbs_svg_buf_free(nbs_svg_buf *b);
void nbs_svg_buf_printf(nbs_svg_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Text escaped for HTML/SVG (& < > " '). */
void nbs_svg_buf_text(nbs_svg_buf *b, const char *s);

/* Data range [x0,x1] x [y0,y1] mapped onto the plot rectangle (pixels) inside an SVG. */
typedef struct {
    double x0, x1, y0, y1;
    double left, top, width, height;
} nbs_svg_axes;

double nbs_svg_x(const nbs_svg_axes *a, double x);
double nbs_svg_y(const nbs_svg_axes *a, double y);

/* Ticks at 1, 2 or 5 times a power of ten covering [lo, hi]; returns how many (<= max). */
int nbs_svg_nice_ticks(double lo, double hi, int target, double *ticks, int max);
/* Widens [*lo, *hi] to tick boundaries (and to a non-empty range). */
void nbs_svg_nice_range(double *lo, double *hi);

/* Opens <svg> of the given size with a title (accessible name) and a heading line. */
void nbs_svg_begin(nbs_svg_buf *b, int width, int height, const char *title);
void nbs_svg_end(nbs_svg_buf *b);
/* Frame, ticks with labels on both axes, axis titles. integer_x: only whole-number x ticks. */
void nbs_svg_draw_axes(nbs_svg_buf *b, const nbs_svg_axes *a, const char *xlabel,
                       const char *ylabel, int integer_x);
/* The same, also with only whole-number y ticks when integer_y (counts, dimension numbers). */
void nbs_svg_draw_axes_int(nbs_svg_buf *b, const nbs_svg_axes *a, const char *xlabel,
                           const char *ylabel, int integer_x, int integer_y);
/* A dashed horizontal reference line at y with a label at its right end. */
void nbs_svg_hline(nbs_svg_buf *b, const nbs_svg_axes *a, double y, const char *colour,
                   const char *label);

/* Sequential colour map (viridis, t in [0,1]) as "#rrggbb" into out[8]. */
void nbs_svg_colormap(double t, char out[8]);
/* Distinct colours for categories (cycles after 20). */
const char *nbs_svg_category_colour(int i);

/* A line through the points (x[i], y[i]) in data units; a non-finite value breaks the line, so
 * epochs without a value (e.g. no validation cells) leave a gap instead of a false segment.
 * dash: NULL for solid, else an SVG dash pattern such as "6,3". */
void nbs_svg_polyline(nbs_svg_buf *b, const nbs_svg_axes *a, const double *x, const double *y,
                      int n, const char *colour, const char *dash);
/* A legend entry at pixel (x, y): a colour swatch and escaped text. */
void nbs_svg_legend_item(nbs_svg_buf *b, double x, double y, const char *colour, const char *text);
/* A vertical viridis colour bar at pixel (x, y), size w x h, for values lo (bottom) to hi (top),
 * with nice ticks on its right and a rotated label. */
void nbs_svg_colorbar(nbs_svg_buf *b, double x, double y, double w, double h, double lo, double hi,
                      const char *label);

#endif
