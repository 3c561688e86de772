/*
 * train_tlm.c — Tapered Language Models, trained from scratch in one C file.
 *
 * A language model stacks L blocks, and usually every block's MLP has the same hidden
 * width H. A Tapered Language Model (TLM, arXiv 2606.23670) keeps the total MLP budget
 * L*H fixed but moves it across depth: wide MLPs early, narrow ones late, on a cosine
 * schedule from 1.5*H down to 0.5*H. Same parameters, same FLOPs, lower loss; the
 * reverse taper (narrow early, wide late) hurts.
 *
 * This file holds the whole method for four architectures that share one block:
 *
 *     x = x + Mixer(RMSNorm(x))          transformer, hope : causal attention with RoPE
 *                                        gated             : attention * sigmoid gate
 *                                        titans            : sliding-window attention gated
 *                                                            by a neural memory (MAG)
 *     x = x + MLP_l(RMSNorm(x))          SwiGLU of width mlp_width[l]  (hope: followed by
 *                                        fast memory levels, each with its own residual)
 *
 * The only place the architectures differ is mixer_forward/backward and mlp_forward/
 * backward; the only place the taper lives is taper_widths(), and its output is the
 * per-layer width that every MLP tensor of layer l is allocated with.
 *
 * Sections, in reading order:
 *    1. precision, utilities, checked I/O, random numbers
 *    2. THE TAPER: per-layer MLP widths at a fixed budget
 *    3. the model's structures: config, parameter table, per-layer weight views, activations
 *    4. layer kernels, each forward followed by its backward, on one matmul contract
 *    5. the neural memory as the papers write it (the token-by-token recurrence), and the
 *       memory module around it (Titans' mixer branch, Hope's fast levels)
 *    6. the model: building it, the mixer, the MLP slot, forward and backward
 *    7. AdamW
 *    8. checkpoints
 *    9. data: token shards and the tokenizer
 *   10. data parallel over MPI ranks; training step, evaluation, sampling, layer analysis
 *   11. main: the command line, then evaluate, analyze or train
 * Appendices, the fast forms of what the main text states plainly (each tested against it):
 *    A. the fast matmul: blocking, packing, AVX-512 micro-kernels, gemm_small
 *    B. the chunked memory: the recurrence a whole chunk at a time, in closed form
 *
 * Build: make train_tlm   (gcc -O3 -march=native -fopenmp)   Tests: make test
 * test_tlm.c #includes this file with TLM_TESTING defined (no main) and, for the
 * gradient checks, TLM_DOUBLE, so the tests run exactly this code in double precision.
 */
#define _XOPEN_SOURCE 700
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <glob.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "dev/tlmc/utils.h" // die(), xcalloc(), checked file I/O, wall_time(), threads, Rng

// ----------------------------------------------------------------------------
// 1. precision, utilities, checked I/O, random numbers

// One code path, two precisions: float for training, double for the gradient checks.
#ifdef TLM_DOUBLE
typedef double real;
static inline real r_exp(real x) { return exp(x); }
static inline real r_log(real x) { return log(x); }
static inline real r_sqrt(real x) { return sqrt(x); }
static inline real r_cos(real x) { return cos(x); }
static inline real r_sin(real x) { return sin(x); }
#else
typedef float real;
static inline float exp_float(float x);
static inline real r_exp(real x) { return exp_float(x); }
static inline real r_log(real x) { return logf(x); }
static inline real r_sqrt(real x) { return sqrtf(x); }
static inline real r_cos(real x) { return cosf(x); }
static inline real r_sin(real x) { return sinf(x); }
#endif
static inline real sigmoid(real x) { return 1 / (1 + r_exp(-x)); }

// --- vector helpers: e^x, sums and dot products written so that their loops vectorize ---

// e^x in float, inline so that the loops of softmax and SiLU vectorize (libm's expf is a
// call per element): e^x = 2^n e^r, n = round(x / ln 2), r = x - n ln 2 in [-0.35, 0.35]
// (ln 2 in two parts, the first exact in n ln 2), e^r by its Taylor series to r^7 (error
// < 1e-8), and 2^n written into the float's exponent bits. Within a few ulp of expf; 0
// below -87 (expf gives at most 1.6e-38 there), e^88 above 88 (near FLT_MAX); NaN stays NaN.
static inline float exp_float(float x) {
    const float shift = 12582912.0f; // 1.5 * 2^23: adding it rounds to an integer in the low bits
    float y = x > 88.0f ? 88.0f : x < -87.0f ? -87.0f : x;
    float t = y * 1.44269504f + shift, n = t - shift;
    float r = (y - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1 + r * (1 + r * (1.0f / 2 + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    union { float f; uint32_t u; } bits = { t }, scale;
    scale.u = (bits.u - 0x4B400000u + 127u) << 23; // 0x4B400000: the bits of `shift`; n + 127 in the exponent
    return x < -87.0f ? 0.0f : p * scale.f;
}

enum { LANES = 16 }; // a zmm register's floats

// x[0] + ... + x[n-1] in 16 running sums, folded in a fixed order: gcc vectorizes it without
// -ffast-math (a plain `sum += x[i]` is a chain of scalar adds), and the result does not
// depend on the thread count
static inline real sum16(const real *x, int n) {
    real acc[LANES] = { 0 };
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += x[i + l];
    for (int l = 0; i < n; i++, l++) acc[l] += x[i];
    for (int w = LANES / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
    return acc[0];
}

// Dot products of short rows (the memory's, of d or m = 32 values), summed in 16 lanes and a
// fixed fold, so the sum does not depend on where the arrays sit: a[0] b[0] + ... + a[n-1] b[n-1].
// Defined in appendix A (with AVX-512: fused multiply-adds and a masked tail).
static inline real dot(const real *a, const real *b, int n);

// Per-thread workspace: `threads` slices of `stride` reals, slice i for OpenMP thread i. A
// parallel loop that uses it runs on at most `threads` threads (scratch_team()), however
// OMP_NUM_THREADS has changed since it was allocated.
typedef struct {
    real *base;
    size_t stride;
    int threads;
} Scratch;
static int scratch_team(Scratch s) { return num_threads() < s.threads ? num_threads() : s.threads; }
static real *scratch_mine(Scratch s) { return s.base + (size_t)thread_id() * s.stride; }

// x[0:n] = 0 on all threads, 16384 values at a time: the backward clears buffers of a few MB
// that matmuls then add into, and one core alone would leave the others waiting
static void zero_parallel(real *x, size_t n) {
    size_t blocks = (n + 16383) / 16384;
    #pragma omp parallel for
    for (size_t b = 0; b < blocks; b++) {
        size_t i0 = b * 16384, len = n - i0 < 16384 ? n - i0 : 16384;
        memset(x + i0, 0, len * sizeof(real));
    }
}

// ----------------------------------------------------------------------------
// 2. THE TAPER: per-layer MLP widths at a fixed budget
//
// The uniform model gives every layer the hidden width H. A taper gives layer l the width
//     width_l = H * f(l / (L-1)),   f a schedule from `start` (first layer) to `end` (last)
// then rescales f so that its mean over the L layers is exactly 1, rounds every width to a
// multiple of `multiple` and makes the rounded widths sum to exactly L*H. Every MLP tensor
// is linear in its width, so every schedule has the same parameter count and FLOPs.
//
//     uniform  f(x) = 1
//     cosine   f(x) = e + (s-e) * (1 + cos(pi x)) / 2      the paper's: flat at both ends
//     linear   f(x) = s + (e-s) * x
//     sigmoid  f(x) = e + (s-e) * step(x)                  logistic step centred at x = 1/2
//     reverse  the cosine's widths in reverse layer order   narrow early, wide late
//     groups:v0,v1,..  f = v_g on the g-th of as many contiguous groups of layers as values
//                      (e.g. groups:1.5,1,0.5: early / middle / late thirds; layer_group())
//     --mlp-widths w0,w1,..  the widths themselves, which must sum to L*H ("explicit")
//
// With s + e = 2 the cosine already averages exactly 1 (its cosines cancel in pairs).
// Reverse is computed as the cosine's rounded widths read backwards, so that it is the exact
// mirror, width for width (rounding f(1 - x) instead would break the remainder ties the
// other way round in about half of all shapes).

// Beside the five schedules: "groups:v0,v1,.." (contiguous groups of layers, one multiple each:
// taper_group_widths) and "explicit" (the widths given by --mlp-widths, summing to L*H).
typedef enum { TAPER_UNIFORM, TAPER_COSINE, TAPER_LINEAR, TAPER_SIGMOID, TAPER_REVERSE, TAPER_SCHEDULES,
               TAPER_GROUPS = TAPER_SCHEDULES, TAPER_EXPLICIT, TAPER_COUNT } Taper;
static const char *taper_names[TAPER_COUNT] = { "uniform", "cosine", "linear", "sigmoid", "reverse", "groups", "explicit" };

static double taper_factor(Taper taper, double x, double s, double e) {
    switch (taper) {
    case TAPER_UNIFORM: return 1.0;
    case TAPER_COSINE:  return e + (s - e) * (1 + cos(PI * x)) / 2;
    case TAPER_LINEAR:  return s + (e - s) * x;
    case TAPER_SIGMOID: {
        const double k = 10.0; // steepness; rescaled so that f(0) = s and f(1) = e exactly
        double lo = 1 / (1 + exp(-k / 2)), hi = 1 / (1 + exp(k / 2));
        double step = (1 / (1 + exp(k * (x - 0.5))) - hi) / (lo - hi);
        return e + (s - e) * step;
    }
    default: return 1.0; // (reverse: see taper_widths)
    }
}

// Rounds a schedule f[0..L-1] (positive, any scale) to widths: rescaled to mean 1, then to
// multiples of `multiple` by largest remainder: floor every layer's share of the L*H/multiple
// units, then hand the units left over to the largest fractional parts (earlier layer first on
// ties), so that the total is exactly L*H. `what` names the taper in the messages (`reversed`: the
// layers are numbered last first there). Returns 0, or -1 with a one-line reason in err.
static int round_schedule(int *widths, const double *f, int L, int H, int multiple, int reversed,
                          const char *what, char *err, size_t errlen) {
    double sum = 0;
    for (int l = 0; l < L; l++) sum += f[l];
    // absurd start/end (e.g. 1e308, or 1.25 -> 2e35 where the start is lost to rounding)
    // leave no finite, positive schedule to share the width by
    if (!isfinite(sum) || !(sum > 0)) {
        snprintf(err, errlen, "%s cannot be computed (its widths overflow or vanish)", what);
        return -1;
    }
    int units = L * (H / multiple), given = 0;
    double frac[L];
    for (int l = 0; l < L; l++) {
        double want = units * (f[l] / sum); // (f / sum first: units * f may overflow)
        widths[l] = (int)floor(want + 1e-9);
        frac[l] = want - widths[l];
        given += widths[l];
    }
    while (given < units) {
        int best = 0;
        for (int l = 1; l < L; l++) if (frac[l] > frac[best] + 1e-12) best = l;
        widths[best]++;
        frac[best] = -1;
        given++;
    }
    for (int l = 0; l < L; l++) {
        if (widths[l] < 1) {
            snprintf(err, errlen, "%s gives layer %d a width below one multiple of %d "
                     "(need a larger --mlp-width, a smaller --taper-multiple or a milder taper)", what,
                     reversed ? L - 1 - l : l, multiple);
            return -1;
        }
        widths[l] *= multiple;
    }
    return 0;
}

static int taper_check_shape(int L, int H, int multiple, char *err, size_t errlen) {
    if (L < 1 || H < 1 || multiple < 1) {
        snprintf(err, errlen, "layers, width and multiple must be positive (got %d, %d, %d)", L, H, multiple);
        return -1;
    }
    if (H % multiple != 0) {
        snprintf(err, errlen, "MLP width %d is not a multiple of --taper-multiple %d", H, multiple);
        return -1;
    }
    return 0;
}

// Fills widths[0..L-1]. Returns 0 on success, or -1 with a one-line reason in err.
static int taper_widths(int *widths, int L, int H, Taper taper, double start, double end,
                        int multiple, char *err, size_t errlen) {
    if (taper_check_shape(L, H, multiple, err, errlen)) return -1;
    if (taper < 0 || taper >= TAPER_SCHEDULES) {
        snprintf(err, errlen, "taper id %d is not a schedule", (int)taper);
        return -1;
    }
    if (taper != TAPER_UNIFORM && (!(start > 0) || !(end > 0) || !isfinite(start) || !isfinite(end))) {
        snprintf(err, errlen, "taper start and end must be positive (got %g, %g)", start, end);
        return -1;
    }
    // reverse: the cosine's widths, computed in slot order, then handed to the layers last first
    int mirror = taper == TAPER_REVERSE;
    Taper shape = mirror ? TAPER_COSINE : taper;
    double f[L];
    for (int l = 0; l < L; l++) f[l] = taper_factor(shape, L > 1 ? (double)l / (L - 1) : 0.0, start, end);
    char what[96];
    snprintf(what, sizeof(what), "%s taper %g -> %g", taper_names[taper], start, end);
    if (round_schedule(widths, f, L, H, multiple, mirror, what, err, errlen)) return -1;
    for (int l = 0; mirror && l < L / 2; l++) {
        int w = widths[l];
        widths[l] = widths[L - 1 - l];
        widths[L - 1 - l] = w;
    }
    return 0;
}

// The group of layer l when L layers are split into n contiguous groups as evenly as L allows:
// group g holds the layers from round(g L / n) on, ties rounded towards the middle of the stack,
// so that the split is symmetric where it can be (L 4 into 3: 1,2,1 layers; L 6 into 4: 2,1,1,2;
// L 7 into 3: 2,3,2). Only with n even and L odd the middle boundary cannot be: the earlier half
// gets the extra layer (L 3 into 2: 2,1).
static int group_boundary(int g, int L, int n) {
    long num = (long)g * L, q = num / n, r = num % n;
    if (2 * r > n || (2 * r == n && 2 * g <= n)) q++;
    return (int)q;
}
static int layer_group(int l, int L, int n) {
    int g = 0;
    while (g + 1 < n && l >= group_boundary(g + 1, L, n)) g++;
    return g;
}

// --taper groups:v0,v1,..: layer l's schedule value is v of its group; then rescaled and rounded
// as every schedule is (round_schedule), so the widths sum to exactly L*H.
static int taper_group_widths(int *widths, int L, int H, const double *groups, int n, int multiple,
                              char *err, size_t errlen) {
    if (taper_check_shape(L, H, multiple, err, errlen)) return -1;
    if (n < 1 || n > L) {
        snprintf(err, errlen, "groups: %d values for %d layers (give 1 to %d values)", n, L, L);
        return -1;
    }
    for (int g = 0; g < n; g++)
        if (!(groups[g] > 0) || !isfinite(groups[g])) {
            snprintf(err, errlen, "groups: value %d (%g) must be positive", g + 1, groups[g]);
            return -1;
        }
    double f[L];
    for (int l = 0; l < L; l++) f[l] = groups[layer_group(l, L, n)];
    return round_schedule(widths, f, L, H, multiple, 0, "groups taper", err, errlen);
}

// ----------------------------------------------------------------------------
// 3. the model's structures: config, parameter table, per-layer weight views, activations

typedef enum { ARCH_TRANSFORMER, ARCH_GATED, ARCH_TITANS, ARCH_HOPE, ARCH_COUNT } Arch;
static const char *arch_names[ARCH_COUNT] = { "transformer", "gated", "titans", "hope" };

enum { MAX_LAYERS = 64, MAX_CMS_LEVELS = 4 };

typedef struct {
    Arch arch;
    int layers, dim, heads, vocab, seq_len; // L, C, NH, V, T (the longest sequence)
    int mlp_width;                          // H: the uniform model's hidden width = mean width
    Taper taper;
    double taper_start, taper_end;          // f(first layer), f(last layer), in multiples of H
    int taper_multiple;                     // every width is a multiple of this
    int untied;                             // separate output head instead of wte^T
    int gate_headwise;                      // gated: one gate per head instead of per channel
    int window;                             // titans: sliding-window size of the attention
    int mem_depth, mem_hidden, mem_chunk;   // titans: memory depth (1, 2), MLP width, chunk
    double mem_lr, mem_clip;                // titans, hope: theta_max, the inner gradient's norm bound
    int mem_conv, mem_silu;                 // titans, hope: q/k/v conv kernel (0: none), SiLU on q/k/v
    int cms_levels, cms_width;              // hope: levels incl. the slow SwiGLU; fast levels' width
    int cms_chunks[MAX_CMS_LEVELS];         // hope: update period of levels 2..k (index 1..k-1)
    int taper_groups;                       // --taper groups:..: how many groups (else 0)
    double taper_group[MAX_LAYERS];         //   and their multiples of H, first group first
    int widths_given[MAX_LAYERS];           // --taper explicit: --mlp-widths (0 after the last)
    int match_params;                       // --match-params was applied to mlp_width
    // derived by the taper:
    int mlp_widths[MAX_LAYERS];             // SwiGLU hidden width of every layer
    int cms_widths[MAX_LAYERS];             // hope: hidden width of every fast level of a layer
} Config;

// --- the parameter table ----------------------------------------------------------------
// Every parameter lives in one contiguous block, layer after layer, in the order
// layout_params() declares it; the gradients and both AdamW moments use the same layout.
// The checkpoint stores the block in this order, so this function is also the checkpoint's
// format. Each layer gets a view (LayerWeights) of its own tensors with its own widths, so
// no kernel ever computes an offset.

// NORMAL: N(0, 0.02); RESIDUAL: N(0, 0.02/sqrt(2L)) for matrices that write into the residual
// stream; GATE_BIAS: the memory gates' biases (see init_params); SCALE: the constant 0.1;
// CONV: a convolution that starts as the identity (weight 1 on the current token, 0 on the rest)
typedef enum { INIT_NORMAL, INIT_RESIDUAL, INIT_ONES, INIT_GATE_BIAS, INIT_SCALE, INIT_CONV } Init;

// How an MLP's hidden units index a tensor, whose width the taper sets (init_params draws
// each unit's part from its own stream): ROWS, row j is unit j (W1, W3); COLS, column j (W2);
// MEMORY, a fast level's W0 = W1 (m, C) then W2 (C, m): unit j is W1's row j and W2's column j.
typedef enum { UNITS_NONE, UNITS_ROWS, UNITS_COLS, UNITS_MEMORY } Units;

typedef struct {
    char name[24];
    int layer;          // -1: outside the blocks
    int level;          // hope: the fast level k (1..cms_levels-1) it belongs to, else 0
    int rows, cols;     // shape; vectors have rows = 1
    int is_mlp;         // counts as MLP (tapered) in the per-layer table
    Units units;        // indexed by the MLP's hidden units, and how
    int decay;          // AdamW weight decay applies (matrices)
    Init init;
    size_t offset, size;
} ParamTensor;

typedef struct {
    real *attn_norm;                // (C)
    real *wqkv;                     // (3C, C)   q | k | v
    real *wgate;                    // (G, C)    gated: G = C, or NH when headwise
    real *mem_wqkv;                 // (3C, C)   titans: memory q | k | v
    real *mem_conv;                 // (3C, K)   titans: causal depthwise conv on q | k | v (K = mem_conv)
    real *mem_wgates;               // (3NH, C)  titans: step | momentum | forget, per head
    real *mem_bgates;               // (3NH)
    real *mem_w0;                   // (NH, P)   titans: initial memory weights per head
    real *mem_norm;                 // (C)       titans: RMSNorm gain on the read-out
    real *wo;                       // (C, C)
    real *mlp_norm;                 // (C)
    real *w1, *w3;                  // (F, C) each, adjacent: one (2F, C) matrix
    real *w2;                       // (C, F)
    // hope: fast levels 1..cms_levels-1 (level 0 is the SwiGLU above)
    real *cms_norm[MAX_CMS_LEVELS];   // (C)
    real *cms_wqkv[MAX_CMS_LEVELS];   // (3C, C)
    real *cms_conv[MAX_CMS_LEVELS];   // (3C, K)  K = mem_conv
    real *cms_wgates[MAX_CMS_LEVELS]; // (3, C)
    real *cms_bgates[MAX_CMS_LEVELS]; // (3)
    real *cms_w0[MAX_CMS_LEVELS];     // (P)  P = 2 C m, m = cms_widths[l]
    real *cms_scale[MAX_CMS_LEVELS];  // (C)  output gain
} LayerWeights;

typedef struct {
    real *wte;                      // (V, C) token embedding
    LayerWeights layer[MAX_LAYERS];
    real *final_norm;               // (C)
    real *lm_head;                  // (V, C) only when untied; else wte
} Weights;

typedef struct {
    ParamTensor tensor[MAX_LAYERS * 32 + 8];
    int count;
    size_t total;
    real *base;                     // NULL while only counting
    int level;                      // hope: the fast level being declared (0 elsewhere)
} ParamTable;

static real *declare(ParamTable *pt, const char *name, int layer, int rows, int cols, int is_mlp, int decay, Init init) {
    ParamTensor *t = &pt->tensor[pt->count++];
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->layer = layer; t->rows = rows; t->cols = cols; t->is_mlp = is_mlp; t->decay = decay; t->init = init;
    t->level = pt->level;
    t->units = UNITS_NONE;
    t->offset = pt->total;
    t->size = (size_t)rows * cols;
    pt->total += t->size;
    return pt->base ? pt->base + t->offset : NULL;
}
// an MLP tensor indexed by the hidden units (Units)
static real *declare_units(ParamTable *pt, const char *name, int layer, int rows, int cols,
                           int decay, Init init, Units units) {
    real *p = declare(pt, name, layer, rows, cols, 1, decay, init);
    pt->tensor[pt->count - 1].units = units;
    return p;
}

// the memory MLP's parameter count: linear d x d, or W1 (m,d) and W2 (d,m)
static int memory_params(int depth, int d, int m) { return depth == 1 ? d * d : 2 * d * m; }

static void layout_params(const Config *c, real *base, ParamTable *pt, Weights *w) {
    int C = c->dim, NH = c->heads, V = c->vocab;
    memset(pt, 0, sizeof(*pt));
    memset(w, 0, sizeof(*w));
    pt->base = base;
    w->wte = declare(pt, "wte", -1, V, C, 0, 1, INIT_NORMAL);
    for (int l = 0; l < c->layers; l++) {
        LayerWeights *lw = &w->layer[l];
        int F = c->mlp_widths[l];
        lw->attn_norm = declare(pt, "attn_norm", l, 1, C, 0, 0, INIT_ONES);
        lw->wqkv = declare(pt, "wqkv", l, 3 * C, C, 0, 1, INIT_NORMAL);
        if (c->arch == ARCH_GATED)
            lw->wgate = declare(pt, "wgate", l, c->gate_headwise ? NH : C, C, 0, 1, INIT_NORMAL);
        if (c->arch == ARCH_TITANS) {
            int P = memory_params(c->mem_depth, C / NH, c->mem_hidden);
            lw->mem_wqkv = declare(pt, "mem_wqkv", l, 3 * C, C, 0, 1, INIT_NORMAL);
            if (c->mem_conv) lw->mem_conv = declare(pt, "mem_conv", l, 3 * C, c->mem_conv, 0, 0, INIT_CONV);
            lw->mem_wgates = declare(pt, "mem_wgates", l, 3 * NH, C, 0, 1, INIT_NORMAL);
            lw->mem_bgates = declare(pt, "mem_bgates", l, 1, 3 * NH, 0, 0, INIT_GATE_BIAS);
            lw->mem_w0 = declare(pt, "mem_w0", l, NH, P, 0, 0, INIT_NORMAL);
            lw->mem_norm = declare(pt, "mem_norm", l, 1, C, 0, 0, INIT_ONES);
        }
        lw->wo = declare(pt, "wo", l, C, C, 0, 1, INIT_RESIDUAL);
        lw->mlp_norm = declare(pt, "mlp_norm", l, 1, C, 1, 0, INIT_ONES);
        lw->w1 = declare_units(pt, "w1", l, F, C, 1, INIT_NORMAL, UNITS_ROWS);
        lw->w3 = declare_units(pt, "w3", l, F, C, 1, INIT_NORMAL, UNITS_ROWS);
        lw->w2 = declare_units(pt, "w2", l, C, F, 1, INIT_RESIDUAL, UNITS_COLS);
        if (c->arch == ARCH_HOPE) {
            for (int k = 1; k < c->cms_levels; k++) {
                int P = memory_params(2, C, c->cms_widths[l]);
                pt->level = k;
                lw->cms_norm[k] = declare(pt, "cms_norm", l, 1, C, 1, 0, INIT_ONES);
                lw->cms_wqkv[k] = declare(pt, "cms_wqkv", l, 3 * C, C, 1, 1, INIT_NORMAL);
                if (c->mem_conv) lw->cms_conv[k] = declare(pt, "cms_conv", l, 3 * C, c->mem_conv, 1, 0, INIT_CONV);
                lw->cms_wgates[k] = declare(pt, "cms_wgates", l, 3, C, 1, 1, INIT_NORMAL);
                lw->cms_bgates[k] = declare(pt, "cms_bgates", l, 1, 3, 1, 0, INIT_GATE_BIAS);
                lw->cms_w0[k] = declare_units(pt, "cms_w0", l, 1, P, 0, INIT_NORMAL, UNITS_MEMORY);
                lw->cms_scale[k] = declare(pt, "cms_scale", l, 1, C, 1, 0, INIT_SCALE);
                pt->level = 0;
            }
        }
    }
    w->final_norm = declare(pt, "final_norm", -1, 1, C, 0, 0, INIT_ONES);
    w->lm_head = c->untied ? declare(pt, "lm_head", -1, V, C, 0, 1, INIT_NORMAL) : w->wte;
}

// --- activations ------------------------------------------------------------------------
// Everything the backward needs, per layer, for B sequences of T tokens (N = B*T rows).
// One allocation; layout_activations() hands out the pieces (and, with base NULL, counts).

// The neural memory of Titans and of Hope's fast levels: projections of the block's
// normalised input into keys, values, queries and per-token gates, then the memory
// recurrence (memory_chunked_forward below) per sequence and head.
typedef struct {
    real *qkv;                  // (N, 3C) raw projections x Wqkv^T
    real *conv;                 // (N, 3C) after the causal depthwise convolution (mem_conv > 0)
    real *k, *v, *q;            // (B, NH, T, hs) per head; k and q L2-normalised
    real *k_inv, *q_inv;        // (B, NH, T) 1/|k|, 1/|q| before normalisation
    real *gates;                // (N, 3NH) gate pre-activations x Wg^T + b
    real *theta, *eta, *alpha;  // (B, NH, T) step size, momentum, forgetting
    real *states;               // (B, NH, S) W, S at chunk boundaries + each chunk's kept products
    real *yh;                   // (B, NH, T, hs) read-out per head
    real *y;                    // (N, C) read-out, heads back in token order
} MemoryActs;

typedef struct {
    real *ln1, *ln1_rstd;       // (N, C), (N)  RMSNorm of the block input
    real *qkv;                  // (N, 3C) q | k | v, RoPE applied to q and k
    real *att;                  // (B, NH, T, T) attention probabilities
    real *attn;                 // (N, C) attention output
    real *gate;                 // (N, G) gated: sigmoid(ln1 Wg^T)
    MemoryActs mem;             // titans
    real *my_norm, *my_rstd;    // (N, C), (N) titans: RMSNorm of the memory read-out
    real *mgate;                // (N, C) titans: sigmoid(my_norm)
    real *mixed;                // (N, C) input of W_O
    real *res1;                 // (N, C) x + mixer
    real *ln2, *ln2_rstd;       // (N, C), (N)
    real *h;                    // (N, 2F) h1 | h3
    real *hg;                   // (N, F) silu(h1) * h3
    real *res2;                 // (N, C) res1 + SwiGLU
    // hope: fast level k reads res[k-1] (res[0] = res2) and writes res[k] = res[k-1] + scale * y
    real *cms_ln[MAX_CMS_LEVELS], *cms_rstd[MAX_CMS_LEVELS];
    MemoryActs cms[MAX_CMS_LEVELS];
    real *cms_res[MAX_CMS_LEVELS];
    real *out;                  // (N, C) the block output: res2, or the last fast level's
} LayerActs;

typedef struct {
    real *x0;                   // (N, C) token embeddings
    LayerActs layer[MAX_LAYERS];
    real *lnf, *lnf_rstd;       // (N, C), (N)
    real *logits;               // (N, V) logits, then probabilities, then their gradient
    real *losses;               // (N)
    // gradient scratch, shared by all layers (sized for the widest)
    real *dres;                 // (N, C) gradient of the residual stream
    real *dln;                  // (N, C)
    real *dmixed;               // (N, C)
    real *dattn;                // (N, C)
    real *dqkv;                 // (N, 3C)
    Scratch att_scratch;        // (threads, ATT_BLOCK, T) attention backward: dS of a block of queries
    real *dgate;                // (N, C)
    real *dh;                   // (N, 2 Fmax)
    real *dhg;                  // (N, Fmax)
    real *dy;                   // (N, C) memory read-out
    real *dmk, *dmv, *dmq;      // (B, NH, T, hs)
    real *dtheta, *deta, *dalpha; // (B, NH, T)
    real *dmgates;              // (N, 3NH)
    real *dmqkv;                // (N, 3C)  the memory's q | k | v after SiLU: their gradient
    real *dmconv, *dmraw;       // (N, 3C)  ... before SiLU (after the conv) and before the conv
    real *dyh;                  // (B, NH, T, hs) dy with heads split
    real *dw0_parts;            // (B, NH, Pmax) per-sequence memory gradients, summed in order
    Scratch mem_scratch;        // (threads, memory_scratch_size) the memory kernel's workspace
    real *tmp;                  // (N, C) forward scratch
} Acts;

static real *take(size_t *cursor, real *base, size_t n) {
    size_t at = *cursor;
    *cursor += (n + 15) & ~(size_t)15; // keep every piece 64-byte aligned
    return base ? base + at : NULL;
}

typedef struct {
    Config cfg;
    ParamTable table;
    size_t num_params;
    real *params, *grads;       // (num_params) each, layout_params order
    real *micro_grads;          // (num_params) with --grad-accum > 1: a later micro-batch's gradient
    float *adam_m, *adam_v;     // AdamW moments, same layout
    Weights w, g;               // views into params and grads
    int B, T;                   // activation capacity
    Acts a;
    real *act_memory;
    size_t act_size;
    real *rope;                 // (T, hs/2, 2) cos, sin
    int *tokens, *targets;      // (B*T)
    int step;                   // optimizer steps taken
    int update_not_finite;      // the last adamw_step wrote a weight or moment that is not finite
    double *norm_parts;         // (num_params / 4096, rounded up) grad_norm's partial sums
    // layer analysis: skip a layer's MLP slot, or the whole layer, in forward
    const int *skip_mlp, *skip_layer;
    int logits_last_row;        // sampling (B = 1): the head over the last position only, into logits[0..V)
    // wall time spent in forward + backward of the mixers (with W_O), the MLP slots, the head
    double seconds_mixer, seconds_mlp, seconds_head;
} Model;


// ----------------------------------------------------------------------------
// 4. layer kernels, each forward followed by its backward
//
// Activations are row-major (N, C) with N = B*T positions. Weight matrices are (OC, C):
// a linear layer is out = inp W^T, as in PyTorch and llm.c.
//
// The backward convention, as llm.c's: every *_backward adds (+=) into the gradients of its
// weights and of its inputs, and writes nothing else of the caller's. The parameter gradients are
// zeroed once per optimizer step (model_zero_grad); the scratch gradients a layer's backward adds
// into (Acts' d* buffers) are zeroed in one place per layer, at the top of mixer_backward and of
// mlp_backward (and of each Hope level). Two kernels are the chain's own steps rather than adds:
// crossentropy_backward turns the probabilities into d loss / d logits in place (the chain's
// start), and rope_backward rotates a gradient in place (d x = R^T d x, R orthogonal).

// --- the matmul contract -----------------------------------------------------
// C (M,N) = A (M,K) B (K,N)  (+ C if accumulate), with
//   A(i,k) = trans_a ? A[k*lda + i] : A[i*lda + k],   B(k,j) = trans_b ? B[j*ldb + k] : B[k*ldb + j],
//   C(i,j) = C[i*ldc + j].
// It is this triple loop, and gives its results bit for bit whatever the thread count:
//   for i < M, j < N:  s = 0;  for k < K: s += A(i,k) B(k,j);  C(i,j) = s (+ C(i,j))
// (up to the order of the k sum, which is fixed: see appendix A, where the fast version lives;
// test_tlm.c checks it against the plain loop at every transposition and many shapes).
//   gemm():        one product on all threads; call it outside a parallel region.
//   gemm_serial(): on the calling thread alone, for the small products a parallel loop hands
//                  out one per thread (attention per sequence and head, the memory).
//   gemm_init():   the packing buffers, per thread; before any gemm_serial in a parallel region.
static void gemm_init(void);
static void gemm(real *C, const real *A, const real *B, int M, int N, int K,
                 int trans_a, int lda, int trans_b, int ldb, int ldc, int accumulate);
static void gemm_serial(real *C, const real *A, const real *B, int M, int N, int K,
                        int trans_a, int lda, int trans_b, int ldb, int ldc, int accumulate);


// out (N,OC) = inp (N,C) W^T,   W (OC,C)
static void matmul_forward(real *out, const real *inp, const real *w, int N, int C, int OC) {
    gemm(out, inp, w, N, OC, C, 0, C, 1, C, OC, 0);
}
// dinp (N,C) += dout (N,OC) W ;   dW (OC,C) += dout^T inp
static void matmul_backward(real *dinp, real *dw, const real *dout, const real *inp, const real *w,
                            int N, int C, int OC) {
    if (dinp) gemm(dinp, dout, w, N, C, OC, 0, OC, 0, C, C, 1);
    if (dw)   gemm(dw, dout, inp, OC, C, N, 1, OC, 0, C, C, 1);
}

// --- token embedding -----------------------------------------------------------
// x[n,:] = wte[token[n], :]        x (N,C), wte (V,C)
static void embedding_forward(real *x, const int *tokens, const real *wte, int N, int C) {
    for (int n = 0; n < N; n++) memcpy(x + (size_t)n * C, wte + (size_t)tokens[n] * C, C * sizeof(real));
}
// dwte[token[n], :] += dx[n, :]
static void embedding_backward(real *dwte, const real *dx, const int *tokens, int N, int C) {
    for (int n = 0; n < N; n++) {
        real *row = dwte + (size_t)tokens[n] * C;
        for (int c = 0; c < C; c++) row[c] += dx[(size_t)n * C + c];
    }
}

// --- sums over positions, for weight gradients ---------------------------------------
// out[c] += sum_n a[n,c] b[n,c] s[n]  (s = NULL: 1), c < C. Threads take blocks of LANES
// channels and go down the rows: contiguous loads, vectorized across the channels, and every
// sum runs over n in order, so the bits do not depend on the thread count.
static void column_sums(real *out, const real *a, const real *b, const real *s, int N, int C) {
    int blocks = (C + LANES - 1) / LANES;
    #pragma omp parallel for
    for (int blk = 0; blk < blocks; blk++) {
        int c0 = blk * LANES, width = C - c0 < LANES ? C - c0 : LANES;
        real acc[LANES] = { 0 };
        for (int n = 0; n < N; n++) {
            const real *an = a + (size_t)n * C + c0, *bn = b + (size_t)n * C + c0;
            real sn = s ? s[n] : 1;
            if (width == LANES) for (int c = 0; c < LANES; c++) acc[c] += an[c] * bn[c] * sn;
            else                for (int c = 0; c < width; c++) acc[c] += an[c] * bn[c] * sn;
        }
        for (int c = 0; c < width; c++) out[c0 + c] += acc[c];
    }
}

// --- RMSNorm ---------------------------------------------------------------------
// y = x * r * w,   r = 1 / sqrt(mean(x^2) + eps)        x, y (N,C); w (C); rstd (N)
static const real rms_eps = 1e-5f;
static void rmsnorm_forward(real *y, real *rstd, const real *x, const real *w, int N, int C) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const real *xn = x + (size_t)n * C;
        real ss = 0;
        for (int c = 0; c < C; c++) ss += xn[c] * xn[c];
        real r = 1 / r_sqrt(ss / C + rms_eps);
        for (int c = 0; c < C; c++) y[(size_t)n * C + c] = xn[c] * r * w[c];
        rstd[n] = r;
    }
}
// dx += r w dy - x r^3 (sum_c dy_c w_c x_c) / C ;   dw += sum_n dy x r
static void rmsnorm_backward(real *dx, real *dw, const real *dy, const real *x, const real *w,
                             const real *rstd, int N, int C) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const real *xn = x + (size_t)n * C, *dyn = dy + (size_t)n * C;
        real r = rstd[n], dot = 0;
        for (int c = 0; c < C; c++) dot += dyn[c] * w[c] * xn[c];
        real k = dot * r * r * r / C;
        for (int c = 0; c < C; c++) dx[(size_t)n * C + c] += r * w[c] * dyn[c] - k * xn[c];
    }
    column_sums(dw, dy, x, rstd, N, C);
}

// --- rotary position embedding (RoPE) ------------------------------------------------
// Each head's vector is rotated pairwise: (a, b) at pair i and position t becomes
//   (a cos - b sin, a sin + b cos),  angle = t * 10000^(-2i/hs).
// rope_tab holds cos, sin for (T, hs/2). The rotation is orthogonal, so the backward is
// the same rotation by -angle. Applied in place to `heads` heads of size hs in each row
// of x (N = B*T rows, row stride ld).
static void rope_table(real *tab, int T, int hs) {
    for (int t = 0; t < T; t++)
        for (int i = 0; i < hs / 2; i++) {
            double angle = t * pow(10000.0, -2.0 * i / hs);
            tab[(t * (hs / 2) + i) * 2 + 0] = (real)cos(angle);
            tab[(t * (hs / 2) + i) * 2 + 1] = (real)sin(angle);
        }
}
static void rope_rotate(real *x, const real *tab, int B, int T, int heads, int hs, int ld, real sign) {
    #pragma omp parallel for
    for (int bt = 0; bt < B * T; bt++) {
        int t = bt % T;
        for (int h = 0; h < heads; h++) {
            real *v = x + (size_t)bt * ld + h * hs;
            for (int i = 0; i < hs / 2; i++) {
                real c = tab[(t * (hs / 2) + i) * 2], s = sign * tab[(t * (hs / 2) + i) * 2 + 1];
                real a = v[2 * i], b = v[2 * i + 1];
                v[2 * i] = a * c - b * s;
                v[2 * i + 1] = a * s + b * c;
            }
        }
    }
}
static void rope_forward(real *x, const real *tab, int B, int T, int heads, int hs, int ld) {
    rope_rotate(x, tab, B, T, heads, hs, ld, 1);
}
static void rope_backward(real *dx, const real *tab, int B, int T, int heads, int hs, int ld) {
    rope_rotate(dx, tab, B, T, heads, hs, ld, -1);
}

// --- causal self-attention ---------------------------------------------------------
// qkv (B,T,3C) holds q | k | v for NH heads of size hs = C/NH. For each head and query t:
//   s_tu = q_t . k_u / sqrt(hs)   for t-window < u <= t   (window 0: all u <= t)
//   p_t  = softmax(s_t) ;   out_t = sum_u p_tu v_u
// att (B,NH,T,T) keeps p for the backward; out (B,T,C).
//
// Per sequence and head these are small matrix products, S = Q K^T and O = P V, so each
// runs on the matmul's micro-kernel (gemm_serial: one thread per (b, h)). Queries go in
// blocks of ATT_BLOCK rows; block [i0, i1) only sees the keys [lo, i1), lo = i0 - window + 1
// (or 0), so the products skip what the causal mask would zero, except inside the diagonal
// block (where the mask is applied after the product).
enum { ATT_BLOCK = 64 };

// the keys that queries [i0, i1) can see: [lo, i1)
static int attention_first_key(int i0, int window) { return window > 0 && i0 - window + 1 > 0 ? i0 - window + 1 : 0; }

static void attention_forward(real *out, real *att, const real *qkv, int B, int T, int C, int NH, int window) {
    int hs = C / NH;
    real scale = 1 / r_sqrt((real)hs);
    gemm_init();
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const real *q = qkv + (size_t)b * T * 3 * C + h * hs, *k = q + C, *v = q + 2 * C; // rows 3C apart
            real *p = att + ((size_t)b * NH + h) * T * T;                                      // (T, T)
            real *o = out + (size_t)b * T * C + h * hs;                                        // rows C apart
            for (int i0 = 0; i0 < T; i0 += ATT_BLOCK) {
                int i1 = i0 + ATT_BLOCK < T ? i0 + ATT_BLOCK : T, lo = attention_first_key(i0, window);
                // S[i0:i1, lo:i1] = Q[i0:i1] K[lo:i1]^T, written into the rows of p
                gemm_serial(p + (size_t)i0 * T + lo, q + (size_t)i0 * 3 * C, k + (size_t)lo * 3 * C,
                            i1 - i0, i1 - lo, hs, 0, 3 * C, 1, 3 * C, T, 0);
                for (int t = i0; t < i1; t++) {
                    real *pt = p + (size_t)t * T;
                    int u0 = attention_first_key(t, window);
                    real maxs = -FLT_MAX;
                    for (int u = u0; u <= t; u++) maxs = pt[u] > maxs ? pt[u] : maxs;
                    for (int u = u0; u <= t; u++) pt[u] = r_exp((pt[u] - maxs) * scale);
                    real inv = 1 / sum16(pt + u0, t + 1 - u0);
                    for (int u = u0; u <= t; u++) pt[u] *= inv;
                    for (int u = 0; u < u0; u++) pt[u] = 0;
                    for (int u = t + 1; u < T; u++) pt[u] = 0;
                }
                // O[i0:i1] = P[i0:i1, lo:i1] V[lo:i1]
                gemm_serial(o + (size_t)i0 * C, p + (size_t)i0 * T + lo, v + (size_t)lo * 3 * C,
                            i1 - i0, hs, i1 - lo, 0, T, 0, 3 * C, C, 0);
            }
        }
}
// dP = dO V^T ;  dV += P^T dO ;  dS = P * (dP - rowsum(P * dP)) / sqrt(hs) ;  dQ += dS K ;  dK += dS^T Q.
// dqkv (B,T,3C) is accumulated. One thread owns one (b, h), so its dk, dv rows never race.
// scratch: per thread ATT_BLOCK x T, for dS of one block of queries.
static void attention_backward(real *dqkv, Scratch scratch, const real *dout, const real *qkv, const real *att,
                               int B, int T, int C, int NH, int window) {
    int hs = C / NH;
    real scale = 1 / r_sqrt((real)hs);
    gemm_init();
    #pragma omp parallel for collapse(2) num_threads(scratch_team(scratch))
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const real *q = qkv + (size_t)b * T * 3 * C + h * hs, *k = q + C, *v = q + 2 * C;
            real *dq = dqkv + (size_t)b * T * 3 * C + h * hs, *dk = dq + C, *dv = dq + 2 * C;
            const real *p = att + ((size_t)b * NH + h) * T * T, *dout_bh = dout + (size_t)b * T * C + h * hs;
            real *ds = scratch_mine(scratch); // (i1 - i0, i1 - lo), rows i1 - lo apart
            for (int i0 = 0; i0 < T; i0 += ATT_BLOCK) {
                int i1 = i0 + ATT_BLOCK < T ? i0 + ATT_BLOCK : T, lo = attention_first_key(i0, window);
                int rows = i1 - i0, keys = i1 - lo;
                const real *do_blk = dout_bh + (size_t)i0 * C, *p_blk = p + (size_t)i0 * T + lo;
                // dV[lo:i1] += P[i0:i1, lo:i1]^T dO[i0:i1]
                gemm_serial(dv + (size_t)lo * 3 * C, p_blk, do_blk, keys, hs, rows, 1, T, 0, C, 3 * C, 1);
                // dP[i0:i1, lo:i1] = dO[i0:i1] V[lo:i1]^T, then dS in place
                gemm_serial(ds, do_blk, v + (size_t)lo * 3 * C, rows, keys, hs, 0, C, 1, 3 * C, keys, 0);
                for (int t = i0; t < i1; t++) {
                    const real *pt = p + (size_t)t * T + lo; // pt[j], dst[j]: key lo + j
                    real *dst = ds + (size_t)(t - i0) * keys, pdp = 0;
                    int j0 = attention_first_key(t, window) - lo, j1 = t - lo; // the keys t sees
                    for (int j = j0; j <= j1; j++) pdp += pt[j] * dst[j];
                    for (int j = 0; j < keys; j++) dst[j] = j >= j0 && j <= j1 ? pt[j] * (dst[j] - pdp) * scale : 0;
                }
                // dQ[i0:i1] += dS K[lo:i1] ;  dK[lo:i1] += dS^T Q[i0:i1]
                gemm_serial(dq + (size_t)i0 * 3 * C, ds, k + (size_t)lo * 3 * C, rows, hs, keys, 0, keys, 0, 3 * C, 3 * C, 1);
                gemm_serial(dk + (size_t)lo * 3 * C, ds, q + (size_t)i0 * 3 * C, keys, hs, rows, 1, keys, 0, 3 * C, 3 * C, 1);
            }
        }
}

// --- sigmoid output gate (Gated Attention, Qiu et al. 2025, position G1) -----------------
// out = a * g,   g = sigmoid(z)       a (N,C); z, g (N,G) with G = C (elementwise) or NH
// (headwise: one gate per head, broadcast over the head's hs channels).
static void gate_forward(real *out, real *g, const real *a, const real *z, int N, int C, int G) {
    int span = C / G;
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        real *gn = g + (size_t)n * G, *outn = out + (size_t)n * C;
        const real *zn = z + (size_t)n * G, *an = a + (size_t)n * C;
        for (int j = 0; j < G; j++) gn[j] = sigmoid(zn[j]);
        if (span == 1) { // a gate per channel: one vectorized pass
            for (int c = 0; c < C; c++) outn[c] = an[c] * gn[c];
            continue;
        }
        for (int j = 0; j < G; j++)
            for (int c = j * span; c < (j + 1) * span; c++) outn[c] = an[c] * gn[j];
    }
}
// da += dout * g ;   dz += sum over the gate's channels of dout * a * g (1 - g)
static void gate_backward(real *da, real *dz, const real *dout, const real *a, const real *g, int N, int C, int G) {
    int span = C / G;
    if (span == 1) { // elementwise: no sums, one vectorized pass
        #pragma omp parallel for
        for (int n = 0; n < N; n++)
            for (int c = 0; c < C; c++) {
                size_t i = (size_t)n * C + c;
                da[i] += dout[i] * g[i];
                dz[i] += dout[i] * a[i] * g[i] * (1 - g[i]);
            }
        return;
    }
    #pragma omp parallel for
    for (int n = 0; n < N; n++)
        for (int j = 0; j < G; j++) {
            real gj = g[(size_t)n * G + j], s = 0;
            for (int c = j * span; c < (j + 1) * span; c++) {
                da[(size_t)n * C + c] += dout[(size_t)n * C + c] * gj;
                s += dout[(size_t)n * C + c] * a[(size_t)n * C + c];
            }
            dz[(size_t)n * G + j] += s * gj * (1 - gj);
        }
}

// --- SwiGLU ----------------------------------------------------------------------------
// h (N,2F) holds h1 | h3 = x W1^T | x W3^T (W1, W3 are adjacent in memory, so one matmul
// with the (2F,C) matrix computes both). hg (N,F) = silu(h1) * h3, silu(u) = u sigmoid(u).
static void swiglu_forward(real *hg, const real *h, int N, int F) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const real *h1 = h + (size_t)n * 2 * F, *h3 = h1 + F;
        for (int i = 0; i < F; i++) hg[(size_t)n * F + i] = h1[i] * sigmoid(h1[i]) * h3[i];
    }
}
// dh1 += dhg h3 silu'(h1),  silu'(u) = s (1 + u (1 - s)), s = sigmoid(u) ;  dh3 += dhg silu(h1)
static void swiglu_backward(real *dh, const real *dhg, const real *h, int N, int F) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const real *h1 = h + (size_t)n * 2 * F, *h3 = h1 + F;
        real *dh1 = dh + (size_t)n * 2 * F, *dh3 = dh1 + F;
        for (int i = 0; i < F; i++) {
            real s = sigmoid(h1[i]), d = dhg[(size_t)n * F + i];
            dh1[i] += d * h3[i] * s * (1 + h1[i] * (1 - s));
            dh3[i] += d * h1[i] * s;
        }
    }
}

// --- softmax cross-entropy ---------------------------------------------------------------
// probs (N,V) = softmax(logits), computed in place; losses[n] = -log probs[n, target[n]].
static void crossentropy_forward(real *losses, real *logits, const int *targets, int N, int V) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        real *row = logits + (size_t)n * V;
        real maxv = -FLT_MAX;
        for (int v = 0; v < V; v++) if (row[v] > maxv) maxv = row[v];
        for (int v = 0; v < V; v++) row[v] = r_exp(row[v] - maxv);
        real inv = 1 / sum16(row, V);
        for (int v = 0; v < V; v++) row[v] *= inv;
        losses[n] = -r_log(row[targets[n]] > 0 ? row[targets[n]] : (real)1e-30);
    }
}
// d loss_mean / d logits = (probs - onehot(target)) * dloss,  in place over probs
static void crossentropy_backward(real *probs, const int *targets, int N, int V, real dloss) {
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        real *row = probs + (size_t)n * V;
        for (int v = 0; v < V; v++) row[v] *= dloss;
        row[targets[n]] -= dloss;
    }
}

// ----------------------------------------------------------------------------
// 5. the neural memory (Titans; Hope's fast levels), as the papers write it
//
// One sequence of T tokens, one head of size d. The memory M_W is
//   depth 1:  M(x) = W x                          W (d, d)
//   depth 2:  M(x) = x + W2 silu(W1 x)            W1 (m, d), W2 (d, m), stored W1 then W2
// with P parameters, learned at test time on the associative loss l_t(W) = |M_W(k_t) - v_t|^2:
//   g_t = grad_W l_t(W_c)                 W_c: the weights at the start of t's chunk of tokens
//   c_t = min(1, clip / |g_t|)            the gradient's norm bounded (clip 0: c_t = 1)
//   S_t = eta_t S_{t-1} - theta_t c_t g_t surprise with momentum         (S_{-1} = 0)
//   W_t = (1 - alpha_t) W_{t-1} + S_t     forgetting and update          (W_{-1} = W0, learned)
//   y_t = M_{W_t}(q_t)   (Titans)   or   M_{W_c}(q_t)   (Hope: a chunk reads its start weights)
// A chunk of 1 token is the exact token-by-token recurrence. Below: the pieces (memory_read, a
// read y = M_W(x); memory_loss_grad, g = grad_W l(W); each with its backward), then the
// recurrence token by token, memory_recurrence_forward/backward, exactly as written above. The
// model runs the same function a whole chunk at a time in closed form (appendix B:
// memory_chunked_forward/backward), which the tests check against this one. Last, the module
// around it: projections into keys, values, queries and gates, per sequence and head.
//
// The sizes of one memory, for one head: its head size d, hidden width m (depth 2; depth 1
// ignores it), depth (1 or 2) and chunk length (the last chunk of a sequence may be shorter).
// The inner loop's step size is theta_t <= lr, whatever the chunk; clip bounds the norm of
// each token's gradient (0: no bound), see memory_clip_factor().
// conv: the kernel of the causal depthwise convolution on q, k, v (0: none); silu: SiLU on them.
typedef struct { int d, m, depth, chunk; real lr, clip; int conv, silu; } MemorySize;
// Titans' memory (one per head) and Hope's fast level k of layer l (one head as wide as the model)
static MemorySize titans_memory(const Config *c) {
    return (MemorySize){ c->dim / c->heads, c->mem_hidden, c->mem_depth, c->mem_chunk, (real)c->mem_lr, (real)c->mem_clip,
                         c->mem_conv, c->mem_silu };
}
static MemorySize hope_level(const Config *c, int l, int k) {
    return (MemorySize){ c->dim, c->cms_widths[l], 2, c->cms_chunks[k], (real)c->mem_lr, (real)c->mem_clip,
                         c->mem_conv, c->mem_silu };
}


// The states of one sequence and head: per chunk a record of W_c, S_c (P each) and what the
// forward computed of the chunk that its backward needs again (memory_saved_size: the factors,
// the coefficients, the read-out's hidden layer, Titans' n x n read products), then W and S at
// the end (2P). Each chunk's forward advances from its record into the next.
static size_t memory_saved_size(int n, int d, int m, int depth); // (appendix B)
static int memory_chunk_len(int T, MemorySize ms) { return ms.chunk < T ? ms.chunk : T; }
static size_t memory_record_size(int T, MemorySize ms) {
    return 2 * (size_t)memory_params(ms.depth, ms.d, ms.m) +
           memory_saved_size(memory_chunk_len(T, ms), ms.d, ms.m, ms.depth);
}
static size_t memory_state_size(int T, MemorySize ms) {
    size_t chunks = ((size_t)T + ms.chunk - 1) / ms.chunk;
    return chunks * memory_record_size(T, ms) + 2 * (size_t)memory_params(ms.depth, ms.d, ms.m);
}
// per thread: two P-vectors (the adjoints of W and S) and one chunk's factors, coefficients
// and products (memory_chunk_size)
static size_t memory_chunk_size(int n, int d, int m); // (appendix B)
static size_t memory_scratch_size(int T, MemorySize ms) {
    return 2 * (size_t)memory_params(ms.depth, ms.d, ms.m) + memory_chunk_size(memory_chunk_len(T, ms), ms.d, ms.m);
}
// the token-by-token recurrence: W_t and S_t of one chunk (2 n P for a chunk of n), four
// P-vectors, sixteen vectors of d + m
static inline size_t memory_recurrence_scratch_size(int T, MemorySize ms) {
    return (2 * (size_t)memory_chunk_len(T, ms) + 4) * memory_params(ms.depth, ms.d, ms.m) +
           16 * (size_t)(ms.d + ms.m);
}


// The inner loop stable by construction: each token's gradient is clipped to norm <= clip
// (titans-pytorch's max_grad_norm; the Titans paper's inner loop is plain gradient descent, whose
// step, with keys of unit norm, is stable only while 2 theta (chunk / (1 - eta)) < 2: a chunk sums
// its gradients at W_c, and the momentum adds them up again). With the clip every token moves S by
// at most theta_max clip, so |S_t| <= theta_max clip / (1 - eta_max) and W_t grows at most
// linearly in t, whatever the outer weights, the chunk or the learning rate do; below the bound
// the memory is the paper's. Chosen over a normalised step (which rescales every token, also
// the small, well-behaved ones) and over tighter gates (which would tie theta_max to the chunk,
// the dependence this removes). The scale c = min(1, clip/G) of a gradient of norm G, and dc/dG.
static inline real memory_clip_factor(real G, real clip) { return clip > 0 && G > clip ? clip / G : 1; }

static inline real silu(real z) { return z * sigmoid(z); }
static inline real silu_grad(real z) { real s = sigmoid(z); return s * (1 + z * (1 - s)); }
static inline real silu_grad2(real z) { real s = sigmoid(z); return s * (1 - s) * (2 + z * (1 - 2 * s)); }

// y = M_W(x). vec: scratch of 2m (z, a)
static void memory_read(real *y, const real *W, const real *x, int d, int m, int depth, real *vec) {
    if (depth == 1) {
        for (int i = 0; i < d; i++) y[i] = dot(W + (size_t)i * d, x, d);
        return;
    }
    const real *W1 = W, *W2 = W + (size_t)m * d;
    real *a = vec;
    for (int j = 0; j < m; j++) a[j] = silu(dot(W1 + (size_t)j * d, x, d));
    for (int i = 0; i < d; i++) y[i] = x[i] + dot(W2 + (size_t)i * m, a, m);
}

// dW += dM/dW^T dy ; dx += dM/dx^T dy       (y = M_W(x)). vec: scratch of 3m
static void memory_read_backward(real *restrict dW, real *restrict dx, const real *restrict dy,
                                  const real *restrict W, const real *restrict x, int d, int m, int depth,
                                  real *restrict vec) {
    if (depth == 1) {
        for (int i = 0; i < d; i++)
            for (int j = 0; j < d; j++) {
                dW[i * d + j] += dy[i] * x[j];
                dx[j] += W[i * d + j] * dy[i];
            }
        return;
    }
    const real *W1 = W, *W2 = W + (size_t)m * d;
    real *dW1 = dW, *dW2 = dW + (size_t)m * d;
    real *z = vec, *a = vec + m, *dz = vec + 2 * m;
    for (int j = 0; j < m; j++) {
        z[j] = dot(W1 + (size_t)j * d, x, d);
        a[j] = silu(z[j]);
        dz[j] = 0;
    }
    // y = x + W2 a:  dx += dy ; dW2 += dy a^T ; da = W2^T dy ; dz = da silu'(z)
    for (int i = 0; i < d; i++) {
        dx[i] += dy[i];
        for (int j = 0; j < m; j++) {
            dW2[i * m + j] += dy[i] * a[j];
            dz[j] += W2[i * m + j] * dy[i];
        }
    }
    // z = W1 x:  dW1 += dz x^T ; dx += W1^T dz
    for (int j = 0; j < m; j++) {
        dz[j] *= silu_grad(z[j]);
        for (int i = 0; i < d; i++) {
            dW1[j * d + i] += dz[j] * x[i];
            dx[i] += W1[j * d + i] * dz[j];
        }
    }
}

// g = grad_W |M_W(k) - v|^2
//   depth 1:  e = W k - v ;  g = 2 e k^T
//   depth 2:  z = W1 k, a = silu(z), e = k + W2 a - v ;  g2 = 2 e a^T ;  g1 = 2 (W2^T e * silu'(z)) k^T
// vec: scratch of 3m + d
static void memory_loss_grad(real *g, const real *W, const real *k, const real *v, int d, int m, int depth, real *vec) {
    real *e = vec;
    if (depth == 1) {
        for (int i = 0; i < d; i++) {
            real s = -v[i];
            #pragma omp simd reduction(+ : s)
            for (int j = 0; j < d; j++) s += W[i * d + j] * k[j];
            e[i] = s;
        }
        for (int i = 0; i < d; i++)
            for (int j = 0; j < d; j++) g[i * d + j] = 2 * e[i] * k[j];
        return;
    }
    const real *W1 = W, *W2 = W + (size_t)m * d;
    real *g1 = g, *g2 = g + (size_t)m * d;
    real *z = vec + d, *a = z + m, *u = a + m;
    for (int j = 0; j < m; j++) {
        real s = 0;
        #pragma omp simd reduction(+ : s)
        for (int i = 0; i < d; i++) s += W1[j * d + i] * k[i];
        z[j] = s;
        a[j] = silu(s);
        u[j] = 0;
    }
    for (int i = 0; i < d; i++) {
        real s = k[i] - v[i];
        #pragma omp simd reduction(+ : s)
        for (int j = 0; j < m; j++) s += W2[i * m + j] * a[j];
        e[i] = s;
    }
    for (int i = 0; i < d; i++)
        for (int j = 0; j < m; j++) {
            g2[i * m + j] = 2 * e[i] * a[j];
            u[j] += W2[i * m + j] * e[i];
        }
    for (int j = 0; j < m; j++) {
        u[j] *= silu_grad(z[j]);
        for (int i = 0; i < d; i++) g1[j * d + i] = 2 * u[j] * k[i];
    }
}

// Backward of g = grad_W l(W; k, v), for an incoming dg = scale * D:
//   dW += (dg/dW)^T dg ;  dk += (dg/dk)^T dg ;  dv += (dg/dv)^T dg
// (the second derivative of the loss: for depth 2 it needs silu''). vec: scratch of 12 max(d, m)
static void memory_loss_grad_backward(real *dW, real *dk, real *dv, const real *D, real scale, const real *W,
                                 const real *k, const real *v, int d, int m, int depth, real *vec) {
    if (depth == 1) {
        // e = W k - v ; g = 2 e k^T.  de = 2 dg k ; dk += 2 dg^T e ; then through e: dW += de k^T, dk += W^T de, dv -= de
        real *e = vec, *de = vec + d;
        for (int i = 0; i < d; i++) {
            real s = -v[i], t = 0;
            #pragma omp simd reduction(+ : s, t)
            for (int j = 0; j < d; j++) { s += W[i * d + j] * k[j]; t += D[i * d + j] * k[j]; }
            e[i] = s;
            de[i] = 2 * scale * t;
        }
        for (int i = 0; i < d; i++) {
            for (int j = 0; j < d; j++) {
                dk[j] += 2 * scale * D[i * d + j] * e[i] + W[i * d + j] * de[i];
                dW[i * d + j] += de[i] * k[j];
            }
            dv[i] -= de[i];
        }
        return;
    }
    const real *W1 = W, *W2 = W + (size_t)m * d, *D1 = D, *D2 = D + (size_t)m * d;
    real *dW1 = dW, *dW2 = dW + (size_t)m * d;
    real *z = vec, *a = z + m, *sp = a + m, *r = sp + m, *da = r + m, *dz = da + m, *du = dz + m;
    real *e = du + m, *de = e + d;
    // recompute the forward of g
    for (int j = 0; j < m; j++) {
        real s = 0;
        #pragma omp simd reduction(+ : s)
        for (int i = 0; i < d; i++) s += W1[j * d + i] * k[i];
        z[j] = s;
        a[j] = silu(s);
        sp[j] = silu_grad(s);
        r[j] = 0;
    }
    for (int i = 0; i < d; i++) {
        real s = k[i] - v[i];
        #pragma omp simd reduction(+ : s)
        for (int j = 0; j < m; j++) s += W2[i * m + j] * a[j];
        e[i] = s;
    }
    for (int i = 0; i < d; i++)
        for (int j = 0; j < m; j++) r[j] += W2[i * m + j] * e[i];           // r = W2^T e, u = r * silu'(z)
    // g2 = 2 e a^T:  de = 2 dg2 a ;  da = 2 dg2^T e
    // g1 = 2 u k^T:  du = 2 dg1 k ;  dk += 2 dg1^T u
    for (int j = 0; j < m; j++) { da[j] = 0; du[j] = 0; }
    for (int i = 0; i < d; i++) {
        real s = 0;
        #pragma omp simd reduction(+ : s)
        for (int j = 0; j < m; j++) {
            s += D2[i * m + j] * a[j];
            da[j] += 2 * scale * D2[i * m + j] * e[i];
        }
        de[i] = 2 * scale * s;
    }
    for (int j = 0; j < m; j++) {
        real s = 0, u = r[j] * sp[j];
        #pragma omp simd reduction(+ : s)
        for (int i = 0; i < d; i++) {
            s += D1[j * d + i] * k[i];
            dk[i] += 2 * scale * D1[j * d + i] * u;
        }
        du[j] = 2 * scale * s;
    }
    // u = r * silu'(z):  dr = du silu'(z) (kept in du) ;  dz = du r silu''(z)
    for (int j = 0; j < m; j++) {
        dz[j] = du[j] * r[j] * silu_grad2(z[j]);
        du[j] *= sp[j];
    }
    // r = W2^T e:  dW2 += e dr^T ;  de += W2 dr
    // e = k + W2 a - v:  dk += de ; dv -= de ; dW2 += de a^T ; da += W2^T de
    for (int i = 0; i < d; i++) {
        real s = 0;
        #pragma omp simd reduction(+ : s)
        for (int j = 0; j < m; j++) s += W2[i * m + j] * du[j];
        de[i] += s;
    }
    for (int i = 0; i < d; i++) {
        dk[i] += de[i];
        dv[i] -= de[i];
        for (int j = 0; j < m; j++) {
            dW2[i * m + j] += e[i] * du[j] + de[i] * a[j];
            da[j] += W2[i * m + j] * de[i];
        }
    }
    // a = silu(z): dz += da silu'(z) ;  z = W1 k: dW1 += dz k^T ; dk += W1^T dz
    for (int j = 0; j < m; j++) {
        dz[j] += da[j] * sp[j];
        for (int i = 0; i < d; i++) {
            dW1[j * d + i] += dz[j] * k[i];
            dk[i] += W1[j * d + i] * dz[j];
        }
    }
}

// The recurrence as the papers write it: token by token, each g_t built whole by
// memory_loss_grad and its backward taken by memory_loss_grad_backward. The model runs the
// chunked form of appendix B, which the tests check against this one. y (T, d) from k, v, q
// (T, d) and the gates theta, eta, alpha (T); states: W_c, S_c at the start of every chunk, in
// the chunked form's layout (memory_state_size(); the rest of each record unused).
static inline void memory_recurrence_forward(real *y, real *states, real *scratch, const real *k, const real *v, const real *q,
                           const real *theta, const real *eta, const real *alpha, const real *W0,
                           int T, MemorySize ms, int read_chunk_start) {
    int d = ms.d, m = ms.m, depth = ms.depth, chunk = ms.chunk;
    int P = memory_params(depth, d, m);
    size_t record = memory_record_size(T, ms); // the same layout (the rest unused)
    real *W = scratch, *S = W + P, *g = S + P, *vec = g + 2 * (size_t)P;
    memcpy(W, W0, P * sizeof(real));
    memset(S, 0, P * sizeof(real));
    for (int c = 0, s = 0; s < T; c++, s += chunk) {
        real *Wc = states + c * record;               // the chunk's start: W_c and S
        memcpy(Wc, W, P * sizeof(real));
        memcpy(Wc + P, S, P * sizeof(real));
        for (int t = s; t < T && t < s + chunk; t++) {
            memory_loss_grad(g, Wc, k + (size_t)t * d, v + (size_t)t * d, d, m, depth, vec);
            real step = theta[t] * memory_clip_factor(r_sqrt(dot(g, g, P)), ms.clip);
            for (int p = 0; p < P; p++) {
                S[p] = eta[t] * S[p] - step * g[p];
                W[p] = (1 - alpha[t]) * W[p] + S[p];
            }
            memory_read(y + (size_t)t * d, read_chunk_start ? Wc : W, q + (size_t)t * d, d, m, depth, vec);
        }
    }
    int chunks = (T + chunk - 1) / chunk;
    memcpy(states + chunks * record, W, P * sizeof(real));
    memcpy(states + chunks * record + P, S, P * sizeof(real));
}

// Its backward, token by token. Adjoints, going back through the tokens of each chunk
// (dW, dS: of W_t, S_t):
//   read:        dW += dM/dW^T dy_t (Titans; Hope adds it to dW_c) ;  dq_t += dM/dq^T dy_t
//   W_t = (1-alpha) W_{t-1} + S_t:   dS += dW ;  dalpha_t = -<W_{t-1}, dW> ;  dW <- (1-alpha_t) dW
//   S_t = eta S_{t-1} - theta g_t:   dtheta_t = -<g_t, dS> ;  deta_t = <S_{t-1}, dS> ;
//                                    dg_t = -theta_t dS (into dW_c, dk_t, dv_t) ;  dS <- eta_t dS
// and at the chunk's start dW += dW_c, since W_c is W_{s-1}. At the very start dW0 += dW.
static inline void memory_recurrence_backward(real *dk, real *dv, real *dq, real *dtheta, real *deta, real *dalpha, real *dW0,
                            real *scratch, const real *dy, const real *states, const real *k, const real *v,
                            const real *q, const real *theta, const real *eta, const real *alpha,
                            int T, MemorySize ms, int read_chunk_start) {
    int d = ms.d, m = ms.m, depth = ms.depth, chunk = ms.chunk;
    int P = memory_params(depth, d, m), len = memory_chunk_len(T, ms);
    size_t record = memory_record_size(T, ms);
    real *Wt = scratch, *St = Wt + (size_t)len * P, *dW = St + (size_t)len * P, *dS = dW + P, *dWc = dS + P;
    real *g = dWc + P, *vec = g + P;
    memset(dW, 0, P * sizeof(real));
    memset(dS, 0, P * sizeof(real));
    int chunks = (T + chunk - 1) / chunk;
    for (int c = chunks - 1; c >= 0; c--) {
        int s = c * chunk, n = T - s < chunk ? T - s : chunk;
        const real *Wc = states + c * record, *Sc = Wc + P;
        // recompute W_t, S_t of this chunk
        for (int i = 0; i < n; i++) {
            int t = s + i;
            const real *Wp = i ? Wt + (size_t)(i - 1) * P : Wc, *Sp = i ? St + (size_t)(i - 1) * P : Sc;
            real *Wi = Wt + (size_t)i * P, *Si = St + (size_t)i * P;
            memory_loss_grad(g, Wc, k + (size_t)t * d, v + (size_t)t * d, d, m, depth, vec);
            real step = theta[t] * memory_clip_factor(r_sqrt(dot(g, g, P)), ms.clip);
            for (int p = 0; p < P; p++) {
                Si[p] = eta[t] * Sp[p] - step * g[p];
                Wi[p] = (1 - alpha[t]) * Wp[p] + Si[p];
            }
        }
        memset(dWc, 0, P * sizeof(real));
        for (int i = n - 1; i >= 0; i--) {
            int t = s + i;
            const real *Wi = Wt + (size_t)i * P;
            const real *Wp = i ? Wt + (size_t)(i - 1) * P : Wc, *Sp = i ? St + (size_t)(i - 1) * P : Sc;
            if (read_chunk_start)
                memory_read_backward(dWc, dq + (size_t)t * d, dy + (size_t)t * d, Wc, q + (size_t)t * d, d, m, depth, vec);
            else
                memory_read_backward(dW, dq + (size_t)t * d, dy + (size_t)t * d, Wi, q + (size_t)t * d, d, m, depth, vec);
            real da = 0;
            #pragma omp simd reduction(+ : da)
            for (int p = 0; p < P; p++) {
                dS[p] += dW[p];
                da -= Wp[p] * dW[p];
                dW[p] *= 1 - alpha[t];
            }
            dalpha[t] += da;
            memory_loss_grad(g, Wc, k + (size_t)t * d, v + (size_t)t * d, d, m, depth, vec);
            real dth = 0, det = 0;
            #pragma omp simd reduction(+ : dth, det)
            for (int p = 0; p < P; p++) {
                dth -= g[p] * dS[p];
                det += Sp[p] * dS[p];
            }
            // the step theta c: dtheta += c dstep ;  clipped (c = clip/G): dc = theta dstep,
            // dG = -c/G dc, dg += dG g/G
            real G = r_sqrt(dot(g, g, P)), c = memory_clip_factor(G, ms.clip);
            dtheta[t] += c * dth;
            deta[t] += det;
            memory_loss_grad_backward(dWc, dk + (size_t)t * d, dv + (size_t)t * d, dS, -theta[t] * c, Wc,
                                 k + (size_t)t * d, v + (size_t)t * d, d, m, depth, vec);
            if (c < 1)
                memory_loss_grad_backward(dWc, dk + (size_t)t * d, dv + (size_t)t * d, g, -c / (G * G) * theta[t] * dth, Wc,
                                     k + (size_t)t * d, v + (size_t)t * d, d, m, depth, vec);
            for (int p = 0; p < P; p++) dS[p] *= eta[t];
        }
        for (int p = 0; p < P; p++) dW[p] += dWc[p];
    }
    for (int p = 0; p < P; p++) dW0[p] += dW[p];
}

// The model's memory: the same function as memory_recurrence_forward/backward, a chunk at a
// time in closed form (appendix B). Same arguments, except that the backward does not need v
// (it reaches it through what the forward kept in `states`); scratch per thread:
// memory_scratch_size(), states: memory_state_size().
static void memory_chunked_forward(real *y, real *states, real *scratch, const real *k, const real *v,
                                   const real *q, const real *theta, const real *eta, const real *alpha,
                                   const real *W0, int T, MemorySize ms, int read_chunk_start);
static void memory_chunked_backward(real *dk, real *dv, real *dq, real *dtheta, real *deta, real *dalpha,
                                    real *dW0, real *scratch, const real *dy, const real *states,
                                    const real *k, const real *q, const real *theta, const real *eta, const real *alpha,
                                    int T, MemorySize ms, int read_chunk_start);

// --- causal depthwise convolution over time (the memory's q, k, v) --------------------------
// out[b,t,c] = sum_{j<K, j<=t} w[c,j] x[b,t-j,c]      x, out (B,T,CH); w (CH,K), tap 0 the current token
// The loops run over the channels innermost, reading w's taps from a copy wt transposed to (K,CH)
// (w's rows are a channel's K taps: read in place, each tap would be a stride-K gather).
static real *conv_taps(const real *w, int CH, int K) { // wt (K,CH), to be freed
    real *wt = xcalloc((size_t)K * CH, sizeof(real), "conv taps");
    for (int c = 0; c < CH; c++)
        for (int j = 0; j < K; j++) wt[(size_t)j * CH + c] = w[(size_t)c * K + j];
    return wt;
}
static void conv_forward(real *out, const real *x, const real *w, int B, int T, int CH, int K) {
    real *wt = conv_taps(w, CH, K);
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            real *o = out + ((size_t)b * T + t) * CH;
            for (int c = 0; c < CH; c++) o[c] = 0;
            for (int j = 0; j < K && j <= t; j++) {
                const real *xr = x + ((size_t)b * T + t - j) * CH, *wj = wt + (size_t)j * CH;
                for (int c = 0; c < CH; c++) o[c] += wj[c] * xr[c];
            }
        }
    free(wt);
}
// dx[b,t,c] += sum_{j, t+j<T} w[c,j] dout[b,t+j,c] ;   dw[c,j] += sum_{b,t>=j} dout[b,t,c] x[b,t-j,c]
// One pass over the rows for both, each thread a range of whole blocks of LANES channels: dw's
// sums (acc, (K,CH)) run over the rows in order, so they do not depend on the thread count.
static void conv_backward(real *dx, real *dw, const real *dout, const real *x, const real *w,
                          int B, int T, int CH, int K) {
    real *wt = conv_taps(w, CH, K), *acc = xcalloc((size_t)K * CH, sizeof(real), "conv dw sums");
    int blocks = (CH + LANES - 1) / LANES, parts = num_threads() < blocks ? num_threads() : blocks;
    #pragma omp parallel for
    for (int part = 0; part < parts; part++) {
        int lo = LANES * (blocks * part / parts), hi = LANES * (blocks * (part + 1) / parts);
        if (hi > CH) hi = CH;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                size_t row = (size_t)b * T + t;
                real *d = dx + row * CH;
                const real *g = dout + row * CH;
                for (int j = 0; j < K && t + j < T; j++) {
                    const real *gj = g + (size_t)j * CH, *wj = wt + (size_t)j * CH;
                    for (int c = lo; c < hi; c++) d[c] += wj[c] * gj[c];
                }
                for (int j = 0; j < K && j <= t; j++) {
                    const real *xr = x + (row - j) * CH;
                    real *aj = acc + (size_t)j * CH;
                    for (int c = lo; c < hi; c++) aj[c] += g[c] * xr[c];
                }
            }
    }
    for (int c = 0; c < CH; c++)
        for (int j = 0; j < K; j++) dw[(size_t)c * K + j] += acc[(size_t)j * CH + c];
    free(wt);
    free(acc);
}
// SiLU elementwise:  dx += dout silu'(x)
static void silu_backward(real *dx, const real *dout, const real *x, size_t n) {
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) dx[i] += dout[i] * silu_grad(x[i]);
}

// --- the neural memory module (Titans' mixer branch, Hope's fast levels) -------------------
// From the normalised block input x (N,C), as Titans' section 4.4 builds its memory branch:
//   p = x Wqkv^T ;  p <- CausalDepthwiseConv_K(p) ;  p <- silu(p)      (each optional: mem_conv, mem_silu)
//   q, k, v = split_heads(p),  k <- k/|k|, q <- q/|q|        per head of size hs
// The convolution mixes each channel over the K = 4 latest tokens (Mamba's and GLA's kernel, which
// Titans follows): a key then says what the last few tokens were, not one token alone, at
// 3CK parameters and a cost far below the projection's; it starts as the identity.
//   z = x Wg^T + b :  theta = mem_lr sigmoid(z_step), eta = eta_max sigmoid(z_mom), alpha = sigmoid(z_forget)
// theta does not depend on the chunk: the chunk only sets how closely the token-by-token
// recurrence is approximated (its gradients taken at the chunk's start weights); the inner loop's
// stability comes from the clipped gradient (memory_clip_factor), not from a smaller step.
//   y = memory recurrence (memory_chunked_forward) per sequence and head, heads merged back (N,C)
static const real eta_max = (real)0.9;

static void memory_module_forward(MemoryActs *ma, const real *x, const real *wqkv, const real *wconv, const real *wgates,
                                  const real *bgates, const real *w0, Scratch scratch,
                                  int B, int T, int C, int NH, MemorySize ms, int read_chunk_start) {
    int N = B * T, hs = ms.d, P = memory_params(ms.depth, hs, ms.m);
    size_t S = memory_state_size(T, ms);
    matmul_forward(ma->qkv, x, wqkv, N, C, 3 * C);
    if (ms.conv) conv_forward(ma->conv, ma->qkv, wconv, B, T, 3 * C, ms.conv); // (else ma->conv is ma->qkv)
    matmul_forward(ma->gates, x, wgates, N, C, 3 * NH);
    #pragma omp parallel for collapse(3)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                size_t n = (size_t)b * T + t, i = ((size_t)b * NH + h) * T + t;
                const real *p = ma->conv + n * 3 * C + h * hs;
                real q[hs], k[hs], v[hs]; // p's head, after SiLU
                for (int j = 0; j < hs; j++) {
                    q[j] = ms.silu ? silu(p[j]) : p[j];
                    k[j] = ms.silu ? silu(p[C + j]) : p[C + j];
                    v[j] = ms.silu ? silu(p[2 * C + j]) : p[2 * C + j];
                }
                real qq = dot(q, q, hs), kk = dot(k, k, hs);
                real q_inv = 1 / r_sqrt(qq + (real)1e-12), k_inv = 1 / r_sqrt(kk + (real)1e-12);
                for (int j = 0; j < hs; j++) {
                    ma->q[i * hs + j] = q[j] * q_inv;
                    ma->k[i * hs + j] = k[j] * k_inv;
                    ma->v[i * hs + j] = v[j];
                }
                ma->q_inv[i] = q_inv;
                ma->k_inv[i] = k_inv;
                real *z = ma->gates + n * 3 * NH;
                for (int g = 0; g < 3; g++) z[g * NH + h] += bgates[g * NH + h];
                ma->theta[i] = ms.lr * sigmoid(z[h]);
                ma->eta[i] = eta_max * sigmoid(z[NH + h]);
                ma->alpha[i] = sigmoid(z[2 * NH + h]);
            }
    gemm_init(); // memory_chunked_forward runs gemm_serial inside the loop
    // one task per sequence and head, handed out as threads come free: each writes only its
    // own outputs, so the results do not depend on which thread runs it
    #pragma omp parallel for collapse(2) schedule(dynamic) num_threads(scratch_team(scratch))
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            size_t bh = (size_t)b * NH + h;
            memory_chunked_forward(ma->yh + bh * T * hs, ma->states + bh * S, scratch_mine(scratch),
                           ma->k + bh * T * hs, ma->v + bh * T * hs, ma->q + bh * T * hs,
                           ma->theta + bh * T, ma->eta + bh * T, ma->alpha + bh * T, w0 + (size_t)h * P,
                           T, ms, read_chunk_start);
        }
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++)
                memcpy(ma->y + ((size_t)b * T + t) * C + h * hs, ma->yh + (((size_t)b * NH + h) * T + t) * hs, hs * sizeof(real));
}

// Backward of the module: dy (N,C) in; dx (N,C) and the weight gradients accumulated.
//   memory_chunked_backward gives dk, dv, dq, dtheta, deta, dalpha and dW0 per sequence and head;
//   through k <- k/|k|: dk_raw = (dk - k (k . dk)) / |k|  (same for q);
//   through the gates: dz = dtheta theta (1 - theta/mem_lr), deta eta (1 - eta/eta_max), ...
static void memory_module_backward(Acts *a, real *dx, real *dwqkv, real *dwconv, real *dwgates, real *dbgates, real *dw0,
                                   const real *dy, const MemoryActs *ma, const real *x, const real *wqkv, const real *wconv,
                                   const real *wgates, int B, int T, int C, int NH,
                                   MemorySize ms, int read_chunk_start) {
    int N = B * T, hs = ms.d, P = memory_params(ms.depth, hs, ms.m);
    size_t S = memory_state_size(T, ms);
    // the module's scratch gradients, which the kernels below add into, cleared in this one place
    zero_parallel(a->dmk, (size_t)N * C);
    zero_parallel(a->dmv, (size_t)N * C);
    zero_parallel(a->dmq, (size_t)N * C);
    zero_parallel(a->dtheta, (size_t)N * NH);
    zero_parallel(a->deta, (size_t)N * NH);
    zero_parallel(a->dalpha, (size_t)N * NH);
    zero_parallel(a->dw0_parts, (size_t)B * NH * P);
    zero_parallel(a->dmqkv, (size_t)N * 3 * C);
    if (ms.silu) zero_parallel(a->dmconv, (size_t)N * 3 * C); // (used only with SiLU, the conv)
    if (ms.conv) zero_parallel(a->dmraw, (size_t)N * 3 * C);
    zero_parallel(a->dmgates, (size_t)N * 3 * NH);
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++)
                memcpy(a->dyh + (((size_t)b * NH + h) * T + t) * hs, dy + ((size_t)b * T + t) * C + h * hs, hs * sizeof(real));
    gemm_init(); // memory_chunked_backward runs gemm_serial inside the loop
    #pragma omp parallel for collapse(2) schedule(dynamic) num_threads(scratch_team(a->mem_scratch))
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            size_t bh = (size_t)b * NH + h;
            memory_chunked_backward(a->dmk + bh * T * hs, a->dmv + bh * T * hs, a->dmq + bh * T * hs,
                            a->dtheta + bh * T, a->deta + bh * T, a->dalpha + bh * T, a->dw0_parts + bh * P,
                            scratch_mine(a->mem_scratch), a->dyh + bh * T * hs,
                            ma->states + bh * S, ma->k + bh * T * hs, ma->q + bh * T * hs,
                            ma->theta + bh * T, ma->eta + bh * T, ma->alpha + bh * T,
                            T, ms, read_chunk_start);
        }
    // dW0[h] += sum over sequences, in a fixed order
    #pragma omp parallel for
    for (int h = 0; h < NH; h++)
        for (int b = 0; b < B; b++)
            for (int p = 0; p < P; p++) dw0[(size_t)h * P + p] += a->dw0_parts[((size_t)b * NH + h) * P + p];
    real *dqkv = a->dmqkv, *dz = a->dmgates;
    #pragma omp parallel for collapse(3)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                size_t n = (size_t)b * T + t, i = ((size_t)b * NH + h) * T + t;
                const real *q = ma->q + i * hs, *k = ma->k + i * hs;
                const real *dq = a->dmq + i * hs, *dk = a->dmk + i * hs, *dv = a->dmv + i * hs;
                real qdq = dot(q, dq, hs), kdk = dot(k, dk, hs);
                real *dq_raw = dqkv + n * 3 * C + h * hs, *dk_raw = dq_raw + C, *dv_raw = dq_raw + 2 * C;
                for (int j = 0; j < hs; j++) {
                    dq_raw[j] += (dq[j] - q[j] * qdq) * ma->q_inv[i];
                    dk_raw[j] += (dk[j] - k[j] * kdk) * ma->k_inv[i];
                    dv_raw[j] += dv[j];
                }
                real th = ma->theta[i], et = ma->eta[i], al = ma->alpha[i];
                dz[n * 3 * NH + h] += a->dtheta[i] * th * (1 - th / ms.lr);
                dz[n * 3 * NH + NH + h] += a->deta[i] * et * (1 - et / eta_max);
                dz[n * 3 * NH + 2 * NH + h] += a->dalpha[i] * al * (1 - al);
            }
    for (int j = 0; j < 3 * NH; j++) {
        real s = 0;
        for (int n = 0; n < N; n++) s += dz[(size_t)n * 3 * NH + j];
        dbgates[j] += s;
    }
    // back through SiLU (dmqkv -> dmconv), the convolution (-> dmraw), the projection
    const real *dp = dqkv;
    if (ms.silu) { silu_backward(a->dmconv, dp, ma->conv, (size_t)N * 3 * C); dp = a->dmconv; }
    if (ms.conv) { conv_backward(a->dmraw, dwconv, dp, ma->qkv, wconv, B, T, 3 * C, ms.conv); dp = a->dmraw; }
    matmul_backward(dx, dwqkv, dp, x, wqkv, N, C, 3 * C);
    matmul_backward(dx, dwgates, dz, x, wgates, N, C, 3 * NH);
}

// ----------------------------------------------------------------------------
// 6. the model: building it, the mixer, the MLP slot, forward and backward

static int gate_width(const Config *c) { return c->gate_headwise ? c->heads : c->dim; }

static void layout_memory_acts(MemoryActs *ma, size_t *cur, real *base, int B, int T, int C, int NH,
                               MemorySize ms) {
    size_t N = (size_t)B * T;
    ma->qkv = take(cur, base, N * 3 * C);
    ma->conv = ms.conv ? take(cur, base, N * 3 * C) : ma->qkv;
    ma->k = take(cur, base, N * C);
    ma->v = take(cur, base, N * C);
    ma->q = take(cur, base, N * C);
    ma->k_inv = take(cur, base, N * NH);
    ma->q_inv = take(cur, base, N * NH);
    ma->gates = take(cur, base, N * 3 * NH);
    ma->theta = take(cur, base, N * NH);
    ma->eta = take(cur, base, N * NH);
    ma->alpha = take(cur, base, N * NH);
    ma->states = take(cur, base, (size_t)B * NH * memory_state_size(T, ms));
    ma->yh = take(cur, base, N * C);
    ma->y = take(cur, base, N * C);
}

static size_t layout_activations(Model *model, real *base, int B, int T) {
    const Config *c = &model->cfg;
    Acts *a = &model->a;
    size_t N = (size_t)B * T, cur = 0;
    int C = c->dim, NH = c->heads, V = c->vocab, Fmax = 0, Pmax = 0;
    size_t scratch = 0;
    a->x0 = take(&cur, base, N * C);
    for (int l = 0; l < c->layers; l++) {
        LayerActs *la = &a->layer[l];
        int F = c->mlp_widths[l];
        if (F > Fmax) Fmax = F;
        memset(la, 0, sizeof(*la));
        la->ln1 = take(&cur, base, N * C);
        la->ln1_rstd = take(&cur, base, N);
        la->qkv = take(&cur, base, N * 3 * C);
        la->att = take(&cur, base, N * NH * T);
        la->attn = take(&cur, base, N * C);
        if (c->arch == ARCH_GATED) la->gate = take(&cur, base, N * gate_width(c));
        if (c->arch == ARCH_TITANS) {
            MemorySize ms = titans_memory(c);
            int P = memory_params(ms.depth, ms.d, ms.m);
            layout_memory_acts(&la->mem, &cur, base, B, T, C, NH, ms);
            la->my_norm = take(&cur, base, N * C);
            la->my_rstd = take(&cur, base, N);
            la->mgate = take(&cur, base, N * C);
            if (P > Pmax) Pmax = P;
            size_t s = memory_scratch_size(T, ms);
            if (s > scratch) scratch = s;
        }
        // transformer and hope feed the attention output straight into W_O
        la->mixed = c->arch == ARCH_GATED || c->arch == ARCH_TITANS ? take(&cur, base, N * C) : la->attn;
        la->res1 = take(&cur, base, N * C);
        la->ln2 = take(&cur, base, N * C);
        la->ln2_rstd = take(&cur, base, N);
        la->h = take(&cur, base, N * 2 * F);
        la->hg = take(&cur, base, N * F);
        la->res2 = take(&cur, base, N * C);
        la->out = la->res2;
        if (c->arch == ARCH_HOPE) {
            la->cms_res[0] = la->res2;
            for (int k = 1; k < c->cms_levels; k++) {
                int m = c->cms_widths[l], P = memory_params(2, C, m);
                la->cms_ln[k] = take(&cur, base, N * C);
                la->cms_rstd[k] = take(&cur, base, N);
                layout_memory_acts(&la->cms[k], &cur, base, B, T, C, 1, hope_level(c, l, k));
                la->cms_res[k] = take(&cur, base, N * C);
                la->out = la->cms_res[k];
                if (P > Pmax) Pmax = P;
                size_t s = memory_scratch_size(T, hope_level(c, l, k));
                if (s > scratch) scratch = s;
            }
        }
    }
    a->lnf = take(&cur, base, N * C);
    a->lnf_rstd = take(&cur, base, N);
    a->logits = take(&cur, base, N * V);
    a->losses = take(&cur, base, N);
    a->dres = take(&cur, base, N * C);
    a->dln = take(&cur, base, N * C);
    a->dmixed = take(&cur, base, N * C);
    a->dattn = take(&cur, base, N * C);
    a->dqkv = take(&cur, base, N * 3 * C);
    a->att_scratch = (Scratch){take(&cur, base, (size_t)num_threads() * ATT_BLOCK * T), (size_t)ATT_BLOCK * T, num_threads()};
    a->dgate = take(&cur, base, N * C);
    a->dh = take(&cur, base, N * 2 * Fmax);
    a->dhg = take(&cur, base, N * Fmax);
    if (c->arch == ARCH_TITANS || c->arch == ARCH_HOPE) {
        a->dy = take(&cur, base, N * C);
        a->dmk = take(&cur, base, N * C);
        a->dmv = take(&cur, base, N * C);
        a->dmq = take(&cur, base, N * C);
        a->dtheta = take(&cur, base, N * NH);
        a->deta = take(&cur, base, N * NH);
        a->dalpha = take(&cur, base, N * NH);
        a->dmgates = take(&cur, base, N * 3 * NH);
        a->dmqkv = take(&cur, base, N * 3 * C);
        a->dmconv = take(&cur, base, N * 3 * C);
        a->dmraw = take(&cur, base, N * 3 * C);
        a->dyh = take(&cur, base, N * C);
        a->dw0_parts = take(&cur, base, (size_t)B * NH * Pmax);
        a->mem_scratch = (Scratch){take(&cur, base, (size_t)num_threads() * scratch), scratch, num_threads()};
    }
    a->tmp = take(&cur, base, N * C);
    return cur;
}

// The widths of a config's taper at mean width H (the MLP's, or with `fast` Hope's fast levels,
// which follow the same taper; explicit widths then act as L groups of w_l / mlp_width).
static int config_widths(const Config *c, int *widths, int H, int fast, char *err, size_t errlen) {
    int L = c->layers, n = 0;
    char why[200];
    int rc = 0;
    if (c->taper == TAPER_GROUPS) {
        rc = taper_group_widths(widths, L, H, c->taper_group, c->taper_groups, c->taper_multiple, why, sizeof(why));
    } else if (c->taper == TAPER_EXPLICIT) {
        long sum = 0;
        while (n < L && c->widths_given[n] > 0) sum += c->widths_given[n++];
        if (n != L) {
            snprintf(err, errlen, "--mlp-widths gives %d widths for --layers %d", n, L);
            return -1;
        }
        if (sum != (long)L * c->mlp_width) {
            snprintf(err, errlen, "--mlp-widths sum to %ld, they must sum to --layers x --mlp-width = %d x %d = %ld",
                     sum, L, c->mlp_width, (long)L * c->mlp_width);
            return -1;
        }
        if (!fast) {
            for (int l = 0; l < L; l++) widths[l] = c->widths_given[l];
            return 0;
        }
        double f[MAX_LAYERS];
        for (int l = 0; l < L; l++) f[l] = (double)c->widths_given[l] / c->mlp_width;
        rc = taper_group_widths(widths, L, H, f, L, c->taper_multiple, why, sizeof(why));
    } else {
        rc = taper_widths(widths, L, H, c->taper, c->taper_start, c->taper_end, c->taper_multiple, why, sizeof(why));
    }
    if (rc) snprintf(err, errlen, "--taper: %s", why);
    return rc;
}

// What the option table cannot check (each option's range is its row's, checked as it is parsed
// from the command line or a checkpoint): how a config's options combine. Then the per-layer
// widths. Returns 0, or -1 with a one-line reason in err naming the flag.
static int config_finish(Config *c, char *err, size_t n) {
    char why[256];
    if (c->vocab == 0)
        return snprintf(err, n, "--vocab 0 (from the shards' headers): no vocabulary was found"), -1;
    if (c->dim % c->heads != 0)
        return snprintf(err, n, "--dim %d must be a multiple of --heads %d", c->dim, c->heads), -1;
    if ((c->dim / c->heads) % 2 != 0)
        return snprintf(err, n, "head size --dim/--heads = %d must be even for RoPE", c->dim / c->heads), -1;
    if (config_widths(c, c->mlp_widths, c->mlp_width, 0, why, sizeof(why)))
        return snprintf(err, n, "%s", why), -1;
    if (c->arch != ARCH_HOPE) return 0;
    for (int k = 1; k < c->cms_levels; k++)
        if (c->cms_chunks[k] < 1)
            return snprintf(err, n, "--cms-chunks: --cms-levels %d needs a chunk size for level %d",
                            c->cms_levels, k + 1), -1;
    if (c->cms_levels > 1 && config_widths(c, c->cms_widths, c->cms_width, 1, why, sizeof(why)))
        return snprintf(err, n, "--cms-width: %s", why), -1;
    return 0;
}

static size_t count_params(const Config *cfg) {
    Config c = *cfg;
    char err[256];
    if (config_finish(&c, err, sizeof(err))) die("%s", err);
    ParamTable pt;
    Weights w;
    layout_params(&c, NULL, &pt, &w);
    return pt.total;
}

// --match-params: what an architecture adds beyond the transformer's mixer (the gate, the
// memory, the fast levels) is paid for out of the MLP. One unit of mean MLP width H costs 3C
// parameters per layer (W1, W3, W2), so H shrinks by extra / (3 C L), rounded to the nearest
// multiple of the taper multiple: the two models then differ by less than 1.5 C L multiple.
static void match_params(Config *c) {
    Config base = *c;
    base.arch = ARCH_TRANSFORMER;
    double extra = (double)count_params(c) - (double)count_params(&base);
    int cut = (int)floor(extra / (3.0 * c->dim * c->layers) / c->taper_multiple + 0.5) * c->taper_multiple;
    if (cut >= c->mlp_width) die("--match-params: the %s additions (%.0f parameters) cost more than the whole MLP", arch_names[c->arch], extra);
    c->mlp_width -= cut;
}

// Random tensors draw from streams keyed by the seed and the tensor's identity, never by its
// place in the table:  key = splitmix64(seed), then key_mix (section 1) with fnv1a64(name),
// layer + 1 (0: outside the blocks), level (Hope's fast level k, else 0) and unit + 1 (0: the
// whole tensor); the stream is rng_seeded(key). A tensor that the MLP's hidden units index
// (Units) draws unit by unit, unit j from its own stream: W1's and W3's row j and W2's column
// j, C values each in order of the other index; a fast level's W1 row j, then its W2 column j.
// Any other tensor draws its values in storage order from the whole tensor's stream. So two
// models of one seed that differ only in MLP widths share bit for bit every weight of every
// tensor and of every hidden unit that both have (unit j of layer l, level k).
static Rng init_stream(uint64_t seed, const ParamTensor *t, long unit) {
    uint64_t key = key_mix(splitmix64(seed), fnv1a64(t->name));
    key = key_mix(key, (uint64_t)(t->layer + 1));
    key = key_mix(key, (uint64_t)t->level);
    return rng_seeded(key_mix(key, (uint64_t)(unit + 1)));
}

// N(0, sd) into a tensor, by the rule above
static void init_normal(real *p, const ParamTensor *t, double sd, int C, uint64_t seed) {
    int rows = t->rows, cols = t->cols;
    if (t->units == UNITS_NONE) {
        Rng r = init_stream(seed, t, -1);
        for (size_t i = 0; i < t->size; i++) p[i] = (real)(sd * rng_normal(&r));
    } else if (t->units == UNITS_ROWS) {            // (F, C): row j
        for (int j = 0; j < rows; j++) {
            Rng r = init_stream(seed, t, j);
            for (int i = 0; i < cols; i++) p[(size_t)j * cols + i] = (real)(sd * rng_normal(&r));
        }
    } else if (t->units == UNITS_COLS) {            // (C, F): column j
        for (int j = 0; j < cols; j++) {
            Rng r = init_stream(seed, t, j);
            for (int i = 0; i < rows; i++) p[(size_t)i * cols + j] = (real)(sd * rng_normal(&r));
        }
    } else {                                        // W1 (m, C) | W2 (C, m): W1 row j, W2 column j
        size_t m = t->size / (2 * (size_t)C);
        real *W1 = p, *W2 = p + m * C;
        for (size_t j = 0; j < m; j++) {
            Rng r = init_stream(seed, t, (long)j);
            for (int i = 0; i < C; i++) W1[j * C + i] = (real)(sd * rng_normal(&r));
            for (int i = 0; i < C; i++) W2[(size_t)i * m + j] = (real)(sd * rng_normal(&r));
        }
    }
}

static void init_params(Model *m, uint64_t seed) {
    const Config *c = &m->cfg;
    for (int i = 0; i < m->table.count; i++) {
        const ParamTensor *t = &m->table.tensor[i];
        real *p = m->params + t->offset;
        double sd = t->init == INIT_RESIDUAL ? 0.02 / sqrt(2.0 * c->layers) : 0.02;
        if (t->init == INIT_NORMAL || t->init == INIT_RESIDUAL)
            init_normal(p, t, sd, c->dim, seed);
        for (size_t j = 0; j < t->size; j++) {
            switch (t->init) {
            case INIT_NORMAL: case INIT_RESIDUAL: break; // (drawn above)
            case INIT_ONES:     p[j] = 1; break;
            case INIT_SCALE:    p[j] = (real)0.1; break;
            case INIT_CONV:     p[j] = j % t->cols == 0; break; // tap 0: the current token
            case INIT_GATE_BIAS: {
                // groups of the (3*heads) biases: step size, momentum, forgetting. At init a
                // token writes with theta = mem_lr sigmoid(-2) = 0.12 mem_lr (0.00074 at the
                // default 0.00625), keeps eta = eta_max sigmoid(2) = 0.9 * 0.88 = 0.79 of the
                // momentum and forgets alpha = sigmoid(-4) = 0.018 of the memory.
                static const real bias[3] = { -2, 2, -4 };
                p[j] = bias[j / (t->size / 3)];
                break;
            }
            }
        }
    }
}

static Model *model_create(const Config *cfg, int B, int T) {
    Model *m = xcalloc(1, sizeof(Model), "model");
    m->cfg = *cfg;
    char err[256];
    if (config_finish(&m->cfg, err, sizeof(err))) die("%s", err);
    if (T > m->cfg.seq_len) die("--seq-len %d is shorter than the %d tokens asked for", m->cfg.seq_len, T);
    if (B < 1 || (double)B * T > (1 << 24)) die("--batch %d x --seq-len %d: at most %d tokens per micro-batch", B, T, 1 << 24);
    Weights scratch;
    layout_params(&m->cfg, NULL, &m->table, &scratch);
    m->num_params = m->table.total;
    // refuse up front what would not fit: parameters, gradients, two AdamW moments, activations
    double act_bytes = (double)layout_activations(m, NULL, B, T) * sizeof(real);
    double bytes = (double)m->num_params * (2 * sizeof(real) + 2 * sizeof(float)) + act_bytes;
    if (bytes > physical_memory())
        die("this model needs %.2f GiB (%zu parameters; %.2f GiB of activations for %d x %d tokens), more than the %.2f GiB "
            "of memory here: make it smaller or lower --batch / --seq-len", bytes / (1 << 30), m->num_params,
            act_bytes / (1 << 30), B, T, physical_memory() / (1 << 30));
    m->params = xcalloc(m->num_params, sizeof(real), "parameters");
    m->grads = xcalloc(m->num_params, sizeof(real), "gradients");
    layout_params(&m->cfg, m->params, &m->table, &m->w);
    layout_params(&m->cfg, m->grads, &m->table, &m->g);
    m->B = B;
    m->T = T;
    m->act_size = layout_activations(m, NULL, B, T);
    m->act_memory = xcalloc(m->act_size, sizeof(real), "activations");
    layout_activations(m, m->act_memory, B, T);
    int hs = m->cfg.dim / m->cfg.heads;
    m->rope = xcalloc((size_t)T * hs, sizeof(real), "rope table");
    rope_table(m->rope, T, hs);
    m->tokens = xcalloc((size_t)B * T, sizeof(int), "tokens");
    m->targets = xcalloc((size_t)B * T, sizeof(int), "targets");
    m->norm_parts = xcalloc((m->num_params + 4095) / 4096, sizeof(double), "grad norm");
    gemm_init();
    return m;
}

static void model_free(Model *m) {
    if (!m) return;
    free(m->params); free(m->grads); free(m->micro_grads); free(m->adam_m); free(m->adam_v);
    free(m->act_memory); free(m->rope); free(m->tokens); free(m->targets); free(m->norm_parts);
    free(m);
}

// --- the mixer: the only place the architectures' sequence mixing differs ---------------------
// in: la->ln1 (N,C).  out: la->mixed (N,C), which the block multiplies by W_O.
//   transformer, hope:  mixed = Attn(q, k, v)
//   gated:              mixed = Attn(q, k, v) * sigmoid(ln1 Wg^T)
//   titans (MAG):       mixed = SWAttn(q, k, v) * sigmoid(RMSNorm(y)),  y = neural memory read-out
static void attention_branch_forward(Model *m, int l, int B, int T, int window) {
    const Config *c = &m->cfg;
    LayerActs *la = &m->a.layer[l];
    int N = B * T, C = c->dim, NH = c->heads;
    matmul_forward(la->qkv, la->ln1, m->w.layer[l].wqkv, N, C, 3 * C);
    rope_forward(la->qkv, m->rope, B, T, 2 * NH, C / NH, 3 * C); // q and k: the first 2*NH heads
    attention_forward(la->attn, la->att, la->qkv, B, T, C, NH, window);
}
// dattn in; dln += (through q, k, v); dWqkv accumulated. a.dqkv: zeroed by the caller
static void attention_branch_backward(Model *m, int l, int B, int T, int window, const real *dattn) {
    const Config *c = &m->cfg;
    LayerActs *la = &m->a.layer[l];
    int N = B * T, C = c->dim, NH = c->heads;
    attention_backward(m->a.dqkv, m->a.att_scratch, dattn, la->qkv, la->att, B, T, C, NH, window);
    rope_backward(m->a.dqkv, m->rope, B, T, 2 * NH, C / NH, 3 * C);
    matmul_backward(m->a.dln, m->g.layer[l].wqkv, m->a.dqkv, la->ln1, m->w.layer[l].wqkv, N, C, 3 * C);
}

static void mixer_forward(Model *m, int l, int B, int T) {
    const Config *c = &m->cfg;
    LayerActs *la = &m->a.layer[l];
    const LayerWeights *w = &m->w.layer[l];
    int N = B * T, C = c->dim, NH = c->heads;
    switch (c->arch) {
    case ARCH_TRANSFORMER:
    case ARCH_HOPE:
        attention_branch_forward(m, l, B, T, 0); // la->mixed is la->attn
        break;
    case ARCH_GATED:
        attention_branch_forward(m, l, B, T, 0);
        matmul_forward(m->a.tmp, la->ln1, w->wgate, N, C, gate_width(c));
        gate_forward(la->mixed, la->gate, la->attn, m->a.tmp, N, C, gate_width(c));
        break;
    case ARCH_TITANS:
        attention_branch_forward(m, l, B, T, c->window);
        memory_module_forward(&la->mem, la->ln1, w->mem_wqkv, w->mem_conv, w->mem_wgates, w->mem_bgates, w->mem_w0,
                              m->a.mem_scratch, B, T, C, NH,
                              titans_memory(c), 0);
        rmsnorm_forward(la->my_norm, la->my_rstd, la->mem.y, w->mem_norm, N, C);
        gate_forward(la->mixed, la->mgate, la->attn, la->my_norm, N, C, C);
        break;
    default: break;
    }
}

// in: a.dmixed (N,C). out: a.dln (N,C) = d loss / d ln1; weight gradients accumulated.
static void mixer_backward(Model *m, int l, int B, int T) {
    const Config *c = &m->cfg;
    LayerActs *la = &m->a.layer[l];
    const LayerWeights *w = &m->w.layer[l];
    LayerWeights *g = &m->g.layer[l];
    Acts *a = &m->a;
    int N = B * T, C = c->dim, NH = c->heads;
    // the scratch gradients the kernels below add into, cleared in this one place
    zero_parallel(a->dln, (size_t)N * C);
    zero_parallel(a->dqkv, (size_t)N * 3 * C);
    if (c->arch == ARCH_GATED || c->arch == ARCH_TITANS) {
        zero_parallel(a->dattn, (size_t)N * C);
        zero_parallel(a->dgate, (size_t)N * C);
    }
    if (c->arch == ARCH_TITANS) zero_parallel(a->dy, (size_t)N * C);
    switch (c->arch) {
    case ARCH_TRANSFORMER:
    case ARCH_HOPE:
        attention_branch_backward(m, l, B, T, 0, a->dmixed);
        break;
    case ARCH_GATED:
        gate_backward(a->dattn, a->dgate, a->dmixed, la->attn, la->gate, N, C, gate_width(c));
        matmul_backward(a->dln, g->wgate, a->dgate, la->ln1, w->wgate, N, C, gate_width(c));
        attention_branch_backward(m, l, B, T, 0, a->dattn);
        break;
    case ARCH_TITANS:
        gate_backward(a->dattn, a->dgate, a->dmixed, la->attn, la->mgate, N, C, C);
        rmsnorm_backward(a->dy, g->mem_norm, a->dgate, la->mem.y, w->mem_norm, la->my_rstd, N, C);
        memory_module_backward(a, a->dln, g->mem_wqkv, g->mem_conv, g->mem_wgates, g->mem_bgates, g->mem_w0, a->dy,
                               &la->mem, la->ln1, w->mem_wqkv, w->mem_conv, w->mem_wgates, B, T, C, NH,
                               titans_memory(c), 0);
        attention_branch_backward(m, l, B, T, c->window, a->dattn);
        break;
    default: break;
    }
}

// --- the MLP slot: where the taper acts ---------------------------------------------------
// in: la->res1.  out: la->out.
//   every arch:  res2 = res1 + W2 (silu(W1 u) * W3 u),  u = RMSNorm(res1),  W1, W3 (F_l, C), W2 (C, F_l)
//   hope adds the fast levels of its continuum memory, k = 1..levels-1, each with a residual:
//                res_k = res_{k-1} + scale_k * Memory_k(RMSNorm(res_{k-1})),   hidden width cms_widths[l]
static void mlp_forward(Model *m, int l, int B, int T) {
    const Config *c = &m->cfg;
    LayerActs *la = &m->a.layer[l];
    const LayerWeights *w = &m->w.layer[l];
    int N = B * T, C = c->dim, F = c->mlp_widths[l];
    rmsnorm_forward(la->ln2, la->ln2_rstd, la->res1, w->mlp_norm, N, C);
    matmul_forward(la->h, la->ln2, w->w1, N, C, 2 * F); // w1 | w3 as one (2F, C) matrix
    swiglu_forward(la->hg, la->h, N, F);
    matmul_forward(m->a.tmp, la->hg, w->w2, N, F, C);
    #pragma omp parallel for
    for (size_t i = 0; i < (size_t)N * C; i++) la->res2[i] = la->res1[i] + m->a.tmp[i];
    if (c->arch != ARCH_HOPE) return;
    for (int k = 1; k < c->cms_levels; k++) {
        const real *in = la->cms_res[k - 1];
        rmsnorm_forward(la->cms_ln[k], la->cms_rstd[k], in, w->cms_norm[k], N, C);
        memory_module_forward(&la->cms[k], la->cms_ln[k], w->cms_wqkv[k], w->cms_conv[k], w->cms_wgates[k], w->cms_bgates[k],
                              w->cms_w0[k], m->a.mem_scratch, B, T, C, 1,
                              hope_level(c, l, k), 1);
        #pragma omp parallel for
        for (int n = 0; n < N; n++)
            for (int j = 0; j < C; j++) {
                size_t i = (size_t)n * C + j;
                la->cms_res[k][i] = in[i] + w->cms_scale[k][j] * la->cms[k].y[i];
            }
    }
}

// in: a.dres = d loss / d la->out.  out: a.dres = d loss / d la->res1 (accumulated in place).
static void mlp_backward(Model *m, int l, int B, int T) {
    const Config *c = &m->cfg;
    LayerActs *la = &m->a.layer[l];
    const LayerWeights *w = &m->w.layer[l];
    LayerWeights *g = &m->g.layer[l];
    Acts *a = &m->a;
    int N = B * T, C = c->dim, F = c->mlp_widths[l];
    if (c->arch == ARCH_HOPE) {
        for (int k = c->cms_levels - 1; k >= 1; k--) {
            // dscale += sum_n dres * y ;  dy = dres * scale ;  dres += RMSNorm backward of dln
            const real *y = la->cms[k].y;
            zero_parallel(a->dy, (size_t)N * C); // this level's scratch gradients, cleared here
            zero_parallel(a->dln, (size_t)N * C);
            column_sums(g->cms_scale[k], a->dres, y, NULL, N, C);
            #pragma omp parallel for
            for (int n = 0; n < N; n++)
                for (int j = 0; j < C; j++) a->dy[(size_t)n * C + j] += a->dres[(size_t)n * C + j] * w->cms_scale[k][j];
            memory_module_backward(a, a->dln, g->cms_wqkv[k], g->cms_conv[k], g->cms_wgates[k], g->cms_bgates[k],
                                   g->cms_w0[k], a->dy, &la->cms[k], la->cms_ln[k], w->cms_wqkv[k], w->cms_conv[k],
                                   w->cms_wgates[k],
                                   B, T, C, 1, hope_level(c, l, k), 1);
            rmsnorm_backward(a->dres, g->cms_norm[k], a->dln, la->cms_res[k - 1], w->cms_norm[k],
                             la->cms_rstd[k], N, C);
        }
    }
    // dhg = dres W2 ; dW2 += dres^T hg ; dh = SwiGLU backward ; dln = dh W13 ; dW13 += dh^T ln2
    zero_parallel(a->dhg, (size_t)N * F); // the SwiGLU's scratch gradients, cleared here
    zero_parallel(a->dh, (size_t)N * 2 * F);
    zero_parallel(a->dln, (size_t)N * C);
    matmul_backward(a->dhg, g->w2, a->dres, la->hg, w->w2, N, F, C);
    swiglu_backward(a->dh, a->dhg, la->h, N, F);
    matmul_backward(a->dln, g->w1, a->dh, la->ln2, w->w1, N, C, 2 * F);
    rmsnorm_backward(a->dres, g->mlp_norm, a->dln, la->res1, w->mlp_norm, la->ln2_rstd, N, C);
}

// --- the whole model ----------------------------------------------------------------------
// x_0 = wte[tokens]; x_{l+1} = Block_l(x_l); logits = RMSNorm(x_L) W_head^T; loss = mean CE.
// Returns the mean loss over the B*T positions (targets given) or 0 (targets NULL).
static real model_forward(Model *m, const int *tokens, const int *targets, int B, int T) {
    const Config *c = &m->cfg;
    Acts *a = &m->a;
    if (B > m->B || T > m->T) die("internal: batch %dx%d exceeds the model's %dx%d", B, T, m->B, m->T);
    int N = B * T, C = c->dim, V = c->vocab;
    for (int n = 0; n < N; n++)
        if (tokens[n] < 0 || tokens[n] >= V || (targets && (targets[n] < 0 || targets[n] >= V)))
            die("token %d at position %d is outside the vocabulary of %d", targets && (targets[n] < 0 || targets[n] >= V) ? targets[n] : tokens[n], n, V);
    embedding_forward(a->x0, tokens, m->w.wte, N, C);
    const real *x = a->x0;
    for (int l = 0; l < c->layers; l++) {
        LayerActs *la = &a->layer[l];
        const LayerWeights *w = &m->w.layer[l];
        // x -> x + W_O Mixer(RMSNorm(x))
        double t0 = wall_time();
        rmsnorm_forward(la->ln1, la->ln1_rstd, x, w->attn_norm, N, C);
        mixer_forward(m, l, B, T);
        matmul_forward(a->tmp, la->mixed, w->wo, N, C, C);
        #pragma omp parallel for
        for (size_t i = 0; i < (size_t)N * C; i++) la->res1[i] = x[i] + a->tmp[i];
        double t1 = wall_time();
        // x -> x + MLP_l(RMSNorm(x))
        mlp_forward(m, l, B, T);
        m->seconds_mlp += wall_time() - t1;
        m->seconds_mixer += t1 - t0;
        // layer analysis only: drop this layer's MLP slot, or the whole layer
        if (m->skip_mlp && m->skip_mlp[l]) memcpy(la->out, la->res1, (size_t)N * C * sizeof(real));
        if (m->skip_layer && m->skip_layer[l]) memcpy(la->out, x, (size_t)N * C * sizeof(real));
        x = la->out;
    }
    double t0 = wall_time();
    if (m->logits_last_row && !targets) { x += (size_t)(N - 1) * C; N = 1; } // sampling: the last position
    rmsnorm_forward(a->lnf, a->lnf_rstd, x, m->w.final_norm, N, C);
    matmul_forward(a->logits, a->lnf, m->w.lm_head, N, C, V);
    if (!targets) { m->seconds_head += wall_time() - t0; return 0; }
    if (m->tokens != tokens) memcpy(m->tokens, tokens, (size_t)N * sizeof(int)); // for the backward
    if (m->targets != targets) memcpy(m->targets, targets, (size_t)N * sizeof(int));
    crossentropy_forward(a->losses, a->logits, targets, N, V);
    m->seconds_head += wall_time() - t0;
    double sum = 0;
    for (int n = 0; n < N; n++) sum += a->losses[n];
    return (real)(sum / N);
}

static void model_zero_grad(Model *m) { zero_parallel(m->grads, m->num_params); }

// Accumulates into m->grads the gradient of (loss_scale * mean loss) of the last forward.
static void model_backward(Model *m, int B, int T, real loss_scale) {
    const Config *c = &m->cfg;
    Acts *a = &m->a;
    int N = B * T, C = c->dim, V = c->vocab;
    // dlogits = (p - onehot) / N ; dlnf = dlogits W_head ; dW_head += dlogits^T lnf
    double t0 = wall_time();
    crossentropy_backward(a->logits, m->targets, N, V, loss_scale / N);
    zero_parallel(a->dln, (size_t)N * C);
    matmul_backward(a->dln, m->g.lm_head, a->logits, a->lnf, m->w.lm_head, N, C, V);
    zero_parallel(a->dres, (size_t)N * C);
    const real *x_last = c->layers ? a->layer[c->layers - 1].out : a->x0;
    rmsnorm_backward(a->dres, m->g.final_norm, a->dln, x_last, m->w.final_norm, a->lnf_rstd, N, C);
    m->seconds_head += wall_time() - t0;
    for (int l = c->layers - 1; l >= 0; l--) {
        LayerActs *la = &a->layer[l];
        const LayerWeights *w = &m->w.layer[l];
        LayerWeights *g = &m->g.layer[l];
        const real *x = l ? a->layer[l - 1].out : a->x0;
        double t1 = wall_time();
        mlp_backward(m, l, B, T); // dres: d out -> d res1
        double t2 = wall_time();
        // dmixed = dres W_O ; dW_O += dres^T mixed
        zero_parallel(a->dmixed, (size_t)N * C);
        matmul_backward(a->dmixed, g->wo, a->dres, la->mixed, w->wo, N, C, C);
        mixer_backward(m, l, B, T);
        rmsnorm_backward(a->dres, g->attn_norm, a->dln, x, w->attn_norm, la->ln1_rstd, N, C);
        m->seconds_mlp += t2 - t1;
        m->seconds_mixer += wall_time() - t2;
    }
    embedding_backward(m->g.wte, a->dres, m->tokens, N, C);
}

// ----------------------------------------------------------------------------
// 7. AdamW
// Global gradient-norm clipping, then per parameter:
//   m = b1 m + (1-b1) g ;  v = b2 v + (1-b2) g^2 ;  p -= lr (m_hat / (sqrt(v_hat) + eps) + wd p)
// with weight decay wd only on matrices (decoupled, as in Loshchilov & Hutter).
typedef struct { float lr, beta1, beta2, eps, weight_decay, grad_clip; } AdamW;

// sum of squares over fixed 4096-element blocks, added in order: the same for any thread count
// (the blocks' sums go to m->norm_parts, so two calls on one model must not run at once)
static double grad_norm(const Model *m) {
    size_t n = m->num_params, blocks = (n + 4095) / 4096;
    double *part = m->norm_parts;
    #pragma omp parallel for
    for (size_t b = 0; b < blocks; b++) {
        const real *g = m->grads + b * 4096;
        size_t len = n - b * 4096 < 4096 ? n - b * 4096 : 4096;
        double lane[8] = { 0 }; // 8 running sums, one per vector lane, then added in a fixed order
        size_t i = 0;
        for (; i + 8 <= len; i += 8)
            for (int k = 0; k < 8; k++) lane[k] += (double)g[i + k] * g[i + k];
        for (; i < len; i++) lane[0] += (double)g[i] * g[i];
        part[b] = ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
    }
    double total = 0;
    for (size_t b = 0; b < blocks; b++) total += part[b];
    return sqrt(total);
}

// One update with the gradients in m->grads, whose global norm is `norm`. Sets
// m->update_not_finite when a weight or moment it wrote is not finite (or a second moment < 0):
// x - x is 0 for a finite x and NaN for inf or NaN, a test that costs the loop nothing
static void adamw_step(Model *m, const AdamW *opt, float lr, double norm) {
    if (!m->adam_m) {
        m->adam_m = xcalloc(m->num_params, sizeof(float), "AdamW state");
        m->adam_v = xcalloc(m->num_params, sizeof(float), "AdamW state");
    }
    float clip = opt->grad_clip > 0 && norm > opt->grad_clip ? (float)(opt->grad_clip / norm) : 1.0f;
    m->step++;
    const float b1 = opt->beta1, b2 = opt->beta2, eps = opt->eps;
    const float bc1 = 1 - powf(b1, (float)m->step), bc2 = 1 - powf(b2, (float)m->step);
    // a pass through memory, 28 bytes per parameter (3.5 GB at 124M), so the loop must
    // vectorize: everything it reads in restrict locals. One parallel region; each tensor
    // (its own weight decay) shared out among the threads, who go on to the next without waiting
    real *restrict p = m->params;
    const real *restrict grads = m->grads;
    float *restrict am = m->adam_m, *restrict av = m->adam_v;
    int not_finite = 0;
    #pragma omp parallel reduction(|:not_finite)
    for (int i = 0; i < m->table.count; i++) {
        const ParamTensor *t = &m->table.tensor[i];
        const float wd = t->decay ? opt->weight_decay : 0;
        const size_t end = t->offset + t->size;
        #pragma omp for schedule(static) nowait
        for (size_t j = t->offset; j < end; j++) {
            float g = (float)grads[j] * clip;
            float mj = b1 * am[j] + (1 - b1) * g;
            float vj = b2 * av[j] + (1 - b2) * g * g;
            am[j] = mj;
            av[j] = vj;
            float update = (mj / bc1) / (sqrtf(vj / bc2) + eps) + wd * (float)p[j];
            real pj = p[j] - (real)(lr * update);
            p[j] = pj;
            not_finite |= !((pj - pj) + (mj - mj) + (vj - vj) == 0) | !(vj >= 0);
        }
    }
    m->update_not_finite = not_finite;
}

// The first tensor whose weights or AdamW moments hold a value that is not finite (or a negative
// second moment), and in *which what it is; NULL if none: after an update that adamw_step flagged,
// before anything reaches disk. A pass over the model, in 4096-element blocks (flags in m->norm_parts).
static inline int nonfinite_flags(const Model *m, size_t i) { // 1 weight, 2 first moment, 4 second
    int f = !isfinite(m->params[i]);
    if (m->adam_m) f |= (!isfinite(m->adam_m[i]) ? 2 : 0) | (!(m->adam_v[i] >= 0) || !isfinite(m->adam_v[i]) ? 4 : 0);
    return f;
}
static const ParamTensor *nonfinite_tensor(const Model *m, const char **which) {
    size_t n = m->num_params, blocks = (n + 4095) / 4096;
    double *bad = m->norm_parts;
    #pragma omp parallel for
    for (size_t b = 0; b < blocks; b++) {
        size_t end = n - b * 4096 < 4096 ? n : b * 4096 + 4096;
        int flags = 0;
        for (size_t i = b * 4096; i < end; i++) flags |= nonfinite_flags(m, i);
        bad[b] = flags;
    }
    for (size_t b = 0; b < blocks; b++) {
        if (!bad[b]) continue;
        int flags = (int)bad[b], want = flags & 1 ? 1 : flags & 2 ? 2 : 4;
        *which = want == 1 ? "weights" : want == 2 ? "AdamW first moment" : "AdamW second moment";
        for (size_t i = b * 4096; i < n; i++)
            if (nonfinite_flags(m, i) & want)
                for (int t = 0; t < m->table.count; t++) {
                    const ParamTensor *pt = &m->table.tensor[t];
                    if (i >= pt->offset && i < pt->offset + pt->size) return pt;
                }
    }
    return NULL;
}

// linear warmup to lr, then cosine decay to lr/10 at decay_steps, flat after
static float learning_rate(int step, float lr, int warmup, int decay_steps) {
    if (step < warmup) return lr * (step + 1) / warmup;
    if (step >= decay_steps) return lr * 0.1f;
    double progress = (double)(step - warmup) / (decay_steps - warmup > 0 ? decay_steps - warmup : 1);
    return (float)(lr * (0.1 + 0.9 * 0.5 * (1 + cos(PI * progress))));
}

// ----------------------------------------------------------------------------
// 8. checkpoints
//
// Version 2 (written; data/README.md has the layout): a header of 256 int32 (the fields below),
// the option area (every model and training option of the table in section 11 as `name=value`
// lines, so that --load can rebuild the model and resume the run), the parameters as float32 in
// layout_params() order, then, if has_optimizer, AdamW's first and second moments in the same
// order, and last a CRC-32C of all the bytes before it. (Version 1, before the option area and
// the checksum, is no longer read.)
// A checkpoint is written to PATH.tmp (created anew, never through a link) with the signals
// held back, synced, renamed over PATH and the directory synced: a crash, a full disk or a
// second Ctrl-C never leaves a half-written checkpoint behind.

enum {
    CKPT_MAGIC = 20260623, CKPT_VERSION = 2,
    H_MAGIC = 0, H_VERSION, // (slots 2..31: 0)
    H_NUM_PARAMS_LO = 32, H_NUM_PARAMS_HI, H_STEP, H_HAS_OPTIMIZER,
    H_DATA_SHARD, H_DATA_SLOT_LO, H_DATA_SLOT_HI, H_DATA_EPOCH, // the DataPosition (section 9)
    H_OPTION_BYTES = 40, // bytes of the option area (a multiple of 4)
    H_RANKS,             // the MPI ranks that wrote it (0: one process; section 10)
    H_DATA_EPOCH_HI,     // the epoch's high 32 bits (H_DATA_EPOCH: its low ones)
    H_MLP_WIDTHS = 64,  // MAX_LAYERS slots
    H_CMS_WIDTHS = 128, // MAX_LAYERS slots
    H_SIZE = 256,
    MAX_OPTION_BYTES = 1 << 20
};

// Where the training order stands (section 9): epochs done, shards of this epoch's order done,
// slots of that shard's order taken.
typedef struct { int64_t epoch; int shard; size_t slot; } DataPosition;
typedef struct Options Options; // section 11: the command line, whose table also writes the option area
static size_t options_to_text(char *buf, size_t n, const Config *cfg);
static void options_from_text(Options *saved, const char *text, const char *path, int *named);
static void options_default(Options *v);
static size_t options_size(void);
static const Config *options_config(const Options *v);

// CRC-32C (Castagnoli), bytewise with a table: crc32c(0, "123456789", 9) = 0xE3069283
static uint32_t crc32c(uint32_t crc, const void *data, size_t n) {
    static uint32_t table[256];
    if (!table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
            table[i] = c;
        }
    const unsigned char *p = data;
    crc = ~crc;
    while (n--) crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static void checkpoint_header(int32_t *h, const Model *m, DataPosition pos, size_t option_bytes) {
    const Config *c = &m->cfg;
    memset(h, 0, H_SIZE * sizeof(int32_t));
    h[H_MAGIC] = CKPT_MAGIC; h[H_VERSION] = CKPT_VERSION;
    h[H_NUM_PARAMS_LO] = (int32_t)(m->num_params & 0xffffffffu);
    h[H_NUM_PARAMS_HI] = (int32_t)(m->num_params >> 32);
    h[H_STEP] = m->step; h[H_HAS_OPTIMIZER] = m->adam_m != NULL;
    h[H_DATA_SHARD] = pos.shard;
    h[H_DATA_SLOT_LO] = (int32_t)(pos.slot & 0xffffffffu);
    h[H_DATA_SLOT_HI] = (int32_t)((uint64_t)pos.slot >> 32);
    h[H_DATA_EPOCH] = (int32_t)((uint64_t)pos.epoch & 0xffffffffu);
    h[H_DATA_EPOCH_HI] = (int32_t)((uint64_t)pos.epoch >> 32);
    h[H_OPTION_BYTES] = (int32_t)option_bytes;
    h[H_RANKS] = world.ranks > 1 ? world.ranks : 0;
    for (int l = 0; l < c->layers; l++) { h[H_MLP_WIDTHS + l] = c->mlp_widths[l]; h[H_CMS_WIDTHS + l] = c->cms_widths[l]; }
}

// Writes bytes and adds them to the running checksum.
static int write_summed(const void *buf, size_t n, FILE *f, uint32_t *crc) {
    *crc = crc32c(*crc, buf, n);
    return write_all(buf, 1, n, f);
}

// Writes array as float32, in blocks so that no second copy of the model is needed.
static int write_floats(FILE *f, const void *src, int src_is_real, size_t n, uint32_t *crc) {
    float buf[4096];
    for (size_t i = 0; i < n; i += 4096) {
        size_t k = n - i < 4096 ? n - i : 4096;
        for (size_t j = 0; j < k; j++) buf[j] = src_is_real ? (float)((const real *)src)[i + j] : ((const float *)src)[i + j];
        if (!write_summed(buf, k * sizeof(float), f, crc)) return 0;
    }
    return 1;
}

// The directory a path lies in, for the fsync after the rename.
static void path_directory(char *dir, size_t n, const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, n, ".");
    else if (slash == path) snprintf(dir, n, "/");
    else snprintf(dir, n, "%.*s", (int)(slash - path), path);
}

static int checkpoint_write(const Model *m, const char *path, const char *tmp, DataPosition pos) {
    // a stale PATH.tmp from a killed run: removed (a link itself, never what it points to)
    if (unlink(tmp) != 0 && errno != ENOENT) {
        fprintf(stderr, "error: %s: cannot remove the stale %s: %s\n", path, tmp, strerror(errno));
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0644);
    FILE *f = fd < 0 ? NULL : fdopen(fd, "wb");
    if (!f) {
        fprintf(stderr, "error: %s: cannot write checkpoint: %s\n", tmp, strerror(errno));
        if (fd >= 0) { close(fd); unlink(tmp); }
        return -1;
    }
    char *text = xcalloc(MAX_OPTION_BYTES, 1, "checkpoint options");
    size_t text_bytes = (options_to_text(text, MAX_OPTION_BYTES, &m->cfg) + 3) / 4 * 4; // NUL-padded
    int32_t h[H_SIZE];
    checkpoint_header(h, m, pos, text_bytes);
    uint32_t crc = 0;
    errno = 0;
    int ok = write_summed(h, sizeof(h), f, &crc) && write_summed(text, text_bytes, f, &crc);
    free(text);
    ok = ok && write_floats(f, m->params, 1, m->num_params, &crc);
    if (ok && m->adam_m) ok = write_floats(f, m->adam_m, 0, m->num_params, &crc) && write_floats(f, m->adam_v, 0, m->num_params, &crc);
    ok = ok && write_all(&crc, sizeof(crc), 1, f);
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int err = errno;
    ok = (fclose(f) == 0) && ok;
    if (!ok) {
        fprintf(stderr, "error: %s: writing checkpoint failed: %s (previous checkpoint kept)\n", path, strerror(err ? err : EIO));
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        fprintf(stderr, "error: %s: cannot rename %s into place: %s\n", path, tmp, strerror(errno));
        unlink(tmp);
        return -1;
    }
    char dir[TEXT_MAX];
    path_directory(dir, sizeof(dir), path);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) { fsync(dfd); close(dfd); } // (the rename is done; a failed directory sync is no error)
    return 0;
}

// Returns 0 on success; on failure prints why and leaves any previous checkpoint untouched.
// SIGINT and SIGTERM are held back while it writes: the save always completes.
static int checkpoint_save(const Model *m, const char *path, DataPosition pos) {
    if (strlen(path) + 5 > TEXT_MAX - 1) {
        fprintf(stderr, "error: %.60s...: path too long for a checkpoint (at most %d characters)\n", path, TEXT_MAX - 6);
        return -1;
    }
    char tmp[TEXT_MAX];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    sigset_t hold, old;
    sigemptyset(&hold);
    sigaddset(&hold, SIGINT);
    sigaddset(&hold, SIGTERM);
    sigprocmask(SIG_BLOCK, &hold, &old);
    int rc = checkpoint_write(m, path, tmp, pos);
    sigprocmask(SIG_SETMASK, &old, NULL);
    return rc;
}

// An open checkpoint: its header and options, read and checked once by checkpoint_open, and the
// one descriptor they came through, from which checkpoint_load then reads the parameters. A save
// never writes into a checkpoint in place (it renames a new file over the path), so the file
// this descriptor holds stays whole while a run replaces the checkpoint: the bytes checked are
// the bytes loaded, of the old file or of the new one.
typedef struct {
    const char *path;
    FILE *f;
    long size;
    int32_t h[H_SIZE];
    Options *saved;     // the defaults, overwritten by what the option area stores
} Checkpoint;

// Opens path and reads its header and options, each checked before it is trusted, the checksum
// (of the whole file) first; named[k], if not NULL, is set for each option the file names.
static Checkpoint *checkpoint_open(const char *path, int *named) {
    Checkpoint *ck = xcalloc(1, sizeof(Checkpoint), "checkpoint");
    int32_t *h = ck->h;
    ck->path = path;
    ck->f = open_file(path, "rb");
    ck->saved = xcalloc(1, options_size(), "checkpoint options");
    FILE *f = ck->f;
    long size = ck->size = file_size(f);
    if (size < (long)(H_SIZE * sizeof(int32_t))) die("%s: not a tlm checkpoint (file too short)", path);
    read_exact(h, sizeof(int32_t), H_SIZE, f, path);
    if (h[H_MAGIC] != CKPT_MAGIC) die("%s: not a tlm checkpoint (bad magic %d)", path, h[H_MAGIC]);
    if (h[H_VERSION] == 1)
        die("%s: checkpoint version 1 (before the option area and the checksum) is no longer read: "
            "this train_tlm reads version %d", path, CKPT_VERSION);
    if (h[H_VERSION] != CKPT_VERSION) die("%s: unsupported checkpoint version %d", path, h[H_VERSION]);
    long bytes = h[H_OPTION_BYTES];
    if (bytes < 0 || bytes > MAX_OPTION_BYTES || bytes % 4 || (long)(H_SIZE * 4) + bytes + 4 > size)
        die("%s: bad option area size %ld", path, bytes);
    if (h[H_HAS_OPTIMIZER] != 0 && h[H_HAS_OPTIMIZER] != 1) die("%s: bad optimizer flag", path);
    size_t n = (size_t)(uint32_t)h[H_NUM_PARAMS_LO] | ((size_t)(uint32_t)h[H_NUM_PARAMS_HI] << 32);
    double expect = (double)(H_SIZE * 4) + bytes + (double)n * 4 * (h[H_HAS_OPTIMIZER] ? 3 : 1) + 4;
    if ((double)size != expect) die("%s: size %ld bytes, expected %.0f (truncated or corrupt)", path, size, expect);
    // the checksum: the whole file but its last 4 bytes, then those
    uint32_t crc = crc32c(0, h, H_SIZE * sizeof(int32_t)), stored;
    unsigned char buf[1 << 16];
    long left = size - 4 - (long)(H_SIZE * 4);
    while (left > 0) {
        size_t k = left < (long)sizeof(buf) ? (size_t)left : sizeof(buf);
        read_exact(buf, 1, k, f, path);
        crc = crc32c(crc, buf, k);
        left -= (long)k;
    }
    read_exact(&stored, sizeof(stored), 1, f, path);
    if (crc != stored) die("%s: checksum mismatch (the file is corrupt: stored %08x, computed %08x)", path, stored, crc);
    char *text = xcalloc((size_t)bytes + 1, 1, "checkpoint options");
    fseek(f, H_SIZE * sizeof(int32_t), SEEK_SET);
    read_exact(text, 1, (size_t)bytes, f, path);
    options_default(ck->saved);
    options_from_text(ck->saved, text, path, named);
    free(text);
    // the widths are derived again from the stored options and must agree with the stored ones
    Config check = *options_config(ck->saved);
    char err[256];
    if (config_finish(&check, err, sizeof(err))) die("%s: checkpoint header: %s", path, err);
    for (int l = 0; l < check.layers; l++)
        if (check.mlp_widths[l] != h[H_MLP_WIDTHS + l] || (check.arch == ARCH_HOPE && check.cms_levels > 1 && check.cms_widths[l] != h[H_CMS_WIDTHS + l]))
            die("%s: stored width of layer %d does not match its taper", path, l);
    return ck;
}

static void checkpoint_close(Checkpoint *ck) {
    if (!ck) return;
    fclose(ck->f);
    free(ck->saved);
    free(ck);
}

// the tensor that holds parameter i, for messages
static const char *tensor_of(const Model *m, size_t i) {
    for (int t = 0; t < m->table.count; t++)
        if (i >= m->table.tensor[t].offset && i < m->table.tensor[t].offset + m->table.tensor[t].size) return m->table.tensor[t].name;
    return "?";
}

// Loads the parameters (and the optimizer state, if present) of an open checkpoint into a model
// built from its options, through the descriptor checkpoint_open checked; *pos (if not NULL)
// gets the data position.
static void checkpoint_load(Checkpoint *ck, Model *m, DataPosition *pos) {
    const int32_t *h = ck->h;
    const char *path = ck->path;
    FILE *f = ck->f;
    size_t n = (size_t)(uint32_t)h[H_NUM_PARAMS_LO] | ((size_t)(uint32_t)h[H_NUM_PARAMS_HI] << 32);
    if (n != m->num_params) die("%s: holds %zu parameters, the model has %zu", path, n, m->num_params);
    if (h[H_STEP] < 0) die("%s: bad step %d", path, h[H_STEP]);
    fseek(f, (long)(H_SIZE * sizeof(int32_t)) + h[H_OPTION_BYTES], SEEK_SET);
    float buf[4096];
    for (size_t i = 0; i < n; i += 4096) {
        size_t k = n - i < 4096 ? n - i : 4096;
        read_exact(buf, sizeof(float), k, f, path);
        for (size_t j = 0; j < k; j++) {
            if (!isfinite(buf[j])) die("%s: parameter %zu (%s) is not a finite number", path, i + j, tensor_of(m, i + j));
            m->params[i + j] = buf[j];
        }
    }
    if (h[H_HAS_OPTIMIZER]) {
        if (!m->adam_m) {
            m->adam_m = xcalloc(n, sizeof(float), "AdamW state");
            m->adam_v = xcalloc(n, sizeof(float), "AdamW state");
        }
        read_exact(m->adam_m, sizeof(float), n, f, path);
        read_exact(m->adam_v, sizeof(float), n, f, path);
        for (size_t i = 0; i < n; i++) {
            if (!isfinite(m->adam_m[i])) die("%s: AdamW first moment %zu (%s) is not a finite number", path, i, tensor_of(m, i));
            if (!isfinite(m->adam_v[i]) || m->adam_v[i] < 0)
                die("%s: AdamW second moment %zu (%s) is %g, not a finite number >= 0", path, i, tensor_of(m, i), m->adam_v[i]);
        }
    }
    m->step = h[H_STEP];
    if (pos) { // (checked against the data by dataloader_seek)
        pos->shard = h[H_DATA_SHARD];
        uint64_t slot_hi = (uint32_t)h[H_DATA_SLOT_HI], epoch_hi = (uint32_t)h[H_DATA_EPOCH_HI];
        pos->slot = (size_t)((uint32_t)h[H_DATA_SLOT_LO] | slot_hi << 32);
        pos->epoch = (int64_t)((uint32_t)h[H_DATA_EPOCH] | epoch_hi << 32);
    }
}

// ----------------------------------------------------------------------------
// 9. data: token shards and the tokenizer
//
// A shard is llm.c's format: a header of 256 int32 (magic 20240520, version 1, token count,
// and in slot 3 the vocabulary size, 0 if unknown), then the tokens as uint16.
//
// The training order (dataloader_next; data/README.md states it for other implementations).
// A shard of n tokens holds S = (n - 1) / T sequence slots: slot s is tokens [s T, s T + T],
// its first T the inputs and its last T the targets. Epoch e (0, 1, ...) visits the shards
// (numbered in the glob's sorted order) in a permuted order, and in each shard its slots in a
// permuted order; a batch is the next B slots of that order, never from two shards, so a
// shard's last S mod B slots in its order are not read that epoch, and a shard with S < B is
// not read at all. Each permutation is Fisher-Yates from the identity a = 0, 1, .., n-1:
//     for i = n-1 down to 1:  j = rng_below(i + 1);  swap a[i], a[j]
// on the stream rng_seeded(key_mix(key_mix(splitmix64(data_seed), e), part)) (section 1),
// part 0 for the order of the shards, f + 1 for the slots of shard f. Validation data is not
// shuffled: evaluate() reads the batches it picks (val_batch).

enum { SHARD_MAGIC = 20240520, SHARD_HEADER = 256 };

typedef struct {
    char **paths;
    size_t *ntok;           // tokens in each shard
    int count;
    int vocab;              // tokens must be below this (checked as each shard is read)
    uint16_t *tokens;       // the current shard
    int loaded;             // index of the shard in tokens, -1 none
    // the training order
    uint64_t seed;          // --data-seed
    DataPosition at;        // where the next batch starts
    uint32_t *shard_order;  // (count) the shards in epoch shard_epoch's order
    int64_t shard_epoch;    //   (-1: none yet)
    uint32_t *slot_order;   // (slots) the slots of shard slot_shard in epoch slot_epoch's order
    int64_t slot_epoch;
    int slot_shard;         //   (-1: none yet)
    size_t slots;
} DataLoader;

// Checks one shard's header and size; returns its token count and header vocabulary.
static size_t shard_check(const char *path, int *vocab_in_header) {
    FILE *f = open_file(path, "rb");
    int32_t h[SHARD_HEADER];
    if (file_size(f) < (long)sizeof(h)) die("%s: not a token shard (shorter than its 1024-byte header)", path);
    read_exact(h, sizeof(int32_t), SHARD_HEADER, f, path);
    if (h[0] != SHARD_MAGIC) die("%s: not a token shard (bad magic %d, expected %d)", path, h[0], SHARD_MAGIC);
    if (h[1] != 1) die("%s: unsupported shard version %d", path, h[1]);
    if (h[2] <= 0) die("%s: shard holds no tokens", path);
    if (h[3] < 0 || h[3] > 65536) die("%s: bad vocabulary size %d in header", path, h[3]);
    long expect = (long)sizeof(h) + (long)h[2] * 2;
    long size = file_size(f);
    if (size < expect) die("%s: truncated: header says %d tokens (%ld bytes), file has %ld bytes", path, h[2], expect, size);
    if (size > expect) die("%s: %ld bytes of trailing data after %d tokens", path, size - expect, h[2]);
    fclose(f);
    if (vocab_in_header) *vocab_in_header = h[3];
    return (size_t)h[2];
}

static void dataloader_open(DataLoader *d, const char *pattern, const char *flag) {
    memset(d, 0, sizeof(*d));
    d->loaded = d->slot_shard = -1;
    d->shard_epoch = -1;
    glob_t g;
    int r = glob(pattern, 0, NULL, &g);
    if (r != 0 || g.gl_pathc == 0) {
        if (r == 0) globfree(&g);
        die("%s %s: no such file (run `make data` to prepare the default data)", flag, pattern);
    }
    d->count = (int)g.gl_pathc;
    d->paths = xcalloc(d->count, sizeof(char *), "shard list");
    d->ntok = xcalloc(d->count, sizeof(size_t), "shard list");
    for (int i = 0; i < d->count; i++) {
        d->paths[i] = strdup(g.gl_pathv[i]);
        d->ntok[i] = shard_check(d->paths[i], NULL);
    }
    globfree(&g);
}

// the vocabulary the shards' headers give (0: none does); shards that disagree are refused
static int dataloader_vocab(const DataLoader *d) {
    int vocab = 0, from = 0;
    for (int i = 0; i < d->count; i++) {
        int v;
        shard_check(d->paths[i], &v);
        if (v && vocab && v != vocab) die("%s: vocabulary %d in its header, %s has %d", d->paths[i], v, d->paths[from], vocab);
        if (v && !vocab) { vocab = v; from = i; }
    }
    return vocab;
}

static void dataloader_free(DataLoader *d) {
    for (int i = 0; i < d->count; i++) free(d->paths[i]);
    free(d->paths); free(d->ntok); free(d->tokens); free(d->shard_order); free(d->slot_order);
    memset(d, 0, sizeof(*d));
}

static void dataloader_load_shard(DataLoader *d, int i) {
    if (d->loaded == i) return;
    free(d->tokens);
    d->tokens = xcalloc(d->ntok[i], sizeof(uint16_t), "token shard");
    FILE *f = open_file(d->paths[i], "rb");
    fseek(f, SHARD_HEADER * sizeof(int32_t), SEEK_SET);
    read_exact(d->tokens, sizeof(uint16_t), d->ntok[i], f, d->paths[i]);
    fclose(f);
    for (size_t j = 0; j < d->ntok[i]; j++)
        if (d->tokens[j] >= d->vocab)
            die("%s: token %u at position %zu is not below the vocabulary size %d", d->paths[i], d->tokens[j], j, d->vocab);
    d->loaded = i;
}

// a = a permutation of 0..n-1 (n < 2^32): Fisher-Yates from the identity on the stream of
// epoch e and `part` (the rule above)
static void data_permutation(uint32_t *a, size_t n, uint64_t seed, int64_t e, uint64_t part) {
    Rng r = rng_seeded(key_mix(key_mix(splitmix64(seed), (uint64_t)e), part));
    for (size_t i = 0; i < n; i++) a[i] = (uint32_t)i;
    for (size_t i = n; i-- > 1;) {
        uint32_t j = rng_below(&r, i + 1), x = a[i];
        a[i] = a[j];
        a[j] = x;
    }
}
static size_t shard_slots(const DataLoader *d, int f, int T) {
    return (d->ntok[f] - 1) / (size_t)T;
}

// the shards' order for epoch at.epoch and, if `slots_too`, the slots' of the shard at.shard
static void dataloader_order(DataLoader *d, int T, int slots_too) {
    if (d->shard_epoch != d->at.epoch) {
        if (!d->shard_order) d->shard_order = xcalloc(d->count, sizeof(uint32_t), "shard order");
        data_permutation(d->shard_order, (size_t)d->count, d->seed, d->at.epoch, 0);
        d->shard_epoch = d->at.epoch;
    }
    int f = (int)d->shard_order[d->at.shard];
    if (!slots_too) return;
    if (d->slot_epoch == d->at.epoch && d->slot_shard == f && d->slots == shard_slots(d, f, T))
        return;
    d->slots = shard_slots(d, f, T);
    free(d->slot_order);
    d->slot_order = xcalloc(d->slots, sizeof(uint32_t), "slot order");
    data_permutation(d->slot_order, d->slots, d->seed, d->at.epoch, (uint64_t)f + 1);
    d->slot_epoch = d->at.epoch;
    d->slot_shard = f;
}

// The next B sequences of T tokens and their next-token targets, in the training order: the
// next B slots of this shard's order, else of the next shard's in this epoch's order with B
// slots or more, else the next epoch's first.
static void dataloader_next(DataLoader *d, int *tokens, int *targets, int B, int T) {
    int largest = 0;
    for (int f = 1; f < d->count; f++) if (d->ntok[f] > d->ntok[largest]) largest = f;
    if (shard_slots(d, largest, T) < (size_t)B)
        die("%s: holds %zu tokens, a batch needs %zu (lower --batch or --seq-len)",
            d->paths[largest], d->ntok[largest], (size_t)B * T + 1);
    for (;;) {
        if (d->at.shard == d->count) {
            if (d->at.epoch == INT64_MAX) die("the training data's epoch counter is full");
            d->at = (DataPosition){ d->at.epoch + 1, 0, 0 };
        }
        dataloader_order(d, T, 0);
        if (d->at.slot + B <= shard_slots(d, (int)d->shard_order[d->at.shard], T)) break;
        d->at.shard++;
        d->at.slot = 0;
    }
    dataloader_order(d, T, 1);
    dataloader_load_shard(d, d->slot_shard);
    for (int b = 0; b < B; b++) {
        const uint16_t *src = d->tokens + (size_t)d->slot_order[d->at.slot + b] * T;
        for (int i = 0; i < T; i++) {
            tokens[b * T + i] = src[i];
            targets[b * T + i] = src[i + 1];
        }
    }
    d->at.slot += B;
}

// Resumes the training order where a checkpoint left it, for sequences of T tokens.
static void dataloader_seek(DataLoader *d, DataPosition at, int T) {
    if (at.epoch < 0 || at.shard < 0 || at.shard >= d->count)
        die("checkpoint's data position (epoch %lld, shard %d of the epoch's order, slot %zu) is "
            "not in the training data given (%d shards)", (long long)at.epoch, at.shard, at.slot,
            d->count);
    d->at = at;
    dataloader_order(d, T, 0);
    int f = (int)d->shard_order[at.shard];
    if (at.slot > shard_slots(d, f, T))
        die("checkpoint's data position (epoch %lld, slot %zu of %s) is past that shard's %zu "
            "slots of %d tokens", (long long)at.epoch, at.slot, d->paths[f], shard_slots(d, f, T),
            T);
}

// Batches of the validation split (not shuffled): its shards in the glob's order, each cut
// from its start into whole batches of B x T + 1 tokens, batch b of a shard being tokens
// [b B T, b B T + B T] (B sequences of T, each target the next token). val_batches: how many.
static long val_batches(const DataLoader *val, int B, int T) {
    long n = 0;
    for (int i = 0; i < val->count; i++) n += (long)((val->ntok[i] - 1) / ((size_t)B * T));
    return n;
}
static void val_batch(DataLoader *val, long k, int *tokens, int *targets, int B, int T) {
    size_t per = (size_t)B * T;
    int i = 0;
    for (; i < val->count && k >= (long)((val->ntok[i] - 1) / per); i++)
        k -= (long)((val->ntok[i] - 1) / per);
    if (i == val->count) die("validation batch %ld is past the end of --val", k);
    dataloader_load_shard(val, i);
    const uint16_t *src = val->tokens + (size_t)k * per;
    for (size_t j = 0; j < per; j++) { tokens[j] = src[j]; targets[j] = src[j + 1]; }
}

// --- tokenizer ---------------------------------------------------------------------------
// llm.c's format: header of 256 uint32 (magic 20240328, version 1 or 2, vocab size, and in
// version 2 the end-of-text token), then per token one length byte and that many bytes.
typedef struct {
    int vocab, eot;
    char **piece;
    unsigned char *len;
} Tokenizer;

static int tokenizer_load(Tokenizer *tk, const char *path, int vocab) {
    memset(tk, 0, sizeof(*tk));
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    uint32_t h[256];
    read_exact(h, sizeof(uint32_t), 256, f, path);
    if (h[0] != 20240328) die("%s: not a tokenizer file (bad magic %u)", path, h[0]);
    if (h[1] != 1 && h[1] != 2) die("%s: unsupported tokenizer version %u", path, h[1]);
    if ((int)h[2] != vocab) die("%s: tokenizer has %u tokens, the model's vocabulary is %d", path, h[2], vocab);
    tk->vocab = (int)h[2];
    tk->eot = h[1] == 2 ? (int)h[3] : 50256;
    if (tk->eot < 0 || tk->eot >= tk->vocab) tk->eot = 0;
    tk->piece = xcalloc(tk->vocab, sizeof(char *), "tokenizer");
    tk->len = xcalloc(tk->vocab, 1, "tokenizer");
    for (int i = 0; i < tk->vocab; i++) {
        read_exact(&tk->len[i], 1, 1, f, path);
        tk->piece[i] = xcalloc(tk->len[i] + 1, 1, "tokenizer");
        read_exact(tk->piece[i], 1, tk->len[i], f, path);
    }
    fclose(f);
    return 0;
}

static void tokenizer_free(Tokenizer *tk) {
    for (int i = 0; tk->piece && i < tk->vocab; i++) free(tk->piece[i]);
    free(tk->piece); free(tk->len);
    memset(tk, 0, sizeof(*tk));
}

// Prints a token's bytes, keeping printable text and newlines; without a tokenizer file a
// 256-token vocabulary is read as bytes and anything else as <id>.
static void print_token(const Tokenizer *tk, int token) {
    if (tk->piece) {
        for (int i = 0; i < tk->len[token]; i++) {
            unsigned char ch = (unsigned char)tk->piece[token][i];
            if (ch >= 32 || ch == '\n' || ch == '\t') putchar(ch);
        }
    } else if (tk->vocab == 256) {
        if (token >= 32 || token == '\n') putchar(token);
    } else {
        printf("<%d>", token);
    }
}

// --- GPT-2 BPE encoder (for --prompt) ----------------------------------------------------
// Encodes text exactly as dev/prepare_data.py's GPT2Tokenizer.encode does, from the tokenizer
// file and the encoder file that prepare_data.py writes beside it (data/gpt2_encoder.bin):
//   1. UTF-8 -> code points. An invalid sequence reads as one U+FFFD per maximal valid prefix
//      (at least one byte), as Python's bytes.decode(errors="replace") does.
//   2. Pre-tokenize: cut the text into the pieces that GPT-2's regex finds,
//        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//      (at each position the first alternative that matches wins); \p{L} (letters), \p{N}
//      (numbers) and \s (white space) are the code point ranges of the encoder file.
//   3. BPE each piece: start from one token per UTF-8 byte; while some adjacent pair of tokens
//      is a merge, merge every occurrence of the pair of lowest rank, left to right. A piece
//      of n bytes takes at most n - 1 rounds of n pair look-ups (binary search): 1 ms for 5 kB
//      of English, 0.5 s for 5 kB of letters without a space (one piece).
// Encoder file: a header of 256 int32 (magic 20240801, version 1, vocabulary size, M merges,
// NL, NN, NS code point ranges, Unicode version in slots 7-9), then M x (left, right, merged)
// token ids in rank order, then (NL + NN + NS) x (first, last) code points: the letters, the
// numbers, the white space. A single byte's token is the one that is that byte in the tokenizer.

enum { ENCODER_MAGIC = 20240801, ENCODER_HEADER = 256, ENCODER_MAX_CODE_POINT = 0x10FFFF };
typedef enum { CHAR_LETTER, CHAR_NUMBER, CHAR_SPACE, CHAR_OTHER } CharClass;
static const char *char_class_names[3] = { "letters", "numbers", "white space" };

typedef struct { int32_t left, right, merged, rank; } BpeMerge;
typedef struct {
    int vocab;
    int merges;
    BpeMerge *merge;        // sorted by (left, right), for binary search
    int byte_token[256];    // the token of each single byte
    int ranges[3];          // number of code point ranges of letters, numbers, white space
    int32_t *range[3];      // per class: ranges[c] pairs (first, last), ascending, disjoint
} Encoder;

static int merge_order(const void *a, const void *b) {
    const BpeMerge *x = a, *y = b;
    if (x->left != y->left) return x->left < y->left ? -1 : 1;
    return x->right < y->right ? -1 : x->right > y->right;
}

// Loads path, checked against the tokenizer tk (which must be loaded): returns -1 if the file
// cannot be opened, dies naming the file if it is not a valid encoder for tk's vocabulary.
static int encoder_load(Encoder *e, const char *path, const Tokenizer *tk) {
    memset(e, 0, sizeof(*e));
    if (!tk->piece) die("%s: needs the tokenizer file that was written with it", path);
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    int32_t h[ENCODER_HEADER];
    long size = file_size(f);
    if (size < (long)sizeof(h)) die("%s: not a BPE encoder file (shorter than its 1024-byte header)", path);
    read_exact(h, sizeof(int32_t), ENCODER_HEADER, f, path);
    if (h[0] != ENCODER_MAGIC) die("%s: not a BPE encoder file (bad magic %d, expected %d)", path, h[0], ENCODER_MAGIC);
    if (h[1] != 1) die("%s: unsupported encoder version %d", path, h[1]);
    if (h[2] != tk->vocab) die("%s: made for a vocabulary of %d tokens, the tokenizer has %d", path, h[2], tk->vocab);
    if (h[3] < 0 || h[3] >= tk->vocab) die("%s: bad number of merges %d for a vocabulary of %d", path, h[3], tk->vocab);
    for (int c = 0; c < 3; c++)
        if (h[4 + c] < 0 || h[4 + c] > ENCODER_MAX_CODE_POINT + 1)
            die("%s: bad number of code point ranges %d for the %s", path, h[4 + c], char_class_names[c]);
    long expect = (long)sizeof(h) + 12L * h[3] + 8L * ((long)h[4] + h[5] + h[6]);
    if (size < expect)
        die("%s: truncated: header says %d merges and %d code point ranges (%ld bytes), file has %ld bytes",
            path, h[3], h[4] + h[5] + h[6], expect, size);
    if (size > expect) die("%s: %ld bytes of trailing data", path, size - expect);
    e->vocab = tk->vocab;

    // single bytes: the tokenizer must hold exactly one token for each
    for (int b = 0; b < 256; b++) e->byte_token[b] = -1;
    for (int i = 0; i < tk->vocab; i++) {
        if (tk->len[i] != 1) continue;
        unsigned char b = (unsigned char)tk->piece[i][0];
        if (e->byte_token[b] >= 0)
            die("%s: the tokenizer has two tokens for the byte 0x%02x (%d and %d)", path, b, e->byte_token[b], i);
        e->byte_token[b] = i;
    }
    for (int b = 0; b < 256; b++)
        if (e->byte_token[b] < 0) die("%s: the tokenizer has no token for the byte 0x%02x", path, b);

    // merges: each joins two tokens into the token that is their bytes joined
    e->merges = h[3];
    e->merge = xcalloc(e->merges, sizeof(BpeMerge), "encoder");
    for (int r = 0; r < e->merges; r++) {
        int32_t ids[3];
        read_exact(ids, sizeof(int32_t), 3, f, path);
        for (int k = 0; k < 3; k++)
            if (ids[k] < 0 || ids[k] >= tk->vocab)
                die("%s: merge %d names token %d, outside the vocabulary of %d", path, r, ids[k], tk->vocab);
        int nl = tk->len[ids[0]], nr = tk->len[ids[1]];
        if (tk->len[ids[2]] != nl + nr || memcmp(tk->piece[ids[2]], tk->piece[ids[0]], nl) ||
            memcmp(tk->piece[ids[2]] + nl, tk->piece[ids[1]], nr))
            die("%s: merge %d joins tokens %d and %d into %d, which is not their bytes joined in the tokenizer",
                path, r, ids[0], ids[1], ids[2]);
        BpeMerge m = { ids[0], ids[1], ids[2], r };
        e->merge[r] = m;
    }
    qsort(e->merge, e->merges, sizeof(BpeMerge), merge_order);
    for (int i = 1; i < e->merges; i++)
        if (!merge_order(&e->merge[i - 1], &e->merge[i]))
            die("%s: merges %d and %d join the same two tokens", path, e->merge[i - 1].rank, e->merge[i].rank);

    // character classes
    for (int c = 0; c < 3; c++) {
        e->ranges[c] = h[4 + c];
        e->range[c] = xcalloc(2 * (size_t)e->ranges[c], sizeof(int32_t), "encoder");
        read_exact(e->range[c], sizeof(int32_t), 2 * (size_t)e->ranges[c], f, path);
        for (int i = 0; i < e->ranges[c]; i++) {
            int32_t first = e->range[c][2 * i], last = e->range[c][2 * i + 1];
            int after_previous = i == 0 || first > e->range[c][2 * i - 1];
            if (first < 0 || first > last || last > ENCODER_MAX_CODE_POINT || !after_previous)
                die("%s: code point range %d of the %s (%d..%d) is not ascending within 0..0x10FFFF",
                    path, i, char_class_names[c], first, last);
        }
    }
    fclose(f);
    return 0;
}

static void encoder_free(Encoder *e) {
    free(e->merge);
    for (int c = 0; c < 3; c++) free(e->range[c]);
    memset(e, 0, sizeof(*e));
}

static int in_ranges(const int32_t *range, int n, uint32_t cp) { // binary search
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < (uint32_t)range[2 * mid]) hi = mid - 1;
        else if (cp > (uint32_t)range[2 * mid + 1]) lo = mid + 1;
        else return 1;
    }
    return 0;
}

static CharClass char_class(const Encoder *e, uint32_t cp) {
    for (int c = 0; c < 3; c++)
        if (in_ranges(e->range[c], e->ranges[c], cp)) return (CharClass)c;
    return CHAR_OTHER;
}

// Reads the code point at s[*i] (of n bytes) and moves *i past it. An invalid sequence reads
// as U+FFFD and moves past its maximal valid prefix, at least one byte (Unicode's "maximal
// subpart" practice, which Python follows); *invalid counts the bytes so replaced.
// The second byte's range depends on the first: that excludes overlong forms (E0, F0),
// surrogates (ED) and code points above U+10FFFF (F4).
static uint32_t utf8_next(const unsigned char *s, size_t n, size_t *i, int *invalid) {
    unsigned char b = s[*i], lo = 0x80, hi = 0xBF;
    int more;
    uint32_t cp;
    if (b < 0x80) { (*i)++; return b; }
    if (b >= 0xC2 && b <= 0xDF) {
        more = 1; cp = b & 0x1F;
    } else if (b >= 0xE0 && b <= 0xEF) {
        more = 2; cp = b & 0x0F; lo = b == 0xE0 ? 0xA0 : 0x80; hi = b == 0xED ? 0x9F : 0xBF;
    } else if (b >= 0xF0 && b <= 0xF4) {
        more = 3; cp = b & 0x07; lo = b == 0xF0 ? 0x90 : 0x80; hi = b == 0xF4 ? 0x8F : 0xBF;
    } else { // 80-C1, F5-FF never start a sequence
        (*i)++; (*invalid)++;
        return 0xFFFD;
    }
    size_t j = *i + 1;
    for (int k = 0; k < more; k++, j++, lo = 0x80, hi = 0xBF) {
        if (j >= n || s[j] < lo || s[j] > hi) { *invalid += (int)(j - *i); *i = j; return 0xFFFD; }
        cp = cp << 6 | (s[j] & 0x3F);
    }
    *i = j;
    return cp;
}

static int utf8_put(unsigned char *s, uint32_t cp) { // writes cp's 1-4 bytes, returns how many
    if (cp < 0x80) { s[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) { s[0] = 0xC0 | cp >> 6; s[1] = 0x80 | (cp & 0x3F); return 2; }
    if (cp < 0x10000) { s[0] = 0xE0 | cp >> 12; s[1] = 0x80 | (cp >> 6 & 0x3F); s[2] = 0x80 | (cp & 0x3F); return 3; }
    s[0] = 0xF0 | cp >> 18; s[1] = 0x80 | (cp >> 12 & 0x3F); s[2] = 0x80 | (cp >> 6 & 0x3F); s[3] = 0x80 | (cp & 0x3F);
    return 4;
}

// The length, in code points, of the piece of GPT-2's regex that starts at cp[i] (of n code
// points; cls[k] is the class of cp[k]). Every code point starts some alternative's match.
static int pretoken_length(const uint32_t *cp, const unsigned char *cls, int i, int n) {
    // 's 't 're 've 'm 'll 'd (lower case only, as in GPT-2)
    if (cp[i] == '\'' && i + 1 < n) {
        uint32_t a = cp[i + 1], b = i + 2 < n ? cp[i + 2] : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
        if (((a == 'r' || a == 'v') && b == 'e') || (a == 'l' && b == 'l')) return 3;
    }
    // ' ?\p{L}+' | ' ?\p{N}+' | ' ?[^\s\p{L}\p{N}]+': an optional space, then a run of one class
    int j = i + (cp[i] == ' ' && i + 1 < n && cls[i + 1] != CHAR_SPACE);
    if (cls[j] != CHAR_SPACE) {
        int k = j + 1;
        while (k < n && cls[k] == cls[j]) k++;
        return k - i;
    }
    // '\s+(?!\S)' | '\s+': a run of white space, less its last character when more than one
    // precedes a non-space (that one then goes with the word after it)
    int k = i + 1;
    while (k < n && cls[k] == CHAR_SPACE) k++;
    return k < n && k - i > 1 ? k - 1 - i : k - i;
}

static const BpeMerge *find_merge(const Encoder *e, int left, int right) {
    BpeMerge key = { left, right, 0, 0 };
    return bsearch(&key, e->merge, e->merges, sizeof(BpeMerge), merge_order);
}

// Applies the merges to the tokens parts[0..n); returns how many are left.
static int bpe_piece(const Encoder *e, int *parts, int n) {
    for (;;) {
        const BpeMerge *best = NULL; // the adjacent pair of lowest rank
        for (int i = 0; i + 1 < n; i++) {
            const BpeMerge *m = find_merge(e, parts[i], parts[i + 1]);
            if (m && (!best || m->rank < best->rank)) best = m;
        }
        if (!best) return n;
        int w = 0;                   // merge each occurrence, left to right (w <= i)
        for (int i = 0; i < n; w++) {
            if (i + 1 < n && parts[i] == best->left && parts[i + 1] == best->right) {
                parts[w] = best->merged;
                i += 2;
            } else {
                parts[w] = parts[i++];
            }
        }
        n = w;
    }
}

// The tokens of text[0..len) as dev/prepare_data.py encodes it (no end-of-text token added).
// Writes at most max of them to out and returns how many there are (max 0, out NULL: count
// only); *invalid (if not NULL) gets the number of bytes that were not valid UTF-8.
static int encoder_encode(const Encoder *e, const char *text, size_t len, int *out, int max, int *invalid) {
    if (len > 0x1FFFFFFF) die("text to encode is too long (%zu bytes)", len); // ints below hold 3 len
    uint32_t *cp = xcalloc(len + 1, sizeof(uint32_t), "encoder");   // the code points
    unsigned char *cls = xcalloc(len + 1, 1, "encoder");            // and their classes
    int *at = xcalloc(len + 2, sizeof(int), "encoder");             // where each starts in utf8
    unsigned char *utf8 = xcalloc(3 * len + 1, 1, "encoder");       // U+FFFD is 3 bytes
    int *parts = xcalloc(3 * len + 1, sizeof(int), "encoder");
    const unsigned char *s = (const unsigned char *)text;
    int n = 0, bad = 0, bytes = 0, count = 0;
    for (size_t i = 0; i < len; n++) {
        cp[n] = utf8_next(s, len, &i, &bad);
        cls[n] = (unsigned char)char_class(e, cp[n]);
        at[n] = bytes;
        bytes += utf8_put(utf8 + bytes, cp[n]);
    }
    at[n] = bytes;
    for (int i = 0; i < n;) {
        int end = i + pretoken_length(cp, cls, i, n), k = 0;
        for (int b = at[i]; b < at[end]; b++) parts[k++] = e->byte_token[utf8[b]];
        k = bpe_piece(e, parts, k);
        for (int t = 0; t < k; t++, count++)
            if (count < max) out[count] = parts[t];
        i = end;
    }
    if (invalid) *invalid = bad;
    free(cp); free(cls); free(at); free(utf8); free(parts);
    return count;
}

// ----------------------------------------------------------------------------
// 10. data parallel over MPI ranks; training step, evaluation, sampling, layer analysis

// --- MPI: data parallel over ranks (make train_tlm_mpi, -DTLM_MPI; else one rank, no MPI) ---
// Every rank holds the whole model. A step's global batch is ranks x grad_accum micro-batches
// of B sequences, taken in order from the one data stream that every rank walks: micro-batch k
// is rank (k mod ranks)'s. Each rank sums its micro-batches' gradients, one MPI_Allreduce sums
// those over the ranks, and every rank clips and applies AdamW to the same sum, so the ranks'
// parameters stay identical. Validation batch i is rank (i mod ranks)'s; the losses are summed.
// Only rank 0 prints (the others' stdout is /dev/null), logs, samples and saves.
// Equivalence: one process with --grad-accum 2 forms g0 + g1 as two ranks' all-reduce does
// (train_step), so their losses and checkpoints agree bit for bit; with more ranks the
// all-reduce adds in its own order (the same on every rank), within float rounding.

static double allreduce_seconds; // in ranks_sum_grads, for the run's summary line

static void ranks_start(int *argc, char ***argv) {
#ifdef TLM_MPI
    int threads_ok;
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &threads_ok); // only the main thread calls MPI
    MPI_Comm_rank(MPI_COMM_WORLD, &world.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world.ranks);
    if (world.rank > 0 && !freopen("/dev/null", "w", stdout)) die("cannot redirect stdout to /dev/null");
#else
    (void)argc; (void)argv;
#endif
}

static void ranks_end(void) {
#ifdef TLM_MPI
    MPI_Finalize();
#endif
}

// the gradient block summed over the ranks, in place: a few large MPI_Allreduce calls
static void ranks_sum_grads(Model *m) {
    if (world.ranks == 1) return;
#ifdef TLM_MPI
    double t0 = wall_time();
    MPI_Datatype type = sizeof(real) == sizeof(float) ? MPI_FLOAT : MPI_DOUBLE;
    for (size_t i = 0; i < m->num_params; i += 1 << 30) {
        size_t n = m->num_params - i < (size_t)1 << 30 ? m->num_params - i : (size_t)1 << 30;
        MPI_Allreduce(MPI_IN_PLACE, m->grads + i, (int)n, type, MPI_SUM, MPI_COMM_WORLD);
    }
    allreduce_seconds += wall_time() - t0;
#else
    (void)m;
#endif
}

// x[0:n] summed over the ranks (each rank's entries are 0 where another rank's are not, so
// each sum is exact and the caller adds them in the single process's order)
static void ranks_sum_doubles(double *x, int n) {
    if (world.ranks == 1) return;
#ifdef TLM_MPI
    MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
#else
    (void)x; (void)n;
#endif
}

// the largest x over the ranks: every rank decides alike (e.g. to stop after a signal)
static int ranks_max(int x) {
    if (world.ranks == 1) return x;
#ifdef TLM_MPI
    MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
#endif
    return x;
}

// Before rank 0 saves: every rank holds the very parameters it writes (a checksum of their bits).
static void ranks_check_same(const Model *m) {
    if (world.ranks == 1) return;
    uint64_t sum = 0;
    for (size_t i = 0; i < m->num_params; i++) {
        uint32_t bits;
        float f = (float)m->params[i];
        memcpy(&bits, &f, 4);
        sum = (sum ^ bits) * 0x100000001b3ull;
    }
#ifdef TLM_MPI
    uint64_t low = sum, high = sum;
    MPI_Allreduce(MPI_IN_PLACE, &low, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &high, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
    if (low != high) die("step %d: the ranks' parameters differ (checksum %016llx); not saving",
                         m->step, (unsigned long long)sum);
#endif
}

// --save on rank 0, once every rank has checked that it holds the parameters written: 0 saved,
// -1 failed (rank 0 says why), 1 on the other ranks
static int ranks_save(const Model *m, const char *path, DataPosition pos) {
    ranks_check_same(m);
    return world.rank == 0 ? checkpoint_save(m, path, pos) : 1;
}

// --load on another number of ranks (saved: 0 for one process). The data position is the one
// stream's, so the run goes on where it stopped if every step takes the same global batch, of
// ranks x batch x grad_accum sequences: a --grad-accum not given is set to keep it; otherwise
// a different global batch is refused.
static void ranks_check_resume(const char *path, int saved_ranks, int saved_batch, int saved_accum,
                               int batch, int *grad_accum, int grad_accum_given) {
    saved_ranks = saved_ranks > 0 ? saved_ranks : 1;
    if (saved_ranks == world.ranks) return;
    long long global = (long long)saved_ranks * saved_batch * saved_accum, per_accum = (long long)world.ranks * batch;
    if (!grad_accum_given && global % per_accum == 0) *grad_accum = (int)(global / per_accum);
    if ((long long)world.ranks * batch * *grad_accum != global)
        die("%s: saved by %d rank(s) at a global batch of %lld sequences a step; here %d ranks x --batch %d x "
            "--grad-accum %d: give --batch and --grad-accum that make %lld, or run on %d rank(s)", path,
            saved_ranks, global, world.ranks, batch, *grad_accum, global, saved_ranks);
    printf("resuming %s, saved by %d rank(s), on %d: --grad-accum %d keeps its global batch of %lld sequences\n",
           path, saved_ranks, world.ranks, *grad_accum, global);
}

// --- training step, evaluation ----------------------------------------------------------

// One optimizer step over the global batch (ranks x grad_accum micro-batches of B x T tokens;
// this rank computes micro-batches rank, rank + ranks, ...), then AdamW unless the loss or the
// gradient is not finite (then the parameters are left as they were). Returns the mean loss;
// *norm gets the gradient norm before clipping. A rank's micro-batches after its first go into
// micro_grads, which is then added to grads: g0 + g1, formed as the all-reduce forms it.
static double train_step(Model *m, DataLoader *data, const AdamW *opt, float lr, int grad_accum, int B, int T, double *norm) {
    int micro_batches = world.ranks * grad_accum;
    double *loss_part = xcalloc(micro_batches, sizeof(double), "losses"); // 0 where another rank's
    model_zero_grad(m);
    int mine = 0;
    for (int k = 0; k < micro_batches; k++) {
        dataloader_next(data, m->tokens, m->targets, B, T);
        if (k % world.ranks != world.rank) continue;
        if (mine++ == 1) {
            if (!m->micro_grads) m->micro_grads = xcalloc(m->num_params, sizeof(real), "gradients");
            layout_params(&m->cfg, m->micro_grads, &m->table, &m->g); // backward now adds into it
        }
        if (mine > 1) zero_parallel(m->micro_grads, m->num_params);
        loss_part[k] = model_forward(m, m->tokens, m->targets, B, T) / micro_batches;
        if (world.ranks > 1 && !isfinite(loss_part[k]))
            die("step %d: the loss of micro-batch %d is %g; stopping every rank", m->step + 1, k, loss_part[k]);
        model_backward(m, B, T, (real)(1.0 / micro_batches));
        if (mine > 1) {
            real *restrict sum = m->grads;
            const real *restrict g = m->micro_grads;
            #pragma omp parallel for
            for (size_t j = 0; j < m->num_params; j++) sum[j] += g[j];
        }
    }
    if (mine > 1) layout_params(&m->cfg, m->grads, &m->table, &m->g);
    // a rank whose gradient is not finite stops every rank, naming itself (a pass over the
    // gradient: ~1% of a step); after the sum no rank could tell whose it was
    if (world.ranks > 1 && !isfinite(*norm = grad_norm(m)))
        die("step %d: this rank's gradient norm is %g; stopping every rank", m->step + 1, *norm);
    ranks_sum_grads(m);
    ranks_sum_doubles(loss_part, micro_batches);
    double loss = 0;
    for (int k = 0; k < micro_batches; k++) loss += loss_part[k];
    free(loss_part);
    *norm = grad_norm(m);
    if (isfinite(loss) && isfinite(*norm)) adamw_step(m, opt, lr, *norm);
    return loss;
}

// The batches an evaluation reads, spread evenly over the validation split: of its M batches
// (val_batches), N = `batches` of them (N = 0, or N > M: all M), batch i of N being batch
// floor(i M / N) of the split, i = 0..N-1 (M 10, N 3: batches 0, 3, 6).
static long eval_count(int batches, long M) { return batches == 0 || batches > M ? M : batches; }
static long eval_pick(long i, long N, long M) { // floor(i M / N) without overflow (i < N <= M)
    return (long)((uint64_t)i * (uint64_t)(M / N) + (uint64_t)i * (uint64_t)(M % N) / (uint64_t)N);
}

// Mean loss over the batches eval_count and eval_pick choose from the validation data; *count
// (if not NULL) gets how many.
static double evaluate(Model *m, DataLoader *val, int batches, int B, int T, long *count) {
    long M = val_batches(val, B, T), N = eval_count(batches, M);
    if (M < 1) die("--val: no shard holds a batch of %d x %d tokens and its last target", B, T);
    double *loss = xcalloc(N, sizeof(double), "validation"); // 0 where another rank's
    for (long i = 0; i < N; i++) {
        if (i % world.ranks != world.rank) continue;
        val_batch(val, eval_pick(i, N, M), m->tokens, m->targets, B, T);
        loss[i] = model_forward(m, m->tokens, m->targets, B, T);
    }
    ranks_sum_doubles(loss, N);
    double sum = 0;
    for (long i = 0; i < N; i++) sum += loss[i];
    free(loss);
    if (count) *count = N;
    return sum / N;
}

// --- sampling ------------------------------------------------------------------------------

static int descending(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

// The next token from one position's logits (V). Temperature 0: greedy, the first largest logit.
// Else a draw from softmax(logits / temperature), over the top_k largest logits only when
// top_k > 0 (a tie with the k-th largest is kept). keep: V doubles of scratch.
static int sample_next(const real *logits, int V, double temperature, int top_k, Rng *rng, double *keep) {
    int best = 0;
    for (int v = 1; v < V; v++) if (logits[v] > logits[best]) best = v;
    if (temperature == 0) return best;
    double floor = -DBL_MAX; // the k-th largest logit
    if (top_k > 0 && top_k < V) {
        for (int v = 0; v < V; v++) keep[v] = logits[v];
        qsort(keep, V, sizeof(double), descending);
        floor = keep[top_k - 1];
    }
    double sum = 0;
    for (int v = 0; v < V; v++) {
        keep[v] = logits[v] >= floor ? exp((logits[v] - (double)logits[best]) / temperature) : 0;
        sum += keep[v];
    }
    double r = rng_uniform(rng) * sum, acc = 0;
    for (int v = 0; v < V; v++) {
        acc += keep[v];
        if (keep[v] > 0 && acc >= r) return v;
    }
    return best;
}

// Continues tokens[0..n) (n >= 1; room for n + len) by len tokens, each from the last position's
// logits of a forward over the last seq-len tokens so far, as one sequence (B = 1). Nothing is
// cached between tokens: Titans' and Hope's memories are learned in context, so each forward
// relearns them over the window, as training does. Prints each token as it comes if tk is given.
static void generate(Model *m, int *tokens, int n, int len, double temperature, int top_k, Rng *rng,
                     const Tokenizer *tk) {
    int T = m->T, V = m->cfg.vocab;
    double *keep = xcalloc(V, sizeof(double), "sample");
    m->logits_last_row = 1;
    for (int i = 0; i < len; i++, n++) {
        int window = n < T ? n : T;
        model_forward(m, tokens + n - window, NULL, 1, window);
        tokens[n] = sample_next(m->a.logits, V, temperature, top_k, rng, keep);
        if (tk) { print_token(tk, tokens[n]); fflush(stdout); }
    }
    m->logits_last_row = 0;
    free(keep);
}

// Training's samples: `len` tokens after the end-of-text token, at temperature 1.
static void sample_text(Model *m, const Tokenizer *tk, int len, uint64_t seed) {
    Rng rng = rng_seeded(seed);
    int *tokens = xcalloc(len + 1, sizeof(int), "sample");
    tokens[0] = tk->eot < m->cfg.vocab ? tk->eot : 0;
    generate(m, tokens, 1, len, 1.0, 0, &rng, tk);
    printf("\n");
    free(tokens);
}

// For each layer l, on the validation batches evaluate() picks: how the layer changes the stream,
//   rel_update = |x_{l+1} - x_l| / |x_l|   (and split: mixer |res1 - x|/|x|, MLP |out - res1|/|res1|)
//   cos_sim    = cos(x_l, x_{l+1})          averaged over positions
//   cos_mlp_residual = cos(MLP_l output, res1), res1 the residual stream the MLP slot reads and
//                adds to (the alignment probe: does the MLP refine the stream or turn it?).
//                Hope: the output of the whole slot, out - res1 (SwiGLU and fast levels), as
//                rel_mlp and dloss_skip_mlp take it: the levels add to the same stream in turn.
// and how much the loss rises when the layer's MLP slot, or the whole layer, is skipped.
typedef struct { double rel_mixer, rel_mlp, rel, cos_sim, cos_mlp_residual, dloss_skip_mlp, dloss_skip_layer; } LayerStats;

static void analyze_layers(Model *m, DataLoader *val, int batches, int B, int T, LayerStats *stats, double *base_loss) {
    const Config *c = &m->cfg;
    int L = c->layers, C = c->dim, N = B * T;
    memset(stats, 0, L * sizeof(LayerStats));
    long M = val_batches(val, B, T), count = eval_count(batches, M);
    *base_loss = evaluate(m, val, batches, B, T, NULL); // (dies if --val holds no batch)
    for (long i = 0; i < count; i++) {
        val_batch(val, eval_pick(i, count, M), m->tokens, m->targets, B, T);
        model_forward(m, m->tokens, NULL, B, T);
        for (int l = 0; l < L; l++) {
            const LayerActs *la = &m->a.layer[l];
            const real *x = l ? m->a.layer[l - 1].out : m->a.x0;
            for (int n = 0; n < N; n++) {
                double xx = 0, mix = 0, res1 = 0, mlp = 0, upd = 0, dot = 0, oo = 0, align = 0;
                for (int j = 0; j < C; j++) {
                    size_t k = (size_t)n * C + j;
                    xx += (double)x[k] * x[k];
                    res1 += (double)la->res1[k] * la->res1[k];
                    mix += (double)(la->res1[k] - x[k]) * (la->res1[k] - x[k]);
                    mlp += (double)(la->out[k] - la->res1[k]) * (la->out[k] - la->res1[k]);
                    upd += (double)(la->out[k] - x[k]) * (la->out[k] - x[k]);
                    dot += (double)x[k] * la->out[k];
                    align += (double)(la->out[k] - la->res1[k]) * la->res1[k];
                    oo += (double)la->out[k] * la->out[k];
                }
                double per = (double)N * count; // positions of all batches
                stats[l].rel_mixer += sqrt(mix / (xx + 1e-30)) / per;
                stats[l].rel_mlp += sqrt(mlp / (res1 + 1e-30)) / per;
                stats[l].rel += sqrt(upd / (xx + 1e-30)) / per;
                stats[l].cos_sim += dot / sqrt(xx * oo + 1e-30) / per;
                stats[l].cos_mlp_residual += align / sqrt(mlp * res1 + 1e-30) / per;
            }
        }
    }
    int *skip = xcalloc(L, sizeof(int), "analysis");
    for (int l = 0; l < L; l++) {
        skip[l] = 1;
        m->skip_mlp = skip;
        stats[l].dloss_skip_mlp = evaluate(m, val, batches, B, T, NULL) - *base_loss;
        m->skip_mlp = NULL;
        m->skip_layer = skip;
        stats[l].dloss_skip_layer = evaluate(m, val, batches, B, T, NULL) - *base_loss;
        m->skip_layer = NULL;
        skip[l] = 0;
    }
    free(skip);
}

// ----------------------------------------------------------------------------
// 11. main: the command line, then evaluate, analyze or train

// --- the option table ---------------------------------------------------------------------
// Every option is one row of options[]: parsing, -h, the checkpoint's option area, the JSONL
// config record and the comparison on --load are all generated from it. A row gives:
//   name     as typed, --name (its JSONL key: '-' -> '_')
//   type     INT, LONG, REAL (a double, range-checked as the float it is used as), STRING (a path
//            of < TEXT_MAX characters), FLAG (no value), ARCH, TAPER (a schedule or groups:..),
//            LIST (up to `count` positive integers, comma-separated, into an int array)
//   kind     MODEL: the model's shape, stored in the checkpoint; with --load it must agree
//            TRAIN: the run's settings, stored; with --load restored unless given (then overridden)
//            RUN:   this invocation only (what to do, where to write), never stored
//   offset   where the value lives in Options (model options: in its Config)
//   def      the default, as it would be typed; "--name": the value of option name (which the
//            command line or a checkpoint may have set), taken by options_follow
//   lo, hi   the range of a number, its only statement (REAL: lo = FLT_MIN means positive); a
//            default of 0 outside the range is the option's "not set" (--vocab: from the shards)
//   count    LIST: at most this many values
//   help     for -h
//   flags    (may be left out) QUIET: a value given over a checkpoint's is not reported (what
//            the run prints, not what it trains); NEEDED: a checkpoint that does not store it
//            cannot be trained from (--data-seed: before it a data position meant another order)
//   log_from (may be left out) where the JSONL config record reads the value, if not at offset
//            (--mlp-widths: the widths the model was built with, whatever the taper)
// A new option is a field in Options (or Config) and a row here: parsing, -h, the checkpoint, the
// log and --load then handle it; what it does is the code that reads the field, and
// config_finish checks how it combines with the others.

struct Options {
    Config cfg;                                         // the model options
    char train[TEXT_MAX], val[TEXT_MAX], tokenizer[TEXT_MAX];
    char save[TEXT_MAX], load[TEXT_MAX], log[TEXT_MAX];
    int batch, grad_accum, steps, warmup, decay_steps, eval_every, eval_batches;
    int final_eval_batches, sample_every, sample_len, save_every, eval_only, analyze;
    double lr, weight_decay, grad_clip;
    long seed, data_seed;
    char prompt[TEXT_MAX];                              // --sample
    int sample, top_k, samples;
    double temperature;
};

typedef enum { OPT_INT, OPT_LONG, OPT_REAL, OPT_STRING, OPT_FLAG, OPT_ARCH, OPT_TAPER, OPT_LIST } OptType;
typedef enum { KIND_RUN, KIND_MODEL, KIND_TRAIN } OptKind;
typedef struct {
    const char *name;
    OptType type;
    OptKind kind;
    size_t offset;
    const char *def;
    double lo, hi;
    int count;
    const char *help;
    int flags;
    size_t log_from;
} Option;
enum { QUIET = 1, NEEDED = 2 };

#define OFF(field) offsetof(Options, field)
#define BIG 2147483647.0
#pragma GCC diagnostic push // (a row may leave out flags and log_from)
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
static const Option options[] = {
    // the model
    { "arch", OPT_ARCH, KIND_MODEL, OFF(cfg.arch), "transformer", 0, 0, 0, "transformer | gated | titans | hope" },
    { "layers", OPT_INT, KIND_MODEL, OFF(cfg.layers), "6", 1, MAX_LAYERS, 0, "number of blocks L" },
    { "dim", OPT_INT, KIND_MODEL, OFF(cfg.dim), "128", 2, 1 << 14, 0, "model width C" },
    { "heads", OPT_INT, KIND_MODEL, OFF(cfg.heads), "4", 1, 1 << 14, 0, "attention heads" },
    { "vocab", OPT_INT, KIND_MODEL, OFF(cfg.vocab), "0", 2, 65536, 0, "vocabulary size (0: from the shards' header, else 50257)" },
    { "mlp-width", OPT_INT, KIND_MODEL, OFF(cfg.mlp_width), "384", 1, 1 << 18, 0, "mean MLP hidden width H (the uniform model's width)" },
    { "taper", OPT_TAPER, KIND_MODEL, OFF(cfg.taper), "cosine", 0, 0, 0,
      "uniform | cosine | linear | sigmoid | reverse | groups:v0,v1,.. (contiguous groups of layers)" },
    { "taper-start", OPT_REAL, KIND_MODEL, OFF(cfg.taper_start), "1.5", FLT_MIN, FLT_MAX, 0, "first layer's width in multiples of H" },
    { "taper-end", OPT_REAL, KIND_MODEL, OFF(cfg.taper_end), "0.5", FLT_MIN, FLT_MAX, 0, "last layer's width in multiples of H" },
    { "taper-multiple", OPT_INT, KIND_MODEL, OFF(cfg.taper_multiple), "32", 1, 1 << 18, 0, "round every width to a multiple of this" },
    { "mlp-widths", OPT_LIST, KIND_MODEL, OFF(cfg.widths_given), "", 1, 1 << 20, MAX_LAYERS,
      "every layer's MLP width w0,w1,.. (sum L*H; instead of --taper)", 0, OFF(cfg.mlp_widths) },
    { "seq-len", OPT_INT, KIND_MODEL, OFF(cfg.seq_len), "256", 1, 8192, 0, "sequence length T" },
    { "untied", OPT_FLAG, KIND_MODEL, OFF(cfg.untied), "0", 0, 1, 0, "separate output head (default: tied to the embedding)" },
    { "gate-headwise", OPT_FLAG, KIND_MODEL, OFF(cfg.gate_headwise), "0", 0, 1, 0, "gated: one gate per head instead of per channel" },
    { "match-params", OPT_FLAG, KIND_MODEL, OFF(cfg.match_params), "0", 0, 1, 0,
      "shrink the mean MLP width to the transformer's parameter count (stored: the shrunk width)" },
    { "window", OPT_INT, KIND_MODEL, OFF(cfg.window), "64", 1, BIG, 0, "titans: sliding attention window" },
    { "mem-depth", OPT_INT, KIND_MODEL, OFF(cfg.mem_depth), "2", 1, 2, 0, "titans: memory depth, 1 (linear) or 2 (MLP)" },
    { "mem-hidden", OPT_INT, KIND_MODEL, OFF(cfg.mem_hidden), "32", 1, 1 << 14, 0, "titans: hidden width of the depth-2 memory" },
    { "mem-chunk", OPT_INT, KIND_MODEL, OFF(cfg.mem_chunk), "16", 1, 1 << 20, 0, "titans: tokens per memory chunk (1 = exact recurrence)" },
    { "mem-lr", OPT_REAL, KIND_MODEL, OFF(cfg.mem_lr), "0.00625", FLT_MIN, 1, 0,
      "titans, hope: the memory's largest step size theta_max (the same for any chunk)" },
    { "mem-clip", OPT_REAL, KIND_MODEL, OFF(cfg.mem_clip), "1", 0, 1e6, 0,
      "titans, hope: bound on each token's inner-gradient norm (0: off)" },
    { "mem-conv", OPT_INT, KIND_MODEL, OFF(cfg.mem_conv), "4", 0, 64, 0,
      "titans, hope: causal depthwise conv kernel on the memory's q, k, v (0: off)" },
    { "mem-silu", OPT_INT, KIND_MODEL, OFF(cfg.mem_silu), "1", 0, 1, 0, "titans, hope: SiLU on the memory's q, k, v (0: off)" },
    { "cms-levels", OPT_INT, KIND_MODEL, OFF(cfg.cms_levels), "2", 1, MAX_CMS_LEVELS, 0, "hope: memory levels, including the slow SwiGLU" },
    { "cms-width", OPT_INT, KIND_MODEL, OFF(cfg.cms_width), "64", 1, 1 << 14, 0, "hope: mean hidden width of the fast levels" },
    { "cms-chunks", OPT_LIST, KIND_MODEL, OFF(cfg.cms_chunks[1]), "16,64", 1, 1 << 20, MAX_CMS_LEVELS - 1,
      "hope: update period of levels 2, 3, .." },
    // the training run
    { "train", OPT_STRING, KIND_TRAIN, OFF(train), "data/brown_byte_train.bin", 0, 0, 0, "training shard(s), a file or a glob" },
    { "val", OPT_STRING, KIND_TRAIN, OFF(val), "data/brown_byte_val.bin", 0, 0, 0, "validation shard(s)" },
    { "tokenizer", OPT_STRING, KIND_TRAIN, OFF(tokenizer), "", 0, 0, 0, "tokenizer file for samples (default: beside --train)", QUIET },
    { "batch", OPT_INT, KIND_TRAIN, OFF(batch), "8", 1, 1 << 24, 0, "sequences per micro-batch B" },
    { "grad-accum", OPT_INT, KIND_TRAIN, OFF(grad_accum), "1", 1, 1 << 20, 0, "micro-batches per optimizer step" },
    { "steps", OPT_INT, KIND_TRAIN, OFF(steps), "600", 0, BIG, 0, "total optimizer steps (a resumed run continues to this)" },
    { "lr", OPT_REAL, KIND_TRAIN, OFF(lr), "3e-3", FLT_MIN, FLT_MAX, 0, "peak learning rate" },
    { "warmup", OPT_INT, KIND_TRAIN, OFF(warmup), "30", 0, BIG, 0, "linear warmup steps" },
    { "decay-steps", OPT_INT, KIND_TRAIN, OFF(decay_steps), "0", 0, BIG, 0, "length of the cosine schedule (0: --steps)" },
    { "weight-decay", OPT_REAL, KIND_TRAIN, OFF(weight_decay), "0.1", 0, FLT_MAX, 0, "AdamW decoupled weight decay (matrices only)" },
    { "grad-clip", OPT_REAL, KIND_TRAIN, OFF(grad_clip), "1", 0, FLT_MAX, 0, "clip the global gradient norm to this (0: off)" },
    { "seed", OPT_LONG, KIND_TRAIN, OFF(seed), "1337", 0, 0, 0, "random seed (initialisation and samples)" },
    { "data-seed", OPT_LONG, KIND_TRAIN, OFF(data_seed), "--seed", 0, 0, 0,
      "seed of the training order (every epoch: the shards, and each one's sequences, permuted)",
      NEEDED },
    { "eval-every", OPT_INT, KIND_TRAIN, OFF(eval_every), "100", 0, BIG, 0, "validate every N steps (0: only first and last)" },
    { "eval-batches", OPT_INT, KIND_TRAIN, OFF(eval_batches), "8", 0, BIG, 0,
      "validation batches N per evaluation, spread over the M that --val holds: batch i of N "
      "is batch floor(i M / N) of the split (0: all M)" },
    { "final-eval-batches", OPT_INT, KIND_TRAIN, OFF(final_eval_batches), "--eval-batches", 0, BIG,
      0, "validation batches of the evaluation after the last step, which `done` reports "
      "(0: all)" },
    { "sample-every", OPT_INT, KIND_TRAIN, OFF(sample_every), "200", 0, BIG, 0, "print a text sample every N steps (0: never)", QUIET },
    { "sample-len", OPT_INT, KIND_TRAIN, OFF(sample_len), "200", 1, 1 << 20, 0, "tokens per sample", QUIET },
    { "save-every", OPT_INT, KIND_TRAIN, OFF(save_every), "0", 0, BIG, 0, "save every N steps (0: --eval-every) and at the end" },
    // this invocation
    { "save", OPT_STRING, KIND_RUN, OFF(save), "", 0, 0, 0, "checkpoint file to write" },
    { "load", OPT_STRING, KIND_RUN, OFF(load), "", 0, 0, 0,
      "checkpoint to resume from: model, optimizer, data position, and the training options not given" },
    { "eval-only", OPT_FLAG, KIND_RUN, OFF(eval_only), "0", 0, 1, 0, "with --load: print the validation loss and exit" },
    { "analyze", OPT_FLAG, KIND_RUN, OFF(analyze), "0", 0, 1, 0, "with --load: per-layer contribution analysis" },
    { "log", OPT_STRING, KIND_RUN, OFF(log), "", 0, 0, 0, "append JSONL records (config, train, val, ...) to this file" },
    { "sample", OPT_FLAG, KIND_RUN, OFF(sample), "0", 0, 1, 0, "with --load: print --samples continuations of --prompt, then exit" },
    { "prompt", OPT_STRING, KIND_RUN, OFF(prompt), "", 0, 0, 0, "--sample: the text to continue (GPT-2: after <|endoftext|>)" },
    { "temperature", OPT_REAL, KIND_RUN, OFF(temperature), "1", 0, FLT_MAX, 0, "--sample: softmax temperature (0: greedy)" },
    { "top-k", OPT_INT, KIND_RUN, OFF(top_k), "0", 0, BIG, 0, "--sample: draw from the k likeliest tokens only (0: from all)" },
    { "samples", OPT_INT, KIND_RUN, OFF(samples), "1", 1, 1 << 20, 0, "--sample: how many continuations" },
};
#pragma GCC diagnostic pop
#undef OFF
#undef BIG
enum { NUM_OPTIONS = sizeof(options) / sizeof(options[0]) };
static Options opt;
static int option_given[NUM_OPTIONS]; // set on the command line
static int opt_ready;                 // opt holds at least the defaults

static size_t options_size(void) { return sizeof(Options); }
static const Config *options_config(const Options *v) { return &v->cfg; }

static int option_fail(char *why, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
    return -1;
}

// the shortest text that reads back as exactly x
static void format_real(char *buf, size_t n, double x) {
    for (int digits = 1; digits <= 17; digits++) {
        snprintf(buf, n, "%.*g", digits, x);
        if (strtod(buf, NULL) == x) return;
    }
}

static int parse_list(const char *text, int *out, int count, double lo, double hi, char *why, size_t n) {
    int k = 0;
    for (const char *p = text; *p; k++) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || (*end && *end != ',') || k >= count || v < lo || v > hi)
            return option_fail(why, n, "is not a list of up to %d integers in %.0f..%.0f", count, lo, hi);
        out[k] = (int)v;
        p = *end ? end + 1 : end;
        if (*end && !*p) return option_fail(why, n, "ends with a comma");
    }
    for (int j = k; j < count; j++) out[j] = 0;
    return 0;
}

// Parses text as option o's value into v. Returns 0, or -1 with the reason in why.
static int option_parse(const Option *o, Options *v, const char *text, char *why, size_t n) {
    void *p = (char *)v + o->offset;
    char *end;
    errno = 0;
    switch (o->type) {
    case OPT_INT: case OPT_LONG: {
        long x = strtol(text, &end, 10);
        if (!*text || *end || errno) return option_fail(why, n, "is not an integer");
        if (o->type == OPT_LONG) { *(long *)p = x; return 0; }
        int unset = x == 0 && !strcmp(o->def, "0"); // (the table's rule for lo, hi)
        if ((x < o->lo || x > o->hi) && !unset) return option_fail(why, n, "must be in %.0f..%.0f", o->lo, o->hi);
        *(int *)p = (int)x;
        return 0;
    }
    case OPT_REAL: {
        double x = strtod(text, &end);
        if (!*text || *end || isnan(x)) return option_fail(why, n, "is not a number");
        if (!(fabs(x) <= FLT_MAX)) return option_fail(why, n, "is out of the range of a float (|x| <= %g)", FLT_MAX);
        if (x != 0 && fabs(x) < FLT_MIN) return option_fail(why, n, "is too small for a float (0, or |x| >= %g)", FLT_MIN);
        if (o->lo == FLT_MIN && !(x > 0)) return option_fail(why, n, "must be positive");
        if (x < o->lo) return option_fail(why, n, o->lo ? "must be at least %g" : "must not be negative", o->lo);
        if (x > o->hi) return option_fail(why, n, "must be at most %g", o->hi);
        *(double *)p = x;
        return 0;
    }
    case OPT_STRING:
        if (strlen(text) >= TEXT_MAX) return option_fail(why, n, "is too long (at most %d characters)", TEXT_MAX - 1);
        if (strchr(text, '\n')) return option_fail(why, n, "contains a newline");
        memcpy(p, text, strlen(text) + 1);
        return 0;
    case OPT_FLAG:
        if (strcmp(text, "0") && strcmp(text, "1")) return option_fail(why, n, "is not 0 or 1");
        *(int *)p = text[0] == '1';
        return 0;
    case OPT_ARCH:
        for (int k = 0; k < ARCH_COUNT; k++) if (!strcmp(text, arch_names[k])) { *(Arch *)p = (Arch)k; return 0; }
        return option_fail(why, n, "unknown value (transformer | gated | titans | hope)");
    case OPT_TAPER: {
        Config *c = &v->cfg;
        if (!strncmp(text, "groups:", 7)) {
            const char *q = text + 7;
            int k = 0;
            while (*q) {
                double x = strtod(q, &end);
                if (end == q || (*end && *end != ',') || !(x > 0) || !(x <= FLT_MAX) || k >= MAX_LAYERS)
                    return option_fail(why, n, "is not groups: and up to %d positive numbers, e.g. groups:1.5,1,0.5", MAX_LAYERS);
                c->taper_group[k++] = x;
                q = *end ? end + 1 : end;
                if (*end && !*q) return option_fail(why, n, "ends with a comma");
            }
            if (!k) return option_fail(why, n, "gives no groups (e.g. groups:1.5,1,0.5)");
            c->taper = TAPER_GROUPS;
            c->taper_groups = k;
            return 0;
        }
        for (int k = 0; k < TAPER_COUNT; k++)
            if (k != TAPER_GROUPS && !strcmp(text, taper_names[k])) { c->taper = (Taper)k; c->taper_groups = 0; return 0; }
        return option_fail(why, n, "unknown value (uniform | cosine | linear | sigmoid | reverse | groups:v0,v1,..)");
    }
    case OPT_LIST:
        return parse_list(text, (int *)p, o->count, o->lo, o->hi, why, n);
    }
    return -1;
}

// Option o's value in v as text that option_parse reads back to the same value.
static void option_format(const Option *o, const Options *v, char *buf, size_t n) {
    const void *p = (const char *)v + o->offset;
    buf[0] = 0;
    switch (o->type) {
    case OPT_INT:    snprintf(buf, n, "%d", *(const int *)p); break;
    case OPT_LONG:   snprintf(buf, n, "%ld", *(const long *)p); break;
    case OPT_REAL:   format_real(buf, n, *(const double *)p); break;
    case OPT_STRING: snprintf(buf, n, "%s", (const char *)p); break;
    case OPT_FLAG:   snprintf(buf, n, "%d", *(const int *)p); break;
    case OPT_ARCH:   snprintf(buf, n, "%s", arch_names[*(const Arch *)p]); break;
    case OPT_TAPER: {
        const Config *c = &v->cfg;
        snprintf(buf, n, "%s", taper_names[c->taper]);
        if (c->taper != TAPER_GROUPS) break;
        for (int k = 0; k < c->taper_groups; k++) {
            size_t len = strlen(buf);
            buf[len++] = k ? ',' : ':';
            format_real(buf + len, n - len, c->taper_group[k]);
        }
        break;
    }
    case OPT_LIST:
        for (int k = 0; k < o->count && ((const int *)p)[k] > 0; k++)
            snprintf(buf + strlen(buf), n - strlen(buf), "%s%d", k ? "," : "", ((const int *)p)[k]);
        break;
    }
}

static const Option *option_named(const char *name) {
    for (int k = 0; k < NUM_OPTIONS; k++) if (!strcmp(options[k].name, name)) return &options[k];
    return NULL;
}
// whether the command line gave the option whose value lives at field, a member of opt
static int given(const void *field) {
    for (int k = 0; k < NUM_OPTIONS; k++)
        if ((const char *)&opt + options[k].offset == (const char *)field) return option_given[k];
    return 0;
}

// An option whose default names another ("--seed") takes that option's value, unless keep[k]
// (keep NULL: every such option).
static void options_follow(Options *v, const int *keep) {
    char value[TEXT_MAX], why[256];
    for (int k = 0; k < NUM_OPTIONS; k++) {
        const Option *o = &options[k];
        const Option *from = !strncmp(o->def, "--", 2) ? option_named(o->def + 2) : NULL;
        if (!from || (keep && keep[k])) continue;
        option_format(from, v, value, sizeof(value));
        if (option_parse(o, v, value, why, sizeof(why)))
            die("--%s: --%s's value '%s' %s", o->name, from->name, value, why);
    }
}

static void options_default(Options *v) {
    memset(v, 0, sizeof(*v));
    char why[256];
    for (int k = 0; k < NUM_OPTIONS; k++) {
        if (!strncmp(options[k].def, "--", 2)) { // (options_follow, below)
            if (!option_named(options[k].def + 2))
                die("option table: --%s's default %s is no option", options[k].name,
                    options[k].def);
            continue;
        }
        if (option_parse(&options[k], v, options[k].def, why, sizeof(why)))
            die("option table: the default of --%s '%s' %s", options[k].name, options[k].def, why);
    }
    options_follow(v, NULL);
}

// The checkpoint's option area: `name=value` lines of every stored option, the model options
// from cfg (the model as built), the training options from opt.
static size_t options_to_text(char *buf, size_t n, const Config *cfg) {
    if (!opt_ready) { options_default(&opt); opt_ready = 1; }
    Options *v = xcalloc(1, sizeof(Options), "options");
    *v = opt;
    v->cfg = *cfg;
    size_t len = 0;
    char value[TEXT_MAX];
    for (int k = 0; k < NUM_OPTIONS; k++) {
        if (options[k].kind == KIND_RUN) continue;
        option_format(&options[k], v, value, sizeof(value));
        int w = snprintf(buf + len, n - len, "%s=%s\n", options[k].name, value);
        if (w < 0 || (size_t)w >= n - len) die("checkpoint: the options do not fit in %zu bytes", n);
        len += (size_t)w;
    }
    free(v);
    memset(buf + len, 0, n - len < 4 ? n - len : 4);
    return len;
}

// named[k] (if not NULL) is set for every option the text names
static void options_from_text(Options *saved, const char *text, const char *path, int *named) {
    char line[TEXT_MAX + 64], why[256];
    for (const char *p = text; *p; ) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (len >= sizeof(line)) die("%s: an option line of the checkpoint is too long", path);
        memcpy(line, p, len);
        line[len] = 0;
        p += len + (nl ? 1 : 0);
        char *eq = strchr(line, '=');
        if (!eq) die("%s: the checkpoint's option area is corrupt ('%.40s')", path, line);
        *eq = 0;
        const Option *o = option_named(line);
        if (!o || o->kind == KIND_RUN) die("%s: the checkpoint stores an unknown option '%.40s' (from a newer train_tlm?)", path, line);
        if (option_parse(o, saved, eq + 1, why, sizeof(why))) die("%s: the checkpoint's --%s '%.40s' %s", path, o->name, eq + 1, why);
        if (named) named[o - options] = 1;
    }
}

static void usage(FILE *out) {
    fprintf(out, "usage: ./train_tlm [options]\n"
                 "Trains a (tapered) language model; with no options a small cosine-tapered Transformer\n"
                 "on the Brown Corpus as bytes, data/brown_byte_*.bin (make data). With --load, the model\n"
                 "options must match the checkpoint and the training options not given are restored.\n"
                 "Options (default in brackets; a default that names an option is its value):\n");
    for (int i = 0; i < NUM_OPTIONS; i++) {
        const Option *o = &options[i];
        char name[40];
        snprintf(name, sizeof(name), "--%s%s", o->name, o->type == OPT_FLAG ? "" : " X");
        const char *def = o->type == OPT_FLAG ? "off" : o->def;
        fprintf(out, "  %-22s %s%s%s%s\n", name, o->help, def[0] ? " [" : "", def, def[0] ? "]" : "");
    }
    fprintf(out, "  %-22s %s\n", "-h, --help", "show this help");
}

// A command line that cannot be run: one line and the pointer to -h, exit status 2.
static void usage_error(const char *fmt, ...) {
    char msg[4 * TEXT_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (world.rank == 0) // (every rank parses the same command line)
        fprintf(stderr, "error: %s\n(run ./train_tlm --help for the options)\n", msg);
    ranks_end();
    exit(2);
}

// Fills opt from the defaults and the command line; returns 1 if help was asked for.
static int parse_args(int argc, char **argv) {
    options_default(&opt);
    opt_ready = 1;
    for (int k = 0; k < NUM_OPTIONS; k++) option_given[k] = 0;
    char why[256];
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) return 1;
        if (strncmp(arg, "--", 2) != 0) usage_error("unexpected argument '%s'", arg);
        char name[64];
        const char *eq = strchr(arg + 2, '='), *value = NULL;
        size_t len = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
        if (len >= sizeof(name)) usage_error("unknown option '%s'", arg);
        memcpy(name, arg + 2, len);
        name[len] = 0;
        const Option *o = option_named(name);
        if (!o) usage_error("unknown option '--%s'", name);
        if (o->type == OPT_FLAG) {
            if (eq) usage_error("--%s takes no value", name);
            value = "1";
        } else if (eq) value = eq + 1;
        else if (i + 1 < argc) value = argv[++i];
        else usage_error("--%s needs a value", name);
        if (!*value) usage_error("--%s: the value is empty", name);
        if (option_parse(o, &opt, value, why, sizeof(why))) usage_error("--%s: '%s' %s", name, value, why);
        option_given[o - options] = 1;
    }
    options_follow(&opt, option_given);
    Config *c = &opt.cfg;
    if (c->widths_given[0]) {
        if (given(&c->taper) && c->taper != TAPER_EXPLICIT)
            usage_error("--mlp-widths gives the widths: drop --taper %s", taper_names[c->taper]);
        c->taper = TAPER_EXPLICIT;
    }
    if ((opt.eval_only || opt.analyze) && !opt.load[0]) usage_error("--eval-only and --analyze need --load");
    if (opt.save[0] && strlen(opt.save) + 5 > TEXT_MAX - 1)
        usage_error("--save: the path is too long (at most %d characters, for its .tmp)", TEXT_MAX - 6);
    if (opt.sample && !opt.load[0]) usage_error("--sample needs --load, the checkpoint to sample from");
    if (opt.sample + opt.eval_only + opt.analyze > 1) usage_error("--sample, --eval-only and --analyze are separate runs: give one");
    if (!opt.sample && (opt.prompt[0] || opt.temperature != 1 || opt.top_k || opt.samples != 1))
        usage_error("--prompt, --temperature, --top-k and --samples go with --sample");
    return 0;
}

// --- logging -----------------------------------------------------------------------------
// Every record is flushed and checked: the first failed write is kept in log_error (an errno),
// and training stops cleanly at the next step (should_stop).
static FILE *log_file;
static int log_error;
static void log_json(const char *fmt, ...) {
    if (!log_file || log_error) return;
    va_list ap;
    va_start(ap, fmt);
    errno = 0;
    vfprintf(log_file, fmt, ap);
    va_end(ap);
    fputc('\n', log_file);
    if (fflush(log_file) != 0 || ferror(log_file)) log_error = errno ? errno : EIO;
}

// s as a JSON string, quotes included
static void json_string(char *out, size_t n, const char *s) {
    size_t k = 0;
    if (n < 3) return;
    out[k++] = '"';
    for (; *s && k + 8 < n; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') { out[k++] = '\\'; out[k++] = (char)ch; }
        else if (ch < 32) k += (size_t)snprintf(out + k, n - k, "\\u%04x", ch);
        else out[k++] = (char)ch;
    }
    out[k++] = '"';
    out[k] = 0;
}

static void print_layer_table(const Model *m) {
    const Config *c = &m->cfg;
    size_t mixer[MAX_LAYERS] = {0}, mlp[MAX_LAYERS] = {0}, other = 0;
    for (int i = 0; i < m->table.count; i++) {
        const ParamTensor *t = &m->table.tensor[i];
        if (t->layer < 0) other += t->size;
        else if (t->is_mlp) mlp[t->layer] += t->size;
        else mixer[t->layer] += t->size;
    }
    printf("%s, %d layers, dim %d, %d heads, vocab %d, seq %d; MLP taper %s %.2g -> %.2g of H = %d\n",
           arch_names[c->arch], c->layers, c->dim, c->heads, c->vocab, c->seq_len, taper_names[c->taper],
           c->taper == TAPER_UNIFORM ? 1.0 : c->taper_start, c->taper == TAPER_UNIFORM ? 1.0 : c->taper_end, c->mlp_width);
    printf("  layer  mlp width%s   mixer params    mlp params  bar\n", c->arch == ARCH_HOPE && c->cms_levels > 1 ? "  fast width" : "");
    int maxw = 0;
    for (int l = 0; l < c->layers; l++) if (c->mlp_widths[l] > maxw) maxw = c->mlp_widths[l];
    for (int l = 0; l < c->layers; l++) {
        char bar[41];
        int n = (int)(40.0 * c->mlp_widths[l] / maxw + 0.5);
        memset(bar, '#', n);
        bar[n] = 0;
        printf("  %5d  %9d", l, c->mlp_widths[l]);
        if (c->arch == ARCH_HOPE && c->cms_levels > 1) printf("  %10d", c->cms_widths[l]);
        printf("  %13zu  %12zu  %s\n", mixer[l], mlp[l], bar);
    }
    printf("  embedding, final norm%s: %zu\n", c->untied ? ", head" : "", other);
    printf("  total parameters: %zu\n", m->num_params);
}

// Ctrl-C and `kill PID` (SIGINT, SIGTERM) set a flag: the step in progress finishes, the run saves
// and stops. sigaction, so the handler stays installed and a second signal is only a second flag
// (signal() here would give System V semantics: reset to the default, and kill the save). SIGPIPE
// is ignored: a failed write to stdout (`| tee` gone) is an interruption too (should_stop).
static volatile sig_atomic_t interrupted;
static void on_interrupt(int sig) { interrupted = sig; }
static void ignore_sigpipe(void) { // (main, before anything is printed)
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGPIPE, &sa, NULL);
}
static void install_signal_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_interrupt;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    ignore_sigpipe();
}
// why training must stop now: a signal, stdout that cannot be written, or the log
static int should_stop(void) {
    return interrupted || ferror(stdout) || log_error;
}
// ... on any rank: every rank asks at the same points, so all stop after the same step
static int ranks_should_stop(void) { return ranks_max(should_stop()); }

// --- paths that must not be written ---------------------------------------------------------
static int same_file(const char *a, const char *b) {
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}
// dies if path is one of the input files (the shards, the tokenizer, except `allowed`)
static void refuse_input(const char *flag, const char *path, const DataLoader *train, const DataLoader *val,
                         const char *allowed) {
    const DataLoader *d[2] = { train, val };
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < d[k]->count; i++)
            if (same_file(path, d[k]->paths[i])) die("%s %s is the %s shard %s: refusing to write over it", flag, path, k ? "--val" : "--train", d[k]->paths[i]);
    if (opt.tokenizer[0] && same_file(path, opt.tokenizer)) die("%s %s is the --tokenizer: refusing to write over it", flag, path);
    if (opt.load[0] && same_file(path, opt.load) && (!allowed || strcmp(allowed, opt.load)))
        die("%s %s is the --load checkpoint: refusing to write over it", flag, path);
}
// --save: checked before the first step, so that a bad path costs no training time
static void check_save_path(const char *path, const DataLoader *train, const DataLoader *val) {
    struct stat st;
    char dir[TEXT_MAX], tmp[TEXT_MAX + 8];
    if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode))
        die("--save %s is %s, not a checkpoint file: refusing to replace it", path,
            S_ISDIR(st.st_mode) ? "a directory" : S_ISFIFO(st.st_mode) ? "a FIFO" : S_ISSOCK(st.st_mode) ? "a socket" : "a device");
    path_directory(dir, sizeof(dir), path);
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) die("--save %s: no directory %s", path, dir);
    if (access(dir, W_OK | X_OK) != 0) die("--save %s: directory %s is not writable: %s", path, dir, strerror(errno));
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    if (lstat(tmp, &st) == 0 && S_ISDIR(st.st_mode)) die("--save %s: %s is a directory", path, tmp);
    refuse_input("--save", path, train, val, path);
}

static void default_tokenizer_path(char *out, size_t n, const char *train, int vocab) {
    const char *slash = strrchr(train, '/');
    int dirlen = slash ? (int)(slash - train + 1) : 0;
    snprintf(out, n, "%.*s%s_tokenizer.bin", dirlen, train, vocab == 256 ? "byte" : "gpt2");
}

// --- the run: build, then evaluate, analyze or train --------------------------------------

// With --load: the checkpoint's options. A model option given on the command line must agree
// with the checkpoint (else a one-line error); the model is the checkpoint's. A training option
// not given is restored (the checkpoint stores them), one given overrides it, said once
// when it changes the training: not for --eval-only, --analyze, --sample (nothing is trained),
// nor for a QUIET option (what the run prints). A file that lacks a NEEDED option cannot be
// trained from.
static void apply_checkpoint_options(const Checkpoint *ck, const int *stored) {
    const Options *saved = ck->saved;
    int keep[NUM_OPTIONS];
    int training = !opt.eval_only && !opt.analyze && !opt.sample;
    for (int k = 0; k < NUM_OPTIONS; k++)
        if (training && (options[k].flags & NEEDED) && !stored[k])
            die("%s: written before --%s (its options have none), which training from it needs: "
                "it cannot resume (--eval-only, --analyze and --sample still read it)", opt.load,
                options[k].name);
    char mine[TEXT_MAX], theirs[TEXT_MAX], why[256];
    for (int k = 0; k < NUM_OPTIONS; k++) {
        const Option *o = &options[k];
        if (o->kind == KIND_RUN) continue;
        option_format(o, &opt, mine, sizeof(mine));
        option_format(o, saved, theirs, sizeof(theirs));
        int same = !strcmp(mine, theirs);
        if (o->kind == KIND_MODEL) {
            if (option_given[k] && !same)
                die("%s: checkpoint was made with a different --%s (%s there, %s here); drop the flag or start a new run",
                    opt.load, o->name, theirs, mine);
        } else if (!option_given[k]) {
            if (option_parse(o, &opt, theirs, why, sizeof(why))) die("%s: --%s '%s' %s", opt.load, o->name, theirs, why);
        } else if (!same && training && !(o->flags & QUIET)) {
            printf("--%s %s overrides the checkpoint's %s\n", o->name, mine, theirs);
        }
    }
    for (int k = 0; k < NUM_OPTIONS; k++) keep[k] = option_given[k] || stored[k];
    options_follow(&opt, keep); // (an option the file lacks follows the one its default names)
    opt.cfg = saved->cfg;
    if (training)
        ranks_check_resume(opt.load, ck->h[H_RANKS], saved->batch, saved->grad_accum, opt.batch,
                           &opt.grad_accum, given(&opt.grad_accum));
}

// The vocabulary: --vocab (or the checkpoint's), else the shards' headers, else 50257. The train
// and val shards must agree with each other, and with --vocab unless it is larger (then a note).
static void settle_vocab(Config *cfg, const DataLoader *train, const DataLoader *val) {
    int vt = train->count ? dataloader_vocab(train) : 0, vv = dataloader_vocab(val);
    if (vt && vv && vt != vv)
        die("--train %s has vocabulary %d in its header, --val %s has %d: they must be the same tokenization",
            train->paths[0], vt, val->paths[0], vv);
    int shards = vt ? vt : vv;
    const char *src = opt.load[0] ? "the checkpoint's" : "--vocab";
    if (!cfg->vocab) cfg->vocab = shards ? shards : 50257;
    else if (shards && cfg->vocab < shards)
        die("%s vocabulary %d is smaller than the shards' %d (%s)", src, cfg->vocab, shards, vt ? train->paths[0] : val->paths[0]);
    else if (shards && cfg->vocab > shards)
        printf("note: %s vocabulary %d is larger than the shards' %d: the extra tokens are never seen\n", src, cfg->vocab, shards);
}

// The model the command line asks for: with --load, the checkpoint's (apply_checkpoint_options)
// and its weights; else a new one, initialised from --seed. Opens the data (train only when
// training, none for --sample), which fixes the vocabulary when --vocab does not, and checks the
// output paths.
static Model *build_model(DataLoader *train, DataLoader *val, DataPosition *resume_at) {
    Config *cfg = &opt.cfg;
    // --load: the checkpoint opened once; its parameters are read below through the same descriptor
    int stored[NUM_OPTIONS] = { 0 };
    Checkpoint *ck = opt.load[0] ? checkpoint_open(opt.load, stored) : NULL;
    if (ck) apply_checkpoint_options(ck, stored);
    int training = !opt.eval_only && !opt.analyze && !opt.sample;
    if (training) dataloader_open(train, opt.train, "--train");
    if (!opt.sample) {
        dataloader_open(val, opt.val, "--val");
        settle_vocab(cfg, train, val);
    }
    if (cfg->match_params && !opt.load[0]) {
        int before = cfg->mlp_width;
        match_params(cfg);
        printf("--match-params: mean MLP width %d -> %d, for the parameters of a transformer of the same shape\n", before, cfg->mlp_width);
    }
    train->vocab = val->vocab = cfg->vocab;
    train->seed = (uint64_t)opt.data_seed;
    long have = val_batches(val, opt.batch, cfg->seq_len);
    const int *asked[2] = { &opt.eval_batches, &opt.final_eval_batches };
    const char *flag[2] = { "--eval-batches", "--final-eval-batches" };
    for (int k = 0; k < (training ? 2 : 1); k++)
        if (have > 0 && *asked[k] > have)
            printf("note: %s %d is more than --val holds (%ld batches of %dx%d): using %ld\n",
                   flag[k], *asked[k], have, opt.batch, cfg->seq_len, have);
    if (training && opt.save[0]) check_save_path(opt.save, train, val);
    if (opt.log[0]) {
        refuse_input("--log", opt.log, train, val, NULL);
        if (opt.save[0] && same_file(opt.log, opt.save)) die("--log %s is the --save checkpoint", opt.log);
    }
    Model *m = model_create(cfg, opt.sample ? 1 : opt.batch, cfg->seq_len);
    if (ck) {
        checkpoint_load(ck, m, resume_at);
        checkpoint_close(ck);
        fprintf(opt.sample ? stderr : stdout, "loaded %s (step %d)\n", opt.load, m->step);
    } else {
        init_params(m, (uint64_t)opt.seed);
    }
    if (opt.sample) return m; // stdout holds the samples only
    print_layer_table(m);
    printf("threads: %d\n", num_threads());
    if (world.ranks > 1)
        printf("ranks: %d; global batch %d ranks x %d sequences x %d micro-batches = %lld sequences of %d tokens\n",
               world.ranks, world.ranks, opt.batch, opt.grad_accum, (long long)world.ranks * opt.batch * opt.grad_accum, cfg->seq_len);
    return m;
}

// --log: open the JSONL log and write the run's config record: every stored option of the table
// (the model's as built), then the widths, the parameter count and the threads
static void open_log(const Model *m) {
    if (!opt.log[0] || world.rank > 0) return;
    const Config *cfg = &m->cfg;
    log_file = fopen(opt.log, "a");
    if (!log_file) die("--log %s: cannot open: %s", opt.log, strerror(errno));
    Options *v = xcalloc(1, sizeof(Options), "options");
    *v = opt;
    v->cfg = *cfg;
    size_t n = 16 * TEXT_MAX, len = 0;
    char *rec = xcalloc(n, 1, "log"), value[TEXT_MAX], text[2 * TEXT_MAX];
    len += (size_t)snprintf(rec + len, n - len, "{\"event\":\"config\"");
    for (int k = 0; k < NUM_OPTIONS; k++) {
        const Option *o = &options[k];
        if (o->kind == KIND_RUN) continue;
        Option row = *o;
        if (o->log_from) row.offset = o->log_from;
        option_format(&row, v, value, sizeof(value));
        char key[64];
        snprintf(key, sizeof(key), "%s", o->name);
        for (char *q = key; *q; q++) if (*q == '-') *q = '_';
        if (o->type == OPT_STRING || o->type == OPT_ARCH || o->type == OPT_TAPER) json_string(text, sizeof(text), value);
        else if (o->type == OPT_LIST) snprintf(text, sizeof(text), "[%s]", value);
        else snprintf(text, sizeof(text), "%s", value);
        len += (size_t)snprintf(rec + len, n - len, ",\"%s\":%s", key, text);
    }
    char cms[MAX_LAYERS * 8] = "";
    for (int l = 0; l < cfg->layers; l++)
        snprintf(cms + strlen(cms), sizeof(cms) - strlen(cms), "%s%d", l ? "," : "", cfg->cms_widths[l]);
    snprintf(rec + len, n - len, ",\"cms_widths\":[%s],\"params\":%zu,\"threads\":%d,\"resumed_step\":%d}",
             cms, m->num_params, num_threads(), m->step);
    if (world.ranks > 1) snprintf(rec + strlen(rec) - 1, n - strlen(rec) + 1, ",\"ranks\":%d}", world.ranks);
    log_json("%s", rec);
    free(rec);
    free(v);
    if (log_error) die("--log %s: cannot write: %s", opt.log, strerror(log_error));
}

// --eval-only: the validation loss
static int run_evaluate(Model *m, DataLoader *val) {
    int B = opt.batch, T = m->cfg.seq_len;
    long n;
    double loss = evaluate(m, val, opt.eval_batches, B, T, &n);
    printf("val loss %.4f | perplexity %.2f | %ld batches of %dx%d\n", loss, exp(loss), n, B, T);
    log_json("{\"event\":\"val\",\"step\":%d,\"loss\":%.6f,\"ppl\":%.4f,\"batches\":%ld}", m->step,
             loss, exp(loss), n);
    return 0;
}

// --analyze: what each layer contributes (analyze_layers)
static int run_analyze(Model *m, DataLoader *val) {
    const Config *cfg = &m->cfg;
    LayerStats stats[MAX_LAYERS];
    double base;
    analyze_layers(m, val, opt.eval_batches, opt.batch, cfg->seq_len, stats, &base);
    printf("layer contribution analysis on %ld val batches (val loss %.4f)\n",
           eval_count(opt.eval_batches, val_batches(val, opt.batch, cfg->seq_len)), base);
    printf("  layer  mlp width  |dx|/|x| mixer  |dx|/|x| mlp  |dx|/|x|  cos(x, x')  cos(mlp, resid)  dloss skip mlp"
           "  dloss skip layer\n");
    for (int l = 0; l < cfg->layers; l++) {
        printf("  %5d  %9d  %14.4f  %12.4f  %8.4f  %10.4f  %15.4f  %14.4f  %16.4f\n", l, cfg->mlp_widths[l],
               stats[l].rel_mixer, stats[l].rel_mlp, stats[l].rel, stats[l].cos_sim, stats[l].cos_mlp_residual,
               stats[l].dloss_skip_mlp, stats[l].dloss_skip_layer);
        log_json("{\"event\":\"analysis\",\"layer\":%d,\"mlp_width\":%d,\"rel_update_mixer\":%.6f,"
                 "\"rel_update_mlp\":%.6f,\"rel_update\":%.6f,\"cos_sim\":%.6f,\"cos_mlp_residual\":%.6f,"
                 "\"dloss_skip_mlp\":%.6f,\"dloss_skip_layer\":%.6f}", l, cfg->mlp_widths[l], stats[l].rel_mixer,
                 stats[l].rel_mlp, stats[l].rel, stats[l].cos_sim, stats[l].cos_mlp_residual,
                 stats[l].dloss_skip_mlp, stats[l].dloss_skip_layer);
    }
    log_json("{\"event\":\"done\",\"step\":%d,\"val_loss\":%.6f,\"seconds\":0}", m->step, base);
    return 0;
}

// --sample: the prompt's tokens, as the model was trained on them, into *tokens (room for
// sample_len more); returns how many. Byte models (vocabulary <= 256): the prompt's UTF-8 bytes
// (a newline, the byte data's document separator, when there is no prompt). Larger vocabularies:
// <|endoftext|>, which training puts before every document, then the prompt in BPE with the
// encoder file beside the tokenizer (data/gpt2_tokenizer.bin -> data/gpt2_encoder.bin).
static int encode_prompt(int **tokens, Tokenizer *tk, int V) {
    const char *prompt = opt.prompt;
    int len = (int)strlen(prompt), n = 0;
    char tk_path[4096];
    if (opt.tokenizer[0]) snprintf(tk_path, sizeof(tk_path), "%s", opt.tokenizer);
    else default_tokenizer_path(tk_path, sizeof(tk_path), opt.train, V);
    if ((V < 256 && !opt.tokenizer[0]) || tokenizer_load(tk, tk_path, V) != 0) { // (no default below 256)
        if (opt.tokenizer[0]) die("--tokenizer %s: cannot open: %s", opt.tokenizer, strerror(errno));
        if (V > 256) die("%s: no tokenizer for the model's vocabulary of %d (run `python3 dev/prepare_data.py "
                         "--tokenizer-only` for GPT-2's, or give --tokenizer)", tk_path, V);
        tk->vocab = V; // bytes print as themselves (print_token)
        tk->eot = '\n';
    }
    if (V <= 256) {
        *tokens = xcalloc(len + 1 + opt.sample_len, sizeof(int), "prompt");
        for (int i = 0; i < len; i++) {
            unsigned char b = (unsigned char)prompt[i];
            if (b >= V) die("--prompt: byte 0x%02x at offset %d is outside the model's vocabulary of %d tokens", b, i, V);
            (*tokens)[n++] = b;
        }
        if (!n) (*tokens)[n++] = tk->eot < V ? tk->eot : 0;
        return n;
    }
    int count = 0, invalid = 0;
    Encoder enc = {0};
    if (len) {
        char enc_path[4096];
        size_t k = strlen(tk_path), suffix = strlen("tokenizer.bin");
        if (k < suffix || strcmp(tk_path + k - suffix, "tokenizer.bin"))
            die("%s: the encoder file for --prompt is looked for beside a tokenizer named *tokenizer.bin "
                "(as *encoder.bin)", tk_path);
        snprintf(enc_path, sizeof(enc_path), "%.*sencoder.bin", (int)(k - suffix), tk_path);
        if (encoder_load(&enc, enc_path, tk) != 0)
            die("%s: no BPE encoder file to encode --prompt with (`python3 dev/prepare_data.py "
                "--tokenizer-only` writes data/gpt2_encoder.bin)", enc_path);
        count = encoder_encode(&enc, prompt, len, NULL, 0, NULL);
    }
    *tokens = xcalloc((size_t)count + 1 + opt.sample_len, sizeof(int), "prompt");
    (*tokens)[n++] = tk->eot;
    if (len) n += encoder_encode(&enc, prompt, len, *tokens + 1, count, &invalid);
    encoder_free(&enc);
    if (invalid) fprintf(stderr, "note: --prompt: %d bytes are not UTF-8, read as U+FFFD\n", invalid);
    for (int i = 0; i < n; i++)
        if ((*tokens)[i] < 0 || (*tokens)[i] >= V)
            die("--prompt: token %d at position %d is outside the model's vocabulary of %d", (*tokens)[i], i, V);
    return n;
}

// --sample: --samples continuations of --prompt, each printed after the prompt; one random
// stream from --seed, so the same seed gives the same text.
static int run_sample(Model *m) {
    int T = m->cfg.seq_len, V = m->cfg.vocab, *tokens, len = opt.sample_len;
    Tokenizer tk = {0};
    int n = encode_prompt(&tokens, &tk, V);
    if (n + len > T)
        fprintf(stderr, "note: the prompt and sample (%d tokens) are longer than the model's seq-len %d: "
                "each token is predicted from the last %d\n", n + len, T, T);
    Rng rng = rng_seeded((uint64_t)opt.seed);
    double t0 = wall_time();
    for (int s = 0; s < opt.samples; s++) {
        if (s) printf("---\n");
        fputs(opt.prompt, stdout);
        generate(m, tokens, n, len, opt.temperature, opt.top_k, &rng, &tk);
        printf("\n");
    }
    double seconds = wall_time() - t0;
    fprintf(stderr, "%d x %d tokens after %d of prompt in %.2f s: %.1f tokens/s (%d threads)\n", opt.samples, len, n,
            seconds, opt.samples * len / seconds, num_threads());
    tokenizer_free(&tk);
    free(tokens);
    return 0;
}

// An evaluation during training (of `batches`, as evaluate() picks them), printed and logged
static double validate(Model *m, DataLoader *val, int batches, size_t tokens_per_step) {
    long n;
    double loss = evaluate(m, val, batches, opt.batch, m->cfg.seq_len, &n);
    printf("step %5d | val loss %.4f | perplexity %.2f\n", m->step, loss, exp(loss));
    log_json("{\"event\":\"val\",\"step\":%d,\"loss\":%.6f,\"ppl\":%.4f,\"tokens\":%zu,"
             "\"batches\":%ld}", m->step, loss, exp(loss), m->step * tokens_per_step, n);
    return loss;
}

// Training: from step m->step to --steps, evaluating, sampling and saving along the way; Ctrl-C
// or SIGTERM finishes the step, saves and stops. Returns the exit status.
static int run_train(Model *m, DataLoader *train, DataLoader *val, DataPosition resume_at) {
    const Config *cfg = &m->cfg;
    int B = opt.batch, T = cfg->seq_len, rc = 0;
    Tokenizer tk = {0};
    char tk_path[4096];
    if (opt.tokenizer[0]) snprintf(tk_path, sizeof(tk_path), "%s", opt.tokenizer);
    else default_tokenizer_path(tk_path, sizeof(tk_path), opt.train, cfg->vocab);
    if (opt.sample_every && tokenizer_load(&tk, tk_path, cfg->vocab) != 0) {
        if (opt.tokenizer[0]) die("--tokenizer %s: cannot open: %s", opt.tokenizer, strerror(errno));
        printf("note: no tokenizer at %s, samples print %s\n", tk_path, cfg->vocab == 256 ? "bytes" : "token ids");
        tk.vocab = cfg->vocab;
        tk.eot = cfg->vocab == 256 ? '\n' : 0;
    }
    if (opt.load[0]) dataloader_seek(train, resume_at, T);

    AdamW adam = { (float)opt.lr, 0.9f, 0.95f, 1e-8f, (float)opt.weight_decay, (float)opt.grad_clip };
    int decay_steps = opt.decay_steps ? opt.decay_steps : opt.steps;
    int save_every = opt.save_every ? opt.save_every : opt.eval_every;
    size_t tokens_per_step = (size_t)B * T * opt.grad_accum * world.ranks;
    install_signal_handlers(); // Ctrl-C, `kill PID`, a closed stdout: finish the step, save, exit
    double t_start = wall_time(), t_train = 0, last_val = NAN;
    int steps_timed = 0, save_failed = 0, saved_at = -1;
    if (opt.load[0] && m->step >= opt.steps)
        printf("nothing left to train: %s is at step %d, --steps is %d (raise --steps to train further)\n", opt.load, m->step, opt.steps);
    // the starting point; of a finished run (also --steps 0) the evaluation after its last step
    int finished = m->step >= opt.steps;
    last_val = validate(m, val, finished ? opt.final_eval_batches : opt.eval_batches,
                        tokens_per_step);
    while (m->step < opt.steps && !ranks_should_stop()) {
        int step = m->step; // steps taken so far; this is step + 1
        double t0 = wall_time();
        float lr = learning_rate(step, adam.lr, opt.warmup, decay_steps);
        double norm, loss = train_step(m, train, &adam, lr, opt.grad_accum, B, T, &norm);
        if (!isfinite(loss) || !isfinite(norm)) {
            // stop before anything is saved: the last checkpoint on disk stays the last good one
            if (world.rank == 0) fprintf(stderr, "error: step %d: loss %g, gradient norm %g is not finite; stopping (no checkpoint written)\n", step + 1, loss, norm);
            log_json("{\"event\":\"error\",\"step\":%d,\"message\":\"non-finite loss or gradient\"}", step + 1);
            tokenizer_free(&tk);
            return 1;
        }
        // adamw_step flagged it as it wrote; the pass over the model only to name the tensor
        const char *moment = "";
        const ParamTensor *bad = m->update_not_finite ? nonfinite_tensor(m, &moment) : NULL;
        if (m->update_not_finite && !bad) die("step %d: the update wrote a value that is not finite", step + 1);
        if (bad) {
            // stop before anything is saved: the last checkpoint on disk stays the last good one
            if (world.rank == 0) fprintf(stderr, "error: step %d: the update made the %s of %s not finite (lr %g); stopping (no checkpoint written)\n",
                    step + 1, moment, bad->name, lr);
            log_json("{\"event\":\"error\",\"step\":%d,\"message\":\"non-finite %s of %s\"}", step + 1, moment, bad->name);
            tokenizer_free(&tk);
            return 1;
        }
        double dt = wall_time() - t0;
        t_train += dt;
        steps_timed++;
        double eta = (opt.steps - m->step) * (t_train / steps_timed);
        printf("step %5d/%d | loss %.4f | lr %.2e | norm %6.3f | %6.0f ms | %7.0f tok/s | eta %.1f %s\n",
               m->step, opt.steps, loss, lr, norm, dt * 1000, tokens_per_step / dt,
               eta >= 60 ? eta / 60 : eta, eta >= 60 ? "min" : "s");
        log_json("{\"event\":\"train\",\"step\":%d,\"loss\":%.9g,\"lr\":%.6g,\"grad_norm\":%.6f,\"ms\":%.2f,"
                 "\"tokens_per_s\":%.1f,\"tokens\":%zu}", m->step, loss, lr, norm, dt * 1000, tokens_per_step / dt,
                 m->step * tokens_per_step);
        int last = m->step == opt.steps;
        if (last || (opt.eval_every && m->step % opt.eval_every == 0))
            last_val = validate(m, val, last ? opt.final_eval_batches : opt.eval_batches,
                                tokens_per_step);
        if (opt.sample_every && world.rank == 0 && (m->step % opt.sample_every == 0 || last)) {
            printf("--- sample at step %d ---\n", m->step);
            sample_text(m, &tk, opt.sample_len < T ? opt.sample_len : T, (uint64_t)opt.seed + m->step);
            printf("---\n");
        }
        if (opt.save[0] && (last || ranks_should_stop() || (save_every && m->step % save_every == 0))) {
            int r = ranks_save(m, opt.save, train->at);
            if (r == 0) {
                saved_at = m->step;
                printf("saved %s (step %d)\n", opt.save, m->step);
            } else if (r < 0) save_failed = 1;
        }
    }
    tokenizer_free(&tk);
    if (ranks_should_stop()) {
        // stopped early (also before the first step): the model as it is now, unless just saved
        int saved = ranks_max(saved_at == m->step), sig = ranks_max(interrupted); // (rank 0's, any rank's)
        if (opt.save[0] && !saved && ranks_save(m, opt.save, train->at) == 0) saved = 1;
        const char *what = saved ? ", checkpoint saved; resume with --load" : opt.save[0] ? ", no checkpoint written" : "";
        if (sig) {
            printf("interrupted at step %d%s\n", m->step, what);
            return 128 + sig; // 130 for SIGINT, 143 for SIGTERM, as a shell reports them
        }
        if (world.rank > 0) return 1;
        if (ferror(stdout)) fprintf(stderr, "error: stdout: write failed (%s): stopped at step %d%s\n", strerror(errno ? errno : EIO), m->step, what);
        else fprintf(stderr, "error: --log %s: write failed: %s; stopped at step %d%s\n", opt.log, strerror(log_error), m->step, what);
        return 1;
    }
    double seconds = wall_time() - t_start;
    printf("done: %d steps, val loss %.4f, %.1f s (%.0f tok/s training)\n", m->step, last_val, seconds,
           steps_timed ? steps_timed * tokens_per_step / t_train : 0.0);
    if (world.ranks > 1)
        printf("all-reduce: %.1f ms a step, %.1f%% of the step (%d ranks x %d threads)\n",
               steps_timed ? 1000 * allreduce_seconds / steps_timed : 0.0,
               t_train > 0 ? 100 * allreduce_seconds / t_train : 0.0, world.ranks, num_threads());
    log_json("{\"event\":\"done\",\"step\":%d,\"val_loss\":%.6f,\"seconds\":%.2f}", m->step, last_val, seconds);
    rc = save_failed ? 1 : 0;
    return rc;
}

#ifndef TLM_TESTING
int main(int argc, char **argv) {
    ranks_start(&argc, &argv); // MPI's ranks (section 10); one without -DTLM_MPI
    setvbuf(stdout, NULL, _IOLBF, 0); // a progress line at a time, also into a pipe or a file (tee)
    ignore_sigpipe(); // a closed stdout is an error to report, not a death (should_stop)
    if (parse_args(argc, argv)) { usage(stdout); ranks_end(); return 0; }
    DataLoader train = {0}, val = {0};
    DataPosition resume_at = { 0, 0, 0 };
    Model *m = build_model(&train, &val, &resume_at);
    open_log(m);
    int rc = opt.eval_only ? run_evaluate(m, &val)
           : opt.analyze   ? run_analyze(m, &val)
           : opt.sample    ? run_sample(m)
           :                 run_train(m, &train, &val, resume_at);
    if (rc == 0 && (fflush(stdout) != 0 || ferror(stdout))) {
        fprintf(stderr, "error: stdout: write failed\n");
        rc = 1;
    }
    if (log_file && fclose(log_file) != 0 && rc == 0) {
        fprintf(stderr, "error: --log %s: write failed: %s\n", opt.log, strerror(errno));
        rc = 1;
    }
    dataloader_free(&train);
    dataloader_free(&val);
    model_free(m);
    ranks_end();
    return rc;
}
#endif // TLM_TESTING


// ============================================================================
// Appendix A. The fast matmul
//
// What it speeds up: every product of the model, matmul_forward/backward (the linear layers, the
// head), attention's Q K^T and P V per sequence and head, and the chunked memory's small products,
// where most of a training step's time goes. What it is tested against: the plain triple loop of
// the matmul contract in section 4 (matmul_forward_reference in test_tlm.c; test_matmul and
// test_gemm_serial: every transposition, strided operands, onto C and over it, awkward shapes).
// The dot product of section 1 lives here too, for its AVX-512 form.

#if defined(__AVX512F__)
#include <immintrin.h>
#define HAVE_AVX512 1
#else
#define HAVE_AVX512 0
#endif

// Dot products of short rows (the memory's, of d or m = 32 values). With AVX-512 (float): 16
// lanes of fused multiply-adds, a masked tail, one tree sum. Plain C: the same 16 lanes and a fixed
// fold, which gcc vectorizes without -ffast-math (an `omp simd` reduction costs a chain of
// scalar adds per row here). Either way the sum does not depend on where the arrays sit.
static inline real dot(const real *a, const real *b, int n) {
    int i = 0;
#if HAVE_AVX512
    if (sizeof(real) == sizeof(float)) {
        const float *af = (const float *)a, *bf = (const float *)b;
        __m512 acc = _mm512_setzero_ps();
        for (; i + LANES <= n; i += LANES) acc = _mm512_fmadd_ps(_mm512_loadu_ps(af + i), _mm512_loadu_ps(bf + i), acc);
        if (i < n) {
            __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, af + i), _mm512_maskz_loadu_ps(k, bf + i), acc);
        }
        return (real)_mm512_reduce_add_ps(acc);
    }
#endif
    real acc[LANES] = { 0 };
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += a[i + l] * b[i + l];
    for (int l = 0; i < n; i++, l++) acc[l] += a[i] * b[i];
    for (int w = LANES / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
    return acc[0];
}

// --- matrix multiplication ---------------------------------------------------
//
// One blocked kernel, gemm(), computes C (M,N) (+)= A (M,K) B (K,N), where A or B may be
// read transposed. Blocking (BLIS style, in the loop order that suits row-major C):
//
//   for jc in N by nc (<= NC):           a column block of C
//     for pc in K by kc:                 a slice of the k sum
//       pack B[pc:+kc, jc:+nc]            into NR-column strips: the B block, shared by
//                                         the threads, who pack it together
//       for each strip of ~MR rows       (the threads share the strips out)
//         pack A[rows, pc:+kc]            into one MR-row strip, private to the thread
//         for jr in nc by NR:
//           micro-kernel: C[rows, jc+jr:+NR] (+)= A strip x B strip
//
// The micro-kernel keeps an MR x NR block of C in registers and streams the two packed
// strips, both contiguous in k: per k it loads NR values of B (vectors along j: the loop
// that is vectorized) and broadcasts MR values of A, for MR*NR multiply-adds. An A strip
// is reused across the whole B block, which stays in L2; the B strips stream from there.
// Assumed caches (AMD Zen 4): L1d 32 KiB, L2 1 MiB per core; a B block is 512 KiB.
//
// Packing copies each operand into the order the kernel reads it. When the operand is
// read along its rows (A not transposed, B transposed: inp and W in the forward pass)
// this is a transpose, done 16 x 16 at a time in registers for float.
//
// Rows are cut into strips of nearly equal height (12.8 on average for M = 256: 13 or 12
// rows) rather than full strips and a ragged last one: the AVX-512 kernel has a variant
// for every row count, so no multiply-add is wasted on padding, and the strip count is a
// multiple of the thread count, so every thread gets the same share. Columns past N in
// the last B strip are packed as zeros and masked off when C is stored.
//
// Two B buffers alternate, so that a thread that is done with one block can start to
// pack the next without waiting for the others: one barrier per block.
//
// Three ways to run it: gemm() on all threads, sharing the row strips as above when there
// are enough (GEMM_ROW_SHARE per thread), or else splitting C into a grid of tiles, one per
// thread; gemm_serial() on the calling thread alone, for the small products that a parallel
// loop hands out one per thread (attention per sequence and head, the memory modules).
//
// Determinism: the k slice length is fixed by the whole product (gemm_kc), and every C
// element is the sum over the k slices in order, each slice summed in k order inside one
// micro-kernel call, whichever thread runs it and however the rows or columns are cut, so
// the results are bit-identical for any OMP_NUM_THREADS.
//
// Two micro-kernels: for float on an AVX-512 machine, 14 x 32 with intrinsics (28 zmm
// accumulators); everywhere else (double, or no AVX-512) 8 x 32 in plain C, which
// gcc/clang vectorize with -O3 -march=native. matmul_forward_reference() in test_tlm.c is the
// plain triple loop they are tested against.

enum {
    GEMM_MR_AVX512 = 14, // AVX-512 float kernel: 14 rows x 2 zmm (32 floats) = 28 accumulators
    GEMM_MR_C = 8,       // plain-C kernel: 8 rows x 32 columns (gcc's best, also for AVX2)
    GEMM_MR_MAX = 14,
    GEMM_NR = 32,        // both kernels: 32 columns
};
// Cache blocking. A packed B block (kc x nc) must stay in L2 (1 MiB): GEMM_B_BLOCK reals
// = 512 KiB in float. Columns are cut into blocks of at most GEMM_NC (a multiple of NR); k
// into slices as long as the B block allows, at most GEMM_KC_MAX: kc = 256 for nc = 512,
// 1024 for nc = 128. Long k slices mean fewer passes over C (the dW of a small model,
// K = B*T = 1024, N = C = 128, is one pass); an A strip (MR x kc, 14 KiB at kc = 256,
// 56 KiB at 1024) then lives in L1 or L2: it is read at 56 bytes per 28 FMAs, either will do.
// (Tuned on the shapes in the report: NC 384/512/768 x B block 384/512/768 KiB are all
// within a few per cent; these are the best.)
// The threads share a product's row strips (and pack its B blocks together) only when there
// are at least GEMM_ROW_SHARE strips per thread; with fewer, each computes its own tiles
// with no barrier between B blocks. 16: at 256 rows on 2 threads (19 strips) tiles are 12%
// faster per GPT-2 step here, where a barrier waits for whichever core the machine paused;
// on the 16-core machine 4 and 16 are within its noise.
#ifndef GEMM_ROW_SHARE
#define GEMM_ROW_SHARE 16
#endif
#ifndef GEMM_NC
#define GEMM_NC 512
#endif
#ifndef GEMM_KC_MAX
#define GEMM_KC_MAX 1024
#endif
#ifndef GEMM_B_BLOCK
#define GEMM_B_BLOCK (256 * 512)
#endif
static real *gemm_buffer_raw;  // the allocation, for free()
static real *gemm_pack_b[2];   // two B blocks (GEMM_B_BLOCK), shared by the threads, 64-byte aligned
static real *gemm_pack_a;      // per thread: one A strip, MR_MAX*KC_MAX (aligned)
static real *gemm_pack_b_own;  // per thread: one B block, when a thread computes a product alone
                               // (gemm_serial() and gemm()'s tiles)
static int gemm_pack_threads;

// Called outside parallel regions (gemm() does; attention calls it before its loop).
static void gemm_init(void) {
    int n = num_threads();
    if (gemm_buffer_raw && gemm_pack_threads >= n) return;
    free(gemm_buffer_raw);
    gemm_pack_threads = n;
    size_t count = (2 + (size_t)n) * GEMM_B_BLOCK + (size_t)n * GEMM_MR_MAX * GEMM_KC_MAX + 64;
    gemm_buffer_raw = xcalloc(count, sizeof(real), "matmul buffers");
    uintptr_t p = ((uintptr_t)gemm_buffer_raw + 63) & ~(uintptr_t)63;
    gemm_pack_b[0] = (real *)p;
    gemm_pack_b[1] = gemm_pack_b[0] + (size_t)GEMM_B_BLOCK;
    gemm_pack_b_own = gemm_pack_b[1] + (size_t)GEMM_B_BLOCK;
    gemm_pack_a = gemm_pack_b_own + (size_t)n * GEMM_B_BLOCK;
}

#if HAVE_AVX512
// dst[p*ldd + r] = src[r*lds + p] for r < 16, p < 16: a 16 x 16 transpose in zmm registers.
// Rows r >= rows are read as zeros; lanes outside `lanes` are not stored. Four rounds of
// shuffles, each interleaving pairs at twice the distance of the last: 1, 2, 4, 8 floats.
static inline void gemm_transpose16(float *dst, int ldd, __mmask16 lanes,
                                    const float *src, size_t lds, int rows) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++) {
        r[i] = i < rows ? _mm512_loadu_ps(src + i * lds) : _mm512_setzero_ps();
        if (i < rows) _mm_prefetch((const char *)(src + i * lds + 64), _MM_HINT_T0); // 4 lines ahead
    }
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i]     = _mm512_shuffle_ps(t[i],     t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i],     t[i + 2], 0xEE);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        t[i]      = _mm512_shuffle_f32x4(r[i],     r[i + 4],  0x88);
        t[i + 4]  = _mm512_shuffle_f32x4(r[i],     r[i + 4],  0xDD);
        t[i + 8]  = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (int i = 0; i < 8; i++) {
        r[i]     = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    }
    for (int p = 0; p < 16; p++) _mm512_mask_storeu_ps(dst + (size_t)p * ldd, lanes, r[p]);
}
#endif

// dst[p*ldd + r] = src[r*lds + p] for r < rows, p < kc, and zeros for r in rows..ldd-1:
// the packing of the operand that is read across its rows (A not transposed, B transposed)
static void gemm_pack_transposed(real *restrict dst, int ldd, const real *src, int lds, int rows, int kc) {
    int p0 = 0;
#if HAVE_AVX512
    if (sizeof(real) == sizeof(float)) { // float: 16 x 16 blocks through registers
        for (; p0 + 16 <= kc; p0 += 16)
            for (int r = 0; r < ldd; r += 16) {
                int n = rows - r < 0 ? 0 : rows - r < 16 ? rows - r : 16;
                int w = ldd - r < 16 ? ldd - r : 16;
                gemm_transpose16((float *)dst + (size_t)p0 * ldd + r, ldd, (__mmask16)((1u << w) - 1),
                                 (const float *)src + (size_t)r * lds + p0, lds, n);
            }
    }
#endif
    for (int p = p0; p < kc; p++) { // p outer: contiguous stores, `rows` read streams
        for (int r = 0; r < rows; r++) dst[(size_t)p * ldd + r] = src[(size_t)r * lds + p];
        for (int r = rows; r < ldd; r++) dst[(size_t)p * ldd + r] = 0;
    }
}

// dst[p*ldd + r] = src[p*lds + r] for r < rows, p < kc, zeros for r in rows..ldd-1: the
// packing of the operand whose rows are already contiguous along the strip (A^T, B)
static void gemm_pack_direct(real *restrict dst, int ldd, const real *src, int lds, int rows, int kc) {
#if HAVE_AVX512
    if (sizeof(real) == sizeof(float)) { // float: masked 16-lane moves (gcc's own loop is scalar for ldd = 14)
        for (int p = 0; p < kc; p++) {
            const float *s = (const float *)src + (size_t)p * lds;
            _mm_prefetch((const char *)(s + 2 * ldd - 1), _MM_HINT_T1); // see the plain loop below
            for (int r = 0; r < ldd; r += 16) {
                int n = rows - r < 0 ? 0 : rows - r < 16 ? rows - r : 16, w = ldd - r < 16 ? ldd - r : 16;
                __m512 v = _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), s + r);
                _mm512_mask_storeu_ps((float *)dst + (size_t)p * ldd + r, (__mmask16)((1u << w) - 1), v);
            }
        }
        return;
    }
#endif
    for (int p = 0; p < kc; p++) {
        const real *s = src + (size_t)p * lds;
#if defined(__GNUC__)
        // when lds is large every p is another cache line (A^T: a row of dout, 200 KB apart
        // for the lm head); fetch the values for the next strip now, to hide the memory latency
        __builtin_prefetch(s + 2 * ldd - 1, 0, 2);
#endif
        // one loop with the zeros inside, not a copy and a fill: gcc then writes masked vector
        // moves instead of a memcpy call for each of these short rows
        for (int r = 0; r < ldd; r++) dst[(size_t)p * ldd + r] = r < rows ? s[r] : 0;
    }
}

// pack rows [i0, i0+mr) of A, k in [p0, p0+kc), as dst[p*MR + i]; rows mr..MR-1 are zeros
static void gemm_pack_a_strip(real *restrict dst, const real *A, int lda, int trans_a,
                              int i0, int mr, int p0, int kc, int MR) {
    if (trans_a) gemm_pack_direct(dst, MR, A + (size_t)p0 * lda + i0, lda, mr, kc);
    else         gemm_pack_transposed(dst, MR, A + (size_t)i0 * lda + p0, lda, mr, kc);
}

// pack columns [j0, j0+nr) of B, k in [p0, p0+kc), as dst[p*NR + j]; columns nr..NR-1 are zeros
static void gemm_pack_b_strip(real *restrict dst, const real *B, int ldb, int trans_b,
                              int j0, int nr, int p0, int kc) {
    if (trans_b) gemm_pack_transposed(dst, GEMM_NR, B + (size_t)j0 * ldb + p0, ldb, nr, kc);
    else         gemm_pack_direct(dst, GEMM_NR, B + (size_t)p0 * ldb + j0, ldb, nr, kc);
}

// Plain-C micro-kernel: C[0:mr, 0:nr] (+)= sum_p a[p, 0:MR] (x) b[p, 0:NR], from packed
// strips. The j loop is the one the compiler vectorizes; acc lives in vector registers.
// 8 x 32 is what gcc 12 does best with (float with AVX2 only: ~70 GFLOP/s on one Zen 4
// core; double with AVX-512: ~38); 6 x 16 or 8 x 16 look kinder to the register file but
// gcc then stops vectorizing (~5 GFLOP/s). clang 14 vectorizes this kernel in float
// (~53) but not in double with AVX-512 (~2.5 GFLOP/s): build the tests with gcc.
static void gemm_micro_kernel_c(int kc, const real *restrict a, const real *restrict b,
                                real *restrict c, int ldc, int mr, int nr, int overwrite) {
    real acc[GEMM_MR_C][GEMM_NR] = {{0}};
    for (int p = 0; p < kc; p++) {
        const real *restrict ap = a + p * GEMM_MR_C;
        const real *restrict bp = b + p * GEMM_NR;
        for (int i = 0; i < GEMM_MR_C; i++)
            for (int j = 0; j < GEMM_NR; j++)
                acc[i][j] += ap[i] * bp[j];
    }
    for (int i = 0; i < mr; i++) {
        real *restrict ci = c + (size_t)i * ldc;
        if (overwrite) for (int j = 0; j < nr; j++) ci[j] = acc[i][j];
        else           for (int j = 0; j < nr; j++) ci[j] += acc[i][j];
    }
}

#if HAVE_AVX512
// AVX-512 micro-kernel for float, MR (<= 14) rows x 32 columns. Per k: two 16-float
// vectors of B (b0, b1), then for each row i one broadcast of A(i,k) and two fused
// multiply-adds into that row's accumulators c0[i], c1[i]. With MR = 14 that is 28
// accumulators + 2 B vectors + 1 broadcast = 31 of the 32 zmm registers, and 28 FMAs
// per 2 vector loads + 14 broadcasts, so the FMA units, not the loads, set the pace.
// MR is a compile-time constant in each call below, so the i loops unroll completely
// and c0/c1 are registers, not memory.
// A(i,k) = a[i*a_row + k*a_step], B(k,j) = b[k*b_step + j]: packed strips (a_row 1, a_step
// MR_AVX512, b_step NR, all constants), or the operands where they lie (gemm_small). All 32
// columns of B are read (a mask on those loads makes gcc spill the accumulators): whoever
// calls it with nr < 32 pads B's rows to 32 columns.
static inline __attribute__((always_inline))
void gemm_avx512_rows(int kc, const float *restrict a, size_t a_row, size_t a_step, const float *restrict b,
                      size_t b_step, float *restrict c, int ldc, int nr, int overwrite, const int MR) {
    __m512 c0[GEMM_MR_AVX512], c1[GEMM_MR_AVX512];
    for (int i = 0; i < MR; i++) { // while the k loop runs, bring the C block into L1
        _mm_prefetch((const char *)(c + (size_t)i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + (size_t)i * ldc + GEMM_NR - 1), _MM_HINT_T0);
        c0[i] = _mm512_setzero_ps();
        c1[i] = _mm512_setzero_ps();
    }
    for (int p = 0; p < kc; p++) {
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
        for (int i = 0; i < MR; i++) {
            __m512 ai = _mm512_set1_ps(a[i * a_row]);
            c0[i] = _mm512_fmadd_ps(ai, b0, c0[i]);
            c1[i] = _mm512_fmadd_ps(ai, b1, c1[i]);
        }
        a += a_step;
        b += b_step;
    }
    // store: all 32 columns, or the first nr of them under a mask at the right edge of C
    __mmask16 m0 = nr >= 16 ? 0xFFFF : (__mmask16)((1u << nr) - 1);
    __mmask16 m1 = nr >= 32 ? 0xFFFF : nr <= 16 ? 0 : (__mmask16)((1u << (nr - 16)) - 1);
    for (int i = 0; i < MR; i++) {
        float *ci = c + (size_t)i * ldc;
        if (nr == GEMM_NR) {
            if (!overwrite) {
                c0[i] = _mm512_add_ps(c0[i], _mm512_loadu_ps(ci));
                c1[i] = _mm512_add_ps(c1[i], _mm512_loadu_ps(ci + 16));
            }
            _mm512_storeu_ps(ci, c0[i]);
            _mm512_storeu_ps(ci + 16, c1[i]);
        } else { // (a load under an empty mask is slow on Zen: no second half when nr <= 16)
            if (!overwrite) c0[i] = _mm512_add_ps(c0[i], _mm512_maskz_loadu_ps(m0, ci));
            _mm512_mask_storeu_ps(ci, m0, c0[i]);
            if (nr <= 16) continue;
            if (!overwrite) c1[i] = _mm512_add_ps(c1[i], _mm512_maskz_loadu_ps(m1, ci + 16));
            _mm512_mask_storeu_ps(ci + 16, m1, c1[i]);
        }
    }
}

// one instance per row count, so that the strips of 13 rows run as fast as those of 14
static inline __attribute__((always_inline))
void gemm_avx512_strip(int kc, const float *a, size_t a_row, size_t a_step, const float *b, size_t b_step,
                       float *c, int ldc, int mr, int nr, int overwrite) {
    switch (mr) {
    case 14: gemm_avx512_rows(kc, a, a_row, a_step, b, b_step, c, ldc, nr, overwrite, 14); break;
    case 13: gemm_avx512_rows(kc, a, a_row, a_step, b, b_step, c, ldc, nr, overwrite, 13); break;
    case 12: gemm_avx512_rows(kc, a, a_row, a_step, b, b_step, c, ldc, nr, overwrite, 12); break;
    case 11: gemm_avx512_rows(kc, a, a_row, a_step, b, b_step, c, ldc, nr, overwrite, 11); break;
    case 10: gemm_avx512_rows(kc, a, a_row, a_step, b, b_step, c, ldc, nr, overwrite, 10); break;
    case 9:  gemm_avx512_rows(kc, a, a_row, a_step, b, b_step, c, ldc, nr, overwrite, 9);  break;
    case 8:  gemm_avx512_rows(kc, a, a_row, a_step, b, b_step, c, ldc, nr, overwrite, 8);  break;
    case 7:  gemm_avx512_rows(kc, a, a_row, a_step, b, b_step, c, ldc, nr, overwrite, 7);  break;
    case 6:  gemm_avx512_rows(kc, a, a_row, a_step, b, b_step, c, ldc, nr, overwrite, 6);  break;
    case 5:  gemm_avx512_rows(kc, a, a_row, a_step, b, b_step, c, ldc, nr, overwrite, 5);  break;
    case 4:  gemm_avx512_rows(kc, a, a_row, a_step, b, b_step, c, ldc, nr, overwrite, 4);  break;
    case 3:  gemm_avx512_rows(kc, a, a_row, a_step, b, b_step, c, ldc, nr, overwrite, 3);  break;
    case 2:  gemm_avx512_rows(kc, a, a_row, a_step, b, b_step, c, ldc, nr, overwrite, 2);  break;
    default: gemm_avx512_rows(kc, a, a_row, a_step, b, b_step, c, ldc, nr, overwrite, 1);  break;
    }
}
// from packed strips (the strides are constants here, so the loads' offsets are too) ...
static void gemm_micro_kernel_avx512(int kc, const float *a, const float *b, float *c, int ldc, int mr, int nr, int overwrite) {
    gemm_avx512_strip(kc, a, 1, GEMM_MR_AVX512, b, GEMM_NR, c, ldc, mr, nr, overwrite);
}
// ... and from the operands where they lie
static void gemm_micro_kernel_avx512_strided(int kc, const float *a, size_t a_row, size_t a_step, const float *b,
                                              size_t b_step, float *c, int ldc, int mr, int nr, int overwrite) {
    gemm_avx512_strip(kc, a, a_row, a_step, b, b_step, c, ldc, mr, nr, overwrite);
}
#endif

// Column blocks of nearly equal size, multiples of NR: N = 768 is 2 x 384
static int gemm_nc(int N) {
    int n_blocks = (N + GEMM_NC - 1) / GEMM_NC;
    return ((N + n_blocks - 1) / n_blocks + GEMM_NR - 1) / GEMM_NR * GEMM_NR;
}
// k slices of nearly equal length, as long as a B block of gemm_nc(N) columns allows, a
// multiple of 16 (the transposing packs go 16 k at a time): K = 768 is 3 x 256
static int gemm_kc(int N, int K) {
    int kc_fit = GEMM_B_BLOCK / gemm_nc(N) / 16 * 16; // a multiple of 16, as is GEMM_KC_MAX
    int kc_max = kc_fit < GEMM_KC_MAX ? kc_fit : GEMM_KC_MAX;
    int k_slices = (K + kc_max - 1) / kc_max;
    return ((K + k_slices - 1) / k_slices + 15) / 16 * 16;
}

// gemm_run() computes C (M,N) with `threads` threads (rank: this one's place among them) that
// share out the row strips and pack the B blocks together; each packs into the buffers of its
// OpenMP thread number. kc_even: the k slice, fixed by the whole product (gemm_kc), so that
// however a product is cut between threads every C element sums the same slices in order.
static void gemm_run(real *C, const real *A, const real *B, int M, int N, int K, int trans_a, int lda,
                     int trans_b, int ldb, int ldc, int accumulate, int rank, int threads, int kc_even) {
    const int avx512 = HAVE_AVX512 && sizeof(real) == sizeof(float);
    const int MR = avx512 ? GEMM_MR_AVX512 : GEMM_MR_C;
    int nc_even = gemm_nc(N);
    // a B block must fit its buffer: kc_even was chosen for the whole product's N, and a
    // tile of gemm()'s grid (fewer columns) can get wider blocks from gemm_nc than that allows
    if ((size_t)nc_even * kc_even > GEMM_B_BLOCK) nc_even = GEMM_B_BLOCK / kc_even / GEMM_NR * GEMM_NR;
    // row strips: strip s is rows [s*M/strips, (s+1)*M/strips); a multiple of the thread
    // count, so that each thread gets the same number of rows (M = 256: 20 strips of 12.8)
    int strips = ((M + MR - 1) / MR + threads - 1) / threads * threads;
    if (strips > M) strips = M;
    const int s_lo = (int)((long)rank * strips / threads), s_hi = (int)((long)(rank + 1) * strips / threads);
    const int tid = thread_id();
    real *pack_a = gemm_pack_a + (size_t)tid * GEMM_MR_MAX * GEMM_KC_MAX;
    int block = 0; // shared B blocks alternate between two buffers
    for (int jc = 0; jc < N; jc += nc_even) {
        int nc = N - jc < nc_even ? N - jc : nc_even;
        int b_strips = (nc + GEMM_NR - 1) / GEMM_NR;
        for (int pc = 0; pc < K; pc += kc_even) {
            int kc = K - pc < kc_even ? K - pc : kc_even;
            int overwrite = pc == 0 && !accumulate;
            real *pack_b = threads == 1 ? gemm_pack_b_own + (size_t)tid * GEMM_B_BLOCK : gemm_pack_b[block++ & 1];
            // B block: the threads pack it together, then wait for each other; after that
            // barrier every thread is also done with the block before last, that used this buffer
            for (int t = (int)((long)rank * b_strips / threads); t < (int)((long)(rank + 1) * b_strips / threads); t++) {
                int jr = t * GEMM_NR, nr = nc - jr < GEMM_NR ? nc - jr : GEMM_NR;
                gemm_pack_b_strip(pack_b + (size_t)jr * kc, B, ldb, trans_b, jc + jr, nr, pc, kc);
            }
            if (threads > 1) {
                #pragma omp barrier
            }
            // row strips: each thread packs an A strip and sweeps it across the B block; no
            // barrier at the end: a thread that is done goes on to pack the next B block into
            // the other buffer
            for (int s = s_lo; s < s_hi; s++) {
                int i0 = (int)((long)s * M / strips), mr = (int)((long)(s + 1) * M / strips) - i0;
                gemm_pack_a_strip(pack_a, A, lda, trans_a, i0, mr, pc, kc, MR);
                for (int jr = 0; jr < nc; jr += GEMM_NR) {
                    int nr = nc - jr < GEMM_NR ? nc - jr : GEMM_NR;
                    real *c = C + (size_t)i0 * ldc + jc + jr;
                    const real *b = pack_b + (size_t)jr * kc;
#if HAVE_AVX512
                    if (avx512) {
                        gemm_micro_kernel_avx512(kc, (const float *)pack_a, (const float *)b,
                                                 (float *)c, ldc, mr, nr, overwrite);
                        continue;
                    }
#endif
                    gemm_micro_kernel_c(kc, pack_a, b, c, ldc, mr, nr, overwrite);
                }
            }
        }
    }
}

// An empty product: nothing to do when C is empty, C = 0 (or unchanged) when K = 0. Returns
// 1 if it handled the product; gemm() and gemm_serial() call it before any blocking arithmetic.
static int gemm_empty(real *C, int M, int N, int K, int ldc, int accumulate) {
    if (M <= 0 || N <= 0) return 1;
    if (K > 0) return 0;
    if (!accumulate) for (int i = 0; i < M; i++) memset(C + (size_t)i * ldc, 0, N * sizeof(real));
    return 1;
}

// C (M,N) = A (M,K) B (K,N) (+ C if accumulate). A(i,k) = trans_a ? A[k*lda+i] : A[i*lda+k],
// B(k,j) = trans_b ? B[j*ldb+k] : B[k*ldb+j]; C(i,j) = C[i*ldc+j].
//
// gemm(): one product on all threads; call it outside any parallel region. With enough row
// strips (GEMM_ROW_SHARE per thread) the threads share the rows and the packed B blocks, as
// above. With fewer (the forward of a batch of B*T = 256 rows) they split C into a grid of
// tr x tc tiles instead, each computed by one thread alone with its own B buffer: more
// columns per thread, no barriers.
static void gemm(real *C, const real *A, const real *B, int M, int N, int K,
                 int trans_a, int lda, int trans_b, int ldb, int ldc, int accumulate) {
    if (gemm_empty(C, M, N, K, ldc, accumulate)) return;
    gemm_init();
    const int MR = HAVE_AVX512 && sizeof(real) == sizeof(float) ? GEMM_MR_AVX512 : GEMM_MR_C;
    const int threads = num_threads(), kc = gemm_kc(N, K), strips = (M + MR - 1) / MR;
    if (strips >= GEMM_ROW_SHARE * threads) {
        #pragma omp parallel
        gemm_run(C, A, B, M, N, K, trans_a, lda, trans_b, ldb, ldc, accumulate, thread_id(), num_threads_here(), kc);
        return;
    }
    int tr = 1; // row groups: the largest divisor of the thread count that leaves 4 strips per group
    for (int t = 1; t <= threads; t++)
        if (threads % t == 0 && strips >= 4 * t) tr = t;
    const int tc = threads / tr, col_strips = (N + GEMM_NR - 1) / GEMM_NR;
    #pragma omp parallel
    {
        int id = thread_id(), r = id / tc, c = id % tc;
        if (num_threads_here() == threads) {
            int i0 = (int)((long)r * M / tr), i1 = (int)((long)(r + 1) * M / tr);
            int j0 = (int)((long)c * col_strips / tc) * GEMM_NR, j1 = (int)((long)(c + 1) * col_strips / tc) * GEMM_NR;
            if (j1 > N) j1 = N;
            if (j1 > j0)
                gemm_run(C + (size_t)i0 * ldc + j0, trans_a ? A + i0 : A + (size_t)i0 * lda,
                         trans_b ? B + (size_t)j0 * ldb : B + j0, i1 - i0, j1 - j0, K, trans_a, lda, trans_b, ldb, ldc,
                         accumulate, 0, 1, kc);
        } else { // a smaller team than asked for: one thread does it all
            if (id == 0) gemm_run(C, A, B, M, N, K, trans_a, lda, trans_b, ldb, ldc, accumulate, 0, 1, kc);
        }
    }
}
#if HAVE_AVX512
// A small product (A, B and a padded strip together at most GEMM_SMALL floats: 256 KiB, in L2)
// costs little to multiply, so what packing costs shows: the memory recurrence's products are
// 16 x 32 x 32 (Titans) and 16 x 64 x 128 (Hope). gemm_small() packs only what it must: B^T
// (k must run along the rows it reads) and a last strip of fewer than 32 columns; the kernel
// broadcasts A where it lies and reads B's rows in place, over the whole k range at once.
// (At these sizes that beats packing at every shape tried, up to 128 x 128 x 128.)
#ifndef GEMM_SMALL
#define GEMM_SMALL 65536
#endif
static void gemm_small(float *C, const float *A, const float *B, int M, int N, int K,
                       int trans_a, int lda, int trans_b, int ldb, int ldc, int accumulate) {
    size_t a_row = trans_a ? 1 : (size_t)lda, a_step = trans_a ? (size_t)lda : 1;
    float *packed = (float *)gemm_pack_b_own + (size_t)thread_id() * GEMM_B_BLOCK; // this thread's B buffer
    // B's 32-column strips: where they lie when trans_b = 0 and the strip is whole, else packed
    // as gemm_run() packs them (K x 32 each, zeros past column N)
    int n_in_place = trans_b ? 0 : N / GEMM_NR * GEMM_NR;
    for (int j0 = n_in_place; j0 < N; j0 += GEMM_NR)
        gemm_pack_b_strip((real *)packed + (size_t)j0 * K, (const real *)B, ldb, trans_b, j0,
                          N - j0 < GEMM_NR ? N - j0 : GEMM_NR, 0, K);
    // column strips outer: a strip of B (K x 32) stays in L1 while all of A's row strips pass
    int strips = (M + GEMM_MR_AVX512 - 1) / GEMM_MR_AVX512;
    for (int j0 = 0; j0 < N; j0 += GEMM_NR) {
        const float *b = j0 < n_in_place ? B + j0 : packed + (size_t)j0 * K;
        size_t b_step = j0 < n_in_place ? (size_t)ldb : GEMM_NR;
        for (int s = 0; s < strips; s++) {
            int i0 = (int)((long)s * M / strips), mr = (int)((long)(s + 1) * M / strips) - i0;
            gemm_micro_kernel_avx512_strided(K, A + i0 * a_row, a_row, a_step, b, b_step, C + (size_t)i0 * ldc + j0,
                                              ldc, mr, N - j0 < GEMM_NR ? N - j0 : GEMM_NR, !accumulate);
        }
    }
}
#endif
// gemm_serial(): on the calling thread alone, with its own B buffer, for the many small
// products that a parallel loop hands out one per thread (attention: one per sequence and
// head). It may run inside a parallel region, but gemm_init() must have run before it,
// outside that region, with at least as many threads: the buffers are per thread.
static void gemm_serial(real *C, const real *A, const real *B, int M, int N, int K,
                        int trans_a, int lda, int trans_b, int ldb, int ldc, int accumulate) {
    if (gemm_empty(C, M, N, K, ldc, accumulate)) return;
#if HAVE_AVX512
    if (sizeof(real) == sizeof(float) && K <= GEMM_KC_MAX && (size_t)K * (M + N + GEMM_NR) <= GEMM_SMALL) {
        gemm_small((float *)C, (const float *)A, (const float *)B, M, N, K, trans_a, lda, trans_b, ldb, ldc, accumulate);
        return;
    }
#endif
    gemm_run(C, A, B, M, N, K, trans_a, lda, trans_b, ldb, ldc, accumulate, 0, 1, gemm_kc(N, K));
}

// ============================================================================
// Appendix B. The chunked memory
//
// What it speeds up: the neural memory recurrence of section 5, which costs n passes over the
// memory's weights per chunk of n tokens when taken token by token. Here a chunk is a few small
// matrix products (on gemm_serial) and an n x n scalar recurrence: in exact arithmetic the same
// function. What it is tested against: memory_recurrence_forward/backward
// of section 5 (test_memory_recurrence in test_tlm.c: Titans and Hope, depth 1 and 2, several
// chunk sizes, forward values and every gradient).

// --- the memory recurrence, one chunk at a time ----------------------------------------------
// Inside a chunk every g_t is taken at the chunk's start weights W_c, so each g_t is one outer
// product per weight matrix, X_s = x_s y_s^T, of vectors from one batch of small products at W_c:
//   depth 2:  g_s = 2 (u_s k_s^T | e_s a_s^T)   for (W1 | W2)    depth 1:  g_s = 2 e_s k_s^T
//   z = W1c k, a = silu(z), e = M_Wc(k) - v, u = (W2c^T e) * silu'(z)       ("the factors")
// Then W and S after any token t of the chunk are a closed form in W_c, S_c and those products:
//   S_t = ps_t S_c + sum_{s<=t} ex_ts X_s          W_t = cw_t W_c + cs_t S_c + sum_{s<=t} cx_ts X_s
// with scalar coefficients that follow the recurrence token by token (h_t = -2 theta_t):
//   ex_s <- eta_t ex_s (s < t), ex_t = h_t ;  ps <- eta_t ps ;  cw <- (1 - alpha_t) cw ;
//   cs <- (1 - alpha_t) cs + ps ;  cx_s <- (1 - alpha_t) cx_s + ex_s (s <= t)    (from cw = ps = 1)
// So a chunk is a few products per weight matrix and an n x n scalar recurrence, not n passes
// over W: the chunk's end state is (diag(cx) X)^T Y plus the scaled W_c and S_c, and Titans'
// reads at W_t, row t of  IN W_t^T  for the n inputs IN of a weight matrix, are
//   OUT = diag(cw) IN W_c^T + diag(cs) IN S_c^T + (cx o IN Y^T) X        (o: elementwise, s <= t)
// Hope reads W_c only (cw = 1, cs = cx = 0 for its reads).

// One chunk's arrays: what the forward keeps in the chunk's record (memory_chunk_saved()), the
// rest in the thread's scratch (memory_chunk_layout()).
typedef struct {
    // kept:
    real *E, *Z, *A, *R, *U;        // (n, d), (n, m) x 4: e, z, a, r = W2^T e, u
    real *Zq, *Aq;                  // (n, m) x 2: the read-out's hidden layer (depth 2)
    real *coef;                     // (n + 1, 3 + 2n): cw, cs, ps, cx (n), ex (n) before token t (row n: the end)
    real *G[2];                     // (n, n) per block: Titans' reads, IN Y^T (unused by Hope)
    // scratch:
    real *dX[2], *dY[2];            // gradients of the factors X and Y of each block
    real *dR, *dZ, *dZq;            // (n, m) x 3
    real *gcoef;                    // (n, 3 + 2n): gradients of the coefficients after token t
    real *T1, *T2, *H, *H2;         // (n, wide) x 2, (n, n) x 2 for the reads
    real *M1, *M2, *N1, *N2, *Xs;   // (n, wide) x 5 for the end state (M1, M2 also for the reads' backward)
    real *step, *dstep;             // (n) x 2: theta_t c_t (the clipped step) and its gradient
} MemoryChunk;

// Block b of W (depth 2: W1 (m, d), then W2 (d, m); depth 1: W (d, d)): its rows, columns,
// offset, and the factors of its outer products, X (n, rows) and Y (n, cols).
static int memory_blocks(int depth) { return depth == 1 ? 1 : 2; }
static void memory_block(int depth, int d, int m, int b, int *rows, int *cols, size_t *offset) {
    *rows = depth == 1 || b == 1 ? d : m;
    *cols = depth == 1 || b == 0 ? d : m;
    *offset = b == 0 ? 0 : (size_t)m * d;
}
static const real *memory_factor_x(const MemoryChunk *f, int depth, int b) { return depth == 1 || b == 1 ? f->E : f->U; }
static const real *memory_factor_y(const MemoryChunk *f, int b, const real *K) { return b == 0 ? K : f->A; }
static real *memory_coef(const MemoryChunk *f, int n, int row) { return f->coef + (size_t)row * (3 + 2 * n); }

// What a chunk of n tokens keeps, in its record after W_c and S_c: E (n, d); Z, A, R, U, Zq, Aq
// (n, m), depth 2 only; coef; G per block. The n x n tables grow as n^2 (n is at most T, so a long
// chunk costs memory as attention's T x T does).
static size_t memory_saved_size(int n_tokens, int d, int m, int depth) {
    size_t n = (size_t)n_tokens;
    return n * d + (depth == 2 ? 6 * n * (size_t)m : 0) + (n + 1) * (3 + 2 * n) + memory_blocks(depth) * n * n;
}
static void memory_chunk_saved(MemoryChunk *f, real *p, int n_tokens, int d, int m, int depth) {
    size_t n = (size_t)n_tokens, nm = depth == 2 ? n * m : 0;
    f->E = p;  f->Z = f->E + n * d;  f->A = f->Z + nm;  f->R = f->A + nm;  f->U = f->R + nm;
    f->Zq = f->U + nm;  f->Aq = f->Zq + nm;  f->coef = f->Aq + nm;
    f->G[0] = f->coef + (n + 1) * (3 + 2 * n);  f->G[1] = f->G[0] + n * n;
}
// The scratch of a chunk, per thread
static size_t memory_chunk_size(int n_tokens, int d, int m) {
    size_t n = (size_t)n_tokens, wide = d > m ? d : m;
    // as memory_chunk_layout() lays it out: dY0, dX1 (n, d); dY1, dR, dZ, dZq (n, m); dX0, T1, T2,
    // M1, M2, N1, N2, Xs (n, wide); gcoef; H, H2 (n, n)
    return n * (2 * (size_t)d + 4 * (size_t)m + 8 * wide) + n * (3 + 2 * n) + 2 * n * n + 2 * n;
}
static void memory_chunk_layout(MemoryChunk *f, real *p, int n_tokens, int d, int m) {
    size_t n = (size_t)n_tokens, wide = d > m ? d : m;
    f->dX[0] = p;                               // (n, m) [depth 1: (n, d)]
    f->dY[0] = f->dX[0] + n * wide;             // (n, d)
    f->dX[1] = f->dY[0] + n * d;                // (n, d)
    f->dY[1] = f->dX[1] + n * d;                // (n, m)
    f->dR = f->dY[1] + n * m;  f->dZ = f->dR + n * m;  f->dZq = f->dZ + n * m;
    f->gcoef = f->dZq + n * m;
    f->T1 = f->gcoef + n * (3 + 2 * n);  f->T2 = f->T1 + n * wide;  f->H = f->T2 + n * wide;  f->H2 = f->H + n * n;
    f->M1 = f->H2 + n * n;  f->M2 = f->M1 + n * wide;  f->N1 = f->M2 + n * wide;  f->N2 = f->N1 + n * wide;
    f->Xs = f->N2 + n * wide;
    f->step = f->Xs + n * wide;  f->dstep = f->step + n;
}

// Y (n, d) = M_W(X) for n inputs at once, keeping Z = X W1^T and A = silu(Z) (depth 2)
static void memory_read_rows(real *Y, real *Z, real *A, const real *W, const real *X, int n, int d, int m, int depth) {
    if (depth == 1) { gemm_serial(Y, X, W, n, d, d, 0, d, 1, d, d, 0); return; }
    const real *W1 = W, *W2 = W + (size_t)m * d;
    gemm_serial(Z, X, W1, n, m, d, 0, d, 1, d, m, 0);
    for (size_t i = 0; i < (size_t)n * m; i++) A[i] = silu(Z[i]);
    memcpy(Y, X, (size_t)n * d * sizeof(real));
    gemm_serial(Y, A, W2, n, d, m, 0, m, 1, m, d, 1);        // Y = X + A W2^T
}
// its backward: dW += dM/dW^T dY, dX += dM/dX^T dY. dZ: scratch (n, m)
static void memory_read_rows_backward(real *dW, real *dX, const real *dY, const real *W, const real *X,
                                       const real *Z, const real *A, real *dZ, int n, int d, int m, int depth) {
    if (depth == 1) {
        gemm_serial(dW, dY, X, d, d, n, 1, d, 0, d, d, 1);  // dW += dY^T X
        gemm_serial(dX, dY, W, n, d, d, 0, d, 0, d, d, 1);  // dX += dY W
        return;
    }
    const real *W1 = W, *W2 = W + (size_t)m * d;
    real *dW1 = dW, *dW2 = dW + (size_t)m * d;
    for (size_t i = 0; i < (size_t)n * d; i++) dX[i] += dY[i];
    gemm_serial(dW2, dY, A, d, m, n, 1, d, 0, m, m, 1);     // dW2 += dY^T A
    gemm_serial(dZ, dY, W2, n, m, d, 0, d, 0, m, m, 0);     // dA = dY W2
    for (size_t i = 0; i < (size_t)n * m; i++) dZ[i] *= silu_grad(Z[i]);
    gemm_serial(dW1, dZ, X, m, d, n, 1, m, 0, d, d, 1);     // dW1 += dZ^T X
    gemm_serial(dX, dZ, W1, n, d, m, 0, m, 0, d, d, 1);     // dX += dZ W1
}

// the factors of the chunk's n tokens (keys K, values V) at the chunk's start weights Wc
static void memory_factors(MemoryChunk *f, const real *Wc, const real *K, const real *V, int n, int d, int m, int depth) {
    memory_read_rows(f->E, f->Z, f->A, Wc, K, n, d, m, depth);
    for (size_t i = 0; i < (size_t)n * d; i++) f->E[i] -= V[i];
    if (depth == 1) return;
    gemm_serial(f->R, f->E, Wc + (size_t)m * d, n, m, d, 0, d, 0, m, m, 0); // R = E W2
    for (size_t i = 0; i < (size_t)n * m; i++) f->U[i] = f->R[i] * silu_grad(f->Z[i]);
}
// ... and their gradients (in f->dX, f->dY) back through that batch: dWc, dK, dV accumulated.
//   depth 2:  u = r * silu'(z):  dr = du silu'(z), dz = du r silu''(z) ;  r = W2c^T e: de += dr W2c^T, dW2 += e^T dr
//             e = k + W2c a - v: dk += de, dv -= de, dW2 += de^T a, da += de W2c ;  a = silu(z): dz += da silu'(z)
//             z = W1c k: dW1 += dz^T k, dk += dz W1c          (and dk += the Y gradient of block 0)
//   depth 1:  e = Wc k - v: dW += de^T k, dk += de Wc, dv -= de
static void memory_factors_backward(MemoryChunk *f, real *dWc, real *dK, real *dV, const real *Wc, const real *K,
                                    int n, int d, int m, int depth) {
    for (size_t i = 0; i < (size_t)n * d; i++) dK[i] += f->dY[0][i];
    if (depth == 1) {
        const real *dE = f->dX[0];
        for (size_t i = 0; i < (size_t)n * d; i++) dV[i] -= dE[i];
        gemm_serial(dWc, dE, K, d, d, n, 1, d, 0, d, d, 1);      // dW += dE^T K
        gemm_serial(dK, dE, Wc, n, d, d, 0, d, 0, d, d, 1);      // dK += dE Wc
        return;
    }
    const real *W1 = Wc, *W2 = Wc + (size_t)m * d;
    real *dW1 = dWc, *dW2 = dWc + (size_t)m * d, *dU = f->dX[0], *dE = f->dX[1], *dA = f->dY[1];
    for (size_t i = 0; i < (size_t)n * m; i++) {
        f->dR[i] = dU[i] * silu_grad(f->Z[i]);
        f->dZ[i] = dU[i] * f->R[i] * silu_grad2(f->Z[i]);
    }
    gemm_serial(dE, f->dR, W2, n, d, m, 0, m, 1, m, d, 1);    // dE += dR W2^T
    gemm_serial(dW2, f->E, f->dR, d, m, n, 1, d, 0, m, m, 1); // dW2 += E^T dR
    for (size_t i = 0; i < (size_t)n * d; i++) { dK[i] += dE[i]; dV[i] -= dE[i]; }
    gemm_serial(dW2, dE, f->A, d, m, n, 1, d, 0, m, m, 1);    // dW2 += dE^T A
    gemm_serial(dA, dE, W2, n, m, d, 0, d, 0, m, m, 1);       // dA += dE W2
    for (size_t i = 0; i < (size_t)n * m; i++) f->dZ[i] += dA[i] * silu_grad(f->Z[i]);
    gemm_serial(dW1, f->dZ, K, m, d, n, 1, m, 0, d, d, 1);    // dW1 += dZ^T K
    gemm_serial(dK, f->dZ, W1, n, d, m, 0, m, 0, d, d, 1);    // dK += dZ W1
}

// The clipped steps theta_t c_t of the chunk's tokens, c_t = min(1, clip / |g_t|) (section 5), with
// |g_t|^2 = 4 |e|^2 |k|^2 (depth 1) or 4 (|u|^2 |k|^2 + |e|^2 |a|^2) (depth 2), from the factors.
// sigma: (n) the |g_t|^2 / 4.
static void memory_clip_sigma(real *sigma, const MemoryChunk *f, const real *K, int n, int d, int m, int depth) {
    for (int t = 0; t < n; t++) {
        const real *e = f->E + (size_t)t * d, *kt = K + (size_t)t * d;
        real ee = dot(e, e, d), kk = dot(kt, kt, d);
        sigma[t] = depth == 1 ? ee * kk
                 : dot(f->U + (size_t)t * m, f->U + (size_t)t * m, m) * kk + ee * dot(f->A + (size_t)t * m, f->A + (size_t)t * m, m);
    }
}
static void memory_clip_steps(MemoryChunk *f, const real *K, const real *theta, int n, int d, int m, int depth, real clip) {
    memory_clip_sigma(f->step, f, K, n, d, m, depth);
    for (int t = 0; t < n; t++) f->step[t] = theta[t] * memory_clip_factor(2 * r_sqrt(f->step[t]), clip);
}
// its backward, given dstep: dtheta += c dstep ; where clipped (c = clip/G, G = 2 sqrt(sigma)):
// dsigma = theta dstep dc/dsigma = -2 c theta dstep / G^2, into the factors' gradients f->dX, f->dY
// (depth 1: de += 2 e |k|^2 dsigma, dk += 2 k |e|^2 dsigma; depth 2 also du, da likewise)
static void memory_clip_steps_backward(MemoryChunk *f, real *dtheta, const real *K, const real *theta,
                                       int n, int d, int m, int depth, real clip) {
    real *sigma = f->step; // the steps themselves are not needed again
    memory_clip_sigma(sigma, f, K, n, d, m, depth);
    for (int t = 0; t < n; t++) {
        real G = 2 * r_sqrt(sigma[t]), c = memory_clip_factor(G, clip);
        dtheta[t] += c * f->dstep[t];
        if (c == 1) continue;
        real ds = -2 * c * theta[t] * f->dstep[t] / (G * G);
        const real *e = f->E + (size_t)t * d, *kt = K + (size_t)t * d;
        real ee = dot(e, e, d), kk = dot(kt, kt, d);
        real *de = (depth == 1 ? f->dX[0] : f->dX[1]) + (size_t)t * d, *dk = f->dY[0] + (size_t)t * d;
        if (depth == 1) {
            for (int i = 0; i < d; i++) { de[i] += 2 * e[i] * kk * ds; dk[i] += 2 * kt[i] * ee * ds; }
            continue;
        }
        const real *u = f->U + (size_t)t * m, *a = f->A + (size_t)t * m;
        real uu = dot(u, u, m), aa = dot(a, a, m);
        real *du = f->dX[0] + (size_t)t * m, *da = f->dY[1] + (size_t)t * m;
        for (int i = 0; i < d; i++) { de[i] += 2 * e[i] * aa * ds; dk[i] += 2 * kt[i] * uu * ds; }
        for (int j = 0; j < m; j++) { du[j] += 2 * u[j] * kk * ds; da[j] += 2 * a[j] * ee * ds; }
    }
}
// The coefficients before each token t (row t of f->coef: cw, cs, ps, cx_0..n-1, ex_0..n-1;
// row n: after the last token), by the recurrence above.
static void memory_coefficients(MemoryChunk *f, const real *eta, const real *theta, const real *alpha, int n) {
    real *c = memory_coef(f, n, 0);
    memset(c, 0, (3 + 2 * (size_t)n) * sizeof(real));
    c[0] = c[2] = 1;
    for (int t = 0; t < n; t++) {
        const real *p = memory_coef(f, n, t), *pcx = p + 3, *pex = pcx + n;
        real *q = memory_coef(f, n, t + 1), *cx = q + 3, *ex = cx + n, a = 1 - alpha[t];
        for (int s = 0; s < n; s++) ex[s] = s < t ? eta[t] * pex[s] : s == t ? -2 * theta[t] : 0;
        q[2] = eta[t] * p[2];
        q[0] = a * p[0];
        q[1] = a * p[1] + q[2];
        for (int s = 0; s < n; s++) cx[s] = a * pcx[s] + ex[s];
    }
}
// Reverse mode through memory_coefficients: f->gcoef row t holds the gradients of the values
// after token t (used up); deta, dalpha, dtheta are accumulated.
static void memory_coefficients_backward(MemoryChunk *f, const real *eta, const real *alpha, real *deta, real *dalpha,
                                         real *dtheta, int n) {
    for (int t = n - 1; t >= 0; t--) {
        real *g = f->gcoef + (size_t)t * (3 + 2 * n), *gcx = g + 3, *gex = gcx + n;
        const real *p = memory_coef(f, n, t), *pcx = p + 3, *pex = pcx + n; // the values before token t
        real a = 1 - alpha[t], da = 0, de = 0;
        // only s <= t: cx_s and ex_s of a later token s are the constant 0 before it (what
        // those entries of the gradient rows hold is never used)
        for (int s = 0; s <= t; s++) {           // cx_s <- a cx_s + ex_s
            gex[s] += gcx[s];
            da -= gcx[s] * pcx[s];
            gcx[s] *= a;
        }
        da -= g[1] * p[1] + g[0] * p[0];           // cs <- a cs + ps ;  cw <- a cw
        g[2] += g[1];
        g[1] *= a;
        g[0] *= a;
        de += g[2] * p[2];                         // ps <- eta ps
        g[2] *= eta[t];
        dtheta[t] -= 2 * gex[t];                   // ex_t = -2 theta_t
        for (int s = 0; s < t; s++) {              // ex_s <- eta ex_s
            de += gex[s] * pex[s];
            gex[s] *= eta[t];
        }
        dalpha[t] += da;
        deta[t] += de;
        if (t > 0) { // what is left are the gradients of the values before token t, after token t-1
            real *gp = g - (3 + 2 * n);
            for (int i = 0; i < 3 + 2 * n; i++) gp[i] += g[i];
        }
    }
}

// The chunk's end state W, S (the next chunk's start) from its start Wc, Sc:
//   W = cw Wc + cs Sc + (diag(cx) X)^T Y ;  S = ps Sc + (diag(ex) X)^T Y
// with the coefficients after the chunk's last token (row n of f->coef: cx_s = cx_{n-1,s})
static void memory_chunk_advance(real *restrict W, real *restrict S, const real *restrict Wc, const real *restrict Sc,
                                 MemoryChunk *f, const real *K, int n, int d, int m, int depth) {
    int P = memory_params(depth, d, m);
    const real *c = memory_coef(f, n, n);
    for (int p = 0; p < P; p++) {
        W[p] = c[0] * Wc[p] + c[1] * Sc[p];
        S[p] = c[2] * Sc[p];
    }
    for (int b = 0; b < memory_blocks(depth); b++) {
        int rows, cols;
        size_t off;
        memory_block(depth, d, m, b, &rows, &cols, &off);
        const real *X = memory_factor_x(f, depth, b), *Y = memory_factor_y(f, b, K);
        for (int target = 0; target < 2; target++) {
            const real *coef = c + 3 + (target == 0 ? 0 : n); // cx, then ex
            for (int s = 0; s < n; s++)
                for (int r = 0; r < rows; r++) f->Xs[(size_t)s * rows + r] = coef[s] * X[(size_t)s * rows + r];
            gemm_serial((target == 0 ? W : S) + off, f->Xs, Y, rows, cols, n, 1, rows, 0, cols, cols, 1);
        }
    }
}
// Its backward. dW, dS: the adjoints of the end state in, of W_c, S_c out (without the share of
// the factors and reads at W_c, S_c, that the caller adds next). Into the last row of f->gcoef:
//   g_cw = <dW, W_c>, g_cs = <dW, S_c>, g_ps = <dS, S_c>, g_cx_s = x_s^T dW y_s, g_ex_s = x_s^T dS y_s ;
// into f->dX, f->dY (accumulated): dx_s = cx_s dW y_s + ex_s dS y_s, dy_s = cx_s dW^T x_s + ex_s dS^T x_s.
static void memory_chunk_advance_backward(real *dW, real *dS, MemoryChunk *f, const real *Wc, const real *Sc,
                                          const real *K, int n, int d, int m, int depth) {
    int P = memory_params(depth, d, m);
    const real *c = memory_coef(f, n, n), *cx = c + 3, *ex = cx + n;
    real *g = f->gcoef + (size_t)(n - 1) * (3 + 2 * n), *gcx = g + 3, *gex = gcx + n;
    for (int b = 0; b < memory_blocks(depth); b++) {
        int rows, cols;
        size_t off;
        memory_block(depth, d, m, b, &rows, &cols, &off);
        const real *X = memory_factor_x(f, depth, b), *Y = memory_factor_y(f, b, K);
        gemm_serial(f->M1, Y, dW + off, n, rows, cols, 0, cols, 1, cols, rows, 0); // M1 = Y dW^T   (n, rows)
        gemm_serial(f->M2, Y, dS + off, n, rows, cols, 0, cols, 1, cols, rows, 0); // M2 = Y dS^T
        gemm_serial(f->N1, X, dW + off, n, cols, rows, 0, rows, 0, cols, cols, 0); // N1 = X dW     (n, cols)
        gemm_serial(f->N2, X, dS + off, n, cols, rows, 0, rows, 0, cols, cols, 0); // N2 = X dS
        for (int s = 0; s < n; s++) {
            const real *x = X + (size_t)s * rows, *m1 = f->M1 + (size_t)s * rows, *m2 = f->M2 + (size_t)s * rows;
            const real *n1 = f->N1 + (size_t)s * cols, *n2 = f->N2 + (size_t)s * cols;
            real *dx = f->dX[b] + (size_t)s * rows, *dy = f->dY[b] + (size_t)s * cols;
            gcx[s] += dot(x, m1, rows);
            gex[s] += dot(x, m2, rows);
            for (int r = 0; r < rows; r++) dx[r] += cx[s] * m1[r] + ex[s] * m2[r];
            for (int j = 0; j < cols; j++) dy[j] += cx[s] * n1[j] + ex[s] * n2[j];
        }
    }
    // one pass over the state: g_cw, g_cs, g_ps, then W = cw Wc + cs Sc + ..., S = ps Sc + ...
    // backwards: dSc = cs dW + ps dS, dWc = cw dW
    real gw = 0, gs = 0, gp = 0;
    #pragma omp simd reduction(+ : gw, gs, gp)
    for (int p = 0; p < P; p++) {
        real w = dW[p], v = dS[p];
        gw += w * Wc[p];
        gs += w * Sc[p];
        gp += v * Sc[p];
        dS[p] = c[1] * w + c[2] * v;
        dW[p] = c[0] * w;
    }
    g[0] += gw;
    g[1] += gs;
    g[2] += gp;
}

// Titans' reads through one block: row t of OUT (n, rows) is W_t's block times row t of IN
// (n, cols):  OUT = diag(cw) IN Wc^T + diag(cs) IN Sc^T + (cx o G) X,  G = IN Y^T (n, n, kept)
// (cw, cs, cx after token t; cx_s = 0 for s > t)
static void memory_block_read(real *OUT, real *G, const real *IN, const real *Wcb, const real *Scb, MemoryChunk *f,
                              const real *X, const real *Y, int n, int rows, int cols) {
    gemm_serial(f->T1, IN, Wcb, n, rows, cols, 0, cols, 1, cols, rows, 0);
    gemm_serial(f->T2, IN, Scb, n, rows, cols, 0, cols, 1, cols, rows, 0);
    gemm_serial(G, IN, Y, n, n, cols, 0, cols, 1, cols, n, 0);
    for (int t = 0; t < n; t++) {
        const real *c = memory_coef(f, n, t + 1), *cx = c + 3;
        for (int r = 0; r < rows; r++) OUT[(size_t)t * rows + r] = c[0] * f->T1[(size_t)t * rows + r] + c[1] * f->T2[(size_t)t * rows + r];
        for (int s = 0; s < n; s++) f->H[(size_t)t * n + s] = s <= t ? cx[s] * G[(size_t)t * n + s] : 0;
    }
    gemm_serial(OUT, f->H, X, n, rows, n, 0, n, 0, rows, rows, 1);
}
// its backward, from dOUT: dIN, dWcb, dScb, the factors' dX, dY and the coefficients' gradients
// (f->gcoef) accumulated. The first two terms go through P1 = dOUT Wc and P2 = dOUT Sc (n, cols),
// which the forward's IN Wc^T and IN Sc^T need not be recomputed for:
//   g_cw_t = P1_t . IN_t,  g_cs_t = P2_t . IN_t,  dIN_t += cw_t P1_t + cs_t P2_t,
//   dWc += (cw o dOUT)^T IN,  dSc += (cs o dOUT)^T IN
// and the third through dH = dOUT X^T: g_cx_ts += dH_ts G_ts, dG = cx o dH, then through H = cx o G
// and G = IN Y^T:  dX += H^T dOUT,  dIN += dG Y,  dY += dG^T IN
static void memory_block_read_backward(real *dIN, real *dWcb, real *dScb, real *dX, real *dY, const real *dOUT,
                                       const real *G, const real *IN, const real *Wcb, const real *Scb,
                                       MemoryChunk *f, const real *X, const real *Y, int n, int rows, int cols) {
    real *P1 = f->T1, *P2 = f->T2, *D1 = f->M1, *D2 = f->M2, *dH = f->H, *H = f->H2;
    gemm_serial(P1, dOUT, Wcb, n, cols, rows, 0, rows, 0, cols, cols, 0);
    gemm_serial(P2, dOUT, Scb, n, cols, rows, 0, rows, 0, cols, cols, 0);
    gemm_serial(dH, dOUT, X, n, n, rows, 0, rows, 1, rows, n, 0);
    for (int t = 0; t < n; t++) {
        const real *c = memory_coef(f, n, t + 1), *cx = c + 3, *dout = dOUT + (size_t)t * rows;
        const real *in = IN + (size_t)t * cols, *p1 = P1 + (size_t)t * cols, *p2 = P2 + (size_t)t * cols;
        real *g = f->gcoef + (size_t)t * (3 + 2 * n), *gcx = g + 3, *din = dIN + (size_t)t * cols;
        g[0] += dot(p1, in, cols);
        g[1] += dot(p2, in, cols);
        for (int j = 0; j < cols; j++) din[j] += c[0] * p1[j] + c[1] * p2[j];
        for (int r = 0; r < rows; r++) {
            D1[(size_t)t * rows + r] = c[0] * dout[r];
            D2[(size_t)t * rows + r] = c[1] * dout[r];
        }
        for (int s = 0; s < n; s++) {
            size_t ts = (size_t)t * n + s;
            real dh = s <= t ? dH[ts] : 0;
            gcx[s] += dh * G[ts];
            dH[ts] = dh * cx[s];                   // now dG
            H[ts] = s <= t ? cx[s] * G[ts] : 0;
        }
    }
    gemm_serial(dX, H, dOUT, n, rows, n, 1, n, 0, rows, rows, 1);     // dX += H^T dOUT
    gemm_serial(dWcb, D1, IN, rows, cols, n, 1, rows, 0, cols, cols, 1); // dWc += (cw o dOUT)^T IN
    gemm_serial(dScb, D2, IN, rows, cols, n, 1, rows, 0, cols, cols, 1); // dSc += (cs o dOUT)^T IN
    gemm_serial(dIN, dH, Y, n, cols, n, 0, n, 0, cols, cols, 1);      // dIN += dG Y
    gemm_serial(dY, dH, IN, n, cols, n, 1, n, 0, cols, cols, 1);      // dY += dG^T IN
}

// Titans' read-out of the chunk, y_t = M_{W_t}(q_t):  Z = reads of Q through W1, A = silu(Z),
// Y = Q + reads of A through W2  (depth 1: Y = reads of Q through W)
static void memory_chunk_read(real *Yout, const real *Q, const real *Wc, const real *Sc, MemoryChunk *f,
                              const real *K, int n, int d, int m, int depth) {
    if (depth == 1) { memory_block_read(Yout, f->G[0], Q, Wc, Sc, f, f->E, K, n, d, d); return; }
    size_t o2 = (size_t)m * d;
    memory_block_read(f->Zq, f->G[0], Q, Wc, Sc, f, f->U, K, n, m, d);
    for (size_t i = 0; i < (size_t)n * m; i++) f->Aq[i] = silu(f->Zq[i]);
    memory_block_read(Yout, f->G[1], f->Aq, Wc + o2, Sc + o2, f, f->E, f->A, n, d, m);
    for (size_t i = 0; i < (size_t)n * d; i++) Yout[i] += Q[i];
}
static void memory_chunk_read_backward(real *dQ, real *dWc, real *dSc, const real *dYout, const real *Q,
                                       const real *Wc, const real *Sc, MemoryChunk *f, const real *K,
                                       int n, int d, int m, int depth) {
    if (depth == 1) {
        memory_block_read_backward(dQ, dWc, dSc, f->dX[0], f->dY[0], dYout, f->G[0], Q, Wc, Sc, f, f->E, K, n, d, d);
        return;
    }
    size_t o2 = (size_t)m * d; // the hidden layer Zq, Aq: kept by the forward
    memset(f->dZq, 0, (size_t)n * m * sizeof(real));
    for (size_t i = 0; i < (size_t)n * d; i++) dQ[i] += dYout[i];
    memory_block_read_backward(f->dZq, dWc + o2, dSc + o2, f->dX[1], f->dY[1], dYout, f->G[1], f->Aq, Wc + o2,
                               Sc + o2, f, f->E, f->A, n, d, m);
    for (size_t i = 0; i < (size_t)n * m; i++) f->dZq[i] *= silu_grad(f->Zq[i]);
    memory_block_read_backward(dQ, dWc, dSc, f->dX[0], f->dY[0], f->dZq, f->G[0], Q, Wc, Sc, f, f->U, K, n, m, d);
}

// y (T, d) from k, v, q (T, d) and the gates (T); states: see memory_state_size().
static void memory_chunked_forward(real *y, real *states, real *scratch, const real *k, const real *v, const real *q,
                           const real *theta, const real *eta, const real *alpha, const real *W0,
                           int T, MemorySize ms, int read_chunk_start) {
    int d = ms.d, m = ms.m, depth = ms.depth, chunk = ms.chunk;
    int P = memory_params(depth, d, m), len = memory_chunk_len(T, ms);
    size_t record = memory_record_size(T, ms);
    MemoryChunk f;
    memory_chunk_layout(&f, scratch, len, d, m);
    memcpy(states, W0, P * sizeof(real)); // the first chunk's start
    memset(states + P, 0, P * sizeof(real));
    for (int c = 0, s = 0; s < T; c++, s += chunk) {
        int n = T - s < chunk ? T - s : chunk;
        // the chunk's start, in its record; its end goes to the next record (after the last chunk:
        // to the two P-vectors after the records)
        real *Wc = states + c * record, *Sc = Wc + P, *Wn = Wc + record, *Sn = Wn + P;
        const real *K = k + (size_t)s * d, *Q = q + (size_t)s * d;
        memory_chunk_saved(&f, Sc + P, len, d, m, depth);
        memory_factors(&f, Wc, K, v + (size_t)s * d, n, d, m, depth);
        memory_clip_steps(&f, K, theta + s, n, d, m, depth, ms.clip);
        memory_coefficients(&f, eta + s, f.step, alpha + s, n);
        if (read_chunk_start) memory_read_rows(y + (size_t)s * d, f.Zq, f.Aq, Wc, Q, n, d, m, depth); // Hope
        else                  memory_chunk_read(y + (size_t)s * d, Q, Wc, Sc, &f, K, n, d, m, depth);  // Titans
        memory_chunk_advance(Wn, Sn, Wc, Sc, &f, K, n, d, m, depth);
    }
}

// Accumulates the gradients of every input of memory_chunked_forward, given dy (T, d), going back
// through the chunks. dW, dS: the adjoints of the state at the end of the chunk at hand (zero at
// the end of the sequence); each chunk's backward first turns them into those of its start W_c,
// S_c, then adds what the chunk's reads and factors contributed at W_c, S_c. At the very start
// dW0 += dW. (v reaches it through the kept factors.)
static void memory_chunked_backward(real *dk, real *dv, real *dq, real *dtheta, real *deta, real *dalpha, real *dW0,
                            real *scratch, const real *dy, const real *states, const real *k,
                            const real *q, const real *theta, const real *eta, const real *alpha,
                            int T, MemorySize ms, int read_chunk_start) {
    int d = ms.d, m = ms.m, depth = ms.depth, chunk = ms.chunk;
    int P = memory_params(depth, d, m), len = memory_chunk_len(T, ms);
    size_t record = memory_record_size(T, ms);
    real *dW = scratch, *dS = dW + P;
    MemoryChunk f;
    memory_chunk_layout(&f, dS + P, len, d, m);
    memset(dW, 0, P * sizeof(real));
    memset(dS, 0, P * sizeof(real));
    int chunks = (T + chunk - 1) / chunk;
    for (int c = chunks - 1; c >= 0; c--) {
        int s = c * chunk, n = T - s < chunk ? T - s : chunk;
        const real *Wc = states + c * record, *Sc = Wc + P, *K = k + (size_t)s * d, *Q = q + (size_t)s * d;
        memory_chunk_saved(&f, (real *)Sc + P, len, d, m, depth); // the forward's factors and coefficients
#if defined(__GNUC__)
        // the record of the chunk before was written long ago (the whole forward ran since): start
        // bringing it into L2 now, while this chunk computes, instead of waiting on each line later
        if (c > 0)
            for (size_t i = 0; i < record; i += 64 / sizeof(real)) __builtin_prefetch(Wc - record + i, 0, 2);
#endif
        memset(f.gcoef, 0, (size_t)n * (3 + 2 * n) * sizeof(real));
        int nx0 = depth == 1 ? d : m;
        memset(f.dX[0], 0, (size_t)n * nx0 * sizeof(real));
        memset(f.dY[0], 0, (size_t)n * d * sizeof(real));
        if (depth == 2) {
            memset(f.dX[1], 0, (size_t)n * d * sizeof(real));
            memset(f.dY[1], 0, (size_t)n * m * sizeof(real));
        }
        // the last chunk's end state is not used: its adjoints are zero, and so is all this
        if (c < chunks - 1) memory_chunk_advance_backward(dW, dS, &f, Wc, Sc, K, n, d, m, depth);
        if (read_chunk_start) { // Hope: the reads at W_c, one batch (Zq, Aq kept by the forward)
            memory_read_rows_backward(dW, dq + (size_t)s * d, dy + (size_t)s * d, Wc, Q, f.Zq, f.Aq, f.dZq, n, d, m, depth);
        } else {
            memory_chunk_read_backward(dq + (size_t)s * d, dW, dS, dy + (size_t)s * d, Q, Wc, Sc, &f, K, n, d, m, depth);
        }
        memset(f.dstep, 0, (size_t)n * sizeof(real));
        memory_coefficients_backward(&f, eta + s, alpha + s, deta + s, dalpha + s, f.dstep, n);
        memory_clip_steps_backward(&f, dtheta + s, K, theta + s, n, d, m, depth, ms.clip);
        memory_factors_backward(&f, dW, dk + (size_t)s * d, dv + (size_t)s * d, Wc, K, n, d, m, depth);
    }
    for (int p = 0; p < P; p++) dW0[p] += dW[p];
}
