#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/svg.h"

static int count_of(const char *s, const char *needle) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

/* Every tick is a whole multiple of a 1-2-5 step, the ticks are evenly spaced and inside the range. */
static void check_ticks(double lo, double hi, int target) {
    double t[32];
    int n = nbs_svg_nice_ticks(lo, hi, target, t, 32);
    assert_true(n >= 2 && n <= 2 * target + 1);
    double step = t[1] - t[0];
    double p = pow(10, floor(log10(step))), f = step / p;
    assert_true(fabs(f - 1) < 1e-9 || fabs(f - 2) < 1e-9 || fabs(f - 5) < 1e-9);
    for (int i = 0; i < n; i++) {
        assert_true(t[i] >= lo - 1e-9 * step && t[i] <= hi + 1e-9 * step);
        assert_true(fabs(t[i] / step - round(t[i] / step)) < 1e-6);
        if (i) assert_true(fabs(t[i] - t[i - 1] - step) < 1e-9 * fabs(step) + 1e-12);
    }
    /* no gap wider than a step at either end */
    assert_true(t[0] - lo < step * (1 + 1e-9));
    assert_true(hi - t[n - 1] < step * (1 + 1e-9));
}

static void test_ticks(void **state) {
    (void)state;
    double t[32];
    int n = nbs_svg_nice_ticks(0, 1, 5, t, 32);
    assert_int_equal(n, 6);
    assert_true(fabs(t[0]) < 1e-12 && fabs(t[5] - 1) < 1e-12 && fabs(t[1] - 0.2) < 1e-12);
    n = nbs_svg_nice_ticks(0.3, 97, 5, t, 32);
    assert_int_equal(n, 4);
    assert_true(fabs(t[0] - 20) < 1e-9 && fabs(t[3] - 80) < 1e-9);
    /* a tick at zero is exactly zero, not -1e-17, so its label reads "0" */
    n = nbs_svg_nice_ticks(-0.3, 0.3, 6, t, 32);
    int zero = 0;
    for (int i = 0; i < n; i++) zero |= t[i] == 0.0 && !signbit(t[i]);
    assert_true(zero);
    check_ticks(-3.7, 12.2, 5);
    check_ticks(1e-4, 3e-4, 5);
    check_ticks(1000, 123456, 6);
    check_ticks(-2, -1.99, 4);
    /* the max argument bounds the output */
    assert_int_equal(nbs_svg_nice_ticks(0, 100, 50, t, 3), 3);

    double lo = 0.13, hi = 9.7;
    nbs_svg_nice_range(&lo, &hi);
    assert_true(lo <= 0.13 && hi >= 9.7 && fabs(lo) < 1e-12 && fabs(hi - 10) < 1e-9);
    lo = hi = 5; /* an empty range is widened */
    nbs_svg_nice_range(&lo, &hi);
    assert_true(lo < 5 && hi > 5);
    lo = NAN, hi = 1;
    nbs_svg_nice_range(&lo, &hi);
    assert_true(isfinite(lo) && isfinite(hi) && hi > lo);
}

static void test_axes_mapping(void **state) {
    (void)state;
    nbs_svg_axes a = {0, 10, -1, 1, 50, 20, 400, 200};
    assert_true(fabs(nbs_svg_x(&a, 0) - 50) < 1e-12 && fabs(nbs_svg_x(&a, 10) - 450) < 1e-12);
    /* y grows upwards in data, downwards in pixels */
    assert_true(fabs(nbs_svg_y(&a, 1) - 20) < 1e-12 && fabs(nbs_svg_y(&a, -1) - 220) < 1e-12);
    nbs_svg_buf b;
    nbs_svg_buf_init(&b);
    nbs_svg_axes c = {0.5, 3.5, 0.5, 3.5, 50, 20, 300, 300};
    nbs_svg_draw_axes_int(&b, &c, "x", "y", 1, 1);
    assert_false(b.failed);
    /* only whole numbers on both axes: 1, 2, 3 twice, never "0.5" or "1.5" */
    assert_null(strstr(b.s, ">0.5<"));
    assert_null(strstr(b.s, ">1.5<"));
    assert_int_equal(count_of(b.s, ">2</text>"), 2);
    nbs_svg_buf_free(&b);
}

static void test_escaping(void **state) {
    (void)state;
    nbs_svg_buf b;
    nbs_svg_buf_init(&b);
    nbs_svg_buf_text(&b, "a<b>&\"c'");
    assert_string_equal(b.s, "a&lt;b&gt;&amp;&quot;c&#39;");
    b.len = 0;
    /* the title of a plot is escaped both in <title> and in the heading */
    nbs_svg_begin(&b, 100, 50, "<&>");
    nbs_svg_end(&b);
    assert_int_equal(count_of(b.s, "&lt;&amp;&gt;"), 2);
    assert_null(strstr(b.s, "<&>"));
    /* a long text grows the buffer past its first allocation */
    b.len = 0;
    for (int i = 0; i < 3000; i++) nbs_svg_buf_text(&b, "<>");
    assert_int_equal((int)b.len, 3000 * 8);
    assert_false(b.failed);
    nbs_svg_buf_free(&b);
}

static void test_colormap(void **state) {
    (void)state;
    char c[8];
    nbs_svg_colormap(0, c);
    assert_string_equal(c, "#440154");
    nbs_svg_colormap(1, c);
    assert_string_equal(c, "#fde725");
    nbs_svg_colormap(-3, c); /* clamped */
    assert_string_equal(c, "#440154");
    nbs_svg_colormap(7, c);
    assert_string_equal(c, "#fde725");
    nbs_svg_colormap(NAN, c);
    assert_string_equal(c, "#440154");
    /* viridis gets lighter from end to end: luminance increases along the map */
    double prev = -1;
    for (int k = 0; k <= 20; k++) {
        unsigned r, g, bl;
        nbs_svg_colormap(k / 20.0, c);
        assert_int_equal(sscanf(c, "#%2x%2x%2x", &r, &g, &bl), 3);
        double lum = 0.2126 * r + 0.7152 * g + 0.0722 * bl;
        assert_true(lum > prev);
        prev = lum;
    }
    /* 20 distinct category colours, then the cycle repeats */
    for (int i = 0; i < 20; i++) {
        for (int j = 0; j < i; j++)
            assert_string_not_equal(nbs_svg_category_colour(i), nbs_svg_category_colour(j));
        assert_string_equal(nbs_svg_category_colour(i), nbs_svg_category_colour(i + 20));
    }
    assert_string_equal(nbs_svg_category_colour(-1), nbs_svg_category_colour(19));
}

static void test_polyline_legend_colorbar(void **state) {
    (void)state;
    nbs_svg_buf b;
    nbs_svg_buf_init(&b);
    nbs_svg_axes a = {0, 4, 0, 4, 0, 0, 400, 400};
    const double x[5] = {0, 1, 2, 3, 4}, y[5] = {0, 1, NAN, 3, 4};
    nbs_svg_polyline(&b, &a, x, y, 5, "#123456", "6,3");
    /* the missing value splits the line in two, each dashed */
    assert_int_equal(count_of(b.s, "<path"), 2);
    assert_int_equal(count_of(b.s, "stroke-dasharray=\"6,3\""), 2);
    assert_non_null(strstr(b.s, "M0.0 400.0L100.0 300.0\""));
    b.len = 0;
    b.s[0] = '\0';
    const double none[2] = {NAN, NAN};
    nbs_svg_polyline(&b, &a, x, none, 2, "#000", NULL);
    assert_int_equal((int)b.len, 0);
    nbs_svg_legend_item(&b, 10, 20, "#ff0000", "T cells <CD4>");
    assert_non_null(strstr(b.s, "T cells &lt;CD4&gt;"));
    assert_non_null(strstr(b.s, "fill=\"#ff0000\""));
    b.len = 0;
    nbs_svg_colorbar(&b, 0, 0, 10, 100, -3, 1, "log10 KL");
    /* ticks at -3..1, both map colours at its ends, and its label */
    assert_non_null(strstr(b.s, ">-3</text>"));
    assert_non_null(strstr(b.s, ">1</text>"));
    assert_non_null(strstr(b.s, "log10 KL"));
    assert_int_equal(count_of(b.s, "<rect"), 33);
    nbs_svg_buf_free(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ticks),
        cmocka_unit_test(test_axes_mapping),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_colormap),
        cmocka_unit_test(test_polyline_legend_colorbar),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
