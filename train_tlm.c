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
 * backward. The taper is section 1: taper_widths() turns a schedule into per-layer widths
 * (taper_group_widths() the grouped form; taper_layer_widths() the route from the options),
 * and its output, mlp_widths[l], is the width every MLP tensor of layer l is allocated with.
 * Nothing else in the method depends on the taper.
 *
 * Sections, in reading order:
 *    1. THE TAPER: per-layer MLP widths at a fixed budget
 *    2. the model's structures: precision and workspace, config, parameter table, per-layer
 *       weight views, activations
 *    3. layer kernels, each forward followed by its backward, on one matmul contract
 *    4. the neural memory as the papers write it (the token-by-token recurrence), and the
 *       memory module around it (Titans' mixer branch, Hope's fast levels)
 *    5. the model: building it, the mixer, the MLP slot, forward and backward
 *    6. AdamW
 *    7. training step, evaluation, sampling, layer analysis        (the method ends here)
 *    8. main: the command line, then evaluate, analyze or train
 * Appendices, the fast forms of what the main text states plainly (each tested against it):
 *    A. the fast matmul: blocking, packing, AVX-512 micro-kernels, gemm_small; exp_float,
 *       sum16 and dot
 *    B. the chunked memory: the recurrence a whole chunk at a time, in closed form
 * The program around the method lives in dev/tlmc/, one header per part, each with its contract:
 * utils.h (errors, checked I/O, random numbers), ranks.h (MPI), dataloader.h, tokenizer.h,
 * options.h (the option table), checkpoint.h (files and their safety), log.h (JSONL), signals.h.
 *
 * Build: make train_tlm   (gcc -O3 -march=native -fopenmp)   Tests: make test
 * test_tlm.c #includes this file with TLM_TESTING defined (no main) and, for the
 * gradient checks, TLM_DOUBLE, so the tests run exactly this code in double precision.
 */
#define _XOPEN_SOURCE 700
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// One code path, two precisions: float for training, double for the gradient checks.
#ifdef TLM_DOUBLE
typedef double real;
#else
typedef float real;
#endif

// The program around the method that the method calls (each header states its contract):
#include "dev/tlmc/utils.h"      // die(), xcalloc(), checked file I/O, wall_time(), threads, Rng
#include "dev/tlmc/ranks.h"      // data parallel over MPI ranks: world, ranks_sum_step()
#include "dev/tlmc/dataloader.h" // DataLoader: the training order, the validation batches
#include "dev/tlmc/tokenizer.h"  // Tokenizer: a token's bytes (and the GPT-2 prompt encoder)

// ----------------------------------------------------------------------------
// 1. THE TAPER: per-layer MLP widths at a fixed budget
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
typedef enum { TAPER_UNIFORM, TAPER_COSINE, TAPER_LINEAR, TAPER_SIGMOID, TAPER_REVERSE,
               TAPER_SCHEDULES,
               TAPER_GROUPS = TAPER_SCHEDULES, TAPER_EXPLICIT, TAPER_COUNT } Taper;
static const char *taper_names[TAPER_COUNT] =
    { "uniform", "cosine", "linear", "sigmoid", "reverse", "groups", "explicit" };

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
                     "(need a larger --mlp-width, a smaller --taper-multiple or a milder "
                     "taper)", what,
                     reversed ? L - 1 - l : l, multiple);
            return -1;
        }
        widths[l] *= multiple;
    }
    return 0;
}

static int taper_check_shape(int L, int H, int multiple, char *err, size_t errlen) {
    if (L < 1 || H < 1 || multiple < 1) {
        snprintf(err, errlen, "layers, width and multiple must be positive (got %d, %d, %d)", L,
                 H, multiple);
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
    if (taper != TAPER_UNIFORM && (!(start > 0) || !(end > 0) || !isfinite(start)
                                   || !isfinite(end))) {
        snprintf(err, errlen, "taper start and end must be positive (got %g, %g)", start, end);
        return -1;
    }
    // reverse: the cosine's widths, computed in slot order, then handed to the layers last first
    int mirror = taper == TAPER_REVERSE;
    Taper shape = mirror ? TAPER_COSINE : taper;
    double f[L];
    for (int l = 0; l < L; l++)
        f[l] = taper_factor(shape, L > 1 ? (double)l / (L - 1) : 0.0, start, end);
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

// --- the taper's route: from the options to every layer's width ------------------------------
enum { MAX_LAYERS = 64, MAX_CMS_LEVELS = 4 }; // the deepest stack; Hope's levels (section 2)

// The options that choose a taper (--taper and its --taper-start/end, groups:.., --mlp-widths,
// --taper-multiple, --mlp-width; in the Config of section 2, which config_finish passes here).
typedef struct {
    Taper taper;           // a schedule, TAPER_GROUPS or TAPER_EXPLICIT
    double start, end;     // a schedule's first and last layer's width in multiples of H
    int multiple;          // --taper-multiple
    const double *group;   // groups: each group's multiple of H (groups values)
    int groups;
    const int *given;      // explicit: --mlp-widths (0 after the last), summing to L * mean
    int mean;              // --mlp-width, the mean width H of the MLPs
} TaperOptions;

// The widths of a taper at mean width H (the MLP's, or with `fast` Hope's fast levels, which
// follow the same taper; explicit widths then act as L groups of w_l / mlp_width). Returns 0,
// or -1 with a one-line reason in err naming the flag.
static int taper_layer_widths(int *widths, int L, int H, const TaperOptions *t, int fast,
                              char *err, size_t errlen) {
    int n = 0;
    char why[200];
    int rc = 0;
    if (t->taper == TAPER_GROUPS) {
        rc = taper_group_widths(widths, L, H, t->group, t->groups, t->multiple, why, sizeof(why));
    } else if (t->taper == TAPER_EXPLICIT) {
        long sum = 0;
        while (n < L && t->given[n] > 0) sum += t->given[n++];
        if (n != L) {
            snprintf(err, errlen, "--mlp-widths gives %d widths for --layers %d", n, L);
            return -1;
        }
        if (sum != (long)L * t->mean) {
            snprintf(err, errlen, "--mlp-widths sum to %ld, they must sum to --layers x "
                                  "--mlp-width = %d x %d = %ld",
                     sum, L, t->mean, (long)L * t->mean);
            return -1;
        }
        if (!fast) {
            for (int l = 0; l < L; l++) widths[l] = t->given[l];
            return 0;
        }
        double f[MAX_LAYERS];
        for (int l = 0; l < L; l++) f[l] = (double)t->given[l] / t->mean;
        rc = taper_group_widths(widths, L, H, f, L, t->multiple, why, sizeof(why));
    } else {
        rc = taper_widths(widths, L, H, t->taper, t->start, t->end, t->multiple, why, sizeof(why));
    }
    if (rc) snprintf(err, errlen, "--taper: %s", why);
    return rc;
}

// ----------------------------------------------------------------------------
// 2. the model's structures: precision and workspace, config, parameter table, per-layer
//    weight views, activations

#ifdef TLM_DOUBLE
static inline real r_exp(real x) { return exp(x); }
static inline real r_log(real x) { return log(x); }
static inline real r_sqrt(real x) { return sqrt(x); }
static inline real r_cos(real x) { return cos(x); }
static inline real r_sin(real x) { return sin(x); }
#else
static inline float exp_float(float x);
static inline real r_exp(real x) { return exp_float(x); }
static inline real r_log(real x) { return logf(x); }
static inline real r_sqrt(real x) { return sqrtf(x); }
static inline real r_cos(real x) { return cosf(x); }
static inline real r_sin(real x) { return sinf(x); }
#endif
static inline real sigmoid(real x) { return 1 / (1 + r_exp(-x)); }

// --- vector helpers: e^x, sums and dot products whose loops vectorize (appendix A) -----------
// exp_float(x): e^x in float, within a few ulp of expf; 0 below -87, e^88 above 88, NaN stays NaN
// sum16(x, n):  x[0] + ... + x[n-1] in 16 running sums, folded in a fixed order (the same for
//               any thread count and alignment)
// dot(a, b, n): a[0] b[0] + ... + a[n-1] b[n-1] of short rows, in 16 lanes and a fixed fold
enum { LANES = 16 }; // a zmm register's floats
static inline real sum16(const real *x, int n);
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

// --- the model's configuration ----------------------------------------------------------------

typedef enum { ARCH_TRANSFORMER, ARCH_GATED, ARCH_TITANS, ARCH_HOPE, ARCH_COUNT } Arch;
static const char *arch_names[ARCH_COUNT] = { "transformer", "gated", "titans", "hope" };

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
    double mem_lr, mem_clip;                // titans, hope: theta_max, inner-gradient norm bound
    int mem_conv, mem_silu;                 // titans, hope: q/k/v conv kernel (0: none), SiLU
    int cms_levels, cms_width;              // hope: levels incl. the slow SwiGLU; fast width
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
    real *mem_conv;                 // (3C, K)   titans: causal depthwise conv on q | k | v (K =
                                    // mem_conv)
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

static real *declare(ParamTable *pt, const char *name, int layer, int rows, int cols, int is_mlp,
                     int decay, Init init) {
    ParamTensor *t = &pt->tensor[pt->count++];
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->layer = layer; t->rows = rows; t->cols = cols;
    t->is_mlp = is_mlp; t->decay = decay; t->init = init;
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
            if (c->mem_conv)
                lw->mem_conv = declare(pt, "mem_conv", l, 3 * C, c->mem_conv, 0, 0, INIT_CONV);
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
                if (c->mem_conv)
                    lw->cms_conv[k] = declare(pt, "cms_conv", l, 3 * C, c->mem_conv, 1,
                                              0, INIT_CONV);
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
    Scratch att_scratch;        // (threads, ATT_BLOCK, T) attention backward: a query block's dS
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
    real *micro_grads;          // (num_params) --grad-accum > 1: a later micro-batch's gradient
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
} Model;


// ----------------------------------------------------------------------------
// 3. layer kernels, each forward followed by its backward
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
//   A(i,k) = trans_a ? A[k*lda + i] : A[i*lda + k],
//   B(k,j) = trans_b ? B[j*ldb + k] : B[k*ldb + j],
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
    for (int n = 0; n < N; n++)
        memcpy(x + (size_t)n * C, wte + (size_t)tokens[n] * C, C * sizeof(real));
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
static void rope_rotate(real *x, const real *tab, int B, int T, int heads, int hs, int ld,
                        real sign) {
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
static int attention_first_key(int i0, int window) {
    return window > 0 && i0 - window + 1 > 0 ? i0 - window + 1 : 0;
}

// Query t's row of p (T), from its scores s_tu (u in [first key, t]): p_tu = softmax, 0 elsewhere
static void attention_softmax_row(real *pt, int t, int T, int window, real scale) {
    int u0 = attention_first_key(t, window);
    real maxs = -FLT_MAX;
    for (int u = u0; u <= t; u++) maxs = pt[u] > maxs ? pt[u] : maxs;
    for (int u = u0; u <= t; u++) pt[u] = r_exp((pt[u] - maxs) * scale);
    real inv = 1 / sum16(pt + u0, t + 1 - u0);
    for (int u = u0; u <= t; u++) pt[u] *= inv;
    for (int u = 0; u < u0; u++) pt[u] = 0;
    for (int u = t + 1; u < T; u++) pt[u] = 0;
}

static void attention_forward(real *out, real *att, const real *qkv, int B, int T, int C, int NH,
                              int window) {
    int hs = C / NH;
    real scale = 1 / r_sqrt((real)hs);
    gemm_init();
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            // rows 3C apart
            const real *q = qkv + (size_t)b * T * 3 * C + h * hs, *k = q + C, *v = q + 2 * C;
            // (T, T)
            real *p = att + ((size_t)b * NH + h) * T * T;
            // rows C apart
            real *o = out + (size_t)b * T * C + h * hs;
            for (int i0 = 0; i0 < T; i0 += ATT_BLOCK) {
                int i1 = i0 + ATT_BLOCK < T ? i0 + ATT_BLOCK : T,
                        lo = attention_first_key(i0, window);
                // S[i0:i1, lo:i1] = Q[i0:i1] K[lo:i1]^T, written into the rows of p
                gemm_serial(p + (size_t)i0 * T + lo, q + (size_t)i0 * 3 * C, k + (size_t)lo * 3 * C,
                            i1 - i0, i1 - lo, hs, 0, 3 * C, 1, 3 * C, T, 0);
                for (int t = i0; t < i1; t++)
                    attention_softmax_row(p + (size_t)t * T, t, T, window, scale);
                // O[i0:i1] = P[i0:i1, lo:i1] V[lo:i1]
                gemm_serial(o + (size_t)i0 * C, p + (size_t)i0 * T + lo, v + (size_t)lo * 3 * C,
                            i1 - i0, hs, i1 - lo, 0, T, 0, 3 * C, C, 0);
            }
        }
}
// dP = dO V^T ;  dV += P^T dO ;  dS = P * (dP - rowsum(P * dP)) / sqrt(hs) ;
// dQ += dS K ;  dK += dS^T Q.
// dqkv (B,T,3C) is accumulated. One thread owns one (b, h), so its dk, dv rows never race.
// scratch: per thread ATT_BLOCK x T, for dS of one block of queries.
static void attention_backward(real *dqkv, Scratch scratch, const real *dout, const real *qkv,
                               const real *att,
                               int B, int T, int C, int NH, int window) {
    int hs = C / NH;
    real scale = 1 / r_sqrt((real)hs);
    gemm_init();
    #pragma omp parallel for collapse(2) num_threads(scratch_team(scratch))
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const real *q = qkv + (size_t)b * T * 3 * C + h * hs, *k = q + C, *v = q + 2 * C;
            real *dq = dqkv + (size_t)b * T * 3 * C + h * hs, *dk = dq + C, *dv = dq + 2 * C;
            const real *p = att + ((size_t)b * NH + h) * T * T,
                    *dout_bh = dout + (size_t)b * T * C + h * hs;
            real *ds = scratch_mine(scratch); // (i1 - i0, i1 - lo), rows i1 - lo apart
            for (int i0 = 0; i0 < T; i0 += ATT_BLOCK) {
                int i1 = i0 + ATT_BLOCK < T ? i0 + ATT_BLOCK : T,
                        lo = attention_first_key(i0, window);
                int rows = i1 - i0, keys = i1 - lo;
                const real *do_blk = dout_bh + (size_t)i0 * C, *p_blk = p + (size_t)i0 * T + lo;
                // dV[lo:i1] += P[i0:i1, lo:i1]^T dO[i0:i1]
                gemm_serial(dv + (size_t)lo * 3 * C, p_blk, do_blk, keys, hs, rows, 1, T, 0,
                            C, 3 * C, 1);
                // dP[i0:i1, lo:i1] = dO[i0:i1] V[lo:i1]^T, then dS in place
                gemm_serial(ds, do_blk, v + (size_t)lo * 3 * C, rows, keys, hs, 0, C, 1,
                            3 * C, keys, 0);
                for (int t = i0; t < i1; t++) {
                    const real *pt = p + (size_t)t * T + lo; // pt[j], dst[j]: key lo + j
                    real *dst = ds + (size_t)(t - i0) * keys, pdp = 0;
                    int j0 = attention_first_key(t, window) - lo, j1 = t - lo; // the keys t sees
                    for (int j = j0; j <= j1; j++) pdp += pt[j] * dst[j];
                    for (int j = 0; j < keys; j++)
                        dst[j] = j >= j0 && j <= j1 ? pt[j] * (dst[j] - pdp) * scale : 0;
                }
                // dQ[i0:i1] += dS K[lo:i1] ;  dK[lo:i1] += dS^T Q[i0:i1]
                gemm_serial(dq + (size_t)i0 * 3 * C, ds, k + (size_t)lo * 3 * C, rows, hs, keys, 0,
                            keys, 0, 3 * C, 3 * C, 1);
                gemm_serial(dk + (size_t)lo * 3 * C, ds, q + (size_t)i0 * 3 * C, keys, hs, rows, 1,
                            keys, 0, 3 * C, 3 * C, 1);
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
static void gate_backward(real *da, real *dz, const real *dout, const real *a, const real *g, int N,
                          int C, int G) {
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
// 4. the neural memory (Titans; Hope's fast levels), as the papers write it
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
    return (MemorySize){ c->dim / c->heads, c->mem_hidden, c->mem_depth, c->mem_chunk,
                         (real)c->mem_lr, (real)c->mem_clip,
                         c->mem_conv, c->mem_silu };
}
static MemorySize hope_level(const Config *c, int l, int k) {
    return (MemorySize){ c->dim, c->cms_widths[l], 2, c->cms_chunks[k], (real)c->mem_lr,
                         (real)c->mem_clip,
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
    return 2 * (size_t)memory_params(ms.depth, ms.d,
                                     ms.m) + memory_chunk_size(memory_chunk_len(T, ms), ms.d, ms.m);
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
static inline real memory_clip_factor(real G,
                                      real clip) { return clip > 0 && G > clip ? clip / G : 1; }

static inline real silu(real z) { return z * sigmoid(z); }
static inline real silu_grad(real z) { real s = sigmoid(z); return s * (1 + z * (1 - s)); }
static inline real silu_grad2(real z) {
    real s = sigmoid(z);
    return s * (1 - s) * (2 + z * (1 - 2 * s));
}

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
                                  const real *restrict W, const real *restrict x, int d,
                                          int m, int depth,
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
//   depth 2:  z = W1 k, a = silu(z), e = k + W2 a - v ;  g2 = 2 e a^T ;  g1 = 2 (W2^T e * silu'(z))
//   k^T
// vec: scratch of 3m + d
static void memory_loss_grad(real *g, const real *W, const real *k, const real *v, int d, int m,
                             int depth, real *vec) {
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
static void memory_loss_grad_backward(real *dW, real *dk, real *dv, const real *D, real scale,
                                      const real *W,
                                 const real *k, const real *v, int d, int m, int depth, real *vec) {
    if (depth == 1) {
        // e = W k - v ; g = 2 e k^T.  de = 2 dg k ; dk += 2 dg^T e ; then through e: dW += de k^T,
        // dk += W^T de, dv -= de
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
        // r = W2^T e, u = r * silu'(z)
        for (int j = 0; j < m; j++) r[j] += W2[i * m + j] * e[i];
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
static inline void memory_recurrence_forward(real *y, real *states, real *scratch, const real *k,
                                             const real *v, const real *q,
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
            memory_read(y + (size_t)t * d, read_chunk_start ? Wc : W, q + (size_t)t * d, d, m,
                        depth, vec);
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
static inline void memory_recurrence_backward(real *dk, real *dv, real *dq, real *dtheta,
                                              real *deta, real *dalpha, real *dW0,
                            real *scratch, const real *dy, const real *states, const real *k,
                                    const real *v,
                            const real *q, const real *theta, const real *eta, const real *alpha,
                            int T, MemorySize ms, int read_chunk_start) {
    int d = ms.d, m = ms.m, depth = ms.depth, chunk = ms.chunk;
    int P = memory_params(depth, d, m), len = memory_chunk_len(T, ms);
    size_t record = memory_record_size(T, ms);
    real *Wt = scratch, *St = Wt + (size_t)len * P, *dW = St + (size_t)len * P, *dS = dW + P,
            *dWc = dS + P;
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
            const real *Wp = i ? Wt + (size_t)(i - 1) * P : Wc,
                    *Sp = i ? St + (size_t)(i - 1) * P : Sc;
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
            const real *Wp = i ? Wt + (size_t)(i - 1) * P : Wc,
                    *Sp = i ? St + (size_t)(i - 1) * P : Sc;
            if (read_chunk_start)
                memory_read_backward(dWc, dq + (size_t)t * d, dy + (size_t)t * d, Wc,
                                     q + (size_t)t * d, d, m, depth, vec);
            else
                memory_read_backward(dW, dq + (size_t)t * d, dy + (size_t)t * d, Wi,
                                     q + (size_t)t * d, d, m, depth, vec);
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
            memory_loss_grad_backward(dWc, dk + (size_t)t * d, dv + (size_t)t * d, dS,
                                      -theta[t] * c, Wc,
                                 k + (size_t)t * d, v + (size_t)t * d, d, m, depth, vec);
            if (c < 1)
                memory_loss_grad_backward(dWc, dk + (size_t)t * d, dv + (size_t)t * d, g,
                                          -c / (G * G) * theta[t] * dth, Wc,
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
static void memory_chunked_forward(real *y, real *states, real *scratch, const real *k,
                                   const real *v,
                                   const real *q, const real *theta, const real *eta,
                                           const real *alpha,
                                   const real *W0, int T, MemorySize ms, int read_chunk_start);
// The same forward for the token at position p alone, its earlier tokens already run (sampling
// with a cache): p's chunk c again, tokens c*chunk..p, from W_c, S_c in its record (p = 0: the
// first record set to W0, 0), which writes y's rows of the chunk so far and, at its last token,
// the next chunk's start. Every array laid out for T tokens, as memory_chunked_forward lays it.
static void memory_chunked_forward_at(real *y, real *states, real *scratch, const real *k,
                                      const real *v, const real *q, const real *theta,
                                      const real *eta, const real *alpha, const real *W0, int T,
                                      int p, MemorySize ms, int read_chunk_start);
static void memory_chunked_backward(real *dk, real *dv, real *dq, real *dtheta, real *deta,
                                    real *dalpha,
                                    real *dW0, real *scratch, const real *dy, const real *states,
                                    const real *k, const real *q, const real *theta,
                                            const real *eta, const real *alpha,
                                    int T, MemorySize ms, int read_chunk_start);

// --- causal depthwise convolution over time (the memory's q, k, v) --------------------------
// out[b,t,c] = sum_{j<K, j<=t} w[c,j] x[b,t-j,c]    x, out (B,T,CH); w (CH,K), tap 0 this token
// The loops run over the channels innermost, reading w's taps from a copy wt transposed to (K,CH)
// (w's rows are a channel's K taps: read in place, each tap would be a stride-K gather).
static real *conv_taps(const real *w, int CH, int K) { // wt (K,CH), to be freed
    real *wt = xcalloc((size_t)K * CH, sizeof(real), "conv taps");
    for (int c = 0; c < CH; c++)
        for (int j = 0; j < K; j++) wt[(size_t)j * CH + c] = w[(size_t)c * K + j];
    return wt;
}
// one row: o (CH) at position t, from x_t (CH) and the rows before it (x_t - j CH)
static void conv_row(real *o, const real *x_t, const real *wt, int CH, int K, int t) {
    for (int c = 0; c < CH; c++) o[c] = 0;
    for (int j = 0; j < K && j <= t; j++) {
        const real *xr = x_t - (size_t)j * CH, *wj = wt + (size_t)j * CH;
        for (int c = 0; c < CH; c++) o[c] += wj[c] * xr[c];
    }
}
static void conv_forward(real *out, const real *x, const real *w, int B, int T, int CH, int K) {
    real *wt = conv_taps(w, CH, K);
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t row = ((size_t)b * T + t) * CH;
            conv_row(out + row, x + row, wt, CH, K, t);
        }
    free(wt);
}
// dx[b,t,c] += sum_{j, t+j<T} w[c,j] dout[b,t+j,c] ;   dw[c,j] += sum_{b,t>=j} dout[b,t,c]
// x[b,t-j,c]
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
//   p = x Wqkv^T ;  p <- CausalDepthwiseConv_K(p) ;  p <- silu(p)      (each optional: mem_conv,
//   mem_silu)
//   q, k, v = split_heads(p),  k <- k/|k|, q <- q/|q|        per head of size hs
// The convolution mixes each channel over the K = 4 latest tokens (Mamba's and GLA's kernel, which
// Titans follows): a key then says what the last few tokens were, not one token alone, at
// 3CK parameters and a cost far below the projection's; it starts as the identity.
//   z = x Wg^T + b :  theta = mem_lr sigmoid(z_step), eta = eta_max sigmoid(z_mom), alpha =
//   sigmoid(z_forget)
// theta does not depend on the chunk: the chunk only sets how closely the token-by-token
// recurrence is approximated (its gradients taken at the chunk's start weights); the inner loop's
// stability comes from the clipped gradient (memory_clip_factor), not from a smaller step.
//   y = memory recurrence (memory_chunked_forward) per sequence and head, heads merged back (N,C)
static const real eta_max = (real)0.9;

// The memory's inputs for sequence b, head h, token t, from its projections (after the conv):
// silu, then k, q l2-normalised (1/|k|, 1/|q| kept); the gates theta, eta, alpha from z + bias
static void memory_inputs(MemoryActs *ma, const real *bgates, int b, int h, int t, int T, int C,
                          int NH, MemorySize ms) {
    int hs = ms.d;
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

static void memory_module_forward(MemoryActs *ma, const real *x, const real *wqkv,
                                  const real *wconv, const real *wgates,
                                  const real *bgates, const real *w0, Scratch scratch,
                                  int B, int T, int C, int NH, MemorySize ms,
                                          int read_chunk_start) {
    int N = B * T, hs = ms.d, P = memory_params(ms.depth, hs, ms.m);
    size_t S = memory_state_size(T, ms);
    matmul_forward(ma->qkv, x, wqkv, N, C, 3 * C);
    // (else ma->conv is ma->qkv)
    if (ms.conv) conv_forward(ma->conv, ma->qkv, wconv, B, T, 3 * C, ms.conv);
    matmul_forward(ma->gates, x, wgates, N, C, 3 * NH);
    #pragma omp parallel for collapse(3)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) memory_inputs(ma, bgates, b, h, t, T, C, NH, ms);
    gemm_init(); // memory_chunked_forward runs gemm_serial inside the loop
    // one task per sequence and head, handed out as threads come free: each writes only its
    // own outputs, so the results do not depend on which thread runs it
    #pragma omp parallel for collapse(2) schedule(dynamic) num_threads(scratch_team(scratch))
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            size_t bh = (size_t)b * NH + h;
            memory_chunked_forward(ma->yh + bh * T * hs, ma->states + bh * S, scratch_mine(scratch),
                           ma->k + bh * T * hs, ma->v + bh * T * hs, ma->q + bh * T * hs,
                           ma->theta + bh * T, ma->eta + bh * T, ma->alpha + bh * T,
                                   w0 + (size_t)h * P,
                           T, ms, read_chunk_start);
        }
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++)
                memcpy(ma->y + ((size_t)b * T + t) * C + h * hs,
                       ma->yh + (((size_t)b * NH + h) * T + t) * hs, hs * sizeof(real));
}

// Backward of the module: dy (N,C) in; dx (N,C) and the weight gradients accumulated.
//   memory_chunked_backward gives dk, dv, dq, dtheta, deta, dalpha and dW0 per sequence and head;
//   through k <- k/|k|: dk_raw = (dk - k (k . dk)) / |k|  (same for q);
//   through the gates: dz = dtheta theta (1 - theta/mem_lr), deta eta (1 - eta/eta_max), ...
static void memory_module_backward(Acts *a, real *dx, real *dwqkv, real *dwconv, real *dwgates,
                                   real *dbgates, real *dw0,
                                   const real *dy, const MemoryActs *ma, const real *x,
                                           const real *wqkv, const real *wconv,
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
                memcpy(a->dyh + (((size_t)b * NH + h) * T + t) * hs,
                       dy + ((size_t)b * T + t) * C + h * hs, hs * sizeof(real));
    gemm_init(); // memory_chunked_backward runs gemm_serial inside the loop
    #pragma omp parallel for collapse(2) schedule(dynamic) num_threads(scratch_team(a->mem_scratch))
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            size_t bh = (size_t)b * NH + h;
            memory_chunked_backward(a->dmk + bh * T * hs, a->dmv + bh * T * hs,
                                    a->dmq + bh * T * hs,
                            a->dtheta + bh * T, a->deta + bh * T, a->dalpha + bh * T,
                                    a->dw0_parts + bh * P,
                            scratch_mine(a->mem_scratch), a->dyh + bh * T * hs,
                            ma->states + bh * S, ma->k + bh * T * hs, ma->q + bh * T * hs,
                            ma->theta + bh * T, ma->eta + bh * T, ma->alpha + bh * T,
                            T, ms, read_chunk_start);
        }
    // dW0[h] += sum over sequences, in a fixed order
    #pragma omp parallel for
    for (int h = 0; h < NH; h++)
        for (int b = 0; b < B; b++)
            for (int p = 0; p < P; p++)
                dw0[(size_t)h * P + p] += a->dw0_parts[((size_t)b * NH + h) * P + p];
    real *dqkv = a->dmqkv, *dz = a->dmgates;
    #pragma omp parallel for collapse(3)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                size_t n = (size_t)b * T + t, i = ((size_t)b * NH + h) * T + t;
                const real *q = ma->q + i * hs, *k = ma->k + i * hs;
                const real *dq = a->dmq + i * hs, *dk = a->dmk + i * hs, *dv = a->dmv + i * hs;
                real qdq = dot(q, dq, hs), kdk = dot(k, dk, hs);
                real *dq_raw = dqkv + n * 3 * C + h * hs, *dk_raw = dq_raw + C,
                        *dv_raw = dq_raw + 2 * C;
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
    if (ms.conv) { conv_backward(a->dmraw, dwconv, dp, ma->qkv, wconv, B, T, 3 * C,
                                 ms.conv); dp = a->dmraw; }
    matmul_backward(dx, dwqkv, dp, x, wqkv, N, C, 3 * C);
    matmul_backward(dx, dwgates, dz, x, wgates, N, C, 3 * NH);
}

// ----------------------------------------------------------------------------
// 5. the model: building it, the mixer, the MLP slot, forward and backward

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
        la->mixed = c->arch == ARCH_GATED || c->arch == ARCH_TITANS
                ? take(&cur, base, N * C) : la->attn;
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
    a->att_scratch = (Scratch){take(&cur, base, (size_t)num_threads() * ATT_BLOCK * T),
                                (size_t)ATT_BLOCK * T, num_threads()};
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
        a->mem_scratch = (Scratch){take(&cur, base, (size_t)num_threads() * scratch), scratch,
                                    num_threads()};
    }
    a->tmp = take(&cur, base, N * C);
    return cur;
}

// What the option table cannot check (each option's range is its row's, checked as it is parsed
// from the command line or a checkpoint): how a config's options combine. Then the per-layer
// widths. Returns 0, or -1 with a one-line reason in err naming the flag.
static int config_finish(Config *c, char *err, size_t n) {
    char why[240];
    TaperOptions taper = { c->taper, c->taper_start, c->taper_end, c->taper_multiple,
                           c->taper_group, c->taper_groups, c->widths_given, c->mlp_width };
    int L = c->layers;
    if (c->vocab == 0)
        return snprintf(err, n, "--vocab 0 (from the shards' headers): no vocabulary was "
                                "found"), -1;
    if (c->dim % c->heads != 0)
        return snprintf(err, n, "--dim %d must be a multiple of --heads %d", c->dim, c->heads), -1;
    if ((c->dim / c->heads) % 2 != 0)
        return snprintf(err, n, "head size --dim/--heads = %d must be even for RoPE",
                        c->dim / c->heads), -1;
    if (taper_layer_widths(c->mlp_widths, L, c->mlp_width, &taper, 0, why, sizeof(why)))
        return snprintf(err, n, "%s", why), -1;
    if (c->arch != ARCH_HOPE) return 0;
    for (int k = 1; k < c->cms_levels; k++)
        if (c->cms_chunks[k] < 1)
            return snprintf(err, n, "--cms-chunks: --cms-levels %d needs a chunk size for level %d",
                            c->cms_levels, k + 1), -1;
    if (c->cms_levels > 1
        && taper_layer_widths(c->cms_widths, L, c->cms_width, &taper, 1, why, sizeof(why)))
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
    int cut = (int)floor(extra / (3.0 * c->dim * c->layers) / c->taper_multiple + 0.5)
              * c->taper_multiple;
    if (cut >= c->mlp_width)
        die("--match-params: the %s additions (%.0f parameters) cost more than the whole MLP",
            arch_names[c->arch], extra);
    c->mlp_width -= cut;
}

// Random tensors draw from streams keyed by the seed and the tensor's identity, never by its
// place in the table:  key = splitmix64(seed), then key_mix (dev/tlmc/utils.h) with fnv1a64(name),
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
    if (T > m->cfg.seq_len)
        die("--seq-len %d is shorter than the %d tokens asked for", m->cfg.seq_len, T);
    if (B < 1 || (double)B * T > (1 << 24))
        die("--batch %d x --seq-len %d: at most %d tokens per micro-batch", B, T, 1 << 24);
    Weights scratch;
    layout_params(&m->cfg, NULL, &m->table, &scratch);
    m->num_params = m->table.total;
    // refuse up front what would not fit: parameters, gradients, two AdamW moments, activations
    double act_bytes = (double)layout_activations(m, NULL, B, T) * sizeof(real);
    double bytes = (double)m->num_params * (2 * sizeof(real) + 2 * sizeof(float)) + act_bytes;
    if (bytes > physical_memory())
        die("this model needs %.2f GiB (%zu parameters; %.2f GiB of activations for %d x %d "
            "tokens), more than the %.2f GiB "
            "of memory here: make it smaller or lower --batch / --seq-len", bytes / (1 << 30),
                    m->num_params,
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
static void attention_branch_backward(Model *m, int l, int B, int T, int window,
                                      const real *dattn) {
    const Config *c = &m->cfg;
    LayerActs *la = &m->a.layer[l];
    int N = B * T, C = c->dim, NH = c->heads;
    attention_backward(m->a.dqkv, m->a.att_scratch, dattn, la->qkv, la->att, B, T, C, NH, window);
    rope_backward(m->a.dqkv, m->rope, B, T, 2 * NH, C / NH, 3 * C);
    matmul_backward(m->a.dln, m->g.layer[l].wqkv, m->a.dqkv, la->ln1, m->w.layer[l].wqkv,
                    N, C, 3 * C);
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
        memory_module_forward(&la->mem, la->ln1, w->mem_wqkv, w->mem_conv, w->mem_wgates,
                              w->mem_bgates, w->mem_w0,
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
        memory_module_backward(a, a->dln, g->mem_wqkv, g->mem_conv, g->mem_wgates, g->mem_bgates,
                               g->mem_w0, a->dy,
                               &la->mem, la->ln1, w->mem_wqkv, w->mem_conv, w->mem_wgates,
                                       B, T, C, NH,
                               titans_memory(c), 0);
        attention_branch_backward(m, l, B, T, c->window, a->dattn);
        break;
    default: break;
    }
}

// --- the MLP slot: where the taper acts ---------------------------------------------------
// in: la->res1.  out: la->out.
//   every arch:  res2 = res1 + W2 (silu(W1 u) * W3 u),  u = RMSNorm(res1),  W1, W3 (F_l, C), W2 (C,
//   F_l)
//   hope adds the fast levels of its continuum memory, k = 1..levels-1, each with a residual:
//                res_k = res_{k-1} + scale_k * Memory_k(RMSNorm(res_{k-1})),   hidden width
//                cms_widths[l]
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
        memory_module_forward(&la->cms[k], la->cms_ln[k], w->cms_wqkv[k], w->cms_conv[k],
                              w->cms_wgates[k], w->cms_bgates[k],
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
                for (int j = 0; j < C; j++)
                    a->dy[(size_t)n * C + j] += a->dres[(size_t)n * C + j] * w->cms_scale[k][j];
            memory_module_backward(a, a->dln, g->cms_wqkv[k], g->cms_conv[k], g->cms_wgates[k],
                                   g->cms_bgates[k],
                                   g->cms_w0[k], a->dy, &la->cms[k], la->cms_ln[k], w->cms_wqkv[k],
                                           w->cms_conv[k],
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

// x_0 = wte[tokens] (N = B*T), each token and target checked against the vocabulary
static void model_embed(Model *m, const int *tokens, const int *targets, int B, int T) {
    int N = B * T, C = m->cfg.dim, V = m->cfg.vocab;
    if (B > m->B || T > m->T)
        die("internal: batch %dx%d exceeds the model's %dx%d", B, T, m->B, m->T);
    for (int n = 0; n < N; n++)
        if (tokens[n] < 0 || tokens[n] >= V || (targets && (targets[n] < 0 || targets[n] >= V)))
            die("token %d at position %d is outside the vocabulary of %d",
                targets && (targets[n] < 0 || targets[n] >= V) ? targets[n] : tokens[n], n, V);
    embedding_forward(m->a.x0, tokens, m->w.wte, N, C);
}

// Block l's first half on its input x (B*T, C): res1 = x + W_O Mixer(RMSNorm(x))
static void mixer_slot_forward(Model *m, int l, const real *x, int B, int T) {
    int N = B * T, C = m->cfg.dim;
    LayerActs *la = &m->a.layer[l];
    const LayerWeights *w = &m->w.layer[l];
    rmsnorm_forward(la->ln1, la->ln1_rstd, x, w->attn_norm, N, C);
    mixer_forward(m, l, B, T);
    matmul_forward(m->a.tmp, la->mixed, w->wo, N, C, C);
    #pragma omp parallel for
    for (size_t i = 0; i < (size_t)N * C; i++) la->res1[i] = x[i] + m->a.tmp[i];
}
// a.dres: d res1 -> d x (the residual's identity and the branch); the weights' gradients added
// dmixed = dres W_O ; dW_O += dres^T mixed ; then the mixer's and RMSNorm's backward
static void mixer_slot_backward(Model *m, int l, const real *x, int B, int T) {
    Acts *a = &m->a;
    int N = B * T, C = m->cfg.dim;
    LayerActs *la = &a->layer[l];
    const LayerWeights *w = &m->w.layer[l];
    LayerWeights *g = &m->g.layer[l];
    zero_parallel(a->dmixed, (size_t)N * C);
    matmul_backward(a->dmixed, g->wo, a->dres, la->mixed, w->wo, N, C, C);
    mixer_backward(m, l, B, T);
    rmsnorm_backward(a->dres, g->attn_norm, a->dln, x, w->attn_norm, la->ln1_rstd, N, C);
}

// Block l: x -> res1 = x + W_O Mixer(RMSNorm(x)) -> out = res1 + MLP_l(RMSNorm(res1))
static void block_forward(Model *m, int l, const real *x, int B, int T) {
    mixer_slot_forward(m, l, x, B, T);
    mlp_forward(m, l, B, T);
}

// The head on `rows` positions of x (rows, C): logits = RMSNorm(x) W_head^T into a.logits
// (rows, V); with targets, the mean cross-entropy over them (tokens kept for the backward),
// else 0. Sampling passes the last position only (rows 1).
static real head_forward(Model *m, const real *x, const int *tokens, const int *targets, int rows) {
    Acts *a = &m->a;
    int C = m->cfg.dim, V = m->cfg.vocab;
    rmsnorm_forward(a->lnf, a->lnf_rstd, x, m->w.final_norm, rows, C);
    matmul_forward(a->logits, a->lnf, m->w.lm_head, rows, C, V);
    if (!targets) return 0;
    if (m->tokens != tokens) memcpy(m->tokens, tokens, (size_t)rows * sizeof(int)); // for backward
    if (m->targets != targets) memcpy(m->targets, targets, (size_t)rows * sizeof(int));
    crossentropy_forward(a->losses, a->logits, targets, rows, V);
    double sum = 0;
    for (int n = 0; n < rows; n++) sum += a->losses[n];
    return (real)(sum / rows);
}
// a.dres = d x_L from the loss, scaled by loss_scale; the head's and final norm's gradients added
// dlogits = (p - onehot) / N ; dlnf = dlogits W_head ; dW_head += dlogits^T lnf
static void head_backward(Model *m, const real *x_last, int N, real loss_scale) {
    Acts *a = &m->a;
    int C = m->cfg.dim, V = m->cfg.vocab;
    crossentropy_backward(a->logits, m->targets, N, V, loss_scale / N);
    zero_parallel(a->dln, (size_t)N * C);
    matmul_backward(a->dln, m->g.lm_head, a->logits, a->lnf, m->w.lm_head, N, C, V);
    zero_parallel(a->dres, (size_t)N * C);
    rmsnorm_backward(a->dres, m->g.final_norm, a->dln, x_last, m->w.final_norm, a->lnf_rstd, N, C);
}

// The blocks over tokens (B, T): x_L, the last block's output (B*T, C).
static const real *model_blocks(Model *m, const int *tokens, const int *targets, int B, int T) {
    model_embed(m, tokens, targets, B, T);
    const real *x = m->a.x0;
    for (int l = 0; l < m->cfg.layers; l++) {
        block_forward(m, l, x, B, T);
        x = m->a.layer[l].out;
    }
    return x;
}

// Returns the mean loss over the B*T positions (targets given) or 0 (targets NULL: the logits
// of every position in a.logits).
static real model_forward(Model *m, const int *tokens, const int *targets, int B, int T) {
    const real *x = model_blocks(m, tokens, targets, B, T);
    return head_forward(m, x, tokens, targets, B * T);
}

static void model_zero_grad(Model *m) { zero_parallel(m->grads, m->num_params); }

// Accumulates into m->grads the gradient of (loss_scale * mean loss) of the last forward.
static void model_backward(Model *m, int B, int T, real loss_scale) {
    const Acts *a = &m->a;
    int L = m->cfg.layers, N = B * T;
    head_backward(m, L ? a->layer[L - 1].out : a->x0, N, loss_scale);
    for (int l = L - 1; l >= 0; l--) {
        mlp_backward(m, l, B, T); // dres: d out -> d res1
        mixer_slot_backward(m, l, l ? a->layer[l - 1].out : a->x0, B, T); // dres: d res1 -> d x
    }
    embedding_backward(m->g.wte, a->dres, m->tokens, N, m->cfg.dim);
}

// ----------------------------------------------------------------------------
// 6. AdamW
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
        part[b] = ((lane[0] + lane[4]) + (lane[1] + lane[5]))
                  + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
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
    float clip = opt->grad_clip > 0 && norm > opt->grad_clip
            ? (float)(opt->grad_clip / norm) : 1.0f;
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
// before anything reaches disk. A pass over the model, in 4096-element blocks (flags in
// m->norm_parts).
static inline int nonfinite_flags(const Model *m, size_t i) { // 1 weight, 2 first moment, 4 second
    int f = !isfinite(m->params[i]);
    if (m->adam_m)
        f |= (!isfinite(m->adam_m[i]) ? 2 : 0) | (!(m->adam_v[i] >= 0)
                                                  || !isfinite(m->adam_v[i]) ? 4 : 0);
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
    double progress = (double)(step - warmup) / (decay_steps - warmup > 0
                                                 ? decay_steps - warmup : 1);
    return (float)(lr * (0.1 + 0.9 * 0.5 * (1 + cos(PI * progress))));
}

// ----------------------------------------------------------------------------
// 7. training step, evaluation, sampling, layer analysis

// --- training step, evaluation ----------------------------------------------------------

// A rank's micro-batches after its first go into micro_grads, which is then added to grads:
// g0 + g1, formed as the all-reduce forms it. gradient_into(m, k) points the gradient views at
// where micro-batch k (of this rank's) adds its gradient: grads for k 0 (where they point
// between steps), micro_grads (cleared) after; gradient_add(m, k) then adds it to grads.
static void gradient_into(Model *m, int k) {
    if (k == 0) { layout_params(&m->cfg, m->grads, &m->table, &m->g); return; }
    if (!m->micro_grads) m->micro_grads = xcalloc(m->num_params, sizeof(real), "gradients");
    if (k == 1) layout_params(&m->cfg, m->micro_grads, &m->table, &m->g);
    zero_parallel(m->micro_grads, m->num_params);
}
static void gradient_add(Model *m, int k) {
    if (k == 0) return;
    real *restrict sum = m->grads;
    const real *restrict g = m->micro_grads;
    #pragma omp parallel for
    for (size_t j = 0; j < m->num_params; j++) sum[j] += g[j];
}

// One optimizer step over the global batch (ranks x grad_accum micro-batches of B x T tokens;
// this rank computes micro-batches rank, rank + ranks, ...), then AdamW unless the loss or the
// gradient is not finite (then the parameters are left as they were). Returns the mean loss;
// *norm gets the gradient norm before clipping.
static double train_step(Model *m, DataLoader *data, const AdamW *opt, float lr, int grad_accum,
                         int B, int T, double *norm) {
    int micro_batches = world.ranks * grad_accum, mine = 0;
    double *loss_part = xcalloc(micro_batches, sizeof(double), "losses"); // 0 where another rank's
    model_zero_grad(m);
    for (int k = 0; k < micro_batches; k++) {
        dataloader_next(data, m->tokens, m->targets, B, T);
        if (k % world.ranks != world.rank) continue;
        if (mine > 0) gradient_into(m, mine);
        loss_part[k] = model_forward(m, m->tokens, m->targets, B, T) / micro_batches;
        model_backward(m, B, T, (real)(1.0 / micro_batches));
        gradient_add(m, mine++);
    }
    if (mine > 1) gradient_into(m, 0);
    ranks_sum_step(m->grads, m->num_params, loss_part, micro_batches, m->step + 1);
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
static int sample_next(const real *logits, int V, double temperature, int top_k, Rng *rng,
                       double *keep) {
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

// --- sampling with a cache: one position's forward per token ---------------------------------
// The forward is causal, so position p's output depends on the tokens 0..p only, and every
// kernel of the forward works row by row except where positions meet: attention, the memory's
// convolution and its recurrence. The cache is the model's own activations for one sequence
// (B = 1, laid out for T = seq-len tokens): model_step(p) computes row p of every layer and reads
// from the rows before it what the earlier steps left there:
//   attention:  k_u, v_u for u < p (RoPE applied at their positions): the key-value cache;
//               s_pu = q_p . k_u / sqrt(hs), p_p = softmax(s_p), out_p = sum_u p_pu v_u over
//               t-window < u <= p (Titans' sliding window: the window's keys only)
//   memory:     the conv's inputs of the K - 1 tokens before p;  W_c, S_c, the state at the
//               start of p's chunk c (its record), and the chunk's tokens so far. The chunk's
//               closed form is run again over tokens s = c*chunk .. p from W_c, S_c:
//                 S_t = eta_t S_{t-1} - theta_t c_t g_t(W_c),  W_t = (1 - alpha_t) W_{t-1} + S_t
//                 y_p = M_{W_p}(q_p) (Titans), M_{W_c}(q_p) (Hope)
//               and at the chunk's last token its end W, S become the next chunk's W_c, S_c.
// Each step runs the very kernels of the full forward on the same numbers, so its logits are
// those of a forward over tokens 0..p, bit for bit in double (test_tlm.c checks every
// architecture). Cost: one row of every matmul, attention over p keys, a memory chunk of at most
// mem-chunk tokens, where the full forward costs p + 1 rows of everything.

// Attention for query p over the cached keys 0..p: la->qkv row p (RoPE at p) and la->att row p
static void attention_step(Model *m, int l, int p, int window) {
    const Config *c = &m->cfg;
    LayerActs *la = &m->a.layer[l];
    int C = c->dim, NH = c->heads, hs = C / NH, T = m->T;
    real scale = 1 / r_sqrt((real)hs), *qkv = la->qkv + (size_t)p * 3 * C;
    matmul_forward(qkv, la->ln1 + (size_t)p * C, m->w.layer[l].wqkv, 1, C, 3 * C);
    rope_forward(qkv, m->rope + (size_t)p * hs, 1, 1, 2 * NH, hs, 3 * C);
    int u0 = attention_first_key(p, window);
    #pragma omp parallel for
    for (int h = 0; h < NH; h++) {
        const real *q = qkv + h * hs, *k = la->qkv + C + h * hs, *v = k + C;
        real *pt = la->att + ((size_t)h * T + p) * T;
        // s_pu = q_p . k_u  (u0 <= u <= p), then the row's softmax; out_p = P_p V
        gemm_serial(pt + u0, q, k + (size_t)u0 * 3 * C, 1, p + 1 - u0, hs, 0, 3 * C, 1, 3 * C,
                    T, 0);
        attention_softmax_row(pt, p, T, window, scale);
        gemm_serial(la->attn + (size_t)p * C + h * hs, pt + u0, v + (size_t)u0 * 3 * C, 1, hs,
                    p + 1 - u0, 0, T, 0, 3 * C, C, 0);
    }
}

// The memory module for the token at p (one sequence, laid out for T tokens): its projections,
// conv and gates, then each head's chunk again from W_c (memory_chunked_forward_at); y row p
static void memory_module_step(MemoryActs *ma, const real *x, const real *wqkv, const real *wconv,
                               const real *wgates, const real *bgates, const real *w0,
                               Scratch scratch, int p, int T, int C, int NH, MemorySize ms,
                               int read_chunk_start) {
    int hs = ms.d, P = memory_params(ms.depth, hs, ms.m);
    size_t S = memory_state_size(T, ms);
    matmul_forward(ma->qkv + (size_t)p * 3 * C, x + (size_t)p * C, wqkv, 1, C, 3 * C);
    if (ms.conv) {
        real *wt = conv_taps(wconv, 3 * C, ms.conv);
        conv_row(ma->conv + (size_t)p * 3 * C, ma->qkv + (size_t)p * 3 * C, wt, 3 * C, ms.conv, p);
        free(wt);
    }
    matmul_forward(ma->gates + (size_t)p * 3 * NH, x + (size_t)p * C, wgates, 1, C, 3 * NH);
    for (int h = 0; h < NH; h++) memory_inputs(ma, bgates, 0, h, p, T, C, NH, ms);
    #pragma omp parallel for schedule(dynamic) num_threads(scratch_team(scratch))
    for (int h = 0; h < NH; h++) {
        size_t at = (size_t)h * T * hs, g = (size_t)h * T;
        memory_chunked_forward_at(ma->yh + at, ma->states + h * S, scratch_mine(scratch),
                                  ma->k + at, ma->v + at, ma->q + at, ma->theta + g, ma->eta + g,
                                  ma->alpha + g, w0 + (size_t)h * P, T, p, ms, read_chunk_start);
        memcpy(ma->y + (size_t)p * C + h * hs, ma->yh + at + (size_t)p * hs, hs * sizeof(real));
    }
}

// Row p of block l's mixer slot and MLP slot: the mixer_forward and mlp_forward above, one row
static void block_step(Model *m, int l, const real *x, int p) {
    const Config *c = &m->cfg;
    LayerActs *la = &m->a.layer[l];
    const LayerWeights *w = &m->w.layer[l];
    int C = c->dim, NH = c->heads, F = c->mlp_widths[l], T = m->T, G = gate_width(c);
    size_t r = (size_t)p * C;
    real *tmp = m->a.tmp;
    // res1 = x + W_O Mixer(RMSNorm(x))
    rmsnorm_forward(la->ln1 + r, la->ln1_rstd + p, x + r, w->attn_norm, 1, C);
    switch (c->arch) {
    case ARCH_TRANSFORMER:
    case ARCH_HOPE:
        attention_step(m, l, p, 0);
        break;
    case ARCH_GATED:
        attention_step(m, l, p, 0);
        matmul_forward(tmp, la->ln1 + r, w->wgate, 1, C, G);
        gate_forward(la->mixed + r, la->gate + (size_t)p * G, la->attn + r, tmp, 1, C, G);
        break;
    case ARCH_TITANS:
        attention_step(m, l, p, c->window);
        memory_module_step(&la->mem, la->ln1, w->mem_wqkv, w->mem_conv, w->mem_wgates,
                           w->mem_bgates, w->mem_w0, m->a.mem_scratch, p, T, C, NH,
                           titans_memory(c), 0);
        rmsnorm_forward(la->my_norm + r, la->my_rstd + p, la->mem.y + r, w->mem_norm, 1, C);
        gate_forward(la->mixed + r, la->mgate + r, la->attn + r, la->my_norm + r, 1, C, C);
        break;
    default: break;
    }
    matmul_forward(tmp, la->mixed + r, w->wo, 1, C, C);
    for (int i = 0; i < C; i++) la->res1[r + i] = x[r + i] + tmp[i];
    // res2 = res1 + W2 (silu(W1 u) * W3 u), u = RMSNorm(res1); Hope: then its fast levels
    rmsnorm_forward(la->ln2 + r, la->ln2_rstd + p, la->res1 + r, w->mlp_norm, 1, C);
    matmul_forward(la->h + (size_t)p * 2 * F, la->ln2 + r, w->w1, 1, C, 2 * F);
    swiglu_forward(la->hg + (size_t)p * F, la->h + (size_t)p * 2 * F, 1, F);
    matmul_forward(tmp, la->hg + (size_t)p * F, w->w2, 1, F, C);
    for (int i = 0; i < C; i++) la->res2[r + i] = la->res1[r + i] + tmp[i];
    if (c->arch != ARCH_HOPE) return;
    for (int k = 1; k < c->cms_levels; k++) { // res_k = res_{k-1} + scale_k Memory_k(RMSNorm(..))
        const real *in = la->cms_res[k - 1];
        rmsnorm_forward(la->cms_ln[k] + r, la->cms_rstd[k] + p, in + r, w->cms_norm[k], 1, C);
        memory_module_step(&la->cms[k], la->cms_ln[k], w->cms_wqkv[k], w->cms_conv[k],
                           w->cms_wgates[k], w->cms_bgates[k], w->cms_w0[k], m->a.mem_scratch,
                           p, T, C, 1, hope_level(c, l, k), 1);
        for (int j = 0; j < C; j++)
            la->cms_res[k][r + j] = in[r + j] + w->cms_scale[k][j] * la->cms[k].y[r + j];
    }
}

// Position p's forward, positions 0..p-1 already run by earlier steps (p < T): x_L row p (C)
static const real *model_step(Model *m, int token, int p) {
    int C = m->cfg.dim;
    if (p >= m->T) die("internal: model_step at %d past the cache's %d", p, m->T);
    if (token < 0 || token >= m->cfg.vocab)
        die("token %d at position %d is outside the vocabulary of %d", token, p, m->cfg.vocab);
    embedding_forward(m->a.x0 + (size_t)p * C, &token, m->w.wte, 1, C);
    const real *x = m->a.x0;
    for (int l = 0; l < m->cfg.layers; l++) {
        block_step(m, l, x, p);
        x = m->a.layer[l].out;
    }
    return x + (size_t)p * C;
}

// A step is a few small kernels per layer, each a parallel region of its own: below this many
// parameters (a step of under ~16 MFLOP) their forks and joins cost more than the threads save
// (on a loaded machine, far more: a thread that waits at a join for one that is not running),
// so a small model's steps run on one thread.
enum { step_serial_params = 8 << 20 };
static void set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

// Continues tokens[0..n) (n >= 1; room for n + len) by len tokens, each from the last position's
// logits of the forward over the last seq-len tokens so far, as one sequence (B = 1). With cache:
// while the text fits in seq-len, each position's forward is one model_step (the prompt's too);
// past seq-len the window slides, every position's RoPE angle and chunk changes, and each new
// token is a full forward over the last seq-len tokens, as without the cache (the same tokens
// either way). cache 0: every token a full forward. Titans' and Hope's memories are learned in
// context, so a full forward relearns them over the window, as training does. Prints each token
// as it comes if tk is given.
static void generate(Model *m, int *tokens, int n, int len, double temperature, int top_k, Rng *rng,
                     const Tokenizer *tk, int cache) {
    int T = m->T, V = m->cfg.vocab, cached = 0; // cached: the positions model_step has run
    double *keep = xcalloc(V, sizeof(double), "sample");
    int threads = num_threads();
    for (int i = 0; i < len; i++, n++) {
        const real *x = NULL;
        int serial = cache && n <= T && m->num_params < step_serial_params;
        if (serial) set_threads(1);
        if (cache && n <= T) {
            while (cached < n) { x = model_step(m, tokens[cached], cached); cached++; }
        } else {
            int window = n < T ? n : T;
            x = model_blocks(m, tokens + n - window, NULL, 1, window);
            x += (size_t)(window - 1) * m->cfg.dim; // the last position
        }
        head_forward(m, x, NULL, NULL, 1);
        if (serial) set_threads(threads);
        tokens[n] = sample_next(m->a.logits, V, temperature, top_k, rng, keep);
        if (tk) { print_token(tk, tokens[n]); fflush(stdout); }
    }
    free(keep);
}

// Training's samples: `len` tokens after the end-of-text token, at temperature 1.
static void sample_text(Model *m, const Tokenizer *tk, int len, uint64_t seed, int cache) {
    Rng rng = rng_seeded(seed);
    int *tokens = xcalloc(len + 1, sizeof(int), "sample");
    tokens[0] = tk->eot < m->cfg.vocab ? tk->eot : 0;
    generate(m, tokens, 1, len, 1.0, 0, &rng, tk, cache);
    printf("\n");
    free(tokens);
}

// For each layer l, on the validation batches evaluate() picks: how the layer changes the stream,
//   rel_update = |x_{l+1} - x_l| / |x_l|   (and split: mixer |res1 - x|/|x|, MLP |out -
//   res1|/|res1|)
//   cos_sim    = cos(x_l, x_{l+1})          averaged over positions
//   cos_mlp_residual = cos(MLP_l output, res1), res1 the residual stream the MLP slot reads and
//                adds to (the alignment probe: does the MLP refine the stream or turn it?).
//                Hope: the output of the whole slot, out - res1 (SwiGLU and fast levels), as
//                rel_mlp and dloss_skip_mlp take it: the levels add to the same stream in turn.
// and how much the loss rises when the layer's MLP slot, or the whole layer, is skipped.
typedef struct { double rel_mixer, rel_mlp, rel, cos_sim, cos_mlp_residual, dloss_skip_mlp,
                 dloss_skip_layer; } LayerStats;

// The validation loss as evaluate() takes it (the same batches, ranks and order of the sum),
// with layer `skip`'s MLP slot (whole 0: out = res1) or the whole layer (whole 1: out = x)
// left out of its own loop over the layers.
static double loss_skipping(Model *m, DataLoader *val, int batches, int B, int T, int skip,
                            int whole) {
    long M = val_batches(val, B, T), N = eval_count(batches, M);
    size_t bytes = (size_t)B * T * m->cfg.dim * sizeof(real);
    double *loss = xcalloc(N, sizeof(double), "analysis"); // 0 where another rank's
    for (long i = 0; i < N; i++) {
        if (i % world.ranks != world.rank) continue;
        val_batch(val, eval_pick(i, N, M), m->tokens, m->targets, B, T);
        model_embed(m, m->tokens, m->targets, B, T);
        const real *x = m->a.x0;
        for (int l = 0; l < m->cfg.layers; l++) {
            LayerActs *la = &m->a.layer[l];
            block_forward(m, l, x, B, T);
            if (l == skip) memcpy(la->out, whole ? x : la->res1, bytes);
            x = la->out;
        }
        loss[i] = head_forward(m, x, m->tokens, m->targets, B * T);
    }
    ranks_sum_doubles(loss, N);
    double sum = 0;
    for (long i = 0; i < N; i++) sum += loss[i];
    free(loss);
    return sum / N;
}

static void analyze_layers(Model *m, DataLoader *val, int batches, int B, int T, LayerStats *stats,
                           double *base_loss) {
    const Config *c = &m->cfg;
    int L = c->layers, C = c->dim, N = B * T;
    memset(stats, 0, L * sizeof(LayerStats));
    long M = val_batches(val, B, T), count = eval_count(batches, M);
    *base_loss = evaluate(m, val, batches, B, T, NULL); // (dies if --val holds no batch)
    for (long i = 0; i < count; i++) {
        val_batch(val, eval_pick(i, count, M), m->tokens, m->targets, B, T);
        model_blocks(m, m->tokens, NULL, B, T);
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
    for (int l = 0; l < L; l++) {
        stats[l].dloss_skip_mlp = loss_skipping(m, val, batches, B, T, l, 0) - *base_loss;
        stats[l].dloss_skip_layer = loss_skipping(m, val, batches, B, T, l, 1) - *base_loss;
    }
}

// ----------------------------------------------------------------------------
// 8. main: the command line, then evaluate, analyze or train
//
// The method ends above. The program around it: headers that need the model's types, so they
// are included here rather than at the top (each states its contract; dev/README.md).
#include "dev/tlmc/options.h"    // the option table: parsing, -h, the checkpoint's option area
#include "dev/tlmc/checkpoint.h" // checkpoint files: atomic save, one-descriptor load, path guards
#include "dev/tlmc/log.h"        // the JSONL log: log_json(), the config record
#include "dev/tlmc/signals.h"    // Ctrl-C and SIGTERM: finish the step, save, stop

static void print_layer_table(const Model *m) {
    const Config *c = &m->cfg;
    size_t mixer[MAX_LAYERS] = {0}, mlp[MAX_LAYERS] = {0}, other = 0;
    for (int i = 0; i < m->table.count; i++) {
        const ParamTensor *t = &m->table.tensor[i];
        if (t->layer < 0) other += t->size;
        else if (t->is_mlp) mlp[t->layer] += t->size;
        else mixer[t->layer] += t->size;
    }
    printf("%s, %d layers, dim %d, %d heads, vocab %d, seq %d; MLP taper %s %.2g -> %.2g of H = "
           "%d\n",
           arch_names[c->arch], c->layers, c->dim, c->heads, c->vocab, c->seq_len,
                   taper_names[c->taper],
           c->taper == TAPER_UNIFORM ? 1.0 : c->taper_start,
                   c->taper == TAPER_UNIFORM ? 1.0 : c->taper_end, c->mlp_width);
    printf("  layer  mlp width%s   mixer params    mlp params  bar\n",
           c->arch == ARCH_HOPE && c->cms_levels > 1 ? "  fast width" : "");
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


static void default_tokenizer_path(char *out, size_t n, const char *train, int vocab) {
    const char *slash = strrchr(train, '/');
    int dirlen = slash ? (int)(slash - train + 1) : 0;
    snprintf(out, n, "%.*s%s_tokenizer.bin", dirlen, train, vocab == 256 ? "byte" : "gpt2");
}

// The tokenizer file a run's text goes through: --tokenizer, else the one beside --train for the
// vocabulary (data/byte_tokenizer.bin for 256 tokens, else data/gpt2_tokenizer.bin).
static void tokenizer_path(char *out, size_t n, int vocab) {
    if (opt.tokenizer[0]) snprintf(out, n, "%s", opt.tokenizer);
    else default_tokenizer_path(out, n, opt.train, vocab);
}

// --- the run: build, then evaluate, analyze or train --------------------------------------

// The vocabulary: --vocab (or the checkpoint's), else the shards' headers, else 50257. The train
// and val shards must agree with each other, and with --vocab unless it is larger (then a note).
static void settle_vocab(Config *cfg, const DataLoader *train, const DataLoader *val) {
    int vt = train->count ? dataloader_vocab(train) : 0, vv = dataloader_vocab(val);
    if (vt && vv && vt != vv)
        die("--train %s has vocabulary %d in its header, --val %s has %d: they must be the same "
            "tokenization",
            train->paths[0], vt, val->paths[0], vv);
    int shards = vt ? vt : vv;
    const char *src = opt.load[0] ? "the checkpoint's" : "--vocab";
    if (!cfg->vocab) cfg->vocab = shards ? shards : 50257;
    else if (shards && cfg->vocab < shards)
        die("%s vocabulary %d is smaller than the shards' %d (%s)", src, cfg->vocab, shards,
            vt ? train->paths[0] : val->paths[0]);
    else if (shards && cfg->vocab > shards)
        printf("note: %s vocabulary %d is larger than the shards' %d: the extra tokens are never "
               "seen\n", src, cfg->vocab, shards);
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
        if (training) refuse_shared_shards(train, val);
        settle_vocab(cfg, train, val);
    }
    if (cfg->match_params && !opt.load[0]) {
        int before = cfg->mlp_width;
        match_params(cfg);
        printf("--match-params: mean MLP width %d -> %d, for the parameters of a transformer of "
               "the same shape\n", before, cfg->mlp_width);
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
        if (opt.save[0] && same_file(opt.log, opt.save))
            die("--log %s is the --save checkpoint", opt.log);
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
        printf("ranks: %d; global batch %d ranks x %d sequences x %d micro-batches = %lld "
               "sequences of %d tokens\n",
               world.ranks, world.ranks, opt.batch, opt.grad_accum,
                       (long long)world.ranks * opt.batch * opt.grad_accum, cfg->seq_len);
    return m;
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
    printf("  layer  mlp width  |dx|/|x| mixer  |dx|/|x| mlp  |dx|/|x|  cos(x, x')  cos(mlp, "
           "resid)  dloss skip mlp"
           "  dloss skip layer\n");
    for (int l = 0; l < cfg->layers; l++) {
        printf("  %5d  %9d  %14.4f  %12.4f  %8.4f  %10.4f  %15.4f  %14.4f  %16.4f\n", l,
               cfg->mlp_widths[l],
               stats[l].rel_mixer, stats[l].rel_mlp, stats[l].rel, stats[l].cos_sim,
                       stats[l].cos_mlp_residual,
               stats[l].dloss_skip_mlp, stats[l].dloss_skip_layer);
        log_json("{\"event\":\"analysis\",\"layer\":%d,\"mlp_width\":%d,\"rel_update_mixer\":%.6f,"
                 "\"rel_update_mlp\":%.6f,\"rel_update\":%.6f,\"cos_sim\":%.6f,"
                 "\"cos_mlp_residual\":%.6f,"
                 "\"dloss_skip_mlp\":%.6f,\"dloss_skip_layer\":%.6f}", l, cfg->mlp_widths[l],
                         stats[l].rel_mixer,
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
    char tk_path[TEXT_MAX];
    tokenizer_path(tk_path, sizeof(tk_path), V);
    // (no default below 256)
    if ((V < 256 && !opt.tokenizer[0]) || tokenizer_load(tk, tk_path, V) != 0) {
        if (opt.tokenizer[0])
            die("--tokenizer %s: cannot open: %s", opt.tokenizer, strerror(errno));
        if (V > 256)
            die("%s: no tokenizer for the model's vocabulary of %d (run `python3 "
                "dev/prepare_data.py "
                         "--tokenizer-only` for GPT-2's, or give --tokenizer)", tk_path, V);
        tk->vocab = V; // bytes print as themselves (print_token)
        tk->eot = '\n';
    }
    if (V <= 256) {
        *tokens = xcalloc(len + 1 + opt.sample_len, sizeof(int), "prompt");
        for (int i = 0; i < len; i++) {
            unsigned char b = (unsigned char)prompt[i];
            if (b >= V)
                die("--prompt: byte 0x%02x at offset %d is outside the model's vocabulary of %d "
                    "tokens", b, i, V);
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
            die("%s: the encoder file for --prompt is looked for beside a tokenizer named "
                "*tokenizer.bin "
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
    if (invalid)
        fprintf(stderr, "note: --prompt: %d bytes are not UTF-8, read as U+FFFD\n", invalid);
    for (int i = 0; i < n; i++)
        if ((*tokens)[i] < 0 || (*tokens)[i] >= V)
            die("--prompt: token %d at position %d is outside the model's vocabulary of %d",
                (*tokens)[i], i, V);
    return n;
}

// --sample: --samples continuations of --prompt, each printed after the prompt; one random
// stream from --seed, so the same seed gives the same text.
static int run_sample(Model *m) {
    int T = m->cfg.seq_len, V = m->cfg.vocab, *tokens, len = opt.sample_len;
    Tokenizer tk = {0};
    int n = encode_prompt(&tokens, &tk, V);
    if (n + len > T)
        fprintf(stderr, "note: the prompt and sample (%d tokens) are longer than the model's "
                        "seq-len %d: "
                "each token is predicted from the last %d\n", n + len, T, T);
    Rng rng = rng_seeded((uint64_t)opt.seed);
    double t0 = wall_time();
    for (int s = 0; s < opt.samples; s++) {
        if (s) printf("---\n");
        fputs(opt.prompt, stdout);
        generate(m, tokens, n, len, opt.temperature, opt.top_k, &rng, &tk, opt.sample_cache);
        printf("\n");
    }
    double seconds = wall_time() - t0;
    fprintf(stderr, "%d x %d tokens after %d of prompt in %.2f s: %.1f tokens/s (%d threads)\n",
            opt.samples, len, n,
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

// Training's samples print through the tokenizer if there is one, else as bytes (vocabulary
// 256) or token ids; a --tokenizer that cannot be opened is an error.
static void sample_tokenizer(Tokenizer *tk, int vocab) {
    char path[TEXT_MAX];
    tokenizer_path(path, sizeof(path), vocab);
    memset(tk, 0, sizeof(*tk));
    if (!opt.sample_every || tokenizer_load(tk, path, vocab) == 0) return;
    if (opt.tokenizer[0]) die("--tokenizer %s: cannot open: %s", opt.tokenizer, strerror(errno));
    printf("note: no tokenizer at %s, samples print %s\n", path,
           vocab == 256 ? "bytes" : "token ids");
    tk->vocab = vocab;
    tk->eot = vocab == 256 ? '\n' : 0;
}

// A step whose loss, gradient or update is not finite: said (rank 0) and logged; the run then
// stops before anything is saved, so the last checkpoint on disk stays the last good one.
// Returns 1 if the step was such a step.
static int step_not_finite(Model *m, int step, double loss, double norm, float lr) {
    if (!isfinite(loss) || !isfinite(norm)) {
        if (world.rank == 0)
            fprintf(stderr, "error: step %d: loss %g, gradient norm %g is not finite; stopping (no "
                    "checkpoint written)\n", step, loss, norm);
        log_json("{\"event\":\"error\",\"step\":%d,\"message\":\"non-finite loss or gradient\"}",
                 step);
        return 1;
    }
    // adamw_step flagged it as it wrote; the pass over the model only to name the tensor
    const char *moment = "";
    const ParamTensor *bad = m->update_not_finite ? nonfinite_tensor(m, &moment) : NULL;
    if (m->update_not_finite && !bad)
        die("step %d: the update wrote a value that is not finite", step);
    if (!bad) return 0;
    if (world.rank == 0)
        fprintf(stderr, "error: step %d: the update made the %s of %s not finite (lr %g); stopping "
                "(no checkpoint written)\n", step, moment, bad->name, lr);
    log_json("{\"event\":\"error\",\"step\":%d,\"message\":\"non-finite %s of %s\"}", step, moment,
             bad->name);
    return 1;
}

// What a training run has done, for its progress lines and its report.
typedef struct {
    double t_start, t_train, last_val; // wall clock at the start, seconds in steps, last val loss
    int steps_timed, saved_at, save_failed; // steps this run took; the step last saved (-1: none)
    size_t tokens_per_step;
} RunStats;

// A step's progress line and JSONL record.
static void print_step(const Model *m, const RunStats *r, double loss, float lr, double norm,
                       double dt) {
    double eta = (opt.steps - m->step) * (r->t_train / r->steps_timed);
    printf("step %5d/%d | loss %.4f | lr %.2e | norm %6.3f | %6.0f ms | %7.0f tok/s | eta %.1f "
           "%s\n",
           m->step, opt.steps, loss, lr, norm, dt * 1000, r->tokens_per_step / dt,
           eta >= 60 ? eta / 60 : eta, eta >= 60 ? "min" : "s");
    log_json("{\"event\":\"train\",\"step\":%d,\"loss\":%.9g,\"lr\":%.6g,\"grad_norm\":%.6f,"
             "\"ms\":%.2f,\"tokens_per_s\":%.1f,\"tokens\":%zu}", m->step, loss, lr,
                     norm, dt * 1000,
             r->tokens_per_step / dt, m->step * r->tokens_per_step);
}

// --save now: said on success, remembered either way for the report
static void save_now(Model *m, const DataLoader *train, RunStats *r) {
    int rc = ranks_save(m, opt.save, train->at);
    if (rc == 0) {
        r->saved_at = m->step;
        printf("saved %s (step %d)\n", opt.save, m->step);
    } else if (rc < 0) r->save_failed = 1;
}

// The end of a run: stopped early (a signal, a failed write: the model as it is now saved,
// unless just saved; 128 + the signal, or 1) or done (the summary line; 1 if a save failed).
static int run_report(Model *m, const DataLoader *train, const RunStats *r) {
    if (ranks_should_stop()) {
        // stopped early (also before the first step); (rank 0's, any rank's)
        int saved = ranks_max(r->saved_at == m->step), sig = ranks_max(interrupted);
        if (opt.save[0] && !saved && ranks_save(m, opt.save, train->at) == 0) saved = 1;
        const char *what = saved ? ", checkpoint saved; resume with --load"
                         : opt.save[0] ? ", no checkpoint written" : "";
        if (sig) {
            printf("interrupted at step %d%s\n", m->step, what);
            return 128 + sig; // 130 for SIGINT, 143 for SIGTERM, as a shell reports them
        }
        if (world.rank > 0) return 1;
        if (ferror(stdout))
            fprintf(stderr, "error: stdout: write failed (%s): stopped at step %d%s\n",
                    strerror(errno ? errno : EIO), m->step, what);
        else
            fprintf(stderr, "error: --log %s: write failed: %s; stopped at step %d%s\n", opt.log,
                    strerror(log_error), m->step, what);
        return 1;
    }
    double seconds = wall_time() - r->t_start;
    printf("done: %d steps, val loss %.4f, %.1f s (%.0f tok/s training)\n", m->step, r->last_val,
           seconds, r->steps_timed ? r->steps_timed * r->tokens_per_step / r->t_train : 0.0);
    if (world.ranks > 1)
        printf("all-reduce: %.1f ms a step, %.1f%% of the step (%d ranks x %d threads)\n",
               r->steps_timed ? 1000 * allreduce_seconds / r->steps_timed : 0.0,
               r->t_train > 0 ? 100 * allreduce_seconds / r->t_train : 0.0, world.ranks,
               num_threads());
    log_json("{\"event\":\"done\",\"step\":%d,\"val_loss\":%.6f,\"seconds\":%.2f}", m->step,
             r->last_val, seconds);
    return r->save_failed ? 1 : 0;
}

// Training: from step m->step to --steps, evaluating, sampling and saving along the way; Ctrl-C
// or SIGTERM finishes the step, saves and stops. Returns the exit status.
static int run_train(Model *m, DataLoader *train, DataLoader *val, DataPosition resume_at) {
    int B = opt.batch, T = m->cfg.seq_len;
    Tokenizer tk;
    sample_tokenizer(&tk, m->cfg.vocab);
    if (opt.load[0]) dataloader_seek(train, resume_at, T);
    AdamW adam = { (float)opt.lr, 0.9f, 0.95f, 1e-8f, (float)opt.weight_decay,
                   (float)opt.grad_clip };
    int decay_steps = opt.decay_steps ? opt.decay_steps : opt.steps;
    int save_every = opt.save_every ? opt.save_every : opt.eval_every;
    RunStats r = { .t_start = wall_time(), .saved_at = -1,
                   .tokens_per_step = (size_t)B * T * opt.grad_accum * world.ranks };
    install_signal_handlers(); // Ctrl-C, `kill PID`, a closed stdout: finish the step, save, exit
    if (opt.load[0] && m->step >= opt.steps)
        printf("nothing left to train: %s is at step %d, --steps is %d (raise --steps to train "
               "further)\n", opt.load, m->step, opt.steps);
    // the starting point; of a finished run (also --steps 0) the evaluation after its last step
    r.last_val = validate(m, val, m->step >= opt.steps ? opt.final_eval_batches : opt.eval_batches,
                          r.tokens_per_step);
    while (m->step < opt.steps && !ranks_should_stop()) {
        int step = m->step; // steps taken so far; this is step + 1
        double t0 = wall_time();
        float lr = learning_rate(step, adam.lr, opt.warmup, decay_steps);
        double norm, loss = train_step(m, train, &adam, lr, opt.grad_accum, B, T, &norm);
        if (step_not_finite(m, step + 1, loss, norm, lr)) { tokenizer_free(&tk); return 1; }
        double dt = wall_time() - t0;
        r.t_train += dt;
        r.steps_timed++;
        print_step(m, &r, loss, lr, norm, dt);
        int last = m->step == opt.steps;
        if (last || (opt.eval_every && m->step % opt.eval_every == 0))
            r.last_val = validate(m, val, last ? opt.final_eval_batches : opt.eval_batches,
                                  r.tokens_per_step);
        if (opt.sample_every && world.rank == 0 && (m->step % opt.sample_every == 0 || last)) {
            printf("--- sample at step %d ---\n", m->step);
            sample_text(m, &tk, opt.sample_len < T ? opt.sample_len : T,
                        (uint64_t)opt.seed + m->step, opt.sample_cache);
            printf("---\n");
        }
        if (opt.save[0] && (last || ranks_should_stop()
                            || (save_every && m->step % save_every == 0)))
            save_now(m, train, &r);
    }
    tokenizer_free(&tk);
    return run_report(m, train, &r);
}

#ifndef TLM_TESTING
int main(int argc, char **argv) {
    ranks_start(&argc, &argv); // MPI's ranks (dev/tlmc/ranks.h); one without -DTLM_MPI
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
// the matmul contract in section 3 (matmul_forward_reference in test_tlm.c; test_matmul and
// test_gemm_serial: every transposition, strided operands, onto C and over it, awkward shapes).
// The vector helpers of section 2 live here too: exp_float, sum16 and dot (its AVX-512 form).

#if defined(__AVX512F__)
#include <immintrin.h>
#define HAVE_AVX512 1
#else
#define HAVE_AVX512 0
#endif

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
    float p = 1 + r * (1 + r * (1.0f / 2 + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120
              + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    union { float f; uint32_t u; } bits = { t }, scale;
    scale.u = (bits.u - 0x4B400000u + 127u) << 23; // 0x4B400000: the bits of `shift`; n + 127 in
                                                   // the exponent
    return x < -87.0f ? 0.0f : p * scale.f;
}

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
        for (; i + LANES <= n; i += LANES)
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(af + i), _mm512_loadu_ps(bf + i), acc);
        if (i < n) {
            __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, af + i),
                                  _mm512_maskz_loadu_ps(k, bf + i), acc);
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
static real *gemm_pack_b[2];   // two B blocks (GEMM_B_BLOCK), shared by the threads, aligned 64
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
        // 4 lines ahead
        if (i < rows) _mm_prefetch((const char *)(src + i * lds + 64), _MM_HINT_T0);
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
static void gemm_pack_transposed(real *restrict dst, int ldd, const real *src, int lds,
                                 int rows, int kc) {
    int p0 = 0;
#if HAVE_AVX512
    if (sizeof(real) == sizeof(float)) { // float: 16 x 16 blocks through registers
        for (; p0 + 16 <= kc; p0 += 16)
            for (int r = 0; r < ldd; r += 16) {
                int n = rows - r < 0 ? 0 : rows - r < 16 ? rows - r : 16;
                int w = ldd - r < 16 ? ldd - r : 16;
                gemm_transpose16((float *)dst + (size_t)p0 * ldd + r, ldd,
                                 (__mmask16)((1u << w) - 1),
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
static void gemm_pack_direct(real *restrict dst, int ldd, const real *src, int lds,
                             int rows, int kc) {
#if HAVE_AVX512
    if (sizeof(real) == sizeof(float)) { // float: masked 16-lane moves (gcc's own loop is scalar
                                         // for ldd = 14)
        for (int p = 0; p < kc; p++) {
            const float *s = (const float *)src + (size_t)p * lds;
            _mm_prefetch((const char *)(s + 2 * ldd - 1), _MM_HINT_T1); // see the plain loop below
            for (int r = 0; r < ldd; r += 16) {
                int n = rows - r < 0 ? 0 : rows - r < 16 ? rows - r : 16,
                        w = ldd - r < 16 ? ldd - r : 16;
                __m512 v = _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), s + r);
                _mm512_mask_storeu_ps((float *)dst + (size_t)p * ldd + r,
                                      (__mmask16)((1u << w) - 1), v);
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
void gemm_avx512_rows(int kc, const float *restrict a, size_t a_row, size_t a_step,
                      const float *restrict b,
                      size_t b_step, float *restrict c, int ldc, int nr, int overwrite,
                              const int MR) {
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
void gemm_avx512_strip(int kc, const float *a, size_t a_row, size_t a_step, const float *b,
                       size_t b_step,
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
static void gemm_micro_kernel_avx512(int kc, const float *a, const float *b, float *c, int ldc,
                                     int mr, int nr, int overwrite) {
    gemm_avx512_strip(kc, a, 1, GEMM_MR_AVX512, b, GEMM_NR, c, ldc, mr, nr, overwrite);
}
// ... and from the operands where they lie
static void gemm_micro_kernel_avx512_strided(int kc, const float *a, size_t a_row, size_t a_step,
                                             const float *b,
                                              size_t b_step, float *c, int ldc, int mr, int nr,
                                                      int overwrite) {
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
static void gemm_run(real *C, const real *A, const real *B, int M, int N, int K,
                     int trans_a, int lda,
                     int trans_b, int ldb, int ldc, int accumulate, int rank, int threads,
                             int kc_even) {
    const int avx512 = HAVE_AVX512 && sizeof(real) == sizeof(float);
    const int MR = avx512 ? GEMM_MR_AVX512 : GEMM_MR_C;
    int nc_even = gemm_nc(N);
    // a B block must fit its buffer: kc_even was chosen for the whole product's N, and a
    // tile of gemm()'s grid (fewer columns) can get wider blocks from gemm_nc than that allows
    if ((size_t)nc_even * kc_even > GEMM_B_BLOCK)
        nc_even = GEMM_B_BLOCK / kc_even / GEMM_NR * GEMM_NR;
    // row strips: strip s is rows [s*M/strips, (s+1)*M/strips); a multiple of the thread
    // count, so that each thread gets the same number of rows (M = 256: 20 strips of 12.8)
    int strips = ((M + MR - 1) / MR + threads - 1) / threads * threads;
    if (strips > M) strips = M;
    const int s_lo = (int)((long)rank * strips / threads),
            s_hi = (int)((long)(rank + 1) * strips / threads);
    const int tid = thread_id();
    real *pack_a = gemm_pack_a + (size_t)tid * GEMM_MR_MAX * GEMM_KC_MAX;
    int block = 0; // shared B blocks alternate between two buffers
    for (int jc = 0; jc < N; jc += nc_even) {
        int nc = N - jc < nc_even ? N - jc : nc_even;
        int b_strips = (nc + GEMM_NR - 1) / GEMM_NR;
        for (int pc = 0; pc < K; pc += kc_even) {
            int kc = K - pc < kc_even ? K - pc : kc_even;
            int overwrite = pc == 0 && !accumulate;
            real *pack_b = threads == 1 ? gemm_pack_b_own + (size_t)tid * GEMM_B_BLOCK
                    : gemm_pack_b[block++ & 1];
            // B block: the threads pack it together, then wait for each other; after that
            // barrier every thread is also done with the block before last, that used this buffer
            int t0 = (int)((long)rank * b_strips / threads);
            int t1 = (int)((long)(rank + 1) * b_strips / threads);
            for (int t = t0; t < t1; t++) {
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
        gemm_run(C, A, B, M, N, K, trans_a, lda, trans_b, ldb, ldc, accumulate, thread_id(),
                 num_threads_here(), kc);
        return;
    }
    int tr = 1; // row groups: the largest divisor of the thread count leaving 4 strips a group
    for (int t = 1; t <= threads; t++)
        if (threads % t == 0 && strips >= 4 * t) tr = t;
    const int tc = threads / tr, col_strips = (N + GEMM_NR - 1) / GEMM_NR;
    #pragma omp parallel
    {
        int id = thread_id(), r = id / tc, c = id % tc;
        if (num_threads_here() == threads) {
            int i0 = (int)((long)r * M / tr), i1 = (int)((long)(r + 1) * M / tr);
            int j0 = (int)((long)c * col_strips / tc) * GEMM_NR,
                    j1 = (int)((long)(c + 1) * col_strips / tc) * GEMM_NR;
            if (j1 > N) j1 = N;
            if (j1 > j0)
                gemm_run(C + (size_t)i0 * ldc + j0, trans_a ? A + i0 : A + (size_t)i0 * lda,
                         trans_b ? B + (size_t)j0 * ldb : B + j0, i1 - i0, j1 - j0, K, trans_a, lda,
                                 trans_b, ldb, ldc,
                         accumulate, 0, 1, kc);
        } else { // a smaller team than asked for: one thread does it all
            if (id == 0)
                gemm_run(C, A, B, M, N, K, trans_a, lda, trans_b, ldb, ldc, accumulate, 0, 1, kc);
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
    // this thread's B buffer
    float *packed = (float *)gemm_pack_b_own + (size_t)thread_id() * GEMM_B_BLOCK;
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
            gemm_micro_kernel_avx512_strided(K, A + i0 * a_row, a_row, a_step, b, b_step,
                                             C + (size_t)i0 * ldc + j0,
                                              ldc, mr, N - j0 < GEMM_NR ? N - j0 : GEMM_NR,
                                                      !accumulate);
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
    if (sizeof(real) == sizeof(float) && K <= GEMM_KC_MAX
        && (size_t)K * (M + N + GEMM_NR) <= GEMM_SMALL) {
        gemm_small((float *)C, (const float *)A, (const float *)B, M, N, K, trans_a, lda, trans_b,
                   ldb, ldc, accumulate);
        return;
    }
#endif
    gemm_run(C, A, B, M, N, K, trans_a, lda, trans_b, ldb, ldc, accumulate, 0, 1, gemm_kc(N, K));
}

// ============================================================================
// Appendix B. The chunked memory
//
// What it speeds up: the neural memory recurrence of section 4, which costs n passes over the
// memory's weights per chunk of n tokens when taken token by token. Here a chunk is a few small
// matrix products (on gemm_serial) and an n x n scalar recurrence: in exact arithmetic the same
// function. What it is tested against: memory_recurrence_forward/backward
// of section 4 (test_memory_recurrence in test_tlm.c: Titans and Hope, depth 1 and 2, several
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
    real *coef;                     // (n + 1, 3 + 2n): cw, cs, ps, cx (n), ex (n) before token t
                                    // (row n: the end)
    real *G[2];                     // (n, n) per block: Titans' reads, IN Y^T (unused by Hope)
    // scratch:
    real *dX[2], *dY[2];            // gradients of the factors X and Y of each block
    real *dR, *dZ, *dZq;            // (n, m) x 3
    real *gcoef;                    // (n, 3 + 2n): gradients of the coefficients after token t
    real *T1, *T2, *H, *H2;         // (n, wide) x 2, (n, n) x 2 for the reads
    // (n, wide) x 5 for the end state (M1, M2 also for the reads' backward)
    real *M1, *M2, *N1, *N2, *Xs;
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
static const real *memory_factor_x(const MemoryChunk *f, int depth,
                                   int b) { return depth == 1 || b == 1 ? f->E : f->U; }
static const real *memory_factor_y(const MemoryChunk *f, int b,
                                   const real *K) { return b == 0 ? K : f->A; }
static real *memory_coef(const MemoryChunk *f, int n,
                         int row) { return f->coef + (size_t)row * (3 + 2 * n); }

// What a chunk of n tokens keeps, in its record after W_c and S_c: E (n, d); Z, A, R, U, Zq, Aq
// (n, m), depth 2 only; coef; G per block. The n x n tables grow as n^2 (n is at most T, so a long
// chunk costs memory as attention's T x T does).
static size_t memory_saved_size(int n_tokens, int d, int m, int depth) {
    size_t n = (size_t)n_tokens;
    return n * d + (depth == 2 ? 6 * n * (size_t)m
                    : 0) + (n + 1) * (3 + 2 * n) + memory_blocks(depth) * n * n;
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
    f->T1 = f->gcoef + n * (3 + 2 * n);  f->T2 = f->T1 + n * wide;  f->H =
        f->T2 + n * wide;  f->H2 = f->H + n * n;
    f->M1 = f->H2 + n * n;  f->M2 = f->M1 + n * wide;  f->N1 = f->M2 + n * wide;  f->N2 =
        f->N1 + n * wide;
    f->Xs = f->N2 + n * wide;
    f->step = f->Xs + n * wide;  f->dstep = f->step + n;
}

// Y (n, d) = M_W(X) for n inputs at once, keeping Z = X W1^T and A = silu(Z) (depth 2)
static void memory_read_rows(real *Y, real *Z, real *A, const real *W, const real *X, int n, int d,
                             int m, int depth) {
    if (depth == 1) { gemm_serial(Y, X, W, n, d, d, 0, d, 1, d, d, 0); return; }
    const real *W1 = W, *W2 = W + (size_t)m * d;
    gemm_serial(Z, X, W1, n, m, d, 0, d, 1, d, m, 0);
    for (size_t i = 0; i < (size_t)n * m; i++) A[i] = silu(Z[i]);
    memcpy(Y, X, (size_t)n * d * sizeof(real));
    gemm_serial(Y, A, W2, n, d, m, 0, m, 1, m, d, 1);        // Y = X + A W2^T
}
// its backward: dW += dM/dW^T dY, dX += dM/dX^T dY. dZ: scratch (n, m)
static void memory_read_rows_backward(real *dW, real *dX, const real *dY, const real *W,
                                      const real *X,
                                       const real *Z, const real *A, real *dZ, int n, int d, int m,
                                               int depth) {
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
static void memory_factors(MemoryChunk *f, const real *Wc, const real *K, const real *V, int n,
                           int d, int m, int depth) {
    memory_read_rows(f->E, f->Z, f->A, Wc, K, n, d, m, depth);
    for (size_t i = 0; i < (size_t)n * d; i++) f->E[i] -= V[i];
    if (depth == 1) return;
    gemm_serial(f->R, f->E, Wc + (size_t)m * d, n, m, d, 0, d, 0, m, m, 0); // R = E W2
    for (size_t i = 0; i < (size_t)n * m; i++) f->U[i] = f->R[i] * silu_grad(f->Z[i]);
}
// ... and their gradients (in f->dX, f->dY) back through that batch: dWc, dK, dV accumulated.
//   depth 2:  u = r * silu'(z):  dr = du silu'(z), dz = du r silu''(z) ;  r = W2c^T e: de += dr
//   W2c^T, dW2 += e^T dr
//             e = k + W2c a - v: dk += de, dv -= de, dW2 += de^T a, da += de W2c ;  a = silu(z): dz
//             += da silu'(z)
//             z = W1c k: dW1 += dz^T k, dk += dz W1c          (and dk += the Y gradient of block 0)
//   depth 1:  e = Wc k - v: dW += de^T k, dk += de Wc, dv -= de
static void memory_factors_backward(MemoryChunk *f, real *dWc, real *dK, real *dV, const real *Wc,
                                    const real *K,
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

// The clipped steps theta_t c_t of the chunk's tokens, c_t = min(1, clip / |g_t|) (section 4), with
// |g_t|^2 = 4 |e|^2 |k|^2 (depth 1) or 4 (|u|^2 |k|^2 + |e|^2 |a|^2) (depth 2), from the factors.
// sigma: (n) the |g_t|^2 / 4.
static void memory_clip_sigma(real *sigma, const MemoryChunk *f, const real *K, int n, int d, int m,
                              int depth) {
    for (int t = 0; t < n; t++) {
        const real *e = f->E + (size_t)t * d, *kt = K + (size_t)t * d;
        real ee = dot(e, e, d), kk = dot(kt, kt, d);
        sigma[t] = depth == 1 ? ee * kk
                 : dot(f->U + (size_t)t * m, f->U + (size_t)t * m,
                       m) * kk + ee * dot(f->A + (size_t)t * m, f->A + (size_t)t * m, m);
    }
}
static void memory_clip_steps(MemoryChunk *f, const real *K, const real *theta, int n, int d, int m,
                              int depth, real clip) {
    memory_clip_sigma(f->step, f, K, n, d, m, depth);
    for (int t = 0; t < n; t++)
        f->step[t] = theta[t] * memory_clip_factor(2 * r_sqrt(f->step[t]), clip);
}
// its backward, given dstep: dtheta += c dstep ; where clipped (c = clip/G, G = 2 sqrt(sigma)):
// dsigma = theta dstep dc/dsigma = -2 c theta dstep / G^2, into the factors' gradients f->dX, f->dY
// (depth 1: de += 2 e |k|^2 dsigma, dk += 2 k |e|^2 dsigma; depth 2 also du, da likewise)
static void memory_clip_steps_backward(MemoryChunk *f, real *dtheta, const real *K,
                                       const real *theta,
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
        real *de = (depth == 1 ? f->dX[0] : f->dX[1]) + (size_t)t * d,
                *dk = f->dY[0] + (size_t)t * d;
        if (depth == 1) {
            for (int i = 0; i < d; i++) {
                de[i] += 2 * e[i] * kk * ds;
                dk[i] += 2 * kt[i] * ee * ds;
            }
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
static void memory_coefficients(MemoryChunk *f, const real *eta, const real *theta,
                                const real *alpha, int n) {
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
static void memory_coefficients_backward(MemoryChunk *f, const real *eta, const real *alpha,
                                         real *deta, real *dalpha,
                                         real *dtheta, int n) {
    for (int t = n - 1; t >= 0; t--) {
        real *g = f->gcoef + (size_t)t * (3 + 2 * n), *gcx = g + 3, *gex = gcx + n;
        // the values before token t
        const real *p = memory_coef(f, n, t), *pcx = p + 3, *pex = pcx + n;
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
static void memory_chunk_advance(real *restrict W, real *restrict S, const real *restrict Wc,
                                 const real *restrict Sc,
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
                for (int r = 0; r < rows; r++)
                    f->Xs[(size_t)s * rows + r] = coef[s] * X[(size_t)s * rows + r];
            gemm_serial((target == 0 ? W : S) + off, f->Xs, Y, rows, cols, n, 1, rows, 0,
                        cols, cols, 1);
        }
    }
}
// Its backward. dW, dS: the adjoints of the end state in, of W_c, S_c out (without the share of
// the factors and reads at W_c, S_c, that the caller adds next). Into the last row of f->gcoef:
//   g_cw = <dW, W_c>, g_cs = <dW, S_c>, g_ps = <dS, S_c>, g_cx_s = x_s^T dW y_s, g_ex_s = x_s^T dS
//   y_s ;
// into f->dX, f->dY (accumulated): dx_s = cx_s dW y_s + ex_s dS y_s, dy_s = cx_s dW^T x_s + ex_s
// dS^T x_s.
static void memory_chunk_advance_backward(real *dW, real *dS, MemoryChunk *f, const real *Wc,
                                          const real *Sc,
                                          const real *K, int n, int d, int m, int depth) {
    int P = memory_params(depth, d, m);
    const real *c = memory_coef(f, n, n), *cx = c + 3, *ex = cx + n;
    real *g = f->gcoef + (size_t)(n - 1) * (3 + 2 * n), *gcx = g + 3, *gex = gcx + n;
    for (int b = 0; b < memory_blocks(depth); b++) {
        int rows, cols;
        size_t off;
        memory_block(depth, d, m, b, &rows, &cols, &off);
        const real *X = memory_factor_x(f, depth, b), *Y = memory_factor_y(f, b, K);
        // M1 = Y dW^T   (n, rows)
        gemm_serial(f->M1, Y, dW + off, n, rows, cols, 0, cols, 1, cols, rows, 0);
        gemm_serial(f->M2, Y, dS + off, n, rows, cols, 0, cols, 1, cols, rows, 0); // M2 = Y dS^T
        // N1 = X dW     (n, cols)
        gemm_serial(f->N1, X, dW + off, n, cols, rows, 0, rows, 0, cols, cols, 0);
        gemm_serial(f->N2, X, dS + off, n, cols, rows, 0, rows, 0, cols, cols, 0); // N2 = X dS
        for (int s = 0; s < n; s++) {
            const real *x = X + (size_t)s * rows, *m1 = f->M1 + (size_t)s * rows,
                    *m2 = f->M2 + (size_t)s * rows;
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
static void memory_block_read(real *OUT, real *G, const real *IN, const real *Wcb, const real *Scb,
                              MemoryChunk *f,
                              const real *X, const real *Y, int n, int rows, int cols) {
    gemm_serial(f->T1, IN, Wcb, n, rows, cols, 0, cols, 1, cols, rows, 0);
    gemm_serial(f->T2, IN, Scb, n, rows, cols, 0, cols, 1, cols, rows, 0);
    gemm_serial(G, IN, Y, n, n, cols, 0, cols, 1, cols, n, 0);
    for (int t = 0; t < n; t++) {
        const real *c = memory_coef(f, n, t + 1), *cx = c + 3;
        for (int r = 0; r < rows; r++) {
            size_t i = (size_t)t * rows + r;
            OUT[i] = c[0] * f->T1[i] + c[1] * f->T2[i];
        }
        for (int s = 0; s < n; s++)
            f->H[(size_t)t * n + s] = s <= t ? cx[s] * G[(size_t)t * n + s] : 0;
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
static void memory_block_read_backward(real *dIN, real *dWcb, real *dScb, real *dX, real *dY,
                                       const real *dOUT,
                                       const real *G, const real *IN, const real *Wcb,
                                               const real *Scb,
                                       MemoryChunk *f, const real *X, const real *Y, int n,
                                               int rows, int cols) {
    real *P1 = f->T1, *P2 = f->T2, *D1 = f->M1, *D2 = f->M2, *dH = f->H, *H = f->H2;
    gemm_serial(P1, dOUT, Wcb, n, cols, rows, 0, rows, 0, cols, cols, 0);
    gemm_serial(P2, dOUT, Scb, n, cols, rows, 0, rows, 0, cols, cols, 0);
    gemm_serial(dH, dOUT, X, n, n, rows, 0, rows, 1, rows, n, 0);
    for (int t = 0; t < n; t++) {
        const real *c = memory_coef(f, n, t + 1), *cx = c + 3, *dout = dOUT + (size_t)t * rows;
        const real *in = IN + (size_t)t * cols, *p1 = P1 + (size_t)t * cols,
                *p2 = P2 + (size_t)t * cols;
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
static void memory_chunk_read(real *Yout, const real *Q, const real *Wc, const real *Sc,
                              MemoryChunk *f,
                              const real *K, int n, int d, int m, int depth) {
    if (depth == 1) { memory_block_read(Yout, f->G[0], Q, Wc, Sc, f, f->E, K, n, d, d); return; }
    size_t o2 = (size_t)m * d;
    memory_block_read(f->Zq, f->G[0], Q, Wc, Sc, f, f->U, K, n, m, d);
    for (size_t i = 0; i < (size_t)n * m; i++) f->Aq[i] = silu(f->Zq[i]);
    memory_block_read(Yout, f->G[1], f->Aq, Wc + o2, Sc + o2, f, f->E, f->A, n, d, m);
    for (size_t i = 0; i < (size_t)n * d; i++) Yout[i] += Q[i];
}
static void memory_chunk_read_backward(real *dQ, real *dWc, real *dSc, const real *dYout,
                                       const real *Q,
                                       const real *Wc, const real *Sc, MemoryChunk *f,
                                               const real *K,
                                       int n, int d, int m, int depth) {
    if (depth == 1) {
        memory_block_read_backward(dQ, dWc, dSc, f->dX[0], f->dY[0], dYout, f->G[0], Q, Wc, Sc, f,
                                   f->E, K, n, d, d);
        return;
    }
    size_t o2 = (size_t)m * d; // the hidden layer Zq, Aq: kept by the forward
    memset(f->dZq, 0, (size_t)n * m * sizeof(real));
    for (size_t i = 0; i < (size_t)n * d; i++) dQ[i] += dYout[i];
    memory_block_read_backward(f->dZq, dWc + o2, dSc + o2, f->dX[1], f->dY[1], dYout, f->G[1],
                               f->Aq, Wc + o2,
                               Sc + o2, f, f->E, f->A, n, d, m);
    for (size_t i = 0; i < (size_t)n * m; i++) f->dZq[i] *= silu_grad(f->Zq[i]);
    memory_block_read_backward(dQ, dWc, dSc, f->dX[0], f->dY[0], f->dZq, f->G[0], Q, Wc, Sc, f,
                               f->U, K, n, m, d);
}

// One chunk: its n tokens from s, starting from W_c, S_c at Wc (its record, record long; len: the
// chunk length the records are laid out for); y's rows s..s+n from k, v, q and the gates (rows
// from 0); its end state W, S into the next record (after the last chunk: the two P-vectors).
static void memory_chunk_forward(real *y, real *Wc, size_t record, MemoryChunk *f, int len,
                                 const real *k, const real *v, const real *q, const real *theta,
                                 const real *eta, const real *alpha, int s, int n, MemorySize ms,
                                 int read_chunk_start) {
    int d = ms.d, m = ms.m, depth = ms.depth, P = memory_params(depth, d, m);
    real *Sc = Wc + P, *Wn = Wc + record, *Sn = Wn + P;
    const real *K = k + (size_t)s * d, *Q = q + (size_t)s * d;
    memory_chunk_saved(f, Sc + P, len, d, m, depth);
    memory_factors(f, Wc, K, v + (size_t)s * d, n, d, m, depth);
    memory_clip_steps(f, K, theta + s, n, d, m, depth, ms.clip);
    memory_coefficients(f, eta + s, f->step, alpha + s, n);
    if (read_chunk_start) // Hope
        memory_read_rows(y + (size_t)s * d, f->Zq, f->Aq, Wc, Q, n, d, m, depth);
    else                  // Titans
        memory_chunk_read(y + (size_t)s * d, Q, Wc, Sc, f, K, n, d, m, depth);
    memory_chunk_advance(Wn, Sn, Wc, Sc, f, K, n, d, m, depth);
}

// y (T, d) from k, v, q (T, d) and the gates (T); states: see memory_state_size().
static void memory_chunked_forward(real *y, real *states, real *scratch, const real *k,
                                   const real *v, const real *q,
                           const real *theta, const real *eta, const real *alpha, const real *W0,
                           int T, MemorySize ms, int read_chunk_start) {
    int d = ms.d, m = ms.m, depth = ms.depth, chunk = ms.chunk;
    int P = memory_params(depth, d, m), len = memory_chunk_len(T, ms);
    size_t record = memory_record_size(T, ms);
    MemoryChunk f;
    memory_chunk_layout(&f, scratch, len, d, m);
    memcpy(states, W0, P * sizeof(real)); // the first chunk's start
    memset(states + P, 0, P * sizeof(real));
    for (int c = 0, s = 0; s < T; c++, s += chunk)
        memory_chunk_forward(y, states + c * record, record, &f, len, k, v, q, theta, eta, alpha,
                             s, T - s < chunk ? T - s : chunk, ms, read_chunk_start);
}

static void memory_chunked_forward_at(real *y, real *states, real *scratch, const real *k,
                                      const real *v, const real *q, const real *theta,
                                      const real *eta, const real *alpha, const real *W0, int T,
                                      int p, MemorySize ms, int read_chunk_start) {
    int P = memory_params(ms.depth, ms.d, ms.m), len = memory_chunk_len(T, ms);
    int c = p / ms.chunk, s = c * ms.chunk;
    size_t record = memory_record_size(T, ms);
    MemoryChunk f;
    memory_chunk_layout(&f, scratch, len, ms.d, ms.m);
    if (p == 0) {
        memcpy(states, W0, P * sizeof(real));
        memset(states + P, 0, P * sizeof(real));
    }
    memory_chunk_forward(y, states + c * record, record, &f, len, k, v, q, theta, eta, alpha, s,
                         p + 1 - s, ms, read_chunk_start);
}

// Accumulates the gradients of every input of memory_chunked_forward, given dy (T, d), going back
// through the chunks. dW, dS: the adjoints of the state at the end of the chunk at hand (zero at
// the end of the sequence); each chunk's backward first turns them into those of its start W_c,
// S_c, then adds what the chunk's reads and factors contributed at W_c, S_c. At the very start
// dW0 += dW. (v reaches it through the kept factors.)
static void memory_chunked_backward(real *dk, real *dv, real *dq, real *dtheta, real *deta,
                                    real *dalpha, real *dW0,
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
        const real *Wc = states + c * record, *Sc = Wc + P, *K = k + (size_t)s * d,
                *Q = q + (size_t)s * d;
        // the forward's factors and coefficients
        memory_chunk_saved(&f, (real *)Sc + P, len, d, m, depth);
#if defined(__GNUC__)
        // the record of the chunk before was written long ago (the whole forward ran since): start
        // bringing it into L2 now, while this chunk computes, instead of waiting on each line later
        if (c > 0)
            for (size_t i = 0; i < record; i += 64 / sizeof(real))
                __builtin_prefetch(Wc - record + i, 0, 2);
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
            memory_read_rows_backward(dW, dq + (size_t)s * d, dy + (size_t)s * d, Wc, Q, f.Zq, f.Aq,
                                      f.dZq, n, d, m, depth);
        } else {
            memory_chunk_read_backward(dq + (size_t)s * d, dW, dS, dy + (size_t)s * d, Q, Wc, Sc,
                                       &f, K, n, d, m, depth);
        }
        memset(f.dstep, 0, (size_t)n * sizeof(real));
        memory_coefficients_backward(&f, eta + s, alpha + s, deta + s, dalpha + s, f.dstep, n);
        memory_clip_steps_backward(&f, dtheta + s, K, theta + s, n, d, m, depth, ms.clip);
        memory_factors_backward(&f, dW, dk + (size_t)s * d, dv + (size_t)s * d, Wc, K, n,
                                d, m, depth);
    }
    for (int p = 0; p < P; p++) dW0[p] += dW[p];
}
