/* Several samples in one run (input.samples): each file is read as a single input would be,
 * and the cells are stacked into one matrix as anndata.concat(..., label="sample",
 * index_unique="-") does: every barcode gets the suffix "-<sample>", and genes are matched by
 * id (10x feature ids, Ensembl ids) where both sides have ids, else by name; the genes in every
 * sample (join inner) or all of them, zero where a sample lacks one (join outer). A cell's
 * sample is known afterwards from its barcode's suffix, so it survives filtering and gene
 * alignment without a column of its own. */
#ifndef NBSPHERE_SAMPLES_H
#define NBSPHERE_SAMPLES_H

#include <stdint.h>

#include "nbsphere/config.h"
#include "nbsphere/error.h"
#include "nbsphere/matrix.h"

/* The obs column that holds each cell's sample (the batch when input.batch_key is ""). */
#define NBS_SAMPLE_COLUMN "sample"

/* Reads every sample of in->samples (each with its own format and layer, or the input
 * section's) and stacks them with nbs_samples_concat. The log gives per sample the cells and
 * genes read and the genes it lacks. */
int nbs_samples_read(const nbs_input_config *in, nbs_matrix **out, nbs_error *err);

/* Stacks parts[0..n) (validated matrices, taken: freed, also on failure, each as soon as its
 * rows are copied, so at most one copy of the counts exists besides the parts) named names[i],
 * read from paths[i] (for messages). An empty part, duplicate gene ids inside one part, or no
 * gene in common (join inner) is NBS_ERR_INPUT naming the file. Genes come in the order of
 * their first appearance (parts[0]'s first). lacked[i] (may be NULL) receives how many of the
 * union's genes part i lacks; *dropped (may be NULL) how many an inner join dropped. */
int nbs_samples_concat(nbs_matrix **parts, const char *const *names, const char *const *paths, int n,
                       nbs_join join, nbs_matrix **out, int64_t *lacked, int64_t *dropped, nbs_error *err);

/* The genes of one sample as the matching sees them: ids (the names where the file has none)
 * and names, unique names (the readers make them so). */
typedef struct {
    int64_t n_cells, n_genes;
    char **gene_ids, **gene_names; /* (n_genes) */
} nbs_sample_genes;

/* The gene matching of nbs_samples_concat, alone (out of core reads the counts itself): maps[i]
 * (parts[i].n_genes, malloc'd) the column of each of part i's genes among the *n_genes genes of
 * the result, or -1 (dropped by an inner join); *gene_ids, *gene_names (*n_genes, malloc'd arrays
 * of pointers into the parts' strings) the result's genes. The refusals, lacked and dropped are
 * nbs_samples_concat's. */
int nbs_samples_match_genes(const nbs_sample_genes *parts, const char *const *names, const char *const *paths, int n,
                            nbs_join join, int64_t **maps, int64_t *n_genes, char ***gene_ids, char ***gene_names,
                            int64_t *lacked, int64_t *dropped, nbs_error *err);

/* Sample i of in->samples as an input section of one file: its path, and its format and layer
 * where it gives them (else the section's). */
void nbs_sample_input(const nbs_input_config *in, int i, nbs_input_config *one);

/* The log of the matching: per sample the genes it lacks (lacked (n)), and with input.join inner
 * the genes kept (n_genes) and dropped. */
void nbs_samples_log_genes(const char *const *names, int n, nbs_join join, const int64_t *lacked, int64_t n_genes,
                           int64_t dropped);

/* The index in samples of the sample a suffixed barcode belongs to ("<barcode>-<name>"); -1
 * when it ends in none of the names. Unique: no sample name ends in "-" and another one
 * (pipeline.c refuses such names). */
int nbs_sample_of_barcode(const nbs_sample_list *samples, const char *barcode);

#endif
