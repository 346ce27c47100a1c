#include "nbsphere/parallel.h"

#include <limits.h>
#include <mpi.h>
#include <stdlib.h>

static int g_rank, g_size = 1, g_started;

/* A collective's failure: which one, on which process, and MPI's reason. */
static int mpi_failed(nbs_error *err, const char *what, int rc) {
    char reason[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, reason, &len) != MPI_SUCCESS) len = 0;
    reason[len] = '\0';
    return nbs_error_set(err, NBS_ERR_IO, "MPI: %s failed on process %d of %d: %s; a peer process has "
                         "stopped or the network failed (see mpirun's message for which)", what, g_rank,
                         g_size, len ? reason : "unknown error");
}

/* Started by mpirun (OpenMPI sets OMPI_COMM_WORLD_SIZE, PMIx launchers PMIX_RANK, others PMI_SIZE). */
static int launched(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_SIZE");
}

int nbs_parallel_init(int *argc, char ***argv, nbs_error *err) {
    /* Run alone, the MPI build is the serial one: OpenMPI's singleton start-up would need its
     * runtime (and fails, e.g., under a file-size limit) for a job of one process */
    if (!launched()) return NBS_OK;
    g_started = 1;
    int provided;
    int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return nbs_error_set(err, NBS_ERR_IO, "MPI_Init failed (error %d): run under mpirun", rc);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    return NBS_OK;
}

int nbs_parallel_rank(void) { return g_rank; }
int nbs_parallel_size(void) { return g_size; }

/* The sum over the processes into buf on every one: reduced at process 0, then broadcast, so
 * that every process gets the same bits (an all-reduce may add in a different order on each,
 * and the processes' models would drift apart). */
static int sum_everywhere(void *buf, int count, MPI_Datatype type, const char *what, nbs_error *err) {
    int rc = MPI_Reduce(g_rank ? buf : MPI_IN_PLACE, g_rank ? NULL : buf, count, type, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rc == MPI_SUCCESS) rc = MPI_Bcast(buf, count, type, 0, MPI_COMM_WORLD);
    return rc == MPI_SUCCESS ? NBS_OK : mpi_failed(err, what, rc);
}

/* recon, the KL terms and the cell count of the step's batch in one message: (kl_terms + 2),
 * the count exact as a double below 2^53 cells. */
static int reduce_sums(void *user, double *recon, double *kl_sum, int kl_terms, int64_t *n_cells, nbs_error *err) {
    (void)user;
    double buf[NBS_MAX_KL_TERMS + 2];
    buf[0] = *recon;
    buf[1] = (double)*n_cells;
    for (int t = 0; t < kl_terms; t++) buf[2 + t] = kl_sum[t];
    int st = sum_everywhere(buf, kl_terms + 2, MPI_DOUBLE, "the sum of the batch's ELBO terms", err);
    if (st) return st;
    *recon = buf[0];
    *n_cells = (int64_t)buf[1];
    for (int t = 0; t < kl_terms; t++) kl_sum[t] = buf[2 + t];
    return NBS_OK;
}

/* The gradient (each process's already weighted by its cells over the global batch's) summed;
 * the batch-norm running statistics averaged. Messages of at most INT_MAX floats. */
static int reduce_grads(void *user, float *grads, int64_t n_params, float *state, int64_t n_state, nbs_error *err) {
    (void)user;
    const int64_t chunk = 1 << 30;
    for (int64_t o = 0; o < n_params; o += chunk) {
        int st = sum_everywhere(grads + o, (int)(n_params - o < chunk ? n_params - o : chunk), MPI_FLOAT,
                                "the gradient all-reduce", err);
        if (st) return st;
    }
    if (n_state > 0) {
        int st = sum_everywhere(state, (int)n_state, MPI_FLOAT, "the batch-norm statistics' all-reduce", err);
        if (st) return st;
        const float inv = 1.0f / (float)g_size;
        for (int64_t k = 0; k < n_state; k++) state[k] *= inv;
    }
    return NBS_OK;
}

/* Out of core: per-cell and per-gene statistics of each process's rows, in messages of at most
 * 2^27 doubles. */
static int reduce_doubles(void *user, double *buf, int64_t n, nbs_error *err) {
    (void)user;
    const int64_t chunk = 1 << 27;
    for (int64_t o = 0; o < n; o += chunk) {
        int st = sum_everywhere(buf + o, (int)(n - o < chunk ? n - o : chunk), MPI_DOUBLE,
                                "the sum of the out-of-core statistics", err);
        if (st) return st;
    }
    return NBS_OK;
}

/* Out of core: a block of the embedding (or its counts) from every process to process 0. */
static int gather_bytes(void *user, const void *send, const int64_t *bytes, void *recv, nbs_error *err) {
    (void)user;
    int *counts = malloc(sizeof *counts * (size_t)g_size), *displs = malloc(sizeof *displs * (size_t)g_size);
    if (!counts || !displs) {
        free(counts), free(displs);
        return nbs_error_set(err, NBS_ERR_NOMEM, "out of memory gathering the embedding at process 0");
    }
    int64_t total = 0;
    for (int r = 0; r < g_size; r++) {
        counts[r] = (int)bytes[r];
        displs[r] = (int)total;
        total += bytes[r];
    }
    int rc = MPI_SUCCESS;
    if (total > INT_MAX) rc = MPI_ERR_COUNT;
    else rc = MPI_Gatherv(send, counts[g_rank], MPI_BYTE, recv, counts, displs, MPI_BYTE, 0, MPI_COMM_WORLD);
    free(counts), free(displs);
    return rc == MPI_SUCCESS ? NBS_OK : mpi_failed(err, "the gather of the embedding at process 0", rc);
}

nbs_train_reduce nbs_parallel_reduce(void) {
    return (nbs_train_reduce){reduce_sums, reduce_grads, NULL, g_rank, g_size, reduce_doubles, gather_bytes};
}

void nbs_parallel_abort(int code) {
    if (g_started) MPI_Abort(MPI_COMM_WORLD, code ? code : 1);
}

void nbs_parallel_finalize(void) {
    if (g_started) MPI_Finalize();
}
