/* Shared by the libFuzzer harnesses: the readers take paths, so each input is written to a
 * per-process file in a RAM-backed folder (TMPDIR, else /dev/shm, else /tmp) and read back. */
#ifndef NBS_FUZZ_UTIL_H
#define NBS_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nbsphere/error.h"

/* Writes data to a fixed per-process file ending in `suffix`; returns its path (static). */
static inline const char *fuzz_file(const uint8_t *data, size_t size, const char *suffix) {
    static char path[512];
    const char *dir = getenv("TMPDIR");
    if (!dir || !*dir) dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(path, sizeof path, "%s/nbs_fuzz_%ld%s", dir, (long)getpid(), suffix);
    FILE *f = fopen(path, "wb");
    if (!f) abort(); /* the harness cannot work at all: stop loudly */
    if (size && fwrite(data, 1, size, f) != size) abort();
    fclose(f);
    return path;
}

/* Library code reports through nbs_log; the fuzzer's output stays readable without it. */
static void fuzz_quiet_log(int level, const char *msg, void *user) {
    (void)level;
    (void)msg;
    (void)user;
}

/* Every failure must come with a message: an empty one would leave the user guessing. */
static inline void fuzz_check_error(int rc, const nbs_error *err) {
    if (rc != 0 && err->msg[0] == '\0') abort();
    if (rc < 0 || rc > NBS_ERR_NOMEM) abort();
}

#endif
