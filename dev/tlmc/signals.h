/*
 * dev/tlmc/signals.h — stopping a run cleanly.
 *
 * Provides: ignore_sigpipe (a closed stdout is an error to report, not a death),
 *   install_signal_handlers (SIGINT, SIGTERM, SIGHUP: a flag; SIGXFSZ ignored), interrupted
 *   (the signal, 0 if none),
 *   should_stop (a signal, a failed write to stdout, or to the log) and ranks_should_stop (the
 *   same asked of every rank at once, so that all stop after the same step).
 * Needs: dev/tlmc/ranks.h (ranks_max), dev/tlmc/log.h (log_error).
 * The training loop asks should_stop between steps; checkpoint_save holds these signals back
 * while it writes (dev/tlmc/checkpoint.h).
 */
#ifndef TLMC_SIGNALS_H
#define TLMC_SIGNALS_H
#include <signal.h>

// Ctrl-C, `kill PID` and a closed terminal or ssh session (SIGINT, SIGTERM, SIGHUP) set a flag:
// the step in progress finishes, the run saves and stops (exit 128 + the signal). SIGXFSZ (a
// file-size limit, ulimit -f) is ignored, so that the write past the limit fails with EFBIG and
// the save says so, keeping the previous checkpoint, instead of the process dying mid-save.
// sigaction, so the handler stays installed and a second signal is only a second flag
// (signal() here would give System V semantics: reset to the default, and kill the save). SIGPIPE
// is ignored: a failed write to stdout (`| tee` gone) is an interruption too (should_stop).
static volatile sig_atomic_t interrupted;
static void on_interrupt(int sig) { interrupted = sig; }
static void ignore_sigpipe(void) { // (main, before anything is printed)
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGPIPE, &sa, NULL);
}
static void install_signal_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_interrupt;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    ignore_sigpipe();
    sa.sa_handler = SIG_IGN;
    sigaction(SIGXFSZ, &sa, NULL);
}
// why training must stop now: a signal, stdout that cannot be written, or the log
static int should_stop(void) {
    return interrupted || ferror(stdout) || log_error;
}
// ... on any rank: every rank asks at the same points, so all stop after the same step
static int ranks_should_stop(void) { return ranks_max(should_stop()); }

#endif // TLMC_SIGNALS_H
