/* Pipeline files (YAML, pipelines/ folder) -> nbs_config.
 * A pipeline has the sections input, preprocess, model, train, diagnose, output; every field
 * of the structs in config.h is a key of its section (pipelines/reference.yaml lists them with
 * their defaults). Enums are lowercase words, layer lists are sequences ([128, 64]).
 * Order of application: nbs_config_defaults, then the preset (`preset: scvi|scphere`, wherever
 * it appears in the file; nbs_config_apply_preset), then the file's own keys, then --set
 * overrides in order.
 * Relative paths in a file resolve against the file's folder; in overrides, against the
 * current folder. Every rejected key or value is reported as "file:line:column: message" (or
 * naming the override) with the expected form; the status is NBS_ERR_USAGE, except an input
 * file that does not exist (NBS_ERR_IO). */
#ifndef NBSPHERE_PIPELINE_H
#define NBSPHERE_PIPELINE_H

#include <stdio.h>

#include "nbsphere/config.h"
#include "nbsphere/error.h"

#define NBS_ORIGIN_MAX (NBS_PATH_MAX + 64)

typedef struct {
    nbs_config config;
    /* Where input.path and output.dir were set: "file:line:column", "--set ..." or "default",
     * so later checks (the output probe) can point at the line to fix. */
    char input_origin[NBS_ORIGIN_MAX];
    char output_origin[NBS_ORIGIN_MAX];
} nbs_pipeline;

/* Flags of nbs_pipeline_load. */
enum {
    NBS_PIPELINE_REQUIRE_INPUT = 1, /* input.path must be given (by the file or an override) */
    /* a model's stored configuration: its input and labels paths say where it was trained, on
     * whatever machine, so they need not exist here */
    NBS_PIPELINE_STORED = 2
};

/* Loads path (NULL: no file, defaults only) and applies the n_sets overrides
 * ("section.key=value"; the value is read as YAML, so lists are "[128, 64]"). */
int nbs_pipeline_load(const char *path, const char *const *sets, int n_sets, int flags,
                      nbs_pipeline *p, nbs_error *err);

/* The same from YAML text; `name` stands for the file in messages and base_dir resolves
 * relative paths (NULL: current folder). */
int nbs_pipeline_load_string(const char *text, const char *name, const char *base_dir,
                             const char *const *sets, int n_sets, int flags, nbs_pipeline *p,
                             nbs_error *err);

/* Applies one "section.key=value" override (validated like a file key). */
int nbs_pipeline_set(nbs_pipeline *p, const char *assignment, nbs_error *err);

/* Creates output.dir (and its parents) and writes then removes a probe file in it, so a run
 * fails before training, not after, when the folder is not writable (NBS_ERR_IO, message
 * names where output.dir was set). */
int nbs_pipeline_prepare_output(const nbs_pipeline *p, nbs_error *err);

/* Number of keys and their names ("section.key", index 0..n-1), for docs and tests. */
int nbs_pipeline_n_keys(void);
const char *nbs_pipeline_key_name(int i);

/* Where key i lives in nbs_config (byte offset, size, alignment), so a test can prove that
 * the keys cover every field of the structs. */
void nbs_pipeline_key_span(int i, size_t *offset, size_t *size, size_t *align);

/* ---- writing a configuration out (pipeline_dump.c) ---- */

/* The value of one key as text ("128", "[128, 64]", "vmf", "true", path); -1 if unknown. */
int nbs_pipeline_format_value(const nbs_config *c, const char *key, char *buf, size_t n);

/* Writes the whole configuration as a JSON object (sections as objects), indented by `indent`
 * spaces at its outer level; used by the run manifest. */
void nbs_pipeline_write_json(const nbs_config *c, FILE *f, int indent);

/* Writes the whole configuration as a pipeline file that reproduces it when loaded (paths made
 * absolute, so the file works from any folder); NBS_ERR_IO if the file cannot be written. */
int nbs_pipeline_write_yaml(const nbs_config *c, const char *path, nbs_error *err);
/* The same text to an open stream (e.g. into a model file). */
void nbs_pipeline_print_yaml(const nbs_config *c, FILE *f);

#endif
