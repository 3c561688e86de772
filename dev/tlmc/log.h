/*
 * dev/tlmc/log.h — the JSONL log (--log): one JSON object a line, each flushed and checked.
 *
 * Provides: log_json(fmt, ...) (one record; nothing without --log), log_file, log_error (the
 *   first failed write's errno: training then stops cleanly, dev/tlmc/signals.h), json_string
 *   (a C string as a JSON string), open_log (opens --log and writes the run's config record:
 *   every stored option of the table, --mlp-widths as built, the Hope widths, the parameter
 *   count, the threads, the step resumed from, the ranks; an existing file that is not a
 *   JSONL log, a checkpoint or a shard, refused).
 * Needs, from the includer: Model (cfg, num_params, step); dev/tlmc/utils.h, options.h,
 *   CKPT_MAGIC (checkpoint.h) and SHARD_MAGIC (dataloader.h), the files a log is not.
 * The records (config, train, val, analysis, error, done) are listed in README.md.
 */
#ifndef TLMC_LOG_H
#define TLMC_LOG_H

// Every record is flushed and checked: the first failed write is kept in log_error (an errno),
// and training stops cleanly at the next step (should_stop).
static FILE *log_file;
static int log_error;
static void log_json(const char *fmt, ...) {
    if (!log_file || log_error) return;
    va_list ap;
    va_start(ap, fmt);
    errno = 0;
    vfprintf(log_file, fmt, ap);
    va_end(ap);
    fputc('\n', log_file);
    if (fflush(log_file) != 0 || ferror(log_file)) log_error = errno ? errno : EIO;
}

// s as a JSON string, quotes included
static void json_string(char *out, size_t n, const char *s) {
    size_t k = 0;
    if (n < 3) return;
    out[k++] = '"';
    for (; *s && k + 8 < n; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') { out[k++] = '\\'; out[k++] = (char)ch; }
        else if (ch < 32) k += (size_t)snprintf(out + k, n - k, "\\u%04x", ch);
        else out[k++] = (char)ch;
    }
    out[k++] = '"';
    out[k] = 0;
}

// An existing --log must be a JSONL log to be appended to: its first bytes a JSON record's '{'
// and text; a checkpoint, a shard or other binary data is refused (appending would spoil it).
static void refuse_non_jsonl(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) return;
    unsigned char head[4096];
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    ssize_t n = fd < 0 ? 0 : read(fd, head, sizeof(head));
    if (fd >= 0) close(fd);
    int32_t magic = 0;
    if (n >= 4) memcpy(&magic, head, 4);
    if (magic == CKPT_MAGIC || magic == SHARD_MAGIC)
        die("--log %s is a %s, not a JSONL log: refusing to append to it", path,
            magic == CKPT_MAGIC ? "tlm checkpoint" : "token shard");
    for (ssize_t i = 0; i < n; i++)
        if ((head[i] < 32 && head[i] != '\n' && head[i] != '\r' && head[i] != '\t')
            || (i == 0 && head[i] != '{'))
            die("--log %s is not a JSONL log (%s at byte %zd): refusing to append to it", path,
                i == 0 ? "no '{'" : "binary data", i);
}

// --log: open the JSONL log and write the run's config record: every stored option of the table
// (the model's as built), then the widths, the parameter count and the threads. The log once
// open is compared with --save and --load by device and inode (the names were compared before
// the first step, build_model): a link made between then and now is caught too.
static void open_log(const Model *m) {
    if (!opt.log[0] || world.rank > 0) return;
    const Config *cfg = &m->cfg;
    refuse_non_jsonl(opt.log);
    log_file = fopen(opt.log, "a");
    if (!log_file) die("--log %s: cannot open: %s", opt.log, strerror(errno));
    struct stat here, there;
    const char *other[2] = { opt.save, opt.load }, *name[2] = { "--save", "--load" };
    for (int k = 0; k < 2; k++)
        if (other[k][0] && fstat(fileno(log_file), &here) == 0 && stat(other[k], &there) == 0
            && here.st_dev == there.st_dev && here.st_ino == there.st_ino)
            die("--log %s is the %s checkpoint %s", opt.log, name[k], other[k]);
    Options *v = xcalloc(1, sizeof(Options), "options");
    *v = opt;
    v->cfg = *cfg;
    size_t n = 16 * TEXT_MAX, len = 0;
    char *rec = xcalloc(n, 1, "log"), value[TEXT_MAX], text[2 * TEXT_MAX];
    len += (size_t)snprintf(rec + len, n - len, "{\"event\":\"config\"");
    for (int k = 0; k < NUM_OPTIONS; k++) {
        const Option *o = &options[k];
        if (o->kind == KIND_RUN) continue;
        Option row = *o;
        if (o->log_from) row.offset = o->log_from;
        option_format(&row, v, value, sizeof(value));
        char key[64];
        snprintf(key, sizeof(key), "%s", o->name);
        for (char *q = key; *q; q++) if (*q == '-') *q = '_';
        if (o->type == OPT_STRING || o->type == OPT_ARCH || o->type == OPT_TAPER)
            json_string(text, sizeof(text), value);
        else if (o->type == OPT_LIST) snprintf(text, sizeof(text), "[%s]", value);
        else snprintf(text, sizeof(text), "%s", value);
        len += (size_t)snprintf(rec + len, n - len, ",\"%s\":%s", key, text);
    }
    char cms[MAX_LAYERS * 8] = "";
    for (int l = 0; l < cfg->layers; l++)
        snprintf(cms + strlen(cms), sizeof(cms) - strlen(cms), "%s%d", l ? "," : "",
                 cfg->cms_widths[l]);
    snprintf(rec + len, n - len,
             ",\"cms_widths\":[%s],\"params\":%zu,\"threads\":%d,\"resumed_step\":%d}",
             cms, m->num_params, num_threads(), m->step);
    if (world.ranks > 1)
        snprintf(rec + strlen(rec) - 1, n - strlen(rec) + 1, ",\"ranks\":%d}", world.ranks);
    log_json("%s", rec);
    free(rec);
    free(v);
    if (log_error) die("--log %s: cannot write: %s", opt.log, strerror(log_error));
}

#endif // TLMC_LOG_H
