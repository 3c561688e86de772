/*
 * dev/tlmc/dataloader.h — token shards: the training order and the validation batches.
 *
 * A shard is llm.c's format: a header of 256 int32 (magic 20240520, version 1, token count,
 * and in slot 3 the vocabulary size, 0 if unknown), then the tokens as uint16.
 *
 * The training order (dataloader_next; data/README.md states it for other implementations).
 * A shard of n tokens holds S = (n - 1) / T sequence slots: slot s is tokens [s T, s T + T],
 * its first T the inputs and its last T the targets. Epoch e (0, 1, ...) visits the shards
 * (numbered in the glob's sorted order) in a permuted order, and in each shard its slots in a
 * permuted order; a batch is the next B slots of that order, never from two shards, so a
 * shard's last S mod B slots in its order are not read that epoch, and a shard with S < B is
 * not read at all. Each permutation is Fisher-Yates from the identity a = 0, 1, .., n-1:
 *     for i = n-1 down to 1:  j = rng_below(i + 1);  swap a[i], a[j]
 * on the stream rng_seeded(key_mix(key_mix(splitmix64(data_seed), e), part)) (utils.h),
 * part 0 for the order of the shards, f + 1 for the slots of shard f. Validation data is not
 * shuffled: evaluate() reads the batches it picks (val_batch).
 *
 * Provides: DataPosition (where the training order stands: epochs done, shards of this epoch's
 *   order done, slots of that shard's order taken), DataLoader, dataloader_open (a file or a
 *   glob of shards, each checked), refuse_shared_shards (--train and --val),
 *   dataloader_vocab, dataloader_free, dataloader_next (the next
 *   batch of the training order), dataloader_seek (resume at a checkpoint's position),
 *   val_batches and val_batch (the validation split's batches, read in place).
 * Needs: dev/tlmc/utils.h (die, xcalloc, checked file I/O, Rng and its named streams).
 */
#ifndef TLMC_DATALOADER_H
#define TLMC_DATALOADER_H
#include <glob.h>

// Where the training order stands: epochs done, shards of this epoch's order done, slots of that
// shard's order taken.
typedef struct { int64_t epoch; int shard; size_t slot; } DataPosition;

enum { SHARD_MAGIC = 20240520, SHARD_HEADER = 256 };

typedef struct {
    char **paths;
    size_t *ntok;           // tokens in each shard
    int count;
    int vocab;              // tokens must be below this (checked as each shard is read)
    uint16_t *tokens;       // the current shard
    int loaded;             // index of the shard in tokens, -1 none
    const char *flag;       // --train or --val, for messages
    int noted;              // the note on shards too short for a batch given (short_shards_note)
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
    FILE *f = open_regular(path);
    int32_t h[SHARD_HEADER];
    if (file_size(f) < (long)sizeof(h))
        die("%s: not a token shard (shorter than its 1024-byte header)", path);
    read_exact(h, sizeof(int32_t), SHARD_HEADER, f, path);
    if (h[0] != SHARD_MAGIC)
        die("%s: not a token shard (bad magic %d, expected %d)", path, h[0], SHARD_MAGIC);
    if (h[1] != 1) die("%s: unsupported shard version %d", path, h[1]);
    if (h[2] <= 0) die("%s: shard holds no tokens", path);
    if (h[3] < 0 || h[3] == 1 || h[3] > 65536)
        die("%s: bad vocabulary size %d in header", path, h[3]);
    long expect = (long)sizeof(h) + (long)h[2] * 2;
    long size = file_size(f);
    if (size < expect)
        die("%s: truncated: header says %d tokens (%ld bytes), file has %ld bytes", path, h[2],
            expect, size);
    if (size > expect)
        die("%s: %ld bytes of trailing data after %d tokens", path, size - expect, h[2]);
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
    d->flag = flag;
    d->count = (int)g.gl_pathc;
    d->paths = xcalloc(d->count, sizeof(char *), "shard list");
    d->ntok = xcalloc(d->count, sizeof(size_t), "shard list");
    uint64_t list = 0; // (MPI: every rank must see the same shards)
    for (int i = 0; i < d->count; i++) {
        d->paths[i] = strdup(g.gl_pathv[i]);
        d->ntok[i] = shard_check(d->paths[i], NULL);
        list = key_mix(key_mix(list, fnv1a64(d->paths[i])), d->ntok[i]);
    }
    globfree(&g);
    char what[64];
    snprintf(what, sizeof(what), "%s shards", flag);
    ranks_check_agree(list, what);
}

// --train and --val must not share a shard (same_file: by name or device and inode): the
// validation loss would be measured on the training data
static void refuse_shared_shards(const DataLoader *train, const DataLoader *val) {
    for (int i = 0; i < train->count; i++)
        for (int j = 0; j < val->count; j++)
            if (same_file(train->paths[i], val->paths[j]))
                die("--train shard %s is the --val shard %s: the validation loss would be measured "
                    "on the training data (give --val the held-out split)", train->paths[i],
                    val->paths[j]);
}

// the vocabulary the shards' headers give (0: none does); shards that disagree are refused
static int dataloader_vocab(const DataLoader *d) {
    int vocab = 0, from = 0;
    for (int i = 0; i < d->count; i++) {
        int v;
        shard_check(d->paths[i], &v);
        if (v && vocab && v != vocab)
            die("%s: vocabulary %d in its header, %s has %d", d->paths[i], v,
                d->paths[from], vocab);
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
    FILE *f = open_regular(d->paths[i]);
    fseek(f, SHARD_HEADER * sizeof(int32_t), SEEK_SET);
    read_exact(d->tokens, sizeof(uint16_t), d->ntok[i], f, d->paths[i]);
    fclose(f);
    for (size_t j = 0; j < d->ntok[i]; j++)
        if (d->tokens[j] >= d->vocab)
            die("%s: token %u at position %zu is not below the vocabulary size %d", d->paths[i],
                d->tokens[j], j, d->vocab);
    d->loaded = i;
}

// Once per loader: a note naming the shards too short to give a batch of B x T tokens and its
// last target, which are never read (the rule above; the validation batches alike).
static void short_shards_note(DataLoader *d, int B, int T) {
    if (d->noted) return;
    d->noted = 1;
    int n = 0, first = -1;
    for (int i = 0; i < d->count; i++)
        if (d->ntok[i] - 1 < (size_t)B * T) { n++; if (first < 0) first = i; }
    if (n && n < d->count) // (none holds a batch: an error, where the batches are read)
        printf("note: %s: %d of %d shards hold fewer than the %zu tokens of a batch (--batch x "
               "--seq-len + 1) and are skipped: %s%s\n", d->flag ? d->flag : "shards", n,
               d->count, (size_t)B * T + 1, d->paths[first], n > 1 ? ", ..." : "");
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
    short_shards_note(d, B, T);
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
static long val_batches(DataLoader *val, int B, int T) {
    short_shards_note(val, B, T);
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
#endif // TLMC_DATALOADER_H
