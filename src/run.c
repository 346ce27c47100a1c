/* One run: output check -> load -> preprocess -> train -> diagnose -> write, with the manifest
 * recording inputs, configuration, versions and per-stage timings. Stages talk only through
 * the structs they hand on; this file owns their order and lifetimes, nothing else. */
#include "nbsphere/run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

static int has_suffix(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* Format dispatch over the readers io_h5.c and io_text.c provide, then the validation every
 * reader's output needs (values, unique gene names). */
int nbs_run_read_input(const nbs_input_config *in, nbs_format *format_used, nbs_matrix **out,
                       nbs_error *err) {
    nbs_format f = in->format;
    struct stat st;
    if (f == NBS_FMT_AUTO) {
        if (stat(in->path, &st) == 0 && S_ISDIR(st.st_mode)) f = NBS_FMT_10X_MTX;
        else if (has_suffix(in->path, ".mtx") || has_suffix(in->path, ".mtx.gz")) f = NBS_FMT_MTX;
        else if (has_suffix(in->path, ".h5") || has_suffix(in->path, ".hdf5") || has_suffix(in->path, ".h5ad")) {
            int rc = nbs_io_h5_kind(in->path, &f, err);
            if (rc) return rc;
        } else {
            return nbs_error_set(err, NBS_ERR_INPUT,
                                 "%s: cannot tell the format from the name; expected a 10x folder, "
                                 ".h5, .mtx or .mtx.gz, or set input.format", in->path);
        }
    }
    int rc;
    if (format_used) *format_used = f;
    switch (f) {
    case NBS_FMT_10X_H5: rc = nbs_io_read_10x_h5(in->path, in->genome, out, err); break;
    case NBS_FMT_10X_MTX: rc = nbs_io_read_10x_mtx_dir(in->path, out, err); break;
    case NBS_FMT_MTX: rc = nbs_io_read_mtx(in->path, in->orientation, out, err); break;
    default:
        return nbs_error_set(err, NBS_ERR_INPUT,
                             "%s: this build reads 10x HDF5, 10x MTX folders and .mtx files; "
                             "expected one of those (input.format)", in->path);
    }
    if (rc) return rc;
    rc = nbs_matrix_validate_values(*out, in->non_integer, in->path, err);
    if (!rc) {
        int64_t changed = nbs_matrix_make_names_unique((*out)->gene_names, (*out)->n_genes, err);
        if (changed < 0) rc = err->code;
        else if (changed > 0)
            nbs_warn("%s: %lld duplicate gene names made unique (X, X-1, X-2, ...)", in->path,
                     (long long)changed);
    }
    if (rc) {
        nbs_matrix_free(*out);
        *out = NULL;
    }
    return rc;
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
