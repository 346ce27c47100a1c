/* Run manifest and SHA-256. The hash is OpenSSL's (libcrypto's EVP digest interface): a
 * maintained, tested implementation, and faster than a portable one (SHA extensions). */
#include "nbsphere/manifest.h"

#include <cblas.h>
#include <dirent.h>
#include <errno.h>
#include <gsl/gsl_version.h>
#include <hdf5.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <yaml.h>
#include <zlib.h>

#include "nbsphere/io.h"
#include "nbsphere/json.h"
#include "nbsphere/pipeline.h"
#include "nbsphere/version.h"

int nbs_sha256_init(nbs_sha256_ctx *c) {
    c->len = 0;
    c->md = EVP_MD_CTX_new();
    if (c->md && EVP_DigestInit_ex(c->md, EVP_sha256(), NULL) == 1) return NBS_OK;
    EVP_MD_CTX_free(c->md);
    c->md = NULL; /* update and final then do nothing: the caller reports the failure */
    return NBS_ERR_NOMEM;
}

void nbs_sha256_update(nbs_sha256_ctx *c, const void *data, size_t n) {
    c->len += n;
    /* EVP_DigestUpdate fails only on a broken context; final then reports it */
    if (c->md && EVP_DigestUpdate(c->md, data, n) != 1) {
        EVP_MD_CTX_free(c->md);
        c->md = NULL;
    }
}

int nbs_sha256_final(nbs_sha256_ctx *c, unsigned char digest[32]) {
    unsigned int n = 0;
    int ok = c->md && EVP_DigestFinal_ex(c->md, digest, &n) == 1 && n == 32;
    EVP_MD_CTX_free(c->md);
    c->md = NULL;
    if (!ok) memset(digest, 0, 32);
    return ok ? NBS_OK : NBS_ERR_INTERNAL;
}

int nbs_sha256_file(const char *path, char hex[65], int64_t *size, nbs_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return nbs_error_set(err, NBS_ERR_IO, "%s: cannot open for its checksum: %s", path, strerror(errno));
    nbs_sha256_ctx c;
    if (nbs_sha256_init(&c)) {
        fclose(f);
        return nbs_error_set(err, NBS_ERR_NOMEM, "%s: out of memory for its checksum", path);
    }
    unsigned char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) nbs_sha256_update(&c, buf, n);
    int bad = ferror(f);
    fclose(f);
    unsigned char d[32];
    int st = nbs_sha256_final(&c, d); /* frees the context in every case */
    if (bad) return nbs_error_set(err, NBS_ERR_IO, "%s: read error while computing its checksum", path);
    if (st) return nbs_error_set(err, NBS_ERR_INTERNAL, "%s: OpenSSL could not compute its SHA-256", path);
    if (size) *size = (int64_t)c.len;
    for (int i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", d[i]);
    return NBS_OK;
}

void nbs_versions_print(FILE *f) {
    unsigned maj, min, rel;
    H5get_libversion(&maj, &min, &rel);
    fprintf(f, "nbsphere %s\n", NBS_VERSION);
    fprintf(f, "HDF5 %u.%u.%u\n", maj, min, rel);
    fprintf(f, "GSL %s\n", gsl_version);
    const char *ob = openblas_get_config(); /* starts with "OpenBLAS <version>" */
    fprintf(f, "%s%s\n", strncmp(ob, "OpenBLAS", 8) ? "OpenBLAS " : "", ob);
    fprintf(f, "libyaml %s\n", yaml_get_version_string());
    fprintf(f, "zlib %s\n", zlibVersion());
}

void nbs_versions_json(FILE *f, int indent) {
    unsigned maj, min, rel;
    H5get_libversion(&maj, &min, &rel);
    char hdf5[64];
    snprintf(hdf5, sizeof hdf5, "%u.%u.%u", maj, min, rel);
    const char *names[] = {"nbsphere", "hdf5", "gsl", "openblas", "libyaml", "zlib"};
    const char *vals[] = {NBS_VERSION, hdf5, gsl_version, openblas_get_config(),
                          yaml_get_version_string(), zlibVersion()};
    fprintf(f, "{");
    for (int i = 0; i < 6; i++) {
        fprintf(f, "%s\n%*s\"%s\": ", i ? "," : "", indent + 2, "", names[i]);
        nbs_json_string(f, vals[i]);
    }
    fprintf(f, "\n%*s}", indent, "");
}

typedef struct {
    char *path;
    int64_t size;
    char sha256[65];
} input_rec;

typedef struct {
    char name[64];
    double seconds;
} stage_rec;

const char *const nbs_omp_wait_vars[NBS_N_OMP_WAIT_VARS] = {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"};

struct nbs_manifest {
    char *command;
    time_t start;
    input_rec *inputs;
    int n_inputs, cap_inputs;
    stage_rec *stages;
    int n_stages, cap_stages;
    char **outputs;
    int n_outputs, cap_outputs;
    char status[64];
    char *message;
    int64_t *rows_read; /* (processes) rows of the file each process read in training, or NULL */
    int processes, rows_epochs;
};

nbs_manifest *nbs_manifest_new(const char *command_line, nbs_error *err) {
    nbs_manifest *m = nbs_calloc(1, sizeof *m, err);
    if (!m) return NULL;
    m->start = time(NULL);
    strcpy(m->status, "running");
    if (!(m->command = nbs_strdup(command_line ? command_line : "", err))) {
        free(m);
        return NULL;
    }
    return m;
}

void nbs_manifest_free(nbs_manifest *m) {
    if (!m) return;
    for (int i = 0; i < m->n_inputs; i++) free(m->inputs[i].path);
    for (int i = 0; i < m->n_outputs; i++) free(m->outputs[i]);
    free(m->inputs);
    free(m->stages);
    free(m->outputs);
    free(m->command);
    free(m->message);
    free(m->rows_read);
    free(m);
}

static int grow(void **arr, int *cap, int need, size_t elem, nbs_error *err) {
    if (need <= *cap) return NBS_OK;
    int nc = *cap ? *cap * 2 : 8;
    void *p = realloc(*arr, (size_t)nc * elem);
    if (!p) return nbs_error_set(err, NBS_ERR_NOMEM, "manifest: out of memory");
    *arr = p;
    *cap = nc;
    return NBS_OK;
}

static int add_file(nbs_manifest *m, const char *path, nbs_error *err) {
    if (grow((void **)&m->inputs, &m->cap_inputs, m->n_inputs + 1, sizeof *m->inputs, err)) return err->code;
    input_rec *r = &m->inputs[m->n_inputs];
    int st = nbs_sha256_file(path, r->sha256, &r->size, err);
    if (st) return st;
    if (!(r->path = nbs_strdup(path, err))) return err->code;
    m->n_inputs++;
    return NBS_OK;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int nbs_manifest_add_input(nbs_manifest *m, const char *path, nbs_error *err) {
    struct stat st;
    if (stat(path, &st) != 0)
        return nbs_error_set(err, NBS_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode)) return add_file(m, path, err);
    DIR *d = opendir(path);
    if (!d) return nbs_error_set(err, NBS_ERR_IO, "%s: cannot list: %s", path, strerror(errno));
    char *names[256];
    int n = 0, rc = NBS_OK;
    struct dirent *e;
    while (!rc && (e = readdir(d)) && n < 256) {
        char full[NBS_PATH_MAX + 256];
        snprintf(full, sizeof full, "%s/%s", path, e->d_name);
        if (e->d_name[0] != '.' && stat(full, &st) == 0 && S_ISREG(st.st_mode)) {
            /* a name lost to a failed strdup would drop the file from the checksums */
            if ((names[n] = nbs_strdup(full, err))) n++;
            else rc = err->code;
        }
    }
    closedir(d);
    if (!rc) qsort(names, (size_t)n, sizeof *names, cmp_str); /* readdir order is not reproducible */
    for (int i = 0; i < n; i++) {
        if (!rc) rc = add_file(m, names[i], err);
        free(names[i]);
    }
    return rc;
}

int nbs_manifest_add_stage(nbs_manifest *m, const char *stage, double seconds, nbs_error *err) {
    if (grow((void **)&m->stages, &m->cap_stages, m->n_stages + 1, sizeof *m->stages, err)) return err->code;
    snprintf(m->stages[m->n_stages].name, sizeof m->stages[0].name, "%s", stage);
    m->stages[m->n_stages++].seconds = seconds;
    return NBS_OK;
}

int nbs_manifest_add_output(nbs_manifest *m, const char *name, nbs_error *err) {
    if (grow((void **)&m->outputs, &m->cap_outputs, m->n_outputs + 1, sizeof *m->outputs, err)) return err->code;
    if (!(m->outputs[m->n_outputs] = nbs_strdup(name, err))) return err->code;
    m->n_outputs++;
    return NBS_OK;
}

int nbs_manifest_set_rows_read(nbs_manifest *m, int processes, const int64_t *rows, int epochs, nbs_error *err) {
    int64_t *r = nbs_malloc(sizeof *r * (size_t)(processes > 0 ? processes : 1), err);
    if (!r) return err->code;
    memcpy(r, rows, sizeof *r * (size_t)processes);
    free(m->rows_read);
    m->rows_read = r;
    m->processes = processes;
    m->rows_epochs = epochs;
    return NBS_OK;
}

void nbs_manifest_set_status(nbs_manifest *m, const char *status, const char *message) {
    snprintf(m->status, sizeof m->status, "%s", status);
    free(m->message);
    m->message = message ? strdup(message) : NULL;
}

static void iso_time(time_t t, char *buf, size_t n) {
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void write_body(const nbs_manifest *m, const nbs_config *c, FILE *f) {
    char t0[32], t1[32];
    time_t end = time(NULL);
    iso_time(m->start, t0, sizeof t0);
    iso_time(end, t1, sizeof t1);
    fprintf(f, "{\n  \"nbsphere_version\": ");
    nbs_json_string(f, NBS_VERSION);
    fprintf(f, ",\n  \"command\": ");
    nbs_json_string(f, m->command);
    fprintf(f, ",\n  \"status\": ");
    nbs_json_string(f, m->status);
    if (m->message) {
        fprintf(f, ",\n  \"message\": ");
        nbs_json_string(f, m->message);
    }
    fprintf(f, ",\n  \"start_time\": \"%s\",\n  \"end_time\": \"%s\",\n  \"seed\": \"%llu\",\n",
            t0, t1, (unsigned long long)c->train.seed);
    fprintf(f, "  \"checksum_algorithm\": \"sha256\",\n  \"inputs\": [");
    for (int i = 0; i < m->n_inputs; i++) {
        fprintf(f, "%s\n    {\"path\": ", i ? "," : "");
        nbs_json_string(f, m->inputs[i].path);
        fprintf(f, ", \"bytes\": %lld, \"sha256\": \"%s\"}", (long long)m->inputs[i].size,
                m->inputs[i].sha256);
    }
    fprintf(f, "%s],\n  \"stages\": [", m->n_inputs ? "\n  " : "");
    double total = 0;
    for (int i = 0; i < m->n_stages; i++) {
        fprintf(f, "%s\n    {\"stage\": ", i ? "," : "");
        nbs_json_string(f, m->stages[i].name);
        fprintf(f, ", \"seconds\": %.3f}", m->stages[i].seconds);
        total += m->stages[i].seconds;
    }
    fprintf(f, "%s],\n  \"total_seconds\": %.3f,\n", m->n_stages ? "\n  " : "", total);
    if (m->rows_read) {
        fprintf(f, "  \"training_rows_read\": {\"processes\": %d, \"epochs\": %d, \"rows\": [", m->processes,
                m->rows_epochs);
        for (int q = 0; q < m->processes; q++) fprintf(f, "%s%lld", q ? ", " : "", (long long)m->rows_read[q]);
        fprintf(f, "]},\n");
    }
    /* how the OpenMP runtime's idle workers waited (main.c, choose_omp_waiting): the speed, never
     * the bits */
    fprintf(f, "  \"openmp_waiting\": {");
    for (int i = 0; i < NBS_N_OMP_WAIT_VARS; i++) {
        const char *v = getenv(nbs_omp_wait_vars[i]);
        fprintf(f, "%s\"%s\": ", i ? ", " : "", nbs_omp_wait_vars[i]);
        if (v) nbs_json_string(f, v);
        else fprintf(f, "null");
    }
    fprintf(f, "},\n  \"outputs\": [");
    for (int i = 0; i < m->n_outputs; i++) {
        fprintf(f, "%s", i ? ", " : "");
        nbs_json_string(f, m->outputs[i]);
    }
    fprintf(f, "],\n  \"versions\": ");
    nbs_versions_json(f, 2);
    fprintf(f, ",\n  \"config\": ");
    nbs_pipeline_write_json(c, f, 2);
    fprintf(f, "\n}\n");
}

int nbs_manifest_write(const nbs_manifest *m, const nbs_config *c, const char *path, nbs_error *err) {
    char tmp[NBS_PATH_MAX];
    FILE *f;
    int st = nbs_io_atomic_open(path, tmp, &f, err);
    if (st) return st;
    write_body(m, c, f);
    return nbs_io_atomic_close(f, tmp, path, err);
}
