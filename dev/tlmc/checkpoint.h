/*
 * dev/tlmc/checkpoint.h — checkpoint files and their safety: the format (version 2), the atomic
 * save, the one-descriptor open and load, a resume on another number of ranks, the options a
 * checkpoint restores, and the paths a run refuses to write.
 *
 * Provides: checkpoint_save (to PATH.tmp.PID, synced, renamed over PATH: a crash never leaves half
 *   a file; 0 or -1, having said why), ranks_save (the same on rank 0, once every rank holds the
 *   same parameters, and only once this run has trained a step or loaded that file),
 *   checkpoint_open / checkpoint_load / checkpoint_close (header, options and
 *   CRC-32C checked once, then the parameters read through the same descriptor: the bytes
 *   checked are the bytes loaded), apply_checkpoint_options (--load: model options must agree,
 *   training options not given are restored; --match-params compared before its shrinking),
 *   ranks_check_resume, crc32c, refuse_input and check_save_path (--save and --log never write
 *   over an input; --save never over a file that is not a checkpoint; one writer a path: its
 *   lock, save_lock), H_* (the header's slots).
 * Needs, from the includer: Model (cfg, params, adam_m, adam_v, num_params, step, table) and
 *   config_finish (train_tlm.c); dev/tlmc/utils.h, ranks.h, dataloader.h (DataPosition,
 *   DataLoader), options.h (opt, the option area's text).
 * Saves are atomic through rename(2): test_tlm.c and the fuzz harness interpose rename to
 * inject failures; nothing here knows about them.
 */
#ifndef TLMC_CHECKPOINT_H
#define TLMC_CHECKPOINT_H
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>

// --- the format ---------------------------------------------------------------------------
// Version 2 (written; data/README.md has the layout): a header of 256 int32 (the fields below),
// the option area (every model and training option of the table of dev/tlmc/options.h as
// `name=value`
// lines, so that --load can rebuild the model and resume the run), the parameters as float32 in
// layout_params() order, then, if has_optimizer, AdamW's first and second moments in the same
// order, and last a CRC-32C of all the bytes before it. (Version 1, before the option area and
// the checksum, is no longer read.)
// A checkpoint is written to PATH.tmp.PID (created anew, never through a link) with the signals
// held back, synced, renamed over PATH and the directory synced: a crash, a full disk or a
// second Ctrl-C never leaves a half-written checkpoint behind.

enum {
    CKPT_MAGIC = 20260623, CKPT_VERSION = 2,
    H_MAGIC = 0, H_VERSION, // (slots 2..31: 0)
    H_NUM_PARAMS_LO = 32, H_NUM_PARAMS_HI, H_STEP, H_HAS_OPTIMIZER,
    // the DataPosition (dev/tlmc/dataloader.h)
    H_DATA_SHARD, H_DATA_SLOT_LO, H_DATA_SLOT_HI, H_DATA_EPOCH,
    H_OPTION_BYTES = 40, // bytes of the option area (a multiple of 4)
    H_RANKS,             // the MPI ranks that wrote it (0: one process; dev/tlmc/ranks.h)
    H_DATA_EPOCH_HI,     // the epoch's high 32 bits (H_DATA_EPOCH: its low ones)
    H_MLP_WIDTHS = 64,  // MAX_LAYERS slots
    H_CMS_WIDTHS = 128, // MAX_LAYERS slots
    H_SIZE = 256,
    MAX_OPTION_BYTES = 1 << 20,
    MAX_RANKS = 1 << 16 // (ranks x --batch x --grad-accum then fits in 64 bits)
};


// CRC-32C (Castagnoli), bytewise with a table: crc32c(0, "123456789", 9) = 0xE3069283
static uint32_t crc32c(uint32_t crc, const void *data, size_t n) {
    static uint32_t table[256];
    if (!table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
            table[i] = c;
        }
    const unsigned char *p = data;
    crc = ~crc;
    while (n--) crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static void checkpoint_header(int32_t *h, const Model *m, DataPosition pos, size_t option_bytes) {
    const Config *c = &m->cfg;
    memset(h, 0, H_SIZE * sizeof(int32_t));
    h[H_MAGIC] = CKPT_MAGIC; h[H_VERSION] = CKPT_VERSION;
    h[H_NUM_PARAMS_LO] = (int32_t)(m->num_params & 0xffffffffu);
    h[H_NUM_PARAMS_HI] = (int32_t)(m->num_params >> 32);
    h[H_STEP] = m->step; h[H_HAS_OPTIMIZER] = m->adam_m != NULL;
    h[H_DATA_SHARD] = pos.shard;
    h[H_DATA_SLOT_LO] = (int32_t)(pos.slot & 0xffffffffu);
    h[H_DATA_SLOT_HI] = (int32_t)((uint64_t)pos.slot >> 32);
    h[H_DATA_EPOCH] = (int32_t)((uint64_t)pos.epoch & 0xffffffffu);
    h[H_DATA_EPOCH_HI] = (int32_t)((uint64_t)pos.epoch >> 32);
    h[H_OPTION_BYTES] = (int32_t)option_bytes;
    h[H_RANKS] = world.ranks > 1 ? world.ranks : 0;
    for (int l = 0; l < c->layers; l++) {
        h[H_MLP_WIDTHS + l] = c->mlp_widths[l];
        h[H_CMS_WIDTHS + l] = c->cms_widths[l];
    }
}

// Writes bytes and adds them to the running checksum.
static int write_summed(const void *buf, size_t n, FILE *f, uint32_t *crc) {
    *crc = crc32c(*crc, buf, n);
    return write_all(buf, 1, n, f);
}

// Writes array as float32, in blocks so that no second copy of the model is needed.
static int write_floats(FILE *f, const void *src, int src_is_real, size_t n, uint32_t *crc) {
    float buf[4096];
    for (size_t i = 0; i < n; i += 4096) {
        size_t k = n - i < 4096 ? n - i : 4096;
        for (size_t j = 0; j < k; j++)
            buf[j] = src_is_real ? (float)((const real *)src)[i + j] : ((const float *)src)[i + j];
        if (!write_summed(buf, k * sizeof(float), f, crc)) return 0;
    }
    return 1;
}

static int checkpoint_write(const Model *m, const char *path, const char *tmp, DataPosition pos) {
    // this process's own temporary, left by a save that failed: removed (a link itself, never
    // what it points to)
    if (unlink(tmp) != 0 && errno != ENOENT) {
        fprintf(stderr, "error: %s: cannot remove the stale %s: %s\n", path, tmp, strerror(errno));
        return -1;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0644);
    FILE *f = fd < 0 ? NULL : fdopen(fd, "wb");
    if (!f) {
        fprintf(stderr, "error: %s: cannot write checkpoint: %s\n", tmp, strerror(errno));
        if (fd >= 0) { close(fd); unlink(tmp); }
        return -1;
    }
    char *text = xcalloc(MAX_OPTION_BYTES, 1, "checkpoint options");
    // NUL-padded
    size_t text_bytes = (options_to_text(text, MAX_OPTION_BYTES, &m->cfg) + 3) / 4 * 4;
    int32_t h[H_SIZE];
    checkpoint_header(h, m, pos, text_bytes);
    uint32_t crc = 0;
    errno = 0;
    int ok = write_summed(h, sizeof(h), f, &crc) && write_summed(text, text_bytes, f, &crc);
    free(text);
    ok = ok && write_floats(f, m->params, 1, m->num_params, &crc);
    if (ok && m->adam_m)
        ok = write_floats(f, m->adam_m, 0, m->num_params, &crc)
                && write_floats(f, m->adam_v, 0, m->num_params, &crc);
    ok = ok && write_all(&crc, sizeof(crc), 1, f);
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int err = errno;
    ok = (fclose(f) == 0) && ok;
    if (!ok) {
        fprintf(stderr, "error: %s: writing checkpoint failed: %s (previous checkpoint kept)\n",
                path, strerror(err ? err : EIO));
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        fprintf(stderr, "error: %s: cannot rename %s into place: %s\n", path, tmp, strerror(errno));
        unlink(tmp);
        return -1;
    }
    char dir[TEXT_MAX];
    path_directory(dir, sizeof(dir), path);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    // (the rename is done; a failed directory sync is no error)
    if (dfd >= 0) { fsync(dfd); close(dfd); }
    return 0;
}

// Returns 0 on success; on failure prints why and leaves any previous checkpoint untouched.
// The temporary is PATH.tmp.PID, this process's own: two processes saving to one path never
// write into one file (and a run's lock, save_lock below, keeps a second run off the path).
// SIGINT, SIGTERM and SIGHUP are held back while it writes: the save always completes.
static int checkpoint_save(const Model *m, const char *path, DataPosition pos) {
    if (strlen(path) + SAVE_SUFFIX > TEXT_MAX - 1) {
        fprintf(stderr, "error: %.60s...: path too long for a checkpoint (at most %d characters)\n",
                path, TEXT_MAX - 1 - SAVE_SUFFIX);
        return -1;
    }
    char tmp[TEXT_MAX];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    sigset_t hold, old;
    sigemptyset(&hold);
    sigaddset(&hold, SIGINT);
    sigaddset(&hold, SIGTERM);
    sigaddset(&hold, SIGHUP);
    sigprocmask(SIG_BLOCK, &hold, &old);
    int rc = checkpoint_write(m, path, tmp, pos);
    sigprocmask(SIG_SETMASK, &old, NULL);
    return rc;
}

// An open checkpoint: its header and options, read and checked once by checkpoint_open, and the
// one descriptor they came through, from which checkpoint_load then reads the parameters. A save
// never writes into a checkpoint in place (it renames a new file over the path), so the file
// this descriptor holds stays whole while a run replaces the checkpoint: the bytes checked are
// the bytes loaded, of the old file or of the new one.
typedef struct {
    const char *path;
    FILE *f;
    long size;
    int32_t h[H_SIZE];
    Options *saved;     // the defaults, overwritten by what the option area stores
} Checkpoint;

// Opens path and reads its header and options, each checked before it is trusted, the checksum
// (of the whole file) first; named[k], if not NULL, is set for each option the file names.
static Checkpoint *checkpoint_open(const char *path, int *named) {
    Checkpoint *ck = xcalloc(1, sizeof(Checkpoint), "checkpoint");
    int32_t *h = ck->h;
    ck->path = path;
    ck->f = open_regular(path);
    ck->saved = xcalloc(1, options_size(), "checkpoint options");
    FILE *f = ck->f;
    long size = ck->size = file_size(f);
    if (size < (long)(H_SIZE * sizeof(int32_t)))
        die("%s: not a tlm checkpoint (file too short)", path);
    read_exact(h, sizeof(int32_t), H_SIZE, f, path);
    if (h[H_MAGIC] != CKPT_MAGIC) die("%s: not a tlm checkpoint (bad magic %d)", path, h[H_MAGIC]);
    if (h[H_VERSION] == 1)
        die("%s: checkpoint version 1 (before the option area and the checksum) is no longer read: "
            "this train_tlm reads version %d", path, CKPT_VERSION);
    if (h[H_VERSION] != CKPT_VERSION)
        die("%s: unsupported checkpoint version %d", path, h[H_VERSION]);
    long bytes = h[H_OPTION_BYTES];
    if (bytes < 0 || bytes > MAX_OPTION_BYTES || bytes % 4 || (long)(H_SIZE * 4) + bytes + 4 > size)
        die("%s: bad option area size %ld", path, bytes);
    if (h[H_HAS_OPTIMIZER] != 0 && h[H_HAS_OPTIMIZER] != 1) die("%s: bad optimizer flag", path);
    if (h[H_STEP] < 0) die("%s: bad step %d", path, h[H_STEP]);
    if (h[H_RANKS] < 0 || h[H_RANKS] > MAX_RANKS)
        die("%s: bad rank count %d in its header (0..%d)", path, h[H_RANKS], MAX_RANKS);
    size_t n = (size_t)(uint32_t)h[H_NUM_PARAMS_LO] | ((size_t)(uint32_t)h[H_NUM_PARAMS_HI] << 32);
    double expect = (double)(H_SIZE * 4) + bytes + (double)n * 4 * (h[H_HAS_OPTIMIZER] ? 3 : 1) + 4;
    if ((double)size != expect)
        die("%s: size %ld bytes, expected %.0f (truncated or corrupt)", path, size, expect);
    // the checksum: the whole file but its last 4 bytes, then those
    uint32_t crc = crc32c(0, h, H_SIZE * sizeof(int32_t)), stored;
    unsigned char buf[1 << 16];
    long left = size - 4 - (long)(H_SIZE * 4);
    while (left > 0) {
        size_t k = left < (long)sizeof(buf) ? (size_t)left : sizeof(buf);
        read_exact(buf, 1, k, f, path);
        crc = crc32c(crc, buf, k);
        left -= (long)k;
    }
    read_exact(&stored, sizeof(stored), 1, f, path);
    if (crc != stored)
        die("%s: checksum mismatch (the file is corrupt: stored %08x, computed %08x)", path,
            stored, crc);
    char *text = xcalloc((size_t)bytes + 1, 1, "checkpoint options");
    fseek(f, H_SIZE * sizeof(int32_t), SEEK_SET);
    read_exact(text, 1, (size_t)bytes, f, path);
    options_default(ck->saved);
    options_from_text(ck->saved, text, path, named);
    free(text);
    // the widths are derived again from the stored options and must agree with the stored ones
    Config check = *options_config(ck->saved);
    char err[256];
    if (config_finish(&check, err, sizeof(err))) die("%s: checkpoint header: %s", path, err);
    // (a file written before --mlp-widths was counted stores the widths past --layers too)
    for (int l = check.layers; l < MAX_LAYERS; l++) ck->saved->cfg.widths_given[l] = 0;
    for (int l = 0; l < check.layers; l++)
        if (check.mlp_widths[l] != h[H_MLP_WIDTHS + l]
            || (check.arch == ARCH_HOPE && check.cms_levels > 1
                && check.cms_widths[l] != h[H_CMS_WIDTHS + l]))
            die("%s: stored width of layer %d does not match its taper", path, l);
    return ck;
}

static void checkpoint_close(Checkpoint *ck) {
    if (!ck) return;
    fclose(ck->f);
    free(ck->saved);
    free(ck);
}

// Where this run's model started, for ranks_save: the step, whether it was loaded (--load) and
// whether from the --save file itself. check_save_path resets it, checkpoint_load sets it.
typedef struct { int step, loaded, loaded_save; } SaveStart;
static SaveStart save_start;

// the tensor that holds parameter i, for messages
static const char *tensor_of(const Model *m, size_t i) {
    for (int t = 0; t < m->table.count; t++) {
        const ParamTensor *p = &m->table.tensor[t];
        if (i >= p->offset && i < p->offset + p->size) return p->name;
    }
    return "?";
}

// Loads the parameters (and the optimizer state, if present) of an open checkpoint into a model
// built from its options, through the descriptor checkpoint_open checked; *pos (if not NULL)
// gets the data position.
static void checkpoint_load(Checkpoint *ck, Model *m, DataPosition *pos) {
    const int32_t *h = ck->h;
    const char *path = ck->path;
    FILE *f = ck->f;
    size_t n = (size_t)(uint32_t)h[H_NUM_PARAMS_LO] | ((size_t)(uint32_t)h[H_NUM_PARAMS_HI] << 32);
    if (n != m->num_params)
        die("%s: holds %zu parameters, the model has %zu", path, n, m->num_params);
    fseek(f, (long)(H_SIZE * sizeof(int32_t)) + h[H_OPTION_BYTES], SEEK_SET);
    float buf[4096];
    for (size_t i = 0; i < n; i += 4096) {
        size_t k = n - i < 4096 ? n - i : 4096;
        read_exact(buf, sizeof(float), k, f, path);
        for (size_t j = 0; j < k; j++) {
            if (!isfinite(buf[j]))
                die("%s: parameter %zu (%s) is not a finite number", path, i + j,
                    tensor_of(m, i + j));
            m->params[i + j] = buf[j];
        }
    }
    if (h[H_HAS_OPTIMIZER]) {
        if (!m->adam_m) {
            m->adam_m = xcalloc(n, sizeof(float), "AdamW state");
            m->adam_v = xcalloc(n, sizeof(float), "AdamW state");
        }
        read_exact(m->adam_m, sizeof(float), n, f, path);
        read_exact(m->adam_v, sizeof(float), n, f, path);
        for (size_t i = 0; i < n; i++) {
            if (!isfinite(m->adam_m[i]))
                die("%s: AdamW first moment %zu (%s) is not a finite number", path, i,
                    tensor_of(m, i));
            if (!isfinite(m->adam_v[i]) || m->adam_v[i] < 0)
                die("%s: AdamW second moment %zu (%s) is %g, not a finite number >= 0", path, i,
                    tensor_of(m, i), m->adam_v[i]);
        }
    }
    m->step = h[H_STEP];
    struct stat here, there;
    save_start = (SaveStart){ m->step, 1, opt.save[0] && fstat(fileno(f), &here) == 0
            && stat(opt.save, &there) == 0 && here.st_dev == there.st_dev
            && here.st_ino == there.st_ino };
    if (pos) { // (checked against the data by dataloader_seek)
        pos->shard = h[H_DATA_SHARD];
        uint64_t slot_hi = (uint32_t)h[H_DATA_SLOT_HI], epoch_hi = (uint32_t)h[H_DATA_EPOCH_HI];
        pos->slot = (size_t)((uint32_t)h[H_DATA_SLOT_LO] | slot_hi << 32);
        pos->epoch = (int64_t)((uint32_t)h[H_DATA_EPOCH] | epoch_hi << 32);
    }
}

// --save on rank 0, once every rank has checked that it holds the parameters written: 0 saved,
// -1 failed or refused (rank 0 says why), 1 on the other ranks. Refused unless this run has
// trained a step since its start, or loaded the very file it would write (save_start): a run
// stopped before its first step never writes an untrained model over a checkpoint.
static int ranks_save(const Model *m, const char *path, DataPosition pos) {
    if (ranks_max(m->step == save_start.step && !save_start.loaded_save)) { // (rank 0's say)
        if (world.rank == 0)
            fprintf(stderr, "note: --save %s not written: no step trained since %s%s (step %d)\n",
                    path, save_start.loaded ? "--load " : "the start, a new model",
                    save_start.loaded ? opt.load : "", m->step);
        return -1;
    }
    ranks_check_same(m->params, m->num_params, m->step);
    return world.rank == 0 ? checkpoint_save(m, path, pos) : 1;
}

// --load on another number of ranks (saved: 0 for one process). The data position is the one
// stream's, so the run goes on where it stopped if every step takes the same global batch, of
// ranks x batch x grad_accum sequences: a --grad-accum not given is set to keep it; otherwise
// a different global batch is refused.
static void ranks_check_resume(const char *path, int saved_ranks, int saved_batch, int saved_accum,
                               int batch, int *grad_accum, int grad_accum_given) {
    saved_ranks = saved_ranks > 0 ? saved_ranks : 1;
    if (saved_ranks == world.ranks) return;
    long long global = (long long)saved_ranks * saved_batch * saved_accum,
            per_accum = (long long)world.ranks * batch;
    const Option *row = option_named("grad-accum"); // (its range: the table's)
    if (!grad_accum_given && global % per_accum == 0 && global / per_accum <= row->hi)
        *grad_accum = (int)(global / per_accum);
    if ((long long)world.ranks * batch * *grad_accum != global)
        die("%s: saved by %d rank(s) at a global batch of %lld sequences a step; here %d ranks x "
            "--batch %d x --grad-accum %d: give --batch and --grad-accum that make %lld, or run "
            "on %d rank(s)", path, saved_ranks, global, world.ranks, batch, *grad_accum, global,
            saved_ranks);
    printf("resuming %s, saved by %d rank(s), on %d: --grad-accum %d keeps its global batch of "
           "%lld sequences\n",
           path, saved_ranks, world.ranks, *grad_accum, global);
}

// --- resuming: the checkpoint's options ----------------------------------------------------------

// With --load: the checkpoint's options. A model option given on the command line must agree
// with the checkpoint (else a one-line error); the model is the checkpoint's. A training option
// not given is restored (the checkpoint stores them), one given overrides it, said once
// when it changes the training: not for --eval-only, --analyze, --sample (nothing is trained),
// nor for a QUIET option (what the run prints). A file that lacks a NEEDED option cannot be
// trained from.
static void apply_checkpoint_options(const Checkpoint *ck, const int *stored) {
    const Options *saved = ck->saved;
    int keep[NUM_OPTIONS];
    int training = !opt.eval_only && !opt.analyze && !opt.sample;
    for (int k = 0; k < NUM_OPTIONS; k++)
        if (training && (options[k].flags & NEEDED) && !stored[k])
            die("%s: written before --%s (its options have none), which training from it needs: "
                "it cannot resume (--eval-only, --analyze and --sample still read it)", opt.load,
                options[k].name);
    // --match-params: the file stores the shrunk mean width; a width asked for is shrunk alike
    // (the file's model at that width) before the comparison, so that the command line that
    // started the run resumes it
    Options *asked = xcalloc(1, sizeof(Options), "options");
    *asked = opt;
    if (saved->cfg.match_params && opt.cfg.match_params && given(&opt.cfg.mlp_width)) {
        asked->cfg = saved->cfg;
        asked->cfg.mlp_width = opt.cfg.mlp_width;
        match_params(&asked->cfg);
    }
    char mine[TEXT_MAX], theirs[TEXT_MAX], why[256];
    for (int k = 0; k < NUM_OPTIONS; k++) {
        const Option *o = &options[k];
        if (o->kind == KIND_RUN) continue;
        option_format(o, asked, mine, sizeof(mine));
        option_format(o, saved, theirs, sizeof(theirs));
        int same = !strcmp(mine, theirs);
        if (o->kind == KIND_MODEL) {
            if (option_given[k] && !same)
                die("%s: checkpoint was made with a different --%s (%s there, %s here); drop the "
                    "flag or start a new run",
                    opt.load, o->name, theirs, mine);
        } else if (!option_given[k]) {
            if (option_parse(o, &opt, theirs, why, sizeof(why)))
                die("%s: --%s '%s' %s", opt.load, o->name, theirs, why);
        } else if (!same && training && !(o->flags & QUIET)) {
            printf("--%s %s overrides the checkpoint's %s\n", o->name, mine, theirs);
        }
    }
    free(asked);
    for (int k = 0; k < NUM_OPTIONS; k++) keep[k] = option_given[k] || stored[k];
    options_follow(&opt, keep); // (an option the file lacks follows the one its default names)
    opt.cfg = saved->cfg;
    if (training)
        ranks_check_resume(opt.load, ck->h[H_RANKS], saved->batch, saved->grad_accum, opt.batch,
                           &opt.grad_accum, given(&opt.grad_accum));
}

// --- paths that must not be written -------------------------------------------------------
// dies if path is one of the input files (the shards, the tokenizer, except `allowed`): by name,
// whether or not path exists yet, and by device and inode (same_file, dev/tlmc/utils.h)
static void refuse_input(const char *flag, const char *path, const DataLoader *train,
                         const DataLoader *val,
                         const char *allowed) {
    const DataLoader *d[2] = { train, val };
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < d[k]->count; i++)
            if (same_file(path, d[k]->paths[i]))
                die("%s %s is the %s shard %s: refusing to write over it", flag, path,
                    k ? "--val" : "--train", d[k]->paths[i]);
    if (opt.tokenizer[0] && same_file(path, opt.tokenizer))
        die("%s %s is the --tokenizer: refusing to write over it", flag, path);
    if (opt.load[0] && same_file(path, opt.load) && (!allowed || strcmp(allowed, opt.load)))
        die("%s %s is the --load checkpoint: refusing to write over it", flag, path);
}

// One writer per checkpoint: a run that saves holds an advisory lock (fcntl F_SETLK) on
// PATH.lock from its start to its exit, so a second run given the same --save is refused at
// its start, naming the holder's pid. The kernel drops a dead process's lock: a lock file
// left by a killed run blocks nobody. Holding it, the run removes the temporaries that killed
// runs left (PATH.tmp.PID; PATH.tmp of older versions): no other writer can be writing one.
static int save_lock_fd = -1;
static char save_lock_path[TEXT_MAX + SAVE_SUFFIX];
static void save_unlock(void) { // (at exit: the file first, while the lock still holds it)
    if (save_lock_fd < 0) return;
    unlink(save_lock_path);
    close(save_lock_fd);
    save_lock_fd = -1;
}
static void remove_stale_temporaries(const char *path) {
    char dir[TEXT_MAX], mine[TEXT_MAX + SAVE_SUFFIX];
    path_directory(dir, sizeof(dir), path);
    const char *slash = strrchr(path, '/'), *name = slash ? slash + 1 : path;
    size_t len = strlen(name);
    snprintf(mine, sizeof(mine), "%s.tmp.%ld", name, (long)getpid());
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        const char *rest = e->d_name + len;
        if (strncmp(e->d_name, name, len) || strncmp(rest, ".tmp", 4) || !strcmp(e->d_name, mine))
            continue;
        rest += 4;
        if (*rest == '.' && rest[1]) rest += strspn(rest + 1, "0123456789") + 1;
        if (*rest) continue;
        char stale[2 * TEXT_MAX + 2];
        snprintf(stale, sizeof(stale), "%s/%s", dir, e->d_name);
        unlink(stale); // (a link itself, never what it points to)
    }
    if (d) closedir(d);
}
static void save_lock(const char *path) {
    char want[TEXT_MAX + SAVE_SUFFIX];
    snprintf(want, sizeof(want), "%s.lock", path);
    if (save_lock_fd >= 0 && !strcmp(want, save_lock_path)) return; // (held: a test's second run)
    save_unlock();
    snprintf(save_lock_path, sizeof(save_lock_path), "%s", want);
    for (int tries = 0;; tries++) {
        int fd = open(save_lock_path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd < 0) die("--save %s: cannot create its lock %s: %s", path, save_lock_path,
                        strerror(errno));
        struct flock lock = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
        if (fcntl(fd, F_SETLK, &lock) != 0) {
            int err = errno;
            struct flock holder = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
            int known = fcntl(fd, F_GETLK, &holder) == 0 && holder.l_type != F_UNLCK;
            close(fd);
            if (err != EACCES && err != EAGAIN)
                die("--save %s: cannot lock %s: %s", path, save_lock_path, strerror(err));
            if (known)
                die("--save %s: another run (pid %ld) is writing this checkpoint (it holds %s): "
                    "refusing to start a second writer", path, (long)holder.l_pid,
                    save_lock_path);
            if (tries < 100) continue; // (its holder just let go: try again)
            die("--save %s: %s is held by another run", path, save_lock_path);
        }
        // a holder that exited removed the file it locked: ours must be the one at the path
        struct stat held, named;
        if (fstat(fd, &held) == 0 && stat(save_lock_path, &named) == 0
            && held.st_dev == named.st_dev && held.st_ino == named.st_ino) {
            save_lock_fd = fd;
            break;
        }
        close(fd);
        if (tries >= 100) die("--save %s: cannot hold %s", path, save_lock_path);
    }
    static int at_exit;
    if (!at_exit) at_exit = !atexit(save_unlock);
    remove_stale_temporaries(path);
}

// whether the file at path starts like a tlm checkpoint (its magic)
static int is_checkpoint_file(const char *path) {
    int32_t magic = 0;
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    int ok = fd >= 0 && read(fd, &magic, sizeof(magic)) == (ssize_t)sizeof(magic)
            && magic == CKPT_MAGIC;
    if (fd >= 0) close(fd);
    return ok;
}

// --save: checked before the first step, so that a bad path costs no training time; then held
// (save_lock) on rank 0, the one that writes
static void check_save_path(const char *path, const DataLoader *train, const DataLoader *val) {
    struct stat st;
    char dir[TEXT_MAX];
    save_start = (SaveStart){ 0, 0, 0 };
    if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode))
        die("--save %s is %s, not a checkpoint file: refusing to replace it", path,
            file_kind(st.st_mode));
    path_directory(dir, sizeof(dir), path);
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) die("--save %s: no directory %s", path, dir);
    if (access(dir, W_OK | X_OK) != 0)
        die("--save %s: directory %s is not writable: %s", path, dir, strerror(errno));
    const char *slash = strrchr(path, '/'), *name = slash ? slash + 1 : path;
    long name_max = pathconf(dir, _PC_NAME_MAX);
    if (name_max > 0 && (long)strlen(name) + SAVE_SUFFIX - 1 > name_max)
        die("--save %s: the name is too long for its temporary %s.tmp.PID (%ld characters at "
            "most in %s)", path, name, name_max, dir);
    refuse_input("--save", path, train, val, path);
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 && !is_checkpoint_file(path)
        && !(opt.load[0] && same_file(path, opt.load)))
        die("--save %s exists and is not a tlm checkpoint: refusing to replace it (move it, or "
            "give another --save)", path);
    if (world.rank == 0) save_lock(path);
}

#endif // TLMC_CHECKPOINT_H
