/* Temporary-name-then-rename: a failed or interrupted write never leaves half a file and never
 * replaces a good one. Also the output folder's creation, the inflating of gzip-compressed
 * inputs into a temporary file and the in-memory HDF5 files of the writers. */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "io_h5_internal.h"
#include "io_internal.h"
#include "nbsphere/io.h"

void nbs_io_tmp_name(const char *path, char *tmp) {
    snprintf(tmp, NBS_PATH_MAX, "%s.tmp.%ld", path, (long)getpid());
}

static int commit(const char *tmp, const char *path, nbs_error *err) {
    if (rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        return nbs_error_set(err, NBS_ERR_IO, "%s: cannot move the finished file into place: %s",
                             path, strerror(e));
    }
    return NBS_OK;
}

int nbs_io_commit_or_discard(const char *tmp, const char *path, int status, nbs_error *err) {
    if (status == NBS_OK) return commit(tmp, path, err);
    remove(tmp);
    return status;
}

int nbs_io_atomic_open(const char *path, char *tmp, FILE **f, nbs_error *err) {
    nbs_io_tmp_name(path, tmp);
    *f = fopen(tmp, "wb");
    return *f ? NBS_OK : nbs_error_set(err, NBS_ERR_IO, "%s: cannot write: %s", tmp, strerror(errno));
}

int nbs_io_atomic_close(FILE *f, const char *tmp, const char *path, nbs_error *err) {
    int failed = ferror(f);
    failed |= fclose(f) != 0;
    return nbs_io_commit_or_discard(
        tmp, path, failed ? nbs_error_set(err, NBS_ERR_IO, "%s: write failed (disk full?)", path) : NBS_OK, err);
}

/* A "<name>.tmp.<pid>" whose writer no longer runs was left by a kill or a crash; one whose
 * process is alive (another nbsphere writing into the same folder) is not touched. */
int nbs_io_remove_stale_tmp(const char *dir, const char *const *names, int n_names) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int removed = 0;
    for (struct dirent *e; (e = readdir(d));) {
        for (int i = 0; i < n_names; i++) {
            const size_t len = strlen(names[i]);
            if (strncmp(e->d_name, names[i], len) || strncmp(e->d_name + len, ".tmp.", 5)) continue;
            char *end;
            const long pid = strtol(e->d_name + len + 5, &end, 10);
            if (*end || pid <= 0 || pid == (long)getpid() || !(kill((pid_t)pid, 0) < 0 && errno == ESRCH)) continue;
            char path[NBS_PATH_MAX];
            if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) < (int)sizeof path && !remove(path))
                removed++;
        }
    }
    closedir(d);
    return removed;
}

int nbs_io_make_writable_dir(const char *dir, char *failed) {
    char buf[NBS_PATH_MAX];
    snprintf(buf, sizeof buf, "%s", dir);
    for (char *s = buf + 1;; s++) {
        if (*s != '/' && *s != '\0') continue;
        const char keep = *s;
        *s = '\0';
        struct stat st;
        if ((mkdir(buf, 0777) != 0 && errno != EEXIST) || stat(buf, &st) != 0 || !S_ISDIR(st.st_mode)) {
            if (errno == EEXIST) errno = ENOTDIR; /* a file of that name */
            snprintf(failed, NBS_PATH_MAX, "%s", buf);
            return -1;
        }
        *s = keep;
        if (!keep) break;
    }
    char probe[NBS_PATH_MAX + 64];
    snprintf(probe, sizeof probe, "%s/.nbsphere_probe.%ld", dir, (long)getpid());
    FILE *f = fopen(probe, "wb");
    int ok = f && fputs("probe\n", f) >= 0;
    int e = errno;
    if (f && fclose(f) != 0) ok = 0, e = errno;
    remove(probe);
    errno = e;
    return ok ? 0 : -2;
}

int nbs_io_is_gzip(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    unsigned char b[2] = {0, 0};
    size_t n = fread(b, 1, 2, f);
    fclose(f);
    return n == 2 && b[0] == 0x1f && b[1] == 0x8b;
}

int nbs_io_gunzip_temp(const char *path, char *tmp, nbs_error *err) {
    if (!nbs_io_is_gzip(path)) return 0;
    const char *dir = getenv("TMPDIR"); /* the system temporary folder, as mkstemp users expect */
    snprintf(tmp, NBS_PATH_MAX, "%s/nbsphere-gunzip-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(tmp);
    if (fd < 0) {
        nbs_error_set(err, NBS_ERR_IO, "%s: cannot make a temporary file %s to decompress into: %s",
                      path, tmp, strerror(errno));
        return -1;
    }
    FILE *out = fdopen(fd, "wb");
    gzFile in = gzopen(path, "rb");
    char *buf = malloc(1 << 20);
    int rc = !buf ? -4 : (!out || !in) ? -1 : 0, n = 0; /* -4: our buffer, not the file */
    while (!rc && (n = gzread(in, buf, 1 << 20)) > 0)
        if (fwrite(buf, 1, (size_t)n, out) != (size_t)n) rc = -2;
    int zerr = Z_OK;
    if (!rc && in) gzerror(in, &zerr); /* a cut stream ends with n == 0 and Z_BUF_ERROR, not n < 0 */
    if (!rc && (n < 0 || (zerr != Z_OK && zerr != Z_STREAM_END))) rc = -3;
    free(buf);
    if (in) gzclose(in);
    if (out ? fclose(out) != 0 : close(fd) != 0) rc = rc ? rc : -2;
    if (rc) {
        remove(tmp);
        nbs_error_set(err, rc == -3 ? NBS_ERR_INPUT : rc == -4 ? NBS_ERR_NOMEM : NBS_ERR_IO,
                      rc == -3 ? "%s: the gzip stream is corrupt or truncated; re-download the file"
                      : rc == -4 ? "%s: out of memory for decompressing"
                      : rc == -2 ? "%s: cannot write the decompressed copy (disk full? set TMPDIR)"
                                 : "%s: cannot open for decompression", path);
        return -1;
    }
    return 1;
}

hid_t nbs_h5_create_in_memory(const char *tmp, hid_t fcpl) {
    FILE *probe = fopen(tmp, "wb");
    if (!probe) return -1;
    fclose(probe);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    /* grow by 4 MiB: few reallocations for large files, little waste for small ones */
    hid_t f = fapl < 0 || H5Pset_fapl_core(fapl, 4 << 20, 0) < 0 ? -1
            : H5Fcreate(tmp, H5F_ACC_TRUNC, fcpl, fapl);
    if (fapl >= 0) H5Pclose(fapl);
    if (f < 0) remove(tmp);
    return f;
}

int nbs_h5_close_to_file(hid_t f, const char *tmp, int bad) {
    void *image = NULL;
    ssize_t n = -1;
    if (!bad && H5Fflush(f, H5F_SCOPE_GLOBAL) >= 0 && (n = H5Fget_file_image(f, NULL, 0)) > 0 &&
        (image = malloc((size_t)n)) && H5Fget_file_image(f, image, (size_t)n) != n)
        n = -1;
    const int nomem = !bad && n > 0 && !image;
    if (H5Fclose(f) < 0) bad = 1; /* in memory: fails only on an HDF5 error, never on the disk */
    if (bad || n <= 0 || !image) {
        free(image);
        return nomem ? -2 : -1;
    }
    FILE *out = fopen(tmp, "wb");
    int ok = out && fwrite(image, 1, (size_t)n, out) == (size_t)n;
    if (out && fclose(out)) ok = 0;
    free(image);
    return ok ? 0 : -1;
}
