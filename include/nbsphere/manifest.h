/* The run manifest (manifest.json in each output folder): what went in (paths, sizes,
 * SHA-256 checksums), the fully resolved configuration, the versions of nbsphere and its
 * libraries, the seed, start and end time, and the time spent in each stage. Also the
 * version strings printed by `nbsphere --version`. */
#ifndef NBSPHERE_MANIFEST_H
#define NBSPHERE_MANIFEST_H

#include <stdint.h>
#include <stdio.h>

#include "nbsphere/config.h"
#include "nbsphere/error.h"

/* SHA-256 (FIPS 180-4), streaming, computed by OpenSSL's libcrypto: init, update..., final.
 * init returns NBS_OK or NBS_ERR_NOMEM; final releases the context in every case and returns
 * NBS_OK, or NBS_ERR_INTERNAL (digest zeroed) when init or OpenSSL failed. */
typedef struct {
    void *md;     /* EVP_MD_CTX *, opaque so that this header needs no OpenSSL headers */
    uint64_t len; /* bytes hashed so far */
} nbs_sha256_ctx;
int nbs_sha256_init(nbs_sha256_ctx *c);
void nbs_sha256_update(nbs_sha256_ctx *c, const void *data, size_t n);
int nbs_sha256_final(nbs_sha256_ctx *c, unsigned char digest[32]);
/* Hex digest of a file's bytes; size in bytes if not NULL. */
int nbs_sha256_file(const char *path, char hex[65], int64_t *size, nbs_error *err);

/* Library versions, one "name version" per line (for --version) or as a JSON object. */
void nbs_versions_print(FILE *f);
void nbs_versions_json(FILE *f, int indent);

typedef struct nbs_manifest nbs_manifest;
/* The environment variables that set how the OpenMP runtime's idle workers wait (OMP_WAIT_POLICY:
 * every runtime; GOMP_SPINCOUNT: libgomp; KMP_BLOCKTIME: libomp), which manifest.json records. */
#define NBS_N_OMP_WAIT_VARS 3
extern const char *const nbs_omp_wait_vars[NBS_N_OMP_WAIT_VARS];

nbs_manifest *nbs_manifest_new(const char *command_line, nbs_error *err);
void nbs_manifest_free(nbs_manifest *m);
/* Records an input: a file, or every regular file of a folder (10x MTX folders), hashed. */
int nbs_manifest_add_input(nbs_manifest *m, const char *path, nbs_error *err);
/* Records the wall-clock seconds of a stage ("load", "train", ...), in order. */
int nbs_manifest_add_stage(nbs_manifest *m, const char *stage, double seconds, nbs_error *err);
/* Records an output file name (relative to the output folder). */
int nbs_manifest_add_output(nbs_manifest *m, const char *name, nbs_error *err);
/* Records the rows of the input file each of `processes` processes read in training (rows:
 * (processes)) over `epochs` epochs: an out-of-core run under mpirun. */
int nbs_manifest_set_rows_read(nbs_manifest *m, int processes, const int64_t *rows, int epochs, nbs_error *err);
/* Sets the run's status word ("ok", or the failure) and message for the record. */
void nbs_manifest_set_status(nbs_manifest *m, const char *status, const char *message);
/* Writes path (temporary name, then rename) with the end time taken now. */
int nbs_manifest_write(const nbs_manifest *m, const nbs_config *c, const char *path, nbs_error *err);

#endif
