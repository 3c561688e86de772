#!/usr/bin/env bash
# dev/fuzz/run_fuzz.sh [-j JOBS] SECONDS [target...] — build the libFuzzer targets, make their
# seed corpora if missing, fuzz each target for SECONDS (JOBS targets at a time, default 1) and
# print one summary line per target: executions, coverage (cov, ft), corpus, crashes.
#
#   targets: fuzz_shard fuzz_checkpoint fuzz_tokenizer fuzz_cli fuzz_encoder (default: all;
#            the fuzz_ prefix may be left out)
#   outputs: under FUZZ_DIR (default dev/build/fuzz, git-ignored): bin/fuzz_<name> and
#            bin/make_seeds, corpus/<target>/ (seeds and what the fuzzer adds), corpus/cli.dict,
#            crashes/<target>-crash-<sha1> and -leak-, -timeout-, -oom- artifacts,
#            logs/<target>.log
#   env:     FUZZ_JOBS (the default of -j; `make fuzz FUZZ_SECONDS=1800 FUZZ_JOBS=2` passes it),
#            FUZZ_DIR, FUZZ_CC (clang), FUZZ_NICE (10), FUZZ_TIMEOUT (per-input seconds, 25),
#            FUZZ_FLAGS (more libFuzzer flags for every target, e.g. -fork=4 for 4 processes
#            per target, whose status lines count cov in PCs, not in counters as without it;
#            or -detect_leaks=0),
#            TLM_FUZZ_FORWARD (fuzz_checkpoint: "all" also runs titans/hope forward, "0" none)
# Examples:  dev/fuzz/run_fuzz.sh -j 2 60                  # all targets, 60 s each, 2 at a time
#            dev/fuzz/run_fuzz.sh 1800 encoder cli
# Reproduce a crash:  dev/build/fuzz/bin/fuzz_<name> dev/build/fuzz/crashes/<file>
# Minimise it:        dev/build/fuzz/bin/fuzz_<name> -minimize_crash=1 -runs=10000 <file>
# Exit status: 0 when no target crashed, 1 otherwise (2: usage or build error).
set -u
cd "$(dirname "$0")/../.." || exit 2

all="fuzz_shard fuzz_checkpoint fuzz_tokenizer fuzz_cli fuzz_encoder"
usage() { echo "usage: dev/fuzz/run_fuzz.sh [-j JOBS] SECONDS [${all// /|} ...]" >&2; exit 2; }
jobs=${FUZZ_JOBS:-1}
while [ $# -gt 0 ]; do
    case "$1" in
        -j) [ $# -ge 2 ] || usage; jobs=$2; shift 2 ;;
        -j*) jobs=${1#-j}; shift ;;
        -h|--help) usage ;;
        *) break ;;
    esac
done
case "$jobs" in ''|*[!0-9]*|0) echo "run_fuzz.sh: -j wants a positive number of jobs, not '$jobs'" >&2; exit 2 ;; esac
[ $# -ge 1 ] || usage
seconds=$1; shift
case "$seconds" in ''|*[!0-9]*) usage ;; esac
targets=()
for t in "${@:-$all}"; do
    for u in $t; do
        u=fuzz_${u#fuzz_}
        case " $all " in *" $u "*) targets+=("$u") ;; *) echo "unknown target '$u' (have: $all)" >&2; exit 2 ;; esac
    done
done

D=dev/fuzz
F=${FUZZ_DIR:-dev/build/fuzz}
CC=${FUZZ_CC:-clang}
command -v "$CC" >/dev/null 2>&1 || CC=clang-14
NICE=${FUZZ_NICE:-10}
CFLAGS="-g -O1 -std=c11 -Wall -Wextra -Wno-unused-function -DTLM_TESTING"
SAN="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
mkdir -p "$F/bin" "$F/crashes" "$F/logs" "$F/corpus" || exit 2

# at most $jobs background jobs at once
running=0
throttle() { if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi; }

# build what is out of date (the trainer and the harness change under us), JOBS at a time
newer() { local out=$1; shift; [ ! -e "$out" ] && return 0; for s in "$@"; do [ "$s" -nt "$out" ] && return 0; done; return 1; }
build() {
    local t=$1
    echo "build: $CC $SAN $CFLAGS $D/$t.c -lm -o $F/bin/$t"
    # shellcheck disable=SC2086 # CC, SAN, CFLAGS: words
    nice -n "$NICE" $CC $SAN $CFLAGS "$D/$t.c" -lm -o "$F/bin/$t.tmp" && mv "$F/bin/$t.tmp" "$F/bin/$t" && return 0
    echo "error: building $t failed (clang with libFuzzer is needed: on Debian, apt-get install clang libclang-rt-14-dev)" >&2
    rm -f "$F/bin/$t.tmp"
    return 1
}
for t in "${targets[@]}"; do
    if newer "$F/bin/$t" "$D/$t.c" "$D"/*.h train_tlm.c dev/tlmc/*.h; then throttle; build "$t" & running=$((running + 1)); fi
done
wait
running=0
for t in "${targets[@]}"; do [ -x "$F/bin/$t" ] && ! newer "$F/bin/$t" "$D/$t.c" "$D"/*.h train_tlm.c dev/tlmc/*.h || exit 2; done

# seeds, made with the trainer's own code, when a corpus is missing or empty
need_seeds=0
for t in "${targets[@]}"; do [ -n "$(ls -A "$F/corpus/$t" 2>/dev/null)" ] || need_seeds=1; done
[ -e "$F/corpus/cli.dict" ] || need_seeds=1
if [ $need_seeds = 1 ]; then
    if newer "$F/bin/make_seeds" "$D/make_seeds.c" "$D"/*.h train_tlm.c dev/tlmc/*.h; then
        # shellcheck disable=SC2086
        $CC $CFLAGS "$D/make_seeds.c" -lm -o "$F/bin/make_seeds" || exit 2
    fi
    "$F/bin/make_seeds" "$F/corpus" || exit 2
fi

# one target: its log, and its summary line in logs/<target>.summary (first word: ok|failed)
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
fuzz_one() {
    local t=$1
    local log=$F/logs/$t.log extra=() rc bin=./$F/bin/$t before
    case "$F" in /*) bin=$F/bin/$t ;; esac
    before=$(find "$F/crashes" -maxdepth 1 -type f -name "$t-*" | sort) # (mtimes are too coarse to compare)
    [ "$t" = fuzz_cli ] && extra+=("-dict=$F/corpus/cli.dict")
    # shellcheck disable=SC2206 # FUZZ_FLAGS: several flags, split at spaces
    local cmd=(nice -n "$NICE" "$bin" -max_total_time="$seconds" -print_final_stats=1
               -timeout="${FUZZ_TIMEOUT:-25}" -artifact_prefix="$F/crashes/$t-" "${extra[@]}" ${FUZZ_FLAGS:-} "$F/corpus/$t")
    echo "run: ${cmd[*]}  (log: $log)"
    "${cmd[@]}" >"$log" 2>&1
    rc=$?
    # the last status line: "#N ... cov: C ft: F corp: K/S ..." (-fork=: "#N: cov: C ft: F corp: K ...")
    local execs last cov ft corp new ncrash what line status=ok
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+.*cov: [0-9]+' "$log" | tail -1)
    [ -n "$execs" ] || execs=$(printf '%s\n' "$last" | sed -n 's/^#\([0-9]*\).*/\1/p')
    cov=$(printf '%s\n' "$last" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
    ft=$(printf '%s\n' "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
    corp=$(printf '%s\n' "$last" | sed -n 's/.* corp: \([0-9]*\(\/[0-9A-Za-z]*\)\{0,1\}\).*/\1/p')
    new=$(find "$F/crashes" -maxdepth 1 -type f -name "$t-*" | sort | comm -13 <(printf '%s\n' "$before") -)
    ncrash=$(printf '%s' "$new" | grep -c . || true)
    what=$(grep -m1 -E '^SUMMARY: |ERROR: libFuzzer|fuzz invariant failed' "$log" | cut -c1-160)
    line=$(printf '%-16s execs %-9s cov %-5s ft %-6s corpus %-10s crashes %s' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$ncrash")
    if [ "$rc" -ne 0 ] || [ "$ncrash" -gt 0 ]; then
        status=failed
        line="$line  (exit $rc) ${what:-see $log}"
        for f in $new; do line="$line"$'\n'"                 artifact: $f"; done
    fi
    printf '%s %s\n' "$status" "$line" >"$F/logs/$t.summary"
    echo "$line"
}

for t in "${targets[@]}"; do rm -f "$F/logs/$t.summary"; throttle; fuzz_one "$t" & running=$((running + 1)); done
wait

echo
echo "fuzz summary ($seconds s per target, $jobs at a time; logs in $F/logs/):"
failed=0
for t in "${targets[@]}"; do
    if [ -s "$F/logs/$t.summary" ]; then
        read -r status _ <"$F/logs/$t.summary"
        [ "$status" = ok ] || failed=1
        sed '1s/^[a-z]* /  /' "$F/logs/$t.summary"
    else
        failed=1
        echo "  $t: no summary (see $F/logs/$t.log)"
    fi
done
exit $failed
