/* Run manifest and SHA-256. The hash is the plain FIPS 180-4 algorithm: no crypto library is
 * among the build's dependencies, and 80 lines are easier to audit than a new package; the
 * test checks it against the standard test vectors. */
#include "nbsphere/manifest.h"

#include <cblas.h>
#include <dirent.h>
#include <errno.h>
#include <gsl/gsl_version.h>
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <yaml.h>
#include <zlib.h>

#include "nbsphere/io.h"
#include "nbsphere/pipeline.h"

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 |
               (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

void nbs_sha256_init(nbs_sha256_ctx *c) {
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, h0, sizeof h0);
    c->len = 0;
    c->fill = 0;
}

void nbs_sha256_update(nbs_sha256_ctx *c, const void *data, size_t n) {
    const unsigned char *p = data;
    c->len += n;
    while (n) {
        size_t take = 64 - c->fill < n ? 64 - c->fill : n;
        memcpy(c->buf + c->fill, p, take);
        c->fill += take, p += take, n -= take;
        if (c->fill == 64) {
            sha256_block(c->h, c->buf);
            c->fill = 0;
        }
    }
}

void nbs_sha256_final(nbs_sha256_ctx *c, unsigned char digest[32]) {
    uint64_t bits = c->len * 8;
    unsigned char pad = 0x80, zero = 0, len[8];
    nbs_sha256_update(c, &pad, 1);
    while (c->fill != 56) nbs_sha256_update(c, &zero, 1);
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)(bits >> (56 - 8 * i));
    nbs_sha256_update(c, len, 8);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4; j++) digest[4 * i + j] = (unsigned char)(c->h[i] >> (24 - 8 * j));
}

int nbs_sha256_file(const char *path, char hex[65], int64_t *size, nbs_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return nbs_error_set(err, NBS_ERR_IO, "%s: cannot open for its checksum: %s", path, strerror(errno));
    nbs_sha256_ctx c;
    nbs_sha256_init(&c);
    unsigned char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) nbs_sha256_update(&c, buf, n);
    int bad = ferror(f);
    fclose(f);
    if (bad) return nbs_error_set(err, NBS_ERR_IO, "%s: read error while computing its checksum", path);
    unsigned char d[32];
    if (size) *size = (int64_t)c.len;
    nbs_sha256_final(&c, d);
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

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
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
        json_str(f, vals[i]);
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
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 256) {
        char full[NBS_PATH_MAX + 256];
        snprintf(full, sizeof full, "%s/%s", path, e->d_name);
        if (e->d_name[0] != '.' && stat(full, &st) == 0 && S_ISREG(st.st_mode))
            names[n++] = strdup(full);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_str); /* readdir order is not reproducible */
    int rc = NBS_OK;
    for (int i = 0; i < n; i++) {
        if (!rc && names[i]) rc = add_file(m, names[i], err);
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
    json_str(f, NBS_VERSION);
    fprintf(f, ",\n  \"command\": ");
    json_str(f, m->command);
    fprintf(f, ",\n  \"status\": ");
    json_str(f, m->status);
    if (m->message) {
        fprintf(f, ",\n  \"message\": ");
        json_str(f, m->message);
    }
    fprintf(f, ",\n  \"start_time\": \"%s\",\n  \"end_time\": \"%s\",\n  \"seed\": \"%llu\",\n",
            t0, t1, (unsigned long long)c->train.seed);
    fprintf(f, "  \"checksum_algorithm\": \"sha256\",\n  \"inputs\": [");
    for (int i = 0; i < m->n_inputs; i++) {
        fprintf(f, "%s\n    {\"path\": ", i ? "," : "");
        json_str(f, m->inputs[i].path);
        fprintf(f, ", \"bytes\": %lld, \"sha256\": \"%s\"}", (long long)m->inputs[i].size,
                m->inputs[i].sha256);
    }
    fprintf(f, "%s],\n  \"stages\": [", m->n_inputs ? "\n  " : "");
    double total = 0;
    for (int i = 0; i < m->n_stages; i++) {
        fprintf(f, "%s\n    {\"stage\": ", i ? "," : "");
        json_str(f, m->stages[i].name);
        fprintf(f, ", \"seconds\": %.3f}", m->stages[i].seconds);
        total += m->stages[i].seconds;
    }
    fprintf(f, "%s],\n  \"total_seconds\": %.3f,\n  \"outputs\": [", m->n_stages ? "\n  " : "", total);
    for (int i = 0; i < m->n_outputs; i++) {
        fprintf(f, "%s", i ? ", " : "");
        json_str(f, m->outputs[i]);
    }
    fprintf(f, "],\n  \"versions\": ");
    nbs_versions_json(f, 2);
    fprintf(f, ",\n  \"config\": ");
    nbs_pipeline_write_json(c, f, 2);
    fprintf(f, "\n}\n");
}

int nbs_manifest_write(const nbs_manifest *m, const nbs_config *c, const char *path, nbs_error *err) {
    char tmp[NBS_PATH_MAX];
    nbs_io_tmp_name(path, tmp);
    FILE *f = fopen(tmp, "w");
    if (!f) return nbs_error_set(err, NBS_ERR_IO, "%s: cannot write the manifest: %s", tmp, strerror(errno));
    write_body(m, c, f);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        remove(tmp);
        return nbs_error_set(err, NBS_ERR_IO, "%s: writing the manifest failed (disk full?)", path);
    }
    return nbs_io_commit(tmp, path, err);
}
