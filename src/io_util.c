/* Temporary-name-then-rename: a failed or interrupted write never leaves half a file and never
 * replaces a good one. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "nbsphere/io.h"

void nbs_io_tmp_name(const char *path, char *tmp) {
    snprintf(tmp, NBS_PATH_MAX, "%s.tmp.%ld", path, (long)getpid());
}

int nbs_io_commit(const char *tmp, const char *path, nbs_error *err) {
    if (rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        return nbs_error_set(err, NBS_ERR_IO, "%s: cannot move the finished file into place: %s",
                             path, strerror(e));
    }
    return NBS_OK;
}
