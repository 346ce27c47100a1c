/* Writers: round trips through our readers, byte-identical output for the same data, refusal
 * of a copy whose cells differ, and (where /usr/bin/python3 has anndata and h5py) a check that
 * anndata reads the h5ad and that the 10x file has the layout scanpy.read_10x_h5 reads. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nbsphere/io.h"

static nbs_matrix *small_real(void) {
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    int rc = nbs_io_read_10x_h5(tu_data("tenx_h5/scanpy_tests/3.0.0/filtered_feature_bc_matrix.h5"), NULL, &m, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, NBS_OK);
    return m;
}

static float *make_embedding(int64_t n, int d) {
    float *e = malloc((size_t)n * (size_t)d * sizeof *e);
    for (int64_t i = 0; i < n * d; i++) e[i] = (float)((i * 37) % 101) / 7.0f - 3.0f;
    return e;
}

/* 1 when /usr/bin/python3 can import the modules (the checks below are skipped visibly
 * otherwise: `apt-get install python3-anndata`). */
static int have_python(const char *modules) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 -c 'import %s' >/dev/null 2>&1", modules);
    return system(cmd) == 0;
}

/* Runs a Python snippet (written to a file) and returns its stdout (malloc'd). */
static char *python(const char *dir, const char *script) {
    const char *py = tu_path(dir, "check.py");
    assert_int_equal(tu_write_file(py, script), 0);
    char cmd[8400];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' > '%s/py.out' 2>&1", py, dir);
    int rc = system(cmd);
    char *out = tu_read_file(tu_path(dir, "py.out"), NULL);
    if (rc) print_message("python failed:\n%s\n", out ? out : "");
    assert_int_equal(rc, 0);
    return out;
}

static void test_embedding_tsv(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    char *bc[2] = {"AAAC-1", "AAAG-1"};
    float emb[6] = {0.5f, -1.25f, 3, 1.0f / 3.0f, 0, 2};
    float kappa[2] = {10, 250.5f};
    const char *names[1] = {"kappa"};
    nbs_error err = {0};
    const char *p = tu_path(dir, "embedding.tsv");
    assert_int_equal(nbs_io_write_embedding_tsv(p, bc, 2, 3, emb, 1, names, kappa, &err), NBS_OK);
    char *text = tu_read_file(p, NULL);
    assert_non_null(text);
    assert_non_null(strstr(text, "barcode\tdim1\tdim2\tdim3\tkappa\n"));
    assert_non_null(strstr(text, "AAAC-1\t0.5\t-1.25\t3\t10\n"));
    assert_non_null(strstr(text, "AAAG-1\t0.333333343\t0\t2\t250.5\n")); /* float32 exactly */
    free(text);
    assert_int_equal(tu_count_files(dir), 1); /* no temporary left */
    /* a folder that does not exist: an error naming the file, nothing written */
    assert_int_equal(nbs_io_write_embedding_tsv(tu_path(dir, "no/such/e.tsv"), bc, 2, 3, emb, 0, NULL, NULL, &err),
                     NBS_ERR_IO);
    assert_non_null(strstr(err.msg, "e.tsv"));
    tu_rmtree(dir);
    free(dir);
}

static void test_new_h5ad_round_trip(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("tenx_h5/scanpy_tests/3.0.0/filtered_feature_bc_matrix.h5");
    nbs_matrix *m = small_real();
    char *dir = tu_tmpdir();
    float *emb = make_embedding(m->n_cells, 5);
    float *kappa = make_embedding(m->n_cells, 1);
    /* covariates as obs columns: a categorical (codes i % 2 of the pair, stride 2) and numbers */
    int32_t *codes = malloc(sizeof *codes * (size_t)m->n_cells * 2);
    double *mito = malloc(sizeof *mito * (size_t)m->n_cells);
    assert_true(codes && mito);
    for (int64_t i = 0; i < m->n_cells; i++) codes[2 * i] = (int32_t)(i % 2), codes[2 * i + 1] = 0, mito[i] = 0.25 * (double)i;
    char *cats[2] = {"p", "q"};
    const nbs_obs_column cols[2] = {{"sample", 2, cats, codes, NULL, 2}, {"mito", 0, NULL, NULL, mito, 1}};
    nbs_embedding_meta meta = {.key = "X_nbsphere", .latent = "vmf", .metric = "cosine", .version = "0.1.0",
                               .obs_kappa = kappa, .batch_key = "sample", .obs_columns = cols, .n_obs_columns = 2};
    nbs_error err = {0};
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s", tu_path(dir, "a.h5ad"));
    snprintf(b, sizeof b, "%s", tu_path(dir, "b.h5ad"));
    assert_int_equal(nbs_io_write_h5ad(a, NULL, m, 5, emb, &meta, &err), NBS_OK);
    sleep(1); /* HDF5 time stamps have one-second resolution: a stamp would differ now */
    assert_int_equal(nbs_io_write_h5ad(b, NULL, m, 5, emb, &meta, &err), NBS_OK);
    assert_true(tu_same_bytes(a, b));
    nbs_matrix *back = NULL;
    int rc = nbs_io_read_h5ad(a, "", &back, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, NBS_OK);
    tu_expect_same_matrix(m, back);
    char **l = NULL;
    assert_int_equal(nbs_io_read_h5ad_obs(a, "nbsphere_kappa", back, &l, &err), NBS_OK);
    char want[64];
    snprintf(want, sizeof want, "%.10g", (double)kappa[7]);
    assert_string_equal(l[7], want);
    nbs_io_free_labels(l, back->n_cells);
    assert_int_equal(nbs_io_read_h5ad_obs(a, "sample", back, &l, &err), NBS_OK); /* the categorical */
    assert_string_equal(l[0], "p");
    assert_string_equal(l[7], "q");
    nbs_io_free_labels(l, back->n_cells);
    nbs_matrix_free(back);

    if (!have_python("anndata")) {
        print_message("SKIP (part): /usr/bin/python3 has no anndata; install python3-anndata to check the file "
                      "with anndata\n");
    } else {
        char script[9000];
        snprintf(script, sizeof script,
                 "import anndata, numpy as np\n"
                 "a = anndata.read_h5ad('%s')\n"
                 "e = a.obsm['X_nbsphere']\n"
                 "print('shape', a.shape, e.shape, e.dtype)\n"
                 "print('e01', '%%.9g' %% float(e[0, 1]))\n"
                 "print('sum', int(a.X.sum()))\n"
                 "print('metric', a.uns['nbsphere']['metric'], a.uns['nbsphere']['latent'])\n"
                 "print('kappa', a.obs['nbsphere_kappa'].shape[0])\n"
                 "print('sample', a.obs['sample'].dtype, list(a.obs['sample'].cat.categories), a.obs['sample'].iloc[3])\n"
                 "print('mito', a.obs['mito'].dtype, a.obs['mito'].iloc[4], a.uns['nbsphere']['batch_key'])\n"
                 "print('bc0', a.obs_names[0], a.var_names[0], a.var['gene_ids'][0])\n",
                 a);
        char *out = python(dir, script);
        double sum = 0;
        for (int64_t k = 0; k < m->nnz; k++) sum += m->data[k];
        char line[256];
        snprintf(line, sizeof line, "shape (%lld, %lld) (%lld, 5) float32", (long long)m->n_cells, (long long)m->n_genes,
                 (long long)m->n_cells);
        if (!strstr(out, line)) print_message("%s\nwanted %s\n", out, line);
        assert_non_null(strstr(out, line));
        snprintf(line, sizeof line, "sum %.0f\n", sum);
        assert_non_null(strstr(out, line));
        assert_non_null(strstr(out, "metric cosine vmf"));
        snprintf(line, sizeof line, "kappa %lld", (long long)m->n_cells);
        assert_non_null(strstr(out, line));
        assert_non_null(strstr(out, "sample category ['p', 'q'] q\n"));
        assert_non_null(strstr(out, "mito float64 1.0 sample\n"));
        snprintf(line, sizeof line, "bc0 %s %s %s", m->barcodes[0], m->gene_names[0], m->gene_ids[0]);
        assert_non_null(strstr(out, line));
        snprintf(line, sizeof line, "e01 %.9g\n", (double)emb[1]);
        if (!strstr(out, line)) print_message("%s\nwanted %s\n", out, line);
        assert_non_null(strstr(out, line));
        free(out);
    }
    free(emb);
    free(kappa);
    free(codes);
    free(mito);
    nbs_matrix_free(m);
    tu_rmtree(dir);
    free(dir);
}

static void test_copy_h5ad(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("pbmc3k/pbmc3k_counts.h5ad");
    const char *src = tu_data("pbmc3k/pbmc3k_counts.h5ad");
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_h5ad(src, "", &m, &err), NBS_OK);
    char *dir = tu_tmpdir();
    float *emb = make_embedding(m->n_cells, 4);
    nbs_embedding_meta meta = {.key = "X_nbsphere", .latent = "gaussian", .metric = "euclidean", .version = "0.1.0"};
    char out[4200];
    snprintf(out, sizeof out, "%s", tu_path(dir, "copy.h5ad"));
    int rc = nbs_io_write_h5ad(out, src, m, 4, emb, &meta, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, NBS_OK);
    /* everything of the source is still there: counts, names, obs columns */
    nbs_matrix *back = NULL;
    assert_int_equal(nbs_io_read_h5ad(out, "", &back, &err), NBS_OK);
    tu_expect_same_matrix(m, back);
    char **l = NULL;
    assert_int_equal(nbs_io_read_h5ad_obs(out, "cell_type", back, &l, &err), NBS_OK);
    assert_non_null(l[0]);
    nbs_io_free_labels(l, back->n_cells);
    nbs_matrix_free(back);
    /* writing again over the copy replaces obsm[key] */
    meta.key = "X_other";
    assert_int_equal(nbs_io_write_h5ad(out, out, m, 4, emb, &meta, &err), NBS_OK);

    if (have_python("anndata")) {
        char script[9000];
        snprintf(script, sizeof script,
                 "import anndata\n"
                 "a = anndata.read_h5ad('%s')\n"
                 "print('keys', sorted(a.obsm.keys()), a.obsm['X_nbsphere'].shape)\n"
                 "print('types', a.obs['cell_type'].value_counts()['B'])\n",
                 out);
        char *o = python(dir, script);
        if (!strstr(o, "keys ['X_nbsphere', 'X_other'] (2638, 4)")) print_message("%s\n", o);
        assert_non_null(strstr(o, "keys ['X_nbsphere', 'X_other'] (2638, 4)"));
        assert_non_null(strstr(o, "types 344"));
        free(o);
    } else {
        print_message("SKIP (part): /usr/bin/python3 has no anndata\n");
    }

    /* the cells kept after filtering: a subset copy (X, obs rows), with the embedding of those */
    int64_t keep[3] = {0, 5, 9};
    nbs_matrix *sub = nbs_matrix_subset(m, keep, 3, NULL, 0, &err);
    assert_non_null(sub);
    char subp[4200];
    snprintf(subp, sizeof subp, "%s", tu_path(dir, "subset.h5ad"));
    meta.key = "X_nbsphere";
    rc = nbs_io_write_h5ad(subp, src, sub, 4, emb, &meta, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, NBS_OK);
    assert_int_equal(nbs_io_read_h5ad(subp, "", &back, &err), NBS_OK);
    tu_expect_same_matrix(sub, back);
    char **full = NULL;
    assert_int_equal(nbs_io_read_h5ad_obs(src, "cell_type", m, &full, &err), NBS_OK);
    assert_int_equal(nbs_io_read_h5ad_obs(subp, "nCount_RNA", back, &l, &err), NBS_OK);
    char **lt = NULL;
    assert_int_equal(nbs_io_read_h5ad_obs(subp, "cell_type", back, &lt, &err), NBS_OK);
    for (int i = 0; i < 3; i++) {
        assert_string_equal(lt[i], full[keep[i]]);
        double lib = 0;
        for (int64_t k = sub->indptr[i]; k < sub->indptr[i + 1]; k++) lib += sub->data[k];
        assert_true(atof(l[i]) == lib); /* obs nCount_RNA follows its cell */
    }
    nbs_io_free_labels(l, 3);
    nbs_io_free_labels(lt, 3);
    nbs_io_free_labels(full, m->n_cells);
    nbs_matrix_free(back);
    if (have_python("anndata")) {
        char script[9000];
        snprintf(script, sizeof script,
                 "import anndata\n"
                 "a = anndata.read_h5ad('%s')\n"
                 "print('sub', a.shape, a.obsm['X_nbsphere'].shape, list(a.obs_names))\n",
                 subp);
        char *o = python(dir, script);
        char want[512];
        snprintf(want, sizeof want, "sub (3, 13714) (3, 4) ['%s', '%s', '%s']", sub->barcodes[0], sub->barcodes[1],
                 sub->barcodes[2]);
        if (!strstr(o, want)) print_message("%s\nwanted %s\n", o, want);
        assert_non_null(strstr(o, want));
        free(o);
    }
    /* cells out of the source's order, or not in it: a clear error, no file */
    const char *bad = tu_path(dir, "bad.h5ad");
    char *t = sub->barcodes[0];
    sub->barcodes[0] = sub->barcodes[1];
    sub->barcodes[1] = t;
    assert_int_equal(nbs_io_write_h5ad(bad, src, sub, 4, emb, &meta, &err), NBS_ERR_INPUT);
    assert_non_null(strstr(err.msg, "out of the source's obs order"));
    assert_false(tu_exists(bad));
    free(sub->barcodes[2]);
    sub->barcodes[2] = strdup("NOT-A-CELL");
    assert_int_equal(nbs_io_write_h5ad(bad, src, sub, 4, emb, &meta, &err), NBS_ERR_INPUT);
    assert_false(tu_exists(bad));
    nbs_matrix_free(sub);
    free(emb);
    nbs_matrix_free(m);
    tu_rmtree(dir);
    free(dir);
}

static void test_10x_h5_round_trip(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("tenx_h5/scanpy_tests/3.0.0/filtered_feature_bc_matrix.h5");
    nbs_matrix *m = small_real();
    char *dir = tu_tmpdir();
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s", tu_path(dir, "a.h5"));
    snprintf(b, sizeof b, "%s", tu_path(dir, "b.h5"));
    nbs_error err = {0};
    assert_int_equal(nbs_io_write_10x_h5(a, m, &err), NBS_OK);
    sleep(1); /* see test_new_h5ad_round_trip */
    assert_int_equal(nbs_io_write_10x_h5(b, m, &err), NBS_OK);
    assert_true(tu_same_bytes(a, b));
    nbs_format f;
    assert_int_equal(nbs_io_detect_format(a, &f, &err), NBS_OK);
    assert_int_equal(f, NBS_FMT_10X_H5);
    nbs_matrix *back = NULL;
    assert_int_equal(nbs_io_read_10x_h5(a, NULL, &back, &err), NBS_OK);
    tu_expect_same_matrix(m, back);
    nbs_matrix_free(back);
    if (have_python("h5py, scipy.sparse")) {
        /* the steps of scanpy's read_10x_h5 for the v3 layout */
        char script[9000];
        snprintf(script, sizeof script,
                 "import h5py, scipy.sparse as sp\n"
                 "f = h5py.File('%s', 'r')\n"
                 "d = {}\n"
                 "f['matrix'].visititems(lambda k, v: d.__setitem__(k.split('/')[-1], v[()]) if isinstance(v, h5py.Dataset) else None)\n"
                 "M, N = d['shape']\n"
                 "X = sp.csr_matrix((d['data'].astype('float32'), d['indices'], d['indptr']), shape=(N, M))\n"
                 "print('X', X.shape, int(X.sum()))\n"
                 "print('names', d['barcodes'].astype(str)[0], d['name'].astype(str)[0], d['id'].astype(str)[0],\n"
                 "      d['feature_type'].astype(str)[0], d['genome'].astype(str)[0])\n",
                 a);
        char *out = python(dir, script);
        double sum = 0;
        for (int64_t k = 0; k < m->nnz; k++) sum += m->data[k];
        char line[512];
        snprintf(line, sizeof line, "X (%lld, %lld) %.0f", (long long)m->n_cells, (long long)m->n_genes, sum);
        if (!strstr(out, line)) print_message("%s\nwanted %s\n", out, line);
        assert_non_null(strstr(out, line));
        snprintf(line, sizeof line, "names %s %s %s Gene Expression unknown", m->barcodes[0], m->gene_names[0],
                 m->gene_ids[0]);
        assert_non_null(strstr(out, line));
        free(out);
    } else {
        print_message("SKIP (part): /usr/bin/python3 has no h5py/scipy\n");
    }
    nbs_matrix_free(m);
    tu_rmtree(dir);
    free(dir);
}

static void test_10x_mtx_round_trip(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("kang_muscat/matrix.mtx.gz");
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_10x_mtx_dir(tu_data("kang_muscat"), &m, &err), NBS_OK);
    char *dir = tu_tmpdir();
    for (int gz = 0; gz <= 1; gz++) {
        char sub[4200];
        snprintf(sub, sizeof sub, "%s", tu_path(dir, gz ? "gz" : "plain"));
        assert_int_equal(nbs_io_write_10x_mtx_dir(sub, m, gz, &err), NBS_OK);
        assert_int_equal(tu_count_files(sub), 3);
        assert_true(tu_exists(tu_path(sub, gz ? "matrix.mtx.gz" : "matrix.mtx")));
        nbs_matrix *back = NULL;
        assert_int_equal(nbs_io_read_10x_mtx_dir(sub, &back, &err), NBS_OK);
        tu_expect_same_matrix(m, back);
        nbs_matrix_free(back);
    }
    nbs_matrix_free(m);
    tu_rmtree(dir);
    free(dir);
}

/* `nbsphere simulate --format mtx,10x-h5,h5ad`: the three files hold the same counts, the h5ad's
 * obs carries the truth of cell_labels.tsv, and a second run gives the same bytes. */
static void test_simulate_every_format(void **state) {
    (void)state;
    char *dir = tu_tmpdir();
    for (int run = 0; run < 2; run++) {
        char args[4300];
        snprintf(args, sizeof args, "simulate --out '%s' --cells 300 --genes 120 --seed 5 --format mtx,10x-h5,h5ad",
                 tu_path(dir, run ? "b" : "a"));
        char *out = NULL, *errout = NULL;
        int rc = tu_run_cli(args, &out, &errout);
        if (rc) print_message("%s\n", errout ? errout : "");
        assert_int_equal(rc, 0);
        free(out);
        free(errout);
        if (!run) sleep(1); /* see test_new_h5ad_round_trip */
    }
    char a[4200];
    snprintf(a, sizeof a, "%s", tu_path(dir, "a"));
    char p1[4300], p2[4300];
    static const char *const files[] = {"sim_10x.h5", "sim.h5ad", "sim_mtx/matrix.mtx.gz"};
    for (int i = 0; i < 3; i++) {
        snprintf(p1, sizeof p1, "%s/a/%s", dir, files[i]);
        snprintf(p2, sizeof p2, "%s/b/%s", dir, files[i]);
        if (!tu_same_bytes(p1, p2)) print_message("%s differs between two runs\n", files[i]);
        assert_true(tu_same_bytes(p1, p2));
    }
    nbs_matrix *mtx = NULL, *h5 = NULL, *ad = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_10x_mtx_dir(tu_path(a, "sim_mtx"), &mtx, &err), NBS_OK);
    assert_int_equal(nbs_io_read_10x_h5(tu_path(a, "sim_10x.h5"), NULL, &h5, &err), NBS_OK);
    assert_int_equal(nbs_io_read_h5ad(tu_path(a, "sim.h5ad"), "", &ad, &err), NBS_OK);
    assert_int_equal(mtx->n_cells, 300);
    tu_expect_same_matrix(mtx, h5);
    tu_expect_same_matrix(mtx, ad);
    char **l1 = NULL, **l2 = NULL;
    assert_int_equal(nbs_io_read_h5ad_obs(tu_path(a, "sim.h5ad"), "branch", ad, &l1, &err), NBS_OK);
    assert_int_equal(nbs_io_read_labels_table(tu_path(a, "cell_labels.tsv"), "branch", ad, &l2, &err), NBS_OK);
    int roots = 0;
    for (int64_t c = 0; c < ad->n_cells; c++) {
        assert_non_null(l1[c]);
        assert_string_equal(l1[c], l2[c]);
        roots += !strcmp(l1[c], "root");
    }
    assert_true(roots > 0 && roots < 300);
    nbs_io_free_labels(l1, ad->n_cells);
    nbs_io_free_labels(l2, ad->n_cells);
    nbs_matrix_free(mtx);
    nbs_matrix_free(h5);
    nbs_matrix_free(ad);
    tu_rmtree(dir);
    free(dir);
}

/* A subset copy of every per-cell part anndata writes: CSC X, a CSR layer, raw/X, a dense obsm,
 * categorical and numeric obs columns; obsp is left out. The source is made by anndata itself. */
static void test_subset_copy_every_part(void **state) {
    (void)state;
    if (!have_python("anndata, scipy.sparse")) {
        print_message("SKIP: /usr/bin/python3 has no anndata (install python3-anndata)\n");
        skip();
    }
    char *dir = tu_tmpdir();
    char src[4200], out[4200], script[9000];
    snprintf(src, sizeof src, "%s", tu_path(dir, "src.h5ad"));
    snprintf(out, sizeof out, "%s", tu_path(dir, "out.h5ad"));
    snprintf(script, sizeof script,
             "import anndata, numpy as np, pandas as pd, scipy.sparse as sp\n"
             "X = np.arange(6 * 4, dtype=np.float32).reshape(6, 4) %% 5\n"
             "obs = pd.DataFrame({'kind': pd.Categorical(list('aabbcc')), 'depth': X.sum(1)},\n"
             "                   index=['c%%d' %% i for i in range(6)])\n"
             "a = anndata.AnnData(X=sp.csc_matrix(X), obs=obs, var=pd.DataFrame(index=list('ABCD')))\n"
             "a.layers['counts'] = sp.csr_matrix(X * 2)\n"
             "a.obsm['X_pca'] = np.arange(12, dtype=np.float64).reshape(6, 2)\n"
             "a.obsp['distances'] = sp.csr_matrix(np.eye(6))\n"
             "a.raw = a\n"
             "a.write_h5ad('%s')\n",
             src);
    free(python(dir, script));
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_h5ad(src, "", &m, &err), NBS_OK);
    int64_t keep[3] = {1, 2, 5};
    nbs_matrix *sub = nbs_matrix_subset(m, keep, 3, NULL, 0, &err);
    float emb[6] = {1, 2, 3, 4, 5, 6};
    nbs_embedding_meta meta = {.key = "X_nbsphere", .latent = "vmf", .metric = "cosine", .version = "0.1.0"};
    int rc = nbs_io_write_h5ad(out, src, sub, 2, emb, &meta, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, NBS_OK);
    snprintf(script, sizeof script,
             "import anndata, numpy as np\n"
             "s = anndata.read_h5ad('%s')[[1, 2, 5]]\n"
             "o = anndata.read_h5ad('%s')\n"
             "ok = [np.array_equal(o.X.toarray(), s.X.toarray()),\n"
             "      np.array_equal(o.layers['counts'].toarray(), s.layers['counts'].toarray()),\n"
             "      np.array_equal(o.raw.X.toarray(), s.raw.X.toarray()),\n"
             "      np.array_equal(o.obsm['X_pca'], s.obsm['X_pca']),\n"
             "      list(o.obs['kind']) == list(s.obs['kind']), list(o.obs['depth']) == list(s.obs['depth']),\n"
             "      list(o.obs_names) == ['c1', 'c2', 'c5'], o.obsm['X_nbsphere'].tolist() == [[1, 2], [3, 4], [5, 6]],\n"
             "      len(o.obsp.keys()) == 0, o.X.format == 'csc']\n"
             "print('ok', ok)\n",
             src, out);
    char *o = python(dir, script);
    if (!strstr(o, "ok [True, True, True, True, True, True, True, True, True, True]")) print_message("%s\n", o);
    assert_non_null(strstr(o, "ok [True, True, True, True, True, True, True, True, True, True]"));
    free(o);
    nbs_matrix_free(sub);
    nbs_matrix_free(m);
    tu_rmtree(dir);
    free(dir);
}

/* A copy may come from a gzip .h5ad (paul15, dense X): it is inflated, copied, and the
 * temporary inflated file is removed. */
static void test_copy_from_gzip_h5ad(void **state) {
    (void)state;
    NBS_REQUIRE_DATA("paul15/paul15.h5ad.gz");
    const char *src = tu_data("paul15/paul15.h5ad.gz");
    char *dir = tu_tmpdir(), *tmpdir = tu_tmpdir();
    setenv("TMPDIR", tmpdir, 1); /* where the inflated copy goes */
    nbs_matrix *m = NULL;
    nbs_error err = {0};
    assert_int_equal(nbs_io_read_h5ad(src, "", &m, &err), NBS_OK);
    char out[4200];
    snprintf(out, sizeof out, "%s", tu_path(dir, "paul15.h5ad"));
    float *emb = make_embedding(m->n_cells, 3);
    nbs_embedding_meta meta = {.key = "X_nbsphere", .latent = "vmf", .metric = "cosine", .version = "0.1.0"};
    int rc = nbs_io_write_h5ad(out, src, m, 3, emb, &meta, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, NBS_OK);
    assert_int_equal(tu_count_files(tmpdir), 0);
    nbs_matrix *back = NULL;
    assert_int_equal(nbs_io_read_h5ad(out, "", &back, &err), NBS_OK);
    tu_expect_same_matrix(m, back);
    char **l = NULL;
    assert_int_equal(nbs_io_read_h5ad_obs(out, "paul15_clusters", back, &l, &err), NBS_OK);
    assert_non_null(l[0]);
    nbs_io_free_labels(l, back->n_cells);
    nbs_matrix_free(back);
    unsetenv("TMPDIR");
    free(emb);
    nbs_matrix_free(m);
    tu_rmtree(dir);
    free(dir);
    tu_rmtree(tmpdir);
    free(tmpdir);
}

/* A matrix without a single count (all entries zero) is written and read back in every format. */
static void test_empty_matrix(void **state) {
    (void)state;
    nbs_error err = {0};
    nbs_matrix *m = nbs_matrix_new(2, 3, 0, &err);
    assert_non_null(m);
    assert_int_equal(nbs_matrix_default_names(&m->barcodes, 2, "cell", &err), NBS_OK);
    assert_int_equal(nbs_matrix_default_names(&m->gene_names, 3, "gene", &err), NBS_OK);
    assert_int_equal(nbs_matrix_default_names(&m->gene_ids, 3, "id", &err), NBS_OK);
    char *dir = tu_tmpdir();
    char p[4200];
    nbs_matrix *back = NULL;
    float emb[2] = {1, 2};
    snprintf(p, sizeof p, "%s", tu_path(dir, "e.h5ad"));
    int rc = nbs_io_write_h5ad(p, NULL, m, 1, emb, NULL, &err);
    if (rc) print_message("%s\n", err.msg);
    assert_int_equal(rc, NBS_OK);
    assert_int_equal(nbs_io_read_h5ad(p, "", &back, &err), NBS_OK);
    tu_expect_same_matrix(m, back);
    nbs_matrix_free(back);
    snprintf(p, sizeof p, "%s", tu_path(dir, "e.h5"));
    assert_int_equal(nbs_io_write_10x_h5(p, m, &err), NBS_OK);
    assert_int_equal(nbs_io_read_10x_h5(p, NULL, &back, &err), NBS_OK);
    tu_expect_same_matrix(m, back);
    nbs_matrix_free(back);
    snprintf(p, sizeof p, "%s", tu_path(dir, "mtx"));
    assert_int_equal(nbs_io_write_10x_mtx_dir(p, m, 1, &err), NBS_OK);
    assert_int_equal(nbs_io_read_10x_mtx_dir(p, &back, &err), NBS_OK);
    tu_expect_same_matrix(m, back);
    nbs_matrix_free(back);
    nbs_matrix_free(m);
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embedding_tsv),
        cmocka_unit_test(test_new_h5ad_round_trip),
        cmocka_unit_test(test_copy_h5ad),
        cmocka_unit_test(test_copy_from_gzip_h5ad),
        cmocka_unit_test(test_10x_h5_round_trip),
        cmocka_unit_test(test_10x_mtx_round_trip),
        cmocka_unit_test(test_simulate_every_format),
        cmocka_unit_test(test_subset_copy_every_part),
        cmocka_unit_test(test_empty_matrix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
