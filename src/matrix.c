#include "nbsphere/matrix.h"

#include <math.h>
#include <stdio.h>
#include <search.h>
#include <stdlib.h>
#include <string.h>

nbs_matrix *nbs_matrix_new(int64_t n_cells, int64_t n_genes, int64_t nnz, nbs_error *err) {
    if (n_cells < 0 || n_genes < 0 || nnz < 0 || n_genes > INT32_MAX) {
        nbs_error_set(err, NBS_ERR_INPUT, "invalid matrix shape %lld x %lld with %lld entries",
                      (long long)n_cells, (long long)n_genes, (long long)nnz);
        return NULL;
    }
    nbs_matrix *m = nbs_calloc(1, sizeof *m, err);
    if (!m) return NULL;
    m->n_cells = n_cells;
    m->n_genes = n_genes;
    m->nnz = nnz;
    m->values_are_integer = 1;
    m->indptr = nbs_calloc((size_t)n_cells + 1, sizeof *m->indptr, err);
    m->indices = nbs_malloc((size_t)nnz * sizeof *m->indices, err);
    m->data = nbs_malloc((size_t)nnz * sizeof *m->data, err);
    m->barcodes = nbs_calloc((size_t)n_cells, sizeof(char *), err);
    m->gene_ids = nbs_calloc((size_t)n_genes, sizeof(char *), err);
    m->gene_names = nbs_calloc((size_t)n_genes, sizeof(char *), err);
    if (!m->indptr || !m->indices || !m->data || !m->barcodes || !m->gene_ids || !m->gene_names) {
        nbs_matrix_free(m);
        nbs_error_set(err, NBS_ERR_NOMEM, "out of memory for a %lld x %lld matrix with %lld entries",
                      (long long)n_cells, (long long)n_genes, (long long)nnz);
        return NULL;
    }
    return m;
}

static void free_names(char **names, int64_t n) {
    if (!names) return;
    for (int64_t i = 0; i < n; i++) free(names[i]);
    free(names);
}

void nbs_matrix_free(nbs_matrix *m) {
    if (!m) return;
    free(m->indptr);
    free(m->indices);
    free(m->data);
    free_names(m->barcodes, m->n_cells);
    /* gene_ids may alias gene_names entry by entry when a source has no ids */
    if (m->gene_ids && m->gene_names)
        for (int64_t g = 0; g < m->n_genes; g++)
            if (m->gene_ids[g] == m->gene_names[g]) m->gene_ids[g] = NULL;
    free_names(m->gene_ids, m->n_genes);
    free_names(m->gene_names, m->n_genes);
    free(m);
}

static int check_view(const nbs_compressed_view *v, const char *what, nbs_error *err) {
    if (v->n_major < 0 || v->n_minor < 0 || v->nnz < 0)
        return nbs_error_set(err, NBS_ERR_INPUT, "%s: negative shape or entry count", what);
    if (v->indptr[0] != 0 || v->indptr[v->n_major] != v->nnz)
        return nbs_error_set(err, NBS_ERR_INPUT,
                             "%s: indptr must start at 0 and end at the number of entries (%lld), "
                             "found %lld and %lld",
                             what, (long long)v->nnz, (long long)v->indptr[0], (long long)v->indptr[v->n_major]);
    /* all offsets first: entries are only touched once every row is known to lie inside them */
    for (int64_t i = 0; i < v->n_major; i++)
        if (v->indptr[i + 1] < v->indptr[i])
            return nbs_error_set(err, NBS_ERR_INPUT, "%s: indptr decreases at position %lld (%lld > %lld)",
                                 what, (long long)i, (long long)v->indptr[i], (long long)v->indptr[i + 1]);
    for (int64_t k = 0; k < v->nnz; k++)
        if (v->indices[k] < 0 || v->indices[k] >= v->n_minor)
            return nbs_error_set(err, NBS_ERR_INPUT, "%s: index %lld%s at entry %lld is out of range [0, %lld)", what,
                                 (long long)v->indices[k],
                                 v->indices[k] == INT32_MAX ? " (or larger)" : v->indices[k] == INT32_MIN ? " (or smaller)" : "",
                                 (long long)k, (long long)v->n_minor);
    return NBS_OK;
}

/* Cell Ranger does not promise sorted indices within a column: sort each row (insertion sort:
 * rows are short and nearly always sorted already), then refuse duplicates. Frees m on failure. */
static nbs_matrix *sort_rows(nbs_matrix *m, const char *what, nbs_error *err) {
    for (int64_t c = 0; c < m->n_cells; c++) {
        for (int64_t k = m->indptr[c] + 1; k < m->indptr[c + 1]; k++) {
            int32_t g = m->indices[k];
            float x = m->data[k];
            int64_t j = k;
            for (; j > m->indptr[c] && m->indices[j - 1] > g; j--) {
                m->indices[j] = m->indices[j - 1];
                m->data[j] = m->data[j - 1];
            }
            m->indices[j] = g;
            m->data[j] = x;
        }
        for (int64_t k = m->indptr[c] + 1; k < m->indptr[c + 1]; k++)
            if (m->indices[k] == m->indices[k - 1]) {
                nbs_error_set(err, NBS_ERR_INPUT,
                              "%s: cell %lld has two entries for gene %d; each entry may appear once",
                              what, (long long)c + 1, m->indices[k] + 1);
                nbs_matrix_free(m);
                return NULL;
            }
    }
    return m;
}

nbs_matrix *nbs_matrix_from_compressed(const nbs_compressed_view *v, int major_is_cells,
                                       const char *what, nbs_error *err) {
    if (check_view(v, what, err)) return NULL;
    int64_t n_cells = major_is_cells ? v->n_major : v->n_minor;
    int64_t n_genes = major_is_cells ? v->n_minor : v->n_major;
    nbs_matrix *m = nbs_matrix_new(n_cells, n_genes, v->nnz, err);
    if (!m) return NULL;
    if (major_is_cells) {
        memcpy(m->indptr, v->indptr, (size_t)(n_cells + 1) * sizeof *m->indptr);
        if (v->nnz) { /* an empty matrix may come with NULL arrays, which memcpy must not see */
            memcpy(m->indices, v->indices, (size_t)v->nnz * sizeof *m->indices);
            memcpy(m->data, v->data, (size_t)v->nnz * sizeof *m->data);
        }
    } else {
        /* transpose: count entries per cell, then scatter gene by gene (keeps genes sorted) */
        for (int64_t k = 0; k < v->nnz; k++) m->indptr[v->indices[k] + 1]++;
        for (int64_t c = 0; c < n_cells; c++) m->indptr[c + 1] += m->indptr[c];
        int64_t *next = nbs_malloc((size_t)(n_cells + 1) * sizeof *next, err);
        if (!next) {
            nbs_matrix_free(m);
            return NULL;
        }
        memcpy(next, m->indptr, (size_t)(n_cells + 1) * sizeof *next);
        for (int64_t g = 0; g < n_genes; g++)
            for (int64_t k = v->indptr[g]; k < v->indptr[g + 1]; k++) {
                int64_t pos = next[v->indices[k]]++;
                m->indices[pos] = (int32_t)g;
                m->data[pos] = v->data[k];
            }
        free(next);
    }
    return sort_rows(m, what, err);
}

nbs_matrix *nbs_matrix_take_compressed(nbs_compressed_view *v, int major_is_cells, const char *what,
                                       nbs_error *err) {
    nbs_matrix *m = NULL;
    if (!major_is_cells || v->nnz == 0) {
        m = nbs_matrix_from_compressed(v, major_is_cells, what, err);
    } else if (!check_view(v, what, err) && (m = nbs_matrix_new(v->n_major, v->n_minor, 0, err))) {
        free(m->indptr);
        free(m->indices);
        free(m->data);
        m->indptr = v->indptr;
        m->indices = v->indices;
        m->data = v->data;
        m->nnz = v->nnz;
        v->indptr = NULL;
        v->indices = NULL;
        v->data = NULL;
        m = sort_rows(m, what, err);
    }
    free(v->indptr);
    free(v->indices);
    free(v->data);
    v->indptr = NULL;
    v->indices = NULL;
    v->data = NULL;
    return m;
}

typedef struct {
    int32_t gene;
    float value;
} row_entry;

static int cmp_row_entry(const void *a, const void *b) {
    const row_entry *x = a, *y = b;
    return (x->gene > y->gene) - (x->gene < y->gene);
}

/* 1-based source position of the k-th (0 or 1) nonzero entry at (c, g): only for messages. */
static int64_t source_of(const int32_t *cell, const int32_t *gene, const float *value, int64_t n,
                         int32_t c, int32_t g, int k) {
    for (int64_t i = 0; i < n; i++)
        if (cell[i] == c && gene[i] == g && value[i] != 0 && k-- == 0) return i + 1;
    return 0;
}

/* Counting sort by cell straight into the CSR arrays, then each row sorted by gene: no copy of
 * the entries beyond the matrix itself, which sets the peak memory of loading. */
nbs_matrix *nbs_matrix_from_triplets(int64_t n_cells, int64_t n_genes, int64_t n, const int32_t *cell,
                                     const int32_t *gene, const float *value, const char *what,
                                     nbs_error *err) {
    int64_t kept = 0;
    for (int64_t k = 0; k < n; k++) {
        if (cell[k] < 0 || cell[k] >= n_cells || gene[k] < 0 || gene[k] >= n_genes) {
            nbs_error_set(err, NBS_ERR_INPUT,
                          "%s: entry %lld at (cell %lld, gene %lld) is outside the %lld x %lld matrix",
                          what, (long long)(k + 1), (long long)cell[k] + 1, (long long)gene[k] + 1,
                          (long long)n_cells, (long long)n_genes);
            return NULL;
        }
        kept += value[k] != 0;
    }
    nbs_matrix *m = nbs_matrix_new(n_cells, n_genes, kept, err);
    int64_t *next = m ? nbs_malloc(sizeof(int64_t) * (size_t)(n_cells + 1), err) : NULL;
    if (!next) {
        nbs_matrix_free(m);
        return NULL;
    }
    for (int64_t k = 0; k < n; k++)
        if (value[k] != 0) m->indptr[cell[k] + 1]++;
    int64_t longest = 0;
    for (int64_t c = 0; c < n_cells; c++) {
        const int64_t len = m->indptr[c + 1];
        longest = len > longest ? len : longest;
        m->indptr[c + 1] += m->indptr[c];
    }
    memcpy(next, m->indptr, sizeof(int64_t) * (size_t)n_cells);
    for (int64_t k = 0; k < n; k++)
        if (value[k] != 0) {
            const int64_t p = next[cell[k]]++;
            m->indices[p] = gene[k];
            m->data[p] = value[k];
        }
    free(next);
    row_entry *row = nbs_malloc(sizeof(row_entry) * (size_t)(longest ? longest : 1), err);
    if (!row) {
        nbs_matrix_free(m);
        return NULL;
    }
    for (int64_t c = 0; c < n_cells; c++) {
        const int64_t p0 = m->indptr[c], len = m->indptr[c + 1] - p0;
        int sorted = 1;
        for (int64_t q = p0 + 1; q < p0 + len && sorted; q++) sorted = m->indices[q] > m->indices[q - 1];
        if (sorted) continue; /* the usual case: files list each cell's genes in order */
        for (int64_t q = 0; q < len; q++) row[q] = (row_entry){m->indices[p0 + q], m->data[p0 + q]};
        qsort(row, (size_t)len, sizeof *row, cmp_row_entry);
        for (int64_t q = 0; q < len; q++) {
            if (q && row[q].gene == row[q - 1].gene) {
                const int32_t g = row[q].gene;
                nbs_error_set(err, NBS_ERR_INPUT,
                              "%s: entries %lld and %lld both give (cell %lld, gene %lld); each entry "
                              "may appear once",
                              what, (long long)source_of(cell, gene, value, n, (int32_t)c, g, 0),
                              (long long)source_of(cell, gene, value, n, (int32_t)c, g, 1),
                              (long long)c + 1, (long long)g + 1);
                free(row);
                nbs_matrix_free(m);
                return NULL;
            }
            m->indices[p0 + q] = row[q].gene;
            m->data[p0 + q] = row[q].value;
        }
    }
    free(row);
    return m;
}

nbs_matrix *nbs_matrix_take_triplets(int64_t n_cells, int64_t n_genes, int64_t n, int32_t *cell, int32_t *gene,
                                     float *value, const char *what, nbs_error *err) {
    int ordered = 1; /* cell by cell, genes strictly increasing, all in range */
    for (int64_t k = 0; k < n && ordered; k++)
        ordered = cell[k] >= 0 && cell[k] < n_cells && gene[k] >= 0 && gene[k] < n_genes &&
                  (k == 0 || cell[k] > cell[k - 1] || (cell[k] == cell[k - 1] && gene[k] > gene[k - 1]));
    nbs_matrix *m = NULL;
    if (!ordered) {
        m = nbs_matrix_from_triplets(n_cells, n_genes, n, cell, gene, value, what, err);
    } else if ((m = nbs_matrix_new(n_cells, n_genes, 0, err))) {
        int64_t kept = 0; /* zeros dropped in place */
        for (int64_t k = 0; k < n; k++)
            if (value[k] != 0) {
                m->indptr[cell[k] + 1]++;
                gene[kept] = gene[k];
                value[kept++] = value[k];
            }
        for (int64_t c = 0; c < n_cells; c++) m->indptr[c + 1] += m->indptr[c];
        if (kept > 0) { /* adopt the arrays, trimmed to the entries kept */
            int32_t *g = realloc(gene, sizeof *g * (size_t)kept);
            float *v = realloc(value, sizeof *v * (size_t)kept);
            if (g) gene = g;
            if (v) value = v;
            free(m->indices);
            free(m->data);
            m->indices = gene;
            m->data = value;
            m->nnz = kept;
            gene = NULL;
            value = NULL;
        }
    }
    free(cell);
    free(gene);
    free(value);
    return m;
}

int nbs_matrix_validate_values(nbs_matrix *m, nbs_nonint_policy policy, const char *what,
                               nbs_error *err) {
    int all_integer = 1;
    for (int64_t c = 0; c < m->n_cells; c++)
        for (int64_t k = m->indptr[c]; k < m->indptr[c + 1]; k++) {
            float x = m->data[k];
            const char *cell = m->barcodes[c] ? m->barcodes[c] : "?";
            const char *gene = m->gene_names[m->indices[k]] ? m->gene_names[m->indices[k]] : "?";
            if (!isfinite(x))
                return nbs_error_set(err, NBS_ERR_INPUT,
                                     "%s: non-finite value %g%s at cell %lld (%s), gene %d (%s); "
                                     "counts must be finite",
                                     what, x, isinf(x) ? " (or a count beyond 3.4e38)" : "", (long long)c + 1, cell,
                                     m->indices[k] + 1, gene);
            if (x < 0)
                return nbs_error_set(err, NBS_ERR_INPUT,
                                     "%s: negative value %g at cell %lld (%s), gene %d (%s); "
                                     "counts cannot be negative — is this a scaled or "
                                     "log-normalised matrix? Give raw counts (e.g. an h5ad layer "
                                     "'counts' or raw/X)",
                                     what, x, (long long)c + 1, cell, m->indices[k] + 1, gene);
            if (x != floorf(x)) {
                if (policy == NBS_NONINT_ERROR)
                    return nbs_error_set(
                        err, NBS_ERR_INPUT,
                        "%s: non-integer value %g at cell %lld (%s), gene %d (%s); nbsphere models "
                        "raw counts — give raw counts, or set input.non_integer to 'round' or "
                        "'accept'",
                        what, x, (long long)c + 1, cell, m->indices[k] + 1, gene);
                if (policy == NBS_NONINT_ROUND) m->data[k] = roundf(x);
                else all_integer = 0;
            }
        }
    m->values_are_integer = all_integer;
    return NBS_OK;
}

static int cmp_str_idx(const void *a, const void *b, void *names) {
    const int64_t *x = a, *y = b;
    char **n = names;
    int c = strcmp(n[*x], n[*y]);
    return c ? c : (*x > *y) - (*x < *y);
}

int64_t nbs_matrix_make_names_unique(char **names, int64_t n, nbs_error *err) {
    /* anndata's rule: for each duplicated name, in order of appearance, every occurrence after
     * the first gets "-1", "-2", ... skipping suffixes that collide with an existing name. */
    int64_t *order = nbs_malloc((size_t)n * sizeof *order, err);
    if (!order) return -1;
    for (int64_t i = 0; i < n; i++) order[i] = i;
    qsort_r(order, (size_t)n, sizeof *order, cmp_str_idx, names);
    int64_t changed = 0;
    for (int64_t i = 0; i < n;) {
        int64_t j = i + 1;
        while (j < n && strcmp(names[order[i]], names[order[j]]) == 0) j++;
        int64_t suffix = 1;
        for (int64_t k = i + 1; k < j; k++) {
            const char *base = names[order[i]];
            char *cand = NULL;
            for (;; suffix++) {
                size_t len = strlen(base) + 24;
                free(cand);
                cand = nbs_malloc(len, err);
                if (!cand) {
                    free(order);
                    return -1;
                }
                snprintf(cand, len, "%s-%lld", base, (long long)suffix);
                int clash = 0;
                for (int64_t q = 0; q < n && !clash; q++) clash = strcmp(names[q], cand) == 0;
                if (!clash) break;
            }
            suffix++;
            free(names[order[k]]);
            names[order[k]] = cand;
            changed++;
        }
        i = j;
    }
    free(order);
    return changed;
}

static int copy_names(char **dst, char *const *src, const int64_t *idx, int64_t n, nbs_error *err) {
    for (int64_t i = 0; i < n; i++)
        if (src[idx ? idx[i] : i] && !(dst[i] = nbs_strdup(src[idx ? idx[i] : i], err))) return -1;
    return 0;
}

nbs_matrix *nbs_matrix_subset(const nbs_matrix *m, const int64_t *cells, int64_t n_cells,
                              const int64_t *genes, int64_t n_genes, nbs_error *err) {
    int64_t *newcol = nbs_malloc((size_t)(m->n_genes ? m->n_genes : 1) * sizeof *newcol, err);
    if (!newcol) return NULL;
    for (int64_t g = 0; g < m->n_genes; g++) newcol[g] = genes ? -1 : g;
    if (genes)
        for (int64_t i = 0; i < n_genes; i++) newcol[genes[i]] = i;
    if (!genes) n_genes = m->n_genes;
    if (!cells) n_cells = m->n_cells;
    int64_t nnz = 0;
    for (int64_t i = 0; i < n_cells; i++) {
        int64_t c = cells ? cells[i] : i;
        for (int64_t k = m->indptr[c]; k < m->indptr[c + 1]; k++) nnz += newcol[m->indices[k]] >= 0;
    }
    nbs_matrix *s = nbs_matrix_new(n_cells, n_genes, nnz, err);
    if (!s) {
        free(newcol);
        return NULL;
    }
    int64_t pos = 0;
    for (int64_t i = 0; i < n_cells; i++) {
        int64_t c = cells ? cells[i] : i;
        for (int64_t k = m->indptr[c]; k < m->indptr[c + 1]; k++) {
            int64_t g = newcol[m->indices[k]];
            if (g < 0) continue;
            s->indices[pos] = (int32_t)g;
            s->data[pos++] = m->data[k];
        }
        s->indptr[i + 1] = pos;
    }
    free(newcol);
    s->values_are_integer = m->values_are_integer;
    if (copy_names(s->barcodes, m->barcodes, cells, n_cells, err) ||
        copy_names(s->gene_ids, m->gene_ids, genes, n_genes, err) ||
        copy_names(s->gene_names, m->gene_names, genes, n_genes, err)) {
        nbs_matrix_free(s);
        return NULL;
    }
    return s;
}

/* Keeps the names at idx (ascending) in place, freeing the others. */
static void keep_names(char **names, int64_t n, const int64_t *idx, int64_t k) {
    for (int64_t i = 0, j = 0; i < n; i++) {
        if (j < k && idx[j] == i) names[j++] = names[i];
        else free(names[i]);
    }
}

int nbs_matrix_subset_inplace(nbs_matrix *m, const int64_t *cells, int64_t n_cells, const int64_t *genes,
                              int64_t n_genes, nbs_error *err) {
    int64_t *newcol = NULL;
    if (genes) {
        if (!(newcol = nbs_malloc((size_t)(m->n_genes ? m->n_genes : 1) * sizeof *newcol, err))) return NBS_ERR_NOMEM;
        for (int64_t g = 0; g < m->n_genes; g++) newcol[g] = -1;
        for (int64_t i = 0; i < n_genes; i++) newcol[genes[i]] = i;
    }
    if (!cells) n_cells = m->n_cells;
    /* rows ascending and entries only dropped: every write lands at or before its read */
    int64_t pos = 0;
    for (int64_t i = 0; i < n_cells; i++) {
        const int64_t c = cells ? cells[i] : i, k0 = m->indptr[c], k1 = m->indptr[c + 1];
        m->indptr[i] = pos;
        for (int64_t k = k0; k < k1; k++) {
            const int64_t g = newcol ? newcol[m->indices[k]] : m->indices[k];
            if (g < 0) continue;
            m->indices[pos] = (int32_t)g;
            m->data[pos++] = m->data[k];
        }
    }
    m->indptr[n_cells] = pos;
    free(newcol);
    if (cells) keep_names(m->barcodes, m->n_cells, cells, n_cells);
    if (genes) {
        for (int64_t g = 0; g < m->n_genes; g++) /* ids may alias names (see nbs_matrix_free) */
            if (m->gene_ids[g] == m->gene_names[g]) m->gene_ids[g] = NULL;
        keep_names(m->gene_ids, m->n_genes, genes, n_genes);
        keep_names(m->gene_names, m->n_genes, genes, n_genes);
        m->n_genes = n_genes;
    }
    m->n_cells = n_cells;
    m->nnz = pos;
    if (pos > 0) { /* give the dropped entries back */
        int32_t *ix = realloc(m->indices, sizeof *ix * (size_t)pos);
        float *d = realloc(m->data, sizeof *d * (size_t)pos);
        if (ix) m->indices = ix;
        if (d) m->data = d;
    }
    return NBS_OK;
}

void nbs_matrix_row_sums(const nbs_matrix *m, double *out) {
    for (int64_t c = 0; c < m->n_cells; c++) {
        double s = 0;
        for (int64_t k = m->indptr[c]; k < m->indptr[c + 1]; k++) s += m->data[k];
        out[c] = s;
    }
}

/* Rows longer than t: how many and their entries. */
static void rows_longer(const nbs_matrix *m, int64_t t, int64_t *count, int64_t *entries) {
    *count = *entries = 0;
    for (int64_t c = 0; c < m->n_cells; c++) {
        const int64_t len = m->indptr[c + 1] - m->indptr[c];
        if (len > t) ++*count, *entries += len;
    }
}

int64_t nbs_matrix_max_batch_nnz(const nbs_matrix *m, int64_t k) {
    if (k >= m->n_cells) return m->indptr[m->n_cells];
    /* the k-th longest length t by bisection (no allocation): the k longest rows are those
     * longer than t, topped up with rows of length exactly t */
    int64_t lo = 0, hi = m->n_genes, count, entries; /* count(len > hi) = 0 < k <= count(len > lo - 1) */
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo + 1) / 2;
        rows_longer(m, mid - 1, &count, &entries); /* rows with len >= mid */
        if (count >= k) lo = mid;
        else hi = mid - 1;
    }
    rows_longer(m, lo, &count, &entries);
    return entries + (k - count) * lo;
}

int nbs_matrix_default_names(char ***names, int64_t n, const char *prefix, nbs_error *err) {
    char **out = nbs_calloc((size_t)n, sizeof *out, err);
    if (!out) return NBS_ERR_NOMEM;
    for (int64_t i = 0; i < n; i++) {
        char buf[64];
        snprintf(buf, sizeof buf, "%s%lld", prefix, (long long)i + 1);
        if (!(out[i] = nbs_strdup(buf, err))) {
            free_names(out, i);
            return NBS_ERR_NOMEM;
        }
    }
    free_names(*names, n);
    *names = out;
    return NBS_OK;
}

nbs_matrix *nbs_matrix_align_genes(const nbs_matrix *m, char *const *names, int64_t n,
                                   int64_t *missing, nbs_error *err) {
    /* target[g]: the list position of m's gene g (or -1), through a hash of m's names */
    int64_t *target = nbs_malloc(sizeof(int64_t) * (m->n_genes ? m->n_genes : 1), err);
    struct hsearch_data h = {0};
    if (!target) return NULL;
    if (!hcreate_r((size_t)(m->n_genes * 2 + 16), &h)) {
        free(target);
        nbs_error_set(err, NBS_ERR_NOMEM, "out of memory for a gene index");
        return NULL;
    }
    for (int64_t g = 0; g < m->n_genes; g++) {
        target[g] = -1;
        ENTRY e = {m->gene_names[g], (void *)(intptr_t)g}, *r;
        hsearch_r(e, ENTER, &r, &h); /* names are unique, so the first entry is the only one */
    }
    *missing = 0;
    for (int64_t j = 0; j < n; j++) {
        ENTRY e = {names[j], NULL}, *r = NULL;
        if (hsearch_r(e, FIND, &r, &h) && r && target[(intptr_t)r->data] < 0) target[(intptr_t)r->data] = j;
        else (*missing)++;
    }
    hdestroy_r(&h);
    int64_t nnz = 0;
    for (int64_t p = 0; p < m->nnz; p++) nnz += target[m->indices[p]] >= 0;
    nbs_matrix *out = nbs_matrix_new(m->n_cells, n, nnz, err);
    if (!out) {
        free(target);
        return NULL;
    }
    int64_t q = 0;
    for (int64_t i = 0; i < m->n_cells; i++) {
        const int64_t start = q;
        for (int64_t p = m->indptr[i]; p < m->indptr[i + 1]; p++)
            if (target[m->indices[p]] >= 0) {
                out->indices[q] = (int32_t)target[m->indices[p]];
                out->data[q++] = m->data[p];
            }
        /* the new order of genes is not the old one: sort the row by its new indices */
        for (int64_t a = start + 1; a < q; a++)
            for (int64_t b = a; b > start && out->indices[b - 1] > out->indices[b]; b--) {
                int32_t ti = out->indices[b];
                out->indices[b] = out->indices[b - 1];
                out->indices[b - 1] = ti;
                float tv = out->data[b];
                out->data[b] = out->data[b - 1];
                out->data[b - 1] = tv;
            }
        out->indptr[i + 1] = q;
    }
    free(target);
    out->values_are_integer = m->values_are_integer;
    int st = NBS_OK;
    for (int64_t i = 0; i < m->n_cells && !st; i++)
        if (!(out->barcodes[i] = nbs_strdup(m->barcodes[i], err))) st = err->code;
    for (int64_t j = 0; j < n && !st; j++)
        if (!(out->gene_names[j] = nbs_strdup(names[j], err)) || !(out->gene_ids[j] = nbs_strdup(names[j], err)))
            st = err->code;
    if (st) {
        nbs_matrix_free(out);
        return NULL;
    }
    return out;
}
