#include "nbsphere/inspect.h"

#include <gsl/gsl_statistics_double.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static const char *orientation_text(nbs_format f, nbs_orientation o) {
    switch (f) {
    case NBS_FMT_10X_H5: return "genes x cells in the file (10x CSC), read as cells x genes";
    case NBS_FMT_10X_MTX: return "genes x cells in the file (10x layout), read as cells x genes";
    case NBS_FMT_MTX:
        return o == NBS_ORIENT_CELLS_ROWS ? "cells x genes in the file (as asked)"
                                          : "genes x cells in the file (10x layout), read as cells x genes";
    case NBS_FMT_TSV:
    case NBS_FMT_CSV:
        return o == NBS_ORIENT_CELLS_ROWS   ? "cells x genes in the file (as asked)"
               : o == NBS_ORIENT_GENES_ROWS ? "genes x cells in the file (as asked), read as cells x genes"
                                            : "rows taken as genes if there are more columns than rows (see the "
                                              "warning; --orientation to choose)";
    default: return "cells x genes";
    }
}

int nbs_inspect_matrix(const nbs_matrix *m, nbs_format f, nbs_orientation o, nbs_inspect_stats *s,
                       nbs_error *err) {
    static const double probs[7] = {0, 0.05, 0.25, 0.5, 0.75, 0.95, 1};
    double *lib = nbs_malloc(sizeof(double) * (size_t)(m->n_cells ? m->n_cells : 1), err);
    char *seen = nbs_calloc((size_t)(m->n_genes ? m->n_genes : 1), 1, err);
    if (!lib || !seen) {
        free(lib);
        free(seen);
        return NBS_ERR_NOMEM;
    }
    memset(s, 0, sizeof *s);
    s->density = (double)m->nnz / ((double)m->n_cells * (double)m->n_genes);
    s->count_min = m->nnz ? m->data[0] : 0;
    s->count_max = s->count_min;
    for (int64_t k = 0; k < m->nnz; k++) {
        if (m->data[k] < s->count_min) s->count_min = m->data[k];
        if (m->data[k] > s->count_max) s->count_max = m->data[k];
        seen[m->indices[k]] = 1;
    }
    nbs_matrix_row_sums(m, lib);
    for (int64_t i = 0; i < m->n_cells; i++) s->empty_cells += m->indptr[i + 1] == m->indptr[i];
    for (int64_t g = 0; g < m->n_genes; g++) s->empty_genes += !seen[g];
    qsort(lib, (size_t)m->n_cells, sizeof *lib, cmp_double);
    for (int j = 0; j < 7 && m->n_cells; j++)
        s->library[j] = gsl_stats_quantile_from_sorted_data(lib, 1, (size_t)m->n_cells, probs[j]);
    s->orientation = orientation_text(f, o);
    free(lib);
    free(seen);
    return NBS_OK;
}
