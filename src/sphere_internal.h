/* Pieces shared by bessel.c and sphere.c, not part of the public API. */
#ifndef NBSPHERE_SPHERE_INTERNAL_H
#define NBSPHERE_SPHERE_INTERNAL_H

#include "nbsphere/error.h"

/* GSL's default error handler aborts the process; library code must return a status instead.
 * Every entry point that calls GSL special functions or quadrature calls this first. */
void nbs_sphere_gsl_init(void);

/* sum_{k>=1} t_k of the power series I_nu(x) = (x/2)^nu / Gamma(nu + 1) * (1 + sum t_k), in
 * the region where nbs_bessel_use_series() holds. Kept apart from the leading 1 so that
 * log1p() of it is exact as x -> 0 (the vMF KL is kappa^2 / (2d) there). */
double nbs_bessel_series_tail(double nu, double x);
int nbs_bessel_use_series(double nu, double x);

/* Perron's continued fraction for A_d(kappa): A, 1 - A and dKL/dkappa, all without
 * cancellation (see bessel.c). */
int nbs_vmf_ratio_parts(int d, double kappa, double *a, double *one_minus_a, double *dkl);

#endif
