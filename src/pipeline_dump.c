/* A configuration written out: one value as text, the whole as JSON (inside manifest.json) and
 * as a pipeline file (config.yaml, and the copy inside model files) that reproduces the run
 * when loaded. Every value is written from the same key table the loader reads. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nbsphere/io.h"
#include "nbsphere/json.h"
#include "nbsphere/pipeline.h"
#include "pipeline_internal.h"

static int format_key(const nbs_config *cfg, const nbs_key_desc *k, char *buf, size_t n) {
    const void *f = (const char *)cfg + k->off;
    switch (k->type) {
    case K_INT:
        for (const nbs_enum_word *w = k->words; w && w->word; w++)
            if (w->value == *(const int *)f) return snprintf(buf, n, "%s", w->word);
        return snprintf(buf, n, "%d", *(const int *)f);
    case K_INT64: return snprintf(buf, n, "%lld", (long long)*(const int64_t *)f);
    case K_UINT64: return snprintf(buf, n, "%llu", (unsigned long long)*(const uint64_t *)f);
    case K_DOUBLE: { /* the shortest form that reads back exactly: 0.3, not 0.29999999999999999 */
        double v = *(const double *)f;
        for (int prec = 6; prec < 17; prec++) {
            int r = snprintf(buf, n, "%.*g", prec, v);
            if (strtod(buf, NULL) == v) return r;
        }
        return snprintf(buf, n, "%.17g", v);
    }
    case K_BOOL: return snprintf(buf, n, "%s", *(const int *)f ? "true" : "false");
    case K_ENUM: return snprintf(buf, n, "%s", nbs_enum_word_of(k->words, *(const int *)f));
    case K_STRING:
    case K_PATH: return snprintf(buf, n, "%s", (const char *)f);
    case K_NAMES: { /* as text for messages; the YAML and JSON writers quote each name themselves */
        const nbs_name_list *l = f;
        size_t used = (size_t)snprintf(buf, n, "[");
        for (int i = 0; i < l->n && used < n; i++)
            used += (size_t)snprintf(buf + used, n - used, "%s%s", i ? ", " : "", l->names[i]);
        if (used < n) used += (size_t)snprintf(buf + used, n - used, "]");
        return (int)used;
    }
    case K_SAMPLES: { /* as text for messages: {name: path, ...} */
        const nbs_sample_list *l = f;
        size_t used = (size_t)snprintf(buf, n, "{");
        for (int i = 0; i < l->n && used < n; i++)
            used += (size_t)snprintf(buf + used, n - used, "%s%s: %s", i ? ", " : "", l->items[i].name, l->items[i].path);
        if (used < n) used += (size_t)snprintf(buf + used, n - used, "}");
        return (int)used;
    }
    case K_LAYERS: {
        const int *c = f;
        size_t used = (size_t)snprintf(buf, n, "[");
        for (int i = 0; i < *c && used < n; i++)
            used += (size_t)snprintf(buf + used, n - used, "%s%d", i ? ", " : "", c[1 + i]);
        if (used < n) used += (size_t)snprintf(buf + used, n - used, "]");
        return (int)used;
    }
    }
    return -1;
}

int nbs_pipeline_format_value(const nbs_config *c, const char *key, char *buf, size_t n) {
    for (int i = 0; i < nbs_pipeline_n_keys(); i++)
        if (!strcmp(nbs_pipeline_key_name(i), key))
            return format_key(c, nbs_pipeline_key(i), buf, n) < 0 ? -1 : 0;
    return -1;
}

void nbs_pipeline_write_json(const nbs_config *c, FILE *f, int indent) {
    char buf[NBS_PATH_MAX + 64];
    fputs("{\n", f);
    nbs_json_key(f, indent + 2, "source");
    nbs_json_string(f, c->source);
    fputs(",\n", f);
    nbs_json_key(f, indent + 2, "preset");
    nbs_json_string(f, c->preset);
    for (int s = 0; s < NBS_PIPELINE_N_SECTIONS; s++) {
        fputs(",\n", f);
        nbs_json_key(f, indent + 2, nbs_pipeline_sections[s]);
        fputc('{', f);
        int first = 1;
        for (int i = 0; i < nbs_pipeline_n_keys(); i++) {
            const nbs_key_desc *k = nbs_pipeline_key(i);
            if (strcmp(k->section, nbs_pipeline_sections[s])) continue;
            fputs(first ? "\n" : ",\n", f);
            nbs_json_key(f, indent + 4, k->key);
            first = 0;
            if (k->type == K_NAMES) {
                const nbs_name_list *l = (const void *)((const char *)c + k->off);
                fputc('[', f);
                for (int j = 0; j < l->n; j++) {
                    if (j) fputs(", ", f);
                    nbs_json_string(f, l->names[j]);
                }
                fputc(']', f);
                continue;
            }
            if (k->type == K_SAMPLES) { /* {"name": {"path": ..., "format": ..., "layer": ... or null}} */
                const nbs_sample_list *l = (const void *)((const char *)c + k->off);
                fputc('{', f);
                for (int j = 0; j < l->n; j++) {
                    const nbs_sample *smp = &l->items[j];
                    fputs(j ? ", " : "", f);
                    nbs_json_string(f, smp->name);
                    fputs(": {\"path\": ", f);
                    nbs_json_string(f, smp->path);
                    fputs(", \"format\": ", f);
                    nbs_json_string(f, nbs_format_name(smp->format));
                    fputs(", \"layer\": ", f);
                    if (smp->layer_given) nbs_json_string(f, smp->layer);
                    else fputs("null", f);
                    fputc('}', f);
                }
                fputc('}', f);
                continue;
            }
            format_key(c, k, buf, sizeof buf);
            /* an integer written as a word (auto) is a string in JSON; true and false stay literals */
            const int word = k->type == K_INT && (buf[0] < '0' || buf[0] > '9') && buf[0] != '-' &&
                             strcmp(buf, "true") && strcmp(buf, "false");
            if (k->type == K_STRING || k->type == K_PATH || k->type == K_ENUM || k->type == K_UINT64 || word)
                nbs_json_string(f, buf); /* uint64 seeds exceed a double's exact range */
            else
                fputs(buf, f);
        }
        fprintf(f, "\n%*s}", indent + 2, "");
    }
    fprintf(f, "\n%*s}", indent, "");
}

/* YAML scalar that reads back as the same string: quoted unless plainly safe; in_flow: an item
 * of a [list], where a comma or bracket would end it. */
static void yaml_scalar(FILE *f, const char *s, int in_flow) {
    int plain = *s && !strchr("-?:,[]{}#&*!|>'\"%@` ", s[0]) && !(in_flow && strpbrk(s, ",[]{}"));
    for (const char *p = s; *p && plain; p++)
        if (strchr(":#\"'\\\t\n", *p) || (unsigned char)*p < 0x20) plain = 0;
    if (plain && s[strlen(s) - 1] == ' ') plain = 0;
    if (plain) {
        double d;
        int b;
        /* a string that YAML or our parser would read as a number, bool or null stays quoted */
        if (!nbs_pipeline_parse_double(s, &d) || !nbs_pipeline_parse_bool(s, &b) || !strcmp(s, "null") ||
            !strcmp(s, "~"))
            plain = 0;
    }
    if (plain) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20) fprintf(f, "\\x%02x", (unsigned char)*s);
        else fputc(*s, f);
    }
    fputc('"', f);
}

/* A path as config.yaml holds it: absolute, so the file works from any folder. */
static void yaml_path(FILE *f, const char *v, int in_flow) {
    char abs[NBS_PATH_MAX], buf[2 * NBS_PATH_MAX];
    if (*v && v[0] != '/' && realpath(v, abs)) v = abs;
    else if (*v && v[0] != '/' && getcwd(abs, sizeof abs)) {
        snprintf(buf, sizeof buf, "%s/%s", abs, v);
        v = buf;
    }
    yaml_scalar(f, v, in_flow);
}

void nbs_pipeline_print_yaml(const nbs_config *c, FILE *f) {
    char buf[NBS_PATH_MAX + 64];
    fprintf(f, "# The resolved configuration of an nbsphere run; `nbsphere run` on this file repeats it.\n");
    fprintf(f, "# Source pipeline: %s\npreset: \"\"  # already applied below\n", c->source);
    for (int s = 0; s < NBS_PIPELINE_N_SECTIONS; s++) {
        fprintf(f, "\n%s:\n", nbs_pipeline_sections[s]);
        for (int i = 0; i < nbs_pipeline_n_keys(); i++) {
            const nbs_key_desc *k = nbs_pipeline_key(i);
            if (strcmp(k->section, nbs_pipeline_sections[s])) continue;
            fprintf(f, "  %s: ", k->key);
            if (k->type == K_PATH) {
                yaml_path(f, (const char *)c + k->off, 0);
            } else if (k->type == K_SAMPLES) { /* a flow mapping; a sample with options as {path: ...} */
                const nbs_sample_list *l = (const void *)((const char *)c + k->off);
                fputc('{', f);
                for (int j = 0; j < l->n; j++) {
                    const nbs_sample *smp = &l->items[j];
                    fputs(j ? ", " : "", f);
                    yaml_scalar(f, smp->name, 1);
                    fputs(": ", f);
                    const int options = smp->format != NBS_FMT_AUTO || smp->layer_given;
                    if (options) fputs("{path: ", f);
                    yaml_path(f, smp->path, 1);
                    if (smp->format != NBS_FMT_AUTO) fprintf(f, ", format: %s", nbs_format_name(smp->format));
                    if (smp->layer_given) {
                        fputs(", layer: ", f);
                        yaml_scalar(f, smp->layer, 1);
                    }
                    if (options) fputc('}', f);
                }
                fputc('}', f);
            } else if (k->type == K_STRING) {
                yaml_scalar(f, (const char *)c + k->off, 0);
            } else if (k->type == K_NAMES) {
                const nbs_name_list *l = (const void *)((const char *)c + k->off);
                fputc('[', f);
                for (int j = 0; j < l->n; j++) {
                    if (j) fputs(", ", f);
                    yaml_scalar(f, l->names[j], 1);
                }
                fputc(']', f);
            } else {
                format_key(c, k, buf, sizeof buf);
                fputs(buf, f);
            }
            fputc('\n', f);
        }
    }
}

int nbs_pipeline_write_yaml(const nbs_config *c, const char *path, nbs_error *err) {
    char tmp[NBS_PATH_MAX];
    FILE *f;
    int st = nbs_io_atomic_open(path, tmp, &f, err);
    if (st) return st;
    nbs_pipeline_print_yaml(c, f);
    return nbs_io_atomic_close(f, tmp, path, err);
}
