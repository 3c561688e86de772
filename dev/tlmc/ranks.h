/*
 * dev/tlmc/ranks.h — data parallel over MPI ranks (make train_tlm_mpi, -DTLM_MPI), or one
 * process without MPI, where every function here is a no-op or the identity.
 *
 * Every rank holds the whole model. A step's global batch is ranks x grad_accum micro-batches
 * of B sequences, taken in order from the one data stream that every rank walks: micro-batch k
 * is rank (k mod ranks)'s. Each rank sums its micro-batches' gradients, one MPI_Allreduce sums
 * those over the ranks, and every rank clips and applies AdamW to the same sum, so the ranks'
 * parameters stay identical. Validation batch i is rank (i mod ranks)'s; the losses are summed.
 * Only rank 0 prints (the others' stdout is /dev/null), logs, samples and saves.
 * Equivalence: one process with --grad-accum 2 forms g0 + g1 as two ranks' all-reduce does
 * (train_step), so their losses and checkpoints agree bit for bit; with more ranks the
 * all-reduce adds in its own order (the same on every rank), within float rounding.
 *
 * Provides: ranks_start (sets world, dev/tlmc/utils.h), ranks_end, ranks_sum_step (a training
 * step's gradient and losses summed over the ranks), ranks_sum_doubles, ranks_max,
 * ranks_check_same (before a save: every rank holds the parameters written), ranks_check_agree
 * (every rank was given the same options, the same shards), allreduce_seconds.
 * Needs: real (float, or double with TLM_DOUBLE) and dev/tlmc/utils.h.
 */
#ifndef TLMC_RANKS_H
#define TLMC_RANKS_H

static double allreduce_seconds; // in ranks_sum_step, for the run's summary line

static void ranks_start(int *argc, char ***argv) {
#ifdef TLM_MPI
    int threads_ok;
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &threads_ok); // only the main thread calls MPI
    MPI_Comm_rank(MPI_COMM_WORLD, &world.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world.ranks);
    if (world.rank > 0 && !freopen("/dev/null", "w", stdout))
        die("cannot redirect stdout to /dev/null");
#else
    (void)argc; (void)argv;
#endif
}

static void ranks_end(void) {
#ifdef TLM_MPI
    MPI_Finalize();
#endif
}

// x[0:n] summed over the ranks (each rank's entries are 0 where another rank's are not, so
// each sum is exact and the caller adds them in the single process's order)
static void ranks_sum_doubles(double *x, int n) {
    if (world.ranks == 1) return;
#ifdef TLM_MPI
    MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
#else
    (void)x; (void)n;
#endif
}

// A step's sum over the ranks, in place: the gradient g[0:n] (a few large MPI_Allreduce calls)
// and the micro-batches' losses loss[0:parts] (0 where another rank's). Before it, a rank whose
// loss or gradient is not finite stops every rank, naming itself: after the sum no rank could
// tell whose it was (a pass over the gradient: ~1% of a step).
static void ranks_sum_step(real *g, size_t n, double *loss, int parts, int step) {
    if (world.ranks == 1) return;
    for (int k = 0; k < parts; k++)
        if (!isfinite(loss[k]))
            die("step %d: the loss of micro-batch %d is %g; stopping every rank", step, k, loss[k]);
    double squares = 0;
    #pragma omp parallel for reduction(+ : squares)
    for (size_t i = 0; i < n; i++) squares += (double)g[i] * g[i];
    if (!isfinite(squares))
        die("step %d: this rank's gradient norm is %g; stopping every rank", step, sqrt(squares));
#ifdef TLM_MPI
    double t0 = wall_time();
    MPI_Datatype type = sizeof(real) == sizeof(float) ? MPI_FLOAT : MPI_DOUBLE;
    for (size_t i = 0; i < n; i += 1 << 30) {
        size_t len = n - i < (size_t)1 << 30 ? n - i : (size_t)1 << 30;
        MPI_Allreduce(MPI_IN_PLACE, g + i, (int)len, type, MPI_SUM, MPI_COMM_WORLD);
    }
    allreduce_seconds += wall_time() - t0;
#endif
    ranks_sum_doubles(loss, parts);
}

// the largest x over the ranks: every rank decides alike (e.g. to stop after a signal)
static int ranks_max(int x) {
    if (world.ranks == 1) return x;
#ifdef TLM_MPI
    MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
#endif
    return x;
}

// Every rank must hold the same `what` (a hash of it): else one line, and every rank stops.
// (Ranks given different options or data would train different models, or stop in MPI's own
// error at the first all-reduce whose sizes differ.)
static void ranks_check_agree(uint64_t hash, const char *what) {
    if (world.ranks == 1) return;
#ifdef TLM_MPI
    uint64_t root = hash;
    MPI_Bcast(&root, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    int first = hash != root ? world.rank : world.ranks; // the first rank that differs
    MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (first == world.ranks) return;
    if (world.rank == 0)
        fprintf(stderr, "error: rank %d was given other %s than rank 0: every rank must run the "
                "same command on the same data\n", first, what);
    MPI_Finalize();
    exit(1);
#else
    (void)hash; (void)what;
#endif
}

// Before rank 0 saves: every rank holds the very parameters it writes (a checksum of their bits).
static void ranks_check_same(const real *params, size_t n, int step) {
    if (world.ranks == 1) return;
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        float f = (float)params[i];
        memcpy(&bits, &f, 4);
        sum = (sum ^ bits) * 0x100000001b3ull;
    }
#ifdef TLM_MPI
    uint64_t low = sum, high = sum;
    MPI_Allreduce(MPI_IN_PLACE, &low, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &high, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
    if (low != high) die("step %d: the ranks' parameters differ (checksum %016llx); not saving",
                         step, (unsigned long long)sum);
#else
    (void)step;
#endif
}
#endif // TLMC_RANKS_H
