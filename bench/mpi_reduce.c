/* The cost of one training step's reductions under MPI, measured apart from training: calls the
 * hooks of src/parallel.c (nbs_parallel_reduce: the batch's sums, then the gradient block and the
 * batch-norm statistics, each a reduce to process 0 and a broadcast) REPS times on buffers of the
 * model's sizes, and for comparison an MPI_Allreduce of the same gradient block (OpenMPI chooses
 * its algorithm: ring or recursive doubling). Waiting for a slower process, which a training step
 * adds, is not in these numbers: the processes start each repetition together (barrier).
 *
 *   mpirun -np N build-mpi/mpi_reduce N_PARAMS N_STATE [REPS]
 *
 * Prints one line on process 0: processes, n_params, bytes of the gradient, reps, and the mean
 * seconds per step of the hooks (sums + grads) and of the all-reduce. Built by bench/scale.sh
 * against build-mpi/libnbsphere.a. */
#include "nbsphere/parallel.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    nbs_error err = {0};
    if (nbs_parallel_init(&argc, &argv, &err)) {
        fprintf(stderr, "mpi_reduce: %s\n", err.msg);
        return 1;
    }
    int started = 0;
    MPI_Initialized(&started);
    if (!started) { /* nbs_parallel_init starts MPI only under a launcher */
        fprintf(stderr, "mpi_reduce: run under mpirun\n");
        return 2;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: mpirun -np N mpi_reduce N_PARAMS N_STATE [REPS]\n");
        nbs_parallel_finalize();
        return 2;
    }
    const int64_t n_params = atoll(argv[1]), n_state = atoll(argv[2]);
    const int reps = argc > 3 ? atoi(argv[3]) : 200;
    if (n_params <= 0 || n_state < 0 || reps <= 0) {
        fprintf(stderr, "mpi_reduce: N_PARAMS > 0, N_STATE >= 0 and REPS > 0 expected\n");
        nbs_parallel_finalize();
        return 2;
    }
    const nbs_train_reduce hooks = nbs_parallel_reduce();
    float *grads = malloc(sizeof(float) * (size_t)n_params);              /* [n_params] */
    float *state = malloc(sizeof(float) * (size_t)(n_state ? n_state : 1)); /* [n_state] */
    if (!grads || !state) {
        fprintf(stderr, "mpi_reduce: out of memory\n");
        nbs_parallel_abort(6);
        return 6;
    }
    for (int64_t k = 0; k < n_params; k++) grads[k] = 1e-3f * (float)(k % 97);
    for (int64_t k = 0; k < n_state; k++) state[k] = 1.0f;
    double kl[2] = {1.0, 2.0}, recon = 3.0;
    int64_t n_cells = 64;

    double t_hooks = 0, t_all = 0;
    int st = 0;
    /* two warm-up repetitions (connection set-up, first-touch of the buffers), then REPS timed */
    for (int r = -2; r < reps && !st; r++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        st = hooks.sums(NULL, &recon, kl, 2, &n_cells, &err);
        if (!st) st = hooks.grads(NULL, grads, n_params, state, n_state, &err);
        double t1 = MPI_Wtime();
        MPI_Barrier(MPI_COMM_WORLD);
        double t2 = MPI_Wtime();
        if (!st) st = MPI_Allreduce(MPI_IN_PLACE, grads, (int)n_params, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        double t3 = MPI_Wtime();
        if (r >= 0) t_hooks += t1 - t0, t_all += t3 - t2;
        /* keep the values bounded: the sums grow by N each time */
        for (int64_t k = 0; k < n_params; k++) grads[k] = 1e-3f * (float)(k % 97);
        recon = 3.0, kl[0] = 1.0, kl[1] = 2.0, n_cells = 64;
    }
    if (st) {
        fprintf(stderr, "mpi_reduce: %s\n", err.msg[0] ? err.msg : "MPI_Allreduce failed");
        nbs_parallel_abort(st);
        return st;
    }
    /* the slowest process's time is the step's */
    double mine[2] = {t_hooks, t_all}, worst[2];
    MPI_Reduce(mine, worst, 2, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (nbs_parallel_rank() == 0)
        printf("processes %d n_params %lld bytes %lld reps %d reduce_bcast_s %.6e allreduce_s %.6e\n",
               nbs_parallel_size(), (long long)n_params, (long long)(4 * n_params), reps, worst[0] / reps,
               worst[1] / reps);
    free(grads);
    free(state);
    nbs_parallel_finalize();
    return 0;
}
