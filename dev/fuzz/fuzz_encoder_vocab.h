/*
 * fuzz_encoder_vocab.h — the small BPE vocabulary that fuzz_encoder's tokenizer holds and
 * make_seeds' encoder files are written for (shared so that the two cannot disagree).
 * Tokens 0..255 are the single bytes (token b is byte b), token 256 + k is the bytes of merge
 * k's two tokens joined, the last token is <|endoftext|>. Merge k joins the tokens whose bytes
 * are fzv_merge[k][0] and fzv_merge[k][1] (the first such token: merge 23 makes a second
 * token "the", as a tokenizer may hold two tokens with the same bytes).
 */
#ifndef FUZZ_ENCODER_VOCAB_H
#define FUZZ_ENCODER_VOCAB_H
#include <string.h>

static const char *const fzv_merge[][2] = {
    { "h", "e" }, { "t", "h" }, { " ", "t" }, { " t", "he" }, { "i", "n" }, { "in", "g" },
    { "e", "r" }, { " ", "a" }, { "n", "d" }, { " a", "nd" }, { "o", "n" }, { "r", "e" },
    { "'", "s" }, { "\n", "\n" }, { " ", " " }, { "1", "2" }, { "\xc3", "\xa9" },       // é
    { "\xe2", "\x80" }, { "\xe2\x80", "\x99" }, { "th", "e" }, { " ", "w" }, { "o", "r" }, // ’
    { " w", "or" }, { "t", "he" },
};
enum { FZV_MERGES = sizeof(fzv_merge) / sizeof(fzv_merge[0]), FZV_VOCAB = 256 + FZV_MERGES + 1,
       FZV_EOT = FZV_VOCAB - 1, FZV_PIECE_MAX = 16 };

// The bytes of token i into piece (room for FZV_PIECE_MAX); returns how many.
static int fzv_piece(int i, char *piece) {
    if (i < 256) { piece[0] = (char)i; return 1; }
    if (i == FZV_EOT) { memcpy(piece, "<|endoftext|>", 13); return 13; }
    size_t a = strlen(fzv_merge[i - 256][0]), b = strlen(fzv_merge[i - 256][1]);
    memcpy(piece, fzv_merge[i - 256][0], a);
    memcpy(piece + a, fzv_merge[i - 256][1], b);
    return (int)(a + b);
}

// The first token whose bytes are s (NUL-free), or -1.
static int fzv_id(const char *s) {
    char piece[FZV_PIECE_MAX];
    for (int i = 0; i < FZV_VOCAB; i++) {
        int n = fzv_piece(i, piece);
        if ((size_t)n == strlen(s) && !memcmp(piece, s, n)) return i;
    }
    return -1;
}
#endif
