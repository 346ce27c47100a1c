/* libFuzzer harness: dense TSV/CSV tables through nbs_io_read. The first byte picks the
 * delimiter and the orientation; the rest is the file. */
#include "fuzz_util.h"
#include "nbsphere/io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    nbs_log_set_handler(fuzz_quiet_log, NULL);
    nbs_input_config in = {0};
    int csv = data[0] & 1;
    snprintf(in.path, sizeof in.path, "%s", fuzz_file(data + 1, size - 1, csv ? ".csv" : ".tsv"));
    in.format = csv ? NBS_FMT_CSV : NBS_FMT_TSV;
    in.orientation = (nbs_orientation)((data[0] >> 1) % 3);
    in.non_integer = (data[0] & 8) ? NBS_NONINT_ROUND : NBS_NONINT_ERROR;
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    int rc = nbs_io_read(&in, &m, &err);
    fuzz_check_error(rc, &err);
    if (!rc) {
        for (int64_t k = 0; k < m->nnz; k++)
            if (!(m->data[k] >= 0) || m->indices[k] < 0 || m->indices[k] >= m->n_genes) abort();
    }
    nbs_matrix_free(m);
    return 0;
}
