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

/* The index in samples of the sample a suffixed barcode belongs to ("<barcode>-<name>"); -1
 * when it ends in none of the names. Unique: no sample name ends in "-" and another one
 * (pipeline.c refuses such names). */
int nbs_sample_of_barcode(const nbs_sample_list *samples, const char *barcode);

#endif
