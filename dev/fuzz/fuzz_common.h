/*
 * fuzz_common.h — shared by the libFuzzer targets in dev/fuzz/ (and make_seeds.c). Include it
 * right after `#define TLM_TESTING`, before `#include "../../train_tlm.c"`, and again after it.
 *
 * Errors: the trainer's die() and usage_error() print one line on stderr and exit. For the
 * trainer's code, exit and fprintf are interposed: while tlm_error_jump is set, the line goes to
 * tlm_last_error (without its newline) and the exit longjmps to *tlm_error_jump with the exit
 * status. sysconf is interposed too, so that fz_memory (bytes, if > 0) is the physical memory
 * model_create measures a model against.
 *
 * Why a shim for memory: a loader that dies half-way leaves its calloc'd blocks, strdup'd
 * strings, open FILEs and glob_t behind. In the real program that cannot matter (die() exits); in a fuzzer it would
 * be reported as a leak on every refused input and would run out of file descriptors. So,
 * for the trainer's code only, calloc/malloc/strdup/free, fopen/fdopen/fclose and glob/globfree are
 * routed through wrappers that remember what is live between fz_begin() and fz_end():
 *   fz_end(FZ_ERROR)  after a die(): everything the trainer still holds is released;
 *   fz_end(FZ_OK)     after a normal return: the list is only forgotten, so anything the
 *                     trainer failed to free is still reported by LeakSanitizer, with the
 *                     stack of its allocation. (The list stores its pointers XOR-masked, so
 *                     that LeakSanitizer does not see them as references.)
 * Memory the trainer keeps on purpose across calls (gemm_init's pack buffers) must be
 * created before tracking starts: call fz_init() from LLVMFuzzerInitialize.
 */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H
#define _XOPEN_SOURCE 700 // as train_tlm.c, whose own identical #define is then harmless
#include <errno.h>
#include <float.h>
#include <glob.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

// --- errors and memory ---------------------------------------------------------------------------
static jmp_buf *tlm_error_jump;
static char tlm_last_error[16384];
static _Noreturn void fz_exit(int status) {
    if (tlm_error_jump) longjmp(*tlm_error_jump, status);
    exit(status);
}
static int fz_fprintf(FILE *f, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n;
    if (f == stderr && tlm_error_jump) {
        n = vsnprintf(tlm_last_error, sizeof(tlm_last_error), fmt, ap);
        size_t len = strlen(tlm_last_error);
        if (len && tlm_last_error[len - 1] == '\n') tlm_last_error[len - 1] = 0;
    } else {
        n = vfprintf(f, fmt, ap);
    }
    va_end(ap);
    return n;
}
static double fz_memory;
static long fz_sysconf(int name) {
    if (name == _SC_PHYS_PAGES && fz_memory > 0) return (long)(fz_memory / sysconf(_SC_PAGE_SIZE));
    return sysconf(name);
}

// --- the live set: open addressing over masked pointers ---------------------------------------
enum { FZ_EMPTY = 0, FZ_HEAP = 1, FZ_FILE = 2, FZ_GONE = 3 };
typedef struct { uintptr_t key; int kind; } FzSlot;
static FzSlot *fz_slots;
static size_t fz_cap, fz_used, fz_live; // used: live + tombstones
static int fz_tracking;
static const uintptr_t FZ_MASK = (uintptr_t)0xa5c3f00d5ee0b1e5ull;
typedef struct { int active; size_t pathc, offs; uintptr_t pathv; } FzGlob;
static FzGlob fz_globs[8];

static size_t fz_hash(uintptr_t k) { return (size_t)((k * 0x9e3779b97f4a7c15ull) >> 17); }

static void fz_rehash(size_t cap) {
    FzSlot *old = fz_slots;
    size_t oldcap = fz_cap;
    fz_slots = calloc(cap, sizeof(FzSlot));
    if (!fz_slots) abort();
    fz_cap = cap;
    fz_used = fz_live = 0;
    for (size_t i = 0; i < oldcap; i++)
        if (old[i].kind == FZ_HEAP || old[i].kind == FZ_FILE) {
            size_t j = fz_hash(old[i].key) & (cap - 1);
            while (fz_slots[j].kind != FZ_EMPTY) j = (j + 1) & (cap - 1);
            fz_slots[j] = old[i];
            fz_used++; fz_live++;
        }
    free(old);
}

static void fz_add(const void *p, int kind) {
    if (!p || !fz_tracking) return;
    if (2 * (fz_used + 1) > fz_cap) fz_rehash(fz_cap < 1024 ? 1024 : (2 * fz_live + 2 > fz_cap / 2 ? fz_cap * 2 : fz_cap));
    uintptr_t k = (uintptr_t)p ^ FZ_MASK;
    size_t j = fz_hash(k) & (fz_cap - 1);
    while (fz_slots[j].kind != FZ_EMPTY && fz_slots[j].kind != FZ_GONE) j = (j + 1) & (fz_cap - 1);
    if (fz_slots[j].kind == FZ_EMPTY) fz_used++;
    fz_slots[j].key = k;
    fz_slots[j].kind = kind;
    fz_live++;
}

static void fz_remove(const void *p) {
    if (!p || !fz_cap) return;
    uintptr_t k = (uintptr_t)p ^ FZ_MASK;
    for (size_t j = fz_hash(k) & (fz_cap - 1); fz_slots[j].kind != FZ_EMPTY; j = (j + 1) & (fz_cap - 1))
        if ((fz_slots[j].kind == FZ_HEAP || fz_slots[j].kind == FZ_FILE) && fz_slots[j].key == k) {
            fz_slots[j].kind = FZ_GONE;
            fz_live--;
            return;
        }
}

// --- the wrappers the trainer's code is compiled against ------------------------------------------
static void *fz_calloc(size_t n, size_t size) { void *p = calloc(n, size); fz_add(p, FZ_HEAP); return p; }
static void *fz_malloc(size_t size) { void *p = malloc(size); fz_add(p, FZ_HEAP); return p; }
static char *fz_strdup(const char *s) { char *p = strdup(s); fz_add(p, FZ_HEAP); return p; }
static void fz_free(void *p) { fz_remove(p); free(p); }
static FILE *fz_fopen(const char *path, const char *mode) { FILE *f = fopen(path, mode); fz_add(f, FZ_FILE); return f; }
static FILE *fz_fdopen(int fd, const char *mode) { FILE *f = fdopen(fd, mode); fz_add(f, FZ_FILE); return f; }
static int fz_fclose(FILE *f) { fz_remove(f); return fclose(f); }
static int fz_glob(const char *pattern, int flags, int (*errfunc)(const char *, int), glob_t *g) {
    int r = glob(pattern, flags, errfunc, g);
    if (fz_tracking && g->gl_pathv)
        for (int i = 0; i < 8; i++)
            if (!fz_globs[i].active) {
                fz_globs[i] = (FzGlob){ 1, g->gl_pathc, g->gl_offs, (uintptr_t)g->gl_pathv ^ FZ_MASK };
                break;
            }
    return r;
}
static void fz_globfree(glob_t *g) {
    for (int i = 0; i < 8; i++)
        if (fz_globs[i].active && fz_globs[i].pathv == ((uintptr_t)g->gl_pathv ^ FZ_MASK)) fz_globs[i].active = 0;
    globfree(g);
}

enum { FZ_OK = 0, FZ_ERROR = 1 };
static void fz_begin(void) { fz_tracking = 1; }
static void fz_end(int how) {
    fz_tracking = 0;
    for (size_t j = 0; j < fz_cap; j++) {
        if (how == FZ_ERROR && fz_slots[j].kind == FZ_HEAP) free((void *)(fz_slots[j].key ^ FZ_MASK));
        if (how == FZ_ERROR && fz_slots[j].kind == FZ_FILE) fclose((FILE *)(fz_slots[j].key ^ FZ_MASK));
        fz_slots[j].kind = FZ_EMPTY;
    }
    for (int i = 0; i < 8; i++) {
        if (how == FZ_ERROR && fz_globs[i].active) {
            glob_t g;
            memset(&g, 0, sizeof(g));
            g.gl_pathc = fz_globs[i].pathc;
            g.gl_offs = fz_globs[i].offs;
            g.gl_pathv = (char **)(fz_globs[i].pathv ^ FZ_MASK);
            globfree(&g);
        }
        fz_globs[i].active = 0;
    }
    fz_used = fz_live = 0;
}

#define calloc fz_calloc
#define malloc fz_malloc
#define strdup fz_strdup
#define free fz_free
#define fopen fz_fopen
#define fdopen fz_fdopen
#define fclose fz_fclose
#define glob fz_glob
#define globfree fz_globfree
#define exit fz_exit
#define fprintf fz_fprintf
#define sysconf fz_sysconf

#else // second inclusion, after train_tlm.c: the harness itself uses the real functions
#undef calloc
#undef malloc
#undef strdup
#undef free
#undef fopen
#undef fdopen
#undef fclose
#undef glob
#undef globfree
#undef exit
#undef fprintf
#undef sysconf

// The input, written to a per-process file that is reused for every run.
static char fz_path[256];
static void fz_remove_input(void) { if (fz_path[0]) unlink(fz_path); }
static const char *fz_write_input(const char *target, const uint8_t *data, size_t size) {
    if (!fz_path[0]) {
        snprintf(fz_path, sizeof(fz_path), "/tmp/tlm_%s_%ld.bin", target, (long)getpid());
        atexit(fz_remove_input);
    }
    FILE *f = fopen(fz_path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        fprintf(stderr, "fuzz harness: cannot write %s: %s\n", fz_path, strerror(errno));
        abort();
    }
    return fz_path;
}

// gemm_init keeps its pack buffers for the life of the process: make them before tracking.
static void fz_init(void) {
    gemm_init();
}

// One forward and backward pass on B x T tokens of the model's own buffers, so that fuzzed
// shapes reach the kernels. Only for the architectures TLM_FUZZ_FORWARD allows: by default
// transformer and gated (the neural-memory kernel of titans and hope was being rewritten when
// these harnesses were written); TLM_FUZZ_FORWARD=all adds titans and hope, =0 turns it off.
static int fz_forward_arches = -1;
static void fz_forward_backward(Model *m, int B, int T) {
    if (fz_forward_arches < 0) {
        const char *f = getenv("TLM_FUZZ_FORWARD");
        fz_forward_arches = f && !strcmp(f, "all") ? (1 << ARCH_COUNT) - 1
                          : f && !strcmp(f, "0") ? 0 : (1 << ARCH_TRANSFORMER) | (1 << ARCH_GATED);
    }
    if (!(fz_forward_arches & (1 << m->cfg.arch))) return;
    for (int i = 0; i < B * T; i++) {
        m->tokens[i] = (int)((uint32_t)(i * 2654435761u) % (uint32_t)m->cfg.vocab);
        m->targets[i] = (int)((uint32_t)(i * 40503u + 1) % (uint32_t)m->cfg.vocab);
    }
    model_zero_grad(m);
    model_forward(m, m->tokens, m->targets, B, T);
    model_backward(m, B, T, 1);
}

// A harness-level invariant (not a sanitizer report): print it and abort, so libFuzzer saves the input.
#define FZ_ASSERT(cond, ...) do { if (!(cond)) { fprintf(stderr, "fuzz invariant failed: " __VA_ARGS__); fputc('\n', stderr); abort(); } } while (0)

// Catches die() and usage_error() for the duration of one input:
//     FZ_TRY { ...trainer calls... ; fz_end(FZ_OK); } FZ_CATCH { ...after a die()... }
// The error path releases what the trainer held (fz_end(FZ_ERROR)) before FZ_CATCH's block.
// TLM_FUZZ_VERBOSE=1 prints why each refused input was refused (e.g. to check that seeds load).
static jmp_buf fz_jump;
static void fz_report(void) {
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("TLM_FUZZ_VERBOSE") && atoi(getenv("TLM_FUZZ_VERBOSE")) > 0;
    if (verbose) fprintf(stderr, "refused: %s\n", tlm_last_error);
}
#define FZ_TRY fz_begin(); tlm_error_jump = &fz_jump; if (setjmp(fz_jump) == 0)
#define FZ_CATCH else if ((tlm_error_jump = NULL, fz_end(FZ_ERROR), fz_report(), 1))
#define FZ_DONE() do { tlm_error_jump = NULL; } while (0)
#endif
