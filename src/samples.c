/* input.samples: each sample read as one input, then the cells stacked into one matrix with
 * the genes matched across samples (id, then name) and the barcodes suffixed by the sample. */
#include "nbsphere/samples.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/io.h"

/* A part "has ids" when its readers found any: without them nbs_matrix holds the names twice. */
static int has_ids(const nbs_sample_genes *m) {
    for (int64_t g = 0; g < m->n_genes; g++)
        if (strcmp(m->gene_ids[g], m->gene_names[g])) return 1;
    return 0;
}

static int cmp_str_at(const void *a, const void *b, void *ctx) {
    char *const *s = ctx;
    return strcmp(s[*(const int64_t *)a], s[*(const int64_t *)b]);
}

/* idx (n) = 0..n-1 sorted by strs[idx]. */
static void sort_index(int64_t *idx, int64_t n, char **strs) {
    for (int64_t i = 0; i < n; i++) idx[i] = i;
    qsort_r(idx, (size_t)n, sizeof *idx, cmp_str_at, strs);
}

/* The first position in idx (sorted by strs) whose string is key; n when there is none. */
static int64_t lower_bound(const int64_t *idx, int64_t n, char *const *strs, const char *key) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (strcmp(strs[idx[mid]], key) < 0) lo = mid + 1;
        else hi = mid;
    }
    return lo < n && !strcmp(strs[idx[lo]], key) ? lo : n;
}

/* Duplicate ids inside one part would make the match ambiguous. */
static int check_unique_ids(const nbs_sample_genes *m, const char *name, const char *path, int64_t *idx, nbs_error *err) {
    sort_index(idx, m->n_genes, m->gene_ids);
    for (int64_t i = 1; i < m->n_genes; i++)
        if (!strcmp(m->gene_ids[idx[i]], m->gene_ids[idx[i - 1]])) {
            const int64_t a = idx[i - 1] < idx[i] ? idx[i - 1] : idx[i], b = idx[i - 1] < idx[i] ? idx[i] : idx[i - 1];
            return nbs_error_set(err, NBS_ERR_INPUT, "%s (sample '%s'): gene id '%s' is given twice (genes %lld '%s' "
                                 "and %lld '%s'); the genes of several samples are matched by id, so each id must "
                                 "name one gene: remove the duplicate from the file", path, name, m->gene_ids[a],
                                 (long long)a + 1, m->gene_names[a], (long long)b + 1, m->gene_names[b]);
        }
    return NBS_OK;
}

typedef struct { int32_t col; float v; } entry;
static int cmp_entry(const void *a, const void *b) {
    const int32_t x = ((const entry *)a)->col, y = ((const entry *)b)->col;
    return (x > y) - (x < y);
}

int nbs_samples_match_genes(const nbs_sample_genes *parts, const char *const *names, const char *const *paths, int n,
                            nbs_join join, int64_t **maps, int64_t *n_genes, char ***gene_ids, char ***gene_names,
                            int64_t *lacked, int64_t *dropped, nbs_error *err) {
    for (int i = 0; i < n; i++) maps[i] = NULL;
    *n_genes = 0;
    *gene_ids = *gene_names = NULL;
    int64_t cap = 0;
    int st = NBS_OK;
    for (int i = 0; i < n && !st; i++) {
        const nbs_sample_genes *m = &parts[i];
        if (!m->n_cells || !m->n_genes)
            st = nbs_error_set(err, NBS_ERR_INPUT, "%s (sample '%s'): the sample is empty (%lld cells x %lld genes); "
                               "remove it from input.samples or give the right file", paths[i], names[i],
                               (long long)m->n_cells, (long long)m->n_genes);
        cap += m->n_genes;
    }
    /* the union's genes: id, name, whether the id is real, in how many parts; and each part's
     * map gene -> union gene (u (parts[i].n_genes)), then -> output column */
    char **uid = NULL, **uname = NULL, **oid = NULL, **oname = NULL;
    int *uhas = NULL, *ucount = NULL, *seen = NULL;
    int64_t *by_id = NULL, *by_name = NULL, *scratch = NULL, *keep = NULL, nu = 0;
    if (!st && (!(uid = nbs_calloc((size_t)cap, sizeof *uid, err)) || !(uname = nbs_calloc((size_t)cap, sizeof *uname, err)) ||
                !(uhas = nbs_calloc((size_t)cap, sizeof *uhas, err)) || !(ucount = nbs_calloc((size_t)cap, sizeof *ucount, err)) ||
                !(seen = nbs_calloc((size_t)cap, sizeof *seen, err)) || !(by_id = nbs_malloc(sizeof *by_id * (size_t)cap, err)) ||
                !(by_name = nbs_malloc(sizeof *by_name * (size_t)cap, err)) ||
                !(scratch = nbs_malloc(sizeof *scratch * (size_t)cap, err)) ||
                !(keep = nbs_malloc(sizeof *keep * (size_t)cap, err))))
        st = NBS_ERR_NOMEM;
    for (int i = 0; i < n && !st; i++) {
        const nbs_sample_genes *p = &parts[i];
        const int ids = has_ids(p);
        if (ids && (st = check_unique_ids(p, names[i], paths[i], scratch, err))) break;
        if (!(maps[i] = nbs_malloc(sizeof *maps[i] * (size_t)p->n_genes, err))) {
            st = NBS_ERR_NOMEM;
            break;
        }
        /* indexes of the union so far: real ids, and all names */
        int64_t n_id = 0;
        for (int64_t u = 0; u < nu; u++)
            if (uhas[u]) by_id[n_id++] = u;
        qsort_r(by_id, (size_t)n_id, sizeof *by_id, cmp_str_at, uid);
        sort_index(by_name, nu, uname);
        const int64_t nu_before = nu;
        for (int64_t g = 0; g < p->n_genes; g++) {
            int64_t u = -1, at;
            if (ids && (at = lower_bound(by_id, n_id, uid, p->gene_ids[g])) < n_id) u = by_id[at];
            /* by name: for a part without ids any gene of that name, for one with ids only a
             * gene that has none (an id that differs names another gene) */
            for (at = u < 0 ? lower_bound(by_name, nu_before, uname, p->gene_names[g]) : nu_before;
                 at < nu_before && !strcmp(uname[by_name[at]], p->gene_names[g]); at++) {
                const int64_t v = by_name[at];
                if (seen[v] != i + 1 && (!ids || !uhas[v])) {
                    u = v;
                    break;
                }
            }
            if (u >= 0 && seen[u] == i + 1) u = -1; /* each union gene once per part */
            if (u < 0) {
                u = nu++;
                uname[u] = p->gene_names[g];
                uid[u] = p->gene_ids[g];
                uhas[u] = ids;
            } else if (ids && !uhas[u]) { /* a name-only gene matched by a part with ids takes the id */
                uid[u] = p->gene_ids[g];
                uhas[u] = 1;
            }
            seen[u] = i + 1;
            ucount[u]++;
            maps[i][g] = u;
        }
    }
    int64_t G = 0;
    for (int64_t u = 0; !st && u < nu; u++) keep[u] = join == NBS_JOIN_OUTER || ucount[u] == n ? G++ : -1;
    if (!st && !G) {
        char list[1024];
        size_t used = 0;
        list[0] = '\0';
        for (int i = 0; i < n && used < sizeof list; i++)
            used += (size_t)snprintf(list + used, sizeof list - used, "%s%s (%lld genes)", i ? ", " : "", paths[i],
                                     (long long)parts[i].n_genes);
        st = nbs_error_set(err, NBS_ERR_INPUT, "input.samples: no gene is in every sample (%s; matched by gene id where "
                           "both files have ids, else by name); are they the same organism and annotation? "
                           "input.join: outer keeps the union instead", list);
    }
    for (int i = 0; !st && i < n; i++) {
        if (lacked) lacked[i] = nu - parts[i].n_genes;
        for (int64_t g = 0; g < parts[i].n_genes; g++) maps[i][g] = keep[maps[i][g]];
    }
    if (!st && dropped) *dropped = nu - G;
    if (!st && (!(oid = nbs_malloc(sizeof *oid * (size_t)G, err)) || !(oname = nbs_malloc(sizeof *oname * (size_t)G, err))))
        st = NBS_ERR_NOMEM;
    for (int64_t u = 0; !st && u < nu; u++)
        if (keep[u] >= 0) oid[keep[u]] = uid[u], oname[keep[u]] = uname[u];
    free(uid);
    free(uname);
    free(uhas);
    free(ucount);
    free(seen);
    free(by_id);
    free(by_name);
    free(scratch);
    free(keep);
    if (st) {
        for (int i = 0; i < n; i++) free(maps[i]), maps[i] = NULL;
        free(oid), free(oname);
        return st;
    }
    *n_genes = G;
    *gene_ids = oid;
    *gene_names = oname;
    return NBS_OK;
}

int nbs_samples_concat(nbs_matrix **parts, const char *const *names, const char *const *paths, int n,
                       nbs_join join, nbs_matrix **out, int64_t *lacked, int64_t *dropped, nbs_error *err) {
    *out = NULL;
    int64_t n_cells = 0, longest = 0, G = 0;
    nbs_sample_genes genes[NBS_MAX_SAMPLES] = {{0}};
    for (int i = 0; i < n && i < NBS_MAX_SAMPLES; i++) {
        const nbs_matrix *m = parts[i];
        genes[i] = (nbs_sample_genes){m->n_cells, m->n_genes, m->gene_ids, m->gene_names};
        n_cells += m->n_cells;
        for (int64_t c = 0; c < m->n_cells; c++)
            if (m->indptr[c + 1] - m->indptr[c] > longest) longest = m->indptr[c + 1] - m->indptr[c];
    }
    int64_t *maps[NBS_MAX_SAMPLES] = {0}; /* (parts[i]->n_genes) output column of each gene, or -1 */
    char **gid = NULL, **gname = NULL; /* (G) into the parts' strings */
    entry *row = NULL;
    nbs_matrix *m = NULL;
    int st = n > NBS_MAX_SAMPLES ? nbs_error_set(err, NBS_ERR_INTERNAL, "more than %d samples", NBS_MAX_SAMPLES)
                                 : nbs_samples_match_genes(genes, names, paths, n, join, maps, &G, &gid, &gname, lacked,
                                                           dropped, err);
    if (st) {
        for (int i = 0; i < n; i++) nbs_matrix_free(parts[i]), parts[i] = NULL;
        return st;
    }
    if (!(row = nbs_malloc(sizeof *row * (size_t)(longest + 1), err))) st = NBS_ERR_NOMEM;
    int64_t nnz = 0;
    for (int i = 0; !st && i < n; i++)
        for (int64_t k = 0; k < parts[i]->nnz; k++) nnz += maps[i][parts[i]->indices[k]] >= 0;
    if (!st && !(m = nbs_matrix_new(n_cells, G, nnz, err))) st = NBS_ERR_NOMEM;
    for (int64_t g = 0; !st && g < G; g++)
        if (!(m->gene_ids[g] = nbs_strdup(gid[g], err)) || !(m->gene_names[g] = nbs_strdup(gname[g], err)))
            st = NBS_ERR_NOMEM;
    int64_t r = 0, at = 0;
    for (int i = 0; !st && i < n; i++) {
        nbs_matrix *p = parts[i];
        const size_t suffix = strlen(names[i]) + 2;
        for (int64_t c = 0; c < p->n_cells && !st; c++, r++) {
            int64_t len = 0;
            for (int64_t k = p->indptr[c]; k < p->indptr[c + 1]; k++) {
                const int64_t col = maps[i][p->indices[k]];
                if (col >= 0) row[len++] = (entry){(int32_t)col, p->data[k]};
            }
            qsort(row, (size_t)len, sizeof *row, cmp_entry); /* the part's gene order need not be the union's */
            for (int64_t k = 0; k < len; k++, at++) {
                m->indices[at] = row[k].col;
                m->data[at] = row[k].v;
            }
            m->indptr[r + 1] = at;
            const size_t size = strlen(p->barcodes[c]) + suffix;
            if (!(m->barcodes[r] = nbs_malloc(size, err))) st = NBS_ERR_NOMEM;
            else snprintf(m->barcodes[r], size, "%s-%s", p->barcodes[c], names[i]);
        }
        m->values_are_integer &= p->values_are_integer;
        nbs_matrix_free(p); /* its genes are copied already: the union's strings are not read again */
        parts[i] = NULL;
    }
    if (st) {
        nbs_matrix_free(m);
        m = NULL;
    }
    for (int i = 0; i < n; i++) {
        nbs_matrix_free(parts[i]);
        parts[i] = NULL;
        free(maps[i]);
    }
    free(gid);
    free(gname);
    free(row);
    *out = m;
    return st;
}

int nbs_samples_read(const nbs_input_config *in, nbs_matrix **out, nbs_error *err) {
    const int n = in->samples.n;
    nbs_matrix *parts[NBS_MAX_SAMPLES] = {0};
    const char *names[NBS_MAX_SAMPLES] = {0}, *paths[NBS_MAX_SAMPLES] = {0};
    int64_t lacked[NBS_MAX_SAMPLES], dropped = 0;
    nbs_input_config *one = malloc(sizeof *one); /* the input section with the sample's file */
    int st = one ? NBS_OK : nbs_error_set(err, NBS_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n && !st; i++) {
        const nbs_sample *smp = &in->samples.items[i];
        nbs_sample_input(in, i, one);
        names[i] = smp->name;
        paths[i] = smp->path;
        if (one->format == NBS_FMT_AUTO) st = nbs_io_detect_format(one->path, &one->format, err);
        if (!st) st = nbs_io_read(one, &parts[i], err);
        if (st) nbs_error_prefix(err, "input.samples '%s': ", smp->name);
        else
            nbs_info("sample '%s' (%s, %s): %lld cells x %lld genes read", smp->name, smp->path,
                     nbs_format_name(one->format), (long long)parts[i]->n_cells, (long long)parts[i]->n_genes);
    }
    free(one);
    if (st) {
        for (int i = 0; i < n; i++) nbs_matrix_free(parts[i]);
        return st;
    }
    if ((st = nbs_samples_concat(parts, names, paths, n, in->join, out, lacked, &dropped, err))) return st;
    nbs_samples_log_genes(names, n, in->join, lacked, (*out)->n_genes, dropped);
    return NBS_OK;
}

void nbs_sample_input(const nbs_input_config *in, int i, nbs_input_config *one) {
    const nbs_sample *smp = &in->samples.items[i];
    *one = *in;
    one->samples.n = 0;
    snprintf(one->path, sizeof one->path, "%s", smp->path);
    if (smp->format != NBS_FMT_AUTO) one->format = smp->format;
    if (smp->layer_given) snprintf(one->layer, sizeof one->layer, "%s", smp->layer);
}

void nbs_samples_log_genes(const char *const *names, int n, nbs_join join, const int64_t *lacked, int64_t n_genes,
                           int64_t dropped) {
    const int64_t union_genes = n_genes + dropped;
    for (int i = 0; i < n; i++)
        nbs_info("sample '%s' lacks %lld of the %lld genes of all samples%s", names[i], (long long)lacked[i],
                 (long long)union_genes, join == NBS_JOIN_OUTER && lacked[i] ? " (zero counts there)" : "");
    if (join == NBS_JOIN_INNER)
        nbs_info("input.join inner: %lld genes are in every sample, %lld dropped (input.join: outer keeps them, "
                 "with zeros)", (long long)n_genes, (long long)dropped);
}

int nbs_sample_of_barcode(const nbs_sample_list *samples, const char *barcode) {
    const size_t lb = strlen(barcode);
    for (int i = 0; i < samples->n; i++) {
        const size_t ln = strlen(samples->items[i].name);
        if (lb > ln && barcode[lb - ln - 1] == '-' && !strcmp(barcode + lb - ln, samples->items[i].name)) return i;
    }
    return -1;
}
