#include "nbsphere/rng.h"

/* SplitMix64's output function (Steele, Lea and Flood 2014). */
static uint64_t mix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t nbs_stream_seed(uint64_t seed, nbs_stream purpose, uint64_t index, uint64_t process) {
    const uint64_t h = mix(mix(mix(mix(seed) ^ (uint64_t)purpose) ^ index) ^ process);
    return (h ^ (h >> 32)) & 0xffffffffULL;
}

void nbs_stream_set(gsl_rng *r, uint64_t seed, nbs_stream purpose, uint64_t index) {
    gsl_rng_set(r, (unsigned long)nbs_stream_seed(seed, purpose, index, 0));
}

gsl_rng *nbs_stream_rng(uint64_t seed, nbs_stream purpose, uint64_t index, nbs_error *err) {
    gsl_rng *r = gsl_rng_alloc(gsl_rng_mt19937);
    if (!r) {
        nbs_error_set(err, NBS_ERR_NOMEM, "out of memory for the random generator");
        return NULL;
    }
    nbs_stream_set(r, seed, purpose, index);
    return r;
}
