/* Progress bar and log sink (see progress.h). The bar is drawn with '\r' and erased with
 * "\r\033[K" before any log line, so warnings and the bar share stderr without garbling. */
#include "nbsphere/progress.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "nbsphere/error.h"

struct nbs_progress {
    FILE *out;
    int verbosity;
    int tty;
    int bar_shown;      /* a bar line is on screen, without its newline */
    char stage[64];
    double t0;          /* start of the stage */
    double last_draw;
};

double nbs_progress_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void clear_bar(nbs_progress *p) {
    if (p->bar_shown) {
        fputs("\r\033[K", p->out);
        p->bar_shown = 0;
    }
}

static void log_handler(int level, const char *msg, void *user) {
    nbs_progress *p = user;
    if (level > p->verbosity && level > 0) return;
    clear_bar(p);
    fprintf(p->out, "%s%s\n", level == 0 ? "nbsphere: warning: " : "", msg);
    fflush(p->out);
}

nbs_progress *nbs_progress_new(FILE *out, int verbosity, int is_tty) {
    nbs_progress *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->out = out;
    p->verbosity = verbosity;
    p->tty = is_tty >= 0 ? is_tty : isatty(fileno(out));
    p->t0 = p->last_draw = nbs_progress_now();
    nbs_log_set_handler(log_handler, p);
    return p;
}

void nbs_progress_free(nbs_progress *p) {
    if (!p) return;
    clear_bar(p);
    nbs_log_set_handler(NULL, NULL);
    free(p);
}

void nbs_progress_stage(nbs_progress *p, const char *stage) {
    if (!p) return;
    clear_bar(p);
    snprintf(p->stage, sizeof p->stage, "%s", stage);
    p->t0 = nbs_progress_now();
    p->last_draw = 0;
    if (p->verbosity >= 2) nbs_debug("[%s] started", stage);
}

static void fmt_duration(double s, char *buf, size_t n) {
    if (!isfinite(s) || s < 0) snprintf(buf, n, "--:--");
    else if (s < 3600) snprintf(buf, n, "%02d:%02d", (int)s / 60, (int)s % 60);
    else snprintf(buf, n, "%dh%02dm", (int)(s / 3600), ((int)s % 3600) / 60);
}

/* Fraction of training done, counting finished batches of the current epoch. */
static double train_fraction(const nbs_progress_train *t) {
    if (t->n_epochs <= 0) return NAN;
    double within = (t->n_batches > 0 && t->batch >= 0) ? (double)t->batch / (double)t->n_batches : 1.0;
    return ((double)(t->epoch - 1) + within) / (double)t->n_epochs;
}

void nbs_progress_format(const nbs_progress *p, const nbs_progress_train *t, char *buf, size_t n) {
    double frac = train_fraction(t), el = nbs_progress_now() - p->t0;
    char eta[32];
    fmt_duration(frac > 0 ? el * (1 - frac) / frac : NAN, eta, sizeof eta);
    size_t u = (size_t)snprintf(buf, n, "%s epoch %d/%d", p->stage, t->epoch, t->n_epochs);
    if (p->tty && t->n_batches > 0 && u < n)
        u += (size_t)snprintf(buf + u, n - u, " batch %lld/%lld", (long long)t->batch,
                              (long long)t->n_batches);
    if (isfinite(t->elbo) && u < n) u += (size_t)snprintf(buf + u, n - u, " ELBO %.4g", t->elbo);
    if (isfinite(t->val_elbo) && u < n)
        u += (size_t)snprintf(buf + u, n - u, " val %.4g", t->val_elbo);
    if (isfinite(t->kl) && u < n) u += (size_t)snprintf(buf + u, n - u, " KL %.4g", t->kl);
    if (isfinite(t->beta) && t->beta >= 0 && u < n)
        u += (size_t)snprintf(buf + u, n - u, " beta %.3g", t->beta);
    if (t->active_dims >= 0 && u < n)
        u += (size_t)snprintf(buf + u, n - u, " active %d/%d", t->active_dims, t->latent_dim);
    if (u < n) snprintf(buf + u, n - u, " ETA %s", eta);
}

static void draw(nbs_progress *p, double frac, const char *text) {
    const int width = 24;
    int filled = isfinite(frac) ? (int)lround(fmin(fmax(frac, 0), 1) * width) : 0;
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < filled ? '#' : '.';
    bar[width] = '\0';
    /* keep within 120 columns so the line never wraps on a normal terminal */
    fprintf(p->out, "\r\033[K[%s] %3d%% %.90s", bar, isfinite(frac) ? (int)(frac * 100) : 0, text);
    fflush(p->out);
    p->bar_shown = 1;
    p->last_draw = nbs_progress_now();
}

void nbs_progress_fraction(nbs_progress *p, double done, const char *note) {
    if (!p || p->verbosity < 1 || !p->tty) return;
    if (nbs_progress_now() - p->last_draw < 0.1 && done < 1) return;
    char text[256];
    snprintf(text, sizeof text, "%s %s", p->stage, note ? note : "");
    draw(p, done, text);
}

void nbs_progress_batch(nbs_progress *p, const nbs_progress_train *t) {
    if (!p || p->verbosity < 1 || !p->tty) return;
    if (nbs_progress_now() - p->last_draw < 0.1) return;
    char text[512];
    nbs_progress_format(p, t, text, sizeof text);
    draw(p, train_fraction(t), text);
}

void nbs_progress_epoch(nbs_progress *p, const nbs_progress_train *t) {
    if (!p || p->verbosity < 1) return;
    char text[512];
    nbs_progress_format(p, t, text, sizeof text);
    if (p->tty) {
        draw(p, train_fraction(t), text);
    } else {
        fprintf(p->out, "%s\n", text);
        fflush(p->out);
    }
}

void nbs_progress_done(nbs_progress *p, const char *summary) {
    if (!p) return;
    double el = nbs_progress_now() - p->t0;
    clear_bar(p);
    if (p->verbosity >= 1 && summary)
        fprintf(p->out, "%s: %s (%.1f s)\n", p->stage, summary, el);
    fflush(p->out);
}
