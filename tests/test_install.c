/* Installation: `make install-only` (make install without the build step, on the folder under
 * test, NBS_BUILD) into a DESTDIR with PREFIX=/usr; a small C program is compiled and linked
 * against the installed tree with pkg-config, shared and static, and reads the example data
 * through the public io API; the man page is installed, renders, and names every command and
 * option of the --help texts; make uninstall leaves no file behind. Nothing here depends on
 * the CPU: the program prints a shape. */
#include "testutil.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nbsphere/version.h"

/* The consumer program: what a user of the library writes first. */
static const char PROGRAM[] =
    "#include <stdio.h>\n"
    "#include <nbsphere/config.h>\n"
    "#include <nbsphere/io.h>\n"
    "int main(int argc, char **argv) {\n"
    "    nbs_config c;\n"
    "    nbs_config_defaults(&c);\n"
    "    snprintf(c.input.path, sizeof c.input.path, \"%s\", argc > 1 ? argv[1] : \"\");\n"
    "    nbs_matrix *m = NULL;\n"
    "    nbs_error err = {0};\n"
    "    if (nbs_io_read(&c.input, &m, &err)) { fprintf(stderr, \"%s\\n\", err.msg); return 1; }\n"
    "    printf(\"%lld cells x %lld genes\\n\", (long long)m->n_cells, (long long)m->n_genes);\n"
    "    nbs_matrix_free(m);\n"
    "    return 0;\n"
    "}\n";

static char root[4096]; /* the repository (tests run from its root, as make test does) */
static char *work;      /* temporary folder: dest/ is the DESTDIR */
static char dest[4200];

static const char *env_or(const char *name, const char *fallback) {
    const char *v = getenv(name);
    return v && *v ? v : fallback;
}

/* Runs a shell command; returns its exit status and its stdout + stderr (malloc'd). */
static int run(const char *cmd, char **out) {
    char full[20000];
    snprintf(full, sizeof full, "( %s ) >'%s/cmd.out' 2>&1", cmd, work);
    int st = system(full);
    char *text = tu_read_file(tu_path(work, "cmd.out"), NULL);
    if (out) *out = text;
    else free(text);
    return st == -1 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Like run, but fails the test (printing the command and its output) unless it succeeds. */
static char *run_ok(const char *cmd) {
    char *out = NULL;
    int st = run(cmd, &out);
    if (st != 0) {
        print_message("command failed (status %d): %s\n%s\n", st, cmd, out ? out : "");
        free(out);
        fail();
    }
    return out;
}

/* make in the repository with none of the calling make's settings (MAKEFLAGS would pass its
 * command-line variables and jobserver on): the folder and flags under test are named. */
static void make_in_root(const char *target) {
    char cmd[12000];
    snprintf(cmd, sizeof cmd,
             "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -C '%s' %s BUILD='%s' CC='%s' SANITIZE='%s' "
             "DESTDIR='%s' PREFIX=/usr",
             root, target, env_or("NBS_BUILD", "build"), env_or("NBS_CC", "cc"), env_or("NBS_SANITIZE", ""), dest);
    free(run_ok(cmd));
}

static int setup(void **state) {
    (void)state;
    if (!getcwd(root, sizeof root)) return -1;
    work = tu_tmpdir();
    if (!work) return -1;
    snprintf(dest, sizeof dest, "%s/dest", work);
    make_in_root("install-only");
    return 0;
}

static int teardown(void **state) {
    (void)state;
    tu_rmtree(work);
    free(work);
    return 0;
}

static void expect_file(const char *rel) {
    char p[4400];
    snprintf(p, sizeof p, "%s%s", dest, rel);
    struct stat st;
    if (lstat(p, &st) != 0) print_message("not installed: %s\n", p);
    assert_int_equal(lstat(p, &st), 0);
}

static void test_files_installed(void **state) {
    (void)state;
    const char *files[] = {"/usr/bin/nbsphere", "/usr/lib/libnbsphere.a", "/usr/lib/libnbsphere.so",
                           "/usr/lib/libnbsphere.so.0", ("/usr/lib/libnbsphere.so." NBS_VERSION),
                           "/usr/include/nbsphere/io.h", "/usr/include/nbsphere/manifest.h",
                           "/usr/include/nbsphere/version.h",
                           "/usr/lib/pkgconfig/nbsphere.pc", "/usr/share/man/man1/nbsphere.1"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) expect_file(files[i]);
    char *pc = tu_read_file(tu_path(dest, "usr/lib/pkgconfig/nbsphere.pc"), NULL);
    assert_non_null(pc);
    assert_non_null(strstr(pc, "prefix=/usr\n"));
    assert_non_null(strstr(pc, "Version: " NBS_VERSION "\n"));
    free(pc);
    /* the installed binary is the one built, and runs */
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "'%s/usr/bin/nbsphere' --version", dest);
    char *out = run_ok(cmd);
    assert_non_null(strstr(out, "nbsphere " NBS_VERSION));
    free(out);
}

/* Compiles the program against the installed tree (pkg-config flags as given) and runs it on
 * the example data. */
static void build_and_run(const char *name, const char *pkg_config, const char *edit) {
    tu_write_file(tu_path(work, "prog.c"), PROGRAM);
    const char *san = env_or("NBS_SANITIZE", "");
    char cmd[16000];
    snprintf(cmd, sizeof cmd,
             "flags=$(PKG_CONFIG_PATH='%s/usr/lib/pkgconfig' %s) && %s"
             "%s %s%s -o '%s/%s' '%s/prog.c' $flags",
             dest, pkg_config, edit, env_or("NBS_CC", "cc"), *san ? "-fsanitize=" : "", san, work, name, work);
    free(run_ok(cmd));
    snprintf(cmd, sizeof cmd, "LD_LIBRARY_PATH='%s/usr/lib' '%s/%s' '%s/example_data/sim_mtx'", dest, work, name,
             root);
    char *out = run_ok(cmd);
    assert_non_null(strstr(out, "2000 cells x 1000 genes"));
    free(out);
}

static void test_link_shared(void **state) {
    (void)state;
    char pc[4400];
    snprintf(pc, sizeof pc, "PKG_CONFIG_SYSROOT_DIR='%s' pkg-config --cflags --libs nbsphere", dest);
    build_and_run("prog_shared", pc, "");
    /* linked by soname, and against the installed copy */
    char cmd[8800];
    snprintf(cmd, sizeof cmd, "readelf -d '%s/prog_shared'", work);
    char *out = NULL;
    if (run(cmd, &out) == 0) assert_non_null(strstr(out, "[libnbsphere.so.0]"));
    free(out);
    snprintf(cmd, sizeof cmd, "LD_LIBRARY_PATH='%s/usr/lib' ldd '%s/prog_shared'", dest, work);
    out = NULL;
    if (run(cmd, &out) == 0) {
        char want[4400];
        snprintf(want, sizeof want, "%s/usr/lib/libnbsphere.so.0", dest);
        assert_non_null(strstr(out, want));
    }
    free(out);
}

/* Static: Requires.private and Libs.private must be enough. The sysroot would also be put in
 * front of the system packages' -L paths, so the installed tree is named by its prefix instead
 * (libdir is ${prefix}/lib), and -lnbsphere is made to take the archive. */
static void test_link_static(void **state) {
    (void)state;
    char pc[4400];
    snprintf(pc, sizeof pc, "pkg-config --define-variable=prefix='%s/usr' --static --cflags --libs nbsphere", dest);
    build_and_run("prog_static", pc, "flags=$(printf '%s' \"$flags\" | sed 's/-lnbsphere\\b/-l:libnbsphere.a/') && ");
    char cmd[8800];
    snprintf(cmd, sizeof cmd, "readelf -d '%s/prog_static'", work);
    char *out = NULL;
    if (run(cmd, &out) == 0) assert_null(strstr(out, "libnbsphere.so"));
    free(out);
}

/* Man text without roff escapes: "\-\-out" -> "--out", font changes dropped. */
static char *plain_man(const char *path) {
    char *t = tu_read_file(path, NULL);
    assert_non_null(t);
    char *w = t;
    for (const char *r = t; *r;) {
        if (r[0] == '\\' && r[1] == '-') w[0] = '-', w++, r += 2;
        else if (r[0] == '\\' && r[1] == 'f' && r[2]) r += 3;
        else if (r[0] == '\\' && (r[1] == '&' || r[1] == '%')) r += 2;
        else *w++ = *r++;
    }
    *w = '\0';
    return t;
}

/* Every --option of a help text must appear in the man text. */
static void expect_options(const char *help, const char *man, const char *cmd) {
    for (const char *p = strstr(help, "--"); p; p = strstr(p + 2, "--")) {
        size_t n = 2;
        while ((p[n] >= 'a' && p[n] <= 'z') || (p[n] >= '0' && p[n] <= '9') || p[n] == '-') n++;
        if (n == 2) continue;
        char opt[64];
        snprintf(opt, sizeof opt, "%.*s", (int)(n < 63 ? n : 63), p);
        if (!strstr(man, opt)) {
            print_message("the man page lacks %s of 'nbsphere %s --help'\n", opt, cmd);
            fail();
        }
    }
}

static void test_man_page(void **state) {
    (void)state;
    const char *page = tu_path(dest, "usr/share/man/man1/nbsphere.1");
    char cmd[8800];
    /* renders without a warning where groff is installed (man -l uses it) */
    if (run("command -v groff", NULL) == 0) {
        snprintf(cmd, sizeof cmd, "groff -man -Tutf8 -ww -z '%s'", page);
        char *out = run_ok(cmd);
        if (*out) print_message("groff warns:\n%s\n", out);
        assert_string_equal(out, "");
        free(out);
    }
    char *man = plain_man(page);
    assert_non_null(strstr(man, "\"nbsphere " NBS_VERSION "\""));
    const char *bin = env_or("NBS_BIN", "./nbsphere");
    snprintf(cmd, sizeof cmd, "'%s' --help", bin);
    char *help = run_ok(cmd);
    expect_options(help, man, "");
    /* the commands: the lines between "Commands:" and the next blank line */
    const char *list = strstr(help, "Commands:\n");
    assert_non_null(list);
    int n_cmds = 0;
    for (const char *l = strchr(list, '\n') + 1; *l == ' '; l = strchr(l, '\n') + 1) {
        char name[32];
        if (sscanf(l, " %31s", name) != 1) break;
        char heading[64];
        snprintf(heading, sizeof heading, ".SS \"nbsphere %s ", name);
        if (!strstr(man, heading)) print_message("the man page has no section for '%s'\n", name);
        assert_non_null(strstr(man, heading));
        snprintf(cmd, sizeof cmd, "'%s' %s --help", bin, name);
        char *sub = run_ok(cmd);
        expect_options(sub, man, name);
        free(sub);
        n_cmds++;
    }
    assert_true(n_cmds >= 6);
    /* and no section for a command that is gone */
    for (const char *s = strstr(man, ".SS \"nbsphere "); s; s = strstr(s + 1, ".SS \"nbsphere ")) {
        char name[32], line[40];
        sscanf(s + strlen(".SS \"nbsphere "), "%31[a-z]", name);
        snprintf(line, sizeof line, "\n  %s ", name);
        if (!strstr(list, line)) print_message("the man page describes '%s', which --help does not list\n", name);
        assert_non_null(strstr(list, line));
    }
    free(help);
    free(man);
}

static int count_files(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)ftw;
    if (flag != FTW_D && flag != FTW_DP) {
        print_message("left after uninstall: %s\n", p);
        return 1;
    }
    return 0;
}

/* Last: removes what the others use. */
static void test_uninstall(void **state) {
    (void)state;
    make_in_root("uninstall");
    assert_int_equal(nftw(dest, count_files, 16, FTW_PHYS), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_files_installed), cmocka_unit_test(test_link_shared),
        cmocka_unit_test(test_link_static),     cmocka_unit_test(test_man_page),
        cmocka_unit_test(test_uninstall),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
