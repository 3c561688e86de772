/*
 * make_seeds.c — writes the seed corpora of the fuzz targets with the trainer's own code:
 *   DIR/fuzz_shard/       valid token shards (bytes; vocabulary 0 = unknown; a tiny vocabulary)
 *   DIR/fuzz_checkpoint/  checkpoints of tiny models, every architecture that builds here,
 *                         with and without AdamW state, several tapers and options
 *   DIR/fuzz_tokenizer/   llm.c tokenizer files: byte-level v2 (eot 10), v1, a small multi-byte one
 *   DIR/fuzz_cli/         command lines, one argument per line
 *   DIR/fuzz_encoder/     GPT-2-style BPE encoder files for fuzz_encoder_vocab.h's tokenizer,
 *                         with prompts in the header's unused slots; truncated and bad ones
 *   DIR/cli.dict          libFuzzer dictionary for fuzz_cli: every --option from the options table
 * Usage: make_seeds DIR     (run_fuzz.sh builds it and calls it with dev/fuzz/corpus)
 */
#define TLM_TESTING 1 // as -DTLM_TESTING: no main(); fuzz_common.h catches die()
#include "fuzz_common.h"
#include "../../train_tlm.c"
#include "fuzz_common.h"
#include "fuzz_encoder_vocab.h"
#include <sys/stat.h>

static FILE *open_file(const char *path, const char *mode) {
    FILE *f = fopen(path, mode);
    if (!f) die("%s: cannot open: %s", path, strerror(errno));
    return f;
}

static char dir[2048];
static int written;

static const char *out(const char *target, const char *name) {
    static char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, target);
    mkdir(path, 0755);
    snprintf(path, sizeof(path), "%s/%s/%s", dir, target, name);
    written++;
    return path;
}

static void write_file(const char *path, const void *a, size_t na, const void *b, size_t nb) {
    FILE *f = open_file(path, "wb");
    if (!write_all(a, 1, na, f) || (nb && !write_all(b, 1, nb, f)) || fclose(f) != 0) die("%s: write failed", path);
}

// --- shards: llm.c header of 256 int32, then uint16 tokens. Slots 4..7 steer fuzz_shard.
static void shard(const char *name, int n, int vocab, int mod, int32_t batch, int32_t seq, int32_t seek_shard, int32_t seek_slot) {
    int32_t h[SHARD_HEADER] = { SHARD_MAGIC, 1, n, vocab, batch, seq, seek_shard, seek_slot };
    uint16_t *t = xcalloc(n, sizeof(uint16_t), "seed");
    Rng rng = rng_seeded(3);
    for (int i = 0; i < n; i++) t[i] = (uint16_t)((i % 5 == 0 ? rng_u32(&rng) : (uint32_t)i * 7) % mod);
    write_file(out("fuzz_shard", name), h, sizeof(h), t, (size_t)n * 2);
    free(t);
}

// --- checkpoints of tiny models ---
static Config tiny(Arch arch, Taper taper, int layers) { // the options' defaults, made small
    Options o;
    options_default(&o);
    Config c = o.cfg, t = { .arch = arch, .layers = layers, .dim = 8, .heads = 2, .vocab = 11, .seq_len = 6,
                            .mlp_width = 16, .taper = taper, .taper_start = 1.5, .taper_end = 0.5, .taper_multiple = 4,
                            .window = 3, .mem_depth = 2, .mem_hidden = 4, .mem_chunk = 2,
                            .cms_levels = 2, .cms_width = 8, .cms_chunks = { 0, 2, 3, 0 } };
    c.arch = t.arch; c.layers = t.layers; c.dim = t.dim; c.heads = t.heads; c.vocab = t.vocab; c.seq_len = t.seq_len;
    c.mlp_width = t.mlp_width; c.taper = t.taper; c.taper_start = t.taper_start; c.taper_end = t.taper_end;
    c.taper_multiple = t.taper_multiple; c.window = t.window; c.mem_depth = t.mem_depth; c.mem_hidden = t.mem_hidden;
    c.mem_chunk = t.mem_chunk; c.cms_levels = t.cms_levels; c.cms_width = t.cms_width;
    memcpy(c.cms_chunks, t.cms_chunks, sizeof(c.cms_chunks));
    return c; // (mem_lr, mem_clip, mem_conv, mem_silu and the rest: the defaults)
}

static void checkpoint(const char *name, Config c, int with_adam, int step) {
    jmp_buf here;
    tlm_error_jump = &here;
    if (setjmp(here)) {
        tlm_error_jump = NULL;
        fprintf(stderr, "make_seeds: skipped %s (%s): %s\n", name, arch_names[c.arch], tlm_last_error);
        return;
    }
    Model *m = model_create(&c, 1, c.seq_len < 4 ? c.seq_len : 4);
    init_params(m, 1234);
    m->step = step;
    if (with_adam) {
        m->adam_m = xcalloc(m->num_params, sizeof(float), "seed");
        m->adam_v = xcalloc(m->num_params, sizeof(float), "seed");
        for (size_t i = 0; i < m->num_params; i++) { m->adam_m[i] = 1e-3f * (float)(i % 7); m->adam_v[i] = 1e-6f * (float)(i % 5); }
    }
    DataPosition pos = { .epoch = 1, .shard = 0, .slot = 17 };
    if (checkpoint_save(m, out("fuzz_checkpoint", name), pos) != 0) die("%s: cannot save", name);
    model_free(m);
    tlm_error_jump = NULL;
}

// --- tokenizers: header of 256 uint32, then per token a length byte and the bytes ---
static void tokenizer(const char *name, uint32_t version, uint32_t vocab, uint32_t eot, int multibyte) {
    uint32_t h[256] = { 20240328, version, vocab, eot };
    unsigned char *body = xcalloc(vocab, 8, "seed");
    size_t n = 0;
    for (uint32_t i = 0; i < vocab; i++) {
        int len = multibyte ? 1 + (int)(i % 4) : 1;
        body[n++] = (unsigned char)len;
        for (int j = 0; j < len; j++) body[n++] = (unsigned char)(multibyte ? 'a' + (i + j) % 26 : i);
    }
    write_file(out("fuzz_tokenizer", name), h, sizeof(h), body, n);
    free(body);
}

// --- encoder files (train_tlm.c's format, as dev/prepare_data.py writes it) for the tokenizer
// of fuzz_encoder_vocab.h. fuzz_encoder reads a prompt from header bytes 512..1019 and its
// tokenizer variant from slot 255. keep: how many bytes to write (0: all); extra: bytes after.
static const int32_t seed_ranges[] = { // (first, last) code points: letters, numbers, white space
    'A', 'Z', 'a', 'z', 0xAA, 0xAA, 0xC0, 0xD6, 0xD8, 0xF6, 0xF8, 0x2C1, 0x370, 0x3FF, 0x4E00, 0x9FFF,
    '0', '9', 0xB2, 0xB3, 0x660, 0x669,
    9, 13, ' ', ' ', 0x85, 0x85, 0xA0, 0xA0, 0x2000, 0x200A, 0x3000, 0x3000,
};
static void encoder(const char *name, const char *prompt, int variant, int merges, long keep, int extra) {
    int32_t h[ENCODER_HEADER] = { ENCODER_MAGIC, 1, FZV_VOCAB, merges, 8, 3, 6, 15, 0, 0 };
    h[255] = variant;
    snprintf((char *)h + 512, 1020 - 512, "%s", prompt);
    size_t nr = sizeof(seed_ranges) / sizeof(seed_ranges[0]), n = 0;
    int32_t *body = xcalloc(3 * (size_t)merges + nr + 1, sizeof(int32_t), "seed");
    for (int k = 0; k < merges; k++) {
        body[n++] = fzv_id(fzv_merge[k][0]);
        body[n++] = fzv_id(fzv_merge[k][1]);
        body[n++] = 256 + k;
    }
    if (h[4] + h[5] + h[6] != (int)nr / 2) die("seed_ranges: %zu ranges, header says %d", nr / 2, h[4] + h[5] + h[6]);
    memcpy(body + n, seed_ranges, sizeof(seed_ranges));
    n += nr + (extra ? 1 : 0);
    size_t total = sizeof(h) + n * sizeof(int32_t) - (extra ? 4 - (size_t)extra : 0);
    if (keep > 0 && (size_t)keep < total) total = (size_t)keep;
    unsigned char *all = xcalloc(total, 1, "seed");
    memcpy(all, h, total < sizeof(h) ? total : sizeof(h));
    if (total > sizeof(h)) memcpy(all + sizeof(h), body, total - sizeof(h));
    write_file(out("fuzz_encoder", name), all, total, NULL, 0);
    free(all);
    free(body);
}

static void cli_n(const char *name, const char *line, size_t n) { write_file(out("fuzz_cli", name), line, n, NULL, 0); }
static void cli(const char *name, const char *line) { cli_n(name, line, strlen(line)); }

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s DIR\n", argv[0]); return 2; }
    snprintf(dir, sizeof(dir), "%s", argv[1]);
    mkdir(dir, 0755);

    shard("byte_300.bin", 300, 256, 256, 0, 0, 0, 0);
    shard("byte_batches.bin", 200, 256, 256, 3, 15, 0, 0);
    shard("vocab_unknown.bin", 64, 0, 50257, 1, 7, 0, 0);
    shard("tiny_vocab_seek.bin", 40, 11, 11, 1, 5, 0, 3); // B 2, T 6: slot 3 of 6
    shard("two_tokens.bin", 2, 11, 11, 0, 0, 0, 0);
    shard("max_vocab.bin", 32, 65536, 65536, 1, 3, 0, 0);

    for (int arch = 0; arch < ARCH_COUNT; arch++) {
        char name[128];
        const char *a = arch_names[arch];
        snprintf(name, sizeof(name), "%s_cosine_L3.ckpt", a);
        checkpoint(name, tiny((Arch)arch, TAPER_COSINE, 3), 0, 0);
        snprintf(name, sizeof(name), "%s_uniform_L1_adam.ckpt", a);
        checkpoint(name, tiny((Arch)arch, TAPER_UNIFORM, 1), 1, 5);
    }
    Config c = tiny(ARCH_TRANSFORMER, TAPER_REVERSE, 4);
    c.untied = 1;
    checkpoint("transformer_reverse_untied_L4.ckpt", c, 0, 3);
    c = tiny(ARCH_GATED, TAPER_SIGMOID, 2);
    c.gate_headwise = 1; c.taper_start = 1.25; c.taper_end = 0.75;
    checkpoint("gated_sigmoid_headwise_L2_adam.ckpt", c, 1, 9);
    c = tiny(ARCH_TITANS, TAPER_LINEAR, 2);
    c.mem_depth = 1; c.mem_chunk = 1; c.window = 1;
    checkpoint("titans_linear_depth1_L2.ckpt", c, 0, 1);
    c = tiny(ARCH_HOPE, TAPER_COSINE, 2);
    c.cms_levels = 4; c.cms_chunks[3] = 5;
    checkpoint("hope_levels4_L2.ckpt", c, 0, 2);
    c = tiny(ARCH_HOPE, TAPER_UNIFORM, 1);
    c.cms_levels = 1;
    checkpoint("hope_levels1_L1.ckpt", c, 0, 0);
    c = tiny(ARCH_HOPE, TAPER_GROUPS, 3);
    c.taper_groups = 3; c.taper_group[0] = 1.5; c.taper_group[1] = 1; c.taper_group[2] = 0.5;
    checkpoint("hope_groups_L3.ckpt", c, 0, 1);
    c = tiny(ARCH_TRANSFORMER, TAPER_EXPLICIT, 3);
    c.widths_given[0] = 24; c.widths_given[1] = 16; c.widths_given[2] = 8; // sum 3 * 16
    checkpoint("transformer_explicit_L3_adam.ckpt", c, 1, 4);

    tokenizer("byte_v2.bin", 2, 256, 10, 0);
    tokenizer("byte_v1.bin", 1, 256, 0, 0);
    tokenizer("multibyte_v2_vocab11.bin", 2, 11, 3, 1);
    tokenizer("eot_out_of_range.bin", 2, 11, 50256, 1);

    encoder("english.bin", "Hello, world! It's the other 12 words\n\n  and the thing's in the order\t\tof words  ", 0, FZV_MERGES, 0, 0);
    encoder("unicode.bin", "caf\xc3\xa9 \xe2\x80\x99s \xce\xb1\xce\xb2\xce\xb3 \xe4\xb8\xad\xe6\x96\x87 \xd9\xa1\xd9\xa2 "
            "\xc2\xb2\xc2\xa0x\xe3\x80\x80y \xf0\x9f\x98\x80!! 3.14 \xc2\x85", 0, FZV_MERGES, 0, 0);
    encoder("invalid_utf8.bin", "\xff\xc3(\xe0\x80\xbf \xed\xa0\x80 \xf4\x90\x80\x80 \xf0\x9f\x98 the\xc0\xaf end\xc3", 0, FZV_MERGES, 0, 0);
    encoder("spaces.bin", "a   b\t\t\n c  \n\n\n x   ", 0, FZV_MERGES, 0, 0);
    encoder("apostrophes.bin", "'s 't 're 've 'm 'll 'd 'x 'S it's we'll they're '", 0, FZV_MERGES, 0, 0);
    encoder("no_merges_no_prompt.bin", "", 0, 0, 0, 0);
    encoder("few_merges.bin", "the thing", 0, 5, 0, 0);
    encoder("dup_byte_token.bin", "the", 1, FZV_MERGES, 0, 0);
    encoder("missing_byte_token.bin", "the", 2, FZV_MERGES, 0, 0);
    encoder("empty_token.bin", "the end", 3, FZV_MERGES, 0, 0);
    encoder("truncated_merges.bin", "the", 0, FZV_MERGES, 1024 + 12 * 5 + 7, 0);
    encoder("truncated_header.bin", "", 0, FZV_MERGES, 700, 0);
    encoder("trailing_byte.bin", "the", 0, FZV_MERGES, 0, 1);

    cli("defaults", "");
    cli("help", "--help");
    cli("tiny_transformer", "--layers\n2\n--dim\n16\n--heads\n2\n--mlp-width\n32\n--seq-len\n8\n--batch\n2\n--vocab\n11\n--taper-multiple\n8");
    cli("tiny_gated", "--arch=gated\n--gate-headwise\n--layers=3\n--dim=16\n--heads=4\n--mlp-width=32\n--taper-multiple=8\n--seq-len=4\n--batch=1\n--match-params");
    cli("tiny_titans", "--arch\ntitans\n--layers\n2\n--dim\n16\n--heads\n2\n--taper-multiple\n8\n--mlp-width\n64\n--seq-len\n8\n--batch\n1\n--window\n4\n--mem-depth\n1\n--mem-chunk\n4\n--match-params");
    cli("tiny_hope", "--arch\nhope\n--layers\n2\n--dim\n16\n--heads\n2\n--mlp-width\n64\n--seq-len\n8\n--batch\n1\n--cms-levels\n3\n--cms-width\n16\n--cms-chunks\n2,4\n--taper-multiple\n8");
    cli("tapers", "--taper\nreverse\n--taper-start\n0.5\n--taper-end\n1.5\n--layers\n4\n--dim\n8\n--heads\n2\n--mlp-width\n16\n--taper-multiple\n4\n--seq-len\n4\n--batch\n1\n--vocab\n300\n--untied");
    cli("sigmoid_linear", "--taper=sigmoid\n--taper-start=2\n--taper-end=0.25\n--layers=5\n--dim=8\n--heads=1\n--mlp-width=64\n--taper-multiple=2\n--seq-len=2\n--batch=3");
    cli("schedule", "--steps\n100\n--warmup\n10\n--decay-steps\n50\n--lr\n1e-3\n--weight-decay\n0\n--grad-clip\n0.5\n--seed\n-7\n--grad-accum\n2\n--eval-every\n0\n--eval-batches\n3\n--sample-every\n0\n--sample-len\n9\n--layers\n1\n--dim\n8\n--seq-len\n8\n--batch\n1");
    cli("data_seed_eval", "--seed\n3\n--data-seed\n-9\n--eval-batches\n0\n--final-eval-batches\n5\n--layers\n1\n--dim\n8\n--seq-len\n8\n--batch\n1");
    cli("load_eval", "--load\nrun.ckpt\n--eval-only\n--train\ndata/x_*.bin\n--val\n/tmp/v.bin\n--log\nl.jsonl\n--tokenizer\nt.bin\n--save\ns.ckpt\n--save-every\n5\n--analyze\n--layers\n1\n--dim\n8\n--seq-len\n8\n--batch\n1");
    cli("groups", "--taper\ngroups:1.5,1,0.5\n--layers\n3\n--dim\n8\n--heads\n2\n--mlp-width\n16\n--taper-multiple\n4\n--seq-len\n4\n--batch\n1");
    cli("mlp_widths", "--mlp-widths\n24,16,8\n--layers\n3\n--dim\n8\n--heads\n2\n--mlp-width\n16\n--taper-multiple\n4\n--seq-len\n4\n--batch\n1");
    static const char nul[] = "--layers\0" "1\0" "--dim\0" "4\0" "--heads\0" "2\0" "--mlp-width\0" "8\0" "--taper-multiple\0" "8\0" "--seq-len\0" "3";
    cli_n("nul_separated", nul, sizeof(nul) - 1);

    // the dictionary: every option as --name and --name=, the names of the choices, edge numbers
    FILE *d = open_file(out(".", "cli.dict"), "w");
    written--;
    for (int k = 0; k < NUM_OPTIONS; k++) fprintf(d, "\"--%s\"\n\"--%s=\"\n", options[k].name, options[k].name);
    for (int k = 0; k < ARCH_COUNT; k++) fprintf(d, "\"%s\"\n", arch_names[k]);
    for (int k = 0; k < TAPER_COUNT; k++) fprintf(d, "\"%s\"\n", taper_names[k]);
    const char *numbers[] = { "0", "1", "-1", "2", "3", "8", "64", "65", "256", "8192", "16384", "65536", "262144",
                              "1048576", "2147483647", "-2147483648", "2147483648", "1e308", "1e-308", "nan", "inf",
                              "0x10", "1.5", "0.5", "\\x0a", "-h", ",", "groups:", "3.4e38", "1e39", "1e-45" };
    for (size_t k = 0; k < sizeof(numbers) / sizeof(numbers[0]); k++) fprintf(d, "\"%s\"\n", numbers[k]);
    fclose(d);
    printf("make_seeds: wrote %d seed files and cli.dict under %s\n", written, dir);
    return 0;
}
