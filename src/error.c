#include "nbsphere/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int nbs_error_set(nbs_error *err, nbs_status code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

int nbs_error_prefix(nbs_error *err, const char *fmt, ...) {
    if (!err) return NBS_ERR_INTERNAL;
    char prefix[512], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    snprintf(err->msg, sizeof err->msg, "%s%s", prefix, old);
    return err->code;
}

void nbs_error_clear(nbs_error *err) {
    if (err) {
        err->code = NBS_OK;
        err->msg[0] = '\0';
    }
}

static void default_log(int level, const char *msg, void *user) {
    (void)user;
    if (level <= 1) fprintf(stderr, "%s%s\n", level == 0 ? "warning: " : "", msg);
}

static nbs_log_fn log_fn = default_log;
static void *log_user = NULL;

void nbs_log_set_handler(nbs_log_fn fn, void *user) {
    log_fn = fn ? fn : default_log;
    log_user = user;
}

void nbs_log(int level, const char *fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    log_fn(level, buf, log_user);
}

void *nbs_malloc(size_t n, nbs_error *err) {
    void *p = malloc(n ? n : 1);
    if (!p) nbs_error_set(err, NBS_ERR_NOMEM, "out of memory allocating %zu bytes", n);
    return p;
}

void *nbs_calloc(size_t count, size_t size, nbs_error *err) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) nbs_error_set(err, NBS_ERR_NOMEM, "out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

char *nbs_strdup(const char *s, nbs_error *err) {
    size_t n = strlen(s) + 1;
    char *p = nbs_malloc(n, err);
    if (p) memcpy(p, s, n);
    return p;
}
