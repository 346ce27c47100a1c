/* libFuzzer harness: pipeline YAML through nbs_pipeline_load_string, then one --set override
 * taken from the input's last line, the way the CLI applies them. */
#include "fuzz_util.h"
#include "nbsphere/pipeline.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    nbs_log_set_handler(fuzz_quiet_log, NULL);
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    /* a last line holding '=' doubles as an override, e.g. "train.epochs=[1" */
    const char *sets[1];
    int n_sets = 0;
    char *nl = strrchr(text, '\n');
    if (nl && strchr(nl + 1, '=')) {
        *nl = '\0';
        sets[n_sets++] = nl + 1;
    }
    static nbs_pipeline p; /* large (paths): keep it off the stack */
    nbs_error err = {0};
    int rc = nbs_pipeline_load_string(text, "fuzz.yaml", "/nonexistent-nbs-fuzz", sets, n_sets, 0, &p, &err);
    fuzz_check_error(rc, &err);
    if (!rc) {
        /* what was accepted must print back as text */
        char buf[NBS_PATH_MAX + 64];
        for (int i = 0; i < nbs_pipeline_n_keys(); i++)
            if (nbs_pipeline_format_value(&p.config, nbs_pipeline_key_name(i), buf, sizeof buf) < 0) abort();
    }
    free(text);
    return 0;
}
