/* What a count matrix holds, as `nbsphere inspect` reports it: shape, sparsity, the range of
 * the counts, library-size quantiles, empty cells and genes, and how the file's layout was
 * read. */
#ifndef NBSPHERE_INSPECT_H
#define NBSPHERE_INSPECT_H

#include <stdint.h>

#include "nbsphere/config.h"
#include "nbsphere/matrix.h"

typedef struct {
    double density;             /* nonzeros / (cells x genes) */
    double count_min, count_max; /* over the stored (nonzero) entries; 0 when there are none */
    double library[7];          /* library size (counts per cell): min, 5 %, 25 %, median, 75 %, 95 %, max */
    int64_t empty_cells, empty_genes; /* without any count */
    const char *orientation;    /* how a file of format f and orientation o is laid out, in words */
} nbs_inspect_stats;

/* The statistics of m, read from a file of format f with orientation o (input.orientation). */
int nbs_inspect_matrix(const nbs_matrix *m, nbs_format f, nbs_orientation o, nbs_inspect_stats *s,
                       nbs_error *err);

#endif
