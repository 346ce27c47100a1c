#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "nbsphere/json.h"

/* What nbs_json_string writes for s. */
static char *json_of(const char *s) {
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    assert_non_null(f);
    nbs_json_string(f, s);
    fclose(f);
    return buf;
}

static void expect_json(const char *in, const char *want) {
    char *got = json_of(in);
    assert_string_equal(got, want);
    free(got);
}

static void test_escapes(void **state) {
    (void)state;
    expect_json("plain name", "\"plain name\"");
    expect_json("q\"b\\s/", "\"q\\\"b\\\\s/\"");
    expect_json("\b\f\n\r\t", "\"\\b\\f\\n\\r\\t\"");
    expect_json("\x01\x1f\x7f", "\"\\u0001\\u001f\x7f\""); /* DEL needs no escape in JSON */
    expect_json("", "\"\"");
    expect_json(NULL, "null");
}

/* Valid UTF-8 is copied as it is, of every length. */
static void test_valid_utf8(void **state) {
    (void)state;
    expect_json("Caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\xa7\xac", "\"Caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\xa7\xac\"");
    expect_json("\xef\xbf\xbd", "\"\xef\xbf\xbd\""); /* U+FFFD itself */
    expect_json("\xf4\x8f\xbf\xbf", "\"\xf4\x8f\xbf\xbf\""); /* U+10FFFF, the last code point */
}

/* A byte that starts no valid UTF-8 character is its Latin-1 character, escaped: the output is
 * ASCII there, so valid UTF-8 whatever the input. */
static void test_invalid_utf8(void **state) {
    (void)state;
    expect_json("G\xe9ne", "\"G\\u00e9ne\"");                       /* Latin-1 e-acute */
    expect_json("\x80x", "\"\\u0080x\"");                            /* a lone continuation byte */
    expect_json("\xe2\x82", "\"\\u00e2\\u0082\"");                   /* a cut 3-byte sequence */
    expect_json("\xe2\x82x", "\"\\u00e2\\u0082x\"");
    expect_json("\xc0\xaf", "\"\\u00c0\\u00af\"");                   /* an overlong '/' */
    expect_json("\xed\xa0\x80", "\"\\u00ed\\u00a0\\u0080\"");        /* a UTF-16 surrogate */
    expect_json("\xf4\x90\x80\x80", "\"\\u00f4\\u0090\\u0080\\u0080\""); /* beyond U+10FFFF */
    expect_json("\xff\xc3\xa9", "\"\\u00ff\xc3\xa9\"");              /* valid UTF-8 right after */
}

static void test_numbers_and_keys(void **state) {
    (void)state;
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    assert_non_null(f);
    nbs_json_key(f, 2, "k\"ey");
    nbs_json_number(f, 0.25, 9);
    fputc(',', f);
    nbs_json_number(f, 1.0 / 3, 6);
    fputc(',', f);
    nbs_json_number(f, 1.0 / 3, 9);
    fputc(',', f);
    nbs_json_number(f, NAN, 9);
    fputc(',', f);
    nbs_json_number(f, INFINITY, 9);
    fputc(',', f);
    nbs_json_number(f, -INFINITY, 6);
    nbs_json_key(f, 0, "x");
    fclose(f);
    assert_string_equal(buf, "  \"k\\\"ey\": 0.25,0.333333,0.333333333,null,null,null\"x\": ");
    free(buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_valid_utf8),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_numbers_and_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
