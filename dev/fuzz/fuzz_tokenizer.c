/*
 * fuzz_tokenizer — libFuzzer target for the tokenizer file (dev/tlmc/tokenizer.h).
 * The input is one tokenizer file: tokenizer_load(&tk, path, vocab) with vocab the header's
 * own count when it is a vocabulary a model can have (2..65536), else 256 (which the loader
 * must refuse unless the header says 256); then print_token, to /dev/null, of the
 * end-of-text token, the first and last tokens and a spread between; tokenizer_free.
 * Build and run: dev/fuzz/run_fuzz.sh SECONDS fuzz_tokenizer
 */
#define TLM_TESTING 1 // as -DTLM_TESTING: no main(); fuzz_common.h catches die()
#include "fuzz_common.h"
#include "../../train_tlm.c"
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    fz_init();
    if (!freopen("/dev/null", "w", stdout)) abort(); // print_token writes to stdout
    return 0;
}

static Tokenizer tk;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fz_write_input("tokenizer", data, size);
    uint32_t h[4] = { 0 };
    memcpy(h, data, size < sizeof(h) ? size : sizeof(h));
    int vocab = h[2] >= 2 && h[2] <= 65536 ? (int)h[2] : 256;
    FZ_TRY {
        int r = tokenizer_load(&tk, path, vocab);
        FZ_ASSERT(r == 0, "tokenizer_load could not open its own input");
        FZ_ASSERT(tk.vocab == vocab && tk.piece && tk.len, "a loaded tokenizer has its %d tokens", vocab);
        FZ_ASSERT(tk.eot >= 0 && tk.eot < tk.vocab, "end-of-text token %d outside the vocabulary %d", tk.eot, tk.vocab);
        print_token(&tk, tk.eot);
        for (int i = 0; i < 64; i++) print_token(&tk, (int)((int64_t)i * (tk.vocab - 1) / 63));
        fflush(stdout);
        tokenizer_free(&tk);
        fz_end(FZ_OK);
    } FZ_CATCH {
        memset(&tk, 0, sizeof(tk));
    }
    FZ_DONE();
    return 0;
}
