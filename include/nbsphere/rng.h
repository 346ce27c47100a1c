/* Random streams. Every random draw of a run comes from a stream named by its purpose and
 * derived from the one seed the user gives (train.seed):
 *
 *   stream seed = fold32(mix(mix(mix(mix(seed) ^ purpose) ^ index) ^ process))
 *
 * with mix the SplitMix64 finaliser (a bijection of 64-bit words that spreads every input bit
 * over the output) and fold32 the xor of the two 32-bit halves, since GSL's MT19937 keeps 32
 * bits of its seed. index numbers the streams of one purpose (the validation pass of epoch e
 * uses index e, the diagnosis at epoch e index e); process is the rank of a data-parallel run
 * (0 alone; a data-parallel run's sphere samples, which its processes cannot share, come from
 * NBS_STREAM_TRAIN index step + 1 and NBS_STREAM_VALIDATION index epoch with process rank + 1). Distinct (purpose, index, process) give unrelated generators, so no two purposes
 * share draws, and a stream does not depend on how many draws another made. The simulator
 * (nbsphere simulate --seed) is a program of its own and seeds its one generator directly. */
#ifndef NBSPHERE_RNG_H
#define NBSPHERE_RNG_H

#include <gsl/gsl_rng.h>
#include <stdint.h>

#include "nbsphere/error.h"

typedef enum {
    NBS_STREAM_INIT = 1,      /* model initialisation */
    NBS_STREAM_TRAIN,         /* minibatch order, dropout masks, latent samples (checkpointed) */
    NBS_STREAM_SPLIT,         /* the validation cells */
    NBS_STREAM_VALIDATION,    /* the validation ELBO's samples, index = epoch */
    NBS_STREAM_DIAG_CELLS,    /* which cells the diagnostics measure */
    NBS_STREAM_DIAGNOSE,      /* the diagnostics' own draws, index = epoch (0: the final one) */
    NBS_STREAM_EVALUATE,      /* the k-NN score's folds and the PCA next to it */
    NBS_STREAM_LEIDEN,        /* Leiden clustering of the integration metrics, index = resolution step */
    NBS_STREAM_ADAPT,         /* embed --adapt: the new categories' initial weights */
    NBS_STREAM_CLUSTERS,      /* the trajectory stage's Leiden clusters */
    NBS_STREAM_DIFFMAP,       /* the diffusion map eigensolver's start vectors, index = restart */
    NBS_STREAM_LAYOUT,        /* the trajectory stage's force-directed layout */
    NBS_STREAM_REFERENCE,     /* the wrap-around diagnostic's PCA of the counts */
    NBS_STREAM_KNN            /* the approximate k-NN search's k-means++ centres (FLANN's srand) */
} nbs_stream;

uint64_t nbs_stream_seed(uint64_t seed, nbs_stream purpose, uint64_t index, uint64_t process);
/* An MT19937 generator seeded for the stream; NULL with err set when out of memory. */
gsl_rng *nbs_stream_rng(uint64_t seed, nbs_stream purpose, uint64_t index, nbs_error *err);
/* Re-seeds r for the stream (one generator reused across epochs). */
void nbs_stream_set(gsl_rng *r, uint64_t seed, nbs_stream purpose, uint64_t index);

#endif
