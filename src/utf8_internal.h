/* UTF-8 decoding shared by the name checks of the readers (io.c) and the JSON writer (json.c).
 * Not part of the public API. */
#ifndef NBSPHERE_UTF8_INTERNAL_H
#define NBSPHERE_UTF8_INTERNAL_H

#include <stdint.h>

/* Length in bytes (1 to 4) of the valid UTF-8 character that starts at p, or 0 when the bytes
 * there are not one (RFC 3629: no overlong forms, no surrogates, at most U+10FFFF; a NUL byte
 * ends every sequence, so p is never read past the end of a string). */
static inline int nbs_utf8_char_len(const unsigned char *p) {
    const unsigned char c = p[0];
    const int n = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : -1;
    if (!c || n < 0 || (n == 1 && c < 0xc2) || c > 0xf4) return 0;
    uint32_t cp = n == 0 ? c : c & (0x3f >> n);
    for (int k = 1; k <= n; k++) {
        if ((p[k] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (p[k] & 0x3f);
    }
    if ((n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return n + 1;
}

#endif
