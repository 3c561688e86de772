/*
 * dev/tlmc/utils.h — what every part of tlm.c leans on: one-line errors, checked allocation
 * and file I/O, the clock, OpenMP's thread counts, and random numbers.
 *
 * Provides: world (this process among the MPI ranks: rank 0 of 1 unless ranks_start, in
 *   dev/tlmc/ranks.h, says otherwise); die(fmt, ...): one line on stderr, "error: " and the
 *   message (naming the file or flag and what was wrong), then exit status 1, and with
 *   -DTLM_MPI on more than one rank every rank stops; TEXT_MAX, the longest path an option
 *   holds; xcalloc (dies naming what it was for), read_exact (a short read is a
 *   truncated file), write_all, file_size; open_regular (an input that must be a regular file:
 *   a FIFO never blocks the run), path_directory, canonical_path and same_file (two paths that
 *   are one file, by name even before it exists, and by device and inode); physical_memory;
 *   wall_time; num_threads, num_threads_here, thread_id; PI; Rng, xorshift64* random numbers
 *   (rng_seeded, rng_u32, rng_uniform, rng_normal, rng_below) and named streams (splitmix64,
 *   fnv1a64, key_mix); SAVE_SUFFIX.
 * Needs: _XOPEN_SOURCE 700 defined before the first system header (train_tlm.c's first line).
 * The tests and the fuzz harness catch die()'s exit by interposing exit and fprintf (test_tlm.c,
 * dev/fuzz/fuzz_common.h); nothing here knows about them.
 */
#ifndef TLMC_UTILS_H
#define TLMC_UTILS_H
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef TLM_MPI
#include <mpi.h> // make train_tlm_mpi: data parallel over MPI ranks (dev/tlmc/ranks.h)
#endif

enum { TEXT_MAX = 4096 }; // the longest path (or list) an option holds, with its NUL
enum { SAVE_SUFFIX = 16 }; // the longest suffix a save adds to a path: .tmp.PID (.lock shorter)
static const double PI = 3.14159265358979323846;

// This process among the ranks of an MPI run: rank 0 of 1 without -DTLM_MPI.
static struct { int rank, ranks; } world = { 0, 1 };

static void die(const char *fmt, ...) {
    char msg[4 * TEXT_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (world.ranks > 1) fprintf(stderr, "error: rank %d: %s\n", world.rank, msg);
    else fprintf(stderr, "error: %s\n", msg);
#ifdef TLM_MPI
    if (world.ranks > 1) MPI_Abort(MPI_COMM_WORLD, 1); // every rank stops
#endif
    exit(1);
}

static void *xcalloc(size_t n, size_t size, const char *what) {
    if (size && n > SIZE_MAX / size) die("%s: size overflow", what);
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) die("%s: out of memory allocating %.1f MiB", what, (double)n * size / (1 << 20));
    return p;
}

// Opens an input (--load, --train, --val) for reading, refusing anything but a regular file:
// opened without blocking (a FIFO's open would wait for a writer forever), checked by fstat on
// that descriptor, then read as usual.
static const char *file_kind(mode_t mode) {
    return S_ISDIR(mode) ? "a directory" : S_ISFIFO(mode) ? "a FIFO" : S_ISSOCK(mode) ? "a socket"
            : "a device";
}
static FILE *open_regular(const char *path) {
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) die("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) die("%s: cannot open: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        die("%s is %s, not a regular file", path, file_kind(st.st_mode));
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    FILE *f = fdopen(fd, "rb");
    if (!f) die("%s: cannot open: %s", path, strerror(errno));
    return f;
}
// The directory a path lies in ("." for a bare name).
static void path_directory(char *dir, size_t n, const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, n, ".");
    else if (slash == path) snprintf(dir, n, "/");
    else snprintf(dir, n, "%.*s", (int)(slash - path), path);
}
// The file a path names, as an absolute path without links, '.' or '..': realpath(3) if it
// exists, else its directory's real path and its name (a file not yet written has a name too).
// 0 if neither can be resolved.
static int canonical_path(const char *path, char *out, size_t n) {
    char real_path[PATH_MAX], dir[TEXT_MAX];
    if (realpath(path, real_path)) return snprintf(out, n, "%s", real_path) > 0;
    path_directory(dir, sizeof(dir), path);
    const char *slash = strrchr(path, '/'), *name = slash ? slash + 1 : path;
    if (!*name || !realpath(dir, real_path)) return 0;
    return snprintf(out, n, "%s/%s", strcmp(real_path, "/") ? real_path : "", name) > 0;
}
// whether a and b are one file: the same canonical path (whether or not it exists yet), or, if
// both exist, the same device and inode (hard links)
static int same_file(const char *a, const char *b) {
    char ca[PATH_MAX + TEXT_MAX], cb[PATH_MAX + TEXT_MAX];
    if (canonical_path(a, ca, sizeof(ca)) && canonical_path(b, cb, sizeof(cb)) && !strcmp(ca, cb))
        return 1;
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev
            && sa.st_ino == sb.st_ino;
}
// Reads exactly n items or dies naming the file: a short read means a truncated file.
static void read_exact(void *buf, size_t size, size_t n, FILE *f, const char *path) {
    if (fread(buf, size, n, f) != n)
        die("%s: %s", path, ferror(f) ? strerror(errno) : "file is truncated");
}
static int write_all(const void *buf, size_t size, size_t n, FILE *f) {
    return fwrite(buf, size, n, f) == n;
}
static long file_size(FILE *f) {
    long here = ftell(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, here, SEEK_SET);
    return n;
}

// The machine's physical memory in bytes (16 GiB if it cannot be told).
static double physical_memory(void) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 ? (double)pages * page : 16.0 * (1 << 30);
}

static double wall_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int num_threads(void) { // the threads a parallel region started here would have
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
static int num_threads_here(void) { // the size of the team running this code
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}
static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

// xorshift64* random numbers: the same seed gives the same model and the same run.
typedef struct { uint64_t state; } Rng;
static Rng rng_seeded(uint64_t seed) {
    Rng r = { seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull };
    if (!r.state) r.state = 1;
    return r;
}
static uint32_t rng_u32(Rng *r) {
    r->state ^= r->state >> 12;
    r->state ^= r->state << 25;
    r->state ^= r->state >> 27;
    return (uint32_t)((r->state * 0x2545F4914F6CDD1Dull) >> 32);
}
static double rng_uniform(Rng *r) { return (rng_u32(r) + 0.5) / 4294967296.0; } // (0,1)
static double rng_normal(Rng *r) { // Box-Muller
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * PI * u2);
}
// A uniform integer in 0..n-1 (1 <= n <= 2^32), without bias: the first 32-bit draw x below
// 2^32 - (2^32 mod n), the largest multiple of n that 2^32 holds, then x mod n.
static uint32_t rng_below(Rng *r, uint64_t n) {
    uint64_t limit = 4294967296ull - 4294967296ull % n;
    for (;;) {
        uint64_t x = rng_u32(r);
        if (x < limit) return (uint32_t)(x % n);
    }
}

// Independent streams by name: splitmix64 (Steele, Lea, Flood 2014), the finaliser that
// turns any 64-bit key into a well-mixed one, combines the parts of a stream's identity in
// turn, key = splitmix64(key ^ part); a name enters as its 64-bit FNV-1a hash. The stream is
// then rng_seeded(key). Two identities share a stream only by a 64-bit collision.
static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
static uint64_t fnv1a64(const char *s) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001B3ull;
    return h;
}
static uint64_t key_mix(uint64_t key, uint64_t part) { return splitmix64(key ^ part); }
#endif // TLMC_UTILS_H
