/*
 * dev/tlmc/options.h — the command line: one table of every option, and what is generated
 * from it (parsing, -h, the checkpoint's option area, the comparison on --load; the JSONL
 * config record in dev/tlmc/log.h reads the same rows).
 *
 * Provides: Options (every option's value; the model's in its Config), the table options[]
 *   (NUM_OPTIONS rows), opt (this run's values) and option_given[] (set on the command line),
 *   parse_args (defaults, then the command line, each value checked against its row), usage
 *   (-h), usage_error (one line and the pointer to -h, exit status 2), option_parse and
 *   option_format (a row's value from and to text), given(&opt.field), options_default,
 *   options_follow (a default that names another option takes its value), options_to_text and
 *   options_from_text (the checkpoint's option area).
 * Needs, from the includer: Config, Arch and Taper with arch_names and taper_names,
 *   MAX_LAYERS, MAX_CMS_LEVELS (train_tlm.c, section 2); dev/tlmc/utils.h; ranks_end
 *   (dev/tlmc/ranks.h). How options combine (--dim a multiple of --heads, the taper's widths)
 *   is config_finish's, in train_tlm.c; a row holds its option's range and nothing else does.
 */
#ifndef TLMC_OPTIONS_H
#define TLMC_OPTIONS_H
#include <float.h>
#include <stddef.h>
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

typedef struct Options Options;
struct Options {
    Config cfg;                                         // the model options
    char train[TEXT_MAX], val[TEXT_MAX], tokenizer[TEXT_MAX];
    char save[TEXT_MAX], load[TEXT_MAX], log[TEXT_MAX];
    int batch, grad_accum, steps, warmup, decay_steps, eval_every, eval_batches;
    int final_eval_batches, sample_every, sample_len, save_every, eval_only, analyze;
    double lr, weight_decay, grad_clip;
    long seed, data_seed;
    char prompt[TEXT_MAX];                              // --sample
    int sample, top_k, samples, sample_cache;
    double temperature;
};

typedef enum { OPT_INT, OPT_LONG, OPT_REAL, OPT_STRING, OPT_FLAG, OPT_ARCH, OPT_TAPER,
               OPT_LIST } OptType;
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
    { "arch", OPT_ARCH, KIND_MODEL, OFF(cfg.arch), "transformer", 0, 0, 0,
      "transformer | gated | titans | hope" },
    { "layers", OPT_INT, KIND_MODEL, OFF(cfg.layers), "6", 1, MAX_LAYERS, 0, "number of blocks L" },
    { "dim", OPT_INT, KIND_MODEL, OFF(cfg.dim), "128", 2, 1 << 14, 0, "model width C" },
    { "heads", OPT_INT, KIND_MODEL, OFF(cfg.heads), "4", 1, 1 << 14, 0, "attention heads" },
    { "vocab", OPT_INT, KIND_MODEL, OFF(cfg.vocab), "0", 2, 65536, 0,
      "vocabulary size (0: from the shards' header, else 50257)" },
    { "mlp-width", OPT_INT, KIND_MODEL, OFF(cfg.mlp_width), "384", 1, 1 << 18, 0,
      "mean MLP hidden width H (the uniform model's width)" },
    { "taper", OPT_TAPER, KIND_MODEL, OFF(cfg.taper), "cosine", 0, 0, 0,
      "uniform | cosine | linear | sigmoid | reverse | groups:v0,v1,.. (contiguous groups of "
      "layers)" },
    { "taper-start", OPT_REAL, KIND_MODEL, OFF(cfg.taper_start), "1.5", FLT_MIN, FLT_MAX, 0,
      "first layer's width in multiples of H" },
    { "taper-end", OPT_REAL, KIND_MODEL, OFF(cfg.taper_end), "0.5", FLT_MIN, FLT_MAX, 0,
      "last layer's width in multiples of H" },
    { "taper-multiple", OPT_INT, KIND_MODEL, OFF(cfg.taper_multiple), "32", 1, 1 << 18, 0,
      "round every width to a multiple of this" },
    { "mlp-widths", OPT_LIST, KIND_MODEL, OFF(cfg.widths_given), "", 1, 1 << 20, MAX_LAYERS,
      "every layer's MLP width w0,w1,.. (sum L*H; instead of --taper)", 0, OFF(cfg.mlp_widths) },
    { "seq-len", OPT_INT, KIND_MODEL, OFF(cfg.seq_len), "256", 1, 8192, 0, "sequence length T" },
    { "untied", OPT_FLAG, KIND_MODEL, OFF(cfg.untied), "0", 0, 1, 0,
      "separate output head (default: tied to the embedding)" },
    { "gate-headwise", OPT_FLAG, KIND_MODEL, OFF(cfg.gate_headwise), "0", 0, 1, 0,
      "gated: one gate per head instead of per channel" },
    { "match-params", OPT_FLAG, KIND_MODEL, OFF(cfg.match_params), "0", 0, 1, 0,
      "shrink the mean MLP width to the transformer's parameter count (stored: the shrunk width)" },
    { "window", OPT_INT, KIND_MODEL, OFF(cfg.window), "64", 1, BIG, 0,
      "titans: sliding attention window" },
    { "mem-depth", OPT_INT, KIND_MODEL, OFF(cfg.mem_depth), "2", 1, 2, 0,
      "titans: memory depth, 1 (linear) or 2 (MLP)" },
    { "mem-hidden", OPT_INT, KIND_MODEL, OFF(cfg.mem_hidden), "32", 1, 1 << 14, 0,
      "titans: hidden width of the depth-2 memory" },
    { "mem-chunk", OPT_INT, KIND_MODEL, OFF(cfg.mem_chunk), "16", 1, 1 << 20, 0,
      "titans: tokens per memory chunk (1 = exact recurrence)" },
    { "mem-lr", OPT_REAL, KIND_MODEL, OFF(cfg.mem_lr), "0.00625", FLT_MIN, 1, 0,
      "titans, hope: the memory's largest step size theta_max (the same for any chunk)" },
    { "mem-clip", OPT_REAL, KIND_MODEL, OFF(cfg.mem_clip), "1", 0, 1e6, 0,
      "titans, hope: bound on each token's inner-gradient norm (0: off)" },
    { "mem-conv", OPT_INT, KIND_MODEL, OFF(cfg.mem_conv), "4", 0, 64, 0,
      "titans, hope: causal depthwise conv kernel on the memory's q, k, v (0: off)" },
    { "mem-silu", OPT_INT, KIND_MODEL, OFF(cfg.mem_silu), "1", 0, 1, 0,
      "titans, hope: SiLU on the memory's q, k, v (0: off)" },
    { "cms-levels", OPT_INT, KIND_MODEL, OFF(cfg.cms_levels), "2", 1, MAX_CMS_LEVELS, 0,
      "hope: memory levels, including the slow SwiGLU" },
    { "cms-width", OPT_INT, KIND_MODEL, OFF(cfg.cms_width), "64", 1, 1 << 14, 0,
      "hope: mean hidden width of the fast levels" },
    { "cms-chunks", OPT_LIST, KIND_MODEL, OFF(cfg.cms_chunks[1]), "16,64", 1, 1 << 20,
      MAX_CMS_LEVELS - 1,
      "hope: update period of levels 2, 3, .." },
    // the training run
    { "train", OPT_STRING, KIND_TRAIN, OFF(train), "data/brown_byte_train.bin", 0, 0, 0,
      "training shard(s), a file or a glob" },
    { "val", OPT_STRING, KIND_TRAIN, OFF(val), "data/brown_byte_val.bin", 0, 0, 0,
      "validation shard(s)" },
    { "tokenizer", OPT_STRING, KIND_TRAIN, OFF(tokenizer), "", 0, 0, 0,
      "tokenizer file for samples (default: beside --train)", QUIET },
    { "batch", OPT_INT, KIND_TRAIN, OFF(batch), "8", 1, 1 << 24, 0, "sequences per micro-batch B" },
    { "grad-accum", OPT_INT, KIND_TRAIN, OFF(grad_accum), "1", 1, 1 << 20, 0,
      "micro-batches per optimizer step" },
    { "steps", OPT_INT, KIND_TRAIN, OFF(steps), "600", 0, BIG, 0,
      "total optimizer steps (a resumed run continues to this)" },
    { "lr", OPT_REAL, KIND_TRAIN, OFF(lr), "3e-3", FLT_MIN, FLT_MAX, 0, "peak learning rate" },
    { "warmup", OPT_INT, KIND_TRAIN, OFF(warmup), "30", 0, BIG, 0, "linear warmup steps" },
    { "decay-steps", OPT_INT, KIND_TRAIN, OFF(decay_steps), "0", 0, BIG, 0,
      "length of the cosine schedule (0: --steps)" },
    { "weight-decay", OPT_REAL, KIND_TRAIN, OFF(weight_decay), "0.1", 0, FLT_MAX, 0,
      "AdamW decoupled weight decay (matrices only)" },
    { "grad-clip", OPT_REAL, KIND_TRAIN, OFF(grad_clip), "1", 0, FLT_MAX, 0,
      "clip the global gradient norm to this (0: off)" },
    { "seed", OPT_LONG, KIND_TRAIN, OFF(seed), "1337", 0, 0, 0,
      "random seed (initialisation and samples)" },
    { "data-seed", OPT_LONG, KIND_TRAIN, OFF(data_seed), "--seed", 0, 0, 0,
      "seed of the training order (every epoch: the shards, and each one's sequences, permuted)",
      NEEDED },
    { "eval-every", OPT_INT, KIND_TRAIN, OFF(eval_every), "100", 0, BIG, 0,
      "validate every N steps (0: only first and last)" },
    { "eval-batches", OPT_INT, KIND_TRAIN, OFF(eval_batches), "8", 0, BIG, 0,
      "validation batches N per evaluation, spread over the M that --val holds: batch i of N "
      "is batch floor(i M / N) of the split (0: all M)" },
    { "final-eval-batches", OPT_INT, KIND_TRAIN, OFF(final_eval_batches), "--eval-batches", 0, BIG,
      0, "validation batches of the evaluation after the last step, which `done` reports "
      "(0: all)" },
    { "sample-every", OPT_INT, KIND_TRAIN, OFF(sample_every), "200", 0, BIG, 0,
      "print a text sample every N steps (0: never)", QUIET },
    { "sample-len", OPT_INT, KIND_TRAIN, OFF(sample_len), "200", 1, 1 << 20, 0,
      "tokens per sample", QUIET },
    { "save-every", OPT_INT, KIND_TRAIN, OFF(save_every), "0", 0, BIG, 0,
      "save every N steps (0: --eval-every) and at the end" },
    // this invocation
    { "save", OPT_STRING, KIND_RUN, OFF(save), "", 0, 0, 0, "checkpoint file to write" },
    { "load", OPT_STRING, KIND_RUN, OFF(load), "", 0, 0, 0,
      "checkpoint to resume from: model, optimizer, data position, and the training options not "
      "given" },
    { "eval-only", OPT_FLAG, KIND_RUN, OFF(eval_only), "0", 0, 1, 0,
      "with --load: print the validation loss and exit" },
    { "analyze", OPT_FLAG, KIND_RUN, OFF(analyze), "0", 0, 1, 0,
      "with --load: per-layer contribution analysis" },
    { "log", OPT_STRING, KIND_RUN, OFF(log), "", 0, 0, 0,
      "append JSONL records (config, train, val, ...) to this file" },
    { "sample", OPT_FLAG, KIND_RUN, OFF(sample), "0", 0, 1, 0,
      "with --load: print --samples continuations of --prompt, then exit" },
    { "prompt", OPT_STRING, KIND_RUN, OFF(prompt), "", 0, 0, 0,
      "--sample: the text to continue (GPT-2: after <|endoftext|>)" },
    { "temperature", OPT_REAL, KIND_RUN, OFF(temperature), "1", 0, FLT_MAX, 0,
      "--sample: softmax temperature (0: greedy)" },
    { "top-k", OPT_INT, KIND_RUN, OFF(top_k), "0", 0, BIG, 0,
      "--sample: draw from the k likeliest tokens only (0: from all)" },
    { "samples", OPT_INT, KIND_RUN, OFF(samples), "1", 1, 1 << 20, 0,
      "--sample: how many continuations" },
    { "sample-cache", OPT_INT, KIND_RUN, OFF(sample_cache), "1", 0, 1, 0,
      "samples: cache keys, values and memory states (0: a full forward per token)" },
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

static int parse_list(const char *text, int *out, int count, double lo, double hi,
                      char *why, size_t n) {
    int k = 0;
    for (const char *p = text; *p; k++) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || (*end && *end != ',') || k >= count || v < lo || v > hi)
            return option_fail(why, n, "is not a list of up to %d integers in %.0f..%.0f",
                               count, lo, hi);
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
        if ((x < o->lo || x > o->hi) && !unset)
            return option_fail(why, n, "must be in %.0f..%.0f", o->lo, o->hi);
        *(int *)p = (int)x;
        return 0;
    }
    case OPT_REAL: {
        double x = strtod(text, &end);
        if (!*text || *end || isnan(x)) return option_fail(why, n, "is not a number");
        if (!(fabs(x) <= FLT_MAX))
            return option_fail(why, n, "is out of the range of a float (|x| <= %g)", FLT_MAX);
        if (x != 0 && fabs(x) < FLT_MIN)
            return option_fail(why, n, "is too small for a float (0, or |x| >= %g)", FLT_MIN);
        if (o->lo == FLT_MIN && !(x > 0)) return option_fail(why, n, "must be positive");
        if (x < o->lo)
            return option_fail(why, n, o->lo ? "must be at least %g"
                               : "must not be negative", o->lo);
        if (x > o->hi) return option_fail(why, n, "must be at most %g", o->hi);
        *(double *)p = x;
        return 0;
    }
    case OPT_STRING:
        if (strlen(text) >= TEXT_MAX)
            return option_fail(why, n, "is too long (at most %d characters)", TEXT_MAX - 1);
        if (strchr(text, '\n')) return option_fail(why, n, "contains a newline");
        memcpy(p, text, strlen(text) + 1);
        return 0;
    case OPT_FLAG:
        if (strcmp(text, "0") && strcmp(text, "1")) return option_fail(why, n, "is not 0 or 1");
        *(int *)p = text[0] == '1';
        return 0;
    case OPT_ARCH:
        for (int k = 0; k < ARCH_COUNT; k++)
            if (!strcmp(text, arch_names[k])) { *(Arch *)p = (Arch)k; return 0; }
        return option_fail(why, n, "unknown value (transformer | gated | titans | hope)");
    case OPT_TAPER: {
        Config *c = &v->cfg;
        if (!strncmp(text, "groups:", 7)) {
            const char *q = text + 7;
            int k = 0;
            while (*q) {
                double x = strtod(q, &end);
                if (end == q || (*end && *end != ',') || !(x > 0) || !(x <= FLT_MAX)
                    || k >= MAX_LAYERS)
                    return option_fail(why, n,
                                       "is not groups: and up to %d positive numbers, e.g. "
                                       "groups:1.5,1,0.5", MAX_LAYERS);
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
            if (k != TAPER_GROUPS && !strcmp(text, taper_names[k])) {
                c->taper = (Taper)k;
                c->taper_groups = 0;
                return 0;
            }
        return option_fail(why, n, "unknown value (uniform | cosine | linear | sigmoid | reverse | "
                                   "groups:v0,v1,..)");
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
        if (w < 0 || (size_t)w >= n - len)
            die("checkpoint: the options do not fit in %zu bytes", n);
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
        if (!o || o->kind == KIND_RUN)
            die("%s: the checkpoint stores an unknown option '%.40s' (from a newer train_tlm?)",
                path, line);
        if (option_parse(o, saved, eq + 1, why, sizeof(why)))
            die("%s: the checkpoint's --%s '%.40s' %s", path, o->name, eq + 1, why);
        if (named) named[o - options] = 1;
    }
}

// a hash of every option's value (MPI: the ranks must agree, ranks_check_agree)
static uint64_t options_hash(const Options *v) {
    uint64_t h = 0;
    char value[TEXT_MAX];
    for (int k = 0; k < NUM_OPTIONS; k++) {
        option_format(&options[k], v, value, sizeof(value));
        h = key_mix(key_mix(h, fnv1a64(options[k].name)), fnv1a64(value));
    }
    return h;
}

static void usage(FILE *out) {
    fprintf(out, "usage: ./train_tlm [options]\n"
                 "Trains a (tapered) language model; with no options a small cosine-tapered "
                 "Transformer\n"
                 "on the Brown Corpus as bytes, data/brown_byte_*.bin (make data). With --load, "
                 "the model\n"
                 "options must match the checkpoint and the training options not given are "
                 "restored.\n"
                 "Options (default in brackets; a default that names an option is its value):\n");
    for (int i = 0; i < NUM_OPTIONS; i++) {
        const Option *o = &options[i];
        char name[40];
        snprintf(name, sizeof(name), "--%s%s", o->name, o->type == OPT_FLAG ? "" : " X");
        const char *def = o->type == OPT_FLAG ? "off" : o->def;
        fprintf(out, "  %-22s %s%s%s%s\n", name, o->help, def[0] ? " [" : "", def,
                def[0] ? "]" : "");
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
        if (option_parse(o, &opt, value, why, sizeof(why)))
            usage_error("--%s: '%s' %s", name, value, why);
        option_given[o - options] = 1;
    }
    options_follow(&opt, option_given);
    Config *c = &opt.cfg;
    if (c->widths_given[0]) {
        if (given(&c->taper) && c->taper != TAPER_EXPLICIT)
            usage_error("--mlp-widths gives the widths: drop --taper %s", taper_names[c->taper]);
        if (given(&c->taper_start) || given(&c->taper_end))
            usage_error("--mlp-widths gives the widths: drop --taper-%s (it shapes a taper)",
                        given(&c->taper_start) ? "start" : "end");
        int n = 0;
        while (n < MAX_LAYERS && c->widths_given[n] > 0) n++;
        if (n != c->layers && (!opt.load[0] || given(&c->layers))) // (--load: the file's layers)
            usage_error("--mlp-widths gives %d widths for --layers %d: one a layer", n, c->layers);
        c->taper = TAPER_EXPLICIT;
    }
    if ((opt.eval_only || opt.analyze) && !opt.load[0])
        usage_error("--eval-only and --analyze need --load");
    if (opt.save[0] && strlen(opt.save) + SAVE_SUFFIX > TEXT_MAX - 1)
        usage_error("--save: the path is too long (at most %d characters, for its .tmp.PID)",
                    TEXT_MAX - 1 - SAVE_SUFFIX);
    if (opt.sample && !opt.load[0])
        usage_error("--sample needs --load, the checkpoint to sample from");
    if (opt.sample + opt.eval_only + opt.analyze > 1)
        usage_error("--sample, --eval-only and --analyze are separate runs: give one");
    if (!opt.sample && (opt.prompt[0] || opt.temperature != 1 || opt.top_k || opt.samples != 1))
        usage_error("--prompt, --temperature, --top-k and --samples go with --sample");
    ranks_check_agree(options_hash(&opt), "options"); // (MPI: the same command on every rank)
    return 0;
}

#endif // TLMC_OPTIONS_H
