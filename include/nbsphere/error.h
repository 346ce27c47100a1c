/* Status codes and error messages shared by every module.
 * Library code never prints to stdout or calls exit(): it returns a status and fills an
 * nbs_error whose message names the file, the place (line, dataset, cell/gene) and what was
 * expected. main.c maps the status to the process exit code. */
#ifndef NBSPHERE_ERROR_H
#define NBSPHERE_ERROR_H

#include <stddef.h>

/* These values are also the CLI's documented exit codes. */
typedef enum {
    NBS_OK = 0,
    NBS_ERR_INTERNAL = 1, /* a bug or an unexpected library failure */
    NBS_ERR_USAGE = 2,    /* bad command line or bad pipeline file */
    NBS_ERR_INPUT = 3,    /* the input data are malformed or invalid */
    NBS_ERR_NUMERIC = 4,  /* training produced non-finite values */
    NBS_ERR_IO = 5,       /* a file could not be read or written */
    NBS_ERR_NOMEM = 6     /* out of memory */
} nbs_status;

typedef struct {
    nbs_status code;
    char msg[2048];
} nbs_error;

/* Sets err (if not NULL) and returns code, so callers can write
 *   return nbs_error_set(err, NBS_ERR_INPUT, "%s: line %ld: ...", path, line); */
int nbs_error_set(nbs_error *err, nbs_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends context ("while reading X: ") to an existing message. */
int nbs_error_prefix(nbs_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void nbs_error_clear(nbs_error *err);

/* Warnings and progress messages go through one sink, which the CLI sets (default: stderr).
 * level: 0 = warning, 1 = info, 2 = debug. */
typedef void (*nbs_log_fn)(int level, const char *msg, void *user);
void nbs_log_set_handler(nbs_log_fn fn, void *user);
void nbs_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define nbs_warn(...) nbs_log(0, __VA_ARGS__)
#define nbs_info(...) nbs_log(1, __VA_ARGS__)
#define nbs_debug(...) nbs_log(2, __VA_ARGS__)

/* Checked allocation helpers: return NULL and set err on failure. */
void *nbs_malloc(size_t n, nbs_error *err);
void *nbs_calloc(size_t count, size_t size, nbs_error *err);
char *nbs_strdup(const char *s, nbs_error *err);

#endif
