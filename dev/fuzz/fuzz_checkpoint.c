/*
 * fuzz_checkpoint — libFuzzer target for checkpoint loading (dev/tlmc/checkpoint.h).
 * The input is one checkpoint file, whose last 4 bytes the harness first sets to the CRC-32C of
 * the rest (so that mutated files get past the checksum to the option-area parser and the other
 * checks), unless header slot 255, which the format leaves 0, is odd (then the checksum is the
 * file's own, and the mismatch check is fuzzed too). Then checkpoint_open, model_create(&cfg, 1,
 * T) with T = min(seq_len, 4), checkpoint_load (through checkpoint_open's descriptor),
 * checkpoint_close. fz_memory is 64 MiB, so a header asking for a huge model is refused by
 * model_create's up-front check (a die()) instead of taking the machine's memory. A checkpoint
 * that loads is then run once, forward and backward, on a batch of 1 x T tokens, so that fuzzed
 * shapes reach the kernels too; by default only for transformer and gated models (the
 * neural-memory architectures are under development): TLM_FUZZ_FORWARD=all includes titans and
 * hope, TLM_FUZZ_FORWARD=0 turns it off.
 * Build and run: dev/fuzz/run_fuzz.sh SECONDS fuzz_checkpoint
 */
#define TLM_TESTING 1 // as -DTLM_TESTING: no main()
#include "fuzz_common.h"
#include "../../train_tlm.c"
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    fz_init();
    fz_memory = 64.0 * (1 << 20);
    return 0;
}

static Model *m;
static Config cfg;
static int32_t h[H_SIZE];
static Checkpoint *ck;

static uint8_t *input;
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    input = realloc(input, size ? size : 1);
    memcpy(input, data, size);
    int32_t slot255 = 0;
    if (size >= 1024) memcpy(&slot255, input + 1020, 4);
    if (size >= 4 && !(slot255 & 1)) {
        uint32_t crc = crc32c(0, input, size - 4);
        memcpy(input + size - 4, &crc, 4);
    }
    const char *path = fz_write_input("checkpoint", input, size);
    FZ_TRY {
        ck = checkpoint_open(path, NULL);
        cfg = ck->saved->cfg;
        memcpy(h, ck->h, sizeof(h));
        int T = cfg.seq_len < 4 ? cfg.seq_len : 4;
        m = model_create(&cfg, 1, T);
        DataPosition pos = { .epoch = -1, .shard = -1, .slot = 0 };
        checkpoint_load(ck, m, &pos);
        checkpoint_close(ck);
        ck = NULL;
        FZ_ASSERT(m->step == h[H_STEP] && m->step >= 0, "step %d loaded from a header saying %d", m->step, h[H_STEP]);
        for (size_t i = 0; i < m->num_params; i++) FZ_ASSERT(isfinite(m->params[i]), "parameter %zu not finite after a load", i);
        FZ_ASSERT((m->adam_m != NULL) == (h[H_HAS_OPTIMIZER] == 1), "optimizer state present iff the flag says so");
        fz_forward_backward(m, 1, T);
        model_free(m);
        m = NULL;
        fz_end(FZ_OK);
    } FZ_CATCH {
        m = NULL;
        ck = NULL;
    }
    FZ_DONE();
    return 0;
}
