/* libFuzzer harness: Matrix Market files (plain or gzip) through nbs_io_read, which also runs
 * the value and name checks every caller relies on. */
#include "fuzz_util.h"
#include "nbsphere/io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    nbs_log_set_handler(fuzz_quiet_log, NULL);
    nbs_input_config in = {0};
    snprintf(in.path, sizeof in.path, "%s", fuzz_file(data, size, ".mtx"));
    in.format = NBS_FMT_MTX;
    in.orientation = size && (data[size - 1] & 1) ? NBS_ORIENT_CELLS_ROWS : NBS_ORIENT_AUTO;
    in.non_integer = NBS_NONINT_ERROR;
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    int rc = nbs_io_read(&in, &m, &err);
    fuzz_check_error(rc, &err);
    if (!rc && (!m || m->indptr[m->n_cells] != m->nnz)) abort();
    nbs_matrix_free(m);
    return 0;
}
