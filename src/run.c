/* One run: output check -> load -> preprocess -> train -> diagnose -> write, with the manifest
 * recording inputs, configuration, versions and per-stage timings. Stages talk only through
 * the structs they hand on; this file owns their order and lifetimes, nothing else. */
#include "nbsphere/run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbsphere/io.h"
#include "nbsphere/manifest.h"

typedef struct {
    const nbs_pipeline *p;
    const nbs_run_options *o;
    nbs_manifest *manifest;
    nbs_matrix *counts;
    double t_stage;
} run_state;

static void stage_begin(run_state *s, const char *name) {
    s->t_stage = nbs_progress_now();
    nbs_progress_stage(s->o->progress, name);
}

static int stage_end(run_state *s, const char *name, const char *summary, nbs_error *err) {
    nbs_progress_done(s->o->progress, summary);
    return nbs_manifest_add_stage(s->manifest, name, nbs_progress_now() - s->t_stage, err);
}

static int out_path(const run_state *s, const char *name, char *buf) {
    int n = snprintf(buf, NBS_PATH_MAX, "%s/%s", s->p->config.output.dir, name);
    return n < NBS_PATH_MAX ? 0 : -1;
}

/* The load stage is nbs_io_read; the detected format is reported to inspect and the log. */
int nbs_run_read_input(const nbs_input_config *in, nbs_format *format_used, nbs_matrix **out,
                       nbs_error *err) {
    nbs_input_config resolved = *in;
    int rc = resolved.format == NBS_FMT_AUTO ? nbs_io_detect_format(in->path, &resolved.format, err) : NBS_OK;
    if (rc) return rc;
    if (format_used) *format_used = resolved.format;
    return nbs_io_read(&resolved, out, err);
}

static int stage_load(run_state *s, nbs_error *err) {
    const nbs_input_config *in = &s->p->config.input;
    stage_begin(s, "load");
    nbs_progress_fraction(s->o->progress, 0, in->path); /* on a terminal: what is being read */
    int st = nbs_manifest_add_input(s->manifest, in->path, err);
    if (!st && in->labels_path[0]) st = nbs_manifest_add_input(s->manifest, in->labels_path, err);
    if (!st) st = nbs_run_read_input(in, NULL, &s->counts, err);
    if (st) return st;
    char msg[256];
    snprintf(msg, sizeof msg, "%lld cells x %lld genes, %lld nonzeros",
             (long long)s->counts->n_cells, (long long)s->counts->n_genes,
             (long long)s->counts->nnz);
    return stage_end(s, "load", msg, err);
}

static int finish_manifest(run_state *s, int status, const nbs_error *failure, nbs_error *err) {
    char path[NBS_PATH_MAX];
    if (out_path(s, NBS_OUT_MANIFEST, path))
        return nbs_error_set(err, NBS_ERR_USAGE, "output.dir is too long");
    if (status) nbs_manifest_set_status(s->manifest, "failed", failure->msg);
    else nbs_manifest_set_status(s->manifest, "ok", NULL);
    if (!status) nbs_manifest_add_output(s->manifest, NBS_OUT_MANIFEST, err);
    return nbs_manifest_write(s->manifest, &s->p->config, path, err);
}

int nbs_run(const nbs_pipeline *p, const nbs_run_options *o, nbs_error *err) {
    run_state s = {p, o, NULL, NULL, 0};
    int st = nbs_pipeline_prepare_output(p, err);
    if (st) return st;
    if (!(s.manifest = nbs_manifest_new(o->command_line, err))) return err->code;
    char cfg_path[NBS_PATH_MAX];
    if (out_path(&s, NBS_OUT_CONFIG, cfg_path)) st = nbs_error_set(err, NBS_ERR_USAGE, "output.dir is too long");
    if (!st) st = nbs_pipeline_write_yaml(&p->config, cfg_path, err);
    if (!st) st = nbs_manifest_add_output(s.manifest, NBS_OUT_CONFIG, err);
    if (!st) st = stage_load(&s, err);
    /* The manifest is written for failed runs too: it says how far the run got and why. */
    nbs_error merr = {0};
    int mst = finish_manifest(&s, st, err, &merr);
    if (!st && mst) {
        *err = merr;
        st = mst;
    }
    nbs_matrix_free(s.counts);
    nbs_manifest_free(s.manifest);
    return st;
}
