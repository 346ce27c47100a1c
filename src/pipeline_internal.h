/* The table of pipeline keys, shared by the loader (pipeline.c) and the writers of a
 * configuration (pipeline_dump.c), so that every key is written the way it is read. Not part of
 * the public API. */
#ifndef NBSPHERE_PIPELINE_INTERNAL_H
#define NBSPHERE_PIPELINE_INTERNAL_H

#include <stddef.h>

#include "nbsphere/config.h"

/* K_LAYERS: a list of widths (count, then the array); K_NAMES: a list of names (nbs_name_list);
 * K_SAMPLES: a mapping of names to paths or to {path, format, layer} (nbs_sample_list). */
typedef enum { K_INT, K_INT64, K_UINT64, K_DOUBLE, K_STRING, K_PATH, K_BOOL, K_ENUM, K_LAYERS, K_NAMES, K_SAMPLES } nbs_key_type;

typedef struct {
    const char *section; /* "" for top-level keys */
    const char *key;
    nbs_key_type type;
    size_t off;    /* K_LAYERS: offset of the count, the array follows it */
    size_t size;   /* bytes of the field (K_LAYERS: count and array) */
    size_t align;
    double lo, hi; /* inclusive range of numbers (K_LAYERS: of each width; K_NAMES: of the count) */
    int lo_open;   /* 1: lo itself is excluded */
    const nbs_enum_word *words;
    const char *expect; /* the expected form, for messages */
} nbs_key_desc;

/* Key i, 0 <= i < nbs_pipeline_n_keys(), in the order of pipelines/reference.yaml. */
const nbs_key_desc *nbs_pipeline_key(int i);

#define NBS_PIPELINE_N_SECTIONS 8
extern const char *const nbs_pipeline_sections[NBS_PIPELINE_N_SECTIONS];

/* The loader's reading of a number (finite, the whole text) and of a boolean (true/false,
 * yes/no, on/off, 1/0, any case): 0 when s is one, -1 otherwise. */
int nbs_pipeline_parse_double(const char *s, double *out);
int nbs_pipeline_parse_bool(const char *s, int *out);

#endif
