#include "testutil.h"

#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

const char *tu_data(const char *relative) {
    static char buf[4][4096];
    static int slot = 0;
    char *out = buf[slot++ % 4];
    const char *dir = getenv("NBS_DATA_DIR");
    if (dir && *dir) {
        snprintf(out, 4096, "%s/%s", dir, relative);
    } else {
        /* tests run from the repository root (make test) */
        char cwd[3000];
        if (!getcwd(cwd, sizeof cwd)) cwd[0] = '\0';
        snprintf(out, 4096, "%s/../shared/data/%s", cwd, relative);
    }
    return out;
}

int tu_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

char *tu_tmpdir(void) {
    const char *base = getenv("TMPDIR");
    char tmpl[4096];
    snprintf(tmpl, sizeof tmpl, "%s/nbs_test_XXXXXX", base && *base ? base : "/tmp");
    char *d = mkdtemp(tmpl);
    return d ? strdup(d) : NULL;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}

void tu_rmtree(const char *path) {
    if (path) nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

const char *tu_path(const char *dir, const char *name) {
    static char buf[8][4096];
    static int slot = 0;
    char *out = buf[slot++ % 8];
    snprintf(out, 4096, "%s/%s", dir, name);
    return out;
}

int tu_write_bytes(const char *path, const void *bytes, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(bytes, 1, n, f);
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

int tu_write_file(const char *path, const char *text) {
    return tu_write_bytes(path, text, strlen(text));
}

char *tu_read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += r;
        if (cap - len < 2) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) { free(buf); buf = NULL; }
            else buf = nb;
        }
    }
    fclose(f);
    if (!buf) return NULL;
    buf[len] = '\0';
    if (n) *n = len;
    return buf;
}

int tu_same_bytes(const char *a, const char *b) {
    size_t na = 0, nb = 0;
    char *x = tu_read_file(a, &na), *y = tu_read_file(b, &nb);
    int same = x && y && na == nb && !memcmp(x, y, na);
    free(x);
    free(y);
    return same;
}

int tu_run_cli(const char *args, char **out, char **errout) {
    const char *bin = getenv("NBS_BIN");
    if (!bin || !*bin) bin = "./nbsphere";
    char *dir = tu_tmpdir();
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "%s %s >'%s/out' 2>'%s/err' </dev/null", bin, args, dir, dir);
    int st = system(cmd);
    if (out) *out = tu_read_file(tu_path(dir, "out"), NULL);
    if (errout) *errout = tu_read_file(tu_path(dir, "err"), NULL);
    tu_rmtree(dir);
    free(dir);
    if (st == -1 || !WIFEXITED(st)) return -1;
    return WEXITSTATUS(st);
}

int tu_count_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

void tu_expect_same_matrix(const nbs_matrix *a, const nbs_matrix *b) {
    assert_int_equal(a->n_cells, b->n_cells);
    assert_int_equal(a->n_genes, b->n_genes);
    assert_int_equal(a->nnz, b->nnz);
    assert_memory_equal(a->indptr, b->indptr, (size_t)(a->n_cells + 1) * sizeof *a->indptr);
    assert_memory_equal(a->indices, b->indices, (size_t)a->nnz * sizeof *a->indices);
    assert_memory_equal(a->data, b->data, (size_t)a->nnz * sizeof *a->data);
    for (int64_t c = 0; c < a->n_cells; c++) assert_string_equal(a->barcodes[c], b->barcodes[c]);
    for (int64_t g = 0; g < a->n_genes; g++) {
        assert_string_equal(a->gene_names[g], b->gene_names[g]);
        assert_string_equal(a->gene_ids[g], b->gene_ids[g]);
    }
}

char *tu_run_kang(const char *pipeline, const char *dir, const char *name, const char *extra) {
    char args[8192], path[4096], data[2048], labels[2048];
    snprintf(data, sizeof data, "%s", tu_data("kang_muscat"));
    snprintf(labels, sizeof labels, "%s", tu_data("kang_muscat/cell_labels.tsv"));
    snprintf(args, sizeof args, "run pipelines/%s --out %s/%s --set input.path=%s --set input.labels_path=%s %s",
             pipeline, dir, name, data, labels, extra);
    char *errout = NULL;
    int rc = tu_run_cli(args, NULL, &errout);
    if (rc) fail_msg("nbsphere %s: exit %d\n%s", args, rc, errout ? errout : "");
    const char *knn = errout ? strstr(errout, "15-NN accuracy") : NULL;
    const char *eol = knn ? strchr(knn, '\n') : NULL;
    print_message("%s: %.*s\n", name, knn ? (int)(eol ? eol - knn : (long)strlen(knn)) : 0, knn ? knn : "");
    free(errout);
    snprintf(path, sizeof path, "%s/%s/collapse_report.json", dir, name);
    char *json = tu_read_file(path, NULL);
    assert_non_null(json);
    return json;
}

double tu_json_number(const char *json, const char *key) {
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(json, pat);
    if (!p) fail_msg("%s not in the report", key);
    return atof(p + strlen(pat));
}

nbs_cells tu_cells(const nbs_matrix *X) {
    double *lib = malloc(sizeof(double) * (size_t)(X->n_cells ? X->n_cells : 1));
    assert_non_null(lib);
    nbs_matrix_row_sums(X, lib);
    return nbs_cells_all(X, lib);
}

void tu_cells_free(nbs_cells *c) {
    free((void *)c->library);
    c->library = NULL;
}

nbs_workspace *tu_workspace(const nbs_model *m, const nbs_matrix *X, int max_batch) {
    nbs_error err = {0};
    nbs_workspace *w = nbs_workspace_new(m, max_batch, nbs_matrix_max_batch_nnz(X, max_batch), &err);
    assert_non_null(w);
    return w;
}
