/* Faults: a training run killed with SIGKILL and resumed from its last checkpoint ends where an
 * uninterrupted run ends; writes that fail (a full disk, simulated with RLIMIT_FSIZE) report an
 * I/O error and never replace the good file already there. */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "nbsphere/io.h"

static const char *bin(void) {
    const char *b = getenv("NBS_BIN");
    return b && *b ? b : "./nbsphere";
}

/* Small but not trivial: 200 genes of the example data, a checkpoint every epoch. */
#define TRAIN_ARGS "--seed", "5", "--epochs", "8", "--set", "train.checkpoint_every=1", "--set", \
                   "preprocess.n_top_genes=200", "--set", "diagnose.interval=0", "--set", "train.threads=1"

/* Highest epoch number in a training_log.tsv (0 if none yet). */
static int last_logged_epoch(const char *path) {
    char *t = tu_read_file(path, NULL);
    if (!t) return 0;
    int last = 0;
    for (char *line = strtok(t, "\n"); line; line = strtok(NULL, "\n")) {
        char *end;
        long e = strtol(line, &end, 10);
        if (end != line && e > last) last = (int)e;
    }
    free(t);
    return last;
}

/* fork + exec nbsphere with stdout/stderr to files in log_dir; returns the pid. */
static pid_t spawn(char *const argv[], const char *log_dir, rlim_t fsize_limit) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        FILE *o = freopen(tu_path(log_dir, "stdout"), "w", stdout);
        FILE *e = freopen(tu_path(log_dir, "stderr"), "w", stderr);
        if (!o || !e) _exit(127);
        if (fsize_limit) {
            /* a full disk: writes past the limit fail with EFBIG instead of killing the process */
            signal(SIGXFSZ, SIG_IGN);
            struct rlimit r = {fsize_limit, fsize_limit};
            setrlimit(RLIMIT_FSIZE, &r);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static int wait_exit(pid_t pid) {
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
}

/* Files in dir named like a temporary ("<name>.tmp.<pid>"). */
static int count_temporaries(const char *dir) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

/* A pid that no process has: a child that has exited and been reaped. */
static long dead_pid(void) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) _exit(0);
    waitpid(pid, NULL, 0);
    return (long)pid;
}

/* Temporaries of outputs left by a process that is gone are removed when the next run starts in
 * the folder; those of a live process, and files that are not nbsphere's, stay. */
static void test_stale_temporaries_removed(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char out[PATH_MAX], name[PATH_MAX], b[PATH_MAX];
    snprintf(out, sizeof out, "%s", tu_path(dir, "out"));
    assert_int_equal(mkdir(out, 0755), 0);
    const long dead = dead_pid();
    const char *stale[] = {"checkpoint.h5", "model.h5", "embedding.h5ad"};
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "%s.tmp.%ld", stale[i], dead);
        assert_int_equal(tu_write_file(tu_path(out, name), "half a file"), 0);
    }
    snprintf(name, sizeof name, "model.h5.tmp.%ld", (long)getpid()); /* a writer that still runs */
    assert_int_equal(tu_write_file(tu_path(out, name), "in progress"), 0);
    snprintf(name, sizeof name, "notes.txt.tmp.%ld", dead); /* not an output of nbsphere */
    assert_int_equal(tu_write_file(tu_path(out, name), "the user's"), 0);
    snprintf(b, sizeof b, "%s", bin());
    char *args[] = {b, "train", "example_data/sim_mtx", "--out", out, "--seed", "1", "--epochs", "1",
                    "--set", "preprocess.n_top_genes=100", "--set", "diagnose.interval=0", NULL};
    assert_int_equal(wait_exit(spawn(args, dir, 0)), 0);
    char *msg = tu_read_file(tu_path(dir, "stderr"), NULL);
    assert_non_null(msg);
    assert_non_null(strstr(msg, "removed 3 temporary files left by an interrupted run"));
    free(msg);
    assert_int_equal(count_temporaries(out), 2);
    snprintf(name, sizeof name, "model.h5.tmp.%ld", (long)getpid());
    assert_true(tu_exists(tu_path(out, name)));
    snprintf(name, sizeof name, "notes.txt.tmp.%ld", dead);
    assert_true(tu_exists(tu_path(out, name)));
    tu_rmtree(dir);
    free(dir);
}

static void test_kill_and_resume(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char full[PATH_MAX], part[PATH_MAX], b[PATH_MAX];
    snprintf(full, sizeof full, "%s", tu_path(dir, "full"));
    snprintf(part, sizeof part, "%s", tu_path(dir, "part"));
    snprintf(b, sizeof b, "%s", bin());
    char *args_full[] = {b, "--quiet", "train", "example_data/sim_mtx", "--out", full, TRAIN_ARGS, NULL};
    assert_int_equal(wait_exit(spawn(args_full, dir, 0)), 0);

    char *args_part[] = {b, "--quiet", "train", "example_data/sim_mtx", "--out", part, TRAIN_ARGS, NULL};
    pid_t pid = spawn(args_part, dir, 0);
    char ckpt[PATH_MAX], log[PATH_MAX];
    snprintf(ckpt, sizeof ckpt, "%s/checkpoint.h5", part);
    snprintf(log, sizeof log, "%s/training_log.tsv", part);
    struct timespec pause = {0, 5 * 1000 * 1000};
    int waited = 0;
    while (!(tu_exists(ckpt) && last_logged_epoch(log) >= 2) && waited < 60000) {
        nanosleep(&pause, NULL);
        waited += 5;
    }
    assert_true(waited < 60000);
    kill(pid, SIGKILL);
    int rc = wait_exit(pid);
    if (rc != -SIGKILL) print_message("the run ended (exit %d) before it could be killed\n", rc);
    assert_int_equal(rc, -SIGKILL);
    assert_false(tu_exists(tu_path(part, "embedding.tsv")));
    int killed_at = last_logged_epoch(log);
    assert_true(killed_at >= 2 && killed_at < 8);

    char *args_resume[] = {b, "train", "--resume", ckpt, NULL};
    assert_int_equal(wait_exit(spawn(args_resume, dir, 0)), 0);
    char *msg = tu_read_file(tu_path(dir, "stderr"), NULL);
    assert_non_null(msg);
    assert_non_null(strstr(msg, "after epoch"));
    free(msg);
    char *a = tu_read_file(tu_path(full, "embedding.tsv"), NULL);
    char *r = tu_read_file(tu_path(part, "embedding.tsv"), NULL);
    assert_non_null(a);
    assert_non_null(r);
    assert_string_equal(a, r);
    assert_int_equal(last_logged_epoch(log), 8);
    assert_false(tu_exists(ckpt)); /* model.h5 replaces the periodic checkpoint */
    assert_int_equal(count_temporaries(part), 0); /* a write the kill cut short is swept on resume */
    free(a);
    free(r);
    tu_rmtree(dir);
    free(dir);
}

/* A full disk while writing the outputs of a second run over a finished one: exit 5 with a
 * message, no crash, and every earlier output file is still whole. */
static void test_full_disk_keeps_good_files(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char out[PATH_MAX], b[PATH_MAX];
    snprintf(out, sizeof out, "%s", tu_path(dir, "out"));
    snprintf(b, sizeof b, "%s", bin());
    char *args[] = {b, "--quiet", "train", "example_data/sim_mtx", "--out", out, "--seed", "1", "--epochs", "1",
                    "--set", "preprocess.n_top_genes=100", "--set", "diagnose.interval=0", NULL};
    assert_int_equal(wait_exit(spawn(args, dir, 0)), 0);
    static const char *const files[] = {"model.h5", "embedding.tsv", "embedding.h5ad"};
    char *before[3];
    size_t n_before[3];
    for (int i = 0; i < 3; i++) {
        before[i] = tu_read_file(tu_path(out, files[i]), &n_before[i]);
        assert_non_null(before[i]);
    }
    args[7] = "2"; /* another seed: different bytes, if anything were written */
    assert_int_equal(wait_exit(spawn(args, dir, 64 * 1024)), 5);
    char *msg = tu_read_file(tu_path(dir, "stderr"), NULL);
    assert_non_null(msg);
    assert_non_null(strstr(msg, "nbsphere: error: "));
    assert_non_null(strstr(msg, "disk full"));
    free(msg);
    for (int i = 0; i < 3; i++) {
        size_t n = 0;
        char *now = tu_read_file(tu_path(out, files[i]), &n);
        assert_non_null(now);
        assert_int_equal(n, n_before[i]);
        assert_memory_equal(now, before[i], n);
        free(now);
        free(before[i]);
    }
    /* and no temporary file was left behind */
    char cmd[PATH_MAX + 64];
    snprintf(cmd, sizeof cmd, "ls '%s' | grep -q '\\.tmp'", out);
    assert_int_not_equal(system(cmd), 0);
    tu_rmtree(dir);
    free(dir);
}

/* A disk with no room at all is found by the output probe, before the data are even loaded. */
static void test_no_room_reported_before_training(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char out[PATH_MAX], b[PATH_MAX];
    snprintf(out, sizeof out, "%s", tu_path(dir, "out"));
    snprintf(b, sizeof b, "%s", bin());
    char *args[] = {b, "train", "example_data/sim_mtx", "--out", out, "--epochs", "1", NULL};
    /* the limit holds for every regular file, so stderr goes through a pipe */
    int fd[2];
    assert_int_equal(pipe(fd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fd[0]);
        dup2(fd[1], 2);
        if (!freopen("/dev/null", "w", stdout)) _exit(127);
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit r = {1, 1};
        setrlimit(RLIMIT_FSIZE, &r);
        execv(args[0], args);
        _exit(127);
    }
    close(fd[1]);
    char msg[8192];
    size_t n = 0;
    ssize_t k;
    while (n < sizeof msg - 1 && (k = read(fd[0], msg + n, sizeof msg - 1 - n)) > 0) n += (size_t)k;
    msg[n] = '\0';
    close(fd[0]);
    assert_int_equal(wait_exit(pid), 5);
    assert_non_null(strstr(msg, "is not writable"));
    assert_null(strstr(msg, "train epoch"));
    assert_null(strstr(msg, "load:"));
    assert_false(tu_exists(tu_path(out, "model.h5")));
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill_and_resume),
        cmocka_unit_test(test_stale_temporaries_removed),
        cmocka_unit_test(test_full_disk_keeps_good_files),
        cmocka_unit_test(test_no_room_reported_before_training),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
