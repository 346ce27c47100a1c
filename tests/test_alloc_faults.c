/* Allocation failures: the `run` path (pipeline load -> output check -> load -> preprocess ->
 * train -> diagnose -> write, nbs_pipeline_load + nbs_run as main.c calls them) on a tiny input,
 * with the N-th allocation failing, for every N from 1 until a run makes fewer than N
 * allocations. Each failing run must return NBS_ERR_NOMEM (exit 6) with an "out of memory"
 * message, not crash, leak nothing (LeakSanitizer under SANITIZE=address, the tracker below
 * otherwise), leave no HDF5 object open and no temporary file, and leave only whole files:
 * what the reference run wrote, byte for byte where the run is deterministic, a loadable
 * model or checkpoint, a manifest that says "failed".
 *
 * The Makefile links this binary with -Wl,--wrap for the allocating calls the library makes
 * (libc: malloc, calloc, realloc, strdup, strndup, open_memstream, hcreate_r; GSL: the *_alloc
 * constructors the library calls; libyaml: parser initialisation and document loading), so
 * the references in libnbsphere.a and this file go through the counting wrappers while HDF5,
 * OpenBLAS, GSL, zlib and libyaml keep their internal allocations. Each N runs in a forked
 * child, so the exit status is the real one and a crash is caught. */
#include "testutil.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <execinfo.h>
#include <gsl/gsl_eigen.h>
#include <gsl/gsl_errno.h>
#include <gsl/gsl_integration.h>
#include <gsl/gsl_matrix.h>
#include <gsl/gsl_rng.h>
#include <gsl/gsl_vector.h>
#include <hdf5.h>
#include <limits.h>
#include <search.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <yaml.h>
#include <zlib.h>

#include "nbsphere/checkpoint.h"
#include "nbsphere/io.h"
#include "nbsphere/manifest.h"
#include "nbsphere/pipeline.h"
#include "nbsphere/progress.h"
#include "nbsphere/run.h"
#include "nbsphere/train.h"

/* ---- the injector ---- */

#define TRACE_DEPTH 12

/* Shared with the parent (MAP_SHARED), so a child can say how many allocations it made and
 * where the one it failed was called from. */
typedef struct {
    long count;   /* allocation calls while armed */
    long fail_at; /* 1-based index of the call to fail; 0 = none */
    int injected;
    int shrink; /* the failed call was a realloc to a smaller size */
    char what[64];
    void *trace[TRACE_DEPTH];
    int depth;
} shared_state;

static shared_state *sh;
static volatile int armed;

/* 1 if this allocation call is the one to fail. */
static int inject(const char *what, size_t size) {
    if (!armed) return 0;
    long k = __atomic_add_fetch(&sh->count, 1, __ATOMIC_RELAXED);
    if (k != sh->fail_at) return 0;
    sh->injected = 1;
    snprintf(sh->what, sizeof sh->what, "%s(%zu)", what, size);
    sh->depth = backtrace(sh->trace, TRACE_DEPTH);
    errno = ENOMEM;
    return 1;
}

/* Live allocations made while armed, so a leak is caught without LeakSanitizer too: an
 * open-addressing set of pointers (tombstones on removal), big enough for this input. */
#define LIVE_BITS 15 /* this input makes under 1000 allocations; a small table keeps each child quick */
#define LIVE_CAP (1 << LIVE_BITS)
#define TOMB ((void *)1)
static void *live[LIVE_CAP];
static size_t live_size[LIVE_CAP];
static void *live_caller[LIVE_CAP];
static long n_live, n_live_used;
static int live_overflow;
static volatile int live_lock;

static size_t slot_of(const void *p) { return ((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ULL >> (64 - LIVE_BITS); }

static void lock(void) {
    while (__atomic_test_and_set(&live_lock, __ATOMIC_ACQUIRE))
        ;
}
static void unlock(void) { __atomic_clear(&live_lock, __ATOMIC_RELEASE); }

static void track(void *p, size_t size, void *caller) {
    if (!p || !armed) return;
    lock();
    if (n_live_used >= LIVE_CAP / 2) {
        live_overflow = 1;
    } else {
        size_t i = slot_of(p);
        while (live[i] && live[i] != TOMB) i = (i + 1) & (LIVE_CAP - 1);
        if (!live[i]) n_live_used++;
        live[i] = p;
        live_size[i] = size;
        live_caller[i] = caller;
        n_live++;
    }
    unlock();
}

/* The size of a tracked block, 0 if unknown. */
static size_t tracked_size(const void *p) {
    size_t n = 0;
    lock();
    for (size_t i = slot_of(p); p && live[i]; i = (i + 1) & (LIVE_CAP - 1))
        if (live[i] == p) {
            n = live_size[i];
            break;
        }
    unlock();
    return n;
}

static void untrack(void *p) {
    if (!p || !n_live) return;
    lock();
    for (size_t i = slot_of(p); live[i]; i = (i + 1) & (LIVE_CAP - 1))
        if (live[i] == p) {
            live[i] = TOMB;
            n_live--;
            break;
        }
    unlock();
}

void *__real_malloc(size_t n);
void *__real_calloc(size_t c, size_t n);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
FILE *__real_open_memstream(char **buf, size_t *n);
int __real_hcreate_r(size_t n, struct hsearch_data *h);
gsl_rng *__real_gsl_rng_alloc(const gsl_rng_type *t);
gsl_vector *__real_gsl_vector_alloc(size_t n);
gsl_matrix *__real_gsl_matrix_alloc(size_t r, size_t c);
gsl_matrix *__real_gsl_matrix_calloc(size_t r, size_t c);
gsl_eigen_symmv_workspace *__real_gsl_eigen_symmv_alloc(size_t n);
gsl_integration_workspace *__real_gsl_integration_workspace_alloc(size_t n);
int __real_yaml_parser_initialize(yaml_parser_t *p);
int __real_yaml_parser_load(yaml_parser_t *p, yaml_document_t *d);

void *__wrap_malloc(size_t n) {
    if (inject("malloc", n)) return NULL;
    void *p = __real_malloc(n);
    track(p, n, __builtin_return_address(0));
    return p;
}

void *__wrap_calloc(size_t c, size_t n) {
    if (inject("calloc", c * n)) return NULL;
    void *p = __real_calloc(c, n);
    track(p, c * n, __builtin_return_address(0));
    return p;
}

void *__wrap_realloc(void *old, size_t n) {
    const size_t had = old && armed ? tracked_size(old) : 0;
    if (inject("realloc", n)) { /* the old block stays valid, as realloc leaves it */
        sh->shrink = n <= had;
        return NULL;
    }
    void *p = __real_realloc(old, n);
    if (p) {
        untrack(old);
        track(p, n, __builtin_return_address(0));
    }
    return p;
}

void __wrap_free(void *p) {
    untrack(p);
    __real_free(p);
}

char *__wrap_strdup(const char *s) {
    if (inject("strdup", strlen(s) + 1)) return NULL;
    char *p = __real_strdup(s);
    track(p, strlen(s) + 1, __builtin_return_address(0));
    return p;
}

char *__wrap_strndup(const char *s, size_t n) {
    if (inject("strndup", n)) return NULL;
    char *p = __real_strndup(s, n);
    track(p, n, __builtin_return_address(0));
    return p;
}

/* The stream's buffer is libc's own; the project frees it with free(), which passes through. */
FILE *__wrap_open_memstream(char **buf, size_t *n) {
    return inject("open_memstream", 0) ? NULL : __real_open_memstream(buf, n);
}

int __wrap_hcreate_r(size_t n, struct hsearch_data *h) {
    return inject("hcreate_r", n) ? 0 : __real_hcreate_r(n, h);
}

/* GSL reports a failed allocation through its error handler (the default one aborts) and
 * returns NULL; so does this. */
#define GSL_FAIL(name, size)                                                   \
    do {                                                                       \
        if (inject(name, size)) {                                              \
            gsl_error("failed to allocate (injected)", __FILE__, __LINE__, GSL_ENOMEM); \
            return NULL;                                                       \
        }                                                                      \
    } while (0)

gsl_rng *__wrap_gsl_rng_alloc(const gsl_rng_type *t) {
    GSL_FAIL("gsl_rng_alloc", t->size);
    return __real_gsl_rng_alloc(t);
}
gsl_vector *__wrap_gsl_vector_alloc(size_t n) {
    GSL_FAIL("gsl_vector_alloc", n);
    return __real_gsl_vector_alloc(n);
}
gsl_matrix *__wrap_gsl_matrix_alloc(size_t r, size_t c) {
    GSL_FAIL("gsl_matrix_alloc", r * c);
    return __real_gsl_matrix_alloc(r, c);
}
gsl_matrix *__wrap_gsl_matrix_calloc(size_t r, size_t c) {
    GSL_FAIL("gsl_matrix_calloc", r * c);
    return __real_gsl_matrix_calloc(r, c);
}
gsl_eigen_symmv_workspace *__wrap_gsl_eigen_symmv_alloc(size_t n) {
    GSL_FAIL("gsl_eigen_symmv_alloc", n);
    return __real_gsl_eigen_symmv_alloc(n);
}
gsl_integration_workspace *__wrap_gsl_integration_workspace_alloc(size_t n) {
    GSL_FAIL("gsl_integration_workspace_alloc", n);
    return __real_gsl_integration_workspace_alloc(n);
}

/* libyaml's own failures: a zeroed parser (or document) with error = YAML_MEMORY_ERROR. */
int __wrap_yaml_parser_initialize(yaml_parser_t *p) {
    if (inject("yaml_parser_initialize", sizeof *p)) {
        memset(p, 0, sizeof *p);
        p->error = YAML_MEMORY_ERROR;
        return 0;
    }
    return __real_yaml_parser_initialize(p);
}
int __wrap_yaml_parser_load(yaml_parser_t *p, yaml_document_t *d) {
    if (inject("yaml_parser_load", sizeof *d)) {
        memset(d, 0, sizeof *d);
        p->error = YAML_MEMORY_ERROR;
        return 0;
    }
    return __real_yaml_parser_load(p, d);
}

/* "function at file:line" of a code address (addr2line for this binary), else object+offset. */
static void describe(void *addr, char *buf, size_t n) {
    Dl_info info;
    if (!dladdr(addr, &info) || !info.dli_fname) {
        snprintf(buf, n, "%p\n", addr);
        return;
    }
    unsigned long off = (unsigned long)((char *)addr - (char *)info.dli_fbase);
    char cmd[PATH_MAX + 96];
    snprintf(cmd, sizeof cmd, "addr2line -f -i -p -e '%s' %#lx 2>/dev/null", info.dli_fname, off - 1);
    FILE *a = strstr(info.dli_fname, ".so") ? NULL : popen(cmd, "r");
    size_t got = a ? fread(buf, 1, n - 1, a) : 0;
    if (a) pclose(a);
    buf[got] = '\0';
    if (!got || strstr(buf, "??"))
        snprintf(buf, n, "%s+%#lx %s\n", info.dli_fname, off, info.dli_sname ? info.dli_sname : "");
}

/* ---- one run in a child ---- */

enum { EXIT_LEAK = 97, EXIT_H5_OPEN = 98 };

/* What main.c does for `nbsphere run PIPELINE --set model.encoder_layers=[8]` (a list override
 * is parsed as YAML), armed from the pipeline load on. */
static void child(const char *pipeline, long fail_at) {
    alarm(60); /* a hang fails the test instead of stalling it */
    nbs_progress *progress = nbs_progress_new(stderr, 1, 0);
    nbs_pipeline *p = malloc(sizeof *p);
    nbs_error err = {0};
    if (!p) _exit(127);
    sh->count = 0;
    sh->fail_at = fail_at;
    armed = 1;
    const char *sets[] = {"model.encoder_layers=[8]"};
    int st = nbs_pipeline_load(pipeline, sets, 1, NBS_PIPELINE_REQUIRE_INPUT, p, &err);
    if (!st) {
        nbs_run_options o = {"nbsphere run (test_alloc_faults)", progress, NULL, 0, 0, NULL, NULL, NULL};
        st = nbs_run(p, &o, &err);
    }
    armed = 0;
    if (st) fprintf(stderr, "nbsphere: error: %s\n", err.msg[0] ? err.msg : "(no message)");
    free(p);
    nbs_progress_free(progress);
    /* HDF5 keeps what it has open reachable, so LeakSanitizer would not see it */
    ssize_t open = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
    if (open > 0) {
        fprintf(stderr, "%zd HDF5 objects left open\n", open);
        fflush(NULL);
        _exit(EXIT_H5_OPEN);
    }
    long leaked = 0;
    for (size_t i = 0; i < LIVE_CAP; i++) {
        if (live[i] && live[i] != TOMB) leaked++; /* no cache outlives a run, failed or not */
    }
    if (leaked || live_overflow) {
        fprintf(stderr, "%ld allocations leaked%s:\n", leaked, live_overflow ? " (tracker overflowed)" : "");
        int shown = 0;
        for (size_t i = 0; i < LIVE_CAP && shown < 10; i++)
            if (live[i] && live[i] != TOMB) {
                char where[1024];
                armed = 0;
                describe(live_caller[i], where, sizeof where);
                fprintf(stderr, "  %zu bytes from %s", live_size[i], where);
                shown++;
            }
        fflush(NULL);
        _exit(EXIT_LEAK);
    }
    fflush(NULL);
    exit(st); /* exit, not _exit: LeakSanitizer checks at exit (and then exits with 1) */
}

typedef struct {
    int status; /* exit status, or -signal */
    long count;
    int injected, shrink;
    double seconds;
} outcome;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static outcome run_child(const char *pipeline, long fail_at, const char *log_dir, const char *tmp_dir) {
    sh->count = sh->injected = sh->shrink = 0;
    sh->what[0] = '\0';
    sh->depth = 0;
    double t0 = now();
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* cmocka catches these to report a failed test; here a crash must end the process */
        const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
        for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) signal(sigs[i], SIG_DFL);
        if (!freopen(tu_path(log_dir, "stdout"), "w", stdout) || !freopen(tu_path(log_dir, "stderr"), "w", stderr))
            _exit(127);
        setenv("TMPDIR", tmp_dir, 1); /* where gunzipped copies go: must be empty afterwards */
        child(pipeline, fail_at);
    }
    int ws;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR)
        ;
    outcome o = {WIFEXITED(ws) ? WEXITSTATUS(ws) : -WTERMSIG(ws), sh->count, sh->injected, sh->shrink, now() - t0};
    return o;
}

/* ---- what a failed run may leave ---- */

/* Files whose bytes do not depend on timing: a failed run's copy must equal the reference. */
static int deterministic(const char *name) {
    return strcmp(name, "manifest.json") && strcmp(name, "model.h5") && strcmp(name, "checkpoint.h5") &&
           strcmp(name, "training_log.tsv");
}

static int count_char(const char *s, char c) {
    int n = 0;
    for (; *s; s++) n += *s == c;
    return n;
}

/* Empty string if `out` holds only what a failed run may leave (succeeded: what the reference
 * run left, all of it), else what is wrong. */
static void check_outputs(const char *out, const char *ref, int succeeded, char *why, size_t n) {
    why[0] = '\0';
    DIR *d = succeeded ? opendir(ref) : NULL;
    for (struct dirent *e; d && (e = readdir(d)) && !why[0];)
        if (e->d_name[0] != '.' && !tu_exists(tu_path(out, e->d_name)))
            snprintf(why, n, "the run succeeded without writing %s", e->d_name);
    if (d) closedir(d);
    d = opendir(out);
    if (!d) return; /* failed before the output folder was made */
    struct dirent *e;
    while ((e = readdir(d)) && !why[0]) {
        const char *name = e->d_name;
        if (!strcmp(name, ".") || !strcmp(name, "..")) continue;
        char path[PATH_MAX], want[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", out, name);
        snprintf(want, sizeof want, "%s/%s", ref, name);
        if (strstr(name, ".tmp")) {
            snprintf(why, n, "temporary file %s left", name);
        } else if (!strcmp(name, "checkpoint.h5") || !strcmp(name, "model.h5")) {
            /* the last checkpoint stays for --resume; either file must load */
            nbs_checkpoint ck;
            nbs_error err = {0};
            if (nbs_checkpoint_load(path, &ck, &err)) snprintf(why, n, "%s does not load: %s", name, err.msg);
            else nbs_checkpoint_free(&ck);
        } else if (!tu_exists(want)) {
            snprintf(why, n, "%s left, which a successful run does not write", name);
        } else if (deterministic(name)) {
            if (!tu_same_bytes(path, want)) snprintf(why, n, "%s differs from the reference run's", name);
        } else if (!strcmp(name, "manifest.json")) {
            char *t = tu_read_file(path, NULL);
            size_t len = t ? strlen(t) : 0;
            if (!t || !strstr(t, succeeded ? "\"status\": \"ok\"" : "\"status\": \"failed\"") || len < 2 ||
                strcmp(t + len - 2, "}\n"))
                snprintf(why, n, "manifest.json is not a whole manifest of a %s run", succeeded ? "successful" : "failed");
            free(t);
        } else if (!strcmp(name, "training_log.tsv")) {
            /* whole lines, each with the reference's columns, no more epochs than it has */
            char *t = tu_read_file(path, NULL), *r = tu_read_file(want, NULL);
            int ok = t && r && (!*t || t[strlen(t) - 1] == '\n');
            int fields = r ? count_char(strtok(r, "\n"), '\t') : -1, lines = 0;
            for (char *line = ok ? strtok(t, "\n") : NULL; line && ok; line = strtok(NULL, "\n"), lines++)
                ok = count_char(line, '\t') == fields;
            if (!ok || lines > 1 + 2) snprintf(why, n, "training_log.tsv is cut short or malformed");
            free(t);
            free(r);
        }
    }
    closedir(d);
}

/* ---- the test ---- */

/* 60 cells x 40 genes with labels, 20 HVGs, 2 epochs, a checkpoint and the tracked diagnostics
 * every epoch, the label score: every stage and every output, in ~40 ms. The input section,
 * extra preprocessing and the latent come from the case. */
static const char PIPELINE[] =
    "input:\n"
    "%s"
    "preprocess:\n"
    "  n_top_genes: 20\n"
    "%s"
    "model:\n"
    "  latent: %s\n"
    "  latent_dim: 3\n"
    "  encoder_layers: [8]\n"
    "  decoder_layers: [8]\n"
    "train:\n"
    "  epochs: 2\n"
    "  batch_size: 16\n"
    "  warmup_epochs: 2\n"
    "  threads: 1\n"
    "  checkpoint_every: 1\n"
    "diagnose:\n"
    "  interval: 1\n"
    "output:\n"
    "  dir: out\n";

/* print_message holds 1024 bytes: a long text goes in pieces. */
static void print_long(const char *text) {
    for (size_t len = strlen(text), at = 0; at < len; at += 900) print_message("%.900s", text + at);
    print_message("\n");
}

/* Writes src gzip-compressed to dst; 0 on success. */
static int gzip_file(const char *src, const char *dst) {
    size_t n = 0;
    char *bytes = tu_read_file(src, &n);
    gzFile g = bytes ? gzopen(dst, "wb") : NULL;
    int ok = g && gzwrite(g, bytes, (unsigned)n) == (int)n;
    if (g && gzclose(g) != Z_OK) ok = 0;
    free(bytes);
    return ok ? 0 : -1;
}

/* Where the failed call came from. */
static void print_trace(void) {
    print_message("  the failed call: %s, from:\n", sh->what);
    for (int i = 1; i < sh->depth; i++) {
        char where[1024];
        describe(sh->trace[i], where, sizeof where);
        print_message("    %s", where);
        if (strstr(where, "every_allocation_fails_cleanly")) break; /* the rest is cmocka */
    }
}

static void every_allocation_fails_cleanly(const char *input, const char *preprocess, const char *latent) {
    char *dir = tu_tmpdir();
    assert_non_null(dir);
    char args[PATH_MAX + 128], pipeline[PATH_MAX], out[PATH_MAX], ref[PATH_MAX], logs[PATH_MAX], tmp[PATH_MAX];
    snprintf(args, sizeof args, "--quiet simulate --out '%s/sim' --cells 60 --genes 40 --branches 2 --seed 1 "
             "--format mtx,h5ad", dir);
    assert_int_equal(tu_run_cli(args, NULL, NULL), 0);
    snprintf(pipeline, sizeof pipeline, "%s/sim/sim.h5ad", dir);
    snprintf(out, sizeof out, "%s/sim/sim.h5ad.gz", dir);
    assert_int_equal(gzip_file(pipeline, out), 0);
    snprintf(pipeline, sizeof pipeline, "%s/p.yaml", dir);
    char text[sizeof PIPELINE + 256];
    snprintf(text, sizeof text, PIPELINE, input, preprocess, latent);
    assert_int_equal(tu_write_file(pipeline, text), 0);
    snprintf(out, sizeof out, "%s/out", dir);
    snprintf(ref, sizeof ref, "%s/ref", dir);
    snprintf(logs, sizeof logs, "%s/logs", dir);
    snprintf(tmp, sizeof tmp, "%s/tmp", dir);
    assert_int_equal(mkdir(logs, 0777), 0);
    assert_int_equal(mkdir(tmp, 0777), 0);

    /* the reference: no failure; its allocation count is the number of cases */
    outcome o = run_child(pipeline, 0, logs, tmp);
    if (o.status) {
        char *e = tu_read_file(tu_path(logs, "stderr"), NULL);
        print_message("the run without failures: exit %d\n%s\n", o.status, e ? e : "");
        free(e);
    }
    assert_int_equal(o.status, 0);
    const long total = o.count;
    assert_true(total > 0);
    assert_int_equal(rename(out, ref), 0);
    print_message("%s latent: %ld allocations in the run (%.3f s); failing each in turn\n", latent, total,
                  o.seconds);

    double t0 = now();
    int manifests = 0, absorbed = 0;
    for (long n = 1; n <= total + 1; n++) {
        tu_rmtree(out);
        o = run_child(pipeline, n, logs, tmp);
        char *e = tu_read_file(tu_path(logs, "stderr"), NULL);
        const char *msg = e ? e : "";
        char why[PATH_MAX + 256] = "";
        if (n == total + 1) { /* nothing failed: the run is the reference again */
            if (o.injected || o.status) snprintf(why, sizeof why, "exit %d without an injected failure", o.status);
        } else if (!o.injected) {
            snprintf(why, sizeof why, "only %ld allocations this time (the count is not deterministic)", o.count);
        } else if (o.status == 0 && o.shrink) {
            /* A realloc that only trims a block may fail harmlessly: the block stays valid and
             * large enough, and the code keeps it (nbs_matrix_take_triplets trims the arrays it
             * adopts). Then nothing may differ from the reference run. */
            check_outputs(out, ref, 1, why, sizeof why);
            absorbed++;
        } else if (o.status != NBS_ERR_NOMEM) {
            snprintf(why, sizeof why, "exit %d, not %d (out of memory)%s", o.status, NBS_ERR_NOMEM,
                     strstr(msg, "LeakSanitizer") ? ": LeakSanitizer found a leak"
                     : strstr(msg, "Sanitizer") ? ": a sanitizer stopped it"
                     : o.status == EXIT_LEAK ? ": a leak" : o.status == EXIT_H5_OPEN ? ": HDF5 objects left open"
                     : o.status == -SIGALRM ? ": hung (killed after 60 s)" : o.status < 0 ? ": a crash" : "");
        } else if (!strstr(msg, "nbsphere: error: ") || !strstr(msg, "out of memory")) {
            snprintf(why, sizeof why, "no 'out of memory' error message");
        } else {
            check_outputs(out, ref, 0, why, sizeof why);
            if (!why[0] && tu_count_files(tmp)) snprintf(why, sizeof why, "a temporary file left in TMPDIR");
            manifests += tu_exists(tu_path(out, "manifest.json"));
        }
        if (why[0]) {
            print_message("%s latent, allocation %ld of %ld failed: %s\n", latent, n, total, why);
            if (o.injected) print_trace();
            /* a sanitizer's report from its start, else the end of the run's messages */
            const char *report = strstr(msg, "=================");
            size_t len = strlen(msg);
            print_message("  stderr%s:\n", report ? " from the sanitizer's report" : " (end)");
            print_long(report ? report : len > 1500 ? msg + len - 1500 : msg);
        }
        free(e);
        assert_string_equal(why, "");
    }
    /* most failures happen after the manifest exists: a failed run says so in it */
    print_message("%s latent: %ld failing runs in %.1f s: %d left a manifest saying \"failed\", %d trimming reallocs "
                  "failed harmlessly\n", latent, total, now() - t0, manifests, absorbed);
    assert_true(manifests > total / 2);
    tu_rmtree(dir);
    free(dir);
}

/* A gzipped 10x folder and a labels table, which holds the covariates too (the branch as the
 * batch, pseudotime as a continuous one); a new .h5ad is written, with them in obs. */
static void test_gaussian_run(void **state) {
    (void)state;
    every_allocation_fails_cleanly("  path: sim/sim_mtx\n  labels_path: sim/cell_labels.tsv\n  label_column: branch\n"
                                   "  batch_key: branch\n  continuous_covariates: [pseudotime]\n",
                                   "", "gaussian");
}

/* A gzipped .h5ad (inflated into TMPDIR) with its labels in obs, some cells filtered out, so
 * that embedding.h5ad is a subset copy of it; the sphere's sampler and its gradients. */
static void test_vmf_h5ad_run(void **state) {
    (void)state;
    every_allocation_fails_cleanly("  path: sim/sim.h5ad.gz\n  label_column: branch\n", "  min_counts: 300\n", "vmf");
}

/* A training step allocates nothing: the workspace holds every buffer a step needs, from the
 * first step on (the Gaussian and both spheres, whose samplers and quadratures take their
 * scratch from the workspace too, and a model with covariates in every layer they can enter and
 * a per-batch dispersion, one-hot and as learned embeddings), and so does an evaluation pass. */
static void test_training_step_allocates_nothing(void **state) {
    (void)state;
    nbs_error err = {0};
    nbs_matrix *X = NULL;
    assert_int_equal(nbs_io_read_10x_mtx_dir("example_data/sim_mtx", &X, &err), 0);
    nbs_cells all = tu_cells(X);
    int32_t *codes = malloc(sizeof *codes * (size_t)X->n_cells * 2);
    float *continuous = malloc(sizeof *continuous * (size_t)X->n_cells);
    assert_true(codes && continuous);
    for (int64_t i = 0; i < X->n_cells; i++) {
        codes[2 * i] = (int32_t)(i % 3);
        codes[2 * i + 1] = (int32_t)(i % 2);
        continuous[i] = (float)(i % 7) - 3;
    }
    const nbs_covariate_layout layout = {2, {3, 2}, 1, 1};
    int64_t rows[64];
    for (int i = 0; i < 64; i++) rows[i] = (i * 37) % X->n_cells;
    nbs_cells batch = all;
    batch.rows = rows;
    batch.n = 64;
    const nbs_latent_kind kinds[5] = {NBS_LATENT_GAUSSIAN, NBS_LATENT_GAUSSIAN, NBS_LATENT_VMF,
                                      NBS_LATENT_POWER_SPHERICAL, NBS_LATENT_GAUSSIAN};
    for (int k = 0; k < 5; k++) {
        nbs_config c;
        nbs_config_defaults(&c);
        c.model.latent = kinds[k];
        c.model.latent_dim = k == 3 ? 40 : 10; /* 40: a wide sphere */
        c.model.encoder_layers[0] = c.model.decoder_layers[0] = 32;
        c.model.norm = NBS_NORM_BATCH;
        const int with_covariates = k == 1 || k == 4;
        if (k == 4) c.model.covariate_embedding = NBS_COVARIATE_EMBEDDING;
        if (with_covariates) {
            c.model.n_decoder_layers = 2;
            c.model.decoder_layers[1] = 16;
            c.model.encode_covariates = 1;
            c.model.dispersion = NBS_DISP_GENE_BATCH;
            batch.covariate_codes = codes;
            batch.n_categorical = 2;
            batch.continuous = continuous;
            batch.n_continuous = 1;
        } else {
            batch = all;
            batch.rows = rows;
            batch.n = 64;
        }
        gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
        nbs_model *m = nbs_model_new(&c.model, (int)X->n_genes, with_covariates ? &layout : NULL, r, &err);
        assert_non_null(m);
        nbs_workspace *w = tu_workspace(m, X, 64);
        nbs_step_result sr;
        double recon, kl[NBS_MAX_KL_TERMS];
        sh->count = 0;
        sh->fail_at = 0;
        armed = 1;
        long steps = 0, evals = 0;
        for (int step = 0; step < 3; step++) steps += nbs_train_step(m, w, &batch, &c.train, 0.5, r, NULL, &sr, &err) == 0;
        evals += nbs_model_forward(m, w, &batch, NBS_PASS_EVAL_SAMPLE, r, &recon, kl, &err) == 0;
        armed = 0;
        print_message("%s latent%s: %ld steps and %ld evaluation passes made %ld allocations\n",
                      nbs_latent_word(kinds[k]),
                      with_covariates ? (k == 4 ? " with covariates (embeddings)" : " with covariates") : "", steps,
                      evals, sh->count);
        assert_int_equal(steps, 3);
        assert_int_equal(evals, 1);
        assert_int_equal(sh->count, 0);
        nbs_workspace_free(w);
        nbs_model_free(m);
        gsl_rng_free(r);
    }
    free(codes);
    free(continuous);
    tu_cells_free(&all);
    nbs_matrix_free(X);
}

static int setup(void **state) {
    (void)state;
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) return -1;
    void *warm[2];
    backtrace(warm, 2); /* loads the unwinder now, not inside an allocation */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    /* the checksum library initialises itself on first use; once here instead of in every child */
    char hex[65];
    int64_t size;
    nbs_sha256_file("/proc/self/exe", hex, &size, NULL);
    return 0;
}

#if defined __SANITIZE_ADDRESS__
#define UNDER_ASAN 1
#elif defined __has_feature
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

/* Settings that must be in the environment before the libraries load; the test restarts itself
 * once with them. AddressSanitizer's 256 MB quarantine of freed blocks makes every child fault in
 * fresh pages: 1 MB halved the test's time (it still catches a leak, a double free, a use right
 * after a free). OpenBLAS's variables are left as the machine has them, as in every test. */
static void restart_with_settings(char **argv) {
    if (getenv("NBS_ALLOC_FAULTS_RESTARTED")) return;
    int restart = 0;
#ifdef UNDER_ASAN
    const char *a = getenv("ASAN_OPTIONS");
    if (!a || !strstr(a, "quarantine_size_mb")) {
        char opts[4096];
        snprintf(opts, sizeof opts, "%s%squarantine_size_mb=1", a ? a : "", a && *a ? ":" : "");
        restart |= !setenv("ASAN_OPTIONS", opts, 1);
    }
#endif
    if (restart && !setenv("NBS_ALLOC_FAULTS_RESTARTED", "1", 1)) execv("/proc/self/exe", argv);
}

int main(int argc, char **argv) {
    (void)argc;
    restart_with_settings(argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_training_step_allocates_nothing),
        cmocka_unit_test(test_gaussian_run),
        cmocka_unit_test(test_vmf_h5ad_run),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
