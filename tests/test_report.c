#include "testutil.h"

#include <gsl/gsl_randist.h>
#include <gsl/gsl_rng.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nbsphere/io.h"
#include "nbsphere/integrate.h"
#include "nbsphere/report.h"

/* A synthetic run, built by hand: no training needed. */
#define D_MAX 10
typedef struct {
    nbs_collapse_report r;
    double kl[D_MAX], act[D_MAX], sw[D_MAX], sj[D_MAX], dn[D_MAX];
    nbs_dim_verdict v[D_MAX];
    nbs_diagnose_track track;
    nbs_train_log log;
    float *emb, *kappa;
    char **labels;
    int64_t n;
    nbs_report_input in;
} fixture;

static int count_of(const char *s, const char *needle) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

/* Gaussian d = 4: dims 1-2 active, 3 collapsed (since epoch 3 of the track), 4 inconsistent.
 * Sphere: the same verdicts judged by activity; d = 3 or 5. */
static void fixture_init(fixture *f, nbs_latent_kind latent, int d, int64_t n, int labelled) {
    memset(f, 0, sizeof *f);
    nbs_collapse_report *r = &f->r;
    const int sph = latent != NBS_LATENT_GAUSSIAN;
    r->d = d, r->latent = latent, r->n_cells = n < 2000 ? n : 2000;
    r->kl = f->kl, r->activity = f->act, r->sens_weight = f->sw, r->sens_jacobian = f->sj, r->verdict = f->v;
    r->decoder_nats = f->dn;
    r->tau_kl = 0.01, r->tau_sensitivity = 0.02, r->tau_activity = 0.03, r->tau_decoder_nats = 1.5, r->tau_decoder_relative = 0.05;
    for (int j = 0; j < d; j++) {
        f->kl[j] = sph ? NAN : 1.5 / (j + 1);
        f->act[j] = 0.8 / (j + 1);
        f->sw[j] = 0.3;
        f->sj[j] = 0.5;
        f->dn[j] = 8.0;
        f->v[j] = NBS_DIM_ACTIVE;
    }
    f->kl[2] = sph ? NAN : 0.002, f->act[2] = 0.001, f->sw[2] = 0.001, f->sj[2] = 0.0005;
    f->v[2] = NBS_DIM_COLLAPSED;
    f->dn[2] = 0.0002;
    f->sj[3] = 0.001, f->dn[3] = 0.3, f->v[3] = NBS_DIM_INCONSISTENT;
    r->n_active = d - 2, r->n_collapsed = 1, r->n_inconsistent = 1, r->n_inactive_units = 1;
    r->kl_total = sph ? 4.2 : 2.3;
    r->mi = sph ? NAN : 2.1, r->mi_batch = 128, r->recon_gain = 35.5, r->recon_gain_se = 1.25;
    for (int q = 0; q < 5; q++) r->kappa_q[q] = sph ? 5.0 * (q + 1) : NAN;
    r->model = NBS_MODEL_PARTIAL;
    snprintf(r->summary, sizeof r->summary, "1 of %d dimensions collapsed <and> 1 inconsistent", d);
    snprintf(r->remedies, sizeof r->remedies, "train.kl_schedule: cyclical; train.free_bits: 0.1");

    /* track: dimension 3 dips at epoch 1, recovers at 2, collapses from 3 on */
    nbs_error err = {0};
    for (int e = 1; e <= 5; e++) {
        nbs_collapse_report t = *r;
        double kl[D_MAX], act[D_MAX], sj[D_MAX];
        memcpy(kl, f->kl, sizeof kl), memcpy(act, f->act, sizeof act), memcpy(sj, f->sj, sizeof sj);
        if (e == 2) kl[2] = sph ? NAN : 0.5, act[2] = 0.5, sj[2] = 0.4;
        t.kl = kl, t.activity = act, t.sens_jacobian = sj;
        t.mi = sph ? NAN : 0.4 * e;
        t.n_active = e == 2 ? d - 1 : d - 2;
        assert_int_equal(nbs_diagnose_track_add(&f->track, e, &t, &err), NBS_OK);
    }
    /* 40 epochs of log with d KL terms (1 on the sphere) */
    const int K = sph ? 1 : d;
    f->log.kl_terms = K;
    for (int e = 1; e <= 40; e++) {
        nbs_epoch_record rec = {e, 900.0 / e + 300, 880.0 / e + 295, 3 + 1.0 / e, -(890.0 / e + 302),
                                880.0 / e + 297, 3.1, e < 10 ? e / 10.0 : 1.0, 0.5, NAN, NAN, 0.3, 0.1};
        if (e == 7) rec.val_elbo = NAN; /* a missing value leaves a gap, not a crash */
        double kd[D_MAX];
        for (int k = 0; k < K; k++) kd[k] = k == 2 ? 2.0 * exp(-0.3 * e) : 1.0 / (k + 1);
        assert_int_equal(nbs_train_log_append(&f->log, &rec, kd, &err), NBS_OK);
    }
    /* embedding: three groups; on the sphere unit vectors around three poles */
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, 11);
    f->n = n;
    f->emb = malloc(sizeof(float) * (size_t)(n * d + 1));
    f->kappa = malloc(sizeof(float) * (size_t)(n + 1));
    f->labels = labelled ? calloc((size_t)(n + 1), sizeof(char *)) : NULL;
    static const char *names[3] = {"B cells", "x<&>y", "NK"};
    for (int64_t i = 0; i < n; i++) {
        int g = (int)(i % 3);
        double s = 0;
        for (int k = 0; k < d; k++) {
            double v = (k == g ? 3.0 : 0.0) + gsl_ran_gaussian(rng, 0.5);
            f->emb[i * d + k] = (float)v;
            s += v * v;
        }
        if (sph)
            for (int k = 0; k < d; k++) f->emb[i * d + k] = (float)(f->emb[i * d + k] / sqrt(s));
        f->kappa[i] = (float)(10 * exp(gsl_ran_gaussian(rng, 1)));
        if (labelled && i % 50 != 7) f->labels[i] = strdup(names[g]);
    }
    gsl_rng_free(rng);
    nbs_report_input in = {&f->r, &f->track, &f->log, f->emb, n, d, sph ? f->kappa : NULL,
                           f->labels, "cell_type", "synthetic.h5ad", 0.91, 0.88, 15, NULL, NULL, NULL, NULL, NULL};
    f->in = in;
}

static void fixture_free(fixture *f) {
    nbs_diagnose_track_free(&f->track);
    nbs_train_log_free(&f->log);
    if (f->labels) nbs_io_free_labels(f->labels, f->n);
    free(f->emb);
    free(f->kappa);
}

/* The text of one <section id="..."> of the page; "" if absent. Static rotating buffer. */
static const char *section_of(const char *html, const char *id) {
    static char *buf;
    free(buf);
    buf = NULL;
    char key[64];
    snprintf(key, sizeof key, "<section id=\"%s\"", id);
    const char *s = strstr(html, key);
    if (!s) return "";
    const char *e = strstr(s, "</section>");
    size_t n = e ? (size_t)(e - s) : strlen(s);
    buf = malloc(n + 1);
    memcpy(buf, s, n);
    buf[n] = '\0';
    return buf;
}

/* No address outside the page may appear except the SVG namespace. */
static void assert_self_contained(const char *html) {
    const char *ns = "http://www.w3.org/2000/svg";
    int http = count_of(html, "http://"), https = count_of(html, "https://");
    assert_int_equal(https, 0);
    assert_int_equal(http, count_of(html, ns));
    assert_null(strstr(html, "<script"));
    assert_null(strstr(html, "<link"));
    assert_null(strstr(html, "@import"));
    assert_null(strstr(html, "url("));
    assert_non_null(strstr(html, "</html>"));
}

static int have_python(void) { return access("/usr/bin/python3", X_OK) == 0; }

static void test_json(void **state) {
    (void)state;
    fixture f;
    fixture_init(&f, NBS_LATENT_GAUSSIAN, 4, 300, 1);
    /* the label score's neighbours from the k-means tree: named with their recall */
    const nbs_knn_info knn = {.method = NBS_KNN_APPROXIMATE, .n_ref = 240, .k = 15, .recall = 0.97};
    f.in.knn_info = &knn;
    char *dir = tu_tmpdir();
    const char *path = tu_path(dir, "collapse_report.json");
    nbs_error err = {0};
    assert_int_equal(nbs_report_write_json(path, &f.in, &err), NBS_OK);
    char *j = tu_read_file(path, NULL);
    assert_non_null(j);
    assert_non_null(strstr(j, "\"knn_method\": \"approximate\", \"knn_recall\": 0.97"));
    assert_non_null(strstr(j, "\"tau_kl\": 0.01"));
    assert_non_null(strstr(j, "\"tau_sensitivity\": 0.02"));
    assert_non_null(strstr(j, "\"verdict\": \"partially collapsed\""));
    assert_non_null(strstr(j, "{\"dim\": 3, \"kl\": 0.002"));
    assert_non_null(strstr(j, "\"decoder_nats\": 0.0002, \"verdict\": \"collapsed\""));
    assert_non_null(strstr(j, "\"reconstruction_gain_se\": 1.25"));
    assert_non_null(strstr(j, "\"verdict\": \"collapsed\", \"collapsed_since_epoch\": 3}"));
    /* dimension 4 is inconsistent the other way (sent, ignored): the encoder never stopped */
    assert_non_null(strstr(j, "\"verdict\": \"inconsistent\", \"collapsed_since_epoch\": null}"));
    assert_null(strstr(j, "kappa_quantiles"));
    assert_null(strstr(j, "nan"));
    if (have_python()) {
        char cmd[8192];
        snprintf(cmd, sizeof cmd,
                 "/usr/bin/python3 -c \"import json,sys\n"
                 "d = json.load(open(sys.argv[1]))\n"
                 "assert d['thresholds'] == {'tau_kl': 0.01, 'tau_sensitivity': 0.02, 'tau_activity': 0.03, "
                 "'tau_decoder_nats': 1.5, 'tau_decoder_relative': 0.05}\n"
                 "assert d['reconstruction_gain_se'] == 1.25 and d['decoder_uses_z'] is True\n"
                 "assert [x['decoder_nats'] for x in d['dimensions']] == [8, 8, 0.0002, 0.3]\n"
                 "assert set(d['training']) >= {'unstable', 'overfits', 'message'}\n"
                 "dims = d['dimensions']\n"
                 "assert [x['dim'] for x in dims] == [1, 2, 3, 4]\n"
                 "assert dims[2]['verdict'] == 'collapsed' and dims[2]['collapsed_since_epoch'] == 3\n"
                 "assert dims[0]['collapsed_since_epoch'] is None\n"
                 "assert d['latent'] == 'gaussian' and d['latent_dim'] == 4 and d['cells'] == 300\n"
                 "assert d['mutual_information']['batch'] == 128\n"
                 "assert d['quality'] == {'knn_k': 15, 'label_column': 'cell_type', 'embedding': 0.91, 'pca': 0.88, "
                 "'knn_method': 'approximate', 'knn_recall': 0.97}\n"
                 "t = d['tracking']\n"
                 "assert t['epochs'] == [1, 2, 3, 4, 5] and len(t['kl']) == 5 and len(t['kl'][0]) == 4\n"
                 "assert t['active'] == [2, 3, 2, 2, 2]\n"
                 "assert d['summary'].startswith('1 of 4 dimensions collapsed <and>')\n"
                 "\" '%s'",
                 path);
        assert_int_equal(system(cmd), 0);
    } else { /* at least the brackets balance */
        int depth = 0, in_str = 0;
        for (const char *p = j; *p; p++) {
            if (in_str) {
                if (*p == '\\') p++;
                else if (*p == '"') in_str = 0;
                continue;
            }
            if (*p == '"') in_str = 1;
            depth += (*p == '{' || *p == '[') - (*p == '}' || *p == ']');
            assert_true(depth >= 0);
        }
        assert_int_equal(depth, 0);
    }
    free(j);

    /* sphere: no per-dimension KL, kappa quantiles, MI null; the track judges by activity */
    fixture s;
    fixture_init(&s, NBS_LATENT_VMF, 5, 200, 0);
    s.in.knn_embedding = s.in.knn_pca = NAN;
    assert_int_equal(nbs_report_write_json(path, &s.in, &err), NBS_OK);
    j = tu_read_file(path, NULL);
    assert_non_null(strstr(j, "\"kappa_quantiles\": {\"p05\": 5, \"p25\": 10"));
    assert_non_null(strstr(j, "{\"dim\": 1, \"kl\": null, \"activity\": 0.8"));
    assert_non_null(strstr(j, "\"collapsed\", \"collapsed_since_epoch\": 3}"));
    assert_non_null(strstr(j, "\"nats\": null"));
    assert_null(strstr(j, "\"quality\""));
    if (have_python()) {
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 -c \"import json,sys; json.load(open(sys.argv[1]))\" '%s'", path);
        assert_int_equal(system(cmd), 0);
    }
    free(j);
    fixture_free(&s);

    /* dimension 4 turned the other way: its encoder stops sending from epoch 2 on while the
     * decoder still responds -- the usual shape of a fresh collapse, dated by the encoder */
    f.kl[3] = 0.001, f.sj[3] = 0.5, f.r.n_unsent = 1;
    for (int e = 1; e < f.track.n; e++) f.track.kl[(int64_t)e * f.track.d + 3] = 0.001;
    assert_int_equal(nbs_report_write_json(path, &f.in, &err), NBS_OK);
    j = tu_read_file(path, NULL);
    assert_non_null(strstr(j, "{\"dim\": 4, \"kl\": 0.001"));
    assert_non_null(strstr(j, "\"verdict\": \"inconsistent\", \"collapsed_since_epoch\": 2}"));
    free(j);
    fixture_free(&f);
    tu_rmtree(dir);
    free(dir);
}

static void test_tsv(void **state) {
    (void)state;
    fixture f;
    fixture_init(&f, NBS_LATENT_GAUSSIAN, 4, 30, 1);
    char *dir = tu_tmpdir();
    const char *path = tu_path(dir, "collapse_dimensions.tsv");
    nbs_error err = {0};
    assert_int_equal(nbs_report_write_tsv(path, &f.in, &err), NBS_OK);
    char *t = tu_read_file(path, NULL);
    assert_non_null(t);
    assert_int_equal(count_of(t, "\n"), 5);
    const char *hdr = "dim\tkl\tactivity\tsensitivity_weight\tsensitivity_jacobian\tdecoder_nats\tverdict\t"
                      "collapsed_since_epoch\n";
    assert_true(strncmp(t, hdr, strlen(hdr)) == 0);
    assert_non_null(strstr(t, "\n3\t0.002\t0.001\t0.001\t0.0005\t0.0002\tcollapsed\t3\n"));
    assert_non_null(strstr(t, "\n4\t0.375\t0.2\t0.3\t0.001\t0.3\tinconsistent\tNA\n"));
    free(t);
    /* without a track nothing is known about when: NA */
    f.in.track = NULL;
    assert_int_equal(nbs_report_write_tsv(path, &f.in, &err), NBS_OK);
    t = tu_read_file(path, NULL);
    assert_non_null(strstr(t, "\tcollapsed\tNA\n"));
    free(t);
    /* the sphere has no per-dimension KL */
    fixture s;
    fixture_init(&s, NBS_LATENT_VMF, 3, 30, 0);
    assert_int_equal(nbs_report_write_tsv(path, &s.in, &err), NBS_OK);
    t = tu_read_file(path, NULL);
    assert_non_null(strstr(t, "\n1\tNA\t0.8\t"));
    assert_non_null(strstr(t, "\n3\tNA\t0.001\t0.001\t0.0005\t0.0002\tcollapsed\t3\n"));
    free(t);
    fixture_free(&s);
    fixture_free(&f);
    tu_rmtree(dir);
    free(dir);
}

static void test_html_gaussian(void **state) {
    (void)state;
    fixture f;
    fixture_init(&f, NBS_LATENT_GAUSSIAN, 4, 900, 1);
    char *dir = tu_tmpdir();
    const char *path = tu_path(dir, "report.html");
    nbs_error err = {0};
    assert_int_equal(nbs_report_write_html(path, &f.in, &err), NBS_OK);
    char *h = tu_read_file(path, NULL);
    assert_non_null(h);
    assert_self_contained(h);
    assert_non_null(strstr(h, "class=\"banner v-partial\""));
    assert_non_null(strstr(h, "collapsed &lt;and&gt; 1 inconsistent"));
    assert_non_null(strstr(h, "train.kl_schedule: cyclical"));
    assert_non_null(strstr(h, "\xcf\x84_KL = 0.01 nats"));
    assert_int_equal(count_of(section_of(h, "training"), "<svg"), 4);
    assert_int_equal(count_of(section_of(h, "kl-heatmap"), "<svg"), 1);
    assert_int_equal(count_of(section_of(h, "dimensions"), "<svg"), 3);
    assert_int_equal(count_of(section_of(h, "tracking"), "<svg"), 2);
    assert_int_equal(count_of(section_of(h, "embedding"), "<svg"), 1);
    assert_string_equal(section_of(h, "kappa"), "");
    assert_null(strstr(h, "sphere-disk"));
    /* thresholds dashed in the bar panels; collapsed dimension labelled in each */
    const char *dims = section_of(h, "dimensions");
    assert_int_equal(count_of(dims, "stroke-dasharray"), 3);
    assert_int_equal(count_of(dims, ">collapsed</text>"), 3 + 3); /* labels + legends */
    /* legend: escaped label with its count, unlabelled cells counted apart */
    const char *emb = section_of(h, "embedding");
    assert_non_null(strstr(emb, "x&lt;&amp;&gt;y ("));
    assert_null(strstr(h, "x<&>y"));
    assert_non_null(strstr(emb, "unlabelled (18)"));
    assert_non_null(strstr(emb, "All 900 cells drawn"));
    assert_non_null(strstr(emb, "PC1 ("));
    /* all 900 cells are dots */
    assert_int_equal(count_of(emb, "h0M") + count_of(emb, "h0\""), 900);
    assert_non_null(strstr(h, "embedding 0.910, PCA of the counts 0.880"));
    free(h);
    fixture_free(&f);
    tu_rmtree(dir);
    free(dir);
}

/* Points of the embedding path ("Mx yh0") all inside a disk of the given centre and radius. */
static int points_in_disk(const char *svg, double cx, double cy, double r, int *count) {
    int inside = 1;
    *count = 0;
    for (const char *p = svg; (p = strstr(p, "h0")); p += 2) {
        const char *m = p;
        while (m > svg && *m != 'M') m--;
        double x, y;
        if (*m != 'M' || sscanf(m, "M%lf %lfh0", &x, &y) != 2) continue;
        (*count)++;
        if (hypot(x - cx, y - cy) > r + 0.25) inside = 0;
    }
    return inside;
}

static void test_html_sphere(void **state) {
    (void)state;
    fixture f;
    fixture_init(&f, NBS_LATENT_VMF, 3, 1200, 1);
    /* spread some cells over the whole sphere, including the far side of the mean direction */
    gsl_rng *rng = gsl_rng_alloc(gsl_rng_mt19937);
    gsl_rng_set(rng, 3);
    for (int64_t i = 0; i < 300; i++) {
        double v[3];
        gsl_ran_dir_3d(rng, v, v + 1, v + 2);
        for (int k = 0; k < 3; k++) f.emb[i * 3 + k] = (float)v[k];
    }
    gsl_rng_free(rng);
    char *dir = tu_tmpdir();
    const char *path = tu_path(dir, "report.html");
    nbs_error err = {0};
    assert_int_equal(nbs_report_write_html(path, &f.in, &err), NBS_OK);
    char *h = tu_read_file(path, NULL);
    assert_self_contained(h);
    assert_int_equal(count_of(section_of(h, "kappa"), "<svg"), 1);
    /* no per-dimension KL on the sphere: sensitivity and activity only */
    assert_int_equal(count_of(section_of(h, "dimensions"), "<svg"), 2);
    /* MI is not estimated on the sphere: only the verdict counts are tracked */
    assert_int_equal(count_of(section_of(h, "tracking"), "<svg"), 1);
    const char *emb = section_of(h, "embedding");
    const char *disk = strstr(emb, "class=\"sphere-disk\"");
    assert_non_null(disk);
    double cx, cy, r;
    assert_int_equal(sscanf(disk, "class=\"sphere-disk\" cx=\"%lf\" cy=\"%lf\" r=\"%lf\"", &cx, &cy, &r), 3);
    int n;
    assert_true(points_in_disk(emb, cx, cy, r, &n));
    assert_int_equal(n, 1200);
    free(h);

    /* d = 5: principal components, no disk */
    fixture g;
    fixture_init(&g, NBS_LATENT_VMF, 5, 100, 0);
    assert_int_equal(nbs_report_write_html(path, &g.in, &err), NBS_OK);
    h = tu_read_file(path, NULL);
    assert_null(strstr(h, "sphere-disk"));
    assert_non_null(strstr(section_of(h, "embedding"), "PC2 ("));
    assert_non_null(strstr(section_of(h, "embedding"), "all cells (100)"));
    assert_int_equal(count_of(section_of(h, "kappa"), "<svg"), 1);
    free(h);
    fixture_free(&g);
    fixture_free(&f);
    tu_rmtree(dir);
    free(dir);
}

static void test_html_empty_inputs(void **state) {
    (void)state;
    fixture f;
    fixture_init(&f, NBS_LATENT_GAUSSIAN, 4, 10, 0);
    nbs_report_input in = f.in;
    in.n_cells = 0, in.labels = NULL, in.log = NULL, in.track = NULL, in.embedding = NULL;
    in.title = NULL, in.label_column = NULL, in.knn_embedding = in.knn_pca = NAN;
    char *dir = tu_tmpdir();
    nbs_error err = {0};
    assert_int_equal(nbs_report_write_html(tu_path(dir, "report.html"), &in, &err), NBS_OK);
    assert_int_equal(nbs_report_write_json(tu_path(dir, "r.json"), &in, &err), NBS_OK);
    assert_int_equal(nbs_report_write_tsv(tu_path(dir, "r.tsv"), &in, &err), NBS_OK);
    char *h = tu_read_file(tu_path(dir, "report.html"), NULL);
    assert_self_contained(h);
    assert_int_equal(count_of(section_of(h, "training"), "<svg"), 0);
    assert_non_null(strstr(section_of(h, "training"), "No training log"));
    assert_int_equal(count_of(section_of(h, "embedding"), "<svg"), 0);
    assert_string_equal(section_of(h, "tracking"), "");
    assert_int_equal(count_of(section_of(h, "dimensions"), "<svg"), 3);
    free(h);
    char *j = tu_read_file(tu_path(dir, "r.json"), NULL);
    assert_non_null(strstr(j, "\"tracking\": null"));
    assert_non_null(strstr(j, "\"cells\": 0"));
    free(j);
    /* an empty log (n == 0) and an empty track are "none" too; d = 0 still gives valid files */
    nbs_train_log empty_log = {0};
    nbs_diagnose_track empty_track = {0};
    in.log = &empty_log, in.track = &empty_track;
    f.r.d = 0;
    assert_int_equal(nbs_report_write_html(tu_path(dir, "report.html"), &in, &err), NBS_OK);
    assert_int_equal(nbs_report_write_json(tu_path(dir, "r.json"), &in, &err), NBS_OK);
    j = tu_read_file(tu_path(dir, "r.json"), NULL);
    assert_non_null(strstr(j, "\"dimensions\": [],"));
    free(j);
    /* labels present with every entry NULL: all cells unlabelled */
    f.r.d = 4;
    char *none[10] = {0};
    in = f.in;
    in.labels = none;
    assert_int_equal(nbs_report_write_html(tu_path(dir, "report.html"), &in, &err), NBS_OK);
    h = tu_read_file(tu_path(dir, "report.html"), NULL);
    assert_non_null(strstr(h, "unlabelled (10)"));
    free(h);
    fixture_free(&f);
    tu_rmtree(dir);
    free(dir);
}

static void test_many_labels_and_subsample(void **state) {
    (void)state;
    fixture f;
    fixture_init(&f, NBS_LATENT_GAUSSIAN, 4, 12000, 1);
    /* 50 words: 19 coloured, the rest summed up as "other" */
    char buf[32];
    for (int64_t i = 0; i < f.n; i++) {
        free(f.labels[i]);
        snprintf(buf, sizeof buf, "type %02d", (int)(i % 50));
        f.labels[i] = strdup(buf);
    }
    char *dir = tu_tmpdir();
    const char *path = tu_path(dir, "report.html");
    nbs_error err = {0};
    assert_int_equal(nbs_report_write_html(path, &f.in, &err), NBS_OK);
    char *h = tu_read_file(path, NULL);
    const char *emb = section_of(h, "embedding");
    assert_non_null(strstr(emb, "31 other labels (7440)"));
    assert_non_null(strstr(emb, "type 00 (240)"));
    assert_non_null(strstr(emb, "5000 of 12000 cells drawn"));
    assert_int_equal(count_of(emb, "h0M") + count_of(emb, "h0\""), 5000);
    free(h);
    /* a continuous number (pseudotime): a colour bar instead of one entry per value */
    for (int64_t i = 0; i < f.n; i++) {
        free(f.labels[i]);
        snprintf(buf, sizeof buf, "%.3f", (double)i / f.n);
        f.labels[i] = strdup(buf);
    }
    f.in.label_column = "pseudotime";
    assert_int_equal(nbs_report_write_html(path, &f.in, &err), NBS_OK);
    h = tu_read_file(path, NULL);
    emb = section_of(h, "embedding");
    assert_null(strstr(emb, "0.500 ("));
    assert_non_null(strstr(emb, "pseudotime"));
    assert_true(count_of(emb, "<rect") >= 32);
    free(h);
    /* few distinct numbers (clusters 0..5) stay categories, in numeric order */
    for (int64_t i = 0; i < f.n; i++) {
        free(f.labels[i]);
        snprintf(buf, sizeof buf, "%d", (int)(i % 6) * 2);
        f.labels[i] = strdup(buf);
    }
    assert_int_equal(nbs_report_write_html(path, &f.in, &err), NBS_OK);
    h = tu_read_file(path, NULL);
    emb = section_of(h, "embedding");
    const char *a = strstr(emb, ">2 (2000)<"), *b = strstr(emb, ">10 (2000)<");
    assert_non_null(a);
    assert_non_null(b);
    assert_true(a < b);
    free(h);
    fixture_free(&f);
    tu_rmtree(dir);
    free(dir);
}

/* A report of 3000 cells stays small (dots, not circles; one path per colour). With
 * NBS_REPORT_DEMO=folder set, the reports are kept there to look at (the README's screenshot
 * is made from them). */
static void test_demo_reports_small(void **state) {
    (void)state;
    const char *keep = getenv("NBS_REPORT_DEMO");
    char *dir = tu_tmpdir();
    const char *out = keep && *keep ? keep : dir;
    fixture f, s;
    fixture_init(&f, NBS_LATENT_GAUSSIAN, 8, 3000, 1);
    fixture_init(&s, NBS_LATENT_VMF, 3, 3000, 1);
    nbs_error err = {0};
    char gpath[4096], spath[4096];
    snprintf(gpath, sizeof gpath, "%s", tu_path(out, "report_gaussian.html"));
    snprintf(spath, sizeof spath, "%s", tu_path(out, "report_sphere.html"));
    assert_int_equal(nbs_report_write_html(gpath, &f.in, &err), NBS_OK);
    assert_int_equal(nbs_report_write_json(tu_path(out, "report_gaussian.json"), &f.in, &err), NBS_OK);
    assert_int_equal(nbs_report_write_html(spath, &s.in, &err), NBS_OK);
    size_t ng = 0, ns = 0;
    char *g = tu_read_file(gpath, &ng), *h = tu_read_file(spath, &ns);
    assert_true(ng > 20000 && ng < 300000);
    assert_true(ns > 20000 && ns < 300000);
    /* coordinates carry one decimal */
    assert_null(strstr(g, ".00 "));
    free(g);
    free(h);
    fixture_free(&s);
    fixture_free(&f);
    tu_rmtree(dir);
    free(dir);
}

static void test_write_failure_leaves_nothing(void **state) {
    (void)state;
    fixture f;
    fixture_init(&f, NBS_LATENT_GAUSSIAN, 4, 20, 1);
    char *dir = tu_tmpdir();
    nbs_error err = {0};
    /* the target is a folder: the rename fails, and the temporary file is removed */
    const char *target = tu_path(dir, "report.html");
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s/x'", target);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(nbs_report_write_html(target, &f.in, &err), NBS_ERR_IO);
    assert_non_null(strstr(err.msg, "report.html"));
    assert_int_equal(tu_count_files(dir), 1);
    /* a missing folder is named */
    assert_int_equal(nbs_report_write_json(tu_path(dir, "no/such/r.json"), &f.in, &err), NBS_ERR_IO);
    assert_non_null(strstr(err.msg, "no/such/r.json"));
    assert_int_equal(nbs_report_write_tsv(tu_path(dir, "no/such/r.tsv"), &f.in, &err), NBS_ERR_IO);
    /* a report without one is a bug in the caller, said so */
    nbs_report_input bad = f.in;
    bad.report = NULL;
    assert_int_equal(nbs_report_write_json(tu_path(dir, "r.json"), &bad, &err), NBS_ERR_INTERNAL);
    assert_int_equal(tu_count_files(dir), 1);
    fixture_free(&f);
    tu_rmtree(dir);
    free(dir);
}

/* The integration section: JSON object with each defined metric and its definition (valid JSON),
 * integration.tsv's rows, the HTML table and the map drawn twice (by batch, by label); a batch
 * that follows the labels gives the confounding warning; one batch leaves the batch scores out. */
static void test_integration_reports(void **state) {
    (void)state;
    fixture f;
    fixture_init(&f, NBS_LATENT_GAUSSIAN, 4, 300, 1);
    int32_t batch[300], codes[300];
    char *batch_names[2] = {"ctrl", "stim"}, *bl[300];
    int n_labels = 0;
    nbs_error err = {0};
    assert_int_equal(nbs_eval_label_codes(f.labels, 300, codes, &n_labels, &err), NBS_OK);
    char *names[8];
    for (int i = 299; i >= 0; i--)
        if (codes[i] >= 0) names[codes[i]] = f.labels[i];
    for (int i = 0; i < 300; i++) batch[i] = (i / 7) % 2, bl[i] = batch_names[batch[i]];
    nbs_integration r;
    assert_int_equal(nbs_integration_metrics(f.emb, 300, 4, NBS_METRIC_EUCLIDEAN, batch, 2, codes, n_labels, names,
                                             0.91, NULL, 3, &r, &err), NBS_OK);
    f.in.integration = &r;
    f.in.batch_key = "group_id";
    f.in.batch_labels = bl;
    char *dir = tu_tmpdir();
    char json[512], tsv[512], html[512];
    snprintf(json, sizeof json, "%s", tu_path(dir, "collapse_report.json"));
    snprintf(tsv, sizeof tsv, "%s", tu_path(dir, "integration.tsv"));
    snprintf(html, sizeof html, "%s", tu_path(dir, "report.html"));
    assert_int_equal(nbs_report_write_json(json, &f.in, &err), NBS_OK);
    char *j = tu_read_file(json, NULL);
    assert_non_null(strstr(j, "\"integration\": {"));
    assert_non_null(strstr(j, "\"batch_key\": \"group_id\""));
    assert_non_null(strstr(j, "\"ilisi\": {\"value\": "));
    assert_non_null(strstr(j, "\"overall\": {\"value\": "));
    assert_non_null(strstr(j, "\"lisi_k\": 90"));
    assert_non_null(strstr(j, "\"confounded\": false"));
    assert_non_null(strstr(j, "covariates, which stay fixed in both terms"));
    if (have_python()) {
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 -c \"import json,sys\n"
                 "g=json.load(open(sys.argv[1]))['integration']\n"
                 "m=g['metrics']\n"
                 "assert len(m)==11, m.keys()\n"
                 "assert all(0<=v['value']<=1 and v['definition'] for v in m.values())\n"
                 "assert abs(m['overall']['value']-(0.4*m['batch_score']['value']+0.6*m['bio_score']['value']))<1e-8\n"
                 "\" %s", json);
        assert_int_equal(system(cmd), 0);
    }
    free(j);
    assert_int_equal(nbs_report_write_integration_tsv(tsv, &f.in, &err), NBS_OK);
    char *t = tu_read_file(tsv, NULL);
    assert_int_equal(count_of(t, "\n"), 12); /* header and 11 metrics */
    assert_non_null(strstr(t, "batch_asw\tbatch\t"));
    free(t);
    assert_int_equal(nbs_report_write_html(html, &f.in, &err), NBS_OK);
    char *h = tu_read_file(html, NULL);
    const char *sec = section_of(h, "integration");
    assert_int_equal(count_of(sec, "<svg"), 2);
    assert_non_null(strstr(sec, "coloured by group_id"));
    assert_non_null(strstr(sec, "coloured by cell_type"));
    assert_non_null(strstr(sec, "graph connectivity"));
    assert_null(strstr(sec, "confounded"));
    free(h);

    /* the batch follows the labels: confounded, in the JSON and the page */
    for (int i = 0; i < 300; i++) batch[i] = codes[i] == 0 ? 0 : 1, bl[i] = batch_names[batch[i]];
    assert_int_equal(nbs_integration_metrics(f.emb, 300, 4, NBS_METRIC_EUCLIDEAN, batch, 2, codes, n_labels, names,
                                             0.91, NULL, 3, &r, &err), NBS_OK);
    assert_true(r.confounded);
    assert_int_equal(nbs_report_write_json(json, &f.in, &err), NBS_OK);
    j = tu_read_file(json, NULL);
    assert_non_null(strstr(j, "\"warning\": \"batch and labels are confounded: correcting for the batch may remove "
                              "biology\""));
    free(j);
    assert_int_equal(nbs_report_write_html(html, &f.in, &err), NBS_OK);
    h = tu_read_file(html, NULL);
    assert_non_null(strstr(section_of(h, "integration"), "labels found in one batch only: "));
    free(h);

    /* one batch: no batch scores, no overall, a note */
    for (int i = 0; i < 300; i++) batch[i] = 0;
    assert_int_equal(nbs_integration_metrics(f.emb, 300, 4, NBS_METRIC_EUCLIDEAN, batch, 1, codes, n_labels, names,
                                             0.91, NULL, 3, &r, &err), NBS_OK);
    assert_int_equal(nbs_report_write_json(json, &f.in, &err), NBS_OK);
    j = tu_read_file(json, NULL);
    assert_null(strstr(j, "\"ilisi\""));
    assert_null(strstr(j, "\"overall\""));
    assert_non_null(strstr(j, "\"notes\": \"one batch: batch-correction scores not defined"));
    assert_null(strstr(j, "NaN"));
    free(j);
    tu_rmtree(dir);
    free(dir);
    fixture_free(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_tsv),
        cmocka_unit_test(test_html_gaussian),
        cmocka_unit_test(test_html_sphere),
        cmocka_unit_test(test_html_empty_inputs),
        cmocka_unit_test(test_many_labels_and_subsample),
        cmocka_unit_test(test_write_failure_leaves_nothing),
        cmocka_unit_test(test_demo_reports_small),
        cmocka_unit_test(test_integration_reports),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
