/*
 * bench_tlm.c — `make bench`: how fast train_tlm.c trains, measured on full training steps.
 *
 * For each config it builds the model with train_tlm.c's own code (this file #includes it),
 * runs a warm-up step and then timed steps of forward + backward + AdamW on random tokens,
 * and prints parameters, tokens/s, ms per step (the mean, and the fastest step: on a shared
 * machine that moves by +-10%, the fastest is what A/B comparisons can rely on), model
 * GFLOP/s (6 * params * tokens/s, the convention of llm.c and nanoGPT), where the time goes
 * (mixer slots incl. their norm, W_O and residual; MLP slots; head incl. the loss; the rest:
 * embedding, zeroing the gradient, AdamW; from up to 10 more steps that timed_step times piece
 * by piece, so that the model's forward and backward hold no timing), and the peak memory.
 * Each config runs in its own child process so that its peak memory is its own.
 * Then the memory recurrence alone (Titans, Hope), and a microbenchmark of the blocked matmul at
 * the model's shapes beside the machine's multiply-add peak (what no kernel can beat).
 *
 *   ./dev/bench_tlm [--threads 1,2] [--only NAME|matmul|memory] [--seconds S]
 *                   [--mem-conv K] [--mem-silu 0|1] [--mem-clip X] [--profile]
 * --profile: no timing; per config one warm-up step, then one step in profiled_step(), for an
 * instruction count per kernel where timing is unreliable (a shared machine; valgrind has no
 * AVX-512: build with -mno-avx512f):
 *   valgrind --tool=callgrind --toggle-collect=profiled_step ./bench_noavx512 --only
 *       default-titans --threads 1 --profile ; callgrind_annotate --inclusive=yes callgrind.out.*
 * The --mem-* options change the Titans and Hope configs' memory from train_tlm's defaults (conv
 * 4, SiLU 1, clip 1), e.g. --mem-conv 0 --mem-silu 0 --mem-clip 0 to see what those parts cost.
 */
#define TLM_TESTING
#include "../train_tlm.c"
#include <sys/resource.h>
#include <sys/wait.h>

typedef struct {
    const char *name;
    Arch arch;
    int layers, dim, heads, vocab, mlp_width, seq_len, batch;
} BenchConfig;

static const BenchConfig configs[] = {
    // GPT-2 sized Transformers: the SwiGLU width 2048 (resp. 1024) gives the MLP the same
    // parameters as GPT-2's 4C GELU MLP (3*768*2048 == 2*768*3072)
    { "gpt2-124M", ARCH_TRANSFORMER, 12, 768, 12, 50257, 2048, 64, 4 },
    { "gpt2-30M", ARCH_TRANSFORMER, 6, 384, 6, 50257, 1024, 64, 4 },
    // the classroom default (./train_tlm with no options: Brown bytes, 8 x 256 tokens), per
    // architecture, at equal parameters (--match-params: gated, titans and hope pay for their
    // additions out of the MLP width)
    { "default-transformer", ARCH_TRANSFORMER, 6, 128, 4, 256, 384, 256, 8 },
    { "default-gated", ARCH_GATED, 6, 128, 4, 256, 384, 256, 8 },
    { "default-titans", ARCH_TITANS, 6, 128, 4, 256, 384, 256, 8 },
    { "default-hope", ARCH_HOPE, 6, 128, 4, 256, 384, 256, 8 },
};
enum { NUM_CONFIGS = sizeof(configs) / sizeof(configs[0]) };

// the memory's q/k/v conv kernel, SiLU and inner-gradient clip (--mem-conv, --mem-silu, --mem-clip)
typedef struct { int conv, silu; double clip; } MemoryParts;

// Where a step's time goes: one training step as model_forward, model_backward and adamw_step
// take it, in the same order, with the mixer slots (norm, mixer, W_O, residual), the MLP slots
// and the head (with the loss) timed apart; adds their seconds to part[0..2], the step's to *all.
static void timed_step(Model *m, const AdamW *adam, int B, int T, double part[3], double *all) {
    int L = m->cfg.layers, N = B * T;
    const Acts *a = &m->a;
    double t_start = wall_time(), t;
    model_zero_grad(m);
    model_embed(m, m->tokens, m->targets, B, T);
    for (int l = 0; l < L; l++) {
        const real *x = l ? a->layer[l - 1].out : a->x0;
        t = wall_time(); mixer_slot_forward(m, l, x, B, T); part[0] += wall_time() - t;
        t = wall_time(); mlp_forward(m, l, B, T); part[1] += wall_time() - t;
    }
    const real *x_last = L ? a->layer[L - 1].out : a->x0;
    t = wall_time();
    head_forward(m, x_last, m->tokens, m->targets, N);
    head_backward(m, x_last, N, 1);
    part[2] += wall_time() - t;
    for (int l = L - 1; l >= 0; l--) {
        const real *x = l ? a->layer[l - 1].out : a->x0;
        t = wall_time(); mlp_backward(m, l, B, T); part[1] += wall_time() - t;
        t = wall_time(); mixer_slot_backward(m, l, x, B, T); part[0] += wall_time() - t;
    }
    embedding_backward(m->g.wte, m->a.dres, m->tokens, N, m->cfg.dim);
    adamw_step(m, adam, adam->lr, grad_norm(m));
    *all += wall_time() - t_start;
}

// one training step, as the bench times it; profiled_step: the one that --profile counts
static void bench_step(Model *m, const AdamW *adam, int B, int T) {
    model_zero_grad(m);
    model_forward(m, m->tokens, m->targets, B, T);
    model_backward(m, B, T, 1);
    adamw_step(m, adam, adam->lr, grad_norm(m));
}
__attribute__((noinline)) static void profiled_step(Model *m, const AdamW *adam, int B, int T) {
    bench_step(m, adam, B, T);
}

static int profile_only; // --profile

static void bench_config(const BenchConfig *bc, double seconds, MemoryParts mp) {
    Config c = { .arch = bc->arch, .layers = bc->layers, .dim = bc->dim, .heads = bc->heads, .vocab = bc->vocab,
                 .seq_len = bc->seq_len, .mlp_width = bc->mlp_width, .taper = TAPER_COSINE, .taper_start = 1.5,
                 .taper_end = 0.5, .taper_multiple = 32, .window = 64, .mem_depth = 2, .mem_hidden = 32,
                 .mem_chunk = 16, .mem_lr = 0.00625, .mem_clip = mp.clip, .mem_conv = mp.conv, .mem_silu = mp.silu,
                 .cms_levels = 2, .cms_width = 64, .cms_chunks = { 0, 16, 64, 0 } };
    if (c.vocab == 256) match_params(&c); // the classroom configs (model_create redoes the widths)
    int B = bc->batch, T = bc->seq_len;
    Model *m = model_create(&c, B, T);
    init_params(m, 1);
    Rng rng = rng_seeded(2);
    for (int i = 0; i < B * T; i++) { m->tokens[i] = rng_u32(&rng) % c.vocab; m->targets[i] = rng_u32(&rng) % c.vocab; }
    AdamW adam = { 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f };
    if (profile_only) {
        bench_step(m, &adam, B, T); // a warm-up
        profiled_step(m, &adam, B, T);
        printf("%-20s %3d %11zu  (--profile: one step counted, no timing)\n", bc->name, num_threads(), m->num_params);
        model_free(m);
        return;
    }
    int steps = 0;
    double elapsed = 0, fastest = 1e30;
    for (int s = -1; elapsed < seconds || steps < 2; s++) {
        // (step -1 warms up)
        double t0 = wall_time();
        model_zero_grad(m);
        model_forward(m, m->tokens, m->targets, B, T);
        model_backward(m, B, T, 1);
        adamw_step(m, &adam, adam.lr, grad_norm(m));
        double dt = wall_time() - t0;
        if (s >= 0) { elapsed += dt; steps++; fastest = dt < fastest ? dt : fastest; }
    }
    double ms = 1000 * elapsed / steps, tps = (double)B * T * steps / elapsed;
    double gflops = 6.0 * m->num_params * tps / 1e9;
    // the parts: as many timed steps again, at most 10 (the timing of the parts is not in the above)
    double part[3] = { 0, 0, 0 }, all = 0;
    for (int s = 0; s < (steps < 10 ? steps : 10); s++) timed_step(m, &adam, B, T, part, &all);
    double mix = 100 * part[0] / all, mlp = 100 * part[1] / all, head = 100 * part[2] / all;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("%-20s %3d %11zu %9.0f %9.1f %8.1f %8.1f   %5.1f%% %5.1f%% %5.1f%% %5.1f%%  %7.0f MiB\n", bc->name, num_threads(),
           m->num_params, tps, ms, 1000 * fastest, gflops, mix, mlp, head, 100 - mix - mlp - head, ru.ru_maxrss / 1024.0);
    fflush(stdout);
    model_free(m);
}

// GFLOP/s of the three matmuls of a linear layer (N,C) -> (N,OC)
static void bench_matmul(int N, int C, int OC) {
    real *inp = xcalloc((size_t)N * C, sizeof(real), "bench"), *w = xcalloc((size_t)OC * C, sizeof(real), "bench");
    real *out = xcalloc((size_t)N * OC, sizeof(real), "bench"), *dinp = xcalloc((size_t)N * C, sizeof(real), "bench");
    real *dw = xcalloc((size_t)OC * C, sizeof(real), "bench");
    for (size_t i = 0; i < (size_t)N * C; i++) inp[i] = (real)((i % 13) * 0.01);
    for (size_t i = 0; i < (size_t)OC * C; i++) w[i] = (real)((i % 7) * 0.01);
    double best[3] = { 1e9, 1e9, 1e9 };
    for (int r = 0; r < 5; r++) {
        double t0 = wall_time();
        matmul_forward(out, inp, w, N, C, OC);
        double t1 = wall_time();
        matmul_backward(dinp, NULL, out, inp, w, N, C, OC);
        double t2 = wall_time();
        matmul_backward(NULL, dw, out, inp, w, N, C, OC);
        double t3 = wall_time();
        best[0] = fmin(best[0], t1 - t0); best[1] = fmin(best[1], t2 - t1); best[2] = fmin(best[2], t3 - t2);
    }
    double flop = 2.0 * N * C * OC / 1e9;
    printf("  matmul N=%-5d C=%-5d OC=%-6d %3d threads: forward %6.1f  dinp %6.1f  dweight %6.1f GFLOP/s\n",
           N, C, OC, num_threads(), flop / best[0], flop / best[1], flop / best[2]);
    free(inp); free(w); free(out); free(dinp); free(dw);
}

// The memory recurrence alone: memory_chunked_forward and memory_chunked_backward of one sequence and head on
// one thread, as each thread runs them in the model, at the classroom sizes (Titans' heads:
// d 32, hidden 32; Hope's fast level: d 128 and the tapered hidden widths). 32 sequences'
// records, as many as a layer of the classroom Titans keeps, so that the backward reads them
// back from memory as in the model; the fastest of five rounds, in microseconds per sequence.
static void bench_memory(const char *name, int T, int d, int m, int chunk, int read_chunk_start, double clip) {
    enum { SEQS = 32 };
    MemorySize ms = { d, m, 2, chunk, (real)0.01, (real)clip, 0, 0 }; // (conv and SiLU are outside)
    size_t n = (size_t)T * d, S = memory_state_size(T, ms), P = memory_params(2, d, m);
    real *states = xcalloc(SEQS * S, sizeof(real), "bench");
    real *scratch = xcalloc(memory_scratch_size(T, ms), sizeof(real), "bench");
    real *k = xcalloc(8 * n + 6 * (size_t)T + 2 * P, sizeof(real), "bench");
    real *v = k + n, *q = v + n, *y = q + n, *dy = y + n, *dk = dy + n, *dv = dk + n, *dq = dv + n;
    real *theta = dq + n, *eta = theta + T, *alpha = eta + T, *dtheta = alpha + T, *deta = dtheta + T, *dalpha = deta + T;
    real *w0 = dalpha + T, *dw0 = w0 + P;
    Rng rng = rng_seeded(3);
    for (size_t i = 0; i < n; i++) {
        k[i] = (real)(0.2 * rng_normal(&rng)); q[i] = (real)(0.2 * rng_normal(&rng));
        v[i] = (real)rng_normal(&rng); dy[i] = (real)rng_normal(&rng);
    }
    for (int t = 0; t < T; t++) { theta[t] = (real)0.01; eta[t] = (real)0.9; alpha[t] = (real)0.02; }
    for (size_t i = 0; i < P; i++) w0[i] = (real)(0.1 * rng_normal(&rng));
    double fwd = 1e9, bwd = 1e9;
    for (int r = 0; r < 5; r++) {
        double t0 = wall_time();
        for (int s = 0; s < SEQS; s++)
            memory_chunked_forward(y, states + s * S, scratch, k, v, q, theta, eta, alpha, w0, T, ms, read_chunk_start);
        double t1 = wall_time();
        for (int s = 0; s < SEQS; s++)
            memory_chunked_backward(dk, dv, dq, dtheta, deta, dalpha, dw0, scratch, dy, states + s * S, k, q, theta, eta, alpha,
                            T, ms, read_chunk_start);
        double t2 = wall_time();
        fwd = fmin(fwd, (t1 - t0) / SEQS); bwd = fmin(bwd, (t2 - t1) / SEQS);
    }
    printf("  memory %-6s T %d d %-3d hidden %-3d chunk %d, 1 thread: forward %7.1f  backward %7.1f us per sequence\n",
           name, T, d, m, chunk, 1e6 * fwd, 1e6 * bwd);
    free(states); free(scratch); free(k);
}

// The machine's ceiling: fused multiply-adds on 12 independent vector chains per thread, with
// nothing to load or store (AVX-512 in float where the matmul uses it, else what gcc makes of
// 16-wide plain C). GFLOP/s counts 2 per multiply-add, like the rest of this benchmark.
static double bench_fma_peak(void) {
    const long iters = 100000000;
    double t0 = wall_time(), sink = 0;
    #pragma omp parallel reduction(+ : sink)
    {
#if HAVE_AVX512
        __m512 acc[12], b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
        for (int i = 0; i < 12; i++) acc[i] = _mm512_set1_ps(1.0f + i * 1e-7f);
        for (long k = 0; k < iters; k++)
            for (int i = 0; i < 12; i++) acc[i] = _mm512_fmadd_ps(acc[i], b, c);
        for (int i = 0; i < 12; i++) sink += _mm512_reduce_add_ps(acc[i]);
#else
        float acc[12][16];
        for (int i = 0; i < 12; i++) for (int l = 0; l < 16; l++) acc[i][l] = 1.0f + i * 1e-7f;
        for (long k = 0; k < iters; k++)
            for (int i = 0; i < 12; i++) for (int l = 0; l < 16; l++) acc[i][l] = acc[i][l] * 0.999999f + 1e-7f;
        for (int i = 0; i < 12; i++) for (int l = 0; l < 16; l++) sink += acc[i][l];
#endif
    }
    double seconds = wall_time() - t0;
    if (sink == 0) printf(" "); // keep the chains alive
    return (double)iters * 12 * 16 * 2 * num_threads() / seconds / 1e9;
}

// a --mem-* value: a number in lo..hi (an integer if integral), else a one-line error and exit 2
static double number_arg(const char *flag, const char *text, double lo, double hi, int integral) {
    char *end;
    double v = strtod(text, &end);
    if (end == text || *end || !(v >= lo && v <= hi) || (integral && v != floor(v))) {
        fprintf(stderr, "bench_tlm: %s must be %s in %g..%g, got '%s'\n", flag, integral ? "an integer" : "a number", lo, hi, text);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv) {
    const char *threads = NULL, *only = NULL;
    double seconds = 4;
    MemoryParts mp = { 4, 1, 1 }; // train_tlm's defaults
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = argv[++i];
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--mem-conv") && i + 1 < argc) mp.conv = (int)number_arg("--mem-conv", argv[++i], 0, 64, 1);
        else if (!strcmp(argv[i], "--mem-silu") && i + 1 < argc) mp.silu = (int)number_arg("--mem-silu", argv[++i], 0, 1, 1);
        else if (!strcmp(argv[i], "--mem-clip") && i + 1 < argc) mp.clip = number_arg("--mem-clip", argv[++i], 0, 1e6, 0);
        else if (!strcmp(argv[i], "--profile")) profile_only = 1;
        else {
            fprintf(stderr, "usage: %s [--threads 1,2] [--only NAME|matmul|memory] [--seconds S] "
                    "[--mem-conv K] [--mem-silu 0|1] [--mem-clip X] [--profile]\n", argv[0]);
            return 2;
        }
    }
    if (!(seconds > 0)) { fprintf(stderr, "bench_tlm: --seconds must be > 0\n"); return 2; }
    const int only_matmul = only && !strcmp(only, "matmul"); // --only matmul: just the matmul part
    const int only_memory = only && !strcmp(only, "memory"); // --only memory: just the memory recurrence
    if (only && !only_matmul && !only_memory) {
        int matches = 0;
        for (int i = 0; i < NUM_CONFIGS; i++) matches += strstr(configs[i].name, only) != NULL;
        if (!matches) {
            fprintf(stderr, "bench_tlm: --only '%s' matches no config (names:", only);
            for (int i = 0; i < NUM_CONFIGS; i++) fprintf(stderr, " %s", configs[i].name);
            fprintf(stderr, "; or matmul, memory)\n");
            return 2;
        }
    }
    int counts[16], n_counts = 0;
    if (threads) {
        for (const char *p = threads; *p && n_counts < 16;) {
            counts[n_counts] = atoi(p);
            if (counts[n_counts] < 1 || counts[n_counts] > 1024) {
                fprintf(stderr, "bench_tlm: --threads wants a comma-separated list of counts in 1..1024, got '%s'\n", threads);
                return 2;
            }
            n_counts++;
            p = strchr(p, ',') ? strchr(p, ',') + 1 : p + strlen(p);
        }
    } else {
        counts[n_counts++] = num_threads();
    }
    if (!only_matmul && !only_memory) {
        printf("full training steps (forward + backward + AdamW), fp32, cosine taper\n");
        printf("%-20s %3s %11s %9s %9s %8s %8s   %6s %6s %6s %6s  %11s\n", "config", "thr", "params", "tokens/s", "ms/step",
               "fastest", "GFLOP/s", "mixer", "mlp", "head", "other", "peak RSS");
    }
    for (int k = 0; k < n_counts; k++)
        for (int i = 0; i < NUM_CONFIGS; i++) {
            if (only_matmul || only_memory || (only && !strstr(configs[i].name, only))) continue;
            fflush(stdout);
            pid_t pid = fork();
            if (pid == 0) {
#ifdef _OPENMP
                omp_set_num_threads(counts[k]);
#endif
                bench_config(&configs[i], seconds, mp);
                _exit(0);
            }
            int status;
            waitpid(pid, &status, 0);
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) printf("%-20s failed\n", configs[i].name);
        }
    if (only && !only_matmul && !only_memory) return 0; // --only NAME: just the configs whose names contain it
    if (!only_matmul) {
        printf("the memory recurrence alone (Titans' heads, Hope's fast levels at the classroom sizes)\n");
        gemm_init();
        bench_memory("titans", 256, 32, 32, 16, 0, mp.clip);
        bench_memory("hope", 256, 128, 32, 16, 1, mp.clip);
        bench_memory("hope", 256, 128, 64, 16, 1, mp.clip);
        bench_memory("hope", 256, 128, 96, 16, 1, mp.clip);
    }
    if (only_memory) return 0;
    printf("blocked matmul at the model's shapes, and the machine's multiply-add peak\n");
    for (int k = 0; k < n_counts; k++) {
#ifdef _OPENMP
        omp_set_num_threads(counts[k]);
#endif
        printf("  fused multiply-add peak        %3d threads: %6.1f GFLOP/s\n", num_threads(), bench_fma_peak());
        gemm_init();
        bench_matmul(256, 768, 2304);
        bench_matmul(256, 768, 4096);
        bench_matmul(256, 2048, 768);
        bench_matmul(256, 768, 50257);
        bench_matmul(1024, 128, 768);
        bench_matmul(1024, 128, 50257);
    }
    return 0;
}
