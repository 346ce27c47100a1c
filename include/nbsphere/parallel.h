/* Data-parallel training over MPI (OpenMPI; built with `make MPI=1`, absent otherwise). Every
 * process of `mpirun -np N nbsphere train|run ...` loads the same data and model; in training each
 * takes its share of every global minibatch (N x train.batch_size cells), and the processes meet
 * twice per step through the reduce hooks of nbs_train (train.h): the batch's sums after the
 * forward, the gradient block and batch-norm statistics after the backward. Out of core
 * (input.backed) each process reads only its rows, and two more hooks sum the preprocessing
 * statistics and gather the embedding at process 0; the same two combine the diagnostics, which
 * each process computes on its part of the diagnosed cells. Process 0 alone writes logs, checkpoints and
 * outputs (docs/design.md "Data-parallel training"). */
#ifndef NBSPHERE_PARALLEL_H
#define NBSPHERE_PARALLEL_H

#include "nbsphere/error.h"
#include "nbsphere/train.h"

/* MPI_Init for the process (main thread only calls MPI; OpenMP threads compute inside a step),
 * with errors returned rather than fatal, so that each collective's failure becomes a message.
 * Not started by mpirun (no launcher in the environment), MPI is not started at all: one process,
 * rank 0 of 1, and abort and finalize do nothing. */
int nbs_parallel_init(int *argc, char ***argv, nbs_error *err);
int nbs_parallel_rank(void);
int nbs_parallel_size(void);
/* The hooks over every process (MPI_COMM_WORLD), with this process's rank and their number. */
nbs_train_reduce nbs_parallel_reduce(void);
/* Ends every process of the job with the exit code (after a failure on this one). */
void nbs_parallel_abort(int code);
void nbs_parallel_finalize(void);

#endif
