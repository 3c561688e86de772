/*
 * fuzz_shard — libFuzzer target for the token-shard loader (dev/tlmc/dataloader.h).
 * The input is one shard file: dataloader_open, the vocabulary from dataloader_vocab (50257
 * when the header says 0), then dataloader_seek and a few dataloader_next batches.
 * Slots 4..7 of the 256-int32 header are unused by the format; the harness reads its batch
 * shape and a seek position from them, so the fuzzer can vary those too:
 *   B = 1 + h[4] % 4,  T = 1 + h[5] % 16,  seek to shard h[6], slot (uint32)h[7] if h[6] != 0
 *   or h[7] != 0 (a bad shard index or slot must be refused by dataloader_seek).
 * Build and run: dev/fuzz/run_fuzz.sh SECONDS fuzz_shard
 */
#define TLM_TESTING 1 // as -DTLM_TESTING: no main(); fuzz_common.h catches die()
#include "fuzz_common.h"
#include "../../train_tlm.c"
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) { (void)argc; (void)argv; fz_init(); return 0; }

static DataLoader d;
static int tok[4 * 16], tgt[4 * 16];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fz_write_input("shard", data, size);
    int32_t h[8] = { 0 };
    memcpy(h, data, size < sizeof(h) ? size : sizeof(h));
    int B = 1 + (int)((uint32_t)h[4] % 4), T = 1 + (int)((uint32_t)h[5] % 16);
    FZ_TRY {
        dataloader_open(&d, path, "--train");
        FZ_ASSERT(d.count == 1 && d.ntok[0] > 0, "one shard with tokens after a successful open");
        int v = dataloader_vocab(&d);
        FZ_ASSERT(v >= 0 && v <= 65536, "header vocabulary %d accepted", v);
        d.vocab = v ? v : 50257;
        if (h[6] || h[7]) {
            DataPosition at = { .epoch = 0, .shard = h[6], .slot = (size_t)(uint32_t)h[7] };
            dataloader_seek(&d, at, T);
        }
        size_t slots = (d.ntok[0] - 1) / (size_t)T; // (one shard: every batch from it)
        for (int i = 0; i < 4; i++) {
            DataPosition was = d.at;
            dataloader_next(&d, tok, tgt, B, T);
            int wrapped = was.slot + B > slots;
            FZ_ASSERT(d.loaded == 0 && d.at.shard == 0 && d.at.slot <= slots,
                      "slot %zu within the shard's %zu", d.at.slot, slots);
            int advanced = d.at.slot == (wrapped ? 0 : was.slot) + B &&
                           d.at.epoch == was.epoch + wrapped;
            FZ_ASSERT(advanced, "batch of %d x %d advanced slot %zu -> %zu, epoch %lld -> %lld", B,
                      T, was.slot, d.at.slot, (long long)was.epoch, (long long)d.at.epoch);
            for (int j = 0; j < B * T; j++) {
                FZ_ASSERT(tok[j] >= 0 && tok[j] < d.vocab && tgt[j] >= 0 && tgt[j] < d.vocab, "token %d / target %d outside the vocabulary %d", tok[j], tgt[j], d.vocab);
                FZ_ASSERT(j % T == T - 1 || tgt[j] == tok[j + 1], "targets: the next tokens");
            }
        }
        dataloader_free(&d);
        fz_end(FZ_OK);
    } FZ_CATCH {
        memset(&d, 0, sizeof(d));
    }
    FZ_DONE();
    return 0;
}
