#ifndef NBS_VECMATH_INTERNAL_H
#define NBS_VECMATH_INTERNAL_H
/* Vector variants of exp and log from glibc's libmvec (reached through -lm), declared as math.h
 * does only under -ffast-math, so that `omp simd` loops call them (within 4 ulp). One home for
 * the likelihood and for bench/vecmath_probe.c, which must time the variant the likelihood calls. */
#include <math.h>

#if defined __x86_64__ && defined __GLIBC__
#pragma omp declare simd notinbranch
extern double exp(double);
#pragma omp declare simd notinbranch
extern double log(double);
#endif

#endif
