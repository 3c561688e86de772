/*
 * fuzz_cli — libFuzzer target for the command line (dev/tlmc/options.h).
 * The input is split into arguments at NUL bytes and newlines (at most 32, after an
 * argv[0]) and given to parse_args(), which resets the options itself; usage_error() and
 * die() are caught through tlm_error_jump. With --help, usage() is printed to /dev/null.
 * Otherwise the harness goes on as main() does up to the model, without data files:
 * vocabulary 256 when none is given, match_params() with --match-params, then
 * model_create(&cfg, --batch, --seq-len) under a 16 MiB fz_memory (so every shape
 * check of config_finish, layout_params and layout_activations runs, but only small models
 * are allocated), print_layer_table() and default_tokenizer_path(); a model of at most 64K
 * parameters and activations is then run forward and backward once on --batch x --seq-len
 * tokens (architectures as TLM_FUZZ_FORWARD says; see fuzz_common.h).
 * Build and run: dev/fuzz/run_fuzz.sh SECONDS fuzz_cli   (with -dict=dev/fuzz/cli.dict)
 */
#define TLM_TESTING 1 // as -DTLM_TESTING: no main(); fuzz_common.h catches die()
#include "fuzz_common.h"
#include "../../train_tlm.c"
#include "fuzz_common.h"

static FILE *devnull;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    fz_init();
    fz_memory = 16.0 * (1 << 20);
    devnull = fopen("/dev/null", "w");
    if (!devnull || !freopen("/dev/null", "w", stdout)) abort(); // print_layer_table writes to stdout
    return 0;
}

enum { MAX_ARGS = 32 };
static char *buf;
static char *args[MAX_ARGS + 2];
static Model *m;
static Config cfg;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    // the arguments live in one copy of the input: parse_args keeps pointers into argv
    buf = malloc(size + 1);
    memcpy(buf, data, size);
    buf[size] = 0;
    int argc = 0;
    args[argc++] = "train_tlm";
    for (size_t i = 0, start = 0; i <= size && argc <= MAX_ARGS; i++)
        if (i == size || buf[i] == '\n' || buf[i] == 0) {
            buf[i] = 0;
            if (i > start || i < size) args[argc++] = buf + start; // an empty argument is an argument
            start = i + 1;
        }
    args[argc] = NULL;
    FZ_TRY {
        if (parse_args(argc, args)) {
            usage(devnull);
        } else {
            cfg = opt.cfg;
            if (!cfg.vocab) cfg.vocab = 256;
            if (cfg.match_params && !opt.load[0]) match_params(&cfg);
            m = model_create(&cfg, opt.batch, cfg.seq_len);
            print_layer_table(m);
            if (m->num_params + m->act_size <= 1 << 16) fz_forward_backward(m, m->B, m->T);
            char tk_path[4096];
            default_tokenizer_path(tk_path, sizeof(tk_path), opt.train, m->cfg.vocab);
            model_free(m);
            m = NULL;
        }
        fz_end(FZ_OK);
    } FZ_CATCH {
        m = NULL;
    }
    FZ_DONE();
    free(buf);
    buf = NULL;
    return 0;
}
