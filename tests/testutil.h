/* Shared helpers for the cmocka tests: where the real datasets are, temporary folders,
 * running the CLI. Real-data tests call NBS_REQUIRE_DATA(), which skips visibly (and says
 * which file) only where ../shared/data is absent. */
#ifndef NBSPHERE_TESTUTIL_H
#define NBSPHERE_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

/* Absolute path of a file under the shared real-data folder (NBS_DATA_DIR, or ../shared/data
 * next to the repository). Returns a static buffer. */
const char *tu_data(const char *relative);
/* 1 if the file exists. */
int tu_exists(const char *path);
#define NBS_REQUIRE_DATA(rel)                                                         \
    do {                                                                              \
        if (!tu_exists(tu_data(rel))) {                                               \
            print_message("SKIP: real-data file %s not found\n", tu_data(rel));       \
            skip();                                                                   \
        }                                                                             \
    } while (0)

/* A fresh temporary folder (removed by tu_rmtree); returns a malloc'd path. */
char *tu_tmpdir(void);
void tu_rmtree(const char *path);
/* path join into a static rotating buffer */
const char *tu_path(const char *dir, const char *name);
/* Writes text to a file; returns 0 on success. */
int tu_write_file(const char *path, const char *text);
int tu_write_bytes(const char *path, const void *bytes, size_t n);
/* Reads a whole file (malloc'd, NUL-terminated); NULL if absent. */
char *tu_read_file(const char *path, size_t *n);
/* 1 if both files exist and hold the same bytes. */
int tu_same_bytes(const char *a, const char *b);

/* Runs the nbsphere binary (NBS_BIN) with a shell-quoted argument string; captures stdout and
 * stderr (malloc'd, may be NULL) and returns the exit status (-1 if it did not exit normally). */
int tu_run_cli(const char *args, char **out, char **errout);

/* Number of files in a folder (0 if it does not exist). */
int tu_count_files(const char *dir);

/* Runs `nbsphere run pipelines/<pipeline>` on the Kang data (through tu_data, so NBS_DATA_DIR
 * is honoured) into dir/name with extra arguments; fails the test on a non-zero exit, prints the
 * run's 15-NN line, and returns dir/name/collapse_report.json's text (malloc'd). */
char *tu_run_kang(const char *pipeline, const char *dir, const char *name, const char *extra);

/* The number after the first "key": in a JSON text; fails the test when the key is absent. */
double tu_json_number(const char *json, const char *key);

/* Asserts two count matrices are the same: shape, entries and names. */
#include "nbsphere/matrix.h"
#include "nbsphere/vae.h"
void tu_expect_same_matrix(const nbs_matrix *a, const nbs_matrix *b);

/* Every cell of X with its library sizes (malloc'd; tu_cells_free releases them). */
nbs_cells tu_cells(const nbs_matrix *X);
void tu_cells_free(nbs_cells *c);
/* A workspace for batches of up to max_batch rows of X (fails the test if it cannot be made). */
nbs_workspace *tu_workspace(const nbs_model *m, const nbs_matrix *X, int max_batch);

#endif
