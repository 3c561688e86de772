/*
 * dev/tlmc/tokenizer.h — tokens to text and text to tokens: llm.c's tokenizer file (the bytes of
 * each token, for the samples a run prints) and the GPT-2 BPE encoder (for --sample --prompt).
 *
 * Provides: Tokenizer, tokenizer_load, tokenizer_free, print_token; Encoder, encoder_load,
 *   encoder_free, encoder_encode (text as dev/prepare_data.py encodes it).
 * Needs: dev/tlmc/utils.h (die, xcalloc, checked file I/O).
 */
#ifndef TLMC_TOKENIZER_H
#define TLMC_TOKENIZER_H

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
    if ((int)h[2] != vocab)
        die("%s: tokenizer has %u tokens, the model's vocabulary is %d", path, h[2], vocab);
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
    if (size < (long)sizeof(h))
        die("%s: not a BPE encoder file (shorter than its 1024-byte header)", path);
    read_exact(h, sizeof(int32_t), ENCODER_HEADER, f, path);
    if (h[0] != ENCODER_MAGIC)
        die("%s: not a BPE encoder file (bad magic %d, expected %d)", path, h[0], ENCODER_MAGIC);
    if (h[1] != 1) die("%s: unsupported encoder version %d", path, h[1]);
    if (h[2] != tk->vocab)
        die("%s: made for a vocabulary of %d tokens, the tokenizer has %d", path, h[2], tk->vocab);
    if (h[3] < 0 || h[3] >= tk->vocab)
        die("%s: bad number of merges %d for a vocabulary of %d", path, h[3], tk->vocab);
    for (int c = 0; c < 3; c++)
        if (h[4 + c] < 0 || h[4 + c] > ENCODER_MAX_CODE_POINT + 1)
            die("%s: bad number of code point ranges %d for the %s", path, h[4 + c],
                char_class_names[c]);
    long expect = (long)sizeof(h) + 12L * h[3] + 8L * ((long)h[4] + h[5] + h[6]);
    if (size < expect)
        die("%s: truncated: header says %d merges and %d code point ranges (%ld bytes), file has "
            "%ld bytes",
            path, h[3], h[4] + h[5] + h[6], expect, size);
    if (size > expect) die("%s: %ld bytes of trailing data", path, size - expect);
    e->vocab = tk->vocab;

    // single bytes: the tokenizer must hold exactly one token for each
    for (int b = 0; b < 256; b++) e->byte_token[b] = -1;
    for (int i = 0; i < tk->vocab; i++) {
        if (tk->len[i] != 1) continue;
        unsigned char b = (unsigned char)tk->piece[i][0];
        if (e->byte_token[b] >= 0)
            die("%s: the tokenizer has two tokens for the byte 0x%02x (%d and %d)", path, b,
                e->byte_token[b], i);
        e->byte_token[b] = i;
    }
    for (int b = 0; b < 256; b++)
        if (e->byte_token[b] < 0)
            die("%s: the tokenizer has no token for the byte 0x%02x", path, b);

    // merges: each joins two tokens into the token that is their bytes joined
    e->merges = h[3];
    e->merge = xcalloc(e->merges, sizeof(BpeMerge), "encoder");
    for (int r = 0; r < e->merges; r++) {
        int32_t ids[3];
        read_exact(ids, sizeof(int32_t), 3, f, path);
        for (int k = 0; k < 3; k++)
            if (ids[k] < 0 || ids[k] >= tk->vocab)
                die("%s: merge %d names token %d, outside the vocabulary of %d", path, r,
                    ids[k], tk->vocab);
        int nl = tk->len[ids[0]], nr = tk->len[ids[1]];
        if (tk->len[ids[2]] != nl + nr || memcmp(tk->piece[ids[2]], tk->piece[ids[0]], nl) ||
            memcmp(tk->piece[ids[2]] + nl, tk->piece[ids[1]], nr))
            die("%s: merge %d joins tokens %d and %d into %d, which is not their bytes joined in "
                "the tokenizer",
                path, r, ids[0], ids[1], ids[2]);
        BpeMerge m = { ids[0], ids[1], ids[2], r };
        e->merge[r] = m;
    }
    qsort(e->merge, e->merges, sizeof(BpeMerge), merge_order);
    for (int i = 1; i < e->merges; i++)
        if (!merge_order(&e->merge[i - 1], &e->merge[i]))
            die("%s: merges %d and %d join the same two tokens", path, e->merge[i - 1].rank,
                e->merge[i].rank);

    // character classes
    for (int c = 0; c < 3; c++) {
        e->ranges[c] = h[4 + c];
        e->range[c] = xcalloc(2 * (size_t)e->ranges[c], sizeof(int32_t), "encoder");
        read_exact(e->range[c], sizeof(int32_t), 2 * (size_t)e->ranges[c], f, path);
        for (int i = 0; i < e->ranges[c]; i++) {
            int32_t first = e->range[c][2 * i], last = e->range[c][2 * i + 1];
            int after_previous = i == 0 || first > e->range[c][2 * i - 1];
            if (first < 0 || first > last || last > ENCODER_MAX_CODE_POINT || !after_previous)
                die("%s: code point range %d of the %s (%d..%d) is not ascending within "
                    "0..0x10FFFF",
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
    if (cp < 0x10000) {
        s[0] = 0xE0 | cp >> 12; s[1] = 0x80 | (cp >> 6 & 0x3F); s[2] = 0x80 | (cp & 0x3F);
        return 3;
    }
    s[0] = 0xF0 | cp >> 18; s[1] = 0x80 | (cp >> 12 & 0x3F);
    s[2] = 0x80 | (cp >> 6 & 0x3F); s[3] = 0x80 | (cp & 0x3F);
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
static int encoder_encode(const Encoder *e, const char *text, size_t len, int *out, int max,
                          int *invalid) {
    // ints below hold 3 len
    if (len > 0x1FFFFFFF) die("text to encode is too long (%zu bytes)", len);
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
#endif // TLMC_TOKENIZER_H
