#include "nbsphere/json.h"

#include <math.h>

#include "utf8_internal.h"

void nbs_json_string(FILE *f, const char *s) {
    if (!s) {
        fputs("null", f);
        return;
    }
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        const unsigned char c = *p;
        const char *escape = c == '"' ? "\\\"" : c == '\\' ? "\\\\" : c == '\b' ? "\\b" : c == '\f' ? "\\f"
                           : c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t" : NULL;
        const int len = escape || c < 0x20 ? 0 : nbs_utf8_char_len(p);
        if (escape) fputs(escape, f);
        else if (len) fwrite(p, 1, (size_t)len, f);
        else fprintf(f, "\\u%04x", c); /* a control character, or a byte that is no UTF-8 */
        p += len ? len : 1;
    }
    fputc('"', f);
}

void nbs_json_number(FILE *f, double v, int digits) {
    if (isfinite(v)) fprintf(f, "%.*g", digits, v);
    else fputs("null", f);
}

void nbs_json_key(FILE *f, int indent, const char *key) {
    fprintf(f, "%*s", indent, "");
    nbs_json_string(f, key);
    fputs(": ", f);
}
