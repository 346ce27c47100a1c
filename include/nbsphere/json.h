/* JSON output: the pieces whose spelling JSON fixes (strings, numbers, keys), for every JSON
 * nbsphere writes: manifest.json, collapse_report.json, the configuration in the manifest and
 * `nbsphere inspect --json`. Each writer lays out its own objects with these. A public header
 * because the command line, which uses the library through its public headers only, prints
 * through it too. */
#ifndef NBSPHERE_JSON_H
#define NBSPHERE_JSON_H

#include <stdio.h>

/* A string literal with its quotes; NULL gives null. The output is valid UTF-8 whatever the
 * input bytes: valid UTF-8 characters are copied as they are, and a byte that does not start
 * one (a Latin-1 name, a cut sequence) is taken as the Latin-1 character of that value and
 * written as \u00XX, so that no byte is lost (Latin-1 "G\xe9ne" gives "G\u00e9ne"). " and \ are
 * escaped, \b \f \n \r \t get their short escapes, other control characters \u00XX. */
void nbs_json_string(FILE *f, const char *s);

/* A number with `digits` significant digits (printf's %.*g); NaN and infinities give null,
 * which JSON has instead. */
void nbs_json_number(FILE *f, double v, int digits);

/* `indent` spaces, then the key as a string and ": ". */
void nbs_json_key(FILE *f, int indent, const char *key);

#endif
