/*
 * fuzz_checkpoint — libFuzzer target for checkpoint loading (train_tlm.c section 5).
 * The input is one checkpoint file: checkpoint_open, model_create(&cfg, 1, T) with
 * T = min(seq_len, 4), checkpoint_load (through checkpoint_open's descriptor), checkpoint_close. tlm_ram_limit is 64 MiB, so a header asking for a
 * huge model is refused by model_create's up-front check (a die()) instead of taking the
 * machine's memory. A checkpoint that loads is then run once, forward and backward, on a
 * batch of 1 x T tokens, so that fuzzed shapes reach the kernels too; by default only for
 * transformer and gated models (the neural-memory architectures are under development):
 * TLM_FUZZ_FORWARD=all includes titans and hope, TLM_FUZZ_FORWARD=0 turns it off.
 * Build and run: dev/fuzz/run_fuzz.sh SECONDS fuzz_checkpoint
 */
#define TLM_TESTING 1 // as -DTLM_TESTING: no main(), die() longjmps to *tlm_error_jump
#define TLM_FUZZ 1    // no checksum check: mutated files reach the loader's other checks
#include "fuzz_common.h"
#include "../../train_tlm.c"
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    fz_init();
    tlm_ram_limit = 64.0 * (1 << 20);
    return 0;
}

static Model *m;
static Config cfg;
static int32_t h[H_SIZE];
static Checkpoint *ck;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fz_write_input("checkpoint", data, size);
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
