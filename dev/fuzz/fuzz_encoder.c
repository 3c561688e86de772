/*
 * fuzz_encoder — libFuzzer target for the GPT-2 BPE encoder file (dev/tlmc/tokenizer.h,
 * what --sample --prompt loads beside a GPT-2 tokenizer) and for encoding a prompt with it.
 * The input is one encoder file: encoder_load(&e, path, tk) against a small tokenizer built
 * here (fuzz_encoder_vocab.h: 256 single bytes, 24 merged tokens, <|endoftext|>). The format
 * leaves header slots 10..255 unused; the harness reads two things from them:
 *   slot 255 % 4 picks the tokenizer: 0 as described; 1 with <|endoftext|> replaced by "A" (two
 *        tokens for one byte); 2 with token 255 made "\xff\xff" (no token for byte 0xff);
 *        3 with <|endoftext|> replaced by "" (a token of no bytes);
 *   bytes 512..1019 (slots 128..254), up to the first NUL, are a prompt (a real --prompt cannot
 *        hold a NUL either).
 * A file that loads is checked (every byte's token, merges sorted and distinct) and the prompt
 * encoded as encode_prompt does (once to count, once to write), then checked: the same count
 * both times and with room for only half the tokens; every token in the vocabulary; the
 * tokens' bytes joined are the prompt itself when it is valid UTF-8 (checked here by a decoder
 * of our own) and otherwise the prompt with U+FFFD for each invalid sequence; the count of
 * invalid bytes is 0 exactly when the prompt is valid UTF-8.
 * Build and run: dev/fuzz/run_fuzz.sh SECONDS fuzz_encoder
 */
#define TLM_TESTING 1 // as -DTLM_TESTING: no main(); fuzz_common.h catches die()
#include "fuzz_common.h"
#include "../../train_tlm.c"
#include "fuzz_common.h"
#include "fuzz_encoder_vocab.h"

enum { PROMPT_AT = 512, PROMPT_MAX = 1020 - PROMPT_AT, TOKENIZERS = 4 };
static Tokenizer tks[TOKENIZERS];

static void set_piece(Tokenizer *tk, int i, const char *bytes, int n) {
    tk->piece[i] = realloc(tk->piece[i], (size_t)n + 1);
    if (!tk->piece[i]) abort();
    memcpy(tk->piece[i], bytes, n);
    tk->piece[i][n] = 0;
    tk->len[i] = (unsigned char)n;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    fz_init();
    for (int t = 0; t < TOKENIZERS; t++) { // kept for the life of the process (not tracked)
        Tokenizer *tk = &tks[t];
        tk->vocab = FZV_VOCAB;
        tk->eot = FZV_EOT;
        tk->piece = calloc(FZV_VOCAB, sizeof(char *));
        tk->len = calloc(FZV_VOCAB, 1);
        if (!tk->piece || !tk->len) abort();
        char piece[FZV_PIECE_MAX];
        for (int i = 0; i < FZV_VOCAB; i++) set_piece(tk, i, piece, fzv_piece(i, piece));
    }
    set_piece(&tks[1], FZV_EOT, "A", 1);
    set_piece(&tks[2], 255, "\xff\xff", 2);
    set_piece(&tks[3], FZV_EOT, "", 0);
    return 0;
}

// Strict UTF-8 (no overlong forms, surrogates or code points above U+10FFFF), written apart
// from the trainer's utf8_next so that the two check each other.
static int utf8_valid(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        int more;
        uint32_t cp, least;
        if (c < 0x80) { i++; continue; }
        if ((c & 0xE0) == 0xC0) { more = 1; cp = c & 0x1F; least = 0x80; }
        else if ((c & 0xF0) == 0xE0) { more = 2; cp = c & 0x0F; least = 0x800; }
        else if ((c & 0xF8) == 0xF0) { more = 3; cp = c & 0x07; least = 0x10000; }
        else return 0;
        if (n - i <= (size_t)more) return 0;
        for (int k = 1; k <= more; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if (cp < least || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += 1 + (size_t)more;
    }
    return 1;
}

static Encoder enc;
static int out[3 * PROMPT_MAX + 2];
static unsigned char joined[3 * PROMPT_MAX + 1], expect[3 * PROMPT_MAX + 1];

static void check_encode(const Encoder *e, const Tokenizer *tk, const char *prompt, size_t len) {
    int count = encoder_encode(e, prompt, len, NULL, 0, NULL);
    FZ_ASSERT(count >= 0 && (size_t)count <= 3 * len, "%d tokens for %zu bytes", count, len);
    int half = count / 2, invalid = -1;
    out[half] = -12345;
    int n = encoder_encode(e, prompt, len, out, half, NULL);
    FZ_ASSERT(n == count && out[half] == -12345, "with room for %d of %d tokens: returned %d", half, count, n);
    out[count] = -12345;
    n = encoder_encode(e, prompt, len, out, count, &invalid);
    FZ_ASSERT(n == count, "%d tokens when counting, %d when writing", count, n);
    FZ_ASSERT(out[count] == -12345, "wrote past the %d tokens it was given room for", count);

    int valid = utf8_valid((const unsigned char *)prompt, len);
    FZ_ASSERT((invalid == 0) == valid, "%d invalid bytes counted in a prompt that is%s valid UTF-8",
              invalid, valid ? "" : " not");
    size_t nj = 0, ne = 0;
    for (int i = 0; i < n; i++) {
        FZ_ASSERT(out[i] >= 0 && out[i] < tk->vocab, "token %d at %d outside the vocabulary", out[i], i);
        FZ_ASSERT(nj + tk->len[out[i]] <= sizeof(joined), "the tokens hold more bytes than the prompt can");
        memcpy(joined + nj, tk->piece[out[i]], tk->len[out[i]]);
        nj += tk->len[out[i]];
    }
    if (valid) {
        FZ_ASSERT(nj == len && !memcmp(joined, prompt, len), "the tokens' bytes are not the (valid UTF-8) prompt");
    } else { // the prompt with its invalid sequences replaced, by the trainer's own decoder
        int bad = 0;
        for (size_t i = 0; i < len;) ne += utf8_put(expect + ne, utf8_next((const unsigned char *)prompt, len, &i, &bad));
        FZ_ASSERT(bad == invalid, "%d invalid bytes, %d when decoding alone", invalid, bad);
        FZ_ASSERT(nj == ne && !memcmp(joined, expect, ne), "the tokens' bytes are not the prompt with U+FFFD");
        FZ_ASSERT(utf8_valid(joined, nj), "the tokens' bytes are not valid UTF-8");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fz_write_input("encoder", data, size);
    int32_t h[ENCODER_HEADER] = { 0 };
    memcpy(h, data, size < sizeof(h) ? size : sizeof(h));
    const Tokenizer *tk = &tks[(uint32_t)h[255] % TOKENIZERS];
    char prompt[PROMPT_MAX + 1] = { 0 };
    if (size > PROMPT_AT) memcpy(prompt, data + PROMPT_AT, size - PROMPT_AT < PROMPT_MAX ? size - PROMPT_AT : PROMPT_MAX);
    size_t len = strlen(prompt);
    FZ_TRY {
        int r = encoder_load(&enc, path, tk);
        FZ_ASSERT(r == 0, "encoder_load could not open its own input");
        FZ_ASSERT(enc.vocab == tk->vocab && enc.merges == h[3], "loaded %d merges for %d tokens", enc.merges, enc.vocab);
        for (int b = 0; b < 256; b++) {
            int t = enc.byte_token[b];
            FZ_ASSERT(t >= 0 && t < tk->vocab && tk->len[t] == 1 && (unsigned char)tk->piece[t][0] == b,
                      "byte 0x%02x's token %d is not that byte", b, t);
        }
        for (int i = 1; i < enc.merges; i++)
            FZ_ASSERT(merge_order(&enc.merge[i - 1], &enc.merge[i]) < 0, "merges %d and %d out of order", i - 1, i);
        for (int c = 0; c < 3; c++) FZ_ASSERT(enc.ranges[c] == h[4 + c], "class %d: %d ranges", c, enc.ranges[c]);
        check_encode(&enc, tk, prompt, len);
        encoder_free(&enc);
        fz_end(FZ_OK);
    } FZ_CATCH {
        memset(&enc, 0, sizeof(enc));
    }
    FZ_DONE();
    return 0;
}
